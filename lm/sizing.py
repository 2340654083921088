"""How big a model is and how much it should be trained: parameters, training FLOPs per token,
memory for weights, gradients, optimizer state and activations, and the Chinchilla-optimal
token budget (about 20 tokens per parameter, Hoffmann et al. 2022).

The count bigram (`bigram-count`) trains nothing: it holds the pairs the train split holds (an
int64 id and an fp64 count each) and one fp64 total per token, filled in closed form by one
pass over the split. It is sized as what it holds: no trainable parameters; as stored values,
the V totals and the pairs, at most V² and at most one per train token (the corpus's count,
where a run has measured it); and no Chinchilla budget (that rule is about models fit by
gradient descent). Frozen word2vec vectors are held, not trained.

FLOPs per token follow nanoGPT's `estimate_mfu` (PaLM appendix B): 6 per parameter for the
forward and backward matrix products, plus 12·layers·width·context for attention scores.

Activation memory (a GPT's, per micro-batch, eager) follows Korthikanti et al. (2022): per
layer and token, 34·width bytes in 16-bit precision (twice that in fp32), plus 5·heads·context
bytes for the attention scores only where they are stored: explicit-math attention, which the
CPU takes in bf16 for short contexts. `F.scaled_dot_product_attention`'s fused kernels (flash,
memory-efficient: the GPU's path) never store them. The paper leaves out the output layer,
which dominates small models with large vocabularies: the logits, their fp32 copy for the loss,
its log-softmax and its gradient, LOGIT_BYTES per vocabulary entry and token. On an H200 this
came within 4 % (bf16 autocast) and 10 % (fp32) of the measured peak for GPT-2 124M at batch 16
(`bench/bench_train.py --device cuda`), where the paper's terms alone were 48 % over (fp32).
`torch.compile` fuses the loss and recomputes cheap activations: it peaked about 35 % lower.

Several processes (`train.nproc_per_node × nnodes`): under DDP each holds all of the above;
under FSDP (`train.parallel = "fsdp"`) the trained weights, their gradients and AdamW's state
are split evenly over them, and each process also holds, while it computes, the full parameters
of the units in flight (lm.distributed.shard_units): the root's (embeddings, final norm, head)
and two blocks' (the one computing and the next, prefetched).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from lm.models.config import GPTConfig, ModelConfig, effective_train_config, planned_tokens
from lm.train import autocast_dtype, pick_device
from lm.train_config import TrainConfig

CHINCHILLA_TOKENS_PER_PARAMETER = 20
# Per trained parameter: the fp32 weight, its fp32 gradient and AdamW's two fp32 moments.
TRAINED_STATE_BYTES = 4 + 4 + 8
# The count bigram's values (pair ids, counts, totals) are 8 bytes; frozen vectors are fp32.
COUNT_BYTES = 8
VECTOR_BYTES = 4
# Bytes per logit at the loss's peak (backward): under bf16 autocast, the bf16 logits (2), the
# fp32 log-softmax the loss saves (4), its fp32 gradient (4) and the bf16 one (2), plus the fp32
# copy while it is made (2 more, amortised); in fp32, logits, log-softmax and gradient (4 each).
LOGIT_BYTES = {True: 14, False: 12}


@dataclass(frozen=True)
class ModelSize:
    """`parameters` are what gradient descent trains; `stored_values` everything the model
    holds (parameters, count tables, frozen vectors), which `weights_bytes` measures. A
    `closed_form` model is fit by counting, not trained: it has no Chinchilla budget and reads
    the train split once whatever the train settings say (both None)."""

    parameters: int
    stored_values: int
    closed_form: bool
    flops_per_token: float
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int | None  # estimated for a GPT only; 0 for the count bigram
    chinchilla_tokens: int | None
    planned_tokens: int | None
    # True where `planned_tokens` is a ceiling: with `train.samples = "documents"` a row's
    # padding after its document's end is never scored, and never counted as seen.
    planned_tokens_at_most: bool = False
    processes: int = 1  # train.nproc_per_node × nnodes
    shards: int = 1  # processes the trained state is split over: `processes` under FSDP, else 1
    gathered_bytes: int = 0  # FSDP: the full parameters of the units in flight, per process

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def trained_state_bytes(self) -> int:
        """Weights, gradients and AdamW state of the trained parameters, all processes'."""
        return TRAINED_STATE_BYTES * self.parameters

    def state_bytes_per_process(self) -> int:
        """What one process holds besides activations: its share of the trained state, the
        values it holds untrained (never sharded) and, under FSDP, the units in flight."""
        untrained = self.weights_bytes - 4 * self.parameters
        shard = math.ceil(self.trained_state_bytes / self.shards)
        return shard + untrained + self.gathered_bytes


def parameter_count(model: ModelConfig, vocab_size: int) -> int:
    """Values trained by gradient descent (`num_params()` of the built model)."""
    if model.kind == "gpt":
        from lm.models.gpt import gpt_parameter_count

        return gpt_parameter_count(model, vocab_size)
    if model.kind == "bigram-count":
        return 0  # its table is counted, not trained: `untrained_values`
    if model.kind == "bigram":
        return vocab_size * vocab_size
    if model.kind == "w2v":
        from lm.models.w2v import w2v_parameter_count

        return w2v_parameter_count(model, vocab_size)
    width = model.context * model.n_embd
    total = vocab_size * model.n_embd
    for hidden in model.hiddens:
        norm = 2 * hidden if model.norm != "none" else 0
        total += width * hidden + (hidden if model.norm == "none" else 0) + norm
        width = hidden
    return total + width * vocab_size + vocab_size


