"""Training throughput (tokens/s) of a GPT shape under eager fp32, bf16 autocast, and compiled
fp32 and bf16, with MFU against a peak you give (or the GPU's bf16 peak on an H100/H200).

    .venv/bin/python bench/bench_train.py                      # nanoGPT's CPU shape (issue 4)
    .venv/bin/python bench/bench_train.py --device cuda --shape gpt2   # GPT-2 124M on a GPU

Each mode runs `--warmup` untimed steps (compilation happens there) and then `--steps` timed
optimizer steps on random tokens through the real `Trainer` step (forward, backward, AdamW).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lm.models.config import GPTConfig
from lm.models.registry import build_model
from lm.sizing import size_model
from lm.train import Trainer
from lm.train_config import TrainConfig

SHAPES = {
    # nanoGPT's shakespeare-char CPU shape: 4 layers, 4 heads, 128 wide, context 64, batch 12.
    "cpu": (GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, pos="learned"), 65, 12),
    "gpt2": (GPTConfig(block_size=1024, n_layer=12, n_head=12, n_embd=768, pos="learned"),
             50304, 16),
}  # fmt: skip
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def measure(shape: str, device: str, precision: str, compile_model: bool, steps: int,
            warmup: int) -> tuple[float, float]:  # fmt: skip
    model_config, vocab, batch = SHAPES[shape]
    settings = TrainConfig(
        max_steps=warmup + steps, micro_batch=batch, global_batch=batch,
        block_size=model_config.block_size, device=device, precision=precision,
        compile=compile_model, eval_every=10**9, checkpoint_every=10**9, warmup_steps=0,
    )  # fmt: skip
    tokens = np.random.default_rng(0).integers(0, vocab, 200_000).astype(np.uint32)
    torch.manual_seed(0)
    trainer = Trainer(build_model(model_config, vocab), settings, tokens, tokens,
                      Path("/tmp/lmforge-bench-train"))  # fmt: skip
    trainer.train(until_step=warmup)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.train(until_step=warmup + steps)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens_per_s = steps * batch * model_config.block_size / seconds
    flops = size_model(model_config, settings, vocab).flops_per_token * tokens_per_s
    return tokens_per_s, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-flops", type=float, default=None)
    args = parser.parse_args()
    peak = args.peak_flops
    if peak is None and args.device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    print(f"shape {args.shape}, device {args.device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")  # fmt: skip
    baseline = None
    for label, precision, compile_model in (("eager fp32", "fp32", False),
                                            ("bf16 autocast", "bf16", False),
                                            ("compiled fp32", "fp32", True),
                                            ("compiled bf16", "bf16", True)):  # fmt: skip
        tokens_per_s, flops = measure(args.shape, args.device, precision, compile_model,
                                      args.steps, args.warmup)  # fmt: skip
        baseline = baseline or tokens_per_s
        mfu = f", MFU {flops / peak:.1%}" if peak else ""
        print(f"{label:>14}: {tokens_per_s:10,.0f} tokens/s ({tokens_per_s / baseline:.2f}x "
              f"eager fp32), {flops / 1e9:,.1f} GFLOP/s{mfu}")  # fmt: skip


if __name__ == "__main__":
    main()
