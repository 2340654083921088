"""`lmforge runs`: the run history in the DuckDB registry — list with filters, show one run,
compare several side by side, export every table to Parquet.

Everything here only reads the registry (read-only connections that retry while a pipeline
writes), so it works while runs are in progress.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from flows.output_format import OutputFormat, print_data_as_utf8
from lm.artifact_keys import short_key
from lm.clock import shown_time, utc_now
from lm.flat_config import flatten_config
from storage.pending_outcome import pending_status
from storage.processes import run_looks_abandoned

runs_app = typer.Typer(help="Run history from the DuckDB registry.")

AGE = re.compile(r"(\d+)([mhdw])")
AGE_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
KNOWN_STATUSES = ("running", "completed", "failed", "cancelled", "crashed")
PROCESS_GONE = "running (process gone: killed?)"
WAITING = "waiting to be recorded by the next run"
# Per-model numbers worth comparing across runs, in this order. A registry a run of an older
# lmforge wrote may lack a later column (`tokens_trained`, migration 4): shown as absent.
MODEL_METRICS = ("val_bpb", "test_bpb", "val_loss", "baseline_val_bpb", "parameters",
                 "tokens_seen", "tokens_trained", "steps", "train_seconds")  # fmt: skip
# Run-level metrics (latest value) that say what data a run saw, and what a retrain decided.
DATA_METRICS = (
    "corpus/kept", "corpus/kept_bytes", "tokens/train", "tokenizer/bytes_per_token",
    "retrain/promoted", "retrain/candidate_val_bpb", "retrain/champion_val_bpb",
)  # fmt: skip
ABSENT = "—"
EARLIEST = datetime.min.replace(tzinfo=UTC)  # an age past the calendar: every run is newer
LATEST = datetime.max.replace(tzinfo=UTC)
MAX_COUNT = 2**62  # a count option's bound: larger ones overflowed DuckDB's 64-bit integers


def capped_count(value: int | None) -> int | None:
    """A count option's value, at most `MAX_COUNT`, which no table reaches: a larger count
    means every row as that one does. Capped rather than bounded, whose help showed the bound
    as nineteen digits and whose error refused a count that asked for every row."""
    return None if value is None else min(value, MAX_COUNT)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: an age (`30m`, `12h`, `7d`, `2w`) or an ISO date or date-time, in local time
    unless it names its offset (`2026-11-20T08:00+00:00`); an aware datetime."""
    now = now or utc_now()
    age = AGE.fullmatch(text.strip())
    if age:
        try:
            return now - timedelta(**{AGE_UNITS[age.group(2)]: int(age.group(1))})
        except OverflowError:  # older than the calendar: every run is newer
            return EARLIEST
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since '{text}': expected an age like 30m, 12h, 7d or 2w, or a date such as "
            "2026-11-20 or 2026-11-20T08:00"
        ) from None
    if value.tzinfo is not None:
        return value
    try:
        return value.astimezone()  # local time
    except (OverflowError, ValueError):  # at the calendar's ends: no UTC instant
        return EARLIEST if value.year < 5000 else LATEST


def config_differences(configs: list[dict]) -> list[tuple[str, list[str]]]:
    """Keys whose value is not the same in every config (a key missing from one counts), with
    each config's value as text."""
    flat = [flatten_config(config) for config in configs]
    keys = sorted(set().union(*flat))
    rows = []
    for key in keys:
        values = [_as_text(f[key]) if key in f else ABSENT for f in flat]
        if len(set(values)) > 1:
            rows.append((key, values))
    return rows


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _number(value: Any) -> str:
    if value is None:
        return ABSENT
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # counts stored as DOUBLE in `metrics`
    if isinstance(value, float):
        if 0 < abs(value) < 1e-3:  # a learning rate of 3e-05 is not 0.0000
            return f"{value:.4g}"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, datetime):
        return shown_time(value)
    return str(value)


