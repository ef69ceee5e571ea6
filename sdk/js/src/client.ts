// The HTTP client of semaphored (SPEC §3): semaphores, leases, jobs, keys
// and tenants, one fetch per call. It runs in browsers and in Node 18+
// (global fetch); it has no dependencies.

import { ApiError, LeaseLostError } from "./errors.js";
import {
  durationMs,
  durationString,
  enqueueBody,
  type AcquireOptions,
  type BatchJob,
  type Duration,
  type EnqueueOptions,
  type Job,
  type Key,
  type Lease,
  type ListJobsOptions,
  type ListLeasesOptions,
  type ListSemaphoresOptions,
  type Page,
  type PurgeJobsOptions,
  type Role,
  type Semaphore,
  type SemaphoreConfig,
  type Tenant,
} from "./types.js";

export interface ClientOptions {
  /** The fetch to use (default: the global fetch). */
  fetch?: typeof fetch;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
}

export interface WithLeaseOptions extends AcquireOptions {
  /** How often the lease is extended while fn runs (default: a third of its ttl). */
  keepAliveEvery?: Duration;
}

/** Client calls semaphored over HTTP with one API key. */
export class Client {
  readonly baseUrl: string;
  private readonly key: string;
  private readonly fetchFn: typeof fetch;
  private readonly headers: Record<string, string>;

  constructor(baseUrl: string, apiKey: string, opts: ClientOptions = {}) {
    const u = new URL(baseUrl);
    if (u.protocol !== "http:" && u.protocol !== "https:") {
      throw new TypeError(`semaphored: base URL must be http(s), got ${baseUrl}`);
    }
    if (!apiKey) throw new TypeError("semaphored: an API key is required");
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.key = apiKey;
    this.fetchFn = opts.fetch ?? globalThis.fetch.bind(globalThis);
    this.headers = { ...(opts.headers ?? {}) };
  }

  /** request runs one call and returns its JSON body (undefined for 204). */
  async request<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const headers: Record<string, string> = { ...this.headers, Authorization: `Bearer ${this.key}` };
    let payload: string | undefined;
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const resp = await this.fetchFn(this.baseUrl + path, { method, headers, body: payload, signal });
    if (resp.status === 204) return undefined as T;
    const text = await resp.text();
    if (!resp.ok) throw errorOf(resp.status, resp.headers.get("Retry-After"), text);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  // ---- semaphores (admin) ----

  async putSemaphore(name: string, cfg: SemaphoreConfig): Promise<Semaphore> {
    const body: Record<string, unknown> = { ...cfg };
    if (cfg.leaseTimeout !== undefined) body.leaseTimeout = durationString(cfg.leaseTimeout);
    if (cfg.rate) body.rate = { limit: cfg.rate.limit, period: durationString(cfg.rate.period) };
    if (cfg.retry) {
      const { backoff, maxBackoff } = cfg.retry;
      body.retry = {
        ...(backoff !== undefined && backoff !== null ? { backoff: durationString(backoff) } : {}),
        ...(maxBackoff !== undefined && maxBackoff !== null ? { maxBackoff: durationString(maxBackoff) } : {}),
      };
    }
    if (cfg.retention) {
      const { done, failed } = cfg.retention;
      body.retention = {
        ...(done !== undefined && done !== null ? { done: durationString(done) } : {}),
        ...(failed !== undefined && failed !== null ? { failed: durationString(failed) } : {}),
      };
    }
    const r = await this.request<{ semaphore: Semaphore }>("PUT", `/v1/semaphores/${seg(name)}`, body);
    return r.semaphore;
  }

  async getSemaphore(name: string): Promise<Semaphore> {
    return (await this.request<{ semaphore: Semaphore }>("GET", `/v1/semaphores/${seg(name)}`)).semaphore;
  }

  /** listSemaphores pages through the semaphores; `state: true` adds each one's usage. */
  async listSemaphores(opts: ListSemaphoresOptions = {}): Promise<Page<Semaphore>> {
    const r = await this.request<{ semaphores: Semaphore[]; nextCursor: string }>("GET", `/v1/semaphores${query(opts)}`);
    return { items: r.semaphores, nextCursor: r.nextCursor };
  }

  async deleteSemaphore(name: string): Promise<void> {
    await this.request("DELETE", `/v1/semaphores/${seg(name)}`);
  }

