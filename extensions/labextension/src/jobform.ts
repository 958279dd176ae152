/**
 * The "Run as job" form of one notebook: a field per parameter of its `parameters` cell
 * (as the jobs service inspects it, `GET api/parameters`), and the job's GPUs, time-out,
 * retries and priority. Every field is checked as it is typed (`params.ts`); a form with
 * a marked field is not submitted. What only the service knows (my GPU quota) comes back
 * as its message.
 */
import { h, show } from './dom';
import type { IJob } from './jobs';
import {
  checkJobFields,
  checkParameters,
  IEntry,
  IJobFields,
  initialText,
  IParameter,
  textOf
} from './params';
import { requestAPI } from './request';

/** `GET api/parameters?path=...` of the jobs service. */
interface IParametersAnswer {
  path: string;
  has_parameters_cell: boolean;
  parameters: IParameter[];
}

const JOB_FIELDS: { field: keyof IJobFields; label: string; hint: string }[] = [
  { field: 'gpus', label: 'GPUs', hint: '0' },
  { field: 'timeout', label: 'time-out (s)', hint: 'none' },
  { field: 'retries', label: 'retries', hint: 'service default' },
  { field: 'priority', label: 'priority', hint: '0' }
];

export class JobForm {
  readonly node = h('form', 'aidc-job-form');
  private declared: IParameter[] = [];
  private readonly inputs = new Map<string, HTMLInputElement>();
  private readonly marks = new Map<string, HTMLElement>();
  private readonly jobInputs = new Map<keyof IJobFields, HTMLInputElement>();
  private readonly body = h('div', '', h('p', 'aidc-loading', 'Loading…'));
  private readonly message = h('p', 'aidc-error aidc-form-message');

  constructor(
    readonly path: string,
    private readonly previous: IJob | undefined,
    private readonly defaultGPUs: number,
    private readonly on: { submitted: (job: IJob) => void; closed: () => void }
  ) {
    this.node.append(h('h4', '', `Run ${path} as a job`), this.body, this.message);
    this.node.addEventListener('submit', event => {
      event.preventDefault();
      void this.submit();
    });
  }

  /** Ask the jobs service for the notebook's parameters and build the fields. */
  async load(): Promise<void> {
    let answer: IParametersAnswer;
    try {
      answer = await requestAPI<IParametersAnswer>(
        'jobs',
        `parameters?path=${encodeURIComponent(this.path)}`
      );
    } catch (error) {
      show(this.body, this.closeButton());
      this.message.textContent = `Error: ${(error as Error).message}`;
      return;
    }
    this.declared = answer.parameters;
    const parts: (Node | string)[] = [];
    if (!answer.has_parameters_cell) {
      parts.push(
        h(
          'p',
          'aidc-note aidc-no-parameters',
          `${this.path} has no cell tagged "parameters", so it runs with no parameters. ` +
            'Tag the cell that sets its defaults with "parameters" to set them here.'
        )
      );
    } else if (!this.declared.length) {
      parts.push(
        h('p', 'aidc-note aidc-no-parameters', 'Its parameters cell assigns no parameters.')
      );
    }
    const previous = this.previous?.parameters || {};
    const rows: HTMLElement[] = [];
    for (const param of this.declared) {
      const text =
        param.name in previous ? textOf(param, previous[param.name]) : initialText(param);
      rows.push(this.row(param.name, param.type, text, param.help));
    }
    // re-running a job whose notebook no longer declares some of its parameters
    for (const [name, value] of Object.entries(previous)) {
      if (!this.declared.some(p => p.name === name)) {
        rows.push(this.row(name, 'unknown', textOf(undefined, value), '', true));
      }
    }
    if (rows.length) {
      parts.push(
        h(
          'table',
          'aidc-parameters',
          h('thead', '', h('tr', '', h('th', '', 'parameter'), h('th', '', 'value'), h('th', '', 'type'))),
          h('tbody', '', ...rows)
        )
      );
    }
    const job = h('div', 'aidc-job-fields');
    for (const { field, label, hint } of JOB_FIELDS) {
      const input = h('input', 'jp-mod-styled') as HTMLInputElement;
      input.name = field;
      input.placeholder = hint;
      const before = this.previous
        ? this.previous[field as keyof IJob]
        : field === 'gpus' && this.defaultGPUs
          ? this.defaultGPUs
          : null;
      input.value = before === null || before === undefined ? '' : String(before);
      input.addEventListener('input', () => this.check());
      this.jobInputs.set(field, input);
      const mark = h('span', 'aidc-field-error');
      this.marks.set(`job:${field}`, mark);
      job.append(h('label', '', label, input), mark);
    }
    parts.push(job);
    const submit = h('button', 'jp-Button jp-mod-styled jp-mod-accept aidc-submit', 'Run as job');
    (submit as HTMLButtonElement).type = 'submit';
    parts.push(h('div', 'aidc-buttons', submit, this.closeButton()));
    show(this.body, ...parts);
    this.check();
  }

