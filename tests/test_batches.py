"""Document rows (`train.samples = "documents"`): each row one whole document from its start
mark, padding never scored, long documents cropped, ranks on disjoint documents, and a trainer
that learns from them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lm.batches import IGNORED_TARGET, DocumentBatches, TokenBatches, make_batches
from lm.models.config import GPTConfig
from lm.models.registry import build_model
from lm.train import Trainer, TrainingError
from lm.train_config import TrainConfig

EOT = 0
CPU = torch.device("cpu")


def shard_of(documents: list[list[int]]) -> np.ndarray:
    """Documents as the encode stage writes them: each followed by the end-of-text id."""
    return np.array([t for document in documents for t in [*document, EOT]], dtype=np.uint16)


DOCUMENTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11]]


def test_every_row_is_one_whole_document_from_its_start_mark():
    batches = DocumentBatches(shard_of(DOCUMENTS), block_size=8, batch=64, seed=0, eot_id=EOT)
    x, y = batches.next(CPU)
    assert x.shape == y.shape == (64, 8)
    seen = set()
    for inputs, targets in zip(x.tolist(), y.tolist(), strict=True):
        scored = [t for t in targets if t != IGNORED_TARGET]
        document = scored[:-1]
        assert document in DOCUMENTS and scored[-1] == EOT  # the whole document, then its end
        assert inputs[: len(scored)] == [EOT, *document]  # from the start mark
        assert inputs[len(scored) :] == [EOT] * (8 - len(scored))  # padding after the end
        assert targets[len(scored) :] == [IGNORED_TARGET] * (8 - len(scored))
        seen.add(tuple(document))
    assert seen == {tuple(d) for d in DOCUMENTS}


def test_a_document_longer_than_the_block_gives_a_crop_of_itself():
    long = list(range(1, 30))
    batches = DocumentBatches(shard_of([long]), block_size=8, batch=16, seed=0, eot_id=EOT)
    x, y = batches.next(CPU)
    stream = [EOT, *long, EOT]
    assert (y != IGNORED_TARGET).all()
    for inputs, targets in zip(x.tolist(), y.tolist(), strict=True):
        start = stream.index(inputs[0]) if inputs[0] != EOT else 0
        assert inputs == stream[start : start + 8] and targets == stream[start + 1 : start + 9]


def test_ranks_draw_from_disjoint_documents():
    documents = [[d + 1] * 3 for d in range(10)]
    shares = [DocumentBatches(shard_of(documents), 4, 64, 0, EOT, rank=r, world_size=2)
              for r in range(2)]  # fmt: skip
    drawn = [set(share.next(CPU)[1][:, 0].tolist()) for share in shares]
    assert drawn[0] == {1, 2, 3, 4, 5} and drawn[1] == {6, 7, 8, 9, 10}


def test_a_split_without_a_complete_document_is_refused_naming_the_split():
    with pytest.raises(TrainingError, match=r"the val split holds no complete document"):
        DocumentBatches(np.array([5, 6, 7], dtype=np.uint16), 4, 2, 0, EOT, split="val")


def test_a_restored_cursor_reads_the_same_rows():
    batches = DocumentBatches(shard_of(DOCUMENTS * 5), 4, 8, seed=3, eot_id=EOT)
    state = batches.state()
    first = batches.next(CPU)
    batches.restore(state)
    again = batches.next(CPU)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_the_config_picks_the_sampler():
    tokens = shard_of(DOCUMENTS * 5)
    windows = make_batches(tokens, TrainConfig(block_size=4), 0, EOT)
    documents = make_batches(tokens, TrainConfig(block_size=4, samples="documents"), 0, EOT)
    assert isinstance(windows, TokenBatches) and isinstance(documents, DocumentBatches)


def names_like(count: int, seed: int) -> list[list[int]]:
    """Short documents with a learnable shape: a letter, then letters counting up from it."""
    rng = np.random.default_rng(seed)
    return [list(range(first, first + length))
            for first, length in zip(rng.integers(1, 10, count), rng.integers(2, 6, count),
                                     strict=True)]  # fmt: skip


def test_a_model_trained_on_documents_scores_padding_nowhere_and_learns(tmp_path):
    torch.set_num_threads(1)
    settings = TrainConfig(
        max_steps=60, micro_batch=16, global_batch=16, block_size=8, samples="documents",
        learning_rate=1e-2, warmup_steps=0, eval_every=60, eval_batches=2, checkpoint_every=60,
        device="cpu",
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16), 16)
    trainer = Trainer(model, settings, shard_of(names_like(300, 0)), shard_of(names_like(60, 1)),
                      tmp_path, eot_id=EOT)  # fmt: skip
    x, y = trainer.val_sample[0]
    logits, loss = model(x, y)
    scored = y != IGNORED_TARGET
    by_hand = F.cross_entropy(logits[scored], y[scored])
    assert scored.sum() < scored.numel()  # the sample has padding...
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)  # ...and it is not scored
    before = trainer.evaluate()
    trainer.train()
    assert trainer.evaluate() < 0.6 * before


@pytest.mark.parametrize(
    "split, remedy", [("train", "lower split.val and split.test"), ("val", "raise split.val")]
)
def test_a_split_shorter_than_the_block_names_settings_that_exist(split, remedy):
    # It said "raise split.train", a key there is not: train is what val and test leave.
    with pytest.raises(TrainingError, match=f"the {split} split has 10 tokens.*{remedy} or add"):
        TokenBatches(np.arange(10), block_size=16, batch=2, seed=0, split=split)


def test_windows_for_a_fixed_context_model_carry_real_history_scored_nowhere(tmp_path):
    """An MLP's windows began with padding that reads as a document's start: its first targets
    were predicted from made-up context, unlike when scored. Now `context - 1` real tokens come
    before each window, as context only."""
    from lm.models.config import MLPConfig

    tokens = np.arange(1, 400, dtype=np.uint16)  # no end-of-text: one long text
    windows = TokenBatches(tokens, block_size=6, batch=32, seed=3, history=2)
    x, y = windows.next(CPU)
    assert x.shape == y.shape == (32, 8)
    assert (x[:, 1:] == x[:, :-1] + 1).all()  # consecutive text, history included
    assert (y[:, :2] == IGNORED_TARGET).all() and (y[:, 2:] == x[:, 2:] + 1).all()
    assert int((x[:, 0] >= 1).sum()) == 32  # never before the text's start
    # A trainer gives an MLP its context's history, for training and for the val sample.
    settings = TrainConfig(max_steps=2, micro_batch=4, global_batch=4, block_size=6,
                           eval_batches=1, device="cpu")  # fmt: skip
    model = build_model(MLPConfig(context=4, hiddens=[8]), 400)
    trainer = Trainer(model, settings, tokens, tokens, tmp_path, eot_id=EOT)
    assert trainer.train_batches.history == 3
    _, val_targets = trainer.val_sample[0]
    assert val_targets.shape[1] == 9 and (val_targets[:, :3] == IGNORED_TARGET).all()
    gpt = build_model(GPTConfig(block_size=6, n_layer=1, n_head=2, n_embd=8), 400)
    assert Trainer(gpt, settings, tokens, tokens, tmp_path / "g").train_batches.history == 0


def test_windows_reach_every_start_in_their_share_and_no_further():
    """A window of `block_size` inputs needs one token more for its last target: with n
    tokens the starts run 0 … n - block_size - 1, the first and the last both drawn, and each
    rank's windows stay inside its share (history before a window included)."""
    tokens = np.arange(40)
    smallest = TokenBatches(np.arange(9), block_size=8, batch=3, seed=0)  # one window fits
    x, y = smallest.next(torch.device("cpu"))
    assert x.tolist() == [list(range(8))] * 3 and y.tolist() == [list(range(1, 9))] * 3
    for rank, history in itertools.product(range(2), (0, 3)):
        batches = TokenBatches(tokens, block_size=8, batch=64, seed=rank, rank=rank,
                               world_size=2, history=history)  # fmt: skip
        starts = {s for _ in range(5) for s in batches.sample_starts()}
        low, high = 20 * rank, 20 * (rank + 1)
        assert starts == set(range(low + history, high - 8)), (rank, history)


