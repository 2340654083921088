"""`lmforge train-join`: this machine's share of a training over several (`train.nnodes > 1`).

The run itself starts on one machine, node 0 (`lmforge run`, a deployment, a scheduled
retraining): its train stage announces the training in the workspace (`storage.launches`) and
waits for the other nodes. Each of them runs this command with the same `LMFORGE_HOME`, on a
filesystem they all mount at the same path, and its own `--node-rank`; it waits for an
announced training, joins it with `torchrun` and returns when the training ends. With
`--follow` it goes on joining (a ladder trains its models one after another, each a launch of
its own) until none is announced for `--wait-s` seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from storage.workspace import Workspace

NodeRank = Annotated[
    int, typer.Option("--node-rank", min=1, help="this machine's node: 1 to train.nnodes - 1")
]
WaitSeconds = Annotated[
    float,
    typer.Option(
        "--wait-s", min=0, help="seconds to wait for a training to be announced; inf: for ever"
    ),
]
Follow = Annotated[
    bool, typer.Option("--follow", help="keep joining the trainings announced after this one")
]


def train_join_command(node_rank: NodeRank, wait_s: WaitSeconds = 3600.0,
                       follow: Follow = False) -> None:  # fmt: skip
    """Join a training over several machines that node 0's run announced in this workspace,
    as node `--node-rank`, and train this machine's share of it (`train.nproc_per_node`
    processes). Every node reads the workspace at the same path: the work folder and token
    files node 0 wrote. With `--follow`, a training that fails is reported and the next one
    joined (node 0's rerun resumes it); the exit code then says whether any failed."""
    from flows.cli import _fail, console
    from storage.launches import wait_for_launch

    workspace = Workspace.from_env()
    joined: set[str] = set()
    failed: list[str] = []
    while True:
        launch = wait_for_launch(workspace, joined, wait_s)
        if launch is None:
            if not joined:
                raise _fail(_nothing_announced(workspace, wait_s))
            console.print(f"no further training announced within {wait_s:g} s; done",
                          highlight=False)  # fmt: skip
            if failed:
                raise _fail(f"{len(failed)} of {len(joined)} trainings joined failed: "
                            f"{', '.join(failed)}")  # fmt: skip
            return
        joined.add(launch.launch_id)
        error = _join(workspace, launch, node_rank)
        if error is None:
            console.print(f"node {node_rank}: training {launch.launch_id} finished",
                          highlight=False)  # fmt: skip
        elif not follow:
            raise _fail(error)
        else:
            from flows.cli import errors

            failed.append(launch.launch_id)
            errors.print(f"training {launch.launch_id} failed (waiting for the next one): "
                         f"{error}", highlight=False, markup=False, soft_wrap=True)  # fmt: skip
        if not follow:
            return


def _join(workspace: Workspace, launch, node_rank: int) -> str | None:
    """Train this machine's share of `launch`; what went wrong, if anything."""
    from flows.cli import console
    from lm.distributed import processes, run_torchrun
    from lm.train_config import TrainingError
    from storage.launches import ClaimError, claimed
    from tasks.train import rank_code_digest

    if not Path(launch.work).is_dir():
        return (
            f"training {launch.launch_id} of {launch.host} works in {launch.work}, which this "
            f"machine does not see: every node must mount the workspace at the same path as "
            f"node 0 (here it is {workspace.root})"
        )
    if launch.code != (ours := rank_code_digest()):
        return (
            f"training {launch.launch_id} of {launch.host} runs other training code than this "
            f"machine (digest {launch.code[:12]} there, {ours[:12]} here): install the same "
            "lmforge on every node"
        )
    try:
        place = launch.place(node_rank)
        with claimed(workspace, launch, node_rank):
            console.print(f"joining training {launch.launch_id} of {launch.host} as "
                          f"{place.describe()}: {processes(launch.nproc_per_node)} here, "
                          f"work folder {launch.work}", highlight=False)  # fmt: skip
            run_torchrun(launch.nproc_per_node, "lm.train_worker", launch.work,
                         log=_print_err, nodes=place)  # fmt: skip
    except (TrainingError, ClaimError) as error:
        return str(error)
    except KeyboardInterrupt:
        from flows.cli import _fail

        _fail(
            f"interrupted: this node's ranks are stopped, so training {launch.launch_id} "
            "fails on every node; rerun the run on node 0 and join again, and it resumes "
            "from its last checkpoint"
        )
        raise typer.Exit(code=130) from None
    return None


def _nothing_announced(workspace: Workspace, wait_s: float) -> str:
    from storage.launches import launches_folder, unjoinable_count

    stale = unjoinable_count(workspace)
    skipped = (f" ({stale} announcement{'s' if stale != 1 else ''} there cannot be joined any "
               "more: node 0 is gone, or its join timeout passed)") if stale else ""  # fmt: skip
    return (
        f"no training over several machines was announced in {launches_folder(workspace)} "
        f"within {wait_s:g} s{skipped}: start the run on node 0 (train.nnodes > 1) with "
        "LMFORGE_HOME naming this same workspace. A run whose train stage is cached, or a "
        "count bigram, trains nothing on several machines and announces nothing"
    )


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
