"""The workspace's Prefect server is never left running unrecorded: a start interrupted by
Ctrl-C stops the server it began, and one whose starter was killed outright is found by the next
start (adopted, or stopped if it never answers) and by `lmforge server status` and `stop`.

A stand-in server keeps these tests to seconds: it answers `/api/health` once a `ready` file
appears in its folder, and starts a helper process (as `prefect server start` starts uvicorn),
so the tests also see that the server's whole process group is stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import prefect_server
from flows.prefect_server import ensure_server, running_server, starting_server, stop_server
from storage.processes import pid_alive
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parent.parent

STAND_IN = """\
import http.server, os, subprocess, sys, time
from pathlib import Path

port, folder = int(sys.argv[1]), Path(sys.argv[2])
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
(folder / "pids").write_text(f"{os.getpid()} {helper.pid}")
while not (folder / "ready").exists():
    time.sleep(0.05)


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def stand_in_command(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.py").write_text(STAND_IN)
    return lambda port: [sys.executable, str(folder / "server.py"), str(port), str(folder)]


def started_pids(folder: Path) -> list[int]:
    """The stand-in server's pid and its helper's, once it has started them."""
    assert wait_until(lambda: (folder / "pids").is_file(), 30)
    return [int(pid) for pid in (folder / "pids").read_text().split()]


def start_stand_in(workspace, folder: Path, monkeypatch) -> str:
    """`ensure_server` for `workspace` starting the stand-in in `folder`, ready at once: the
    server's URL."""
    monkeypatch.setattr(prefect_server, "_server_command", stand_in_command(folder))
    (folder / "ready").touch()
    return ensure_server(workspace)


def record(workspace) -> dict | None:
    path = workspace.prefect_home / prefect_server.STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


@pytest.fixture
def own_server(workspace, tmp_path, monkeypatch):
    """This test's workspace starts its own server instead of using the session's; every
    stand-in the test started is gone afterwards, even if the test failed."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("LMFORGE_PREFECT_SERVER", raising=False)
    yield workspace
    stop_server(workspace, timeout_s=5)
    for pids in tmp_path.glob("*/pids"):
        server = int(pids.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server, signal.SIGKILL)  # its group: it leads a session of its own


def test_a_start_interrupted_by_ctrl_c_stops_the_server_it_began(own_server, tmp_path, monkeypatch):
    folder = tmp_path / "server"
    monkeypatch.setattr(prefect_server, "_server_command", stand_in_command(folder))

    def interrupted(url: str, timeout_s: float = 2.0) -> bool:
        started_pids(folder)  # the server and its helper run: then comes Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(prefect_server, "_healthy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_server(own_server)
    server, helper = started_pids(folder)
    assert wait_until(lambda: not pid_alive(server) and not pid_alive(helper), 5)
    assert record(own_server) is None


def start_then_kill_the_starter(workspace, folder: Path) -> int:
    """Run `ensure_server` in a process of its own, SIGKILL it while the server starts, and
    return the server's pid."""
    stand_in_command(folder)
    starter = (
        "import sys\n"
        "from pathlib import Path\n"
        "from flows import prefect_server\n"
        "from storage.workspace import Workspace\n"
        "server, folder = sys.argv[2:]\n"
        "prefect_server._server_command = lambda port: [sys.executable, server, str(port),\n"
        "                                               folder]\n"
        "prefect_server.ensure_server(Workspace(Path(sys.argv[1])))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    command = [sys.executable, "-c", starter, str(workspace.root), str(folder / "server.py"),
               str(folder)]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=env)
    try:
        server, _ = started_pids(folder)
        assert wait_until(lambda: record(workspace) is not None, 10)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert pid_alive(server)  # the orphan: in its own session, SIGKILL did not reach it
    return server


def test_a_server_whose_starter_was_killed_is_recorded_as_starting(own_server, tmp_path):
    server = start_then_kill_the_starter(own_server, tmp_path / "server")
    assert running_server(own_server) is None
    assert starting_server(own_server)["pid"] == server
    from typer.testing import CliRunner

    from flows.cli import app

    said = CliRunner().invoke(app, ["server", "status"])
    assert said.exit_code == 1
    assert f"the server (pid {server}) is starting and does not answer yet" in said.output


