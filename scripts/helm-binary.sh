#!/usr/bin/env bash
# Build helm (v3) from the upstream Go module and cache it by version:
#
#   ${RAZOR_CACHE:-$HOME/.cache/razor}/helm/<version>/helm
#
# The last line of stdout is the path of the binary (progress goes to stderr), so:
#
#   HELM=$(scripts/helm-binary.sh | tail -1)
#
# Needs only Go and the Go module proxy (no other download). Run with --help for the options.
set -euo pipefail

# ---- version (override from the environment) ----------------------------------
# The newest v3 release the Go module proxy served when this was written:
#   go list -m helm.sh/helm/v3@latest            -> helm.sh/helm/v3 v3.22.0
# HELM_VERSION=latest asks the proxy again (needs the network on every run).
HELM_VERSION="${HELM_VERSION:-3.22.0}"

RAZOR_CACHE="${RAZOR_CACHE:-$HOME/.cache/razor}"
BUILD_JOBS="${BUILD_JOBS:-2}"          # go build -p (packages built at once)
GO="${GO:-}"
FORCE=0

usage() {
  cat <<EOF
Usage: scripts/helm-binary.sh [--force] [--help]

Builds helm ${HELM_VERSION#v} from the upstream Go module helm.sh/helm/v3 (through the
Go module proxy, with go install) and caches it as
  \$RAZOR_CACHE/helm/<version>/helm      (RAZOR_CACHE defaults to \$HOME/.cache/razor)
If the cached binary is there and reports the expected version, nothing is built.
The binary's path is printed as the last line of stdout:
  HELM=\$(scripts/helm-binary.sh | tail -1)

A first build takes a few minutes on 2 cores and about 1 GB of Go build cache and
module cache (GOCACHE, GOMODCACHE: the Go defaults unless set).

Options:
  --force       rebuild even when the cached binary is fine
  -h, --help    this help

Environment:
  HELM_VERSION   helm version (default ${HELM_VERSION}); 'latest': the newest v3 the proxy serves
  RAZOR_CACHE    cache root (default \$HOME/.cache/razor)
  BUILD_JOBS     go build -p value (default 2)
  GO             go binary (default: go on PATH, else /usr/local/go/bin/go)
  GOPROXY, GOCACHE, GOMODCACHE, GOTOOLCHAIN are honoured as usual.
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --force) FORCE=1 ;;
    *) echo "helm-binary: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "helm-binary: $*" >&2; }
die() { echo "helm-binary: error: $*" >&2; exit 1; }

find_go() {
  [ -n "$GO" ] && return 0
  if command -v go >/dev/null 2>&1; then GO=go
  elif [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go
  else die "no Go toolchain: put go on PATH or set GO=/path/to/go"
  fi
}

# Modules only, no workspace, no C: a static binary like the upstream release.
export GO111MODULE=on GOWORK=off CGO_ENABLED=0

HELM_VERSION="${HELM_VERSION#v}"
if [ "$HELM_VERSION" = latest ]; then
  find_go
  resolved=$(cd / && "$GO" list -m -f '{{.Version}}' helm.sh/helm/v3@latest) \
    || die "cannot ask the Go module proxy for the newest helm.sh/helm/v3"
  HELM_VERSION="${resolved#v}"
  log "newest helm.sh/helm/v3 on the proxy: v$HELM_VERSION"
fi
[[ "$HELM_VERSION" =~ ^3\.[0-9]+\.[0-9]+$ ]] || die "HELM_VERSION must look like 3.22.0 (a v3 release), got '$HELM_VERSION'"

VER_DIR="$RAZOR_CACHE/helm/$HELM_VERSION"
HELM_BIN="$VER_DIR/helm"

# version_ok PATH: the binary runs and reports exactly v<HELM_VERSION>.
version_ok() {
  local out
  out=$("$1" version --template '{{.Version}}' 2>/dev/null) || return 1
  [ "$out" = "v$HELM_VERSION" ]
}

# Fast path: cached.
if [ "$FORCE" = 0 ] && [ -x "$HELM_BIN" ] && version_ok "$HELM_BIN"; then
  log "cached: helm v$HELM_VERSION"
  echo "$HELM_BIN"
  exit 0
fi

# ---- set-up -----------------------------------------------------------------
find_go
"$GO" version >/dev/null 2>&1 || die "'$GO version' failed"
mkdir -p "$VER_DIR"

# One build at a time per version (two test runs may start at once).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$VER_DIR/.lock"
  if ! flock -n 9; then
    log "another build of helm $HELM_VERSION is running; waiting for it"
    flock 9
  fi
  rm -rf "$VER_DIR"/.tmp.*    # left by an interrupted build (we hold the lock)
  if [ "$FORCE" = 0 ] && [ -x "$HELM_BIN" ] && version_ok "$HELM_BIN"; then
    log "cached: helm v$HELM_VERSION (built by another process)"
    echo "$HELM_BIN"
    exit 0
  fi
fi

TMP_OUT=$(mktemp -d "$VER_DIR/.tmp.XXXXXX")
trap 'rm -rf "$TMP_OUT"' EXIT

V="v$HELM_VERSION"
# helm's go.mod has no replace directives, so `go install module/cmd@version` builds it as
# released (-mod=mod: resolve from its go.mod and go.sum, like a module-aware install).
gomod=$(cd / && "$GO" list -m -f '{{.GoMod}}' "helm.sh/helm/v3@$V") \
  || die "helm.sh/helm/v3@$V is not available from the Go module proxy"
[ -f "$gomod" ] || die "no go.mod for helm.sh/helm/v3@$V at $gomod"

# As helm's Makefile stamps a release: its version, a clean tree, and the Kubernetes version
# that `helm template` and `helm lint` assume without a cluster (client-go v0.N.x -> 1.N).
client_go=$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod")
[[ "$client_go" =~ ^v0\.([0-9]+)\. ]] || die "cannot find k8s.io/client-go v0.N.x in $gomod (got '$client_go')"
K8S_MINOR="${BASH_REMATCH[1]}"
LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$V -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  LDFLAGS+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$K8S_MINOR"
done

log "$("$GO" version); building helm $V (helm.sh/helm/v3/cmd/helm@$V, client-go $client_go)"
log "cache: $VER_DIR"
START=$SECONDS
GOFLAGS="-mod=mod -buildvcs=false -p=$BUILD_JOBS" GOBIN="$TMP_OUT" \
  "$GO" install -trimpath -ldflags "$LDFLAGS" "helm.sh/helm/v3/cmd/helm@$V" >&2 \
  || die "building helm $V failed"

version_ok "$TMP_OUT/helm" || die "helm was built but does not report $V: $("$TMP_OUT/helm" version 2>&1 || true)"
chmod 755 "$TMP_OUT/helm"
mv -f "$TMP_OUT/helm" "$HELM_BIN"
log "installed $HELM_BIN ($(du -h "$HELM_BIN" | cut -f1)) in $((SECONDS - START))s"
echo "$HELM_BIN"
