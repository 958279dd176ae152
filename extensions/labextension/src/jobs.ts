/**
 * The Jobs section (read-only for now): my jobs, newest first, with their status,
 * cell progress and why they failed, from the jobs service's `api/jobs`.
 */
import { h, table } from './dom';
import { requestAPI } from './request';
import { Section } from './section';

/** The fields of a job the list shows (the service sends more). */
export interface IJob {
  id: string;
  path: string;
  status: string;
  error: string | null;
  created: string;
  gpus: number;
  progress: { cell: number | null; cells: number | null };
  queue_position?: number | null;
}

/** How many jobs the list shows. */
const LIMIT = 20;

function progress(job: IJob): string {
  const { cell, cells } = job.progress || { cell: null, cells: null };
  return cells ? `${cell === null ? 0 : cell + 1}/${cells}` : '';
}

export class JobsSection extends Section {
  constructor() {
    super('Jobs', 'aidc-Jobs');
  }

  protected async render(): Promise<(Node | string)[]> {
    const { jobs } = await requestAPI<{ jobs: IJob[] }>('jobs', `jobs?limit=${LIMIT}`);
    if (!jobs.length) {
      return [h('p', 'aidc-note', 'No jobs yet. Submit one with `aidc jobs submit NOTEBOOK`.')];
    }
    const rows = jobs.map(job => {
      const status = h('span', `aidc-status aidc-status-${job.status}`, job.status);
      if (job.error) {
        status.title = job.error;
      }
      const submitted = new Date(job.created).toLocaleString();
      const what = h('span', '', job.path, h('br', ''), h('span', 'aidc-note', job.id));
      what.title = `submitted ${submitted}`;
      return [what, status, progress(job)];
    });
    const t = table(['notebook', 'status', 'cells'], rows);
    t.classList.add('aidc-job-list');
    return [t];
  }
}
