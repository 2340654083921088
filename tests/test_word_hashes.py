"""Words cut and hashed in numpy (`BatchWords`) are exactly `str.split()`'s words, with their
lengths and letters, and their hashes are the same in every process."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from lm.text.near_duplicates import MinHasher
from lm.text.word_hashes import BatchWords, word_ids

REPO = Path(__file__).resolve().parent.parent
# ASCII and Unicode whitespace (NBSP, em space, ideographic space, line and paragraph
# separators, file separators), letters of several scripts, digits, "½" (numeric, no letter).
PIECES = ["a", "Word", "é", "日本", "½", "42", "_", "—", "ﾃ", "、", " ", "\n", "\t", "\r",
          "\x1c", "\x85", "\xa0", "\u2003", "\u3000", "\u2028", "\u2029", "ab\xa0cd", "",
          "x1"]  # fmt: skip


def random_texts(rng: random.Random) -> list[str]:
    return [
        "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        for _ in range(rng.randint(1, 6))
    ]


def test_words_are_str_split_words_with_their_lengths_and_letters():
    rng = random.Random(0)
    for _ in range(300):
        texts = random_texts(rng)
        batch = BatchWords.of(texts)
        words = [word for text in texts for word in text.split()]
        assert batch.counts.tolist() == [len(text.split()) for text in texts]
        assert batch.lengths.tolist() == [len(word) for word in words]
        assert batch.has_letter.tolist() == [any(c.isalpha() for c in word) for word in words]
        assert batch.starts.tolist() == np.cumsum([0, *batch.counts.tolist()[:-1]]).tolist()
        by_word: dict[str, set[int]] = {}
        for word, word_id in zip(words, batch.ids.tolist(), strict=True):
            by_word.setdefault(word, set()).add(word_id)
        assert all(len(ids) == 1 for ids in by_word.values())  # a word hashes one way
        assert len({ids.pop() for ids in by_word.values()}) == len(by_word)  # no collisions
    assert len(BatchWords.of([]).ids) == 0
    assert BatchWords.of(["", " \n "]).counts.tolist() == [0, 0]


def test_word_hashes_are_the_same_in_another_process():
    words = ["alpha", "βeta", "日本語", "½", "x" * 300]
    script = (
        f"import sys; from lm.text.word_hashes import word_ids; print(word_ids({words!r}).tolist())"
    )
    for seed in ("1", "2"):
        output = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)},
        ).stdout
        assert output.strip() == str(word_ids(words).tolist())


def test_batch_signatures_equal_signatures_of_each_documents_words():
    rng = random.Random(1)
    vocabulary = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choices(vocabulary, k=rng.randint(0, 12))) for _ in range(50)]
    hasher = MinHasher(num_perm=32, shingle_size=3, seed=0)
    batch = BatchWords.of(texts)
    starts, counts = batch.starts.tolist(), batch.counts.tolist()
    ids = [batch.ids[start : start + count] for start, count in zip(starts, counts, strict=True)]
    together = hasher.signatures_of_ids(ids)
    alone = [hasher.signature(text.split()) for text in texts]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone, strict=True))
    # Documents with fewer words than a shingle still get a signature of their own.
    assert not np.array_equal(hasher.signature(["w1"]), hasher.signature(["w2"]))


def test_words_are_hashed_the_same_whatever_span_of_bytes_holds_them(monkeypatch):
    """Hashed a span of whole words at a time (a 200 MB document's prefix sums took gigabytes):
    a word's hash must not depend on where its span starts, nor a word longer than a span."""
    import lm.text.word_hashes

    generator = random.Random(5)
    alphabet = "abcdeé漢 \n\t"
    texts = ["".join(generator.choice(alphabet) for _ in range(generator.randint(0, 400)))
             for _ in range(40)] + ["x" * 300]  # fmt: skip
    whole = BatchWords.of(texts)
    for span in (1, 7, 64):
        monkeypatch.setattr(lm.text.word_hashes, "HASH_SPAN", span)
        assert np.array_equal(BatchWords.of(texts).ids, whole.ids), span


def test_a_code_point_finder_finds_each_of_its_characters_wherever_it_is():
    """Every Unicode space and every special character of normalization, found with its size,
    one of two bytes at the very end of the data: the tests held a few of them, and none of those
    whose lead byte is the finder's second (U+1680's E1)."""
    from lm.text import normalize, word_hashes

    spaces = {c for c in map(chr, range(0x80, 0x3001)) if c.isspace()}
    special = {chr(c) for c in normalize._TRANSLATED if c >= 0x80}
    for finder, characters in ((word_hashes._UNICODE_SPACES, spaces),
                               (normalize._SPECIAL_NON_ASCII, special)):  # fmt: skip
        last_two_byte = sorted(characters, key=lambda c: (-len(c.encode()), c))  # ends the data
        text = "".join(f"é{c}" for c in last_two_byte)  # é: a 2-byte lead of neither set
        data = np.frombuffer(text.encode(), dtype=np.uint8)
        expected = [(len(text[:i].encode()), len(c.encode())) for i, c in enumerate(text)
                    if c in characters]  # fmt: skip
        positions, sizes = finder.find(data)
        assert list(zip(positions.tolist(), sizes.tolist(), strict=True)) == expected
