"""The `retrain` flow: keep the champion model current as its sources grow.

Scheduled (nightly by default, see prefect.yaml), it re-reads the configured sources; ingest and
clean are cached, so a new corpus version appears only when documents were added. Then:

- no champion yet: train the configured model from scratch and promote it;
- the tokenizer and model settings are the champion's: with no new documents since its
  corpus, nothing to learn, nothing trained; else continue training the champion from its
  checkpoint on the new train documents only (same tokenizer, so token ids still mean the same);
- otherwise (a changed tokenizer or model, new documents or not): train from scratch on the
  whole corpus, and compare.

The candidate and the champion are both scored on the current corpus's held-out split, which a
hash of `doc_id` fixes, so the champion's number is remeasured on the same text rather than
taken from its own run; bits per byte make the two comparable even across tokenizers. The
candidate is promoted only if it beats the champion by `retrain.margin`; the decision and its
reason are recorded in the `promotions` table together with the run, in one transaction (so a
run that is recorded later, having found the registry held open, promotes then). Every stage
is cached, so a second trigger on the same data trains nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow

from flows.pipeline import (
    RunContext,
    adopt_tokenizer,
    build_corpus,
    build_tokenizer,
    encode_corpus,
    log_data_metrics,
    log_stage_seconds,
    open_run,
    record_failure,
    record_success,
    refusals_recorded,
    refuse_what_cannot_fit,
    run_stage,
    train_model,
    train_word2vec,
)
from lm.clock import utc_now
from lm.config import (
    ConfigError,
    IngestConfig,
    ModelRun,
    PipelineConfig,
    SplitConfig,
    TokenizerConfig,
    load_config,
    resolve_preset,
    retrain_problem,
)
from lm.evaluate import CheckpointError, EvaluationError
from lm.models.config import effective_train_config, uses_word2vec
from lm.models.registry import MODELS
from lm.text.normalize import NORMALIZATION_VERSION
from lm.tokenizer import TokenizerError
from lm.train_config import TrainConfig
from storage.artifacts import Descriptor
from storage.corpus import (
    DOCUMENTS_FILE,
    documents_renamed,
    held_out_edited,
    held_out_trained_on,
)
from storage.registry import ModelRecord, PromotionRecord
from storage.shards import ShardError
from tasks.clean import corpus_store, text_code_digest
from tasks.evaluate import evaluate_key, evaluate_store, evaluate_task
from tasks.increment import increment_key, increment_store, increment_task
from tasks.tokenizer import tokenizer_store
from tasks.train import train_store

logger = logging.getLogger("lm.retrain")  # under `lm`: its lines reach Prefect's run log


@dataclass
class Champion:
    """The model holding the alias, with the descriptors of what it was built from (None where
    that artifact is gone, which forces a retrain from scratch)."""

    row: dict
    trained: Descriptor | None
    tokenizer: Descriptor | None
    corpus: Descriptor | None
    tokenizer_config: dict
    model_config: dict
    split_config: dict | None = None  # its run's [split]; None for runs recorded without one
    # Its run's settings that make a document's text, and so its id (`text_settings`).
    text_settings: dict | None = None
    preset: str | None = None  # the name of its run's config
    # The corpus its tokenizer was trained on: a continued champion's is an earlier champion's
    # corpus, not its own. None where it is gone or was not recorded.
    tokenizer_corpus: Descriptor | None = None


@dataclass
class Decision:
    mode: str  # "first", "up-to-date", "continue", "scratch"
    reason: str
    promoted: bool = False
    candidate_val_bpb: float | None = None
    champion_val_bpb: float | None = None
    champion_unscored: str | None = None  # why the champion could not be scored, if it could not


def _descriptor(store, path: str | None) -> Descriptor | None:
    return store.load_descriptor(Path(path).name) if path else None


def load_champion(run: RunContext, alias: str) -> Champion | None:
    row = run.registry.champion(alias) if run.registry.path.exists() else None
    if row is None:
        return None
    workspace, registry = run.workspace, run.registry
    _, tokenizers = registry.query(
        "SELECT path, corpus_digest FROM tokenizers WHERE digest = ?", [row["tokenizer_digest"]]
    )
    _, datasets = registry.query(
        "SELECT path FROM datasets WHERE digest = ?", [row["corpus_digest"]]
    )
    tokenizer_corpus_digest = tokenizers[0][1] if tokenizers else None
    _, tokenizer_datasets = registry.query(
        "SELECT path FROM datasets WHERE digest = ?", [tokenizer_corpus_digest]
    )
    _, configs = registry.query("SELECT config, preset FROM runs WHERE run_id = ?", [row["run_id"]])
    run_config = json.loads(configs[0][0]) if configs and configs[0][0] else {}
    preset = configs[0][1] if configs else None
    return Champion(
        row=row,
        trained=_descriptor(train_store(workspace), row["path"]),
        tokenizer=_descriptor(tokenizer_store(workspace), tokenizers[0][0] if tokenizers else None),
        corpus=_descriptor(corpus_store(workspace), datasets[0][0] if datasets else None),
        tokenizer_config=run_config.get("tokenizer", {}),
        model_config=json.loads(row["config"]).get("model", {}) if row["config"] else {},
        split_config=run_config.get("split"),
        text_settings=text_settings(run_config),
        preset=preset,
        tokenizer_corpus=_descriptor(
            corpus_store(workspace), tokenizer_datasets[0][0] if tokenizer_datasets else None
        ),
    )


def _same_settings(champion: Champion, settings: PipelineConfig, model_run: ModelRun) -> bool:
    """Whether the candidate can continue the champion: the same tokenizer (its thread count,
    which changes no piece, aside) and the same model."""
    try:
        tokenizer = TokenizerConfig.model_validate(champion.tokenizer_config)
    except ValueError:  # settings an earlier lmforge accepted and this one refuses: changed
        return False
    same_tokenizer = tokenizer.output_digest() == settings.tokenizer.output_digest()
    # Read as this lmforge reads a model's config: a field added since the champion was
    # recorded (a GPT's `drop_path`) is its default, not a change (h128: every champion of an
    # upgraded workspace was "settings changed" and retrained from scratch).
    kind = MODELS.get(champion.model_config.get("kind"))
    try:
        recorded = kind[1].model_validate(champion.model_config) if kind else None
    except ValueError:  # settings an earlier lmforge accepted and this one refuses: changed
        return False
    now = model_run.model.model_dump(mode="json")
    same_model = recorded is not None and recorded.model_dump(mode="json") == now
    return same_tokenizer and same_model


def _split_change(champion: Champion, settings: PipelineConfig) -> str | None:
    """How [split] differs from the champion's run, in words; None if it does not (or that run
    recorded none). Other fractions put other documents in val and test: some the champion
    trained on would be scored as held out. (`shuffle` orders the shards, not the splits.)"""
    if champion.split_config is None:
        return None
    try:
        before = SplitConfig.model_validate(champion.split_config).model_dump()
    except ValueError:  # recorded under another version's schema: nothing to compare
        return None
    now = settings.split.model_dump(exclude={"shuffle"})
    # A setting that run's lmforge did not have is not compared: read as its default, a
    # champion of the split before `unit` ("piece" then) was "split.unit text → piece" to a
    # config that asked for that very split. What the new setting moved shows in the
    # documents (`_held_out_trained_on`).
    changed = [f"split.{key} {before[key]} → {now[key]}" for key in now
               if key in champion.split_config and before[key] != now[key]]  # fmt: skip
    return ", ".join(changed) or None


def _champion_score(
    run: RunContext, settings: PipelineConfig, champion: Champion, corpus: Descriptor,
    shards: Descriptor | None = None,
) -> tuple[float | None, str | None]:  # fmt: skip
    """The champion's val bits per byte on the current held-out split, encoded with its own
    tokenizer; or None and why it cannot be scored there (a character its tokenizer refuses,
    an eval setting its model does not fit). Raised, the run failed, and every rerun with it:
    the candidate came from the cache, the champion failed again."""
    try:
        shards = shards or encode_corpus(run, settings, corpus, champion.tokenizer,
                                         "encode/champion")  # fmt: skip
        scored = run_stage(
            run,
            evaluate_task,
            evaluate_key(champion.trained, shards, champion.tokenizer, settings.eval),
            evaluate_store(run.workspace),
            stage_name="evaluate/champion",
            trained=champion.trained,
            shards=shards,
            tokenizer=champion.tokenizer,
            config=settings.eval,
        )
    except (TokenizerError, EvaluationError, CheckpointError, ShardError) as error:
        logger.warning("retrain: the champion cannot be scored on this corpus: %s", error)
        return None, f"{type(error).__name__}: {error}"
    return scored.stats["val_bpb"], None


@flow(name="retrain", persist_result=False)
def retrain(config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Retrain the champion on new data from the configured sources, and promote the result
    only if it is better on the held-out split."""
    overrides = list(overrides or [])
    with refusals_recorded(config, overrides, "retrain"):
        config_path = str(resolve_preset(config))
        settings = load_config(config_path, overrides)
        problem = retrain_problem(settings)
        if problem:
            raise ConfigError(f"{config_path}: {problem}")
        refuse_what_cannot_fit(settings, settings.model_runs(), config_path)
    model_run = settings.model_runs()[-1]  # the top of a ladder is the model kept current
    policy = settings.retrain
    run = open_run(settings, config_path, overrides, command="retrain")
    models: list[ModelRecord] = []
    try:
        champion = load_champion(run, policy.alias)
        if champion is not None and champion.preset not in (None, settings.name):
            # One alias per workspace: two presets retrained under it take it from each other.
            logger.warning(
                "retrain: the '%s' alias is held by a model of preset '%s', and this config is "
                "'%s': it is scored on this corpus and may be replaced; set retrain.alias to "
                "keep a champion per preset", policy.alias, champion.preset, settings.name,
            )  # fmt: skip
        changed = _split_change(champion, settings) if champion is not None else None
        if changed:
            raise ConfigError(
                f"{config_path}: [split] differs from the run of the champion "
                f"({champion.row['run_id']}): {changed}; other fractions move documents it "
                "trained on into val and test, where both models are scored. Keep the "
                "champion's [split], or retrain under another retrain.alias"
            )
        if champion is not None:
            _rebuild_lost_tokenizer(run, settings, champion)
        corpus = build_corpus(run, settings, retraining=True)
        # Scoring the champion needs only its model and tokenizer; continuing it needs its
        # corpus too (to tell the new documents from those it has seen).
        scorable = champion is not None and None not in (champion.trained, champion.tokenizer)
        tokenizer = champion.tokenizer if scorable else None
        whole_shards = None  # the whole corpus's, where this run encoded it
        if (
            scorable
            and champion.row["corpus_digest"] == corpus.digest
            and _same_settings(champion, settings, model_run)
        ):  # changed settings train a candidate on the same corpus: the tokenizer or model
            # a user changed in the retrain config is tried that night, not once data grows
            decision = Decision("up-to-date", "no new documents since the champion's corpus")
        else:
            data, train, full_shards = corpus, model_run.train, None
            continuable = (
                scorable
                and champion.corpus is not None
                and _same_settings(champion, settings, model_run)
            )
            renamed = continuable and not _same_documents(run, champion, corpus, settings)
            trained_on = _held_out_trained_on(run, champion, corpus)
            # Its tokenizer is kept when it is continued: new text it refuses (a character
            # outside a char vocabulary) needs one trained on this corpus, from scratch.
            keep = continuable and not renamed and not trained_on
            champion_shards, refusal = (_champion_shards(run, settings, champion, corpus)
                                        if keep else (None, None))  # fmt: skip
            refused = refusal is not None
            if keep and not refused:
                data = run_stage(
                    run,
                    increment_task,
                    increment_key(corpus, champion.corpus),
                    increment_store(run.workspace),
                    corpus=corpus,
                    previous=champion.corpus,
                )
                new_documents = data.stats["new_train_documents"]
                if model_run.model.kind == "bigram-count":  # no weights: counted again, on all
                    data = corpus
                    decision = Decision(
                        "scratch", f"a count model is counted again, on the whole corpus "
                        f"({_documents(new_documents)})",
                    )  # fmt: skip
                else:
                    decision = Decision(
                        "continue", f"continued the champion on {_documents(new_documents)}"
                    )
                    steps = policy.steps or train.max_steps
                    train = train.model_copy(
                        update={
                            "init_from": str(run.workspace.resolve(champion.row["path"])),
                            "max_steps": steps,
                            "warmup_steps": min(train.warmup_steps, steps - 1),
                            "learning_rate": policy.learning_rate or train.learning_rate,
                        }
                    )
            else:
                tokenizer = build_tokenizer(run, settings, corpus)
                new_documents = corpus.stats["split_documents"].get("train", 0)
                # The config's own init_from starts it from those weights: not from scratch.
                start = (f"trained from train.init_from {train.init_from}" if train.init_from
                         else "trained from scratch")  # fmt: skip
                why = _why_scratch(champion, renamed, trained_on, refused)
                decision = Decision("scratch", f"{start} ({why})")
            if new_documents < policy.min_new_documents:
                decision = Decision(
                    "up-to-date",
                    f"{_documents(new_documents)}, fewer than "
                    f"retrain.min_new_documents = {policy.min_new_documents}",
                )
            else:
                shards = encode_corpus(run, settings, data, tokenizer)
                if decision.mode == "continue":
                    train = _capped_passes(train, model_run, shards, policy.max_passes, decision)
                if data is not corpus:  # scored, as the champion is, on the whole corpus
                    full_shards = encode_corpus(run, settings, corpus, tokenizer,
                                                "encode/whole-corpus")  # fmt: skip
                whole_shards = full_shards or shards
                # Before training: a retrain that fails or is killed there keeps what data it
                # saw (logged at its end, it kept none).
                log_data_metrics(run, corpus, tokenizer, whole_shards)
                # A model fed by word2vec (w2v, or a GPT's first embeddings) needs the vectors
                # of this tokenizer's pieces, on the whole corpus; continued, its checkpoint's
                # weights replace what they set.
                vectors = (train_word2vec(run, settings, corpus, tokenizer, full_shards or shards)
                           if uses_word2vec(model_run.model) else None)  # fmt: skip
                candidate_run = ModelRun(model_run.label, model_run.model, train)
                candidate = train_model(
                    run, candidate_run, shards, tokenizer, corpus, settings.eval,
                    vectors=vectors, eval_shards=full_shards,
                )  # fmt: skip
                models.append(candidate)
                decision.candidate_val_bpb = candidate.stats["val_bpb"]
                if scorable and trained_on:  # a score on text it trained on is no score
                    decision.champion_unscored = f"{_held_out(trained_on)} it trained on"
                elif refused:  # its encoding failed above: not tried, and failed, again
                    decision.champion_unscored = refusal
                elif scorable:
                    decision.champion_val_bpb, decision.champion_unscored = _champion_score(
                        run, settings, champion, corpus, champion_shards
                    )
                _decide(decision, policy.margin, champion)
        run.metrics.log_many(
            {
                "retrain/promoted": float(decision.promoted),
                "retrain/candidate_val_bpb": decision.candidate_val_bpb,  # None: not trained
                "retrain/champion_val_bpb": decision.champion_val_bpb,  # None: not scored
            }
        )
        promotion = PromotionRecord(
            model_run.label if models else None,
            policy.alias,
            decision.promoted,
            decision.candidate_val_bpb,
            decision.champion_val_bpb,
            f"{decision.mode}: {decision.reason}",
            decided_at=utc_now(),
            against=f"{champion.row['run_id']}/{champion.row['label']}" if champion else None,
        )
        if whole_shards is None:  # nothing encoded, so not logged above
            tokenizer = tokenizer or build_tokenizer(run, settings, corpus)
            log_data_metrics(run, corpus, tokenizer, None)
        log_stage_seconds(run)
        recorded = record_success(run, corpus, tokenizer, models, promotion=promotion)
        if recorded.promotion is not None and not recorded.promotion.promoted:
            # Another retrain took the alias before this run was recorded (see
            # `RunRegistry.finish_run`): the summary, and the command's verdict, say so too.
            decision.promoted = False
            decision.reason = recorded.promotion.reason.removeprefix(f"{decision.mode}: ")
    except BaseException as error:
        record_failure(run, error, models)
        raise
    return {
        "run_id": run.run_id,
        "recorded": recorded.in_registry,
        "decision": asdict(decision),
        "stages": [asdict(stage) for stage in run.stages],
        "models": [{"label": m.label, "kind": m.kind, "path": m.path, **m.stats} for m in models],
    }


