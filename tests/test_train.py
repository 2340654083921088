"""The training engine: exact resume, schedules, early stopping, guards, and that every GPT
variant learns."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lm.checkpoints import INFO_FILE, complete_checkpoints
from lm.models.config import BigramConfig, GPTConfig, MLPConfig, W2VConfig
from lm.models.registry import build_model
from lm.train import (
    TokenBatches,
    TrainConfig,
    Trainer,
    TrainingError,
    autocast_dtype,
    compile_wanted,
    flops_per_token,
    latest_checkpoint,
    learning_rate,
    peak_flops_of,
)
from tests.helpers import periodic_tokens, warnings_said_by

VOCAB = 20
REPO = Path(__file__).resolve().parent.parent


TRAIN, VAL = periodic_tokens(4000, VOCAB), periodic_tokens(1000, VOCAB)[::-1].copy()
SMALL_GPT = GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small train fastest on one thread; two spin against each other (measured
    12x slower per step on the shared 2-core test machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(**fields) -> TrainConfig:
    base = {"max_steps": 20, "micro_batch": 4, "global_batch": 8, "block_size": 16,
            "learning_rate": 3e-3, "warmup_steps": 2, "eval_every": 5, "eval_batches": 2,
            "checkpoint_every": 5, "device": "cpu"}  # fmt: skip
    return TrainConfig(**(base | fields))


def trainer(tmp_path, settings: TrainConfig, model_config=SMALL_GPT) -> Trainer:
    torch.manual_seed(settings.seed)
    return Trainer(build_model(model_config, VOCAB), settings, TRAIN, VAL, tmp_path)


@pytest.mark.parametrize(
    "model_config",
    [SMALL_GPT, GPTConfig(block_size=16, n_layer=3, n_head=2, n_embd=16, dropout=0.2,
                          drop_path=0.3)],
    ids=["plain", "dropout-and-stochastic-depth"],
)  # fmt: skip
def test_n_steps_equal_half_then_resume_then_half(tmp_path, model_config):
    """With dropout and stochastic depth the random masks must resume where they stopped too."""
    straight = trainer(tmp_path / "straight", config(max_steps=20), model_config)
    straight_result = straight.train()

    first = trainer(tmp_path / "split", config(max_steps=20), model_config)
    first_losses = first.train(until_step=10).losses  # as if killed after step 10
    resumed = trainer(tmp_path / "split", config(max_steps=20), model_config)
    resumed.resume(latest_checkpoint(tmp_path / "split"))
    second_losses = resumed.train().losses

    assert first_losses + second_losses == straight_result.losses
    for name, tensor in straight.module.state_dict().items():
        assert torch.equal(tensor, resumed.module.state_dict()[name]), name


@pytest.mark.parametrize(
    ("pos", "mlp", "norm", "kv_heads"),
    list(itertools.product(["sinusoidal", "learned", "rope"], ["gelu", "swiglu"],
                           ["layernorm", "rmsnorm"], [4, 2, 1])),
)  # fmt: skip
def test_every_gpt_variant_learns(tmp_path, pos, mlp, norm, kv_heads):
    model = GPTConfig(block_size=16, n_layer=1, n_head=4, n_kv_heads=kv_heads, n_embd=32,
                      pos=pos, mlp=mlp, norm=norm)  # fmt: skip
    result = trainer(tmp_path, config(max_steps=30, checkpoint_every=100), model).train()
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.5


def test_a_training_that_never_leaves_warmup_says_so(tmp_path, caplog):
    rates = []
    with caplog.at_level(logging.WARNING, logger="lm.train"):
        short = trainer(tmp_path / "short", config(max_steps=4, warmup_steps=10))
        short._log = lambda values, step: rates.append(values.get("train/lr"))
        short.train()
    assert "train.warmup_steps (10) is not below train.max_steps (4)" in caplog.text
    assert "never reaches train.learning_rate and never decays" in caplog.text
    assert max(r for r in rates if r is not None) < 3e-3 / 2  # it never came near the peak
    caplog.clear()
    rates.clear()
    with caplog.at_level(logging.WARNING, logger="lm.train"):
        even = trainer(tmp_path / "even", config(max_steps=4, warmup_steps=4))
        even._log = lambda values, step: rates.append(values.get("train/lr"))
        even.train()
    assert "reaches train.learning_rate only on the last step and never decays" in caplog.text
    assert [r for r in rates if r is not None][-1] == pytest.approx(3e-3)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lm.train"):
        trainer(tmp_path / "long", config(max_steps=4, warmup_steps=3)).train()
    assert "warmup_steps" not in caplog.text


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    accumulated = trainer(tmp_path / "a", config(micro_batch=2, global_batch=8, max_steps=1))
    whole = trainer(tmp_path / "b", config(micro_batch=8, global_batch=8, max_steps=1))
    # Same windows: both read 8 sequences from the same seeded generator.
    x_parts = [accumulated.train_batches.next(torch.device("cpu")) for _ in range(4)]
    whole_x = whole.train_batches.next(torch.device("cpu"))
    assert torch.equal(torch.cat([x for x, _ in x_parts]), whole_x[0])


def test_warmup_cosine_and_wsd_schedules():
    """Steps run 0 … 100: both decays reach the floor on step 100, the last one trained."""
    cosine = config(max_steps=101, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1)
    assert learning_rate(0, cosine) == pytest.approx(0.1)
    assert learning_rate(9, cosine) == pytest.approx(1.0)
    assert learning_rate(10, cosine) == pytest.approx(1.0)
    assert learning_rate(55, cosine) == pytest.approx(0.55)
    assert learning_rate(100, cosine) == pytest.approx(0.1)
    wsd = cosine.model_copy(update={"schedule": "wsd", "decay_fraction": 0.2})
    assert learning_rate(50, wsd) == 1.0 and learning_rate(80, wsd) == 1.0
    assert learning_rate(90, wsd) == pytest.approx(0.55)
    assert learning_rate(100, wsd) == pytest.approx(0.1)


def test_every_decay_has_its_share_of_the_steps_and_ends_at_the_floor():
    """WSD decays over round(decay_fraction · max_steps) steps, at least one, the last at the
    floor. Before, the decay's first step was still the peak: 10 steps with decay_fraction 0.1
    never decayed (the last trained at the peak) and 0.2 decayed over one step, not two. Cosine
    with warmup leaving one step also ended at the peak."""

    def rates(**fields) -> list[float]:
        settings = config(**{"max_steps": 10, "warmup_steps": 0, "learning_rate": 1.0,
                             "min_lr_ratio": 0.1, "schedule": "wsd"} | fields)  # fmt: skip
        return [learning_rate(step, settings) for step in range(10)]

    assert rates(decay_fraction=0.1) == pytest.approx([1.0] * 9 + [0.1])
    assert rates(decay_fraction=0.2) == pytest.approx([1.0] * 8 + [0.55, 0.1])
    assert rates(decay_fraction=1.0) == pytest.approx([1 - 0.09 * (s + 1) for s in range(10)])
    assert rates(decay_fraction=1.0, warmup_steps=5)[4:] == pytest.approx(
        [1.0, 0.82, 0.64, 0.46, 0.28, 0.1]
    )
    cosine = config(max_steps=5, warmup_steps=4, learning_rate=1.0, min_lr_ratio=0.1)
    assert [learning_rate(step, cosine) for step in range(5)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 0.1]
    )


@pytest.mark.parametrize("samples", ["windows", "documents"])
def test_gradient_accumulation_weighs_every_scored_target_alike(tmp_path, samples):
    """Rows of documents score different numbers of targets (padding is not scored): the
    step's gradient is the mean over all the global batch scores, however it is cut into
    micro-batches (a mean of micro-batch means would give short documents more weight).
    Windows score every position: each micro-batch's mean weighs 1/accumulation."""
    eot = VOCAB - 1
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, eot, int(n)) for n in rng.integers(1, 15, 200)]
    tokens = np.concatenate([np.append(d, eot) for d in documents]).astype(np.uint16)

    def first_step(micro_batch: int) -> tuple[float, list[torch.Tensor]]:
        settings = config(samples=samples, micro_batch=micro_batch, global_batch=8,
                          max_steps=1, grad_clip=0.0, precision="fp32")  # fmt: skip
        torch.manual_seed(settings.seed)
        run = Trainer(build_model(SMALL_GPT, VOCAB), settings, tokens, tokens, tmp_path,
                      eot_id=eot)  # fmt: skip
        gradients = []
        run.optimizer.step = lambda: gradients.extend(p.grad.clone() for p in
                                                      run.module.parameters())  # fmt: skip
        loss, _ = run.train_step()
        return loss, gradients

    whole_loss, whole = first_step(8)
    split_loss, split = first_step(2)  # the same 8 rows, drawn 2 at a time
    assert split_loss == pytest.approx(whole_loss, rel=1e-6)
    difference = torch.cat([(a - b).flatten() for a, b in zip(whole, split, strict=True)])
    assert difference.norm() < 1e-5 * torch.cat([g.flatten() for g in whole]).norm()


@pytest.mark.parametrize("samples", ["windows", "documents"])
def test_the_val_sample_does_not_depend_on_the_micro_batch(tmp_path, samples):
    """Evaluation during training (early stopping, the `best` checkpoint) scores the same val
    rows however the global batch is cut into micro-batches: `eval_batches` draws of
    `global_batch` rows, scored in micro-batch pieces. It used to draw `eval_batches`
    micro-batches, so halving the micro-batch to save memory halved the sample and moved every
    val loss. Documents longer than the block are cropped at random, so the rows' draws and
    crops must come in the same order too."""
    eot = VOCAB - 1
    rng = np.random.default_rng(1)
    documents = [rng.integers(0, eot, int(n)) for n in rng.integers(1, 40, 300)]
    tokens = np.concatenate([np.append(d, eot) for d in documents]).astype(np.uint16)

    def evaluated(micro_batch: int) -> tuple[float, int]:
        settings = config(samples=samples, micro_batch=micro_batch, global_batch=8,
                          eval_batches=3, precision="fp32")  # fmt: skip
        torch.manual_seed(settings.seed)
        run = Trainer(build_model(SMALL_GPT, VOCAB), settings, tokens, tokens, tmp_path,
                      eot_id=eot)  # fmt: skip
        assert all(len(x) == micro_batch for x, _ in run.val_sample)
        return run.evaluate(), sum(len(x) for x, _ in run.val_sample)

    whole, whole_rows = evaluated(8)
    for micro_batch in (4, 2):
        loss, rows = evaluated(micro_batch)
        assert rows == whole_rows == 3 * 8
        assert loss == pytest.approx(whole, rel=1e-6), micro_batch


