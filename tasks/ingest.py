"""The ingest stage: sources → raw documents (Parquet) under `artifacts/ingest/<key>/`."""

from __future__ import annotations

import hashlib

from prefect import task

from lm.config import IngestConfig
from lm.text.ingest import iter_input_documents
from lm.text.sources import InputError, fingerprint_inputs, resolve_sources
from storage.artifacts import ArtifactStore, Descriptor
from storage.corpus import DOCUMENTS_FILE, RAW_SCHEMA, DocumentWriter
from storage.workspace import Workspace
from tasks.caching import cache_key_from, code_digest, stage_key

STAGE = "ingest"
VERSION = 1
CODE = ("lm/text", "lm/config.py", "lm/progress.py", "storage/corpus.py", "storage/artifacts.py")


def ingest_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.artifacts / STAGE, workspace.root)


def ingest_key(config: IngestConfig) -> str:
    """Depends on the config and on the inputs' identities (path, size, mtime; URL)."""
    inputs = resolve_sources(config.sources)
    return stage_key(
        STAGE, VERSION, config.digest(), [fingerprint_inputs(inputs)], code_digest(*CODE)
    )


def _is_transient(task, task_run, state) -> bool:
    """Retry I/O hiccups, never bad input: re-reading a broken file gives the same error."""
    try:
        state.result()
    except InputError:
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


@task(
    name=STAGE,
    cache_key_fn=cache_key_from(ingest_key),
    persist_result=True,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_is_transient,
)
def ingest_task(config: IngestConfig) -> Descriptor:
    workspace = Workspace.from_env()
    store = ingest_store(workspace)
    key = ingest_key(config)
    existing = store.load_descriptor(key)
    if existing is not None:
        return existing
    inputs = resolve_sources(config.sources)
    content = hashlib.sha256()
    with store.build(key) as staging:
        with DocumentWriter(staging / DOCUMENTS_FILE, RAW_SCHEMA, config.row_group_docs) as writer:
            documents = iter_input_documents(
                inputs, config.encoding_errors, workspace.downloads, config.url_timeout_s
            )
            for document in documents:
                writer.write(document._asdict())
                content.update(f"{document.source}\0{document.text}\0{document.markup}\1".encode())
        if writer.rows_written == 0:
            names = ", ".join(item.name for item in inputs[:5])
            raise InputError(f"{names}: no documents found in the configured sources")
        descriptor = store.describe(
            staging,
            STAGE,
            key,
            content.hexdigest(),
            {
                "documents": writer.rows_written,
                "inputs": len(inputs),
                "input_bytes": sum(item.size or 0 for item in inputs),
            },
        )
    return descriptor