def _rebuild_lost_tokenizer(run: RunContext, settings: PipelineConfig, champion: Champion) -> None:
    """Give a champion whose tokenizer files are gone its tokenizer back, from the corpus and
    settings it was trained on: its stage is deterministic, so the same pieces come back, which
    the recorded digest confirms. The champion can then be scored, and continued, rather than
    beaten unscored. That corpus is the tokenizer's own (`tokenizers.corpus_digest`): a
    continued champion's model corpus gave other pieces, and the champion was replaced
    unscored by a model trained from scratch. First, though, the copy in the champion's own
    model folder is taken, if it has that digest: the only way back for a tokenizer adopted
    from a model trained elsewhere (`train.init_from`), whose corpus this workspace never had."""
    if champion.tokenizer is not None or champion.trained is None:
        return
    if _take_the_model_folder_s_tokenizer(run, settings, champion):
        return
    corpus = champion.tokenizer_corpus
    if corpus is None:
        return
    try:
        config = TokenizerConfig.model_validate(champion.tokenizer_config)
    except ValueError:  # recorded under another version's schema: not rebuildable here
        return
    try:
        rebuilt = build_tokenizer(run, settings.model_copy(update={"tokenizer": config}),
                                  corpus, stage_name="tokenizer/champion",
                                  adopt=False)  # fmt: skip
    except Exception as error:  # the champion is then beaten unscored, as before the rebuild
        logger.warning("retrain: the champion's tokenizer is gone and could not be rebuilt: %s",
                       error)  # fmt: skip
        return
    finally:
        run.tokenizer = None  # the run's own tokenizer is decided later
    if rebuilt.digest == champion.row["tokenizer_digest"]:
        logger.info("retrain: the champion's tokenizer was gone and is rebuilt (%s)",
                    rebuilt.digest[:12])  # fmt: skip
        champion.tokenizer = rebuilt
    else:
        logger.warning(
            "retrain: the champion's tokenizer is gone, and training it again gave other pieces "
            "(digest %s, not %s): the champion cannot be scored", rebuilt.digest[:12],
            champion.row["tokenizer_digest"][:12],
        )  # fmt: skip


