"""The model ladder: causality, the KV cache, parameter counts, and first losses."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from lm.checkpoint_fit import first_misfit
from lm.eval_config import SamplingConfig
from lm.generate import generate_ids
from lm.models.config import (
    BigramConfig,
    BigramCountConfig,
    GPTConfig,
    MLPConfig,
    W2VConfig,
    gpt_preset,
    uses_word2vec,
    word2vec_width,
)
from lm.models.gpt import POSITION_AMPLITUDE, drop_path, gpt_parameter_count, sinusoidal_table
from lm.models.registry import build_model

VOCAB = 37
VARIANTS = [
    GPTConfig(
        block_size=16, n_layer=2, n_head=4, n_embd=32, pos=pos, mlp=mlp, norm=norm,
        n_kv_heads=kv_heads, bias=bias, attention=attention,
    )
    for (pos, mlp, norm, kv_heads), bias, attention in zip(
        itertools.product(["sinusoidal", "learned", "rope"], ["gelu", "swiglu"],
                          ["layernorm", "rmsnorm"], [4, 2, 1]),
        itertools.cycle([True, False, True]),
        itertools.cycle(["sdpa", "math"]),
    )
]  # fmt: skip


def variant_id(config: GPTConfig) -> str:
    heads = {4: "mha", 2: "gqa", 1: "mqa"}[config.kv_heads]
    return f"{config.pos}-{config.mlp}-{config.norm}-{heads}-{config.attention}"


@pytest.mark.parametrize("config", VARIANTS, ids=variant_id)
def test_changing_a_token_never_changes_logits_before_it(config):
    torch.manual_seed(0)
    model = build_model(config, VOCAB).eval()
    idx = torch.randint(0, VOCAB, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % VOCAB
    with torch.no_grad():
        before, _ = model(idx)
        after, _ = model(changed)
    assert torch.allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert not torch.allclose(before[:, 7:], after[:, 7:], atol=1e-6)


PREFILL_THEN_ONE_AT_A_TIME = [(0, 5)] + [(t, t + 1) for t in range(5, 14)]
# Chunks after the first (start > 0, several queries) attend through the offset causal mask,
# which feeding one token a step never builds: a chunk at position 1 and longer ones.
SEVERAL_AT_A_TIME = [(0, 1), (1, 4), (4, 9), (9, 14)]


@pytest.mark.parametrize("chunks", [PREFILL_THEN_ONE_AT_A_TIME, SEVERAL_AT_A_TIME],
                         ids=["prefill-then-one-at-a-time", "several-at-a-time"])  # fmt: skip
@pytest.mark.parametrize("config", VARIANTS[::5], ids=variant_id)
def test_kv_cache_gives_the_logits_of_full_recomputation(config, chunks):
    torch.manual_seed(1)
    model = build_model(config, VOCAB).eval()
    idx = torch.randint(0, VOCAB, (2, 14))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(batch=2)
        steps = [model(idx[:, a:b], cache=cache)[0] for a, b in chunks]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_in_fp64_the_cache_and_full_recomputation_agree_to_fp64_rounding(attention):
    """Rotary positions and written-out attention keep an fp64 model in fp64 (they computed
    in fp32, which held a check against a reference implementation to about 1e-7)."""
    torch.manual_seed(2)
    config = GPTConfig(block_size=16, n_layer=2, n_head=4, n_embd=32, pos="rope", mlp="swiglu",
                       norm="rmsnorm", n_kv_heads=2, bias=False, attention=attention)  # fmt: skip
    model = build_model(config, VOCAB).double().eval()
    for parameter in model.parameters():  # weights of order 1: positions matter to the logits
        parameter.data.normal_(0, 0.5)
    idx = torch.randint(0, VOCAB, (2, 14))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(batch=2)
        steps = [model(idx[:, :5], cache=cache)[0]]
        steps += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(5, 14)]
    assert full.dtype == torch.float64 and full.abs().max() > 1
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-11)


def _greedy(model, prompt, new_tokens, use_cache):
    idx = prompt
    cache = model.new_cache(batch=prompt.size(0)) if use_cache else None
    step_input = idx
    for _ in range(new_tokens):
        logits, _ = model(step_input, cache=cache)
        token = logits[:, -1].argmax(dim=-1, keepdim=True)
        idx = torch.cat([idx, token], dim=1)
        step_input = token if use_cache else idx
    return idx


@pytest.mark.parametrize("preset", ["atinuke", "modern"])
def test_greedy_generation_with_the_cache_equals_recomputation(preset):
    torch.manual_seed(2)
    model = build_model(gpt_preset(preset, block_size=32, n_layer=2, n_embd=32), VOCAB).eval()
    prompt = torch.randint(0, VOCAB, (3, 4))
    with torch.no_grad():
        assert torch.equal(_greedy(model, prompt, 20, True), _greedy(model, prompt, 20, False))


@pytest.mark.parametrize("config", VARIANTS, ids=variant_id)
def test_parameter_count_matches_the_closed_form(config):
    model = build_model(config, VOCAB)
    assert model.num_params() == gpt_parameter_count(config, VOCAB)


def test_sinusoidal_positions_leave_the_tokens_audible_and_old_checkpoints_keep_amplitude_1():
    """The table goes in at POSITION_AMPLITUDE: at its own amplitude of 1 it was ~35x the token
    embeddings (std 0.02) and hid them. Weights saved before the scale was kept load with 1."""
    torch.manual_seed(0)
    config = gpt_preset("atinuke", block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = build_model(config, VOCAB).eval()
    idx = torch.randint(0, VOCAB, (2, 16))
    inputs = []
    model.blocks[0].register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    with torch.no_grad():
        logits = model(idx)[0]
        tokens = model.token_embedding(idx)
    positions = inputs[0] - tokens
    torch.testing.assert_close(positions[1], POSITION_AMPLITUDE * sinusoidal_table(16, 32))
    assert positions.square().mean().sqrt() < 5 * tokens.square().mean().sqrt()
    old = {k: v for k, v in model.state_dict().items() if k != "position_scale"}
    assert first_misfit(model.state_dict(), old) is None
    loaded = build_model(config, VOCAB).eval()
    loaded.load_state_dict(old)
    assert loaded.position_scale.item() == 1.0
    assert not torch.allclose(loaded(idx)[0], logits)


def test_untied_embeddings_add_one_vocabulary_matrix():
    tied = GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16)
    untied = tied.model_copy(update={"tie_embeddings": False})
    difference = build_model(untied, VOCAB).num_params() - build_model(tied, VOCAB).num_params()
    assert (
        difference
        == VOCAB * 16
        == gpt_parameter_count(untied, VOCAB) - gpt_parameter_count(tied, VOCAB)
    )


def test_stochastic_depth_rises_with_depth_and_leaves_the_eval_model_unchanged():
    deep = GPTConfig(block_size=8, n_layer=4, n_head=2, n_embd=16, drop_path=0.3)
    torch.manual_seed(5)
    model = build_model(deep, VOCAB)
    plain = build_model(deep.model_copy(update={"drop_path": 0.0}), VOCAB)
    plain.load_state_dict(model.state_dict())
    assert [block.drop_rate for block in model.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert model.num_params() == plain.num_params() == gpt_parameter_count(deep, VOCAB)
    idx = torch.randint(0, VOCAB, (64, 8))
    with torch.no_grad():
        assert torch.equal(model.eval()(idx)[0], plain.eval()(idx)[0])
        model.train()
        first, second = model(idx)[0], model(idx)[0]
    assert not torch.allclose(first, second)  # training draws a fresh set of skipped blocks


def test_stochastic_depth_skips_whole_sequences_and_keeps_the_expected_branch():
    torch.manual_seed(6)
    branch = torch.ones(4000, 5, 3)
    dropped = drop_path(branch, 0.25, training=True)
    per_sequence = dropped.flatten(1)
    assert torch.all(per_sequence == per_sequence[:, :1])  # a sequence is kept or skipped whole
    assert per_sequence[:, 0].unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert (per_sequence[:, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.04)
    assert drop_path(branch, 0.25, training=False) is branch


def test_stochastic_depth_in_training_never_lets_a_later_token_reach_an_earlier_one():
    model = build_model(GPTConfig(block_size=16, n_layer=3, n_head=2, n_embd=16, drop_path=0.5,
                                  dropout=0.1, pos="rope"), VOCAB).train()  # fmt: skip
    idx = torch.randint(0, VOCAB, (8, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % VOCAB
    with torch.no_grad():
        torch.manual_seed(7)
        before, _ = model(idx)
        torch.manual_seed(7)  # the same masks for both
        after, _ = model(changed)
    assert torch.allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert not torch.allclose(before[:, 7:], after[:, 7:], atol=1e-6)


def test_layers_writing_into_the_residual_stream_start_scaled_down_with_depth():
    """GPT-2's initialisation: 0.02 everywhere, over sqrt(2 · n_layer) for the attention and
    MLP output projections, so the residual stream's variance does not grow with depth."""
    torch.manual_seed(0)
    model = build_model(GPTConfig(block_size=8, n_layer=8, n_head=4, n_embd=256), 64)
    residual = {name: p for name, p in model.named_parameters()
                if name.endswith(("proj.weight", "down.weight"))}  # fmt: skip
    assert len(residual) == 2 * 8
    for name, weight in model.named_parameters():
        if weight.dim() == 2 and "norm" not in name:
            expected = 0.02 / math.sqrt(16) if name in residual else 0.02
            assert float(weight.detach().std()) == pytest.approx(expected, rel=0.05), name


