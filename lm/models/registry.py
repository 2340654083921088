"""The model ladder behind one interface and one registry: `build_model(config, vocab_size)`.

| kind           | what                                                   |
|----------------|--------------------------------------------------------|
| `bigram-count` | closed-form pair counts with add-k smoothing           |
| `bigram`       | the same table, learned                                |
| `mlp`          | Bengio et al. 2003: context window, embeddings, tanh   |
| `gpt`          | decoder-only transformer, every part a switch          |
"""

from __future__ import annotations

from lm.models.base import LanguageModel
from lm.models.bigram import BigramModel
from lm.models.bigram_count import BigramCountModel
from lm.models.config import BigramConfig, BigramCountConfig, GPTConfig, MLPConfig, ModelConfig
from lm.models.gpt import GPT
from lm.models.mlp import MLPModel

MODELS: dict[str, tuple[type[LanguageModel], type]] = {
    "bigram-count": (BigramCountModel, BigramCountConfig),
    "bigram": (BigramModel, BigramConfig),
    "mlp": (MLPModel, MLPConfig),
    "gpt": (GPT, GPTConfig),
}


def build_model(config: ModelConfig, vocab_size: int, **extra) -> LanguageModel:
    model_class, _ = MODELS[config.kind]
    return model_class(config, vocab_size, **extra)
