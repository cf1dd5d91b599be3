// The dashboard against servers that want API keys (`--auth keys`), with the API key
// field in its header. This file starts its own backend, on free loopback ports in a
// temp dir, and stops it (by pid) at the end:
//   nats-server (JetStream), taskwire-api and taskwire-watch with --auth keys and
//   --cors-origins '*' (no worker: a submitted task stays QUEUED, which is enough),
//   keys made with `taskwire keys create`, and dist/ served by a small static server
//   whose /config.js points TASKWIRE_GRPC_URL at the api and TASKWIRE_WATCH_URL at the
//   watch service (they run apart, as in production).
// Env (all optional): TASKWIRE_BIN (default <repo>/target/debug/taskwire; taskwire-api
// and taskwire-watch are taken from beside it unless TASKWIRE_API_BIN /
// TASKWIRE_WATCH_BIN say otherwise), TASKWIRE_NATS_SERVER (default
// <repo>/.venv/bin/nats-server), CHROMIUM, ARTIFACTS_DIR.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, extname, join, normalize, resolve, sep } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { ARTIFACTS, STEP, collectPageErrors, launchChromium, openPage, sleep } from "./harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(here, "../../..");
const DIST = resolve(here, "../dist");
const TASKWIRE_BIN = process.env.TASKWIRE_BIN || join(REPO, "target/debug/taskwire");
const API_BIN = process.env.TASKWIRE_API_BIN || join(dirname(TASKWIRE_BIN), "taskwire-api");
const WATCH_BIN = process.env.TASKWIRE_WATCH_BIN || join(dirname(TASKWIRE_BIN), "taskwire-watch");
const NATS_SERVER = process.env.TASKWIRE_NATS_SERVER || join(REPO, ".venv/bin/nats-server");
const NATS_CONF = join(REPO, "deploy/nats.conf");

const STORAGE = "taskwire.dashboard.apiKey"; // src/auth.ts API_KEY_STORAGE
const run = promisify(execFile);

// The servers get no TASKWIRE_* from the caller's environment (a TASKWIRE_TOKEN or
// TASKWIRE_DATABASE_URL there must not change what is tested).
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TASKWIRE_")));
env.NO_COLOR = "1";

let work; // the temp dir
const children = []; // { name, child } of every process this file started
let web; // the static server
let browser;
let page;
let apiUrl;
let watchUrl;
let webUrl;
let dbUrl;
const keys = {}; // name -> token
const requests = []; // every taskwire.v1 request the page made (playwright Request)
const consoleLines = [];
const pageErrors = [];

function freePort() {
  return new Promise((resolvePort, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolvePort(port));
    });
  });
}

function start(name, cmd, args) {
  const log = openSync(join(work, `${name}.log`), "w");
  const child = spawn(cmd, args, { env, stdio: ["ignore", log, log] });
  closeSync(log);
  children.push({ name, child });
  return child;
}

const alive = (child) => child.exitCode === null && child.signalCode === null;

function exited(child, ms) {
  if (!alive(child)) return Promise.resolve(true);
  return new Promise((r) => {
    const timer = setTimeout(() => r(false), ms);
    child.once("exit", () => {
      clearTimeout(timer);
      r(true);
    });
  });
}

/** SIGTERM, then SIGKILL after 10 s; only this file's own children, by pid. */
async function stop({ name, child }) {
  if (!alive(child)) return;
  child.kill("SIGTERM");
  if (await exited(child, 10_000)) return;
  console.error(`auth.test: ${name} (pid ${child.pid}) ignored SIGTERM for 10s; killing it`);
  child.kill("SIGKILL");
  await exited(child, 5_000);
}

// Should this process end without the after() hook (e.g. killed by a timeout), its
// servers go with it.
function killChildren() {
  for (const { child } of children) if (alive(child)) child.kill("SIGKILL");
}
process.on("exit", killChildren);
for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]]) {
  process.once(signal, () => {
    killChildren();
    if (work) rmSync(work, { recursive: true, force: true });
    process.exit(code);
  });
}

function tail(name) {
  try {
    return readFileSync(join(work, `${name}.log`), "utf8").split("\n").slice(-20).join("\n");
  } catch {
    return "(no log)";
  }
}

