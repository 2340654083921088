"""Scale-out of the CPU stages on the configured task runner: ingest reads its input files in
parts, clean annotates slices of the raw documents, encode encodes slices of the corpus; and each
stage's output is the same whatever the runner and the number of workers."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

import tasks.clean
import tasks.encode
import tasks.ingest
from flows.ingest_flow import plan_parts
from lm.config import (
    CleanConfig,
    ConfigError,
    IngestConfig,
    QualityConfig,
    RuntimeConfig,
    SourceConfig,
    SplitConfig,
    TokenizerConfig,
    parse_config,
)
from lm.text.clean import SlicePolicy, plan_slices
from lm.text.sources import InputError, ResolvedInput
from storage.artifacts import MANIFEST_FILE
from storage.corpus import DOCUMENTS_FILE
from storage.registry import RunRegistry
from tasks.clean import clean_task
from tasks.encode import encode_task, encode_workers
from tasks.ingest import ingest_task
from tasks.runners import MissingExtraError, make_task_runner
from tasks.tokenizer import tokenizer_task
from tests.helpers import prose, wiki_page, write_config, write_wiki_dump

RULES = QualityConfig(min_words=20)
# Small slices, so that a corpus of a few hundred kilobytes fans out into several.
SMALL_SLICES = SlicePolicy(min_bytes=32 << 10)

# What a published ingest or clean output holds: no part files left behind.
PUBLISHED_CORPUS = ["DONE", "descriptor.json", DOCUMENTS_FILE, MANIFEST_FILE]


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
    assert sorted(p.name for p in folder.iterdir()) == PUBLISHED_CORPUS
    shutil.rmtree(folder)  # the next clean must do the work again, not find this one
    return table, corpus


@pytest.mark.slow
def test_threads_and_processes_annotate_where_configured_and_give_one_workers_corpus(
    workspace, raw, monkeypatch
):
    monkeypatch.setattr(tasks.clean, "SLICE_POLICY", SMALL_SLICES)
    alone, one = clean_with(workspace, raw, RuntimeConfig(), workers=1)
    on_threads, threads = clean_with(workspace, raw, RuntimeConfig(max_workers=2), workers=2)
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


def test_on_threads_the_task_annotates_in_worker_processes_of_its_own(workspace, raw, monkeypatch):
    monkeypatch.setattr(tasks.clean, "SLICE_POLICY", SMALL_SLICES)
    alone, one = clean_with(workspace, raw, RuntimeConfig(), workers=1)
    runtime = RuntimeConfig(task_runner="threads", max_workers=2)
    in_task, corpus = clean_with(workspace, raw, runtime)
    # The GIL: annotation in threads would add cost, not speed; processes bring cores.
    assert corpus.stats["runner"] == "task-processes" and corpus.stats["workers"] == 2
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert here not in corpus.stats["annotated_by"]
    assert 1 <= len(corpus.stats["annotated_by"]) <= 2
    assert corpus.digest == one.digest and in_task.equals(alone)
    # Work for both workers although the raw file has 3 row groups: they are cut in parts that
    # cover every row once.
    ranges = tasks.clean.row_ranges(workspace.resolve(raw.path) / DOCUMENTS_FILE, 8)
    assert len(ranges) >= 8 and corpus.stats["slices"] == len(ranges)
    rows = [row for start, stop in ranges for row in range(start, stop)]
    assert rows == list(range(raw.stats["documents"]))


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


def test_worker_processes_report_to_this_process_s_temporary_server(monkeypatch):
    """Under LMFORGE_PREFECT_SERVER=ephemeral each worker process started a temporary Prefect
    server of its own (two more per fanned-out stage, ~10 s each on 2 cores)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class Running:
        running = True
        api_url = "http://127.0.0.1:8123/api"

    # Its only one: a suite run under LMFORGE_PREFECT_SERVER=ephemeral has its own running
    monkeypatch.setattr(SubprocessASGIServer, "_instances", {"test": Running()})
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        make_task_runner(RuntimeConfig(task_runner="threads"), workers=2)
        assert "PREFECT_API_URL" not in os.environ  # threads share this process's server
        make_task_runner(RuntimeConfig(task_runner="processes"), workers=2)
        assert os.environ["PREFECT_API_URL"] == Running.api_url
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere/api")
    make_task_runner(RuntimeConfig(task_runner="processes"), workers=2)
    assert os.environ["PREFECT_API_URL"] == "http://elsewhere/api"  # one set always wins


