/**
 * The Models section (read-only for now): the models of the registry I may see, each with
 * its versions (format, metrics, who made it), its aliases and its deployment, and each
 * version's lineage: the job and the notebook that produced it, which open from here.
 * Everything comes from the models service's `api/models`.
 */
import { h } from './dom';
import { requestAPI } from './request';
import { Section } from './section';
import type { Value } from './params';

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
  deployment: { version: number; canary_version: number | null; ready_replicas: number; replicas: number } | null;
}

/** What a lineage link opens. */
export interface IModelActions {
  /** Open the notebook at `path` (relative to my home) in Lab. */
  openPath(path: string): void;
  /** Follow the job `jobId` in the Jobs section. */
  showJob(jobId: string): void;
}

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

export class ModelsSection extends Section {
  constructor(private readonly actions: IModelActions) {
    super('Models', 'aidc-Models');
  }

  protected async render(): Promise<(Node | string)[]> {
    const { models } = await requestAPI<{ models: IModel[] }>('models', 'models');
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
    const rows = [...model.versions]
      .sort((a, b) => b.version - a.version)
      .map(v => {
        const tags: (Node | string)[] = (byVersion.get(v.version) || []).map(alias =>
          h('span', 'aidc-alias', alias)
        );
        if (dep && dep.version === v.version) {
          tags.push(h('span', 'aidc-alias aidc-deployed', `deployed ${dep.ready_replicas}/${dep.replicas}`));
        }
        if (dep && dep.canary_version === v.version) {
          tags.push(h('span', 'aidc-alias aidc-deployed', 'canary'));
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
        const item = h('li', '', line, h('div', 'aidc-note', 'lineage: ', this.lineage(v.lineage)));
        item.dataset.version = String(v.version);
        return item;
      });
    const versions = h('ul', 'aidc-versions', ...rows);
    const title = h('h4', '', model.name, ' ', h('span', 'aidc-note', `${model.owner} · ${model.visibility}`));
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
