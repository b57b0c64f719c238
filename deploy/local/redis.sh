#!/usr/bin/env bash
# Starts and stops a throwaway redis-server on loopback for local runs and tests.
#
# Usage:
#   redis.sh start <port> <dir>   daemonize redis on 127.0.0.1:<port>; pidfile,
#                                 logfile and data live in <dir>; waits for PING
#   redis.sh stop <dir>           SIGTERM the PID in <dir>/redis.pid and wait
#   redis.sh status <dir>         exit 0 if the pidfile's process is alive
#   redis.sh cluster [start] <ports> <dir>
#                                 a Redis Cluster of 3 masters and 3 replicas:
#                                 six `redis-server --cluster-enabled yes` on
#                                 127.0.0.1, <ports> either the first of six
#                                 consecutive ports or six ports p1,p2,...,p6;
#                                 node N lives in <dir>/node-<port>; joined with
#                                 `redis-cli --cluster create --cluster-replicas 1`
#                                 (skipped when the nodes already form a cluster);
#                                 waits for cluster_state:ok on every node and
#                                 writes <dir>/nodes = host:port,... (the value of
#                                 AGENTMESH_REDIS_CLUSTER_NODES)
#   redis.sh cluster stop <dir>   stop every node of the cluster in <dir>
#   redis.sh cluster status <dir> exit 0 if all six nodes run and the cluster is ok
#
# Env:
#   REDIS_APPENDONLY=yes          turn on the AOF (data survives stop/start)
#   REDIS_START_TIMEOUT_S=20      how long to wait for PING
#   REDIS_STOP_TIMEOUT_S=20       how long to wait after SIGTERM before SIGKILL
#   REDIS_CLUSTER_NODE_TIMEOUT_MS=2000  cluster-node-timeout: how long a master may
#                                 be unreachable before its replica takes over
#
# The script only ever signals the PID recorded in its own pidfile, and only
# after checking that PID still is a redis-server, so it can never take down
# another engineer's Redis (no pkill/killall by name).
set -euo pipefail

