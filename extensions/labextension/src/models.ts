/**
 * The Models section: the models of the registry I may see, each with its versions
 * (format, signature, metrics, who made it), its aliases and its deployment, and each
 * version's lineage: the job and the notebook that produced it, which open from here.
 *
 * "Manage" opens one model below the list (`ModelManager`): its deployment's live state
 * (replicas, ready, requests, p50/p99 latency), refreshed with the sidebar; deploy,
 * alias, canary, promote, roll back and undeploy, each after a confirmation; and "try
 * it", which sends a v2 request to the deployed model and shows the answer and its
 * latency. Everything goes through the models service's API (`api/models`, `v2/models`).
 */
import { Dialog, InputDialog, showDialog } from '@jupyterlab/apputils';

import { h, show, table } from './dom';
import {
  checkCanaryWeight,
  checkReplicas,
  exampleRequest,
  IDeployment,
  ISignature,
  IServedRow,
  latencyText,
  parseRequestBody,
  servedRows,
  shareText,
  signatureText
} from './modelrequests';
import { MODEL_ACTION_LABELS, ModelAction } from './modelactions';
import { RequestError, requestAPI } from './request';
import { Section } from './section';
import type { Value } from './params';

export { MODEL_ACTION_LABELS };
export type { ModelAction };

/** A version's lineage, as the models service records it (`aidc.models.lineage.describe`). */
export interface ILineage {
  job?: string;
  owner?: string;
  notebook?: string;
  parameters?: { [name: string]: Value };
}

/** A model version (`aidc.models.service.version_view`). */
export interface IVersion {
  version: number;
  format: string;
  signature: ISignature;
  metrics: { [name: string]: Value };
  lineage: ILineage;
  created_by: string;
  created: string;
}

/** A model (`ModelsHandler.model_view`). */
export interface IModel {
  name: string;
  owner: string;
  visibility: string;
  description: string;
  versions: IVersion[];
  aliases: { [alias: string]: number };
  deployment: IDeployment | null;
}

/** What a lineage link opens. */
export interface IModelActions {
  /** Open the notebook at `path` (relative to my home) in Lab. */
  openPath(path: string): void;
  /** Follow the job `jobId` in the Jobs section. */
  showJob(jobId: string): void;
}

/** How long a change waits: a deployment answers once its new replicas are ready. */
const CHANGE_TIMEOUT_MS = 10 * 60 * 1000;

function link(text: string, className: string, title: string, act: () => void): HTMLElement {
  const a = h('a', `aidc-link ${className}`, text);
  a.setAttribute('href', '#');
  a.title = title;
  a.addEventListener('click', event => {
    event.preventDefault();
    act();
  });
  return a;
}

function newestFirst(model: IModel): IVersion[] {
  return [...model.versions].sort((a, b) => b.version - a.version);
}

export class ModelsSection extends Section {
  private readonly detailHost = h('div', 'aidc-model-detail-host');
  private managed: ModelManager | null = null;

  constructor(private readonly actions: IModelActions) {
    super('Models', 'aidc-Models');
    this.body.append(this.detailHost);
  }

  /** Open the deployment, actions and "try it" of `model` below the list. */
  manage(model: IModel): void {
    this.managed = new ModelManager(model, {
      changed: () => void this.refresh(),
      closed: () => {
        this.managed = null;
        show(this.detailHost);
      }
    });
    show(this.detailHost, this.managed.node);
    this.managed.node.scrollIntoView({ block: 'nearest' });
  }

  /**
   * Run `action` (a palette command) on the model open below the list, or, when none is,
   * on one the user picks: its manager opens and does what its button does, with the
   * values its fields show, after the same confirmation.
   */
  async act(action: ModelAction): Promise<void> {
    if (!this.managed) {
      const { models } = await requestAPI<{ models: IModel[] }>('models', 'models');
      if (!models.length) {
        await showDialog({
          title: MODEL_ACTION_LABELS[action].replace('…', ''),
          body: 'No models yet. Register one from a job with `aidc.register_model`.',
          buttons: [Dialog.okButton()]
        });
        return;
      }
      const chosen = await InputDialog.getItem({
        title: `${MODEL_ACTION_LABELS[action].replace('…', '')}: which model?`,
        items: models.map(m => m.name)
      });
      const model = models.find(m => m.name === chosen.value);
      if (!chosen.button.accept || !model) {
        return;
      }
      this.manage(model);
    }
    await this.managed!.act(action);
  }