def test_tokens_seen_count_the_targets_trained_on_and_resume_with_the_run(tmp_path, monkeypatch):
    """Rows of documents are padded after their end mark, and the padding is not trained on:
    the tokens seen (the registry's `tokens_seen`) count the scored targets. Before, they were
    steps × global_batch × block_size, here 2.95 times the targets trained on. Windows score
    every position, as before. MFU, how busy the device is, counts the positions computed."""
    from lm.batches import make_batches, scored_targets

    eot = VOCAB - 1
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, eot, int(n)) for n in rng.integers(1, 8, 300)]
    tokens = np.concatenate([np.append(d, eot) for d in documents]).astype(np.uint16)
    settings = config(samples="documents", max_steps=6, micro_batch=2, global_batch=4,
                      eval_every=100, checkpoint_every=3)  # fmt: skip
    rows = make_batches(tokens, settings, settings.seed, eot)  # what the run will draw
    scored = sum(scored_targets(rows.next(torch.device("cpu"))[1]) for _ in range(6 * 2))

    def run(folder: Path) -> Trainer:
        torch.manual_seed(settings.seed)
        return Trainer(build_model(SMALL_GPT, VOCAB), settings, tokens, tokens, folder,
                       eot_id=eot)  # fmt: skip

    clock = {"now": 0.0}  # a step takes 10 s: a report after each
    monkeypatch.setattr("lm.train.time", SimpleNamespace(monotonic=lambda: clock["now"]))
    straight = run(tmp_path / "straight")
    straight.peak_flops = 1e9  # as on a GPU of known peak: MFU is logged
    launch = straight._launch_step
    straight._launch_step = lambda unread=None: (
        clock.update(now=clock["now"] + 10) or launch(unread)
    )
    assert straight.train().tokens_seen == scored
    assert 6 * 4 * 16 / scored == pytest.approx(2.95, abs=0.01)
    # Tokens/s counts them too (it counted padding: 2.95 times too fast).
    lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    speeds = [json.loads(line)["value"] for line in lines if "tokens_per_s" in line]
    assert len(speeds) == 6 and sum(speeds) * 10 == pytest.approx(scored, rel=1e-9)  # a step each
    # MFU counts every position the device computed, padding included (it counted targets).
    mfu = [json.loads(line)["value"] for line in lines if "train/mfu" in line]
    positions_per_s = 4 * 16 / 10
    assert mfu == [pytest.approx(positions_per_s * straight.flops_per_token / 1e9)] * 6
    run(tmp_path / "split").train(until_step=3)
    resumed = run(tmp_path / "split")
    resumed.resume(latest_checkpoint(tmp_path / "split"))
    assert resumed.train().tokens_seen == scored
    windows = trainer(tmp_path / "windows", config(max_steps=3, eval_every=100)).train()
    assert windows.tokens_seen == 3 * 8 * 16


def test_mfu_counts_the_history_positions_a_window_computes(tmp_path, monkeypatch):
    """An MLP's windows carry `context - 1` positions of unscored history before the block:
    computed, so counted in MFU (tokens/s counts the scored targets)."""
    clock = {"now": 0.0}  # a step takes 10 s: a report after each
    monkeypatch.setattr("lm.train.time", SimpleNamespace(monotonic=lambda: clock["now"]))
    run = trainer(tmp_path, config(max_steps=2, eval_every=100), MLPConfig(context=4, hiddens=[8]))
    assert run.history == 3
    run.peak_flops = 1e9
    launch = run._launch_step
    run._launch_step = lambda unread=None: clock.update(now=clock["now"] + 10) or launch(unread)
    run.train()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    mfu = [line["value"] for line in lines if line["key"] == "train/mfu"]
    speeds = [line["value"] for line in lines if line["key"] == "train/tokens_per_s"]
    assert speeds == [8 * 16 / 10] * 2
    assert mfu == [pytest.approx(8 * (16 + 3) / 10 * run.flops_per_token / 1e9)] * 2


def test_early_stopping_keeps_the_best_checkpoint(tmp_path):
    settings = config(max_steps=200, learning_rate=1e-6, eval_every=5, patience=2,
                      min_delta=10.0)  # fmt: skip
    result = trainer(tmp_path, settings).train()
    assert result.stopped_early and result.step == 15
    assert (tmp_path / "best" / "DONE").is_file()
    # A rerun (the process died after training, before publishing) stays stopped.
    rerun = trainer(tmp_path, settings)
    rerun.resume_or_initialize(tmp_path)
    again = rerun.train()
    assert (again.stopped_early, again.step, again.losses) == (True, 15, [])
    assert latest_checkpoint(tmp_path).name == "step-00000015"


def test_the_best_checkpoint_is_the_lowest_val_loss_and_min_delta_only_paces_patience(tmp_path):
    """Gains smaller than `min_delta` do not reset patience, but their weights are still the
    best seen: `best` is the lowest val loss (before, it stayed at the last evaluation that had
    gained `min_delta`, 2.89 here, and the run reported that as its best val loss). Patience is
    measured from the last evaluation that did gain it: 2.89 beat 3.0 by more than 0.1."""
    settings = config(max_steps=10, eval_every=1, checkpoint_every=1, patience=3, min_delta=0.1)
    run = trainer(tmp_path, settings)
    scores = iter([3.0, 2.95, 2.89, 2.85, 2.84, 2.83])
    run.evaluate = lambda model=None: next(scores)
    result = run.train()
    assert (result.stopped_early, result.step, result.best_val_loss) == (True, 6, 2.83)
    assert torch.load(tmp_path / "best" / "state.pt", weights_only=True)["step"] == 6
    (tmp_path / "best").rename(tmp_path / "best-aside")
    resumed = trainer(tmp_path, settings)
    resumed.resume(tmp_path / "step-00000005")
    assert (resumed.best_val_loss, resumed.val_loss_to_beat) == (2.84, 2.89)
    assert resumed.evaluations_without_improvement == 2
    (tmp_path / "best-aside").rename(tmp_path / "best")  # written after step 5: its loss kept
    resumed = trainer(tmp_path, settings)
    resumed.resume(tmp_path / "step-00000005")
    assert (resumed.best_val_loss, resumed.val_loss_to_beat) == (2.83, 2.89)


def test_patience_running_out_on_the_last_step_is_not_stopping_early(tmp_path):
    """The run trained every step it planned: before, it was reported (and registered) as
    stopped early."""
    run = trainer(tmp_path, config(max_steps=6, eval_every=3, patience=1))
    scores = iter([3.0, 3.1])
    run.evaluate = lambda model=None: next(scores)
    result = run.train()
    assert (result.step, result.stopped_early, result.best_val_loss) == (6, False, 3.0)


def test_patience_that_cannot_end_a_run_early_and_min_delta_without_patience_are_said(tmp_path):
    """Two evaluations (steps 3 and 6) leave patience 1 nothing to stop: the first is the best
    so far and the last ends the run anyway."""
    said = {}
    for patience, every in ((1, 3), (1, 2), (2, 2), (0, 3)):
        with warnings_said_by("lm.train") as warnings:
            trainer(tmp_path / f"{patience}-{every}",
                    config(max_steps=6, eval_every=every, patience=patience)).train()  # fmt: skip
        said[patience, every] = [w for w in warnings if "train.patience" in w]
    assert said[1, 3] == [
        "train.patience = 1, but training evaluates 2 times (train.eval_every "
        "= 3 of train.max_steps = 6): early stopping can never end it early"
    ]
    assert said[2, 2] and not said[1, 2] and not said[0, 3]
    with warnings_said_by("lm.train") as warnings:
        trainer(tmp_path / "delta", config(max_steps=6, eval_every=3, min_delta=0.1)).train()
    assert warnings == ["train.min_delta = 0.1 paces early stopping, which train.patience = 0 "
                        "turns off: it changes nothing"]  # fmt: skip


def test_a_nan_val_loss_stops_the_run_and_keeps_the_best_before_it(tmp_path):
    """Not one more evaluation without improvement: weights that score NaN are broken."""
    run = trainer(tmp_path, config(max_steps=6, eval_every=1, patience=5))
    scores = iter([3.0, math.nan])
    run.evaluate = lambda model=None: next(scores)
    with pytest.raises(TrainingError, match=r"val loss is nan at step 2 .*train\.learning_rate"):
        run.train()
    assert torch.load(tmp_path / "best" / "state.pt", weights_only=True)["step"] == 1


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    run = trainer(tmp_path, config())
    with torch.no_grad():
        next(run.module.parameters()).fill_(math.nan)
    with pytest.raises(TrainingError, match="loss is nan at step 1") as raised:
        run.train()
    # Advice from the settings in place: clipping is on; fp32 only where it is a change.
    said = str(raised.value)
    assert "or lower train.grad_clip (now 1)" in said
    assert ('train.precision = "fp32"' in said) == (run.autocast is not None)


def test_the_not_finite_advice_suggests_only_settings_not_already_in_place():
    from lm.train import not_finite_advice

    unclipped = not_finite_advice(config(grad_clip=0.0), torch.bfloat16)
    assert "turn gradient clipping on (train.grad_clip = 1.0; now 0, off)" in unclipped
    assert 'set train.precision = "fp32"' in unclipped


def nan_loss_at(run: Trainer, step: int) -> list[int]:
    """Make `run`'s training loss NaN on step `step` (counted from 0, as `run.step` is while
    the step runs: the error and the metrics call it step `step + 1`); returns the steps whose
    forward ran, as they run."""
    forward, calls = run._forward, []

    def forward_with_a_nan(x, y, model=None):
        calls.append(run.step)
        logits, loss = forward(x, y, model)
        return logits, loss * math.nan if run.step == step else loss

    run._forward = forward_with_a_nan
    return calls


def test_a_nan_step_leaves_the_weights_and_the_optimizer_as_they_were(tmp_path):
    """The fused optimizer's update is queued before the loss is read, and skips itself on the
    device when the loss is not finite: the step that raises changes nothing."""
    run = trainer(tmp_path, config())
    for _ in range(3):
        run.train_step()
    weights = {name: tensor.clone() for name, tensor in run.module.state_dict().items()}
    moments = [state["exp_avg"].clone() for state in run.optimizer.state.values()]
    steps = [float(state["step"]) for state in run.optimizer.state.values()]
    nan_loss_at(run, 3)
    with pytest.raises(TrainingError, match="loss is nan at step 4"):
        run.train_step()
    for name, tensor in run.module.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    states = list(run.optimizer.state.values())
    assert all(torch.equal(s["exp_avg"], m) for s, m in zip(states, moments, strict=True))
    assert [float(state["step"]) for state in states] == steps


def test_running_a_step_ahead_trains_and_logs_exactly_as_step_by_step(tmp_path):
    """The loop queues step n+1 before reading step n's loss (one process, fused AdamW): the
    same losses, weights and metric lines as steps read one at a time."""
    settings = config(max_steps=12, eval_every=100, checkpoint_every=100)
    ahead = trainer(tmp_path / "ahead", settings)
    ahead.runs_ahead = True  # as on a GPU
    launched_before_read = []
    settle = ahead._settle

    def noting_settle(launched):
        launched_before_read.append(ahead.step - launched.number)  # steps queued after it
        return settle(launched)

    ahead._settle = noting_settle
    losses = ahead.train().losses
    assert launched_before_read == [1] * 11 + [0]  # the last is read with nothing after it
    one_by_one = trainer(tmp_path / "one-by-one", settings)
    assert losses == [one_by_one.train_step()[0] for _ in range(12)]
    for name, tensor in ahead.module.state_dict().items():
        assert torch.equal(tensor, one_by_one.module.state_dict()[name]), name
    metrics = (tmp_path / "ahead/metrics.jsonl").read_text().splitlines()
    lines = [json.loads(line) for line in metrics]
    logged = [(m["step"], m["value"]) for m in lines if m["key"] == "train/loss"]
    assert logged == list(enumerate(losses, start=1))


