"""The count-based bigram: next-token probabilities are the normalised counts of each pair in
the training data, with add-k smoothing. No gradient descent: `fit` is closed form. On a names
list with a character tokenizer whose only extra symbol is end-of-text (used as the start and the
end mark), the table is makemore's 27×27."""

from __future__ import annotations

import math

import numpy as np
import torch

from lm.models.base import LanguageModel
from lm.models.config import BigramCountConfig

# The add-k values `tuned_smoothing` chooses from (the first wins a tie).
SMOOTHING_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
# Up to this many possible pairs (V², 128 MB of counts: a 4096-piece vocabulary), and no more
# than a few times the pairs counted, pairs are counted in a table in one linear pass; else by
# sorting them. Sorting 130 M pairs took 20 s, twice in the train stage and twice in evaluate.
DENSE_PAIRS = 1 << 24


def counted_in_a_table(pairs: int, vocab_size: int) -> bool:
    return vocab_size * vocab_size <= min(DENSE_PAIRS, 4 * pairs)


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
    counted = fit[:-1] * vocab_size + fit[1:]
    row_totals = np.bincount(fit[:-1], minlength=vocab_size)[check[:-1]]
    pairs = check[:-1] * vocab_size + check[1:]
    if counted_in_a_table(len(counted), vocab_size):
        seen = np.bincount(counted, minlength=vocab_size * vocab_size)[pairs]
    else:
        keys, counts = np.unique(counted, return_counts=True)
        at = np.minimum(np.searchsorted(keys, pairs), len(keys) - 1)
        seen = np.where(keys[at] == pairs, counts[at], 0)

    def held_out_nll(k: float) -> float:
        return float(-np.mean(np.log((seen + k) / (row_totals + k * vocab_size))))

    return min(SMOOTHING_GRID, key=held_out_nll)


