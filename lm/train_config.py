"""Training settings (kept apart from the engine so configs load without importing torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lm.strict_model import StrictModel


class TrainConfig(StrictModel):
    max_steps: int = Field(200, ge=1)
    micro_batch: int = Field(12, ge=1, description="sequences per forward/backward pass")
    global_batch: int = Field(12, ge=1, description="sequences per optimizer step")
    block_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(20, ge=0)
    decay_fraction: float = Field(0.2, gt=0.0, le=1.0, description="WSD: final decay share")
    weight_decay: float = Field(0.1, ge=0.0)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = Field(1.0, ge=0.0, description="0 turns clipping off")
    eval_every: int = Field(50, ge=1)
    eval_batches: int = Field(8, ge=1)
    patience: int = Field(0, ge=0, description="evaluations without improvement; 0 = never stop")
    min_delta: float = Field(0.0, ge=0.0)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    seed: int = 1337

    @model_validator(mode="after")
    def _accumulation_divides(self) -> TrainConfig:
        if self.global_batch % self.micro_batch:
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a multiple of micro_batch "
                f"({self.micro_batch})"
            )
        return self

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch // self.micro_batch
