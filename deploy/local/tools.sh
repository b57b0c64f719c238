#!/usr/bin/env bash
# Installs the pinned Go CLI tools the project uses (grpcurl, ghz,
# grpc-health-probe, helm, kubeconform, jaeger, ...) into "$(go env GOPATH)/bin".
#
# Why `go install` instead of release tarballs: the proxy is the one download
# source that CI machines reach, and `go install pkg@vX` is reproducible from
# go.sum checks against sum.golang.org.
#
# Usage:  bash deploy/local/tools.sh            # install all missing/outdated
#         bash deploy/local/tools.sh grpcurl    # only the named tools
# Env:    AGENTMESH_TOOLS_FORCE=1 reinstalls even if the pinned version is present.
set -euo pipefail

if ! command -v go >/dev/null 2>&1; then
  echo "tools.sh: 'go' not found on PATH; install Go (>= 1.24) first" >&2
  exit 1
fi

# name|module|package|version|version variable set via -ldflags -X (so
# `tool --version` tells the truth; `go install` alone leaves "dev")[|more
# -X flags, as the tool's own release build sets them].
# Bump deliberately; each pin was built with the CI image's Go (go1.26) first.
TOOLS=(
  "grpcurl|github.com/fullstorydev/grpcurl|github.com/fullstorydev/grpcurl/cmd/grpcurl|v1.9.3|main.version"
  "ghz|github.com/bojand/ghz|github.com/bojand/ghz/cmd/ghz|v0.121.0|main.version"
  "grpc-health-probe|github.com/grpc-ecosystem/grpc-health-probe|github.com/grpc-ecosystem/grpc-health-probe|v0.4.52|main.versionTag"
  # helm's release Makefile also stamps the Kubernetes version it assumes without
  # --kube-version (client-go v0.35.1 in its go.mod -> 1.35); left out, helm
  # assumes v1.20 and refuses the chart's kubeVersion ">=1.27".
  "helm|helm.sh/helm/v3|helm.sh/helm/v3/cmd/helm|v3.20.2|helm.sh/helm/v3/internal/version.version|-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=35 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=35"
  "kubeconform|github.com/yannh/kubeconform|github.com/yannh/kubeconform/cmd/kubeconform|v0.6.7|main.version"
  # Go stub generators for clients/go (`buf generate` runs them as local plugins);
  # they report their own version, so no -X variable.
  "protoc-gen-go|google.golang.org/protobuf|google.golang.org/protobuf/cmd/protoc-gen-go|v1.36.10|"
  "protoc-gen-go-grpc|google.golang.org/grpc/cmd/protoc-gen-go-grpc|google.golang.org/grpc/cmd/protoc-gen-go-grpc|v1.5.1|"
  # Prometheus 3.x tags are v3.y.z; its Go module publishes them as v0.3yy.z.
  "promtool|github.com/prometheus/prometheus|github.com/prometheus/prometheus/cmd/promtool|v0.307.3|github.com/prometheus/common/version.Version"
  # Jaeger all-in-one (OTLP on 4317, query API and UI on 16686) for `make up
  # TRACING=1` and the tracing e2e test. Its go.mod has replace directives, so
  # `go install` refuses it and the temporary-module build below makes it.
  "jaeger|github.com/jaegertracing/jaeger|github.com/jaegertracing/jaeger/cmd/jaeger|v1.75.0|github.com/jaegertracing/jaeger/internal/version.latestVersion"
)

gobin="$(go env GOBIN)"
if [[ -z "$gobin" ]]; then
  gobin="$(go env GOPATH)/bin"
fi
mkdir -p "$gobin"
# `go install` honours GOBIN; set it explicitly so a caller's GOBIN cannot send
# the binaries somewhere the PATH hint below does not point at.
export GOBIN="$gobin"
# A toolchain switch would silently download another Go; fail loudly instead.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

# Prints the version of MODULE embedded in a Go binary ("" if unknown). It is
# the main module after `go install`, a dependency after the fallback build.
installed_version() {
  local bin="$1" module="$2"
  [[ -x "$bin" ]] || return 0
  go version -m "$bin" 2>/dev/null |
    awk -v m="$module" '($1 == "mod" || $1 == "dep") && $2 == m { print $3; exit }'
}

# Fallback for proxies that serve a version's zip but refuse the module's
# @v/list (go install consults it for deprecation notices and then gives up):
# build the package from a throwaway module that requires the pinned version.
# Minimal version selection picks the same dependency versions go install would.
build_via_temp_module() {
  local name="$1" module="$2" pkg="$3" version="$4" ldflags="$5" tmp rc=0
  tmp="$(mktemp -d)"
  (
    cd "$tmp"
    go mod init agentmesh.local/tools-build >/dev/null 2>&1
    printf 'package tools\n\nimport _ "%s"\n' "$pkg" >tools.go
    go mod edit -require="$module@$version"
    go mod tidy
    go build -trimpath -ldflags "$ldflags" -o "$GOBIN/$name" "$pkg"
  ) || rc=$?
  rm -rf "$tmp"
  return "$rc"
}

# The -ldflags each tool was last built with: -trimpath builds do not record
# them in the binary, and a changed flag (helm's Kubernetes version) must
# rebuild a tool whose module version did not change.
flagdir="$gobin/.agentmesh-ldflags"
mkdir -p "$flagdir"
installed_ldflags() { cat "$flagdir/$1" 2>/dev/null || true; }

want=("$@")
selected() {
  local name="$1" w
  [[ ${#want[@]} -eq 0 ]] && return 0
  for w in "${want[@]}"; do
    [[ "$w" == "$name" ]] && return 0
  done
  return 1
}

failed=()
for entry in "${TOOLS[@]}"; do
  IFS='|' read -r name module pkg version versionvar extraflags <<<"$entry"
  selected "$name" || continue
  bin="$gobin/$name"
  ldflags="-s -w"
  [[ -z "$versionvar" ]] || ldflags+=" -X $versionvar=$version"
  [[ -z "$extraflags" ]] || ldflags+=" $extraflags"
  have="$(installed_version "$bin" "$module")"
  if [[ "$have" == "$version" && "$(installed_ldflags "$name")" == "$ldflags" &&
        "${AGENTMESH_TOOLS_FORCE:-0}" != "1" ]]; then
    echo "tools.sh: $name $version already installed at $bin"
    continue
  fi
  t0=$SECONDS
  echo "tools.sh: installing $name $version (have: ${have:-none}) ..."
  if go install -trimpath -ldflags "$ldflags" "$pkg@$version" ||
    { echo "tools.sh: go install failed; retrying $name via a temporary module" >&2 &&
      build_via_temp_module "$name" "$module" "$pkg" "$version" "$ldflags"; }; then
    printf '%s' "$ldflags" >"$flagdir/$name"
    echo "tools.sh: installed $name $version -> $bin in $((SECONDS - t0)) s"
  else
    echo "tools.sh: FAILED to build $name ($pkg@$version) with $(go version)" >&2
    failed+=("$name")
  fi
done

echo "tools.sh: tools are in $gobin"
echo "tools.sh: add them to PATH with:  export PATH=\"$gobin:\$PATH\""
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "tools.sh: failed: ${failed[*]}" >&2
  exit 1
fi
