"""An exponential moving average of a model's weights (`train.ema_decay`).

Averaging the weights over the last few hundred steps smooths out the noise of the last
updates: on small data, where a model overfits while it still learns, the average scores
better held-out loss than the weights it averages. The trainer evaluates, keeps as `best` and
publishes the average; the raw weights go on training and are saved beside it, so a resumed run
continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """`average ← d·average + (1 − d)·weights` after every optimizer step, with the warm-up
    `d = min(decay, (1 + step) / (10 + step))` so that early averages are not dominated by the
    random initial weights."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.parameters = [p for p in module.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.parameters], 1 - decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own again after it."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.parameters]
            for parameter, average in zip(self.parameters, self.average, strict=True):
                parameter.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, saved in zip(self.parameters, raw, strict=True):
                    parameter.copy_(saved)

    def averaged_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """`module.state_dict()` with the averaged weights in place of the trained ones (tied
        weights resolve to the same average; buffers are the module's)."""
        by_storage = {p.data_ptr(): a for p, a in zip(self.parameters, self.average, strict=True)}
        return {
            name: by_storage.get(tensor.data_ptr(), tensor).detach().clone()
            for name, tensor in module.state_dict().items()
        }

    def load(self, module: nn.Module, averaged_state: dict[str, torch.Tensor]) -> None:
        """Take the average back from a state dict `averaged_state` wrote."""
        names = {p.data_ptr(): name for name, p in module.state_dict(keep_vars=True).items()}
        with torch.no_grad():
            for parameter, average in zip(self.parameters, self.average, strict=True):
                average.copy_(averaged_state[names[parameter.data_ptr()]])
