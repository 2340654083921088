"""The DuckDB run registry: schema and migrations, batched writes, and the one-writer rule."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from storage.heartbeat import HEARTBEAT_FILE, Heartbeat
from storage.metrics_log import MetricsLog
from storage.registry import (
    CRASHED,
    MIGRATIONS,
    DatasetRecord,
    ModelRecord,
    PromotionRecord,
    RegistryError,
    RunRegistry,
    StageRecord,
)
from storage.stage_journal import JOURNAL_FILE, LiveMetrics, StageJournal
from tests.helpers import registry_at_schema, registry_held_open


def _run_row(run_id: str) -> dict:
    return {"run_id": run_id, "status": "running", "started_at": datetime.now(UTC), "seed": 1}


def test_first_write_creates_the_schema_at_the_newest_version(tmp_path):
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    registry.start_run(_run_row("r2"))  # migrations are not applied twice
    assert registry.schema_version() == len(MIGRATIONS)
    _, rows = registry.query("SELECT version FROM schema_version")
    assert rows == [(version,) for version in range(1, len(MIGRATIONS) + 1)]


def test_finish_run_records_stages_datasets_and_bulk_loads_metrics(tmp_path):
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        "\n".join(
            json.dumps({"key": "loss", "step": step, "value": 4.0 - step, "ts": "2026-11-23T00:00"})
            for step in range(3)
        )
    )
    stats = {
        "documents": 3, "kept": 2, "kept_chars": 10, "kept_bytes": 12,
        "flagged": {"too_few_words": 1}, "removed": {"too_few_words": 1},
        "split_documents": {"train": 2}, "split_bytes": {"train": 12},
    }  # fmt: skip
    registry.finish_run(
        "r1",
        status="completed",
        ended_at=datetime.now(UTC),
        stages=[StageRecord("clean", "clean-k", False, 1.5, "d1", "corpus/clean-k", {"a": 1})],
        datasets=[DatasetRecord("d1", "clean-k", "corpus/clean-k", stats)],
        corpus_digest="d1",
        metrics_file=metrics,
    )
    _, rows = registry.query(
        "SELECT r.status, r.corpus_digest, d.kept, f.removed, m.value "
        "FROM runs r JOIN datasets d ON d.digest = r.corpus_digest "
        "JOIN dataset_filters f ON f.dataset_digest = d.digest "
        "JOIN latest_metrics m ON m.run_id = r.run_id AND m.key = 'loss'"
    )
    assert rows == [("completed", "d1", 2, 1, 2.0)]
    assert registry.find_run("r")["run_id"] == "r1"
    for typed in ("%1", "_1"):  # no SQL wildcards: a prefix is matched as typed
        with pytest.raises(RegistryError, match="no run"):
            registry.find_run(typed)


def test_a_run_recorded_twice_is_replaced_not_duplicated(tmp_path):
    """A flow that fails after recording its success (publishing the run card, say) records
    the run again as failed: one set of stages and metrics, and its models kept."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"key": "loss", "step": 1, "value": 2.0, "ts": "2026-12-04"}))
    stages = [StageRecord("train", "k", False, 1.0, "d", "artifacts/train/k", {})]
    registry.finish_run("r1", "completed", datetime.now(UTC), stages, metrics_file=metrics,
                        models=[_model("gpt", 1.5)])  # fmt: skip
    registry.finish_run("r1", "failed", datetime.now(UTC), stages, metrics_file=metrics,
                        error="OSError: disk full")  # fmt: skip
    counts = {
        table: registry.query(f"SELECT count(*) FROM {table} WHERE run_id = 'r1'")[1][0][0]
        for table in ("stages", "artifacts", "metrics", "models")
    }
    assert counts == {"stages": 1, "artifacts": 1, "metrics": 1, "models": 1}  # was: 2, 2, 2, 1
    assert registry.find_run("r1")["status"] == "failed"


def test_a_registry_named_by_a_string_path_reads(tmp_path):
    """A notebook names files by strings: `str.with_name` was an AttributeError."""
    RunRegistry(tmp_path / "registry.duckdb").start_run(_run_row("r1"))
    registry = RunRegistry(str(tmp_path / "registry.duckdb"))
    assert registry.query("SELECT run_id FROM runs")[1] == [("r1",)]


def test_unknown_run_id_is_a_clear_error(tmp_path):
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    with pytest.raises(RegistryError, match=r"no run with an id \(or Prefect flow run id\) "
                                            r"starting 'zz'"):  # fmt: skip
        registry.find_run("zz")


