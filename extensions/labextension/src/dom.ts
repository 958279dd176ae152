/**
 * Small DOM builders the sections share: the panel renders plain elements (no React),
 * and every text goes in through `textContent`, never as HTML.
 */

/** An element with a class and children (strings become text nodes). */
export function h(
  tag: string,
  className: string,
  ...children: (Node | string)[]
): HTMLElement {
  const el = document.createElement(tag);
  if (className) {
    el.className = className;
  }
  for (const child of children) {
    el.append(child);
  }
  return el;
}

/** A table with a header row and one row per item. */
export function table(headers: string[], rows: (Node | string)[][]): HTMLElement {
  const head = h('tr', '', ...headers.map(text => h('th', '', text)));
  const body = rows.map(cells => h('tr', '', ...cells.map(cell => h('td', '', cell))));
  return h('table', '', h('thead', '', head), h('tbody', '', ...body));
}

/** Replace `el`'s content with `children`. */
export function show(el: HTMLElement, ...children: (Node | string)[]): void {
  el.replaceChildren(...children);
}
