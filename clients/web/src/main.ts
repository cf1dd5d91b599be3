// The taskwire dashboard: lists tasks (ListTasks), submits and cancels them, and keeps
// every visible row live from ONE WatchTasks stream (browsers allow only ~6 HTTP/1.1
// connections per host, so one WatchTask per row would starve the page). When that
// stream drops, it reconnects with backoff and lists again to catch up: WatchTasks is
// live-only, so ListTasks is its resume path. The detail drawer uses WatchTask with
// after_seq for one task's events. The Queues card (queues.ts) polls GetQueueStats.
// An API key pasted into the header (auth.ts) goes with every call; changing it starts
// the page over: list, stream and queues. Dead letters (FAILED tasks) are retried or
// discarded from their rows and the bar dead-letters.ts shows while the list's state
// filter is FAILED; the drawer lists a task's attempts in every run (ListAttempts).
// The submit form sends more than one copy of a task as one SubmitTasks call.
// A task with children (a task graph) shows its tree in the drawer (tree.ts), fed by
// one WatchTask stream with tree = true.
import { create, fromJson, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { createApi, submitTasks, type BatchSubmitted } from "./api";
import { authProblem, initApiKeyControl, onApiKeyChange } from "./auth";
import {
  initDeadLetters,
  isDeadLetterMode,
  refreshDeadLetterCount,
  resetDeadLetterCount,
  retryTask,
  setDeadLetterMode,
  updateSelection,
} from "./dead-letters";
import { $, append, clear, h } from "./dom";
import {
  FILTER_STATES,
  MAX_COPIES,
  codeName,
  compactJson,
  describeError,
  formatClock,
  formatCountdown,
  formatDuration,
  formatRanges,
  isTerminal,
  parseCopies,
  parseDelay,
  parseLabels,
  prettyJson,
  shortId,
  stateName,
  tsMillis,
} from "./format";
import { SubmitTaskRequestSchema, type SubmitTaskRequest } from "./gen/taskwire/v1/service_pb";
import { ChildCountsSchema, ProgressSchema, TaskState, type Attempt, type Task, type TaskEvent } from "./gen/taskwire/v1/task_pb";
import { nudgeQueues, restartQueues, startQueues } from "./queues";
import { createTreeView, type TreeView } from "./tree";

const api = createApi();
const UNARY_TIMEOUT_MS = 15_000;
/** A SubmitTasks call of up to 1000 tasks: more time than one task's submit. */
const BATCH_TIMEOUT_MS = 60_000;
/** The refusal reasons a batch's answer lists; the rest are counted. */
const MAX_REFUSAL_LINES = 5;

/** The most children of one task the drawer lists (the server's tree watch follows
 * at most 10,000 nodes too). */
const MAX_TREE_LIST = 10_000;

/** The demo kinds `taskwire dev` runs, with an example input for each (`id` names a
 * second example of a kind: its chip's data-testid is preset-<id>). */
const PRESETS: { kind: string; id?: string; label?: string; input: JsonValue; hint: string }[] = [
  { kind: "demo.sleep", input: { seconds: 5, steps: 10 }, hint: "sleeps, reporting n steps" },
  { kind: "demo.agent", input: { prompt: "hi", tokens: 40, delay_ms: 120 }, hint: "streams tokens as progress" },
  {
    kind: "demo.agent",
    id: "demo.agent.tools",
    label: "demo.agent + tools",
    input: { prompt: "plan a trip", tools: 3, tokens: 20, delay_ms: 100 },
    hint: "a task graph: plans, starts one child agent per tool, waits for them, then summarizes their answers",
  },
  {
    kind: "demo.fanout",
    input: { children: 5, child_kind: "demo.sleep", child_input: { seconds: 2, steps: 5 } },
    hint: "a task graph: starts n children of a kind, then gathers their results",
  },
  { kind: "demo.echo", input: { hello: "world" }, hint: "returns its input" },
  { kind: "demo.flaky", input: {}, hint: "fails once, then succeeds" },
  { kind: "demo.fail", input: {}, hint: "always fails" },
];

// ---------------------------------------------------------------------------------
// State

interface Row {
  task: Task;
  /** The newest human-readable line: an event's log message or progress message. */
  note: string;
  tr: HTMLTableRowElement;
  badge: HTMLElement;
  /** "run 2" once the task was retried (RetryTask); empty in run 1. */
  run: HTMLElement;
  attempt: HTMLElement;
  /** A SCHEDULED task's start: "starts 12:34:56 · in 42 s". */
  runAt: HTMLElement;
  /** Its place in a task graph: "3 children" (opens its tree) or "child of …". */
  family: HTMLButtonElement;
  /** How many times the page listed again to see this SCHEDULED task leave SCHEDULED
   * after it came due (that step sends no event: see watchDueRows). */
  dueChecks: number;
  progress: HTMLElement;
  bar: HTMLElement;
  pct: HTMLElement;
  message: HTMLElement;
  duration: HTMLElement;
  actions: HTMLElement;
  /** One button per row, kept across renders so a click is never lost to a re-render. */
  cancel: HTMLButtonElement;
  /** Retry, on FAILED rows (a new run: RetryTask); kept across renders like cancel. */
  retry: HTMLButtonElement;
  /** The row's checkbox (dead-letter view): FAILED rows only. */
  select: HTMLInputElement;
}

interface Filter {
  state: TaskState;
  kind: string;
  labels: Record<string, string>;
}

let filter: Filter = { state: TaskState.UNSPECIFIED, kind: "", labels: {} };
let pageSize = 20;
/** page_token of every page visited so far; the last one is the current page's. */
let pageTokens: string[] = [""];
let nextPageToken = "";
let rows = new Map<string, Row>();
let listGeneration = 0;
/** The tasks of the last submit (one, or a batch's accepted copies): their rows are highlighted. */
let freshIds = new Set<string>();
/** Ids of the FAILED rows ticked in the dead-letter view (for "Retry selected"). */
const selected = new Set<string>();

const tbody = $<HTMLTableSectionElement>('[data-testid="task-rows"]');

// ---------------------------------------------------------------------------------
// Rows

function newRow(task: Task): Row {
  const badge = h("span", { class: "badge", "data-testid": "task-state" });
  const run = h("span", { class: "run", "data-testid": "task-run" });
  const attempt = h("span", { class: "attempt", "data-testid": "task-attempt" });
  const runAt = h("span", { class: "run-at", "data-testid": "task-run-at" });
  const family = h("button", { type: "button", class: "link family", "data-testid": "task-family", hidden: true });
  const bar = h("div", { class: "bar" });
  const progress = h(
    "div",
    { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "data-testid": "task-progress" },
    bar,
  );
  const pct = h("span", { class: "pct", "data-testid": "task-progress-label" });
  const message = h("span", { class: "message", "data-testid": "task-message" });
  const duration = h("span", { class: "duration", "data-testid": "task-duration" });
  const actions = h("td", { class: "actions" });
  const id = task.id;
  const cancel = h("button", { class: "btn small danger", "data-testid": "cancel-button", onclick: () => cancelTask(id, cancel) }, "Cancel");
  const retry = h(
    "button",
    { class: "btn small", "data-testid": "retry-button", title: "Start a new run of this failed task (RetryTask)", onclick: () => retryRow(id, retry) },
    "Retry",
  );
  const select = h("input", { type: "checkbox", "data-testid": "task-select", "aria-label": `Select ${id}` });
  select.addEventListener("change", () => {
    if (select.checked) selected.add(id);
    else selected.delete(id);
    renderSelection();
  });
  const tr = h(
    "tr",
    { "data-testid": "task-row", "data-task-id": id },
    h("td", { class: "col-select" }, select),
    h(
      "td",
      { class: "col-id" },
      h("button", { class: "link mono", "data-testid": "task-id", title: `${id}\nclick for details`, onclick: () => openDetail(id) }, shortId(id)),
    ),
    h("td", { class: "mono kind", "data-testid": "task-kind" }, task.kind),
    h("td", {}, badge, run, attempt, runAt, family),
    h("td", { class: "col-progress" }, h("div", { class: "progress-cell" }, progress, pct)),
    h("td", { class: "message-cell" }, message),
    h("td", { class: "muted nowrap", "data-testid": "task-created" }, formatClock(tsMillis(task.createdAt))),
    h("td", { class: "muted nowrap" }, duration),
    actions,
  );
  const row: Row = {
    task, note: task.progress?.message ?? "", tr, badge, run, attempt, runAt, family, dueChecks: 0, progress, bar, pct, message, duration, actions,
    cancel, retry, select,
  };
  // Whose tree: a parent's own, a child's parent's (the row's task is read on click).
  family.addEventListener("click", () => openDetail(row.task.children ? row.task.id : row.task.parentId || row.task.id));
  renderRow(row);
  return row;
}

function displayFraction(task: Task): number {
  // A SUCCEEDED task is complete even if its handler never reported progress.
  if (task.state === TaskState.SUCCEEDED) return 1;
  const f = task.progress?.fraction ?? 0;
  return Number.isFinite(f) ? Math.min(1, Math.max(0, f)) : 0;
}

function renderRow(row: Row): void {
  const t = row.task;
  const name = stateName(t.state);
  row.tr.dataset.state = name;
  row.badge.textContent = name;
  row.badge.className = `badge state-${name.toLowerCase()}`;
  row.tr.dataset.run = String(t.run || 1);
  row.run.textContent = t.run > 1 ? `run ${t.run}` : "";
  row.run.title = t.run > 1 ? `run ${t.run}: retried ${t.run - 1} time${t.run > 2 ? "s" : ""} after it failed` : "";
  row.attempt.textContent = t.attempt > 1 || t.state === TaskState.RETRYING ? `attempt ${t.attempt}/${t.maxAttempts || "?"}` : "";

  const fraction = displayFraction(t);
  const pct = Math.round(fraction * 100);
  row.progress.dataset.fraction = String(fraction);
  row.progress.setAttribute("aria-valuenow", String(pct));
  row.progress.className = `progress state-${name.toLowerCase()}${t.state === TaskState.QUEUED ? " waiting" : ""}`;
  renderRunAt(row);
  renderFamily(row);
  row.bar.style.width = `${pct}%`;
  row.pct.textContent = `${pct}%`;

  let text = row.note;
  let cls = "message";
  if (t.state === TaskState.FAILED || (t.state === TaskState.RETRYING && t.error)) {
    text = t.error ? `${t.error.code}: ${t.error.message}` : text;
    cls += " bad";
  } else if (t.state === TaskState.SUCCEEDED && t.output) {
    text = `→ ${compactJson(t.output, 60)}`;
    cls += " good";
  }
  row.message.className = cls;
  row.message.textContent = text;
  row.message.title = text;

  renderDuration(row);

  // Cancel is offered on non-terminal rows only, Retry on FAILED ones; the buttons are
  // added and removed, never rebuilt.
  if (isTerminal(t.state)) row.cancel.remove();
  else if (row.cancel.parentNode !== row.actions) row.actions.appendChild(row.cancel);
  const failed = t.state === TaskState.FAILED;
  if (!failed) row.retry.remove();
  else if (row.retry.parentNode !== row.actions) row.actions.appendChild(row.retry);
  // Only a dead letter can be selected; one that left FAILED leaves the selection.
  row.select.disabled = !failed;
  if (!failed && selected.delete(t.id)) renderSelection();
  row.select.checked = failed && selected.has(t.id);
}

/** When a SCHEDULED task starts, and how soon; empty in any other state. */
function renderRunAt(row: Row): void {
  const t = row.task;
  const at = t.state === TaskState.SCHEDULED ? tsMillis(t.runAt) : undefined;
  if (at === undefined) {
    row.runAt.textContent = "";
    delete row.runAt.dataset.runAt;
    row.runAt.removeAttribute("title");
    return;
  }
  const left = at - Date.now();
  row.runAt.textContent = `starts ${formatClock(at)} · ${left > 0 ? formatCountdown(left) : "due, starting…"}`;
  row.runAt.dataset.runAt = new Date(at).toISOString();
  row.runAt.title = `run at ${new Date(at).toISOString()}`;
}

/** A task with children: how many, and how many are still going; a child: its parent. */
function renderFamily(row: Row): void {
  const t = row.task;
  const c = t.children;
  let text = "";
  let title = "";
  if (c) {
    text = c.total ? `${c.total} ${c.total === 1 ? "child" : "children"}${c.active ? ` · ${c.active} active` : ""}` : "children…";
    title = c.total
      ? `${c.succeeded} succeeded, ${c.failed} failed, ${c.cancelled} cancelled, ${c.active} active; click for its tree`
      : "its children are being created; click for its tree";
  } else if (t.parentId) {
    text = `child of ${shortId(t.parentId)}`;
    title = `a child of ${t.parentId}; click for its parent's tree`;
  }
  row.family.hidden = text === "";
  row.family.textContent = text;
  row.family.title = title;
  row.tr.dataset.parentId = t.parentId;
  row.tr.dataset.children = String(c?.total ?? 0);
}

function renderDuration(row: Row): void {
  const t = row.task;
  const start = tsMillis(t.startedAt);
  const end = tsMillis(t.finishedAt) ?? (isTerminal(t.state) ? tsMillis(t.updatedAt) : undefined);
  row.duration.textContent = start === undefined ? "—" : formatDuration((end ?? Date.now()) - start);
}

/**
 * Events for tasks that are not on screen yet, by task id (bounded). The stream can be
 * ahead of ListTasks: a task submitted a moment ago may start, or even finish, before
 * the listing that shows its row arrives, and the database (written by taskwire's
 * recorder) can lag the events the stream carries. When a listing brings the row in,
 * the events it has not seen yet are applied from here, so none is lost.
 */
const early = new Map<string, TaskEvent[]>();
const EARLY_MAX_TASKS = 500;
const EARLY_MAX_EVENTS = 64;

function rememberEarly(ev: TaskEvent): void {
  let list = early.get(ev.taskId);
  if (!list) {
    if (early.size >= EARLY_MAX_TASKS) early.delete(early.keys().next().value as string);
    list = [];
    early.set(ev.taskId, list);
  }
  list.push(ev);
  if (list.length > EARLY_MAX_EVENTS) list.shift();
}

/** Applies one event (from WatchTasks) to its row, or keeps it until the row appears. */
function applyEvent(ev: TaskEvent): void {
  // A task finished: the Queues card's counts changed.
  if (isTerminal(ev.state)) nudgeQueues();
  // The drawer's own stream ends with the task's terminal event: a retry's new run
  // (started elsewhere) shows up here first.
  if (detail?.id === ev.taskId) detail.seen(ev);
  // A new dead letter, or one that left: the counts on the bulk buttons change.
  if (ev.state === TaskState.FAILED && isDeadLetterMode()) refreshDeadLetterCount();
  const row = rows.get(ev.taskId);
  if (row) {
    applyToRow(row, ev);
    return;
  }
  rememberEarly(ev);
  // A task this page does not show yet (e.g. submitted elsewhere): on the first page,
  // list again so it appears. WatchTasks sends no QUEUED event, so this fires when it starts.
  if (pageTokens.length === 1 && (filter.state === TaskState.UNSPECIFIED || filter.state === ev.state)) scheduleReload();
}

/** Whether a task has (or is about to have) children: the server sets Task.children
 * only on such a task, and the page sets it once it sees the task WAITING. */
function isParent(t: Task): boolean {
  return t.children !== undefined || t.state === TaskState.WAITING;
}

/** Folds an event into a task record; false when the record already has it (by seq). */
function foldEvent(t: Task, ev: TaskEvent): boolean {
  if (ev.seq !== 0n && ev.seq <= t.lastSeq) return false; // already applied (list and stream overlap)
  // A FAILED task moves again only in a new run (RetryTask, here or elsewhere): the
  // record starts over, as the server's does. Events carry no run number: this counts
  // one, and the next listing or GetStatus says the exact run.
  if (t.state === TaskState.FAILED && t.lastSeq > 0n && ev.seq > t.lastSeq) {
    t.run = (t.run || 1) + 1;
    t.attempt = 0;
    t.progress = create(ProgressSchema, {});
    t.output = undefined;
    t.error = undefined;
    t.startedAt = undefined;
    t.finishedAt = undefined;
  }
  if (ev.seq > t.lastSeq) t.lastSeq = ev.seq;
  const wasState = t.state;
  // A parent's progress is its tree's (the record's), but its events report its own
  // step's: they may raise the bar (never lower it) until a listing reads the tree's.
  const parent = isParent(t);
  t.state = ev.state;
  if (ev.attempt) t.attempt = ev.attempt;
  if (ev.state === TaskState.WAITING) t.children ??= create(ChildCountsSchema, {});
  if (parent && ev.progress) {
    const fraction = Math.max(t.progress?.fraction ?? 0, ev.progress.fraction);
    t.progress = create(ProgressSchema, { fraction, message: ev.progress.message });
  } else if (ev.progress) t.progress = ev.progress;
  else if (ev.state === TaskState.RUNNING && wasState !== TaskState.RUNNING && !parent) t.progress = create(ProgressSchema, {});
  if (ev.output) t.output = ev.output;
  if (ev.error) t.error = ev.error;
  if (ev.time) {
    if (ev.state === TaskState.RUNNING && !t.startedAt) t.startedAt = ev.time;
    if (isTerminal(ev.state)) t.finishedAt = ev.time;
    t.updatedAt = ev.time;
  }
  return true;
}

function applyToRow(row: Row, ev: TaskEvent): void {
  const run = row.task.run;
  if (!foldEvent(row.task, ev)) return;
  if (row.task.run !== run) row.note = ""; // a new run: the last one's lines are done with
  const line = ev.message || ev.progress?.message;
  if (line) row.note = line;
  renderRow(row);
  if (isParent(row.task) && (ev.state === TaskState.WAITING || isTerminal(ev.state))) refreshParentSoon(row.task.id, ev.seq);
}

/** When a parent's record is read again after its WAITING or terminal event (ms): its
 * child counts and its tree's progress are on the record only, which the recorder
 * writes a moment after the event. */
const PARENT_REFRESH_MS = [1_000, 2_000, 4_000, 8_000];

function refreshParentSoon(id: string, seq: bigint, attempt = 0): void {
  window.setTimeout(async () => {
    if (!rows.has(id)) return;
    try {
      const t = await api.tasks.getStatus({ taskId: id }, { timeoutMs: UNARY_TIMEOUT_MS });
      // Not recorded yet: once more, later.
      if (t.lastSeq < seq && attempt + 1 < PARENT_REFRESH_MS.length) refreshParentSoon(id, seq, attempt + 1);
      else showAnswer(t);
    } catch {
      // The next listing reads it.
    }
  }, PARENT_REFRESH_MS[attempt]);
}

/** Replaces the table body with a freshly listed page, keeping rows that are newer. */
function showTasks(tasks: Task[]): void {
  const next = new Map<string, Row>();
  for (const task of tasks) {
    const old = rows.get(task.id);
    let row: Row;
    if (old && old.task.lastSeq > task.lastSeq) {
      row = old; // the stream already moved this row past what the list read
    } else if (old) {
      if (task.run !== old.task.run) old.note = "";
      old.task = task;
      if (task.progress?.message) old.note = task.progress.message;
      renderRow(old);
      row = old;
    } else {
      row = newRow(task);
    }
    const missed = early.get(task.id);
    if (missed) {
      early.delete(task.id);
      for (const ev of missed) applyToRow(row, ev);
    }
    row.tr.classList.toggle("fresh", freshIds.has(task.id));
    next.set(task.id, row);
  }
  rows = next;
  // What is not on the page cannot stay selected.
  for (const id of [...selected]) if (!next.has(id)) selected.delete(id);
  renderSelection();
  clear(tbody);
  if (tasks.length === 0) {
    const text = isDeadLetterMode()
      ? "No failed tasks match these filters: no dead letters."
      : hasFilter()
        ? "No tasks match these filters."
        : "No tasks yet. Submit one on the left.";
    append(tbody, h("tr", { class: "empty", "data-testid": "empty" }, h("td", { colspan: 9 }, text)));
  }
  for (const row of next.values()) tbody.appendChild(row.tr);
}

// ---------------------------------------------------------------------------------
// Dead letters: Retry on a FAILED row, the selection, and the bar (dead-letters.ts)

const table = $<HTMLTableElement>('[data-testid="task-table"]');
const selectAll = $<HTMLInputElement>('[data-testid="select-all"]');
const deadLettersToggle = $<HTMLButtonElement>('[data-testid="dead-letters-toggle"]');

/** The header checkbox and "Retry selected (n)" follow the selection. */
function renderSelection(): void {
  const failed = [...rows.values()].filter((r) => r.task.state === TaskState.FAILED);
  const ticked = failed.filter((r) => selected.has(r.task.id)).length;
  selectAll.checked = failed.length > 0 && ticked === failed.length;
  selectAll.indeterminate = ticked > 0 && ticked < failed.length;
  selectAll.disabled = failed.length === 0;
  updateSelection(selected.size);
}

selectAll.addEventListener("change", () => {
  for (const row of rows.values()) {
    if (row.task.state !== TaskState.FAILED) continue;
    if (selectAll.checked) selected.add(row.task.id);
    else selected.delete(row.task.id);
    row.select.checked = selectAll.checked;
  }
  renderSelection();
});

/** Shows a task as an answer (RetryTask, CancelTask, GetStatus) has it, unless the row
 * or the drawer already shows something newer. */
function showAnswer(task: Task): void {
  const row = rows.get(task.id);
  if (row && task.lastSeq >= row.task.lastSeq) {
    if (task.run !== row.task.run) row.note = task.progress?.message ?? "";
    row.task = task;
    renderRow(row);
  }
  if (detail?.id === task.id) detail.update(task);
}

async function retryRow(id: string, button: HTMLButtonElement): Promise<void> {
  button.disabled = true;
  button.textContent = "Retrying…";
  try {
    await retryTask(id);
  } finally {
    button.disabled = false;
    button.textContent = "Retry";
  }
}

/** Reads one task again (the page's view of it was out of date); gone: list again. */
async function refreshTask(id: string): Promise<void> {
  try {
    showAnswer(await api.tasks.getStatus({ taskId: id }, { timeoutMs: UNARY_TIMEOUT_MS }));
  } catch (err) {
    if (ConnectError.from(err).code === Code.NotFound) {
      selected.delete(id);
      if (detail?.id === id) closeDetail();
      void loadPage();
    }
  }
}

initDeadLetters({
  api,
  scope: () => ({ kind: filter.kind, labels: { ...filter.labels } }),
  selected: () => [...selected].filter((id) => rows.get(id)?.task.state === TaskState.FAILED),
  retried: (task) => {
    // Done with: a retried task leaves the selection (even if its new run failed already).
    if (selected.delete(task.id)) renderSelection();
    showAnswer(task);
    // The new run: the drawer follows it (its stream ended with the FAILED event).
    if (detail?.id === task.id) detail.resume();
  },
  stale: (id) => void refreshTask(id),
  changed: (action, ids) => {
    for (const id of ids) selected.delete(id);
    if (action === "discard" && detail && ids.includes(detail.id)) closeDetail();
    if (action === "retry" && detail && ids.includes(detail.id)) detail.resume();
    void loadPage();
  },
  toast: (text, kind) => toast(text, kind),
});

deadLettersToggle.addEventListener("click", () => {
  stateSelect.value = String(filter.state === TaskState.FAILED ? TaskState.UNSPECIFIED : TaskState.FAILED);
  applyFilters();
});

/** The dead-letter view is the list with its state filter at FAILED. */
function syncDeadLetterMode(): void {
  const on = filter.state === TaskState.FAILED;
  table.classList.toggle("dlq", on);
  deadLettersToggle.setAttribute("aria-pressed", String(on));
  deadLettersToggle.classList.toggle("active", on);
  if (!on && selected.size) {
    selected.clear();
    for (const row of rows.values()) row.select.checked = false;
  }
  setDeadLetterMode(on);
  renderSelection();
}

function hasFilter(): boolean {
  return filter.state !== TaskState.UNSPECIFIED || filter.kind !== "" || Object.keys(filter.labels).length > 0;
}

// ---------------------------------------------------------------------------------
// Listing and paging

const listError = $('[data-testid="list-error"]');
const pageInfo = $('[data-testid="page-info"]');
const prevBtn = $<HTMLButtonElement>('[data-testid="prev-page"]');
const nextBtn = $<HTMLButtonElement>('[data-testid="next-page"]');

async function loadPage(): Promise<void> {
  const generation = ++listGeneration;
  document.body.classList.add("loading");
  try {
    const res = await api.tasks.listTasks(
      { pageSize, pageToken: pageTokens[pageTokens.length - 1], state: filter.state, kind: filter.kind, labels: filter.labels },
      { timeoutMs: UNARY_TIMEOUT_MS },
    );
    if (generation !== listGeneration) return; // a newer listing superseded this one
    nextPageToken = res.nextPageToken;
    showTasks(res.tasks);
    listError.hidden = true;
    if (isDeadLetterMode()) refreshDeadLetterCount();
    const page = pageTokens.length;
    const first = (page - 1) * pageSize + (res.tasks.length ? 1 : 0);
    pageInfo.textContent = `Page ${page} · ${first}–${(page - 1) * pageSize + res.tasks.length}${nextPageToken ? "" : " (last)"}`;
  } catch (err) {
    if (generation !== listGeneration) return;
    const { code, message } = describeError(err);
    const auth = authProblem(err, "ListTasks");
    listError.textContent = auth ? `Could not list tasks. ${auth.text}` : `Could not list tasks — ${code}: ${message}`;
    listError.dataset.kind = auth?.kind ?? "";
    listError.hidden = false;
    // What was shown belongs to a key the server no longer takes: show nothing.
    if (auth && auth.kind !== "forbidden") showTasks([]);
  } finally {
    if (generation === listGeneration) document.body.classList.remove("loading");
    prevBtn.disabled = pageTokens.length <= 1;
    nextBtn.disabled = !nextPageToken;
  }
}

let reloadTimer: number | undefined;
/** Lists again soon; bursts of unknown-task events collapse into one ListTasks. */
function scheduleReload(delayMs = 400): void {
  if (reloadTimer !== undefined) return;
  reloadTimer = window.setTimeout(() => {
    reloadTimer = undefined;
    void loadPage();
  }, delayMs);
}

/** How long after a SCHEDULED task's run_at the page lists again, once per entry. */
const DUE_RECHECK_MS = [1_500, 5_000, 15_000];

/**
 * A SCHEDULED task that came due becomes QUEUED in the record, with no event (the next
 * one the stream carries is RUNNING, when a worker takes it). So for a row still
 * SCHEDULED after its run_at, list again a few times: a task no worker takes shows
 * QUEUED, and one that ran before its RUNNING reached us catches up.
 */
function watchDueRows(): void {
  const now = Date.now();
  for (const row of rows.values()) {
    if (row.task.state !== TaskState.SCHEDULED || row.dueChecks >= DUE_RECHECK_MS.length) continue;
    const at = tsMillis(row.task.runAt);
    if (at !== undefined && now >= at + DUE_RECHECK_MS[row.dueChecks]) {
      row.dueChecks++;
      scheduleReload(0);
    }
  }
}

prevBtn.addEventListener("click", () => {
  if (pageTokens.length > 1) {
    pageTokens.pop();
    void loadPage();
  }
});
nextBtn.addEventListener("click", () => {
  if (nextPageToken) {
    pageTokens.push(nextPageToken);
    void loadPage();
  }
});
$<HTMLSelectElement>('[data-testid="page-size"]').addEventListener("change", (ev) => {
  pageSize = Number((ev.target as HTMLSelectElement).value) || 20;
  pageTokens = [""];
  void loadPage();
});

// Filters
const filterForm = $<HTMLFormElement>('[data-testid="filters"]');
const stateSelect = $<HTMLSelectElement>('[data-testid="filter-state"]');
append(stateSelect, h("option", { value: String(TaskState.UNSPECIFIED) }, "any state"));
for (const s of FILTER_STATES) append(stateSelect, h("option", { value: String(s) }, stateName(s).toLowerCase()));

function applyFilters(): void {
  const kind = $<HTMLInputElement>('[data-testid="filter-kind"]').value.trim();
  const labelInput = $<HTMLInputElement>('[data-testid="filter-label"]');
  let labels: Record<string, string>;
  try {
    labels = parseLabels(labelInput.value.trim());
    labelInput.removeAttribute("aria-invalid");
  } catch (err) {
    labelInput.setAttribute("aria-invalid", "true");
    listError.textContent = `Label filter: ${(err as Error).message}`;
    listError.hidden = false;
    return;
  }
  const streamChanged = kind !== filter.kind || JSON.stringify(labels) !== JSON.stringify(filter.labels);
  filter = { state: Number(stateSelect.value) as TaskState, kind, labels };
  pageTokens = [""];
  syncDeadLetterMode();
  void loadPage();
  // The stream carries the same kind/label filter, so it only sends what can be shown.
  if (streamChanged) startStream();
}
filterForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  applyFilters();
});
stateSelect.addEventListener("change", applyFilters);
$('[data-testid="refresh"]').addEventListener("click", () => void loadPage());

