"""Token shards: one flat little-endian array of token ids per split, with a JSON sidecar.

The sidecar is self-describing (after llm.c's shard header): magic, version, dtype, token and
document counts, the UTF-8 byte count of the text the tokens encode (what bits per byte divides
by), and the digest of the tokenizer that made them. `open_shard` memory-maps the array, so a
shard of any size costs no memory to open, and refuses a shard whose tokenizer digest is not the
one the caller holds: token ids from another tokenizer are silent garbage to a model.
Documents are separated by the tokenizer's end-of-text id.

Two ways to split: `hash` shards hold the documents that cleaning assigned to each split, each
followed by end-of-text; `ordered` shards (nanoGPT's split, `OrderedSplitter`) are consecutive
pieces of one stream of every kept document in corpus order, with end-of-text between
documents, cut where the split's fractions fall in the text's bytes (the same text for every
tokenizer, to within a token), so a document may straddle two shards. The sidecar records which.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MAGIC = "lmforge-token-shard"
VERSION = 1
SPAN_CHUNK = 1 << 22  # tokens per write when copying a span of a stream


class ShardError(ValueError):
    """A shard that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ShardInfo:
    magic: str
    version: int
    dtype: str
    tokens: int
    documents: int
    text_bytes: int
    tokenizer_digest: str
    eot_id: int
    vocab_size: int
    # `hash` or `ordered` (see the module docstring); older sidecars lack it: they are `hash`.
    split_method: str = "hash"


def shard_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


class ShardWriter:
    """Appends documents (lists of ids) to `path`, each followed by the end-of-text id, or raw
    spans of an ordered stream (`write_span`)."""

    def __init__(self, path: Path, tokenizer_digest: str, eot_id: int, vocab_size: int,
                 split_method: str = "hash"):  # fmt: skip
        self.path = path
        self.split_method = split_method
        self.dtype = shard_dtype(vocab_size)
        self.tokenizer_digest = tokenizer_digest
        self.eot_id = eot_id
        self.vocab_size = vocab_size
        self.tokens = self.documents = self.text_bytes = 0
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, ids: list[int], text_bytes: int) -> None:
        array = np.asarray([*ids, self.eot_id], dtype=self.dtype)
        self._file.write(array.tobytes())
        self.tokens += len(array)
        self.documents += 1
        self.text_bytes += text_bytes

    def write_span(self, tokens: np.ndarray, documents: int, text_bytes: int) -> None:
        """Append tokens as they are (separators included), counting the documents they touch
        and the bytes of text they encode. A chunk at a time: `tokens` may be a memory-mapped
        stream larger than memory."""
        for start in range(0, len(tokens), SPAN_CHUNK):
            chunk = tokens[start : start + SPAN_CHUNK]
            self._file.write(np.asarray(chunk, dtype=self.dtype).tobytes())
        self.tokens += len(tokens)
        self.documents += documents
        self.text_bytes += text_bytes

    def close(self) -> ShardInfo:
        self._file.close()
        info = ShardInfo(
            MAGIC, VERSION, self.dtype.str, self.tokens, self.documents, self.text_bytes,
            self.tokenizer_digest, self.eot_id, self.vocab_size, self.split_method,
        )  # fmt: skip
        _sidecar(self.path).write_text(json.dumps(asdict(info), indent=2))
        return info


def fraction_of(total: int, fraction: float) -> int:
    """nanoGPT's `int(n * 0.9)`, without the float error of a computed fraction: 1 - 0.05 -
    0.05 is 0.8999…, which cut 1,000 bytes at 899. The one rounding every ordered cut uses (the
    shards here, the tokenizer stage's `iter_stream_part`), so both cut the same text."""
    return int(round(total * fraction, 6))


def ordered_boundaries(total: int, val: float, test: float) -> tuple[int, int]:
    """Where an ordered stream of `total` bytes of text is cut: train is `[0, train_end)`, val
    `[train_end, val_end)`, test the rest. nanoGPT's `int(n * 0.9)`, extended to three parts."""
    train_end = fraction_of(total, 1.0 - val - test)
    val_end = fraction_of(total, 1.0 - test)
    return train_end, max(val_end, train_end)


def _part_bytes(tokens: np.ndarray, size: int, first: int, last: int,
                start_bytes: Callable[[np.ndarray], int]) -> int:  # fmt: skip
    """Bytes of `tokens[first:last]`, a part of a document of `size` bytes: the parts of a
    document add up to its size, whatever `start_bytes` (bytes its first tokens stand for)
    makes of text its tokens cannot spell."""

    def before(count: int) -> int:
        return size if count >= len(tokens) else min(size, start_bytes(tokens[:count]))

    return max(0, before(last) - before(first))


