// Dead letters in the dashboard, end to end: Debian's chromium (playwright-core) against
// the `taskwire dev` test.sh started. FAILED tasks are retried from their row, from the
// detail drawer, as a selection, and all at once by the list's kind and label filter
// after a dry run and an in-page confirmation; then discarded the same way. Every
// outcome is also read over REST (GET /v1/tasks/{id}: its `run`, or 404 once discarded).
// test.sh passes:
//   TASKWIRE_WEB_URL   the dashboard, e.g. http://127.0.0.1:50080/
//   TASKWIRE_GRPC_URL  the dev address (gRPC, grpc-web and REST), e.g. http://127.0.0.1:50051
//   CHROMIUM           the browser binary (default /usr/bin/chromium)
//   ARTIFACTS_DIR      where the screenshots go (default ../test-artifacts)
//
// It submits tasks: it must run after dashboard.test.mjs, whose paging test counts the
// server's tasks (node --test runs the files one at a time, in name order: "dashboard"
// < "dead-letters" < "rest-page" < "sse"). Its tasks carry a label of their own, and
// every bulk call here is filtered by it, so the demo.fail that dashboard.test.mjs left
// FAILED is never counted, retried or discarded here; none of its tasks outlives it.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ARTIFACTS, STEP, collectOffHost, collectPageErrors, launchChromium, openPage, requireEnv, sleep, submitTask } from "./harness.mjs";

const [WEB_URL, GRPC_URL] = requireEnv("TASKWIRE_WEB_URL", "TASKWIRE_GRPC_URL");
const RETRY_TASK = "/taskwire.v1.TaskService/RetryTask";

// This run's own label: what the list and every bulk call here are filtered by.
const TAG = `dl-${Date.now().toString(36)}-${process.pid}`;
const LABEL = `dlq=${TAG}`;

let browser;
let page;
const pageErrors = [];
const offHost = [];
const retryCalls = []; // RetryTask requests the page made

const row = (id, p = page) => p.locator(`[data-testid="task-row"][data-task-id="${id}"]`);
const rowSel = (id, extra = "") => `[data-testid="task-row"][data-task-id="${id}"]${extra}`;

const submit = (kind, input, labels) => submitTask(page, kind, input, { labels });

/** GET /v1/tasks/{id}: { status, task } (task only with 200). */
async function restGet(id) {
  const res = await fetch(new URL(`/v1/tasks/${id}`, GRPC_URL), { signal: AbortSignal.timeout(STEP) });
  const body = await res.text();
  return { status: res.status, task: res.status === 200 ? JSON.parse(body) : undefined, body };
}

async function restPost(path, body) {
  const res = await fetch(new URL(path, GRPC_URL), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(STEP),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `POST ${path}: ${text}`);
  return JSON.parse(text);
}

/** Polls GET /v1/tasks/{id} (every 200 ms, at most STEP) until `ok(result)`. */
async function waitRest(id, ok, what) {
  const deadline = Date.now() + STEP;
  let last;
  for (;;) {
    last = await restGet(id);
    if (ok(last)) return last;
    if (Date.now() > deadline) assert.fail(`${id}: not ${what} within ${STEP / 1000}s; last: ${last.status} ${last.body}`);
    await sleep(200);
  }
}
const failedInRun = (run) => (r) => r.status === 200 && r.task.state === "TASK_STATE_FAILED" && r.task.run === run;

/** The (state, run) pairs a row went through, as the page showed them. */
const rowHistory = (id) => page.evaluate((taskId) => window.__rowStates[taskId] ?? [], id);

/** Sets the list's filters (kind, label) and waits for exactly `ids` to be listed. */
async function filterTo(p, { kind, label, ids }) {
  await p.fill('[data-testid="filter-kind"]', kind);
  await p.fill('[data-testid="filter-label"]', label);
  await p.click('[data-testid="filter-apply"]');
  await p.waitForFunction(
    (want) => {
      const got = [...document.querySelectorAll('[data-testid="task-row"]')].map((r) => r.dataset.taskId);
      return got.length === want.length && want.every((id) => got.includes(id));
    },
    ids,
    { timeout: STEP },
  );
}