def test_a_run_on_a_configured_server_does_not_load_prefect_s_server_to_look_for_one():
    """With `PREFECT_API_URL` set (the workspace's server, the default), there is no temporary
    server to share: importing Prefect's server app to look for one took 1.5 s and 80 MB."""
    probe = (
        "import sys\n"
        "from lm.config import RuntimeConfig\n"
        "from tasks.runners import make_task_runner\n"
        "make_task_runner(RuntimeConfig(task_runner='processes'), workers=2)\n"
        "print('prefect.server.api.server' in sys.modules)\n"
    )
    environment = os.environ | {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=repo, env=environment, check=True)  # fmt: skip
    assert result.stdout.split()[-1] == "False"


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


# Ingest and encode.

TINY_PARTS = SlicePolicy(min_bytes=1)  # any file is worth a part
TINY_SLICES = SlicePolicy(min_bytes=1)  # every batch of corpus rows is worth a slice
THREADS = RuntimeConfig(task_runner="threads", max_workers=2)
PROCESSES = RuntimeConfig(task_runner="processes", max_workers=2)
ONE_WORKER = RuntimeConfig(max_workers=1)


@pytest.fixture
def inputs(tmp_path):
    """Seven input files of three formats, about 900 documents: JSON lines, plain text and a
    Wikipedia dump, whose markup column the parts must carry too."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for part in range(5):
        lines = [json.dumps({"text": prose(part * 1000 + n, 40)}) for n in range(180)]
        (folder / f"part{part}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "story.txt").write_text(prose(9999, 300))
    pages = [wiki_page(f"Page {n}", f"'''{n}''' is a [[place]]. " + prose(n, 80)) for n in range(3)]
    dump = write_wiki_dump(tmp_path / "wiki.xml.bz2", pages)
    return IngestConfig(sources=[{"path": str(folder)}, {"path": str(dump)}], row_group_docs=100)


def file_digests(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}


def ingest_with(workspace, config: IngestConfig, runtime: RuntimeConfig):
    """Ingest from scratch on `runtime`; the raw documents file's digest and the descriptor."""
    raw = ingest_task.fn(config, runtime)
    folder = workspace.resolve(raw.path)
    assert sorted(p.name for p in folder.iterdir()) == PUBLISHED_CORPUS
    digests = file_digests(folder, [DOCUMENTS_FILE])
    shutil.rmtree(folder)  # the next ingest must do the work again, not find this one
    return digests, raw


@pytest.mark.slow
def test_threads_and_processes_read_the_files_in_parts_and_give_the_inline_raw_corpus(
    workspace, inputs, monkeypatch, caplog
):
    monkeypatch.setattr(tasks.ingest, "PART_POLICY", TINY_PARTS)
    alone, inline = ingest_with(workspace, inputs, ONE_WORKER)
    caplog.clear()  # where the root's handler is caplog's, it heard the inline run too
    progress = logging.getLogger("lm.progress")
    progress.addHandler(caplog.handler)  # Prefect's logging set-up took the root's handlers
    try:
        with caplog.at_level(logging.INFO, logger="lm.progress"):
            on_threads, threads = ingest_with(workspace, inputs, THREADS)
    finally:
        progress.removeHandler(caplog.handler)
    # A part's lines name its inputs: each said "ingest: ... (100%)" while the stage was not.
    said = {
        r.getMessage().split(":")[1]
        for r in caplog.records
        if r.name == "lm.progress" and r.getMessage().startswith("ingest: ")
    }
    assert " read" in said and " inputs 0-1" in said
    assert all(part == " read" or part.startswith(" inputs ") for part in said)
    on_processes, processes = ingest_with(workspace, inputs, PROCESSES)

    assert inline.stats["runner"] == "inline"
    assert threads.stats["runner"] == "threads" and threads.stats["parts"] >= 3
    assert processes.stats["runner"] == "processes"
    assert processes.stats["parts"] == threads.stats["parts"]
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert threads.stats["read_by"] == [here]  # threads of this very process
    assert here not in processes.stats["read_by"]  # worker processes
    assert inline.digest == threads.digest == processes.digest
    assert alone == on_threads == on_processes  # the Parquet file, byte for byte
    assert inline.stats["documents"] == processes.stats["documents"] == 5 * 180 + 1 + 3


