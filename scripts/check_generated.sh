#!/usr/bin/env bash
# Fails when the committed generated code differs from a fresh generation.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python scripts/genproto.py --out "$tmp"
status=0
for area in "$tmp"/agentmesh/*/v1; do
  rel=${area#"$tmp"/}
  for f in "$area"/*_pb2*.py*; do
    name=$(basename "$f")
    if ! cmp -s "$f" "libs/$rel/$name"; then
      echo "stale generated file: libs/$rel/$name (run 'make proto')" >&2
      status=1
    fi
  done
  for f in libs/"$rel"/*_pb2*.py*; do
    [ -e "$f" ] || continue
    [ -e "$area/$(basename "$f")" ] || { echo "orphan generated file: $f (run 'make proto')" >&2; status=1; }
  done
done
exit $status
