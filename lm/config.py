"""Typed pipeline configuration, loaded from TOML presets.

Every default lives in the typed models: the data stages' here, the model's, training's and
evaluation's in `lm/models/config.py`, `lm/train_config.py` and `lm/eval_config.py`, which this
module gathers into one `PipelineConfig`. Models forbid unknown keys so that a typo in a preset
is an error naming the key and the file, not a silently ignored setting. Each stage receives only
its own section, and the digest of that section is part of the stage's cache key.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from lm.eval_config import EvalConfig
from lm.models.config import GPT_PRESETS, ModelConfig, planned_tokens, written_one_way
from lm.strict_model import StrictModel
from lm.train_config import BOOKKEEPING, TRAIN_SEED_MAX, TrainConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PRESET = "default"
# Where an install from a wheel puts `configs/` and `prefect.yaml`, under its prefix
# (pyproject.toml's data-files): the wheel's packages are lm, storage, tasks and flows alone.
INSTALLED_DATA = "share/lmforge"


def shipped_path(relative: str) -> Path:
    """`configs` or `prefect.yaml`: the checkout's (a clone, an editable install), or where an
    install from a wheel put them (`share/lmforge/` under its prefix), found through the
    installed files' record. The checkout's path when neither has it, for the error."""
    checkout = REPO_ROOT / relative
    # A checkout has its pyproject.toml; site-packages has none (and may hold another
    # distribution's `configs/`).
    if (REPO_ROOT / "pyproject.toml").is_file():
        return checkout
    return _installed_data(relative) or checkout


@functools.cache
def _installed_data(relative: str) -> Path | None:
    import importlib.metadata

    try:
        files = importlib.metadata.distribution("lmforge").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted = f"/{INSTALLED_DATA}/{relative}"
    for file in files:
        name = "/" + file.as_posix()
        if name.endswith(wanted):
            return Path(file.locate()).resolve()
        if f"{wanted}/" in name:  # a file of the folder
            return Path(file.locate()).resolve().parent
    return None


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the file."""


SourceFormat = Literal[
    "auto", "text", "jsonl", "json", "parquet", "arrow", "csv", "tsv", "wikipedia", "census-names"
]


class SourceConfig(StrictModel):
    """One input: a file, a folder, a recursive glob, an http(s) URL, `gensim:NAME` for a file
    that gensim ships in its test data, or `names:FILE` for a US Census name list that the
    `names` package ships (read as `census-names`: one lowercased name per line)."""

    path: str
    format: SourceFormat = "auto"
    text_field: str = Field(
        "text", description="JSON/JSONL field or Parquet/CSV/TSV column with the text"
    )
    one_doc_per_line: bool = Field(False, description="each non-empty line is its own document")
    delimiter: str | None = Field(
        None, description='CSV/TSV field separator (";" for European Excel); default "," or tab'
    )

    @field_validator("delimiter")
    @classmethod
    def _one_separating_character(cls, delimiter: str | None) -> str | None:
        if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
            tab = (' (a tab is "\\t" in double quotes: single quotes keep the backslash)'
                   if delimiter == "\\t" else "")  # fmt: skip
            raise ValueError(
                f"must be one character other than a quote or a line end, not {delimiter!r}{tab}"
            )
        return delimiter

    @field_validator("path")
    @classmethod
    def _path_names_something(cls, path: str) -> str:
        """An empty path (what an unset shell variable gives) was the current folder, read
        whole and recursively."""
        if not path.strip():
            raise ValueError(
                "is empty: name a file, a folder or a pattern (an empty path would read the "
                "current folder)"
            )
        return path


class IngestConfig(StrictModel):
    sources: list[SourceConfig] = Field(min_length=1)
    encoding_errors: Literal["strict", "replace"] = "strict"
    url_timeout_s: float = Field(30.0, gt=0.0)
    # Plain text longer than this is cut into documents at paragraph breaks
    # (lm/text/long_documents.py): every later stage holds a document whole, and a piece of
    # 0.25 MB holds about 40,000 English words, within clean.quality.max_words (a whole novel,
    # or pieces of 1 MB, were removed as too_many_words). 0: never cut.
    max_document_mb: float = Field(0.25, ge=0.0)
    row_group_docs: int = Field(2000, ge=1)

    @field_validator("max_document_mb")
    @classmethod
    def _cut_at_a_kilobyte_at_least(cls, value: float) -> float:
        """A limit under a byte was taken as 0, which never cuts: said, not done silently."""
        if 0 < value < 0.001:
            raise ValueError("must be at least 0.001 (1 kB), or 0 never to cut a document")
        return value

    @model_validator(mode="before")
    @classmethod
    def _sources_may_be_plain_paths(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("sources"), list):
            data = dict(data)
            data["sources"] = [{"path": s} if isinstance(s, str) else s for s in data["sources"]]
        return data


class QualityConfig(StrictModel):
    """Document quality rules after Gopher (Rae et al. 2021, appendix A). Each one is a column in
    the corpus, so a threshold can be changed without re-reading sources."""

    # Bounds: a fraction past 1 (`min_alpha_word_fraction = 2`) or a negative count rejected
    # every document, and the error then blamed the data ("add longer texts").
    enabled: bool = True
    min_words: int = Field(50, ge=0)
    max_words: int = Field(100_000, ge=1)
    min_mean_word_length: float = Field(3.0, ge=0.0)
    max_mean_word_length: float = Field(10.0, gt=0.0)
    max_symbol_word_ratio: float = Field(0.1, ge=0.0)
    max_ellipsis_line_fraction: float = Field(0.3, ge=0.0, le=1.0)
    max_bullet_line_fraction: float = Field(0.9, ge=0.0, le=1.0)
    min_alpha_word_fraction: float = Field(0.8, ge=0.0, le=1.0)
    max_duplicate_line_fraction: float = Field(0.3, ge=0.0, le=1.0)
    max_duplicate_line_char_fraction: float = Field(0.2, ge=0.0, le=1.0)
    max_duplicate_paragraph_fraction: float = Field(0.3, ge=0.0, le=1.0)
    max_duplicate_paragraph_char_fraction: float = Field(0.2, ge=0.0, le=1.0)
    # Most frequent 2-, 3-, 4-gram: largest share of characters it may cover.
    max_top_ngram_char_fraction: list[Annotated[float, Field(ge=0.0, le=1.0)]] = [0.20, 0.18, 0.16]
    # All repeated 5- to 10-grams: largest share of characters they may cover.
    max_duplicate_ngram_char_fraction: list[Annotated[float, Field(ge=0.0, le=1.0)]] = [
        0.15, 0.14, 0.13, 0.12, 0.11, 0.10,
    ]  # fmt: skip

    @model_validator(mode="after")
    def _ngram_lists_have_the_right_length(self) -> QualityConfig:
        if len(self.max_top_ngram_char_fraction) != 3:
            raise ValueError("max_top_ngram_char_fraction needs 3 values (n = 2, 3, 4)")
        if len(self.max_duplicate_ngram_char_fraction) != 6:
            raise ValueError("max_duplicate_ngram_char_fraction needs 6 values (n = 5 … 10)")
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) is above max_words "
                             f"({self.max_words}): no document can pass")  # fmt: skip
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError(f"min_mean_word_length ({self.min_mean_word_length}) is above "
                             f"max_mean_word_length ({self.max_mean_word_length}): no document "
                             "can pass")  # fmt: skip
        return self


