"""The neural bigram: the same table as `bigram-count`, learned by gradient descent as one
embedding row of logits per token."""

from __future__ import annotations

import torch
from torch import nn

from lm.models.base import LanguageModel
from lm.models.config import BigramConfig


class BigramModel(LanguageModel):
    def __init__(self, config: BigramConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.block_size = 1
        self.logits = nn.Embedding(vocab_size, vocab_size)
        nn.init.zeros_(self.logits.weight)  # uniform predictions: initial loss is ln(vocab)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.logits(idx)
        return logits, self.loss_of(logits, targets)
