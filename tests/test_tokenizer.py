"""Tokenizers and token shards: lossless round trips, digests, and clear errors."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
import sentencepiece as spm

import lm.tokenizer
from lm.config import TokenizerConfig, load_config
from lm.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    escape_space_symbol,
    load_tokenizer,
    train_tokenizer,
)
from lm.tokenizer_stats import tokenizer_statistics
from storage.corpus import DOCUMENTS_FILE, iter_split_texts
from storage.shards import ShardError, ShardWriter, open_shard, read_shard_info


@pytest.fixture(scope="module")
def bundled_splits(tmp_path_factory):
    """The bundled corpus, ingested and cleaned by the real stage code: texts per split."""
    from storage.workspace import Workspace
    from tasks.clean import clean_task
    from tasks.ingest import ingest_task

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_HOME", str(tmp_path_factory.mktemp("bundled")))
        config = load_config("default")
        workspace = Workspace.from_env().ensure()
        corpus = clean_task.fn(ingest_task.fn(config.ingest), config.clean, config.split)
        documents = workspace.resolve(corpus.path) / DOCUMENTS_FILE
        return {
            split: [text for batch in iter_split_texts(documents, split) for text in batch]
            for split in ("train", "val", "test")
        }


# Whitespace as SentencePiece cuts words at it, and characters it has no piece for.
AWKWARD_TEXTS = [
    "", " ", "   ", "a", " leading", "trailing ", "  two  spaces  inside  ", "\t",
    "tab\tseparated\twords", " \t mixed \t ", "\n", "\n\n\n", "line\n", "\nline",
    "para\n\npara", " \n \n ", "end.\n  The", "Snow ☃ and 🎉 in 日本語, ünïcödé", "☃☃ 🎉🎉",
    "\x00 \x7f", "\u00a0nbsp\u3000ideographic", "<|endoftext|> is text here",
]  # fmt: skip
# A literal "▁" (SentencePiece's own space mark), the private-use character that escapes it
# (lm.tokenizer.SPACE_SYMBOL_ESCAPE, written out so that these texts need no import) and mixes.
ESCAPE = "\U000f0000"
SPACE_SYMBOL_TEXTS = [
    "▁", "a literal ▁ and ▁▁x", "▁ ▁", "a▁ ▁b", " ▁x", "x▁", "▁▁▁", ESCAPE, ESCAPE * 3,
    f"{ESCAPE}_", f"{ESCAPE}▁", f"▁{ESCAPE}▁▁_", f"a{ESCAPE} {ESCAPE}b ▁", "__▁_",
]  # fmt: skip


@pytest.fixture(scope="module")
def sentencepiece_models(bundled_splits):
    """kind -> the serialized model of that kind at vocabulary 2000, trained once."""
    models = {}
    for kind in ("bpe", "unigram"):
        config = TokenizerConfig(kind=kind, vocab_size=2000)
        models[kind] = train_tokenizer(iter(bundled_splits["train"]), config).serialized()
    return models


def _fresh(models: dict[str, bytes], kind: str) -> SentencePieceTokenizer:
    """A tokenizer with an empty word cache."""
    return SentencePieceTokenizer(models[kind], kind)


def _processor_ids(model: bytes, texts: list[str]) -> list[list[int]]:
    """SentencePiece's own ids for `texts`, escaped as the tokenizer escapes them."""
    escaped = list(map(escape_space_symbol, texts))
    return spm.SentencePieceProcessor(model_proto=model).encode(escaped)


@pytest.fixture
def short_texts_word_by_word(monkeypatch):
    """BPE takes the word path even for the shortest text (normally left to the processor)."""
    monkeypatch.setattr(lm.tokenizer, "WORD_PATH_MIN_CHARS", 0)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_every_val_document_round_trips_exactly(sentencepiece_models, bundled_splits, kind):
    tokenizer = _fresh(sentencepiece_models, kind)
    val = bundled_splits["val"]
    assert any(any(ord(c) > 127 for c in text) for text in val), "val has non-ASCII text"
    decoded = [tokenizer.decode(ids) for ids in tokenizer.encode_batch(val)]
    assert decoded == val
    assert tokenizer.eot_id not in {i for ids in tokenizer.encode_batch(val) for i in ids}


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_encode_batch_gives_the_processors_ids_on_every_val_document(
    sentencepiece_models, bundled_splits, kind
):
    val = bundled_splits["val"]
    expected = _processor_ids(sentencepiece_models[kind], val)
    tokenizer = _fresh(sentencepiece_models, kind)
    assert tokenizer.encode_batch(val) == expected  # words missing from the cache
    assert tokenizer.encode_batch(val) == expected  # every word cached
    assert [tokenizer.encode(text) for text in val[:3]] == expected[:3]


