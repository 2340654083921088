"""How a tokenizer does on held-out text: bytes per token, vocabulary use, byte-fallback rate,
the rate of `<unk>` (text it cannot spell, which makes bytes per token look better), and its
longest learned pieces (not end-of-text, `<unk>`, `<0xNN>` or configured symbols, which
say nothing of what it learned). The numbers `lmforge tokenizers compare` puts side by side."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from lm.tokenizer import UNKNOWN, Tokenizer, encoded_documents

LONGEST_PIECES = 10
logger = logging.getLogger(__name__)


def tokenizer_statistics(
    tokenizer: Tokenizer, texts: Iterable[list[str]], split: str = "val"
) -> dict:
    """`texts` is a stream of batches of documents of `split` (typically val). Over no text the
    ratios are None: no measurement, not a tokenizer that used none of its vocabulary. A
    document the tokenizer refuses (`unknown_chars = "error"`) is named by its split and first
    characters, as the encode stage names it."""
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)  # the tokens of each id
    text_bytes = documents = 0
    for batch in texts:
        documents += len(batch)
        text_bytes += sum(len(text.encode()) for text in batch)
        encoded = encoded_documents(tokenizer, batch, [split] * len(batch))
        ids = [np.asarray(each, dtype=np.int64) for each in encoded]
        counts += np.bincount(np.concatenate([np.empty(0, np.int64), *ids]),
                              minlength=tokenizer.vocab_size)  # fmt: skip
    tokens = int(counts.sum())
    if not tokens:
        logger.warning("the tokenizer's statistics (bytes per token, vocabulary use, byte "
                       "fallback) are not measured: the val split holds no text")  # fmt: skip
    pieces = [tokenizer.piece(i) for i in range(tokenizer.vocab_size)]
    byte_tokens = int(counts[_byte_piece_ids(tokenizer)].sum())
    unknown_tokens = int(sum(counts[i] for i, piece in enumerate(pieces) if piece == UNKNOWN))
    learned = [i for i in range(len(pieces)) if tokenizer.is_learned(i)]
    longest = sorted(learned, key=lambda i: (-len(pieces[i]), i))[:LONGEST_PIECES]
    return {
        "documents": documents,
        "tokens": tokens,
        "text_bytes": text_bytes,
        "bytes_per_token": text_bytes / tokens if tokens else None,
        "vocab_size": tokenizer.vocab_size,
        "vocab_used_fraction": float((counts > 0).mean()) if tokens else None,
        "byte_fallback_rate": byte_tokens / tokens if tokens else None,
        "unknown_rate": unknown_tokens / tokens if tokens else None,
        "longest_pieces": [pieces[i] for i in longest],
    }


def _byte_piece_ids(tokenizer: Tokenizer) -> np.ndarray:
    is_byte = getattr(tokenizer, "is_byte", None)
    if is_byte is not None:
        return np.array([i for i in range(tokenizer.vocab_size) if is_byte(i)], dtype=np.int64)
    return np.array(
        [i for i in range(tokenizer.vocab_size) if tokenizer.piece(i).startswith("<0x")],
        dtype=np.int64,
    )