def test_a_run_is_found_by_its_prefect_flow_run_id_too(tmp_path):
    """The Prefect UI shows flow run ids; lmforge's run id was only to be had through SQL."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    flow_run = "57020a03-aceb-408a-8737-0b93759f8a26"
    registry.start_run(_run_row("20261206-120000-abcdef") | {"flow_run_id": flow_run})
    registry.start_run(_run_row("20261206-120100-fedcba") | {"flow_run_id": "9f" + flow_run[2:]})
    assert registry.find_run(flow_run)["run_id"] == "20261206-120000-abcdef"
    assert registry.find_run("57020a03")["run_id"] == "20261206-120000-abcdef"
    assert registry.find_run("20261206-1201")["flow_run_id"].startswith("9f")


def test_an_ambiguous_run_id_lists_the_newest_matches_and_counts_the_rest(tmp_path):
    # The five oldest were listed, without a word of more: the newest, likeliest meant, hidden.
    registry = RunRegistry(tmp_path / "registry.duckdb")
    for minute in range(7):
        registry.start_run(
            _run_row(f"r{minute}") | {"started_at": datetime(2026, 12, 5, 9, minute, tzinfo=UTC)}
        )
    with pytest.raises(RegistryError) as caught:
        registry.find_run("r")
    assert str(caught.value) == "run id 'r' is ambiguous: r6, r5, r4, r3, r2 and 2 more"


def test_reading_before_any_run_says_how_to_create_the_registry(tmp_path):
    with pytest.raises(RegistryError, match="no registry yet"):
        RunRegistry(tmp_path / "registry.duckdb").query("SELECT 1")


def _write_runs(path: str, prefix: str, count: int) -> None:
    registry = RunRegistry(Path(path))
    for index in range(count):
        registry.start_run(_run_row(f"{prefix}-{index}"))


def _hold_write_lock(path: str, seconds: float, started) -> None:
    registry = RunRegistry(Path(path))
    with registry.writing() as connection:
        connection.execute(
            "INSERT INTO runs (run_id, status, started_at) VALUES ('held', 'x', now())"
        )
        started.set()
        time.sleep(seconds)


def test_concurrent_writer_processes_all_land(tmp_path):
    path = str(tmp_path / "registry.duckdb")
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_runs, args=(path, f"p{i}", 8)) for i in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    _, rows = RunRegistry(Path(path)).query("SELECT count(*) FROM runs")
    assert rows == [(24,)]


def test_reader_waits_for_a_writer_instead_of_failing(tmp_path):
    path = tmp_path / "registry.duckdb"
    RunRegistry(path).start_run(_run_row("first"))
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    holder = context.Process(target=_hold_write_lock, args=(str(path), 1.5, started))
    holder.start()
    assert started.wait(timeout=60)
    began = time.monotonic()
    _, rows = RunRegistry(path).query("SELECT count(*) FROM runs")
    holder.join(timeout=60)
    assert rows == [(2,)], "the reader saw the writer's committed batch"
    assert time.monotonic() - began > 0.5, "the reader waited for the lock"


def _model(label: str, val_bpb: float | None) -> ModelRecord:
    return ModelRecord(
        label=label, kind="gpt", digest=f"train-{label}", path=f"artifacts/train/{label}",
        tokenizer_digest="t", corpus_digest="c", config={"n_layer": 1},
        stats={"parameters": 10, "steps": 5, "val_bpb": val_bpb},
    )  # fmt: skip


def test_models_are_found_by_run_and_label_and_a_run_without_one_says_so(tmp_path):
    registry = RunRegistry(tmp_path / "registry.duckdb")
    for run_id in ("r1", "r2"):
        registry.start_run(_run_row(run_id))
    ladder = [_model("mlp", 2.0), _model("gpt", 1.5)]
    registry.finish_run("r1", "completed", datetime.now(UTC), [], models=ladder)
    registry.finish_run("r2", "failed", datetime.now(UTC), [])
    assert registry.find_model("r1")["label"] == "gpt"  # the top of the ladder
    assert registry.find_model("r1", "mlp")["path"] == "artifacts/train/mlp"
    with pytest.raises(RegistryError, match=r"no model 'rnn' \(models: mlp, gpt\)"):
        registry.find_model("r1", "rnn")
    with pytest.raises(RegistryError, match="r2 \\(failed\\) has no trained model"):
        registry.find_model("r2")
    # A run still going was said to have no model ("its config has no model, or it ended").
    registry.start_run(_run_row("r3"))
    with pytest.raises(RegistryError, match="r3 has no model recorded yet: a run's models are"):
        registry.find_model("r3")
    _, board = registry.query("SELECT label, val_bpb FROM leaderboard")
    assert board == [("gpt", 1.5), ("mlp", 2.0)]


def test_promotion_moves_the_alias_and_records_every_decision(tmp_path):
    registry = RunRegistry(tmp_path / "registry.duckdb")
    decisions = {  # label, promoted, candidate and champion val bpb, why, the champion then
        "r1": (None, True, 1.0, None, "first model", None),
        "r2": (None, False, 1.0, 1.0, "no better", "r1/gpt"),
        "r3": ("gpt", True, 0.9, 1.0, "better by 0.1", "r1/gpt"),
    }
    for minute, (run_id, (label, promoted, candidate, champion, why, against)) in enumerate(
        decisions.items()
    ):
        decided = datetime(2026, 12, 5, 10, minute, tzinfo=UTC)
        promotion = PromotionRecord(label, "champion", promoted, candidate, champion, why, decided,
                                    against)  # fmt: skip
        registry.start_run(_run_row(run_id))
        registry.finish_run(run_id, "completed", decided, [], models=[_model("gpt", candidate)],
                            promotion=promotion)  # fmt: skip
        if run_id == "r2":
            assert registry.champion()["run_id"] == "r1"
    assert registry.champion()["run_id"] == "r3"
    _, rows = registry.query("SELECT count(*) FROM models WHERE alias = 'champion'")
    assert rows == [(1,)]
    _, recorded = registry.query(
        "SELECT run_id, promoted, against FROM promotions ORDER BY decided_at"
    )
    assert recorded == [("r1", True, None), ("r2", False, "r1/gpt"), ("r3", True, "r1/gpt")]


def truncated_registry(tmp_path: Path) -> RunRegistry:
    """A registry cut short after its header, as a full disk or an interrupted copy leaves it."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    with open(registry.path, "r+b") as file:
        file.truncate(300_000)
    return registry


def test_reading_a_truncated_registry_is_a_registry_error_naming_it(tmp_path):
    registry = truncated_registry(tmp_path)
    with pytest.raises(RegistryError) as raised:
        registry.find_run("r1")
    assert str(raised.value).startswith(f"{registry.path}: cannot read the registry (IO Error: ")
    assert "restore it from a backup, or move it aside" in str(raised.value)


