"""word2vec: reproducible training, evaluation on gensim's sets, probes and the projection."""

from __future__ import annotations

import itertools
import logging
import re
import subprocess
import sys

import pytest

from lm.config import Word2VecConfig
from lm.word2vec import (
    Word2VecError,
    evaluate_vectors,
    plot_projection,
    train_word2vec,
    word_sentences,
)
from tests.conftest import REPO
from tests.helpers import prose

SMALL = Word2VecConfig(vector_size=16, epochs=2, min_count=1, probes=["river", "zzzunseen"])


def small_sentences() -> list[list[str]]:
    return [words for i in range(60) for words in word_sentences(prose(i, 80))]


def test_training_is_identical_across_processes_with_one_worker():
    script = (
        "import hashlib\n"
        "from lm.config import Word2VecConfig\n"
        "from lm.word2vec import train_word2vec\n"
        "from tests.test_word2vec import SMALL, small_sentences\n"
        "v = train_word2vec(small_sentences(), SMALL)\n"
        "print(hashlib.sha256(v.vectors.tobytes()).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        ).stdout.strip()
        for seed in ("1", "2")
    }  # fmt: skip
    assert len(digests) == 1, "Python's salted hash must not leak into the vectors"


def test_the_architecture_and_the_softmax_asked_for_are_those_trained():
    # CBOW and skip-gram, negative sampling and (negative = 0) hierarchical softmax: each
    # setting trains vectors of its own from the same seed.
    sentences = small_sentences()
    settings = [{}, {"architecture": "cbow"}, {"negative": 0}]
    trained = [train_word2vec(sentences, SMALL.model_copy(update=s)).vectors for s in settings]
    assert len({vectors.tobytes() for vectors in trained}) == 3


def test_evaluation_reports_every_set_and_warns_about_absent_probes(caplog):
    vectors = train_word2vec(small_sentences(), SMALL)
    with caplog.at_level(logging.WARNING, logger="lm.word2vec"):
        metrics = evaluate_vectors(vectors, SMALL)
    assert "probe word 'zzzunseen' is not in the vocabulary; skipped" in caplog.text
    assert list(metrics["neighbours"]) == ["river"] and len(metrics["neighbours"]["river"]) == 8
    for name in ("wordsim353", "simlex999"):
        assert 0.9 < metrics[f"{name}_oov_rate"] <= 1.0  # tiny vocabulary: most pairs unseen
    assert "analogy_accuracy" in metrics


def test_a_probe_is_found_as_written_among_pieces_and_lowercased_among_words():
    """Pieces keep the text's case (`▁Australia`): the probe was lowercased, then reported
    missing; and `australia` did not find `▁Australia`. Words are lowercase, so `River` finds
    `river` there."""
    sentences = [["▁" + word.capitalize() if i % 2 else "▁" + word for i, word in enumerate(s)]
                 for s in small_sentences()]  # fmt: skip
    pieces = train_word2vec(sentences, SMALL.model_copy(update={"input": "pieces"}))
    capitalised = next(k[1:] for k in pieces.index_to_key if k[1:2].isupper() and len(k) > 3)
    config = SMALL.model_copy(update={"input": "pieces", "probes": [capitalised]})
    assert list(evaluate_vectors(pieces, config)["neighbours"]) == [capitalised]
    # A lowercase probe finds a capitalised piece, as the evaluation sets match any case.
    named = train_word2vec(sentences + [["▁Zanzibar", "▁river", "▁bank"]] * 5,
                           SMALL.model_copy(update={"input": "pieces"}))  # fmt: skip
    config = SMALL.model_copy(update={"input": "pieces", "probes": ["zanzibar"]})
    assert list(evaluate_vectors(named, config)["neighbours"]) == ["Zanzibar"]
    words = train_word2vec(small_sentences(), SMALL)
    config = SMALL.model_copy(update={"probes": ["River"]})
    assert list(evaluate_vectors(words, config)["neighbours"]) == ["river"]