// ---------------------------------------------------------------------------------
// The one WatchTasks stream

const streamPill = $('[data-testid="stream-status"]');
let streamAbort: AbortController | undefined;

function setStreamStatus(status: "connecting" | "live" | "reconnecting" | "error", text: string, title = ""): void {
  streamPill.dataset.status = status;
  $(".pill-text", streamPill).textContent = text;
  streamPill.title = title;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = window.setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      window.clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

function startStream(): void {
  streamAbort?.abort();
  const ac = new AbortController();
  streamAbort = ac;
  void watchLoop(ac.signal, { kind: filter.kind, labels: { ...filter.labels } });
}

async function watchLoop(signal: AbortSignal, req: { kind: string; labels: Record<string, string> }): Promise<void> {
  let failures = 0;
  let first = true;
  while (!signal.aborted) {
    setStreamStatus("connecting", first ? "connecting…" : "reconnecting…");
    let reason = "the stream ended";
    let openedAt = 0;
    try {
      const stream = api.watch.watchTasks(req, {
        signal,
        timeoutMs: 0, // a live stream has no deadline
        onHeader: () => {
          // Established: anything that happened before now is in a fresh listing,
          // anything after arrives on this stream (rows merge by seq). This is also how
          // a reconnect catches up on what it missed: WatchTasks has no replay.
          openedAt = Date.now();
          setStreamStatus("live", "live");
          void loadPage();
          if (!first) {
            // The database can trail the events by a moment (taskwire's recorder writes
            // in batches), so after a gap list once more shortly after.
            window.setTimeout(() => void loadPage(), 2000);
          }
          first = false;
        },
      });
      for await (const ev of stream) applyEvent(ev);
    } catch (err) {
      if (signal.aborted) return;
      const { code, message } = describeError(err);
      reason = `${code}: ${message}`;
      if (ConnectError.from(err).code === Code.InvalidArgument) {
        // The filter itself is refused (e.g. a malformed kind): retrying cannot help.
        // The list shows the same error; a new filter starts a new stream.
        setStreamStatus("error", "not watching", reason);
        return;
      }
      const auth = authProblem(err, "WatchTasks");
      if (auth) {
        // Neither can retrying with the same key: a new key starts a new stream, and
        // the notice by the API key field says why.
        setStreamStatus("error", auth.kind === "forbidden" ? "not allowed to watch" : "needs an API key", auth.text);
        return;
      }
    }
    if (signal.aborted) return;
    first = false;
    // Back off from the start again only after a stream that stayed up a while, so a
    // server that accepts and at once drops the stream is not hammered.
    if (openedAt && Date.now() - openedAt > 10_000) failures = 0;
    failures++;
    const base = Math.min(30_000, 500 * 2 ** Math.min(failures - 1, 6));
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    setStreamStatus("reconnecting", `offline · retry in ${Math.ceil(delay / 1000)}s`, reason);
    await sleep(delay, signal);
  }
}

// ---------------------------------------------------------------------------------
// Submitting

const submitForm = $<HTMLFormElement>('[data-testid="submit-form"]');
const kindInput = $<HTMLInputElement>('[data-testid="submit-kind"]');
const inputArea = $<HTMLTextAreaElement>('[data-testid="submit-input"]');
const submitError = $('[data-testid="submit-error"]');
const submitResult = $('[data-testid="submit-result"]');
const submitWarning = $('[data-testid="submit-warning"]');
const submitButton = $<HTMLButtonElement>('[data-testid="submit-button"]');
const delayInput = $<HTMLInputElement>('[data-testid="submit-delay"]');
// Says at once when the text is not a delay (the submit says why).
delayInput.addEventListener("input", () => {
  let ok = true;
  try {
    parseDelay(delayInput.value);
  } catch {
    ok = false;
  }
  if (ok) delayInput.removeAttribute("aria-invalid");
  else delayInput.setAttribute("aria-invalid", "true");
});

const copiesInput = $<HTMLInputElement>('[data-testid="submit-copies"]');

/** The copies field as a number (throws, saying why, when it is not 1..1000). A number
 * field reads "" for text that is no number, which must not pass for the default 1. */
function readCopies(): number {
  if (copiesInput.validity.badInput) throw new Error(`must be a whole number from 1 to ${MAX_COPIES}`);
  return parseCopies(copiesInput.value);
}

/** "Submit task", or "Submit 5 tasks" when the copies field asks for more than one. */
function submitLabel(): string {
  let n = 1;
  try {
    n = readCopies();
  } catch {
    // the submit says why
  }
  return n > 1 ? `Submit ${n} tasks` : "Submit task";
}

// The button says how many tasks a click sends; the field says at once when it cannot.
copiesInput.addEventListener("input", () => {
  let ok = true;
  try {
    readCopies();
  } catch {
    ok = false;
  }
  if (ok) copiesInput.removeAttribute("aria-invalid");
  else copiesInput.setAttribute("aria-invalid", "true");
  if (!submitButton.disabled) submitButton.textContent = submitLabel();
});

const datalist = $("#kind-options");
const presets = $('[data-testid="presets"]');
const listedKinds = new Set<string>();
for (const p of PRESETS) {
  // One suggestion per kind, with its first example's hint.
  if (!listedKinds.has(p.kind)) append(datalist, h("option", { value: p.kind }, p.hint));
  listedKinds.add(p.kind);
  append(
    presets,
    h(
      "button",
      {
        type: "button",
        class: "chip",
        title: p.hint,
        "data-testid": `preset-${p.id ?? p.kind}`,
        onclick: () => {
          kindInput.value = p.kind;
          inputArea.value = JSON.stringify(p.input);
          validateInput();
        },
      },
      p.label ?? p.kind,
    ),
  );
}

/** Parses the input textarea; shows why when it is not JSON. Empty means no input. */
function validateInput(): { ok: true; value: JsonValue | undefined } | { ok: false } {
  const text = inputArea.value.trim();
  if (text === "") {
    inputArea.removeAttribute("aria-invalid");
    return { ok: true, value: undefined };
  }
  try {
    const value = JSON.parse(text) as JsonValue;
    inputArea.removeAttribute("aria-invalid");
    if (submitError.dataset.kind === "json") submitError.hidden = true;
    return { ok: true, value };
  } catch (err) {
    inputArea.setAttribute("aria-invalid", "true");
    return { ok: false };
  }
}
inputArea.addEventListener("input", () => validateInput());

/** What the result notice says in data attributes: one task's answer, or a batch's. */
const RESULT_DATA = ["taskId", "state", "copies", "accepted", "refused", "deduplicated", "taskIds"];

/** Empties the result notice and its answer's data attributes (not its data-testid);
 * `kind` is its look: ok, or warn for a batch with refused copies. */
function resetSubmitResult(kind: "ok" | "warn"): void {
  submitResult.className = `notice ${kind}`;
  for (const name of RESULT_DATA) delete submitResult.dataset[name];
  clear(submitResult);
}

function showSubmitError(kind: "json" | "form" | "grpc", text: string): void {
  submitError.dataset.kind = kind;
  submitError.textContent = text;
  submitError.hidden = false;
  submitResult.hidden = true;
  submitWarning.hidden = true;
}

submitForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  submitError.hidden = true;
  submitResult.hidden = true;
  // A warning belongs to one answer: the next submit shows its own or none.
  submitWarning.hidden = true;
  submitWarning.textContent = "";
  const kind = kindInput.value.trim();
  if (!kind) {
    showSubmitError("form", "Kind is required, e.g. demo.sleep.");
    kindInput.focus();
    return;
  }
  const parsed = validateInput();
  if (!parsed.ok) {
    let why = "";
    try {
      JSON.parse(inputArea.value);
    } catch (err) {
      why = (err as Error).message;
    }
    showSubmitError("json", `Input is not valid JSON: ${why}`);
    inputArea.focus();
    return;
  }
  let labels: Record<string, string>;
  try {
    labels = parseLabels($<HTMLInputElement>('[data-testid="submit-labels"]').value.trim());
  } catch (err) {
    showSubmitError("form", `Labels: ${(err as Error).message}`);
    return;
  }
  let delayMs: number | undefined;
  try {
    delayMs = parseDelay(delayInput.value);
    delayInput.removeAttribute("aria-invalid");
  } catch (err) {
    delayInput.setAttribute("aria-invalid", "true");
    showSubmitError("form", `Delay: ${(err as Error).message}`);
    delayInput.focus();
    return;
  }
  let copies: number;
  try {
    copies = readCopies();
    copiesInput.removeAttribute("aria-invalid");
  } catch (err) {
    copiesInput.setAttribute("aria-invalid", "true");
    showSubmitError("form", `Copies: ${(err as Error).message}`);
    copiesInput.focus();
    return;
  }
  const maxAttempts = Number($<HTMLInputElement>('[data-testid="submit-max-attempts"]').value || 0);
  const idempotencyKey = $<HTMLInputElement>('[data-testid="submit-idempotency-key"]').value.trim();

  const request = create(SubmitTaskRequestSchema, {
    kind,
    labels,
    maxAttempts: Number.isFinite(maxAttempts) && maxAttempts > 0 ? Math.floor(maxAttempts) : 0,
    idempotencyKey,
    input: parsed.value === undefined ? undefined : fromJson(ValueSchema, parsed.value),
    delay: delayMs === undefined ? undefined : durationFromMs(delayMs),
  });
  submitButton.disabled = true;
  submitButton.textContent = "Submitting…";
  try {
    if (copies > 1) await submitCopies(request, copies, delayMs);
    else await submitOne(request, delayMs);
  } finally {
    submitButton.disabled = false;
    submitButton.textContent = submitLabel();
  }
});

