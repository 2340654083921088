"""A run's stages as JSON lines in `runs/<run_id>/stages.jsonl`, written as they happen.

The flow records a run's stages in the registry only when the run ends (one batch, DESIGN §6).
A run killed with `kill -9`, or lost to a power cut, never gets there; this journal is what it
leaves instead, beside its `metrics.jsonl`, so that the next run, closing it as `crashed`, can
still record which stages finished, how long they took, and what training had logged.

Each stage writes a `started` line when it begins and a `finished` line (its `StageRecord`)
when it ends, or a `failed` one if it raised. Every line says when it was written (`at`): the
times the registry records for a crashed run's stages, not when the next run reads them. A
training stage's `started` line names the metrics file its curve grows in until the flow copies
it into the run's own. Every line is appended and flushed at once, so a killed process loses at
most a partial last line, which `read_stage_journal` skips.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path

from lm.clock import read_time, utc_now
from storage.workspace import relocated

JOURNAL_FILE = "stages.jsonl"


@dataclass
class StageRecord:
    """A finished stage of a run: what the registry's `stages` table holds. `finished_at` is
    when it ended (None, for a record made without one: the registry then takes the run's end)."""

    stage: str
    cache_key: str | None
    cached: bool
    seconds: float
    output_digest: str | None = None
    output_path: str | None = None
    stats: dict = field(default_factory=dict)
    finished_at: datetime | None = None


RECORD_FIELDS = {record_field.name for record_field in fields(StageRecord)} - {"finished_at"}


@dataclass(frozen=True)
class LiveMetrics:
    """A metrics file a stage appends to while it runs (training's curve, in its work folder),
    and the model label its lines belong to."""

    path: Path
    model: str | None = None


@dataclass(frozen=True)
class UnfinishedStage:
    """A stage that started and never finished: when its `started` line was written (None: a
    time missing or unreadable), and the metrics file it was writing, if it named one."""

    started_at: datetime | None
    live_metrics: LiveMetrics | None = None


@dataclass
class StageJournalContents:
    """What a journal holds: the stages that finished, in order, and those that started and
    never finished (what the run was doing when it ended), by name."""

    finished: list[StageRecord]
    unfinished: dict[str, UnfinishedStage]


class StageJournal:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def started(self, stage: str, live_metrics: LiveMetrics | None = None) -> None:
        line = {"event": "started", "stage": stage}
        if live_metrics is not None:
            line |= {"metrics_file": str(live_metrics.path), "model": live_metrics.model}
        self._append(line)

    def finished(self, record: StageRecord) -> None:
        """The stage's record, its `at` the time the record says it finished."""
        line = {"event": "finished", **asdict(record)}
        line.pop("finished_at")
        self._append(line, at=record.finished_at)

    def failed(self, stage: str) -> None:
        """The stage raised: no longer running, and nothing to record (as in a failed run)."""
        self._append({"event": "failed", "stage": stage})

    def _append(self, line: dict, at: datetime | None = None) -> None:
        line["at"] = (at or utc_now()).isoformat()
        try:
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                out.flush()
        except OSError as error:  # a full disk: a bare "[Errno 28]" named no file
            from storage.artifacts import OutputUnwritable

            why = error.strerror or error
            raise OutputUnwritable(f"{self.path}: the run's stage journal cannot be written "
                                   f"({why}); is the disk full?") from error  # fmt: skip


def read_stage_journal(path: Path) -> StageJournalContents:
    """The journal at `path`; a missing file is an empty journal, and a line that is not a
    whole JSON object (the last one, cut short by a kill) is skipped."""
    finished: list[StageRecord] = []
    unfinished: dict[str, UnfinishedStage] = {}
    if not path.is_file():
        return StageJournalContents(finished, unfinished)
    with open(path, encoding="utf-8", errors="replace") as lines:
        for raw in lines:
            line = _parse(raw)
            if line is None:
                continue
            stage, event = line["stage"], line.get("event")
            if event == "started":
                metrics_file = line.get("metrics_file")
                live = None
                if metrics_file:  # the journal is `<root>/runs/<run_id>/stages.jsonl`
                    moved = relocated(Path(metrics_file), path.parent.parent.parent)
                    live = LiveMetrics(moved, line.get("model"))
                unfinished[stage] = UnfinishedStage(_written_at(line), live)
                continue
            unfinished.pop(stage, None)  # finished, or failed: either way no longer running
            if event == "finished":
                fields_of_record = {k: v for k, v in line.items() if k in RECORD_FIELDS}
                finished.append(StageRecord(**fields_of_record, finished_at=_written_at(line)))
    return StageJournalContents(finished, unfinished)


def _parse(raw: str) -> dict | None:
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(line, dict) or not isinstance(line.get("stage"), str):
        return None
    return line


def _written_at(line: dict) -> datetime | None:
    try:
        return read_time(line["at"])
    except (KeyError, TypeError, ValueError):
        return None
