"""`lmforge prune`: give back the disk of trainings no run will resume and builds no process will
finish (`storage.prune`)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from storage.prune import INTERRUPTED, WORK_SUFFIX, find_leftovers, remove_leftover
from storage.workspace import Workspace, WorkspaceError, relocated

console = Console(width=None if sys.stdout.isatty() else 200)
# Why an interrupted training is kept when the registry cannot say who continues from it.
UNKNOWN_USE = ("the registry could not say whether a run continues from it; "
               "`lmforge prune --yes` again once it can be read")  # fmt: skip


def prune_command(
    yes: Annotated[bool, typer.Option("--yes", help="remove them (default: list them)")] = False,
) -> None:
    """List the workspace's interrupted trainings (the checkpoints of a run killed mid-training,
    which only a rerun with the same settings, data and code would resume) and abandoned build
    folders, with their sizes; `--yes` removes them. What a running process uses is never
    listed."""
    workspace = Workspace.from_env()
    if yes and workspace.root.is_dir():
        try:  # removing needs a workspace it can write (a read-only one gave a traceback)
            workspace.ensure()
        except WorkspaceError as error:
            from flows.cli import _fail

            raise _fail(str(error)) from None
    recorded = _record_crashed_runs(workspace) if yes else True
    leftovers = find_leftovers(workspace) if workspace.root.is_dir() else []
    kept = []
    if not recorded:  # a crashed run's curve is in its training's work folder: kept for it
        kept = [leftover for leftover in leftovers if leftover.kind == INTERRUPTED]
        leftovers = [leftover for leftover in leftovers if leftover.kind != INTERRUPTED]
        if kept:
            console.print(
                f"kept {len(kept)} interrupted trainings: a crashed run's record reads its "
                "curve from them; `lmforge prune --yes` again once the registry can be written",
                markup=False, highlight=False,
            )  # fmt: skip
    continued = _continued_from(workspace) if leftovers else {}
    if continued is None:  # every interrupted training kept: none is known unused
        continued = {x.path.resolve(): UNKNOWN_USE for x in leftovers if x.kind == INTERRUPTED}
    for leftover in [x for x in leftovers if x.path.resolve() in continued]:
        leftovers.remove(leftover)
        kept.append(leftover)
        console.print(
            f"kept {leftover.path}: {continued[leftover.path.resolve()]}",
            markup=False, highlight=False,
        )  # fmt: skip
    if not leftovers:
        nothing = "nothing else to prune" if kept else "nothing to prune"
        console.print(f"{nothing} in {workspace.root}", markup=False, highlight=False)
        return
    table = Table("kind", "size", "last written", "folder")
    for leftover in leftovers:
        table.add_row(
            leftover.kind,
            decimal_size(leftover.size),
            f"{datetime.fromtimestamp(leftover.modified):%Y-%m-%d %H:%M}",
            Text(str(leftover.path.relative_to(workspace.root))),
        )
    console.print(table)
    total = decimal_size(sum(leftover.size for leftover in leftovers))
    if not yes:
        resumable = any(leftover.kind == INTERRUPTED for leftover in leftovers)
        console.print(
            f"{_folders(len(leftovers))}, {total}: `lmforge prune --yes` removes them."
            + (" A rerun with an interrupted training's settings would no longer resume it, "
               "but train from the start." if resumable else ""),
            highlight=False,
        )  # fmt: skip
        return
    removed = [leftover for leftover in leftovers if remove_leftover(leftover)]
    for leftover in leftovers:
        if leftover not in removed:
            console.print(f"kept {leftover.path}: a process took it up meanwhile", markup=False,
                          highlight=False)  # fmt: skip
    freed = decimal_size(sum(leftover.size for leftover in removed))
    console.print(f"removed {_folders(len(removed))}, {freed}", highlight=False)


def _folders(count: int) -> str:
    return f"{count:,} folder{'' if count == 1 else 's'}"


def _record_crashed_runs(workspace: Workspace) -> bool:
    """Record this machine's runs whose process died, as the next run would: a crashed run's
    record reads its time and its training's curve from the work folder that pruning removes.
    False when they could not be (the registry held open, or damaged)."""
    from storage.processes import pid_alive, this_host
    from storage.registry import RegistryError, RunRegistry

    if not workspace.registry_path.is_file():
        return True
    try:
        RunRegistry(workspace.registry_path).close_abandoned_runs(
            this_host(), pid_alive, workspace.runs
        )
    except RegistryError as error:  # other leftovers are freed even so
        console.print(f"warning: crashed runs not recorded first: {error}", markup=False,
                      highlight=False)  # fmt: skip
        return False
    return True


def _continued_from(workspace: Workspace) -> dict[Path, str] | None:
    """The work folders whose checkpoints recorded models continued from (`train.init_from`
    naming a checkpoint of an interrupted training), each with the first such model: pruning
    them would leave those runs impossible to repeat. And those a live run's config names: its
    models are recorded only at its end, and it loads the checkpoint once its data stages have
    run (pruned meanwhile, its train stage failed). None when the registry cannot say."""
    from storage.registry import RegistryError, RunRegistry

    if not workspace.registry_path.is_file():
        return {}
    try:
        registry = RunRegistry(workspace.registry_path)
        _, rows = registry.query(
            "SELECT run_id, label, json_extract_string(config, '$.train.init_from') FROM models "
            "WHERE json_extract_string(config, '$.train.init_from') IS NOT NULL "
            "ORDER BY created_at"
        )
        _, running = registry.query(
            "SELECT run_id, config, hostname, pid FROM runs WHERE status = 'running' "
            "ORDER BY started_at"
        )
    except RegistryError as error:
        console.print(f"warning: the models and runs that continue from a checkpoint are not "
                      f"known: {error}", markup=False, highlight=False)  # fmt: skip
        return None
    named = [(init_from, f"model {label} of run {run_id} continued from its checkpoint "
              "(train.init_from); delete it by hand once that run need not be repeated")
             for run_id, label, init_from in rows]  # fmt: skip
    named += _live_init_froms(running)
    found: dict[Path, str] = {}
    for init_from, why in named:
        path = Path(init_from).expanduser()
        path = relocated(path if path.is_absolute() else workspace.root / path, workspace.root)
        for folder in (path, *path.parents):
            if folder.name.endswith(WORK_SUFFIX):
                found.setdefault(folder.resolve(), why)
                break
    return found


def _live_init_froms(running: list[tuple]) -> list[tuple[str, str]]:
    """(`train.init_from`, why it is kept) of each model of the runs recorded running whose
    process lives (or may: one of another machine sharing the workspace, or recorded without
    its pid, as `close_abandoned_runs` counts them): the config's `[train]`, a ladder's
    `[[models]]` and an ablation's variants (whose `train` may name its own)."""
    import json

    from storage.processes import pid_alive, this_host

    found = []
    for run_id, config, hostname, pid in running:
        here = hostname == this_host()
        if here and pid is not None and not pid_alive(pid):
            continue
        why = (f"run {run_id}, running now, continues from its checkpoint (train.init_from)"
               if here else
               f"run {run_id}, recorded running on {hostname}, continues from its checkpoint "
               f"(train.init_from); if it crashed there, `lmforge prune` on {hostname} records "
               "it")  # fmt: skip
        try:
            settings = json.loads(config) if isinstance(config, str) else (config or {})
            trains = [settings.get("train") or {}]
            trains += [entry.get("train") or {} for entry in settings.get("models") or []]
            variants = (settings.get("ablation") or {}).get("variants") or []
            trains += [variant.get("train") or {} for variant in variants]
        except (ValueError, AttributeError, TypeError):  # a config of another version
            continue
        found += [(train["init_from"], why) for train in trains
                  if isinstance(train, dict) and train.get("init_from")]  # fmt: skip
    return found


def decimal_size(size: float) -> str:
    """Bytes in the largest decimal unit under 1000 of it: 512 B, 4.2 MB, 1.3 GB."""
    unit = "B"
    for larger in ("kB", "MB", "GB", "TB"):
        # As it is shown, rounded: 999,960 bytes is "1.0 MB", not "1,000.0 kB".
        if round(size, 0 if unit == "B" else 1) < 1000:
            break
        size, unit = size / 1000, larger
    return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
