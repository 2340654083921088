"""The `lm-pipeline` flow end to end on small inputs: real Prefect, Parquet and DuckDB."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from lm.config import ConfigError, load_config
from lm.machine import cpu_model_name
from lm.text.sources import InputError
from storage.corpus import CORPUS_SCHEMA, DOCUMENTS_FILE
from storage.heartbeat import HEARTBEAT_FILE
from storage.registry import RunRegistry
from tests.conftest import cli_in_process
from tests.helpers import (
    prose,
    serving_busy_once,
    warnings_said_by,
    wiki_page,
    write_config,
    write_wiki_dump,
)


def run_pipeline(config, overrides=()):
    from flows.pipeline import lm_pipeline

    return lm_pipeline(config=str(config), overrides=list(overrides))


def stage_states(summary: dict) -> dict[str, str]:
    return {s["stage"]: "cached" if s["cached"] else "ran" for s in summary["stages"]}


def corpus_file(workspace, summary) -> str:
    return str(workspace.resolve(summary["corpus"]["path"]) / DOCUMENTS_FILE)


def heartbeats_beating() -> bool:
    """Whether a run's heartbeat thread is still touching its file in this process."""
    return any(t.name == "lmforge-heartbeat" and t.is_alive() for t in threading.enumerate())


def test_pipeline_writes_a_parquet_corpus_and_a_completed_run(workspace, config):
    summary = run_pipeline(config)
    path = corpus_file(workspace, summary)
    table = pq.read_table(path)
    assert table.schema.names == CORPUS_SCHEMA.names
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert len(pd.read_parquet(path)) == table.num_rows == 15
    sql = duckdb.connect()
    kept = sql.execute(f"SELECT count(*) FROM read_parquet('{path}') WHERE keep").fetchone()[0]
    assert kept == summary["corpus"]["kept"] == 13  # the duplicate and the short one removed
    gamma = sql.execute(f"SELECT text FROM read_parquet('{path}') WHERE source LIKE '%#Gamma'")
    assert gamma.fetchone()[0].startswith("Gamma is γάμμα a letter.")
    _, rows = RunRegistry(workspace.registry_path).query(
        "SELECT status, corpus_digest, flow_run_id IS NOT NULL FROM runs"
    )
    assert rows == [("completed", summary["corpus"]["digest"], True)]
    # What the figures were computed on: processor, cores and PyTorch's thread count.
    import torch

    _, rows = RunRegistry(workspace.registry_path).query("SELECT device FROM runs")
    [(device,)] = rows
    assert device.startswith(f"{cpu_model_name()}, {os.cpu_count()} core")
    assert f", {torch.get_num_threads()} torch thread" in device


def test_second_run_with_nothing_changed_is_served_from_cache(workspace, config):
    first = run_pipeline(config)
    second = run_pipeline(config)
    assert set(stage_states(first).values()) == {"ran"}
    assert set(stage_states(second).values()) == {"cached"}
    assert list(stage_states(second)) == ["ingest", "clean", "tokenizer", "encode"]
    assert second["corpus"]["digest"] == first["corpus"]["digest"]


@pytest.mark.parametrize(
    ("new_name", "overrides"),
    [("doc05-renamed.txt", []), ("aaa-first-now.txt", ["split.shuffle=true"])],
    ids=["same-place", "another-place-under-shuffle"],
)
def test_a_renamed_source_file_encoding_to_the_same_tokens_trains_nothing(
    workspace, config, tmp_path, new_name, overrides
):
    """The shards' digest was their cache key: a renamed file (a new corpus digest, the same
    text) encoded to byte-identical shards, then trained and scored every model again. The
    corpus lists files by path, and a hash split's shards follow it: a rename that moves a file
    in that list reorders them (and trains again); shuffled shards follow content. The stages
    that read only the kept text follow the corpus's text digest (ids and splits in order, no
    paths): a rename in place (or a moved folder) tokenizes and encodes nothing again."""
    first = run_pipeline(config, [*TINY_GPT, *overrides])
    (tmp_path / "texts" / "doc05.txt").rename(tmp_path / "texts" / new_name)
    second = run_pipeline(config, [*TINY_GPT, *overrides])
    states = stage_states(second)
    assert second["corpus"]["digest"] != first["corpus"]["digest"]
    in_place = new_name == "doc05-renamed.txt"  # the kept text in the same order
    assert states["tokenizer"] == states["encode"] == ("cached" if in_place else "ran")
    assert states["train"] == states["evaluate"] == "cached"
    assert second["models"][-1]["val_bpb"] == first["models"][-1]["val_bpb"]


def test_every_stage_is_journaled_beside_the_run_s_metrics_as_it_finishes(workspace, config):
    """The journal a killed run leaves holds what the record of a finished one does, times
    included: each stage is recorded as finished when it finished, not when the run ended."""
    from storage.stage_journal import JOURNAL_FILE, read_stage_journal

    summary = run_pipeline(config)
    journal = read_stage_journal(workspace.runs / summary["run_id"] / JOURNAL_FILE)
    assert [asdict(stage) for stage in journal.finished] == summary["stages"]
    assert journal.unfinished == {}
    registry = RunRegistry(workspace.registry_path)
    _, rows = registry.query(
        "SELECT s.finished_at, r.ended_at FROM stages s JOIN runs r USING (run_id) "
        "WHERE run_id = ? ORDER BY s.finished_at",
        [summary["run_id"]],
    )
    finished = [stage.finished_at for stage in journal.finished]
    assert [stage_end for stage_end, _ in rows] == finished == sorted(set(finished))
    assert finished[0] < rows[0][1]  # the first stage ended well before the run did
    # Its heartbeat, which dates a killed run's end, was touched and stopped once recorded.
    assert (workspace.runs / summary["run_id"] / HEARTBEAT_FILE).is_file()
    assert not heartbeats_beating()


def test_changing_a_cleaning_threshold_reruns_clean_and_nothing_upstream(workspace, config):
    first = run_pipeline(config)
    second = run_pipeline(config, ["clean.quality.min_words=160"])
    assert stage_states(second) == {
        "ingest": "cached", "clean": "ran", "tokenizer": "ran", "encode": "ran"
    }  # fmt: skip
    assert second["corpus"]["kept"] < first["corpus"]["kept"]
    _, rows = RunRegistry(workspace.registry_path).query(
        "SELECT stage, bool_or(cached) FROM stages GROUP BY stage ORDER BY stage"
    )
    assert rows == [("clean", False), ("encode", False), ("ingest", True), ("tokenizer", False)]


def test_a_missing_output_directory_is_a_cache_miss_not_an_error(workspace, config):
    first = run_pipeline(config)
    shutil.rmtree(workspace.resolve(first["corpus"]["path"]))
    second = run_pipeline(config)
    assert stage_states(second) == {
        "ingest": "cached", "clean": "ran", "tokenizer": "cached", "encode": "cached"
    }  # fmt: skip
    assert second["corpus"]["digest"] == first["corpus"]["digest"]
    assert (workspace.resolve(second["corpus"]["path"]) / DOCUMENTS_FILE).is_file()


def test_a_truncated_output_is_built_again_not_handed_on(workspace, config):
    first = run_pipeline(config)
    documents = corpus_file(workspace, first)
    with open(documents, "r+b") as parquet:
        parquet.truncate(100)
    warnings: list[str] = []
    listener = logging.Handler(logging.WARNING)
    listener.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("storage.artifacts").addHandler(listener)
    try:
        second = run_pipeline(config)
    finally:
        logging.getLogger("storage.artifacts").removeHandler(listener)
    damaged = [message for message in warnings if "damaged" in message]
    assert len(damaged) == 1 and "documents.parquet" in damaged[0], damaged  # was: twice
    assert stage_states(second) == {
        "ingest": "cached", "clean": "ran", "tokenizer": "cached", "encode": "cached"
    }  # fmt: skip
    assert len(pq.read_table(documents)) == 15
    assert not list(workspace.corpus.glob("*.partial-*")), "the damaged copy was removed"


