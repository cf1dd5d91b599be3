// Dead letters: the FAILED tasks, and what an operator does with them. Shown while the
// list's state filter is FAILED (the "Dead letters" button sets it): retry one task from
// its row (RetryTask: a new run under the same id), the selected rows (RetryTask each),
// or every FAILED task matching the list's kind and label filter (RetryTasks), or
// discard those (DiscardTasks). A bulk call is two steps, as the contract wants: a dry
// run counts the tasks and answers `finished_before`, the moment of that count; the
// confirmation dialog says how many; the real run passes `finished_before` back, so it
// changes exactly the tasks counted (never one that failed while the dialog was open),
// a call at a time (at most 1000 each) until `remaining` is 0. Every refusal is shown,
// in the bar and as a toast.
import { Code, ConnectError } from "@connectrpc/connect";
import type { Api } from "./api";
import { authProblem } from "./auth";
import { $ } from "./dom";
import { describeError, formatClock, shortId, tsMillis } from "./format";
import type { BulkTasksResponse } from "./gen/taskwire/v1/service_pb";
import type { Task } from "./gen/taskwire/v1/task_pb";

const UNARY_TIMEOUT_MS = 15_000;
/** One bulk call retries up to 1000 tasks (16 at a time on the server): give it time. */
const BULK_TIMEOUT_MS = 120_000;
/** Calls in a row that changed nothing while tasks remained, before giving up. */
const MAX_STALLS = 3;
/** Retry selected: RetryTask calls in flight at once (the stream holds one of the
 * browser's ~6 connections per host). */
const PARALLEL = 4;
/** Least time between two dry runs that only refresh the count on the buttons. */
const COUNT_INTERVAL_MS = 2_000;

export type Action = "retry" | "discard";

export interface DeadLetterHooks {
  api: Api;
  /** The list's kind and label filter: what a bulk call applies to. */
  scope(): { kind: string; labels: Record<string, string> };
  /** Ids of the selected rows (FAILED ones only). */
  selected(): string[];
  /** RetryTask answered: the task as it is now (its new run). */
  retried(task: Task): void;
  /** RetryTask was refused because the page's view of the task is out of date
   * (FAILED_PRECONDITION: not FAILED any more; NOT_FOUND: discarded): read it again. */
  stale(id: string): void;
  /** Tasks were retried or discarded in bulk: list again. */
  changed(action: Action, ids: string[]): void;
  toast(text: string, kind: "ok" | "error"): void;
}

let hooks: DeadLetterHooks;
let active = false;

const bar = $('[data-testid="dead-letters-bar"]');
const scopeText = $('[data-testid="dead-letters-scope"]', bar);
const errorBox = $('[data-testid="dead-letters-error"]', bar);
const resultBox = $('[data-testid="dead-letters-result"]', bar);
const retrySelectedBtn = $<HTMLButtonElement>('[data-testid="retry-selected"]', bar);
const retryAllBtn = $<HTMLButtonElement>('[data-testid="retry-all"]', bar);
const discardAllBtn = $<HTMLButtonElement>('[data-testid="discard-all"]', bar);

const dialog = $<HTMLDialogElement>('[data-testid="confirm-dialog"]');
const dialogTitle = $('[data-testid="confirm-title"]', dialog);
const dialogMessage = $('[data-testid="confirm-message"]', dialog);
const dialogDetail = $('[data-testid="confirm-detail"]', dialog);
const dialogProgress = $('[data-testid="confirm-progress"]', dialog);
const dialogError = $('[data-testid="confirm-error"]', dialog);
const dialogOk = $<HTMLButtonElement>('[data-testid="confirm-ok"]', dialog);
const dialogCancel = $<HTMLButtonElement>('[data-testid="confirm-cancel"]', dialog);

export function initDeadLetters(h: DeadLetterHooks): void {
  hooks = h;
  retrySelectedBtn.addEventListener("click", () => void retrySelected());
  retryAllBtn.addEventListener("click", () => void bulkAll("retry"));
  discardAllBtn.addEventListener("click", () => void bulkAll("discard"));
  dialogOk.addEventListener("click", () => answer(true));
  dialogCancel.addEventListener("click", () => answer(false));
  // Escape: a cancel, except while a bulk run is under way (it cannot be taken back).
  dialog.addEventListener("cancel", (ev) => {
    ev.preventDefault();
    if (!dialogCancel.disabled) answer(false);
  });
  updateSelection(0);
}

