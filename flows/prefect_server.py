"""A long-lived local Prefect server for the workspace, started on first use.

Without `PREFECT_API_URL`, Prefect starts a temporary server inside every process that runs a
flow and stops it at exit: about 10 s per `lmforge run` on this machine, which would dwarf a fully
cached run, and two runs at once would each run a server on one SQLite file. Instead the first
`lmforge run` starts `prefect server start` on 127.0.0.1 in the background (its own session, log
in `prefect/server.log`), records its pid and port in `prefect/lmforge-server.json`, and later
runs reuse it: a cached run then costs about 4 s. `lmforge server stop` ends it. The record
is written as the server starts, marked `starting` until it answers, so a start cut short (Ctrl-C
stops the server it began; `kill -9` cannot) never leaves a server nothing knows of.

A `PREFECT_API_URL` already set (a shared server, a worker's environment) always wins, and
`LMFORGE_PREFECT_SERVER=ephemeral` restores Prefect's own per-process behaviour.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from lm.atomic_files import write_text_atomically
from storage.processes import group_alive, pid_alive
from storage.workspace import Workspace

STATE_FILE = "lmforge-server.json"
# The port the workspace's server last listened on, kept when it stops (`_port_for`).
PORT_FILE = "lmforge-server.port"
# Held while a server starts (and migrates the workspace's database): a workspace server or a
# run's temporary one, one at a time.
SERVER_LOCK = "lmforge-server.lock"
STARTUP_TIMEOUT_S = 90.0
KILL_WAIT_S = 5.0  # for a group sent SIGKILL to be gone


class ServerError(RuntimeError):
    pass


def _state_path(workspace: Workspace) -> Path:
    return workspace.prefect_home / STATE_FILE


def _healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def _free_port(port: int = 0) -> int:
    """`port` if nothing listens on it (0: any free port), else 0. As uvicorn binds, a port
    whose last connections linger in TIME_WAIT (a server stopped a moment ago) counts as free."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return 0
        return sock.getsockname()[1]


def _port_for(workspace: Workspace) -> int:
    """The port the workspace's server had last time while it is free, else any free one. A
    service's workers, `lmforge serve`, its running flow runs and every shell that did `export
    PREFECT_API_URL=$(lmforge server start)` hold the server's URL: a server restarted (`lmforge
    server stop`, `start`) on a new port left them talking to nothing for good, and the
    automation then marked the runs they still trained Crashed."""
    try:
        last = int((workspace.prefect_home / PORT_FILE).read_text())
    except (OSError, ValueError):
        last = 0
    return (0 < last < 65536 and _free_port(last)) or _free_port()


def _recorded(workspace: Workspace) -> dict | None:
    """The recorded server, whatever its state; None for no record, one cut short, or one
    brought from another place (`_of_another_place`)."""
    state = _read_record(workspace)
    return state if state and not _of_another_place(workspace, state) else None


def _read_record(workspace: Workspace) -> dict | None:
    path = _state_path(workspace)
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(state, dict):
        return None
    # A record edited by hand, or by another version, is no record: never a traceback.
    pid, port = state.get("pid"), state.get("port")
    is_number = [isinstance(value, int) and not isinstance(value, bool) for value in (pid, port)]
    started_at = state.get("started_at", 0.0)
    is_time = isinstance(started_at, int | float) and not isinstance(started_at, bool)
    is_record = all(is_number) and pid > 0 and isinstance(state.get("api_url"), str) and is_time
    return state if is_record else None


def _of_another_place(workspace: Workspace, state: dict) -> bool:
    """Whether the record was written where the workspace no longer is: it was moved (or
    copied) with its record, and the server it names serves the database at the old place.
    The same folder by another path (a symlink) is no other place."""
    log = state.get("log")
    if not isinstance(log, str) or log == str(workspace.prefect_home / "server.log"):
        return False
    try:
        return not os.path.samefile(Path(log).parent, workspace.prefect_home)
    except OSError:  # the old place is gone
        return True


