// The worker (SPEC §6): one live connection to a session over which a
// process takes permits and receives jobs — a websocket, or, behind
// proxies that break websockets, an SSE stream or long polls. It
// reconnects with backoff and full jitter, resumes its session (leases,
// subscriptions and held jobs survive a dropped connection within the
// server's grace period), pings at the server's heartbeat, drops a
// connection it no longer hears the server on (deaf), and keeps its
// leases alive. This file is the connection and the calls; the jobs of its
// subscriptions are in jobs.ts, its session-bound leases in leases.ts.

import { Client, acquireBody } from "./client.js";
import { ApiError, ConnectionLostError, LeaseLostError, SessionDisplacedError, WorkerClosedError } from "./errors.js";
import { Jobs, subKey, type Handler, type SubscribeOptions, type Subscription } from "./jobs.js";
import { Leases } from "./leases.js";
import { dialLongPoll, dialSSE, dialWebSocket, type DialContext, type Frame, type Link, type LinkKind, type Transport, type WebSocketCtor } from "./links.js";
import { durationMs, durationString, enqueueBody, type AcquireOptions, type Duration, type EnqueueOptions, type Job, type Lease } from "./types.js";

export type { Transport, LinkKind, WebSocketCtor } from "./links.js";
export type { Handler, SubscribeOptions } from "./jobs.js";

export interface WorkerOptions {
  /** How to connect: "auto" (default: websocket, then SSE, then long-poll), or one transport. */
  transport?: Transport;
  fetch?: typeof fetch;
  /** Base URLs of other instances sharing the store: on a failed connect, or an instance going away, the worker tries the next; its session resumes through any of them. */
  instances?: string[];
  /** A WebSocket constructor. Default: the global one (a ticket authenticates it), else the ws package in Node. */
  WebSocket?: WebSocketCtor;
  /** Whether WebSocket takes an options object with headers (the ws package does). */
  wsTakesHeaders?: boolean;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** How often a worker in auto that fell back probes the better transports (default 60 s). */
  transportRetryMs?: number;
  /** How long close waits for running handlers (default 10 s). */
  closeTimeoutMs?: number;
  onConnect?: (ev: ConnectEvent) => void;
  logger?: Partial<Pick<Console, "info" | "warn" | "error">>;
}

export interface ConnectEvent {
  /** Base URL of the instance connected to. */
  url: string;
  session: string;
  /** The previous session came back with its leases, jobs and subscriptions. */
  resumed: boolean;
  /** Not the worker's first connection. */
  reconnect: boolean;
  transport: LinkKind;
}

export interface Health {
  connected: boolean;
  transport: LinkKind | "";
  session: string;
  /** When the server was last heard: a frame, a ping, a poll's answer (null when not connected). */
  lastFrame: Date | null;
}

interface Conn {
  link?: Link;
  pending: Map<string, { resolve: (f: Frame) => void; reject: (e: unknown) => void }>;
  early: Frame[];
  wake?: () => void;
  ready: boolean;
  heartbeatMs: number;
  upgrade: boolean;
  timer?: ReturnType<typeof setInterval>;
}

const DEFAULT_HEARTBEAT = 10_000;
const DIAL_TIMEOUT = 10_000;

/** Worker is a connection to semaphored that survives reconnections. */
export class Worker {
  readonly client: Client;
  private readonly opts: Required<Pick<WorkerOptions, "minBackoffMs" | "maxBackoffMs" | "transportRetryMs" | "closeTimeoutMs">> & WorkerOptions;
  private readonly bases: string[];
  private idx = 0;
  private readonly key: string;
  private readonly fetchFn: typeof fetch;
  private readonly levels: LinkKind[];
  private level = 0;
  private seq = 0;
  private cur?: Conn;
  private readyWaiters: (() => void)[] = [];
  private token = "";
  private sessionId = "";
  private closing = false;
  private stopped = false;
  private stopErr?: unknown;
  private readonly leases: Leases;
  private readonly jobs: Jobs;
  private wsCtor?: WebSocketCtor;
  private wsHeaders = false;
  private readonly loop: Promise<void>;
  private sleeper?: { timer: ReturnType<typeof setTimeout>; resolve: () => void };