@pytest.mark.parametrize(
    "config",
    [
        BigramConfig(),
        MLPConfig(context=3, hiddens=[64]),
        W2VConfig(context=3, vector_size=16, hiddens=[64]),
        gpt_preset("modern", n_embd=32),
    ],
    ids=["bigram", "mlp", "w2v", "gpt"],
)
def test_initial_loss_is_close_to_log_vocabulary(config):
    torch.manual_seed(3)
    model = build_model(config, VOCAB)
    idx, targets = torch.randint(0, VOCAB, (2, 8, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(VOCAB)) < 0.15


@pytest.mark.parametrize("config", [MLPConfig(context=3, hiddens=[64]),
                                    W2VConfig(context=3, vector_size=16, hiddens=[64])],
                         ids=["mlp", "w2v"])  # fmt: skip
def test_fixed_context_models_start_with_near_uniform_predictions(config):
    # The last layer starts a hundred times smaller than its default: every next token about
    # 1/V, not only on average over random targets (the default's logits are ±1).
    torch.manual_seed(3)
    logits, _ = build_model(config, VOCAB)(torch.randint(0, VOCAB, (8, 16)))
    assert (torch.log_softmax(logits, dim=-1) + math.log(VOCAB)).abs().max() < 0.05


def test_bigram_count_nll_equals_a_count_table_by_hand():
    tokens = torch.tensor([0, 1, 2, 1, 2, 0, 2, 2, 1, 0])
    model = build_model(BigramCountConfig(smoothing=1.0), 3).fit(tokens)
    counts = [[1.0] * 3 for _ in range(3)]  # add-one smoothing
    for a, b in zip(tokens[:-1].tolist(), tokens[1:].tolist(), strict=True):
        counts[a][b] += 1
    by_hand = -sum(
        math.log(counts[a][b] / sum(counts[a]))
        for a, b in zip(tokens[:-1].tolist(), tokens[1:].tolist(), strict=True)
    ) / (len(tokens) - 1)
    _, loss = model(tokens[:-1][None], tokens[1:][None])
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_bigram_count_without_smoothing_is_maximum_likelihood_and_uniform_after_unseen_tokens():
    """k = 0: counted rows are the pair frequencies (an uncounted pair is impossible); a token
    never seen before another predicts uniformly, the limit of add-k, rather than NaN."""
    tokens = torch.tensor([0, 1, 2, 1, 2, 0, 2, 2, 1, 3])  # 3 only ends the text; 4 never occurs
    model = build_model(BigramCountConfig(smoothing=0.0), 5).fit(tokens)
    logits, loss = model(torch.tensor([[2, 3, 4]]), torch.tensor([[1, 0, 4]]))
    assert logits[0, 0].exp().tolist() == pytest.approx([0.25, 0.5, 0.25, 0.0, 0.0])
    assert logits[0, 1:].exp().flatten().tolist() == pytest.approx([0.2] * 10)
    assert loss.item() == pytest.approx((math.log(2) + 2 * math.log(5)) / 3)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=5, seed=0)
    assert len(list(generate_ids(model, [4], sampling, eot_id=0))) > 0


