"""`lmforge runs` — filters, compare, export — and the README's run-history queries, driven
through the real CLI on real registries."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from flows.runs_cli import EARLIEST, LATEST, config_differences, flatten_config, parse_since
from storage.registry import ModelRecord, RunRegistry, StageRecord
from tests.conftest import REPO, cli_in_process, run_cli
from tests.helpers import prose, registry_at_schema, write_config

NOW = datetime.now()


def _config(max_steps: int, kind: str, sources: list[str]) -> dict:
    return {
        "name": "x",
        "ingest": {"sources": [{"path": path, "format": "auto"} for path in sources]},
        "model": {"kind": kind, "n_layer": 2},
        "train": {"max_steps": max_steps, "learning_rate": 0.001},
    }


# run id → status, preset, age, model kinds with their val bpb, config
HISTORY = {
    "r-gpt-new": ("completed", "names", timedelta(hours=2), {"gpt": 2.25},
                  _config(100, "gpt", ["a"])),
    "r-mlp-old": ("completed", "default", timedelta(days=10), {"mlp": 2.9},
                  _config(100, "mlp", ["a"])),
    "r-ladder": ("completed", "default", timedelta(days=3), {"mlp": 2.8, "gpt": 2.5},
                 _config(200, "gpt", ["a", "b"])),
    "r-failed": ("failed", "names", timedelta(hours=1), {}, _config(100, "gpt", ["a"])),
}  # fmt: skip
# A continued model: 3,000 tokens of its own on top of the 6,000 its starting weights had.
TOKENS = {("r-ladder", "gpt"): {"tokens_seen": 3000, "tokens_trained": 9000}}


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A workspace whose registry holds HISTORY, written through RunRegistry as a flow would."""
    home = tmp_path_factory.mktemp("history")
    registry = RunRegistry(home / "registry.duckdb")
    for run_id, (status, preset, age, models, config) in HISTORY.items():
        registry.start_run(
            {"run_id": run_id, "status": "running", "preset": preset, "started_at": NOW - age,
             "config": config, "command": f"lmforge run {preset}"}
        )  # fmt: skip
        metrics = home / f"{run_id}.jsonl"
        metrics.write_text(
            json.dumps({"key": "tokens/train", "step": 0, "value": 5000, "ts": NOW.isoformat()})
            + "\n"
            + json.dumps({"key": "train/lr", "step": 9, "value": 3e-05, "ts": NOW.isoformat()})
        )
        stages = [
            StageRecord("ingest", "k", status == "completed", 0.5),
            StageRecord("train", "k2", False, 12.0),
        ]
        records = [
            ModelRecord(kind, kind, "d", f"artifacts/train/{run_id}-{kind}", "t", "c",
                        {}, {"val_bpb": bpb, "parameters": 1000, **TOKENS.get((run_id, kind), {})})
            for kind, bpb in models.items()
        ]  # fmt: skip
        registry.finish_run(
            run_id,
            status,
            NOW - age + timedelta(minutes=1),
            stages,
            metrics_file=metrics,
            models=records,
        )
    return home


def listed_runs(stdout: str) -> list[str]:
    return re.findall(r"^│ (r-[\w-]+)", stdout, flags=re.MULTILINE)


def test_runs_lists_newest_first_and_filters_by_status_since_preset_and_model_kind(history):
    def runs(*options: str) -> list[str]:
        return listed_runs(run_cli("runs", *options, home=history).stdout)

    assert runs() == ["r-failed", "r-gpt-new", "r-ladder", "r-mlp-old"]
    assert runs("--status", "completed", "--limit", "2") == ["r-gpt-new", "r-ladder"]
    assert runs("--since", "2d") == ["r-failed", "r-gpt-new"]
    since_date = (NOW - timedelta(days=5)).date().isoformat()
    assert runs("--since", since_date, "--preset", "default") == ["r-ladder"]
    assert runs("--model-kind", "mlp") == ["r-ladder", "r-mlp-old"]  # a ladder's model counts


def test_runs_of_a_model_kind_show_that_kinds_val_bits_per_byte(history):
    """r-ladder trained an mlp (2.8) and a gpt (2.5): listed for its mlp, it showed the gpt's."""

    def val_bpb(*options: str) -> str:
        shown = cli_in_process("runs", *options, home=history).stdout
        row = next(line for line in shown.splitlines() if line.startswith("│ r-ladder"))
        return re.findall(r"│ (\d\.\d+) +│", row)[-1]

    assert val_bpb() == "2.5" and val_bpb("--model-kind", "gpt") == "2.5"
    assert val_bpb("--model-kind", "mlp") == "2.8"