def _take_the_model_folder_s_tokenizer(
    run: RunContext, settings: PipelineConfig, champion: Champion
) -> bool:
    """Whether the champion's tokenizer came back from the `tokenizer/` of its model folder
    (measured on a corpus of its: the tokenizer's own, or the champion's)."""
    from lm.tokenizer import load_tokenizer

    folder = run.workspace.resolve(champion.row["path"]) / "tokenizer"
    digest = champion.row["tokenizer_digest"]
    corpus = champion.tokenizer_corpus or champion.corpus
    if corpus is None or not folder.is_dir():  # a model folder of an older lmforge has none
        return False
    try:
        if load_tokenizer(folder).digest != digest:
            return False
        champion.tokenizer = adopt_tokenizer(run, folder, digest, corpus, settings.split,
                                             "tokenizer/champion")  # fmt: skip
    except Exception as error:  # the rebuild from its corpus is tried next, as before
        logger.warning("retrain: the tokenizer in the champion's model folder did not serve (%s)",
                       f"{type(error).__name__}: {error}")  # fmt: skip
        return False
    logger.info("retrain: the champion's tokenizer was gone; its model folder's copy serves (%s)",
                digest[:12])  # fmt: skip
    return True


# The [clean] settings that make a document's text (the others decide what is kept).
TEXT_CLEAN_KEYS = ("normalization", "strip_wiki_markup", "collapse_whitespace")