  protected async render(): Promise<(Node | string)[]> {
    const { models } = await requestAPI<{ models: IModel[] }>('models', 'models');
    if (this.managed) {
      this.managed.update(models.find(m => m.name === this.managed!.name) || null);
    }
    if (!models.length) {
      return [h('p', 'aidc-note', 'No models yet. Register one from a job with `aidc.register_model`.')];
    }
    return models.map(model => this.model(model));
  }

  private model(model: IModel): HTMLElement {
    const aliases = Object.entries(model.aliases || {});
    const byVersion = new Map<number, string[]>();
    for (const [alias, version] of aliases) {
      byVersion.set(version, [...(byVersion.get(version) || []), alias]);
    }
    const dep = model.deployment;
    const rows = newestFirst(model).map(v => {
      const tags: (Node | string)[] = (byVersion.get(v.version) || []).map(alias =>
        h('span', 'aidc-alias', alias)
      );
      if (dep && dep.version === v.version) {
        tags.push(h('span', 'aidc-alias aidc-deployed', `deployed ${dep.ready_replicas}/${dep.replicas}`));
      }
      if (dep && dep.canary_version === v.version) {
        tags.push(h('span', 'aidc-alias aidc-deployed', `canary ${shareText(dep.canary_weight)}`));
      }
      const metrics = Object.entries(v.metrics || {})
        .map(([k, value]) => `${k}=${typeof value === 'number' ? value : JSON.stringify(value)}`)
        .join(', ');
      const line = h(
        'div',
        '',
        h('strong', '', `v${v.version}`),
        ` ${v.format}`,
        ...tags.flatMap(t => [' ', t]),
        metrics ? h('span', 'aidc-version-metrics', ` ${metrics}`) : ''
      );
      const item = h('li', '', line);
      const signature = signatureText(v.signature);
      if (signature) {
        item.append(h('div', 'aidc-note aidc-signature', signature));
      }
      item.append(h('div', 'aidc-note', 'lineage: ', this.lineage(v.lineage)));
      item.dataset.version = String(v.version);
      return item;
    });
    const versions = h('ul', 'aidc-versions', ...rows);
    const manage = link('Manage…', 'aidc-manage', 'deploy, alias, canary, roll back, try it', () =>
      this.manage(model)
    );
    const title = h(
      'h4',
      '',
      model.name,
      ' ',
      h('span', 'aidc-note', `${model.owner} · ${model.visibility}`),
      ' ',
      manage
    );
    const node = h('div', 'aidc-model', title);
    if (model.description) {
      node.append(h('p', 'aidc-note', model.description));
    }
    node.append(versions);
    node.dataset.model = model.name;
    return node;
  }

  private lineage(lineage: ILineage): Node | string {
    if (!lineage || !lineage.job) {
      return h('span', 'aidc-note', 'no job recorded');
    }
    const parts: (Node | string)[] = [
      link(lineage.job, 'aidc-lineage-job', 'follow this job in the Jobs section', () =>
        this.actions.showJob(lineage.job!)
      )
    ];
    if (lineage.notebook) {
      parts.push(
        ' ',
        link(lineage.notebook, 'aidc-lineage-notebook', 'open the notebook that made this version', () =>
          this.actions.openPath(lineage.notebook!)
        )
      );
    }
    return h('span', 'aidc-lineage', ...parts);
  }
}

/** A labelled field. */
function field(label: string, input: HTMLElement): HTMLElement {
  return h('label', 'aidc-field', h('span', 'aidc-field-label', label), input);
}

