"""The `retrain` flow on a tiny config: first model promoted, nothing retrained without new
documents, continued training on new documents, promotion only when bits per byte improve."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from lm.checkpoints import INFO_FILE
from storage.registry import RunRegistry
from tests.conftest import cli_in_process
from tests.helpers import prose, warnings_said_by, write_config

TINY = """
[split]
val = 0.25
test = 0.0

[model]
kind = "gpt"
block_size = 16
n_layer = 1
n_head = 2
n_embd = 16

[train]
max_steps = 10
micro_batch = 4
global_batch = 4
eval_every = 5
eval_batches = 2
warmup_steps = 2

[eval]
batches = 4
batch_size = 4
samples = 0
"""
NOW = datetime.now()


def failing(message: str):
    """A stand-in for a step that fails with `message`, whatever it is given."""

    def fail(*args, **kwargs):
        raise RuntimeError(message)

    return fail


def _trigger(config, *overrides):
    from flows.retrain import retrain

    return retrain(config=str(config), overrides=list(overrides))


def _stages(summary) -> dict[str, bool]:
    return {stage["stage"]: stage["cached"] for stage in summary["stages"]}


def _stage_stats(summary, name: str) -> dict:
    return next(stage["stats"] for stage in summary["stages"] if stage["stage"] == name)


def twelve_documents(tmp_path):
    """A source folder of twelve documents, and the TINY config that reads it."""
    folder = tmp_path / "texts"
    folder.mkdir()
    for index in range(12):
        (folder / f"doc{index:02d}.txt").write_text(prose(index, 120))
    return folder, write_config(tmp_path / "tiny.toml", [{"path": str(folder)}], TINY)


def test_retrain_trains_once_per_new_data_and_promotes_only_on_improvement(workspace, tmp_path):
    folder, config = twelve_documents(tmp_path)
    registry = RunRegistry(workspace.registry_path)

    first = _trigger(config)
    assert first["decision"]["mode"] == "scratch" and first["decision"]["promoted"]
    assert registry.champion()["run_id"] == first["run_id"]

    unchanged = _trigger(config)
    assert unchanged["decision"]["mode"] == "up-to-date" and not unchanged["decision"]["promoted"]
    assert not any(stage.startswith("train") for stage in _stages(unchanged))

    for index in range(100, 110):  # ten new documents
        (folder / f"new{index}.txt").write_text(prose(index, 120))
    # And a file the champion trained on, edited so that its new id draws it into val: close to
    # text the champion has seen, said (a new id, so not "trained on").
    trained = next(i for i in range(12) if _first_piece_split(prose(i, 120), 1.0) == "train")
    edited = next(text for k in range(100) if _first_piece_split(
        text := f"{prose(trained, 120)} Edit {k}.", 1.0) == "val")  # fmt: skip
    (folder / f"doc{trained:02d}.txt").write_text(edited)
    slower = "retrain.learning_rate=0.0005"  # a continuation's own peak learning rate
    with warnings_said_by("lm.retrain") as said:
        strict = _trigger(config, "retrain.margin=10.0", slower)  # no candidate can gain 10 bits
    assert any("1 held-out file of this corpus is edited since the champion trained on" in w
               for w in said), said  # fmt: skip
    decision = strict["decision"]
    assert decision["mode"] == "continue" and "new train documents" in decision["reason"]
    assert _stages(strict)["train"] is False  # it trained
    assert not decision["promoted"] and decision["champion_val_bpb"] is not None
    candidate = workspace.resolve(strict["models"][0]["path"])
    settings = json.loads((candidate / "train.json").read_text())
    champion_folder = workspace.resolve(registry.find_model(first["run_id"])["path"])
    assert settings["init_from"] == str(champion_folder)  # continued from the champion
    assert settings["learning_rate"] == 0.0005
    assert registry.champion()["run_id"] == first["run_id"]
    # Scored as the champion is, with the baseline fitted on the whole corpus's train split
    # (it was fitted on the new documents alone), so the two runs' baselines agree.
    champion_scores = _stage_stats(strict, "evaluate/champion")
    scores = strict["models"][0]
    assert scores["baseline_val_bpb"] == pytest.approx(champion_scores["baseline_val_bpb"])
    # Each row counts the tokens behind its published weights (`best/`): the champion's are
    # the ones the candidate continued, and the candidate's add its own up to its `best/`.
    # (Where both are best at their last step, likely in so short a run, a last-step count
    # passes too: tests/test_evaluate.py has a best before the last step.)
    champion = first["models"][0]
    continued = json.loads((champion_folder / "best" / INFO_FILE).read_text())["tokens_trained"]
    assert champion["tokens_trained"] == continued and 0 < continued <= champion["tokens_seen"]
    published = json.loads((candidate / "best" / INFO_FILE).read_text())["tokens_trained"]
    assert scores["tokens_trained"] == published
    assert continued < published <= continued + scores["tokens_seen"]
    assert registry.find_model(strict["run_id"])["tokens_trained"] == scores["tokens_trained"]

    again = _trigger(config, "retrain.margin=10.0", slower)
    assert _stages(again)["train"] is True  # the same data: served from cache, not retrained
    assert again["decision"]["candidate_val_bpb"] == pytest.approx(decision["candidate_val_bpb"])

    lenient = _trigger(config, "retrain.margin=-10.0", slower)
    assert _stages(lenient)["train"] is True and lenient["decision"]["promoted"]
    assert registry.champion()["run_id"] == lenient["run_id"]
    # `generate champion`: the alias's model, without looking its run id up.
    greedy = ("--prompt", "The", "--temperature", "0", "--max-new-tokens", "12")
    by_alias = cli_in_process("generate", "champion", *greedy).stdout
    assert by_alias == cli_in_process("generate", lenient["run_id"], *greedy).stdout
    labelled = cli_in_process("generate", "champion", "--model", "gpt", *greedy, check=False)
    assert labelled.returncode == 1  # not a label silently ignored
    assert "--model gpt: champion names one model; leave --model out" in labelled.stderr
    _, decisions = registry.query("SELECT promoted, reason FROM promotions ORDER BY decided_at")
    assert [promoted for promoted, _ in decisions] == [True, False, False, False, True]
    assert "kept the champion" in decisions[2][1]
    # Two retrains side by side: the decisions, and every stage each ran (a continued run
    # encodes the new documents, the corpus to score on, and the corpus in the champion's
    # tokenizer: each its own row, named for what it is; the champion's was a plain `encode`).
    from tests.conftest import run_cli

    compared = run_cli("runs", "compare", strict["run_id"], lenient["run_id"]).stdout
    assert re.search(r"│ retrain/promoted\s+│ 0\s+│ 1\s+│", compared), compared
    candidate_bpb = f"{lenient['decision']['candidate_val_bpb']:.4f}"
    assert re.search(rf"│ retrain/candidate_val_bpb\s+│ [\d.]+\s+│ {candidate_bpb}\s+│", compared)
    encodes = [stage["stage"] for stage in strict["stages"] if stage["stage"].startswith("enc")]
    assert sorted(encodes) == ["encode", "encode/champion", "encode/whole-corpus"]
    assert re.search(r"│ encode/champion\s+│", compared) and "encode #2" not in compared
    # `runs show` gives the decision, its reason and the model it was compared with (the
    # registry's `promotions.against`): the reason was on the command's last line alone.
    shown = cli_in_process("runs", "show", strict["run_id"]).stdout
    scored = (f"{decision['candidate_val_bpb']:.4f} against the champion's "
              f"{decision['champion_val_bpb']:.4f}")  # fmt: skip
    assert re.search(
        rf"retrain: not promoted, the champion stays \(candidate val bpb {scored}; the champion "
        rf"was {first['run_id']}/\S+\): continue: .*kept the champion",
        shown,
    ), shown


def test_changed_model_settings_train_a_candidate_without_new_documents(workspace, tmp_path):
    """A wider model in the retrain config was never tried until documents were added ("no new
    documents since the champion's corpus"): it is trained from scratch on the same corpus and
    compared with the champion; the next trigger serves it from the cache."""
    _, config = twelve_documents(tmp_path)
    first = _trigger(config)
    wider = _trigger(config, "model.n_embd=24", "retrain.margin=10.0")
    decision = wider["decision"]
    assert decision["mode"] == "scratch" and "settings changed" in decision["reason"]
    assert decision["candidate_val_bpb"] is not None and decision["champion_val_bpb"] is not None
    assert not decision["promoted"] and _stages(wider)["train"] is False
    assert RunRegistry(workspace.registry_path).champion()["run_id"] == first["run_id"]
    again = _trigger(config, "model.n_embd=24", "retrain.margin=10.0")
    assert again["decision"]["mode"] == "scratch" and _stages(again)["train"] is True
    assert _trigger(config)["decision"]["mode"] == "up-to-date"  # the champion's settings


def test_a_retrain_records_the_data_it_saw_as_a_run_does(workspace, tmp_path):
    """`lmforge runs compare` lists corpus/kept, tokens/train and the tokenizer's bytes per token
    beside retrain/promoted ("what data a run saw, and what a retrain decided"): a retrain
    recorded none of them, so two nights' retrains could not be compared by their corpus."""
    folder, config = twelve_documents(tmp_path)
    (folder / "short.txt").write_text("Too short to keep.")  # read, and not kept
    first = _trigger(config)
    unchanged = _trigger(config)
    registry = RunRegistry(workspace.registry_path)

    def recorded(run_id: str) -> dict:
        _, rows = registry.query(
            "SELECT key, value FROM latest_metrics WHERE run_id = ? AND model IS NULL", [run_id]
        )
        return dict(rows)

    trained, up_to_date = recorded(first["run_id"]), recorded(unchanged["run_id"])
    assert trained["corpus/kept"] == up_to_date["corpus/kept"] == 12
    assert trained["tokens/train"] > 0 and trained["tokenizer/bytes_per_token"] > 0
    assert "tokens/train" not in up_to_date  # it encoded nothing
    assert up_to_date["retrain/promoted"] == 0


def test_a_retrain_that_fails_in_training_keeps_the_data_it_saw(workspace, tmp_path, monkeypatch):
    """Logged at its end, a retrain that failed or was killed while training had none."""
    import flows.retrain as retrain_flow

    _, config = twelve_documents(tmp_path)
    monkeypatch.setattr(retrain_flow, "train_model", failing("the machine went away"))
    with pytest.raises(RuntimeError, match="went away"):
        _trigger(config)
    registry = RunRegistry(workspace.registry_path)
    _, rows = registry.query(
        "SELECT r.status, m.key, m.value FROM runs r JOIN latest_metrics m USING (run_id) "
        "WHERE m.model IS NULL"
    )
    seen = {key: value for status, key, value in rows if status == "failed"}
    assert seen["corpus/kept"] == 12 and seen["tokens/train"] > 0, seen


@pytest.mark.parametrize("upgraded", ["normalization", "text code", "text settings"])
def test_a_corpus_made_by_other_text_code_is_continued_only_while_its_documents_keep_their_ids(
    workspace, tmp_path, monkeypatch, upgraded
):
    """A `doc_id` is the hash of the document's text: after an upgrade that normalizes, reads
    or strips markup otherwise (or a [clean] setting that changes text), some documents have
    new ids, would count as new and move between splits, where the champion is scored on text
    it trained on. A corpus whose ids all survive (most are untouched by such a change) is
    continued as before. Only the normalization version was compared: a markup fix upgraded in
    with it the same gave 62 "new" documents of 406, none added, 8 held-out ones trained on."""
    import flows.retrain as retrain_flow

    folder, config = twelve_documents(tmp_path)
    _trigger(config)
    normalization, text_code = retrain_flow.NORMALIZATION_VERSION, retrain_flow.text_code_digest
    if upgraded == "normalization":
        monkeypatch.setattr(retrain_flow, "NORMALIZATION_VERSION", 99)
    elif upgraded == "text code":
        monkeypatch.setattr(retrain_flow, "text_code_digest", lambda: "another lmforge's")
    # Under other text settings each time, each candidate promoted (a tolerance of 10 bits).
    nfkc, nfc = [], []
    if upgraded == "text settings":
        nfkc, nfc = (
            ["retrain.margin=-10", f"clean.normalization={form}"] for form in ("NFKC", "NFC")
        )
    for index in range(100, 104):
        (folder / f"new{index}.txt").write_text(prose(index, 120))
    (folder / "doc05.txt").unlink()  # deleted: gone with its file, no id taken by another
    added = _trigger(config, *nfkc)
    assert added["decision"]["mode"] == "continue", added["decision"]["reason"]
    (folder / "doc00.txt").write_text(prose(0, 120) + " Written again.")  # its id moves
    moved = _trigger(config, *nfc)
    assert moved["decision"]["mode"] == "scratch"
    assert "made by other lmforge code or text settings" in moved["decision"]["reason"]
    if upgraded != "normalization":
        return  # the rest does not depend on what changed: once is enough

    # The same text code and settings as the champion's: an edited document is a new one.
    monkeypatch.setattr(retrain_flow, "NORMALIZATION_VERSION", normalization)
    monkeypatch.setattr(retrain_flow, "text_code_digest", text_code)
    (folder / "doc01.txt").write_text(prose(1, 120) + " Written again.")
    for index in range(200, 204):  # new train documents, whatever split the edited one gets
        (folder / f"new{index}.txt").write_text(prose(index, 120))
    again = _trigger(config, *nfc)["decision"]
    assert again["mode"] == "continue", again["reason"]


def _first_piece_split(text: str, max_mb: float) -> str:
    """The split the first piece of `text`, cut at `max_mb`, is drawn to under TINY's split."""
    import hashlib

    from lm.config import CleanConfig, SplitConfig
    from lm.text.clean import split_of
    from lm.text.long_documents import cut_long_documents
    from lm.text.normalize import normalize_texts
    from lm.text.readers import RawDocument

    first = next(iter(cut_long_documents([RawDocument("b", "b", text, "plain")], max_mb)))
    clean = CleanConfig()
    [normalized] = normalize_texts([first.text], clean.normalization, clean.collapse_whitespace)
    return split_of(hashlib.sha256(normalized.encode()).hexdigest(), SplitConfig(val=0.25))


def test_a_book_drawn_again_into_val_is_no_text_to_continue_or_score_the_champion_on(
    workspace, tmp_path
):
    """A book cut into pieces is drawn to a split with its first piece: an edit there moved the
    pieces the champion trained on into val. Continued, it would be scored on text it has seen,
    and so would the champion: a candidate trains from scratch, and the champion is not
    scored (the candidate is promoted, as over a champion that cannot be scored)."""
    folder, config = twelve_documents(tmp_path)
    cut = ["ingest.max_document_mb=0.002"]
    paragraphs = ["\n\n".join(prose(100 * n + k, 50) for k in range(40)) for n in range(50)]
    book = next(text for text in paragraphs if _first_piece_split(text, 0.002) == "train")
    preface = next(f"Preface {n}.\n\n" for n in range(200)
                   if _first_piece_split(f"Preface {n}.\n\n{book}", 0.002) == "val")  # fmt: skip
    (folder / "book.txt").write_text(book)
    first = _trigger(config, *cut)
    assert first["decision"]["promoted"]
    (folder / "book.txt").write_text(preface + book)
    again = _trigger(config, *cut)
    decision = again["decision"]
    assert decision["mode"] == "scratch" and decision["promoted"], decision
    held_out = re.search(r"(\d+) held-out documents of this corpus are text the champion "
                         r"trained on\)", decision["reason"])  # fmt: skip
    assert held_out and int(held_out[1]) >= 2, decision["reason"]
    assert decision["champion_val_bpb"] is None
    assert "promoted: the champion could not be scored on this corpus" in decision["reason"]


def test_documents_renamed_counts_by_file_so_a_relabelled_record_is_still_counted(tmp_path):
    """A reader that labels records where it read files whole (`x.json` became `x.json#0`)
    changes every `source` of the file: matched by source, no renamed document was seen, and
    a moved folder is said apart from renamed documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.corpus import documents_renamed

    def corpus(name, rows):
        path = tmp_path / name
        columns = list(zip(*rows, strict=True))
        pq.write_table(pa.table({"doc_id": columns[0], "source": columns[1],
                                 "source_file": columns[2], "keep": columns[3]}), path)  # fmt: skip
        return path

    before = corpus("before.parquet", [("a", "/d/x.json", "/d/x.json", True),
                                       ("b", "/d/y.txt", "/d/y.txt", True),
                                       ("c", "/d/z.txt", "/d/z.txt", False)])  # fmt: skip
    relabelled = corpus("relabelled.parquet", [("a2", "/d/x.json#0", "/d/x.json", True),
                                               ("b", "/d/y.txt", "/d/y.txt", True)])  # fmt: skip
    moved = corpus("moved.parquet", [("a2", "/e/x.json#0", "/e/x.json", True),
                                     ("b2", "/e/y.txt", "/e/y.txt", True)])  # fmt: skip
    assert documents_renamed(before, relabelled) == (1, 0, 2)
    assert documents_renamed(before, moved) == (0, 2, 2)


def test_the_text_code_digest_covers_every_module_but_those_that_decide_what_is_kept():
    """A new reader module left out of TEXT_CODE would change documents' ids unseen."""
    from tasks.clean import TEXT_CODE
    from tests.conftest import REPO

    deciding = {"lm/text/quality.py", "lm/text/near_duplicates.py", "lm/text/word_hashes.py",
                "lm/text/__init__.py"}  # fmt: skip
    modules = {str(path.relative_to(REPO)) for path in (REPO / "lm" / "text").glob("*.py")}
    assert set(TEXT_CODE) == modules - deciding


def test_a_promotion_overtaken_by_another_retrain_is_reported_as_not_promoted(
    workspace, tmp_path, monkeypatch
):
    """Another retrain takes the champion between this run's decision and its record: the
    registry records this one as not promoted, and the run's summary (what `lmforge retrain`
    prints) and its `retrain/promoted` metric say the same, not "promoted"."""
    import flows.retrain as retrain_flow
    from flows.pipeline import RUN_METRICS_FILE
    from storage.registry import ModelRecord, PromotionRecord

    folder, config = twelve_documents(tmp_path)
    first = _trigger(config)
    registry = RunRegistry(workspace.registry_path)
    recorded = retrain_flow.record_success

    def another_retrain_promotes_first(run, *arguments, **keywords):
        registry.start_run({"run_id": "r-other", "status": "running", "started_at": NOW})
        registry.finish_run(
            "r-other", "completed", NOW, [], models=[ModelRecord("gpt", "gpt", "d", "p", "t",
                                                                 "c", {}, {"val_bpb": 1.0})],
            promotion=PromotionRecord(None, "champion", True, 1.0, 9.0, "beat it", NOW,
                                      against=f"{first['run_id']}/gpt"),
        )  # fmt: skip
        return recorded(run, *arguments, **keywords)

    monkeypatch.setattr(retrain_flow, "record_success", another_retrain_promotes_first)
    for index in range(100, 104):
        (folder / f"new{index}.txt").write_text(prose(index, 120))
    late = _trigger(config, "retrain.margin=-10.0")  # would beat any champion
    decision = late["decision"]
    assert not decision["promoted"]
    assert f"not promoted after all: the champion changed from {first['run_id']}/gpt to " \
           "r-other/gpt" in decision["reason"]  # fmt: skip
    assert registry.champion()["run_id"] == "r-other"
    recorded_decision = (
        "SELECT p.promoted, m.value FROM promotions p JOIN metrics m USING (run_id) "
        "WHERE run_id = ? AND m.key = 'retrain/promoted'"
    )
    assert registry.query(recorded_decision, [late["run_id"]])[1] == [(False, 0.0)]
    # Recorded again without its decision (a failure after the record), the metrics are
    # reloaded from the run's file, which logged 1.0: the registry still says 0.
    metrics = workspace.runs / late["run_id"] / RUN_METRICS_FILE
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [m["value"] for m in logged if m["key"] == "retrain/promoted"] == [1.0]
    registry.finish_run(late["run_id"], "failed", NOW, [], metrics_file=metrics, error="later")
    assert registry.query(recorded_decision, [late["run_id"]])[1] == [(False, 0.0)]


def test_the_retrain_command_prints_its_model_and_decision_and_exits_0(workspace, tmp_path):
    from tests.conftest import run_cli

    _, config = twelve_documents(tmp_path)
    result = run_cli("retrain", str(config))  # failed on the models table: no 'kind' in it
    said = " ".join(result.stdout.split())
    assert "│ gpt │ gpt │" in said
    assert "scratch: promoted" in said
    _, commands = RunRegistry(workspace.registry_path).query("SELECT command FROM runs")
    assert commands == [(f"lmforge retrain {config}",)]  # was: `lmforge run`, another flow


@pytest.mark.parametrize("method", ["random", "ordered"])
def test_retrain_refuses_a_split_that_moves_as_sources_grow(workspace, tmp_path, method):
    # `random` split by row: one file added first moved 6 of the champion's 13 train documents
    # into val and test; `ordered` cut val and test from the end of the stream, the new text the
    # candidate was continued on (promoted on 1.10 bpb against the champion's 4.33).
    from lm.config import ConfigError
    from tests.conftest import run_cli

    _, config = twelve_documents(tmp_path)
    with pytest.raises(ConfigError, match=rf'retrain needs split.method = "hash" .*"{method}"'):
        _trigger(config, f'split.method="{method}"')
    result = run_cli("retrain", str(config), "--set", f'split.method="{method}"', check=False)
    assert result.returncode == 1 and 'retrain needs split.method = "hash"' in result.stderr
    # The flow records its refusal (as a deployment run's); the command line refuses before
    # any flow starts, and adds nothing.
    _, rows = RunRegistry(workspace.registry_path).query("SELECT status, error FROM runs")
    assert [row[0] for row in rows] == ["failed"] and "before the run began" in rows[0][1]


def test_documents_the_champion_s_corpus_dropped_count_as_new_once_kept(workspace, tmp_path):
    folder, config = twelve_documents(tmp_path)
    for index in range(8):  # about 30 words: dropped by the first corpus's rules
        (folder / f"short{index}.txt").write_text(prose(200 + index, 25))
    assert _trigger(config, "clean.quality.min_words=40")["decision"]["mode"] == "scratch"
    looser = _trigger(config, "clean.quality.min_words=10")
    decision = looser["decision"]
    assert decision["mode"] == "continue", decision["reason"]  # was: up-to-date, 0 new
    assert re.search(r"\b(1 new train document|[2-8] new train documents)\b", decision["reason"])


def test_a_champion_whose_corpus_is_gone_is_still_scored_not_beaten_by_default(workspace, tmp_path):
    import shutil

    folder, config = twelve_documents(tmp_path)
    first = _trigger(config)
    registry = RunRegistry(workspace.registry_path)
    _, [(corpus_path,)] = registry.query("SELECT path FROM datasets")
    shutil.rmtree(workspace.resolve(corpus_path))  # cannot tell its documents from new ones
    for index in range(100, 104):
        (folder / f"new{index}.txt").write_text(prose(index, 120))

    later = _trigger(config, "retrain.margin=10.0")
    decision = later["decision"]
    assert decision["mode"] == "scratch", decision["reason"]
    assert "the champion's corpus is gone" in decision["reason"]
    # Was: not scored, and promoted with "no champion to beat".
    assert decision["champion_val_bpb"] is not None and not decision["promoted"]
    assert "kept the champion" in decision["reason"]
    assert registry.champion()["run_id"] == first["run_id"]


def test_a_champion_whose_tokenizer_is_gone_gets_it_back_and_is_scored(workspace, tmp_path):
    import shutil

    folder, config = twelve_documents(tmp_path)
    first = _trigger(config)
    registry = RunRegistry(workspace.registry_path)
    _, [(digest, tokenizer_path)] = registry.query("SELECT digest, path FROM tokenizers")
    shutil.rmtree(workspace.resolve(tokenizer_path))

    same_data = _trigger(config)
    # Was: trained from scratch, the champion unscored, and the candidate promoted for that.
    assert same_data["decision"]["mode"] == "up-to-date", same_data["decision"]["reason"]
    assert _stages(same_data)["tokenizer/champion"] is False  # back, not cached
    for index in range(100, 104):
        (folder / f"new{index}.txt").write_text(prose(index, 120))
    shutil.rmtree(workspace.artifacts / "tokenizer")
    later = _trigger(config, "retrain.margin=10.0")
    decision = later["decision"]
    assert decision["mode"] == "continue", decision["reason"]
    assert decision["champion_val_bpb"] is not None and not decision["promoted"]
    _, rows = registry.query("SELECT DISTINCT digest FROM tokenizers")
    assert rows == [(digest,)]  # the same pieces came back
    assert registry.champion()["run_id"] == first["run_id"]


def test_a_continued_champion_s_lost_tokenizer_comes_back_from_the_corpus_it_was_trained_on(
    workspace, tmp_path, monkeypatch
):
    """A continued champion keeps the tokenizer an earlier champion trained on an earlier
    corpus. Rebuilt from the champion's own (later) corpus, it came back with other pieces: the
    champion could not be scored, and a model trained from scratch replaced it, with no new
    document in sight."""
    import shutil

    folder, config = twelve_documents(tmp_path)
    bpe = 'tokenizer={kind="bpe", vocab_size=340}'
    _trigger(config, bpe)
    for index in range(6):  # other words: a tokenizer trained on them would have other pieces
        words = [w[::-1] for w in prose(200 + index, 120).split()]
        (folder / f"new{index}.txt").write_text(" ".join(words) + ".")
    continued = _trigger(config, bpe, "retrain.margin=-10.0")
    assert continued["decision"]["mode"] == "continue" and continued["decision"]["promoted"]
    registry = RunRegistry(workspace.registry_path)
    champion = registry.champion()
    _, [(tokenizer_path, tokenizer_corpus)] = registry.query(
        "SELECT path, corpus_digest FROM tokenizers WHERE digest = ?",
        [champion["tokenizer_digest"]],
    )
    assert tokenizer_corpus != champion["corpus_digest"]  # the earlier champion's corpus
    shutil.rmtree(workspace.resolve(tokenizer_path))
    # Not from the copy in its model folder (taken first; a model folder of an older lmforge
    # may have none): trained again on that corpus.
    monkeypatch.setattr("flows.retrain._take_the_model_folder_s_tokenizer", lambda *a: False)

    same_data = _trigger(config, bpe)
    assert same_data["decision"]["mode"] == "up-to-date", same_data["decision"]["reason"]
    assert _stages(same_data)["tokenizer/champion"] is False  # trained again
    assert registry.champion()["run_id"] == champion["run_id"]
    _, rows = registry.query("SELECT count(*) FROM tokenizers")
    assert rows == [(1,)]  # the same pieces came back


def test_a_champion_continued_from_a_model_trained_elsewhere_gets_its_tokenizer_back(
    workspace, tmp_path
):
    """Its tokenizer was adopted from the model it continued (`train.init_from`), one this
    workspace never trained: recorded as trained on the champion's corpus, it was rebuilt from
    that one, came back with other pieces, and the champion was replaced unscored. The copy
    in the champion's model folder now serves, and no corpus is recorded for it."""
    import shutil

    from flows.pipeline import lm_pipeline

    folder, config = twelve_documents(tmp_path)
    bpe = 'tokenizer={kind="bpe", vocab_size=340}'
    parent = lm_pipeline(config=str(config), overrides=[bpe])
    exported = tmp_path / "exported"
    shutil.copytree(workspace.resolve(parent["models"][-1]["path"]), exported)
    shutil.rmtree(workspace.artifacts)  # as if trained on another machine
    workspace.registry_path.unlink()
    for index in range(6):  # other words: a tokenizer trained on them has other pieces
        words = [w[::-1] for w in prose(300 + index, 120).split()]
        (folder / f"new{index}.txt").write_text(" ".join(words) + ".")
    start = f"train.init_from={json.dumps(str(exported))}"
    first = _trigger(config, bpe, start)
    assert first["decision"]["promoted"]  # not "from scratch": from the weights it names
    assert first["decision"]["reason"].startswith(f"trained from train.init_from {exported}")
    registry = RunRegistry(workspace.registry_path)
    _, [(digest, path, corpus)] = registry.query(
        "SELECT digest, path, corpus_digest FROM tokenizers"
    )
    assert digest == parent["tokenizer"]["digest"] and corpus is None
    shutil.rmtree(workspace.resolve(path))
    same_data = _trigger(config, bpe, start)
    assert same_data["decision"]["mode"] == "up-to-date", same_data["decision"]["reason"]
    assert _stages(same_data)["tokenizer/champion"] is False
    assert registry.champion()["run_id"] == first["run_id"]


def test_the_tokenizer_s_thread_count_does_not_stop_a_continue_and_a_new_split_is_refused(
    workspace, tmp_path
):
    from lm.config import ConfigError

    folder, config = twelve_documents(tmp_path)
    first = _trigger(config)
    for index in range(100, 104):
        (folder / f"new{index}.txt").write_text(prose(index, 120))
    # The tokenizer stage leaves `threads` out of its key: no piece changes with it. Retrain
    # compared it, and trained from scratch ("settings changed").
    later = _trigger(config, "tokenizer.threads=1", "retrain.margin=-10.0")
    assert later["decision"]["mode"] == "continue", later["decision"]["reason"]
    # Other fractions put some of the champion's train documents in val: it was accepted, and
    # both models scored partly on text the champion trained on.
    with pytest.raises(ConfigError, match=rf"\[split\] differs from the run of the champion "
                       rf"\({later['run_id']}\): split.val 0.25 → 0.4; "):  # fmt: skip
        _trigger(config, "split.val=0.4")
    assert RunRegistry(workspace.registry_path).champion()["run_id"] != first["run_id"]


def test_a_champion_its_tokenizer_cannot_score_on_new_text_is_beaten_not_a_failure_for_good(
    workspace, tmp_path
):
    """New documents bring a character the champion's tokenizer refuses: scoring it raised
    after the candidate trained, and every rerun did the same (the candidate from cache)."""
    folder, config = twelve_documents(tmp_path)
    strict = 'tokenizer.unknown_chars="error"'
    first = _trigger(config, strict)
    for index in range(100, 112):
        (folder / f"runes{index}.txt").write_text(prose(index, 120) + " ᚠᚡ ᚠ ᚡᚠ.")
    later = _trigger(config, strict, "model.n_embd=24")  # other settings: from scratch
    decision = later["decision"]
    assert decision["mode"] == "scratch" and decision["promoted"], decision["reason"]
    assert "the champion could not be scored on this corpus (TokenizerError: " in decision["reason"]
    assert RunRegistry(workspace.registry_path).champion()["run_id"] == later["run_id"]
    assert first["run_id"] != later["run_id"]


def test_new_text_the_champion_s_tokenizer_refuses_trains_a_candidate_from_scratch(
    workspace, tmp_path
):
    """The same settings as the champion's, and new documents with a character its char
    tokenizer refuses: continuing it (its tokenizer kept) failed every night on encoding the new
    documents. A tokenizer trained on the current corpus takes them, from scratch."""
    from lm.tokenizer import TokenizerError

    folder, config = twelve_documents(tmp_path)
    strict = 'tokenizer.unknown_chars="error"'
    first = _trigger(config, strict)
    for index in range(100, 112):
        (folder / f"runes{index}.txt").write_text(prose(index, 120) + " ᚠᚡ ᚠ ᚡᚠ.")
    try:
        later = _trigger(config, strict)  # the champion's settings: it would be continued
    except TokenizerError as error:
        pytest.fail(f"the retrain failed instead of training from scratch: {error}")
    decision = later["decision"]
    assert decision["mode"] == "scratch" and decision["promoted"], decision["reason"]
    assert "the champion's tokenizer cannot encode this corpus" in decision["reason"]
    assert "could not be scored on this corpus (TokenizerError: " in decision["reason"]
    journal = (workspace.runs / later["run_id"] / "stages.jsonl").read_text().splitlines()
    tried = [line for line in journal if '"encode/champion"' in line and '"started"' in line]
    assert len(tried) == 1, "the champion's refused encoding was tried twice"
    assert RunRegistry(workspace.registry_path).champion()["run_id"] == later["run_id"]
    assert first["run_id"] != later["run_id"]


def test_a_champion_whose_recorded_tokenizer_settings_are_now_refused_is_not_continued():
    """Settings an earlier lmforge accepted (a user symbol with a space, which never matched)
    failed every retrain with a validation error: they count as changed settings."""
    from types import SimpleNamespace

    from flows.retrain import _same_settings
    from lm.config import load_config

    settings = load_config("default")
    [model_run] = settings.model_runs()
    old = settings.tokenizer.model_dump(mode="json") | {"user_defined_symbols": ["New York"]}
    champion = SimpleNamespace(tokenizer_config=old,
                               model_config=model_run.model.model_dump(mode="json"))  # fmt: skip
    assert not _same_settings(champion, settings, model_run)
    champion.tokenizer_config = settings.tokenizer.model_dump(mode="json")
    assert _same_settings(champion, settings, model_run)


def test_a_champion_recorded_before_a_model_field_existed_is_continued():
    """A champion an earlier lmforge recorded lacks the fields added since (a GPT's
    `drop_path`): read with their defaults, the same model as the config's, not changed
    settings that retrain it from scratch every night (h128)."""
    from types import SimpleNamespace

    from flows.retrain import _same_settings
    from lm.config import load_config

    settings = load_config("default")
    [model_run] = settings.model_runs()
    recorded = model_run.model.model_dump(mode="json")
    del recorded["drop_path"]
    champion = SimpleNamespace(tokenizer_config=settings.tokenizer.model_dump(mode="json"),
                               model_config=recorded)  # fmt: skip
    assert _same_settings(champion, settings, model_run)
    champion.model_config = recorded | {"drop_path": 0.1}
    assert not _same_settings(champion, settings, model_run)
    champion.model_config = recorded | {"n_layer": "many"}  # refused now: changed
    assert not _same_settings(champion, settings, model_run)


def test_a_decision_reads_as_arithmetic_with_a_negative_margin_and_one_document():
    from flows.retrain import Decision, _decide, _documents

    decision = Decision("continue", f"continued the champion on {_documents(1)}", False, 3.47, 3.72)
    _decide(decision, -0.5, holder=None)
    assert decision.reason == ("continued the champion on 1 new train document; promoted: val bpb "
                               "3.4700 < 3.7200 + 0.5")  # fmt: skip


def test_a_count_model_is_counted_again_on_the_whole_corpus_not_continued(workspace, tmp_path):
    folder, config = twelve_documents(tmp_path)
    counted = 'model={kind="bigram-count"}'
    assert "no champion yet" in _trigger(config, counted)["decision"]["reason"]
    for index in range(100, 104):
        (folder / f"new{index}.txt").write_text(prose(index, 120))
    decision = _trigger(config, counted)["decision"]
    # Was: "continued" with init_from, which a count model ignored: counted on 4 documents.
    assert decision["mode"] == "scratch", decision["reason"]
    assert "a count model is counted again, on the whole corpus (4 new" in decision["reason"]
    (folder / "new200.txt").write_text(prose(200, 120))
    few = _trigger(config, counted, "retrain.min_new_documents=3")["decision"]
    assert few["mode"] == "up-to-date", few["reason"]  # new documents still count, for the rule


def test_a_model_fed_by_word2vec_is_retrained_with_vectors_of_its_pieces(workspace, tmp_path):
    """Retrain trained no word2vec: a w2v model failed, told to enable the word2vec it had."""
    folder, config = twelve_documents(tmp_path)
    w2v = ['model={kind="w2v", context=3, vector_size=16, hiddens=[16]}', 'word2vec.input="pieces"',
           "word2vec.enabled=true",
           "word2vec.vector_size=16", "word2vec.epochs=1", "word2vec.min_count=1"]  # fmt: skip
    first = _trigger(config, *w2v)
    assert first["decision"]["promoted"] and "word2vec" in _stages(first)
    for index in range(100, 104):
        (folder / f"new{index}.txt").write_text(prose(index, 120))
    later = _trigger(config, *w2v, "retrain.margin=-10.0")
    assert later["decision"]["mode"] == "continue", later["decision"]["reason"]
    assert later["decision"]["candidate_val_bpb"] > 0 and later["decision"]["promoted"]


def test_a_split_setting_the_champion_s_lmforge_did_not_have_is_no_change_of_split():
    """A champion recorded before `split.unit` (each piece drawn on its own, as "piece" does
    now) was refused to a config asking for "piece": its missing `unit` read as the default,
    "split.unit text → piece". A setting its run did write is still compared."""
    from types import SimpleNamespace

    from flows.retrain import _split_change
    from lm.config import SplitConfig

    before_unit = SimpleNamespace(
        split_config={"method": "hash", "val": 0.05, "test": 0.05, "shuffle": False}
    )
    assert _split_change(before_unit, SimpleNamespace(split=SplitConfig(unit="piece"))) is None
    assert _split_change(before_unit, SimpleNamespace(split=SplitConfig())) is None
    assert _split_change(before_unit, SimpleNamespace(split=SplitConfig(val=0.1))) == (
        "split.val 0.05 → 0.1"
    )
    recorded = SimpleNamespace(split_config=SplitConfig().model_dump(mode="json"))
    assert _split_change(recorded, SimpleNamespace(split=SplitConfig(unit="piece"))) == (
        "split.unit text → piece"
    )


def test_a_continuation_reads_the_new_tokens_at_most_max_passes_times():
    """One new 579-token document and 150 steps of 8 × 64 tokens: 133 passes over it, and the
    model forgot the rest. Ten passes take 12 steps; a large increment keeps its steps."""
    from flows.retrain import Decision, _capped_passes
    from lm.config import ModelRun
    from lm.models.config import GPTConfig
    from lm.train_config import TrainConfig
    from storage.artifacts import Descriptor

    train = TrainConfig(max_steps=150, warmup_steps=20, global_batch=8, micro_batch=8)
    model_run = ModelRun("gpt", GPTConfig(block_size=64), train)

    def capped(tokens: int, passes: float) -> tuple[TrainConfig, str]:
        shards = Descriptor("encode", "k", "p", "d", {"splits": {"train": {"tokens": tokens}}})
        decision = Decision("continue", "continued the champion on 1 new train document")
        return _capped_passes(train, model_run, shards, passes, decision), decision.reason

    few, reason = capped(579, 10)
    assert (few.max_steps, few.warmup_steps) == (12, 2)  # warmup cut as the steps: 20 × 12/150
    assert reason.endswith("(12 steps, not 150: retrain.max_passes = 10 over its 579 tokens)")
    assert capped(579, 0) == (train, "continued the champion on 1 new train document")
    assert capped(1_000_000, 10)[0] == train


def test_a_continuation_of_a_model_trained_on_documents_reads_each_new_one_max_passes_times():
    """`train.samples = "documents"` (the names preset): a row is one document, not a block of
    tokens. 300 new names of 7 tokens in rows of 16 took 11 steps of 128 rows, 4.7 passes."""
    from flows.retrain import Decision, _capped_passes
    from lm.config import ModelRun
    from lm.models.config import GPTConfig
    from lm.train_config import TrainConfig
    from storage.artifacts import Descriptor

    train = TrainConfig(max_steps=6000, warmup_steps=100, global_batch=128, micro_batch=128,
                        samples="documents")  # fmt: skip
    model_run = ModelRun("gpt", GPTConfig(block_size=16), train)
    stats = {"splits": {"train": {"tokens": 300 * 7, "documents": 300}}}
    decision = Decision("continue", "continued the champion on 300 new train documents")
    capped = _capped_passes(train, model_run, Descriptor("encode", "k", "p", "d", stats), 10,
                            decision)  # fmt: skip
    assert 10 <= capped.max_steps * train.global_batch / 300 < 11
    # Names of 7.1 tokens on average: rows of 7.1, not 8 (21 steps, 9 passes).
    stats = {"splits": {"train": {"tokens": 2130, "documents": 300}}}
    capped = _capped_passes(train, model_run, Descriptor("encode", "k", "p", "d", stats), 10,
                            Decision("continue", "continued"))  # fmt: skip
    assert 10 <= capped.max_steps * train.global_batch / 300 < 11


def test_text_settings_recorded_before_a_source_setting_existed_are_the_same():
    """A source's `delimiter`, added since a champion was recorded, is its default in both: the
    champion's corpus was taken as made by other text settings, and its documents checked."""
    from flows.retrain import text_settings
    from lm.config import load_config

    now = load_config("default").model_dump(mode="json")
    recorded = json.loads(json.dumps(now))
    for source in recorded["ingest"]["sources"]:
        del source["delimiter"]
    assert text_settings(recorded) == text_settings(now)
    recorded["ingest"]["sources"][0]["one_doc_per_line"] = True  # a change that is one
    assert text_settings(recorded) != text_settings(now)


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "promoted"),
    [(3.5, 3.5, 0.0, False),  # a tie keeps the champion
     (3.4, 3.5, 0.1, False),  # a gain of exactly the margin is not enough
     (3.39, 3.5, 0.1, True),
     (3.45, 3.5, 0.1, False),  # better, by less than the margin
     (3.6, 3.5, -0.2, True),  # a negative margin lets a slightly worse one through
     (3.5, 3.4, 0.0, False)],
)  # fmt: skip
def test_a_candidate_is_promoted_only_when_it_beats_the_champion_by_more_than_the_margin(
    candidate, champion, margin, promoted
):
    from flows.retrain import Decision, _decide

    decision = Decision("continue", "continued", False, candidate, champion)
    _decide(decision, margin, holder=None)
    assert decision.promoted is promoted
    assert ("; promoted: " in decision.reason) is promoted


