// End-to-end test of the dashboard: Debian's chromium (driven by playwright-core)
// against a running `taskwire dev` that serves clients/web/dist. test.sh starts the
// server and passes its addresses:
//   TASKWIRE_WEB_URL   the dashboard, e.g. http://127.0.0.1:50080/
//   TASKWIRE_GRPC_URL  what /config.js should announce, e.g. http://127.0.0.1:50051
//   CHROMIUM           the browser binary (default /usr/bin/chromium)
//   ARTIFACTS_DIR      where the screenshot goes (default ../test-artifacts)
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import {
  ARTIFACTS,
  STEP,
  collectOffHost,
  collectPageErrors,
  launchChromium,
  openPage,
  requireEnv,
  sleep,
  startTcpProxy,
  submitTask,
} from "./harness.mjs";

const [WEB_URL, GRPC_URL] = requireEnv("TASKWIRE_WEB_URL", "TASKWIRE_GRPC_URL");

let browser;
let page;
const watchRequests = []; // every request to /taskwire.v1.WatchService/WatchTask*
const openStreams = new Set(); // those not finished or failed yet
let maxOpenStreams = 0;
const grpcRequests = [];
// The Queues card polls GetQueueStats by itself, every few seconds: calls made in
// answer to the user are the others.
const QUEUE_STATS = "/taskwire.v1.TaskService/GetQueueStats";
const userCalls = () => grpcRequests.filter((p) => p !== QUEUE_STATS).length;
const echoIds = []; // every demo.echo task the tests submit (the Queues test counts them)
const pageErrors = [];
const offHost = []; // any request that leaves 127.0.0.1
const consoleLines = []; // everything the page logged, saved for debugging

const row = (id) => page.locator(`[data-testid="task-row"][data-task-id="${id}"]`);

/** submitTask (options: labels, delay), then waits for the task's row. */
async function submit(kind, input, options) {
  const id = await submitTask(page, kind, input, options);
  await row(id).waitFor({ timeout: STEP });
  return id;
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await launchChromium();
  page = await openPage(browser, { viewport: { width: 1500, height: 860 }, deviceScaleFactor: 1 });
  collectOffHost(page, offHost);
  collectPageErrors(page, { into: pageErrors, consoleLines });
  page.on("request", (req) => {
    const url = new URL(req.url());
    if (url.pathname.startsWith("/taskwire.v1.")) grpcRequests.push(url.pathname);
    if (url.pathname.startsWith("/taskwire.v1.WatchService/WatchTask")) {
      watchRequests.push(url.pathname);
      openStreams.add(req);
      maxOpenStreams = Math.max(maxOpenStreams, openStreams.size);
    }
  });
  page.on("requestfinished", (req) => openStreams.delete(req));
  page.on("requestfailed", (req) => openStreams.delete(req));
  // Record every progress value a row shows, to prove the bar moved live.
  await page.addInitScript(() => {
    window.__fractions = {};
    new MutationObserver((records) => {
      for (const r of records) {
        const el = r.target;
        if (!(el instanceof HTMLElement) || el.dataset.testid !== "task-progress") continue;
        const id = el.closest("tr")?.dataset.taskId;
        if (id) (window.__fractions[id] ??= []).push(Number(el.dataset.fraction));
      }
    }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-fraction"] });
  });
  await page.goto(WEB_URL, { waitUntil: "load", timeout: STEP });
});

after(async () => {
  // For debugging a failure: how the page looked at the end, and what it logged.
  await page?.screenshot({ path: join(ARTIFACTS, "final.png"), fullPage: true }).catch(() => {});
  writeFileSync(join(ARTIFACTS, "console.log"), consoleLines.join("\n") + "\n");
  await browser?.close();
});

test("loads, reads /config.js and goes live on one WatchTasks stream", async () => {
  assert.equal(await page.title(), "taskwire dashboard");
  assert.equal(await page.textContent('[data-testid="grpc-url"]'), GRPC_URL);
  await page.waitForSelector('[data-testid="stream-status"][data-status="live"]', { timeout: STEP });
  assert.deepEqual(watchRequests, ["/taskwire.v1.WatchService/WatchTasks"]);
});

test("rejects malformed JSON input with a message and sends nothing", async () => {
  const sent = userCalls();
  await page.fill('[data-testid="submit-kind"]', "demo.echo");
  await page.fill('[data-testid="submit-input"]', '{"seconds": 2,');
  await page.click('[data-testid="submit-button"]');
  const err = page.locator('[data-testid="submit-error"]');
  await err.waitFor({ state: "visible" });
  assert.match(await err.textContent(), /not valid JSON/);
  assert.equal(await page.getAttribute('[data-testid="submit-input"]', "aria-invalid"), "true");
  assert.equal(userCalls(), sent, "no RPC for invalid input");
});