function input(className: string, value: string, placeholder = ''): HTMLInputElement {
  const el = h('input', `jp-mod-styled ${className}`) as HTMLInputElement;
  el.value = value;
  el.placeholder = placeholder;
  return el;
}

/** One model's deployment, its actions and "try it", kept open across refreshes. */
class ModelManager {
  readonly node = h('div', 'aidc-model-detail');
  private model: IModel;
  private readonly state = h('div', 'aidc-deployment');
  private readonly message = h('p', 'aidc-model-message');
  private readonly buttons: HTMLButtonElement[] = [];
  private busy = false;
  /** What each action (button or palette command) runs. */
  private readonly actions: { [action in ModelAction]: () => Promise<void> } = {
    deploy: () => this.deploy(),
    alias: () => this.setAlias(),
    canary: () => this.setCanary(),
    promote: () => this.deploymentAction('promote'),
    rollback: () => this.deploymentAction('rollback'),
    undeploy: () => this.undeploy(),
    try: () => this.tryIt()
  };
  private readonly deployVersion = h('select', 'jp-mod-styled aidc-deploy-version') as HTMLSelectElement;
  private readonly replicas = input('aidc-replicas', '1');
  private readonly aliasName = input('aidc-alias-name', '', 'e.g. production');
  private readonly aliasVersion = h('select', 'jp-mod-styled aidc-alias-version') as HTMLSelectElement;
  private readonly canaryVersion = h('select', 'jp-mod-styled aidc-canary-version') as HTMLSelectElement;
  private readonly canaryWeight = input('aidc-canary-weight', '0.1', '0 to 1');
  private readonly canaryButton: HTMLButtonElement;
  private readonly promoteButton: HTMLButtonElement;
  private readonly rollbackButton: HTMLButtonElement;
  private readonly undeployButton: HTMLButtonElement;
  private readonly trySignature = h('p', 'aidc-note aidc-try-signature');
  private readonly tryBody = h('textarea', 'jp-mod-styled aidc-try-body') as HTMLTextAreaElement;
  private readonly tryButton: HTMLButtonElement;
  private readonly tryStatus = h('p', 'aidc-try-status');
  private readonly tryAnswer = h('pre', 'aidc-try-response');
  private versionsShown = '';
  /** The version and body of the last example put in "try it" (kept while the user edits). */
  private example: { version: number; body: string } | null = null;

  constructor(
    model: IModel,
    private readonly on: { changed: () => void; closed: () => void }
  ) {
    this.model = model;
    this.node.dataset.model = model.name;
    const close = link('close', 'aidc-manage-close', 'close this model', () => on.closed());
    const deploy = this.button('Deploy…', 'aidc-deploy-button', 'deploy');
    const alias = this.button('Set alias…', 'aidc-alias-button', 'alias');
    this.canaryButton = this.button('Set canary…', 'aidc-canary-button', 'canary');
    this.promoteButton = this.button('Promote canary…', 'aidc-promote-button', 'promote');
    this.rollbackButton = this.button('Roll back…', 'aidc-rollback-button', 'rollback');
    this.undeployButton = this.button('Undeploy…', 'aidc-undeploy-button', 'undeploy');
    this.tryButton = this.button('Send', 'aidc-try-send', 'try');
    const example = this.button('Example from signature', 'aidc-try-example', async () =>
      this.fillExample()
    );
    this.tryBody.rows = 5;
    this.tryBody.spellcheck = false;
    this.canaryWeight.addEventListener('input', () => this.markWeight());
    this.node.append(
      h('h4', '', `Manage ${model.name} `, close),
      this.state,
      h('div', 'aidc-model-actions',
        h('div', 'aidc-action-row', field('version', this.deployVersion), field('replicas', this.replicas), deploy),
        h('div', 'aidc-action-row', field('alias', this.aliasName), field('version', this.aliasVersion), alias),
        h('div', 'aidc-action-row', field('canary version', this.canaryVersion),
          field('weight', this.canaryWeight), this.canaryButton),
        h('div', 'aidc-buttons', this.promoteButton, this.rollbackButton, this.undeployButton)
      ),
      this.message,
      h('div', 'aidc-try',
        h('h5', '', 'Try it'),
        this.trySignature,
        this.tryBody,
        h('div', 'aidc-buttons', this.tryButton, example),
        this.tryStatus,
        this.tryAnswer
      )
    );
    this.tryAnswer.hidden = true;
    this.fillExample();
    this.render();
    const dep = model.deployment;
    if (dep) {
      this.replicas.value = String(dep.replicas);
    }
  }

