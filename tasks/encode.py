"""The encode stage: every split of the clean corpus → a token shard under
`artifacts/shards/<key>/`, documents separated by the end-of-text id."""

from __future__ import annotations

from prefect import task

from lm.progress import ProgressLog
from lm.tokenizer import TokenizerError, load_tokenizer
from storage.artifacts import ArtifactStore, Descriptor
from storage.corpus import DOCUMENTS_FILE, iter_split_texts
from storage.shards import ShardWriter
from storage.workspace import Workspace
from tasks.caching import cache_key_from, code_digest, stage_key

STAGE = "encode"
VERSION = 1
CODE = ("lm/tokenizer.py", "storage/shards.py", "storage/corpus.py")
SPLITS = ("train", "val", "test")


def shards_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.artifacts / "shards", workspace.root)


def encode_key(corpus: Descriptor, tokenizer: Descriptor) -> str:
    return stage_key(STAGE, VERSION, "", [corpus.digest, tokenizer.digest], code_digest(*CODE))


@task(name=STAGE, cache_key_fn=cache_key_from(encode_key), persist_result=True)
def encode_task(corpus: Descriptor, tokenizer: Descriptor) -> Descriptor:
    workspace = Workspace.from_env()
    store = shards_store(workspace)
    key = encode_key(corpus, tokenizer)
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
    total_bytes = corpus.stats["kept_bytes"]
    progress = ProgressLog("encode", total=total_bytes)
    done_bytes = 0
    splits = {}
    with store.build(key) as staging:
        for split in SPLITS:
            writer = ShardWriter(staging / f"{split}.bin", model.digest, model.eot_id,
                                 model.vocab_size)  # fmt: skip
            for batch in iter_split_texts(documents, split):
                for text, ids in zip(batch, model.encode_batch(batch), strict=True):
                    n_bytes = len(text.encode())
                    writer.write(ids, n_bytes)
                    done_bytes += n_bytes
                progress.update(done_bytes)
            info = writer.close()
            splits[split] = {"tokens": info.tokens, "documents": info.documents,
                             "text_bytes": info.text_bytes}  # fmt: skip
        progress.finish()
        descriptor = store.describe(
            staging,
            STAGE,
            key,
            key,
            {"tokenizer_digest": model.digest, "dtype": writer.dtype.str, "splits": splits},
        )
    return descriptor
