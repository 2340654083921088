"""Readers: one function per format, each streaming documents from an open binary stream.

Every reader yields `RawDocument`s one at a time and holds at most one document (or one Parquet
batch) in memory, so ingest memory stays bounded whatever the input size. Problems raise
`InputError` naming the input (and line or byte) and saying what to do; a binary file is skipped
with a warning rather than failing the whole ingest.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from lm.text.census_names import CensusNamesError, read_census_names
from lm.text.sources import InputError, ResolvedInput
from lm.text.wikipedia_dump import read_wikipedia_dump

logger = logging.getLogger("lm.text.readers")

SNIFF_BYTES = 8192


class RawDocument(NamedTuple):
    source: str  # the input, with a locator: '#Page title', ':line', '#row'
    source_file: str  # the input alone, for grouping
    text: str
    markup: str  # 'plain' or 'wikitext': tells cleaning which markup to strip


def detect_format(item: ResolvedInput, stream: BinaryIO) -> str:
    """The concrete format of an input: its spec's, else from its name, else from its content."""
    if item.spec.format != "auto":
        return item.spec.format
    if item.name.startswith("names:"):
        return "census-names"
    name = ((item.url and item.url.split("?")[0]) or item.name).lower()
    for suffix in (".gz", ".bz2"):
        name = name.removesuffix(suffix)
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    head = _peek(stream)
    if head.lstrip().startswith(b"<mediawiki"):
        return "wikipedia"
    return "text"


def open_decompressed(item: ResolvedInput, raw: BinaryIO) -> BinaryIO:
    """Wrap a raw stream in the decompressor its name asks for."""
    name = (item.url or item.name).split("?")[0].lower()
    if name.endswith(".gz"):
        return gzip.open(raw)  # type: ignore[return-value]
    if name.endswith(".bz2"):
        return bz2.open(raw)  # type: ignore[return-value]
    return raw


def _peek(stream: BinaryIO) -> bytes:
    try:
        return stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]  # type: ignore[attr-defined]
    except (OSError, EOFError) as error:
        raise InputError(f"the file is truncated or corrupt ({error})") from error


def read_documents(
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str
) -> Iterator[RawDocument]:
    """Stream the documents of one input (already decompressed)."""
    try:
        fmt = detect_format(item, stream)
        if fmt == "parquet":
            yield from _read_parquet(item, stream)
        elif fmt == "csv":
            yield from _read_csv(item, stream, encoding_errors)
        elif fmt == "jsonl":
            yield from _read_jsonl(item, stream)
        elif fmt == "census-names":
            yield from _read_census_names(item, stream)
        elif fmt == "wikipedia":
            for title, text in read_wikipedia_dump(stream, item.name):
                yield RawDocument(f"{item.name}#{title}", item.name, text, "wikitext")
        else:
            yield from _read_text(item, stream, encoding_errors)
    except InputError as error:
        message = str(error)
        if not message.startswith(item.name):
            message = f"{item.name}: {message}"
        raise InputError(message) from error.__cause__
    except (EOFError, OSError) as error:
        # A truncated or corrupt compressed stream surfaces here, part-way through the input.
        raise InputError(f"{item.name}: the file is truncated or corrupt ({error})") from error


def _is_binary(head: bytes) -> bool:
    return b"\x00" in head


def _decode(data: bytes, item: ResolvedInput, encoding_errors: str, line: int | None) -> str:
    where = f"{item.name}:{line}" if line else item.name
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        if encoding_errors == "strict":
            line_no = line or data.count(b"\n", 0, error.start) + 1
            raise InputError(
                f"{item.name}: invalid UTF-8 at byte {error.start} (line {line_no}); fix the file "
                'or set ingest.encoding_errors = "replace" to substitute U+FFFD'
            ) from None
        logger.warning("%s: invalid UTF-8 replaced with U+FFFD", where)
        return data.decode("utf-8", errors="replace")


def _read_text(
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str
) -> Iterator[RawDocument]:
    if _is_binary(_peek(stream)):
        logger.warning(
            "%s: skipped, it looks like a binary file (it contains NUL bytes)", item.name
        )
        return
    if item.spec.one_doc_per_line:
        for line_no, line in enumerate(stream, start=1):
            text = _decode(line, item, encoding_errors, line_no).strip()
            if text:
                yield RawDocument(f"{item.name}:{line_no}", item.name, text, "plain")
        return
    text = _decode(stream.read(), item, encoding_errors, None).removeprefix("\ufeff")
    if text.strip():
        yield RawDocument(item.name, item.name, text, "plain")


def _read_census_names(item: ResolvedInput, stream: BinaryIO) -> Iterator[RawDocument]:
    try:
        for line_no, name in read_census_names(stream, item.name):
            yield RawDocument(f"{item.name}:{line_no}", item.name, name, "plain")
    except CensusNamesError as error:
        raise InputError(str(error)) from None


def _read_jsonl(item: ResolvedInput, stream: BinaryIO) -> Iterator[RawDocument]:
    field = item.spec.text_field
    for line_no, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            reason = error.msg if isinstance(error, json.JSONDecodeError) else "invalid UTF-8"
            raise InputError(
                f"{item.name}:{line_no}: the line is not valid JSON ({reason})"
            ) from None
        if not isinstance(record, dict) or field not in record:
            found = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise InputError(
                f"{item.name}:{line_no}: no field '{field}' (found: {found}); "
                "set text_field on this source"
            )
        text = record[field]
        if not isinstance(text, str):
            raise InputError(f"{item.name}:{line_no}: field '{field}' is not a string")
        if text.strip():
            yield RawDocument(f"{item.name}:{line_no}", item.name, text, "plain")


def _read_parquet(item: ResolvedInput, stream: BinaryIO) -> Iterator[RawDocument]:
    field = item.spec.text_field
    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{item.name}: not a readable Parquet file ({error})") from None
    names = parquet.schema_arrow.names
    if field not in names:
        raise InputError(
            f"{item.name}: no column '{field}' (columns: {', '.join(names)}); "
            "set text_field on this source"
        )
    column_type = parquet.schema_arrow.field(field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise InputError(f"{item.name}: column '{field}' holds {column_type}, not text")
    row = 0
    for batch in parquet.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text and text.strip():
                yield RawDocument(f"{item.name}#{row}", item.name, text, "plain")
            row += 1


def _read_csv(item: ResolvedInput, stream: BinaryIO, encoding_errors: str) -> Iterator[RawDocument]:
    field = item.spec.text_field
    csv.field_size_limit(sys.maxsize)
    text_stream = io.TextIOWrapper(stream, encoding="utf-8", errors=encoding_errors, newline="")
    try:
        reader = csv.DictReader(text_stream)
        if reader.fieldnames is None or field not in reader.fieldnames:
            found = ", ".join(reader.fieldnames or [])
            raise InputError(
                f"{item.name}: no column '{field}' (columns: {found}); "
                "set text_field on this source"
            )
        for row in reader:
            text = row.get(field)
            if text and text.strip():
                yield RawDocument(f"{item.name}:{reader.line_num}", item.name, text, "plain")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{item.name}: invalid UTF-8 near line {reader.line_num + 1} ({error.reason}); "
            'fix the file or set ingest.encoding_errors = "replace"'
        ) from None
    except csv.Error as error:
        raise InputError(f"{item.name}: line {reader.line_num}: malformed CSV ({error})") from None
    finally:
        text_stream.detach()
