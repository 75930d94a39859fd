#!/bin/sh
# The steps of images/operator/Dockerfile and images/trainer/Dockerfile, run at build time inside
# the image being built (not used anywhere else, and removed from the image at the end):
#
#   build.sh system          Python 3 with venv (apt-get, only when the base has none) and the
#                            non-root user razor (RAZOR_UID:RAZOR_GID, home /home/razor)
#   build.sh deps EXTRA      the virtual environment /opt/venv with razor's dependencies: the
#                            core ones and those of the extra EXTRA (pyproject.toml), at the
#                            versions pinned in constraints.txt
#   build.sh project EXTRA   razor itself (no dependencies) from the build context, then
#                            `pip check`, the trainer's /app, and the clean-up
#
# Where packages come from:
#   - a wheelhouse bind-mounted at /wheels (--build-context wheels=DIR): from there only,
#     with no index (an offline build);
#   - otherwise PIP_INDEX_URL (default PyPI), and torch from TORCH_INDEX_URL: by default PyPI
#     for VARIANT=cuda (its Linux wheels are the CUDA build) and the PyTorch CPU index
#     https://download.pytorch.org/whl/cpu for VARIANT=cpu (CPU-only wheels, about 0.2 GB
#     instead of 3.5 GB); dependencies torch needs from PyPI come from PIP_INDEX_URL.
set -eu

HERE=/tmp/razor
VENV=/opt/venv
PIP="$VENV/bin/python -m pip"
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
  PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
RAZOR_UID="${RAZOR_UID:-65532}"
RAZOR_GID="${RAZOR_GID:-65532}"
VARIANT="${VARIANT:-cuda}"
PIP_INDEX_URL="${PIP_INDEX_URL:-https://pypi.org/simple}"

log() { echo "razor-image: $*" >&2; }
die() { echo "razor-image: error: $*" >&2; exit 1; }

system() {
  case "$VARIANT" in
    cpu)
      # A CUDA base under CPU-only torch is gigabytes for nothing: say so rather than build it.
      if [ -n "${CUDA_VERSION:-}" ] || [ -d /usr/local/cuda ]; then
        die "VARIANT=cpu on a CUDA base image (CUDA_VERSION=${CUDA_VERSION:-?}): add --build-arg BASE_IMAGE=debian:bookworm-20250520-slim (or another base without CUDA)"
      fi ;;
    cuda) ;;
    *) die "VARIANT must be cuda or cpu, not '$VARIANT'" ;;
  esac
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    log "installing python3 and python3-venv (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates >/dev/null
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
  fi
  python3 -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
    || die "razor needs Python 3.10 or newer; the base image has $(python3 -V 2>&1)"
  # The same numeric user in every razor image; numeric, so that Kubernetes' runAsNonRoot can
  # check it. An existing group/user with these ids (none in Debian or Ubuntu) is reused.
  getent group "$RAZOR_GID" >/dev/null || groupadd --key GID_MAX=65535 --gid "$RAZOR_GID" razor
  getent passwd "$RAZOR_UID" >/dev/null \
    || useradd --key UID_MAX=65535 --uid "$RAZOR_UID" --gid "$RAZOR_GID" --create-home --home-dir /home/razor \
         --shell /usr/sbin/nologin --comment razor razor
  rm -rf /var/log/lastlog /var/log/faillog
}

# Where pip takes packages from: sets SRC (everything) and TORCH_SRC (torch).
sources() {
  if ls /wheels/*.whl >/dev/null 2>&1; then
    log "installing from the wheelhouse /wheels ($(ls /wheels/*.whl | wc -l) wheels), no index"
    SRC="--no-index --find-links /wheels"
    TORCH_SRC="$SRC"
    return
  fi
  if [ -z "${TORCH_INDEX_URL:-}" ]; then
    case "$VARIANT" in
      cpu) TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ;;
      *) TORCH_INDEX_URL="$PIP_INDEX_URL" ;;
    esac
  fi
  SRC="--index-url $PIP_INDEX_URL"
  if [ "$TORCH_INDEX_URL" = "$PIP_INDEX_URL" ]; then
    TORCH_SRC="$SRC"
  else
    TORCH_SRC="--index-url $TORCH_INDEX_URL --extra-index-url $PIP_INDEX_URL"
  fi
  log "installing from $PIP_INDEX_URL (torch from $TORCH_INDEX_URL)"
}

deps() {
  extra="$1"
  sources
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  $PIP install --quiet $SRC -c "$HERE/constraints.txt" --upgrade pip setuptools
  # The dependencies, from pyproject.toml (the one list), one per line.
  "$VENV/bin/python" -c '
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"][sys.argv[2]]))
' "$HERE/pyproject.toml" "$extra" >"$HERE/requirements.txt"
  if grep -q '^torch\b' "$HERE/requirements.txt"; then
    # torch first, from its own index; the constraint torch==X also admits X+cpu.
    # shellcheck disable=SC2086
    $PIP install --quiet $TORCH_SRC -c "$HERE/constraints.txt" "$(grep '^torch\b' "$HERE/requirements.txt")"
  fi
  # shellcheck disable=SC2086
  $PIP install --quiet $SRC -c "$HERE/constraints.txt" -r "$HERE/requirements.txt"
  "$VENV/bin/python" -c 'import torch; print("razor-image: torch", torch.__version__)' 2>/dev/null || true
}

project() {
  extra="$1"
  # Build and install from the context's copy: no index, no dependencies (deps has them), the
  # build backend is the venv's setuptools.
  $PIP install --quiet --no-index --no-deps --no-build-isolation "$HERE/src"
  $PIP check
  "$VENV/bin/python" -c 'import razor.node'
  if [ "$extra" = trainer ]; then
    # The working directory: trainer/configs/*.yaml and examples/scripts/*.py resolve as in
    # the repository (RazorJobs name them relatively), and work_dirs/ is the user's.
    configs=$("$VENV/bin/python" -c 'import os, razor_trainer; print(os.path.dirname(razor_trainer.__file__))')/configs
    [ -f "$configs/digits_base.yaml" ] || die "no trainer configs in $configs"
    mkdir -p /app/trainer /app/examples /app/work_dirs
    ln -s "$configs" /app/trainer/configs
    cp -r "$HERE/src/examples/scripts" /app/examples/scripts
    chown "$RAZOR_UID:$RAZOR_GID" /app /app/work_dirs
    # matplotlib's font cache (~/.cache/matplotlib), made once here rather than at every start.
    HOME=/home/razor "$VENV/bin/python" -c 'import matplotlib.font_manager'
    chown -R "$RAZOR_UID:$RAZOR_GID" /home/razor
  fi
  rm -rf "$HERE" /root/.cache /tmp/* "$VENV"/share/man
}

case "${1:-}" in
  system) system ;;
  deps) deps "${2:?build.sh deps EXTRA}" ;;
  project) project "${2:?build.sh project EXTRA}" ;;
  *) die "usage: build.sh system | deps EXTRA | project EXTRA" ;;
esac
