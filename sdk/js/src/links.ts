// The worker's transports (SPEC §6): a link carries the frames of one
// connection to a session — a websocket, an SSE stream (client frames
// posted), or long polls (client frames posted). The worker above is the
// same on each.

import { ApiError, ConnectionLostError } from "./errors.js";
import { errorOf } from "./client.js";

export type Transport = "auto" | "websocket" | "sse" | "longpoll";
export type LinkKind = Exclude<Transport, "auto">;

/** A server frame, as far as the worker reads it. */
export interface Frame {
  type: string;
  id?: string;
  session?: string;
  resumeToken?: string;
  heartbeat?: string;
  leases?: string[];
  jobs?: string[];
  subscriptions?: { semaphore: string; channel: string; prefetch: number }[];
  lease?: import("./types.js").Lease;
  job?: import("./types.js").Job;
  error?: { code: string; message: string; retryAfter?: number };
  code?: string;
  message?: string;
  closeCode?: number;
  reason?: string;
}

/** Why a link ended: the close code the server sent (0 if none) and the error. */
export interface LinkEnd {
  code: number;
  reason: string;
}

export interface Link {
  readonly kind: LinkKind;
  /** send writes a client frame; alone: a request whose reply may wait long (posted on its own). */
  send(frame: string, alone?: boolean): void;
  /** heard is when the server was last heard on the stream (ms since the epoch). */
  heard(): number;
  setSession(id: string): void;
  /** close drops the connection: the session is lost, resumable. */
  close(): void;
  /** end gives the session up. */
  end(): Promise<void>;
  /** ended resolves once, when the link is over. */
  readonly ended: Promise<LinkEnd>;
}

export interface DialContext {
  base: string; // http(s)://host[:port][/prefix]
  key: string;
  fetch: typeof fetch;
  /** A WebSocket constructor; headers are used when it takes them (the ws package). */
  WebSocket?: WebSocketCtor;
  wsTakesHeaders: boolean;
  onFrame(f: Frame): void;
}

export type WebSocketCtor = new (url: string, protocols?: string | string[], opts?: unknown) => WebSocketLike;

export interface WebSocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

// ---- websocket ----

class WsLink implements Link {
  readonly kind = "websocket" as const;
  readonly ended: Promise<LinkEnd>;
  /** opened settles when the socket opens, or fails to. */
  readonly opened: Promise<void>;
  private last = Date.now();
  private done: (e: LinkEnd) => void;
  private over = false;

  /** The handlers are attached at once: a frame that arrives with the
   * opening (the welcome) is never missed. */
  constructor(
    private readonly ws: WebSocketLike,
    onFrame: (f: Frame) => void,
    timeoutMs: number,
  ) {
    const d = deferred<LinkEnd>();
    this.ended = d.promise;
    let open = false;
    let settle: (err?: Error) => void = () => {};
    this.opened = new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => settle(new Error("semaphored: websocket did not open in time")), timeoutMs);
      settle = (err) => {
        clearTimeout(t);
        settle = () => {};
        if (err) reject(err);
        else resolve();
      };
    });
    this.done = (e) => {
      if (!this.over) {
        this.over = true;
        d.resolve(e);
      }
      if (!open) {
        settle(new Error(`semaphored: websocket could not be opened (${e.code} ${e.reason})`));
        try {
          ws.close();
        } catch {
          // never opened
        }
      }
    };
    ws.onopen = () => {
      open = true;
      settle();
    };
    ws.onmessage = (ev) => {
      this.last = Date.now();
      const text = typeof ev.data === "string" ? ev.data : String(ev.data);
      try {
        onFrame(JSON.parse(text) as Frame);
      } catch {
        // a malformed frame: ignored
      }
    };
    ws.onclose = (ev) => this.done({ code: ev.code, reason: ev.reason });
    ws.onerror = () => this.done({ code: 0, reason: "websocket error" });
    void this.opened.catch(() => this.done({ code: 0, reason: "not opened" }));
  }

  send(frame: string): void {
    if (this.over || this.ws.readyState !== 1) throw new ConnectionLostError();
    this.ws.send(frame);
  }
  heard(): number {
    return this.last;
  }
  setSession(): void {}
  close(): void {
    try {
      this.ws.close(4000, "dropped by the client");
    } catch {
      // closing a socket that never opened
    }
    this.done({ code: 0, reason: "dropped" });
  }
  async end(): Promise<void> {
    try {
      this.ws.close(1000, "worker closed");
    } catch {
      // already closed
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.ended, new Promise((r) => (timer = setTimeout(r, 2000)))]);
    clearTimeout(timer);
    this.done({ code: 1000, reason: "worker closed" });
  }
}

