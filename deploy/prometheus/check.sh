#!/usr/bin/env bash
# Checks the Prometheus alerting rules: `promtool check rules` (syntax, PromQL,
# templates) and `promtool test rules` (rules.test.yaml: each alert fires on
# synthetic series, and stays quiet when it should).
#
# promtool comes from deploy/local/tools.sh (go install, pinned). Without it,
# CI (CI=1) fails; elsewhere the structural pytest (rules.yaml loads, the five
# alerts are there, every PromQL expression parses) runs instead.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if command -v go >/dev/null 2>&1; then
  PATH="$PATH:$(go env GOPATH)/bin"
fi

if ! command -v promtool >/dev/null 2>&1; then
  if [[ -n "${CI:-}" && "${CI}" != 0 ]]; then
    echo "deploy/prometheus/check.sh: promtool not found on PATH or in \$(go env GOPATH)/bin;" \
      "CI needs it: run deploy/local/tools.sh (installs promtool v0.307.3 = Prometheus 3.7.3)" >&2
    exit 1
  fi
  echo "deploy/prometheus/check.sh: promtool not found (install it with deploy/local/tools.sh);" \
    "running the structural checks of tests/deploy/test_alert_rules.py only" >&2
  cd "$root"
  exec python -m pytest -q -p no:cacheprovider tests/deploy/test_alert_rules.py
fi

cd "$here"
promtool check rules rules.yaml
promtool test rules rules.test.yaml
