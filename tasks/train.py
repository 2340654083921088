"""The train stage: token shards + a model config → a trained model under
`artifacts/train/<key>/`, with the count-bigram baseline scored on the same val windows.

Checkpoints accumulate in `<key>.work/` (a stable name, unlike a staging folder, so a run killed
mid-training resumes from its last complete checkpoint); when training ends, the best and the
final checkpoint, the tokenizer and the metrics are published as `<key>/` in one rename. The
output folder is self-contained: weights, configs and tokenizer side by side."""

from __future__ import annotations

import fcntl
import json
import shutil
import time

from prefect import task

from lm.models.config import BigramCountConfig, ModelConfig
from lm.tokenizer import load_tokenizer
from lm.train_config import TrainConfig
from storage.artifacts import ArtifactStore, Descriptor
from storage.shards import open_shard
from storage.workspace import Workspace
from tasks.caching import cache_key_from, code_digest, stage_key

STAGE = "train"
VERSION = 1
CODE = ("lm/models", "lm/train.py", "lm/train_config.py", "lm/tokenizer.py", "storage/shards.py")
METRICS_FILE = "metrics.jsonl"


def train_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.artifacts / STAGE, workspace.root)


def effective_train_config(model: ModelConfig, train: TrainConfig) -> TrainConfig:
    """A transformer trains on its own context length."""
    if model.kind == "gpt":
        return train.model_copy(update={"block_size": model.block_size})
    return train


def train_key(
    shards: Descriptor, tokenizer: Descriptor, model: ModelConfig, train: TrainConfig
) -> str:
    settings = f"{model.digest()}:{train.digest()}"
    return stage_key(
        STAGE, VERSION, settings, [shards.digest, tokenizer.digest], code_digest(*CODE)
    )


@task(name=STAGE, cache_key_fn=cache_key_from(train_key), persist_result=True)
def train_task(
    shards: Descriptor, tokenizer: Descriptor, model: ModelConfig, train: TrainConfig
) -> Descriptor:
    # torch is imported here, not at module level: the flow imports this module on every run.
    from lm.models.bigram_count import BigramCountModel
    from lm.models.registry import build_model
    from lm.train import Trainer, latest_checkpoint

    workspace = Workspace.from_env()
    store = train_store(workspace)
    key = train_key(shards, tokenizer, model, train)
    existing = store.load_descriptor(key)
    if existing is not None:
        return existing
    settings = effective_train_config(model, train)
    shard_folder = workspace.resolve(shards.path)
    train_tokens, _ = open_shard(shard_folder / "train.bin", tokenizer.digest)
    val_tokens, _ = open_shard(shard_folder / "val.bin", tokenizer.digest)
    vocab_size = load_tokenizer(workspace.resolve(tokenizer.path)).vocab_size
    work = store.base / f"{key}.work"
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process trains a key; a second waits for it
        existing = store.load_descriptor(key)
        if existing is not None:
            return existing
        started = time.perf_counter()
        network = build_model(model, vocab_size)
        trainer = Trainer(network, settings, train_tokens, val_tokens, work, work / METRICS_FILE)
        baseline = BigramCountModel(BigramCountConfig(), vocab_size).fit(_as_tensor(train_tokens))
        if model.kind == "bigram-count":
            network.fit(_as_tensor(train_tokens))
            val_loss, steps, stopped_early = trainer.evaluate(network), 0, False
            trainer.save("best")
        else:
            checkpoint = latest_checkpoint(work)
            if checkpoint is not None:
                trainer.resume(checkpoint)
            result = trainer.train()
            val_loss, steps, stopped_early = result.best_val_loss, result.step, result.stopped_early
        baseline_loss = trainer.evaluate(baseline.to(trainer.device))
        seconds = time.perf_counter() - started
        stats = {
            "model": model.kind,
            "parameters": trainer.module.num_params(),
            "steps": steps,
            "tokens_seen": steps * settings.global_batch * settings.block_size,
            "val_loss": val_loss,
            "baseline_val_loss": baseline_loss,
            "stopped_early": stopped_early,
            "seconds": seconds,
            "device": str(trainer.device),
        }
        with store.build(key) as staging:
            _publish(work, staging, workspace.resolve(tokenizer.path), model, settings, stats)
            descriptor = store.describe(staging, STAGE, key, key, stats)
    shutil.rmtree(work, ignore_errors=True)
    return descriptor


def _as_tensor(tokens):
    import torch

    return torch.from_numpy(tokens.astype("int64"))


def _publish(work, staging, tokenizer_folder, model, settings, stats) -> None:
    from lm.train import latest_checkpoint

    if (work / "best").is_dir():
        shutil.copytree(work / "best", staging / "best")
    final = latest_checkpoint(work)
    if final is not None:
        shutil.copytree(final, staging / "final")
    if (work / METRICS_FILE).is_file():
        shutil.copy2(work / METRICS_FILE, staging / METRICS_FILE)
    shutil.copytree(tokenizer_folder, staging / "tokenizer", ignore=shutil.ignore_patterns("DONE"))
    (staging / "model.json").write_text(model.model_dump_json(indent=2))
    (staging / "train.json").write_text(settings.model_dump_json(indent=2))
    (staging / "stats.json").write_text(json.dumps(stats, indent=2))