export async function dialWebSocket(ctx: DialContext, timeoutMs: number): Promise<Link> {
  const Ctor = ctx.WebSocket;
  if (!Ctor) throw new Error("semaphored: no WebSocket here (install the ws package in Node < 22)");
  const wsBase = ctx.base.replace(/^http/, "ws") + "/v1/ws";
  let ws: WebSocketLike;
  if (ctx.wsTakesHeaders) {
    ws = new Ctor(wsBase, undefined, { headers: { Authorization: `Bearer ${ctx.key}` } });
  } else {
    // a browser cannot set headers on a websocket: a single-use ticket
    const resp = await ctx.fetch(ctx.base + "/v1/ws/tickets", { method: "POST", headers: { Authorization: `Bearer ${ctx.key}` } });
    const text = await resp.text();
    if (!resp.ok) throw errorOf(resp.status, resp.headers.get("Retry-After"), text);
    const { ticket } = JSON.parse(text) as { ticket: string };
    ws = new Ctor(`${wsBase}?ticket=${encodeURIComponent(ticket)}`);
  }
  const link = new WsLink(ws, ctx.onFrame, timeoutMs);
  await link.opened;
  return link;
}

// ---- SSE and long-poll ----

/** HttpLink: frames from the server come on an SSE stream or from polls;
 * client frames are posted in order, those queued while a post runs going
 * together in the next one. */
class HttpLink implements Link {
  readonly ended: Promise<LinkEnd>;
  private last = Date.now();
  private sid = "";
  private queue: string[] = [];
  private posting = false;
  private over = false;
  private done: (e: LinkEnd) => void;
  readonly abort = new AbortController();

  constructor(
    readonly kind: "sse" | "longpoll",
    private readonly ctx: DialContext,
  ) {
    const d = deferred<LinkEnd>();
    this.ended = d.promise;
    this.done = (e) => {
      if (!this.over) {
        this.over = true;
        this.abort.abort();
        d.resolve(e);
      }
    };
  }

  hear(): void {
    this.last = Date.now();
  }
  heard(): number {
    return this.last;
  }
  setSession(id: string): void {
    this.sid = id;
  }
  session(): string {
    return this.sid;
  }
  get isOver(): boolean {
    return this.over;
  }
  fail(e: LinkEnd): void {
    this.done(e);
  }
  close(): void {
    this.done({ code: 0, reason: "dropped" });
  }

  async end(): Promise<void> {
    try {
      await this.ctx.fetch(`${this.ctx.base}/v1/sessions/${encodeURIComponent(this.sid)}`, {
        method: "DELETE",
        headers: { Authorization: `Bearer ${this.ctx.key}` },
      });
    } catch {
      // the session ends after its grace period instead
    }
    this.done({ code: 1000, reason: "worker closed" });
  }

  /** deliver hands a frame to the worker; a closed frame ends the link. */
  deliver(f: Frame): boolean {
    if (this.over) return false;
    if (f.type === "closed") {
      this.done({ code: f.closeCode ?? 0, reason: f.reason ?? "" });
      return false;
    }
    this.ctx.onFrame(f);
    return true;
  }

  send(frame: string, alone = false): void {
    if (this.over) throw new ConnectionLostError();
    if (alone) {
      void this.post([frame]);
      return;
    }
    this.queue.push(frame);
    if (!this.posting) {
      this.posting = true;
      void this.poster();
    }
  }

  private async poster(): Promise<void> {
    while (!this.over && this.queue.length > 0) {
      const batch = this.queue.splice(0, 500);
      await this.post(batch);
    }
    this.posting = false;
  }

