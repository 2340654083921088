"""Several processes training one model: the pieces the Trainer uses under `torchrun`, and the
launcher the train stage uses to start it.

Under `torchrun`, every process (rank) runs the same training loop. With `parallel = "ddp"` each
rank holds the whole model and DistributedDataParallel averages the gradients; with `"fsdp"`
(FSDP2, `fully_shard`) parameters, gradients and optimizer state are sharded across ranks, for
models that do not fit one GPU: each repeated layer (every module of an `nn.ModuleList`, the
transformer's blocks) is one shard unit, the rest belongs to the root. The backend is NCCL on
CUDA and gloo on CPU, where both DDP and FSDP2 run (slowly, but enough to test the real code).

Checkpoints hold full, unsharded state dicts gathered to rank 0, so a checkpoint written by any
number of ranks loads into a single process for evaluation or generation.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lm.config import REPO_ROOT
from lm.parent_death import PARENT_PID_VARIABLE
from lm.train_config import TrainingError

logger = logging.getLogger("lm.train")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (`torchrun` sets RANK, WORLD_SIZE
    and LOCAL_RANK; a plain process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        try:
            return cls(
                rank=int(os.environ.get("RANK", 0)),
                world_size=int(os.environ.get("WORLD_SIZE", 1)),
                local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            )
        except ValueError as error:
            raise TrainingError(f"RANK/WORLD_SIZE/LOCAL_RANK are not integers: {error}") from None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and progress lines."""
        return self.rank == 0


def init_process_group(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (once per process): NCCL for CUDA, gloo for CPU. On CUDA each
    process of this machine needs a GPU of its own: more processes than GPUs is a
    `TrainingError` on every rank, not CUDA's "invalid device ordinal" on some."""
    if not ranks.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.local_rank + 1))
        gpus = torch.cuda.device_count()
        if max(local_processes, ranks.local_rank + 1) > gpus:
            raise TrainingError(
                f"{local_processes} training processes on this machine "
                f"(train.nproc_per_node), but PyTorch sees {gpus} CUDA GPU(s) "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): "
                f"each process needs a GPU of its own; set train.nproc_per_node to at most "
                f'{gpus}, or train.device = "cpu"'
            )
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def leave_process_group(completed: bool) -> None:
    """Tear down this rank's process group, so that the process exits cleanly.

    The DDP/FSDP wrappers hold the group (DDP's reducer keeps a reference to it) and can sit in
    reference cycles: the Trainer does whenever a caught exception's traceback holds its frame,
    as a lazy import inside the optimizer's constructor leaves one. Left to the interpreter's
    shutdown, gloo's objects are freed while Python is half torn down and a rank aborts
    ("terminate called without an active exception", seen in CI). So the garbage collector
    runs first, then, after a run that completed, every rank meets at a barrier (a rank that
    tears down while another still finishes its last collective can abort that one), and only
    then is the group destroyed. After a failure there is no barrier: the other ranks may never
    arrive."""
    if not dist.is_available() or not dist.is_initialized():
        return
    gc.collect()
    if completed:
        dist.barrier()
    dist.destroy_process_group()


