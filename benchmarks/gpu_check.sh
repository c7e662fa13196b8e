#!/usr/bin/env bash
# The prepared GPU check (issue 17): on a CUDA machine, in under 8 minutes, with every step time-boxed:
#   1. bf16 LoRA training tokens/s and MFU on the default model (with the seed way and the fp32 recipe in the
#      same run) and QLoRA where bitsandbytes is installed (benchmarks/train_throughput.py);
#   2. the same on a 0.5-1B model when one is registered under var/base_models (GPU_CHECK_LARGE_MODEL=dir
#      names it; otherwise the largest folder there that is not the default model, if any);
#   3. vLLM CUDA serving at concurrency 1/8/32, gateway and vLLM's own server, in bf16
#      (benchmarks/serve_throughput.py);
#   4. the trainer's invariant tests (they run on the GPU when there is one; QLoRA's CPU refusal test skips).
# Results go to GPU_CHECK_OUT (default benchmarks/results/gpu), one log per step.
#
#   benchmarks/gpu_check.sh            # on the CUDA machine
#   benchmarks/gpu_check.sh --dry-run  # anywhere: checks the steps exist and prints what would run
set -u -o pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${GPU_CHECK_OUT:-benchmarks/results/gpu}
DEFAULT_MODEL=var/base_models/smollm2-135m-instruct
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1

# Seconds per step; together under 8 minutes (480 s) with start-up to spare.
TRAIN_S=120
LARGE_S=80
SERVE_S=190
TESTS_S=60

failures=0
step() {  # step NAME SECONDS COMMAND...: runs it time-boxed into OUT/NAME.log, or prints it in a dry run
  local name=$1 seconds=$2
  shift 2
  if [ "$DRY_RUN" = 1 ]; then
    echo "would run [$name, at most ${seconds}s]: $*"
    return 0
  fi
  echo "== $name (at most ${seconds}s)"
  local started=$SECONDS
  timeout --kill-after=10 "$seconds" "$@" >"$OUT/$name.log" 2>&1
  local status=$?
  echo "== $name: exit $status after $((SECONDS - started))s (log: $OUT/$name.log)"
  [ "$status" = 0 ] || failures=$((failures + 1))
}

large_model() {
  if [ -n "${GPU_CHECK_LARGE_MODEL:-}" ]; then
    echo "$GPU_CHECK_LARGE_MODEL"
    return
  fi
  # The largest registered folder that is not the default model (by weight bytes).
  du -s var/base_models/*/ 2>/dev/null | sort -rn | awk '{print $2}' | sed 's:/$::' \
    | grep -v "^$DEFAULT_MODEL\$" | head -n 1
}

# Everything the steps need must exist before anything runs (and in a dry run, on any machine).
for script in benchmarks/train_throughput.py benchmarks/serve_throughput.py tests/test_trainer_recipe.py; do
  [ -f "$script" ] || { echo "missing: $script"; exit 2; }
done
"$PY" benchmarks/train_throughput.py --help >/dev/null || { echo "train_throughput.py does not start"; exit 2; }
"$PY" benchmarks/serve_throughput.py --help >/dev/null || { echo "serve_throughput.py does not start"; exit 2; }

if [ "$DRY_RUN" = 0 ]; then
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device: run with --dry-run on a CPU machine"
    exit 2
  fi
  "$PY" -c "import vllm" 2>/dev/null || echo "note: vllm does not import here; the serving step will fail"
  "$PY" -c "import bitsandbytes" 2>/dev/null || echo "note: no bitsandbytes; the QLoRA recipe is left out"
  mkdir -p "$OUT"
  "$PY" -c "import torch; print('device:', torch.cuda.get_device_name())"
fi

step train_default "$TRAIN_S" "$PY" benchmarks/train_throughput.py --examples 256 --results-dir "$OUT/train_default"
large=$(large_model)
if [ -n "$large" ]; then
  step train_large "$LARGE_S" "$PY" benchmarks/train_throughput.py --model-dir "$large" --examples 64 \
    --results-dir "$OUT/train_large"
else
  echo "no 0.5-1B model registered under var/base_models: the large-model step is left out"
fi
step serve_vllm "$SERVE_S" "$PY" benchmarks/serve_throughput.py --engine vllm --dtypes bfloat16 --skip seed \
  --results-dir "$OUT/serve"
step invariant_tests "$TESTS_S" "$PY" -m pytest -q -x -p no:cacheprovider tests/test_trainer_recipe.py

if [ "$DRY_RUN" = 1 ]; then
  echo "dry run: every step is in place"
  exit 0
fi
echo "results under $OUT; $failures step(s) failed"
[ "$failures" = 0 ]
