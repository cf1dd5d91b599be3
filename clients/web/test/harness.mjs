// What the browser tests in this directory share: the browser, its pages, what a page
// reported, the addresses test.sh passes, a TCP proxy that can cut connections, and the
// submit form. Each *.test.mjs imports what it needs; nothing here runs on import.
//   CHROMIUM       the browser binary (default /usr/bin/chromium)
//   ARTIFACTS_DIR  where screenshots and logs go (default ../test-artifacts)
import assert from "node:assert/strict";
import net from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));

export const STEP = 30_000; // the bound for any one wait in these tests
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const ARTIFACTS = process.env.ARTIFACTS_DIR || join(here, "..", "test-artifacts");

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * The values of the variables test.sh sets for the `taskwire dev` it started (e.g.
 * TASKWIRE_WEB_URL, TASKWIRE_GRPC_URL), in the order asked; throws when one is unset.
 */
export function requireEnv(...names) {
  const values = names.map((name) => process.env[name]);
  if (values.some((v) => !v)) throw new Error(`${names.join(" and ")} must be set (run test.sh)`);
  return values;
}

/** Debian's chromium (never a downloaded one), headless. */
export function launchChromium() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: STEP,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** A new page of a browser or a browser context, every wait on it bounded by STEP. */
export async function openPage(browserOrContext, options) {
  const page = await browserOrContext.newPage(options);
  page.setDefaultTimeout(STEP);
  return page;
}

/**
 * Collects into `into` (returned) what a "no page errors" check looks at: the page's
 * uncaught errors and, unless consoleErrors is false, its console errors. Given
 * consoleLines, every console message is added there too, for debugging.
 */
export function collectPageErrors(page, { into = [], consoleErrors = true, consoleLines } = {}) {
  page.on("pageerror", (err) => into.push(String(err)));
  if (consoleErrors || consoleLines) {
    page.on("console", (msg) => {
      consoleLines?.push(`${msg.type()}: ${msg.text()}`);
      if (consoleErrors && msg.type() === "error") into.push(`console: ${msg.text()}`);
    });
  }
  return into;
}

/** Collects into `into` (returned) the URL of every request the page makes that leaves 127.0.0.1. */
export function collectOffHost(page, into = []) {
  page.on("request", (req) => {
    const url = new URL(req.url());
    if (url.protocol.startsWith("http") && url.hostname !== "127.0.0.1") into.push(req.url());
  });
  return into;
}

/**
 * A TCP proxy on a free loopback port to 127.0.0.1:`targetPort`, so a test can drop
 * connections the way a flaky network would. `drop()` destroys every open connection
 * while it goes on listening (the client's reconnect gets through); `cut()` does the
 * same and refuses new connections until `restore()`.
 *
 * With recordRequests, it also reads the head of every HTTP/1.1 request passing
 * through (a connection may carry several, kept alive) into `requests`:
 * { method, path, headers (lower-case names) }.
 */
export async function startTcpProxy(targetPort, { recordRequests = false } = {}) {
  const sockets = new Set();
  const requests = [];
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) return client.destroy();
    const upstream = net.connect(targetPort, "127.0.0.1");
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", close);
      s.on("close", close);
    }
    if (recordRequests) {
      // What the client sent that is not yet a whole request head, and how many body
      // bytes still to skip (a body must not be read as a head).
      let pending = "";
      let skip = 0;
      client.on("data", (chunk) => {
        pending += chunk.toString("latin1");
        for (;;) {
          if (skip > 0) {
            const n = Math.min(skip, pending.length);
            pending = pending.slice(n);
            skip -= n;
            if (skip > 0) break;
          }
          const end = pending.indexOf("\r\n\r\n");
          if (end < 0) break;
          const [requestLine, ...lines] = pending.slice(0, end).split("\r\n");
          pending = pending.slice(end + 4);
          const [method, path] = requestLine.split(" ");
          const headers = {};
          for (const line of lines) {
            const colon = line.indexOf(":");
            if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
          }
          requests.push({ method, path, headers });
          skip = Number(headers["content-length"] ?? 0);
        }
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    drop() {
      for (const s of sockets) s.destroy();
    },
    cut() {
      refusing = true;
      this.drop();
    },
    restore() {
      refusing = false;
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * Submits a task with the page's submit form (labels and delay as typed there, empty
 * for none) and answers its id, once the page shows it; fails on the form's error.
 */
export async function submitTask(page, kind, input, { labels = "", delay = "" } = {}) {
  const before = await page.getAttribute('[data-testid="submit-result"]', "data-task-id");
  await page.fill('[data-testid="submit-kind"]', kind);
  await page.fill('[data-testid="submit-input"]', input);
  await page.fill('[data-testid="submit-labels"]', labels);
  await page.fill('[data-testid="submit-delay"]', delay);
  await page.click('[data-testid="submit-button"]');
  await page.waitForFunction(
    (prev) => {
      const el = document.querySelector('[data-testid="submit-result"]');
      const err = document.querySelector('[data-testid="submit-error"]');
      return (el && !el.hidden && el.dataset.taskId && el.dataset.taskId !== prev) || (err && !err.hidden);
    },
    before,
    { timeout: STEP },
  );
  const err = page.locator('[data-testid="submit-error"]');
  if (await err.isVisible()) assert.fail(`submit ${kind} failed: ${await err.textContent()}`);
  const id = await page.getAttribute('[data-testid="submit-result"]', "data-task-id");
  assert.match(id, /^[0-9a-f-]{36}$/);
  return id;
}
