"""Scale-out of the clean stage: annotation fans out over slices on the configured task runner,
and the corpus is the same whatever the runner and the number of workers."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import socket
import sys

import pyarrow.parquet as pq
import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

import tasks.clean
from lm.config import (
    CleanConfig,
    ConfigError,
    IngestConfig,
    QualityConfig,
    RuntimeConfig,
    SplitConfig,
    parse_config,
)
from lm.text.clean import SlicePolicy, plan_slices
from storage.corpus import DOCUMENTS_FILE
from storage.registry import RunRegistry
from tasks.clean import clean_task
from tasks.ingest import ingest_task
from tasks.runners import MissingExtraError, make_task_runner
from tests.helpers import prose, write_config

RULES = QualityConfig(min_words=20)
# Small slices, so that a corpus of a few hundred kilobytes fans out into several.
SMALL_SLICES = SlicePolicy(min_bytes=32 << 10)


@pytest.fixture
def source(tmp_path):
    """About 300 kB of documents with exact and near duplicates far from their originals, in
    other slices, so that the sequential decisions have to see across slices."""
    texts = [prose(seed, 200) for seed in range(240)]
    texts[150] = texts[3]
    words = texts[10].split()
    words[100] = "zebra"
    texts[220] = " ".join(words)
    texts[60] = "too short"
    path = tmp_path / "documents.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


@pytest.fixture
def raw(workspace, source):
    return ingest_task.fn(IngestConfig(sources=[{"path": str(source)}], row_group_docs=100))


def clean_with(workspace, raw, runtime: RuntimeConfig, workers: int = 0):
    """Clean from scratch on `runtime`; the corpus table and its descriptor."""
    config = CleanConfig(quality=RULES, workers=workers)
    corpus = clean_task.fn(raw, config, SplitConfig(), runtime)
    folder = workspace.resolve(corpus.path)
    table = pq.read_table(folder / DOCUMENTS_FILE)
    assert sorted(p.name for p in folder.iterdir()) == ["DONE", "descriptor.json", DOCUMENTS_FILE]
    shutil.rmtree(folder)  # the next clean must do the work again, not find this one
    return table, corpus


@pytest.mark.slow
def test_threads_and_processes_annotate_where_configured_and_give_one_workers_corpus(
    workspace, raw, monkeypatch
):
    monkeypatch.setattr(tasks.clean, "SLICE_POLICY", SMALL_SLICES)
    alone, one = clean_with(workspace, raw, RuntimeConfig(), workers=1)
    on_threads, threads = clean_with(workspace, raw, RuntimeConfig(max_workers=2))
    processes_runtime = RuntimeConfig(task_runner="processes", max_workers=2)
    on_processes, processes = clean_with(workspace, raw, processes_runtime)

    assert one.stats["runner"] == "inline"
    assert threads.stats["runner"] == "threads" and threads.stats["slices"] >= 4
    assert processes.stats["runner"] == "processes"
    assert processes.stats["slices"] == threads.stats["slices"]
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert threads.stats["annotated_by"] == [here]  # threads of this very process
    assert here not in processes.stats["annotated_by"]  # worker processes
    assert 1 <= len(processes.stats["annotated_by"]) <= 2

    assert one.digest == threads.digest == processes.digest
    assert alone.equals(on_threads) and alone.equals(on_processes)  # every column, every row
    assert processes.stats["removed"]["exact_duplicate"] == 1  # across slices
    assert processes.stats["removed"]["near_duplicate"] == 1


def test_a_small_corpus_is_annotated_in_the_task_itself(workspace, raw):
    _, corpus = clean_with(workspace, raw, RuntimeConfig(task_runner="processes", max_workers=2))
    assert corpus.stats["runner"] == "inline"  # 300 kB is far under two slices' worth


def test_slices_cover_every_row_once_on_batch_boundaries_balanced_by_bytes():
    batch_bytes = [1_000_000] * 4 + [10_000] * 40  # a few long articles, then many short stories
    total = 44 * 32 - 5
    slices = plan_slices(batch_bytes, 32, total, workers=2, policy=SlicePolicy(min_bytes=500_000))
    assert [s.index for s in slices] == list(range(len(slices)))
    assert slices[0].start == 0 and slices[-1].stop == total
    assert all(a.stop == b.start for a, b in itertools.pairwise(slices))
    assert all(s.start % 32 == 0 for s in slices)
    # A slice per article batch; the short stories together are less than a slice's worth.
    assert [s.documents for s in slices] == [32, 32, 32, 32, total - 4 * 32]


def test_slices_respect_the_size_limits():
    assert len(plan_slices([500_000] * 10, 32, 320, workers=8)) == 1  # 5 MB: not worth it
    many = plan_slices([1 << 20] * 100, 32, 3200, workers=2, policy=SlicePolicy(max_docs=64))
    assert max(s.documents for s in many) == 64 and sum(s.documents for s in many) == 3200
    assert plan_slices([], 32, 0, workers=2) == []


def test_runtime_config_picks_the_runner_and_its_worker_count():
    threads = make_task_runner(RuntimeConfig(max_workers=3))
    processes = make_task_runner(RuntimeConfig(task_runner="processes"), workers=2)
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    assert isinstance(processes, ProcessPoolTaskRunner) and processes._max_workers == 2


def test_dask_without_the_extra_names_the_command_that_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[dask\]'"):
        make_task_runner(RuntimeConfig(task_runner="dask"))


def test_a_dask_address_without_the_dask_runner_is_a_config_error():
    data = {"ingest": {"sources": ["x.txt"]}, "runtime": {"dask_address": "tcp://h:8786"}}
    with pytest.raises(ConfigError, match=r"t\.toml: 'runtime': dask_address is set but"):
        parse_config(data, origin="t.toml")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("prefect_dask") is None, reason="the dask extra is not installed"
)
def test_dask_runner_gives_the_same_corpus(workspace, raw, monkeypatch):
    monkeypatch.setattr(tasks.clean, "SLICE_POLICY", SMALL_SLICES)
    alone, one = clean_with(workspace, raw, RuntimeConfig(), workers=1)
    on_dask, dask = clean_with(workspace, raw, RuntimeConfig(task_runner="dask", max_workers=2))
    assert dask.stats["runner"] == "dask" and dask.stats["slices"] > 1
    assert f"{socket.gethostname()}:{os.getpid()}" not in dask.stats["annotated_by"]
    assert dask.digest == one.digest and on_dask.equals(alone)


def test_a_fanned_out_clean_is_one_cached_stage_of_the_pipeline(
    workspace, source, tmp_path, monkeypatch
):
    from flows.pipeline import lm_pipeline

    monkeypatch.setattr(tasks.clean, "SLICE_POLICY", SMALL_SLICES)
    config = write_config(tmp_path / "fan-out.toml", [{"path": str(source)}])
    overrides = ["clean.workers=2", 'runtime.task_runner="threads"']
    first = lm_pipeline(config=str(config), overrides=overrides)
    second = lm_pipeline(config=str(config), overrides=overrides)
    clean = [stage for stage in first["stages"] if stage["stage"] == "clean"]
    assert len(clean) == 1 and not clean[0]["cached"]
    assert clean[0]["stats"]["runner"] == "threads" and clean[0]["stats"]["slices"] > 1
    assert [s["cached"] for s in second["stages"] if s["stage"] == "clean"] == [True]
    _, rows = RunRegistry(workspace.registry_path).query(
        "SELECT count(*) FROM stages WHERE stage = 'clean'"
    )
    assert rows == [(2,)]  # one row per run, however many slices
