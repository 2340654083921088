"""The count-based bigram: next-token probabilities are the normalised counts of each pair in
the training data, with add-k smoothing. No gradient descent: `fit` is closed form. On a names
list with a character tokenizer whose only extra symbol is end-of-text (used as the start and the
end mark), the table is makemore's 27×27."""

from __future__ import annotations

import torch

from lm.models.base import LanguageModel
from lm.models.config import BigramCountConfig


class BigramCountModel(LanguageModel):
    def __init__(self, config: BigramCountConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.block_size = 1
        self.register_buffer("counts", torch.zeros(vocab_size, vocab_size, dtype=torch.float64))
        # The normalised table, kept between calls: renormalising a 4000×4000 table on every
        # forward made scoring ~50× slower than a lookup. Stale once the counts change.
        self._table: torch.Tensor | None = None
        self._table_key: tuple | None = None

    @torch.no_grad()
    def fit(self, tokens: torch.Tensor) -> BigramCountModel:
        """Count every adjacent pair of a token stream (documents separated by end-of-text,
        which so serves as the start mark of the next document)."""
        tokens = tokens.long().flatten()
        pairs = tokens[:-1] * self.vocab_size + tokens[1:]
        flat = torch.bincount(pairs, minlength=self.vocab_size * self.vocab_size)
        self.counts += flat.view(self.vocab_size, self.vocab_size).double()
        return self

    def log_probs(self) -> torch.Tensor:
        smoothed = self.counts + self.config.smoothing
        return (smoothed / smoothed.sum(dim=1, keepdim=True)).log()

    def _log_table(self) -> torch.Tensor:
        # In-place updates (fit, load_state_dict) bump the tensor's version; .to() moves it.
        key = (self.counts._version, self.counts.data_ptr(), self.counts.device)
        if self._table is None or self._table_key != key:
            self._table, self._table_key = self.log_probs().float(), key
        return self._table

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self._log_table()[idx]  # log-probabilities are valid logits
        return logits, self.loss_of(logits, targets)
