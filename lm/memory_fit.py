"""Whether the models a config trains fit the memory they would train in, asked before any
stage runs.

A model too large for the machine met it once every data stage had run, in the train stage:
a 500-line allocator traceback under a memory limit (`ulimit -v`), or, without one, the
kernel's OOM kill (no message at all, and other processes killed with it). The command line
says it before any server starts (`lmforge check`, `run`); a flow says it too, as the config's
error, for a run a deployment started, which no command line checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class MemoryFit:
    """What `memory_fit` found: a `refusal` (a model that cannot fit), else `warnings` (one
    that may not), each one line naming the config."""

    refusal: str | None = None
    warnings: list[str] = field(default_factory=list)


def bytes_text(count: float) -> str:
    """In MiB, or GiB and TiB once it reaches a thousand of the smaller unit."""
    for unit in ("MiB", "GiB"):
        count /= 1 << (20 if unit == "MiB" else 10)
        if round(count, 1) < 1000:  # as shown: 999.96 MiB is "1.0 GiB", not "1,000.0 MiB"
            return f"{count:,.1f} {unit}"
    return f"{count / 1024:,.1f} TiB"


def machine_memory() -> tuple[int, str] | None:
    """(bytes, what they are) of the memory a CPU training has at most: the machine's RAM, or
    less where the process's address space is limited (`ulimit -v`: a batch system's or a
    shared machine's cap), which the model met as a 900-line traceback ending "can't allocate
    memory" once every data stage had run; None where neither can be told."""
    ram = ram_bytes()
    memory = None if ram is None else (ram, "of RAM")
    limit = address_space_limit()
    if limit is not None and (memory is None or limit < memory[0]):
        return limit, ADDRESS_SPACE
    return memory


ADDRESS_SPACE = "the address-space limit (ulimit -v) allows"


def ram_bytes() -> int | None:
    """The machine's RAM; None where it cannot be told (no sysconf: Windows)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def for_processes(memory: tuple[int, str], processes: int) -> tuple[int, str]:
    """The memory (`machine_memory`) that `processes` of one node share: `ulimit -v` caps
    each process's own address space, so they have that many times it, within the RAM. A
    node of 2 processes needing 9 GiB each was refused under a 12 GiB limit, as 18 GiB."""
    available, where = memory
    if processes == 1 or where != ADDRESS_SPACE:
        return memory
    ram = ram_bytes()
    if ram is not None and ram < available * processes:
        return ram, "of RAM"
    return available * processes, f"the address-space limits (ulimit -v) of {processes} allow"


def address_space_limit() -> int | None:
    """The soft RLIMIT_AS in bytes; None where there is none (or no `resource`: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def trains_on_the_cpu(requested: str) -> bool:
    """Whether a `train.device` of `requested` trains on this machine's CPU, asked without
    starting CUDA in this process, which may fork later (`lm.machine`): `is_available` would,
    `device_count` asks NVML. A GPU's memory is not checked."""
    if requested in ("cpu", "auto"):
        import torch

        mps = getattr(torch.backends, "mps", None)
        gpu = torch.cuda.device_count() > 0 or bool(mps and mps.is_available())
        return requested == "cpu" or not gpu
    return False


def memory_fit(settings, runs: list, config_path: Path, given_sets: bool = False) -> MemoryFit:
    """Whether the `runs` (a config's model runs, or an ablation's arms) fit the memory they
    would train in (a CPU's RAM). Weights, gradients and AdamW state over the memory: refused.
    A char tokenizer is counted at 2 ids, so a model refused here cannot fit whatever the
    data. A GPT's activations (`lm.sizing`'s estimate, eager, within 10 % of a measured peak)
    count at half, below what even `torch.compile` (35 % less) takes: a micro-batch over that
    is refused too, and one whose whole estimate is over the memory is warned of. A model
    continued from `train.init_from` keeps its checkpoint's vocabulary: not sized here."""
    found = MemoryFit()
    memory = machine_memory() if runs else None
    if memory is None:
        return found
    import torch

    from lm.sizing import size_model

    vocab = 2 if settings.tokenizer.kind == "char" else settings.tokenizer.vocab_size
    sizes = (
        f"lmforge size {config_path}{' with the same --set' if given_sets else ''} shows the sizes"
    )
    sized = set()  # an ablation's seeds train one model alike: said once, not per seed
    for run in runs:
        if run.train.init_from or not trains_on_the_cpu(run.train.device):
            continue
        alike = (run.model.model_dump_json(), run.train.model_dump_json(exclude={"seed"}))
        if alike in sized:
            continue
        sized.add(alike)
        size = size_model(run.model, run.train, vocab, device=torch.device("cpu"))
        if size.closed_form:  # the count bigram: its sparse table holds the pairs its text
            continue  # has, bounded here by V² only (40 GB at GPT-2's 50,257); no optimizer
        share = run.train.nproc_per_node  # every process of this node in one machine's RAM
        available, where = for_processes(memory, share)
        needed = size.state_bytes_per_process() * share
        activations = (size.activations_bytes or 0) * share
        whose = f"model '{run.label}'" if len(runs) > 1 else "the model"
        processes = f" in {share} processes" if share > 1 else ""
        if needed > available:
            found.refusal = (
                f"{config_path}: {whose} needs {bytes_text(needed)} for its weights, gradients "
                f"and AdamW state alone{processes} ({size.parameters:,} parameters), more than "
                f"the {bytes_text(available)} {where}: make it smaller ({sizes})"
            )
        elif needed + activations / 2 > available:
            found.refusal = (
                f"{config_path}: {whose} needs about {bytes_text(needed + activations)} to train"
                f"{processes}, {bytes_text(activations)} of it activations of a micro-batch of "
                f"{run.train.micro_batch} × {run.model.block_size} tokens, far more than the "
                f"{bytes_text(available)} {where}: lower train.micro_batch (train.global_batch "
                f"stays, by accumulation) or the context ({sizes})"
            )
        elif needed + activations > available:
            found.warnings.append(
                f"{config_path}: {whose} may need about {bytes_text(needed + activations)} to "
                f"train{processes}, more than the {bytes_text(available)} {where}: it may be "
                "killed for memory; a smaller train.micro_batch takes less"
            )
        if found.refusal:
            return found
    return found