def text_settings(config: dict) -> dict:
    """What of a run's config (as JSON) makes its documents' text, and so their ids: how each
    source is read (its path aside: adding one changes no other's text) and the [clean]
    settings that change text. An earlier run's and this one's are compared as this lmforge
    reads them: a source setting added since (`delimiter`) is its default in both."""
    ingest = dict(config.get("ingest") or {})
    with contextlib.suppress(ValueError):  # one this lmforge refuses is compared as it is
        ingest = IngestConfig.model_validate(ingest).model_dump(mode="json")
    sources = [{k: v for k, v in source.items() if k != "path"} if isinstance(source, dict)
               else {} for source in ingest.pop("sources", [])]  # fmt: skip
    clean = config.get("clean") or {}
    return {"ingest": ingest, "sources": sources,
            "clean": {key: clean.get(key) for key in TEXT_CLEAN_KEYS}}  # fmt: skip


def _same_documents(
    run: RunContext, champion: Champion, corpus: Descriptor, settings: PipelineConfig
) -> bool:
    """Whether the champion's documents keep their `doc_id`s in the current corpus. Under
    other text code (an lmforge upgrade that reads, strips markup or normalizes otherwise) a
    document can have another id, and would count as new and move between splits, where the
    champion would be scored on text it trained on: so where its corpus was made by other
    such code, none of its documents still read from their source may have lost their ids
    (one whose source is gone was deleted: no cause to start over). The normalization version
    alone missed reader and markup changes (62 "new" documents after one, with none added)."""
    assert champion.corpus is not None
    made = champion.corpus.stats
    now = text_settings(settings.model_dump(mode="json"))
    if (made.get("normalization_version", 1) == NORMALIZATION_VERSION
            and made.get("text_code_digest") == text_code_digest()
            and made.get("unicode_version") == unicodedata.unidata_version
            and champion.text_settings == now):  # fmt: skip
        return True
    resolve = run.workspace.resolve
    renamed, of_files_gone, kept = documents_renamed(
        resolve(champion.corpus.path) / DOCUMENTS_FILE, resolve(corpus.path) / DOCUMENTS_FILE
    )
    if renamed:
        logger.warning("retrain: %d document(s) of the champion's corpus, made by other lmforge "
                       "code or text settings, have no match in files that are still read (a "
                       "text read otherwise, or a line or record edited or removed)",
                       renamed)  # fmt: skip
        return False
    if of_files_gone * 2 > kept:  # a moved folder: its documents cannot be matched at all
        logger.warning("retrain: %d of the champion's %d documents are from files no longer "
                       "read (moved?), under other lmforge code or text settings: their ids "
                       "cannot be checked", of_files_gone, kept)  # fmt: skip
        return False
    return True


