"""word2vec with gensim: training on a re-readable stream of sentences, and evaluation on the
standard sets gensim ships (analogies, WordSim353, SimLex-999), nearest neighbours of probe
words, and a labelled 2-D projection.

Sentences are words (lower-cased, cut much as `gensim.utils.simple_preprocess` cuts them) or
tokenizer pieces, one sentence per line of a document. The corpus is read again for every pass
gensim makes (vocabulary, then each epoch), so it is never held in memory. Training is reproducible
with one worker: gensim 4 draws the initial vectors and the negative samples from generators seeded
by `seed`. Its `hashfxn` (Python's `hash` by default, salted per process) seeds only vectors it
makes one at a time (`seeded_vector`, unused here); a stable hash is passed all the same, so a
vector made that way is reproducible too.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import unicodedata
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from lm.config import Word2VecConfig
from lm.gensim_data import gensim_test_file

logger = logging.getLogger("lm.word2vec")


class Word2VecError(ValueError):
    """Vectors that cannot be trained or used as asked; the message says what to change."""


ANALOGIES = "questions-words.txt"
SIMILARITY_SETS = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}


def stable_hash(text: str) -> int:
    return zlib.crc32(text.encode())


def word_sentences(text: str) -> Iterator[list[str]]:
    """A text's lines as lists of lowercased words; a line longer than gensim's limit is cut
    into sentences that fit it (see GENSIM_MAX_SENTENCE). A word is what gensim's
    `simple_preprocess` takes (a run of word characters but digits, at most 30 of them, not
    starting with `_`), with two changes for scripts it cuts apart: a combining mark, and a
    joiner between two letters, belong to their word (Hindi's vowel signs and Arabic's vowel
    points split every word into letters), and each Chinese or Japanese character is a word of
    its own (without spaces a whole clause was one word, and one over 30 characters was
    dropped)."""
    for line in text.split("\n"):
        words = [
            word
            for word in _words_pattern().findall(line.lower())
            if len(word) <= MAX_WORD and not word.startswith("_")
        ]
        for start in range(0, len(words), GENSIM_MAX_SENTENCE):
            yield words[start : start + GENSIM_MAX_SENTENCE]


MAX_WORD = 30  # simple_preprocess's max_len as lmforge has always called it
# Han ideographs (with extensions and compatibility forms), hiragana, katakana and half-width
# katakana: scripts written without spaces, where a character is the unit of meaning at hand.
_CHARACTER_WORDS = (
    "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
    "\U00020000-\U0003134f"
)

_WRITTEN_WITHOUT_SPACES = re.compile(f"[{_CHARACTER_WORDS}]+")


@functools.cache
def _words_pattern() -> re.Pattern[str]:
    """Built once a process: the combining marks (Unicode categories Mn, Mc, Me) are listed from
    `unicodedata`, which Python's `re` cannot name as a class."""
    marks, start = [], None
    for code in range(sys.maxunicode + 2):
        is_mark = code <= sys.maxunicode and unicodedata.category(chr(code))[0] == "M"
        if is_mark and start is None:
            start = code
        elif not is_mark and start is not None:
            marks.append(f"{re.escape(chr(start))}-{re.escape(chr(code - 1))}")
            start = None
    letter = rf"[^\W\d{_CHARACTER_WORDS}]|[{''.join(marks)}]"  # a word character but a digit
    # The zero-width non-joiner and joiner between letters are spelling, as cleaning keeps them
    # (Persian "می‌خواهم" is one word); between emoji, or alone, they make no word.
    joined = rf"(?:{letter})+(?:[\u200c\u200d](?:{letter})+)*"
    return re.compile(rf"[{_CHARACTER_WORDS}]|{joined}")


# gensim's optimised training silently drops the part of a sentence beyond 10,000 tokens.
GENSIM_MAX_SENTENCE = 10_000


def piece_sentences(tokenizer) -> Callable[[str], Iterator[list[str]]]:
    """Sentences of tokenizer pieces for `SentenceStream`, keyed by the exact piece strings
    (`tokenizer.piece(id)`), so that vector rows align with token ids.

    A document is encoded whole, as the token shards encode it, then cut at newline pieces:
    encoding each line on its own would start every line with SentencePiece's dummy-prefix
    piece (`▁word` where the language model sees `word`). Long lines are cut at gensim's limit.
    """
    pieces = [tokenizer.piece(token_id) for token_id in range(tokenizer.vocab_size)]

    def to_sentences(text: str) -> Iterator[list[str]]:
        sentence: list[str] = []
        for token_id in tokenizer.encode(text):
            piece = pieces[token_id]
            if piece != "\n":
                sentence.append(piece)
            if piece == "\n" or len(sentence) == GENSIM_MAX_SENTENCE:
                if sentence:
                    yield sentence
                sentence = []
        if sentence:
            yield sentence

    return to_sentences


