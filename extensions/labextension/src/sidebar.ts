/**
 * The "AI Data Center" sidebar: its sections, refreshed together every
 * `refreshInterval` seconds while the sidebar is open.
 */
import { Panel, Widget } from '@lumino/widgets';
import { Message } from '@lumino/messaging';

import { h } from './dom';
import { ILabActions, JobsSection } from './jobs';
import { IModelActions, ModelsSection } from './models';
import { ResourcesSection } from './resources';
import { Section } from './section';

export class AidcSidebar extends Panel {
  private readonly sections: Section[];
  /** The Jobs section, where "Run as job" opens its form. */
  readonly jobs: JobsSection;
  /** The Models section, whose actions the palette's model commands run. */
  readonly models: ModelsSection;
  private timer: number | undefined;
  private intervalSeconds = 5;

  constructor(actions: ILabActions & Pick<IModelActions, 'openPath'>) {
    super();
    this.id = 'aidc-sidebar';
    this.addClass('aidc-Sidebar');
    // a widget of its own: the panel's layout places its widgets by index among the node's children
    this.addWidget(new Widget({ node: h('h2', '', 'AI Data Center') }));
    this.jobs = new JobsSection(actions);
    this.models = new ModelsSection({
      openPath: path => actions.openPath(path),
      showJob: jobId => {
        this.jobs.watch(jobId);
        this.jobs.node.scrollIntoView({ block: 'start' });
      }
    });
    this.sections = [new ResourcesSection(), this.jobs, this.models];
    for (const section of this.sections) {
      this.addWidget(section);
    }
  }

  /** Change how often the open sidebar refreshes (0: only when it is opened). */
  set refreshInterval(seconds: number) {
    this.intervalSeconds = seconds;
    if (this.isVisible) {
      this.startTimer();
    }
  }

  refresh(): Promise<void> {
    return Promise.all(this.sections.map(s => s.refresh())).then(() => undefined);
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
    this.startTimer();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.stopTimer();
  }

  dispose(): void {
    this.stopTimer();
    super.dispose();
  }

  private startTimer(): void {
    this.stopTimer();
    if (this.intervalSeconds > 0) {
      this.timer = window.setInterval(() => void this.refresh(), this.intervalSeconds * 1000);
    }
  }

  private stopTimer(): void {
    if (this.timer !== undefined) {
      window.clearInterval(this.timer);
      this.timer = undefined;
    }
  }
}