test("shows the server's gRPC error for a bad kind", async () => {
  await page.fill('[data-testid="submit-kind"]', "Not A Kind!");
  await page.fill('[data-testid="submit-input"]', "{}");
  await page.click('[data-testid="submit-button"]');
  const err = page.locator('[data-testid="submit-error"]');
  await page.waitForFunction(() => /INVALID_ARGUMENT/.test(document.querySelector('[data-testid="submit-error"]')?.textContent ?? ""));
  assert.ok(await err.isVisible());
});

let sleepId;
let cancelledId;

test("demo.sleep submitted from the page runs to 100% and SUCCEEDED, live", async () => {
  sleepId = await submit("demo.sleep", '{"seconds":2,"steps":4}', { labels: "suite=web" });
  const r = row(sleepId);
  await r.locator('[data-testid="task-progress"][aria-valuenow="100"]').waitFor({ timeout: STEP });
  await page.waitForSelector(`[data-testid="task-row"][data-task-id="${sleepId}"][data-state="SUCCEEDED"]`, { timeout: STEP });
  assert.equal(await r.locator('[data-testid="task-state"]').textContent(), "SUCCEEDED");
  assert.equal(await r.locator('[data-testid="task-progress-label"]').textContent(), "100%");
  assert.equal(await r.locator('[data-testid="cancel-button"]').count(), 0, "no cancel on a finished task");
  const seen = await page.evaluate((id) => window.__fractions[id] ?? [], sleepId);
  const steps = seen.filter((f) => f > 0 && f < 1);
  assert.ok(steps.length >= 2, `the bar moved through intermediate steps from stream events (saw ${JSON.stringify(seen)})`);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i] >= seen[i - 1], `progress never went back: ${JSON.stringify(seen)}`);
  assert.match(await r.locator('[data-testid="task-message"]').textContent(), /slept/);
});

test("a long demo.sleep is cancelled from the page", async () => {
  cancelledId = await submit("demo.sleep", '{"seconds":120,"steps":120}');
  const r = row(cancelledId);
  await page.waitForSelector(`[data-testid="task-row"][data-task-id="${cancelledId}"][data-state="RUNNING"]`, { timeout: STEP });
  await r.locator('[data-testid="cancel-button"]').click();
  await page.waitForSelector(`[data-testid="task-row"][data-task-id="${cancelledId}"][data-state="CANCELLED"]`, { timeout: STEP });
  assert.equal(await r.locator('[data-testid="task-state"]').textContent(), "CANCELLED");
  assert.equal(await r.locator('[data-testid="cancel-button"]').count(), 0);
});

test("every row stays live on the single stream; screenshot", async () => {
  // A few more rows for the picture: one streaming tokens, one failed.
  const agentId = await submit("demo.agent", '{"prompt":"hi","tokens":150,"delay_ms":60}', { labels: "suite=web" });
  const failId = await submit("demo.fail", "{}");
  await page.waitForSelector(`[data-testid="task-row"][data-task-id="${failId}"][data-state="FAILED"]`, { timeout: STEP });
  await page.waitForFunction(
    (id) => Number(document.querySelector(`[data-task-id="${id}"] [data-testid="task-progress"]`)?.getAttribute("aria-valuenow")) >= 40,
    agentId,
    { timeout: STEP },
  );
  // Still one streaming request, opened once, for all of these tasks.
  assert.deepEqual(watchRequests, ["/taskwire.v1.WatchService/WatchTasks"], `streams opened: ${JSON.stringify(watchRequests)}`);
  assert.equal(openStreams.size, 1, "the one stream is still open");
  assert.equal(maxOpenStreams, 1, "never more than one stream open");
  assert.equal(await page.getAttribute('[data-testid="stream-status"]', "data-status"), "live");
  await row(sleepId).locator('[data-testid="task-progress"][aria-valuenow="100"]').waitFor();
  await page.screenshot({ path: join(ARTIFACTS, "dashboard.png"), fullPage: true });
  // Stop the agent so it does not outlive the test's interest in it.
  await row(agentId).locator('[data-testid="cancel-button"]').click();
  await page.waitForSelector(`[data-testid="task-row"][data-task-id="${agentId}"][data-state="CANCELLED"]`, { timeout: STEP });
});