def _fail(message: str) -> typer.Exit:
    from flows.cli import _fail as fail

    return fail(message)


@runs_app.callback(invoke_without_command=True)
def runs_list(
    context: typer.Context,
    status: Annotated[
        str | None, typer.Option(help=f"only runs with this status ({', '.join(KNOWN_STATUSES)})")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="only runs started since a date (2026-11-20), a local date-time "
            "(2026-11-20T08:00; +00:00 names another offset) or an age (30m, 12h, 7d, 2w)"
        ),
    ] = None,
    preset: Annotated[str | None, typer.Option(help="only runs of this config name")] = None,
    model_kind: Annotated[
        str | None, typer.Option(help="only runs that trained a model of this kind (gpt, mlp, …)")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, callback=capped_count, help="how many of the newest runs")
    ] = 20,
    output: Annotated[
        OutputFormat,
        typer.Option("--format", help="a table, or every value whole: CSV, or JSON Lines"),
    ] = OutputFormat.table,
) -> None:
    """List runs, newest first: status, config, corpus, models and their best val bits/byte
    (of the --model-kind's models, with that option). CSV and JSON Lines, for a program, give
    every column whole: the full corpus digest, the start time with its offset from UTC, the
    status as recorded with a `status_note` beside it."""
    if context.invoked_subcommand is not None:
        return
    from flows.cli import _print_result, _registry, _table, console
    from storage.registry import RegistryError

    conditions, parameters = [], []
    if status is not None:
        conditions.append("r.status = ?")
        parameters.append(status)
    if since is not None:
        try:
            parameters.append(parse_since(since))
        except ValueError as error:
            raise _fail(str(error)) from None
        conditions.append("r.started_at >= ?")
    if preset is not None:
        conditions.append("r.preset = ?")
        parameters.append(preset)
    if model_kind is not None:
        from lm.models.config import MODEL_KINDS

        if model_kind not in MODEL_KINDS:  # it listed no run, as if none had trained one
            raise _fail(f"--model-kind {model_kind!r}: not a model kind ({', '.join(MODEL_KINDS)})")
        conditions.append(
            "EXISTS (SELECT 1 FROM models m WHERE m.run_id = r.run_id AND m.kind = ?)"
        )
        parameters.append(model_kind)
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    registry = _registry()
    try:
        if status is not None:
            _check_status(registry, status)
        columns, rows = registry.query(
            "SELECT r.run_id, r.status, r.preset, r.deployment, "
            "r.started_at AS started, r.seconds, "
            "r.corpus_digest AS corpus, d.kept AS kept_documents, "
            "(SELECT string_agg(m.label, ' ' ORDER BY m.created_at) FROM models m "
            " WHERE m.run_id = r.run_id) AS models, "
            # With --model-kind, that kind's best: the ladder's gpt showed bigram-count's.
            "(SELECT min(m.val_bpb) FROM models m WHERE m.run_id = r.run_id"
            f"{' AND m.kind = ?' if model_kind else ''}) AS val_bpb, "
            "r.hostname, r.pid "
            f"FROM runs r LEFT JOIN datasets d ON d.digest = r.corpus_digest {where}"
            "ORDER BY r.started_at DESC LIMIT ?",
            [*([model_kind] if model_kind else []), *parameters, limit],
        )
    except RegistryError as error:
        raise _fail(str(error)) from None
    if output is not OutputFormat.table:
        print_data_as_utf8(output)
        _print_result(output, *_run_data(columns, rows))
        return
    # Times in Python's local zone, as `runs show` gives them (DuckDB's may differ: a POSIX
    # TZ such as UTC-3 is UTC to it).
    shown = [(run_id, shown_status(run_id, status, host, pid), preset, deployment,
              shown_time(started), _rounded(seconds, 1), corpus[:12] if corpus else corpus,
              kept, models, _rounded(val_bpb, 4))
             for run_id, status, preset, deployment, started, seconds, corpus, kept, models,
             val_bpb, host, pid in rows]  # fmt: skip
    columns, shown = _fitting(columns[:-2], shown, console.width)
    console.print(_table(columns, shown, whole=("run_id",)))


