"""The ingest stage: sources → raw documents (Parquet) under `artifacts/ingest/<key>/`.

One cached task, whatever the runner. The input files fan out in parts through the
`ingest-read` subflow on the task runner that `[runtime]` names (`flows/ingest_flow.py`); inputs
too few or too small to be worth it, or one worker, are read here instead. The documents are then
written and hashed here, in input order, so the raw corpus (and its digest) is the same on
threads, processes or Dask, with any number of workers.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from prefect import task

from flows.ingest_flow import load_parts, plan_parts, read_parts, write_plan
from lm.allocator import gives_back_freed_memory
from lm.config import IngestConfig, RuntimeConfig
from lm.text.clean import SlicePolicy
from lm.text.ingest import PERSISTENT_OS_ERRORS, iter_input_documents
from lm.text.readers import RawDocument
from lm.text.sources import (
    InputError,
    ResolvedInput,
    TransientInputError,
    fingerprint_inputs,
    is_url,
    resolve_sources,
)
from lm.text.url_credentials import shown_url
from storage.artifacts import ArtifactStore, Descriptor, reused
from storage.corpus import DOCUMENTS_FILE, RAW_SCHEMA, DocumentWriter
from storage.workspace import Workspace
from tasks.caching import at_defaults, cache_key_from, code_digest, stage_key
from tasks.runners import make_task_runner, worker_count

STAGE = "ingest"
VERSION = 1
CODE = (
    "lm/text",
    "lm/config.py",
    "lm/progress.py",
    "storage/corpus.py",
    "storage/artifacts.py",
    "flows/ingest_flow.py",
    "tasks/ingest.py",
)
# Parts read by the mapped tasks, inside the staging directory; removed before it is published.
SCRATCH_DIR = "parts"
# Parts of at least 16 MB of input files, about 5 s of reading for a compressed Wikipedia dump
# (0.3 s per MB here), which pays for a Prefect task run and, on the process runner, a worker's
# start-up (about 4 CPU-seconds); at most 4096 files each. The bundled corpus (two files, 2 MB)
# is read in the task.
PART_POLICY = SlicePolicy(min_bytes=16 << 20, max_bytes=1 << 30, max_docs=4096)


def ingest_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.artifacts / STAGE, workspace.root)


def ingest_key(config: IngestConfig, runtime: RuntimeConfig | None = None) -> str:
    """Depends on the config and on the inputs' identities (path, size, mtime; URL). Not on
    the runtime: the runner and the worker count never change the raw documents; nor on how
    long a download may wait (`url_timeout_s`), which only decides whether one succeeds."""
    inputs = resolve_sources(config.sources)
    settings = at_defaults(config, ["url_timeout_s"]).digest()
    return stage_key(STAGE, VERSION, settings, [fingerprint_inputs(inputs)], code_digest(*CODE))


def _is_transient(task, task_run, state) -> bool:
    """Retry I/O hiccups, never bad input: re-reading a broken file gives the same error, and so
    does opening an unreadable one or a missing one again."""
    try:
        state.result()
    except TransientInputError:  # a server error, a timeout, a disk's I/O error
        return True
    except (InputError, *PERSISTENT_OS_ERRORS):
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
@gives_back_freed_memory
def ingest_task(config: IngestConfig, runtime: RuntimeConfig | None = None) -> Descriptor:
    runtime = runtime or RuntimeConfig()
    workspace = Workspace.from_env()
    store = ingest_store(workspace)
    key = ingest_key(config)
    existing = store.load_descriptor(key)
    if existing is not None:
        return reused(existing)
    inputs = resolve_sources(config.sources)
    content = hashlib.sha256()
    with store.build(key) as staging:
        documents, fan_out = _read(inputs, config, runtime, workspace, staging / SCRATCH_DIR)
        with DocumentWriter(staging / DOCUMENTS_FILE, RAW_SCHEMA, config.row_group_docs) as writer:
            for document in documents:
                writer.write(document._asdict())
                content.update(f"{document.source}\0{document.text}\0{document.markup}\1".encode())
        shutil.rmtree(staging / SCRATCH_DIR, ignore_errors=True)
        if writer.rows_written == 0:
            names = ", ".join(item.name for item in inputs[:5])
            more = f" and {len(inputs) - 5:,} more" if len(inputs) > 5 else ""
            # The reason is each file's own warning, logged by the process that read it (a
            # binary file, an empty one, records without the text field): said as one line,
            # this read as if the sources had named nothing.
            raise InputError(
                f"{names}{more}: no documents found in the configured sources: "
                f"{'each file' if len(inputs) > 1 else 'the file'} was empty or skipped, or held "
                "only empty texts (the warnings above say why)"
            )
        stats = {
            "documents": writer.rows_written,
            "inputs": len(inputs),
            "input_bytes": sum(item.size or 0 for item in inputs),
        }
        descriptor = store.describe(staging, STAGE, key, content.hexdigest(), stats | fan_out)
    return descriptor


def _shown(config: IngestConfig) -> IngestConfig:
    """`config` with each source URL as the registry records it (`shown_url`): the subflow
    reads its parts' URLs from the plan, and its parameters are kept in Prefect's database and
    shown in its UI, where a source URL's token was, whatever the registry hid."""
    sources = [source.model_copy(update={"path": shown_url(source.path)})
               if is_url(source.path) else source for source in config.sources]  # fmt: skip
    return config.model_copy(update={"sources": sources})


def _read(
    inputs: list[ResolvedInput],
    config: IngestConfig,
    runtime: RuntimeConfig,
    workspace: Workspace,
    scratch: Path,
) -> tuple[Iterator[RawDocument], dict]:
    """The documents of every input in order, and how they were read: fanned out in parts on
    the runtime's task runner, or here when one worker is asked for or the inputs are few or
    small."""
    workers = worker_count(runtime)
    parts = plan_parts(inputs, workers, PART_POLICY) if workers > 1 else []
    if len(parts) <= 1:
        documents = iter_input_documents(
            inputs, config.encoding_errors, workspace.downloads, config.url_timeout_s,
            max_document_mb=config.max_document_mb,
        )  # fmt: skip
        return documents, {"runner": "inline", "workers": 1, "parts": 1, "read_by": []}
    runner = make_task_runner(runtime, workers)
    plan = write_plan(parts, scratch)
    pieces = read_parts.with_options(task_runner=runner)(
        plan=str(plan), config=_shown(config), download_dir=str(workspace.downloads),
        scratch=str(scratch),
    )  # fmt: skip
    plan.unlink()
    fan_out = {
        "runner": runtime.task_runner,
        "workers": workers,
        "parts": len(parts),
        "read_by": sorted({piece.read_by for piece in pieces}),
    }
    return load_parts(pieces), fan_out
