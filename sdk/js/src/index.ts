// @semaphored/client: the semaphored HTTP client and worker.
export { Client, type ClientOptions, type WithLeaseOptions } from "./client.js";
export { Worker, type WorkerOptions, type ConnectEvent, type Health, type Handler, type SubscribeOptions, type Transport, type LinkKind } from "./worker.js";
export { ApiError, ConnectionLostError, WorkerClosedError, SessionDisplacedError, LeaseLostError } from "./errors.js";
export * from "./types.js";
