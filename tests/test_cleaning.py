"""Cleaning decisions: normalization, quality rules, exact and near duplicates, the split."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lm.config import CleanConfig, NearDupConfig, QualityConfig, SplitConfig
from lm.text.clean import DecisionMaker, clean_documents, split_of
from lm.text.near_duplicates import MinHasher, NearDuplicateIndex, optimal_banding
from lm.text.normalize import normalize_text
from lm.text.quality import measure_quality, quality_flags
from tests.helpers import prose

REPO = Path(__file__).resolve().parent.parent
RULES = QualityConfig(min_words=20)


def clean(texts: list[str], config: CleanConfig | None = None, workers: int = 1) -> list[dict]:
    config = config or CleanConfig(quality=RULES)
    batches = [[(f"doc{i}", "test", text, "plain", None) for i, text in enumerate(texts)]]
    decider = DecisionMaker(config, SplitConfig())
    return [row for rows in clean_documents(batches, decider, workers) for row in rows]


def test_normalization_composes_unicode_and_drops_controls_and_extra_space():
    raw = "Cafe\u0301\x07  au\tlait \r\n\r\n\r\n\u200bnext"
    assert normalize_text(raw, "NFC") == "Café au lait\n\nnext"
    assert normalize_text("ﬁne", "NFKC") == "fine"


def test_line_ending_controls_become_newlines_and_the_unit_separator_a_space():
    # Deleted, they glued the words either side together ("linenext").
    for control in ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"):
        assert normalize_text(f"line{control}next") == "line\nnext", repr(control)
        assert normalize_text(f"line{control}next", collapse_whitespace=False) == "line\nnext"
    assert normalize_text("one paragraph\u2029the next") == "one paragraph\n\nthe next"
    assert normalize_text("field\x1fvalue") == "field value"
    assert normalize_text("a\x0c\x0c\x0c\x0cb") == "a\n\nb"  # page breaks fold as blank lines


def test_every_line_ending_is_a_newline_and_every_text_is_stripped():
    # Old Mac files end lines with a lone carriage return; a line separator ends a line too.
    from lm.text.normalize import normalize_texts

    assert normalize_text("one\rtwo\r\nthree\u2028four") == "one\ntwo\nthree\nfour"
    # A batch with nothing to translate or fold is still stripped, as each text alone is.
    texts = ["a line read with its newline\n", " indented", "plain"]
    assert (
        normalize_texts(texts) == [normalize_text(t) for t in texts] == [t.strip() for t in texts]
    )


def test_without_collapsing_whitespace_tabs_and_exotic_spaces_are_kept():
    # Code and verse keep their layout: only the controls go, as with collapsing.
    text = "def f():\n\treturn 1\u00a0 +\u20032\x07"
    assert normalize_text(text, collapse_whitespace=False) == "def f():\n\treturn 1\u00a0 +\u20032"
    assert normalize_text(text) == "def f():\nreturn 1 + 2"


def test_a_deleted_character_between_a_letter_and_its_mark_leaves_normalized_text():
    # Normalized before the zero-width space went, "e" and U+0301 stayed apart: not NFC, and
    # not an exact duplicate of the composed spelling.
    composed = normalize_text("caf\u00e9 au lait")
    assert normalize_text("cafe\u200b\u0301 au lait") == composed
    assert normalize_text("cafe\x00\u0301 au lait", "NFKC", collapse_whitespace=False) == composed


def test_joiners_are_spelling_kept_and_bidi_formatting_goes():
    """The zero-width non-joiner and joiner were deleted with the zero-width space: Persian
    "می‌خواهم" became another word, an emoji family three faces, a Devanagari conjunct another
    form. The bidi isolates stayed while the embeddings and marks went."""
    for text in ("می\u200cخواهم", "👨\u200d👩\u200d👧", "क्\u200dष"):
        assert normalize_text(text) == text
    assert normalize_text("a\u200bb") == "ab"  # the zero-width space still goes
    for mark in ("\u061c", "\u200e", "\u200f", "\u202a", "\u202e", "\u2066", "\u2069"):
        assert normalize_text(f"left{mark}right") == "leftright", repr(mark)


def test_prose_passes_every_quality_rule():
    flags = quality_flags(measure_quality(prose(1, 200)), RULES)
    assert not any(flags.values()), flags


def test_repetitive_text_fails_the_repetition_rules():
    text = "buy cheap watches now " * 40
    flags = quality_flags(measure_quality(text), RULES)
    assert flags["repeated_ngrams"]


def test_duplicated_lines_fail_the_line_rule():
    line = "this exact sentence appears on many lines of the page"
    text = "\n".join([line] * 6 + [prose(2, 60)])
    assert quality_flags(measure_quality(text), RULES)["repeated_lines"]


def test_symbol_heavy_and_short_documents_are_flagged():
    assert quality_flags(measure_quality("# " * 30 + prose(3, 30)), RULES)["too_many_symbols"]
    assert quality_flags(measure_quality("too short"), RULES)["too_few_words"]


def test_disabled_rules_flag_nothing():
    flags = quality_flags(measure_quality("x"), QualityConfig(enabled=False))
    assert not any(flags.values())


def test_exact_duplicates_after_normalization_are_marked_not_dropped():
    a = prose(4)
    rows = clean([a, a.replace(" ", "  "), prose(5)])
    assert [r["exact_duplicate"] for r in rows] == [False, True, False]
    assert [r["keep"] for r in rows] == [True, False, True]
    assert rows[1]["reject_reason"] == "exact_duplicate"
    assert rows[0]["doc_id"] == rows[1]["doc_id"]
    # Not also a near duplicate: each removed copy counted once, under its first rule.
    assert [(r["near_duplicate"], r["near_dup_of"]) for r in rows] == [(False, None)] * 3


def test_near_duplicate_points_at_the_first_document_of_its_cluster():
    original = prose(6, 300)
    words = original.split()
    words[150] = "zebra"  # one word of three hundred changed
    rows = clean([original, " ".join(words), prose(7, 300)])
    assert rows[1]["near_dup_of"] == rows[0]["doc_id"]
    assert rows[1]["reject_reason"] == "near_duplicate"
    assert rows[2]["near_dup_of"] is None


def test_near_duplicates_of_text_without_spaces_are_found_by_character_shingles():
    # Chinese is written without spaces: a clause was one "word", so one character changed
    # changed every shingle, and no copy was ever found (at threshold 0.5 either).
    import random

    hanzi = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现与"  # noqa: E501
    rng = random.Random(0)

    def chinese(length: int) -> str:
        return "。".join("".join(rng.choice(hanzi) for _ in range(20)) for _ in range(length // 20))

    original = chinese(400)
    edited = original[:200] + ("人" if original[200] != "人" else "我") + original[201:]
    config = CleanConfig(quality=QualityConfig(enabled=False))
    rows = clean([original, edited, chinese(400), "東京の" + chinese(400)], config)
    assert [row["near_dup_of"] for row in rows] == [None, rows[0]["doc_id"], None, None]


def test_near_duplicate_threshold_is_configurable():
    original = prose(8, 300)
    words = original.split()
    edited = " ".join(words[:200] + prose(9, 100).split())  # about a third rewritten
    strict = CleanConfig(quality=RULES, near_dup=NearDupConfig(threshold=0.9))
    loose = CleanConfig(quality=RULES, near_dup=NearDupConfig(threshold=0.3))
    assert clean([original, edited], strict)[1]["near_dup_of"] is None
    assert clean([original, edited], loose)[1]["near_dup_of"] is not None


def test_a_signature_half_equal_to_a_stored_one_is_no_near_duplicate_at_0_8():
    """Thresholds far apart (0.9 and 0.3, above) would not see the comparison made against
    half the threshold: one that shares a band key (a candidate) but agrees in only half of its
    positions is kept; one agreeing in 90 % is not."""
    index = NearDuplicateIndex(threshold=0.8, num_perm=128)
    rng = np.random.default_rng(0)
    first = rng.integers(0, 2**32, 128, dtype=np.uint32)
    assert index.find_or_add("a", first) is None
    half = first.copy()
    half[64:] = rng.integers(0, 2**32, 64, dtype=np.uint32)  # the first bands shared
    assert index.find_or_add("b", half) is None
    most = first.copy()
    most[115:] = rng.integers(0, 2**32, 13, dtype=np.uint32)
    assert index.find_or_add("c", most) == "a"


def test_a_document_of_exactly_min_chars_is_long_enough():
    config = CleanConfig(min_chars=10, quality=QualityConfig(enabled=False),
                         near_dup=NearDupConfig(enabled=False))  # fmt: skip
    rows = clean(["abcdefghij", "abcdefghi"], config)
    assert [(row["keep"], row["reject_reason"]) for row in rows] == [
        (True, None),
        (False, "too_short"),
    ]


def test_minhash_estimates_jaccard_similarity():
    hasher = MinHasher(num_perm=256, shingle_size=1, seed=3)
    a = [f"w{i}" for i in range(100)]
    b = [f"w{i}" for i in range(50, 150)]  # true Jaccard 50/150
    estimate = float((hasher.signature(a) == hasher.signature(b)).mean())
    assert abs(estimate - 1 / 3) < 0.08


def test_a_near_duplicate_is_found_where_an_unrelated_document_holds_the_band_key_first():
    # Each bucket kept its first document only: A's one band in common with C was B's, so C
    # was compared with B alone and kept, a near copy of A.
    import numpy as np

    index = NearDuplicateIndex(threshold=0.8, num_perm=128)
    rows, rng = index.rows, np.random.default_rng(0)
    a = rng.integers(0, 2**32, 128, dtype=np.uint64)
    b = rng.integers(0, 2**32, 128, dtype=np.uint64)
    b[:rows] = a[:rows]  # band 0 as A's, nothing else
    c = a.copy()
    for band in range(1, index.bands):  # one value off in every other band: no key in common
        c[band * rows] += 1
    assert np.mean(c == a) >= 0.8 and np.mean(b == a) < 0.8
    assert index.find_or_add("b", b) is None and index.find_or_add("a", a) is None
    assert index.find_or_add("c", c) == "a"


def test_banding_uses_at_most_num_perm_rows():
    bands, rows = optimal_banding(0.8, 128)
    assert bands * rows <= 128 and bands > 1


def test_split_depends_only_on_doc_id_and_follows_the_fractions():
    split = SplitConfig(val=0.1, test=0.2)
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5000)]
    assigned = [split_of(doc_id, split) for doc_id in ids]
    counts = {name: assigned.count(name) / len(assigned) for name in ("train", "val", "test")}
    assert abs(counts["val"] - 0.1) < 0.02 and abs(counts["test"] - 0.2) < 0.02
    assert split_of("ab" * 32, split) == split_of("ab" * 32, split)


def test_random_split_follows_rows_and_lets_copies_of_a_text_part():
    # makemore's split of a names list: lines shuffled, so a name listed twice can be in both.
    names = [f"name{i % 1500}" for i in range(3000)]  # every name twice
    config = CleanConfig(
        exact_dedup=False,
        quality=QualityConfig(enabled=False),
        near_dup=NearDupConfig(enabled=False),
    )
    split = SplitConfig(method="random", val=0.1, test=0.1)
    batches = [[(f"doc{i}", "names", name, "plain", None) for i, name in enumerate(names)]]
    rows = [row for rows in clean_documents(batches, DecisionMaker(config, split)) for row in rows]
    assert all(row["keep"] for row in rows)
    assigned = [row["split"] for row in rows]
    assert abs(assigned.count("val") / 3000 - 0.1) < 0.02
    assert abs(assigned.count("test") / 3000 - 0.1) < 0.02
    parted = sum(assigned[i] != assigned[i + 1500] for i in range(1500))
    assert parted > 300  # about 1 - (0.8² + 0.1² + 0.1²) = 34 % of the pairs
    assert assigned == [split_of("", split, row) for row in range(3000)]  # the row alone decides
    hashed = SplitConfig(val=0.1, test=0.1)
    by_hash = [r["split"] for rows in clean_documents(batches, DecisionMaker(config, hashed))
               for r in rows]  # fmt: skip
    assert all(by_hash[i] == by_hash[i + 1500] for i in range(1500))  # copies never part
    # A row is the corpus's row, rejected ones counted: a changed quality rule moves no kept
    # document between splits.
    deduped = config.model_copy(update={"exact_dedup": True})
    rows = [row for rows in clean_documents(batches, DecisionMaker(deduped, split))
            for row in rows]  # fmt: skip
    assert sum(row["keep"] for row in rows) == 1500  # the second copies are rejected
    assert [row["split"] for row in rows] == assigned


def test_worker_processes_give_the_same_rows_as_one_process():
    texts = [prose(i, 80) for i in range(40)] + [prose(1, 80), "# # # # #"]
    assert clean(texts, workers=2) == clean(texts, workers=1)


def test_annotation_workers_do_not_rerun_the_parents_main_module(tmp_path):
    # Under the `lmforge` script the parent's __main__ imports Prefect: seconds per worker.
    marks = tmp_path / "marks"
    script = tmp_path / "main.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        f"open({str(marks)!r}, 'a').write(f'{{os.getpid()}}\\n')  # runs wherever main runs\n"
        "from lm.config import CleanConfig\n"
        "from lm.text.clean import ProcessAnnotator\n"
        "if __name__ == '__main__':\n"
        "    rows = [('s', 'f', 'some words here ' * 20, 'plain', None)] * 8\n"
        "    batches = ProcessAnnotator.of_batches([rows] * 4, CleanConfig(), 2)\n"
        "    print(sum(len(batch) for batch in batches))\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "32"  # every document annotated, by the workers
    assert len(marks.read_text().split()) == 1  # the parent alone ran main


@pytest.mark.parametrize("method", ["hash", "random"])
def test_the_pieces_of_a_text_are_drawn_to_the_split_of_its_first_piece(method):
    """Cut only to bound memory, a book is held out whole, as it was when read whole, not as
    pieces whose neighbours train the model; `split.unit = "piece"` draws each on its own."""
    config = CleanConfig(
        quality=QualityConfig(enabled=False), near_dup=NearDupConfig(enabled=False)
    )
    rows = [(f"loose{n}", "loose.txt", f"a short text {n}", "plain", None) for n in range(20)]
    for book in range(60):  # 60 books of 5 pieces, between the loose documents
        rows += [(f"book{book}.txt:{piece}", f"book{book}.txt", f"book {book} piece {piece}",
                  "plain", f"book{book}.txt") for piece in range(5)]  # fmt: skip
        rows.append((f"after{book}", "after.txt", f"read after book {book}", "plain", None))

    def decided(unit: str) -> tuple[list[dict], dict]:
        decider = DecisionMaker(config, SplitConfig(method=method, val=0.1, test=0.1, unit=unit))
        decided = [row for rows in clean_documents([rows], decider) for row in rows]
        return decided, decider.stats.as_dict()

    whole, stats = decided("text")
    pieces, _ = decided("piece")
    own = [split_of(row["doc_id"], SplitConfig(method=method, val=0.1, test=0.1), index)
           for index, row in enumerate(pieces)]  # fmt: skip
    assert [row["split"] for row in pieces] == own  # each piece on its own, as before
    first_of: dict[str, str] = {}
    for row, alone in zip(whole, own, strict=True):
        assert row["part_of"] == (row["source_file"] if row["source"].startswith("book") else None)
        if row["part_of"] is None:
            assert row["split"] == alone  # a text read whole: unchanged
        else:
            assert row["split"] == first_of.setdefault(row["part_of"], alone)
    books = {split: sum(value == split for value in first_of.values()) for split in ("val", "test")}
    assert books["val"] and books["test"]  # whole books held out
    assert sum(a["split"] != b["split"] for a, b in zip(whole, pieces, strict=True)) > 20
    assert (stats["pieces"], stats["texts_cut"]) == (300, 60)
    splits = [row["split"] for row in whole]
    assert stats["split_documents"] == {split: splits.count(split) for split in set(splits)}


def test_wiki_markup_is_stripped_only_from_wikitext_and_only_when_asked():
    markup = "'''Paris''' is the [[capital city|capital]] of [[France]].{{cite web|x}}"
    config = CleanConfig(
        quality=QualityConfig(enabled=False), near_dup=NearDupConfig(enabled=False)
    )
    kept = config.model_copy(update={"strip_wiki_markup": False})

    def cleaned(config: CleanConfig, kind: str) -> str:
        batches = [[("doc", "test", markup, kind, None)]]
        return next(clean_documents(batches, DecisionMaker(config, SplitConfig())))[0]["text"]

    assert cleaned(config, "wikitext") == "Paris is the capital of France."
    assert cleaned(config, "plain") == cleaned(kept, "wikitext") == markup


def test_a_rejected_document_makes_no_later_document_a_near_duplicate():
    """Only a kept document can be the one of its cluster that stays: a near copy of a page
    rejected by a quality rule (here its trail of "#") is kept, not removed as a duplicate of
    text that is not in the corpus either."""
    page = prose(6, 300)
    rows = clean([page + " #" * 40, page + " The end."])
    assert rows[0]["reject_reason"] == "too_many_symbols"
    assert (rows[1]["keep"], rows[1]["near_dup_of"]) == (True, None)
    assert clean([page, page + " The end."])[1]["near_dup_of"] is not None  # a near copy


def test_a_document_is_removed_by_the_first_rule_it_fails_and_the_stats_add_up():
    """Each document counts as `flagged` by every rule it fails and as `removed` by the first
    (`DECISION_FLAGS` order); kept bytes are UTF-8 bytes, per split as in all."""
    config = CleanConfig(min_chars=12, quality=RULES, near_dup=NearDupConfig(enabled=False))
    texts = ["# # # #", prose(4, 40) + " café", prose(4, 40) + " café", prose(5, 40) + " naïve"]
    decider = DecisionMaker(config, SplitConfig(val=0.5))
    batches = [[(f"doc{i}", "test", text, "plain", None) for i, text in enumerate(texts)]]
    rows = [row for rows in clean_documents(batches, decider) for row in rows]
    assert rows[0]["too_short"] and rows[0]["too_few_words"] and rows[0]["too_many_symbols"]
    assert [row["reject_reason"] for row in rows] == ["too_short", None, "exact_duplicate", None]
    stats = decider.stats.as_dict()
    assert stats["removed"]["too_short"] == stats["flagged"]["too_short"] == 1
    assert (stats["removed"]["too_few_words"], stats["flagged"]["too_few_words"]) == (0, 1)
    kept = [row for row in rows if row["keep"]]
    assert stats["kept_bytes"] == sum(len(row["text"].encode()) for row in kept)
    assert stats["kept_bytes"] > stats["kept_chars"]
    assert stats["split_bytes"] == {
        split: sum(row["n_bytes"] for row in kept if row["split"] == split)
        for split in {row["split"] for row in kept}
    }


def test_a_signature_is_the_minimum_over_every_shingle_however_they_are_chunked(monkeypatch):
    """Shingles are permuted a chunk at a time (a book has millions): a long document's
    signature, and those of the documents grouped around it, do not depend on the chunk."""
    hasher = MinHasher(num_perm=32, shingle_size=3, seed=1)
    long = prose(1, 200).split()
    documents = [long[:10], long[20:30], long, long[50:60], long[:2]]
    expected = hasher.signatures(documents)
    monkeypatch.setattr(MinHasher, "CHUNK_SHINGLES", 16)
    for got, want in zip(hasher.signatures(documents), expected, strict=True):
        assert np.array_equal(got, want)


def test_a_signature_agreeing_in_exactly_the_threshold_share_is_a_near_duplicate():
    index = NearDuplicateIndex(threshold=0.75, num_perm=128)
    rng = np.random.default_rng(1)
    first = rng.integers(0, 2**32, 128, dtype=np.uint32)
    assert index.find_or_add("a", first) is None
    edited = first.copy()
    edited[96:] += 1  # 96 of 128 positions agree: 0.75
    assert index.find_or_add("b", edited) == "a"


def test_the_word_count_rules_hold_at_their_bounds():
    rules = QualityConfig(min_words=20, max_words=30)
    for words, flags in ((19, (True, False)), (20, (False, False)), (30, (False, False)),
                         (31, (False, True))):  # fmt: skip
        measured = quality_flags(measure_quality(" ".join(["word"] * words)), rules)
        assert (measured["too_few_words"], measured["too_many_words"]) == flags, words


SENTENCE = "the quick brown fox jumps over the lazy sleeping dog"
FAILING_ONE_RULE = {
    "too_few_alpha_words": prose(13, 40) + " " + " ".join(str(1000 + 7 * i) for i in range(20)),
    "too_many_ellipsis_lines": "\n".join(
        prose(14 + i, 12) + ".." * (i % 2) + "." for i in range(6)
    ),
    "too_many_bullet_lines": "\n".join("- " + prose(20 + i, 8) for i in range(6)),
    "too_many_symbols": " ".join(
        w + "..." * (i % 5 == 0) for i, w in enumerate(prose(25, 60).split())
    ),
    "bad_mean_word_length": " ".join(f"extraordinarily{word}" for word in prose(30, 30).split()),
    # Paragraphs of three lines each, and a one-word paragraph repeated: over a third of the
    # paragraphs repeat, a sixth of the lines, a hundredth of the characters.
    "repeated_lines": "\n\n".join(
        ["\n".join(prose(40 + 3 * i + j, 10) for j in range(3)) for i in range(6)] + ["Yes."] * 5
    ),
    # A ten-word sentence three times: no 2-, 3- or 4-gram frequent enough, but a tenth of the
    # characters are repeated 10-grams.
    "repeated_ngrams": " ".join(
        [prose(50, 30), SENTENCE, prose(51, 30), SENTENCE, prose(52, 30), SENTENCE]
    ),
}


@pytest.mark.parametrize("rule", FAILING_ONE_RULE)
def test_each_quality_rule_flags_a_document_that_fails_it_alone(rule):
    text = FAILING_ONE_RULE[rule]
    measured = measure_quality(text)
    flags = quality_flags(measured, RULES)
    assert {name for name, failed in flags.items() if failed} == {rule}
    if rule == "repeated_ngrams":  # the two later copies, each character once
        repeated = 2 * len(SENTENCE.replace(" ", "")) / len(text.replace(" ", ""))
        assert measured["duplicate_ngram_char_fraction"] == pytest.approx([repeated] * 6)
    if rule == "repeated_lines":  # 4 of 11 paragraphs, 4 of 23 lines, by count
        assert measured["duplicate_paragraph_fraction"] == pytest.approx(4 / 11)
        assert measured["duplicate_line_fraction"] == pytest.approx(4 / 23)


def test_the_top_ngram_is_the_most_frequent_one_not_the_longest():
    text = " ".join([prose(60, 40), *["a b"] * 5, *["extraordinary wonderfulness"] * 2])
    shares = measure_quality(text)["top_ngram_char_fraction"]
    chars = len(text.replace(" ", ""))
    # "a b" five times (its last "b a" neighbours are bigrams too, but only 4 of them).
    assert shares[0] == pytest.approx(2 * 5 / chars)


def test_text_without_spaces_is_shingled_by_its_characters_but_whitespace():
    # A line break or a space in Chinese text is layout: a copy laid out otherwise is the
    # same characters, and so the same shingles.
    from lm.text.word_hashes import character_ids

    ids = character_ids("東京の天気は晴れ")
    assert np.array_equal(character_ids("東京の 天気は\n晴れ"), ids) and len(ids) == 8
    assert len(set(ids.tolist())) == 8  # one id per character, each distinct