def _run_data(columns: list[str], rows: list[tuple]) -> tuple[list[str], list[tuple]]:
    """The run list for a program: the registry's values whole, `status` as recorded (what a
    program tests for), and beside it `status_note`, what the registry cannot say yet (a run
    whose process is gone, or whose outcome waits in its folder), as the table shows it."""
    at = columns.index("status") + 1
    data = []
    for row in rows:
        run_id, status, *_, host, pid = row
        shown = shown_status(run_id, status, host, pid)
        data.append((*row[:at], None if shown == status else shown, *row[at:-2]))
    return [*columns[:at], "status_note", *columns[at:-2]], data


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# The columns `runs` leaves out first, in this order, where a terminal is too narrow for all:
# squeezed in, every one was folded a few characters a line ("fai / led", a time over 8 lines).
DROPPED_FIRST = ("deployment", "kept_documents", "corpus", "seconds", "preset", "models")


def _fitting(columns: list[str], rows: list[tuple], width: int) -> tuple[list[str], list[tuple]]:
    """`columns` and `rows` without the columns of DROPPED_FIRST that a table `width`
    characters wide has no room for, each value kept on one line where that can be."""
    from rich.cells import cell_len

    from flows.cli import _cell

    def room(names: list[str]) -> int:  # the widest value, and 3 per column for the frame
        return 1 + sum(3 + max(cell_len(name), *(cell_len(_cell(r[columns.index(name)]))
                                                    for r in rows)) for name in names)  # fmt: skip

    kept = list(columns)
    for name in DROPPED_FIRST:
        if not rows or room(kept) <= width:
            break
        kept.remove(name)
    indexes = [columns.index(name) for name in kept]
    return kept, [tuple(row[i] for i in indexes) for row in rows]


def shown_status(run_id: str, status: str, hostname: str | None, pid: int | None) -> str:
    """The recorded status, or, for a run recorded `running`, what the registry does not know
    yet (reads never write it): that the run ended and its outcome waits in its folder for the
    next run to record (`storage.pending_outcome`), or that its process here is gone, killed,
    and the next run records it `crashed`."""
    if status == "running":
        from storage.workspace import Workspace

        waiting = pending_status(Workspace.from_env().runs / run_id)
        if waiting is not None:
            return f"{waiting} ({WAITING})"
    return PROCESS_GONE if run_looks_abandoned(status, hostname, pid) else status


def _check_status(registry, status: str) -> None:
    _, rows = registry.query("SELECT DISTINCT status FROM runs")
    statuses = sorted(set(KNOWN_STATUSES) | {row[0] for row in rows})
    if status not in statuses:
        raise _fail(f"--status '{status}': no such status (one of: {', '.join(statuses)})")


