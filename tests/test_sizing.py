"""Sizing: parameter counts agree with built models; FLOPs and budgets follow the formulas."""

from __future__ import annotations

import re

import pytest
import torch

from lm.models.config import BigramConfig, BigramCountConfig, GPTConfig, MLPConfig, W2VConfig
from lm.models.gpt import CPU_BF16_MATH_MAX_CONTEXT
from lm.models.registry import build_model
from lm.sizing import LOGIT_BYTES, parameter_count, size_model, stores_attention_scores
from lm.train_config import TrainConfig


@pytest.mark.parametrize(
    "model",
    [BigramCountConfig(), BigramConfig(), MLPConfig(context=3, n_embd=10, hiddens=[64, 32]),
     MLPConfig(context=2, hiddens=[16], norm="layernorm"),
     GPTConfig(preset="modern", n_embd=64, n_layer=2), GPTConfig(preset="atinuke", n_layer=2),
     W2VConfig(context=2, vector_size=8, hiddens=[16, 12]), W2VConfig(vector_size=8, freeze=False)],
    ids=["bigram-count", "bigram", "mlp", "mlp-layernorm", "gpt-modern", "gpt-atinuke", "w2v",
         "w2v-tuned"],
)  # fmt: skip
def test_parameter_count_agrees_with_the_built_model(model):
    assert parameter_count(model, 50) == build_model(model, 50).num_params()


def test_gpt2_small_shape_matches_the_published_figures():
    gpt2 = GPTConfig(block_size=1024, n_layer=12, n_head=12, n_embd=768, pos="learned",
                     mlp="gelu", norm="layernorm", bias=True)  # fmt: skip
    size = size_model(gpt2, TrainConfig(micro_batch=8, global_batch=8), vocab_size=50257)
    assert size.parameters == 124_439_808  # GPT-2 small, tied embeddings
    non_embedding = size.parameters - 1024 * 768
    assert size.flops_per_token == 6 * non_embedding + 12 * 12 * 768 * 1024
    assert size.chinchilla_tokens == 20 * size.parameters
    assert size.optimizer_bytes == 2 * size.weights_bytes


def test_size_command_reports_the_default_model():
    from tests.conftest import run_cli

    output = run_cli("size").stdout
    assert "1,233,536" in output  # the default preset's GPT with BPE 4000
    assert "Chinchilla-optimal tokens" in output and "24,670,720" in output
    char = run_cli("size", "--vocab-size", "27", "--set", 'tokenizer={kind="char"}', check=False)
    assert char.returncode == 0
    # A SentencePiece vocabulary with byte fallback has a floor the tokenizer stage enforces.
    below = run_cli("size", "--vocab-size", "27", check=False)
    assert below.returncode == 1 and "--vocab-size 27: vocab_size (27) is too small" in below.stderr
    smaller = run_cli("size", "--set", "model.n_layer=1").stdout
    found = re.search(r"│ trainable parameters\s*│ ([\d,]+)", smaller)
    parameters = int(found.group(1).replace(",", ""))
    assert 0 < parameters < 1_233_536
    refused = run_cli("size", "--vocab-size", "0", check=False)
    assert refused.returncode == 2 and "--vocab-size" in refused.stderr


def test_the_count_bigram_is_sized_as_the_counts_it_holds():
    """It trains nothing: its pairs (an id and a count each, 8 bytes apiece) and per-token
    totals are stored values, filled by counting one pass over the train split, so it has no
    gradients, optimizer state, FLOPs or Chinchilla budget, and the train settings' token count
    is not what it reads. It holds at most V² pairs, and at most one per train token."""
    model = BigramCountConfig()
    size = size_model(model, TrainConfig(), vocab_size=27)
    assert (size.parameters, size.stored_values) == (0, 27 + 2 * 27 * 27)
    assert size.weights_bytes == 8 * size.stored_values
    assert size.gradients_bytes == size.optimizer_bytes == size.flops_per_token == 0
    assert size.closed_form
    assert size.chinchilla_tokens is None and size.planned_tokens is None
    # GPT-2's vocabulary over a million-token corpus: a million pairs at most, not 2.5 billion.
    large = size_model(model, TrainConfig(), vocab_size=50257, train_tokens=1_000_001)
    assert large.stored_values == 50257 + 2 * 1_000_000
    fitted = build_model(model, 27).fit(torch.randint(0, 27, (5000,)))
    held = sum(buffer.numel() for buffer in fitted.buffers())
    assert held <= size.stored_values and fitted.pairs_seen <= 27 * 27