def untrained_values(
    model: ModelConfig, vocab_size: int, train_tokens: int | None = None
) -> tuple[int, int]:
    """The values a model holds but does not train, and the bytes each takes: the count
    bigram's totals and pairs (an id and a count each; at most V², and at most one per token of
    `train_tokens` where known), and word2vec vectors kept frozen."""
    if model.kind == "bigram-count":
        pairs = vocab_size * vocab_size
        if train_tokens is not None:
            pairs = min(pairs, max(train_tokens - 1, 0))
        return vocab_size + 2 * pairs, COUNT_BYTES
    if model.kind == "w2v" and model.freeze:
        return vocab_size * model.vector_size, VECTOR_BYTES
    return 0, 0


def lookup_parameter_count(model: ModelConfig, vocab_size: int) -> int:
    """Parameters read by index, which cost no FLOPs (`LanguageModel.lookup_params`): learned
    positions and an untied token embedding in a GPT, the tables of the bigram, the MLP and
    fine-tuned word2vec vectors."""
    if isinstance(model, GPTConfig):
        positional = model.block_size * model.n_embd if model.pos == "learned" else 0
        return positional + (0 if model.tie_embeddings else vocab_size * model.n_embd)
    if model.kind == "bigram":
        return vocab_size * vocab_size
    if model.kind == "mlp":
        return vocab_size * model.n_embd
    if model.kind == "w2v":
        return 0 if model.freeze else vocab_size * model.vector_size
    return 0


def size_model(
    model: ModelConfig,
    train: TrainConfig,
    vocab_size: int,
    device: torch.device | None = None,
    train_tokens: int | None = None,
) -> ModelSize:
    """Sizes for training on `device` (default: the one `train.device` picks on this machine),
    which decides what `precision = "auto"` means: bf16 activations take half the bytes.
    `train_tokens`, the train split's size where known, bounds what the count bigram holds."""
    if vocab_size < 1 or (train_tokens is not None and train_tokens < 0):
        raise ValueError(
            f"vocab_size {vocab_size} and train_tokens {train_tokens}: a model needs a "
            "vocabulary of 1 or more, and a split holds 0 tokens or more"
        )
    if device is None:  # a device named outright is sized as asked, present here or not
        device = pick_device() if train.device == "auto" else torch.device(train.device)
    device = torch.device(device)  # "cpu" as well
    bf16 = autocast_dtype(train, device) is not None
    parameters = parameter_count(model, vocab_size)
    untrained, untrained_bytes = untrained_values(model, vocab_size, train_tokens)
    closed_form = model.kind == "bigram-count"
    fsdp = train.parallel == "fsdp" and train.world_size > 1 and not closed_form
    shards = train.world_size if fsdp else 1
    flops = 6.0 * (parameters - lookup_parameter_count(model, vocab_size))
    activations = 0 if closed_form else None
    context = effective_train_config(model, train).block_size
    if isinstance(model, GPTConfig):
        flops += 12.0 * model.n_layer * model.n_embd * context
        activations = gpt_activation_bytes(model, vocab_size, train.micro_batch, bf16, device)
    return ModelSize(
        parameters=parameters,
        stored_values=parameters + untrained,
        closed_form=closed_form,
        flops_per_token=flops,
        weights_bytes=4 * parameters + untrained_bytes * untrained,
        gradients_bytes=4 * parameters,
        optimizer_bytes=8 * parameters,  # AdamW: two fp32 moments per parameter
        activations_bytes=activations,
        chinchilla_tokens=None if closed_form else CHINCHILLA_TOKENS_PER_PARAMETER * parameters,
        planned_tokens=None if closed_form else planned_tokens(model, train),
        planned_tokens_at_most=train.samples == "documents",
        # The count bigram is fit in the train stage's own process, never under torchrun.
        processes=1 if closed_form else train.world_size,
        shards=shards,
        gathered_bytes=4 * fsdp_gathered_parameters(model, vocab_size) if shards > 1 else 0,
    )


def fsdp_gathered_parameters(model: ModelConfig, vocab_size: int) -> int:
    """Parameters one process holds whole at once under FSDP: a GPT's root unit and two of its
    blocks; any other model is one unit, gathered whole."""
    if not isinstance(model, GPTConfig):
        return parameter_count(model, vocab_size)
    one = parameter_count(model.model_copy(update={"n_layer": 1}), vocab_size)
    block = parameter_count(model.model_copy(update={"n_layer": 2}), vocab_size) - one
    return one - block + min(2, model.n_layer) * block


def stores_attention_scores(model: GPTConfig, bf16: bool, device: torch.device) -> bool:
    """Whether training `model` keeps its attention scores: where the model itself attends by
    explicit math (`lm.models.gpt.attends_by_math`) over its whole context."""
    from lm.models.gpt import attends_by_math

    return attends_by_math(model.attention, device.type, bf16, model.block_size)


def gpt_activation_bytes(
    model: GPTConfig, vocab_size: int, micro_batch: int, bf16: bool, device: torch.device
) -> int:
    """Activation memory of one eager micro-batch: the layers (Korthikanti et al.) and the
    output layer's logits (module docstring)."""
    per_token = 34 * model.n_embd
    if stores_attention_scores(model, bf16, device):
        per_token += 5 * model.n_head * model.block_size
    layers = model.n_layer * per_token * (1 if bf16 else 2)  # fp32 doubles the 16-bit figure
    logits = vocab_size * LOGIT_BYTES[bf16]
    return micro_batch * model.block_size * (layers + logits)
