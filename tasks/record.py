"""The record stage: everything a run produced, written to the DuckDB registry in one batch.

It runs in the flow process (DuckDB allows one writing process), never cached. A registry that
another process holds open for longer than the registry waits (or one that cannot be written
at all) does not fail the run: its outcome is left in the run's folder, and the next run
records it (`storage.pending_outcome`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from lm.clock import utc_now
from storage.pending_outcome import discard_pending_outcome, write_pending_outcome
from storage.registry import (
    DatasetRecord,
    ModelRecord,
    PromotionRecord,
    RegistryBusy,
    RegistryError,
    RunOutcome,
    RunRegistry,
    StageRecord,
    TokenizerRecord,
)
from storage.workspace import Workspace

# A library logger, which reaches Prefect's run logs (PREFECT_LOGGING_EXTRA_LOGGERS).
logger = logging.getLogger("storage.pending_outcome")


@dataclass
class Recorded:
    """What the record stage did: whether the run is in the registry now (False: its outcome
    waits in the run's folder), and a retrain's promotion decision as the registry recorded it,
    which may have overturned it (None without one, or while the outcome waits)."""

    in_registry: bool
    promotion: PromotionRecord | None = None


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
    promotion: PromotionRecord | None = None,
) -> Recorded:
    """Record the run, or leave its outcome in the run's folder for the registry to be
    free."""
    workspace = Workspace.from_env()
    outcome = RunOutcome(
        run_id,
        status,
        ended_at=utc_now(),
        stages=list(stages),
        datasets=list(datasets),
        corpus_digest=corpus_digest,
        metrics_file=Path(metrics_file) if metrics_file else None,
        error=error,
        tokenizers=list(tokenizers),
        models=list(models),
        promotion=promotion,
    )
    folder = workspace.runs / run_id
    registry = RunRegistry(workspace.registry_path)
    try:
        recorded_promotion = registry.record(outcome)
    except RegistryError as error:
        path = write_pending_outcome(folder, outcome)
        if isinstance(error, RegistryBusy):
            why = (f"process {error.holder_pid} ({error.holder_program}) has held {registry.path} "
                   f"open for over {registry.timeout_s:.0f} s")  # fmt: skip
            when = "once that process closes the file"
        else:  # damaged, say: the run's own error, if any, is not hidden behind this one
            why, when = str(error), "once the registry can be written again"
        logger.warning("run %s is %s but not in the registry yet: %s. Its outcome is kept in %s; "
                       "the next run records it %s", run_id, status, why, path, when)  # fmt: skip
        return Recorded(False)
    discard_pending_outcome(folder)  # one left by an earlier record of this run is outdated
    return Recorded(True, recorded_promotion)
