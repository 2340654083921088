"""Read-only SQL over the registry and the corpus, for `lmforge sql` and reports.

The registry is attached read-only to an in-memory DuckDB, so a query can never change it and
never holds the write lock for longer than it runs. Views over the newest corpus version are
added beside the registry's tables:

- `corpus`: every document of the newest corpus, rejected ones included, with decision columns;
- `clean_corpus`: the kept documents (the clean view is a query, not a copy);
- `corpus_versions`: the `datasets` table with each version's absolute Parquet path, and
  `last_used`: when a run last started on it. The newest version is the one last used.

Read-only attachment keeps the registry safe, but DuckDB can also write files of its own
(`COPY ... TO`, `EXPORT DATABASE`, `ATTACH` of a new database), over the corpus Parquet for one:
`run_queries` runs queries and nothing else.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from storage.corpus import DOCUMENTS_FILE
from storage.registry import RegistryError, RunRegistry, is_damage

logger = logging.getLogger("storage.query")
# Statements that only read: queries (SHOW, DESCRIBE, SUMMARIZE and VALUES parse as SELECT),
# EXPLAIN, and PIVOT (which DuckDB expands into several statements).
READING_STATEMENTS = ("SELECT", "EXPLAIN", "MULTI")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@contextmanager
def sql_session(registry: RunRegistry, workspace_root: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the registry attached read-only and the corpus views. A
    registry file DuckDB cannot read, at the attach or in a query, is the `RegistryError` every
    other reader gives; a query's own mistakes stay DuckDB's errors."""
    registry.require_existing()
    connection = duckdb.connect()
    try:
        attach = f"ATTACH {_quote(str(registry.path))} AS registry (READ_ONLY)"
        registry.retry_while_locked(lambda: connection.execute(attach), "read")
        try:
            connection.execute("USE registry")
            root = _quote(str(workspace_root) + "/")
            # `last_used`: when a run last started on the version (its creation, if later),
            # so the newest is the one the latest run read: a rerun on an older corpus makes
            # it the current one again, for `corpus`, `corpus stats` and `sql` alike.
            connection.execute(
                "CREATE TEMP VIEW corpus_versions AS SELECT d.*, "
                f"{root} || d.path || '/{DOCUMENTS_FILE}' AS parquet_path, "
                "greatest(d.created_at, (SELECT max(r.started_at) FROM runs r "
                "WHERE r.corpus_digest = d.digest)) AS last_used FROM datasets d"
            )
            newest = connection.execute(
                f"SELECT parquet_path FROM corpus_versions ORDER BY {NEWEST_FIRST} LIMIT 1"
            ).fetchone()
            if newest and Path(newest[0]).is_file():
                _add_corpus_views(connection, newest[0])
            elif newest:  # deleted by hand, or pruned: said, as an unreadable file is
                logger.warning("%s: missing, so the corpus and clean_corpus views are missing; "
                               "`lmforge run` builds it again", newest[0])  # fmt: skip
            yield connection
        except duckdb.Error as error:
            # Another file's damage (a corpus Parquet): DuckDB's message names it. A damaged
            # block's message names no file, but only the registry is a DuckDB database here.
            names_registry = str(registry.path) in str(error) or "Corrupt database" in str(error)
            if not (is_damage(error) and names_registry):
                raise
            raise registry.unusable(error) from error
    finally:
        connection.close()


def _add_corpus_views(connection: duckdb.DuckDBPyConnection, parquet_path: str) -> None:
    """The `corpus` and `clean_corpus` views over the newest corpus. A file that cannot be read
    leaves them out, with a warning, so queries of the registry alone still work."""
    try:
        connection.execute(
            f"CREATE TEMP VIEW corpus AS SELECT * FROM read_parquet({_quote(parquet_path)})"
        )
        connection.execute("CREATE TEMP VIEW clean_corpus AS SELECT * FROM corpus WHERE keep")
    except duckdb.Error as error:
        connection.execute("DROP VIEW IF EXISTS corpus")
        logger.warning(
            "%s: unreadable, so the corpus and clean_corpus views are missing (%s); "
            "`lmforge run` builds it again",
            parquet_path,
            str(error).splitlines()[0],
        )


