// The one place that knows how to reach taskwire: a grpc-web transport (binary
// protobuf over HTTP/1.1 fetch) and typed clients for the two services.
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { TaskService, WatchService } from "./gen/taskwire/v1/service_pb";

declare global {
  interface Window {
    /** Set by /config.js, which `taskwire dev --web-dir` serves next to the dashboard. */
    TASKWIRE_GRPC_URL?: string;
  }
}

/** The gRPC (grpc-web) base URL: window.TASKWIRE_GRPC_URL, else this page's origin. */
export function grpcBaseUrl(): string {
  const configured = typeof window.TASKWIRE_GRPC_URL === "string" ? window.TASKWIRE_GRPC_URL.trim() : "";
  return (configured || window.location.origin).replace(/\/+$/, "");
}

export interface Api {
  baseUrl: string;
  tasks: Client<typeof TaskService>;
  watch: Client<typeof WatchService>;
}

export function createApi(baseUrl = grpcBaseUrl()): Api {
  const transport = createGrpcWebTransport({ baseUrl, useBinaryFormat: true });
  return {
    baseUrl,
    tasks: createClient(TaskService, transport),
    watch: createClient(WatchService, transport),
  };
}
