"""Training throughput (tokens/s) of a GPT shape under eager fp32, bf16 autocast, and compiled
fp32 and bf16, with MFU against the GPU's dense bf16 peak (or a peak you give). The CPU's
instruction set is printed: bf16 pays off only where the CPU has native bf16 (AMX, AVX512-BF16),
and `default` is what the engine picks there by itself (`precision` and `compile` "auto") for a
run of the shape's length (`--run-steps`: nanoGPT's 2000 iterations for its CPU shape; a CPU
compiles only a run long enough to repay it).

    .venv/bin/python bench/bench_train.py                      # nanoGPT's CPU shape (issue 4)
    .venv/bin/python bench/bench_train.py --shape default      # configs/default.toml's model
    .venv/bin/python bench/bench_train.py --device cuda        # GPT-2 124M on a GPU
    .venv/bin/python bench/bench_train.py --device cuda --batch 64 --modes default

Each mode builds the real `Trainer` and times its steps as its training loop runs them
(`Trainer.run_steps`: forward, backward, AdamW, a step ahead where the engine runs ahead; no
evaluation, no checkpoint). `--step-by-step` also times each mode reading every step's loss
before queuing the next (`Trainer.train_step`: the engine's loop before it ran ahead), on the
same trainer: the difference is host time per step that the device spent idle. Compilation is
kept out of the timing: `--warmup` untimed steps run
first (the first compiles; the time it took is printed), and with `TORCH_LOGS=recompiles` torch
reports any recompilation, which would show a compiled mode paying for compile time while
timed. On a GPU each mode's peak memory is printed beside `lm.sizing`'s estimate (weights,
gradients, AdamW state and eager activations: a compiled mode should peak below it). On a
shared machine the modes are interleaved `--repeats` times and the best rate of each is
reported (the median too): noise from other processes only ever slows a run down. Each mode
also prints the page faults its steps take (the median per step): near 0 on a CPU, where the
Trainer keeps freed memory for reuse (`lm.allocator`; `LMFORGE_KEEP_FREED_MEMORY=0` to compare
with the allocator left as it is).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli_args import description, non_negative_int, positive_int
from lm.cpu_features import cpu_has_native_bf16
from lm.models.config import GPTConfig
from lm.models.registry import build_model
from lm.sizing import size_model
from lm.train import Trainer, compile_wanted, peak_flops_of
from lm.train_config import TrainConfig

# The training `default` is decided for, in optimizer steps: nanoGPT's shakespeare-char run,
# configs/default.toml's, nanoGPT's GPT-2 run.
RUN_STEPS = {"cpu": 2000, "default": 1500, "gpt2": 600_000}
SHAPES = {
    # nanoGPT's shakespeare-char CPU shape: 4 layers, 4 heads, 128 wide, context 64, batch 12.
    "cpu": (GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, pos="learned"), 65, 12),
    # configs/default.toml's model: the modern preset, context 128, BPE 4k, batch 16.
    "default": (GPTConfig(preset="modern", block_size=128, n_layer=4, n_head=4, n_kv_heads=2,
                          n_embd=128), 4000, 16),
    # GPT-2 124M, vocab padded to a multiple of 64 (nanoGPT's 50304).
    "gpt2": (GPTConfig(block_size=1024, n_layer=12, n_head=12, n_embd=768, pos="learned"),
             50304, 16),
}  # fmt: skip
MODES = {  # label: (precision, compile, fused AdamW)
    "eager fp32": ("fp32", False, True),
    "bf16 autocast": ("bf16", False, True),
    "compiled fp32": ("fp32", True, True),
    "compiled bf16": ("bf16", True, True),
    # What `precision = "auto"` and `compile = "auto"` pick on this machine (printed).
    "default": ("auto", "auto", True),
    # The engine's update before it fused AdamW on the CPU too (not run unless asked).
    "eager fp32 foreach": ("fp32", False, False),
}
DEFAULT_MODES = ["eager fp32", "bf16 autocast", "compiled fp32", "compiled bf16", "default"]


def build_trainer(
    shape: str,
    device: str,
    precision: str,
    compile_model: bool | str,
    fused: bool = True,
    batch: int | None = None,
    accumulation: int = 1,
    run_steps: int | None = None,
) -> Trainer:
    """A trainer for `shape` whose optimizer steps take `accumulation` micro-batches of
    `batch` sequences each. `compile_model = "auto"` is decided as for a training of
    `run_steps` steps (default: the shape's `RUN_STEPS`); the trainer itself never ends."""
    model_config, vocab, shape_batch = SHAPES[shape]
    batch = batch or shape_batch
    if compile_model == "auto":
        steps = run_steps or RUN_STEPS[shape]
        compile_model = _auto_compile(model_config, vocab, device, precision, steps,
                                      batch * accumulation)  # fmt: skip
    settings = TrainConfig(
        max_steps=10**6, micro_batch=batch, global_batch=batch * accumulation,
        block_size=model_config.block_size, device=device, precision=precision,
        compile=compile_model, eval_every=10**6, checkpoint_every=10**6, warmup_steps=0,
    )  # fmt: skip
    tokens = np.random.default_rng(0).integers(0, vocab, 200_000).astype(np.uint32)
    torch.manual_seed(0)
    # It never saves (checkpoint_every is past the steps): a folder of its own, left empty.
    folder = Path(tempfile.mkdtemp(prefix="lmforge-bench-train-"))
    trainer = Trainer(build_model(model_config, vocab), settings, tokens, tokens, folder)
    folder.rmdir()
    if not fused:
        groups = [
            # A group's own `foreach: None` would override the constructor's `foreach=True`.
            {k: v for k, v in g.items() if k not in ("fused", "foreach")}
            for g in trainer.optimizer.param_groups
        ]
        trainer.optimizer = torch.optim.AdamW(groups, foreach=True)
    return trainer


def _auto_compile(model_config: GPTConfig, vocab: int, device: str, precision: str, steps: int,
                  global_batch: int) -> bool:  # fmt: skip
    """Whether `compile = "auto"` compiles a training of `steps` optimizer steps."""
    planned = TrainConfig(max_steps=steps, micro_batch=global_batch, global_batch=global_batch,
                          block_size=model_config.block_size, device=device, precision=precision,
                          compile="auto")  # fmt: skip
    flops = size_model(model_config, planned, vocab).flops_per_token  # the engine's, unbuilt
    return compile_wanted(planned, torch.device(device), flops)


def _sync(trainer: Trainer) -> None:
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak_memory(device: str) -> int:
    """Bytes the GPU holds before a mode is built (earlier modes' trainers), 0 on the CPU."""
    if not device.startswith("cuda"):
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _memory_report(trainer: Trainer, held: int) -> str:
    """This mode's peak GPU memory next to what `lm.sizing` predicts for it."""
    if trainer.device.type != "cuda":
        return ""
    peak = torch.cuda.max_memory_allocated() - held
    size = size_model(trainer.module.config, trainer.config, trainer.module.vocab_size,
                      trainer.device)  # fmt: skip
    estimate = (size.weights_bytes + size.gradients_bytes + size.optimizer_bytes
                + size.activations_bytes)  # fmt: skip
    gib = 2**30
    return f"; peak memory {peak / gib:.1f} GiB, lm.sizing (eager) {estimate / gib:.1f} GiB"


def timed_steps(trainer: Trainer, steps: int, step_by_step: bool = False) -> float:
    """Seconds for `steps` optimizer steps, as the training loop runs them or (`step_by_step`)
    each loss read before the next step is queued."""
    _sync(trainer)
    started = time.perf_counter()
    if step_by_step:
        for _ in range(steps):
            trainer.train_step()
    else:
        for _ in trainer.run_steps(trainer.step + steps):
            pass
    _sync(trainer)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="default: cpu on CPU, gpt2 on CUDA")  # fmt: skip
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=positive_int, default=30, help="timed steps per repeat")
    parser.add_argument("--warmup", type=non_negative_int, default=3,
                        help="untimed steps (compile here)")  # fmt: skip
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--batch", type=positive_int, default=None,
                        help="default: the shape's batch")  # fmt: skip
    parser.add_argument("--accumulation", type=positive_int, default=1,
                        help="micro-batches of --batch sequences per optimizer step")  # fmt: skip
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"comma-separated labels of {list(MODES)}")  # fmt: skip
    parser.add_argument("--peak-flops", type=float, default=None)
    parser.add_argument("--run-steps", type=positive_int, default=None,
                        help="the training `default` decides compiling for (default: the "
                        "shape's: 2000 for cpu, 1500 for default)")  # fmt: skip
    parser.add_argument("--step-by-step", action="store_true",
                        help="also time each mode reading each loss before the next")  # fmt: skip
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU visible to torch")
    shape = args.shape or ("gpt2" if args.device == "cuda" else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = args.peak_flops
    if peak is None and args.device == "cuda":
        peak = peak_flops_of(torch.cuda.get_device_name())
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        parser.error(f"--modes: no mode {unknown[0]!r} (modes: {', '.join(MODES)})")
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 "
          f"{'yes' if cpu_has_native_bf16() else 'no'} (AVX512-BF16 or AMX)")  # fmt: skip
    print(f"shape {shape}, device {args.device}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, {args.steps} steps × {args.repeats} repeats")  # fmt: skip

    ways = [(label, False) for label in modes]
    if args.step_by_step:
        ways += [(label, True) for label in modes]
    trainers, rates, faults = {}, {way: [] for way in ways}, {way: [] for way in ways}
    for label in modes:
        precision, compile_model, fused = MODES[label]
        held = _reset_peak_memory(args.device)
        trainer = build_trainer(shape, args.device, precision, compile_model, fused, args.batch,
                                args.accumulation, args.run_steps)  # fmt: skip
        first = timed_steps(trainer, 1)  # compilation, if any, happens here
        timed_steps(trainer, args.warmup - 1)
        trainers[label] = trainer
        print(f"{label:>14}: first step {first:.2f}s (compile included), warmed up"
              f"{_memory_report(trainer, held)}")  # fmt: skip
        how = "compiled" if trainer.model is not trainer.module else "eager"
        if label == "default":  # what the trainer runs, a compile that fell back included
            steps = args.run_steps or RUN_STEPS[shape]
            print(f"{'':>14}  the default here, for a {steps}-step run: precision "
                  f"{trainer.autocast or torch.float32}, {how}")  # fmt: skip
        elif compile_model and how == "eager":  # the compiler failed: the label would mislead
            print(f"{'':>14}  NOT compiled: torch.compile failed (warning above), ran eager")
    tokens_per_step = trainer.config.global_batch * trainer.config.block_size  # every mode's
    for repeat in range(args.repeats):  # interleaved: a burst of load slows every mode alike
        for label, step_by_step in ways:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            seconds = timed_steps(trainers[label], args.steps, step_by_step)
            after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            rates[label, step_by_step].append(args.steps * tokens_per_step / seconds)
            faults[label, step_by_step].append((after - before) / args.steps)
        # As it goes, so that a run cut short by a time limit still shows its figures.
        print(f"repeat {repeat + 1}, tokens/s: " + ", ".join(
            f"{label}{' (step by step)' if by_step else ''} {rates[label, by_step][-1]:,.0f}"
            for label, by_step in ways))  # fmt: skip
    baseline = max(rates[modes[0], False])
    for label, step_by_step in ways:
        measured = rates[label, step_by_step]
        best, median = max(measured), statistics.median(measured)
        flops = trainers[label].flops_per_token * best
        mfu = f", MFU {flops / peak:.1%}" if peak else ""
        name = f"{label}, step by step" if step_by_step else label
        faulted = statistics.median(faults[label, step_by_step])
        print(f"{name:>14}: {best:10,.0f} tokens/s best ({best / baseline:.2f}x {modes[0]}), "
              f"median {median:,.0f}, {flops / 1e9:,.1f} GFLOP/s{mfu}, "
              f"{faulted:,.0f} page faults/step")  # fmt: skip


if __name__ == "__main__":
    main()
