"""Test set-up: one workspace-independent Prefect server for the whole session.

Prefect reads its settings at import, so the environment is prepared in `pytest_configure`,
before any test module is collected. Each test then gets its own `$LMFORGE_HOME` (corpus,
artifacts, registry) while sharing the server, which keeps a flow run to about a second. Under
pytest-xdist each worker process is its own session, with its own server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="lmforge-tests-"))


def _is_xdist_controller(config: pytest.Config) -> bool:
    """Under pytest-xdist (`make test` runs two workers), the controller only hands out test
    files: each worker process starts its own server, so the controller needs none."""
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background of a script (`make test &`) inherits SIGINT ignored,
    # and so would every command a test starts: the tests that interrupt one (a joiner, a
    # served deployment) would then wait for nothing. Ctrl-C reaches the tests as from a terminal.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _is_xdist_controller(config):
        return
    os.environ["LMFORGE_HOME"] = str(_SESSION_HOME)
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("PREFECT_HOME", None)
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    from flows.prefect_server import ensure_server
    from storage.workspace import activate_workspace

    ensure_server(activate_workspace())
    _no_heartbeats_in_this_process()


# Held for the whole session: a context manager collected unexited would put the settings back.
_settings_without_heartbeats = None


def _no_heartbeats_in_this_process() -> None:
    """Flow runs in the test process send Prefect no heartbeat. Prefect's heartbeat thread
    sleeps in whole seconds, and the end of every flow run waits for it to wake: about 0.6 s of
    the 1.2 s a small run served from cache takes, and the suite runs hundreds. Runs the tests
    start as commands (`run_cli`, serve, torchrun) keep lmforge's heartbeat setting, which
    `test_every_flow_run_sends_heartbeats_well_within_the_crash_automation_s_window` checks, and
    the service smoke sees the crash automation act on it."""
    global _settings_without_heartbeats
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    _settings_without_heartbeats = temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    _settings_without_heartbeats.__enter__()


def pytest_unconfigure(config: pytest.Config) -> None:
    import contextlib

    if _is_xdist_controller(config):
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)
        return

    from flows.prefect_server import stop_server
    from storage.workspace import Workspace

    # Send Prefect's queued logs and events while the server is still up; after it stops, the
    # exit handlers would retry against a dead address for a minute.
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)

    stop_server(Workspace(_SESSION_HOME))
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh workspace for this test (the Prefect server stays shared)."""
    from storage.workspace import Workspace

    home = tmp_path / "workspace"
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    return Workspace.from_env().ensure()


@pytest.fixture
def sources(tmp_path):
    """The small corpus the pipeline tests run on: twelve texts, a copy, a text too short to
    keep, and a Wikipedia dump of one page."""
    from tests.helpers import prose, wiki_page, write_wiki_dump

    folder = tmp_path / "texts"
    folder.mkdir()
    for index in range(12):
        (folder / f"doc{index:02d}.txt").write_text(prose(index, 150))
    (folder / "copy.txt").write_text(prose(3, 150))  # an exact duplicate
    (folder / "short.txt").write_text("too short to keep")
    write_wiki_dump(
        tmp_path / "wiki.xml.bz2",
        [wiki_page("Gamma", "'''Gamma''' is {{lang|el|γάμμα}} a [[letter]]. " + prose(50, 150))],
    )
    return [{"path": str(folder)}, {"path": str(tmp_path / "wiki.xml.bz2")}]


@pytest.fixture
def config(tmp_path, sources):
    """A config of the pipeline tests over `sources`."""
    from tests.helpers import write_config

    return write_config(tmp_path / "small.toml", sources)


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch):
    """Sets this process's local time zone (`TZ`, as Python and DuckDB read it) for a test:
    call it with a zone name; the machine's zone comes back after the test."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def lmforge_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("lmforge")), *args]


def run_cli(
    *args: str, check: bool = True, timeout: float = 300, home: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the real `lmforge` command in a subprocess, as a user would (in workspace `home`,
    default the test's own)."""
    env = dict(os.environ) | ({"LMFORGE_HOME": str(home)} if home else {})
    result = subprocess.run(
        lmforge_command(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(f"lmforge {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def cli_in_process(
    *args: str, check: bool = True, home: Path | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess:
    """`lmforge ARGS` run in this process by typer's runner, for commands that only read the
    workspace (`sql`, `runs show`): a subprocess spends about 1.5 s importing before it starts,
    20 of them most of a test's time. A bug's exception is raised, not read as an exit code.
    Its log lines (`logging`) reach neither stream here: a test of a warning uses `run_cli`."""
    from typer.testing import CliRunner

    from flows.cli import app

    saved = dict(os.environ)  # the command points Prefect at its workspace (PREFECT_HOME)
    try:
        if home is not None:
            os.environ["LMFORGE_HOME"] = str(home)
        result = CliRunner().invoke(app, list(args), input=stdin)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if check and result.exit_code != 0:
        raise AssertionError(f"lmforge {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return subprocess.CompletedProcess(["lmforge", *args], result.exit_code, result.stdout,
                                       result.stderr)  # fmt: skip
