#!/usr/bin/env bash
# Starts and stops a single-node KRaft Kafka broker (broker + controller in one
# JVM) on loopback, for local runs and tests. No Docker, no ZooKeeper: the jars
# come from Maven Central through deploy/local/kafka/pom.xml and `java` runs them.
#
# Usage:
#   kafka.sh start <port> <dir>   PLAINTEXT on 127.0.0.1:<port>, controller on
#                                 127.0.0.1:<port+1>; config, data, logs and the
#                                 pidfile live in <dir>; waits for metadata
#   kafka.sh stop <dir>           SIGTERM the pidfile's PID, wait, then SIGKILL it
#   kafka.sh status <dir>         exit 0 if the pidfile's process is alive
#   kafka.sh fetch                only download the jars (CI prefetch)
#
#   kafka.sh cluster [start] [<ports> [<dir>]]
#                                 a three-node KRaft cluster on 127.0.0.1: each
#                                 node one JVM, broker and controller (static
#                                 voters 1,2,3). <ports> is the first of six
#                                 consecutive ports (default 19092: brokers
#                                 19092,19093,19094, controllers 19095,19096,
#                                 19097) or six ports b1,b2,b3,c1,c2,c3. Node N
#                                 lives in <dir>/node-<broker port> (default
#                                 <dir>: $KAFKA_CLUSTER_DIR, else .run/kafka-cluster
#                                 in the repository). Waits until every broker's
#                                 metadata lists all three, then writes
#                                 <dir>/bootstrap = 127.0.0.1:b1,127.0.0.1:b2,127.0.0.1:b3
#                                 (the value of AGENTMESH_KAFKA_BOOTSTRAP) and
#                                 prints it as the last line, "bootstrap=<servers>".
#                                 Internal topics (offsets, transactions) get
#                                 replication factor 3 and min.insync.replicas 2;
#                                 other topics stock Kafka's defaults (1 and 1):
#                                 their creator chooses (the bus gateway asks for
#                                 3 and 2, services/bus/README.md).
#   kafka.sh cluster stop [<dir>]       SIGTERM every node at once, wait, then
#                                       SIGKILL what is left (pidfiles, as `stop`)
#   kafka.sh cluster status [<dir>]     exit 0 if all three nodes run and answer
#   kafka.sh cluster bootstrap [<dir>]  print the bootstrap servers string
#
# Env:
#   KAFKA_CONTROLLER_PORT         controller listener port (default <port>+1)
#   KAFKA_SASL_PORT               also open a SASL_PLAINTEXT listener (mechanism
#                                 PLAIN) on 127.0.0.1:<this port>, for tests of
#                                 clients' SASL settings; needs KAFKA_SASL_USERS
#   KAFKA_SASL_USERS              "user:password[,user:password...]" it accepts
#   KAFKA_HEAP_OPTS               default "-Xmx512m -Xms256m" (cluster nodes:
#                                 "-Xmx512m -Xms128m" each)
#   KAFKA_CLUSTER_DIR             default <dir> of `cluster`
#   KAFKA_JVM_EXTRA_OPTS          appended to the JVM flags
#   KAFKA_START_TIMEOUT_S=120     how long to wait for the broker to answer
#                                 (cluster: default 240, for all three)
#   KAFKA_STOP_TIMEOUT_S=30       how long to wait after SIGTERM before SIGKILL
#   KAFKA_LIB_DIR                 use jars from here instead of the Maven project
#
# Only the PID in <dir>/kafka.pid is ever signalled, after checking it still is
# our kafka.Kafka JVM for this <dir> (no pkill/killall by name).
set -euo pipefail

prog="kafka.sh"
script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project_dir="$script_dir/kafka"
lib_dir="${KAFKA_LIB_DIR:-$project_dir/target/lib}"

die() { echo "$prog: error: $*" >&2; exit 1; }
usage() {
  echo "usage: $prog start <port> <dir> | stop <dir> | status <dir> | fetch |" \
    "cluster [start] [<port|b1,b2,b3,c1,c2,c3> [<dir>]] | cluster stop|status|bootstrap [<dir>]" >&2
  exit 2
}

