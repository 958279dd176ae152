/**
 * Sweeps in the Jobs section: each sweep of mine (the jobs service's `api/sweeps`) with
 * its runs side by side, a column per swept parameter and the sweep's metric, and the
 * best run marked as the service picks it (the completed run with the highest or lowest
 * last value of the metric). A run opens as a followed job.
 */
import { h, table } from './dom';
import type { Value } from './params';

/** One run of a sweep (`aidc.jobs.views.sweep_view`). */
export interface ISweepRun {
  job: string;
  status: string;
  parameters: { [name: string]: Value };
  metrics: { [name: string]: Value };
  error: string | null;
}

/** A sweep (`aidc.jobs.views.sweep_view`). */
export interface ISweep {
  id: string;
  path: string;
  metric: string;
  mode: 'max' | 'min';
  grid: { [name: string]: Value[] };
  counts: { [status: string]: number };
  done: boolean;
  runs: ISweepRun[];
  best: ISweepRun | null;
}

function text(value: Value | undefined): string {
  if (value === undefined) {
    return '';
  }
  return typeof value === 'number' ? String(value) : JSON.stringify(value);
}

/** My sweeps, newest first, each a table of its runs; `watch` follows a run's job. */
export function sweepsList(sweeps: ISweep[], watch: (jobId: string) => void): HTMLElement {
  const node = h('div', 'aidc-sweeps', h('h4', '', 'Sweeps'));
  if (!sweeps.length) {
    node.append(h('p', 'aidc-note', 'No sweeps. Start one with `aidc.jobs.sweep` or `aidc jobs sweep`.'));
    return node;
  }
  for (const sweep of sweeps) {
    const names = Object.keys(sweep.grid || {});
    const rows = sweep.runs.map(run => [
      ...names.map(n => text(run.parameters[n])),
      text(run.metrics[sweep.metric]),
      h('span', `aidc-status aidc-status-${run.status}`, run.status)
    ]);
    const t = table([...names, sweep.metric, 'status'], rows);
    t.classList.add('aidc-sweep-runs');
    t.querySelectorAll('tbody tr').forEach((row, i) => {
      const tr = row as HTMLElement;
      const run = sweep.runs[i];
      tr.dataset.job = run.job;
      tr.classList.add('aidc-job-row');
      tr.title = `job ${run.job}; click to follow it`;
      if (sweep.best && sweep.best.job === run.job) {
        tr.classList.add('aidc-best');
        tr.lastElementChild!.append(' ', h('span', 'aidc-alias aidc-best-mark', 'best'));
      }
      tr.addEventListener('click', () => watch(run.job));
    });
    const counts = Object.entries(sweep.counts || {}).map(([s, n]) => `${n} ${s}`).join(', ');
    const head = h(
      'div',
      '',
      h('strong', '', sweep.path),
      ' ',
      h('span', 'aidc-note', `${sweep.id} · ${sweep.mode} ${sweep.metric} · ${counts}`)
    );
    const item = h('div', 'aidc-sweep', head, t);
    item.dataset.sweep = sweep.id;
    node.append(item);
  }
  return node;
}
