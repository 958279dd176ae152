/**
 * What the Models section sends and shows, built and checked in the browser: a canary's
 * weight and a deployment's replicas (refused here, before any call, when out of range),
 * the "try it" body (an example made from the version's signature, or JSON typed by the
 * user), and the deployment's live state as rows. Pure functions with no JupyterLab
 * imports, so Node's test runner checks them (`test/modelrequests.test.js`).
 */

/** One tensor of a signature (`aidc.models.signature.TensorSpec.to_dict`). */
export interface ITensorSpec {
  name: string;
  datatype: string;
  shape: number[];
}

/** A version's signature: what the model takes and gives. */
export interface ISignature {
  inputs: ITensorSpec[];
  outputs: ITensorSpec[];
}

/** A field's text read as a value, or why it cannot be. */
export type Checked<T> = { ok: true; value: T } | { ok: false; error: string };

/** The models service's bounds on a deployment's replicas (`DeploymentResource.put`). */
export const MAX_REPLICAS = 16;

const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
const INTEGER = /^[+-]?\d+$/;

/** The share of requests a canary gets: a number from 0 to 1, as the service requires. */
export function checkCanaryWeight(text: string): Checked<number> {
  const t = text.trim();
  if (!t) {
    return { ok: false, error: 'give the canary’s weight: the share of requests it gets, from 0 to 1' };
  }
  if (!NUMBER.test(t)) {
    return { ok: false, error: `the canary weight must be a number from 0 to 1, not '${t}'` };
  }
  const value = Number(t);
  if (!(value >= 0 && value <= 1)) {
    return {
      ok: false,
      error: `the canary weight must be from 0 to 1 (the share of requests the canary gets), not ${t}`
    };
  }
  return { ok: true, value };
}

/** How many replicas to run: a whole number from 1 to {@link MAX_REPLICAS}. */
export function checkReplicas(text: string): Checked<number> {
  const t = text.trim();
  const value = Number(t);
  if (!INTEGER.test(t) || value < 1 || value > MAX_REPLICAS) {
    return {
      ok: false,
      error: `replicas must be a whole number from 1 to ${MAX_REPLICAS}, not '${t}'`
    };
  }
  return { ok: true, value };
}

/** `x FP32 [-1,2]`, as the service writes a tensor in its messages. */
export function tensorText(spec: ITensorSpec): string {
  return `${spec.name} ${spec.datatype} [${spec.shape.join(',')}]`;
}

/** `x FP32 [-1,2] → y FP32 [-1,2]`; empty for a version without a signature. */
export function signatureText(signature: ISignature | null | undefined): string {
  if (!signature || !signature.inputs || !signature.inputs.length) {
    return '';
  }
  const side = (specs: ITensorSpec[] = []) => specs.map(tensorText).join(', ');
  return `${side(signature.inputs)} → ${side(signature.outputs)}`;
}

function exampleValue(datatype: string, i: number): number | boolean | string {
  if (datatype === 'BOOL') {
    return i % 2 === 0;
  }
  if (datatype === 'BYTES') {
    return 'text';
  }
  return (i % 9) + 1; // small whole numbers read the same in every numeric datatype
}

/**
 * A v2 inference request the signature accepts: each input with one row where a
 * dimension is dynamic (-1), filled with small numbers, so that "try it" works at once
 * and shows the shape to edit.
 */
export function exampleRequest(signature: ISignature): {
  inputs: { name: string; datatype: string; shape: number[]; data: unknown[] }[];
} {
  return {
    inputs: (signature.inputs || []).map(spec => {
      const shape = spec.shape.map(d => (d < 0 ? 1 : d));
      const size = shape.reduce((n, d) => n * d, 1);
      const data = Array.from({ length: size }, (_, i) => exampleValue(spec.datatype, i));
      return { name: spec.name, datatype: spec.datatype, shape, data };
    })
  };
}

/**
 * The "try it" text as the body to send: any JSON object goes to the model, whose
 * service answers a wrong shape with the expected signature; text that is not a JSON
 * object cannot be a v2 request and is refused here.
 */
export function parseRequestBody(text: string): Checked<string> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return { ok: false, error: `the request body is not JSON: ${(error as Error).message}` };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return {
      ok: false,
      error: 'the request body must be a JSON object, a v2 request such as {"inputs": [...]}'
    };
  }
  return { ok: true, value: JSON.stringify(value) };
}

/** A deployment as the models service describes it (`deployment_view` and the runner's status). */
export interface IDeployment {
  version: number;
  previous_version: number | null;
  canary_version: number | null;
  canary_weight: number;
  replicas: number;
  ready_replicas: number;
  serving: boolean;
  ready: boolean;
  versions?: { version: number; weight: number; replicas: { ready: boolean; restarts?: number }[] }[];
  stats?: {
    [version: string]: {
      requests: number;
      errors: number;
      mean_latency_ms?: number;
      p50_latency_ms?: number;
      p99_latency_ms?: number;
    };
  };
}

/** One served version in the live state's table. */
export interface IServedRow {
  version: number;
  role: 'primary' | 'canary';
  share: string;
  replicas: string;
  requests: number;
  errors: number;
  p50: string;
  p99: string;
}

/** `12.3 ms`, `0.41 ms`; `-` before the first request. */
export function latencyText(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !isFinite(ms)) {
    return '-';
  }
  return `${ms < 10 ? ms.toFixed(2) : ms.toFixed(1)} ms`;
}

/** `10%`, `12.5%`. */
export function shareText(weight: number): string {
  return `${Math.round(weight * 1000) / 10}%`;
}

/** The deployment's served versions, primary first, with their replicas and request figures. */
export function servedRows(dep: IDeployment): IServedRow[] {
  const served = dep.versions && dep.versions.length
    ? dep.versions
    : [{ version: dep.version, weight: 1 - (dep.canary_weight || 0), replicas: [] }];
  return served.map(v => {
    const stats = (dep.stats || {})[String(v.version)] || { requests: 0, errors: 0 };
    const ready = v.replicas.filter(r => r.ready).length;
    const canary = v.version === dep.canary_version && v.version !== dep.version;
    return {
      version: v.version,
      role: canary ? 'canary' : 'primary',
      share: shareText(v.weight),
      replicas: `${ready}/${v.replicas.length || dep.replicas} ready`,
      requests: stats.requests || 0,
      errors: stats.errors || 0,
      p50: latencyText(stats.p50_latency_ms),
      p99: latencyText(stats.p99_latency_ms)
    };
  });
}
