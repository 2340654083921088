"""The `lm-pipeline` flow: ingest → clean → tokenizer → encode, word2vec → train → record, each
stage a cached task.

The flow owns the run: it registers the run in DuckDB when it starts, times every stage and
notes whether Prefect served it from cache, and records the outcome, completed or failed with
its error, in one batch at the end. Stages pass descriptors (paths and digests), never data.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import logging
import os
import shlex
import socket
import subprocess
import time
import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Any

from prefect import Task, flow
from prefect.runtime import deployment, flow_run

from lm.config import ModelRun, PipelineConfig, load_config, resolve_preset
from storage.artifacts import ArtifactStore, Descriptor
from storage.metrics_log import MetricsLog
from storage.processes import pid_alive
from storage.registry import (
    DatasetRecord,
    ModelRecord,
    RunRegistry,
    StageRecord,
    TokenizerRecord,
)
from storage.workspace import Workspace
from tasks.caching import REPO_ROOT, code_digest
from tasks.clean import clean_key, clean_task, corpus_store
from tasks.encode import encode_key, encode_task, shards_store
from tasks.ingest import ingest_key, ingest_store, ingest_task
from tasks.record import record_task
from tasks.tokenizer import tokenizer_key, tokenizer_store, tokenizer_task
from tasks.train import METRICS_FILE, train_key, train_store, train_task
from tasks.word2vec import word2vec_key, word2vec_store, word2vec_task

# The library's loggers (progress lines, skipped-file warnings) reach Prefect's console and run
# logs through PREFECT_LOGGING_EXTRA_LOGGERS; they need a level that lets INFO through.
for _library_logger in ("lm", "storage"):
    logging.getLogger(_library_logger).setLevel(logging.INFO)

TRACKED_PACKAGES = ("prefect", "duckdb", "pyarrow", "numpy", "torch", "gensim", "sentencepiece")


def new_run_id() -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def _git_sha() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def reproduce_command(config_path: str, overrides: list[str]) -> str:
    words = ["lmforge", "run", config_path, *(f"--set {shlex.quote(o)}" for o in overrides)]
    return " ".join(words)


def _hostname() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _run_row(run_id: str, config: PipelineConfig, config_path: str, overrides: list[str]) -> dict:
    return {
        "run_id": run_id,
        "flow_run_id": flow_run.get_id(),
        "deployment": deployment.get_name(),
        "preset": config.name,
        "config_path": config_path,
        "status": "running",
        "started_at": datetime.now(),
        "config": config.model_dump(mode="json"),
        "config_digest": config.digest(),
        "code_digest": code_digest("lm", "storage", "tasks", "flows"),
        "git_sha": _git_sha(),
        "package_versions": _package_versions(),
        "device": f"cpu x{os.cpu_count()}",
        "seed": config.seed,
        "command": reproduce_command(config_path, overrides),
        "hostname": _hostname(),
        "pid": os.getpid(),
    }


def _run_stage(
    stages: list[StageRecord],
    stage_task: Task,
    key: str,
    store: ArtifactStore,
    stage_name: str | None = None,
    **parameters: Any,
) -> Descriptor:
    """Run one cached stage and note how it went. A missing or incomplete output directory
    refreshes the cache: Prefect's record alone is never trusted to mean the files exist."""
    started = time.perf_counter()
    refresh = not store.is_complete(key)
    options = {"refresh_cache": refresh} | ({"task_run_name": stage_name} if stage_name else {})
    state = stage_task.with_options(**options)(**parameters, return_state=True)
    descriptor: Descriptor = state.result()
    stages.append(
        StageRecord(
            stage=stage_name or stage_task.name,
            cache_key=key,
            cached=state.name == "Cached",
            seconds=time.perf_counter() - started,
            output_digest=descriptor.digest,
            output_path=descriptor.path,
            stats=descriptor.stats,
        )
    )
    return descriptor


def _train_model(
    stages: list[StageRecord],
    metrics: MetricsLog,
    workspace: Workspace,
    run: ModelRun,
    shards: Descriptor,
    tokenizer: Descriptor,
    corpus: Descriptor,
    ladder: bool,
) -> ModelRecord:
    """Train one model of the run (cached like every stage) and log its curve and numbers
    under its label. In a ladder, each model's stages are named after it (`train/mlp`)."""
    suffix = f"/{run.label}" if ladder else ""
    trained = _run_stage(
        stages,
        train_task,
        train_key(shards, tokenizer, run.model, run.train),
        train_store(workspace),
        stage_name=f"train{suffix}",
        shards=shards,
        tokenizer=tokenizer,
        model=run.model,
        train=run.train,
    )
    metrics.append_file(workspace.resolve(trained.path) / METRICS_FILE, model=run.label)
    stats = dict(trained.stats)
    metrics.log_many(
        {
            "model/val_loss": stats["val_loss"],
            "baseline/val_loss": stats["baseline_val_loss"],
            "model/parameters": stats["parameters"],
            "model/tokens_seen": stats["tokens_seen"],
        },
        model=run.label,
    )
    return ModelRecord(
        label=run.label,
        kind=run.model.kind,
        digest=trained.digest,
        path=trained.path,
        tokenizer_digest=tokenizer.digest,
        corpus_digest=corpus.digest,
        config={"model": run.model.model_dump(mode="json"), "train": run.train.model_dump()},
        stats=stats,
    )


