"""Token shards: one flat little-endian array of token ids per split, with a JSON sidecar.

The sidecar is self-describing (after llm.c's shard header): magic, version, dtype, token and
document counts, the UTF-8 byte count of the text the tokens encode (what bits per byte divides
by), and the digest of the tokenizer that made them. `open_shard` memory-maps the array, so a
shard of any size costs no memory to open, and refuses a shard whose tokenizer digest is not the
one the caller holds: token ids from another tokenizer are silent garbage to a model.
Documents are separated by the tokenizer's end-of-text id.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MAGIC = "lmforge-token-shard"
VERSION = 1


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


def shard_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


class ShardWriter:
    """Appends documents (lists of ids) to `path`, each followed by the end-of-text id."""

    def __init__(self, path: Path, tokenizer_digest: str, eot_id: int, vocab_size: int):
        self.path = path
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

    def close(self) -> ShardInfo:
        self._file.close()
        info = ShardInfo(
            MAGIC, VERSION, self.dtype.str, self.tokens, self.documents, self.text_bytes,
            self.tokenizer_digest, self.eot_id, self.vocab_size,
        )  # fmt: skip
        _sidecar(self.path).write_text(json.dumps(asdict(info), indent=2))
        return info


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
    return np.memmap(path, dtype=dtype, mode="r"), info