class NewStorageBytes(TorchDispatchMode):
    """The bytes of every tensor storage the operations inside make (views, in-place results and
    their inputs' storages are not new)."""

    def __init__(self):
        super().__init__()
        self.made = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        given = {
            t.untyped_storage().data_ptr()
            for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }  # fmt: skip
        out = func(*args, **kwargs)
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given:
                self.made += t.untyped_storage().nbytes()
        return out


def test_bigram_count_holds_the_pairs_it_saw_not_a_vocabulary_squared_table():
    """A dense V×V float64 table was 8 GB at V = 32000 (20 GB at GPT-2's 50,257), made by every
    run as its baseline: the counts are the pairs seen, and scoring makes only the logits of
    the positions asked for, as any model does."""
    vocab = 32000
    tokens = torch.randint(0, vocab, (20_000,))
    model = build_model(BigramCountConfig(smoothing=0.5), vocab)
    with NewStorageBytes() as fitting:
        model.fit(tokens)
    with NewStorageBytes() as scoring:
        logits, _ = model(tokens[None, :10])
    logits_bytes = 10 * vocab * 4
    assert fitting.made < 200 * len(tokens)  # the pairs' ids and counts: a few values a token
    assert scoring.made < 3 * logits_bytes
    assert int(model.pair_counts.sum()) == int(model.row_totals.sum()) == len(tokens) - 1
    assert model.pairs_seen <= len(tokens) - 1
    # Exactly the add-k table, where the pairs were counted and where they were not.
    first, second = tokens[0].item(), tokens[1].item()
    total = model.row_totals[first].item() + 0.5 * vocab
    row = logits[0, 0].double()
    counted = (model.pair_counts[model.pair_ids == first * vocab + second].item() + 0.5) / total
    assert row[second].exp().item() == pytest.approx(counted, rel=1e-6)
    never = next(b for b in range(vocab) if not (model.pair_ids == first * vocab + b).any())
    assert row[never].exp().item() == pytest.approx(0.5 / total, rel=1e-6)
    assert row.exp().sum().item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("wrong", [[4, 5, 12], [12, 1], [1, -1, 2]], ids=["last", "first", "neg"])