def test_runs_in_a_narrow_terminal_keeps_each_run_id_on_one_line(history, monkeypatch):
    """In 80 columns each run id was folded over five lines ("20261 / 207-1 / ..."), to be
    copied a piece at a time; the other columns narrow instead."""
    from flows import cli

    monkeypatch.setattr(cli.console, "width", 80)
    shown = cli_in_process("runs", home=history).stdout
    assert max(len(line) for line in shown.splitlines()) <= 80
    assert listed_runs(shown) == ["r-failed", "r-gpt-new", "r-ladder", "r-mlp-old"]
    assert "│ r-ladder " in shown and "│ r-mlp-old " in shown  # whole, not r-lad / der
    # The least useful columns are left out, not every column folded a few characters a line
    # (h147: "fai / led", a start time over 8 lines).
    header = shown.splitlines()[1]
    assert "deployment" not in header and "kept_documents" not in header
    assert "status" in header and "val_bpb" in header
    assert len([line for line in shown.splitlines() if line.startswith("│")]) == 4  # a line each
    monkeypatch.setattr(cli.console, "width", 200)  # room for every column: all shown
    assert "deployment" in cli_in_process("runs", home=history).stdout.splitlines()[1]


def test_runs_as_csv_and_json_lines_give_every_run_and_value_whole(history, monkeypatch):
    """For a program: `runs` had only a table, its digests cut to 12 characters and its times
    without their zone, its columns left out in a narrow terminal."""
    from flows import cli

    monkeypatch.setattr(cli.console, "width", 60)  # no column is left out for a program
    lines = cli_in_process("runs", "--format", "json", "--status", "completed",
                           home=history).stdout.splitlines()  # fmt: skip
    records = [json.loads(line) for line in lines]
    assert [record["run_id"] for record in records] == ["r-gpt-new", "r-ladder", "r-mlp-old"]
    ladder = records[1]
    assert ladder["models"] == "mlp gpt" and ladder["val_bpb"] == 2.5
    assert ladder["status"] == "completed" and ladder["status_note"] is None
    assert ladder["preset"] == "default" and ladder["seconds"] == 60.0
    assert "deployment" in ladder and "kept_documents" in ladder
    assert "T" in ladder["started"]  # ISO 8601, as JSON readers parse it
    started = datetime.fromisoformat(ladder["started"])
    assert started.utcoffset() is not None  # a moment, read the same in any zone
    assert abs(started - (NOW - HISTORY["r-ladder"][2]).astimezone()) < timedelta(seconds=1)
    rows = cli_in_process("runs", "--format", "csv", "--limit", "2", home=history).stdout
    header, *data = rows.splitlines()
    assert header.startswith("run_id,status,status_note,preset,deployment,started,")
    assert [row.split(",")[0] for row in data] == ["r-failed", "r-gpt-new"]


def test_runs_for_a_program_keep_a_running_run_s_recorded_status(tmp_path):
    """`runs --format json` gave "running (process gone: killed?)" as the status: a program
    testing for "running" missed the run. The recorded status stays; the note is beside it."""
    from storage.processes import this_host

    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run({"run_id": "r-killed", "status": "running", "preset": "x",
                        "started_at": NOW, "hostname": this_host(), "pid": 2**22 + 1})  # fmt: skip
    [record] = [json.loads(line) for line in cli_in_process(
        "runs", "--format", "json", home=tmp_path).stdout.splitlines()]  # fmt: skip
    assert record["status"] == "running" and "process gone" in record["status_note"]
    assert "process gone" in cli_in_process("runs", home=tmp_path).stdout


def test_runs_rejects_a_bad_since_and_an_unknown_status(history):
    bad_since = run_cli("runs", "--since", "yesterday", check=False, home=history)
    assert bad_since.returncode == 1 and "--since 'yesterday': expected an age" in bad_since.stderr
    bad_status = run_cli("runs", "--status", "complete", check=False, home=history)
    assert bad_status.returncode == 1 and "--status 'complete': no such status" in bad_status.stderr
    bad_kind = run_cli("runs", "--model-kind", "transformer", check=False, home=history)
    assert bad_kind.returncode == 1  # it listed nothing, as if no run had trained one
    assert "--model-kind 'transformer': not a model kind (bigram-count, bigram" in bad_kind.stderr


def test_runs_show_formats_metric_values_as_compare_does(history):
    """Raw floats: a count read 5000.0, a learning rate 3e-05 or 0.000753295668…"""
    shown = cli_in_process("runs", "show", "r-gpt-new", home=history).stdout
    assert re.search(r"│ tokens/train\s+│ 0\s+│ 5,000\s+│", shown)
    assert "\nseconds: 60.00\n" in shown  # the run's own time too (110.219991)
    assert re.search(r"│ train/lr\s+│ 9\s+│ 3e-05\s+│", shown)