class NearDupConfig(StrictModel):
    """MinHash LSH over word shingles; a document whose estimated Jaccard similarity to an earlier
    kept document reaches `threshold` is marked `near_dup_of` that document."""

    enabled: bool = True
    shingle_size: int = Field(5, ge=1)
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    num_perm: int = Field(128, ge=8)
    seed: int = Field(1, ge=0, le=2**63 - 1)  # numpy's generator takes no negative seed


class CleanConfig(StrictModel):
    normalization: Literal["NFC", "NFKC"] = "NFC"
    strip_wiki_markup: bool = True
    collapse_whitespace: bool = True
    min_chars: int = Field(1, ge=0)
    exact_dedup: bool = True
    quality: QualityConfig = QualityConfig()
    near_dup: NearDupConfig = NearDupConfig()
    # Annotation workers for cleaning: 0 means runtime.max_workers, run by [runtime]'s task
    # runner on processes or Dask, and on threads by worker processes of the clean task itself
    # (annotation holds the GIL: threads would only add overhead); N > 1 on threads asks for
    # threads; 1 cleans inside the stage's own process. Never part of the cache key.
    workers: int = Field(0, ge=0, description="annotation workers; 0 means runtime.max_workers")
    row_group_docs: int = Field(2000, ge=1)


class SplitConfig(StrictModel):
    """Held-out fractions. With `hash`, the split of a document is a function of its `doc_id`
    alone, so adding documents never moves an existing one between splits, and copies of a text
    always share one. With `random` (makemore's split of a names list), it is a function of the
    document's position in the corpus: appending documents moves none, and copies of a text
    (with `clean.exact_dedup = false`) can fall in different splits, as lines of a shuffled file
    do. With `ordered` (nanoGPT's split, for one long text), the kept documents are concatenated
    in corpus order and the token stream is cut where those fractions fall in the text's bytes
    (the same text for every tokenizer): the first (1 - val - test) is train, then val, then
    test."""

    method: Literal["hash", "random", "ordered"] = "hash"
    val: float = Field(0.05, ge=0.0, lt=1.0)
    test: float = Field(0.05, ge=0.0, lt=1.0)
    # What `hash` and `random` draw: a text cut into pieces (`ingest.max_document_mb`) whole,
    # every piece where its first one goes (`text`), or each piece on its own (`piece`: a val
    # piece's neighbours train the model, as in nanoGPT's split of one play).
    unit: Literal["text", "piece"] = "text"
    # Hash or random split: shards list each split's documents in doc_id order instead of corpus
    # order, so a sorted input (an alphabetical names list) does not put look-alike documents
    # side by side, where a model would learn to copy its neighbours.
    shuffle: bool = False

    @model_validator(mode="after")
    def _leaves_room_for_train(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError("split.val + split.test must leave some data for train")
        if self.shuffle and self.method == "ordered":
            raise ValueError("split.shuffle applies to hash and random; 'ordered' keeps the order")
        if self.unit == "piece" and self.method == "ordered":
            raise ValueError("split.unit applies to hash and random; 'ordered' cuts the token "
                             "stream, not documents")  # fmt: skip
        return self


# The pieces every SentencePiece tokenizer of lmforge defines itself (lm/tokenizer.py: UNKNOWN,
# END_OF_TEXT, the newline and SPACE_SYMBOL_ESCAPE), which a user symbol cannot repeat.
RESERVED_PIECES = ("<unk>", "<|endoftext|>", "\n", "\U000f0000")


class TokenizerConfig(StrictModel):
    """A SentencePiece model (`bpe` or `unigram`) or a character vocabulary (`char`)."""

    kind: Literal["bpe", "unigram", "char"] = "bpe"
    vocab_size: int = Field(4000, ge=2)
    # SentencePiece refuses less than 0.98 (its trainer's check), after the data stages.
    character_coverage: float = Field(0.9995, ge=0.98, le=1.0)
    byte_fallback: bool = True
    user_defined_symbols: list[str] = []
    # Encoding's threads. Training always runs on SentencePiece's 16 (`TRAINING_THREADS`), so
    # a tokenizer is the same on every machine.
    threads: int = Field(0, ge=0, description="encoding threads; 0 means one per core")
    # At most this many lines of the train split are trained on: a uniform sample by `seed`
    # from a larger one (0: every line).
    input_sentence_size: int = Field(2_000_000, ge=0)
    # Bytes per sentence SentencePiece trains on: longer lines are cut at spaces into parts.
    # (SentencePiece refuses fewer than 10.)
    max_sentence_length: int = Field(16384, ge=10, le=2**30)
    # Characters the char tokenizer did not see in training: an <unk> id, UTF-8 byte ids
    # (lossless, 256 more ids), or an error naming them.
    unknown_chars: Literal["unk", "bytes", "error"] = "unk"
    seed: int = Field(1, ge=0, le=2**32 - 1)  # SentencePiece's seed is 32 bits

    # Keys only SentencePiece reads, and the one only the char tokenizer reads.
    SENTENCEPIECE_KEYS: ClassVar[tuple[str, ...]] = (
        "vocab_size", "character_coverage", "byte_fallback", "user_defined_symbols",
        "input_sentence_size", "max_sentence_length",
    )  # fmt: skip
    CHAR_KEYS: ClassVar[tuple[str, ...]] = ("unknown_chars",)

    def output_digest(self) -> str:
        """The digest of what decides the trained tokenizer: every setting but `threads`,
        which changes the speed of training, never a piece."""
        return self.model_copy(update={"threads": 0}).digest()

    @field_validator("user_defined_symbols")
    @classmethod
    def _symbols_are_new_pieces(cls, symbols: list[str]) -> list[str]:
        """SentencePiece refuses a symbol twice, an empty one, and the pieces lmforge defines
        itself: said at load time, not by its trainer once the data stages have run."""
        for index, symbol in enumerate(symbols):
            if not symbol:
                raise ValueError(f"[{index}] is empty: a symbol is one or more characters")
            if symbol in RESERVED_PIECES or re.fullmatch(r"<0x[0-9A-F]{2}>", symbol):
                raise ValueError(
                    f"[{index}] {symbol!r} is a piece every tokenizer already has (unknown, "
                    "end-of-text, newline, the space mark's escape, the byte pieces)"
                )
            if symbol in symbols[:index]:
                raise ValueError(f"[{index}] {symbol!r} is listed twice")
            if any(char.isspace() for char in symbol):
                # SentencePiece matches symbols in its own spelling of the text, where a space
                # is "▁": "New York" never matched, a piece that took a slot and was never used.
                spelled = "\u2581".join(symbol.split())
                raise ValueError(
                    f"[{index}] {symbol!r} holds whitespace, which a symbol never matches: "
                    f"SentencePiece spells a space '\u2581' ({spelled!r} matches the words "
                    "with one space between them)"
                )
        return symbols

    @field_validator("input_sentence_size")
    @classmethod
    def _sample_sentencepiece_takes(cls, size: int) -> int:
        if 0 < size <= 100:  # SentencePiece's trainer refuses these, after the data stages
            raise ValueError(f"{size} is too few: 0 (every line) or more than 100 lines")
        return size

    @model_validator(mode="after")
    def _room_for_the_byte_pieces(self) -> TokenizerConfig:
        """SentencePiece with byte fallback needs a piece for each of the 256 bytes, <unk>,
        end-of-text, the newline, the escape of its space mark (`lm/tokenizer.py`) and each user
        symbol, before any character of the corpus: said at load time, not once the data
        stages have run."""
        if self.kind == "char" or not self.byte_fallback:
            return self
        floor = 256 + 4 + len(self.user_defined_symbols)
        if self.vocab_size <= floor:
            raise ValueError(
                f"vocab_size ({self.vocab_size}) is too small: byte_fallback takes {floor} pieces "
                "(256 bytes and the special pieces), and the corpus's characters more"
            )
        return self


class Word2VecConfig(StrictModel):
    """gensim word2vec on the clean train split, as words or as tokenizer pieces (pieces give
    vectors aligned with the language model's vocabulary, for embedding initialisation)."""

    enabled: bool = True
    input: Literal["words", "pieces"] = "words"
    architecture: Literal["skipgram", "cbow"] = "skipgram"
    vector_size: int = Field(100, ge=2)
    window: int = Field(5, ge=1)
    min_count: int = Field(5, ge=1)
    negative: int = Field(5, ge=0, description="negative samples; 0 uses hierarchical softmax")
    epochs: int = Field(10, ge=1)
    # One worker (with the stable hash lmforge passes to gensim) makes training reproducible.
    workers: int = Field(1, ge=1)
    seed: int = Field(1, ge=0, le=2**32 - 1)  # gensim seeds numpy's 32-bit RandomState
    probes: list[str] = ["king", "war", "france", "computer", "music", "water", "money", "god"]
    neighbours: int = Field(8, ge=1)
    projection: Literal["tsne", "pca"] = "tsne"


class LadderEntry(StrictModel):
    """One model of a ladder: the model, a label for tables and metrics, and the training
    settings it needs that differ from the run's `[train]` (a count model needs none, an MLP a
    higher learning rate than a transformer)."""

    model: ModelConfig = Field(discriminator="kind")
    name: str | None = None
    train: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _flat_table(cls, data: Any) -> Any:
        """`[[models]]` tables are flat: model fields beside `name` and a `[models.train]`
        sub-table."""
        if isinstance(data, dict) and "model" not in data:
            data = dict(data)
            name, train = data.pop("name", None), data.pop("train", {})
            return {"model": data, "name": name, "train": train}
        return data


class RuntimeConfig(StrictModel):
    """Where the CPU stages' fanned-out work runs. Never part of a cache key: the runner and the
    worker count change how fast a stage runs, never what it produces."""

    # threads: no start-up cost, but pure-Python work holds the GIL; processes: every core of
    # one machine; dask: a Dask cluster (`pip install -e .[dask]`).
    task_runner: Literal["threads", "processes", "dask"] = "threads"
    # Threads, processes or local Dask workers; 0 means one per core.
    max_workers: int = Field(0, ge=0)
    # The scheduler of an existing Dask cluster (tcp://host:8786); without it, a local cluster.
    dask_address: str | None = None

    @model_validator(mode="after")
    def _address_needs_dask(self) -> RuntimeConfig:
        if self.dask_address and self.task_runner != "dask":
            raise ValueError(f"dask_address is set but task_runner is '{self.task_runner}'")
        return self


class AblationVariant(StrictModel):
    """One arm of an ablation: fields that replace the base `[model]`'s (and, rarely, its
    `[train]`'s), under a name for the table."""

    name: str
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _name_reads_in_labels_and_tables(cls, name: str) -> str:
        """The name labels the arm's models (`NAME/seed-1`) and a row of `ablation.md`: an
        empty one made the label `/seed-1`, and a `|` split the row into two columns."""
        if not name.strip():
            raise ValueError("is empty: name the variant")
        if "/" in name or "|" in name or not name.isprintable():
            raise ValueError(f"{name!r} has a '/', '|' or control character, which its labels "
                             "and table cannot hold: rename it")  # fmt: skip
        return name


class AblationConfig(StrictModel):
    """Which variants of the base model to compare and over how many seeds. Every variant
    trains on the same corpus, tokenizer and shards with the base `[train]` (the same tokens,
    unless a variant changes its steps, batch or a GPT's context), so only the switch differs."""

    seeds: list[Annotated[int, Field(ge=0, le=TRAIN_SEED_MAX)]] = Field(
        default_factory=lambda: [1, 2, 3], min_length=1
    )
    variants: list[AblationVariant] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_differ(self) -> AblationConfig:
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"ablation variant names must differ: {names}")
        if len(set(self.seeds)) != len(self.seeds):  # a repeat would count one result twice
            raise ValueError(f"ablation seeds must differ: {self.seeds}")
        return self


