"""Bengio et al. (2003), "A Neural Probabilistic Language Model": the embeddings of the previous
`context` tokens, concatenated, through hidden layers (tanh) to next-token logits. Positions
before the start of the sequence read the end-of-text id, as makemore pads with its start mark
(`FixedContextModel`)."""

from __future__ import annotations

import torch
from torch import nn

from lm.batches import IGNORED_TARGET
from lm.models.base import FixedContextModel, context_windows
from lm.models.config import MLPConfig


class MLPModel(FixedContextModel):
    def __init__(self, config: MLPConfig, vocab_size: int, pad_id: int = 0):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.block_size = config.context
        self._init_padding(pad_id)
        self.embedding = nn.Embedding(vocab_size, config.n_embd)
        layers: list[nn.Module] = []
        width = config.context * config.n_embd
        for hidden in config.hiddens:
            layers.append(nn.Linear(width, hidden, bias=config.norm == "none"))
            if config.norm == "batchnorm":
                layers.append(nn.BatchNorm1d(hidden))
            elif config.norm == "layernorm":
                layers.append(nn.LayerNorm(hidden))
            layers.append(nn.Tanh())
            width = hidden
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width, vocab_size)
        with torch.no_grad():  # small last layer: initial loss close to ln(vocab)
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        batch, time = idx.shape
        context = self.config.context
        windows = context_windows(idx, context, self.pad_id)
        features = self.embedding(windows).reshape(batch * time, -1)
        logits = self.head(self._hidden_of(features, targets)).view(batch, time, -1)
        return logits, self.loss_of(logits, targets)

    def _hidden_of(self, features: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Batch norm in training takes its statistics (and its running averages, used at
        evaluation) over the rows it is given: only the scored positions are given it, since the
        padding after a short document (more than half the rows on a names list) or a window's
        unscored history would otherwise shift every scored position's normalisation. Unscored
        rows are left at zero; their logits are never scored."""
        if not (self.training and self.config.norm == "batchnorm" and targets is not None):
            return self.hidden(features)
        scored = targets.reshape(-1) != IGNORED_TARGET
        if bool(scored.all()) or int(scored.sum()) < 2:  # one row has no batch statistics
            return self.hidden(features)
        hidden = self.hidden(features[scored])
        return hidden.new_zeros(features.shape[0], hidden.shape[1]).index_put((scored,), hidden)
