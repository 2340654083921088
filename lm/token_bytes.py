"""How many UTF-8 bytes of text each token id stands for: the divisor of bits per byte (see
`lm.evaluate`'s docstring for the rules), and how an ordered split divides the bytes of a
document it cuts between the two shards. Kept apart from `lm.evaluate` so that the encode stage,
which needs only the table, neither imports torch nor reruns when the evaluation changes."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lm.tokenizer import SPACE_SYMBOL, UNKNOWN, SentencePieceTokenizer, Tokenizer

BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # a byte-fallback piece, and its byte
CHUNK = 1 << 20  # ids summed at a time


@dataclass(frozen=True)
class PieceBytes:
    lengths: np.ndarray  # (vocab,) int64
    starts_with_space: np.ndarray  # (vocab,) bool: pieces that can carry the dummy prefix
    eot_id: int
    dummy_prefix: int  # bytes the tokenizer adds to each document's first piece: 0 or 1
    unknown_id: int | None = None  # the id standing for text the tokenizer cannot spell

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> PieceBytes:
        sentencepiece = isinstance(tokenizer, SentencePieceTokenizer)
        lengths, spaced, unknown = [], [], None
        for token_id in range(tokenizer.vocab_size):
            piece = tokenizer.piece(token_id)
            if piece == UNKNOWN:
                unknown = token_id
            if token_id == tokenizer.eot_id or piece == UNKNOWN or BYTE_PIECE.fullmatch(piece):
                lengths.append(1)
                spaced.append(False)
            elif sentencepiece:
                lengths.append(tokenizer.text_bytes(token_id))
                spaced.append(piece.startswith(SPACE_SYMBOL))
            else:
                lengths.append(len(piece.encode()))
                spaced.append(False)
        table = cls(np.array(lengths, dtype=np.int64), np.array(spaced, dtype=bool),
                    tokenizer.eot_id, 0, unknown)  # fmt: skip
        if not sentencepiece:  # only SentencePiece adds a dummy prefix
            return table
        # A one-letter document measures the prefix: its tokens add up to 1 byte, or 2.
        measured = int(table.lengths[tokenizer.encode("a")].sum()) - 1
        return cls(table.lengths, table.starts_with_space, tokenizer.eot_id, int(measured == 1),
                   unknown)  # fmt: skip

    def of_document_start(self, ids: np.ndarray) -> int:
        """Bytes of the text that a document's first tokens `ids` stand for, counted as their
        scores count them (a cut through a character's byte pieces, or just before a `▁word`
        piece, does not decode to the bytes of that part of the text)."""
        if not len(ids):
            return 0
        # In chunks: one long document (an ordered split's usual input) is millions of ids.
        total = sum(int(self.lengths[ids[i : i + CHUNK]].sum()) for i in range(0, len(ids), CHUNK))
        return total - self.dummy_prefix * int(self.starts_with_space[int(ids[0])])