@pytest.mark.usefixtures("short_texts_word_by_word")
@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_awkward_whitespace_and_unseen_characters_get_the_processors_ids(
    sentencepiece_models, bundled_splits, kind
):
    texts = AWKWARD_TEXTS + SPACE_SYMBOL_TEXTS
    expected = _processor_ids(sentencepiece_models[kind], texts)
    assert [_fresh(sentencepiece_models, kind).encode(text) for text in texts] == expected
    assert _fresh(sentencepiece_models, kind).encode_batch(texts) == expected
    mixed = bundled_splits["val"][:3] + texts  # awkward texts in a batch: all cut by the regex
    expected_mixed = _processor_ids(sentencepiece_models[kind], mixed)
    assert _fresh(sentencepiece_models, kind).encode_batch(mixed) == expected_mixed


@pytest.mark.usefixtures("short_texts_word_by_word")
def test_runs_of_spaces_inside_texts_get_the_processors_ids_where_spaces_are_pieces():
    """Text written with double spaces teaches pieces of spaces ("▁▁"), which a run of spaces
    is cut by before the word after it: a batch whose texts only have runs inside them (none
    empty or starting with a space) must be cut by the regex as well."""
    from tests.helpers import prose

    documents = [prose(i, 80).replace(" ", "  ", 30) for i in range(40)]
    tokenizer = train_tokenizer(iter(documents), TokenizerConfig(kind="bpe", vocab_size=400))
    assert any(tokenizer.piece(i).startswith("▁▁") for i in range(tokenizer.vocab_size))
    texts = ["two  spaces inside", "end.  Then   three", "a b"]
    assert tokenizer.encode_batch(texts) == _processor_ids(tokenizer.serialized(), texts)


@pytest.mark.parametrize("word_by_word", [False, True])
@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_literal_space_symbol_and_its_escape_round_trip(
    sentencepiece_models, kind, word_by_word, monkeypatch
):
    # SentencePiece alone reads a literal "▁" as a space; escaped, it comes back as itself.
    if word_by_word:
        monkeypatch.setattr(lm.tokenizer, "WORD_PATH_MIN_CHARS", 0)
    texts = SPACE_SYMBOL_TEXTS
    tokenizer = _fresh(sentencepiece_models, kind)
    assert [tokenizer.decode(ids) for ids in tokenizer.encode_batch(texts)] == texts
    assert [tokenizer.decode(tokenizer.encode(text)) for text in texts] == texts


def test_a_model_without_the_escape_piece_reads_text_as_it_was_trained():
    # Made before the escape: its shards and checkpoints hold ids of text read as it is.
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["the cat sat on the mat", "a dog ran"] * 20), model_writer=model,
        model_type="bpe", vocab_size=40, normalization_rule_name="identity",
        remove_extra_whitespaces=False, control_symbols=[lm.tokenizer.END_OF_TEXT], minloglevel=2,
    )  # fmt: skip
    tokenizer = SentencePieceTokenizer(model.getvalue(), "bpe")
    raw = spm.SentencePieceProcessor(model_proto=model.getvalue())
    assert tokenizer.encode("the ▁cat") == raw.encode("the ▁cat") == raw.encode("the  cat")
    assert tokenizer.decode(tokenizer.encode("the ▁cat")) == "the  cat"


@pytest.mark.usefixtures("short_texts_word_by_word")
@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_awkward_texts_round_trip(sentencepiece_models, kind):
    tokenizer = _fresh(sentencepiece_models, kind)
    assert [tokenizer.decode(ids) for ids in tokenizer.encode_batch(AWKWARD_TEXTS)] == AWKWARD_TEXTS
    assert [tokenizer.decode(tokenizer.encode(text)) for text in AWKWARD_TEXTS] == AWKWARD_TEXTS


def test_bpe_encodes_word_by_word_and_unigram_with_the_processor(sentencepiece_models):
    # Unigram's float32 Viterbi sums make a long document's ids differ from its words' ids.
    assert _fresh(sentencepiece_models, "bpe")._word_processor is not None
    assert _fresh(sentencepiece_models, "unigram")._word_processor is None


