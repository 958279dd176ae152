/**
 * The sidebar's sections and their style: a chunk of its own, which the sidebar loads the
 * first time it is shown (or a command needs a section), so that a Lab page that never
 * opens it neither downloads, evaluates nor renders any of it while Lab starts.
 */
import '../style/index.css';

import { ILabActions, JobsSection } from './jobs';
import { IModelActions, ModelsSection } from './models';
import { ResourcesSection } from './resources';
import { Section } from './section';

/** The sections, in the sidebar's order, and the two that commands reach. */
export interface ISections {
  all: Section[];
  jobs: JobsSection;
  models: ModelsSection;
}

export function makeSections(
  actions: ILabActions & Pick<IModelActions, 'openPath'>,
  showJob: (jobs: JobsSection, jobId: string) => void
): ISections {
  const jobs = new JobsSection(actions);
  const models = new ModelsSection({
    openPath: path => actions.openPath(path),
    showJob: jobId => showJob(jobs, jobId)
  });
  return { all: [new ResourcesSection(), jobs, models], jobs, models };
}
