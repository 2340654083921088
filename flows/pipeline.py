"""The `lm-pipeline` flow: ingest → clean → tokenizer → encode, word2vec → train → evaluate →
record, each stage a cached task.

The flow owns the run: it registers the run in DuckDB when it starts, times every stage and
notes whether Prefect served it from cache, and records the outcome, completed or failed with
its error, in one batch at the end. Each stage is journaled too, as it starts and ends, in
`runs/<run_id>/stages.jsonl`: a run killed before the end is recorded from its journal, as
`crashed`, by the next run. Stages pass descriptors (paths and digests), never data.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shlex
import subprocess
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import Task, flow, tags
from prefect.runtime import deployment, flow_run

from flows.run_card import publish_run_card
from flows.user_errors import hide_prefect_tracebacks_of, user_error_types
from lm.clock import utc_now
from lm.config import (
    DEFAULT_PRESET,
    ConfigError,
    ModelRun,
    PipelineConfig,
    SplitConfig,
    load_config,
    override_value,
    resolve_preset,
)
from lm.eval_config import EvalConfig
from lm.machine import describe_machine
from lm.text.sources import InputError, is_url
from lm.text.url_credentials import without_url_credentials
from storage.artifacts import (
    DESCRIPTOR_FILE,
    STAGING_INFIX,
    ArtifactStore,
    Descriptor,
    take_reused,
)
from storage.heartbeat import HEARTBEAT_FILE, Heartbeat
from storage.metrics_log import RUN_METRICS_FILE, MetricsLog
from storage.processes import pid_alive, this_host
from storage.registry import (
    DatasetRecord,
    ModelRecord,
    PromotionRecord,
    RegistryError,
    RunRegistry,
    StageRecord,
    TokenizerRecord,
)
from storage.stage_journal import JOURNAL_FILE, LiveMetrics, StageJournal
from storage.workspace import Workspace
from tasks.caching import REPO_ROOT, code_digest
from tasks.clean import clean_key, clean_task, corpus_store
from tasks.encode import encode_key, encode_task, shards_store
from tasks.evaluate import METRICS_FILE as EVAL_METRICS_FILE
from tasks.evaluate import check_prompts, evaluate_key, evaluate_store, evaluate_task
from tasks.ingest import ingest_key, ingest_store, ingest_task
from tasks.record import Recorded, record_task
from tasks.tokenizer import (
    adopt_tokenizer_task,
    adopted_key,
    tokenizer_key,
    tokenizer_store,
    tokenizer_task,
)
from tasks.train import METRICS_FILE, train_key, train_store, train_task, work_folder
from tasks.word2vec import word2vec_key, word2vec_store, word2vec_task

# The library's loggers (progress lines, skipped-file warnings) reach Prefect's console and run
# logs through PREFECT_LOGGING_EXTRA_LOGGERS; they need a level that lets INFO through.
for _library_logger in ("lm", "storage"):
    logging.getLogger(_library_logger).setLevel(logging.INFO)

# A run that a deployment starts (a worker, `lmforge serve`) imports this module, not the
# command line: an error a user can fix is its one line in the run's log there too, without
# Prefect's traceback (`flows.user_errors`; the command line sets its own list).
hide_prefect_tracebacks_of(user_error_types())

logger = logging.getLogger("lm.pipeline")
TRACKED_PACKAGES = ("prefect", "duckdb", "pyarrow", "numpy", "torch", "gensim", "sentencepiece")
# Every training, whichever flow or deployment runs it, takes a slot of this tag's task
# concurrency limit: one at a time on a Prefect server where the limit exists (the service path
# creates it, README "Run as a service"); where it does not, as in a plain `lmforge run`,
# nothing waits.
TRAINING_TAG = "lmforge-training"
TRAINING_SLOTS = 1


def new_run_id() -> str:
    return f"{utc_now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def _git_sha() -> str | None:
    """The commit of lmforge's checkout (or of a repository that keeps lmforge in a folder);
    None where lmforge's own files are not in the repository around them: an install from a
    wheel, in a project's `.venv/`, whose commit is not lmforge's."""
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "lm/config.py"],
                                 cwd=REPO_ROOT, capture_output=True, timeout=5)  # fmt: skip
        if tracked.returncode != 0:
            return None
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def reproduce_command(
    config_path: str, overrides: list[str], command: str = "run", cwd: str | None = None
) -> str:
    """The command line that runs this again: `command` is the flow's (`run`, `retrain`,
    `ablation`). With `cwd` (the run read paths relative to it), it starts by going there."""
    words = ["lmforge", command, shlex.quote(config_path),
             *(f"--set {shlex.quote(o)}" for o in overrides)]  # fmt: skip
    if cwd is not None:
        words = ["cd", shlex.quote(cwd), "&&", *words]
    return " ".join(words)


def relative_paths_of(settings: PipelineConfig) -> list[str]:
    """The sources `settings` reads relative to the working folder: the same command elsewhere
    would read other files, so the reproduce command says where. (A relative `init_from` is
    inside the workspace, wherever the command runs.)"""
    paths = [s.path for s in settings.ingest.sources
             if not s.path.startswith(("gensim:", "names:")) and not is_url(s.path)]  # fmt: skip
    return [p for p in paths if not os.path.isabs(os.path.expanduser(p))]


def _deployment_name() -> str | None:
    """`flow/deployment`, as `prefect deployment run` names it: every flow of prefect.yaml has
    a deployment called `default`, so the bare name does not say which ran."""
    name = deployment.get_name()
    return f"{flow_run.get_flow_name()}/{name}" if name else None


def _run_row(
    run_id: str, config: PipelineConfig, config_path: str, overrides: list[str], command: str
) -> dict:
    return {
        "run_id": run_id,
        "flow_run_id": flow_run.get_id(),
        "deployment": _deployment_name(),
        "preset": config.name,
        "config_path": config_path,
        "status": "running",
        "started_at": utc_now(),
        # The config and command as recorded: a source URL's token or signature left out.
        "config": without_url_credentials(config.model_dump(mode="json")),
        "config_digest": config.digest(),
        "seed": config.seed,
        "command": without_url_credentials(
            reproduce_command(
                config_path, overrides, command, os.getcwd() if relative_paths_of(config) else None
            )
        ),
        **_where_it_ran(),
    }


def _where_it_ran() -> dict:
    """The code, packages, machine and process of a run, as its registry row records them."""
    return {
        "code_digest": code_digest("lm", "storage", "tasks", "flows"),
        "git_sha": _git_sha(),
        "package_versions": _package_versions(),
        "device": describe_machine(),
        "hostname": this_host(),
        "pid": os.getpid(),
    }


def run_stage(
    run: RunContext,
    stage_task: Task,
    key: str,
    store: ArtifactStore,
    stage_name: str | None = None,
    concurrency_tag: str | None = None,
    live_metrics: LiveMetrics | None = None,
    **parameters: Any,
) -> Descriptor:
    """Run one cached stage and note how it went, in `run.stages` and, as it starts and ends,
    in the run's stage journal. A missing or incomplete output directory refreshes the cache:
    Prefect's record alone is never trusted to mean the files exist.

    With `concurrency_tag`, a stage with work to do carries that tag, so it waits for a slot of
    the tag's concurrency limit; one whose output exists is served at once, never queued
    behind work it does not do. `live_metrics` is the file the stage logs to as it runs (a
    training's curve), noted in the journal for a run killed before the flow copies it."""
    name = stage_name or stage_task.name
    run.journal.started(name, live_metrics)
    started = time.perf_counter()
    refresh = not store.is_complete(key)
    # Prefect fills a run name in with `str.format(**parameters)`: a model named `count {v2}`
    # failed the run with KeyError 'v2'. Its braces are doubled, so the name reads as written.
    named = stage_name.replace("{", "{{").replace("}", "}}") if stage_name else None
    options = {"refresh_cache": refresh} | ({"task_run_name": named} if named else {})
    if concurrency_tag and refresh:
        waiting = slots_taken(concurrency_tag)
        if waiting:
            logger.info("%s: %s", name, waiting)
    try:
        with tags(*([concurrency_tag] if concurrency_tag and refresh else [])):
            state = stage_task.with_options(**options)(**parameters, return_state=True)
        descriptor: Descriptor = state.result()
    except BaseException as error:  # a failure, or a stop (Ctrl-C, SIGTERM): the run records it
        try:  # an ablation goes on to its next arm: this one is not running
            run.journal.failed(name)
        except Exception as unwritten:  # never in place of the error being raised
            logger.warning("%s", unwritten)
        run.failures.append((error, name))
        if live_metrics is not None:  # the curve so far, for the run's report
            try:
                run.metrics.append_file(live_metrics.path, live_metrics.model, cut_short=True)
            except Exception as error:  # never in place of the error being raised
                logger.warning("%s: the curve so far was not kept (%s)", live_metrics.path,
                               error)  # fmt: skip
        raise
    record = StageRecord(
        stage=name,
        cache_key=key,
        # Prefect's cache, or the store's: the artifact built by another process meanwhile.
        cached=take_reused(key) or state.name == "Cached",
        seconds=time.perf_counter() - started,
        output_digest=descriptor.digest,
        output_path=descriptor.path,
        stats=descriptor.stats,
        finished_at=utc_now(),
    )
    run.stages.append(record)
    run.journal.finished(record)
    return descriptor


def slots_taken(tag: str) -> str | None:
    """Whether a stage tagged `tag` will wait: its concurrency limit's slots all held (by other
    runs' trainings), said as the log line a silent wait of minutes needs; None when a slot is
    free, the tag has no limit, or the API cannot tell (never a reason to fail a run).

    The count that blocks is the limit's own (`tag:<tag>`, a global concurrency limit in the
    Prefect pinned here), not the holders `prefect concurrency-limit inspect` lists, which are read
    from its leases: a slot whose lease a server restart lost (Prefect's in-memory leases)
    stays taken with no holder, and a training waited for it for ever without a word."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(f"tag:{tag}")
            held, size = limit.active_slots, limit.limit
            if not limit.active or held < size:  # an inactive limit holds nothing back
                return None
            holders = client.read_concurrency_limit_by_tag(tag).active_slots
    except Exception:  # no such limit (ObjectNotFound), or no answer
        return None
    if not holders:
        return (f"waiting for a free '{tag}' slot: {held} of {size} held, by no run Prefect "
                f"knows of (lost in a restart of its server?); `prefect gcl update tag:{tag} "
                f"--active-slots 0` frees them once no training runs")  # fmt: skip
    return (f"waiting for a free '{tag}' slot: {held} of {size} held by other runs' trainings "
            f"(prefect concurrency-limit inspect {tag})")  # fmt: skip


def train_model(
    run: RunContext,
    model_run: ModelRun,
    shards: Descriptor,
    tokenizer: Descriptor,
    corpus: Descriptor,
    eval_config: EvalConfig,
    ladder: bool = False,
    vectors: Descriptor | None = None,
    eval_shards: Descriptor | None = None,
) -> ModelRecord:
    """Train one model of the run (cached like every stage) and log its curve and numbers
    under its label. In a ladder, each model's stages are named after it (`train/mlp`).

    `eval_shards` (default: `shards`) are the shards it is scored on, when it trains on only
    part of a corpus: `retrain` continues a model on the new documents alone, but scores it,
    and fits the baseline it is compared with, on the whole corpus, as any other run."""
    label, workspace = model_run.label, run.workspace
    eval_shards = eval_shards or shards
    suffix = f"/{label}" if ladder else ""
    key = train_key(shards, tokenizer, model_run.model, model_run.train, vectors)
    store = train_store(workspace)
    trained = run_stage(
        run,
        train_task,
        key,
        store,
        stage_name=f"train{suffix}",
        concurrency_tag=TRAINING_TAG,
        live_metrics=LiveMetrics(work_folder(store, key) / METRICS_FILE, label),
        shards=shards,
        tokenizer=tokenizer,
        model=model_run.model,
        train=model_run.train,
        vectors=vectors,
    )
    run.metrics.append_file(workspace.resolve(trained.path) / METRICS_FILE, model=label)
    # The evaluator's numbers (a fixed sample, with bytes) replace training's running ones;
    # where it did not score val (`eval.splits`), the val loss is left unknown rather than
    # training's, a figure on other windows in a column of the evaluator's (its curve stays).
    stats = {key: value for key, value in trained.stats.items()
             if not key.startswith(("val_", "baseline_val_"))}  # fmt: skip
    record = ModelRecord(
        label=label,
        kind=model_run.model.kind,
        digest=trained.digest,
        path=trained.path,
        tokenizer_digest=tokenizer.digest,
        corpus_digest=corpus.digest,
        config={
            "model": model_run.model.model_dump(mode="json"),
            "train": model_run.train.model_dump(),
        },
        stats=stats,
    )
    try:
        evaluated = run_stage(
            run,
            evaluate_task,
            evaluate_key(trained, eval_shards, tokenizer, eval_config),
            evaluate_store(workspace),
            stage_name=f"evaluate{suffix}",
            trained=trained,
            shards=eval_shards,
            tokenizer=tokenizer,
            config=eval_config,
        )
    except BaseException:
        # Trained, but not scored: a failed run records it unscored, and `generate` can use it.
        run.unscored_models.append(record)
        raise
    stats |= {
        key: value
        for key, value in evaluated.stats.items()
        if key.startswith(("val_", "test_", "baseline_")) and isinstance(value, int | float)
    }
    stats["evaluation_path"] = evaluated.path
    scores = json.loads((workspace.resolve(evaluated.path) / EVAL_METRICS_FILE).read_text())
    run.metrics.log_many(
        {
            "model/parameters": stats["parameters"],
            "model/tokens_seen": stats["tokens_seen"],
            **{
                f"{'eval' if scored == 'model' else scored}/{split}/{metric}": value
                for scored, splits in scores.items()
                for split, score in splits.items()
                for metric, value in score.items()
                if isinstance(value, int | float)
            },
        },
        model=label,
    )
    return record


@dataclass
class RunContext:
    """One run of a flow: its id, where it writes, and the stages done so far (kept here for
    the record at the end, and journaled as they happen for a run killed before it)."""

    run_id: str
    workspace: Workspace
    registry: RunRegistry
    metrics: MetricsLog
    journal: StageJournal
    stages: list[StageRecord] = field(default_factory=list)
    # What the run built, once built: recorded even if a later stage fails, so that the
    # corpus a tokenizer failed on is the one `lmforge corpus stats` shows.
    corpus: Descriptor | None = None
    tokenizer: Descriptor | None = None
    # Each error a stage raised, with the stage: a failed run's error names it, as a crashed
    # run's does. Matched by the error itself, a failure caught and survived (an ablation's
    # arm) is never blamed for a later one.
    failures: list[tuple[BaseException, str]] = field(default_factory=list)

    def stage_of(self, error: BaseException) -> str | None:
        return next((stage for raised, stage in self.failures if raised is error), None)

    # Models trained whose evaluation failed: a failed run records them, unscored.
    unscored_models: list[ModelRecord] = field(default_factory=list)
    # Touches `runs/<run_id>/alive` while the run lives: a run killed with `kill -9` is
    # recorded as ended at its last touch. Stopped once the run is recorded.
    heartbeat: Heartbeat | None = None


def open_run(
    settings: PipelineConfig, config_path: str, overrides: list[str], command: str = "run"
) -> RunContext:
    """Register a new run (closing this host's runs whose process died) and return its
    context."""
    workspace = Workspace.from_env().ensure()
    _warn_of_history_elsewhere(workspace)
    registry = RunRegistry(workspace.registry_path)
    run_id = new_run_id()
    row = _run_row(run_id, settings, config_path, overrides, command)  # started now: the
    # registry may be held open for a while, and its wait is part of the run (it was left out)
    registry.close_abandoned_runs(this_host(), pid_alive, workspace.runs)
    registry.start_run(row)
    # The way from a Prefect flow run to lmforge's record of it (`lmforge runs show RUN_ID`).
    logger.info("lmforge run %s (`lmforge runs show %s`)", run_id, run_id)
    folder = workspace.runs / run_id
    metrics = MetricsLog(folder / RUN_METRICS_FILE)
    heartbeat = Heartbeat(folder / HEARTBEAT_FILE).start()
    return RunContext(run_id, workspace, registry, metrics, StageJournal(folder / JOURNAL_FILE),
                      heartbeat=heartbeat)  # fmt: skip


@contextmanager
def refusals_recorded(config: str | None, overrides: list[str], command: str) -> Iterator[None]:
    """Record a run whose config a flow refuses before the run is opened: one that `prefect
    deployment run` (a schedule, an automation) sent with a config that is missing, not valid
    TOML or not valid settings was only a Failed flow run in Prefect, and the history people
    query (`lmforge runs`, `runs.status = 'failed'`) never heard of it. The command line says
    such errors before any flow starts, so its runs never get here."""
    try:
        yield
    except ConfigError as error:
        _record_refused_run(config, overrides, command, error)
        raise


def refuse_what_cannot_fit(settings: PipelineConfig, runs: list, config_path: str) -> None:
    """A model that cannot fit the memory it would train in, as the config's error before the
    run opens (`lm.memory_fit`): the command line refuses it before any flow starts, but a run
    a deployment started met it after every data stage, as the allocator's traceback or the
    OOM killer. (The command line also warns of one that may not fit; a flow does not.)"""
    from lm.memory_fit import memory_fit

    refusal = memory_fit(settings, runs, Path(config_path)).refusal
    if refusal:
        raise ConfigError(refusal)


def _record_refused_run(
    config: str | None, overrides: list[str], command: str, error: ConfigError
) -> None:
    """A `failed` run with no stages and no settings: what was asked and why it was refused."""
    run_id = new_run_id()
    now = utc_now()
    asked = config if config is not None else DEFAULT_PRESET
    row = {
        "run_id": run_id,
        "flow_run_id": flow_run.get_id(),
        "deployment": _deployment_name(),
        "preset": _preset_named(asked, overrides),
        "config_path": asked,
        "status": "failed",
        "started_at": now,
        "ended_at": now,
        "seconds": 0.0,
        "command": without_url_credentials(reproduce_command(asked, overrides, command)),
        # A `--set` that names a source URL is quoted in the error, its token with it.
        "error": without_url_credentials(f"{type(error).__name__}: {error} (before the run began)"),
        **_where_it_ran(),
    }
    try:
        workspace = Workspace.from_env().ensure()
        RunRegistry(workspace.registry_path).start_run(row)
    except Exception as unrecorded:  # the config's error, raised next, is the one to see
        logger.error("the refused config was not recorded as a failed run (%s: %s)",
                     type(unrecorded).__name__, unrecorded)  # fmt: skip
        return
    logger.info("lmforge run %s recorded failed (`lmforge runs show %s`)", run_id, run_id)


def _preset_named(config: str, overrides: list[str]) -> str:
    """The preset a refused config's runs would record: the `name` a `--set name=...` gives,
    else its file's, else the file's stem (as `load_config` names it), so that `runs --preset`
    finds the refusal beside the runs of the same preset. A file that cannot be read names
    none but its stem; nor does a name `load_config` refuses (a control character, perhaps
    the refusal itself), which the run list printed as it is, a newline and all."""
    name = _name_set(overrides)
    if name is None:
        try:
            data = tomllib.loads(resolve_preset(config).read_text(encoding="utf-8-sig"))
        except (ConfigError, OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return Path(config).stem
        name = data.get("name")
    readable = isinstance(name, str) and name.strip() and name.isprintable()
    return name if readable else Path(config).stem


def _name_set(overrides: list[str]) -> object:
    """The value of the last `--set name=...`, read as `load_config` reads it; None without
    one, or with one it refuses."""
    for override in reversed(overrides):
        key, _, value = override.partition("=")
        if key.strip() == "name":
            try:
                return override_value(override, "name", value)
            except ConfigError:
                return None
    return None


RUN_FOLDER = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


def _warn_of_history_elsewhere(workspace: Workspace) -> None:
    """A run about to start a new registry beside the folders of earlier runs: the registry
    that held their history (runs, metrics, a retrain's champion) was deleted or moved aside,
    and the next retrain would promote with "no champion yet". Said before it is replaced for
    good by a new one, while a backup can still be put back."""
    if workspace.registry_path.exists() or not workspace.runs.is_dir():
        return
    earlier = sorted(p.name for p in workspace.runs.iterdir()
                     if p.is_dir() and RUN_FOLDER.fullmatch(p.name))  # fmt: skip
    if earlier:
        logger.warning(
            "%s is not there, but %s holds the folders of %d earlier run%s (the newest %s): "
            "their history (runs, metrics, models, the retrain champion) was in it. This run "
            "starts a new registry; to keep that history, stop it and put the old registry "
            "back (from a backup, or where it was moved aside)",
            workspace.registry_path, workspace.runs, len(earlier),
            "" if len(earlier) == 1 else "s", earlier[-1],
        )  # fmt: skip


def record_failure(run: RunContext, error: BaseException, models: list[ModelRecord] = ()) -> None:
    """Record the run as failed, with its stages so far, the corpus and tokenizer it built,
    and the `models` it finished (the lower rungs of a ladder whose top failed are still
    trained models, worth comparing)."""
    corpus, tokenizer = run.corpus, run.tokenizer
    datasets, tokenizers = [], []
    if corpus is not None:
        datasets.append(DatasetRecord(corpus.digest, corpus.key, corpus.path, corpus.stats))
        if tokenizer is not None:
            tokenizers.append(
                TokenizerRecord(tokenizer.digest, corpus.digest, tokenizer.path, tokenizer.stats)
            )
    cancelled = cancelled_from_prefect(error)
    try:
        with _beating_until_recorded(run), _ctrl_c_deferred():
            record_task(
                run.run_id,
                "cancelled" if cancelled else "failed",
                run.stages,
                datasets,
                corpus.digest if corpus else None,
                str(run.metrics.path),
                error=failure_text(error, run.stage_of(error), cancelled),
                tokenizers=tokenizers,
                models=[*models, *run.unscored_models],
            )
    except Exception as unrecorded:  # the run's own error, raised next, says what went wrong
        # (often the same full disk, which left neither the registry nor outcome.json
        # writable): this one would replace it with a traceback that names no file.
        logger.error("run %s could not be recorded as %s (%s: %s); the next run records "
                     "it as crashed", run.run_id, "cancelled" if cancelled else "failed",
                     type(unrecorded).__name__, unrecorded)  # fmt: skip


def failure_text(error: BaseException, stage: str | None, cancelled: bool = False) -> str:
    """A failed run's error as `runs show` gives it: the exception, and the stage it came
    from, worded as a crashed run's is."""
    if cancelled:
        text = "cancelled from Prefect"
    elif _output_cut(error):
        text = ("its output was cut: the worker or terminal it wrote to was gone (rich's "
                "SystemExit: 1 on a broken pipe)")  # fmt: skip
    elif (signal_name := _stopping_signal(error)) is not None:
        # Was the bare "TerminationSignal", "KeyboardInterrupt" or "SystemExit: 129" (SIGHUP):
        # three words for one thing, a stop from outside, none of them saying a rerun resumes.
        text = (f"stopped by {signal_name}; a rerun reuses its finished stages and resumes an "
                "interrupted training from its last checkpoint")  # fmt: skip
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return f"{text} (during stage {stage})" if stage else text


def _stopping_signal(error: BaseException) -> str | None:
    """The signal that stopped the run, by name, when `error` is how one ends it: Prefect's
    TerminationSignal (SIGTERM), KeyboardInterrupt (SIGINT: Ctrl-C), or the SystemExit of
    128 + N that `lmforge run` raises on SIGTERM or SIGHUP outside a flow's own handler."""
    import signal

    from prefect.exceptions import TerminationSignal

    if isinstance(error, KeyboardInterrupt):
        return "SIGINT (Ctrl-C)"
    if isinstance(error, TerminationSignal):
        number = getattr(error, "signal", signal.SIGTERM)
    elif isinstance(error, SystemExit) and error.code in (
        128 + signal.SIGTERM,
        128 + signal.SIGHUP,
    ):
        number = error.code - 128
    else:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _output_cut(error: BaseException) -> bool:
    """Whether `error` is the SystemExit rich raises when the pipe its console writes to is
    broken: a worker killed takes the runs it started with it so (their output is piped to it),
    recorded as a bare "SystemExit: 1"."""
    if not isinstance(error, SystemExit):
        return False
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_name == "on_broken_pipe":
            return True
        frame = frame.tb_next
    return False


CANCEL_CHECK_TIMEOUT_S = 3.0


def cancelled_from_prefect(error: BaseException) -> bool:
    """Whether `error` is how a cancellation from Prefect (the UI, `prefect flow-run cancel`)
    ended this flow run: its worker or serve process sends SIGTERM, which Prefect raises as
    TerminationSignal, with the run's state set to Cancelling first. A SIGTERM from anyone
    else (a shutdown, `kill`) leaves the run a failure. Such runs were recorded `failed`, a
    deliberate stop mixed into the history's failures."""
    from prefect.exceptions import TerminationSignal

    if not isinstance(error, TerminationSignal):
        return False
    flow_run_id = flow_run.get_id()
    return bool(flow_run_id) and flow_run_is_cancelled(flow_run_id)


def flow_run_is_cancelled(flow_run_id: str, timeout_s: float = CANCEL_CHECK_TIMEOUT_S) -> bool:
    """Whether Prefect's server has the flow run Cancelling or Cancelled (False where it
    cannot be asked within `timeout_s`, once: a SIGTERM comes with a deadline, and the
    client's own 60 s and five retries would let the SIGKILL after it land before the run is
    recorded)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import (
        PREFECT_API_REQUEST_TIMEOUT,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    quick = {PREFECT_CLIENT_MAX_RETRIES: 0, PREFECT_API_REQUEST_TIMEOUT: timeout_s}
    try:
        with temporary_settings(quick), get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except Exception:  # the server gone too: the run is recorded failed, as before
        logger.debug("could not read the state of flow run %s", flow_run_id, exc_info=True)
        return False
    return state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED)


@contextmanager
def failing_in(run: RunContext, stage: str) -> Iterator[None]:
    """Work outside a stage's task that belongs to `stage`: an error it raises is named as that
    stage's (as `run_stage` names its task's)."""
    try:
        yield
    except BaseException as error:
        run.failures.append((error, stage))
        raise


def build_corpus(run: RunContext, settings: PipelineConfig, retraining: bool = False) -> Descriptor:
    """Ingest and clean: the corpus version for this config and these sources. `retraining`:
    for a retrain, whose split must stay the hash split (no advice of another)."""
    workspace = run.workspace
    with failing_in(run, "ingest"):  # reading the sources for its key is ingest's work
        key = ingest_key(settings.ingest)
    raw = run_stage(
        run,
        ingest_task,
        key,
        ingest_store(workspace),
        config=settings.ingest,
        runtime=settings.runtime,
    )
    corpus = run_stage(
        run,
        clean_task,
        clean_key(raw, settings.clean, settings.split),
        corpus_store(workspace),
        raw=raw,
        config=settings.clean,
        split=settings.split,
        runtime=settings.runtime,
    )
    run.corpus = corpus
    warn_of_long_texts_removed(corpus.stats, settings)
    with failing_in(run, "clean"):  # what cleaning kept
        require_kept_documents(corpus, settings.split, trains_models=bool(settings.model_runs()),
                               ordered=not retraining)  # fmt: skip
    return corpus


# The fewest UTF-8 bytes a word takes in running text, with its space (English averages 6).
FEWEST_BYTES_A_WORD = 2.5


def warn_of_long_texts_removed(stats: dict, settings: PipelineConfig) -> None:
    """Documents removed as too long (`too_many_words`), said with what to change where plain
    text is cut into pieces the rule removes too: at 8 MB, a novel's pieces (or a whole novel,
    uncut) were removed, and with them every word of a one-file corpus but for a count in the
    corpus statistics."""
    removed = stats.get("removed", {}).get("too_many_words", 0)
    if not removed:
        return
    max_mb, max_words = settings.ingest.max_document_mb, settings.clean.quality.max_words
    fitting_mb = max(max_words * FEWEST_BYTES_A_WORD / 1e6, 0.001)  # the least it may be
    if not max_mb:
        advice = (f"; plain text is never cut (ingest.max_document_mb = 0): set it to "
                  f"{fitting_mb:g} to cut long texts into documents the rule keeps")  # fmt: skip
    elif max_mb > fitting_mb:
        advice = (f"; ingest.max_document_mb = {max_mb:g} cuts plain text into pieces of up to "
                  f"about {max_mb * 1e6 / 6:,.0f} English words: set it to {fitting_mb:g} to "
                  "keep them")  # fmt: skip
    else:
        advice = ""
    logger.warning("clean: %s removed as longer than clean.quality.max_words (%s words)%s",
                   f"{removed:,} document" + ("s" if removed != 1 else ""), f"{max_words:,}",
                   advice)  # fmt: skip


SPLIT_BY = {
    "hash": "by a hash of each document, so a handful can all land in one split",
    "random": "at random by position, so a handful can all land in one split",
}


ORDERED_ADVICE = 'split.method = "ordered" holds out the end of the text stream, as nanoGPT does'


def _drawn_whole(stats: dict, split: SplitConfig, ordered: bool = True) -> str:
    """Advice where documents are pieces of long texts, each text drawn to a split whole: a
    handful of books, or one, leaves a split with none. `ordered`: whether the ordered split
    may be advised (retrain allows only the hash split)."""
    pieces, texts = stats.get("pieces", 0), stats.get("texts_cut", 0)
    if not pieces or split.unit != "text":
        return ""
    return (f"; {pieces:,} of the documents are pieces of {texts:,} long "
            f"text{'s' if texts != 1 else ''}, each text drawn to one split whole (split.unit = "
            "\"text\"): split.unit = \"piece\" draws each piece on its own"
            + (f", and {ORDERED_ADVICE}" if ordered else ""))  # fmt: skip


# Kept documents below which a hash or random split is advised against: with fewer, a split of
# 5% holds none more often than not.
FEW_DOCUMENTS = 20


def _few_documents(stats: dict, split: SplitConfig, ordered: bool = True) -> str:
    """Advice where a handful of documents were kept (most often one text file, which is one
    document up to `ingest.max_document_mb`): no val or test fraction puts one document in two
    splits, so "add documents, or lower split.val" could not be followed."""
    kept = stats.get("kept", 0)
    if split.method == "ordered" or kept >= FEW_DOCUMENTS or stats.get("pieces", 0):
        return ""  # `_drawn_whole` advises on pieces of long texts
    held = f"{kept} document{'s' if kept != 1 else ''}"
    return (f"; with {held} (a plain text file is one document, unless longer than "
            "ingest.max_document_mb), " + (f"{ORDERED_ADVICE}, and " if ordered else "")
            + "one_doc_per_line = true on a source reads each line as a document")  # fmt: skip


def require_kept_documents(
    corpus: Descriptor, split: SplitConfig, trains_models: bool, ordered: bool = True
) -> None:
    """Stop after cleaning, saying what it removed, when it kept nothing, or how the split
    went, when it kept nothing for training (or, for models, nothing to score them on): the
    tokenizer's "the training split is empty", or training's "the val split has 0 tokens"
    stages later, would blame those stages for what the filters or the split did. `ordered`:
    whether the ordered split may be advised (not to a retrain, which refuses it)."""
    stats = corpus.stats
    kept, splits = stats.get("kept", 1), stats.get("split_documents")
    counts = ", ".join(f"{name} {count:,}" for name, count in (splits or {}).items())
    held = f"{kept:,} document" + ("" if kept == 1 else "s")
    if kept and splits is not None and not splits.get("train", 0):
        raise InputError(
            f"cleaning kept {held}, but none is in the training split ({counts}): "
            f"the split is {SPLIT_BY.get(split.method, split.method)}; add documents, or "
            f"lower split.val and split.test{_drawn_whole(stats, split, ordered)}"
            f"{_few_documents(stats, split, ordered)}"
        )
    # Under "ordered" the cut is made in the token stream, after encoding.
    empty_val = splits is not None and not splits.get("val", 0) and split.method != "ordered"
    if kept and trains_models and empty_val:
        raise InputError(
            f"cleaning kept {held}, but none is in the val split ({counts}), which "
            "the models are scored and stopped on: "
            + (f"the split is {SPLIT_BY[split.method]}; add documents, or raise split.val"
               f"{_drawn_whole(stats, split, ordered)}{_few_documents(stats, split, ordered)}"
               if split.val > 0
               else "split.val is 0; set it above 0")
        )  # fmt: skip
    if kept:
        _warn_of_emptied_sources(stats)
        return
    counts = {flag: count for flag, count in stats.get("removed", {}).items() if count}
    removed = ", ".join(f"{flag} {count:,}" for flag, count in counts.items()) or "nothing"
    too_long = ("a text over clean.quality.max_words is removed whole: cut long texts smaller "
                "(ingest.max_document_mb) or raise clean.quality.max_words")  # fmt: skip
    loosen = ("loosen [clean] (for example clean.quality.min_words; text written without spaces "
              "between words, as Chinese, Japanese or Thai is, reads as a few long words: set "
              "clean.quality.enabled = false) or add longer texts")  # fmt: skip
    if set(counts) == {"too_many_words"}:  # "add longer texts" said the opposite
        advice = too_long
    else:
        advice = loosen + (f"; {too_long}" if "too_many_words" in counts else "")
    raise InputError(
        f"cleaning kept none of the {stats.get('documents', 0):,} documents (removed by: "
        f"{removed}); {advice}"
    )


# The word rules that text written without spaces between words fails (a clause reads as one
# long word), and the settings that loosen them.
WORD_RULES = {"too_few_words": "min_words", "bad_mean_word_length": "max_mean_word_length",
              "too_few_alpha_words": "min_alpha_word_fraction"}  # fmt: skip
EMPTIED_SOURCES_NAMED = 5


def _warn_of_emptied_sources(stats: dict) -> None:
    """Warn of sources of several documents cleaning kept none of (and the run goes on): a
    file of Chinese text among English ones lost every document to the word rules, and the run
    said nothing but "291 of 340 documents kept". A one-document file removed (too short, a
    copy of another) is the filters' everyday work, and a folder of them would fill the line."""
    sources = stats.get("sources") or {}
    emptied = [(counts["documents"], name) for name, counts in sources.items()
               if counts.get("documents", 0) > 1 and not counts.get("kept")]  # fmt: skip
    emptied.sort(key=lambda source: (-source[0], source[1]))  # the largest first
    if not emptied:
        return
    named = ", ".join(f"{name} ({count:,})" for count, name in emptied[:EMPTIED_SOURCES_NAMED])
    more = len(emptied) - EMPTIED_SOURCES_NAMED
    removed = stats.get("removed") or {}
    loosen = [f"clean.quality.{key}" for flag, key in WORD_RULES.items() if removed.get(flag)]
    if sum(removed.get(flag, 0) for flag in WORD_RULES) < emptied[-1][0]:
        loosen = []  # too few to have emptied even the smallest (copies deduplicated, say)
    advice = (f"; text written without spaces between words (Chinese, Japanese, Thai) reads as "
              f"a few long words: loosen {', '.join(loosen)} for it" if loosen else "")  # fmt: skip
    logger.warning(
        "cleaning kept none of the documents of %d of %d sources: %s%s (`lmforge corpus stats` "
        "says what removed them)%s", len(emptied), len(sources), named,
        f" and {more:,} more" if more > 0 else "", advice,
    )  # fmt: skip


def build_tokenizer(
    run: RunContext,
    settings: PipelineConfig,
    corpus: Descriptor,
    stage_name: str | None = None,
    runs: list[ModelRun] | None = None,
    adopt: bool = True,
) -> Descriptor:
    """The run's tokenizer: trained on the corpus, or, for a run whose models (`runs`, default
    the config's) continue one (`train.init_from`), the one that model was trained with.
    `adopt=False` trains the configured one whatever (a lost tokenizer rebuilt)."""
    continued = (continued_tokenizer(run.workspace, run.registry, runs or settings.model_runs())
                 if adopt else None)  # fmt: skip
    if continued is not None:
        folder, digest = continued
        logger.info("tokenizer: the one train.init_from's checkpoint was trained with (%s, in "
                    "%s); the [tokenizer] settings are not used", digest[:12], folder)  # fmt: skip
        run.tokenizer = adopt_tokenizer(run, folder, digest, corpus, settings.split, stage_name)
        _warn_of_unused_tokenizer_settings(settings, run.tokenizer)
    else:
        run.tokenizer = run_stage(
            run,
            tokenizer_task,
            tokenizer_key(corpus, settings.tokenizer, settings.split),
            tokenizer_store(run.workspace),
            stage_name=stage_name,
            corpus=corpus,
            config=settings.tokenizer,
            split=settings.split,
        )
    if stage_name is None and settings.eval.samples and settings.model_runs():
        # A prompt the tokenizer cannot encode, said now rather than after the training.
        from lm.tokenizer import load_tokenizer

        check_prompts(load_tokenizer(run.workspace.resolve(run.tokenizer.path)), settings.eval)
    return run.tokenizer


def adopt_tokenizer(
    run: RunContext, folder: Path, digest: str, corpus: Descriptor, split: SplitConfig,
    stage_name: str | None = None,
) -> Descriptor:  # fmt: skip
    """The tokenizer of digest `digest` in `folder` (a trained model's) as a tokenizer output,
    measured on `corpus`."""
    return run_stage(
        run,
        adopt_tokenizer_task,
        adopted_key(corpus, str(folder), digest, split),
        tokenizer_store(run.workspace),
        stage_name=stage_name,
        corpus=corpus,
        source=str(folder),
        tokenizer_digest=digest,
        split=split,
    )


def _warn_of_unused_tokenizer_settings(settings: PipelineConfig, adopted: Descriptor) -> None:
    """Said when [tokenizer] asks for another kind or size than the tokenizer adopted: the run
    records its config as written, and readers of it (`lmforge size`, a retrain of this config)
    would take that tokenizer for this run's."""
    config, stats = settings.tokenizer, adopted.stats
    wanted = config.kind if config.kind == "char" else f"{config.kind}, {config.vocab_size} ids"
    has = stats.get("kind")
    if has != "char":
        has = f"{has}, {stats.get('vocab_size')} ids"
    if wanted != has:
        logger.warning("[tokenizer] asks for %s, but this run continues a model whose tokenizer "
                       "(%s) it keeps; [tokenizer] is recorded with the run as written",
                       wanted, has)  # fmt: skip


def continued_tokenizer(
    workspace: Workspace, registry: RunRegistry, runs: list[ModelRun]
) -> tuple[Path, str] | None:
    """(the folder holding it, its digest) of the tokenizer the checkpoints of `runs`'
    `train.init_from` were made with: a tokenizer output of that digest in this workspace, else
    the copy in the trained model folder around the checkpoint (for a checkpoint too old to
    record its tokenizer, that copy is the one). None for runs that continue nothing, or a
    checkpoint whose tokenizer is nowhere to be found (with a warning: the configured one is
    trained, and the trainer refuses the checkpoint unless it comes out the same). Continuing
    on new data needs this: the tokenizer trained again on it is another."""
    from lm.checkpoints import read_info
    from lm.tokenizer import TokenizerError, load_tokenizer
    from lm.train_config import TrainingError
    from tasks.train import init_checkpoint

    found: dict[str, Path] = {}  # tokenizer digest → a checkpoint made with it
    for model_run in runs:
        checkpoint = init_checkpoint(model_run.train, workspace, model_run.model)
        if checkpoint is None:
            continue
        digest = read_info(checkpoint).get("tokenizer_digest") or _tokenizer_beside(checkpoint)
        if digest:
            found.setdefault(digest, checkpoint)
    if len(found) > 1:
        raise TrainingError(
            "train.init_from: the models continue checkpoints made with different tokenizers ("
            + ", ".join(f"{d[:12]} in {c}" for d, c in found.items())
            + "); a run has one tokenizer: continue them in runs of their own"
        )
    if not found:
        return None
    [(digest, checkpoint)] = found.items()
    candidates = []
    try:
        if registry.path.exists():
            _, rows = registry.query("SELECT path FROM tokenizers WHERE digest = ?", [digest])
            candidates += [workspace.resolve(path) for (path,) in rows]
    except RegistryError as error:  # held open, or damaged: the store and the folder remain
        logger.warning("the registry could not be read (%s); looking for the tokenizer of "
                       "train.init_from's checkpoint in the workspace's files", error)  # fmt: skip
    # Outputs no registry row names (a run killed before it recorded them), newest first.
    candidates += _tokenizer_outputs_of(tokenizer_store(workspace), digest)
    # A checkpoint folder (best/, final/) sits in its trained model folder, beside tokenizer/.
    candidates += [checkpoint.parent / "tokenizer", checkpoint.parent.parent / "tokenizer"]
    for folder in candidates:
        try:
            if load_tokenizer(folder).digest == digest:
                return folder, digest
        except (OSError, TokenizerError):
            continue
    logger.warning(
        "train.init_from: %s was made with tokenizer %s, which is neither in this workspace nor "
        "in a tokenizer/ folder beside the checkpoint: training the configured one, which "
        "continues it only if it comes out the same", checkpoint, digest[:12],
    )  # fmt: skip
    return None


def _tokenizer_beside(checkpoint: Path) -> str | None:
    """The digest of the tokenizer in the model folder around `checkpoint`, for a checkpoint
    that records none (lmforge before November 2026): the configured tokenizer, trained again
    on other data, gave 3,921 of 4,000 ids other pieces, and the weights continued on them in
    silence. None, with a warning, where there is no such copy."""
    from lm.tokenizer import TokenizerError, load_tokenizer

    try:  # only the model folder's own: a `tokenizer/` further up may be any model's
        return load_tokenizer(checkpoint.parent / "tokenizer").digest
    except (OSError, TokenizerError):
        pass
    logger.warning(
        "train.init_from: %s records no tokenizer (an lmforge before November 2026 made it) and "
        "has no tokenizer/ folder beside it: training the configured one, which continues these "
        "weights rightly only if it is the tokenizer they were trained with", checkpoint,
    )  # fmt: skip
    return None


def _tokenizer_outputs_of(store: ArtifactStore, digest: str) -> list[Path]:
    """The complete tokenizer outputs in `store` whose descriptor gives `digest`."""
    outputs = []
    for descriptor_file in store.base.glob(f"*/{DESCRIPTOR_FILE}"):
        if STAGING_INFIX in descriptor_file.parent.name:  # a build, or a leftover being removed
            continue
        try:
            if json.loads(descriptor_file.read_text()).get("digest") != digest:
                continue
        except (OSError, ValueError, AttributeError):
            continue
        if store.is_complete(descriptor_file.parent.name):
            outputs.append(descriptor_file.parent)
    return sorted(outputs, key=lambda folder: folder.stat().st_mtime, reverse=True)


def encode_corpus(
    run: RunContext,
    settings: PipelineConfig,
    corpus: Descriptor,
    tokenizer: Descriptor,
    stage_name: str | None = None,
) -> Descriptor:
    return run_stage(
        run,
        encode_task,
        encode_key(corpus, tokenizer, settings.split),
        shards_store(run.workspace),
        stage_name=stage_name,
        corpus=corpus,
        tokenizer=tokenizer,
        split=settings.split,
        runtime=settings.runtime,
        threads=settings.tokenizer.threads,
    )


def train_word2vec(
    run: RunContext,
    settings: PipelineConfig,
    corpus: Descriptor,
    tokenizer: Descriptor,
    shards: Descriptor,
) -> Descriptor | None:
    if not settings.word2vec.enabled:
        return None
    # Under the ordered split the corpus's train split is all of it: the train shard is the
    # train text (see tasks/word2vec.py).
    ordered_shards = shards if settings.split.method == "ordered" else None
    vectors = run_stage(
        run,
        word2vec_task,
        word2vec_key(corpus, tokenizer, settings.word2vec, ordered_shards),
        word2vec_store(run.workspace),
        corpus=corpus,
        tokenizer=tokenizer,
        config=settings.word2vec,
        ordered_shards=ordered_shards,
    )
    run.metrics.log_many(
        {
            f"word2vec/{name}": value
            for name, value in vectors.stats.items()
            if isinstance(value, int | float)
        }
    )
    return vectors


def log_data_metrics(
    run: RunContext, corpus: Descriptor, tokenizer: Descriptor, shards: Descriptor | None
) -> None:
    """What data the run saw (`lmforge runs compare` tabulates these); `shards` of the whole
    corpus, None where the run encoded none (a retrain with nothing to train)."""
    splits = shards.stats["splits"] if shards is not None else {}
    run.metrics.log_many(
        {
            "corpus/documents": corpus.stats["documents"],
            "corpus/kept": corpus.stats["kept"],
            "corpus/kept_bytes": corpus.stats["kept_bytes"],
            # None (left out) where a tokenizer's stats lack one: `unknown_rate` is measured
            # since December 2026, and a retrain's champion brings the stats it was built with.
            "tokenizer/bytes_per_token": tokenizer.stats.get("bytes_per_token"),
            "tokenizer/vocab_used_fraction": tokenizer.stats.get("vocab_used_fraction"),
            "tokenizer/byte_fallback_rate": tokenizer.stats.get("byte_fallback_rate"),
            "tokenizer/unknown_rate": tokenizer.stats.get("unknown_rate"),
            **{f"tokens/{s}": v["tokens"] for s, v in splits.items()},
        }
    )


def log_stage_seconds(run: RunContext) -> None:
    """Each stage's seconds as a metric (`stage/<name>/seconds`), once every stage has run."""
    run.metrics.log_many({f"stage/{s.stage}/seconds": s.seconds for s in run.stages})


def record_success(
    run: RunContext,
    corpus: Descriptor,
    tokenizer: Descriptor,
    models: list[ModelRecord],
    failed_with: str | None = None,
    promotion: PromotionRecord | None = None,
) -> Recorded:
    """Record the run with everything it produced: the corpus, the tokenizer, the models.
    With `failed_with`, the run is failed though it produced them (an ablation some of whose
    variants failed), the error naming what did not finish. With `promotion`, a retrain's
    decision is recorded with the run, in the same transaction. Not `in_registry`: the registry
    could not be written (held open too long, or damaged), and the run's outcome waits in its
    folder for the next run to record."""
    # An adopted tokenizer (`train.init_from`) was not trained on this corpus: recorded with
    # none, so nothing rebuilds it from this one.
    tokenizer_corpus = None if tokenizer.stats.get("adopted") else corpus.digest
    with _beating_until_recorded(run):
        return record_task(
            run.run_id,
            "failed" if failed_with else "completed",
            run.stages,
            [DatasetRecord(corpus.digest, corpus.key, corpus.path, corpus.stats)],
            corpus.digest,
            str(run.metrics.path),
            error=failed_with,
            tokenizers=[
                TokenizerRecord(tokenizer.digest, tokenizer_corpus, tokenizer.path, tokenizer.stats)
            ],
            models=models,
            promotion=promotion,
        )


@contextmanager
def _beating_until_recorded(run: RunContext) -> Iterator[None]:
    """The run's heartbeat goes on while it is recorded (the registry may be held open for a
    while, and a kill then is still a crash), and stops once that is done, or has failed."""
    try:
        yield
    finally:
        if run.heartbeat is not None:
            run.heartbeat.stop()


@contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C back while a stopped run is recorded (about a second): Ctrl-C pressed
    twice interrupted DuckDB's write ("RuntimeError: Query interrupted", under a wall of
    traceback) and left the run `running` until the next run. The run ends with its own
    error once recorded; SIGTERM and SIGKILL still end it at once. A registry another process
    holds keeps the record waiting (up to $LMFORGE_REGISTRY_WAIT_S, 120 s): one more Ctrl-C
    then stops waiting (it swallowed every press until then)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    pressed: list[int] = []

    def wait(number: int, _frame) -> None:
        if pressed:  # asked twice: the record is waiting on the registry, or hung
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        logger.warning("recording the stopped run before exiting (a second or so; Ctrl-C "
                       "again leaves it to the next run, which records it as crashed)")  # fmt: skip
        pressed.append(number)

    previous = signal.signal(signal.SIGINT, wait)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def publish_or_warn(what: str, publish: Callable[..., Any], *arguments: Any) -> None:
    """Publish a view of a run already recorded (its Prefect artifacts). A failure here, say
    the Prefect server gone, is a warning: the run did everything it set out to, and is
    recorded as completed; it must not be recorded again as failed."""
    gone = prefect_server_gone()
    if gone is not None:
        logger.warning("%s was not published: the Prefect server does not answer (%s); the "
                       "run is recorded, and Prefect's record of it will stay out of date", what,
                       gone)  # fmt: skip
        return
    try:
        publish(*arguments)
    except Exception as error:
        logger.warning("%s was not published (%s: %s); the run is recorded", what,
                       type(error).__name__, error)  # fmt: skip


