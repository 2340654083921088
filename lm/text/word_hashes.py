"""Words as 64-bit integers, and word n-grams as rolling hashes of them.

Both the repetition rules and MinHash work on word n-grams. A batch of texts is cut into words
once, in numpy over its UTF-8 bytes, exactly where `str.split()` cuts, and every word is hashed
there too: a few array passes per batch instead of Python objects and calls per word (which cost
more than all the rest of the word arithmetic). The hash is a polynomial over the bytes with a
murmur3 finalizer, the same in every process and on every run (Python's `hash` of a string is
salted per process), which MinHash signatures compared across worker processes need. n-grams
are then combined with vectorised arithmetic.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lm.text.utf8_scan import CodePointFinder

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so the rolling hash is a bijection per step
# Powers of an odd base, and of its inverse modulo 2**64: a word's hash is a difference of
# prefix sums, shifted back to the word's first byte.
_BASE = 0x100000001B3  # the FNV prime
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)
_CACHED_POWERS = 1 << 22  # 32 MB per table
HASH_SPAN = 1 << 22  # bytes of whole words hashed at a time (`_hashes`)
_FMIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))
_SHIFT = np.uint64(33)

# `str.split()` cuts at the ASCII whitespace bytes (space, \t \n \v \f \r, and the separators
# 0x1c-0x1f) and at the non-ASCII whitespace code points. ASCII bytes are classified by
# comparisons, which numpy vectorises, not by table lookups, which it gathers one by one
# (measured: twice as fast).
_UNICODE_SPACES = CodePointFinder.of({c for c in map(chr, range(0x80, 0x3001)) if c.isspace()})


@dataclass(frozen=True)
class BatchWords:
    """The whitespace-separated words of a batch of texts (each text's `split()`), flat: per
    word its stable hash, its length in characters and whether it has a letter; per text its
    number of words."""

    ids: np.ndarray  # uint64
    lengths: np.ndarray  # int64, characters
    has_letter: np.ndarray  # bool
    counts: np.ndarray  # int64, words per text

    @classmethod
    def of(cls, texts: list[str], encoded: list[bytes] | None = None) -> BatchWords:
        """The words of `texts`; `encoded`, when given, is each text in UTF-8."""
        if not texts:
            empty = np.empty(0, dtype=np.int64)
            return cls(empty.astype(np.uint64), empty, empty.astype(bool), empty)
        encoded = encoded or [text.encode() for text in texts]
        # A newline between texts: whitespace, so no word spans two of them.
        data = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
        text_starts = np.cumsum([0] + [len(e) + 1 for e in encoded[:-1]], dtype=np.int64)
        ascii_only = all(map(str.isascii, texts))
        space = _ascii_spaces(data)
        if not ascii_only:
            _mark_unicode_spaces(data, space)
        edges = np.diff(np.concatenate(([True], space, [True])).view(np.int8))
        starts = np.flatnonzero(edges == -1)
        ends = np.flatnonzero(edges == 1)
        counts = np.diff(np.searchsorted(starts, np.append(text_starts, len(data))))
        letters = _counts_between(_ascii_letters(data), starts, ends)
        if ascii_only:
            lengths = ends - starts
            has_letter = letters > 0
        else:
            lengths = _counts_between((data & 0xC0) != 0x80, starts, ends)
            has_letter = _has_letter(data, starts, ends, letters, lengths)
        return cls(
            ids=_hashes(data, starts, ends),
            lengths=lengths.astype(np.int64),
            has_letter=has_letter,
            counts=counts.astype(np.int64),
        )

    @functools.cached_property
    def doc_of_word(self) -> np.ndarray:
        """The text each word belongs to."""
        return np.repeat(np.arange(len(self.counts)), self.counts)

    @property
    def starts(self) -> np.ndarray:
        """Each text's first word."""
        return np.cumsum(self.counts) - self.counts


def word_ids(words: list[str]) -> np.ndarray:
    """The stable hash of each word (words without whitespace), as `BatchWords` computes it."""
    batch = BatchWords.of([" ".join(words)])
    if len(batch.ids) != len(words):
        raise ValueError("word_ids: a word contains whitespace")
    return batch.ids


def _mark_unicode_spaces(data: np.ndarray, space: np.ndarray) -> None:
    """Set `space` on every byte of the non-ASCII whitespace code points (NBSP, em space, line
    separator...)."""
    for position, size in zip(*_UNICODE_SPACES.find(data), strict=True):
        space[position : position + size] = True


def _ascii_spaces(data: np.ndarray) -> np.ndarray:
    return (data == 0x20) | (data - np.uint8(0x09) <= 4) | (data - np.uint8(0x1C) <= 3)


def _ascii_letters(data: np.ndarray) -> np.ndarray:
    return (data | np.uint8(0x20)) - np.uint8(0x61) < 26


def _counts_between(mask: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many of `mask[s:e]` are set, for each word `[s, e)`."""
    cumulative = np.empty(len(mask) + 1, dtype=np.int32)
    cumulative[0] = 0
    np.cumsum(mask, dtype=np.int32, out=cumulative[1:])
    return (cumulative[ends] - cumulative[starts]).astype(np.int64)


def _has_letter(data, starts, ends, ascii_letters, lengths) -> np.ndarray:
    """A word has a letter when it has an ASCII one, or when one of its non-ASCII characters is
    a letter (`str.isalpha`); only the words that have non-ASCII characters and no ASCII letter
    are decoded."""
    has_letter = ascii_letters > 0
    unsure = np.flatnonzero(~has_letter & (lengths < ends - starts))
    raw = data.tobytes()
    for word in unsure.tolist():
        has_letter[word] = any(map(str.isalpha, raw[starts[word] : ends[word]].decode()))
    return has_letter


def _hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """sum(byte_j * base ** (j - start)) over each word's bytes, mixed with its length: prefix
    sums of byte_j * base ** j, differenced per word and multiplied by base ** -start. Three
    passes over the bytes, a span of whole words at a time (`HASH_SPAN` bytes, or one longer
    word): the sums hold 24 bytes per byte, and a 200 MB document took gigabytes for them. A
    word's hash does not depend on where its span starts."""
    hashes = np.empty(len(starts), dtype=np.uint64)
    first = 0
    while first < len(starts):
        low = int(starts[first])
        last = max(int(np.searchsorted(ends, low + HASH_SPAN, side="right")), first + 1)
        high = int(ends[last - 1])
        hashes[first:last] = _span_hashes(data[low:high], starts[first:last] - low,
                                          ends[first:last] - low)  # fmt: skip
        first = last
    return hashes


def _span_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    powers, inverse = _powers(len(data))
    with np.errstate(over="ignore"):
        prefix = np.empty(len(data) + 1, dtype=np.uint64)
        prefix[0] = 0
        np.cumsum(data * powers, out=prefix[1:])
        sums = (prefix[ends] - prefix[starts]) * inverse[starts]
        sizes = (ends - starts).astype(np.uint64)
        return _fmix(sums ^ (sizes * _MULTIPLIER))


_power_tables: list[np.ndarray] = []


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """base ** j and base ** -j (mod 2**64) for j < n. Tables up to `_CACHED_POWERS` long are
    kept for the next batch (a batch is rarely more than a few MB); longer ones are made for the
    one call."""
    if _power_tables and len(_power_tables[0]) >= n:
        return _power_tables[0][:n], _power_tables[1][:n]
    size = n if n > _CACHED_POWERS else min(max(n, 1 << 16) * 2, _CACHED_POWERS)
    tables = []
    with np.errstate(over="ignore"):
        for base in (_BASE, _BASE_INVERSE):
            table = np.empty(size, dtype=np.uint64)
            table[0] = 1
            np.cumprod(np.full(size - 1, base, dtype=np.uint64), out=table[1:])
            tables.append(table)
    if size <= _CACHED_POWERS:
        _power_tables[:] = tables
    return tables[0][:n], tables[1][:n]


def _fmix(hashes: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer: every input bit moves about half of the output bits."""
    with np.errstate(over="ignore"):
        hashes = hashes ^ (hashes >> _SHIFT)
        hashes = hashes * _FMIX[0]
        hashes = hashes ^ (hashes >> _SHIFT)
        hashes = hashes * _FMIX[1]
        return hashes ^ (hashes >> _SHIFT)


def character_ids(text: str) -> np.ndarray:
    """A stable hash per character of `text` but whitespace: the "words" of a text written
    without spaces (Chinese, Japanese, Thai), whose whitespace-separated words are whole
    clauses, so that any edit changed every shingle of a document."""
    points = np.frombuffer("".join(text.split()).encode("utf-32-le"), dtype=np.uint32)
    return _fmix(points.astype(np.uint64) + np.uint64(1))


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