def test_a_share_of_exactly_block_size_tokens_is_refused_in_words_not_a_torch_error():
    """`block_size` inputs need one token more for the last target: a share of exactly
    `block_size` (+ history) tokens holds no window, and must be refused as such, not reach
    `torch.randint(0)` ("random_ expects 'from' to be less than 'to'")."""
    with pytest.raises(TrainingError, match="the train split has 8 tokens"):
        TokenBatches(np.arange(8), block_size=8, batch=2, seed=0)
    # With the context a fixed-context model reads before each window, said as such: "11
    # tokens, not more than block_size 8" was a puzzle.
    with pytest.raises(TrainingError, match=r"has 11 tokens, not more than block_size 8 plus "
                       "the 3 tokens of context read before each window: lower"):  # fmt: skip
        TokenBatches(np.arange(11), block_size=8, batch=2, seed=0, history=3)


def test_ranks_draw_their_windows_and_documents_from_generators_of_their_own():
    """Rank r's generator is seeded apart from rank 0's: with one seed for all, every rank
    drew the same offsets into its share, step after step (the same documents in the same
    order, each rank's batch a shifted copy of the others')."""
    tokens = np.arange(2000)
    shares = [TokenBatches(tokens, block_size=4, batch=16, seed=0, rank=r, world_size=2)
              for r in range(2)]  # fmt: skip
    offsets = [[s - share.low for s in share.sample_starts()] for share in shares]
    assert offsets[0] != offsets[1]
    documents = [[d + 1] * 3 for d in range(40)]
    rows = [DocumentBatches(shard_of(documents), 4, 32, 0, EOT, rank=r, world_size=2)
            for r in range(2)]  # fmt: skip
    firsts = [(row.next(CPU)[1][:, 0] - 1 - 20 * rank).tolist() for rank, row in enumerate(rows)]
    assert firsts[0] != firsts[1]


