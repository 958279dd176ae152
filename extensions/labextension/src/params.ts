/**
 * The "Run as job" form's checks, before anything is sent: each value typed for a
 * notebook's parameter is read as a Python literal (as the notebook's own `parameters`
 * cell writes it) and checked against the type the jobs service inferred for it
 * (`GET api/parameters`, papermill's inspection), with the same rules the service applies
 * at submit (`aidc.jobs.parameters.ACCEPTS`): a wrong type or an unknown name is marked
 * in the form and never submitted. Also the job's own fields (GPUs, time-out, retries,
 * priority), with the service's bounds.
 *
 * Pure functions, no JupyterLab imports: the front end's unit tests run them in Node.
 */

/** A parameter as the jobs service describes a notebook's `parameters` cell. */
export interface IParameter {
  name: string;
  /** `int`, `float`, `str`, `bool`, `list`, `tuple`, `dict`, or `any` (no literal default) */
  type: string;
  /** the default as the cell writes it (Python source) */
  default: string;
  help: string;
}

/** A JSON value, as a job's parameters are sent. */
export type Value = null | boolean | number | string | Value[] | { [key: string]: Value };

/** What reading one field gave: its value, or why it cannot be sent. */
export type Checked = { ok: true; value: Value } | { ok: false; message: string };

/** The types whose values are typed as plain text, without quotes. */
const TEXT_TYPES = new Set(['str']);

/** What each inferred type accepts (as the service's `ACCEPTS`). */
const NOUNS: { [type: string]: string } = {
  int: 'an integer',
  float: 'a number',
  str: 'a string',
  bool: 'True or False',
  list: 'a list',
  tuple: 'a list',
  dict: 'a dict'
};

class LiteralError extends Error {}

/**
 * Read `text` as a Python literal: numbers, 'strings' or "strings", True, False, None,
 * [lists], (tuples) and {dicts} of them. Throws with a message naming what is wrong.
 */
export function parseLiteral(text: string): Value {
  let pos = 0;
  const src = text;

  const fail = (what: string): never => {
    throw new LiteralError(
      pos >= src.length ? `${what} at the end` : `${what} at "${src.slice(pos, pos + 12)}"`
    );
  };
  const space = () => {
    while (pos < src.length && /\s/.test(src[pos])) {
      pos++;
    }
  };
  const sequence = (close: string): Value[] => {
    const items: Value[] = [];
    space();
    while (src[pos] !== close) {
      items.push(value());
      space();
      if (src[pos] === ',') {
        pos++;
        space();
      } else if (src[pos] !== close) {
        fail(`expected ',' or '${close}'`);
      }
    }
    pos++;
    return items;
  };
  const string = (): string => {
    const quote = src[pos++];
    let out = '';
    while (pos < src.length && src[pos] !== quote) {
      if (src[pos] === '\\') {
        const next = src[pos + 1];
        const escapes: { [c: string]: string } = { n: '\n', t: '\t', r: '\r', '\\': '\\', "'": "'", '"': '"' };
        if (next === undefined || !(next in escapes)) {
          fail('an escape that is not supported');
        }
        out += escapes[next];
        pos += 2;
      } else {
        out += src[pos++];
      }
    }
    if (pos >= src.length) {
      fail('a string without its closing quote');
    }
    pos++;
    return out;
  };
  const value = (): Value => {
    space();
    const c = src[pos];
    if (c === undefined) {
      return fail('a value was expected');
    }
    if (c === "'" || c === '"') {
      return string();
    }
    if (c === '[') {
      pos++;
      return sequence(']');
    }
    if (c === '(') {
      pos++;
      return sequence(')');
    }
    if (c === '{') {
      pos++;
      const out: { [key: string]: Value } = {};
      space();
      while (src[pos] !== '}') {
        const key = value();
        if (typeof key !== 'string') {
          fail('dict keys must be strings');
        }
        space();
        if (src[pos] !== ':') {
          fail("expected ':'");
        }
        pos++;
        out[key as string] = value();
        space();
        if (src[pos] === ',') {
          pos++;
          space();
        } else if (src[pos] !== '}') {
          fail("expected ',' or '}'");
        }
      }
      pos++;
      return out;
    }
    const word = /^[A-Za-z_]\w*/.exec(src.slice(pos));
    if (word) {
      const known: { [w: string]: Value } = { True: true, False: false, None: null };
      if (!(word[0] in known)) {
        fail('a name (quote text to make it a string)');
      }
      pos += word[0].length;
      return known[word[0]];
    }
    const number = /^[+-]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][+-]?\d+)?/.exec(src.slice(pos));
    if (number) {
      pos += number[0].length;
      const n = Number(number[0].replace(/_/g, ''));
      if (!Number.isFinite(n)) {
        fail('a number JSON cannot carry');
      }
      return n;
    }
    return fail('not a value');
  };

  const result = value();
  space();
  if (pos < src.length) {
    fail('unexpected text after the value');
  }
  return result;
}

/** `1.0` and `1e3` are floats in Python, `1` is an int: the int type refuses them. */
function isFloatText(text: string): boolean {
  return /[.eE]/.test(text);
}

/** Python's type of a literal read by {@link parseLiteral}, from its source text. */
function pythonType(value: Value, text: string): string {
  if (value === null) {
    return 'None';
  }
  if (typeof value === 'boolean') {
    return 'bool';
  }
  if (typeof value === 'number') {
    return isFloatText(text.trim()) ? 'float' : 'int';
  }
  if (typeof value === 'string') {
    return 'str';
  }
  return Array.isArray(value) ? 'list' : 'dict';
}

