#!/usr/bin/env bash
# The Python client's and worker's checks: setup, generated-code drift, then pytest
# against a live `taskwire dev` the fixtures start themselves (binary: TASKWIRE_BIN or
# <repo>/target/debug/taskwire; this script does not build it). Extra arguments go to
# pytest. Exit code: pytest's, except that "no tests collected" (5) fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

"$here/setup.sh"
"$here/check_drift.sh"

cd "$here"
set +e
# SIGINT first, so fixtures stop the servers they started; each test also has its own
# timeout (pyproject.toml).
timeout --signal=INT --kill-after=60 1200 \
  "$repo/.venv/bin/python" -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
