"""Run reports as one static HTML page with PNG plots beside it, rendered from plain data.

The report must open anywhere, years later, without a server or the registry: so it is one HTML
file with inline CSS, no script and no remote resource, and images as files next to it. This
module only renders; `storage/report_data.py` gathers the data from the registry and artifacts,
and `flows/report.py` writes the folder. Whatever a run did not record (no word2vec, no
evaluation, a registry from before models had labels) arrives as `None` or an empty list and is
shown on the page as missing, with the reason, rather than failing the report.

Plots are drawn with matplotlib's Agg backend into memory and returned as PNG bytes, so
rendering never touches the filesystem except to read a PNG the pipeline already made (the
word2vec projection).
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm.ablation_table import HEADER as ABLATION_HEADER
from lm.ablation_table import AblationTable
from lm.artifact_keys import short_key
from lm.flat_config import flatten_config
from lm.promotion_text import promotion_text

CURVE_KEYS = ("train/loss", "val/loss", "train/lr", "train/tokens_per_s", "train/mfu")
# Val loss is measured in two places, and the two numbers differ: training measures it every
# `train.eval_every` steps on a fixed sample of val windows (the curve, and the best of it that
# the train stage keeps); the evaluate stage scores the split as `eval.scoring` says, by default
# every token of it once. Every val figure on the page says which it is.
DURING_TRAINING = "during training (sampled windows)"
CURVE_NAMES = {"train/loss": "train loss", "val/loss": f"val loss {DURING_TRAINING}"}
# What the evaluate stage's `scoring` stat (its `eval.scoring`, resolved) scored.
EVALUATION_SCOPES = {"whole": "whole split", "documents": "whole split, each document alone",
                     "sample": "sampled windows"}  # fmt: skip
# Scores of a trained model as the report names them, in the order the run card lists them:
# the evaluate stage's, then training's own (shown only for a model the evaluate stage did not
# score: a run that failed before, or one from before that stage).
SCORE_LABELS = {
    "val_loss": "val loss (nats/token), evaluation",
    "val_bpb": "val bits per byte, evaluation",
    "test_loss": "test loss (nats/token), evaluation",
    "test_bpb": "test bits per byte, evaluation",
    "baseline_val_bpb": "count-bigram baseline val bits per byte, evaluation",
    "baseline_test_bpb": "count-bigram baseline test bits per byte, evaluation",
    "training_val_loss": f"best val loss (nats/token) {DURING_TRAINING}",
    "training_baseline_val_loss": "count-bigram baseline val loss during training (same windows)",
}
TRAINING_SCORES = ("training_val_loss", "training_baseline_val_loss")
SAMPLE_SETTINGS = ("seed", "temperature", "top_k", "top_p")
EVALUATION_SCORED = ("eval", "baseline")
EVALUATION_SPLITS = ("val", "test", "train")
EVALUATION_MEASURES = ("bpb", "loss", "ppl", "bpb_std", "bpb_se", "loss_std", "tokens", "bytes")


@dataclass
class Curve:
    """One metric of one model over optimizer steps."""

    steps: list[int]
    values: list[float]


@dataclass
class ModelSection:
    """A trained model of a run. `tokens_per_step` (global batch × block size, or for rows of
    documents the mean targets a step trained on) turns steps into tokens; `None` when the
    train settings are not available, and curves are then drawn against steps."""

    label: str
    kind: str | None = None
    parameters: int | None = None
    steps: int | None = None
    tokens_seen: int | None = None
    # Behind the published weights (`best/`), with the trainings they continue
    # (`train.init_from`); None where not recorded.
    tokens_trained: int | None = None
    tokens_per_step: float | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    curves: dict[str, Curve] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)
    # What the evaluate stage scored (`whole`, `documents`, `sample`); None when not recorded.
    evaluation_scoring: str | None = None
    samples: list[dict] | None = None
    evaluated: bool = False
    config: dict = field(default_factory=dict)
    path: str | None = None
    missing: list[str] = field(default_factory=list)


@dataclass
class StageRow:
    stage: str
    cached: bool
    seconds: float
    digest: str | None = None


@dataclass
class RunReport:
    """Everything one run's page shows. `missing` holds run-level notes (what the run did not
    record and why)."""

    run_id: str
    status: str
    preset: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    seconds: float | None = None
    device: str | None = None
    git_sha: str | None = None
    command: str | None = None
    error: str | None = None
    config: dict = field(default_factory=dict)
    corpus: dict | None = None
    tokenizer: dict | None = None
    tokenizer_piece_bytes: list[int] | None = None
    word2vec: dict | None = None
    projection_png: Path | None = None
    run_metrics: dict[str, float] = field(default_factory=dict)
    # An ablation's mean ± std table over seeds; None for any other run.
    ablation: AblationTable | None = None
    # A retrain's decision (the `promotions` rows of the run); empty for any other run.
    promotions: list[dict] = field(default_factory=list)
    models: list[ModelSection] = field(default_factory=list)
    stages: list[StageRow] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass
class RenderedReport:
    """The page and the images it links to by file name (`<img src="NAME">`)."""

    html: str
    images: dict[str, bytes]


# -- plots -------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    # Text as written: a model named `c$\alpha$` was read as TeX, and one named `$\alph$`
    # failed the whole report with matplotlib's "Unknown symbol".
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _png(draw: Callable[[Any], None], size: tuple[float, float] = (8.0, 4.2)) -> bytes:
    """Draw on a fresh figure and return it as PNG bytes (no timestamp: the same data gives the
    same file)."""
    plt = _pyplot()
    figure = plt.figure(figsize=size, dpi=100)
    try:
        draw(figure)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
        return buffer.getvalue()
    finally:
        plt.close(figure)


# More legend entries than fit inside a plot (a comparison of 20 runs has 40): the legend goes
# beside it, in columns, where it hid the curves and the title.
LEGEND_INSIDE = 8


def _legend(axes) -> None:
    entries = len(axes.get_legend_handles_labels()[1])
    if entries <= LEGEND_INSIDE:
        axes.legend(fontsize=8)
    else:  # the figure widened by the legend's columns: the plot keeps its own width
        columns = 1 + (entries - 1) // 24
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                    ncols=columns)  # fmt: skip
        width, height = axes.figure.get_size_inches()
        rows = -(-entries // columns)
        axes.figure.set_size_inches(width + 3.4 * columns, max(height, 0.16 * rows + 0.8))


def _colour(index: int, count: int) -> Any:
    """Matplotlib's ten colours, or twenty paler ones for more series (they repeated past ten:
    runs 1 and 11 of a comparison looked one)."""
    if count <= 10:
        return f"C{index}"
    from matplotlib import colormaps

    return colormaps["tab20"](index % 20)


def _x_axis(
    model: ModelSection, steps: list[int], by_tokens: bool = True
) -> tuple[list[float], str]:
    if by_tokens and model.tokens_per_step:
        return [s * model.tokens_per_step for s in steps], "tokens"
    return list(map(float, steps)), "optimizer step"


def _by_tokens(series: list[tuple[str, ModelSection]], keys: Iterable[str]) -> bool:
    """Whether every curve drawn can go against tokens. One axis holds one unit: a model whose
    step's tokens are not known (rows of documents cut short, a registry from before train
    settings) was drawn in steps on an axis labelled by whichever model came last: a
    comparison set one run's step 200 at 200 tokens, beside another's 204,800, on an axis that
    said "tokens"."""
    keys = tuple(keys)
    drawn = [m for _, m in series if any(m.curves.get(k) and m.curves[k].steps for k in keys)]
    return all(m.tokens_per_step for m in drawn)


def _curve_label(owner: str, model: ModelSection, key: str, several_models: bool) -> str:
    name = f"{owner} {model.label}".strip() if several_models or owner else model.label
    key = CURVE_NAMES.get(key, key)
    return f"{name} {key}" if key else name


def _loss_plot(series: list[tuple[str, ModelSection]], keys: Iterable[str], title: str) -> bytes:
    """Loss curves against tokens (steps where a model's tokens per step are not known) for
    every (owner, model) in `series`; val loss with markers, train loss as a thinner line of
    the same colour."""
    several = len(series) > 1
    keys = tuple(keys)
    by_tokens = _by_tokens(series, keys)

    def draw(figure) -> None:
        axes = figure.add_subplot()
        x_label = "tokens"
        for index, (owner, model) in enumerate(series):
            colour = _colour(index, len(series))
            for key in keys:
                curve = model.curves.get(key)
                if curve is None or not curve.steps:
                    continue
                x, x_label = _x_axis(model, curve.steps, by_tokens)
                style = {"marker": "o", "linewidth": 2} if key == "val/loss" else {"alpha": 0.45}
                label = _curve_label(owner, model, key, several)
                axes.plot(x, curve.values, color=colour, label=label, **style)
        axes.set_xlabel(x_label)
        axes.set_ylabel("loss (nats per token)")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        _legend(axes)

    return _png(draw)


def _steps_plot(models: list[ModelSection], key: str, y_label: str, title: str) -> bytes:
    def draw(figure) -> None:
        axes = figure.add_subplot()
        for index, model in enumerate(models):
            curve = model.curves.get(key)
            if curve and curve.steps:
                axes.plot(curve.steps, curve.values, color=_colour(index, len(models)),
                          label=model.label,
                          marker="o" if len(curve.steps) < 50 else None)  # fmt: skip
        axes.set_xlim(left=0)  # a short run logs throughput once: keep that point in context
        axes.set_xlabel("optimizer step")
        axes.set_ylabel(y_label)
        axes.set_title(title)
        axes.grid(alpha=0.3)
        _legend(axes)

    return _png(draw, (8.0, 3.6))


def _has_bpb(scores: dict) -> bool:
    """Whether the evaluate stage scored the model on val or test (`eval.splits` may omit
    either)."""
    return scores.get("val_bpb") is not None or scores.get("test_bpb") is not None


def _scores_plot(rows: list[tuple[str, dict[str, float | None]]]) -> bytes:
    """Bits per byte of each model against the count-bigram baseline, val and test."""
    pairs = [("val_bpb", "baseline_val_bpb", "val"), ("test_bpb", "baseline_test_bpb", "test")]

    def draw(figure) -> None:
        axes = figure.add_subplot()
        labels, model_bars, baseline_bars = [], [], []
        for name, scores in rows:
            for model_key, baseline_key, split in pairs:
                if scores.get(model_key) is None:
                    continue
                labels.append(f"{name}\n{split}")
                model_bars.append(scores[model_key])
                baseline_bars.append(scores.get(baseline_key) or 0.0)
        positions = range(len(labels))
        width = 0.38
        axes.bar([p - width / 2 for p in positions], model_bars, width, label="model")
        axes.bar([p + width / 2 for p in positions], baseline_bars, width, label="count bigram",
                 color="0.65")  # fmt: skip
        for p, value in zip(positions, model_bars, strict=True):
            axes.annotate(f"{value:.3f}", (p - width / 2, value), ha="center", va="bottom",
                          fontsize=8)  # fmt: skip
        axes.set_xticks(list(positions), labels, fontsize=8)
        axes.set_ylabel("bits per byte (lower is better)")
        axes.set_title("bits per byte against the count-bigram baseline")
        axes.legend(fontsize=8)
        axes.grid(axis="y", alpha=0.3)

    return _png(draw, (8.0, 3.8))


def _piece_length_plot(piece_bytes: list[int], kind: str) -> bytes:
    from matplotlib.ticker import MaxNLocator

    def draw(figure) -> None:
        axes = figure.add_subplot()
        longest = max(piece_bytes)
        counts = [piece_bytes.count(n) for n in range(1, longest + 1)]
        axes.bar(range(1, longest + 1), counts, color="C2")
        axes.set_xlim(0.4, longest + 0.6)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axes.set_xlabel("piece length (UTF-8 bytes)")
        axes.set_ylabel("pieces in the vocabulary")
        axes.set_title(f"{kind} vocabulary: piece lengths ({len(piece_bytes):,} text pieces)")
        axes.grid(axis="y", alpha=0.3)

    return _png(draw, (8.0, 3.4))


def _stages_plot(stages: list[StageRow]) -> bytes:
    def draw(figure) -> None:
        axes = figure.add_subplot()
        names = [s.stage for s in stages][::-1]
        seconds = [s.seconds for s in stages][::-1]
        colours = ["0.7" if s.cached else "C0" for s in stages][::-1]
        axes.barh(names, seconds, color=colours)
        for y, (value, stage) in enumerate(zip(seconds, stages[::-1], strict=True)):
            note = "cached" if stage.cached else "ran"
            axes.annotate(f" {value:.2f} s ({note})", (value, y), va="center", fontsize=8)
        axes.set_xlabel("seconds (grey: served from cache)")
        axes.set_title("stage times")
        axes.set_xlim(0, max([*seconds, 0.01]) * 1.3)

    return _png(draw, (8.0, 0.9 + 0.4 * len(stages)))


# -- HTML --------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222;
       padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .92rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; display: block; margin: .5rem 0 1rem; }
pre { background: #f7f7f7; padding: .7rem; white-space: pre-wrap; overflow-wrap: anywhere; }
code { background: #f2f2f2; padding: 0 .25rem; }
.missing { color: #8a5a00; background: #fff6e0; padding: .4rem .7rem;
           border-left: 4px solid #e0a800; }
.status-completed { color: #17702f; font-weight: bold; }
.status-failed, .status-crashed { color: #b00020; font-weight: bold; }
nav a { margin-right: .8rem; }
"""


# Characters HTML may not hold as text (NUL, the other C0 controls but tab and line ends, DEL
# and the C1 controls): a sample's byte pieces decoded to them, and the page held a raw NUL.
_NOT_HTML_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _e(value: object) -> str:
    """`value` as HTML text: escaped, with each control character written as `\\xHH`, as
    `lmforge generate` shows it on a terminal."""
    text = html.escape("" if value is None else str(value))
    return _NOT_HTML_TEXT.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _format(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value % 1 == 0 and abs(value) < 1e15:  # a count the registry holds as a DOUBLE
            return f"{value:,.0f}"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.4g}"
        return f"{value:,.4f}"
    return str(value)


def _table(
    header: list[str], rows: Iterable[Iterable[object]], number_columns: Iterable[int] = ()
) -> str:
    """A table; numbers, and the cells of `number_columns` (figures already formatted as text),
    are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    aligned = set(number_columns)
    body = []
    for row in rows:
        cells = []
        for column, value in enumerate(row):
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            css = ' class="number"' if numeric or column in aligned else ""
            cells.append(f"<td{css}>{_e(_format(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _image(name: str, alt: str) -> str:
    return f'<img src="{_e(name)}" alt="{_e(alt)}">'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _page(title: str, sections: list[tuple[str, str, str]]) -> str:
    links = " ".join(f'<a href="#{a}">{_e(t)}</a>' for a, t, _ in sections)
    body = "\n".join(_section(a, t, b) for a, t, b in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>"
        f"<h1>{_e(title)}</h1><nav>{links}</nav>\n{body}\n</body></html>\n"
    )


def _config_summary(
    config: dict, tokenizer_stats: dict | None, ablation: bool = False
) -> list[tuple[str, object]]:
    """The settings a reader wants first; the full config is at the end of the page. The
    tokenizer's vocabulary is the trained one (a char tokenizer's comes from the data). An
    ablation trains under `ablation.seeds`, not the run's `seed` (which the card gave)."""
    rows: list[tuple[str, object]] = []
    tokenizer = {**(config.get("tokenizer") or {}), **(tokenizer_stats or {})}
    if tokenizer:
        vocab = tokenizer.get("vocab_size")
        if tokenizer_stats is None and tokenizer.get("kind") == "char":
            vocab = "from the data; not recorded yet"  # the config's 4000 is SentencePiece's
        rows.append(("tokenizer", f"{tokenizer.get('kind')} (vocab {vocab})"))
    train = config.get("train") or {}
    if train and config.get("model"):  # one model: the run's [train]
        rows.append(("training", _training_summary(train, config["model"])))
    for entry in config.get("models") or []:  # a ladder: each model's own overrides on it
        model = entry.get("model") or {}
        label = entry.get("name") or model.get("kind")
        rows.append(
            (f"training {label}", _training_summary(train | (entry.get("train") or {}), model))
        )
    word2vec = config.get("word2vec") or {}
    if word2vec:
        enabled = word2vec.get("enabled", True)
        rows.append(("word2vec", "on" if enabled else "off"))
    seeds = (config.get("ablation") or {}).get("seeds") if ablation else None
    if seeds:
        rows.append(("seeds", ", ".join(map(str, seeds))))
    else:
        rows.append(("seed", str(config.get("seed"))))
    return rows


