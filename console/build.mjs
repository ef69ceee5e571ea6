// Builds the console into the directory named by the first argument
// (default dist): src/main.ts and the SDK's client bundled into app.js,
// src/style.css into app.css, index.html and icon.svg copied. The output
// depends only on the sources and the pinned esbuild, so that
// test/build.test.mjs can compare a fresh build with the committed dist.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { join } from "node:path";

const out = process.argv[2] ?? "dist";
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
const common = { bundle: true, minify: true, legalComments: "none", charset: "utf8", logLevel: "warning" };
await build({ ...common, entryPoints: ["src/main.ts"], outfile: join(out, "app.js"), format: "esm", target: "es2022", platform: "browser" });
await build({ ...common, entryPoints: ["src/style.css"], outfile: join(out, "app.css") });
for (const f of ["index.html", "icon.svg"]) await copyFile(join("src", f), join(out, f));