/** Shows or hides the bar (the list's state filter is FAILED, or not). */
export function setDeadLetterMode(on: boolean): void {
  const was = active;
  active = on;
  bar.hidden = !on;
  if (!on) {
    count = undefined;
    renderCount();
    return;
  }
  const { kind, labels } = hooks.scope();
  scopeText.textContent = `FAILED tasks ${describeScope(kind, labels)}`;
  scopeText.dataset.kind = kind;
  if (!was) clearNotices();
}

export function isDeadLetterMode(): boolean {
  return active;
}

/** "Retry selected (2)", disabled when nothing is selected. */
export function updateSelection(n: number): void {
  retrySelectedBtn.disabled = n === 0 || busy;
  retrySelectedBtn.textContent = n > 0 ? `Retry selected (${n})` : "Retry selected";
  retrySelectedBtn.dataset.count = String(n);
}

// ---------------------------------------------------------------------------------
// Notices

function clearNotices(): void {
  errorBox.hidden = true;
  errorBox.textContent = "";
  resultBox.hidden = true;
  resultBox.textContent = "";
}

function showError(text: string): void {
  errorBox.textContent = text;
  errorBox.hidden = false;
  hooks.toast(text, "error");
}

function showResult(text: string, action: Action | "", n: number): void {
  resultBox.textContent = text;
  resultBox.dataset.action = action;
  resultBox.dataset.count = String(n);
  resultBox.hidden = false;
}

function callError(err: unknown, method: string): string {
  const auth = authProblem(err, method);
  if (auth) return auth.text;
  const { code, message } = describeError(err);
  return `${code}: ${message}`;
}

// ---------------------------------------------------------------------------------
// One task, and the selected ones

/**
 * RetryTask: starts the task's next run. Answers the task as it is then, or undefined
 * when the server refused (the reason is shown: a toast, and the bar when it is up).
 */
export async function retryTask(id: string, quiet = false): Promise<Task | undefined> {
  try {
    const task = await hooks.api.tasks.retryTask({ taskId: id }, { timeoutMs: UNARY_TIMEOUT_MS });
    hooks.retried(task);
    if (!quiet) hooks.toast(`Retrying ${shortId(id)}: run ${task.run}`, "ok");
    return task;
  } catch (err) {
    const text = `Could not retry ${shortId(id)} — ${callError(err, "RetryTask")}`;
    if (!quiet) {
      if (active) {
        errorBox.textContent = text;
        errorBox.hidden = false;
      }
      hooks.toast(text, "error");
    }
    const code = ConnectError.from(err).code;
    if (code === Code.FailedPrecondition || code === Code.NotFound) hooks.stale(id);
    if (quiet) throw new Error(text);
    return undefined;
  }
}

let busy = false;

async function retrySelected(): Promise<void> {
  const ids = hooks.selected();
  if (ids.length === 0 || busy) return;
  clearNotices();
  busy = true;
  retrySelectedBtn.disabled = true;
  retrySelectedBtn.textContent = `Retrying ${ids.length}…`;
  const failures: string[] = [];
  let retried = 0;
  const queue = [...ids];
  const worker = async () => {
    for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
      try {
        await retryTask(id, true);
        retried++;
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(PARALLEL, ids.length) }, worker));
  } finally {
    busy = false;
    updateSelection(hooks.selected().length);
  }
  if (retried > 0) {
    showResult(`Retried ${plural(retried, "task")}: each starts a new run.`, "retry", retried);
    hooks.toast(`Retried ${plural(retried, "task")}`, "ok");
  }
  if (failures.length > 0) {
    const shown = failures.slice(0, 5).join("\n");
    showError(failures.length > 5 ? `${shown}\n… and ${failures.length - 5} more` : shown);
  }
  refreshDeadLetterCount(true);
}

// ---------------------------------------------------------------------------------
// All matching: dry run, confirmation, then the real run in as many calls as it takes

function bulkCall(action: Action, req: Parameters<Api["tasks"]["retryTasks"]>[0], timeoutMs: number): Promise<BulkTasksResponse> {
  return action === "retry"
    ? hooks.api.tasks.retryTasks(req, { timeoutMs })
    : hooks.api.tasks.discardTasks(req, { timeoutMs });
}

