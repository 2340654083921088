"""What a workspace holds that no run will finish: the disk `lmforge prune` gives back.

Two kinds of leftovers:

- **interrupted trainings**: a train stage works in `artifacts/train/<key>.work` (checkpoints,
  `best/`, its log) and deletes it once the model is published. A run killed mid-training leaves
  it for the next run *of the same key* to resume; after a change to anything in that key (a
  setting, the data, the code) no run ever will, and a GPT-2-sized one holds gigabytes. One whose
  `lock` a process holds is training now and is never listed.
- **abandoned builds**: `<key>.partial-<pid>-<nonce>` staging folders of any store whose process
  is gone. The next build in the same store sweeps its own; a store never built again keeps
  them.

Only what no live process uses is listed, and removing an interrupted training takes its lock
first, so a run that starts on it meanwhile is never cut from under its feet.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from storage.artifacts import STAGING_INFIX, staging_owner
from storage.processes import pid_alive
from storage.workspace import Workspace

WORK_SUFFIX = ".work"
WORK_LOCK = "lock"  # the file a training flocks in its work folder (tasks/train.py)
PRUNED_INFIX = ".pruned-"
INTERRUPTED = "interrupted training"
NEVER_STARTED = "training that never started"


@dataclass(frozen=True)
class Leftover:
    path: Path
    kind: str  # "interrupted training", "training that never started" or "abandoned build"
    size: int  # bytes
    modified: float  # seconds since the epoch, the newest file's


def find_leftovers(workspace: Workspace) -> list[Leftover]:
    """Every interrupted training and abandoned build of `workspace` no process is using,
    oldest first."""
    found = [
        _describe(folder, _work_kind(folder))
        for folder in sorted((workspace.artifacts).glob(f"*/*{WORK_SUFFIX}"))
        if _our_folder(folder) and not training_lock_held(folder)
    ]
    found += [
        _describe(folder, "abandoned build")
        for folder in _staging_folders(workspace)
        if not _owner_alive(folder)
    ]
    return sorted(found, key=lambda leftover: leftover.modified)


def remove_leftover(leftover: Leftover) -> bool:
    """Delete one leftover; False when a process took it up since it was found (kept)."""
    if leftover.kind in (INTERRUPTED, NEVER_STARTED):  # a work folder: take its lock first
        with _locked(leftover.path) as locked:
            if not locked:
                return False
            _remove_tree(leftover.path)
        return True
    if _owner_alive(leftover.path):
        return False
    _remove_tree(leftover.path)
    return True


def _remove_tree(folder: Path) -> None:
    """Rename first, then delete: a folder half deleted is never left under its own name."""
    doomed = folder.with_name(f"{folder.name}{PRUNED_INFIX}{time.time_ns()}")
    folder.rename(doomed)
    shutil.rmtree(doomed)


def training_lock_held(work: Path) -> bool:
    """Whether a live process trains in the work folder `work` now (holds its lock)."""
    with _locked(work) as locked:
        return not locked


@contextlib.contextmanager
def _locked(work: Path) -> Iterator[bool]:
    """Hold `work`'s training lock for the block if no process holds it; yields whether it got
    it. A folder without a lock file (killed before it was made) is free."""
    path = work / WORK_LOCK
    if not path.exists():
        yield True
        return
    try:  # for writing: on NFS flock is emulated by fcntl, whose exclusive lock needs it
        lock = open(path, "a+")  # noqa: SIM115 (closed by the `with` below)
    except OSError:  # a read-only workspace: local flock needs no write access
        lock = open(path, "rb")  # noqa: SIM115
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _staging_folders(workspace: Workspace) -> Iterator[Path]:
    """Staging folders of every store, and folders a prune renamed but did not finish."""
    for base in (workspace.corpus, *sorted(workspace.artifacts.glob("*"))):
        if base.is_dir():
            for pattern in (f"*{STAGING_INFIX}*", f"*{PRUNED_INFIX}*"):
                yield from (folder for folder in sorted(base.glob(pattern)) if _our_folder(folder))


def _our_folder(path: Path) -> bool:
    """A folder lmforge made: a link to one is someone else's (rmtree refuses links, and prune
    crashed with the link renamed)."""
    return path.is_dir() and not path.is_symlink()


def _work_kind(work: Path) -> str:
    return NEVER_STARTED if never_started(work) else INTERRUPTED


def never_started(work: Path) -> bool:
    """Whether a work folder holds nothing but its lock: a training that failed before its
    first checkpoint (a `train.init_from` that does not fit, say), or never began: nothing a
    rerun resumes."""
    return all(entry.name == WORK_LOCK for entry in work.iterdir())


def _owner_alive(folder: Path) -> bool:
    """Whether the process that named a staging folder still runs. A folder a prune renamed has
    no owner; one whose name holds no process id is not ours to judge, and is kept."""
    if PRUNED_INFIX in folder.name:
        return False
    pid = staging_owner(folder)
    return pid is None or pid_alive(pid)


def _describe(folder: Path, kind: str) -> Leftover:
    size, newest = 0, folder.stat().st_mtime
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            stat = path.stat()
            newest = max(newest, stat.st_mtime)
            if path.is_file():
                size += stat.st_size
    return Leftover(folder, kind, size, newest)