def _capped_passes(
    train: TrainConfig,
    model_run: ModelRun,
    shards: Descriptor,
    max_passes: float,
    decision: Decision,
) -> TrainConfig:
    """`train` with no more steps than read the new train tokens `max_passes` times (0: as it
    is), the reason saying so when it cuts them."""
    split = shards.stats["splits"]["train"]
    tokens = split["tokens"]
    settings = effective_train_config(model_run.model, train)
    per_row = settings.block_size
    if settings.samples == "documents" and split.get("documents"):
        # A row is one document (cropped to the block): names of 7 tokens in rows of 16 were
        # read 4.4 times, not 10. The mean, not rounded up: 7.1 read as 8 left 1 pass in 9 out.
        per_row = min(per_row, tokens / split["documents"])
    steps = max(1, math.ceil(max_passes * tokens / (settings.global_batch * per_row)))
    if not max_passes or steps >= train.max_steps:
        return train
    decision.reason += (f" ({steps:,} steps, not {train.max_steps:,}: retrain.max_passes = "
                        f"{max_passes:g} over its {tokens:,} tokens)")  # fmt: skip
    # Warmup cut as the steps are: 20 of 150 kept whole left 11 of 12 steps below the peak.
    warmup = min(round(train.warmup_steps * steps / train.max_steps), steps - 1)
    return train.model_copy(update={"max_steps": steps, "warmup_steps": warmup})


