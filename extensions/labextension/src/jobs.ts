/**
 * The Jobs section: "Run as job" for the open notebook (a form made from its `parameters`
 * cell, checked by type before anything is sent), my jobs newest first, and the job I
 * watch, with its cells' live progress (the jobs service's server-sent events), metrics,
 * logs, cancel, re-run and its executed output notebook. Below them, my sweeps with their
 * runs side by side (`sweeps.ts`) and my schedules (`schedules.ts`).
 *
 * The list is refreshed with the sidebar; the form and the watched job live beside it,
 * so a refresh neither clears what is being typed nor restarts the stream.
 */
import { h, show, table } from './dom';
import { JobForm } from './jobform';
import { followEvents, requestAPI, requestText } from './request';
import { ISchedule, SchedulesView } from './schedules';
import { Section } from './section';
import { ISweep, sweepsList } from './sweeps';
import { IServerEvent } from './sse';
import { Value } from './params';

/** A job as the jobs service's API describes it (`aidc.jobs.views.job_view`). */
export interface IJob {
  id: string;
  path: string;
  status: string;
  error: string | null;
  created: string;
  gpus: number;
  priority: number;
  timeout: number | null;
  retries: number;
  attempt: number;
  parameters: { [name: string]: Value };
  progress: { cell: number | null; cells: number | null };
  metrics: { [name: string]: Value };
  queue_position?: number | null;
  waiting?: string | null;
}

/** What the section asks of JupyterLab (kept out of this module's imports). */
export interface ILabActions {
  /** Save the notebook `content` at `path` among this server's files and open it. */
  openNotebook(path: string, content: unknown): Promise<void>;
}

/** How many jobs the list shows. */
const LIMIT = 20;
/** How many of my sweeps (newest first) the section shows. */
const SWEEPS = 5;
const FINAL = new Set(['completed', 'failed', 'cancelled']);
/** How long the followed job waits before opening its event stream again. */
const RECONNECT_MS = 2000;

function progress(job: IJob): string {
  const { cell, cells } = job.progress || { cell: null, cells: null };
  return cells ? `${cell === null ? 0 : cell + 1}/${cells}` : '';
}

function statusBadge(status: string, error: string | null): HTMLElement {
  const badge = h('span', `aidc-status aidc-status-${status}`, status);
  if (error) {
    badge.title = error;
  }
  return badge;
}

export class JobsSection extends Section {
  private readonly formHost = h('div', 'aidc-job-form-host');
  private readonly detailHost = h('div', 'aidc-job-detail-host');
  private watched: JobWatch | null = null;
  private readonly schedules = new SchedulesView({
    changed: () => void this.refresh(),
    watch: jobId => this.watch(jobId)
  });
  /** The notebook of the last "Run as job" form (what a new schedule starts from). */
  private lastPath: string | null = null;
  /** The GPUs a new job's form starts with (the `defaultGPUs` setting). */
  defaultGPUs = 0;

  constructor(private readonly actions: ILabActions) {
    super('Jobs', 'aidc-Jobs');
    this.body.prepend(this.formHost);
    this.body.append(this.detailHost, this.schedules.node);
  }

  /** Show the "Run as job" form for the notebook at `path` (with `previous`'s values to re-run). */
  async openForm(path: string, previous?: IJob): Promise<void> {
    this.lastPath = path;
    const form = new JobForm(path, previous, this.defaultGPUs, {
      submitted: job => {
        show(this.formHost);
        this.watch(job.id);
        void this.refresh();
      },
      closed: () => show(this.formHost)
    });
    show(this.formHost, form.node);
    await form.load();
    form.node.scrollIntoView({ block: 'nearest' });
  }

  /** Follow one job's progress live below the list. */
  watch(jobId: string): void {
    this.watched?.stop();
    this.watched = new JobWatch(jobId, this.actions, {
      rerun: job => void this.openForm(job.path, job),
      changed: () => void this.refresh()
    });
    show(this.detailHost, this.watched.node);
    void this.watched.start();
    this.markSelected();
  }

  dispose(): void {
    this.watched?.stop();
    super.dispose();
  }

