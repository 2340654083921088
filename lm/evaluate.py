"""Scoring a language model on a token shard: loss per token, perplexity and bits per byte.

Loss per token depends on the tokenizer (a character model predicts more, easier tokens than a
BPE model), so models with different tokenizers compare only in **bits per byte**: the nats
summed over the target tokens, over ln 2, over the UTF-8 bytes those tokens stand for (after
nanochat's `evaluate_bpb`). The bytes of a token come from a table (`TokenBytes`):

- a SentencePiece piece is its text with `▁` read as a space, and the private-use character
  that escapes a literal `▁` counted so that each escape adds up to the bytes of the character
  it stands for (`SentencePieceTokenizer.text_bytes`, `escape_space_symbol`); a byte-fallback
  piece `<0xNN>` is 1 byte; a character is its UTF-8 length;
- the end-of-text id counts 1 byte: it stands for the break between two documents;
- the unknown id counts 1 byte: the text it replaced is lost, and it was at least one byte
  (a character tokenizer's `<unk>` stands for one character of 1 to 4 bytes, SentencePiece's
  without byte fallback for a whole run of them). Counting the least it could be flatters a
  model least: a tokenizer that cannot spell the text is flattered anyway, since its model
  predicts one cheap `<unk>` instead of the text it replaced. So the scores count the `<unk>`
  targets (`unknown_tokens`), and the evaluate stage warns when there are any: such a model
  compares fairly only with others on the same tokenizer;
- SentencePiece adds a "dummy prefix" space to each document it encodes (`Hello` → `▁Hello`)
  that is no byte of the text, so the first token of each document (the token after an
  end-of-text) counts one byte less when its piece starts with `▁`.

With that, the bytes of every token of a shard add up to its text bytes plus one per end-of-text
(one per document, but for a piece of a document that an ordered split cut).

What is scored (`eval.scoring`):

- `whole` (the default, unless the model trained on documents): every token of the split is
  predicted exactly once, the split read as one stream after an end-of-text mark, so its first
  token is predicted too. Windows advance with an overlap, and in each only the targets no
  earlier window scored count: a transformer sees at least half its window before every scored
  target after the first window, a fixed-context model (MLP, w2v) its whole context. The bytes
  scored are then exactly the split's text bytes plus one per end-of-text, for every tokenizer:
  two tokenizers are compared on the same text, not on samples of it (under an ordered split,
  to within the token a cut falls in).
- `documents` (the default for a model trained with `train.samples = "documents"`): each
  document is scored alone from its start mark, as such a model is trained and as makemore
  scores a name; every target still exactly once.
- `sample`: `batches` × `batch_size` windows drawn with a seeded generator (with replacement),
  for a split too large to score whole, each after the text before it that a fixed-context
  model (MLP, w2v) reads, as training draws them. Every model scored on the same shard with
  the same settings and context sees the same windows; models of different tokenizers or
  contexts see different text, so `whole` is the fair comparison across them.

Each score carries the spread of the per-batch figures and, from it, a standard error of the
split's figure (batches of the whole split hold disjoint targets; sampled ones may overlap, so
there it is only a rough guide).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from lm.allocator import keep_freed_memory
from lm.batches import IGNORED_TARGET, scored_targets
from lm.checkpoint_fit import first_misfit, shapes_only, tokenizer_difference
from lm.checkpoints import DONE_MARKER, WEIGHTS_FILE, damage, digest_mismatch
from lm.eval_config import EvalConfig
from lm.models.base import LanguageModel
from lm.models.config import window_history
from lm.progress import ProgressLog
from lm.token_bytes import PieceBytes
from lm.tokenizer import (
    Tokenizer,
    load_tokenizer,
    tokenizer_file,
)
from lm.train import TokenBatches

logger = logging.getLogger("lm.evaluate")
DEFAULT_WINDOW = 256  # tokens per scored row for models without a block of their own


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
    unknown_id: int | None = None  # the id standing for text the tokenizer cannot spell

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> TokenBytes:
        table = PieceBytes.of(tokenizer)
        return cls(torch.from_numpy(table.lengths), torch.from_numpy(table.starts_with_space),
                   table.eot_id, table.dummy_prefix, table.unknown_id)  # fmt: skip

    def unknown_targets(self, targets: torch.Tensor) -> int:
        """How many of `targets` are the unknown id."""
        return 0 if self.unknown_id is None else int((targets == self.unknown_id).sum())

    def of_targets(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Bytes of each target token; `inputs` are the tokens before them (same shape). A
        target that is not scored (`IGNORED_TARGET`) counts 0."""
        scored = targets != IGNORED_TARGET
        targets = torch.where(scored, targets, 0)
        lengths = self.lengths.to(targets.device)[targets] * scored
        if self.dummy_prefix:
            starts = (inputs == self.eot_id) & self.starts_with_space.to(targets.device)[targets]
            lengths = lengths - self.dummy_prefix * starts.long()
        return lengths