def shard_units(module: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: the members of every `nn.ModuleList` (repeated
    layers), so only one layer's full parameters exist at a time."""
    return [layer for child in module.modules() if isinstance(child, nn.ModuleList)
            for layer in child]  # fmt: skip


def wrap_model(module: nn.Module, parallel: str, device: torch.device) -> nn.Module:
    """DDP around the module, or FSDP2 sharding it in place (the module itself is returned)."""
    if parallel == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # torch < 2.6 has FSDP2 under its first name only
            from torch.distributed._composable.fsdp import fully_shard

        if any(isinstance(layer, nn.modules.batchnorm._BatchNorm) for layer in module.modules()):
            # FSDP keeps no buffer the same across ranks (DDP broadcasts them): each rank's
            # running statistics drifted apart, rank 0's were saved, and a resume changed the
            # val curve.
            raise ValueError(
                'norm "batchnorm" under parallel = "fsdp": FSDP keeps no running statistics the '
                'same on every rank; use parallel = "ddp" or norm = "layernorm"'
            )

        for layer in shard_units(module):
            fully_shard(layer)
        fully_shard(module)
        # An output layer with a bias over (batch, time, width) returns its logits as a view of
        # addmm's (MLP, w2v), which FSDP warns about on every rank and every step's first
        # forward: an in-place edit of them would skip its hooks. The models and the engine
        # only read the logits (the loss is taken out of place), so the warning says nothing.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view")
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    # The gradients are views into DDP's all-reduce buckets, not a second copy beside them: a
    # whole gradient's worth (4 bytes a parameter) less on every rank, as lm.sizing counts.
    return DistributedDataParallel(module, device_ids=device_ids, gradient_as_bucket_view=True)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on micro-batches before the last of an accumulation: the
    gradients add up locally and are reduced once per optimizer step. A plain module (one
    process) has nothing to skip."""
    if enabled:
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """The sums over ranks (identity in a single process); one collective for all values."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather(value: object) -> list[object]:
    """Every rank's `value`, in rank order (`[value]` in a single process)."""
    if not dist.is_initialized():
        return [value]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _full_options(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


def full_model_state(module: nn.Module, parallel: str) -> dict:
    """The unsharded state dict (on rank 0; other ranks may get `{}`). Every rank must call it
    under FSDP: gathering the shards is a collective."""
    if parallel == "fsdp" and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(module, options=_full_options())
    return module.state_dict()


def full_optimizer_state(module: nn.Module, optimizer, parallel: str) -> dict:
    if parallel == "fsdp" and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(module, optimizer, options=_full_options())
    return optimizer.state_dict()


def load_model_state(module: nn.Module, state: dict, parallel: str) -> None:
    """Load a full state dict; under FSDP each rank keeps its own shards of it."""
    if parallel == "fsdp" and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))
        return
    module.load_state_dict(state)


def load_optimizer_state(module: nn.Module, optimizer, state: dict, parallel: str) -> None:
    """Load an optimizer state saved under any layout. One process and DDP save torch's own
    state dict, keyed by each parameter's index in the optimizer; FSDP saves the full one,
    keyed by parameter name. Either is rekeyed to what this layout loads, so a run can resume
    under another layout (DDP moving to FSDP as a model outgrows a GPU, say)."""
    by_name = _keyed_by_name(state)
    if parallel == "fsdp" and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        if not by_name:
            state = _rekeyed(state, optimizer_parameter_names(module, optimizer).__getitem__)
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(module, optimizer, state, options=options)
        return
    if by_name:
        names = optimizer_parameter_names(module, optimizer)
        index = {name: position for position, name in enumerate(names)}
        state = _rekeyed(state, index.__getitem__)
    optimizer.load_state_dict(state)


def optimizer_parameter_names(module: nn.Module, optimizer) -> list[str]:
    """The optimizer's parameters in its own order (group after group), by their names in
    `module`: position i is what torch's state dict calls parameter i."""
    names = {id(parameter): name for name, parameter in module.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _keyed_by_name(state: dict) -> bool:
    return any(isinstance(key, str) for group in state["param_groups"] for key in group["params"])


def _rekeyed(state: dict, key: Callable[[object], object]) -> dict:
    """`state` with every parameter key (in its per-parameter state and its groups) mapped by
    `key`; a key with no counterpart raises KeyError or IndexError."""
    return {
        "state": {key(name): values for name, values in state["state"].items()},
        "param_groups": [
            group | {"params": [key(name) for name in group["params"]]}
            for group in state["param_groups"]
        ],
    }


# -- launching -------------------------------------------------------------------------------

STDERR_TAIL_LINES = 40
# How often the wait for torchrun returns to the interpreter, to run a signal's handler that a
# thread other than the main one took (`_wait_heeding_signals`); the wait sleeps 50 ms at most.
SIGNAL_POLL_S = 1.0
LAUNCHER_FAILURE = "failed (exitcode"
# torchrun's own log lines (glog style: "E1123 04:08:50.338000 27577 path:line] message").
LAUNCHER_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ .*\] ")
# A rank's uncaught exception, as torch prints it once the process group exists: every line
# of the traceback starts "[rank3]: ".
RANK_TRACEBACK_LINE = re.compile(r"^\[rank(\d+)\]: ")
# How a rank fails when another one died under it: its next collective loses the connection.
LOST_PEER = re.compile(r"Connection (closed|reset) by peer|remote worker crashing")
LOST_CONNECTION_NOTE = "then failed on the lost connection"


