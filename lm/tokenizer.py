"""Tokenizers: one interface over SentencePiece (BPE or unigram) and a character vocabulary.

Every tokenizer is lossless on the text it is given (`decode(encode(x)) == x`): SentencePiece is
trained with identity normalization, whitespace kept as it is and byte fallback, and a literal
"▁" (its space mark) escaped in the text (`escape_space_symbol`); the character tokenizer can
fall back to UTF-8 bytes. Each has an end-of-text id that separates documents in token shards,
and a `digest` of its saved form: shards and checkpoints record it, and loaders refuse a
mismatch.

SentencePiece BPE encodes word by word through a cache of each distinct word's ids, several times
faster than SentencePiece on whole documents and with exactly its ids (`SentencePieceTokenizer`
says why).

Training streams text (an iterator of documents, e.g. read batch by batch from Parquet); the
corpus is never held whole in memory. At most `input_sentence_size` lines of it are trained on:
a uniform sample drawn here, seeded by `tokenizer.seed` (`sample_lines`), since SentencePiece's
own sampling drew another sample in every process whatever its seed.
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
from itertools import chain, pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from lm.config import TokenizerConfig

if TYPE_CHECKING:
    import pyarrow as pa

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<unk>"
SENTENCEPIECE_FILE = "tokenizer.model"
CHAR_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
# Distinct words whose ids a BPE tokenizer keeps (some tens of MB); past it the cache starts over.
WORD_CACHE_SIZE = 200_000
# ... and their characters: text written without spaces (Chinese, Japanese) is one "word" a
# document, and 200,000 of them held hundreds of MB (h120: 27 MB of CJK text left 307 MB).
WORD_CACHE_CHARS = 10_000_000
# Words a BPE tokenizer hands SentencePiece in one input when it encodes words it has not cached
# (measured on the bundled corpus: 4 → 1.5x fewer seconds than 1; 16 or more, slower again).
WORDS_PER_CALL = 4
# Shorter text (a batch's, in all) goes to the processor: the word path's fixed cost, some tens of
# Arrow calls (about 0.3 ms), is more than the processor takes for it.
WORD_PATH_MIN_CHARS = 2000
# SentencePiece's escaped space: its normalizer writes one for every " ", so a literal one in the
# text would be a space to the model as well; `escape_space_symbol` keeps it from the model.
SPACE_SYMBOL = "\u2581"
# A literal "▁" reaches SentencePiece as this private-use character and "_", and the character
# itself as two of it (`escape_space_symbol` says why these).
SPACE_SYMBOL_ESCAPE = "\U000f0000"
# The bytes of text the escape character counts for in a piece: 2, so that its escape of "▁"
# (with the 1 of "_") counts "▁"'s 3 UTF-8 bytes, and its escape of itself its own 4.
ESCAPE_BYTES = 2
_ESCAPE_UTF8_BYTES = len(SPACE_SYMBOL_ESCAPE.encode())
_ESCAPED = re.compile(f"{SPACE_SYMBOL_ESCAPE}([_{SPACE_SYMBOL_ESCAPE}])")
# A word: a space, then any more spaces and what follows up to the next space; captured is the
# word less its first space (`SentencePieceTokenizer`). Escaped text has no "▁".
_WORD = re.compile(" ( *[^ ]*)")
# In words joined by "\0": a word that is empty or begins with a space.
_EMPTY_OR_SPACED_WORD = re.compile("(?:^|\x00)(?:[ \x00]|$)")
# In a piece, where a space is written "▁".
_SPACE_AFTER_NON_SPACE = re.compile("[^ \u2581][ \u2581]")
# ModelProto.SentencePiece.Type: what a piece is (sentencepiece_model.proto).
_NORMAL_PIECE = 1
# A NormalizerSpec (ModelProto field 3) with add_dummy_prefix (its field 3) false. Protobuf merges
# a repeated submessage into the earlier one, so appended to a model it turns the prefix off.
_NO_DUMMY_PREFIX = b"\x1a\x02\x18\x00"


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

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        """`ids` (a list, an array or a tensor) as Python ints, each an id of this vocabulary:
        a character tokenizer read -1 as its last character, SentencePiece said only "piece id
        is out of range", and a tensor was a TypeError."""
        values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        values = values if isinstance(values, list) else [values]  # a 0-d tensor: one id
        size = self.vocab_size
        if values and (min(values) < 0 or max(values) >= size):
            wrong = next(i for i in values if not 0 <= i < size)
            raise TokenizerError(
                f"token id {wrong} is outside the vocabulary of {self.vocab_size} "
                f"(ids 0 to {self.vocab_size - 1})"
            )
        return values

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def eot_id(self) -> int: ...

    @property
    @abstractmethod
    def unknown_id(self) -> int | None:
        """The id of text the vocabulary cannot spell (`<unk>`), None where it has none: a
        generation never samples it, which stands for no text (decoded " ⁇ ")."""

    @abstractmethod
    def serialized(self) -> bytes:
        """The saved form: what `digest` hashes and `save` writes."""

    @abstractmethod
    def piece(self, token_id: int) -> str: ...

    @abstractmethod
    def is_learned(self, token_id: int) -> bool:
        """Whether the piece was learned from the training text: not a control piece
        (end-of-text), the unknown piece, a byte piece or a symbol the configuration added."""

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.serialized()).hexdigest()

    @abstractmethod
    def _write_model(self, folder: Path) -> Path: ...

    def save(self, folder: Path | str) -> Path:
        """Write the model and a small description of it into `folder` (created if missing);
        returns the model file."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
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
    """A SentencePiece model, BPE or unigram, as `train_tokenizer` makes them.

    BPE encodes word by word, with the ids of each distinct word kept (up to `WORD_CACHE_SIZE`
    words): a frequent word costs a lookup instead of a run of merges, the words missing from the
    cache are encoded together on all threads, and the cutting, lookups and gathering of a batch
    run in Arrow, not per word in Python. The ids are exactly the processor's, because:

    - The normalizer (identity, whitespace kept) only writes each " " as "▁" and puts one "▁"
      before the text (the dummy prefix). The text has no "▁" of its own (escaped), so every
      "▁" is a space.
    - Cut that at every "▁" that follows something other than "▁" (SentencePiece's own word
      split; with whitespace-only pieces allowed, a run of spaces stays with the word after it).
      No piece of the vocabulary has a space after another character (training with
      split_by_whitespace makes it so for learned pieces; the check covers user-defined symbols,
      which are matched first), so no piece spans a cut.
    - BPE merges the best-scoring adjacent pair anywhere, ties to the leftmost. No merge spans a
      cut, so each word gets the merges it gets alone, in the same order. Byte fallback works
      symbol by symbol; a run of unknown pieces is merged into one, but every word begins with
      "▁", a known piece.

    So a text's ids are its words' ids in order, each word (with its leading spaces; the first
    word's first space is the dummy prefix) encoded alone by a processor of the same model without
    the dummy prefix. `_encodes_words_apart` checks these premises on the model; one that fails
    them uses the processor as it is. So does unigram: its Viterbi search adds float32 scores along
    the whole text, and at a long document's running total the rounding can prefer a segmentation
    that a word alone scores (about 1e-3) lower, so word-wise ids differ on some long documents.

    A model with the `SPACE_SYMBOL_ESCAPE` piece (every model `train_tokenizer` makes now) was
    trained on escaped text, so text is escaped before the processor sees it and unescaped after
    it decodes. A model from before has no such piece and reads text as it was trained, a literal
    "▁" as a space: its ids, and the shards and checkpoints made with them, stay valid.
    `piece` gives SentencePiece's own piece strings, where "▁" is a space (so "▁said" is still
    the whole word "said" to word2vec) and the escape character a piece of its own.
    """

    def __init__(self, model_proto: bytes, kind: str, threads: int = 0, source: str = "model"):
        import numpy as np
        import pyarrow as pa
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
        self._escapes = self._has_piece(SPACE_SYMBOL_ESCAPE)
        self._learned = _learned_pieces(model_proto)
        self._word_processor = None
        # Each cached word's row in a list array of ids. Replaced, never changed in place, so that
        # a batch in another thread keeps a consistent pair.
        self._word_cache = ({}, pa.array([], pa.large_list(pa.int32())), 0)  # and its chars
        if _encodes_words_apart(model_proto, self._processor):
            self._word_processor = spm.SentencePieceProcessor(
                model_proto=model_proto + _NO_DUMMY_PREFIX
            )
            pieces = self._processor.id_to_piece(list(range(self._processor.vocab_size())))
            self._word_start = np.array([piece.startswith(SPACE_SYMBOL) for piece in pieces])

    def _has_piece(self, piece: str) -> bool:
        return not self._processor.is_unknown(self._processor.piece_to_id(piece))

    def encode(self, text: str) -> list[int]:
        if self._word_processor is None or len(text) < WORD_PATH_MIN_CHARS:
            return self._processor.encode(escape_space_symbol(text) if self._escapes else text)
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._escapes:
            texts = list(map(escape_space_symbol, texts))
        if self._word_processor is None or sum(map(len, texts)) < WORD_PATH_MIN_CHARS:
            return self._processor.encode(texts, num_threads=self._threads)
        import pyarrow.compute as pc

        words = _words_of(texts)
        distinct = pc.dictionary_encode(words.values)
        ids = self._ids_of(distinct.dictionary.to_pylist()).take(distinct.indices)
        tokens = ids.values.to_numpy()
        bounds = ids.offsets.to_numpy()[words.offsets.to_numpy()]
        return [tokens[start:end].tolist() for start, end in pairwise(bounds)]

    def _ids_of(self, words: list[str]) -> pa.LargeListArray:
        """The ids of each of `words` (distinct), as an Arrow list array, from the cache; the
        words it lacks are encoded and added."""
        import pyarrow as pa

        rows, ids, chars = self._word_cache
        found = list(map(rows.get, words))
        if None in found:
            missing = [word for word, row in zip(words, found, strict=True) if row is None]
            added = sum(map(len, missing))
            if len(rows) + len(missing) > WORD_CACHE_SIZE or chars + added > WORD_CACHE_CHARS:
                rows, ids, missing, chars, added = {}, ids[:0], words, 0, sum(map(len, words))
            new_rows = range(len(ids), len(ids) + len(missing))
            rows = rows | dict(zip(missing, new_rows, strict=True))
            ids = pa.concat_arrays([ids, self._encode_words(missing)])
            self._word_cache = rows, ids, chars + added
            found = list(map(rows.__getitem__, words))
        return ids.take(pa.array(found, pa.int64()))

    def _encode_words(self, words: list[str]) -> pa.LargeListArray:
        """The ids of each of `words`, encoded `WORDS_PER_CALL` at a time: "▁w1▁w2▁w3▁w4" is
        one input to the processor, and its ids are the words' ids in order (the premises the
        word cache rests on), so the processor's cost per input is paid a quarter as often.
        Each word's ids then begin with the one id whose piece begins with "▁", as no word
        has another "▁" to begin one, unless it is empty or begins with spaces (text with runs
        of spaces): in a batch that has such words, or where the count of such ids is not the
        count of words all the same, every word is encoded alone instead."""
        import numpy as np
        import pyarrow as pa

        alone = [" " + word for word in words]
        if not _EMPTY_OR_SPACED_WORD.search("\x00".join(words)):
            size = WORDS_PER_CALL
            groups = ["".join(alone[at : at + size]) for at in range(0, len(alone), size)]
            encoded = self._word_processor.encode(groups, num_threads=self._threads)
            flat = np.fromiter(chain.from_iterable(encoded), np.int32)
            starts = np.flatnonzero(self._word_start[flat])
            if len(starts) == len(words):
                offsets = pa.array(np.append(starts, len(flat)), pa.int64())
                return pa.LargeListArray.from_arrays(offsets, pa.array(flat, pa.int32()))
        encoded = self._word_processor.encode(alone, num_threads=self._threads)
        return pa.array(encoded, pa.large_list(pa.int32()))

    def decode(self, ids: Iterable[int]) -> str:
        text = self._processor.decode(self._checked_ids(ids))
        return unescape_space_symbol(text) if self._escapes else text

    @property
    def vocab_size(self) -> int:
        return self._processor.vocab_size()

    @property
    def eot_id(self) -> int:
        return self._eot

    @property
    def unknown_id(self) -> int | None:
        unknown = self._processor.unk_id()
        return unknown if 0 <= unknown < self.vocab_size else None

    def piece(self, token_id: int) -> str:
        return self._processor.id_to_piece(self._checked_ids([token_id])[0])

    def is_byte(self, token_id: int) -> bool:
        return self._processor.is_byte(token_id)

    def is_learned(self, token_id: int) -> bool:
        return bool(self._learned[self._checked_ids([token_id])[0]])

    def text_bytes(self, token_id: int) -> int:
        """The UTF-8 bytes of text a piece stands for, when it stands for text of its own (not
        a control, unknown or byte piece): "▁" is a space, and the escape character counts
        `ESCAPE_BYTES`, so that the pieces of a document add up to its bytes."""
        piece = self.piece(token_id)
        size = len(piece.replace(SPACE_SYMBOL, " ").encode())
        if self._escapes:
            size -= piece.count(SPACE_SYMBOL_ESCAPE) * (_ESCAPE_UTF8_BYTES - ESCAPE_BYTES)
        return size

    def serialized(self) -> bytes:
        return self._proto

    def _write_model(self, folder: Path) -> Path:
        path = folder / SENTENCEPIECE_FILE
        path.write_bytes(self._proto)
        return path


def escape_space_symbol(text: str) -> str:
    """`text` as SentencePiece must see it: with no literal "▁", which its normalizer would make
    a space. "▁" becomes `SPACE_SYMBOL_ESCAPE` + "_", and the escape character itself two of it,
    so that every escaped text has one original (`unescape_space_symbol`).

    Why these: the tokens of a document must add up to its UTF-8 bytes (bits per byte), one
    count per piece whatever surrounds it. The escape character is a configured symbol, always a
    piece of its own, so it may count any number of bytes (`ESCAPE_BYTES`); every other piece
    counts its own bytes. A 4-byte character counting 2 makes both escapes exact: 2 + 1 = 3 for
    "▁", 2 + 2 = 4 for itself. (No escape lets every piece count its own UTF-8 bytes, byte
    pieces included: there are fewer texts of n bytes without "▁" than with it, so some text
    would have to escape to more bytes.) A private-use character of plane 15 is as rare in real
    text as any, so escapes cost next to nothing."""
    if SPACE_SYMBOL not in text and SPACE_SYMBOL_ESCAPE not in text:
        return text
    doubled = text.replace(SPACE_SYMBOL_ESCAPE, SPACE_SYMBOL_ESCAPE * 2)
    return doubled.replace(SPACE_SYMBOL, SPACE_SYMBOL_ESCAPE + "_")


def unescape_space_symbol(text: str) -> str:
    """The text `escape_space_symbol` escaped. An escape character that begins no escape (ids a
    model generated) is kept as it is."""
    if SPACE_SYMBOL_ESCAPE not in text:
        return text
    return _ESCAPED.sub(lambda m: SPACE_SYMBOL if m[1] == "_" else SPACE_SYMBOL_ESCAPE, text)


def _words_of(texts: list[str]) -> pa.ListArray:
    """Each (escaped) text's words that BPE encodes apart, as an Arrow list array; each word less
    its first space (for the first word, the dummy prefix)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if any(not text or text[0] == " " or "  " in text for text in texts):
        return pa.array([_words(text) for text in texts], pa.list_(pa.large_string()))
    return pc.split_pattern(pa.array(texts, pa.large_string()), " ")


