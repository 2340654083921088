"""The clean stage: raw documents → a corpus version (Parquet with decision columns) under
`corpus/<key>/`.

One cached task, whatever the runner. Annotation fans out over slices of the raw documents
through the `clean-annotate` subflow on the task runner that `[runtime]` names
(`flows/clean_flow.py`); on the threads runner without an explicit `clean.workers`, to worker
processes of this task; a corpus too small to be worth it, or `clean.workers = 1`, is annotated
here. The decisions then run
here, in input order, so the corpus (and its digest) is the same on threads, processes or Dask,
with any number of workers.
"""

from __future__ import annotations

import itertools
import math
import shutil
import unicodedata
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

from prefect import task

from flows.clean_flow import (
    annotate_slices,
    load_annotated,
    raw_batch_bytes,
    raw_text_bytes,
    read_raw_slice,
)
from lm.allocator import gives_back_freed_memory
from lm.config import CleanConfig, RuntimeConfig, SplitConfig
from lm.progress import ProgressLog
from lm.text.clean import (
    BATCH_DOCS,
    AnnotatedDocument,
    DecisionMaker,
    ProcessAnnotator,
    RowSlice,
    SlicePolicy,
    annotate_batches,
    decide_batches,
    plan_slices,
    split_assignment,
)
from lm.text.normalize import NORMALIZATION_VERSION
from storage.artifacts import ArtifactStore, Descriptor, reused
from storage.corpus import (
    CORPUS_SCHEMA,
    DOCUMENTS_FILE,
    CorpusDigest,
    DocumentWriter,
    read_raw_rows,
    row_count,
    row_group_bounds,
)
from storage.workspace import Workspace
from tasks.caching import cache_key_from, code_digest, stage_key
from tasks.runners import make_task_runner, worker_count

STAGE = "clean"
VERSION = 1
CODE = (
    "lm/text",
    "lm/config.py",
    "lm/progress.py",
    "storage/corpus.py",
    "storage/artifacts.py",
    "flows/clean_flow.py",
    "tasks/clean.py",
)
# Annotations of the slices, inside the staging directory; removed before it is published.
SCRATCH_DIR = "annotations"
SLICE_POLICY = SlicePolicy()


def corpus_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.corpus, workspace.root)


def clean_key(
    raw: Descriptor,
    config: CleanConfig,
    split: SplitConfig,
    runtime: RuntimeConfig | None = None,
) -> str:
    """Neither the worker count nor the runtime is part of the key, nor the split settings the
    corpus does not hold (`split_assignment`): they never change the corpus."""
    settings = f"{config.model_copy(update={'workers': 0}).digest()}:{split_assignment(split)}"
    return stage_key(STAGE, VERSION, settings, [raw.digest], code_digest(*CODE))


@task(name=STAGE, cache_key_fn=cache_key_from(clean_key), persist_result=True)
@gives_back_freed_memory
def clean_task(
    raw: Descriptor,
    config: CleanConfig,
    split: SplitConfig,
    runtime: RuntimeConfig | None = None,
) -> Descriptor:
    runtime = runtime or RuntimeConfig()
    workspace = Workspace.from_env()
    store = corpus_store(workspace)
    key = clean_key(raw, config, split)
    existing = store.load_descriptor(key)
    if existing is not None:
        return reused(existing)
    raw_path = workspace.resolve(raw.path) / DOCUMENTS_FILE
    total = row_count(raw_path)
    decider = DecisionMaker(config, split)
    with store.build(key) as staging:
        annotated, fan_out = _annotate(raw_path, total, config, runtime, staging / SCRATCH_DIR)
        digest, sources = _write_corpus(
            decide_batches(annotated, decider), staging / DOCUMENTS_FILE, config, total
        )
        stats_of_text = {"text_digest": digest.text_hexdigest()}
        shutil.rmtree(staging / SCRATCH_DIR, ignore_errors=True)
        fan_out["annotated_by"] = sorted(fan_out["annotated_by"])
        stats = decider.stats.as_dict() | {"sources": sources} | fan_out | stats_of_text
        stats["normalization_version"] = NORMALIZATION_VERSION
        stats["text_code_digest"] = text_code_digest()
        stats["unicode_version"] = unicodedata.unidata_version  # what NFC/NFKC follow
        descriptor = store.describe(staging, STAGE, key, digest.hexdigest(), stats)
    return descriptor


# The code that makes a document's text, and so its `doc_id` (the hash of that text):
# reading, markup removal, normalization; not the quality rules or near-duplicate search,
# which decide what is kept.
TEXT_CODE = tuple(f"lm/text/{name}.py" for name in (
    "census_names", "clean", "ingest", "json_array", "long_documents", "normalize", "readers",
    "sources", "url_credentials", "utf8_scan", "wikipedia_dump", "wikitext",
))  # fmt: skip


