"""Announcements of trainings over several machines (`storage.launches`) and `lmforge
train-join`'s answers when there is nothing right to join. The joining itself, with the real
torchrun, is in tests/test_distributed.py."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time

from storage.launches import announced, claimed, new_launch, open_launches, wait_for_launch
from storage.processes import this_host
from storage.prune import WORK_LOCK
from tests.conftest import run_cli


@contextlib.contextmanager
def training_in(work):
    """Hold `work`'s training lock, as the train stage does while it trains there."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / WORK_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
        fcntl.flock(lock, fcntl.LOCK_UN)


def launch_in(work, nnodes=2, port=29500, code=None):
    """An announcement of a training in `work`, of this machine's training code by default."""
    from tasks.train import rank_code_digest

    return new_launch(work, nnodes, 1, "127.0.0.1", port, 60, code or rank_code_digest())


@contextlib.contextmanager
def listening():
    """A port something listens at, as node 0's rendezvous store does; yields the port."""
    with contextlib.closing(socket.socket()) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_a_launch_is_offered_while_its_node_zero_trains_and_withdrawn_after(workspace, tmp_path):
    work = tmp_path / "key.work"
    with training_in(work), announced(workspace, launch_in(work)) as path:
        assert path.is_file()
        [offered] = open_launches(workspace)
        assert (offered.work, offered.nnodes) == (str(work), 2)
        assert wait_for_launch(workspace, {offered.launch_id}, wait_s=0.2) is None
    assert not path.exists() and open_launches(workspace) == []


def test_an_announcement_left_by_a_killed_node_zero_is_not_offered(workspace, tmp_path):
    # Killed with SIGKILL: the announcement stays, but nobody holds the work folder's lock.
    work = tmp_path / "key.work"
    work.mkdir()
    (work / WORK_LOCK).touch()
    folder = workspace.root / "launches"
    folder.mkdir()
    (folder / "stale.json").write_text(launch_in(work).model_dump_json())
    (folder / "torn.json").write_text('{"launch_id": "x", "wo')  # half written, or not ours
    assert open_launches(workspace) == []
    with training_in(work):  # a rerun trains there again: its own announcement is offered
        assert [launch.work for launch in open_launches(workspace)] == [str(work)]
    # The next announcement sweeps the dead one (not a file that is not an announcement).
    other = tmp_path / "other.work"
    with training_in(other), announced(workspace, launch_in(other)) as path:
        assert sorted(folder.iterdir()) == [path, folder / "torn.json"]


def test_an_announcement_older_than_its_join_timeout_is_not_offered(workspace, tmp_path):
    # Node 0 has met every node by then, or given up: nobody can join it any more.
    work = tmp_path / "key.work"
    late = launch_in(work).model_copy(update={"announced_at": time.time() - 61})
    with training_in(work), announced(workspace, late):
        assert open_launches(workspace) == []


def test_train_join_refuses_a_node_rank_the_training_does_not_have(workspace, tmp_path):
    work = tmp_path / "key.work"
    with training_in(work), announced(workspace, launch_in(work, nnodes=2)):
        result = run_cli("train-join", "--node-rank", "2", "--wait-s", "5", check=False)
    assert result.returncode == 1
    assert "node rank 2 is not a node of this training: it has 2 (0 to 1" in result.stderr


def test_train_join_says_where_it_waited_when_nothing_is_announced(workspace):
    result = run_cli("train-join", "--node-rank", "1", "--wait-s", "0.5", check=False)
    assert result.returncode == 1
    assert (
        f"no training over several machines was announced in {workspace.root / 'launches'}"
        in result.stderr.replace("\n", "")
    )


def test_where_the_lock_cannot_be_seen_a_rendezvous_that_answers_keeps_a_launch_open(
    workspace, tmp_path
):
    # A filesystem whose locks stay on each machine: node 0's lock looks free from here.
    work = tmp_path / "key.work"
    work.mkdir()
    with listening() as port, announced(workspace, launch_in(work, port=port)):
        assert [launch.master_port for launch in open_launches(workspace)] == [port]
    with listening() as port:
        pass  # closed: nobody answers there any more
    with announced(workspace, launch_in(work, port=port)):
        assert open_launches(workspace) == []


def test_a_work_folder_this_machine_does_not_see_is_named_and_following_goes_on(
    workspace, tmp_path
):
    """The workspace mounted at another path here: the announced work folder is not found.
    Without --follow that ends the join; with it the failure is reported, the next training
    awaited, and the exit code says one failed."""
    elsewhere = tmp_path / "mounted-elsewhere" / "key.work"
    with listening() as port, announced(workspace, launch_in(elsewhere, port=port)):
        once = run_cli("train-join", "--node-rank", "1", "--wait-s", "5", check=False)
        following = run_cli("train-join", "--node-rank", "1", "--wait-s", "1", "--follow",
                            check=False)  # fmt: skip
    said = once.stderr.replace("\n", "")
    assert once.returncode == 1 and f"works in {elsewhere}, which this machine does not see" in said
    assert "every node must mount the workspace at the same path as node 0" in said
    assert following.returncode == 1
    assert "failed (waiting for the next one)" in following.stderr.replace("\n", "")
    assert "no further training announced within 1 s; done" in following.stdout
    assert "1 of 1 trainings joined failed" in following.stderr.replace("\n", "")


def test_a_node_rank_already_joined_is_refused_and_a_dead_joiner_s_claim_taken_over(
    workspace, tmp_path
):
    """Two machines given the same --node-rank: torchrun would leave the second waiting for
    ever, so its claim is refused. A claim left by a killed joiner of this machine is not."""
    work = tmp_path / "key.work"
    launch = launch_in(work)
    with training_in(work), announced(workspace, launch) as path:
        with claimed(workspace, launch, 1):
            second = run_cli("train-join", "--node-rank", "1", "--wait-s", "5", check=False)
            claims = sorted(p.name for p in path.parent.iterdir())
        assert second.returncode == 1
        assert (f"node 1 of training {launch.launch_id} is already joined by pid {os.getpid()}"
                in second.stderr.replace("\n", ""))  # fmt: skip
        assert claims == [path.name, f"{launch.launch_id}.node-1"]
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        left = path.parent / f"{launch.launch_id}.node-1"
        left.write_text(json.dumps({"host": this_host(), "pid": int(dead)}))
        with claimed(workspace, launch, 1):
            assert json.loads(left.read_text())["pid"] == os.getpid()
        assert not left.exists()
        left.write_text("{}")  # a claim of node 1 still there when node 0 withdraws
    assert list(path.parent.iterdir()) == []


def test_a_machine_running_other_training_code_is_refused(workspace, tmp_path):
    work = tmp_path / "key.work"
    with training_in(work), announced(workspace, launch_in(work, code="0" * 64)):
        result = run_cli("train-join", "--node-rank", "1", "--wait-s", "5", check=False)
    assert result.returncode == 1
    said = result.stderr.replace("\n", "")
    assert "runs other training code than this machine (digest 000000000000 there" in said
    assert "install the same lmforge on every node" in said
