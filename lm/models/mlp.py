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
        evaluation) over the scored positions only: the padding after a short document (more
        than half the rows on a names list) or a window's unscored history would otherwise shift
        every scored position's normalisation (`masked_batch_norm`)."""
        if not (self.training and self.config.norm == "batchnorm" and targets is not None):
            return self.hidden(features)
        scored = targets.reshape(-1, 1) != IGNORED_TARGET
        for layer in self.hidden:
            if isinstance(layer, nn.BatchNorm1d):
                features = masked_batch_norm(layer, features, scored)
            else:
                features = layer(features)
        return features


def masked_batch_norm(norm: nn.BatchNorm1d, rows: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """`norm` in training over the `kept` rows (a (rows, 1) bool mask) alone, every row
    normalised by their statistics, as `nn.BatchNorm1d` over those rows would be (the biased
    variance to normalise, the unbiased one into the running average). No shape depends on
    the mask and nothing is read back to the host: `torch.compile` traces it once (selecting
    the rows recompiled for every count of them, and a CUDA step waited on the read)."""
    weight = kept.to(rows.dtype)
    count = weight.sum()
    mean = (rows * weight).sum(0) / count.clamp(min=1)
    variance = ((rows - mean) ** 2 * weight).sum(0) / count.clamp(min=1)
    with torch.no_grad():
        momentum = norm.momentum  # MLPModel's are built with one (None would mean a plain mean)
        norm.running_mean.lerp_(mean.detach().to(norm.running_mean.dtype), momentum)
        unbiased = variance.detach() * count / (count - 1).clamp(min=1)
        norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), momentum)
        norm.num_batches_tracked.add_(1)
    normalised = (rows - mean) * torch.rsqrt(variance + norm.eps)
    return normalised * norm.weight + norm.bias
