"""Tokenizers and token shards: lossless round trips, digests, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from lm.config import TokenizerConfig, load_config
from lm.tokenizer import CharTokenizer, TokenizerError, load_tokenizer, train_tokenizer
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


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_every_val_document_round_trips_exactly(bundled_splits, kind):
    tokenizer = train_tokenizer(
        iter(bundled_splits["train"]), TokenizerConfig(kind=kind, vocab_size=2000)
    )
    val = bundled_splits["val"]
    assert any(any(ord(c) > 127 for c in text) for text in val), "val has non-ASCII text"
    decoded = [tokenizer.decode(ids) for ids in tokenizer.encode_batch(val)]
    assert decoded == val
    assert tokenizer.eot_id not in {i for ids in tokenizer.encode_batch(val) for i in ids}


def test_unseen_characters_fall_back_to_bytes_and_still_round_trip(bundled_splits):
    tokenizer = train_tokenizer(iter(bundled_splits["train"]), TokenizerConfig(vocab_size=1000))
    text = "Snow ☃ and 🎉 in 日本語, ünïcödé\n\n  spaced  "
    assert tokenizer.decode(tokenizer.encode(text)) == text
    stats = tokenizer_statistics(tokenizer, [[text]])
    assert stats["byte_fallback_rate"] > 0


def test_statistics_on_val(bundled_splits):
    tokenizer = train_tokenizer(iter(bundled_splits["train"]), TokenizerConfig(vocab_size=2000))
    stats = tokenizer_statistics(tokenizer, [bundled_splits["val"]])
    assert 2.0 < stats["bytes_per_token"] < 6.0
    assert 0.5 < stats["vocab_used_fraction"] <= 1.0
    assert len(stats["longest_pieces"]) == 10
    longest = stats["longest_pieces"][0]
    assert all(len(longest) >= len(tokenizer.piece(i)) for i in range(tokenizer.vocab_size))


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


def test_vocabulary_too_large_for_the_corpus_says_the_largest_possible():
    texts = ["the cat sat on the mat", "a dog ran in the park"] * 20
    with pytest.raises(TokenizerError, match=r"vocab_size 50000 is more than .* is \d+"):
        train_tokenizer(iter(texts), TokenizerConfig(vocab_size=50000))


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_empty_training_split_is_a_clear_error(kind):
    with pytest.raises(TokenizerError, match="the training split is empty"):
        train_tokenizer(iter([]), TokenizerConfig(kind=kind))


def test_char_tokenizer_takes_its_vocabulary_from_the_data():
    tokenizer = train_tokenizer(iter(["emma", "olivia", "ava"]), TokenizerConfig(kind="char"))
    assert sorted(tokenizer.chars) == sorted(set("emmaoliviaava"))
    assert tokenizer.chars[0] == "a"  # the most frequent character gets id 0
    assert tokenizer.decode(tokenizer.encode("maval")) == "maval"
    assert tokenizer.vocab_size == len(tokenizer.chars) + 2  # end-of-text and <unk>


def test_char_tokenizer_unseen_character_policies():
    unk = CharTokenizer(list("ab"), "unk")
    assert unk.decode(unk.encode("abz")) == "ab<unk>"
    lossless = CharTokenizer(list("ab"), "bytes")
    assert lossless.decode(lossless.encode("a☃b")) == "a☃b"
    strict = CharTokenizer(list("ab"), "error")
    with pytest.raises(TokenizerError, match="characters not in the vocabulary: 'xz'"):
        strict.encode("axbz")


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
