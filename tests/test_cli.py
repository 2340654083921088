"""`lmforge` as a user runs it: separate processes, the bundled corpus, concurrency, kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from storage.registry import RunRegistry
from tests.conftest import REPO, cli_in_process, lmforge_command, run_cli
from tests.helpers import prose, readme_sections, write_config


def printed_stage_states(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"│ (\w+)\s*│ (ran|cached)\s*│", stdout))


def completed_digests(workspace) -> list[str]:
    _, rows = RunRegistry(workspace.registry_path).query(
        "SELECT corpus_digest FROM runs WHERE status = 'completed' ORDER BY started_at"
    )
    return [row[0] for row in rows]


def test_sql_is_read_only(workspace, tmp_path):
    readme = readme_sections(tmp_path / "readme")
    run_cli("run", str(write_config(tmp_path / "c.toml", [{"path": str(readme)}])))
    # The queries in this process: 20 subprocesses spent most of the test importing.
    result = cli_in_process("sql", "DELETE FROM runs", check=False)
    assert result.returncode == 1 and "read-only: DELETE statements are refused" in result.stderr
    assert len(completed_digests(workspace)) == 1
    # Values and errors print as they are, never read as Rich markup ('[final]' is a tag).
    shown = cli_in_process("sql", "SELECT 'report [final].txt' AS name").stdout
    assert "report [final].txt" in shown
    # A long result shows its first rows and says so; an empty query and the statements
    # DuckDB files under another type are named as typed.
    long = cli_in_process("sql", "SELECT range AS i, 'x' AS j FROM range(1500)")
    assert re.findall(r"(\d+)\s*│ x", long.stdout) == [str(i) for i in range(1000)]
    assert "the first 1,000 rows are shown, and there are more" in long.stderr
    every = cli_in_process(
        "sql", "--max-rows", "0", "SELECT range AS i, 'x' FROM range(1500)"
    ).stdout
    assert re.findall(r"(\d+)\s*│ x", every) == [str(i) for i in range(1500)]
    for statement, said in (("", "no SQL statement given"), ("/* a comment */", "no SQL"),
                            ("INSTALL httpfs", "INSTALL statements are refused"),
                            ("USE memory", "USE statements are refused")):  # fmt: skip
        result = cli_in_process("sql", statement, check=False)
        assert result.returncode == 1 and said in result.stderr and not result.stdout
    unknown = cli_in_process("runs", "show", "[final]", check=False)
    assert "no run with an id (or Prefect flow run id) starting '[final]'" in unknown.stderr
    # Several statements show a result each (only the last was shown); values stay whole in a
    # table too narrow for them (cut with "…" before), and CSV / JSON Lines give them as data.
    digest = cli_in_process("sql", "SELECT corpus_digest FROM runs").stdout
    both = cli_in_process("sql", "SELECT 'first' AS a; SELECT corpus_digest FROM runs").stdout
    assert "first" in both and "corpus_digest" in both and "…" not in digest + both
    [stored] = [row[0] for row in RunRegistry(workspace.registry_path).query(
        "SELECT corpus_digest FROM runs")[1]]  # fmt: skip
    assert stored in digest.replace("│", "").replace("\n", "").replace(" ", "")
    csv = cli_in_process("sql", "--format", "csv", "SELECT 'a,b' AS x, NULL AS y").stdout
    assert csv == 'x,y\n"a,b",\n'
    # Two results one after the other: the second's header was read as a row of the first.
    for output in ("csv", "json"):
        two = cli_in_process("sql", "--format", output, "SELECT 1 AS x; SELECT 2 AS z", check=False)
        assert two.returncode == 1 and not two.stdout
        assert two.stderr.startswith(f"error: --format {output} gives one result, and 2 statements")
    # CSV and JSON Lines are for programs: every row (cut at 1,000 with exit 0, a file of them
    # looked whole), and values as DuckDB's CSV writes them, not Python's `True`, `['a']`.
    many = "SELECT range AS i, range % 2 = 0 AS even, ['a', 'b'] AS l FROM range(25000)"
    every_row = cli_in_process("sql", "--format", "csv", many)
    assert every_row.stdout.count("\n") == 25001 and not every_row.stderr
    assert every_row.stdout.startswith('i,even,l\n0,true,"[""a"", ""b""]"\n1,false,')
    assert len(cli_in_process("sql", "--format", "json", many).stdout.splitlines()) == 25000
    first = cli_in_process("sql", "--format", "csv", "--max-rows", "3", many)
    assert first.stdout.count("\n") == 4 and "the first 3 rows are shown" in first.stderr
    lines = cli_in_process("sql", "--format", "json", "SELECT run_id, started_at FROM runs").stdout
    [record] = [json.loads(line) for line in lines.splitlines()]
    assert record["run_id"].startswith("2") and record["started_at"][:2] == "20"
    odd = cli_in_process("sql", "--format", "json",
                  "SELECT 'nan'::DOUBLE AS x, 1 AS a, 2 AS a, 3 AS a, 4 AS a_2").stdout  # fmt: skip
    # NaN is no JSON: null; a repeated name is numbered onto no name already there.
    assert json.loads(odd) == {"x": None, "a": 1, "a_3": 2, "a_4": 3, "a_2": 4}
    # A JSON column is data, not a string of it (a program decoded each twice).
    query = ("SELECT '{\"k\": [1, 2]}'::JSON AS j, '{\"k\": 1}' AS s, NULL::JSON AS n, "
             "['{\"b\": 2}'::JSON] AS l")  # fmt: skip
    nested = json.loads(cli_in_process("sql", "--format", "json", query).stdout)
    assert nested == {"j": {"k": [1, 2]}, "s": '{"k": 1}', "n": None, "l": [{"b": 2}]}
    # DuckDB writes files too: over the corpus Parquet, or a new database beside it.
    [parquet] = workspace.corpus.glob("*/documents.parquet")
    before = parquet.read_bytes()
    for statement, kind in (
        (f"COPY (SELECT 1 AS x) TO '{parquet}' (FORMAT parquet)", "COPY"),
        (f"ATTACH '{tmp_path / 'new.duckdb'}' AS n", "ATTACH"),
        (f"EXPORT DATABASE '{tmp_path / 'export'}'", "EXPORT"),
        ("SELECT 1; COPY runs TO 'runs.csv'", "COPY"),
        # `EXPLAIN (ANALYZE)` runs what it explains, as `EXPLAIN ANALYZE` does.
        (f"EXPLAIN (ANALYZE) COPY (SELECT 1 AS x) TO '{parquet}'", "EXPLAIN of COPY"),
    ):
        result = cli_in_process("sql", statement, check=False)
        assert result.returncode == 1 and f"read-only: {kind} statements" in result.stderr
    assert parquet.read_bytes() == before
    assert not (tmp_path / "new.duckdb").exists() and not (tmp_path / "export").exists()
    # A corpus file that cannot be read takes its views away, not the registry's tables.
    with open(parquet, "r+b") as damaged:
        damaged.truncate(100)
    result = run_cli("sql", "SELECT count(*) AS n FROM runs")  # its warning is a log line
    assert re.search(r"│\s*1\s*│", result.stdout)
    assert f"{parquet}: unreadable, so the corpus and clean_corpus views are missing" in (
        result.stderr
    )


def test_unknown_run_id_is_a_clear_error(workspace, tmp_path):
    readme = readme_sections(tmp_path / "readme")
    run_cli("run", str(write_config(tmp_path / "c.toml", [{"path": str(readme)}])))
    result = run_cli("runs", "show", "no-such-run", check=False)
    assert result.returncode == 1 and "flow run id) starting 'no-such-run'" in result.stderr


def test_a_run_made_in_one_time_zone_is_listed_by_its_age_and_local_time_in_another(
    workspace, tmp_path, monkeypatch
):
    """A scheduled retrain on a worker at UTC-5, looked at from a shell at UTC+9: the registry
    holds when the run happened, and each shows it in its own local time."""
    readme = readme_sections(tmp_path / "readme")
    monkeypatch.setenv("TZ", "America/New_York")
    before = datetime.now(UTC).replace(microsecond=0)
    run_cli("run", str(write_config(tmp_path / "c.toml", [{"path": str(readme)}])))
    after = datetime.now(UTC) + timedelta(seconds=1)

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    [run_id] = re.findall(r"^│ (\d{8}-\d{6}-\w+)", run_cli("runs", "--since", "30m").stdout, re.M)
    _, rows = RunRegistry(workspace.registry_path).query("SELECT run_id, started_at FROM runs")
    [(recorded_id, started)] = rows
    assert recorded_id == run_id and before <= started <= after
    shown = run_cli("runs", "show", run_id).stdout
    in_tokyo = started.astimezone(ZoneInfo("Asia/Tokyo"))
    assert f"started_at: {in_tokyo:%Y-%m-%d %H:%M:%S}" in shown


def test_two_runs_started_at_the_same_moment_both_finish_and_are_recorded(workspace, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(30):
        (texts / f"{index}.txt").write_text(prose(index, 200))
    config = str(write_config(tmp_path / "c.toml", [{"path": str(texts)}]))
    processes = [
        subprocess.Popen(lmforge_command("run", config), cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    digests = completed_digests(workspace)
    assert len(digests) == 2 and digests[0] == digests[1]


@pytest.fixture(scope="module")
def large_jsonl(tmp_path_factory):
    """About 25 MB of documents: enough that ingest and clean each take a moment to kill."""
    path = tmp_path_factory.mktemp("large") / "docs.jsonl"
    with open(path, "w") as out:
        for index in range(12_000):
            out.write(json.dumps({"text": prose(index, 300)}) + "\n")
    return path


@pytest.fixture(scope="module")
def uninterrupted_digest(tmp_path_factory, large_jsonl) -> str:
    """The corpus digest of an uninterrupted run over `large_jsonl`, in a workspace of its own:
    what every killed-then-rerun run must end with (run once for all of them)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    config = str(write_config(folder / "c.toml", [{"path": str(large_jsonl)}]))
    run_cli("run", config, home=folder / "home")
    _, rows = RunRegistry(folder / "home" / "registry.duckdb").query(
        "SELECT corpus_digest FROM runs WHERE status = 'completed'"
    )
    return rows[0][0]