def test_a_run_whose_process_is_gone_is_shown_as_killed_without_writing(tmp_path):
    from storage.processes import this_host

    ended = subprocess.Popen(["true"])
    ended.wait()  # its pid now names no process
    registry = RunRegistry(tmp_path / "registry.duckdb")
    for run_id, host, pid in (
        ("r-killed", this_host(), ended.pid),
        ("r-alive", this_host(), os.getpid()),
        ("r-elsewhere", "someone@another-machine", ended.pid),
    ):
        registry.start_run({"run_id": run_id, "status": "running", "started_at": NOW,
                            "hostname": host, "pid": pid})  # fmt: skip
    before = (tmp_path / "registry.duckdb").read_bytes()
    listing = run_cli("runs", home=tmp_path).stdout
    statuses = dict(re.findall(r"^│ (r-[\w-]+)\s*│ ([^│]*?)\s*│", listing, flags=re.MULTILINE))
    assert statuses == {
        "r-killed": "running (process gone: killed?)",
        "r-alive": "running",
        "r-elsewhere": "running",  # another machine's processes cannot be seen from here
    }
    shown = run_cli("runs", "show", "r-killed", home=tmp_path).stdout
    assert "status: running (process gone: killed?)" in shown
    assert "stages: none recorded yet" in shown
    assert (tmp_path / "registry.duckdb").read_bytes() == before  # reads never write
    empty = run_cli("runs", "show", "", check=False, home=tmp_path)
    assert empty.returncode == 1 and "no run id given" in empty.stderr


def test_runs_show_gives_a_crashed_runs_stages_the_times_its_journal_recorded(tmp_path):
    """Not when the next run closed it: how far it got and when, and the stage it was killed
    in, with when that started."""
    from storage.stage_journal import JOURNAL_FILE

    started = datetime(2026, 12, 4, 10, 0, 0)
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run({"run_id": "r-crashed", "status": "running", "started_at": started,
                        "hostname": "me@here", "pid": 4242})  # fmt: skip
    journal = tmp_path / "runs" / "r-crashed" / JOURNAL_FILE
    journal.parent.mkdir(parents=True)
    lines = [
        {"event": "started", "stage": "ingest", "at": "2026-12-04T10:00:01"},
        {"event": "finished", "stage": "ingest", "cache_key": "k", "cached": False,
         "seconds": 4.0, "at": "2026-12-04T10:00:05.250000"},
        {"event": "started", "stage": "train/gpt", "at": "2026-12-04T10:00:07"},
    ]  # fmt: skip
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
    registry.close_abandoned_runs("me@here", lambda pid: False, tmp_path / "runs")

    shown = run_cli("runs", "show", "r-crashed", home=tmp_path).stdout

    assert "stages it finished before it crashed" in shown
    row = r"^│ ingest\s*│ ran\s*│ 4\.0\s*│ 2026-12-04 10:00:05\s*│"
    assert re.search(row, shown, flags=re.MULTILINE), shown
    assert "(during stage train/gpt, started 2026-12-04 10:00:07 UTC)" in shown


TRUNCATED_REGISTRY_READERS = [
    ("runs",),
    ("runs", "show", "r1"),
    ("runs", "compare", "r1", "r2"),
    ("runs", "export", "--parquet", "{tmp}/exported"),
    ("report", "r1"),
    ("generate", "r1"),
    ("sql", "SELECT * FROM runs"),
    ("corpus", "stats"),
]


@pytest.mark.parametrize("command", TRUNCATED_REGISTRY_READERS, ids=" ".join)
def test_a_truncated_registry_is_one_line_naming_it_and_is_left_as_it_was(tmp_path, command):
    path = tmp_path / "registry.duckdb"
    registry = RunRegistry(path)
    for run_id in ("r1", "r2"):
        registry.start_run({"run_id": run_id, "status": "completed", "started_at": NOW})
    # Cut where the header still opens and the tables' blocks are gone, as a full disk leaves it.
    assert path.stat().st_size > 300_000
    os.truncate(path, 300_000)
    before = path.read_bytes()
    arguments = [argument.format(tmp=tmp_path) for argument in command]
    result = cli_in_process(*arguments, check=False, home=tmp_path)
    said = " ".join(result.stderr.split())
    assert result.returncode == 1
    assert said.startswith(f"error: {path}: cannot "), said
    assert "if the file is damaged or cut short, restore it from a backup" in said
    assert "Traceback" not in result.stderr
    assert path.read_bytes() == before


