"""Where a GPT-2 124M training step's GPU time goes, and what the kernels' own speed allows: the
profiler's CUDA time per step grouped by kind (matmuls, attention, Triton fusions, the
optimizer, the rest) with the largest kernels, and tokens/s and MFU for a choice of attention
backend and Inductor mode. The kernels' share of the step's wall time is how busy the GPU is:
at batch 64, with the engine running a step ahead, 96 % on an H200, so only faster kernels
raise MFU much further.

    python bench/bench_gpu_kernels.py                               # on a CUDA machine
    python bench/bench_gpu_kernels.py --accumulation 8 --steps 3    # GPT-2's 0.5M tokens a step
    python bench/bench_gpu_kernels.py --attention cudnn
    python bench/bench_gpu_kernels.py --compile-mode reduce-overhead   # CUDA graphs
    python bench/bench_gpu_kernels.py --inductor coordinate_descent_tuning=True

On an H200 with PyTorch 2.11, `--compile-mode max-autotune-no-cudagraphs` crashed inside
Inductor's autotuning (CUDA illegal memory access).
"""

from __future__ import annotations

import argparse
import ast
import functools
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch._inductor
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_train import build_trainer, timed_steps
from bench.cli_args import description, positive_int
from lm.train import peak_flops_of

ATTENTION = {  # label: the SDPA backends left on
    "default": None,
    "flash": ("flash",),
    "cudnn": ("cudnn",),
    "efficient": ("mem_efficient",),
}
KINDS = [  # (kind, substrings of kernel names), first match wins
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90_", "sm80_")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("triton fusion", ("triton",)),
]


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, parts in KINDS:
        if any(part in lowered for part in parts):
            return kind
    return "other"


def keep_attention_backends(label: str) -> None:
    kept = ATTENTION[label]
    if kept is None:
        return
    for backend in ("flash", "mem_efficient", "cudnn", "math"):
        getattr(torch.backends.cuda, f"enable_{backend}_sdp")(backend in kept)


def set_inductor_option(assignment: str) -> None:
    """`name=value` (a Python literal) into `torch._inductor.config`; dotted names reach its
    sections (`triton.cudagraphs=False`). An unknown name is refused, not silently added."""
    import torch._inductor.config as inductor

    name, equals, value = assignment.partition("=")
    if not equals:
        raise SystemExit(f"--inductor {assignment}: expected NAME=VALUE")
    *sections, option = name.strip().split(".")
    target = inductor
    for section in sections:
        target = getattr(target, section, None)
        if target is None:
            raise SystemExit(f"--inductor {assignment}: torch._inductor.config has no {name!r}")
    if not hasattr(target, option):
        raise SystemExit(f"--inductor {assignment}: torch._inductor.config has no {name!r}")
    try:
        setattr(target, option, ast.literal_eval(value.strip()))
    except (ValueError, SyntaxError):
        raise SystemExit(f"--inductor {assignment}: the value is not a Python literal "
                         "(True, 3, 'text')") from None  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--accumulation", type=positive_int, default=1, help="micro-batches a step")
    parser.add_argument("--steps", type=positive_int, default=10)
    parser.add_argument("--attention", choices=sorted(ATTENTION), default="default")
    parser.add_argument("--compile-mode", default=None,
                        choices=list(torch._inductor.list_mode_options()),
                        help="torch.compile's mode")  # fmt: skip
    parser.add_argument("--top", type=positive_int, default=12, help="largest kernels listed")
    parser.add_argument("--inductor", action="append", default=[], metavar="NAME=VALUE",
                        help="a torch._inductor.config option (repeatable)")  # fmt: skip
    args = parser.parse_args()
    keep_attention_backends(args.attention)
    for assignment in args.inductor:
        set_inductor_option(assignment)
    if args.compile_mode:
        torch.compile = functools.partial(torch.compile, mode=args.compile_mode)
    started = time.perf_counter()
    if not torch.cuda.is_available():
        parser.error("no CUDA GPU visible to torch: this bench profiles GPU kernels")
    trainer = build_trainer("gpt2", "cuda", "auto", "auto", True, args.batch, args.accumulation)
    timed_steps(trainer, 3)  # compile and warm up
    if trainer.model is trainer.module:  # the compiler failed (its warning is above)
        print(f"NOT compiled: torch.compile (mode {args.compile_mode or 'default'}) failed")
    ready = time.perf_counter() - started
    mode = args.compile_mode or "default"
    options = f", inductor {' '.join(args.inductor)}" if args.inductor else ""
    print(f"attention {args.attention}, compile mode {mode}{options}, batch {args.batch} x "
          f"{args.accumulation}: ready in {ready:.0f}s")  # fmt: skip
    seconds = min(timed_steps(trainer, args.steps) for _ in range(2)) / args.steps
    tokens_per_s = trainer.config.global_batch * trainer.config.block_size / seconds
    peak = peak_flops_of(torch.cuda.get_device_name())
    mfu = f", MFU {tokens_per_s * trainer.flops_per_token / peak:.1%}" if peak else ""
    print(f"{seconds * 1e3:.1f} ms a step, {tokens_per_s:,.0f} tokens/s{mfu}")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        timed_steps(trainer, args.steps)
    per_kernel: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name] += event.device_time / 1e3 / args.steps  # ms a step
    total = sum(per_kernel.values())
    if total == 0:  # CUPTI not permitted (some containers), or a profiler that saw no kernel
        raise SystemExit("the profiler recorded no CUDA kernel time: no breakdown")
    per_kind: dict[str, float] = defaultdict(float)
    for name, ms in per_kernel.items():
        per_kind[kind_of(name)] += ms
    print(f"kernels {total:.1f} ms a step ({total / (seconds * 1e3):.0%} of the step):")
    for kind, ms in sorted(per_kind.items(), key=lambda item: -item[1]):
        print(f"  {kind:>14}: {ms:7.1f} ms ({ms / total:.0%})")
    for name, ms in sorted(per_kernel.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {ms:7.2f} ms {kind_of(name):>13}  {name[:90]}")


if __name__ == "__main__":
    main()