def test_server_status_without_a_server_exits_1_and_stop_says_so(tmp_path):
    # `lmforge server status || lmforge server start`: a script asks by the exit code.
    from tests.conftest import cli_in_process

    status = cli_in_process("server", "status", home=tmp_path, check=False)
    assert status.returncode == 1 and status.stdout == ""
    assert status.stderr == "error: no server is running for this workspace\n"
    assert cli_in_process("server", "stop", home=tmp_path).stdout == "no server was running\n"


def test_server_stop_stops_a_server_whose_starter_was_killed(own_server, tmp_path):
    folder = tmp_path / "server"
    server = start_then_kill_the_starter(own_server, folder)
    _, helper = started_pids(folder)
    assert stop_server(own_server, timeout_s=5)
    assert not pid_alive(server) and not pid_alive(helper)
    assert record(own_server) is None


def test_the_next_start_adopts_a_server_whose_starter_was_killed(own_server, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    folder = tmp_path / "server"
    server = start_then_kill_the_starter(own_server, folder)

    def second_server(port: int) -> list[str]:
        raise AssertionError("a second server was started")

    monkeypatch.setattr(prefect_server, "_server_command", second_server)
    (folder / "ready").touch()  # it answers a moment later
    url = ensure_server(own_server)
    assert record(own_server)["status"] == "running"
    assert record(own_server)["api_url"] == url
    assert running_server(own_server)["pid"] == server


def test_the_next_start_replaces_a_server_that_never_answers(own_server, tmp_path, monkeypatch):
    stuck = tmp_path / "stuck"
    server = start_then_kill_the_starter(own_server, stuck)
    _, helper = started_pids(stuck)
    path = own_server.prefect_home / prefect_server.STATE_FILE
    aged = record(own_server) | {"started_at": time.time() - prefect_server.STARTUP_TIMEOUT_S}
    path.write_text(json.dumps(aged))  # it has had all its start-up time
    fresh = tmp_path / "fresh"
    start_stand_in(own_server, fresh, monkeypatch)
    assert not pid_alive(server) and not pid_alive(helper)
    assert running_server(own_server)["pid"] == started_pids(fresh)[0]


def test_a_moved_workspace_replaces_its_old_server_and_a_copy_leaves_the_original_s(
    own_server, tmp_path, monkeypatch
):
    """Moved (or copied) with its server's record, a workspace adopted that server, which
    served the database at the old path: moved, it held the moved file open, and a new
    connection would fail there; copied, the copy's runs went to the original's database."""
    from storage.workspace import Workspace

    first = tmp_path / "first"
    url = start_stand_in(own_server, first, monkeypatch)
    original, _ = started_pids(first)
    os.environ.pop("PREFECT_API_URL")  # set by ensure_server; the next workspace's is its own
    state = own_server.prefect_home / prefect_server.STATE_FILE

    copy = Workspace(tmp_path / "copy").ensure()
    copy.prefect_home.mkdir(parents=True, exist_ok=True)
    (copy.prefect_home / prefect_server.STATE_FILE).write_text(state.read_text())
    assert running_server(copy) is None  # not the copy's
    second = tmp_path / "second"
    assert start_stand_in(copy, second, monkeypatch) != url
    assert pid_alive(original) and running_server(own_server)["pid"] == original
    assert running_server(copy)["pid"] == started_pids(second)[0]
    stop_server(copy, timeout_s=5)

    moved = Workspace(tmp_path / "moved").ensure()
    moved.prefect_home.mkdir(parents=True, exist_ok=True)
    gone = json.loads(state.read_text()) | {"log": str(tmp_path / "gone" / "server.log")}
    (moved.prefect_home / prefect_server.STATE_FILE).write_text(json.dumps(gone))
    assert stop_server(moved, timeout_s=5)  # the old place's server: stopped, as asked
    assert not pid_alive(original) and record(moved) is None


def test_a_moved_workspace_stops_its_old_server_where_a_new_workspace_took_the_old_place(
    own_server, tmp_path, monkeypatch
):
    """Moved, and a workspace made at the old path since (the default `.lmforge`, made again by
    the next run there): that place exists, but its record names no server or its own. Left
    running, the old server had no record naming it: `lmforge server stop` found it nowhere."""
    from storage.workspace import Workspace

    first = tmp_path / "first"
    start_stand_in(own_server, first, monkeypatch)
    original, _ = started_pids(first)
    os.environ.pop("PREFECT_API_URL")
    state = own_server.prefect_home / prefect_server.STATE_FILE
    moved = Workspace(tmp_path / "moved").ensure()
    (moved.prefect_home / prefect_server.STATE_FILE).write_text(state.read_text())
    state.unlink()  # the workspace now at the old place has started no server yet
    assert stop_server(moved, timeout_s=5)
    assert not pid_alive(original) and record(moved) is None


@pytest.mark.parametrize(
    "written",
    ['{"pid": 1}', '{"pid": "x", "port": 5, "api_url": "u"}', '{"pid": null}',
     '{"pid": true, "port": 5, "api_url": "u"}', '[1, 2]',
     '{"pid": 7, "port": 5, "api_url": "u", "status": "starting", "started_at": "soon"}'],
)  # fmt: skip
def test_a_server_record_edited_out_of_shape_is_no_record_not_a_traceback(own_server, written):
    # `server status` and `stop` raised KeyError or TypeError on these.
    path = own_server.prefect_home / prefect_server.STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(written)
    assert running_server(own_server) is None
    assert stop_server(own_server, timeout_s=1) is False


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of each process whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append((int(entry.name), command))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("how", ["process", "process-group", "sigkill-to-group"])
def test_sigterm_of_a_run_stops_prefect_s_temporary_server_and_records_the_run(tmp_path, how):
    """Under `LMFORGE_PREFECT_SERVER=ephemeral` Prefect starts a server for the process and
    stops it at exit; SIGTERM's default action skipped that, and the server ran on, orphaned.
    `timeout` and CI runners signal the whole process group: the server died first, and the
    run retried it for minutes instead of exiting. The server, in a session of its own since,
    still dies with the run when a SIGKILL ends it (as a CI runner's escalation does)."""
    from storage.registry import RunRegistry
    from tests.helpers import prose, write_config

    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(12):
        (texts / f"{index}.txt").write_text(prose(index, 120))
    # A model that trains for minutes: the signal comes while it trains, never after the end.
    model = ('[model]\nkind = "gpt"\nblock_size = 16\nn_layer = 1\nn_head = 2\nn_embd = 16\n'
             "[train]\nmax_steps = 1000000\nmicro_batch = 4\nglobal_batch = 4\n"
             "[split]\nval = 0.3\n")  # fmt: skip
    config = write_config(tmp_path / "c.toml", [{"path": str(texts)}], model)
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env |= {"LMFORGE_HOME": str(home), "LMFORGE_PREFECT_SERVER": "ephemeral"}
    command = [str(Path(sys.executable).with_name("lmforge")), "run", str(config)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    servers: list[int] = []
    try:

        def training() -> bool:
            # A step logged: inside the train task. The journal's "started" line comes before
            # the task runs, and a signal there (a loaded machine) named no stage.
            logs = (home / "artifacts" / "train").glob("*.work/metrics.jsonl")
            return any('"train/loss"' in log.read_text() for log in logs)

        started = wait_until(training, 180)
        assert started, process.poll() is not None and process.stderr.read().decode()
        servers = [pid for pid, line in _children(process.pid) if "uvicorn" in line]
        assert len(servers) == 1, _children(process.pid)
        began = time.monotonic()
        if how == "process":
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGKILL if how == "sigkill-to-group" else signal.SIGTERM)
        status = process.wait(timeout=60)
        assert wait_until(lambda: not pid_alive(servers[0]), 15), "the server ran on"
        if how == "sigkill-to-group":
            assert status == -signal.SIGKILL
            return
        # Before the exit forced 20 s after the signal (about 3 s here): the server answered.
        assert status == 128 + signal.SIGTERM and time.monotonic() - began < 19
        assert b"still exiting" not in process.stderr.read()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        for server in servers:  # in a session of its own: the group's kill misses it
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)
        process.wait()
    registry = RunRegistry(home / "registry.duckdb")
    [(status, error)] = registry.query("SELECT status, error FROM runs")[1]
    assert status == "failed", status
    assert error.startswith("stopped by SIGTERM; ") and error.endswith("(during stage train)"), (
        error
    )