  protected async render(): Promise<(Node | string)[]> {
    const [{ jobs }, { sweeps }, { schedules }] = await Promise.all([
      requestAPI<{ jobs: IJob[] }>('jobs', `jobs?limit=${LIMIT}`),
      requestAPI<{ sweeps: ISweep[] }>('jobs', 'sweeps'),
      requestAPI<{ schedules: ISchedule[] }>('jobs', 'schedules')
    ]);
    const below = [
      sweepsList(sweeps.slice(0, SWEEPS), jobId => this.watch(jobId)),
      this.schedules.list(schedules, this.lastPath)
    ];
    if (!jobs.length) {
      return [
        h('p', 'aidc-note', 'No jobs yet. Run the open notebook with "Run as job" in its toolbar.'),
        ...below
      ];
    }
    const rows = jobs.map(job => {
      const submitted = new Date(job.created).toLocaleString();
      const what = h('span', '', job.path, h('br', ''), h('span', 'aidc-note', job.id));
      what.title = `submitted ${submitted}; click to follow it`;
      return [what, statusBadge(job.status, job.error), progress(job)];
    });
    const t = table(['notebook', 'status', 'cells'], rows);
    t.classList.add('aidc-job-list');
    t.querySelectorAll('tbody tr').forEach((row, i) => {
      const tr = row as HTMLElement;
      tr.dataset.job = jobs[i].id;
      tr.classList.add('aidc-job-row');
      tr.addEventListener('click', () => this.watch(jobs[i].id));
    });
    this.watched?.update(jobs.find(j => j.id === this.watched?.jobId));
    setTimeout(() => this.markSelected());
    return [t, ...below];
  }

  private markSelected(): void {
    this.content.querySelectorAll('tr.aidc-job-row').forEach(row => {
      const tr = row as HTMLElement;
      tr.classList.toggle('aidc-selected', tr.dataset.job === this.watched?.jobId);
    });
  }
}

/** One job followed live: its cells, metrics and the actions on it. */
class JobWatch {
  readonly node = h('div', 'aidc-job-detail');
  private job: IJob | null = null;
  private cells: string[] = [];
  private metrics: { [name: string]: Value } = {};
  private readonly abort = new AbortController();
  private readonly header = h('h4', '');
  private readonly cellBar = h('div', 'aidc-cells');
  private readonly progressText = h('p', 'aidc-progress');
  private readonly info = h('div', 'aidc-job-info');
  private readonly buttons = h('div', 'aidc-buttons');
  private readonly message = h('p', 'aidc-error');
  private readonly logs = h('pre', 'aidc-logs');

  constructor(
    readonly jobId: string,
    private readonly actions: ILabActions,
    private readonly on: { rerun: (job: IJob) => void; changed: () => void }
  ) {
    this.header.textContent = `Job ${jobId}`;
    this.node.append(
      this.header,
      this.cellBar,
      this.progressText,
      this.info,
      this.buttons,
      this.message,
      this.logs
    );
    this.logs.hidden = true;
    this.progressText.textContent = 'Loading…';
  }

  stop(): void {
    this.abort.abort();
  }

  /** Read the job, then follow its events until it ends (reconnecting where a stream broke). */
  async start(): Promise<void> {
    try {
      this.update(await requestAPI<IJob>('jobs', `jobs/${this.jobId}`));
    } catch (error) {
      this.progressText.textContent = '';
      this.message.textContent = `Error: ${(error as Error).message}`;
      return;
    }
    let lastId: string | null = null;
    while (!this.abort.signal.aborted) {
      try {
        lastId = await followEvents(
          'jobs',
          `jobs/${this.jobId}/events`,
          e => this.onEvent(e),
          this.abort.signal,
          lastId
        );
      } catch (error) {
        if (this.abort.signal.aborted) {
          return;
        }
        this.message.textContent = `Live progress stopped: ${(error as Error).message}`;
        return;
      }
      if (this.abort.signal.aborted) {
        return;
      }
      try {
        this.update(await requestAPI<IJob>('jobs', `jobs/${this.jobId}`));
      } catch (error) {
        this.message.textContent = `Error: ${(error as Error).message}`;
        return;
      }
      this.on.changed();
      if (this.job && FINAL.has(this.job.status)) {
        return;
      }
      // the stream ended before the job did (a restarted service): follow it again shortly
      await new Promise(resolve => setTimeout(resolve, RECONNECT_MS));
    }
  }

  /** A fresh answer for the job (from the list or after its stream ended). */
  update(job: IJob | undefined): void {
    if (!job) {
      return;
    }
    this.job = job;
    const total = job.progress?.cells || this.cells.length;
    while (this.cells.length < total) {
      this.cells.push('pending');
    }
    this.metrics = { ...job.metrics, ...this.metrics };
    this.render();
  }

