#!/usr/bin/env bash
# Starts and stops a local Jaeger (built by deploy/local/tools.sh) for
# `make up TRACING=1`: OTLP/gRPC on 127.0.0.1:4317, UI and query API on
# http://127.0.0.1:16686, traces in memory (deploy/local/jaeger.yaml).
#
# Usage:
#   jaeger.sh start <dir>    start in the background; pidfile and log in <dir>;
#                            waits for its health endpoint
#   jaeger.sh stop <dir>     SIGTERM the PID in <dir>/jaeger.pid and wait
#
# Env: JAEGER_OTLP_GRPC_PORT, JAEGER_QUERY_HTTP_PORT, JAEGER_QUERY_GRPC_PORT,
# JAEGER_HEALTH_PORT (see jaeger.yaml). Only the PID in its own pidfile is
# ever signalled, after checking it still is jaeger.
set -euo pipefail

prog="jaeger.sh"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/local/pidlib.sh
source "$here/pidlib.sh"
die() { echo "$prog: error: $*" >&2; exit 1; }

cmd="${1:-}"
dir="${2:-}"
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $prog start <dir> | stop <dir>" >&2; exit 2; }
pidfile="$dir/jaeger.pid"

case "$cmd" in
  start)
    bin="$(command -v jaeger || echo "$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin/jaeger")"
    [[ -x "$bin" ]] || die "jaeger not built; run: bash deploy/local/tools.sh jaeger"
    mkdir -p "$dir"
    if pid="$(read_pid "$pidfile")" && alive "$pid"; then
      echo "$prog: already running (pid $pid)"
      exit 0
    fi
    nohup "$bin" --config "$here/jaeger.yaml" >"$dir/jaeger.log" 2>&1 &
    echo $! >"$pidfile"
    health="http://127.0.0.1:${JAEGER_HEALTH_PORT:-13133}/status"
    for _ in $(seq 1 100); do
      if curl -fsS "$health" >/dev/null 2>&1; then
        echo "$prog: Jaeger UI http://127.0.0.1:${JAEGER_QUERY_HTTP_PORT:-16686}" \
          "(OTLP/gRPC 127.0.0.1:${JAEGER_OTLP_GRPC_PORT:-4317})"
        exit 0
      fi
      alive "$(cat "$pidfile")" || die "jaeger exited; see $dir/jaeger.log"
      sleep 0.2
    done
    die "jaeger not healthy after 20 s; see $dir/jaeger.log"
    ;;
  stop)
    pid="$(read_pid "$pidfile")" || exit 0
    if alive "$pid" && grep -q jaeger "/proc/$pid/cmdline" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
      alive "$pid" && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
    ;;
  *) die "unknown command $cmd" ;;
esac
