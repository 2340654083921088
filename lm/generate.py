"""Sampling text from a language model, streamed as it is produced.

The prompt is a document's beginning: it follows an end-of-text id, as every document of the
training shards does. Each step applies, in order, the repetition penalty (CTRL, Keskar et al.
2019: a logit of a token already in the text is divided by the penalty when positive, multiplied
when negative), then temperature (0, or below 1e-5, is greedy argmax), top-k (exactly k
tokens), and top-p (nucleus: the fewest most likely tokens whose probability reaches p), and
draws from a seeded `torch.Generator` on the CPU, so a seed gives the same text on any device.
Generation stops at end-of-text or after `max_new_tokens`.

A model with a key/value cache (the GPT) processes the prompt once, then one token per step;
once the text fills its context the window slides and each step recomputes it (positions shift,
so cached keys no longer fit). Other models recompute over the last `block_size` tokens.

Text is streamed by decoding a short window of the latest ids and yielding what is new, held
back while it ends in an incomplete UTF-8 character (byte-fallback pieces arrive one byte at a
time) or half of SentencePiece's escape of a literal `▁`, so characters are never garbled.
"""

from __future__ import annotations

import codecs
import math
import unicodedata
from collections.abc import Iterator

import torch

from lm.eval_config import SamplingConfig
from lm.evaluate import model_device
from lm.models.base import LanguageModel
from lm.token_bytes import BYTE_PIECE
from lm.tokenizer import SPACE_SYMBOL_ESCAPE, UNKNOWN, Tokenizer, TokenizerError

REPLACEMENT = "\ufffd"
# A decoded text ending in one of these may change when the next id comes.
UNFINISHED = (REPLACEMENT, SPACE_SYMBOL_ESCAPE)
# Temperatures below this sample greedily: dividing logits by less overflows to inf.
GREEDY_BELOW = 1e-5


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's ids. A character the tokenizer cannot encode goes through byte fallback when
    the tokenizer has it, and is an error naming it when it has none (an unknown id would feed
    the model something the prompt did not say). A prompt that is not UTF-8 text (bytes that
    Python kept as lone surrogates, from a command line or a pipe) is an error naming the first
    bad byte: the tokenizers encode UTF-8 and would fail deep inside. The prompt is composed
    (NFC) as the corpus was: typed or pasted decomposed ("e" + U+0301, as macOS gives file names),
    its accents were byte pieces the model never saw, or characters a char tokenizer lacks. A
    corpus normalized with NFKC is composed too, so NFC never makes what training did not see."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise TokenizerError(
            f"the prompt is not UTF-8 text: {_bad_byte(prompt[error.start])} at character "
            f"{error.start}; give it as UTF-8"
        ) from None
    prompt = unicodedata.normalize("NFC", prompt)
    ids = _encoded(tokenizer, prompt)
    if ids is None:
        # One quoted character each: 'AN' read as the substring "AN", not A and N; in the order
        # they come; a pasted paragraph of another script is named by its first 20.
        missing = [repr(c) for c in dict.fromkeys(prompt) if _encoded(tokenizer, c) is None]
        more = f" and {len(missing) - 20:,} more" if len(missing) > 20 else ""
        unknown = ", ".join(missing[:20]) + more
        raise TokenizerError(
            f"the prompt has characters the tokenizer cannot encode: {unknown} (it "
            "has no byte fallback); leave them out, or train the tokenizer with "
            'byte_fallback = true (SentencePiece) or unknown_chars = "bytes" (char)'
        )
    return ids


def _encoded(tokenizer: Tokenizer, text: str) -> list[int] | None:
    """The ids of `text`, or None where the tokenizer cannot encode it: an unknown id, or (a
    character tokenizer with unknown_chars = "error") a refusal whose advice, to retrain, is
    for the corpus, not a prompt."""
    try:
        ids = tokenizer.encode(text)
    except TokenizerError:
        return None
    return None if any(tokenizer.piece(i) == UNKNOWN for i in set(ids)) else ids


def _bad_byte(character: str) -> str:
    """The byte a surrogate-escaped character stands for (U+DC80..U+DCFF), else the character."""
    code = ord(character)
    return f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"{character!r}"


def apply_repetition_penalty(logits: torch.Tensor, seen: list[int], penalty: float):
    if penalty == 1.0 or not seen:
        return logits
    ids = torch.tensor(sorted(set(seen)), device=logits.device)
    values = logits[ids]
    logits = logits.clone()
    logits[ids] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


