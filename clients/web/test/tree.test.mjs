// The task tree in the detail drawer: a task graph (demo.agent with tools, demo.fanout)
// opened from the page shows the parent and every child nested under it, each with a
// live bar, all from one WatchTask stream with tree = true, resumed with after_seq
// after a dropped connection. test.sh passes the addresses:
//   TASKWIRE_WEB_URL, TASKWIRE_GRPC_URL (see dashboard.test.mjs)
import assert from "node:assert/strict";
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
const WATCH_TASK = "/taskwire.v1.WatchService/WatchTask";

let browser;
let page;
const pageErrors = [];
const offHost = [];

/**
 * Every value a tree node's bar (its width, in %) and state took, by task id, kept in
 * the page as window.__tree: what proves the bars moved live. Also counts, by task id,
 * how many times a tree row was added to or removed from the page (a re-render would
 * add it again).
 */
function recordTree() {
  window.__tree = { widths: {}, states: {}, rowStates: {}, added: {}, removed: {} };
  // A row comes alone, or inside another added element (its parent's row, the tree).
  const count = (n, into) => {
    if (!(n instanceof Element)) return;
    const rows = [...n.querySelectorAll('[data-testid="tree-node"]')];
    if (n.matches('[data-testid="tree-node"]')) rows.push(n);
    for (const row of rows) into[row.dataset.taskId] = (into[row.dataset.taskId] ?? 0) + 1;
  };
  new MutationObserver((records) => {
    const t = window.__tree;
    for (const r of records) {
      if (r.type === "childList") {
        for (const n of r.addedNodes) count(n, t.added);
        for (const n of r.removedNodes) count(n, t.removed);
        continue;
      }
      const el = r.target;
      if (!(el instanceof HTMLElement)) continue;
      if (el.dataset.testid === "task-row" && r.attributeName === "data-state") {
        (t.rowStates[el.dataset.taskId] ??= []).push(el.dataset.state);
        continue;
      }
      const node = el.closest('[data-testid="tree-node"]');
      if (!node) continue;
      const id = node.dataset.taskId;
      if (el === node && r.attributeName === "data-state") (t.states[id] ??= []).push(el.dataset.state);
      if (el.classList.contains("bar") && r.attributeName === "style" && el.closest('[data-testid="tree-node"]') === node) {
        (t.widths[id] ??= []).push(parseFloat(el.style.width));
      }
    }
  }).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ["style", "data-state"] });
}

/** A WatchTask request's body (one grpc-web frame): task_id, after_seq, tree. */
function decodeWatchTask(buf) {
  const msg = buf.subarray(5, 5 + buf.readUInt32BE(1));
  const out = { taskId: "", afterSeq: 0n, tree: false };
  let i = 0;
  const varint = () => {
    let v = 0n;
    for (let shift = 0n; ; shift += 7n) {
      const b = msg[i++];
      v |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return v;
    }
  };
  while (i < msg.length) {
    const key = Number(varint());
    if (key === 0x0a) {
      const len = Number(varint());
      out.taskId = msg.subarray(i, i + len).toString();
      i += len;
    } else if (key === 0x10) out.afterSeq = varint();
    else if (key === 0x18) out.tree = varint() === 1n;
    else throw new Error(`unexpected field key ${key} in a WatchTaskRequest`);
  }
  return out;
}

/** Records every WatchTask request of a page (decoded), and those still open. */
function recordWatchTask(p) {
  const rec = { requests: [], open: new Set() };
  p.on("request", (req) => {
    if (new URL(req.url()).pathname !== WATCH_TASK) return;
    rec.requests.push(decodeWatchTask(req.postDataBuffer()));
    rec.open.add(req);
  });
  p.on("requestfinished", (req) => rec.open.delete(req));
  p.on("requestfailed", (req) => rec.open.delete(req));
  return rec;
}

/** The tree as the drawer shows it: each node with its parent (by DOM nesting), kind,
 * state, bar and the children count it shows. */
const readTree = (p) =>
  p.$$eval('[data-testid="detail-tree"] [data-testid="tree-node"]', (lis) =>
    lis.map((li) => ({
      id: li.dataset.taskId,
      parent: li.parentElement.closest('[data-testid="tree-node"]')?.dataset.taskId ?? "",
      dataParent: li.dataset.parentId,
      kind: li.querySelector(':scope > .tree-row [data-testid="tree-node-kind"]').textContent,
      state: li.dataset.state,
      badge: li.querySelector(':scope > .tree-row [data-testid="tree-node-state"]').textContent,
      width: li.querySelector(':scope > .tree-row .bar').style.width,
      pct: li.querySelector(':scope > .tree-row [data-testid="tree-node-pct"]').textContent,
      count: li.querySelector(':scope > .tree-row [data-testid="tree-node-children"]').textContent,
    })),
  );

