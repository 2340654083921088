"""Finding given non-ASCII characters in UTF-8 bytes with numpy.

Word cutting and normalization both look for a few special code points (Unicode spaces, format
characters) in a batch's UTF-8 bytes. Only the positions that hold one of their lead bytes are
candidates, and each is compared by its whole encoding (two or three bytes, read as one integer):
a few array operations however many candidates there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CodePointFinder:
    """Where any of a set of non-ASCII characters (of two or three UTF-8 bytes) occurs."""

    leads: tuple[int, ...]  # the bytes that begin one of the characters
    keys: dict[int, np.ndarray]  # encoding size -> the encodings, as integers

    @classmethod
    def of(cls, characters: set[str]) -> CodePointFinder:
        encodings = [c.encode() for c in characters]
        if any(len(e) not in (2, 3) for e in encodings):
            raise ValueError("CodePointFinder: only characters of 2 or 3 UTF-8 bytes")
        leads = tuple(sorted({e[0] for e in encodings}))
        keys = {
            size: np.array(sorted(int.from_bytes(e) for e in encodings if len(e) == size))
            for size in (2, 3)
        }
        return cls(leads, keys)

    def find(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first byte of every occurrence in `data` (uint8), and its encoding's size."""
        # One comparison per lead byte (a handful): vectorised, unlike a table lookup or `isin`.
        is_lead = data == self.leads[0]
        for lead in self.leads[1:]:
            is_lead |= data == lead
        candidates = np.flatnonzero(is_lead)
        if len(candidates) == 0:
            return candidates, candidates
        padded = np.concatenate((data, np.zeros(2, dtype=np.uint8)))
        two = padded[candidates].astype(np.int64) << 8 | padded[candidates + 1]
        three = two << 8 | padded[candidates + 2]
        is_two, is_three = np.isin(two, self.keys[2]), np.isin(three, self.keys[3])
        found = is_two | is_three
        return candidates[found], np.where(is_two, 2, 3)[found]
