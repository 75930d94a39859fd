#!/usr/bin/env bash
# Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy (and kubectl) from the
# upstream Go modules, and cache them by version:
#
#   ${RAZOR_CACHE:-$HOME/.cache/razor}/k8s/<k8s version>/bin/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy,kubectl}
#
# The last line of stdout is the bin dir (progress goes to stderr), so:
#
#   BIN=$(scripts/k8s-binaries.sh | tail -1)
#
# Needs only Go and the Go module proxy. Run with --help for the options.
set -euo pipefail

# ---- versions (override from the environment) -------------------------------
# Paired as envtest pairs them: Kubernetes 1.36 with etcd 3.6.
# Note: `go list -m -versions k8s.io/kubernetes` on proxy.golang.org does not list
# every release (v1.36.4 and v1.36.5 are missing from the list but are served);
# `go list -m k8s.io/kubernetes@v1.36.N` tells whether a version is there.
K8S_VERSION="${K8S_VERSION:-1.36.5}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"

RAZOR_CACHE="${RAZOR_CACHE:-$HOME/.cache/razor}"
BUILD_KUBECTL="${BUILD_KUBECTL:-1}"    # 0: skip kubectl
BUILD_NODE="${BUILD_NODE:-1}"          # 0: skip kube-scheduler, kubelet, kube-proxy (the node)
BUILD_JOBS="${BUILD_JOBS:-2}"          # go build -p (packages built at once)
GO="${GO:-}"
FORCE=0

