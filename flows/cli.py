"""The `lmforge` command line.

The workspace is activated before anything imports Prefect (Prefect reads `PREFECT_HOME` once,
at import), which is why flow modules are imported inside the commands that need them.
"""

from __future__ import annotations

import codecs
import gc
import json
import os
import re
import sys
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from flows.generate_cli import chat_command, generate_command
from flows.output_format import OutputFormat, print_data_as_utf8
from flows.prune_cli import decimal_size, prune_command
from flows.runs_cli import capped_count, runs_app
from flows.serve import serve_command
from flows.train_join_cli import train_join_command
from lm.memory_fit import bytes_text
from storage.pending_outcome import OUTCOME_FILE
from storage.workspace import Workspace, WorkspaceError, activate_workspace

# Markdown, not Rich markup: help text reflows, and a `[section]` in a docstring stays visible.
app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    help=__doc__.splitlines()[0],
)
corpus_app = typer.Typer(help="The corpus: what ingest and cleaning kept and removed.")
server_app = typer.Typer(help="The workspace's background Prefect server.")
tokenizers_app = typer.Typer(help="Tokenizers trained on the corpus.")
# `--help` lists the commands in these panels, in this order: a newcomer's `run` first.
TRAIN, RESULTS, OPERATE = "Train", "Look at the results", "Operate a workspace"
# Piped output (CI logs, `| less`) gets wide tables instead of 80 columns of wrapped ids.
console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
SQL_MAX_ROWS = 1000  # `lmforge sql` shows this many rows unless told otherwise


@app.callback()
def _check_workspace() -> None:
    # A workspace that is a file would read as "no registry yet" to every command.
    try:
        root = Workspace.from_env().root
    except WorkspaceError as error:
        raise _fail(str(error)) from None
    if root.exists() and not root.is_dir():
        raise _fail(f"LMFORGE_HOME={root}: is a file, not a folder; point LMFORGE_HOME at a "
                    "folder (it is made if it does not exist)")  # fmt: skip


def _fail(message: str) -> typer.Exit:
    # One line however long (a path or a list of unknown keys): piped stderr is 200 columns.
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def _registry():
    """The workspace's registry; a bad `LMFORGE_REGISTRY_WAIT_S` is one error line wherever
    the command asks for it (inside its own error handling or not: `runs` gave a traceback)."""
    from storage.registry import RegistryError, RunRegistry

    try:
        return RunRegistry(activate_workspace().registry_path)
    except RegistryError as error:
        raise _fail(str(error)) from None


def _table(
    columns: list[str],
    rows: list[tuple],
    title: str | None = None,
    widths: list[int] | None = None,
    header: bool = True,
    whole: tuple[str, ...] = (),
) -> Table:
    """A table of values shown as they are: a `[final]` in a path or a query's result is text,
    not Rich markup to swallow. `widths` fixes the columns' widths, and leaves out the frame,
    for one block of a long table (`_print_table`). The `whole` columns are never folded: the
    others narrow first (in 80 columns, `runs` cut each run id over five lines, to be copied
    a piece at a time)."""
    from rich.cells import cell_len

    table = Table(title=title and escape(title), title_justify="left", show_header=header,
                  show_edge=widths is None)  # fmt: skip
    for number, column in enumerate(columns):  # wrapped, not cut: a run id must stay whole
        width = widths and widths[number]
        if column in whole:
            widest = max((cell_len(_cell(row[number])) for row in rows), default=0)
            table.add_column(escape(column), no_wrap=True, min_width=widest, width=width)
            continue
        table.add_column(escape(column), overflow="fold", width=width)
    for row in rows:
        table.add_row(*(Text(_cell(value)) for value in row))
    return table


def _cell(value: object) -> str:
    return "" if value is None else str(value)


TABLE_BLOCK_ROWS = 500  # a longer table is drawn this many rows at a time


def _print_table(columns: list[str], rows: list[tuple], title: str | None = None) -> None:
    """Print a table; a long one a block of rows at a time, every block with the whole table's
    column widths so that they line up. Rich lays a table out whole before it prints a line:
    `corpus stats --all` over 60,000 documents was minutes of nothing, then everything."""
    if len(rows) <= TABLE_BLOCK_ROWS:
        console.print(_table(columns, rows, title))
        return
    widths = _fitted_widths(columns, rows, console.width)
    for start in range(0, len(rows), TABLE_BLOCK_ROWS):
        block = rows[start : start + TABLE_BLOCK_ROWS]
        console.print(_table(columns, block, title if start == 0 else None, widths, start == 0))


def _fitted_widths(columns: list[str], rows: list[tuple], room: int) -> list[int]:
    """Each column as wide as its widest value, the widest ones narrowed alike (their values
    then wrap) until the row fits `room` characters, as Rich would narrow them."""
    from rich.cells import cell_len

    wanted = [max(1, cell_len(column), *(cell_len(_cell(row[n])) for row in rows))
              for n, column in enumerate(columns)]  # fmt: skip
    room -= 3 * len(columns) - 1  # a space either side of each value, a line between columns
    low, high = 1, max(wanted)  # the widest cap that fits (1 where none does), by bisection:
    while low < high:  # a multi-megabyte value took seconds one character at a time
        cap = (low + high + 1) // 2
        low, high = (
            (cap, high) if sum(min(width, cap) for width in wanted) <= room else (low, cap - 1)
        )
    return [min(width, low) for width in wanted]


def _run_flow(name: str, config: str | None, overrides: list[str] | None) -> dict:
    """Validate the config, make sure the workspace's Prefect server is up, and run one of the
    flows (`lm-pipeline`, `retrain`, `ablation`), turning the errors a user can fix into one
    clear line."""
    workspace, *_ = _preflight(name, config, overrides)
    from flows.prefect_server import ServerError, ensure_server

    try:
        ensure_server(workspace)
    except ServerError as error:
        raise _fail(str(error)) from None
    _exit_cleanly_on_sigterm()
    from flows.user_errors import hide_prefect_tracebacks_of, user_error_types

    known = user_error_types()
    quiet = known
    if name == "retrain":
        from flows.retrain import retrain as chosen
    elif name == "ablation":
        from flows.ablation import AblationError
        from flows.ablation import ablation as chosen

        quiet = (*known, AblationError)  # the arms' own errors are logged as they fail
    else:
        from flows.pipeline import lm_pipeline as chosen
    # An error found mid-flow (a vocabulary too large for the corpus) is the `error:` line
    # below, not also a traceback in Prefect's log; a bug keeps its traceback.
    hide_prefect_tracebacks_of(quiet)
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    from lm.clock import utc_now

    began = utc_now()
    try:
        return chosen(config=config, overrides=overrides or [])
    except known as error:
        raise _fail(str(error)) from None
    except httpx.TransportError as error:  # its Prefect server killed (or out of memory)
        raise _server_went_away(workspace, error, began) from None
    except PrefectHTTPStatusError as error:
        if error.response.status_code not in (401, 403):
            raise
        raise _fail(_refused_by_the_server(error)) from None