def _words(text: str) -> list[str]:
    """`_words_of` for one text. `split(" ")` cuts the same way, faster, while no word has two
    spaces."""
    if not text:
        return []
    if text[0] == " " or "  " in text:
        return _WORD.findall(" " + text)
    return text.split(" ")


def _encodes_words_apart(model_proto: bytes, processor) -> bool:
    """Whether the model meets the premises under which BPE ids are its words' ids (see
    `SentencePieceTokenizer`). Field numbers are sentencepiece_model.proto's; read here without
    the protobuf package, which sentencepiece does not require."""
    fields = list(_proto_fields(model_proto))
    # Repeated submessages merge, as their concatenation does.
    trainer = dict(_proto_fields(b"".join(v for number, v in fields if number == 2)))
    normalizer = dict(_proto_fields(b"".join(v for number, v in fields if number == 3)))
    pieces = processor.id_to_piece(list(range(processor.vocab_size())))
    return bool(
        trainer.get(3, 1) == 2  # model_type: BPE (the default is unigram)
        and not trainer.get(24, 0)  # treat_whitespace_as_suffix
        and normalizer.get(3, 1)  # add_dummy_prefix
        and not normalizer.get(4, 1)  # remove_extra_whitespaces
        and normalizer.get(5, 1)  # escape_whitespaces
        and not normalizer.get(2)  # precompiled_charsmap: none, so identity normalization
        and not any(_SPACE_AFTER_NON_SPACE.search(piece) for piece in pieces)
        and not processor.is_unknown(processor.piece_to_id(SPACE_SYMBOL))
    )


