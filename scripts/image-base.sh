#!/usr/bin/env bash
# Make the container tools ready and a base image for razor's images, locally, with no registry:
#
#   scripts/image-base.sh            # -> last line of stdout: localhost/razor-base:bookworm
#   BASE=$(scripts/image-base.sh | tail -1)
#   podman build --isolation chroot --build-arg BASE_IMAGE="$BASE" -f images/operator/Dockerfile .
#
# 1. Installs Debian's podman, runc and debootstrap with apt-get when one is missing (as root;
#    otherwise it says what to install). Nothing is installed when all are there.
# 2. Checks that podman's storage works; if the default (overlay) does not, it configures the
#    vfs driver in /etc/containers/storage.conf (only when that file does not exist yet).
# 3. Builds a minimal Debian rootfs with debootstrap (--variant=minbase, plus python3,
#    python3-venv and ca-certificates: what debian:bookworm-slim plus the Dockerfiles' own
#    apt-get step would give), strips docs, man pages, locales and apt caches, and caches it as
#      $RAZOR_CACHE/images/razor-base-<suite>-<key>.tar      (RAZOR_CACHE: ~/.cache/razor)
#    <key> is a hash of the suite, mirror, package list and this recipe's revision, so a change
#    to any of them makes a new tarball; an unchanged one is reused (a second run takes seconds).
# 4. `podman import`s the tarball as $BASE_IMAGE_NAME (localhost/razor-base:<suite>), labelled
#    with the key; an image that already carries the key is left alone.
#
# A lock file ($RAZOR_CACHE/images/.lock) keeps two runs (two test sessions) from colliding.
# Run with --help for the options. The containers run with `--runtime runc --cgroup-manager
# cgroupfs` on hosts like this one (cgroup v1, no systemd; crun fails here), see images/README.md.
set -euo pipefail

SUITE="${SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_PACKAGES="${BASE_PACKAGES:-python3,python3-venv,ca-certificates}"
RAZOR_CACHE="${RAZOR_CACHE:-$HOME/.cache/razor}"
BASE_IMAGE_NAME="${BASE_IMAGE_NAME:-localhost/razor-base:$SUITE}"
# Bump when the recipe below changes in a way the key does not see.
RECIPE_REVISION=1
LABEL=dev.razor.base.key
FORCE=0
TOOLS_ONLY=0

usage() {
  cat <<EOF
Usage: scripts/image-base.sh [--tools-only] [--force] [--help]

Installs podman, runc and debootstrap (Debian packages) when missing, then makes the base
image $BASE_IMAGE_NAME from a debootstrapped Debian $SUITE (minbase + $BASE_PACKAGES)
and prints its name as the last line of stdout. The rootfs tarball is cached in
  \$RAZOR_CACHE/images/      (RAZOR_CACHE defaults to \$HOME/.cache/razor)

Options:
  --tools-only  install the tools and check podman's storage; make no image
  --force       debootstrap and import again even when the cache is fine
  -h, --help    this help

Environment:
  SUITE            Debian suite (default bookworm)
  DEBIAN_MIRROR    mirror for debootstrap (default http://deb.debian.org/debian)
  BASE_PACKAGES    packages on top of minbase, comma-separated (default $BASE_PACKAGES)
  BASE_IMAGE_NAME  the image's name (default localhost/razor-base:\$SUITE)
  RAZOR_CACHE      cache root (default \$HOME/.cache/razor)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --force) FORCE=1 ;;
    --tools-only) TOOLS_ONLY=1 ;;
    *) echo "image-base: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "image-base: $*" >&2; }
die() { echo "image-base: error: $*" >&2; exit 1; }

# ---- 1. tools ------------------------------------------------------------------
need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing: ${need[*]}; install them (sudo apt-get install ${need[*]}) or run this as root"
  command -v apt-get >/dev/null 2>&1 || die "missing: ${need[*]}, and no apt-get to install them with"
  log "installing ${need[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # No recommends: crun (which fails on cgroup v1 without systemd) and the rootless helpers
  # are not needed; podman uses runc.
  apt-get install -y -qq --no-install-recommends podman runc debootstrap util-linux >&2
fi

