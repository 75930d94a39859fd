#!/bin/sh
# The seed's launcher, kept working:
#
#   sh tools/dist_train.sh CONFIG GPUS [--work-dir DIR] [--cfg-options k=v ...]
#   NNODES=2 NODE_RANK=0 PORT=29500 MASTER_ADDR=host0 sh tools/dist_train.sh CONFIG GPUS
#   CUDA_VISIBLE_DEVICES=0,1,2,3 PORT=29501 sh tools/dist_train.sh CONFIG 4 --work_dir tmp_1
#
# GPUS is the number of processes on this machine (one per GPU; CPU processes when there is
# no GPU or CUDA_VISIBLE_DEVICES=-1). It keeps razor's launcher contract: razor.node waits
# for MASTER_ADDR on non-master nodes, then runs torchrun once.
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

export NNODES="${NNODES:-1}"
export NODE_RANK="${NODE_RANK:-0}"
export MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
export MASTER_PORT="${PORT:-${MASTER_PORT:-29500}}"
export PORT="$MASTER_PORT"
export NPROC_PER_NODE="$GPUS"
if [ "${CUDA_VISIBLE_DEVICES:-}" = "-1" ]; then
    export GPUS_PER_NODE=0
else
    export GPUS_PER_NODE="$GPUS"
fi
export RAZOR_JOB_NAME="${RAZOR_JOB_NAME:-$(basename "$CONFIG" | sed 's/\.[^.]*$//')}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

exec "$PYTHON" -m razor.node "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