@dataclass(frozen=True)
class SplitScore:
    """A model's numbers on one split. `loss` is nats per target token; `bpb` bits per UTF-8
    byte; `*_std` the sample standard deviation over batches (0 with one batch); `bpb_se` the
    standard error of `bpb` that spread implies (`bpb_std` / √batches); `unknown_tokens` the
    targets that are the tokenizer's `<unk>` (see the module docstring)."""

    loss: float
    loss_std: float
    ppl: float
    bpb: float
    bpb_std: float
    bpb_se: float
    tokens: int
    bytes: int
    unknown_tokens: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluation_windows(
    tokens: np.ndarray, length: int, batches: int, batch_size: int, seed: int, split: str,
    history: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """The fixed sample: `batches` (inputs, targets) pairs of `batch_size` windows of `length`
    scored tokens each, drawn as training draws its batches: after `history` tokens read as
    context only (a fixed-context model's `context - 1`), so that no scored target reads
    padding for the text before its window. A split too short for one window is used whole,
    as a single window."""
    if len(tokens) < 2:
        raise EvaluationError(
            f"the {split} split has {len(tokens)} token(s): nothing to predict; give the split "
            "more data (split settings) or leave it out of eval.splits"
        )
    if len(tokens) <= length + history:
        context = f" and the {history} tokens of context before it" if history else ""
        logger.warning(
            "evaluate: the %s split has %d tokens, not more than a window of %d%s: scoring it "
            "whole, as one window", split, len(tokens), length, context,
        )  # fmt: skip
        length, batches, batch_size, history = len(tokens) - 1, 1, 1, 0
    sampler = TokenBatches(tokens, length, batch_size, seed, split=split, history=history)
    return [sampler.next(torch.device("cpu")) for _ in range(batches)]


def reads_whole_window(model: LanguageModel) -> bool:
    """Whether the model reads its whole window (a transformer), rather than a fixed context
    of `block_size` tokens before each prediction (MLP, w2v; a bigram's is 1)."""
    return getattr(getattr(model, "config", None), "kind", None) == "gpt"


def context_overlap(model: LanguageModel, window: int) -> int:
    """How many tokens of context every target after a window's first keeps, when windows
    overlap by this much: half the window for a transformer (it reads all of it), the fixed
    context less one for the MLP and w2v (all they read), none for a bigram."""
    if reads_whole_window(model):
        return window // 2
    return max(0, min(model.block_size - 1, window - 1))


def strided_rows(
    stream: np.ndarray, window: int, overlap: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) rows that predict every token of `stream` but its first exactly once:
    windows of `window` tokens advancing by `window - overlap`, each scoring only the targets
    no earlier window scored (the others are `IGNORED_TARGET`). A stream shorter than a window
    is one shorter row."""
    targets = len(stream) - 1
    length = min(window, targets)
    stride = max(length - overlap, 1)
    starts = list(range(0, targets - length + 1, stride))
    if starts[-1] != targets - length:
        starts.append(targets - length)
    next_target = 0
    for start in starts:
        inputs = stream[start : start + length].astype(np.int64)
        scored = stream[start + 1 : start + length + 1].astype(np.int64)
        scored[: max(next_target - start, 0)] = IGNORED_TARGET
        next_target = start + length
        yield inputs, scored


def document_spans(tokens: np.ndarray, eot_id: int) -> list[np.ndarray]:
    """The documents of a split, each with its end-of-text mark (a tail without one is a
    document too)."""
    ends = np.flatnonzero(np.asarray(tokens) == eot_id) + 1
    cuts = [0, *ends.tolist()]
    if cuts[-1] != len(tokens):
        cuts.append(len(tokens))
    return [tokens[a:b] for a, b in pairwise(cuts) if b > a]


def scoring_rows(
    tokens: np.ndarray, eot_id: int, window: int, overlap: int, per_document: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The rows of `whole` scoring (the split as one stream after an end-of-text mark) or of
    `documents` scoring (each document after its own), every target exactly once."""
    start = np.array([eot_id], dtype=np.int64)
    streams = document_spans(tokens, eot_id) if per_document else [tokens]
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for stream in streams:
        rows += strided_rows(np.concatenate([start, stream]), window, overlap)
    return rows


def batch_rows(
    rows: list[tuple[np.ndarray, np.ndarray]], batch_size: int, eot_id: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rows stacked `batch_size` at a time, the shorter ones padded after their end (inputs
    with end-of-text, targets not scored: a causal model's scores cannot see padding after
    them)."""
    batches = []
    for first in range(0, len(rows), batch_size):
        group = rows[first : first + batch_size]
        width = max(len(inputs) for inputs, _ in group)
        x = np.full((len(group), width), eot_id, dtype=np.int64)
        y = np.full((len(group), width), IGNORED_TARGET, dtype=np.int64)
        for row, (inputs, targets) in enumerate(group):
            x[row, : len(inputs)], y[row, : len(targets)] = inputs, targets
        batches.append((torch.from_numpy(x), torch.from_numpy(y)))
    return batches


def split_batches(
    model: LanguageModel, tokens: np.ndarray, config: EvalConfig, eot_id: int, window: int,
    split: str, per_document: bool = False, overlap: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """What `config.scoring` scores of a split, in batches: every target once (`whole`, or
    `documents` when `per_document` or asked for), or the seeded sample of windows. `overlap`
    replaces `context_overlap` (0: consecutive windows, every target with the context its
    position in a window gives, as a random-window estimate averages to)."""
    if len(tokens) < 1 or (config.scoring == "sample" and len(tokens) < 2):
        raise EvaluationError(
            f"the {split} split has {len(tokens)} token(s): nothing to predict; give the split "
            "more data (split settings) or leave it out of eval.splits"
        )
    if window < 1 or (overlap is not None and not 0 <= overlap < window):
        # A negative overlap strode past targets no window scored; 0 or a negative window
        # failed later, naming bytes or block_size; overlap ≥ window strode by 1 token.
        raise EvaluationError(
            f"evaluate {split}: window {window} and overlap {overlap}: the window must hold a "
            "token and the overlap be from 0 to window - 1"
        )
    if config.scoring == "sample":
        # A fixed context (MLP, w2v) reads the text before a window, as training gives it.
        model_config = getattr(model, "config", None)
        history = window_history(model_config) if model_config is not None else 0
        return evaluation_windows(tokens, window, config.batches, config.batch_size,
                                  config.seed, split, history)  # fmt: skip
    documents = config.scoring == "documents" or (config.scoring == "auto" and per_document)
    if overlap is None:
        if not reads_whole_window(model):
            # A fixed context (MLP, w2v) needs a window that holds it, or every target after a
            # window's first would be scored with part of it padding. The window is only how
            # the targets are batched for these models: widening it changes no prediction.
            window = max(window, model.block_size)
        overlap = context_overlap(model, window)
    rows = scoring_rows(tokens, eot_id, window, overlap, documents)
    return batch_rows(rows, config.batch_size, eot_id)


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
    if device.type == "cpu":  # each batch's activations reuse the last one's memory
        keep_freed_memory()
    was_training = model.training
    model.eval()
    # Progress counts the targets scored, the split's size, not positions: overlapping rows
    # hold context positions too (about twice as many at the default overlap).
    scored = [scored_targets(y) for _, y in windows]
    progress = ProgressLog(name, total=sum(scored), unit="tokens")
    batch_nats, batch_tokens, batch_bytes = [], [], []
    unknown = 0
    try:
        for (x, y), count in zip(windows, scored, strict=True):
            x, y = x.to(device), y.to(device)
            precision = (
                torch.autocast(device_type=device.type, dtype=autocast)
                if autocast is not None
                else contextlib.nullcontext()
            )
            with precision:
                logits, _ = model(x)
            nats = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none",
                ignore_index=IGNORED_TARGET,
            )  # fmt: skip
            batch_nats.append(nats.double().sum().item())
            batch_tokens.append(count)
            batch_bytes.append(int(token_bytes.of_targets(x, y).sum().item()))
            unknown += token_bytes.unknown_targets(y)
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
    bpb_std = float(bpbs.std(**spread))
    return SplitScore(
        loss=loss,
        loss_std=float(losses.std(**spread)),
        ppl=math.exp(loss),
        bpb=float(nats.sum() / math.log(2) / n_bytes.sum()),
        bpb_std=bpb_std,
        bpb_se=bpb_std / math.sqrt(len(windows)),
        tokens=int(tokens.sum()),
        bytes=int(n_bytes.sum()),
        unknown_tokens=unknown,
    )


def evaluate(
    model: LanguageModel,
    tokens: np.ndarray,
    tokenizer: Tokenizer,
    config: EvalConfig,
    split: str = "val",
    window: int | None = None,
    per_document: bool = False,
    overlap: int | None = None,
) -> SplitScore:
    """Score `model` on one split's tokens as `config.scoring` says (`per_document`: the model
    trained on documents). Windows are the model's block size unless `window` says otherwise
    (a baseline is scored on the windows of the model it is compared with).

    `tokens` is a 1-D integer array of the split as the shards hold it: each document's ids
    (`tokenizer.encode(text)`) followed by `tokenizer.eot_id`, the mark scored as one byte.
    It runs where the model is: `config.device` is the evaluate stage's (it moves the model);
    from Python, move the model first (`model.to("cuda")`)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"evaluate takes a 1-D array of token ids, not an array of shape "
                         f"{tokens.shape} and type {tokens.dtype}")  # fmt: skip
    if window is None:  # a transformer reads its block; the others any length
        window = model.block_size if reads_whole_window(model) else DEFAULT_WINDOW
    windows = split_batches(model, tokens, config, tokenizer.eot_id, window, split,
                            per_document, overlap)  # fmt: skip
    autocast = autocast_dtype(config.precision, model_device(model))
    return score_windows(model, windows, TokenBytes.of(tokenizer), autocast, f"evaluate {split}")