/** Opens the confirmation of a bulk action (retry-all / discard-all); answers its count and text. */
async function openConfirm(p, button) {
  await p.click(`[data-testid="${button}"]`);
  const dialog = p.locator('[data-testid="confirm-dialog"]');
  await dialog.waitFor({ state: "visible", timeout: STEP });
  return {
    count: Number(await dialog.getAttribute("data-count")),
    action: await dialog.getAttribute("data-action"),
    message: await p.textContent('[data-testid="confirm-message"]'),
    ok: await p.textContent('[data-testid="confirm-ok"]'),
  };
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await launchChromium();
  page = await openPage(browser, { viewport: { width: 1500, height: 900 }, deviceScaleFactor: 1 });
  collectOffHost(page, offHost);
  collectPageErrors(page, { into: pageErrors });
  page.on("request", (req) => {
    if (new URL(req.url()).pathname === RETRY_TASK) retryCalls.push(req.url());
  });
  // Every (state, run) a row shows, in order, to see a retried row go through its new run.
  await page.addInitScript(() => {
    window.__rowStates = {};
    new MutationObserver((records) => {
      for (const r of records) {
        const tr = r.target;
        if (!(tr instanceof HTMLElement) || tr.dataset.testid !== "task-row") continue;
        const seen = (window.__rowStates[tr.dataset.taskId] ??= []);
        const now = `${tr.dataset.state}:${tr.dataset.run}`;
        if (seen.at(-1) !== now) seen.push(now);
      }
    }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state", "data-run"] });
  });
  await page.goto(WEB_URL, { waitUntil: "load", timeout: STEP });
  await page.waitForSelector('[data-testid="stream-status"][data-status="live"]', { timeout: STEP });
});

after(async () => {
  await page?.screenshot({ path: join(ARTIFACTS, "dead-letters-final.png"), fullPage: true }).catch(() => {});
  await browser?.close();
});

const ids = []; // the demo.fail tasks of this file, in submit order
const runs = new Map(); // id -> the run each is in, as this test made it

test("demo.fail tasks end FAILED, each with a Retry button; the dead-letter view lists them with checkboxes", async () => {
  for (let i = 0; i < 3; i++) ids.push(await submit("demo.fail", JSON.stringify({ n: i }), LABEL));
  for (const id of ids) {
    await page.waitForSelector(rowSel(id, '[data-state="FAILED"]'), { timeout: STEP });
    runs.set(id, 1);
    assert.match(await row(id).locator('[data-testid="task-message"]').textContent(), /^DEMO_FAILURE: /);
    assert.equal(await row(id).locator('[data-testid="retry-button"]').count(), 1, "a FAILED row has Retry");
    assert.equal(await row(id).locator('[data-testid="cancel-button"]').count(), 0);
    assert.equal(await row(id).locator('[data-testid="task-run"]').textContent(), "", "no run shown in run 1");
  }
  // Only FAILED rows have Retry: none of the others on the page.
  const others = await page.$$eval('[data-testid="task-row"]:not([data-state="FAILED"]) [data-testid="retry-button"]', (b) => b.length);
  assert.equal(others, 0);
  assert.ok(await page.isHidden('[data-testid="dead-letters-bar"]'), "no dead-letter bar outside that view");

  // The dead-letter view: the state filter at FAILED, the bar, checkboxes.
  await page.click('[data-testid="dead-letters-toggle"]');
  await page.waitForSelector('[data-testid="dead-letters-bar"]:not([hidden])');
  assert.equal(await page.getAttribute('[data-testid="dead-letters-toggle"]', "aria-pressed"), "true");
  assert.equal(await page.$eval('[data-testid="filter-state"]', (s) => s.selectedOptions[0].textContent), "failed");
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('[data-testid="task-row"]')];
    return rows.length > 0 && rows.every((r) => r.dataset.state === "FAILED");
  });
  await filterTo(page, { kind: "demo.fail", label: LABEL, ids });
  assert.equal(await page.textContent('[data-testid="dead-letters-scope"]'), `FAILED tasks of kind demo.fail with label ${LABEL}`);
  assert.ok(await row(ids[0]).locator('[data-testid="task-select"]').isVisible(), "rows have checkboxes here");
  assert.equal(await page.isDisabled('[data-testid="retry-selected"]'), true, "nothing selected yet");
  // The bulk buttons say how many match (a dry run), once it is read.
  await page.waitForSelector('[data-testid="retry-all"][data-count="3"]', { timeout: STEP });
  assert.equal(await page.textContent('[data-testid="retry-all"]'), "Retry all 3 matching…");
  assert.equal(await page.textContent('[data-testid="discard-all"]'), "Discard all 3 matching…");
});