def text_code_digest() -> str:
    """A digest of `TEXT_CODE`: a corpus made by other such code may hold the same documents
    under other ids (`flows.retrain`)."""
    return code_digest(*TEXT_CODE)


def annotate_workers(runtime: RuntimeConfig, config: CleanConfig) -> int:
    """How many workers annotation fans out to (1: it stays in the task)."""
    return worker_count(runtime, config.workers)


def annotates_in_task_processes(runtime: RuntimeConfig, config: CleanConfig) -> bool:
    """On threads, unless `clean.workers` asks for threads, annotation runs in worker processes
    of the task's own (`ProcessAnnotator`): it is Python that holds the GIL, so threads add
    task runs and scratch files and no speed (measured: a third slower than one thread on
    30 MB). Worker processes and Dask workers bring cores of their own."""
    return runtime.task_runner == "threads" and not config.workers


def _annotate(
    raw_path: Path, total: int, config: CleanConfig, runtime: RuntimeConfig, scratch: Path
) -> tuple[Iterable[list[AnnotatedDocument]], dict]:
    """The annotated documents in input order, and how they were made: fanned out over slices
    on the runtime's task runner, in worker processes of this task, or here when one worker is
    asked for or the input is too small to be worth splitting."""
    workers = annotate_workers(runtime, config)
    if workers > 1 and annotates_in_task_processes(runtime, config):
        # Worth it from two slices' worth of text, as on a runner (`SlicePolicy`).
        if raw_text_bytes(raw_path) >= 2 * SLICE_POLICY.min_bytes:
            ranges = row_ranges(raw_path, 4 * workers)
            sources = [partial(read_raw_rows, raw_path, start, stop) for start, stop in ranges]
            annotator = ProcessAnnotator(sources, config, workers)
            # `annotated_by` fills in as the annotator is read.
            in_task = {"runner": "task-processes", "workers": workers, "slices": len(ranges)}
            return annotator, in_task | {"annotated_by": annotator.annotated_by}
        workers = 1
    slices = []
    if workers > 1:
        slices = plan_slices(raw_batch_bytes(raw_path), BATCH_DOCS, total, workers, SLICE_POLICY)
    if len(slices) <= 1:
        everything = read_raw_slice(raw_path, RowSlice(0, 0, total))
        inline = {"runner": "inline", "workers": 1, "slices": 1, "annotated_by": []}
        return annotate_batches(everything, config), inline
    runner = make_task_runner(runtime, workers)
    pieces = annotate_slices.with_options(task_runner=runner)(
        raw_path=str(raw_path), slices=slices, config=config, scratch=str(scratch)
    )
    fan_out = {
        "runner": runtime.task_runner,
        "workers": workers,
        "slices": len(slices),
        "annotated_by": sorted({piece.annotated_by for piece in pieces}),
    }
    return load_annotated(pieces), fan_out


def row_ranges(path: Path, at_least: int) -> list[tuple[int, int]]:
    """Row ranges of the raw file for the task's worker processes to read and annotate: its
    row groups, each read once, or cut into equal parts when there are fewer than `at_least`
    of them (each part then reads its whole group), so that every worker has work while the
    others finish theirs."""
    bounds = row_group_bounds(path)
    groups = list(itertools.pairwise(bounds))
    parts = math.ceil(at_least / max(len(groups), 1))
    return [
        (start + (stop - start) * part // parts, start + (stop - start) * (part + 1) // parts)
        for start, stop in groups
        for part in range(parts)
        if (stop - start) * (part + 1) // parts > (stop - start) * part // parts
    ]


def _write_corpus(
    rows_by_batch: Iterator[list[dict]], path: Path, config: CleanConfig, total: int
) -> tuple[CorpusDigest, dict[str, dict[str, int]]]:
    """Write the decided rows in order; return the corpus's digests and per-source counts."""
    digest = CorpusDigest()
    sources: dict[str, dict[str, int]] = {}
    progress = ProgressLog("clean", total=total, unit="docs")
    processed = 0
    with DocumentWriter(path, CORPUS_SCHEMA, config.row_group_docs) as out:
        for rows in rows_by_batch:
            for row in rows:
                out.write(row)
                digest.update(row)
                counts = sources.setdefault(row["source_file"], {"documents": 0, "kept": 0})
                counts["documents"] += 1
                counts["kept"] += int(row["keep"])
            processed += len(rows)
            progress.update(processed)
    progress.finish()
    return digest, sources
