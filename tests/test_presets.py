"""The names and Shakespeare presets, and the ordered (nanoGPT) split they rely on.

The data stages run through their real stage functions (`task.fn`: real Parquet, real
tokenizer, real shards) without the Prefect engine.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from lm.config import ConfigError, SplitConfig, load_config
from lm.text.clean import split_of
from lm.text.normalize import normalize_text
from lm.text.sources import InputError, resolve_sources
from lm.token_bytes import PieceBytes
from storage.artifacts import Descriptor
from storage.shards import OrderedSplitter, open_shard, ordered_boundaries, read_shard_info
from tests.helpers import prose, write_config

ORDERED = '[split]\nmethod = "ordered"\nval = 0.2\ntest = 0.1\n'


def data_stages(settings):
    """ingest → clean → tokenizer → encode, as the flow chains them; returns the descriptors."""
    from tasks.clean import clean_task
    from tasks.encode import encode_task
    from tasks.ingest import ingest_task
    from tasks.tokenizer import tokenizer_task

    raw = ingest_task.fn(settings.ingest)
    corpus = clean_task.fn(raw, settings.clean, settings.split)
    tokenizer = tokenizer_task.fn(corpus, settings.tokenizer, settings.split)
    return corpus, tokenizer, encode_task.fn(corpus, tokenizer, settings.split)


def shard_arrays(workspace, shards: Descriptor, tokenizer: Descriptor) -> dict[str, np.ndarray]:
    folder = workspace.resolve(shards.path)
    return {
        split: np.asarray(open_shard(folder / f"{split}.bin", tokenizer.digest)[0])
        for split in ("train", "val", "test")
    }


def loaded_tokenizer(workspace, tokenizer: Descriptor):
    from lm.tokenizer import load_tokenizer

    return load_tokenizer(workspace.resolve(tokenizer.path))


# -- the ordered split ---------------------------------------------------------------------


def test_ordered_split_cuts_one_document_by_position_into_a_prefix_and_the_rest(
    workspace, tmp_path
):
    text = prose(7, 400)
    assert split_of(hashlib.sha256(text.encode()).hexdigest(), SplitConfig()) == "train", (
        "the tokenizer stage learns from the hash-train documents: pick a text that lands there"
    )
    (tmp_path / "book.txt").write_text(text)
    settings = load_config(
        str(write_config(tmp_path / "c.toml", [{"path": str(tmp_path / "book.txt")}], ORDERED))
    )
    _, tokenizer, shards = data_stages(settings)
    stream = np.asarray(loaded_tokenizer(workspace, tokenizer).encode(normalize_text(text)))
    parts = shard_arrays(workspace, shards, tokenizer)
    total = len(stream)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [
        int(total * 0.7), int(total * 0.9) - int(total * 0.7), total - int(total * 0.9)
    ]  # fmt: skip
    assert np.array_equal(parts["train"], stream[: len(parts["train"])])
    assert np.array_equal(np.concatenate(list(parts.values())), stream)
    folder = workspace.resolve(shards.path)
    infos = {s: read_shard_info(folder / f"{s}.bin") for s in parts}
    assert {info.split_method for info in infos.values()} == {"ordered"}
    assert [info.documents for info in infos.values()] == [1, 1, 1]
    assert sum(info.text_bytes for info in infos.values()) == len(normalize_text(text).encode())
    assert shards.stats["split_method"] == "ordered"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_under_an_ordered_split_the_tokenizer_learns_from_the_head_of_the_stream(
    workspace, tmp_path, kind
):
    """Every document is labelled train until encode cuts the stream: the tokenizer must still
    learn from the train part only, or the held-out tail shapes its vocabulary."""
    head = prose(3, 1500)
    tail = " ".join(["zyqwx§"] * 300)  # only in the last 30 %: a character and a word
    (tmp_path / "book.txt").write_text(head + "\n" + tail)
    settings = load_config(
        str(write_config(tmp_path / "c.toml", [{"path": str(tmp_path / "book.txt")}], ORDERED)),
        ["clean.quality.enabled=false",
         f'tokenizer={{kind="{kind}"{", vocab_size=500" if kind == "bpe" else ""}}}'],
    )  # fmt: skip
    assert len(tail.encode()) < 0.3 * len((head + "\n" + tail).encode())
    corpus, tokenizer, _ = data_stages(settings)
    assert corpus.stats["kept"] == 1  # the tail is in the corpus, in the stream's test part
    model = loaded_tokenizer(workspace, tokenizer)
    pieces = [model.piece(i) for i in range(model.vocab_size)]
    assert not any("§" in piece or "zyq" in piece for piece in pieces)
    assert any("th" in piece for piece in pieces) or kind == "char"


def test_ordered_split_ignores_the_hash_split_and_keeps_corpus_order(workspace, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    texts = [prose(seed, 40) for seed in range(12)]
    for index, text in enumerate(texts):
        (folder / f"{index:02d}.txt").write_text(text)
    hashed = {split_of(hashlib.sha256(t.encode()).hexdigest(), SplitConfig(val=0.2, test=0.1))
              for t in texts}  # fmt: skip
    assert hashed == {"train", "val", "test"}, "the corpus should have hash-val and -test texts"
    settings = load_config(str(write_config(tmp_path / "c.toml", [{"path": str(folder)}], ORDERED)))
    _, tokenizer, shards = data_stages(settings)
    model = loaded_tokenizer(workspace, tokenizer)
    expected = []
    for index, text in enumerate(texts):  # end-of-text between documents, not after the last
        expected += ([model.eot_id] if index else []) + model.encode(text)
    parts = shard_arrays(workspace, shards, tokenizer)
    assert np.concatenate(list(parts.values())).tolist() == expected
    assert len(parts["train"]) == int(len(expected) * 0.7)


def test_encoding_runs_on_the_threads_tokenizer_threads_asks_for(workspace, tmp_path, monkeypatch):
    """`tokenizer.threads` ("encoding threads") reached the tokenizer stage's statistics only:
    encode loaded the tokenizer on every core."""
    import tasks.encode
    from flows.pipeline import encode_corpus

    (tmp_path / "book.txt").write_text(prose(5, 400))
    settings = load_config(
        str(write_config(tmp_path / "c.toml", [{"path": str(tmp_path / "book.txt")}])),
        ['tokenizer={kind="bpe", vocab_size=300, threads=1}'],
    )
    corpus, tokenizer, _ = data_stages(settings)
    loaded = []
    real_load = tasks.encode.load_tokenizer
    monkeypatch.setattr(
        tasks.encode,
        "load_tokenizer",
        lambda folder, threads=0: loaded.append(threads) or real_load(folder),
    )
    monkeypatch.setattr(
        "flows.pipeline.run_stage",
        lambda run, task, key, store, stage_name=None, **kw: task.fn(**kw),
    )
    shutil.rmtree(workspace.artifacts / "shards")  # encoded again, here
    encode_corpus(SimpleNamespace(workspace=workspace), settings, corpus, tokenizer)
    assert loaded == [1]


def test_moving_documents_between_hash_splits_is_a_new_corpus_and_tokenizer(workspace, tmp_path):
    """The corpus digest is the tokenizer stage's only input under a hash split: a digest
    blind to the documents' splits would keep a tokenizer trained on the old train part."""
    from tasks.tokenizer import tokenizer_key

    folder = tmp_path / "texts"
    folder.mkdir()
    for index in range(12):
        (folder / f"{index}.txt").write_text(prose(index, 40))
    config = str(write_config(tmp_path / "c.toml", [{"path": str(folder)}]))
    corpora = {}
    for val in (0.1, 0.4):
        settings = load_config(config, [f"split.val={val}", "split.test=0.1"])
        corpus, _, _ = data_stages(settings)
        corpora[val] = corpus
        keys = tokenizer_key(corpus, settings.tokenizer, settings.split)
    assert corpora[0.1].stats["split_documents"] != corpora[0.4].stats["split_documents"]
    assert corpora[0.1].digest != corpora[0.4].digest
    assert keys != tokenizer_key(corpora[0.1], settings.tokenizer, settings.split)


