#!/usr/bin/env bash
# The GPU check, one script for a single-GPU machine (H100/H200) whose image has torch 2.11 (cu130),
# transformers, peft, accelerate and grpcio but cannot fetch anything. Prepare here first
# (bash bench/gpu_prepare.sh: the tokenizer and the wheels of the versions this project needs, in
# the git-ignored .gpu/), then run there with .gpu carried:
#
#   bash bench/gpu.sh               # on the GPU machine; everything it prints also goes to $OUT/gpu.log
#   bash bench/gpu.sh --cpu-check   # here: the same steps on tiny shapes and few steps, on the CPU
#
# Measures, each step under its own time limit (about 7 minutes in all on an H100):
#   1. the trainer vs HF Trainer + peft (same dtype policy: bf16 + SDPA) on a SmolLM2-135M-shaped and
#      a Llama-3.2-1B-shaped random model (bench/train_throughput.py);
#   2. evaluation on the GPU (bench/eval_throughput.py: greedy generation + reference loss);
#   3. the serving engine at concurrency 1/32/128 vs HF generate (static batch, one prompt) and
#      transformers' generate_batch (bench/engine_throughput.py).
set -uo pipefail
cd "$(dirname "$0")/.."
CPU_CHECK=0; [ "${1:-}" = "--cpu-check" ] && CPU_CHECK=1
LOG=${OUT:-/tmp}/gpu.log
: > "$LOG"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ $CPU_CHECK = 1 ] && PY=.venv/bin/python
say() { echo "== $*" | tee -a "$LOG"; }
step() { # step SECONDS LABEL CMD...: run with a time limit, keep going on failure
  local limit=$1 label=$2; shift 2
  say "$label (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v -E "Loading weights|Writing model shards|it/s\]$" | tee -a "$LOG"
  say "$label: exit ${PIPESTATUS[0]} after $((SECONDS - t0))s"
}
if [ ! -d .gpu/tokenizer ]; then echo "no .gpu/: run bash bench/gpu_prepare.sh here and carry .gpu" >&2; exit 2; fi
if [ $CPU_CHECK = 0 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || { echo "wheel install failed" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
else
  export PYTHONPATH=$PWD
fi
$PY -c 'import torch, transformers, peft; print("torch", torch.__version__, "cuda", torch.version.cuda,
"transformers", transformers.__version__, "peft", peft.__version__, "device",
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")' 2>&1 | tee -a "$LOG"
M=/tmp/gpu-models
if [ $CPU_CHECK = 1 ]; then
  step 120 "models" $PY bench/gpu_models.py .gpu/tokenizer $M tiny
  SMOL=$M/tiny BIG=$M/tiny TRAIN_STEPS=3 BIG_STEPS=2 ITEMS=8 LEVELS=1,4
else
  step 180 "models" $PY bench/gpu_models.py .gpu/tokenizer $M smol 1b
  SMOL=$M/smol BIG=$M/1b TRAIN_STEPS=40 BIG_STEPS=20 ITEMS=200 LEVELS=1,32,128
fi
step 150 "train SmolLM2-shaped: ours vs HF Trainer" $PY bench/train_throughput.py --model $SMOL --steps $TRAIN_STEPS --repeats 1
step 150 "train 1B-shaped: ours vs HF Trainer" $PY bench/train_throughput.py --model $BIG --steps $BIG_STEPS --repeats 1
step 60 "evaluation (SmolLM2-shaped)" $PY bench/eval_throughput.py --model $SMOL --items $ITEMS
step 120 "serving engine vs HF (SmolLM2-shaped)" $PY bench/engine_throughput.py --model $SMOL --levels $LEVELS
say "done; log in $LOG"