class SentenceStream:
    """A re-iterable corpus: each iteration calls `documents()` afresh (e.g. re-reads Parquet)."""

    def __init__(
        self,
        documents: Callable[[], Iterable[str]],
        to_sentences: Callable[[str], Iterator[list[str]]],
    ):
        self.documents = documents
        self.to_sentences = to_sentences

    def __iter__(self) -> Iterator[list[str]]:
        for text in self.documents():
            yield from self.to_sentences(text)


PROGRESS_EVERY_S = 5.0


class _CountedSentences:
    """`sentences`, counting the words gensim reads into `progress`: its callbacks come only at
    an epoch's end, so a line each epoch left a large corpus's stage silent for many minutes
    (and its vocabulary pass for all of its own)."""

    def __init__(self, sentences: Iterable[list[str]], progress):
        self.sentences = sentences
        self.progress = progress

    def __iter__(self) -> Iterator[list[str]]:
        progress = self.progress
        for sentence in self.sentences:
            progress.update(progress.done + len(sentence))
            yield sentence


def train_word2vec(sentences: Iterable[list[str]], config: Word2VecConfig):
    """Train and return gensim `KeyedVectors`. `sentences` is read once for the vocabulary and
    once per epoch: a list, or an iterable whose `iter()` starts again (`SentenceStream`)."""
    from gensim.models import Word2Vec

    if iter(sentences) is sentences:  # type: ignore[comparison-overlap]
        # An iterator or generator: the vocabulary pass used it up and gensim trained on
        # nothing, returning the random initial vectors (a generator: a TypeError, later).
        raise Word2VecError(
            "word2vec: the sentences are an iterator, which the vocabulary pass would use up "
            "before training; pass a list or an iterable that starts again on each iter()"
        )

    model = Word2Vec(
        vector_size=config.vector_size,
        window=config.window,
        min_count=config.min_count,
        sg=1 if config.architecture == "skipgram" else 0,
        negative=config.negative,
        hs=1 if config.negative == 0 else 0,
        workers=config.workers,
        seed=config.seed,
        hashfxn=stable_hash,
    )
    from lm.progress import ProgressLog

    logger.info("word2vec: reading the training split for its vocabulary")
    read = ProgressLog("word2vec: vocabulary", None, unit="words", interval_s=PROGRESS_EVERY_S)
    model.build_vocab(_CountedSentences(sentences, read))
    if not model.wv.key_to_index:
        raise Word2VecError(
            f"word2vec: no word occurs {config.min_count} times in the training split; "
            "lower word2vec.min_count or add text"
        )
    logger.info(
        "word2vec: %s words in %s sentences, a vocabulary of %s; %d epoch(s) to train",
        f"{model.corpus_total_words:,}", f"{model.corpus_count:,}",
        f"{len(model.wv.key_to_index):,}", config.epochs,
    )  # fmt: skip
    total = model.corpus_total_words * config.epochs
    trained = ProgressLog("word2vec", total, unit="words", interval_s=PROGRESS_EVERY_S)
    model.train(_CountedSentences(sentences, trained), total_examples=model.corpus_count,
                epochs=config.epochs)  # fmt: skip
    trained.finish()
    return model.wv


# Why probe words have no neighbours: (one, several), by whether they are pieces inside words.
ABSENT_PROBES = {
    False: ("is not in the vocabulary", "are not in the vocabulary"),
    True: ("is a piece only inside words, with no vector as a word of its own",
           "are pieces only inside words, with no vectors as words of their own"),
}  # fmt: skip