/** SubmitTask: one task; the result links its id (the detail drawer). */
async function submitOne(request: SubmitTaskRequest, delayMs: number | undefined): Promise<void> {
  try {
    const res = await api.tasks.submitTask(request, { timeoutMs: UNARY_TIMEOUT_MS });
    freshIds = new Set([res.taskId]);
    const scheduled = res.state === TaskState.SCHEDULED;
    resetSubmitResult("ok");
    append(
      submitResult,
      res.deduplicated ? "Already submitted with that key: " : scheduled ? "Scheduled " : "Submitted ",
      h("button", { type: "button", class: "link mono", "data-testid": "submit-result-id", onclick: () => openDetail(res.taskId) }, res.taskId),
      scheduled && delayMs !== undefined ? ` to start ${formatCountdown(delayMs)}` : "",
    );
    submitResult.dataset.taskId = res.taskId;
    submitResult.dataset.state = stateName(res.state);
    submitResult.hidden = false;
    // Accepted, but e.g. no worker has ever served this kind (often a typo): it waits queued.
    submitWarning.textContent = res.warning;
    submitWarning.hidden = res.warning === "";
    await showSubmitted();
  } catch (err) {
    const { code, message } = describeError(err);
    showSubmitError("grpc", authProblem(err, "SubmitTask")?.text ?? `${code}: ${message}`);
  }
}