def test_a_step_run_ahead_is_read_from_its_own_copy_never_by_item(tmp_path, monkeypatch):
    """Running ahead, each step's loss and norm come to the host in one copy queued with the
    step (`HostReadout`), never by `.item()` or `float()` on a device tensor: on a GPU those
    wait for everything queued, the step queued after it too, and the GPU ran dry at every
    step while the host prepared the next."""
    from lm.train import HostReadout

    run = trainer(tmp_path, config(max_steps=6, eval_every=100, checkpoint_every=100))
    run.runs_ahead = True  # as on a GPU
    reads, read = [], HostReadout.read
    monkeypatch.setattr(HostReadout, "read", lambda self: reads.append(1) or read(self))
    blocking = []

    def noting(name):
        real = getattr(torch.Tensor, name)
        return lambda self: blocking.append(name) or real(self)

    for name in ("item", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, noting(name))
    losses = [loss for _, loss, _, _ in run.run_steps(6)]
    monkeypatch.undo()
    assert blocking == [] and len(reads) == len(losses) == 6


def test_a_nan_loss_read_a_step_late_still_changes_no_weight(tmp_path):
    """Step 4's loss is NaN; step 5 is already queued, update and all, when the host reads
    it. Step 5's update skips itself too: the run stops with step 3's weights."""
    run = trainer(tmp_path, config(max_steps=12, eval_every=100, checkpoint_every=100))
    run.runs_ahead = True  # as on a GPU
    calls = nan_loss_at(run, 3)
    snapshots = {}
    update = run._update_weights

    def snapshotting_update():
        if run.step == 3:  # before the NaN step's update: the weights after three steps
            snapshots["weights"] = {n: t.clone() for n, t in run.module.state_dict().items()}
            snapshots["steps"] = [float(s["step"]) for s in run.optimizer.state.values()]
        update()

    run._update_weights = snapshotting_update
    with pytest.raises(TrainingError, match="loss is nan at step 4"):
        run.train()
    assert max(calls) == 4  # step 5 ran (`run.step` 4 then), and its update was queued,
    # before the NaN was read
    for name, tensor in run.module.state_dict().items():
        assert torch.equal(tensor, snapshots["weights"][name]), name
    assert [float(s["step"]) for s in run.optimizer.state.values()] == snapshots["steps"]


@pytest.mark.parametrize("ahead", [True, False], ids=["update-queued", "update-after-check"])
def test_gradients_that_are_not_finite_under_a_finite_loss_change_no_weight(tmp_path, ahead):
    """An overflow in the backward can leave the loss finite and the gradients not. The step is
    refused as a NaN loss is: before, its update turned every weight into NaN, the checkpoint
    after it kept them, and resuming from it failed again ("loss is nan at step 4")."""
    run = trainer(tmp_path, config(max_steps=8, eval_every=100, checkpoint_every=4))
    run.train(until_step=3)
    run.runs_ahead = ahead  # as on a GPU
    if not ahead:  # the path of several ranks: each step's loss and norm read before its update
        run.optimizer.defaults["fused"] = False
    first = next(run.module.parameters())
    first.register_hook(lambda grad: grad * math.nan if run.step == 3 else grad)
    with pytest.raises(TrainingError, match=r"gradients' norm is nan at step 4 \(its loss, "):
        run.train()
    saved = torch.load(tmp_path / "step-00000003" / "model.pt", weights_only=True)
    for name, tensor in run.module.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert latest_checkpoint(tmp_path).name == "step-00000003"


def test_stopping_the_steps_early_still_reads_the_step_left_in_flight(tmp_path):
    """The caller stops after step 3, while step 4 runs ahead with a NaN loss: closing the
    steps reads it and raises, instead of leaving a skipped step for the next call to miss."""
    run = trainer(tmp_path, config(max_steps=12, eval_every=100, checkpoint_every=100))
    run.runs_ahead = True  # as on a GPU
    nan_loss_at(run, 3)
    steps = run.run_steps(10)
    assert [step for step, *_ in itertools.islice(steps, 3)] == [1, 2, 3]
    with pytest.raises(TrainingError, match="loss is nan at step 4"):
        steps.close()


def test_half_written_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path, caplog):
    trainer(tmp_path, config(max_steps=20)).train(until_step=10)
    broken = tmp_path / "step-00000015"
    broken.mkdir()
    (broken / "model.pt").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "step-00000010"
    assert "step-00000015: incomplete checkpoint" in caplog.text


def test_a_checkpoint_that_cannot_be_written_is_a_clear_error_and_leaves_nothing(
    tmp_path, monkeypatch
):
    """A full disk, as torch reports it: its zip writer's RuntimeError, on the weights file
    after the optimizer's was written."""
    run = trainer(tmp_path, config(max_steps=20))
    full = RuntimeError(
        "[enforce fail at inline_container.cc:672] . unexpected pos 150592 vs 150484"
    )
    save = torch.save

    def save_until_the_weights(state, path, *args, **kwargs):
        if Path(path).name == "model.pt":
            raise full
        save(state, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_weights)
    with pytest.raises(TrainingError) as raised:
        run.train()
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'best'}: writing the checkpoint failed; ")
    assert "is the disk full, or the folder not writable?" in message
    assert raised.value.__cause__ is full
    assert list(tmp_path.glob("*.partial-*")) == []


def test_global_batch_must_be_a_multiple_of_micro_batch():
    with pytest.raises(ValueError, match=r"global_batch \(10\) must be a multiple of micro_batch"):
        TrainConfig(micro_batch=4, global_batch=10)


def test_a_split_shorter_than_the_context_is_refused():
    with pytest.raises(
        TrainingError, match="the train split has 10 tokens, not more than block_size"
    ):
        TokenBatches(np.zeros(10, dtype=np.uint16), 16, 2, 0)


def test_mlp_trains_through_the_same_loop(tmp_path):
    result = trainer(tmp_path, config(max_steps=30), MLPConfig(context=3, hiddens=[32])).train()
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])


# -- checkpoints: tokenizer digest, init_from, damage, metrics on resume ------------------------


def tokenized_trainer(tmp_path, digest: str, **fields) -> Trainer:
    torch.manual_seed(0)
    return Trainer(build_model(SMALL_GPT, VOCAB), config(**fields), TRAIN, VAL, tmp_path,
                   tokenizer_digest=digest)  # fmt: skip


def test_a_model_without_weights_to_train_is_refused_with_the_way_it_is_fitted(tmp_path):
    # torch said "element 0 of tensors does not require grad" at the first backward.
    from lm.models.config import BigramCountConfig

    trainer = Trainer(build_model(BigramCountConfig(), VOCAB), config(), TRAIN, VAL, tmp_path)
    for step in (trainer.train_step, trainer.train):  # (a Trainer evaluates and saves one)
        with pytest.raises(TrainingError, match="no weights to train: a bigram-count model is "):
            step()
    assert trainer.step == 0


def test_resuming_under_another_tokenizer_names_both_digests_and_the_checkpoint(tmp_path):
    tokenized_trainer(tmp_path, "tok-a").train(until_step=5)
    checkpoint = latest_checkpoint(tmp_path)
    with pytest.raises(TrainingError) as refused:
        tokenized_trainer(tmp_path, "tok-b").resume(checkpoint)
    assert f"{checkpoint}: made with tokenizer tok-a, but this run's tokenizer is tok-b" in str(
        refused.value
    )


def test_init_from_starts_from_the_weights_with_a_fresh_optimizer_and_step(tmp_path):
    source = tokenized_trainer(tmp_path / "source", "tok-a")
    source.train(until_step=10)
    follower = tokenized_trainer(tmp_path / "follower", "tok-a", learning_rate=1e-3)
    used = follower.resume_or_initialize(tmp_path / "follower", tmp_path / "source")
    assert used == f"weights initialised from {tmp_path / 'source' / 'best'}"
    best = torch.load(tmp_path / "source" / "best" / "model.pt", weights_only=True)
    for name, tensor in follower.module.state_dict().items():
        assert torch.equal(tensor, best[name]), name
    assert follower.step == 0 and not follower.optimizer.state
    assert follower.train().losses[0] < source.train_step()[0] + 0.5  # starts trained, not random
    with pytest.raises(TrainingError, match=r"^train.init_from: .*: made with tokenizer tok-a"):
        tokenized_trainer(tmp_path / "other", "tok-b").initialize_from(tmp_path / "source")


def test_init_from_a_model_folder_skips_a_damaged_best_for_final(tmp_path, caplog):
    source = tokenized_trainer(tmp_path / "source", "tok-a")
    source.train(until_step=10)
    published = tmp_path / "published"
    for name in ("best", "final"):
        shutil.copytree(latest_checkpoint(tmp_path / "source"), published / name)
    size = (published / "best" / "model.pt").stat().st_size
    with open(published / "best" / "model.pt", "r+b") as weights:
        weights.truncate(1000)
    follower = tokenized_trainer(tmp_path / "follower", "tok-a")
    with caplog.at_level(logging.WARNING, logger="lm.train"):
        assert follower.initialize_from(published) == published / "final"
    said = (
        f"{published / 'best'}: damaged checkpoint (model.pt has 1000 bytes, {size} were written)"
    )
    assert said in caplog.text
    # Both damaged: said so (it said the folder held neither).
    with open(published / "final" / "model.pt", "r+b") as weights:
        weights.truncate(500)
    neither = r"no checkpoint can be read \(best/: model\.pt has 1000 bytes, \d+ were written; "
    with pytest.raises(TrainingError, match=neither + r"final/: model\.pt has 500 bytes"):
        tokenized_trainer(tmp_path / "none", "tok-a").initialize_from(published)
    # Named itself, a cut-short checkpoint is refused, as cut short.
    with pytest.raises(TrainingError, match=r"best: model\.pt has 1000 bytes, \d+ were written"):
        tokenized_trainer(tmp_path / "other", "tok-a").initialize_from(published / "best")


def test_init_from_hashes_a_model_folder_s_weights_once_and_warns_of_damage_once(
    tmp_path, caplog, monkeypatch
):
    # A run looks its init_from up three times: each hashed a GB of weights and warned again.
    from lm import checkpoints

    source = tokenized_trainer(tmp_path / "source", "tok-a")
    source.train(until_step=10)
    published = tmp_path / "published"
    for name in ("best", "final"):
        shutil.copytree(latest_checkpoint(tmp_path / "source"), published / name)
    hashed = []
    real_sha256 = checkpoints.file_sha256
    monkeypatch.setattr(checkpoints, "file_sha256", lambda p: hashed.append(p) or real_sha256(p))
    for _ in range(3):
        assert checkpoints.resolve_init_from(published) == published / "best"
    assert hashed == [published / "best" / "model.pt"]
    weights = bytearray((published / "best" / "model.pt").read_bytes())
    weights[-1] ^= 1  # a flipped bit, written anew: the same size, another state
    (published / "best" / "model.pt").write_bytes(bytes(weights))
    with caplog.at_level(logging.WARNING, logger="lm.train"):
        for _ in range(3):
            assert checkpoints.resolve_init_from(published) == published / "final"
    assert caplog.text.count(f"{published / 'best'}: damaged checkpoint (model.pt is not") == 1
    assert len(hashed) == 3  # the changed best/ once, final/ once