@runs_app.command("show")
def runs_show(run_id: Annotated[str, typer.Argument(help="a run id or a unique prefix")]) -> None:
    """One run in full: settings, stages, models, metrics, and the command that reproduces it."""
    from flows.cli import _registry, _table, console
    from lm.promotion_text import promotion_text
    from storage.registry import RegistryError

    registry = _registry()
    try:
        found = registry.find_run(run_id)
        # Each stage finished when the run (or a crashed run's journal) noted it finished.
        stage_columns, stages = registry.query(
            "SELECT stage, CASE WHEN cached THEN 'cached' ELSE 'ran' END AS state, "
            "round(seconds, 2) AS seconds, finished_at AS finished, "
            "output_digest AS digest, "
            "output_path FROM stages WHERE run_id = ? ORDER BY finished_at, rowid",
            [found["run_id"]],
        )
        stages = [(*row[:3], row[3] and shown_time(row[3]), short_key(row[4] or ""), *row[5:])
                  for row in stages]  # fmt: skip
        model_columns, models = registry.query(
            "SELECT label, kind, parameters, steps, round(val_loss, 4) AS val_loss, "
            "round(val_bpb, 4) AS val_bpb, round(test_bpb, 4) AS test_bpb, alias, path "
            "FROM models WHERE run_id = ? ORDER BY created_at, rowid",
            [found["run_id"]],
        )
        metric_columns, metrics = registry.query(
            "SELECT model, key, step, value FROM latest_metrics WHERE run_id = ? "
            "ORDER BY model NULLS FIRST, key",
            [found["run_id"]],
        )
        # `*`: a registry no run has migrated yet (a command that reads does not) has no
        # `against` (migration 6), and naming it failed `runs show` for every run.
        promotion_columns, promotions = registry.query(
            "SELECT * FROM promotions WHERE run_id = ? ORDER BY decided_at", [found["run_id"]]
        )
        decisions = [dict(zip(promotion_columns, row, strict=True)) for row in promotions]
    except RegistryError as error:
        raise _fail(str(error)) from None
    found["status"] = shown_status(
        found["run_id"], found["status"], found["hostname"], found["pid"]
    )
    keys = ("run_id", "status", "preset", "started_at", "ended_at", "seconds", "flow_run_id")
    for key in keys:
        value = found[key]
        shown = shown_time(value) if isinstance(value, datetime) else str(value)
        if value is None:  # a run not ended yet (or killed, until the next run records it)
            shown = "—"  # was Python's "None"
        if key == "seconds" and isinstance(value, float):
            shown = f"{value:.2f}"  # as the stage table gives them, not 110.219991
        console.print(f"[bold]{key}[/]: {escape(shown)}", highlight=False, soft_wrap=True)
    optional = ("deployment", "corpus_digest", "config_digest", "code_digest", "git_sha",
                "device", "error")  # fmt: skip
    for key in optional:
        if found[key]:
            # One line however long, as `reproduce`: a failed run's `error` was cut in two at
            # the 200 columns of a pipe (`runs show ID | grep ^error:` got half of it).
            console.print(f"[bold]{key}[/]: {escape(str(found[key]))}", highlight=False,
                          soft_wrap=True)  # fmt: skip
    for decision in decisions:  # a retrain's: the reason was on its last line alone
        console.print(f"[bold]retrain[/]: {escape(promotion_text(decision))}", highlight=False,
                      soft_wrap=True)  # fmt: skip
    if stages:
        crashed = found["status"] == "crashed"
        title = "stages it finished before it crashed" if crashed else "stages"
        console.print(_table(stage_columns, stages, title))
    else:
        running = found["status"].startswith("running") or WAITING in found["status"]
        when = " yet: a run's stages are recorded when it ends" if running else ""
        console.print(f"[bold]stages[/]: none recorded{when}", highlight=False)
    if models:
        console.print(_table(model_columns, models, "models"))
    if metrics:
        # Values as `runs compare` shows them (raw, a count read 400.0, a rate 0.000753295668…).
        shown = [(*row[:-1], _number(row[-1])) for row in metrics]
        console.print(_table(metric_columns, shown, "metrics"))
    # One line however long: wrapped at the console's width (200 columns piped), the command
    # pasted into a shell ran its first line alone.
    console.print(
        "[bold]reproduce[/]:",
        escape(found["command"] or "(not recorded)"),
        highlight=False,
        soft_wrap=True,
    )
    drift = config_drift(found["command"], found["config"])
    if drift:
        console.print(f"[bold yellow]note[/]: {escape(drift)}", highlight=False)


