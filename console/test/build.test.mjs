// The console's built files are committed (console/dist, embedded in the
// binary), so building semaphored needs no Node. This test builds the
// sources afresh and fails when the result differs from what is committed:
// run `npm run build` in console/ and commit dist.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

test("console/dist is a fresh build of console/src", () => {
  const out = mkdtempSync(join(tmpdir(), "console-build-"));
  try {
    execFileSync(process.execPath, ["build.mjs", out], { cwd: root, stdio: "inherit" });
    const fresh = readdirSync(out).sort();
    const committed = readdirSync(join(root, "dist")).sort();
    assert.deepEqual(committed, fresh, "the same files (run `npm run build` in console/)");
    for (const f of fresh) {
      const a = readFileSync(join(root, "dist", f));
      const b = readFileSync(join(out, f));
      assert.ok(a.equals(b), `dist/${f} differs from a fresh build: run \`npm run build\` in console/ and commit dist`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test("the page loads nothing from another origin", () => {
  const html = readFileSync(join(root, "dist", "index.html"), "utf8");
  const css = readFileSync(join(root, "dist", "app.css"), "utf8");
  const js = readFileSync(join(root, "dist", "app.js"), "utf8");
  for (const [name, text] of [["index.html", html], ["app.css", css]]) {
    assert.doesNotMatch(text, /(https?:)?\/\/[a-z0-9.-]+\.[a-z]{2,}/i, `${name} names no other origin`);
  }
  assert.doesNotMatch(css, /@import|url\(/, "app.css imports nothing");
  assert.doesNotMatch(js, /\bimport\s*\(|\bimportScripts\b|\beval\(|new Function\b/, "app.js loads and evaluates no code");
  for (const src of html.matchAll(/(?:src|href)="([^"]+)"/g)) {
    assert.match(src[1], /^[a-z0-9.-]+\.(js|css|svg)$/, `${src[1]} is a file of the console`);
    assert.ok(readdirSync(join(root, "dist")).includes(src[1]), `${src[1]} is in dist`);
  }
});
