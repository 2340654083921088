"""Multi-node trainings announced in the workspace, so that the other machines find them.

A training over several machines (`train.nnodes > 1`) is started by the train stage on node 0,
inside a flow: its work folder is named by a cache key the other machines cannot know in
advance. So node 0 writes an announcement, `launches/<id>.json` (where to meet, the work folder
and the number of processes), for as long as it waits for them and trains, and `lmforge
train-join` on every other machine waits for one and joins it. The workspace must be on a
filesystem every node mounts at the same path: they read the worker spec and token files node
0 wrote there.

An announcement is offered only while a machine could still join it: it is younger than its
join timeout (after that node 0 has met every node, or given up: the machines' clocks must
agree, as NTP keeps them), and node 0 is alive: its training holds the work folder's lock, or,
where this machine cannot see that lock (a filesystem whose locks stay on each machine), node
0's rendezvous answers at `master_addr:master_port`. A node 0 killed before it could remove its
announcement does neither.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field, ValidationError

from lm.atomic_files import write_text_atomically
from lm.strict_model import StrictModel
from storage.processes import pid_alive, this_host
from storage.prune import training_lock_held
from storage.workspace import Workspace

LAUNCHES = "launches"
CLAIM_INFIX = ".node-"  # launches/<id>.node-<rank>: the joiner holding that node
ANSWER_TIMEOUT_S = 2.0


class Launch(StrictModel):
    """One training over several machines, as node 0 announces it."""

    launch_id: str
    work: str = Field(description="the work folder (absolute): the worker spec is there")
    nnodes: int = Field(ge=2)
    nproc_per_node: int = Field(ge=1)
    master_addr: str
    master_port: int
    join_timeout_s: int
    host: str = Field(description="user@host of node 0")
    announced_at: float
    code: str = Field(
        description="digest of the training code node 0 runs: every node's must match"
    )

    def place(self, node_rank: int):
        """Node `node_rank`'s place in this training (`lm.distributed.NodePlace`)."""
        from lm.distributed import NodePlace

        return NodePlace(self.nnodes, node_rank, self.master_addr, self.master_port,
                         self.join_timeout_s)  # fmt: skip


class ClaimError(RuntimeError):
    """A node rank another joiner already holds in a training."""


def launches_folder(workspace: Workspace) -> Path:
    return workspace.root / LAUNCHES


def new_launch(work: Path, nnodes: int, nproc_per_node: int, master_addr: str,
               master_port: int, join_timeout_s: int, code: str) -> Launch:  # fmt: skip
    return Launch(
        launch_id=f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}",
        work=str(work),
        nnodes=nnodes, nproc_per_node=nproc_per_node, master_addr=master_addr,
        master_port=master_port, join_timeout_s=join_timeout_s, host=this_host(),
        announced_at=time.time(), code=code,
    )  # fmt: skip


@contextlib.contextmanager
def announced(workspace: Workspace, launch: Launch) -> Iterator[Path]:
    """`launch` announced for the block (written atomically), withdrawn after it, however it
    ends. Announcements left by a node 0 that was killed are swept first."""
    folder = launches_folder(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    for path, stale in _announcements(folder):
        if not _joinable(stale):
            _withdraw(path, stale)
    path = write_text_atomically(folder / f"{launch.launch_id}.json",
                                 launch.model_dump_json(indent=2))  # fmt: skip
    try:
        yield path
    finally:
        _withdraw(path, launch)


def _withdraw(path: Path, launch: Launch) -> None:
    """Remove the announcement at `path` and the node ranks claimed in it."""
    path.unlink(missing_ok=True)
    for claim in path.parent.glob(f"{launch.launch_id}{CLAIM_INFIX}*"):
        claim.unlink(missing_ok=True)


@contextlib.contextmanager
def claimed(workspace: Workspace, launch: Launch, node_rank: int) -> Iterator[None]:
    """Node `node_rank` of `launch` held by this process for the block: a second joiner giving
    the same rank is refused (torchrun would leave it waiting for ever on a rendezvous that
    never takes it). A claim whose holder ran on this machine and is gone is taken over."""
    path = launches_folder(workspace) / f"{launch.launch_id}{CLAIM_INFIX}{node_rank}"
    holder = {"host": this_host(), "pid": os.getpid()}
    for _ in range(2):
        try:
            with open(path, "x") as claim:
                claim.write(json.dumps(holder))
            break
        except FileExistsError:
            other = _claim_holder(path)
            if other.get("host") == holder["host"] and not pid_alive(other.get("pid", -1)):
                path.unlink(missing_ok=True)  # left by a joiner of this machine that was killed
                continue
            where = f"pid {other.get('pid')} on {other.get('host')}" if other else "another joiner"
            raise ClaimError(
                f"node {node_rank} of training {launch.launch_id} is already joined by {where}: "
                f"give each machine its own --node-rank (1 to {launch.nnodes - 1}); if that "
                f"joiner is gone, remove {path}"
            ) from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _claim_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def open_launches(workspace: Workspace) -> list[Launch]:
    """The announced trainings a machine can still join, oldest first. A file that does not
    read as an announcement is skipped (one being written, or not ours)."""
    folder = launches_folder(workspace)
    found = [launch for _, launch in _announcements(folder) if _joinable(launch)]
    return sorted(found, key=lambda launch: launch.announced_at)


def _announcements(folder: Path) -> Iterator[tuple[Path, Launch]]:
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            launch = Launch.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValidationError):
            continue
        yield path, launch


def unjoinable_count(workspace: Workspace) -> int:
    """Announcements in the workspace that are not offered (module docstring)."""
    folder = launches_folder(workspace)
    return sum(not _joinable(launch) for _, launch in _announcements(folder))


def _joinable(launch: Launch) -> bool:
    if time.time() - launch.announced_at > launch.join_timeout_s:
        return False
    with contextlib.suppress(OSError):  # a filesystem without flock: ask the rendezvous
        if training_lock_held(Path(launch.work)):
            return True
    return _answers(launch.master_addr, launch.master_port)


def _answers(host: str, port: int) -> bool:
    """Whether something listens at `host:port` (a connection opened and closed at once, which
    torchrun's rendezvous store takes in its stride)."""
    try:
        socket.create_connection((host, port), timeout=ANSWER_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def wait_for_launch(workspace: Workspace, skip: set[str], wait_s: float,
                    poll_s: float = 0.5) -> Launch | None:  # fmt: skip
    """The oldest open launch not in `skip`, as soon as there is one; None after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        fresh = [launch for launch in open_launches(workspace) if launch.launch_id not in skip]
        if fresh:
            return fresh[0]
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)
