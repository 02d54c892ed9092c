#!/usr/bin/env bash
# The engine's GPU checks as one command, for a session lent a GPU machine (whose python3
# already holds a CUDA build of torch, numpy, matplotlib and pytest):
#   1. tests.txt       the engine-vs-torch.optim equality tests, run on the GPU
#   2. table.txt       the benchmark table: engine vs the plain one-net loop, depth 50,
#                      widths 32/64/128/500, K 16/64, GFLOP/s against the matmul peak
#   3. step_times.txt  seconds per member-step at width 500, depths 25/100/500, K 1 and 32
#                      (the paper preset's group size):
#                      the paper preset's wall time on one GPU (docs/training.md says how)
#   4. fig5.txt        the fig5 quick preset on the GPU, when MNIST is there
#                      ($DEPTHSCOPE_DATA, else ./.data/mnist); its report comes back as fig5-report.html
# Each part writes under $OUT (default ./gpu-out) and has its own time limit, so a slow part
# cannot eat the rest of a short lease. Parts 1-3 should take 3-5 minutes on an H200 (an
# estimate: this script has not yet run on a GPU); part 4 adds a few more, so leave MNIST out
# when the lease is short.
#
#   device run:  bash benchmarks/gpu.sh
#   dry run here, on the CPU (checks the script, not the GPU):  DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
tests_args=()
if [ -n "${QUICK:-}" ]; then  # tiny sizes: checks the script's plumbing (tests/test_gpu_script.py), not speed
  tests_args=(-k "trajectory and sgd and tanh")
  table_args=(--depth 3 --widths 16 --ks 4 --steps 1 --rounds 1 --members 1)
  step_args=(--step-time 2,3 --width 16 --k 1,2 --steps 1 --rounds 1)
else
  table_args=()
  # each round builds its ensemble anew (K x 500 x 500^2 weights drawn on the CPU), so 2 rounds
  step_args=(--step-time 25,100,500 --width 500 --k 1,32 --rounds 2)
fi
status=0

part() {  # part NAME LIMIT_S COMMAND...: run, tee to $OUT/NAME.txt, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "== $name failed: exit $rc"; status=1; }
}

{ nvidia-smi 2>&1 || echo "no nvidia-smi"; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
  >"$OUT/machine.txt" 2>&1
tail -n 3 "$OUT/machine.txt"
part tests 180 env DEPTHSCOPE_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider tests/test_train_engine.py \
  "${tests_args[@]}"
part table 240 "$PY" benchmarks/bench_engine.py --device "$DEVICE" "${table_args[@]}"
part step_times 240 "$PY" benchmarks/bench_engine.py --device "$DEVICE" "${step_args[@]}"
data=${DEPTHSCOPE_DATA:-.data}
if [ -e "$data/mnist/t10k-images-idx3-ubyte.gz" ] || [ -e "$data/t10k-images-idx3-ubyte.gz" ]; then
  run=${TMPDIR:-/tmp}/depthscope-gpu-run  # figures stay there: $OUT brings back 8 files at most
  set_args=()
  [ -n "${QUICK:-}" ] && set_args=(--set 'depths=[4]')
  part fig5 300 "$PY" -m depthscope reproduce fig5 --device "$DEVICE" --data-dir "$data" --run-dir "$run" \
    --force "${set_args[@]}"
  # the store is hundreds of MB; the self-contained report (verdicts, figures) is a few MB
  cp "$run/report.html" "$OUT/fig5-report.html" 2>/dev/null || true
else
  echo "== fig5 skipped: no MNIST under $data (copy ../shared/data/mnist to ./.data/mnist and carry .data)"
fi
exit $status