def count_bigram_baseline(
    train_tokens: np.ndarray,
    vocab_size: int,
    smoothing: float | None = None,
    stage: str | None = None,
):
    """The count bigram (add-`smoothing`; None: `tuned_smoothing`, chosen on held-out train
    text) fitted on `train_tokens`, as the reference every model is reported beside. Its counts
    are sparse: memory grows with the pairs the text holds, not with V² (a dense table of
    them was 8 GB at V = 32000). A `stage` says so first: on a large train split the fit takes
    tens of seconds, which were silent."""
    from lm.models.bigram_count import BigramCountModel, tuned_smoothing
    from lm.models.config import BigramCountConfig

    if stage is not None:
        logger.info("%s: fitting the count-bigram baseline on %s train tokens", stage,
                    f"{len(train_tokens):,}")  # fmt: skip
    if smoothing is None:
        smoothing = tuned_smoothing(train_tokens, vocab_size)
    counts = BigramCountModel(BigramCountConfig(smoothing=smoothing), vocab_size)
    counts.fit(torch.from_numpy(np.asarray(train_tokens, dtype=np.int64)))
    return counts.eval()


# -- trained models ----------------------------------------------------------------------------

CHECKPOINTS = ("best", "final")  # preferred first


def load_trained(folder: Path | str) -> tuple[LanguageModel, Tokenizer]:
    """The model and tokenizer of a train artifact folder (`model.json`, `tokenizer/`, and the
    `best/` checkpoint, else `final/`; or the checkpoint folder given, in one), in eval mode on the
    CPU. A checkpoint whose files are damaged (shorter than written, or unreadable) is skipped, with
    a warning, for the next. A tokenizer the weights were not trained with, or a `model.json` that
    does not describe them (files swapped or edited by hand), is a one-line error naming the file
    and what differs."""
    from lm.models.registry import MODELS, build_model

    folder = Path(folder)
    model_file = folder / "model.json"
    named = None  # a checkpoint named itself (`…/best`): that one, the folder around it read
    if not model_file.is_file() and (folder.parent / "model.json").is_file():
        named, folder, model_file = folder, folder.parent, folder.parent / "model.json"
    if not model_file.is_file():
        raise CheckpointError(f"{folder}: not a trained model folder (no model.json)")
    complete = [folder / name for name in CHECKPOINTS if (folder / name / DONE_MARKER).is_file()]
    if named is not None:
        if not (named / DONE_MARKER).is_file():
            raise CheckpointError(f"{named}: not a complete checkpoint (no {DONE_MARKER} marker)")
        complete = [named]
    if not complete:
        raise CheckpointError(
            f"{folder}: no complete checkpoint (best/ or final/ with a DONE marker): the "
            "training did not finish, or they were removed; rerun the pipeline"
        )
    try:
        settings = json.loads(model_file.read_text(encoding="utf-8"))
        kind = settings.get("kind") if isinstance(settings, dict) else None
        if kind not in MODELS:
            raise CheckpointError(
                f"{model_file}: unknown model kind {kind!r} ({', '.join(MODELS)})"
            )
        config = MODELS[kind][1].model_validate(settings)
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as error:
        said = _validation_problems(error) if isinstance(error, ValidationError) else error
        raise CheckpointError(f"{model_file}: not a valid model description ({said})") from None
    tokenizer = load_tokenizer(folder / "tokenizer")
    # Checked on shapes alone before any memory is taken: a model.json edited to a wider model
    # than its weights asked the allocator for terabytes.
    shapes = shapes_only(config, tokenizer.vocab_size)
    problems = []
    # Checkpoints are published with their marker: one without it was damaged, and `final/`
    # answered in its place without a word.
    preferred = CHECKPOINTS[: CHECKPOINTS.index(complete[0].name)] if named is None else ()
    for checkpoint in [folder / name for name in preferred if (folder / name).is_dir()]:
        logger.warning("%s: incomplete checkpoint (no %s marker), skipped", checkpoint,
                       DONE_MARKER)  # fmt: skip
        problems.append(f"{checkpoint.name}/: no {DONE_MARKER} marker")
    for checkpoint in complete:
        weights, problem = _read_weights(checkpoint)
        if weights is None:
            logger.warning("%s: damaged checkpoint (%s), skipped", checkpoint, problem)
            problems.append(f"{checkpoint.name}/: {problem}")
            continue
        _check_fit(folder, checkpoint, config, tokenizer, shapes, weights)
        model = build_model(config, tokenizer.vocab_size)
        model.load_state_dict(weights)
        if problems:  # the weights used are not those asked for (the best): said which
            logger.warning("%s: using %s/ instead", folder, checkpoint.name)
        return model.eval(), tokenizer
    raise CheckpointError(
        f"{folder}: no checkpoint can be read ({'; '.join(problems)}); rerun the pipeline to "
        "train the model again"
    )