/** Submits from the form and opens the new task's drawer at once (its link in the answer). */
async function submitAndOpen(p, kind, input) {
  const id = await submitTask(p, kind, input);
  await p.click('[data-testid="submit-result-id"]');
  await p.waitForSelector('[data-testid="task-detail"]:not([hidden])');
  return id;
}

/** Waits until the drawer's tree shows `n` nodes, the root SUCCEEDED, every node terminal. */
async function waitTreeDone(p, rootId, n, timeout = STEP) {
  await p.waitForFunction(
    ({ rootId, n }) => {
      const lis = [...document.querySelectorAll('[data-testid="detail-tree"] [data-testid="tree-node"]')];
      const root = lis.find((li) => li.dataset.taskId === rootId);
      return lis.length === n && root?.dataset.state === "SUCCEEDED" && lis.every((li) => li.dataset.state === "SUCCEEDED");
    },
    { rootId, n },
    { timeout },
  );
}

before(async () => {
  browser = await launchChromium();
  page = await openPage(browser, { viewport: { width: 1500, height: 900 }, deviceScaleFactor: 1 });
  collectOffHost(page, offHost);
  collectPageErrors(page, { into: pageErrors });
  await page.addInitScript(recordTree);
  await page.goto(WEB_URL, { waitUntil: "load", timeout: STEP });
  await page.waitForSelector('[data-testid="stream-status"][data-status="live"]', { timeout: STEP });
});

after(async () => {
  await page?.screenshot({ path: join(ARTIFACTS, "tree-final.png"), fullPage: true }).catch(() => {});
  await browser?.close();
});

test("WAITING is a state the list can be filtered by; the demo graph is one click away", async () => {
  const states = await page.$$eval('[data-testid="filter-state"] option', (os) => os.map((o) => o.textContent));
  assert.ok(states.includes("waiting"), `state filter options: ${states}`);
  assert.ok(states.indexOf("waiting") > states.indexOf("running"), "in the order a task goes through them");
  await page.click('[data-testid="preset-demo.agent.tools"]');
  assert.equal(await page.inputValue('[data-testid="submit-kind"]'), "demo.agent");
  assert.ok(JSON.parse(await page.inputValue('[data-testid="submit-input"]')).tools > 0, "the preset starts tools (children)");
  await page.click('[data-testid="preset-demo.fanout"]');
  assert.equal(await page.inputValue('[data-testid="submit-kind"]'), "demo.fanout");
});