def test_a_probe_typed_decomposed_finds_the_composed_word_of_the_corpus():
    """The corpus is NFC (or NFKC); a probe typed as macOS input gives it (NFD) was absent."""
    sentences = small_sentences() + [["le", "caf\u00e9", "est", "ouvert", "river"]] * 5
    vectors = train_word2vec(sentences, SMALL)
    config = SMALL.model_copy(update={"probes": ["cafe\u0301", "CAFE\u0301"]})
    assert list(evaluate_vectors(vectors, config)["neighbours"]) == ["caf\u00e9"]


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_projection_is_a_png_with_the_probes(tmp_path, method):
    vectors = train_word2vec(small_sentences(), SMALL)
    neighbours = {"river": [w for w, _ in vectors.most_similar("river", topn=8)]}
    path = plot_projection(vectors, neighbours, method, tmp_path / "projection.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_labels_the_font_cannot_draw_are_one_warning_not_one_a_character(tmp_path, caplog):
    # matplotlib warned once a glyph: a Chinese probe put dozens of lines in the run's log.
    import warnings

    sentences = [["学生", "银行", "喜欢", "北京", "river", "bank"] * 3] * 30
    vectors = train_word2vec(sentences, SMALL.model_copy(update={"probes": []}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning left to pass on fails the test
        with caplog.at_level(logging.WARNING, logger="lm.word2vec"):
            plot_projection(vectors, {"学生": ["银行", "喜欢", "北京"]}, "pca", tmp_path / "p.png")
    said = [r.getMessage() for r in caplog.records if "font lacks" in r.getMessage()]
    # (None where the machine has a font with Chinese: matplotlib's own DejaVu Sans has none.)
    assert said in ([], ["word2vec: the projection's font lacks 8 character(s) of its labels "
                         "(学生银行喜欢北京), drawn as boxes"])  # fmt: skip


def test_the_missing_glyph_warnings_of_every_matplotlib_the_bounds_allow_are_gathered(caplog):
    """matplotlib before 3.9 ends its warning "missing from current font.", later ones "missing
    from font(s) DejaVu Sans.": pyproject allows both."""
    import warnings

    from lm.word2vec import _say_missing_glyphs

    caught = [
        warnings.WarningMessage(
            UserWarning(f"Glyph {ord(c)} ({c}) missing from {font}"), UserWarning, "text.py", 1
        )
        for c, font in (("学", "current font."), ("生", "font(s) DejaVu Sans."))
    ]
    with caplog.at_level(logging.WARNING, logger="lm.word2vec"):
        _say_missing_glyphs(caught)
    assert [r.getMessage() for r in caplog.records] == [
        "word2vec: the projection's font lacks 2 character(s) of its labels (学生), drawn as boxes"
    ]


def test_vocabulary_left_empty_by_min_count_is_a_clear_error():
    with pytest.raises(ValueError, match="no word occurs 1000 times"):
        train_word2vec(small_sentences(), Word2VecConfig(min_count=1000))


@pytest.mark.parametrize("one_pass", [iter, lambda s: (x for x in s)], ids=["iterator", "gen"])
def test_sentences_read_only_once_are_refused_not_trained_on_nothing(one_pass):
    # The vocabulary pass used an iterator up: the random initial vectors came back as trained
    # (a generator: gensim's TypeError after the vocabulary was built).
    with pytest.raises(Word2VecError, match="the sentences are an iterator"):
        train_word2vec(one_pass(small_sentences()), SMALL)


def test_a_line_longer_than_gensim_s_limit_is_cut_into_sentences_it_trains_whole():
    from lm.word2vec import GENSIM_MAX_SENTENCE, word_sentences

    words = ["".join(letters) for letters in itertools.product("abcdefghij", repeat=5)][:25_000]
    sentences = list(word_sentences(" ".join(words) + "\nlast line"))
    assert [len(s) for s in sentences] == [GENSIM_MAX_SENTENCE, GENSIM_MAX_SENTENCE, 5_000, 2]
    assert [word for sentence in sentences[:3] for word in sentence] == words


def test_words_keep_their_combining_marks_and_chinese_and_japanese_are_cut_by_character():
    # gensim's simple_preprocess cut Hindi and pointed Arabic into letters, and took a Chinese
    # clause for one word (dropped past 30 characters).
    from gensim.utils import simple_preprocess

    chinese = "我们今天天气很好，学生喜欢北京和东京的大学图书馆里面的书籍非常多。"
    said = f"लड़की सड़क नमस्ते\nمُدَرِّسَة\n{chinese}カタカナ"
    assert list(word_sentences(said)) == [
        ["लड़की", "सड़क", "नमस्ते"],
        ["مُدَرِّسَة"],
        [*"我们今天天气很好学生喜欢北京和东京的大学图书馆里面的书籍非常多", *"カタカナ"],
    ]
    # A joiner between letters is spelling (cleaning keeps it): Persian, a Hindi conjunct.
    joined = "می\u200cخواهم क्\u200dष 👩\u200d💻 \u200c"
    assert list(word_sentences(joined)) == [["می\u200cخواهم", "क्\u200dष"]]
    # Other text is cut as simple_preprocess cuts it (digits, `_`, case, 30 characters).
    text = "The Río foo_bar _x 1990s A3b co-op " + "x" * 31 + " " + "y" * 30 + "\n" + prose(3, 200)
    expected = [simple_preprocess(line, min_len=1, max_len=30) for line in text.split("\n")]
    assert list(word_sentences(text)) == expected


def test_piece_vectors_are_evaluated_by_their_whole_word_pieces():
    # SentencePiece marks a word's first piece with "▁"; the evaluation sets hold bare words.
    sentences = small_sentences() + [["tiger", "cat", "money", "bank", "love", "sex"]] * 20
    pieces = [["\u2581" + word for word in words] + ["ing"] for words in sentences]
    config = SMALL.model_copy(update={"input": "pieces"})
    metrics = evaluate_vectors(train_word2vec(pieces, config), config)
    words = evaluate_vectors(train_word2vec(sentences, SMALL), SMALL)
    assert list(metrics["neighbours"]) == ["river"]  # was: every probe "not in the vocabulary"
    assert not any(near.startswith("\u2581") for near in metrics["neighbours"]["river"])
    for name in ("wordsim353", "simlex999"):  # the same words are found as in word vectors
        assert metrics[f"{name}_oov_rate"] == words[f"{name}_oov_rate"]
    assert metrics["wordsim353_oov_rate"] < 1.0
    assert metrics["analogy_questions_answered"] == 0
    assert metrics["analogy_accuracy"] is None  # nothing answered is no score, not 0 %


def test_the_whole_word_view_holds_words_not_the_bare_space_piece():
    # "▁" alone (a space before a piece that does not start a word) stands for no word: as
    # the word "" it was a neighbour printed blank.
    import numpy as np
    from gensim.models import KeyedVectors

    from lm.word2vec import whole_word_view

    vectors = KeyedVectors(4)
    keys = ["\u2581", "\u2581river", "ing", "学生", "\u2581bank"]
    vectors.add_vectors(keys, np.eye(5, 4, dtype=np.float32))
    view = whole_word_view(vectors)
    assert view.index_to_key == ["river", "bank", "学生"]
    assert np.array_equal(view["bank"], vectors["\u2581bank"])


def test_chinese_pieces_are_words_and_a_piece_inside_words_is_said_to_be_one(caplog):
    # Written without spaces, only a document's first piece has "▁": the probe 学生 was "not
    # in the vocabulary" though its piece was trained; "ing" is in it, inside words only.
    sentences = [["▁river", "▁bank", "学生", "银行", "ing", "喜欢"] * 3] * 40
    config = SMALL.model_copy(update={"input": "pieces", "probes": ["学生", "ing", "zzz", "yy"]})
    with caplog.at_level(logging.WARNING, logger="lm.word2vec"):
        metrics = evaluate_vectors(train_word2vec(sentences, config), config)
    assert list(metrics["neighbours"]) == ["学生"]
    assert set(metrics["neighbours"]["学生"]) <= {"river", "bank", "银行", "喜欢"}
    said = [record.getMessage() for record in caplog.records]
    assert (
        "word2vec: probe word 'ing' is a piece only inside words, with no vector as a word "
        "of its own; skipped" in said
    )
    assert "word2vec: probe words 'zzz', 'yy' are not in the vocabulary; skipped" in said


@pytest.mark.parametrize("words", [["love", "sex"], ["tiger", "cat"], ["zzz"]])
def test_too_few_similarity_pairs_give_no_correlation_but_a_true_oov_rate(words, caplog):
    import numpy as np
    from gensim.models import KeyedVectors

    from lm.word2vec import _pairs_in_vocabulary, gensim_test_file

    vectors = KeyedVectors(4)
    vectors.add_vectors(words, np.random.default_rng(0).random((len(words), 4), dtype=np.float32))
    found, total = _pairs_in_vocabulary(vectors, gensim_test_file("wordsim353.tsv"))
    assert total == 353 and found == {"love": 1, "tiger": 2, "zzz": 0}[words[0]]
    with caplog.at_level(logging.WARNING, logger="lm.word2vec"):
        metrics = evaluate_vectors(vectors, SMALL)
    # Was: 1.0 (gensim raises for one pair as for none), and ±1 for two pairs.
    assert metrics["wordsim353_oov_rate"] == pytest.approx(1 - found / 353)
    assert metrics["wordsim353_spearman"] is None and metrics["wordsim353_pearson"] is None
    assert f"{found} of the 353 pairs of wordsim353" in caplog.text


def test_the_pair_count_agrees_with_gensim_s_own_oov_rate():
    import numpy as np
    from gensim.models import KeyedVectors

    from lm.word2vec import _pairs_in_vocabulary, gensim_test_file

    for file in ("wordsim353.tsv", "simlex999.txt"):
        path = gensim_test_file(file)
        rows = [line.split("\t") for line in path.read_text().splitlines()[2:40]]
        words = sorted({word.lower() for row in rows for word in row[:2]})[::2]  # some pairs
        vectors = KeyedVectors(4)
        vectors.add_vectors(words, np.random.default_rng(0).random((len(words), 4), np.float32))
        found, total = _pairs_in_vocabulary(vectors, path)
        _, _, oov = vectors.evaluate_word_pairs(str(path))
        assert found >= 3 and 1 - found / total == pytest.approx(oov / 100)


def test_training_logs_its_progress_within_each_epoch_with_rate_and_eta(caplog, monkeypatch):
    """A word2vec stage ran for minutes without a line (hours, on a large corpus); then a line
    an epoch left an epoch, and the vocabulary pass, silent."""
    import lm.word2vec

    monkeypatch.setattr(lm.word2vec, "PROGRESS_EVERY_S", 0.0)  # a line for every sentence read
    sentences = small_sentences()
    words = sum(map(len, sentences))
    with caplog.at_level(logging.INFO):
        train_word2vec(sentences, SMALL.model_copy(update={"epochs": 3}))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("word2vec")]
    vocabulary = [line for line in lines if line.startswith("word2vec: vocabulary: ")]
    assert len(vocabulary) == len(sentences) and f"{words:,} words," in vocabulary[-1]
    progress = [line for line in lines if "ETA" in line]
    first_epoch = [line for line in progress if int(line.split()[1].replace(",", "")) <= words]
    assert len(first_epoch) == len(sentences)  # a line a sentence, each epoch
    assert progress[0].startswith(f"word2vec: {len(sentences[0]):,} words / {3 * words:,} words")
    assert progress[-1].startswith(f"word2vec: {3 * words:,} words / {3 * words:,} words (100%)")


class _Planted:
    """A pickle that, once loaded, leaves a file behind: what a hostile `vectors` file runs."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_stored_vectors_round_trip_and_a_planted_pickle_is_refused_unrun(tmp_path):
    """gensim's `save` is a pickle: a file put in a shared workspace in place of the vectors
    ran its code as the run's user, before the digest could refuse it (h145)."""
    import pickle

    from gensim.models import KeyedVectors

    from lm.models.embeddings import (
        keys_file,
        load_keyed_vectors,
        save_keyed_vectors,
        vectors_digest,
    )

    vectors = KeyedVectors(4)
    words = ["\u2581the", " ", "\n", "é", "银行", "[end]"]  # pieces as tokenizers have them
    vectors.add_vectors(words, [[float(i), -1.5, 0.25, i / 3] for i in range(len(words))])
    path = tmp_path / "vectors.npy"
    save_keyed_vectors(vectors, path)
    loaded = load_keyed_vectors(path, vectors_digest(vectors))
    assert loaded.index_to_key == words and (loaded.vectors == vectors.vectors).all()
    assert loaded.vectors.dtype == vectors.vectors.dtype
    marker = tmp_path / "ran"
    path.write_bytes(pickle.dumps(_Planted(str(marker))))
    with pytest.raises(Word2VecError, match=re.escape(f"{path}: not readable as word2vec")):
        load_keyed_vectors(path, vectors_digest(vectors))
    assert not marker.exists()
    save_keyed_vectors(vectors, path)
    keys_file(path).write_text('["\\u2581the", " "]')  # fewer words than rows
    with pytest.raises(Word2VecError, match="2 distinct words for an array of"):
        load_keyed_vectors(path)


def test_stored_vectors_that_will_not_load_are_an_error_naming_the_file(tmp_path):
    # Damage its manifest cannot see (same size) was gensim's unpickling traceback.
    from storage.artifacts import Descriptor
    from storage.workspace import Workspace
    from tasks.word2vec import VECTORS, VECTORS_FILE, _stored_vectors, vectors_key, vectors_store

    workspace = Workspace(tmp_path).ensure()
    corpus = Descriptor(kind="corpus", key="c", path="corpus/c", digest="c" * 64, stats={})
    tokenizer = Descriptor(kind="tokenizer", key="t", path="tokenizer/t", digest="t" * 64, stats={})
    store, key = vectors_store(workspace), vectors_key(corpus, tokenizer, SMALL)
    with store.build(key) as staging:
        (staging / VECTORS_FILE).write_bytes(b"not an array")
        store.describe(staging, VECTORS, key, "d" * 64, {})
    path = store.directory(key) / VECTORS_FILE
    said = re.escape(f"{path}: not readable as word2vec vectors")
    with pytest.raises(Word2VecError, match=f"^{said}"):
        _stored_vectors(workspace, corpus, tokenizer, SMALL, None)


def test_analogies_are_scored_in_chunks_with_progress_as_gensim_scores_them_at_once(
    monkeypatch, caplog
):
    """Over a large vocabulary the 19,544 questions took a minute or more with no line said
    after word2vec's "100%"; scored a chunk at a time, the accuracy and the count answered are
    gensim's to the last question."""
    import numpy as np
    from gensim.models import KeyedVectors

    from lm import word2vec
    from lm.gensim_data import gensim_test_file

    questions = gensim_test_file(word2vec.ANALOGIES)
    lines = questions.read_text().splitlines()
    words = list(dict.fromkeys(w.lower() for line in lines if not line.startswith(":")
                               for w in line.split()))  # fmt: skip
    rng = np.random.default_rng(0)
    table = dict(zip(words, rng.normal(size=(len(words), 32)).astype(np.float32), strict=True))
    offset = rng.normal(size=32).astype(np.float32)
    for line in lines[1 : lines.index(": capital-world")]:  # a country is its capital + offset
        capital, country = line.lower().split()[:2]
        table[country] = table[capital] + offset
    vectors = KeyedVectors(vector_size=32)
    kept = words[: len(words) * 2 // 3]  # some questions out of the vocabulary
    vectors.add_vectors(kept, np.stack([table[word] for word in kept]))
    accuracy, sections = vectors.evaluate_word_analogies(str(questions))
    answered = len(sections[-1]["correct"]) + len(sections[-1]["incorrect"])
    assert 1000 < answered < 19_544 and 0.01 < accuracy < 0.5, (answered, accuracy)
    caplog.set_level(logging.INFO, "lm.progress")
    monkeypatch.setattr(word2vec, "ANALOGY_CHUNK", 700)
    assert word2vec.analogy_accuracy(vectors, questions) == (accuracy, answered)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("word2vec: ana")]
    assert said[-1].startswith("word2vec: analogies: 19,544 questions / 19,544 questions (100%)")
    assert word2vec.analogy_accuracy(KeyedVectors(vector_size=8), questions) == (None, 0)


def test_analogy_questions_before_any_section_are_refused_as_gensim_refuses_them(tmp_path):
    from gensim.models import KeyedVectors

    from lm.word2vec import analogy_accuracy

    questions = tmp_path / "questions.txt"
    questions.write_text("athens greece baghdad iraq\n: capitals\nathens greece rome italy\n")
    with pytest.raises(ValueError, match="Missing section header"):
        KeyedVectors(vector_size=4).evaluate_word_analogies(str(questions))
    with pytest.raises(ValueError, match="Missing section header"):
        analogy_accuracy(KeyedVectors(vector_size=4), questions)


def test_the_vectors_follow_the_corpus_s_text_not_where_its_files_were_read():
    """A moved input folder gives another corpus digest (sources are paths) and the same kept
    text: word2vec, keyed by the corpus digest, trained again (10 epochs by default) on it."""
    from storage.artifacts import Descriptor
    from tasks.word2vec import vectors_key, word2vec_key

    def corpus(digest: str, text: str | None) -> Descriptor:
        stats = {} if text is None else {"text_digest": text}
        return Descriptor(kind="corpus", key=digest, path="c", digest=digest, stats=stats)

    tokenizer = Descriptor(kind="tokenizer", key="t", path="t", digest="t" * 64, stats={})
    for key_of in (vectors_key, word2vec_key):
        here, moved = (key_of(corpus(d, "x" * 64), tokenizer, SMALL) for d in ("a" * 64, "b" * 64))
        assert here == moved
        assert key_of(corpus("a" * 64, "y" * 64), tokenizer, SMALL) != here  # other text
        # A corpus made before it recorded a text digest: keyed by its own digest, as it was.
        assert key_of(corpus("a" * 64, None), tokenizer, SMALL) != key_of(
            corpus("b" * 64, None), tokenizer, SMALL
        )


def test_stored_vectors_changed_in_place_are_an_error_naming_the_file(tmp_path, monkeypatch):
    # Bytes flipped inside vectors.npy keep its size (the manifest's check) and gensim loads
    # them: the vectors were evaluated, and cached again, under the digest of the originals.
    import tasks.word2vec
    from storage.artifacts import Descriptor
    from storage.workspace import Workspace
    from tasks.word2vec import VECTORS_FILE, _stored_vectors, vectors_store

    workspace = Workspace(tmp_path).ensure()
    corpus = Descriptor(kind="corpus", key="c", path="corpus/c", digest="c" * 64, stats={})
    tokenizer = Descriptor(kind="tokenizer", key="t", path="tokenizer/t", digest="t" * 64, stats={})
    monkeypatch.setattr(
        tasks.word2vec, "_train", lambda *a: train_word2vec(small_sentences(), SMALL)
    )
    vectors, stored = _stored_vectors(workspace, corpus, tokenizer, SMALL, None)
    again, _ = _stored_vectors(workspace, corpus, tokenizer, SMALL, None)  # intact: reused
    assert (again.vectors == vectors.vectors).all()
    path = vectors_store(workspace).directory(stored.key) / VECTORS_FILE
    changed = vectors.vectors.copy()
    changed[0, 0] += 1.0
    data = path.read_bytes()
    old, new = vectors.vectors[0, :2].tobytes(), changed[0, :2].tobytes()
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, new))
    said = re.escape(f"{path}: not the vectors written")
    with pytest.raises(Word2VecError, match=f"^{said}"):
        _stored_vectors(workspace, corpus, tokenizer, SMALL, None)


