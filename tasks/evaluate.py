"""The evaluate stage: a trained model + token shards → `artifacts/evaluate/<key>/` with
`metrics.json` (loss, perplexity and bits per byte on each held-out split, for the model and for
the count-bigram baseline fitted on the train split, on the same tokens) and `samples.json`.

By default every token of a split is scored once (`eval.scoring`, see `lm.evaluate`), in windows
`eval.window` tokens long (default: the model's training sequence length), so every model is
scored on the same text, and its baseline with it. Splits that are empty in the shards (a test
fraction of 0) are skipped.

The scores are also kept on their own (`artifacts/scores/<key>/`), under a key without the
samples' settings (`eval.samples`, `eval.prompts`, `eval.sampling`): a new temperature or prompt
draws new samples from the same model without scoring every split again (minutes on a large
one)."""

from __future__ import annotations

import json
import logging
import time

from prefect import task

from lm.artifact_keys import short_key
from lm.eval_config import EvalConfig, SamplingConfig
from lm.tokenizer import TokenizerError
from storage.artifacts import ArtifactStore, Descriptor, reused
from storage.shards import open_shard
from storage.workspace import Workspace
from tasks.caching import (
    as_run_here,
    at_defaults,
    cache_key_from,
    code_digest,
    module_sources,
    stage_key,
)

STAGE = "evaluate"
SCORES = "scores"  # the evaluate stage's numbers alone, reused when only its samples change
VERSION = 1
SCORES_CODE = (
    *module_sources("lm.evaluate", "lm.eval_config", "lm.train"), "storage/shards.py",
    "tasks/evaluate.py",
)  # fmt: skip
CODE = (*SCORES_CODE, *module_sources("lm.generate"))
METRICS_FILE = "metrics.json"
logger = logging.getLogger("lm.evaluate")
SAMPLES_FILE = "samples.json"


def evaluate_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.artifacts / STAGE, workspace.root)


def scores_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.artifacts / SCORES, workspace.root)


def evaluate_key(
    trained: Descriptor, shards: Descriptor, tokenizer: Descriptor, config: EvalConfig
) -> str:
    upstream = [trained.digest, shards.digest, tokenizer.digest]
    here = as_run_here(config, bf16_scores_by_default)
    return stage_key(STAGE, VERSION, here.digest(), upstream, code_digest(*CODE))


def bf16_scores_by_default(device) -> bool:
    """What `eval.precision = "auto"` picks on `device` (`lm.evaluate.autocast_dtype`)."""
    from lm.evaluate import autocast_dtype

    return autocast_dtype("auto", device) is not None


def scores_key(
    trained: Descriptor, shards: Descriptor, tokenizer: Descriptor, config: EvalConfig
) -> str:
    """What the numbers depend on: the evaluate key without the samples' settings, nor, where
    every token is scored (`eval.scoring` other than "sample"), the sample's `batches` and
    `seed`, which only draw windows: a new `eval.seed` scored every split again, for the same
    numbers."""
    unsampled = {"samples": 0, "prompts": [""], "sampling": SamplingConfig()}
    scoring = as_run_here(config, bf16_scores_by_default).model_copy(update=unsampled)
    if config.scoring != "sample":
        scoring = at_defaults(scoring, ["batches", "seed"])
    upstream = [trained.digest, shards.digest, tokenizer.digest]
    return stage_key(SCORES, VERSION, scoring.digest(), upstream, code_digest(*SCORES_CODE))


@task(name=STAGE, cache_key_fn=cache_key_from(evaluate_key), persist_result=True)
def evaluate_task(
    trained: Descriptor, shards: Descriptor, tokenizer: Descriptor, config: EvalConfig
) -> Descriptor:
    from lm.evaluate import load_trained
    from lm.train import pick_device

    workspace = Workspace.from_env()
    store = evaluate_store(workspace)
    key = evaluate_key(trained, shards, tokenizer, config)
    existing = store.load_descriptor(key)
    if existing is not None:
        return reused(existing)
    started = time.perf_counter()
    trained_folder = workspace.resolve(trained.path)
    model, model_tokenizer = load_trained(trained_folder)
    if model_tokenizer.digest != tokenizer.digest:
        raise TokenizerError(
            f"{trained_folder / 'tokenizer'}: the model's tokenizer has digest "
            f"{model_tokenizer.digest}, not {tokenizer.digest} (the shards'); rerun the pipeline"
        )
    check_prompts(model_tokenizer, config)  # before the scoring's minutes, not after
    device = pick_device(config.device, key="eval.device")
    model.to(device)
    metrics, scored = _stored_scores(workspace, trained, shards, tokenizer, config, model,
                                     model_tokenizer)  # fmt: skip
    samples = _samples(model, model_tokenizer, config)
    stats = _flat_stats(metrics) | {
        "model": trained.stats.get("model", ""),
        **scored,
        "samples": len(samples),
        "seconds": time.perf_counter() - started,
    }
    with store.build(key) as staging:
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        (staging / SAMPLES_FILE).write_text(
            json.dumps(samples, indent=2, ensure_ascii=False), encoding="utf-8"
        )
        descriptor = store.describe(staging, STAGE, key, key, stats)
    return descriptor


