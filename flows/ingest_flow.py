"""The ingest stage's fan-out: the input files in contiguous parts, one mapped task per part, on
whatever task runner the caller gives the `ingest-read` subflow.

Reading (downloading, decompressing, parsing each format) is independent per file and is nearly
all the stage's work, so it is what fans out. Every file is read by exactly one mapped task, which
writes the documents of its part to a Parquet file in the stage's staging directory and hands
back its path. The ingest task then copies the parts, in input order, into the raw documents
file and hashes them as it goes, so the raw corpus and its digest are the same on any runner with
any number of workers. Parts are balanced by file size (compressed size, for compressed files),
and group many small files into one task: a task per file would cost more than reading it.

On a remote Dask cluster the workspace and the inputs must be on a filesystem that every worker
sees at the same path.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from lm.config import IngestConfig
from lm.progress import ProgressLog
from lm.text.clean import SlicePolicy, plan_slices
from lm.text.ingest import iter_input_documents
from lm.text.readers import RawDocument
from lm.text.sources import ResolvedInput
from storage.corpus import RAW_SCHEMA, DocumentWriter, bounded_row_batches, open_parquet
from tasks.runners import results_in_order

READ_BATCH_DOCS = 256  # documents per batch when a part is copied into the raw documents file


@dataclass(frozen=True)
class InputPart:
    """Consecutive inputs `[start, stop)` of the resolved list: one mapped task's share."""

    index: int
    start: int
    inputs: tuple[ResolvedInput, ...]

    @property
    def stop(self) -> int:
        return self.start + len(self.inputs)

    @property
    def size(self) -> int:
        """Bytes on disk, as far as known (a URL's size is known only once downloaded)."""
        return sum(item.size or 0 for item in self.inputs)


@dataclass(frozen=True)
class ReadPart:
    """What a mapped task hands back: its part, the Parquet file holding its documents, how
    many there are, and the `host:pid` of the worker that read them."""

    part: InputPart
    path: str
    documents: int
    read_by: str


def plan_parts(inputs: list[ResolvedInput], workers: int, policy: SlicePolicy) -> list[InputPart]:
    """Cut the inputs into contiguous parts for `workers` workers, balanced by size, with at
    least `policy.min_bytes` each and at most `policy.max_docs` files: the clean stage's slice
    planning, with each file as a batch of one. An input of unknown size (a URL) counts as one
    part's worth. A single part back means the inputs are too few or too small to fan out."""
    sizes = [policy.min_bytes if item.size is None else item.size for item in inputs]
    slices = plan_slices(sizes, 1, len(inputs), workers, policy)
    return [InputPart(s.index, s.start, tuple(inputs[s.start : s.stop])) for s in slices]


@task(
    name="read-part",
    task_run_name="read inputs {part.start}-{part.stop}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def read_part_task(
    part: InputPart, config: IngestConfig, download_dir: str, scratch: str
) -> ReadPart:
    path = Path(scratch) / f"part-{part.index:06d}.parquet"
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    documents = iter_input_documents(
        list(part.inputs), config.encoding_errors, Path(download_dir), config.url_timeout_s,
        name=f"ingest: inputs {part.start}-{part.stop}", max_document_mb=config.max_document_mb,
    )  # fmt: skip
    with DocumentWriter(partial, RAW_SCHEMA, config.row_group_docs) as writer:
        for document in documents:
            writer.write(document._asdict())
    os.replace(partial, path)
    return ReadPart(part, str(path), writer.rows_written, f"{socket.gethostname()}:{os.getpid()}")


def write_plan(parts: list[InputPart], scratch: Path) -> Path:
    """The parts, in a file of the stage's scratch space for `read_parts`: as the flow's own
    parameters (every file's name, size and time) a folder of a few thousand files passed
    Prefect's 512 KB limit on a flow run's parameters, a 422 error and a traceback."""
    scratch.mkdir(parents=True, exist_ok=True)
    plan = scratch / "parts.pickle"
    plan.write_bytes(pickle.dumps(parts))
    return plan


@flow(name="ingest-read", persist_result=False)
def read_parts(plan: str, config: IngestConfig, download_dir: str, scratch: str) -> list[ReadPart]:
    """Read every part of the plan file (`write_plan`) on this flow's task runner; the result
    is in input order."""
    parts: list[InputPart] = pickle.loads(Path(plan).read_bytes())  # written by this stage
    Path(scratch).mkdir(parents=True, exist_ok=True)
    futures = read_part_task.map(
        part=parts,
        config=unmapped(config),
        download_dir=unmapped(download_dir),
        scratch=unmapped(scratch),
    )
    progress = ProgressLog("ingest: read", total=sum(part.size for part in parts) or None)
    return results_in_order(futures, progress, lambda piece: piece.part.size)


def load_parts(pieces: list[ReadPart]) -> Iterator[RawDocument]:
    """The documents of every part, part by part, in order; each part's file is deleted once
    read, so the scratch space shrinks as the copy advances."""
    for piece in pieces:
        path = Path(piece.path)
        parquet = open_parquet(path)
        for rows in bounded_row_batches(parquet, RAW_SCHEMA.names, READ_BATCH_DOCS, path=path):
            for row in rows:
                yield RawDocument(*row)
        parquet.close()
        path.unlink()