@flow(name="lm-pipeline", persist_result=False)
def lm_pipeline(config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Run the pipeline for a preset name or TOML path, with optional `key.path=value`
    overrides, and return a summary of the run."""
    overrides = list(overrides or [])
    config_path = str(resolve_preset(config))
    settings = load_config(config_path, overrides)
    workspace = Workspace.from_env().ensure()
    registry = RunRegistry(workspace.registry_path)
    run_id = new_run_id()
    registry.close_abandoned_runs(_hostname(), pid_alive)
    registry.start_run(_run_row(run_id, settings, config_path, overrides))
    metrics = MetricsLog(workspace.runs / run_id / "metrics.jsonl")
    stages: list[StageRecord] = []
    try:
        raw = _run_stage(
            stages,
            ingest_task,
            ingest_key(settings.ingest),
            ingest_store(workspace),
            config=settings.ingest,
        )
        corpus = _run_stage(
            stages,
            clean_task,
            clean_key(raw, settings.clean, settings.split),
            corpus_store(workspace),
            raw=raw,
            config=settings.clean,
            split=settings.split,
        )
        tokenizer = _run_stage(
            stages,
            tokenizer_task,
            tokenizer_key(corpus, settings.tokenizer),
            tokenizer_store(workspace),
            corpus=corpus,
            config=settings.tokenizer,
        )
        shards = _run_stage(
            stages,
            encode_task,
            encode_key(corpus, tokenizer),
            shards_store(workspace),
            corpus=corpus,
            tokenizer=tokenizer,
        )
        word2vec_metrics = {}
        if settings.word2vec.enabled:
            vectors = _run_stage(
                stages,
                word2vec_task,
                word2vec_key(corpus, tokenizer, settings.word2vec),
                word2vec_store(workspace),
                corpus=corpus,
                tokenizer=tokenizer,
                config=settings.word2vec,
            )
            word2vec_metrics = {
                f"word2vec/{name}": value
                for name, value in vectors.stats.items()
                if isinstance(value, int | float)
            }
        ladder = bool(settings.models)
        models = [
            _train_model(stages, metrics, workspace, run, shards, tokenizer, corpus, ladder)
            for run in settings.model_runs()
        ]
        metrics.log_many(
            {
                **word2vec_metrics,
                "corpus/documents": corpus.stats["documents"],
                "corpus/kept": corpus.stats["kept"],
                "corpus/kept_bytes": corpus.stats["kept_bytes"],
                "tokenizer/bytes_per_token": tokenizer.stats["bytes_per_token"],
                "tokenizer/vocab_used_fraction": tokenizer.stats["vocab_used_fraction"],
                "tokenizer/byte_fallback_rate": tokenizer.stats["byte_fallback_rate"],
                **{f"tokens/{s}": v["tokens"] for s, v in shards.stats["splits"].items()},
                **{f"stage/{s.stage}/seconds": s.seconds for s in stages},
            }
        )
        record_task(
            run_id,
            "completed",
            stages,
            [DatasetRecord(corpus.digest, corpus.key, corpus.path, corpus.stats)],
            corpus.digest,
            str(metrics.path),
            tokenizers=[
                TokenizerRecord(tokenizer.digest, corpus.digest, tokenizer.path, tokenizer.stats)
            ],
            models=models,
        )
    except BaseException as error:
        record_task(
            run_id,
            "failed",
            stages,
            [],
            None,
            str(metrics.path),
            error=f"{type(error).__name__}: {error}",
        )
        raise
    return {
        "run_id": run_id,
        "stages": [asdict(stage) for stage in stages],
        "corpus": {"digest": corpus.digest, "path": corpus.path, **corpus.stats},
        "tokenizer": {"digest": tokenizer.digest, "path": tokenizer.path, **tokenizer.stats},
        "shards": {"path": shards.path, **shards.stats},
        "models": [{"label": m.label, "kind": m.kind, "path": m.path, **m.stats} for m in models],
    }
