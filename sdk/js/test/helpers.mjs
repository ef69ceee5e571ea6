// Test helpers: a real semaphored started by the test (memory store, or
// Redis when SEMAPHORED_TEST_REDIS_URL is set), and proxies.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import http from "node:http";

export const ADMIN = "sk_jstest_0123456789abcdef0123456789abcdef";
const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

let builtBin;
function binary() {
  if (process.env.SEMAPHORED_BIN) return process.env.SEMAPHORED_BIN;
  if (!builtBin) {
    builtBin = join(mkdtempSync(join(tmpdir(), "sd-js-")), "semaphored");
    execFileSync("go", ["build", "-o", builtBin, "./cmd/semaphored"], { cwd: repo, stdio: "inherit" });
  }
  return builtBin;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

/** The stores the suite runs on: memory, and Redis when configured (required under CI=true). */
export function stores() {
  const url = process.env.SEMAPHORED_TEST_REDIS_URL;
  if (!url && process.env.CI === "true") throw new Error("CI=true but SEMAPHORED_TEST_REDIS_URL is not set: the Redis tests cannot be skipped");
  return url ? ["memory", "redis"] : ["memory"];
}

let prefixSeq = 0;

// Servers still running when the test process exits (a test that failed
// before its after hook, a timeout) are killed with it.
const running = new Set();
process.once("exit", () => {
  for (const p of running) p.kill("SIGKILL");
});

/** startServer runs semaphored on a free loopback port; stop() kills it. */
export async function startServer(store = "memory") {
  const port = await freePort();
  const args = ["--addr", `127.0.0.1:${port}`, "--admin-key", ADMIN, "--log-level", "warn"];
  if (store === "redis") {
    args.push("--redis-url", process.env.SEMAPHORED_TEST_REDIS_URL, "--redis-prefix", `jstest-${process.pid}-${Date.now()}-${++prefixSeq}`);
  }
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SEMAPHORED_")));
  const proc = spawn(binary(), args, { env, stdio: ["ignore", "ignore", "pipe"] });
  running.add(proc);
  proc.once("exit", () => running.delete(proc));
  let logs = "";
  proc.stderr.on("data", (d) => (logs += d));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try {
      const r = await fetch(url + "/readyz");
      if (r.ok) break;
    } catch {
      // not yet
    }
    if (proc.exitCode !== null || i > 300) throw new Error(`semaphored did not start: ${logs}`);
    await sleep(50);
  }
  return {
    url,
    port,
    logs: () => logs,
    async stop() {
      if (proc.exitCode === null) {
        proc.kill("SIGKILL");
        await new Promise((r) => proc.once("exit", r));
      }
    },
  };
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** eventually polls cond (bounded) until it is true. */
export async function eventually(cond, what, ms = 10_000) {
  const end = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > end) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(20);
  }
}

/** tcpProxy passes bytes to target; cutAll drops every connection. */
export async function tcpProxy(targetPort) {
  const socks = new Set();
  const server = net.createServer((client) => {
    const up = net.connect(targetPort, "127.0.0.1");
    socks.add(client);
    socks.add(up);
    const done = () => {
      client.destroy();
      up.destroy();
      socks.delete(client);
      socks.delete(up);
    };
    client.on("error", done).on("close", done);
    up.on("error", done).on("close", done);
    client.pipe(up);
    up.pipe(client);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cutAll() {
      for (const s of socks) s.destroy();
    },
    close() {
      for (const s of socks) s.destroy();
      return new Promise((r) => server.close(r));
    },
  };
}

/** noUpgradeProxy is a reverse proxy that refuses websocket upgrades and buffers nothing. */
export async function noUpgradeProxy(targetPort) {
  let refused = 0;
  const server = http.createServer((req, res) => {
    const up = http.request({ host: "127.0.0.1", port: targetPort, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.on("data", (d) => res.write(d));
      r.on("end", () => res.end());
    });
    up.on("error", () => res.destroy());
    res.on("close", () => up.destroy()); // the client went away
    req.pipe(up);
  });
  server.on("upgrade", (req, socket) => {
    refused++;
    socket.end("HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    refused: () => refused,
    close() {
      server.closeAllConnections();
      return new Promise((r) => server.close(r));
    },
  };
}
