/**
 * A section of the sidebar: a title, a body that says "loading" until the first answer,
 * the service's message when a call fails, and a `refresh()` the sidebar calls on its timer.
 * A refresh replaces only `content`: what a section keeps open in `body` around it (a
 * form being filled in, a job being watched) survives it.
 */
import { Widget } from '@lumino/widgets';

import { h, show } from './dom';

export abstract class Section extends Widget {
  protected readonly body: HTMLElement;
  protected readonly content: HTMLElement;
  private _busy = false;

  constructor(title: string, className: string) {
    super();
    this.addClass('aidc-Section');
    this.addClass(className);
    this.content = h('div', 'aidc-content', h('p', 'aidc-loading', 'Loading…'));
    this.body = h('div', 'aidc-body', this.content);
    this.node.append(h('h3', '', title), this.body);
  }

  /** Fetch and render; a failure replaces the body with its message. */
  async refresh(): Promise<void> {
    if (this._busy) {
      return; // the previous call has not ended yet (each one ends: it has a time-out)
    }
    this._busy = true;
    try {
      show(this.content, ...(await this.render()));
    } catch (error) {
      show(this.content, h('p', 'aidc-error', `Error: ${(error as Error).message}`));
    } finally {
      this._busy = false;
    }
  }

  /** The section's content, from fresh answers of the services. */
  protected abstract render(): Promise<(Node | string)[]>;
}
