"""Run reports: the page of a real tiny run, missing data shown as missing, old registries, the
comparison of two runs, and the `lmforge report` command."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.report import (
    ReportError,
    build_comparison_report,
    build_run_report,
    write_report_folder,
)
from lm.report_render import RenderedReport, _config_differences, render_run_report
from storage.registry import RunRegistry
from storage.report_data import gather_run_report
from storage.workspace import Workspace
from tests.helpers import prose, registry_at_schema, write_config

RUN_SECTIONS = ["run", "scores", "loss", "learning-rate", "throughput", "tokenizer", "word2vec",
                "samples", "stages", "config"]  # fmt: skip
TINY_GPT = [
    'model.kind="gpt"', "model.block_size=16", "model.n_layer=1", "model.n_head=2",
    "model.n_embd=16", "train.max_steps=8", "train.micro_batch=4", "train.global_batch=4",
    "train.eval_every=4", "train.checkpoint_every=4", "train.eval_batches=2", "split.val=0.3",
]  # fmt: skip
WORD2VEC = ["word2vec.enabled=true", "word2vec.vector_size=16", "word2vec.epochs=1",
            "word2vec.min_count=1", 'word2vec.projection="pca"',
            'word2vec.probes=["river", "city"]']  # fmt: skip
# A cheap evaluation: two batches of windows, one short sample from a fixed prompt.
TINY_EVAL = [
    "eval.batches=2", "eval.batch_size=4", "eval.samples=1", "eval.sampling.max_new_tokens=24",
    'eval.prompts=["The river"]', "split.test=0.2",
]  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_MODEL_TOML = """
[model]
kind = "gpt"
block_size = 16
n_layer = 1
n_head = 2
n_embd = 16

[train]
micro_batch = 4
global_batch = 4
eval_batches = 2

[eval]
batches = 2
batch_size = 4
"""


class Page(HTMLParser):
    """The parts of a report page the tests look at: section ids, image sources, table cells
    and the text of each section."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.text: dict[str, str] = {}
        self.header_cells: list[str] = []
        self._in_th = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "section":
            self.sections.append(attributes["id"])
            self.text[attributes["id"]] = ""
        elif tag == "img":
            self.images.append(attributes["src"])
        elif tag == "th":
            self._in_th = True

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False

    def handle_data(self, data):
        if self.sections:
            self.text[self.sections[-1]] += data
        if self._in_th:
            self.header_cells.append(data)


