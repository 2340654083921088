"""Evaluation and sampling settings (kept apart from the evaluator so configs load without
importing torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lm.strict_model import StrictModel

# torch's CPU generator (a Mersenne Twister) reads only the low 32 bits of a seed: 7 and 2**32 + 7
# drew the same samples, and -1 those of 2**32 - 1. Seeds are what it reads, each its own stream
# (the `seed + i` of chat lines past the top wraps, which torch.Generator takes).
SEED_MIN, SEED_MAX = 0, 2**32 - 1


class SamplingConfig(StrictModel):
    """How samples are drawn: the same knobs `lmforge generate` takes. Infinite and NaN knobs are
    refused: an infinite temperature samples uniform noise, not the model, and NaN slips past
    every bound."""

    max_new_tokens: int = Field(200, ge=1)
    temperature: float = Field(0.8, ge=0.0, allow_inf_nan=False, description="0 means greedy")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    repetition_penalty: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    seed: int = Field(1337, ge=SEED_MIN, le=SEED_MAX)


class EvalConfig(StrictModel):
    """What the evaluate stage scores (`lm.evaluate`): by default every token of each split
    exactly once, so models, and tokenizers, compare on the same text."""

    splits: list[Literal["train", "val", "test"]] = ["val", "test"]
    # "whole": every token once, the split as one stream; "documents": every token once, each
    # document alone from its start mark; "auto": "documents" for a model trained on documents
    # (train.samples), else "whole"; "sample": `batches` × `batch_size` windows drawn with
    # `seed`, for a split too large to score whole.
    scoring: Literal["auto", "whole", "documents", "sample"] = "auto"
    batches: int = Field(32, ge=1, description='scoring = "sample": windows in this many batches')
    batch_size: int = Field(16, ge=1, description="windows per forward pass")
    seed: int = Field(
        4242, ge=SEED_MIN, le=SEED_MAX, description='scoring = "sample": draws the windows'
    )
    # Window length in tokens; None: the length the model was trained on. Set it to score the
    # models of a ladder on identical windows (at most the smallest GPT context).
    window: int | None = Field(None, ge=1)
    # Add-k of the count-bigram baseline; None: the k that predicts held-out train text best.
    baseline_smoothing: float | None = Field(None, gt=0.0)
    samples: int = Field(3, ge=0, description="samples stored with the run")
    prompts: list[str] = Field([""], min_length=1, description="sample i uses prompt i % len")
    sampling: SamplingConfig = SamplingConfig()
    # Where and how the model is scored, as in training: "auto" is CUDA > MPS > CPU, and bf16
    # autocast on CUDA only (the numbers then differ from fp32 in the third decimal).
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