test("demo.agent with 3 tools: the drawer's tree nests every child under the parent, each bar moves live, the parent SUCCEEDS", async () => {
  const watch = recordWatchTask(page);
  const input = { prompt: "plan a trip", tools: 3, tokens: 25, delay_ms: 100 };
  const rootId = await submitAndOpen(page, "demo.agent", JSON.stringify(input));
  await page.waitForSelector('[data-testid="detail-tree"]:not([hidden])', { timeout: STEP });
  // The children appear while they run, each under the parent.
  await page.waitForFunction(
    () => document.querySelectorAll('[data-testid="detail-tree"] [data-testid="tree-node"]').length === 4,
    null,
    { timeout: STEP },
  );
  await page.locator('[data-testid="task-detail"]').screenshot({ path: join(ARTIFACTS, "tree-running.png") });
  await waitTreeDone(page, rootId, 4);

  const tree = await readTree(page);
  const root = tree.find((n) => n.id === rootId);
  const children = tree.filter((n) => n.id !== rootId);
  assert.ok(root, `the root is in the tree: ${JSON.stringify(tree)}`);
  assert.equal(root.parent, "", "the root is the top node");
  assert.equal(root.kind, "demo.agent");
  assert.equal(root.badge, "SUCCEEDED");
  assert.equal(root.width, "100%");
  assert.equal(root.count, "3/3", "the root counts its finished children");
  assert.equal(children.length, 3, `three children: ${JSON.stringify(tree)}`);
  for (const c of children) {
    assert.equal(c.parent, rootId, `nested in the parent's list: ${JSON.stringify(c)}`);
    assert.equal(c.dataParent, rootId);
    assert.equal(c.kind, "demo.agent");
    assert.equal(c.state, "SUCCEEDED");
    assert.equal(c.width, "100%");
    assert.equal(c.pct, "100%");
    assert.equal(c.count, "", "a leaf counts no children");
  }

  // Every child's bar moved live: seen strictly between 0 and 100%, never going
  // back, and ending at 100%. (The parent's is its tree's, which starts where its own
  // step ended: demo.agent's plan ends at 100% of its step, so its bar is full before
  // its children run. The fan-out test below sees a parent's bar move.)
  const seen = await page.evaluate(() => window.__tree);
  for (const c of children) {
    const widths = seen.widths[c.id] ?? [];
    assert.ok(widths.some((w) => w > 0 && w < 100), `${c.id}'s bar moved through the middle: ${JSON.stringify(widths)}`);
    assert.equal(widths.at(-1), 100, `${c.id}'s bar ends full: ${JSON.stringify(widths)}`);
    for (let i = 1; i < widths.length; i++) assert.ok(widths[i] >= widths[i - 1], `${c.id}'s bar never went back: ${JSON.stringify(widths)}`);
  }
  assert.equal(seen.widths[rootId]?.at(-1), 100, `the parent's bar ends full: ${JSON.stringify(seen.widths[rootId])}`);
  // The parent waited for its children: WAITING in the tree and in its row of the list.
  assert.ok(seen.states[rootId]?.includes("WAITING"), `the tree's root was WAITING: ${JSON.stringify(seen.states[rootId])}`);
  assert.ok(seen.rowStates[rootId]?.includes("WAITING"), `the list's row was WAITING: ${JSON.stringify(seen.rowStates[rootId])}`);
  for (const n of tree) {
    assert.equal(seen.added[n.id], 1, `${n.id}'s row was added once (no re-render)`);
    assert.equal(seen.removed[n.id], undefined, `${n.id}'s row was never removed`);
  }

  // The drawer's summary: the final record, its children counted.
  await page.waitForSelector('[data-testid="detail-state"]:has-text("SUCCEEDED")');
  assert.equal(await page.textContent('[data-testid="detail-children"]'), "3: 3 succeeded");
  assert.match(await page.textContent('[data-testid="detail-progress"]'), /^100% /);
  await page.waitForSelector('[data-testid="detail-stream"]:has-text("finished")');

  // The tree's stream is a WatchTask with tree = true from seq 0 (after a watch of the
  // task alone, when it was not waiting yet at the open, which it replaced); it ended
  // with the parent's terminal event.
  for (let i = 0; i < 50 && watch.open.size > 0; i++) await sleep(100);
  assert.equal(watch.open.size, 0, "no WatchTask left open");
  const mine = watch.requests.filter((r) => r.taskId === rootId);
  assert.ok(mine.length >= 1 && mine.length <= 2, `WatchTask requests: ${JSON.stringify(mine, (_, v) => (typeof v === "bigint" ? String(v) : v))}`);
  const treeReq = mine.at(-1);
  assert.equal(treeReq.tree, true);
  assert.equal(treeReq.afterSeq, 0n, "the tree starts from its first event");

  // The list shows the parent's children count; a child's row names its parent.
  const row = page.locator(`[data-testid="task-row"][data-task-id="${rootId}"]`);
  const family = () => row.locator('[data-testid="task-family"]').textContent();
  for (let i = 0; i < STEP / 200 && (await family()) !== "3 children"; i++) await sleep(200);
  assert.equal(await family(), "3 children", `the parent's row, state ${await row.getAttribute("data-state")}`);
  assert.equal(await row.getAttribute("data-children"), "3");
  const childRow = page.locator(`[data-testid="task-row"][data-task-id="${children[0].id}"]`);
  if (await childRow.count()) assert.match(await childRow.locator('[data-testid="task-family"]').textContent(), /^child of …/);

  // A child's id opens its own drawer, which links back to the parent.
  await page.click(`[data-testid="tree-node"][data-task-id="${children[0].id}"] > .tree-row [data-testid="tree-node-id"]`);
  await page.waitForSelector('[data-testid="detail-parent"]');
  assert.ok(await page.isHidden('[data-testid="detail-tree"]'), "a leaf has no tree");
  await page.click('[data-testid="detail-parent"]');
  await page.waitForSelector(`[data-testid="detail-tree"] [data-testid="tree-node"][data-task-id="${rootId}"]`);
  // A finished tree, opened again, is drawn whole from its history.
  await waitTreeDone(page, rootId, 4);
  await page.click('[data-testid="detail-close"]');
});

