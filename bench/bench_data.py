"""Ingest + clean throughput (MB/s of input) and peak memory, on the bundled corpus and on a
synthetic ~200 MB JSONL, on the same records as one JSON array (a `.json` file), and on their
texts as one plain text file (a book collection in one file, cut into pieces as it is read).

    .venv/bin/python bench/bench_data.py [--size-mb 200] [--workers 0]
                                         [--only bundled|jsonl|array|book]

Each case runs the real stage code (the ingest and clean task bodies, without the Prefect engine
around them) in a fresh workspace, in its own process, so peak RSS is that case's alone: the
main process, and separately the largest cleaning worker. The synthetic corpus is built from the
bundled corpus's own paragraphs, recombined into documents of realistic size, with exact and near
duplicates and junk mixed in so every filter has work to do. Targets (issue 2): at least 10 MB/s
end to end on 2 cores; peak RSS under 1 GB on the 200 MB input.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.cli_args import description  # noqa: E402


def _synthetic_jsonl(path: Path, size_mb: float, seed: int = 0) -> None:
    """Documents of 1-8 real paragraphs; 4% exact duplicates, 4% near duplicates, 3% junk."""
    from lm.config import load_config
    from lm.text.ingest import iter_input_documents
    from lm.text.normalize import normalize_text
    from lm.text.sources import resolve_sources
    from lm.text.wikitext import strip_wikitext

    config = load_config("default")
    paragraphs = []
    with tempfile.TemporaryDirectory() as downloads:
        for doc in iter_input_documents(resolve_sources(config.ingest.sources), "strict",
                                        Path(downloads)):  # fmt: skip
            text = strip_wikitext(doc.text) if doc.markup == "wikitext" else doc.text
            paragraphs += [p for p in normalize_text(text).split("\n\n") if len(p) > 200]
    rng = random.Random(seed)
    target = int(size_mb * 1e6)
    written, recent = 0, []
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            roll = rng.random()
            if roll < 0.04 and recent:
                text = rng.choice(recent)
            elif roll < 0.08 and recent:
                words = rng.choice(recent).split()
                words[rng.randrange(len(words))] = "edited"
                text = " ".join(words)
            elif roll < 0.11:
                text = " ".join(["click here to win a prize now"] * rng.randint(20, 60))
            else:
                text = "\n\n".join(rng.choice(paragraphs) for _ in range(rng.randint(1, 8)))
                recent = ([*recent, text])[-500:]
            line = json.dumps({"text": text, "id": written}) + "\n"
            out.write(line)
            written += len(line.encode())


def _run_case(name: str, config_path: str, workers: int) -> dict:
    """Runs inside a fresh process: ingest then clean, timed."""
    from lm.config import load_config
    from storage.workspace import Workspace
    from tasks.clean import clean_task
    from tasks.ingest import ingest_task

    config = load_config(config_path, [f"clean.workers={workers}"])
    workspace = Workspace.from_env().ensure()
    started = time.perf_counter()
    raw = ingest_task.fn(config.ingest)
    ingested = time.perf_counter()
    corpus = clean_task.fn(raw, config.clean, config.split)
    finished = time.perf_counter()
    input_bytes = raw.stats["input_bytes"]
    parquet = workspace.resolve(corpus.path) / "documents.parquet"
    return {
        "case": name,
        "input_mb": input_bytes / 1e6,
        "documents": corpus.stats["documents"],
        "kept": corpus.stats["kept"],
        "kept_text_mb": corpus.stats["kept_bytes"] / 1e6,
        "ingest_s": ingested - started,
        "clean_s": finished - ingested,
        "total_s": finished - started,
        "mb_per_s": input_bytes / 1e6 / (finished - started),
        "clean_workers": corpus.stats["workers"],
        "removed": {k: v for k, v in corpus.stats["removed"].items() if v},
        "corpus_parquet_mb": parquet.stat().st_size / 1e6,
        "main_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def _in_subprocess(name: str, config_path: str, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as home:
        env = dict(os.environ, LMFORGE_HOME=home, PYTHONHASHSEED="0")
        command = [sys.executable, __file__, "--case", name, "--config", config_path,
                   "--workers", str(workers)]  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"case {name} failed:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


def _print(result: dict) -> None:
    print(
        f"{result['case']:>8}: {result['input_mb']:7.1f} MB of input files, "
        f"{result['documents']:,} docs "
        f"({result['kept']:,} kept, {result['kept_text_mb']:.1f} MB)  "
        f"ingest {result['ingest_s']:5.1f}s + clean {result['clean_s']:5.1f}s = "
        f"{result['total_s']:5.1f}s -> {result['mb_per_s']:5.1f} MB/s end to end  "
        f"peak RSS main {result['main_peak_rss_mb']:.0f} MB, "
        f"worker {result['worker_peak_rss_mb']:.0f} MB "
        f"(clean workers: {result['clean_workers']})"
    )
    print(f"{'':>10}removed by filter: {result['removed']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--size-mb", type=float, default=200.0)
    parser.add_argument("--workers", type=int, default=0, help="clean workers; 0 = one per core")
    parser.add_argument("--only", choices=["bundled", "jsonl", "array", "book"])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_run_case(args.case, args.config, args.workers)))
        return
    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}")
    if args.only in (None, "bundled"):
        _print(_in_subprocess("bundled", str(REPO / "configs" / "default.toml"), args.workers))
    if args.only in (None, "jsonl", "array", "book"):
        with tempfile.TemporaryDirectory(prefix="lmforge-bench-data-") as folder:
            data = Path(folder) / "synthetic.jsonl"
            started = time.perf_counter()
            _synthetic_jsonl(data, args.size_mb)
            print(f"generated {data.stat().st_size / 1e6:.0f} MB of JSONL in "
                  f"{time.perf_counter() - started:.0f}s")  # fmt: skip
            if args.only in (None, "array"):
                array = data.with_suffix(".json")
                _as_json_array(data, array)
                _print(_in_subprocess("array", _config_reading(array), args.workers))
            if args.only in (None, "jsonl"):
                _print(_in_subprocess("jsonl", _config_reading(data), args.workers))
            if args.only in (None, "book"):
                book = data.with_suffix(".txt")
                _as_one_text_file(data, book)
                _print(_in_subprocess("book", _config_reading(book), args.workers))


def _as_json_array(lines: Path, array: Path) -> None:
    """The records of JSON Lines file `lines` as one JSON array, one record per line."""
    with open(lines, encoding="utf-8") as records, open(array, "w", encoding="utf-8") as out:
        out.write("[\n")
        for index, record in enumerate(records):
            out.write((",\n" if index else "") + record.rstrip("\n"))
        out.write("\n]\n")


def _as_one_text_file(lines: Path, book: Path) -> None:
    """The texts of JSON Lines file `lines` as one text file, a blank line between them."""
    with open(lines, encoding="utf-8") as records, open(book, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.loads(record)["text"] + "\n\n")


def _config_reading(data: Path) -> str:
    config = data.with_name(f"{data.stem}-{data.suffix.lstrip('.')}.toml")
    config.write_text(f'name = "bench"\n[ingest]\nsources = ["{data}"]\n')
    return str(config)


if __name__ == "__main__":
    main()