prog="redis.sh"
die() { echo "$prog: error: $*" >&2; exit 1; }
usage() {
  echo "usage: $prog start <port> <dir> | stop <dir> | status <dir> |" \
    "cluster [start] <port|p1,...,p6> <dir> | cluster stop <dir> | cluster status <dir>" >&2
  exit 2
}

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
  [[ $# -ge 2 ]] || usage
  local port="$1" dir="$2"
  shift 2
  # Anything after <dir> goes to redis-server as is (the cluster mode's settings).
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
      "$@" \
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

# ---- Redis Cluster: 3 masters, 3 replicas ------------------------------------

CLUSTER_SIZE=6

# The six ports from "<first>" or "p1,...,p6", one per line.
cluster_ports() {
  local spec="$1" p
  if [[ "$spec" =~ ^[0-9]+$ ]]; then
    for ((p = spec; p < spec + CLUSTER_SIZE; p++)); do echo "$p"; done
    return 0
  fi
  IFS=',' read -r -a list <<<"$spec"
  ((${#list[@]} == CLUSTER_SIZE)) || die "cluster needs $CLUSTER_SIZE ports, got '$spec'"
  for p in "${list[@]}"; do
    [[ "$p" =~ ^[0-9]+$ ]] || die "bad port: $p"
    echo "$p"
  done
}

# Ports of the nodes started in <dir> (from their node-<port> folders).
cluster_dir_ports() {
  local dir="$1" d
  for d in "$dir"/node-*; do
    [[ -d "$d" ]] && echo "${d##*/node-}"
  done
}

cluster_info_field() {
  local port="$1" field="$2"
  timeout 2 redis-cli -h 127.0.0.1 -p "$port" CLUSTER INFO 2>/dev/null \
    | tr -d '\r' | sed -n "s/^$field://p"
}

cmd_cluster_start() {
  [[ $# -eq 2 ]] || usage
  local spec="$1" dir="$2" port ports=() addrs=()
  ensure_redis_installed
  command -v redis-cli >/dev/null 2>&1 || die "redis-cli is needed to create a cluster"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  mapfile -t ports < <(cluster_ports "$spec")
  local node_timeout="${REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}"
  for port in "${ports[@]}"; do
    # nodes.conf lives in the node's dir, so a restart keeps its identity.
    cmd_start "$port" "$dir/node-$port" \
      --cluster-enabled yes \
      --cluster-config-file nodes.conf \
      --cluster-node-timeout "$node_timeout" \
      --cluster-require-full-coverage yes \
      --databases 1 >/dev/null
    addrs+=("127.0.0.1:$port")
  done
  # Idempotent: nodes that already know each other (an earlier call) are not re-created.
  local known
  known="$(cluster_info_field "${ports[0]}" cluster_known_nodes)"
  if [[ "$known" != "$CLUSTER_SIZE" ]]; then
    if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        >"$dir/cluster-create.out" 2>&1; then
      log_tail "$dir/cluster-create.out"
      die "redis-cli --cluster create failed"
    fi
  fi
  local timeout_s="${REDIS_START_TIMEOUT_S:-20}" deadline ok
  deadline=$((SECONDS + timeout_s))
  while ((SECONDS < deadline)); do
    ok=1
    for port in "${ports[@]}"; do
      [[ "$(cluster_info_field "$port" cluster_state)" == "ok" ]] || { ok=0; break; }
    done
    # ... and every replica attached to its master (create assigns them a moment later).
    if ((ok)) && [[ "$(timeout 2 redis-cli -h 127.0.0.1 -p "${ports[0]}" CLUSTER NODES 2>/dev/null \
        | grep -c ' slave ')" != "$((CLUSTER_SIZE / 2))" ]]; then
      ok=0
    fi
    if ((ok)); then
      (IFS=','; echo "${addrs[*]}") >"$dir/nodes"
      echo "$prog: redis cluster up on ${addrs[*]} (3 masters, 3 replicas, dir $dir)"
      return 0
    fi
    sleep 0.2
  done
  die "redis cluster in $dir did not reach cluster_state:ok within ${timeout_s}s"
}

cmd_cluster_stop() {
  [[ $# -eq 1 ]] || usage
  local dir="$1" port
  for port in $(cluster_dir_ports "$dir"); do
    cmd_stop "$dir/node-$port"
  done
  rm -f "$dir/nodes"
}

cmd_cluster_status() {
  [[ $# -eq 1 ]] || usage
  local dir="$1" port pid n=0
  for port in $(cluster_dir_ports "$dir"); do
    if ! pid="$(read_pid "$dir/node-$port/redis.pid")" || ! is_our_redis "$pid"; then
      echo "$prog: cluster node 127.0.0.1:$port not running"
      return 1
    fi
    n=$((n + 1))
  done
  if ((n != CLUSTER_SIZE)); then
    echo "$prog: cluster not running ($n of $CLUSTER_SIZE nodes in $dir)"
    return 1
  fi
  local state
  state="$(cluster_info_field "$(cluster_dir_ports "$dir" | head -n 1)" cluster_state)"
  echo "$prog: cluster running ($n nodes, cluster_state:${state:-unknown})"
  [[ "$state" == "ok" ]]
}

cmd_cluster() {
  [[ $# -ge 1 ]] || usage
  case "$1" in
    start) shift; cmd_cluster_start "$@" ;;
    stop) shift; cmd_cluster_stop "$@" ;;
    status) shift; cmd_cluster_status "$@" ;;
    *) cmd_cluster_start "$@" ;;
  esac
}

[[ $# -ge 1 ]] || usage
action="$1"; shift
case "$action" in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  cluster) cmd_cluster "$@" ;;
  *) usage ;;
esac