test("Retry on a row: the task goes back to QUEUED/RUNNING in run 2, then FAILED again; the drawer shows run 2 and both attempts", async () => {
  const a = ids[0];
  // demo.fail fails within a millisecond of starting, so RetryTask's answer can already
  // be the new run's FAILED, and the stream's events of the run (older by seq) are then
  // skipped. Holding the answer back for a second makes the order the usual one: the
  // row moves through the run from the WatchTasks events, then the answer arrives.
  await page.route(`**${RETRY_TASK}`, async (route) => {
    const response = await route.fetch();
    await sleep(1000);
    await route.fulfill({ response });
  });
  const calls = retryCalls.length;
  try {
    await row(a).locator('[data-testid="retry-button"]').click();
    await page.waitForSelector(rowSel(a, '[data-state="FAILED"][data-run="2"]'), { timeout: STEP });
    // The answer, too, before the route goes.
    await page.waitForSelector('[data-testid="toast-ok"]:has-text("run 2")', { timeout: STEP });
  } finally {
    await page.unroute(`**${RETRY_TASK}`);
  }
  runs.set(a, 2);
  assert.equal(retryCalls.length, calls + 1, "one RetryTask");
  const seen = await rowHistory(a);
  const back = seen.findIndex((s) => /^(QUEUED|RUNNING):2$/.test(s));
  assert.ok(back >= 0, `the row went back to QUEUED or RUNNING in run 2: ${JSON.stringify(seen)}`);
  assert.equal(seen.at(-1), "FAILED:2", `and ended FAILED in run 2: ${JSON.stringify(seen)}`);
  assert.ok(!seen.slice(back).some((s) => s.endsWith(":1")), `never back to run 1: ${JSON.stringify(seen)}`);
  assert.equal(await row(a).locator('[data-testid="task-run"]').textContent(), "run 2");
  assert.match(await row(a).locator('[data-testid="task-message"]').textContent(), /^DEMO_FAILURE: /);
  const rec = await restGet(a);
  assert.equal(rec.task.run, 2, `GET /v1/tasks/${a}: ${rec.body}`);
  assert.equal(rec.task.state, "TASK_STATE_FAILED");

  // The drawer: run 2, and one attempt per run, oldest first.
  await row(a).locator('[data-testid="task-id"]').click();
  await page.waitForSelector('[data-testid="detail-state"]');
  assert.equal(await page.textContent('[data-testid="detail-state"]'), "FAILED");
  assert.equal(await page.textContent('[data-testid="detail-run"]'), "2");
  await page.waitForSelector('[data-testid="detail-attempts"][data-count="2"]', { timeout: STEP });
  const attempts = await page.$$eval('[data-testid="detail-attempts"] [data-testid="attempt"]', (lis) =>
    lis.map((li) => ({
      run: li.dataset.run,
      attempt: li.dataset.attempt,
      outcome: li.dataset.outcome,
      label: li.querySelector('[data-testid="attempt-label"]')?.textContent,
      start: li.querySelector('[data-testid="attempt-start"]')?.textContent,
      duration: li.querySelector('[data-testid="attempt-duration"]')?.textContent,
      error: li.querySelector('[data-testid="attempt-error"]')?.textContent,
      worker: li.querySelector('[data-testid="attempt-worker"]')?.textContent,
    })),
  );
  assert.deepEqual(
    attempts.map((x) => [x.run, x.attempt, x.outcome, x.label]),
    [
      ["1", "1", "FAILED", "run 1 · #1"],
      ["2", "1", "FAILED", "run 2 · #1"],
    ],
    JSON.stringify(attempts),
  );
  for (const x of attempts) {
    assert.equal(x.error, "DEMO_FAILURE: demo.fail always fails", JSON.stringify(x));
    assert.match(x.start, /^\d{1,2}:\d{2}:\d{2}$/, JSON.stringify(x));
    assert.match(x.duration, /^\d+ ms$|^\d+\.\d s$/, JSON.stringify(x));
    assert.match(x.worker, /^taskwire-worker@.+:\d+$/, JSON.stringify(x));
  }
  await page.locator('[data-testid="task-detail"]').screenshot({ path: join(ARTIFACTS, "dead-letters-detail.png") });
  await page.click('[data-testid="detail-close"]');
  await page.waitForSelector('[data-testid="task-detail"]', { state: "hidden" });
});

