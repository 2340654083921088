"""The word2vec stage: the clean train split (as words, or as tokenizer pieces) → gensim
vectors, their evaluation and a labelled projection under `artifacts/word2vec/<key>/`.

On words, the key leaves the tokenizer out, so a tokenizer change does not retrain it. Under
`split.method = "ordered"` every document is in the corpus's train split and the val and test
text is the end of the token stream, so the vectors learn from the train shard's documents
(decoded), never from text the models are scored on; the shards' digest is then in the key.

The vectors are kept apart too (`artifacts/word2vec-vectors/<key>`, keyed without the settings
that only look at them: `probes`, `neighbours`, `projection`), so that new probe words evaluate
the vectors trained before instead of training them again (hours on a large corpus)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from prefect import task

from lm.allocator import gives_back_freed_memory
from lm.artifact_keys import short_key
from lm.config import Word2VecConfig
from lm.tokenizer import load_tokenizer
from lm.word2vec import (
    SentenceStream,
    evaluate_vectors,
    piece_sentences,
    plot_projection,
    train_word2vec,
    whole_word_view,
)
from lm.word2vec import word_sentences as words_of
from storage.artifacts import ArtifactStore, Descriptor, reused
from storage.corpus import DOCUMENTS_FILE, iter_split_texts, text_digest
from storage.shards import shard_documents
from storage.workspace import Workspace
from tasks.caching import at_defaults, cache_key_from, code_digest, stage_key

STAGE = "word2vec"
# 2: vectors stored as a plain array and a JSON list of words, no longer a gensim pickle.
VERSION = 2
# `lm/models/embeddings.py` writes the vectors file, reads it back for new probes and makes the
# digest the train stage keys on: edited, it served vectors the old code had written.
CODE = (
    "lm/word2vec.py", "lm/tokenizer.py", "lm/config.py", "storage/corpus.py", "storage/shards.py",
    "lm/gensim_data.py", "lm/models/embeddings.py", "lm/token_bytes.py", "tasks/word2vec.py",
)  # fmt: skip
VECTORS = "word2vec-vectors"
# Settings that evaluate or show the vectors, never change them: not in the vectors' key.
EVALUATION_ONLY = ("probes", "neighbours", "projection")
VECTORS_FILE = "vectors.npy"  # and its words beside it (`keys_file`)
METRICS_FILE = "metrics.json"
PROJECTION_FILE = "projection.png"
logger = logging.getLogger("lm.word2vec")


def word2vec_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.artifacts / STAGE, workspace.root)


def vectors_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.artifacts / VECTORS, workspace.root)


def vectors_key(
    corpus: Descriptor,
    tokenizer: Descriptor,
    config: Word2VecConfig,
    ordered_shards: Descriptor | None = None,
) -> str:
    """The key of the vectors alone: `word2vec_key` without the settings that only evaluate."""
    trained_by = at_defaults(config, EVALUATION_ONLY)
    return _key(VECTORS, corpus, tokenizer, trained_by, ordered_shards)


def word2vec_key(
    corpus: Descriptor,
    tokenizer: Descriptor,
    config: Word2VecConfig,
    ordered_shards: Descriptor | None = None,
) -> str:
    return _key(STAGE, corpus, tokenizer, config, ordered_shards)


def _key(
    stage: str,
    corpus: Descriptor,
    tokenizer: Descriptor,
    config: Word2VecConfig,
    ordered_shards: Descriptor | None,
) -> str:
    upstream = [text_digest(corpus)] + ([tokenizer.digest] if config.input == "pieces" else [])
    if ordered_shards is not None:
        upstream.append(ordered_shards.digest)
    return stage_key(stage, VERSION, config.digest(), upstream, code_digest(*CODE))


@task(name=STAGE, cache_key_fn=cache_key_from(word2vec_key), persist_result=True)
@gives_back_freed_memory
def word2vec_task(
    corpus: Descriptor,
    tokenizer: Descriptor,
    config: Word2VecConfig,
    ordered_shards: Descriptor | None = None,
) -> Descriptor:
    """`ordered_shards`: the shards of an ordered split, whose train shard is the train text."""
    workspace = Workspace.from_env()
    store = word2vec_store(workspace)
    key = word2vec_key(corpus, tokenizer, config, ordered_shards)
    existing = store.load_descriptor(key)
    if existing is not None:
        return reused(existing)
    vectors, trained = _stored_vectors(workspace, corpus, tokenizer, config, ordered_shards)
    metrics = evaluate_vectors(vectors, config)
    with store.build(key) as staging:
        from lm.models.embeddings import keys_file

        trained_file = workspace.resolve(trained.path) / VECTORS_FILE
        for file in (trained_file, keys_file(trained_file)):
            _link(file, staging / file.name)
        (staging / METRICS_FILE).write_text(
            json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8"
        )
        shown = whole_word_view(vectors) if config.input == "pieces" else vectors
        plot_projection(shown, metrics["neighbours"], config.projection, staging / PROJECTION_FILE)
        descriptor = store.describe(
            staging,
            STAGE,
            key,
            trained.digest,
            {k: v for k, v in metrics.items() if k != "neighbours"},
        )
    return descriptor


def _link(source: Path, target: Path) -> None:
    """A hard link (the vectors once on disk), or a copy where links are not to be had."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _stored_vectors(
    workspace: Workspace,
    corpus: Descriptor,
    tokenizer: Descriptor,
    config: Word2VecConfig,
    ordered_shards: Descriptor | None,
):
    """(the vectors, their descriptor in the vectors store): those stored under `vectors_key`,
    else trained and stored."""
    from lm.models.embeddings import load_keyed_vectors, save_keyed_vectors, vectors_digest

    store = vectors_store(workspace)
    key = vectors_key(corpus, tokenizer, config, ordered_shards)
    existing = store.load_descriptor(key)
    if existing is not None:
        logger.info("word2vec: the vectors are those trained before (%s); evaluating them",
                    short_key(key))  # fmt: skip
        path = workspace.resolve(existing.path) / VECTORS_FILE
        return load_keyed_vectors(path, existing.digest), existing
    vectors = _train(workspace, corpus, tokenizer, config, ordered_shards)
    with store.build(key) as staging:
        save_keyed_vectors(vectors, staging / VECTORS_FILE)
        stored = store.describe(staging, VECTORS, key, vectors_digest(vectors),
                                {"vocabulary": len(vectors.key_to_index)})  # fmt: skip
    return vectors, stored


def _train(
    workspace: Workspace,
    corpus: Descriptor,
    tokenizer: Descriptor,
    config: Word2VecConfig,
    ordered_shards: Descriptor | None,
):
    model = load_tokenizer(workspace.resolve(tokenizer.path))
    if ordered_shards is not None:
        train_shard = workspace.resolve(ordered_shards.path) / "train.bin"

        def documents():
            return shard_documents(train_shard, tokenizer.digest, model.decode)
    else:
        documents_path = workspace.resolve(corpus.path) / DOCUMENTS_FILE

        def documents():
            return (text for batch in iter_split_texts(documents_path, "train") for text in batch)

    if config.input == "pieces":
        # Documents encoded whole, as the shards encode them, so the pieces are the ones the
        # language model sees (see piece_sentences).
        sentences = SentenceStream(documents, piece_sentences(model))
    else:
        sentences = SentenceStream(documents, words_of)
    return train_word2vec(sentences, config)
