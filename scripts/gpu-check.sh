#!/usr/bin/env bash
# The trainer on CUDA with NCCL, on a machine with a GPU and PyTorch (run from the repo root).
# Writes logs and summaries under ${OUT:-/tmp/razor-gpu-check}. Exits non-zero on any failure.
set -uo pipefail
OUT=${OUT:-/tmp/razor-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
# Not pip-installed there: make the trainer importable as razor_trainer straight from trainer/.
mkdir -p /tmp/site && ln -sfn "$PWD/trainer" /tmp/site/razor_trainer
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
fail=0
step() { echo "=== $*"; }
nvidia-smi -L
$PY -c "import torch, torch.distributed as d; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'nccl', d.is_nccl_available(), torch.cuda.nccl.version())"

step "1. seed path: tools/dist_train.sh, 1 GPU, knowledge distillation"
PYTHON=$PY sh tools/dist_train.sh trainer/configs/digits_kd.yaml 1 --work-dir "$OUT/kd" >"$OUT/kd.log" 2>&1 || fail=1
grep -E "razor trainer|lr |accuracy|identical" "$OUT/kd.log"; grep -q "cuda (nccl)" "$OUT/kd.log" || { echo "FAIL: not cuda/nccl"; fail=1; }

step "2. razorctl submit --local, gpusPerNode 1, CNN"
$PY -m razor.cli submit --local examples/razorjob-digits-gpu.yaml >"$OUT/cnn.log" 2>&1 || fail=1
grep -E "razor trainer|accuracy|succeeded|failed" "$OUT/cnn.log"
cp work_dirs/digits_gpu/summary.json "$OUT/cnn-summary.json" 2>/dev/null

step "3. SIGTERM mid-run saves a checkpoint (exit 75), the next run resumes"
rm -rf "$OUT/pre"
PYTHON=$PY sh tools/dist_train.sh trainer/configs/digits_mlp.yaml 1 --work-dir "$OUT/pre" \
  --cfg-options schedule.epochs=100000 runtime.stop_check_interval=5 >"$OUT/pre1.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do [ -f "$OUT/pre/epoch_3.pth" ] && break; sleep 0.5; done
kill -TERM $pid; wait $pid; code=$?
echo "exit code after SIGTERM: $code"; [ "$code" = 75 ] || fail=1
tail -3 "$OUT/pre1.log"
PYTHON=$PY timeout -s TERM 20 sh tools/dist_train.sh trainer/configs/digits_mlp.yaml 1 --work-dir "$OUT/pre" \
  --cfg-options schedule.epochs=100000 runtime.stop_check_interval=5 >"$OUT/pre2.log" 2>&1
echo "second run, stopped by timeout's SIGTERM: exit $?"
grep -E "resumed from|stopping on" "$OUT/pre2.log" || fail=1
rm -f "$OUT"/*/*.pth "$OUT"/*/*/*.pth
echo "gpu-check: $([ $fail = 0 ] && echo PASSED || echo FAILED)"
exit $fail