class RetrainConfig(StrictModel):
    """The `retrain` flow's promotion rule: a candidate replaces the model holding `alias` only
    if its val bits per byte beat the champion's, on the same held-out text, by `margin`.
    A negative margin is a tolerance: it promotes a candidate up to that much worse, for a
    deployment that prefers a model of the newest data to a slightly better older one."""

    alias: str = "champion"
    margin: float = Field(
        0.0, description="bits per byte the candidate must gain (negative: may lose)"
    )
    # Continued training on new data; None trains for train.max_steps.
    steps: int | None = Field(None, ge=1)
    # A continuation reads the new train tokens at most this many times (0: no cap): a night
    # that brought one 579-token document ran 150 steps over it, 133 passes, and the model
    # forgot the rest (val 3.66 to 5.24 bits per byte).
    max_passes: float = Field(10.0, ge=0.0, allow_inf_nan=False)
    # A continuation's peak learning rate; None: train.learning_rate, as from scratch.
    learning_rate: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    # Refuse to retrain on fewer new train documents than this (too little to learn from).
    min_new_documents: int = Field(1, ge=1)


@dataclass(frozen=True)
class ModelRun:
    """What the train stage gets for one model: its label, config and effective settings."""

    label: str
    model: ModelConfig
    train: TrainConfig


