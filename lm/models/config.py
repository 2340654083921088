"""Model configuration: one typed section per model family, chosen by `kind`.

After litgpt's config: the `gpt` options are fields (`pos`, `mlp`, `norm`, `n_kv_heads`, `bias`,
...) that the model reads, not subclasses. Invalid shapes are refused here, with the numbers, before
any tensor is allocated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from lm.strict_model import StrictModel

if TYPE_CHECKING:
    from lm.train_config import TrainConfig

# A hidden layer's width; `hiddens = []` is no hidden layer (the embeddings straight to the
# logits), but a layer of 0 units would leave only the output bias to learn.
HiddenWidth = Annotated[int, Field(ge=1)]


class BigramCountConfig(StrictModel):
    kind: Literal["bigram-count"] = "bigram-count"
    smoothing: float = Field(1.0, ge=0.0, description="add-k smoothing of the counts")


class BigramConfig(StrictModel):
    kind: Literal["bigram"] = "bigram"


class MLPConfig(StrictModel):
    """Bengio et al. (2003): the previous `context` tokens' embeddings, concatenated, through
    hidden layers to next-token logits."""

    kind: Literal["mlp"] = "mlp"
    context: int = Field(3, ge=1)
    n_embd: int = Field(10, ge=1)
    hiddens: list[HiddenWidth] = Field(default_factory=lambda: [200])
    norm: Literal["none", "batchnorm", "layernorm"] = "none"

    @model_validator(mode="after")
    def _norm_has_a_layer(self) -> MLPConfig:
        """The norm follows each hidden layer: with none, it would be silently left out."""
        if self.norm != "none" and not self.hiddens:
            raise ValueError(
                f"norm '{self.norm}' normalizes hidden layers, and hiddens is empty: add a "
                'hidden layer, or set norm = "none"'
            )
        return self


class W2VConfig(StrictModel):
    """A language model on word2vec vectors (after the REAN idea): the vectors of the previous
    `context` tokens, concatenated, through tanh layers to next-token logits. The vectors are
    trained on the tokenizer's pieces (`word2vec.input = "pieces"`), so row i is token i's
    vector; `vector_size` must equal theirs."""

    kind: Literal["w2v"] = "w2v"
    context: int = Field(3, ge=1)
    vector_size: int = Field(100, ge=1, description="= word2vec.vector_size")
    hiddens: list[HiddenWidth] = Field(default_factory=lambda: [200])
    freeze: bool = Field(True, description="keep the vectors fixed (a buffer), or fine-tune them")


class GPTConfig(StrictModel):
    """A decoder-only transformer; every architectural choice is a switch."""

    kind: Literal["gpt"] = "gpt"
    # A named set of switches (`atinuke`, `modern`); fields given beside it win.
    preset: str | None = None
    block_size: int = Field(128, ge=1)
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_heads: int | None = Field(None, ge=1, description="None: = n_head (multi-head)")
    n_embd: int = Field(128, ge=1)
    pos: Literal["sinusoidal", "learned", "rope"] = "learned"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Stochastic depth (Huang et al. 2016): in training each residual branch is skipped for a
    # whole sequence with a chance rising linearly from 0 at the first block to `drop_path` at
    # the last, so a deep model on little data cannot lean on any one block.
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)
    mlp_ratio: float = Field(4.0, gt=0.0)
    rope_base: float = Field(10000.0, gt=0.0)
    attention: Literal["sdpa", "math"] = "sdpa"
    # "word2vec": token embeddings start from vectors trained on the same tokenizer's pieces
    # (projected to n_embd when the sizes differ; see lm/models/embeddings.py).
    init_embeddings: Literal["random", "word2vec"] = "random"

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        # A preset that is not text is left to the field's type check; an empty one names
        # no preset (it was taken as none: the base switches, silently).
        if isinstance(data, dict) and isinstance(data.get("preset"), str):
            name = data["preset"]
            if name not in GPT_PRESETS:
                raise ValueError(f"unknown gpt preset '{name}' (presets: {', '.join(GPT_PRESETS)})")
            chosen = GPT_PRESETS[name]
            kv_heads, n_head = chosen.get("n_kv_heads"), data.get("n_head")
            if (
                "n_kv_heads" not in data
                and kv_heads
                and isinstance(n_head, int)
                and n_head % kv_heads
            ):
                raise ValueError(  # said here: after the merge, the preset's value looks set
                    f"n_head ({n_head}) must be divisible by n_kv_heads ({kv_heads}, the "
                    f"'{name}' preset's): set n_kv_heads to a divisor of n_head"
                )
            data = chosen | data
        return data

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden_dim(self) -> int:
        """MLP width; SwiGLU uses 2/3 of it per branch so both MLPs cost about the same."""
        hidden = int(self.mlp_ratio * self.n_embd)
        return int(2 * hidden / 3) if self.mlp == "swiglu" else hidden

    @model_validator(mode="after")
    def _shapes_fit(self) -> GPTConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.kv_heads:
            raise ValueError(
                f"n_head ({self.n_head}) must be divisible by n_kv_heads ({self.kv_heads})"
            )
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(
                f"rope needs an even head size, not {self.head_dim} "
                f"(n_embd {self.n_embd} / n_head {self.n_head})"
            )
        if self.hidden_dim < 1:
            raise ValueError(
                f"mlp_ratio ({self.mlp_ratio}) × n_embd ({self.n_embd}) leaves the MLP "
                "no hidden units"
            )
        return self


GPT_PRESETS: dict[str, dict] = {
    # The original transformer's choices: sinusoidal positions, GELU, LayerNorm, multi-head
    # attention, biases and dropout.
    "atinuke": {"pos": "sinusoidal", "mlp": "gelu", "norm": "layernorm", "n_kv_heads": None,
                "bias": True, "dropout": 0.1},
    # A modern decoder: rotary positions, SwiGLU, RMSNorm, grouped-query attention, no biases.
    "modern": {"pos": "rope", "mlp": "swiglu", "norm": "rmsnorm", "n_kv_heads": 2,
               "bias": False, "dropout": 0.0},
}  # fmt: skip


def written_one_way(model: ModelConfig) -> ModelConfig:
    """`model` as one spelling of the network it builds: a gpt's `preset` is a way to write
    its switches (already applied), and `n_kv_heads` equal to `n_head` is plain multi-head
    attention, as None is. Cache keys and the ablation's same-model check compare this."""
    if model.kind != "gpt":
        return model
    written: dict = {"preset": None}
    if model.n_kv_heads == model.n_head:
        written["n_kv_heads"] = None
    return model.model_copy(update=written)


