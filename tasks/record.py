"""The record stage: everything a run produced, written to the DuckDB registry in one batch.

It runs in the flow process (DuckDB allows one writing process), never cached."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from storage.registry import (
    DatasetRecord,
    ModelRecord,
    RunRegistry,
    StageRecord,
    TokenizerRecord,
)
from storage.workspace import Workspace


@task(name="record", cache_policy=NONE, persist_result=False)
def record_task(
    run_id: str,
    status: str,
    stages: list[StageRecord],
    datasets: list[DatasetRecord],
    corpus_digest: str | None,
    metrics_file: str | None,
    error: str | None = None,
    tokenizers: list[TokenizerRecord] = (),
    models: list[ModelRecord] = (),
) -> None:
    registry = RunRegistry(Workspace.from_env().registry_path)
    registry.finish_run(
        run_id,
        status=status,
        ended_at=datetime.now(),
        stages=stages,
        datasets=datasets,
        corpus_digest=corpus_digest,
        metrics_file=Path(metrics_file) if metrics_file else None,
        error=error,
        tokenizers=tokenizers,
        models=models,
    )
