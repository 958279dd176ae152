/**
 * The Resources section: my server's GPUs, my quota and use, free GPUs, my place in the
 * queue. Everything comes from the resources service (`api/gpus`, `api/queue`), which
 * shows a user only their own claims.
 */
import { h, table } from './dom';
import { requestAPI } from './request';
import { Section } from './section';

/** A GPU unit as the resources service describes it. */
export interface IUnit {
  id: string;
  node: string;
  kind: string;
  name: string;
  visible_id: string;
  memory_mb: number;
  simulated: boolean;
  free: boolean;
}

/** `GET api/gpus`. */
export interface IGPUs {
  simulated: boolean;
  units: IUnit[];
  free: { [kind: string]: number };
  mine: { holder: string; units: string[] }[];
  quota?: { [key: string]: number };
}

/** `GET api/queue`: for a user, only their own waiting requests. */
export interface IQueue {
  queue: { holder: string; position: number; gpus: number; kind: string }[];
}

function memory(mb: number): string {
  return mb >= 1024 ? `${(mb / 1024).toFixed(mb % 1024 ? 1 : 0)} GiB` : `${mb} MiB`;
}

function holderName(holder: string): string {
  if (holder.startsWith('server:')) {
    const server = holder.slice('server:'.length).split('/')[1];
    return server ? `server ${server}` : 'my server';
  }
  return holder.startsWith('job:') ? `job ${holder.slice(4)}` : holder;
}

export class ResourcesSection extends Section {
  constructor() {
    super('Resources', 'aidc-Resources');
  }

  protected async render(): Promise<(Node | string)[]> {
    const [gpus, queue] = await Promise.all([
      requestAPI<IGPUs>('resources', 'gpus'),
      requestAPI<IQueue>('resources', 'queue')
    ]);
    const units = new Map(gpus.units.map(u => [u.id, u]));
    const parts: (Node | string)[] = [];

    const server = gpus.mine.filter(c => c.holder.startsWith('server:'));
    const serverUnits = server.flatMap(c => c.units.map(id => units.get(id)));
    parts.push(h('h4', '', 'GPUs of my server'));
    if (serverUnits.length) {
      const rows = serverUnits.map((u, index) =>
        u
          ? [
              String(index),
              h('span', 'aidc-uuid', u.visible_id),
              h(
                'span',
                '',
                u.name,
                ...(u.simulated ? [' ', h('span', 'aidc-simulated', 'simulated')] : [])
              ),
              memory(u.memory_mb)
            ]
          : [String(index), '?', 'unknown unit', '']
      );
      const t = table(['#', 'UUID', 'name', 'memory'], rows);
      t.classList.add('aidc-my-gpus');
      parts.push(t);
    } else {
      parts.push(h('p', 'aidc-note aidc-my-gpus', 'My server holds no GPU (CPU profile).'));
    }

    const used = gpus.mine.reduce((n, c) => n + c.units.length, 0);
    const quota = gpus.quota?.max_gpus;
    const jobs = gpus.mine.filter(c => !c.holder.startsWith('server:'));
    const detail = jobs.length
      ? ` (${jobs.map(c => `${holderName(c.holder)}: ${c.units.length}`).join(', ')})`
      : '';
    parts.push(
      h(
        'p',
        'aidc-quota',
        quota === undefined
          ? `I use ${used} GPU unit${used === 1 ? '' : 's'}${detail}; no quota applies to me.`
          : `I use ${used} of my quota of ${quota} GPUs${detail}.`
      )
    );

    const free = Object.entries(gpus.free);
    parts.push(
      h(
        'p',
        'aidc-free',
        free.length
          ? `Free on the platform: ${free.map(([kind, n]) => `${n} ${kind}`).join(', ')}` +
              ` of ${gpus.units.length} units.`
          : `No GPU is free on the platform (${gpus.units.length} units).`
      )
    );
    if (gpus.simulated) {
      parts.push(
        h('p', 'aidc-note', 'Some GPUs are simulated: there is no real device behind them.')
      );
    }

    if (queue.queue.length) {
      const waiting = table(
        ['waiting', 'place', 'GPUs'],
        queue.queue.map(w => [holderName(w.holder), String(w.position), `${w.gpus} ${w.kind}`])
      );
      waiting.classList.add('aidc-queue');
      parts.push(h('h4', '', 'My place in the GPU queue'), waiting);
    }
    return parts;
  }
}
