"""Near-duplicate detection: MinHash signatures over word shingles, and an LSH index.

Our own implementation rather than datasketch's: signatures are computed for all shingles of a
document in one vectorised numpy expression over stable crc32-based hashes, which is several times
faster per document and identical across processes (a requirement for reproducible corpora and for
fanning cleaning out to worker processes).

The banding (b bands of r rows) is chosen for the Jaccard threshold by minimising the sum of
false-positive and false-negative probability mass, as datasketch does; a bucket collision is then
confirmed by comparing the full signatures, so a document is only marked when its estimated
Jaccard similarity really reaches the threshold.
"""

from __future__ import annotations

import numpy as np

from lm.text.word_hashes import ngram_hashes, word_ids

_MAX_HASH = np.uint64(0xFFFFFFFF)


def _fold(hashes: np.ndarray) -> np.ndarray:
    """64-bit hashes to 32 bits (xor of the halves), as the permutations work on 32 bits."""
    return ((hashes ^ (hashes >> np.uint64(32))) & _MAX_HASH).astype(np.uint32)


class MinHasher:
    """MinHash signatures over word shingles, for many documents at once."""

    # Columns of the (num_perm x shingles) matrix computed at a time: bounds the temporary
    # memory however long the documents are, and keeps it in the CPU's cache (4 MB at 128
    # permutations; measured 1.5x faster than 64k columns, which go out to memory and back for
    # each of the permutation's three operations and the minimum).
    CHUNK_SHINGLES = 1 << 13

    def __init__(self, num_perm: int, shingle_size: int, seed: int):
        rng = np.random.default_rng(seed)
        # Permutation i of the 32-bit shingle hashes: x -> ((x ^ mask_i) * a_i + b_i) mod 2**32,
        # a bijection for odd a_i. Three cheap uint32 operations per cell instead of a 64-bit
        # modulo: the shingle hashes are already well mixed, so this is enough for min-wise use.
        self.mask = rng.integers(0, 1 << 32, size=(num_perm, 1), dtype=np.uint32)
        self.a = rng.integers(0, 1 << 31, size=(num_perm, 1), dtype=np.uint32) * 2 + 1
        self.b = rng.integers(0, 1 << 32, size=(num_perm, 1), dtype=np.uint32)
        self.shingle_size = shingle_size

    def signature(self, words: list[str]) -> np.ndarray:
        return self.signatures([words])[0]

    def signatures(self, words_per_doc: list[list[str]]) -> list[np.ndarray]:
        return self.signatures_of_ids([word_ids(words) for words in words_per_doc])

    def signatures_of_ids(self, ids_per_doc: list[np.ndarray]) -> list[np.ndarray]:
        """Signatures of documents given as their word hashes (`word_hashes.BatchWords.ids`)."""
        result: list[np.ndarray] = []
        group: list[np.ndarray] = []
        group_size = 0
        for doc_shingles in self._shingles(ids_per_doc):
            if len(doc_shingles) > self.CHUNK_SHINGLES:
                result.extend(self._group_minima(group))
                group, group_size = [], 0
                result.append(self._long_document_minimum(doc_shingles))
                continue
            if group_size + len(doc_shingles) > self.CHUNK_SHINGLES:
                result.extend(self._group_minima(group))
                group, group_size = [], 0
            group.append(doc_shingles)
            group_size += len(doc_shingles)
        result.extend(self._group_minima(group))
        return result

    def _shingles(self, ids_per_doc: list[np.ndarray]) -> list[np.ndarray]:
        """Each document's shingle hashes, folded to 32 bits: one hash per window of
        `shingle_size` words, or one of all its words when it has fewer. The windows of every
        document are hashed in one pass over the documents' words laid end to end; those that
        straddle two documents are never used."""
        size = self.shingle_size
        lengths = [len(ids) for ids in ids_per_doc]
        flat = np.concatenate(ids_per_doc) if ids_per_doc else np.empty(0, dtype=np.uint64)
        windows = _fold(ngram_hashes(flat, size))
        shingles = []
        start = 0
        for ids, length in zip(ids_per_doc, lengths, strict=True):
            if length >= size:
                shingles.append(windows[start : start + length - size + 1])
            elif length:
                shingles.append(_fold(ngram_hashes(ids, length)))
            else:
                shingles.append(np.zeros(1, dtype=np.uint32))
            start += length
        return shingles

    def _permuted(self, shingles: np.ndarray) -> np.ndarray:
        permuted = shingles[None, :] ^ self.mask
        permuted *= self.a
        permuted += self.b
        return permuted

    def _group_minima(self, group: list[np.ndarray]) -> list[np.ndarray]:
        if not group:
            return []
        offsets = np.cumsum([0] + [len(s) for s in group[:-1]])
        minima = np.minimum.reduceat(self._permuted(np.concatenate(group)), offsets, axis=1)
        return list(minima.T.copy())

    def _long_document_minimum(self, shingles: np.ndarray) -> np.ndarray:
        minimum = None
        for start in range(0, len(shingles), self.CHUNK_SHINGLES):
            chunk = self._permuted(shingles[start : start + self.CHUNK_SHINGLES]).min(axis=1)
            minimum = chunk if minimum is None else np.minimum(minimum, chunk)
        return minimum