def evaluate_vectors(vectors, config: Word2VecConfig) -> dict:
    """Analogy accuracy, Spearman correlations with their out-of-vocabulary rates, and the
    nearest neighbours of each probe word in the vocabulary (absent probes are warned about)."""
    metrics: dict = {"vocabulary": len(vectors.key_to_index)}
    pieces = vectors
    if config.input == "pieces":
        vectors = whole_word_view(vectors)
    analogies = gensim_test_file(ANALOGIES)
    if analogies is not None:
        accuracy, answered = analogy_accuracy(vectors, analogies)
        metrics["analogy_accuracy"] = accuracy
        metrics["analogy_questions_answered"] = answered
    for name, file in SIMILARITY_SETS.items():
        path = gensim_test_file(file)
        if path is not None:
            metrics.update(_similarity_scores(vectors, name, path))
    neighbours = {}
    absent: dict[bool, list[str]] = {False: [], True: []}  # by: a piece inside words?
    for probe in config.probes:
        word = _key_of(probe, vectors)
        if word is None:
            absent[config.input == "pieces" and _key_of(probe, pieces) is not None].append(probe)
            continue
        neighbours[word] = [w for w, _ in vectors.most_similar(word, topn=config.neighbours)]
    # One line for all (a character tokenizer's pieces hold none of the default probes: a
    # line each was six warnings of one thing).
    for inside, probes in absent.items():
        if probes:
            many = len(probes) > 1
            logger.warning("word2vec: probe word%s %s %s; skipped", "s" if many else "",
                           ", ".join(f"'{probe}'" for probe in probes),
                           ABSENT_PROBES[inside][many])  # fmt: skip
    metrics["neighbours"] = neighbours
    return metrics


ANALOGY_CHUNK = 1000  # questions scored between two progress lines


def analogy_accuracy(vectors, questions: Path) -> tuple[float | None, int]:
    """gensim's `evaluate_word_analogies` on `questions` (after word2vec's compute-accuracy,
    over the 300,000 most frequent words), and how many questions it answered (None for no accuracy
    when none was, not 0). Scored `ANALOGY_CHUNK` questions at a time, with progress lines:
    over a large vocabulary the 19,544 questions took a minute or more, and no line was said
    after word2vec's "100%"."""
    import tempfile

    from lm.progress import ProgressLog

    parts: list[tuple[str, list[str]]] = []  # (section header, up to ANALOGY_CHUNK questions)
    for line in questions.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith(": "):
            parts.append((line, []))
        elif line.strip() and not parts:  # as gensim says it
            raise ValueError(f"Missing section header before a question in {questions}")
        elif line.strip():
            if len(parts[-1][1]) >= ANALOGY_CHUNK:
                parts.append((parts[-1][0], []))
            parts[-1][1].append(line)
    progress = ProgressLog("word2vec: analogies", total=sum(len(q) for _, q in parts),
                           unit="questions", interval_s=PROGRESS_EVERY_S)  # fmt: skip
    correct = answered = 0
    with tempfile.TemporaryDirectory(prefix="lmforge-analogies-") as folder:
        part_file = Path(folder) / ANALOGIES
        for header, lines in parts:
            part_file.write_text(header + "".join(lines), encoding="utf-8")
            total = vectors.evaluate_word_analogies(str(part_file))[1][-1]  # "Total accuracy"
            correct += len(total["correct"])
            answered += len(total["correct"]) + len(total["incorrect"])
            progress.update(progress.done + len(lines))
    progress.finish()
    return (correct / answered if answered else None), answered


def _key_of(probe: str, vectors) -> str | None:
    """The key a probe word looks up: as written, else in any case, the most frequent such
    key first (`words` vectors are lowercase, gensim's preprocessing; pieces keep the text's
    case, so "france" finds "France"), as the evaluation sets match words; None if absent.
    Composed as the corpus is (NFC, or NFKC): a probe typed decomposed ("café" from macOS
    input) was absent however often the word occurred."""
    spellings = dict.fromkeys(
        [probe, unicodedata.normalize("NFC", probe), unicodedata.normalize("NFKC", probe)]
    )
    for spelling in spellings:
        if spelling in vectors.key_to_index:
            return spelling
    folded = {spelling.casefold() for spelling in spellings}
    # `index_to_key` runs from the most frequent key down.
    return next((key for key in vectors.index_to_key if key.casefold() in folded), None)


MIN_SIMILARITY_PAIRS = 3  # a correlation over two pairs is always ±1: no evidence


def _similarity_scores(vectors, name: str, path) -> dict:
    """Spearman and Pearson correlations with the human judgements of `path`, and the share of
    its pairs out of the vocabulary. With fewer than `MIN_SIMILARITY_PAIRS` pairs in the
    vocabulary there is no correlation to report, but the out-of-vocabulary rate still says
    how many were found (gensim raises for zero or one pair, and says ±1 for two)."""
    found, total = _pairs_in_vocabulary(vectors, path)
    oov_rate = 1.0 - found / total if total else 1.0
    if found < MIN_SIMILARITY_PAIRS:
        logger.warning(
            "word2vec: %d of the %d pairs of %s are in the vocabulary, too few to correlate",
            found, total, name,
        )  # fmt: skip
        return {f"{name}_spearman": None, f"{name}_pearson": None, f"{name}_oov_rate": oov_rate}
    pearson, spearman, oov = vectors.evaluate_word_pairs(str(path))
    return {
        f"{name}_spearman": float(spearman.statistic),
        f"{name}_pearson": float(pearson.statistic),
        f"{name}_oov_rate": float(oov) / 100.0,
    }