def test_size_counts_the_corpus_tokens_of_the_newest_run_of_the_same_data(tmp_path):
    """Of the preset's completed runs, the newest that read the same data with the same
    tokenizer settings: a run pointed at other files by `--set` counted other tokens."""
    from lm.config import load_config

    registry = RunRegistry(tmp_path / "registry.duckdb")
    same = load_config("default").model_dump(mode="json")
    for source in same["ingest"]["sources"]:  # recorded before sources had a delimiter
        del source["delimiter"]
    other_files = load_config("default", ['ingest.sources=["other.txt"]']).model_dump(mode="json")
    # A run that failed after encoding (an ablation's failed arm) counted its tokens too.
    runs = {"r-old": ("completed", same, 5000, 4), "r-other": ("completed", other_files, 7000, 2),
            "r-same": ("failed", same, 6000, 3)}  # fmt: skip
    for run_id, (status, config, tokens, age) in runs.items():
        started = NOW - timedelta(hours=age)
        registry.start_run({"run_id": run_id, "status": "running", "preset": "default",
                            "started_at": started, "config": config})  # fmt: skip
        metrics = tmp_path / f"{run_id}.jsonl"
        metrics.write_text(json.dumps({"key": "tokens/train", "step": 0, "value": tokens,
                                       "ts": NOW.isoformat()}))  # fmt: skip
        registry.finish_run(run_id, status, NOW - timedelta(hours=age, minutes=-1), [],
                            metrics_file=metrics)  # fmt: skip

    default = run_cli("size", "default", home=tmp_path).stdout
    assert re.search(r"tokens in the train split of run r-same\s*│\s*6,000", default), default
    pointed = run_cli("size", "default", "--set", 'ingest.sources=["other.txt"]', home=tmp_path)
    assert re.search(r"of run r-other\s*│\s*7,000", pointed.stdout)
    elsewhere = run_cli("size", "default", "--set", "tokenizer.vocab_size=999", home=tmp_path)
    assert "tokens in the train split" not in elsewhere.stdout  # no run of that tokenizer


def test_size_of_a_char_preset_reads_the_vocabulary_of_its_newest_run(tmp_path):
    from storage.registry import StageRecord, TokenizerRecord

    unrun = run_cli("size", "names", check=False, home=tmp_path)
    assert unrun.returncode == 1
    assert "pass --vocab-size (or run names once with these" in unrun.stderr
    registry = RunRegistry(tmp_path / "registry.duckdb")
    from lm.config import load_config

    config = load_config("names").model_dump(mode="json")
    # The newest trained no model (looked for through its models, it never counted); a run
    # whose tokenizer stage never finished has no vocabulary to give.
    runs = {"r-old": ("completed", 30, 3), "r-new": ("completed", 33, 2),
            "r-bad": ("failed", 40, 1)}  # fmt: skip
    for run_id, (status, vocabulary, age) in runs.items():
        started = NOW - timedelta(hours=age)
        registry.start_run({"run_id": run_id, "status": "running", "preset": "names",
                            "started_at": started, "config": config})  # fmt: skip
        stats = {"kind": "char", "vocab_size": vocabulary, "bytes_per_token": 1.0,
                 "vocab_used_fraction": 1.0, "byte_fallback_rate": 0.0}  # fmt: skip
        stages = [StageRecord("tokenizer", "k", False, 1.0, f"t-{run_id}", "tok")]
        registry.finish_run(
            run_id, status, NOW - timedelta(hours=age, minutes=-1),
            [] if status == "failed" else stages,
            tokenizers=[] if status == "failed" else [
                TokenizerRecord(f"t-{run_id}", "c", "tok", stats)
            ],
            models=[] if run_id == "r-new" else [
                ModelRecord("gpt", "gpt", "d", "m", f"t-{run_id}", "c", {}, {})
            ],
        )  # fmt: skip

    sized = run_cli("size", "names", home=tmp_path).stdout
    given = run_cli("size", "names", "--vocab-size", "33", home=tmp_path).stdout
    other = run_cli("size", "names", "--vocab-size", "30", home=tmp_path).stdout

    said = " ".join(sized.split())
    assert "vocabulary: 33 characters, those of run r-new's char tokenizer" in said
    table = sized.split("vocabulary:")[0]
    assert table == given and table != other  # the parameters a 33-character vocabulary gives
    # Other data or tokenizer settings make another vocabulary: the runs' is not this one.
    for setting in ('tokenizer.unknown_chars="bytes"', 'ingest.sources=["other.txt"]'):
        elsewhere = run_cli("size", "names", "--set", setting, check=False, home=tmp_path)
        assert elsewhere.returncode == 1 and "pass --vocab-size" in elsewhere.stderr, setting