class PipelineConfig(StrictModel):
    name: str = DEFAULT_PRESET  # the preset: the registry's `runs.preset`, a retrain's champion

    @field_validator("name")
    @classmethod
    def _name_reads_in_tables(cls, name: str) -> str:
        """An empty name titled tables `size of ` and recorded runs no `--preset` could pick."""
        if not name.strip():
            raise ValueError("is empty: name the preset")
        if not name.isprintable():
            raise ValueError(f"{name!r} has a control character: rename it")
        return name

    # The run's seed: the training seed (initial weights, batch order) unless `[train]` sets
    # its own. Data stages and evaluation windows keep their own seeds, so a seed sweep
    # compares models on the same corpus and the same held-out windows.
    seed: int = Field(1337, ge=0, le=TRAIN_SEED_MAX)
    ingest: IngestConfig
    clean: CleanConfig = CleanConfig()
    split: SplitConfig = SplitConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    word2vec: Word2VecConfig = Word2VecConfig()
    # No model: the pipeline stops after the data stages. One `[model]`, or a ladder of them
    # trained and compared in one run (`[[models]]`), never both.
    model: ModelConfig | None = Field(None, discriminator="kind")
    models: list[LadderEntry] = []
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    retrain: RetrainConfig = RetrainConfig()
    ablation: AblationConfig = AblationConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="before")
    @classmethod
    def _run_seed_seeds_training(cls, data):
        if not isinstance(data, dict) or "seed" not in data:
            return data
        train = data.get("train", {})
        if isinstance(train, dict) and "seed" not in train:
            return {**data, "train": {**train, "seed": data["seed"]}}
        if isinstance(train, TrainConfig) and "seed" not in train.model_fields_set:
            # Built in Python: a seed sweep with a `TrainConfig` trained one model each time.
            return {**data, "train": train.model_copy(update={"seed": data["seed"]})}
        return data

    @model_validator(mode="after")
    def _word2vec_models_have_piece_vectors(self) -> PipelineConfig:
        """A model fed by word2vec needs vectors of the tokenizer's pieces of the right width:
        said at load time, not after word2vec has trained."""
        from lm.models.config import uses_word2vec

        # (the table that holds the model's settings, the model): a ladder's `[[models]]` entry
        # is `models.N`, so a mismatch is said at the key to change, not at a `[model]` it lacks.
        if self.model is not None:
            entries = [("model", self.model)]
        else:
            entries = [(f"models.{index}", entry.model) for index, entry in enumerate(self.models)]
        entries += [(f"ablation variant '{variant.name}': model", model)
                    for variant, model in self._variant_models()]  # fmt: skip
        for table, model in entries:
            if not uses_word2vec(model):
                continue
            if not self.word2vec.enabled or self.word2vec.input != "pieces":
                raise ValueError(  # named by its table: one of a ladder's or an ablation's
                    f"{table} ({model.kind}) uses word2vec vectors: set word2vec.enabled = true "
                    'and word2vec.input = "pieces" (vectors of the tokenizer\'s pieces)'
                )
            if model.kind == "w2v" and model.vector_size != self.word2vec.vector_size:
                raise ValueError(
                    f"{table}.vector_size ({model.vector_size}) must equal "
                    f"word2vec.vector_size ({self.word2vec.vector_size})"
                )
        return self

    @model_validator(mode="after")
    def _gpt_context_is_the_model_s(self) -> PipelineConfig:
        """A gpt trains on its own `block_size` (`lm.models.config.effective_train_config`), so a
        different `block_size` in the train settings given for it alone would be ignored. A
        ladder's shared `[train]` one is for the models without a context of their own."""
        given = []  # (where, the train block_size given there, the model, its table)
        if self.model is not None and "block_size" in self.train.model_fields_set:
            given.append(("", self.train.block_size, self.model, "model"))
        for index, entry in enumerate(self.models):
            if "block_size" in entry.train:
                table = f"models.{index}"
                given.append((f"{table}.", entry.train["block_size"], entry.model, table))
        for variant, model in self._variant_models():
            if "block_size" in variant.train:
                where = f"ablation variant '{variant.name}': "
                given.append((where, variant.train["block_size"], model, "model"))
        for where, block_size, model, table in given:
            if model.kind == "gpt" and block_size != model.block_size:
                raise ValueError(
                    f"{where}train.block_size ({block_size}) does not apply to a gpt, which "
                    f"trains on its own context: set {table}.block_size (now {model.block_size})"
                )
        return self

    @model_validator(mode="after")
    def _batch_norm_has_a_batch(self) -> PipelineConfig:
        """Batch norm in training needs two rows a forward to normalise over: one (a micro-batch
        of one window of one position) failed with torch's "Expected more than 1 value per
        channel" after the data stages."""
        if self.model is not None and self.models:
            return self  # refused below, with the reason
        checked = [(f"model '{run.label}'", run.model, run.train) for run in self.model_runs()]
        for variant, model in self._variant_models():
            try:
                train = TrainConfig.model_validate(self.train.model_dump() | variant.train)
            except ValidationError:  # `ablation_runs` names the variant's bad setting
                continue
            checked.append((f"ablation variant '{variant.name}'", model, train))
        for label, model, train in checked:
            rows = train.micro_batch * train.block_size
            sharded = train.parallel == "fsdp" and train.world_size > 1
            if model.kind == "mlp" and model.norm == "batchnorm" and sharded:
                raise ValueError(
                    f'{label}: norm "batchnorm" under train.parallel = "fsdp": FSDP keeps no '
                    "running statistics the same on every rank (DDP broadcasts them); use "
                    'parallel = "ddp" or norm = "layernorm"'
                )
            if model.kind == "mlp" and model.norm == "batchnorm" and rows < 2:
                raise ValueError(
                    f'{label}: norm "batchnorm" normalises over the rows of a '
                    f"micro-batch, and train.micro_batch × train.block_size is {rows}: raise "
                    'either, or use norm = "layernorm"'
                )
        return self

    @model_validator(mode="after")
    def _one_way_to_name_models(self) -> PipelineConfig:
        if self.model is not None and self.models:
            raise ValueError("give either [model] or [[models]], not both")
        labels = [run.label for run in self.model_runs()]
        if len(set(labels)) != len(labels):
            raise ValueError(f"model labels must differ: {labels} (set `name` on [[models]])")
        return self

    @model_validator(mode="after")
    def _eval_window_fits_every_gpt(self) -> PipelineConfig:
        """A gpt scores windows up to its context: a longer `eval.window` is said here, not by
        the evaluate stage once the model has trained."""
        if self.eval.window is None:
            return self
        models = [(f"model '{run.label}'", run.model) for run in self.model_runs()]
        models += [(f"ablation variant '{v.name}'", model) for v, model in self._variant_models()]
        for label, model in models:
            if model.kind == "gpt" and self.eval.window > model.block_size:
                raise ValueError(
                    f"eval.window ({self.eval.window}) is longer than the context of {label} "
                    f"(block_size {model.block_size}): lower eval.window"
                )
        return self

    def _variant_models(self) -> list[tuple[AblationVariant, ModelConfig]]:
        """Each ablation variant with its model (the base `[model]` with its changes), for the
        checks above: those whose model is valid. `ablation_runs` names a variant whose model
        is not (unvalidated, `kind = "w2v"` over a gpt or a text `block_size` reached the
        checks as a traceback)."""
        if self.model is None:
            return []
        variants = []
        for variant in self.ablation.variants:
            try:
                model = type(self.model).model_validate(self._variant_fields(variant))
            except ValidationError:
                continue
            variants.append((variant, model))
        return variants

    def _variant_fields(self, variant: AblationVariant) -> dict[str, Any]:
        """The base `[model]`'s settings with the variant's over them. A variant's gpt `preset`
        brings its switches over the base's: merged under the base's written values, which
        beat a preset, a `modern` variant trained the base model under its name."""
        assert self.model is not None
        fields = self.model.model_dump()
        preset = variant.model.get("preset")
        if self.model.kind == "gpt" and isinstance(preset, str) and preset in GPT_PRESETS:
            fields |= GPT_PRESETS[preset]
        return fields | variant.model

    @model_validator(mode="after")
    def _models_have_a_val_split(self) -> PipelineConfig:
        """Training evaluates on the val split (`train.eval_every`, early stopping, the best
        checkpoint), so a run with models needs one: said before the data stages run."""
        if (self.model is not None or self.models) and self.split.val == 0:
            raise ValueError("split.val is 0, but training evaluates on the val split: raise it")
        return self

    def ablation_runs(self, scored: bool = True) -> list[tuple[str, int, ModelRun]]:
        """(variant, seed, model run) for every arm of `[ablation]`, over the base `[model]`;
        `scored=False` (`lmforge size`, which evaluates nothing) leaves `eval.splits` alone."""
        if self.model is None:
            raise ValueError("an ablation needs a base [model] that its variants change")
        if not self.ablation.variants:
            raise ValueError("an ablation needs [[ablation.variants]]")
        # The table is of val bits per byte: a KeyError after every arm had trained, before.
        if scored and "val" not in self.eval.splits:
            raise ValueError(
                f"eval.splits is {json.dumps(self.eval.splits)}, but an ablation compares the "
                'variants\' val bits per byte: add "val"'
            )
        arms = []
        trained_by: dict[str, str] = {}  # a variant's settings → its name
        for variant in self.ablation.variants:
            fields = self._variant_fields(variant)
            try:
                model = type(self.model).model_validate(fields)
                train = TrainConfig.model_validate(self.train.model_dump() | variant.train)
            except ValidationError as error:
                root = TrainConfig if error.title == TrainConfig.__name__ else type(self.model)
                # The variant's table the key is in: "unknown key 'learning_rat'" named neither.
                problem = _describe(error, root, prefix="train" if root is TrainConfig else "model")
                raise ValueError(f"ablation variant '{variant.name}': {problem}") from None
            ignored = [key for key in variant.train if key == "seed" or key in BOOKKEEPING]
            if ignored:  # the arm would train what the base does, under another name
                raise ValueError(
                    f"ablation variant '{variant.name}': train.{ignored[0]} does not change the "
                    "trained model (ablation.seeds set every arm's seed; checkpoints and the "
                    "meeting of nodes are bookkeeping): remove it"
                )
            settings = _trained_settings(model, train)
            if settings in trained_by:  # the same numbers twice, read as two findings
                raise ValueError(
                    f"ablation variants '{trained_by[settings]}' and '{variant.name}' train the "
                    "same model with the same settings (a variant that sets what the base "
                    "[model] or [train] already has); change or remove one"
                )
            trained_by[settings] = variant.name
            for seed in self.ablation.seeds:
                label = f"{variant.name}/seed-{seed}"
                seeded = train.model_copy(update={"seed": seed})
                arms.append((variant.name, seed, ModelRun(label, model, seeded)))
        return arms

    def ablation_tokens(self, arms: list[tuple[str, int, ModelRun]]) -> dict[str, int]:
        """Per variant of `arms`, the tokens its training sees: steps × global batch × its
        context (a GPT's `block_size`, else `train.block_size`), as `lmforge size` counts them.
        Variants that differ in it compare budgets as well as switches."""
        return {variant: planned_tokens(run.model, run.train) for variant, _, run in arms}

    def ablation_changes(self, arms: list[tuple[str, int, ModelRun]]) -> dict[str, str]:
        """Per variant of `arms` (`ablation_runs()`), what it sets otherwise than the base
        `[model]` and `[train]`, in TOML's words (`mlp = "swiglu"`, `train.learning_rate =
        0.001`; empty for the base itself; the seed, which `ablation.seeds` sets, left out): the
        table says what each row measured, which its name need not."""
        assert self.model is not None
        base_model = written_one_way(self.model).model_dump(mode="json")
        base_train = self.train.model_dump(mode="json", exclude={"seed"})
        changes = {}
        for variant, _, run in arms:
            if variant in changes:
                continue
            words = [_setting(key, value)
                     for key, value in written_one_way(run.model).model_dump(mode="json").items()
                     if value != base_model.get(key)]  # fmt: skip
            words += [_setting(f"train.{key}", value)
                      for key, value in run.train.model_dump(mode="json", exclude={"seed"}).items()
                      if value != base_train.get(key)]  # fmt: skip
            changes[variant] = ", ".join(words)
        return changes

    def model_runs(self) -> list[ModelRun]:
        """Every model this run trains, in order, each with its merged train settings."""
        if self.model is not None:
            return [ModelRun(self.model.kind, self.model, self.train)]
        runs = []
        for entry in self.models:
            try:
                train = TrainConfig.model_validate(self.train.model_dump() | entry.train)
            except ValidationError as error:
                label = entry.name or entry.model.kind
                raise ValueError(
                    f"models '{label}' train: {_describe(error, TrainConfig)}"
                ) from None
            runs.append(ModelRun(entry.name or entry.model.kind, entry.model, train))
        return runs


