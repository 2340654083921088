"""Words as 64-bit integers, and word n-grams as rolling hashes of them.

Both the repetition rules and MinHash work on word n-grams. Hashing each word once (crc32, stable
across processes, unlike Python's salted `hash`) and combining n-grams with vectorised arithmetic
keeps the per-document cost to a few numpy passes instead of Python loops over tuples.
"""

from __future__ import annotations

import zlib

import numpy as np

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so the rolling hash is a bijection per step


def word_ids(words: list[str]) -> np.ndarray:
    return np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint64, count=len(words))


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """One hash per window of `n` consecutive words (empty when there are fewer words)."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    hashes = ids[:count].copy()
    with np.errstate(over="ignore"):
        for offset in range(1, n):
            hashes = hashes * _MULTIPLIER + ids[offset : offset + count]
    return hashes