const METHOD: Record<Action, string> = { retry: "RetryTasks", discard: "DiscardTasks" };

async function bulkAll(action: Action): Promise<void> {
  if (busy) return;
  clearNotices();
  const { kind, labels } = hooks.scope();
  const scope = describeScope(kind, labels);
  const button = action === "retry" ? retryAllBtn : discardAllBtn;
  busy = true;
  setBulkButtonsDisabled(true);
  button.textContent = "Counting…";
  let dry: BulkTasksResponse;
  try {
    dry = await bulkCall(action, { kind, labels, dryRun: true }, UNARY_TIMEOUT_MS);
  } catch (err) {
    busy = false;
    setBulkButtonsDisabled(false);
    renderCount();
    showError(`Could not count the failed tasks ${scope} — ${callError(err, METHOD[action])}`);
    return;
  }
  const n = Number(dry.matched);
  count = n;
  countKey = scopeKey(kind, labels);
  busy = false;
  setBulkButtonsDisabled(false);
  renderCount();
  if (n === 0) {
    showResult(`No failed tasks ${scope}: nothing to ${action}.`, action, 0);
    return;
  }
  const at = tsMillis(dry.finishedBefore);
  const verb = action === "retry" ? "Retry" : "Discard";
  dialog.dataset.action = action;
  dialog.dataset.count = String(n);
  dialogTitle.textContent = action === "retry" ? "Retry dead letters" : "Discard dead letters";
  dialogMessage.textContent = `${verb} all ${plural(n, "failed task")} ${scope}?`;
  dialogDetail.textContent =
    (action === "retry"
      ? "Each starts a new run under the same id (QUEUED again, attempts from 1). "
      : "They are deleted: they can no longer be read or retried. ") +
    `Exactly the ${n === 1 ? "one" : n} counted at ${formatClock(at)}: tasks that fail after that are left alone.`;
  dialogOk.textContent = `${verb} ${n}`;
  dialogOk.classList.toggle("danger-fill", action === "discard");
  if (!(await ask())) return;

  // Confirmed: the real run, with the dry run's moment, until nothing is left.
  busy = true;
  setBulkButtonsDisabled(true);
  dialogOk.disabled = true;
  dialogCancel.disabled = true;
  dialogProgress.hidden = false;
  const past = action === "retry" ? "Retried" : "Discarded";
  dialogProgress.textContent = `${action === "retry" ? "Retrying" : "Discarding"} ${n}…`;
  const ids: string[] = [];
  let done = 0;
  let failure = "";
  try {
    let stalls = 0;
    for (;;) {
      const res = await bulkCall(action, { kind, labels, finishedBefore: dry.finishedBefore }, BULK_TIMEOUT_MS);
      done += Number(res.matched);
      ids.push(...res.taskIds);
      const remaining = Number(res.remaining);
      dialogProgress.textContent = `${past} ${done} of ${n}${remaining > 0 ? `, ${remaining} to go…` : "."}`;
      if (remaining === 0) break;
      stalls = res.matched === 0n ? stalls + 1 : 0;
      if (stalls >= MAX_STALLS) {
        failure = `${past} ${done} of ${n}; the server changed none of the ${remaining} left in ${MAX_STALLS} calls. Try again.`;
        break;
      }
    }
  } catch (err) {
    failure = `${past} ${done} of ${n}, then: ${callError(err, METHOD[action])}`;
  }
  busy = false;
  setBulkButtonsDisabled(false);
  dialogCancel.disabled = false;
  if (failure) {
    // Stays open to say so, with Close; the bar says it too.
    dialogError.textContent = failure;
    dialogError.hidden = false;
    dialogOk.hidden = true;
    dialogCancel.textContent = "Close";
    showError(failure);
  } else {
    closeDialog();
    hooks.toast(`${past} ${plural(done, "task")}`, "ok");
  }
  if (done > 0) showResult(`${past} ${plural(done, "failed task")} ${scope}.`, action, done);
  count = undefined;
  renderCount();
  hooks.changed(action, ids);
  refreshDeadLetterCount(true);
}

let pending: ((ok: boolean) => void) | undefined;

