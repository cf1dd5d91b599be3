// Small pure helpers: state names, time and JSON formatting, label parsing, errors.
import { toJson, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, timestampDate, type Timestamp, type Value } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { TaskState } from "./gen/taskwire/v1/task_pb";

export const TERMINAL = new Set<TaskState>([TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED]);

export function isTerminal(state: TaskState): boolean {
  return TERMINAL.has(state);
}

/** "RUNNING" for TaskState.RUNNING; "UNKNOWN" for values this build does not know. */
export function stateName(state: TaskState): string {
  return TaskState[state] ?? "UNKNOWN";
}

/** The states a list can be filtered by, in the order a task goes through them. */
export const FILTER_STATES: TaskState[] = [
  TaskState.SCHEDULED,
  TaskState.QUEUED,
  TaskState.RUNNING,
  // A parent whose step started children, until they are all done (then RUNNING again).
  TaskState.WAITING,
  TaskState.RETRYING,
  TaskState.SUCCEEDED,
  TaskState.FAILED,
  TaskState.CANCELLED,
];

export function tsMillis(ts: Timestamp | undefined): number | undefined {
  if (!ts) return undefined;
  const ms = timestampDate(ts).getTime();
  return ms > 0 ? ms : undefined;
}

export function formatClock(ms: number | undefined): string {
  if (ms === undefined) return "—";
  const d = new Date(ms);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour12: false });
  return d.toDateString() === today.toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

export function formatDuration(ms: number | undefined): string {
  if (ms === undefined || ms < 0) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.floor(s % 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

/** "in 42 s", "in 5m 3s", "now": how long until a time ahead (ms from now). */
export function formatCountdown(ms: number): string {
  if (ms < 500) return "now";
  const s = Math.round(ms / 1000);
  if (s < 60) return `in ${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `in ${m}m ${s % 60}s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `in ${hours}h ${m % 60}m`;
  return `in ${Math.floor(hours / 24)}d ${hours % 24}h`;
}

/** The longest delay the server takes (SubmitTaskRequest.delay: at most 366 days). */
export const MAX_DELAY_MS = 366 * 24 * 3600 * 1000;

const DELAY_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Parses a delay: a number of seconds ("90", "2.5") or amounts with units, ms s m h d
 * ("30s", "5m", "1h30m"). Empty means none (undefined). Throws, saying why, on text
 * it cannot read or a delay outside (0, 366 days].
 */
export function parseDelay(text: string): number | undefined {
  const t = text.trim().toLowerCase().replace(/\s+/g, "");
  if (t === "") return undefined;
  let ms: number;
  if (/^\d+(\.\d+)?$/.test(t)) {
    ms = Number(t) * 1000;
  } else if (/^(\d+(\.\d+)?(ms|s|m|h|d))+$/.test(t)) {
    ms = 0;
    for (const [, n, unit] of t.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g)) ms += Number(n) * DELAY_UNITS[unit];
  } else {
    throw new Error(`"${text.trim()}" is not a delay: give seconds (90) or e.g. 30s, 5m, 1h30m, 2d`);
  }
  ms = Math.round(ms);
  if (!(ms > 0)) throw new Error("must be more than 0 (leave it empty to start at once)");
  if (ms > MAX_DELAY_MS) throw new Error("must be at most 366 days");
  return ms;
}

export function valueToJson(v: Value | undefined): JsonValue | undefined {
  return v ? toJson(ValueSchema, v) : undefined;
}

export function prettyJson(v: Value | undefined): string {
  const j = valueToJson(v);
  return j === undefined ? "" : JSON.stringify(j, null, 2);
}

export function compactJson(v: Value | undefined, max = 80): string {
  const j = valueToJson(v);
  if (j === undefined) return "";
  const s = JSON.stringify(j);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** Parses "k=v, k2=v2" (comma or whitespace separated). Throws on a malformed pair. */
export function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const part of text.split(/[,\s]+/)) {
    if (!part) continue;
    const eq = part.indexOf("=");
    if (eq <= 0) throw new Error(`label "${part}" is not key=value`);
    labels[part.slice(0, eq)] = part.slice(eq + 1);
  }
  return labels;
}

/** "INVALID_ARGUMENT" for 3: a gRPC status code by its gRPC name (the number when unknown). */
export function codeName(code: number): string {
  const name = Code[code as Code];
  // Connect names codes in camelCase ("InvalidArgument"); show the gRPC spelling.
  return name ? name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase() : String(code);
}

/** "UNAVAILABLE: nats cannot be reached" for a ConnectError; the message otherwise. */
export function describeError(err: unknown): { code: string; message: string } {
  const ce = ConnectError.from(err);
  return { code: codeName(ce.code), message: ce.rawMessage || "(no message)" };
}

/** The most copies the submit form sends: one SubmitTasks call takes 1 to 1000 tasks. */
export const MAX_COPIES = 1000;

/** Parses the submit form's copies: a whole number from 1 to MAX_COPIES; empty means 1.
 * Throws, saying why, on anything else. */
export function parseCopies(text: string): number {
  const t = text.trim();
  if (t === "") return 1;
  const n = Number(t);
  if (!Number.isInteger(n) || n < 1 || n > MAX_COPIES) throw new Error(`must be a whole number from 1 to ${MAX_COPIES}, not "${t}"`);
  return n;
}

/** "1–3, 7, 9–12" for [1, 2, 3, 7, 9, 10, 11, 12] (ascending): which copies of a batch. */
export function formatRanges(numbers: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < numbers.length; ) {
    let j = i;
    while (j + 1 < numbers.length && numbers[j + 1] === numbers[j] + 1) j++;
    parts.push(j === i ? String(numbers[i]) : `${numbers[i]}${j === i + 1 ? ", " : "–"}${numbers[j]}`);
    i = j + 1;
  }
  return parts.join(", ");
}

/** "…22808851": taskwire ids are UUIDv7, whose leading digits are a timestamp that
 * tasks submitted close together share, so the tail tells them apart. */
export function shortId(id: string): string {
  return id.length > 12 ? `…${id.slice(-8)}` : id;
}
