"""Whether this CPU multiplies bf16 natively: what decides the CPU's default precision.

bf16 autocast on a CPU pays off only where the hardware has bf16 dot products (AVX512-BF16 on
Zen 4 and Cooper Lake or newer Xeons, AMX on Sapphire Rapids and later). Elsewhere PyTorch
emulates them and bf16 is slower than fp32 (measured 0.07x on an AVX2 CPU); with them, bf16 and
compile train nanoGPT's CPU shape at about 1.6x eager fp32 (bench/bench_train.py). PyTorch
exposes no public query for these instructions, so the kernel's CPU flags are read (Linux);
elsewhere the answer is "no", and the default stays fp32.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_field(name: str, path: Path = CPUINFO) -> str | None:
    """The value of the first CPU's `name` line in /proc/cpuinfo (`flags`, `model name`); None
    where there is no such line or file (not Linux)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name):
            return line.partition(":")[2].strip()
    return None


@cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo; empty where there is none."""
    return frozenset((cpuinfo_field("flags", CPUINFO) or "").split())


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 dot products (AVX512-BF16 or AMX-BF16)."""
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)
