#!/usr/bin/env bash
# Builds the dashboard into dist/ (what clients/cli/build.rs embeds into `taskwire`),
# doing only what is out of date:
#   - npm ci when node_modules is missing or package-lock.json changed since the last
#     install (stamp: node_modules/.taskwire-lock-sha, the lock file's sha256; npm ci
#     replaces node_modules, so any other install drops the stamp);
#   - node build.mjs when dist/index.html is missing or older than a file under src/,
#     build.mjs or package-lock.json.
# Prints one line saying what it did; the tools' own output only when they fail.
# Called by scripts/setup (when node is present) and by test.sh.
# Options: --ci            always npm ci (a clean install, as the tests want)
#          --install-only  stop after the install; do not build dist/
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

force_install=0
build=1
for arg in "$@"; do
  case "$arg" in
    --ci) force_install=1 ;;
    --install-only) build=0 ;;
    *) echo "build.sh: unknown option $arg (known: --ci, --install-only)" >&2; exit 2 ;;
  esac
done

stamp=node_modules/.taskwire-lock-sha
log="$(mktemp -t taskwire-web-build.XXXXXX)"
trap 'rm -f "$log"' EXIT

# Runs a step with its output kept aside; shows that output if the step fails.
quietly() {
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "build.sh: failed: $*" >&2
    exit 1
  fi
}

did=()
lock_sha=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ $force_install -eq 1 || ! -d node_modules || "$(cat "$stamp" 2>/dev/null || true)" != "$lock_sha" ]]; then
  command -v npm >/dev/null || { echo "build.sh: npm is not installed (it comes with node; Debian: apt-get install npm)" >&2; exit 1; }
  quietly npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_sha" >"$stamp"
  did+=("installed node_modules (npm ci)")
fi

if [[ $build -eq 1 ]]; then
  if [[ ! -f dist/index.html ]] || [[ -n "$(find src build.mjs package-lock.json -newer dist/index.html -print -quit)" ]]; then
    quietly node build.mjs
    # build.mjs's own summary, e.g. "built dist/ (app.js 95.1 KiB)".
    did+=("$(tail -n 1 "$log")")
  fi
fi

if [[ ${#did[@]} -eq 0 ]]; then
  if [[ $build -eq 1 ]]; then echo "clients/web: dashboard up to date (dist/)"; else echo "clients/web: node_modules up to date"; fi
else
  summary="${did[0]}"
  [[ ${#did[@]} -gt 1 ]] && summary="$summary, ${did[1]}"
  echo "clients/web: $summary"
fi