  private async post(frames: string[]): Promise<void> {
    try {
      const resp = await this.ctx.fetch(`${this.ctx.base}/v1/sessions/${encodeURIComponent(this.sid)}/frames`, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.ctx.key}`, "Content-Type": "application/json" },
        body: `[${frames.join(",")}]`,
        signal: this.abort.signal,
      });
      const text = await resp.text();
      if (!resp.ok) {
        this.done({ code: 0, reason: errorOf(resp.status, null, text).message });
        return;
      }
      for (const f of (JSON.parse(text) as { frames: Frame[] }).frames) {
        if (!this.deliver(f)) return;
      }
    } catch (err) {
      this.done({ code: 0, reason: String(err) });
    }
  }
}

async function httpError(resp: Response): Promise<ApiError> {
  return errorOf(resp.status, resp.headers.get("Retry-After"), await resp.text());
}

export async function dialSSE(ctx: DialContext, token: string, timeoutMs: number): Promise<Link> {
  const link = new HttpLink("sse", ctx);
  const url = `${ctx.base}/v1/sse${token ? `?resume=${encodeURIComponent(token)}` : ""}`;
  const timer = setTimeout(() => link.abort.abort(), timeoutMs);
  let resp: Response;
  try {
    resp = await ctx.fetch(url, {
      headers: { Authorization: `Bearer ${ctx.key}`, Accept: "text/event-stream" },
      signal: link.abort.signal,
    });
  } finally {
    clearTimeout(timer);
  }
  if (resp.status !== 200) throw await httpError(resp);
  if (!(resp.headers.get("Content-Type") ?? "").startsWith("text/event-stream") || !resp.body) {
    throw new Error("semaphored: GET /v1/sse did not answer an event stream");
  }
  void readEvents(link, resp.body);
  return link;
}

async function readEvents(link: HttpLink, body: ReadableStream<Uint8Array>): Promise<void> {
  const reader = body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  let data: string[] = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      link.hear();
      buf += dec.decode(value, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, "");
        buf = buf.slice(nl + 1);
        if (line === "") {
          if (data.length > 0) {
            const raw = data.join("\n");
            data = [];
            try {
              if (!link.deliver(JSON.parse(raw) as Frame)) return;
            } catch {
              // a malformed event: ignored
            }
          }
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        }
        // ":" comments are the server's pings (heard above)
      }
    }
    link.fail({ code: 0, reason: "the stream ended" });
  } catch (err) {
    link.fail({ code: 0, reason: String(err) });
  } finally {
    reader.releaseLock();
  }
}

export async function dialLongPoll(ctx: DialContext, token: string, heartbeatMs: () => number): Promise<Link> {
  const link = new HttpLink("longpoll", ctx);
  const resp = await ctx.fetch(`${ctx.base}/v1/sessions`, {
    method: "POST",
    headers: { Authorization: `Bearer ${ctx.key}`, "Content-Type": "application/json" },
    body: token ? JSON.stringify({ resume: token }) : "{}",
  });
  if (resp.status !== 201) throw await httpError(resp);
  const first = (await resp.json()) as Frame;
  link.setSession(first.session ?? "");
  link.deliver(first);
  void pollLoop(link, ctx, heartbeatMs);
  return link;
}

/** pollLoop polls until the link ends, each poll waiting up to a heartbeat,
 * so that the server is heard at least that often. */
async function pollLoop(link: HttpLink, ctx: DialContext, heartbeatMs: () => number): Promise<void> {
  while (!link.isOver) {
    const wait = Math.max(Math.round(heartbeatMs() / 1000), 1);
    try {
      const resp = await ctx.fetch(`${ctx.base}/v1/sessions/${encodeURIComponent(link.session())}/frames?wait=${wait}s`, {
        headers: { Authorization: `Bearer ${ctx.key}` },
        signal: link.abort.signal,
      });
      const text = await resp.text();
      if (!resp.ok) {
        link.fail({ code: 0, reason: errorOf(resp.status, null, text).message });
        return;
      }
      link.hear();
      for (const f of (JSON.parse(text) as { frames: Frame[] }).frames) {
        if (!link.deliver(f)) return;
      }
    } catch (err) {
      link.fail({ code: 0, reason: String(err) });
      return;
    }
  }
}