def _training_summary(train: dict, model: dict) -> str:
    if model.get("kind") == "bigram-count":  # counted in one pass: no steps, no optimizer
        return "counted in closed form (no steps)"
    return (f"{train.get('max_steps')} steps, global batch {train.get('global_batch')}, "
            f"lr {train.get('learning_rate')} ({train.get('schedule')})")  # fmt: skip


def _model_summary(model: ModelSection) -> str:
    config = model.config or {}
    shape = ", ".join(
        f"{key} {config[key]}"
        for key in ("preset", "n_layer", "n_head", "n_kv_heads", "n_embd", "block_size")
        if config.get(key) is not None
    )
    return f"{model.kind or '?'}" + (f" ({shape})" if shape else "")


def _run_card(report: RunReport) -> str:
    status = f'<span class="status-{_e(report.status)}">{_e(report.status)}</span>'
    rows = [
        ("run", f"<code>{_e(report.run_id)}</code>"),
        ("status", status),
        ("preset", _e(report.preset)),
        ("started / ended", f"{_e(report.started_at)} → {_e(report.ended_at or '—')}"),
        ("wall time", _e(f"{report.seconds:.1f} s" if report.seconds is not None else "—")),
        ("device", _e(report.device)),
        ("git commit", f"<code>{_e(report.git_sha or '—')}</code>"),
    ]
    rows += [
        (name, _e(_format(value)))
        for name, value in _config_summary(
            report.config, report.tokenizer, ablation=report.ablation is not None
        )
    ]
    corpus = report.corpus
    if corpus:
        rows.append(
            (
                "corpus",
                _e(
                    f"{corpus['digest'][:12]}: {_format(corpus.get('kept'))} of "
                    f"{_format(corpus.get('documents'))} documents kept, "
                    f"{(corpus.get('kept_bytes') or 0) / 1e6:.2f} MB"
                ),
            )
        )
    tokens = [f"{s} {_format(int(v))}" for s in ("train", "val", "test")
              if (v := report.run_metrics.get(f"tokens/{s}")) is not None]  # fmt: skip
    if tokens:
        rows.append(("tokens per split", _e(", ".join(tokens))))
    for model in report.models:
        rows.append(
            (
                f"model {model.label}",
                _e(
                    f"{_model_summary(model)}: {_format(model.parameters)} parameters, "
                    f"{_format(model.steps)} steps, {_format(model.tokens_seen)} tokens seen"
                    f"{_published_tokens(model)}"
                ),
            )
        )
    for decision in report.promotions:
        rows.append(("retrain decision", _e(promotion_text(decision))))
    if report.error:
        rows.append(("error", f"<pre>{_e(report.error)}</pre>"))
    body = "<table><tbody>" + "".join(
        f"<tr><th>{_e(name)}</th><td>{value}</td></tr>" for name, value in rows
    )
    body += "</tbody></table>"
    if report.command:
        body += f"<p>Reproduce with:</p><pre>{_e(report.command)}</pre>"
    body += "".join(_missing(note) for note in report.missing)
    return body