log_tail() {
  local f
  for f in "$@"; do
    if [[ -s "$f" ]]; then
      echo "---- last lines of $f ----" >&2
      tail -n 40 "$f" >&2 || true
    fi
  done
}

# The pinned version lives in the pom only; read it so a bump there refetches.
kafka_version() {
  sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$project_dir/pom.xml" | head -n 1
}

fetch_jars() {
  command -v java >/dev/null 2>&1 || die "java not found; install a JDK >= 17 (Kafka 4.x needs Java 17)"
  if [[ -n "${KAFKA_LIB_DIR:-}" ]]; then
    compgen -G "$lib_dir/kafka_2.13-*.jar" >/dev/null || die "KAFKA_LIB_DIR=$lib_dir has no kafka_2.13 jar"
    return 0
  fi
  local version
  version="$(kafka_version)"
  [[ -n "$version" ]] || die "cannot read <kafka.version> from $project_dir/pom.xml"
  [[ -f "$lib_dir/kafka_2.13-$version.jar" ]] && return 0

  command -v mvn >/dev/null 2>&1 || die "Kafka jars missing in $lib_dir and 'mvn' is not installed (apt-get install maven)"
  mkdir -p "$project_dir/target"
  # Tests may start several brokers at once; one Maven run at a time keeps
  # them from copying jars over each other.
  exec 9>"$project_dir/target/.fetch.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  if [[ ! -f "$lib_dir/kafka_2.13-$version.jar" ]]; then
    echo "$prog: fetching Apache Kafka $version jars via Maven into $lib_dir" >&2
    # Drop jars of an older pin so two versions never share the classpath.
    rm -rf "$lib_dir"
    mvn -q -B -f "$project_dir/pom.xml" package >&2 || die "mvn failed to fetch Kafka jars (is Maven Central reachable?)"
    [[ -f "$lib_dir/kafka_2.13-$version.jar" ]] || die "mvn finished but $lib_dir/kafka_2.13-$version.jar is missing"
  fi
  exec 9>&-
}

# shellcheck source=deploy/local/pidlib.sh
source "$(dirname "${BASH_SOURCE[0]}")/pidlib.sh"

# True if PID is alive and is the kafka.Kafka JVM started with <dir>'s config;
# guards against signalling a recycled PID.
is_our_kafka() {
  local pid="$1" props="$2" cmd
  alive "$pid" || return 1
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmd" == *kafka.Kafka* && "$cmd" == *"$props"* ]]
}

port_open() {
  timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$1" 2>/dev/null
}

# A metadata round trip proves the broker is registered and serving, which an
# open port alone does not (the socket accepts before the broker is unfenced).
metadata_ok() {
  local port="$1"
  port_open "$port" || return 1
  if command -v kcat >/dev/null 2>&1; then
    timeout 10 kcat -L -b "127.0.0.1:$port" -m 5 >/dev/null 2>&1
  elif python3 -c 'import confluent_kafka' >/dev/null 2>&1; then
    timeout 15 python3 - "$port" <<'PY' >/dev/null 2>&1
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": f"127.0.0.1:{sys.argv[1]}"}).list_topics(timeout=5)
sys.exit(0 if md.brokers else 1)
PY
  else
    return 0  # port accepted; nothing better is installed
  fi
}

# 16 random bytes as unpadded URL-safe base64: the 22-char form Kafka's
# Uuid.fromString expects, without paying a JVM start for `random-uuid`.
# Passed as --cluster-id=<id>: an id that starts with "-" (1 in 32) would
# otherwise be parsed as an option and fail the format.
cluster_id() {
  head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'
}

# The broker's listeners: PLAINTEXT (always; readiness checks use it), the
# controller, and SASL_PLAINTEXT when KAFKA_SASL_PORT is set.
listeners_of() {
  local port="$1" cport="$2"
  local l="PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${cport}"
  [[ -z "${KAFKA_SASL_PORT:-}" ]] || l+=",SASL_PLAINTEXT://127.0.0.1:${KAFKA_SASL_PORT}"
  echo "$l"
}

