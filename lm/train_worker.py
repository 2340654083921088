"""A training process: `python -m lm.train_worker WORK_DIR`, alone or as one rank of `torchrun`.

The train stage writes `WORK_DIR/worker.json` (model and train settings, the token files, the
tokenizer digest, the checkpoint to start from) and runs this module under `torchrun` when
`train.nproc_per_node > 1`. Every rank trains (see `lm.distributed`); rank 0 writes the
checkpoints and metrics into WORK_DIR and, at the end, `result.json`. Run again on the same
folder after a crash, it resumes from the newest checkpoint that loads.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import numpy as np
from pydantic import Field

from lm.atomic_files import staging_path, write_text_atomically
from lm.models.config import ModelConfig
from lm.parent_death import die_with_parent
from lm.strict_model import StrictModel
from lm.train_config import TrainConfig, TrainingError

SPEC_FILE = "worker.json"
# The word2vec matrix a model is built from, for one that reads one (`WorkerSpec.vectors`).
PIECE_VECTORS_FILE = "piece_vectors.pt"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"


class TokenFile(StrictModel):
    """A flat little-endian array of token ids (the body of a token shard)."""

    path: str
    dtype: str = Field(description="numpy dtype, e.g. '<u2'")

    def open(self) -> np.ndarray:
        path = Path(self.path)
        if not path.is_file():
            raise TrainingError(f"{path}: token file missing")
        return np.memmap(path, dtype=np.dtype(self.dtype), mode="r")


class WorkerSpec(StrictModel):
    model: ModelConfig = Field(discriminator="kind")
    train: TrainConfig
    vocab_size: int = Field(ge=1)
    train_tokens: TokenFile
    val_tokens: TokenFile
    tokenizer_digest: str | None = None
    eot_id: int | None = Field(None, description="the shards' end-of-text id")
    init_from: str | None = Field(None, description="absolute path of a checkpoint to start from")
    vectors: str | None = Field(
        None, description="absolute path of the word2vec matrix (vocab × width) the model reads"
    )


def write_spec(work: Path, spec: WorkerSpec) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(work / SPEC_FILE, spec.model_dump_json(indent=2))


def read_spec(work: Path) -> WorkerSpec:
    path = work / SPEC_FILE
    try:
        return WorkerSpec.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"{path}: no worker spec; the train stage writes it") from None
    except ValueError as error:
        raise TrainingError(f"{path}: invalid worker spec ({error})") from None


def read_result(work: Path) -> dict:
    path = work / RESULT_FILE
    if not path.is_file():
        raise TrainingError(f"{path}: the training processes ended without a result")
    return json.loads(path.read_text(encoding="utf-8"))


def train_in(work: Path):
    """Train the model `work/worker.json` describes, in `work`; returns the Trainer and the
    TrainResult. Rank 0 writes `result.json`."""
    import torch

    from lm.machine import device_name
    from lm.models.registry import build_model
    from lm.train import Trainer

    spec = read_spec(work)
    vectors = torch.load(spec.vectors, weights_only=True) if spec.vectors else None
    torch.manual_seed(spec.train.seed)  # the same initial weights on every rank
    network = build_model(spec.model, spec.vocab_size, vectors=vectors, eot_id=spec.eot_id)
    trainer = Trainer(network, spec.train, spec.train_tokens.open(), spec.val_tokens.open(), work,
                      work / METRICS_FILE, tokenizer_digest=spec.tokenizer_digest,
                      eot_id=spec.eot_id)  # fmt: skip
    init_from = Path(spec.init_from) if spec.init_from else None
    trainer.resume_or_initialize(work, init_from)
    seen_before = trainer.tokens_seen  # by the run this one resumes
    result = trainer.train()
    if trainer.ranks.is_main:
        summary = {
            "steps": result.step,
            "tokens_seen": result.tokens_seen,
            "tokens_this_run": result.tokens_seen - seen_before,
            "step_seconds": result.step_seconds,
            "steady_tokens": result.steady_tokens,
            "steady_seconds": result.steady_seconds,
            "tokens_trained": result.tokens_trained,
            "best_val_loss": result.best_val_loss,
            "stopped_early": result.stopped_early,
            "parameters": trainer.module.num_params(),
            "device": str(trainer.device),
            "device_name": device_name(trainer.device),
            "threads": torch.get_num_threads(),
            "world_size": trainer.ranks.world_size,
            "parallel": trainer.parallel,
        }
        write_text_atomically(work / RESULT_FILE, json.dumps(summary, indent=2))
    return trainer, result


def write_vectors(path: Path, matrix) -> Path:
    """The word2vec matrix for the ranks, written atomically."""
    import torch

    staging = staging_path(path)
    torch.save(matrix, staging)
    os.replace(staging, path)
    return path


def configure_logging() -> int:
    """Log lines to stderr, each naming its rank: rank 0 tells the story, the others speak
    only of trouble. Returns this process's rank."""
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return rank


def main(argv: list[str] | None = None) -> int:
    # A rank must not outlive torchrun's agent: SIGKILL, as nothing it holds needs saving (the
    # checkpoints are atomic), and no handler can catch or delay it.
    die_with_parent(signal.SIGKILL)
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lm.train_worker WORK_DIR", file=sys.stderr)
        return 2
    rank = configure_logging()
    from lm.distributed import leave_process_group

    completed = False
    try:
        train_in(Path(args[0]))
        completed = True
    except TrainingError as error:
        print(f"rank {rank}: TrainingError: {error}", file=sys.stderr)
        return 1
    finally:
        leave_process_group(completed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
