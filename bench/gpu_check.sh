#!/usr/bin/env bash
# Issue 4's GPU checks in one short run, for a machine with a CUDA GPU and its own PyTorch:
# the CUDA tests (tests/test_cuda.py), then bench/bench_train.py on GPT-2 124M (tokens/s and MFU
# against the GPU's bf16 peak) in eager fp32, bf16 autocast, and the engine's default there
# (compiled bf16) at nanoGPT's batch of 16, each also timed step by step (every loss read before
# the next step is queued), then bench/bench_gpu_kernels.py (where the GPU's time goes) on the
# default at llm.c's batch of 64, alone and accumulated 8 times (GPT-2's 0.5M tokens a step).
# Its timeouts bound it to 9.5 minutes, inside the device tool's 10-minute call; on an H200 the
# parts took about 4 minutes (tests 33 s; building and compiling GPT-2 124M 20-60 s a run).
# Logs go to $OUT.
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
# Without .whl (carried by hand: it is git-ignored) every stage would end on a missing import.
if ! "$python" -c "import pydantic" 2>/dev/null; then
    echo "pydantic is not importable: run bench/gpu_wheels.sh here and carry .whl" \
        "with the checkout (the device tool's carry: [\".whl\"])" | tee "$out/gpu.txt"
    exit 1
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
timeout 100 "$python" bench/bench_gpu_kernels.py --batch 64 2>&1 | tee "$out/kernels64.txt" \
    || status=1
timeout 110 "$python" bench/bench_gpu_kernels.py --batch 64 --accumulation 8 --steps 3 --top 4 \
    2>&1 | tee "$out/kernels64x8.txt" || status=1
exit $status