@pytest.mark.parametrize(
    "cause", ["Read-only file system", "No space left on device", "Operation not permitted"]
)
def test_a_registry_that_cannot_be_written_is_not_advised_away_as_damaged(tmp_path, cause):
    # "move it aside and the next run starts a new one" for a healthy file on a read-only
    # mount: following it left the history behind. (Tests run as root: no mode bit stops
    # them, so DuckDB's error is made as it says it.)
    registry = RunRegistry(tmp_path / "registry.duckdb")
    error = duckdb.IOException(f'IO Error: Cannot open file "{registry.path}": {cause}')
    said = str(registry.unusable(error, "open"))
    assert said.startswith(f"{registry.path}: cannot open the registry (IO Error: ")
    assert said.endswith("the file is whole: make its folder writable, or free disk space")
    assert "move it aside" not in said


def test_a_block_that_fails_its_checksum_is_said_at_once_as_damage_not_waited_on(tmp_path):
    # DuckDB's message ("... in block at location 4096") held "lock": it was retried as a
    # held file for the whole wait (120 s by default), then said without the advice.
    import random
    import time

    registry = RunRegistry(tmp_path / "registry.duckdb", timeout_s=60)
    registry.start_run(_run_row("r1"))
    with open(registry.path, "r+b") as file:
        file.seek(12288)  # past DuckDB's three header blocks
        file.write(random.Random(0).randbytes(80_000))
    for action in (lambda: registry.find_run("r1"), lambda: registry.start_run(_run_row("r2"))):
        started = time.monotonic()
        with pytest.raises(RegistryError) as raised:
            action()
        assert time.monotonic() - started < 10
        said = str(raised.value)
        assert said.startswith(f"{registry.path}: cannot ")  # read it, or open it to write
        assert (
            " the registry (" in said
            and "checksum" in said
            and "restore it from a backup, or move it aside" in said
        )


def test_writing_to_a_truncated_registry_is_a_registry_error_and_changes_nothing(tmp_path):
    registry = truncated_registry(tmp_path)
    before = registry.path.read_bytes()
    with pytest.raises(RegistryError, match=f"{registry.path}: cannot write to the registry"):
        registry.start_run(_run_row("r2"))
    assert registry.path.read_bytes() == before


def test_an_export_writes_every_row_of_every_table(tmp_path):
    """Rows go out in no particular order (keeping the table's order tripled the memory):
    every one of them, nonetheless, and nothing else."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    metrics = tmp_path / "m.jsonl"
    lines = [{"key": f"k{step % 3}", "step": step, "value": step / 7, "ts": "2026-12-07T00:00:00"}
             for step in range(5000)]  # fmt: skip
    metrics.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    registry.finish_run("r1", "completed", datetime.now(UTC), [], metrics_file=metrics)
    written = registry.export_parquet(tmp_path / "out")
    assert written["metrics"][1] == 5000 and written["runs"][1] == 1
    with duckdb.connect() as connection:
        exported = connection.execute(
            "SELECT key, step, value FROM read_parquet(?) ORDER BY step",
            [str(written["metrics"][0])],
        ).fetchall()
    assert exported == [(line["key"], line["step"], line["value"]) for line in lines]


def test_an_export_that_cannot_write_its_file_names_that_file_not_the_registry(
    tmp_path, monkeypatch
):
    import storage.registry

    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(storage.registry.random, "getrandbits", lambda bits: 0xABC)
    # The first table's file, a link to a folder that does not exist: it cannot be created.
    (out / "artifacts.parquet.partial-000000000abc").symlink_to(tmp_path / "gone" / "file")
    with pytest.raises(RegistryError) as raised:
        registry.export_parquet(out)
    assert str(raised.value).startswith(f"{out / 'artifacts.parquet'}: cannot write it (")


FULL_DISK_WRITER = """
import resource, signal, sys
from datetime import UTC, datetime
from pathlib import Path
from storage.registry import RegistryError, RunRegistry

registry = RunRegistry(Path(sys.argv[1]))
registry.start_run({"run_id": "r1", "status": "running", "started_at": datetime.now(UTC)})
# Files may grow to 64 KiB no more (a full disk, as DuckDB sees it): the log of the next write
# cannot be written, and its COMMIT fails.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
try:
    registry.start_run({"run_id": "r2", "status": "running", "started_at": datetime.now(UTC),
                        "config": {"text": "x" * 300_000}})
except RegistryError as error:
    print(error)
"""


def test_a_commit_that_fails_is_a_registry_error_with_its_cause_and_changes_nothing(tmp_path):
    """A failed COMMIT has rolled back already: the ROLLBACK after it raised "cannot rollback
    - no transaction is active" in place of the disk's error, and that DuckDB error was not a
    `RegistryError`, so the run's outcome was not kept for the next run to record."""
    import subprocess
    import sys

    path = tmp_path / "registry.duckdb"
    command = [sys.executable, "-c", FULL_DISK_WRITER, str(path)]
    repository = Path(__file__).parent.parent
    written = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=repository)
    assert written.returncode == 0, written.stderr
    said = written.stdout.strip()
    assert said.startswith(f"{path}: cannot write to the registry (") and "Failed to commit" in said
    assert "File too large" in said and "no transaction is active" not in said
    assert RunRegistry(path).query("SELECT run_id FROM runs")[1] == [("r1",)]


def test_a_registry_another_process_holds_open_names_that_process_not_damage(tmp_path):
    registry = RunRegistry(tmp_path / "registry.duckdb", timeout_s=0.5)
    registry.start_run(_run_row("r1"))
    with registry_held_open(registry.path) as reader, pytest.raises(RegistryError) as raised:
        registry.start_run(_run_row("r2"))
    said = str(raised.value)
    assert said.startswith(f"{registry.path}: cannot open the registry: process {reader} (")
    assert "close it" in said and "damaged" not in said
    registry.start_run(_run_row("r2"))  # once it is closed, writing works again
    assert registry.find_run("r2")["status"] == "running"