  constructor(baseUrl: string, apiKey: string, opts: WorkerOptions = {}) {
    this.client = new Client(baseUrl, apiKey, { fetch: opts.fetch });
    this.bases = [this.client.baseUrl, ...(opts.instances ?? []).map((u) => new Client(u, apiKey).baseUrl)];
    this.key = apiKey;
    this.fetchFn = opts.fetch ?? globalThis.fetch.bind(globalThis);
    this.opts = { minBackoffMs: 100, maxBackoffMs: 10_000, transportRetryMs: 60_000, closeTimeoutMs: 10_000, ...opts };
    const t = opts.transport ?? "auto";
    if (!["auto", "websocket", "sse", "longpoll"].includes(t)) throw new TypeError(`semaphored: unknown transport ${t}`);
    this.levels = t === "auto" ? ["websocket", "sse", "longpoll"] : [t as LinkKind];
    const call = (frame: Record<string, unknown>, alone?: boolean): Promise<Frame> => this.call(frame, alone);
    this.leases = new Leases(call, () => this.stopped);
    this.jobs = new Jobs({
      client: this.client,
      leases: this.leases,
      call,
      log: (level, ...args) => this.log(level, ...args),
      closing: () => this.closing,
      stopped: () => this.stopped,
    });
    this.loop = this.run();
  }

  /** health reports the worker's connection. */
  health(): Health {
    const c = this.cur;
    const up = !!c && c.ready && !!c.link;
    return { connected: up, transport: up ? c!.link!.kind : "", session: this.sessionId, lastFrame: up ? new Date(c!.link!.heard()) : null };
  }

  /** The id of the worker's session ("" before the first connection). */
  get session(): string {
    return this.sessionId;
  }

  /** Why the worker stopped for good without close (a refused key, a displaced session). */
  get error(): unknown {
    return this.stopErr;
  }

  // ---- calls ----

  /** subscribe receives the semaphore's jobs (and channel's, else every channel's), prefetch at a time. */
  async subscribe<P = unknown>(semaphore: string, handler: Handler<P>, opts: SubscribeOptions = {}): Promise<void> {
    const s: Subscription = { semaphore, channel: opts.channel ?? "", prefetch: opts.prefetch ?? 1, handler, onError: opts.onError ?? "retry" };
    const k = subKey(s.semaphore, s.channel);
    const prev = this.jobs.subs.get(k);
    this.jobs.subs.set(k, s);
    try {
      await this.call({ type: "subscribe", semaphore, channel: s.channel || undefined, prefetch: s.prefetch });
    } catch (err) {
      if (prev) this.jobs.subs.set(k, prev);
      else this.jobs.subs.delete(k);
      throw err;
    }
  }

  async unsubscribe(semaphore: string, channel = ""): Promise<void> {
    this.jobs.subs.delete(subKey(semaphore, channel));
    await this.call({ type: "unsubscribe", semaphore, channel: channel || undefined });
  }

  /** acquire takes a permit bound to the session; the worker extends it until release. */
  async acquire(semaphore: string, opts: AcquireOptions = {}): Promise<Lease> {
    const body = acquireBody(opts);
    delete body.idempotencyKey;
    const waits = opts.wait !== undefined && durationMs(opts.wait) > 0;
    const f = await this.call({ type: "acquire", semaphore, ...body }, waits);
    const lease = f.lease!;
    const ttlMs = opts.ttl !== undefined ? durationMs(opts.ttl) : Date.parse(lease.expiresAt) - Date.parse(lease.acquiredAt);
    this.leases.hold(lease.id, ttlMs);
    return lease;
  }

  /**
   * withLease runs fn while holding a permit bound to the session: it
   * acquires (waiting as opts.wait says), keeps the lease alive, aborts the
   * signal it hands fn if the lease is lost, and releases it in finally.
   */
  async withLease<T>(semaphore: string, fn: (lease: Lease, signal: AbortSignal) => Promise<T> | T, opts: AcquireOptions = {}): Promise<T> {
    const lease = await this.acquire(semaphore, opts);
    const ctl = new AbortController();
    const held = this.leases.get(lease.id);
    if (held) held.onLost = () => ctl.abort(new LeaseLostError(lease.id));
    try {
      return await fn(lease, ctl.signal);
    } finally {
      if (!ctl.signal.aborted) {
        try {
          await this.release(lease.id);
        } catch (err) {
          if (!(err instanceof ApiError && err.code === "lease_not_found")) throw err;
        }
      }
    }
  }

  async extend(leaseId: string, ttl: Duration): Promise<Lease> {
    const f = await this.call({ type: "extend", lease: leaseId, ttl: durationString(ttl) });
    const held = this.leases.get(leaseId);
    if (held) held.ttlMs = durationMs(ttl);
    return f.lease!;
  }

