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

export const FILTER_STATES: TaskState[] = [
  TaskState.QUEUED,
  TaskState.RUNNING,
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

/** "UNAVAILABLE: nats cannot be reached" for a ConnectError; the message otherwise. */
export function describeError(err: unknown): { code: string; message: string } {
  const ce = ConnectError.from(err);
  const code = Code[ce.code] ?? String(ce.code);
  // Connect names codes in camelCase ("InvalidArgument"); show the gRPC spelling.
  const grpc = code.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  return { code: grpc, message: ce.rawMessage || "(no message)" };
}

/** "…22808851": taskwire ids are UUIDv7, whose leading digits are a timestamp that
 * tasks submitted close together share, so the tail tells them apart. */
export function shortId(id: string): string {
  return id.length > 12 ? `…${id.slice(-8)}` : id;
}
