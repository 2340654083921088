"""The default `lmforge run` on the bundled corpus, as a user runs it, then run again fully
cached, and what its registry and corpus answer. The slowest test of the suite, in a file of its
own so that the two test workers share the long files between them."""

from __future__ import annotations

import re

from storage.registry import RunRegistry
from tests.conftest import run_cli
from tests.test_cli import completed_digests, printed_stage_states


def test_default_run_on_the_bundled_corpus_then_fully_cached(workspace):
    settings = ["train.max_steps=10", "train.eval_every=5", "eval.batches=4", "eval.samples=1",
                "eval.sampling.max_new_tokens=32"]  # fmt: skip
    short = [word for setting in settings for word in ("--set", setting)]
    first = run_cli("run", *short)
    stages = ["ingest", "clean", "tokenizer", "encode", "word2vec", "train", "evaluate"]
    assert printed_stage_states(first.stdout) == dict.fromkeys(stages, "ran")
    assert "bits per byte on held-out text" in first.stdout
    _, models = RunRegistry(workspace.registry_path).query(
        "SELECT kind, val_bpb, baseline_val_bpb FROM models"
    )
    assert len(models) == 1 and models[0][0] == "gpt" and models[0][1] > 0 and models[0][2] > 0
    assert f"{models[0][1]:.4f}" in first.stdout
    run_id = re.search(r"run (\d{8}-\d{6}-\w+)", first.stdout).group(1)
    assert f"next: lmforge report {run_id}  ·  lmforge generate {run_id} --prompt" in first.stdout
    second = run_cli("run", *short)
    assert printed_stage_states(second.stdout) == dict.fromkeys(stages, "cached")
    assert len(set(completed_digests(workspace))) == 1

    stats = run_cli("corpus", "stats", "--all").stdout
    for page in ("#Anarchism", "#Autism", "#Albedo"):  # real pages of the bundled dump
        assert page in stats
    assert "gensim:lee_background.cor" in stats

    markup = run_cli(
        "sql",
        "SELECT count(*) AS with_markup FROM corpus WHERE source_file LIKE 'gensim:enwiki%' AND "
        "(text LIKE '%{{%' OR text LIKE '%[[%' OR text LIKE '%<ref%' OR text LIKE '%|}%')",
    ).stdout
    assert "│ 0 " in markup

    joined = run_cli(
        "sql",
        "SELECT r.run_id, d.kept, f.filter, f.removed FROM runs r "
        "JOIN datasets d ON d.digest = r.corpus_digest "
        "JOIN dataset_filters f ON f.dataset_digest = d.digest WHERE f.filter = 'exact_duplicate'",
    ).stdout
    assert joined.count("exact_duplicate") == 2  # one row per run

    _, rows = RunRegistry(workspace.registry_path).query(
        "SELECT value FROM latest_metrics WHERE key = 'word2vec/wordsim353_spearman'"
    )
    assert all(value > 0.2 for (value,) in rows), "gensim's Lee tutorial reaches 0.074"
    _, tokenizers = RunRegistry(workspace.registry_path).query(
        "SELECT kind, vocab_size, bytes_per_token FROM tokenizers"
    )
    assert len(tokenizers) == 1 and tokenizers[0][:2] == ("bpe", 4000)
    assert len(list((workspace.artifacts / "word2vec").glob("*/projection.png"))) == 1
    for split in ("train", "val", "test"):
        assert len(list((workspace.artifacts / "shards").glob(f"*/{split}.bin"))) == 1

    listing = run_cli("runs").stdout
    assert listing.count("completed") == 2
    run_id = listing.split("\n")[3].split("│")[1].strip()
    shown = run_cli("runs", "show", run_id[:15]).stdout
    assert "reproduce: lmforge run" in shown and "configs/default.toml" in shown
    assert "--set train.max_steps=10" in shown
    finished_ingest = r"│ ingest\s*│ cached\s*│ [\d.]+\s*│ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s*│"
    assert re.search(finished_ingest, shown), shown  # each stage with when it finished
