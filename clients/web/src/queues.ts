// The Queues view: per kind, tasks waiting and running, how long the oldest has
// waited, what finished in the window, and a bar per minute of throughput, from
// TaskService/GetQueueStats. Polled every few seconds while the page is visible (one
// unary call at a time; it never holds a connection), and sooner after something
// finished (see nudgeQueues). GetQueueStats spans every tenant, so a server with
// `--auth keys` answers it to admin keys only: with another key the card says so, and
// asks again only now and then (or at once when the key changes).
import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Api } from "./api";
import { authProblem } from "./auth";
import { $, h, svg } from "./dom";
import { describeError, formatClock, formatDuration, tsMillis } from "./format";
import type { GetQueueStatsResponse, KindStats } from "./gen/taskwire/v1/service_pb";

const REFRESH_MS = 3_000;
/** How often to ask again while the key may not read the stats. */
const REFUSED_REFRESH_MS = 30_000;
const NUDGE_MS = 600;
const TIMEOUT_MS = 10_000;

/** Chart geometry, in viewBox units: one bar per minute, stretched to the tile's width. */
const BAR = 4;
const GAP = 1.5;
const CHART_H = 28;

interface Tile {
  li: HTMLLIElement;
  finished: HTMLElement;
  chartSlot: HTMLElement;
  /** The values the chart was drawn from, so an unchanged chart is not redrawn. */
  chartKey: string;
  waiting: HTMLElement;
  running: HTMLElement;
  oldest: HTMLElement;
  succeeded: HTMLElement;
  failed: HTMLElement;
}

let api: Api;
let timer: number | undefined;
/** When the pending timer fires (Date.now() clock). */
let dueAt = 0;
let inFlight = false;
/** Asked to read while a read was in flight: read again right after it. */
let again = false;
let windowMinutes = 15;
/** Bumped by restartQueues: an answer to a read made before it is dropped. */
let generation = 0;
let refused = false;
const tiles = new Map<string, Tile>();

const card = $('[data-testid="queues"]');
const list = $<HTMLUListElement>('[data-testid="queue-list"]', card);
const errorBox = $('[data-testid="queues-error"]', card);
const updated = $('[data-testid="queues-updated"]', card);
const windowSelect = $<HTMLSelectElement>('[data-testid="queues-window"]', card);

/** Starts polling GetQueueStats. */
export function startQueues(client: Api): void {
  api = client;
  windowMinutes = Number(windowSelect.value) || 15;
  windowSelect.addEventListener("change", () => {
    windowMinutes = Number(windowSelect.value) || 15;
    schedule(0);
  });
  // A hidden tab does not poll; it reads at once when shown again.
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) schedule(0);
  });
  schedule(0);
}

/** Reads again soon (e.g. a task just finished) instead of at the next tick. */
export function nudgeQueues(): void {
  if (api && !refused) schedule(NUDGE_MS);
}

/** Forgets what was shown and reads at once (the API key changed). */
export function restartQueues(): void {
  if (!api) return;
  generation++;
  refused = false;
  tiles.clear();
  list.replaceChildren();
  errorBox.hidden = true;
  updated.textContent = "";
  schedule(0);
}

/** Reads in `delayMs`, unless a read is already due sooner (so bursts of nudges never
 * postpone it). */
function schedule(delayMs: number): void {
  const at = Date.now() + delayMs;
  if (timer !== undefined) {
    if (dueAt <= at) return;
    window.clearTimeout(timer);
  }
  dueAt = at;
  timer = window.setTimeout(() => {
    timer = undefined;
    void refresh();
  }, delayMs);
}

async function refresh(): Promise<void> {
  if (document.hidden) return; // visibilitychange resumes
  if (inFlight) {
    again = true;
    return;
  }
  inFlight = true;
  again = false;
  const asked = generation;
  try {
    const res = await api.tasks.getQueueStats({ windowMinutes }, { timeoutMs: TIMEOUT_MS });
    if (asked !== generation) return;
    refused = false;
    render(res);
    errorBox.hidden = true;
  } catch (err) {
    if (asked !== generation) return;
    showError(err);
  } finally {
    inFlight = false;
    schedule(again || asked !== generation ? 0 : refused ? REFUSED_REFRESH_MS : REFRESH_MS);
  }
}

function showError(err: unknown): void {
  const auth = authProblem(err, "GetQueueStats");
  refused = auth !== undefined;
  errorBox.dataset.kind = auth?.kind ?? "";
  errorBox.classList.toggle("warn", auth !== undefined);
  errorBox.classList.toggle("error", auth === undefined);
  if (auth) {
    // Stats from before (another key's) are not this key's to see.
    tiles.clear();
    list.replaceChildren();
    updated.textContent = "";
    const ce = ConnectError.from(err);
    errorBox.textContent =
      ce.code === Code.PermissionDenied
        ? `Queue statistics need an admin key: they span every tenant, and this key may not read them.`
        : `Queue statistics need an admin key. ${auth.text}`;
  } else {
    const { code, message } = describeError(err);
    errorBox.textContent = `Could not read queue stats — ${code}: ${message}`;
  }
  errorBox.hidden = false;
}

