"""A language model on word2vec vectors, after the REAN idea (a network that reads pretrained
word vectors): the vectors of the previous `context` tokens, concatenated, through tanh layers to
next-token logits. Unlike REAN, which regresses the next token's vector, it ends in logits over
the vocabulary, so it shares the ladder's loss, sampler and bits per byte.

Concatenation rather than a position-weighted sum: each position keeps its own slice of the
first layer's weights, so word order is visible to the network, and the input width
(`context × vector_size`) stays small for the short contexts this model is meant for.

The vectors come from word2vec trained on the tokenizer's pieces (row i = token i, see
`lm.models.embeddings`). Frozen, they are a buffer: saved in checkpoints, not trained, not
counted by `num_params()` and not given to the optimizer. Fine-tuned, they are a parameter
(weight-decayed like every matrix). They are rescaled by one factor to unit RMS, the scale the
first layer's default initialisation expects; angles and relative lengths are kept. Without
vectors (tests, or a model about to load a checkpoint) they start as N(0, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lm.models.base import FixedContextModel, context_windows
from lm.models.config import W2VConfig


class W2VModel(FixedContextModel):
    def __init__(self, config: W2VConfig, vocab_size: int, vectors: torch.Tensor | None = None,
                 pad_id: int = 0):  # fmt: skip
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.block_size = config.context
        self._init_padding(pad_id)  # what positions before the start of the sequence read
        if vectors is None:
            table = torch.randn(vocab_size, config.vector_size)
        else:
            if tuple(vectors.shape) != (vocab_size, config.vector_size):
                raise ValueError(
                    f"w2v: the vectors are {tuple(vectors.shape)} but the model needs "
                    f"(vocab_size, model.vector_size) = ({vocab_size}, {config.vector_size}); "
                    "set model.vector_size to the word2vec vector_size"
                )
            table = vectors.detach().double()
            table = (table / table.square().mean().sqrt()).float()
        if config.freeze:
            self.register_buffer("vectors", table)
        else:
            self.vectors = nn.Parameter(table)
        layers: list[nn.Module] = []
        width = config.context * config.vector_size
        for hidden in config.hiddens:
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width, vocab_size)
        with torch.no_grad():  # small last layer: initial loss close to ln(vocab)
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()

    def lookup_params(self) -> int:
        """The fine-tuned vectors are a table read by index (frozen ones are a buffer)."""
        return self.vectors.numel() if isinstance(self.vectors, nn.Parameter) else 0

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        batch, time = idx.shape
        context = self.config.context
        windows = context_windows(idx, context, self.pad_id)
        features = F.embedding(windows, self.vectors).reshape(batch * time, -1)
        logits = self.head(self.hidden(features)).view(batch, time, -1)
        return logits, self.loss_of(logits, targets)


def w2v_parameter_count(config: W2VConfig, vocab_size: int) -> int:
    """The closed-form number of trained parameters (frozen vectors are a buffer: not counted)."""
    total = 0 if config.freeze else vocab_size * config.vector_size
    width = config.context * config.vector_size
    for hidden in config.hiddens:
        total += width * hidden + hidden
        width = hidden
    return total + width * vocab_size + vocab_size