def test_frozen_word2vec_vectors_are_stored_but_not_trained():
    frozen = W2VConfig(context=2, vector_size=8, hiddens=[16])
    tuned = frozen.model_copy(update={"freeze": False})
    held, trained = size_model(frozen, TrainConfig(), 50), size_model(tuned, TrainConfig(), 50)
    assert held.parameters == trained.parameters - 50 * 8
    assert held.stored_values == trained.stored_values
    assert held.weights_bytes == trained.weights_bytes
    assert held.optimizer_bytes == trained.optimizer_bytes - 8 * 50 * 8


def test_size_command_shows_the_ladders_count_bigram_as_closed_form():
    from tests.conftest import run_cli

    output = run_cli("size", "names", "--vocab-size", "27").stdout

    def cells(measure: str) -> list[str]:
        row = re.search(rf"│ {re.escape(measure)}\s*│(.*)│", output).group(1)
        return [cell.strip() for cell in row.split("│")]

    assert cells("trainable parameters")[:2] == ["0", "729"]  # bigram-count, then bigram
    assert cells("stored values (trained or not)")[:2] == ["1,485", "729"]  # 27 + 2 × 729 at most
    assert cells("training FLOPs per token")[0] == "a count"
    assert cells("Chinchilla-optimal tokens (20/param)")[:2] == ["none: closed form", "14,580"]
    assert cells("tokens the train settings will see")[0] == "train split, once"
    # One name per row (`train.samples = "documents"`): padding after it is never counted.
    assert cells("tokens the train settings will see")[1] == f"at most {1000 * 128 * 16:,}"
    assert cells("activations per micro-batch")[:3] == ["0.0 MiB", "not estimated", "not estimated"]


def test_activation_memory_follows_the_precision_auto_resolves_to(monkeypatch):
    """`precision = "auto"` is bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere; the
    layers' share of the estimate halves exactly when the trainer would autocast (a context
    past the CPU's explicit-math limit, so both precisions use the fused attention kernel)."""
    import lm.train

    gpt = GPTConfig(block_size=512, n_layer=2, n_head=4, n_embd=64)
    auto, fp32 = TrainConfig(precision="auto"), TrainConfig(precision="fp32")
    cpu = torch.device("cpu")
    logits = {bf16: auto.micro_batch * 512 * 27 * LOGIT_BYTES[bf16] for bf16 in (True, False)}
    monkeypatch.setattr(lm.train, "cpu_has_native_bf16", lambda: True)
    native = size_model(gpt, auto, 27, device=cpu).activations_bytes - logits[True]
    assert native == auto.micro_batch * 512 * 2 * 34 * 64
    in_fp32 = size_model(gpt, fp32, 27, device=cpu).activations_bytes - logits[False]
    assert in_fp32 == 2 * native
    on_gpu = size_model(gpt, auto, 27, device=torch.device("cuda")).activations_bytes
    assert on_gpu - logits[True] == native
    monkeypatch.setattr(lm.train, "cpu_has_native_bf16", lambda: False)
    assert size_model(gpt, auto, 27, device=cpu).activations_bytes - logits[False] == 2 * native


