// The Models section's checks and builders (src/modelrequests.ts), compiled by `jlpm test`
// into build/unit and run with Node's own test runner: no browser, no JupyterLab.
const test = require('node:test');
const assert = require('node:assert/strict');

const {
  checkCanaryWeight,
  checkReplicas,
  exampleRequest,
  latencyText,
  parseRequestBody,
  servedRows,
  signatureText
} = require('../build/unit/modelrequests.js');

test('a canary weight outside 0 to 1 is refused before any call', () => {
  assert.deepEqual(checkCanaryWeight('0.25'), { ok: true, value: 0.25 });
  assert.deepEqual(checkCanaryWeight(' 1 '), { ok: true, value: 1 });
  assert.deepEqual(checkCanaryWeight('0'), { ok: true, value: 0 });
  assert.deepEqual(checkCanaryWeight('.5'), { ok: true, value: 0.5 });
  const over = checkCanaryWeight('1.5');
  assert.equal(over.ok, false);
  assert.match(over.error, /from 0 to 1 .*not 1\.5/);
  assert.equal(checkCanaryWeight('-0.1').ok, false);
  assert.equal(checkCanaryWeight('1e3').ok, false);
  assert.match(checkCanaryWeight('half').error, /a number from 0 to 1, not 'half'/);
  assert.match(checkCanaryWeight('').error, /weight/);
  assert.equal(checkCanaryWeight('NaN').ok, false);
  assert.equal(checkCanaryWeight('Infinity').ok, false);
});

test('replicas are a whole number the service accepts', () => {
  assert.deepEqual(checkReplicas('2'), { ok: true, value: 2 });
  assert.match(checkReplicas('0').error, /from 1 to 16, not '0'/);
  assert.equal(checkReplicas('17').ok, false);
  assert.equal(checkReplicas('1.5').ok, false);
  assert.equal(checkReplicas('').ok, false);
});

const SIGNATURE = {
  inputs: [
    { name: 'x', datatype: 'FP32', shape: [-1, 2] },
    { name: 'mask', datatype: 'BOOL', shape: [3] }
  ],
  outputs: [{ name: 'y', datatype: 'FP32', shape: [-1, 2] }]
};

test('the example request has the signature\'s inputs, one row where a dimension is dynamic', () => {
  assert.deepEqual(exampleRequest(SIGNATURE), {
    inputs: [
      { name: 'x', datatype: 'FP32', shape: [1, 2], data: [1, 2] },
      { name: 'mask', datatype: 'BOOL', shape: [3], data: [true, false, true] }
    ]
  });
  assert.equal(signatureText(SIGNATURE), 'x FP32 [-1,2], mask BOOL [3] → y FP32 [-1,2]');
  assert.equal(signatureText(null), '');
});

test('a typed body must be a JSON object; its shape is left to the service', () => {
  assert.deepEqual(parseRequestBody(' {"inputs": []} '), { ok: true, value: '{"inputs":[]}' });
  // a wrong shape is sent: the service answers with the expected signature
  assert.equal(parseRequestBody('{"inputs": [{"name": "x", "shape": [1, 3]}]}').ok, true);
  assert.match(parseRequestBody('{"inputs": [').error, /^the request body is not JSON: /);
  assert.match(parseRequestBody('[1, 2]').error, /must be a JSON object/);
  assert.equal(parseRequestBody('null').ok, false);
});

test('the live state: a row per served version with its share, replicas and latency', () => {
  const rows = servedRows({
    version: 1, previous_version: null, canary_version: 2, canary_weight: 0.25, replicas: 2,
    ready_replicas: 2, serving: true, ready: false,
    versions: [
      { version: 1, weight: 0.75, replicas: [{ ready: true }, { ready: true }] },
      { version: 2, weight: 0.25, replicas: [{ ready: true }, { ready: false }] }
    ],
    stats: { 1: { requests: 7, errors: 1, mean_latency_ms: 3, p50_latency_ms: 1.234, p99_latency_ms: 45.67 } }
  });
  assert.deepEqual(rows, [
    { version: 1, role: 'primary', share: '75%', replicas: '2/2 ready', requests: 7, errors: 1,
      p50: '1.23 ms', p99: '45.7 ms' },
    { version: 2, role: 'canary', share: '25%', replicas: '1/2 ready', requests: 0, errors: 0,
      p50: '-', p99: '-' }
  ]);
  assert.equal(latencyText(undefined), '-');
});
