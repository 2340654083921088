"""The encode stage: the clean corpus → token shards (`train.bin`, `val.bin`, `test.bin`) under
`artifacts/shards/<key>/`.

With `split.method = "hash"` each shard holds the documents cleaning assigned to its split, each
followed by the end-of-text id, in corpus order (with `split.shuffle`, in doc_id order). With
`"ordered"` (nanoGPT's split, for one long text such as Shakespeare) the split column is
ignored: every kept document goes, in corpus order, into one stream with end-of-text between
documents, and the stream is cut by position.

One cached task, whatever the runner. The hash split in corpus order can fan out over slices of
the corpus through the `encode-slices` subflow (`flows/encode_flow.py`) on the task runner that
`[runtime]` names, when that adds cores (see `encode_workers`) and the corpus is large; the
shards are the same bytes either way. The doc_id order and the ordered split encode here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from prefect import task

from flows.encode_flow import (
    BATCH_DOCS,
    append_slices,
    encode_rows,
    encode_slices,
    kept_batch_bytes,
    shard_writers,
)
from lm.allocator import gives_back_freed_memory
from lm.checkpoints import file_sha256
from lm.config import RuntimeConfig, SplitConfig
from lm.progress import ProgressLog
from lm.text.clean import RowSlice, SlicePolicy, plan_slices
from lm.token_bytes import PieceBytes
from lm.tokenizer import (
    Tokenizer,
    TokenizerError,
    encoded_documents,
    load_tokenizer,
)
from storage.artifacts import ArtifactStore, Descriptor, reused
from storage.corpus import (
    DOCUMENTS_FILE,
    bounded_row_batches,
    check_footer,
    damage_named,
    open_parquet,
    row_count,
    text_digest,
)
from storage.shards import OrderedSplitter, ShardInfo
from storage.workspace import Workspace
from tasks.caching import cache_key_from, code_digest, stage_key
from tasks.runners import make_task_runner, worker_count

STAGE = "encode"
VERSION = 2  # 2: the split method (hash or ordered), recorded in the shard sidecars
CODE = ("lm/tokenizer.py", "lm/token_bytes.py", "storage/shards.py", "storage/corpus.py",
        "flows/encode_flow.py", "tasks/encode.py")  # fmt: skip
# The slices' shards, inside the staging directory; removed before it is published.
SCRATCH_DIR = "slices"
# Slices of at least 32 MB of kept text: several seconds of encoding, which pays for a Prefect
# task run and, on the process runner, a worker's start-up (about 4 CPU-seconds).
SLICE_POLICY = SlicePolicy(min_bytes=32 << 20, max_bytes=512 << 20, max_docs=1 << 20)
INLINE = {"runner": "inline", "workers": 1, "slices": 1, "encoded_by": []}


def shards_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.artifacts / "shards", workspace.root)


def encode_key(
    corpus: Descriptor,
    tokenizer: Descriptor,
    split: SplitConfig = SplitConfig(),
    runtime: RuntimeConfig | None = None,
    threads: int = 0,
) -> str:
    """Depends on the split settings: with `ordered` they decide where the stream is cut. Not
    on the runtime nor the encoding threads: they never change the shards."""
    return stage_key(
        STAGE, VERSION, split.digest(), [text_digest(corpus), tokenizer.digest], code_digest(*CODE)
    )


def encode_workers(runtime: RuntimeConfig) -> int:
    """How many workers encoding fans out to (1: it stays in the task). Never on threads: what
    SentencePiece does itself already runs on every core of this process, with the GIL
    released, and the rest (the char tokenizer, the per-document bookkeeping) is Python that
    holds the GIL, so threads would add task runs and no speed. Worker processes and Dask
    workers bring cores of their own."""
    if runtime.task_runner == "threads":
        return 1
    return worker_count(runtime)


def tokenizer_threads(runtime: RuntimeConfig, workers: int) -> int:
    """SentencePiece threads in each mapped task: this machine's cores shared among its
    workers; on a remote Dask cluster, every core of the worker's own machine (0)."""
    if runtime.dask_address:
        return 0
    return max(1, (os.cpu_count() or 1) // workers)


@task(name=STAGE, cache_key_fn=cache_key_from(encode_key), persist_result=True)
@gives_back_freed_memory
def encode_task(
    corpus: Descriptor,
    tokenizer: Descriptor,
    split: SplitConfig = SplitConfig(),
    runtime: RuntimeConfig | None = None,
    threads: int = 0,
) -> Descriptor:
    """`threads`: SentencePiece's encoding threads in each process (`tokenizer.threads`; 0:
    this machine's cores, shared among the processes encoding)."""
    runtime = runtime or RuntimeConfig()
    workspace = Workspace.from_env()
    store = shards_store(workspace)
    key = encode_key(corpus, tokenizer, split)
    existing = store.load_descriptor(key)
    if existing is not None:
        return reused(existing)
    tokenizer_folder = workspace.resolve(tokenizer.path)
    model = load_tokenizer(tokenizer_folder, threads)
    if model.digest != tokenizer.digest:
        raise TokenizerError(
            f"{tokenizer_folder}: the tokenizer there has digest {model.digest}, "
            f"not {tokenizer.digest}; it was changed after training: delete the folder and rerun"
        )
    documents = workspace.resolve(corpus.path) / DOCUMENTS_FILE
    progress = ProgressLog("encode", total=corpus.stats["kept_bytes"])
    with store.build(key) as staging:
        if split.method == "ordered":
            infos, fan_out = _encode_ordered(documents, model, split, staging, progress), INLINE
        elif split.shuffle:
            infos, fan_out = _encode_by_doc_id(documents, model, staging, progress), INLINE
        else:
            infos, fan_out = _encode_by_hash(
                documents, model, tokenizer_folder, runtime, staging, progress, threads
            )
        progress.finish()
        counts = ("tokens", "documents", "text_bytes")
        splits = {name: {c: getattr(info, c) for c in counts} for name, info in infos.items()}
        stats = {
            "tokenizer_digest": model.digest,
            "dtype": infos["train"].dtype,
            "split_method": split.method,
            "splits": splits,
        }
        descriptor = store.describe(staging, STAGE, key, shards_digest(staging), stats | fan_out)
    return descriptor


def shards_digest(folder: Path) -> str:
    """The digest of the token shards themselves, not of the key that built them: training and
    evaluation follow it. A renamed source file, or one whose documents cleaning all rejected,
    changes the corpus digest and so the key, yet encodes to the same tokens: keyed on the key,
    every model trained again, for the same numbers."""
    digest = hashlib.sha256()
    for split in ("train", "val", "test"):
        for suffix in (".json", ".bin"):  # the sidecar holds dtype, eot id and tokenizer digest
            digest.update(file_sha256(folder / f"{split}{suffix}").encode())
    return digest.hexdigest()


def _encode_by_hash(
    documents: Path,
    model: Tokenizer,
    tokenizer_folder: Path,
    runtime: RuntimeConfig,
    staging: Path,
    progress: ProgressLog,
    threads: int = 0,
) -> tuple[dict[str, ShardInfo], dict]:
    """Every kept document into its split's shard, in corpus order: fanned out over slices on
    the runtime's task runner, or here when that adds no cores or the corpus is small."""
    writers = shard_writers(staging, model)
    total = row_count(documents)
    workers = encode_workers(runtime)
    slices = []
    if workers > 1:
        slices = plan_slices(kept_batch_bytes(documents), BATCH_DOCS, total, workers, SLICE_POLICY)
    if len(slices) <= 1:
        encode_rows(documents, RowSlice(0, 0, total), model, writers, progress)
        fan_out = INLINE
    else:
        scratch = staging / SCRATCH_DIR
        runner = make_task_runner(runtime, workers)
        pieces = encode_slices.with_options(task_runner=runner)(
            documents=str(documents),
            slices=slices,
            tokenizer=str(tokenizer_folder),
            threads=threads or tokenizer_threads(runtime, workers),
            scratch=str(scratch),
        )
        append_slices(pieces, writers)
        progress.update(progress.total or 0)  # the slices said their own progress: all done
        shutil.rmtree(scratch, ignore_errors=True)
        fan_out = {
            "runner": runtime.task_runner,
            "workers": workers,
            "slices": len(slices),
            "encoded_by": sorted({piece.encoded_by for piece in pieces}),
        }
    return {split: writer.close() for split, writer in writers.items()}, fan_out


def _encode_by_doc_id(
    documents: Path, model: Tokenizer, staging: Path, progress: ProgressLog
) -> dict[str, ShardInfo]:
    writers, done_bytes = shard_writers(staging, model), 0
    for split, writer in writers.items():
        for batch in _iter_split_texts_by_doc_id(documents, split):
            encoded = encoded_documents(model, batch, [split] * len(batch))
            for text, ids in zip(batch, encoded, strict=True):
                n_bytes = len(text.encode())
                writer.write(ids, n_bytes)
                done_bytes += n_bytes
            progress.update(done_bytes)
    return {split: writer.close() for split, writer in writers.items()}


def _encode_ordered(
    documents: Path, model: Tokenizer, split: SplitConfig, staging: Path, progress: ProgressLog
) -> dict[str, ShardInfo]:
    splitter = OrderedSplitter(staging, model.digest, model.eot_id, model.vocab_size)
    done_bytes = 0
    for batch in _iter_kept_texts(documents):
        encoded = encoded_documents(model, batch, ["kept"] * len(batch))
        for text, ids in zip(batch, encoded, strict=True):
            n_bytes = len(text.encode())
            splitter.write(ids, n_bytes)
            done_bytes += n_bytes
        progress.update(done_bytes)
    return splitter.cut(split.val, split.test, PieceBytes.of(model).of_document_start)


def _iter_split_texts_by_doc_id(documents: Path, split: str) -> Iterator[list[str]]:
    """The kept documents of one split in doc_id order: a fixed shuffle, independent of the
    input's order. It holds the split's texts in memory, as sorting needs them all."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    check_footer(documents)
    with damage_named(documents):
        table = pq.read_table(
            documents, columns=["doc_id", "text"], page_checksum_verification=True,
            filters=[("split", "=", split), ("keep", "=", True)],
        )  # fmt: skip
    texts = table.column("text").take(pc.sort_indices(table.column("doc_id"))).to_pylist()
    for start in range(0, len(texts), BATCH_DOCS):
        yield texts[start : start + BATCH_DOCS]


def _iter_kept_texts(documents: Path) -> Iterator[list[str]]:
    """Every kept document, whatever its split column, in corpus order, a batch at a time."""
    parquet = open_parquet(documents)
    for rows in bounded_row_batches(parquet, ["text", "keep"], BATCH_DOCS, path=documents):
        texts = [text for text, keep in rows if keep]
        if texts:
            yield texts
