"""The encode stage: the clean corpus → token shards (`train.bin`, `val.bin`, `test.bin`) under
`artifacts/shards/<key>/`.

With `split.method = "hash"` each shard holds the documents cleaning assigned to its split, each
followed by the end-of-text id, in corpus order (with `split.shuffle`, in doc_id order). With
`"ordered"` (nanoGPT's split, for one long text such as Shakespeare) the split column is
ignored: every kept document goes, in corpus order, into one stream with end-of-text between
documents, and the stream is cut by position.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prefect import task

from lm.config import SplitConfig
from lm.progress import ProgressLog
from lm.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from storage.artifacts import ArtifactStore, Descriptor
from storage.corpus import DOCUMENTS_FILE, iter_split_texts
from storage.shards import OrderedSplitter, ShardInfo, ShardWriter
from storage.workspace import Workspace
from tasks.caching import cache_key_from, code_digest, stage_key

STAGE = "encode"
VERSION = 2  # 2: the split method (hash or ordered), recorded in the shard sidecars
CODE = ("lm/tokenizer.py", "storage/shards.py", "storage/corpus.py")
SPLITS = ("train", "val", "test")
BATCH_DOCS = 256


def shards_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.artifacts / "shards", workspace.root)


def encode_key(
    corpus: Descriptor, tokenizer: Descriptor, split: SplitConfig = SplitConfig()
) -> str:
    """Depends on the split settings: with `ordered` they decide where the stream is cut."""
    return stage_key(
        STAGE, VERSION, split.digest(), [corpus.digest, tokenizer.digest], code_digest(*CODE)
    )


@task(name=STAGE, cache_key_fn=cache_key_from(encode_key), persist_result=True)
def encode_task(
    corpus: Descriptor, tokenizer: Descriptor, split: SplitConfig = SplitConfig()
) -> Descriptor:
    workspace = Workspace.from_env()
    store = shards_store(workspace)
    key = encode_key(corpus, tokenizer, split)
    existing = store.load_descriptor(key)
    if existing is not None:
        return existing
    model = load_tokenizer(workspace.resolve(tokenizer.path))
    if model.digest != tokenizer.digest:
        raise TokenizerError(
            f"{workspace.resolve(tokenizer.path)}: the tokenizer there has digest {model.digest}, "
            f"not {tokenizer.digest}; it was changed after training: delete the folder and rerun"
        )
    documents = workspace.resolve(corpus.path) / DOCUMENTS_FILE
    progress = ProgressLog("encode", total=corpus.stats["kept_bytes"])
    with store.build(key) as staging:
        if split.method == "ordered":
            infos = _encode_ordered(documents, model, split, staging, progress)
        else:
            infos = _encode_by_hash(documents, model, split, staging, progress)
        progress.finish()
        counts = ("tokens", "documents", "text_bytes")
        splits = {name: {c: getattr(info, c) for c in counts} for name, info in infos.items()}
        stats = {
            "tokenizer_digest": model.digest,
            "dtype": infos["train"].dtype,
            "split_method": split.method,
            "splits": splits,
        }
        descriptor = store.describe(staging, STAGE, key, key, stats)
    return descriptor


def _encode_by_hash(
    documents: Path, model: Tokenizer, settings: SplitConfig, staging: Path, progress: ProgressLog
) -> dict[str, ShardInfo]:
    infos, done_bytes = {}, 0
    for split in SPLITS:
        writer = ShardWriter(staging / f"{split}.bin", model.digest, model.eot_id,
                             model.vocab_size)  # fmt: skip
        batches = (
            _iter_split_texts_by_doc_id(documents, split)
            if settings.shuffle
            else iter_split_texts(documents, split)
        )
        for batch in batches:
            for text, ids in zip(batch, model.encode_batch(batch), strict=True):
                n_bytes = len(text.encode())
                writer.write(ids, n_bytes)
                done_bytes += n_bytes
            progress.update(done_bytes)
        infos[split] = writer.close()
    return infos


def _encode_ordered(
    documents: Path, model: Tokenizer, split: SplitConfig, staging: Path, progress: ProgressLog
) -> dict[str, ShardInfo]:
    splitter = OrderedSplitter(staging, model.digest, model.eot_id, model.vocab_size)
    done_bytes = 0
    for batch in _iter_kept_texts(documents):
        for text, ids in zip(batch, model.encode_batch(batch), strict=True):
            n_bytes = len(text.encode())
            splitter.write(ids, n_bytes)
            done_bytes += n_bytes
        progress.update(done_bytes)
    return splitter.cut(split.val, split.test, model.decode)


def _iter_split_texts_by_doc_id(documents: Path, split: str) -> Iterator[list[str]]:
    """The kept documents of one split in doc_id order: a fixed shuffle, independent of the
    input's order. It holds the split's texts in memory, as sorting needs them all."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(
        documents, columns=["doc_id", "text"], filters=[("split", "=", split), ("keep", "=", True)]
    )
    texts = table.column("text").take(pc.sort_indices(table.column("doc_id"))).to_pylist()
    for start in range(0, len(texts), BATCH_DOCS):
        yield texts[start : start + BATCH_DOCS]


def _iter_kept_texts(documents: Path) -> Iterator[list[str]]:
    """Every kept document, whatever its split column, in corpus order, a batch at a time."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(documents).iter_batches(BATCH_DOCS, columns=["text", "keep"]):
        texts = [t for t, keep in zip(*(c.to_pylist() for c in batch.columns), strict=True) if keep]
        if texts:
            yield texts
