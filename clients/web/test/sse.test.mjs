// Server-Sent Events from the REST surface, followed by Chromium's own EventSource:
// GET /v1/tasks/{id}/events resumes where a dropped connection left off. test.sh starts
// `taskwire dev`, which serves REST on its gRPC address, and passes:
//   TASKWIRE_GRPC_URL  the dev address (gRPC, grpc-web and REST), e.g. http://127.0.0.1:50051
//   CHROMIUM           the browser binary (default /usr/bin/chromium)
//
// The page talks to the server through a TCP proxy started here, so the test can drop
// the stream mid-task the way a flaky network would, and see the headers of every
// request the browser makes (the reconnect's Last-Event-ID). The page is loaded from
// the proxy itself (its /openapi.json), so the stream is same-origin: no CORS involved.
// It submits a task: it must run after dashboard.test.mjs, whose paging test counts the
// server's tasks (node --test runs the files one at a time, in name order).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { STEP, collectPageErrors, launchChromium, openPage, requireEnv, sleep, startTcpProxy } from "./harness.mjs";

const [REST_URL] = requireEnv("TASKWIRE_GRPC_URL");
const TERMINAL = new Set(["TASK_STATE_SUCCEEDED", "TASK_STATE_FAILED", "TASK_STATE_CANCELLED"]);

let browser;
let proxy;

/** A REST call straight to the server (not through the proxy); the parsed JSON answer. */
async function rest(method, path, body) {
  const res = await fetch(new URL(path, REST_URL), {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(STEP),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `${method} ${path}: HTTP ${res.status} ${text}`);
  return JSON.parse(text);
}

/**
 * Reads a finite SSE stream to its end in node and returns its events as
 * { id, data (parsed) }. Fails on an `event: error` (the server's status).
 */
async function readEvents(path) {
  const res = await fetch(new URL(path, REST_URL), {
    headers: { accept: "text/event-stream" },
    signal: AbortSignal.timeout(STEP),
  });
  assert.equal(res.status, 200, `GET ${path}: HTTP ${res.status}`);
  assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
  const events = [];
  // The stream closes after the terminal event, so text() ends.
  for (const block of (await res.text()).split("\n\n")) {
    const fields = {};
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue; // comments: keep-alives
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      fields[name] = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    }
    if (fields.event === "error") assert.fail(`GET ${path} ended with an error: ${fields.data}`);
    if (fields.data !== undefined) events.push({ id: fields.id, data: JSON.parse(fields.data) });
  }
  return events;
}

before(async () => {
  // Reads the head of every request through it, for the reconnect's Last-Event-ID;
  // `drop()` cuts the stream while it goes on listening.
  proxy = await startTcpProxy(Number(new URL(REST_URL).port), { recordRequests: true });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await proxy?.close();
});