/** Whether a value of Python type `got` may be sent for a parameter of type `expected`. */
export function accepts(expected: string, got: string): boolean {
  if (got === 'None' || !(expected in NOUNS)) {
    return true; // an explicit None, or a parameter whose default says no type
  }
  if (expected === 'float') {
    return got === 'float' || got === 'int';
  }
  if (expected === 'tuple') {
    return got === 'list';
  }
  return got === expected;
}

/** The text a field starts with: the default as the cell writes it (a `str` unquoted). */
export function initialText(param: IParameter): string {
  if (TEXT_TYPES.has(param.type)) {
    try {
      const value = parseLiteral(param.default);
      if (typeof value === 'string') {
        return value;
      }
    } catch {
      // an expression: shown as written
    }
  }
  return param.default;
}

/** The text a field shows for a value a job was run with (for "re-run"). */
export function textOf(param: IParameter | undefined, value: Value): string {
  if (param && TEXT_TYPES.has(param.type) && typeof value === 'string') {
    return value;
  }
  return pythonLiteral(value);
}

/** `value` written as a Python literal. */
export function pythonLiteral(value: Value): string {
  if (value === null) {
    return 'None';
  }
  if (typeof value === 'boolean') {
    return value ? 'True' : 'False';
  }
  if (typeof value === 'number' || typeof value === 'string') {
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) {
    return `[${value.map(pythonLiteral).join(', ')}]`;
  }
  return `{${Object.entries(value)
    .map(([k, v]) => `${JSON.stringify(k)}: ${pythonLiteral(v)}`)
    .join(', ')}}`;
}

/** Read the text typed for `param`, checked against its type. */
export function checkValue(param: IParameter, text: string): Checked {
  if (TEXT_TYPES.has(param.type)) {
    return { ok: true, value: text };
  }
  let value: Value;
  try {
    value = parseLiteral(text);
  } catch (error) {
    if (param.type in NOUNS) {
      return {
        ok: false,
        message: `${param.name} expects ${NOUNS[param.type]} (its default is ${param.default}), not ${text.trim() || 'nothing'}`
      };
    }
    return { ok: false, message: `not a Python value (${(error as Error).message}); quote text to make it a string` };
  }
  const got = pythonType(value, text);
  if (!accepts(param.type, got)) {
    return {
      ok: false,
      message: `${param.name} expects ${NOUNS[param.type]} (its default is ${param.default}), got ${got} ${text.trim()}`
    };
  }
  return { ok: true, value };
}

/** What the form holds: the declared parameters' texts, and names it does not know. */
export interface IEntry {
  name: string;
  text: string;
}

/** The form's parameters, checked: the values to send, and a message per field in error. */
export interface ICheckedParameters {
  values: { [name: string]: Value };
  errors: { [name: string]: string };
}

/**
 * Check every entry against the notebook's declared parameters. Values equal to the
 * default's text are left out (the notebook's own default runs); a name the cell does not
 * declare is an error, as the service would refuse it.
 */
export function checkParameters(declared: IParameter[], entries: IEntry[]): ICheckedParameters {
  const byName = new Map(declared.map(p => [p.name, p]));
  const values: { [name: string]: Value } = {};
  const errors: { [name: string]: string } = {};
  for (const { name, text } of entries) {
    const param = byName.get(name);
    if (!param) {
      const known = declared.map(p => p.name).join(', ') || 'none';
      errors[name] = `unknown parameter ${name}: the notebook's parameters cell declares ${known}`;
      continue;
    }
    if (text === initialText(param)) {
      continue;
    }
    const checked = checkValue(param, text);
    if (checked.ok) {
      values[name] = checked.value;
    } else {
      errors[name] = checked.message;
    }
  }
  return { values, errors };
}

/** The job's own fields as typed in the form (empty: the service's default). */
export interface IJobFields {
  gpus: string;
  timeout: string;
  retries: string;
  priority: string;
}

/** The job's own fields, checked: what to send, and a message per field in error. */
export interface ICheckedJobFields {
  values: { gpus?: number; timeout?: number; retries?: number; priority?: number };
  errors: { [field: string]: string };
}

/**
 * Check the job's own fields with the service's bounds (`JobManager.prepare`): GPUs and
 * retries whole numbers ≥ 0, a time-out a positive number of seconds, a priority a whole
 * number from -1000 to 1000. Whether the GPUs fit my quota only the service knows.
 */
export function checkJobFields(fields: IJobFields): ICheckedJobFields {
  const values: ICheckedJobFields['values'] = {};
  const errors: { [field: string]: string } = {};
  const whole = (field: keyof IJobFields, min: number, max: number, what: string) => {
    const text = fields[field].trim();
    if (!text) {
      return;
    }
    if (!/^[+-]?\d+$/.test(text) || Number(text) < min || Number(text) > max) {
      errors[field] = `${what} must be a whole number ${max === Infinity ? `of at least ${min}` : `from ${min} to ${max}`}`;
      return;
    }
    values[field] = Number(text);
  };
  whole('gpus', 0, Infinity, 'GPUs');
  whole('retries', 0, Infinity, 'retries');
  whole('priority', -1000, 1000, 'priority');
  const timeout = fields.timeout.trim();
  if (timeout) {
    const n = Number(timeout);
    if (!/^\d*\.?\d+(e[+-]?\d+)?$/i.test(timeout) || !(n > 0) || !Number.isFinite(n)) {
      errors.timeout = 'time-out must be a positive number of seconds (empty: no time-out)';
    } else {
      values.timeout = n;
    }
  }
  return { values, errors };
}