  private closeButton(): HTMLElement {
    const close = h('button', 'jp-Button jp-mod-styled jp-mod-reject', 'Close');
    (close as HTMLButtonElement).type = 'button';
    close.addEventListener('click', () => this.on.closed());
    return close;
  }

  private row(name: string, type: string, text: string, help: string, unknown = false): HTMLElement {
    const input = h('input', 'jp-mod-styled') as HTMLInputElement;
    input.name = name;
    input.dataset.param = name;
    input.value = text;
    input.addEventListener('input', () => this.check());
    this.inputs.set(name, input);
    const mark = h('div', 'aidc-field-error');
    this.marks.set(name, mark);
    const label = h('td', '', name);
    label.title = help || name;
    const cell = h('td', '', input, mark);
    if (unknown) {
      const remove = h('button', 'jp-Button jp-mod-styled jp-mod-reject', 'Remove');
      (remove as HTMLButtonElement).type = 'button';
      remove.addEventListener('click', () => {
        this.inputs.delete(name);
        this.marks.delete(name);
        tr.remove();
        this.check();
      });
      cell.append(remove);
    }
    const tr = h('tr', '', label, cell, h('td', 'aidc-note', type));
    return tr;
  }

  private entries(): IEntry[] {
    return [...this.inputs].map(([name, input]) => ({ name, text: input.value }));
  }

  private jobFields(): IJobFields {
    const value = (f: keyof IJobFields) => this.jobInputs.get(f)?.value ?? '';
    return { gpus: value('gpus'), timeout: value('timeout'), retries: value('retries'), priority: value('priority') };
  }

  /** Mark every field in error; true when none is. */
  private check(): boolean {
    const params = checkParameters(this.declared, this.entries());
    const fields = checkJobFields(this.jobFields());
    for (const [name, input] of this.inputs) {
      this.mark(name, input, params.errors[name]);
    }
    for (const [field, input] of this.jobInputs) {
      this.mark(`job:${field}`, input, fields.errors[field]);
    }
    return !Object.keys(params.errors).length && !Object.keys(fields.errors).length;
  }

  private mark(key: string, input: HTMLInputElement, error: string | undefined): void {
    input.classList.toggle('aidc-invalid', !!error);
    input.setAttribute('aria-invalid', error ? 'true' : 'false');
    const mark = this.marks.get(key);
    if (mark) {
      mark.textContent = error || '';
    }
  }

  private async submit(): Promise<void> {
    this.message.textContent = '';
    if (!this.check()) {
      this.message.textContent = 'Fix the marked fields: nothing was submitted.';
      return;
    }
    const { values } = checkParameters(this.declared, this.entries());
    const body = { path: this.path, parameters: values, ...checkJobFields(this.jobFields()).values };
    const submit = this.node.querySelector('.aidc-submit') as HTMLButtonElement | null;
    if (submit) {
      submit.disabled = true;
    }
    try {
      const job = await requestAPI<IJob>('jobs', 'jobs', {
        method: 'POST',
        body: JSON.stringify(body)
      });
      this.on.submitted(job);
    } catch (error) {
      this.message.textContent = `Error: ${(error as Error).message}`;
    } finally {
      if (submit) {
        submit.disabled = false;
      }
    }
  }
}