# server.properties lines for the optional SASL_PLAINTEXT listener.
sasl_config() {
  [[ -n "${KAFKA_SASL_PORT:-}" ]] || return 0
  [[ -n "${KAFKA_SASL_USERS:-}" ]] || die "KAFKA_SASL_PORT needs KAFKA_SASL_USERS=user:password[,...]"
  local jaas="org.apache.kafka.common.security.plain.PlainLoginModule required" pair
  local -a pairs
  IFS=',' read -r -a pairs <<<"$KAFKA_SASL_USERS"
  for pair in "${pairs[@]}"; do
    jaas+=" user_${pair%%:*}=\"${pair#*:}\""
  done
  cat <<EOF

# SASL_PLAINTEXT listener with PLAIN users (KAFKA_SASL_PORT, KAFKA_SASL_USERS).
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=${jaas};
EOF
}

# The quorum lines of one node: a single node's dynamic quorum (its voter set
# comes from `format --standalone`), or the cluster's static voters
# ("1@127.0.0.1:c1,2@...", set as KAFKA_QUORUM_VOTERS by cmd_cluster_start).
quorum_config() {
  local cport="$1"
  if [[ -n "${KAFKA_QUORUM_VOTERS:-}" ]]; then
    echo "controller.quorum.voters=${KAFKA_QUORUM_VOTERS}"
  else
    echo "# Kafka 4 dynamic quorum: the voter set comes from \`format --standalone\`."
    echo "controller.quorum.bootstrap.servers=127.0.0.1:${cport}"
  fi
}

# Replication of the internal topics: 1 on a single node (every internal topic
# must accept it, or consumer groups and idempotent/transactional producers
# never get going); 3 with min.isr 2 on the cluster, so one broker may die.
internal_replication() {
  local rf="${KAFKA_INTERNAL_RF:-1}" isr=1
  if ((rf >= 3)); then isr=2; fi
  echo "offsets.topic.replication.factor=${rf}"
  echo "transaction.state.log.replication.factor=${rf}"
  echo "transaction.state.log.min.isr=${isr}"
  echo "share.coordinator.state.topic.replication.factor=${rf}"
  echo "share.coordinator.state.topic.min.isr=${isr}"
}

write_config() {
  local dir="$1" port="$2" cport="$3" props="$4" listeners
  listeners="$(listeners_of "$port" "$cport")"
  cat >"$props" <<EOF
# Generated by deploy/local/kafka.sh; rewritten on every start.
# One JVM is both the KRaft controller and the broker.
process.roles=broker,controller
node.id=${KAFKA_NODE_ID:-1}
$(quorum_config "$cport")
controller.listener.names=CONTROLLER
listeners=${listeners}
advertised.listeners=${listeners}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
log.dirs=${dir}/data

$(internal_replication)
# Few partitions for internal topics: creating the default 50 costs seconds on
# the first consumer group, and a dev machine gains nothing from them.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.num.partitions=1

# Tests join and leave groups constantly; the default 3 s delay only adds latency.
group.initial.rebalance.delay.ms=0
# Stock Kafka's defaults, on the cluster too: a topic's replication is its
# creator's choice (the bus gateway asks for 3 and min.insync.replicas 2).
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true

# Sized for a 2-core dev machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
log.segment.bytes=67108864
EOF
  sasl_config >>"$props"
}

