"""Whether a process still runs: how stale staging folders, abandoned runs and a dead background
server are told apart from live ones."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and has not exited. A zombie (a process that has exited but
    whose parent has not yet waited for it) is dead: it runs nothing and holds no files, and its
    PID answers signals until it is reaped, which may be never if the parent forgot. 0 and
    below name no process (a damaged record's): `kill` reads them as process groups, this
    process's own among them, and always found them alive; one past a C int names none
    either (`kill` raised OverflowError: a traceback from `lmforge server status`)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass  # it exists, under another user
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """State `Z` in `/proc/PID/stat` (Linux). Where there is no /proc, a zombie cannot be told
    from a live process here: it counts as alive, as before."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return _fields_after_command(stat)[:1] == ["Z"]


def _fields_after_command(stat: str) -> list[str]:
    """The fields of a `/proc/PID/stat` line after the command, from the state on: `PID
    (COMMAND) STATE PPID PGRP ...`, where the command may hold spaces and parentheses, so they
    start after the last ')'."""
    return stat[stat.rfind(")") + 1 :].split()


def group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` still runs (zombies do not count, as in
    `pid_alive`). Where there is no /proc, whether the group answers a signal."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    for stat_file in proc.glob("[0-9]*/stat"):
        try:
            stat = stat_file.read_text()
        except OSError:
            continue  # exited meanwhile
        fields = _fields_after_command(stat)  # STATE PPID PGRP ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def this_host() -> str:
    """`user@host`: what a run records as where it runs, so that only its own machine and
    account judge whether its process is gone."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def run_looks_abandoned(status: str, hostname: str | None, pid: int | None) -> bool:
    """A run still recorded `running` whose process on this machine is gone: killed before it
    could record an outcome. The next run marks it `crashed`; readers say so before that."""
    return (
        status == "running" and pid is not None and hostname == this_host() and not pid_alive(pid)
    )
