"""Whether a process still runs: how stale staging folders, abandoned runs and a dead background
server are told apart from live ones."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
