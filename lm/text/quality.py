"""Document quality measurements and rules, after Gopher (Rae et al. 2021, appendix A).

`measure_quality_batch` computes the raw measurements (stored as corpus columns) and
`quality_flags` compares them with thresholds (one boolean column per rule). Keeping the two apart
is what makes cleaning non-destructive: thresholds can be changed and re-applied, even in SQL,
without measuring again.

The word measurements are computed for a whole batch of documents at once, from its words cut
and hashed in numpy (`BatchWords`): all words of the batch in one array, n-gram hashes salted
with the document's index so that windows of different documents never match, and one sort per
n-gram size for the batch. Per-document numpy calls would cost more in call overhead than in
arithmetic.
"""

from __future__ import annotations

import re

import numpy as np

from lm.config import QualityConfig
from lm.text.word_hashes import BatchWords

TOP_NGRAM_SIZES = (2, 3, 4)
DUPLICATE_NGRAM_SIZES = (5, 6, 7, 8, 9, 10)
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_DOC_SALT = np.uint64(0xC2B2AE3D27D4EB4F)
_BULLETS = "•●○■□▪▫‣⁃◦"
_BULLET_LINE = re.compile(rf"^[ \t]*(?:[{_BULLETS}]|[-*] )", re.MULTILINE)
_ELLIPSIS_LINE = re.compile(r"(?:\.\.\.|…)[ \t]*$", re.MULTILINE)

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


def measure_quality(text: str) -> dict:
    return measure_quality_batch([text])[0]


def measure_quality_batch(texts: list[str], words: BatchWords | None = None) -> list[dict]:
    """Measurements for each text; `words` is the batch's `BatchWords` when the caller has it."""
    words = words or BatchWords.of(texts)
    top, duplicate, word_chars = _ngram_shares(words)
    letters = words.doc_of_word[words.has_letter]
    with_letter = np.bincount(letters, minlength=len(texts)).tolist()
    return [
        _document_measurements(text, n_words, chars, letters) | {
            "top_ngram_char_fraction": top[index].tolist(),
            "duplicate_ngram_char_fraction": duplicate[index].tolist(),
        }
        for index, (text, n_words, chars, letters) in enumerate(
            zip(texts, words.counts.tolist(), word_chars, with_letter, strict=True)
        )
    ]  # fmt: skip


def _document_measurements(text: str, n_words: int, word_chars: int, with_letter: int) -> dict:
    """The per-document measurements; `word_chars` is the total length of its words and
    `with_letter` how many of them have a letter."""
    # `filter(str.strip, ...)`: the lines that are not blank, without a Python step per line.
    lines = list(filter(str.strip, text.split("\n")))
    n_lines = max(len(lines), 1)
    line_share, line_char_share = _duplicate_share(lines)
    paragraphs = list(filter(str.strip, text.split("\n\n"))) if "\n\n" in text else [text]
    paragraph_share, paragraph_char_share = _duplicate_share(paragraphs)
    ellipses = text.count("...") + text.count("…")
    symbols = text.count("#") + ellipses
    return {
        "n_words": n_words,
        "mean_word_length": word_chars / n_words if n_words else 0.0,
        "symbol_word_ratio": symbols / n_words if n_words else 0.0,
        "alpha_word_fraction": with_letter / n_words if n_words else 0.0,
        # Each regex scan only when its line can occur: most documents have no ellipsis, and
        # no bullet character or "- " / "* " (a dash or star bullet needs one).
        "ellipsis_line_fraction": len(_ELLIPSIS_LINE.findall(text)) / n_lines if ellipses else 0.0,
        "bullet_line_fraction": (
            len(_BULLET_LINE.findall(text)) / n_lines if _may_have_bullets(text) else 0.0
        ),
        "duplicate_line_fraction": line_share,
        "duplicate_line_char_fraction": line_char_share,
        "duplicate_paragraph_fraction": paragraph_share,
        "duplicate_paragraph_char_fraction": paragraph_char_share,
    }


def _may_have_bullets(text: str) -> bool:
    """False when no line can be a bullet line; `in` is several times cheaper than a scan."""
    return (
        "- " in text
        or "* " in text
        or (not text.isascii() and any(bullet in text for bullet in _BULLETS))
    )


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
        "repeated_ngrams": _any_above(
            m["top_ngram_char_fraction"], rules.max_top_ngram_char_fraction
        )
        or _any_above(m["duplicate_ngram_char_fraction"], rules.max_duplicate_ngram_char_fraction),
    }


def _any_above(shares: list[float], limits: list[float]) -> bool:
    return any(share > limit for share, limit in zip(shares, limits, strict=True))


def _duplicate_share(pieces: list[str]) -> tuple[float, float]:
    """Share of pieces (lines or paragraphs) that repeat an earlier one, by count and by chars."""
    if not pieces:
        return 0.0, 0.0
    if len(set(pieces)) == len(pieces):  # most documents repeat no line
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


