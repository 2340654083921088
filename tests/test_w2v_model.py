"""The `w2v` model and word2vec-initialised embeddings: rows align with token ids, missing pieces
are seeded, widths are mapped or refused, frozen vectors stay fixed, and the model learns."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors

from lm.config import TokenizerConfig, Word2VecConfig
from lm.models.config import GPTConfig, MLPConfig, W2VConfig
from lm.models.embeddings import embedding_matrix, load_piece_vectors, save_keyed_vectors
from lm.models.registry import build_model
from lm.models.w2v import w2v_parameter_count
from lm.tokenizer import CharTokenizer, train_tokenizer
from lm.train import Trainer, make_optimizer
from lm.train_config import TrainConfig
from lm.word2vec import SentenceStream, piece_sentences, train_word2vec
from tests.helpers import prose

CHARS = list("abcdefghijklmnop")
TOKENIZER = CharTokenizer(CHARS)  # 16 chars + end-of-text + <unk>
VOCAB = TOKENIZER.vocab_size
SMALL = W2VConfig(context=3, vector_size=8, hiddens=[32])


def keyed_vectors(pieces: list[str], width: int, seed: int = 0, rank: int | None = None):
    """Hand-made vectors for some pieces; `rank` confines them to a subspace of that size."""
    rng = np.random.default_rng(seed)
    if rank is None:
        weights = rng.normal(size=(len(pieces), width))
    else:
        basis = rng.normal(size=(rank, width))
        weights = rng.normal(size=(len(pieces), rank)) @ basis + rng.normal(size=width)
    vectors = KeyedVectors(width)
    vectors.add_vectors(pieces, weights.astype(np.float32))
    return vectors


def covered_vectors(vectors: KeyedVectors) -> tuple[list[int], torch.Tensor]:
    ids = [i for i in range(VOCAB) if TOKENIZER.piece(i) in vectors.key_to_index]
    return ids, torch.from_numpy(np.stack([vectors[TOKENIZER.piece(i)] for i in ids])).double()


# -- the w2v model -------------------------------------------------------------------------


def test_changing_a_token_never_changes_logits_before_it():
    torch.manual_seed(0)
    model = build_model(SMALL, VOCAB).eval()
    idx = torch.randint(0, VOCAB, (2, 12))
    changed = idx.clone()
    changed[:, 6] = (changed[:, 6] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(idx)[0], model(changed)[0]
    assert torch.equal(before[:, :6], after[:, :6])  # before the change: untouched
    assert not torch.allclose(before[:, 6:9], after[:, 6:9])  # the change is in their window
    assert torch.equal(before[:, 9:], after[:, 9:])  # beyond the 3-token window


@pytest.mark.parametrize("with_vectors", [False, True], ids=["random", "word2vec"])
def test_initial_loss_is_close_to_log_vocabulary(with_vectors):
    torch.manual_seed(1)
    vectors = None
    if with_vectors:
        # at five times their scale: the model brings them back to unit RMS
        vectors = embedding_matrix(keyed_vectors(CHARS, 8), TOKENIZER, 8, seed=1).matrix * 5
    model = build_model(SMALL, VOCAB, vectors=vectors)
    idx, targets = torch.randint(0, VOCAB, (2, 8, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(VOCAB)) < 0.1
    if with_vectors:  # by one factor: every angle and relative length kept
        scale = vectors.square().mean().sqrt()
        assert model.vectors.square().mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)
        assert torch.allclose(model.vectors * scale, vectors, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "fine-tuned"])
def test_parameter_count_matches_the_closed_form(freeze):
    config = W2VConfig(context=4, vector_size=6, hiddens=[20, 12], freeze=freeze)
    model = build_model(config, VOCAB)
    by_hand = (4 * 6 * 20 + 20) + (20 * 12 + 12) + (12 * VOCAB + VOCAB)
    by_hand += 0 if freeze else VOCAB * 6
    assert model.num_params() == w2v_parameter_count(config, VOCAB) == by_hand


def test_frozen_vectors_are_a_saved_buffer_and_fine_tuned_ones_a_parameter():
    frozen = build_model(SMALL, VOCAB)
    tuned = build_model(SMALL.model_copy(update={"freeze": False}), VOCAB)
    assert "vectors" in dict(frozen.named_buffers()) and "vectors" in frozen.state_dict()
    assert "vectors" not in dict(frozen.named_parameters())
    assert "vectors" in dict(tuned.named_parameters())


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "fine-tuned"])
def test_a_training_step_moves_the_vectors_only_when_fine_tuned(freeze):
    torch.manual_seed(2)
    vectors = embedding_matrix(keyed_vectors(CHARS[:10], 8), TOKENIZER, 8, seed=2).matrix
    model = build_model(SMALL.model_copy(update={"freeze": freeze}), VOCAB, vectors=vectors)
    before_vectors = model.vectors.detach().clone()
    before_hidden = model.hidden[0].weight.detach().clone()
    optimizer = make_optimizer(model, TrainConfig(learning_rate=1e-2), torch.device("cpu"))
    idx, targets = torch.randint(0, VOCAB, (2, 4, 12))
    model(idx, targets)[1].backward()
    optimizer.step()
    assert not torch.equal(model.hidden[0].weight, before_hidden)  # the step did train
    unchanged = torch.equal(model.vectors.detach(), before_vectors)
    assert unchanged == freeze


def test_vectors_of_another_width_are_refused_with_both_sizes():
    with pytest.raises(ValueError, match=r"\(18, 5\).*\(18, 8\).*model.vector_size"):
        build_model(SMALL, VOCAB, vectors=torch.ones(VOCAB, 5))


@pytest.mark.parametrize("make", ["zeros", "nan", "numpy"])
def test_vectors_that_start_nothing_are_refused_and_numpy_ones_are_taken(make):
    # All-zero or NaN vectors gave NaN logits (rescaled by their RMS); numpy's an AttributeError.
    gpt = GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=8, init_embeddings="word2vec")
    for config in (SMALL, gpt):
        vectors = torch.randn(VOCAB, 8)
        if make == "numpy":
            model = build_model(config, VOCAB, vectors=vectors.numpy(), eot_id=0)
            logits, _ = model(torch.zeros(1, 4, dtype=torch.long))
            assert torch.isfinite(logits).all()
            continue
        vectors = (
            torch.zeros(VOCAB, 8)
            if make == "zeros"
            else vectors.index_fill(0, torch.tensor([3]), math.nan)
        )
        with pytest.raises(ValueError, match="all zero" if make == "zeros" else "NaN or infinite"):
            build_model(config, VOCAB, vectors=vectors)


def test_a_vocabulary_or_end_of_text_id_that_cannot_be_is_refused_when_building():
    with pytest.raises(ValueError, match="eot_id 21 is outside the vocabulary of 18"):
        build_model(MLPConfig(), VOCAB, eot_id=VOCAB + 3)  # an IndexError at the first forward
    with pytest.raises(ValueError, match="vocab_size 0: a model needs a vocabulary of 1 or more"):
        build_model(MLPConfig(), 0)


def test_a_vectors_file_of_another_size_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "vectors.npy"
    save_keyed_vectors(keyed_vectors(CHARS, 5), path)
    with pytest.raises(ValueError, match=r"vectors.npy: the word2vec vectors have 5 dimensions "
                                         r"but model.vector_size is 8"):  # fmt: skip
        load_piece_vectors(SMALL, path, TOKENIZER, seed=0)


def test_a_missing_vectors_file_says_which_stage_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the word2vec stage"):
        load_piece_vectors(SMALL, tmp_path / "vectors.npy", TOKENIZER, seed=0)


@pytest.mark.parametrize(
    "config", [MLPConfig(), GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=8)]
)
def test_models_that_take_no_vectors_refuse_them(config):
    with pytest.raises(ValueError, match="takes no word2vec vectors"):
        build_model(config, VOCAB, vectors=torch.zeros(VOCAB, 8))


# -- vectors → embedding matrix ------------------------------------------------------------


def test_rows_of_covered_ids_are_their_pieces_vectors_and_the_rest_seeded(caplog):
    vectors = keyed_vectors([*CHARS[::2], "not-a-piece"], 8)
    with caplog.at_level(logging.INFO, logger="lm.models.embeddings"):
        first = embedding_matrix(vectors, TOKENIZER, 8, seed=7)
    ids, expected = covered_vectors(vectors)
    assert ids == list(range(0, 16, 2))
    assert torch.equal(first.covered.nonzero().flatten(), torch.tensor(ids))
    assert torch.equal(first.matrix[ids], expected.float())
    assert first.coverage == pytest.approx(8 / VOCAB)
    assert "8 of 18 pieces have a vector (44.4%), 10 get random vectors (seed 7)" in caplog.text
    assert "only 44.4% of the non-byte pieces have a vector" in caplog.text  # under half
    again, other = (embedding_matrix(vectors, TOKENIZER, 8, seed=s) for s in (7, 8))
    assert torch.equal(again.matrix, first.matrix)
    missing = ~first.covered
    assert torch.equal(other.matrix[ids], first.matrix[ids])
    assert not torch.allclose(other.matrix[missing], first.matrix[missing])


def test_rows_of_pieces_without_a_vector_start_at_the_scale_of_those_with_one():
    # Raw word2vec entries are far from N(0, 1) (RMS 0.24 on the bundled text; here 10).
    vectors = keyed_vectors(CHARS[::2], 8)
    vectors.vectors *= 10
    embedding = embedding_matrix(vectors, TOKENIZER, 8, seed=7)
    found = embedding.matrix[embedding.covered].square().mean().sqrt()
    random = embedding.matrix[~embedding.covered].square().mean().sqrt()
    assert 5 < found < 20 and 0.7 < random / found < 1.4


def test_vectors_of_no_piece_are_a_clear_error():
    with pytest.raises(ValueError, match=r"none of the tokenizer's 18 pieces .*input = \"pieces\""):
        embedding_matrix(keyed_vectors(["river", "valley"], 8), TOKENIZER, 8, seed=0)


def test_one_vector_to_narrow_is_a_clear_error_not_nan_embeddings():
    # PCA centres the rows it maps: one row became zero, and every random row with it.
    from lm.word2vec import Word2VecError

    too_few = r"only 1 of the tokenizer's 18 pieces has a word2vec vector: too few to map 16 "
    with pytest.raises(Word2VecError, match=too_few + "dimensions to 8"):
        embedding_matrix(keyed_vectors(CHARS[:1], 16), TOKENIZER, 8, seed=0)
    one_wider = embedding_matrix(keyed_vectors(CHARS[:1], 8), TOKENIZER, 16, seed=0).matrix
    assert torch.isfinite(one_wider).all() and one_wider.abs().sum() > 0  # mapped, not centred


def test_gpt_token_rows_start_as_the_vectors_scaled_by_one_factor():
    torch.manual_seed(3)
    vectors = keyed_vectors(CHARS[:12], 16)
    embedding = embedding_matrix(vectors, TOKENIZER, 16, seed=3)
    config = GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16, init_embeddings="word2vec")
    model = build_model(config, VOCAB, vectors=embedding.matrix)
    ids, expected = covered_vectors(vectors)
    rows = model.token_embedding.weight.detach().double()
    ratio = rows[ids] / expected
    assert torch.allclose(ratio, ratio[0, 0].expand_as(ratio), rtol=1e-5)
    assert 0.015 < rows.square().mean().sqrt() < 0.025  # the scale of the random init
    assert model.head.weight is model.token_embedding.weight  # tied: the head starts the same
    idx, targets = torch.randint(0, VOCAB, (2, 4, 8))
    assert abs(model(idx, targets)[1].item() - math.log(VOCAB)) < 0.1


def test_wider_model_maps_vectors_keeping_every_angle_and_length():
    vectors = keyed_vectors(CHARS, 6)
    ids, original = covered_vectors(vectors)
    mapped = embedding_matrix(vectors, TOKENIZER, 16, seed=4).matrix[ids].double()
    assert torch.allclose(mapped @ mapped.T, original @ original.T, atol=1e-4)


def test_narrower_model_keeps_the_distances_of_vectors_within_its_width():
    # 24-dimensional vectors that vary in 10 directions only: PCA to 12 loses nothing.
    vectors = keyed_vectors(CHARS, 24, rank=10)
    ids, original = covered_vectors(vectors)
    mapped = embedding_matrix(vectors, TOKENIZER, 12, seed=5).matrix[ids].double()
    assert torch.allclose(torch.cdist(mapped, mapped), torch.cdist(original, original), atol=1e-3)
    # and on vectors of full rank, it keeps the most variance a 12-dimensional map can
    full = keyed_vectors(CHARS, 24, seed=1)
    _, original = covered_vectors(full)
    kept = embedding_matrix(full, TOKENIZER, 12, seed=5).matrix[ids].double().var(0).sum()
    best = torch.linalg.svdvals(original - original.mean(0))[:12].square().sum() / 15
    assert kept == pytest.approx(best.item(), rel=1e-4)


# -- a real run: tokenizer → word2vec on pieces → w2v through the trainer -------------------


@pytest.fixture(scope="module")
def pieces_run():
    documents = [prose(i, 150).replace(". ", ".\n") for i in range(40)]
    tokenizer = train_tokenizer(documents, TokenizerConfig(vocab_size=320, threads=1))
    config = Word2VecConfig(input="pieces", vector_size=16, min_count=3, epochs=3)
    sentences = SentenceStream(lambda: documents, piece_sentences(tokenizer))
    vectors = train_word2vec(sentences, config)
    return documents, tokenizer, vectors


def test_pieces_sentences_are_the_shard_encoding_cut_at_newlines(pieces_run):
    documents, tokenizer, _ = pieces_run
    sentences = list(piece_sentences(tokenizer)(documents[0]))
    pieces = [tokenizer.piece(i) for i in tokenizer.encode(documents[0])]
    assert [p for s in sentences for p in s] == [p for p in pieces if p != "\n"]
    assert len(sentences) == pieces.count("\n") + 1


def test_word2vec_on_pieces_is_keyed_by_the_tokenizers_pieces(pieces_run):
    _, tokenizer, vectors = pieces_run
    pieces = {tokenizer.piece(i): i for i in range(tokenizer.vocab_size)}
    assert set(vectors.index_to_key) <= set(pieces)
    embedding = embedding_matrix(vectors, tokenizer, 16, seed=0)
    for key in vectors.index_to_key:
        assert torch.equal(embedding.matrix[pieces[key]], torch.tensor(vectors[key]))
    assert embedding.coverage == pytest.approx(len(vectors.index_to_key) / tokenizer.vocab_size)


def test_w2v_on_piece_vectors_learns_through_the_trainer(pieces_run, tmp_path):
    documents, tokenizer, vectors = pieces_run
    save_keyed_vectors(vectors, tmp_path / "vectors.npy")
    config = W2VConfig(context=3, vector_size=16, hiddens=[64])
    embedding = load_piece_vectors(config, tmp_path / "vectors.npy", tokenizer, seed=0)
    tokens = np.array([t for d in documents for t in [*tokenizer.encode(d), tokenizer.eot_id]])
    settings = TrainConfig(max_steps=40, micro_batch=8, global_batch=8, block_size=32,
                           learning_rate=1e-2, warmup_steps=2, eval_every=40, eval_batches=2,
                           checkpoint_every=40, device="cpu")  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config, tokenizer.vocab_size, vectors=embedding.matrix)
    frozen = model.vectors.clone()
    split = int(len(tokens) * 0.9)
    result = Trainer(model, settings, tokens[:split], tokens[split:], tmp_path / "run").train()
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 1.0
    assert torch.equal(model.vectors, frozen)
