// The subscriptions of a Worker and the jobs pushed for them: each job is
// acked, run by its handler with its lease kept alive, then released, or
// settled as the subscription's onError says.

import type { Client } from "./client.js";
import { ConnectionLostError, LeaseLostError, WorkerClosedError } from "./errors.js";
import type { Leases, Call, HeldLease } from "./leases.js";
import type { Frame } from "./links.js";
import type { Job } from "./types.js";

/** A job handler. The signal aborts when the job's lease is lost, the server refused the ack, or the worker closes. */
export type Handler<P = unknown> = (job: Job<P>, signal: AbortSignal) => Promise<void> | void;

export interface SubscribeOptions {
  channel?: string;
  /** At most this many unreleased jobs at once (default 1). */
  prefetch?: number;
  /**
   * What a thrown handler error does. Either way the worker sends the
   * `fail` frame: the job's permit frees at once and the error's message
   * stays on the job. "retry" (default, as the Go SDK): the job runs again,
   * at the back of its queue, while attempts remain (the semaphore's
   * maxAttempts), then ends in error. "fail": it ends in error at once.
   * "requeue": the same as "retry" (kept for earlier code; attempts are no
   * longer reset, so a failing job no longer loops without end).
   */
  onError?: "retry" | "fail" | "requeue";
}

export interface Subscription {
  semaphore: string;
  channel: string;
  prefetch: number;
  handler: Handler<any>;
  onError: "retry" | "fail" | "requeue";
}

interface JobRun {
  job: Job;
  ctl: AbortController;
  lease: HeldLease;
  done: Promise<void>;
}

/** The id prefix of ack frames: "ack:<job>:<lease>". */
const ACK = "ack:";

export function subKey(semaphore: string, channel: string): string {
  return `${semaphore}\u0000${channel}`;
}

export interface JobsDeps {
  client: Client;
  leases: Leases;
  call: Call;
  log: (level: "info" | "warn" | "error", ...args: unknown[]) => void;
  closing: () => boolean;
  stopped: () => boolean;
}

export class Jobs {
  /** The subscriptions, by subKey. */
  readonly subs = new Map<string, Subscription>();
  private readonly running = new Map<string, JobRun>();

  constructor(private readonly d: JobsDeps) {}

  /** missing lists the subscriptions a resumed session lacks (all, for a fresh one). */
  missing(known: { semaphore: string; channel: string }[]): Subscription[] {
    const have = new Set(known.map((s) => subKey(s.semaphore, s.channel)));
    return [...this.subs.entries()].filter(([k]) => !have.has(k)).map(([, s]) => s);
  }

  /** onJob takes a pushed job; send writes a frame on the connection it came on. */
  onJob(send: (frame: string) => void, f: Frame): void {
    const job = f.job;
    if (!job?.lease) return;
    const s = this.subs.get(subKey(job.semaphore, job.channel)) ?? this.subs.get(subKey(job.semaphore, ""));
    if (!s || this.d.closing()) return; // no ack: the server offers it elsewhere
    const ack = (): void => {
      try {
        send(JSON.stringify({ type: "ack", id: `${ACK}${job.id}:${job.lease!.id}`, job: job.id }));
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

  /** ackRefused takes an error frame; true when it answered an ack, whose job then stops. */
  ackRefused(f: Frame): boolean {
    if (f.type !== "error" || !f.id?.startsWith(ACK)) return false;
    const [jobId, leaseId] = f.id.slice(ACK.length).split(":");
    const run = this.running.get(jobId);
    if (run && run.job.lease?.id === leaseId) run.ctl.abort(new Error("semaphored: ack refused: the job went to another worker"));
    return true;
  }

  /** abortAll aborts every running handler's signal. */
  abortAll(reason: unknown): void {
    for (const r of this.running.values()) r.ctl.abort(reason);
  }

  /** settled resolves when every running handler has finished and its job is settled. */
  settled(): Promise<unknown> {
    return Promise.all([...this.running.values()].map((r) => r.done));
  }

  private async runJob(s: Subscription, run: JobRun): Promise<void> {
    const { job, ctl, lease } = run;
    this.d.leases.keepAlive(lease, () => ctl.abort(new LeaseLostError(lease.id)));
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
      this.d.log("warn", `handler of job ${job.id} failed`, failed);
      await this.settleJob({ type: "fail", job: job.id, error: errorText(failed), retry: s.onError !== "fail" });
    } catch (err) {
      this.d.log("warn", `settling job ${job.id} failed`, err);
    } finally {
      if (this.running.get(job.id) === run) this.running.delete(job.id);
    }
  }

  /** releaseJob releases a job over the session, again after a reconnect. */
  private releaseJob(id: string): Promise<void> {
    return this.settleJob({ type: "release", job: id });
  }

  /** settleJob sends a job's release or fail frame, again after a reconnect. */
  private async settleJob(frame: { type: "release" | "fail"; job: string; error?: string; retry?: boolean }): Promise<void> {
    for (;;) {
      try {
        await this.d.call(frame);
        return;
      } catch (err) {
        if (!(err instanceof ConnectionLostError) || this.d.stopped()) throw err;
      }
    }
  }
}

/** errorText is the message a failed handler's error leaves on its job. */
function errorText(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}