def _kill_during(stage_folder, config: str) -> None:
    """Start a run, SIGKILL it while `stage_folder` holds a half-built output, and check that
    nothing half-built was published."""
    process = subprocess.Popen(
        lmforge_command("run", config), cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(stage_folder.glob("*.partial-*")):
        assert process.poll() is None, "the run ended before the stage started"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not [p for p in stage_folder.iterdir() if ".partial-" not in p.name]


@pytest.mark.parametrize("stage", ["ingest", "clean"])
def test_kill_9_mid_stage_then_rerun_gives_the_uninterrupted_corpus(
    workspace, tmp_path, large_jsonl, uninterrupted_digest, stage
):
    config = str(write_config(tmp_path / "c.toml", [{"path": str(large_jsonl)}]))
    stage_folder = workspace.artifacts / "ingest" if stage == "ingest" else workspace.corpus
    _kill_during(stage_folder, config)
    run_cli("run", config)
    assert completed_digests(workspace) == [uninterrupted_digest]
    assert not list(stage_folder.glob("*.partial-*")), "the rerun removed the killed staging"
    _, statuses = RunRegistry(workspace.registry_path).query(
        "SELECT status FROM runs ORDER BY started_at"
    )
    assert statuses == [("crashed",), ("completed",)], "the killed run is marked, not 'running'"


def test_tokenizers_compare_trains_bpe_and_unigram_alike(workspace, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(40):
        (texts / f"{index}.txt").write_text(prose(index, 200) + " Ünïcode ☃ here.")
    run_cli("run", str(write_config(tmp_path / "c.toml", [{"path": str(texts)}])))
    output = run_cli("tokenizers", "compare", "--vocab-size", "400").stdout
    rows = re.findall(r"│ (bpe|unigram)\s*│ (\d+)\s*│ ([\d.]+)", output)
    assert [(kind, vocab) for kind, vocab, _ in rows] == [("bpe", "400"), ("unigram", "400")]
    assert all(1.0 < float(bytes_per_token) < 10.0 for _, _, bytes_per_token in rows)
    too_big = run_cli("tokenizers", "compare", "--vocab-size", "90000", check=False)
    assert too_big.returncode == 1 and "the largest possible is" in too_big.stderr
    assert "--vocab-size 90000 is more than" in too_big.stderr  # the option given, not a key


def every_command(group, path=()):
    """(command path, click command) for each command and group under `group`, depth first."""
    for name, command in group.commands.items():
        yield (*path, name), command
        if hasattr(command, "commands"):
            yield from every_command(command, (*path, name))


def flattened(text: str) -> str:
    """Help text with its box borders, code marks and line breaks gone: what a reader reads."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text.replace("`", "")).split())


def test_help_shows_every_command_s_docstring_whole(monkeypatch):
    """The help renders docstrings as Markdown: a `[section]` or `<name>` written bare there
    would vanish as markup, and a docstring's line breaks would break sentences mid-line."""
    import inspect

    import typer.main
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("COLUMNS", "400")
    root = typer.main.get_command(app)
    commands = list(every_command(root))
    assert len(commands) > 15
    runner = CliRunner()
    for path, command in commands:
        summary = inspect.cleandoc(command.help or "").split("\n\n")[0]
        assert summary, f"`lmforge {' '.join(path)}` has no help text"
        expected = flattened(summary)
        own = runner.invoke(app, [*path, "--help"])
        assert own.exit_code == 0, own.output
        assert expected in flattened(own.output), (path, own.output)
        listing = runner.invoke(app, [*path[:-1], "--help"])
        assert expected in flattened(listing.output), (path, listing.output)
    options = flattened(runner.invoke(app, ["runs", "export", "--help"]).output)
    assert "folder to write <table>.parquet files into" in options


def test_the_top_level_help_lists_run_first_and_groups_the_commands():
    """`lmforge --help` listed `run` sixth, after generate, serve, chat, prune and train-join
    (the order their modules were imported in, h155); `python -m flows.cli` must list them
    all too (registered after `main()` is defined, they must still be before it runs)."""
    as_module = [sys.executable, "-m", "flows.cli", "--help"]
    module_help = subprocess.run(as_module, capture_output=True, text=True, cwd=REPO, check=True)
    for listing in (cli_in_process("--help").stdout, module_help.stdout):
        names = re.findall(r"^│ ([a-z][a-z-]*) ", listing, flags=re.MULTILINE)
        assert names[:5] == ["run", "check", "retrain", "ablation", "size"], names
        assert {"generate", "chat", "runs", "serve", "prune", "train-join", "server"} <= set(names)
        panels = re.findall(r"╭─ (.+?) ─", listing)
        assert panels == ["Options", "Train", "Look at the results", "Operate a workspace"]


def test_a_temporary_prefect_server_that_never_answers_is_one_clear_line(workspace, tmp_path):
    # A startup wait of 0 s: Prefect gives up at once, as it does on a machine too busy to
    # start its server within the default wait.
    env = dict(os.environ) | {
        "LMFORGE_PREFECT_SERVER": "ephemeral",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "0",
    }
    env.pop("PREFECT_API_URL", None)
    readme = readme_sections(tmp_path / "readme")
    config = write_config(tmp_path / "c.toml", [{"path": str(readme)}])
    result = subprocess.run(lmforge_command("run", str(config)), capture_output=True, text=True,
                            timeout=120, cwd=REPO, env=env)  # fmt: skip
    said = " ".join(result.stderr.split())  # as read, whatever the terminal's width
    assert result.returncode == 1
    assert "error: Timed out while attempting to connect to ephemeral Prefect API server." in said
    assert "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in said
    assert "Traceback" not in said


def test_a_user_error_found_mid_flow_is_one_error_line_without_prefect_s_traceback(
    workspace, tmp_path
):
    # The tokenizer stage's error came after Prefect had logged its traceback twice (the task
    # run's failure, then the flow run's); the vocabulary's limit depends on the data, so it
    # cannot be checked before the flow starts.
    readme = readme_sections(tmp_path / "readme")
    config = write_config(tmp_path / "c.toml", [{"path": str(readme)}])
    config.write_text(
        config.read_text().replace('kind = "char"', 'kind = "bpe"\nvocab_size = 60000')
    )
    result = run_cli("run", str(config), check=False)
    said = result.stdout + result.stderr
    assert result.returncode == 1
    assert (
        "error: tokenizer.vocab_size = 60000 is more than this corpus supports for a bpe model"
        in said
    )
    assert "Traceback" not in said
    # The corpus the tokenizer failed on is recorded with the failed run: the one to look at.
    _, rows = RunRegistry(workspace.registry_path).query(
        "SELECT r.status, d.kept, d.digest FROM runs r "
        "JOIN datasets d ON d.digest = r.corpus_digest"
    )
    [(status, kept, digest)] = rows
    assert status == "failed" and kept > 0
    stats = run_cli("corpus", "stats").stdout
    assert " ".join(stats.split()).startswith(f"corpus {digest}")


def test_prefect_s_run_logs_keep_the_traceback_of_a_bug():
    import logging

    from flows.user_errors import HideTracebackOf
    from lm.tokenizer import TokenizerError

    hide = HideTracebackOf((TokenizerError,))

    def logged(error: Exception) -> logging.LogRecord:
        record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed",
                                   None, (type(error), error, None))  # fmt: skip
        assert hide.filter(record)
        return record

    assert logged(TokenizerError("vocab_size too large")).exc_info is None
    from flows.user_errors import user_error_types
    from lm.word2vec import Word2VecError

    assert Word2VecError in user_error_types()  # "no word occurs 3000 times": one line
    assert logged(KeyError("a bug")).exc_info is not None


@pytest.mark.parametrize("module", ["flows.pipeline", "flows.ablation", "flows.retrain"])
def test_a_run_a_deployment_starts_logs_a_user_error_without_prefect_s_traceback(module):
    """A deployment's run (a worker, `lmforge serve`) imports the flow's module, not the
    command line: importing it is what hides a user error's traceback from the run's log."""
    import subprocess
    import sys

    check = (
        f"import logging, {module}\n"
        "from flows.user_errors import PREFECT_RUN_LOGGERS, HideTracebackOf\n"
        "from lm.tokenizer import TokenizerError\n"
        "for name in PREFECT_RUN_LOGGERS:\n"
        "    record = logging.LogRecord(name, logging.ERROR, 'x', 1, 'failed', None,\n"
        "                               (TokenizerError, TokenizerError('too large'), None))\n"
        "    assert logging.getLogger(name).filter(record) and record.exc_info is None, name\n"
        "    bug = logging.LogRecord(name, logging.ERROR, 'x', 1, 'failed', None,\n"
        "                            (KeyError, KeyError('a bug'), None))\n"
        "    assert logging.getLogger(name).filter(bug) and bug.exc_info is not None, name\n"
        "print('hidden')\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            cwd=REPO, timeout=120)  # fmt: skip
    assert result.stdout.strip() == "hidden", result.stderr[-2000:]


def test_stages_whose_artifacts_were_already_built_are_recorded_cached_not_run(workspace, tmp_path):
    """Prefect's result cache lost (another PREFECT_HOME, a worker elsewhere) or a stage built by
    another process while this run waited: every task ran, found its artifact complete and
    returned it, and each stage was recorded as run, with seconds it never spent."""
    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(12):
        (texts / f"{index}.txt").write_text(prose(index, 120))
    tiny = "[train]\nmax_steps = 6\neval_every = 3\n[eval]\nbatches = 2\nsamples = 0\n"
    config = str(write_config(tmp_path / "c.toml", [{"path": str(texts)}], tiny))
    run_cli("run", config)
    env = dict(os.environ) | {"PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "other-results")}
    again = subprocess.run(lmforge_command("run", config), capture_output=True, text=True,
                           timeout=300, cwd=REPO, env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    registry = RunRegistry(workspace.registry_path)
    _, rows = registry.query(
        "SELECT s.stage, s.cached FROM stages s JOIN runs r USING (run_id) "
        "WHERE r.started_at = (SELECT max(started_at) FROM runs) ORDER BY s.rowid"
    )
    assert [stage for stage, _ in rows][:3] == ["ingest", "clean", "tokenizer"]
    assert all(cached for _, cached in rows), rows


@pytest.mark.parametrize(
    ("model", "said"),
    [
        # A traceback from the trainer ("element 0 of tensors does not require grad").
        ('[model]\nkind = "bigram-count"\n', "a bigram-count is counted"),
        # Trained on random vectors, silently, under the config's name.
        ('[model]\nkind = "w2v"\n', "its 'w2v' model reads word2vec vectors of the pieces"),
    ],
)
def test_tokenizers_compare_refuses_a_model_it_cannot_train_alike(tmp_path, model, said):
    config = write_config(tmp_path / "c.toml", [{"path": str(tmp_path)}], model)
    config.write_text(config.read_text().replace("enabled = false", 'input = "pieces"'))
    result = run_cli("tokenizers", "compare", "--train-steps", "2", "--config", str(config),
                     check=False)  # fmt: skip
    assert result.returncode == 1 and said in result.stderr and "Traceback" not in result.stderr
    # Only [model], [train] and [eval] are read: a config without [ingest] is one (it was
    # refused, "'ingest': Field required").
    alone = tmp_path / "model-only.toml"
    alone.write_text(model)
    result = run_cli("tokenizers", "compare", "--train-steps", "2", "--config", str(alone),
                     check=False)  # fmt: skip
    assert result.returncode == 1 and "ingest" not in result.stderr, result.stderr
    assert said in result.stderr or "word2vec.enabled = true" in result.stderr


def test_corpus_stats_says_an_ordered_split_is_cut_later_and_lists_sources_as_documents(
    workspace, tmp_path
):
    """Under `ordered` the table said val 0 and test 0, as if nothing were held out; and the
    sources table listed every file of a folder whatever --documents said."""
    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(6):
        (texts / f"{index}.txt").write_text(prose(index, 120))
    (texts / "long.txt").write_text("\n\n".join(prose(100 + n, 60) for n in range(12)))
    ordered = '[split]\nmethod = "ordered"\nval = 0.2\ntest = 0.1\n'
    config = write_config(tmp_path / "c.toml", [{"path": str(texts)}], ordered)
    cut = config.read_text().replace("[ingest]\n", "[ingest]\nmax_document_mb = 0.002\n")
    config.write_text(cut)
    run_cli("run", str(config))
    stats = " ".join(run_cli("corpus", "stats", "--documents", "2").stdout.split())
    assert 'split.method = "ordered": every document is train here; val and test are cut' in stats
    assert "sources (first 2 of 7; --all lists every one)" in stats
    # The pieces of a cut text were counted as documents, with no word of the text.
    pieces = re.search(r"(\d+) of the kept documents are pieces of 1 long text cut", stats)
    assert pieces and 2 < int(pieces[1]) < 12, stats
    assert "5.txt" not in stats.split("documents (first")[0].split("sources")[1]
    everything = run_cli("corpus", "stats", "--all").stdout
    assert all(f"{index}.txt" in everything for index in range(6))
    both = run_cli("corpus", "stats", "--all", "--documents", "2", check=False)
    assert both.returncode == 1 and "give one of them" in both.stderr  # --all won, silently
    # DuckDB's "Conversion Error: Type INT128 with value 99999999999999999999 can't be cast";
    # then a refusal naming a bound of nineteen digits: a count past every row lists them all.
    huge = run_cli("corpus", "stats", "--documents", "9" * 20).stdout
    assert all(f"{index}.txt" in huge for index in range(6)) and "(first " not in huge


def test_sql_over_the_corpus_before_any_corpus_is_recorded_says_so(tmp_path):
    """A first run still ingesting, or one killed before clean: DuckDB's "Table with name corpus
    does not exist! Did you mean corpus_versions?"."""
    from datetime import datetime

    RunRegistry(tmp_path / "registry.duckdb").start_run(
        {"run_id": "r1", "status": "running", "started_at": datetime.now()}
    )
    for view in ("corpus", "clean_corpus"):
        result = run_cli("sql", f"SELECT count(*) FROM {view}", check=False, home=tmp_path)
        assert result.returncode == 1
        assert result.stderr.startswith("error: the corpus and clean_corpus views are missing")
    other = run_cli("sql", "SELECT * FROM nothing", check=False, home=tmp_path)
    assert "Table with name nothing does not exist" in other.stderr


def test_sql_of_a_column_an_unmigrated_registry_lacks_says_why(tmp_path):
    """After an upgrade, before any run, the registry is an earlier lmforge's (readers do not
    migrate): the README's `against` was a bare Binder Error (h128)."""
    from tests.helpers import registry_at_schema

    registry_at_schema(tmp_path / "registry.duckdb", 3).close()
    query = "SELECT against FROM promotions"
    result = cli_in_process("sql", query, check=False, home=tmp_path)
    assert result.returncode == 1
    assert "schema version 3 of 6" in result.stderr
    assert "once a run of this lmforge has written to it" in result.stderr
    RunRegistry(tmp_path / "registry.duckdb").start_run(
        {"run_id": "r1", "status": "running", "started_at": datetime.now()}
    )  # migrated: the column is there, and a query's own mistake gets no such note
    assert cli_in_process("sql", query, home=tmp_path).returncode == 0
    wrong = cli_in_process("sql", "SELECT nothing FROM runs", check=False, home=tmp_path)
    assert "earlier lmforge" not in wrong.stderr


def test_runs_of_a_registry_from_before_models_says_why_not_damage(tmp_path):
    """A November 2026 workspace (schema 2, no `models` table) upgraded: `runs` and `runs show`
    said "cannot read the registry (Catalog Error ...)" until a run migrated it (h128)."""
    from tests.helpers import registry_at_schema

    connection = registry_at_schema(tmp_path / "registry.duckdb", 2)
    connection.execute("INSERT INTO runs (run_id, status, started_at) "
                       "VALUES ('r1', 'completed', now())")  # fmt: skip
    connection.close()
    for args in (["runs"], ["runs", "show", "r1"]):
        result = cli_in_process(*args, check=False, home=tmp_path)
        assert result.returncode == 1
        assert "earlier lmforge, schema version 2 of" in result.stderr, result.stderr
        assert "damaged" not in result.stderr


def test_text_the_output_encoding_cannot_hold_is_escaped_not_a_traceback(tmp_path, monkeypatch):
    """Generated Chinese to a Latin-1 terminal (or a Windows code page) ended in a
    UnicodeEncodeError's traceback halfway through the output."""
    RunRegistry(tmp_path / "registry.duckdb").start_run(
        {"run_id": "r1", "status": "running", "started_at": datetime.now()}
    )
    monkeypatch.setenv("PYTHONIOENCODING", "latin-1")
    table = run_cli("sql", "SELECT '東京' AS city", home=tmp_path).stdout
    assert "\\u6771\\u4eac" in table
    # Data for a program is UTF-8 whatever the terminal's encoding: an escape changes it.
    csv = run_cli("sql", "--format", "csv", "SELECT '東京 👩' AS city", home=tmp_path)
    assert csv.stdout == "city\n東京 👩\n"
    line = run_cli("sql", "--format", "json", "SELECT '東京 👩' AS city", home=tmp_path).stdout
    assert json.loads(line) == {"city": "東京 👩"}


def test_sql_csv_gives_a_list_of_json_as_data_and_a_blob_as_duckdb_writes_it(tmp_path):
    """A JSON[] column (`list(stats)`) was written as JSON strings inside JSON, and a blob as
    Python's `b'ab'`."""
    from datetime import datetime

    RunRegistry(tmp_path / "registry.duckdb").start_run(
        {"run_id": "r1", "status": "running", "started_at": datetime.now()}
    )
    query = "SELECT ['{\"a\": 1}'::JSON] AS l, '\\x5C\\xFFab'::BLOB AS b"
    csv = cli_in_process("sql", "--format", "csv", query, home=tmp_path).stdout
    assert csv == 'l,b\n"[{""a"": 1}]",\\x5C\\xFFab\n'
    # A DECIMAL (the type of a literal `1.5`) is a number in JSON Lines, not the string "1.5".
    numbers = "SELECT 1.5 AS x, 2.0 * 3 AS y, 10::DECIMAL(20, 0) AS z"
    line = cli_in_process("sql", "--format", "json", numbers, home=tmp_path).stdout
    assert json.loads(line) == {"x": 1.5, "y": 6, "z": 10} and '"1.5"' not in line


def test_sql_reads_a_query_from_stdin_given_as_dash(tmp_path):
    """`lmforge sql - < weekly.sql`: a query kept in a file was `"$(cat weekly.sql)"`, and
    `-` was DuckDB's syntax error."""
    from datetime import datetime

    RunRegistry(tmp_path / "registry.duckdb").start_run(
        {"run_id": "r1", "status": "running", "started_at": datetime.now()}
    )
    query = "-- this week's runs\nSELECT run_id, 'é' AS mark\nFROM runs;\n".encode()
    csv = cli_in_process("sql", "-", "--format", "csv", stdin=query, home=tmp_path).stdout
    assert csv == "run_id,mark\nr1,é\n"
    empty = cli_in_process("sql", "-", stdin=b"  \n", home=tmp_path, check=False)
    assert empty.returncode == 1 and "sql -: stdin held no query" in empty.stderr


def test_sql_says_rows_were_left_out_only_when_some_were_and_an_empty_csv_has_its_header(
    tmp_path,
):
    from datetime import datetime

    RunRegistry(tmp_path / "registry.duckdb").start_run(
        {"run_id": "r1", "status": "running", "started_at": datetime.now()}
    )
    query = "SELECT range AS n FROM range(3)"
    whole = cli_in_process("sql", query, "--max-rows", "3", home=tmp_path)
    assert "there are more" not in whole.stderr and "│ 2 │" in whole.stdout
    cut = cli_in_process("sql", query, "--max-rows", "2", home=tmp_path)
    assert "the first 2 rows are shown, and there are more" in cut.stderr
    assert "│ 2 │" not in cut.stdout
    empty = cli_in_process("sql", f"{query} WHERE false", "--format", "csv", home=tmp_path)
    assert empty.stdout == "n\n"  # a program reads the columns of no rows too


def test_sql_values_inside_lists_structs_and_maps_are_json_too(tmp_path):
    """A NaN in a list was written `NaN`, which no JSON reader takes; a map keyed by a DECIMAL
    or a date was a TypeError; CSV gave a list of DECIMALs as strings and a blob in a list as
    Python's `b'..'`."""
    RunRegistry(tmp_path / "registry.duckdb").start_run(
        {"run_id": "r1", "status": "running", "started_at": datetime.now()}
    )
    query = ("SELECT ['nan'::DOUBLE, 1.5] AS l, {'x': 'inf'::DOUBLE} AS s, MAP {2.5: 'a'} AS m, "
             "MAP {DATE '2024-01-02': 1} AS d, [1.5, 2.0] AS n, [from_hex('FF')] AS b")  # fmt: skip
    line = cli_in_process("sql", "--format", "json", query, home=tmp_path).stdout
    assert json.loads(line) == {"l": [None, 1.5], "s": {"x": None}, "m": {"2.5": "a"},
                                "d": {"2024-01-02": 1}, "n": [1.5, 2], "b": ["\\xFF"]}  # fmt: skip
    csv = cli_in_process("sql", "--format", "csv", query, home=tmp_path).stdout
    assert csv.splitlines()[1] == (
        '"[null, 1.5]","{""x"": null}","{""2.5"": ""a""}","{""2024-01-02"": 1}",'
        '"[1.5, 2]","[""\\\\xFF""]"'
    )


def test_size_of_an_ablation_that_scores_no_val_still_sizes_its_variants(tmp_path):
    """`lmforge size` evaluates nothing: the ablation's refusal of `eval.splits` without
    "val" refused it too."""
    sized = cli_in_process("size", "ablation", "--set", 'eval.splits=["test"]', home=tmp_path)
    assert sized.returncode == 0 and "swiglu" in sized.stdout


def test_check_for_an_ablation_names_each_variant_once_not_once_a_seed(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(prose(0, 200))
    sources = f"ingest.sources=[{{path={json.dumps(str(text))}}}]"
    checked = cli_in_process("check", "ablation", "--for", "ablation", "--set", sources,
                             "--set", "ablation.seeds=[1, 2]", home=tmp_path / "home")  # fmt: skip
    said = " ".join(checked.stdout.split())
    assert "ready for `lmforge ablation` inputs: 1 (" in said
    assert "models: baseline (gpt), swiglu (gpt), sinusoidal (gpt)," in said
    assert "seed" not in said


def test_a_long_table_is_printed_a_block_at_a_time_its_blocks_lined_up(monkeypatch):
    """Rich lays a table out whole before its first line: 60,000 documents of `corpus stats
    --all` were minutes of nothing. A long table is printed in blocks, with the whole table's
    column widths fitted to the terminal (the long names wrap), so that the blocks line up."""
    import io

    from rich.console import Console

    from flows import cli

    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=60))
    printed = []  # what had been printed when each block was
    monkeypatch.setattr(cli.console, "print", lambda *a, **k: (
        printed.append(out.getvalue()), Console.print(cli.console, *a, **k)))  # fmt: skip
    rows = [(f"source/{'long-' * (n % 17)}{n}", "train", n * 7) for n in range(1234)]
    cli._print_table(["document", "split", "words"], rows, "documents")
    lines = out.getvalue().splitlines()
    assert len(printed) == 3 and printed[1].count("\n") < len(lines) / 2
    assert lines[0].strip() == "documents" and sum("┃" in line for line in lines) == 1
    assert max(len(line) for line in lines) == 60  # narrowed to fit, and no narrower
    body = [line for line in lines[3:] if line.strip()]
    assert {(line.index("│"), line.rindex("│")) for line in body} == {
        (body[0].index("│"), body[0].rindex("│"))
    }
    words = [line.split("│")[2].strip() for line in body if line.split("│")[2].strip()]
    assert words == [str(n * 7) for n in range(1234)]  # every row, whole, in order
    assert "".join(line.split("│")[0].strip() for line in body).count("source/") == 1234


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_a_run_whose_prefect_server_went_away_says_how_it_is_recorded_in_one_line(
    workspace, tmp_path, monkeypatch, status
):
    """The server killed mid-run (by hand, or for memory): the run trained and recorded on,
    then Prefect's engine failed to report its end and the command exited 1 after minutes of
    retries and 400 lines of traceback, for a run recorded completed."""
    from datetime import datetime

    import httpx

    import flows.cli
    import flows.pipeline
    import flows.prefect_server

    forced = []

    def recorded_then_server_gone(config, overrides):
        registry = RunRegistry(workspace.registry_path)
        registry.start_run({"run_id": "20261207-000000-5e4e4e", "status": "running",
                            "started_at": datetime.now(), "pid": os.getpid()})  # fmt: skip
        registry.finish_run("20261207-000000-5e4e4e", status, datetime.now(), [])
        raise httpx.ConnectError("[Errno 111] Connection refused")

    monkeypatch.setattr(flows.prefect_server, "ensure_server", lambda workspace: None)
    monkeypatch.setattr(flows.cli, "_exit_cleanly_on_sigterm", lambda: None)
    monkeypatch.setattr(flows.cli, "_exit_anyway_after", lambda *said: forced.append(said))
    monkeypatch.setattr(flows.pipeline, "lm_pipeline", recorded_then_server_gone)
    readme = readme_sections(tmp_path / "readme")
    config = write_config(tmp_path / "c.toml", [{"path": str(readme)}])
    result = cli_in_process("run", str(config), check=False)
    said = " ".join(result.stderr.split())
    gone = "its Prefect server went away (ConnectError: [Errno 111] Connection refused)"
    if status == "completed":
        assert result.returncode == 0
        assert said == (f"warning: run 20261207-000000-5e4e4e is recorded completed (`lmforge runs "
                        f"show 20261207-000000-5e4e4e`), but {gone}: Prefect's record of the flow "
                        "run is out of date")  # fmt: skip
    else:
        assert result.returncode == 1
        assert said == (f"error: run 20261207-000000-5e4e4e is recorded failed (`lmforge runs show "
                        f"20261207-000000-5e4e4e`), and {gone}")  # fmt: skip
    # Prefect's events worker retried the server for minutes as the process exited.
    assert forced == [(20.0, 0 if status == "completed" else 1, "its Prefect server went away")]


@pytest.mark.parametrize(
    "credentials, status", [(None, 401), ("admin:wrong", 401), ("admin:wrong", 403)]
)
def test_a_prefect_server_that_refuses_the_client_is_one_error_naming_the_setting(
    workspace, tmp_path, monkeypatch, credentials, status
):
    """A server with basic authentication (PREFECT_SERVER_API_AUTH_STRING) and a command
    without the client's string (or with another): a 230-line traceback before the run began."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    import flows.cli
    import flows.pipeline
    import flows.prefect_server

    def refused(config, overrides):
        request = httpx.Request("GET", "http://127.0.0.1:4321/prefect/api/admin/version")
        response = httpx.Response(status, request=request, json={"exception_message": "no"})
        raise PrefectHTTPStatusError.from_httpx_error(
            httpx.HTTPStatusError(str(status), request=request, response=response)
        )

    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    monkeypatch.setattr(flows.prefect_server, "ensure_server", lambda workspace: None)
    monkeypatch.setattr(flows.cli, "_exit_cleanly_on_sigterm", lambda: None)
    monkeypatch.setattr(flows.pipeline, "lm_pipeline", refused)
    config = write_config(tmp_path / "c.toml", [{"path": str(readme_sections(tmp_path / "r"))}])
    behind_a_proxy = {PREFECT_API_URL: "http://me:secret@127.0.0.1:4321/prefect/api"}
    with temporary_settings({PREFECT_API_AUTH_STRING: credentials, **behind_a_proxy}):
        result = cli_in_process("run", str(config), check=False)
    given = "wrong credentials" if credentials else "no credentials"
    reason = {401: "Unauthorized", 403: "Forbidden"}[status]  # a proxy's refusal is a 403
    assert result.returncode == 1 and result.stderr == (
        "error: the Prefect server at http://me:***@127.0.0.1:4321/prefect/api refused this "
        f"command ({status} {reason}: {given}): set PREFECT_API_AUTH_STRING to the server's "
        "PREFECT_SERVER_API_AUTH_STRING (user:password)\n"
    )


def test_the_command_leaves_its_objects_out_of_the_exit_s_last_collection(monkeypatch):
    """The interpreter's last collection walked every object torch and Prefect made: 1.3 s of
    a cached run's 1.7 s exit on a quiet machine, 25-40 s on a loaded one after the last line,
    on an error or a Ctrl-C too."""
    import gc

    import flows.cli

    monkeypatch.setattr("sys.argv", ["lmforge", "runs", "show", "no-such-run"])
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit) as ended:
            flows.cli.main()
        assert ended.value.code == 1 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_script_reads_the_run_id_and_a_run_s_error_whole(workspace, capsys):
    """`lmforge run | sed -n 's/^run //p'` gives the id alone (the table's title was padded
    with spaces to its width), and `runs show ID | grep ^error:` a long error on one line
    (cut at the 200 columns of a pipe)."""
    from flows.cli import _print_stages

    _print_stages({"run_id": "20260101-000000-abcdef", "stages": [
        {"stage": "ingest", "cached": False, "seconds": 0.25, "output_digest": "d5fde4fde854aa"},
    ]})  # fmt: skip
    assert capsys.readouterr().out.splitlines()[0] == "run 20260101-000000-abcdef"
    registry = RunRegistry(workspace.registry_path)
    registry.start_run({"run_id": "20260101-000000-abcdef", "status": "running",
                        "started_at": datetime.now()})  # fmt: skip
    running = cli_in_process("runs", "show", "20260101").stdout
    assert "\nended_at: —\n" in running and "None" not in running  # was Python's None
    error = "InputError: " + " ".join(["cleaning kept none of the documents"] * 10)
    registry.finish_run("20260101-000000-abcdef", "failed", datetime.now(), [], error=error)
    shown = cli_in_process("runs", "show", "20260101").stdout
    assert f"\nerror: {error}\n" in shown


def test_a_run_whose_server_went_away_before_it_was_recorded_is_not_an_earlier_run_of_its_pid(
    workspace, tmp_path, monkeypatch
):
    """The server gone before the run was recorded (the flow run not yet made): the newest run
    of the same pid, last week's in a container where lmforge is always pid 1, was said to be
    this one, completed, and the command exited 0."""
    from datetime import datetime, timedelta

    import httpx

    import flows.cli
    import flows.pipeline
    import flows.prefect_server

    registry = RunRegistry(workspace.registry_path)
    last_week = datetime.now() - timedelta(days=7)
    registry.start_run({"run_id": "20261130-000000-01d01d", "status": "running",
                        "started_at": last_week, "pid": os.getpid()})  # fmt: skip
    registry.finish_run("20261130-000000-01d01d", "completed", last_week, [])

    def gone_before_recording(config, overrides):
        raise httpx.ConnectError("[Errno 111] Connection refused")

    monkeypatch.setattr(flows.prefect_server, "ensure_server", lambda workspace: None)
    monkeypatch.setattr(flows.cli, "_exit_cleanly_on_sigterm", lambda: None)
    monkeypatch.setattr(flows.cli, "_exit_anyway_after", lambda *said: None)
    monkeypatch.setattr(flows.pipeline, "lm_pipeline", gone_before_recording)
    config = write_config(tmp_path / "c.toml", [{"path": str(readme_sections(tmp_path / "r"))}])
    result = cli_in_process("run", str(config), check=False)
    said = " ".join(result.stderr.split())
    assert result.returncode == 1 and "01d01d" not in said, said
    assert said.startswith("error: the run stopped: its Prefect server went away"), said


def test_a_run_under_an_ascii_locale_writes_its_non_ascii_samples_as_utf8(workspace, tmp_path):
    """`LC_ALL=C` with `PYTHONUTF8=0` (cron, `env -i`, a bare container) makes Python's default
    file encoding ASCII: the evaluate stage's samples.json, written with it, was a
    UnicodeEncodeError traceback at the run's last stage for any sample with an accent."""
    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(12):
        (texts / f"{index}.txt").write_text(prose(index, 120) + " Café crème.", encoding="utf-8")
    tiny = (
        '[model]\nkind = "bigram-count"\n[eval]\nbatches = 2\nsamples = 1\n'
        'prompts = ["Café"]\n[eval.sampling]\nmax_new_tokens = 5\n'
    )
    config = str(write_config(tmp_path / "c.toml", [{"path": str(texts)}], tiny))
    env = dict(os.environ) | {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    env.pop("PYTHONIOENCODING", None)
    result = subprocess.run(lmforge_command("run", config), capture_output=True, text=True,
                            timeout=300, cwd=REPO, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    [samples] = workspace.artifacts.glob("evaluate/*/samples.json")
    assert json.loads(samples.read_text(encoding="utf-8"))[0]["prompt"] == "Café"


def test_an_ascii_locale_reads_non_ascii_paths_and_settings_as_typed(workspace, tmp_path):
    """Under `LC_ALL=C PYTHONUTF8=0` a config named "tïny.toml" or `--set name="café"` was a
    190-line traceback as Prefect sent the run's parameters, or "a control character": the
    command runs again in Python's UTF-8 mode, with the arguments' bytes as they came."""
    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(12):
        (texts / f"{index}.txt").write_text(prose(index, 120), encoding="utf-8")
    config = str(write_config(tmp_path / "tïny.toml", [{"path": str(texts)}]))
    env = dict(os.environ) | {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    env.pop("PYTHONIOENCODING", None)
    result = subprocess.run(lmforge_command("check", config, "--set", 'name="café"'),
                            capture_output=True, text=True, encoding="utf-8", timeout=300,
                            cwd=REPO, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"{config}: ready for `lmforge run`")


def test_what_the_command_starts_under_an_ascii_locale_runs_in_utf8_mode_too():
    """The command runs again with `-X utf8`, which its children do not inherit: torchrun's
    ranks (train.nproc_per_node = 2) ran in ASCII mode and could not open the shards of a
    workspace under "/tmp/hömé" ("token file missing"), where one process trained (h147)."""
    import sys

    env = dict(os.environ) | {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    env.pop("PYTHONIOENCODING", None)
    child = "import sys; print(sys.flags.utf8_mode)"
    code = (
        "import subprocess, sys, flows.cli as c; c._again_in_utf8_mode_under_an_ascii_locale(); "
        f"print(sys.flags.utf8_mode, subprocess.run([sys.executable, '-c', {child!r}], "
        "capture_output=True, text=True).stdout.strip())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=REPO, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "1"]  # the command, and what it starts


def test_a_user_error_s_traceback_is_hidden_for_its_subclasses_and_once_formatted_too():
    """`CheckpointUnwritable` is a `TrainingError`, `RegistryBusy` a `RegistryError`: one line
    each, as their base; a traceback a handler had already formatted (`exc_text`) still went
    out with the record; and setting the filter again replaces it, not adds a second."""
    import logging

    from flows.user_errors import PREFECT_RUN_LOGGERS, HideTracebackOf, hide_prefect_tracebacks_of
    from lm.train import CheckpointUnwritable
    from lm.train_config import TrainingError

    error = CheckpointUnwritable("disk full")
    record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed", None,
                               (type(error), error, None))  # fmt: skip
    record.exc_text = "Traceback (most recent call last): ..."
    assert HideTracebackOf((TrainingError,)).filter(record)
    assert (record.exc_info, record.exc_text) == (None, None)
    for name in PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        before = list(logger.filters)
        try:
            hide_prefect_tracebacks_of((KeyError,))
            hide_prefect_tracebacks_of((TrainingError,))
            (hiding,) = [f for f in logger.filters if isinstance(f, HideTracebackOf)]
            assert hiding.types == (TrainingError,)
        finally:
            logger.filters[:] = before