def _ablation_section(table: AblationTable) -> str:
    """The ablation's answer, as its `ablation.md` has it: a row per variant, then why each
    failed variant × seed failed."""
    body = (
        "<p>Per variant, best first: mean ± sample standard deviation over seeds of the "
        "evaluator's val bits per byte and of training tokens/s (each seed's model is below).</p>"
    )
    body += _table(ABLATION_HEADER, table.rows(), number_columns=range(1, len(ABLATION_HEADER) - 1))
    if table.failed:
        body += "<p>Failed, left out of the means above:</p>"
        body += _table(
            ["variant", "seed", "error"], [(a.variant, a.seed, a.error) for a in table.failed]
        )
    return body


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _rank(name: str, order: tuple[str, ...]) -> tuple[int, str]:
    return (order.index(name) if name in order else len(order), name)


def _evaluation_table(evaluation: dict[str, float]) -> str:
    """`eval/val/bpb`-style numbers as a grid: a row per measure, a column per scored model and
    split (`eval/val`, `baseline/test`, ...), the model before the baseline, val before test."""
    cells = {}
    for key, value in evaluation.items():
        column, _, measure = key.rpartition("/")
        cells[(column or "value", measure)] = value

    def column_rank(column: str) -> tuple:
        scored, _, split = column.partition("/")
        return (_rank(scored, EVALUATION_SCORED), _rank(split, EVALUATION_SPLITS))

    columns = sorted({c for c, _ in cells}, key=column_rank)
    measures = sorted({m for _, m in cells}, key=lambda m: _rank(m, EVALUATION_MEASURES))
    rows = [[measure, *(cells.get((c, measure)) for c in columns)] for measure in measures]
    return _table(["", *columns], rows)