def test_a_reader_kept_out_by_a_writer_is_told_to_wait_or_close_it(tmp_path):
    """A Python connection open to write kept `lmforge sql` out, which was told that DuckDB
    lets no process write while one reads, and that a run's stages are cached."""
    from storage.query import sql_session

    registry = RunRegistry(tmp_path / "registry.duckdb", timeout_s=0.5)
    registry.start_run(_run_row("r1"))
    said = []
    with registry_held_open(registry.path, read_only=False) as writer:
        for read in (lambda: registry.find_run("r1"), lambda: sql_session(registry, tmp_path)):
            with pytest.raises(RegistryError) as raised, read():
                pass
            said.append(str(raised.value))
    for message in said:
        assert message.startswith(f"{registry.path}: cannot read the registry: process ")
        assert f"process {writer} (" in message and "held it open to write" in message
        assert "read_only=True" in message and "cached" not in message


STARTED = datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC)


def _abandoned_run(registry: RunRegistry, run_id: str, pid: int = 4242) -> None:
    registry.start_run({"run_id": run_id, "status": "running", "started_at": STARTED,
                        "hostname": "me@here", "pid": pid})  # fmt: skip


def _metric_line(key: str, step: int, value: float, **extra) -> str:
    return json.dumps({"key": key, "step": step, "value": value, "ts": "2026-12-04T10:00"} | extra)


def _touch(path: Path, seconds_after_start: int) -> None:
    written = (STARTED + timedelta(seconds=seconds_after_start)).timestamp()
    os.utime(path, (written, written))


def test_a_crashed_run_is_recorded_from_its_stage_journal_and_metrics(tmp_path):
    """A run killed mid-training: its finished stages, its metrics, and the curve training had
    logged in its work folder land in the registry; it ended when its files were last written."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _abandoned_run(registry, "r1")
    folder = tmp_path / "runs" / "r1"
    journal = StageJournal(folder / JOURNAL_FILE)
    journal.started("ingest")
    journal.finished(StageRecord("ingest", "ingest-k", True, 0.2, "d0", "artifacts/ingest/k"))
    journal.started("clean")
    journal.finished(StageRecord("clean", "clean-k", False, 1.5, "d1", "corpus/clean-k", {"a": 1}))
    curve = tmp_path / "artifacts" / "train" / "train-k.work" / "metrics.jsonl"
    curve.parent.mkdir(parents=True)
    journal.started("train/gpt", LiveMetrics(curve, "gpt"))
    (folder / "metrics.jsonl").write_text(_metric_line("corpus/kept", 0, 12) + "\n")
    curve.write_text("".join(_metric_line("train/loss", step, 4.0 - step) + "\n"
                             for step in (1, 2, 3)) + '{"key": "train/lo')  # fmt: skip
    _touch(folder / JOURNAL_FILE, 30)
    _touch(folder / "metrics.jsonl", 20)
    _touch(curve, 90)  # training wrote last

    assert registry.close_abandoned_runs("me@here", lambda pid: False, tmp_path / "runs") == ["r1"]

    run = registry.find_run("r1")
    assert run["status"] == "crashed"
    assert run["ended_at"] == STARTED + timedelta(seconds=90) and run["seconds"] == 90
    assert "during stage train/gpt" in run["error"]
    _, stages = registry.query(
        "SELECT stage, cached, seconds, output_path, stats FROM stages ORDER BY rowid"
    )
    assert stages == [("ingest", True, 0.2, "artifacts/ingest/k", "{}"),
                      ("clean", False, 1.5, "corpus/clean-k", '{"a": 1}')]  # fmt: skip
    _, artifacts = registry.query("SELECT stage, path FROM artifacts ORDER BY rowid")
    assert artifacts == [("ingest", "artifacts/ingest/k"), ("clean", "corpus/clean-k")]
    _, metrics = registry.query(
        "SELECT model, key, step, value FROM metrics WHERE run_id = 'r1' ORDER BY key, step"
    )
    assert metrics == [(None, "corpus/kept", 0, 12.0), ("gpt", "train/loss", 1, 3.0),
                       ("gpt", "train/loss", 2, 2.0), ("gpt", "train/loss", 3, 1.0)]  # fmt: skip


def test_a_crashed_run_of_a_workspace_moved_since_keeps_its_training_curve(tmp_path):
    # The journal names the curve by its absolute path: after a `mv` of the workspace, the
    # curve was skipped as missing, and prune then removed it.
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    _abandoned_run(RunRegistry(old / "registry.duckdb"), "r1")
    curve = old / "artifacts" / "train" / "train-k.work" / "metrics.jsonl"
    curve.parent.mkdir(parents=True)
    StageJournal(old / "runs" / "r1" / JOURNAL_FILE).started("train/gpt", LiveMetrics(curve, "gpt"))
    curve.write_text("".join(_metric_line("train/loss", step, 4.0 - step) + "\n"
                             for step in (1, 2)))  # fmt: skip
    old.rename(new)
    registry = RunRegistry(new / "registry.duckdb")
    assert registry.close_abandoned_runs("me@here", lambda pid: False, new / "runs") == ["r1"]
    _, metrics = registry.query("SELECT model, key, step FROM metrics ORDER BY step")
    assert metrics == [("gpt", "train/loss", 1), ("gpt", "train/loss", 2)]


def test_a_crashed_run_records_the_corpus_its_clean_stage_built(tmp_path):
    # Its corpus was left out: `corpus stats` and its report could not show what it read.
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _abandoned_run(registry, "r1")
    journal = StageJournal(tmp_path / "runs" / "r1" / JOURNAL_FILE)
    counts = {"documents": 5, "kept": 4, "kept_chars": 40, "kept_bytes": 41,
              "flagged": {"too_few_words": 1}, "removed": {"too_few_words": 1},
              "split_documents": {"train": 3, "val": 1}}  # fmt: skip
    built = STARTED + timedelta(seconds=40)
    journal.finished(StageRecord("clean", "clean-k", False, 1.5, "d1", "corpus/clean-k", counts,
                                 built))  # fmt: skip
    journal.started("tokenizer")
    assert registry.close_abandoned_runs("me@here", lambda pid: False, tmp_path / "runs") == ["r1"]
    _, rows = registry.query(
        "SELECT r.status, d.digest, d.kept, d.train_documents, f.removed, d.created_at "
        "FROM runs r JOIN datasets d ON d.digest = r.corpus_digest "
        "JOIN dataset_filters f ON f.dataset_digest = d.digest"
    )
    # Created when its clean stage finished, not when the crash was recorded (days later).
    assert rows == [("crashed", "d1", 4, 3, 1, built)]


def test_a_stage_journal_line_cut_short_by_the_kill_is_skipped(tmp_path):
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _abandoned_run(registry, "r1")
    journal = StageJournal(tmp_path / "runs" / "r1" / JOURNAL_FILE)
    journal.finished(StageRecord("ingest", "k", False, 0.5))
    with open(journal.path, "a") as out:
        out.write('{"event": "finished", "stage": "clean", "cache_key": "clean-k", "cac')

    registry.close_abandoned_runs("me@here", lambda pid: False, tmp_path / "runs")

    _, stages = registry.query("SELECT stage FROM stages")
    assert stages == [("ingest",)]
    assert registry.find_run("r1")["status"] == "crashed"


def test_an_ablation_arm_that_failed_before_the_kill_is_not_named_as_running(tmp_path):
    """An ablation goes on after an arm fails: the kill came during the next arm, and the
    failed arm's curve is not the crashed run's."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _abandoned_run(registry, "r1")
    journal = StageJournal(tmp_path / "runs" / "r1" / JOURNAL_FILE)
    failed_curve = tmp_path / "failed.jsonl"
    failed_curve.write_text(_metric_line("train/loss", 1, 9.0) + "\n")
    journal.started("train/wide-s1", LiveMetrics(failed_curve, "wide-s1"))
    journal.failed("train/wide-s1")
    journal.started("train/deep-s1", LiveMetrics(tmp_path / "not-written-yet.jsonl", "deep-s1"))

    registry.close_abandoned_runs("me@here", lambda pid: False, tmp_path / "runs")

    error = registry.find_run("r1")["error"]
    assert error.startswith(f"{CRASHED} (during stage train/deep-s1, started ")
    assert "wide-s1" not in error
    assert registry.query("SELECT count(*) FROM metrics")[1] == [(0,)]