def test_a_cursor_reseeded_for_a_step_reads_other_batches_than_at_the_start():
    """A checkpoint resumed by another number of processes reseeds the cursor for its step:
    seeded as at the start, it read again the very batches the run began with."""
    fresh = TokenBatches(np.arange(2000), block_size=4, batch=16, seed=5)
    resumed = TokenBatches(np.arange(2000), block_size=4, batch=16, seed=5)
    resumed.reseed(100)
    assert fresh.sample_starts() != resumed.sample_starts()
    again = TokenBatches(np.arange(2000), block_size=4, batch=16, seed=5)
    again.reseed(100)
    resumed.reseed(100)
    assert again.sample_starts() == resumed.sample_starts()  # reproducible


def test_every_crop_of_a_long_document_is_drawn_its_end_mark_included():
    """A document longer than the block is cropped at a random offset: every offset, the last
    one (the crop that ends with the end-of-text target) as well, or the end of every long
    document would never be trained on."""
    long = list(range(1, 30))
    batches = DocumentBatches(shard_of([long]), block_size=8, batch=256, seed=0, eot_id=EOT)
    firsts = set(batches.next(CPU)[0][:, 0].tolist())
    stream = [EOT, *long, EOT]
    assert firsts == set(stream[: len(stream) - 8])


def test_document_rows_start_and_pad_with_the_end_of_text_id_whatever_it_is():
    """The tests above use 0 as end-of-text, which is also what zero-filled padding reads as:
    with another id the start mark and the padding are that id, not 0."""
    eot = 7
    tokens = np.array([1, 2, eot, 3, eot], dtype=np.uint16)
    x, y = DocumentBatches(tokens, block_size=5, batch=16, seed=0, eot_id=eot).next(CPU)
    rows = {tuple(inputs) for inputs in x.tolist()}
    assert rows == {(eot, 1, 2, eot, eot), (eot, 3, eot, eot, eot)}
    assert {tuple(t) for t in y.tolist()} == {
        (1, 2, eot, IGNORED_TARGET, IGNORED_TARGET),
        (3, eot, IGNORED_TARGET, IGNORED_TARGET, IGNORED_TARGET),
    }
