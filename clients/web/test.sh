#!/usr/bin/env bash
# The dashboard's test, end to end and non-interactive, of the dashboard exactly as
# scripts/dev serves it: the copy built into the `taskwire` binary (clients/cli/build.rs
# embeds dist/ when the binary is compiled; scripts/test runs scripts/setup, which
# builds dist/, before cargo build).
#   1. npm ci (exact versions from package-lock.json; through build.sh, which stamps it)
#   2. generated code has no drift from ../../proto (regenerate into a temp dir, diff src/gen)
#   3. typecheck, and dist/ brought up to date (build.sh: builds only when src/ changed)
#   4. Debian's chromium (installed with apt-get when missing; needs root)
#   5. `taskwire dev` on free loopback ports, a temp data dir, no --web-dir; fails when
#      the binary has no dashboard built in, or one that differs from dist/ (a binary
#      compiled before the last change to src/: rebuild it)
#   6. node --test test/*.test.mjs driving chromium with playwright-core; test/auth.test.mjs starts
#      its own nats-server, taskwire-api and taskwire-watch with --auth keys (the
#      binaries beside $TASKWIRE_BIN) and serves dist/ itself, to test the API key field;
#      test/dead-letters.test.mjs retries FAILED demo.fail tasks (a row, the drawer, a
#      selection, all matching after a dry run and the in-page confirmation), discards
#      them, and checks run numbers and 404s over REST;
#      test/sse.test.mjs follows a task's REST event stream (SSE) with EventSource
#      through a TCP proxy that drops it mid-task; test/rest-page.test.mjs checks
#      api.html against the server's /openapi.json
# Exits non-zero on any failure; always stops taskwire dev and removes its temp dir.
# Env: TASKWIRE_BIN (default <repo>/target/debug/taskwire), TASKWIRE_NATS_SERVER
# (default <repo>/.venv/bin/nats-server), CHROMIUM (default /usr/bin/chromium).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

TASKWIRE_BIN="${TASKWIRE_BIN:-$repo/target/debug/taskwire}"
NATS_SERVER="${TASKWIRE_NATS_SERVER:-$repo/.venv/bin/nats-server}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
ARTIFACTS_DIR="$here/test-artifacts"
started=$SECONDS

say() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - started)); }
die() { echo "test.sh: $*" >&2; exit 1; }

for bin in "$TASKWIRE_BIN" "$(dirname "$TASKWIRE_BIN")/taskwire-api" "$(dirname "$TASKWIRE_BIN")/taskwire-watch" "$NATS_SERVER"; do
  [[ -x "$bin" ]] || die "missing $bin (build taskwire with cargo and run scripts/setup first)"
done
command -v node >/dev/null || die "node is not installed"

work="$(mktemp -d -t taskwire-web.XXXXXX)"
tw_pid=""
cleanup() {
  local rc=$?
  if [[ -n "$tw_pid" ]] && kill -0 "$tw_pid" 2>/dev/null; then
    kill -INT "$tw_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$tw_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$tw_pid" 2>/dev/null; then
      echo "test.sh: taskwire dev ignored SIGINT for 10s; killing its process group" >&2
      kill -KILL -- "-$tw_pid" 2>/dev/null || kill -KILL "$tw_pid" 2>/dev/null || true
    fi
    wait "$tw_pid" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -f "$work/taskwire.log" ]]; then
    echo "---- last lines of the taskwire dev log ----" >&2
    tail -n 40 "$work/taskwire.log" >&2 || true
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "npm ci"
timeout 600 ./build.sh --ci --install-only

say "generated code drift check"
timeout 120 npx --no-install buf generate --output "$work/gen"
if ! diff -ru src/gen "$work/gen/src/gen"; then
  die "src/gen is stale: run 'npx buf generate' in clients/web and commit the result"
fi

say "typecheck, dist/ up to date"
timeout 120 npx --no-install tsc --noEmit -p .
# Not what is served (the binary's own copy is): what that copy must equal.
timeout 120 ./build.sh

say "chromium"
if [[ ! -x "$CHROMIUM" ]]; then
  [[ $(id -u) -eq 0 ]] || die "$CHROMIUM is missing; install Debian's chromium (apt-get install -y chromium) as root"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 900 apt-get install -y -qq --no-install-recommends chromium >/dev/null
  [[ -x "$CHROMIUM" ]] || die "apt-get installed chromium but $CHROMIUM does not exist"
fi
"$CHROMIUM" --version 2>/dev/null || true

say "start taskwire dev"
free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
grpc_port=$(free_port)
web_port=$(free_port)
while [[ "$web_port" == "$grpc_port" ]]; do web_port=$(free_port); done
grpc_url="http://127.0.0.1:$grpc_port"
web_url="http://127.0.0.1:$web_port/"
# Its own session (process group), so a stuck server can be killed with its children.
# No TASKWIRE_WEB_DIR either: the dashboard under test is the one built into the binary.
env -u TASKWIRE_ADDR -u TASKWIRE_WATCH_ADDR -u TASKWIRE_NATS_SERVER -u TASKWIRE_WEB_DIR \
  setsid "$TASKWIRE_BIN" dev \
  --listen "127.0.0.1:$grpc_port" \
  --data-dir "$work/data" \
  --nats-server "$NATS_SERVER" \
  --web-listen "127.0.0.1:$web_port" \
  --admin-listen 127.0.0.1:0 \
  >"$work/taskwire.log" 2>&1 </dev/null &