@dataclass
class TwoRuns:
    workspace: Workspace
    full: str  # a tiny GPT with word2vec
    plain: str  # the count-bigram model (no training curve), no word2vec


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> TwoRuns:
    """Two real tiny runs in one workspace, shared by the module's tests."""
    from flows.pipeline import lm_pipeline

    root = tmp_path_factory.mktemp("report")
    texts = root / "texts"
    texts.mkdir()
    for index in range(10):
        (texts / f"doc{index:02d}.txt").write_text(prose(index, 150))
    config = str(write_config(root / "small.toml", [{"path": str(texts)}]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_HOME", str(root / "workspace"))
        full = lm_pipeline(config=config, overrides=[*TINY_GPT, *WORD2VEC, *TINY_EVAL])
        plain = lm_pipeline(
            config=config, overrides=['model.kind="bigram-count"', "split.val=0.3", *TINY_EVAL]
        )
        yield TwoRuns(Workspace.from_env(), full["run_id"], plain["run_id"])


def read_page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def registry_row(runs: TwoRuns, sql: str, parameters: list) -> dict:
    columns, rows = RunRegistry(runs.workspace.registry_path).query(sql, parameters)
    return dict(zip(columns, rows[0], strict=True))


def stage_output(runs: TwoRuns, run_id: str, stage: str) -> Path:
    sql = "SELECT output_path FROM stages WHERE run_id = ? AND stage = ?"
    return runs.workspace.resolve(registry_row(runs, sql, [run_id, stage])["output_path"])


@pytest.fixture(scope="module")
def full_report(runs) -> Path:
    return build_run_report(runs.full)


def crashed_run(
    tmp_path: Path, run_id: str, config: dict, logged: list[tuple[str, int, float]],
    model: str = "gpt",
) -> tuple[Workspace, RunRegistry]:  # fmt: skip
    """A run recorded as crashed with `logged` (key, step, value) metrics of `model`, as a
    killed run's are (no models row, no stages): the workspace and registry that hold it."""
    workspace = Workspace(tmp_path)
    registry = RunRegistry(workspace.registry_path)
    registry.start_run({"run_id": run_id, "status": "running", "started_at": datetime.now(),
                        "config": config})  # fmt: skip
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(
        json.dumps({"key": key, "step": step, "value": value, "model": model,
                    "ts": "2026-12-05"}) + "\n" for key, step, value in logged
    ))  # fmt: skip
    registry.finish_run(run_id, "crashed", datetime.now(), [], [], None, metrics)
    return workspace, registry


def test_run_report_has_every_section_and_every_image_is_a_png_beside_it(runs, full_report):
    assert full_report == runs.workspace.root / "reports" / runs.full / "report.html"
    page = read_page(full_report)
    assert page.sections == RUN_SECTIONS
    assert set(page.images) == {"scores.png", "loss.png", "learning-rate.png", "throughput.png",
                                "tokenizer.png", "word2vec-projection.png",
                                "stages.png"}  # fmt: skip
    for name in page.images:
        data = (full_report.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    projection = stage_output(runs, runs.full, "word2vec") / "projection.png"
    copied = (full_report.parent / "word2vec-projection.png").read_bytes()
    assert copied == projection.read_bytes()
    files = sorted(p.name for p in full_report.parent.iterdir())
    assert files == sorted([*page.images, "report.html"])


def test_run_card_and_scores_show_the_recorded_numbers(runs, full_report):
    page = read_page(full_report)
    model = registry_row(runs, "SELECT * FROM models WHERE run_id = ?", [runs.full])
    command = registry_row(runs, "SELECT command FROM runs WHERE run_id = ?", [runs.full])
    assert command["command"] in page.text["run"]
    assert (
        f"{model['parameters']:,} parameters, 8 steps, {8 * 4 * 16:,} tokens seen"
        in page.text["run"]
    )
    for score in ("val_bpb", "test_bpb", "baseline_val_bpb", "baseline_test_bpb"):
        assert f"{model[score]:.4f}" in page.text["scores"], score
    assert "0 of 7 stages served from cache" in page.text["stages"]


def test_every_val_figure_says_where_it_was_measured(runs, full_report):
    page = read_page(full_report)
    model = registry_row(runs, "SELECT * FROM models WHERE run_id = ?", [runs.full])
    scores = page.text["scores"]
    assert f"val loss (nats/token), evaluation (whole split){model['val_loss']:,.4f}" in scores
    assert f"val bits per byte, evaluation (whole split){model['val_bpb']:,.4f}" in scores
    assert "during training" not in scores  # the evaluate stage scored every model
    assert "evaluation of gpt (whole split)" in scores
    assert "val loss during training (sampled windows)" in page.text["loss"]


def test_samples_are_the_evaluate_stage_samples(runs, full_report):
    page = read_page(full_report)
    samples = json.loads((stage_output(runs, runs.full, "evaluate") / "samples.json").read_text())
    (sample,) = samples
    shown = sample["prompt"] + sample["text"].removeprefix(sample["prompt"])
    assert shown in page.text["samples"]
    assert f"seed {sample['seed']}, temperature {sample['temperature']}" in page.text["samples"]


def test_the_piece_length_histogram_counts_learned_pieces_only(tmp_path):
    from lm.config import TokenizerConfig
    from lm.tokenizer import train_tokenizer
    from storage.report_data import _piece_bytes

    texts = [prose(index, 200) for index in range(30)]
    config = TokenizerConfig(kind="bpe", vocab_size=400, user_defined_symbols=["<sep>"])
    tokenizer = train_tokenizer(iter(texts), config)
    tokenizer.save(tmp_path)
    learned = [i for i in range(tokenizer.vocab_size) if tokenizer.is_learned(i)]
    lengths = _piece_bytes(tmp_path)
    # Was: every piece not written <...>, so the "▁" escape symbol (4 bytes) counted too.
    assert len(lengths) == len(learned) < tokenizer.vocab_size
    assert lengths == [len(tokenizer.piece(i).replace("\u2581", " ").encode()) for i in learned]


def test_longest_pieces_are_listed_for_a_subword_tokenizer_not_a_char_one():
    """A char tokenizer's pieces are all one character: its ten "longest" were any ten."""
    from lm.report_render import _tokenizer_section

    def section(kind: str, longest: list[str]) -> str:
        stats = {"kind": kind, "vocab_size": 40, "longest_pieces": longest}
        return _tokenizer_section(SimpleNamespace(tokenizer=stats, tokenizer_piece_bytes=[]), {})

    assert "Longest pieces" not in section("char", ["a", "b", "\u00e9"])
    assert "Longest pieces: <code>\u2581the</code>" in section("bpe", ["\u2581the", "s"])


def test_control_characters_of_a_sample_are_shown_not_written_raw():
    """A sample's byte pieces decoded to a NUL and an escape: the page held them raw."""
    from lm.report_render import _e

    assert _e("a\x00b\x1b[2J<c>\td\n\x85") == "a\\x00b\\x1b[2J&lt;c&gt;\td\n\\x85"


def test_the_word2vec_note_says_why_it_was_not_trained():
    """A retrain run's page said "word2vec.enabled = false" of a config that enables it."""
    from lm.report_render import RunReport, _word2vec_section

    def said(config: dict, command: str) -> str:
        return _word2vec_section(RunReport("r", "completed", config=config, command=command), {})

    assert "(word2vec.enabled = false)" in said({"word2vec": {"enabled": False}}, "lmforge run x")
    retrained = said({"word2vec": {"enabled": True}}, "lmforge retrain x")
    assert "(a retrain trains it only for a model that reads its vectors)" in retrained
    assert "no word2vec stage was recorded" in said({"word2vec": {}}, "lmforge run x")


def test_what_a_run_did_not_record_is_shown_as_missing(runs):
    page = read_page(build_run_report(runs.plain))
    assert page.sections == RUN_SECTIONS
    assert "word2vec was not trained in this run" in page.text["word2vec"]
    assert "No training curves were recorded" in page.text["loss"]  # a count model
    assert "No train/lr curve was recorded" in page.text["learning-rate"]
    assert set(page.images) == {"scores.png", "tokenizer.png", "stages.png"}
    # Its data stages came from the first run's cache; the report says so.
    assert "4 of 6 stages served from cache" in page.text["stages"]


def test_comparison_tabulates_both_runs_and_overlays_their_val_loss(runs):
    path = build_comparison_report([runs.full, runs.plain])
    page = read_page(path)
    assert page.sections == ["table", "curves", "scores", "reproduce"]
    run_columns = [c for c in page.header_cells if c.startswith("20")]
    assert run_columns == [runs.full, runs.plain] * 2  # scores table, then differing settings
    for run_id in (runs.full, runs.plain):
        model = registry_row(runs, "SELECT * FROM models WHERE run_id = ?", [run_id])
        assert f"{model['val_bpb']:.4f}" in page.text["table"]
        assert f"{model['parameters']:,}" in page.text["table"]
    assert set(page.images) == {"val-loss.png", "train-loss.png", "scores.png"}
    assert "model.kind" in page.text["table"]  # the setting that differs: gpt vs bigram-count
    for name in page.images:
        assert (path.parent / name).read_bytes().startswith(PNG_MAGIC)
    # The same runs in the other order: the same folder (it was a second one), their order.
    again = build_comparison_report([runs.plain, runs.full])
    assert again == path
    assert [c for c in read_page(again).header_cells if c.startswith("20")][:2] == [
        runs.plain, runs.full
    ]  # fmt: skip


def test_a_registry_from_before_model_labels_still_reports(tmp_path):
    """Schema 2: no `models` table, no `model` column; the train stage's curve is the run's."""
    workspace = Workspace(tmp_path)
    connection = registry_at_schema(workspace.registry_path, 2)
    connection.execute(
        "INSERT INTO runs (run_id, status, started_at, config, command) "
        "VALUES ('old-run', 'completed', now(), '{\"seed\": 7}', 'lmforge run old.toml')"
    )
    stats = {"model": "gpt", "parameters": 1234, "steps": 3, "tokens_seen": 96, "val_loss": 2.5,
             "baseline_val_loss": 3.0}  # fmt: skip
    connection.execute(
        "INSERT INTO stages VALUES ('old-run', 'train', 'k', false, 4.0, 'd', 'gone', ?, now())",
        [json.dumps(stats)],
    )
    for step, loss in ((1, 4.0), (2, 3.5), (3, 3.0)):
        connection.execute(
            "INSERT INTO metrics VALUES ('old-run', 'train/loss', ?, ?, now())", [step, loss]
        )
    connection.close()

    report = gather_run_report(RunRegistry(workspace.registry_path), workspace, "old")
    (model,) = report.models
    assert (model.label, model.parameters, model.scores["training_val_loss"]) == ("gpt", 1234, 2.5)
    assert model.curves["train/loss"].values == [4.0, 3.5, 3.0]
    assert model.tokens_per_step is None  # no train.json: curves against steps
    assert any("before migration 3" in note for note in report.missing)
    assert "No corpus version was recorded" in " ".join(report.missing)
    page = Page(render_run_report(report).html)
    assert "Bits per byte were not recorded" in page.text["scores"]
    assert "best val loss (nats/token) during training (sampled windows)2.5" in page.text["scores"]
    assert "no samples recorded (no evaluate stage in this run)" in page.text["samples"]
    assert "word2vec was not trained" in page.text["word2vec"]
    assert "No tokenizer statistics were recorded" in page.text["tokenizer"]


OLD_PAGE = '<p>old</p><img src="old.png" alt="old">'


def test_rewriting_a_report_replaces_it_in_one_rename(tmp_path):
    folder = tmp_path / "reports" / "run"
    write_report_folder(RenderedReport(OLD_PAGE, {"old.png": PNG_MAGIC}), folder)
    path = write_report_folder(RenderedReport("<p>new</p>", {"new.png": PNG_MAGIC}), folder)
    assert path.read_text() == "<p>new</p>"
    assert sorted(p.name for p in folder.iterdir()) == ["new.png", "report.html"]
    assert [p.name for p in folder.parent.iterdir()] == ["run"]  # no staging folder left


def test_an_image_its_page_does_not_show_is_not_the_report_s(tmp_path):
    # Any PNG beside a report.html was taken for the report's, and deleted with the folder.
    folder = tmp_path / "mine"
    write_report_folder(RenderedReport(OLD_PAGE, {"old.png": PNG_MAGIC}), folder)
    (folder / "family-photo.png").write_bytes(PNG_MAGIC + b"mine")
    with pytest.raises(ReportError, match=r"mine: holds files that are not a report's "
                                          r"\(family-photo\.png\)"):  # fmt: skip
        write_report_folder(RenderedReport("<p>new</p>", {}), folder)
    assert (folder / "family-photo.png").read_bytes() == PNG_MAGIC + b"mine"
    assert (folder / "report.html").read_text() == OLD_PAGE


@pytest.mark.parametrize("other", ["thesis.txt", "sub/", "registry.duckdb"])
def test_a_folder_holding_anything_but_a_report_is_refused_and_left_whole(tmp_path, other):
    # `--out .`, `--out ~` or `--out $LMFORGE_HOME` replaced the folder whole, deleting it all.
    folder = tmp_path / "mine"
    write_report_folder(RenderedReport(OLD_PAGE, {"old.png": PNG_MAGIC}), folder)
    if other.endswith("/"):
        (folder / other).mkdir()
    else:
        (folder / other).write_text("precious")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ReportError, match=rf"mine: holds files that are not a report's \("
                                          rf"{other.rstrip('/')}\)"):  # fmt: skip
        write_report_folder(RenderedReport("<p>new</p>", {}), folder)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert (folder / "report.html").read_text() == OLD_PAGE
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_report_folder(RenderedReport("<p>new</p>", {}), empty).read_text() == "<p>new</p>"


def test_a_folder_of_images_without_a_report_page_is_refused(tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "holiday.png").write_bytes(PNG_MAGIC + b"mine")
    with pytest.raises(ReportError, match=r"pictures: holds files that are not a report's "
                                          r"\(holiday\.png\)"):  # fmt: skip
        write_report_folder(RenderedReport("<p>new</p>", {"loss.png": PNG_MAGIC}), pictures)
    assert [p.name for p in pictures.iterdir()] == ["holiday.png"]
    assert (pictures / "holiday.png").read_bytes() == PNG_MAGIC + b"mine"


def test_a_report_that_cannot_be_written_is_a_report_error_naming_the_folder(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    folder = blocked / "reports" / "run"
    with pytest.raises(ReportError) as raised:
        write_report_folder(RenderedReport("<p>new</p>", {}), folder)
    assert str(raised.value).startswith(f"{folder}: cannot write the report (")
    assert "pass --out to write it elsewhere" in str(raised.value)
    assert blocked.read_text() == "not a folder"


def test_report_command_prints_the_page_path_and_names_a_bad_run(runs, tmp_path):
    from flows.cli import app

    runner = CliRunner()
    out = tmp_path / "my-report"
    printed = runner.invoke(app, ["report", runs.plain[:15], "--out", str(out)])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout.strip() == str(out / "report.html") and (out / "stages.png").is_file()
    compared = runner.invoke(app, ["report", "--compare", runs.full, runs.plain])
    assert compared.exit_code == 0 and Path(compared.stdout.strip()).is_file()
    missing = runner.invoke(app, ["report", "no-such-run"])
    assert missing.exit_code == 1 and "flow run id) starting 'no-such-run'" in missing.stderr
    page = runner.invoke(app, ["report", runs.plain, "--out", str(tmp_path / "OUT.HTML")])
    assert page.exit_code == 1 and "name a folder" in page.stderr  # a folder OUT.HTML before


@pytest.mark.parametrize(("out", "said"), [
    (".", "the folder you are in"), ("", "the folder you are in"),
    ("..", "above the folder you are in"),
])  # fmt: skip
def test_report_out_the_folder_one_is_in_is_refused_not_renamed_away(
    runs, tmp_path, monkeypatch, out, said
):
    """An empty working folder passed the not-a-report check and was replaced whole: renamed
    aside and deleted, the shell left in a folder that no longer existed."""
    from flows.cli import app

    here = tmp_path / "empty" / "here"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    refused = CliRunner().invoke(app, ["report", runs.plain, "--out", out])
    assert refused.exit_code == 1 and f"{said}; the report replaces its folder" in refused.stderr
    assert here.is_dir() and not list(here.iterdir()) and Path.cwd() == here


def test_report_from_inside_its_own_default_folder_is_refused_not_renamed_away(runs, monkeypatch):
    from flows.cli import app

    runner = CliRunner()
    written = Path(runner.invoke(app, ["report", runs.plain]).stdout.strip())
    folder = written.parent
    monkeypatch.chdir(folder)
    refused = runner.invoke(app, ["report", runs.plain])
    assert refused.exit_code == 1
    assert "the report's folder is the folder you are in" in " ".join(refused.stderr.split())
    assert Path.cwd() == folder and written.is_file()


def test_comparison_needs_two_distinct_runs(runs):
    with pytest.raises(ReportError, match="at least two run ids"):
        build_comparison_report([runs.full])
    with pytest.raises(ReportError, match="the same run twice"):
        build_comparison_report([runs.full, runs.full[:15]])


def test_settings_that_differ_name_the_ladder_entry_that_differs():
    # One changed key of one `[[models]]` entry is that key, as `lmforge runs compare` names it,
    # not the whole ladder of each run; a list of plain values is still shown whole.
    def config(learning_rate: float, sources: list[str]) -> SimpleNamespace:
        ladder = [
            {"model": {"kind": "bigram"}, "train": {"max_steps": 40}},
            {"model": {"kind": "gpt"}, "train": {"learning_rate": learning_rate}},
        ]
        return SimpleNamespace(config={"models": ladder, "ingest": {"sources": sources}})

    differences = _config_differences([config(3e-3, ["a", "b"]), config(1e9, ["a"])])
    assert differences == [
        ["ingest.sources", '["a", "b"]', '["a"]'],
        ["models[1].train.learning_rate", 3e-3, 1e9],
    ]


def test_tokenizer_comparison_trains_the_same_model_on_each_and_reports_bits_per_byte(
    runs, tmp_path
):
    """Lives here to reuse this module's corpus (one pipeline run fewer)."""
    from flows.cli import app
    from lm.config import TokenizerConfig, load_config
    from lm.tokenizer import train_tokenizer
    from lm.tokenizer_bpb import comparison_train_settings, encode_documents, train_and_score
    from storage.corpus import DOCUMENTS_FILE, iter_split_texts

    tiny = write_config(tmp_path / "tiny.toml", [{"path": str(tmp_path)}], TINY_MODEL_TOML)
    arguments = ["tokenizers", "compare", "--vocab-size", "350", "--train-steps", "4"]
    result = CliRunner().invoke(app, [*arguments, "--config", str(tiny)])
    assert result.exit_code == 0, result.output
    printed = dict(
        re.findall(r"│ (bpe|unigram)\s.*?│ (\d+\.\d{4}) ± \d+\.\d{4}\s+│", result.stdout)
    )
    assert set(printed) == {"bpe", "unigram"}
    # The printed number is the evaluator's, for this tokenizer, and training is reproducible.
    corpus = registry_row(runs, "SELECT path FROM datasets", [])["path"]
    documents = runs.workspace.resolve(corpus) / DOCUMENTS_FILE
    settings = load_config(str(tiny))
    scores = {}
    for kind in ("bpe", "unigram"):
        texts = (t for batch in iter_split_texts(documents, "train") for t in batch)
        tokenizer = train_tokenizer(texts, TokenizerConfig(kind=kind, vocab_size=350))
        scores[kind] = train_and_score(
            tokenizer,
            encode_documents(tokenizer, iter_split_texts(documents, "train")),
            encode_documents(tokenizer, iter_split_texts(documents, "val")),
            settings.model,
            comparison_train_settings(settings.train, 4),
            settings.eval,
            tmp_path / f"work-{kind}",
        )
        assert printed[kind] == f"{scores[kind].bpb:.4f}"
        assert 0 < scores[kind].baseline_bpb < 8 and scores[kind].steps == 4
    # The baseline is fitted at eval.baseline_smoothing where set, as the evaluate stage fits it
    # (the tuned add-k was used whatever it said).
    fixed = settings.eval.model_copy(update={"baseline_smoothing": 5.0})
    again = train_and_score(
        tokenizer,
        encode_documents(tokenizer, iter_split_texts(documents, "train")),
        encode_documents(tokenizer, iter_split_texts(documents, "val")),
        settings.model,
        comparison_train_settings(settings.train, 4),
        fixed,
        tmp_path / "work-fixed",
    )
    assert again.bpb == scores["unigram"].bpb
    assert again.baseline_bpb > scores["unigram"].baseline_bpb + 0.01
    # Every val token scored: both tokenizers are measured on exactly the val text.
    val = [t for batch in iter_split_texts(documents, "val") for t in batch]
    assert scores["bpe"].bytes == scores["unigram"].bytes == sum(
        len(text.encode()) + 1 for text in val)  # fmt: skip
    # A ladder's last model is the one compared (it was refused: "needs a [model]").
    ladder = TINY_MODEL_TOML.replace("[model]", '[[models]]\nkind = "bigram"\n\n[[models]]\n'
                                     'name = "top"', 1)  # fmt: skip
    ladder_config = write_config(tmp_path / "ladder.toml", [{"path": str(tmp_path)}], ladder)
    arguments = ["tokenizers", "compare", "--vocab-size", "350", "--train-steps", "2"]
    result = CliRunner().invoke(app, [*arguments, "--config", str(ladder_config)])
    assert result.exit_code == 0, result.output
    assert "val bpb (top, 2 steps)" in " ".join(result.stdout.split())


LADDER_FAILING_SECOND = """
[split]
val = 0.3
test = 0.0

[train]
max_steps = 8
micro_batch = 4
global_batch = 4
eval_every = 4
eval_batches = 2

[eval]
samples = 0

[[models]]
name = "good"
kind = "gpt"
block_size = 16
n_layer = 1
n_head = 2
n_embd = 16

[[models]]
name = "diverges"
kind = "gpt"
block_size = 16
n_layer = 1
n_head = 2
n_embd = 16
[models.train]
learning_rate = 1e30
"""


def test_a_failed_runs_report_says_where_each_val_figure_was_measured(workspace, tmp_path):
    """The first model trained and was evaluated, the second diverged: the run failed, so the
    report builds its models from the train stages, whose val loss is training's own."""
    from flows.pipeline import lm_pipeline
    from lm.train_config import TrainingError

    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(10):
        (texts / f"doc{index:02d}.txt").write_text(prose(index, 150))
    config = write_config(tmp_path / "ladder.toml", [{"path": str(texts)}], LADDER_FAILING_SECOND)
    with pytest.raises(TrainingError, match="loss is"):
        lm_pipeline(config=str(config))
    registry = RunRegistry(workspace.registry_path)
    _, ((run_id, status),) = registry.query("SELECT run_id, status FROM runs")
    assert status == "failed"
    _, ((train_stats,),) = registry.query("SELECT stats FROM stages WHERE stage = 'train/good'")
    _, ((evaluate_path,),) = registry.query(
        "SELECT output_path FROM stages WHERE stage = 'evaluate/good'"
    )
    training = json.loads(train_stats)["val_loss"]  # best of training's sampled val windows
    evaluation = json.loads((workspace.resolve(evaluate_path) / "metrics.json").read_text())
    evaluated = evaluation["model"]["val"]["loss"]  # the evaluate stage's, the whole split
    assert f"{training:.4f}" != f"{evaluated:.4f}"  # two different numbers, both "val loss"
    # The model that finished is recorded, with the evaluator's figures (was: no models).
    _, recorded = registry.query("SELECT label, val_loss FROM models WHERE run_id = ?", [run_id])
    assert recorded == [("good", pytest.approx(evaluated))]

    page = Page(render_run_report(gather_run_report(registry, workspace, run_id)).html)
    scores = page.text["scores"]
    assert f"val loss (nats/token), evaluation (whole split){evaluated:,.4f}" in scores
    assert f"{training:.4f}" not in scores  # training's own is its curve, under Loss
    assert "val loss during training (sampled windows)" in page.text["loss"]
    # What data it saw, logged before training (was: at the end, which a failed run never
    # reached): its card gives the tokens per split, and `runs compare` its corpus.
    assert re.search(r"tokens per splittrain [\d,]+, val [\d,]+", page.text["run"])


def test_the_tokens_behind_the_published_weights_are_shown_where_they_differ_from_those_seen():
    """A continued model's weights count the training they continue too; a model whose best
    val loss came before its last step publishes weights trained on fewer tokens than it saw."""
    from lm.report_render import ModelSection, RunReport

    continued = ModelSection("gpt", kind="gpt", steps=4, tokens_seen=512, tokens_trained=1536)
    fresh = ModelSection("mlp", kind="mlp", steps=4, tokens_seen=512, tokens_trained=512)
    early = ModelSection("bigram", kind="bigram", steps=4, tokens_seen=512, tokens_trained=256)
    html = render_run_report(RunReport("r1", "completed", models=[continued, fresh, early])).html
    said = "behind the published weights, with any training they continue"
    assert f"4 steps, 512 tokens seen (1,536 {said})" in html
    assert f"4 steps, 512 tokens seen (256 {said})" in html
    assert html.count(said) == 2, "only where they differ"


def test_a_training_cut_short_keeps_its_curve_in_the_report(tmp_path):
    # A killed run has no models row and no train stage for the model it was training: its
    # curve, which the registry holds, was dropped ("No training curves were recorded").
    config = {"train": {"global_batch": 8, "block_size": 16, "max_steps": 100},
              "models": [{"name": None, "model": {"kind": "bigram"}, "train": {}},
                         {"name": "big", "model": {"kind": "gpt", "block_size": 32},
                          "train": {"global_batch": 4, "max_steps": 50}}]}  # fmt: skip
    logged = [("train/loss", 1, 4.0), ("train/loss", 2, 3.0), ("train/lr", 3, 0.001)]
    workspace, registry = crashed_run(tmp_path, "killed", config, logged, model="big")
    report = gather_run_report(registry, workspace, "killed")
    (model,) = report.models
    assert (model.label, model.kind, model.tokens_per_step) == ("big", "gpt", 4 * 32)
    assert model.curves["train/loss"].values == [4.0, 3.0]
    assert "did not finish (the run is crashed)" in model.missing[0]
    page = Page(render_run_report(report).html)
    assert "No training curves were recorded" not in page.text["loss"]
    # The card gives each ladder model's own training settings, not the shared [train] alone.
    assert "training bigram100 steps, global batch 8" in page.text["run"]
    assert "training big50 steps, global batch 4" in page.text["run"]


def test_a_long_training_s_curves_are_thinned_for_its_page_but_val_loss_is_whole(
    tmp_path, monkeypatch
):
    # A month-long training logs a million steps: the report held them all as rows (750 MB
    # for one run, 1.9 GB and 52 s for `report --compare` of 20 such runs) to draw 800 pixels.
    monkeypatch.setattr("storage.report_data.CURVE_POINTS", 100, raising=False)
    config = {"train": {"global_batch": 4, "block_size": 8, "max_steps": 1000},
              "model": {"kind": "gpt", "block_size": 8}}  # fmt: skip
    lines = []
    for step in range(1, 1001):
        lines += [("train/loss", step, 5.0 - step / 1000), ("train/lr", step, 1e-3)]
        if step % 3 == 0:
            lines.append(("val/loss", step, 4.0 if step != 999 else 1.5))
    workspace, registry = crashed_run(tmp_path, "long", config, lines)
    (model,) = gather_run_report(registry, workspace, "long").models
    loss = model.curves["train/loss"]
    assert 90 <= len(loss.steps) <= 101 and len(model.curves["train/lr"].steps) == len(loss.steps)
    assert (loss.steps[0], loss.steps[-1], loss.values[-1]) == (1, 1000, 4.0)
    assert loss.steps == sorted(loss.steps)
    assert len(model.curves["val/loss"].steps) == 333  # whole: its lowest point is a score
    assert model.scores["training_val_loss"] == 1.5


@pytest.mark.parametrize("logged", [101, 199, 201, 1000])
def test_a_thinned_curve_keeps_as_many_points_as_it_may_whatever_its_length(
    tmp_path, monkeypatch, logged
):
    # A stride of ceil(points / CURVE_POINTS) kept 51 of 101 points where 100 may be drawn.
    monkeypatch.setattr("storage.report_data.CURVE_POINTS", 100, raising=False)
    points = [("train/loss", step, 1.0) for step in range(1, logged + 1)]
    workspace, registry = crashed_run(tmp_path, "r", {"model": {"kind": "gpt"}}, points)
    (model,) = gather_run_report(registry, workspace, "r").models
    steps = model.curves["train/loss"].steps
    assert (len(steps), steps[0], steps[-1]) == (100, 1, logged)


def test_curves_of_rows_of_documents_are_drawn_against_the_targets_trained_on(tmp_path):
    # Against global batch × block size, the names ladder's axis counted padding: 2.26x.
    from storage.registry import ModelRecord

    workspace = Workspace(tmp_path)
    registry = RunRegistry(workspace.registry_path)
    registry.start_run({"run_id": "names", "status": "running", "started_at": datetime.now()})
    train = {"samples": "documents", "global_batch": 32, "block_size": 16}
    rows = ModelRecord("gpt", "gpt", "d", "artifacts/train/gone", "t", "c", {"train": train},
                       {"steps": 200, "tokens_seen": 45_242})  # fmt: skip
    windows = ModelRecord("mlp", "mlp", "d", "artifacts/train/gone-too", "t", "c",
                          {"train": train | {"samples": "windows"}}, {"steps": 200,
                          "tokens_seen": 102_400})  # fmt: skip
    registry.finish_run("names", "completed", datetime.now(), [], models=[rows, windows])
    gpt, mlp = gather_run_report(registry, workspace, "names").models
    assert gpt.tokens_per_step == pytest.approx(45_242 / 200)
    assert mlp.tokens_per_step == 32 * 16


def test_the_card_gives_a_count_model_no_steps_or_learning_rate():
    from lm.report_render import _config_summary

    config = {"train": {"max_steps": 60, "global_batch": 128, "learning_rate": 0.001,
                        "schedule": "cosine"},
              "models": [{"name": "counts", "model": {"kind": "bigram-count"}, "train": {}},
                         {"name": "gpt", "model": {"kind": "gpt"}, "train": {}}]}  # fmt: skip
    rows = dict(_config_summary(config, None))
    assert rows["training counts"] == "counted in closed form (no steps)"
    assert rows["training gpt"] == "60 steps, global batch 128, lr 0.001 (cosine)"


def test_an_ablation_s_card_gives_the_seeds_its_variants_trained_under():
    """The card said the run's `seed` (1), which no variant of the ablation trained under."""
    from lm.report_render import _config_summary

    config = {"seed": 1, "ablation": {"seeds": [7, 8, 9]}}
    assert dict(_config_summary(config, None, ablation=True))["seeds"] == "7, 8, 9"
    assert dict(_config_summary(config, None))["seed"] == "1"  # a run that ablated nothing


def test_a_ladder_model_trained_but_not_scored_is_not_said_to_have_stopped_training(tmp_path):
    from storage.registry import ModelRecord, StageRecord

    workspace = Workspace(tmp_path)
    registry = RunRegistry(workspace.registry_path)
    config = {"train": {"global_batch": 8, "block_size": 16},
              "models": [{"name": "small", "model": {"kind": "bigram"}, "train": {}},
                         {"name": "big", "model": {"kind": "gpt"}, "train": {}}]}  # fmt: skip
    registry.start_run({"run_id": "unscored", "status": "running", "started_at": datetime.now(),
                        "config": config})  # fmt: skip
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"key": "train/loss", "step": 1, "value": 4.0, "model": "big",
                                   "ts": "2026-12-05"}) + "\n")  # fmt: skip
    trained = StageRecord("train/big", "k", False, 3.0)  # then its evaluate stage failed
    small = ModelRecord("small", "bigram", "d", "artifacts/train/s", "t", "c", {}, {})
    registry.finish_run("unscored", "failed", datetime.now(), [trained], [], None, metrics,
                        models=[small])  # fmt: skip
    _, model = gather_run_report(registry, workspace, "unscored").models
    assert model.label == "big" and model.missing == [
        "its training finished, but the run (failed) stopped before it was scored: the curves "
        "are its training's, and no evaluation scored it"
    ]


