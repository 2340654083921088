"""The Parquet corpus store: raw documents from ingest and cleaned corpus versions.

Files are zstd Parquet written row group by row group as documents stream in (memory stays
bounded), inside an artifact staging directory (so the file appears atomically). They are plain
Parquet, readable as they are by DuckDB, pyarrow and pandas.

Every data page carries a CRC-32 of its bytes (Parquet's page checksum), checked whenever a
stage reads it (`open_parquet`, `damage_named`). The artifact manifest sees a file cut short,
not bytes changed in place (a bad disk sector, a stray write): without the checksums, 6 in 10
single-bit flips of a corpus file read back silently as other text or other decisions.

A corpus version is identified by its digest: a hash over every document's id, source, split and
decisions, in order. It depends on the content and the decisions, not on how the bytes were laid
out, so an interrupted-then-resumed run and an uninterrupted run give the same digest.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from lm.config import SplitConfig
from lm.text.clean import BATCH_CHARS, BATCH_DOCS, DECISION_FLAGS, RawRow

if TYPE_CHECKING:
    from storage.artifacts import Descriptor

DOCUMENTS_FILE = "documents.parquet"

RAW_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("source_file", pa.string()),
        ("text", pa.large_string()),
        ("markup", pa.string()),
        ("part_of", pa.string()),  # the text a piece was cut from (RawDocument.part_of)
    ]
)

_MEASUREMENTS = [
    ("n_words", pa.int64()),
    ("mean_word_length", pa.float64()),
    ("symbol_word_ratio", pa.float64()),
    ("alpha_word_fraction", pa.float64()),
    ("ellipsis_line_fraction", pa.float64()),
    ("bullet_line_fraction", pa.float64()),
    ("duplicate_line_fraction", pa.float64()),
    ("duplicate_line_char_fraction", pa.float64()),
    ("duplicate_paragraph_fraction", pa.float64()),
    ("duplicate_paragraph_char_fraction", pa.float64()),
    ("top_ngram_char_fraction", pa.list_(pa.float64())),
    ("duplicate_ngram_char_fraction", pa.list_(pa.float64())),
]

CORPUS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("source_file", pa.string()),
        ("part_of", pa.string()),
        ("text", pa.large_string()),
        ("n_chars", pa.int64()),
        ("n_bytes", pa.int64()),
        ("split", pa.string()),
        ("keep", pa.bool_()),
        ("reject_reason", pa.string()),
        ("near_dup_of", pa.string()),
        *[(flag, pa.bool_()) for flag in DECISION_FLAGS],
        *_MEASUREMENTS,
    ]
)


# The text of a row group, at most (a longer document alone). The writer holds about 5 times it
# (rows, columns, encoding): 64 M took ingest to 0.61 GB on a 300 MB file, 16 M to 0.29 GB.
ROW_GROUP_CHARS = 16_000_000


class DocumentWriter:
    """Streams rows (dicts) into one Parquet file, a row group every `row_group_rows` rows, or
    sooner where their `text` reaches ROW_GROUP_CHARS: a reader holds a row group whole, and
    2000 book-sized documents are gigabytes. Rows wait as they are and become columns once per
    row group (one list per column, built in a comprehension: several times cheaper than
    appending to every column per row)."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int = 2000):
        self.path = path
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.rows_written = 0
        self._rows: list[dict] = []
        self._chars = 0
        self._writer = pq.ParquetWriter(path, schema, compression="zstd", write_page_checksum=True)

    def write(self, row: dict) -> None:
        self._rows.append(row)
        self._chars += len(row.get("text") or "")
        if len(self._rows) >= self.row_group_rows or self._chars >= ROW_GROUP_CHARS:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            rows = self._rows
            columns = {name: [row[name] for row in rows] for name in self.schema.names}
            self._writer.write_table(pa.table(columns, schema=self.schema))
            self.rows_written += len(rows)
            self._rows, self._chars = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __enter__(self) -> DocumentWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class CorpusError(ValueError):
    """A corpus file whose bytes changed after it was written; the message names it."""


def open_parquet(path: Path) -> pq.ParquetFile:
    """A Parquet file lmforge wrote, each page's checksum checked as it is read (a file
    without checksums, from an earlier version or DuckDB, is read unchecked), and its footer
    first (`check_footer`). Opened under `damage_named`: a changed byte in a footer nothing
    recorded was pyarrow's "Couldn't deserialize thrift" with a traceback, naming no file."""
    check_footer(path)
    with damage_named(path):
        return pq.ParquetFile(path, page_checksum_verification=True)