test("Retry in the drawer: it follows the new run (its events and attempts), then Retry selected retries the ticked rows", async () => {
  const b = ids[1];
  const c = ids[2];
  await row(b).locator('[data-testid="task-id"]').click();
  await page.waitForSelector('[data-testid="detail-state"]:has-text("FAILED")');
  await page.waitForSelector('[data-testid="detail-attempts"][data-count="1"]');
  assert.equal(await page.locator('[data-testid="detail-run"]').count(), 0, "no run shown in run 1");
  await page.waitForSelector('[data-testid="detail-stream"]:has-text("finished")');
  await page.click('[data-testid="detail-retry"]');
  // The drawer's stream had ended with FAILED; it watches again from there: the new
  // run's events, from the stored history, in order.
  await page.waitForSelector('[data-testid="detail-run"]:has-text("2")', { timeout: STEP });
  await page.waitForSelector('[data-testid="detail-attempts"][data-count="2"]', { timeout: STEP });
  await page.waitForSelector('[data-testid="detail-state"]:has-text("FAILED")', { timeout: STEP });
  await page.waitForFunction(
    () => {
      const states = [...document.querySelectorAll('[data-testid="detail-event"]')].reverse().map((li) => li.dataset.state);
      const i = states.indexOf("QUEUED");
      return i > 0 && states.indexOf("RUNNING", i) > i && states.indexOf("FAILED", i) > i;
    },
    undefined,
    { timeout: STEP },
  );
  const events = await page.$$eval('[data-testid="detail-event"]', (lis) => lis.reverse().map((li) => li.dataset.state));
  assert.deepEqual(events, ["FAILED", "QUEUED", "RUNNING", "FAILED"], "the snapshot, then run 2's events");
  runs.set(b, 2);
  await waitRest(b, failedInRun(2), "FAILED in run 2");
  await page.click('[data-testid="detail-close"]');

  // Tick two rows: B (run 2) and C (run 1).
  await page.waitForSelector(rowSel(b, '[data-state="FAILED"][data-run="2"]'));
  await row(b).locator('[data-testid="task-select"]').check();
  await row(c).locator('[data-testid="task-select"]').check();
  await page.waitForSelector('[data-testid="retry-selected"][data-count="2"]:not([disabled])');
  assert.equal(await page.textContent('[data-testid="retry-selected"]'), "Retry selected (2)");
  const calls = retryCalls.length;
  await page.click('[data-testid="retry-selected"]');
  await page.waitForSelector('[data-testid="dead-letters-result"]:not([hidden])');
  assert.equal(await page.getAttribute('[data-testid="dead-letters-result"]', "data-count"), "2");
  assert.equal(retryCalls.length, calls + 2, "one RetryTask per selected row");
  assert.ok(await page.isHidden('[data-testid="dead-letters-error"]'));
  runs.set(b, 3);
  runs.set(c, 2);
  for (const id of [b, c]) await waitRest(id, failedInRun(runs.get(id)), `FAILED in run ${runs.get(id)}`);
  // Both rows follow (and the selection was cleared as they left FAILED).
  await page.waitForSelector(rowSel(b, '[data-state="FAILED"][data-run="3"]'), { timeout: STEP });
  await page.waitForSelector(rowSel(c, '[data-state="FAILED"][data-run="2"]'), { timeout: STEP });
  assert.equal(await page.getAttribute('[data-testid="retry-selected"]', "data-count"), "0");
});

test("Retry all N matching: a dry run counts them, the page asks, then exactly those are retried", async () => {
  // Every one of them is FAILED in its latest run before the count.
  for (const id of ids) await waitRest(id, failedInRun(runs.get(id)), `FAILED in run ${runs.get(id)}`);

  // Asked, then cancelled: nothing happens.
  let asked = await openConfirm(page, "retry-all");
  assert.equal(asked.count, ids.length);
  await page.click('[data-testid="confirm-cancel"]');
  await page.waitForSelector('[data-testid="confirm-dialog"]', { state: "hidden" });
  await sleep(500);
  for (const id of ids) assert.equal((await restGet(id)).task.run, runs.get(id), "cancelled: not retried");

  asked = await openConfirm(page, "retry-all");
  // The dry run's count is the FAILED demo.fail tasks this test made, all of them.
  assert.equal(asked.action, "retry");
  assert.equal(asked.count, ids.length, `the dry run counted ${asked.count}`);
  assert.equal(asked.message, `Retry all ${ids.length} failed tasks of kind demo.fail with label ${LABEL}?`);
  assert.equal(asked.ok, `Retry ${ids.length}`);
  await page.click('[data-testid="confirm-ok"]');
  await page.waitForSelector('[data-testid="confirm-dialog"]', { state: "hidden", timeout: STEP });
  await page.waitForSelector('[data-testid="dead-letters-result"][data-action="retry"]:not([hidden])');
  assert.equal(await page.getAttribute('[data-testid="dead-letters-result"]', "data-count"), String(ids.length));
  assert.equal(await page.textContent('[data-testid="dead-letters-result"]'), `Retried ${ids.length} failed tasks of kind demo.fail with label ${LABEL}.`);
  assert.ok(await page.isHidden('[data-testid="dead-letters-error"]'));
  // Each one is in its next run (over REST), and fails again.
  for (const id of ids) {
    runs.set(id, runs.get(id) + 1);
    await waitRest(id, failedInRun(runs.get(id)), `FAILED in run ${runs.get(id)}`);
  }
  for (const id of ids) {
    await page.waitForSelector(rowSel(id, `[data-state="FAILED"][data-run="${runs.get(id)}"]`), { timeout: STEP });
  }
  await page.screenshot({ path: join(ARTIFACTS, "dead-letters.png"), fullPage: true });
});

