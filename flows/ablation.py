"""The `ablation` flow: which of these model variants is better on my corpus?

One corpus, one tokenizer, one set of shards (built once, cached like every stage), then every
variant of `[ablation]` trained with the base `[train]` settings for every seed (warned of when a
variant's steps, batch or context give it another number of tokens), each evaluated on the same
held-out windows. The answer is a table of mean ± standard deviation over seeds of val bits
per byte and of training tokens/s, published as a Prefect table artifact, a markdown file in the
run folder, and the run's HTML report (the table, and every model's curves).

A variant × seed that fails (an invalid setting found at train time, a NaN loss) costs only its
own result: the others still train, the table holds their means and a line per failure saying
why, and the run is recorded failed with their models kept. The flow then raises
`AblationError`, so the command and the Prefect run end failed; a rerun serves every arm that
finished from the cache and retries only those that failed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.pipeline import (
    build_corpus,
    build_tokenizer,
    encode_corpus,
    log_data_metrics,
    log_stage_seconds,
    open_run,
    publish_or_warn,
    record_failure,
    record_success,
    refusals_recorded,
    refuse_what_cannot_fit,
    train_model,
    train_word2vec,
)
from flows.user_errors import hide_prefect_tracebacks_of, user_error_types
from lm.ablation_table import (
    RESULTS_FILE,
    TABLE_FILE,
    AblationTable,
    FailedArm,
    one_line_error,
    summarize,
)
from lm.config import ConfigError, load_config, resolve_preset
from storage.registry import ModelRecord

logger = logging.getLogger("lm.ablation")


class AblationError(Exception):
    """Some variant × seed failed; the others' table was written. `summary` is what the flow
    returns when every arm succeeds (run id, table, report path), for the command to print."""

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary or {}

    def __reduce__(self):  # Prefect may pickle the exception a flow raised
        return (type(self), (self.args[0], self.summary))


# As `flows.pipeline` does for a run a deployment starts: the arms' own errors are logged as
# they fail, and the table says which failed.
hide_prefect_tracebacks_of((*user_error_types(), AblationError))


@flow(name="ablation", persist_result=False)
def ablation(config: str | None = "ablation", overrides: list[str] | None = None) -> dict:
    """Train every variant of the config's `[ablation]` for every seed on one corpus and
    tokenizer, and tabulate val bits per byte and tokens/s as mean ± std over seeds. Raises
    `AblationError`, after writing the table of the others, when any variant × seed failed."""
    overrides = list(overrides or [])
    # A deployment run given `config: null` read the default preset, which has no variants.
    with refusals_recorded(config or "ablation", overrides, "ablation"):
        config_path = str(resolve_preset(config or "ablation"))
        settings = load_config(config_path, overrides)
        try:
            arms = settings.ablation_runs()
        except ValueError as error:
            raise ConfigError(f"{config_path}: {error}") from None
        refuse_what_cannot_fit(settings, [arm for *_, arm in arms], config_path)
    tokens = settings.ablation_tokens(arms)
    if len(set(tokens.values())) > 1:  # "the same token budget" no longer holds
        logger.warning(
            "ablation: the variants train on different numbers of tokens (%s): their bits per "
            "byte compare budgets as well as switches; give them the same steps, batch and "
            "context to compare the switches alone",
            ", ".join(f"{variant} {count:,}" for variant, count in tokens.items()),
        )
    run = open_run(settings, config_path, overrides, command="ablation")
    models: list[ModelRecord] = []
    try:
        corpus = build_corpus(run, settings)
        tokenizer = build_tokenizer(run, settings, corpus,
                                    runs=[model_run for _, _, model_run in arms])  # fmt: skip
        shards = encode_corpus(run, settings, corpus, tokenizer)
        log_data_metrics(run, corpus, tokenizer, shards)  # before its arms: kept if it is killed
        vectors = train_word2vec(run, settings, corpus, tokenizer, shards)
        scored: list[tuple[str, int, dict]] = []
        failed: list[FailedArm] = []
        for number, (variant, seed, model_run) in enumerate(arms, start=1):
            logger.info("ablation: %s, seed %d (%d of %d)", variant, seed, number, len(arms))
            try:
                record = train_model(
                    run, model_run, shards, tokenizer, corpus, settings.eval, True, vectors
                )
            except Exception as error:  # one arm's failure must not cost the others' results
                failed.append(FailedArm(variant, seed, one_line_error(error)))
                logger.error("ablation: %s, seed %d failed: %s", variant, seed, failed[-1].error)
                continue
            models.append(record)
            scored.append((variant, seed, record.stats))
        table = summarize([(variant, seed) for variant, seed, _ in arms], scored, failed,
                          settings.ablation_changes(arms))  # fmt: skip
        markdown = table.markdown()
        folder = run.workspace.runs / run.run_id
        (folder / TABLE_FILE).write_text(markdown + "\n", encoding="utf-8")
        (folder / RESULTS_FILE).write_text(json.dumps(table.to_json(), indent=2))
        for result in table.results:
            run.metrics.log_many(
                {
                    "ablation/val_bpb_mean": result.val_bpb_mean,
                    "ablation/val_bpb_std": result.val_bpb_std,  # None for one seed: left out
                    "ablation/tokens_per_s_mean": result.tokens_per_s_mean,
                },
                model=result.variant,
            )
        log_stage_seconds(run)
        failure = _failure_message(table, len(arms), folder / TABLE_FILE) if failed else None
        recorded = record_success(run, corpus, tokenizer, models,
                                  failed_with=failure).in_registry  # fmt: skip
    except BaseException as error:
        record_failure(run, error, models)
        raise
    publish_or_warn("the ablation table", _publish, settings.name, run.run_id,
                    settings.ablation.seeds, table, markdown)  # fmt: skip
    report = _report(run.run_id)
    summary = {
        "run_id": run.run_id,
        "recorded": recorded,
        "results": table.to_json()["results"],
        "failed": table.to_json()["failed"],
        "table": markdown,
        "report": str(report) if report else None,
        "stages": [asdict(stage) for stage in run.stages],
    }
    if failure is not None:
        raise AblationError(failure, summary)
    return summary


def _failure_message(table: AblationTable, arms: int, table_path: Path) -> str:
    """Names every failed variant × seed and why, and where the others' table is."""
    finished = arms - len(table.failed)
    where = f"the table of the {finished} that finished is in {table_path}" if finished else (
        "none finished")  # fmt: skip
    return (
        f"ablation: {len(table.failed)} of {arms} variant × seed runs failed ({where}): "
        + "; ".join(table.failure_lines())
    )


def _publish(name: str, run_id: str, seeds: list[int], table: AblationTable, markdown: str):
    """The table as Prefect artifacts: a table (a row per variant, then per failed arm) and
    the markdown."""
    rows = [
        {key: value for key, value in asdict(result).items() if key != "val_bpb_by_seed"}
        for result in table.results
    ]
    rows += [{"variant": arm.variant, "seed": arm.seed, "error": arm.error} for arm in table.failed]
    create_table_artifact(
        rows, key="ablation-table", description=f"Ablation {name}: val bits per byte over seeds"
    )
    create_markdown_artifact(
        f"# Ablation `{name}`\n\nrun `{run_id}`, seeds {seeds}\n\n{markdown}\n",
        key="ablation-summary",
    )


def _report(run_id: str):
    """The run's HTML report (the table and every variant's curves); a report that cannot be
    drawn is a warning, never a failed ablation."""
    try:
        from flows.report import build_run_report

        return build_run_report(run_id)
    except Exception as error:  # the table above is the result; the report is a view of it
        logger.warning("ablation: no HTML report (%s)", error)
        return None