def test_tokens_trained_add_up_over_the_trainings_a_model_continues(tmp_path):
    """`tokens_seen` counts a run's own training; `tokens_trained` also what the weights it
    started from were trained on, as their checkpoint recorded it, through a resume too."""
    windows = 8 * 16  # targets a step: global_batch × block_size
    source = tokenized_trainer(tmp_path / "source", "tok-a", max_steps=6, checkpoint_every=3)
    first = source.train()
    assert first.tokens_trained == first.tokens_seen == 6 * windows
    start = latest_checkpoint(tmp_path / "source")  # step 6
    follower = tmp_path / "follower"
    continuing = {"max_steps": 4, "checkpoint_every": 2, "init_from": str(start)}
    interrupted = tokenized_trainer(follower, "tok-a", **continuing)
    interrupted.initialize_from(start)
    interrupted.train(until_step=2)
    resumed = tokenized_trainer(follower, "tok-a", **continuing)
    assert resumed.resume_or_initialize(follower, start).startswith("resumed from")
    second = resumed.train()
    assert second.tokens_seen == 4 * windows
    assert second.tokens_trained == (6 + 4) * windows
    third = tokenized_trainer(tmp_path / "third", "tok-a", max_steps=2)
    third.initialize_from(latest_checkpoint(follower))
    assert third.train().tokens_trained == (6 + 4 + 2) * windows
    # Checkpoints written before they recorded the count: one of a training that started
    # afresh has it in its state; one that continued another cannot know what that saw.
    for checkpoint in (start, latest_checkpoint(follower)):
        info = json.loads((checkpoint / INFO_FILE).read_text())
        del info["tokens_trained"]
        (checkpoint / INFO_FILE).write_text(json.dumps(info))
    from_fresh = tokenized_trainer(tmp_path / "from-fresh", "tok-a", max_steps=2)
    from_fresh.initialize_from(start)
    assert from_fresh.train().tokens_trained == (6 + 2) * windows
    unknown = tokenized_trainer(tmp_path / "unknown", "tok-a", max_steps=2)
    unknown.initialize_from(latest_checkpoint(follower))
    result = unknown.train()
    assert result.tokens_seen == 2 * windows and result.tokens_trained is None


def test_init_from_a_model_of_another_shape_is_one_line_naming_the_first_misfit(tmp_path):
    """PyTorch's message lists every tensor: before, 11,000 characters on 70 lines for this
    4-layer GPT of another width."""
    source = GPTConfig(block_size=16, n_layer=4, n_head=2, n_embd=16)
    trainer(tmp_path / "source", config(), source).save("best")
    wider = trainer(tmp_path / "wider", config(), source.model_copy(update={"n_embd": 32}))
    with pytest.raises(TrainingError) as refused:
        wider.initialize_from(tmp_path / "source")
    assert str(refused.value) == (
        f"train.init_from: {tmp_path / 'source' / 'best'} does not fit this model: "
        "token_embedding.weight is [20, 16] in it, [20, 32] in this model (69 tensors differ in "
        "shape); start from a checkpoint of a model with these model settings, or drop "
        "train.init_from"
    )
    deeper = trainer(tmp_path / "deeper", config(), source.model_copy(update={"n_layer": 5}))
    with pytest.raises(TrainingError, match=r"lacks 16 tensors of this model \(blocks\.4\."):
        deeper.initialize_from(tmp_path / "source")


def test_init_from_a_folder_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(TrainingError, match=f"train.init_from: {tmp_path} is not a checkpoint"):
        tokenized_trainer(tmp_path / "run", "tok").initialize_from(tmp_path)


def test_a_writer_killed_before_its_rename_leaves_nothing_that_breaks_a_resume(tmp_path, caplog):
    """A staging folder is complete (`DONE` written) a moment before its rename: a process
    killed then leaves it behind, and one killed between the two renames that replace `best`
    leaves the old `best` moved aside. The rerun resumes from the last renamed checkpoint,
    removes the staging folder and puts `best` back."""
    trainer(tmp_path, config(max_steps=20)).train(until_step=10)
    staging = tmp_path / "step-00000015.partial-4242-abcdef"
    shutil.copytree(tmp_path / "step-00000010", staging)
    best_weights = (tmp_path / "best" / "model.pt").read_bytes()
    os.rename(tmp_path / "best", tmp_path / "best.replaced-4242-abcdef")
    assert latest_checkpoint(tmp_path).name == "step-00000010"

    resumed = trainer(tmp_path, config(max_steps=20))
    assert "step-00000010" in resumed.resume_or_initialize(tmp_path) and resumed.step == 10
    assert not staging.exists() and "unfinished write left by a stopped process" in caplog.text
    assert (tmp_path / "best" / "model.pt").read_bytes() == best_weights
    assert sorted(p.name for p in tmp_path.iterdir() if "." in p.name) == ["metrics.jsonl"]


@pytest.mark.parametrize("written", ["{bad", "[1, 2]"])
def test_a_checkpoint_whose_record_is_unreadable_is_skipped_for_the_previous_one(
    tmp_path, caplog, written
):
    """Read as `{}` (the record of a checkpoint older than it), it switched off the size,
    sha256 and tokenizer checks, and the checkpoint loaded unchecked."""
    trainer(tmp_path, config(max_steps=20)).train(until_step=10)
    (tmp_path / "step-00000010" / "checkpoint.json").write_text(written)
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    problem = "is unreadable" if written == "{bad" else "holds no JSON object"
    assert f"step-00000010: damaged checkpoint (checkpoint.json {problem})" in caplog.text


def test_a_truncated_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    trainer(tmp_path, config(max_steps=20)).train(until_step=10)
    weights = tmp_path / "step-00000010" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    damaged = tmp_path / "step-00000010"
    assert f"{damaged}: damaged checkpoint (model.pt has 100 bytes" in caplog.text


def test_an_unloadable_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    """Of a checkpoint written before digests were recorded (nothing to compare the file to)."""
    trainer(tmp_path, config(max_steps=20)).train(until_step=10)
    info_file = tmp_path / "step-00000010" / "checkpoint.json"
    info = json.loads(info_file.read_text())
    info_file.write_text(json.dumps({k: v for k, v in info.items() if "sha256" not in k}))
    weights = tmp_path / "step-00000010" / "model.pt"
    weights.write_bytes(b"\0" * weights.stat().st_size)  # same size, not a torch file
    resumed = trainer(tmp_path, config(max_steps=20))
    assert resumed.resume_latest(tmp_path).name == "step-00000005" and resumed.step == 5
    assert f"{weights}: cannot be loaded" in caplog.text


def test_a_state_file_that_loads_but_is_no_training_state_is_skipped_and_changes_nothing(
    tmp_path, caplog
):
    """In a checkpoint without digests (written before they were recorded), a `state.pt` that
    torch loads but that is not a training state raised a bare `KeyError: 'step'`, after the
    weights and optimizer state had been applied: it is skipped for the previous checkpoint."""
    trainer(tmp_path, config(max_steps=20)).train(until_step=10)
    (tmp_path / "step-00000010" / INFO_FILE).unlink()
    torch.save({"something": "else"}, tmp_path / "step-00000010" / "state.pt")
    resumed = trainer(tmp_path, config(max_steps=20))
    assert resumed.resume_latest(tmp_path).name == "step-00000005" and resumed.step == 5
    assert "state.pt: cannot be loaded (it lacks step, torch, data" in caplog.text
    straight = trainer(tmp_path / "straight", config(max_steps=20))
    straight.train(until_step=5)
    for name, tensor in straight.module.state_dict().items():
        assert torch.equal(tensor, resumed.module.state_dict()[name]), name


def test_a_trainer_given_a_string_folder_writes_its_checkpoints_there(tmp_path):
    """A notebook names folders by strings: `str / "metrics.jsonl"` was a TypeError."""
    torch.manual_seed(0)
    settings = config(max_steps=2)
    Trainer(build_model(SMALL_GPT, VOCAB), settings, TRAIN, VAL, str(tmp_path)).train()
    assert (tmp_path / "metrics.jsonl").is_file() and (tmp_path / "best").is_dir()


def test_windows_longer_than_a_gpt_s_context_are_refused_naming_both(tmp_path):
    """From Python: "sequence of 64 tokens is longer than block_size 16", at the first step."""
    with pytest.raises(TrainingError, match=r"train.block_size 32 is longer than the model's "
                       r"context \(16 tokens\)"):  # fmt: skip
        trainer(tmp_path, config(block_size=32))


def test_an_optimizer_state_keyed_by_name_as_fsdp_saves_it_resumes_in_one_process(tmp_path, caplog):
    """FSDP saves the full optimizer state keyed by parameter name, one process and DDP by
    index: one process resumes either, on the same moments, so the run ends as if unmoved."""
    from lm.checkpoints import file_sha256
    from lm.distributed import optimizer_parameter_names

    straight = trainer(tmp_path / "straight", config(max_steps=10)).train()
    first = trainer(tmp_path, config(max_steps=10))
    first_losses = first.train(until_step=5).losses
    checkpoint = tmp_path / "step-00000005"
    indexed = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    names = optimizer_parameter_names(first.module, first.optimizer)
    by_name = {  # the layout of `get_optimizer_state_dict(..., full_state_dict=True)`
        "state": {names[index]: moments for index, moments in indexed["state"].items()},
        "param_groups": [group | {"params": [names[i] for i in group["params"]]}
                         for group in indexed["param_groups"]],
    }  # fmt: skip
    torch.save(by_name, checkpoint / "optimizer.pt")
    info = json.loads((checkpoint / INFO_FILE).read_text()) | {"parallel": "fsdp"}
    info["sha256"]["optimizer.pt"] = file_sha256(checkpoint / "optimizer.pt")
    info["files"]["optimizer.pt"] = (checkpoint / "optimizer.pt").stat().st_size
    (checkpoint / INFO_FILE).write_text(json.dumps(info))
    resumed = trainer(tmp_path, config(max_steps=10, parallel="fsdp"))
    with caplog.at_level(logging.INFO, logger="lm.train"):
        resumed.resume(checkpoint)
    assert f"{checkpoint} was written with parallel=fsdp; continuing with one process" in (
        caplog.text
    )
    assert first_losses + resumed.train().losses == straight.losses


