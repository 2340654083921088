"""The training engine: one loop for every gradient-trained model of the ladder.

What it does, after nanoGPT's train.py and torchtitan's small honest pieces: picks the device
(cuda > mps > cpu), AdamW with decay/no-decay groups (fused on CUDA), warmup then cosine or WSD
learning rate, gradient accumulation (micro-batch and global batch as separate knobs), gradient
clipping, optional bf16 autocast and `torch.compile`, evaluation on a fixed val sample every N
steps, early stopping with patience and minimum delta, a NaN/inf guard, metrics as JSON lines,
and a progress line with tokens/s and ETA.

Checkpoints are directories written to a staging name and renamed, with `DONE` written last
(after llm.c); they hold the weights (of the uncompiled module), optimizer state, RNG states,
the data cursor, the step and the metrics so far, so a resumed run continues exactly: N steps
equal N/2 + resume + N/2 on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from lm.models.base import LanguageModel
from lm.train_config import TrainConfig

logger = logging.getLogger("lm.train")
DONE_MARKER = "DONE"


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why."""


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio`, or WSD (warmup, stable, then a
    linear decay over the last `decay_fraction` of training), or constant."""
    peak, floor = config.learning_rate, config.learning_rate * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return peak
    if config.schedule == "wsd":
        decay_start = int(config.max_steps * (1 - config.decay_fraction))
        if step < decay_start:
            return peak
        progress = (step - decay_start) / max(config.max_steps - decay_start, 1)
        return peak + (floor - peak) * min(progress, 1.0)
    progress = (step - config.warmup_steps) / max(config.max_steps - config.warmup_steps, 1)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


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
    fused = device.type == "cuda"  # the fused kernel exists only on CUDA
    return torch.optim.AdamW(
        groups, lr=config.learning_rate, betas=(config.beta1, config.beta2), fused=fused
    )


class TokenBatches:
    """Random windows of a token array, from a seeded generator whose state is the data cursor:
    saving it in a checkpoint makes a resumed run read exactly the batches it would have."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch: int, seed: int,
                 split: str = "train"):  # fmt: skip
        if len(tokens) <= block_size:
            raise TrainingError(
                f"the {split} split has {len(tokens)} tokens, not more than block_size "
                f"{block_size}: lower block_size, raise split.{split} or add data"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch = batch
        self.generator = torch.Generator().manual_seed(seed)

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(
            len(self.tokens) - self.block_size, (self.batch,), generator=self.generator
        )
        rows = np.stack([self.tokens[s : s + self.block_size + 1] for s in starts.tolist()])
        window = torch.from_numpy(rows.astype(np.int64))
        return window[:, :-1].to(device), window[:, 1:].to(device)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def restore(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


@dataclass
class TrainResult:
    step: int
    best_val_loss: float
    stopped_early: bool
    losses: list[float] = field(default_factory=list)


def _checkpoints(folder: Path) -> list[Path]:
    complete = [p for p in folder.glob("step-*") if (p / DONE_MARKER).is_file()]
    return sorted(complete, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint; half-written ones are skipped with a warning."""
    if not folder.is_dir():
        return None
    for partial in folder.glob("step-*"):
        if not (partial / DONE_MARKER).is_file() and ".partial" not in partial.name:
            logger.warning("%s: incomplete checkpoint (no DONE marker), skipped", partial)
    found = _checkpoints(folder)
    return found[-1] if found else None


class Trainer:
    def __init__(
        self,
        model: LanguageModel,
        config: TrainConfig,
        train_tokens: np.ndarray,
        val_tokens: np.ndarray,
        out_dir: Path,
        metrics_path: Path | None = None,
    ):
        self.config = config
        self.device = pick_device(config.device)
        if self.device.type == "cuda":  # TF32 matmuls: fp32 accuracy for training, far faster
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(config.seed)
        self.model = model.to(self.device)
        self.module = self.model  # the uncompiled module: what checkpoints save
        if config.compile:
            try:
                self.model = torch.compile(self.model)
            except Exception as error:  # compile is an optimisation: fall back to eager
                logger.warning("torch.compile unavailable (%s); running eager", error)
        self.optimizer = make_optimizer(self.module, config, self.device)
        self.train_batches = TokenBatches(
            train_tokens, config.block_size, config.micro_batch, config.seed
        )
        # A fixed val sample: the same windows at every evaluation, so curves compare.
        val = TokenBatches(
            val_tokens, config.block_size, config.micro_batch, config.seed + 1, split="val"
        )
        self.val_sample = [val.next(self.device) for _ in range(config.eval_batches)]
        self.out_dir = out_dir
        self.metrics_path = metrics_path or out_dir / "metrics.jsonl"
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self.step = 0
        self.best_val_loss = math.inf
        self.evaluations_without_improvement = 0
        self.autocast = self._autocast_dtype()

    def _autocast_dtype(self) -> torch.dtype | None:
        precision = self.config.precision
        if precision == "fp32":
            return None
        if precision == "bf16" or (precision == "auto" and self.device.type == "cuda"):
            return torch.bfloat16
        return None

    def _forward(self, x, y, model: torch.nn.Module | None = None):
        model = model or self.model
        if self.autocast is None:
            return model(x, y)
        with torch.autocast(device_type=self.device.type, dtype=self.autocast):
            return model(x, y)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None = None) -> float:
        """Mean loss on the fixed val sample, of the model being trained or of another one
        (a baseline scored on exactly the same windows)."""
        model = model or self.model
        model.eval()
        losses = [self._forward(x, y, model)[1].item() for x, y in self.val_sample]
        self.model.train()
        return float(np.mean(losses))

    def _log(self, values: dict[str, float]) -> None:
        """Append this step's metrics with one open per call, not per value: it runs every
        step."""
        timestamp = datetime.now().isoformat()
        lines = [
            json.dumps({"key": key, "step": self.step, "value": float(value), "ts": timestamp})
            for key, value in values.items()
        ]
        with open(self.metrics_path, "a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")

    def train(self, until_step: int | None = None) -> TrainResult:
        """Train to `max_steps` (or stop after `until_step`, with a checkpoint there, as an
        interruption would: the schedule still spans `max_steps`)."""
        config = self.config
        last_step = min(until_step or config.max_steps, config.max_steps)
        losses: list[float] = []
        stopped_early = False
        tokens_per_step = config.global_batch * config.block_size
        started, last_report = time.monotonic(), time.monotonic()
        self.model.train()
        while self.step < last_step:
            rate = learning_rate(self.step, config)
            for group in self.optimizer.param_groups:
                group["lr"] = rate
            step_loss = 0.0
            for _ in range(config.accumulation_steps):
                x, y = self.train_batches.next(self.device)
                _, loss = self._forward(x, y)
                (loss / config.accumulation_steps).backward()
                step_loss += loss.item() / config.accumulation_steps
            if not math.isfinite(step_loss):
                raise TrainingError(
                    f"loss is {step_loss} at step {self.step}: lower learning_rate, or resume "
                    "from the last checkpoint"
                )
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), config.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            losses.append(step_loss)
            self._log({"train/loss": step_loss, "train/lr": rate})
            now = time.monotonic()
            if now - last_report > 5 or self.step == config.max_steps:
                rate_tokens = tokens_per_step * len(losses) / max(now - started, 1e-9)
                remaining = (config.max_steps - self.step) * tokens_per_step / rate_tokens
                logger.info(
                    "train: step %d/%d, loss %.4f, %.0f tokens/s, ETA %.0fs",
                    self.step, config.max_steps, step_loss, rate_tokens, remaining,
                )  # fmt: skip
                self._log({"train/tokens_per_s": rate_tokens})
                last_report = now
            if self.step % config.eval_every == 0 or self.step == config.max_steps:
                val_loss = self.evaluate()
                self._log({"val/loss": val_loss})
                improved = val_loss < self.best_val_loss - config.min_delta
                if improved:
                    self.best_val_loss = val_loss
                    self.evaluations_without_improvement = 0
                    self.save("best")
                else:
                    self.evaluations_without_improvement += 1
                if config.patience and self.evaluations_without_improvement >= config.patience:
                    logger.info("train: no val improvement in %d evaluations; stopping",
                                config.patience)  # fmt: skip
                    stopped_early = True
                    self.save(f"step-{self.step:08d}")
                    break
            if self.step % config.checkpoint_every == 0 or self.step in (
                last_step,
                config.max_steps,
            ):
                self.save(f"step-{self.step:08d}")
        return TrainResult(self.step, self.best_val_loss, stopped_early, losses)

    # -- checkpoints -------------------------------------------------------------------------

    def save(self, name: str) -> Path:
        final = self.out_dir / name
        staging = self.out_dir / f"{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        staging.mkdir(parents=True)
        torch.save(self.module.state_dict(), staging / "model.pt")
        torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(
            {
                "torch": torch.get_rng_state(),
                "data": self.train_batches.state(),
                "step": self.step,
                "best_val_loss": self.best_val_loss,
                "evaluations_without_improvement": self.evaluations_without_improvement,
            },
            staging / "state.pt",
        )
        (staging / "config.json").write_text(self.config.model_dump_json(indent=2))
        (staging / DONE_MARKER).write_text(str(self.step))
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
        if name.startswith("step-"):
            for old in _checkpoints(self.out_dir)[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)
        return final

    def resume(self, checkpoint: Path) -> None:
        self.module.load_state_dict(torch.load(checkpoint / "model.pt", weights_only=True))
        self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        state = torch.load(checkpoint / "state.pt", weights_only=True)
        torch.set_rng_state(state["torch"])
        self.train_batches.restore(state["data"])
        self.step = state["step"]
        self.best_val_loss = state["best_val_loss"]
        self.evaluations_without_improvement = state["evaluations_without_improvement"]