def check_footer(path: Path) -> None:
    """A `CorpusError` naming `path` when its footer is not the one its output's manifest
    recorded (`storage.parquet_footer`): read by pyarrow, a few such bytes ended the process
    with C++'s `std::terminate`, which no `except` catches."""
    from storage.parquet_footer import footer_problem

    problem = footer_problem(path)
    if problem is not None:
        raise CorpusError(_damaged(path, problem))


@contextmanager
def damage_named(path: Path) -> Iterator[None]:
    """Reads of `path` inside, where bytes that changed after it was written (a checksum that
    does not match, a page that does not decompress) are one error naming the file, not
    pyarrow's traceback; a published output holding it is marked for building again (its
    `DONE` marker removed), so the rerun the error asks for rebuilds it from its inputs and
    does not read it again. A file system's own error (missing, no permission) passes as it
    is. A page's header is outside its checksum: a changed byte there is pyarrow's
    `ArrowInvalid` ("Index not in dictionary bounds"), damage as much as a checksum's."""
    try:
        yield
    except (OSError, pa.ArrowInvalid) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise
        raise CorpusError(_damaged(path, error)) from None


def read_checked(batches: Iterable, path: Path) -> Iterator:
    """`batches`, read from `path`, each read under `damage_named`."""
    batches = iter(batches)
    while True:
        with damage_named(path):
            batch = next(batches, _END)
        if batch is _END:
            return
        yield batch


_END = object()


def _damaged(path: Path, error: Exception) -> str:
    """The message of a damaged `path`, its output's `DONE` marker removed. An output whose
    marker another reader of the same damage removed first is still built again: its reader
    is told to rerun as well, not left with no way on."""
    from storage.artifacts import DONE_MARKER, MANIFEST_FILE

    path = Path(path)
    marker = path.parent / DONE_MARKER
    said = f"{path}: damaged, its bytes changed after it was written ({error})"
    rerun = f"{said}; rerun: it will be built again from its inputs"
    try:
        marker.unlink()
    except FileNotFoundError:
        return rerun if (path.parent / MANIFEST_FILE).is_file() else said
    except OSError as unmarked:
        return f"{said}; delete {path.parent} and rerun to build it again ({unmarked.strerror})"
    return rerun