# How torchrun says the nodes never met: node 0's store gave up waiting for the others, or
# another node gave up reaching node 0.
NODES_MISSING = re.compile(r"waiting for clients|trying to connect to")
PORT_TAKEN = "address already in use"
# The C++ stack c10d prints under each failed attempt to reach node 0's store.
C10D_FRAME_LINE = re.compile(r"^(Exception raised from |frame #\d+: |<omitting python frames>)")
PYTHON_TRACEBACK = "Traceback (most recent call last):"


class RendezvousNoise:
    """What a launch over several machines relays of torchrun's own error output: not the C++
    frames c10d prints under every failed attempt to reach node 0 (its one-line warning
    stays), nor the launcher's Python traceback when it ends in the nodes not meeting, which
    the error raised says in one line. Every other line passes, and a traceback that ends in
    anything else is relayed whole. A ~80-line wall otherwise preceded that one line."""

    def __init__(self) -> None:
        self.traceback: list[str] | None = None  # a launcher traceback being read
        self.in_frames = False

    def feed(self, line: str) -> list[str]:
        """The lines to relay now, `line` read."""
        if self.traceback is not None:
            self.traceback.append(line)
            if line and not line[0].isspace():  # the exception's own line ends the traceback
                block, self.traceback = self.traceback, None
                return [] if NODES_MISSING.search(line) else block
            return []
        if line == PYTHON_TRACEBACK:
            self.traceback = [line]
            return []
        if C10D_FRAME_LINE.match(line) or (self.in_frames and not line.strip()):
            self.in_frames = True
            return []
        self.in_frames = False
        return [line]

    def rest(self) -> list[str]:
        """What is held back when the output ends: a traceback cut short, relayed whole."""
        held, self.traceback = self.traceback or [], None
        return held