def _learned_pieces(model_proto: bytes):
    """Per id, whether its piece is a normal one, learned from the text (ModelProto field 1, the
    pieces; a piece's field 3 its type, NORMAL when absent), as a numpy array."""
    import numpy as np

    pieces = (value for number, value in _proto_fields(model_proto) if number == 1)
    types = [dict(_proto_fields(piece)).get(3, _NORMAL_PIECE) for piece in pieces]
    return np.array(types) == _NORMAL_PIECE


def _proto_fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """The (field number, value) pairs of a serialized protobuf message: varints as ints, strings
    and submessages as bytes. Fixed-width fields (floats) are skipped."""
    position = 0
    while position < len(message):
        key, position = _varint(message, position)
        if key & 7 == 0:
            value, position = _varint(message, position)
        elif key & 7 == 2:
            size, position = _varint(message, position)
            value, position = message[position : position + size], position + size
        else:
            position += 8 if key & 7 == 1 else 4
            continue
        yield key >> 3, value


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


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
                f"characters not in the vocabulary: {''.join(unseen)!r} (a char tokenizer's "
                "vocabulary is the characters of the text it was trained on, the train split); "
                'set tokenizer.unknown_chars = "unk" or "bytes", or give the train split text '
                "that has them"
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
        for token_id in self._checked_ids(ids):
            if self._byte_base is not None and token_id >= self._byte_base:
                pending.append(token_id - self._byte_base)
                continue
            if pending:
                pieces.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            pieces.append(self._piece(token_id) if token_id != self._eot else "")
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

    @property
    def unknown_id(self) -> int | None:
        return self._unk

    def is_learned(self, token_id: int) -> bool:
        return self._checked_ids([token_id])[0] < len(self.chars)

    def piece(self, token_id: int) -> str:
        return self._piece(self._checked_ids([token_id])[0])

    def _piece(self, token_id: int) -> str:
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
    if isinstance(documents, str):  # iterated, it is one document per character
        raise TypeError(
            "train_tokenizer takes documents, an iterable of texts, not one text: a text given "
            "whole was read as one document per character; pass [text]"
        )
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


