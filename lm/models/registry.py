"""The model ladder behind one interface and one registry: `build_model(config, vocab_size)`.

| kind           | what                                                      |
|----------------|-----------------------------------------------------------|
| `bigram-count` | closed-form pair counts with add-k smoothing              |
| `bigram`       | the same table, learned                                   |
| `mlp`          | Bengio et al. 2003: context window, embeddings, tanh      |
| `w2v`          | the same on word2vec vectors of the pieces, frozen or not |
| `gpt`          | decoder-only transformer, every part a switch             |
"""

from __future__ import annotations

import torch

from lm.models.base import FixedContextModel, LanguageModel
from lm.models.bigram import BigramModel
from lm.models.bigram_count import BigramCountModel
from lm.models.config import (
    BigramConfig,
    BigramCountConfig,
    GPTConfig,
    MLPConfig,
    ModelConfig,
    W2VConfig,
    uses_word2vec,
)
from lm.models.embeddings import init_token_embedding
from lm.models.gpt import GPT
from lm.models.mlp import MLPModel
from lm.models.w2v import W2VModel

MODELS: dict[str, tuple[type[LanguageModel], type]] = {
    "bigram-count": (BigramCountModel, BigramCountConfig),
    "bigram": (BigramModel, BigramConfig),
    "mlp": (MLPModel, MLPConfig),
    "w2v": (W2VModel, W2VConfig),
    "gpt": (GPT, GPTConfig),
}


def build_model(
    config: ModelConfig, vocab_size: int, vectors: torch.Tensor | None = None,
    eot_id: int | None = None, **extra,
) -> LanguageModel:  # fmt: skip
    """`vectors` (vocab_size × `word2vec_width(config)`, from
    `lm.models.embeddings.load_piece_vectors`) feed a `w2v` model or start a `gpt`'s token
    embedding (`init_embeddings = "word2vec"`). Without them both start random, which is what
    loading a checkpoint into them needs. `eot_id`: what the fixed-context models (MLP, w2v)
    read before a row's start (a loaded checkpoint brings its own)."""
    model_class, _ = MODELS[config.kind]
    # Said here, not as an IndexError at the first forward or NaN logits from empty vectors.
    if vocab_size < 1:
        raise ValueError(f"vocab_size {vocab_size}: a model needs a vocabulary of 1 or more")
    if eot_id is not None and not 0 <= eot_id < vocab_size:
        raise ValueError(f"eot_id {eot_id} is outside the vocabulary of {vocab_size}")
    if eot_id is not None and issubclass(model_class, FixedContextModel):
        extra["pad_id"] = eot_id
    if vectors is not None and not uses_word2vec(config):
        hint = ' (set init_embeddings = "word2vec")' if config.kind == "gpt" else ""
        raise ValueError(f"model kind '{config.kind}' takes no word2vec vectors{hint}")
    if vectors is not None and not isinstance(vectors, torch.Tensor):
        vectors = torch.as_tensor(vectors)  # a numpy array (KeyedVectors.vectors) as well
    if vectors is not None and not bool(torch.isfinite(vectors).all()):
        raise ValueError("word2vec vectors hold NaN or infinite values")
    if vectors is not None and not bool(vectors.any()):  # rescaled by their RMS: 0/0
        raise ValueError("word2vec vectors are all zero: nothing to start from")
    if config.kind == "w2v":
        return model_class(config, vocab_size, vectors=vectors, **extra)
    model = model_class(config, vocab_size, **extra)
    if vectors is not None:  # a gpt starting from word2vec
        init_token_embedding(model.token_embedding, vectors)
    return model
