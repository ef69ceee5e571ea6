// Errors of the semaphored client and worker.

/** An error answer of the server: `{"error": {"code", "message"}}`, or an
 * `error`/`rejected` frame of a session. */
export class ApiError extends Error {
  /** HTTP status (0 for an error that came in a session frame). */
  readonly status: number;
  /** Stable error code, e.g. `no_permit`, `semaphore_not_found`. */
  readonly code: string;
  /** Seconds to wait before trying again (429, or a rate that binds), if the server said. */
  readonly retryAfter?: number;
  /** Position of the refused job in a batch enqueue. */
  readonly index?: number;

  constructor(status: number, code: string, message: string, retryAfter?: number, index?: number) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.index = index;
  }

  /** No permit within the wait (or the rate did not allow it yet). */
  get isNoPermit(): boolean {
    return this.code === "no_permit";
  }

  /** The key may not do this (403). */
  get isForbidden(): boolean {
    return this.code === "forbidden";
  }
}

/** The connection dropped before the server answered; the request may or
 * may not have taken effect. */
export class ConnectionLostError extends Error {
  constructor() {
    super("semaphored: connection lost before the reply");
    this.name = "ConnectionLostError";
  }
}

/** The worker was closed (or stopped for good) before or while the call ran. */
export class WorkerClosedError extends Error {
  constructor(message = "semaphored: worker closed") {
    super(message);
    this.name = "WorkerClosedError";
  }
}

/** Another connection resumed the worker's session (close code 4001); the
 * worker stops. */
export class SessionDisplacedError extends Error {
  constructor() {
    super("semaphored: session resumed by another connection");
    this.name = "SessionDisplacedError";
  }
}

/** The lease of withLease or of a job was lost (expired, released elsewhere). */
export class LeaseLostError extends Error {
  readonly lease: string;
  constructor(lease: string) {
    super(`semaphored: lease ${lease} lost`);
    this.name = "LeaseLostError";
    this.lease = lease;
  }
}