@pytest.mark.parametrize("bound, most", [("WORD_CACHE_SIZE", 7000), ("WORD_CACHE_CHARS", 20_000)])
def test_word_cache_starting_over_keeps_the_ids(sentencepiece_models, bundled_splits, monkeypatch,
                                                bound, most):  # fmt: skip
    """The cache starts over past its words, or past their characters (text without spaces is
    one word a document: whole documents filled it); the ids stay the processor's. About the
    distinct words of 4 val documents: it grows, starts over, and grows again."""
    monkeypatch.setattr(lm.tokenizer, bound, most)
    val = bundled_splits["val"]
    expected = _processor_ids(sentencepiece_models["bpe"], val)
    tokenizer = _fresh(sentencepiece_models, "bpe")
    in_batches_of_4 = [tokenizer.encode_batch(val[i : i + 4]) for i in range(0, len(val), 4)]
    assert [ids for batch in in_batches_of_4 for ids in batch] == expected
    rows, _, chars = tokenizer._word_cache
    assert chars == sum(map(len, rows))
    assert (len(rows) if bound == "WORD_CACHE_SIZE" else chars) <= most
    assert len(rows) < len({word for text in val for word in text.split()})  # it started over


@pytest.mark.usefixtures("short_texts_word_by_word")
def test_user_defined_symbol_spanning_a_space_keeps_the_processors_ids(bundled_splits):
    # The symbol would join two words, so the tokenizer must not encode them apart.
    config = TokenizerConfig(vocab_size=1000, user_defined_symbols=["x▁y"])
    tokenizer = train_tokenizer(iter(bundled_splits["train"]), config)
    texts = ["the max yield", "box y", *AWKWARD_TEXTS]
    expected = _processor_ids(tokenizer.serialized(), texts)
    assert tokenizer.encode_batch(texts) == expected
    assert any(tokenizer.piece(i) == "x▁y" for i in expected[0])


def test_unseen_characters_fall_back_to_bytes_and_still_round_trip(bundled_splits):
    tokenizer = train_tokenizer(iter(bundled_splits["train"]), TokenizerConfig(vocab_size=1000))
    text = "Snow ☃ and 🎉 in 日本語, ünïcödé\n\n  spaced  "
    assert tokenizer.decode(tokenizer.encode(text)) == text
    stats = tokenizer_statistics(tokenizer, [[text]])
    assert stats["byte_fallback_rate"] > 0
    assert stats["unknown_rate"] == 0


def test_text_a_tokenizer_cannot_spell_is_its_unknown_rate(bundled_splits):
    # Without byte fallback each run of unknown characters is one cheap <unk>: bytes per token
    # looked better for it, with no sign of the text lost.
    config = TokenizerConfig(vocab_size=1000, byte_fallback=False, character_coverage=0.98)
    tokenizer = train_tokenizer(iter(bundled_splits["train"]), config)
    text = "the river 日本語 and ☃☃ the river"
    stats = tokenizer_statistics(tokenizer, [[text]])
    unknown = sum(tokenizer.piece(i) == "<unk>" for i in tokenizer.encode(text))
    assert unknown == 2 and stats["unknown_rate"] == unknown / stats["tokens"]
    assert stats["byte_fallback_rate"] == 0


def test_statistics_on_val(bundled_splits):
    tokenizer = train_tokenizer(iter(bundled_splits["train"]), TokenizerConfig(vocab_size=2000))
    stats = tokenizer_statistics(tokenizer, [bundled_splits["val"]])
    assert 2.0 < stats["bytes_per_token"] < 6.0
    assert 0.5 < stats["vocab_used_fraction"] <= 1.0
    assert len(stats["longest_pieces"]) == 10
    longest = stats["longest_pieces"][0]
    learned = [i for i in range(tokenizer.vocab_size) if tokenizer.is_learned(i)]
    assert all(len(longest) >= len(tokenizer.piece(i)) for i in learned)


