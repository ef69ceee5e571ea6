// The semaphored console: sign in with an API key (kept in this tab's
// sessionStorage), then screens chosen by the key's role, each refreshed
// every second through the HTTP API while it is shown.

import { Client } from "../../sdk/js/src/client.js";
import { ApiError } from "../../sdk/js/src/errors.js";
import type { Key } from "../../sdk/js/src/types.js";
import { h, show, text } from "./dom.js";
import { keysView, lookupView, tenantsView } from "./keys.js";
import { semaphoreView } from "./semaphore.js";
import { semaphoresView } from "./semaphores.js";
import { Notifier, describe, section, type Ctx, type View } from "./ui.js";

const storageKey = "semaphored.console.key";
const every = 1000; // ms between refreshes: the screen is at most ~1 s behind

const root = document.getElementById("app")!;

function loginScreen(message = ""): void {
  const input = h("input", { type: "password", id: "api-key", required: true, autocomplete: "off", spellcheck: "false", placeholder: "sk_…" });
  const error = h("p", { class: "notice error", role: "alert", id: "login-error", hidden: !message }, message);
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "login", id: "login" },
    h("h1", {}, h("img", { src: "icon.svg", alt: "", width: "28", height: "28" }), "semaphored"),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("p", { class: "hint" }, "The key stays in this browser tab (sessionStorage) and is sent only to this server. The console shows what the key's role may see and do."),
    error,
    submit,
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    const key = input.value.trim();
    signIn(key, (e) => {
      text(error, describe(e) + " Signing in again shortly…");
      show(error, true);
    })
      .catch((e: unknown) => {
        text(error, describe(e));
        show(error, true);
      })
      .finally(() => (submit.disabled = false));
  });
  root.replaceChildren(h("main", { class: "login-wrap" }, form));
  input.focus();
}

/** How many times sign-in waits out a 429 before it shows the error. */
const signInTries = 10;

/** signIn checks the key with whoami and starts the app. A key over its
 * rate limit waits as long as the server asks (Retry-After) and tries
 * again, as the refresh loop does; waiting() is told each time. */
async function signIn(key: string, waiting: (e: ApiError) => void = () => {}): Promise<void> {
  const client = new Client(location.origin, key);
  for (let tries = 1; ; tries++) {
    try {
      const me = await client.whoami();
      sessionStorage.setItem(storageKey, key);
      new App(client, me).start();
      return;
    } catch (e: unknown) {
      if (!(e instanceof ApiError) || e.status !== 429 || tries >= signInTries) throw e;
      waiting(e);
      await new Promise((resolve) => window.setTimeout(resolve, Math.max(every, (e.retryAfter ?? 1) * 1000)));
    }
  }
}

function signOut(message = ""): void {
  sessionStorage.removeItem(storageKey);
  loginScreen(message);
}

class App implements Ctx {
  readonly notify = new Notifier();
  private readonly main = h("main", { class: "content" });
  private readonly viewError = h("div", { class: "notice error view-error", role: "alert", hidden: true });
  private readonly live = h("span", { class: "live", id: "live" });
  private readonly nav = h("nav", { class: "tabs" });
  private view: View | null = null;
  private timer = 0;
  private running = false;
  private again = false;
  private stopped = false;

  constructor(
    readonly client: Client,
    readonly me: Key,
  ) {}

  start(): void {
    const role = this.me.role;
    const link = (href: string, label: string, id: string): HTMLElement => h("a", { href, id }, label);
    if (role !== "worker") this.nav.append(link("#/semaphores", "Semaphores", "nav-semaphores"));
    else this.nav.append(link("#/", "Semaphore", "nav-lookup"));
    if (role === "admin" || role === "operator") this.nav.append(link("#/keys", "Keys", "nav-keys"));
    if (role === "operator") this.nav.append(link("#/tenants", "Tenants", "nav-tenants"));
    const out = h("button", { type: "button", id: "sign-out" }, "Sign out");
    out.addEventListener("click", () => this.stop(""));
    const header = h(
      "header",
      { class: "top" },
      h("a", { class: "brand", href: "#/" }, h("img", { src: "icon.svg", alt: "", width: "24", height: "24" }), "semaphored"),
      this.nav,
      h("div", { class: "who" }, this.live, h("span", { class: "key", id: "who", title: `key ${this.me.id}` }, `${this.me.role} · ${this.me.tenant} · ${this.me.prefix}…`), out),
    );
    root.replaceChildren(header, this.notify.el, this.viewError, this.main);
    window.addEventListener("hashchange", this.route);
    document.addEventListener("visibilitychange", this.visibility);
    this.route();
  }