test("filters by state, kind and label", async () => {
  await page.selectOption('[data-testid="filter-state"]', { label: "cancelled" });
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('[data-testid="task-row"]')];
    return rows.length > 0 && rows.every((r) => r.dataset.state === "CANCELLED");
  });
  assert.equal(await row(cancelledId).count(), 1);
  assert.equal(await row(sleepId).count(), 0);

  await page.selectOption('[data-testid="filter-state"]', { label: "any state" });
  await page.fill('[data-testid="filter-kind"]', "demo.sleep");
  await page.fill('[data-testid="filter-label"]', "suite=web");
  await page.click('[data-testid="filter-apply"]');
  await page.waitForFunction((id) => {
    const rows = [...document.querySelectorAll('[data-testid="task-row"]')];
    return rows.length === 1 && rows[0].dataset.taskId === id;
  }, sleepId);

  // A malformed kind: the server's INVALID_ARGUMENT shows, and the stream gives up
  // instead of retrying a filter that cannot work.
  await page.fill('[data-testid="filter-kind"]', "Not A Kind");
  await page.fill('[data-testid="filter-label"]', "");
  await page.click('[data-testid="filter-apply"]');
  await page.waitForSelector('[data-testid="list-error"]:not([hidden])');
  assert.match(await page.textContent('[data-testid="list-error"]'), /INVALID_ARGUMENT: kind/);
  await page.waitForSelector('[data-testid="stream-status"][data-status="error"]');

  await page.fill('[data-testid="filter-kind"]', "");
  await page.click('[data-testid="filter-apply"]');
  await row(cancelledId).waitFor();
  assert.ok(await page.isHidden('[data-testid="list-error"]'));
  await page.waitForSelector('[data-testid="stream-status"][data-status="live"]');
  // A kind/label filter change replaces the stream; it never adds one.
  assert.ok(watchRequests.every((p) => p === "/taskwire.v1.WatchService/WatchTasks"));
  for (let i = 0; i < 50 && openStreams.size !== 1; i++) await sleep(100);
  assert.equal(openStreams.size, 1, "exactly one stream open after filter changes");
});

test("pages with next/prev page tokens", async () => {
  for (let i = 0; i < 8; i++) echoIds.push(await submit("demo.echo", JSON.stringify({ n: i })));
  // 12 tasks now exist (4 from the tests above, 8 echoes): 10 on page 1, 2 on page 2.
  await page.selectOption('[data-testid="page-size"]', "10");
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="task-row"]').length === 10);
  const first = await page.$$eval('[data-testid="task-row"]', (rs) => rs.map((r) => r.dataset.taskId));
  assert.match(await page.textContent('[data-testid="page-info"]'), /^Page 1/);
  assert.equal(await page.isDisabled('[data-testid="prev-page"]'), true);
  await page.click('[data-testid="next-page"]');
  await page.waitForFunction(() => /^Page 2/.test(document.querySelector('[data-testid="page-info"]')?.textContent ?? ""));
  const second = await page.$$eval('[data-testid="task-row"]', (rs) => rs.map((r) => r.dataset.taskId));
  assert.equal(second.length, 2);
  assert.ok(second.every((id) => !first.includes(id)), "page 2 holds other tasks");
  assert.ok(second.includes(sleepId), "the oldest task is on the last page");
  assert.equal(await page.isDisabled('[data-testid="next-page"]'), true);
  await page.click('[data-testid="prev-page"]');
  await page.waitForFunction(() => /^Page 1/.test(document.querySelector('[data-testid="page-info"]')?.textContent ?? ""));
  assert.deepEqual(await page.$$eval('[data-testid="task-row"]', (rs) => rs.map((r) => r.dataset.taskId)), first);
});

/** SubmitTask straight to the server over grpc-web (no input), for a task the page did not submit. */
async function submitDirect(kind) {
  const kindBytes = new TextEncoder().encode(kind);
  const msg = new Uint8Array([0x0a, kindBytes.length, ...kindBytes]);
  const frame = new Uint8Array([0, 0, 0, 0, msg.length, ...msg]);
  const res = await fetch(`${GRPC_URL}/taskwire.v1.TaskService/SubmitTask`, {
    method: "POST",
    headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
    body: frame,
    signal: AbortSignal.timeout(STEP),
  });
  const body = new Uint8Array(await res.arrayBuffer());
  assert.equal(body[0], 0, `SubmitTask answered a message frame (grpc-status ${res.headers.get("grpc-status")})`);
  assert.equal(body[5], 0x0a, "task_id is field 1");
  return new TextDecoder().decode(body.subarray(7, 7 + body[6]));
}

