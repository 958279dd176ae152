// The "Run as job" form's type checks (src/params.ts), compiled by `jlpm test` into
// build/unit and run with Node's own test runner: no browser, no JupyterLab.
const test = require('node:test');
const assert = require('node:assert/strict');

const {
  checkJobFields,
  checkParameters,
  checkValue,
  initialText,
  parseLiteral,
  textOf
} = require('../build/unit/params.js');

const param = (name, type, def) => ({ name, type, default: def, help: '' });
const DECLARED = [
  param('epochs', 'int', '3'),
  param('lr', 'float', '0.01'),
  param('name', 'str', "'run'"),
  param('augment', 'bool', 'False'),
  param('layers', 'list', '[64, 32]'),
  param('opts', 'dict', "{'a': 1}"),
  param('anything', 'any', 'None')
];

test('Python literals are read as the parameters cell writes them', () => {
  assert.deepEqual(parseLiteral("[1, 2.5, 'a', \"b\", True, None]"), [1, 2.5, 'a', 'b', true, null]);
  assert.deepEqual(parseLiteral("{'k': (1, 2), \"j\": {}}"), { k: [1, 2], j: {} });
  assert.equal(parseLiteral(' -1_000 '), -1000);
  assert.equal(parseLiteral("'it\\'s'"), "it's");
  assert.throws(() => parseLiteral('np.arange(3)'), /a name/);
  assert.throws(() => parseLiteral('[1, 2'), /expected/);
  assert.throws(() => parseLiteral("'open"), /closing quote/);
  assert.throws(() => parseLiteral('1 2'), /after the value/);
});

test('each value is checked against the type of its default', () => {
  const [epochs, lr, name, augment, layers, opts, anything] = DECLARED;
  assert.deepEqual(checkValue(epochs, '5'), { ok: true, value: 5 });
  assert.equal(checkValue(epochs, '5.0').ok, false); // a float where an int is declared
  assert.match(checkValue(epochs, 'five').message, /epochs expects an integer \(its default is 3\), not five/);
  assert.match(checkValue(anything, 'five').message, /quote text/);
  assert.match(checkValue(epochs, "'5'").message, /expects an integer .* got str/);
  assert.deepEqual(checkValue(lr, '1'), { ok: true, value: 1 }); // an int is a number
  assert.deepEqual(checkValue(lr, '1e-3'), { ok: true, value: 0.001 });
  assert.deepEqual(checkValue(name, 'no quotes needed'), { ok: true, value: 'no quotes needed' });
  assert.deepEqual(checkValue(augment, 'True'), { ok: true, value: true });
  assert.match(checkValue(augment, '1').message, /expects True or False/);
  assert.deepEqual(checkValue(layers, '(1, 2)'), { ok: true, value: [1, 2] });
  assert.equal(checkValue(layers, '{}').ok, false);
  assert.deepEqual(checkValue(opts, "{'b': [True]}"), { ok: true, value: { b: [true] } });
  assert.deepEqual(checkValue(anything, "'x'"), { ok: true, value: 'x' });
  assert.deepEqual(checkValue(epochs, 'None'), { ok: true, value: null }); // as the service
});

test('only changed values are sent, unknown names and wrong types are marked', () => {
  const entries = DECLARED.map(p => ({ name: p.name, text: initialText(p) }));
  assert.equal(initialText(DECLARED[2]), 'run');
  assert.deepEqual(checkParameters(DECLARED, entries), { values: {}, errors: {} });

  entries[0].text = '10';
  entries[2].text = 'other';
  let checked = checkParameters(DECLARED, entries);
  assert.deepEqual(checked, { values: { epochs: 10, name: 'other' }, errors: {} });

  entries[1].text = 'fast';
  entries.push({ name: 'epoch', text: '4' });
  checked = checkParameters(DECLARED, entries);
  assert.deepEqual(Object.keys(checked.errors).sort(), ['epoch', 'lr']);
  assert.match(checked.errors.epoch, /unknown parameter epoch: .*declares epochs, lr/);

  // a notebook without a parameters cell takes none
  assert.deepEqual(checkParameters([], []), { values: {}, errors: {} });
  assert.match(checkParameters([], [{ name: 'x', text: '1' }]).errors.x, /declares none/);
});

test('a job run before is shown again with its values', () => {
  assert.equal(textOf(DECLARED[2], 'run 2'), 'run 2');
  assert.equal(textOf(DECLARED[4], [1, 'a', false, null]), '[1, "a", False, None]');
  assert.deepEqual(checkValue(DECLARED[4], textOf(DECLARED[4], [1, 'a'])), {
    ok: true,
    value: [1, 'a']
  });
});

test("the job's own fields have the service's bounds", () => {
  const empty = { gpus: '', timeout: '', retries: '', priority: '' };
  assert.deepEqual(checkJobFields(empty), { values: {}, errors: {} });
  assert.deepEqual(checkJobFields({ gpus: '2', timeout: '90.5', retries: '1', priority: '-5' }), {
    values: { gpus: 2, timeout: 90.5, retries: 1, priority: -5 },
    errors: {}
  });
  const bad = checkJobFields({ gpus: '-1', timeout: '0', retries: '1.5', priority: '5000' });
  assert.deepEqual(Object.keys(bad.errors).sort(), ['gpus', 'priority', 'retries', 'timeout']);
  assert.deepEqual(bad.values, {});
});
