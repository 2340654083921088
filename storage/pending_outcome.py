"""A run's outcome waiting to be recorded: `runs/<run_id>/outcome.json`.

DuckDB lets no process write a database file while another has it open, even read-only. A
`duckdb` shell or a notebook left open on the registry would otherwise fail a run at its very
end, after all its training, and leave its models unrecorded. Instead, a run that cannot write
the registry (held open past `$LMFORGE_REGISTRY_WAIT_S`, or damaged) leaves its whole outcome
in this file, written atomically, and ends as it would have. The next run to open the
registry records it (before anything else, so the run is never taken for crashed), exactly as
it would have been recorded at its end; readers show the run as waiting until then."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from lm.atomic_files import write_text_atomically
from storage.records import RunOutcome
from storage.workspace import relocated

OUTCOME_FILE = "outcome.json"
UNRECORDED_FILE = "outcome.unrecorded.json"  # one that could not be recorded, kept for a person
# The statuses a waiting outcome replaces: the run's own, and the guess that it crashed, made
# by a run that found its process gone (maybe after it had left its outcome).
OUTCOME_REPLACES = ("running", "crashed")


def write_pending_outcome(folder: Path, outcome: RunOutcome) -> Path:
    """Leave `outcome` in the run's `folder`, replacing one left before (the later outcome of
    the same run holds everything the earlier did)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(folder / OUTCOME_FILE, json.dumps(outcome.to_json(), indent=1))


def read_pending_outcome(folder: Path) -> RunOutcome | None:
    """The outcome left in `folder`, or None if there is none. One that cannot be read raises
    ValueError naming the file."""
    path = folder / OUTCOME_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        outcome = RunOutcome.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a run outcome ({type(error).__name__}: {error})") from None
    if outcome.run_id != folder.name:
        raise ValueError(f"{path}: the outcome of run {outcome.run_id}, not of {folder.name}")
    if outcome.metrics_file is not None:  # `folder` is `<root>/runs/<run_id>`
        outcome.metrics_file = relocated(outcome.metrics_file, folder.parent.parent)
    return outcome


def pending_status(folder: Path) -> str | None:
    """The status a run's waiting outcome records (None: no outcome waits, or it cannot be
    read): what readers show for a run the registry still has as `running`."""
    try:
        outcome = read_pending_outcome(folder)
    except (ValueError, OSError):
        return None
    return outcome.status if outcome else None


def set_aside_pending_outcome(folder: Path) -> Path:
    """Move the outcome left in `folder` out of the way of later runs, which would fail to
    record it again; returns where it now is."""
    kept = folder / UNRECORDED_FILE
    with contextlib.suppress(FileNotFoundError):  # moved by another process meanwhile
        os.replace(folder / OUTCOME_FILE, kept)
    return kept


def discard_pending_outcome(folder: Path) -> None:
    """Forget the outcome left in `folder`: it is recorded."""
    (folder / OUTCOME_FILE).unlink(missing_ok=True)