def _refused_by_the_server(error) -> str:
    """A Prefect server with basic authentication (`PREFECT_SERVER_API_AUTH_STRING`, README
    "Run as a service") that this process gave no credentials or the wrong ones: a 230-line
    traceback before the run began."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    from lm.text.url_credentials import shown_url

    response = error.response
    given = "wrong credentials" if PREFECT_API_AUTH_STRING.value() else "no credentials"
    # The address asked for, which may sit under a path (a proxy's `/prefect/api`), without
    # a password it may hold.
    asked = PREFECT_API_URL.value() or response.url.copy_with(path="/api", query=None)
    api = shown_url(str(asked))
    return (
        f"the Prefect server at {api} refused this command "
        f"({response.status_code} {response.reason_phrase}: {given}): set "
        "PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING (user:password)"
    )


def _server_went_away(workspace: Workspace, error: Exception, began: datetime) -> typer.Exit:
    """A run whose Prefect server stopped answering trains and records on, and Prefect's
    engine then failed to report the flow run's end: exit 1 after minutes of its events
    worker's retries and 400 lines of traceback, for a run recorded completed. Said in one line
    with the run's recorded status (exit 0 when completed), and the exit is not kept waiting.
    Only a run this command started (`began`, here) is its: a pid is used again (a container's
    lmforge is pid 1 every time), and a run of last week was said to be this one, completed."""
    from storage.registry import RegistryError, RunRegistry

    gone = f"its Prefect server went away ({type(error).__name__}: {error})"
    try:
        _, rows = RunRegistry(workspace.registry_path).query(
            "SELECT run_id, status FROM runs WHERE pid = ? AND started_at >= ? "
            "ORDER BY started_at DESC LIMIT 1",
            [os.getpid(), began],
        )
    except RegistryError:
        rows = []
    run_id, status = rows[0] if rows else (None, None)
    _exit_anyway_after(
        EXIT_GRACE_S, 0 if status == "completed" else 1, "its Prefect server went away"
    )
    if status == "completed":
        errors.print(f"[bold yellow]warning:[/] run {run_id} is recorded completed (`lmforge "
                     f"runs show {run_id}`), but {escape(gone)}: Prefect's record of the flow "
                     "run is out of date", highlight=False, soft_wrap=True)  # fmt: skip
        return typer.Exit(code=0)
    if run_id is not None:
        return _fail(
            f"run {run_id} is recorded {status} (`lmforge runs show {run_id}`), and {gone}"
        )
    return _fail(f"the run stopped: {gone} (`lmforge server start` starts the workspace's again)")


def _preflight(name: str, config: str | None, overrides: list[str] | None):
    """What a flow would refuse, said before any server starts, as one line naming the file:
    the config's keys and values, then its `train.init_from`, devices, memory and sources.
    Gives the workspace, the settings, the models the flow trains, the config's path and the
    inputs its sources name."""
    from lm.config import ConfigError, load_config, resolve_preset
    from storage.registry import RegistryError, registry_wait_s

    workspace = activate_workspace()
    try:
        # Fail fast on a bad config, before any server starts: the file, and what the flow
        # itself would refuse first.
        settings = load_config(config, overrides)
        if name == "ablation":
            try:
                settings.ablation_runs()
            except ValueError as error:
                raise ConfigError(f"{resolve_preset(config)}: {error}") from None
        if name == "retrain":
            from lm.config import retrain_problem

            problem = retrain_problem(settings)
            if problem:
                raise ConfigError(f"{resolve_preset(config)}: {problem}")
        workspace.ensure()
        registry_wait_s()  # a bad $LMFORGE_REGISTRY_WAIT_S failed the flow, after its start-up
    except (ConfigError, WorkspaceError, RegistryError) as error:
        raise _fail(str(error)) from None
    arms = [arm for *_, arm in settings.ablation_runs()] if name == "ablation" else []
    runs, config_path = arms or settings.model_runs(), resolve_preset(config)
    _check_init_from(runs, workspace)
    _check_devices(settings, runs, config_path)
    inputs = _check_sources(settings, config_path)  # before torch is imported (memory check)
    _check_memory(settings, runs, config_path, given_sets=bool(overrides))
    return workspace, settings, runs, config_path, inputs


def _exit_cleanly_on_sigterm() -> None:
    """End on SIGTERM as on an error, by `SystemExit`, not by the signal's default action:
    `atexit` handlers then run, among them the one stopping Prefect's per-process temporary
    server (`LMFORGE_PREFECT_SERVER=ephemeral`), which was left running on its own otherwise.
    Prefect's flow engine takes SIGTERM while a flow runs, records the crash, puts this handler
    back and sends the signal again."""
    import signal

    def exit_with_status(number: int, _frame) -> None:
        _exit_anyway_after(EXIT_GRACE_S, 128 + number, "the termination signal")
        raise SystemExit(128 + number)

    signal.signal(signal.SIGTERM, exit_with_status)
    # A closed terminal or dropped ssh session: the same orderly end (its default skipped it),
    # unless the run was told to outlive it (`nohup` sets SIGHUP ignored: kept so).
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, exit_with_status)


# How long the exit after SIGTERM (or with the Prefect server gone) may take before it is
# forced. `timeout` and a CI runner signal the whole process group, so the temporary Prefect
# server may be gone first: Prefect's events worker then retried it for minutes, one event per
# 7 s, with the run already recorded.
EXIT_GRACE_S = 20.0


def _exit_anyway_after(seconds: float, status: int, after: str) -> None:
    """End the process with `status` in `seconds` after `after` if its orderly exit has not
    ended it."""
    import threading

    def force() -> None:
        # A raw write: the main thread may hold the streams' locks, blocked on a full pipe.
        os.write(2, f"lmforge: still exiting {seconds:.0f} s after {after} (Prefect's "
                    "events worker retrying its server?): exiting now\n".encode())  # fmt: skip
        os._exit(status)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def _check_sources(settings, config_path: Path) -> list:
    """A source that names no file (a typo, a glob that matches nothing, an empty folder) is
    said before the flow starts, naming the config; ingest would find it too, after Prefect had
    started and logged the error's traceback. URLs are left to ingest: nothing is fetched here.
    Gives the inputs the sources name."""
    from lm.text.sources import InputError, resolve_sources

    try:
        return resolve_sources(settings.ingest.sources)
    except InputError as error:
        beside = _beside(settings, config_path, str(error))
        raise _fail(f"{config_path}: ingest.sources: {error}{beside}") from None


def _beside(settings, config_path: Path, said: str) -> str:
    """Where a relative source that names nothing from the current folder names a file or
    folder beside the config: the path to write (a config moved into a project folder, with
    its sources beside it, and run from elsewhere). Only the source that `said` names: the
    first missing one is said, and another beside the config is not its path."""
    for source in settings.ingest.sources:
        if not said.startswith(f"{source.path}: "):
            continue
        written = os.path.expanduser(source.path)
        if os.path.isabs(written) or os.path.exists(written) or "://" in written:
            continue
        there = config_path.parent / written
        if there.exists():
            return f"; beside the config is {there.resolve()}: write that path"
    return ""


def _continued_vocabulary(runs: list) -> tuple[str, int] | None:
    """(where it is, its size) of the vocabulary of the tokenizer the runs' `train.init_from`
    checkpoint was made with, which a continued run adopts; None where none continues one."""
    if not any(run.train.init_from for run in runs):
        return None
    workspace = activate_workspace()  # before Prefect is imported (by flows.pipeline)
    from flows.pipeline import continued_tokenizer
    from lm.tokenizer import load_tokenizer
    from lm.train_config import TrainingError

    try:
        found = continued_tokenizer(workspace, _registry(), runs)
    except TrainingError as error:
        raise _fail(str(error)) from None
    if found is None:
        return None
    folder, _ = found
    return f"the tokenizer of train.init_from's checkpoint ({folder})", load_tokenizer(
        folder
    ).vocab_size


def _check_init_from(runs: list, workspace) -> None:
    """A `train.init_from` that names no checkpoint, or one the model cannot start from, is
    said now, not by the train stage once the data stages have run."""
    if not any(run.train.init_from for run in runs):
        return
    from lm.train_config import TrainingError
    from tasks.train import init_checkpoint

    try:
        for run in runs:
            init_checkpoint(run.train, workspace, run.model)
    except TrainingError as error:
        raise _fail(str(error)) from None


def _check_devices(settings, runs: list, config_path: Path) -> None:
    """A `train.device` or `eval.device` this machine lacks (`cuda` without a CUDA GPU, `mps`
    off Apple silicon) is said now, not by the train stage once the data stages have run. Not
    at load time: `lmforge size` sizes a CUDA run on any machine, and a deployment's config may
    be loaded where it does not run."""
    asked = [(run.label, "train.device", run.train.device) for run in runs]
    asked += [("", "eval.device", settings.eval.device)] if runs else []
    asked = [(label, key, device) for label, key, device in asked if device not in ("auto", "cpu")]
    if not asked:
        return  # torch is not imported for nothing
    from lm.train import pick_device
    from lm.train_config import TrainingError

    for label, key, device in asked:
        try:
            pick_device(device, key=key)
        except TrainingError as error:
            whose = f"model '{label}': " if label and device != settings.train.device else ""
            raise _fail(f"{config_path}: {whose}{error}") from None


def _check_memory(settings, runs: list, config_path: Path, given_sets: bool = False) -> None:
    """A model that cannot fit the memory it would train in, refused now, and one that may
    not, warned of (`lm.memory_fit`): the train stage met it once every data stage had run."""
    from lm.memory_fit import memory_fit

    found = memory_fit(settings, runs, config_path, given_sets)
    if found.refusal:
        raise _fail(found.refusal)
    for warning in found.warnings:
        errors.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False,
                     soft_wrap=True)  # fmt: skip


def _print_stages(summary: dict) -> None:
    from lm.artifact_keys import short_key

    rows = [
        (
            s["stage"],
            "cached" if s["cached"] else "ran",
            f"{s['seconds']:.2f}",
            short_key(s["output_digest"] or ""),  # "evaluate-ceb": 3 of its digits
        )
        for s in summary["stages"]
    ]
    # Its own line, not the table's title, which Rich pads to the table's width: `sed 's/^run //'`
    # gave the id with 30 spaces, which no command takes.
    console.print(f"run {summary['run_id']}", highlight=False)
    console.print(_table(["stage", "state", "seconds", "digest"], rows))


def _bpb(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _steps(model: dict) -> str:
    """Steps trained, and the step of the weights scored where it is another (early stopping
    went on for `patience` evaluations past it): "20 steps" beside a step-10 model's score
    read as the step-20 model's."""
    best = model.get("best_step")
    if best is None or best == model["steps"]:
        return str(model["steps"])
    return f"{model['steps']} (best {best})"


