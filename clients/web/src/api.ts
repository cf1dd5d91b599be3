// The one place that knows how to reach taskwire: grpc-web transports (binary protobuf
// over HTTP/1.1 fetch) and typed clients for the two services. Every call carries the
// API key, when one is set (auth.ts).
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { authInterceptor } from "./auth";
import { TaskService, WatchService } from "./gen/taskwire/v1/service_pb";

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