def _token_at(offset: int, stream: np.ndarray, starts: np.ndarray, ends: np.ndarray,
              doc_bytes: np.ndarray, start_bytes: Callable[[np.ndarray], int]) -> int:  # fmt: skip
    """The stream position of the first token at or after byte `offset` of the documents'
    text (separators hold no bytes): the start of a document the offset begins, else, inside
    one, the end of the first of its tokens whose text reaches the offset (so a token the
    offset falls inside stays on the earlier side)."""
    ends_bytes = np.cumsum(doc_bytes)
    if not len(starts) or offset >= int(ends_bytes[-1]):
        return len(stream)
    doc = int(np.searchsorted(ends_bytes, offset, side="right"))
    within = offset - (int(ends_bytes[doc]) - int(doc_bytes[doc]))
    start, end = int(starts[doc]), int(ends[doc])
    if within <= 0:
        return start
    tokens = np.asarray(stream[start:end])
    counted = start_bytes(tokens)
    if counted < int(doc_bytes[doc]):
        # `<unk>`s count 1 byte each (a char tokenizer's characters unseen in training): the
        # counted bytes fall behind the text's, so the cut lands past the offset, by as many
        # bytes as the unknown characters hide before it (only the text could place it).
        logging.getLogger(__name__).warning(
            "ordered split: the document cut at byte %d holds text its tokenizer spells as "
            "<unk> (%d of its %d bytes not counted), so the cut may fall later in the text than "
            'another tokenizer\'s: tokenizer.unknown_chars = "bytes" spells every character',
            offset, int(doc_bytes[doc]) - counted, int(doc_bytes[doc]),
        )  # fmt: skip
    low, high = 1, len(tokens)  # the fewest tokens whose bytes reach `within`
    while low < high:
        middle = (low + high) // 2
        if min(int(doc_bytes[doc]), start_bytes(tokens[:middle])) >= within:
            high = middle
        else:
            low = middle + 1
    return start + low


class OrderedSplitter:
    """nanoGPT's split for a corpus of documents: every document's tokens go to one stream, in
    corpus order, with end-of-text between documents (none after the last: a single text splits
    exactly as nanoGPT splits it), then the stream is cut into consecutive shards.

    The stream is written to a temporary file beside the shards and copied out in chunks, so
    memory stays bounded; per document it keeps only its start, length and byte count (24 bytes)
    to count the documents and text bytes of each shard. A document cut by a boundary counts in
    both shards, and its bytes are divided where its tokens are cut, by the bytes its tokens
    before the cut stand for."""

    def __init__(self, folder: Path, tokenizer_digest: str, eot_id: int, vocab_size: int):
        self.folder = folder
        self.tokenizer_digest = tokenizer_digest
        self.eot_id = eot_id
        self.vocab_size = vocab_size
        self.dtype = shard_dtype(vocab_size)
        self.stream_path = folder / f"stream.bin.partial-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._file = open(self.stream_path, "wb")  # noqa: SIM115 - closed in cut()
        self.tokens = 0
        self._starts, self._lengths, self._bytes = array("q"), array("q"), array("q")

    def write(self, ids: list[int], text_bytes: int) -> None:
        tokens = [self.eot_id, *ids] if self._starts else ids
        self._file.write(np.asarray(tokens, dtype=self.dtype).tobytes())
        self._starts.append(self.tokens + len(tokens) - len(ids))
        self._lengths.append(len(ids))
        self._bytes.append(text_bytes)
        self.tokens += len(tokens)

    def cut(
        self, val: float, test: float, start_bytes: Callable[[np.ndarray], int]
    ) -> dict[str, ShardInfo]:
        """Write `train.bin`, `val.bin` and `test.bin` (with sidecars) and remove the stream.
        `start_bytes` gives the bytes of text a document's first tokens stand for, to divide a
        cut document's bytes between its parts (which add up to the document's bytes)."""
        self._file.close()
        stream = (
            np.memmap(self.stream_path, dtype=self.dtype, mode="r")
            if self.tokens
            else np.zeros(0, dtype=self.dtype)
        )
        starts = np.frombuffer(self._starts, dtype=np.int64)
        ends = starts + np.frombuffer(self._lengths, dtype=np.int64)
        doc_bytes = np.frombuffer(self._bytes, dtype=np.int64)
        # Cut where the fractions fall in the text's bytes, not in its tokens: a fraction of the
        # tokens is another stretch of text for every tokenizer (a BPE stream's last 10% of
        # tokens is not its last 10% of bytes), so models of different tokenizers were scored
        # on different text. The bytes are the tokenizer stage's cut too (`iter_stream_part`).
        # One document as characters (nanoGPT's Shakespeare) cuts where it did.
        byte_train_end, byte_val_end = ordered_boundaries(int(doc_bytes.sum()), val, test)
        train_end = _token_at(byte_train_end, stream, starts, ends, doc_bytes, start_bytes)
        val_end = max(
            train_end, _token_at(byte_val_end, stream, starts, ends, doc_bytes, start_bytes)
        )
        bounds = {"train": (0, train_end), "val": (train_end, val_end),
                  "test": (val_end, self.tokens)}  # fmt: skip
        infos = {}
        for split, (low, high) in bounds.items():
            writer = ShardWriter(self.folder / f"{split}.bin", self.tokenizer_digest, self.eot_id,
                                 self.vocab_size, split_method="ordered")  # fmt: skip
            inside = (starts >= low) & (ends <= high) & (starts < high)
            # An empty part (val = 0 with the cut inside a document) touches no document.
            touching = np.flatnonzero((starts < high) & (ends > low) & ~inside & (low < high))
            text_bytes = int(doc_bytes[inside].sum())
            for doc in touching:  # at most two: the documents cut at `low` and at `high`
                start, end = int(starts[doc]), int(ends[doc])
                text_bytes += _part_bytes(np.asarray(stream[start:end]), int(doc_bytes[doc]),
                                          max(low, start) - start, min(high, end) - start,
                                          start_bytes)  # fmt: skip
            writer.write_span(stream[low:high], int(inside.sum()) + len(touching), text_bytes)
            infos[split] = writer.close()
        del stream
        self.stream_path.unlink()
        return infos


