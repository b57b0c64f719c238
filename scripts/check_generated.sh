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
# A v1 folder holds generated code only (README: Generated code): the SDK and
# the client keep their own modules beside it, never inside it.
for f in libs/agentmesh/*/v1/*; do
  case "$(basename "$f")" in
    *_pb2.py | *_pb2.pyi | *_pb2_grpc.py | *_pb2_grpc.pyi | __init__.py | __pycache__) ;;
    *) echo "not generated, but in a generated folder: $f (move it out of v1/)" >&2; status=1 ;;
  esac
done
# The Helm chart's <daemon>.config schema comes from the daemons' settings classes.
python scripts/gen_settings_schema.py --check || status=1
# Go stubs for clients/go (buf.gen.go.yaml; local protoc-gen-go/-go-grpc from deploy/local/tools.sh).
gobin="$(go env GOPATH 2>/dev/null)/bin"
PATH="$gobin:$PATH" buf generate --template buf.gen.go.yaml -o "$tmp/go" || {
  echo "could not generate the Go stubs (need buf, protoc-gen-go, protoc-gen-go-grpc: bash deploy/local/tools.sh)" >&2
  exit 1
}
if ! diff -r "$tmp/go/clients/go/gen" clients/go/gen >&2; then
  echo "stale generated Go stubs in clients/go/gen (run 'make proto')" >&2
  status=1
fi
exit $status
