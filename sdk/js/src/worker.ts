// The worker (SPEC §6): one live connection to a session over which a
// process takes permits and receives jobs — a websocket, or, behind
// proxies that break websockets, an SSE stream or long polls. It
// reconnects with backoff and full jitter, resumes its session (leases,
// subscriptions and held jobs survive a dropped connection within the
// server's grace period), pings at the server's heartbeat, drops a
// connection it no longer hears the server on (deaf), and keeps its
// leases alive.

import { Client, acquireBody } from "./client.js";
import { ApiError, ConnectionLostError, LeaseLostError, SessionDisplacedError, WorkerClosedError } from "./errors.js";
import { dialLongPoll, dialSSE, dialWebSocket, type DialContext, type Frame, type Link, type LinkKind, type Transport, type WebSocketCtor } from "./links.js";
import { durationMs, durationString, type AcquireOptions, type Duration, type EnqueueOptions, type Job, type Lease } from "./types.js";

export type { Transport, LinkKind, WebSocketCtor } from "./links.js";

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

/** A job handler. The signal aborts when the job's lease is lost, the server refused the ack, or the worker closes. */
export type Handler<P = unknown> = (job: Job<P>, signal: AbortSignal) => Promise<void> | void;

export interface SubscribeOptions {
  channel?: string;
  /** At most this many unreleased jobs at once (default 1). */
  prefetch?: number;
  /**
   * What a thrown handler error does: "retry" (default, as the Go SDK: the
   * job keeps its lease until it expires, then the server retries it,
   * counting an attempt, up to maxAttempts), "fail" (cancelled at once),
   * or "requeue" (cancelled and requeued at once, at the back of its
   * queue with its attempts reset).
   */
  onError?: "retry" | "fail" | "requeue";
}

