"""Keep the memory a CPU training step frees, so that the next step reuses it.

glibc's malloc serves a block over its mmap threshold (128 KiB at start, then raised to the
largest block freed so far) with a fresh mapping from the kernel and unmaps it on `free`; memory
freed at the top of the heap beyond its trim threshold goes back to the kernel too. A training
step allocates and frees the same activations and gradients every step, so the next step pays a
page fault for every 4 KiB of them again. On nanoGPT's CPU shape that was up to 3,000 faults
and 2 to 5 ms of kernel time a step of 30 to 40 ms, varying with what had been freed before
(bench/bench_train.py, which builds the real Trainer, prints the faults per step).

`keep_freed_memory` raises both thresholds, as PyTorch's CPU tuning guide does with jemalloc or
tcmalloc (which are not installed here): blocks up to 32 MiB come from the heap, and up to
1 GiB of freed heap stays with the process. Blocks above 32 MiB still come from the kernel,
whose faults are small beside the work on such a block. The thresholds hold for the whole
process, after training too: the flow trains a single-process model in its own process, so its
later stages keep the heap training left, until the run's process ends. A training process
holds its peak memory at every step anyway. Only glibc has these knobs; elsewhere this does
nothing. `LMFORGE_KEEP_FREED_MEMORY=0` leaves the thresholds as they are (a data stage still
gives back what it freed when it ends: `give_back_freed_memory`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from collections.abc import Callable
from functools import cache
from typing import ParamSpec, TypeVar

logger = logging.getLogger(__name__)

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 32 * 2**20  # the most older glibc versions accept on 64-bit
TRIM_THRESHOLD_BYTES = 2**30
OPT_OUT = "LMFORGE_KEEP_FREED_MEMORY"
P = ParamSpec("P")
R = TypeVar("R")


def _glibc() -> ctypes.CDLL | None:
    """The C library this process runs on, where it is glibc (it names its version)."""
    try:
        libc = ctypes.CDLL(None)  # the symbols the process has loaded, the C library's among them
    except OSError:
        return None
    # glibc names its version; musl and macOS have no such function.
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None
    return libc


@cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True where they were
    raised, False where the C library is not glibc, they are turned off by
    `LMFORGE_KEEP_FREED_MEMORY=0`, or glibc refused one (the mmap threshold may then be raised
    alone, which only keeps more blocks in the heap)."""
    if os.environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    # Setting either stops glibc from adjusting both by itself.
    raised = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
              and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)  # fmt: skip
    if raised:
        logger.debug("glibc malloc keeps freed memory: blocks up to %d MiB from the heap",
                     MMAP_THRESHOLD_BYTES // 2**20)  # fmt: skip
    else:
        logger.debug("glibc refused its mmap/trim thresholds; the allocator is unchanged")
    return raised


def give_back_freed_memory() -> None:
    """Return what this process has freed to the kernel: glibc's free heap (`malloc_trim`) and
    Arrow's memory pool. A data stage (ingest, clean, encode) frees its batches as it ends, but
    both allocators keep the pages, and the stages run in the flow's process, as training does
    after them: 100 MB of text read and written left 470 MB held, 140 MB once given back, and a
    run over it trained on top of 1.6 GB its data stages had freed."""
    pyarrow = sys.modules.get("pyarrow")  # only a process that used Arrow has a pool to empty
    if pyarrow is not None:
        pyarrow.default_memory_pool().release_unused()
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def gives_back_freed_memory(function: Callable[P, R]) -> Callable[P, R]:
    """`function`, calling `give_back_freed_memory` when it returns or raises."""

    @functools.wraps(function)
    def giving_back(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        finally:
            give_back_freed_memory()

    return giving_back