def _shown_scores(model: ModelSection) -> dict[str, float | None]:
    """The scores the tables show: training's own val losses only for a model without the
    evaluate stage's, which are the comparable numbers (training's is its curve, labelled)."""
    evaluated = any(model.scores.get(k) is not None for k in ("val_loss", "val_bpb"))
    return {k: v for k, v in model.scores.items() if not (evaluated and k in TRAINING_SCORES)}


def _evaluation_scope(models: Iterable[ModelSection]) -> str | None:
    """What the evaluate stage scored for all of `models`, when it is the same and known."""
    scopes = {EVALUATION_SCOPES.get(m.evaluation_scoring or "") for m in models}
    return scopes.pop() if len(scopes) == 1 else None


def _score_rows(models: list[ModelSection | None]) -> list[list[object]]:
    """A row per score any of `models` has, labelled by where it was measured, a column per
    model (None: a column without one)."""
    shown = [_shown_scores(m) if m else {} for m in models]
    rows = []
    for key, label in SCORE_LABELS.items():
        values = [scores.get(key) for scores in shown]
        if all(v is None for v in values):
            continue
        if key not in TRAINING_SCORES:
            scope = _evaluation_scope(
                m for m, v in zip(models, values, strict=True) if v is not None
            )
            label = f"{label} ({scope})" if scope else label
        rows.append([label, *values])
    return rows