class CorpusDigest:
    """The order-sensitive identity of a corpus version (see module docstring)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._text = hashlib.sha256()

    def update(self, row: dict) -> None:
        fingerprint = "\t".join(
            str(row[name] or "")
            for name in ("doc_id", "source", "split", "reject_reason", "near_dup_of")
        )
        self._hash.update(fingerprint.encode() + b"\n")
        if row["keep"]:
            self._text.update(f"{row['doc_id']}\t{row['split']}\n".encode())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def text_hexdigest(self) -> str:
        """The identity of the text the stages after clean read: the kept documents' ids and
        splits, in order, without their sources. A moved input folder gives another corpus
        digest (sources are paths) and the same text digest."""
        return self._text.hexdigest()


def text_digest(corpus: Descriptor) -> str:
    """What a stage that reads only the kept text is keyed by: the corpus's text digest (the
    corpus digest where it was made before one was recorded). Keyed by the corpus digest, a
    moved input folder trained word2vec again on the same text."""
    return corpus.stats.get("text_digest") or corpus.digest


def bounded_row_batches(
    parquet: pq.ParquetFile,
    columns: list[str],
    batch_docs: int,
    row_groups: list[int] | None = None,
    path: Path | None = None,
) -> Iterator[list[tuple]]:
    """The rows of `parquet` (its `row_groups`, or all; opened from `path`, which a damaged
    page's error names), as lists of at most `batch_docs` rows
    and, a longer row alone, BATCH_CHARS of `text`, in order. `ParquetFile.iter_batches` joins
    row groups into one batch of its size: 256 rows were 256 documents of up to
    `ingest.max_document_mb` each however small the row groups (and a DuckDB-written corpus has
    122,880 rows a group). Arrow decodes a row group as many rows at a time as its text's size
    allows (its metadata says it): 16 at a time for every group made 1 M small rows 8x slower."""
    text = columns.index("text")
    leaves = parquet.metadata.schema
    text_leaf = next((i for i in range(len(leaves)) if leaves.column(i).path == "text"), None)
    if text_leaf is None:
        raise ValueError(f"no top-level 'text' column (columns: {parquet.schema_arrow.names})")
    groups = row_groups if row_groups is not None else range(parquet.metadata.num_row_groups)

    def rows() -> Iterator[tuple]:
        for group in groups:
            metadata = parquet.metadata.row_group(group)
            size = max(metadata.column(text_leaf).total_uncompressed_size, 1)
            at_once = max(1, min(batch_docs, metadata.num_rows * BATCH_CHARS // size))
            batches = parquet.iter_batches(at_once, row_groups=[group], columns=columns)
            for batch in batches if path is None else read_checked(batches, path):
                yield from zip(*(batch.column(name).to_pylist() for name in columns), strict=True)

    return _batched_by_text(rows(), text, batch_docs)


def _batched_by_text(rows: Iterable[tuple], text: int, batch_docs: int) -> Iterator[list[tuple]]:
    """`rows` in lists of `batch_docs`, or fewer where their `text` column reaches BATCH_CHARS
    (a longer row alone)."""
    pending: list[tuple] = []
    chars = 0
    for row in rows:
        pending.append(row)
        chars += len(row[text] or "")
        if len(pending) >= batch_docs or chars >= BATCH_CHARS:
            yield pending
            pending, chars = [], 0
    if pending:
        yield pending


def read_raw_rows(
    path: Path, start: int, stop: int, batch_docs: int = BATCH_DOCS
) -> Iterator[list[RawRow]]:
    """Raw documents `start` to `stop` as batches of `batch_docs`, or fewer where they reach
    BATCH_CHARS of text, counted from `start`. Reads only the row groups that overlap the
    range. (What a document is annotated to does not depend on its batch.)"""
    parquet = open_parquet(path)

    def rows() -> Iterator[RawRow]:
        offset = 0
        for group in range(parquet.metadata.num_row_groups):
            group_rows = parquet.metadata.row_group(group).num_rows
            low, high = max(start, offset), min(stop, offset + group_rows)
            if low < high:
                with damage_named(path):
                    table = parquet.read_row_group(group, columns=RAW_SCHEMA.names)
                table = table.slice(low - offset, high - low)
                columns = [table.column(name).to_pylist() for name in RAW_SCHEMA.names]
                del table
                yield from zip(*columns, strict=True)
            offset += group_rows
            if offset >= stop:
                break

    return _batched_by_text(rows(), RAW_SCHEMA.names.index("text"), batch_docs)


def row_group_bounds(path: Path) -> list[int]:
    """The first row of every row group, and the row count at the end."""
    metadata = open_parquet(path).metadata
    sizes = (metadata.row_group(group).num_rows for group in range(metadata.num_row_groups))
    return list(itertools.accumulate(sizes, initial=0))


def row_count(path: Path) -> int:
    return open_parquet(path).metadata.num_rows


# The columns the retrain's counts below read with DuckDB, which checks no page checksum.
COUNTED_COLUMNS = ["doc_id", "source", "source_file", "part_of", "split", "keep"]


def check_columns(path: Path, columns: list[str]) -> None:
    """Read `columns` of corpus file `path` through pyarrow, every page's checksum checked
    (a `CorpusError` naming the file where one fails), before DuckDB reads them unchecked: a
    changed byte there was counted as another document, silently. Once a process for a file
    as it is (a retrain's three counts read both corpus files)."""
    status = Path(path).stat()
    checked = (str(path), status.st_size, status.st_mtime_ns, tuple(columns))
    if checked in _CHECKED:
        return
    parquet = open_parquet(path)
    batches = parquet.iter_batches(batch_size=65536, columns=columns)
    for _batch in read_checked(batches, path):
        pass
    _CHECKED.add(checked)


_CHECKED: set[tuple] = set()  # (path, size, mtime, columns) that `check_columns` read whole


def documents_renamed(previous: Path, current: Path) -> tuple[int, int, int]:
    """(renamed, of files gone, kept) for the kept documents of corpus file `previous` against
    `current`: how many have no document of the same `doc_id` though their file is still read
    (text that reads otherwise now, under another id; or edited, or its line removed), how
    many come from files no longer read (deleted, or moved), and how many there are. The file,
    not the locator in it: a reader that now labels records (`x.json#0` for `x.json`) would
    hide every renamed one."""
    import duckdb

    for path in (previous, current):
        check_columns(path, COUNTED_COLUMNS)
    connection = duckdb.connect()
    try:
        [(renamed, of_files_gone, kept)] = connection.execute(
            "WITH now AS (SELECT DISTINCT source_file FROM read_parquet(?)), "
            "before AS (SELECT doc_id, source_file FROM read_parquet(?) WHERE keep) "
            "SELECT count(*) FILTER (doc_id NOT IN (SELECT doc_id FROM read_parquet(?)) "
            "                        AND source_file IN (SELECT source_file FROM now)), "
            "count(*) FILTER (source_file NOT IN (SELECT source_file FROM now)), count(*) "
            "FROM before",
            [str(current), str(previous), str(current)],
        ).fetchall()
    finally:
        connection.close()
    return int(renamed), int(of_files_gone), int(kept)


def held_out_trained_on(previous: Path, current: Path) -> int:
    """How many kept val and test documents of corpus file `current` are kept train documents
    of `previous`: text a model trained on `previous` would be scored on. None under the hash
    of `doc_id`; a piece of a text is drawn with the text's first piece (`split.unit =
    "text"`), and an edit there draws the whole text again."""
    return _count_of_current(
        current,
        previous,
        "SELECT count(*) FROM read_parquet(?) WHERE keep AND split <> 'train' AND doc_id IN "
        "(SELECT doc_id FROM read_parquet(?) WHERE keep AND split = 'train')",
    )


def held_out_edited(previous: Path, current: Path) -> int:
    """How many kept val and test documents of corpus file `current` are whole files that were
    kept train documents of `previous` with other text: files edited since, whose earlier text
    a model trained on `previous` has seen (a new `doc_id`, so `held_out_trained_on` cannot
    tell). Whole files only: a line's or row's place (`file:12`) moves when lines are added."""
    return _count_of_current(
        current,
        previous,
        "SELECT count(*) FROM read_parquet(?) AS now WHERE keep AND split <> 'train' "
        "AND part_of IS NULL AND source = source_file AND source IN (SELECT source FROM "
        "read_parquet(?) AS before WHERE keep AND split = 'train' AND part_of IS NULL "
        "AND source = source_file AND before.doc_id <> now.doc_id)",
    )


def _count_of_current(current: Path, previous: Path, query: str) -> int:
    """The count `query` gives, its parameters the corpus files `current` then `previous`."""
    import duckdb

    for path in (current, previous):
        check_columns(path, COUNTED_COLUMNS)
    connection = duckdb.connect()
    try:
        [(count,)] = connection.execute(query, [str(current), str(previous)]).fetchall()
    finally:
        connection.close()
    return int(count)


def iter_split_texts(path: Path, split: str, batch_size: int = 256) -> Iterator[list[str]]:
    """The kept documents of one split (`train`, `val` or `test`), a batch of texts at a time,
    in corpus order: the clean view, read as it streams."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    check_footer(path)
    checked = ds.ParquetFragmentScanOptions(page_checksum_verification=True)
    dataset = ds.dataset(path, format=ds.ParquetFileFormat(default_fragment_scan_options=checked))
    wanted = (pc.field("split") == split) & pc.field("keep")
    batches = dataset.to_batches(columns=["text"], filter=wanted, batch_size=batch_size)
    for batch in read_checked(batches, path):
        if batch.num_rows:
            yield batch.column(0).to_pylist()


def iter_stream_part(
    path: Path, start: float, end: float, batch_size: int = 256
) -> Iterator[list[str]]:
    """Of an ordered corpus (`split.method = "ordered"`: every kept document is in `train`,
    and the encode stage cuts the token stream), the text in the fraction `[start, end)` of its
    bytes, in corpus order, a batch of texts at a time: the text an ordered split holds out,
    for what is measured before tokens exist (the tokenizer's statistics). A document the cut
    divides gives each part its own bytes (one long text, the ordered split's usual input, is
    all one document). Reads the corpus twice: once to count its bytes, once for the part."""
    from storage.shards import fraction_of  # the shards' cut, rounded as they round it

    total = sum(len(text.encode()) for batch in iter_split_texts(path, "train") for text in batch)
    low, high = fraction_of(total, start), fraction_of(total, end)
    offset, part = 0, []
    for batch in iter_split_texts(path, "train", batch_size):
        for text in batch:
            data = text.encode()
            first, last = max(low, offset), min(high, offset + len(data))
            if first < last:  # a cut inside a character drops its bytes on either side
                piece = data[first - offset : last - offset].decode("utf-8", "ignore")
                if piece.strip():
                    part.append(piece)
            offset += len(data)
        if len(part) >= batch_size:
            yield part
            part = []
        if offset >= high:
            break
    if part:
        yield part


def iter_split_part(path: Path, part: str, split: SplitConfig | None) -> Iterator[list[str]]:
    """The text of one split (`train`, `val` or `test`) as `split` makes it: the documents the
    corpus labels so, or under an ordered split (every document labelled `train` until the
    encode stage cuts the token stream) the part of the stream its fractions name."""
    if split is None or split.method != "ordered":
        return iter_split_texts(path, part)
    cut, test_start = 1.0 - split.val - split.test, 1.0 - split.test
    start, end = {"train": (0.0, cut), "val": (cut, test_start), "test": (test_start, 1.0)}[part]
    return iter_stream_part(path, start, end)