/** Ready when a grpc-web call without a key is refused UNAUTHENTICATED (auth is on). */
async function waitRefusing(name, child, url, path) {
  const deadline = Date.now() + STEP;
  for (;;) {
    if (!alive(child)) assert.fail(`${name} exited (${child.exitCode ?? child.signalCode}):\n${tail(name)}`);
    try {
      const res = await fetch(`${url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
        body: new Uint8Array([0, 0, 0, 0, 0]),
        signal: AbortSignal.timeout(2_000),
      });
      await res.arrayBuffer();
      if (res.headers.get("grpc-status") === "16") return;
    } catch {}
    if (Date.now() > deadline) assert.fail(`${name} did not answer on ${url} in ${STEP / 1000}s:\n${tail(name)}`);
    await sleep(200);
  }
}

async function waitPort(name, child, port) {
  const deadline = Date.now() + STEP;
  for (;;) {
    if (!alive(child)) assert.fail(`${name} exited:\n${tail(name)}`);
    const ok = await new Promise((r) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.destroy();
        r(true);
      });
      s.on("error", () => r(false));
    });
    if (ok) return;
    if (Date.now() > deadline) assert.fail(`${name} did not listen on ${port}:\n${tail(name)}`);
    await sleep(100);
  }
}

async function createKey(name, tenant, role) {
  const { stdout } = await run(
    TASKWIRE_BIN,
    ["keys", "create", "--name", name, "--tenant", tenant, "--role", role, "--database-url", dbUrl],
    { env, timeout: STEP },
  );
  const token = stdout.trim();
  assert.match(token, /^\S{16,}$/, `keys create printed a token for ${name}`);
  return token;
}

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".map": "application/json" };

/** dist/ as is, and a /config.js naming the api and the watch service. */
function serveDist(config) {
  const server = http.createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    if (path === "/config.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      return res.end(config);
    }
    const file = normalize(join(DIST, path === "/" ? "index.html" : path));
    if (!file.startsWith(DIST + sep) || !existsSync(file)) {
      res.writeHead(404);
      return res.end();
    }
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
    res.end(readFileSync(file));
  });
  return new Promise((r) => server.listen(0, "127.0.0.1", () => r(server)));
}

before(async () => {
  for (const bin of [TASKWIRE_BIN, API_BIN, WATCH_BIN, NATS_SERVER]) assert.ok(existsSync(bin), `missing ${bin}`);
  assert.ok(existsSync(join(DIST, "index.html")), "dist/ is not built (./build.sh)");
  mkdirSync(ARTIFACTS, { recursive: true });
  work = mkdtempSync(join(tmpdir(), "taskwire-web-auth."));
  dbUrl = `sqlite://${join(work, "t.db")}`;

  const natsPort = await freePort();
  const nats = start("nats", NATS_SERVER, ["-c", NATS_CONF, "-js", "-a", "127.0.0.1", "-p", String(natsPort), "-sd", join(work, "nats")]);
  await waitPort("nats", nats, natsPort);
  const natsUrl = `nats://127.0.0.1:${natsPort}`;
  const common = ["--admin-listen", "off", "--auth", "keys", "--cors-origins", "*", "--nats-url", natsUrl, "--database-url", dbUrl];

  const apiPort = await freePort();
  apiUrl = `http://127.0.0.1:${apiPort}`;
  const api = start("api", API_BIN, ["--listen", `127.0.0.1:${apiPort}`, ...common]);
  await waitRefusing("api", api, apiUrl, "/taskwire.v1.TaskService/ListTasks");
  // After the api, which made the database.
  const watchPort = await freePort();
  watchUrl = `http://127.0.0.1:${watchPort}`;
  const watch = start("watch", WATCH_BIN, ["--listen", `127.0.0.1:${watchPort}`, ...common]);
  await waitRefusing("watch", watch, watchUrl, "/taskwire.v1.WatchService/WatchTasks");

  keys.submitterA = await createKey("web-a", "tenant-a", "submitter");
  keys.readerA = await createKey("web-a-reader", "tenant-a", "reader");
  keys.adminA = await createKey("web-a-admin", "tenant-a", "admin");
  keys.submitterB = await createKey("web-b", "tenant-b", "submitter");

  web = await serveDist(`window.TASKWIRE_GRPC_URL = ${JSON.stringify(apiUrl)};\nwindow.TASKWIRE_WATCH_URL = ${JSON.stringify(watchUrl)};\n`);
  webUrl = `http://127.0.0.1:${web.address().port}/`;

  browser = await launchChromium();
  page = await openPage(browser, { viewport: { width: 1500, height: 860 }, deviceScaleFactor: 1 });
  page.on("request", (req) => {
    if (new URL(req.url()).pathname.startsWith("/taskwire.v1.")) requests.push(req);
  });
  collectPageErrors(page, { into: pageErrors, consoleLines });
  await page.goto(webUrl, { waitUntil: "load", timeout: STEP });
});

after(async () => {
  await page?.screenshot({ path: join(ARTIFACTS, "auth-final.png"), fullPage: true }).catch(() => {});
  writeFileSync(join(ARTIFACTS, "auth-console.log"), consoleLines.join("\n") + "\n");
  await browser?.close().catch(() => {});
  await new Promise((r) => (web ? web.close(r) : r()));
  // Watch and api before the NATS server they use.
  for (const c of [...children].reverse()) await stop(c);
  if (work) rmSync(work, { recursive: true, force: true });
});

const notice = '[data-testid="api-key-notice"]';
const row = (id) => page.locator(`[data-testid="task-row"][data-task-id="${id}"]`);

async function useKey(token) {
  await page.fill('[data-testid="api-key-input"]', token);
  await page.click('[data-testid="api-key-save"]');
  await page.waitForSelector('[data-testid="api-key-form"][data-has-key="true"]');
}

async function noticeSays(re, kind) {
  await page.waitForFunction(
    ({ sel, src, kind }) => {
      const el = document.querySelector(sel);
      return el && !el.hidden && new RegExp(src).test(el.textContent) && (!kind || el.dataset.kind === kind);
    },
    { sel: notice, src: re.source, kind },
  );
}

async function submitOnPage(kind, input) {
  const before = await page.getAttribute('[data-testid="submit-result"]', "data-task-id");
  await page.fill('[data-testid="submit-kind"]', kind);
  await page.fill('[data-testid="submit-input"]', input);
  await page.click('[data-testid="submit-button"]');
  await page.waitForFunction((prev) => {
    const ok = document.querySelector('[data-testid="submit-result"]');
    const err = document.querySelector('[data-testid="submit-error"]');
    return (ok && !ok.hidden && ok.dataset.taskId && ok.dataset.taskId !== prev) || (err && !err.hidden);
  }, before);
  if (await page.isVisible('[data-testid="submit-error"]')) return { error: await page.textContent('[data-testid="submit-error"]') };
  return { id: await page.getAttribute('[data-testid="submit-result"]', "data-task-id") };
}

let pageTaskId;
let cliTaskId;

test("without a key: 'this server needs an API key', the stream is not retried", async () => {
  assert.equal(await page.textContent('[data-testid="grpc-url"]'), apiUrl);
  await noticeSays(/needs an API key/, "needs-key");
  assert.equal(await page.textContent('[data-testid="api-key-state"]'), "no key");
  assert.equal(await page.getAttribute('[data-testid="api-key-input"]', "type"), "password");
  await page.waitForSelector('[data-testid="list-error"]:not([hidden])');
  assert.match(await page.textContent('[data-testid="list-error"]'), /needs an API key/);
  await page.waitForSelector('[data-testid="stream-status"][data-status="error"]');
  assert.match(await page.textContent('[data-testid="stream-status"]'), /needs an API key/);
  await page.waitForSelector('[data-testid="queues-error"]:not([hidden])');
  assert.match(await page.textContent('[data-testid="queues-error"]'), /admin key/);
  await page.screenshot({ path: join(ARTIFACTS, "auth-needs-key.png") });
  // TaskService on the api, WatchService on the watch service (TASKWIRE_WATCH_URL).
  const urls = requests.map((r) => r.url());
  assert.ok(urls.some((u) => u === `${watchUrl}/taskwire.v1.WatchService/WatchTasks`), JSON.stringify(urls));
  assert.ok(urls.some((u) => u === `${apiUrl}/taskwire.v1.TaskService/ListTasks`), JSON.stringify(urls));
  // Refused, so not retried until the key changes.
  await sleep(1500);
  const watches = requests.filter((r) => r.method() === "POST" && r.url().endsWith("/WatchTasks"));
  assert.equal(watches.length, 1, "one refused WatchTasks, no retries");
});

test("a submitter key: every call carries it, a task submitted on the page and one from the CLI are listed", async () => {
  const sentBefore = requests.length;
  await useKey(keys.submitterA);
  assert.equal(await page.inputValue('[data-testid="api-key-input"]'), "", "the saved key is not shown");
  assert.equal(await page.textContent('[data-testid="api-key-state"]'), "key set");
  assert.equal(await page.evaluate((k) => localStorage.getItem(k), STORAGE), keys.submitterA);
  await page.waitForSelector(`${notice}[hidden]`, { state: "attached" });
  await page.waitForSelector('[data-testid="stream-status"][data-status="live"]');
  await page.waitForSelector('[data-testid="list-error"][hidden]', { state: "attached" });

  const { id, error } = await submitOnPage("demo.echo", '{"from":"page"}');
  assert.equal(error, undefined, `submit failed: ${error}`);
  pageTaskId = id;
  await row(pageTaskId).waitFor();
  assert.equal(await row(pageTaskId).getAttribute("data-state"), "QUEUED", "no worker here: it waits");

  // Submitted elsewhere with the same key (the CLI): there after a refresh.
  const { stdout } = await run(TASKWIRE_BIN, ["--addr", apiUrl, "--token", keys.submitterA, "submit", "demo.echo"], { env, timeout: STEP });
  cliTaskId = stdout.trim().split("\n").pop().trim();
  assert.match(cliTaskId, /^[0-9a-f-]{36}$/);
  await page.click('[data-testid="refresh"]');
  await row(cliTaskId).waitFor();

  // A submitter may not read the queues' statistics: the card says an admin key is needed,
  // and the header's notice stays clear of it.
  await page.waitForSelector('[data-testid="queues-error"][data-kind="forbidden"]:not([hidden])');
  assert.match(await page.textContent('[data-testid="queues-error"]'), /Queue statistics need an admin key/);
  assert.ok(await page.isHidden(notice));

  // Every call since, unary and streaming, to both servers, had the header.
  const sent = requests.slice(sentBefore).filter((r) => r.method() === "POST");
  assert.ok(sent.some((r) => r.url().startsWith(watchUrl)), "a WatchTasks call was made");
  for (const r of sent) {
    assert.equal((await r.allHeaders()).authorization, `Bearer ${keys.submitterA}`, `authorization on ${r.url()}`);
  }
});

test("the key is kept across a reload", async () => {
  await page.reload({ waitUntil: "load" });
  await page.waitForSelector('[data-testid="api-key-form"][data-has-key="true"]');
  await row(pageTaskId).waitFor();
  await row(cliTaskId).waitFor();
  await page.waitForSelector('[data-testid="stream-status"][data-status="live"]');
  assert.ok(await page.isHidden(notice));
});

test("a reader key may list but not submit: 'this key may not submit tasks'", async () => {
  await useKey(keys.readerA);
  await row(pageTaskId).waitFor();
  const { error } = await submitOnPage("demo.echo", "{}");
  assert.match(error ?? "", /This key may not submit tasks/);
  await noticeSays(/This key may not submit tasks/, "forbidden");
  assert.match(await page.textContent(notice), /reader key cannot call SubmitTask/, "the server's reason is shown too");
  assert.ok(await page.isHidden('[data-testid="list-error"]'));
  await page.screenshot({ path: join(ARTIFACTS, "auth-forbidden.png") });
});

test("a key of another tenant does not see tenant-a's tasks", async () => {
  await useKey(keys.submitterB);
  await page.waitForSelector('[data-testid="empty"]');
  assert.equal(await row(pageTaskId).count(), 0);
  assert.equal(await row(cliTaskId).count(), 0);
  assert.ok(await page.isHidden(notice), "the key itself is fine");
  await page.waitForSelector('[data-testid="stream-status"][data-status="live"]');
});

test("a key the server does not know, then no key at all", async () => {
  await useKey("twk_0000000000000000_not_a_real_key");
  await noticeSays(/did not accept the API key/, "bad-key");
  await page.waitForSelector('[data-testid="stream-status"][data-status="error"]');

  await page.click('[data-testid="api-key-clear"]');
  await page.waitForSelector('[data-testid="api-key-form"][data-has-key="false"]');
  assert.equal(await page.evaluate((k) => localStorage.getItem(k), STORAGE), null);
  await noticeSays(/needs an API key/, "needs-key");
});

test("an admin key reads the queues' statistics", async () => {
  await useKey(keys.adminA);
  await row(pageTaskId).waitFor();
  await page.waitForFunction(() => (document.querySelector('[data-testid="queues-updated"]')?.textContent ?? "") !== "");
  assert.ok(await page.isHidden('[data-testid="queues-error"]'));
  assert.ok(await page.isHidden(notice));
  await page.screenshot({ path: join(ARTIFACTS, "auth.png"), fullPage: false });
});

test("no key ever in a URL or the console; no page errors", async () => {
  const all = Object.values(keys);
  for (const r of requests) for (const k of all) assert.ok(!r.url().includes(k), `a key in ${r.url()}`);
  for (const k of all) assert.ok(!page.url().includes(k), "a key in the page's URL");
  for (const line of consoleLines) for (const k of all) assert.ok(!line.includes(k), `a key in the console: ${line}`);
  assert.deepEqual(pageErrors, []);
});