test("EventSource resumes a dropped task stream with Last-Event-ID, gap-free, and stops after the terminal event", async () => {
  const page = await openPage(browser);
  // Uncaught errors only: console errors were never part of this file's check.
  const pageErrors = collectPageErrors(page, { consoleErrors: false });
  // Playwright reports each EventSource request's answer: the last one should be 204.
  const streamStatuses = [];
  page.on("response", (res) => {
    if (/^\/v1\/tasks\/[^/]+\/events$/.test(new URL(res.url()).pathname)) streamStatuses.push(res.status());
  });
  const opened = await page.goto(`${proxy.url}/openapi.json`, { timeout: STEP });
  assert.equal(opened?.status(), 200, "the proxy's origin serves /openapi.json");

  // Submitted once the page is ready. Long enough
  // (40 progress events over 4 s) to drop the stream mid-task and still have events
  // to resume with.
  const submitted = await rest("POST", "/v1/tasks", { kind: "demo.sleep", input: { seconds: 4, steps: 40 } });
  const id = submitted.taskId;
  assert.match(id, /^[0-9a-f-]{36}$/, `SubmitTask answered ${JSON.stringify(submitted)}`);
  assert.equal(submitted.state, "TASK_STATE_QUEUED");
  // Followed from its first event: a stream opened before any event starts with a
  // snapshot of seq 0, which no resume can replay against (the check below compares
  // with the history after the first event's seq).
  for (const deadline = Date.now() + STEP; ; ) {
    const t = await rest("GET", `/v1/tasks/${id}`);
    if (t.lastSeq !== "0") break;
    assert.ok(Date.now() < deadline, `the task started within ${STEP} ms: ${JSON.stringify(t)}`);
    await sleep(20);
  }

  // Every event (its lastEventId and parsed data), and every open and error with the
  // number of events received by then and the readyState it left the EventSource in.
  // An `event: error` from the server also arrives as an "error", with data.
  await page.evaluate((path) => {
    const rec = { events: [], log: [] };
    const es = new EventSource(path);
    window.__sse = rec;
    window.__es = es;
    const note = (type, e) =>
      rec.log.push({ type, at: rec.events.length, readyState: es.readyState, data: e.data ?? null });
    es.addEventListener("open", (e) => note("open", e));
    es.addEventListener("error", (e) => note("error", e));
    es.addEventListener("message", (e) => rec.events.push({ lastEventId: e.lastEventId, data: JSON.parse(e.data) }));
  }, `/v1/tasks/${id}/events`);

  // A few events in, while the task still runs: drop every connection.
  await page.waitForFunction(() => window.__sse.events.length >= 5, null, { timeout: STEP });
  const beforeDrop = await page.evaluate(() => window.__sse.events.at(-1).data.state);
  assert.ok(!TERMINAL.has(beforeDrop), `the task was still running at the drop (${beforeDrop}); make it longer`);
  const requestsBeforeDrop = proxy.requests.length;
  proxy.drop();

  // The browser reconnects by itself (the server's `retry:` is 1 s), then follows the
  // task to its end; the reconnect after the terminal event is answered 204, which
  // closes the EventSource for good.
  await page.waitForFunction(() => window.__sse.log.filter((l) => l.type === "open").length >= 2, null, { timeout: STEP });
  await page.waitForFunction(() => window.__es.readyState === EventSource.CLOSED, null, { timeout: STEP });
  const { events, log } = await page.evaluate(() => window.__sse);
  const explain = `log ${JSON.stringify(log)}; requests ${JSON.stringify(proxy.requests.map((r) => [r.path, r.headers["last-event-id"]]))}`;

  // The connection the drop cut: its error is the first one, after the first open.
  assert.deepEqual(log.slice(0, 2).map((l) => l.type), ["open", "error"], explain);
  const drop = log[1];
  assert.equal(drop.readyState, 0, `after the drop it was reconnecting (CONNECTING): ${explain}`);
  assert.ok(drop.at >= 5 && drop.at < events.length, `events arrived both before and after the drop: ${explain}`);
  const lastBeforeDrop = events[drop.at - 1].lastEventId;
  assert.ok(log.every((l) => l.data === null), `no error event from the server: ${explain}`);
  assert.equal(log.filter((l) => l.type === "open").length, 2, `exactly one reconnect opened a stream: ${explain}`);
  assert.deepEqual(log.at(-1), { type: "error", at: events.length, readyState: 2, data: null }, `closed last, with nothing after: ${explain}`);

  // What the server was asked, as the proxy saw it: the first request without
  // Last-Event-ID; after the drop the same URL with the last id received; and once
  // more after the terminal event.
  const streamRequests = proxy.requests.filter((r) => r.path === `/v1/tasks/${id}/events`);
  assert.equal(streamRequests.length, 3, explain);
  assert.equal(streamRequests[0].headers["last-event-id"], undefined, explain);
  assert.ok(proxy.requests.indexOf(streamRequests[1]) >= requestsBeforeDrop, `the resume came after the drop: ${explain}`);
  assert.equal(streamRequests[1].headers["last-event-id"], lastBeforeDrop, explain);
  assert.equal(streamRequests[2].headers["last-event-id"], events.at(-1).lastEventId, explain);
  // Playwright's response events may trail the page's by a moment.
  for (const deadline = Date.now() + STEP; streamStatuses.length < 3 && Date.now() < deadline; ) {
    await sleep(50);
  }
  assert.deepEqual(streamStatuses, [200, 200, 204], `the answers to the three requests: ${explain}`);

  // Every event is this task's, its id is its seq, and seqs strictly increase: nothing
  // received twice across the reconnect.
  for (const e of events) {
    assert.equal(e.data.taskId, id);
    assert.equal(e.lastEventId, e.data.seq, "id: is the event's seq");
    assert.match(e.data.seq, /^[1-9][0-9]*$/);
  }
  const seqs = events.map((e) => BigInt(e.data.seq));
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `seq ${seqs[i]} after ${seqs[i - 1]} (event ${i}): ${explain}`);

  // Nothing skipped either: the first event is the snapshot (the state as of its seq),
  // and every stored event after it must have arrived, as the server's own history
  // (read to its end, straight from the server) has them. Seqs are not contiguous, so
  // only this comparison can show a gap.
  const history = await readEvents(`/v1/tasks/${id}/events?after_seq=${events[0].data.seq}`);
  assert.ok(history.length >= 5, `the history after the first event holds more events (${history.length})`);
  assert.deepEqual(
    events.map((e) => e.data.seq),
    [events[0].data.seq, ...history.map((e) => e.data.seq)],
    "the browser received exactly the task's history from its first event on",
  );
  assert.deepEqual(events.slice(1).map((e) => e.data), history.map((e) => e.data), "the same events, field for field");
  assert.deepEqual(history.map((e) => e.id), history.map((e) => e.data.seq));

  assert.equal(events.at(-1).data.state, "TASK_STATE_SUCCEEDED");
  assert.ok(events.slice(0, -1).every((e) => !TERMINAL.has(e.data.state)), "only the last event is terminal");
  assert.ok(events.some((e) => e.data.progress && e.data.progress.fraction > 0 && e.data.progress.fraction < 1), "progress in between");
  assert.equal((await rest("GET", `/v1/tasks/${id}`)).state, "TASK_STATE_SUCCEEDED");

  // Resuming at the terminal event is 204 No Content: what stopped the EventSource.
  const resumed = await fetch(new URL(`/v1/tasks/${id}/events`, REST_URL), {
    headers: { accept: "text/event-stream", "last-event-id": events.at(-1).lastEventId },
    signal: AbortSignal.timeout(STEP),
  });
  assert.equal(resumed.status, 204);
  assert.deepEqual(pageErrors, []);
  await page.close();
});