def shard_documents(
    path: Path, tokenizer_digest: str, decode: Callable[[list[int]], str], chunk: int = 1 << 22
) -> Iterator[str]:
    """The text of each document in a shard, decoded from the tokens between its end-of-text
    marks (under the ordered split, a document the cut divides gives its part). Read in chunks
    of `chunk` tokens, so memory holds one chunk and one document."""
    tokens, info = open_shard(path, tokenizer_digest)
    pending: list[int] = []
    for low in range(0, len(tokens), chunk):
        part = np.asarray(tokens[low : low + chunk])
        start = 0
        for end in np.flatnonzero(part == info.eot_id).tolist():
            pending.extend(part[start:end].tolist())
            if pending:
                yield decode(pending)
            pending, start = [], end + 1
        pending.extend(part[start:].tolist())
    if pending:
        yield decode(pending)


def read_shard_info(path: Path) -> ShardInfo:
    sidecar = _sidecar(path)
    try:
        info = ShardInfo(**json.loads(sidecar.read_text()))
    except FileNotFoundError:
        raise ShardError(f"{path}: no sidecar {sidecar.name}; not a token shard") from None
    except (json.JSONDecodeError, TypeError) as error:
        raise ShardError(f"{sidecar}: unreadable shard header ({error})") from None
    if info.magic != MAGIC or info.version != VERSION:
        raise ShardError(f"{sidecar}: not an lmforge token shard of version {VERSION}")
    return info


def open_shard(path: Path, tokenizer_digest: str) -> tuple[np.memmap, ShardInfo]:
    """Memory-map a shard, checking that `tokenizer_digest` made it and that it is whole."""
    info = read_shard_info(path)
    if info.tokenizer_digest != tokenizer_digest:
        raise ShardError(
            f"{path}: made by tokenizer {info.tokenizer_digest}, but the tokenizer given is "
            f"{tokenizer_digest}; encode the corpus with that tokenizer (rerun the pipeline)"
        )
    dtype = np.dtype(info.dtype)
    expected = info.tokens * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise ShardError(f"{path}: {actual} bytes, the header says {expected}: truncated?")
    if info.tokens == 0:
        return np.zeros(0, dtype=dtype), info  # type: ignore[return-value]
    tokens = np.memmap(path, dtype=dtype, mode="r")
    # Damage of the right size (overwritten bytes): an id past the vocabulary failed training
    # deep in an embedding lookup ("index out of range in self"), naming no file.
    largest = int(tokens.max())
    if largest >= info.vocab_size:
        raise ShardError(
            f"{path}: holds token id {largest}, past the tokenizer's {info.vocab_size} ids: the "
            f"file is damaged; delete {path.parent} and rerun to encode it again"
        )
    return tokens, info  # type: ignore[return-value]