def test_a_model_name_with_dollar_signs_is_drawn_as_text_not_read_as_tex(tmp_path):
    # matplotlib read `$\alph$` as TeX: "Unknown symbol", and no report at all.
    name = "c$\\alph$"
    config = {"train": {"global_batch": 4, "block_size": 8, "max_steps": 10},
              "models": [{"name": name, "model": {"kind": "bigram"}, "train": {}}]}  # fmt: skip
    logged = [("train/loss", step, 4.0 - step) for step in (1, 2, 3)]
    workspace, registry = crashed_run(tmp_path, "tex", config, logged, model=name)
    rendered = render_run_report(gather_run_report(registry, workspace, "tex"))
    assert name in Page(rendered.html).text["run"] and rendered.images  # drawn, named
    from gensim.models import KeyedVectors

    from lm.word2vec import plot_projection

    vectors = KeyedVectors(4)
    vectors.add_vectors(["$\\alph", "b$", "c"], np.eye(3, 4, dtype=np.float32))
    path = plot_projection(vectors, {"$\\alph": ["b$", "c"]}, "pca", tmp_path / "p.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_running_run_s_report_says_its_records_come_at_its_end(tmp_path):
    # It said "vocab 4000" for a char tokenizer (the config's SentencePiece size) and that the
    # run "ended before the first" stage finished, while ten had, and it ran on.
    from lm.report_render import _config_summary

    workspace = Workspace(tmp_path)
    registry = RunRegistry(workspace.registry_path)
    config = {"tokenizer": {"kind": "char", "vocab_size": 4000}, "seed": 1}
    registry.start_run({"run_id": "live", "status": "running", "started_at": datetime.now(),
                        "config": config})  # fmt: skip
    page = Page(render_run_report(gather_run_report(registry, workspace, "live")).html)
    assert (
        "No stage is recorded yet: a run's stages are recorded when it ends." in page.text["stages"]
    )
    assert dict(_config_summary(config, None))["tokenizer"] == (
        "char (vocab from the data; not recorded yet)"
    )
    stats = {"kind": "char", "vocab_size": 27}
    assert dict(_config_summary(config, stats))["tokenizer"] == "char (vocab 27)"


def test_counts_the_registry_holds_as_doubles_print_whole_with_separators():
    """Byte and token counts of 100,000 or more printed as 1.549e+05 beside 65,066."""
    from lm.report_render import _format

    assert _format(154936.0) == "154,936" and _format(65066.0) == "65,066"
    assert _format(1.9698123) == "1.9698" and _format(0.00025) == "0.00025"
    assert _format(123456.789) == "1.235e+05"


def test_a_retrain_s_report_shows_its_decision(tmp_path):
    # The page of a retrain said nothing of whether its model was promoted, nor why: the
    # decision was in `promotions` (and `lmforge retrain`'s last line) alone.
    from storage.records import PromotionRecord
    from storage.registry import ModelRecord

    workspace = Workspace(tmp_path)
    registry = RunRegistry(workspace.registry_path)
    for run_id, promoted, champion in (("first", True, None), ("second", False, 3.2701)):
        registry.start_run({"run_id": run_id, "status": "running", "started_at": datetime.now(),
                            "command": "lmforge retrain c.toml"})  # fmt: skip
        model = ModelRecord("gpt", "gpt", "d", "artifacts/train/gone", "t", "c", {}, {})
        reason = "trained from scratch; " + ("no champion to beat" if promoted else "kept it")
        decision = PromotionRecord(None, "champion", promoted, 3.42, champion, reason,
                                   datetime.now(), "first/gpt" if champion else None)  # fmt: skip
        registry.finish_run(run_id, "completed", datetime.now(), [], models=[model],
                            promotion=decision)  # fmt: skip
    first = Page(render_run_report(gather_run_report(registry, workspace, "first")).html)
    second = Page(render_run_report(gather_run_report(registry, workspace, "second")).html)
    assert ("retrain decisionpromoted to champion (candidate val bpb 3.4200): trained from "
            "scratch; no champion to beat") in first.text["run"]  # fmt: skip
    assert ("retrain decisionnot promoted, the champion stays (candidate val bpb 3.4200 against "
            "the champion's 3.2701; the champion was first/gpt): trained from scratch; kept it"
            ) in second.text["run"]  # fmt: skip
    # A retrain with no new documents trains nothing: its decision says so, no "none recorded".
    registry.start_run({"run_id": "third", "status": "running", "started_at": datetime.now(),
                        "config": {"model": {"kind": "gpt"}}})  # fmt: skip
    idle = PromotionRecord(None, "champion", False, None, None,
                           "up-to-date: no new documents", datetime.now())  # fmt: skip
    registry.finish_run("third", "completed", datetime.now(), [], promotion=idle)
    third = Page(render_run_report(gather_run_report(registry, workspace, "third")).html)
    assert "not promoted, the champion stays: up-to-date: no new documents" in third.text["run"]
    assert "none was recorded" not in third.text["run"]


def test_a_training_cut_short_shows_its_best_val_loss_so_far(tmp_path):
    # A killed run's page said "the table shows the training losses in nats per token" above
    # no table: the val loss curve it logged gave no score row.
    config = {"train": {"global_batch": 8, "block_size": 16, "max_steps": 100},
              "model": {"kind": "gpt", "block_size": 16}}  # fmt: skip
    logged = [("train/loss", 1, 4.0), ("val/loss", 40, 5.25), ("val/loss", 80, 5.125),
              ("train/loss", 81, 3.0)]  # fmt: skip
    workspace, registry = crashed_run(tmp_path, "killed", config, logged)
    page = Page(render_run_report(gather_run_report(registry, workspace, "killed")).html)
    best = "best val loss (nats/token) during training (sampled windows)5.1250"
    assert best in page.text["scores"]
    # ... and its note does not say, under that score, that there are none.
    assert "no scores" not in page.text["scores"]


def test_a_run_without_any_score_does_not_point_at_a_table():
    from lm.report_render import ModelSection, RunReport

    report = RunReport("nan", "failed", models=[ModelSection("gpt", kind="gpt")])
    page = Page(render_run_report(report).html)
    assert "the table shows" not in page.text["scores"]
    assert "nor a val loss during training" in page.text["scores"]


def test_a_comparison_of_many_runs_keeps_its_legend_beside_the_plot_and_colours_apart():
    """20 runs' 40 entries hid the curves and the title, and run 11 took run 1's colour."""
    from lm.report_render import _colour, _legend, _pyplot

    figure = _pyplot().figure()
    try:
        few, many = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
        for index in range(3):
            few.plot([0, 1], [index, index], label=f"run {index}")
        for index in range(20):
            many.plot([0, 1], [index, index], label=f"run {index}")
        _legend(few)
        _legend(many)
        figure.canvas.draw()
        plot, legend = many.get_window_extent(), many.get_legend().get_window_extent()
        assert legend.x0 >= plot.x1  # beside the plot, not over it
        inside = few.get_legend().get_window_extent()
        assert few.get_window_extent().x0 <= inside.x0 and inside.x1 <= few.get_window_extent().x1
    finally:
        _pyplot().close(figure)
    assert len({_colour(index, 20) for index in range(20)}) == 20
    assert [_colour(index, 3) for index in range(3)] == ["C0", "C1", "C2"]


def test_a_report_gives_its_times_with_their_offset_from_utc(tmp_path, local_zone):
    """A report is read elsewhere: one made in Kolkata gave 18:30, which Paris read as its own
    evening; `runs`, read where it runs, keeps the bare local time."""
    from datetime import UTC

    from lm.clock import shown_time
    from storage.report_data import gather_run_report

    instant = datetime(2026, 12, 7, 13, 0, 5, tzinfo=UTC)
    for zone, shown in (("Asia/Kolkata", "2026-12-07 18:30:05 +05:30"),
                        ("America/St_Johns", "2026-12-07 09:30:05 -03:30"),
                        ("UTC", "2026-12-07 13:00:05 +00:00")):  # fmt: skip
        local_zone(zone)
        assert shown_time(instant, zone=True) == shown
        assert shown_time(instant) == shown[:19]
    local_zone("Asia/Kolkata")
    workspace, registry = crashed_run(tmp_path, "sent", {}, [])
    report = gather_run_report(registry, workspace, "sent")
    assert report.started_at.endswith(" +05:30") and report.ended_at.endswith(" +05:30")


# -- what the page says, number by number (each a mutation of the renderer once passed) --------


def drawn_axes(monkeypatch, plot, *arguments):
    """The axes `plot` draws, to be read instead of saved as a PNG."""
    import lm.report_render as render

    figures = []

    def keep(draw, size=(8.0, 4.2)):
        figure = render._pyplot().figure(figsize=size)
        draw(figure)
        figures.append(figure)
        return PNG_MAGIC

    monkeypatch.setattr(render, "_png", keep)
    plot(*arguments)
    (figure,) = figures
    render._pyplot().close(figure)
    return figure.axes[0]


def test_the_scores_plot_sets_each_model_beside_its_own_baseline(monkeypatch):
    from lm.report_render import _scores_plot

    rows = [("gpt", {"val_bpb": 1.5, "baseline_val_bpb": 3.25, "test_bpb": 1.75,
                     "baseline_test_bpb": 3.5}),
            ("mlp", {"test_bpb": 2.0}),  # scored on test alone: no val bar, no baseline
            ("counts", {})]  # fmt: skip
    axes = drawn_axes(monkeypatch, _scores_plot, rows)
    assert [t.get_text() for t in axes.get_xticklabels()] == ["gpt\nval", "gpt\ntest", "mlp\ntest"]
    heights = [bar.get_height() for bar in axes.patches]
    assert heights == [1.5, 1.75, 2.0, 3.25, 3.5, 0.0]  # the models', then their baselines'
    model_x = [bar.get_x() + bar.get_width() / 2 for bar in axes.patches[:3]]
    assert [(t.get_text(), t.xy[0]) for t in axes.texts] == list(
        zip(["1.500", "1.750", "2.000"], model_x, strict=True)
    )


def test_curves_are_drawn_against_tokens_where_a_step_s_tokens_are_known():
    from lm.report_render import ModelSection, _x_axis

    assert _x_axis(ModelSection("m", tokens_per_step=64), [1, 3]) == ([64, 192], "tokens")
    assert _x_axis(ModelSection("m"), [1, 3]) == ([1.0, 3.0], "optimizer step")


def test_the_piece_length_histogram_counts_every_length_up_to_the_longest(monkeypatch):
    from lm.report_render import _piece_length_plot

    axes = drawn_axes(monkeypatch, _piece_length_plot, [1, 1, 3, 2, 3, 3, 5], "bpe")
    assert [(bar.get_x() + bar.get_width() / 2, bar.get_height()) for bar in axes.patches] == [
        (1, 2), (2, 1), (3, 3), (4, 0), (5, 1)
    ]  # fmt: skip


def test_text_a_user_or_a_model_wrote_is_shown_as_text_not_markup():
    """Run ids, commands, errors, model labels, prompts and samples are the user's or the
    model's text: each goes on the page escaped, the same in a comparison."""
    from lm.report_render import ModelSection, RunReport, render_comparison

    hostile = "<script>x()</script>"
    sample = {"prompt": f"p{hostile}", "text": f"p{hostile} t{hostile}"}
    model = ModelSection(f"m{hostile}", evaluated=True, evaluation={"eval/val/bpb": 1.0},
                         samples=[sample])  # fmt: skip
    report = RunReport(f"r{hostile}", "failed", command=f"lmforge run {hostile}",
                       error=f"boom {hostile}", models=[model])  # fmt: skip
    for page in (render_run_report(report).html,
                 render_comparison([report, RunReport("other", "completed")]).html):  # fmt: skip
        assert "<script>" not in page
        assert "&lt;script&gt;" in page
    escaped = "&lt;script&gt;x()&lt;/script&gt;"  # the prompt once, then what followed it
    assert f"<pre><b>p{escaped}</b> t{escaped}</pre>" in render_run_report(report).html


def test_the_run_card_gives_each_recorded_number_under_its_own_name():
    from lm.report_render import RunReport

    report = RunReport(
        "r1", "completed", started_at="2026-12-07 10:00:00", ended_at="2026-12-07 11:00:00",
        config={"word2vec": {"enabled": False}, "seed": 3},
        corpus={"digest": "abcdef0123456789", "kept": 90, "documents": 100,
                "kept_bytes": 2_500_000},
        run_metrics={"tokens/train": 1000.0, "tokens/val": 200.0, "tokens/test": 300.0},
    )  # fmt: skip
    card = Page(render_run_report(report).html).text["run"]
    assert "started / ended2026-12-07 10:00:00 → 2026-12-07 11:00:00" in card
    assert "corpusabcdef012345: 90 of 100 documents kept, 2.50 MB" in card
    assert "tokens per splittrain 1,000, val 200, test 300" in card
    assert "word2vecoff" in card


def test_the_evaluation_grid_puts_each_number_under_its_model_and_split():
    from lm.report_render import _evaluation_table

    table = _evaluation_table({"baseline/val/bpb": 3.25, "eval/test/bpb": 1.75,
                               "eval/val/bpb": 1.5, "eval/val/loss": 2.5})  # fmt: skip
    assert Page(table).header_cells == ["eval/val", "eval/test", "baseline/val"]
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows[1:]]
    assert cells == [["bpb", "1.5000", "1.7500", "3.2500"], ["loss", "2.5000", "—", "—"]]


