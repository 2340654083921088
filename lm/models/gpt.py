"""A decoder-only transformer whose parts are switches (after nanoGPT's model file and litgpt's
config flags): positions (sinusoidal, learned or rotary), MLP (GELU or SwiGLU), norm (LayerNorm
or RMSNorm), attention heads (multi-head, grouped-query or multi-query through `n_kv_heads`),
biases on or off, tied embeddings, dropout and stochastic depth, and attention through
`F.scaled_dot_product_attention` or explicit math. A key/value cache makes generation cost one
token's work per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lm.models.base import LanguageModel
from lm.models.config import GPTConfig


class KVCache:
    """Keys and values of every layer for the positions processed so far."""

    def __init__(self, n_layer: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 device, dtype):  # fmt: skip
        shape = (batch, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        end = start + k.size(2)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def _norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=1e-5)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def sinusoidal_table(length: int, width: int) -> torch.Tensor:
    """Vaswani et al. (2017): sin on even, cos on odd features, wavelengths up to 10000·2π."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(1e4) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return table


# The amplitude of the sinusoidal table added to the token embeddings (std 0.02). At the
# table's own amplitude, 1, positions were ~35x the tokens and hid them. Measured, val loss
# after 600 steps of a 2-layer n_embd-128 model on characters, seeds 0-2 (learned positions:
# 2.34, 2.38): amplitude 1: 2.71, 2.74, 2.80; 0.3: 2.52 (seed 1); 0.1: 2.37, 2.34, 2.42; 0.028
# (the tokens' RMS): 2.57, 2.57, 2.56; at block_size 256 (400 steps) 1: 3.01, 0.1: 2.77.
# Vaswani et al. multiply the embeddings by sqrt(n_embd) instead; with these small tied
# embeddings that makes the first loss grow with the width (ln V + 1.4 at n_embd 768).
POSITION_AMPLITUDE = 0.1


def rope_tables(length: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inverse = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inverse)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[2i], x[2i+1]) by its position's angle; x is (B, heads, T, D).

    Pairs of neighbours, as Meta's original LLaMA code and GPT-J: Hugging Face's Llama rotates
    the two halves instead (`rotate_half`), so weights moved between the two need the rows of
    each head's q and k projections reordered ([0, 2, 4, ..., 1, 3, 5, ...]). A bf16 q or k is
    rotated in fp32 and rounded once; an fp64 one stays fp64 (a check against a reference)."""
    precision = torch.promote_types(x.dtype, torch.float32)
    even, odd = x[..., 0::2].to(precision), x[..., 1::2].to(precision)
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


# Under CPU bf16 autocast, PyTorch's fused (flash) attention backward is about 6x slower than in
# fp32, which cancelled bf16's whole gain. Contexts up to this long attend by explicit math in
# bf16 instead, the fastest measured (compiled, nanoGPT's CPU shape: 1.64x eager fp32, against
# 1.48x for the fused kernel in fp32; bench/bench_train.py); longer ones use the fused kernel in
# fp32, whose memory stays linear in the context where explicit scores grow with its square.
CPU_BF16_MATH_MAX_CONTEXT = 256


def explicit_attention(q, k, v, mask: torch.Tensor | None, dropout: float) -> torch.Tensor:
    """Attention written out: scaled scores in fp32, the causal (or given) mask, softmax,
    dropout, then the weighted sum of values in the values' precision.

    The scores are fp32 as in a fused kernel, whose accumulators they are: a bf16 product
    rounds each to 8 bits (0.03 at a score of 8, 3 % on its weight). The default preset
    trained on such scores (CPU bf16, 2 Xeon cores with AMX) ended at 2.10 val bits per byte,
    against 1.98 with fp32 scores; at 300 steps eager, val loss 5.66 against 5.56, and 5.57 all
    in fp32. Their product is a few percent of a step's work: no measurable speed lost."""
    time, keys = q.size(2), k.size(2)
    with torch.autocast(q.device.type, enabled=False):
        precision = torch.promote_types(q.dtype, torch.float32)  # fp64 stays fp64
        scores = (q.to(precision) @ k.to(precision).transpose(-2, -1)) * (1 / math.sqrt(q.size(-1)))
    if time > 1:
        allowed = mask if mask is not None else torch.ones(
            time, keys, dtype=torch.bool, device=q.device
        ).tril()  # fmt: skip
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = scores.softmax(dim=-1).to(v.dtype)
    return F.dropout(weights, dropout, training=dropout > 0) @ v