def gpt_preset(name: str, **overrides) -> GPTConfig:
    return GPTConfig(preset=name, **overrides)


ModelConfig = BigramCountConfig | BigramConfig | MLPConfig | W2VConfig | GPTConfig
MODEL_KINDS = tuple(
    kind.model_fields["kind"].default
    for kind in (BigramCountConfig, BigramConfig, MLPConfig, W2VConfig, GPTConfig)
)


def window_history(model: ModelConfig) -> int:
    """Tokens of context a training window of the stream needs before its first target: a
    fixed-context model (MLP, w2v) reads `context` tokens for each prediction."""
    return model.context - 1 if model.kind in ("mlp", "w2v") else 0


def uses_word2vec(config: ModelConfig) -> bool:
    """Whether building this model for training needs vectors trained on the tokenizer's
    pieces (the train stage then depends on the word2vec stage)."""
    return config.kind == "w2v" or (config.kind == "gpt" and config.init_embeddings == "word2vec")


def word2vec_width(config: ModelConfig) -> int:
    """The width of the vector matrix the model takes: `vector_size` for `w2v` (which must
    match the vectors), `n_embd` for `gpt` (vectors are projected to it)."""
    if config.kind == "w2v":
        return config.vector_size
    if config.kind == "gpt":
        return config.n_embd
    raise ValueError(f"model kind '{config.kind}' takes no word2vec vectors")


def effective_train_config(model: ModelConfig, train: TrainConfig) -> TrainConfig:
    """A transformer trains on its own context length."""
    if model.kind == "gpt":
        return train.model_copy(update={"block_size": model.block_size})
    return train


def planned_tokens(model: ModelConfig, train: TrainConfig) -> int:
    """The tokens a training of `model` with `train` sees: steps × global batch × the context
    it trains on (`lmforge size`; an ablation's variants compared by it)."""
    settings = effective_train_config(model, train)
    return settings.max_steps * settings.global_batch * settings.block_size
