import { test, after, before, describe } from "node:test";
import assert from "node:assert/strict";
import { Client, Worker, ApiError } from "../dist/index.js";
import { ADMIN, startServer, stores, eventually, tcpProxy, noUpgradeProxy } from "./helpers.mjs";

// waitDone waits until every job is done.
async function waitDone(admin, ids) {
  for (const id of ids) {
    await eventually(async () => (await admin.getJob(id)).status === "done", `job ${id} done`);
  }
}

async function enqueueN(admin, sem, n, tag = "") {
  const jobs = await admin.enqueueBatch(sem, Array.from({ length: n }, (_, i) => ({ payload: { i, tag } })));
  return jobs.map((j) => j.id);
}


for (const store of stores()) {
  describe(`Worker (${store} store)`, () => {
    let srv, admin;
    before(async () => {
      srv = await startServer(store);
      admin = new Client(srv.url, ADMIN);
    });
    after(() => srv.stop());

    for (const transport of ["websocket", "sse", "longpoll"]) {
      test(`${transport}: subscribe, handle, release; session-bound acquire; close`, async () => {
        const sem = `w-${transport}`;
        await admin.putSemaphore(sem, { maxValue: 3 });
        const events = [];
        const w = new Worker(srv.url, ADMIN, { transport, onConnect: (ev) => events.push(ev), minBackoffMs: 10, maxBackoffMs: 200 });
        let running = 0;
        let peak = 0;
        const seen = new Set();
        await w.subscribe(sem, async (job) => {
          running++;
          peak = Math.max(peak, running);
          await new Promise((r) => setTimeout(r, 5));
          seen.add(job.id);
          running--;
        }, { prefetch: 2 });
        assert.equal(events[0].transport, transport);
        assert.equal(w.health().transport, transport);
        assert.ok(w.health().connected);
        const ids = await enqueueN(admin, sem, 20);
        await waitDone(admin, ids);
        assert.equal(seen.size, 20);
        assert.ok(peak <= 2, `prefetch 2 bounds the jobs run at once (peak ${peak})`);

        const lease = await w.acquire(sem, { ttl: "1m" });
        assert.equal((await admin.getSemaphore(sem)).state.inUse, 1);
        await w.release(lease.id);
        assert.equal((await admin.getSemaphore(sem)).state.inUse, 0);
        const held = await w.acquire(sem, { ttl: "1h" });
        assert.ok(held.id);
        await w.close();
        assert.equal(w.health().connected, false);
        await eventually(async () => (await admin.getSemaphore(sem)).state.inUse === 0, "close gave the session up: its lease released at once");
      });
    }

    test("withLease over the session: held while fn runs, released after, aborted when lost", async () => {
      await admin.putSemaphore("wwl", { maxValue: 1 });
      const w = new Worker(srv.url, ADMIN, { minBackoffMs: 10 });
      try {
        const got = await w.withLease("wwl", async (lease) => {
          assert.equal((await admin.getSemaphore("wwl")).state.inUse, 1);
          return lease.id;
        }, { ttl: "1s" });
        assert.ok(got);
        assert.equal((await admin.getSemaphore("wwl")).state.inUse, 0);
        const reason = await w.withLease("wwl", async (lease, signal) => {
          await admin.release(lease.id); // released from elsewhere
          await eventually(() => signal.aborted, "signal aborted");
          return signal.reason;
        }, { ttl: "1s" });
        assert.equal(reason.name, "LeaseLostError");
      } finally {
        await w.close();
      }
    });

    test("a thrown handler error fails the attempt: retried while attempts remain, or ended", async () => {
      await admin.putSemaphore("errs", { maxValue: 2, maxAttempts: 2, leaseTimeout: "1m" });
      const w = new Worker(srv.url, ADMIN, { minBackoffMs: 10 });
      try {
        await w.subscribe("errs", () => {
          throw new Error("nope");
        }, { onError: "fail" });
        const [failed] = await enqueueN(admin, "errs", 1);
        await eventually(async () => (await admin.getJob(failed)).status === "error", "failed: error");
        const f = await admin.getJob(failed);
        assert.equal(f.error, "nope", "the message is kept");
        assert.equal(f.attempts, 1);
        await w.unsubscribe("errs");

        let runs = 0;
        await w.subscribe("errs", () => {
          runs++;
          if (runs === 1) throw new Error("first try fails");
        });
        const [retried] = await enqueueN(admin, "errs", 1);
        await waitDone(admin, [retried]); // a lease of a minute: retried by the fail frame, not by expiry
        assert.equal(runs, 2, "run again");
        assert.equal((await admin.getJob(retried)).attempts, 2);
        await w.unsubscribe("errs");

        // Always failing: ends in error after maxAttempts, no endless loop.
        let loops = 0;
        await w.subscribe("errs", () => {
          loops++;
          throw new Error("always");
        }, { onError: "requeue" });
        const [bad] = await enqueueN(admin, "errs", 1);
        await eventually(async () => (await admin.getJob(bad)).status === "error", "spent: error");
        assert.equal((await admin.getJob(bad)).attempts, 2);
        assert.equal(loops, 2);
      } finally {
        await w.close();
      }
    });

    test("drop and resume: the session, its lease and its subscription survive a cut", async () => {
      await admin.putSemaphore("resume", { maxValue: 2 });
      const proxy = await tcpProxy(srv.port);
      for (const transport of ["websocket", "sse", "longpoll"]) {
        const events = [];
        const w = new Worker(proxy.url, ADMIN, { transport, onConnect: (ev) => events.push(ev), minBackoffMs: 10, maxBackoffMs: 100, logger: process.env.SDK_TEST_LOG ? console : undefined });
        try {
          const done = new Set();
          await w.subscribe("resume", (job) => {
            done.add(job.id);
          });
          const lease = await w.acquire("resume", { ttl: "1m" });
          await waitDone(admin, await enqueueN(admin, "resume", 3, transport));
          proxy.cutAll();
          await eventually(() => events.length >= 2, `${transport}: reconnected`);
          assert.equal(events[1].resumed, true, `${transport}: resumed`);
          assert.equal(events[1].session, events[0].session);
          assert.equal(events[1].reconnect, true);
          await waitDone(admin, await enqueueN(admin, "resume", 3, transport + "2"));
          await w.release(lease.id);
        } finally {
          await w.close();
        }
      }
      await proxy.close();
    });

    test("auto falls back to SSE behind a proxy that refuses websockets", async () => {
      await admin.putSemaphore("fallback", { maxValue: 2 });
      const proxy = await noUpgradeProxy(srv.port);
      const events = [];
      const w = new Worker(proxy.url, ADMIN, { onConnect: (ev) => events.push(ev), minBackoffMs: 10, logger: process.env.SDK_TEST_LOG ? console : undefined });
      try {
        await w.subscribe("fallback", () => {});
        assert.equal(events[0].transport, "sse");
        assert.ok(proxy.refused() > 0);
        await waitDone(admin, await enqueueN(admin, "fallback", 5));
      } finally {
        await w.close();
        await proxy.close();
      }
    });

    test("instances: a worker whose first instance is down connects to the next", async () => {
      await admin.putSemaphore("inst", { maxValue: 1 });
      const events = [];
      const down = "http://127.0.0.1:9"; // discard port: refused
      const w = new Worker(down, ADMIN, { instances: [srv.url], onConnect: (ev) => events.push(ev), minBackoffMs: 10, maxBackoffMs: 50 });
      try {
        await w.subscribe("inst", () => {});
        assert.equal(events[0].url, srv.url);
        await waitDone(admin, await enqueueN(admin, "inst", 2));
      } finally {
        await w.close();
      }
    });

    test("a refused key stops the worker", async () => {
      const w = new Worker(srv.url, "sk_not_a_key_0123456789abcdef0123456789");
      await assert.rejects(w.subscribe("x", () => {}), (e) => e instanceof ApiError && e.status === 401);
      assert.equal(w.error.status, 401);
      await w.close();
    });
  });
}