usage() {
  cat <<EOF
Usage: scripts/k8s-binaries.sh [--force] [--no-kubectl] [--help]

Builds etcd ${ETCD_VERSION#v}, kube-apiserver, kube-controller-manager and kubectl
${K8S_VERSION#v} from the upstream Go modules (through the Go module proxy) and
caches them in
  \$RAZOR_CACHE/k8s/<k8s version>/bin      (RAZOR_CACHE defaults to \$HOME/.cache/razor)
If the cached binaries are there and report the expected versions, nothing is
built. The bin dir is printed as the last line of stdout:
  BIN=\$(scripts/k8s-binaries.sh | tail -1)

A first build takes a long time (roughly half an hour on 2 cores) and a few GB
of Go build cache and module cache (GOCACHE, GOMODCACHE: the Go defaults unless set).

Options:
  --force       rebuild even when the cache is complete
  --no-kubectl  do not build kubectl (same as BUILD_KUBECTL=0)
  --no-node     do not build kube-scheduler, kubelet, kube-proxy (same as BUILD_NODE=0)
  -h, --help    this help

Environment:
  K8S_VERSION    Kubernetes version (default ${K8S_VERSION}); staging modules k8s.io/* use v0.<minor>.<patch>
  ETCD_VERSION   etcd version (default ${ETCD_VERSION})
  RAZOR_CACHE    cache root (default \$HOME/.cache/razor)
  BUILD_KUBECTL  1 (default) or 0
  BUILD_NODE     1 (default) or 0: kube-scheduler, kubelet and kube-proxy for the one-node cluster
  BUILD_JOBS     go build -p value (default 2)
  GO             go binary (default: go on PATH, else /usr/local/go/bin/go)
  GOPROXY, GOCACHE, GOMODCACHE, GOTOOLCHAIN are honoured as usual.
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --force) FORCE=1 ;;
    --no-kubectl) BUILD_KUBECTL=0 ;;
    --no-node) BUILD_NODE=0 ;;
    *) echo "k8s-binaries: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "k8s-binaries: $*" >&2; }
die() { echo "k8s-binaries: error: $*" >&2; exit 1; }

K8S_VERSION="${K8S_VERSION#v}"
ETCD_VERSION="${ETCD_VERSION#v}"
[[ "$K8S_VERSION" =~ ^1\.([0-9]+)\.([0-9]+)$ ]] || die "K8S_VERSION must look like 1.36.5, got '$K8S_VERSION'"
K8S_MINOR="${BASH_REMATCH[1]}"
STAGING_VERSION="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"   # 1.36.5 -> v0.36.5
[[ "$ETCD_VERSION" =~ ^3\.[0-9]+\.[0-9]+$ ]] || die "ETCD_VERSION must look like 3.6.16, got '$ETCD_VERSION'"

VER_DIR="$RAZOR_CACHE/k8s/$K8S_VERSION"
BIN_DIR="$VER_DIR/bin"
BUILD_DIR="$VER_DIR/build"

BINARIES=(etcd kube-apiserver kube-controller-manager)
[ "$BUILD_KUBECTL" = 1 ] && BINARIES+=(kubectl)
[ "$BUILD_NODE" = 1 ] && BINARIES+=(kube-scheduler kubelet kube-proxy)

# The string each binary's version output must contain.
expected_version() {
  case "$1" in
    etcd) echo "etcd Version: $ETCD_VERSION" ;;
    kubectl) echo "Client Version: v$K8S_VERSION" ;;
    *) echo "Kubernetes v$K8S_VERSION" ;;
  esac
}

# version_ok NAME PATH: the binary runs and reports the expected version.
version_ok() {
  local out
  case "$1" in
    kubectl) out=$("$2" version --client 2>/dev/null) || return 1 ;;
    *) out=$("$2" --version 2>/dev/null) || return 1 ;;
  esac
  grep -qxF "$(expected_version "$1")" <<<"$out"
}

missing() {
  local b
  for b in "${BINARIES[@]}"; do
    if [ "$FORCE" = 1 ] || ! [ -x "$BIN_DIR/$b" ] || ! version_ok "$b" "$BIN_DIR/$b"; then
      echo "$b"
    fi
  done
}

# Fast path: everything is cached.
if [ -z "$(missing)" ]; then
  log "cached: ${BINARIES[*]} (Kubernetes $K8S_VERSION, etcd $ETCD_VERSION)"
  echo "$BIN_DIR"
  exit 0
fi

# ---- set-up -----------------------------------------------------------------
if [ -z "$GO" ]; then
  if command -v go >/dev/null 2>&1; then GO=go
  elif [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go
  else die "no Go toolchain: put go on PATH or set GO=/path/to/go"
  fi
fi
"$GO" version >/dev/null 2>&1 || die "'$GO version' failed"

mkdir -p "$BIN_DIR" "$BUILD_DIR"

# One build at a time per version (two test runs may start at once).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$VER_DIR/.lock"
  if ! flock -n 9; then
    log "another build of $K8S_VERSION is running; waiting for it"
    flock 9
  fi
  rm -rf "$VER_DIR"/.tmp.*    # left by an interrupted build (we hold the lock)
fi

TODO=$(missing)
if [ -z "$TODO" ]; then
  log "cached: ${BINARIES[*]} (built by another process)"
  echo "$BIN_DIR"
  exit 0
fi

TMP_OUT=$(mktemp -d "$VER_DIR/.tmp.XXXXXX")
trap 'rm -rf "$TMP_OUT"' EXIT

# Modules only, no workspace, no C: static binaries like the upstream release.
export GO111MODULE=on GOWORK=off CGO_ENABLED=0
export GOFLAGS="-mod=mod -buildvcs=false -p=$BUILD_JOBS"
TRIM_FLAGS=(-trimpath)

log "$("$GO" version); building: $(tr "\n" " " <<<"$TODO")(Kubernetes $K8S_VERSION, staging $STAGING_VERSION, etcd $ETCD_VERSION)"
log "cache: $VER_DIR"
START=$SECONDS

# install NAME: check the freshly built binary, then move it into the cache.
install_bin() {
  local name=$1 tmp="$TMP_OUT/$1"
  version_ok "$name" "$tmp" || die "$name was built but does not report '$(expected_version "$name")'"
  chmod 755 "$tmp"
  mv -f "$tmp" "$BIN_DIR/$name"
  log "installed $BIN_DIR/$name ($(du -h "$BIN_DIR/$name" | cut -f1))"
}

needs() { grep -qx "$1" <<<"$TODO"; }

# ---- etcd ---------------------------------------------------------------------
# The etcd binary's main package is the root of go.etcd.io/etcd/server/v3
# (server/main.go). That go.mod has replace directives (../api etc.), so
# `go install module@version` refuses it: build it from a wrapper module.
build_etcd() {
  local dir="$BUILD_DIR/etcd-$ETCD_VERSION" v="v$ETCD_VERSION"
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<EOF
module razor.local/etcd-build

go 1.21

require (
	go.etcd.io/etcd/api/v3 $v
	go.etcd.io/etcd/client/pkg/v3 $v
	go.etcd.io/etcd/client/v3 $v
	go.etcd.io/etcd/pkg/v3 $v
	go.etcd.io/etcd/server/v3 $v
)
EOF
  rm -f "$dir/go.sum"
  local etcd_go
  etcd_go=$(cd "$dir" && "$GO" list -m -f '{{.GoVersion}}' "go.etcd.io/etcd/server/v3@$v") \
    || die "go.etcd.io/etcd/server/v3@$v is not available from the module proxy"
  (cd "$dir" && "$GO" mod edit -go="$etcd_go")
  log "building etcd $ETCD_VERSION (go.etcd.io/etcd/server/v3@$v)"
  (cd "$dir" && "$GO" build "${TRIM_FLAGS[@]}" -ldflags "-s -w" \
      -o "$TMP_OUT/etcd" go.etcd.io/etcd/server/v3) >&2 || die "building etcd failed"
  install_bin etcd
}

# ---- Kubernetes -----------------------------------------------------------------
# k8s.io/kubernetes replaces every k8s.io/* staging module with ./staging/src/...,
# which the module zip does not contain. The wrapper module requires
# k8s.io/kubernetes and replaces each such staging module with its published
# version (v0.<minor>.<patch>).
prepare_k8s_module() {
  local dir="$BUILD_DIR/kubernetes-$K8S_VERSION" v="v$K8S_VERSION" gomod
  K8S_MOD_DIR=$dir
  mkdir -p "$dir"
  printf 'module razor.local/kubernetes-build\n' >"$dir/go.mod"
  rm -f "$dir/go.sum"
  gomod=$(cd "$dir" && "$GO" list -m -f '{{.GoMod}}' "k8s.io/kubernetes@$v") \
    || die "k8s.io/kubernetes@$v is not available from the module proxy"
  [ -f "$gomod" ] || die "no go.mod for k8s.io/kubernetes@$v at $gomod"

  # Staging modules: replaced with ./staging/... and required (at v0.0.0).
  local staging required
  staging=$(awk '
      /^replace[ \t]*\($/ { inblock = 1; next }
      inblock && /^\)/     { inblock = 0; next }
      inblock && $2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }
      /^replace[ \t]/ && $3 == "=>" && $4 ~ /^\.\/staging\// { print $2 }
    ' "$gomod" | sort -u)
  [ -n "$staging" ] || die "found no ./staging replace directives in $gomod"
  required=$(awk '
      /^require[ \t]*\($/ { inblock = 1; next }
      inblock && /^\)/     { inblock = 0; next }
      inblock              { print $1 }
      /^require[ \t]/ && $2 != "(" { print $2 }
    ' "$gomod" | sort -u)

  local go_line godebug
  go_line=$(awk '$1 == "go" { print $2; exit }' "$gomod")
  # godebug settings of the upstream main module apply to the binaries it builds.
  godebug=$(awk '$1 == "godebug" && $2 != "(" { $1 = ""; sub(/^ /, ""); print }' "$gomod")

  {
    echo "module razor.local/kubernetes-build"
    echo
    echo "go ${go_line:-1.24}"
    [ -z "$godebug" ] || { echo; echo "godebug $godebug"; }
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    echo "replace ("
    local m
    for m in $staging; do
      grep -qx "$m" <<<"$required" || continue     # e.g. sample-controller: not needed, not published
      printf '\t%s => %s %s\n' "$m" "$m" "$STAGING_VERSION"
    done
    echo ")"
  } >"$dir/go.mod"
  log "wrapper module $dir/go.mod: k8s.io/kubernetes $v with $(grep -c ' => ' "$dir/go.mod") staging modules at $STAGING_VERSION"

  # As hack/lib/version.sh stamps them; buildDate is the release time, for reproducible builds.
  local date
  date=$(cd "$dir" && "$GO" list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' "k8s.io/kubernetes@$v" 2>/dev/null || true)
  K8S_LDFLAGS="-s -w"
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    K8S_LDFLAGS+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR -X $pkg.gitTreeState=clean"
    [ -z "$date" ] || K8S_LDFLAGS+=" -X $pkg.buildDate=$date"
  done
  # Build tags of upstream release builds (hack/lib/golang.sh).
  K8S_TAGS="selinux,notest,grpcnotrace"
}

build_k8s() {
  local name=$1
  log "building $name $K8S_VERSION (k8s.io/kubernetes/cmd/$name)"
  local t0=$SECONDS
  (cd "$K8S_MOD_DIR" && "$GO" build "${TRIM_FLAGS[@]}" -tags "$K8S_TAGS" -ldflags "$K8S_LDFLAGS" \
      -o "$TMP_OUT/$name" "k8s.io/kubernetes/cmd/$name") >&2 || die "building $name failed"
  log "$name built in $((SECONDS - t0))s"
  install_bin "$name"
}

if needs etcd; then build_etcd; fi
K8S_BINARIES=(kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet kube-proxy)
if [ -n "$(grep -vx etcd <<<"$TODO")" ]; then
  prepare_k8s_module
  for b in "${K8S_BINARIES[@]}"; do
    if needs "$b"; then build_k8s "$b"; fi
  done
fi

[ -z "$(FORCE=0 missing)" ] || die "still missing after the build: $(FORCE=0 missing | tr '\n' ' ')"
log "done in $((SECONDS - START))s"
echo "$BIN_DIR"