  get name(): string {
    return this.model.name;
  }

  /** A fresh answer of the registry for this model (null: it is gone, or no longer mine to see). */
  update(model: IModel | null): void {
    if (!model) {
      this.say(`Model ${this.name} is no longer in the registry.`, true);
      return;
    }
    this.model = model;
    this.render();
  }

  private render(): void {
    const model = this.model;
    const versions = newestFirst(model);
    const key = JSON.stringify([versions.map(v => v.version), model.aliases]);
    if (key !== this.versionsShown) {
      this.versionsShown = key;
      const aliasesOf = (n: number) =>
        Object.entries(model.aliases || {}).filter(([, v]) => v === n).map(([a]) => a);
      for (const select of [this.deployVersion, this.aliasVersion, this.canaryVersion]) {
        const chosen = select.value;
        show(select, ...versions.map((v, i) => {
          const option = h('option', '', [`v${v.version}`, ...(i === 0 ? ['latest'] : []),
            ...aliasesOf(v.version)].join(' · ')) as HTMLOptionElement;
          option.value = String(v.version);
          return option;
        }));
        if (chosen && versions.some(v => String(v.version) === chosen)) {
          select.value = chosen;
        }
      }
    }
    const target = this.signature();
    if (target && this.example && target.version !== this.example.version &&
        this.tryBody.value === this.example.body) {
      this.fillExample(); // the deployed version changed and the example was not edited
    }
    const dep = model.deployment;
    this.canaryButton.disabled = this.busy || !dep;
    this.canaryButton.title = dep ? '' : 'deploy the model first';
    this.promoteButton.hidden = !dep || !dep.canary_version;
    this.rollbackButton.hidden = !dep;
    this.undeployButton.hidden = !dep;
    this.tryButton.disabled = this.busy;
    if (!dep) {
      show(this.state, h('p', 'aidc-note aidc-deployment-summary', 'Not deployed.'));
      return;
    }
    let summary = `Serving v${dep.version}`;
    if (dep.canary_version) {
      summary += `, canary v${dep.canary_version} gets ${shareText(dep.canary_weight)} of requests`;
    }
    summary += dep.serving ? '' : ' (no replica answers yet)';
    // a column per served version (two at most), so that the narrow sidebar holds it
    const served = servedRows(dep);
    const figures: [string, string, (r: IServedRow) => string][] = [
      ['traffic', 'share of requests', r => r.share],
      ['replicas', 'replicas that answer', r => r.replicas],
      ['requests', 'requests routed to this version', r => String(r.requests)],
      ['errors', 'requests answered with an error', r => String(r.errors)],
      ['p50', 'median latency (the models service’s view)', r => r.p50],
      ['p99', '99th percentile latency', r => r.p99]
    ];
    const t = table(
      ['', ...served.map(r => `v${r.version} ${r.role}`)],
      figures.map(([label, , value]) => [label, ...served.map(value)])
    );
    t.classList.add('aidc-deployment-state');
    t.querySelectorAll('tbody tr').forEach((tr, i) => {
      (tr as HTMLElement).dataset.figure = figures[i][0];
      (tr as HTMLElement).title = figures[i][1];
    });
    show(this.state, h('p', 'aidc-deployment-summary', summary), t);
  }

  /** Run `action` as its button does (a palette command): one action at a time. */
  async act(action: ModelAction): Promise<void> {
    this.node.scrollIntoView({ block: 'nearest' });
    await this.run(this.actions[action]);
  }

