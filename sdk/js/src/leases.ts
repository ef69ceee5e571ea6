// The session-bound leases a Worker holds: each is extended every third
// of its ttl until it is released or lost, and checked against the
// session after a reconnect.

import { ApiError, WorkerClosedError } from "./errors.js";
import type { Frame } from "./links.js";
import { durationString } from "./types.js";

/** Call sends a frame over the worker's session and returns its reply. */
export type Call = (frame: Record<string, unknown>, alone?: boolean) => Promise<Frame>;

export interface HeldLease {
  id: string;
  ttlMs: number;
  timer?: ReturnType<typeof setTimeout>;
  lost: boolean;
  /** onLost is called once if the lease is lost (expired, or gone with the session). */
  onLost?: () => void;
}

export class Leases {
  private readonly held = new Map<string, HeldLease>();

  constructor(
    private readonly call: Call,
    private readonly stopped: () => boolean,
  ) {}

  /** hold keeps a session-bound lease alive until it is released or lost. */
  hold(id: string, ttlMs: number): HeldLease {
    const l: HeldLease = { id, ttlMs, lost: false };
    this.held.set(id, l);
    this.keepAlive(l);
    return l;
  }

  get(id: string): HeldLease | undefined {
    return this.held.get(id);
  }

  /** forget stops extending a lease (it is being released). */
  forget(id: string): void {
    const l = this.held.get(id);
    if (l?.timer) clearTimeout(l.timer);
    this.held.delete(id);
  }

  /** stopAll stops every keep-alive (the worker closes). */
  stopAll(): void {
    for (const l of this.held.values()) if (l.timer) clearTimeout(l.timer);
  }

  /**
   * reconcile compares the leases held with those of a resumed session
   * (none: a fresh one). A lease the session lost is lost here too; the
   * ids it returns are the session's leases this worker does not know
   * (orphans, to release).
   */
  reconcile(sessionLeases: string[]): string[] {
    const held = new Set(sessionLeases);
    const orphans = [...held].filter((id) => !this.held.has(id));
    for (const [id, l] of this.held) {
      if (!held.has(id)) {
        l.lost = true;
        if (l.timer) clearTimeout(l.timer);
        this.held.delete(id);
        l.onLost?.();
      }
    }
    return orphans;
  }

  /** keepAlive extends a lease every ttl/3 until it is released or lost. */
  keepAlive(l: HeldLease, onLost?: () => void): void {
    const tick = async (): Promise<void> => {
      if (l.lost) return;
      try {
        await this.call({ type: "extend", lease: l.id, ttl: durationString(l.ttlMs) });
      } catch (err) {
        if (err instanceof ApiError && err.code === "lease_not_found") {
          l.lost = true;
          this.held.delete(l.id);
          (onLost ?? l.onLost)?.();
          return;
        }
        if (err instanceof WorkerClosedError || this.stopped()) return;
      }
      if (!l.lost) l.timer = setTimeout(tick, l.ttlMs / 3);
    };
    l.timer = setTimeout(tick, l.ttlMs / 3);
  }
}