def test_statistics_of_an_empty_val_split_are_no_measurement(bundled_splits, caplog):
    """They were 0.0: "0.000 bytes/token, 0.0 % of the vocabulary used" in the registry and in
    `tokenizers compare`, read as a tokenizer that does nothing."""
    tokenizer = train_tokenizer(iter(bundled_splits["train"]), TokenizerConfig(vocab_size=2000))
    with caplog.at_level("WARNING", logger="lm.tokenizer_stats"):
        stats = tokenizer_statistics(tokenizer, [[]])
    assert stats["documents"] == stats["tokens"] == 0
    assert stats["bytes_per_token"] is stats["vocab_used_fraction"] is None
    assert stats["byte_fallback_rate"] is stats["unknown_rate"] is None
    assert "the val split holds no text" in caplog.text


@pytest.mark.parametrize(
    "config",
    [TokenizerConfig(vocab_size=270), TokenizerConfig(kind="char", unknown_chars="bytes")],
    ids=["bpe", "char"],
)
def test_longest_pieces_leave_out_control_unknown_and_byte_pieces(config):
    # Short learned pieces: "<|endoftext|>", "<unk>" and "<0x00>" would be the longest.
    texts = ["ab ba abc cab", "a b c bac"] * 20
    tokenizer = train_tokenizer(iter(texts), config)
    special = {lm.tokenizer.END_OF_TEXT, lm.tokenizer.UNKNOWN}
    stats = tokenizer_statistics(tokenizer, [texts])
    assert stats["longest_pieces"]
    for piece in stats["longest_pieces"]:
        assert piece not in special and not re.fullmatch(r"<0x[0-9A-F]{2}>", piece), piece


def test_same_data_and_seed_give_the_same_tokenizer(bundled_splits):
    config = TokenizerConfig(vocab_size=1500)
    first = train_tokenizer(iter(bundled_splits["train"]), config)
    second = train_tokenizer(iter(bundled_splits["train"]), config)
    assert first.digest == second.digest


def test_save_and_load_keep_digest_and_ids(bundled_splits, tmp_path):
    tokenizer = train_tokenizer(iter(bundled_splits["train"]), TokenizerConfig(vocab_size=1500))
    tokenizer.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.digest == tokenizer.digest and loaded.kind == "bpe"
    assert loaded.encode(bundled_splits["val"][0]) == tokenizer.encode(bundled_splits["val"][0])