def attends_by_math(kind: str, device_type: str, bf16: bool, keys: int) -> bool:
    """Whether attention is written out, keeping its (queries × keys) scores for the backward
    pass: `attention = "math"`, or CPU bf16 over at most CPU_BF16_MATH_MAX_CONTEXT keys (see
    above). Otherwise the fused kernels of `F.scaled_dot_product_attention` run, which never
    store the scores (`lm.sizing` counts on this)."""
    cpu_bf16 = device_type == "cpu" and bf16
    return kind == "math" or (cpu_bf16 and keys <= CPU_BF16_MATH_MAX_CONTEXT)


def attend(q, k, v, mask: torch.Tensor | None, dropout: float, kind: str) -> torch.Tensor:
    """Causal attention of (B, heads, T, D) queries over keys and values, unless `mask` (T, keys)
    says otherwise; `kind` is the config's `attention`, overridden on CPU bf16 (see above)."""
    cpu_bf16 = q.device.type == "cpu" and q.dtype == torch.bfloat16
    if attends_by_math(kind, q.device.type, q.dtype == torch.bfloat16, k.size(2)):
        return explicit_attention(q, k, v, mask, dropout)
    causal = mask is None and q.size(2) > 1
    if not cpu_bf16:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal
        )
    with torch.autocast("cpu", enabled=False):  # longer CPU bf16 contexts: the kernel in fp32
        out = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout, is_causal=causal
        )
    return out.to(q.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        kv_width = config.kv_heads * config.head_dim
        self.query = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.key = nn.Linear(config.n_embd, kv_width, bias=config.bias)
        self.value = nn.Linear(config.n_embd, kv_width, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.proj.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope, layer: int, cache: KVCache | None, start: int) -> torch.Tensor:
        config = self.config
        batch, time, _ = x.shape
        q = self.query(x).view(batch, time, config.n_head, config.head_dim).transpose(1, 2)
        k = self.key(x).view(batch, time, config.kv_heads, config.head_dim).transpose(1, 2)
        v = self.value(x).view(batch, time, config.kv_heads, config.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, start, k, v)
        if config.kv_heads != config.n_head:  # grouped/multi-query: share each kv head
            repeat = config.n_head // config.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        # Query i (absolute position start + i) sees keys at positions <= start + i.
        mask = None
        if time > 1 and start > 0:
            keys = k.size(2)
            mask = torch.ones(time, keys, dtype=torch.bool, device=x.device).tril(diagonal=start)
        dropout = config.dropout if self.training else 0.0
        out = attend(q, k, v, mask, dropout, config.attention)
        out = out.transpose(1, 2).reshape(batch, time, config.n_embd)
        return self.dropout(self.proj(out))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        hidden = config.hidden_dim
        self.up = nn.Linear(config.n_embd, hidden, bias=config.bias)
        if self.swiglu:
            self.gate = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.down = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.down.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.gate(x)) * self.up(x) if self.swiglu else F.gelu(self.up(x))
        return self.dropout(self.down(hidden))