def test_few_or_small_input_files_are_read_in_the_task_itself(workspace, inputs, tmp_path):
    _, small = ingest_with(workspace, inputs, PROCESSES)
    assert small.stats["runner"] == "inline"  # 7 files, 300 kB: far under two parts' worth
    one_file = IngestConfig(sources=[{"path": str(tmp_path / "inputs" / "part0.jsonl")}])
    _, alone = ingest_with(workspace, one_file, THREADS)
    assert alone.stats["runner"] == "inline"


def test_parts_are_runs_of_consecutive_files_balanced_by_size():
    spec = SourceConfig(path="x")
    sizes = [8 << 20, 8 << 20, 1 << 20, 1 << 20, 1 << 20, 14 << 20, None]
    inputs = [ResolvedInput(f"f{n}", spec, size=size) for n, size in enumerate(sizes)]
    parts = plan_parts(inputs, workers=2, policy=SlicePolicy(min_bytes=4 << 20))
    assert [item for part in parts for item in part.inputs] == inputs  # each once, in order
    assert [p.index for p in parts] == list(range(len(parts)))
    assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
    assert len(parts) > 2 and max(p.size for p in parts) <= 14 << 20  # big files alone
    assert parts[-1].inputs[-1].name == "f6"  # a URL's unknown size counts as a part's worth
    capped = plan_parts(inputs, workers=2, policy=SlicePolicy(min_bytes=1, max_docs=2))
    assert max(len(p.inputs) for p in capped) <= 2


def test_a_bad_file_read_in_a_part_fails_the_ingest_naming_it(workspace, inputs, monkeypatch):
    monkeypatch.setattr(tasks.ingest, "PART_POLICY", TINY_PARTS)
    bad = Path(inputs.sources[0].path) / "part3.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text here"}\n')
    with pytest.raises(InputError, match=r"part3\.jsonl:2: no field 'text'"):
        ingest_task.fn(inputs, THREADS)
    assert not list((workspace.artifacts / "ingest").glob("*")), "no output, no staging left"


@pytest.fixture
def encoded_corpus(workspace, inputs):
    """The corpus of `inputs` (about 900 kept documents, four batches of corpus rows) and a
    BPE tokenizer and a char tokenizer trained on it."""
    raw = ingest_task.fn(inputs, ONE_WORKER)
    corpus = clean_task.fn(raw, CleanConfig(quality=RULES, workers=1), SplitConfig(val=0.2))
    bpe = tokenizer_task.fn(corpus, TokenizerConfig(kind="bpe", vocab_size=400))
    char = tokenizer_task.fn(corpus, TokenizerConfig(kind="char"))
    return corpus, {"bpe": bpe, "char": char}


SHARD_FILES = ["train.bin", "train.json", "val.bin", "val.json", "test.bin", "test.json"]


def encode_with(workspace, corpus, tokenizer, runtime: RuntimeConfig):
    """Encode from scratch on `runtime`; the digest of every shard file and the descriptor."""
    shards = encode_task.fn(corpus, tokenizer, SplitConfig(val=0.2), runtime)
    folder = workspace.resolve(shards.path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["DONE", "descriptor.json", MANIFEST_FILE, *SHARD_FILES]
    )
    digests = file_digests(folder, SHARD_FILES)
    shutil.rmtree(folder)
    return digests, shards


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_threads_and_processes_encode_slices_into_the_inline_shards(
    workspace, encoded_corpus, monkeypatch, kind, caplog
):
    corpus, tokenizers = encoded_corpus
    monkeypatch.setattr(tasks.encode, "SLICE_POLICY", TINY_SLICES)
    alone, inline = encode_with(workspace, corpus, tokenizers[kind], ONE_WORKER)
    on_processes, processes = encode_with(workspace, corpus, tokenizers[kind], PROCESSES)
    monkeypatch.setattr(tasks.encode, "encode_workers", lambda runtime: 2)  # threads, forced
    caplog.clear()  # where the root's handler is caplog's, it heard the runs above too
    progress = logging.getLogger("lm.progress")
    progress.addHandler(caplog.handler)  # Prefect's logging set-up took the root's handlers
    try:
        with caplog.at_level(logging.INFO, logger="lm.progress"):
            on_threads, threads = encode_with(workspace, corpus, tokenizers[kind], THREADS)
    finally:
        progress.removeHandler(caplog.handler)
    # The stage's own line ends at 100% (it said "encode: 0 B / 291.0 kB (0%)" after the slices).
    said = [
        r.getMessage()
        for r in caplog.records
        if r.name == "lm.progress" and r.getMessage().startswith("encode: ")
    ]
    assert said and "(100%)" in said[-1] and not said[-1].startswith("encode: slices")

    assert inline.stats["runner"] == "inline"
    assert threads.stats["runner"] == "threads" and threads.stats["slices"] >= 3
    assert processes.stats["runner"] == "processes"
    assert processes.stats["slices"] == threads.stats["slices"]
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert threads.stats["encoded_by"] == [here]
    assert processes.stats["encoded_by"] and here not in processes.stats["encoded_by"]
    assert alone == on_threads == on_processes  # every shard and sidecar, byte for byte
    assert inline.digest == threads.digest == processes.digest
    assert inline.stats["splits"] == threads.stats["splits"] == processes.stats["splits"]
    assert all(inline.stats["splits"][split]["documents"] > 0 for split in ("train", "val"))