def _journal_line(event: str, stage: str, seconds_after_start: int, **record) -> str:
    at = (STARTED + timedelta(seconds=seconds_after_start)).isoformat()
    return json.dumps({"event": event, "stage": stage, **record, "at": at}) + "\n"


def test_a_crashed_runs_stages_finished_when_its_journal_says_not_when_it_was_closed(
    tmp_path, local_zone
):
    """The next run may close it days later: its stages and their artifacts keep the times
    their journal lines were written, and the stage it never finished is named in the error
    with when it started (it gets no row: it has no seconds, no output), in UTC: the error is
    text, read in every zone (it was the closing process's local time, Tokyo's here)."""
    local_zone("Asia/Tokyo")
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _abandoned_run(registry, "r1")
    journal = tmp_path / "runs" / "r1" / JOURNAL_FILE
    journal.parent.mkdir(parents=True)
    ingest = {"cache_key": "i-k", "cached": False, "seconds": 4.0, "output_path": "artifacts/i"}
    journal.write_text(
        _journal_line("started", "ingest", 1)
        + _journal_line("finished", "ingest", 5, **ingest)
        + _journal_line("started", "clean", 5)
        + _journal_line("finished", "clean", 6, cache_key="c-k", cached=True, seconds=0.5)
        + _journal_line("started", "train/gpt", 7)
    )

    registry.close_abandoned_runs("me@here", lambda pid: False, tmp_path / "runs")

    _, stages = registry.query("SELECT stage, finished_at FROM stages ORDER BY rowid")
    assert stages == [("ingest", STARTED + timedelta(seconds=5)),
                      ("clean", STARTED + timedelta(seconds=6))]  # fmt: skip
    _, artifacts = registry.query("SELECT stage, created_at FROM artifacts")
    assert artifacts == [("ingest", STARTED + timedelta(seconds=5))]
    error = registry.find_run("r1")["error"]
    assert error == f"{CRASHED} (during stage train/gpt, started 2026-12-04 10:00:07 UTC)"