def flip_a_bit_of_the_text(path: str, column: str = "text") -> None:
    """One bit changed in the compressed data of the last page of the first row group's
    `column` (a page's data follows its header), the file's size kept."""
    metadata = pq.ParquetFile(path).metadata
    text = metadata.schema.to_arrow_schema().get_field_index(column)
    chunk = metadata.row_group(0).column(text)
    where = (
        (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size - 2
    )
    with open(path, "r+b") as parquet:
        parquet.seek(where)
        byte = parquet.read(1)[0]
        parquet.seek(where)
        parquet.write(bytes([byte ^ 0x10]))


@pytest.mark.parametrize(
    ("damaged", "reader"),
    [("ingest", "clean.quality.min_words=19"), ("clean", "tokenizer.unknown_chars=bytes")],
)
def test_bytes_changed_in_a_stored_corpus_are_named_then_built_again(
    workspace, config, damaged, reader
):
    """Damage of the same size (a bad sector, a stray write): the manifest checks sizes only,
    and 6 in 10 single-bit flips of a zstd corpus file read back silently as other text. The
    pages' checksums name the file; the rerun builds it again from its inputs."""
    from storage.corpus import CorpusError

    first = run_pipeline(config)
    folder = workspace.artifacts / "ingest" if damaged == "ingest" else workspace.corpus
    [documents] = [str(path) for path in folder.glob(f"*/{DOCUMENTS_FILE}")]
    flip_a_bit_of_the_text(documents)
    said = rf"{re.escape(documents)}: damaged, .*CRC.*rerun: it will be built again"
    with pytest.raises(CorpusError, match=said):
        run_pipeline(config, [reader])  # a stage that reads it
    second = run_pipeline(config, [reader])
    assert stage_states(second)[damaged] == "ran"
    assert second["corpus"]["digest"] == first["corpus"]["digest"]
    assert pq.ParquetFile(documents, page_checksum_verification=True).read().num_rows > 0


def damaged_copies(tmp_path, where) -> Iterator[tuple[int, Path]]:
    """A raw documents file published as an output (`DONE`, `manifest.json`), and a copy of
    it with the byte at each of `where(file's bytes, metadata)` flipped, one at a time."""
    from storage.artifacts import DONE_MARKER, write_manifest
    from storage.corpus import RAW_SCHEMA, DocumentWriter

    folder = tmp_path / "ingest-k"
    folder.mkdir()
    path = folder / DOCUMENTS_FILE
    with DocumentWriter(path, RAW_SCHEMA, row_group_rows=10) as writer:
        for number in range(30):
            writer.write({"source": "s", "source_file": f"f{number % 3}.txt", "markup": "text",
                          "text": prose(number, 40), "part_of": None})  # fmt: skip
    whole = path.read_bytes()
    write_manifest(folder)
    for position in where(whole, pq.ParquetFile(path).metadata):
        flipped = bytearray(whole)
        flipped[position] ^= 0x10
        path.write_bytes(flipped)
        (folder / DONE_MARKER).write_text("x")
        yield position, path


def test_a_changed_byte_in_a_page_header_or_the_footer_is_named_as_damage(tmp_path):
    """A page's checksum covers its data, not its header, and the footer has none: a byte
    changed there was pyarrow's `ArrowInvalid` ("Index not in dictionary bounds") or "Couldn't
    deserialize thrift", naming no file, and the output's `DONE` marker stayed: every rerun
    failed the same way."""
    from storage.corpus import CorpusError, open_parquet, read_raw_rows

    def page_headers(whole: bytes, metadata) -> list[int]:
        # Not the footer's bytes in a loop: a few of them end pyarrow (C++ std::terminate).
        chunk = metadata.row_group(0).column(0)
        starts = {chunk.dictionary_page_offset or chunk.data_page_offset, chunk.data_page_offset}
        return sorted({at + step for at in starts for step in range(24)})

    errors = 0
    for position, path in damaged_copies(tmp_path, page_headers):
        try:
            rows = sum(len(batch) for batch in read_raw_rows(path, 0, 30))
        except CorpusError as error:
            errors += 1
            assert str(error).startswith(f"{path}: damaged") and "rerun" in str(error), position
            assert not (path.parent / "DONE").exists(), position
            continue
        assert rows == 30, position  # read, the same or as other text: nothing tells
    assert errors
    with pytest.raises(CorpusError, match=re.escape(str(path))):
        path.write_bytes(b"PAR1" + b"\0" * 64 + (40).to_bytes(4, "little") + b"PAR1")
        open_parquet(path)


def test_every_byte_of_the_footer_changed_is_named_as_damage_before_pyarrow_reads_it(tmp_path):
    """The footer (schema, row groups, page offsets) has no page checksum: a changed byte there
    was "Couldn't deserialize thrift", or, for a few bytes, C++'s `std::terminate`, ending the
    process with no word of the file. The manifest records its digest, checked on opening."""
    from storage.corpus import CorpusError, iter_split_texts, open_parquet, row_count
    from storage.parquet_footer import FOOTERS

    def footer(whole: bytes, metadata) -> range:
        return range(len(whole) - 8 - int.from_bytes(whole[-8:-4], "little"), len(whole))

    checked = 0
    for position, path in damaged_copies(tmp_path, footer):
        for read in (open_parquet, row_count, lambda p: next(iter_split_texts(p, "train"))):
            with pytest.raises(CorpusError, match=rf"^{re.escape(str(path))}: damaged, .*foot"):
                read(path)
        checked += 1
        assert not (path.parent / "DONE").exists(), position
    manifest = json.loads((path.parent / "manifest.json").read_text())
    [(name, (length, _))] = manifest[FOOTERS].items()
    assert name == DOCUMENTS_FILE and checked == length > 100
    whole = bytearray(path.read_bytes())
    whole[position] ^= 0x10  # the last byte flipped back: the file as written reads
    path.write_bytes(whole)
    assert row_count(path) == 30


def test_a_second_reader_of_the_same_damage_is_told_to_rerun_too(tmp_path):
    """Two stages (or two runs) reading one damaged output: the first removes its `DONE`
    marker; the second was told only that the file was damaged, with no way on."""
    from storage.corpus import CorpusError, read_raw_rows

    def in_the_text(whole: bytes, metadata) -> list[int]:
        chunk = metadata.row_group(0).column(2)
        return [(chunk.dictionary_page_offset or chunk.data_page_offset)
                + chunk.total_compressed_size - 2]  # fmt: skip

    [(_, path)] = list(damaged_copies(tmp_path, in_the_text))
    for _reader in range(2):
        with pytest.raises(CorpusError, match="rerun: it will be built again"):
            list(read_raw_rows(path, 0, 30))


def test_the_retrain_s_counts_check_the_columns_duckdb_counts(workspace, config, tmp_path):
    """The counts of renamed documents and of held-out text trained on read the corpus with
    DuckDB, which checks no page checksum: a changed byte of a `doc_id` was counted as a
    renamed document, silently."""
    from storage.corpus import (
        CorpusError,
        documents_renamed,
        held_out_edited,
        held_out_trained_on,
    )

    current = corpus_file(workspace, run_pipeline(config))
    previous = tmp_path / "previous.parquet"
    shutil.copyfile(current, previous)
    assert documents_renamed(previous, current)[0] == 0
    assert held_out_trained_on(previous, current) == held_out_edited(previous, current) == 0
    flip_a_bit_of_the_text(str(previous), "doc_id")
    for count in (documents_renamed, held_out_trained_on, held_out_edited):
        with pytest.raises(CorpusError, match=rf"^{re.escape(str(previous))}: damaged"):
            count(previous, current)


def test_a_retrain_s_increment_is_the_new_train_text_and_the_held_out_text_checksummed(
    workspace, config, tmp_path
):
    """The increment (the documents a champion has not trained on) was copied by DuckDB: its
    inputs read without their pages' checksums, and itself written without any."""
    from storage.artifacts import Descriptor
    from storage.corpus import CorpusError, iter_split_texts, open_parquet
    from tasks.increment import increment_task

    def corpus_descriptor(summary) -> Descriptor:
        folder = workspace.resolve(summary["corpus"]["path"])
        return Descriptor(**json.loads((folder / "descriptor.json").read_text()))

    first = run_pipeline(config)
    for number in range(100, 106):
        (tmp_path / "texts" / f"new{number}.txt").write_text(prose(number, 150))
    second = run_pipeline(config)
    increment = increment_task.fn(corpus_descriptor(second), corpus_descriptor(first))
    made = str(workspace.resolve(increment.path) / DOCUMENTS_FILE)
    expected = duckdb.sql(
        f"SELECT doc_id, split FROM read_parquet('{corpus_file(workspace, second)}') WHERE keep "
        f"AND (split <> 'train' OR doc_id NOT IN (SELECT doc_id FROM read_parquet("
        f"'{corpus_file(workspace, first)}') WHERE keep AND split = 'train'))"
    ).fetchall()
    table = open_parquet(made).read()
    assert (
        list(zip(table["doc_id"].to_pylist(), table["split"].to_pylist(), strict=True)) == expected
    )
    new_train = [doc_id for doc_id, split in expected if split == "train"]
    assert 0 < len(new_train) <= 6 and increment.stats["new_train_documents"] == len(new_train)
    assert increment.stats["split_bytes"] == {
        split: sum(len(text.encode()) for text, s in zip(table["text"].to_pylist(),
                                                         table["split"].to_pylist(), strict=True)
                   if s == split)
        for split in set(table["split"].to_pylist())
    }  # fmt: skip
    # Flipped, a byte of its text is an error naming it, never other text (DuckDB's copy,
    # without checksums, read back as other text for 1 flip in 2).
    whole = Path(made).read_bytes()
    chunk = pq.ParquetFile(made).metadata.row_group(0).column(table.schema.get_field_index("text"))
    first = chunk.dictionary_page_offset or chunk.data_page_offset
    texts = table["text"].to_pylist()
    for position in range(first, first + chunk.total_compressed_size, 7):
        flipped = bytearray(whole)
        flipped[position] ^= 0x10
        Path(made).write_bytes(flipped)
        try:  # as the encode stage reads it
            read = [text for batch in iter_split_texts(Path(made), "train") for text in batch]
        except CorpusError as error:
            assert str(error).startswith(made), position
            continue
        assert read == [t for t, s in zip(texts, table["split"].to_pylist(), strict=True)
                        if s == "train"], position  # fmt: skip


def test_changing_a_source_file_reruns_ingest(workspace, config, tmp_path):
    first = run_pipeline(config)
    (tmp_path / "texts" / "new.txt").write_text(prose(99, 150))
    second = run_pipeline(config)
    assert set(stage_states(second).values()) == {"ran"}
    assert second["corpus"]["documents"] == first["corpus"]["documents"] + 1


def test_unknown_config_key_names_the_key_and_the_file(workspace, tmp_path, config):
    config.write_text(config.read_text() + "\n[split]\nvalidation = 0.1\n")
    with pytest.raises(ConfigError, match=r"small\.toml: unknown key 'split\.validation'"):
        run_pipeline(config)


@pytest.mark.parametrize("flow", ["run", "retrain", "ablation"])
def test_a_config_a_flow_refuses_is_recorded_as_a_failed_run(workspace, tmp_path, config, flow):
    """As a deployment run sent with a bad config would be: the command line refuses it before
    any flow starts, a worker only in the flow. It was a Failed flow run in Prefect alone."""
    from flows.ablation import ablation
    from flows.pipeline import lm_pipeline
    from flows.retrain import retrain

    chosen = {"run": lm_pipeline, "retrain": retrain, "ablation": ablation}[flow]
    config.write_text(config.read_text() + "\n[split]\nvalidation = 0.1\n")
    with pytest.raises(ConfigError, match=r"small\.toml: unknown key 'split\.validation'"):
        chosen(config=str(config), overrides=["seed=3"])
    missing = tmp_path / "gone.toml"
    with pytest.raises(ConfigError, match=r"gone\.toml: no such config file"):
        chosen(config=str(missing))
    registry = RunRegistry(workspace.registry_path)
    _, rows = registry.query(
        "SELECT preset, config_path, status, seconds, error, command, config FROM runs "
        "ORDER BY started_at"
    )
    assert [row[:4] for row in rows] == [
        ("test", str(config), "failed", 0.0),  # the name small.toml gives, as its runs record
        ("gone", str(missing), "failed", 0.0),
    ]
    assert "unknown key 'split.validation'" in rows[0][4] and "before the run began" in rows[0][4]
    assert "no such config file" in rows[1][4]
    assert rows[0][5] == f"lmforge {flow} {config} --set seed=3"  # what was asked, to rerun
    assert rows[0][6] is None  # no settings were read
    for table in ("stages", "models", "datasets"):
        assert registry.query(f"SELECT count(*) FROM {table}")[1] == [(0,)]
    if flow == "run":  # two runs with no settings are not "config: identical"
        ids = [row[0] for row in registry.query("SELECT run_id FROM runs")[1]]
        compared = cli_in_process("runs", "compare", *ids).stdout
        assert "config: none recorded for" in compared and "identical" not in compared


def test_a_refused_run_records_the_name_set_for_it_and_never_one_the_config_refuses(tmp_path):
    """A deployment's `--set name=nightly` names its runs "nightly": its refusal was recorded
    under the file's name. A name `load_config` refuses (a control character: the refusal
    itself, perhaps) was recorded as the run's preset, and `runs` printed its newline."""
    from flows.pipeline import _preset_named

    config = tmp_path / "weekly.toml"
    config.write_text('name = "team"\n')
    assert _preset_named(str(config), []) == "team"
    assert _preset_named(str(config), ["seed=3", "name=nightly"]) == "nightly"
    assert _preset_named(str(config), ['name = "night run"']) == "night run"
    config.write_text('name = "a\\u0007b\\nc"\n')
    assert _preset_named(str(config), []) == "weekly"
    assert _preset_named(str(config), ['name=" "']) == "weekly"


def test_a_model_that_cannot_fit_the_memory_is_refused_before_the_run_opens(
    workspace, config, monkeypatch
):
    """The command line refuses it before any flow starts; a run a deployment started met it
    after every data stage, as the allocator's traceback or the OOM killer."""
    from lm import memory_fit

    monkeypatch.setattr(memory_fit, "machine_memory", lambda: (1024, "of RAM"))
    with pytest.raises(ConfigError, match=r"small\.toml: the model needs .* 0\.0 MiB of RAM"):
        run_pipeline(config, [*TINY_GPT, "train.device=cpu"])
    _, rows = RunRegistry(workspace.registry_path).query("SELECT status, error FROM runs")
    assert [row[0] for row in rows] == ["failed"] and "AdamW state alone" in rows[0][1]
    assert not any(workspace.artifacts.iterdir())  # no stage ran


def _bad_input(kind: str, tmp_path) -> dict:
    bad = tmp_path / "bad"
    bad.mkdir(exist_ok=True)
    if kind == "missing path":
        return {"path": str(bad / "nowhere")}
    if kind == "empty folder":
        (bad / "empty").mkdir()
        return {"path": str(bad / "empty")}
    if kind == "invalid utf-8":
        (bad / "latin1.txt").write_bytes(b"caf\xe9")
        return {"path": str(bad / "latin1.txt")}
    if kind == "truncated bz2":
        dump = write_wiki_dump(bad / "w.xml.bz2", [wiki_page(f"P{i}", prose(i)) for i in range(30)])
        dump.write_bytes(dump.read_bytes()[:-200])
        return {"path": str(dump)}
    if kind == "jsonl line that is not json":
        (bad / "b.jsonl").write_text('{"text": "ok"}\nnot json\n')
        return {"path": str(bad / "b.jsonl")}
    if kind == "parquet without the text column":
        pd.DataFrame({"body": ["x"]}).to_parquet(bad / "p.parquet")
        return {"path": str(bad / "p.parquet")}
    if kind == "texts all too short to keep":
        (bad / "short").mkdir()
        (bad / "short" / "a.txt").write_text("two words")
        (bad / "short" / "b.txt").write_text("three words here")
        return {"path": str(bad / "short")}
    if kind == "one document, held out":
        from lm.config import SplitConfig
        from lm.text.clean import split_of

        text = next(prose(seed) for seed in range(1000)
                    if split_of(hashlib.sha256(prose(seed).encode()).hexdigest(),
                                SplitConfig()) != "train")  # fmt: skip
        (bad / "alone.txt").write_text(text)
        return {"path": str(bad / "alone.txt")}
    assert kind == "unreachable url"
    return {"path": "http://127.0.0.1:9/corpus.jsonl"}


BAD_INPUTS = {
    "missing path": "nowhere: no such file",
    "empty folder": "empty: the folder contains no files",
    "invalid utf-8": r"latin1\.txt: invalid UTF-8 at byte 3",
    "truncated bz2": r"w\.xml\.bz2: the file is truncated or corrupt",
    "jsonl line that is not json": r"b\.jsonl:2: the line is not valid JSON",
    "parquet without the text column": r"p\.parquet: no column 'text'",
    "unreachable url": r"127\.0\.0\.1:9/corpus\.jsonl: cannot fetch",
    "texts all too short to keep": r"cleaning kept none of the 2 documents \(removed by: "
    r"too_few_words 2\); loosen \[clean\] .*Chinese, Japanese or Thai.*"
    r"clean\.quality\.enabled = false",
    "one document, held out": r"cleaning kept 1 document, but none is in the training split "
    r"\((val|test) 1\).*lower split\.val and split\.test",
}


def test_a_split_that_leaves_models_nothing_to_score_on_stops_after_cleaning():
    """Training said so stages later ("the val split has 0 tokens"), after the tokenizer and
    the encoding had run."""
    from flows.pipeline import require_kept_documents
    from lm.config import SplitConfig
    from storage.artifacts import Descriptor

    def corpus(**splits: int) -> Descriptor:
        stats = {"kept": sum(splits.values()), "split_documents": splits}
        return Descriptor("clean", "k", "corpus/k", "d", stats)

    no_val = corpus(train=3, val=0, test=1)
    with pytest.raises(InputError, match=r"kept 4 documents, but none is in the val split "
                       r"\(train 3, val 0, test 1\), which the models are scored and stopped "
                       r"on: the split is by a hash .*raise split\.val"):  # fmt: skip
        require_kept_documents(no_val, SplitConfig(), trains_models=True)
    require_kept_documents(no_val, SplitConfig(), trains_models=False)  # a tokenizer needs none
    require_kept_documents(no_val, SplitConfig(method="ordered"), trains_models=True)  # cut later
    with pytest.raises(InputError, match=r"split\.val is 0; set it above 0"):
        require_kept_documents(no_val, SplitConfig(val=0.0), trains_models=True)
    with pytest.raises(InputError, match=r"none is in the training split \(train 0, val 2\): "
                                         r"the split is at random by position"):  # fmt: skip
        require_kept_documents(corpus(train=0, val=2), SplitConfig(method="random"), False)


def test_one_text_file_kept_whole_is_told_of_the_ordered_split():
    """A user's first config (one .txt file, a model) kept one document: "add documents, or
    lower split.val and split.test" (or "raise split.val") could not be followed, as no
    fraction puts one document in two splits."""
    from flows.pipeline import require_kept_documents
    from lm.config import SplitConfig
    from storage.artifacts import Descriptor

    def corpus(**splits: int) -> Descriptor:
        stats = {"kept": sum(splits.values()), "split_documents": splits}
        return Descriptor("clean", "k", "corpus/k", "d", stats)

    ordered = r"with 1 document \(a plain text file is one document.*split\.method = \"ordered\""
    with pytest.raises(InputError, match=r"none is in the training split.*" + ordered):
        require_kept_documents(corpus(train=0, val=0, test=1), SplitConfig(), True)
    with pytest.raises(InputError, match=r"none is in the val split.*" + ordered):
        require_kept_documents(corpus(train=1, val=0, test=0), SplitConfig(), True)
    with pytest.raises(InputError) as many:  # plenty of documents: the advice as it was
        require_kept_documents(corpus(train=300, val=0, test=20), SplitConfig(), True)
    assert "ordered" not in str(many.value)
    # A retrain refuses any split but the hash split: advised to it, "ordered" led nowhere.
    with pytest.raises(InputError) as retrained:
        require_kept_documents(corpus(train=1, val=0, test=0), SplitConfig(), True, ordered=False)
    assert "one_doc_per_line = true" in str(retrained.value)
    assert "ordered" not in str(retrained.value)


def test_bad_input_fails_clearly_and_damages_nothing_stored(workspace, config, tmp_path):
    """Every kind of bad input, one after another in one workspace: each fails clearly, as a
    failed run, and none of them touches the corpus the good run stored (one good run and one
    cached rerun for all of them, not a pair for each: 66 s became 23 s)."""
    good = run_pipeline(config)
    corpus = corpus_file(workspace, good)
    before = pq.read_table(corpus)
    registry = RunRegistry(workspace.registry_path)
    for number, (kind, said) in enumerate(BAD_INPUTS.items(), start=1):
        folder = tmp_path / f"bad-{number}"
        folder.mkdir()
        bad_config = write_config(folder / "bad.toml", [_bad_input(kind, folder)])
        with pytest.raises(InputError, match=said):
            run_pipeline(bad_config)
        assert pq.read_table(corpus).equals(before), kind
        _, rows = registry.query("SELECT status, error FROM runs ORDER BY started_at")
        assert [status for status, _ in rows] == ["completed"] + ["failed"] * number, kind
        assert "InputError" in rows[-1][1], kind
        assert re.search(r" \(during stage (ingest|clean)\)$", rows[-1][1]), kind  # as a crash's
        assert not list(workspace.artifacts.glob("*/*.partial-*")), f"{kind}: staging left"
        assert not heartbeats_beating(), kind  # a failed run stops its heartbeat too
    assert set(stage_states(run_pipeline(config)).values()) == {"cached"}


def test_a_binary_file_is_skipped_and_a_source_cleaning_emptied_is_named_as_the_run_completes(
    workspace, config, tmp_path
):
    """A file of Chinese records among English texts lost every one to the word rules, and the
    run said only how many documents it kept: it is named, with the rules to loosen. The
    fixture's one-document copy and too-short text, removed too, are not."""
    (tmp_path / "texts" / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10)
    clause = "我们今天天气很好，学生喜欢北京的大学和图书馆。"
    records = [json.dumps({"text": clause * (8 + n)}, ensure_ascii=False) for n in range(6)]
    (tmp_path / "texts" / "zh.jsonl").write_text("\n".join(records) + "\n")
    with warnings_said_by("lm.pipeline") as warnings:
        summary = run_pipeline(config)
    assert summary["corpus"]["documents"] == 21  # the binary file contributed nothing
    (emptied,) = [w for w in warnings if w.startswith("cleaning kept none of the documents")]
    assert emptied.startswith(f"cleaning kept none of the documents of 1 of 16 sources: "
                              f"{tmp_path / 'texts' / 'zh.jsonl'} (6) (")  # fmt: skip
    assert "clean.quality.min_words" in emptied and "copy.txt" not in emptied


def test_shards_hold_every_split_separated_by_end_of_text(workspace, config):
    from lm.tokenizer import load_tokenizer
    from storage.corpus import iter_split_texts
    from storage.shards import open_shard

    summary = run_pipeline(config)
    tokenizer = load_tokenizer(workspace.resolve(summary["tokenizer"]["path"]))
    shards = workspace.resolve(summary["shards"]["path"])
    documents = corpus_file(workspace, summary)
    for split in ("train", "val", "test"):
        tokens, info = open_shard(shards / f"{split}.bin", tokenizer.digest)
        texts = [t for batch in iter_split_texts(documents, split) for t in batch]
        assert info.documents == len(texts) == int((tokens == tokenizer.eot_id).sum())
        pieces = _split_on(tokens.tolist(), tokenizer.eot_id)
        assert [tokenizer.decode(p) for p in pieces] == texts
        assert info.text_bytes == sum(len(t.encode()) for t in texts)


def _split_on(tokens: list[int], separator: int) -> list[list[int]]:
    documents, current = [], []
    for token in tokens:
        if token == separator:
            documents.append(current)
            current = []
        else:
            current.append(token)
    return documents


def test_tokenizer_and_word2vec_changes_rerun_only_what_depends_on_them(workspace, config):
    word2vec = ["word2vec.enabled=true", "word2vec.vector_size=16", "word2vec.epochs=1",
                "word2vec.min_count=1", 'word2vec.projection="pca"']  # fmt: skip
    run_pipeline(config, word2vec)
    tokenizer_changed = run_pipeline(config, [*word2vec, 'tokenizer.unknown_chars="bytes"'])
    assert stage_states(tokenizer_changed) == {
        "ingest": "cached", "clean": "cached", "tokenizer": "ran", "encode": "ran",
        "word2vec": "cached",
    }  # fmt: skip
    word2vec_changed = run_pipeline(config, [*word2vec, "word2vec.epochs=2"])
    assert stage_states(word2vec_changed) == {
        "ingest": "cached", "clean": "cached", "tokenizer": "cached", "encode": "cached",
        "word2vec": "ran",
    }  # fmt: skip
    on_pieces = run_pipeline(config, [*word2vec, 'word2vec.input="pieces"'])
    assert stage_states(on_pieces)["word2vec"] == "ran"


def test_new_probe_words_evaluate_the_vectors_trained_before(workspace, config, monkeypatch):
    """Probes, neighbours and the projection only look at the vectors: changing them retrained
    word2vec (hours on a large corpus) to the same vectors."""
    import tasks.word2vec

    word2vec = ["word2vec.enabled=true", "word2vec.vector_size=16", "word2vec.epochs=1",
                "word2vec.min_count=1", 'word2vec.projection="pca"']  # fmt: skip
    first = run_pipeline(config, word2vec)
    trainings = []
    real_train = tasks.word2vec.train_word2vec
    monkeypatch.setattr(tasks.word2vec, "train_word2vec",
                        lambda *args: trainings.append(args) or real_train(*args))  # fmt: skip
    probed = run_pipeline(
        config,
        [
            *word2vec,
            'word2vec.probes=["zzz", "river"]',
            "word2vec.neighbours=2",
            'word2vec.projection="tsne"',
        ],
    )
    assert stage_states(probed)["word2vec"] == "ran" and trainings == []

    def word2vec_stage(summary):
        return next(stage for stage in summary["stages"] if stage["stage"] == "word2vec")

    before, after = word2vec_stage(first), word2vec_stage(probed)
    assert before["output_digest"] == after["output_digest"]  # the same vectors
    assert before["output_path"] != after["output_path"]
    metrics = json.loads((workspace.resolve(after["output_path"]) / "metrics.json").read_text())
    assert set(metrics["neighbours"]) == {"river"}
    assert all(len(near) == 2 for near in metrics["neighbours"].values())
    epochs_changed = run_pipeline(config, [*word2vec, "word2vec.epochs=2"])
    assert stage_states(epochs_changed)["word2vec"] == "ran" and len(trainings) == 1


def test_the_stream_parts_of_one_long_text_cut_it_by_its_bytes(tmp_path):
    # One text, the ordered split's usual input, started in the train part, so the val part
    # held nothing: a document now gives each part its own bytes.
    import pyarrow as pa

    from lm.config import SplitConfig
    from storage.corpus import iter_split_part, iter_stream_part

    text = "".join(f"line {index:05d} ü\n" for index in range(10_000))  # 14 bytes a line
    path = tmp_path / DOCUMENTS_FILE
    pq.write_table(pa.table({"text": [text], "split": ["train"], "keep": [True]}), path)

    def part(start: float, end: float) -> str:
        return "".join(t for batch in iter_stream_part(path, start, end) for t in batch)

    total = len(text.encode())
    assert (part(0.0, 0.9) + part(0.9, 0.95) + part(0.95, 1.0)).encode() == text.encode()
    assert len(part(0.9, 0.95).encode()) == total // 20
    ordered = SplitConfig(method="ordered", val=0.05, test=0.05)
    held_out = "".join(t for batch in iter_split_part(path, "val", ordered) for t in batch)
    assert held_out == part(0.9, 0.95) and held_out.startswith("line 09000")


TINY_GPT = [
    'model.kind="gpt"', "model.block_size=16", "model.n_layer=1", "model.n_head=2",
    "model.n_embd=16", "train.max_steps=12", "train.micro_batch=4", "train.global_batch=4",
    "train.eval_every=6", "train.checkpoint_every=6", "train.eval_batches=2", "split.val=0.3",
    "eval.samples=1", "eval.sampling.max_new_tokens=8",  # samples took most of a tiny run
]  # fmt: skip


def test_a_model_stopped_early_says_the_step_of_the_weights_it_scores(workspace, config):
    """Early stopping trains `patience` evaluations past the best weights, which are the ones
    scored: "15 steps" beside a step-5 model's bits per byte read as the step-15 model's."""
    from flows.cli import _steps

    still = ["train.learning_rate=1e-12", "train.max_steps=200", "train.eval_every=5",
             "train.checkpoint_every=5", "train.patience=2"]  # fmt: skip
    [model] = run_pipeline(config, [*TINY_GPT, *still])["models"]
    assert (model["steps"], model["best_step"], model["stopped_early"]) == (15, 5, True)
    assert _steps(model) == "15 (best 5)"
    assert _steps({"steps": 12, "best_step": 12}) == _steps({"steps": 12}) == "12"


def test_train_stage_publishes_a_self_contained_model_and_its_baseline(workspace, config):
    import torch

    from storage.registry import RunRegistry

    summary = run_pipeline(config, TINY_GPT)
    model = summary["models"][-1]
    assert model["steps"] == 12 and model["tokens_seen"] == 12 * 4 * 16
    assert 0 < model["step_seconds"] < model["seconds"]  # the steps, not set-up or evaluations
    assert (model["device"], model["processes"]) == ("cpu", 1)
    assert model["threads"] == torch.get_num_threads()  # trained in this process
    assert model["device_name"] == cpu_model_name()
    vocabulary = (workspace.resolve(summary["tokenizer"]["path"]) / "tokenizer.json").read_text()
    log_vocab = math.log(len(json.loads(vocabulary)["chars"]) + 2)
    assert 0 < model["baseline_val_loss"] < log_vocab  # counts beat a uniform guess
    assert 0 < model["val_loss"] < log_vocab + 0.5  # twelve steps: near the uniform guess
    folder = workspace.resolve(model["path"])
    for part in ("best/model.pt", "final/model.pt", "final/DONE", "tokenizer/tokenizer.json",
                 "model.json", "train.json", "metrics.jsonl"):  # fmt: skip
        assert (folder / part).is_file(), part
    assert not list(folder.parent.glob("*.work")), "the work folder is gone once published"
    _, rows = RunRegistry(workspace.registry_path).query(
        "SELECT count(*) FILTER (key = 'train/loss'), max(value) FILTER (key = 'eval/val/loss'),"
        " max(value) FILTER (key = 'eval/val/bpb'), max(value) FILTER (key = 'baseline/val/bpb')"
        " FROM metrics"
    )
    assert rows[0][0] == 12 and rows[0][1] == pytest.approx(model["val_loss"])
    # One character is one byte here, so bits per byte are nats per token over ln 2.
    assert rows[0][2] == pytest.approx(model["val_loss"] / math.log(2), rel=1e-3)
    assert rows[0][3] == pytest.approx(model["baseline_val_bpb"]) and rows[0][3] < rows[0][2]
    bookkeeping = ["train.checkpoint_every=3", "train.keep_checkpoints=5"]
    again = run_pipeline(config, [*TINY_GPT, *bookkeeping])
    assert stage_states(again)["train"] == stage_states(again)["evaluate"] == "cached"
    changed = run_pipeline(config, [*TINY_GPT, 'model.pos="rope"'])
    assert stage_states(changed) == {
        "ingest": "cached", "clean": "cached", "tokenizer": "cached", "encode": "cached",
        "train": "ran", "evaluate": "ran",
    }  # fmt: skip


def test_a_run_scored_on_test_alone_records_no_val_loss_and_reports_its_test_bits(
    workspace, config
):
    from flows.report import build_run_report

    scored_on_test = ['eval.splits=["test"]', "split.val=0.25", "split.test=0.25"]
    summary = run_pipeline(config, [*TINY_GPT, *scored_on_test])
    _, rows = RunRegistry(workspace.registry_path).query(
        "SELECT val_loss, val_bpb, test_bpb FROM models WHERE run_id = ?", [summary["run_id"]]
    )
    [(val_loss, val_bpb, test_bpb)] = rows
    # Was training's loss on its sampled windows, in the evaluator's column.
    assert val_loss is None and val_bpb is None and test_bpb > 0
    page = build_run_report(summary["run_id"]).read_text()
    assert "Bits per byte were not recorded" not in page and 'src="scores.png"' in page


@pytest.mark.parametrize("stop", [RuntimeError("diverged"), KeyboardInterrupt()])
def test_a_training_that_fails_or_is_stopped_leaves_its_curve_to_the_run_s_report(
    workspace, config, stop
):
    """Only a crashed run's record read the curve from the work folder: a failed or stopped
    (Ctrl-C, SIGTERM) one said "No training curves were recorded"."""
    from prefect import task

    from flows.pipeline import open_run, record_failure, run_stage
    from storage.artifacts import ArtifactStore
    from storage.report_data import gather_run_report
    from storage.stage_journal import LiveMetrics

    live = workspace.root / "work" / "metrics.jsonl"

    @task(name="train")
    def training_that_stops():
        live.parent.mkdir(parents=True)
        points = [json.dumps({"key": "train/loss", "step": step, "value": 5.0 - step,
                              "ts": "2026-12-05T10:00:00"}) for step in (1, 2)]  # fmt: skip
        live.write_text("\n".join(points) + '\n{"key": "train/lo')  # its last line half-written
        raise stop

    run = open_run(load_config(str(config)), str(config), [])
    store = ArtifactStore(workspace.artifacts / "train", workspace.root)
    with pytest.raises(type(stop)):
        try:
            run_stage(run, training_that_stops, "k", store, live_metrics=LiveMetrics(live, "gpt"))
        except BaseException as error:
            record_failure(run, error)
            raise
    (model,) = gather_run_report(run.registry, workspace, run.run_id).models
    assert model.label == "gpt" and model.curves["train/loss"].values == [4.0, 3.0]
    # The failed run names the stage it failed in, as a crashed run does.
    error = run.registry.find_run(run.run_id)["error"]
    if isinstance(stop, KeyboardInterrupt):  # Ctrl-C: named as the signal it was
        assert error.startswith("stopped by SIGINT (Ctrl-C); a rerun "), error
        assert error.endswith(" (during stage train)"), error
    else:
        assert error == f"{type(stop).__name__}: {stop} (during stage train)"


def test_a_second_ctrl_c_waits_for_the_stopped_run_to_be_recorded(workspace, config, monkeypatch):
    """Ctrl-C twice: the second one, landing while the first's stop was recorded, interrupted
    DuckDB ("RuntimeError: Query interrupted") and the run stayed `running` (killed?)."""
    import signal

    import flows.pipeline as pipeline
    from flows.pipeline import open_run, record_failure

    recorded = pipeline.record_task

    def pressed_again(*arguments, **options):
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, as the record starts
        return recorded(*arguments, **options)

    monkeypatch.setattr(pipeline, "record_task", pressed_again)
    run = open_run(load_config(str(config)), str(config), [])
    record_failure(run, KeyboardInterrupt())
    found = run.registry.find_run(run.run_id)
    assert found["status"] == "failed", found
    assert found["error"].startswith("stopped by SIGINT (Ctrl-C)"), found["error"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_third_ctrl_c_stops_waiting_for_a_record_that_waits_on_the_registry():
    """A registry another process held kept the record waiting up to 120 s (forever on its
    writer's lock), and every Ctrl-C meanwhile was swallowed: one more press stops waiting."""
    import signal
    import time

    from flows.pipeline import _ctrl_c_deferred

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), _ctrl_c_deferred():
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C: waits for the record
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # the third: the record waits on the registry
        time.sleep(5)  # the record, waiting
    assert signal.getsignal(signal.SIGINT) is before


def test_a_damaged_published_model_falls_back_then_is_trained_again(workspace, config, caplog):
    import torch

    from lm.evaluate import CheckpointError, load_trained

    said = [logging.getLogger(name) for name in ("lm.evaluate", "lm.progress")]
    for logger in said:  # the flow's logging set-up replaced the root handlers caplog hears
        logger.addHandler(caplog.handler)
    try:
        first = run_pipeline(config, TINY_GPT)
    finally:
        for logger in said:
            logger.removeHandler(caplog.handler)
    # The baseline's fit is said before it starts (silent for tens of seconds on a large split),
    # and each evaluate pass is named (the baseline's read as the model's pass restarting).
    lines = [record.getMessage() for record in caplog.records]
    tokens = first["shards"]["splits"]["train"]["tokens"]
    for stage in ("train", "evaluate"):
        assert f"{stage}: fitting the count-bigram baseline on {tokens:,} train tokens" in lines
    passes = [line.split(":")[0] for line in lines if re.match(r"evaluate \w+, ", line)]
    # (Heard twice where the root's handler is caplog's too: in order, once each.)
    assert list(dict.fromkeys(passes)) == [
        "evaluate val, model (1 of 2)", "evaluate val, baseline (2 of 2)"
    ]  # fmt: skip
    caplog.clear()
    folder = workspace.resolve(first["models"][-1]["path"])
    best = torch.load(folder / "best" / "model.pt")
    final = torch.load(folder / "final" / "model.pt")
    # One byte changed, the size kept (torch would load it, changed): the sha256 recorded
    # finds it, and final/ serves instead.
    original = (folder / "best" / "model.pt").read_bytes()
    data = bytearray(original)
    size = len(data)
    data[size // 2] ^= 0x10
    (folder / "best" / "model.pt").write_bytes(bytes(data))
    # The flow's logging set-up replaced the root handlers caplog listens on: listen here.
    logging.getLogger("lm.evaluate").addHandler(caplog.handler)
    try:
        model, _ = load_trained(folder)
    finally:
        logging.getLogger("lm.evaluate").removeHandler(caplog.handler)
    assert all(torch.equal(model.state_dict()[name], final[name]) for name in final)
    changed = "model.pt is not the file written (its sha256 differs from the one recorded)"
    assert f"{folder / 'best'}: damaged checkpoint ({changed})" in caplog.text
    assert f"{folder}: using final/ instead" in caplog.text
    (folder / "best" / "model.pt").write_bytes(original)
    caplog.clear()
    (folder / "best" / "DONE").rename(folder / "best" / "DONE.kept")
    logging.getLogger("lm.evaluate").addHandler(caplog.handler)
    try:  # best/ without its marker: final/ answered without a word
        model, _ = load_trained(folder)
    finally:
        logging.getLogger("lm.evaluate").removeHandler(caplog.handler)
    (folder / "best" / "DONE.kept").rename(folder / "best" / "DONE")
    assert all(torch.equal(model.state_dict()[name], final[name]) for name in final)
    assert f"{folder / 'best'}: incomplete checkpoint (no DONE marker), skipped" in caplog.text
    assert f"{folder}: using final/ instead" in caplog.text
    (folder / "best" / "model.pt").write_bytes(bytes(data))
    with open(folder / "final" / "model.pt", "r+b") as weights:
        weights.truncate(100)
    expected = rf"{folder}: no checkpoint can be read \(best/: {re.escape(changed)}; final/: "
    with pytest.raises(CheckpointError, match=expected + f"model.pt has 100 bytes, {size}"):
        load_trained(folder)
    # The pipeline finds the published files shorter than written, and trains the model again.
    again = run_pipeline(config, TINY_GPT)
    assert stage_states(again)["train"] == "ran" and stage_states(again)["evaluate"] == "cached"
    model, _ = load_trained(folder)
    assert all(torch.equal(model.state_dict()[name], best[name]) for name in best)
    (folder / "model.json").write_text('{"kind": "gpt", "n_embd": "wide"}')
    with pytest.raises(CheckpointError, match=f"{folder / 'model.json'}: not a valid model"):
        load_trained(folder)


def test_training_resumes_from_the_work_folder_after_a_crash(workspace, config, monkeypatch):
    from lm import checkpoints
    from lm.train import latest_checkpoint

    with monkeypatch.context() as whole:  # published as the work folder holds it: optimizer too
        whole.setattr(checkpoints, "TRAINING_ONLY", ())
        first = run_pipeline(config, TINY_GPT)
    folder = workspace.resolve(first["models"][-1]["path"])
    # Simulate a run killed after step 6: its work folder holds the step-6 checkpoint only.
    work = folder.with_name(folder.name + ".work")
    work.mkdir()
    shutil.copytree(folder / "best", work / "step-00000006")  # best = step 6 or 12
    best_step = json.loads((folder / "best" / "checkpoint.json").read_text())["step"]
    shutil.rmtree(folder)
    resumed = run_pipeline(config, TINY_GPT)
    assert resumed["models"][-1]["steps"] == 12
    assert latest_checkpoint(work) is None  # the work folder was consumed
    # The speed of this stage's seconds counts only what it trained (4 × 16 tokens a step).
    assert first["models"][-1]["tokens_this_run"] == first["models"][-1]["tokens_seen"] == 768
    assert resumed["models"][-1]["tokens_this_run"] == (12 - best_step) * 64


LADDER = """
[split]
val = 0.3

[train]
max_steps = 8
micro_batch = 4
global_batch = 4
eval_every = 4
eval_batches = 2
block_size = 8
warmup_steps = 0

[[models]]
# Braces: Prefect fills a task run's name in with `str.format`, which failed the run.
name = "count {v2}"
kind = "bigram-count"

[[models]]
kind = "mlp"
context = 3
[models.train]
learning_rate = 0.05

[[models]]
name = "tiny-gpt"
kind = "gpt"
block_size = 16
n_layer = 1
n_head = 2
n_embd = 16
"""


def test_a_ladder_trains_every_model_in_one_run_and_records_each(workspace, tmp_path, sources):
    config = write_config(tmp_path / "ladder.toml", sources, LADDER)
    summary = run_pipeline(config)
    labels = [model["label"] for model in summary["models"]]
    assert labels == ["count {v2}", "mlp", "tiny-gpt"]
    states = stage_states(summary)
    assert {"train/count {v2}", "train/mlp", "train/tiny-gpt"} <= set(states)
    registry = RunRegistry(workspace.registry_path)
    _, rows = registry.query(
        "SELECT label, kind, steps, val_loss FROM models WHERE run_id = ? ORDER BY label",
        [summary["run_id"]],
    )
    assert [(label, kind) for label, kind, *_ in rows] == [
        ("count {v2}", "bigram-count"), ("mlp", "mlp"), ("tiny-gpt", "gpt"),
    ]  # fmt: skip
    assert dict((label, steps) for label, _, steps, _ in rows) == {
        "count {v2}": 0, "mlp": 8, "tiny-gpt": 8,
    }  # fmt: skip
    # Each curve is tagged with its model; the per-model learning rate override took effect.
    _, curves = registry.query(
        "SELECT model, count(*), max(value) FILTER (key = 'train/lr') FROM metrics "
        "WHERE key IN ('train/loss', 'train/lr') GROUP BY model ORDER BY model"
    )
    assert [(model, n) for model, n, _ in curves] == [("mlp", 16), ("tiny-gpt", 16)]
    assert curves[0][2] == pytest.approx(0.05)
    assert registry.find_model(summary["run_id"][:10])["label"] == "tiny-gpt"
    assert registry.find_model(summary["run_id"], "mlp")["kind"] == "mlp"


def test_a_run_publishes_its_card_and_models_table_as_prefect_artifacts(workspace, config):
    from prefect.artifacts import Artifact

    summary = run_pipeline(config, [*TINY_GPT, "eval.samples=1", "eval.sampling.max_new_tokens=20"])
    card = Artifact.get("run-card")
    assert card is not None and summary["run_id"] in card.data
    model = summary["models"][-1]
    assert f"{model['val_bpb']:.4f}" in card.data  # val bits per byte in the card
    assert "seed 1337" in card.data  # a sample
    table = Artifact.get("models")
    assert table is not None and '"val_bpb"' in table.data


def test_a_prefect_server_gone_after_the_record_is_said_once_and_not_retried_for_minutes():
    """The server killed mid-run: the run card's publishing retried it for over a minute, and
    Prefect's engine then retried the flow run's final state for minutes more."""
    import socket

    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from flows.pipeline import publish_or_warn

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    published = []
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
        assert PREFECT_CLIENT_MAX_RETRIES.value() > 0
        with warnings_said_by("lm.pipeline") as warnings:
            publish_or_warn("the run card", published.append, "card")
        assert PREFECT_CLIENT_MAX_RETRIES.value() == 0
    assert PREFECT_CLIENT_MAX_RETRIES.value() > 0  # the test's own settings, as they were
    assert published == []
    [said] = warnings
    assert said.startswith("the run card was not published: the Prefect server does not answer "
                           "(ConnectError: ")  # fmt: skip
    assert said.endswith("the run is recorded, and Prefect's record of it will stay out of date")


def test_a_prefect_server_that_refuses_a_moment_is_not_taken_as_gone(monkeypatch):
    """A shared server restarting refused the one health check: the run card was skipped and
    Prefect's client stopped retrying, so the flow run's end was never told to a server that
    was back a moment later (its flow run left Running)."""
    import http.server
    import socket

    import httpx
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from flows.pipeline import prefect_server_gone

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args):
            pass

    with socket.socket() as closed:  # a port nothing listens on, yet
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    servers, checked = [], SyncPrefectClient.api_healthcheck

    def back_once_refused(client):
        failure = checked(client)
        if isinstance(failure, httpx.ConnectError) and not servers:  # restarted meanwhile
            servers.append(http.server.HTTPServer(("127.0.0.1", port), Healthy))
            threading.Thread(target=servers[0].serve_forever, daemon=True).start()
        return failure

    monkeypatch.setattr(SyncPrefectClient, "api_healthcheck", back_once_refused)
    try:
        with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            retries = PREFECT_CLIENT_MAX_RETRIES.value()
            assert prefect_server_gone() is None
            assert PREFECT_CLIENT_MAX_RETRIES.value() == retries
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert servers  # it was refused first


def test_a_run_card_that_cannot_be_published_leaves_the_run_completed(
    workspace, config, monkeypatch
):
    """The Prefect server gone after the run is recorded: a warning, not a run recorded again
    as failed (its model then vanished from the leaderboard)."""
    import flows.pipeline

    def server_gone(*_arguments):
        raise ConnectionError("[Errno 111] Connection refused")

    monkeypatch.setattr(flows.pipeline, "publish_run_card", server_gone)
    with warnings_said_by("lm.pipeline") as warnings:
        summary = run_pipeline(config, TINY_GPT)
    registry = RunRegistry(workspace.registry_path)
    assert registry.find_run(summary["run_id"])["status"] == "completed"
    _, rows = registry.query("SELECT count(*) FROM leaderboard")
    assert rows == [(1,)]
    assert any("the run card was not published (ConnectionError" in w for w in warnings)


HOLD_ONCE_A_RUN_STARTS = """
import duckdb, pathlib, sys, time
runs, registry = pathlib.Path(sys.argv[1]), sys.argv[2]
while not list(runs.glob("*/stages.jsonl")):  # the run is registered and under way
    time.sleep(0.02)
connection = duckdb.connect(registry, read_only=True)
print("open", flush=True)
time.sleep(300)
"""


def test_a_run_that_finds_the_registry_held_open_ends_and_the_next_run_records_it(
    workspace, config, monkeypatch
):
    import subprocess
    import sys

    from storage.pending_outcome import OUTCOME_FILE
    from tests.conftest import run_cli

    monkeypatch.setenv("LMFORGE_REGISTRY_WAIT_S", "1")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_ONCE_A_RUN_STARTS, str(workspace.runs),
         str(workspace.registry_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        held = run_pipeline(config, TINY_GPT)
        assert holder.stdout.readline() == "open\n", "the registry was held while the run ran"
    finally:
        holder.kill()
        holder.wait()
    assert held["recorded"] is False
    run_id = held["run_id"]
    assert (workspace.runs / run_id / OUTCOME_FILE).is_file()
    registry = RunRegistry(workspace.registry_path)
    assert registry.find_run(run_id)["status"] == "running"
    listed = run_cli("runs")
    assert "completed (waiting to be recorded" in listed.stdout
    again = run_pipeline(config, TINY_GPT)
    assert again["recorded"] is True and stage_states(again)["train"] == "cached"
    found = registry.find_run(run_id)
    assert found["status"] == "completed" and found["error"] is None
    model = registry.find_model(run_id)
    assert model["val_bpb"] == pytest.approx(held["models"][-1]["val_bpb"])
    _, rows = registry.query("SELECT count(*) FROM stages WHERE run_id = ?", [run_id])
    assert rows[0][0] == len(held["stages"])
    assert not (workspace.runs / run_id / OUTCOME_FILE).exists()


def test_a_prompt_the_tokenizer_cannot_encode_is_refused_before_training(workspace, config):
    from lm.tokenizer import TokenizerError
    from storage.registry import RunRegistry

    settings = [
        *TINY_GPT,
        'tokenizer.kind="char"',
        'eval.prompts=["ok", "日本語"]',
        "eval.samples=2",
    ]
    with pytest.raises(TokenizerError, match=r"eval\.prompts\[1\] '日本語': "):
        run_pipeline(config, settings)
    registry = RunRegistry(workspace.registry_path)
    _, stages = registry.query("SELECT stage FROM stages")
    assert ("tokenizer",) in stages and not any(s.startswith("train") for (s,) in stages)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_model_trained_but_not_scored_is_recorded_with_its_failed_run(workspace, config):
    """Its evaluation failed (here: eval.device names a GPU this machine lacks): the run is
    failed, but the model is trained, and `generate` answers with it."""
    from lm.train_config import TrainingError
    from storage.registry import RunRegistry

    with pytest.raises(TrainingError, match=r"eval\.device"):
        run_pipeline(config, [*TINY_GPT, 'eval.device="cuda"'])
    registry = RunRegistry(workspace.registry_path)
    [(run_id, status, error)] = registry.query("SELECT run_id, status, error FROM runs")[1]
    assert status == "failed" and error.endswith("(during stage evaluate)")
    [(label, steps, val_bpb)] = registry.query(
        "SELECT label, steps, val_bpb FROM models WHERE run_id = ?", [run_id]
    )[1]
    assert (label, steps, val_bpb) == ("gpt", 12, None)  # trained, unscored
    # And the corpus and tokenizer it built, as a completed run's (`lmforge corpus stats`).
    [(corpus_digest,)] = registry.query("SELECT corpus_digest FROM runs")[1]
    assert corpus_digest and registry.query("SELECT corpus_digest FROM tokenizers")[1] == [
        (corpus_digest,)
    ]
    from tests.conftest import run_cli

    result = run_cli("generate", run_id, "--prompt", "The", "--max-new-tokens", "5", "--seed", "1")
    assert f"run {run_id} is failed; using the last model it trained" in result.stderr
    assert result.stdout.startswith("The")


def test_ingest_tries_a_busy_server_again_and_the_run_completes(workspace, tmp_path, sources):
    """A 503 failed the run at once (every failed fetch was an InputError, never retried),
    where the same run a second later worked."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "web.txt").write_text(prose(77, 150))
    with serving_busy_once(served) as base:
        # A signed link's signature opens the file: it was in the registry, the corpus's
        # `source` column, the stage journal and the report (h145).
        url = f"{base}/web.txt?X-Amz-Signature=SECRET123&page=1"
        config = write_config(tmp_path / "web.toml", [*sources, {"path": url}])
        summary = run_pipeline(config)
    read = pq.read_table(corpus_file(workspace, summary), columns=["source"])
    assert f"{base}/web.txt?X-Amz-Signature=***&page=1" in read.column("source").to_pylist()
    _, [(recorded, command)] = RunRegistry(workspace.registry_path).query(
        "SELECT config, command FROM runs"
    )
    assert "X-Amz-Signature=***&page=1" in recorded and "SECRET123" not in recorded + command
    plain = [path for path in workspace.root.rglob("*") if path.is_file()
             and "prefect" not in path.parts]  # fmt: skip
    written = [path for path in plain if path.suffix not in (".parquet", ".duckdb")]
    assert written and not [path for path in written if b"SECRET123" in path.read_bytes()]


def test_a_stage_that_will_wait_for_a_concurrency_slot_says_so():
    """A training queued behind another run's, for minutes, logged nothing at all."""
    import uuid

    from prefect.client.orchestration import get_client

    from flows.pipeline import slots_taken

    tag = f"lmforge-test-{uuid.uuid4().hex[:8]}"
    assert slots_taken(tag) is None  # no limit: nothing to wait for
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=1)
        try:
            assert slots_taken(tag) is None  # a free slot
            client.reset_concurrency_limit_by_tag(tag, slot_override=[uuid.uuid4()])
            said = slots_taken(tag)
        finally:
            client.delete_concurrency_limit_by_tag(tag)
    assert said == (f"waiting for a free '{tag}' slot: 1 of 1 held by other runs' trainings "
                    f"(prefect concurrency-limit inspect {tag})")  # fmt: skip


def test_a_slot_held_by_no_known_run_is_said_with_how_to_free_it():
    """A slot whose lease a restart of the server lost stays counted with no holder: the
    training waited for it for ever, and said nothing (the holders read as none)."""
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from flows.pipeline import slots_taken

    tag = f"lmforge-test-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=1)
        try:  # the limit's count as a lost lease leaves it: taken, no holder
            client.update_global_concurrency_limit(
                f"tag:{tag}", GlobalConcurrencyLimitUpdate(active_slots=1)
            )
            assert client.read_concurrency_limit_by_tag(tag).active_slots == []
            said = slots_taken(tag)
        finally:
            client.delete_concurrency_limit_by_tag(tag)
    assert said == (f"waiting for a free '{tag}' slot: 1 of 1 held, by no run Prefect knows of "
                    f"(lost in a restart of its server?); `prefect gcl update tag:{tag} "
                    "--active-slots 0` frees them once no training runs")  # fmt: skip


def test_a_run_that_starts_a_registry_beside_earlier_runs_says_their_history_is_gone(
    workspace, config
):
    """Deleted (or moved aside on advice), the registry was started anew with no word, and the
    runs, metrics and champion alias of every earlier run were lost."""
    from flows.pipeline import open_run

    open_run(load_config(str(config)), str(config), [])
    with warnings_said_by("lm.pipeline") as said:
        open_run(load_config(str(config)), str(config), [])
    assert not any("earlier run" in line for line in said), said
    for file in workspace.registry_path.parent.glob(f"{workspace.registry_path.name}*"):
        file.unlink()  # with its write-ahead log and lock, if any
    with warnings_said_by("lm.pipeline") as said:
        open_run(load_config(str(config)), str(config), [])
    assert any("holds the folders of 2 earlier runs" in line and "put the old registry back"
               in line for line in said), said  # fmt: skip


def test_a_run_that_waits_for_the_registry_is_timed_from_its_start(workspace, config):
    """Its row was made after the wait for a registry held open: `started_at` came late, and a
    run that waited most of its time for the registry was recorded as lasting 0.5 s."""
    from datetime import UTC, datetime

    from flows.pipeline import open_run
    from tests.helpers import registry_held_open

    open_run(load_config(str(config)), str(config), [])  # the registry exists
    with registry_held_open(workspace.registry_path, seconds=3):
        before = datetime.now(UTC)
        run = open_run(load_config(str(config)), str(config), [])
        opened = datetime.now(UTC)
    assert (opened - before).total_seconds() > 1  # it did wait for the holder
    started = RunRegistry(workspace.registry_path).find_run(run.run_id)["started_at"]
    assert (started - before).total_seconds() < 1


def test_a_run_cancelled_from_prefect_is_recorded_cancelled_not_failed(
    workspace, config, monkeypatch
):
    """A cancellation (the UI, `prefect flow-run cancel`) reaches the flow as SIGTERM, raised as
    TerminationSignal: it was recorded `failed` with the bare error "TerminationSignal". The
    run's state on the server tells it from another process's SIGTERM."""
    import signal

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.exceptions import TerminationSignal
    from prefect.states import Cancelling, Running

    from flows.pipeline import flow_run_is_cancelled, open_run, record_failure

    STOPPED_BY_SIGTERM = (  # another process's SIGTERM: a stop, not a cancellation
        "stopped by SIGTERM; a rerun reuses its finished stages and resumes an interrupted "
        "training from its last checkpoint"
    )

    @flow
    def stand_in() -> None:
        """A flow run whose state this test sets, as a worker's cancellation does."""

    with get_client(sync_client=True) as client:
        cancelling = client.create_flow_run(stand_in, state=Cancelling())
        running = client.create_flow_run(stand_in, state=Running())
    assert flow_run_is_cancelled(str(cancelling.id))
    assert not flow_run_is_cancelled(str(running.id))
    assert not flow_run_is_cancelled("00000000-0000-0000-0000-000000000000")  # no such run

    registry = RunRegistry(workspace.registry_path)
    for flow_run_id, status, error in (
        (cancelling.id, "cancelled", "cancelled from Prefect (during stage train)"),
        (running.id, "failed", STOPPED_BY_SIGTERM + " (during stage train)"),
    ):
        run = open_run(load_config(str(config)), str(config), [])
        run.failures.append((signal_error := TerminationSignal(signal=signal.SIGTERM), "train"))
        monkeypatch.setenv("PREFECT__FLOW_RUN_ID", str(flow_run_id))  # as in its process
        record_failure(run, signal_error)
        found = registry.find_run(run.run_id)
        assert (found["status"], found["error"]) == (status, error)


def test_a_run_whose_worker_died_says_its_output_was_cut_not_systemexit():
    """A killed worker breaks the pipe its runs' consoles write to, and rich ends the run with
    SystemExit(1): recorded as the bare "SystemExit: 1 (during stage train)"."""
    import io
    import os

    from rich.console import Console

    from flows.pipeline import failure_text

    read_end, write_end = os.pipe()
    os.close(read_end)  # the worker is gone
    console = Console(file=io.TextIOWrapper(os.fdopen(write_end, "wb")), force_terminal=False)
    stdout = os.dup(1)  # rich points the process's stdout at /dev/null: put it back after
    try:
        with pytest.raises(SystemExit) as raised:
            console.print("train: step 10/20")
    finally:
        os.dup2(stdout, 1)
        os.close(stdout)
    said = failure_text(raised.value, "train")
    assert said.startswith("its output was cut: the worker or terminal it wrote to was gone")
    assert failure_text(SystemExit(1), "train") == "SystemExit: 1 (during stage train)"


def test_a_run_stopped_by_a_signal_says_which_and_that_a_rerun_resumes():
    """SIGTERM, Ctrl-C and SIGHUP were recorded as the bare "TerminationSignal",
    "KeyboardInterrupt" and "SystemExit: 129": names of exceptions, not of what happened."""
    import signal

    from prefect.exceptions import TerminationSignal

    from flows.pipeline import failure_text

    said = {
        error_name: failure_text(error, "train")
        for error_name, error in [
            ("term", TerminationSignal(signal.SIGTERM)),
            ("int", KeyboardInterrupt()),
            ("hup", SystemExit(128 + signal.SIGHUP)),
            ("term-exit", SystemExit(128 + signal.SIGTERM)),
        ]
    }
    assert said["term"].startswith("stopped by SIGTERM; a rerun ")
    assert said["term"].endswith(
        "interrupted training from its last checkpoint (during stage train)"
    )
    assert said["int"].startswith("stopped by SIGINT (Ctrl-C); ")
    assert said["hup"].startswith("stopped by SIGHUP; ")
    assert said["term-exit"].startswith("stopped by SIGTERM; ")
    # Other exits keep their words.
    assert failure_text(SystemExit(1), "train") == "SystemExit: 1 (during stage train)"
    assert failure_text(SystemExit(2), None) == "SystemExit: 2"


def test_the_cancel_check_gives_up_quickly_on_a_server_that_does_not_answer():
    """It runs after a SIGTERM, which comes with a deadline: the client's 60 s timeout and
    five retries took 70 s with a 1 s timeout (about 7 minutes by default)."""
    import socket
    import time

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import flow_run_is_cancelled

    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/api"
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            started = time.monotonic()
            assert not flow_run_is_cancelled("00000000-0000-0000-0000-000000000000", 0.5)
            assert time.monotonic() - started < 10
    finally:
        silent.close()


def test_a_source_deduplication_emptied_gets_no_advice_about_text_without_spaces():
    """The advice to loosen the word rules for Chinese or Thai came from the whole corpus's
    removals: one short English text removed by min_words, and a JSONL whose three records
    were copies of another file's was told to loosen min_words for text without spaces."""
    from flows.pipeline import _warn_of_emptied_sources

    stats = {
        "sources": {"forum.jsonl": {"documents": 3, "kept": 0},
                    "forum-backup.jsonl": {"documents": 3, "kept": 3},
                    "short.txt": {"documents": 1, "kept": 0}},
        "removed": {"too_few_words": 1, "exact_duplicate": 3},
    }  # fmt: skip
    with warnings_said_by("lm.pipeline") as warnings:
        _warn_of_emptied_sources(stats)
    (said,) = warnings
    assert said.startswith("cleaning kept none of the documents of 1 of 3 sources: forum.jsonl")
    assert "without spaces" not in said and "min_words" not in said
    stats["sources"]["zh.jsonl"] = {"documents": 6, "kept": 0}
    stats["removed"]["too_few_words"] = 7  # enough to have emptied zh.jsonl
    with warnings_said_by("lm.pipeline") as warnings:
        _warn_of_emptied_sources(stats)
    assert "loosen clean.quality.min_words for it" in warnings[0]


def test_a_failure_that_cannot_be_recorded_leaves_the_run_s_own_error_to_be_said(monkeypatch):
    """A full disk failed the stage, then the registry and `outcome.json`: the run's clear
    error was replaced by a bare "[Errno 28] No space left on device" with a traceback."""
    import errno
    from types import SimpleNamespace

    import flows.pipeline as pipeline

    def record_task_on_a_full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "record_task", record_task_on_a_full_disk)
    run = SimpleNamespace(run_id="20261207-000000-abcdef", corpus=None, tokenizer=None, stages=[],
                          metrics=SimpleNamespace(path="metrics.jsonl"), unscored_models=[],
                          heartbeat=None, stage_of=lambda error: "clean")  # fmt: skip
    with warnings_said_by("lm.pipeline") as said:
        pipeline.record_failure(run, RuntimeError("the stage's own error"))  # raises nothing
    assert any("20261207-000000-abcdef could not be recorded as failed (OSError" in line
               for line in said), said  # fmt: skip