def test_bigram_count_refuses_an_id_outside_its_vocabulary_before_counting(wrong):
    # A last id of 12 in a vocabulary of 10 was counted as the pair 6→2 (a row summing to 2);
    # one elsewhere raised an IndexError after the pair table had changed.
    model = build_model(BigramCountConfig(smoothing=0.1), 10).fit(torch.tensor([1, 2, 3, 1, 2]))
    before = (model.pair_ids.clone(), model.pair_counts.clone(), model.row_totals.clone())
    with pytest.raises(ValueError, match=r"token id (12|-1) is outside the vocabulary of 10"):
        model.fit(torch.tensor(wrong))
    after = (model.pair_ids, model.pair_counts, model.row_totals)
    assert all(torch.equal(old, new) for old, new in zip(before, after, strict=True))


def test_a_count_bigram_saved_as_a_dense_table_still_loads():
    tokens = torch.tensor([0, 1, 2, 1, 2, 0, 2, 2, 1, 3])
    model = build_model(BigramCountConfig(smoothing=0.1), 5).fit(tokens)
    old = build_model(BigramCountConfig(smoothing=0.1), 5)
    old.load_state_dict({"counts": model.dense_counts()})  # as checkpoints held it before
    idx = torch.tensor([[0, 1, 2, 3, 4]])
    assert torch.equal(old(idx)[0], model(idx)[0])
    # A table of another vocabulary is still told apart before loading, and its size read.
    from lm.checkpoint_fit import first_misfit, trained_vocab_size

    larger = build_model(BigramCountConfig(smoothing=0.1), 7)
    table = {"counts": model.dense_counts()}
    assert first_misfit(larger.state_dict(), table) == (
        "row_totals is [5] in the weights but [7] by model.json"
    )
    assert trained_vocab_size(BigramCountConfig(smoothing=0.1), larger, table) == 5


def test_mlp_sees_only_its_context_window():
    torch.manual_seed(4)
    model = build_model(MLPConfig(context=3, hiddens=[32]), VOCAB).eval()
    idx = torch.randint(0, VOCAB, (1, 10))
    changed = idx.clone()
    changed[0, 2] = (changed[0, 2] + 1) % VOCAB
    before, after = model(idx)[0], model(changed)[0]
    assert torch.allclose(before[0, :2], after[0, :2])  # before the change
    assert not torch.allclose(before[0, 2:5], after[0, 2:5])  # inside the window
    assert torch.allclose(before[0, 5:], after[0, 5:])  # beyond the window


