"""The run card: what a run trained and how well, as Prefect artifacts (a markdown card and a
table of models) that the Prefect UI shows beside the flow run."""

from __future__ import annotations

import json

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lm.config import PipelineConfig
from storage.artifacts import Descriptor
from storage.registry import ModelRecord
from storage.workspace import Workspace
from tasks.evaluate import SAMPLES_FILE


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    """A count not recorded (a model of a run cut short) as a dash, never as a zero."""
    return "–" if value is None else f"{value:,}"


def _bytes_per_token(stats: dict) -> str:
    value = stats.get("bytes_per_token")
    return "no val text to measure bytes/token" if value is None else f"{value:.2f} bytes/token"


def model_rows(models: list[ModelRecord]) -> list[dict]:
    return [
        {
            "model": m.label,
            "kind": m.kind,
            "parameters": m.stats.get("parameters"),
            "tokens_seen": m.stats.get("tokens_seen"),
            "val_bpb": m.stats.get("val_bpb"),
            "test_bpb": m.stats.get("test_bpb"),
            "baseline_val_bpb": m.stats.get("baseline_val_bpb"),
        }
        for m in models
    ]


def run_card(
    run_id: str,
    settings: PipelineConfig,
    corpus: Descriptor,
    tokenizer: Descriptor,
    models: list[ModelRecord],
    samples: dict[str, list[dict]],
) -> str:
    lines = [
        f"# Run `{run_id}` — preset `{settings.name}`",
        "",
        f"- corpus `{corpus.digest[:12]}`: {corpus.stats['kept']:,} of "
        f"{corpus.stats['documents']:,} documents kept, {corpus.stats['kept_bytes']:,} bytes",
        f"- tokenizer `{tokenizer.digest[:12]}`: {tokenizer.stats['kind']}, vocabulary "
        f"{tokenizer.stats['vocab_size']:,}, {_bytes_per_token(tokenizer.stats)}",
        "",
    ]
    if models:
        lines += [
            "| model | kind | parameters | tokens seen | val bits/byte | test bits/byte | "
            "baseline val bits/byte |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in model_rows(models):
            lines.append(
                f"| {row['model']} | {row['kind']} | {_count(row['parameters'])} | "
                f"{_count(row['tokens_seen'])} | {_number(row['val_bpb'])} | "
                f"{_number(row['test_bpb'])} | {_number(row['baseline_val_bpb'])} |"
            )
    for label, drawn in samples.items():
        for sample in drawn:
            heading = f"**{label}** (seed {sample['seed']}, temperature {sample['temperature']}):"
            lines += ["", heading, "", "```", sample["text"][:600], "```"]
    return "\n".join(lines) + "\n"


def publish_run_card(
    workspace: Workspace,
    run_id: str,
    settings: PipelineConfig,
    corpus: Descriptor,
    tokenizer: Descriptor,
    models: list[ModelRecord],
    evaluations: dict[str, str],
) -> str:
    """Create the markdown card and the models table artifacts; returns the markdown."""
    samples = {}
    for label, path in evaluations.items():
        file = workspace.resolve(path) / SAMPLES_FILE
        if file.is_file():
            samples[label] = json.loads(file.read_text(encoding="utf-8"))
    card = run_card(run_id, settings, corpus, tokenizer, models, samples)
    create_markdown_artifact(card, key="run-card", description=f"lmforge run {run_id}")
    if models:
        create_table_artifact(model_rows(models), key="models", description=f"run {run_id}")
    return card
