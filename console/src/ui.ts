// What every screen shares: the signed-in client, messages to the user,
// and buttons that run an API call.

import { ApiError } from "../../sdk/js/src/errors.js";
import type { Client } from "../../sdk/js/src/client.js";
import type { Key } from "../../sdk/js/src/types.js";
import { h } from "./dom.js";

/** A screen: its element, and a refresh run every second while shown. */
export interface View {
  el: HTMLElement;
  refresh(): Promise<void>;
}

/** What a screen gets from the app. */
export interface Ctx {
  client: Client;
  /** The signed-in key (no secret). */
  me: Key;
  notify: Notifier;
  /** Refresh the screen now (after an action changed something). */
  refresh(): void;
}

/** describe turns an error into a sentence for the user. */
export function describe(e: unknown): string {
  if (e instanceof ApiError) {
    const msg = e.message.replace(/\.$/, "");
    switch (e.status) {
      case 401:
        return `This key was refused: ${msg}.`;
      case 403:
        return `Not allowed with this key: ${msg}. Ask for a key with a higher role.`;
      case 404:
        return `Not found: ${msg}.`;
      case 409:
        return `Not possible now: ${msg}.`;
      case 429:
        return `Too many requests: ${msg}.`;
      default:
        return e.status >= 500 ? `The server failed: ${msg}.` : `${msg} (${e.code}).`;
    }
  }
  if (e instanceof TypeError) return "The server cannot be reached.";
  return e instanceof Error ? e.message : String(e);
}

/** Notifier shows messages above the screen; each goes after 8 s or on close. */
export class Notifier {
  readonly el = h("div", { class: "notices", "aria-live": "polite" });

  error(e: unknown): void {
    this.add("error", describe(e));
  }

  ok(msg: string): void {
    this.add("ok", msg);
  }

  clear(): void {
    this.el.replaceChildren();
  }

  private add(kind: "error" | "ok", msg: string): void {
    const close = h("button", { type: "button", class: "close", "aria-label": "Dismiss" }, "×");
    const n = h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, h("span", {}, msg), close);
    close.addEventListener("click", () => n.remove());
    this.el.append(n);
    while (this.el.childElementCount > 4) this.el.firstElementChild?.remove();
    window.setTimeout(() => n.remove(), 8000);
  }
}

export interface ActionOptions {
  class?: string;
  /** Ask for a second click (within 4 s) showing this label before running. */
  confirm?: string;
  title?: string;
}

/** action makes a button that runs fn, disabled while it runs; a failure
 * is shown by ctx.notify, and the screen refreshes after either. */
export function action(ctx: Ctx, label: string, fn: () => Promise<unknown>, opts: ActionOptions = {}): HTMLButtonElement {
  const b = h("button", { type: "button", class: opts.class ?? "", title: opts.title }, label);
  let timer = 0;
  const disarm = (): void => {
    window.clearTimeout(timer);
    delete b.dataset.armed;
    b.textContent = label;
  };
  b.addEventListener("click", () => {
    if (opts.confirm && !b.dataset.armed) {
      b.dataset.armed = "true";
      b.textContent = opts.confirm;
      timer = window.setTimeout(disarm, 4000);
      return;
    }
    disarm();
    run(ctx, b, fn);
  });
  return b;
}

/** onSubmit runs fn when the form is submitted, its submit button disabled
 * meanwhile; a failure is shown by ctx.notify, and the screen refreshes
 * after either. */
export function onSubmit(ctx: Ctx, form: HTMLFormElement, fn: () => Promise<unknown>): void {
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    run(ctx, form.querySelector<HTMLButtonElement>("button[type=submit]"), fn);
  });
}

/** run runs fn with button disabled meanwhile; a failure is shown by
 * ctx.notify, and the screen refreshes after either. */
function run(ctx: Ctx, button: HTMLButtonElement | null, fn: () => Promise<unknown>): void {
  if (button) button.disabled = true;
  fn()
    .catch((e: unknown) => ctx.notify.error(e))
    .finally(() => {
      if (button) button.disabled = false;
      ctx.refresh();
    });
}

/** section wraps a screen's part under a heading. */
export function section(title: string, ...children: (Node | null)[]): HTMLElement {
  return h("section", { class: "panel" }, h("h2", {}, title), ...children);
}
