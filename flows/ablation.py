"""The `ablation` flow: which of these model variants is better on my corpus?

One corpus, one tokenizer, one set of shards (built once, cached like every stage), then every
variant of `[ablation]` trained with the same token budget for every seed, each evaluated on the
same held-out windows. The answer is a table of mean ± standard deviation over seeds of val bits
per byte and of training tokens/s, published as a Prefect table artifact, a markdown file in the
run folder, and the run's HTML report (every model's curves).
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import asdict, dataclass

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.pipeline import (
    build_corpus,
    build_tokenizer,
    encode_corpus,
    log_data_metrics,
    open_run,
    record_failure,
    record_success,
    train_model,
    train_word2vec,
)
from lm.config import ConfigError, load_config, resolve_preset

logger = logging.getLogger("lm.ablation")
TABLE_FILE = "ablation.md"
RESULTS_FILE = "ablation.json"


@dataclass
class VariantResult:
    variant: str
    seeds: int
    val_bpb_mean: float
    val_bpb_std: float
    tokens_per_s_mean: float
    tokens_per_s_std: float
    parameters: int
    val_bpb_by_seed: dict[int, float]


def summarize(arms: list[tuple[str, int, dict]]) -> list[VariantResult]:
    """Mean and sample standard deviation over seeds, per variant, best val bpb first."""
    by_variant: dict[str, list[tuple[int, dict]]] = {}
    for variant, seed, stats in arms:
        by_variant.setdefault(variant, []).append((seed, stats))
    results = []
    for variant, runs in by_variant.items():
        bpb = [stats["val_bpb"] for _, stats in runs]
        speed = [stats["tokens_seen"] / max(stats["seconds"], 1e-9) for _, stats in runs]
        results.append(
            VariantResult(
                variant=variant,
                seeds=len(runs),
                val_bpb_mean=statistics.fmean(bpb),
                val_bpb_std=statistics.stdev(bpb) if len(bpb) > 1 else 0.0,
                tokens_per_s_mean=statistics.fmean(speed),
                tokens_per_s_std=statistics.stdev(speed) if len(speed) > 1 else 0.0,
                parameters=int(runs[0][1]["parameters"]),
                val_bpb_by_seed={seed: stats["val_bpb"] for seed, stats in runs},
            )
        )
    return sorted(results, key=lambda result: result.val_bpb_mean)


def markdown_table(results: list[VariantResult]) -> str:
    lines = [
        "| variant | seeds | parameters | val bits/byte (mean ± std) | tokens/s (mean ± std) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.variant} | {r.seeds} | {r.parameters:,} | {r.val_bpb_mean:.4f} ± "
            f"{r.val_bpb_std:.4f} | {r.tokens_per_s_mean:,.0f} ± {r.tokens_per_s_std:,.0f} |"
        )
    return "\n".join(lines)


@flow(name="ablation", persist_result=False)
def ablation(config: str | None = "ablation", overrides: list[str] | None = None) -> dict:
    """Train every variant of the config's `[ablation]` for every seed on one corpus and
    tokenizer, and tabulate val bits per byte and tokens/s as mean ± std over seeds."""
    overrides = list(overrides or [])
    config_path = str(resolve_preset(config))
    settings = load_config(config_path, overrides)
    try:
        arms = settings.ablation_runs()
    except ValueError as error:
        raise ConfigError(f"{config_path}: {error}") from None
    run = open_run(settings, config_path, overrides, command="ablation")
    try:
        corpus = build_corpus(run, settings)
        tokenizer = build_tokenizer(run, settings, corpus)
        shards = encode_corpus(run, settings, corpus, tokenizer)
        vectors = train_word2vec(run, settings, corpus, tokenizer)
        models, scored = [], []
        for variant, seed, model_run in arms:
            logger.info("ablation: %s, seed %d (%d of %d)", variant, seed, len(models) + 1,
                        len(arms))  # fmt: skip
            record = train_model(
                run, model_run, shards, tokenizer, corpus, settings.eval, True, vectors
            )
            models.append(record)
            scored.append((variant, seed, record.stats))
        results = summarize(scored)
        table = markdown_table(results)
        folder = run.workspace.runs / run.run_id
        (folder / TABLE_FILE).write_text(table + "\n")
        (folder / RESULTS_FILE).write_text(json.dumps([asdict(r) for r in results], indent=2))
        for result in results:
            run.metrics.log_many(
                {
                    "ablation/val_bpb_mean": result.val_bpb_mean,
                    "ablation/val_bpb_std": result.val_bpb_std,
                    "ablation/tokens_per_s_mean": result.tokens_per_s_mean,
                },
                model=result.variant,
            )
        log_data_metrics(run, corpus, tokenizer, shards)
        record_success(run, corpus, tokenizer, models)
        create_table_artifact(
            [
                {key: value for key, value in asdict(r).items() if key != "val_bpb_by_seed"}
                for r in results
            ],
            key="ablation-table",
            description=f"Ablation {settings.name}: val bits per byte over seeds",
        )
        create_markdown_artifact(
            f"# Ablation `{settings.name}`\n\nrun `{run.run_id}`, seeds "
            f"{settings.ablation.seeds}\n\n{table}\n",
            key="ablation-summary",
        )
    except BaseException as error:
        record_failure(run, error)
        raise
    report = _report(run.run_id)
    return {
        "run_id": run.run_id,
        "results": [asdict(r) for r in results],
        "table": table,
        "report": str(report) if report else None,
        "stages": [asdict(stage) for stage in run.stages],
    }


def _report(run_id: str):
    """The run's HTML report (every variant's curves); a report that cannot be drawn is a
    warning, never a failed ablation."""
    try:
        from flows.report import build_run_report

        return build_run_report(run_id)
    except Exception as error:  # the table above is the result; the report is a view of it
        logger.warning("ablation: no HTML report (%s)", error)
        return None