def test_a_tokenizer_changed_in_place_is_refused_before_training_not_copied_on(workspace, config):
    """Bytes changed inside the tokenizer stage's file keep its size (the manifest's check):
    a new training copied the changed tokenizer into its published model folder, and only the
    evaluation found it, naming that copy as the model's wrong tokenizer."""
    from lm.train_config import TrainingError

    first = run_pipeline(config, TINY_GPT)
    folder = workspace.resolve(first["tokenizer"]["path"])
    path = folder / "tokenizer.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    chars = document["chars"]  # two swapped: a valid tokenizer of the same size, another digest
    chars[-2], chars[-1] = chars[-1], chars[-2]
    size = path.stat().st_size
    path.write_text(json.dumps(document, ensure_ascii=False, sort_keys=True), encoding="utf-8")
    assert path.stat().st_size == size
    trained = set((workspace.root / "artifacts" / "train").iterdir())
    with pytest.raises(TrainingError, match=rf"^{re.escape(str(folder))}: the tokenizer there is"):
        run_pipeline(config, [*TINY_GPT, "train.max_steps=13"])
    assert set((workspace.root / "artifacts" / "train").iterdir()) == trained


def test_a_refused_run_s_error_hides_the_token_of_the_url_it_quotes(workspace, tmp_path):
    """A `--set` naming a source URL is quoted in the config's error: the refused run's command
    hid the token, its error kept it (h147)."""
    from flows.pipeline import _record_refused_run

    config = write_config(tmp_path / "c.toml", [{"path": str(tmp_path)}])
    override = 'ingest.sources=[{path="https://h.example/a.txt?token=SECRET1", formt="x"}]'
    try:
        load_config(str(config), [override])
    except ConfigError as error:
        _record_refused_run(str(config), [override], "run", error)
    _, [(command, error)] = RunRegistry(workspace.registry_path).query(
        "SELECT command, error FROM runs"
    )
    assert "token=***" in command and "token=***" in error and "formt" in error
    assert "SECRET1" not in command + error


