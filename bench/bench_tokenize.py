"""Encode throughput (tokens/s) of the pipeline's tokenizers on the bundled corpus, with 1 and 2
threads, for BPE and unigram at vocabulary 4000 and for characters.

    .venv/bin/python bench/bench_tokenize.py [--repeat 3]

It runs the pipeline's own ingest and clean stage code on the bundled corpus in a temporary
workspace, trains each tokenizer on the train split, and times encoding every kept document at
once (best of `--repeat`). For SentencePiece it times, interleaved, the plain processor and the
tokenizer's `encode_batch` (word by word through its word cache, for BPE) from an empty cache
("cold": the bundled corpus encoded once) and from a full one ("warm": the steady state of a
large corpus), and checks that all give the same ids. Target (issue 3): at least 3 M tokens/s
for BPE 4k on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.cli_args import description, positive_int  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--repeat", type=positive_int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as workspace:  # left none behind
        os.environ["LMFORGE_HOME"] = workspace
        _measure(args.repeat)


def _measure(repeat: int) -> None:

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
        print(f"{kind:>8} vocab {tokenizer.vocab_size:>5}: trained in {trained:5.2f}s")
        if kind != "char":
            for threads in (1, 2):
                _compare_with_processor(tokenizer, texts, threads, repeat, megabytes)
        else:  # the character tokenizer is single-threaded Python
            best = min(_seconds(partial(tokenizer.encode_batch, texts)) for _ in range(repeat))
            tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
            print(f"  1 thread(s): {_rate(tokens, best, megabytes)}")


def _compare_with_processor(tokenizer, texts: list[str], threads: int, repeat: int, mb: float):
    import sentencepiece as spm

    from lm.tokenizer import SentencePieceTokenizer

    model = tokenizer.serialized()
    processor = spm.SentencePieceProcessor(model_proto=model)
    warm = SentencePieceTokenizer(model, tokenizer.kind, threads)
    expected = processor.encode(texts, num_threads=threads)
    if warm.encode_batch(texts) != expected:
        raise SystemExit(f"{tokenizer.kind}: encode_batch and the processor give different ids")
    tokens = sum(len(ids) for ids in expected)
    best = dict.fromkeys(("processor", "cold", "warm"), float("inf"))
    for _ in range(repeat):
        cold = SentencePieceTokenizer(model, tokenizer.kind, threads)
        runs = {
            "processor": partial(processor.encode, texts, num_threads=threads),
            "cold": partial(cold.encode_batch, texts),
            "warm": partial(warm.encode_batch, texts),
        }
        for name, run in runs.items():
            best[name] = min(best[name], _seconds(run))
    print(f"  {threads} thread(s): processor {_rate(tokens, best['processor'], mb)}")
    for name in ("cold", "warm"):
        ratio = best["processor"] / best[name]
        print(f"    encode_batch, {name} cache: {_rate(tokens, best[name], mb)}, {ratio:.2f}x")


def _seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _rate(tokens: int, seconds: float, megabytes: float) -> str:
    return (
        f"{tokens:,} tokens in {seconds:.3f}s = {tokens / seconds / 1e6:.2f} M tokens/s "
        f"({megabytes / seconds:.1f} MB/s)"
    )


if __name__ == "__main__":
    main()