def config_drift(command: str | None, recorded: str | dict | None) -> str | None:
    """Whether the reproduce `command` would now run other settings than the run recorded (its
    config file edited since, or gone), in words; None when it runs the same, or cannot tell.
    Only settings the run recorded count: one added by a later version is no edit."""
    import shlex

    from lm.config import ConfigError, load_config
    from lm.text.url_credentials import without_url_credentials

    if not command or not recorded:
        return None
    words = shlex.split(command)
    if words[:1] == ["cd"] and words[2:3] == ["&&"]:  # the run read paths relative to a folder
        words = words[3:]
    if len(words) < 3 or words[1] not in ("run", "retrain", "ablation"):
        return None
    overrides = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--set"]
    try:
        current = load_config(words[2], overrides).model_dump(mode="json")
    except ConfigError as error:
        return f"the reproduce command no longer loads its config ({error})"
    before = json.loads(recorded) if isinstance(recorded, str) else recorded
    # The registry holds a source URL's token as `***`: compared so, the file that still
    # holds the token is no edit (every such run was said to have had its config edited).
    current, before = without_url_credentials(current), without_url_credentials(before)
    changed = [key for key, (was, now) in config_differences([before, current]) if was != ABSENT]
    if not changed:
        return None
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    # Which, the file or the defaults, cannot be told from the resolved settings alone: a
    # default that moved (train.compile: false, then "auto") was blamed on an unedited file.
    return (f"{words[2]} now loads other settings than this run recorded ({shown}): the file "
            "was edited, or lmforge's defaults changed; the reproduce command would run "
            "these")  # fmt: skip


@runs_app.command("compare")
def runs_compare(
    run_ids: Annotated[list[str], typer.Argument(help="two or more run ids (or unique prefixes)")],
) -> None:
    """Runs side by side: how their configs differ, their models' metrics, and stage times."""
    from flows.cli import _registry, _table, console
    from storage.registry import RegistryError

    if len(run_ids) < 2:
        raise _fail("give two or more run ids to compare (see `lmforge runs`)")
    registry = _registry()
    try:
        runs = [registry.find_run(prefix) for prefix in run_ids]
        ids = [run["run_id"] for run in runs]
        if len(set(ids)) < len(ids):
            raise _fail(f"the same run is named twice: {' '.join(run_ids)}")
        model_columns, models = registry.query(
            "SELECT * FROM models WHERE list_contains(?, run_id) ORDER BY created_at, rowid",
            [ids],
        )
        _, data_rows = registry.query(
            "SELECT run_id, key, value FROM latest_metrics "
            "WHERE list_contains(?, run_id) AND list_contains(?, key) AND model IS NULL",
            [ids, list(DATA_METRICS)],
        )
        _, stage_rows = registry.query(
            "SELECT run_id, stage, seconds, cached FROM stages WHERE list_contains(?, run_id) "
            "ORDER BY finished_at, rowid",
            [ids],
        )
    except RegistryError as error:
        raise _fail(str(error)) from None

    console.print(_table(["", *ids], _summary_rows(runs), "runs"))
    _print_config_differences(runs)
    model_rows = [_model_metrics(dict(zip(model_columns, row, strict=True))) for row in models]
    metric_rows = _metric_rows(ids, model_rows, data_rows)
    if metric_rows:
        console.print(_table(["metric", *ids], metric_rows, "metrics"))
    stage_rows = _stage_rows(ids, stage_rows)
    if stage_rows:
        console.print(_table(["stage seconds", *ids], stage_rows, "stages"))


def _print_config_differences(runs: list[dict]) -> None:
    """The keys whose values differ, among the runs that recorded their settings: a run whose
    config was refused before it began has none, and beside it every key read as changed."""
    from flows.cli import _table, console

    unread = [run["run_id"] for run in runs if run["config"] is None]
    if unread:
        console.print(f"config: none recorded for {', '.join(unread)} (refused before the run "
                      "began: `lmforge runs show` says why)", highlight=False)  # fmt: skip
    read = [run for run in runs if run["config"] is not None]
    if len(read) < 2:
        return
    differences = config_differences([json.loads(run["config"]) for run in read])
    if differences:
        rows = [(key, *values) for key, values in differences]
        console.print(_table(["config key", *(r["run_id"] for r in read)], rows,
                             "config differences"))  # fmt: skip
    elif len({run["code_digest"] for run in read}) > 1:  # git_sha is empty outside a checkout
        console.print("config: identical, but lmforge's code differs (code_digest)")
    else:
        console.print("config: identical")


