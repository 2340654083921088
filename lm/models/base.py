"""The interface every model of the ladder shares (after makemore): `forward(idx, targets)`
returns `(logits, loss)`, so one training loop, one sampler and one evaluation serve them all."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Buffers that a checkpoint written before they were saved lacks: the module owning one
# supplies, on loading, the value the model had then (its `_load_from_state_dict`), so such a
# checkpoint still fits (`lm.checkpoint_fit.first_misfit`).
SUPPLIED_WHEN_MISSING = frozenset({"pad_token", "position_scale"})
# Buffers whose length is the data's, not the config's (the count bigram's pairs seen): a
# checkpoint's fits whatever its length.
DATA_SIZED = frozenset({"pair_ids", "pair_counts"})
# Tensors older checkpoints held in another form, which the module converts on loading: the
# count bigram's dense V×V table, now its pairs and totals.
CONVERTED_ON_LOAD = frozenset({"counts"})


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


class FixedContextModel(LanguageModel):
    """A model that reads the `context` tokens before each position (MLP, w2v). Positions
    before the start of a row read `pad_id`: the end-of-text id where the builder knows it
    (`build_model(..., eot_id=)`), as makemore pads with its start mark, so a row's start reads
    as a document boundary, never as made-up text. The id is saved with the weights (buffer
    `pad_token`), so a loaded model pads as it trained; checkpoints written before it was saved
    padded with 0."""

    def _init_padding(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.register_buffer("pad_token", torch.tensor(pad_id, dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "pad_token", torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.pad_id = int(self.pad_token)


def context_windows(idx: torch.Tensor, context: int, pad_id: int) -> torch.Tensor:
    """(batch, time, context): for each position t the tokens t-context+1 … t, padded with
    `pad_id` before the sequence starts. The fixed-window models (MLP, w2v) read these."""
    return F.pad(idx, (context - 1, 0), value=pad_id).unfold(1, context, 1)