def _lines(documents: Iterable[str], counter: list[int], limit: int) -> Iterator[str]:
    """The non-blank lines of `documents`, escaped as the model will see text, each in parts
    of at most `limit` UTF-8 bytes: SentencePiece drops a longer sentence without a word (its
    warning is below the log level), so a corpus of long paragraphs trained on a fraction of
    its text, or on none ("the training split is empty")."""
    for text in documents:
        counter[0] += 1
        for line in escape_space_symbol(text).split("\n"):
            if line.strip():
                yield from _parts_of_at_most(line, limit)


def _parts_of_at_most(line: str, limit: int) -> Iterator[str]:
    """`line` in consecutive parts of at most `limit` UTF-8 bytes, each cut at the last space
    within the limit (which is dropped: SentencePiece gives each part the leading word mark
    the space stood for), or at a character boundary where the limit holds no space."""
    data = line.encode()
    start = 0
    while len(data) - start > limit:
        end = start + limit
        while (data[end] & 0xC0) == 0x80:  # not inside a character's bytes
            end -= 1
        if end == start:  # one character longer than the limit: a part of its own
            end = start + 1
            while end < len(data) and (data[end] & 0xC0) == 0x80:
                end += 1
        space = data.rfind(b" ", start + 1, end + 1)
        if space > start:
            part, start = data[start:space], space + 1
        else:
            part, start = data[start:end], end
        if part.strip():
            yield part.decode()
    if data[start:].strip():
        yield data[start:].decode()


