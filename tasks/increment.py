"""The increment stage of `retrain`: the documents a model has not been trained on yet.

From the current corpus version and the one the champion was trained on, it keeps every held-out
document (val and test, assigned by a hash of `doc_id`, so the held-out set never moves) and only
the train documents whose `doc_id` the champion's corpus lacks. Encoding it gives shards whose
train split is the new data and whose val/test splits are the whole fixed held-out set.
"""

from __future__ import annotations

import hashlib

import duckdb
from prefect import task

from storage.artifacts import ArtifactStore, Descriptor, reused
from storage.corpus import DOCUMENTS_FILE
from storage.workspace import Workspace
from tasks.caching import cache_key_from, code_digest, stage_key

STAGE = "increment"
VERSION = 1


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
        connection = duckdb.connect()
        try:
            # Corpus order is kept: the documents file is read in order and filtered.
            connection.execute(
                "COPY (SELECT * FROM read_parquet(?) WHERE keep AND (split <> 'train' OR doc_id "
                "NOT IN (SELECT doc_id FROM read_parquet(?) WHERE keep AND split = 'train'))) TO ? "
                "(FORMAT parquet, COMPRESSION zstd)",
                [str(current_file), str(previous_file), str(staging / DOCUMENTS_FILE)],
            )
            rows = connection.execute(
                "SELECT split, count(*), sum(octet_length(encode(text))) FROM read_parquet(?) "
                "GROUP BY split",
                [str(staging / DOCUMENTS_FILE)],
            ).fetchall()
        finally:
            connection.close()
        documents = {split: int(count) for split, count, _ in rows}
        split_bytes = {split: int(size) for split, _, size in rows}
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
