"""The clean stage: raw documents → a corpus version (Parquet with decision columns) under
`corpus/<key>/`."""

from __future__ import annotations

from prefect import task

from lm.config import CleanConfig, SplitConfig
from lm.progress import ProgressLog
from lm.text.clean import DecisionMaker, clean_documents, effective_workers
from storage.artifacts import ArtifactStore, Descriptor
from storage.corpus import (
    CORPUS_SCHEMA,
    DOCUMENTS_FILE,
    CorpusDigest,
    DocumentWriter,
    iter_raw_batches,
    row_count,
)
from storage.workspace import Workspace
from tasks.caching import cache_key_from, code_digest, stage_key

STAGE = "clean"
VERSION = 1
CODE = ("lm/text", "lm/config.py", "lm/progress.py", "storage/corpus.py", "storage/artifacts.py")
BATCH_DOCS = 64
# Below this many documents a process pool costs more to start than it saves.
MIN_DOCS_FOR_WORKERS = 4 * BATCH_DOCS


def corpus_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.corpus, workspace.root)


def clean_key(raw: Descriptor, config: CleanConfig, split: SplitConfig) -> str:
    settings = f"{config.model_copy(update={'workers': 0}).digest()}:{split.digest()}"
    return stage_key(STAGE, VERSION, settings, [raw.digest], code_digest(*CODE))


@task(name=STAGE, cache_key_fn=cache_key_from(clean_key), persist_result=True)
def clean_task(raw: Descriptor, config: CleanConfig, split: SplitConfig) -> Descriptor:
    workspace = Workspace.from_env()
    store = corpus_store(workspace)
    key = clean_key(raw, config, split)
    existing = store.load_descriptor(key)
    if existing is not None:
        return existing
    raw_path = workspace.resolve(raw.path) / DOCUMENTS_FILE
    total = row_count(raw_path)
    workers = effective_workers(config) if total >= MIN_DOCS_FOR_WORKERS else 1
    decider = DecisionMaker(config, split)
    digest = CorpusDigest()
    progress = ProgressLog("clean", total=total, unit="docs")
    sources: dict[str, dict[str, int]] = {}
    processed = 0
    with store.build(key) as staging:
        with DocumentWriter(staging / DOCUMENTS_FILE, CORPUS_SCHEMA, config.row_group_docs) as out:
            batches = iter_raw_batches(raw_path, BATCH_DOCS)
            for rows in clean_documents(batches, decider, workers):
                for row in rows:
                    out.write(row)
                    digest.update(row)
                    counts = sources.setdefault(row["source_file"], {"documents": 0, "kept": 0})
                    counts["documents"] += 1
                    counts["kept"] += int(row["keep"])
                processed += len(rows)
                progress.update(processed)
        progress.finish()
        stats = decider.stats.as_dict() | {"sources": sources, "workers": workers}
        descriptor = store.describe(staging, STAGE, key, digest.hexdigest(), stats)
    return descriptor
