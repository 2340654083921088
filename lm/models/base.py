"""The interface every model of the ladder shares (after makemore): `forward(idx, targets)`
returns `(logits, loss)`, so one training loop, one sampler and one evaluation serve them all."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LanguageModel(nn.Module):
    """`idx` is (batch, time) token ids; logits are (batch, time, vocab), predicting the next
    token at every position; `loss` is the mean cross-entropy when `targets` are given."""

    block_size: int
    vocab_size: int

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def lookup_params(self) -> int:
        """Parameters read by index, not multiplied: embedding tables that are not also an
        output layer's weight (a tied one is). They cost no FLOPs, so MFU leaves them out."""
        multiplied = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        return sum(m.weight.numel() for m in self.modules()
                   if isinstance(m, nn.Embedding) and id(m.weight) not in multiplied)  # fmt: skip

    @staticmethod
    def loss_of(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
        if targets is None:
            return None
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


def context_windows(idx: torch.Tensor, context: int, pad_id: int) -> torch.Tensor:
    """(batch, time, context): for each position t the tokens t-context+1 … t, padded with
    `pad_id` before the sequence starts. The fixed-window models (MLP, w2v) read these."""
    return F.pad(idx, (context - 1, 0), value=pad_id).unfold(1, context, 1)
