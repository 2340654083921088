"""The train stage: token shards + a model config → a trained model under
`artifacts/train/<key>/`, with the count-bigram baseline scored on the same val windows.

Checkpoints accumulate in `<key>.work/` (a stable name, unlike a staging folder, so a run killed
mid-training resumes from its last complete checkpoint); when training ends, the best and the
final checkpoint, the tokenizer and the metrics are published as `<key>/` in one rename. The
output folder is self-contained: weights, configs and tokenizer side by side.

With `train.nproc_per_node > 1` training runs in `torchrun` subprocesses (`lm.train_worker`,
one rank per process) over the same work folder; this task waits for them, streams their output
to its log, and scores the baseline itself. With `train.nnodes > 1` this machine is node 0 of
several, which join through `lmforge train-join` (`storage.launches`). A model built from
word2vec vectors gets them from this task, in a file the ranks load. With `train.init_from` the
model starts from another run's weights; the digest of those weights is part of the cache key,
so new weights mean a new model even when the path is the same.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import time
from pathlib import Path

from prefect import task

from lm.artifact_keys import short_key
from lm.checkpoints import damage, read_info, resolve_init_from, weights_digest
from lm.models.config import (
    ModelConfig,
    effective_train_config,
    uses_word2vec,
    window_history,
    written_one_way,
)
from lm.tokenizer import META_FILE, load_tokenizer
from lm.train_config import BOOKKEEPING, TrainConfig, TrainingError
from storage.artifacts import ArtifactStore, Descriptor, reused
from storage.prune import WORK_LOCK, WORK_SUFFIX, never_started
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

STAGE = "train"
VERSION = 1
# The training code and all it imports; the tokenizer and shards it reads the data with; this
# task, which chooses the seed, the vectors and the baseline.
CODE = (
    *module_sources("lm.train", "lm.train_worker", "lm.evaluate"),  # the baseline's fit
    "lm/tokenizer.py", "storage/shards.py", "tasks/train.py",
)  # fmt: skip
METRICS_FILE = "metrics.jsonl"


def train_store(workspace: Workspace) -> ArtifactStore:
    return ArtifactStore(workspace.artifacts / STAGE, workspace.root)


def work_folder(store: ArtifactStore, key: str) -> Path:
    """Where the training of `key` keeps its checkpoints and its curve (`METRICS_FILE`) until
    it is published: the flow notes it, so a run killed mid-training still has its curve."""
    return store.base / f"{key}{WORK_SUFFIX}"


def init_checkpoint(
    train: TrainConfig, workspace: Workspace, model: ModelConfig | None = None
) -> Path | None:
    """The checkpoint `train.init_from` names (relative paths are inside the workspace);
    with `model`, refused when that model cannot start from it (`init_from_problem`)."""
    if not train.init_from:
        return None
    if model is not None and model.kind == "bigram-count":
        raise TrainingError(
            "train.init_from: a bigram-count model is counted from the train split in closed "
            "form, with no weights to start from; drop train.init_from"
        )
    path = Path(train.init_from).expanduser()
    checkpoint = resolve_init_from(path if path.is_absolute() else workspace.root / path)
    problem = damage(checkpoint)  # a checkpoint named itself: `resolve_init_from` leaves it
    if problem is None and model is not None:
        problem = init_from_problem(checkpoint, model)
    if problem:
        raise TrainingError(f"train.init_from: {checkpoint}: {problem}")
    return checkpoint


# Switches that change what a GPT's weights mean but not their shapes: weights trained under
# one setting load under another without a complaint, and start from nonsense (rope's blocks
# never learned sinusoids' amplitude, a LayerNorm gain is not an RMSNorm's).
MEANING_SWITCHES = ("pos", "mlp", "norm")


def init_from_problem(checkpoint: Path, model: ModelConfig) -> str | None:
    """Why `model` cannot start from `checkpoint`, as far as the model folder around it says
    (a work folder's step checkpoint has none: its tensors are still checked as they load)."""
    described = checkpoint.parent / "model.json"
    try:
        theirs = json.loads(described.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(theirs, dict):
        return None
    if theirs.get("kind") != model.kind or model.kind != "gpt":
        return _tensor_misfit(theirs, model, checkpoint)
    ours = model.model_dump(mode="json")
    changed = [f"model.{key} {theirs[key]!r} → {ours[key]!r}" for key in MEANING_SWITCHES
               if key in theirs and theirs[key] != ours[key]]  # fmt: skip
    if theirs.get("tie_embeddings") is False and ours["tie_embeddings"]:
        # One tensor for two: the checkpoint's output layer, loaded last, overwrote its token
        # embedding. (Tied → untied loads both from the one trained tensor, as meant.) A
        # `rope_base` change is allowed: raising it is how a context is lengthened on purpose.
        changed.append("model.tie_embeddings False → True: its output layer would overwrite "
                       "its token embedding")  # fmt: skip
    if not changed:  # the switches named first: a norm's change changes its tensors too
        return _tensor_misfit(theirs, model, checkpoint)
    return (
        f"trained with other model switches ({', '.join(changed)}), which its weights would "
        "load under without meaning the same thing; keep the settings of "
        f"{described}, or drop train.init_from to train from scratch"
    )


# The vocabulary both models are built at when the checkpoint's tokenizer does not say its own.
MADE_UP_VOCABULARY = 64


def _trained_vocabulary(checkpoint: Path) -> int | None:
    """The vocabulary size the `tokenizer/` of the model folder around `checkpoint` records
    (the tokenizer a continued run takes), or None where there is none to read."""
    try:
        meta = json.loads((checkpoint.parent / "tokenizer" / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    size = meta.get("vocab_size") if isinstance(meta, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def _tensor_misfit(theirs: dict, model: ModelConfig, checkpoint: Path) -> str | None:
    """The first tensor the checkpoint's model (as its `model.json` describes it) holds in
    another shape than `model` would, or lacks, or has beyond it: said before any stage runs
    (the train stage found it after the data stages). Both are built on the meta device, at the
    vocabulary of the tokenizer beside the checkpoint (the one the run takes), else at a made-up
    one, which the message says: the tokenizer is then checked as the weights load."""
    import torch

    from lm.models.registry import MODELS, build_model

    kind = theirs.get("kind")
    if kind not in MODELS:
        return None
    try:
        their_config = MODELS[kind][1].model_validate(theirs)
    except ValueError:  # a description this version cannot read: loading says what it finds
        return None
    vocabulary = _trained_vocabulary(checkpoint)
    with torch.device("meta"):
        them, us = (
            {name: list(p.shape) for name, p in
             _saved_tensors(build_model(config, vocabulary or MADE_UP_VOCABULARY))}
            for config in (their_config, model)
        )  # fmt: skip
    made_up = "" if vocabulary else f" (at a made-up vocabulary of {MADE_UP_VOCABULARY})"
    for name, shape in us.items():
        if name not in them:
            return f"does not fit this model: it has no {name}"
        if them[name] != shape:
            return (f"does not fit this model: {name} is {them[name]} in it, {shape} in this "
                    f"model{made_up}")  # fmt: skip
    extra = [name for name in them if name not in us]
    return f"does not fit this model: it has {extra[0]}, this model none" if extra else None


def _wait_for_the_training_lock(lock, key: str) -> bool:
    """Take the lock of this training's work folder, saying so when another process holds it
    (it trains the same model: this run then finds its result): the wait was silent, and the
    stage recorded as cached, after minutes. Whether it waited."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        pass
    logging.getLogger("lm.train").info(
        "train: another process is training this model (%s); waiting for it to finish, then "
        "using its result", short_key(key),
    )  # fmt: skip
    waited = time.monotonic()
    fcntl.flock(lock, fcntl.LOCK_EX)
    logging.getLogger("lm.train").info(
        "train: waited %.0f s for the other process", time.monotonic() - waited
    )
    return True


def _trained_already(existing: Descriptor) -> Descriptor:
    """The published model of these settings and data, said to be reused: a run whose training
    another run had finished (a scheduled one beside it, say) logged no line of training at
    all, and Prefect showed its train task as Completed, not Cached."""
    stats = existing.stats or {}
    logging.getLogger("lm.train").info(
        "train: this model is trained already (%s: %s steps, val loss %s); using it",
        short_key(existing.key), stats.get("steps", "?"),
        f"{stats['val_loss']:.4f}" if isinstance(stats.get("val_loss"), float) else "?",
    )  # fmt: skip
    return reused(existing)


def _say_other_interrupted_trainings(workspace: Workspace, work: Path) -> None:
    """A training about to start afresh while interrupted ones of other settings wait in the
    workspace says so: killed at step 100 and rerun with `--set train.max_steps=3000`, a run
    said only "started afresh", with no word of the checkpoints it could not use, or why."""
    from lm.checkpoints import latest_checkpoint
    from storage.prune import INTERRUPTED, find_leftovers

    if latest_checkpoint(work) is not None:
        return  # it resumes
    try:
        others = [found for found in find_leftovers(workspace)
                  if found.kind == INTERRUPTED and found.path != work]  # fmt: skip
    except OSError:  # a note, never a reason for a training to fail
        return
    if others:
        logging.getLogger("lm.train").info(
            "train: %d interrupted training(s) of other settings, data or code are in the "
            "workspace (`lmforge prune` lists them); a training resumes only with the settings, "
            "data and code it began with",
            len(others),
        )


def _saved_tensors(model):
    """Every tensor a checkpoint of `model` holds, by name, as a strict load checks them:
    parameters and saved buffers alike (a frozen w2v model's vectors are a buffer, a
    fine-tuned one's a parameter, under one name), a tied GPT's `head.weight` too."""
    return model.state_dict(keep_vars=True).items()


def train_settings_digest(train: TrainConfig) -> str:
    """The settings that make the model: not the bookkeeping, and the number of processes
    over all machines rather than how they are spread (M machines of N processes train as one
    of M × N, step for step), so a run moved to other machines finds its model or resumes:
    machines whose "auto" device and precision pick the same (`as_run_here`; a CPU with native
    bf16 and one without train apart); `parallel` only where there are several processes (one
    trains alike under either)."""
    world = {"nproc_per_node": train.world_size, "nnodes": 1}
    if train.world_size == 1:  # one process is not wrapped (`Trainer.parallel` "none")
        world["parallel"] = TrainConfig.model_fields["parallel"].default
    here = as_run_here(train, bf16_trains_by_default)
    return at_defaults(here, BOOKKEEPING).model_copy(update=world).digest()


def bf16_trains_by_default(device) -> bool:
    """What `train.precision = "auto"` picks on `device` (`lm.train.autocast_dtype`)."""
    from lm.train import autocast_dtype

    return autocast_dtype(TrainConfig(), device) is not None


def train_key(
    shards: Descriptor,
    tokenizer: Descriptor,
    model: ModelConfig,
    train: TrainConfig,
    vectors: Descriptor | None = None,
) -> str:
    upstream = [shards.digest, tokenizer.digest]
    start = init_checkpoint(train, Workspace.from_env())
    if uses_word2vec(model) and start is None:  # the vectors a w2v model reads or a GPT
        # starts from; a continued model's are its checkpoint's, whatever this run's are
        upstream.append(vectors.digest if vectors is not None else "no-vectors")
    if start is not None:
        # The weights, not their path: a retrain's path is absolute, so after a `mv` of the
        # workspace the same continuation was trained again.
        upstream.append(weights_digest(start))
        train = train.model_copy(update={"init_from": "(weights)"})
    if model.kind == "gpt":  # it trains on its own context (`effective_train_config`): a
        # `train.block_size` written equal to it (the config refuses another) trained it again
        train = at_defaults(train, ["block_size"])
    # One model however written (a preset's name or its switches): trained once.
    settings = f"{written_one_way(model).digest()}:{train_settings_digest(train)}"
    return stage_key(STAGE, VERSION, settings, upstream, code_digest(*CODE))


@task(name=STAGE, cache_key_fn=cache_key_from(train_key), persist_result=True)
def train_task(
    shards: Descriptor,
    tokenizer: Descriptor,
    model: ModelConfig,
    train: TrainConfig,
    vectors: Descriptor | None = None,
) -> Descriptor:
    # torch is imported here, not at module level: the flow imports this module on every run.
    import torch

    from lm.evaluate import count_bigram_baseline
    from lm.machine import device_name
    from lm.models.registry import build_model
    from lm.train import Trainer, val_loss_of

    workspace = Workspace.from_env()
    store = train_store(workspace)
    key = train_key(shards, tokenizer, model, train, vectors)
    existing = store.load_descriptor(key)
    if existing is not None:
        return _trained_already(existing)
    if uses_word2vec(model) and vectors is None:
        raise TrainingError(
            f"model '{model.kind}' needs word2vec vectors of the tokenizer's pieces: enable "
            'word2vec with input = "pieces"'
        )
    settings = effective_train_config(model, train)
    init_from = init_checkpoint(train, workspace, model)
    shard_folder = workspace.resolve(shards.path)
    train_tokens, shard_info = open_shard(shard_folder / "train.bin", tokenizer.digest)
    eot_id = shard_info.eot_id
    val_tokens, _ = open_shard(shard_folder / "val.bin", tokenizer.digest)
    tokenizer_folder = workspace.resolve(tokenizer.path)
    loaded = load_tokenizer(tokenizer_folder)
    if loaded.digest != tokenizer.digest:  # copied into the model's folder, it spread there
        raise TrainingError(
            f"{tokenizer_folder}: the tokenizer there is not the one written (its digest is "
            f"{short_key(loaded.digest)}, its descriptor records {short_key(tokenizer.digest)}):"
            " a file changed on the disk or in a copy; delete that folder and run again"
        )
    vocab_size = loaded.vocab_size
    work = work_folder(store, key)
    try:  # a folder of the workspace that takes no writes: a traceback from mkdir
        work.mkdir(parents=True, exist_ok=True)
        lock = open(work / WORK_LOCK, "a+")  # noqa: SIM115 (closed by the `with` below)
    except OSError as error:
        raise TrainingError(f"{work}: the training's folder cannot be written ({error})") from None
    with lock:
        waited = _wait_for_the_training_lock(lock, key)  # one trains a key; a second waits
        existing = store.load_descriptor(key)
        if existing is not None:
            remove_unused_work(work)
            return _trained_already(existing)
        if waited:  # "waited 1 s", then "resumed from step 30" said nothing of why
            logging.getLogger("lm.train").info(
                "train: the other process ended without finishing this model (stopped or "
                "killed); this run trains it, from its last checkpoint where there is one"
            )
        started = time.perf_counter()
        if model.kind != "bigram-count":
            _say_other_interrupted_trainings(workspace, work)
        coverage: dict[str, float] = {}
        # Its smoothing tuned, as the evaluate stage's is.
        baseline = count_bigram_baseline(train_tokens, vocab_size, stage="train")
        pieces = _piece_vectors(model, vectors, workspace, tokenizer, settings.seed, coverage)
        if settings.world_size > 1 and model.kind != "bigram-count":
            outcome = _train_with_torchrun(workspace, work, model, settings, shard_folder,
                                           tokenizer.digest, vocab_size, eot_id, init_from,
                                           pieces)  # fmt: skip
            baseline_loss = val_loss_of(baseline, val_tokens, settings, eot_id,
                                        window_history(model))  # fmt: skip
        else:
            torch.manual_seed(settings.seed)  # initial weights from the seed, as in a worker
            network = build_model(model, vocab_size, vectors=pieces, eot_id=eot_id)
            trainer = Trainer(network, settings, train_tokens, val_tokens, work,
                              work / METRICS_FILE, tokenizer_digest=tokenizer.digest,
                              eot_id=eot_id)  # fmt: skip
            if model.kind == "bigram-count":
                network.fit(_as_tensor(train_tokens))
                val_loss, steps, stopped_early = trainer.evaluate(network), 0, False
                tokens_seen = tokens_trained = tokens_this_run = 0
                step_seconds, steady = 0.0, (None, None)
                trainer.save("best")
            else:
                trainer.resume_or_initialize(work, init_from)
                seen_before = trainer.tokens_seen  # by the run this one resumes
                result = trainer.train()
                val_loss, steps = result.best_val_loss, result.step
                stopped_early, tokens_seen = result.stopped_early, result.tokens_seen
                tokens_trained = result.tokens_trained
                tokens_this_run = tokens_seen - seen_before
                step_seconds = result.step_seconds
                steady = (result.steady_tokens, result.steady_seconds)
            outcome = {"best_val_loss": val_loss, "steps": steps, "stopped_early": stopped_early,
                       "tokens_seen": tokens_seen, "tokens_trained": tokens_trained,
                       "tokens_this_run": tokens_this_run, "step_seconds": step_seconds,
                       "steady_tokens": steady[0], "steady_seconds": steady[1],
                       "parameters": trainer.module.num_params(), "device": str(trainer.device),
                       "device_name": device_name(trainer.device),
                       "threads": torch.get_num_threads(), "world_size": 1}  # fmt: skip
            baseline_loss = trainer.evaluate(baseline.to(trainer.device))
        seconds = time.perf_counter() - started
        stats = {
            "model": model.kind,
            "parameters": outcome["parameters"],
            "steps": outcome["steps"],
            # the step of the published weights (`best/`): before `steps` where training went
            # on past its best val loss (early stopping's patience) or ended worse
            "best_step": read_info(work / "best").get("step"),
            "tokens_seen": outcome["tokens_seen"],  # padding after a document not counted
            # what the published weights (`best/`) were trained on, with what the weights
            # they continue were trained on (`train.init_from`)
            "tokens_trained": tokens_behind_best(work, outcome["tokens_trained"]),
            # trained in `seconds`: a resumed training's tokens before the resume took time
            # this stage did not measure (speeds are this over `seconds`)
            "tokens_this_run": outcome.get("tokens_this_run", outcome["tokens_seen"]),
            "val_loss": outcome["best_val_loss"],
            "baseline_val_loss": baseline_loss,
            "baseline_smoothing": baseline.config.smoothing,
            "stopped_early": outcome["stopped_early"],
            "seconds": seconds,
            # The training steps' own seconds (no evaluations, checkpoints, baseline or
            # set-up): training speed is tokens_this_run over these.
            "step_seconds": outcome.get("step_seconds"),
            # Those of the steps after the first (its allocations and start-up, which only the
            # first training in a process pays for in full): what an ablation compares.
            "steady_tokens": outcome.get("steady_tokens"),
            "steady_seconds": outcome.get("steady_seconds"),
            "device": outcome["device"],
            "device_name": outcome.get("device_name"),
            "processes": outcome["world_size"],
            # PyTorch's CPU threads in each process: the order of summation, so the figures
            # (None: from ranks that predate the count)
            "threads": outcome.get("threads"),
            **coverage,
        }
        with store.build(key) as staging:
            _publish(work, staging, workspace.resolve(tokenizer.path), model, settings, stats)
            descriptor = store.describe(staging, STAGE, key, key, stats)
    shutil.rmtree(work, ignore_errors=True)
    return descriptor


def remove_unused_work(work: Path) -> None:
    """Remove `work` if it holds nothing but its lock: a process that made it only to find
    the model published by another (which removed its own folder first) left it behind, and
    `prune` listed a "training that never started". Called with the lock held."""
    try:
        if never_started(work):
            shutil.rmtree(work, ignore_errors=True)
    except OSError:
        pass


def tokens_behind_best(work: Path, at_last_step: int | None) -> int | None:
    """The tokens the `best/` checkpoint's weights were trained on, over every training they
    continue, as its `checkpoint.json` records it: the weights the model's row scores, and the
    ones a continuation (`train.init_from`, a retrain) starts from, so that counts add up from
    one generation to the next: None where it records none (weights continued from a
    checkpoint that did not count). `at_last_step` (the training's count to its last step)
    where there is no `best/`, or its `checkpoint.json` predates the count."""
    info = read_info(work / "best")  # {} where there is none
    if "tokens_trained" not in info:
        return at_last_step
    count = info["tokens_trained"]
    return count if isinstance(count, int) else None


def _train_with_torchrun(workspace, work, model, settings, shard_folder, tokenizer_digest,
                         vocab_size, eot_id, init_from, pieces) -> dict:  # fmt: skip
    """Train in `settings.nproc_per_node` torchrun ranks over `work`, on this machine or, with
    `settings.nnodes > 1`, as node 0 of several (announced in the workspace for `lmforge
    train-join`); the ranks' summary. `pieces`, the word2vec matrix a model is built from, is
    handed to them in a file."""
    from lm.distributed import run_torchrun
    from lm.train_worker import (
        PIECE_VECTORS_FILE,
        RESULT_FILE,
        TokenFile,
        WorkerSpec,
        read_result,
        write_spec,
        write_vectors,
    )
    from storage.shards import read_shard_info

    def token_file(split: str) -> TokenFile:
        path = shard_folder / f"{split}.bin"
        return TokenFile(path=str(path), dtype=read_shard_info(path).dtype)

    spec = WorkerSpec(
        model=model, train=settings, vocab_size=vocab_size, train_tokens=token_file("train"),
        val_tokens=token_file("val"), tokenizer_digest=tokenizer_digest, eot_id=eot_id,
        init_from=str(init_from) if init_from else None,
        vectors=None if pieces is None else str(write_vectors(work / PIECE_VECTORS_FILE, pieces)),
    )  # fmt: skip
    write_spec(work, spec)
    (work / RESULT_FILE).unlink(missing_ok=True)
    if settings.nnodes == 1:
        run_torchrun(settings.nproc_per_node, "lm.train_worker", str(work))
    else:
        _train_as_node_zero(workspace, work, settings)
    return read_result(work)


def _train_as_node_zero(workspace, work, settings) -> None:
    """Host a training over `settings.nnodes` machines: announce it, say how the others join,
    train this machine's share."""
    from lm.distributed import check_port_free, join_instruction, processes, run_torchrun
    from storage.launches import announced, new_launch

    launch = new_launch(work, settings.nnodes, settings.nproc_per_node, settings.master_addr,
                        settings.master_port, settings.join_timeout_s,
                        rank_code_digest())  # fmt: skip
    place = launch.place(0)
    check_port_free(place)
    with announced(workspace, launch) as announcement:
        logging.getLogger("lm.train").info(
            "training on %d nodes of %s: this machine is node 0, meeting the others at %s for "
            "up to %d s; %s (announced in %s)", settings.nnodes,
            processes(settings.nproc_per_node), place.address, settings.join_timeout_s,
            join_instruction(settings.nnodes, workspace.root), announcement,
        )  # fmt: skip
        run_torchrun(settings.nproc_per_node, "lm.train_worker", str(work), nodes=place)


def rank_code_digest() -> str:
    """Digest of the code a training rank runs (`lm.train_worker` and all it imports): every
    node of a training over several machines must run the same."""
    return code_digest(*module_sources("lm.train_worker"))


def _piece_vectors(model, vectors, workspace, tokenizer, seed: int, coverage: dict):
    """The word2vec matrix (one row per token id) for a model that reads it, else None."""
    if not uses_word2vec(model):
        return None
    from lm.models.embeddings import load_piece_vectors
    from tasks.word2vec import VECTORS_FILE

    pieces = load_piece_vectors(
        model,
        workspace.resolve(vectors.path) / VECTORS_FILE,
        load_tokenizer(workspace.resolve(tokenizer.path)),
        seed=seed,
        digest=vectors.digest,
    )
    coverage["word2vec_coverage"] = pieces.coverage
    return pieces.matrix


def _as_tensor(tokens):
    import torch

    return torch.from_numpy(tokens.astype("int64"))


def _publish(work, staging, tokenizer_folder, model, settings, stats) -> None:
    from lm.checkpoints import publish_checkpoint
    from lm.train import latest_checkpoint

    if (work / "best").is_dir():
        publish_checkpoint(work / "best", staging / "best")
    final = latest_checkpoint(work)
    if final is not None:
        publish_checkpoint(final, staging / "final")
    if (work / METRICS_FILE).is_file():
        shutil.copy2(work / METRICS_FILE, staging / METRICS_FILE)
    shutil.copytree(tokenizer_folder, staging / "tokenizer", ignore=shutil.ignore_patterns("DONE"))
    (staging / "model.json").write_text(model.model_dump_json(indent=2), encoding="utf-8")
    (staging / "train.json").write_text(settings.model_dump_json(indent=2), encoding="utf-8")
    (staging / "stats.json").write_text(json.dumps(stats, indent=2))
