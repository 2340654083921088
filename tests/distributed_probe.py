"""Run by tests/test_distributed.py as every rank of `torchrun`: trains through the real
`lm.train_worker`, then writes `rank-<r>.json` beside the checkpoints with the window starts
this rank read, a digest of its full weights and of its random generator's state, so the test
can compare the ranks."""

from __future__ import annotations

import gc
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from lm import train_worker
from lm.distributed import full_model_state, leave_process_group
from lm.train import TokenBatches

_sample_starts = TokenBatches.sample_starts


def _recording_sample_starts(self: TokenBatches) -> list[int]:
    starts = _sample_starts(self)
    self.read = [*getattr(self, "read", []), *starts]
    return starts


def weights_digest(state: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def local_bytes(tensor: torch.Tensor) -> int:
    """Bytes of `tensor` this process stores: its own shard of an FSDP DTensor."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def main(work: Path) -> None:
    train_worker.configure_logging()
    TokenBatches.sample_starts = _recording_sample_starts
    trainer, _ = train_worker.train_in(work)
    # Under FSDP only rank 0 receives the gathered weights; every rank must take part.
    state = full_model_state(trainer.module, trainer.parallel)
    report = {
        "rank": trainer.ranks.rank,
        "world_size": trainer.ranks.world_size,
        "starts": trainer.train_batches.read,
        "share": [trainer.train_batches.low, trainer.train_batches.high],
        "weights": weights_digest(state) if state else None,
        # Where this rank's dropout masks had got to: its own stream, resumed exactly.
        "generator": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
        # What this rank holds of the weights and of AdamW's moments (its shard under FSDP).
        "weights_bytes": sum(local_bytes(p) for p in trainer.module.parameters()),
        "moments_bytes": sum(
            local_bytes(state[moment])
            for state in trainer.optimizer.state.values()
            for moment in ("exp_avg", "exp_avg_sq")
        ),
    }
    (work / f"rank-{trainer.ranks.rank}.json").write_text(json.dumps(report))


def leave(work: Path, completed: bool) -> None:
    """Leave the process group as `lm.train_worker` does, then write `left-<rank>.json` with
    the distributed wrappers still alive: none may outlive the group (see
    `leave_process_group`)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    leave_process_group(completed)
    alive = sum(isinstance(o, DistributedDataParallel | FSDPModule) for o in gc.get_objects())
    (work / f"left-{rank}.json").write_text(json.dumps({"wrappers_alive": alive}))


if __name__ == "__main__":
    completed = False
    try:
        main(Path(sys.argv[1]))
        completed = True
    finally:
        leave(Path(sys.argv[1]), completed)
