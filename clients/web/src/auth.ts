// The API key: a server run with `--auth keys` wants `authorization: Bearer <API key>` on
// every taskwire.v1 call. The key is pasted into the header's "API key" field, kept in
// localStorage (API_KEY_STORAGE) and sent by an interceptor on every call of both
// transports, unary and streaming. It is never logged, never put in a URL (the field
// has no name, so even a form submitted without this script sends nothing), and never
// shown again once saved. Calls refused with UNAUTHENTICATED or PERMISSION_DENIED are
// reported next to the field, in words, instead of as a bare status code.
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { $ } from "./dom";

/** The localStorage entry that holds the key. */
export const API_KEY_STORAGE = "taskwire.dashboard.apiKey";

/** What a refused call means for the person at the page. */
export interface AuthProblem {
  /** needs-key: no key set and the server wants one; bad-key: the key was refused;
   * forbidden: the key is valid but its role may not make this call. */
  kind: "needs-key" | "bad-key" | "forbidden";
  /** The method refused, e.g. "SubmitTask". */
  method: string;
  text: string;
}

/** What each method does, for "this key may not …". */
const ACTIONS: Record<string, string> = {
  SubmitTask: "submit tasks",
  SubmitTasks: "submit tasks",
  CancelTask: "cancel tasks",
  ListTasks: "list tasks",
  GetStatus: "read tasks",
  GetQueueStats: "read queue statistics (they need an admin key)",
  WatchTask: "watch tasks",
  WatchTasks: "watch tasks",
  RetryTask: "retry tasks",
  RetryTasks: "retry tasks",
  DiscardTasks: "discard tasks",
  ListAttempts: "read a task's attempts",
};

function readStored(): string {
  try {
    return (window.localStorage.getItem(API_KEY_STORAGE) ?? "").trim();
  } catch {
    return ""; // storage disabled: the key lives as long as the page
  }
}

let key = readStored();
/** Bumped whenever the key changes: answers to calls made with an older key are not
 * reported (they say nothing about the current one). */
let generation = 0;
const keyListeners: (() => void)[] = [];

/** The key set now ("" when none). */
export function apiKey(): string {
  return key;
}

/** Calls `fn` after the key changed (saved, cleared, or changed in another tab). */
export function onApiKeyChange(fn: () => void): void {
  keyListeners.push(fn);
}

function useKey(next: string): void {
  if (next === key) return;
  key = next;
  generation++;
  showNotice(undefined);
  renderControl();
  for (const fn of keyListeners) fn();
}

/** Stores `next` ("" clears it) and applies it to every call from now on. */
export function setApiKey(next: string): void {
  next = next.trim();
  try {
    if (next) window.localStorage.setItem(API_KEY_STORAGE, next);
    else window.localStorage.removeItem(API_KEY_STORAGE);
  } catch {
    // storage disabled: still used for this page
  }
  useKey(next);
}

/** The reason, in words, when `err` is UNAUTHENTICATED or PERMISSION_DENIED. */
export function authProblem(err: unknown, method: string, withKey = key !== ""): AuthProblem | undefined {
  const ce = ConnectError.from(err);
  const said = ce.rawMessage ? ` (the server says: ${ce.rawMessage})` : "";
  if (ce.code === Code.Unauthenticated) {
    return withKey
      ? { kind: "bad-key", method, text: `This server did not accept the API key${said}. Paste another one, or clear it.` }
      : { kind: "needs-key", method, text: "This server needs an API key: paste one into the API key field at the top." };
  }
  if (ce.code === Code.PermissionDenied) {
    return { kind: "forbidden", method, text: `This key may not ${ACTIONS[method] ?? `call ${method}`}${said}.` };
  }
  return undefined;
}

/** Sends the key on every call, and reports refusals (and the successes that end them)
 * to the notice next to the field. */
export const authInterceptor: Interceptor = (next) => async (req) => {
  const sentKey = key;
  const sentGeneration = generation;
  if (sentKey) req.header.set("authorization", `Bearer ${sentKey}`);
  const method = req.method.name;
  const current = () => sentGeneration === generation;
  try {
    const res = await next(req);
    if (current()) callSucceeded(method);
    if (!res.stream) return res;
    // A stream can also be refused after its headers (trailers carry the status).
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* messages;
        } catch (err) {
          if (current()) callFailed(err, method, sentKey !== "");
          throw err;
        }
      })(),
    };
  } catch (err) {
    if (current()) callFailed(err, method, sentKey !== "");
    throw err;
  }
};

// ---------------------------------------------------------------------------------
// The control in the header: a password field, Save and Clear, and the notice.

let form: HTMLFormElement | undefined;
let input: HTMLInputElement;
let clearButton: HTMLButtonElement;
let stateText: HTMLElement;
let notice: HTMLElement;
let shown: AuthProblem | undefined;

function callFailed(err: unknown, method: string, withKey: boolean): void {
  const problem = authProblem(err, method, withKey);
  if (!problem) return;
  // A non-admin key is the usual case: the Queues card says that itself.
  if (problem.kind === "forbidden" && method === "GetQueueStats") return;
  showNotice(problem);
}

function callSucceeded(method: string): void {
  // The server took the key (or needs none): a refusal of the key no longer holds, and
  // a refused method that now succeeds is allowed after all.
  if (shown && (shown.kind !== "forbidden" || shown.method === method)) showNotice(undefined);
}

function showNotice(problem: AuthProblem | undefined): void {
  shown = problem;
  if (!notice) return;
  notice.textContent = problem?.text ?? "";
  notice.dataset.kind = problem?.kind ?? "";
  notice.hidden = !problem;
}

function renderControl(): void {
  if (!form) return;
  form.dataset.hasKey = key ? "true" : "false";
  input.value = "";
  input.removeAttribute("aria-invalid");
  input.placeholder = key ? "saved · paste to replace" : "none";
  stateText.textContent = key ? "key set" : "no key";
  clearButton.hidden = !key;
}

/** Wires the header's API key field (index.html). */
export function initApiKeyControl(): void {
  form = $<HTMLFormElement>('[data-testid="api-key-form"]');
  input = $<HTMLInputElement>('[data-testid="api-key-input"]', form);
  clearButton = $<HTMLButtonElement>('[data-testid="api-key-clear"]', form);
  stateText = $('[data-testid="api-key-state"]', form);
  notice = $('[data-testid="api-key-notice"]');
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = input.value.trim();
    if (!value) {
      input.focus();
      return;
    }
    // It goes into an HTTP header: one line of visible ASCII.
    if (!/^[\x21-\x7e]+$/.test(value)) {
      input.setAttribute("aria-invalid", "true");
      showNotice({ kind: "bad-key", method: "", text: "An API key is one word of plain ASCII (e.g. twk_…): check what was pasted." });
      return;
    }
    setApiKey(value);
  });
  clearButton.addEventListener("click", () => setApiKey(""));
  // Saved or cleared in another tab of this dashboard.
  window.addEventListener("storage", (ev) => {
    if (ev.key === API_KEY_STORAGE || ev.key === null) useKey(readStored());
  });
  renderControl();
  showNotice(shown);
}