# The threads SentencePiece trains with: always its own default, whatever the machine or
# `tokenizer.threads` (which sets encoding's). The trainer writes the count into the model, and
# a unigram model's scores depend on it (its EM sums each thread's share): with one thread per
# core, the same corpus and settings made a different tokenizer, and digest, on another
# machine, so every later stage ran again there and retrain could not rebuild a champion's.
TRAINING_THREADS = 16


def sample_lines(lines: Iterable[str], size: int, seed: int) -> Iterator[str]:
    """A uniform sample of `size` of `lines` (all of them when there are no more; 0: no limit),
    in their order, drawn by reservoir sampling with a generator seeded by `seed`: the same
    lines in every process. SentencePiece's own sampling (`input_sentence_size`) drew another
    sample in each process whatever `set_random_generator_seed` said, so a corpus of more lines
    than that made a different tokenizer, and digest, on every machine and in every fresh
    workspace. Holds `size` lines (and an index each) while it reads."""
    if size == 0:
        yield from lines
        return
    import random
    from array import array

    generator = random.Random(seed)
    kept: list[str] = []
    positions = array("q")  # each kept line's index in `lines`
    for index, line in enumerate(lines):
        if index < size:
            kept.append(line)
            positions.append(index)
            continue
        slot = generator.randrange(index + 1)
        if slot < size:
            kept[slot], positions[slot] = line, index
    for slot in sorted(range(len(kept)), key=positions.__getitem__):
        line, kept[slot] = kept[slot], ""  # each line let go once handed over
        yield line


