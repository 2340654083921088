"""What a run computed on, in one line for its record: the figures depend on it.

The same config, data and seed give the same metrics on the same machine, and only there: the
CPU's instruction set decides the kernels, PyTorch's thread count the order of summation (the
names ladder's GPT scores 1.9192 with two threads and 1.9183 with one), and a GPU its own
arithmetic. So the run registry keeps the processor, the thread count and any GPUs beside the
package versions, for a reader comparing two runs' figures.
"""

from __future__ import annotations

import os

from lm.cpu_features import CPUINFO, cpuinfo_field


def cpu_model_name() -> str:
    """The first CPU's model name from /proc/cpuinfo ("AMD EPYC 7B13"); "cpu" where there is
    none to read (not Linux, or a kernel that leaves it out)."""
    return cpuinfo_field("model name", CPUINFO) or "cpu"


def describe_machine() -> str:
    """One line for the run's record: "AMD EPYC 7B13, 16 cores, 8 torch threads, 1 CUDA
    device". The GPU's name is left to the training's own record (`device_name`): asking for
    it here would start CUDA in the flow's process, which may fork later."""
    import torch

    parts = [cpu_model_name(), _count(os.cpu_count() or 1, "core"),
             _count(torch.get_num_threads(), "torch thread")]  # fmt: skip
    gpus = torch.cuda.device_count()  # counts without starting CUDA
    if gpus:
        parts.append(_count(gpus, "CUDA device"))
    return ", ".join(parts)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def device_name(device) -> str:
    """What a training's `torch.device` is: the GPU's name for CUDA ("NVIDIA H100 80GB HBM3"),
    the CPU's model name otherwise."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()
