#!/usr/bin/env bash
# Fails (exit 1) if the committed generated modules under taskwire/ differ from what
# generate.sh produces from <repo>/proto now. Run generate.sh to fix a drift.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$here/generate.sh" "$tmp"
status=0
for dir in taskwire/v1 taskwire/internal; do
  if ! diff -r -u --exclude=__pycache__ "$tmp/$dir" "$here/$dir"; then
    status=1
  fi
done
if [ "$status" -ne 0 ]; then
  echo "check_drift: generated code under clients/python/taskwire is out of date; run clients/python/generate.sh" >&2
  exit 1
fi
echo "check_drift: generated code matches proto/"