def test_compare_shows_config_differences_model_metrics_and_stage_times(history):
    output = run_cli("runs", "compare", "r-gpt-new", "r-ladder", home=history).stdout
    differences = dict(re.findall(r"^│ ([\w.\[\]]+)\s+│ (.+?)\s+│", output, flags=re.MULTILINE))
    assert differences["train.max_steps"] == "100"
    assert differences["ingest.sources[1].path"] == "—"  # only the ladder has a second source
    assert "model.n_layer" not in differences and "train.learning_rate" not in differences
    assert re.search(r"│ val_bpb \(gpt\)\s+│ 2\.2500\s+│ 2\.5000\s+│", output)
    assert re.search(r"│ val_bpb \(mlp\)\s+│ —\s+│ 2\.8000\s+│", output)
    assert re.search(r"│ ingest\s+│ 0\.50 cached\s+│ 0\.50 cached\s+│", output)
    assert re.search(r"│ tokens_seen \(gpt\)\s+│ —\s+│ 3,000\s+│", output)
    assert re.search(r"│ tokens_trained \(gpt\)\s+│ —\s+│ 9,000\s+│", output)
    same = run_cli("runs", "compare", "r-gpt-new", "r-gpt", check=False, home=history)
    assert same.returncode == 1 and "the same run is named twice" in same.stderr


def test_compare_says_when_identical_configs_ran_under_other_code(tmp_path):
    """An upgrade between two runs showed "config: identical" and nothing of the code: the
    figures' difference looked like chance (git_sha is empty outside a checkout)."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    config = {"train": {"max_steps": 5}}
    for run_id, code in (("r-before", "a" * 64), ("r-after", "b" * 64)):
        registry.start_run({"run_id": run_id, "status": "completed", "started_at": NOW,
                            "config": config, "code_digest": code})  # fmt: skip
    output = run_cli("runs", "compare", "r-before", "r-after", home=tmp_path).stdout
    assert "config: identical, but lmforge's code differs (code_digest)" in output
    assert re.search(r"│ code_digest\s+│ a{12}\s+│ b{12}\s+│", output)
    registry.start_run({"run_id": "r-again", "status": "completed", "started_at": NOW,
                        "config": config, "code_digest": "b" * 64})  # fmt: skip
    same = run_cli("runs", "compare", "r-after", "r-again", home=tmp_path).stdout
    assert "config: identical\n" in same


def test_compare_reads_a_registry_from_before_tokens_trained(tmp_path):
    """Schema 3 (no `tokens_trained` column): compared as it is, the column shown as absent,
    and the file is not migrated by a command that only reads."""
    path = tmp_path / "registry.duckdb"
    connection = registry_at_schema(path, 3)
    for run_id, bpb in (("old-a", 2.5), ("old-b", 2.25)):
        connection.execute(
            "INSERT INTO runs (run_id, status, started_at, config) "
            "VALUES (?, 'completed', now(), '{}')",
            [run_id],
        )
        connection.execute(
            "INSERT INTO models (run_id, label, kind, tokens_seen, val_bpb, created_at) "
            "VALUES (?, 'gpt', 'gpt', 4096, ?, now())",
            [run_id, bpb],
        )
    connection.close()
    output = run_cli("runs", "compare", "old-a", "old-b", home=tmp_path).stdout
    assert re.search(r"│ val_bpb \(gpt\)\s+│ 2\.5000\s+│ 2\.2500\s+│", output)
    assert re.search(r"│ tokens_seen \(gpt\)\s+│ 4,096\s+│ 4,096\s+│", output)
    assert re.search(r"│ tokens_trained \(gpt\)\s+│ —\s+│ —\s+│", output)
    assert RunRegistry(path).schema_version() == 3


def test_show_reads_a_retrain_of_a_registry_from_before_promotions_against(tmp_path):
    """Schema 5 (no `promotions.against`): `runs show` failed on every run as "cannot read
    the registry (Binder Error ... against)" until a new run migrated the file."""
    path = tmp_path / "registry.duckdb"
    connection = registry_at_schema(path, 5)
    connection.execute("INSERT INTO runs (run_id, status, started_at, config) "
                       "VALUES ('old-r', 'completed', now(), '{}')")  # fmt: skip
    connection.execute(
        "INSERT INTO promotions (run_id, label, alias, promoted, candidate_val_bpb, "
        "champion_val_bpb, reason, decided_at) VALUES ('old-r', 'gpt', 'champion', true, 2.5, "
        "NULL, 'scratch: trained from scratch (no champion yet)', now())"
    )
    connection.close()
    shown = cli_in_process("runs", "show", "old-r", home=tmp_path).stdout
    assert "retrain: promoted to champion (candidate val bpb 2.5000): scratch:" in shown
    assert RunRegistry(path).schema_version() == 5


