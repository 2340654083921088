"""nanoGPT's character-level Shakespeare on CPU, as `configs/shakespeare.toml` trains it: val
loss after 2000 iterations (nanoGPT reports about 1.88 for this shape) and tokens/s.

    .venv/bin/python bench/bench_shakespeare.py        # ../shared/data/tinyshakespeare.txt
    .venv/bin/python bench/bench_shakespeare.py input.txt --set train.max_steps=200

The data stages and the train stage run through their real stage functions (no Prefect engine)
in their own workspace (`--workspace`; a second run reuses its outputs and reports the first
run's numbers). The val loss is reported two ways: the trainer's fixed sample (20 batches of 12
windows, nanoGPT's `--eval_iters=20` estimate), and the whole val split, scored in consecutive
64-token windows with every position counted, which is what nanoGPT's random-window estimate
averages to.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_ladder import (  # noqa: E402
    prepare_data,
    shard_tokens,
    split_nll,
    trained_model,
)
from bench.cli_args import description, positive_int, run_reporting_user_errors  # noqa: E402
from lm.config import load_config  # noqa: E402

DEFAULT_TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
NANOGPT_VAL_LOSS = 1.88


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("text", nargs="?", default=str(DEFAULT_TEXT))
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="KEY.PATH=VALUE override, as `lmforge run --set`")  # fmt: skip
    parser.add_argument("--workspace", default="/tmp/lmforge-bench-shakespeare")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (1 is faster on a busy machine)")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ["LMFORGE_HOME"] = str(Path(args.workspace).resolve())
    text = Path(args.text).resolve()
    source = f'ingest.sources=[{{ path = "{text}", format = "text" }}]'
    settings = load_config("shakespeare", [source, *args.overrides])

    from storage.workspace import Workspace
    from tasks.train import train_task

    data = prepare_data(settings)
    splits = data.shards.stats["splits"]
    print(f"data: {text} → train {splits['train']['tokens']} / val {splits['val']['tokens']} "
          f"characters, vocabulary {data.vocab_size}")  # fmt: skip
    trained = train_task.fn(data.shards, data.tokenizer, settings.model, settings.train)
    stats = trained.stats
    folder = Workspace.from_env().resolve(trained.path)
    rates = [
        record["value"]
        for record in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
        if record["key"] == "train/tokens_per_s"
    ]
    model, tokenizer = trained_model(trained)
    started = time.perf_counter()
    val_loss, count = split_nll(
        model, tokenizer, shard_tokens(data, "val"), "whole", overlap=0, split="val"
    )
    print()
    print(f"steps            {stats['steps']}")
    print(f"parameters       {stats['parameters']}")
    sample = f"{settings.train.eval_batches} x {settings.train.micro_batch} windows"
    print(f"val loss         {stats['val_loss']:.4f}  (best fixed sample, {sample})")
    print(f"val loss, whole  {val_loss:.4f}  ({count} characters, "
          f"{time.perf_counter() - started:.1f}s)  nanoGPT: {NANOGPT_VAL_LOSS}")  # fmt: skip
    print(f"train time       {stats['seconds']:.0f}s")
    # This run's own tokens: a resumed training's seconds are its own, its tokens_seen are not.
    this_run = stats.get("tokens_this_run", stats["tokens_seen"])
    print(f"tokens/s         {this_run / stats['seconds']:.0f} overall, "
          f"{rates[-1] if rates else float('nan'):.0f} at the end of training")  # fmt: skip
    met = "yes" if val_loss <= NANOGPT_VAL_LOSS else "NO"
    print(f"target met       {met} (≤ {NANOGPT_VAL_LOSS}, whole val split)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if met != "yes":  # a gate can rely on the exit status
        sys.exit(f"target missed: val loss {val_loss:.4f} > {NANOGPT_VAL_LOSS}")


if __name__ == "__main__":
    run_reporting_user_errors(main)
