#!/usr/bin/env bash
# `make deploy-check`: everything under deploy/, offline.
#   1. hadolint on deploy/docker/Dockerfile (and shellcheck on every shell script; required under CI)
#   2. helm lint --strict and helm template, with the chart's defaults and with
#      values-ha.yaml and every ci/*-values.yaml
#   3. the tests under tests/deploy: rendered objects against the Kubernetes
#      schemas (kubernetes-validate), helm-unittest-style chart assertions, the
#      image checks, a daemon run from the rendered manifest, and the
#      dashboard/alert checks
#   4. deploy/prometheus/check.sh (promtool) when it exists
# helm and promtool come from deploy/local/tools.sh, hadolint from the dev extras.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if command -v go >/dev/null 2>&1; then
  PATH="$(go env GOPATH)/bin:$PATH"
fi
PYTHON="${PYTHON:-python}"
# console scripts of the interpreter's environment (hadolint ships in a wheel)
PATH="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

chart=deploy/helm/agentmesh
kube_version="${AGENTMESH_KUBE_VERSION:-1.30.0}"
say() { echo "deploy/check.sh: $*" >&2; }

for tool in helm hadolint; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    say "$tool not found: run bash .ci/install.sh (helm: deploy/local/tools.sh; hadolint: pip install -e '.[dev]')"
    exit 1
  fi
done

say "hadolint deploy/docker/Dockerfile"
hadolint --failure-threshold style deploy/docker/Dockerfile
if command -v shellcheck >/dev/null 2>&1; then
  say "shellcheck on every shell script of the repository"
  shellcheck deploy/docker/entrypoint.sh deploy/check.sh deploy/prometheus/check.sh \
    deploy/local/*.sh .ci/run .ci/install.sh scripts/*.sh
elif [[ -n "${CI:-}" ]]; then
  say "shellcheck not found: run bash .ci/install.sh (Debian package shellcheck)"
  exit 1
fi

values_files=("" "$chart/values-ha.yaml")
for f in "$chart"/ci/*-values.yaml; do
  values_files+=("$f")
done
for values in "${values_files[@]}"; do
  args=()
  [[ -z "$values" ]] || args=(--values "$values")
  say "helm lint + template ${values:-(defaults)}"
  helm lint --strict --quiet "$chart" --kube-version "$kube_version" "${args[@]}" >/dev/null
  helm template agentmesh "$chart" --kube-version "$kube_version" "${args[@]}" >/dev/null
done

say "pytest tests/deploy"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/deploy

if [[ -f deploy/prometheus/check.sh ]]; then
  say "deploy/prometheus/check.sh"
  bash deploy/prometheus/check.sh
fi
say "OK"