def _pairs_in_vocabulary(vectors, path) -> tuple[int, int]:
    """(pairs with both words in the vocabulary, valid pairs) of a word-pair file, read as
    gensim's `evaluate_word_pairs` reads it with its defaults: `#` lines are comments, a pair is
    `word<TAB>word<TAB>score`, and words match whatever their case among the first 300,000."""
    known = {key.upper() for key in vectors.index_to_key[:300_000]}
    found = total = 0
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            fields = line.split("\t")
            if not line or line.startswith("#") or len(fields) != 3:
                continue
            try:
                float(fields[2])
            except ValueError:
                continue
            total += 1
            found += fields[0].upper() in known and fields[1].upper() in known
    return found, total


def whole_word_view(vectors):
    """The vectors of whole-word pieces ("▁said") keyed by their word ("said"): the keys the
    word evaluation sets and the probes look up. Pieces inside words have no word to answer for.
    In Chinese and Japanese, written without spaces, only a document's first piece has the
    space mark: a piece of their characters alone ("银行") is a word too."""
    from gensim.models import KeyedVectors

    words: dict[str, str] = {}  # word: its piece, the most frequent first
    for key in vectors.index_to_key:
        if key.startswith("\u2581") and len(key) > 1:
            words.setdefault(key[1:], key)
    for key in vectors.index_to_key:
        if _WRITTEN_WITHOUT_SPACES.fullmatch(key):
            words.setdefault(key, key)
    view = KeyedVectors(vectors.vector_size)
    if words:
        view.add_vectors(list(words), [vectors[piece] for piece in words.values()])
    return view


def plot_projection(vectors, neighbours: dict[str, list[str]], method: str, path: Path) -> Path:
    """A 2-D map of the probe words and their neighbours, each point labelled, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # a word `$\alph` is text, not bad TeX
    import matplotlib.pyplot as plt

    words = list(dict.fromkeys(w for probe, near in neighbours.items() for w in (probe, *near)))
    figure, axes = plt.subplots(figsize=(10, 8), dpi=110)
    if len(words) >= 3:
        points = _project(np.stack([vectors[w] for w in words]), method)
        groups = {w: probe for probe, near in neighbours.items() for w in (probe, *near)}
        colours = {probe: plt.cm.tab10(i % 10) for i, probe in enumerate(neighbours)}
        for (x, y), word in zip(points, words, strict=True):
            is_probe = word in neighbours
            axes.scatter(x, y, color=colours[groups[word]], s=60 if is_probe else 20)
            axes.annotate(word, (x, y), xytext=(3, 3), textcoords="offset points",
                          fontsize=11 if is_probe else 8,
                          fontweight="bold" if is_probe else "normal")  # fmt: skip
    else:
        axes.text(0.5, 0.5, "no probe word in the vocabulary", ha="center", va="center")
    axes.set_title(f"word2vec: probe words and their nearest neighbours ({method.upper()})")
    axes.set_xticks([])
    axes.set_yticks([])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.tight_layout()
        figure.savefig(path)
    plt.close(figure)
    _say_missing_glyphs(caught)
    return path


# matplotlib < 3.9 says "missing from current font.", later "missing from font(s) NAME."
_MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from (?:current )?font")


def _say_missing_glyphs(caught: list[warnings.WarningMessage]) -> None:
    """One line for the characters of the labels the plot's font lacks (drawn as boxes), where
    matplotlib warned once a character, dozens of lines for a Chinese probe; other warnings
    pass on as they came."""
    missing = []
    for warning in caught:
        found = _MISSING_GLYPH.match(str(warning.message))
        if found:
            missing.append(chr(int(found.group(1))))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)  # fmt: skip
    if missing:
        shown = "".join(dict.fromkeys(missing))
        logger.warning("word2vec: the projection's font lacks %d character(s) of its labels "
                       "(%s), drawn as boxes", len(shown), shown[:20])  # fmt: skip


def _project(matrix: np.ndarray, method: str) -> np.ndarray:
    if method == "tsne" and len(matrix) > 5:
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(matrix) - 1) / 3)
        return TSNE(
            n_components=2, perplexity=perplexity, random_state=0, init="pca"
        ).fit_transform(matrix)
    centred = matrix - matrix.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T