test("after a dropped stream it reconnects with backoff and re-lists to catch up", async () => {
  // A TCP proxy between a second page and the gRPC port, so the test can drop the
  // WatchTasks connection the way a flaky network would.
  const proxy = await startTcpProxy(Number(new URL(GRPC_URL).port));
  const context = await browser.newContext({ viewport: { width: 1300, height: 700 } });
  try {
    const p = await openPage(context);
    const streams = [];
    p.on("request", (req) => {
      if (new URL(req.url()).pathname.startsWith("/taskwire.v1.WatchService/")) streams.push(new URL(req.url()).pathname);
    });
    await p.route(/\/config\.js$/, (route) =>
      route.fulfill({ contentType: "text/javascript", body: `window.TASKWIRE_GRPC_URL = ${JSON.stringify(proxy.url)};` }),
    );
    await p.goto(WEB_URL, { timeout: STEP });
    assert.equal(await p.textContent('[data-testid="grpc-url"]'), proxy.url);
    await p.waitForSelector('[data-testid="stream-status"][data-status="live"]');

    // A task the page is showing, running when the connection drops.
    await p.fill('[data-testid="submit-kind"]', "demo.sleep");
    await p.fill('[data-testid="submit-input"]', '{"seconds":2,"steps":2}');
    await p.click('[data-testid="submit-button"]');
    await p.waitForSelector('[data-testid="submit-result"]:not([hidden])');
    const id = await p.getAttribute('[data-testid="submit-result"]', "data-task-id");
    await p.waitForSelector(`[data-task-id="${id}"][data-state="RUNNING"]`);

    proxy.cut();
    await p.waitForSelector('[data-testid="stream-status"][data-status="reconnecting"]');
    // While the page is offline: the task finishes, and another client submits one.
    const otherId = await submitDirect("demo.echo");
    echoIds.push(otherId);
    await sleep(2500);
    assert.equal(await p.getAttribute(`[data-testid="task-row"][data-task-id="${id}"]`, "data-state"), "RUNNING", "offline: nothing new arrived");

    proxy.restore();
    await p.waitForSelector('[data-testid="stream-status"][data-status="live"]');
    // Caught up by the re-list, not by replay (WatchTasks has none).
    await p.waitForSelector(`[data-task-id="${id}"][data-state="SUCCEEDED"] [data-testid="task-progress"][aria-valuenow="100"]`);
    await p.waitForSelector(`[data-testid="task-row"][data-task-id="${otherId}"]`);
    assert.ok(streams.length >= 2, `reconnected: ${JSON.stringify(streams)}`);
    assert.ok(streams.every((s) => s === "/taskwire.v1.WatchService/WatchTasks"), `only WatchTasks: ${JSON.stringify(streams)}`);
  } finally {
    await context.close();
    await proxy.close();
  }
});

// After the paging test, so its count of tasks is unchanged.
test("warns when no worker serves the kind; a demo kind gets no warning", async () => {
  const warning = page.locator('[data-testid="submit-warning"]');
  const queuedId = await submit("nobody.serves.this", "{}");
  await warning.waitFor({ state: "visible" });
  // The server's words; the page shows them as they come.
  assert.match(await warning.textContent(), /nobody\.serves\.this/);
  // Accepted all the same: it waits, queued, for a worker.
  assert.equal(await row(queuedId).getAttribute("data-state"), "QUEUED");
  assert.ok(await page.isVisible('[data-testid="submit-result"]'), "the task id shows next to the warning");

  // The next submit's answer has no warning: the old one is gone.
  echoIds.push(await submit("demo.echo", '{"warning":"none"}'));
  assert.ok(await warning.isHidden(), "no warning for a demo kind");
  assert.equal(await warning.textContent(), "");
});