def _print_models(models: list[dict]) -> None:
    if not models:
        return
    rows = [
        (m["label"], m["kind"], f"{m['parameters']:,}", _steps(m), _bpb(m.get("val_bpb")),
         _bpb(m.get("test_bpb")), _bpb(m.get("baseline_val_bpb")))
        for m in models
    ]  # fmt: skip
    headers = ["model", "kind", "parameters", "steps", "val bpb", "test bpb", "baseline val bpb"]
    console.print(_table(headers, rows, "bits per byte on held-out text"))


@app.command(rich_help_panel=TRAIN)
def run(
    config: Annotated[str | None, typer.Argument(help="preset name or TOML path")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override a setting: key.path=value")
    ] = None,
) -> None:
    """Run the whole pipeline (default: the bundled corpus) and record it in the registry."""
    summary = _run_flow("lm-pipeline", config, overrides)
    workspace = activate_workspace()
    _print_stages(summary)
    _print_models(summary["models"])
    corpus = summary["corpus"]
    folder = escape(str(workspace.root / corpus["path"]))
    console.print(  # one line: a long workspace's folder was cut in two at 200 columns piped
        f"corpus {corpus['digest'][:12]}: {corpus['kept']:,} of {corpus['documents']:,} documents"
        f" kept, {decimal_size(corpus['kept_bytes'])}  ({folder})",
        soft_wrap=True,
    )
    if summary["models"]:  # where to look next: the run's page, and its model at work
        run_id = summary["run_id"]
        console.print(f"next: lmforge report {run_id}  ·  lmforge generate {run_id} --prompt "
                      "'...'  ·  lmforge runs show " + run_id, highlight=False)  # fmt: skip
    _say_if_not_recorded(summary)


def _say_if_not_recorded(summary: dict) -> None:
    """A run that found the registry held open at its end (`storage.pending_outcome`)."""
    if summary.get("recorded", True):
        return
    waiting = escape(str(activate_workspace().runs / summary["run_id"] / OUTCOME_FILE))
    console.print(
        f"[bold]not in the registry yet[/]: it could not be written (the warning above says "
        f"why); the run's outcome waits in {waiting}, and the next run (`lmforge run`, "
        "`retrain`, `ablation`) records it",
        highlight=False,
    )


CHECKED_FLOWS = {"run": "lm-pipeline", "retrain": "retrain", "ablation": "ablation"}


@app.command(rich_help_panel=TRAIN)
def check(
    config: Annotated[str | None, typer.Argument(help="preset name or TOML path")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override a setting: key.path=value")
    ] = None,
    command: Annotated[
        str, typer.Option("--for", help="the command it is for: run, retrain or ablation")
    ] = "run",
) -> None:
    """Check a config as `run` (or `retrain`, `ablation`) checks it before it starts: its keys
    and values, the sources it names, devices, `train.init_from` and memory. Nothing is run;
    a config for `prefect deployment run` can be checked before it is sent to a worker."""
    if command not in CHECKED_FLOWS:
        raise _fail(f"--for {command}: one of {', '.join(CHECKED_FLOWS)}")
    _, _, runs, config_path, inputs = _preflight(CHECKED_FLOWS[command], config, overrides)
    known = [item.size for item in inputs if item.size is not None]  # a URL's is not known
    size = f" ({decimal_size(sum(known))})" if known else ""
    # An ablation's arms once each, not once a seed; a model's kind where its label hides it.
    labels = {run.label.rpartition("/seed-")[0] or run.label: run.model.kind for run in runs}
    models = ", ".join(label if label == kind else f"{label} ({kind})"
                       for label, kind in labels.items()) or "none (data stages only)"  # fmt: skip
    console.print(
        f"{escape(str(config_path))}: ready for `lmforge {command}`\n"
        f"  inputs: {len(inputs):,}{size}\n  models: {escape(models)}\n"
        "  (what only the data can tell, as files that hold no text or too few documents for "
        "the split, is said by ingest and clean)",
        highlight=False,
    )


