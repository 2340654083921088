"""How much of a training step the GPU spends idle, waiting for the host: the sum of the CUDA
kernels' own times (PyTorch profiler, CUPTI) against the steps' wall-clock time, for GPT-2 124M
compiled in bf16 (the CUDA default) at a few batch sizes. Idle time that shrinks as the batch
grows is host work per step (Python, the loss's sync, data, the optimizer's launches) that a
larger step amortises, and that the engine's loop hides by queuing the next step before it
reads a step's loss (`Trainer.run_steps`); each batch is also timed step by step
(`Trainer.train_step`, every loss read before the next step is queued) for comparison.

    python bench/bench_gpu_idle.py --batches 16,64     # on a CUDA machine
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_train import build_trainer, timed_steps


def kernel_seconds(prof) -> float:
    """Total device time of the profiled CUDA activity (kernels, copies, fills), in seconds:
    one stream runs a training step, so none of it overlaps."""
    total_us = 0.0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            total_us += event.device_time
    return total_us / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    for batch in (int(b) for b in args.batches.split(",")):
        trainer = build_trainer("gpt2", "cuda", "auto", "auto", True, batch)
        timed_steps(trainer, 3)  # compile and warm up
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in trainer.run_steps(trainer.step + args.steps):
                pass
            torch.cuda.synchronize()
            wall = time.perf_counter() - started
        plain = timed_steps(trainer, args.steps) / args.steps  # the same steps unprofiled
        one_by_one = timed_steps(trainer, args.steps, step_by_step=True) / args.steps
        busy = kernel_seconds(prof) / args.steps
        print(f"batch {batch:>3}: {plain * 1e3:7.1f} ms a step ({wall / args.steps * 1e3:.1f} "
              f"profiled), kernels {busy * 1e3:7.1f} ms: {busy / plain:.0%} busy; step by "
              f"step {one_by_one * 1e3:.1f} ms, {busy / one_by_one:.0%} busy")  # fmt: skip
        del trainer
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
