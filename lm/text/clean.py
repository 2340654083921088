"""Cleaning: raw documents in, the same documents out with their text normalized and every
decision recorded as a column.

Two phases, after datatrove's stats-counting steps and dolma's attribute/mixer split:

1. `annotate_batch` (pure, per document, fans out to workers): strip wiki markup, normalize,
   hash into `doc_id`, measure quality, compute the MinHash signature. `plan_slices` cuts the
   input into contiguous slices of whole batches for the workers.
2. `DecisionMaker` (sequential, in order): exact and near duplicates need to know which documents
   came before, so this runs in one process over the annotated stream, in input order, which
   makes the corpus identical however many workers annotated it, and on whatever runner.

Nothing is dropped: rejected documents stay in the output with `keep = false` and the first rule
they failed in `reject_reason`; the clean view is `WHERE keep`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import math
import multiprocessing
import os
import socket
import sys
import types
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from lm.config import CleanConfig, SplitConfig
from lm.text.near_duplicates import MinHasher, NearDuplicateIndex
from lm.text.normalize import normalize_texts
from lm.text.quality import QUALITY_FLAGS, measure_quality_batch, quality_flags
from lm.text.wikitext import strip_wikitext
from lm.text.word_hashes import BatchWords, character_ids

logger = logging.getLogger("lm.text.clean")

# Decision columns in the order a document is judged; `reject_reason` names the first that holds.
DECISION_FLAGS = ("too_short", *QUALITY_FLAGS, "exact_duplicate", "near_duplicate")
RawRow = tuple[str, str, str, str, str | None]  # (source, source_file, text, markup, part_of)
# Documents annotated together: the numpy passes amortise over a batch (measured: 64 a tenth
# faster than 32, 128 no faster again). Small enough that a few Wikipedia articles make a
# batch, so work can be spread evenly; slices are cut between batches.
BATCH_DOCS = 64
# ... and at most this many characters (a longer document alone): annotation holds about 25
# times the text of its batch, and 64 book-sized documents are hundreds of MB of text.
BATCH_CHARS = 4_000_000


# A document with more characters a word than this is written without spaces (Chinese,
# Japanese, Thai: its "words" are clauses) and is shingled by characters for near-duplicate
# detection; prose with spaces has 5 to 9 (German and Finnish compounds included).
UNSPACED_CHARS_PER_WORD = 15


@dataclass
class AnnotatedDocument:
    source: str
    source_file: str
    part_of: str | None  # the text it is a piece of (`RawDocument.part_of`)
    text: str
    n_bytes: int  # of the text in UTF-8
    doc_id: str
    measurements: dict
    flags: dict[str, bool]
    signature: np.ndarray | None


def annotate_batch(batch: list[RawRow], config: CleanConfig) -> list[AnnotatedDocument]:
    """Everything about each document that does not depend on other documents."""
    strip = config.strip_wiki_markup
    raw_texts = [
        strip_wikitext(text) if strip and markup == "wikitext" else text
        for _, _, text, markup, _ in batch
    ]
    texts = normalize_texts(raw_texts, config.normalization, config.collapse_whitespace)
    encoded = [text.encode() for text in texts]
    words = BatchWords.of(texts, encoded)
    measurements = measure_quality_batch(texts, words)
    flags = [
        {"too_short": len(text) < config.min_chars} | quality_flags(m, config.quality)
        for text, m in zip(texts, measurements, strict=True)
    ]
    signatures: list[np.ndarray | None] = [None] * len(texts)
    if config.near_dup.enabled:
        # Only documents that pass every rule can be kept, so only they need a signature.
        passing = [i for i, f in enumerate(flags) if not any(f.values())]
        hasher = _min_hasher(
            config.near_dup.num_perm, config.near_dup.shingle_size, config.near_dup.seed
        )
        starts, counts = words.starts.tolist(), words.counts.tolist()
        ids = [
            character_ids(texts[i])
            if len(texts[i]) > UNSPACED_CHARS_PER_WORD * max(counts[i], 1)
            else words.ids[starts[i] : starts[i] + counts[i]]
            for i in passing
        ]
        for index, signature in zip(passing, hasher.signatures_of_ids(ids), strict=True):
            signatures[index] = signature
    return [
        AnnotatedDocument(
            source=source,
            source_file=source_file,
            part_of=part_of,
            text=text,
            n_bytes=len(utf8),
            doc_id=hashlib.sha256(utf8).hexdigest(),
            measurements=m,
            flags=f,
            signature=signature,
        )
        for (source, source_file, _, _, part_of), text, utf8, m, f, signature in zip(
            batch, texts, encoded, measurements, flags, signatures, strict=True
        )
    ]


@functools.lru_cache(maxsize=4)
def _min_hasher(num_perm: int, shingle_size: int, seed: int) -> MinHasher:
    """One hasher per setting for every batch: drawing its permutations costs a batch's worth of
    small-array work."""
    return MinHasher(num_perm, shingle_size, seed)


def split_assignment(split: SplitConfig) -> str:
    """What `split_of` reads of `split`, as text for the clean stage's cache key: `shuffle`
    orders the shards, and under `ordered` the fractions cut the token stream, neither in the
    corpus, so changing them re-ran clean to the same corpus."""
    if split.method == "ordered":
        return "ordered"
    return f"{split.method}:{split.val!r}:{split.test!r}:{split.unit}"


def split_of(doc_id: str, split: SplitConfig, row: int = 0) -> str:
    """`train`, `val` or `test`, from the document's hash alone (`hash`), or from its row in the
    corpus (`random`); both are stable as the corpus grows at its end. With the `ordered` method
    the cut is made later, by position in the token stream, so every document is `train` here
    (the tokenizer learns from all of the text before the cut)."""
    if split.method == "ordered":
        return "train"
    if split.method == "random":
        doc_id = hashlib.sha256(f"row {row}".encode()).hexdigest()
    position = int(doc_id[:16], 16) / float(1 << 64)
    if position < split.val:
        return "val"
    if position < split.val + split.test:
        return "test"
    return "train"


@dataclass
class CleaningStats:
    """What cleaning did: documents in and kept, and per rule how many documents failed it
    (`flagged`) and how many it removed as the first rule they failed (`removed`)."""

    documents: int = 0
    kept: int = 0
    kept_chars: int = 0
    kept_bytes: int = 0
    flagged: Counter = field(default_factory=Counter)
    removed: Counter = field(default_factory=Counter)
    split_documents: Counter = field(default_factory=Counter)
    split_bytes: Counter = field(default_factory=Counter)
    pieces: int = 0  # documents that are pieces of a longer text ...
    texts_cut: int = 0  # ... and how many texts they were cut from

    def as_dict(self) -> dict:
        return {
            "documents": self.documents,
            "pieces": self.pieces,
            "texts_cut": self.texts_cut,
            "kept": self.kept,
            "kept_chars": self.kept_chars,
            "kept_bytes": self.kept_bytes,
            "flagged": {flag: self.flagged[flag] for flag in DECISION_FLAGS},
            "removed": {flag: self.removed[flag] for flag in DECISION_FLAGS},
            "split_documents": dict(sorted(self.split_documents.items())),
            "split_bytes": dict(sorted(self.split_bytes.items())),
        }


class DecisionMaker:
    """Sequential decisions: exact and near duplicates, the split, and the final `keep`."""

    def __init__(self, config: CleanConfig, split: SplitConfig):
        self.config = config
        self.split = split
        self.stats = CleaningStats()
        self._text: tuple[str, str] | None = None  # the text being read in pieces, its split
        self._seen: set[bytes] = set()
        self._near = (
            NearDuplicateIndex(config.near_dup.threshold, config.near_dup.num_perm)
            if config.near_dup.enabled
            else None
        )

    def decide(self, doc: AnnotatedDocument) -> dict:
        flags = dict(doc.flags)
        key = bytes.fromhex(doc.doc_id)
        flags["exact_duplicate"] = self.config.exact_dedup and key in self._seen
        self._seen.add(key)
        near_dup_of = None
        if self._near is not None and doc.signature is not None and not flags["exact_duplicate"]:
            near_dup_of = self._near.find_or_add(doc.doc_id, doc.signature)
        flags["near_duplicate"] = near_dup_of is not None
        reason = next((flag for flag in DECISION_FLAGS if flags[flag]), None)
        keep = reason is None
        n_bytes = doc.n_bytes
        split = self._split_of(doc)

        stats = self.stats
        stats.documents += 1
        stats.flagged.update(flag for flag in DECISION_FLAGS if flags[flag])
        if keep:
            stats.kept += 1
            stats.kept_chars += len(doc.text)
            stats.kept_bytes += n_bytes
            stats.split_documents[split] += 1
            stats.split_bytes[split] += n_bytes
        else:
            stats.removed[reason] += 1
        return {
            "doc_id": doc.doc_id,
            "source": doc.source,
            "source_file": doc.source_file,
            "part_of": doc.part_of,
            "text": doc.text,
            "n_chars": len(doc.text),
            "n_bytes": n_bytes,
            "split": split,
            "keep": keep,
            "reject_reason": reason,
            "near_dup_of": near_dup_of,
            **flags,
            **doc.measurements,
        }

    def _split_of(self, doc: AnnotatedDocument) -> str:
        """The document's split; a piece's, under `split.unit = "text"`, is the first piece's of
        its text (a text's pieces come one after another: one reader cut them): cut only to
        bound memory, a book is held out whole, as it was read whole, and not as pieces of a
        book whose others train the model. The first piece's draw, not the text's name: a file
        renamed or moved keeps its split, as a document read whole does."""
        own = split_of(doc.doc_id, self.split, row=self.stats.documents)
        if doc.part_of is None:
            return own
        self.stats.pieces += 1
        if self._text is None or self._text[0] != doc.part_of:  # a text's first piece
            self.stats.texts_cut += 1
            self._text = (doc.part_of, own)
        return self._text[1] if self.split.unit == "text" else own


@dataclass(frozen=True)
class RowSlice:
    """Rows `[start, stop)` of the raw documents: one worker's share of the annotation."""

    index: int
    start: int
    stop: int

    @property
    def documents(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class SlicePolicy:
    """How finely annotation fans out: about `per_worker` slices per worker so that one slow
    slice does not leave the others idle; at least `min_bytes` of text per slice; at most
    `max_bytes` and `max_docs` (a worker's memory stays bounded).

    `min_bytes` is a few seconds of annotation. Fanning out has fixed costs: Prefect task runs
    (a tenth of a second each), and on the process runner a fresh interpreter per worker that
    imports Prefect (about 4 CPU-seconds here), so a corpus under two slices' worth (the
    bundled one is 6 MB) is faster annotated where it is."""

    per_worker: int = 4
    min_bytes: int = 4 << 20
    max_bytes: int = 32 << 20
    max_docs: int = 16384


def plan_slices(
    batch_bytes: list[int],
    batch_docs: int,
    total: int,
    workers: int,
    policy: SlicePolicy = SlicePolicy(),
) -> list[RowSlice]:
    """Cut `total` raw documents, in batches of `batch_docs` whose text sizes are `batch_bytes`,
    into contiguous slices of whole batches for `workers` workers, following `policy`.

    Slices are balanced by text bytes, not documents: a Wikipedia article costs as much as a
    hundred news stories. Cutting only between batches keeps every batch what it is when one
    process reads the file from start to end. A single slice back means the input is too small
    to be worth fanning out."""
    if total == 0 or not batch_bytes:
        return []
    n_batches = len(batch_bytes)
    total_bytes = sum(batch_bytes)
    wanted = min(workers * policy.per_worker, total_bytes // policy.min_bytes)
    wanted = min(max(wanted, math.ceil(total_bytes / policy.max_bytes), 1), n_batches)
    cumulative = np.cumsum(batch_bytes)
    bounds = {0, n_batches}  # slice boundaries, counted in batches
    for k in range(1, wanted):
        goal = total_bytes * k / wanted
        reaching = int(np.searchsorted(cumulative, goal))  # the batch that reaches the goal
        # Cut before or after it, whichever leaves the cumulative size nearer the goal.
        before = reaching > 0 and goal - cumulative[reaching - 1] < cumulative[reaching] - goal
        bounds.add(reaching if before else reaching + 1)
    max_batches = max(1, policy.max_docs // batch_docs)
    slices: list[RowSlice] = []
    for first, end in itertools.pairwise(sorted(bounds)):
        parts = math.ceil((end - first) / max_batches)
        for part in range(parts):
            low = first + (end - first) * part // parts
            high = first + (end - first) * (part + 1) // parts
            slices.append(RowSlice(len(slices), low * batch_docs, min(high * batch_docs, total)))
    return slices


def annotate_batches(
    batches: Iterable[list[RawRow]], config: CleanConfig
) -> Iterator[list[AnnotatedDocument]]:
    for batch in batches:
        yield annotate_batch(batch, config)


def decide_batches(
    annotated: Iterable[list[AnnotatedDocument]], decider: DecisionMaker
) -> Iterator[list[dict]]:
    """Output rows batch by batch, in input order; `decider.stats` holds the counts once the
    stream is exhausted."""
    for documents in annotated:
        yield [decider.decide(doc) for doc in documents]


def clean_documents(
    batches: Iterable[list[RawRow]], decider: DecisionMaker, workers: int = 1
) -> Iterator[list[dict]]:
    """Clean a stream of raw batches outside any orchestrator, yielding output rows batch by
    batch in input order; `decider.stats` holds the counts once the stream is exhausted. With
    `workers > 1`, annotation runs in a `ProcessAnnotator`."""
    annotated = (
        ProcessAnnotator.of_batches(batches, decider.config, workers)
        if workers > 1
        else annotate_batches(batches, decider.config)
    )
    yield from decide_batches(annotated, decider)


BatchSource = Callable[[], Iterable[list[RawRow]]]


class ProcessAnnotator:
    """Annotated batches, in input order, from a local pool of `workers` processes: iterate it
    once. Each task is a `BatchSource`, a picklable callable that gives raw batches: a worker
    calls it and annotates what it gives, so a source that reads a row range of the raw file
    (`storage.corpus.read_raw_rows`) spares the parent sending the text. At most two tasks per
    worker are in flight, so memory stays flat however large the input. `annotated_by` holds
    the `host:pid` of every worker that did some of the work.

    This is how the clean stage uses every core on the threads runner, where annotation in
    threads would hold the GIL: the pool lives inside the task, and its workers import only
    `lm` and `storage` (a second to start, against Prefect's four for a process runner's
    worker)."""

    def __init__(self, sources: Iterable[BatchSource], config: CleanConfig, workers: int):
        self._sources = sources
        self._config = config
        self._workers = workers
        self.annotated_by: set[str] = set()

    @classmethod
    def of_batches(
        cls,
        batches: Iterable[list[RawRow]],
        config: CleanConfig,
        workers: int,
        batches_per_task: int = 8,
    ) -> ProcessAnnotator:
        """Batches the parent already has, sent `batches_per_task` at a time."""
        batches = iter(batches)
        chunks = iter(lambda: tuple(itertools.islice(batches, batches_per_task)), ())
        return cls((partial(_given, chunk) for chunk in chunks), config, workers)

    def __iter__(self) -> Iterator[list[AnnotatedDocument]]:
        # 'spawn': the parent runs Prefect's threads, and forking a threaded process can deadlock.
        context = multiprocessing.get_context("spawn")
        work = partial(_annotate_in_worker, config=self._config)
        with _main_module_hidden():
            pool = context.Pool(self._workers)
        with pool:
            pending: deque = deque()
            for source in self._sources:
                pending.append(pool.apply_async(work, (source,)))
                if len(pending) >= 2 * self._workers:
                    yield from self._collect(pending.popleft())
            while pending:
                yield from self._collect(pending.popleft())

    def _collect(self, result) -> Iterator[list[AnnotatedDocument]]:
        worker, annotated = result.get()
        self.annotated_by.add(worker)
        yield from annotated


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While workers start, `__main__` is a bare module. A spawned worker first re-runs the
    parent's `__main__` (the `lmforge` script, `prefect`, a served flow), which imports Prefect:
    about 3 s per worker (measured: 2.8-3.7 s to a first result, 0.7 s without). The workers
    need nothing from it: their work is `lm` and `storage` functions."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _given(batches: tuple[list[RawRow], ...]) -> tuple[list[RawRow], ...]:
    return batches


def _annotate_in_worker(
    source: BatchSource, config: CleanConfig
) -> tuple[str, list[list[AnnotatedDocument]]]:
    worker = f"{socket.gethostname()}:{os.getpid()}"
    return worker, [annotate_batch(batch, config) for batch in source()]