def _setting(key: str, value: Any) -> str:
    """`key = value` as TOML writes it; a setting left to its default (None) as `key unset`."""
    return f"{key} unset" if value is None else f"{key} = {json.dumps(value)}"


def _trained_settings(model: ModelConfig, train: TrainConfig) -> str:
    """What decides an ablation arm's numbers, the model written one way."""
    return written_one_way(model).model_dump_json() + train.model_dump_json()


def retrain_problem(settings: PipelineConfig) -> str | None:
    """Why `settings` cannot be retrained, or None. A candidate is continued on the documents
    added since the champion's corpus and both are scored on the held-out split, which must
    therefore hold the same documents as the corpus grows: only the hash split does. Under
    `random` (by row) an added file moves the champion's own training documents into val and
    test; under `ordered` the new documents are the end of the stream, where val and test are
    cut, so the candidate would train on the text it is scored on."""
    if not settings.model_runs():
        return "retrain needs a [model] (or [[models]]) to train"
    if settings.split.method != "hash":
        return (f'retrain needs split.method = "hash" (this config has '
                f'"{settings.split.method}"): only a split by each document\'s hash keeps val and '
                "test the same documents as sources grow, so that the champion and a candidate "
                "continued on new documents are scored on text neither trained on")  # fmt: skip
    return None