test("demo.fanout with 1,000 children: all shown under the parent, rows added once each, the parent SUCCEEDS", async () => {
  const input = { children: 1000, child_kind: "demo.echo", fan_in_seconds: 0.5 };
  const rootId = await submitAndOpen(page, "demo.fanout", JSON.stringify(input));
  await page.waitForSelector('[data-testid="detail-tree"]:not([hidden])', { timeout: STEP });
  await waitTreeDone(page, rootId, 1001, 4 * STEP);
  const tree = await readTree(page);
  const children = tree.filter((n) => n.id !== rootId);
  assert.equal(new Set(children.map((c) => c.id)).size, 1000, "1,000 distinct children");
  assert.ok(children.every((c) => c.parent === rootId && c.state === "SUCCEEDED" && c.width === "100%"), "each under the parent, done");
  assert.deepEqual(children.map((c) => c.id), children.map((c) => c.id).sort(), "children in id (creation) order");
  const root = tree.find((n) => n.id === rootId);
  assert.equal(root.count, "1000/1000");
  assert.equal(root.width, "100%");
  const seen = await page.evaluate(() => window.__tree);
  // The parent's bar is its tree's: it moved with its children's, then its fan-in's.
  const rootWidths = seen.widths[rootId] ?? [];
  assert.ok(rootWidths.some((w) => w > 0 && w < 100), `the parent's bar moved through the middle: ${JSON.stringify(rootWidths)}`);
  assert.equal(rootWidths.at(-1), 100);
  for (let i = 1; i < rootWidths.length; i++) assert.ok(rootWidths[i] >= rootWidths[i - 1], `the parent's bar never went back: ${JSON.stringify(rootWidths)}`);
  assert.deepEqual(tree.filter((n) => seen.added[n.id] !== 1).map((n) => [n.id, seen.added[n.id]]), [], "each of the 1,001 rows was added to the page once");
  assert.deepEqual(tree.filter((n) => seen.removed[n.id] !== undefined).map((n) => n.id), [], "none was removed");
  await page.locator('[data-testid="task-detail"]').screenshot({ path: join(ARTIFACTS, "tree-fanout.png") });
  await page.click('[data-testid="detail-close"]');
});

test("a dropped tree stream resumes with after_seq = the last seq received, and the tree ends complete", async () => {
  const proxy = await startTcpProxy(Number(new URL(GRPC_URL).port));
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  try {
    const p = await openPage(context);
    // Its console shows the dropped streams' network errors: only uncaught errors count.
    collectPageErrors(p, { into: pageErrors, consoleErrors: false });
    await p.addInitScript(recordTree);
    const watch = recordWatchTask(p);
    await p.route(/\/config\.js$/, (route) =>
      route.fulfill({ contentType: "text/javascript", body: `window.TASKWIRE_GRPC_URL = ${JSON.stringify(proxy.url)};` }),
    );
    await p.goto(WEB_URL, { timeout: STEP });
    await p.waitForSelector('[data-testid="stream-status"][data-status="live"]');

    const input = { prompt: "resume", tools: 3, tokens: 40, delay_ms: 100 };
    const rootId = await submitAndOpen(p, "demo.agent", JSON.stringify(input));
    // Mid-run: the children are running, the tree stream is open.
    await p.waitForFunction(
      () => {
        const lis = [...document.querySelectorAll('[data-testid="detail-tree"] [data-testid="tree-node"]')];
        return lis.length === 4 && lis.some((li) => Number(li.querySelector(".progress")?.dataset.fraction) > 0.2 && li.dataset.state === "RUNNING");
      },
      null,
      { timeout: STEP },
    );
    const treeWatches = () => watch.requests.filter((r) => r.taskId === rootId && r.tree);
    const before = treeWatches().length;
    proxy.drop();
    for (let i = 0; i < STEP / 100 && treeWatches().length === before; i++) await sleep(100);
    await waitTreeDone(p, rootId, 4);
    const resumed = treeWatches().slice(before);
    assert.ok(resumed.length >= 1, "the tree was watched again");
    assert.ok(resumed[0].afterSeq > 0n, `resumed after a seq, not from the start: ${resumed[0].afterSeq}`);
    const tree = await readTree(p);
    assert.equal(tree.length, 4, `no node twice: ${JSON.stringify(tree)}`);
    assert.ok(tree.filter((n) => n.id !== rootId).every((n) => n.parent === rootId));
    const seen = await p.evaluate(() => window.__tree);
    for (const n of tree) assert.equal(seen.added[n.id], 1, `${n.id}'s row was added once, across the reconnect`);
  } finally {
    await context.close();
    await proxy.close();
  }
});

test("no page errors, and all traffic stayed on 127.0.0.1", () => {
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(offHost, []);
});