  async release(leaseId: string): Promise<Lease> {
    this.leases.forget(leaseId);
    return (await this.call({ type: "release", lease: leaseId })).lease!;
  }

  async enqueue<P>(semaphore: string, payload: P, opts: EnqueueOptions = {}): Promise<Job<P>> {
    return (await this.call({ type: "enqueue", semaphore, payload, ...enqueueBody(opts) })).job as Job<P>;
  }

  /**
   * close stops taking jobs, aborts the running handlers' signals and waits
   * for them (at most closeTimeoutMs), releases the jobs whose handler
   * returned, and gives the session up: its leases are released by the
   * server and its unreleased jobs get onSessionLost at once.
   */
  async close(): Promise<void> {
    if (this.closing) return this.loop;
    this.closing = true;
    this.jobs.abortAll(new WorkerClosedError());
    await within(this.jobs.settled(), this.opts.closeTimeoutMs);
    this.leases.stopAll();
    this.stopped = true;
    const c = this.cur;
    if (c?.link) await c.link.end();
    this.wakeSleeper();
    await this.loop;
  }

  // ---- connection ----

  private log(level: "info" | "warn" | "error", ...args: unknown[]): void {
    this.opts.logger?.[level]?.("semaphored worker:", ...args);
  }

  private stop(err: unknown): void {
    this.stopErr = err;
    this.stopped = true;
    this.log("error", "stopped", err);
    this.jobs.abortAll(err);
    this.wakeSleeper();
    for (const w of this.readyWaiters.splice(0)) w();
  }