def test_hash_split_shards_are_marked_hash(workspace, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for index in range(6):
        (folder / f"{index}.txt").write_text(prose(index, 40))
    settings = load_config(str(write_config(tmp_path / "c.toml", [{"path": str(folder)}])))
    _, _, shards = data_stages(settings)
    assert read_shard_info(workspace.resolve(shards.path) / "train.bin").split_method == "hash"
    assert shards.stats["split_method"] == "hash"


def test_shuffle_lists_each_split_in_doc_id_order_not_file_order(workspace, tmp_path):
    names = sorted({prose(seed, 1).split()[0].lower() + str(seed) for seed in range(60)})
    (tmp_path / "names.txt").write_text("\n".join(names))
    source = [{"path": str(tmp_path / "names.txt"), "one_doc_per_line": True}]
    extra = "[split]\nshuffle = true\nval = 0.2\ntest = 0.2\n"
    config = write_config(tmp_path / "c.toml", source, extra)
    settings = load_config(str(config), ["clean.quality.enabled=false"])
    _, tokenizer, shards = data_stages(settings)
    model = loaded_tokenizer(workspace, tokenizer)
    for split, tokens in shard_arrays(workspace, shards, tokenizer).items():
        listed = _documents(model, tokens)
        in_split = [n for n in names if split_of(hashlib.sha256(n.encode()).hexdigest(),
                                                 settings.split) == split]  # fmt: skip
        assert listed == sorted(in_split, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
        assert listed != sorted(in_split) or len(listed) < 3


def test_shuffle_with_the_ordered_split_is_refused():
    with pytest.raises(ValueError, match=r"split\.shuffle applies to hash and random"):
        SplitConfig(method="ordered", shuffle=True)


def _documents(model, tokens: np.ndarray) -> list[str]:
    ends = np.flatnonzero(tokens == model.eot_id)
    starts = np.r_[0, ends[:-1] + 1]
    return [model.decode(tokens[a:b].tolist()) for a, b in zip(starts, ends, strict=True)]


def test_encode_cache_key_follows_the_split_settings():
    from tasks.encode import encode_key

    corpus = Descriptor("clean", "k", "corpus/k", "c" * 64)
    tokenizer = Descriptor("tokenizer", "t", "artifacts/tokenizer/t", "t" * 64)
    keys = {
        encode_key(corpus, tokenizer, split)
        for split in (
            SplitConfig(),
            SplitConfig(method="ordered"),
            SplitConfig(method="ordered", val=0.1, test=0.0),
            SplitConfig(shuffle=True),
        )
    }
    assert len(keys) == 4


@pytest.mark.parametrize("text", ["Small words and longer sentences " * 20, "漢字かな交じり" * 20],
                         ids=["before-a-word", "inside-a-character"])  # fmt: skip
def test_the_parts_of_a_document_cut_anywhere_add_up_to_its_bytes(tmp_path, text):
    """Decoding a part misjudged its bytes: a part that starts with a `▁word` piece lost the
    space (read as the dummy prefix), and a character cut between its byte pieces decoded to
    U+FFFD (3 bytes for each dangling byte)."""
    from lm.config import TokenizerConfig
    from lm.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([prose(seed, 200) for seed in range(5)],
                                TokenizerConfig(kind="bpe", vocab_size=300))  # fmt: skip
    ids = tokenizer.encode(text)
    start_bytes = PieceBytes.of(tokenizer).of_document_start
    for val in (0.31, 0.5, 0.77, 0.93):
        folder = tmp_path / str(val)
        folder.mkdir()
        splitter = OrderedSplitter(folder, "d" * 64, tokenizer.eot_id, tokenizer.vocab_size)
        splitter.write(ids, len(text.encode()))
        infos = splitter.cut(val=val, test=0.0, start_bytes=start_bytes)
        train, rest = infos["train"].tokens, ids[infos["train"].tokens :]
        assert infos["train"].text_bytes + infos["val"].text_bytes == len(text.encode())
        if text.isascii():  # the pieces spell the text, "▁" a space, less the dummy prefix
            spelled = "".join(tokenizer.piece(i) for i in ids[:train]).replace("▁", " ")
            assert infos["train"].text_bytes == len(spelled) - 1
            assert not tokenizer.decode(rest).startswith(" ")  # decoding a part lost a space
        if not text.isascii():  # every character spelled by byte pieces, after one "▁"
            assert ids[0] == tokenizer.encode(" ")[0] and len(ids) == len(text.encode()) + 1
            assert infos["val"].text_bytes == infos["val"].tokens  # a byte each, however cut


def test_a_document_cut_by_a_boundary_counts_its_bytes_on_each_side(tmp_path):
    from lm.tokenizer import CharTokenizer

    tokenizer = CharTokenizer(list("aéz€ "))
    splitter = OrderedSplitter(tmp_path, "d" * 64, tokenizer.eot_id, tokenizer.vocab_size)
    documents = ["éé€€ zz", "a€a"]  # 7 + 3 characters, 13 + 5 bytes, one separator
    for text in documents:
        splitter.write(tokenizer.encode(text), len(text.encode()))
    infos = splitter.cut(val=0.5, test=0.0, start_bytes=PieceBytes.of(tokenizer).of_document_start)
    assert ordered_boundaries(18, 0.5, 0.0) == (9, 18)  # cut at byte 9 of 18, inside "€"
    # train: "éé€€" (2 + 2 + 3 + 3 bytes, the "€" the cut falls in); val: " zz", the
    # separator, "a€a"
    assert (infos["train"].tokens, infos["train"].text_bytes, infos["train"].documents) == (
        4,
        10,
        1,
    )
    assert (infos["val"].tokens, infos["val"].text_bytes, infos["val"].documents) == (7, 8, 2)
    assert (infos["test"].tokens, infos["test"].documents) == (0, 0)
    assert not list(tmp_path.glob("*.partial-*")), "the temporary stream is removed"


def test_an_ordered_split_holds_out_the_same_text_whatever_the_tokenizer(tmp_path):
    """The stream was cut at a fraction of its tokens: another stretch of text for each
    tokenizer. Prose, then lines a BPE tokenizer trained on the prose spells in many more
    tokens a byte: its cut moved thousands of bytes into them, so its model trained on text
    the character model was scored on, and the two were scored on different text."""
    from lm.config import TokenizerConfig
    from lm.tokenizer import train_tokenizer

    texts = [prose(seed, 300) for seed in range(8)]
    rng = np.random.default_rng(0)
    texts += ["\n".join("".join(rng.choice(list("qxzjkvw"), 7)) for _ in range(400))
              for _ in range(2)]  # fmt: skip
    total = sum(len(text.encode()) for text in texts)
    train_end, val_end = ordered_boundaries(total, 0.1, 0.1)
    for kind, config in (("bpe", TokenizerConfig(kind="bpe", vocab_size=400)),
                         ("char", TokenizerConfig(kind="char"))):  # fmt: skip
        tokenizer = train_tokenizer(texts[:8], config)
        folder = tmp_path / kind
        folder.mkdir()
        splitter = OrderedSplitter(folder, "d" * 64, tokenizer.eot_id, tokenizer.vocab_size)
        for text in texts:
            splitter.write(tokenizer.encode(text), len(text.encode()))
        infos = splitter.cut(val=0.1, test=0.1,
                             start_bytes=PieceBytes.of(tokenizer).of_document_start)  # fmt: skip
        longest = max(len(tokenizer.piece(i).encode()) for i in range(tokenizer.vocab_size))
        train = infos["train"].text_bytes
        held_out = infos["train"].text_bytes + infos["val"].text_bytes
        assert 0 <= train - train_end < longest, (kind, train, train_end)
        assert 0 <= held_out - val_end < longest, (kind, held_out, val_end)


def test_the_shards_and_the_tokenizer_stage_cut_an_ordered_corpus_at_the_same_byte(tmp_path):
    """The shards floored `n * (1 - 0.05 - 0.05)` (0.8999…: byte 899 of 1,000) while the
    tokenizer stage rounded it (900): the tokenizer learned from a byte of the val shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lm.config import SplitConfig
    from storage.corpus import DOCUMENTS_FILE, iter_split_part

    text = "abcdefghij" * 100
    path = tmp_path / DOCUMENTS_FILE
    pq.write_table(pa.table({"text": [text], "split": ["train"], "keep": [True]}), path)
    split = SplitConfig(method="ordered", val=0.05, test=0.05)
    train = "".join(t for batch in iter_split_part(path, "train", split) for t in batch)
    assert ordered_boundaries(1000, 0.05, 0.05) == (900, 950) == (len(train), 950)
    assert ordered_boundaries(1115394, 0.1, 0.0) == (int(1115394 * 0.9), 1115394)  # nanoGPT's


def test_an_ordered_cut_in_text_spelled_as_unk_is_said_to_be_placed_late(tmp_path):
    """A char tokenizer trained on the English head of a text spells its Russian tail as
    `<unk>`, each counted 1 byte: the cut lands past its byte, unseen."""
    from lm.config import TokenizerConfig
    from lm.tokenizer import train_tokenizer
    from tests.helpers import warnings_said_by

    text = "the head of the text\n" * 40 + "хвост текста " * 40
    tokenizer = train_tokenizer([text[:800]], TokenizerConfig(kind="char"))
    splitter = OrderedSplitter(tmp_path, "d" * 64, tokenizer.eot_id, tokenizer.vocab_size)
    splitter.write(tokenizer.encode(text), len(text.encode()))
    with warnings_said_by("storage.shards") as said:
        splitter.cut(val=0.0, test=0.2, start_bytes=PieceBytes.of(tokenizer).of_document_start)
    assert any("holds text its tokenizer spells as <unk>" in line for line in said), said


def test_an_empty_ordered_part_counts_no_document(tmp_path):
    """val = 0 with the cut inside a document: the val shard held 0 tokens and 1 document."""
    from lm.config import TokenizerConfig
    from lm.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["abcdefghij"], TokenizerConfig(kind="char"))
    splitter = OrderedSplitter(tmp_path, "d" * 64, tokenizer.eot_id, tokenizer.vocab_size)
    for text in ("abc", "defg", "hij"):
        splitter.write(tokenizer.encode(text), len(text.encode()))
    infos = splitter.cut(val=0.0, test=0.1, start_bytes=PieceBytes.of(tokenizer).of_document_start)
    assert (infos["val"].tokens, infos["val"].text_bytes, infos["val"].documents) == (0, 0, 0)
    assert (infos["test"].tokens, infos["test"].documents) == (1, 1)


# -- the presets ---------------------------------------------------------------------------


def test_names_preset_trains_the_ladder_on_an_80_10_10_hash_split():
    settings = load_config("names")
    assert [run.model.kind for run in settings.model_runs()] == [
        "bigram-count", "bigram", "mlp", "gpt"
    ]  # fmt: skip
    assert (settings.split.method, settings.split.val, settings.split.test) == ("hash", 0.1, 0.1)
    assert settings.tokenizer.kind == "char" and not settings.word2vec.enabled
    mlp = next(run for run in settings.model_runs() if run.model.kind == "mlp")
    assert mlp.train.learning_rate != settings.train.learning_rate, "per-model train overrides"
    # makemore's regime: one name per row, from its start mark.
    assert all(run.train.samples == "documents" for run in settings.model_runs())
    gpt = next(run for run in settings.model_runs() if run.model.kind == "gpt")
    assert gpt.model.block_size >= 16 and gpt.train.ema_decay > 0


def test_the_run_seed_seeds_every_model_unless_train_sets_its_own():
    assert [run.train.seed for run in load_config("names", ["seed=7"]).model_runs()] == [7] * 4
    settings = load_config("shakespeare", ["seed=7", "train.seed=9"])
    assert (settings.seed, settings.train.seed) == (7, 9)


def test_an_override_can_reach_one_entry_of_the_ladder_by_its_index():
    settings = load_config("names", ["models.3.dropout=0.15", "models.3.train.max_steps=12000"])
    gpt, mlp = settings.model_runs()[3], settings.model_runs()[2]
    assert gpt.model.kind == "gpt" and gpt.model.dropout == 0.15
    assert gpt.train.max_steps == 12000 and mlp.train.max_steps != 12000
    with pytest.raises(ConfigError, match=r"'7' is not an entry of that array .*it has 4"):
        load_config("names", ["models.7.dropout=0.1"])
    with pytest.raises(ConfigError, match="'gpt' is not an entry"):
        load_config("names", ["models.gpt.dropout=0.1"])
    with pytest.raises(ConfigError, match=r"default\.toml has no array 'models' to take an entry"):
        load_config("default", ["models.0.kind=gpt"])
    with pytest.raises(ConfigError, match=r"ablation seeds must differ: \[1, 1, 2\]"):
        load_config("ablation", ["ablation.seeds=[1, 1, 2]"])


def test_names_preset_keeps_every_distinct_census_first_name(workspace):
    from lm.text.census_names import census_names_file

    settings = load_config("names")
    corpus, tokenizer, shards = data_stages(settings)
    lists = [census_names_file(name) for name in ("dist.female.first", "dist.male.first")]
    names = [line.split()[0].lower() for path in lists for line in path.read_text().splitlines()]
    assert corpus.stats["kept"] == len(set(names)) < len(names)  # names in both lists kept once
    model = loaded_tokenizer(workspace, tokenizer)
    assert model.vocab_size == 27  # a-z and end-of-text: makemore's table
    counts = shards.stats["splits"]
    assert sum(s["documents"] for s in counts.values()) == len(set(names))
    assert 0.7 < counts["train"]["documents"] / len(set(names)) < 0.9


def test_shakespeare_preset_is_nanogpts_cpu_shape():
    settings = load_config("shakespeare")
    model, train = settings.model, settings.train
    assert (settings.split.method, settings.split.val, settings.split.test) == ("ordered", 0.1, 0.0)
    assert (model.kind, model.n_layer, model.n_head, model.n_embd, model.block_size) == (
        "gpt", 4, 4, 128, 64
    )  # fmt: skip
    assert (model.dropout, model.bias, model.tie_embeddings) == (0.0, False, True)
    assert (model.pos, model.mlp, model.norm) == ("rope", "swiglu", "rmsnorm")  # today's parts
    assert (train.micro_batch, train.global_batch, train.max_steps, train.warmup_steps) == (
        12, 12, 2000, 100
    )  # fmt: skip
    assert (train.learning_rate, train.learning_rate * train.min_lr_ratio, train.beta2) == (
        pytest.approx(1e-3), pytest.approx(1e-4), 0.99
    )  # fmt: skip


def test_shakespeare_preset_without_its_text_names_the_missing_file(tmp_path):
    missing = tmp_path / "tinyshakespeare.txt"
    settings = load_config("shakespeare", [f'ingest.sources=["{missing}"]'])
    with pytest.raises(InputError, match=r"tinyshakespeare\.txt: no such file or directory"):
        resolve_sources(settings.ingest.sources)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.learning_rate=true",
         "'train.learning_rate': Input should be a valid number, not the boolean true"),
        ('train.compile="yes"', "'train.compile': Input should be a valid boolean or Input "
         "should be 'auto', not the string \"yes\", from --set"),
        ("model.bias=1", "'model.bias': Input should be a valid boolean, not the integer 1"),
        ('train.max_steps="100"',
         "'train.max_steps': Input should be a valid integer, not the string \"100\""),
        ("model.n_layer=1.5", "'model.n_layer': Input should be a valid integer, not the float"),
        ('tokenizer.kind=["bpe"]',
         "'tokenizer.kind': Input should be 'bpe', 'unigram' or 'char', not an array"),
        ('train.precision="fp16"',
         "'train.precision': Input should be 'auto', 'fp32' or 'bf16', not the string \"fp16\""),
        ("name=true", "'name': Input should be a valid string, not the boolean true"),
    ],
)  # fmt: skip
def test_a_value_of_the_wrong_type_is_refused_not_converted(override, expected):
    # Lax validation read `true` as a learning rate of 1.0 and "yes" or 1 as True; and
    # pydantic's "Input should be a valid integer" of `n_layer = "2"` did not show the value
    # (the quotes that make it a string are easy to miss).
    with pytest.raises(ConfigError, match=r"default\.toml: " + re.escape(expected)):
        load_config("default", [override])
    assert load_config("default", ["train.learning_rate=1"]).train.learning_rate == 1.0
