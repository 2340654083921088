"""The CUDA paths of the models and the training engine, run where a GPU is (skipped elsewhere:
CI and the development machine have none). `bench/gpu_check.sh` runs this file on a GPU machine
with `--noconftest` (it needs no Prefect server), then measures GPT-2 124M throughput.

What only a GPU exercises: the automatic device, bf16 autocast, TF32, fused AdamW and
`torch.compile` picked by themselves; the fused SDPA kernels (flash, memory-efficient) keeping
causality and agreeing with the CPU; the CUDA RNG saved and restored on resume (dropout masks);
checkpoints written on the GPU that the CPU resumes; and seeded generation giving the same text
on either device.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lm.eval_config import SamplingConfig
from lm.generate import generate_ids
from lm.models.config import GPTConfig, gpt_preset
from lm.models.registry import build_model
from lm.train import TrainConfig, Trainer, latest_checkpoint
from tests.helpers import periodic_tokens

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

VOCAB = 20
GPU = torch.device("cuda")
TRAIN, VAL = periodic_tokens(4000, VOCAB), periodic_tokens(1000, VOCAB)[::-1].copy()
SMALL_GPT = GPTConfig(block_size=16, n_layer=2, n_head=4, n_kv_heads=2, n_embd=32,
                      pos="rope", mlp="swiglu", norm="rmsnorm", bias=False)  # fmt: skip
VARIANTS = [
    gpt_preset("atinuke", block_size=32, n_layer=2, n_head=4, n_embd=32),
    gpt_preset("modern", block_size=32, n_layer=2, n_head=4, n_kv_heads=2, n_embd=32),
    GPTConfig(block_size=32, n_layer=2, n_head=4, n_kv_heads=1, n_embd=32, pos="learned"),
]


def variant_id(config: GPTConfig) -> str:
    return f"{config.pos}-{config.mlp}-{config.norm}-kv{config.kv_heads}"


@contextlib.contextmanager
def exact_fp32():
    """TF32 off (the Trainer turns it on): fp32 products then agree with the CPU's to ~1e-6."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def config(**fields) -> TrainConfig:
    base = {"max_steps": 20, "micro_batch": 8, "global_batch": 16, "block_size": 16,
            "learning_rate": 3e-3, "warmup_steps": 2, "eval_every": 5, "eval_batches": 2,
            "checkpoint_every": 5, "device": "cuda", "precision": "fp32",
            "compile": False}  # fmt: skip
    return TrainConfig(**(base | fields))


def trainer(out: Path, settings: TrainConfig, model_config: GPTConfig = SMALL_GPT) -> Trainer:
    torch.manual_seed(settings.seed)
    return Trainer(build_model(model_config, VOCAB), settings, TRAIN, VAL, out)


def test_auto_settings_pick_the_gpu_bf16_tf32_fused_adamw_and_compile_and_log_mfu(tmp_path):
    settings = config(device="auto", precision="auto", compile="auto", max_steps=60,
                      eval_every=30, checkpoint_every=30)  # fmt: skip
    run = trainer(tmp_path, settings)
    assert run.device.type == "cuda"
    assert run.autocast == torch.bfloat16
    assert torch.backends.cuda.matmul.allow_tf32
    assert all(group["fused"] for group in run.optimizer.param_groups)
    assert run.model is not run.module  # compiled: a fallback to eager fails here
    result = run.train()
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.5
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    if run.peak_flops:  # a GPU whose bf16 peak is known (H100, H200, A100...)
        mfu = [line["value"] for line in lines if line["key"] == "train/mfu"]
        assert mfu and all(0 < value < 1 for value in mfu)


@pytest.mark.parametrize("model_config", VARIANTS, ids=variant_id)
def test_gpu_logits_match_the_cpu_in_fp32(model_config):
    torch.manual_seed(0)
    model = build_model(model_config, VOCAB).eval()
    idx = torch.randint(0, VOCAB, (3, 32))
    with torch.no_grad(), exact_fp32():
        on_cpu, _ = model(idx)
        on_gpu, _ = model.to(GPU)(idx.to(GPU))
    assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-4)