  private stop(message: string): void {
    this.stopped = true;
    window.clearTimeout(this.timer);
    window.removeEventListener("hashchange", this.route);
    document.removeEventListener("visibilitychange", this.visibility);
    signOut(message);
  }

  private readonly visibility = (): void => {
    if (!document.hidden) this.refresh();
  };

  private readonly route = (): void => {
    const path = location.hash.replace(/^#/, "") || "/";
    const role = this.me.role;
    const admin = role === "admin" || role === "operator";
    let view: View;
    const parts = path.split("/").filter(Boolean).map(decodePart);
    if (parts.length === 0) view = admin ? semaphoresView(this) : lookupView(this);
    else if (parts[0] === "semaphores" && parts.length === 1) view = admin ? semaphoresView(this) : denied("The list of semaphores needs an admin key.");
    else if (parts[0] === "semaphores" && parts.length === 2) view = semaphoreView(this, parts[1]);
    else if (parts[0] === "keys" && parts.length === 1) view = admin ? keysView(this) : denied("API keys are managed with an admin key.");
    else if (parts[0] === "tenants" && parts.length === 1) view = role === "operator" ? tenantsView(this) : denied("Tenants are managed with an operator key.");
    else view = message("Not found", `There is no screen at ${parts.join("/")}.`);
    for (const a of this.nav.querySelectorAll("a")) a.classList.toggle("active", a.getAttribute("href") === `#/${parts[0] ?? ""}` || (parts.length === 0 && a.getAttribute("href") === (admin ? "#/semaphores" : "#/")));
    this.view = view;
    this.notify.clear();
    show(this.viewError, false);
    this.main.replaceChildren(view.el);
    this.refresh();
  };

  /** refresh runs the shown screen's refresh now, then every second; one at a time. */
  refresh(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    window.clearTimeout(this.timer);
    const view = this.view;
    if (!view) return;
    this.running = true;
    let delay = every;
    view
      .refresh()
      .then(() => {
        if (view !== this.view) return;
        show(this.viewError, false);
        this.setLive(true);
      })
      .catch((e: unknown) => {
        if (e instanceof ApiError && e.status === 401) {
          this.stop(describe(e) + " Sign in with another key.");
          return;
        }
        // A key over its rate limit waits as long as the server asks.
        if (e instanceof ApiError && e.status === 429 && e.retryAfter) delay = Math.max(every, e.retryAfter * 1000);
        if (view !== this.view) return;
        this.setLive(!(e instanceof TypeError));
        text(this.viewError, describe(e));
        show(this.viewError, true);
      })
      .finally(() => {
        this.running = false;
        if (this.stopped) return;
        if (this.again) {
          this.again = false;
          this.refresh();
          return;
        }
        if (!document.hidden) this.timer = window.setTimeout(() => this.refresh(), delay);
      });
  }

  private setLive(ok: boolean): void {
    text(this.live, ok ? `live · ${new Date().toLocaleTimeString()}` : "server unreachable, retrying");
    this.live.classList.toggle("down", !ok);
  }
}

/** decodePart decodes one segment of the location's hash; a malformed
 * escape stays as it is (no screen has that name). */
function decodePart(p: string): string {
  try {
    return decodeURIComponent(p);
  } catch {
    return p;
  }
}

function message(title: string, body: string): View {
  return { el: h("div", { class: "view", id: "message" }, section(title, h("p", {}, body))), refresh: async () => {} };
}

function denied(body: string): View {
  const v = message("Not available with this key", body);
  v.el.id = "denied";
  return v;
}

const saved = sessionStorage.getItem(storageKey);
if (saved) {
  // A refused key is forgotten; an unreachable server keeps it for a retry.
  signIn(saved).catch((e: unknown) => (e instanceof ApiError && e.status === 401 ? signOut(describe(e)) : loginScreen(describe(e))));
} else {
  loginScreen();
}
