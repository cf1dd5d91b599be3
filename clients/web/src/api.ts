// The one place that knows how to reach taskwire: grpc-web transports (binary protobuf
// over HTTP/1.1 fetch) and typed clients for the two services. Every call carries the
// API key, when one is set (auth.ts). submitTasks sends a batch and sorts its answer
// into what was accepted and what was refused.
import { Code, createClient, type CallOptions, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { authInterceptor } from "./auth";
import {
  TaskService,
  WatchService,
  type SubmitTaskRequest,
  type SubmitTaskResponse,
} from "./gen/taskwire/v1/service_pb";

declare global {
  interface Window {
    /** Set by /config.js, which `taskwire dev` serves next to the dashboard. */
    TASKWIRE_GRPC_URL?: string;
    /** Where WatchService is, when it runs apart from TaskService (taskwire-watch next
     * to taskwire-api); default: TASKWIRE_GRPC_URL. */
    TASKWIRE_WATCH_URL?: string;
  }
}

function configured(value: unknown): string {
  return typeof value === "string" ? value.trim().replace(/\/+$/, "") : "";
}

/** The gRPC (grpc-web) base URL: window.TASKWIRE_GRPC_URL, else this page's origin. */
export function grpcBaseUrl(): string {
  return configured(window.TASKWIRE_GRPC_URL) || window.location.origin.replace(/\/+$/, "");
}

/** WatchService's base URL: window.TASKWIRE_WATCH_URL, else the gRPC base URL. */
export function watchBaseUrl(): string {
  return configured(window.TASKWIRE_WATCH_URL) || grpcBaseUrl();
}

export interface Api {
  baseUrl: string;
  watchUrl: string;
  tasks: Client<typeof TaskService>;
  watch: Client<typeof WatchService>;
}

export function createApi(baseUrl = grpcBaseUrl(), watchUrl = watchBaseUrl()): Api {
  const transport = (url: string) =>
    createGrpcWebTransport({ baseUrl: url, useBinaryFormat: true, interceptors: [authInterceptor] });
  const tasks = transport(baseUrl);
  return {
    baseUrl,
    watchUrl,
    tasks: createClient(TaskService, tasks),
    watch: createClient(WatchService, watchUrl === baseUrl ? tasks : transport(watchUrl)),
  };
}

/** A batch's answer, each task by its place in the request (0-based). */
export interface BatchSubmitted {
  /** Accepted (or deduplicated by its idempotency key), in request order. */
  accepted: { index: number; response: SubmitTaskResponse }[];
  /** Refused, with what SubmitTask would have answered for that task alone (code: a
   * gRPC status code), in request order. */
  refused: { index: number; code: number; message: string }[];
}

/**
 * SubmitTasks: 1 to 1000 tasks in one call (one request instead of as many SubmitTask
 * round trips, each holding one of the browser's few connections). A refused task does
 * not hold back the others, so the call succeeds with a result per task; it throws only
 * when the whole call is refused (an empty or too large batch, the submit rate, auth).
 */
export async function submitTasks(api: Api, tasks: SubmitTaskRequest[], options?: CallOptions): Promise<BatchSubmitted> {
  const res = await api.tasks.submitTasks({ tasks }, options);
  // Results are matched to tasks by position: an answer of another length could not be.
  if (res.results.length !== tasks.length) {
    throw new Error(`SubmitTasks answered ${res.results.length} results for ${tasks.length} tasks`);
  }
  const out: BatchSubmitted = { accepted: [], refused: [] };
  res.results.forEach((result, index) => {
    const outcome = result.outcome;
    if (outcome.case === "accepted") out.accepted.push({ index, response: outcome.value });
    else if (outcome.case === "error") out.refused.push({ index, code: outcome.value.code, message: outcome.value.message });
    // An outcome this build does not know (a newer server): not known to be accepted.
    else out.refused.push({ index, code: Code.Unknown, message: "the server's answer for this task is not one this page knows" });
  });
  return out;
}
