# shellcheck shell=bash
# PID-file helpers shared by redis.sh and kafka.sh (sourced, not run).

# kill -0 alone reports a zombie (exited, not yet reaped by its parent) as
# alive, which would turn every stop into a timeout; treat state Z as gone.
alive() {
  local pid="$1" state
  kill -0 "$pid" 2>/dev/null || return 1
  state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null || true)"
  [[ "$state" != "Z" ]]
}

# Print the PID stored in a pidfile; fail when it is missing or not a number.
read_pid() {
  local pidfile="$1" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(tr -d '[:space:]' <"$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  echo "$pid"
}
