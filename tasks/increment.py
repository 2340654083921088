"""The increment stage of `retrain`: the documents a model has not been trained on yet.

From the current corpus version and the one the champion was trained on, it keeps every held-out
document (val and test, assigned by a hash of `doc_id`, so the held-out set never moves) and only
the train documents whose `doc_id` the champion's corpus lacks. Encoding it gives shards whose
train split is the new data and whose val/test splits are the whole fixed held-out set.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task

from storage.artifacts import ArtifactStore, Descriptor, reused
from storage.corpus import DOCUMENTS_FILE, damage_named, open_parquet
from storage.workspace import Workspace
from tasks.caching import cache_key_from, code_digest, stage_key

STAGE = "increment"
# 2: written by pyarrow with page checksums, its inputs' checked as read (DuckDB wrote none).
VERSION = 2


def increment_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.corpus, workspace.root)


def increment_key(corpus: Descriptor, previous: Descriptor) -> str:
    return stage_key(
        STAGE, VERSION, "", [corpus.digest, previous.digest], code_digest("tasks/increment.py")
    )


@task(name=STAGE, cache_key_fn=cache_key_from(increment_key), persist_result=True)
def increment_task(corpus: Descriptor, previous: Descriptor) -> Descriptor:
    workspace = Workspace.from_env()
    store = increment_store(workspace)
    key = increment_key(corpus, previous)
    existing = store.load_descriptor(key)
    if existing is not None:
        return reused(existing)
    current_file = workspace.resolve(corpus.path) / DOCUMENTS_FILE
    previous_file = workspace.resolve(previous.path) / DOCUMENTS_FILE
    with store.build(key) as staging:
        documents, split_bytes = _write_increment(
            current_file, _trained_ids(previous_file), staging / DOCUMENTS_FILE
        )
        stats = {
            "documents": sum(documents.values()),
            "kept": sum(documents.values()),
            "kept_bytes": sum(split_bytes.values()),
            "new_train_documents": documents.get("train", 0),
            "split_documents": documents,
            "split_bytes": split_bytes,
            "corpus_digest": corpus.digest,
            "previous_digest": previous.digest,
        }
        digest = hashlib.sha256(f"{corpus.digest}-{previous.digest}".encode()).hexdigest()
        descriptor = store.describe(staging, STAGE, key, digest, stats)
    return descriptor


def _trained_ids(previous_file: Path) -> pa.Array:
    """The `doc_id`s of the kept train documents of the champion's corpus."""
    parquet = open_parquet(previous_file)
    ids = []
    for group in range(parquet.metadata.num_row_groups):
        with damage_named(previous_file):
            table = parquet.read_row_group(group, columns=["doc_id", "split", "keep"])
        trained = pc.and_(table.column("keep"), pc.equal(table.column("split"), "train"))
        ids.append(table.column("doc_id").filter(trained))
    return pa.chunked_array(ids, type=pa.string()).combine_chunks()


def _write_increment(
    current_file: Path, trained: pa.Array, target: Path
) -> tuple[dict[str, int], dict[str, int]]:
    """The kept documents of `current_file` but the train documents `trained` holds, in
    corpus order, a row group at a time, into `target` with page checksums (as every corpus
    file); its documents and UTF-8 text bytes per split."""
    parquet = open_parquet(current_file)
    documents: dict[str, int] = {}
    split_bytes: dict[str, int] = {}
    with pq.ParquetWriter(target, parquet.schema_arrow, compression="zstd",
                          write_page_checksum=True) as writer:  # fmt: skip
        for group in range(parquet.metadata.num_row_groups):
            with damage_named(current_file):
                table = parquet.read_row_group(group)
            held_out = pc.not_equal(table.column("split"), "train")
            new = pc.invert(pc.is_in(table.column("doc_id"), value_set=trained))
            table = table.filter(pc.and_(table.column("keep"), pc.or_(held_out, new)))
            if not table.num_rows:
                continue
            writer.write_table(table)
            sizes = pc.binary_length(table.column("text")).to_numpy(zero_copy_only=False)
            for split, size in zip(table.column("split").to_pylist(), sizes, strict=True):
                documents[split] = documents.get(split, 0) + 1
                split_bytes[split] = split_bytes.get(split, 0) + int(size)
    return documents, split_bytes