@pytest.mark.parametrize(
    "config", [MLPConfig(context=3, hiddens=[32]), W2VConfig(context=3, vector_size=8)],
    ids=["mlp", "w2v"],
)  # fmt: skip
def test_fixed_context_models_read_end_of_text_before_a_row_and_keep_it_when_loaded(config):
    """Before a row's start the model reads the end-of-text id, as if the row followed a
    document boundary; the id travels with the weights. A state dict from before it did
    (no `pad_token`) loads as it was trained: padding with 0."""
    eot = VOCAB - 1
    torch.manual_seed(4)
    model = build_model(config, VOCAB, eot_id=eot).eval()
    row = torch.tensor([[5, 6, 7]])
    with_marks = torch.tensor([[eot, eot, 5, 6, 7]])  # the same row, its padding spelt out
    torch.testing.assert_close(model(row)[0], model(with_marks)[0][:, 2:])
    loaded = build_model(config, VOCAB)  # built without the id: the checkpoint brings it
    loaded.load_state_dict(model.state_dict())
    assert loaded.pad_id == eot
    torch.testing.assert_close(loaded.eval()(row)[0], model(row)[0])
    old = {k: v for k, v in model.state_dict().items() if k != "pad_token"}
    assert first_misfit(loaded.state_dict(), old) is None  # what loading a run's folder checks
    loaded.load_state_dict(old)
    assert loaded.pad_id == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n_embd": 30, "n_head": 4}, r"n_embd \(30\) must be divisible by n_head \(4\)"),
        ({"n_head": 4, "n_kv_heads": 3}, r"n_head \(4\) must be divisible by n_kv_heads \(3\)"),
        # A value the preset chose, not the user, is said to be the preset's.
        ({"preset": "modern", "n_head": 3, "n_embd": 96},
         r"n_head \(3\) must be divisible by n_kv_heads \(2, the 'modern' preset's\)"),
        ({"preset": "modern", "n_head": 3, "n_kv_heads": 2, "n_embd": 96},
         r"n_head \(3\) must be divisible by n_kv_heads \(2\)(?!, the)"),
    ],
)  # fmt: skip
def test_impossible_shapes_are_refused_with_the_numbers(fields, message):
    with pytest.raises(ValueError, match=message) as refused:
        GPTConfig(**fields)
    assert len(refused.value.errors()) == 1


def test_an_mlp_norm_without_a_hidden_layer_is_refused_not_ignored():
    with pytest.raises(ValueError, match="norm 'batchnorm' normalizes hidden layers"):
        MLPConfig(norm="batchnorm", hiddens=[])
    assert MLPConfig(norm="none", hiddens=[]).hiddens == []


def test_batch_norm_takes_its_statistics_over_scored_positions_only():
    """Padding after a short document (targets ignored) is never scored, so it must not move
    the scored positions' normalisation or the running statistics evaluation uses."""
    from lm.batches import IGNORED_TARGET

    torch.manual_seed(0)
    model = build_model(MLPConfig(context=3, n_embd=8, hiddens=[16], norm="batchnorm"), VOCAB)
    idx = torch.randint(1, VOCAB, (4, 12))
    targets = torch.randint(1, VOCAB, (4, 12))
    targets[:, 7:] = IGNORED_TARGET
    repadded = idx.clone()
    repadded[:, 7:] = 5  # inputs that only unscored positions read
    norm = model.hidden[1]
    model.train()
    loss = model(idx, targets)[1]
    running = norm.running_mean.clone()
    norm.reset_running_stats()
    assert torch.equal(model(repadded, targets)[1], loss)
    assert torch.equal(norm.running_mean, running)


def test_masked_batch_norm_is_batch_norm_over_the_kept_rows_and_compiles_whole():
    """As nn.BatchNorm1d given only those rows (outputs and running statistics), and with no
    shape or host read depending on the mask: a graph break recompiled it for every count of
    scored positions (`fullgraph` refuses any break)."""
    from torch import nn

    from lm.models.mlp import masked_batch_norm

    torch.manual_seed(0)
    rows, kept = torch.randn(40, 6), torch.rand(40, 1) > 0.4
    plain, masked = nn.BatchNorm1d(6), nn.BatchNorm1d(6)
    with torch.no_grad():
        plain.weight.uniform_()
        plain.bias.uniform_()
    masked.load_state_dict(plain.state_dict())
    expected = plain(rows[kept[:, 0]])
    compiled = torch.compile(masked_batch_norm, backend="eager", fullgraph=True, dynamic=False)
    got = compiled(masked, rows, kept)
    torch.testing.assert_close(got[kept[:, 0]], expected)
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    compiled(masked, rows, torch.rand(40, 1) > 0.7)  # another count, the same graph