def _stored_scores(
    workspace: Workspace, trained: Descriptor, shards: Descriptor, tokenizer: Descriptor,
    config: EvalConfig, model, model_tokenizer,
) -> tuple[dict[str, dict], dict]:  # fmt: skip
    """The scores of `model` (on its device) and how they were taken (window, baseline add-k,
    scoring, device): those stored under `scores_key`, else measured and stored."""
    store = scores_store(workspace)
    key = scores_key(trained, shards, tokenizer, config)
    existing = store.load_descriptor(key)
    if existing is not None:
        logger.info("evaluate: the scores are those taken before (%s); drawing new samples",
                    short_key(key))  # fmt: skip
        stored = json.loads((workspace.resolve(existing.path) / METRICS_FILE).read_text())
        return stored, existing.stats
    metrics, how = _score(workspace, trained, shards, tokenizer, config, model, model_tokenizer)
    with store.build(key) as staging:
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        store.describe(staging, SCORES, key, key, how)
    return metrics, how


def _score(
    workspace: Workspace, trained: Descriptor, shards: Descriptor, tokenizer: Descriptor,
    config: EvalConfig, model, model_tokenizer,
) -> tuple[dict[str, dict], dict]:  # fmt: skip
    """Score `model` and the count-bigram baseline on every split of `config.splits`."""
    from lm.evaluate import (
        EvaluationError,
        TokenBytes,
        autocast_dtype,
        count_bigram_baseline,
        model_device,
        score_windows,
        split_batches,
    )
    from lm.models.gpt import GPT

    trained_folder = workspace.resolve(trained.path)
    device = model_device(model)
    autocast = autocast_dtype(config.precision, device)
    trained_on = _train_settings(trained_folder)
    window = config.window or int(trained_on.get("block_size", model.block_size))
    per_document = trained_on.get("samples") == "documents"
    if isinstance(model, GPT) and window > model.block_size:
        raise EvaluationError(
            f"eval.window {window} is longer than the context of the model in {trained_folder} "
            f"({model.block_size} tokens): lower eval.window"
        )
    shard_folder = workspace.resolve(shards.path)
    train_tokens, _ = open_shard(shard_folder / "train.bin", tokenizer.digest)
    vocab_size = model_tokenizer.vocab_size
    baseline = count_bigram_baseline(
        train_tokens, vocab_size, config.baseline_smoothing, stage="evaluate"
    ).to(device)
    token_bytes = TokenBytes.of(model_tokenizer)
    metrics: dict[str, dict] = {"model": {}, "baseline": {}}
    splits = {}  # the splits with tokens to score
    for split in config.splits:
        path = shard_folder / f"{split}.bin"
        if path.is_file() and len(tokens := open_shard(path, tokenizer.digest)[0]):
            splits[split] = tokens
    passes = iter(range(1, 2 * len(splits) + 1))
    for split, tokens in splits.items():
        windows = split_batches(model, tokens, config, model_tokenizer.eot_id, window, split,
                                per_document)  # fmt: skip
        for name, scored in (("model", model), ("baseline", baseline)):
            # Named by pass: the baseline's lines under the model's name read as a restart.
            said = f"evaluate {split}, {name} ({next(passes)} of {2 * len(splits)})"
            score = score_windows(scored, windows, token_bytes, autocast, said)
            metrics[name][split] = score.as_dict()
        _warn_of_unknown_tokens(split, metrics["model"][split])
    how = {
        "window": window,
        "baseline_smoothing": baseline.config.smoothing,
        "scoring": _scoring(config.scoring, per_document),
        "device": str(device),
    }
    return metrics, how


def _warn_of_unknown_tokens(split: str, score: dict) -> None:
    if score["unknown_tokens"]:
        logger.warning(
            "evaluate %s: %d of the %d tokens scored are <unk>, text the tokenizer cannot spell: "
            "the model predicts one cheap <unk> for it, so these bits per byte are lower than "
            "that text deserves and compare only with models of the same tokenizer (spell it "
            'all with tokenizer.byte_fallback = true, or unknown_chars = "bytes")',
            split, score["unknown_tokens"], score["tokens"],
        )  # fmt: skip


def _scoring(asked: str, per_document: bool) -> str:
    """What `eval.scoring` came to for this model."""
    if asked == "auto":
        return "documents" if per_document else "whole"
    return asked


def _train_settings(folder) -> dict:
    """How the model was trained (`train.json`): the length it read (for a GPT its context)
    and whether its rows were documents."""
    settings = folder / "train.json"
    return json.loads(settings.read_text()) if settings.is_file() else {}


def check_prompts(tokenizer, config: EvalConfig) -> None:
    """Refuse, naming it, a prompt of `eval.prompts` that the samples would use and the
    tokenizer cannot encode."""
    from lm.generate import encode_prompt

    for index, prompt in enumerate(config.prompts[: config.samples]):
        try:
            encode_prompt(tokenizer, prompt)
        except TokenizerError as error:
            raise TokenizerError(f"eval.prompts[{index}] {prompt!r}: {error}") from None


def _samples(model, tokenizer, config: EvalConfig) -> list[dict]:
    from lm.generate import generate

    samples = []
    for index in range(config.samples):
        prompt = config.prompts[index % len(config.prompts)]
        sampling = config.sampling.model_copy(update={"seed": config.sampling.seed + index})
        text = "".join(generate(model, tokenizer, prompt, sampling))
        samples.append(
            {
                "prompt": prompt,
                "text": text,
                "seed": sampling.seed,
                "temperature": sampling.temperature,
                "top_k": sampling.top_k,
                "top_p": sampling.top_p,
            }
        )
    return samples


def _flat_stats(metrics: dict[str, dict]) -> dict[str, float | int]:
    """`val_bpb`, `test_loss`, `baseline_val_bpb`, ...: one flat number per metric, for the
    registry."""
    flat: dict[str, float | int] = {}
    for name, splits in metrics.items():
        prefix = "" if name == "model" else f"{name}_"
        for split, score in splits.items():
            for metric, value in score.items():
                flat[f"{prefix}{split}_{metric}"] = value
    return flat
