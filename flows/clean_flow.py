"""The clean stage's fan-out: annotation of contiguous slices of the raw documents, one mapped
task per slice, on whatever task runner the caller gives the `clean-annotate` subflow.

Annotation (markup removal, normalization, quality measurements, MinHash signatures) is
independent per document and is nearly all the stage's work, so it is what fans out. Mapped
tasks pass small descriptors: a slice is a row range of the raw Parquet file, and its annotated
documents go to a scratch file in the stage's staging directory, whose path comes back. The
decisions that need every earlier document (duplicates, the split) then run in the clean task,
in input order, so the corpus is the same on any runner with any number of workers.

Scratch files are pickles of `AnnotatedDocument`s: they live only inside one build's staging
directory, are written and read by the same code, and pickle round-trips the numpy signatures
exactly at the least cost. On a remote Dask cluster the workspace must be on a filesystem that
every worker sees at the same path.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from lm.config import CleanConfig
from lm.progress import ProgressLog
from lm.text.clean import (
    BATCH_DOCS,
    AnnotatedDocument,
    RawRow,
    RowSlice,
    annotate_batches,
)
from storage.corpus import damage_named, open_parquet, read_raw_rows
from tasks.runners import results_in_order


@dataclass(frozen=True)
class AnnotatedSlice:
    """What a mapped task hands back: its rows, the scratch file holding their annotations,
    and the `host:pid` of the worker that annotated them (which runner really ran it)."""

    rows: RowSlice
    path: str
    annotated_by: str


def read_raw_slice(
    path: Path, rows: RowSlice, batch_docs: int = BATCH_DOCS
) -> Iterator[list[RawRow]]:
    """Raw documents of `rows` as batches of `batch_docs` (fewer where they are long), counted
    from the slice's start. A document's annotations do not depend on its batch, so slices
    annotate as the whole file read as one slice does."""
    return read_raw_rows(path, rows.start, rows.stop, batch_docs)


def raw_text_bytes(path: Path) -> int:
    """About how many bytes of text the raw documents file holds, from its metadata alone (the
    text column's uncompressed size, length prefixes included): enough to tell whether the
    input is worth splitting, without reading it."""
    metadata = open_parquet(path).metadata
    if metadata.num_row_groups == 0:
        return 0
    text = metadata.schema.to_arrow_schema().get_field_index("text")
    return sum(
        metadata.row_group(group).column(text).total_uncompressed_size
        for group in range(metadata.num_row_groups)
    )


def raw_batch_bytes(path: Path, batch_docs: int = BATCH_DOCS) -> list[int]:
    """The text size of every batch of the raw documents file, to balance slices by work."""
    parquet = open_parquet(path)
    with damage_named(path):
        lengths = [
            pc.binary_length(parquet.read_row_group(group, columns=["text"]).column("text"))
            .to_numpy()
            .astype(np.int64)
            for group in range(parquet.metadata.num_row_groups)
        ]
    if not lengths:
        return []
    sizes = np.concatenate(lengths)
    if len(sizes) == 0:
        return []
    return np.add.reduceat(sizes, np.arange(0, len(sizes), batch_docs)).tolist()


@task(
    name="annotate-slice",
    task_run_name="annotate rows {rows.start}-{rows.stop}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def annotate_slice_task(
    raw_path: str, rows: RowSlice, config: CleanConfig, scratch: str
) -> AnnotatedSlice:
    batches = read_raw_slice(Path(raw_path), rows)
    documents = [doc for batch in annotate_batches(batches, config) for doc in batch]
    path = Path(scratch) / f"slice-{rows.index:06d}.pkl"
    _save_annotations(path, documents)
    return AnnotatedSlice(rows, str(path), f"{socket.gethostname()}:{os.getpid()}")


@flow(name="clean-annotate", persist_result=False)
def annotate_slices(
    raw_path: str, slices: list[RowSlice], config: CleanConfig, scratch: str
) -> list[AnnotatedSlice]:
    """Annotate every slice on this flow's task runner; the result is in slice order."""
    Path(scratch).mkdir(parents=True, exist_ok=True)
    futures = annotate_slice_task.map(
        raw_path=unmapped(raw_path), rows=slices, config=unmapped(config), scratch=unmapped(scratch)
    )
    progress = ProgressLog("clean: annotate", total=sum(s.documents for s in slices), unit="docs")
    return results_in_order(futures, progress, lambda piece: piece.rows.documents)


def load_annotated(pieces: list[AnnotatedSlice]) -> Iterator[list[AnnotatedDocument]]:
    """The annotated documents slice by slice, in order; each scratch file is deleted once read,
    so the scratch space shrinks as the decisions advance."""
    for piece in pieces:
        path = Path(piece.path)
        with path.open("rb") as file:
            documents = pickle.load(file)
        path.unlink()
        yield documents


def _save_annotations(path: Path, documents: list[AnnotatedDocument]) -> None:
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    with partial.open("wb") as file:
        pickle.dump(documents, file, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(partial, path)