@app.command(rich_help_panel=TRAIN)
def retrain(
    config: Annotated[str | None, typer.Argument(help="preset name or TOML path")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override a setting: key.path=value")
    ] = None,
) -> None:
    """Retrain the champion on new documents from the config's sources; promote the result
    only if its val bits per byte beat the champion's by `retrain.margin`."""
    summary = _run_flow("retrain", config, overrides)
    _print_stages(summary)
    _print_models(summary["models"])
    decision = summary["decision"]
    verdict = "promoted" if decision["promoted"] else "not promoted"
    console.print(escape(f"{decision['mode']}: {verdict} — {decision['reason']}"))
    _say_if_not_recorded(summary)


@app.command(name="ablation", rich_help_panel=TRAIN)
def ablation_command(
    config: Annotated[str, typer.Argument(help="preset name or TOML path")] = "ablation",
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override a setting: key.path=value")
    ] = None,
) -> None:
    """Which of these variants is better on my corpus? Trains every `[ablation]` variant for
    every seed and prints mean ± std of val bits per byte and tokens/s. A variant × seed that
    fails is a line of the table; the others' results are printed, and the command exits 1."""
    from flows.ablation import AblationError

    try:
        summary = _run_flow("ablation", config, overrides)
    except AblationError as error:
        _print_ablation(error.summary)
        raise _fail(str(error)) from None
    _print_ablation(summary)


def _print_ablation(summary: dict) -> None:
    if summary.get("table"):
        # Markdown rows and the path whole: a row wrapped at 200 columns piped is no table.
        console.print(escape(summary["table"]), highlight=False, soft_wrap=True)
    if summary.get("report"):
        console.print(f"report: {escape(str(summary['report']))}", soft_wrap=True)
    _say_if_not_recorded(summary)


@app.command(rich_help_panel=TRAIN)
def size(
    config: Annotated[str | None, typer.Argument(help="preset name or TOML path")] = None,
    vocab_size: Annotated[
        int | None,
        typer.Option(min=1, help="default: the tokenizer's vocab_size (needed for char)"),
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override a setting: key.path=value")
    ] = None,
) -> None:
    """Parameters, FLOPs per token, memory, and the Chinchilla token budget of a config's model."""
    from lm.config import ConfigError, ModelRun, load_config
    from lm.sizing import size_model

    try:
        settings = load_config(config, overrides)
    except ConfigError as error:
        raise _fail(str(error)) from None
    try:
        runs = settings.model_runs()
        if settings.ablation.variants:  # one column a variant: the sizes an ablation compares
            arms = {variant: run for variant, _, run in settings.ablation_runs(scored=False)}
            runs = [ModelRun(variant, run.model, run.train) for variant, run in arms.items()]
    except ValueError as error:
        raise _fail(f"{config or 'default'}: {error}") from None
    if not runs:
        raise _fail(f"{config or 'default'}: the config has no [model] or [[models]] section")
    vocabulary_from = None  # the run whose char tokenizer gave the vocabulary size
    continued = _continued_vocabulary(runs) if vocab_size is None else None
    if continued is not None:  # a continued model keeps its tokenizer, whatever [tokenizer] says
        continued_from, vocab_size = continued
    elif vocab_size is None:
        if settings.tokenizer.kind == "char":
            newest = _newest_char_vocabulary(settings)
            if newest is None:
                raise _fail(
                    "a char tokenizer's vocabulary comes from the data: pass --vocab-size "
                    f"(or run {settings.name} once with these data and tokenizer settings; "
                    "size then reads its tokenizer's)"
                )
            vocabulary_from, vocab_size = newest
        else:
            vocab_size = settings.tokenizer.vocab_size
    elif settings.tokenizer.kind != "char":  # a SentencePiece vocabulary has a floor
        from pydantic import ValidationError

        tokenizer = settings.tokenizer.model_dump() | {"vocab_size": vocab_size}
        try:
            type(settings.tokenizer).model_validate(tokenizer)
        except ValidationError as error:
            said = error.errors()[0]["msg"].removeprefix("Value error, ")
            raise _fail(f"--vocab-size {vocab_size}: {said}") from None
    newest = _newest_train_tokens(settings)  # what the count bigram can hold, at most
    corpus_tokens = newest[1] if newest is not None else None
    sizes = [size_model(run.model, run.train, vocab_size, train_tokens=corpus_tokens)
             for run in runs]  # fmt: skip
    measures = [
        ("trainable parameters", lambda size: f"{size.parameters:,}"),
        ("stored values (trained or not)", lambda size: f"{size.stored_values:,}"),
        ("training FLOPs per token",
         lambda size: "a count" if size.closed_form else f"{size.flops_per_token:,.0f}"),
        ("weights (fp32; counts fp64)", lambda size: bytes_text(size.weights_bytes)),
        ("gradients (fp32)", lambda size: bytes_text(size.gradients_bytes)),
        ("AdamW state", lambda size: bytes_text(size.optimizer_bytes)),
        ("activations per micro-batch",
         lambda size: "not estimated" if size.activations_bytes is None
         else bytes_text(size.activations_bytes)),
        ("Chinchilla-optimal tokens (20/param)",
         lambda size: "none: closed form" if size.closed_form else f"{size.chinchilla_tokens:,}"),
        ("tokens the train settings will see", _planned_tokens),
    ]  # fmt: skip
    if any(size.processes > 1 for size in sizes):  # what one of several processes holds
        measures[7:7] = [
            ("processes (nproc_per_node × nnodes)", _processes),
            ("weights, gradients, AdamW per process",
             lambda size: bytes_text(size.state_bytes_per_process())),
        ]  # fmt: skip
    rows = [(name, *(shown(size) for size in sizes)) for name, shown in measures]
    if newest is not None:
        run_id, corpus_tokens = newest
        rows.append(
            (f"tokens in the train split of run {run_id}", *[f"{corpus_tokens:,}"] * len(runs))
        )
    labels = [run.label for run in runs]
    console.print(_table(["", *labels], rows, f"size of {settings.name}"))
    if vocabulary_from is not None:
        console.print(
            f"vocabulary: {vocab_size:,} characters, those of run {escape(vocabulary_from)}'s "
            "char tokenizer (--vocab-size sets another)",
            highlight=False,
        )
    if continued is not None:
        console.print(f"vocabulary: {vocab_size:,} ids, {escape(continued_from)}",
                      highlight=False)  # fmt: skip


def _planned_tokens(size) -> str:
    if size.closed_form:
        return "train split, once"
    if size.planned_tokens_at_most:  # train.samples = "documents": padding is not counted
        return f"at most {size.planned_tokens:,}"
    return f"{size.planned_tokens:,}"


def _processes(size) -> str:
    if size.processes == 1:
        return "1"
    if size.shards > 1:
        return f"{size.processes}, sharded (FSDP: + {bytes_text(size.gathered_bytes)} in flight)"
    return f"{size.processes}, each a whole copy (DDP)"


# What decides a run's tokens: the text (its sources, cleaning and split) and the tokenizer's
# own settings (byte fallback adds 256 ids to a char vocabulary).
DATA_SETTINGS = ("ingest", "clean", "split", "tokenizer")