function render(res: GetQueueStatsResponse): void {
  const now = tsMillis(res.time) ?? Date.now();
  card.dataset.windowMinutes = String(res.windowMinutes);
  const seen = new Set<string>();
  for (const k of res.kinds) {
    seen.add(k.kind);
    let tile = tiles.get(k.kind);
    if (!tile) {
      tile = newTile(k.kind);
      tiles.set(k.kind, tile);
    }
    renderTile(tile, k, res.windowMinutes, now);
  }
  for (const kind of tiles.keys()) if (!seen.has(kind)) tiles.delete(kind);
  // In the answer's order (by kind). Tiles are updated in place and the list is only
  // rebuilt when its kinds change, so a bar's tooltip survives a refresh.
  const want = res.kinds.map((k) => tiles.get(k.kind)!.li);
  const have = [...list.children];
  if (want.length === 0) {
    if (!list.querySelector('[data-testid="queues-empty"]')) {
      list.replaceChildren(h("li", { class: "queues-empty muted", "data-testid": "queues-empty" }, "No kinds yet: none has a worker or finished tasks."));
    }
  } else if (want.length !== have.length || want.some((li, i) => have[i] !== li)) {
    list.replaceChildren(...want);
  }
  updated.textContent = `last ${res.windowMinutes} min · updated ${formatClock(now)}`;
}

function stat(label: string, testid: string, cls = ""): [HTMLElement, HTMLElement] {
  const value = h("dd", { class: cls, "data-testid": testid });
  return [h("div", {}, h("dt", {}, label), value), value];
}

function newTile(kind: string): Tile {
  const [waitingBox, waiting] = stat("waiting", "queue-waiting");
  const [runningBox, running] = stat("running", "queue-running");
  const [oldestBox, oldest] = stat("oldest", "queue-oldest");
  const [succeededBox, succeeded] = stat("succeeded", "queue-succeeded", "good");
  const [failedBox, failed] = stat("failed", "queue-failed", "bad");
  const finished = h("span", { class: "muted small", "data-testid": "queue-finished" });
  const chartSlot = h("div", { class: "queue-chart" });
  const li = h(
    "li",
    { class: "queue", "data-testid": "queue-kind", "data-kind": kind },
    h("div", { class: "queue-head" }, h("span", { class: "mono kind", title: kind }, kind), finished),
    chartSlot,
    h("dl", { class: "queue-stats" }, waitingBox, runningBox, oldestBox, succeededBox, failedBox),
  );
  return { li, finished, chartSlot, chartKey: "", waiting, running, oldest, succeeded, failed };
}

function renderTile(t: Tile, k: KindStats, minutes: number, now: number): void {
  const oldestMs = k.oldestWaiting ? durationMs(k.oldestWaiting) : undefined;
  const d = t.li.dataset;
  d.waiting = String(k.waiting);
  d.running = String(k.running);
  d.maxRunning = String(k.maxRunning);
  d.succeeded = String(k.succeeded);
  d.failed = String(k.failed);
  d.oldestMs = oldestMs === undefined ? "" : String(Math.round(oldestMs));
  t.li.classList.toggle("backlog", k.waiting > 0n);
  t.waiting.textContent = String(k.waiting);
  // A kind limited to N at once across workers (--max-running) shows "running/N".
  t.running.textContent = k.maxRunning > 0n ? `${k.running}/${k.maxRunning}` : String(k.running);
  t.oldest.textContent = oldestMs === undefined ? "—" : formatDuration(oldestMs);
  t.succeeded.textContent = String(k.succeeded);
  t.failed.textContent = String(k.failed);
  t.failed.classList.toggle("zero", k.failed === 0n);

  const total = k.finishedPerMinute.reduce((a, b) => a + b, 0n);
  t.finished.textContent = `${total} finished`;
  // Redrawn when the values change, and when the minute rolls over (the labels move).
  const key = `${Math.floor(now / 60_000)}:${k.finishedPerMinute.join(",")}`;
  if (key !== t.chartKey) {
    t.chartKey = key;
    t.chartSlot.replaceChildren(chart(k.kind, k.finishedPerMinute, minutes, now));
  }
}

/** Bars of tasks finished per minute, oldest first; the last is the current minute. */
function chart(kind: string, perMinute: bigint[], minutes: number, now: number): SVGSVGElement {
  const values = perMinute.map(Number);
  const n = Math.max(values.length, 1);
  const max = Math.max(0, ...values);
  const total = values.reduce((a, b) => a + b, 0);
  const width = n * (BAR + GAP) - GAP;
  const el = svg("svg", {
    class: "spark",
    viewBox: `0 0 ${width} ${CHART_H}`,
    preserveAspectRatio: "none",
    role: "img",
    "aria-label": `${kind}: ${total} finished in the last ${minutes} min, at most ${max} a minute`,
    "data-testid": "queue-chart",
    "data-total": total,
    "data-max": max,
  });
  const minuteStart = Math.floor(now / 60_000) * 60_000;
  values.forEach((v, i) => {
    const at = minuteStart - (values.length - 1 - i) * 60_000;
    const label = new Date(at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    const height = v === 0 ? 1 : Math.max(2, Math.round((v / max) * (CHART_H - 1)));
    const current = i === values.length - 1;
    el.appendChild(
      svg(
        "rect",
        {
          class: `${v === 0 ? "zero" : "bar"}${current ? " now" : ""}`,
          x: i * (BAR + GAP),
          y: CHART_H - height,
          width: BAR,
          height,
          rx: v === 0 ? 0 : 0.8,
          "data-testid": "queue-bar",
          "data-value": v,
        },
        svg("title", {}, `${label}${current ? " (so far)" : ""}: ${v} finished`),
      ),
    );
  });
  return el;
}