  async suspend(name: string): Promise<Semaphore> {
    return (await this.request<{ semaphore: Semaphore }>("POST", `/v1/semaphores/${seg(name)}/suspend`)).semaphore;
  }

  async resume(name: string): Promise<Semaphore> {
    return (await this.request<{ semaphore: Semaphore }>("POST", `/v1/semaphores/${seg(name)}/resume`)).semaphore;
  }

  // ---- leases (worker) ----

  async acquire(semaphore: string, opts: AcquireOptions = {}, signal?: AbortSignal): Promise<Lease> {
    const r = await this.request<{ lease: Lease }>("POST", `/v1/semaphores/${seg(semaphore)}/acquire`, acquireBody(opts), signal);
    return r.lease;
  }

  async extend(leaseId: string, ttl: Duration): Promise<Lease> {
    return (await this.request<{ lease: Lease }>("POST", `/v1/leases/${seg(leaseId)}/extend`, { ttl: durationString(ttl) })).lease;
  }

  async release(leaseId: string): Promise<Lease> {
    return (await this.request<{ lease: Lease }>("POST", `/v1/leases/${seg(leaseId)}/release`)).lease;
  }

  async listLeases(semaphore: string, opts: ListLeasesOptions = {}): Promise<Page<Lease>> {
    const r = await this.request<{ leases: Lease[]; nextCursor: string }>("GET", `/v1/semaphores/${seg(semaphore)}/leases${query(opts)}`);
    return { items: r.leases, nextCursor: r.nextCursor };
  }

  /**
   * withLease runs fn while holding a permit: it acquires (waiting as
   * opts.wait says), extends the lease while fn runs, aborts the signal it
   * hands fn if the lease is lost, and releases the lease in `finally`,
   * also when fn throws.
   */
  async withLease<T>(semaphore: string, fn: (lease: Lease, signal: AbortSignal) => Promise<T> | T, opts: WithLeaseOptions = {}): Promise<T> {
    const lease = await this.acquire(semaphore, opts);
    const ctl = new AbortController();
    const ttlMs = opts.ttl !== undefined ? durationMs(opts.ttl) : Date.parse(lease.expiresAt) - Date.parse(lease.acquiredAt);
    const every = opts.keepAliveEvery !== undefined ? durationMs(opts.keepAliveEvery) : Math.max(ttlMs / 3, 50);
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const keepAlive = async (): Promise<void> => {
      if (stopped) return;
      try {
        await this.extend(lease.id, ttlMs);
      } catch (err) {
        if (err instanceof ApiError && (err.code === "lease_not_found" || err.status === 404)) {
          ctl.abort(new LeaseLostError(lease.id));
          return;
        }
        // a transient failure: try again at the next tick
      }
      if (!stopped) timer = setTimeout(keepAlive, every);
    };
    timer = setTimeout(keepAlive, every);
    try {
      return await fn(lease, ctl.signal);
    } finally {
      stopped = true;
      if (timer) clearTimeout(timer);
      if (!ctl.signal.aborted) {
        try {
          await this.release(lease.id);
        } catch (err) {
          if (!(err instanceof ApiError && err.code === "lease_not_found")) throw err;
        }
      }
    }
  }

  // ---- jobs (worker) ----

  async enqueue<P>(semaphore: string, payload: P, opts: EnqueueOptions = {}): Promise<Job<P>> {
    const r = await this.request<{ job: Job<P> }>("POST", `/v1/semaphores/${seg(semaphore)}/jobs`, { ...enqueueBody(opts), payload });
    return r.job;
  }

  /** enqueueBatch enqueues 1 to 1,000 jobs in one atomic call: all or none. */
  async enqueueBatch<P>(semaphore: string, jobs: BatchJob<P>[]): Promise<Job<P>[]> {
    const r = await this.request<{ jobs: Job<P>[] }>("POST", `/v1/semaphores/${seg(semaphore)}/jobs`, {
      jobs: jobs.map(({ payload, ...opts }) => ({ ...enqueueBody(opts), payload })),
    });
    return r.jobs;
  }

  async getJob<P = unknown>(id: string): Promise<Job<P>> {
    return (await this.request<{ job: Job<P> }>("GET", `/v1/jobs/${seg(id)}`)).job;
  }

