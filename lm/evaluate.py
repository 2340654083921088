"""Scoring a language model on a token shard: loss per token, perplexity and bits per byte.

Loss per token depends on the tokenizer (a character model predicts more, easier tokens than a
BPE model), so models with different tokenizers compare only in **bits per byte**: the nats
summed over the target tokens, over ln 2, over the UTF-8 bytes those tokens stand for (after
nanochat's `evaluate_bpb`). The bytes of a token come from a table (`TokenBytes`):

- a SentencePiece piece is its text with `▁` read as a space; a byte-fallback piece `<0xNN>`
  is 1 byte; a character is its UTF-8 length;
- the end-of-text id counts 1 byte: it stands for the break between two documents;
- the unknown id counts 1 byte: the text it replaced is lost, and it was at least one byte.
  Counting the least it could be never flatters a model;
- SentencePiece adds a "dummy prefix" space to each document it encodes (`Hello` → `▁Hello`)
  that is no byte of the text, so the first token of each document (the token after an
  end-of-text) counts one byte less when its piece starts with `▁`.

With that, the bytes of every token of a shard add up to its text bytes plus one per document.

The sample is fixed: `batches` × `batch_size` windows drawn with a seeded generator, so every
model scored on the same shard with the same settings sees the same windows, and a model and
its baseline compare; the spread over batches says how much a difference means.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lm.eval_config import EvalConfig
from lm.models.base import LanguageModel
from lm.progress import ProgressLog
from lm.tokenizer import UNKNOWN, SentencePieceTokenizer, Tokenizer, load_tokenizer
from lm.train import TokenBatches

logger = logging.getLogger("lm.evaluate")
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
SENTENCEPIECE_SPACE = "\u2581"


class EvaluationError(ValueError):
    """A split that cannot be scored; the message names it and says what to do."""


class CheckpointError(ValueError):
    """A folder that holds no loadable trained model; the message names the folder."""


@dataclass(frozen=True)
class TokenBytes:
    """How many UTF-8 bytes of text each token id stands for (see the module docstring)."""

    lengths: torch.Tensor  # (vocab,) int64
    starts_with_space: torch.Tensor  # (vocab,) bool: pieces that can carry the dummy prefix
    eot_id: int
    dummy_prefix: int  # bytes the tokenizer adds to each document's first piece: 0 or 1

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> TokenBytes:
        sentencepiece = isinstance(tokenizer, SentencePieceTokenizer)
        lengths, spaced = [], []
        for token_id in range(tokenizer.vocab_size):
            piece = tokenizer.piece(token_id)
            if token_id == tokenizer.eot_id or piece == UNKNOWN or BYTE_PIECE.fullmatch(piece):
                lengths.append(1)
                spaced.append(False)
            elif sentencepiece:
                lengths.append(len(piece.replace(SENTENCEPIECE_SPACE, " ").encode()))
                spaced.append(piece.startswith(SENTENCEPIECE_SPACE))
            else:
                lengths.append(len(piece.encode()))
                spaced.append(False)
        table = cls(torch.tensor(lengths), torch.tensor(spaced), tokenizer.eot_id, 0)
        # A one-letter document measures the prefix: its tokens add up to 1 byte, or 2.
        measured = int(table.lengths[tokenizer.encode("a")].sum()) - 1
        return cls(table.lengths, table.starts_with_space, tokenizer.eot_id, int(measured == 1))

    def of_targets(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Bytes of each target token; `inputs` are the tokens before them (same shape)."""
        lengths = self.lengths.to(targets.device)[targets]
        if self.dummy_prefix:
            starts = (inputs == self.eot_id) & self.starts_with_space.to(targets.device)[targets]
            lengths = lengths - self.dummy_prefix * starts.long()
        return lengths


