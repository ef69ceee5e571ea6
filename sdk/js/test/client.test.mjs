import { test, after, before, describe } from "node:test";
import assert from "node:assert/strict";
import { Client, ApiError, LeaseLostError } from "../dist/index.js";
import { ADMIN, startServer, stores, eventually } from "./helpers.mjs";

for (const store of stores()) {
  describe(`Client (${store} store)`, () => {
    let srv, admin;
    before(async () => {
      srv = await startServer(store);
      admin = new Client(srv.url, ADMIN);
    });
    after(() => srv.stop());

    test("bad input", () => {
      assert.throws(() => new Client("ftp://x", "k"), TypeError);
      assert.throws(() => new Client("http://x", ""), TypeError);
    });

    test("semaphores: put, get, list, suspend, resume, delete", async () => {
      const s = await admin.putSemaphore("sems", { maxValue: 3, leaseTimeout: 30_000 });
      assert.equal(s.maxValue, 3);
      assert.equal(s.leaseTimeout, "30s");
      const got = await admin.getSemaphore("sems");
      assert.equal(got.state.inUse, 0);
      const page = await admin.listSemaphores({ limit: 100 });
      assert.ok(page.items.some((x) => x.name === "sems"));
      assert.equal(page.items.find((x) => x.name === "sems").state, undefined, "no state unless asked");
      await admin.acquire("sems", { weight: 2 });
      const withState = await admin.listSemaphores({ limit: 100, state: true });
      assert.equal(withState.items.find((x) => x.name === "sems").state.inUse, 2);
      assert.equal((await admin.suspend("sems")).suspended, true);
      assert.equal((await admin.resume("sems")).suspended, false);
      await admin.deleteSemaphore("sems");
      await assert.rejects(admin.getSemaphore("sems"), (e) => e instanceof ApiError && e.status === 404 && e.code === "semaphore_not_found");
    });

    test("leases: acquire, extend, release; errors carry status, code, retryAfter", async () => {
      await admin.putSemaphore("db", { maxValue: 1, rate: { limit: 1, period: "1m" } });
      const l = await admin.acquire("db", { ttl: "1m" });
      assert.ok(l.fencingToken > 0);
      const busy = await admin.acquire("db").catch((e) => e);
      assert.ok(busy instanceof ApiError);
      assert.equal(busy.status, 409);
      assert.equal(busy.code, "no_permit");
      assert.ok(busy.isNoPermit);
      const ext = await admin.extend(l.id, 120_000);
      assert.ok(Date.parse(ext.expiresAt) > Date.parse(l.expiresAt));
      assert.equal((await admin.listLeases("db")).items.length, 1);
      await admin.release(l.id);
      // a permit, but no room in the rate's window: Retry-After
      const rated = await admin.acquire("db").catch((e) => e);
      assert.equal(rated.code, "no_permit");
      assert.ok(rated.retryAfter > 0, `retryAfter ${rated.retryAfter}`);
      await assert.rejects(admin.release(l.id), (e) => e.code === "lease_not_found");
    });

    test("withLease keeps the lease, releases it, and aborts when it is lost", async () => {
      await admin.putSemaphore("wl", { maxValue: 1 });
      const out = await admin.withLease("wl", async (lease, signal) => {
        assert.equal((await admin.getSemaphore("wl")).state.inUse, 1);
        assert.equal(signal.aborted, false);
        return lease.id;
      }, { ttl: "1s" });
      assert.ok(out);
      assert.equal((await admin.getSemaphore("wl")).state.inUse, 0);
      // released from elsewhere while fn runs: the signal aborts
      const reason = await admin.withLease("wl", async (lease, signal) => {
        await admin.release(lease.id);
        await eventually(() => signal.aborted, "signal aborted");
        return signal.reason;
      }, { ttl: "3s", keepAliveEvery: 50 });
      assert.ok(reason instanceof LeaseLostError);
      // a throw still releases
      await assert.rejects(admin.withLease("wl", () => { throw new Error("boom"); }), /boom/);
      assert.equal((await admin.getSemaphore("wl")).state.inUse, 0);
    });

    test("delayed jobs (delay, runAt) and the retry backoff", async () => {
      const s = await admin.putSemaphore("later", { maxValue: 2, retry: { backoff: 250, maxBackoff: "10s" } });
      assert.deepEqual(s.retry, { backoff: "250ms", maxBackoff: "10s" });
      assert.deepEqual((await admin.putSemaphore("later", { maxValue: 2 })).retry, { backoff: "1s", maxBackoff: "5m0s" });
      const a = await admin.enqueue("later", 1, { delay: "1h" });
      assert.equal(a.status, "scheduled");
      assert.ok(a.runAt, "runAt shown");
      const b = await admin.enqueue("later", 2, { runAt: new Date(Date.now() + 3_600_000) });
      assert.equal(b.status, "scheduled");
      const [c, d] = await admin.enqueueBatch("later", [{ payload: 3, delay: 60_000 }, { payload: 4 }]);
      assert.ok(c.runAt);
      assert.equal(d.runAt, null);
      await assert.rejects(admin.enqueue("later", 5, { delay: "1s", runAt: new Date() }), (e) => e instanceof ApiError && e.code === "invalid_request");
    });

    test("jobs: enqueue, batch, list, cancel, requeue, purge", async () => {
      await admin.putSemaphore("jobs", { maxValue: 1, routes: [{ type: "websocket" }] });
      await admin.suspend("jobs"); // they stay scheduled
      const j = await admin.enqueue("jobs", { n: 1 }, { idempotencyKey: "k1" });
      assert.equal(j.status, "scheduled");
      assert.equal((await admin.enqueue("jobs", { n: 1 }, { idempotencyKey: "k1" })).id, j.id, "idempotent");
      const batch = await admin.enqueueBatch("jobs", [{ payload: 2 }, { payload: 3 }]);
      assert.equal(batch.length, 2);
      const bad = await admin.enqueueBatch("jobs", [{ payload: 4 }, { payload: 5, channel: "no spaces!" }]).catch((e) => e);
      assert.equal(bad.status, 400);
      assert.equal(bad.index, 1);
      assert.equal((await admin.listJobs("jobs", { status: "scheduled" })).items.length, 3, "the bad batch enqueued nothing");
      const c = await admin.cancelJob(j.id);
      assert.equal(c.status, "cancelled");
      const r = await admin.requeueJob(j.id);
      assert.equal(r.status, "scheduled");
      assert.equal((await admin.getJob(j.id)).payload.n, 1);
      const eu = await admin.enqueue("jobs", { n: 6 }, { channel: "eu" });
      const badChannel = await admin.purgeJobs("jobs", "scheduled", { channel: "no spaces!" }).catch((e) => e);
      assert.equal(badChannel.status, 400);
      assert.equal(badChannel.code, "invalid_request");
      assert.equal(await admin.purgeJobs("jobs", "scheduled", { channel: "eu" }), 1);
      assert.equal((await admin.getJob(eu.id).catch((e) => e)).status, 404);
      assert.equal(await admin.purgeJobs("jobs", "scheduled"), 3);
    });

    test("retention: defaults, set, 0s deletes as a job ends", async () => {
      let s = await admin.putSemaphore("ret", { maxValue: 1 });
      assert.deepEqual(s.retention, { done: "24h0m0s", failed: "168h0m0s" });
      s = await admin.putSemaphore("ret", { maxValue: 1, retention: { done: 0, failed: "30d" } });
      assert.deepEqual(s.retention, { done: "0s", failed: "720h0m0s" });
      assert.deepEqual((await admin.getSemaphore("ret")).retention, s.retention);
      const bad = await admin.putSemaphore("ret", { maxValue: 1, retention: { done: "31d" } }).catch((e) => e);
      assert.equal(bad.status, 400);
      assert.equal(bad.code, "invalid_config");
      assert.match(bad.message, /^retention\.done /);
      await admin.suspend("ret");
      const j = await admin.enqueue("ret", { n: 1 });
      assert.equal((await admin.cancelJob(j.id)).status, "cancelled");
      assert.equal((await admin.getJob(j.id).catch((e) => e)).status, 404);
    });

    test("keys and tenants, and a 403 for a worker key", async () => {
      const k = await admin.createKey("worker", "js worker");
      assert.ok(k.secret.startsWith("sk_"));
      assert.ok((await admin.listKeys()).some((x) => x.id === k.id));
      const w = new Client(srv.url, k.secret);
      const me = await w.whoami();
      assert.equal(me.id, k.id);
      assert.equal(me.role, "worker");
      assert.equal(me.secret, undefined);
      const denied = await w.putSemaphore("nope", { maxValue: 1 }).catch((e) => e);
      assert.equal(denied.status, 403);
      assert.ok(denied.isForbidden);
      await admin.deleteKey(k.id);
      assert.equal((await w.listJobs("x").catch((e) => e)).status, 401);
      const t = await admin.createTenant(`t${Date.now()}`);
      assert.equal(t.key.role, "admin");
      assert.ok((await admin.listTenants()).some((x) => x.id === t.tenant.id));
      const tk = await admin.createTicket();
      assert.ok(tk.ticket);
      await admin.health();
      await admin.ready();
    });
  });
}
