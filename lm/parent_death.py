"""Processes that die with the process that started them: torchrun's agent with the train stage
that launched it, and every rank with the agent.

Killing only the launching process (`kill -9`, the OOM killer) would otherwise leave torchrun and
its ranks training on, reparented to PID 1, writing checkpoints into a work folder whose lock
died with the launcher. On Linux `prctl(PR_SET_PDEATHSIG)` asks the kernel to signal a process
when its parent exits; the setting survives `exec` but not `fork`, so each generation sets its
own. The launcher names itself in `PARENT_PID_VARIABLE`; a process that finds the variable calls
`die_with_parent`, which also catches a parent that died before `prctl` ran (the kernel would then
never send the signal). Elsewhere this is a no-op.

Caveat the launcher must honour: the signal comes when the *thread* that forked the child exits,
not the process. So the thread that starts such a child must outlive it (wait for it).

`python -m lm.parent_death COMMAND...` runs COMMAND (with `exec`, the same process) under this
guard and names itself to COMMAND's children: the launcher starts torchrun so, which needs no
`preexec_fn` (unsafe in a process with threads, as Prefect's are).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_PID_VARIABLE = "LMFORGE_PARENT_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(death_signal: int = signal.SIGKILL) -> None:
    """Have the kernel send `death_signal` to this process when its parent, the process
    `$LMFORGE_PARENT_PID`, exits; exit at once if it already has. Without the variable (a process
    started by hand) or off Linux, nothing happens."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if not parent or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    # Checked after prctl: a parent gone before it left us to PID 1 (or a subreaper) already.
    if os.getppid() != int(parent):
        os._exit(1)


def main(argv: list[str]) -> None:
    """Run `argv` in this process, dying with this process's parent; its children die with it
    if they call `die_with_parent`."""
    if not argv:
        print("usage: python -m lm.parent_death COMMAND [ARGS...]", file=sys.stderr)
        sys.exit(2)
    # SIGTERM, not SIGKILL: torchrun's agent handles it by stopping its ranks before it exits.
    die_with_parent(signal.SIGTERM)
    os.environ[PARENT_PID_VARIABLE] = str(os.getpid())  # exec keeps the pid
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