def test_a_score_row_names_the_evaluation_s_scope_only_where_every_model_shares_it():
    from lm.report_render import ModelSection, _score_rows

    whole = ModelSection("a", evaluation_scoring="whole", scores={"val_bpb": 1.0})
    sample = ModelSection("b", evaluation_scoring="sample", scores={"val_bpb": 2.0})
    unscored = ModelSection("c", evaluation_scoring="sample", scores={"training_val_loss": 3.0})
    assert _score_rows([whole, sample]) == [["val bits per byte, evaluation", 1.0, 2.0]]
    assert _score_rows([whole, unscored]) == [
        ["val bits per byte, evaluation (whole split)", 1.0, None],
        ["best val loss (nats/token) during training (sampled windows)", None, 3.0],
    ]


def test_a_model_the_evaluate_stage_did_not_score_says_so_beside_one_it_did():
    from lm.report_render import ModelSection, RunReport

    scored = ModelSection("scored", evaluated=True, samples=[], scores={"val_bpb": 1.0})
    unscored = ModelSection("unscored", scores={"training_val_loss": 3.0})
    unrecorded = ModelSection("unrecorded", evaluated=True, scores={"val_bpb": 2.0})
    models = [scored, unscored, unrecorded]
    page = Page(render_run_report(RunReport("r", "failed", models=models)).html)
    assert "unscored: not evaluated in this run" in page.text["scores"]
    assert "scored: not evaluated" not in page.text["scores"].replace("unscored", "")
    assert "unscored: no samples recorded (no evaluate stage in this run)." in page.text["samples"]
    assert "scored: the evaluate stage drew no samples" in page.text["samples"]
    assert "unrecorded: no samples recorded." in page.text["samples"]  # it was evaluated