/** Opens the dialog as it was filled in; true when OK is pressed. */
function ask(): Promise<boolean> {
  dialogError.hidden = true;
  dialogError.textContent = "";
  dialogProgress.hidden = true;
  dialogProgress.textContent = "";
  dialogOk.hidden = false;
  dialogOk.disabled = false;
  dialogCancel.disabled = false;
  dialogCancel.textContent = "Cancel";
  pending?.(false);
  if (!dialog.open) dialog.showModal();
  dialogOk.focus();
  return new Promise((resolve) => {
    pending = resolve;
  });
}

function answer(ok: boolean): void {
  const resolve = pending;
  pending = undefined;
  if (!ok) closeDialog();
  resolve?.(ok);
}

function closeDialog(): void {
  if (dialog.open) dialog.close();
  delete dialog.dataset.action;
}

// ---------------------------------------------------------------------------------
// The count on the bulk buttons: a dry run now and then while the bar is up

let count: number | undefined;
/** The scope `count` was read for. */
let countKey = "";
let countTimer: number | undefined;
let countInFlight = false;
/** Asked for while a read was in flight: read again right after it. */
let countAgain = false;
let lastCountAt = 0;
let countRefused = false;

function scopeKey(kind: string, labels: Record<string, string>): string {
  return JSON.stringify([kind, Object.entries(labels).sort()]);
}

/** Reads the count again (soon, at most every COUNT_INTERVAL_MS) while the bar is up. */
export function refreshDeadLetterCount(soon = false): void {
  if (!active || countRefused || countTimer !== undefined) return;
  const wait = soon ? 300 : Math.max(0, lastCountAt + COUNT_INTERVAL_MS - Date.now());
  countTimer = window.setTimeout(() => {
    countTimer = undefined;
    void readCount();
  }, wait);
}

async function readCount(): Promise<void> {
  if (!active) return;
  if (countInFlight) {
    countAgain = true;
    return;
  }
  countInFlight = true;
  lastCountAt = Date.now();
  const { kind, labels } = hooks.scope();
  const key = scopeKey(kind, labels);
  try {
    const res = await hooks.api.tasks.retryTasks({ kind, labels, dryRun: true }, { timeoutMs: UNARY_TIMEOUT_MS });
    if (key !== scopeKey(hooks.scope().kind, hooks.scope().labels)) return; // the filter changed meanwhile
    count = Number(res.matched);
    countKey = key;
    retryAllBtn.removeAttribute("title");
  } catch (err) {
    count = undefined;
    // A key that may not retry gets no more counts (the notice by the key says why).
    if (ConnectError.from(err).code === Code.PermissionDenied) countRefused = true;
    retryAllBtn.title = `Could not count them: ${callError(err, "RetryTasks")}`;
  } finally {
    countInFlight = false;
    renderCount();
    if (countAgain) {
      countAgain = false;
      refreshDeadLetterCount(true);
    }
  }
}

/** A new API key: counting may be allowed again. */
export function resetDeadLetterCount(): void {
  countRefused = false;
  count = undefined;
  renderCount();
}

function renderCount(): void {
  if (busy) return;
  const { kind, labels } = active ? hooks.scope() : { kind: "", labels: {} };
  const n = count !== undefined && countKey === scopeKey(kind, labels) ? count : undefined;
  const label = n === undefined ? "all matching…" : `all ${n} matching…`;
  retryAllBtn.textContent = `Retry ${label}`;
  discardAllBtn.textContent = `Discard ${label}`;
  for (const b of [retryAllBtn, discardAllBtn]) {
    if (n === undefined) delete b.dataset.count;
    else b.dataset.count = String(n);
  }
}

function setBulkButtonsDisabled(disabled: boolean): void {
  retryAllBtn.disabled = disabled;
  discardAllBtn.disabled = disabled;
  retrySelectedBtn.disabled = disabled || hooks.selected().length === 0;
}

// ---------------------------------------------------------------------------------
// Words

/** "of kind demo.fail with labels team=ml", "of every kind". */
export function describeScope(kind: string, labels: Record<string, string>): string {
  const pairs = Object.entries(labels).map(([k, v]) => `${k}=${v}`);
  const l = pairs.length ? ` with label${pairs.length > 1 ? "s" : ""} ${pairs.join(", ")}` : "";
  return `${kind ? `of kind ${kind}` : "of every kind"}${l}`;
}

function plural(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}