def run_queries(
    connection: duckdb.DuckDBPyConnection, query: str
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Each statement of `query` run in turn, once all are known to only read (RegistryError
    names one that does not, by its own first word: DuckDB files INSTALL under LOAD and USE
    under SET); each result is to be read before the next is asked for."""
    for statement in reading_statements(connection, query):
        yield connection.execute(statement)


def reading_statements(connection: duckdb.DuckDBPyConnection, query: str) -> list:
    """The statements of `query`, or RegistryError for the first that does not only read."""
    statements = connection.extract_statements(query)
    if not statements:
        raise RegistryError('no SQL statement given (try `lmforge sql "SHOW TABLES"`)')
    for statement in statements:
        refused = _first_writing(connection, statement)
        if refused is not None:
            raise RegistryError(
                f"`lmforge sql` is read-only: {refused} statements are refused (it runs SELECT, "
                "WITH, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN and PIVOT)"
            )
    return statements


def _first_writing(connection: duckdb.DuckDBPyConnection, statement) -> str | None:
    """The name of what `statement` would run that does not only read, None if it only reads.
    An EXPLAIN is judged by the statement it explains: `EXPLAIN ANALYZE` runs it, and so does
    `EXPLAIN (ANALYZE)`, the option-list form (a COPY under it overwrote a corpus file). A
    `WITH` clause in front names the statement it leads to (DELETE, not WITH)."""
    kind = statement.type.name
    if kind == "EXPLAIN":
        explained = re.match(
            r"\s*explain\b\s*(?:analy[sz]e\b)?(.*)", _without_comments(statement.query),
            flags=re.IGNORECASE | re.DOTALL,
        )  # fmt: skip
        rest = explained.group(1) if explained else ""
        # What it runs: the rest, or the rest past an option list (`(ANALYZE, FORMAT json)`);
        # a parenthesised subquery looks alike, so each reading that parses is judged.
        readings = 0
        for text in (rest, re.sub(r"^\s*\([^)]*\)", "", rest)):
            try:
                inner = connection.extract_statements(text)
            except duckdb.Error:
                continue
            readings += bool(inner)
            for part in inner:
                refused = _first_writing(connection, part)
                if refused is not None:
                    return f"EXPLAIN of {refused}"
        return None if readings else "EXPLAIN of unparsable"
    if kind in READING_STATEMENTS:
        return None
    words = _without_comments(statement.query).split()
    word = words[0].upper() if words else kind
    return kind if word == "WITH" else word


def _without_comments(sql: str) -> str:
    """`sql` with its comments as DuckDB's own tokenizer reads them: DuckDB nests `/* */`
    comments, so `/* /* */ SELECT 1 --*/ COPY ...` is a comment and a COPY, which a pattern
    that stops at the first `*/` read as `SELECT 1` (the COPY wrote any file)."""
    tokens = duckdb.tokenize(sql)
    ends = [start for start, _ in tokens[1:]] + [len(sql)] if tokens else []
    return "".join(
        " " if kind == duckdb.token_type.comment else sql[start:end]
        for (start, kind), end in zip(tokens, ends, strict=True)
    )


NEWEST_FIRST = "last_used DESC, created_at DESC, digest"


def find_corpus_version(connection: duckdb.DuckDBPyConnection, digest_prefix: str | None) -> dict:
    """The corpus version whose digest starts with `digest_prefix` (the newest, when None), as
    a row of `corpus_versions`; RegistryError when there is none, when the prefix names several
    (the newest was taken silently), or when its documents are gone."""
    prefix = (digest_prefix or "").strip().lower()  # digests are lowercase hex
    result = connection.execute(  # starts_with: a `%` or `_` the user types is no wildcard
        f"SELECT * FROM corpus_versions WHERE starts_with(digest, ?) ORDER BY {NEWEST_FIRST}",
        [prefix],
    )
    rows = result.fetchmany(6)
    if not rows:
        raise RegistryError(f"no corpus version {prefix} (run `lmforge run`)")
    columns = [d[0] for d in result.description]
    if prefix and len(rows) > 1:
        digests = [row[columns.index("digest")][:12] for row in rows[:5]]
        more = ", …" if len(rows) > 5 else ""
        raise RegistryError(f"corpus version {prefix} is ambiguous: {', '.join(digests)}{more} "
                            "(give more of the digest)")  # fmt: skip
    version = dict(zip(columns, rows[0], strict=True))
    if not Path(version["parquet_path"]).is_file():  # deleted by hand: DuckDB's error named none
        raise RegistryError(
            f"corpus version {version['digest']}: its documents are gone "
            f"({version['parquet_path']}); `lmforge run` builds them again, or pass --digest "
            "for another version"
        )
    return version