def _champion_shards(
    run: RunContext, settings: PipelineConfig, champion: Champion, corpus: Descriptor
) -> tuple[Descriptor | None, str | None]:
    """`corpus` in the champion's tokenizer, which scores it (and is the whole-corpus encode
    of a continued candidate: served from the cache then); or None and why, where that
    tokenizer refuses some of its text (said in the log)."""
    try:
        return encode_corpus(run, settings, corpus, champion.tokenizer, "encode/champion"), None
    except TokenizerError as error:
        logger.warning("retrain: the champion's tokenizer cannot encode this corpus, so it is "
                       "not continued: %s", error)  # fmt: skip
        return None, f"{type(error).__name__}: {error}"


def _held_out_trained_on(run: RunContext, champion: Champion | None, corpus: Descriptor) -> int:
    """How many held-out documents of `corpus` the champion trained on (0 where its corpus is
    gone: nothing to tell by). A text cut into pieces is drawn to a split by its first piece
    (`split.unit = "text"`), so an edit there can move pieces it trained on into val or test:
    continued, or scored there, it would be judged on text it has seen."""
    if champion is None or champion.corpus is None:
        return 0
    resolve = run.workspace.resolve
    count = held_out_trained_on(resolve(champion.corpus.path) / DOCUMENTS_FILE,
                                resolve(corpus.path) / DOCUMENTS_FILE)  # fmt: skip
    if count:
        logger.warning("retrain: %s the champion trained on (a text cut into pieces whose first "
                       "piece changed is drawn to a split again): a candidate is trained from "
                       "scratch, and the champion is not scored", _held_out(count))  # fmt: skip
        return count
    # An edited file has a new id, so it may be drawn into val or test: not text the champion
    # trained on, but close to it. Said, not acted on (a typo fixed is no reason to start over).
    edited = held_out_edited(resolve(champion.corpus.path) / DOCUMENTS_FILE,
                             resolve(corpus.path) / DOCUMENTS_FILE)  # fmt: skip
    if edited:
        files, are = ("file", "is") if edited == 1 else ("files", "are")
        logger.warning(
            "retrain: %d held-out %s of this corpus %s edited since the champion trained on "
            "their earlier text, which flatters its score there (and a candidate's continued "
            "from it); after large edits, start a new champion under another retrain.alias",
            edited, files, are,
        )  # fmt: skip
    return count