test("the Queues card counts what ran, live: demo.echo's successes and a throughput chart", async () => {
  const tile = '[data-testid="queue-kind"][data-kind="demo.echo"]';
  await page.waitForSelector(tile);
  // Every demo.echo the tests above submitted has run (they take milliseconds).
  await page.waitForFunction(
    ({ sel, n }) => Number(document.querySelector(sel)?.dataset.succeeded) >= n,
    { sel: tile, n: echoIds.length },
  );
  // One more, and the card follows it without a reload (it polls GetQueueStats).
  const before = Number(await page.getAttribute(tile, "data-succeeded"));
  const id = await submit("demo.echo", '{"queues":true}');
  echoIds.push(id);
  await page.waitForSelector(`[data-testid="task-row"][data-task-id="${id}"][data-state="SUCCEEDED"]`);
  await page.waitForFunction(
    ({ sel, n }) => Number(document.querySelector(sel)?.dataset.succeeded) >= n,
    { sel: tile, n: Math.max(before + 1, echoIds.length) },
  );
  const succeeded = Number(await page.getAttribute(tile, "data-succeeded"));
  assert.ok(succeeded >= echoIds.length, `demo.echo succeeded ${succeeded} >= ${echoIds.length} run`);
  assert.equal(await page.textContent(`${tile} [data-testid="queue-succeeded"]`), String(succeeded));
  assert.equal(await page.getAttribute(tile, "data-failed"), "0");
  assert.equal(await page.textContent(`${tile} [data-testid="queue-oldest"]`), "—", "nothing waits");

  // The chart: one bar per minute of the window (15 by default), some of them not empty,
  // adding up to what finished.
  await page.waitForFunction(
    ({ sel, n }) => Number(document.querySelector(`${sel} [data-testid="queue-chart"]`)?.dataset.total) >= n,
    { sel: tile, n: succeeded },
  );
  const minutes = Number(await page.getAttribute('[data-testid="queues"]', "data-window-minutes"));
  assert.equal(minutes, 15);
  const bars = await page.$$eval(`${tile} [data-testid="queue-bar"]`, (rs) =>
    rs.map((r) => ({ value: Number(r.dataset.value), height: Number(r.getAttribute("height")) })),
  );
  assert.equal(bars.length, minutes, "one bar per minute");
  assert.ok(bars.some((b) => b.value > 0 && b.height > 1), `a non-empty bar: ${JSON.stringify(bars)}`);
  assert.equal(bars.reduce((a, b) => a + b.value, 0), Number(await page.getAttribute(`${tile} [data-testid="queue-chart"]`, "data-total")));

  // The other outcomes have their own tiles: demo.fail failed earlier.
  await page.waitForFunction(() => Number(document.querySelector('[data-testid="queue-kind"][data-kind="demo.fail"]')?.dataset.failed) >= 1);
  assert.ok(await page.isHidden('[data-testid="queues-error"]'));
  await page.locator('[data-testid="queues"]').screenshot({ path: join(ARTIFACTS, "queues.png") });
});

/** GET /v1/tasks/{id} from the REST surface (served on the gRPC address), as JSON. */
async function restTask(id) {
  const res = await fetch(new URL(`/v1/tasks/${id}`, GRPC_URL), { signal: AbortSignal.timeout(STEP) });
  assert.equal(res.status, 200, `GET /v1/tasks/${id}`);
  return res.json();
}

/** What a row shows about its schedule, read in one go (the row can change between reads). */
const scheduleOf = (id) =>
  page.evaluate((taskId) => {
    const tr = document.querySelector(`[data-testid="task-row"][data-task-id="${taskId}"]`);
    const runAt = tr?.querySelector('[data-testid="task-run-at"]');
    const at = runAt?.dataset.runAt;
    return {
      state: tr?.dataset.state,
      badge: tr?.querySelector('[data-testid="task-state"]')?.className,
      text: runAt?.textContent ?? "",
      visible: runAt ? runAt.offsetParent !== null : false,
      at,
      // The start as this page formats a clock time (formatClock, today).
      clock: at ? new Date(at).toLocaleTimeString([], { hour12: false }) : undefined,
      now: Date.now(),
      cancel: tr?.querySelectorAll('[data-testid="cancel-button"]').length ?? 0,
    };
  }, id);