def test_the_run_card_puts_each_model_s_numbers_in_their_own_columns():
    """The card's table is read column by column: each model's val, test and baseline bits per
    byte under their own headings, the corpus's kept documents before its total."""
    from types import SimpleNamespace

    from flows.run_card import run_card
    from storage.registry import ModelRecord

    corpus = SimpleNamespace(digest="c" * 64, stats={"kept": 90, "documents": 100,
                                                      "kept_bytes": 123456})  # fmt: skip
    tokenizer = SimpleNamespace(digest="t" * 64, stats={"kind": "bpe", "vocab_size": 4000,
                                                         "bytes_per_token": 3.456})  # fmt: skip
    stats = {"parameters": 1234, "tokens_seen": 5678, "val_bpb": 1.5, "test_bpb": 1.75,
             "baseline_val_bpb": 3.25}  # fmt: skip
    models = [ModelRecord("gpt", "gpt", "d", "p", "t", "c", {}, stats),
              ModelRecord("counts", "bigram-count", "d", "p", "t", "c", {}, {})]  # fmt: skip
    long = "x" * 599 + "yz"
    samples = {"gpt": [{"seed": 7, "temperature": 0.8, "text": long}]}
    card = run_card("r1", SimpleNamespace(name="small"), corpus, tokenizer, models, samples)
    lines = card.splitlines()
    assert lines[0] == "# Run `r1` — preset `small`"
    assert f"- corpus `{'c' * 12}`: 90 of 100 documents kept, 123,456 bytes" in lines
    assert f"- tokenizer `{'t' * 12}`: bpe, vocabulary 4,000, 3.46 bytes/token" in lines
    assert "| gpt | gpt | 1,234 | 5,678 | 1.5000 | 1.7500 | 3.2500 |" in lines
    (unscored,) = [line for line in lines if line.startswith("| counts |")]
    assert unscored == "| counts | bigram-count | – | – | – | – | – |"  # not a zero: no figure
    assert "**gpt** (seed 7, temperature 0.8):" in lines
    assert "x" * 599 + "y" in lines  # a sample's first 600 characters
    del tokenizer.stats["bytes_per_token"]  # no val text
    card = run_card("r1", SimpleNamespace(name="small"), corpus, tokenizer, [], {})
    assert "bpe, vocabulary 4,000, no val text to measure bytes/token" in card


