"""Training in several processes under the real `torchrun` (gloo on CPU): the ranks agree on
the weights, read disjoint data, and a failing rank surfaces as a clear error."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lm.distributed import (
    REPO_ROOT,
    NodePlace,
    Ranks,
    _run_relaying_output,
    check_port_free,
    init_process_group,
    optimizer_parameter_names,
    run_torchrun,
)
from lm.models.config import GPTConfig
from lm.models.registry import build_model
from lm.sizing import size_model
from lm.train import TrainConfig, Trainer, TrainingError, val_loss_of
from lm.train_worker import TokenFile, WorkerSpec, read_result, write_spec
from storage.processes import pid_alive
from tests.distributed_probe import weights_digest
from tests.helpers import periodic_tokens, wait_until

VOCAB = 20
GPT = GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.1)
STEPS = 6


def write_job(folder, model=GPT, **train) -> WorkerSpec:
    """Token files and a worker spec in `folder`, as the train stage writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, length in (("train", 4000), ("val", 1000)):
        periodic_tokens(length, VOCAB, seed=len(split)).tofile(folder / f"{split}.bin")
    settings = TrainConfig(**({
        "max_steps": STEPS, "micro_batch": 2, "global_batch": 8, "block_size": 16,
        "learning_rate": 3e-3, "warmup_steps": 1, "eval_every": 3, "eval_batches": 3,
        "checkpoint_every": 3, "device": "cpu", "nproc_per_node": 2,
    } | train))  # fmt: skip
    spec = WorkerSpec(
        model=model, train=settings, vocab_size=VOCAB, tokenizer_digest="tok-1",
        train_tokens=TokenFile(path=str(folder / "train.bin"), dtype="<u2"),
        val_tokens=TokenFile(path=str(folder / "val.bin"), dtype="<u2"),
    )  # fmt: skip
    write_spec(folder, spec)
    return spec


def rank_reports(folder) -> list[dict]:
    return [json.loads((folder / f"rank-{r}.json").read_text()) for r in range(2)]


def logged(folder) -> list[tuple[str, int, float]]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(m["key"], m["step"], m["value"]) for m in lines if m["key"] != "train/tokens_per_s"]


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_agree_on_the_weights_and_read_disjoint_data(tmp_path, parallel):
    job = tmp_path / "job"
    spec = write_job(job, parallel=parallel)
    lines: list[str] = []
    run_torchrun(2, "tests.distributed_probe", str(job), log=lines.append)

    first, second = rank_reports(job)
    if parallel == "ddp":  # each rank holds the whole model: the copies must be identical
        assert first["weights"] == second["weights"]
    # What `lmforge size` says each rank holds: the whole model (DDP), or half of it (FSDP).
    size = size_model(GPT, spec.train, VOCAB)
    copies = size.processes // size.shards  # of the whole state, over the ranks: 2 or 1
    assert first["weights_bytes"] + second["weights_bytes"] == size.weights_bytes * copies
    assert first["moments_bytes"] + second["moments_bytes"] == size.optimizer_bytes * copies
    held = max(first["weights_bytes"] + first["moments_bytes"], second["weights_bytes"]
               + second["moments_bytes"])  # fmt: skip
    assert held == pytest.approx(3 / 4 * size.trained_state_bytes / size.shards, rel=0.05)
    assert first["generator"] != second["generator"]  # each rank drops its own units
    assert set(first["starts"]).isdisjoint(second["starts"])
    # 8 sequences per step = 2 per micro-batch × 2 micro-batches × 2 ranks.
    assert len(first["starts"]) == len(second["starts"]) == STEPS * 4
    for report in (first, second):  # every window lies inside the rank's own share
        low, high = report["share"]
        assert all(low <= s and s + 17 <= high for s in report["starts"])

    result = read_result(job)
    assert (result["world_size"], result["parallel"], result["steps"]) == (2, parallel, STEPS)
    assert [step for key, step, _ in logged(job) if key == "train/loss"] == [1, 2, 3, 4, 5, 6]
    assert any("rank 0 INFO lm.train: train: started afresh" in line for line in lines)
    # No rank keeps its DDP/FSDP wrapper past the group's teardown: one freed later, during the
    # interpreter's shutdown, can abort the process (a flaky failure once seen in CI).
    for rank in range(2):
        assert json.loads((job / f"left-{rank}.json").read_text()) == {"wrappers_alive": 0}

    # Checkpoints hold full weights: the last one is what the ranks ended with, and the best
    # one, loaded into one process, scores there what the ranks measured together.
    final = torch.load(job / f"step-{STEPS:08d}" / "model.pt", weights_only=True)
    assert weights_digest(final) == first["weights"]
    model = build_model(GPT, VOCAB)
    model.load_state_dict(torch.load(job / "best" / "model.pt", weights_only=True))
    val = np.fromfile(job / "val.bin", dtype="<u2")
    assert math.isclose(val_loss_of(model, val, spec.train), result["best_val_loss"],
                        rel_tol=1e-5)  # fmt: skip

    # Killed after step 3: resuming on two ranks ends exactly where the straight run did, each
    # rank's shard (FSDP), data cursor and dropout stream restored.
    cut = tmp_path / "cut"
    shutil.copytree(job, cut, ignore=shutil.ignore_patterns("step-00000006", "result.json"))
    run_torchrun(2, "tests.distributed_probe", str(cut), log=lambda line: None)
    assert logged(cut) == logged(job)
    for resumed, straight in zip(rank_reports(cut), (first, second), strict=True):
        assert resumed["weights"] == straight["weights"]
        assert resumed["generator"] == straight["generator"]

    if parallel == "ddp":
        # The same cut resumed under FSDP: DDP's optimizer state is rekeyed by name, and the run
        # ends where DDP's did, up to the order in which the ranks' gradients are summed.
        moved = tmp_path / "moved"
        shutil.copytree(job, moved, ignore=shutil.ignore_patterns("step-00000006", "result.json"))
        fsdp = spec.train.model_copy(update={"parallel": "fsdp"})
        write_spec(moved, spec.model_copy(update={"train": fsdp}))
        said: list[str] = []
        run_torchrun(2, "tests.distributed_probe", str(moved), log=said.append)
        assert any("was written with parallel=ddp; continuing with parallel=fsdp" in line
                   for line in said)  # fmt: skip
        assert [(key, step) for key, step, _ in logged(moved)] == [
            (key, step) for key, step, _ in logged(job)
        ]
        for (_, _, value), (_, _, straight_value) in zip(logged(moved), logged(job), strict=True):
            assert value == pytest.approx(straight_value, rel=1e-5)
    else:
        # An FSDP checkpoint (its optimizer state keyed by name) resumed by one process: the
        # moments it loads are the ones the ranks saved.
        single = spec.train.model_copy(update={"nproc_per_node": 1})
        trainer = Trainer(build_model(GPT, VOCAB), single, np.fromfile(job / "train.bin", "<u2"),
                          val, tmp_path / "single")  # fmt: skip
        trainer.resume(job / "step-00000003")
        saved = torch.load(job / "step-00000003" / "optimizer.pt", weights_only=True)
        assert all(isinstance(name, str) for name in saved["state"])
        names = optimizer_parameter_names(trainer.module, trainer.optimizer)
        loaded = trainer.optimizer.state_dict()["state"]
        assert len(loaded) == len(saved["state"]) == len(names)
        for index, name in enumerate(names):
            for moment in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(loaded[index][moment], saved["state"][name][moment])
        assert trainer.train().step == STEPS