def test_encoding_fans_out_on_worker_processes_and_dask_never_on_threads():
    assert encode_workers(RuntimeConfig(max_workers=4)) == 1  # the tokenizer has the cores
    assert encode_workers(RuntimeConfig(task_runner="processes", max_workers=4)) == 4
    assert encode_workers(RuntimeConfig(task_runner="dask", max_workers=3)) == 3


def test_a_small_corpus_is_encoded_in_the_task_itself(workspace, encoded_corpus):
    corpus, tokenizers = encoded_corpus
    _, shards = encode_with(workspace, corpus, tokenizers["char"], PROCESSES)
    assert shards.stats["runner"] == "inline"  # 300 kB of text: far under two slices' worth


def test_the_doc_id_order_and_the_ordered_split_are_encoded_in_the_task(
    workspace, encoded_corpus, monkeypatch
):
    corpus, tokenizers = encoded_corpus
    monkeypatch.setattr(tasks.encode, "SLICE_POLICY", TINY_SLICES)
    for split in (SplitConfig(val=0.2, shuffle=True), SplitConfig(method="ordered")):
        shards = encode_task.fn(corpus, tokenizers["char"], split, PROCESSES)
        assert shards.stats["runner"] == "inline"


@pytest.mark.slow
def test_thousands_of_files_read_in_parts_stay_under_prefect_s_parameter_limit(
    workspace, tmp_path, monkeypatch
):
    """The parts went to the read subflow as its parameters, every file's name, size and
    time: from about 2,200 files Prefect refused the flow run (a 422, over 512 KB)."""
    monkeypatch.setattr(tasks.ingest, "PART_POLICY", TINY_PARTS)
    folder = tmp_path / "many-notes-in-a-folder-with-a-long-name"
    folder.mkdir()
    for n in range(3000):
        (folder / f"note-{n:05d}-written-on-a-long-afternoon.txt").write_text(prose(n, 12))
    raw = ingest_task.fn(IngestConfig(sources=[{"path": str(folder)}]), THREADS)
    assert raw.stats["runner"] == "threads" and raw.stats["parts"] >= 2
    assert raw.stats["documents"] == 3000


def test_a_fanned_out_ingest_gives_prefect_its_source_urls_without_their_tokens(
    tmp_path, monkeypatch
):
    """The `ingest-read` subflow's parameters are kept in Prefect's database and shown in its
    UI: a source URL's token was there, whatever the registry hid (h147)."""
    from lm.text.sources import resolve_sources
    from storage.workspace import Workspace

    urls = [f"https://h.example/{name}.txt?token=SECRET1" for name in ("a", "b", "c")]
    config = IngestConfig(sources=[SourceConfig(path=url) for url in urls])
    given = []

    class Subflow:
        def with_options(self, task_runner):
            return lambda **parameters: given.append(parameters) or []

    monkeypatch.setattr(tasks.ingest, "read_parts", Subflow())
    workspace = Workspace(tmp_path / "home").ensure()
    inputs = resolve_sources(config.sources)
    runtime = RuntimeConfig(max_workers=3)
    tasks.ingest._read(inputs, config, runtime, workspace, tmp_path / "scratch")
    [parameters] = given
    shown = [source.path for source in parameters["config"].sources]
    assert shown == [url.replace("SECRET1", "***") for url in urls]
    assert config.sources[0].path == urls[0]  # the settings themselves are unchanged
