#!/bin/sh
# agentmesh-daemon DAEMON [FLAGS...]: the image's entry point. Runs one of the
# five daemons in place of this shell (exec), so it is PID 1 and gets SIGTERM
# directly and drains within its grace period.
#
#   agentmesh-daemon router --log-format text
#   agentmesh-daemon agentmesh-router ...     (the console script names work too)
#   agentmesh-daemon agentmesh status         (the CLI)
set -eu

usage() {
  cat <<'USAGE'
usage: agentmesh-daemon DAEMON [FLAGS...]
  DAEMON: bus | router | registry | saga | swarm (or agentmesh-<daemon>), or agentmesh (the CLI)
  FLAGS:  the daemon's flags; `agentmesh-daemon router --help` lists them.
          Every flag can also be set as AGENTMESH_<DAEMON>_<FLAG> or AGENTMESH_<FLAG>.
USAGE
}

if [ "$#" -lt 1 ]; then
  usage >&2
  exit 2
fi
name="$1"
shift
case "$name" in
  bus | router | registry | saga | swarm)
    exec "agentmesh-$name" "$@" ;;
  agentmesh-bus | agentmesh-router | agentmesh-registry | agentmesh-saga | agentmesh-swarm | agentmesh)
    exec "$name" "$@" ;;
  -h | --help | help)
    usage
    exit 0 ;;
  *)
    echo "agentmesh-daemon: unknown daemon '$name'; use bus, router, registry, saga or swarm" >&2
    exit 2 ;;
esac
