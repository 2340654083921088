"""A run that finds the registry held open by another process at its end leaves its outcome in
its folder, and the next run records it: real DuckDB, a real process holding the file open."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flows.runs_cli import WAITING, shown_status
from storage.pending_outcome import (
    OUTCOME_FILE,
    UNRECORDED_FILE,
    read_pending_outcome,
    write_pending_outcome,
)
from storage.registry import (
    CRASHED,
    DatasetRecord,
    ModelRecord,
    PromotionRecord,
    RegistryError,
    RunOutcome,
    RunRegistry,
    StageRecord,
    TokenizerRecord,
)
from storage.workspace import Workspace
from tasks.record import record_task
from tests.helpers import registry_held_open

GONE = 4242  # the pid of the runs below, which `never_alive` says has ended


def never_alive(pid: int) -> bool:
    return False


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Workspace:
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LMFORGE_REGISTRY_WAIT_S", "0.5")
    return Workspace.from_env().ensure()


def _start(workspace: Workspace, run_id: str) -> RunRegistry:
    registry = RunRegistry(workspace.registry_path)
    registry.start_run({"run_id": run_id, "status": "running",
                        "started_at": datetime(2026, 12, 5, tzinfo=UTC),
                        "hostname": "me@here", "pid": GONE})  # fmt: skip
    return registry


CORPUS_STATS = {"documents": 4, "kept": 3, "kept_chars": 900, "kept_bytes": 910, "flagged": {}}
TOKENIZER_STATS = {"kind": "char", "vocab_size": 30, "bytes_per_token": 1.0,
                   "vocab_used_fraction": 0.9, "byte_fallback_rate": 0.0}  # fmt: skip


def _model(val_bpb: float) -> ModelRecord:
    return ModelRecord(
        label="gpt", kind="gpt", digest="train-1", path="artifacts/train/1", tokenizer_digest="t",
        corpus_digest="c", config={"n_layer": 1}, stats={"steps": 5, "val_bpb": val_bpb},
    )  # fmt: skip


def _outcome(run_id: str, **changes) -> RunOutcome:
    fields = dict(
        status="completed", ended_at=datetime(2026, 12, 5, 10, 30, tzinfo=UTC),
        stages=[StageRecord("train", "key", False, 1.5, "d", "artifacts/train/1", {"steps": 5},
                            datetime(2026, 12, 5, 10, 29, tzinfo=UTC))],
        datasets=[DatasetRecord("c", "corpus-key", "artifacts/corpus/c", CORPUS_STATS)],
        corpus_digest="c", metrics_file=None,
        tokenizers=[TokenizerRecord("t", "c", "artifacts/tokenizer/t", TOKENIZER_STATS)],
        models=[_model(1.9)],
    )  # fmt: skip
    return RunOutcome(run_id, **(fields | changes))


def _waiting_outcome(workspace: Workspace, run_id: str) -> Path:
    """A run that ends, with one metric, while another process holds the registry open: its
    outcome is left in its folder. Returns the metrics file."""
    folder = workspace.runs / run_id
    folder.mkdir()
    metrics = folder / "metrics.jsonl"
    metrics.write_text(json.dumps({"key": "eval/val/bpb", "step": 5, "value": 1.9,
                                   "ts": "2026-12-05T10:29"}) + "\n")  # fmt: skip
    return metrics


def _record(run_id: str, status: str, metrics_file: Path | None = None, **more) -> bool:
    """True if the run is in the registry now, False if its outcome waits in its folder."""
    recorded = record_task.fn(run_id, status, [StageRecord("train", "key", False, 1.5)], [], "c",
                              str(metrics_file) if metrics_file else None, **more)  # fmt: skip
    return recorded.in_registry


def _status(registry: RunRegistry, run_id: str) -> str:
    return registry.find_run(run_id)["status"]


DECIDED = datetime(2026, 12, 5, 10, 31, tzinfo=UTC)


def _promotion(against: str | None = None) -> PromotionRecord:
    return PromotionRecord("gpt", "champion", True, 1.9, 2.0, "better by 0.1", DECIDED, against)


def test_an_outcome_survives_its_file_unchanged():
    outcome = _outcome("r1", metrics_file=Path("/w/runs/r1/metrics.jsonl"), error="why",
                       promotion=_promotion("r0/gpt"))  # fmt: skip
    assert RunOutcome.from_json(json.loads(json.dumps(outcome.to_json()))) == outcome
    assert RunOutcome.from_json(json.loads(json.dumps(_outcome("r2").to_json()))) == _outcome("r2")


def test_a_retrain_recorded_late_promotes_its_model_only_over_the_champion_it_beat(workspace):
    registry = _start(workspace, "old")
    registry.record(_outcome("old", promotion=_promotion()))
    assert registry.champion()["run_id"] == "old"
    for run_id in ("late", "later"):
        _start(workspace, run_id)
    late = _outcome("late", promotion=_promotion("old/gpt"))
    write_pending_outcome(workspace.runs / "late", late)
    assert registry.champion()["run_id"] == "old", "not before it is recorded"
    assert registry.record_pending_outcomes(workspace.runs) == ["late"]
    assert registry.champion()["run_id"] == "late"
    # Another retrain that also beat "old" is recorded after: the model it beat is gone.
    registry.record(_outcome("later", promotion=_promotion("old/gpt")))
    assert registry.champion()["run_id"] == "late"
    _, rows = registry.query(
        "SELECT run_id, promoted, reason, decided_at FROM promotions ORDER BY run_id"
    )
    assert [row[:2] for row in rows] == [("late", True), ("later", False), ("old", True)]
    assert rows[1][2] == (
        "better by 0.1; not promoted after all: the champion changed from old/gpt to late/gpt "
        "before this run was recorded"
    )
    assert {row[3] for row in rows} == {DECIDED}


def test_a_run_ending_while_the_registry_is_held_open_is_recorded_by_the_next(workspace, caplog):
    registry = _start(workspace, "r1")
    metrics = _waiting_outcome(workspace, "r1")
    folder = metrics.parent
    with (
        registry_held_open(workspace.registry_path) as holder,
        caplog.at_level(logging.WARNING, logger="storage.pending_outcome"),
    ):
        recorded = _record("r1", "completed", metrics, models=[_model(1.9)])
    assert recorded is False
    said = caplog.text
    # Named by its command line: DuckDB names the program alone, a python for any of them.
    assert f"yet: process {holder} ({sys.executable} -c import duckdb, sys, time" in said
    assert f"kept in {folder / OUTCOME_FILE}; the next run records it once that process" in said
    assert _status(registry, "r1") == "running"
    assert shown_status("r1", "running", "me@here", GONE) == f"completed ({WAITING})"
    # The next run to open the registry records it as it ended, not as crashed.
    assert registry.close_abandoned_runs("me@here", never_alive, workspace.runs) == []
    assert _status(registry, "r1") == "completed"
    assert not (folder / OUTCOME_FILE).exists()
    _, rows = registry.query(
        "SELECT (SELECT val_bpb FROM models WHERE run_id = 'r1'), "
        "(SELECT count(*) FROM stages WHERE run_id = 'r1' AND stage = 'train'), "
        "(SELECT value FROM metrics WHERE run_id = 'r1' AND key = 'eval/val/bpb')"
    )
    assert rows == [(1.9, 1, 1.9)]
    assert shown_status("r1", "completed", "me@here", GONE) == "completed"


def test_an_outcome_left_in_a_workspace_moved_since_is_recorded_with_its_metrics(workspace):
    # outcome.json names the run's metrics by their absolute path: recorded after a `mv` of
    # the workspace, the run had its models but none of its metrics, without a word.
    _start(workspace, "r1")
    metrics = _waiting_outcome(workspace, "r1")
    with registry_held_open(workspace.registry_path):
        assert _record("r1", "completed", metrics, models=[_model(1.9)]) is False
    moved = workspace.root.rename(workspace.root.with_name("moved"))
    registry = RunRegistry(moved / "registry.duckdb")
    assert registry.close_abandoned_runs("me@here", never_alive, moved / "runs") == []
    _, rows = registry.query("SELECT status, (SELECT value FROM metrics WHERE key = "
                             "'eval/val/bpb') FROM runs")  # fmt: skip
    assert rows == [("completed", 1.9)]


def test_a_registry_damaged_at_a_run_s_end_keeps_its_outcome_to_record_once_repaired(
    workspace, caplog
):
    registry = _start(workspace, "r1")
    backup = workspace.registry_path.read_bytes()
    with open(workspace.registry_path, "r+b") as database:
        database.truncate(len(backup) // 3)
    with caplog.at_level(logging.WARNING, logger="storage.pending_outcome"):
        assert _record("r1", "failed", error="ValueError: the run's own error") is False
    assert "run r1 is failed but not in the registry yet: " in caplog.text
    assert "cannot write to the registry" in caplog.text
    assert "once the registry can be written again" in caplog.text
    workspace.registry_path.write_bytes(backup)  # restored from a backup
    assert registry.close_abandoned_runs("me@here", never_alive, workspace.runs) == []
    assert registry.find_run("r1")["error"] == "ValueError: the run's own error"


def test_a_later_record_of_the_same_run_replaces_the_outcome_left_before(workspace):
    registry = _start(workspace, "r1")
    write_pending_outcome(workspace.runs / "r1", _outcome("r1"))
    assert _record("r1", "failed", error="ValueError: late") is True
    assert not (workspace.runs / "r1" / OUTCOME_FILE).exists()
    registry.close_abandoned_runs("me@here", never_alive, workspace.runs)
    assert _status(registry, "r1") == "failed"


@pytest.mark.parametrize("damage", ["cut short", "unrecordable"])
def test_an_outcome_that_cannot_be_recorded_is_set_aside_and_its_run_closed(
    workspace, caplog, damage
):
    registry = _start(workspace, "r1")
    folder = workspace.runs / "r1"
    if damage == "cut short":
        folder.mkdir()
        (folder / OUTCOME_FILE).write_text('{"run_id": "r1", "status": "comp')
        said = "not a run outcome"
    else:  # readable, but its corpus lacks what the registry records of one
        outcome = _outcome("r1")
        outcome.datasets[0].stats = {"documents": 4}
        write_pending_outcome(folder, outcome)
        said = "KeyError"
    with caplog.at_level(logging.WARNING, logger="storage.registry"):
        assert registry.close_abandoned_runs("me@here", never_alive, workspace.runs) == ["r1"]
    kept = folder / UNRECORDED_FILE
    assert "run r1 left an outcome that cannot be recorded (" in caplog.text
    assert said in caplog.text and f"it is kept in {kept}" in caplog.text
    assert registry.find_run("r1")["error"].startswith(CRASHED)
    assert kept.exists() and not (folder / OUTCOME_FILE).exists(), "kept, out of the way"
    _start(workspace, "r2")  # the next run starts, without tripping on it again
    assert registry.close_abandoned_runs("me@here", never_alive, workspace.runs) == ["r2"]


def test_an_outcome_left_just_before_its_run_is_found_gone_is_recorded_not_crashed(workspace):
    """The run waited out the registry, left its outcome and ended while the next run was
    looking for outcomes: that next run finds its process gone, and then its outcome."""
    registry = _start(workspace, "r1")

    def ended_after_leaving_its_outcome(pid: int) -> bool:
        write_pending_outcome(workspace.runs / "r1", _outcome("r1"))
        return False

    assert registry.close_abandoned_runs("me@here", ended_after_leaving_its_outcome,
                                         workspace.runs) == []  # fmt: skip
    assert _status(registry, "r1") == "completed"
    assert registry.find_model("r1")["val_bpb"] == 1.9
    assert not (workspace.runs / "r1" / OUTCOME_FILE).exists()


def test_an_outcome_that_ended_after_its_run_was_recorded_replaces_the_record(workspace):
    """The run's success was recorded (by itself, or by another run from its file), then the
    run failed while the registry was held open: its failure, the later outcome, is recorded
    by the next run, as a later record of the same run would be, and only once."""
    registry = _start(workspace, "r1")
    registry.record(_outcome("r1"))  # completed at 10:30
    failed = _outcome("r1", status="failed", error="OSError: late",
                      ended_at=datetime(2026, 12, 5, 10, 31, tzinfo=UTC))  # fmt: skip
    write_pending_outcome(workspace.runs / "r1", failed)
    assert registry.record_pending_outcomes(workspace.runs) == ["r1"]
    assert (_status(registry, "r1"), registry.find_run("r1")["error"]) == (
        "failed",
        "OSError: late",
    )
    assert not (workspace.runs / "r1" / OUTCOME_FILE).exists()
    write_pending_outcome(workspace.runs / "r1", failed)  # left again by a process stopped
    assert registry.record_pending_outcomes(workspace.runs) == []  # between record and removal
    assert not (workspace.runs / "r1" / OUTCOME_FILE).exists()


def test_recording_a_run_again_keeps_the_alias_its_model_holds(workspace):
    registry = _start(workspace, "r1")
    registry.record(_outcome("r1", promotion=_promotion()))
    registry.record(_outcome("r1", status="failed", error="late"))
    assert registry.champion()["run_id"] == "r1"


def test_outcomes_of_recorded_runs_are_removed_and_of_unknown_runs_kept(workspace):
    registry = _start(workspace, "r1")
    registry.record(_outcome("r1", status="failed"))
    write_pending_outcome(workspace.runs / "r1", _outcome("r1"))
    write_pending_outcome(workspace.runs / "elsewhere", _outcome("elsewhere"))
    assert registry.record_pending_outcomes(workspace.runs) == []
    assert _status(registry, "r1") == "failed", "a recorded run is never recorded again"
    assert not (workspace.runs / "r1" / OUTCOME_FILE).exists()
    assert read_pending_outcome(workspace.runs / "elsewhere") == _outcome("elsewhere")


def test_an_outcome_in_another_runs_folder_is_refused(tmp_path):
    write_pending_outcome(tmp_path / "r2", _outcome("r1"))
    with pytest.raises(ValueError, match=r"r2/outcome\.json: the outcome of run r1, not of r2"):
        read_pending_outcome(tmp_path / "r2")


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_registry_wait_that_is_not_seconds_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("LMFORGE_REGISTRY_WAIT_S", value)
    with pytest.raises(RegistryError, match=f"LMFORGE_REGISTRY_WAIT_S='{value}': not a number"):
        RunRegistry(Path("registry.duckdb"))
    if value == "soon":  # every command says it in one line: `runs` gave a traceback
        from tests.conftest import run_cli

        # `run` before its flow starts (it failed the flow, after the server's start-up).
        for command in (("runs",), ("runs", "show", "x"), ("sql", "SELECT 1"), ("run",)):
            said = run_cli(*command, check=False)
            assert said.returncode == 1 and "Traceback" not in said.stderr
            assert said.stderr.startswith("error: LMFORGE_REGISTRY_WAIT_S='soon': not a number")


def test_a_write_cut_short_by_a_full_disk_leaves_no_staging_file(tmp_path, monkeypatch):
    """A full disk failed the write of `outcome.json.partial-…` and left it in the run's
    folder, half written, for nothing to remove."""
    import errno

    from lm.atomic_files import write_text_atomically

    def write_half_then_fail(self, text, *args, **kwargs):
        with open(self, "w", encoding="utf-8") as out:
            out.write(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomically(tmp_path / "outcome.json", '{"run_id": "x"}')
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_finds_many_runs_gone_says_it_records_them(workspace, caplog):
    """Closing hundreds of killed runs (their logs loaded) took a run 24 s with no line."""
    for run_id in ("r1", "r2", "r3"):
        registry = _start(workspace, run_id)
    with caplog.at_level(logging.INFO, logger="storage.registry"):
        closed = registry.close_abandoned_runs("me@here", never_alive, workspace.runs)
    assert sorted(closed) == ["r1", "r2", "r3"]
    assert "recording what 3 runs of this host whose process is gone left (r" in caplog.text