@dataclass(frozen=True)
class NodePlace:
    """This machine's place in a training over several machines (`train.nnodes`): every node
    runs `nproc_per_node` ranks; node 0 hosts the meeting point `master_addr:master_port`
    (torchrun's static rendezvous), and the global ranks are numbered node by node, so rank 0,
    which writes checkpoints and the result, runs on node 0."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    timeout_s: int  # how long node 0 waits for the others, and they try to reach it

    def __post_init__(self) -> None:
        if not 0 <= self.node_rank < self.nnodes:
            raise TrainingError(
                f"node rank {self.node_rank} is not a node of this training: "
                f"it has {self.nnodes} (0 to {self.nnodes - 1}, node 0 runs the flow)"
            )

    def torchrun_arguments(self) -> list[str]:
        return [
            f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}",
            f"--master-addr={self.master_addr}", f"--master-port={self.master_port}",
            f"--rdzv-conf=timeout={self.timeout_s}",
        ]  # fmt: skip

    def describe(self) -> str:
        return f"node {self.node_rank} of {self.nnodes}, meeting at {self.address}"

    @property
    def address(self) -> str:
        return f"{self.master_addr}:{self.master_port}"


def torchrun_command(nproc_per_node: int, module: str, *args: str, log_dir: str | None = None,
                     nodes: NodePlace | None = None) -> list[str]:  # fmt: skip
    """`python -m torch.distributed.run --standalone --nproc_per_node=N -m MODULE ARGS`, or
    with `nodes` this machine's place among several instead of `--standalone`: the same
    interpreter as this process, so the ranks see the same packages. `log_dir` is where
    torchrun makes its per-rank log folders (without it, a fresh `/tmp/torchelastic_*` that
    nothing removes, one per launch)."""
    logs = [f"--log-dir={log_dir}"] if log_dir else []
    place = nodes.torchrun_arguments() if nodes else ["--standalone"]
    return [
        sys.executable, "-m", "torch.distributed.run", *place, *logs,
        f"--nproc_per_node={nproc_per_node}", "-m", module, *args,
    ]  # fmt: skip


def run_torchrun(
    nproc_per_node: int,
    module: str,
    *args: str,
    log: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    nodes: NodePlace | None = None,
) -> None:
    """Run `module` as `nproc_per_node` ranks and wait; every line the ranks print goes to
    `log` (default: this module's logger at INFO). With `nodes`, these ranks are this
    machine's share of a training over several. A failure raises `TrainingError` with the
    end of the error output, where the failing rank's traceback is. If this process is
    interrupted, the ranks are stopped rather than left training; if it is killed, they die
    with it (on Linux)."""
    log = log or logger.info
    environment = dict(os.environ if env is None else env)
    # The ranks must import `lm` even when it is not installed: the repository root on the path.
    paths = [str(REPO_ROOT), *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # torchrun would give each rank one thread; share the cores instead (CPU ranks use them).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    environment.setdefault("OMP_NUM_THREADS", str(max(1, (cores or 1) // nproc_per_node)))
    # A rank killed by a signal (a segfault in a native library) prints its Python stack, so
    # the error below says where, not only "exitcode: -11".
    environment.setdefault("PYTHONFAULTHANDLER", "1")
    # torchrun and its ranks die with this process, even one killed with SIGKILL (see
    # `lm.parent_death`): a rank left training would write into a work folder no longer locked.
    environment[PARENT_PID_VARIABLE] = str(os.getpid())
    # The ranks' output comes through the pipes, so torchrun's per-rank log folders stay empty:
    # they go to a temporary folder removed afterwards.
    with tempfile.TemporaryDirectory(prefix="lmforge-torchrun-") as log_dir:
        command = torchrun_command(nproc_per_node, module, *args, log_dir=log_dir, nodes=nodes)
        guarded = [sys.executable, "-m", "lm.parent_death", *command]
        noise = RendezvousNoise() if nodes else None
        code, tail = _run_relaying_output(guarded, environment, log, noise)
    if code != 0:
        if nodes and any(NODES_MISSING.search(line) for line in tail):
            raise TrainingError(nodes_missing(nodes))
        if nodes and nodes.node_rank == 0 and any(PORT_TAKEN in line for line in tail):
            raise TrainingError(port_taken(nodes))
        shown = " ".join(torchrun_command(nproc_per_node, module, *args, nodes=nodes)[1:])
        where = f", {nodes.describe()}" if nodes else ""
        ending = "\n".join(tail) or "(no error output)"
        elsewhere = ""
        if (
            nodes
            and not any(RANK_TRACEBACK_LINE.match(line) for line in tail)
            and any(LOST_CONNECTION_NOTE in line for line in tail)
        ):  # every rank here only lost its peers: the error is on another node
            there = "there" if nodes.node_rank == 0 else "there (or of the run, on node 0)"
            elsewhere = (
                " This node's ranks only lost their connection: a rank on another node "
                "failed, or its machine stopped; its error is in the output of `lmforge "
                f"train-join` {there}."
            )
        raise TrainingError(
            f"training with torchrun ({processes(nproc_per_node)}{where}, `{shown}`) failed "
            f"with exit code {code}.{elsewhere} The end of its error output:\n{ending}"
        )


def port_taken(nodes: NodePlace) -> str:
    return (
        f"train.master_port {nodes.master_port} is already in use on this machine (another "
        "training over several machines, or another service): choose another port"
    )


def check_port_free(nodes: NodePlace) -> None:
    """Node 0's rendezvous port must be free here: said before the training is announced and
    the other nodes come to it, not after."""
    with contextlib.closing(socket.socket()) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the store binds it
        try:
            probe.bind(("", nodes.master_port))
        except OSError:
            raise TrainingError(port_taken(nodes)) from None


def processes(count: int) -> str:
    return f"{count} process{'es' if count != 1 else ''}"


def join_instruction(nnodes: int, workspace: Path | str) -> str:
    """How the other nodes of an `nnodes`-machine training join it."""
    join = f"`LMFORGE_HOME={workspace} lmforge train-join --node-rank"
    if nnodes == 2:
        return f"on node 1 run {join} 1`"
    return f"on each node K from 1 to {nnodes - 1} run {join} K`"


def nodes_missing(nodes: NodePlace) -> str:
    """What to do when the nodes of a training never met, said from where it was seen."""
    if nodes.node_rank == 0:
        return (
            f"the other nodes of this {nodes.nnodes}-node training did not all join at "
            f"{nodes.address} within train.join_timeout_s = {nodes.timeout_s} s: "
            f"{join_instruction(nodes.nnodes, '<this workspace>')}, the workspace on a "
            "filesystem they share, and check that they reach train.master_addr at "
            "train.master_port"
        )
    return (
        f"node {nodes.node_rank} could not meet node 0 at {nodes.address} within "
        f"{nodes.timeout_s} s (train.join_timeout_s): node 0's training ended or is "
        "unreachable from here (train.master_addr must be its address as this machine sees it)"
    )


def _run_relaying_output(
    command: list[str],
    environment: dict[str, str],
    log: Callable[[str], None],
    noise: RendezvousNoise | None = None,
) -> tuple[int, list[str]]:
    """Run torchrun and wait; every output line goes to `log` (the error output through
    `noise`, where given). Returns the exit code and the end of the error output, unfiltered.
    If this process is interrupted, the ranks are stopped."""
    # Enough to hold a traceback from every rank: `error_tail` keeps the ones that matter.
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES * 50)
    # The kernel's parent-death signal (`lm.parent_death`) fires when the *thread* that forked
    # exits. This thread waits for torchrun below, and kills it if interrupted, so torchrun
    # never outlives it: safe even in one of Prefect's worker threads.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
        bufsize=1,
    )  # fmt: skip

    launcher_failed = threading.Event()

    def pump(stream, keep: bool) -> None:
        relayed = noise if keep else None
        for line in stream:
            line = line.rstrip("\n")
            for shown in relayed.feed(line) if relayed else [line]:
                log(shown)
            # After torchrun reports a failed rank it prints its own traceback and a summary:
            # the tail keeps what the ranks said, and torchrun's one line naming the rank.
            if keep and not launcher_failed.is_set():
                if LAUNCHER_FAILURE in line:
                    launcher_failed.set()
                    tail.append(line.split("] ", 1)[-1])
                elif not LAUNCHER_LOG_LINE.match(line):
                    tail.append(line)
        for shown in relayed.rest() if relayed else []:
            log(shown)

    readers = [
        threading.Thread(target=pump, args=(process.stdout, False), daemon=True),
        threading.Thread(target=pump, args=(process.stderr, True), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        code = _wait_heeding_signals(process)
    finally:
        if process.poll() is None:  # interrupted: torchrun forwards SIGTERM to its ranks
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for reader in readers:
            reader.join(timeout=5)
    return code, error_tail(list(tail))


def _wait_heeding_signals(process: subprocess.Popen) -> int:
    """Wait for `process`, raising KeyboardInterrupt within moments of a Ctrl-C. The kernel
    may hand a signal sent to this process to any of its threads: taken by a reader thread,
    it only flags Python's main thread, which, blocked in one long `waitpid`, would sleep on
    until torchrun ended. `wait` with a timeout polls instead, and each poll returns to the
    interpreter, which runs the flagged handler."""
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return process.wait(timeout=SIGNAL_POLL_S)


def error_tail(lines: list[str]) -> list[str]:
    """The last `STDERR_TAIL_LINES` of the ranks' error output, without the tracebacks of
    ranks that failed only because another rank died under them (gloo's "Connection closed by
    peer" in their next collective): one rank's real error is followed by one such traceback
    from every other rank, and with three ranks or more they push it out of the tail. One line
    says which ranks were left out."""
    last_line: dict[int, str] = {}
    for line in lines:
        if match := RANK_TRACEBACK_LINE.match(line):
            last_line[int(match.group(1))] = line
    echoes = sorted(rank for rank, line in last_line.items() if LOST_PEER.search(line))
    kept = [line for line in lines if not ((match := RANK_TRACEBACK_LINE.match(line))
                                           and int(match.group(1)) in echoes)]  # fmt: skip
    if echoes:
        which = f"rank{'s' if len(echoes) > 1 else ''} {', '.join(map(str, echoes))}"
        said = RANK_TRACEBACK_LINE.sub("", last_line[echoes[0]])
        kept.append(f"({which} {LOST_CONNECTION_NOTE}, their tracebacks left out: {said})")
    return kept[-STDERR_TAIL_LINES:]
