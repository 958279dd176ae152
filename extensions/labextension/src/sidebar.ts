/**
 * The "AI Data Center" sidebar: its sections, refreshed together every
 * `refreshInterval` seconds while the sidebar is open.
 *
 * What the plugin adds while Lab starts is only this panel, with its title: the sections'
 * code and style (`sections.ts`, a chunk of its own) are loaded, and the sections made,
 * the first time the sidebar is shown or a command needs one (`sections()`), so a page
 * load does no more for the extension than add its tab.
 */
import { Panel, Widget } from '@lumino/widgets';
import { Message } from '@lumino/messaging';

import { h, show } from './dom';
import type { ILabActions, JobsSection } from './jobs';
import type { IModelActions, ModelsSection } from './models';
import type { ISections } from './sections';

export class AidcSidebar extends Panel {
  private loading: Promise<ISections> | null = null;
  private loaded: ISections | null = null;
  private readonly failure = h('p', 'aidc-error');
  private timer: number | undefined;
  private intervalSeconds = 5;
  private gpus = 0;

  constructor(private readonly actions: ILabActions & Pick<IModelActions, 'openPath'>) {
    super();
    this.id = 'aidc-sidebar';
    this.addClass('aidc-Sidebar');
    // a widget of its own: the panel's layout places its widgets by index among the node's children
    this.addWidget(new Widget({ node: h('h2', '', 'AI Data Center') }));
    this.failure.hidden = true;
    this.addWidget(new Widget({ node: this.failure }));
  }

  /**
   * The sections, made on first use (their chunk loaded once). A chunk that could not be
   * loaded (the server went away) is said in the panel and tried again on the next use.
   */
  sections(): Promise<ISections> {
    if (!this.loading) {
      this.loading = import('./sections').then(
        ({ makeSections }) => {
          const made = makeSections(this.actions, (jobs, jobId) => {
            jobs.watch(jobId);
            jobs.node.scrollIntoView({ block: 'start' });
          });
          made.jobs.defaultGPUs = this.gpus;
          this.failure.hidden = true;
          for (const section of made.all) {
            this.addWidget(section);
          }
          this.loaded = made;
          return made;
        },
        (error: Error) => {
          this.loading = null;
          show(this.failure, `Error: the panel could not be loaded (${error.message})`);
          this.failure.hidden = false;
          throw error;
        }
      );
    }
    return this.loading;
  }

  /** The Jobs section, where "Run as job" opens its form. */
  async jobs(): Promise<JobsSection> {
    return (await this.sections()).jobs;
  }

  /** The Models section, whose actions the palette's model commands run. */
  async models(): Promise<ModelsSection> {
    return (await this.sections()).models;
  }

  /** The GPUs a new job's form starts with (the `defaultGPUs` setting). */
  set defaultGPUs(gpus: number) {
    this.gpus = gpus;
    if (this.loaded) {
      this.loaded.jobs.defaultGPUs = gpus;
    }
  }

  /** Change how often the open sidebar refreshes (0: only when it is opened). */
  set refreshInterval(seconds: number) {
    this.intervalSeconds = seconds;
    if (this.isVisible) {
      this.startTimer();
    }
  }

  /** Refresh every section (made first, when they are not yet). */
  async refresh(): Promise<void> {
    const { all } = await this.sections();
    await Promise.all(all.map(s => s.refresh()));
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.refresh().catch(() => undefined); // a failed load is shown in the panel
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
      this.timer = window.setInterval(() => this.refresh().catch(() => undefined), this.intervalSeconds * 1000);
    }
  }

  private stopTimer(): void {
    if (this.timer !== undefined) {
      window.clearInterval(this.timer);
      this.timer = undefined;
    }
  }
}