def test_export_to_an_empty_folder_name_is_refused_not_written_where_one_is(history):
    """`--parquet ''` wrote every table into the working folder (as a path, "" is ".")."""
    empty = run_cli("runs", "export", "--parquet", "", check=False, home=history)
    assert empty.returncode == 1 and "--parquet '': name a folder" in empty.stderr
    assert not list(REPO.glob("*.parquet"))  # run_cli's working folder


def test_export_writes_every_table_as_parquet_without_leftovers(history, tmp_path):
    out = tmp_path / "export"
    run_cli("runs", "export", "--parquet", str(out), home=history)
    registry = RunRegistry(history / "registry.duckdb")
    _, tables = registry.query("SELECT table_name FROM duckdb_tables() ORDER BY table_name")
    assert sorted(p.name for p in out.iterdir()) == [f"{t}.parquet" for (t,) in tables]
    reader = duckdb.connect()
    for (table,) in tables:
        _, expected = registry.query(f"SELECT count(*) FROM {table}")
        exported = reader.execute(f"SELECT count(*) FROM '{out / table}.parquet'").fetchall()
        assert exported == expected, table
    _, models = registry.query("SELECT run_id, kind, val_bpb FROM models ORDER BY ALL")
    query = f"SELECT run_id, kind, val_bpb FROM '{out}/models.parquet' ORDER BY ALL"
    assert reader.execute(query).fetchall() == models


def test_parse_since_takes_ages_and_dates_in_local_time_unless_given_an_offset(local_zone):
    local_zone("America/New_York")  # UTC-5 in November
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now) == datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
    assert parse_since("2w", now) == datetime(2026, 11, 9, 12, 0, tzinfo=UTC)
    assert parse_since("2026-11-20", now) == datetime(2026, 11, 20, 5, tzinfo=UTC)
    assert parse_since("2026-11-20T08:15", now) == datetime(2026, 11, 20, 13, 15, tzinfo=UTC)
    assert parse_since("2026-11-20T08:15+00:00", now) == datetime(2026, 11, 20, 8, 15, tzinfo=UTC)
    assert parse_since("99999999d", now) == EARLIEST  # past the calendar: every run
    # Local times at the calendar's ends have no UTC instant (OverflowError, a traceback).
    assert parse_since("0001-01-01", now) == EARLIEST
    assert parse_since("9999-12-31T23:59", now) == LATEST
    with pytest.raises(ValueError, match="'7 days'"):
        parse_since("7 days", now)


def test_config_differences_flatten_nested_tables_and_lists():
    a = {"train": {"lr": 1e-3, "steps": 10}, "sources": [{"path": "a"}], "probes": ["x", "y"]}
    b = {"train": {"lr": 1e-3, "steps": 20}, "sources": [{"path": "a"}, {"path": "b"}],
         "probes": ["x"]}  # fmt: skip
    assert flatten_config(a) == {
        "train.lr": 1e-3, "train.steps": 10, "sources[0].path": "a", "probes": ["x", "y"],
    }  # fmt: skip
    assert config_differences([a, b]) == [
        ("probes", ['["x", "y"]', '["x"]']),
        ("sources[1].path", ["—", "b"]),
        ("train.steps", ["10", "20"]),
    ]


def readme_history_queries() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Run history\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.DOTALL)