def choose_next(
    logits: torch.Tensor, seen: list[int], sampling: SamplingConfig, generator: torch.Generator
) -> int:
    """One token from next-token `logits` (vocab,), given the tokens `seen` so far."""
    logits = apply_repetition_penalty(logits.float().cpu(), seen, sampling.repetition_penalty)
    if sampling.temperature < GREEDY_BELOW:  # 0, or so small that the division overflows
        return int(logits.argmax())
    logits = logits / sampling.temperature
    # A tiny penalty or temperature can push a logit past the float range, and softmax turns +inf
    # into NaN; the largest float keeps such tokens the likeliest, tied among themselves.
    logits = logits.clamp(max=torch.finfo(logits.dtype).max)
    if sampling.top_k is not None and sampling.top_k < logits.numel():
        # Exactly k candidates, even when others tie with the k-th.
        kept = torch.topk(logits, sampling.top_k)
        logits = torch.full_like(logits, float("-inf")).scatter(0, kept.indices, kept.values)
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        # Drop a token when the more likely ones already reach p; the first always stays.
        drop = ordered.cumsum(0) - ordered >= sampling.top_p
        drop[0] = False  # a p that is 0 in float32 (1e-46) dropped it too, and nothing was left
        probs = torch.zeros_like(probs).scatter(0, order, ordered.masked_fill(drop, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_ids(
    model: LanguageModel, context: list[int], sampling: SamplingConfig, eot_id: int,
    penalized: list[int] | None = None, never: list[int] | None = None,
) -> Iterator[int]:  # fmt: skip
    """New token ids after `context`, until end-of-text (not yielded) or `max_new_tokens`.
    `penalized` are the ids the repetition penalty starts with (default: the context); `never`
    are ids never chosen (the tokenizer's `<unk>`, which stands for no text). The
    model samples in eval mode (no dropout) and is put back in the mode it was in when the
    generation ends, however it ends: sampling mid-training leaves training as it was."""
    was_training = model.training
    model.eval()
    try:
        yield from _sampled_ids(model, context, sampling, eot_id, penalized, never or [])
    finally:
        model.train(was_training)


def _sampled_ids(
    model: LanguageModel, context: list[int], sampling: SamplingConfig, eot_id: int,
    penalized: list[int] | None, never: list[int],
) -> Iterator[int]:  # fmt: skip
    device = model_device(model)
    block = model.block_size
    generator = torch.Generator().manual_seed(sampling.seed)
    tokens = list(context)
    seen = list(context if penalized is None else penalized)

    def recompute() -> torch.Tensor:
        window = torch.tensor([tokens[-block:]], device=device)
        return model(window)[0][0, -1]

    cache = None
    if hasattr(model, "new_cache") and len(tokens) < block:
        cache = model.new_cache(1)
        logits = model(torch.tensor([tokens], device=device), cache=cache)[0][0, -1]
    else:
        logits = recompute()
    for step in range(sampling.max_new_tokens):
        if never:
            logits = logits.index_fill(0, torch.tensor(never, device=logits.device), -math.inf)
        token = choose_next(logits, seen, sampling, generator)
        if token == eot_id:
            return
        yield token
        tokens.append(token)
        seen.append(token)
        if step + 1 == sampling.max_new_tokens:
            return
        if cache is not None and cache.length < block:
            logits = model(torch.tensor([[token]], device=device), cache=cache)[0][0, -1]
        else:
            cache = None
            logits = recompute()


def stream_text(
    tokenizer: Tokenizer, prompt_ids: list[int], new_ids: Iterator[int]
) -> Iterator[str]:
    """The text of `new_ids` as it grows, in pieces. Each step decodes only a window, the ids
    of the last piece yielded and those after it, and yields what the new ids add to its text:
    decoding the whole sequence every step made a long text quadratic (8,000 tokens: 3 s of
    decoding). A window never starts inside a character: a text that ends in what may be an
    unfinished one (a UTF-8 character arriving byte by byte, or SentencePiece's escape of a
    literal `▁` before its second half) is held back and the window stays put. Both texts
    compared start at the window's start, so the leading space SentencePiece drops from a
    decode is dropped from both."""
    ids = list(prompt_ids)
    start, read = 0, len(ids)  # the window, and where its text already yielded ends
    seen = len(tokenizer.decode(ids))  # the length of the window's text already yielded

    def new_text() -> str:
        return tokenizer.decode(ids[start:])[seen:]

    for token in new_ids:
        ids.append(token)
        text = new_text()
        if text and not text.endswith(UNFINISHED):
            yield text
            start, read = read, len(ids)
            seen = len(tokenizer.decode(ids[start:read]))
    del ids[len(ids) - _unfinished_character(tokenizer, ids[read:]) :]
    text = new_text()
    if text:
        yield text


def _unfinished_character(tokenizer: Tokenizer, ids: list[int]) -> int:
    """How many of the byte pieces that end `ids` begin a UTF-8 character the text stopped
    before it was whole (generation ran out of tokens mid-character): written, they were a
    replacement character at the sample's end."""
    run = []
    for token in reversed(ids):
        byte = BYTE_PIECE.fullmatch(tokenizer.piece(token))
        if byte is None:
            break
        run.append(int(byte.group(1), 16))
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    decoder.decode(bytes(reversed(run)))
    return len(decoder.getstate()[0])


def generate(
    model: LanguageModel, tokenizer: Tokenizer, prompt: str, sampling: SamplingConfig
) -> Iterator[str]:
    """Continue `prompt`, yielding text pieces as they are produced (the prompt itself is not
    repeated). The prompt is checked at once: a bad one fails here, not at the first piece."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    # An undertrained model samples `<unk>`, written " ⁇ ": text the tokenizer could not
    # spell, never text of its own.
    unknown = [] if tokenizer.unknown_id is None else [tokenizer.unknown_id]
    new_ids = generate_ids(model, [tokenizer.eot_id, *prompt_ids], sampling, tokenizer.eot_id,
                           penalized=prompt_ids, never=unknown)  # fmt: skip
    return stream_text(tokenizer, prompt_ids, new_ids)
