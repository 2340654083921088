"""Telling live processes from dead ones (stale staging folders, abandoned runs, a dead server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.processes import pid_alive


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


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 1 :].split()[0]
