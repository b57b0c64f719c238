#!/usr/bin/env bash
# Starts and stops a throwaway redis-server on loopback for local runs and tests.
#
# Usage:
#   redis.sh start <port> <dir>   daemonize redis on 127.0.0.1:<port>; pidfile,
#                                 logfile and data live in <dir>; waits for PING
#   redis.sh stop <dir>           SIGTERM the PID in <dir>/redis.pid and wait
#   redis.sh status <dir>         exit 0 if the pidfile's process is alive
#
# Env:
#   REDIS_APPENDONLY=yes          turn on the AOF (data survives stop/start)
#   REDIS_START_TIMEOUT_S=20      how long to wait for PING
#   REDIS_STOP_TIMEOUT_S=20       how long to wait after SIGTERM before SIGKILL
#
# The script only ever signals the PID recorded in its own pidfile, and only
# after checking that PID still is a redis-server, so it can never take down
# another engineer's Redis (no pkill/killall by name).
set -euo pipefail

prog="redis.sh"
die() { echo "$prog: error: $*" >&2; exit 1; }
usage() { echo "usage: $prog start <port> <dir> | stop <dir> | status <dir>" >&2; exit 2; }

log_tail() {
  local log="$1"
  if [[ -f "$log" ]]; then
    echo "---- last lines of $log ----" >&2
    tail -n 30 "$log" >&2 || true
  fi
}

# sudo only when needed: CI containers run as root and often lack sudo.
as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

ensure_redis_installed() {
  command -v redis-server >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "redis-server is missing and apt-get is not available; install Redis >= 6 manually"
  echo "$prog: redis-server not found; installing Debian package redis-server" >&2
  # The lock timeout lets us queue behind a concurrent apt run instead of failing.
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get -o DPkg::Lock::Timeout=600 install -y -q redis-server >&2; then
    # A fresh image has no package lists yet.
    as_root apt-get -o DPkg::Lock::Timeout=600 update -q >&2 || die "apt-get update failed"
    as_root apt-get -o DPkg::Lock::Timeout=600 install -y -q redis-server >&2 || die "apt-get install redis-server failed"
  fi
  command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after apt-get install"
}

# shellcheck source=deploy/local/pidlib.sh
source "$(dirname "${BASH_SOURCE[0]}")/pidlib.sh"

# True if PID is alive and still a redis-server (guards against PID reuse).
is_our_redis() {
  local pid="$1" cmd
  alive "$pid" || return 1
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmd" == *redis-server* ]]
}

# PING over redis-cli when present; otherwise speak RESP over bash's /dev/tcp.
ping_redis() {
  local port="$1" reply
  if command -v redis-cli >/dev/null 2>&1; then
    reply="$(timeout 2 redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null || true)"
  else
    reply="$(timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$port"'; printf "PING\r\n" >&3; head -c 7 <&3' 2>/dev/null || true)"
  fi
  [[ "$reply" == *PONG* ]]
}

cmd_start() {
  [[ $# -eq 2 ]] || usage
  local port="$1" dir="$2"
  if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then die "bad port: $port"; fi
  ensure_redis_installed
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local pidfile="$dir/redis.pid" logfile="$dir/redis.log" pid

  # Idempotent start: a live server from an earlier call is reused.
  if pid="$(read_pid "$pidfile")" && is_our_redis "$pid"; then
    if ping_redis "$port"; then
      echo "$prog: redis already running on 127.0.0.1:$port (pid $pid)"
      return 0
    fi
    die "a redis-server (pid $pid) from $pidfile is running but does not answer on port $port; run '$prog stop $dir' first"
  fi
  rm -f "$pidfile"

  local appendonly="no"
  [[ "${REDIS_APPENDONLY:-no}" == "yes" ]] && appendonly="yes"

  # Remember where this launch's log output starts, so a startup failure can be
  # recognised from the new lines (redis writes no pidfile if bind fails).
  local log_offset=0
  [[ -f "$logfile" ]] && log_offset="$(wc -c <"$logfile")"

  # --save "" disables RDB snapshots: test data is throwaway and snapshots
  # would only add fork latency. protected-mode stays on; we bind loopback only.
  if ! redis-server \
      --port "$port" \
      --bind 127.0.0.1 \
      --daemonize yes \
      --pidfile "$pidfile" \
      --logfile "$logfile" \
      --dir "$dir" \
      --save "" \
      --appendonly "$appendonly" \
      --databases 16 \
      >"$dir/redis-launch.out" 2>&1; then
    # Config errors are printed before the logfile is opened.
    log_tail "$dir/redis-launch.out"
    log_tail "$logfile"
    die "redis-server failed to launch on port $port"
  fi

  local timeout_s="${REDIS_START_TIMEOUT_S:-20}" deadline
  deadline=$((SECONDS + timeout_s))
  while ((SECONDS < deadline)); do
    if ping_redis "$port"; then
      pid="$(read_pid "$pidfile" || echo '?')"
      echo "$prog: redis up on 127.0.0.1:$port (pid $pid, dir $dir, appendonly $appendonly)"
      return 0
    fi
    # Daemonized redis writes its pidfile right after forking; if that PID is
    # already gone, it died (e.g. port in use) and waiting longer is pointless.
    if pid="$(read_pid "$pidfile")" && ! alive "$pid"; then
      log_tail "$logfile"
      die "redis-server (pid $pid) exited during startup on port $port"
    fi
    if tail -c "+$((log_offset + 1))" "$logfile" 2>/dev/null | grep -qE 'aborting|Fatal error|FATAL'; then
      log_tail "$logfile"
      die "redis-server failed during startup on port $port (see log above)"
    fi
    sleep 0.1
  done
  log_tail "$logfile"
  # Do not leave an unresponsive server holding the port.
  cmd_stop "$dir" >&2 || true
  die "redis on 127.0.0.1:$port did not answer PING within ${timeout_s}s"
}

cmd_stop() {
  [[ $# -eq 1 ]] || usage
  local dir="$1" pidfile pid
  pidfile="$dir/redis.pid"
  if ! pid="$(read_pid "$pidfile")"; then
    echo "$prog: no pidfile at $pidfile; nothing to stop"
    return 0
  fi
  if ! is_our_redis "$pid"; then
    echo "$prog: pid $pid from $pidfile is not running (stale pidfile removed)"
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local timeout_s="${REDIS_STOP_TIMEOUT_S:-20}" deadline
  deadline=$((SECONDS + timeout_s))
  while alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.1
  done
  if alive "$pid"; then
    echo "$prog: redis pid $pid ignored SIGTERM for ${timeout_s}s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
    if alive "$pid"; then die "could not stop redis pid $pid"; fi
  fi
  rm -f "$pidfile"
  echo "$prog: redis pid $pid stopped"
}

cmd_status() {
  [[ $# -eq 1 ]] || usage
  local pid
  if pid="$(read_pid "$1/redis.pid")" && is_our_redis "$pid"; then
    echo "$prog: running (pid $pid)"
    return 0
  fi
  echo "$prog: not running"
  return 1
}

[[ $# -ge 1 ]] || usage
action="$1"; shift
case "$action" in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  *) usage ;;
esac