def test_a_single_model_scored_on_test_alone_keeps_no_val_figure_of_training(workspace, config):
    scored_on_test = ['eval.splits=["test"]', "split.val=0.25", "split.test=0.25"]
    summary = run_pipeline(config, [*TINY_GPT, *scored_on_test])
    [model] = summary["models"]
    # Training's baseline on its sampled val windows is not the evaluator's: left out, as val_.
    assert not [key for key in model if key.startswith(("val_", "baseline_val_"))], model
    # One model, no ladder: its stages are `train` and `evaluate`, not `train/gpt`.
    assert list(stage_states(summary))[-2:] == ["train", "evaluate"]
    _, rows = RunRegistry(workspace.registry_path).query("SELECT seed FROM runs")
    assert rows == [(1337,)]  # the run's seed, the default: `[train]` sets none of its own
    # Each stage's seconds, for `lmforge runs compare`.
    _, rows = RunRegistry(workspace.registry_path).query(
        "SELECT key FROM metrics WHERE key LIKE 'stage/%/seconds' ORDER BY key"
    )
    assert {key for (key,) in rows} >= {"stage/ingest/seconds", "stage/train/seconds"}


def test_a_ladder_whose_top_fails_records_the_models_below_it(workspace, tmp_path, sources):
    """The lower rungs of a ladder whose top failed are trained models, worth comparing: the
    failed run records them (`record_failure`'s `models`)."""
    from lm.train_config import TrainingError

    top_fails = LADDER.rstrip() + '\n[models.train]\ndevice = "cuda"\n'
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(TrainingError):
        run_pipeline(write_config(tmp_path / "ladder.toml", sources, top_fails))
    registry = RunRegistry(workspace.registry_path)
    [(run_id, status, error)] = registry.query("SELECT run_id, status, error FROM runs")[1]
    assert status == "failed" and error.endswith("(during stage train/tiny-gpt)"), error
    _, rows = registry.query("SELECT label FROM models WHERE run_id = ? ORDER BY label", [run_id])
    assert rows == [("count {v2}",), ("mlp",)]


