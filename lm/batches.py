"""What the trainer reads: batches of (inputs, targets) drawn from a token shard.

Two ways to cut a shard into rows, chosen by `train.samples`:
- `windows` (nanoGPT's): random windows of the flat stream, documents and their separators
  included. Right for long documents and for text read as one stream (Shakespeare).
- `documents` (makemore's): each row is one document from its start, as a corpus of short
  documents (names, titles) is scored one document at a time. Windows of the stream would
  instead train on names cut in half with unrelated names as context, and rarely show the model
  the situation it is scored in: a start mark with nothing before it.

Both draw from a seeded generator whose state is the data cursor: a checkpoint saves it, so a
resumed run reads exactly the batches it would have. With several ranks, rank r of W draws only
from its own contiguous share of the shard, with its own generator: the ranks read disjoint data.
"""

from __future__ import annotations

import numpy as np
import torch

from lm.train_config import TrainConfig, TrainingError

# Rank r draws from generator seed + r·stride: distinct streams whatever the seed.
RANK_SEED_STRIDE = 1_000_003
IGNORED_TARGET = -100  # cross_entropy's ignore_index: padding after a document is not scored


def scored_targets(targets: torch.Tensor) -> int:
    """How many targets a batch scores (padding after a document is not scored)."""
    return int((targets != IGNORED_TARGET).sum())