@pytest.mark.slow
def test_a_failing_rank_raises_with_the_end_of_its_error_output(tmp_path):
    # torchrun gets a TMPDIR of its own: left to itself, it makes a `torchelastic_*` log folder
    # there and never removes it. The launcher gives it one that the launcher removes.
    scratch = tmp_path / "torchrun-tmp"
    scratch.mkdir()
    environment = {**os.environ, "TMPDIR": str(scratch)}
    with pytest.raises(TrainingError) as failure:
        run_torchrun(2, "lm.train_worker", str(tmp_path / "nowhere"), log=lambda line: None,
                     env=environment)  # fmt: skip
    message = str(failure.value)
    assert "failed with exit code" in message
    assert "worker.json: no worker spec" in message
    assert "--log-dir" not in message  # the temporary folder is gone: not worth showing
    assert list(scratch.iterdir()) == []


def test_a_failing_rank_is_not_pushed_out_of_the_error_by_the_ranks_it_took_down(tmp_path):
    # With gloo, a rank that dies mid-step takes every other rank down in its next collective,
    # each with a traceback of its own as long as the real one: with 4 ranks, 40 lines of
    # "Connection closed by peer" and no word of what failed (seen with a RuntimeError raised on
    # rank 1 of 4 at step 2).
    def traceback_of(rank: int, error: str) -> list[str]:
        frames = [f'[rank{rank}]:   File "lm/train.py", line {n}, in train' for n in range(24)]
        return [f"[rank{rank}]: Traceback (most recent call last):", *frames,
                f"[rank{rank}]: {error}"]  # fmt: skip

    lost = "RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer [::1]:9"
    output = [
        "2026-12-05 01:17:25,523 rank 0 INFO lm.train: train: started afresh",
        *traceback_of(1, "RuntimeError: CUDA out of memory on rank 1"),
        *traceback_of(0, lost), *traceback_of(2, lost), *traceback_of(3, lost),
        "E1205 01:17:26.000000 1470 api.py:874] failed (exitcode: 1) local_rank: 1 (pid: 1476)",
    ]  # fmt: skip
    (tmp_path / "stderr.txt").write_text("\n".join(output) + "\n")
    prints = "import sys; sys.stderr.write(open(sys.argv[1]).read()); sys.exit(1)"
    command = [sys.executable, "-c", prints, str(tmp_path / "stderr.txt")]
    code, tail = _run_relaying_output(command, dict(os.environ), log=lambda line: None)
    assert code == 1
    assert "[rank1]: RuntimeError: CUDA out of memory on rank 1" in tail
    assert not any(line.startswith(("[rank0]", "[rank2]", "[rank3]")) for line in tail)
    assert tail[-2:] == [
        "failed (exitcode: 1) local_rank: 1 (pid: 1476)",
        f"(ranks 0, 2, 3 then failed on the lost connection, their tracebacks left out: {lost})",
    ]