  private onEvent(event: IServerEvent): void {
    let data: any;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (event.event === 'cell_start' && typeof data.cell === 'number') {
      const total = data.value?.cells;
      if (data.cell === 0) {
        this.cells = []; // a new attempt starts over
      }
      while (this.cells.length < Math.max(total || 0, data.cell + 1)) {
        this.cells.push('pending');
      }
      this.cells[data.cell] = 'running';
    } else if (event.event === 'cell_end' && typeof data.cell === 'number') {
      this.cells[data.cell] = data.status === 'failed' ? 'failed' : 'done';
    } else if (event.event === 'error' && typeof data.cell === 'number') {
      this.cells[data.cell] = 'failed';
    } else if (event.event === 'metric' && data.name) {
      this.metrics[data.name] = data.value?.value ?? data.value;
    } else {
      return;
    }
    this.render();
  }

  private render(): void {
    const job = this.job;
    if (!job) {
      return;
    }
    show(this.header, `${job.path} `, statusBadge(job.status, job.error), h('br', ''),
      h('span', 'aidc-note', job.id));
    show(
      this.cellBar,
      ...this.cells.map((state, i) => {
        const cell = h('span', `aidc-cell aidc-cell-${state}`);
        cell.title = `cell ${i + 1}: ${state}`;
        return cell;
      })
    );
    const done = this.cells.filter(s => s === 'done').length;
    const running = this.cells.indexOf('running');
    let text = '';
    if (job.status === 'queued') {
      text = job.waiting ? `Waiting: ${job.waiting}` : 'Queued';
      if (job.queue_position) {
        text += ` (place ${job.queue_position} in the queue)`;
      }
    } else if (this.cells.length) {
      text =
        running >= 0 && !FINAL.has(job.status)
          ? `cell ${running + 1} of ${this.cells.length} running`
          : `${done} of ${this.cells.length} cells done`;
    }
    this.progressText.textContent = text;

    const info: (Node | string)[] = [];
    const params = Object.entries(job.parameters || {});
    info.push(
      h(
        'p',
        'aidc-job-parameters',
        params.length
          ? `Parameters: ${params.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(', ')}`
          : 'Parameters: the notebook’s defaults'
      )
    );
    const metrics = Object.entries(this.metrics);
    if (metrics.length) {
      const t = table(
        ['metric', 'value'],
        metrics.map(([k, v]) => [k, typeof v === 'number' ? String(v) : JSON.stringify(v)])
      );
      t.classList.add('aidc-metrics');
      info.push(t);
    }
    if (job.error) {
      info.push(h('p', 'aidc-error aidc-job-error', job.error));
    }
    show(this.info, ...info);

    const buttons: HTMLElement[] = [
      this.button('Logs', 'aidc-logs-button', () => this.showLogs())
    ];
    if (!FINAL.has(job.status)) {
      buttons.push(this.button('Cancel', 'aidc-cancel-button', () => this.cancel()));
    }
    buttons.push(this.button('Re-run…', 'aidc-rerun-button', async () => this.on.rerun(job)));
    if (job.status !== 'queued') {
      buttons.push(this.button('Open output', 'aidc-output-button', () => this.openOutput()));
    }
    show(this.buttons, ...buttons);
  }

  private button(label: string, className: string, act: () => Promise<void>): HTMLElement {
    const b = h('button', `jp-Button jp-mod-styled jp-mod-reject aidc-button ${className}`, label);
    b.addEventListener('click', async () => {
      this.message.textContent = '';
      (b as HTMLButtonElement).disabled = true;
      try {
        await act();
      } catch (error) {
        this.message.textContent = `Error: ${(error as Error).message}`;
      } finally {
        (b as HTMLButtonElement).disabled = false;
      }
    });
    return b;
  }

  private async showLogs(): Promise<void> {
    const text = await requestText('jobs', `jobs/${this.jobId}/logs`);
    this.logs.textContent = text || '(nothing printed yet)';
    this.logs.hidden = false;
  }

  private async cancel(): Promise<void> {
    this.update(await requestAPI<IJob>('jobs', `jobs/${this.jobId}/cancel`, { method: 'POST' }));
    this.on.changed();
  }

  private async openOutput(): Promise<void> {
    const nb = await requestAPI<unknown>('jobs', `jobs/${this.jobId}/output`);
    const name = (this.job?.path || 'job').split('/').pop()!.replace(/\.ipynb$/, '');
    await this.actions.openNotebook(`job-outputs/${name}-${this.jobId}.ipynb`, nb);
  }
}
