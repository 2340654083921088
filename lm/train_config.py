"""Training settings (kept apart from the engine so configs load without importing torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lm.strict_model import StrictModel

# A training seed's largest value: torch's CPU generator reads the low 32 bits of a seed, so a
# larger one trained the same model as a smaller one under another cache key. The offsets each
# rank and step adds (`seed + 1_000_003·rank + step`) may pass it: torch takes seeds to 2**64.
TRAIN_SEED_MAX = 2**32 - 1

# Settings that never change the trained model: how often checkpoints are written and how
# many are kept (resume is exact), and where and how long the nodes of a multi-node training
# meet. Changing them, even mid-run, neither retrains nor loses an interrupted run's checkpoints
# (they are left out of the train stage's cache key, `tasks.train.train_settings_digest`).
BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "master_addr", "master_port",
               "join_timeout_s")  # fmt: skip


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why. Defined here, beside the settings, because
    torch-free code (checkpoint folders) raises it too."""


class TrainConfig(StrictModel):
    max_steps: int = Field(200, ge=1)
    micro_batch: int = Field(12, ge=1, description="sequences per forward/backward pass")
    global_batch: int = Field(
        12, ge=1, description="sequences per optimizer step, summed over every process"
    )
    block_size: int = Field(64, ge=1)
    # How a shard is cut into rows (see lm/batches.py): "windows" of the flat token stream
    # (nanoGPT), or "documents", one per row from its start mark, padded (makemore: for
    # corpora of short documents, such as names, scored one document at a time).
    samples: Literal["windows", "documents"] = "windows"
    learning_rate: float = Field(1e-3, gt=0.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(20, ge=0)
    decay_fraction: float = Field(0.2, gt=0.0, le=1.0, description="WSD: final decay share")
    weight_decay: float = Field(0.1, ge=0.0)
    # AdamW's betas: torch refuses one outside [0, 1), but only once training starts.
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0, description="0 turns clipping off")
    # Evaluate, keep and publish an exponential moving average of the weights with this decay
    # (0.999 averages over about the last 1000 steps); 0 turns it off. See lm/weight_average.py.
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    eval_every: int = Field(50, ge=1)
    eval_batches: int = Field(
        8, ge=1, description="val batches of global_batch rows that each evaluation scores"
    )
    patience: int = Field(0, ge=0, description="evaluations without improvement; 0 = never stop")
    min_delta: float = Field(0.0, ge=0.0)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # "auto": bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), fp32
    # elsewhere: emulated bf16 is far slower than fp32 (see lm/cpu_features.py).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # "auto": compile on CUDA; on a CPU with native bf16 when the planned training repays the
    # compile (lm.train.CPU_COMPILE_MIN_FLOPS); eager elsewhere. Compiled bf16 trains nanoGPT's
    # CPU shape at about 1.6x eager fp32 (bench/bench_train.py).
    compile: bool | Literal["auto"] = "auto"
    # At most 2**32 - 1 (TRAIN_SEED_MAX): a larger seed repeated a smaller one's training.
    seed: int = Field(1337, ge=0, le=TRAIN_SEED_MAX)
    # Processes on this machine; above 1 the train stage runs `torchrun` with that many ranks.
    nproc_per_node: int = Field(1, ge=1)
    # How the ranks share the model: "ddp" replicates it, "fsdp" shards parameters, gradients
    # and optimizer state across ranks (for a model too large for one GPU).
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # Machines training together, each running nproc_per_node processes. Above 1, the machine
    # that runs the flow is node 0: it hosts the rendezvous at master_addr:master_port (its
    # address as the others reach it) and waits up to join_timeout_s for every other machine
    # to run `lmforge train-join --node-rank K` on the same workspace (lm/distributed.py).
    nnodes: int = Field(1, ge=1)
    master_addr: str | None = None
    master_port: int = Field(29500, ge=1, le=65535)
    join_timeout_s: int = Field(600, ge=1)
    # A checkpoint folder, or a trained model folder holding `best/` or `final/`, whose weights
    # start this run (continued training on new data with the same tokenizer); the optimizer,
    # schedule and step start afresh. Relative paths are relative to the workspace.
    init_from: str | None = None

    @model_validator(mode="after")
    def _accumulation_divides(self) -> TrainConfig:
        per_step = self.micro_batch * self.world_size
        if self.global_batch % per_step:
            nodes = f" × nnodes ({self.nnodes})" if self.nnodes > 1 else ""
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a multiple of micro_batch "
                f"({self.micro_batch}) × nproc_per_node ({self.nproc_per_node}){nodes} "
                f"= {per_step}"
            )
        return self

    @field_validator("master_addr")
    @classmethod
    def _address_without_spaces(cls, address: str | None) -> str | None:
        return address.strip() if address is not None else None

    @model_validator(mode="after")
    def _nodes_have_a_meeting_point(self) -> TrainConfig:
        if self.nnodes > 1 and not self.master_addr:
            raise ValueError(
                f"nnodes = {self.nnodes} needs master_addr: this machine's address (host name "
                "or IP) as the other nodes reach it, where they meet at master_port"
            )
        return self

    @model_validator(mode="after")
    def _average_of_whole_weights(self) -> TrainConfig:
        # Checked here, before any stage runs, not first by the ranks after the data stages.
        if self.ema_decay and self.parallel == "fsdp" and self.world_size > 1:
            raise ValueError(
                'ema_decay averages whole weights, which FSDP shards: use parallel = "ddp", '
                "or ema_decay = 0"
            )
        return self

    @property
    def world_size(self) -> int:
        """Training processes over every node."""
        return self.nproc_per_node * self.nnodes

    def accumulation_steps_for(self, world_size: int) -> int:
        """Micro-batches each of `world_size` processes adds up per optimizer step."""
        per_step = self.micro_batch * world_size
        if self.global_batch % per_step:
            raise TrainingError(
                f"train.global_batch ({self.global_batch}) must be a multiple of "
                f"train.micro_batch ({self.micro_batch}) × {world_size} processes = {per_step}"
            )
        return self.global_batch // per_step

    @property
    def accumulation_steps(self) -> int:
        return self.accumulation_steps_for(self.world_size)