def test_a_ctrl_c_another_thread_takes_still_stops_the_wait_and_the_processes_at_once(tmp_path):
    """The kernel may hand a signal sent to a process to any of its threads. Taken by one of
    the threads relaying torchrun's output, a SIGINT only flags the main thread: the wait must
    still notice it, stop the processes and raise, not sleep on in `waitpid` until they end."""
    assert threading.current_thread() is threading.main_thread()
    pid_file = tmp_path / "pid"
    sleeps = "import os, sys, time; open(sys.argv[1], 'w').write(f'{os.getpid()}\\n')"
    sleeps += "; time.sleep(90)"
    command = [sys.executable, "-c", sleeps, str(pid_file)]

    def interrupt_through_this_thread() -> None:
        assert wait_until(lambda: pid_file.is_file() and pid_file.read_text().endswith("\n"), 60)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    threading.Thread(target=interrupt_through_this_thread, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _run_relaying_output(command, dict(os.environ), log=lambda line: None)
    assert time.monotonic() - started < 30  # the command alone would take 90 s
    assert not pid_alive(int(pid_file.read_text()))


@pytest.mark.slow
def test_a_rank_killed_by_a_segfault_says_where(tmp_path):
    # A native crash gives no traceback of its own: torchrun reports "exitcode: -11" only.
    (tmp_path / "crashing_rank.py").write_text(
        "import ctypes, os\n"
        "if os.environ['RANK'] == '1':\n"
        "    ctypes.string_at(0)  # reads address 0\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(tmp_path)}
    environment.pop("PYTHONFAULTHANDLER", None)
    with pytest.raises(TrainingError) as failure:
        run_torchrun(2, "crashing_rank", log=lambda line: None, env=environment)
    message = str(failure.value)
    assert "Fatal Python error: Segmentation fault" in message
    assert f'File "{tmp_path / "crashing_rank.py"}", line 3' in message
    assert "exitcode: -11" in message


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("killed", ["launcher", "agent"])
def test_torchrun_and_its_ranks_die_with_the_process_that_launched_them(tmp_path, killed):
    # As the OOM killer would: SIGKILL to one process alone, mid-training; torchrun's agent
    # never gets to stop its ranks.
    job = tmp_path / "job"
    write_job(job, max_steps=10**6, eval_every=10**6, checkpoint_every=10**6)
    launch = "import sys; from lm.distributed import run_torchrun; run_torchrun(2, *sys.argv[1:])"
    launcher = subprocess.Popen([sys.executable, "-c", launch, "lm.train_worker", str(job)],
                                cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
    survivors: list[int] = []
    try:
        deadline = time.monotonic() + 300  # generous: only a broken launch waits this long
        while not (job / "metrics.jsonl").is_file():  # rank 0 has trained a step
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        [agent] = children_of(launcher.pid)
        ranks = children_of(agent)
        assert len(ranks) == 2
        survivors = [agent, *ranks] if killed == "launcher" else ranks
        os.kill(launcher.pid if killed == "launcher" else agent, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while survivors and time.monotonic() < deadline:
            survivors = [pid for pid in survivors if pid_alive(pid)]
            time.sleep(0.1)
        assert survivors == []
    finally:
        launcher.kill()
        launcher.wait()
        for pid in survivors:  # left by a failure: not to train on after the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("rank", [0, 1])
def test_more_processes_than_gpus_is_a_clear_error_on_every_rank(monkeypatch, rank):
    # nproc_per_node = 2 on a machine with one GPU: rank 1 would ask CUDA for device 1 ("invalid
    # device ordinal") while rank 0 waits for it; every rank must refuse, naming the setting.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device called"))
    ranks = Ranks(rank=rank, world_size=2, local_rank=rank)
    with pytest.raises(TrainingError, match=r"2 training processes on this machine "
                       r"\(train.nproc_per_node\), but PyTorch sees 1 CUDA GPU"):  # fmt: skip
        init_process_group(ranks, torch.device("cuda", rank))


def test_global_batch_must_divide_over_micro_batch_and_processes():
    with pytest.raises(ValueError, match=r"global_batch \(12\) must be a multiple of micro_batch"
                       r" \(4\) × nproc_per_node \(2\) = 8"):  # fmt: skip
        TrainConfig(micro_batch=4, global_batch=12, nproc_per_node=2)


def train_small_gpt(tmp_path, *overrides: str) -> dict:
    """Run the pipeline on a few documents with a tiny GPT; its one model's summary."""
    from flows.pipeline import lm_pipeline
    from tests.helpers import prose, write_config

    texts = tmp_path / "texts"
    if not texts.is_dir():
        texts.mkdir()
        for index in range(12):
            (texts / f"doc{index:02d}.txt").write_text(prose(index, 150))
    config = write_config(tmp_path / "small.toml", [{"path": str(texts)}])
    settings = [
        'model.kind="gpt"', "model.block_size=16", "model.n_layer=1", "model.n_head=2",
        "model.n_embd=16", "train.max_steps=6", "train.micro_batch=2", "train.global_batch=4",
        "train.eval_every=3", "train.checkpoint_every=3", "train.eval_batches=2",
        "split.val=0.3", 'train.device="cpu"', *overrides,
    ]  # fmt: skip
    [model] = lm_pipeline(config=str(config), overrides=settings)["models"]
    return model


@pytest.mark.slow
def test_the_train_stage_runs_torchrun_and_publishes_the_usual_model_folder(workspace, tmp_path):
    model = train_small_gpt(tmp_path, "train.nproc_per_node=2")
    assert (model["steps"], model["processes"], model["tokens_seen"]) == (6, 2, 6 * 4 * 16)
    folder = workspace.resolve(model["path"])
    for part in ("best/model.pt", "final/DONE", "tokenizer/tokenizer.json", "model.json",
                 "train.json", "stats.json", "metrics.jsonl"):  # fmt: skip
        assert (folder / part).is_file(), part
    assert json.loads((folder / "final" / "checkpoint.json").read_text())["world_size"] == 2
    losses = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in losses if m["key"] == "train/loss"] == list(range(1, 7))
    val_losses = [m["value"] for m in losses if m["key"] == "val/loss"]
    trained = json.loads((folder / "stats.json").read_text())  # the train stage's own numbers
    assert len(val_losses) == 2 and trained["val_loss"] == pytest.approx(min(val_losses))


def free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_machines_train_step_for_step_as_two_processes_of_one(workspace, tmp_path, monkeypatch):
    """Node 0 runs the flow with train.nnodes = 2 and announces the training in the workspace;
    `lmforge train-join --node-rank 1`, started first and waiting, joins it (here from another
    process of this machine, meeting at 127.0.0.1): the same world of two ranks as
    `nproc_per_node = 2` on one machine, so the same losses, step for step, and the same
    train-stage key (a run moved between such setups finds its model)."""
    from storage.workspace import Workspace
    from tests.conftest import lmforge_command

    one_machine = train_small_gpt(tmp_path, "train.nproc_per_node=2")
    curve_of_one = logged(workspace.resolve(one_machine["path"]))

    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "second-workspace"))
    second = Workspace.from_env().ensure()
    joiner = subprocess.Popen(
        lmforge_command("train-join", "--node-rank", "1", "--wait-s", "120"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        nodes = train_small_gpt(tmp_path, "train.nnodes=2", 'train.master_addr="127.0.0.1"',
                                f"train.master_port={free_port()}")  # fmt: skip
        said = joiner.communicate(timeout=60)[0]
    finally:
        joiner.kill()
    assert joiner.returncode == 0, said
    assert "as node 1 of 2" in said and "finished" in said
    assert not any((second.root / "launches").iterdir())  # withdrawn once trained
    assert nodes["processes"] == 2 and nodes["path"] == one_machine["path"]
    curve = logged(second.resolve(nodes["path"]))
    assert len(curve) > 6 and curve == curve_of_one


@pytest.mark.slow
def test_fsdp_trains_a_model_with_a_biased_output_layer_without_a_warning_per_rank(tmp_path):
    """The MLP's and w2v's logits are a view of their output layer's addmm: FSDP warned on
    every rank that an in-place edit would skip its hooks (which nothing makes)."""
    from lm.models.config import MLPConfig

    job = tmp_path / "job"
    write_job(job, model=MLPConfig(context=3, n_embd=8, hiddens=[16]), parallel="fsdp",
              block_size=8)  # fmt: skip
    lines: list[str] = []
    run_torchrun(2, "lm.train_worker", str(job), log=lines.append)
    assert read_result(job)["steps"] == STEPS
    assert not [line for line in lines if "returned a view" in line], lines


@pytest.mark.slow
def test_two_ranks_on_documents_weigh_their_loss_as_one_process_would(tmp_path):
    """Each rank divides its documents' loss by the targets all ranks score: left out, the
    world size made the step's gradient (and logged loss) half what it is on one process.
    A fresh model's loss is about ln(vocab), however many ranks measure it."""
    job = tmp_path / "job"
    spec = write_job(job, samples="documents", max_steps=2, eval_every=100, checkpoint_every=100)
    eot = VOCAB - 1
    rng = np.random.default_rng(0)
    for split in ("train", "val"):  # documents of 3 to 20 ids, each ended by end-of-text
        documents = [np.append(rng.integers(0, eot, int(n)), eot) for n in rng.integers(3, 20, 300)]
        np.concatenate(documents).astype("<u2").tofile(job / f"{split}.bin")
    write_spec(job, spec.model_copy(update={"eot_id": eot}))
    run_torchrun(2, "lm.train_worker", str(job), log=lambda line: None)
    first_loss = next(value for key, step, value in logged(job) if key == "train/loss")
    assert first_loss == pytest.approx(math.log(VOCAB), rel=0.15)


def test_a_node_not_joined_in_time_names_the_command_that_joins(tmp_path):
    job = tmp_path / "job"
    write_job(job, nproc_per_node=1, nnodes=2, master_addr="127.0.0.1")
    place = NodePlace(2, 0, "127.0.0.1", free_port(), timeout_s=2)
    logged: list[str] = []
    with pytest.raises(TrainingError) as raised:
        run_torchrun(1, "lm.train_worker", str(job), log=logged.append, nodes=place)
    message = str(raised.value)
    assert not any("Traceback" in line for line in logged), "the error says it in one line"
    assert (
        "did not all join at 127.0.0.1:" in message
        and "within train.join_timeout_s = 2 s" in message
        and "on node 1 run `LMFORGE_HOME=<this workspace> lmforge train-join --node-rank 1`"
        in message
    )
    assert "Traceback" not in message
    # From the other side: node 1 finds nobody at node 0's address.
    place = NodePlace(2, 1, "127.0.0.1", free_port(), timeout_s=2)
    logged.clear()
    with pytest.raises(TrainingError, match=r"node 1 could not meet node 0 at 127\.0\.0\.1:\d+ "
                                            r"within 2 s"):  # fmt: skip
        run_torchrun(1, "lm.train_worker", str(job), log=logged.append, nodes=place)
    # c10d's one-line warnings of each failed attempt stay; its C++ frames under them do not.
    assert any("TCP client failed to connect" in line for line in logged)
    assert not any(line.startswith("frame #") or "Traceback" in line for line in logged)


def test_a_launcher_traceback_that_ends_in_another_error_is_relayed_whole():
    from lm.distributed import RendezvousNoise

    traceback = ["Traceback (most recent call last):", '  File "run.py", line 1, in <module>',
                 "    main()", "RuntimeError: something else went wrong"]  # fmt: skip
    noise = RendezvousNoise()
    relayed = [shown for line in ["starting", *traceback, "after"] for shown in noise.feed(line)]
    assert relayed == ["starting", *traceback, "after"]
    cut_short = RendezvousNoise()
    assert [shown for line in traceback[:2] for shown in cut_short.feed(line)] == []
    assert cut_short.rest() == traceback[:2], "a traceback the output ends inside is relayed"


def test_nodes_and_their_meeting_point_are_checked_with_the_config():
    with pytest.raises(ValueError, match=r"global_batch \(12\) must be a multiple of micro_batch"
                       r" \(2\) × nproc_per_node \(2\) × nnodes \(2\) = 8"):  # fmt: skip
        TrainConfig(micro_batch=2, global_batch=12, nproc_per_node=2, nnodes=2,
                    master_addr="node0")  # fmt: skip
    with pytest.raises(ValueError, match="nnodes = 2 needs master_addr"):
        TrainConfig(micro_batch=2, global_batch=8, nnodes=2)
    # Refused by the ranks once the data stages had run; now with the config.
    with pytest.raises(ValueError, match="ema_decay averages whole weights, which FSDP shards"):
        TrainConfig(global_batch=24, nproc_per_node=2, parallel="fsdp", ema_decay=0.99)
    TrainConfig(global_batch=24, nproc_per_node=2, parallel="ddp", ema_decay=0.99)
    settings = TrainConfig(micro_batch=2, global_batch=16, nproc_per_node=2, nnodes=2,
                           master_addr="node0")  # fmt: skip
    assert (settings.world_size, settings.accumulation_steps) == (4, 2)
    with pytest.raises(TrainingError, match="node rank 2 is not a node of this training: it has 2"):
        NodePlace(2, 2, "node0", 29500, 60)


@pytest.mark.slow
def test_a_following_node_joins_every_training_of_a_ladder(workspace, tmp_path):
    """A ladder trains its models one after another: `--follow` joins each training that needs
    the other node (the count bigram needs none) and stops once none comes."""
    from flows.pipeline import lm_pipeline
    from tests.conftest import lmforge_command
    from tests.helpers import prose, write_config

    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(12):
        (texts / f"doc{index:02d}.txt").write_text(prose(index, 150))
    ladder = f"""
[split]
val = 0.3

[train]
device = "cpu"
block_size = 16
max_steps = 4
micro_batch = 2
global_batch = 4
eval_every = 2
eval_batches = 2
nnodes = 2
master_addr = "127.0.0.1"
master_port = {free_port()}
join_timeout_s = 60

[[models]]
kind = "bigram-count"

[[models]]
kind = "mlp"
context = 4
n_embd = 8
hiddens = [16]

[[models]]
kind = "gpt"
block_size = 16
n_layer = 1
n_head = 2
n_embd = 16
"""
    config = write_config(tmp_path / "ladder.toml", [{"path": str(texts)}], ladder)
    joiner = subprocess.Popen(
        lmforge_command("train-join", "--node-rank", "1", "--follow", "--wait-s", "10"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        models = lm_pipeline(config=str(config))["models"]
        said = joiner.communicate(timeout=90)[0]
    finally:
        joiner.kill()
    assert joiner.returncode == 0, said
    assert [model["processes"] for model in models] == [1, 2, 2]
    assert said.count("as node 1 of 2") == 2 and said.count("finished") == 2
    assert "no further training announced within 10 s; done" in said


@pytest.mark.slow
def test_a_node_lost_mid_training_is_named_as_lost_not_as_this_node_s_error(tmp_path):
    """Node 1 killed while training: node 0's ranks fail only on the lost connection, and the
    error says the cause is on another node, where its own output is."""
    job = tmp_path / "job"
    write_job(job, nproc_per_node=1, nnodes=2, master_addr="127.0.0.1", max_steps=5000,
              eval_every=5000, checkpoint_every=5000)  # fmt: skip
    port = free_port()
    node = f"NodePlace(2, 1, '127.0.0.1', {port}, 60)"
    join = (f"from lm.distributed import NodePlace, run_torchrun; "
            f"run_torchrun(1, 'lm.train_worker', {str(job)!r}, nodes={node})")  # fmt: skip
    node_one = subprocess.Popen([sys.executable, "-c", join], cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def kill_node_one_once_training() -> None:
        metrics = job / "metrics.jsonl"
        while not (metrics.is_file() and "train/loss" in metrics.read_text()):
            time.sleep(0.2)
        node_one.kill()  # its torchrun and ranks die with it (lm.parent_death)

    killer = threading.Thread(target=kill_node_one_once_training, daemon=True)
    killer.start()
    try:
        with pytest.raises(TrainingError) as raised:
            run_torchrun(1, "lm.train_worker", str(job), log=lambda line: None,
                         nodes=NodePlace(2, 0, "127.0.0.1", port, 60))  # fmt: skip
    finally:
        node_one.kill()
        node_one.wait()
    message = str(raised.value)
    assert "(1 process, node 0 of 2, meeting at 127.0.0.1:" in message
    assert "This node's ranks only lost their connection: a rank on another node failed" in message


def test_a_rendezvous_port_in_use_is_said_before_the_training_is_announced():
    with contextlib.closing(socket.socket()) as taken:
        taken.bind(("", 0))
        taken.listen()
        place = NodePlace(2, 0, "node0", taken.getsockname()[1], 60)
        with pytest.raises(TrainingError, match=rf"train.master_port {place.master_port} is "
                           r"already in use on this machine"):  # fmt: skip
            check_port_free(place)
    check_port_free(NodePlace(2, 0, "node0", free_port(), 60))


def test_the_train_key_counts_processes_over_all_machines_not_how_they_are_spread():
    from tasks.train import train_settings_digest

    def digest(**settings) -> str:
        return train_settings_digest(TrainConfig(micro_batch=2, global_batch=8, **settings))

    two_machines = digest(nnodes=2, master_addr="node0", master_port=29600, join_timeout_s=30)
    assert two_machines == digest(nproc_per_node=2) != digest()
    assert digest(nnodes=2, nproc_per_node=2, master_addr="a") == digest(nproc_per_node=4)


@pytest.mark.slow
def test_a_joiner_interrupted_mid_training_stops_its_ranks_and_says_so(workspace):
    """Ctrl-C on a joining machine: its ranks stop, node 0's training fails as having lost a
    node, and the joiner ends with one line saying what happened and how to resume (exit 130,
    as an interrupted command)."""
    from storage.launches import announced, new_launch
    from tasks.train import rank_code_digest
    from tests.conftest import lmforge_command

    job = workspace.root / "artifacts" / "train" / "key.work"
    write_job(job, nproc_per_node=1, nnodes=2, master_addr="127.0.0.1", max_steps=5000,
              eval_every=5000, checkpoint_every=5000)  # fmt: skip
    port = free_port()
    launch = new_launch(job, 2, 1, "127.0.0.1", port, 60, rank_code_digest())
    node_zero_failed: list[str] = []

    def node_zero() -> None:
        try:
            run_torchrun(1, "lm.train_worker", str(job), log=lambda line: None,
                         nodes=NodePlace(2, 0, "127.0.0.1", port, 60))  # fmt: skip
        except TrainingError as error:
            node_zero_failed.append(str(error))

    with announced(workspace, launch):
        training = threading.Thread(target=node_zero, daemon=True)
        training.start()
        joiner = subprocess.Popen(
            lmforge_command("train-join", "--node-rank", "1", "--wait-s", "60"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert wait_until(lambda: "train/loss" in _text(job / "metrics.jsonl"), 120)
            joiner.send_signal(signal.SIGINT)
            _, said = joiner.communicate(timeout=60)
        finally:
            joiner.kill()
        training.join(timeout=60)
    assert joiner.returncode == 130
    assert (
        f"interrupted: this node's ranks are stopped, so training {launch.launch_id} fails"
        in said.replace("\n", "")
    )
    assert len(node_zero_failed) == 1 and "only lost their connection" in node_zero_failed[0]


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def test_fsdp_refuses_a_model_with_batch_norm_whose_statistics_it_would_not_keep_equal():
    # FSDP syncs no buffers: each rank's running statistics drifted, rank 0's were saved, and
    # a resume changed the val curve (DDP broadcasts them).
    from lm.distributed import wrap_model
    from lm.models.config import MLPConfig
    from lm.models.registry import build_model

    model = build_model(MLPConfig(context=3, n_embd=8, hiddens=[16], norm="batchnorm"), 20)
    with pytest.raises(ValueError, match=r'norm "batchnorm" under parallel = "fsdp"'):
        wrap_model(model, "fsdp", torch.device("cpu"))


# -- the launcher's and the ranks' small pieces, without torchrun ---------------------------


def test_a_rank_s_place_is_read_from_what_torchrun_sets(monkeypatch):
    # Over several machines RANK (global) and LOCAL_RANK (this machine's) differ: rank 0 alone
    # writes the checkpoints, so confusing them would have every node's first rank write.
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Ranks.from_env() == Ranks(rank=3, world_size=4, local_rank=1)
    assert Ranks.from_env().distributed and not Ranks.from_env().is_main
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert Ranks.from_env() == Ranks() and Ranks().is_main and not Ranks().distributed
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(TrainingError, match="RANK/WORLD_SIZE/LOCAL_RANK are not integers"):
        Ranks.from_env()


def test_a_process_group_is_nccl_with_a_gpu_each_and_gloo_on_the_cpu(monkeypatch):
    joined: list[str] = []
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend: joined.append(backend))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    # Exactly as many processes as GPUs: each takes its own.
    init_process_group(Ranks(rank=1, world_size=2, local_rank=1), torch.device("cuda", 1))
    assert (joined, chosen) == (["nccl"], [torch.device("cuda", 1)])
    init_process_group(Ranks(rank=1, world_size=2, local_rank=1), torch.device("cpu"))
    assert (joined, chosen) == (["nccl", "gloo"], [torch.device("cuda", 1)])
    init_process_group(Ranks(), torch.device("cpu"))  # one process: no group
    assert joined == ["nccl", "gloo"]


def test_a_rank_meets_the_others_before_leaving_only_after_a_completed_run(monkeypatch):
    """After a failure the other ranks may never reach a barrier: waiting for them there would
    hang the rank (gloo's default timeout is 30 minutes) instead of letting it exit."""
    import gc

    from lm.distributed import leave_process_group

    calls: list[str] = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(gc, "collect", lambda: calls.append("collect"))
    monkeypatch.setattr(torch.distributed, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(torch.distributed, "destroy_process_group",
                        lambda: calls.append("destroy"))  # fmt: skip
    leave_process_group(completed=True)
    assert calls == ["collect", "barrier", "destroy"]
    calls.clear()
    leave_process_group(completed=False)
    assert calls == ["collect", "destroy"]


def test_fsdp_shards_a_transformer_block_by_block():
    from lm.distributed import shard_units

    model = build_model(GPT, VOCAB)
    assert shard_units(model) == list(model.blocks) and len(model.blocks) == GPT.n_layer


def test_a_node_rank_below_zero_is_refused():
    with pytest.raises(TrainingError, match="node rank -1 is not a node of this training"):
        NodePlace(2, -1, "node0", 29500, 60)


def test_torchrun_is_told_where_the_nodes_meet_and_how_long_to_wait():
    from lm.distributed import torchrun_command

    place = NodePlace(2, 1, "node0", 29600, 45)
    assert torchrun_command(2, "lm.train_worker", "/work", log_dir="/logs", nodes=place)[1:] == [
        "-m", "torch.distributed.run", "--nnodes=2", "--node-rank=1", "--master-addr=node0",
        "--master-port=29600", "--rdzv-conf=timeout=45", "--log-dir=/logs",
        "--nproc_per_node=2", "-m", "lm.train_worker", "/work",
    ]  # fmt: skip
    assert torchrun_command(3, "m")[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m", "m"]  # fmt: skip


def launched(monkeypatch, code: int = 0, tail: list[str] | None = None) -> list[tuple]:
    """`run_torchrun` with torchrun itself replaced: each launch's command and environment is
    recorded, and it ends with `code` and the error output `tail`."""
    import lm.distributed

    launches: list[tuple] = []

    def relay(command, environment, log, noise=None):
        launches.append((command, environment))
        return code, list(tail or [])

    monkeypatch.setattr(lm.distributed, "_run_relaying_output", relay)
    return launches


def test_the_ranks_share_the_cores_and_die_with_this_process(monkeypatch):
    from lm.parent_death import PARENT_PID_VARIABLE

    launches = launched(monkeypatch)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    # Named by a guard of its own (a process started under `lm.parent_death`): torchrun's
    # guard must still check for this process, its actual parent.
    run_torchrun(2, "m", env={"PATH": os.environ["PATH"], PARENT_PID_VARIABLE: "1"})
    run_torchrun(2, "m", env={"PATH": os.environ["PATH"], "OMP_NUM_THREADS": "3"})
    (command, first), (_, second) = launches
    assert command[:4] == [sys.executable, "-m", "lm.parent_death", sys.executable]
    assert first[PARENT_PID_VARIABLE] == second[PARENT_PID_VARIABLE] == str(os.getpid())
    assert (first["OMP_NUM_THREADS"], second["OMP_NUM_THREADS"]) == ("4", "3")
    assert first["PYTHONPATH"].split(os.pathsep)[0] == str(REPO_ROOT)


LOST_NOTE = "(rank 0 then failed on the lost connection, their tracebacks left out: Connection)"


@pytest.mark.parametrize(("node_rank", "there"), [(0, "there."), (1, "there (or of the run")])
def test_ranks_that_only_lost_their_peers_point_to_the_other_node(monkeypatch, node_rank, there):
    launched(monkeypatch, 1, [LOST_NOTE])
    with pytest.raises(TrainingError) as failure:
        run_torchrun(1, "m", nodes=NodePlace(2, node_rank, "node0", 29600, 60))
    assert f"its error is in the output of `lmforge train-join` {there}" in str(failure.value)
    # A rank of this node that failed on its own: its error is here, not elsewhere.
    launched(monkeypatch, 1, ["[rank1]: ValueError: bad batch", LOST_NOTE])
    with pytest.raises(TrainingError) as failure:
        run_torchrun(1, "m", nodes=NodePlace(2, node_rank, "node0", 29600, 60))
    assert "only lost their connection" not in str(failure.value)
    assert "[rank1]: ValueError: bad batch" in str(failure.value)


def test_only_node_zero_blames_its_rendezvous_port(monkeypatch):
    """Node 0 hosts the meeting point; "address already in use" on another node is an error
    of its own ranks, shown as it is."""
    launched(monkeypatch, 1, ["OSError: [Errno 98] address already in use"])
    with pytest.raises(TrainingError, match=r"train\.master_port 29600 is already in use"):
        run_torchrun(1, "m", nodes=NodePlace(2, 0, "node0", 29600, 60))
    with pytest.raises(TrainingError, match=r"failed with exit code 1\. The end of its error "
                       r"output:\nOSError: \[Errno 98\] address already in use"):  # fmt: skip
        run_torchrun(1, "m", nodes=NodePlace(2, 1, "node0", 29600, 60))


def test_the_error_output_keeps_its_end_not_its_beginning():
    from lm.distributed import STDERR_TAIL_LINES, error_tail

    lines = [f"line {n}" for n in range(3 * STDERR_TAIL_LINES)]
    assert error_tail(lines) == lines[-STDERR_TAIL_LINES:]


def test_c10d_frames_and_the_blank_lines_between_them_are_not_relayed():
    from lm.distributed import RendezvousNoise

    output = ["W1207 12:00:00.000000 1 socket.cpp:1] TCP client failed to connect",
              "Exception raised from connect at socket.cpp:1 (most recent call first):",
              "frame #0: c10::Error::Error() + 0x1", "", "frame #1: start_thread + 0x2", "",
              "W1207 12:00:01.000000 1 socket.cpp:1] TCP client failed to connect"]  # fmt: skip
    noise = RendezvousNoise()
    assert [shown for line in output for shown in noise.feed(line)] == [output[0], output[-1]]


def test_the_rendezvous_port_is_free_while_connections_it_served_linger(tmp_path):
    """A ladder's trainings meet one after another at the same train.master_port: the last
    one's closed connections linger there (TIME_WAIT) for a minute, which the store's own
    bind ignores (SO_REUSEADDR); the check must not call the port taken."""
    with contextlib.closing(socket.socket()) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the side that closes first keeps the TIME_WAIT, on `port`
        client.recv(1)
        client.close()
    check_port_free(NodePlace(2, 0, "node0", port, 60))


def test_a_rank_says_whether_it_completed_when_it_leaves_the_group(tmp_path, monkeypatch):
    """`leave_process_group` waits for the other ranks only after a completed run; a rank that
    failed must say so, exit 1 and not wait for ranks that may never come."""
    import lm.distributed
    from lm import train_worker

    left: list[bool] = []
    monkeypatch.setattr(lm.distributed, "leave_process_group", left.append)
    monkeypatch.setattr(train_worker, "train_in", lambda work: None)
    assert train_worker.main([str(tmp_path)]) == 0

    def fails(work):
        raise TrainingError("token file missing")

    monkeypatch.setattr(train_worker, "train_in", fails)
    assert train_worker.main([str(tmp_path)]) == 1
    assert left == [True, False]


def test_a_resumed_worker_counts_the_tokens_it_trained_itself(tmp_path):
    """`tokens_this_run` is what the ranks trained in this launch, the speed's numerator: a
    resume after a crash does not count the tokens of the run it continues."""
    from lm.train_worker import train_in

    job = tmp_path / "job"
    spec = write_job(job, nproc_per_node=1, max_steps=3, eval_every=3, checkpoint_every=3)
    train_in(job)
    first = read_result(job)
    assert first["tokens_this_run"] == first["tokens_seen"] == 3 * 8 * 16
    longer = spec.train.model_copy(update={"max_steps": 5})
    write_spec(job, spec.model_copy(update={"train": longer}))
    train_in(job)
    resumed = read_result(job)
    assert (resumed["tokens_seen"], resumed["tokens_this_run"]) == (5 * 8 * 16, 2 * 8 * 16)
    assert resumed["world_size"] == 1


def test_gradients_sync_on_the_last_micro_batch_and_fsdp_syncs_again_after_a_failure():
    from lm.distributed import gradient_sync

    class Sharded:  # what FSDP2 offers
        def __init__(self) -> None:
            self.said: list[bool] = []

        def set_requires_gradient_sync(self, enabled: bool) -> None:
            self.said.append(enabled)

    model = Sharded()
    with gradient_sync(model, enabled=True):
        assert model.said == []  # the last micro-batch: reduced as usual
    with pytest.raises(ValueError), gradient_sync(model, enabled=False):
        assert model.said == [False]
        raise ValueError("a micro-batch failed")
    assert model.said == [False, True]


def test_a_worker_s_initial_weights_come_from_the_train_seed(tmp_path, monkeypatch):
    """Every rank builds the model from `train.seed`, whatever the process drew before: the
    ranks start from the same weights, and another seed starts from others."""
    import lm.models.registry
    from lm.train_worker import train_in

    class Built(Exception):
        pass

    built: list[str] = []
    build = lm.models.registry.build_model

    def recording(*args, **kwargs):
        built.append(weights_digest(build(*args, **kwargs).state_dict()))
        raise Built

    monkeypatch.setattr(lm.models.registry, "build_model", recording)
    for seed in (1, 1, 2):
        job = tmp_path / f"job-{len(built)}"
        write_job(job, nproc_per_node=1, seed=seed)
        torch.manual_seed(100 + len(built))  # what this process's generator was left at
        with pytest.raises(Built):
            train_in(job)
    assert built[0] == built[1] != built[2]