  private async run(act: () => Promise<void>): Promise<void> {
    if (this.busy) {
      return;
    }
    this.busy = true;
    this.buttons.forEach(other => (other.disabled = true));
    try {
      await act();
    } catch (error) {
      this.say(`Error: ${(error as Error).message}`, true);
    } finally {
      this.busy = false;
      this.buttons.forEach(other => (other.disabled = false));
      this.render();
    }
  }

  private button(label: string, className: string,
    act: ModelAction | (() => Promise<void>)): HTMLButtonElement {
    const b = h('button', `jp-Button jp-mod-styled jp-mod-reject aidc-button ${className}`, label) as HTMLButtonElement;
    b.type = 'button';
    b.addEventListener('click', () => void this.run(typeof act === 'string' ? this.actions[act] : act));
    this.buttons.push(b);
    return b;
  }

  private say(text: string, isError = false): void {
    this.message.textContent = text;
    this.message.classList.toggle('aidc-error', isError);
    this.message.classList.toggle('aidc-note', !isError);
  }

  /** Ask before a change; false when the user cancels. */
  private async confirm(title: string, body: string, label: string, warn = false): Promise<boolean> {
    const accept = warn ? Dialog.warnButton({ label }) : Dialog.okButton({ label });
    const result = await showDialog({ title, body, buttons: [Dialog.cancelButton(), accept] });
    return result.button.accept;
  }