def _scores_section(report: RunReport, images: dict[str, bytes]) -> str:
    if not report.models:
        return _missing("This run trained no model: no scores to show.")
    rows = _score_rows(report.models)
    body = _table(["", *(m.label for m in report.models)], rows) if rows else ""
    with_bpb = [(m.label, m.scores) for m in report.models if _has_bpb(m.scores)]
    if with_bpb:
        images["scores.png"] = _scores_plot(with_bpb)
        body += _image("scores.png", "bits per byte against the baseline")
    elif rows:
        body += _missing(
            "Bits per byte were not recorded for this run (no evaluate stage): the table shows "
            "the training losses in nats per token, which do not compare across tokenizers."
        )
    else:  # no table to point at: a training stopped before its first evaluation
        body += _missing(
            "Bits per byte were not recorded for this run (no evaluate stage), nor a val loss "
            "during training."
        )
    if any(_shown_scores(m).keys() & set(TRAINING_SCORES) for m in report.models):
        body += (
            f"<p>Figures {DURING_TRAINING} are training's own, on a fixed sample of val windows "
            "(train.eval_batches), not the evaluate stage's.</p>"
        )
    for model in report.models:
        if model.evaluation:
            scope = _evaluation_scope([model])
            body += f"<h3>evaluation of {_e(model.label)}"
            body += f" ({_e(scope)})</h3>" if scope else "</h3>"
            body += _evaluation_table(model.evaluation)
        if with_bpb and not model.evaluated:
            body += _missing(f"{model.label}: not evaluated in this run (no evaluate stage).")
        body += "".join(_missing(f"{model.label}: {note}") for note in model.missing)
    return body