def test_a_journal_time_that_cannot_be_read_is_recorded_as_unknown(tmp_path):
    """Not as the time the run was closed: a stage without a time has a null `finished_at`."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _abandoned_run(registry, "r1")
    journal = tmp_path / "runs" / "r1" / JOURNAL_FILE
    journal.parent.mkdir(parents=True)
    record = {"event": "finished", "stage": "ingest", "cache_key": "k", "cached": False,
              "seconds": 1.0, "at": "soon"}  # fmt: skip
    journal.write_text(json.dumps(record) + '\n{"event": "started", "stage": "clean"}\n')

    registry.close_abandoned_runs("me@here", lambda pid: False, tmp_path / "runs")

    assert registry.query("SELECT stage, finished_at FROM stages")[1] == [("ingest", None)]
    assert registry.find_run("r1")["error"] == f"{CRASHED} (during stage clean)"


def test_a_run_killed_in_a_stage_that_writes_nothing_ended_at_its_last_heartbeat(tmp_path):
    """Cleaning logs no metrics: a run killed 17 s into it last wrote its journal when the
    stage started, and read as 0.2 s long. Its heartbeat file, touched while it lived, dates
    the end."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _abandoned_run(registry, "r1")
    folder = tmp_path / "runs" / "r1"
    journal = StageJournal(folder / JOURNAL_FILE)
    journal.started("ingest")
    journal.finished(StageRecord("ingest", "ingest-k", True, 0.2))
    journal.started("clean")
    _touch(folder / JOURNAL_FILE, 0)
    (folder / HEARTBEAT_FILE).touch()
    _touch(folder / HEARTBEAT_FILE, 17)

    registry.close_abandoned_runs("me@here", lambda pid: False, tmp_path / "runs")

    run = registry.find_run("r1")
    assert run["status"] == "crashed"
    assert (run["ended_at"], run["seconds"]) == (STARTED + timedelta(seconds=17), 17)


def test_a_heartbeat_touches_its_file_until_stopped(tmp_path):
    path = tmp_path / "runs" / "r1" / HEARTBEAT_FILE
    heartbeat = Heartbeat(path, interval=0.02).start()
    assert path.is_file()  # touched at once, its folder made
    os.utime(path, (0, 0))
    deadline = time.monotonic() + 10
    while path.stat().st_mtime == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.stat().st_mtime > 0  # touched again
    heartbeat.stop()
    heartbeat.stop()  # twice: no harm
    os.utime(path, (0, 0))
    time.sleep(0.1)
    assert path.stat().st_mtime == 0 and not heartbeat._thread.is_alive()


def test_a_crashed_run_that_left_no_files_ends_when_it_started_and_live_runs_are_kept(tmp_path):
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _abandoned_run(registry, "gone", pid=4242)
    _abandoned_run(registry, "alive", pid=4343)

    closed = registry.close_abandoned_runs("me@here", lambda pid: pid == 4343, tmp_path / "runs")

    assert closed == ["gone"]
    gone, alive = registry.find_run("gone"), registry.find_run("alive")
    assert (gone["status"], gone["ended_at"], gone["seconds"]) == ("crashed", STARTED, 0)
    assert gone["error"] == "the process ended without recording an outcome"
    assert (alive["status"], alive["ended_at"]) == ("running", None)
    _, counts = registry.query(
        "SELECT (SELECT count(*) FROM stages), (SELECT count(*) FROM metrics)"
    )
    assert counts == [(0, 0)]


def test_a_crashed_run_whose_journal_cannot_be_recorded_is_still_closed_and_spoils_no_other(
    tmp_path, caplog
):
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _abandoned_run(registry, "odd", pid=4242)
    _abandoned_run(registry, "fine", pid=4343)
    odd = tmp_path / "runs" / "odd" / JOURNAL_FILE
    odd.parent.mkdir(parents=True)
    odd.write_text('{"event": "finished", "stage": "ingest", "seconds": "soon"}\n')
    StageJournal(tmp_path / "runs" / "fine" / JOURNAL_FILE).finished(
        StageRecord("ingest", "k", False, 0.5)
    )

    with caplog.at_level("WARNING", logger="storage.registry"):
        closed = registry.close_abandoned_runs("me@here", lambda pid: False, tmp_path / "runs")

    assert sorted(closed) == ["fine", "odd"]
    assert registry.find_run("odd")["status"] == registry.find_run("fine")["status"] == "crashed"
    assert registry.find_run("odd")["error"] == "the process ended without recording an outcome"
    assert registry.query("SELECT run_id, stage FROM stages")[1] == [("fine", "ingest")]
    assert f"run odd crashed; what it left in {odd.parent} could not be recorded" in caplog.text


def test_times_written_in_one_time_zone_are_the_same_instants_read_in_another(tmp_path, local_zone):
    """A worker at UTC-5 writes a run's journal and metrics; a shell at UTC+9 records them:
    the registry holds when they happened, not the writer's wall clock read as the reader's."""
    local_zone("America/New_York")
    before = datetime.now(UTC).replace(microsecond=0)
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1") | {"pid": 4242, "hostname": "me@here"})
    folder = tmp_path / "runs" / "r1"
    StageJournal(folder / JOURNAL_FILE).finished(StageRecord("ingest", "k", False, 0.5))
    MetricsLog(folder / "metrics.jsonl").log("corpus/kept", 12)
    after = datetime.now(UTC) + timedelta(seconds=1)

    local_zone("Asia/Tokyo")
    registry.close_abandoned_runs("me@here", lambda pid: False, tmp_path / "runs")

    _, rows = registry.query(
        "SELECT r.started_at, r.ended_at, s.finished_at, m.ts FROM runs r "
        "JOIN stages s USING (run_id) JOIN metrics m USING (run_id)"
    )
    assert len(rows) == 1 and all(before <= at <= after for at in rows[0]), rows
    assert 0 <= registry.find_run("r1")["seconds"] < 60


def _schema_4_registry(path: Path) -> None:
    """A registry as lmforge wrote it before times were instants: local time, no zone."""
    connection = registry_at_schema(path, 4)
    connection.execute(
        "INSERT INTO runs (run_id, status, started_at, ended_at) "
        "VALUES ('old', 'completed', '2026-07-01 12:00', '2026-07-01 12:30')"
    )
    connection.execute(
        "INSERT INTO metrics VALUES ('old', 'loss', 1, 2.5, '2026-07-01 12:10', NULL)"
    )
    connection.close()