interface Subscription {
  semaphore: string;
  channel: string;
  prefetch: number;
  handler: Handler<any>;
  onError: "retry" | "fail" | "requeue";
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

interface HeldLease {
  id: string;
  ttlMs: number;
  timer?: ReturnType<typeof setTimeout>;
  lost: boolean;
  /** onLost is called once if the lease is lost (expired, or gone with the session). */
  onLost?: () => void;
}

interface JobRun {
  job: Job;
  ctl: AbortController;
  lease: HeldLease;
  done: Promise<void>;
}

const ACK = "ack:";
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
  private readonly subs = new Map<string, Subscription>();
  private readonly leases = new Map<string, HeldLease>();
  private readonly running = new Map<string, JobRun>();
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
    const prev = this.subs.get(k);
    this.subs.set(k, s);
    try {
      await this.call({ type: "subscribe", semaphore, channel: s.channel || undefined, prefetch: s.prefetch });
    } catch (err) {
      if (prev) this.subs.set(k, prev);
      else this.subs.delete(k);
      throw err;
    }
  }

  async unsubscribe(semaphore: string, channel = ""): Promise<void> {
    this.subs.delete(subKey(semaphore, channel));
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
    const held: HeldLease = { id: lease.id, ttlMs, lost: false };
    this.leases.set(lease.id, held);
    this.keepAlive(held);
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
    const held = this.leases.get(leaseId);
    if (held?.timer) clearTimeout(held.timer);
    this.leases.delete(leaseId);
    return (await this.call({ type: "release", lease: leaseId })).lease!;
  }

  async enqueue<P>(semaphore: string, payload: P, opts: EnqueueOptions = {}): Promise<Job<P>> {
    return (await this.call({ type: "enqueue", semaphore, payload, ...opts })).job as Job<P>;
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
    for (const r of this.running.values()) r.ctl.abort(new WorkerClosedError());
    const all = Promise.all([...this.running.values()].map((r) => r.done));
    await within(all, this.opts.closeTimeoutMs);
    for (const l of this.leases.values()) if (l.timer) clearTimeout(l.timer);
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
    for (const r of this.running.values()) r.ctl.abort(err);
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
    const known = new Set((r?.subscriptions ?? []).map((s) => subKey(s.semaphore, s.channel)));
    const subs = [...this.subs.entries()].filter(([k]) => !known.has(k)).map(([, s]) => s);
    const held = new Set(r?.leases ?? []);
    const orphans = [...held].filter((id) => !this.leases.has(id));
    for (const [id, l] of this.leases) {
      if (!held.has(id)) {
        l.lost = true;
        if (l.timer) clearTimeout(l.timer);
        this.leases.delete(id);
        l.onLost?.();
      }
    }
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

  // ---- frames and jobs ----

  private onFrame(c: Conn, f: Frame): void {
    if (!c.ready) {
      c.early.push(f);
      c.wake?.();
      return;
    }
    if (f.type === "job") {
      this.onJob(c, f);
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
    } else if (f.type === "error" && f.id?.startsWith(ACK)) {
      const [jobId, leaseId] = f.id.slice(ACK.length).split(":");
      const run = this.running.get(jobId);
      if (run && run.job.lease?.id === leaseId) run.ctl.abort(new Error("semaphored: ack refused: the job went to another worker"));
    }
  }

  private onJob(c: Conn, f: Frame): void {
    const job = f.job;
    if (!job?.lease) return;
    const s = this.subs.get(subKey(job.semaphore, job.channel)) ?? this.subs.get(subKey(job.semaphore, ""));
    if (!s || this.closing) return; // no ack: the server offers it elsewhere
    const ack = (): void => {
      try {
        c.link!.send(JSON.stringify({ type: "ack", id: `${ACK}${job.id}:${job.lease!.id}`, job: job.id }));
      } catch {
        // not acked: the server offers it elsewhere
      }
    };
    const prev = this.running.get(job.id);
    if (prev && prev.job.lease?.id === job.lease.id) {
      ack(); // pushed again while it runs
      return;
    }
    const ttlMs = Math.max(Date.parse(job.lease.expiresAt) - Date.parse(job.lease.acquiredAt), 1000);
    const held: HeldLease = { id: job.lease.id, ttlMs, lost: false };
    const ctl = new AbortController();
    const run: JobRun = { job, ctl, lease: held, done: Promise.resolve() };
    this.running.set(job.id, run);
    ack();
    run.done = this.runJob(s, run);
  }

  private async runJob(s: Subscription, run: JobRun): Promise<void> {
    const { job, ctl, lease } = run;
    this.keepAlive(lease, () => ctl.abort(new LeaseLostError(lease.id)));
    let failed: unknown;
    try {
      await s.handler(job, ctl.signal);
    } catch (err) {
      failed = err ?? new Error("handler failed");
    } finally {
      if (lease.timer) clearTimeout(lease.timer);
      lease.lost = true; // no more keep-alive
    }
    try {
      if (failed === undefined) {
        if (!ctl.signal.aborted || ctl.signal.reason instanceof WorkerClosedError) await this.releaseJob(job.id);
        return;
      }
      if (ctl.signal.aborted && !(ctl.signal.reason instanceof WorkerClosedError)) return; // not ours any more
      this.log("warn", `handler of job ${job.id} failed`, failed);
      if (s.onError === "fail" || s.onError === "requeue") {
        await this.client.cancelJob(job.id);
        if (s.onError === "requeue") await this.client.requeueJob(job.id);
      }
    } catch (err) {
      this.log("warn", `settling job ${job.id} failed`, err);
    } finally {
      if (this.running.get(job.id) === run) this.running.delete(job.id);
    }
  }

  /** releaseJob releases a job over the session, again after a reconnect. */
  private async releaseJob(id: string): Promise<void> {
    for (;;) {
      try {
        await this.call({ type: "release", job: id });
        return;
      } catch (err) {
        if (!(err instanceof ConnectionLostError) || this.stopped) throw err;
      }
    }
  }

  /** keepAlive extends a lease every ttl/3 until it is released or lost. */
  private keepAlive(l: HeldLease, onLost?: () => void): void {
    const tick = async (): Promise<void> => {
      if (l.lost) return;
      try {
        await this.call({ type: "extend", lease: l.id, ttl: durationString(l.ttlMs) });
      } catch (err) {
        if (err instanceof ApiError && err.code === "lease_not_found") {
          l.lost = true;
          this.leases.delete(l.id);
          (onLost ?? l.onLost)?.();
          return;
        }
        if (err instanceof WorkerClosedError || this.stopped) return;
      }
      if (!l.lost) l.timer = setTimeout(tick, l.ttlMs / 3);
    };
    l.timer = setTimeout(tick, l.ttlMs / 3);
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

function subKey(semaphore: string, channel: string): string {
  return `${semaphore}\u0000${channel}`;
}