@dataclass(frozen=True)
class SplitScore:
    """A model's numbers on one split. `loss` is nats per target token; `bpb` bits per UTF-8
    byte; `*_std` the sample standard deviation over batches (0 with one batch)."""

    loss: float
    loss_std: float
    ppl: float
    bpb: float
    bpb_std: float
    tokens: int
    bytes: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluation_windows(
    tokens: np.ndarray, length: int, batches: int, batch_size: int, seed: int, split: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed sample: `batches` (inputs, targets) pairs of `batch_size` windows of `length`
    tokens each, drawn as training draws its batches. A split too short for one window is used
    whole, as a single window."""
    if len(tokens) < 2:
        raise EvaluationError(
            f"the {split} split has {len(tokens)} token(s): nothing to predict; give the split "
            "more data (split settings) or leave it out of eval.splits"
        )
    if len(tokens) <= length:
        logger.warning(
            "evaluate: the %s split has %d tokens, fewer than a window of %d: scoring it whole, "
            "as one window", split, len(tokens), length,
        )  # fmt: skip
        length, batches, batch_size = len(tokens) - 1, 1, 1
    sampler = TokenBatches(tokens, length, batch_size, seed, split=split)
    return [sampler.next(torch.device("cpu")) for _ in range(batches)]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """As in training: bf16 when asked, or on CUDA when `auto`; otherwise fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's weights (or buffers: the count bigram has no parameters)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def score_windows(
    model: LanguageModel,
    windows: list[tuple[torch.Tensor, torch.Tensor]],
    token_bytes: TokenBytes,
    autocast: torch.dtype | None = None,
    name: str = "evaluate",
) -> SplitScore:
    """Loss, perplexity and bits per byte of `model` over `windows`, in float64 sums."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    progress = ProgressLog(name, total=sum(y.numel() for _, y in windows), unit="tokens")
    batch_nats, batch_tokens, batch_bytes = [], [], []
    try:
        for x, y in windows:
            x, y = x.to(device), y.to(device)
            precision = (
                torch.autocast(device_type=device.type, dtype=autocast)
                if autocast is not None
                else contextlib.nullcontext()
            )
            with precision:
                logits, _ = model(x)
            nats = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none"
            )
            batch_nats.append(nats.double().sum().item())
            batch_tokens.append(y.numel())
            batch_bytes.append(int(token_bytes.of_targets(x, y).sum().item()))
            progress.update(sum(batch_tokens))
    finally:
        model.train(was_training)
    progress.finish()
    nats, tokens, n_bytes = np.array(batch_nats), np.array(batch_tokens), np.array(batch_bytes)
    if n_bytes.sum() <= 0:
        raise EvaluationError(f"{name}: the target tokens stand for no text bytes")
    losses = nats / tokens
    bpbs = nats / math.log(2) / np.maximum(n_bytes, 1)
    spread = {"ddof": 1} if len(windows) > 1 else {"ddof": 0}
    loss = float(nats.sum() / tokens.sum())
    return SplitScore(
        loss=loss,
        loss_std=float(losses.std(**spread)),
        ppl=math.exp(loss),
        bpb=float(nats.sum() / math.log(2) / n_bytes.sum()),
        bpb_std=float(bpbs.std(**spread)),
        tokens=int(tokens.sum()),
        bytes=int(n_bytes.sum()),
    )


def evaluate(
    model: LanguageModel,
    tokens: np.ndarray,
    tokenizer: Tokenizer,
    config: EvalConfig,
    split: str = "val",
    window: int | None = None,
) -> SplitScore:
    """Score `model` on one split's tokens with the fixed sample of `config`. Windows are the
    model's block size unless `window` says otherwise (a baseline is scored on the windows of
    the model it is compared with)."""
    windows = evaluation_windows(
        tokens, window or model.block_size, config.batches, config.batch_size, config.seed, split
    )
    autocast = autocast_dtype(config.precision, model_device(model))
    return score_windows(model, windows, TokenBytes.of(tokenizer), autocast, f"evaluate {split}")


def count_bigram_baseline(train_tokens: np.ndarray, vocab_size: int, smoothing: float = 1.0):
    """The count bigram (add-`smoothing`) fitted on `train_tokens`, as the reference every model
    is reported beside. Its table is served by the neural bigram, which holds the same
    log-probabilities as an embedding: the count model renormalises its whole vocab × vocab
    table at every forward (128 MB at vocab 4000, ~1 s a batch here), the lookup does not, and
    the numbers are the same."""
    from lm.models.bigram import BigramModel
    from lm.models.bigram_count import BigramCountModel
    from lm.models.config import BigramConfig, BigramCountConfig

    counts = BigramCountModel(BigramCountConfig(smoothing=smoothing), vocab_size)
    counts.fit(torch.from_numpy(np.asarray(train_tokens, dtype=np.int64)))
    table = BigramModel(BigramConfig(), vocab_size)
    with torch.no_grad():
        table.logits.weight.copy_(counts.log_probs().float())
    return table.eval()


# -- trained models ----------------------------------------------------------------------------

CHECKPOINTS = ("best", "final")  # preferred first
DONE_MARKER = "DONE"


def load_trained(folder: Path) -> tuple[LanguageModel, Tokenizer]:
    """The model and tokenizer of a train artifact folder (`model.json`, `tokenizer/`, and the
    `best/` checkpoint, else `final/`), in eval mode on the CPU."""
    from lm.models.registry import MODELS, build_model

    model_file = folder / "model.json"
    if not model_file.is_file():
        raise CheckpointError(f"{folder}: not a trained model folder (no model.json)")
    checkpoint = next(
        (folder / name for name in CHECKPOINTS if (folder / name / DONE_MARKER).is_file()), None
    )
    if checkpoint is None:
        raise CheckpointError(
            f"{folder}: no complete checkpoint (best/ or final/ with a DONE marker); the "
            "training did not finish: rerun the pipeline"
        )
    settings = json.loads(model_file.read_text())
    kind = settings.get("kind")
    if kind not in MODELS:
        raise CheckpointError(f"{model_file}: unknown model kind {kind!r} ({', '.join(MODELS)})")
    tokenizer = load_tokenizer(folder / "tokenizer")
    model = build_model(MODELS[kind][1].model_validate(settings), tokenizer.vocab_size)
    weights = torch.load(checkpoint / "model.pt", map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(
            f"{checkpoint / 'model.pt'}: does not fit model.json: {error}"
        ) from None
    return model.eval(), tokenizer