def test_a_sequence_longer_than_the_context_is_refused():
    model = build_model(GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16), VOCAB)
    with pytest.raises(ValueError, match="9 tokens is longer than block_size 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_a_w2v_model_section_parses_and_says_it_needs_vectors_of_its_size():
    from lm.config import ConfigError, parse_config

    pieces = {"enabled": True, "input": "pieces", "vector_size": 50}
    data = {
        "ingest": {"sources": ["x.txt"]},
        "word2vec": pieces,
        "model": {"kind": "w2v", "vector_size": 50},
    }
    model = parse_config(data, origin="test.toml").model
    assert isinstance(model, W2VConfig) and model.freeze
    assert uses_word2vec(model) and word2vec_width(model) == 50
    with pytest.raises(ConfigError, match=r"test\.toml: unknown key 'model\.nope'"):
        parse_config({**data, "model": {"kind": "w2v", "nope": 1}}, origin="test.toml")
    # Said when the config loads, not after word2vec has trained.
    with pytest.raises(ConfigError, match=r"must equal word2vec\.vector_size \(100\)"):
        parse_config({**data, "word2vec": {**pieces, "vector_size": 100}}, origin="test.toml")
    with pytest.raises(ConfigError, match=r'word2vec\.input = "pieces"'):
        parse_config({**data, "word2vec": {**pieces, "input": "words"}}, origin="test.toml")


def test_a_variant_fed_by_word2vec_without_vectors_is_named_by_its_variant():
    from lm.config import ConfigError, parse_config

    data = {
        "ingest": {"sources": ["x.txt"]},
        "word2vec": {"enabled": False},
        "model": {"kind": "gpt", "n_embd": 32, "n_head": 2},
        "ablation": {"variants": [{"name": "base"},
                                  {"name": "w2v-init", "model": {"init_embeddings": "word2vec"}}]},
    }  # fmt: skip
    # It said "model 'gpt' uses word2vec vectors", the base's kind, not which variant.
    said = r"ablation variant 'w2v-init': model \(gpt\) uses word2vec vectors: set word2vec"
    with pytest.raises(ConfigError, match=said):
        parse_config(data, origin="test.toml")


def test_a_ladder_w2v_of_another_vector_size_is_named_by_its_models_entry():
    from lm.config import ConfigError, parse_config

    data = {
        "ingest": {"sources": ["x.txt"]},
        "word2vec": {"input": "pieces", "vector_size": 100},
        "models": [{"kind": "bigram"}, {"kind": "w2v", "vector_size": 50}],
    }
    # The key to change is `models.1.vector_size`: the config has no [model] table.
    with pytest.raises(ConfigError, match=r"models\.1\.vector_size \(50\) must equal"):
        parse_config(data, origin="test.toml")


def test_only_a_gpt_set_to_start_from_word2vec_needs_vectors_of_its_width():
    gpt = GPTConfig(n_embd=64, n_head=4)
    assert not uses_word2vec(gpt) and not uses_word2vec(MLPConfig())
    from_vectors = gpt.model_copy(update={"init_embeddings": "word2vec"})
    assert uses_word2vec(from_vectors) and word2vec_width(from_vectors) == 64


@pytest.mark.parametrize(("context", "fused_calls"), [(12, []), (264, [(torch.float32,) * 3] * 2)])
def test_cpu_bf16_attention_avoids_the_bf16_fused_kernel_and_matches_the_math_path(
    monkeypatch, context, fused_calls
):
    """Under CPU bf16 autocast the fused kernel never sees bf16 (its bf16 backward is slow): a
    short context attends by explicit math, a long one through the kernel in fp32. Either way
    the logits and gradients agree with the explicit-math model's."""
    from lm.models.gpt import CPU_BF16_MATH_MAX_CONTEXT

    assert 12 <= CPU_BF16_MATH_MAX_CONTEXT < 264  # the two contexts fall on either side
    config = GPTConfig(block_size=context, n_layer=2, n_head=4, n_kv_heads=2, n_embd=16,
                       pos="rope")  # fmt: skip
    torch.manual_seed(0)
    fused = build_model(config, 11)
    explicit = build_model(config.model_copy(update={"attention": "math"}), 11)
    explicit.load_state_dict(fused.state_dict())
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    idx = torch.randint(0, 11, (3, context))
    results = []
    for model in (fused, explicit):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, loss = model(idx, idx)
        loss.backward()
        results.append((logits.float(), model.token_embedding.weight.grad.clone()))
    assert seen == fused_calls
    (fused_logits, fused_grad), (math_logits, math_grad) = results
    assert torch.allclose(fused_logits, math_logits, atol=0.05)
    assert torch.allclose(fused_grad, math_grad, atol=1e-3, rtol=0.05)


def test_pairs_counted_in_a_table_are_those_counted_by_sorting(monkeypatch):
    # The table (one linear pass) replaced sorting where it fits: the same counts, and so the
    # same tuned smoothing and baseline, either way.
    import lm.models.bigram_count as bigram_count
    from lm.models.bigram_count import BigramCountModel, tuned_smoothing

    rng = np.random.default_rng(0)
    first, more = rng.integers(0, 50, 5000), rng.integers(0, 50, 3000)
    results = []
    for limit in (1 << 24, 0):  # 0: every count by sorting
        monkeypatch.setattr(bigram_count, "DENSE_PAIRS", limit)
        model = BigramCountModel(BigramCountConfig(), 50).fit(torch.from_numpy(first))
        model.fit(torch.from_numpy(more))  # counts added to those so far
        results.append((model.pair_ids, model.pair_counts, tuned_smoothing(first, 50)))
    (ids, counts, smoothing), (sorted_ids, sorted_counts, sorted_smoothing) = results
    assert torch.equal(ids, sorted_ids) and torch.equal(counts, sorted_counts)
    assert smoothing == sorted_smoothing and counts.sum() == 4999 + 2999


def test_tuned_smoothing_scores_the_last_tenth_from_the_pair_across_the_cut():
    """Counts from the first 90 % of the train tokens; every pair after them held out, the
    one across the cut included (here it decides between add-0.3 and add-1)."""
    from lm.models.bigram_count import SMOOTHING_GRID, tuned_smoothing

    tokens = np.random.default_rng(9).integers(0, 6, 40)
    fit, held_out = tokens[:36], tokens[35:]
    counts = np.zeros((6, 6))
    np.add.at(counts, (fit[:-1], fit[1:]), 1)

    def nll(k: float) -> float:
        table = counts + k
        return -np.log(table / table.sum(1, keepdims=True))[held_out[:-1], held_out[1:]].mean()

    assert tuned_smoothing(tokens, 6) == min(SMOOTHING_GRID, key=nll) == 0.3


def test_rotary_attention_depends_only_on_how_far_apart_the_positions_are():
    """RoPE rotates queries and keys alike, so shifting every position by the same amount
    leaves attention unchanged; absolute positions (a sign flipped in the rotation, or keys
    left unrotated) would change it."""
    from lm.models.gpt import CausalSelfAttention, rope_tables

    torch.manual_seed(4)
    config = GPTConfig(block_size=32, n_layer=1, n_head=4, n_embd=32, pos="rope",
                       n_kv_heads=2, attention="math")  # fmt: skip
    attention = CausalSelfAttention(config).double().eval()
    for parameter in attention.parameters():  # order-1 weights: positions matter to the scores
        parameter.data.normal_(0, 0.5)
    cos, sin = (table.double() for table in rope_tables(32, config.head_dim, config.rope_base))
    x = torch.randn(2, 8, 32, dtype=torch.float64)
    with torch.no_grad():
        at_0 = attention(x, (cos[0:8], sin[0:8]), 0, None, 0)
        at_11 = attention(x, (cos[11:19], sin[11:19]), 0, None, 0)
    torch.testing.assert_close(at_11, at_0, rtol=0, atol=1e-5)  # fp32 tables
    with torch.no_grad():  # and the positions do matter within a sequence
        assert not torch.allclose(
            attention(x, (cos[0:8], sin[0:8]), 0, None, 0),
            attention(x, (cos[0:8] * 0 + 1, sin[0:8] * 0), 0, None, 0),
        )


def test_position_tables_follow_their_formulas():
    """Vaswani et al.'s table: sin(p / 10000^(2i/d)) on feature 2i, cos of the same on 2i + 1;
    RoPE's angle for pair i at position p is p / base^(2i/d)."""
    from lm.models.gpt import apply_rope, rope_tables

    table = sinusoidal_table(5, 8)
    for p, i in itertools.product(range(5), range(4)):
        angle = p / 10000 ** (2 * i / 8)
        assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    cos, sin = rope_tables(5, 8, 100.0)
    for p, i in itertools.product(range(5), range(4)):
        angle = p / 100.0 ** (2 * i / 8)
        assert cos[p, i].item() == pytest.approx(math.cos(angle), abs=1e-6)
        assert sin[p, i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    # Pair (x0, x1) = (1, 0) at angle a turns to (cos a, sin a): a counterclockwise rotation.
    x = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 4)
    a, b = 0.3, 0.7
    turned = apply_rope(x, torch.tensor([[math.cos(a), math.cos(b)]]),
                        torch.tensor([[math.sin(a), math.sin(b)]])).flatten()  # fmt: skip
    expected = torch.tensor([math.cos(a), math.sin(a), -math.sin(b), math.cos(b)])
    torch.testing.assert_close(turned, expected)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_grouped_query_attention_is_multi_head_attention_with_each_kv_head_copied_to_its_group(
    kv_heads,
):
    """Query head h reads key and value head h // (n_head / n_kv_heads), as Llama's
    `repeat_kv`: a multi-head model whose key and value rows are the grouped model's, each
    head's copied to its group, gives the same logits."""
    torch.manual_seed(5)
    grouped_config = GPTConfig(block_size=16, n_layer=2, n_head=4, n_embd=32, pos="rope",
                               n_kv_heads=kv_heads, attention="math")  # fmt: skip
    grouped = build_model(grouped_config, VOCAB).eval()
    for parameter in grouped.parameters():
        parameter.data.normal_(0, 0.3)
    full = build_model(grouped_config.model_copy(update={"n_kv_heads": 4}), VOCAB).eval()
    state = dict(grouped.state_dict())
    head_dim, repeat = grouped_config.head_dim, 4 // kv_heads
    for name in list(state):
        if name.endswith((".key.weight", ".value.weight", ".key.bias", ".value.bias")):
            rows = state[name].unflatten(0, (kv_heads, head_dim))
            state[name] = rows.repeat_interleave(repeat, dim=0).flatten(0, 1)
    full.load_state_dict(state)
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(grouped(idx)[0], full(idx)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("config", VARIANTS[::5], ids=variant_id)
def test_every_parameter_takes_part_in_the_loss(config):
    """A layer built but never called (the final norm skipped, a block reading its first norm
    twice) keeps the parameter count and causality: only its missing gradient shows it."""
    torch.manual_seed(6)
    model = build_model(config, VOCAB)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.3)
    idx = torch.randint(0, VOCAB, (2, 12))
    model(idx, idx)[1].backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == []


@pytest.mark.parametrize("kind", ["math", "sdpa"])
def test_attention_is_the_softmax_of_scaled_scores_written_by_hand(kind):
    """softmax(q·k / sqrt(head_dim)) over the keys at or before each query, times v: checked
    on order-1 inputs, where a missing scale or a mask shifted by one changes the result."""
    from lm.models.gpt import attend

    torch.manual_seed(7)
    q, k, v = (torch.randn(2, 3, 6, 8, dtype=torch.float64) * 2 for _ in range(3))
    expected = torch.empty_like(q)
    for i in range(6):
        scores = q[:, :, i : i + 1] @ k[:, :, : i + 1].transpose(-2, -1) / math.sqrt(8)
        expected[:, :, i] = (scores.softmax(-1) @ v[:, :, : i + 1])[:, :, 0]
    torch.testing.assert_close(attend(q, k, v, None, 0.0, kind), expected)
    # Queries 4 and 5 after a cache of 4 keys: each sees the keys up to its own position.
    mask = torch.ones(2, 6, dtype=torch.bool).tril(diagonal=4)
    torch.testing.assert_close(attend(q[:, :, 4:], k, v, mask, 0.0, kind), expected[:, :, 4:])
