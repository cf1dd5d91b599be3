// The REST API page (api.html): the routes of the server's /openapi.json as a table of
// method, path and summary, with each route's parameters. Read-only and standalone, so
// it shares nothing with the dashboard's grpc-web code (and its bundle stays small).
// The document is generated from the proto by the server itself, so this list is
// always the one the server serves.
import { h } from "./dom";

interface Parameter {
  name: string;
  in: string;
  required?: boolean;
}

interface Operation {
  operationId?: string;
  summary?: string;
  description?: string;
  parameters?: Parameter[];
  requestBody?: unknown;
  responses?: Record<string, { content?: Record<string, unknown> }>;
}

interface Document {
  info?: { title?: string; version?: string; description?: string };
  paths?: Record<string, Record<string, Operation>>;
}

/** The order methods are listed in within one path. */
const METHODS = ["get", "post", "put", "patch", "delete"];

/**
 * REST is served where gRPC is: window.TASKWIRE_GRPC_URL (set by /config.js, declared
 * in api.ts), else this page's origin.
 */
function baseUrl(): string {
  const configured = typeof window.TASKWIRE_GRPC_URL === "string" ? window.TASKWIRE_GRPC_URL.trim() : "";
  return (configured || window.location.origin).replace(/\/+$/, "");
}

function byId<T extends HTMLElement>(testid: string): T {
  const el = document.querySelector<T>(`[data-testid="${testid}"]`);
  if (!el) throw new Error(`api.html has no [data-testid="${testid}"]`);
  return el;
}

/**
 * The description without the summary it starts with (the proto comment holds both),
 * compared with its line breaks as spaces: the summary may span the comment's lines.
 */
function details(op: Operation): string {
  const flat = (text: string | undefined) => (text ?? "").replace(/\s+/g, " ").trim();
  const description = flat(op.description);
  const summary = flat(op.summary);
  const rest = summary && description.startsWith(summary) ? description.slice(summary.length) : description;
  return rest.trim();
}

function parameters(op: Operation): Node {
  const params = op.parameters ?? [];
  if (params.length === 0 && !op.requestBody) return h("span", { class: "muted" }, "—");
  const list = h("span", { class: "params" });
  if (op.requestBody) list.append(h("code", { class: "param", title: "JSON body" }, "body"));
  for (const p of params) {
    list.append(
      h("code", { class: "param", title: `${p.in}${p.required ? ", required" : ""}` }, p.in === "header" ? `${p.name}:` : p.name),
    );
  }
  return list;
}

function render(doc: Document, url: string): void {
  const info = doc.info ?? {};
  byId("api-title").textContent = `${info.title ?? "API"} ${info.version ?? ""}`.trim();
  byId("api-description").textContent = info.description ?? "";
  const rows = byId<HTMLTableSectionElement>("route-rows");
  rows.replaceChildren();
  for (const [path, ops] of Object.entries(doc.paths ?? {})) {
    const methods = Object.keys(ops)
      .filter((m) => METHODS.includes(m))
      .sort((a, b) => METHODS.indexOf(a) - METHODS.indexOf(b));
    for (const method of methods) {
      const op = ops[method];
      // A stream answers text/event-stream: worth saying, it is not plain JSON.
      const streams = Object.values(op.responses ?? {}).some((r) => r.content && "text/event-stream" in r.content);
      rows.append(
        h(
          "tr",
          { "data-testid": "route", "data-method": method.toUpperCase(), "data-path": path },
          h("td", {}, h("span", { class: `method method-${method}` }, method.toUpperCase())),
          h("td", { class: "mono route-path" }, path),
          h(
            "td",
            {},
            h("span", { "data-testid": "route-summary" }, op.summary ?? op.operationId ?? ""),
            streams ? h("span", { class: "badge small sse", title: "Server-Sent Events" }, "SSE") : null,
            details(op) ? h("div", { class: "muted small route-description" }, details(op)) : null,
          ),
          h("td", {}, parameters(op)),
        ),
      );
    }
  }
  byId("api-status").textContent = `${rows.children.length} routes, from ${url}`;
}

async function load(): Promise<void> {
  const url = `${baseUrl()}/openapi.json`;
  const link = byId<HTMLAnchorElement>("openapi-link");
  link.href = url;
  link.textContent = url;
  const error = byId("api-error");
  try {
    const res = await fetch(url, { headers: { accept: "application/json" } });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    render((await res.json()) as Document, url);
    error.hidden = true;
  } catch (e) {
    error.textContent = `Could not read ${url}: ${e instanceof Error ? e.message : String(e)}`;
    error.hidden = false;
  }
}

void load();
