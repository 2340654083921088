"""The `ablation` flow: shared stages once, every variant × seed trained and scored, a table of
mean ± std over seeds."""

from __future__ import annotations

import statistics

import pytest

from lm.config import ConfigError
from storage.registry import RunRegistry
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


def test_an_ablation_without_variants_is_a_clear_error(workspace, tmp_path):
    from flows.ablation import ablation

    config = write_config(tmp_path / "none.toml", [{"path": str(tmp_path)}], "[model]\nkind='mlp'")
    with pytest.raises(ConfigError, match=r"none.toml: an ablation needs \[\[ablation"):
        ablation(config=str(config))
