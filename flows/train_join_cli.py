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
    files node 0 wrote."""
    from flows.cli import _fail, console
    from lm.distributed import NodePlace, run_torchrun
    from lm.train_config import TrainingError
    from storage.launches import launches_folder, wait_for_launch

    workspace = Workspace.from_env()
    joined: set[str] = set()
    while True:
        launch = wait_for_launch(workspace, joined, wait_s)
        if launch is None:
            if joined:
                console.print(f"no further training announced within {wait_s:g} s; done",
                              highlight=False)  # fmt: skip
                return
            raise _fail(
                f"no training over several machines was announced in "
                f"{launches_folder(workspace)} within {wait_s:g} s: start the run on node 0 "
                "(train.nnodes > 1) with LMFORGE_HOME naming this same workspace"
            )
        joined.add(launch.launch_id)
        try:
            place = NodePlace(launch.nnodes, node_rank, launch.master_addr, launch.master_port,
                              launch.join_timeout_s)  # fmt: skip
            console.print(f"joining training {launch.launch_id} of {launch.host} as "
                          f"{place.describe()}: {launch.nproc_per_node} processes here, "
                          f"work folder {launch.work}", highlight=False)  # fmt: skip
            run_torchrun(launch.nproc_per_node, "lm.train_worker", launch.work,
                         log=_print_err, nodes=place)  # fmt: skip
        except TrainingError as error:
            raise _fail(str(error)) from None
        console.print(f"node {node_rank}: training {launch.launch_id} finished", highlight=False)
        if not follow:
            return


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