class BigramCountModel(LanguageModel):
    """The pair counts are kept sparse: the pairs seen (sorted `a * V + b` ids and their
    counts) and each token's total as the first of a pair. A dense V×V float64 table was 8 GB
    at V = 32000 and 20 GB at GPT-2's 50,257, for a text that holds a few million pairs: every
    run computes this model as its baseline, so a common vocabulary size ran out of memory.
    Logits are built per position, as any model's: add-k's floor for the whole row, then the
    counted pairs of its token written over it."""

    def __init__(self, config: BigramCountConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.block_size = 1
        self.register_buffer("pair_ids", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("pair_counts", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("row_totals", torch.zeros(vocab_size, dtype=torch.float64))
        # Where each token's pairs start in `pair_ids` (V + 1 offsets), kept between calls;
        # stale once the counts change.
        self._rows: torch.Tensor | None = None
        self._rows_key: tuple | None = None

    @property
    def pairs_seen(self) -> int:
        return len(self.pair_ids)

    @torch.no_grad()
    def fit(self, tokens: torch.Tensor) -> BigramCountModel:
        """Count every adjacent pair of a token stream (documents separated by end-of-text,
        which so serves as the start mark of the next document), adding to the counts so far."""
        tokens = tokens.long().flatten().to(self.pair_ids.device)
        if len(tokens) and not 0 <= int(tokens.min()) <= int(tokens.max()) < self.vocab_size:
            # Refused before any count changes: a last id out of range was counted as another
            # pair (5→12 of 10 reads 6→2), one elsewhere failed after the table had changed.
            wrong = tokens[(tokens < 0) | (tokens >= self.vocab_size)][0]
            raise ValueError(
                f"bigram-count: token id {int(wrong)} is outside the vocabulary of "
                f"{self.vocab_size} (ids 0 to {self.vocab_size - 1})"
            )
        pairs = tokens[:-1] * self.vocab_size + tokens[1:]
        if counted_in_a_table(len(pairs), self.vocab_size):  # one linear pass
            table = torch.bincount(pairs, minlength=self.vocab_size**2).double()
            table.index_add_(0, self.pair_ids, self.pair_counts)
            ids = torch.nonzero(table).flatten()
            counts = table[ids]
        else:
            ids, inverse = torch.unique(torch.cat([self.pair_ids, pairs]), return_inverse=True)
            counts = torch.zeros(len(ids), dtype=torch.float64, device=ids.device)
            counts.index_add_(0, inverse[: len(self.pair_ids)], self.pair_counts)
            ones = torch.ones(1, dtype=torch.float64, device=ids.device)
            counts.index_add_(0, inverse[len(self.pair_ids) :], ones.expand(len(pairs)))
        self.pair_ids, self.pair_counts = ids, counts
        self._rows = None  # new tensors: a freed one's address may come back
        self.row_totals.index_add_(
            0, tokens[:-1], torch.ones_like(tokens[:-1], dtype=torch.float64)
        )
        return self

    def dense_counts(self) -> torch.Tensor:
        """The V×V table of counts (for a small vocabulary: tests, and a look at names)."""
        table = torch.zeros(self.vocab_size * self.vocab_size, dtype=torch.float64)
        table[self.pair_ids.cpu()] = self.pair_counts.cpu()
        return table.view(self.vocab_size, self.vocab_size)

    def _row_starts(self) -> torch.Tensor:
        key = (self.pair_ids._version, self.pair_ids.data_ptr(), self.pair_ids.device)
        if self._rows is None or self._rows_key != key:
            first = torch.div(self.pair_ids, self.vocab_size, rounding_mode="floor")
            every = torch.arange(self.vocab_size + 1, device=first.device)
            self._rows, self._rows_key = torch.searchsorted(first, every), key
        return self._rows

    def log_probs_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, V) float32: log P(next | token) for each of `tokens` (N,), with add-k smoothing.
        k = 0 is the maximum-likelihood table: a pair never counted has probability 0 (log
        -inf), and a token never counted as the first of a pair (never in the text, or only at
        its end) predicts uniformly, the limit of add-k as k → 0, where dividing its zero
        counts by their zero total gave NaN logits."""
        k, vocab = self.config.smoothing, self.vocab_size
        totals = self.row_totals[tokens] + k * vocab
        unseen = totals == 0  # k = 0 and a token never first of a pair
        floor = torch.log(torch.tensor(k, dtype=torch.float64)) - totals.log()
        floor = torch.where(unseen, -math.log(vocab), floor)
        logits = floor.float()[:, None].expand(len(tokens), vocab).clone()
        rows = self._row_starts()
        starts, ends = rows[tokens], rows[tokens + 1]
        lengths = ends - starts
        position = torch.repeat_interleave(torch.arange(len(tokens), device=tokens.device), lengths)
        first_entry = torch.cumsum(lengths, 0) - lengths
        entry = (
            starts[position]
            + torch.arange(len(position), device=tokens.device)
            - first_entry[position]
        )
        counted = (self.pair_counts[entry] + k).log() - totals[position].log()
        logits[position, self.pair_ids[entry] % vocab] = counted.float()
        return logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        # Each distinct token's row once (a frequent token has thousands of counted successors
        # and fills a batch's positions), then one gather, as a table lookup would.
        tokens, at = torch.unique(idx.reshape(-1).long(), return_inverse=True)
        logits = self.log_probs_of(tokens)[at].view(*idx.shape, self.vocab_size)
        return logits, self.loss_of(logits, targets)  # log-probabilities are valid logits

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint written when the counts were a dense V×V table: its nonzero pairs.
        dense = state_dict.pop(prefix + "counts", None)
        if dense is not None:
            flat = dense.reshape(-1)
            ids = flat.nonzero().flatten()
            state_dict.setdefault(prefix + "pair_ids", ids)
            state_dict.setdefault(prefix + "pair_counts", flat[ids].double())
            state_dict.setdefault(prefix + "row_totals", dense.sum(dim=1).double())
        # The pairs seen decide the buffers' lengths: take the checkpoint's before loading.
        for name in ("pair_ids", "pair_counts"):
            if prefix + name in state_dict:
                own = getattr(self, name)  # its dtype and device, the checkpoint's length
                length = state_dict[prefix + name].shape
                setattr(self, name, torch.empty(length, dtype=own.dtype, device=own.device))
        self._rows = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
