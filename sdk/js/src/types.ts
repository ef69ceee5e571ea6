// Wire types of the semaphored API (api/openapi.yaml), as the server sends
// them. Durations travel as Go duration strings ("30s", "1m30s"); the
// client also takes milliseconds where it takes a duration.

/** A duration: milliseconds, or a Go duration string such as "30s". */
export type Duration = number | string;

export interface Lease {
  id: string;
  semaphore: string;
  channel: string;
  weight: number;
  fencingToken: number;
  acquiredAt: string;
  expiresAt: string;
}

export interface RateLimit {
  limit: number;
  period: string;
}

/**
 * How long a semaphore keeps terminal jobs after they end: `done` for done
 * and cancelled jobs, `failed` for error and timeout jobs. "0s" deletes a
 * job as it ends; at most 30 days. A semaphore shows Go durations.
 */
export interface Retention {
  done: string;
  failed: string;
}

/** The backoff between a job's failed attempts: the n-th retry waits a random time up to min(maxBackoff, backoff × 2^(n−1)). */
export interface Retry {
  backoff: string;
  maxBackoff: string;
}

export interface SemaphoreConfig {
  maxValue: number;
  maxValueScope?: "total" | "channel";
  leaseTimeout?: Duration;
  maxAttempts?: number;
  onSessionLost?: "release" | "redeliver" | "wait";
  onDeliveryError?: "fail" | "suspend";
  routes?: unknown[];
  mapping?: unknown;
  rate?: { limit: number; period: Duration } | null;
  /** Absent or null (also each field): the defaults, done "24h" and failed "7d" (days allowed: "7d"). */
  retention?: { done?: Duration; failed?: Duration } | null;
  /** Absent or null (also each field): the defaults, backoff "1s" and maxBackoff "5m"; backoff "0s" retries at once. */
  retry?: { backoff?: Duration; maxBackoff?: Duration } | null;
}

export interface ChannelState {
  inUse: number;
  available: number;
  waiting: number;
  queued: number;
  inflight: number;
  rateUsed: number;
  rateNextAt: string | null;
}

export interface SemaphoreState extends ChannelState {
  channels: Record<string, ChannelState>;
}

export interface Semaphore {
  name: string;
  maxValue: number;
  maxValueScope: string;
  leaseTimeout: string;
  maxAttempts: number;
  onSessionLost: string;
  onDeliveryError: string;
  routes: unknown[];
  mapping: unknown;
  rate: RateLimit | null;
  retention: Retention;
  retry: Retry;
  suspended: boolean;
  createdAt: string;
  updatedAt: string;
  /** On getSemaphore, and on listSemaphores with `state: true`. */
  state?: SemaphoreState;
}

export type JobStatus = "scheduled" | "inflight" | "done" | "error" | "cancelled" | "timeout";

export interface JobRef {
  id: string;
  semaphore: string;
  hold: boolean;
}

export interface Job<P = unknown> {
  id: string;
  semaphore: string;
  channel: string;
  payload: P;
  status: JobStatus | string;
  attempts: number;
  lease: Lease | null;
  route: string | null;
  error: string | null;
  parent: JobRef | null;
  child: JobRef | null;
  createdAt: string;
  updatedAt: string;
  finishedAt: string | null;
  /** A scheduled job waiting for its time (a delay or runAt, or its retry backoff) queues then; null otherwise. */
  runAt: string | null;
}

export interface Page<T> {
  items: T[];
  /** "" on the last page. */
  nextCursor: string;
}

export type Role = "worker" | "admin" | "operator";

export interface Key {
  id: string;
  name: string;
  role: Role;
  prefix: string;
  tenant: string;
  createdAt: string;
  /** Only in the answer that created the key. */
  secret?: string;
}

export interface Tenant {
  id: string;
  name: string;
  createdAt: string;
}

export interface AcquireOptions {
  channel?: string;
  weight?: number;
  ttl?: Duration;
  /** How long to wait for a permit (0 or absent: answer at once). */
  wait?: Duration;
  /** HTTP only: a retried acquire with the same key returns the same lease. */
  idempotencyKey?: string;
}

export interface EnqueueOptions {
  channel?: string;
  idempotencyKey?: string;
  /** Wait this long (up to 30 days) before the job queues. Not with runAt. */
  delay?: Duration;
  /** Queue the job at this time (at most 30 days ahead; a past one is now). Not with delay. */
  runAt?: Date | string;
}

/** enqueueBody is the wire form of a job's options. */
export function enqueueBody(opts: EnqueueOptions): Record<string, unknown> {
  const b: Record<string, unknown> = { ...opts };
  if (opts.delay !== undefined) b.delay = durationString(opts.delay);
  if (opts.runAt !== undefined) b.runAt = opts.runAt instanceof Date ? opts.runAt.toISOString() : opts.runAt;
  return b;
}

export interface BatchJob<P = unknown> extends EnqueueOptions {
  payload: P;
}

export interface ListOptions {
  cursor?: string;
  limit?: number;
}

export interface ListSemaphoresOptions extends ListOptions {
  /** Add each semaphore's `state` (as getSemaphore has it). */
  state?: boolean;
}

export interface ListJobsOptions extends ListOptions {
  status?: JobStatus | string;
  channel?: string;
}

export interface PurgeJobsOptions {
  /** Only this channel's jobs; absent: every channel's. */
  channel?: string;
}

export interface ListLeasesOptions extends ListOptions {
  channel?: string;
}

/** durationString turns a Duration into the wire's Go duration string. */
export function durationString(d: Duration): string {
  if (typeof d === "string") return d;
  if (!Number.isFinite(d) || d < 0) throw new RangeError(`invalid duration ${d}`);
  return `${Math.round(d)}ms`;
}

/** durationMs parses a Go duration string ("1m30s", "250ms", "10s") into milliseconds. */
export function durationMs(d: Duration): number {
  if (typeof d === "number") return d;
  const units: Record<string, number> = { ns: 1e-6, us: 1e-3, "µs": 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let total = 0;
  let rest = d.trim();
  if (rest === "0") return 0;
  const re = /^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/;
  while (rest.length > 0) {
    const m = re.exec(rest);
    if (!m) throw new RangeError(`invalid duration ${JSON.stringify(d)}`);
    total += parseFloat(m[1]) * units[m[2]];
    rest = rest.slice(m[0].length);
  }
  return total;
}