def _newest_same_data(settings, rows: list[tuple]) -> tuple[str, int] | None:
    """The (run id, number) of the first of `rows` (run id, number, config; newest first)
    whose run read the same data with the same tokenizer settings as `settings`: the runs of
    one preset may have been pointed at other files, or another tokenizer, by `--set`."""
    from lm.config import CleanConfig, IngestConfig, SplitConfig, TokenizerConfig
    from lm.text.url_credentials import without_url_credentials

    def data_settings(config: dict) -> dict:
        # A URL's credentials compared as the registry records them (`***`): a run read from
        # `?token=...` never matched its own config, nor a run recorded before they were hidden.
        config = without_url_credentials(config)
        chosen = {key: config.get(key) for key in DATA_SETTINGS}
        try:  # the tokenizer's thread count changes no token
            tokenizer = TokenizerConfig.model_validate(chosen["tokenizer"])
            chosen["tokenizer"] = tokenizer.output_digest()
            # Read as this lmforge reads them: a setting added since the run was recorded (a
            # source's `delimiter`) is its default there, not other data.
            for key, settings_class in (("ingest", IngestConfig), ("clean", CleanConfig),
                                        ("split", SplitConfig)):  # fmt: skip
                chosen[key] = settings_class.model_validate(chosen[key]).model_dump(mode="json")
        except ValueError:  # a run recorded under another version's settings
            return {}
        return chosen

    wanted = data_settings(settings.model_dump(mode="json"))
    for run_id, number, config, *_ in rows:
        recorded = json.loads(config) if isinstance(config, str) else (config or {})
        if data_settings(recorded) == wanted:
            return run_id, int(number)
    return None


def _preset_runs(settings, query: str) -> list[tuple]:
    """`query`'s rows for this preset's runs; none when there is no registry."""
    from storage.registry import RegistryError

    try:
        return _registry().query(query, [settings.name])[1]
    except RegistryError:
        return []


def _newest_train_tokens(settings) -> tuple[str, int] | None:
    """The run id and `tokens/train` of the newest run of this preset with the same data and
    tokenizer settings that encoded its corpus (whatever failed later: an ablation with one
    failed arm had counted its tokens): the corpus this config reads, as far as the registry
    can tell without running it."""
    rows = _preset_runs(
        settings,
        "SELECT r.run_id, m.value, r.config, r.ended_at FROM latest_metrics m "
        "JOIN runs r USING (run_id) WHERE m.key = 'tokens/train' AND r.preset = ? "
        "ORDER BY r.ended_at DESC NULLS LAST",
    )
    return _newest_same_data(settings, rows)


def _newest_char_vocabulary(settings) -> tuple[str, int] | None:
    """The run id and vocabulary size of the char tokenizer that the newest run of this preset
    trained with the same data and tokenizer settings, found by its tokenizer stage (through
    its models, a run that trained none never counted): a char vocabulary is the corpus's
    characters, which only a run has counted."""
    rows = _preset_runs(
        settings,
        "SELECT DISTINCT r.run_id, t.vocab_size, r.config, r.ended_at FROM runs r "
        "JOIN stages s USING (run_id) JOIN tokenizers t ON t.digest = s.output_digest "
        "WHERE s.stage = 'tokenizer' AND r.preset = ? AND t.kind = 'char' "
        "ORDER BY r.ended_at DESC NULLS LAST",
    )
    return _newest_same_data(settings, rows)


@app.command(rich_help_panel=RESULTS)
def report(
    run_ids: Annotated[
        list[str], typer.Argument(help="a run id or unique prefix (several with --compare)")
    ],
    compare: Annotated[
        bool, typer.Option("--compare", help="overlay and tabulate several runs side by side")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="the report's folder (default: $LMFORGE_HOME/reports/…)")
    ] = None,
) -> None:
    """Write a static HTML report (report.html + PNGs) of a run, or compare runs; print its path."""
    from flows.report import ReportError, build_comparison_report, build_run_report
    from storage.registry import RegistryError

    activate_workspace()
    if not compare and len(run_ids) != 1:
        raise _fail("give one run id, or --compare with two or more")
    try:
        path = (
            build_comparison_report(run_ids, out) if compare else build_run_report(run_ids[0], out)
        )
    except (RegistryError, ReportError) as error:
        raise _fail(str(error)) from None
    console.print(str(path), markup=False, highlight=False, soft_wrap=True)


@app.command(rich_help_panel=RESULTS)
def sql(
    query: Annotated[
        str, typer.Argument(help="a DuckDB SQL query (read-only); - reads it from stdin")
    ],
    max_rows: Annotated[
        int | None,
        typer.Option(
            min=0,
            callback=capped_count,
            help=f"rows to show at most (0: every row); a table {SQL_MAX_ROWS:,}, CSV and JSON all",
        ),
    ] = None,
    output: Annotated[
        OutputFormat,
        typer.Option("--format", help="a table, or every value whole: CSV, or JSON Lines"),
    ] = OutputFormat.table,
) -> None:
    """Query the registry (runs, stages, metrics, datasets, ...) and the corpus (`corpus`,
    `clean_corpus`, `corpus_versions`) with SQL. Nothing can be changed from here. A table
    longer than --max-rows shows its first rows and says so: a table of a whole metrics log
    takes minutes and gigabytes to draw. CSV and JSON Lines, for a program, give every row
    unless --max-rows is given, and take one statement. Several statements (`;`) in a table
    show a result each."""
    import duckdb

    from storage.query import reading_statements, run_queries, sql_session
    from storage.registry import RegistryError

    if max_rows is None:
        max_rows = SQL_MAX_ROWS if output is OutputFormat.table else 0
    if query == "-":  # a query kept in a file (`lmforge sql - < weekly.sql`), as psql -f
        query = _query_from_stdin()
    print_data_as_utf8(output)
    workspace = activate_workspace()
    try:
        with sql_session(_registry(), workspace.root) as connection:
            given = len(reading_statements(connection, query))
            if output is not OutputFormat.table and given > 1:
                # One after another, a second header read as a row of the first result's data.
                raise RegistryError(f"--format {output.value} gives one result, and {given} "
                                    "statements are given: run one per command")  # fmt: skip
            for number, result in enumerate(run_queries(connection, query)):
                columns = [d[0] for d in result.description] if result.description else []
                # A JSON column (`stats`, `config`), or a list of JSON, is data in JSON Lines,
                # not a string of it.
                nested = [str(d[1]) in ("JSON", "JSON[]") for d in result.description or []]
                if output is not OutputFormat.table and not max_rows:
                    _stream_result(output, columns, result, nested)
                    continue
                rows = result.fetchmany(max_rows + 1) if max_rows else result.fetchall()
                cut = bool(max_rows) and len(rows) > max_rows
                if number and output is OutputFormat.table:
                    console.print()
                _print_result(output, columns, rows[:max_rows] if cut else rows, nested)
                if cut:
                    errors.print(f"the first {max_rows:,} rows are shown, and there are more: add "
                                 "a LIMIT or a WHERE, or pass --max-rows 0 for every row",
                                 highlight=False)  # fmt: skip
    except (RegistryError, duckdb.Error) as error:
        if re.search(r"Table with name (clean_)?corpus does not exist", str(error)):
            raise _fail("the corpus and clean_corpus views are missing: no corpus version is "
                        "recorded yet, or the newest one's documents are gone (`lmforge run` "
                        "builds them)") from None  # fmt: skip
        raise _fail(str(error) + _older_schema(error)) from None


def _query_from_stdin() -> str:
    """The query a file or pipe gives on stdin, read as UTF-8 whatever the locale."""
    if sys.stdin is None or sys.stdin.isatty():
        raise _fail("sql -: give the query on stdin (`lmforge sql - < query.sql`)")
    try:
        query = sys.stdin.buffer.read().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _fail(f"sql -: the query on stdin is not UTF-8 (byte at {error.start})") from None
    if not query.strip():
        raise _fail("sql -: stdin held no query")
    return query


