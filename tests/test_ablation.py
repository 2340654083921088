"""The `ablation` flow: shared stages once, every variant × seed trained and scored, a table of
mean ± std over seeds; a variant that fails costs only its own results."""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lm.config import ConfigError
from storage.registry import RunRegistry
from storage.workspace import Workspace
from tests.conftest import run_cli
from tests.helpers import prose, write_config

TINY = """
[split]
val = 0.3
test = 0.0

[model]
kind = "gpt"
block_size = 16
n_layer = 1
n_head = 2
n_embd = 16
mlp = "gelu"

[train]
max_steps = 6
micro_batch = 4
global_batch = 4
eval_every = 6
eval_batches = 2

[eval]
batches = 4
batch_size = 4
samples = 0

[ablation]
seeds = [1, 2]

[[ablation.variants]]
name = "gelu"

[[ablation.variants]]
name = "swiglu"
model = { mlp = "swiglu" }
"""


@pytest.fixture
def config(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for index in range(10):
        (folder / f"doc{index}.txt").write_text(prose(index, 120))
    return write_config(tmp_path / "ablation.toml", [{"path": str(folder)}], TINY)


def test_ablation_shares_the_data_stages_and_tabulates_mean_and_spread(workspace, config):
    from flows.ablation import ablation

    summary = ablation(config=str(config))
    stages = [stage["stage"] for stage in summary["stages"]]
    for shared in ("ingest", "clean", "tokenizer", "encode"):
        assert stages.count(shared) == 1, shared
    trained = sorted(s for s in stages if s.startswith("train/"))
    assert trained == [
        "train/gelu/seed-1", "train/gelu/seed-2", "train/swiglu/seed-1", "train/swiglu/seed-2",
    ]  # fmt: skip
    results = {r["variant"]: r for r in summary["results"]}
    assert set(results) == {"gelu", "swiglu"}
    for result in results.values():
        by_seed = list(result["val_bpb_by_seed"].values())
        assert result["seeds"] == 2 and len(set(by_seed)) == 2  # seeds really differ
        assert result["val_bpb_mean"] == pytest.approx(statistics.fmean(by_seed))
        assert result["val_bpb_std"] == pytest.approx(statistics.stdev(by_seed))
    assert "± " in summary["table"] and "swiglu" in summary["table"]
    _, rows = RunRegistry(workspace.registry_path).query(
        "SELECT count(*), count(DISTINCT val_bpb) FROM models WHERE run_id = ?",
        [summary["run_id"]],
    )
    assert rows == [(4, 4)]
    _, commands = RunRegistry(workspace.registry_path).query("SELECT command FROM runs")
    assert commands == [(f"lmforge ablation {config}",)]  # was: `lmforge run`, another flow
    table_file = workspace.runs / summary["run_id"] / "ablation.md"
    assert table_file.read_text().strip() == summary["table"]
    # Each variant's mean and spread are its own metrics (`runs show`), not one run-level row.
    _, logged = RunRegistry(workspace.registry_path).query(
        "SELECT model, key, value FROM latest_metrics WHERE run_id = ? AND key LIKE 'ablation/%'",
        [summary["run_id"]],
    )
    logged = {(model, key): value for model, key, value in logged}
    for variant, result in results.items():
        assert logged[variant, "ablation/val_bpb_mean"] == pytest.approx(result["val_bpb_mean"])
        assert logged[variant, "ablation/val_bpb_std"] == pytest.approx(result["val_bpb_std"])


def test_an_ablation_of_one_seed_finishes_and_claims_no_spread(workspace, config):
    # Its spread (None) was logged as a metric: a TypeError after every variant had trained.
    from flows.ablation import ablation

    summary = ablation(config=str(config), overrides=["ablation.seeds=[3]"])
    results = {r["variant"]: r for r in summary["results"]}
    assert set(results) == {"gelu", "swiglu"}
    assert all(r["seeds"] == 1 and r["val_bpb_std"] is None for r in results.values())
    assert "± n/a" in summary["table"]


def test_an_arm_that_continues_a_model_gives_the_ablation_that_model_s_tokenizer(
    workspace, config, tmp_path
):
    """Scratch against continued, on new data: the continued arm's checkpoint was made with
    the tokenizer of the old data, and a tokenizer trained on the new was refused by it."""
    from flows.ablation import ablation
    from flows.pipeline import lm_pipeline

    bpe = ['tokenizer={kind="bpe", vocab_size=400}', "ablation.seeds=[1]"]
    first = lm_pipeline(config=str(config), overrides=bpe)
    (tmp_path / "texts" / "new.txt").write_text(prose(77, 300))
    path = json.dumps(first["models"][-1]["path"])
    text = config.read_text().replace(
        'name = "swiglu"\nmodel = { mlp = "swiglu" }',
        f'name = "continued"\ntrain = {{ init_from = {path} }}',
    )
    config.write_text(text)
    summary = ablation(config=str(config), overrides=bpe)
    tokenizer = next(stage for stage in summary["stages"] if stage["stage"] == "tokenizer")
    assert tokenizer["output_digest"] == first["tokenizer"]["digest"]
    assert {r["variant"] for r in summary["results"]} == {"gelu", "continued"}


def test_an_ablation_without_variants_is_a_clear_error(workspace, tmp_path):
    from flows.ablation import ablation

    config = write_config(tmp_path / "none.toml", [{"path": str(tmp_path)}], "[model]\nkind='mlp'")
    with pytest.raises(ConfigError, match=r"none.toml: an ablation needs \[\[ablation"):
        ablation(config=str(config))


# The same two variants, with a third between them whose learning rate makes the loss infinite
# at the first update: training raises TrainingError, as on a diverging run.
BROKEN = TINY.replace(
    '''[[ablation.variants]]
name = "swiglu"''',
    '''[[ablation.variants]]
name = "diverges"
train = { learning_rate = 1e30 }

[[ablation.variants]]
name = "swiglu"''',
)
GOOD_LABELS = ["gelu/seed-1", "gelu/seed-2", "swiglu/seed-1", "swiglu/seed-2"]


@dataclass
class BrokenAblation:
    workspace: Workspace
    config: Path
    error: Exception  # what the flow raised
    run_id: str


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> BrokenAblation:
    """One ablation whose middle variant fails for both seeds, shared by the tests below."""
    from flows.ablation import AblationError, ablation

    root = tmp_path_factory.mktemp("broken-ablation")
    folder = root / "texts"
    folder.mkdir()
    for index in range(10):
        (folder / f"doc{index}.txt").write_text(prose(index, 120))
    config = write_config(root / "ablation.toml", [{"path": str(folder)}], BROKEN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_HOME", str(root / "workspace"))
        with pytest.raises(AblationError) as raised:
            ablation(config=str(config))
        workspace = Workspace.from_env()
        yield BrokenAblation(workspace, config, raised.value, raised.value.summary["run_id"])


def registry(broken: BrokenAblation) -> RunRegistry:
    return RunRegistry(broken.workspace.registry_path)


def markdown_rows(text: str) -> dict[str, list[str]]:
    """The cells of each row of a markdown table, by its first cell."""
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_a_failing_variant_leaves_the_others_table_and_a_line_saying_why(broken):
    table = (broken.workspace.runs / broken.run_id / "ablation.md").read_text()
    rows = markdown_rows(table)
    _, scored = registry(broken).query(
        "SELECT label, val_bpb FROM models WHERE run_id = ?", [broken.run_id]
    )
    for variant in ("gelu", "swiglu"):  # before and after the failing one
        bpb = [value for label, value in scored if label.startswith(f"{variant}/")]
        mean, std = statistics.fmean(bpb), statistics.stdev(bpb)
        assert rows[variant][:1] == ["2"] and rows[variant][2] == f"{mean:.4f} ± {std:.4f}"
    assert rows["diverges"] == ["0 of 2", "—", "failed", "failed", "train.learning_rate = 1e+30"]
    # Each row says what it measured: its name need not.
    assert rows["gelu"][-1] == "none (the base)" and rows["swiglu"][-1] == 'mlp = "swiglu"'
    for seed in (1, 2):
        line = re.search(rf"^- diverges, seed {seed}: (.*)$", table, re.MULTILINE)
        assert line and line.group(1).startswith("TrainingError: loss is "), table


class SectionTables(HTMLParser):
    """The rows of the tables in one section of a report page, each row its cells' text."""

    def __init__(self, text: str, section: str):
        super().__init__()
        self.section, self.inside, self.rows = section, False, []
        self._cell: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.inside = dict(attrs).get("id") == self.section
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if self.inside and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_the_ablation_report_shows_the_table_of_ablation_md(broken):
    page = Path(broken.error.summary["report"]).read_text(encoding="utf-8")
    shown = SectionTables(page, "ablation").rows
    table = (broken.workspace.runs / broken.run_id / "ablation.md").read_text()
    expected = [[variant, *cells] for variant, cells in markdown_rows(table).items()]
    assert {row[0] for row in expected} == {"gelu", "swiglu", "diverges"}
    assert [row for row in shown if len(row) == 6][1:] == expected  # after the header row
    failures = [list(line) for line in re.findall(r"^- (\S+), seed (\d+): (.*)$", table, re.M)]
    assert len(failures) == 2 and [row for row in shown if len(row) == 3][1:] == failures


def test_a_failing_variant_still_fails_the_ablation_naming_it(broken):
    from flows.ablation import AblationError

    assert isinstance(broken.error, AblationError)
    message = str(broken.error)
    assert "2 of 6 variant × seed runs failed" in message
    assert "diverges, seed 1: TrainingError" in message and "diverges, seed 2:" in message
    assert "\n" not in message


def test_a_partly_failed_ablation_is_recorded_failed_with_the_models_that_finished(broken):
    _, runs = registry(broken).query("SELECT status, error FROM runs")
    assert [(status, error) for status, error in runs] == [("failed", str(broken.error))]
    _, models = registry(broken).query(
        "SELECT label, val_bpb FROM models WHERE run_id = ? ORDER BY label", [broken.run_id]
    )
    assert [label for label, _ in models] == GOOD_LABELS
    assert all(val_bpb is not None for _, val_bpb in models)


def test_the_stage_journal_of_a_failed_arm_leaves_no_stage_running(broken):
    """Had the ablation been killed after its failed arms, the next run would name no stage it
    was in, and take none of the failed arms' curves for its own."""
    from storage.stage_journal import JOURNAL_FILE, read_stage_journal

    journal = read_stage_journal(broken.workspace.runs / broken.run_id / JOURNAL_FILE)
    assert journal.unfinished == {}
    _, stages = registry(broken).query(
        "SELECT stage FROM stages WHERE run_id = ? ORDER BY rowid", [broken.run_id]
    )
    assert [record.stage for record in journal.finished] == [stage for (stage,) in stages]


@pytest.fixture(scope="module")
def rerun(broken):
    """The same ablation again, by the command a user types."""
    return run_cli("ablation", str(broken.config), check=False, home=broken.workspace.root)


def test_the_command_prints_the_table_and_exits_1_naming_the_failed_variant(rerun):
    assert rerun.returncode == 1
    assert "| gelu | 2 |" in rerun.stdout and "- diverges, seed 2: TrainingError" in rerun.stdout
    assert "error: ablation: 2 of 6 variant × seed runs failed" in rerun.stderr


def test_a_rerun_serves_the_variants_that_finished_from_cache(broken, rerun):
    _, rows = registry(broken).query(
        "SELECT r.run_id, s.stage, s.cached FROM runs r JOIN stages s USING (run_id) "
        "WHERE r.run_id <> ? AND s.stage LIKE 'train/%'",
        [broken.run_id],
    )
    assert {stage: cached for _, stage, cached in rows} == {
        f"train/{label}": True for label in GOOD_LABELS
    }  # the failing variant recorded no train stage: it trained again, and failed again


def test_a_resumed_seed_s_speed_counts_only_the_tokens_trained_in_its_seconds():
    from lm.ablation_table import summarize

    whole = {"val_bpb": 2.0, "tokens_seen": 1000, "tokens_this_run": 1000, "seconds": 2.0,
             "parameters": 10}  # fmt: skip
    resumed = whole | {"tokens_this_run": 250, "seconds": 0.5}  # killed at 75 %, then rerun
    table = summarize([("a", 1), ("a", 2)], [("a", 1, whole), ("a", 2, resumed)], [])
    # Was 1,250 ± 1,061. (No changes given: "—".)
    assert table.rows() == [["a", "2", "10", "2.0000 ± 0.0000", "500 ± 0", "—"]]
    # Resumed at its end (killed after its last checkpoint): no tokens in its seconds, no speed.
    finished = whole | {"tokens_this_run": 0, "seconds": 0.4}
    table = summarize([("a", 1), ("a", 2)], [("a", 1, whole), ("a", 2, finished)], [])
    assert table.rows() == [["a", "2", "10", "2.0000 ± 0.0000", "500 ± n/a", "—"]]  # was 250 ± 354
    alone = summarize([("a", 2)], [("a", 2, finished)], [])
    assert alone.rows() == [["a", "1", "10", "2.0000 ± n/a", "n/a", "—"]]
    # Over the steps' own seconds where recorded: the first arm's set-up and evaluations were
    # in the stage's seconds, and made it look slowest.
    first = whole | {"seconds": 8.0, "step_seconds": 2.0}
    table = summarize([("a", 1), ("a", 2)], [("a", 1, first), ("a", 2, whole)], [])
    assert table.rows() == [["a", "2", "10", "2.0000 ± 0.0000", "500 ± 0", "—"]]
    # Over the steps after the first where recorded: the first arm of a process paid for its
    # start-up in its first step (587 tokens/s against 1,808 to 4,729 of the same model).
    cold = whole | {"step_seconds": 4.0, "steady_tokens": 900, "steady_seconds": 1.8}
    table = summarize([("a", 1), ("a", 2)], [("a", 1, cold), ("a", 2, whole)], [])
    assert table.rows() == [["a", "2", "10", "2.0000 ± 0.0000", "500 ± 0", "—"]]


def test_a_variant_that_lost_a_seed_says_how_many_finished_and_claims_no_spread_from_one():
    from lm.ablation_table import AblationTable, FailedArm, summarize

    def stats(val_bpb: float) -> dict:
        return {"val_bpb": val_bpb, "tokens_seen": 1000, "seconds": 2.0, "parameters": 10}

    planned = [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    scored = [("a", 1, stats(2.0)), ("a", 2, stats(2.2)), ("b", 1, stats(1.9))]
    failed = [FailedArm("b", 2, "TrainingError: loss is nan")]
    table = summarize(planned, scored, failed, {"a": "", "b": 'mlp = "swiglu"'})
    rows = {row[0]: row[1:] for row in table.rows()}
    assert rows == {
        "b": ["1 of 2", "10", "1.9000 ± n/a", "500 ± n/a", 'mlp = "swiglu"'],
        "a": ["2", "10", "2.1000 ± 0.1414", "500 ± 0", "none (the base)"],
    }
    assert AblationTable.from_json(json.loads(json.dumps(table.to_json()))) == table
    assert table.markdown().endswith("\n- b, seed 2: TrainingError: loss is nan")


def test_the_variants_are_ranked_by_their_mean_over_every_seed_best_first():
    """Three seeds, where the mean and the median disagree (two seeds could not tell them
    apart): `b` is best on average though `a` had the best seed and the best median."""
    from lm.ablation_table import summarize

    bpb = {"a": [2.0, 2.1, 2.9], "b": [2.2, 2.2, 2.3], "c": [3.0, 3.1, 3.2]}
    stats = {"tokens_seen": 1000, "seconds": 2.0, "parameters": 10}
    scored = [
        (variant, seed, stats | {"val_bpb": value})
        for variant, values in bpb.items()
        for seed, value in enumerate(values, 1)
    ]
    table = summarize([(variant, seed) for variant, seed, _ in scored], scored, [])
    assert [result.variant for result in table.results] == ["b", "a", "c"]
    for result in table.results:
        assert result.val_bpb_mean == pytest.approx(statistics.fmean(bpb[result.variant]))
        assert result.val_bpb_by_seed == dict(enumerate(bpb[result.variant], 1))
    assert [row[3] for row in table.rows()] == ["2.2333 ± 0.0577", "2.3333 ± 0.4933",
                                                "3.1000 ± 0.1000"]  # fmt: skip


def test_a_long_error_is_cut_to_its_line_length_with_the_ellipsis():
    from lm.ablation_table import ERROR_CHARACTERS, one_line_error

    cut = one_line_error(RuntimeError("x" * 1000))
    assert len(cut) == ERROR_CHARACTERS and cut.endswith("x…")
    assert one_line_error(RuntimeError("a\n  b")) == "RuntimeError: a b"


def test_a_failed_ablation_s_message_counts_the_arms_that_finished():
    from pathlib import Path

    from flows.ablation import _failure_message
    from lm.ablation_table import AblationTable, FailedArm

    failed = [FailedArm("b", 1, "TrainingError: loss is nan"), FailedArm("b", 2, "OOM")]
    message = _failure_message(AblationTable([], failed), 6, Path("runs/r/ablation.md"))
    assert message == ("ablation: 2 of 6 variant × seed runs failed (the table of the 4 that "
                       "finished is in runs/r/ablation.md): b, seed 1: TrainingError: loss is "
                       "nan; b, seed 2: OOM")  # fmt: skip
    none = _failure_message(AblationTable([], failed), 2, Path("runs/r/ablation.md"))
    assert none.startswith("ablation: 2 of 2 variant × seed runs failed (none finished): ")
