// node examples/node.mjs — against a running semaphored:
//   SEMAPHORED_URL=http://localhost:8080 SEMAPHORED_KEY=sk_… node examples/node.mjs
// (after `npm ci && npm run build` in sdk/js)
import { Client, Worker } from "../dist/index.js";

const url = process.env.SEMAPHORED_URL ?? "http://localhost:8080";
const key = process.env.SEMAPHORED_KEY;
if (!key) throw new Error("set SEMAPHORED_KEY to an admin key");

const client = new Client(url, key);
await client.putSemaphore("thumbnails", { maxValue: 2 });

// Sync: hold a permit while the work runs; the lease is kept alive, and
// the signal aborts if it is lost.
const size = await client.withLease("thumbnails", async (lease, signal) => {
  console.log("holding", lease.id, "fencing token", lease.fencingToken);
  return signal.aborted ? 0 : 42;
}, { wait: "10s" });
console.log("computed", size);

// Async: a worker takes the semaphore's jobs, two at a time.
const worker = new Worker(url, key, { onConnect: (ev) => console.log("connected over", ev.transport) });
let n = 0;
let finish;
const done = new Promise((resolve) => (finish = resolve));
// subscribe before enqueueing: a job dispatched with no session subscribed
// fails its websocket route
await worker.subscribe("thumbnails", async (job) => {
  console.log("resizing", job.payload);
  if (++n === 3) finish();
}, { prefetch: 2 });
await client.enqueueBatch("thumbnails", [{ payload: "a.png" }, { payload: "b.png" }, { payload: "c.png" }]);
await done;
console.log(worker.health());
await worker.close();