def _retire_record_of_another_place(workspace: Workspace) -> bool:
    """Remove a record the workspace brought from another place (`_of_another_place`), first
    stopping its server where that place is gone: a workspace moved while its server ran was
    served by it from the old path, whose database file it held open, and any new connection
    it made would fail there. A copy's original still runs where it was: its server is left
    to it, while the original's record names it. A workspace made at the old place since (a
    default `.lmforge` made again after a move) has none or its own: left, the old server
    ran on with no record naming it, which no `lmforge server stop` could find. Returns
    whether a server was stopped."""
    state = _read_record(workspace)
    if state is None or not _of_another_place(workspace, state):
        return False
    old_place = Workspace(Path(state["log"]).parent.parent)  # the log is in its prefect/
    there = _read_record(old_place)
    theirs = there is not None and (there["pid"], there["port"]) == (state["pid"], state["port"])
    stopped = not theirs and _is_recorded_process(state)
    if stopped:
        _stop_group(state["pid"], timeout_s=5.0)
    _state_path(workspace).unlink(missing_ok=True)
    return stopped


def _write_record(workspace: Workspace, state: dict) -> None:
    write_text_atomically(_state_path(workspace), json.dumps(state))


def _is_recorded_process(state: dict) -> bool:
    """Whether the recorded pid is still the server this workspace started, not a process that
    was given the same pid later (after a reboot, say): alive, and started with the recorded
    port on its command line. Without /proc, alive is all that can be told."""
    if not pid_alive(state["pid"]):
        return False
    try:
        arguments = Path(f"/proc/{state['pid']}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return str(state["port"]).encode() in arguments


def running_server(workspace: Workspace) -> dict | None:
    """The workspace's server, if one is recorded and answering."""
    state = _recorded(workspace)
    if state and _is_recorded_process(state) and _healthy(state["api_url"]):
        return state
    return None


def starting_server(workspace: Workspace) -> dict | None:
    """The workspace's server if it was started and runs but does not answer yet: starting now,
    or left starting by an `lmforge` that was killed meanwhile (the next start adopts it, or
    replaces it once its start-up time is up; `lmforge server stop` stops it)."""
    state = _recorded(workspace)
    if state and _is_recorded_process(state) and not _healthy(state["api_url"]):
        return state
    return None


class _OwnSessionSubprocess:
    """The `subprocess` module as Prefect's server module sees it, but a `Popen` that starts
    its process in a session of its own, dying with this process (`lm.parent_death`): out of
    the group, a SIGKILL to the group or this process's death would have left it running."""

    class Popen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            import threading

            from lm.parent_death import PARENT_PID_VARIABLE

            kwargs.setdefault("start_new_session", True)
            # The kernel's signal comes when the *thread* that started it exits: only the main
            # thread lives as long as the process (Prefect starts it there, from `lmforge`).
            if threading.current_thread() is threading.main_thread():
                import lm

                args = [sys.executable, "-m", "lm.parent_death", *args]
                env = kwargs["env"] = dict(kwargs.get("env") or os.environ)
                env[PARENT_PID_VARIABLE] = str(os.getpid())
                # `lm` importable in the child whatever its path (a checkout run in place).
                home = str(Path(lm.__file__).resolve().parents[1])
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [home, env.get("PYTHONPATH")]))
            super().__init__(args, *rest, **kwargs)

    def __getattr__(self, name: str):
        return getattr(subprocess, name)


def _temporary_server_in_its_own_session() -> None:
    """Start Prefect's per-process temporary server outside this process's group. `timeout`,
    `docker stop` and CI runners signal the whole group: the server died with the run's first
    SIGTERM, and the run, finding its API gone while it recorded the crash, retried it for
    minutes (one event every 7 s) instead of exiting. Outside the group it lives until this
    process's exit stops it (Prefect's `atexit`), as on a SIGTERM to this process alone, or
    until this process dies (`kill -9`), which the kernel tells it."""
    from prefect.server.api import server

    if not isinstance(server.subprocess, _OwnSessionSubprocess):
        server.subprocess = _OwnSessionSubprocess()  # type: ignore[assignment]