def resolve_preset(config: str | None) -> Path:
    """A config argument is a TOML path, or the name of a preset in `configs/`."""
    if config is None:
        config = DEFAULT_PRESET
    try:
        path = Path(config).expanduser()
    except RuntimeError:  # `~someone/x.toml` for a user this machine does not know
        raise ConfigError(f"{config}: no such user's home folder") from None
    if path.suffix != ".toml" and not path.is_file():
        preset = shipped_path("configs") / f"{config}.toml"
        if preset.is_file() or not path.is_dir():  # a folder `names/` does not hide a preset
            path = preset
    if path.is_dir():
        raise ConfigError(f"{config}: is a folder, not a config file (a TOML file or a preset)")
    if not path.is_file():
        presets = sorted(p.stem for p in shipped_path("configs").glob("*.toml"))
        known = f"presets: {', '.join(presets)}" if presets else "no presets are installed"
        # A relative path is read from the current folder: a worker's flow run reads it from
        # the folder of prefect.yaml, not where `prefect deployment run` was typed.
        try:
            where = "" if path.is_absolute() else f" in {Path.cwd()}"
        except FileNotFoundError:  # the current folder deleted under it: a traceback
            where = " in the current folder, which was deleted"
        raise ConfigError(f"{config}: no such config file{where} ({known})")
    return path.resolve()


