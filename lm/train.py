"""The training engine: one loop for every gradient-trained model of the ladder.

What it does, after nanoGPT's train.py and torchtitan's small honest pieces: picks the device
(cuda > mps > cpu), AdamW with decay/no-decay groups (fused), warmup then cosine or WSD
learning rate, gradient accumulation (micro-batch and global batch as separate knobs), gradient
clipping, bf16 autocast and `torch.compile` (each "auto" by default: on for CUDA; on a CPU, bf16
where it is native and compile when the run is long enough to repay it), evaluation on a fixed
val sample every N steps, early stopping with patience and minimum delta, a NaN/inf guard,
metrics as JSON lines, and a progress line with tokens/s, MFU (on GPUs of known peak) and ETA.
In one process with fused AdamW on a GPU the loop runs a step ahead (`Trainer.run_steps`): the GPU
gets the next step queued before the host reads the last one's loss.

Under `torchrun` (see `lm.distributed`) the same loop runs on every rank: the model is wrapped in
DDP or sharded with FSDP2, each rank draws its windows from its own contiguous share of the
training tokens, gradients are reduced once per optimizer step, losses and evaluations are
averaged over ranks (so every rank takes the same early-stopping decision), and rank 0 alone
writes checkpoints, metrics and logs.

Checkpoints are directories written to a staging name and renamed, with `DONE` written last
(after llm.c); they hold the weights (full, of the uncompiled module), optimizer state, RNG
states, every rank's data cursor, the step, the tokenizer digest and the metrics so far, so a
resumed run continues exactly: N steps equal N/2 + resume + N/2 on CPU. A checkpoint that will
not load is skipped for the previous one. `init_from` starts a run from another run's weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lm.allocator import keep_freed_memory
from lm.atomic_files import staging_path, write_text_atomically
from lm.batches import (
    RANK_SEED_STRIDE,
    TokenBatches,
    make_batches,
    scored_targets,
    to_device,
)
from lm.checkpoint_fit import tensor_misfit
from lm.checkpoints import (
    DONE_MARKER,
    INFO_FILE,
    WEIGHTS_FILE,
    damage,
    digest_mismatch,
    file_sha256,
    latest_checkpoint,
    other_tokenizer,
    read_info,
    recover_staging,
    replace_folder,
    resolve_init_from,
    step_checkpoints,
    step_of,
    usable_checkpoints,
)
from lm.clock import utc_now
from lm.compilation import compile_or_eager, describe, raised_by_the_compiler
from lm.cpu_features import cpu_has_native_bf16
from lm.distributed import (
    Ranks,
    all_gather,
    all_reduce_sum,
    full_model_state,
    full_optimizer_state,
    gradient_sync,
    init_process_group,
    load_model_state,
    load_optimizer_state,
    wrap_model,
)
from lm.models.base import LanguageModel
from lm.models.config import window_history
from lm.progress import format_seconds
from lm.train_config import TrainConfig, TrainingError
from lm.weight_average import WeightAverage

__all__ = [
    "TokenBatches",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "latest_checkpoint",
    "learning_rate",
    "pick_device",
]

logger = logging.getLogger("lm.train")
CPU = torch.device("cpu")
CHECKPOINT_FILES = (WEIGHTS_FILE, "optimizer.pt", "state.pt")
# Dense bf16 tensor-core peaks (vendor datasheets, FLOP/s), matched as whole words against the
# CUDA device name, longest name first: MFU is measured against these.
BF16_PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H200 NVL": 835e12,
    "H200": 989e12,
    "H800 PCIe": 756e12,
    "H800": 989e12,
    "H20": 148e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
}


class CheckpointUnreadable(TrainingError):
    """A complete checkpoint whose files will not load (truncated or corrupt)."""


class CheckpointUnwritable(TrainingError):
    """A checkpoint that could not be written: the disk is full or the folder not writable.
    Its cause is the original error (torch reports a full disk as a `RuntimeError` such as
    `[enforce fail at inline_container.cc:672] . unexpected pos 150592 vs 150484`)."""


def pick_device(
    requested: str = "auto", ranks: Ranks | None = None, key: str = "train.device"
) -> torch.device:
    """cuda > mps > cpu; under torchrun on CUDA, the GPU of this process's local rank. A device
    this machine lacks is a `TrainingError` naming `key`, the setting that asked for it."""
    kind = requested
    if kind == "auto":
        if torch.cuda.is_available():
            kind = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            kind = "mps"
        else:
            kind = "cpu"
    elif kind == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            f'{key} = "cuda", but this PyTorch sees no CUDA GPU: set {key} = "auto" or "cpu"'
        )
    elif kind == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise TrainingError(
            f'{key} = "mps", but this machine has no MPS device: set {key} = "auto" or "cpu"'
        )
    if kind == "cuda" and ranks is not None and ranks.distributed:
        return torch.device("cuda", ranks.local_rank)
    return torch.device(kind)


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast when asked, or by default on CUDA and on CPUs with native bf16 (see
    `lm.cpu_features`); None means fp32."""
    if config.precision == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else None
    return torch.bfloat16 if config.precision == "bf16" else None


def not_finite_advice(config: TrainConfig, autocast: torch.dtype | None) -> str:
    """What to do about a loss or gradient that is not finite, from the settings it came
    under (not a setting already in place). Not "rerun": resuming is exact, so a rerun with the
    same settings meets the same NaN at the same step."""
    remedies = [f"lower train.learning_rate (now {config.learning_rate:g})"]
    if config.grad_clip > 0:
        remedies.append(f"lower train.grad_clip (now {config.grad_clip:g})")
    else:
        remedies.append("turn gradient clipping on (train.grad_clip = 1.0; now 0, off)")
    if autocast is not None:
        remedies.append('set train.precision = "fp32"')
    return (f"{', or '.join(remedies)} (a rerun with the same settings resumes exactly and "
            "meets it again)")  # fmt: skip


# Training FLOPs from which `compile = "auto"` compiles on a CPU. Compiling nanoGPT's CPU shape
# costs about 15 s on 2 cores and then saves about a quarter of each bf16 step
# (bench/bench_train.py), so it pays once eager bf16 would take a minute or more: about 1e13
# FLOPs at the ~150 GFLOP/s two cores reach. Planned work, not a timing, decides, so a resumed
# run decides as the uninterrupted one did and the same config gives the same numbers.
CPU_COMPILE_MIN_FLOPS = 1e13


def planned_flops(config: TrainConfig, flops_per_token: float) -> float:
    """The FLOPs `config.max_steps` optimizer steps will take."""
    return flops_per_token * config.max_steps * config.global_batch * config.block_size


# Weight of the newest report's pace in the ETA's (tqdm's default smoothing).
ETA_SMOOTHING = 0.3