def _curves_section(report: RunReport, images: dict[str, bytes]) -> str:
    with_loss = [m for m in report.models if any(k in m.curves for k in ("train/loss", "val/loss"))]
    if not with_loss:
        return _missing("No training curves were recorded for this run.")
    images["loss.png"] = _loss_plot(
        [("", m) for m in with_loss], ("train/loss", "val/loss"), "train and val loss"
    )
    body = _image("loss.png", "train and val loss against tokens")
    body += (
        f"<p>Both curves are training's own: the val loss {DURING_TRAINING} is measured every "
        "train.eval_every steps on the same fixed sample of val windows (train.eval_batches), "
        "so it is not the evaluation's val loss under Bits per byte.</p>"
    )
    return body


def _steps_section(
    report: RunReport, images: dict[str, bytes], key: str, name: str, y_label: str, title: str
) -> str:
    models = [m for m in report.models if key in m.curves]
    if not models:
        return _missing(f"No {key} curve was recorded for this run.")
    images[name] = _steps_plot(models, key, y_label, title)
    return _image(name, title)


def _throughput_section(report: RunReport, images: dict[str, bytes]) -> str:
    body = _steps_section(
        report, images, "train/tokens_per_s", "throughput.png", "tokens per second",
        "training throughput",
    )  # fmt: skip
    for model in report.models:
        curve = model.curves.get("train/tokens_per_s")
        if curve and curve.values:
            body += (
                f"<p>{_e(model.label)}: {_format(curve.values[-1])} tokens/s at step "
                f"{curve.steps[-1]:,} (median {_format(_median(curve.values))})</p>"
            )
    if any("train/mfu" in m.curves for m in report.models):
        body += _steps_section(
            report, images, "train/mfu", "mfu.png", "model FLOPs utilisation",
            "model FLOPs utilisation",
        )  # fmt: skip
    return body


def _tokenizer_section(report: RunReport, images: dict[str, bytes]) -> str:
    stats = report.tokenizer
    if not stats:
        return _missing("No tokenizer statistics were recorded for this run.")
    rows = [
        ("kind", stats.get("kind")),
        ("vocabulary size", stats.get("vocab_size")),
        ("bytes per token (val)", stats.get("bytes_per_token")),
        # The encoded text's own tokens; the evaluation's count adds one end-of-text a document.
        ("val tokens (without end-of-text marks)", stats.get("tokens")),
        ("val documents", stats.get("documents")),
        ("vocabulary used on val", stats.get("vocab_used_fraction")),
        ("byte-fallback rate on val", stats.get("byte_fallback_rate")),
        ("<unk> rate on val", stats.get("unknown_rate")),
    ]
    body = _table(["statistic", "value"], rows)
    longest = stats.get("longest_pieces") or []
    if any(len(piece) > 1 for piece in longest):  # a char tokenizer's are one character each
        body += "<p>Longest pieces: " + ", ".join(f"<code>{_e(p)}</code>" for p in longest) + "</p>"
    if report.tokenizer_piece_bytes:
        images["tokenizer.png"] = _piece_length_plot(
            report.tokenizer_piece_bytes, str(stats.get("kind"))
        )
        body += _image("tokenizer.png", "tokenizer piece lengths")
    else:
        body += _missing("The tokenizer files are not available: no piece-length plot.")
    return body