def _older_schema(error: Exception) -> str:
    """Why a column or table the README names may be missing: a registry of an earlier lmforge
    is migrated by the first run of this one that writes to it, not by a command that reads."""
    from storage.registry import RegistryError, older_schema_note

    try:
        version = _registry().schema_version()
    except RegistryError:
        return ""
    return older_schema_note(version, error)


SQL_FETCH_ROWS = 10_000  # CSV and JSON Lines are written this many rows at a time


def _stream_result(output: OutputFormat, columns: list[str], result, nested: list[bool]) -> None:
    """Every row of `result` as CSV or JSON Lines, a batch at a time: a metrics log of
    millions of rows is never held whole."""
    header = True
    while True:
        rows = result.fetchmany(SQL_FETCH_ROWS)
        if rows or header:
            _print_result(output, columns, rows, nested, header=header)
        header = False
        if len(rows) < SQL_FETCH_ROWS:
            return


def _print_result(
    output: OutputFormat,
    columns: list[str],
    rows: list[tuple],
    nested: list[bool] | None = None,
    header: bool = True,
) -> None:
    """A query's result on stdout: a table for reading, or CSV / JSON Lines (one object per
    row) for a program, every value whole (a table wraps a long one to the terminal)."""
    if output is OutputFormat.table:
        _print_table(columns, rows)
        return
    if output is OutputFormat.csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        if header:
            writer.writerow(columns)
        nested = nested or [False] * len(columns)
        writer.writerows(
            [_csv_value(_decoded(v) if is_json and isinstance(v, list) else v)
             for v, is_json in zip(row, nested, strict=True)]
            for row in rows
        )  # fmt: skip
        return
    names = _unique(columns)  # `SELECT 1 a, 2 a`: a dict would keep one `a`
    nested = nested or [False] * len(columns)
    for row in rows:
        values = [_decoded(v) if is_json else v for v, is_json in zip(row, nested, strict=True)]
        record = dict(zip(names, map(_json_value, values), strict=True))
        sys.stdout.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(value):
    """A value JSON has no type for: a DECIMAL (DuckDB's type of a literal such as `1.5`, and
    of arithmetic on one) as a number, not the string "1.5"; a time, a UUID, a blob as text."""
    from decimal import Decimal

    if isinstance(value, Decimal) and value.is_finite():
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return _blob_text(value)
    if isinstance(value, datetime | date | time):  # ISO 8601, as JSON readers parse it
        return value.isoformat()
    return str(value)


def _blob_text(value: bytes) -> str:
    """A blob as DuckDB writes it as text (`\\xFF`, a backslash `\\x5C`): not Python's `b'..'`."""
    return "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02X}" for b in value)


def _csv_value(value):
    """A value readable by another program: a boolean `true` and a blob's bytes (`\\xFF`) as
    DuckDB's own CSV writes them (not Python's `True`, `b'\\xff'`), a list, struct or map as
    JSON (DuckDB writes `{'x': 1}`, which no JSON reader takes; a list of JSON comes decoded,
    not as strings of JSON), NULL empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):  # its values as JSON Lines gives them
        return json.dumps(_json_value(value), ensure_ascii=False, default=_json_default)
    if isinstance(value, bytes):
        return _blob_text(value)
    return value


def _unique(columns: list[str]) -> list[str]:
    """Column names, a repeated one numbered (`a`, `a_2`), never onto a name already taken
    (`a, a, a_2` gives `a, a_3, a_2`)."""
    taken, names = set(columns), []
    for column in columns:
        name, number = column, 1
        while name in names or (name != column and name in taken):
            number += 1
            name = f"{column}_{number}"
        names.append(name)
    return names


def _decoded(value):
    """A JSON value DuckDB gave as its text, or a list of them, as data."""
    if isinstance(value, list):
        return [_decoded(item) for item in value]
    return json.loads(value) if isinstance(value, str) else value


def _json_value(value):
    """A value JSON can hold: a float that is not finite is null (`NaN` is no JSON), in a list,
    struct or map too; a map's key of a type JSON has no key for (a DECIMAL, a date) as
    `_json_default` gives it (json.dumps raised on one)."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        plain = (str, int, float, type(None))  # a key json.dumps takes
        return {
            (key if isinstance(key, plain) else _json_default(key)): _json_value(item)
            for key, item in value.items()
        }
    return value


def _pieces_kept(connection, parquet_path: str) -> tuple[int, int] | None:
    """How many kept documents are pieces of a text cut at ingest, and of how many texts: the
    split table counted pieces as documents, with no word of the texts they were cut from
    (None for a corpus written before pieces were named, or with none)."""
    columns = connection.execute("SELECT * FROM read_parquet(?) LIMIT 0", [parquet_path])
    if "part_of" not in {column[0] for column in columns.description}:
        return None
    counted = connection.execute(
        "SELECT count(part_of), count(DISTINCT part_of) FROM read_parquet(?) WHERE keep",
        [parquet_path],
    ).fetchone()
    return counted if counted[0] else None


@corpus_app.command("stats")
def corpus_stats(
    digest: Annotated[str | None, typer.Option(help="a corpus version (default: newest)")] = None,
    documents: Annotated[
        int | None,
        typer.Option(
            min=0,
            callback=capped_count,
            help="how many documents (and sources) to list  [default: 20]",
        ),
    ] = None,
    all_documents: Annotated[bool, typer.Option("--all", help="list every document")] = False,
) -> None:
    """Documents kept and removed per filter, characters, split sizes and sources."""
    import duckdb

    if all_documents and documents is not None:  # which was meant? (`--all` listed every one)
        raise _fail("--all lists every document, --documents N the first N: give one of them")
    documents = 20 if documents is None else documents

    from storage.query import find_corpus_version, sql_session
    from storage.registry import RegistryError

    workspace = activate_workspace()
    try:
        with sql_session(_registry(), workspace.root) as connection:
            version = find_corpus_version(connection, digest)
            filters = connection.execute(
                "SELECT filter, flagged, removed FROM dataset_filters WHERE dataset_digest = ? "
                "ORDER BY removed DESC, flagged DESC, filter",
                [version["digest"]],
            ).fetchall()
            limit = "" if all_documents else f"LIMIT {int(documents)}"
            listing = connection.execute(
                "SELECT source, split, CASE WHEN keep THEN 'kept' ELSE reject_reason END, "
                f"n_words, n_chars FROM read_parquet(?) {limit}",
                [version["parquet_path"]],
            ).fetchall()
            pieces = _pieces_kept(connection, version["parquet_path"])
            methods = connection.execute(  # the split of the runs that read this version
                "SELECT DISTINCT config->'split'->>'method' FROM runs WHERE corpus_digest = ?",
                [version["digest"]],
            ).fetchall()
    except (RegistryError, duckdb.Error) as error:
        raise _fail(str(error)) from None
    total, kept = version["documents"], version["kept"]
    console.print(f"[bold]corpus[/] {version['digest']}  ({escape(version['parquet_path'])})",
                  soft_wrap=True)  # fmt: skip
    console.print(
        f"{kept:,} of {total:,} documents kept ({total - kept:,} removed), "
        f"{version['kept_chars']:,} characters, {version['kept_bytes'] / 1e6:.2f} MB"
    )
    splits = [
        (s, version[f"{s}_documents"], version[f"{s}_bytes"]) for s in ("train", "val", "test")
    ]
    console.print(_table(["split", "documents", "bytes"], splits, "splits (kept documents)"))
    if pieces:
        texts = f"{pieces[1]:,} long text" + ("" if pieces[1] == 1 else "s")
        console.print(f"  {pieces[0]:,} of the kept documents are pieces of {texts} cut at "
                      "ingest.max_document_mb (`part_of` names each one's text)")  # fmt: skip
    if ("ordered",) in methods:
        console.print("  split.method = \"ordered\": every document is train here; val and test "
                      "are cut from the token stream at encode (`lmforge sql \"SELECT stats FROM "
                      "stages WHERE stage = 'encode'\"` has their tokens)")  # fmt: skip
    console.print(
        _table(["filter", "documents failing it", "removed by it first"], filters, "filters")
    )
    sources = json.loads(version["sources"])
    source_rows = [(name, c["documents"], c["kept"]) for name, c in sources.items()]
    listed = source_rows if all_documents else source_rows[:documents]
    more = (f" (first {len(listed)} of {len(source_rows):,}; --all lists every one)"
            if len(listed) < len(source_rows) else "")  # fmt: skip
    _print_table(["source", "documents", "kept"], listed, "sources" + more)
    shown = (f" (first {len(listing)} of {total:,}; --all lists every one)"
             if len(listing) < total else "")  # fmt: skip
    _print_table(["document", "split", "decision", "words", "chars"], listing, "documents" + shown)