def drop_path(branch: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for whole sequences with probability `rate`,
    scaling the kept ones by 1/(1 - rate) so its expected value, and the eval-time model, are
    unchanged."""
    if not training or rate == 0.0:
        return branch
    keep = 1.0 - rate
    mask = branch.new_empty(branch.size(0), *(1,) * (branch.dim() - 1)).bernoulli_(keep)
    return branch * mask / keep


def drop_path_rates(config: GPTConfig) -> list[float]:
    """Each block's stochastic-depth rate: linear from 0 (first block) to `drop_path` (last),
    as in DeiT, since the early blocks build what every later one reads. A lone block is the
    last one and gets the whole rate."""
    if config.n_layer == 1:
        return [config.drop_path]
    return [config.drop_path * i / (config.n_layer - 1) for i in range(config.n_layer)]


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, drop_rate: float = 0.0):
        super().__init__()
        self.norm_1 = _norm(config)
        self.attention = CausalSelfAttention(config)
        self.norm_2 = _norm(config)
        self.mlp = MLP(config)
        self.drop_rate = drop_rate

    def forward(self, x, rope, layer, cache, start):
        attended = self.attention(self.norm_1(x), rope, layer, cache, start)
        x = x + drop_path(attended, self.drop_rate, self.training)
        return x + drop_path(self.mlp(self.norm_2(x)), self.drop_rate, self.training)


class GPT(LanguageModel):
    def __init__(self, config: GPTConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.block_size = config.block_size
        self.token_embedding = nn.Embedding(vocab_size, config.n_embd)
        if config.pos == "learned":
            self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos == "sinusoidal":
            table = sinusoidal_table(config.block_size, config.n_embd)
            self.register_buffer("position_table", table, persistent=False)
            # The table is added at amplitude POSITION_AMPLITUDE (see there). Saved with the
            # weights: checkpoints from before it, trained at amplitude 1, load with 1.
            self.register_buffer("position_scale", torch.tensor(POSITION_AMPLITUDE))
        else:
            cos, sin = rope_tables(config.block_size, config.head_dim, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, rate) for rate in drop_path_rates(config))
        self.norm = _norm(config)
        self.head = nn.Linear(config.n_embd, vocab_size, bias=False)
        if config.tie_embeddings:
            # One matrix reads and writes tokens: fewer parameters, and better small models.
            self.head.weight = self.token_embedding.weight
        self.apply(self._init_weights)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.config.pos == "sinusoidal":
            state_dict.setdefault(prefix + "position_scale", torch.tensor(1.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_projection", False):
                # GPT-2: scale the layers that write into the residual stream by
                # 1/sqrt(2 * n_layer), so its variance does not grow with depth.
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def new_cache(self, batch: int, device=None, dtype=None) -> KVCache:
        weight = self.token_embedding.weight
        return KVCache(
            self.config.n_layer, batch, self.config.kv_heads, self.config.block_size,
            self.config.head_dim, device or weight.device, dtype or weight.dtype,
        )  # fmt: skip

    def forward(self, idx, targets=None, cache: KVCache | None = None):
        """With a cache, `idx` continues the sequence the cache holds (prefill, then steps)."""
        time = idx.size(1)
        start = cache.length if cache is not None else 0
        if start + time > self.config.block_size:
            raise ValueError(
                f"sequence of {start + time} tokens is longer than block_size "
                f"{self.config.block_size}"
            )
        x = self.token_embedding(idx)
        if self.config.pos == "learned":
            x = x + self.position_embedding(torch.arange(start, start + time, device=idx.device))
        elif self.config.pos == "sinusoidal":
            x = x + self.position_scale * self.position_table[start : start + time]
        rope = None
        if self.config.pos == "rope":
            rope = (self.rope_cos[start : start + time], self.rope_sin[start : start + time])
        x = self.dropout(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, layer, cache, start)
        if cache is not None:
            cache.length = start + time
        logits = self.head(self.norm(x))
        return logits, self.loss_of(logits, targets)


def gpt_parameter_count(config: GPTConfig, vocab_size: int) -> int:
    """The closed-form number of parameters, for tests and for sizing."""
    c, kv = config.n_embd, config.kv_heads * config.head_dim
    hidden = config.hidden_dim
    bias = 1 if config.bias else 0
    norm = c * (2 if config.norm == "layernorm" and config.bias else 1)
    attention = c * c + 2 * c * kv + c * c + bias * (c + 2 * kv + c)
    if config.mlp == "swiglu":
        mlp = 3 * c * hidden + bias * (2 * hidden + c)
    else:
        mlp = 2 * c * hidden + bias * (hidden + c)
    total = vocab_size * c + config.n_layer * (2 * norm + attention + mlp) + norm
    if config.pos == "learned":
        total += config.block_size * c
    if not config.tie_embeddings:
        total += vocab_size * c
    return total
