"""Encode throughput (tokens/s) of the pipeline's tokenizers on the bundled corpus, with 1 and 2
threads, for BPE and unigram at vocabulary 4000 and for characters.

    .venv/bin/python bench/bench_tokenize.py [--repeat 3]

It runs the pipeline's own ingest and clean stage code on the bundled corpus in a temporary
workspace, trains each tokenizer on the train split, and times `encode_batch` over every kept
document (best of `--repeat`). Target (issue 3): at least 3 M tokens/s for BPE 4k on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ["LMFORGE_HOME"] = tempfile.mkdtemp(prefix="lmforge-bench-")

    from lm.config import TokenizerConfig, load_config
    from lm.tokenizer import train_tokenizer
    from storage.corpus import DOCUMENTS_FILE, iter_split_texts
    from storage.workspace import Workspace
    from tasks.clean import clean_task
    from tasks.ingest import ingest_task

    config = load_config("default")
    workspace = Workspace.from_env().ensure()
    corpus = clean_task.fn(ingest_task.fn(config.ingest), config.clean, config.split)
    documents = workspace.resolve(corpus.path) / DOCUMENTS_FILE
    texts = [t for split in ("train", "val", "test") for b in iter_split_texts(documents, split)
             for t in b]  # fmt: skip
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    print(f"cores: {os.cpu_count()}; bundled corpus: {len(texts)} documents, {megabytes:.1f} MB")
    for kind, vocab in (("bpe", 4000), ("unigram", 4000), ("char", 0)):
        started = time.perf_counter()
        train = (t for b in iter_split_texts(documents, "train") for t in b)
        tokenizer = train_tokenizer(train, TokenizerConfig(kind=kind, vocab_size=vocab or 2))
        trained = time.perf_counter() - started
        for threads in (1, 2):
            if hasattr(tokenizer, "_threads"):
                tokenizer._threads = threads
            elif threads > 1:
                continue  # the character tokenizer is single-threaded Python
            best = float("inf")
            for _ in range(args.repeat):
                started = time.perf_counter()
                tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
                best = min(best, time.perf_counter() - started)
            rate = tokens / best / 1e6
            print(
                f"{kind:>8} vocab {tokenizer.vocab_size:>5}: trained in {trained:5.2f}s; "
                f"{threads} thread(s): {tokens:,} tokens in {best:.3f}s = "
                f"{rate:.2f} M tokens/s ({megabytes / best:.1f} MB/s)"
            )


if __name__ == "__main__":
    main()
