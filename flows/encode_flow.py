"""The encode stage's fan-out: contiguous slices of the clean corpus encoded into token shards,
one mapped task per slice, on whatever task runner the caller gives the `encode-slices` subflow.

With the hash split, every kept document goes, in corpus order, to the shard of the split that
cleaning gave it, followed by end-of-text: so encoding rows `[start, stop)` into shards of their
own and then appending those shards, slice after slice, gives the same bytes as encoding the
whole corpus in one pass. A mapped task writes its slice's shards with the same `ShardWriter`
the encode task uses, in a scratch folder of the stage's staging directory, and hands back their
headers; the encode task appends them (`append_slices`), a chunk at a time, and deletes each once
copied. Mapped tasks pass paths and headers, never token arrays.

On a remote Dask cluster the workspace must be on a filesystem that every worker sees at the
same path.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from lm.progress import ProgressLog
from lm.text.clean import RowSlice
from lm.tokenizer import Tokenizer, encoded_documents, load_tokenizer
from storage.corpus import bounded_row_batches, damage_named, open_parquet
from storage.shards import ShardInfo, ShardWriter
from tasks.runners import results_in_order

SPLITS = ("train", "val", "test")
BATCH_DOCS = 256  # corpus rows per encoding batch


@dataclass(frozen=True)
class EncodedSlice:
    """What a mapped task hands back: its rows, the header of each split's shard of them (in
    the scratch folder, named with `slice_prefix`), and the `host:pid` of the worker that
    encoded them."""

    rows: RowSlice
    infos: dict[str, ShardInfo]
    folder: str
    encoded_by: str

    def shard(self, split: str) -> Path:
        return Path(self.folder) / f"{slice_prefix(self.rows)}{split}.bin"


def slice_prefix(rows: RowSlice) -> str:
    return f"slice-{rows.index:06d}-"


def kept_batch_bytes(path: Path, batch_docs: int = BATCH_DOCS) -> list[int]:
    """The UTF-8 size of the kept text in every batch of `batch_docs` corpus rows, to balance
    slices by work. Reads two small columns, a row group at a time, never the text."""
    parquet = open_parquet(path)
    totals: list[int] = []
    pending = np.zeros(0, dtype=np.int64)  # sizes of the rows of an unfinished batch
    for group in range(parquet.metadata.num_row_groups):
        with damage_named(path):
            table = parquet.read_row_group(group, columns=["n_bytes", "keep"])
        kept = pc.if_else(table.column("keep"), table.column("n_bytes"), 0).to_numpy()
        pending = np.concatenate([pending, kept.astype(np.int64)])
        whole = len(pending) // batch_docs * batch_docs
        totals += pending[:whole].reshape(-1, batch_docs).sum(axis=1).tolist()
        pending = pending[whole:]
    if len(pending):
        totals.append(int(pending.sum()))
    return totals


def read_kept_rows(
    path: Path, rows: RowSlice, batch_docs: int = BATCH_DOCS
) -> Iterator[tuple[list[str], list[str]]]:
    """The texts and splits of the kept documents among corpus rows `rows.start` to `rows.stop`,
    in order, at most `batch_docs` rows at a time. Reads only the row groups that overlap, and
    decodes them a batch at a time (a corpus written by DuckDB has row groups of 122,880 rows)."""
    parquet = open_parquet(path)
    groups, position, offset = [], None, 0
    for group in range(parquet.metadata.num_row_groups):
        group_rows = parquet.metadata.row_group(group).num_rows
        if offset < rows.stop and rows.start < offset + group_rows:
            groups.append(group)
            position = offset if position is None else position
        offset += group_rows
    if not groups:
        return
    batches = bounded_row_batches(parquet, ["text", "split", "keep"], batch_docs, groups, path)
    for rows_read in batches:
        low, high = max(rows.start - position, 0), min(rows.stop - position, len(rows_read))
        position += len(rows_read)
        kept = [(text, split) for text, split, keep in rows_read[low:high] if keep]
        if kept:
            texts, splits = zip(*kept, strict=True)
            yield list(texts), list(splits)
        if position >= rows.stop:
            break


def encode_rows(
    path: Path,
    rows: RowSlice,
    model: Tokenizer,
    writers: dict[str, ShardWriter],
    progress: ProgressLog | None = None,
) -> None:
    """Encode the kept documents of `rows` into the writer of each one's split, in corpus
    order."""
    done_bytes = 0
    for texts, splits in read_kept_rows(path, rows):
        encoded = encoded_documents(model, texts, splits)
        for text, split, ids in zip(texts, splits, encoded, strict=True):
            n_bytes = len(text.encode())
            writers[split].write(ids, n_bytes)
            done_bytes += n_bytes
        if progress is not None:
            progress.update(done_bytes)


def shard_writers(folder: Path, model: Tokenizer, prefix: str = "") -> dict[str, ShardWriter]:
    """A `ShardWriter` per split, writing `folder / f"{prefix}{split}.bin"`."""
    digest, eot_id, vocab_size = model.digest, model.eot_id, model.vocab_size
    return {
        split: ShardWriter(folder / f"{prefix}{split}.bin", digest, eot_id, vocab_size)
        for split in SPLITS
    }


@task(
    name="encode-slice",
    task_run_name="encode rows {rows.start}-{rows.stop}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def encode_slice_task(
    documents: str, rows: RowSlice, tokenizer: str, threads: int, scratch: str
) -> EncodedSlice:
    model = load_tokenizer(Path(tokenizer), threads)
    writers = shard_writers(Path(scratch), model, slice_prefix(rows))
    encode_rows(Path(documents), rows, model, writers)
    infos = {split: writer.close() for split, writer in writers.items()}
    return EncodedSlice(rows, infos, scratch, f"{socket.gethostname()}:{os.getpid()}")


@flow(name="encode-slices", persist_result=False)
def encode_slices(
    documents: str, slices: list[RowSlice], tokenizer: str, threads: int, scratch: str
) -> list[EncodedSlice]:
    """Encode every slice on this flow's task runner, with `threads` tokenizer threads in each
    task (0: one per core of its machine); the result is in slice order."""
    Path(scratch).mkdir(parents=True, exist_ok=True)
    futures = encode_slice_task.map(
        documents=unmapped(documents),
        rows=slices,
        tokenizer=unmapped(tokenizer),
        threads=unmapped(threads),
        scratch=unmapped(scratch),
    )
    progress = ProgressLog("encode: slices", total=sum(s.documents for s in slices), unit="docs")
    return results_in_order(futures, progress, lambda piece: piece.rows.documents)


def append_slices(pieces: list[EncodedSlice], writers: dict[str, ShardWriter]) -> None:
    """Append every slice's shards to the writer of their split, slice by slice, in order;
    each slice's files are deleted once copied."""
    for piece in pieces:
        for split, writer in writers.items():
            info, path = piece.infos[split], piece.shard(split)
            tokens = (
                np.memmap(path, dtype=np.dtype(info.dtype), mode="r")
                if info.tokens
                else np.zeros(0, dtype=np.dtype(info.dtype))
            )
            writer.write_span(tokens, info.documents, info.text_bytes)
            del tokens
            path.unlink()
            path.with_suffix(".json").unlink()