def test_attention_scores_count_only_where_explicit_math_stores_them():
    """Fused SDPA kernels never hold the (context × context) scores; explicit math does, and
    the CPU takes it in bf16 for contexts up to CPU_BF16_MATH_MAX_CONTEXT."""
    bf16 = TrainConfig(precision="bf16", micro_batch=4)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    short = GPTConfig(block_size=CPU_BF16_MATH_MAX_CONTEXT, n_layer=3, n_head=4, n_embd=32)
    # batch · context · layers · 5 · heads · context
    scores = 4 * short.block_size * 3 * 5 * 4 * short.block_size
    fused = size_model(short, bf16, 27, device=gpu).activations_bytes
    assert size_model(short, bf16, 27, device=cpu).activations_bytes == fused + scores
    explicit = short.model_copy(update={"attention": "math"})
    assert size_model(explicit, bf16, 27, device=gpu).activations_bytes == fused + scores
    longer = short.model_copy(update={"block_size": CPU_BF16_MATH_MAX_CONTEXT + 1})
    assert not stores_attention_scores(longer, bf16=True, device=cpu)


def test_the_logits_dominate_a_small_model_with_a_large_vocabulary():
    """GPT-2 124M at batch 16 under bf16 autocast: the output layer holds more than the twelve
    layers together (what the H200 measured: 18.1 GiB peak, estimated 17.4)."""
    gpt2 = GPTConfig(block_size=1024, n_layer=12, n_head=12, n_embd=768, pos="learned")
    settings = TrainConfig(micro_batch=16, global_batch=16, block_size=1024, precision="bf16")
    size = size_model(gpt2, settings, 50304, device=torch.device("cuda"))
    logits = 16 * 1024 * 50304 * LOGIT_BYTES[True]
    assert size.activations_bytes - logits < logits
    total = size.weights_bytes + size.gradients_bytes + size.optimizer_bytes
    assert 17 < (total + size.activations_bytes) / 2**30 < 18


def test_fsdp_splits_the_trained_state_and_gathers_the_root_and_two_blocks():
    gpt = GPTConfig(preset="modern", n_embd=64, n_layer=4)
    model = build_model(gpt, 50)
    blocks = [sum(p.numel() for p in block.parameters()) for block in model.blocks]
    root = sum(p.numel() for p in model.parameters()) - sum(blocks)
    settings = TrainConfig(micro_batch=2, global_batch=8, nproc_per_node=4, parallel="fsdp")
    fsdp = size_model(gpt, settings, 50)
    assert (fsdp.processes, fsdp.shards) == (4, 4)
    assert fsdp.gathered_bytes == 4 * (root + 2 * blocks[0])
    assert fsdp.state_bytes_per_process() == 16 * fsdp.parameters // 4 + fsdp.gathered_bytes
    ddp = size_model(gpt, settings.model_copy(update={"parallel": "ddp"}), 50)
    assert (ddp.shards, ddp.gathered_bytes) == (1, 0)
    assert ddp.state_bytes_per_process() == 16 * ddp.parameters  # a whole copy each
    alone = size_model(gpt, TrainConfig(parallel="fsdp"), 50)  # one process never shards
    assert (alone.shards, alone.state_bytes_per_process()) == (1, 16 * alone.parameters)


def test_size_command_shows_what_each_process_holds_only_for_several():
    from tests.conftest import run_cli

    assert "per process" not in run_cli("size").stdout
    sharded = run_cli("size", "--set", "train.nproc_per_node=4", "--set", 'train.parallel="fsdp"',
                      "--set", "train.global_batch=64").stdout  # fmt: skip
    assert re.search(r"│ processes \(nproc_per_node × nnodes\)\s*│ 4, sharded \(FSDP", sharded)
    found = re.search(r"│ weights, gradients, AdamW per process\s*│ ([\d.]+) MiB", sharded)
    whole = 16 * 1_233_536 / 2**20  # the default GPT's state, 18.8 MiB
    assert whole / 4 < float(found.group(1)) < whole / 2
    from tests.conftest import cli_in_process

    copies = cli_in_process("size", "--set", "train.nproc_per_node=4", "--set",
                            "train.global_batch=64").stdout  # fmt: skip
    assert re.search(r"│ processes \(nproc_per_node × nnodes\)\s*│ 4, each a whole copy \(DDP\)",
                     copies)  # fmt: skip
    assert re.search(rf"│ weights, gradients, AdamW per process\s*│ {whole:.1f} MiB", copies)