@tokenizers_app.command("compare")
def tokenizers_compare(
    vocab_size: Annotated[int, typer.Option(min=2, help="the vocabulary size of both")] = 4000,
    digest: Annotated[
        str | None,
        typer.Option(
            help="the digest (or a prefix) of the corpus version to train on (default: the "
            "newest; `corpus stats` lists them)"
        ),
    ] = None,
    train_steps: Annotated[
        int,
        typer.Option(
            min=0, help="train the config's model this many steps per tokenizer; bpb on val"
        ),
    ] = 0,
    config: Annotated[
        str | None, typer.Option(help="preset or TOML whose [model], [train], [eval] are used")
    ] = None,
) -> None:
    """Train BPE and unigram SentencePiece models at the same vocabulary size on the same train
    split, and compare them on the val split (with --train-steps, also in bits per byte of the
    same small model trained on each)."""
    import tempfile

    import duckdb
    from pydantic import ValidationError

    from lm.config import TokenizerConfig
    from lm.tokenizer import TokenizerError, train_tokenizer
    from lm.tokenizer_stats import tokenizer_statistics
    from storage.query import find_corpus_version, sql_session
    from storage.registry import RegistryError

    workspace = activate_workspace()
    if config is not None and train_steps == 0:
        raise _fail("--config is read only with --train-steps (its [model], [train] and [eval])")
    if train_steps > 0:
        from lm.config import ConfigError, load_config

        try:  # its sources are not read (the corpus is --digest's): a config may have none
            settings = load_config(config, ["ingest.sources=['(not read)']"])
        except ConfigError as error:
            raise _fail(str(error)) from None
        runs = settings.model_runs()
        if not runs:
            raise _fail(f"{config or 'default'}: --train-steps needs a config with a [model] "
                        "or [[models]] (of a ladder, its last model is trained)")  # fmt: skip
        compared = runs[-1]  # a ladder's top, as `retrain` trains
        from lm.models.config import uses_word2vec

        if compared.model.kind == "bigram-count":
            raise _fail(f"{config or 'default'}: --train-steps trains a model, and a "
                        "bigram-count is counted; the count bigram's bits per byte are "
                        "reported for each tokenizer anyway")  # fmt: skip
        if uses_word2vec(compared.model):
            raise _fail(f"{config or 'default'}: its '{compared.label}' model reads word2vec "
                        "vectors of the pieces, which --train-steps does not train for each "
                        "tokenizer (it would start from random ones); pick a config whose "
                        "model needs none")  # fmt: skip
    try:
        tokenizer_configs = {
            k: TokenizerConfig(kind=k, vocab_size=vocab_size) for k in ("bpe", "unigram")
        }
    except ValidationError as error:
        raise _fail(
            f"--vocab-size: {error.errors()[0]['msg'].removeprefix('Value error, ')}"
        ) from None
    try:
        with sql_session(_registry(), workspace.root) as connection:
            version = find_corpus_version(connection, digest)
    except (RegistryError, duckdb.Error) as error:
        raise _fail(str(error)) from None
    corpus_digest, documents = version["digest"], version["parquet_path"]
    train_part, val_part = _compared_parts(Path(documents), corpus_digest)
    rows = []
    for kind, tokenizer_config in tokenizer_configs.items():
        train = (t for batch in train_part() for t in batch)
        try:
            tokenizer = train_tokenizer(train, tokenizer_config)
        except TokenizerError as error:  # here the size is this command's option
            message = str(error).replace(f"tokenizer.vocab_size = {vocab_size}",
                                         f"--vocab-size {vocab_size}")  # fmt: skip
            raise _fail(f"{kind}: {message}") from None
        stats = tokenizer_statistics(tokenizer, val_part())
        scored = ()
        if train_steps > 0:
            from lm.tokenizer_bpb import (
                comparison_train_settings,
                encode_documents,
                train_and_score,
            )
            from lm.train_config import TrainingError

            train_tokens = encode_documents(tokenizer, train_part())
            val_tokens = encode_documents(tokenizer, val_part())
            steps = comparison_train_settings(compared.train, train_steps)
            with tempfile.TemporaryDirectory(prefix=f"compare-{kind}-", dir=workspace.root) as work:
                try:
                    score = train_and_score(tokenizer, train_tokens, val_tokens, compared.model,
                                            steps, settings.eval, Path(work))  # fmt: skip
                except (TrainingError, ValueError) as error:  # ValueError: EvaluationError
                    raise _fail(f"{kind}: {error}") from None
            scored = (f"{score.bpb:.4f} ± {score.bpb_se:.4f}", f"{score.baseline_bpb:.4f}")
        rows.append(
            (
                kind,
                stats["vocab_size"],
                _measured(stats["bytes_per_token"], ".3f"),
                f"{stats['tokens']:,}",
                _measured(stats["vocab_used_fraction"], ".1%"),
                _measured(stats["byte_fallback_rate"], ".2%"),
                _measured(stats.get("unknown_rate"), ".2%"),
                ", ".join(repr(p) for p in stats["longest_pieces"][:3]),
                *scored,
            )
        )
    columns = ["model", "vocab", "bytes/token (val)", "val tokens", "vocab used", "byte fallback",
               "<unk>", "longest pieces"]  # fmt: skip
    if train_steps > 0:
        model_name = f"{compared.label}, {train_steps} steps"
        columns += [f"val bpb ({model_name})", "count-bigram val bpb"]
    console.print(_table(columns, rows, f"corpus {corpus_digest[:12]}, val split"))


def _measured(value: float | None, spec: str) -> str:
    """A statistic, or "—" where there was no text to measure it on (an empty val split)."""
    return "—" if value is None else format(value, spec)