def test_texts_removed_as_too_long_among_other_removals_get_both_pieces_of_advice():
    """Saying "add longer texts" alone would say the opposite of what a too-long text needs, and the
    too-long advice alone would leave out the rules that removed the rest."""
    from flows.pipeline import require_kept_documents
    from lm.config import SplitConfig
    from storage.artifacts import Descriptor

    def removed(**counts: int) -> Descriptor:
        stats = {"kept": 0, "documents": sum(counts.values()), "removed": counts}
        return Descriptor("clean", "k", "corpus/k", "d", stats)

    with pytest.raises(InputError) as only_long:
        require_kept_documents(removed(too_many_words=2), SplitConfig(), True)
    assert "raise clean.quality.max_words" in str(only_long.value)
    assert "add longer texts" not in str(only_long.value)
    with pytest.raises(InputError) as mixed:
        require_kept_documents(removed(too_many_words=1, too_few_words=3), SplitConfig(), True)
    said = str(mixed.value)
    assert "removed by: too_many_words 1, too_few_words 3" in said
    assert "loosen [clean]" in said and "raise clean.quality.max_words" in said


def test_a_run_with_a_model_whose_split_holds_no_val_document_stops_after_cleaning(
    workspace, config
):
    """The flow asks `require_kept_documents` whether models will train: a run that did not
    failed stages later, in training, on "the val split has 0 tokens"."""

    with pytest.raises(InputError, match="none is in the val split"):
        run_pipeline(config, [*TINY_GPT, "split.val=0.001", "split.test=0.001"])
    _, rows = RunRegistry(workspace.registry_path).query("SELECT stage FROM stages")
    assert [stage for (stage,) in rows] == ["ingest", "clean"]


