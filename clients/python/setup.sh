#!/usr/bin/env bash
# Installs what the Python client, worker and their tests need into the project's own
# <repo>/.venv: first scripts/setup (creates .venv; nats-server and grpcurl, which the
# tests run), then the pins of requirements-dev.txt. Idempotent: pip runs only when a
# pin is missing or differs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

"$repo/scripts/setup"

py="$repo/.venv/bin/python"
want=$(grep -Ev '^\s*(#|$)' "$here/requirements-dev.txt" | tr 'A-Z_' 'a-z-' | sort)
have=$("$py" -m pip freeze --disable-pip-version-check 2>/dev/null | tr 'A-Z_' 'a-z-' | sort)
missing=$(comm -23 <(printf '%s\n' "$want") <(printf '%s\n' "$have"))
if [ -n "$missing" ]; then
  echo "setup.sh: installing $(echo "$missing" | tr '\n' ' ')"
  "$py" -m pip install --quiet --disable-pip-version-check -r "$here/requirements-dev.txt"
fi
"$py" -c 'import grpc, grpc_tools, google.protobuf, google.api.annotations_pb2, nats, nkeys, pytest, pytest_asyncio, pytest_timeout'