/**
 * SubmitTasks: `copies` copies of one task in a single call. Each copy goes without an
 * idempotency key, or, when the form has one, with key-<n> (n = 1..copies): one key for
 * every copy would fold them all into one task, while key-<n> makes sending the same
 * form again answer each copy deduplicated. A refused copy does not hold back the
 * others, so the result counts both, and says why copies were refused.
 */
async function submitCopies(request: SubmitTaskRequest, copies: number, delayMs: number | undefined): Promise<void> {
  const key = request.idempotencyKey;
  // The copies share the input's Value: it is only encoded, never changed.
  const tasks = Array.from({ length: copies }, (_, i) => ({ ...request, idempotencyKey: key ? `${key}-${i + 1}` : "" }));
  let res: BatchSubmitted;
  try {
    res = await submitTasks(api, tasks, { timeoutMs: BATCH_TIMEOUT_MS });
  } catch (err) {
    const { code, message } = describeError(err);
    const older = ConnectError.from(err).code === Code.Unimplemented ? " (this server predates SubmitTasks: send 1 copy at a time)" : "";
    showSubmitError("grpc", authProblem(err, "SubmitTasks")?.text ?? `${code}: ${message}${older}`);
    return;
  }
  const ids = res.accepted.map((a) => a.response.taskId);
  freshIds = new Set(ids);
  const accepted = ids.length;
  const refused = res.refused.length;
  const deduplicated = res.accepted.filter((a) => a.response.deduplicated).length;
  const scheduled = res.accepted.some((a) => a.response.state === TaskState.SCHEDULED);

  let summary = `Submitted ${copies} copies: ${accepted === copies ? `all ${copies}` : accepted || "none"} accepted`;
  if (refused) summary += `, ${refused} refused`;
  if (deduplicated) summary += `; ${deduplicated === accepted ? "all" : deduplicated} already submitted with those keys`;
  if (scheduled && delayMs !== undefined) summary += `; they start ${formatCountdown(delayMs)}`;

  // Refusals by reason, with the copies (1-based) each applies to.
  const reasons = new Map<string, number[]>();
  for (const r of res.refused) {
    const reason = `${codeName(r.code)}: ${r.message || "(no message)"}`;
    let copiesOf = reasons.get(reason);
    if (!copiesOf) reasons.set(reason, (copiesOf = []));
    copiesOf.push(r.index + 1);
  }
  const lines = [...reasons].slice(0, MAX_REFUSAL_LINES).map(([reason, which]) =>
    h("li", { "data-testid": "submit-refusal" }, `${reason} (${which.length === 1 ? "copy" : "copies"} ${formatRanges(which)})`),
  );
  if (reasons.size > MAX_REFUSAL_LINES) lines.push(h("li", {}, `and ${reasons.size - MAX_REFUSAL_LINES} other reasons`));

  resetSubmitResult(refused ? "warn" : "ok");
  append(
    submitResult,
    h("span", { "data-testid": "submit-summary" }, summary),
    lines.length ? h("ul", { class: "batch-refusals", "data-testid": "submit-refusals" }, ...lines) : null,
  );
  Object.assign(submitResult.dataset, {
    copies: String(copies),
    accepted: String(accepted),
    refused: String(refused),
    deduplicated: String(deduplicated),
    taskIds: ids.join(" "),
  });
  submitResult.hidden = false;
  // The copies are of one kind: their warnings (no worker serves it) say the same.
  const warnings = [...new Set(res.accepted.map((a) => a.response.warning).filter((w) => w !== ""))];
  submitWarning.textContent = warnings.join(" ");
  submitWarning.hidden = warnings.length === 0;
  if (accepted) await showSubmitted();
}

