// Bundles src/main.ts into dist/app.js (the dashboard) and src/rest-api.ts into
// dist/api.js (api.html, the REST routes), and copies the HTML and styles.css beside them.
// `node build.mjs` (minified, with a source map) or `node build.mjs --dev` (readable).
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, "dist");
const dev = process.argv.includes("--dev");

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
const result = await build({
  // Two pages, two bundles: api.html needs none of the dashboard's grpc-web code.
  entryPoints: { app: join(root, "src/main.ts"), api: join(root, "src/rest-api.ts") },
  outdir: dist,
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["es2022"],
  minify: !dev,
  sourcemap: true,
  legalComments: "none",
  logLevel: "warning",
  metafile: true,
});
await copyFile(join(root, "src/index.html"), join(dist, "index.html"));
await copyFile(join(root, "src/api.html"), join(dist, "api.html"));
await copyFile(join(root, "src/styles.css"), join(dist, "styles.css"));
// The metafile's paths are relative to the working directory, wherever it is run from.
const size = (name) => Object.entries(result.metafile.outputs).find(([path]) => path.endsWith(`dist/${name}`))?.[1].bytes ?? 0;
const kib = (name) => `${name} ${(size(name) / 1024).toFixed(1)} KiB`;
console.log(`built dist/ (${kib("app.js")}, ${kib("api.js")})`);
