// The REST API page (api.html): it lists every route of the server's /openapi.json,
// with its method, path and summary, and the dashboard links to it. test.sh passes:
//   TASKWIRE_WEB_URL   the dashboard, e.g. http://127.0.0.1:50080/
//   TASKWIRE_GRPC_URL  the dev address, which serves REST and /openapi.json too
//   CHROMIUM           the browser binary (default /usr/bin/chromium)
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { STEP, collectPageErrors, launchChromium, openPage, requireEnv } from "./harness.mjs";

const [WEB_URL, REST_URL] = requireEnv("TASKWIRE_WEB_URL", "TASKWIRE_GRPC_URL");

let browser;

before(async () => {
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
});

test("api.html lists every route of /openapi.json; the dashboard links to it", async () => {
  // What the page must show: the server's own document, read here in node.
  const res = await fetch(new URL("/openapi.json", REST_URL), { signal: AbortSignal.timeout(STEP) });
  assert.equal(res.status, 200);
  const doc = await res.json();
  const expected = Object.entries(doc.paths).flatMap(([path, ops]) =>
    Object.entries(ops).map(([method, op]) => ({ method: method.toUpperCase(), path, summary: op.summary ?? op.operationId })),
  );
  assert.ok(expected.length >= 7, `the document has the routes (${expected.length})`);

  const page = await openPage(browser);
  const pageErrors = collectPageErrors(page);

  await page.goto(WEB_URL, { timeout: STEP });
  await page.click('[data-testid="api-link"]');
  await page.waitForURL(/\/api\.html$/);
  await page.waitForSelector('[data-testid="route"]');
  assert.equal(await page.isVisible('[data-testid="api-error"]'), false);
  assert.match(await page.textContent('[data-testid="api-title"]'), /^taskwire /);
  assert.equal(await page.getAttribute('[data-testid="openapi-link"]', "href"), `${REST_URL}/openapi.json`);

  const shown = await page.$$eval('[data-testid="route"]', (rows) =>
    rows.map((r) => ({
      method: r.dataset.method,
      path: r.dataset.path,
      summary: r.querySelector('[data-testid="route-summary"]').textContent,
    })),
  );
  const key = (r) => `${r.method} ${r.path}`;
  assert.deepEqual(shown.map(key).sort(), expected.map(key).sort(), "one row per route, no more");
  for (const r of expected) assert.equal(shown.find((s) => key(s) === key(r)).summary, r.summary, key(r));
  // A few routes by name, so an empty or different document cannot pass.
  for (const k of ["POST /v1/tasks", "GET /v1/tasks/{task_id}", "GET /v1/tasks/{task_id}/events", "GET /v1/events"]) {
    assert.ok(shown.some((s) => key(s) === k), `${k} is listed`);
  }
  // The streams are marked as Server-Sent Events.
  const events = page.locator('[data-testid="route"][data-path="/v1/tasks/{task_id}/events"]');
  assert.equal(await events.locator(".sse").count(), 1);
  assert.equal(await page.locator('[data-testid="route"][data-path="/v1/tasks"][data-method="POST"] .sse').count(), 0);

  assert.deepEqual(pageErrors, []);
  await page.close();
});