/** Shows what was just submitted: WatchTasks sends nothing until a task starts running,
 * so list the first page now. */
async function showSubmitted(): Promise<void> {
  if (pageTokens.length > 1) pageTokens = [""];
  nudgeQueues();
  await loadPage();
}

// ---------------------------------------------------------------------------------
// Cancelling

async function cancelTask(id: string, button?: HTMLButtonElement): Promise<void> {
  if (button) {
    button.disabled = true;
    button.textContent = "Cancelling…";
  }
  try {
    const task = await api.tasks.cancelTask({ taskId: id }, { timeoutMs: UNARY_TIMEOUT_MS });
    showAnswer(task);
    toast(`Cancelled ${shortId(id)}`, "ok");
  } catch (err) {
    const { code, message } = describeError(err);
    const auth = authProblem(err, "CancelTask");
    toast(auth ? `Cancel ${shortId(id)} failed: ${auth.text}` : `Cancel ${shortId(id)} failed — ${code}: ${message}`, "error");
    if (button) {
      button.disabled = false;
      button.textContent = "Cancel";
    }
  }
}

// ---------------------------------------------------------------------------------
// Toasts

const toasts = $('[data-testid="toasts"]');
function toast(text: string, kind: "ok" | "error"): void {
  const el = h("div", { class: `toast ${kind}`, "data-testid": `toast-${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  el.addEventListener("click", () => el.remove());
  toasts.appendChild(el);
  window.setTimeout(() => el.remove(), kind === "error" ? 10_000 : 4_000);
}

// ---------------------------------------------------------------------------------
// Detail drawer: GetStatus, then WatchTask from after_seq (resumes after drops, and
// after the terminal event once a retry starts a new run); ListAttempts for every run.
// A task with children (or one that starts WAITING while shown) is watched with
// tree = true instead: the same one stream then also carries its descendants' events,
// which draw its tree (tree.ts), and resumes from the last seq of any of them.

const drawer = $('[data-testid="task-detail"]');
const drawerBody = $(".drawer-body", drawer);

interface Detail {
  id: string;
  abort: AbortController;
  /** An answer (RetryTask, GetStatus) newer than what is shown. */
  update(task: Task): void;
  /** Watches again from the last seq received, when the stream has ended (a new run). */
  resume(): void;
  /** An event for this task from the page's WatchTasks stream. */
  seen(ev: TaskEvent): void;
}
let detail: Detail | undefined;

function closeDetail(): void {
  detail?.abort.abort();
  detail = undefined;
  drawer.hidden = true;
}
$('[data-testid="detail-close"]').addEventListener("click", closeDetail);
document.addEventListener("keydown", (ev) => {
  // Escape in the confirmation dialog closes that, not the drawer behind it.
  if (ev.key === "Escape" && detail && !document.querySelector("dialog[open]")) closeDetail();
});

function kv(label: string, value: Node | string): HTMLElement {
  return h("div", { class: "kv" }, h("span", { class: "k" }, label), h("span", { class: "v" }, value));
}

/** What an attempt came to: its TaskState's name, or WORKER_LOST (UNSPECIFIED: its
 * worker was lost and the next attempt took the task over). */
function outcomeName(a: Attempt): string {
  return a.outcome === TaskState.UNSPECIFIED ? "WORKER_LOST" : stateName(a.outcome);
}

/** One line per attempt: run and number, outcome, start, duration, error, worker. */
function attemptLine(a: Attempt): HTMLElement {
  const outcome = outcomeName(a);
  const start = tsMillis(a.startedAt);
  const end = tsMillis(a.endedAt);
  const duration =
    start === undefined
      ? "—"
      : end !== undefined
        ? formatDuration(end - start)
        : a.outcome === TaskState.RUNNING
          ? `${formatDuration(Date.now() - start)} so far`
          : "—";
  return h(
    "li",
    { "data-testid": "attempt", "data-run": a.run, "data-attempt": a.attempt, "data-outcome": outcome },
    h("span", { class: "mono", "data-testid": "attempt-label" }, `run ${a.run} · #${a.attempt}`),
    h(
      "span",
      { class: `badge small state-${outcome.toLowerCase()}`, "data-testid": "attempt-outcome" },
      outcome === "WORKER_LOST" ? "WORKER LOST" : outcome,
    ),
    h("span", { class: "muted nowrap", "data-testid": "attempt-start", title: start ? new Date(start).toISOString() : "" }, formatClock(start)),
    h("span", { class: "muted nowrap", "data-testid": "attempt-duration" }, duration),
    a.error
      ? h("span", { class: "attempt-error", "data-testid": "attempt-error", title: a.error.message }, `${a.error.code}: ${a.error.message}`)
      : null,
    a.worker ? h("span", { class: "attempt-worker mono muted", "data-testid": "attempt-worker" }, a.worker) : null,
  );
}

/** Whether the drawer shows a task's tree: it has children, or is waiting for some. */
function isTreeTask(t: Task): boolean {
  return (t.children?.total ?? 0) > 0 || t.state === TaskState.WAITING;
}

/** "3: 1 active, 2 succeeded": a parent's children by where they are. */
function childCounts(t: Task): string {
  const c = t.children;
  if (!c) return "";
  const parts = [
    c.active ? `${c.active} active` : "",
    c.succeeded ? `${c.succeeded} succeeded` : "",
    c.failed ? `${c.failed} failed` : "",
    c.cancelled ? `${c.cancelled} cancelled` : "",
  ].filter((p) => p !== "");
  return `${c.total}${parts.length ? `: ${parts.join(", ")}` : ""}`;
}

/** Every child of a task (ListTasks by parent_id, page after page), for its tree. */
async function listChildren(parentId: string, signal: AbortSignal): Promise<Task[]> {
  const out: Task[] = [];
  let pageToken = "";
  do {
    const res = await api.tasks.listTasks({ parentId, pageSize: 1000, pageToken }, { timeoutMs: UNARY_TIMEOUT_MS, signal });
    out.push(...res.tasks);
    pageToken = res.nextPageToken;
  } while (pageToken && out.length < MAX_TREE_LIST);
  return out;
}

function openDetail(id: string): void {
  closeDetail();
  const abort = new AbortController();
  const events = h("ol", { class: "events", "data-testid": "detail-events" });
  const summary = h("div", { class: "detail-summary" }, "Loading…");
  // Input, output and error: below the tree, which is what a parent is opened for.
  const io = h("div", { class: "detail-io" });
  const streamNote = h("p", { class: "muted small", "data-testid": "detail-stream" }, "");
  const attempts = h("ol", { class: "attempts", "data-testid": "detail-attempts" });
  const attemptsNote = h("p", { class: "muted small", "data-testid": "detail-attempts-note" }, "Loading…");
  // Kept across renders of the summary: the tree updates it between this task's events.
  const progressText = h("span", { "data-testid": "detail-progress" });
  const treeTitle = h("h3", { hidden: true }, "Tree");
  const treeSlot = h("div", { class: "tree-slot", "data-testid": "detail-tree", hidden: true });
  const retryButton = h(
    "button",
    { class: "btn small", "data-testid": "detail-retry", hidden: true, title: "Start a new run of this failed task (RetryTask)" },
    "Retry",
  );
  retryButton.addEventListener("click", async () => {
    retryButton.disabled = true;
    retryButton.textContent = "Retrying…";
    try {
      await retryTask(id);
    } finally {
      retryButton.disabled = false;
      retryButton.textContent = "Retry";
    }
  });
  clear(drawerBody);
  append(
    drawerBody,
    h("p", { class: "mono small detail-id" }, id),
    summary,
    h("div", { class: "detail-actions" }, retryButton),
    treeTitle,
    treeSlot,
    io,
    h("h3", {}, "Attempts"),
    attemptsNote,
    attempts,
    h("h3", {}, "Events"),
    streamNote,
    events,
  );
  drawer.hidden = false;
  let lastSeq = 0n;
  let lastState: TaskState | undefined;

  let current: Task | undefined;
  /** The tree, once this task is known to have children; `treeSeq` is its stream's
   * cursor (the last seq of any node's event: WatchTask's after_seq on a tree). */
  let tree: TreeView | undefined;
  let treeSeq = 0n;
  const addEvent = (ev: TaskEvent) => {
    if (ev.seq !== 0n && ev.seq <= lastSeq) return;
    if (ev.seq > lastSeq) lastSeq = ev.seq;
    if (current && foldEvent(current, ev)) renderSummary(current);
    // A new attempt, or one that ended: the history changed.
    if (ev.state !== lastState || isTerminal(ev.state)) scheduleAttempts();
    lastState = ev.state;
    const name = stateName(ev.state);
    const text =
      ev.message ||
      (ev.error ? `${ev.error.code}: ${ev.error.message}` : "") ||
      (ev.progress ? `${Math.round(ev.progress.fraction * 100)}% ${ev.progress.message}` : "") ||
      (ev.output ? `→ ${compactJson(ev.output, 80)}` : "");
    events.prepend(
      h(
        "li",
        { "data-testid": "detail-event", "data-state": name, "data-seq": String(ev.seq) },
        h("span", { class: "muted mono" }, `#${ev.seq}`),
        h("span", { class: `badge small state-${name.toLowerCase()}` }, name),
        h("span", { class: "ev-text" }, text),
        h("span", { class: "muted nowrap" }, formatClock(tsMillis(ev.time))),
      ),
    );
  };

  const renderSummary = (t: Task) => {
    const name = stateName(t.state);
    clear(summary);
    append(
      summary,
      kv("kind", h("span", { class: "mono" }, t.kind)),
      kv("state", h("span", { class: `badge state-${name.toLowerCase()}`, "data-testid": "detail-state" }, name)),
      t.run > 1 ? kv("run", h("span", { "data-testid": "detail-run", title: `retried ${t.run - 1} time${t.run > 2 ? "s" : ""}` }, String(t.run))) : null,
      kv("attempt", `${t.attempt} of ${t.maxAttempts}`),
      kv("progress", progressText),
      t.parentId ? kv("parent", h("button", { class: "link mono", "data-testid": "detail-parent", title: t.parentId, onclick: () => openDetail(t.parentId) }, shortId(t.parentId))) : null,
      t.children?.total ? kv("children", h("span", { "data-testid": "detail-children" }, childCounts(t))) : null,
      kv("labels", Object.entries(t.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "—"),
      kv("created", formatClock(tsMillis(t.createdAt))),
      t.runAt ? kv("run at", h("span", { "data-testid": "detail-run-at" }, formatClock(tsMillis(t.runAt)))) : null,
      kv("started", formatClock(tsMillis(t.startedAt))),
      kv("finished", formatClock(tsMillis(t.finishedAt))),
    );
    clear(io);
    append(
      io,
      h("h3", {}, "Input"),
      h("pre", { class: "json" }, prettyJson(t.input) || "—"),
      t.output ? h("h3", {}, "Output") : null,
      t.output ? h("pre", { class: "json" }, prettyJson(t.output)) : null,
      t.error ? h("h3", {}, "Error") : null,
      t.error ? h("pre", { class: "json bad" }, `${t.error.code}${t.error.retryable ? " (retryable)" : ""}\n${t.error.message}`) : null,
    );
    retryButton.hidden = t.state !== TaskState.FAILED;
    renderProgress();
  };

  // A parent's events report its own step's progress: with a tree, its bar is the tree's.
  const renderProgress = () => {
    const fraction = tree?.fraction(id) ?? current?.progress?.fraction ?? 0;
    progressText.textContent = `${Math.round(fraction * 100)}% ${current?.progress?.message ?? ""}`;
  };

  const startTree = () => {
    if (tree || abort.signal.aborted) return;
    const view = createTreeView({
      rootId: id,
      root: current,
      listChildren,
      open: (other) => {
        if (other !== id) openDetail(other);
      },
      onRootProgress: renderProgress,
    });
    tree = view;
    abort.signal.addEventListener("abort", () => view.stop(), { once: true });
    treeSlot.appendChild(view.el);
    treeTitle.hidden = false;
    treeSlot.hidden = false;
  };

  // ListAttempts, again whenever an attempt starts or ends (a burst collapses into one).
  let attemptsTimer: number | undefined;
  let attemptsGeneration = 0;
  const loadAttempts = async () => {
    const generation = ++attemptsGeneration;
    try {
      const res = await api.tasks.listAttempts({ taskId: id }, { timeoutMs: UNARY_TIMEOUT_MS, signal: abort.signal });
      if (generation !== attemptsGeneration || abort.signal.aborted) return;
      clear(attempts);
      for (const a of res.attempts) attempts.appendChild(attemptLine(a));
      attemptsNote.textContent = res.attempts.length === 0 ? "No attempt yet." : "";
      attemptsNote.hidden = res.attempts.length > 0;
      attempts.dataset.count = String(res.attempts.length);
    } catch (err) {
      if (generation !== attemptsGeneration || abort.signal.aborted) return;
      const { code, message } = describeError(err);
      attemptsNote.textContent = `Could not read the attempts — ${authProblem(err, "ListAttempts")?.text ?? `${code}: ${message}`}`;
      attemptsNote.hidden = false;
    }
  };
  const scheduleAttempts = () => {
    if (attemptsTimer !== undefined) return;
    attemptsTimer = window.setTimeout(() => {
      attemptsTimer = undefined;
      void loadAttempts();
    }, 250);
  };
  abort.signal.addEventListener("abort", () => window.clearTimeout(attemptsTimer), { once: true });

  // WatchTask: after_seq = 0 first sends the current state; after a drop, resume
  // with after_seq = the last seq received. The stream ends after the terminal event;
  // a retry (a new run) starts it again from there. On a tree (tree = true), after_seq
  // = 0 replays every node's history, and the cursor is the tree's.
  let watching = false;
  /** The open stream's own abort: switching to the tree ends it for a tree stream. */
  let stream: AbortController | undefined;
  let switching = false;
  const switchToTree = () => {
    if (tree) return;
    startTree();
    if (watching) {
      switching = true;
      stream?.abort();
    } else void watch();
  };
  const watch = async () => {
    if (watching || abort.signal.aborted || !current) return;
    watching = true;
    let failures = 0;
    try {
      while (!abort.signal.aborted) {
        streamNote.textContent = tree ? "watching the tree…" : "watching…";
        const ac = new AbortController();
        stream = ac;
        const stop = () => ac.abort();
        abort.signal.addEventListener("abort", stop, { once: true });
        try {
          const req = tree ? { taskId: id, afterSeq: treeSeq, tree: true } : { taskId: id, afterSeq: lastSeq };
          for await (const ev of api.watch.watchTask(req, { signal: ac.signal, timeoutMs: 0 })) {
            failures = 0;
            if (req.tree) {
              if (ev.seq > treeSeq) treeSeq = ev.seq;
              tree?.apply(ev);
              if (ev.taskId !== id) continue;
            }
            addEvent(ev);
            // Its step started children: watch its tree from here on.
            if (ev.state === TaskState.WAITING) switchToTree();
            if (isTerminal(ev.state)) {
              // The final record (output, finished_at, the exact run) once the task is done.
              const t = await api.tasks.getStatus({ taskId: id }, { timeoutMs: UNARY_TIMEOUT_MS, signal: abort.signal });
              if (!current || t.lastSeq >= current.lastSeq) {
                current = t;
                renderSummary(t);
              }
              // Children that outlived it (ABANDON) or that a client added: its tree.
              if (isTreeTask(t)) switchToTree();
            }
          }
          if (switching) {
            switching = false;
            continue;
          }
          streamNote.textContent = "finished";
          return;
        } catch (err) {
          if (abort.signal.aborted) return;
          if (switching) {
            switching = false;
            continue;
          }
          const ce = ConnectError.from(err);
          if (ce.code === Code.NotFound || ce.code === Code.InvalidArgument) {
            streamNote.textContent = `${describeError(ce).code}: ${ce.rawMessage}`;
            return;
          }
          const auth = authProblem(ce, "WatchTask");
          if (auth) {
            streamNote.textContent = auth.text;
            return;
          }
          failures++;
          const delay = Math.min(10_000, 500 * 2 ** Math.min(failures - 1, 5));
          const cursor = tree ? treeSeq : lastSeq;
          streamNote.textContent = `disconnected (${describeError(ce).code}); resuming after #${cursor} in ${Math.ceil(delay / 1000)}s`;
          await sleep(delay, abort.signal);
        } finally {
          abort.signal.removeEventListener("abort", stop);
          ac.abort(); // a stream left early (a switch) must not stay open
        }
      }
    } finally {
      watching = false;
    }
  };

  detail = {
    id,
    abort,
    update: (t) => {
      if (current && t.lastSeq < current.lastSeq) return;
      current = t;
      renderSummary(t);
      scheduleAttempts();
      if (isTreeTask(t)) switchToTree();
    },
    resume: () => void watch(),
    seen: (ev) => {
      if (!watching && ev.seq > lastSeq) void watch();
    },
  };

  void (async () => {
    try {
      current = await api.tasks.getStatus({ taskId: id }, { timeoutMs: UNARY_TIMEOUT_MS, signal: abort.signal });
      renderSummary(current);
      if (isTreeTask(current)) startTree();
    } catch (err) {
      if (abort.signal.aborted) return;
      const { code, message } = describeError(err);
      summary.textContent = authProblem(err, "GetStatus")?.text ?? `${code}: ${message}`;
      attemptsNote.textContent = "";
      return;
    }
    void loadAttempts();
    await watch();
  })();
}

// ---------------------------------------------------------------------------------
// Start

$('[data-testid="grpc-url"]').textContent = api.baseUrl;
if (api.watchUrl !== api.baseUrl) $('[data-testid="grpc-url"]').title = `TaskService: ${api.baseUrl}\nWatchService: ${api.watchUrl}`;
initApiKeyControl();
// Another key can mean another tenant (other tasks) or another role: start over.
onApiKeyChange(() => {
  closeDetail();
  rows = new Map();
  selected.clear();
  early.clear();
  pageTokens = [""];
  nextPageToken = "";
  clear(tbody);
  listError.hidden = true;
  for (const el of [submitError, submitResult, submitWarning]) el.hidden = true;
  resetDeadLetterCount();
  renderSelection();
  void loadPage();
  startStream();
  restartQueues();
});
/** How often the page lists again while a parent's row has not ended (seconds). */
const WAITING_RELIST_S = 3;
let ticks = 0;
window.setInterval(() => {
  let waiting = false;
  for (const row of rows.values()) {
    if (row.task.startedAt && !isTerminal(row.task.state)) renderDuration(row);
    if (row.task.state === TaskState.SCHEDULED) renderRunAt(row);
    if (isParent(row.task) && !isTerminal(row.task.state)) waiting = true;
  }
  watchDueRows();
  // A parent's progress and child counts move with its children, whose events on
  // WatchTasks do not name it: its record (the tree's progress) is read again until it
  // ends, so the row converges even if the live feed missed one of its own events.
  if (waiting && ++ticks % WAITING_RELIST_S === 0) scheduleReload(0);
}, 1000);
void loadPage();
startStream();
startQueues(api);