def _word2vec_section(report: RunReport, images: dict[str, bytes]) -> str:
    if report.word2vec is None:
        enabled = (report.config.get("word2vec") or {}).get("enabled", True)
        why = ("word2vec.enabled = false" if not enabled
               else "a retrain trains it only for a model that reads its vectors")  # fmt: skip
        if enabled and not (report.command or "").startswith("lmforge retrain"):
            why = "no word2vec stage was recorded"
        return _missing(f"word2vec was not trained in this run ({why}).")
    numbers = sorted((k, v) for k, v in report.word2vec.items() if isinstance(v, int | float))
    body = _table(["metric", "value"], numbers)
    if report.projection_png is not None and report.projection_png.is_file():
        images["word2vec-projection.png"] = report.projection_png.read_bytes()
        body += _image("word2vec-projection.png", "word2vec projection of the probe words")
    else:
        body += _missing("The word2vec projection image is not in the artifact folder.")
    return body


def _samples_section(report: RunReport) -> str:
    if not report.models:
        return _missing("This run trained no model: no samples.")
    body = ""
    for model in report.models:
        if model.samples is None:
            why = "" if model.evaluated else " (no evaluate stage in this run)"
            body += _missing(f"{model.label}: no samples recorded{why}.")
            continue
        body += f"<h3>{_e(model.label)}</h3>"
        if not model.samples:
            body += _missing(
                f"{model.label}: the evaluate stage drew no samples (eval.samples = 0)."
            )
        for sample in model.samples:
            settings = ", ".join(
                f"{key} {sample[key]}" for key in SAMPLE_SETTINGS if sample.get(key) is not None
            )
            prompt = sample.get("prompt") or ""
            text = str(sample.get("text", ""))
            shown = f"<b>{_e(prompt)}</b>{_e(text.removeprefix(prompt))}"
            body += f"<p>prompt <code>{_e(prompt) or '(empty)'}</code>; {_e(settings)}</p>"
            body += f"<pre>{shown}</pre>"
    return body


def _stages_section(report: RunReport, images: dict[str, bytes]) -> str:
    if not report.stages and report.status == "running":  # stages are recorded at its end
        return _missing("No stage is recorded yet: a run's stages are recorded when it ends.")
    if not report.stages:
        return _missing("No stage was recorded for this run (it ended before the first finished).")
    images["stages.png"] = _stages_plot(report.stages)
    rows = [
        (s.stage, "cached" if s.cached else "ran", round(s.seconds, 3), short_key(s.digest or ""))
        for s in report.stages
    ]
    hits = sum(s.cached for s in report.stages)
    return (
        _image("stages.png", "stage times")
        + _table(["stage", "state", "seconds", "output digest"], rows)
        + f"<p>{hits} of {len(report.stages)} stages served from cache.</p>"
    )


def _config_section(report: RunReport) -> str:
    import json

    if not report.config:
        return _missing("The run's config was not recorded.")
    text = json.dumps(report.config, indent=2, ensure_ascii=False)
    return (
        f"<details><summary>the run's full config (JSON)</summary><pre>{_e(text)}</pre></details>"
    )


def render_run_report(report: RunReport) -> RenderedReport:
    """One run's page: the run card, an ablation's table, scores, curves, tokenizer, word2vec,
    samples, stages."""
    images: dict[str, bytes] = {}
    sections = [
        ("run", "Run", _run_card(report)),
        *([("ablation", "Ablation", _ablation_section(report.ablation))]
          if report.ablation is not None else []),
        ("scores", "Bits per byte", _scores_section(report, images)),
        ("loss", "Loss", _curves_section(report, images)),
        ("learning-rate", "Learning rate", _steps_section(
            report, images, "train/lr", "learning-rate.png", "learning rate", "learning rate"
        )),
        ("throughput", "Throughput", _throughput_section(report, images)),
        ("tokenizer", "Tokenizer", _tokenizer_section(report, images)),
        ("word2vec", "word2vec", _word2vec_section(report, images)),
        ("samples", "Samples", _samples_section(report)),
        ("stages", "Stages", _stages_section(report, images)),
        ("config", "Config", _config_section(report)),
    ]  # fmt: skip
    return RenderedReport(_page(f"lmforge run {report.run_id}", sections), images)


# -- comparison --------------------------------------------------------------------------------