// After the Queues test, whose counts and "nothing waits" these would change.
test("a delayed task waits SCHEDULED with its start shown, then runs by itself; another is cancelled before it starts", async () => {
  // A delay the page cannot read is refused with a message, and nothing is sent.
  const sent = userCalls();
  await page.fill('[data-testid="submit-kind"]', "demo.echo");
  await page.fill('[data-testid="submit-input"]', "{}");
  await page.fill('[data-testid="submit-delay"]', "soon");
  await page.click('[data-testid="submit-button"]');
  await page.waitForSelector('[data-testid="submit-error"]:not([hidden])');
  assert.match(await page.textContent('[data-testid="submit-error"]'), /^Delay: .*not a delay/);
  assert.equal(await page.getAttribute('[data-testid="submit-delay"]', "aria-invalid"), "true");
  assert.equal(userCalls(), sent, "no RPC for an unreadable delay");

  // demo.echo in 3 s: SCHEDULED, with when it starts, until then.
  const submittedAt = Date.now();
  const soonId = await submit("demo.echo", '{"delayed":3}', { delay: "3s" });
  const answeredAt = Date.now();
  assert.equal(await page.getAttribute('[data-testid="submit-result"]', "data-state"), "SCHEDULED");
  assert.match(await page.textContent('[data-testid="submit-result"]'), /^Scheduled .* to start in 3 s$/);
  assert.equal(await page.getAttribute('[data-testid="submit-delay"]', "aria-invalid"), null);
  const soon = await scheduleOf(soonId);
  assert.equal(soon.state, "SCHEDULED", `the row right after the submit: ${JSON.stringify(soon)}`);
  assert.match(soon.badge, /\bstate-scheduled\b/);
  assert.ok(soon.visible, "the start time shows in the row");
  const runAt = Date.parse(soon.at);
  assert.ok(
    runAt >= submittedAt + 3000 - 1000 && runAt <= answeredAt + 3000 + 1000,
    `run_at ${soon.at} is 3 s after the submit (${new Date(submittedAt).toISOString()}..${new Date(answeredAt).toISOString()})`,
  );
  assert.ok(soon.text.startsWith(`starts ${soon.clock} · `), `row says when: "${soon.text}"`);
  assert.match(soon.text, / · (in [1-3] s|now|due, starting…)$/, `row says how soon: "${soon.text}"`);
  assert.equal(soon.cancel, 1, "a scheduled task can be cancelled");

  // It reaches SUCCEEDED by itself (no reload, no click), no sooner than its run_at.
  await page.waitForSelector(`[data-testid="task-row"][data-task-id="${soonId}"][data-state="SUCCEEDED"]`, { timeout: STEP });
  echoIds.push(soonId);
  const done = await scheduleOf(soonId);
  assert.equal(done.text, "", "no start time once it ran");
  assert.ok(!done.visible);
  assert.ok(done.now >= runAt, "it finished after its run_at");
  assert.match(await row(soonId).locator('[data-testid="task-message"]').textContent(), /"delayed":3/);
  const soonRecord = await restTask(soonId);
  assert.equal(soonRecord.state, "TASK_STATE_SUCCEEDED");
  // (Within a millisecond: the page rounds the record's microseconds to one.)
  assert.ok(Math.abs(Date.parse(soonRecord.runAt) - runAt) <= 1, `the row showed the record's run_at ${soonRecord.runAt}: ${soon.at}`);
  assert.ok(
    Date.parse(soonRecord.startedAt) >= Date.parse(soonRecord.runAt),
    `started ${soonRecord.startedAt}, not before its run_at ${soonRecord.runAt}`,
  );

  // demo.echo in 60 s: SCHEDULED, counting down; its detail says when it runs.
  const laterId = await submit("demo.echo", '{"delayed":60}', { delay: "60" });
  const later = await scheduleOf(laterId);
  assert.equal(later.state, "SCHEDULED", JSON.stringify(later));
  assert.ok(later.text.startsWith(`starts ${later.clock} · `), `row says when: "${later.text}"`);
  assert.match(later.text, / · in (1m 0s|[45]\d s)$/, `row says how soon: "${later.text}"`);
  await page.click(`[data-testid="task-row"][data-task-id="${laterId}"] [data-testid="task-id"]`);
  await page.waitForSelector('[data-testid="detail-state"]');
  assert.equal(await page.textContent('[data-testid="detail-state"]'), "SCHEDULED");
  assert.equal(await page.textContent('[data-testid="detail-run-at"]'), later.clock);
  await page.click('[data-testid="detail-close"]');
  await page.waitForSelector('[data-testid="task-detail"]', { state: "hidden" });

  // The state filter knows SCHEDULED: only that one is waiting.
  await page.selectOption('[data-testid="filter-state"]', { label: "scheduled" });
  await page.waitForFunction((id) => {
    const rows = [...document.querySelectorAll('[data-testid="task-row"]')];
    return rows.length === 1 && rows[0].dataset.taskId === id && rows[0].dataset.state === "SCHEDULED";
  }, laterId);
  await page.selectOption('[data-testid="filter-state"]', { label: "any state" });
  await row(soonId).waitFor();

  // Cancelled from its row before it starts: CANCELLED, never run.
  await row(laterId).locator('[data-testid="cancel-button"]').click();
  await page.waitForSelector(`[data-testid="task-row"][data-task-id="${laterId}"][data-state="CANCELLED"]`, { timeout: STEP });
  const cancelled = await scheduleOf(laterId);
  assert.equal(cancelled.text, "", "no start time once cancelled");
  assert.equal(cancelled.cancel, 0, "no cancel on a cancelled task");
  const laterRecord = await restTask(laterId);
  assert.equal(laterRecord.state, "TASK_STATE_CANCELLED");
  assert.equal(laterRecord.startedAt, undefined, "it never started");
  // Back to no delay for anything submitted after this.
  await page.fill('[data-testid="submit-delay"]', "");
});

