#!/usr/bin/env bash
# Load-test a running stack (`make up`) with ghz through server reflection.
# Usage: bash perf/ghz/run.sh [config.json ...]   (default: every config here)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PATH="$(go env GOPATH)/bin:$PATH"
command -v ghz >/dev/null || { echo "ghz missing: bash deploy/local/tools.sh" >&2; exit 1; }
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=("$here"/*.json)
for c in "${configs[@]}"; do
  echo "== $(basename "$c")"
  ghz --config "$c" --format summary
done