def test_migration_5_reads_an_old_registrys_local_times_in_the_migrating_machines_zone(
    tmp_path, local_zone
):
    path = tmp_path / "registry.duckdb"
    local_zone("Europe/Paris")  # UTC+2 in July: where the old times were written
    _schema_4_registry(path)
    registry = RunRegistry(path)

    registry.start_run(_run_row("new"))

    assert registry.schema_version() == len(MIGRATIONS) == 6
    _, rows = registry.query(
        "SELECT r.started_at, r.ended_at, m.ts FROM runs r JOIN metrics m USING (run_id)"
    )
    noon_in_paris = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
    assert rows == [(noon_in_paris, noon_in_paris + timedelta(minutes=30),
                     noon_in_paris + timedelta(minutes=10))]  # fmt: skip
    _, naive_columns = registry.query(
        "SELECT table_name || '.' || column_name FROM duckdb_columns() "
        "WHERE data_type = 'TIMESTAMP' AND NOT internal"
    )
    assert naive_columns == []


def test_a_registry_from_a_newer_lmforge_is_read_but_not_written(tmp_path):
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    with duckdb.connect(str(registry.path)) as connection:
        connection.execute(f"INSERT INTO schema_version VALUES ({len(MIGRATIONS) + 1}, now())")
    before = registry.path.read_bytes()

    with pytest.raises(RegistryError, match=r"written by a newer lmforge .*upgrade lmforge"):
        registry.start_run(_run_row("r2"))

    assert registry.find_run("r1")["status"] == "running"
    assert registry.path.read_bytes() == before


def test_metrics_an_earlier_lmforge_wrote_without_an_offset_are_read_as_local_time(
    tmp_path, local_zone
):
    """Recording a crashed run's metrics file from before the upgrade: `read_json` typed its
    times as UTC, 5½ hours off here, after the run had ended."""
    local_zone("Asia/Kolkata")
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        json.dumps({"key": "old", "step": 1, "value": 1.0, "ts": "2026-12-06T17:05:00"}) + "\n"
        + json.dumps({"key": "new", "step": 1, "value": 1.0, "ts": "2026-12-06T11:35:00+00:00"})
    )  # fmt: skip
    registry.finish_run("r1", "completed", datetime.now(UTC), [], metrics_file=metrics)
    _, rows = registry.query("SELECT key, ts FROM metrics ORDER BY key")
    instant = datetime(2026, 12, 6, 11, 35, tzinfo=UTC)
    assert rows == [("new", instant), ("old", instant)]


def test_a_stale_write_ahead_log_is_named_not_the_registry(tmp_path):
    # A registry restored from a copy beside the `.wal` of a later one: DuckDB refuses to replay
    # it, and the advice was to move the registry aside, leaving its whole history behind.
    registry = RunRegistry(tmp_path / "registry.duckdb")
    error = duckdb.IOException(
        f'IO Error: Failure while replaying WAL file "{registry.path}.wal": This WAL was created '
        "for this database file, but the WAL checkpoint iteration does not match the database "
        "file. File checkpoint iteration: 9, WAL checkpoint iteration: 7"
    )
    said = str(registry.unusable(error, "read"))
    assert said.startswith(f"{registry.path}: cannot read the registry (IO Error: Failure while")
    assert f"move {registry.path}.wal aside, not the registry" in said
    assert "the next `lmforge run` starts a new one" not in said


def test_a_name_no_later_migration_adds_is_not_explained_by_an_older_schema():
    # A typo in `lmforge sql` on a registry not yet migrated was told that a run would add it.
    from storage.registry import older_schema_note

    connection = duckdb.connect()
    connection.execute("CREATE TABLE runs (run_id VARCHAR)")
    connection.execute("CREATE TABLE promotions (run_id VARCHAR)")
    said = {}
    for query in ("SELECT against FROM promotions", "SELECT p.against FROM promotions p",
                  "SELECT * FROM models", "SELECT nothing FROM runs",
                  "SELECT r.nothing FROM runs r", "SELECT * FROM runz"):  # fmt: skip
        with pytest.raises(duckdb.Error) as error:
            connection.execute(query)
        said[query] = older_schema_note(2, error.value)
    assert all("schema version 2 of" in said[query] for query in list(said)[:3]), said
    assert not any(said[query] for query in list(said)[3:]), said


