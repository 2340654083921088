"""A process started under `lm.parent_death` dies with its parent, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lm.parent_death import PARENT_PID_VARIABLE
from storage.processes import pid_alive
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parent.parent
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="PR_SET_PDEATHSIG is Linux's")  # fmt: skip

COMMAND = b"import time; time.sleep(120)"
CHECK = "from lm.parent_death import die_with_parent; die_with_parent(); print('still here')"


def run_check(parent: str) -> subprocess.CompletedProcess:
    env = os.environ | {PARENT_PID_VARIABLE: parent}
    return subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@linux_only
def test_a_process_whose_parent_is_already_gone_exits_at_once():
    # Its parent is this test, not the process the variable names: as if that one had died
    # before prctl ran and left the child to another parent.
    result = run_check(str(os.getppid()))
    assert result.returncode == 1
    assert "still here" not in result.stdout


def test_a_process_with_its_parent_alive_carries_on():
    assert run_check(str(os.getpid())).stdout == "still here\n"


def test_a_process_started_by_hand_carries_on():
    env = {k: v for k, v in os.environ.items() if k != PARENT_PID_VARIABLE}
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.stdout == "still here\n"


@linux_only
def test_a_command_run_under_the_guard_dies_when_its_parent_is_killed():
    parent_script = (
        "import os, subprocess, sys\n"
        f"env = os.environ | {{{PARENT_PID_VARIABLE!r}: str(os.getpid())}}\n"
        "child = subprocess.Popen([sys.executable, '-m', 'lm.parent_death', sys.executable,\n"
        f"                          '-c', {COMMAND.decode()!r}], env=env)\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_script], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    child = int(parent.stdout.readline())
    try:
        # Once the command runs (exec done), the guard is in place: the kernel's signal, not
        # the check for a parent already gone, is what is tested. The guard's own command line
        # names the command too: only once `lm.parent_death` has left it has exec happened.
        cmdline = Path(f"/proc/{child}/cmdline")
        assert wait_until(lambda: cmdline.read_bytes().split(b"\0")[1:3] == [b"-c", COMMAND], 60)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_until(lambda: not pid_alive(child), 5)
    finally:
        parent.kill()
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)
