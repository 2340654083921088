"""Readers: one function per format, each streaming documents from an open binary stream.

Every reader yields `RawDocument`s one at a time and holds at most one document (or one Parquet
batch) in memory, so ingest memory stays bounded whatever the input size. Problems raise
`InputError` naming the input (and line or byte) and saying what to do; a binary file is skipped
with a warning rather than failing the whole ingest.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import logging
import re
import sys
import zlib
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from lm.text.census_names import CensusNamesError, read_census_names
from lm.text.sources import InputError, ResolvedInput
from lm.text.wikipedia_dump import read_wikipedia_dump

logger = logging.getLogger("lm.text.readers")

SNIFF_BYTES = 8192

# Byte-order marks of the wide Unicode encodings, with the codec each implies (Windows Notepad's
# "Unicode" is UTF-16 LE). UTF-32 LE comes before UTF-16 LE: its BOM begins with UTF-16 LE's.
WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# A lone UTF-16 surrogate: a JSON escape like "\ud83d" without its pair decodes to one, and no
# UTF-8 writer (Parquet) can encode it.
UNPAIRED_SURROGATE = re.compile("[\ud800-\udfff]")


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
    if _skip_xml_prolog(_peek(stream)).startswith(b"<mediawiki"):
        return "wikipedia"
    return "text"


def _skip_xml_prolog(head: bytes) -> bytes:
    """The head from its first element on: what may come before an XML root (a BOM, the
    `<?xml ...?>` declaration, comments, whitespace) skipped, so a dump with a prolog is still
    recognised (the XML parser accepts all of these)."""
    rest = head.removeprefix(codecs.BOM_UTF8)
    while True:
        rest = rest.lstrip()
        if rest.startswith(b"<?"):
            end = rest.find(b"?>")
            closing = b"?>"
        elif rest.startswith(b"<!--"):
            end = rest.find(b"-->")
            closing = b"-->"
        else:
            return rest
        if end < 0:
            return b""  # the prolog runs past the sniffed bytes: no root element to see
        rest = rest[end + len(closing) :]


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
    except (OSError, EOFError, zlib.error) as error:
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
            yield from _read_jsonl(item, stream, encoding_errors)
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
    except (EOFError, OSError, zlib.error) as error:
        # A truncated or corrupt compressed stream surfaces here, part-way through the input
        # (gzip raises zlib.error for a damaged deflate block, OSError or EOFError otherwise).
        raise InputError(f"{item.name}: the file is truncated or corrupt ({error})") from error


def _is_binary(head: bytes) -> bool:
    return b"\x00" in head


def _wide_bom(head: bytes) -> tuple[bytes, str] | None:
    """The BOM and codec of a UTF-16 or UTF-32 file, which would otherwise look binary (NULs)."""
    for bom, encoding in WIDE_BOMS:
        if head.startswith(bom):
            return bom, encoding
    return None


def _decode(
    data: bytes,
    item: ResolvedInput,
    encoding_errors: str,
    line: int | None,
    encoding: str = "utf-8",
) -> str:
    where = f"{item.name}:{line}" if line else item.name
    label = encoding.upper().removesuffix("-LE").removesuffix("-BE")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        if encoding_errors == "strict":
            if line:  # `data` is the line: the offset counts from its start
                position = f"at byte {error.start} of line {line}"
            else:  # counted on the decoded prefix: in UTF-16/32 a newline is several bytes
                line_no = data[: error.start].decode(encoding, "replace").count("\n") + 1
                position = f"at byte {error.start} (line {line_no})"
            raise InputError(
                f"{item.name}: invalid {label} {position}; fix the file or set "
                'ingest.encoding_errors = "replace" to substitute U+FFFD'
            ) from None
        logger.warning("%s: invalid %s replaced with U+FFFD", where, label)
        return data.decode(encoding, errors="replace")


def _read_text(
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str
) -> Iterator[RawDocument]:
    head = _peek(stream)
    wide = _wide_bom(head)
    if wide is None and _is_binary(head):
        logger.warning(
            "%s: skipped, it looks like a binary file (it contains NUL bytes)", item.name
        )
        return
    if item.spec.one_doc_per_line:
        encoding = "utf-8"
        lines: Iterator[bytes] = stream
        if wide is not None:
            bom, encoding = wide
            stream.read(len(bom))
            lines = _wide_lines(stream, encoding)
        for line_no, line in enumerate(lines, start=1):
            text = _decode(line, item, encoding_errors, line_no, encoding).strip()
            if text:
                yield RawDocument(f"{item.name}:{line_no}", item.name, text, "plain")
        return
    # The BOM stays in the data and the codec ("utf-16", "utf-32") reads the byte order from it
    # and drops it, so an error's byte offset is the file's.
    encoding = wide[1].removesuffix("-le").removesuffix("-be") if wide else "utf-8"
    text = _decode(stream.read(), item, encoding_errors, None, encoding).removeprefix("\ufeff")
    if text.strip():
        yield RawDocument(item.name, item.name, text, "plain")


def _wide_lines(stream: BinaryIO, encoding: str) -> Iterator[bytes]:
    """The lines of a UTF-16/32 stream (past its BOM), each ending at a newline code unit.
    Splitting at every 0x0A byte, as iterating the stream does, would cut characters in two."""
    newline = "\n".encode(encoding)
    width = len(newline)
    buffer, search = b"", 0
    while chunk := stream.read(1 << 16):
        buffer += chunk
        start = 0
        while (end := buffer.find(newline, search)) >= 0:
            if end % width:  # the bytes straddle two code units: not a newline
                search = end + 1
                continue
            yield buffer[start : end + width]
            start = search = end + width
        buffer = buffer[start:]  # starts at a code unit, so `end % width` stays the test
        search = max(0, len(buffer) - width + 1)
    if buffer:
        yield buffer


def _read_census_names(item: ResolvedInput, stream: BinaryIO) -> Iterator[RawDocument]:
    try:
        for line_no, name in read_census_names(stream, item.name):
            yield RawDocument(f"{item.name}:{line_no}", item.name, name, "plain")
    except CensusNamesError as error:
        raise InputError(str(error)) from None


def _read_jsonl(
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str
) -> Iterator[RawDocument]:
    field = item.spec.text_field
    for line_no, raw in enumerate(stream, start=1):
        line = _decode(raw, item, encoding_errors, line_no)
        if line_no == 1:
            line = line.removeprefix("\ufeff")  # json.loads refuses a BOM in a str
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            # Some messages end in "at", expecting the position that str(error) appends.
            reason = f"{error.msg.removesuffix(' at')} at column {error.colno}"
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
        if surrogate := UNPAIRED_SURROGATE.search(text):
            if encoding_errors == "strict":
                raise InputError(
                    f"{item.name}:{line_no}: field '{field}' holds an unpaired surrogate "
                    f"(\\u{ord(surrogate.group()):04x}); fix the file or set "
                    'ingest.encoding_errors = "replace" to substitute U+FFFD'
                )
            logger.warning(
                "%s:%d: unpaired surrogate in field '%s' replaced with U+FFFD",
                item.name,
                line_no,
                field,
            )
            text = UNPAIRED_SURROGATE.sub("\ufffd", text)
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
    if not _is_text_type(column_type):
        raise InputError(f"{item.name}: column '{field}' holds {column_type}, not text")
    row = 0
    for batch in parquet.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text and text.strip():
                yield RawDocument(f"{item.name}#{row}", item.name, text, "plain")
            row += 1


def _is_text_type(column_type: pa.DataType) -> bool:
    """Every Arrow string layout, dictionary-encoded (a pandas Categorical) or not: each comes
    out of `to_pylist()` as Python str."""
    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    is_string_view = getattr(pa.types, "is_string_view", None)  # pyarrow >= 16
    return (
        pa.types.is_string(column_type)
        or pa.types.is_large_string(column_type)
        or (is_string_view is not None and is_string_view(column_type))
    )


def _read_csv(item: ResolvedInput, stream: BinaryIO, encoding_errors: str) -> Iterator[RawDocument]:
    field = item.spec.text_field
    csv.field_size_limit(sys.maxsize)
    # utf-8-sig: Excel's "CSV UTF-8" starts with a BOM, which would stick to the first column name.
    text_stream = io.TextIOWrapper(stream, encoding="utf-8-sig", errors=encoding_errors, newline="")
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