@pytest.mark.parametrize("model_config", VARIANTS, ids=variant_id)
def test_changing_a_token_never_changes_earlier_logits_in_bf16_on_the_gpu(model_config):
    """bf16 sends SDPA to the flash kernel; a masked key contributes exp(-inf) = 0 exactly, so
    earlier rows are bit-for-bit the same."""
    torch.manual_seed(0)
    model = build_model(model_config, VOCAB).to(GPU).eval()
    idx = torch.randint(0, VOCAB, (2, 32), device=GPU)
    changed = idx.clone()
    changed[:, 20] = (changed[:, 20] + 1) % VOCAB
    with torch.no_grad(), torch.autocast(GPU.type, dtype=torch.bfloat16):
        before, _ = model(idx)
        after, _ = model(changed)
    assert torch.equal(before[:, :20], after[:, :20])
    assert not torch.allclose(before[:, 20:].float(), after[:, 20:].float(), atol=1e-3)


@pytest.mark.parametrize("model_config", VARIANTS, ids=variant_id)
def test_kv_cache_on_the_gpu_gives_the_logits_of_full_recomputation(model_config):
    torch.manual_seed(1)
    model = build_model(model_config, VOCAB).to(GPU).eval()
    idx = torch.randint(0, VOCAB, (2, 30), device=GPU)
    with torch.no_grad(), exact_fp32():
        full, _ = model(idx)
        cache = model.new_cache(batch=2)
        prefill, _ = model(idx[:, :9], cache=cache)
        steps = [prefill] + [model(idx[:, t : t + 1], cache=cache)[0] for t in range(9, 30)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-4)


def test_seeded_sampling_gives_the_same_text_on_the_gpu_as_on_the_cpu():
    torch.manual_seed(2)
    model = build_model(VARIANTS[1], VOCAB).eval()
    sampling = SamplingConfig(max_new_tokens=60, temperature=1.0, seed=11)
    with exact_fp32():
        on_cpu = list(generate_ids(model, [0, 3, 5], sampling, eot_id=VOCAB))
        on_gpu = list(generate_ids(model.to(GPU), [0, 3, 5], sampling, eot_id=VOCAB))
    assert len(on_cpu) == 60  # past the 32-token context: the window slides and recomputes
    assert on_gpu == on_cpu


def test_resume_on_the_gpu_restores_the_dropout_rng_and_follows_the_uninterrupted_run(tmp_path):
    """Dropout draws its masks from the CUDA generator: a resume that did not restore it would
    train on other masks (on the CPU, with its generator reseeded instead of restored, the
    losses part by up to 0.75%, 15x the tolerance)."""
    dropout = SMALL_GPT.model_copy(update={"dropout": 0.5})
    straight = trainer(tmp_path / "straight", config(), dropout).train()
    trainer(tmp_path / "split", config(), dropout).train(until_step=10)
    resumed = trainer(tmp_path / "split", config(), dropout)
    resumed.resume(latest_checkpoint(tmp_path / "split"))
    second = resumed.train().losses
    # Atomic adds in some GPU backward kernels make sums order-dependent: near, not equal.
    assert second == pytest.approx(straight.losses[10:], rel=5e-4)


def test_a_checkpoint_written_on_the_gpu_resumes_on_the_cpu(tmp_path):
    on_gpu = trainer(tmp_path, config(precision="bf16"))
    on_gpu.train(until_step=10)
    on_cpu = trainer(tmp_path, config(precision="bf16", device="cpu"))
    on_cpu.resume(latest_checkpoint(tmp_path))
    assert on_cpu.step == 10
    for name, tensor in on_gpu.module.state_dict().items():
        assert torch.equal(on_cpu.module.state_dict()[name], tensor.cpu()), name
    result = on_cpu.train()
    assert result.step == 20 and all(np.isfinite(result.losses))
