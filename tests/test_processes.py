"""Telling live processes from dead ones (stale staging folders, abandoned runs, a dead server)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.processes import group_alive, pid_alive


def test_a_running_process_is_alive():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="zombies are read from /proc")
def test_an_exited_child_not_yet_reaped_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while _state(child.pid) != "Z":  # exited; its parent (this test) has not waited
            assert time.monotonic() < deadline, "the child did not exit within 30 s"
            time.sleep(0.02)
        os.kill(child.pid, 0)  # the PID still answers signals...
        assert not pid_alive(child.pid)  # ...but the process is gone
    finally:
        child.wait()


def test_a_reaped_process_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)


def test_no_pid_below_one_is_a_live_process():
    """`kill(0, 0)` and `kill(-1, 0)` succeed (this process's group, every process): a record
    damaged to pid 0 or -1 must not count as a live run, server or serve."""
    assert not pid_alive(0) and not pid_alive(-1) and not pid_alive(-os.getpid())
    assert pid_alive(os.getpid())


def test_no_pid_past_a_c_int_is_a_live_process():
    """A record edited to such a pid made `kill` raise OverflowError, a traceback from
    `lmforge server status` and `server stop`."""
    assert not pid_alive(2**31) and not pid_alive(2**64)


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 1 :].split()[0]


def test_a_group_lives_while_any_member_does_its_leader_gone_or_a_zombie():
    # A leader that starts a member and exits at once: the member outlives it in the group.
    member = "import time; time.sleep(30)"
    spawn = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {member!r}])"
    leader = subprocess.Popen([sys.executable, "-c", spawn], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while pid_alive(leader.pid):  # exited (a zombie until this test waits for it)
            assert time.monotonic() < deadline, "the leader did not exit within 30 s"
            time.sleep(0.02)
        assert group_alive(leader.pid)  # its member still runs
        os.killpg(leader.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while group_alive(leader.pid):  # the member is gone (reaped by init), the leader a zombie
            assert time.monotonic() < deadline, "the group is not gone 30 s after SIGKILL"
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
    assert not group_alive(leader.pid)