  private async change(working: string, method: string, path: string, body?: unknown): Promise<any> {
    this.say(working);
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
    }
    const answer = await requestAPI<any>('models', `models/${encodeURIComponent(this.name)}/${path}`,
      init, { timeoutMs: CHANGE_TIMEOUT_MS });
    this.on.changed();
    return answer;
  }

  private readyText(dep: IDeployment): string {
    return `${dep.ready_replicas}/${dep.replicas} replica(s) ready`;
  }

  private async deploy(): Promise<void> {
    const replicas = checkReplicas(this.replicas.value);
    if (!replicas.ok) {
      this.say(replicas.error, true);
      return;
    }
    const version = Number(this.deployVersion.value);
    const dep = this.model.deployment;
    const now = dep
      ? ` It replaces v${dep.version}${dep.canary_version ? ` and its canary v${dep.canary_version}` : ''}.`
      : '';
    if (!(await this.confirm(`Deploy ${this.name} v${version}?`,
      `Starts ${replicas.value} replica(s) of v${version}; the call returns once they are ready.${now}`,
      'Deploy'))) {
      return;
    }
    const answer = await this.change(`Deploying v${version}… (until its replicas are ready)`,
      'PUT', 'deployment', { version, replicas: replicas.value });
    this.say(`Deployed v${answer.version}: ${this.readyText(answer)}.`);
  }

  private async setAlias(): Promise<void> {
    const alias = this.aliasName.value.trim();
    if (!alias) {
      this.say('Name the alias to set (for example production).', true);
      return;
    }
    const version = Number(this.aliasVersion.value);
    if (!(await this.confirm(`Point ${this.name}@${alias} at v${version}?`,
      `Whoever loads ${this.name}@${alias} gets v${version} from now on.`, 'Set alias'))) {
      return;
    }
    const answer = await this.change(`Setting ${alias}…`, 'PUT',
      `aliases/${encodeURIComponent(alias)}`, { version });
    this.say(`${answer.alias} now points at v${answer.version}` +
      (answer.previous ? ` (was v${answer.previous}).` : '.'));
  }

  private markWeight(): boolean {
    const weight = checkCanaryWeight(this.canaryWeight.value);
    this.canaryWeight.classList.toggle('aidc-invalid', !weight.ok);
    return weight.ok;
  }

  private async setCanary(): Promise<void> {
    const dep = this.model.deployment;
    const weight = checkCanaryWeight(this.canaryWeight.value);
    this.markWeight();
    if (!weight.ok) {
      this.say(`${weight.error}: nothing was sent.`, true);
      return;
    }
    if (!dep) {
      this.say('Deploy the model first: a canary runs beside the deployed version.', true);
      return;
    }
    const version = Number(this.canaryVersion.value);
    if (!(await this.confirm(`Canary v${version} of ${this.name}?`,
      `v${version} gets ${shareText(weight.value)} of requests beside v${dep.version}; ` +
        'the call returns once its replicas are ready.', 'Set canary'))) {
      return;
    }
    const answer = await this.change(`Starting canary v${version}…`, 'PUT', 'deployment',
      { version: dep.version, canary: { version, weight: weight.value } });
    this.say(`Canary v${answer.canary_version} gets ${shareText(answer.canary_weight)} of requests.`);
  }

  private async deploymentAction(action: 'promote' | 'rollback'): Promise<void> {
    const dep = this.model.deployment;
    if (!dep) {
      return;
    }
    const what = action === 'promote'
      ? `Canary v${dep.canary_version} becomes the version served to every request; v${dep.version} stops.`
      : dep.canary_version
        ? `The canary v${dep.canary_version} stops; v${dep.version} gets every request.`
        : 'Goes back to the version served before the last deployment.';
    const title = action === 'promote' ? `Promote the canary of ${this.name}?` : `Roll back ${this.name}?`;
    if (!(await this.confirm(title, what, action === 'promote' ? 'Promote' : 'Roll back', true))) {
      return;
    }
    const answer = await this.change(action === 'promote' ? 'Promoting…' : 'Rolling back…', 'POST',
      `deployment/${action}`);
    this.say(`Now serving v${answer.version}: ${this.readyText(answer)}.`);
  }

  private async undeploy(): Promise<void> {
    if (!(await this.confirm(`Undeploy ${this.name}?`,
      'Its replicas stop and its endpoint answers 404 until it is deployed again.', 'Undeploy', true))) {
      return;
    }
    await this.change('Undeploying…', 'DELETE', 'deployment');
    this.say(`${this.name} is no longer deployed.`);
  }

  /** The signature "try it" builds from: the deployed version's, else the newest's. */
  private signature(): { version: number; signature: ISignature } | null {
    const versions = newestFirst(this.model);
    const wanted = this.model.deployment?.version;
    const v = versions.find(x => x.version === wanted) || versions[0];
    return v ? { version: v.version, signature: v.signature } : null;
  }

  private fillExample(): void {
    const sig = this.signature();
    if (!sig || !signatureText(sig.signature)) {
      this.trySignature.textContent = 'This version records no signature: type a v2 request.';
      this.tryBody.value = '{"inputs": []}';
    } else {
      this.trySignature.textContent = `v${sig.version} takes ${signatureText(sig.signature)}`;
      this.tryBody.value = JSON.stringify(exampleRequest(sig.signature));
    }
    this.example = sig ? { version: sig.version, body: this.tryBody.value } : null;
  }

  private async tryIt(): Promise<void> {
    const body = parseRequestBody(this.tryBody.value);
    this.tryAnswer.hidden = true;
    this.tryStatus.classList.remove('aidc-error');
    if (!body.ok) {
      this.tryStatus.classList.add('aidc-error');
      this.tryStatus.textContent = `${body.error}: nothing was sent.`;
      return;
    }
    this.tryStatus.textContent = 'Sending…';
    const started = performance.now();
    try {
      const answer = await requestAPI<any>('models', `${encodeURIComponent(this.name)}/infer`,
        { method: 'POST', body: body.value }, { api: 'v2' });
      const ms = performance.now() - started;
      const version = answer && answer.model_version ? ` from v${answer.model_version}` : '';
      this.tryStatus.textContent = `Answered${version} in ${latencyText(ms)}`;
      this.tryAnswer.textContent = JSON.stringify(answer && answer.outputs ? answer.outputs : answer, null, 1);
      this.tryAnswer.hidden = false;
    } catch (error) {
      const ms = performance.now() - started;
      const status = error instanceof RequestError && error.status ? `${error.status} ` : '';
      this.tryStatus.classList.add('aidc-error');
      this.tryStatus.textContent = `Refused (${status}after ${latencyText(ms)}): ${(error as Error).message}`;
    }
    this.on.changed();
  }
}