def test_server_stop_refuses_while_a_run_reports_to_it_unless_forced(
    own_server, tmp_path, monkeypatch
):
    """Stopped under a live run, the server left that run's Prefect record out of date (and
    it failed with a traceback after its work was done and recorded, before lmforge said so in
    one line). With no server to stop, a live run
    (under a temporary server of its own) is no reason to refuse."""
    from datetime import datetime

    from typer.testing import CliRunner

    from flows.cli import app
    from storage.processes import this_host
    from storage.registry import RunRegistry

    registry = RunRegistry(own_server.registry_path)
    for run_id, pid in (("r-live", os.getpid()), ("r-gone", 2**22 + 12345)):
        registry.start_run({"run_id": run_id, "status": "running", "started_at": datetime.now(),
                            "hostname": this_host(), "pid": pid})  # fmt: skip
    monkeypatch.setenv("LMFORGE_HOME", str(own_server.root))
    nothing = CliRunner().invoke(app, ["server", "stop"])
    assert nothing.exit_code == 0 and nothing.stdout.strip() == "no server was running"
    folder = tmp_path / "server"
    start_stand_in(own_server, folder, monkeypatch)
    refused = CliRunner().invoke(app, ["server", "stop"])
    assert refused.exit_code == 1
    assert " ".join(refused.stderr.split()).startswith(
        "error: run r-live of this workspace is reporting to the server: stopping the server "
        "now would leave Prefect's record of the run out of date"
    )
    assert running_server(own_server) is not None
    forced = CliRunner().invoke(app, ["server", "stop", "--force"])
    assert forced.exit_code == 0 and forced.stdout.strip() == "stopped"