def compile_wanted(
    config: TrainConfig, device: torch.device, flops_per_token: float | None = None
) -> bool:
    """`compile = "auto"` compiles on CUDA, and on a CPU with native bf16 when the planned
    training is long enough to repay the compile (`CPU_COMPILE_MIN_FLOPS`); without native bf16
    compiling bought only about 1.1x (bench/bench_train.py)."""
    if config.compile != "auto":
        return bool(config.compile)
    if device.type == "cuda":
        return True
    if device.type != "cpu" or flops_per_token is None or autocast_dtype(config, device) is None:
        return False
    return planned_flops(config, flops_per_token) >= CPU_COMPILE_MIN_FLOPS


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio`, or WSD (warmup, stable, then a
    linear decay over the last `decay_fraction` of the steps, at least one, none of them
    warmup's), or constant. Steps run from 0 to `max_steps - 1`, and the decay ends on the last
    one: the final step trains at the floor."""
    peak, floor = config.learning_rate, config.learning_rate * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return peak
    last = config.max_steps - 1
    if config.schedule == "wsd":
        decaying = max(round(config.max_steps * config.decay_fraction), 1)
        first = max(config.max_steps - decaying, config.warmup_steps)  # the first below peak
        if step < first:
            return peak
        progress = (step - first + 1) / (config.max_steps - first)
        return peak + (floor - peak) * progress
    # From the peak on the first step after warmup to the floor on the last (which is also
    # the first when warmup leaves one step).
    after_warmup = last - config.warmup_steps
    progress = (step - config.warmup_steps) / after_warmup if after_warmup > 0 else 1.0
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device):
    """AdamW; matrices (weights of linear layers and embeddings) decay, biases and norm gains do
    not: decaying a gain or a bias towards zero only fights the model."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    unique = list({id(p): p for p in parameters}.values())  # tied weights once
    decay = [p for p in unique if p.dim() >= 2]
    no_decay = [p for p in unique if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # One fused kernel for the whole update instead of a dozen ops per tensor: on CUDA, and on
    # the CPU too (bench/bench_train.py: ~1.1x the foreach update on nanoGPT's CPU shape).
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=config.learning_rate, betas=(config.beta1, config.beta2), fused=fused
    )


def flops_per_token(module: torch.nn.Module, block_size: int) -> float:
    """Training FLOPs per token (nanoGPT's `estimate_mfu`, PaLM appendix B): 6 per parameter
    (embedding tables excluded: learned positions, an untied token embedding, the MLP's table
    are lookups, not products; a tied one is the output layer too) plus 12·layers·width·context
    for the attention scores of a transformer."""
    parameters = sum(p.numel() for p in module.parameters())
    if isinstance(module, LanguageModel):
        parameters -= module.lookup_params()
    config = getattr(module, "config", None)
    attention = 0.0
    if config is not None and getattr(config, "kind", None) == "gpt":
        attention = 12.0 * config.n_layer * config.n_embd * config.block_size
    return 6.0 * parameters + attention


def peak_flops_of(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named like `torch.cuda.get_device_name()`, if known."""
    for model in sorted(BF16_PEAK_FLOPS, key=len, reverse=True):
        # Whole words: an "L40" is not an "L4", nor an "A1000" an "A100".
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(model)}(?![A-Za-z0-9])", device_name):
            return BF16_PEAK_FLOPS[model]
    return None


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak: known GPUs only (MFU is not reported elsewhere)."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


# The val windows training scores: those the default seed (1337) drew when they followed it.
VAL_SAMPLE_SEED = 1338


def fixed_val_sample(
    val_tokens: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    eot_id: int | None = None,
    history: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The val rows every evaluation scores (cut as `config.samples` cuts the training rows):
    the same at every evaluation, so curves compare, and the same for a baseline scored beside
    the model. They are `eval_batches` draws of `global_batch` rows, scored in pieces of
    `micro_batch` rows: the sample, and so early stopping and the `best` checkpoint, do not
    depend on how the global batch is cut into micro-batches and processes, which only say how
    much is computed at once. `history`: the model's (`window_history`), for a baseline too.
    Drawn with one seed whatever `train.seed` is: a seed sweep chooses its `best` checkpoints and
    stops early on the same windows (they followed the training seed)."""
    val = make_batches(val_tokens, config, VAL_SAMPLE_SEED, eot_id, split="val",
                       batch=config.global_batch, history=history)  # fmt: skip
    pieces, size = [], config.micro_batch
    for _ in range(config.eval_batches):
        x, y = val.next(device)
        pieces += [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]
    return pieces


@torch.no_grad()
def val_loss_of(
    model: torch.nn.Module,
    val_tokens: np.ndarray,
    config: TrainConfig,
    eot_id: int | None = None,
    history: int = 0,
) -> float:
    """Mean loss of `model` on the fixed val sample, in this process (what `Trainer.evaluate`
    gives, without a Trainer): for a baseline scored after training ran elsewhere."""
    device = pick_device(config.device)
    dtype = autocast_dtype(config, device)
    model = model.to(device).eval()
    total, count = 0.0, 0
    for x, y in fixed_val_sample(val_tokens, config, device, eot_id, history):
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x, y)[1].item()
        scored = scored_targets(y)  # the mean over scored targets, as the test NLL counts them
        total, count = total + loss * scored, count + scored
    return total / count


class TrainingLoss(torch.nn.Module):
    """What a compiled training step runs: the model's `(logits, loss)` with the logits left
    out (None), since the step reads the loss alone. A compiled graph has a gradient for every
    output: the logits' was handed to its backward as zeros, filled and read every micro-batch
    (GPT-2 124M at batch 16: 1.6 GB written and read again, about 3 % of an H100's step spent
    on nothing). The same module computes the loss, so training does not change."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, self.model(x, y)[1]


class HostReadout:
    """A queued step's loss and gradients' norm, copied to the host as soon as the device has
    them. Waiting for that copy waits for that step alone: `.item()` waits for all the work
    queued on the device, the step `run_steps` queued after it included, so the GPU ran dry at
    every step while the host logged, drew the next batch and launched its first kernels. On a
    CPU, where the work is done as it is launched, the values are read as they are."""

    def __init__(self, loss: torch.Tensor, norm: torch.Tensor):
        values = torch.stack([loss.detach().float(), norm.detach().float()])
        self.done = None
        if values.device.type == "cuda":
            self.values = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.values.copy_(values, non_blocking=True)
            self.done = torch.cuda.Event()
            self.done.record()
        else:
            self.values = values

    def read(self) -> tuple[float, float]:
        """(loss, norm), once the copy has landed."""
        if self.done is not None:
            self.done.synchronize()
        loss, norm = self.values.tolist()
        return loss, norm


@dataclass
class LaunchedStep:
    """A training step queued on the device whose loss the host has not read yet."""

    number: int  # the step count once it is done: what its metrics are logged at
    loss: torch.Tensor  # on the device
    rate: float
    scored: int  # the targets the step scores, over every rank
    # With its update queued too: 1.0 where the device skips that update. None: the update
    # follows the loss's check.
    found_inf: torch.Tensor | None = None
    # With its update queued too: the norm of its gradients, before clipping.
    gradient_norm: torch.Tensor | None = None
    # With its update queued too: its loss and norm on their way to the host.
    readout: HostReadout | None = None

    @property
    def updated(self) -> bool:
        return self.found_inf is not None


@dataclass
class TrainResult:
    """What `Trainer.train` did: the step it ended at, the lowest val loss (the `best/`
    checkpoint's), whether early stopping ended it, and each step's train loss."""

    step: int
    best_val_loss: float
    stopped_early: bool
    losses: list[float] = field(default_factory=list)
    tokens_seen: int = 0  # the targets scored since step 0 (see `Trainer.tokens_seen`)
    tokens_trained: int | None = 0  # and over the trainings it continues (`Trainer.tokens_trained`)
    # The steps' own time in this call: not evaluations, checkpoints, or what came before (a
    # baseline, the model's build): what a training speed divides by.
    step_seconds: float = 0.0
    # The targets and seconds of this call's steps after its first, which holds the process's
    # first allocations, thread start-up and (compiled) compilation: a speed compared across
    # trainings (an ablation's arms) is taken from these, else the first arm a process trains
    # looks slowest (587 tokens/s against 1,808 to 4,729 of the same model in 20 steps). None
    # for a call of one step or none.
    steady_tokens: int | None = None
    steady_seconds: float | None = None


class Trainer:
    """Trains `model` on token arrays, as DESIGN §4 says: checkpoints in `out_dir` every
    `checkpoint_every` steps (`step-NNNNNNNN/`), the lowest val loss's weights in `out_dir/best/`,
    its curve in `metrics.jsonl`. Used from Python:

    - seed before building the model (`torch.manual_seed(config.seed)`): its initial weights are
      drawn there; the Trainer seeds the global generator again for dropout (the notebook's
      random state with it);
    - call `resume_or_initialize(out_dir)` before `train()` to continue an interrupted training:
      a new Trainer in a used folder starts at step 0 and writes over its checkpoints;
    - after `train()`, `module` holds the last step's weights; the best are in `out_dir/best/`
      (`lm.evaluate.load_trained` reads a folder laid out as the train stage publishes it);
    - a GPT trains on windows of its own context: `effective_train_config(model_config, train)`
      (lm.models.config) is the config the pipeline gives it.

    On a CPU it keeps freed memory mapped (`keep_freed_memory`), on CUDA it turns TF32 on:
    settings of the whole process."""

    def __init__(
        self,
        model: LanguageModel,
        config: TrainConfig,
        train_tokens: np.ndarray,
        val_tokens: np.ndarray,
        out_dir: Path | str,
        metrics_path: Path | str | None = None,
        tokenizer_digest: str | None = None,
        eot_id: int | None = None,
    ):
        self.config = config
        self.ranks = Ranks.from_env()
        self.device = pick_device(config.device, self.ranks)
        # Whether `run_steps` may queue a step before reading the last one's loss: on a device
        # that runs what it is given later (CUDA, MPS). A CPU runs a step as it is launched, so
        # running ahead gains nothing there, and the time of the step launched ahead was
        # counted with the step yielded (the last step's window held almost none of it: a
        # final tokens/s in the hundreds of thousands, the report's headline figure).
        self.runs_ahead = self.device.type != "cpu"
        init_process_group(self.ranks, self.device)
        self.accumulation = config.accumulation_steps_for(self.ranks.world_size)
        if self.device.type == "cpu":  # no page faults for every step's activations again
            keep_freed_memory()
        if self.device.type == "cuda":  # TF32 matmuls: fp32 accuracy for training, far faster
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # Dropout and stochastic depth draw from the global generator: each rank its own stream
        # (nanoGPT's seed offset), or every rank would drop the same units of its rows. The
        # initial weights were drawn before, from the same seed on every rank.
        torch.manual_seed(config.seed + RANK_SEED_STRIDE * self.ranks.rank)
        self.tokenizer_digest = tokenizer_digest
        model_kind = getattr(getattr(model, "config", None), "kind", None)
        context = model.block_size if model_kind == "gpt" else None  # no longer sequence fits
        if context is not None and config.block_size > context:
            raise TrainingError(
                f"train.block_size {config.block_size} is longer than the model's context "
                f"({context} tokens): a GPT trains on windows of its own block_size "
                "(lm.models.config.effective_train_config gives the config it trains with)"
            )
        self.module = model.to(self.device)  # the uncompiled module: what checkpoints save
        self.flops_per_token = flops_per_token(self.module, config.block_size)
        # How the ranks share the model; "none" for a single process.
        self.parallel = config.parallel if self.ranks.distributed else "none"
        self.wrapped, self.model = self._prepare_model()
        self.optimizer = make_optimizer(self.module, config, self.device)
        if config.ema_decay and self.parallel == "fsdp":
            raise TrainingError('train.ema_decay needs whole weights: use parallel = "ddp"')
        self.average = WeightAverage(self.module, config.ema_decay) if config.ema_decay else None
        model_config = getattr(self.module, "config", None)
        self.history = window_history(model_config) if model_config is not None else 0
        self.train_batches = make_batches(
            train_tokens, config, config.seed, eot_id,
            rank=self.ranks.rank, world_size=self.ranks.world_size, history=self.history,
        )  # fmt: skip
        # The same sample on every rank, drawn on the host; each rank keeps and scores every
        # W-th piece. The shares are equal: the pieces number eval_batches × global_batch /
        # micro_batch, a multiple of W.
        sample = fixed_val_sample(val_tokens, config, CPU, eot_id, self.history)
        share = sample[self.ranks.rank :: self.ranks.world_size]
        self.val_sample = [(to_device(x, self.device), to_device(y, self.device))
                           for x, y in share]  # fmt: skip
        self.val_scored = [scored_targets(y) for _, y in self.val_sample]
        self.out_dir = Path(out_dir)  # a notebook's string path too
        self.metrics_path = Path(metrics_path or self.out_dir / "metrics.jsonl")
        if self.ranks.is_main:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self.step = 0
        # Targets scored since step 0, over every rank: `global_batch × block_size` a step for
        # windows; for rows of documents their padding is not counted (at block 16, half or
        # more of a row of a name), as it is not trained on.
        self.tokens_seen = 0
        # What the weights training started from had been trained on (`init_from`'s count;
        # None where that checkpoint did not record it): 0 for a fresh model.
        self.tokens_before: int | None = 0
        self.best_val_loss = math.inf  # the lowest val loss so far: what `best` holds
        # Early stopping's reference: the val loss of the last evaluation that beat the one
        # before by `min_delta`. Smaller gains still make a new `best`, but do not reset
        # patience, and do not move this reference: gains that add up to `min_delta` count.
        self.val_loss_to_beat = math.inf
        self.evaluations_without_improvement = 0
        self.stopped_early = False
        self.evaluation_seconds = 0.0  # what the last evaluation took, with its checkpoints
        self.step_pace: float | None = None  # seconds a step, smoothed over reports (the ETA's)
        self.reported = False  # by this process: its first window holds the first step's compile
        self.backward_ran = False  # a step's backward has run in this process
        self.autocast = autocast_dtype(config, self.device)
        self.peak_flops = peak_flops(self.device)

    def _prepare_model(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(what reduces gradients across ranks: DDP, or the FSDP-sharded module itself;
        what runs batches). As in nanoGPT, DDP wraps the compiled module; FSDP shards before
        compiling, since it replaces the parameters in place."""
        model: torch.nn.Module = self.module
        if self.parallel == "fsdp":
            model = wrap_model(self.module, "fsdp", self.device)
        if compile_wanted(self.config, self.device, self.flops_per_token):
            losses = TrainingLoss(model)
            compiled = compile_or_eager(losses, self.device)
            model = model if compiled is losses else compiled
        if self.parallel == "ddp":
            model = wrap_model(model, "ddp", self.device)
            return model, model
        return self.module, model

    def _forward(self, x, y, model: torch.nn.Module | None = None):
        model = self.model if model is None else model
        try:
            return self._run(model, x, y)
        except torch._dynamo.exc.TorchDynamoException as error:
            # `compile_or_eager` probes the compiler with a tiny function; the model itself
            # compiles only here, at its first call, and can still fail (an operator Inductor
            # cannot lower, a toolchain that breaks on a larger kernel). A single process goes
            # on eager, as when the probe fails; under DDP/FSDP every rank would have to agree.
            if model is not self.model or self.model is self.module or self.parallel != "none":
                raise
            logger.warning("torch.compile failed on this model (%s); training eager",
                           describe(error))  # fmt: skip
            self.model = self.module
            return self._run(self.module, x, y)

    def _run(self, model: torch.nn.Module, x, y):
        if self.autocast is None:
            return model(x, y)
        with torch.autocast(device_type=self.device.type, dtype=self.autocast):
            return model(x, y)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None = None) -> float:
        """Mean loss on the fixed val sample, of the model being trained or of another one
        (a baseline scored on exactly the same windows). With several ranks each evaluates
        its share, every W-th piece, and the sums are reduced: every rank gets the same number.
        The shares are equal, so the collectives inside a DDP/FSDP forward line up."""
        if model is None and self.average is not None:  # the average is what is published
            with self.average.swapped_in():
                return self._evaluate(self.model)
        return self._evaluate(self.model if model is None else model)

    def _evaluate(self, model: torch.nn.Module) -> float:
        if model is self.model and self.parallel == "none":
            # The eager module: a compiled one would compile a second graph (eval mode) for a
            # few batches; under DDP/FSDP the wrapper's forward must run on every rank.
            model = self.module
        model.eval()
        total, count = 0.0, 0
        for (x, y), scored in zip(self.val_sample, self.val_scored, strict=True):
            loss = self._forward(x, y, model)[1].item()
            # The mean over scored targets, as the test NLL counts them.
            total, count = total + loss * scored, count + scored
        total, count = all_reduce_sum([total, count], self.device)
        self.model.train()
        return total / count

    def _log(self, values: dict[str, float], step: int) -> None:
        """Append a step's metrics with one open per call, not per value: it runs every
        step. Rank 0 alone writes."""
        if not self.ranks.is_main:
            return
        timestamp = utc_now().isoformat()
        lines = [
            json.dumps({"key": key, "step": step, "value": float(value), "ts": timestamp})
            for key, value in values.items()
        ]
        with open(self.metrics_path, "a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over `global_batch` sequences; returns (loss averaged over the
        micro-batches and ranks, learning rate), the loss read before it returns."""
        self._require_weights_to_train()
        return self._settle(self._launch_step())

    def run_steps(
        self, last_step: int, settle_at: Callable[[int], bool] = lambda step: False
    ) -> Iterator[tuple[int, float, float, int]]:
        """Train until step `last_step`, yielding (step, loss, learning rate, targets scored)
        as each step's loss is read. One process with a fused optimizer on a GPU
        (`runs_ahead`) runs a step ahead: step n+1 is queued before step n's loss is read, so
        the device need not idle while the host prepares the next step (GPT-2 124M on an
        H200: 1.5 % more tokens/s at batch 16, none at batch 64, where the update queued
        before the read had already kept the GPU 98 % busy). A
        step for which `settle_at(step)` holds, and the last, is yielded with nothing in
        flight: the weights, optimizer and data cursor are that step's, and the caller may
        evaluate or save there. Other setups read each loss before the update, so every step is
        yielded settled. A caller that stops early leaves nothing in flight either: the step
        still queued is read (and checked) on the way out, though not yielded.

        A non-finite loss or gradient raises `TrainingError` and changes no weight and no
        optimizer state, but the step count, data cursor and weight average are past it by then
        (by one more step when running ahead): resume from a checkpoint rather than go on."""
        in_flight: LaunchedStep | None = None  # queued, its loss not read yet
        try:
            while self.step < last_step:
                launched = self._launch_step(in_flight)
                previous, in_flight = in_flight, launched
                if previous is not None:
                    yield previous.number, *self._settle(previous), previous.scored
                if (not launched.updated or settle_at(self.step) or self.step >= last_step
                        or not self.runs_ahead):  # fmt: skip
                    in_flight = None
                    yield launched.number, *self._settle(launched), launched.scored
        except GeneratorExit:  # the caller stopped early: read the step it left queued
            if in_flight is not None:
                self._settle(in_flight)
            raise

    def _require_weights_to_train(self) -> None:
        """A model without trainable weights (the count bigram, which a Trainer evaluates and
        saves) is refused a step: torch said "element 0 of tensors does not require grad"."""
        if not any(parameter.requires_grad for parameter in self.module.parameters()):
            fitted = ": a bigram-count model is counted in closed form, with .fit(tokens)"
            raise TrainingError(
                f"{type(self.module).__name__} has no weights to train"
                + (fitted if hasattr(self.module, "fit") else "")
            )

    def _launch_step(self, unread: LaunchedStep | None = None) -> LaunchedStep:
        """Queue one step's forward and backward, and, in one process with a fused optimizer,
        its update as well: the device skips that update by itself if the loss or the
        gradients' norm is not finite (`found_inf`), or if the step before it (`unread`, whose
        loss the host has not read yet) was not. A non-finite loss or gradient thus changes no
        weight, however late the host sees it. Elsewhere both are checked before the update
        (another rank may hold the bad loss)."""
        config = self.config
        rate = learning_rate(self.step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        # Drawn on the host, where the loss divisors are counted without a device sync (which
        # would wait for the step still running), then copied over.
        drawn = [self.train_batches.next(CPU) for _ in range(self.accumulation)]
        divisors, scored = self._loss_divisors([y for _, y in drawn])
        batches = [(to_device(x, self.device), to_device(y, self.device)) for x, y in drawn]
        total = self._forward_backward(batches, divisors)
        if self.ranks.distributed or not self.optimizer.defaults.get("fused"):
            return LaunchedStep(self.step + 1, total, rate, scored)
        found_inf = (~torch.isfinite(total)).float()
        if unread is not None:
            found_inf = torch.maximum(found_inf, unread.found_inf)
        norm = self._clip_gradients()
        # A finite loss can still have gradients that are not (an overflow in the backward):
        # their update would turn every weight into NaN, and the next checkpoint with them.
        found_inf = torch.maximum(found_inf, (~torch.isfinite(norm)).float())
        readout = HostReadout(total, norm)  # before the update: read without waiting for it
        self.optimizer.found_inf = found_inf
        self._update_weights()
        self.step += 1
        self.tokens_seen += scored
        return LaunchedStep(self.step, total, rate, scored, found_inf, norm, readout)

    def _forward_backward(self, batches, divisors) -> torch.Tensor:
        """Accumulate one step's gradients; the step's loss, still on the device.

        A compiled model compiles its backward lazily, at its first `backward()`, outside
        Dynamo's error handling (`_forward`'s), so a compiler that lowers the forward but not
        the backward fails here as a plain exception. On the first compiled step of a single
        process the step is redone eager, with a warning, as `_forward` does for the forward;
        after that step, or across ranks, the error is the run's. The redo draws the dropout
        masks the failed attempt drew (the generators put back), so a run whose first compiled
        step failed, resumed or not, trains as one that never compiled."""
        if not self.backward_ran and self.model is not self.module:  # the first compiled step
            cuda = self.device.type == "cuda"
            generators = (
                torch.get_rng_state(),
                torch.cuda.get_rng_state(self.device) if cuda else None,
            )
        try:
            total = self._accumulate(batches, divisors)
        except Exception as error:
            if (self.backward_ran or self.model is self.module or self.parallel != "none"
                    or not raised_by_the_compiler(error)):  # fmt: skip
                raise
            logger.warning("torch.compile failed on this model's backward (%s); training eager",
                           describe(error))  # fmt: skip
            self.model = self.module
            self.optimizer.zero_grad(set_to_none=True)
            torch.set_rng_state(generators[0])
            if generators[1] is not None:
                torch.cuda.set_rng_state(generators[1], self.device)
            total = self._accumulate(batches, divisors)
        self.backward_ran = True
        return total

    def _accumulate(self, batches, divisors) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for micro, ((x, y), divisor) in enumerate(zip(batches, divisors, strict=True)):
            # Gradients are reduced across ranks on the last micro-batch only.
            with gradient_sync(self.wrapped, micro == self.accumulation - 1):
                _, loss = self._forward(x, y)
                (loss / divisor).backward()
            total += loss.detach() / divisor
        return total

    def _not_finite_advice(self) -> str:
        return not_finite_advice(self.config, self.autocast)

    def _settle(self, launched: LaunchedStep) -> tuple[float, float]:
        """Read a launched step's loss and gradients' norm, refuse the step if either is not
        finite, and finish the step if its update was not queued with it."""
        norm = None
        if launched.readout is not None:  # one process, its update queued: both on the way
            step_loss, norm = launched.readout.read()
        else:
            step_loss = launched.loss.item()
        if self.ranks.distributed:
            step_loss = all_reduce_sum([step_loss], self.device)[0] / self.ranks.world_size
        if not math.isfinite(step_loss):
            raise TrainingError(
                f"loss is {step_loss} at step {launched.number}: {self._not_finite_advice()}"
            )
        if norm is None:
            norm = launched.gradient_norm if launched.updated else self._clip_gradients()
            norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)  # never applied
            raise TrainingError(
                f"the gradients' norm is {norm} at step {launched.number} (its loss, "
                f"{step_loss:.4f}, is finite): {self._not_finite_advice()}"
            )
        if not launched.updated:
            self._update_weights()
            self.step += 1
            self.tokens_seen += launched.scored
        return step_loss, launched.rate

    def _clip_gradients(self) -> torch.Tensor:
        """Clip the gradients to norm `grad_clip` (if on); returns their norm before clipping,
        on the device: the NaN/inf guard reads it. (A limit of inf scales by exactly 1.)"""
        limit = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        return torch.nn.utils.clip_grad_norm_(self.module.parameters(), limit)

    def _update_weights(self) -> None:
        """The optimizer's step on gradients `_clip_gradients` has clipped."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.update(self.step)

    def _loss_divisors(self, targets: list[torch.Tensor]) -> tuple[list[float], int]:
        """(What each micro-batch's mean loss is divided by, the targets C the step scores over
        every rank.) The divisors make the step's gradient the mean over every target the
        global batch scores, whatever the micro-batch size: rank r's micro-batch i, scoring c
        of the step's C targets, counts c/C of it, and DDP's average over W ranks divides by W,
        so its loss is divided by C/(c·W). Windows score every target (c·W·accumulation = C):
        the divisor is exactly `accumulation`. Rows of documents score different numbers of
        targets (padding is not scored), and dividing each mean by `accumulation` would give a
        short document in a short micro-batch more weight."""
        if self.config.samples != "documents":
            scored = self.config.global_batch * self.config.block_size
            return [float(self.accumulation)] * len(targets), scored
        counts = [scored_targets(y) for y in targets]
        step_total = all_reduce_sum([float(sum(counts))], self.device)[0]
        divisors = [step_total / (count * self.ranks.world_size) for count in counts]
        return divisors, round(step_total)

    def train(self, until_step: int | None = None) -> TrainResult:
        """Train to `max_steps` (or stop after `until_step`, with a checkpoint there, as an
        interruption would: the schedule still spans `max_steps`)."""
        self._require_weights_to_train()
        config = self.config
        last_step = min(until_step or config.max_steps, config.max_steps)
        losses: list[float] = []
        if self.stopped_early:  # resumed from the checkpoint where early stopping ended it
            return TrainResult(self.step, self.best_val_loss, True, losses, self.tokens_seen,
                               self.tokens_trained)  # fmt: skip
        last_report, steps_at_report, stepping = time.monotonic(), self.step, 0.0
        step_seconds = 0.0
        first_step: tuple[int, float] | None = None  # (targets, seconds) of this call's first
        tokens_in_call = 0
        tokens_in_window = 0  # the targets trained on: rows of documents score fewer than
        # global_batch × block_size (their padding), windows exactly that
        if self.step == 0 and config.warmup_steps >= config.max_steps and self.ranks.is_main:
            # Legal (a quick `--set train.max_steps=10` under the default 20), but rarely meant.
            reached = ("reaches train.learning_rate only on the last step"
                       if config.warmup_steps == config.max_steps
                       else "never reaches train.learning_rate")  # fmt: skip
            logger.warning(
                "train.warmup_steps (%d) is not below train.max_steps (%d): the whole training "
                "warms up, so the learning rate %s and never decays",
                config.warmup_steps, config.max_steps, reached,
            )  # fmt: skip
        evaluations = -(-config.max_steps // config.eval_every)  # the last step evaluates too
        stoppable = not config.patience or evaluations >= config.patience + 2
        if self.step == 0 and self.ranks.is_main and not stoppable:
            # The first evaluation is the best so far, and running out of patience on the last
            # step ends nothing early: `patience` given, a user expects it can stop the run.
            logger.warning(
                "train.patience = %d, but training evaluates %d time%s (train.eval_every = %d "
                "of train.max_steps = %d): early stopping can never end it early",
                config.patience, evaluations, "" if evaluations == 1 else "s",
                config.eval_every, config.max_steps,
            )  # fmt: skip
        if self.step == 0 and self.ranks.is_main and config.min_delta and not config.patience:
            logger.warning("train.min_delta = %g paces early stopping, which train.patience = 0 "
                           "turns off: it changes nothing", config.min_delta)  # fmt: skip

        def evaluates_at(step: int) -> bool:
            return step % config.eval_every == 0 or step == config.max_steps

        def saves_at(step: int) -> bool:
            return step % config.checkpoint_every == 0 or step in (last_step, config.max_steps)

        def settle_at(step: int) -> bool:  # nothing in flight where it evaluates or saves
            return evaluates_at(step) or saves_at(step)

        self.model.train()
        resumed = time.monotonic()
        for step, step_loss, rate, scored in self.run_steps(last_step, settle_at):
            now = time.monotonic()
            stepping += now - resumed  # the steps' own time: the device's too, up to the read
            step_seconds += now - resumed
            tokens_in_window += scored
            tokens_in_call += scored
            if first_step is None:
                first_step = (scored, step_seconds)
            losses.append(step_loss)
            self._log({"train/loss": step_loss, "train/lr": rate}, step)
            if now - last_report > 5 or step == config.max_steps:
                self._report_throughput(step, step_loss, stepping, step - steps_at_report,
                                        tokens_in_window)  # fmt: skip
                last_report, steps_at_report, stepping, tokens_in_window = now, step, 0.0, 0
            if evaluates_at(step):
                evaluated_at = time.monotonic()
                val_loss = self.evaluate()
                if not math.isfinite(val_loss):  # never "no improvement": the weights are broken
                    raise TrainingError(
                        f"val loss is {val_loss} at step {step} (the training loss, "
                        f"{step_loss:.4f}, is finite): {self._not_finite_advice()}"
                    )
                self._log({"val/loss": val_loss}, step)
                if val_loss < self.val_loss_to_beat - config.min_delta:
                    self.val_loss_to_beat = val_loss
                    self.evaluations_without_improvement = 0
                else:
                    self.evaluations_without_improvement += 1
                if val_loss < self.best_val_loss:
                    self.best_val_loss = val_loss
                    self.save("best")
                patience_ran_out = self.evaluations_without_improvement >= config.patience
                if config.patience and patience_ran_out and step < config.max_steps:
                    self._info("train: no val improvement in %d evaluations; stopping",
                               config.patience)  # fmt: skip
                    self.stopped_early = True
                    self.save(f"step-{step:08d}")
                    break
            if saves_at(step):
                self.save(f"step-{step:08d}")
            if step % config.eval_every == 0:  # its checkpoints included: for the ETA
                self.evaluation_seconds = time.monotonic() - evaluated_at
            # Evaluations and checkpoints are not training time; logging a step is (when
            # running ahead, the next step runs on the device meanwhile).
            resumed = time.monotonic() if settle_at(step) else now
        steady = len(losses) > 1 and first_step is not None
        return TrainResult(
            self.step, self.best_val_loss, self.stopped_early, losses, self.tokens_seen,
            self.tokens_trained, step_seconds,
            tokens_in_call - first_step[0] if steady else None,
            step_seconds - first_step[1] if steady else None,
        )  # fmt: skip

    def _report_throughput(self, step: int, loss: float, stepping: float, steps: int,
                           tokens: int):  # fmt: skip
        """Tokens/s (and MFU) of the `steps` training steps since the last report (`tokens` targets
        trained on; MFU counts the positions computed), over the time they took (`stepping`;
        evaluations and checkpoints are not training speed), and the ETA: the steps left at that
        pace plus the evaluations left at what the last one took. (A wall-clock pace would jump
        whenever a report's window held an evaluation, or carry the first step's compilation for the
        whole run.) The pace is smoothed from one report to the next as tqdm smooths its rate
        (`ETA_SMOOTHING`): on a shared machine one window slowed by another process swung the ETA
        tenfold; tokens/s stays the window's. A process's first window, which holds its first step's
        compilation, gives its own ETA but is left out of the smoothed pace (it would have lingered
        for dozens of reports)."""
        tokens_per_s = tokens / max(stepping, 1e-9)
        config = self.config
        # Evaluations at steps `step` … max_steps (this step's own comes after this report).
        evaluations_left = config.max_steps // config.eval_every
        evaluations_left -= (step - 1) // config.eval_every
        evaluations_left += 1 if config.max_steps % config.eval_every else 0
        pace = stepping / max(steps, 1)
        if self.step_pace is not None:
            pace = ETA_SMOOTHING * pace + (1 - ETA_SMOOTHING) * self.step_pace
        if self.reported:
            self.step_pace = pace
        self.reported = True
        remaining = (config.max_steps - step) * pace
        remaining += evaluations_left * self.evaluation_seconds
        values = {"train/tokens_per_s": tokens_per_s}
        mfu = ""
        if self.peak_flops:
            # The device computes every position of every row, padding after a short document
            # and a window's unscored history included: MFU is how busy it is, so it counts
            # them (on a names list, scored targets alone put it at about 2.4x too low).
            row = config.block_size + (self.history if config.samples == "windows" else 0)
            positions_per_s = steps * config.global_batch * row / max(stepping, 1e-9)
            values["train/mfu"] = (
                positions_per_s * self.flops_per_token / (self.peak_flops * self.ranks.world_size)
            )
            mfu = f", MFU {values['train/mfu']:.1%}"
        self._info(
            "train: step %d/%d, loss %.4f, %.0f tokens/s%s, ETA %s",
            step, self.config.max_steps, loss, tokens_per_s, mfu, format_seconds(remaining),
        )  # fmt: skip
        self._log(values, step)

    def _info(self, message: str, *args) -> None:
        if self.ranks.is_main:
            logger.info(message, *args)

    # -- checkpoints -------------------------------------------------------------------------

    def save(self, name: str) -> Path:
        """Write checkpoint `name` atomically. Every rank calls it (gathering FSDP shards and
        the ranks' data cursors are collectives); rank 0 writes."""
        final = self.out_dir / name
        model_state = full_model_state(self.module, self.parallel)
        optimizer_state = full_optimizer_state(self.module, self.optimizer, self.parallel)
        cuda = self.device.type == "cuda"
        rank_states = all_gather((
            self.train_batches.state(),
            torch.get_rng_state(),
            torch.cuda.get_rng_state(self.device) if cuda else None,
        ))  # fmt: skip
        if not self.ranks.is_main:
            return final
        staging = staging_path(self.out_dir / name)
        try:
            self._write_checkpoint(staging, model_state, optimizer_state, rank_states)
            replace_folder(staging, final)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)  # a partial write, its space given back
            if isinstance(error, OSError | RuntimeError) and not isinstance(error, TrainingError):
                said = str(error).strip().splitlines()[:1]
                raise CheckpointUnwritable(
                    f"{final}: writing the checkpoint failed; is the disk full, or the folder "
                    f"not writable? ({type(error).__name__}: {''.join(said)})"
                ) from error
            raise
        if name.startswith("step-"):
            self._prune_step_checkpoints()
        return final

    def _prune_step_checkpoints(self) -> None:
        """Keep the newest `keep_checkpoints` complete checkpoints up to this step. Those past
        it were left by a stopped run and skipped by the resume as unusable (a flipped bit), and
        those without `DONE` will never be used: kept and counted, they took the places of good
        ones and of the one just written. Each is renamed before it is deleted, so a cleanup
        cut short leaves a staging folder (`recover_staging` removes it), never a half
        checkpoint under its own name."""
        doomed, kept = [], []
        for checkpoint in step_checkpoints(self.out_dir):
            complete = (checkpoint / DONE_MARKER).is_file()
            (kept if complete and step_of(checkpoint) <= self.step else doomed).append(checkpoint)
        for checkpoint in doomed + kept[: -self.config.keep_checkpoints]:
            aside = staging_path(checkpoint)
            os.rename(checkpoint, aside)
            shutil.rmtree(aside)

    def _write_checkpoint(
        self, staging: Path, model_state: dict, optimizer_state: dict, rank_states: list
    ) -> None:
        """Write every file of a checkpoint into the new folder `staging`, `DONE` last."""
        cuda = self.device.type == "cuda"
        staging.mkdir(parents=True)
        torch.save(optimizer_state, staging / "optimizer.pt")
        state = {
            "torch": rank_states[0][1],
            "torch_per_rank": [torch_state for _, torch_state, _ in rank_states],
            "data": rank_states[0][0],
            "data_per_rank": [data for data, _, _ in rank_states],
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "tokens_before": self.tokens_before,
            "best_val_loss": self.best_val_loss,
            "val_loss_to_beat": self.val_loss_to_beat,
            "evaluations_without_improvement": self.evaluations_without_improvement,
            "stopped_early": self.stopped_early,
        }
        if cuda:
            state["cuda"] = rank_states[0][2]
            state["cuda_per_rank"] = [cuda_state for _, _, cuda_state in rank_states]
        if self.average is not None:  # the weights file holds the average; training, these
            state["trained_weights"] = model_state
            model_state = self.average.averaged_state(self.module)
        torch.save(model_state, staging / WEIGHTS_FILE)
        torch.save(state, staging / "state.pt")
        config_json = self.config.model_dump_json(indent=2)
        (staging / "config.json").write_text(config_json, encoding="utf-8")
        digests = {f: file_sha256(staging / f) for f in CHECKPOINT_FILES}
        info = {
            "step": self.step,
            "tokenizer_digest": self.tokenizer_digest,
            "world_size": self.ranks.world_size,
            "parallel": self.parallel,
            "weights_sha256": digests[WEIGHTS_FILE],
            "tokens_trained": self.tokens_trained,
            "files": {f: (staging / f).stat().st_size for f in CHECKPOINT_FILES},
            "sha256": digests,
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2))
        (staging / DONE_MARKER).write_text(str(self.step))

    def _check_tokenizer(self, checkpoint: Path, info: dict, key: str = "") -> None:
        """`key`: the setting that named the checkpoint (`train.init_from`), said first."""
        theirs = other_tokenizer(info, self.tokenizer_digest)
        if theirs:
            raise TrainingError(
                f"{key + ': ' if key else ''}{checkpoint}: made with tokenizer {theirs}, but "
                f"this run's tokenizer is {self.tokenizer_digest}; token ids differ between "
                "tokenizers, so these weights cannot continue here (train from scratch, or use "
                "that tokenizer)"
            )

    def _load(self, checkpoint: Path, name: str):
        try:
            return torch.load(checkpoint / name, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises RuntimeError, EOFError, pickle errors...
            raise CheckpointUnreadable(f"{checkpoint / name}: cannot be loaded ({error})") from None

    def resume(self, checkpoint: Path) -> None:
        """Continue exactly where `checkpoint` stopped: weights, optimizer, RNG, data cursor,
        step, early-stopping state. Metric lines logged after it (by the run that was killed)
        are dropped, so the log holds each step once."""
        info = read_info(checkpoint)
        self._check_tokenizer(checkpoint, info)
        saved_parallel = info.get("parallel", "none")
        if (saved_parallel == "fsdp") != (self.parallel == "fsdp"):
            # Weights are saved whole under every layout, and the optimizer state is rekeyed
            # (`load_optimizer_state`): the run goes on, on the same weights and moments.
            ours = f"parallel={self.parallel}" if self.ranks.distributed else "one process"
            self._info("train: %s was written with parallel=%s; continuing with %s",
                       checkpoint, saved_parallel, ours)  # fmt: skip
        # Every file is checked and read before anything is applied: a bad file changes nothing.
        problem = digest_mismatch(checkpoint, CHECKPOINT_FILES)
        if problem:
            raise CheckpointUnreadable(f"{checkpoint}: {problem}")
        model_state = self._load(checkpoint, WEIGHTS_FILE)
        optimizer_state = self._load(checkpoint, "optimizer.pt")
        state = self._load(checkpoint, "state.pt")
        lacking = _lacking_state(state)
        if lacking:  # loaded, but not a training state (in a checkpoint without digests)
            raise CheckpointUnreadable(f"{checkpoint / 'state.pt'}: cannot be loaded ({lacking})")
        if self.average is not None and "trained_weights" not in state:
            raise TrainingError(f"{checkpoint}: written without train.ema_decay; it cannot "
                                "continue a run that averages its weights")  # fmt: skip
        try:
            if self.average is not None:
                self.average.load(self.module, model_state)
                model_state = state["trained_weights"]
            load_model_state(self.module, model_state, self.parallel)
            load_optimizer_state(self.module, self.optimizer, optimizer_state, self.parallel)
        except (RuntimeError, ValueError, KeyError, IndexError) as error:
            misfit = _misfit(self.module, model_state, error)
            raise TrainingError(f"{checkpoint}: does not fit this model: {misfit}") from None
        self.step = state["step"]
        # Checkpoints from before it was kept: every row's every position, as it was counted.
        tokens_per_step = self.config.global_batch * self.config.block_size
        self.tokens_seen = state.get("tokens_seen", self.step * tokens_per_step)
        # A checkpoint written before it was kept: unknown if this run continued another's.
        self.tokens_before = state.get("tokens_before", None if self.config.init_from else 0)
        cursors = state.get("data_per_rank") or [state["data"]]
        if len(cursors) == self.ranks.world_size:
            rank = self.ranks.rank
            torch.set_rng_state(_for_rank(state, "torch", rank))
            if "cuda" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(_for_rank(state, "cuda", rank), self.device)
            self.train_batches.restore(cursors[rank])
        else:
            if self.ranks.is_main:  # one warning, not one per rank
                logger.warning(
                    "%s: written by %d processes, resumed by %d: the data order and the dropout "
                    "masks from here differ from an uninterrupted run",
                    checkpoint, len(cursors), self.ranks.world_size,
                )  # fmt: skip
            self.train_batches.reseed(self.step)
            torch.manual_seed(self.config.seed + RANK_SEED_STRIDE * self.ranks.rank + self.step)
        self.best_val_loss = state["best_val_loss"]
        # Checkpoints from before the two were told apart kept only the reference.
        self.val_loss_to_beat = state.get("val_loss_to_beat", self.best_val_loss)
        self.evaluations_without_improvement = state["evaluations_without_improvement"]
        self.stopped_early = state.get("stopped_early", False)
        self._keep_a_later_best()
        if self.ranks.is_main:
            self._drop_metrics_after(self.step)

    def _keep_a_later_best(self) -> None:
        """A `best/` the stopped run wrote after the checkpoint resumed holds weights with a
        lower val loss than the checkpoint knew of. Replayed exactly (CPU) the run writes it
        again; on a GPU, not bit for bit, the replay may measure that step a little higher and
        leave it, so the published `best/` was not the model the best val loss named. Its loss
        is taken as the best so far: `best/` and the best val loss stay one model. Every rank
        takes the same (the lowest any rank read): `save("best")` is a collective."""
        best = self.out_dir / "best"
        later = None
        whole = (best / DONE_MARKER).is_file() and damage(best) is None
        if whole and read_info(best).get("step", 0) > self.step:
            with contextlib.suppress(CheckpointUnreadable, KeyError):
                later = float(self._load(best, "state.pt")["best_val_loss"])
        losses = [loss for loss in all_gather(later) if loss is not None]
        if losses and min(losses) < self.best_val_loss:
            self.best_val_loss = min(losses)
            self._info("train: %s, written after this checkpoint by the stopped run, has val "
                       "loss %.4f: kept as the best so far", best, self.best_val_loss)  # fmt: skip

    def resume_latest(self, folder: Path) -> Path | None:
        """Resume from the newest checkpoint in `folder` that loads, skipping (with a warning
        naming it) any that will not; None when there is none."""
        for checkpoint in usable_checkpoints(folder):
            try:
                self.resume(checkpoint)
            except CheckpointUnreadable as error:
                logger.warning("%s; trying the previous checkpoint", error)
                continue
            return checkpoint
        return None

    def initialize_from(self, path: Path) -> Path:
        """Start from the weights of another run's checkpoint (`init_from`); the optimizer,
        schedule and step start afresh. Returns the checkpoint used."""
        checkpoint = resolve_init_from(path)
        self._check_tokenizer(checkpoint, read_info(checkpoint), "train.init_from")
        problem = damage(checkpoint) or digest_mismatch(checkpoint, [WEIGHTS_FILE])
        if problem:
            raise TrainingError(f"train.init_from: {checkpoint}: {problem}")
        state = self._load(checkpoint, WEIGHTS_FILE)
        try:
            load_model_state(self.module, state, self.parallel)
        except (RuntimeError, ValueError, KeyError) as error:
            raise TrainingError(
                f"train.init_from: {checkpoint} does not fit this model: "
                f"{_misfit(self.module, state, error)}; start from a checkpoint of a model with "
                "these model settings, or drop train.init_from"
            ) from None
        if self.average is not None:  # the average starts from the weights training starts from
            self.average = WeightAverage(self.module, self.config.ema_decay)
        self.tokens_before = self._tokens_trained_before(checkpoint)
        return checkpoint

    def _tokens_trained_before(self, checkpoint: Path) -> int | None:
        """What `checkpoint`'s weights were trained on, as its `checkpoint.json` records it.
        For one written before checkpoints recorded it: its own training's count (in its
        state) where that training started fresh, its config naming no `init_from`; None
        where it continued another, whose count is lost."""
        info = read_info(checkpoint)
        if "tokens_trained" in info:
            count = info["tokens_trained"]
            return count if isinstance(count, int) else None
        try:
            config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
            if config.get("init_from"):
                return None
            count = self._load(checkpoint, "state.pt").get("tokens_seen")
        except (OSError, ValueError, AttributeError, CheckpointUnreadable):
            return None
        return count if isinstance(count, int) else None

    @property
    def tokens_trained(self) -> int | None:
        """The targets the weights have been trained on, over every training they continue:
        the tokens seen here plus those of the checkpoint training started from (`init_from`),
        which counted its own in the same way. None where that checkpoint did not record it."""
        return None if self.tokens_before is None else self.tokens_before + self.tokens_seen

    def resume_or_initialize(self, folder: Path, init_from: Path | None = None) -> str:
        """What a training process does first: resume from `folder`'s newest checkpoint (a run
        that was interrupted), else start from `init_from`'s weights if given, else from the
        fresh model. Returns what happened, for the log."""
        if self.ranks.is_main:
            recover_staging(folder)
        # The others list the checkpoints once rank 0 has put back one a killed write moved
        # aside: listing meanwhile, ranks could resume from different steps.
        all_gather(None)
        resumed = self.resume_latest(folder)
        if resumed is None and self.ranks.is_main:
            # A run killed before its first step checkpoint logged steps this one logs again.
            self._drop_metrics_after(0)
        if resumed is not None:
            outcome = f"resumed from {resumed} (step {self.step})"
        elif init_from is not None:
            outcome = f"weights initialised from {self.initialize_from(init_from)}"
        else:
            outcome = "started afresh"
        self._info("train: %s", outcome)
        return outcome

    def _drop_metrics_after(self, step: int) -> None:
        path = self.metrics_path
        if not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if _logged_step(line) is not None
                and _logged_step(line) <= step]  # fmt: skip
        if len(kept) == len(lines):
            return
        write_text_atomically(path, "".join(line + "\n" for line in kept))


def _misfit(module: torch.nn.Module, weights: dict, error: Exception) -> str:
    """How the checkpoint's `weights` do not fit `module`, in one line: the first tensor of
    another shape, and how many differ, lack or are extra. (PyTorch's message lists every
    tensor: 11,000 characters on 70 lines for a 4-layer GPT of another width.) The error's
    first line where the weights fit (it was the optimizer state that did not)."""
    expected = module.state_dict()
    misfit = tensor_misfit(expected, weights)
    said = []
    if misfit.reshaped:
        first = misfit.reshaped[0]
        said.append(f"{first} is {list(weights[first].shape)} in it, "
                    f"{list(expected[first].shape)} in this model")  # fmt: skip
        if len(misfit.reshaped) > 1:
            said[-1] += f" ({len(misfit.reshaped)} tensors differ in shape)"
    if misfit.missing:
        said.append(
            f"it lacks {len(misfit.missing)} tensors of this model ({misfit.missing[0]}, …)"
        )
    if misfit.extra:
        said.append(f"it has {len(misfit.extra)} tensors this model has not ({misfit.extra[0]}, …)")
    return "; ".join(said) or describe(error)


# What `resume` reads from `state.pt` whatever version wrote it.
STATE_KEYS = ("step", "torch", "data", "best_val_loss", "evaluations_without_improvement")


def _lacking_state(state) -> str | None:
    """Why a loaded `state.pt` is not a training state (in words), or None when it is."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a training state"
    missing = [key for key in STATE_KEYS if key not in state]
    return f"it lacks {', '.join(missing)}" if missing else None


def _for_rank(state: dict, key: str, rank: int):
    """A generator state saved per rank (`<key>_per_rank`), or, in a checkpoint written before
    each rank kept its own, the one saved for all."""
    per_rank = state.get(f"{key}_per_rank")
    return per_rank[rank] if per_rank and rank < len(per_rank) else state[key]


def _logged_step(line: str) -> int | None:
    """The step of a metrics line, or None for a line cut short by a killed process."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
