// Reading the jobs service's server-sent events from arbitrary chunks (src/sse.ts).
const test = require('node:test');
const assert = require('node:assert/strict');

const { EventStreamParser } = require('../build/unit/sse.js');

test('events split anywhere across chunks are read whole', () => {
  const stream = 'id: 1\nevent: cell_start\ndata: {"cell": 0}\n\n: keep-alive\n\nid: 2\r\nevent: cell_end\r\ndata: a\r\ndata: b\r\n\r\n';
  for (let size = 1; size <= stream.length; size++) {
    const parser = new EventStreamParser();
    const events = [];
    for (let i = 0; i < stream.length; i += size) {
      events.push(...parser.push(stream.slice(i, i + size)));
    }
    assert.deepEqual(events, [
      { id: '1', event: 'cell_start', data: '{"cell": 0}' },
      { id: '2', event: 'cell_end', data: 'a\nb' }
    ], `chunks of ${size}`);
    assert.equal(parser.lastId, '2');
  }
});

test('an event without a type is a message; an unfinished one waits', () => {
  const parser = new EventStreamParser();
  assert.deepEqual(parser.push('data:x\n\ndata: y'), [{ id: null, event: 'message', data: 'x' }]);
  assert.deepEqual(parser.push('\n\n'), [{ id: null, event: 'message', data: 'y' }]);
});