def _validation_problems(error: ValidationError, shown: int = 3) -> str:
    """Pydantic's problems on one line, the first `shown` of them: its own message spans three
    lines a problem, and a model.json edited to another kind has a dozen (every key the other
    kind lacks)."""
    problems = [
        f"{'.'.join(str(part) for part in item['loc']) or 'model'}: {item['msg']}"
        for item in error.errors()
    ]
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more


def _check_fit(folder, checkpoint, config, tokenizer, model, weights) -> None:
    """Refuse weights of another tokenizer than the folder's, then weights that `model.json`
    (whose model is `model`) does not describe: the tokenizer first, since a vocabulary of
    another size changes shapes as well."""
    difference = tokenizer_difference(checkpoint, tokenizer, config, model, weights)
    if difference is not None:
        raise CheckpointError(
            f"{tokenizer_file(folder / 'tokenizer')} is not the tokenizer the model in {folder} "
            f"was trained with ({difference}): its token ids would stand for other text; put "
            "back the tokenizer/ folder the model was trained with, or train it again"
        )
    misfit = first_misfit(model.state_dict(), weights)
    if misfit is not None:
        raise CheckpointError(
            f"{folder / 'model.json'} does not match the weights in "
            f"{checkpoint / WEIGHTS_FILE}: {misfit}; put back the model.json they were "
            "trained with, or train the model again"
        )


def _read_weights(checkpoint: Path) -> tuple[dict | None, str | None]:
    """A checkpoint's state dict, or None and why it cannot be read: cut short, or changed
    since it was written (torch loads a file with a flipped bit without noticing)."""
    problem = damage(checkpoint) or digest_mismatch(checkpoint, [WEIGHTS_FILE])
    if problem:
        return None, problem
    try:
        weights = torch.load(checkpoint / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as error:
        return None, f"{WEIGHTS_FILE} will not load: {error}"
    if not isinstance(weights, dict):
        return None, f"{WEIGHTS_FILE} holds a {type(weights).__name__}, not a state dict"
    return weights, None