def test_a_checkpoint_with_a_flipped_bit_is_skipped_for_the_previous_one(tmp_path, caplog):
    """A bit flipped inside a tensor keeps the file's size, and torch loads it without noticing:
    the resumed run trained on silently changed weights. Its sha256 no longer matches the one
    recorded when it was written."""
    trainer(tmp_path, config(max_steps=20)).train(until_step=10)
    weights = tmp_path / "step-00000010" / "model.pt"
    data = bytearray(weights.read_bytes())
    tensor = torch.load(weights, weights_only=True)["blocks.0.mlp.up.weight"]
    at = data.find(tensor.numpy().tobytes()[:64])
    assert at > 0
    data[at + 1] ^= 0x40
    weights.write_bytes(bytes(data))
    assert not torch.equal(torch.load(weights, weights_only=True)["blocks.0.mlp.up.weight"], tensor)
    resumed = trainer(tmp_path, config(max_steps=20))
    assert resumed.resume_latest(tmp_path).name == "step-00000005" and resumed.step == 5
    assert f"{tmp_path / 'step-00000010'}: model.pt is not the file written" in caplog.text
    with pytest.raises(TrainingError, match=r"init_from: .*model\.pt is not the file written"):
        trainer(tmp_path / "follower", config()).initialize_from(tmp_path / "step-00000010")


def test_resume_drops_the_metric_lines_a_killed_run_wrote_after_its_checkpoint(tmp_path):
    trainer(tmp_path, config(max_steps=20, checkpoint_every=5)).train(until_step=8)
    shutil.rmtree(tmp_path / "step-00000008")  # as if killed at step 8, before its checkpoint
    resumed = trainer(tmp_path, config(max_steps=20, checkpoint_every=5))
    resumed.resume_latest(tmp_path)
    resumed.train()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if m["key"] == "train/loss"] == list(range(1, 21))


def test_a_rerun_that_starts_afresh_drops_the_metric_lines_of_the_killed_run(tmp_path):
    """Killed before its first step checkpoint (`best` and the metrics already written), a run
    starts afresh when rerun: before, its log then held every step twice."""
    settings = config(max_steps=6, eval_every=3, checkpoint_every=100)
    killed = trainer(tmp_path, settings)
    save = killed.save

    def killed_at_the_step_checkpoint(name: str):
        if name.startswith("step-"):
            raise InterruptedError
        return save(name)

    killed.save = killed_at_the_step_checkpoint
    with pytest.raises(InterruptedError):
        killed.train()
    rerun = trainer(tmp_path, settings)
    assert rerun.resume_or_initialize(tmp_path) == "started afresh"
    rerun.train()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if m["key"] == "train/loss"] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in lines if m["key"] == "val/loss"] == [3, 6]


def test_ranks_draw_windows_from_disjoint_contiguous_shares():
    tokens = np.arange(1000, dtype=np.uint16)
    shares = [TokenBatches(tokens, 16, 64, 0, rank=r, world_size=2) for r in range(2)]
    starts = [set(itertools.chain(*(s.sample_starts() for _ in range(20)))) for s in shares]
    assert max(starts[0]) + 16 < 500 <= min(starts[1]) and max(starts[1]) + 16 < 1000
    with pytest.raises(TrainingError, match=r"rank 1's share of the train split .* 3 processes"):
        TokenBatches(tokens[:40], 16, 2, 0, rank=1, world_size=3)


def test_tokens_per_second_count_training_steps_and_the_eta_counts_evaluations_too(
    tmp_path, monkeypatch, caplog
):
    """On a clock where a step takes 1 s and an evaluation 10 s: the speed is one step's tokens
    per second, evaluations left out; the ETA is the steps left at that pace plus the
    evaluations left at what the last one took."""
    clock = {"now": 0.0}
    monkeypatch.setattr("lm.train.time", SimpleNamespace(monotonic=lambda: clock["now"]))
    run = trainer(tmp_path, config(max_steps=12, eval_every=2, checkpoint_every=100))
    settle, evaluate = run._settle, run.evaluate

    def one_second_step(launched):  # the time a step takes shows where its loss is read
        clock["now"] += 1.0
        return settle(launched)

    def ten_second_evaluation(model=None):
        clock["now"] += 10.0
        return evaluate(model)

    run._settle, run.evaluate = one_second_step, ten_second_evaluation
    with caplog.at_level(logging.INFO, logger="lm.train"):
        run.train()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    speeds = [m["value"] for m in lines if m["key"] == "train/tokens_per_s"]
    assert len(speeds) >= 2 and speeds == pytest.approx([8 * 16] * len(speeds))
    # First report after step 3, at 13 s: 9 steps left (9 s) and 5 evaluations (4, 6, ..., 12:
    # 50 s), exactly what remains. The wall-clock pace (13 s for 3 steps) would say 39 s.
    assert "train: step 3/12, loss" in caplog.text and "128 tokens/s, ETA 0:00:59" in caplog.text
    # Next after step 5, at 25 s: 7 steps and 4 evaluations. The pace of that report's window
    # (12 s for 2 steps, one evaluation in it) would say 42 s.
    assert "train: step 5/12, loss" in caplog.text and "128 tokens/s, ETA 0:00:47" in caplog.text
    # The last report comes before the last step's evaluation, still to run.
    assert re.search(r"step 12/12, loss [\d.]+, 128 tokens/s, ETA 0:00:10", caplog.text)


def test_a_cpu_step_is_timed_in_its_own_window_and_the_last_is_not_inflated(tmp_path, monkeypatch):
    """A CPU does a step's work as it is launched. Run ahead, each window held the next step's
    time and the last window almost none: its tokens/s read thousands of times the true rate."""
    clock = {"now": 0.0}
    monkeypatch.setattr("lm.train.time", SimpleNamespace(monotonic=lambda: clock["now"]))
    run = trainer(tmp_path, config(max_steps=12, eval_every=100, checkpoint_every=100))
    assert not run.runs_ahead  # a CPU trainer
    launch = run._launch_step

    def one_second_launch(unread=None):  # the work happens in the launch, as on a CPU
        clock["now"] += 1.0
        return launch(unread)

    run._launch_step = one_second_launch
    run.train()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    speeds = [m["value"] for m in lines if m["key"] == "train/tokens_per_s"]
    assert len(speeds) >= 2 and speeds == pytest.approx([8 * 16] * len(speeds))


def test_one_slow_stretch_moves_the_eta_by_a_smoothed_share_of_its_pace(
    tmp_path, monkeypatch, caplog
):
    """Steps of 1 s, but the first takes 61 s (compilation) and the 14th 11 s (another process
    took the cores). The first step's time is not carried into later ETAs. The report after
    the slow step gives that step's own speed, but an ETA from a pace moved only 30 % of the way
    (4 s a step for the 10 steps left: 40 s, where the raw pace would say 110 s)."""
    from lm.train import ETA_SMOOTHING

    clock = {"now": 0.0, "steps": 0}
    monkeypatch.setattr("lm.train.time", SimpleNamespace(monotonic=lambda: clock["now"]))
    run = trainer(tmp_path, config(max_steps=24, eval_every=100, checkpoint_every=100))
    settle = run._settle

    def timed_step(launched):
        clock["steps"] += 1
        clock["now"] += {1: 61.0, 14: 11.0}.get(clock["steps"], 1.0)
        return settle(launched)

    run._settle = timed_step
    with caplog.at_level(logging.INFO, logger="lm.train"):
        run.train()
    assert ETA_SMOOTHING == 0.3
    assert re.search(r"step 1/24, loss [\d.]+, 2 tokens/s, ETA 0:23:23", caplog.text)
    assert re.search(r"step 7/24, loss [\d.]+, 128 tokens/s, ETA 0:00:17", caplog.text)
    assert re.search(r"step 13/24, loss [\d.]+, 128 tokens/s, ETA 0:00:11", caplog.text)
    assert re.search(r"step 14/24, loss [\d.]+, 12 tokens/s, ETA 0:00:40", caplog.text)


@pytest.mark.parametrize(
    "model",
    [GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32, pos="learned"),
     GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32, pos="rope", tie_embeddings=False),
     MLPConfig(context=3, n_embd=8, hiddens=[32]), BigramConfig(),
     W2VConfig(context=2, vector_size=8, hiddens=[16], freeze=False),
     W2VConfig(context=2, vector_size=8, hiddens=[16])],
    ids=["gpt-learned-tied", "gpt-rope-untied", "mlp", "bigram", "w2v-tuned", "w2v-frozen"],
)  # fmt: skip
def test_flops_per_token_match_the_sizing_helper(model):
    """Tables read by index cost nothing: learned positions, an untied token embedding (a tied
    one is the output layer too), the MLP's and the bigram's tables, tuned word2vec vectors."""
    from lm.sizing import size_model

    built = build_model(model, VOCAB)
    expected = size_model(model, config(), VOCAB).flops_per_token
    assert flops_per_token(built, 32) == expected
    matrices = sum(p.numel() for p in built.parameters()) - built.lookup_params()
    assert expected == 6 * matrices + (12 * 2 * 32 * 32 if model.kind == "gpt" else 0)
    if model.kind == "gpt" and not model.tie_embeddings:
        assert built.lookup_params() == VOCAB * 32


