"""Read-only SQL: which corpus version the `corpus` view and `corpus stats` mean."""

from __future__ import annotations

import logging
import shutil
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.query import find_corpus_version, sql_session
from storage.registry import DatasetRecord, RegistryError, RunRegistry

STATS = {"documents": 1, "kept": 1, "kept_chars": 5, "kept_bytes": 5, "flagged": {},
         "split_documents": {"train": 1}, "split_bytes": {"train": 5}}  # fmt: skip


def _run_on(registry: RunRegistry, root, run_id: str, digest: str) -> None:
    folder = root / "corpus" / digest
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": [f"text of {digest}"], "keep": [True]}),
                   folder / "documents.parquet")  # fmt: skip
    registry.start_run({"run_id": run_id, "status": "running", "started_at": datetime.now()})
    registry.finish_run(run_id, "completed", datetime.now(), [],
                        [DatasetRecord(digest, digest, f"corpus/{digest}", STATS)],
                        digest, None)  # fmt: skip


def test_the_newest_corpus_is_the_one_the_latest_run_read_for_sql_and_stats_alike(tmp_path, caplog):
    # `sql` took the corpus of the latest completed run, `corpus stats` the latest built:
    # after a rerun on an older corpus the two showed different corpora as "the newest".
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _run_on(registry, tmp_path, "r1", "aaaa")
    _run_on(registry, tmp_path, "r2", "bbbb")
    with sql_session(registry, tmp_path) as connection:
        assert find_corpus_version(connection, None)["digest"] == "bbbb"
        assert connection.execute("SELECT text FROM clean_corpus").fetchall() == [("text of bbbb",)]
    _run_on(registry, tmp_path, "r3", "aaaa")  # a rerun on the first corpus
    with sql_session(registry, tmp_path) as connection:
        assert find_corpus_version(connection, None)["digest"] == "aaaa"
        assert connection.execute("SELECT text FROM corpus").fetchall() == [("text of aaaa",)]
        assert find_corpus_version(connection, "bb")["digest"] == "bbbb"
        # A prefix is matched as typed: `%` and `_` are no wildcards.
        for prefix in ("%", "_a"):
            with pytest.raises(RegistryError, match="no corpus version"):
                find_corpus_version(connection, prefix)
    # The newest version's folder deleted by hand: named, for `corpus stats` and `sql` alike
    # (DuckDB's "No files found" named no version; the views went missing without a word).
    shutil.rmtree(tmp_path / "corpus" / "aaaa")
    gone = r"corpus version aaaa: its documents are gone"
    with (
        caplog.at_level(logging.WARNING, logger="storage.query"),
        sql_session(registry, tmp_path) as connection,
    ):
        with pytest.raises(RegistryError, match=gone):
            find_corpus_version(connection, None)
        assert find_corpus_version(connection, "bb")["digest"] == "bbbb"
    assert "documents.parquet: missing, so the corpus and clean_corpus views are missing" in (
        caplog.text
    )


def test_explain_analyze_of_a_write_and_a_write_behind_with_are_refused_by_name(tmp_path):
    from storage.query import run_queries

    def run_query(connection, query):  # the only statement's result
        [result] = run_queries(connection, query)
        return result

    registry = RunRegistry(tmp_path / "registry.duckdb")
    _run_on(registry, tmp_path, "r1", "aaaa")
    written = tmp_path / "written.csv"
    with sql_session(registry, tmp_path) as connection:
        for query, refused in (
            (f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{written}'", "EXPLAIN of COPY statements"),
            (f"explain /* why */ analyse COPY runs TO '{written}'", "EXPLAIN of COPY"),
            # The option-list form runs it too: it overwrote a corpus Parquet file.
            (f"EXPLAIN (ANALYZE) COPY (SELECT 1) TO '{written}'", "EXPLAIN of COPY"),
            (f"explain (format json, analyze true) COPY runs TO '{written}'", "EXPLAIN of COPY"),
            ("WITH x AS (SELECT 1) DELETE FROM runs", "DELETE statements"),
            # DuckDB nests block comments: this is a comment, then a COPY that wrote any file.
            (
                f"EXPLAIN ANALYZE /* /* */ SELECT 1 --*/ COPY (SELECT 1) TO '{written}'",
                "EXPLAIN of COPY",
            ),
            (f"/* /* */ SELECT 1 --*/ COPY (SELECT 1) TO '{written}'", "COPY statements"),
        ):
            with pytest.raises(RegistryError, match=rf"read-only: {refused}"):
                run_query(connection, query)
        assert not written.exists()  # EXPLAIN ANALYZE runs what it explains
        plan = run_query(connection, "EXPLAIN ANALYZE SELECT count(*) FROM runs").fetchall()
        assert plan and run_query(connection, "EXPLAIN SELECT 1").fetchall()
        # A subquery in parentheses is no option list (it was cut off as one).
        union = "EXPLAIN ANALYZE (SELECT 1) UNION ALL (SELECT 2)"
        assert run_query(connection, union).fetchall()


def test_a_digest_prefix_that_names_several_versions_is_refused_and_case_does_not_matter(
    tmp_path,
):
    """`--digest b` took the newest of the versions starting `b`, silently; `--digest BE94`
    found none (digests are lowercase hex)."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _run_on(registry, tmp_path, "r1", "ba01")
    _run_on(registry, tmp_path, "r2", "be94")
    with sql_session(registry, tmp_path) as connection:
        with pytest.raises(RegistryError, match=r"corpus version b is ambiguous: be94, ba01 \("):
            find_corpus_version(connection, "b")
        assert find_corpus_version(connection, "BE9")["digest"] == "be94"
        assert find_corpus_version(connection, None)["digest"] == "be94"  # none: the newest


def test_the_sql_session_attaches_the_registry_read_only(tmp_path):
    """Attached for writing, `lmforge sql` took DuckDB's write lock: a run finishing meanwhile
    could not record itself (and a statement the read-only check missed wrote the registry)."""
    registry = RunRegistry(tmp_path / "registry.duckdb")
    _run_on(registry, tmp_path, "r1", "aaa1")
    with sql_session(registry, tmp_path) as connection:
        [(read_only,)] = connection.execute(
            "SELECT readonly FROM duckdb_databases() WHERE database_name = 'registry'"
        ).fetchall()
        assert read_only is True
