"""The training engine: exact resume, schedules, early stopping, guards, and that every GPT
variant learns."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lm.models.config import GPTConfig, MLPConfig
from lm.models.registry import build_model
from lm.train import (
    TokenBatches,
    TrainConfig,
    Trainer,
    TrainingError,
    latest_checkpoint,
    learning_rate,
)

VOCAB = 20


def periodic_tokens(length: int, seed: int = 0) -> np.ndarray:
    """A learnable stream: a fixed random cycle of 7 tokens with a little noise."""
    rng = np.random.default_rng(seed)
    cycle = rng.integers(0, VOCAB, 7)
    tokens = np.tile(cycle, length // 7 + 1)[:length]
    noise = rng.random(length) < 0.05
    tokens[noise] = rng.integers(0, VOCAB, noise.sum())
    return tokens.astype(np.uint16)


TRAIN, VAL = periodic_tokens(4000, 0), periodic_tokens(1000, 0)[::-1].copy()
SMALL_GPT = GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16)


def config(**fields) -> TrainConfig:
    base = {"max_steps": 20, "micro_batch": 4, "global_batch": 8, "block_size": 16,
            "learning_rate": 3e-3, "warmup_steps": 2, "eval_every": 5, "eval_batches": 2,
            "checkpoint_every": 5, "device": "cpu"}  # fmt: skip
    return TrainConfig(**(base | fields))


def trainer(tmp_path, settings: TrainConfig, model_config=SMALL_GPT) -> Trainer:
    torch.manual_seed(settings.seed)
    return Trainer(build_model(model_config, VOCAB), settings, TRAIN, VAL, tmp_path)


def test_n_steps_equal_half_then_resume_then_half(tmp_path):
    straight = trainer(tmp_path / "straight", config(max_steps=20))
    straight_result = straight.train()

    first = trainer(tmp_path / "split", config(max_steps=20))
    first_losses = first.train(until_step=10).losses  # as if killed after step 10
    resumed = trainer(tmp_path / "split", config(max_steps=20))
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


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    accumulated = trainer(tmp_path / "a", config(micro_batch=2, global_batch=8, max_steps=1))
    whole = trainer(tmp_path / "b", config(micro_batch=8, global_batch=8, max_steps=1))
    # Same windows: both read 8 sequences from the same seeded generator.
    x_parts = [accumulated.train_batches.next(torch.device("cpu")) for _ in range(4)]
    whole_x = whole.train_batches.next(torch.device("cpu"))
    assert torch.equal(torch.cat([x for x, _ in x_parts]), whole_x[0])


def test_warmup_cosine_and_wsd_schedules():
    cosine = config(max_steps=100, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1)
    assert learning_rate(0, cosine) == pytest.approx(0.1)
    assert learning_rate(9, cosine) == pytest.approx(1.0)
    assert learning_rate(55, cosine) == pytest.approx(0.55)
    assert learning_rate(100, cosine) == pytest.approx(0.1)
    wsd = cosine.model_copy(update={"schedule": "wsd", "decay_fraction": 0.2})
    assert learning_rate(50, wsd) == 1.0 and learning_rate(79, wsd) == 1.0
    assert learning_rate(90, wsd) == pytest.approx(0.55)


def test_early_stopping_keeps_the_best_checkpoint(tmp_path):
    settings = config(max_steps=200, learning_rate=1e-6, eval_every=5, patience=2,
                      min_delta=10.0)  # fmt: skip
    result = trainer(tmp_path, settings).train()
    assert result.stopped_early and result.step == 15
    assert (tmp_path / "best" / "DONE").is_file()


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    run = trainer(tmp_path, config())
    with torch.no_grad():
        next(run.module.parameters()).fill_(math.nan)
    with pytest.raises(TrainingError, match="loss is nan at step 0"):
        run.train()


def test_half_written_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path, caplog):
    trainer(tmp_path, config(max_steps=20)).train(until_step=10)
    broken = tmp_path / "step-00000015"
    broken.mkdir()
    (broken / "model.pt").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "step-00000010"
    assert "step-00000015: incomplete checkpoint" in caplog.text


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
