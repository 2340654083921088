"""Evaluation and sampling settings (kept apart from the evaluator so configs load without
importing torch)."""

from __future__ import annotations

from pydantic import Field

from lm.strict_model import StrictModel


class SamplingConfig(StrictModel):
    """How samples are drawn: the same knobs `lmforge generate` takes."""

    max_new_tokens: int = Field(200, ge=1)
    temperature: float = Field(0.8, ge=0.0, description="0 means greedy")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    seed: int = 1337


class EvalConfig(StrictModel):
    """A fixed evaluation sample: the same windows for every model trained on the same shards,
    so numbers compare; the spread over batches says how much to trust a difference."""

    splits: list[str] = ["val", "test"]
    batches: int = Field(32, ge=1, description="windows are drawn in this many batches")
    batch_size: int = Field(16, ge=1)
    seed: int = 4242
    samples: int = Field(3, ge=0, description="samples stored with the run")
    prompts: list[str] = [""]
    sampling: SamplingConfig = SamplingConfig()