def test_server_start_in_ephemeral_mode_is_an_error_not_a_url(tmp_path, monkeypatch):
    """It printed "ephemeral mode: no server" and exited 0: `export PREFECT_API_URL=$(lmforge
    server start)` set the API URL to that sentence."""
    from tests.conftest import run_cli

    monkeypatch.setenv("LMFORGE_PREFECT_SERVER", "ephemeral")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = run_cli("server", "start", check=False, home=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: LMFORGE_PREFECT_SERVER=ephemeral: each run starts")


def test_server_stop_refuses_while_lmforge_serve_serves_from_it_unless_forced(
    own_server, tmp_path, monkeypatch
):
    """Stopped under `lmforge serve`, the server left it alive but unable to run anything, its
    log filling with connection errors, and a Ctrl-C hanging for a minute."""
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.serve import record_serving
    from storage.processes import this_host

    folder = tmp_path / "server"
    url = start_stand_in(own_server, folder, monkeypatch)
    record_serving(own_server, url)  # this process stands for `lmforge serve`
    serving = own_server.prefect_home / "serving"
    other = {"pid": os.getppid(), "host": this_host(), "api_url": "http://127.0.0.1:1/api"}
    (serving / "other.json").write_text(json.dumps(other))  # serving from another server
    gone = serving / "gone.json"  # a serve killed with -9
    gone.write_text(json.dumps({"pid": 2**22 + 12345, "host": this_host(), "api_url": url}))
    monkeypatch.setenv("LMFORGE_HOME", str(own_server.root))

    refused = CliRunner().invoke(app, ["server", "stop"])
    assert refused.exit_code == 1, refused.output
    assert f"lmforge serve (pid {os.getpid()}) serves this workspace's" in refused.stderr
    assert running_server(own_server) is not None and not gone.exists()
    forced = CliRunner().invoke(app, ["server", "stop", "--force"])
    assert forced.exit_code == 0 and "stopped" in forced.stdout


def test_temporary_servers_start_one_at_a_time_as_each_migrates_the_database(tmp_path):
    """Under `LMFORGE_PREFECT_SERVER=ephemeral` each run's temporary server migrates the
    workspace's database as it starts: two runs starting together on a fresh workspace migrated
    it twice at once, and one printed alembic's traceback. The server now starts as the run
    begins, under the workspace's lock: while another process holds it, nothing is migrated."""
    import fcntl

    home = tmp_path / "home"
    (home / "prefect").mkdir(parents=True)
    script = (
        "from storage.workspace import activate_workspace\n"
        "from flows.prefect_server import ensure_server\n"
        "from prefect.server.api.server import SubprocessASGIServer\n"
        "assert ensure_server(activate_workspace().ensure()) is None\n"
        "print('running', SubprocessASGIServer().running)\n"
    )
    unset = ("PREFECT_API_URL", "PREFECT_HOME")  # the session's workspace set its own
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env |= {"LMFORGE_HOME": str(home), "LMFORGE_PREFECT_SERVER": "ephemeral",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}  # fmt: skip
    database = home / "prefect" / "prefect.db"
    with open(home / "prefect" / prefect_server.SERVER_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        process = subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(8)  # long enough for an unlocked start to create and migrate the database
            assert process.poll() is None and not database.exists()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert out.strip() == "running True" and database.exists()


@pytest.mark.parametrize("pid", [0, -1, "own"])
def test_a_record_of_pid_0_or_of_a_process_not_started_with_its_port_is_no_server(own_server,
                                                                                  pid):  # fmt: skip
    """Pid 0 names this process's own group (and -1 every process): `server stop` would have
    signalled them. A live pid without the recorded port on its command line is another
    process that was given the pid later (after a reboot), not the server."""
    path = own_server.prefect_home / prefect_server.STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"pid": os.getpid() if pid == "own" else pid, "port": 1, "status": "starting",
             "api_url": "http://127.0.0.1:1/api", "started_at": time.time()}  # fmt: skip
    path.write_text(json.dumps(state))
    try:
        assert starting_server(own_server) is None and running_server(own_server) is None
    finally:
        path.unlink()  # not for the fixture's `stop_server` to signal, had it been taken


def test_a_server_that_exits_as_it_starts_is_said_at_once_not_after_the_start_up_time(
    own_server, monkeypatch
):
    monkeypatch.setattr(prefect_server, "STARTUP_TIMEOUT_S", 20.0)
    monkeypatch.setattr(prefect_server, "_server_command", lambda port: [
        sys.executable, "-c", "import sys; print('no such database'); sys.exit(3)"])  # fmt: skip
    began = time.monotonic()
    with pytest.raises(prefect_server.ServerError, match=r"(?s)did not start.*no such database"):
        ensure_server(own_server)
    assert time.monotonic() - began < 10 and record(own_server) is None


STUBBORN = """\
import os, signal, subprocess, sys, time
from pathlib import Path

folder = Path(sys.argv[2])
helper = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                           "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
(folder / "pids").write_text(f"{os.getpid()} {helper.pid}")
time.sleep(300)
"""


def test_server_stop_kills_what_of_the_server_s_group_outlives_sigterm(own_server, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    """The server's leader exits on SIGTERM before a process it started (uvicorn, holding the
    port): `stop` returned with that one still running, and `stopped` was said."""
    folder = tmp_path / "stubborn"
    folder.mkdir()
    (folder / "server.py").write_text(STUBBORN)
    monkeypatch.setattr(prefect_server, "_server_command",
                        lambda port: [sys.executable, str(folder / "server.py"), str(port),
                                      str(folder)])  # fmt: skip
    monkeypatch.setattr(
        prefect_server,
        "_healthy",
        lambda url, timeout_s=2.0: (
            (folder / "pids").is_file() and wait_until(lambda: _ignores_sigterm(folder), 10)
        ),
    )
    ensure_server(own_server)
    server, helper = started_pids(folder)
    assert stop_server(own_server, timeout_s=1)
    assert not pid_alive(server) and not pid_alive(helper)


def _ignores_sigterm(folder: Path) -> bool:
    """Whether the stubborn server's helper has set SIGTERM aside yet (bit 15 of SigIgn)."""
    helper = int((folder / "pids").read_text().split()[1])
    status = Path(f"/proc/{helper}/status").read_text()
    ignored = int(status.split("SigIgn:")[1].split()[0], 16)
    return bool(ignored & (1 << (signal.SIGTERM - 1)))


def test_the_server_listens_on_the_loopback_only():
    # The Prefect API has no authentication by default: on 0.0.0.0 the network could run flows.
    command = prefect_server._server_command(4200)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "4200"


def test_ephemeral_mode_is_asked_for_in_any_case(monkeypatch):
    for value, asked in (("ephemeral", True), ("Ephemeral", True), ("", False), ("no", False)):
        monkeypatch.setenv("LMFORGE_PREFECT_SERVER", value)
        assert prefect_server.ephemeral_mode() is asked, value


def test_the_server_lock_waits_while_another_process_holds_it(workspace):
    """Two `lmforge` starting together: the second waits for the first's server, not a
    second server beside it (a lock held shared by another, as much as one held whole)."""
    import fcntl
    import threading

    workspace.prefect_home.mkdir(parents=True, exist_ok=True)
    entered = threading.Event()

    def start() -> None:
        with prefect_server._server_lock(workspace):
            entered.set()

    with open(workspace.prefect_home / prefect_server.SERVER_LOCK, "a+") as other:
        fcntl.flock(other, fcntl.LOCK_SH)
        waiting = threading.Thread(target=start, daemon=True)
        waiting.start()
        assert not entered.wait(0.5), "the lock was taken while another held it"
    assert entered.wait(10)


def test_server_stop_stops_a_server_still_starting(own_server, tmp_path, monkeypatch):
    """One whose starter was killed before it answered: `server stop` said "no server was
    running" and left it."""
    from typer.testing import CliRunner

    from flows.cli import app

    folder = tmp_path / "server"
    server = start_then_kill_the_starter(own_server, folder)
    monkeypatch.setenv("LMFORGE_HOME", str(own_server.root))
    said = CliRunner().invoke(app, ["server", "stop"])
    assert said.exit_code == 0 and said.stdout.strip() == "stopped"
    assert not pid_alive(server) and record(own_server) is None


def test_a_temporary_server_starts_under_the_workspace_s_lock(workspace, monkeypatch):
    """Each temporary server migrates the workspace's database as it starts: two at once ran
    the migration twice, and one printed alembic's traceback."""
    import fcntl

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("LMFORGE_PREFECT_SERVER", "ephemeral")
    monkeypatch.setenv("PREFECT_HOME", str(workspace.prefect_home))
    held = []

    def start() -> None:
        with open(workspace.prefect_home / prefect_server.SERVER_LOCK, "a+") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(True)

    monkeypatch.setattr(prefect_server, "_temporary_server_in_its_own_session", lambda: None)
    monkeypatch.setattr(prefect_server, "_start_temporary_server", start)
    assert ensure_server(workspace) is None and held == [True]


def test_server_start_under_ephemeral_mode_with_an_api_url_set_prints_it(tmp_path, monkeypatch):
    # A worker's environment: the URL set wins over ephemeral mode, as it does for a run.
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LMFORGE_PREFECT_SERVER", "ephemeral")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    said = CliRunner().invoke(app, ["server", "start"])
    assert said.exit_code == 0 and said.stdout.strip() == "http://127.0.0.1:9/api"


def test_a_moved_workspace_adopts_no_server_of_its_old_place(own_server, tmp_path, monkeypatch):
    """Whether the old place is gone or holds a workspace with a server of its own, the server
    the moved record names serves the old path's database: never this workspace's, and not
    left running with no record naming it."""
    from storage.workspace import Workspace

    folder = tmp_path / "old"
    start_stand_in(own_server, folder, monkeypatch)
    old, _ = started_pids(folder)
    os.environ.pop("PREFECT_API_URL")
    state = json.loads((own_server.prefect_home / prefect_server.STATE_FILE).read_text())
    moved = Workspace(tmp_path / "moved").ensure()
    moved.prefect_home.mkdir(parents=True, exist_ok=True)
    gone = state | {"log": str(tmp_path / "gone" / "prefect" / "server.log")}
    (moved.prefect_home / prefect_server.STATE_FILE).write_text(json.dumps(gone))
    assert running_server(moved) is None and pid_alive(old)

    (moved.prefect_home / prefect_server.STATE_FILE).write_text(json.dumps(state))
    another = state | {"pid": 2**22 + 12345, "port": state["port"] + 1}  # the new one's own
    (own_server.prefect_home / prefect_server.STATE_FILE).write_text(json.dumps(another))
    assert stop_server(moved, timeout_s=5)
    assert not pid_alive(old) and record(moved) is None


def test_a_restarted_server_listens_on_its_old_port_while_it_is_free(own_server, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    """Workers, `lmforge serve` and running flow runs hold the server's URL: a `server stop`
    and `start` that moved it to a new port cut them off for good."""

    def start(name: str) -> str:
        monkeypatch.delenv("PREFECT_API_URL", raising=False)  # `ensure_server` exported it
        return start_stand_in(own_server, tmp_path / name, monkeypatch)

    first = start("first")
    assert stop_server(own_server, timeout_s=5)
    assert start("second") == first
    assert running_server(own_server)["pid"] == started_pids(tmp_path / "second")[0]
    assert stop_server(own_server, timeout_s=5)
    port = int(first.split(":")[2].split("/")[0])
    with contextlib.closing(socket.socket()) as taken:  # another program has it meanwhile
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        taken.bind(("127.0.0.1", port))
        taken.listen()
        third = start("third")
    assert third != first and running_server(own_server)["api_url"] == third