def _summary_rows(runs: list[dict]) -> list[tuple]:
    keys = ("status", "preset", "deployment", "started_at", "seconds", "corpus_digest",
            "code_digest", "git_sha")  # fmt: skip
    shortened = ("corpus_digest", "code_digest", "git_sha")
    return [
        (key, *(_number(run[key])[: 12 if key in shortened else None] for run in runs))
        for key in keys
    ]


def _metric_rows(ids: list[str], model_rows: list[tuple], data_rows: list[tuple]) -> list[tuple]:
    """One row per model metric and model label (`val_bpb (gpt)`), then the data metrics."""
    by_metric: dict[tuple[str | None, str], dict[str, Any]] = {}
    for run_id, label, *values in model_rows:
        for name, value in zip(MODEL_METRICS, values, strict=True):
            by_metric.setdefault((label, name), {})[run_id] = value
    for run_id, key, value in data_rows:
        by_metric.setdefault((None, key), {})[run_id] = value
    order = {name: index for index, name in enumerate((*MODEL_METRICS, *DATA_METRICS))}
    ranked = sorted(by_metric, key=lambda k: (k[0] is None, k[0] or "", order[k[1]]))
    return [
        (
            f"{name} ({label})" if label else name,
            *(_number(by_metric[(label, name)].get(i)) for i in ids),
        )
        for label, name in ranked
    ]


def _model_metrics(model: dict[str, Any]) -> tuple:
    """(run id, label, each of MODEL_METRICS) of a `models` row; None for a column its
    registry does not have yet."""
    return (model["run_id"], model["label"], *(model.get(name) for name in MODEL_METRICS))


def _stage_rows(ids: list[str], stage_rows: list[tuple]) -> list[tuple]:
    """One row per stage, in order; a stage a run ran more than once (a retrain encodes the
    corpus and the new documents apart) gets a row per time, `encode #2` on: keyed by name
    alone, the last time hid the others."""
    by_stage: dict[str, dict[str, str]] = {}
    times_seen: dict[tuple[str, str], int] = {}
    for run_id, stage, seconds, cached in stage_rows:
        nth = times_seen[run_id, stage] = times_seen.get((run_id, stage), 0) + 1
        label = stage if nth == 1 else f"{stage} #{nth}"
        by_stage.setdefault(label, {})[run_id] = f"{seconds:.2f}" + (" cached" if cached else "")
    return [(stage, *(times.get(i, ABSENT) for i in ids)) for stage, times in by_stage.items()]


@runs_app.command("export")
def runs_export(
    folder: Annotated[
        str, typer.Option("--parquet", help="folder to write `<table>.parquet` files into")
    ],
) -> None:
    """Every registry table as `OUT_DIR/<table>.parquet`, for pandas, Spark or another DuckDB."""
    from flows.cli import _registry, _table, console
    from storage.registry import RegistryError

    if not folder.strip():  # as a path, "" is the folder one is in: its files said nothing
        raise _fail("--parquet '': name a folder to write the tables into")
    parquet = Path(folder).expanduser()
    if parquet.exists() and not parquet.is_dir():
        raise _fail(f"{parquet}: exists and is not a folder")
    try:
        written = _registry().export_parquet(parquet)
    except (RegistryError, OSError) as error:
        raise _fail(str(error)) from None
    rows = [(table, count, str(path)) for table, (path, count) in written.items()]
    console.print(_table(["table", "rows", "file"], rows, f"exported to {parquet}"))