tw_pid=$!

# Ready when the dashboard, /config.js and gRPC (a ListTasks over grpc-web) all answer.
# Its banner says where the dashboard is, or that the binary has none built in.
TW_WEB="$web_url" TW_GRPC="$grpc_url" TW_PID="$tw_pid" TW_LOG="$work/taskwire.log" TW_BIN="$TASKWIRE_BIN" \
  timeout 70 node --input-type=module -e '
import { readFileSync } from "node:fs";
const { TW_WEB, TW_GRPC, TW_PID, TW_LOG, TW_BIN } = process.env;
const deadline = Date.now() + 60_000;
const alive = () => { try { process.kill(Number(TW_PID), 0); return true; } catch { return false; } };
for (;;) {
  if (!alive()) { console.error("taskwire dev exited"); process.exit(1); }
  const banner = /^\s*dashboard:\s*(.*)$/m.exec(readFileSync(TW_LOG, "utf8"))?.[1];
  if (banner !== undefined && banner !== TW_WEB) {
    console.error(`test.sh: ${TW_BIN} serves no dashboard (its banner: "dashboard: ${banner}").`);
    console.error("test.sh: build clients/web/dist (scripts/setup, or clients/web/build.sh), then rebuild the binary (cargo build -p taskwire-cli --bin taskwire).");
    process.exit(1);
  }
  try {
    const sig = AbortSignal.timeout(2000);
    const index = await fetch(TW_WEB, { signal: sig });
    const config = await (await fetch(new URL("/config.js", TW_WEB), { signal: sig })).text();
    const list = await fetch(`${TW_GRPC}/taskwire.v1.TaskService/ListTasks`, {
      method: "POST", signal: sig,
      headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
      body: new Uint8Array([0, 0, 0, 0, 0]),
    });
    const body = new Uint8Array(await list.arrayBuffer());
    const trailer = new TextDecoder().decode(body);
    if (index.ok && config.includes(TW_GRPC) && list.ok && /grpc-status:\s*0/.test(trailer + (list.headers.get("grpc-status") === "0" ? "grpc-status:0" : ""))) {
      console.log(`ready: dashboard ${TW_WEB}, grpc-web ${TW_GRPC}`);
      process.exit(0);
    }
  } catch {}
  if (Date.now() > deadline) { console.error("taskwire dev did not become ready in 60s"); process.exit(1); }
  await new Promise((r) => setTimeout(r, 250));
}' || die "taskwire dev did not start"

say "the served dashboard is the current dist/"
# The binary embeds dist/ as it was when it was compiled: a binary older than the last
# change to src/ would test an old dashboard. Every file of dist/ must be served as is.
TW_WEB="$web_url" TW_BIN="$TASKWIRE_BIN" timeout 60 node --input-type=module -e '
import { readFileSync, readdirSync } from "node:fs";
const { TW_WEB, TW_BIN } = process.env;
const stale = [];
for (const name of readdirSync("dist", { recursive: true, withFileTypes: true })) {
  if (!name.isFile()) continue;
  const rel = `${name.parentPath ?? name.path}/${name.name}`.replace(/^dist\/?/, "");
  const res = await fetch(new URL(rel, TW_WEB), { signal: AbortSignal.timeout(10_000) });
  const served = Buffer.from(await res.arrayBuffer());
  if (!res.ok || !served.equals(readFileSync(`dist/${rel}`))) stale.push(`${rel} (HTTP ${res.status}, ${served.length} bytes served)`);
}
if (stale.length) {
  console.error(`test.sh: the dashboard built into ${TW_BIN} is not the current clients/web/dist: ${stale.join(", ")}`);
  console.error("test.sh: rebuild the binary (cargo build -p taskwire-cli --bin taskwire), then rerun.");
  process.exit(1);
}
console.log("served = dist/");
' || die "the dashboard in $TASKWIRE_BIN is missing or stale"

say "browser test"
mkdir -p "$ARTIFACTS_DIR"
# auth.test.mjs also reads TASKWIRE_BIN and TASKWIRE_NATS_SERVER (its own backend).
TASKWIRE_WEB_URL="$web_url" TASKWIRE_GRPC_URL="$grpc_url" CHROMIUM="$CHROMIUM" ARTIFACTS_DIR="$ARTIFACTS_DIR" \
  TASKWIRE_BIN="$TASKWIRE_BIN" TASKWIRE_NATS_SERVER="$NATS_SERVER" \
  timeout 360 node --test --test-reporter=tap --test-timeout=240000 --test-concurrency=1 test/*.test.mjs

say "stop taskwire dev"
kill -INT "$tw_pid"
for _ in $(seq 1 100); do kill -0 "$tw_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$tw_pid" 2>/dev/null; then die "taskwire dev did not exit within 10s of SIGINT"; fi
wait "$tw_pid" || echo "test.sh: note: taskwire dev exited with status $? after SIGINT"
tw_pid=""
echo "screenshot: $ARTIFACTS_DIR/dashboard.png"
say "web dashboard: ok"
