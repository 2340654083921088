"""Whether the parts of a trained model folder still fit together, said in one line when not.

A train artifact folder keeps its weights (`best/`, `final/`), `model.json` and `tokenizer/`
side by side, and any of them can be swapped or edited by hand. Token ids mean nothing without
the tokenizer that made them: a model given another tokenizer of the same size loads without a
complaint and generates garbage. A `model.json` that no longer describes the weights fails in
`load_state_dict` with PyTorch's list of every mismatched tensor. The checks here run before the
weights are loaded, and say which file differs and how.

The tokenizer is identified by the digest its checkpoint records (`checkpoint.json`, the same
record that keeps a run from resuming another tokenizer's checkpoint). Checkpoints written
before digests were recorded are checked by vocabulary size, read off the weights' shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from lm.checkpoints import INFO_FILE, other_tokenizer, read_info
from lm.models.base import CONVERTED_ON_LOAD, DATA_SIZED, SUPPLIED_WHEN_MISSING, LanguageModel
from lm.models.config import ModelConfig
from lm.tokenizer import Tokenizer

# How many hex digits of a digest a message shows: enough to tell two tokenizers apart.
SHOWN_DIGEST = 12


def tokenizer_difference(
    checkpoint: Path, tokenizer: Tokenizer, config: ModelConfig, model: LanguageModel,
    weights: Mapping[str, torch.Tensor],
) -> str | None:  # fmt: skip
    """How `tokenizer` differs from the one the checkpoint's `weights` were trained with, in
    words; None when it is that one, as far as the checkpoint can tell (its recorded digest,
    else its vocabulary size). `model` is built from `config` for `tokenizer`'s vocabulary."""
    info = read_info(checkpoint)
    recorded = other_tokenizer(info, tokenizer.digest)
    if recorded is None and info.get("tokenizer_digest"):
        return None  # the very tokenizer the checkpoint records
    differences = []
    if recorded is not None:
        differences.append(
            f"its digest is {tokenizer.digest[:SHOWN_DIGEST]}, {checkpoint.name}/{INFO_FILE} "
            f"records {recorded[:SHOWN_DIGEST]}"
        )
    trained_vocab = trained_vocab_size(config, model, weights)
    if trained_vocab is not None:
        differences.append(
            f"it has {tokenizer.vocab_size} tokens, the weights were trained on {trained_vocab}"
        )
    return "; ".join(differences) or None


def trained_vocab_size(
    config: ModelConfig, model: LanguageModel, weights: Mapping[str, torch.Tensor]
) -> int | None:
    """The vocabulary size the `weights` were trained with, when it is not `model`'s and the
    model of `config` with that size fits them exactly; None otherwise (they fit `model`, or
    what differs is not the vocabulary). The candidate sizes are read off the first tensor
    whose shape differs, where `model` has its vocabulary size."""
    expected = model.state_dict()
    weights = as_loaded(weights, expected)
    for name, tensor in expected.items():
        found = weights.get(name)
        if found is None or found.dim() != tensor.dim() or found.shape == tensor.shape:
            continue
        if name.rpartition(".")[2] in DATA_SIZED:  # its length is the data's
            continue
        candidates = {
            size for size, own in zip(found.shape, tensor.shape, strict=True)
            if own == model.vocab_size and size != own
        }  # fmt: skip
        for size in sorted(candidates):
            if first_misfit(shapes_only(config, size).state_dict(), weights) is None:
                return size
        return None
    return None


def shapes_only(config: ModelConfig, vocab_size: int) -> LanguageModel:
    """The model of `config` for `vocab_size` tokens, its tensors on the meta device: shapes
    without memory or initialization, however large the model."""
    from lm.models.registry import build_model

    with torch.device("meta"):
        return build_model(config, vocab_size)


@dataclass(frozen=True)
class TensorMisfit:
    """How a checkpoint's weights differ from a model's tensors, names in the model's order:
    tensors of another shape, tensors the weights lack (not counting buffers the model supplies
    for older checkpoints, `SUPPLIED_WHEN_MISSING`), and tensors the model has not."""

    reshaped: list[str]
    missing: list[str]
    extra: list[str]

    def __bool__(self) -> bool:
        return bool(self.reshaped or self.missing or self.extra)


def as_loaded(
    found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The weights `found` as the model converts them on loading (`CONVERTED_ON_LOAD`): an old
    count bigram's dense V×V `counts` become its pairs (data-sized) and V totals, shaped by
    the table's V, so that a table of another vocabulary is still seen to differ."""
    found = dict(found)
    for old in CONVERTED_ON_LOAD:
        for name in [n for n in found if n.rpartition(".")[2] == old]:
            prefix, table = name[: -len(old)], found[name]
            converted = {
                "pair_ids": torch.empty(0, dtype=torch.int64, device="meta"),
                "pair_counts": torch.empty(0, dtype=torch.float64, device="meta"),
                "row_totals": torch.empty(table.shape[:1], dtype=torch.float64, device="meta"),
            }
            if all(prefix + new in expected and prefix + new not in found for new in converted):
                found.pop(name)
                found.update({prefix + new: tensor for new, tensor in converted.items()})
    return found


def tensor_misfit(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]
) -> TensorMisfit:
    """Compare the weights `found` with a model's `expected` state dict: what loading checks,
    said as names instead of PyTorch's list of every tensor."""
    found = as_loaded(found, expected)
    reshaped = [n for n, t in expected.items() if n in found and found[n].shape != t.shape
                and n.rpartition(".")[2] not in DATA_SIZED]  # fmt: skip
    missing = [
        n for n in expected
        if n not in found and n.rpartition(".")[2] not in SUPPLIED_WHEN_MISSING
    ]  # fmt: skip
    extra = [n for n in found if n not in expected]
    return TensorMisfit(reshaped, missing, extra)


def first_misfit(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]
) -> str | None:
    """The first tensor, in the model's order, that the weights `found` lack or have in another
    shape than the model's `expected`, else the first they have that the model has not, said
    as `<name> is <shape> in the weights but <shape> by model.json`; None when they fit."""
    found = as_loaded(found, expected)
    misfit = tensor_misfit(expected, found)
    differing = set(misfit.reshaped) | set(misfit.missing)
    name = next((name for name in expected if name in differing), None)
    if name in misfit.missing:
        return f"{name} {_shape(expected[name])} is not in the weights, but model.json has it"
    if name is not None:
        trained, described = _shape(found[name]), _shape(expected[name])
        return f"{name} is {trained} in the weights but {described} by model.json"
    if misfit.extra:
        extra = misfit.extra[0]
        shape = _shape(found[extra])
        return f"{extra} {shape} is in the weights, but the model of model.json has no such tensor"
    return None


def _shape(tensor: torch.Tensor) -> str:
    return str(list(tensor.shape))
