"""Which tokenizer makes the better language model: train the same small model on each
tokenizer's tokens and score it in bits per byte on the val split.

Bytes per token says how much a tokenizer compresses, not how well a model predicts the text it
produces; only a model trained on its tokens can tell. Loss per token does not compare across
tokenizers (a token stands for different amounts of text), bits per byte does. So each
tokenizer gets the same model config, the same training settings and seed, and is scored on
the same val documents by `lm.evaluate` (its byte table handles SentencePiece's dummy-prefix
space and byte-fallback pieces). This is `lmforge tokenizers compare --train-steps N`.

Kept apart from `lm/tokenizer_stats.py`: that module is part of the tokenizer stage's cache
key, and this one imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm.eval_config import EvalConfig
from lm.models.config import ModelConfig
from lm.tokenizer import Tokenizer
from lm.train_config import TrainConfig


@dataclass(frozen=True)
class TrainedScore:
    """A model trained on one tokenizer's tokens, scored on val."""

    bpb: float
    bpb_se: float  # its standard error, from the spread over batches
    bytes: int  # the val text scored: the same for every tokenizer
    loss: float
    baseline_bpb: float  # the count bigram fitted on the same train tokens, same windows
    parameters: int
    steps: int
    train_tokens: int
    seconds: float


def encode_documents(tokenizer: Tokenizer, batches: Iterable[list[str]]) -> np.ndarray:
    """Every document's ids followed by the end-of-text id, as the encode stage lays out a
    shard."""
    parts: list[np.ndarray] = []
    for batch in batches:
        for ids in tokenizer.encode_batch(batch):
            parts.append(np.asarray([*ids, tokenizer.eot_id], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def train_and_score(
    tokenizer: Tokenizer,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    model: ModelConfig,
    train: TrainConfig,
    evaluation: EvalConfig,
    work: Path,
) -> TrainedScore:
    """Train `model` for `train.max_steps` on `train_tokens` (checkpoints under `work`) and
    score the weights the pipeline would publish (`best/`) and the count-bigram baseline (at
    `evaluation.baseline_smoothing`, else the tuned add-k, as the evaluate stage fits it) on
    the val split, as `evaluation.scoring` says: by default every val token once, so each
    tokenizer is scored on the same text."""
    from lm.evaluate import count_bigram_baseline, evaluate
    from lm.models.registry import build_model
    from lm.train import Trainer

    started = time.perf_counter()
    if model.kind == "gpt":  # a transformer trains on its own context length
        train = train.model_copy(update={"block_size": model.block_size})
    import torch

    torch.manual_seed(train.seed)  # the same initial weights for every tokenizer, every time
    network = build_model(model, tokenizer.vocab_size, eot_id=tokenizer.eot_id)
    trainer = Trainer(network, train, train_tokens, val_tokens, work, work / "metrics.jsonl",
                      eot_id=tokenizer.eot_id)  # fmt: skip
    result = trainer.train()
    trained = trainer.module.eval()
    best = work / "best" / "model.pt"  # the weights averaged, if train.ema_decay, best on val
    trained.load_state_dict(torch.load(best, map_location=trainer.device, weights_only=True))
    documents = train.samples == "documents"
    score = evaluate(trained, val_tokens, tokenizer, evaluation, "val", train.block_size,
                     documents)  # fmt: skip
    baseline = count_bigram_baseline(train_tokens, tokenizer.vocab_size,
                                     evaluation.baseline_smoothing).to(trainer.device)  # fmt: skip
    baseline_score = evaluate(baseline, val_tokens, tokenizer, evaluation, "val",
                              train.block_size, documents)  # fmt: skip
    return TrainedScore(
        bpb=score.bpb,
        bpb_se=score.bpb_se,
        bytes=score.bytes,
        loss=score.loss,
        baseline_bpb=baseline_score.bpb,
        parameters=trainer.module.num_params(),
        steps=result.step,
        train_tokens=result.tokens_seen,  # the targets trained on, padding not counted
        seconds=time.perf_counter() - started,
    )


def comparison_train_settings(train: TrainConfig, steps: int) -> TrainConfig:
    """`train` cut to `steps` optimizer steps, evaluated and checkpointed once at the end, with
    warmup at most a fifth of the run (so a short comparison still reaches its peak rate)."""
    return TrainConfig.model_validate(
        train.model_dump()
        | {
            "max_steps": steps,
            "eval_every": steps,
            "checkpoint_every": steps,
            "warmup_steps": min(train.warmup_steps, steps // 5),
            "patience": 0,
            "nproc_per_node": 1,
            "init_from": None,
        }
    )
