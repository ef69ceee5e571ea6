// DOM helpers: elements built with h() (text is always set as text, never
// parsed as HTML), lists kept in place by key so that a refresh every
// second neither loses a button under the pointer nor a field's focus.

type Child = Node | string | null | undefined | false;
type Attrs = Record<string, string | number | boolean | undefined | ((ev: Event) => void)>;

/** h creates an element with attributes ("on…" ones are listeners) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = String(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

/** text sets an element's text only when it changed. */
export function text(el: Element, s: string): void {
  if (el.textContent !== s) el.textContent = s;
}

/** show hides or shows an element. */
export function show(el: HTMLElement, on: boolean): void {
  if (el.hidden === on) el.hidden = !on;
}

/** A row of a KeyedList: its element and how to bring it up to date. */
export interface Row<T> {
  el: HTMLElement;
  update(item: T): void;
}

/** KeyedList keeps parent's children in the order of the items, creating,
 * updating and removing rows by key. */
export class KeyedList<T> {
  private readonly rows = new Map<string, Row<T>>();

  constructor(
    private readonly parent: HTMLElement,
    private readonly key: (item: T) => string,
    private readonly make: (item: T) => Row<T>,
  ) {}

  set(items: readonly T[]): void {
    const seen = new Set<string>();
    let prev: Element | null = null;
    for (const item of items) {
      const k = this.key(item);
      seen.add(k);
      let row = this.rows.get(k);
      if (!row) {
        row = this.make(item);
        this.rows.set(k, row);
      }
      row.update(item);
      const at: Element | null = prev ? prev.nextElementSibling : this.parent.firstElementChild;
      if (at !== row.el) this.parent.insertBefore(row.el, at);
      prev = row.el;
    }
    for (const [k, row] of this.rows) {
      if (!seen.has(k)) {
        row.el.remove();
        this.rows.delete(k);
      }
    }
  }

  get size(): number {
    return this.rows.size;
  }
}

/** A table with a header and a body kept by a KeyedList, and a line shown
 * when it has no rows. Below 700px its rows become labelled cards (CSS). */
export function table(columns: string[], emptyText: string): { el: HTMLElement; body: HTMLTableSectionElement; empty: HTMLElement } {
  const body = h("tbody");
  const empty = h("p", { class: "empty" }, emptyText);
  const el = h(
    "div",
    { class: "table-wrap" },
    h("table", { class: "cards" }, h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", { scope: "col" }, c)))), body),
    empty,
  );
  return { el, body, empty };
}

/** td makes a cell labelled for the card layout. */
export function td(label: string, ...children: Child[]): HTMLTableCellElement {
  return h("td", { "data-label": label }, ...children);
}

/** A usage bar: used out of max, over 100% shown full and marked. */
export function bar(): { el: HTMLElement; set(used: number, max: number): void } {
  const fill = h("span", { class: "fill" });
  const el = h("span", { class: "bar", role: "meter", "aria-valuemin": "0" }, fill);
  return {
    el,
    set(used, max) {
      const pct = max > 0 ? Math.min(100, (used / max) * 100) : 0;
      const w = `${pct.toFixed(1)}%`;
      if (fill.style.width !== w) fill.style.width = w;
      el.setAttribute("aria-valuenow", String(used));
      el.setAttribute("aria-valuemax", String(max));
      el.classList.toggle("full", used >= max);
      el.classList.toggle("over", used > max);
    },
  };
}

/** relTime says how long ago (or, for a future time, in how long) t is. */
export function relTime(t: string | null | undefined, now = Date.now()): string {
  if (!t) return "—";
  const ms = Date.parse(t) - now;
  const s = Math.round(Math.abs(ms) / 1000);
  const span = s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m ${s % 60}s` : s < 86400 ? `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m` : `${Math.floor(s / 86400)}d`;
  return ms >= 0 ? `in ${span}` : `${span} ago`;
}

/** short shortens an id for display; the full id is in the title. */
export function short(id: string): string {
  return id.length > 14 ? `${id.slice(0, 12)}…` : id;
}
