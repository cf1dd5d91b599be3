// Bundles src/main.ts into dist/app.js and copies index.html and styles.css beside it.
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
  entryPoints: [join(root, "src/main.ts")],
  outfile: join(dist, "app.js"),
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
await copyFile(join(root, "src/styles.css"), join(dist, "styles.css"));
const bytes = result.metafile.outputs["dist/app.js"]?.bytes ?? Object.values(result.metafile.outputs)[0].bytes;
console.log(`built dist/ (app.js ${(bytes / 1024).toFixed(1)} KiB)`);