def _held_out(count: int) -> str:
    documents, are = ("document", "is") if count == 1 else ("documents", "are")
    return f"{count} held-out {documents} of this corpus {are} text"


def _why_scratch(
    champion: Champion | None, renamed: bool = False, trained_on: int = 0,
    refused: bool = False,
) -> str:  # fmt: skip
    if champion is None:
        return "no champion yet"
    if refused:
        return "the champion's tokenizer cannot encode this corpus"  # the reason's end says why
    if renamed:
        return ("the champion's corpus was made by other lmforge code or text settings "
                "(reading, cutting long texts, markup removal, normalization), and some of its "
                "documents may have "
                "other ids now: they cannot be told from new ones")  # fmt: skip
    parts = {"trained": "model", "tokenizer": "tokenizer", "corpus": "corpus"}
    gone = [name for attribute, name in parts.items() if getattr(champion, attribute) is None]
    if gone:
        return f"the champion's {' and '.join(gone)} {'is' if len(gone) == 1 else 'are'} gone"
    if trained_on:
        return f"{_held_out(trained_on)} the champion trained on"
    return "settings changed"


def _documents(count: int) -> str:
    return f"{count} new train document{'' if count == 1 else 's'}"


def _decide(decision: Decision, margin: float, holder: Champion | None) -> None:
    candidate, champion = decision.candidate_val_bpb, decision.champion_val_bpb
    if champion is None:
        decision.promoted = True
        if holder is None:
            decision.reason += "; promoted: no champion to beat"
        elif decision.champion_unscored:
            decision.reason += (
                f"; promoted: the champion could not be scored on this corpus "
                f"({decision.champion_unscored})"
            )
        else:
            decision.reason += (
                "; promoted: the champion could not be scored (its model or tokenizer is gone)"
            )
    elif candidate < champion - margin:
        decision.promoted = True
        sign = "-" if margin >= 0 else "+"  # "- -0.5" read as a typo
        decision.reason += (
            f"; promoted: val bpb {candidate:.4f} < {champion:.4f} {sign} {abs(margin)}"
        )
    else:
        decision.reason += f"; kept the champion: val bpb {candidate:.4f} vs {champion:.4f}"
        decision.reason += f" (margin {margin})"