// Copies: the submit form sends more than one copy of a task as one SubmitTasks call.
const SUBMIT_CALLS = /^\/taskwire\.v1\.TaskService\/SubmitTasks?$/;
const BATCH_TAG = `b${Date.now().toString(36)}`;

/**
 * Fills the submit form with `copies` copies and submits it; answers what the result
 * notice says (its data attributes, summary and refusal lines) and the submit calls the
 * page made. A new answer is a new summary element (a batch answered deduplicated has
 * the same ids as the last one, so the ids cannot tell it from the old), and the button
 * is enabled again once the list was read again.
 */
async function submitCopies(kind, input, copies, { key = "", labels = "" } = {}) {
  await page.fill('[data-testid="submit-kind"]', kind);
  await page.fill('[data-testid="submit-input"]', input);
  await page.fill('[data-testid="submit-labels"]', labels);
  await page.fill('[data-testid="submit-delay"]', "");
  await page.fill('[data-testid="submit-idempotency-key"]', key);
  await page.fill('[data-testid="submit-copies"]', String(copies));
  assert.equal(await page.textContent('[data-testid="submit-button"]'), `Submit ${copies} tasks`);
  const sent = grpcRequests.length;
  const old = await page.evaluateHandle(() => document.querySelector('[data-testid="submit-summary"]'));
  await page.click('[data-testid="submit-button"]');
  await page.waitForFunction(
    (prev) => {
      const result = document.querySelector('[data-testid="submit-result"]');
      const summary = result.querySelector('[data-testid="submit-summary"]');
      const answered = (!result.hidden && summary && summary !== prev) || !document.querySelector('[data-testid="submit-error"]').hidden;
      return answered && !document.querySelector('[data-testid="submit-button"]').disabled;
    },
    old,
    { timeout: STEP },
  );
  await old.dispose();
  const err = page.locator('[data-testid="submit-error"]');
  if (await err.isVisible()) assert.fail(`submit ${copies} copies of ${kind} failed: ${await err.textContent()}`);
  const result = await page.evaluate(() => {
    const el = document.querySelector('[data-testid="submit-result"]');
    return {
      visible: !el.hidden,
      className: el.className,
      ...el.dataset,
      summary: el.querySelector('[data-testid="submit-summary"]')?.textContent ?? "",
      refusals: [...el.querySelectorAll('[data-testid="submit-refusal"]')].map((li) => li.textContent),
    };
  });
  assert.ok(result.visible, "the batch's answer is shown");
  result.ids = result.taskIds ? result.taskIds.split(" ") : [];
  result.calls = grpcRequests.slice(sent).filter((p) => SUBMIT_CALLS.test(p));
  return result;
}

test("copies: 5 of a task in one SubmitTasks call, each its own row that succeeds", async () => {
  const r = await submitCopies("demo.echo", '{"copy":true}', 5, { labels: `batch=${BATCH_TAG}` });
  assert.deepEqual(r.calls, ["/taskwire.v1.TaskService/SubmitTasks"], "one SubmitTasks call, no SubmitTask");
  assert.equal(r.summary, "Submitted 5 copies: all 5 accepted");
  assert.match(r.className, /\bok\b/);
  assert.deepEqual([r.copies, r.accepted, r.refused, r.deduplicated], ["5", "5", "0", "0"]);
  assert.equal(new Set(r.ids).size, 5, `five tasks: ${r.ids}`);
  for (const id of r.ids) assert.match(id, /^[0-9a-f-]{36}$/);
  assert.ok(await page.isHidden('[data-testid="submit-warning"]'), "a demo kind has no warning");
  // Five new rows, listed at once and highlighted, each moved to SUCCEEDED by the stream.
  for (const id of r.ids) {
    await row(id).waitFor({ timeout: STEP });
    assert.match(await row(id).getAttribute("class"), /\bfresh\b/);
  }
  for (const id of r.ids) {
    await page.waitForSelector(`[data-testid="task-row"][data-task-id="${id}"][data-state="SUCCEEDED"]`, { timeout: STEP });
    assert.match(await row(id).locator('[data-testid="task-message"]').textContent(), /"copy":true/);
    const record = await restTask(id);
    assert.equal(record.state, "TASK_STATE_SUCCEEDED");
    assert.equal(record.labels?.batch, BATCH_TAG, "every copy carries the form's labels");
  }
});