write_log4j() {
  local dir="$1" file="$2"
  cat >"$file" <<EOF
# Generated by deploy/local/kafka.sh: broker logs go to a file, not the terminal.
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${dir}/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
# Per-request and state-change chatter drowns the useful lines in tests.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

# Writes <dir>'s config and starts its JVM in the background without waiting;
# sets LAUNCHED_PID. The caller has checked that no broker of <dir> runs.
# KAFKA_CLUSTER_ID set: format with that id for the static voters (cluster);
# unset: a fresh id and `--standalone` (single node).
launch_node() {
  local port="$1" cport="$2" dir="$3"
  local props="$dir/server.properties" pidfile="$dir/kafka.pid" out="$dir/kafka.out"
  rm -f "$pidfile"

  # The voter set recorded at format time names the controller endpoints; a
  # different port would leave the node unable to find its quorum. The broker
  # is throwaway, so start over instead.
  local listeners
  listeners="$(listeners_of "$port" "$cport")"
  if [[ -f "$props" ]] && ! grep -qxF "listeners=$listeners" "$props"; then
    echo "$prog: ports changed for $dir; wiping old data" >&2
    rm -rf "$dir/data"
  fi

  mkdir -p "$dir/logs"
  write_config "$dir" "$port" "$cport" "$props"
  write_log4j "$dir" "$dir/log4j2.properties"

  local heap="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
  local -a jvm_opts
  # shellcheck disable=SC2206  # heap/extra opts are deliberately word-split
  jvm_opts=($heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent
    -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$dir/log4j2.properties"
    "-Dkafka.logs.dir=$dir/logs"
    ${KAFKA_JVM_EXTRA_OPTS:-})

  if [[ ! -f "$dir/data/meta.properties" ]]; then
    local -a fmt=("--cluster-id=$(cluster_id)" --standalone)
    [[ -z "${KAFKA_CLUSTER_ID:-}" ]] || fmt=("--cluster-id=$KAFKA_CLUSTER_ID")
    # kafka.tools.StorageTool is the class bin/kafka-storage.sh runs in 4.x.
    if ! java -Xmx256m "-Dlog4j2.configurationFile=$dir/log4j2.properties" -cp "$lib_dir/*" \
        kafka.tools.StorageTool format "${fmt[@]}" -c "$props" --ignore-formatted \
        >"$dir/format.out" 2>&1; then
      log_tail "$dir/format.out"
      die "kafka storage format failed for $dir/data"
    fi
  fi

  : >"$out"
  # setsid: the broker must outlive the calling shell and not get the caller's
  # Ctrl-C/SIGHUP (dev servers are shared). Non-interactive bash does not make
  # background jobs group leaders, so setsid execs in place and $! is the JVM.
  local -a launcher=(nohup)
  command -v setsid >/dev/null 2>&1 && launcher=(setsid nohup)
  "${launcher[@]}" java "${jvm_opts[@]}" -cp "$lib_dir/*" kafka.Kafka "$props" </dev/null >>"$out" 2>&1 &
  LAUNCHED_PID=$!
  echo "$LAUNCHED_PID" >"$pidfile"
}

check_port() {
  if ! [[ "$1" =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > 65535)); then die "bad port: $1"; fi
}

cmd_start() {
  [[ $# -eq 2 ]] || usage
  local port="$1" dir="$2"
  check_port "$port"
  local cport="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
  if ! [[ "$cport" =~ ^[0-9]+$ ]] || ((cport < 1 || cport > 65535)) || ((cport == port)); then
    die "bad controller port: $cport"
  fi

  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local props="$dir/server.properties" pidfile="$dir/kafka.pid"
  local out="$dir/kafka.out" serverlog="$dir/logs/server.log" pid

  # Idempotent start: reuse a live broker from an earlier call.
  if pid="$(read_pid "$pidfile")" && is_our_kafka "$pid" "$props"; then
    if metadata_ok "$port"; then
      echo "$prog: kafka already running on 127.0.0.1:$port (pid $pid)"
      return 0
    fi
    die "kafka (pid $pid) from $pidfile is running but does not answer on port $port; run '$prog stop $dir' first"
  fi

  fetch_jars
  launch_node "$port" "$cport" "$dir"
  pid="$LAUNCHED_PID"

  local timeout_s="${KAFKA_START_TIMEOUT_S:-120}" deadline
  deadline=$((SECONDS + timeout_s))
  while ((SECONDS < deadline)); do
    if ! alive "$pid"; then
      rm -f "$pidfile"
      log_tail "$out" "$serverlog"
      die "kafka (pid $pid) exited during startup on port $port"
    fi
    if metadata_ok "$port"; then
      echo "$prog: kafka up on 127.0.0.1:$port (controller $cport, pid $pid, dir $dir)"
      return 0
    fi
    sleep 0.5
  done
  log_tail "$out" "$serverlog"
  # Do not leave a half-started JVM holding the ports.
  cmd_stop "$dir" >&2 || true
  die "kafka on 127.0.0.1:$port did not answer a metadata request within ${timeout_s}s"
}

cmd_stop() {
  [[ $# -eq 1 ]] || usage
  local dir="$1" pidfile props pid
  [[ -d "$dir" ]] && dir="$(cd "$dir" && pwd)"
  pidfile="$dir/kafka.pid"
  props="$dir/server.properties"
  if ! pid="$(read_pid "$pidfile")"; then
    echo "$prog: no pidfile at $pidfile; nothing to stop"
    return 0
  fi
  if ! is_our_kafka "$pid" "$props"; then
    echo "$prog: pid $pid from $pidfile is not our broker (stale pidfile removed)"
    rm -f "$pidfile"
    return 0
  fi
  # SIGTERM runs Kafka's controlled shutdown, which keeps the log clean for
  # the next start in the same <dir>.
  kill -TERM "$pid" 2>/dev/null || true
  local timeout_s="${KAFKA_STOP_TIMEOUT_S:-30}" deadline
  deadline=$((SECONDS + timeout_s))
  while alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if alive "$pid"; then
    echo "$prog: kafka pid $pid still alive after ${timeout_s}s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    local _
    for _ in $(seq 1 50); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then die "could not stop kafka pid $pid"; fi
  fi
  rm -f "$pidfile"
  echo "$prog: kafka pid $pid stopped"
}

cmd_status() {
  [[ $# -eq 1 ]] || usage
  local dir="$1" pid
  [[ -d "$dir" ]] && dir="$(cd "$dir" && pwd)"
  if pid="$(read_pid "$dir/kafka.pid")" && is_our_kafka "$pid" "$dir/server.properties"; then
    echo "$prog: running (pid $pid)"
    return 0
  fi
  echo "$prog: not running"
  return 1
}

# ---- three-node cluster -------------------------------------------------------

CLUSTER_NODES=3

cluster_default_dir() {
  echo "${KAFKA_CLUSTER_DIR:-$(cd "$script_dir/../.." && pwd)/.run/kafka-cluster}"
}

# The six ports (b1 b2 b3 c1 c2 c3) from "<first>" or "b1,b2,b3,c1,c2,c3", one per line.
cluster_ports() {
  local spec="$1" p
  local -a list
  if [[ "$spec" =~ ^[0-9]+$ ]]; then
    for ((p = spec; p < spec + 2 * CLUSTER_NODES; p++)); do check_port "$p"; echo "$p"; done
    return 0
  fi
  IFS=',' read -r -a list <<<"$spec"
  ((${#list[@]} == 2 * CLUSTER_NODES)) || die "cluster needs $((2 * CLUSTER_NODES)) ports b1,b2,b3,c1,c2,c3, got '$spec'"
  for p in "${list[@]}"; do check_port "$p"; echo "$p"; done
  [[ "$(printf '%s\n' "${list[@]}" | sort -u | wc -l)" -eq $((2 * CLUSTER_NODES)) ]] || die "cluster ports repeat: '$spec'"
}

# Broker ports of the nodes in <dir> (from their node-<port> folders).
cluster_dir_ports() {
  local dir="$1" d
  for d in "$dir"/node-*; do
    [[ -d "$d" ]] && echo "${d##*/node-}"
  done
}

# True when the broker on every given port answers a metadata request that
# lists all of them (each has registered with the quorum and is unfenced).
cluster_metadata_ok() {
  local port
  for port in "$@"; do port_open "$port" || return 1; done
  python3 -c 'import confluent_kafka' >/dev/null 2>&1 || return 0  # ports open; nothing better
  timeout 20 python3 - "$@" <<'PY' >/dev/null 2>&1
import sys
from confluent_kafka.admin import AdminClient
ports = sys.argv[1:]
for port in ports:
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
    if len(admin.list_topics(timeout=5).brokers) < len(ports):
        sys.exit(1)
PY
}

cmd_cluster_start() {
  (($# <= 2)) || usage
  local spec="${1:-19092}" dir="${2:-$(cluster_default_dir)}" i
  local -a ports brokers controllers
  mapfile -t ports < <(cluster_ports "$spec")
  ((${#ports[@]} == 2 * CLUSTER_NODES)) || exit 1  # cluster_ports died
  brokers=("${ports[@]:0:CLUSTER_NODES}")
  controllers=("${ports[@]:CLUSTER_NODES}")
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"

  local voters="" bootstrap=""
  for ((i = 0; i < CLUSTER_NODES; i++)); do
    voters+="${voters:+,}$((i + 1))@127.0.0.1:${controllers[i]}"
    bootstrap+="${bootstrap:+,}127.0.0.1:${brokers[i]}"
  done
  # Nodes formatted for another voter set would never form a quorum: start over.
  if [[ -f "$dir/voters" && "$(cat "$dir/voters")" != "$voters" ]]; then
    cmd_cluster_stop "$dir" >&2
    echo "$prog: cluster ports changed for $dir; wiping old nodes" >&2
    rm -rf "$dir"/node-* "$dir/cluster.id"
  fi
  # Every node is formatted with the same cluster id, kept for restarts.
  [[ -s "$dir/cluster.id" ]] || cluster_id >"$dir/cluster.id"
  echo "$voters" >"$dir/voters"
  rm -f "$dir/bootstrap"

  fetch_jars
  local -a pids
  local node pid started=0
  for ((i = 0; i < CLUSTER_NODES; i++)); do
    node="$dir/node-${brokers[i]}"
    mkdir -p "$node"
    if pid="$(read_pid "$node/kafka.pid")" && is_our_kafka "$pid" "$node/server.properties"; then
      pids+=("$pid")
      continue
    fi
    # All nodes are launched before any is waited for: a controller needs a
    # majority of the voters up before its broker can register.
    KAFKA_NODE_ID=$((i + 1)) KAFKA_QUORUM_VOTERS="$voters" KAFKA_INTERNAL_RF=$CLUSTER_NODES \
      KAFKA_CLUSTER_ID="$(cat "$dir/cluster.id")" KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m}" \
      launch_node "${brokers[i]}" "${controllers[i]}" "$node"
    pids+=("$LAUNCHED_PID")
    started=$((started + 1))
  done

  local timeout_s="${KAFKA_START_TIMEOUT_S:-240}" deadline
  deadline=$((SECONDS + timeout_s))
  while ((SECONDS < deadline)); do
    for ((i = 0; i < CLUSTER_NODES; i++)); do
      if ! alive "${pids[i]}"; then
        node="$dir/node-${brokers[i]}"
        rm -f "$node/kafka.pid"
        log_tail "$node/kafka.out" "$node/logs/server.log"
        cmd_cluster_stop "$dir" >&2 || true
        die "kafka node $((i + 1)) (pid ${pids[i]}) exited during startup on port ${brokers[i]}"
      fi
    done
    if cluster_metadata_ok "${brokers[@]}"; then
      echo "$bootstrap" >"$dir/bootstrap"
      echo "$prog: kafka cluster up: brokers ${brokers[*]}, controllers ${controllers[*]}," \
        "pids ${pids[*]} ($started started), dir $dir"
      echo "bootstrap=$bootstrap"
      return 0
    fi
    sleep 1
  done
  for ((i = 0; i < CLUSTER_NODES; i++)); do
    log_tail "$dir/node-${brokers[i]}/logs/server.log"
  done
  cmd_cluster_stop "$dir" >&2 || true
  die "kafka cluster in $dir did not list all $CLUSTER_NODES brokers within ${timeout_s}s"
}

cmd_cluster_stop() {
  (($# <= 1)) || usage
  local dir="${1:-$(cluster_default_dir)}" port node pid
  [[ -d "$dir" ]] || { echo "$prog: no cluster dir $dir; nothing to stop"; return 0; }
  dir="$(cd "$dir" && pwd)"
  rm -f "$dir/bootstrap"
  local -a pids=()
  # SIGTERM to all at once: a broker's controlled shutdown needs the quorum,
  # which one by one the last node would no longer have (it would sit out
  # KAFKA_STOP_TIMEOUT_S and be killed).
  for port in $(cluster_dir_ports "$dir"); do
    node="$dir/node-$port"
    if pid="$(read_pid "$node/kafka.pid")"; then
      if is_our_kafka "$pid" "$node/server.properties"; then
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
      else
        rm -f "$node/kafka.pid"
      fi
    fi
  done
  local timeout_s="${KAFKA_STOP_TIMEOUT_S:-30}" deadline left
  deadline=$((SECONDS + timeout_s))
  while ((SECONDS < deadline)); do
    left=0
    for pid in "${pids[@]}"; do alive "$pid" && left=1; done
    ((left)) || break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do
    if alive "$pid"; then
      echo "$prog: kafka pid $pid still alive after ${timeout_s}s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  local _
  for _ in $(seq 1 50); do
    left=0
    for pid in "${pids[@]}"; do alive "$pid" && left=1; done
    ((left)) || break
    sleep 0.1
  done
  ((left == 0)) || die "could not stop kafka pids ${pids[*]}"
  for port in $(cluster_dir_ports "$dir"); do rm -f "$dir/node-$port/kafka.pid"; done
  echo "$prog: kafka cluster stopped (${#pids[@]} nodes: ${pids[*]})"
}

cmd_cluster_status() {
  (($# <= 1)) || usage
  local dir="${1:-$(cluster_default_dir)}" port pid n=0
  local -a ports=()
  [[ -d "$dir" ]] && dir="$(cd "$dir" && pwd)"
  for port in $(cluster_dir_ports "$dir"); do
    if ! pid="$(read_pid "$dir/node-$port/kafka.pid")" || ! is_our_kafka "$pid" "$dir/node-$port/server.properties"; then
      echo "$prog: cluster node 127.0.0.1:$port not running"
      return 1
    fi
    ports+=("$port")
    n=$((n + 1))
  done
  if ((n != CLUSTER_NODES)); then
    echo "$prog: cluster not running ($n of $CLUSTER_NODES nodes in $dir)"
    return 1
  fi
  if ! cluster_metadata_ok "${ports[@]}"; then
    echo "$prog: cluster nodes run but not every broker lists all $CLUSTER_NODES"
    return 1
  fi
  echo "$prog: cluster running ($n nodes), bootstrap=$(cat "$dir/bootstrap" 2>/dev/null)"
}

cmd_cluster_bootstrap() {
  (($# <= 1)) || usage
  local dir="${1:-$(cluster_default_dir)}"
  [[ -s "$dir/bootstrap" ]] || die "no $dir/bootstrap: the cluster is not up (kafka.sh cluster start)"
  cat "$dir/bootstrap"
}

cmd_cluster() {
  case "${1:-}" in
    start) shift; cmd_cluster_start "$@" ;;
    stop) shift; cmd_cluster_stop "$@" ;;
    status) shift; cmd_cluster_status "$@" ;;
    bootstrap) shift; cmd_cluster_bootstrap "$@" ;;
    *) cmd_cluster_start "$@" ;;
  esac
}

[[ $# -ge 1 ]] || usage
action="$1"; shift
case "$action" in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  fetch) [[ $# -eq 0 ]] || usage; fetch_jars; echo "$prog: Kafka jars ready in $lib_dir" ;;
  cluster) cmd_cluster "$@" ;;
  *) usage ;;
esac
