/**
 * Reading server-sent events from a stream of text chunks (the jobs service's live
 * events, relayed by the server extension). `fetch` gives the panel the status and the
 * service's message of a refused stream, which `EventSource` hides; this reads what
 * `fetch` streams. Pure: the front end's unit tests run it in Node.
 */

/** One event: its `id:` (the service's sequence number), `event:` type and `data:`. */
export interface IServerEvent {
  id: string | null;
  event: string;
  data: string;
}

/** Splits chunks into events; a chunk may end anywhere, even inside a line. */
export class EventStreamParser {
  private buffer = '';
  private id: string | null = null;
  private event = '';
  private data: string[] = [];
  /** The last `id:` seen, to resume a stream from (`Last-Event-ID`). */
  lastId: string | null = null;

  /** The events completed by `chunk`. */
  push(chunk: string): IServerEvent[] {
    this.buffer += chunk;
    const events: IServerEvent[] = [];
    let end: number;
    while ((end = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, end);
      const eol = this.buffer.startsWith('\r\n', end) ? 2 : 1;
      if (this.buffer[end] === '\r' && eol === 1 && end === this.buffer.length - 1) {
        break; // a '\r' that may yet be followed by its '\n'
      }
      this.buffer = this.buffer.slice(end + eol);
      const event = this.line(line);
      if (event) {
        events.push(event);
      }
    }
    return events;
  }

  private line(line: string): IServerEvent | null {
    if (line === '') {
      if (!this.data.length) {
        this.event = '';
        return null;
      }
      const event = { id: this.id, event: this.event || 'message', data: this.data.join('\n') };
      this.event = '';
      this.data = [];
      return event;
    }
    if (line.startsWith(':')) {
      return null; // a comment: the service's keep-alive
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) {
      value = value.slice(1);
    }
    if (field === 'data') {
      this.data.push(value);
    } else if (field === 'event') {
      this.event = value;
    } else if (field === 'id') {
      this.id = value;
      this.lastId = value;
    }
    return null;
  }
}