def to_device(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`rows` on `device`. To a GPU through contiguous pinned memory, so that the copy is
    queued behind the work already there instead of holding up the host: a window's inputs
    and targets are strided views, which a pinned copy would keep strided, and a strided
    source is first made contiguous in ordinary (pageable) memory."""
    if device.type == "cuda":
        pinned = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        return pinned.copy_(rows).to(device, non_blocking=True)
    return rows.to(device)


class SeededCursor:
    """A sampler's data cursor: a generator seeded per rank, whose state a checkpoint saves."""

    def __init__(self, seed: int, rank: int):
        self.seed = seed + RANK_SEED_STRIDE * rank
        self.generator = torch.Generator().manual_seed(self.seed)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def restore(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def reseed(self, step: int) -> None:
        """A fresh but reproducible cursor for `step`, when a saved one cannot be used."""
        self.generator.manual_seed(self.seed + step)


class TokenBatches(SeededCursor):
    """Random windows of a token array, from a seeded generator whose state is the data cursor:
    saving it in a checkpoint makes a resumed run read exactly the batches it would have.

    With several ranks, rank r of W draws only from the contiguous share
    `[n·r/W, n·(r+1)/W)` of the n tokens (windows never cross into a neighbour's share), with
    its own generator: the ranks read disjoint data, and each share stays a contiguous run of
    text rather than scattered windows."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch: int, seed: int,
                 split: str = "train", rank: int = 0, world_size: int = 1,
                 history: int = 0):  # fmt: skip
        self.low = len(tokens) * rank // world_size
        self.high = len(tokens) * (rank + 1) // world_size
        share = self.high - self.low
        if share <= block_size + history:
            where = f"the {split} split"
            if world_size > 1:
                where = f"rank {rank}'s share of the {split} split ({len(tokens)} over "
                where += f"{world_size} processes)"
            # There is no split.train: train is what split.val and split.test leave.
            more = "lower split.val and split.test" if split == "train" else f"raise split.{split}"
            # A fixed-context model's windows also read `history` tokens before them: a split
            # of 10 tokens was said to be "not more than block_size 8".
            needed = f"block_size {block_size}"
            if history:
                needed += f" plus the {history} tokens of context read before each window"
            raise TrainingError(
                f"{where} has {share} tokens, not more than {needed}: lower "
                "the block_size (model.block_size of a gpt, train.block_size of other models), "
                f"{more} or add data"
            )
        super().__init__(seed, rank)
        self.tokens = tokens
        self.block_size = block_size
        self.batch = batch
        # Tokens read before each window, as context only (their targets are not scored): a
        # fixed-context model (MLP, w2v) then sees real text before a window's first targets,
        # as it does when scored, not padding that reads as a document's start.
        self.history = history

    def sample_starts(self) -> list[int]:
        """The positions (in the whole array) where the next batch's windows start."""
        span = self.high - self.low - self.block_size - self.history
        starts = torch.randint(span, (self.batch,), generator=self.generator)
        return [self.low + self.history + start for start in starts.tolist()]

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        history = self.history
        rows = np.stack([self.tokens[s - history : s + self.block_size + 1]
                         for s in self.sample_starts()])  # fmt: skip
        window = torch.from_numpy(rows.astype(np.int64))
        inputs, targets = window[:, :-1], window[:, 1:]
        if history:
            targets = targets.clone()
            targets[:, :history] = IGNORED_TARGET
        return to_device(inputs, device), to_device(targets, device)


class DocumentBatches(SeededCursor):
    """Rows that each hold one document from its start: the start mark (end-of-text), the
    document and its end mark, as inputs `[eot, d1 … dn]` and targets `[d1 … dn, eot]`, padded
    after the end (inputs with end-of-text, targets with `IGNORED_TARGET`, so padding is never
    scored; a causal model cannot let it change the scored positions). A document longer than
    the block gives a random block-long crop of itself instead.

    Documents are the spans between end-of-text ids, which the encode stage writes after every
    document. With several ranks, rank r of W draws from documents `[n·r/W, n·(r+1)/W)`."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch: int, seed: int, eot_id: int,
                 split: str = "train", rank: int = 0, world_size: int = 1):  # fmt: skip
        ends = np.flatnonzero(np.asarray(tokens) == eot_id)
        starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else ends
        share = slice(len(ends) * rank // world_size, len(ends) * (rank + 1) // world_size)
        self.starts, self.ends = starts[share], ends[share]
        if len(self.ends) == 0:
            where = f"the {split} split"
            if world_size > 1:
                where = f"rank {rank}'s share of the {split} split ({len(ends)} documents over "
                where += f"{world_size} processes)"
            raise TrainingError(
                f"{where} holds no complete document (none ends with the end-of-text id "
                f'{eot_id}): train.samples = "documents" needs documents; use "windows"'
            )
        super().__init__(seed, rank)
        self.tokens = tokens
        self.block_size = block_size
        self.batch = batch
        self.eot_id = eot_id

    def row(self, document: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of one document, `block_size` long each."""
        start, end = int(self.starts[document]), int(self.ends[document])
        sequence = np.concatenate([[self.eot_id], self.tokens[start : end + 1]]).astype(np.int64)
        if len(sequence) > self.block_size + 1:  # too long: a random crop
            offset = int(torch.randint(len(sequence) - self.block_size, (1,),
                                       generator=self.generator))  # fmt: skip
            sequence = sequence[offset : offset + self.block_size + 1]
        inputs = np.full(self.block_size, self.eot_id, dtype=np.int64)
        targets = np.full(self.block_size, IGNORED_TARGET, dtype=np.int64)
        inputs[: len(sequence) - 1] = sequence[:-1]
        targets[: len(sequence) - 1] = sequence[1:]
        return inputs, targets

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = torch.randint(len(self.ends), (self.batch,), generator=self.generator).tolist()
        rows = [self.row(document) for document in chosen]
        x = torch.from_numpy(np.stack([inputs for inputs, _ in rows]))
        y = torch.from_numpy(np.stack([targets for _, targets in rows]))
        return to_device(x, device), to_device(y, device)


def make_batches(tokens: np.ndarray, config: TrainConfig, seed: int, eot_id: int | None,
                 split: str = "train", rank: int = 0, world_size: int = 1,
                 batch: int | None = None, history: int = 0):  # fmt: skip
    """The sampler `config.samples` names, over `tokens`, drawing `batch` rows at a time
    (default: `micro_batch`); windows with `history` tokens of context before each (a
    document's row starts at its start mark, and needs none)."""
    batch = config.micro_batch if batch is None else batch
    if config.samples == "documents":
        if eot_id is None:
            raise TrainingError('train.samples = "documents" needs the end-of-text id')
        return DocumentBatches(tokens, config.block_size, batch, seed, eot_id, split, rank,
                               world_size)  # fmt: skip
    return TokenBatches(tokens, config.block_size, batch, seed, split, rank, world_size, history)
