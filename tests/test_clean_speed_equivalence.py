"""The quality measurements' shortcuts give exactly what the plain formulas give: each regex scan
is skipped only where it cannot match, and word lengths are summed once per batch."""

from __future__ import annotations

import random

from lm.text.normalize import normalize_text, normalize_texts
from lm.text.quality import _BULLET_LINE, _ELLIPSIS_LINE, measure_quality_batch

PIECES = ["word", "Word,", "123", "...", "…", "end...", "end… ", "•", "◦", "- item", "* star",
          "\t- tab", "  • bullet", "a-b", "-- ", "x*y", "é", "日本語", "½", "#", "\n", "\n\n",
          "\n - ", "\n* ", " ", "\t"]  # fmt: skip


def texts(count: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        "".join(rng.choice(PIECES) + rng.choice(["", " "]) for _ in range(rng.randint(0, 60)))
        for _ in range(count)
    ]


def test_line_and_word_measurements_match_the_plain_formulas():
    batch = texts()
    words_per_doc = [text.split() for text in batch]
    measured = measure_quality_batch(batch)
    assert any(m["bullet_line_fraction"] for m in measured)
    assert any(m["ellipsis_line_fraction"] for m in measured)
    for text, words, m in zip(batch, words_per_doc, measured, strict=True):
        n_lines = max(len([line for line in text.split("\n") if line.strip()]), 1)
        assert m["ellipsis_line_fraction"] == len(_ELLIPSIS_LINE.findall(text)) / n_lines
        assert m["bullet_line_fraction"] == len(_BULLET_LINE.findall(text)) / n_lines
        expected_mean = sum(map(len, words)) / len(words) if words else 0.0
        assert m["mean_word_length"] == expected_mean
        assert m["n_words"] == len(words)
        with_letter = sum(any(c.isalpha() for c in word) for word in words)
        assert m["alpha_word_fraction"] == (with_letter / len(words) if words else 0.0)


def test_measurements_do_not_depend_on_the_batch_a_document_is_in():
    batch = texts(seed=1)
    together = measure_quality_batch(batch)
    alone = [measure_quality_batch([text])[0] for text in batch]
    assert together == alone


def test_batch_normalization_equals_normalizing_each_text():
    rng = random.Random(2)
    specials = ["\r\n", "\r", "\u2028", "\u2029", "\x00", "\x07", "\t", "\x0b", "\x1f", "\x7f",
                "\x85", "\xa0", "\u1680", "\u2003", "\u200b", "\u202e", "\u2060", "\u3000",
                "\ufeff", "  ", " \n", "\n ", "\n\n\n", "–", "…", "é", "日", "|", "¼", "\x0c",
                "\u0301", "\x1c"]  # fmt: skip
    batch = [
        "".join(rng.choice(specials + PIECES) for _ in range(rng.randint(0, 40)))
        for _ in range(400)
    ] + ["plain text with nothing to do", ""]
    for form in ("NFC", "NFKC"):
        for collapse in (True, False):
            expected = [normalize_text(text, form, collapse) for text in batch]
            assert normalize_texts(batch, form, collapse) == expected
            plain = [text for text in batch if text == text.strip() and text.isalnum()]
            assert normalize_texts(plain, form, collapse) == [
                normalize_text(t, form, collapse) for t in plain
            ]
