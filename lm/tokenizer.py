"""Tokenizers: one interface over SentencePiece (BPE or unigram) and a character vocabulary.

Every tokenizer is lossless on the text it is given (`decode(encode(x)) == x`): SentencePiece is
trained with identity normalization, whitespace kept as it is and byte fallback, and the
character tokenizer can fall back to UTF-8 bytes. Each has an end-of-text id that separates
documents in token shards, and a `digest` of its saved form: shards and checkpoints record it,
and loaders refuse a mismatch.

Training streams text (an iterator of documents, e.g. read batch by batch from Parquet); the
corpus is never held whole in memory. SentencePiece samples `input_sentence_size` lines of it,
shuffled, as its own trainer does.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from lm.config import TokenizerConfig

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<unk>"
SENTENCEPIECE_FILE = "tokenizer.model"
CHAR_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"


class TokenizerError(ValueError):
    """A tokenizer cannot be trained or loaded; the message says why and what to do."""


class Tokenizer(ABC):
    kind: str

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def eot_id(self) -> int: ...

    @abstractmethod
    def serialized(self) -> bytes:
        """The saved form: what `digest` hashes and `save` writes."""

    @abstractmethod
    def piece(self, token_id: int) -> str: ...

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.serialized()).hexdigest()

    @abstractmethod
    def _write_model(self, folder: Path) -> Path: ...

    def save(self, folder: Path) -> Path:
        """Write the model and a small description of it; returns the model file."""
        path = self._write_model(folder)
        meta = {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
            "digest": self.digest,
            "file": path.name,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return path


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_proto: bytes, kind: str, threads: int = 0, source: str = "model"):
        import sentencepiece as spm

        self.kind = kind
        self._proto = model_proto
        self._threads = threads or os.cpu_count() or 1
        try:
            self._processor = spm.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError:
            raise TokenizerError(
                f"{source}: not a valid SentencePiece model (corrupt or truncated); "
                "delete it and train the tokenizer again"
            ) from None
        self._eot = self._processor.piece_to_id(END_OF_TEXT)

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._processor.encode(texts, num_threads=self._threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self._processor.decode(list(ids))

    @property
    def vocab_size(self) -> int:
        return self._processor.vocab_size()

    @property
    def eot_id(self) -> int:
        return self._eot

    def piece(self, token_id: int) -> str:
        return self._processor.id_to_piece(token_id)

    def is_byte(self, token_id: int) -> bool:
        return self._processor.is_byte(token_id)

    def serialized(self) -> bytes:
        return self._proto

    def _write_model(self, folder: Path) -> Path:
        path = folder / SENTENCEPIECE_FILE
        path.write_bytes(self._proto)
        return path


class CharTokenizer(Tokenizer):
    """One id per character seen in training, plus end-of-text and a policy for the rest:
    `unk` (one unknown id), `bytes` (256 byte ids, lossless) or `error`."""

    kind = "char"

    def __init__(self, chars: list[str], unknown_chars: str = "unk"):
        self.chars = chars
        self.unknown_chars = unknown_chars
        self._ids = {c: i for i, c in enumerate(chars)}
        self._eot = len(chars)
        self._unk = len(chars) + 1 if unknown_chars == "unk" else None
        self._byte_base = len(chars) + 1 if unknown_chars == "bytes" else None

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        try:
            return [ids[c] for c in text]
        except KeyError:
            return self._encode_with_unknown(text)

    def _encode_with_unknown(self, text: str) -> list[int]:
        unseen = sorted({c for c in text if c not in self._ids})
        if self.unknown_chars == "error":
            raise TokenizerError(
                f"characters not in the vocabulary: {''.join(unseen)!r}; retrain with them, or "
                'set tokenizer.unknown_chars = "unk" or "bytes"'
            )
        out: list[int] = []
        for char in text:
            if char in self._ids:
                out.append(self._ids[char])
            elif self._unk is not None:
                out.append(self._unk)
            else:
                out.extend(self._byte_base + b for b in char.encode())
        return out

    def decode(self, ids: Iterable[int]) -> str:
        pieces: list[str] = []
        pending = bytearray()
        for token_id in ids:
            if self._byte_base is not None and token_id >= self._byte_base:
                pending.append(token_id - self._byte_base)
                continue
            if pending:
                pieces.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            pieces.append(self.piece(token_id) if token_id != self._eot else "")
        if pending:
            pieces.append(pending.decode("utf-8", errors="replace"))
        return "".join(pieces)

    @property
    def vocab_size(self) -> int:
        extra = 1 if self._unk is not None else 256 if self._byte_base is not None else 0
        return len(self.chars) + 1 + extra

    @property
    def eot_id(self) -> int:
        return self._eot

    def piece(self, token_id: int) -> str:
        if token_id < len(self.chars):
            return self.chars[token_id]
        if token_id == self._eot:
            return END_OF_TEXT
        if token_id == self._unk:
            return UNKNOWN
        return f"<0x{token_id - self._byte_base:02X}>"

    def serialized(self) -> bytes:
        document = {"kind": "char", "chars": self.chars, "unknown_chars": self.unknown_chars}
        return json.dumps(document, ensure_ascii=False, sort_keys=True).encode()

    def _write_model(self, folder: Path) -> Path:
        path = folder / CHAR_FILE
        path.write_bytes(self.serialized())
        return path


def train_tokenizer(documents: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    """Train on a stream of documents (the clean train split)."""
    if config.kind == "char":
        return _train_char(documents, config)
    return _train_sentencepiece(documents, config)


def _train_char(documents: Iterable[str], config: TokenizerConfig) -> CharTokenizer:
    counts: Counter[str] = Counter()
    for text in documents:
        counts.update(text)
    if not counts:
        raise TokenizerError("the training split is empty: there is no text to learn from")
    # Most frequent first, ties by code point: stable and readable ids.
    chars = sorted(counts, key=lambda c: (-counts[c], c))
    return CharTokenizer(chars, config.unknown_chars)


def _lines(documents: Iterable[str], counter: list[int]) -> Iterator[str]:
    for text in documents:
        counter[0] += 1
        for line in text.split("\n"):
            if line.strip():
                yield line


def _train_sentencepiece(documents: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    import sentencepiece as spm

    model = io.BytesIO()
    seen = [0]
    spm.set_random_generator_seed(config.seed)  # the sentence sampling is seeded
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(documents, seen),
            model_writer=model,
            model_type=config.kind,
            vocab_size=config.vocab_size,
            character_coverage=config.character_coverage,
            byte_fallback=config.byte_fallback,
            # Lossless: no normalization, whitespace kept, newline its own piece.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            user_defined_symbols=["\n", *config.user_defined_symbols],
            control_symbols=[END_OF_TEXT],
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            num_threads=config.threads or os.cpu_count() or 1,
            input_sentence_size=config.input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=config.max_sentence_length,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise _explain_training_error(error, config, seen[0]) from None
    return SentencePieceTokenizer(model.getvalue(), config.kind, config.threads)


def _explain_training_error(error: RuntimeError, config: TokenizerConfig, documents: int):
    message = str(error)
    if documents == 0 or "No sentences" in message or "empty" in message.lower():
        return TokenizerError("the training split is empty: there is no text to learn from")
    largest = re.search(r"value <= (\d+)", message)
    if largest:
        return TokenizerError(
            f"vocab_size {config.vocab_size} is more than this corpus supports for a "
            f"{config.kind} model; the largest possible is {largest.group(1)}"
        )
    required = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if required:
        return TokenizerError(
            f"vocab_size {config.vocab_size} is too small: the characters to cover (and the 256 "
            f"byte pieces, with byte_fallback) need at least {required.group(2)}"
        )
    return TokenizerError(f"SentencePiece training failed: {message}")


def load_tokenizer(folder: Path, threads: int = 0) -> Tokenizer:
    """Load what `Tokenizer.save` wrote into `folder`."""
    model_path, char_path = folder / SENTENCEPIECE_FILE, folder / CHAR_FILE
    if model_path.is_file():
        meta_path = folder / META_FILE
        kind = json.loads(meta_path.read_text())["kind"] if meta_path.is_file() else "bpe"
        return SentencePieceTokenizer(model_path.read_bytes(), kind, threads, str(model_path))
    if char_path.is_file():
        try:
            document = json.loads(char_path.read_text(encoding="utf-8"))
            return CharTokenizer(document["chars"], document["unknown_chars"])
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            raise TokenizerError(f"{char_path}: not a valid character tokenizer") from None
    raise TokenizerError(f"{folder}: no tokenizer here ({SENTENCEPIECE_FILE} or {CHAR_FILE})")