def test_throughput_gives_the_last_rate_and_the_median():
    from lm.report_render import Curve, ModelSection, RunReport, _median

    assert (_median([3.0, 1.0, 2.0]), _median([4.0, 1.0, 2.0, 10.0])) == (2.0, 3.0)
    curve = Curve([1, 2, 3, 4], [100.0, 300.0, 200.0, 250.0])
    model = ModelSection("gpt", curves={"train/tokens_per_s": curve})
    page = Page(render_run_report(RunReport("r", "completed", models=[model])).html)
    assert "gpt: 250 tokens/s at step 4 (median 225)" in page.text["throughput"]


def test_the_stages_table_says_which_stages_came_from_the_cache():
    from lm.report_render import RunReport, StageRow

    stages = [StageRow("ingest", True, 0.5), StageRow("clean", True, 1.0),
              StageRow("train", False, 2.25)]  # fmt: skip
    page = render_run_report(RunReport("r", "completed", stages=stages)).html
    text = Page(page).text["stages"]
    assert "ingestcached0.5" in text and "trainran2.25" in text
    assert "2 of 3 stages served from cache" in text


def test_a_comparison_names_each_model_and_gives_each_its_own_numbers(monkeypatch):
    import lm.report_render as render
    from lm.report_render import ModelSection, RunReport, render_comparison

    plotted = []
    monkeypatch.setattr(render, "_scores_plot", lambda rows: plotted.extend(rows) or PNG_MAGIC)

    def run(run_id: str, seed: int, *models: ModelSection) -> RunReport:
        return RunReport(run_id, "completed", config={"seed": seed, "model": {"kind": "gpt"}},
                         models=list(models))  # fmt: skip

    small = ModelSection("small", steps=4, tokens_seen=512, tokens_trained=256,
                         scores={"val_bpb": 2.0})  # fmt: skip
    ladder = run("r1", 1, small, ModelSection("big", steps=8, tokens_seen=1024,
                                              scores={"val_bpb": 1.5}))  # fmt: skip
    page = render_comparison([ladder, run("r2", 2, ModelSection("gpt")), run("r3", 1)]).html
    assert Page(page).header_cells[:5] == ["r1 small", "r1 big", "r2 gpt", "r3 (no model)", "r1"]
    rows = {}
    for row in re.findall("<tr>(.*?)</tr>", page):
        name, *values = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)
        rows[name] = values
    assert rows["steps"] == ["4", "8", "—", "—"]
    assert rows["tokens seen"] == ["512", "1,024", "—", "—"]
    assert rows["tokens behind the published weights"] == ["256", "—", "—", "—"]
    assert rows["seed"] == ["1", "2", "1"]  # r2 differs from r1, r3 does not: still a row
    assert [(name, scores["val_bpb"]) for name, scores in plotted] == [
        ("r1 small", 2.0), ("r1 big", 1.5)
    ]  # fmt: skip