test("copies with an idempotency key: copy n gets key-n, so sending again deduplicates each", async () => {
  const key = `batch-${BATCH_TAG}`;
  const first = await submitCopies("demo.echo", '{"keyed":true}', 3, { key });
  assert.deepEqual(first.calls, ["/taskwire.v1.TaskService/SubmitTasks"]);
  assert.deepEqual([first.accepted, first.refused, first.deduplicated], ["3", "0", "0"]);
  assert.equal(new Set(first.ids).size, 3, "three keys, three tasks");

  const again = await submitCopies("demo.echo", '{"keyed":true}', 3, { key });
  assert.deepEqual([again.accepted, again.refused, again.deduplicated], ["3", "0", "3"]);
  assert.deepEqual(again.ids, first.ids, "each copy answered with its first task, in order");
  assert.equal(again.summary, "Submitted 3 copies: all 3 accepted; all already submitted with those keys");

  // One task with copy 2's key is copy 2's task.
  await page.fill('[data-testid="submit-idempotency-key"]', `${key}-2`);
  await page.fill('[data-testid="submit-copies"]', "1");
  assert.equal(await page.textContent('[data-testid="submit-button"]'), "Submit task");
  const sent = grpcRequests.length;
  await page.click('[data-testid="submit-button"]');
  await page.waitForSelector('[data-testid="submit-result"]:not([hidden])[data-task-id]');
  assert.equal(await page.getAttribute('[data-testid="submit-result"]', "data-task-id"), first.ids[1]);
  assert.match(await page.textContent('[data-testid="submit-result"]'), /^Already submitted with that key: /);
  assert.deepEqual(grpcRequests.slice(sent).filter((p) => SUBMIT_CALLS.test(p)), ["/taskwire.v1.TaskService/SubmitTask"]);
  for (const id of first.ids) await page.waitForSelector(`[data-testid="task-row"][data-task-id="${id}"][data-state="SUCCEEDED"]`);
});

test("copies the server refuses are counted and explained; the others are accepted", async () => {
  // Keys are at most 256 characters: with a 254-character key, key-1..key-9 fit and
  // key-10..key-12 are one too long.
  const key = `refuse-${BATCH_TAG}-`.padEnd(254, "k");
  const r = await submitCopies("demo.echo", '{"refused":"some"}', 12, { key });
  assert.deepEqual(r.calls, ["/taskwire.v1.TaskService/SubmitTasks"]);
  assert.deepEqual([r.accepted, r.refused], ["9", "3"]);
  assert.equal(r.summary, "Submitted 12 copies: 9 accepted, 3 refused");
  assert.match(r.className, /\bwarn\b/, "the answer is a warning when copies were refused");
  assert.equal(r.refusals.length, 1, `one reason: ${JSON.stringify(r.refusals)}`);
  assert.match(r.refusals[0], /^INVALID_ARGUMENT: .*idempotency_key.* \(copies 10–12\)$/);
  assert.equal(new Set(r.ids).size, 9);
  for (const id of r.ids) await page.waitForSelector(`[data-testid="task-row"][data-task-id="${id}"][data-state="SUCCEEDED"]`, { timeout: STEP });
});

test("copies outside 1..1000 are refused on the page, before any call", async () => {
  await page.fill('[data-testid="submit-idempotency-key"]', "");
  const sent = grpcRequests.length;
  for (const bad of ["0", "1001", "2.5"]) {
    await page.fill('[data-testid="submit-copies"]', bad);
    assert.equal(await page.getAttribute('[data-testid="submit-copies"]', "aria-invalid"), "true", `${bad} is marked`);
    await page.click('[data-testid="submit-button"]');
    await page.waitForSelector('[data-testid="submit-error"]:not([hidden])');
    assert.match(await page.textContent('[data-testid="submit-error"]'), /^Copies: must be a whole number from 1 to 1000/);
  }
  assert.deepEqual(grpcRequests.slice(sent).filter((p) => SUBMIT_CALLS.test(p)), [], "no submit for copies out of range");
  // Back to one copy for anything submitted after this.
  await page.fill('[data-testid="submit-copies"]', "1");
  assert.equal(await page.getAttribute('[data-testid="submit-copies"]', "aria-invalid"), null);
  assert.equal(await page.textContent('[data-testid="submit-button"]'), "Submit task");
});

test("no page errors, and all traffic stayed on 127.0.0.1", () => {
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(offHost, []);
});