def _compared_parts(documents: Path, corpus_digest: str):
    """(train texts, val texts) of a corpus version, each a callable giving batches: its
    splits, or, for a corpus its runs split `ordered` (every document in `train` until the
    token stream is cut), the parts of the stream the split's fractions name."""
    from lm.config import SplitConfig
    from storage.corpus import iter_split_part
    from storage.registry import RegistryError

    try:
        _, rows = _registry().query(
            "SELECT config FROM runs WHERE corpus_digest = ? AND config IS NOT NULL "
            "ORDER BY started_at DESC LIMIT 1",
            [corpus_digest],
        )
        recorded = json.loads(rows[0][0]).get("split") if rows else None
        split = SplitConfig.model_validate(recorded) if recorded else None
    except (RegistryError, ValueError):
        split = None
    return (lambda: iter_split_part(documents, "train", split),
            lambda: iter_split_part(documents, "val", split))  # fmt: skip


@server_app.command("start")
def server_start() -> None:
    """Start (or find) the workspace's Prefect server and print its API URL."""
    from flows.prefect_server import ServerError, ensure_server, ephemeral_mode

    if ephemeral_mode() and not os.environ.get("PREFECT_API_URL"):
        # `export PREFECT_API_URL=$(lmforge server start)` must not take a sentence.
        raise _fail(
            "LMFORGE_PREFECT_SERVER=ephemeral: each run starts Prefect's temporary server of its "
            "own, and no workspace server is started; unset it to start one"
        )
    try:
        url = ensure_server(activate_workspace())
    except ServerError as error:
        raise _fail(str(error)) from None
    console.print(url, highlight=False)


@server_app.command("stop")
def server_stop(
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="stop it even while runs of this workspace report to it, or `lmforge serve` "
            "serves from it",
        ),
    ] = False,
) -> None:
    """Stop the workspace's Prefect server."""
    from flows.prefect_server import running_server, starting_server, stop_server

    workspace = activate_workspace()
    if not (running_server(workspace) or starting_server(workspace)):
        # Runs under their own temporary servers (LMFORGE_PREFECT_SERVER=ephemeral, or another
        # workspace's PREFECT_API_URL) were a reason to refuse to stop nothing.
        console.print("no server was running")
        return
    live = [] if force else _live_runs(workspace)
    serving = [] if force else _serving_from_the_server(workspace)
    if serving:
        raise _fail(
            f"lmforge serve (pid {', '.join(map(str, serving))}) serves this workspace's "
            "deployments from the server: stopped now, it can run nothing more; stop it first "
            "(Ctrl-C), or pass --force"
        )
    if live:
        raise _fail(
            f"run{'s' if len(live) > 1 else ''} {', '.join(live)} of this workspace "
            f"{'are' if len(live) > 1 else 'is'} reporting to the server: stopping the server "
            f"now would leave Prefect's record of {'each run' if len(live) > 1 else 'the run'} "
            "out of date (lmforge's registry still records it); wait for it to end, or pass "
            "--force"
        )
    stopped = stop_server(workspace)
    console.print("stopped" if stopped else "no server was running")


def _serving_from_the_server(workspace: Workspace) -> list[int]:
    """The pids of `lmforge serve` processes serving from the workspace's running server."""
    from flows.prefect_server import running_server
    from flows.serve import live_serving

    state = running_server(workspace)
    return live_serving(workspace, state["api_url"]) if state else []


def _live_runs(workspace: Workspace) -> list[str]:
    """The ids of this workspace's runs recorded as running by a process alive on this host;
    none when the registry cannot be read (it is no reason to keep a server up)."""
    from storage.processes import pid_alive, this_host
    from storage.registry import RegistryError, RunRegistry

    if not workspace.registry_path.exists():
        return []
    try:
        _, rows = RunRegistry(workspace.registry_path).query(
            "SELECT run_id, pid FROM runs WHERE status = 'running' AND hostname = ? "
            "ORDER BY started_at",
            [this_host()],
        )
    except RegistryError:
        return []
    return [run_id for run_id, pid in rows if pid is not None and pid_alive(pid)]


@server_app.command("status")
def server_status() -> None:
    """Whether the workspace's Prefect server is running: its pid and API URL."""
    from flows.prefect_server import running_server, starting_server

    workspace = activate_workspace()
    state = running_server(workspace)
    if state is None:
        starting = starting_server(workspace)
        if starting is not None:
            raise _fail(
                f"the server (pid {starting['pid']}) is starting and does not answer yet; "
                f"its log: {starting['log']}"
            )
        raise _fail("no server is running for this workspace")
    console.print(f"running: pid {state['pid']}, {state['api_url']}", highlight=False)


def main() -> None:
    _again_in_utf8_mode_under_an_ascii_locale()
    _write_what_the_terminal_cannot_show_escaped()
    try:
        app()
    finally:
        # The interpreter's last collection walks every object torch and Prefect made: 1.3 s
        # of a cached run's exit, half a minute on a loaded machine, after the last line (a
        # Ctrl-C looked hung). Nothing is left to collect that the exit needs: files and
        # connections are closed, and `atexit` handlers (the temporary server's stop) still run.
        gc.freeze()


def _again_in_utf8_mode_under_an_ascii_locale() -> None:
    """The command run again, in the same process (`exec`), in Python's UTF-8 mode when its
    locale is ASCII with that mode turned off (`LC_ALL=C PYTHONUTF8=0`: cron, `env -i`, a bare
    container): a config path, a `--set` or a workspace path with an "é" was a 190-line
    traceback as Prefect sent the run's parameters, `name="café"` was called a control
    character, and DuckDB would not open a registry under such a folder (`std::bad_cast`). The
    arguments' bytes are passed on as they came; only how Python reads them changes."""
    if sys.flags.utf8_mode or codecs.lookup(sys.getfilesystemencoding()).name != "ascii":
        return
    # `-X utf8`, not PYTHONUTF8=1 alone: an interpreter started with -E or -I ignores the
    # variable, and would run itself again and again. The variable too, for the processes it
    # starts: torchrun's ranks, in ASCII mode, could not open a workspace under "hömé".
    os.environ["PYTHONUTF8"] = "1"
    os.execv(sys.executable, [sys.orig_argv[0], "-X", "utf8", *sys.orig_argv[1:]])


def _write_what_the_terminal_cannot_show_escaped() -> None:
    """Text the output's encoding cannot hold (generated Chinese to a Latin-1 terminal, or a
    Windows console's code page) written as `\\u6771`, not a UnicodeEncodeError's traceback
    halfway through the output."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and stream.encoding.lower().replace("-", "") != "utf8":
            reconfigure(errors="backslashreplace")


# Registered last, so that each panel lists its commands after those defined above.
app.command("generate", rich_help_panel=RESULTS)(generate_command)
app.command("chat", rich_help_panel=RESULTS)(chat_command)
app.add_typer(runs_app, name="runs", rich_help_panel=RESULTS)
app.add_typer(corpus_app, name="corpus", rich_help_panel=RESULTS)
app.add_typer(tokenizers_app, name="tokenizers", rich_help_panel=RESULTS)
app.command("serve", rich_help_panel=OPERATE)(serve_command)
app.add_typer(server_app, name="server", rich_help_panel=OPERATE)
app.command("prune", rich_help_panel=OPERATE)(prune_command)
app.command("train-join", rich_help_panel=OPERATE)(train_join_command)


if __name__ == "__main__":
    main()