def test_a_champion_that_could_not_be_scored_is_beaten_and_the_reason_says_why():
    from flows.retrain import Decision, _decide

    holder = object()  # a champion was there
    unscored = Decision("scratch", "trained", False, 3.9, None)
    unscored.champion_unscored = "its tokenizer refuses the new text"
    _decide(unscored, 10.0, holder=holder)
    assert unscored.promoted
    assert unscored.reason.endswith("could not be scored on this corpus (its tokenizer refuses "
                                    "the new text)")  # fmt: skip
    gone = Decision("scratch", "trained", False, 3.9, None)
    _decide(gone, 10.0, holder=holder)
    assert gone.promoted and gone.reason.endswith("(its model or tokenizer is gone)")
    first = Decision("scratch", "trained", False, 3.9, None)
    _decide(first, 10.0, holder=None)
    assert first.promoted and first.reason.endswith("; promoted: no champion to beat")


def _corpus_file(path, rows):
    """A corpus Parquet of `rows`: (doc_id, source, split, keep, part_of)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(zip(*rows, strict=True))
    pq.write_table(pa.table({"doc_id": columns[0], "source": columns[1],
                             "source_file": [s.split("#")[0] for s in columns[1]],
                             "split": columns[2], "keep": columns[3],
                             "part_of": pa.array(columns[4], pa.string())}), path)  # fmt: skip
    return path


def test_held_out_text_a_champion_trained_on_is_counted_in_val_and_test_alike(tmp_path):
    """The documents the current corpus holds out that the previous one trained on, kept in
    both: a champion scored on them would be scored on its own training text."""
    from storage.corpus import held_out_edited, held_out_trained_on

    before = _corpus_file(tmp_path / "before.parquet", [
        ("a", "/d/a.txt", "train", True, None), ("b", "/d/b.txt", "train", True, None),
        ("c", "/d/c.txt", "train", False, None), ("d", "/d/d.txt", "val", True, None),
        ("e", "/d/e.txt", "train", True, None), ("f", "/d/f.txt#2", "train", True, "/d/f.txt"),
        ("h", "/d/h.txt", "train", True, None),
    ])  # fmt: skip
    now = _corpus_file(tmp_path / "now.parquet", [
        ("a", "/d/a.txt", "val", True, None),  # trained on, now held out
        ("b", "/d/b.txt", "test", True, None),  # trained on, now held out
        ("c", "/d/c.txt", "val", True, None),  # was not kept: never trained on
        ("d", "/d/d.txt", "test", True, None),  # held out before too
        ("e2", "/d/e.txt", "val", True, None),  # e.txt edited: a new id, its old text seen
        ("f2", "/d/f.txt#2", "val", True, "/d/f.txt"),  # a piece: its place may move
        ("g", "/d/g.txt", "val", False, None),  # not kept now
        ("h", "/d/h.txt", "val", False, None),  # trained on, but not kept now: not scored
    ])  # fmt: skip
    assert held_out_trained_on(before, now) == 2
    assert held_out_trained_on(now, before) == 0  # the other way round: the held out trained
    assert held_out_edited(before, now) == 1
    assert held_out_edited(now, before) == 0


def test_the_corpus_digest_follows_the_split_and_the_text_digest_only_the_kept():
    from storage.corpus import CorpusDigest

    def digests(*rows):
        digest = CorpusDigest()
        for doc_id, split, keep in rows:
            digest.update(
                {
                    "doc_id": doc_id,
                    "source": "/d/x.txt",
                    "split": split,
                    "keep": keep,
                    "reject_reason": None if keep else "short",
                    "near_dup_of": None,
                }
            )
        return digest.hexdigest(), digest.text_hexdigest()

    base = digests(("a", "train", True), ("b", "val", True))
    moved = digests(("a", "train", True), ("b", "test", True))
    assert base[0] != moved[0] and base[1] != moved[1]
    with_rejected = digests(("a", "train", True), ("b", "val", True), ("c", "train", False))
    assert with_rejected[0] != base[0] and with_rejected[1] == base[1]


def test_a_champion_of_another_tokenizer_is_not_continued_but_one_of_another_thread_count_is():
    """The tokenizer half of `_same_settings`: a champion of other pieces (another vocabulary
    size) would be continued, with its own tokenizer, under a config that asks for another,
    or found "up-to-date" with no new documents; the thread count changes no piece."""
    from types import SimpleNamespace

    from flows.retrain import _same_settings
    from lm.config import load_config

    settings = load_config("default")
    [model_run] = settings.model_runs()
    tokenizer = settings.tokenizer.model_dump(mode="json")
    champion = SimpleNamespace(tokenizer_config=tokenizer | {"threads": 3},
                               model_config=model_run.model.model_dump(mode="json"))  # fmt: skip
    assert _same_settings(champion, settings, model_run)
    champion.tokenizer_config = tokenizer | {"vocab_size": tokenizer["vocab_size"] * 2}
    assert not _same_settings(champion, settings, model_run)


def test_a_cap_at_the_steps_a_continuation_has_says_nothing_and_keeps_a_step_past_warmup():
    """Ten passes over 579 tokens are the 12 steps it has: nothing is cut, and the reason
    claims no cut ("12 steps, not 12"). A long warmup cut with few steps still leaves a step
    at the peak learning rate (149 of 150 kept whole made every step a warmup step)."""
    from flows.retrain import Decision, _capped_passes
    from lm.config import ModelRun
    from lm.models.config import GPTConfig
    from lm.train_config import TrainConfig
    from storage.artifacts import Descriptor

    def capped(train: TrainConfig, tokens: int) -> tuple[TrainConfig, str]:
        model_run = ModelRun("gpt", GPTConfig(block_size=64), train)
        shards = Descriptor("encode", "k", "p", "d", {"splits": {"train": {"tokens": tokens}}})
        decision = Decision("continue", "continued")
        return _capped_passes(train, model_run, shards, 10, decision), decision.reason

    exact = TrainConfig(max_steps=12, warmup_steps=2, global_batch=8, micro_batch=8)
    assert capped(exact, 579) == (exact, "continued")
    long_warmup = TrainConfig(max_steps=150, warmup_steps=149, global_batch=8, micro_batch=8)
    for tokens, steps in ((30, 1), (60, 2), (120, 3)):
        cut, _ = capped(long_warmup, tokens)
        assert cut.max_steps == steps and cut.warmup_steps == steps - 1, (tokens, cut)


def test_exactly_retrain_min_new_documents_is_enough_and_a_short_continuation_warms_up_less(
    workspace, tmp_path
):
    """Two new train documents and `retrain.min_new_documents = 2`: continued, not "fewer than"
    (the rule is a floor). `retrain.steps = 2` below the config's warmup: one step of warmup,
    so that the continuation reaches its peak learning rate."""
    folder, config = twelve_documents(tmp_path)
    _trigger(config)
    new = [i for i in range(100, 200) if _first_piece_split(prose(i, 120), 1.0) == "train"][:2]
    for index in new:
        (folder / f"new{index}.txt").write_text(prose(index, 120))
    later = _trigger(config, "retrain.min_new_documents=2", "retrain.steps=2",
                     "retrain.max_passes=0", "train.warmup_steps=5")  # fmt: skip
    decision = later["decision"]
    assert decision["mode"] == "continue", decision["reason"]
    assert "continued the champion on 2 new train documents" in decision["reason"]
    candidate = workspace.resolve(later["models"][0]["path"])
    settings = json.loads((candidate / "train.json").read_text())
    assert (settings["max_steps"], settings["warmup_steps"]) == (2, 1)


LADDER = TINY.replace(
    '[model]\nkind = "gpt"',
    '[[models]]\nkind = "bigram-count"\n\n[[models]]\nkind = "gpt"',
)


def test_a_ladder_retrains_its_top_model_alone(workspace, tmp_path):
    """The top of a ladder is the model a retrain keeps current: not its count model."""
    folder = tmp_path / "texts"
    folder.mkdir()
    for index in range(12):
        (folder / f"doc{index:02d}.txt").write_text(prose(index, 120))
    config = write_config(tmp_path / "ladder.toml", [{"path": str(folder)}], LADDER)
    first = _trigger(config)
    assert [model["kind"] for model in first["models"]] == ["gpt"]
    assert RunRegistry(workspace.registry_path).champion()["kind"] == "gpt"


def test_a_champion_whose_tokenizer_is_gone_for_good_is_replaced_not_kept_up_to_date(
    workspace, tmp_path
):
    """Its tokenizer deleted, and the corpus it could be rebuilt from too (its model folder's
    copy is taken only with a corpus to measure it on): the champion cannot be scored nor
    used, so the same data trains a candidate that takes the alias, rather than "no new
    documents" keeping a champion nothing can encode text for."""
    import shutil

    _, config = twelve_documents(tmp_path)
    _trigger(config)
    registry = RunRegistry(workspace.registry_path)
    _, [(tokenizer_path,)] = registry.query("SELECT path FROM tokenizers")
    _, [(corpus_path,)] = registry.query("SELECT path FROM datasets")
    shutil.rmtree(workspace.resolve(tokenizer_path))
    shutil.rmtree(workspace.resolve(corpus_path))
    later = _trigger(config)
    decision = later["decision"]
    assert decision["mode"] == "scratch" and decision["promoted"], decision["reason"]
    assert "(the champion's tokenizer and corpus are gone)" in decision["reason"]
    assert "could not be scored (its model or tokenizer is gone)" in decision["reason"]
    assert registry.champion()["run_id"] == later["run_id"]