def test_a_corpus_version_keeps_each_split_s_counts_and_each_filter_s_numbers_apart(tmp_path):
    """Every count of a `datasets` row in its own column: train, val and test swapped, or a
    filter's flagged and removed, and `lmforge corpus stats` said so without a test noticing."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    stats = {
        "documents": 9, "kept": 6, "kept_chars": 60, "kept_bytes": 70,
        "flagged": {"too_few_words": 3, "near_duplicate": 2}, "removed": {"too_few_words": 1},
        "split_documents": {"train": 4, "val": 1, "test": 2},
        "split_bytes": {"train": 40, "val": 10, "test": 20},
    }  # fmt: skip
    ended = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    stage = StageRecord("clean", "clean-k", False, 1.5, "d1", "corpus/clean-k", {})
    registry.finish_run("r1", "completed", ended, [stage],
                        datasets=[DatasetRecord("d1", "clean-k", "corpus/clean-k", stats)],
                        corpus_digest="d1")  # fmt: skip
    _, rows = registry.query(
        "SELECT train_documents, val_documents, test_documents, train_bytes, val_bytes, "
        "test_bytes FROM datasets"
    )
    assert rows == [(4, 1, 2, 40, 10, 20)]
    _, filters = registry.query(
        "SELECT filter, flagged, removed FROM dataset_filters ORDER BY filter"
    )
    assert filters == [("near_duplicate", 2, 0), ("too_few_words", 3, 1)]
    # A stage recorded without its end finished with the run; its artifact is its output's.
    _, stages = registry.query("SELECT finished_at FROM stages")
    _, artifacts = registry.query("SELECT run_id, stage, kind, digest, path FROM artifacts")
    assert stages == [(ended,)]
    assert artifacts == [("r1", "clean", "clean", "d1", "corpus/clean-k")]
    # The same corpus built again by a later run is one version, as first recorded.
    registry.start_run(_run_row("r2"))
    again = stats | {"kept": 5}
    rebuilt = DatasetRecord("d1", "clean-k", "corpus/clean-k", again)
    registry.finish_run("r2", "completed", ended, [], datasets=[rebuilt])
    _, versions = registry.query("SELECT kept FROM datasets")
    assert versions == [(6,)]
    assert registry.query("SELECT count(*) FROM dataset_filters")[1] == [(2,)]


def test_a_second_record_of_a_run_keeps_its_corpus_and_its_metric_lines_models(tmp_path):
    """A later record of a run (its failure after its success) that names no corpus keeps
    the one recorded; metric lines keep the model they name, and lines without a key (a line
    cut short by a kill reads as NULLs) are left out."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        json.dumps({"key": "val/bpb", "step": 1, "value": 2.0, "ts": "2026-12-04T10:00",
                    "model": "mlp"}) + "\n"
        + json.dumps({"key": "loss", "step": 1, "value": 3.0, "ts": "2026-12-04T10:00"}) + "\n"
        + '{"key": "lo'
    )  # fmt: skip
    registry.finish_run("r1", "completed", datetime.now(UTC), [], corpus_digest="d1",
                        metrics_file=metrics)  # fmt: skip
    registry.finish_run("r1", "failed", datetime.now(UTC), [], metrics_file=metrics)
    assert registry.find_run("r1")["corpus_digest"] == "d1"
    _, rows = registry.query("SELECT key, model FROM metrics ORDER BY key")
    assert rows == [("loss", None), ("val/bpb", "mlp")]


def test_a_model_s_training_curve_is_tagged_with_it_over_what_its_lines_say(tmp_path):
    from storage.registry import RunRegistry as Registry

    registry = Registry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    curve = tmp_path / "metrics.jsonl"
    curve.write_text(
        _metric_line("loss", 1, 3.0, model="other") + "\n" + _metric_line("loss", 2, 2.5)
    )
    with registry.writing() as connection:
        Registry._insert_metrics(connection, "r1", curve, "gpt")
    _, rows = registry.query("SELECT step, model FROM metrics ORDER BY step")
    assert rows == [(1, "gpt"), (2, "gpt")]


def test_a_refused_promotion_sets_the_logged_decision_to_0_and_a_rerecord_keeps_the_alias(
    tmp_path,
):
    """A promotion overturned at its record (the champion changed meanwhile) logs
    `retrain/promoted` 0, and only then; a run recorded again keeps the alias it won."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    decided = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(_metric_line("retrain/promoted", 0, 1.0))
    for run_id, against in (("r1", None), ("r2", "r1/gpt"), ("late", "gone/gpt")):
        registry.start_run(_run_row(run_id))
        promotion = PromotionRecord(None, "champion", True, 1.0, None, "better", decided, against)
        recorded = registry.finish_run(run_id, "completed", decided, [], metrics_file=metrics,
                                       models=[_model("gpt", 1.0)],
                                       promotion=promotion)  # fmt: skip
        assert recorded.promoted is (run_id != "late")
    _, logged = registry.query(
        "SELECT run_id, value FROM metrics WHERE key = 'retrain/promoted' ORDER BY run_id"
    )
    assert logged == [("late", 0.0), ("r1", 1.0), ("r2", 1.0)]
    assert registry.champion()["run_id"] == "r2"
    # r2 recorded again (failed after its success): still the champion, one decision recorded.
    promotion = PromotionRecord(None, "champion", True, 1.0, None, "better", decided, "r1/gpt")
    again = registry.finish_run("r2", "failed", decided, [], metrics_file=metrics,
                                models=[_model("gpt", 1.0)], promotion=promotion)  # fmt: skip
    assert again.promoted and registry.champion()["run_id"] == "r2"
    _, decisions = registry.query("SELECT count(*) FROM promotions WHERE run_id = 'r2'")
    assert decisions == [(1,)]


def test_a_promotion_moves_the_alias_to_the_label_it_names_only(tmp_path):
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run(_run_row("r1"))
    decided = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    promotion = PromotionRecord("mlp", "champion", True, 2.0, None, "first", decided, None)
    registry.finish_run("r1", "completed", decided, [], promotion=promotion,
                        models=[_model("mlp", 2.0), _model("gpt", 1.5)])  # fmt: skip
    _, rows = registry.query("SELECT label, alias FROM models ORDER BY label")
    assert rows == [("gpt", None), ("mlp", "champion")]


def test_only_this_host_s_runs_whose_process_is_gone_are_closed(tmp_path):
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _abandoned_run(registry, "gone", pid=4242)
    registry.start_run({"run_id": "elsewhere", "status": "running", "started_at": STARTED,
                        "hostname": "you@there", "pid": 4242})  # fmt: skip
    registry.start_run({"run_id": "no-pid", "status": "running", "started_at": STARTED,
                        "hostname": "me@here"})  # fmt: skip
    closed = registry.close_abandoned_runs("me@here", lambda pid: False, tmp_path / "runs")
    assert closed == ["gone"]
    assert registry.find_run("elsewhere")["status"] == "running"
    assert registry.find_run("no-pid")["status"] == "running"
