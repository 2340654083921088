"""How big a model is and how much it should be trained: parameters, training FLOPs per token,
memory for weights, gradients, optimizer state and activations, and the Chinchilla-optimal
token budget (about 20 tokens per parameter, Hoffmann et al. 2022).

FLOPs per token follow nanoGPT's `estimate_mfu` (PaLM appendix B): 6 per parameter for the
forward and backward matrix products, plus 12·layers·width·context for attention scores.
Activation memory follows Korthikanti et al. (2022): per layer, sequence and batch element,
about (34·width + 5·heads·context) bytes in 16-bit precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from lm.models.config import GPTConfig, ModelConfig
from lm.train import autocast_dtype, pick_device
from lm.train_config import TrainConfig

CHINCHILLA_TOKENS_PER_PARAMETER = 20


@dataclass(frozen=True)
class ModelSize:
    parameters: int
    flops_per_token: float
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    chinchilla_tokens: int
    planned_tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


def parameter_count(model: ModelConfig, vocab_size: int) -> int:
    if model.kind == "gpt":
        from lm.models.gpt import gpt_parameter_count

        return gpt_parameter_count(model, vocab_size)
    if model.kind in ("bigram", "bigram-count"):
        return vocab_size * vocab_size if model.kind == "bigram" else 0
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
    model: ModelConfig, train: TrainConfig, vocab_size: int, device: torch.device | None = None
) -> ModelSize:
    """Sizes for training on `device` (default: the one `train.device` picks on this machine),
    which decides what `precision = "auto"` means: bf16 activations take half the bytes."""
    device = device if device is not None else pick_device(train.device)
    bf16 = autocast_dtype(train, device) is not None
    parameters = parameter_count(model, vocab_size)
    flops = 6.0 * (parameters - lookup_parameter_count(model, vocab_size))
    activations = 0
    context = train.block_size
    if isinstance(model, GPTConfig):
        context = model.block_size
        flops += 12.0 * model.n_layer * model.n_embd * context
        bytes_per_16bit_value = 1 if bf16 else 2  # fp32 doubles the 16-bit figure
        per_sequence = model.n_layer * context * (34 * model.n_embd + 5 * model.n_head * context)
        activations = per_sequence * train.micro_batch * bytes_per_16bit_value
    return ModelSize(
        parameters=parameters,
        flops_per_token=flops,
        weights_bytes=4 * parameters,
        gradients_bytes=4 * parameters,
        optimizer_bytes=8 * parameters,  # AdamW: two fp32 moments per parameter
        activations_bytes=activations,
        chinchilla_tokens=CHINCHILLA_TOKENS_PER_PARAMETER * parameters,
        planned_tokens=train.max_steps * train.global_batch * context,
    )
