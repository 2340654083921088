"""The tokenizer stage: the clean train split → a tokenizer (SentencePiece or characters) under
`artifacts/tokenizer/<key>/`, with its statistics on the val split (of an ordered split, the
stream's val part).

A run that continues a model (`train.init_from`) takes the tokenizer that model was trained
with instead (`adopt_tokenizer_task`): token ids must keep their meaning, and a tokenizer trained
again on new data would be another one."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from prefect import task

from lm.allocator import gives_back_freed_memory
from lm.config import SplitConfig, TokenizerConfig
from lm.progress import ProgressLog
from lm.tokenizer import TokenizerError, load_tokenizer, train_tokenizer
from lm.tokenizer_stats import tokenizer_statistics
from storage.artifacts import ArtifactStore, Descriptor, reused
from storage.corpus import DOCUMENTS_FILE, iter_split_part, text_digest
from storage.workspace import Workspace
from tasks.caching import cache_key_from, code_digest, stage_key

STAGE = "tokenizer"
VERSION = 2  # 2: a literal "▁" is escaped (SentencePiece read it as a space); no stale model
CODE = ("lm/tokenizer.py", "lm/tokenizer_stats.py", "lm/config.py", "storage/corpus.py",
        "tasks/tokenizer.py")  # fmt: skip
STATS_FILE = "stats.json"


def tokenizer_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.artifacts / STAGE, workspace.root)


def tokenizer_key(
    corpus: Descriptor, config: TokenizerConfig, split: SplitConfig | None = None
) -> str:
    """`split` is not in the key where the corpus's digest already depends on it. Under
    `ordered` it does not (every document is labelled train, the cut is made by encode), yet
    the statistics are measured on the val part of the stream: a changed `split.val` reused
    the old part's figures."""
    return _key(config.output_digest(), corpus, split)


def _key(settings: str, corpus: Descriptor, split: SplitConfig | None) -> str:
    if split is not None and split.method == "ordered":
        settings += ":" + split.digest()
    return stage_key(STAGE, VERSION, settings, [text_digest(corpus)], code_digest(*CODE))


def _publish(store: ArtifactStore, key: str, tokenizer, stats: dict, **described) -> Descriptor:
    """`tokenizer` and its statistics as the stage's output `key`."""
    with store.build(key) as staging:
        tokenizer.save(staging)
        (staging / STATS_FILE).write_text(
            json.dumps(stats, indent=2, ensure_ascii=False), encoding="utf-8"
        )
        return store.describe(staging, STAGE, key, tokenizer.digest,
                              {"kind": tokenizer.kind, **stats, **described})  # fmt: skip


def _counted(texts: Iterator[str], progress: ProgressLog) -> Iterator[str]:
    """`texts`, logging the bytes read with rate and ETA; then a line saying the training
    proper starts, which logs nothing itself (a large corpus was silent for minutes)."""
    done = 0
    for text in texts:
        done += len(text.encode())
        progress.update(done)
        yield text
    progress.update(done, force=True)
    logging.getLogger("lm.progress").info("tokenizer: text read, training")


@task(name=STAGE, cache_key_fn=cache_key_from(tokenizer_key), persist_result=True)
@gives_back_freed_memory
def tokenizer_task(
    corpus: Descriptor, config: TokenizerConfig, split: SplitConfig | None = None
) -> Descriptor:
    workspace = Workspace.from_env()
    store = tokenizer_store(workspace)
    key = tokenizer_key(corpus, config, split)
    existing = store.load_descriptor(key)
    if existing is not None:
        return reused(existing)
    documents = workspace.resolve(corpus.path) / DOCUMENTS_FILE
    train_bytes = corpus.stats.get("split_bytes", {}).get("train")
    if train_bytes is not None and split is not None and split.method == "ordered":
        train_bytes = round(train_bytes * (1.0 - split.val - split.test))  # the stream's head
    progress = ProgressLog("tokenizer: read", total=train_bytes)
    # The train part only: under an ordered split every document is labelled train until the
    # encode stage cuts the stream, and a tokenizer that read the held-out tail learned its
    # words as merges (BPE at 4000 pieces: 4.14 bytes a val token against 3.88 for one that
    # had not), flattering the statistics below and letting val text shape the vocabulary.
    train_texts = _counted(
        (text for batch in iter_split_part(documents, "train", split) for text in batch),
        progress,
    )
    tokenizer = train_tokenizer(train_texts, config)
    stats = tokenizer_statistics(tokenizer, iter_split_part(documents, "val", split))
    return _publish(store, key, tokenizer, stats)


def adopted_key(
    corpus: Descriptor, source: str, tokenizer_digest: str, split: SplitConfig | None = None
) -> str:
    """The tokenizer of digest `tokenizer_digest` (wherever `source` holds it) with its
    statistics on this corpus's val split."""
    return _key(f"adopted:{tokenizer_digest}", corpus, split)


@task(name=STAGE, cache_key_fn=cache_key_from(adopted_key), persist_result=True)
def adopt_tokenizer_task(
    corpus: Descriptor, source: str, tokenizer_digest: str, split: SplitConfig | None = None
) -> Descriptor:
    """The tokenizer in folder `source` (a model's, or a tokenizer stage's output) as this
    run's tokenizer output, measured on this corpus as a trained one is."""
    workspace = Workspace.from_env()
    store = tokenizer_store(workspace)
    key = adopted_key(corpus, source, tokenizer_digest, split)
    existing = store.load_descriptor(key)
    if existing is not None:
        return reused(existing)
    tokenizer = load_tokenizer(Path(source))
    if tokenizer.digest != tokenizer_digest:
        raise TokenizerError(
            f"{source}: the tokenizer there has digest {tokenizer.digest}, not "
            f"{tokenizer_digest} (the checkpoint's); it was changed since"
        )
    documents = workspace.resolve(corpus.path) / DOCUMENTS_FILE
    try:
        stats = tokenizer_statistics(tokenizer, iter_split_part(documents, "val", split))
    except TokenizerError as error:  # its advice (another unknown_chars) cannot apply here
        raise TokenizerError(
            f"train.init_from: the tokenizer the checkpoint was made with ({source}) cannot "
            f"encode this corpus: {error}. A continued model keeps its tokenizer, whatever "
            "[tokenizer] says: drop train.init_from to train a new one"
        ) from None
    return _publish(store, key, tokenizer, stats, adopted=True)
