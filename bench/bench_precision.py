"""What each training precision does to the default preset's model: its val loss after N steps
(and the seconds they took) in eager fp32, bf16 autocast, and compiled bf16, from the same
initial weights and batches. Speed is `bench_train.py`'s question; this one asks whether the
faster arithmetic learns as well. It found bf16-rounded attention scores costing the default
run 0.1 val bits per byte (see `lm.models.gpt.explicit_attention`).

    .venv/bin/lmforge run                                   # the default run's shards, first
    .venv/bin/python bench/bench_precision.py               # 300 steps, one thread
    .venv/bin/python bench/bench_precision.py --steps 1500 --modes fp32 bf16-compiled

The shards are the newest completed `default` run's in the workspace (`$LMFORGE_HOME`, default
`./.lmforge`). The schedule spans `--steps`, so a short run is a shortened training, not the
start of the full one. At 300 steps, runs differing only in rounding part by about ±0.05 in val
loss; compare modes over several `--seed`s or at the full 1500 steps before concluding.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli_args import description, non_negative_int, positive_int
from lm.config import load_config
from lm.models.config import effective_train_config
from lm.models.registry import build_model
from lm.train import Trainer
from storage.registry import RunRegistry
from storage.shards import open_shard, read_shard_info
from storage.workspace import Workspace

MODES = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16-compiled": ("bf16", True),
         "fp32-compiled": ("fp32", True)}  # fmt: skip


def default_run_shards(workspace: Workspace) -> Path:
    """The shard folder of the newest completed run of the default preset."""
    registry = RunRegistry(workspace.registry_path)
    if not workspace.registry_path.is_file():
        sys.exit(f"{workspace.root}: no runs yet; `lmforge run` makes the default run's shards")
    _, rows = registry.query(
        "SELECT s.output_path FROM stages s JOIN runs r USING (run_id) WHERE s.stage = 'encode' "
        "AND r.preset = 'default' AND r.status = 'completed' ORDER BY r.started_at DESC LIMIT 1"
    )
    if not rows or not (workspace.resolve(rows[0][0]) / "train.bin").is_file():
        sys.exit(f"{workspace.root}: no completed default run with its shards; `lmforge run`")
    return workspace.resolve(rows[0][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--steps", type=positive_int, default=300)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES)[:3])
    parser.add_argument("--seed", type=non_negative_int, default=None, help="default: the preset's")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (one: less noise)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shards = default_run_shards(Workspace.from_env())
    info = read_shard_info(shards / "train.bin")
    train_tokens, _ = open_shard(shards / "train.bin", info.tokenizer_digest)
    val_tokens, _ = open_shard(shards / "val.bin", info.tokenizer_digest)
    settings = load_config("default")
    print(f"shards {shards}; {args.steps} steps; {args.threads} thread(s)")
    for mode in args.modes:
        precision, compiled = MODES[mode]
        train = effective_train_config(settings.model, settings.train).model_copy(
            update={"max_steps": args.steps, "eval_every": args.steps,
                    "checkpoint_every": args.steps, "precision": precision,
                    "compile": compiled,
                    "seed": settings.train.seed if args.seed is None else args.seed}
        )  # fmt: skip
        torch.manual_seed(train.seed)
        model = build_model(settings.model, info.vocab_size, eot_id=info.eot_id)
        work = Path(tempfile.mkdtemp(prefix=f"precision-{mode}-"))
        try:
            trainer = Trainer(model, train, train_tokens, val_tokens, work,
                              tokenizer_digest=info.tokenizer_digest,
                              eot_id=info.eot_id)  # fmt: skip
            started = time.perf_counter()
            result = trainer.train()
            seconds = time.perf_counter() - started
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps({"mode": mode, "steps": result.step,
                          "val_loss": round(result.best_val_loss, 6),
                          "last_train_loss": round(result.losses[-1], 6),
                          "seconds": round(seconds, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