def test_a_training_served_from_cache_never_asks_for_a_concurrency_slot(
    workspace, config, monkeypatch
):
    """Only a stage with work to do waits for a slot: a cached one, served at once, said
    "waiting for a free 'lmforge-training' slot" while every slot was held by other runs."""
    import flows.pipeline

    asked: list[str] = []
    monkeypatch.setattr(flows.pipeline, "slots_taken", lambda tag: asked.append(tag))
    run_pipeline(config, TINY_GPT)
    assert asked == ["lmforge-training"]
    second = run_pipeline(config, TINY_GPT)
    assert stage_states(second)["train"] == "cached" and asked == ["lmforge-training"]


def test_the_last_name_set_names_a_refused_run_as_it_names_a_run(tmp_path):
    from flows.pipeline import _preset_named

    config = tmp_path / "c.toml"
    config.write_text('name = "team"\n')
    assert _preset_named(str(config), ["name=first", "name=second"]) == "second"


def test_a_run_that_reads_a_relative_source_records_the_folder_to_reproduce_it_from(
    tmp_path, monkeypatch
):
    from flows.pipeline import _run_row

    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "c.toml", [{"path": "data/"}])
    row = _run_row("r", load_config(str(config)), str(config), [], "run")
    assert row["command"].startswith(f"cd {tmp_path} && lmforge run "), row["command"]
    absolute = load_config(str(config), [f"ingest.sources=['{tmp_path}/data']"])
    assert _run_row("r", absolute, str(config), [], "run")["command"].startswith("lmforge run ")
    # The run's seed, which `[train]`'s own does not replace.
    seeded = load_config(str(config), ["seed=5", "train.seed=7"])
    assert _run_row("r", seeded, str(config), [], "run")["seed"] == 5