def test_readme_history_queries_run_on_a_real_run(workspace, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(24):
        (texts / f"{index}.txt").write_text(prose(index, 150))
    model = """
[split]
val = 0.3

[model]
kind = "bigram-count"

[train]
block_size = 16

[eval]
batches = 2
samples = 0
"""
    config = str(write_config(tmp_path / "c.toml", [{"path": str(texts)}], model))
    run_cli("run", config)
    run_cli("run", config)  # served from the cache: its model is recorded again, one model
    queries = readme_history_queries()
    assert len(queries) == 3
    expected_columns = [
        ("kind", "best_val_bpb", "best_run"),
        ("stage", "cache_hit_rate"),
        ("corpus", "kept", "kept_added"),
    ]
    outputs = [run_cli("sql", query).stdout for query in queries]
    for output, columns in zip(outputs, expected_columns, strict=True):
        header = output.splitlines()[1]
        assert all(column in header for column in columns), output
    best_per_kind, per_stage, corpus_growth = outputs
    assert re.search(r"^│ bigram-count\s+│ \d\.\d+ +│ \S+ +│ 1 +│", best_per_kind, flags=re.M)
    assert re.search(r"^│ train\s+│ 2 ", per_stage, flags=re.MULTILINE), per_stage
    assert len(re.findall(r"^│ \d{4}-", corpus_growth, flags=re.MULTILINE)) == 1


def test_a_run_killed_mid_training_is_shown_crashed_with_its_finished_stages_and_curve(
    workspace, tmp_path
):
    """`kill -9` during training: when the next run opens, it records the killed one as
    `crashed` from the stage journal and metrics it left, and `runs show` lists the data stages
    it finished and the training curve up to the kill."""
    import signal
    import time

    from flows.pipeline import open_run
    from lm.config import load_config
    from tests.conftest import lmforge_command

    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(10):
        (texts / f"doc{index:02d}.txt").write_text(prose(index, 150))
    config = str(write_config(tmp_path / "c.toml", [{"path": str(texts)}]))
    settings = ['model.kind="gpt"', "model.block_size=16", "model.n_layer=1", "model.n_head=2",
                "model.n_embd=16", "train.max_steps=100000", "train.micro_batch=4",
                "train.global_batch=4", "split.val=0.3"]  # fmt: skip
    process = subprocess.Popen(
        lmforge_command("run", config, *(f"--set={s}" for s in settings)), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    curves = (workspace.artifacts / "train").glob
    deadline = time.monotonic() + 240
    while not any(curve.stat().st_size > 200 for curve in curves("*.work/metrics.jsonl")):
        assert process.poll() is None, "the run ended before training logged its curve"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    registry = RunRegistry(workspace.registry_path)
    [(killed,)] = registry.query("SELECT run_id FROM runs")[1]

    open_run(load_config(config, settings), config, settings)  # the next run

    run = registry.find_run(killed)
    assert run["status"] == "crashed" and run["ended_at"] > run["started_at"]
    assert "during stage train" in run["error"]
    _, stages = registry.query("SELECT stage FROM stages WHERE run_id = ? ORDER BY rowid", [killed])
    assert stages == [("ingest",), ("clean",), ("tokenizer",), ("encode",)]
    _, [(curve_steps,)] = registry.query(
        "SELECT count(*) FROM metrics WHERE run_id = ? AND model = 'gpt' AND key = 'train/loss'",
        [killed],
    )
    assert curve_steps > 0
    shown = run_cli("runs", "show", killed).stdout
    assert "status: crashed" in shown and "stages it finished before it crashed" in shown
    for stage in ("ingest", "clean", "tokenizer", "encode"):
        assert re.search(rf"^│ {stage}\s*│ ran\s*│", shown, flags=re.MULTILINE), stage
    assert re.search(r"^│ gpt\s*│ train/loss\s*│", shown, flags=re.MULTILINE)


def test_compare_gives_a_stage_a_run_ran_twice_a_row_each_time():
    # A retrain encodes the corpus and then the new documents: keyed by name, the second
    # (cached) hid the first (ran).
    from flows.runs_cli import _stage_rows

    rows = [
        ("a", "clean", 1.0, False),
        ("a", "encode", 2.0, False),
        ("a", "encode", 0.5, True),
        ("b", "clean", 1.5, True),
        ("b", "encode", 3.0, False),
    ]
    assert _stage_rows(["a", "b"], rows) == [
        ("clean", "1.00", "1.50 cached"), ("encode", "2.00", "3.00"),
        ("encode #2", "0.50 cached", "—"),
    ]  # fmt: skip


@pytest.mark.parametrize("cwd", [None, "/somewhere else"])
def test_runs_show_says_when_the_reproduce_command_would_run_other_settings(tmp_path, cwd):
    """The config file edited since the run: the reproduce line ran other settings silently.
    A line that starts by going to the run's working folder is read the same way."""
    from flows.pipeline import reproduce_command
    from lm.config import load_config
    from tests.helpers import write_config

    config = write_config(
        tmp_path / "c.toml", [{"path": str(tmp_path)}], "[train]\nmax_steps = 30\n"
    )
    overrides = ["train.learning_rate=0.002"]
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run({"run_id": "r1", "status": "completed", "started_at": NOW,
                        "config": load_config(str(config), overrides).model_dump(mode="json"),
                        "command": reproduce_command(str(config), overrides, cwd=cwd)})  # fmt: skip

    def note() -> str:
        shown = run_cli("runs", "show", "r1", home=tmp_path).stdout
        return " ".join(shown.split("reproduce", 1)[1].split())

    assert "note" not in note()
    config.write_text(config.read_text().replace("max_steps = 30", "max_steps = 31"))
    assert f"note: {config} now loads other settings than this run recorded (train.max_steps): " \
           "the file was edited, or lmforge's defaults changed" in note()  # fmt: skip
    config.unlink()
    assert "note: the reproduce command no longer loads its config" in note()


def test_runs_show_prints_a_long_reproduce_command_on_one_line(tmp_path):
    """Piped output is 200 columns wide: a longer command was cut into two lines, and the line
    copied from a log ran without its last overrides."""
    command = (
        "lmforge run configs/names.toml "
        + " ".join(f"--set models.{i}.train.max_steps=30" for i in range(1, 4))
        + " --set train.eval_every=10 --set train.checkpoint_every=10 --set seed=7"
    )
    assert len("reproduce: " + command) > 200
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run({"run_id": "r1", "status": "completed", "started_at": NOW,
                        "command": command})  # fmt: skip
    shown = cli_in_process("runs", "show", "r1", home=tmp_path).stdout
    assert f"reproduce: {command}\n" in shown


def test_a_source_url_s_token_hidden_in_the_registry_is_no_edit_of_the_config(tmp_path):
    """The registry records a source URL's token as `***`: compared with the file that still
    holds it, every such run was "now loads other settings than this run recorded", and `size`
    never found the char vocabulary its earlier run had counted (h147)."""
    from flows.cli import _newest_same_data
    from flows.runs_cli import config_drift
    from lm.config import load_config
    from lm.text.url_credentials import without_url_credentials

    url = "https://h.example/a.txt?token=SECRET1"
    config = write_config(tmp_path / "c.toml", [{"path": url}])
    settings = load_config(str(config))
    recorded = json.dumps(without_url_credentials(settings.model_dump(mode="json")))
    assert "SECRET1" not in recorded
    assert config_drift(f"lmforge run {config}", recorded) is None
    assert _newest_same_data(settings, [("r1", 46, recorded, None)]) == ("r1", 46)
    # A run recorded before tokens were hidden still reads as the same data.
    before = json.dumps(settings.model_dump(mode="json"))
    assert _newest_same_data(settings, [("r0", 45, before, None)]) == ("r0", 45)


def test_a_setting_added_since_a_run_is_no_edit_of_its_config(tmp_path):
    """`config_drift` compares only the settings the run recorded: one a later lmforge added
    (absent from the recorded config) is not said to be an edit of the file."""
    from flows.pipeline import reproduce_command
    from flows.runs_cli import config_drift
    from lm.config import load_config
    from tests.helpers import write_config

    config = write_config(tmp_path / "c.toml", [{"path": str(tmp_path)}], "")
    recorded = load_config(str(config)).model_dump(mode="json")
    del recorded["train"]["warmup_steps"]  # as recorded before lmforge had it
    command = reproduce_command(str(config), [])
    assert config_drift(command, recorded) is None
    recorded["train"]["max_steps"] += 1
    assert "(train.max_steps)" in config_drift(command, json.dumps(recorded))


def test_compare_rows_each_model_s_metrics_in_order_then_the_run_s_data_metrics():
    from flows.runs_cli import MODEL_METRICS, _metric_rows

    values = dict.fromkeys(MODEL_METRICS)
    gpt = ("a", "gpt", *(values | {"val_bpb": 2.5, "steps": 100}).values())
    mlp = ("b", "mlp", *(values | {"val_bpb": 2.75}).values())
    data = [("b", "corpus/kept", 12.0), ("a", "retrain/promoted", 1.0)]
    rows = _metric_rows(["a", "b"], [mlp, gpt], data)
    per_model = [f"{name} ({label})" for label in ("gpt", "mlp") for name in MODEL_METRICS]
    assert [row[0] for row in rows] == [*per_model, "corpus/kept", "retrain/promoted"]
    shown = {row[0]: row[1:] for row in rows}
    assert shown["val_bpb (gpt)"] == ("2.5000", "—") and shown["steps (gpt)"] == ("100", "—")
    assert shown["val_bpb (mlp)"] == ("—", "2.7500")
    assert shown["corpus/kept"] == ("—", "12") and shown["retrain/promoted"] == ("1", "—")


def test_compare_beside_a_refused_run_claims_no_identical_config(tmp_path):
    """A refused run recorded no settings: the one run that did has nothing to be compared
    with, and "config: identical" would claim what nobody measured."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    registry.start_run({"run_id": "r-ran", "status": "completed", "started_at": NOW,
                        "config": {"train": {"max_steps": 5}}})  # fmt: skip
    registry.start_run({"run_id": "r-refused", "status": "failed", "started_at": NOW})
    output = run_cli("runs", "compare", "r-ran", "r-refused", home=tmp_path).stdout
    assert "config: none recorded for r-refused" in output
    assert "identical" not in output


def test_a_small_metric_keeps_its_significant_digits():
    from flows.runs_cli import _number

    assert _number(0.000753295668) == "0.0007533"  # a rate, not 0.0008
    assert _number(3e-05) == "3e-05" and _number(0.25) == "0.2500" and _number(400.0) == "400"
