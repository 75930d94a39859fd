#!/bin/sh
# The seed's launcher, kept working:
#
#   sh tools/dist_train.sh CONFIG GPUS [--work-dir DIR] [--cfg-options k=v ...]
#   NNODES=2 NODE_RANK=0 PORT=29500 MASTER_ADDR=host0 sh tools/dist_train.sh CONFIG GPUS
#   CUDA_VISIBLE_DEVICES=0,1,2,3 PORT=29501 sh tools/dist_train.sh CONFIG 4 --work_dir tmp_1
#
# GPUS is the number of processes on this machine (one per GPU; CPU processes when there is
# no GPU or CUDA_VISIBLE_DEVICES=-1). It keeps razor's launcher contract, every variable of it
# (docs/launcher-contract.md): razor.node waits for MASTER_ADDR on non-master nodes, then runs
# torchrun once.
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: sh tools/dist_train.sh CONFIG GPUS [--work-dir DIR] [--cfg-options KEY=VALUE ...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
case "$GPUS" in
    ''|*[!0-9]*|0) echo "dist_train.sh: GPUS must be a whole number of at least 1 (got '$GPUS')" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# The launcher contract of this node (razor.launcher, as on every backend) from the seed's
# variables: NNODES, NODE_RANK, MASTER_ADDR, PORT (else MASTER_PORT, else dist_params.port from
# --cfg-options or the config, else 29500), GPUS, CUDA_VISIBLE_DEVICES=-1 for CPU, --work-dir.
CONTRACT=$("$PYTHON" -m razor.seedtools dist-train-env "$CONFIG" "$GPUS" "$@") || exit $?
eval "$CONTRACT"

exec "$PYTHON" -m razor.node "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