def _train_sentencepiece(documents: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    import sentencepiece as spm

    model = io.BytesIO()
    seen = [0]
    spm.set_random_generator_seed(config.seed)
    lines = _lines(documents, seen, config.max_sentence_length)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sample_lines(lines, config.input_sentence_size, config.seed),
            model_writer=model,
            model_type=config.kind,
            vocab_size=config.vocab_size,
            character_coverage=config.character_coverage,
            byte_fallback=config.byte_fallback,
            # Lossless: no normalization, whitespace kept, newline its own piece.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            # The escape is a symbol, so always a piece (it counts its own bytes) and its
            # presence tells a loaded model to escape (`SentencePieceTokenizer`).
            user_defined_symbols=["\n", SPACE_SYMBOL_ESCAPE, *config.user_defined_symbols],
            control_symbols=[END_OF_TEXT],
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            num_threads=TRAINING_THREADS,
            # Sampled above, by `tokenizer.seed`: SentencePiece gets at most this many lines
            # and keeps them all, in order. (Set as before, since the model file records it: a
            # tokenizer of a corpus that needs no sample keeps its digest.)
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
            f"tokenizer.vocab_size = {config.vocab_size} is more than this corpus supports for a "
            f"{config.kind} model; the largest possible is {largest.group(1)}"
        )
    required = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if required:
        return TokenizerError(
            f"tokenizer.vocab_size = {config.vocab_size} is too small: the characters to cover "
            f"(and the 256 byte pieces, with byte_fallback) need at least {required.group(2)}"
        )
    return TokenizerError(f"SentencePiece training failed: {message}")


