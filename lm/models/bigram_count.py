"""The count-based bigram: next-token probabilities are the normalised counts of each pair in
the training data, with add-k smoothing. No gradient descent: `fit` is closed form. On a names
list with a character tokenizer whose only extra symbol is end-of-text (used as the start and the
end mark), the table is makemore's 27×27."""

from __future__ import annotations

import numpy as np
import torch

from lm.models.base import LanguageModel
from lm.models.config import BigramCountConfig

# The add-k values `tuned_smoothing` chooses from (the first wins a tie).
SMOOTHING_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)


def tuned_smoothing(train_tokens: np.ndarray, vocab_size: int, held_out: float = 0.1) -> float:
    """The add-k of `SMOOTHING_GRID` that predicts held-out text best: counts from the first
    90% of the train split, scored on its last 10% (val and test stay unseen). The baseline
    every model is reported beside uses it. Add-1, the textbook value and makemore's on 27
    characters, spreads a whole count over each of V next tokens: with a 4000-piece vocabulary
    it drowns the counts, so the baseline would get worse as the vocabulary grows and handicap
    itself in a tokenizer comparison. Sparse counts: memory grows with the pairs seen, not V²."""
    tokens = np.asarray(train_tokens, dtype=np.int64)
    cut = int(len(tokens) * (1 - held_out))
    if cut < 2 or len(tokens) - cut < 2:
        return SMOOTHING_GRID[0]
    fit, check = tokens[:cut], tokens[cut - 1 :]  # the pair across the cut is held out
    keys, counts = np.unique(fit[:-1] * vocab_size + fit[1:], return_counts=True)
    row_totals = np.bincount(fit[:-1], minlength=vocab_size)[check[:-1]]
    pairs = check[:-1] * vocab_size + check[1:]
    at = np.minimum(np.searchsorted(keys, pairs), len(keys) - 1)
    seen = np.where(keys[at] == pairs, counts[at], 0)

    def held_out_nll(k: float) -> float:
        return float(-np.mean(np.log((seen + k) / (row_totals + k * vocab_size))))

    return min(SMOOTHING_GRID, key=held_out_nll)


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
        tokens = tokens.long().flatten().to(self.counts.device)
        pairs = tokens[:-1] * self.vocab_size + tokens[1:]
        # Added in place, one per pair: a dense bincount (int64) and its float64 copy were two
        # more V×V tables at the peak (3x the table's memory; 24 GB at V = 32000).
        ones = torch.ones(1, dtype=self.counts.dtype, device=self.counts.device)
        self.counts.view(-1).index_add_(0, pairs, ones.expand(len(pairs)))
        return self

    def log_probs(self) -> torch.Tensor:
        """log P(next | token) with add-k smoothing. k = 0 is the maximum-likelihood table: a
        pair never counted has probability 0 (log -inf), and a token never counted as the
        first of a pair (never in the text, or only at its end) predicts uniformly, the limit of
        add-k as k → 0, where dividing its zero counts by their zero total gave NaN logits."""
        probs = self.counts + self.config.smoothing  # the one V×V table made: the rest in place
        totals = probs.sum(dim=1, keepdim=True)
        probs.div_(totals)
        probs[totals.squeeze(1) == 0] = 1.0 / self.vocab_size
        return probs.log_()

    def _log_table(self) -> torch.Tensor:
        # In-place updates (fit, load_state_dict) bump the tensor's version; .to() moves it.
        key = (self.counts._version, self.counts.data_ptr(), self.counts.device)
        if self._table is None or self._table_key != key:
            self._table, self._table_key = self.log_probs().float(), key
        return self._table

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self._log_table()[idx]  # log-probabilities are valid logits
        return logits, self.loss_of(logits, targets)
