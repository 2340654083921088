"""Gather what a run report shows from the registry and the artifact folders.

The report reads a registry written by any version of the pipeline, so every piece is optional:
a registry from before migration 3 has no `models` table and no `model` column on `metrics`
(the training curves of its one model are then the run's unlabelled curves); a run without
word2vec has no projection; a run from before the evaluate stage has no bits per byte and no
samples. What is absent becomes `None` or a note in `missing`, never an error: the page says
what was not recorded. Only an unknown or ambiguous run id is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from lm.ablation_table import RESULTS_FILE as ABLATION_RESULTS_FILE
from lm.ablation_table import AblationTable
from lm.clock import shown_time
from lm.report_render import CURVE_KEYS, Curve, ModelSection, RunReport, StageRow
from storage.registry import RunRegistry
from storage.workspace import Workspace

TRAIN_STAGE = "train"
EVALUATE_STAGE = "evaluate"
UNLABELLED = "model"
# Run-level metrics of runs recorded before models had labels, and what they mean now: the
# train stage's numbers, measured during training on its sample of val windows.
LEGACY_SCORES = {"model/val_loss": "training_val_loss",
                 "baseline/val_loss": "training_baseline_val_loss"}  # fmt: skip
# Evaluation metrics per model (`eval/<split>/<name>`, `baseline/<split>/<name>`) that fill the
# scores of the run card when the `models` row lacks them.
EVAL_SCORES = {
    "eval/val/loss": "val_loss",
    "eval/val/bpb": "val_bpb",
    "eval/test/loss": "test_loss",
    "eval/test/bpb": "test_bpb",
    "baseline/val/bpb": "baseline_val_bpb",
    "baseline/test/bpb": "baseline_test_bpb",
}
# The per-step training curves a report draws from at most CURVE_POINTS points each.
THINNED_CURVES = tuple(key for key in CURVE_KEYS if key != "val/loss")
CURVE_POINTS = 2000
MODEL_SCORE_COLUMNS = ("val_loss", "val_bpb", "test_loss", "test_bpb", "baseline_val_bpb",
                       "baseline_test_bpb")  # fmt: skip


def _rows(connection: duckdb.DuckDBPyConnection, sql: str, parameters: list) -> list[dict]:
    result = connection.execute(sql, parameters)
    columns = [d[0] for d in result.description]
    return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


def _columns(connection: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    result = connection.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
    )
    return {row[0] for row in result.fetchall()}


def _json(value: object) -> dict | list | None:
    if value is None or isinstance(value, dict | list):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return None


def _read_json_file(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _stage_label(stage: str, prefix: str) -> str | None:
    """`train` → "" (the run's one model), `train/mlp` → "mlp", anything else → None."""
    if stage == prefix:
        return ""
    if stage.startswith(prefix + "/"):
        return stage[len(prefix) + 1 :]
    return None


def gather_run_report(registry: RunRegistry, workspace: Workspace, run_prefix: str) -> RunReport:
    """The data of one run's page (`run_prefix`: a run id or a unique prefix of one)."""
    run = registry.find_run(run_prefix)
    run_id = run["run_id"]
    with registry.reading() as connection:
        stages = _rows(
            connection,
            "SELECT stage, cached, seconds, output_digest, output_path, stats FROM stages "
            "WHERE run_id = ? ORDER BY finished_at, rowid",
            [run_id],
        )
        has_model_column = "model" in _columns(connection, "metrics")
        model_column = "model" if has_model_column else "NULL AS model"
        # A per-step curve is thinned to CURVE_POINTS evenly spaced points (its first and
        # last kept) in the query: a long training logs a million, which took gigabytes as
        # rows here and drew no better than a few thousand. Val loss is kept whole (its
        # lowest point is a score), as is every other metric. The row nearest each of the
        # CURVE_POINTS even marks is kept (a stride of ceil(points / CURVE_POINTS) kept 1,001
        # of 2,001 points).
        metrics = _rows(
            connection,
            "SELECT model, key, step, value FROM ("
            "SELECT *, row_number() OVER curve AS nth, count(*) OVER curve_all AS points FROM ("
            f"SELECT {model_column}, key, step, value, ts FROM metrics WHERE run_id = ?) "
            "WINDOW curve AS (PARTITION BY model, key ORDER BY step, ts), "
            "curve_all AS (PARTITION BY model, key)) "
            "WHERE NOT list_contains(?, key) OR points <= ? OR nth - 1 = "
            "round(round((nth - 1) * (? - 1) / (points - 1)) * (points - 1) / (? - 1)) "
            "ORDER BY step, ts",
            [run_id, list(THINNED_CURVES), *[CURVE_POINTS] * 3],
        )
        model_rows = (
            _rows(connection, "SELECT * FROM models WHERE run_id = ? ORDER BY rowid", [run_id])
            if _columns(connection, "models")
            else None
        )
        # A retrain's decision (whether its model took the alias, and why); none for any other run.
        promotions = (  # `*`: a registry before migration 6 has no `against`
            _rows(
                connection,
                "SELECT * FROM promotions WHERE run_id = ? ORDER BY decided_at",
                [run_id],
            )
            if _columns(connection, "promotions")
            else []
        )
        corpus = None
        if run.get("corpus_digest"):
            found = _rows(
                connection, "SELECT * FROM datasets WHERE digest = ?", [run["corpus_digest"]]
            )
            corpus = found[0] if found else None
    report = RunReport(
        run_id=run_id,
        status=run["status"],
        preset=run.get("preset"),
        # With their offset: a report is read elsewhere, by people in other zones.
        started_at=shown_time(run["started_at"], zone=True) if run.get("started_at") else None,
        ended_at=shown_time(run["ended_at"], zone=True) if run.get("ended_at") else None,
        seconds=run.get("seconds"),
        device=run.get("device"),
        git_sha=run.get("git_sha"),
        command=run.get("command"),
        error=run.get("error"),
        config=_json(run.get("config")) or {},
        corpus=corpus,
        promotions=promotions,
        stages=[
            StageRow(s["stage"], bool(s["cached"]), s["seconds"] or 0.0, s["output_digest"])
            for s in stages
        ],
    )
    if corpus is None:
        report.missing.append("No corpus version was recorded for this run.")
    report.run_metrics = {
        m["key"]: m["value"] for m in metrics if m["model"] is None and m["step"] == 0
    }
    _add_ablation(report, workspace)
    _add_tokenizer(report, stages, workspace)
    _add_word2vec(report, stages, workspace)
    report.models = _models(model_rows, stages, metrics, workspace, report.config, report.status)
    # A retrain that found nothing to train says so in its decision.
    if (
        not report.models
        and not report.promotions
        and (report.config.get("model") or report.config.get("models"))
    ):
        report.missing.append(
            f"The config names a model, but none was recorded: the run is {report.status}."
        )
    if model_rows is None:
        report.missing.append(
            "The registry predates per-model records (schema before migration 3): model "
            "numbers come from the train stage and its artifact folder."
        )
    return report


def _add_ablation(report: RunReport, workspace: Workspace) -> None:
    """An ablation's table of mean ± std over seeds, from the `ablation.json` it wrote beside its
    metrics (the numbers of its `ablation.md`)."""
    document = _read_json_file(workspace.runs / report.run_id / ABLATION_RESULTS_FILE)
    if isinstance(document, dict):
        report.ablation = AblationTable.from_json(document)
    elif (report.command or "").startswith("lmforge ablation"):
        report.missing.append(
            f"This ablation wrote no table ({ABLATION_RESULTS_FILE} is not in its run folder): "
            "it ended before its variants were scored."
        )


def _add_tokenizer(report: RunReport, stages: list[dict], workspace: Workspace) -> None:
    stage = next((s for s in stages if s["stage"] == "tokenizer"), None)
    if stage is None:
        return
    report.tokenizer = _json(stage["stats"]) or None
    if stage["output_path"]:
        report.tokenizer_piece_bytes = _piece_bytes(workspace.resolve(stage["output_path"]))


def _piece_bytes(folder: Path) -> list[int] | None:
    """The UTF-8 length of every learned piece of the tokenizer in `folder` (byte-fallback,
    control and configured pieces left out), or None when it cannot be loaded."""
    from lm.tokenizer import SPACE_SYMBOL, TokenizerError, load_tokenizer

    try:
        tokenizer = load_tokenizer(folder, threads=1)
    except (OSError, TokenizerError, ValueError):
        return None
    lengths = [
        len(tokenizer.piece(token_id).replace(SPACE_SYMBOL, " ").encode())
        for token_id in range(tokenizer.vocab_size)
        if tokenizer.is_learned(token_id)
    ]
    return lengths or None


def _add_word2vec(report: RunReport, stages: list[dict], workspace: Workspace) -> None:
    stage = next((s for s in stages if s["stage"] == "word2vec"), None)
    if stage is None:
        return
    report.word2vec = _json(stage["stats"]) or {}
    if stage["output_path"]:
        report.projection_png = workspace.resolve(stage["output_path"]) / "projection.png"


def _models(
    model_rows: list[dict] | None,
    stages: list[dict],
    metrics: list[dict],
    workspace: Workspace,
    config: dict | None = None,
    status: str = "completed",
) -> list[ModelSection]:
    """One section per trained model: from the `models` table when the registry has one and the
    run has rows there, else from the run's train stages; and one per training cut short (a
    killed or failed run), from the curve it logged, which the registry keeps."""
    if model_rows:
        models = [_model_from_row(row, workspace) for row in model_rows]
    else:
        models = [
            _model_from_train_stage(label, stage, workspace)
            for stage in stages
            if (label := _stage_label(stage["stage"], TRAIN_STAGE)) is not None
        ]
    known = {model.label for model in models}
    trained = {label for stage in stages
               if (label := _stage_label(stage["stage"], TRAIN_STAGE)) is not None}  # fmt: skip
    cut_short = [row["model"] for row in metrics if row["key"] in CURVE_KEYS]
    for label in dict.fromkeys(cut_short):
        if label is not None and label not in known:
            # A train stage recorded for it ("" for a run's one model): trained, not scored.
            finished = label in trained or ("" in trained and not (config or {}).get("models"))
            models.append(_model_cut_short(label, config or {}, status, finished))
    _add_metrics(models, metrics)
    _add_evaluations(models, stages, workspace)
    for model in models:
        _attribute_val_loss(model)
        if model.label not in known:  # cut short: its best val loss so far is its curve's
            _best_logged_val_loss(model)
    return models


def _best_logged_val_loss(model: ModelSection) -> None:
    """A training cut short has no train stage stats: training's best val loss (what a
    finished training's stage records, and the score tables show for a model the evaluate
    stage did not score) is the lowest point of the val loss curve it logged."""
    curve = model.curves.get("val/loss")
    if curve and curve.values and model.scores.get("training_val_loss") is None:
        model.scores["training_val_loss"] = min(curve.values)


def _attribute_val_loss(model: ModelSection) -> None:
    """A `models` row's val loss is the evaluate stage's when it scored val; when it did not
    (`eval.splits` without val) the row kept training's best, which is labelled as such."""
    if model.scores.get("val_loss") is not None and "eval/val/loss" not in model.evaluation:
        model.scores.setdefault("training_val_loss", model.scores["val_loss"])
        model.scores["val_loss"] = None


def _train_settings(path: str | None, workspace: Workspace) -> dict:
    if not path:
        return {}
    return _read_json_file(workspace.resolve(path) / "train.json") or {}


def _tokens_per_step(
    train: dict, tokens_seen: int | None = None, steps: int | None = None
) -> float | None:
    """Targets trained on per step: global batch × block size for windows; for rows of
    documents, whose padding is not trained on, the mean the training counted (None when it
    did not finish, and its curves are drawn against steps)."""
    if train.get("samples") == "documents":
        return tokens_seen / steps if tokens_seen and steps else None
    if train.get("global_batch") and train.get("block_size"):
        return int(train["global_batch"]) * int(train["block_size"])
    return None


def _model_from_row(row: dict, workspace: Workspace) -> ModelSection:
    config = _json(row.get("config")) or {}
    train = _train_settings(row.get("path"), workspace) or config.get("train") or {}
    model = ModelSection(
        label=row["label"],
        kind=row.get("kind"),
        parameters=row.get("parameters"),
        steps=row.get("steps"),
        tokens_seen=row.get("tokens_seen"),
        tokens_trained=row.get("tokens_trained"),
        tokens_per_step=_tokens_per_step(train, row.get("tokens_seen"), row.get("steps")),
        scores={k: row.get(k) for k in MODEL_SCORE_COLUMNS},
        config=config.get("model", config),
        path=row.get("path"),
    )
    if row.get("path") and not workspace.resolve(row["path"]).is_dir():
        model.missing.append(f"the model's artifact folder {row['path']} is gone")
    return model


def _model_from_train_stage(label: str, stage: dict, workspace: Workspace) -> ModelSection:
    stats = _json(stage["stats"]) or {}
    path = stage["output_path"]
    folder = workspace.resolve(path) if path else None
    config = (_read_json_file(folder / "model.json") if folder else None) or {}
    return ModelSection(
        label=label or stats.get("model") or config.get("kind") or UNLABELLED,
        kind=stats.get("model") or config.get("kind"),
        parameters=stats.get("parameters"),
        steps=stats.get("steps"),
        tokens_seen=stats.get("tokens_seen"),
        tokens_trained=stats.get("tokens_trained"),
        tokens_per_step=_tokens_per_step(
            _train_settings(path, workspace), stats.get("tokens_seen"), stats.get("steps")
        ),
        scores={  # training's own (its best on sampled val windows), not the evaluator's
            "training_val_loss": stats.get("val_loss"),
            "training_baseline_val_loss": stats.get("baseline_val_loss"),
        },
        config=config,
        path=path,
    )


def _model_cut_short(label: str, config: dict, status: str, trained: bool = False) -> ModelSection:
    """A model whose training logged a curve but never finished (or, `trained`, finished but
    was never scored): its kind and tokens per step from the run's config (the ladder entry of
    that label, or the run's one model)."""
    train = dict(config.get("train") or {})
    model = config.get("model") or {}
    for entry in config.get("models") or []:
        entry_model = entry.get("model") or {}
        if (entry.get("name") or entry_model.get("kind")) == label:
            model, train = entry_model, train | (entry.get("train") or {})
    block_size = model.get("block_size") or train.get("block_size")
    why = (f"its training did not finish (the run is {status}): the curves are what it logged "
           "before it stopped, and no evaluation scored it")  # fmt: skip
    if trained:
        why = (f"its training finished, but the run ({status}) stopped before it was scored: "
               "the curves are its training's, and no evaluation scored it")  # fmt: skip
    return ModelSection(
        label=label,
        kind=model.get("kind"),
        tokens_per_step=_tokens_per_step(train | {"block_size": block_size}),
        config=model,
        missing=[why],
    )


def _add_metrics(models: list[ModelSection], metrics: list[dict]) -> None:
    """Curves and evaluation numbers per model. Unlabelled training metrics (runs recorded
    before metrics named their model) belong to the run's only model."""
    by_label = {m.label: m for m in models}
    only = models[0] if len(models) == 1 else None
    for row in metrics:
        key, label = row["key"], row["model"]
        model = by_label.get(label) if label is not None else only
        if model is None or row["value"] is None:
            continue
        if key in CURVE_KEYS:
            curve = model.curves.setdefault(key, Curve([], []))
            curve.steps.append(int(row["step"] or 0))
            curve.values.append(float(row["value"]))
        elif key in EVAL_SCORES:
            model.scores.setdefault(EVAL_SCORES[key], None)
            if model.scores[EVAL_SCORES[key]] is None:
                model.scores[EVAL_SCORES[key]] = row["value"]
        elif key in LEGACY_SCORES and model.scores.get(LEGACY_SCORES[key]) is None:
            model.scores[LEGACY_SCORES[key]] = row["value"]
        if key.startswith(("eval/", "baseline/")) and key not in LEGACY_SCORES:
            model.evaluation[key] = row["value"]


def _add_evaluations(models: list[ModelSection], stages: list[dict], workspace: Workspace) -> None:
    """Samples and metrics from each model's evaluate stage (`evaluate` for a run's one model,
    `evaluate/<label>` in a ladder)."""
    evaluated: set[str] = set()
    for stage in stages:
        label = _stage_label(stage["stage"], EVALUATE_STAGE)
        if label is None or not stage["output_path"]:
            continue
        model = next((m for m in models if m.label == label), None)
        if model is None and label == "" and models:
            model = models[-1]
        if model is None:
            continue
        evaluated.add(model.label)
        model.evaluation_scoring = (_json(stage["stats"]) or {}).get("scoring")
        folder = workspace.resolve(stage["output_path"])
        samples = _read_json_file(folder / "samples.json")
        model.samples = samples if isinstance(samples, list) else None
        if model.samples is None:
            model.missing.append(f"the evaluate stage's samples.json is missing in {folder}")
        # metrics.json says `model/val/bpb` where the registry says `eval/val/bpb`.
        numbers = _flatten(_read_json_file(folder / "metrics.json") or {})
        for key, value in numbers.items():
            model.evaluation.setdefault(key.replace("model/", "eval/", 1), value)
    for model in models:
        model.evaluated = model.label in evaluated


def _flatten(document: object, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested JSON document, keyed by their path (`val/bpb`)."""
    if isinstance(document, dict):
        out: dict[str, float] = {}
        for key, value in document.items():
            out.update(_flatten(value, f"{prefix}{key}/"))
        return out
    if isinstance(document, int | float) and not isinstance(document, bool):
        return {prefix.rstrip("/"): document}
    return {}