def ensure_server(workspace: Workspace) -> str | None:
    """Point this process (and its children) at a Prefect API, starting the workspace's server
    if needed. Returns the API URL, or None for Prefect's ephemeral mode."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    _ensure_prefect_home(workspace)
    if ephemeral_mode():
        _temporary_server_in_its_own_session()
        _ensure_database_writable(workspace)
        with _server_lock(workspace):  # as the workspace's server migrates it
            _start_temporary_server()
        return None
    with _server_lock(workspace):  # two runs starting together start one
        _retire_record_of_another_place(workspace)
        state = running_server(workspace) or _adopt_starting(workspace) or _start(workspace)
        if state.get("status", "running") != "running":
            state = state | {"status": "running"}
            _write_record(workspace, state)
    os.environ["PREFECT_API_URL"] = state["api_url"]
    return state["api_url"]


def _ensure_prefect_home(workspace: Workspace) -> None:
    """The folder of Prefect's database, `PREFECT_HOME` (the workspace's `prefect/` unless one
    was set): a missing one was SQLite's "unable to open database file" deep in the server's
    log, and a temporary server's start-up timeout on the terminal."""
    home = Path(os.environ.get("PREFECT_HOME") or workspace.prefect_home)
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ServerError(f"PREFECT_HOME {home}: cannot create it ({error.strerror})") from error
    try:  # one that takes no writes: "the machine may be too busy" after a temporary server died
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as error:
        raise ServerError(
            f"PREFECT_HOME {home}: not writable ({error.strerror}); Prefect keeps its database "
            "there: make it writable, or unset PREFECT_HOME to use the workspace's"
        ) from error


def _ensure_database_writable(workspace: Workspace) -> None:
    """Prefect's SQLite files in `PREFECT_HOME`, writable by this user before a server of this
    process opens them. SQLite makes them 0644 whatever the umask, so in a workspace a group
    shares (umask 002) the second user's server died on "attempt to write a readonly database"
    in its log, and the terminal said the machine may be too busy."""
    home = Path(os.environ.get("PREFECT_HOME") or workspace.prefect_home)
    for name in ("prefect.db", "prefect.db-wal", "prefect.db-shm"):
        path = home / name
        if path.exists() and not os.access(path, os.W_OK):
            owner = _owner(path)
            raise ServerError(
                f"{path}: Prefect's database is not writable by this user (it is {owner}'s, "
                f"mode {path.stat().st_mode & 0o777:o}); let the workspace's group write it "
                f"(chmod g+w {home}/prefect.db*), run as {owner}, or set PREFECT_HOME to a "
                "folder of your own"
            )


def _owner(path: Path) -> str:
    """The name of `path`'s owner, or its uid where no user has it."""
    try:
        return path.owner()
    except (KeyError, NotImplementedError):
        return str(path.stat().st_uid)


def ephemeral_mode() -> bool:
    return os.environ.get("LMFORGE_PREFECT_SERVER", "").lower() == "ephemeral"


@contextlib.contextmanager
def _server_lock(workspace: Workspace):
    """The workspace's `SERVER_LOCK`, held exclusively for the block."""
    lock_path = workspace.prefect_home / SERVER_LOCK
    try:
        workspace.prefect_home.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a+")  # noqa: SIM115 (closed by the `with` below)
    except OSError as error:
        raise ServerError(
            f"{lock_path}: cannot write the server's lock file ({error.strerror}); is "
            f"LMFORGE_HOME {workspace.root} writable?"
        ) from error
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _start_temporary_server() -> None:
    """Start this process's temporary server now, one process at a time (the caller holds the
    workspace's lock), rather than when the flow first calls the API. Each one migrates the
    workspace's database as it starts: two runs starting together on a fresh workspace ran the
    migration twice at once, and one printed alembic's long traceback ("Online migration
    expected to match one row"). Prefect's client later finds this server running."""
    from prefect.server.api.server import SubprocessASGIServer

    try:
        SubprocessASGIServer().start()
    except RuntimeError as error:
        if "ephemeral Prefect API server" not in str(error):
            raise
        if "exited with code" in str(error):  # it died: waiting longer would not help
            raise ServerError(
                f"{error.args[0].split(' stdout:')[0]} Its own error is above; is PREFECT_HOME "
                f"{os.environ.get('PREFECT_HOME', '')} writable, with disk space?"
            ) from None
        raise ServerError(  # Prefect's fixed wait ran out on a busy machine
            f"{error.args[0].split(' stdout:')[0]} The machine may be too busy to start one in "
            "time: run again, raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or let runs "
            "share the workspace's background server (unset LMFORGE_PREFECT_SERVER)"
        ) from None