def load_config(config: str | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a preset or TOML file, apply `key.path=value` overrides, and validate it."""
    path = resolve_preset(config)
    try:
        # utf-8-sig: a byte-order mark (Windows editors) is a mark, not a TOML statement.
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    except UnicodeDecodeError as error:  # TOML is UTF-8 by definition
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 (byte 0x{error.object[error.start]:02x} on line {line}): "
            "save the file as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror})") from None
    if isinstance(data, dict) and "name" not in data:
        # A file without a name is its own preset, recorded and looked up as such: under the
        # default's name its runs mixed with the bundled preset's (`runs --preset`, `size`).
        data["name"] = path.stem
    for override in overrides or []:
        _clear_switches_for_preset(data, override)
    for override in overrides or []:
        _apply_override(data, override, path)
    return parse_config(data, origin=str(path), overrides=overrides)


def parse_config(
    data: dict[str, Any], origin: str, overrides: list[str] | None = None
) -> PipelineConfig:
    try:
        settings = PipelineConfig.model_validate(data)
    except ValidationError as error:
        said = _ladder_train_problem(data, overrides) or _describe(error, PipelineConfig, overrides)
        raise ConfigError(f"{origin}: {said}") from None
    problem = _tokenizer_keys_of_another_kind(data, settings.tokenizer.kind, overrides)
    if problem:
        raise ConfigError(f"{origin}: {problem}")
    return settings


def _ladder_train_problem(data: dict[str, Any], overrides: list[str] | None) -> str | None:
    """A ladder model's `[models.train]`, merged over `[train]`, that does not validate, said
    under its own keys and `--set` as `[train]`'s are: the merge happens inside the config's
    own checks, which said `models 'mlp' train: unknown key 'max_step'`, no key, no `--set`."""
    entries, shared = data.get("models"), data.get("train", {})
    if not isinstance(entries, list) or not isinstance(shared, dict):
        return None
    try:
        base = TrainConfig.model_validate(shared).model_dump()
    except ValidationError:  # `[train]`'s own problem: said as such
        return None
    for index, entry in enumerate(entries):
        own = entry.get("train", {}) if isinstance(entry, dict) else {}
        if not isinstance(own, dict):
            continue
        try:
            TrainConfig.model_validate(base | own)
        except ValidationError as error:
            return _describe(error, TrainConfig, overrides, prefix=f"models.{index}.train")
    return None


def _tokenizer_keys_of_another_kind(
    data: dict[str, Any], kind: str, overrides: list[str] | None
) -> str | None:
    """Keys written in `[tokenizer]` (or by `--set`) that its kind ignores: `vocab_size = 100`
    on a char tokenizer (whose vocabulary is the train text's characters) changed nothing,
    silently. Refused, as a model table's keys of another model kind are. Only keys as written
    count: a stored config (every field, defaults too) is read again by retrain unchecked."""
    table = data.get("tokenizer")
    if not isinstance(table, dict):
        return None
    if kind == "char":
        foreign, owners = TokenizerConfig.SENTENCEPIECE_KEYS, "kinds 'bpe' and 'unigram'"
    else:
        foreign, owners = TokenizerConfig.CHAR_KEYS, "kind 'char'"
    written = [f"tokenizer.{key}" for key in foreign if key in table]
    if not written:
        return None
    source = _from_overrides("tokenizer.kind", overrides).removeprefix(", ")
    are = "are keys" if len(written) > 1 else "is a key"
    them = "them" if len(written) > 1 else "it"
    why = " (its vocabulary is the train text's characters)" if kind == "char" else ""
    # A bundled preset's keys cannot be removed: `--set` replaces the whole table instead.
    replaced = "tokenizer={kind=" + json.dumps(kind) + "}"
    table_hint = f", or replace the table: --set '{replaced}'" if source else ""
    return (
        f"tokenizer.kind is '{kind}'{f' ({source})' if source else ''}, but "
        f"{', '.join(written)} {are} of {owners}, which a '{kind}' tokenizer ignores{why}: "
        f"remove {them}{table_hint}"
    )


def _describe(
    error: ValidationError, root: type[BaseModel], overrides: list[str] | None = None,
    prefix: str = "",
) -> str:  # fmt: skip
    """Every problem pydantic found in one line, each under the key as the TOML writes it
    (pydantic's paths also hold the tags of unions, `model.gpt.n_layer`), an unknown key with
    the nearest valid one, and a problem in a key that a `--set` gave with that override.
    `prefix`: where `root` sits in the file (`models.2.train` for a ladder model's settings)."""
    problems: dict[tuple[str, str], list[str]] = {}
    # (model table, its kind): the keys it holds that belong to other kinds, and those kinds
    misplaced: dict[tuple[str, str], list[tuple[str, list[str]]]] = {}
    given: dict[tuple[str, str], str] = {}  # what a value of the wrong type was, said once
    for item in error.errors():
        key, siblings, node = _written_key(item["loc"], root)
        key = ".".join(part for part in (prefix, key) if part)
        owners = _other_kinds_having(item["loc"]) if item["type"] == "extra_forbidden" else []
        if owners:
            misplaced.setdefault((key.rpartition(".")[0], item["loc"][-2]), []).append(
                (key, owners)
            )
            continue
        if item["type"] == "extra_forbidden":
            problem = f"unknown key '{key}'" + (
                _nearest(key, siblings) or _variant_hint(key, siblings)
                or _alias_hint(key, siblings) or _other_table_hint(key)
            )  # fmt: skip
        elif item["type"] == "union_tag_invalid":
            kinds = item["ctx"]["expected_tags"]
            problem = f"unknown {key or 'model'} kind '{item['ctx']['tag']}' (kinds: {kinds})"
        elif item["type"] == "union_tag_not_found":
            kinds = ", ".join(f"'{kind}'" for kind in _kinds_of(node))
            problem = f"'{key}' needs a kind (one of {kinds})"
        else:  # a union of plain types fails once per member: one problem, its messages
            problem = f"'{key}': " if key else ""
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in TABLE_ERRORS:  # pydantic's words for a table: a "dictionary"
            message = f"should be a table, not {_toml_type(item['input'])}"
        elif item["type"] == "list_type":
            message = f"should be an array, not {_toml_type(item['input'])}"
        elif item["type"] == "missing":  # pydantic's "Field required"
            message = REQUIRED.get(key, "required, and missing")
        elif item["type"] in SCALAR_ERRORS:  # "should be a valid integer", of `n_layer = "2"`
            given[(key, problem)] = f", not {_given(item['input'])}"
        problems.setdefault((key, problem), []).append(message)
    lines = [
        _keys_of_another_kind(table, kind, keys, overrides)
        for (table, kind), keys in misplaced.items()
    ]
    for (key, problem), messages in problems.items():
        if problem.endswith(": ") or not problem:
            problem += " or ".join(messages) + given.get((key, problem), "")
        lines.append(problem + _from_overrides(key, overrides))
    return "; ".join(lines)


TABLE_ERRORS = ("model_type", "model_attributes_type", "dict_type")
# What to write where a required table or key is missing
REQUIRED = {
    "ingest": 'required, and missing: add [ingest] with sources = ["a file, folder or glob"]',
    "ingest.sources": 'required, and missing: write sources = ["a file, folder or glob"]',
}
# pydantic's errors of a value of the wrong type, whose message leaves out what was given
SCALAR_ERRORS = ("int_type", "int_parsing", "float_type", "float_parsing", "bool_type",
                 "bool_parsing", "string_type", "literal_error", "enum")  # fmt: skip


def _other_kinds_having(loc: tuple) -> list[str]:
    """The model kinds, other than the one chosen, that have the key at `loc`: `['gpt']` for
    `n_layer` in a `model` whose kind is `mlp` (pydantic's `loc` is `model.mlp.n_layer`)."""
    if len(loc) < 2 or loc[-2] not in _kinds_of(ModelConfig):
        return []
    chosen, leaf = loc[-2], loc[-1]
    return [
        member.model_fields["kind"].default
        for member in _union_members(ModelConfig)
        if member.model_fields["kind"].default != chosen and leaf in member.model_fields
    ]


def _keys_of_another_kind(
    table: str, kind: str, keys: list[tuple[str, list[str]]], overrides: list[str] | None
) -> str:
    """One problem for the keys a model table holds for another kind: most often a preset's
    `gpt` keys left behind by `--set model.kind=mlp`, which pydantic calls unknown one by one."""
    shared = set.intersection(*(set(owners) for _, owners in keys))
    owners = [owner for owner in keys[0][1] if owner in shared]
    if not owners:  # keys of different kinds: each is some other kind's
        owners = list(dict.fromkeys(owner for _, key_owners in keys for owner in key_owners))
    whose = " or ".join(f"'{owner}'" for owner in owners)
    named = ", ".join(f"'{key}'" for key, _ in keys)
    are = "are keys" if len(keys) > 1 else "is a key"
    them = "them" if len(keys) > 1 else "it"
    kind_key = f"{table}.kind"
    source = _from_overrides(kind_key, overrides).removeprefix(", ")
    return (
        f"{kind_key} is '{kind}'{f' ({source})' if source else ''}, but {named} {are} of kind "
        f"{whose}, not '{kind}': remove {them}, or start from a config written for kind '{kind}'"
    )


def _given(value: Any) -> str:
    """What was written, as a reader would name it: `the string "2"`, `an array`."""
    if isinstance(value, (list, dict)):
        return _toml_type(value)
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    shown = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"the {_toml_type(value).split(' ', 1)[1]} {shown}"


def _toml_type(value: Any) -> str:
    """What a parsed TOML value was written as."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}  # fmt: skip
    return next((name for kind, name in names.items() if isinstance(value, kind)), "a date")


def _written_key(loc: tuple, root: type[BaseModel]) -> tuple[str, list[str], Any]:
    """`loc` as the key a user writes, the keys valid beside its last part, and the type there."""
    written: list[str] = []
    siblings: list[str] = []
    node: Any = root
    for part in loc:
        while get_origin(node) is Annotated or len(_union_members(node)) == 1:  # X | None
            node = _union_members(node)[0] if _union_members(node) else get_args(node)[0]
        members = _union_members(node)
        if members:  # a tag: the member of that kind, or a plain type's name (`bool`)
            node = next((m for m in members if part in _kinds_of(m)), None)
            if node is not None or not isinstance(part, int):
                continue
        if isinstance(node, type) and issubclass(node, BaseModel):
            if node is LadderEntry and part == "model":  # `[[models]]` tables are flat
                node = node.model_fields["model"].annotation
                continue
            siblings = list(node.model_fields)
            field = node.model_fields.get(str(part))
            node = field.annotation if field else None
        elif get_origin(node) is list:
            node = get_args(node)[0]
        else:
            node = None
        written.append(str(part))
    return ".".join(written), siblings, node


def _union_members(node: Any) -> list:
    if get_origin(node) in (Union, UnionType):
        return [member for member in get_args(node) if member is not type(None)]
    return []


def _kinds_of(node: Any) -> list[str]:
    """The `kind` values a model, or a union of models, accepts."""
    members = _union_members(node) or [node]
    return [
        member.model_fields["kind"].default
        for member in members
        if isinstance(member, type)
        and issubclass(member, BaseModel)
        and "kind" in member.model_fields
    ]


def _variant_hint(key: str, siblings: list[str]) -> str:
    """An ablation variant's setting written beside its name, not in its `model` or `train`
    table (`{ name = "wide", n_embd = 64 }`): where it goes."""
    if siblings != list(AblationVariant.model_fields):
        return ""
    leaf = key.rpartition(".")[2]
    if any(leaf in kind.model_fields for kind in _union_members(ModelConfig)):
        return f" (a model setting: write model = {{ {leaf} = ... }})"
    if leaf in TrainConfig.model_fields:
        return f" (a training setting: write train = {{ {leaf} = ... }})"
    return ""


# nanoGPT's and other trainers' names for settings that have another name here
ALIASES = {"lr": "learning_rate", "max_iters": "max_steps", "eval_interval": "eval_every",
           "eval_iters": "eval_batches", "warmup_iters": "warmup_steps",
           "batch_size": "micro_batch", "grad_clip_norm": "grad_clip", "dtype": "precision",
           "epochs": "max_steps", "context_length": "block_size", "n_heads": "n_head",
           "n_layers": "n_layer", "d_model": "n_embd", "vocab": "vocab_size"}  # fmt: skip


def _alias_hint(key: str, siblings: list[str]) -> str:
    """`lr` for `learning_rate`, as nanoGPT's config names it: too far apart to be a typo."""
    parent, _, leaf = key.rpartition(".")
    meant = ALIASES.get(leaf)
    if meant is None:
        return ""
    if meant in siblings:
        return f" (did you mean '{parent + '.' if parent else ''}{meant}'?)"
    # `model.lr`: the setting of another table
    owners = [name for name, kind in _tables(PipelineConfig) if meant in kind.model_fields]
    return f" (did you mean '{owners[0]}.{meant}'?)" if owners else ""


def _other_table_hint(key: str) -> str:
    """A key of another table, written in this one (`[train] n_layer = 4`, `[tokenizer]
    min_words = 3`, `[clean] threshold = 0.8`, `max_steps = 3` above any table): which tables
    have it. Not said inside an array of tables (`[[models]]`, `sources`)."""
    table, _, leaf = key.rpartition(".")
    if any(part.isdigit() for part in key.split(".")):  # an entry of an array of tables
        return ""
    owners = [f"[{name}]" for name, kind in _tables(PipelineConfig)
              if name != table and leaf in kind.model_fields]  # fmt: skip
    if table and leaf in PipelineConfig.model_fields:  # `seed`, `name`: above every table
        owners.insert(0, "the top level")
    owners = list(dict.fromkeys(owners))
    if not owners:
        return ""
    listed = owners[0] if len(owners) == 1 else f"{', '.join(owners[:-1])} or {owners[-1]}"
    return f" (a key of {listed})"


def _tables(config: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """(dotted name, model class) of every table under `config`: `clean.quality`, and `model`
    once for each of its kinds."""
    for name, field in config.model_fields.items():
        annotation = field.annotation
        kinds = [annotation] if isinstance(annotation, type) else _union_members(annotation)
        for kind in kinds:
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield prefix + name, kind
                yield from _tables(kind, f"{prefix}{name}.")


def _nearest(key: str, siblings: list[str]) -> str:
    parent, _, leaf = key.rpartition(".")
    match = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.75)
    if not match:
        return ""
    return f" (did you mean '{parent + '.' if parent else ''}{match[0]}'?)"


def _from_overrides(key: str, overrides: list[str] | None) -> str:
    """`, from --set KEY=VALUE` for each override that set this key or a table holding it, and
    `, with --set KEY=VALUE` for each that set a key inside it (a table's own check, `model`:
    n_embd must be divisible by n_head, may be the file's doing as much as the override's)."""
    if not key:
        return ""
    setting, inside = [], []
    for override in overrides or []:
        set_key = ".".join(part.strip() for part in override.partition("=")[0].split("."))
        if key == set_key or key.startswith(set_key + "."):
            setting.append(f"--set {override}")
        elif set_key.startswith(key + "."):
            inside.append(f"--set {override}")
    said = [f"from {', '.join(setting)}"] if setting else []
    said += [f"with {', '.join(inside)}"] if inside else []
    return "".join(f", {part}" for part in said)


def _apply_override(data: dict[str, Any], override: str, path: Path) -> None:
    key, sep, raw_value = override.partition("=")
    parts = [part.strip() for part in key.split(".")]
    if not sep or not all(parts):
        raise ConfigError(f"override '{override}': expected KEY.PATH=VALUE")
    value = override_value(override, key.strip(), raw_value)
    *parents, leaf = parts
    node: Any = data
    for depth, part in enumerate(parents):
        if isinstance(node, list):  # an array of tables: `models.3.dropout` is its 4th entry
            node = node[_entry_index(node, part, override, path)]
        else:
            if part not in node and parts[depth + 1].isdigit():
                array = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"override '{override}': {path} has no array '{array}' to take an entry of"
                )
            node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise ConfigError(f"override '{override}': '{part}' in {path} is not a table")
    if isinstance(node, list):
        node[_entry_index(node, leaf, override, path)] = value
    else:
        node[leaf] = value


def _clear_switches_for_preset(data: dict[str, Any], override: str) -> None:
    """A `--set` that changes a gpt's `preset` (`model.preset`, `models.N.preset`) brings the
    preset's switches over those the file writes, as an ablation variant's preset does: kept
    under them (written values beat a preset), `--set model.preset=atinuke` trained the bundled
    default's grouped-query attention, and on a file writing every switch the file's model
    under the preset's name. Switches a `--set` gives still win: they are applied after this."""
    key, sep, raw_value = override.partition("=")
    parts = [part.strip() for part in key.split(".")]
    if not sep or parts[-1] != "preset":
        return
    table: Any = None
    if parts[:-1] == ["model"]:
        table = data.get("model")
    elif len(parts) == 3 and parts[0] == "models" and parts[1].isdigit():
        entries = data.get("models")
        if isinstance(entries, list) and int(parts[1]) < len(entries):
            table = entries[int(parts[1])]
    if not isinstance(table, dict) or table.get("kind", "gpt") != "gpt":
        return
    try:
        name = override_value(override, key.strip(), raw_value)
    except ConfigError:
        return  # `_apply_override` says what is wrong with it
    if isinstance(name, str) and name in GPT_PRESETS and table.get("preset") != name:
        for switch in GPT_PRESETS[name]:
            table.pop(switch, None)


def override_value(override: str, key: str, raw_value: str) -> Any:
    """The TOML value of an override; a bare word (`model.pos=rope`) is a string. A value that
    starts as TOML does (a quote, `[`, `{`) but does not parse is an error, not a string that
    would fail later as the wrong type or, for a string setting, be taken as it is."""
    if not raw_value.strip():
        raise ConfigError(
            f"override '{override}': no value after '=' (an empty string is written {key}=\"\")"
        )
    try:
        parsed = tomllib.loads(f"v = {raw_value}")
    except tomllib.TOMLDecodeError as error:
        if raw_value.strip()[0] in "[{\"'":
            raise ConfigError(f"override '{override}': not a valid TOML value ({error})") from None
        return raw_value.strip()  # a bare word
    if list(parsed) != ["v"]:  # a newline in the value would have set other keys
        raise ConfigError(f"override '{override}': the value must be one TOML value")
    return parsed["v"]


def _entry_index(entries: list, part: str, override: str, path: Path) -> int:
    """`part` as a 0-based index into `entries`, or an error naming the entries there are."""
    if not part.isdigit() or int(part) >= len(entries):
        raise ConfigError(
            f"override '{override}': '{part}' is not an entry of that array in {path} "
            f"(it has {len(entries)}, numbered from 0)"
        )
    return int(part)