def test_mfu_peaks_are_matched_by_device_name():
    assert peak_flops_of("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_of("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_of("NVIDIA H100 NVL") == peak_flops_of("NVIDIA H200 NVL") == 835e12
    assert peak_flops_of("NVIDIA H200") == peak_flops_of("NVIDIA H800") == 989e12
    assert peak_flops_of("NVIDIA H20") == 148e12  # not an H200's
    assert peak_flops_of("NVIDIA GeForce GTX 1080") is None
    assert peak_flops_of("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_of("NVIDIA L40") == 181e12  # not the L4's peak, a substring of its name
    assert peak_flops_of("NVIDIA L4") == 121e12
    assert peak_flops_of("NVIDIA RTX A1000") is None  # nor an A1000 an A100


def test_auto_precision_is_bf16_on_cuda_and_on_cpus_with_native_bf16(monkeypatch):
    auto = config(precision="auto")
    assert autocast_dtype(auto, torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr("lm.train.cpu_has_native_bf16", lambda: True)
    assert autocast_dtype(auto, torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr("lm.train.cpu_has_native_bf16", lambda: False)
    assert autocast_dtype(auto, torch.device("cpu")) is None
    assert autocast_dtype(config(precision="bf16"), torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr("lm.train.cpu_has_native_bf16", lambda: True)
    assert autocast_dtype(config(precision="fp32"), torch.device("cpu")) is None


def test_auto_compile_on_cpu_only_with_native_bf16_and_enough_planned_work(monkeypatch):
    from lm.train import CPU_COMPILE_MIN_FLOPS, planned_flops

    auto = config(compile="auto", precision="auto", max_steps=1000)
    per_token = CPU_COMPILE_MIN_FLOPS / planned_flops(auto, 1.0)  # exactly the threshold
    assert compile_wanted(auto, torch.device("cuda"))
    monkeypatch.setattr("lm.train.cpu_has_native_bf16", lambda: True)
    assert compile_wanted(auto, torch.device("cpu"), per_token)
    assert not compile_wanted(auto, torch.device("cpu"), per_token * 0.99)
    assert not compile_wanted(auto, torch.device("cpu"))  # unknown work: eager
    assert not compile_wanted(auto.model_copy(update={"precision": "fp32"}),
                              torch.device("cpu"), per_token)  # fmt: skip
    monkeypatch.setattr("lm.train.cpu_has_native_bf16", lambda: False)
    assert not compile_wanted(auto, torch.device("cpu"), per_token)
    assert compile_wanted(config(compile=True), torch.device("cpu"))
    assert not compile_wanted(config(compile=False), torch.device("cuda"))


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    from lm import cpu_features

    def flags_of(text: str) -> frozenset[str]:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(cpu_features, "CPUINFO", path)
        cpu_features.cpu_flags.cache_clear()
        return cpu_features.cpu_flags()

    try:
        assert flags_of("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n") >= {
            "avx2", "avx512_bf16"}  # fmt: skip
        assert cpu_features.cpu_has_native_bf16()
        assert "amx_bf16" in flags_of("flags : sse avx2 amx_tile amx_bf16\n")
        assert cpu_features.cpu_has_native_bf16()
        assert flags_of("flags\t: fpu avx2 avx512f\n") == {"fpu", "avx2", "avx512f"}
        assert not cpu_features.cpu_has_native_bf16()
        monkeypatch.setattr(cpu_features, "CPUINFO", tmp_path / "missing")
        cpu_features.cpu_flags.cache_clear()
        assert cpu_features.cpu_flags() == frozenset()
        assert not cpu_features.cpu_has_native_bf16()
    finally:
        cpu_features.cpu_flags.cache_clear()


def test_compiled_bf16_training_follows_eager_bf16(tmp_path):
    """The CPU's default for long runs where bf16 is native (compiled bf16) trains the same
    model as eager: the same losses up to bf16 rounding."""
    settings = config(precision="bf16", max_steps=6, eval_every=100, checkpoint_every=100)
    eager = trainer(tmp_path / "eager", settings).train()
    compiled_run = trainer(tmp_path / "compiled", settings.model_copy(update={"compile": True}))
    assert compiled_run.model is not compiled_run.module  # it really compiled
    compiled = compiled_run.train()
    assert compiled.losses == pytest.approx(eager.losses, rel=0.02)
    assert compiled.losses[-1] < compiled.losses[0]


def test_a_compiled_step_fills_no_gradient_for_the_logits_it_never_reads(tmp_path):
    """The compiled step returns the loss alone (`TrainingLoss`): compiled with the logits as an
    output, every backward was handed a zero gradient of their whole (batch, time, vocab) shape,
    filled and read for nothing (GPT-2 124M at batch 16: 1.6 GB each way, ~3 % of an H100 step)."""
    from torch.profiler import ProfilerActivity, profile

    settings = config(compile=True, max_steps=4, eval_every=100, checkpoint_every=100)
    run = trainer(tmp_path, settings)
    run.train_step()  # compiles
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiled:
        run.train_step()
    logits = [settings.micro_batch, settings.block_size, VOCAB]
    filled = [event.name for event in profiled.events()
              if event.name in ("aten::zero_", "aten::fill_", "aten::zeros", "aten::zeros_like")
              and logits in event.input_shapes]  # fmt: skip
    assert run.model is not run.module and filled == []


def test_a_compiler_that_fails_leaves_training_eager_with_a_warning(tmp_path, monkeypatch, caplog):
    import lm.compilation

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(lm.compilation.torch, "compile", broken_compile)
    with caplog.at_level("WARNING", logger="lm.compilation"):
        run = trainer(tmp_path, config(compile=True, max_steps=4))
    assert run.model is run.module  # eager: the module itself runs the batches
    assert "torch.compile unavailable" in caplog.text and "no C++ compiler found" in caplog.text
    assert run.train().step == 4


def test_a_model_that_fails_to_compile_at_its_first_step_trains_eager(
    tmp_path, monkeypatch, caplog
):
    """The probe compiles; the model only compiles at its first call, and failing there must
    not end the run: it goes on eager, and trains exactly as an eager run."""
    import lm.compilation

    def failing_backend(graph, example_inputs):
        raise RuntimeError("an operator this backend cannot lower")

    def compile_with_the_failing_backend(model, **options):
        return real_compile(model, backend=failing_backend)

    real_compile = torch.compile
    monkeypatch.setattr(lm.compilation, "compiler_works", lambda device: None)
    monkeypatch.setattr(lm.compilation.torch, "compile", compile_with_the_failing_backend)
    settings = config(max_steps=3, eval_every=100, checkpoint_every=100)
    trains_as_eager_after_its_compile_fails(
        tmp_path,
        monkeypatch,
        caplog,
        settings,
        "torch.compile failed on this model",
        "cannot lower",
    )


def trains_as_eager_after_its_compile_fails(
    tmp_path, monkeypatch, caplog, settings, *said, model_config=SMALL_GPT
):
    """A run asked to compile, whose compile fails (as `monkeypatch` arranged), warns with
    `said`, goes on eager and trains exactly as an eager run."""
    compiled = settings.model_copy(update={"compile": True})
    run = trainer(tmp_path / "failing", compiled, model_config)
    assert run.model is not run.module  # compiled, as far as the probe could tell
    with caplog.at_level("WARNING", logger="lm.train"):
        losses = run.train().losses
    assert all(text in caplog.text for text in said) and run.model is run.module
    monkeypatch.undo()
    assert losses == trainer(tmp_path / "eager", settings, model_config).train().losses


def compile_with_a_backward_that_fails(monkeypatch, message: str) -> None:
    """`torch.compile` as `lm.compilation` calls it, with a backend whose forward compiles
    and whose backward, compiled apart at the first `backward()`, raises `message`."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    import lm.compilation

    def failing_backward(graph, example_inputs):
        raise RuntimeError(message)

    backend = aot_autograd(fw_compiler=lambda graph, inputs: make_boxed_func(graph.forward),
                           bw_compiler=failing_backward)  # fmt: skip
    real_compile = torch.compile
    monkeypatch.setattr(lm.compilation.torch, "compile",
                        lambda model, **options: real_compile(model, backend=backend))  # fmt: skip


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_model_whose_backward_fails_to_compile_trains_eager(
    tmp_path, monkeypatch, caplog, dropout
):
    """The backward compiles apart, at the first `backward()`, outside Dynamo's error
    handling: failing there must not end the run either, nor leave a half-made gradient. With
    dropout, the failed attempt's masks are drawn again (they shifted every later draw)."""
    import lm.compilation

    compile_with_a_backward_that_fails(monkeypatch, "a backward this backend cannot lower")
    monkeypatch.setattr(lm.compilation, "compiler_works", lambda device: None)
    settings = config(max_steps=3, eval_every=100, checkpoint_every=100, micro_batch=2)
    trains_as_eager_after_its_compile_fails(tmp_path, monkeypatch, caplog, settings,
                                            "torch.compile failed on this model's backward",
                                            "backward this backend cannot lower",
                                            model_config=SMALL_GPT.model_copy(
                                                update={"dropout": dropout}))  # fmt: skip


def test_only_errors_from_inside_the_compiler_send_a_first_step_eager():
    """A first compiled step that fails for another reason (out of memory, bad data) must
    fail as it is, not be logged as a compiler failure and run again."""
    from lm.compilation import raised_by_the_compiler

    def raised(error):
        try:
            raise error
        except Exception as caught:
            return caught

    assert not raised_by_the_compiler(raised(RuntimeError("a shape mismatch in the model")))
    assert not raised_by_the_compiler(raised(torch.OutOfMemoryError("no memory")))
    # A compiled model's own error passes through the compiler's runtime frames: not its.
    embedding = torch.nn.Embedding(10, 4)
    for backend in ("eager", "aot_eager"):
        torch._dynamo.reset()
        compiled = torch.compile(embedding, backend=backend)
        compiled(torch.tensor([1, 2])).sum().backward()
        with pytest.raises(IndexError) as caught:
            compiled(torch.tensor([20, 2])).sum().backward()
        assert not raised_by_the_compiler(caught.value), backend


def test_the_compiler_probe_compiles_a_backward_too(monkeypatch):
    """A toolchain that lowers forwards but not backwards is found before training starts,
    where every rank of a distributed run can still fall back together."""
    import lm.compilation

    compile_with_a_backward_that_fails(monkeypatch, "no backward here")
    assert "no backward here" in lm.compilation.compiler_works(torch.device("cpu"))


# -- kill -9 -------------------------------------------------------------------------------------


def worker_job(folder) -> None:
    from lm.train_worker import TokenFile, WorkerSpec, write_spec

    folder.mkdir(parents=True)
    TRAIN.astype("<u2").tofile(folder / "train.bin")
    VAL.astype("<u2").tofile(folder / "val.bin")
    model = GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
    settings = config(max_steps=60, checkpoint_every=10, eval_every=20)
    write_spec(folder, WorkerSpec(
        model=model, train=settings, vocab_size=VOCAB, tokenizer_digest="tok",
        train_tokens=TokenFile(path=str(folder / "train.bin"), dtype="<u2"),
        val_tokens=TokenFile(path=str(folder / "val.bin"), dtype="<u2"),
    ))  # fmt: skip


def start_worker(folder) -> subprocess.Popen:
    command = [sys.executable, "-m", "lm.train_worker", str(folder)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # see one_thread
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip


def logged(folder) -> list[tuple[str, int, float]]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(m["key"], m["step"], m["value"]) for m in lines if m["key"] != "train/tokens_per_s"]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_and_rerun_ends_exactly_as_an_uninterrupted_one(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    worker_job(straight)
    worker_job(killed)
    uninterrupted = start_worker(straight)  # alongside: two processes, two cores
    victim = start_worker(killed)
    try:
        deadline = time.monotonic() + 300  # generous: only a broken run waits this long
        while not complete_checkpoints(killed):  # renamed into place, not still staging
            assert victim.poll() is None, victim.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL  # killed mid-run, not finished
        assert not (killed / "result.json").exists()
        rerun = start_worker(killed)
        outputs = [p.communicate(timeout=300)[1].decode() for p in (rerun, uninterrupted)]
    finally:
        for process in (victim, uninterrupted, locals().get("rerun")):
            if process is not None and process.poll() is None:
                process.kill()
    assert rerun.returncode == uninterrupted.returncode == 0, outputs
    assert "train: resumed from" in outputs[0]
    assert logged(killed) == logged(straight)
    final = "step-00000060/model.pt"
    weights = torch.load(killed / final, weights_only=True)
    for name, tensor in torch.load(straight / final, weights_only=True).items():
        assert torch.equal(tensor, weights[name]), name


def test_the_train_stage_key_follows_the_init_from_weights_not_just_their_path(tmp_path):
    from storage.artifacts import Descriptor
    from tasks.train import train_key

    shards = Descriptor("shards", "s", "s", "s1")
    tokenizer = Descriptor("tokenizer", "t", "t", "t1")
    source = tokenized_trainer(tmp_path, "t1")
    source.save("best")
    continued = config(init_from=str(tmp_path))
    first = train_key(shards, tokenizer, SMALL_GPT, continued)
    assert first != train_key(shards, tokenizer, SMALL_GPT, config())
    # The same weights at another path (a workspace moved): the same key, so a retrain after
    # a `mv` finds the continuation it trained (an absolute path in the key trained it again).
    moved = tmp_path.with_name(tmp_path.name + "-moved")
    shutil.copytree(tmp_path, moved)
    assert train_key(shards, tokenizer, SMALL_GPT, config(init_from=str(moved))) == first
    source.train_step()
    source.save("best")  # new weights at the same path
    assert train_key(shards, tokenizer, SMALL_GPT, continued) != first
    # `n_kv_heads` equal to `n_head` is multi-head attention, as None is: the same model.
    written_out = SMALL_GPT.model_copy(update={"n_kv_heads": SMALL_GPT.n_head})
    assert train_key(shards, tokenizer, written_out, config()) == train_key(
        shards, tokenizer, SMALL_GPT, config()
    )
    # A preset's name, or its switches written out: the same model.
    from lm.models.config import GPT_PRESETS, GPTConfig

    shape = {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}
    named = GPTConfig(preset="modern", **shape)
    spelled = GPTConfig(**shape, **GPT_PRESETS["modern"])
    assert named == spelled.model_copy(update={"preset": "modern"})
    assert train_key(shards, tokenizer, named, config()) == train_key(
        shards, tokenizer, spelled, config()
    )


def test_the_weight_average_follows_its_formula_in_and_after_its_warm_up():
    """The test below checks that the average is what is evaluated, published and resumed,
    not its value: a wrong lerp weight or a lost warm-up passed it."""
    from lm.weight_average import WeightAverage

    module = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(0.0)
    average = WeightAverage(module, decay=0.9)
    with torch.no_grad():
        module.weight.fill_(1.0)
    average.update(step=1000)  # past the warm-up: d = 0.9
    assert float(average.average[0]) == pytest.approx(0.1)
    average = WeightAverage(module, decay=0.999)  # starts from 1.0
    with torch.no_grad():
        module.weight.fill_(2.0)
    average.update(step=0)  # in the warm-up: d = (1 + 0) / (10 + 0)
    assert float(average.average[0]) == pytest.approx(1.0 * 0.1 + 2.0 * 0.9)


def test_only_the_newest_keep_checkpoints_step_checkpoints_remain(tmp_path):
    from lm.checkpoints import complete_checkpoints

    run = trainer(tmp_path, config(max_steps=10, checkpoint_every=2, eval_every=100,
                                   keep_checkpoints=2))  # fmt: skip
    run.train()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000008", "step-00000010"]


def test_the_val_windows_training_scores_do_not_follow_the_training_seed(tmp_path):
    # They were drawn with train.seed + 1: a seed sweep chose its best checkpoints, and scored
    # the "same windows" baseline, on other windows for each seed.
    samples = [trainer(tmp_path / str(seed), config(seed=seed)).val_sample for seed in (1, 2)]
    assert len(samples[0]) == len(samples[1]) > 0
    for (x1, y1), (x2, y2) in zip(*samples, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    batches = [trainer(tmp_path / f"t{seed}", config(seed=seed)).train_batches for seed in (1, 2)]
    cpu = torch.device("cpu")
    assert not torch.equal(batches[0].next(cpu)[0], batches[1].next(cpu)[0])  # training's do


def test_a_best_written_after_the_resumed_checkpoint_stays_the_model_the_best_loss_names(
    tmp_path, monkeypatch
):
    # The stopped run saved best/ at step 15 (val 1.0) after its step-10 checkpoint; a replay
    # not bit for bit (a GPU) measured step 15 at 2.6 and left best/ alone, so the run said its
    # best val loss was 2.5 (step 10) and published step 15's weights as best/.
    from lm.checkpoints import read_info

    scripted = {5: 3.0, 10: 2.5, 15: 1.0}
    monkeypatch.setattr(Trainer, "evaluate", lambda self, model=None: scripted[self.step])
    settings = config(max_steps=20, eval_every=5, checkpoint_every=10)
    trainer(tmp_path, settings).train(until_step=15)
    shutil.rmtree(tmp_path / "step-00000015")  # killed before its next checkpoint
    scripted.update({15: 2.6, 20: 2.55})  # the replay measures step 15 a little higher
    rerun = trainer(tmp_path, settings)
    assert rerun.resume_latest(tmp_path) == tmp_path / "step-00000010"
    assert rerun.train().best_val_loss == 1.0
    assert read_info(tmp_path / "best")["step"] == 15


def test_checkpoints_a_resume_skipped_do_not_take_the_places_of_those_it_writes(tmp_path):
    # A flipped bit in step 10, a rerun keeping one checkpoint every 3 steps: the resume fell
    # back to step 5, and its step 6 and step 5 were deleted to keep the damaged step 10 alone
    # (the next rerun started from scratch). A folder without DONE (a cleanup cut short) went.
    from lm.checkpoints import complete_checkpoints

    trainer(tmp_path, config(keep_checkpoints=2)).train(until_step=10)
    weights = tmp_path / "step-00000010" / "model.pt"
    flipped = bytearray(weights.read_bytes())
    flipped[-1] ^= 1
    weights.write_bytes(bytes(flipped))
    (tmp_path / "step-00000003").mkdir()  # no DONE: never usable
    rerun = trainer(tmp_path, config(keep_checkpoints=1, checkpoint_every=3))
    assert rerun.resume_latest(tmp_path) == tmp_path / "step-00000005"
    rerun.train(until_step=6)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step-"))
    assert left == ["step-00000006"] == [p.name for p in complete_checkpoints(tmp_path)]
    again = trainer(tmp_path, config(keep_checkpoints=1, checkpoint_every=3))
    assert again.resume_latest(tmp_path) == tmp_path / "step-00000006"


def test_weight_average_is_what_is_evaluated_and_published_and_resumes_exactly(tmp_path):
    from lm.checkpoints import WEIGHTS_FILE

    settings = config(max_steps=20, ema_decay=0.9)
    straight = trainer(tmp_path / "straight", settings)
    straight.train()
    final = torch.load(tmp_path / "straight" / "step-00000020" / WEIGHTS_FILE, weights_only=True)
    trained = {k: v.clone() for k, v in straight.module.state_dict().items()}
    assert not torch.equal(final["blocks.0.mlp.up.weight"], trained["blocks.0.mlp.up.weight"])
    with straight.average.swapped_in():  # the published weights are the average...
        averaged = straight.module.state_dict()
        assert all(torch.equal(final[k], averaged[k]) for k in final)
        assert straight.evaluate(straight.module) == straight.evaluate()  # ...and scored
    assert all(torch.equal(v, trained[k]) for k, v in straight.module.state_dict().items())

    first = trainer(tmp_path / "split", settings)
    first.train(until_step=10)
    resumed = trainer(tmp_path / "split", settings)
    resumed.resume(latest_checkpoint(tmp_path / "split"))
    resumed.train()
    for ours, theirs in zip(resumed.average.average, straight.average.average, strict=True):
        assert torch.equal(ours, theirs)
    assert all(torch.equal(v, trained[k]) for k, v in resumed.module.state_dict().items())


def test_a_checkpoint_without_an_average_cannot_resume_a_run_that_averages(tmp_path):
    trainer(tmp_path, config(max_steps=10)).train(until_step=5)
    averaging = trainer(tmp_path, config(max_steps=10, ema_decay=0.9))
    with pytest.raises(TrainingError, match=r"written without train\.ema_decay"):
        averaging.resume(latest_checkpoint(tmp_path))


def test_compiled_training_on_the_cpu_is_reproducible(tmp_path):
    """Inductor's CPU kernels add embedding gradients with atomic adds across threads, in an
    order that varies from run to run; the engine makes them fall back to ATen's deterministic
    scatter, so two compiled runs give the same losses bit for bit (before, two runs of the
    default preset parted at step 5 and ended 0.14 bits per byte apart; here, at step 1)."""
    model_config = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)
    settings = config(max_steps=30, micro_batch=32, global_batch=32, block_size=32,
                      compile=True, precision="fp32", eval_every=100)  # fmt: skip
    tokens = np.random.default_rng(0).integers(0, VOCAB, 20_000).astype("<u2")
    torch.set_num_threads(2)  # the race needs two threads (the fixture restores the count)
    try:
        runs = []
        for name in ("a", "b"):
            torch.manual_seed(settings.seed)
            model = build_model(model_config, VOCAB)
            runs.append(Trainer(model, settings, tokens, tokens, tmp_path / name))
        assert all(run.model is not run.module for run in runs)  # compiled, not a fallback
        first, second = (run.train().losses for run in runs)
    finally:
        torch.use_deterministic_algorithms(False)
    assert first == second


def test_a_device_this_machine_lacks_is_a_clear_error():
    from lm.train import pick_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(TrainingError, match=r'train\.device = "cuda", but this PyTorch sees no'):
        pick_device("cuda")


def test_init_from_untied_weights_into_a_tied_gpt_is_refused(tmp_path):
    # The untied checkpoint's output layer, loaded into the one shared tensor, overwrote its
    # trained token embedding, silently. Tied into untied starts both from the one tensor.
    from lm.models.config import GPTConfig
    from tasks.train import init_from_problem

    untied = GPTConfig(n_layer=1, n_embd=16, n_head=2, tie_embeddings=False)
    (tmp_path / "model.json").write_text(json.dumps(untied.model_dump(mode="json")))
    problem = init_from_problem(
        tmp_path / "best", untied.model_copy(update={"tie_embeddings": True})
    )
    assert (
        problem and "model.tie_embeddings False → True: its output layer would overwrite" in problem
    )
    assert init_from_problem(tmp_path / "best", untied) is None
    (tmp_path / "model.json").write_text(json.dumps(GPTConfig(n_layer=1).model_dump(mode="json")))
    assert init_from_problem(tmp_path / "best", GPTConfig(n_layer=1, tie_embeddings=False)) is None
    # A longer rotary base is how a context is lengthened on purpose: allowed.
    rope = GPTConfig(n_layer=1, pos="rope")
    (tmp_path / "model.json").write_text(json.dumps(rope.model_dump(mode="json")))
    assert init_from_problem(tmp_path / "best", rope.model_copy(update={"rope_base": 5e5})) is None


def test_init_from_under_another_switch_of_the_same_shapes_is_refused_naming_it(tmp_path):
    """Without biases a LayerNorm and an RMSNorm hold one gain each, of one shape, and sines
    and rope hold no tensor at all: the tensors fit, and only the switches say the weights
    would load into a model that reads them otherwise."""
    from tasks.train import init_from_problem

    plain = GPTConfig(n_layer=1, n_embd=16, n_head=2, bias=False)
    for switch, value in (("norm", "rmsnorm"), ("pos", "rope"), ("mlp", "swiglu")):
        theirs = plain.model_copy(update={"pos": "sinusoidal"}) if switch == "pos" else plain
        (tmp_path / "model.json").write_text(json.dumps(theirs.model_dump(mode="json")))
        problem = init_from_problem(tmp_path / "best", theirs.model_copy(update={switch: value}))
        assert problem and f"model.{switch} " in problem, (switch, problem)


def test_a_relative_init_from_is_inside_the_workspace_wherever_the_command_runs(
    tmp_path, monkeypatch
):
    """`train.init_from = "artifacts/train/<key>"`, as `lmforge runs` shows a model's path:
    read from the directory the command ran in, it was not found, or another folder's."""
    from storage.workspace import Workspace
    from tasks.train import init_checkpoint

    workspace = Workspace(tmp_path / "home")
    source = tokenized_trainer(workspace.root / "artifacts" / "train" / "m", "t1")
    source.save("best")
    monkeypatch.chdir(tmp_path)
    relative = config(init_from="artifacts/train/m")
    assert init_checkpoint(relative, workspace) == workspace.root / "artifacts/train/m/best"


def test_init_from_a_model_of_other_shapes_or_a_cut_checkpoint_is_refused_before_any_stage(
    tmp_path, monkeypatch
):
    # Both were found by the train stage, after the data stages had run: `init_checkpoint` is
    # what the command line asks before the flow starts.
    from lm.checkpoints import WEIGHTS_FILE
    from storage.workspace import Workspace
    from tasks.train import init_checkpoint

    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    workspace = Workspace.from_env()
    source = tokenized_trainer(tmp_path / "model", "t1")
    source.save("best")
    (tmp_path / "model" / "model.json").write_text(json.dumps(SMALL_GPT.model_dump(mode="json")))
    start = config(init_from=str(tmp_path / "model"))
    assert init_checkpoint(start, workspace, SMALL_GPT) == tmp_path / "model" / "best"
    untied = SMALL_GPT.model_copy(update={"tie_embeddings": False})
    assert init_checkpoint(start, workspace, untied) is not None  # tied → untied: as meant
    wider = SMALL_GPT.model_copy(update={"n_embd": 32})
    misfit = r"does not fit this model: token_embedding\.weight is \[64, 16\] in it, \[64, 32\]"
    with pytest.raises(TrainingError, match=misfit):
        init_checkpoint(start, workspace, wider)
    deeper = SMALL_GPT.model_copy(update={"n_layer": 2})
    with pytest.raises(TrainingError, match=r"does not fit this model: it has no blocks\.1\."):
        init_checkpoint(start, workspace, deeper)
    # With the model folder's tokenizer beside it, the shapes are the real ones, not those
    # of the made-up vocabulary the models are otherwise built at.
    (tmp_path / "model" / "tokenizer").mkdir()
    (tmp_path / "model" / "tokenizer" / "tokenizer_meta.json").write_text(
        json.dumps({"kind": "bpe", "vocab_size": 500})
    )
    real = r"token_embedding\.weight is \[500, 16\] in it, \[500, 32\] in this model$"
    with pytest.raises(TrainingError, match=real):
        init_checkpoint(start, workspace, wider)
    # Other kinds, by the tensors a strict load checks: a w2v model's vectors are a buffer when
    # frozen, a parameter when fine-tuned, under one name: training frozen, then fine-tuning,
    # loads (parameters alone were compared, and refused it).
    from lm.models.config import MLPConfig, W2VConfig
    from tasks.train import init_from_problem

    for theirs, ours, fits in (
        (W2VConfig(freeze=True), W2VConfig(freeze=False), True),
        (W2VConfig(freeze=False), W2VConfig(freeze=True), True),
        (W2VConfig(context=3), W2VConfig(context=5), False),
        (MLPConfig(norm="batchnorm"), MLPConfig(norm="batchnorm"), True),
        (MLPConfig(norm="batchnorm"), MLPConfig(norm="layernorm"), False),
    ):
        (tmp_path / "model.json").write_text(json.dumps(theirs.model_dump(mode="json")))
        problem = init_from_problem(tmp_path / "best", ours)
        assert (problem is None) == fits, (theirs, ours, problem)
    # The checkpoint folder named itself, its weights cut short: refused, not loaded later.
    weights = tmp_path / "model" / "best" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    cut = config(init_from=str(tmp_path / "model" / "best"))
    with pytest.raises(TrainingError, match=rf"{WEIGHTS_FILE} has 100 bytes, \d+ were written"):
        init_checkpoint(cut, workspace, SMALL_GPT)


def test_a_training_another_process_holds_is_waited_for_out_loud(tmp_path, caplog):
    """Two runs of one config: the second waited minutes on the first's training in silence,
    then recorded its stage as cached."""
    import fcntl
    import threading

    from tasks.train import _wait_for_the_training_lock

    path = tmp_path / "work.lock"
    logger = logging.getLogger("lm.train")  # Prefect's logging stops it before the root's
    logger.addHandler(caplog.handler)
    with open(path, "a+") as held, open(path, "a+") as wanted:
        fcntl.flock(held, fcntl.LOCK_EX)  # the other process's training
        with caplog.at_level(logging.INFO, logger="lm.train"):
            waiter = threading.Thread(target=_wait_for_the_training_lock, args=(wanted, "k" * 40))
            waiter.start()
            waiter.join(timeout=0.5)
            assert waiter.is_alive()  # still waiting, and said so
            assert "another process is training this model (kkkkkkkkkkkk)" in caplog.text
            fcntl.flock(held, fcntl.LOCK_UN)
            waiter.join(timeout=10)
        assert not waiter.is_alive() and "waited" in caplog.text
    logger.removeHandler(caplog.handler)


def test_a_work_folder_made_only_to_find_the_model_published_is_removed(tmp_path):
    """Two runs of one training: the second made the work folder after the first had
    published and removed its own, found the model, and left a folder of one lock file."""
    from tasks.train import remove_unused_work

    raced = tmp_path / "train-k.work"
    raced.mkdir()
    (raced / "lock").touch()
    remove_unused_work(raced)
    assert not raced.exists()
    interrupted = tmp_path / "train-j.work"
    (interrupted / "step-00000010").mkdir(parents=True)
    (interrupted / "lock").touch()
    remove_unused_work(interrupted)  # checkpoints of a training cut short: prune's to remove
    assert (interrupted / "step-00000010").is_dir()


def test_a_training_measures_its_steady_speed_after_its_first_step(tmp_path):
    """The first step of a training (allocations, start-up) is left out of its steady speed;
    the targets and seconds of the others are what an ablation compares."""
    result = trainer(tmp_path / "five", config(max_steps=5)).train()
    assert result.steady_tokens == 4 * 8 * 16  # steps 2 to 5 of global batch × context
    assert 0 < result.steady_seconds < result.step_seconds
    one = trainer(tmp_path / "one", config(max_steps=1)).train()
    assert one.steady_tokens is None and one.steady_seconds is None


def test_a_published_checkpoint_that_lost_its_checkpoint_json_is_damaged(tmp_path):
    """Read as a checkpoint older than `checkpoint.json`, it switched its checks off: weights
    with flipped bits then loaded silently (`lmforge generate`)."""
    from lm.checkpoints import damage

    for name in ("best", "step-00000010"):
        (tmp_path / name).mkdir()
        for file in ("model.pt", "DONE"):
            (tmp_path / name / file).write_bytes(b"x")
    manifest = {"files": {"best/checkpoint.json": 100, "best/model.pt": 1, "best/DONE": 1}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert damage(tmp_path / "best") == f"{INFO_FILE} is missing"
    # A checkpoint the manifest does not list (a work folder's, or one written before the
    # file existed) is trusted as before.
    assert damage(tmp_path / "step-00000010") is None
    (tmp_path / "manifest.json").unlink()
    assert damage(tmp_path / "best") is None


def test_the_wsd_decay_length_is_rounded_not_truncated():
    """10 steps × decay_fraction 0.15 is 1.5 (1.5000000000000002) decay steps: rounded, two,
    as the docstring's round(decay_fraction · max_steps) says; truncated it would be one."""
    settings = config(max_steps=10, warmup_steps=0, learning_rate=1.0, min_lr_ratio=0.1,
                      schedule="wsd", decay_fraction=0.15)  # fmt: skip
    rates = [learning_rate(step, settings) for step in range(10)]
    assert rates == pytest.approx([1.0] * 8 + [0.55, 0.1])


def test_a_val_loss_that_only_equals_the_one_to_beat_is_no_improvement(tmp_path):
    """Improving means beating the reference by more than `min_delta` (0 here): a plateau at
    exactly the same val loss (a frozen model, a learning rate at 0) runs out of patience."""
    run = trainer(tmp_path, config(max_steps=10, eval_every=1, checkpoint_every=100, patience=2))
    scores = iter([3.0, 3.0, 3.0, 3.0])
    run.evaluate = lambda model=None: next(scores)
    result = run.train()
    assert (result.stopped_early, result.step, result.best_val_loss) == (True, 3, 3.0)


def test_the_compiler_probe_checks_the_gradient_as_well_as_the_values(monkeypatch):
    """A compiled backward that runs but gives wrong numbers would train a wrong model
    silently: the probe compares its gradient with eager's, not only its forward."""
    import lm.compilation

    class WrongGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return lm.compilation._probe(x)

        @staticmethod
        def backward(ctx, gradient):
            return gradient * 0.5

    monkeypatch.setattr(lm.compilation.torch, "compile", lambda f, **options: WrongGradient.apply)
    problem = lm.compilation.compiler_works(torch.device("cpu"))
    assert problem == "a compiled probe gave different numbers from eager"


def test_compiling_on_the_cpu_alone_turns_on_deterministic_algorithms(monkeypatch):
    import lm.compilation

    compiled: list[dict] = []
    monkeypatch.setattr(lm.compilation, "compiler_works", lambda device: None)

    def compile_recording(model, **options):
        compiled.append(options)
        return "compiled"

    monkeypatch.setattr(lm.compilation.torch, "compile", compile_recording)
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())  # fmt: skip
    torch.use_deterministic_algorithms(False)  # an earlier compiled run's test turned them on
    try:
        model = torch.nn.Linear(2, 2)
        assert lm.compilation.compile_or_eager(model, torch.device("cuda")) == "compiled"
        assert not torch.are_deterministic_algorithms_enabled()
        assert lm.compilation.compile_or_eager(model, torch.device("cpu")) == "compiled"
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert compiled == [{"dynamic": False}] * 2  # every batch has the same shape
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_an_out_of_memory_while_compiling_is_not_the_compiler_s_failure():
    """Inductor allocates while it compiles (benchmarking its kernels): running out of memory
    there is the run's problem, which an eager retry would only meet again."""
    from lm.compilation import raised_by_the_compiler

    namespace: dict = {}
    exec(compile("def compile_fx(error):\n    raise error\n",
                 "/site-packages/torch/_inductor/compile_fx.py", "exec"), namespace)  # fmt: skip

    def raised(error):
        try:
            namespace["compile_fx"](error)
        except Exception as caught:
            return caught

    assert raised_by_the_compiler(raised(RuntimeError("an operator it cannot lower")))
    assert not raised_by_the_compiler(raised(torch.OutOfMemoryError("CUDA out of memory")))


def test_a_model_torch_compile_refuses_trains_eager_with_a_warning(monkeypatch, caplog):
    """The probe compiled; `torch.compile(model)` itself raising (a module Dynamo cannot wrap)
    leaves the model eager with a warning, as a failed probe does."""
    import lm.compilation

    def refuses(model, **options):
        raise TypeError("cannot wrap this module\nmore detail")

    monkeypatch.setattr(lm.compilation, "compiler_works", lambda device: None)
    monkeypatch.setattr(lm.compilation.torch, "compile", refuses)
    model = torch.nn.Linear(2, 2)
    with caplog.at_level("WARNING", logger="lm.compilation"):
        assert lm.compilation.compile_or_eager(model, torch.device("cuda")) is model
    assert "torch.compile unavailable on cuda (TypeError: cannot wrap this module)" in caplog.text