COMPARED_RUN_FIELDS = (
    ("status", lambda r, m: r.status),
    ("preset", lambda r, m: r.preset),
    ("wall time (s)", lambda r, m: r.seconds),
    ("corpus", lambda r, m: (r.corpus or {}).get("digest", "")[:12] or None),
    ("tokenizer", lambda r, m: (r.tokenizer or {}).get("kind")),
    ("vocabulary size", lambda r, m: (r.tokenizer or {}).get("vocab_size")),
    ("bytes per token (val)", lambda r, m: (r.tokenizer or {}).get("bytes_per_token")),
    ("model", lambda r, m: m.kind if m else None),
    ("parameters", lambda r, m: m.parameters if m else None),
    ("steps", lambda r, m: m.steps if m else None),
    ("tokens seen", lambda r, m: m.tokens_seen if m else None),
    ("tokens behind the published weights", lambda r, m: m.tokens_trained if m else None),
)


def _published_tokens(model: ModelSection) -> str:
    """Where they differ from the tokens this training saw, the tokens the published weights
    (`best/`) were trained on: more for a model continued from another's weights (both
    trainings count), fewer where the best val loss came before the last step."""
    if model.tokens_trained is None or model.tokens_trained == model.tokens_seen:
        return ""
    return (f" ({_format(model.tokens_trained)} behind the published weights, with any "
            "training they continue)")  # fmt: skip


def _config_differences(reports: list[RunReport]) -> list[list[object]]:
    """One row per config setting whose value is not the same in every run (`train.max_steps`,
    `models[3].train.learning_rate`: keys as `lmforge runs compare` names them), lists shown as
    JSON."""
    import json

    flats = [flatten_config(r.config) for r in reports]
    keys = sorted({key for flat in flats for key in flat})
    rows = []
    for key in keys:
        values = [flat.get(key) for flat in flats]
        if any(v != values[0] for v in values):
            shown = [json.dumps(v) if isinstance(v, list) else v for v in values]
            rows.append([key, *shown])
    return rows


def render_comparison(reports: list[RunReport]) -> RenderedReport:
    """Several runs side by side: val loss against tokens overlaid (one line per run and model),
    and their settings and scores in one table, a column per run and model."""
    images: dict[str, bytes] = {}
    columns: list[tuple[RunReport, ModelSection | None]] = []
    for report in reports:
        columns += [(report, m) for m in report.models] or [(report, None)]
    several_models = any(len(r.models) > 1 for r in reports)

    def column_name(report: RunReport, model: ModelSection | None) -> str:
        if model is None:
            return f"{report.run_id} (no model)"
        return f"{report.run_id} {model.label}" if several_models else report.run_id

    header = ["", *(column_name(r, m) for r, m in columns)]
    rows = [[name, *(get(r, m) for r, m in columns)] for name, get in COMPARED_RUN_FIELDS]
    rows += _score_rows([m for _, m in columns])
    table = _table(header, rows)
    differences = _config_differences(reports)
    if differences:
        table += "<h3>settings that differ</h3>" + _table(
            ["", *(r.run_id for r in reports)], differences
        )

    series = [(r.run_id, m) for r, m in columns if m is not None and "val/loss" in m.curves]
    if series:
        images["val-loss.png"] = _loss_plot(
            series, ("val/loss",), f"val loss {DURING_TRAINING} against tokens"
        )
        curves = _image("val-loss.png", f"val loss {DURING_TRAINING} against tokens, per run")
    else:
        curves = _missing("None of these runs recorded a val loss curve.")
    train_series = [(r.run_id, m) for r, m in columns if m is not None and "train/loss" in m.curves]
    if train_series:
        images["train-loss.png"] = _loss_plot(
            train_series, ("train/loss",), "train loss against tokens"
        )
        curves += _image("train-loss.png", "train loss against tokens, per run")
    with_bpb = [(column_name(r, m), m.scores) for r, m in columns if m and _has_bpb(m.scores)]
    if with_bpb:
        images["scores.png"] = _scores_plot(with_bpb)
        scores = _image("scores.png", "bits per byte per run")
    else:
        scores = _missing("None of these runs recorded bits per byte (no evaluate stage).")
    notes = "".join(
        _missing(f"{r.run_id}: {note}") for r in reports for note in r.missing
    ) + "".join(_missing(f"{r.run_id} {m.label}: {n}") for r, m in columns if m for n in m.missing)
    commands = "".join(
        f"<p><code>{_e(r.run_id)}</code></p><pre>{_e(r.command or '—')}</pre>" for r in reports
    )
    sections = [
        ("table", "Side by side", table + notes),
        ("curves", "Loss curves", curves),
        ("scores", "Bits per byte", scores),
        ("reproduce", "Reproduce", commands),
    ]
    title = "lmforge comparison: " + ", ".join(r.run_id for r in reports)
    return RenderedReport(_page(title, sections), images)
