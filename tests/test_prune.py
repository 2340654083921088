"""`lmforge prune`: interrupted trainings and abandoned builds are found and removed; what a live
process uses is neither listed nor removed."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

from storage.prune import find_leftovers, remove_leftover
from storage.workspace import Workspace


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _folder(path, size: int = 1000):
    path.mkdir(parents=True)
    (path / "model.pt").write_bytes(b"\0" * size)
    return path


def test_leftovers_are_found_and_removed_but_live_work_is_kept(tmp_path):
    workspace = Workspace(tmp_path).ensure()
    train = workspace.artifacts / "train"
    interrupted = _folder(train / "train-old.work", 5000)
    (interrupted / "lock").touch()
    never_locked = _folder(train / "train-early.work")  # killed before it made its lock
    training_now = _folder(train / "train-live.work")
    abandoned = _folder(workspace.corpus / f"clean-k.partial-{_dead_pid()}-abcd1234")
    building_now = _folder(workspace.artifacts / "encode" / f"encode-k.partial-{os.getpid()}-ab")
    published = _folder(train / "train-done")
    with open(training_now / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the train stage holds it while it trains
        leftovers = find_leftovers(workspace)
        assert {leftover.path: leftover.kind for leftover in leftovers} == {
            interrupted: "interrupted training",
            never_locked: "interrupted training",
            abandoned: "abandoned build",
        }
        assert next(x.size for x in leftovers if x.path == interrupted) == 5000
        assert all(remove_leftover(leftover) for leftover in leftovers)
        assert find_leftovers(workspace) == []
    assert not interrupted.exists() and not never_locked.exists() and not abandoned.exists()
    assert training_now.is_dir() and building_now.is_dir() and published.is_dir()
    assert [leftover.path for leftover in find_leftovers(workspace)] == [training_now]  # free now


def test_a_training_that_takes_its_folder_up_again_is_not_removed(tmp_path):
    workspace = Workspace(tmp_path).ensure()
    work = _folder(workspace.artifacts / "train" / "train-k.work")
    (work / "lock").touch()
    [leftover] = find_leftovers(workspace)
    with open(work / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a rerun of the same key resumed it meanwhile
        assert remove_leftover(leftover) is False
    assert (work / "model.pt").is_file()


def test_a_prune_cut_short_is_finished_by_the_next(tmp_path):
    workspace = Workspace(tmp_path).ensure()
    half = _folder(workspace.artifacts / "train" / "train-k.work.pruned-123")
    [leftover] = find_leftovers(workspace)
    assert leftover.path == half and leftover.kind == "abandoned build"
    assert remove_leftover(leftover) and not half.exists()
