"""Document quality measurements and rules, after Gopher (Rae et al. 2021, appendix A).

`measure_quality` computes the raw measurements (stored as corpus columns) and
`quality_flags` compares them with thresholds (one boolean column per rule). Keeping the two apart
is what makes cleaning non-destructive: thresholds can be changed and re-applied, even in SQL,
without measuring again.
"""

from __future__ import annotations

import re

import numpy as np

from lm.config import QualityConfig
from lm.text.word_hashes import ngram_hashes, word_ids

TOP_NGRAM_SIZES = (2, 3, 4)
DUPLICATE_NGRAM_SIZES = (5, 6, 7, 8, 9, 10)
_HAS_LETTER = re.compile(r"[^\W\d_]")
_BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "‣", "⁃", "◦", "- ", "* ")
_ELLIPSES = ("...", "…")

QUALITY_FLAGS = (
    "too_few_words",
    "too_many_words",
    "bad_mean_word_length",
    "too_many_symbols",
    "too_many_ellipsis_lines",
    "too_many_bullet_lines",
    "too_few_alpha_words",
    "repeated_lines",
    "repeated_ngrams",
)


def measure_quality(text: str) -> dict[str, float | int | list[float]]:
    words = text.split()
    n_words = len(words)
    lines = [line for line in text.split("\n") if line.strip()]
    measurements: dict[str, float | int | list[float]] = {"n_words": n_words}
    if n_words:
        ids = word_ids(words)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=n_words)
        total_chars = int(lengths.sum())
        symbols = text.count("#") + text.count("...") + text.count("…")
        alpha_words = sum(1 for w in words if w.isalpha() or _HAS_LETTER.search(w))
        measurements |= {
            "mean_word_length": total_chars / n_words,
            "symbol_word_ratio": symbols / n_words,
            "alpha_word_fraction": alpha_words / n_words,
            "top_ngram_char_fraction": [
                _top_ngram_share(ids, lengths, total_chars, n) for n in TOP_NGRAM_SIZES
            ],
            "duplicate_ngram_char_fraction": [
                _duplicate_ngram_share(ids, lengths, total_chars, n) for n in DUPLICATE_NGRAM_SIZES
            ],
        }
    else:
        measurements |= {
            "mean_word_length": 0.0,
            "symbol_word_ratio": 0.0,
            "alpha_word_fraction": 0.0,
            "top_ngram_char_fraction": [0.0] * len(TOP_NGRAM_SIZES),
            "duplicate_ngram_char_fraction": [0.0] * len(DUPLICATE_NGRAM_SIZES),
        }
    n_lines = max(len(lines), 1)
    stripped = [line.rstrip() for line in lines]
    measurements["ellipsis_line_fraction"] = sum(s.endswith(_ELLIPSES) for s in stripped) / n_lines
    measurements["bullet_line_fraction"] = (
        sum(line.lstrip().startswith(_BULLETS) for line in lines) / n_lines
    )
    line_share, line_char_share = _duplicate_share(lines)
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    paragraph_share, paragraph_char_share = _duplicate_share(paragraphs)
    measurements |= {
        "duplicate_line_fraction": line_share,
        "duplicate_line_char_fraction": line_char_share,
        "duplicate_paragraph_fraction": paragraph_share,
        "duplicate_paragraph_char_fraction": paragraph_char_share,
    }
    return measurements


def quality_flags(m: dict, rules: QualityConfig) -> dict[str, bool]:
    """One boolean per rule: True means the document fails it."""
    if not rules.enabled:
        return dict.fromkeys(QUALITY_FLAGS, False)
    return {
        "too_few_words": m["n_words"] < rules.min_words,
        "too_many_words": m["n_words"] > rules.max_words,
        "bad_mean_word_length": not (
            rules.min_mean_word_length <= m["mean_word_length"] <= rules.max_mean_word_length
        ),
        "too_many_symbols": m["symbol_word_ratio"] > rules.max_symbol_word_ratio,
        "too_many_ellipsis_lines": m["ellipsis_line_fraction"] > rules.max_ellipsis_line_fraction,
        "too_many_bullet_lines": m["bullet_line_fraction"] > rules.max_bullet_line_fraction,
        "too_few_alpha_words": m["alpha_word_fraction"] < rules.min_alpha_word_fraction,
        "repeated_lines": (
            m["duplicate_line_fraction"] > rules.max_duplicate_line_fraction
            or m["duplicate_line_char_fraction"] > rules.max_duplicate_line_char_fraction
            or m["duplicate_paragraph_fraction"] > rules.max_duplicate_paragraph_fraction
            or m["duplicate_paragraph_char_fraction"] > rules.max_duplicate_paragraph_char_fraction
        ),
        "repeated_ngrams": any(
            share > limit
            for share, limit in zip(
                m["top_ngram_char_fraction"], rules.max_top_ngram_char_fraction, strict=True
            )
        )
        or any(
            share > limit
            for share, limit in zip(
                m["duplicate_ngram_char_fraction"],
                rules.max_duplicate_ngram_char_fraction,
                strict=True,
            )
        ),
    }


def _duplicate_share(pieces: list[str]) -> tuple[float, float]:
    """Share of pieces (lines or paragraphs) that repeat an earlier one, by count and by chars."""
    if not pieces:
        return 0.0, 0.0
    seen: set[str] = set()
    duplicates = duplicate_chars = total_chars = 0
    for piece in pieces:
        total_chars += len(piece)
        if piece in seen:
            duplicates += 1
            duplicate_chars += len(piece)
        else:
            seen.add(piece)
    return duplicates / len(pieces), duplicate_chars / max(total_chars, 1)


def _ngram_char_lengths(lengths: np.ndarray, n: int) -> np.ndarray:
    cumulative = np.concatenate(([0], np.cumsum(lengths)))
    return cumulative[n:] - cumulative[:-n]


def _top_ngram_share(ids: np.ndarray, lengths: np.ndarray, total_chars: int, n: int) -> float:
    """Characters covered by the most frequent n-gram, as a share of all word characters."""
    hashes = ngram_hashes(ids, n)
    if len(hashes) == 0:
        return 0.0
    _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] < 2:
        return 0.0
    char_length = _ngram_char_lengths(lengths, n)[first[top]]
    return float(min(char_length * counts[top] / max(total_chars, 1), 1.0))


def _duplicate_ngram_share(ids: np.ndarray, lengths: np.ndarray, total_chars: int, n: int) -> float:
    """Characters inside any repeated occurrence of an n-gram (each character counted once)."""
    hashes = ngram_hashes(ids, n)
    if len(hashes) < 2:
        return 0.0
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    repeats = np.flatnonzero(first[inverse] != np.arange(len(hashes)))
    if len(repeats) == 0:
        return 0.0
    coverage = np.zeros(len(ids) + 1, dtype=np.int64)
    np.add.at(coverage, repeats, 1)
    np.add.at(coverage, repeats + n, -1)
    covered = np.cumsum(coverage[:-1]) > 0
    return float(lengths[covered].sum() / max(total_chars, 1))