# numpy < 2.0 names it trapz (trapezoid arrived in 2.0).
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def optimal_banding(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm that best separates pairs above and below
    the Jaccard threshold."""
    best, best_error = (1, num_perm), float("inf")
    grid = np.linspace(0.0, 1.0, 201)
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        if rows == 0:
            break
        candidate = 1.0 - (1.0 - grid**rows) ** bands
        below = grid <= threshold
        false_positive = _trapezoid(candidate[below], grid[below])
        false_negative = _trapezoid(1.0 - candidate[~below], grid[~below])
        if false_positive + false_negative < best_error:
            best, best_error = (bands, rows), false_positive + false_negative
    return best


# The most documents a bucket remembers. A document is compared with every one in each bucket
# it falls in: keeping only the first missed a near duplicate whose band key an unrelated
# earlier document held (0.7% of them at threshold 0.8, measured on mutated Lee lines), while a
# bucket that boilerplate fills would make each lookup as slow as a scan.
BUCKET_CAPACITY = 16


class NearDuplicateIndex:
    """Remembers kept documents; `find_or_add` returns the id of an earlier near duplicate, or
    adds the document and returns None. Order matters: the first document of a cluster is kept."""

    def __init__(self, threshold: float, num_perm: int):
        self.threshold = threshold
        self.bands, self.rows = optimal_banding(threshold, num_perm)
        # key → a position, or a list of them once a second document shares the key: most
        # keys are one document's, and an int costs far less memory than a list.
        self._buckets: list[dict[bytes, int | list[int]]] = [{} for _ in range(self.bands)]
        self._signatures: list[np.ndarray] = []
        self._doc_ids: list[str] = []

    def find_or_add(self, doc_id: str, signature: np.ndarray) -> str | None:
        whole = signature.tobytes()
        width = self.rows * signature.itemsize
        keys = [whole[band * width : (band + 1) * width] for band in range(self.bands)]
        checked: set[int] = set()
        for band, key in enumerate(keys):
            held = self._buckets[band].get(key)
            if held is None:
                continue
            for candidate in held if isinstance(held, list) else (held,):
                if candidate in checked:
                    continue
                checked.add(candidate)
                similarity = float(np.mean(self._signatures[candidate] == signature))
                if similarity >= self.threshold:
                    return self._doc_ids[candidate]
        position = len(self._doc_ids)
        self._signatures.append(signature)
        self._doc_ids.append(doc_id)
        for band, key in enumerate(keys):
            bucket = self._buckets[band]
            held = bucket.get(key)
            if held is None:
                bucket[key] = position
            elif not isinstance(held, list):
                bucket[key] = [held, position]
            elif len(held) < BUCKET_CAPACITY:
                held.append(position)
        return None