def test_a_refused_folder_names_three_of_its_files_and_counts_the_rest(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt", "e.txt"):
        (folder / name).write_text("precious")
    with pytest.raises(ReportError, match=r"\(a\.txt, b\.txt, c\.txt and 2 more\)"):
        write_report_folder(RenderedReport("<p>new</p>", {}), folder)


def test_curves_of_models_with_and_without_tokens_per_step_share_one_unit(monkeypatch):
    """A comparison drew one run's val loss in steps and the other's in tokens on one axis,
    labelled by whichever came last."""
    from lm.report_render import Curve, ModelSection, _loss_plot

    steps_only = ModelSection("gpt", curves={"val/loss": Curve([100, 200], [3.0, 2.5])})
    by_tokens = ModelSection("gpt", tokens_per_step=4096,
                             curves={"val/loss": Curve([100, 200], [3.1, 2.6])})  # fmt: skip
    for series in ([("old", steps_only), ("new", by_tokens)],
                   [("new", by_tokens), ("old", steps_only)]):  # fmt: skip
        axes = drawn_axes(monkeypatch, _loss_plot, series, ("val/loss",), "val loss")
        assert axes.get_xlabel() == "optimizer step"
        assert [list(line.get_xdata()) for line in axes.lines] == [[100, 200], [100, 200]]
        assert [line.get_marker() for line in axes.lines] == ["o", "o"]  # val loss: markers
    axes = drawn_axes(monkeypatch, _loss_plot, [("new", by_tokens)], ("val/loss",), "val loss")
    assert axes.get_xlabel() == "tokens"
    assert list(axes.lines[0].get_xdata()) == [409_600, 819_200]


def test_every_control_character_is_written_as_its_code_and_cached_stages_are_grey(monkeypatch):
    from lm.report_render import RunReport, StageRow, _e, _stages_plot, _word2vec_section

    controls = [*range(0x20), 0x7F, *range(0x80, 0xA0)]
    kept = {"\t", "\n", "\r"}
    assert _e("".join(map(chr, controls))) == "".join(
        chr(c) if chr(c) in kept else f"\\x{c:02x}" for c in controls
    )
    stages = [StageRow("ingest", True, 0.5), StageRow("train", False, 2.0),
              StageRow("evaluate", False, 1.0)]  # fmt: skip
    axes = drawn_axes(monkeypatch, _stages_plot, stages)
    grey = [bar.get_facecolor() == (0.7, 0.7, 0.7, 1.0) for bar in axes.patches]
    assert grey == [False, False, True]  # drawn bottom up: ingest is the top bar
    word2vec = {"vocabulary": 120, "loss": 2.5, "projection": "pca"}
    table = _word2vec_section(RunReport("r", "completed", word2vec=word2vec), {})
    assert "loss" in table and "2.5000" in table and "120" in table