def test_piece_vectors_follow_the_tokenizer_and_word_vectors_do_not():
    """Vectors of the pieces of a tokenizer trained again (a new vocab_size) are vectors of
    other pieces: keyed without the tokenizer, the old ones were served to the models that read
    them. Vectors of words never see the tokenizer: a new one trained them again for nothing."""
    from storage.artifacts import Descriptor
    from tasks.word2vec import vectors_key, word2vec_key

    corpus = Descriptor(kind="corpus", key="c", path="c", digest="c" * 64, stats={})
    tokenizers = [Descriptor(kind="tokenizer", key=d, path="t", digest=d * 64, stats={})
                  for d in ("t", "u")]  # fmt: skip
    pieces = SMALL.model_copy(update={"input": "pieces"})
    for key_of in (vectors_key, word2vec_key):
        assert key_of(corpus, tokenizers[0], pieces) != key_of(corpus, tokenizers[1], pieces)
        assert key_of(corpus, tokenizers[0], SMALL) == key_of(corpus, tokenizers[1], SMALL)
        assert key_of(corpus, tokenizers[0], pieces) != key_of(corpus, tokenizers[0], SMALL)
    # Under an ordered split the shards' train part is the text: other shards, other vectors.
    shards = [Descriptor(kind="encode", key=d, path="s", digest=d * 64, stats={}) for d in "ab"]
    assert vectors_key(corpus, tokenizers[0], SMALL, shards[0]) != vectors_key(
        corpus, tokenizers[0], SMALL, shards[1]
    )
    # Probes only look at the vectors: the same vectors, evaluated again.
    probed = SMALL.model_copy(update={"probes": ["sea"], "neighbours": 3})
    assert vectors_key(corpus, tokenizers[0], probed) == vectors_key(corpus, tokenizers[0], SMALL)
    assert word2vec_key(corpus, tokenizers[0], probed) != word2vec_key(corpus, tokenizers[0], SMALL)


def test_every_setting_that_trains_the_vectors_is_in_their_key():
    """A training setting taken for one that only looks at the vectors (`EVALUATION_ONLY`)
    served the vectors of the old value: a new `word2vec.seed` kept the old vectors."""
    from storage.artifacts import Descriptor
    from tasks.word2vec import EVALUATION_ONLY, vectors_key

    corpus = Descriptor(kind="corpus", key="c", path="c", digest="c" * 64, stats={})
    tokenizer = Descriptor(kind="tokenizer", key="t", path="t", digest="t" * 64, stats={})
    training = {"architecture": "cbow", "vector_size": 32, "window": 3, "min_count": 2,
                "negative": 10, "epochs": 3, "workers": 2, "seed": 2,
                "input": "pieces"}  # fmt: skip
    assert set(Word2VecConfig.model_fields) == {*training, *EVALUATION_ONLY, "enabled"}
    key = vectors_key(corpus, tokenizer, SMALL)
    for name, value in training.items():
        assert vectors_key(corpus, tokenizer, SMALL.model_copy(update={name: value})) != key, name