def test_a_champion_corpus_mostly_of_files_no_longer_read_cannot_have_its_ids_checked(tmp_path):
    """Under other text code, the champion's documents are matched by file: where most come
    from files no longer read (a moved folder), nothing tells whether their ids survived, and
    it is not continued; half of them gone (deleted files) still leaves the rest to check."""
    from types import SimpleNamespace

    from flows.retrain import _same_documents
    from lm.config import load_config
    from storage.artifacts import Descriptor
    from storage.corpus import DOCUMENTS_FILE

    def corpus(name, files):
        folder = tmp_path / name
        folder.mkdir()
        _corpus_file(folder / DOCUMENTS_FILE,
                     [(f, f"/d/{f}.txt", "train", True, None) for f in files])  # fmt: skip
        return Descriptor("clean", name, str(folder), name, {"normalization_version": 0})

    run = SimpleNamespace(workspace=SimpleNamespace(resolve=Path))
    settings = load_config("default")
    before = corpus("before", "abcd")
    champion = SimpleNamespace(corpus=before, text_settings=None)
    assert not _same_documents(run, champion, corpus("moved", "a"), settings)  # 3 of 4 gone
    assert _same_documents(run, champion, corpus("deleted", "ab"), settings)  # 2 of 4 gone


def test_a_lost_tokenizer_rebuilt_with_other_pieces_is_not_taken_for_the_champion_s(monkeypatch):
    """Trained again, a tokenizer that gave pieces other than the recorded digest's would
    encode the held-out text into ids the champion never learned: its score there would be
    noise, so it stays without one (and is beaten unscored, as before the rebuild)."""
    from types import SimpleNamespace

    import flows.retrain as retrain_flow
    from lm.config import load_config
    from storage.artifacts import Descriptor

    settings = load_config("default")
    built = []

    def build_tokenizer(run, config, corpus, **keywords):
        built.append(corpus)
        return Descriptor("tokenizer", "k", "p", "other pieces")

    monkeypatch.setattr(retrain_flow, "build_tokenizer", build_tokenizer)
    monkeypatch.setattr(retrain_flow, "_take_the_model_folder_s_tokenizer", lambda *a: False)
    corpus = Descriptor("clean", "c", "c", "its corpus")
    champion = retrain_flow.Champion(
        row={"tokenizer_digest": "the champion's pieces", "path": "m"},
        trained=Descriptor("train", "t", "t", "t"), tokenizer=None, corpus=None,
        tokenizer_config=settings.tokenizer.model_dump(mode="json"), model_config={},
        tokenizer_corpus=corpus,
    )  # fmt: skip
    run = SimpleNamespace(tokenizer=None)
    retrain_flow._rebuild_lost_tokenizer(run, settings, champion)
    assert built == [corpus] and champion.tokenizer is None
    monkeypatch.setattr(retrain_flow, "build_tokenizer", lambda *a, **k: Descriptor(
        "tokenizer", "k", "p", "the champion's pieces"))  # fmt: skip
    retrain_flow._rebuild_lost_tokenizer(run, settings, champion)
    assert champion.tokenizer.digest == "the champion's pieces"


def test_a_retrain_that_fails_after_training_records_its_candidate(workspace, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    """Failed while the champion was scored (an error no scoring expects), the candidate it
    trained is still a model of the failed run, to compare or use, and the alias stays."""
    import flows.retrain as retrain_flow

    folder, config = twelve_documents(tmp_path)
    first = _trigger(config)
    for index in range(100, 104):
        (folder / f"new{index}.txt").write_text(prose(index, 120))
    monkeypatch.setattr(retrain_flow, "_champion_score", failing("the champion's disk went away"))
    with pytest.raises(RuntimeError, match="went away"):
        _trigger(config)
    registry = RunRegistry(workspace.registry_path)
    _, rows = registry.query("SELECT r.status, m.label, m.val_bpb FROM runs r JOIN models m "
                             "USING (run_id) WHERE r.run_id <> ?", [first["run_id"]])  # fmt: skip
    assert [(status, label) for status, label, _ in rows] == [("failed", "gpt")]
    assert rows[0][2] is not None
    assert registry.champion()["run_id"] == first["run_id"]