test("Discard all N matching: asked with the count, then they are gone (REST 404)", async () => {
  const asked = await openConfirm(page, "discard-all");
  assert.equal(asked.action, "discard");
  assert.equal(asked.count, ids.length);
  assert.equal(asked.message, `Discard all ${ids.length} failed tasks of kind demo.fail with label ${LABEL}?`);
  await page.screenshot({ path: join(ARTIFACTS, "dead-letters-confirm.png") });
  await page.click('[data-testid="confirm-ok"]');
  await page.waitForSelector('[data-testid="confirm-dialog"]', { state: "hidden", timeout: STEP });
  await page.waitForSelector('[data-testid="dead-letters-result"][data-action="discard"]:not([hidden])');
  assert.equal(await page.getAttribute('[data-testid="dead-letters-result"]', "data-count"), String(ids.length));
  for (const id of ids) assert.equal((await restGet(id)).status, 404, `GET /v1/tasks/${id} after the discard`);
  await page.waitForSelector('[data-testid="empty"]', { timeout: STEP });
  assert.equal(await page.locator('[data-testid="task-row"]').count(), 0);
  await page.waitForSelector('[data-testid="retry-all"][data-count="0"]', { timeout: STEP });
});

test("a refused retry is shown: FAILED_PRECONDITION on a page that missed the task's new run", async () => {
  // A task that fails (DEADLINE_EXCEEDED, one attempt) and whose next run takes a while.
  const tag = `${TAG}-stale`;
  const { taskId: id } = await restPost("/v1/tasks", {
    kind: "demo.sleep",
    input: { seconds: 60, steps: 60 },
    timeout: "4s",
    maxAttempts: 1,
    labels: { dlq: tag },
  });
  await waitRest(id, failedInRun(1), "FAILED");

  // A second page whose WatchTasks never gets through: it lists, but hears of nothing.
  const context = await browser.newContext({ viewport: { width: 1300, height: 800 } });
  try {
    const p = await openPage(context);
    await p.route("**/taskwire.v1.WatchService/WatchTasks", (route) => route.abort());
    await p.goto(WEB_URL, { timeout: STEP });
    await p.click('[data-testid="dead-letters-toggle"]');
    await filterTo(p, { kind: "", label: `dlq=${tag}`, ids: [id] });
    await p.waitForSelector(rowSel(id, '[data-state="FAILED"]'));

    // Someone else retries it: run 2 runs (for 4 s). This page still shows it FAILED.
    const retried = await restPost(`/v1/tasks/${id}:retry`, {});
    assert.equal(retried.run, 2);
    assert.equal(await p.getAttribute(rowSel(id), "data-state"), "FAILED");
    await row(id, p).locator('[data-testid="retry-button"]').click();
    await p.waitForSelector('[data-testid="dead-letters-error"]:not([hidden])', { timeout: STEP });
    assert.match(await p.textContent('[data-testid="dead-letters-error"]'), /^Could not retry …[0-9a-f]{8} — FAILED_PRECONDITION: /);
    await p.waitForSelector('[data-testid="toast-error"]:has-text("FAILED_PRECONDITION")');
    // And the row is read again: run 2, no longer FAILED.
    await p.waitForSelector(rowSel(id, '[data-run="2"]:not([data-state="FAILED"])'), { timeout: STEP });
    assert.equal(await row(id, p).locator('[data-testid="retry-button"]').count(), 0);
    await p.screenshot({ path: join(ARTIFACTS, "dead-letters-refused.png") });

    // Once it failed again: discarded from that page, "of every kind" with its label.
    await waitRest(id, failedInRun(2), "FAILED in run 2");
    const asked = await openConfirm(p, "discard-all");
    assert.equal(asked.count, 1);
    assert.equal(asked.message, `Discard all 1 failed task of every kind with label dlq=${tag}?`);
    await p.click('[data-testid="confirm-ok"]');
    await p.waitForSelector('[data-testid="dead-letters-result"][data-action="discard"][data-count="1"]:not([hidden])', { timeout: STEP });
    assert.equal((await restGet(id)).status, 404);
  } finally {
    await context.close();
  }
});

test("no page errors, and all traffic stayed on 127.0.0.1", () => {
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(offHost, []);
});