SERVER_GONE_AFTER_S = 5.0  # how long a server refuses connections before it is taken as gone


def prefect_server_gone() -> str | None:
    """Why the run's Prefect server does not answer (killed, or out of memory, mid-run), or
    None when it does. Once it is gone, Prefect's client stops retrying for the rest of the
    process: it retried each request with backoff for a minute or more (the run card, then the
    flow run's final state: three and a half minutes after a run was recorded completed)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.context import SettingsContext

    context = SettingsContext.get()
    if context is None:
        return None
    client_settings = context.settings.client  # `max_retries` is read at each request
    retries, client_settings.max_retries = client_settings.max_retries, 0
    try:  # asked without the client's retries: having connected before, it retried a minute
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + SERVER_GONE_AFTER_S
            # Refused for a few seconds, not once: a shared server restarting (or a moment's
            # lost route to it) refused one request, and the run's end was then never told.
            while isinstance(failure := client.api_healthcheck(), httpx.ConnectError):
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
    except Exception:  # no client to ask with: publishing says what fails, as before
        return None
    finally:
        client_settings.max_retries = retries
    # Refused: nothing listens. A server too busy to answer in time is not gone.
    if not isinstance(failure, httpx.ConnectError):
        return None
    client_settings.max_retries = 0  # for the rest of the process, in every thread
    return f"{type(failure).__name__}: {failure}"


@flow(name="lm-pipeline", persist_result=False)
def lm_pipeline(config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Run the pipeline for a preset name or TOML path, with optional `key.path=value`
    overrides, and return a summary of the run."""
    overrides = list(overrides or [])
    with refusals_recorded(config, overrides, "run"):
        config_path = str(resolve_preset(config))
        settings = load_config(config_path, overrides)
        refuse_what_cannot_fit(settings, settings.model_runs(), config_path)
    run = open_run(settings, config_path, overrides)
    models: list[ModelRecord] = []  # those trained so far are recorded even if a later fails
    try:
        corpus = build_corpus(run, settings)
        tokenizer = build_tokenizer(run, settings, corpus)
        shards = encode_corpus(run, settings, corpus, tokenizer)
        # Before training: a run that fails or is killed there keeps what data it saw.
        log_data_metrics(run, corpus, tokenizer, shards)
        vectors = train_word2vec(run, settings, corpus, tokenizer, shards)
        ladder = bool(settings.models)
        for model_run in settings.model_runs():
            models.append(train_model(run, model_run, shards, tokenizer, corpus,
                                      settings.eval, ladder, vectors))  # fmt: skip
        log_stage_seconds(run)
        recorded = record_success(run, corpus, tokenizer, models).in_registry
    except BaseException as error:
        record_failure(run, error, models)
        raise
    evaluations = {m.label: m.stats["evaluation_path"] for m in models}
    publish_or_warn("the run card", publish_run_card, run.workspace, run.run_id, settings,
                    corpus, tokenizer, models, evaluations)  # fmt: skip
    return {
        "run_id": run.run_id,
        "recorded": recorded,
        "stages": [asdict(stage) for stage in run.stages],
        "corpus": {"digest": corpus.digest, "path": corpus.path, **corpus.stats},
        "tokenizer": {"digest": tokenizer.digest, "path": tokenizer.path, **tokenizer.stats},
        "shards": {"path": shards.path, **shards.stats},
        "models": [{"label": m.label, "kind": m.kind, "path": m.path, **m.stats} for m in models],
    }