# ---- 2. storage ----------------------------------------------------------------
if ! driver=$(podman info --format '{{.Store.GraphDriverName}}' 2>/tmp/image-base.podman-info.$$); then
  err=$(cat /tmp/image-base.podman-info.$$); rm -f /tmp/image-base.podman-info.$$
  conf=/etc/containers/storage.conf
  if [ "$(id -u)" = 0 ] && [ ! -e "$conf" ]; then
    log "podman's default storage does not work here ($err); configuring the vfs driver in $conf"
    mkdir -p /etc/containers
    printf '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n' >"$conf"
    driver=$(podman info --format '{{.Store.GraphDriverName}}') || die "podman does not work with vfs either"
  else
    die "podman info failed: $err"
  fi
fi
rm -f /tmp/image-base.podman-info.$$
log "podman $(podman version --format '{{.Client.Version}}'), storage driver $driver"
if [ "$TOOLS_ONLY" = 1 ]; then
  exit 0
fi

# ---- 3. the rootfs tarball -----------------------------------------------------
KEY=$(printf '%s\n' "$SUITE" "$DEBIAN_MIRROR" "$BASE_PACKAGES" "$RECIPE_REVISION" | sha256sum | cut -c1-12)
DIR="$RAZOR_CACHE/images"
TARBALL="$DIR/razor-base-$SUITE-$KEY.tar"
mkdir -p "$DIR"

image_ok() {
  [ "$(podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$BASE_IMAGE_NAME" 2>/dev/null)" = "$KEY" ]
}

if [ "$FORCE" = 0 ] && image_ok; then
  log "cached: $BASE_IMAGE_NAME ($SUITE, key $KEY)"
  echo "$BASE_IMAGE_NAME"
  exit 0
fi

exec 9>"$DIR/.lock"
if ! flock -n 9; then
  log "another run is making the base image; waiting for it"
  flock 9
fi
rm -rf "$DIR"/.tmp.*    # left by an interrupted run (we hold the lock)
if [ "$FORCE" = 0 ] && image_ok; then
  log "cached: $BASE_IMAGE_NAME (made by another run)"
  echo "$BASE_IMAGE_NAME"
  exit 0
fi

if [ "$FORCE" = 1 ] || [ ! -s "$TARBALL" ]; then
  [ "$(id -u)" = 0 ] || die "debootstrap needs root"
  TMP=$(mktemp -d "$DIR/.tmp.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT
  ROOTFS="$TMP/rootfs"
  log "debootstrap $SUITE (minbase + $BASE_PACKAGES) from $DEBIAN_MIRROR; takes a few minutes"
  START=$SECONDS
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$ROOTFS" "$DEBIAN_MIRROR" \
    >"$TMP/debootstrap.log" 2>&1 || { tail -20 "$TMP/debootstrap.log" >&2; die "debootstrap failed"; }
  # The sources an image's apt-get sees; then what a -slim image leaves out.
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
    "$DEBIAN_MIRROR" "$SUITE" "$DEBIAN_MIRROR" "$SUITE" "$SUITE" >"$ROOTFS/etc/apt/sources.list"
  chroot "$ROOTFS" apt-get clean
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/debconf/*-old \
    "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/usr/share/locale/* "$ROOTFS"/usr/share/lintian "$ROOTFS"/var/lib/dpkg/*-old
  # Nothing of the build host: the container runtime writes these.
  : >"$ROOTFS/etc/hostname"; : >"$ROOTFS/etc/resolv.conf"
  find "$ROOTFS" -name __pycache__ -type d -prune -exec rm -rf {} +
  tar --numeric-owner --xattrs -C "$ROOTFS" -cf "$TMP/rootfs.tar" .
  mv -f "$TMP/rootfs.tar" "$TARBALL"
  rm -rf "$TMP"; trap - EXIT
  log "made $TARBALL ($(du -h "$TARBALL" | cut -f1)) in $((SECONDS - START))s"
fi

# ---- 4. import -----------------------------------------------------------------
log "importing $TARBALL as $BASE_IMAGE_NAME"
old=$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE_NAME" 2>/dev/null || true)
podman import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL $LABEL=$KEY" \
  --message "debootstrap --variant=minbase --include=$BASE_PACKAGES $SUITE ($KEY)" \
  "$TARBALL" "$BASE_IMAGE_NAME" >/dev/null || die "podman import failed"
image_ok || die "imported $BASE_IMAGE_NAME but it does not carry $LABEL=$KEY"
# The image it replaces, unless images built on it still use it.
if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE_NAME")" ]; then
  podman rmi "$old" >/dev/null 2>&1 || true
fi
echo "$BASE_IMAGE_NAME"