ENCODE_BATCH_CHARS = 8_000_000  # documents encoded together, at most (a longer one alone)


def encoded_documents(
    tokenizer: Tokenizer, texts: list[str], splits: list[str]
) -> Iterator[list[int]]:
    """The ids of each of `texts`, in order, encoded a few MB of text at a time: encoding holds
    about 20 times the text it is given (its words, then the ids as Python integers), and a
    batch of 256 book-sized documents given whole took gigabytes."""
    start = 0
    while start < len(texts):
        stop, chars = start + 1, len(texts[start])
        while stop < len(texts) and chars + len(texts[stop]) <= ENCODE_BATCH_CHARS:
            chars += len(texts[stop])
            stop += 1
        yield from encode_documents_naming_refusals(tokenizer, texts[start:stop],
                                                    splits[start:stop])  # fmt: skip
        start = stop


def encode_documents_naming_refusals(
    tokenizer: Tokenizer, texts: list[str], splits: list[str]
) -> list[list[int]]:
    """`encode_batch` of documents of the given splits; a document the tokenizer refuses (a
    character a char vocabulary lacks, under `unknown_chars = "error"`) is named by its split
    and first characters, so the user can find it."""
    try:
        return tokenizer.encode_batch(texts)
    except TokenizerError as error:
        for text, split in zip(texts, splits, strict=True):
            try:
                tokenizer.encode(text)
            except TokenizerError:
                raise TokenizerError(
                    f"{error} (first met in a {split} document starting {text[:40]!r})"
                ) from None
        raise


def tokenizer_file(folder: Path | str) -> Path:
    """The model file `Tokenizer.save` wrote into `folder`, the one `load_tokenizer` reads:
    SentencePiece's, else the character vocabulary."""
    folder = Path(folder)
    for path in (folder / SENTENCEPIECE_FILE, folder / CHAR_FILE):
        if path.is_file():
            return path
    raise TokenizerError(f"{folder}: no tokenizer here ({SENTENCEPIECE_FILE} or {CHAR_FILE})")


def load_tokenizer(folder: Path | str, threads: int = 0) -> Tokenizer:
    """Load what `Tokenizer.save` wrote into `folder`."""
    folder = Path(folder)
    path = tokenizer_file(folder)
    if path.name == SENTENCEPIECE_FILE:
        meta_path = folder / META_FILE
        kind = _sentencepiece_kind(meta_path) if meta_path.is_file() else "bpe"
        return SentencePieceTokenizer(path.read_bytes(), kind, threads, str(path))
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        chars, unknown = document["chars"], document["unknown_chars"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise TokenizerError(f"{path}: not a valid character tokenizer") from None
    if not (isinstance(chars, list) and all(isinstance(c, str) and len(c) == 1 for c in chars)
            and unknown in ("unk", "bytes", "error")):  # fmt: skip
        raise TokenizerError(f"{path}: not a valid character tokenizer")
    return CharTokenizer(chars, unknown)


def _sentencepiece_kind(meta_path: Path) -> str:
    """The kind ("bpe" or "unigram") the tokenizer's metadata file records."""
    try:
        kind = json.loads(meta_path.read_text(encoding="utf-8"))["kind"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        kind = None
    if kind not in ("bpe", "unigram"):
        raise TokenizerError(
            f'{meta_path}: not valid tokenizer metadata (a JSON object whose "kind" is '
            '"bpe" or "unigram"); put back the file the tokenizer was saved with'
        )
    return kind