def _adopt_starting(workspace: Workspace) -> dict | None:
    """A server an earlier `lmforge` started and was killed before it answered: wait out the
    rest of its start-up time and use it, or stop it (its whole process group) if it never
    answers, so that no second server runs beside it."""
    state = starting_server(workspace)
    if state is None:
        return None
    deadline = state.get("started_at", 0.0) + STARTUP_TIMEOUT_S
    while _is_recorded_process(state) and time.time() < deadline:
        if _healthy(state["api_url"], timeout_s=1.0):
            return state
        time.sleep(0.2)
    _stop_group(state["pid"], timeout_s=5.0)
    _state_path(workspace).unlink(missing_ok=True)
    return None


def _start(workspace: Workspace) -> dict:
    _ensure_database_writable(workspace)
    port = _port_for(workspace)
    api_url = f"http://127.0.0.1:{port}/api"
    write_text_atomically(workspace.prefect_home / PORT_FILE, str(port))
    log_path = workspace.prefect_home / "server.log"
    environment = dict(os.environ)
    environment.pop("PREFECT_API_URL", None)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            _server_command(port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command; stopped by `lmforge server stop`
            env=environment,
        )
    state = {"pid": process.pid, "port": port, "api_url": api_url, "log": str(log_path)}
    try:
        # Recorded before it answers: if this command is killed now, the next start, `server
        # status` and `server stop` still find the server it began.
        _write_record(workspace, state | {"status": "starting", "started_at": time.time()})
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(api_url, timeout_s=1.0):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise ServerError(
                    f"the Prefect server did not start; the end of {log_path}:\n{tail}"
                )
            time.sleep(0.2)
    except BaseException:  # Ctrl-C included: a server no record points to would run forever
        _stop_group(process.pid, timeout_s=5.0, child=process)
        _state_path(workspace).unlink(missing_ok=True)
        raise
    state |= {"status": "running"}
    _write_record(workspace, state)
    return state


def _stop_group(pid: int, timeout_s: float, child: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group `pid` leads (the server and the uvicorn it started), SIGKILL
    what is left after `timeout_s`, and return once every process of the group is gone: the
    leader can exit before the processes it started (which may still hold the port)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _running(pid, child) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _running(pid, child):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while _running(pid, child) and time.monotonic() < deadline + KILL_WAIT_S:
            time.sleep(0.1)
    if child is not None:
        child.wait()


def _running(pgid: int, child: subprocess.Popen | None) -> bool:
    """Whether the group `pgid` leads has a process left, once its leader is reaped if it is
    ours (a zombie is gone)."""
    if child is not None:
        child.poll()
    else:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pgid, os.WNOHANG)
    return pid_alive(pgid) or group_alive(pgid)


def stop_server(workspace: Workspace, timeout_s: float = 15.0) -> bool:
    """Stop the workspace's server, running or still starting, and everything it started.
    Returns whether one was running."""
    path = _state_path(workspace)
    if _retire_record_of_another_place(workspace):
        return True
    state = _recorded(workspace)
    if state is None:
        path.unlink(missing_ok=True)
        return False
    was_running = _is_recorded_process(state)
    if was_running:
        _stop_group(state["pid"], timeout_s)
    path.unlink(missing_ok=True)
    return was_running


def _server_command(port: int) -> list[str]:
    """`prefect server start` on 127.0.0.1:`port`, from this environment."""
    prefect_cli = Path(sys.executable).with_name("prefect")
    return [str(prefect_cli), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