def test_sizes_are_shown_in_the_unit_that_keeps_them_under_a_thousand():
    from lm.memory_fit import bytes_text

    # A 175B-parameter model's AdamW state was "1,335,... MiB".
    assert [bytes_text(n) for n in (0, 5 << 20, 999 << 20, 1000 << 20, 1300 << 30, 3 << 40)] == [
        "0.0 MiB", "5.0 MiB", "999.0 MiB", "1.0 GiB", "1.3 TiB", "3.0 TiB"
    ]  # fmt: skip


def test_a_size_that_rounds_to_a_thousand_is_shown_in_the_next_unit():
    from flows.prune_cli import decimal_size
    from lm.memory_fit import bytes_text

    # 999,960 bytes of a corpus or a leftover folder was "1,000.0 kB": under a thousand until
    # it was rounded to be shown.
    assert [decimal_size(n) for n in (999, 999.6, 1000, 999_949, 999_960, 999_950_000)] == [
        "999 B", "1.0 kB", "1.0 kB", "999.9 kB", "1.0 MB", "1.0 GB"
    ]  # fmt: skip
    assert [bytes_text(n) for n in (int(999.9 * (1 << 20)), (1000 << 20) - 1)] == [
        "999.9 MiB", "1.0 GiB"
    ]  # fmt: skip


def test_size_of_an_ablation_shows_each_variant_it_compares():
    """It showed the base model alone: the variants' sizes (a multi-query or a wider one) were
    only seen once the ablation had trained them."""
    from lm.config import load_config
    from tests.conftest import run_cli

    output = run_cli("size", "ablation").stdout
    variants = [variant.name for variant in load_config("ablation").ablation.variants]
    header = next(line for line in output.splitlines() if "baseline" in line)
    assert re.findall(r"┃ ([\w-]+)\s*", header) == variants
    row = re.search(r"│ trainable parameters\s*│(.*)│", output).group(1)
    counts = dict(
        zip(variants, (int(c.strip().replace(",", "")) for c in row.split("│")), strict=True)
    )
    assert counts["mqa"] < counts["baseline"]  # fewer key/value heads, fewer weights


def test_a_vocabulary_or_split_that_cannot_be_is_refused_and_a_device_may_be_named():
    # A vocabulary of -10 was sized as 808,448 parameters; "cpu" was an AttributeError.
    with pytest.raises(ValueError, match="vocab_size -10 and train_tokens None: a model needs"):
        size_model(GPTConfig(), TrainConfig(), -10)
    with pytest.raises(ValueError, match="vocab_size 50 and train_tokens -1"):
        size_model(BigramCountConfig(), TrainConfig(), 50, train_tokens=-1)
    named = size_model(GPTConfig(), TrainConfig(), 50, device="cpu")
    assert named == size_model(GPTConfig(), TrainConfig(), 50, device=torch.device("cpu"))


@pytest.mark.parametrize(
    "model",
    [BigramCountConfig(), BigramConfig(), MLPConfig(context=3, n_embd=10, hiddens=[64, 32]),
     GPTConfig(preset="modern", n_embd=64, n_layer=2), GPTConfig(preset="atinuke", n_layer=2),
     GPTConfig(n_embd=32, n_layer=1, n_head=2, pos="learned", tie_embeddings=False),
     W2VConfig(context=2, vector_size=8, hiddens=[16, 12]), W2VConfig(vector_size=8, freeze=False)],
)  # fmt: skip
def test_the_parameters_that_cost_no_flops_are_those_the_built_model_reads_by_index(model):
    """FLOPs per token leave out what a model reads by index (`lookup_params`): an untied
    GPT's token embedding, learned positions, the tables of the bigram and the MLP. Counted as
    multiplied, an untied model's FLOPs (and MFU) came out larger than its tied twin's."""
    from lm.sizing import lookup_parameter_count

    assert lookup_parameter_count(model, 50) == build_model(model, 50).lookup_params()
