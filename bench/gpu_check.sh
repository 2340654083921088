#!/usr/bin/env bash
# Issue 4's GPU checks in one short run, for a machine with a CUDA GPU and its own PyTorch:
# the CUDA tests (tests/test_cuda.py), then bench/bench_train.py on GPT-2 124M (tokens/s and MFU
# against the GPU's bf16 peak) in eager fp32, bf16 autocast, and the engine's default there
# (compiled bf16) at nanoGPT's batch of 16, then the default at llm.c's batch of 64, each also
# timed step by step (every loss read before the next step is queued), then
# bench/bench_gpu_idle.py (how busy the GPU is). Its timeouts bound it to 9.5 minutes, inside the
# device tool's 10-minute call; on an H200 it took about 4 minutes (tests 40 s; compiling GPT-2
# 124M 22-28 s a batch size). Logs go to $OUT.
#
#   bash bench/gpu_wheels.sh      # here: the wheels the GPU image lacks, into .whl/
#   bash bench/gpu_check.sh       # there, with .whl carried beside the checkout
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-${1:-/tmp/lmforge-gpu-check}}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/lmforge-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/lmforge-site
fi
"$python" - <<'PY' 2>&1 | tee "$out/gpu.txt" || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible to torch"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.get_device_name()}")
PY
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    2>&1 | tee -a "$out/gpu.txt"
timeout 150 "$python" -m pytest --noconftest -p no:cacheprovider -q -rs tests/test_cuda.py 2>&1 \
    | tee "$out/tests.txt" || status=1
timeout 200 "$python" bench/bench_train.py --device cuda --modes "eager fp32,bf16 autocast,default" \
    --steps 20 --warmup 5 --repeats 3 --step-by-step 2>&1 | tee "$out/bench.txt" || status=1
timeout 110 "$python" bench/bench_train.py --device cuda --modes default --batch 64 \
    --steps 10 --warmup 3 --repeats 2 --step-by-step 2>&1 | tee "$out/bench64.txt" || status=1
timeout 110 "$python" bench/bench_gpu_idle.py --batches 16,64 2>&1 | tee "$out/idle.txt" \
    || status=1
exit $status