  private async run(): Promise<void> {
    let attempt = 0;
    let early = 0;
    let connected = false;
    while (!this.stopped) {
      const tr = this.levels[this.level];
      let c: Conn;
      let ev: ConnectEvent;
      try {
        [c, ev] = await this.connect(tr, connected);
      } catch (err) {
        if (this.stopped) return;
        if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
          this.stop(err);
          return;
        }
        this.log("info", `connect failed (${this.bases[this.idx]}, ${tr})`, String(err));
        if (this.fallBack(true)) continue;
        this.idx = (this.idx + 1) % this.bases.length;
        await this.sleep(attempt++);
        continue;
      }
      attempt = 0;
      connected = true;
      try {
        this.opts.onConnect?.(ev);
      } catch {
        // the hook's own failure
      }
      const began = Date.now();
      const end = await c.link!.ended;
      this.disconnected(c);
      if (this.stopped) return;
      if (end.code === 4001) {
        this.stop(new SessionDisplacedError());
        return;
      }
      if (end.code === 1001) this.idx = (this.idx + 1) % this.bases.length; // that instance shuts down
      if (c.upgrade) continue;
      if (Date.now() - began < c.heartbeatMs) {
        early++;
        if (early >= 2 && this.fallBack(false)) early = 0;
      } else {
        early = 0;
      }
      this.log("info", `connection lost (${tr}): ${end.code} ${end.reason}; reconnecting`);
      await this.sleep(early);
    }
  }

  /** fallBack moves to the next transport; false when there is none (with wrap, start over at the best). */
  private fallBack(wrap: boolean): boolean {
    if (this.level + 1 < this.levels.length) {
      this.level++;
      return true;
    }
    if (wrap) this.level = 0;
    return false;
  }

  private sleep(attempt: number): Promise<void> {
    const cap = Math.min(this.opts.maxBackoffMs, this.opts.minBackoffMs * 2 ** Math.min(attempt, 30));
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.sleeper = undefined;
        resolve();
      }, Math.random() * cap);
      this.sleeper = { timer, resolve };
    });
  }

  private wakeSleeper(): void {
    if (this.sleeper) {
      clearTimeout(this.sleeper.timer);
      this.sleeper.resolve();
      this.sleeper = undefined;
    }
  }

  private async resolveWebSocket(): Promise<void> {
    if (this.wsCtor) return;
    if (this.opts.WebSocket) {
      this.wsCtor = this.opts.WebSocket;
      this.wsHeaders = this.opts.wsTakesHeaders ?? false;
      return;
    }
    const g = (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
    if (g) {
      this.wsCtor = g;
      return;
    }
    try {
      const mod = (await import("ws")) as unknown as { default: WebSocketCtor };
      this.wsCtor = mod.default;
      this.wsHeaders = true;
    } catch {
      // no websocket here: auto falls back to SSE
    }
  }

  private dialContext(c: Conn): DialContext {
    return {
      base: this.bases[this.idx],
      key: this.key,
      fetch: this.fetchFn,
      WebSocket: this.wsCtor,
      wsTakesHeaders: this.wsHeaders,
      onFrame: (f) => this.onFrame(c, f),
    };
  }

  /** dial opens a link of kind tr on conn c and returns the server's first frame: resumed, or welcome. */
  private async dial(c: Conn, tr: LinkKind, token: string): Promise<Frame> {
    const ctx = this.dialContext(c);
    if (tr === "websocket") {
      await this.resolveWebSocket();
      c.link = await dialWebSocket({ ...ctx, WebSocket: this.wsCtor }, DIAL_TIMEOUT);
      const welcome = await this.next(c);
      if (welcome.type !== "welcome") throw new Error(`semaphored: want welcome, got ${welcome.type}`);
      if (!token) return welcome;
      const id = `resume-${++this.seq}`;
      c.link.send(JSON.stringify({ type: "resume", id, token }));
      for (;;) {
        const f = await this.next(c);
        if (f.id !== id) continue;
        if (f.type !== "resumed") {
          this.log("info", "session not resumed, starting a fresh one", f.code);
          return welcome;
        }
        return { ...f, heartbeat: f.heartbeat ?? welcome.heartbeat };
      }
    }
    const open = (tok: string) =>
      tr === "sse" ? dialSSE(ctx, tok, DIAL_TIMEOUT) : dialLongPoll(ctx, tok, () => c.heartbeatMs);
    try {
      c.link = await open(token);
    } catch (err) {
      if (!(token && err instanceof ApiError && err.code === "session_not_found")) throw err;
      this.log("info", "session not resumed, starting a fresh one");
      c.link = await open("");
    }
    const first = await this.next(c);
    if (first.type !== "welcome" && first.type !== "resumed") throw new Error(`semaphored: want welcome, got ${first.type}`);
    c.link.setSession(first.session ?? "");
    return first;
  }

  /** next returns the next frame that came before the connection was ready. */
  private next(c: Conn): Promise<Frame> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("semaphored: no frame from the server in time")), DIAL_TIMEOUT);
      const take = (): void => {
        const f = c.early.shift();
        if (f) {
          clearTimeout(timer);
          c.wake = undefined;
          resolve(f);
          return;
        }
        c.wake = take;
      };
      take();
      void c.link?.ended.then((e) => {
        if (!c.ready && c.wake === take) {
          clearTimeout(timer);
          reject(new Error(`semaphored: connection ended while opening: ${e.code} ${e.reason}`));
        }
      });
    });
  }

  private async connect(tr: LinkKind, reconnect: boolean): Promise<[Conn, ConnectEvent]> {
    const c: Conn = { pending: new Map(), early: [], ready: false, heartbeatMs: DEFAULT_HEARTBEAT, upgrade: false };
    const token = this.token;
    let first: Frame;
    try {
      first = await this.dial(c, tr, token);
    } catch (err) {
      c.link?.close();
      throw err;
    }
    if (first.heartbeat) c.heartbeatMs = durationMs(first.heartbeat) || DEFAULT_HEARTBEAT;
    const resumed = first.type === "resumed";
    if (this.stopped) {
      c.link!.close();
      throw new WorkerClosedError();
    }
    this.token = resumed ? token : (first.resumeToken ?? "");
    this.sessionId = first.session ?? "";
    const { subs, orphans } = this.diff(resumed ? first : undefined);
    c.ready = true;
    this.cur = c;
    for (const f of c.early.splice(0)) this.onFrame(c, f);
    for (const w of this.readyWaiters.splice(0)) w();
    this.startTimer(c);
    void this.restore(c, subs, orphans);
    return [c, { url: this.bases[this.idx], session: this.sessionId, resumed, reconnect, transport: c.link!.kind }];
  }

  private disconnected(c: Conn): void {
    if (c.timer) clearInterval(c.timer);
    c.ready = false;
    if (this.cur === c) this.cur = undefined;
    for (const p of c.pending.values()) p.reject(new ConnectionLostError());
    c.pending.clear();
  }

  /** diff compares the worker's state with a resumed session (none: fresh). */
  private diff(r?: Frame): { subs: Subscription[]; orphans: string[] } {
    const subs = this.jobs.missing(r?.subscriptions ?? []);
    const orphans = this.leases.reconcile(r?.leases ?? []);
    return { subs, orphans };
  }

  private async restore(c: Conn, subs: Subscription[], orphans: string[]): Promise<void> {
    for (const id of orphans) {
      await this.callOn(c, { type: "release", lease: id }).catch(() => undefined);
    }
    for (const s of subs) {
      await this.callOn(c, { type: "subscribe", semaphore: s.semaphore, channel: s.channel || undefined, prefetch: s.prefetch }).catch((err) => {
        if (!(err instanceof ConnectionLostError)) this.log("error", "subscribing again failed", s.semaphore, err);
      });
    }
  }

  /** startTimer pings every heartbeat/2 (not on long-poll: its polls are the heartbeat), drops a deaf
   * connection, and on a fallback probes the better transports every transportRetryMs. */
  private startTimer(c: Conn): void {
    let lastProbe = Date.now();
    let probing = false;
    c.timer = setInterval(() => {
      const link = c.link!;
      if (Date.now() - link.heard() > 3 * c.heartbeatMs) {
        this.log("warn", `the server was not heard for 3 heartbeats (${link.kind}), reconnecting`);
        link.close();
        return;
      }
      if (link.kind !== "longpoll") {
        try {
          link.send(JSON.stringify({ type: "ping", id: `ping-${++this.seq}` }));
        } catch {
          // the connection is ending
        }
      }
      if (this.level > 0 && !probing && Date.now() - lastProbe >= this.opts.transportRetryMs) {
        lastProbe = Date.now();
        probing = true;
        void this.probeBetter().then((better) => {
          probing = false;
          if (better !== undefined && c.ready) {
            this.level = better;
            c.upgrade = true;
            link.close();
          }
        });
      }
    }, Math.max(c.heartbeatMs / 2, 10));
  }

  /** probeBetter opens each better transport with a fresh session, given up at once; the first that opens wins. */
  private async probeBetter(): Promise<number | undefined> {
    for (let lv = 0; lv < this.level; lv++) {
      const c: Conn = { pending: new Map(), early: [], ready: false, heartbeatMs: DEFAULT_HEARTBEAT, upgrade: false };
      try {
        await this.dial(c, this.levels[lv], "");
        await c.link!.end();
        return lv;
      } catch {
        c.link?.close();
      }
    }
    return undefined;
  }

  private waitReady(): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (this.stopped || this.closing) {
          reject(this.stopErr ?? new WorkerClosedError());
          return;
        }
        if (this.cur?.ready) resolve(this.cur);
        else this.readyWaiters.push(check);
      };
      check();
    });
  }

  private async call(frame: Record<string, unknown>, alone = false): Promise<Frame> {
    if (this.closing && frame.type !== "release") throw new WorkerClosedError();
    const c = this.cur?.ready ? this.cur : await this.waitReady();
    return this.callOn(c, frame, alone);
  }

  private callOn(c: Conn, frame: Record<string, unknown>, alone = false): Promise<Frame> {
    return new Promise((resolve, reject) => {
      if (!c.link || !c.ready) {
        reject(new ConnectionLostError());
        return;
      }
      const id = String(++this.seq);
      c.pending.set(id, {
        resolve: (f) => {
          if (f.type === "error") reject(new ApiError(0, f.code ?? "unknown", f.message ?? ""));
          else if (f.type === "rejected" && f.error) reject(new ApiError(0, f.error.code, f.error.message, f.error.retryAfter || undefined));
          else resolve(f);
        },
        reject,
      });
      try {
        c.link.send(JSON.stringify({ ...frame, id }), alone);
      } catch (err) {
        c.pending.delete(id);
        reject(err);
      }
    });
  }

  // ---- frames ----

  private onFrame(c: Conn, f: Frame): void {
    if (!c.ready) {
      c.early.push(f);
      c.wake?.();
      return;
    }
    if (f.type === "job") {
      this.jobs.onJob((frame) => c.link!.send(frame), f);
      return;
    }
    if (f.id) {
      const p = c.pending.get(f.id);
      if (p) {
        c.pending.delete(f.id);
        p.resolve(f);
        return;
      }
    }
    if (f.type === "acquired" && f.lease) {
      // its caller is gone: give the permit back
      void this.call({ type: "release", lease: f.lease.id }).catch(() => undefined);
    } else {
      this.jobs.ackRefused(f);
    }
  }
}

/** within waits for p, at most ms (its timer does not outlive it). */
export async function within(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([p, new Promise((r) => (timer = setTimeout(r, ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