def test_corrupt_model_file_is_a_clear_error(bundled_splits, tmp_path):
    tokenizer = train_tokenizer(iter(bundled_splits["train"]), TokenizerConfig(vocab_size=1500))
    model = tokenizer.save(tmp_path)
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(TokenizerError, match=r"tokenizer\.model: not a valid SentencePiece model"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("meta", ["{bad", '{"vocab": 1}', '{"kind": "wordpiece"}', "[1]"])
def test_corrupt_tokenizer_metadata_is_a_clear_error_naming_it(bundled_splits, tmp_path, meta):
    tokenizer = train_tokenizer(iter(bundled_splits["train"]), TokenizerConfig(vocab_size=1500))
    tokenizer.save(tmp_path)
    (tmp_path / "tokenizer_meta.json").write_text(meta)
    with pytest.raises(TokenizerError, match=r"tokenizer_meta\.json: not valid tokenizer metadata"):
        load_tokenizer(tmp_path)


def test_vocabulary_too_large_for_the_corpus_says_the_largest_possible():
    texts = ["the cat sat on the mat", "a dog ran in the park"] * 20
    with pytest.raises(
        TokenizerError, match=r"tokenizer.vocab_size = 50000 is more than .* is \d+"
    ):
        train_tokenizer(iter(texts), TokenizerConfig(vocab_size=50000))


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_empty_training_split_is_a_clear_error(kind):
    with pytest.raises(TokenizerError, match="the training split is empty"):
        train_tokenizer(iter([]), TokenizerConfig(kind=kind))


def test_a_text_given_whole_is_refused_not_read_as_one_document_per_character():
    """Iterated, a str is its characters: BPE trained on one-character documents learned no
    merge across them, silently."""
    with pytest.raises(TypeError, match=r"not one text.*pass \[text\]"):
        train_tokenizer("the cat sat on the mat", TokenizerConfig(kind="char"))


def test_save_makes_its_folder_and_load_takes_a_string_path(tmp_path):
    tokenizer = train_tokenizer(iter(["the cat sat on the mat"]), TokenizerConfig(kind="char"))
    tokenizer.save(tmp_path / "model" / "tokenizer")
    assert load_tokenizer(str(tmp_path / "model" / "tokenizer")).digest == tokenizer.digest


def test_char_tokenizer_takes_its_vocabulary_from_the_data():
    tokenizer = train_tokenizer(iter(["emma", "olivia", "ava"]), TokenizerConfig(kind="char"))
    assert sorted(tokenizer.chars) == sorted(set("emmaoliviaava"))
    assert tokenizer.chars[0] == "a"  # the most frequent character gets id 0
    tied = train_tokenizer(iter(["cab", "bca"]), TokenizerConfig(kind="char"))
    assert tied.chars == ["a", "b", "c"]  # ties by code point, not by order of appearance
    assert tokenizer.decode(tokenizer.encode("maval")) == "maval"
    assert tokenizer.vocab_size == len(tokenizer.chars) + 2  # end-of-text and <unk>


@pytest.mark.parametrize("kind", ["char", "char-bytes", "bpe"])
def test_ids_outside_the_vocabulary_are_refused_and_arrays_or_tensors_are_ids(kind):
    # A char tokenizer decoded -1 as its last character and one past the end as a TypeError;
    # SentencePiece said only "piece id is out of range" and a tensor was a TypeError.
    import torch

    texts = ["emma olivia ava", "the river bank"] * 20
    if kind == "bpe":
        tokenizer = train_tokenizer(iter(texts), TokenizerConfig(kind="bpe", vocab_size=300))
    else:
        unknown = "bytes" if kind == "char-bytes" else "unk"
        settings = TokenizerConfig(kind="char", unknown_chars=unknown)
        tokenizer = train_tokenizer(iter(texts), settings)
    ids = tokenizer.encode("olivia")
    for given in (np.array(ids, dtype=np.uint16), torch.tensor(ids)):
        assert tokenizer.decode(given) == "olivia"
    size = tokenizer.vocab_size
    for wrong in (-1, size):
        outside = f"token id {wrong} is outside the vocabulary of {size}"
        with pytest.raises(TokenizerError, match=outside):
            tokenizer.decode([*ids, wrong])
        with pytest.raises(TokenizerError, match=outside):
            tokenizer.is_learned(wrong)
        with pytest.raises(TokenizerError, match=outside):
            tokenizer.piece(wrong)


def test_char_tokenizer_unseen_character_policies():
    unk = CharTokenizer(list("ab"), "unk")
    assert unk.decode(unk.encode("abz")) == "ab<unk>"
    lossless = CharTokenizer(list("ab"), "bytes")
    assert lossless.decode(lossless.encode("a☃b")) == "a☃b"
    assert lossless.vocab_size == 2 + 1 + 256  # the characters, end-of-text, every byte
    assert lossless.piece(lossless.vocab_size - 1) == "<0xFF>"
    assert lossless.decode(lossless.encode("a\x00b")) == "a\x00b"  # the first byte id too
    # End-of-text separates documents: it decodes to no text, between bytes or characters.
    for tokenizer in (unk, lossless):
        ids = [*tokenizer.encode("ab"), tokenizer.eot_id, *tokenizer.encode("ba")]
        assert tokenizer.decode(ids) == "abba"
    assert lossless.decode([*lossless.encode("☃"), lossless.eot_id, *lossless.encode("é")]) == "☃é"
    strict = CharTokenizer(list("ab"), "error")
    with pytest.raises(TokenizerError, match="characters not in the vocabulary: 'xz'"):
        strict.encode("axbz")
    # In the encode stage the refused document is named by its split and first characters
    # ("retrain with them" could not help a character only val holds).
    from lm.tokenizer import encode_documents_naming_refusals

    named = r"'x' \(a char tokenizer's .* \(first met in a val document starting 'abax'\)"
    with pytest.raises(TokenizerError, match=named):
        encode_documents_naming_refusals(strict, ["abba", "abax"], ["train", "val"])
    assert encode_documents_naming_refusals(strict, ["ab"], ["val"]) == strict.encode_batch(["ab"])


def test_shard_round_trip_and_header(tmp_path):
    writer = ShardWriter(tmp_path / "val.bin", "d" * 64, eot_id=7, vocab_size=300)
    writer.write([1, 2, 3], text_bytes=5)
    writer.write([4], text_bytes=2)
    writer.close()
    tokens, info = open_shard(tmp_path / "val.bin", "d" * 64)
    assert tokens.tolist() == [1, 2, 3, 7, 4, 7] and tokens.dtype == np.dtype("<u2")
    assert (info.documents, info.text_bytes) == (2, 7)
    big = ShardWriter(tmp_path / "big.bin", "d" * 64, eot_id=0, vocab_size=100_000)
    big.write([70_000], text_bytes=1)
    assert big.close().dtype == "<u4"


def test_shard_from_another_tokenizer_is_refused_naming_both_digests(tmp_path):
    writer = ShardWriter(tmp_path / "train.bin", "a" * 64, eot_id=0, vocab_size=10)
    writer.write([1], text_bytes=1)
    writer.close()
    with pytest.raises(ShardError, match=f"made by tokenizer {'a' * 64}.*given is {'b' * 64}"):
        open_shard(tmp_path / "train.bin", "b" * 64)


def test_truncated_shard_is_refused(tmp_path):
    writer = ShardWriter(tmp_path / "train.bin", "a" * 64, eot_id=0, vocab_size=10)
    writer.write([1, 2, 3], text_bytes=3)
    writer.close()
    path = tmp_path / "train.bin"
    path.write_bytes(path.read_bytes()[:-2])
    assert read_shard_info(path).tokens == 4
    with pytest.raises(ShardError, match="truncated"):
        open_shard(path, "a" * 64)


def test_lines_longer_than_sentencepiece_takes_are_trained_on_in_parts():
    # SentencePiece skips a sentence over max_sentence_length bytes without a word: a corpus
    # of long one-line documents failed as "the training split is empty", and long lines
    # mixed with short ones were left out, their letters learned as byte pieces.
    from lm.tokenizer import train_tokenizer

    words = ["zebra", "quagga", "xylophone", "yak", "whale", "vole"]
    lines = [" ".join(words[(i + j) % 6] for j in range(3000)) for i in range(10)]  # ~20 KB
    config = TokenizerConfig(kind="bpe", vocab_size=300, max_sentence_length=4096)
    tokenizer = train_tokenizer(iter(lines), config)
    ids = tokenizer.encode(lines[0])
    assert len(ids) < len(lines[0].encode()) / 2  # pieces learned, not spelled out in bytes
    assert tokenizer.decode(ids) == lines[0]


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_a_corpus_of_more_lines_than_input_sentence_size_gives_the_seed_s_tokenizer_anywhere(
    kind,
):
    """SentencePiece sampled `input_sentence_size` lines itself, differently in every process
    whatever its seed: a large corpus made another tokenizer in every fresh workspace, and
    `tokenizer.seed` changed nothing. Each process here trains on the same corpus."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from lm.config import TokenizerConfig\n"
        "from lm.tokenizer import train_tokenizer\n"
        "from tests.helpers import prose\n"
        "lines = [prose(i, 12) for i in range(900)]\n"
        "config = TokenizerConfig(kind=sys.argv[2], vocab_size=340, input_sentence_size=300,\n"
        "                         seed=int(sys.argv[1]))\n"
        "print(train_tokenizer(iter(lines), config).digest)\n"
    )

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def digest(seed: int) -> str:
        run = subprocess.run([sys.executable, "-c", script, str(seed), kind], capture_output=True,
                             text=True, check=True, cwd=root)  # fmt: skip
        return run.stdout.strip()

    first = digest(1)
    assert digest(1) == first  # was another digest in each process
    assert digest(2) != first  # the seed draws another sample


def test_the_line_sample_is_uniform_in_order_and_the_seed_s():
    from lm.tokenizer import sample_lines

    lines = [f"line {i}" for i in range(1000)]
    assert list(sample_lines(iter(lines), 0, 1)) == lines  # 0: every line
    assert list(sample_lines(iter(lines), 1000, 1)) == lines
    sample = list(sample_lines(iter(lines), 100, 7))
    assert len(sample) == 100 == len(set(sample))
    assert sample == sorted(sample, key=lines.index)  # in the corpus's order
    assert list(sample_lines(iter(lines), 100, 7)) == sample
    assert list(sample_lines(iter(lines), 100, 8)) != sample
    # Uniform: over many seeds, each tenth of the corpus holds about a tenth of the sample.
    tenths = [0] * 10
    for seed in range(200):
        for line in sample_lines(iter(lines), 100, seed):
            tenths[int(line.split()[1]) // 100] += 1
    assert all(1700 < count < 2300 for count in tenths), tenths


def test_a_long_line_is_cut_at_spaces_into_parts_that_fit():
    from lm.tokenizer import _parts_of_at_most

    assert list(_parts_of_at_most("aaa bbb ccc", 7)) == ["aaa bbb", "ccc"]
    assert list(_parts_of_at_most("abcdefgh", 3)) == ["abc", "def", "gh"]
    assert list(_parts_of_at_most("ééé", 3)) == ["é", "é", "é"]  # never inside a character
    assert list(_parts_of_at_most("short", 16)) == ["short"]
    # A run of spaces longer than a part is no part of its own: nothing to learn from.
    assert list(_parts_of_at_most("a" + " " * 30 + "b", 10)) == ["a" + " " * 9, " " * 9 + "b"]


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_a_tokenizer_is_the_same_file_on_any_machine_and_any_thread_setting(kind, monkeypatch):
    """SentencePiece trained on one thread per core and wrote the count into the model, and a
    unigram model's scores depend on it: another machine made another tokenizer digest."""
    from tests.helpers import prose

    documents = [prose(index, 200) for index in range(60)]
    digests = set()
    for cores, threads in ((2, 0), (8, 0), (2, 3)):
        monkeypatch.setattr(lm.tokenizer.os, "cpu_count", lambda cores=cores: cores)
        settings = TokenizerConfig(kind=kind, vocab_size=400, threads=threads)
        digests.add(train_tokenizer(iter(documents), settings).digest)
    assert len(digests) == 1


def test_the_pieces_a_config_cannot_repeat_are_those_the_tokenizer_defines():
    from lm.config import RESERVED_PIECES

    assert set(RESERVED_PIECES) == {lm.tokenizer.UNKNOWN, lm.tokenizer.END_OF_TEXT, "\n",
                                    lm.tokenizer.SPACE_SYMBOL_ESCAPE}  # fmt: skip


def test_a_val_document_the_char_tokenizer_refuses_is_named_by_the_statistics():
    """The tokenizer stage measures it on val before encode runs: it failed there with the
    characters alone, without the split and document that encode names."""
    tokenizer = train_tokenizer(
        iter(["abc abc"]), TokenizerConfig(kind="char", unknown_chars="error")
    )
    with pytest.raises(TokenizerError, match=r"first met in a val document starting 'ab€"):
        tokenizer_statistics(tokenizer, [["abc", "ab€ more"]])


@pytest.mark.parametrize(
    "document",
    ["[1]", '{"chars": 5, "unknown_chars": "unk"}', '{"chars": ["ab"], "unknown_chars": "unk"}',
     '{"chars": ["a"], "unknown_chars": "maybe"}'],
)  # fmt: skip
def test_a_char_tokenizer_file_of_the_wrong_shape_is_named_not_a_type_error(tmp_path, document):
    """Valid JSON of another shape raised TypeError, which the callers that look for a
    tokenizer among candidate folders (a continued model's) do not expect."""
    from lm.tokenizer import TokenizerError, load_tokenizer

    train_tokenizer(["abc"], TokenizerConfig(kind="char")).save(tmp_path)
    (tmp_path / "tokenizer.json").write_text(document)
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: not a valid character tokenizer"):
        load_tokenizer(tmp_path)


def test_a_tokenizer_comparison_lays_out_documents_as_the_encode_stage_and_warms_up_briefly():
    """Each document ends with the end-of-text id, as in a shard (without, the documents ran
    together and `samples = "documents"` found none); a short comparison warms up for a fifth
    of its steps at most, so that it reaches its peak learning rate."""
    from lm.tokenizer_bpb import comparison_train_settings, encode_documents
    from lm.train_config import TrainConfig

    class Lengths:  # what encode_documents asks of a tokenizer
        eot_id = 9

        def encode_batch(self, texts: list[str]) -> list[list[int]]:
            return [[len(text)] * len(text) for text in texts]

    assert encode_documents(Lengths(), [["ab", "c"], ["dd"]]).tolist() == [2, 2, 9, 1, 9, 2, 2, 9]
    assert encode_documents(Lengths(), []).tolist() == []
    short = comparison_train_settings(TrainConfig(warmup_steps=100), 50)
    assert (short.max_steps, short.warmup_steps, short.eval_every) == (50, 10, 50)
    assert comparison_train_settings(TrainConfig(warmup_steps=3), 50).warmup_steps == 3
