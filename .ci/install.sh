#!/usr/bin/env bash
# Idempotent bootstrap for a fresh Debian machine (CI and `make setup`):
#   1. Debian packages: redis-server, kcat, shellcheck, chromium (and a JDK/Maven if absent)
#   2. the Python package with dev extras: pip install -e '.[dev]', then the
#      bus's compiled per-record loops (scripts/build_ext.py)
#   3. the Kafka broker jars from Maven Central (deploy/local/kafka/pom.xml)
#   4. pinned Go tools (deploy/local/tools.sh)
#   5. the polyglot clients' deps: Go modules of clients/go, npm ci in clients/node
# Each step skips what is already there, so re-running costs seconds, and
# prints what it cost.
#
#   bash .ci/install.sh demo   only what `make demo` needs: redis-server and
#                              pip install -e '.[demo]' (no JDK, Kafka, Go, npm)
#
# Env:
#   PYTHON                 interpreter to install into (default: python, else python3)
#   AGENTMESH_SKIP_APT=1   never call apt-get (e.g. no root and no sudo)
#   AGENTMESH_SKIP_TOOLS=1 skip the Go tools (they take minutes to build cold)
#
# Callers should put the Go tools on PATH afterwards; the last line printed is
#   export PATH="$(go env GOPATH)/bin:$PATH"
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

say() { echo "install.sh: $*" >&2; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

profile="${1:-full}"
[[ "$profile" == "full" || "$profile" == "demo" ]] || die "unknown profile '$profile' (full or demo)"
step_t0=$SECONDS
# took <step>: print the seconds the step just finished cost, start the next clock.
took() { say "$1 took $((SECONDS - step_t0)) s"; step_t0=$SECONDS; }

# CI containers run as root and often have no sudo; developers are not root.
as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root for: $* (no sudo available); install it by hand or set AGENTMESH_SKIP_APT=1"
  fi
}

# --- 1. Debian packages ------------------------------------------------------
pkgs=()
command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
if [[ "$profile" == "full" ]]; then
  command -v kcat >/dev/null 2>&1 || pkgs+=(kcat)
  command -v shellcheck >/dev/null 2>&1 || pkgs+=(shellcheck)
  # Kafka 4.x needs Java 17; Maven fetches the broker jars.
  command -v java >/dev/null 2>&1 || pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
  # The console's browser tests (Playwright drives this binary; no browser download).
  [[ -x /usr/bin/chromium ]] || pkgs+=(chromium)
fi

if [[ ${#pkgs[@]} -gt 0 ]]; then
  if [[ "${AGENTMESH_SKIP_APT:-0}" == "1" ]]; then
    say "AGENTMESH_SKIP_APT=1; not installing missing packages: ${pkgs[*]}"
  else
    command -v apt-get >/dev/null 2>&1 || die "missing ${pkgs[*]} and apt-get is unavailable"
    say "apt-get install ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Lock timeout: wait behind another apt run instead of failing on its lock.
    as_root apt-get -o DPkg::Lock::Timeout=600 update -q
    as_root apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${pkgs[@]}"
  fi
else
  say "Debian packages present"
fi
took "Debian packages"

# --- 2. Python package -------------------------------------------------------
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if command -v python >/dev/null 2>&1; then py=python; else py=python3; fi
fi
command -v "$py" >/dev/null 2>&1 || die "Python interpreter '$py' not found"
[[ -f pyproject.toml ]] || die "pyproject.toml not found in $repo_root"
extras=dev
[[ "$profile" == "demo" ]] && extras=demo
say "$py -m pip install -e '.[$extras]'"
# pip skips satisfied requirements itself, which keeps re-runs cheap.
"$py" -m pip install -q --disable-pip-version-check -e ".[$extras]"
took "Python package"
if [[ "$profile" == "full" ]]; then
  # The bus's compiled per-record loops (Cython, into services/bus); the
  # gateway runs the Python twin when they are missing or stale.
  "$py" scripts/build_ext.py >&2
  took "compiled extensions"
fi
if [[ "$profile" == "demo" ]]; then
  say "done (demo profile)"
  exit 0
fi

# --- 3. Kafka broker jars ----------------------------------------------------
say "Kafka broker jars"
bash deploy/local/kafka.sh fetch >&2
took "Kafka broker jars"

# --- 4. Go tools -------------------------------------------------------------
if [[ "${AGENTMESH_SKIP_TOOLS:-0}" == "1" ]]; then
  say "AGENTMESH_SKIP_TOOLS=1; skipping Go tools"
elif ! command -v go >/dev/null 2>&1; then
  die "'go' not found; install Go >= 1.24 (needed for grpcurl, ghz, grpc-health-probe, helm, kubeconform)"
else
  say "Go tools"
  bash deploy/local/tools.sh >&2
fi
took "Go tools"

# --- 5. Polyglot clients (clients/go, clients/node; tests/e2e/test_polyglot.py) ---
# Go: fetch the agent's modules from the proxy now, so the e2e test's
# `go build` only compiles. Node: `npm ci` from the committed lockfile, again
# only when node_modules is missing or older than package-lock.json.
if command -v go >/dev/null 2>&1; then
  say "clients/go: go mod download"
  (cd clients/go && go mod download)
else
  say "'go' not found; the Go agent e2e tests will fail under CI (install Go >= 1.24)"
fi
if command -v npm >/dev/null 2>&1; then
  stamp=clients/node/node_modules/.package-lock.json # written by npm ci
  if [[ ! -f "$stamp" || clients/node/package-lock.json -nt "$stamp" ]]; then
    say "clients/node: npm ci"
    npm ci --prefix clients/node --no-audit --no-fund >&2
  else
    say "clients/node: node_modules up to date"
  fi
else
  say "'npm' not found; the Node client e2e test will fail under CI (install Node.js >= 20)"
fi
took "polyglot clients"

say "done"
# The one line on stdout, so callers can `eval "$(bash .ci/install.sh)"`.
if command -v go >/dev/null 2>&1; then
  echo "export PATH=\"$(go env GOPATH)/bin:\$PATH\""
fi