def _ngram_shares(words: BatchWords) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per document: the character share of its most frequent 2/3/4-gram, of all repeated
    occurrences of 5- to 10-grams (each character counted once), and the total length of its
    words.

    n-gram hashes grow one word at a time, and from n = 3 on only windows whose (n-1)-gram
    occurs more than once are kept: an n-gram can only repeat where its prefix does, and both
    rules only look at repeated n-grams. In ordinary prose few windows survive, so only the
    bigram pass sorts every word of the batch."""
    counts, lengths, ids = words.counts, words.lengths, words.ids
    n_docs = len(counts)
    top = np.zeros((n_docs, len(TOP_NGRAM_SIZES)))
    duplicate = np.zeros((n_docs, len(DUPLICATE_NGRAM_SIZES)))
    # Characters of each document's words (summed here, where every word's length is known).
    cumulative_chars = np.concatenate(([0], np.cumsum(lengths)))
    doc_ends = np.cumsum(counts)
    word_chars = (cumulative_chars[doc_ends] - cumulative_chars[doc_ends - counts]).tolist()
    if len(ids) < 2:
        return top, duplicate, word_chars
    doc_of_word = words.doc_of_word
    doc_chars = np.maximum(np.bincount(doc_of_word, weights=lengths, minlength=n_docs), 1)
    salt = doc_of_word.astype(np.uint64) * _DOC_SALT
    starts = np.arange(len(ids), dtype=np.int64)
    hashes = ids.copy()
    for n in range(2, max(DUPLICATE_NGRAM_SIZES) + 1):
        # Extend each window by one word, dropping windows that would leave their document.
        ends = starts + n - 1
        inside = ends < len(ids)
        inside[inside] = doc_of_word[ends[inside]] == doc_of_word[starts[inside]]
        starts, hashes = starts[inside], hashes[inside]
        if len(starts) < 2:
            break
        with np.errstate(over="ignore"):
            hashes = hashes * _MULTIPLIER + ids[starts + n - 1]
        groups = _Groups(hashes ^ salt[starts])
        if n in TOP_NGRAM_SIZES:
            column = TOP_NGRAM_SIZES.index(n)
            top[:, column] = _top_share(starts, groups, doc_of_word, cumulative_chars, doc_chars, n)
        if n in DUPLICATE_NGRAM_SIZES:
            column = DUPLICATE_NGRAM_SIZES.index(n)
            duplicate[:, column] = _repeated_share(
                starts, groups, doc_of_word, lengths, doc_chars, n
            )
        repeated = groups.window_count() >= 2
        starts, hashes = starts[repeated], hashes[repeated]
    return top, duplicate, word_chars


class _Groups:
    """Windows grouped by equal key: per group its first window and size; per window (computed
    on demand) its group's size and whether it repeats an earlier window."""

    def __init__(self, keys: np.ndarray):
        self._order = np.argsort(keys)
        sorted_keys = keys[self._order]
        boundaries = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
        self.first = np.minimum.reduceat(self._order, boundaries)  # first window of each group
        self.size = np.diff(np.append(boundaries, len(keys)))
        self._group: np.ndarray | None = None

    def _group_of_window(self) -> np.ndarray:
        if self._group is None:
            self._group = np.empty(len(self._order), dtype=np.int64)
            self._group[self._order] = np.repeat(np.arange(len(self.size)), self.size)
        return self._group

    def window_count(self) -> np.ndarray:
        return self.size[self._group_of_window()]

    def is_repeat(self) -> np.ndarray:
        return self.first[self._group_of_window()] != np.arange(len(self._order))


def _top_share(starts, groups: _Groups, doc_of_word, cumulative_chars, doc_chars, n) -> np.ndarray:
    share = np.zeros(len(doc_chars))
    repeated = np.flatnonzero(groups.size >= 2)
    if len(repeated) == 0:
        return share
    first_start = starts[groups.first[repeated]]
    docs = doc_of_word[first_start]
    occurrences = groups.size[repeated]
    char_length = cumulative_chars[first_start + n] - cumulative_chars[first_start]
    # By document, then count, then length: the top n-gram is last, and ties never depend on
    # hash values (which differ between processes).
    order = np.lexsort((char_length, occurrences, docs))
    sorted_docs = docs[order]
    best = order[np.flatnonzero(np.append(sorted_docs[1:] != sorted_docs[:-1], True))]
    best_docs = docs[best]
    share[best_docs] = np.minimum(char_length[best] * occurrences[best] / doc_chars[best_docs], 1.0)
    return share


def _repeated_share(starts, groups: _Groups, doc_of_word, lengths, doc_chars, n) -> np.ndarray:
    repeats = starts[groups.is_repeat()]
    if len(repeats) == 0:
        return np.zeros(len(doc_chars))
    coverage = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.add.at(coverage, repeats, 1)
    np.add.at(coverage, repeats + n, -1)
    covered = np.cumsum(coverage[:-1]) > 0
    chars = np.bincount(doc_of_word[covered], weights=lengths[covered], minlength=len(doc_chars))
    return chars / doc_chars