  async listJobs(semaphore: string, opts: ListJobsOptions = {}): Promise<Page<Job>> {
    const r = await this.request<{ jobs: Job[]; nextCursor: string }>("GET", `/v1/semaphores/${seg(semaphore)}/jobs${query(opts)}`);
    return { items: r.jobs, nextCursor: r.nextCursor };
  }

  async releaseJob(id: string): Promise<Job> {
    return (await this.request<{ job: Job }>("POST", `/v1/jobs/${seg(id)}/release`)).job;
  }

  async cancelJob(id: string): Promise<Job> {
    return (await this.request<{ job: Job }>("POST", `/v1/jobs/${seg(id)}/cancel`)).job;
  }

  async requeueJob(id: string): Promise<Job> {
    return (await this.request<{ job: Job }>("POST", `/v1/jobs/${seg(id)}/requeue`)).job;
  }

  /**
   * purgeJobs deletes the semaphore's jobs in status (scheduled, or a
   * terminal one), of opts.channel or of every channel, and returns how many.
   */
  async purgeJobs(semaphore: string, status: string, opts: PurgeJobsOptions = {}): Promise<number> {
    const r = await this.request<{ purged: number }>("DELETE", `/v1/semaphores/${seg(semaphore)}/jobs${query({ status, channel: opts.channel })}`);
    return r.purged;
  }

  // ---- keys (admin), tenants (operator), tickets ----

  async createKey(role: Role, name: string): Promise<Key> {
    return (await this.request<{ key: Key }>("POST", "/v1/keys", { role, name })).key;
  }

  async listKeys(): Promise<Key[]> {
    return (await this.request<{ keys: Key[] }>("GET", "/v1/keys")).keys;
  }

  /** whoami returns the caller's own key (role and tenant), without its secret. Any role. */
  async whoami(): Promise<Key> {
    return (await this.request<{ key: Key }>("GET", "/v1/whoami")).key;
  }

  async deleteKey(id: string): Promise<Key> {
    return (await this.request<{ key: Key }>("DELETE", `/v1/keys/${seg(id)}`)).key;
  }

  async createTenant(name: string): Promise<{ tenant: Tenant; key: Key }> {
    return this.request("POST", "/v1/tenants", { name });
  }

  async listTenants(): Promise<Tenant[]> {
    return (await this.request<{ tenants: Tenant[] }>("GET", "/v1/tenants")).tenants;
  }

  /** createTicket returns a single-use ticket (60 s) to open a session from a browser. */
  async createTicket(): Promise<{ ticket: string; expiresAt: string }> {
    return this.request("POST", "/v1/ws/tickets");
  }

  /** health resolves while the server answers (GET /healthz). */
  async health(): Promise<void> {
    await this.request("GET", "/healthz");
  }

  /** ready resolves while the server can reach its store (GET /readyz); an ApiError (503) when not. */
  async ready(): Promise<void> {
    await this.request("GET", "/readyz");
  }
}

export function acquireBody(opts: AcquireOptions): Record<string, unknown> {
  const b: Record<string, unknown> = {};
  if (opts.channel) b.channel = opts.channel;
  if (opts.weight !== undefined) b.weight = opts.weight;
  if (opts.ttl !== undefined) b.ttl = durationString(opts.ttl);
  if (opts.wait !== undefined) b.wait = durationString(opts.wait);
  if (opts.idempotencyKey) b.idempotencyKey = opts.idempotencyKey;
  return b;
}

/** errorOf turns an error answer into an ApiError. */
export function errorOf(status: number, retryAfter: string | null, text: string): ApiError {
  let code = "unknown";
  let message = text || `HTTP ${status}`;
  let index: number | undefined;
  try {
    const b = JSON.parse(text) as { error?: { code?: string; message?: string; index?: number } };
    if (b.error?.code) {
      code = b.error.code;
      message = b.error.message ?? message;
      index = b.error.index;
    }
  } catch {
    // not JSON: keep the text
  }
  const ra = retryAfter !== null && retryAfter !== "" && !Number.isNaN(Number(retryAfter)) ? Number(retryAfter) : undefined;
  return new ApiError(status, code, message, ra, index);
}

function seg(s: string): string {
  return encodeURIComponent(s);
}

function query(opts: object): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(opts)) {
    if (v !== undefined && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}
