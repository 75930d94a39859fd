#!/usr/bin/env bash
# What the test cluster's one real node needs besides kubelet, kube-proxy and kube-scheduler
# (those come from scripts/k8s-binaries.sh):
#
#   1. Debian's containerd (the CRI runtime), runc, the CNI plugins (bridge, host-local,
#      loopback), iptables and conntrack (kube-proxy): apt-get, only when one is missing.
#   2. CoreDNS, built from the Go module github.com/coredns/coredns with the plugins a cluster's
#      DNS uses (kubernetes, errors, log, health, ready, cache, loop, reload, loadbalance,
#      hosts, forward), cached by version:   $RAZOR_CACHE/node/bin/coredns
#   3. The pod sandbox ("pause") image: images/pause/pause.c compiled statically, in an image
#      built FROM scratch with podman and saved as a docker archive, cached by the source's hash:
#        $RAZOR_CACHE/node/bin/pause.tar    (tests/kube_node.py imports it into containerd)
#
# The last line of stdout is the bin dir:  NODE_BIN=$(scripts/node-tools.sh | tail -1)
# A second run takes a second. Run with --help for the options.
set -euo pipefail

COREDNS_VERSION="${COREDNS_VERSION:-1.14.7}"
RAZOR_CACHE="${RAZOR_CACHE:-$HOME/.cache/razor}"
PAUSE_IMAGE="${PAUSE_IMAGE:-localhost/razor-pause:1}"
GO="${GO:-}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN_DIR="$RAZOR_CACHE/node/bin"
FORCE=0

usage() {
  cat <<USAGE
Usage: scripts/node-tools.sh [--force] [--help]

Installs containerd, runc, the CNI plugins, iptables and conntrack (Debian packages) when
missing; builds CoreDNS $COREDNS_VERSION from the Go module proxy and the pod sandbox image
$PAUSE_IMAGE, both cached in \$RAZOR_CACHE/node/bin (RAZOR_CACHE defaults to
\$HOME/.cache/razor), whose path is the last line of stdout. A first run takes a few minutes.

Options:
  --force     rebuild CoreDNS and the pause image even when cached
  -h, --help  this help

Environment: COREDNS_VERSION (default $COREDNS_VERSION), RAZOR_CACHE, PAUSE_IMAGE, GO,
GOPROXY, GOCACHE, GOMODCACHE.
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --force) FORCE=1 ;;
    *) echo "node-tools: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "node-tools: $*" >&2; }
die() { echo "node-tools: error: $*" >&2; exit 1; }

# ---- 1. Debian packages ------------------------------------------------------------
need=()
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v podman >/dev/null 2>&1 || need+=(podman)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing: ${need[*]}; install them (sudo apt-get install ${need[*]}) or run this as root"
  log "installing ${need[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
# Where systemd runs, Debian's package also starts containerd as a service; the tests start
# their own (own socket, own state), so a running system one does no harm.

mkdir -p "$BIN_DIR"
exec 9>"$RAZOR_CACHE/node/.lock"
flock 9

# ---- 2. CoreDNS ---------------------------------------------------------------------
coredns_ok() { "$BIN_DIR/coredns" -version 2>/dev/null | grep -qx "CoreDNS-$COREDNS_VERSION"; }
if [ "$FORCE" = 1 ] || ! coredns_ok; then
  if [ -z "$GO" ]; then
    if command -v go >/dev/null 2>&1; then GO=go
    elif [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go
    else die "no Go toolchain: put go on PATH or set GO=/path/to/go"
    fi
  fi
  dir="$RAZOR_CACHE/node/build/coredns-$COREDNS_VERSION"
  mkdir -p "$dir"
  # Only the plugins a cluster's DNS needs (the full build also compiles cloud SDKs). The
  # directive order is CoreDNS's own (dnsserver.Directives), unchanged.
  cat >"$dir/main.go" <<'GO'
// CoreDNS with the plugins of a Kubernetes cluster's DNS (built by razor's scripts/node-tools.sh).
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() { coremain.Run() }
GO
  printf 'module razor.local/coredns-build\n\ngo 1.25.0\n\nrequire github.com/coredns/coredns v%s\n' \
    "$COREDNS_VERSION" >"$dir/go.mod"
  rm -f "$dir/go.sum"
  log "building CoreDNS $COREDNS_VERSION (github.com/coredns/coredns@v$COREDNS_VERSION)"
  t0=$SECONDS
  (cd "$dir" && GO111MODULE=on GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" \
     "$GO" build -trimpath -ldflags "-s -w" -o "$BIN_DIR/coredns.tmp" .) >&2 || die "building CoreDNS failed"
  mv -f "$BIN_DIR/coredns.tmp" "$BIN_DIR/coredns"
  coredns_ok || die "the CoreDNS built does not report CoreDNS-$COREDNS_VERSION"
  log "CoreDNS built in $((SECONDS - t0))s"
fi

# ---- 3. the pause image -------------------------------------------------------------
key=$(cat "$ROOT/images/pause/pause.c" "$ROOT/images/pause/Dockerfile" | sha256sum | cut -c1-16)
if [ "$FORCE" = 1 ] || [ "$(cat "$BIN_DIR/pause.key" 2>/dev/null)" != "$key $PAUSE_IMAGE" ]; then
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  gcc -static -Os -s -o "$ctx/pause" "$ROOT/images/pause/pause.c" || die "compiling pause.c failed"
  cp "$ROOT/images/pause/Dockerfile" "$ctx/Dockerfile"
  podman build -q --isolation chroot -t "$PAUSE_IMAGE" "$ctx" >&2 || die "podman build of $PAUSE_IMAGE failed"
  rm -f "$BIN_DIR/pause.tar"
  podman save --format docker-archive -o "$BIN_DIR/pause.tar" "$PAUSE_IMAGE" >&2 \
    || die "podman save $PAUSE_IMAGE failed"
  echo "$key $PAUSE_IMAGE" >"$BIN_DIR/pause.key"
  log "pause image $PAUSE_IMAGE saved to $BIN_DIR/pause.tar"
fi

echo "$BIN_DIR"
