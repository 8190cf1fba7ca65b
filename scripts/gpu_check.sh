#!/usr/bin/env bash
# The CUDA paths of the trainer on a machine with a GPU, in under 5 minutes: device placement, CUDA
# generator state in checkpoints, resume, bf16 / fp16, dynamic evaluation, 2-GPU DDP when two GPUs exist,
# and the training throughput of the MoS PTB paper config, written to results/bench/gpu_check.json.
# Fails at once, in one sentence, without CUDA. CI never runs it.
#
#   scripts/gpu_check.sh                  # on the GPU machine, from the repository root
#   scripts/gpu_check.sh --cpu-self-test  # the same code on the CPU at tiny sizes (checks the script itself)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "--cpu-self-test" ]; then
  exec "${PYTHON:-python}" "$ROOT/scripts/gpu_check.py" "$@"  # no time limit: a shared CPU may be slow
fi
exec timeout 290 "${PYTHON:-python}" "$ROOT/scripts/gpu_check.py" "$@"
