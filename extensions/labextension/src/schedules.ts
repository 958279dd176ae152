/**
 * Schedules in the Jobs section: a notebook run on a cron expression read in a time zone
 * (the jobs service's `api/schedules`). A form creates one; each of mine is listed with
 * its next run and last job, and is paused, resumed or deleted (after a confirmation)
 * from here. The service checks the expression and the zone: its message is shown.
 *
 * The form and the message live outside the list, which the section redraws on each
 * refresh, so a refresh never clears what is being typed.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';

import { h, table } from './dom';
import { requestAPI } from './request';

/** A schedule (`aidc.jobs.views.schedule_view`). */
export interface ISchedule {
  id: string;
  owner: string;
  path: string;
  cron: string;
  timezone: string;
  paused: boolean;
  next_run: string | null;
  last_job: string | null;
  last_error: string | null;
}

/** The time zone this browser runs in (the form's default), else UTC. */
function browserZone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  } catch {
    return 'UTC';
  }
}

export class SchedulesView {
  /** The form and the last action's message (placed once in the section's body). */
  readonly node = h('div', 'aidc-schedules-host');
  private readonly form = h('form', 'aidc-schedule-form');
  private readonly path = h('input', 'jp-mod-styled aidc-schedule-path') as HTMLInputElement;
  private readonly cron = h('input', 'jp-mod-styled aidc-schedule-cron') as HTMLInputElement;
  private readonly zone = h('input', 'jp-mod-styled aidc-schedule-timezone') as HTMLInputElement;
  private readonly message = h('p', 'aidc-schedule-message');

  constructor(
    private readonly on: { changed: () => void; watch: (jobId: string) => void }
  ) {
    this.path.placeholder = 'notebook, e.g. reports/daily.ipynb';
    this.cron.placeholder = 'cron, e.g. 0 3 * * *';
    this.zone.value = browserZone();
    const create = h('button', 'jp-Button jp-mod-styled jp-mod-accept aidc-button aidc-schedule-create',
      'Create schedule') as HTMLButtonElement;
    create.type = 'submit';
    const close = h('button', 'jp-Button jp-mod-styled jp-mod-reject aidc-button', 'Close') as HTMLButtonElement;
    close.type = 'button';
    close.addEventListener('click', () => (this.form.hidden = true));
    this.form.append(
      h('h4', '', 'Schedule a notebook'),
      h('label', 'aidc-field', h('span', 'aidc-field-label', 'notebook'), this.path),
      h('label', 'aidc-field', h('span', 'aidc-field-label', 'cron (minute hour day month weekday)'), this.cron),
      h('label', 'aidc-field', h('span', 'aidc-field-label', 'time zone (IANA)'), this.zone),
      h('div', 'aidc-buttons', create, close)
    );
    this.form.hidden = true;
    this.form.addEventListener('submit', event => {
      event.preventDefault();
      void this.act(create, () => this.create());
    });
    this.node.append(this.form, this.message);
  }

  /** Show the form, for the notebook at `path` when one is known. */
  open(path: string | null): void {
    if (path && !this.path.value) {
      this.path.value = path;
    }
    this.form.hidden = false;
    this.form.scrollIntoView({ block: 'nearest' });
  }

  /** My schedules, with their actions; a link opens the form. */
  list(schedules: ISchedule[], currentPath: string | null): HTMLElement {
    const add = h('a', 'aidc-link aidc-schedule-new', 'Schedule a notebook…');
    add.setAttribute('href', '#');
    add.addEventListener('click', event => {
      event.preventDefault();
      this.open(currentPath);
    });
    const title = h('h4', '', 'Schedules ', add);
    if (!schedules.length) {
      return h('div', 'aidc-schedules', title, h('p', 'aidc-note', 'No schedules.'));
    }
    const rows = schedules.map(s => {
      const state = s.paused
        ? h('span', 'aidc-status aidc-status-paused', 'paused')
        : h('span', 'aidc-note', s.next_run ? `next ${new Date(s.next_run).toLocaleString()}` : '');
      const when = h('span', '', s.cron, h('br', ''), h('span', 'aidc-note', s.timezone), h('br', ''), state);
      const buttons = h(
        'div',
        'aidc-buttons',
        s.paused
          ? this.button('Resume', 'aidc-schedule-resume', () => this.post(s, 'resume'))
          : this.button('Pause', 'aidc-schedule-pause', () => this.post(s, 'pause')),
        this.button('Delete…', 'aidc-schedule-delete', () => this.remove(s))
      );
      const what: (Node | string)[] = [s.path];
      if (s.last_job) {
        const last = h('a', 'aidc-link', s.last_job);
        last.setAttribute('href', '#');
        last.addEventListener('click', event => {
          event.preventDefault();
          this.on.watch(s.last_job!);
        });
        what.push(h('br', ''), h('span', 'aidc-note', 'last: '), last);
      }
      if (s.last_error) {
        what.push(h('div', 'aidc-error', s.last_error));
      }
      return [h('span', '', ...what, buttons), when];
    });
    const t = table(['notebook', 'when'], rows);
    t.classList.add('aidc-schedule-list');
    t.querySelectorAll('tbody tr').forEach((tr, i) => {
      (tr as HTMLElement).dataset.schedule = schedules[i].id;
    });
    return h('div', 'aidc-schedules', title, t);
  }

  private button(label: string, className: string, act: () => Promise<void>): HTMLElement {
    const b = h('button', `jp-Button jp-mod-styled jp-mod-reject aidc-button ${className}`, label) as HTMLButtonElement;
    b.type = 'button';
    b.addEventListener('click', () => void this.act(b, act));
    return b;
  }

  private async act(button: HTMLButtonElement, act: () => Promise<void>): Promise<void> {
    this.say('');
    button.disabled = true;
    try {
      await act();
    } catch (error) {
      this.say(`Error: ${(error as Error).message}`, true);
    } finally {
      button.disabled = false;
    }
  }

  private say(text: string, isError = false): void {
    this.message.textContent = text;
    this.message.classList.toggle('aidc-error', isError);
    this.message.classList.toggle('aidc-note', !isError);
  }

  private async create(): Promise<void> {
    const body = { path: this.path.value.trim(), cron: this.cron.value.trim(), timezone: this.zone.value.trim() };
    const made = await requestAPI<ISchedule>('jobs', 'schedules', { method: 'POST', body: JSON.stringify(body) });
    this.form.hidden = true;
    this.cron.value = '';
    this.say(`Scheduled ${made.path} at "${made.cron}" (${made.timezone}).`);
    this.on.changed();
  }

  private async post(s: ISchedule, action: 'pause' | 'resume'): Promise<void> {
    await requestAPI<ISchedule>('jobs', `schedules/${encodeURIComponent(s.id)}/${action}`, { method: 'POST' });
    this.say(`${action === 'pause' ? 'Paused' : 'Resumed'} the schedule of ${s.path}.`);
    this.on.changed();
  }

  private async remove(s: ISchedule): Promise<void> {
    const result = await showDialog({
      title: `Delete the schedule of ${s.path}?`,
      body: `No more runs at "${s.cron}" (${s.timezone}); jobs it already ran are kept.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (!result.button.accept) {
      return;
    }
    await requestAPI<null>('jobs', `schedules/${encodeURIComponent(s.id)}`, { method: 'DELETE' });
    this.say(`Deleted the schedule of ${s.path}.`);
    this.on.changed();
  }
}
