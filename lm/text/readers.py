"""Readers: one function per format, each streaming documents from an open binary stream.

Every reader yields `RawDocument`s one at a time and holds at most one document (or one Parquet
batch) in memory, so ingest memory stays bounded whatever the input size. Problems raise
`InputError` naming the input (and line or byte) and saying what to do; a binary file is skipped
with a warning rather than failing the whole ingest.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import errno
import functools
import gzip
import io
import itertools
import json
import logging
import lzma
import re
import shutil
import sys
import tempfile
import threading
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from lm.atomic_files import WRITE_ERRNOS
from lm.text.census_names import CensusNamesError, read_census_names
from lm.text.json_array import JsonArrayError, beyond_python, json_array_values
from lm.text.long_documents import (
    MEGABYTE,
    CutLog,
    cut_long_documents,
    named_pieces,
    utf8_pieces,
)
from lm.text.sources import InputError, ResolvedInput, TransientInputError, names_one_file
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
# What Python's "surrogateescape" decoding makes of each byte that is not UTF-8.
ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


class RawDocument(NamedTuple):
    source: str  # the input, with a locator: '#Page title', ':line', '#row'
    source_file: str  # the input alone, for grouping
    text: str
    markup: str  # 'plain' or 'wikitext': tells cleaning which markup to strip
    # A piece of a text too long to be one document: that text's `source` (its pieces are
    # drawn to one split together: `split.unit`). None for a text read whole.
    part_of: str | None = None


PARQUET_MAGIC = b"PAR1"  # a Parquet file's first (and last) four bytes
ARROW_FILE_MAGIC = b"ARROW1"  # an Arrow IPC file's (Feather 2's)
# An Arrow IPC stream's first message: the continuation marker, then its metadata's length (a
# Hugging Face dataset's `save_to_disk` and cache files are streams).
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"


def detect_format(item: ResolvedInput, stream: BinaryIO) -> str:
    """The concrete format of an input: its spec's, else from its name, else from its content."""
    if item.spec.format not in ("auto", "parquet"):
        head = _peek(stream)
        if head.startswith(PARQUET_MAGIC) and _is_binary(head):
            # Read as the text it is not, it failed as "invalid UTF-8 at byte 4" with advice to
            # substitute U+FFFD: advice that reads the file as garbage. As for a wrong name.
            logger.warning('%s: read as Parquet, which it holds (its source says format = "%s")',
                           item.name, item.spec.format)  # fmt: skip
            return "parquet"
    if item.spec.format != "auto":
        return item.spec.format
    if item.name.startswith("names:"):
        return "census-names"
    by_name = _format_by_name(_file_name(item))
    head = _peek(stream)
    if head.startswith(PARQUET_MAGIC) and _is_binary(head):  # not a text that starts "PAR1"
        # By content: one not named .parquet was skipped as binary, and one named .json or
        # .csv (an export saved under the wrong name) failed as invalid UTF-8 or columnless.
        if by_name not in (None, "parquet"):
            logger.warning("%s: read as Parquet, which it holds (its name says %s)", item.name,
                           by_name.upper())  # fmt: skip
        return "parquet"
    if by_name is None and head.startswith((ARROW_FILE_MAGIC, ARROW_STREAM_MAGIC)):
        return "arrow"  # by content: read if it parses as Arrow, else skipped as binary
    if by_name is not None:
        return by_name
    if _skip_xml_prolog(head).startswith(b"<mediawiki"):
        return "wikipedia"
    return "text"


def _format_by_name(name: str) -> str | None:
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    for suffixes, format_named in NAMED_FORMATS:
        if name.endswith(suffixes):
            return format_named
    return None


NAMED_FORMATS = (
    ((".jsonl", ".ndjson"), "jsonl"),
    ((".parquet", ".pq", ".parq"), "parquet"),
    ((".csv",), "csv"),
    ((".tsv",), "tsv"),
    ((".json",), "json"),
    ((".arrow", ".arrows", ".feather", ".ipc"), "arrow"),
)


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


# The compressions an input's name may end in; each read as a stream.
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def _file_name(item: ResolvedInput) -> str:
    """The input's name as its suffixes read: lowercased, a URL without its query."""
    return (item.url.split("?")[0] if item.url else item.name).lower()


def open_decompressed(item: ResolvedInput, raw: BinaryIO) -> BinaryIO:
    """Wrap a raw stream in the decompressor its name asks for."""
    name = _file_name(item)
    if name.endswith(".gz"):
        return gzip.open(raw)  # type: ignore[return-value]
    if name.endswith(".bz2"):
        return bz2.open(raw)  # type: ignore[return-value]
    if name.endswith(".xz"):
        return lzma.open(raw)  # type: ignore[return-value]
    if name.endswith(".zst"):  # Python has no zstd of its own before 3.14; pyarrow's
        zstd = pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd")
        return io.BufferedReader(_ArrowReader(zstd))  # type: ignore[return-value]
    return raw


class _ArrowReader(io.RawIOBase):
    """A pyarrow input stream as a Python one (buffered on top, it can be peeked)."""

    def __init__(self, stream: pa.NativeFile):
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Prefixed(io.RawIOBase):
    """`prefix`, then the rest of `stream`: a UTF-16 file without its byte-order mark read as
    if it had one, so every reader's BOM handling applies."""

    def __init__(self, prefix: bytes, stream: BinaryIO):
        self.prefix, self.stream = prefix, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        # The prefix and the stream's first bytes in one read: a peek sees both (it was the
        # BOM alone, so a sniff of the first line found none).
        data, self.prefix = self.prefix[: len(buffer)], self.prefix[len(buffer) :]
        if len(data) < len(buffer):
            data += self.stream.read(len(buffer) - len(data))
        buffer[: len(data)] = data
        return len(data)


class _CheckedUtf8(io.RawIOBase):
    """The bytes of a MediaWiki dump (UTF-8 by its format), checked as they pass: the XML
    parser said only "not well-formed (invalid token)" at a line and column, whatever
    `ingest.encoding_errors` was. An invalid sequence is refused naming its byte, or under
    `replace` passed on as U+FFFD, placed and counted as in every other input. Valid bytes pass
    as they are; only a read holding invalid ones is decoded and encoded again."""

    def __init__(self, stream: BinaryIO, name: str, errors: str, replaced: Replacements):
        self.stream, self.name, self.errors, self.replaced = stream, name, errors, replaced
        # Each read is checked on from the last: a character cut by a read is held back (not
        # passed on) until the next read completes it.
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.held = b""
        self.offset = 0  # bytes of the stream read so far
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            data = self.stream.read(max(len(buffer), 1 << 16))
            self._take(data)
            self.offset += len(data)
            if not data and not self.pending:
                return 0
        size = min(len(buffer), len(self.pending))
        buffer[:size], self.pending = self.pending[:size], self.pending[size:]
        return size

    def _take(self, data: bytes) -> None:
        """Check `data`, the next read (b"" at the end), and queue what may be passed on."""
        whole, start = self.held + data, self.offset - len(self.held)
        try:
            self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as error:
            if self.errors == "strict":
                raise InputError(
                    f"{self.name}: invalid UTF-8 at byte {start + error.start}; fix the file or "
                    'set ingest.encoding_errors = "replace" to substitute U+FFFD'
                ) from None
            replacing = codecs.getincrementaldecoder("utf-8")("replace")
            text = replacing.decode(whole, final=not data)
            self.held = replacing.getstate()[0]
            self.decoder.reset()
            self.decoder.decode(self.held)  # held again, to be completed by the next read
            self.pending = text.encode()
            invalid = text.count("\ufffd") - whole.count(b"\xef\xbf\xbd")
            self.replaced.note(self.name, f"invalid UTF-8 at byte {start + error.start}")
            self.replaced.count += max(0, invalid - 1)
            return
        self.held = self.decoder.getstate()[0]
        self.pending = whole[: len(whole) - len(self.held)]


def _bomless_utf16(head: bytes) -> tuple[bytes, str] | None:
    """The BOM a UTF-16 file without one would have had, and its byte order's name, or None.
    Windows tools write such files ("Unicode" without a signature); they were skipped as binary
    (text) or failed as "not valid JSON" or "no column" (JSON, CSV). Said when the head holds a
    NUL and decodes to printable text in exactly one byte order. Read in the other order, a
    space or a line end becomes a character no text holds (U+2000, U+0A00), and so does most
    of any script; a NUL in every other byte, the sign this looked for first, is Latin text's
    alone (Cyrillic, Chinese and Hindi files were skipped as binary)."""
    head = head[: len(head) // 2 * 2]
    if len(head) < 4 or b"\0" not in head:
        return None
    readings = [
        (bom, encoding)
        for bom, encoding in (
            (codecs.BOM_UTF16_LE, "utf-16-le"),
            (codecs.BOM_UTF16_BE, "utf-16-be"),
        )
        if _printable(_utf16_head(head, encoding))
    ]
    return readings[0] if len(readings) == 1 else None


def _utf16_head(head: bytes, encoding: str) -> str | None:
    try:  # the head may end inside a surrogate pair: one code unit less
        return head.decode(encoding)
    except UnicodeDecodeError:
        try:
            return head[:-2].decode(encoding)
        except UnicodeDecodeError:
            return None


# Characters text holds that `str.isprintable` refuses: the spaces but the ASCII one (the
# ideographic space of Chinese and Japanese, the no-break space of French) and the format
# characters (the joiners of emoji and Persian, the soft hyphen, the bidi marks of Arabic and
# Hebrew). All but U+2000, the ASCII space read in the other byte order, which tells it apart.
_TEXT_SPACES_AND_FORMATS = ("Zs", "Zl", "Zp", "Cf")


def _printable(text: str | None) -> bool:
    return text is not None and all(
        char.isprintable() or char in "\t\n\r"
        or (unicodedata.category(char) in _TEXT_SPACES_AND_FORMATS and char != "\u2000")
        for char in text
    )  # fmt: skip


def _peek(stream: BinaryIO) -> bytes:
    try:
        return stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]  # type: ignore[attr-defined]
    except (OSError, EOFError, zlib.error) as error:
        raise _unreadable(error) from error


# The errnos of a read that failed in the device or the network under the file, not in its
# bytes: a later read may succeed, and it is no sign of damage.
TRANSIENT_READ_ERRNOS = {errno.EIO, errno.ETIMEDOUT, errno.ESTALE, errno.ECONNRESET,
                         errno.EHOSTDOWN, errno.ENETDOWN}  # fmt: skip


def _transient_read(error: BaseException) -> bool:
    """Whether a read failed in the device or network under the file (pyarrow's own errors
    carry no errno: its message names it)."""
    if isinstance(error, OSError) and error.errno in TRANSIENT_READ_ERRNOS:
        return True
    return isinstance(error, pa.ArrowException) and "Input/output error" in str(error)


def _unreadable(error: BaseException, prefix: str = "") -> InputError:
    """The error for a failed read of a file's (decompressed) bytes, `prefix` (its name)
    first: an I/O error of the disk is transient (retried), not a truncated or corrupt file."""
    if _transient_read(error):
        reason = getattr(error, "strerror", None) or "Input/output error"
        return TransientInputError(f"{prefix}cannot be read now ({reason})")
    if "requires too much memory" in str(error):  # whole, but made by `zstd --long`
        return InputError(
            f"{prefix}compressed with a window larger than the reader takes (128 MB: `zstd "
            "--long=28` or more); decompress it first (`zstd -d --long=31`), or compress it "
            "without --long"
        )
    return InputError(f"{prefix}the file is truncated or corrupt ({error})")


class Replacements:
    """Where one input's invalid text was replaced with U+FFFD (`encoding_errors = "replace"`):
    the first few places get a warning each, the rest one line at the end. A file with a bad
    byte on every line would otherwise log one warning per line, thousands of them."""

    SHOWN = 3

    def __init__(self, name: str):
        self.name = name
        self.count = 0
        # Bytes read before the file's own: the byte-order mark given to a UTF-16 file without
        # one. A whole file's byte offsets leave them out, so they are the file's.
        self.prepended = 0
        # Whether valid UTF-8 beyond ASCII was read before: a bad byte after it is a stray one
        # in a UTF-8 file, not a Windows-1252 file (converting would garble the rest).
        self.utf8_seen = False

    def note(self, where: str, what: str) -> None:
        self.count += 1
        if self.count <= self.SHOWN:
            logger.warning("%s: %s replaced with U+FFFD", where, what)

    def summarise(self) -> None:
        if self.count > self.SHOWN:
            logger.warning("%s: invalid text replaced with U+FFFD in %d places in all (the "
                           "first %d named above)", self.name, self.count, self.SHOWN)  # fmt: skip


def read_documents(
    item: ResolvedInput,
    stream: BinaryIO,
    encoding_errors: str,
    max_document_mb: float = 0.0,
    cuts: CutLog | None = None,
) -> Iterator[RawDocument]:
    """Stream the documents of one input (already decompressed), plain text over
    `max_document_mb` cut into pieces (`cut_long_documents`; 0: never), said in `cuts` (else
    in a log of this input's)."""
    replaced = Replacements(item.name)
    log = cuts or CutLog()
    try:
        if not _peek(stream):  # an empty file holds no documents, whatever its kind
            logger.warning("%s: empty, skipped", item.name)
            return
        fmt = detect_format(item, stream)
        _warn_of_settings_the_format_ignores(item, fmt)
        if fmt in ("text", "json", "jsonl", "csv", "tsv") and (
            bomless := _bomless_utf16(_peek(stream))
        ):
            logger.warning("%s: read as %s (it has no byte-order mark)", item.name,
                           bomless[1].upper())  # fmt: skip
            stream = io.BufferedReader(_Prefixed(bomless[0], stream))  # type: ignore[assignment]
            replaced.prepended = len(bomless[0])
        if fmt == "parquet":
            documents = _read_parquet(item, stream, encoding_errors, replaced)
        elif fmt == "arrow":
            documents = _read_arrow(item, stream, encoding_errors, replaced)
        elif fmt in ("csv", "tsv"):
            documents = _read_csv(item, stream, encoding_errors, replaced, fmt)
        elif fmt == "json":
            documents = _read_json(item, stream, encoding_errors, replaced)
        elif fmt == "jsonl":
            documents = _read_jsonl(item, stream, encoding_errors, replaced)
        elif fmt == "census-names":
            documents = _read_census_names(item, stream)
        elif fmt == "wikipedia":
            documents = _read_wikipedia(item, stream, encoding_errors, replaced)
        else:  # a text file is cut as it is read
            documents = _read_text(item, stream, encoding_errors, replaced, max_document_mb, log)
        if fmt != "text":
            documents = cut_long_documents(documents, max_document_mb, log)
        yield from documents
        replaced.summarise()
        if cuts is None:
            log.summarise()
    except InputError as error:
        if not isinstance(error, TransientInputError):  # read on after an I/O error: no
            _raise_if_corrupt(item, stream)  # garbage from a damaged stream, not the content
        message = str(error)
        if not message.startswith(item.name):
            message = f"{item.name}: {message}"
        raise type(error)(message) from error.__cause__  # a transient one stays transient
    except (EOFError, OSError, zlib.error, lzma.LZMAError, pa.ArrowException) as error:
        # A truncated or corrupt compressed stream surfaces here, part-way through the input
        # (gzip raises zlib.error for a damaged deflate block, OSError or EOFError otherwise;
        # pyarrow, ArrowException for a damaged Parquet file).
        raise _unreadable(error, f"{item.name}: ") from error


CORRUPTION_CHECK_BYTES = 16 << 20
FORMATS_WITH_FIELDS = ("json", "jsonl", "csv", "tsv", "parquet", "arrow")
_IGNORED_SETTINGS_SAID: set[tuple[str, str, str]] = set()


def _warn_of_settings_the_format_ignores(item: ResolvedInput, fmt: str) -> None:
    """A `text_field` or `one_doc_per_line` the input's format never reads is said, once a
    source and format (a folder's thousand text files, one line): set on a source that turned
    out to be another format, it was dropped in silence."""
    ignored = []
    if "text_field" in item.spec.model_fields_set and fmt not in FORMATS_WITH_FIELDS:
        ignored.append("text_field (read from JSON, JSONL, CSV, TSV, Parquet and Arrow inputs)")
    if item.spec.one_doc_per_line and fmt != "text":
        ignored.append("one_doc_per_line (read from text inputs)")
    if item.spec.delimiter is not None and fmt not in ("csv", "tsv"):
        ignored.append("delimiter (read from CSV and TSV inputs)")
    elif item.spec.delimiter not in (None, "\t") and _delimiter_of(item, fmt) == "\t":
        ignored.append('delimiter (a .tsv is read with tabs; format = "tsv" sets its separator)')
    for setting in ignored:
        said = (item.spec.path, setting, fmt)
        if said not in _IGNORED_SETTINGS_SAID:
            _IGNORED_SETTINGS_SAID.add(said)
            logger.warning("%s: %s is ignored: this input is %s%s", item.name, setting, fmt,
                           "" if item.name == item.spec.path else
                           f" (said once for the {fmt} inputs of {item.spec.path})")  # fmt: skip


def _read_wikipedia(
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str, replaced: Replacements
) -> Iterator[RawDocument]:
    checked = io.BufferedReader(_CheckedUtf8(stream, item.name, encoding_errors, replaced))
    for title, text in read_wikipedia_dump(checked, item.name):
        yield RawDocument(f"{item.name}#{title}", item.name, text, "wikitext")


def _raise_if_corrupt(item: ResolvedInput, stream: BinaryIO) -> None:
    """For a compressed input whose content failed to parse: read on, and if the decompressor
    finds the stream damaged (bz2 checks a block's CRC only after handing out its bytes,
    garbage that fails as "not valid JSON"), say that instead. Up to `CORRUPTION_CHECK_BYTES`
    more: past a bz2 block (900 KB at most), and not the whole of a 20 GB dump (35 minutes of
    bz2 before an error on its second line was said)."""
    if not _file_name(item).endswith(COMPRESSED_SUFFIXES):
        return
    try:
        left = CORRUPTION_CHECK_BYTES
        while left > 0 and (data := stream.read(min(1 << 20, left))):
            left -= len(data)
    except (EOFError, OSError, zlib.error, lzma.LZMAError, pa.ArrowException) as error:
        raise _unreadable(error, f"{item.name}: ") from error


def _is_binary(head: bytes) -> bool:
    return b"\x00" in head


# Files found beside texts that are not text, by their first bytes, and what to do about them.
BINARY_KINDS = (
    (b"\x1f\x8b", "gzip-compressed without .gz in its name: name it so"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed without .zst in its name: name it so"),
    (b"\xfd7zXZ\x00", "xz-compressed without .xz in its name: name it so"),
    (b"BZh91AY&SY", "bzip2-compressed without .bz2 in its name: name it so"),
    (b"%PDF-", "a PDF document: extract its text first"),
    (b"PK\x03\x04", "a zip archive (or a Word, Excel or EPUB file): unpack it or extract its text"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"SQLite format 3\x00", "an SQLite database"),
)  # fmt: skip


def _binary_kind(head: bytes) -> str | None:
    """What a file that is not text is, by its first bytes, with what to do; None for text
    (or a binary file of a kind not known here)."""
    return next((kind for magic, kind in BINARY_KINDS if head.startswith(magic)), None)


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
    replaced: Replacements,
    encoding: str = "utf-8",
    at_byte: int = 0,
    lines_before: int = 0,
) -> str:
    """`data` decoded: a line (or lines) from `line`, or a whole file, or (`line` None) a piece
    of one that starts at byte `at_byte` after `lines_before` line ends."""
    where = f"{item.name}:{line}" if line else item.name
    label = encoding.upper().removesuffix("-LE").removesuffix("-BE")
    try:
        text = data.decode(encoding)
        replaced.utf8_seen = replaced.utf8_seen or not data.isascii()
        return text
    except UnicodeDecodeError as error:
        if encoding_errors == "strict":
            if line:  # `data` is the line (or lines, ended by lone "\r"s) starting at `line`
                before = data[: error.start].decode(encoding).split("\r")
                offset = len(before[-1].encode(encoding))
                position = f"at byte {offset} of line {line + len(before) - 1}"
            else:  # counted on the decoded prefix: in UTF-16/32 a newline is several bytes
                before = data[: error.start].decode(encoding, "replace")
                line_no = lines_before + before.count("\n") + 1
                at = at_byte + error.start - replaced.prepended
                position = f"at byte {at} (line {line_no})"
            fix = (_windows_1252_advice(data, error.start)
                   if label == "UTF-8" and not replaced.utf8_seen else "")  # fmt: skip
            raise InputError(
                f"{item.name}: invalid {label} {position}; {fix or 'fix the file'} or set "
                'ingest.encoding_errors = "replace" to substitute U+FFFD'
            ) from None
        if line:
            replaced.note(where, f"invalid {label}")
            return data.decode(encoding, errors="replace")
        # A whole file: its invalid sequences placed and counted as lines' are (the first few
        # by place, then a count), not one line for the file. Replacing and counting run at C
        # speed; only the first few places go through a Python handler, which then stops.
        text = data.decode(encoding, errors="replace")
        invalid = text.count("\ufffd") - data.decode(encoding, errors="ignore").count("\ufffd")
        _first_invalid.found = []
        if replaced.count < Replacements.SHOWN:  # a later piece's places are counted only
            with contextlib.suppress(_EnoughFound):
                data.decode(encoding, errors=NOTE_FIRST_INVALID)
        for offset in _first_invalid.found:
            line_no = lines_before + data[:offset].decode(encoding, "replace").count("\n") + 1
            at = at_byte + offset - replaced.prepended
            replaced.note(item.name, f"invalid {label} at byte {at} (line {line_no})")
        replaced.count += max(0, invalid - len(_first_invalid.found))
        return text


def _windows_1252_advice(data: bytes, at: int) -> str:
    """How to convert a file that is not UTF-8 but Windows-1252 (Latin-1 with curly quotes and
    dashes: what Windows editors, Excel and older Project Gutenberg texts write), with the word
    at the invalid byte as it reads in that encoding, or "" when it does not read as one. Said
    as "invalid UTF-8 at byte 13" alone, the user had to guess the encoding. Not said where the
    bytes around hold valid UTF-8 beyond ASCII (a UTF-8 file with a stray byte: converting it
    would garble the rest), nor where Windows-1252 gives a control character or an unassigned
    byte (not text in that encoding either)."""
    # All of what was read before the byte decoded, so a byte beyond ASCII there is valid
    # UTF-8: a text read whole with its accents 3 KB before a stray byte was said to be
    # Windows-1252 (searched in place: the bytes before may be a 1 GB file's).
    if NON_ASCII_BYTE.search(data, 0, at):
        return ""
    start = max(0, at - 2048)
    window = data[start : at + 2048]
    after = data[at : at + 2048].decode("utf-8", "replace")  # before it, ASCII alone (above)
    if any(char > "\x7f" and char != "\ufffd" for char in after):
        return ""
    try:
        text = window.decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D are unassigned
        return ""
    if not all(char.isprintable() or char in "\t\n\r\f" for char in text):
        return ""
    # Latin-script text has its accented letters inside ASCII words ("café", "Straße"); a
    # Cyrillic or Greek code page, or Shift-JIS, has runs of high bytes that Windows-1252
    # reads as garbage ("Ïðèâåò"): not said to be Windows-1252 then.
    high = [i for i, byte in enumerate(window) if byte > 0x7F]
    beside_letters = sum(
        any(0 <= j < len(window) and chr(window[j]).isascii() and chr(window[j]).isalpha()
            for j in (i - 1, i + 1))
        for i in high
    )  # fmt: skip
    if 2 * beside_letters < len(high):
        return ""
    spot = at - start  # one byte per character
    left, right = spot, spot + 1
    while left > max(0, spot - 20) and _in_a_word(text[left - 1]):
        left -= 1
    while right < min(len(text), spot + 20) and _in_a_word(text[right]):
        right += 1
    word = text[left:right]
    return (
        f'it reads as Windows-1252 (Latin-1) there ("{word}"): convert the file to UTF-8 '
        "(iconv -f cp1252 -t utf-8)"
    )


NON_ASCII_BYTE = re.compile(rb"[\x80-\xff]")


def _in_a_word(char: str) -> bool:
    return char.isalnum() or char in "'\u2019-"


# Where the first invalid sequences of the decode in progress are, per thread (ingest may read
# files on several threads).
_first_invalid = threading.local()
NOTE_FIRST_INVALID = "lmforge-note-first-invalid"


class _EnoughFound(Exception):
    """Raised by the handler once the places shown are found: the rest need not be decoded."""


def _note_first_invalid(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    _first_invalid.found.append(error.start)
    if len(_first_invalid.found) >= Replacements.SHOWN:
        raise _EnoughFound
    return "\ufffd", error.end


codecs.register_error(NOTE_FIRST_INVALID, _note_first_invalid)


def _read_text(
    item: ResolvedInput,
    stream: BinaryIO,
    encoding_errors: str,
    replaced: Replacements,
    max_document_mb: float,
    cuts: CutLog,
) -> Iterator[RawDocument]:
    head = _peek(stream)
    wide = _wide_bom(head)
    kind = _binary_kind(head) if wide is None else None
    if kind is not None:  # a PDF in a folder of texts failed the run as invalid UTF-8
        logger.warning("%s: skipped, %s, not text", item.name, kind)
        return
    if wide is None and _is_binary(head):
        logger.warning(
            "%s: skipped, it looks like a binary file (it contains NUL bytes; UTF-16 text "
            "without a byte-order mark that could not be told apart: convert it to UTF-8)",
            item.name,
        )
        return
    if item.spec.one_doc_per_line:
        lines = _read_lines(item, stream, encoding_errors, replaced, wide)
        yield from cut_long_documents(lines, max_document_mb, cuts)
        return
    if wide is None and max_document_mb:
        yield from _read_text_in_pieces(item, stream, encoding_errors, replaced, max_document_mb,
                                        cuts)  # fmt: skip
        return
    # The BOM stays in the data and the codec ("utf-16", "utf-32") reads the byte order from it
    # and drops it, so an error's byte offset is the file's.
    encoding = _codec_reading_its_bom(wide) if wide else "utf-8"
    text = _decode(stream.read(), item, encoding_errors, None, replaced, encoding)
    text = text.removeprefix("\ufeff")
    if text.strip():
        yield from cut_long_documents([RawDocument(item.name, item.name, text, "plain")],
                                      max_document_mb, cuts)  # fmt: skip


def _read_lines(
    item: ResolvedInput,
    stream: BinaryIO,
    encoding_errors: str,
    replaced: Replacements,
    wide: tuple[bytes, str] | None,
) -> Iterator[RawDocument]:
    """A `one_doc_per_line` file's lines, each named by its number."""
    lines, encoding = _lines(stream, wide)
    line_no = 0
    for chunk in _utf8_lines_at_lone_carriage_returns(lines, encoding):
        text = _decode(chunk, item, encoding_errors, line_no + 1, replaced, encoding)
        if line_no == 0:
            text = text.removeprefix("\ufeff")  # a UTF-8 BOM: a mark, not the first name's
        for line in _split_at_lone_carriage_returns(text):
            line_no += 1
            if line := line.strip():
                yield RawDocument(f"{item.name}:{line_no}", item.name, line, "plain")


TEXT_READ_BYTES = 1 << 20


def _read_text_in_pieces(
    item: ResolvedInput,
    stream: BinaryIO,
    encoding_errors: str,
    replaced: Replacements,
    max_document_mb: float,
    cuts: CutLog,
) -> Iterator[RawDocument]:
    """A UTF-8 text file as one document, or cut as it is read into the pieces that
    `cut_long_documents` cuts the whole text into: a 1 GB file read whole took about 7 GB
    before it was cut. A piece's invalid bytes are placed by their byte and line in the file;
    replaced with U+FFFD (3 bytes) they take a piece over the limit (3 times it, were every
    byte invalid)."""
    limit = int(max_document_mb * MEGABYTE)
    # Read, not peeked: a peek holds what one read of the decompressor gave, and a BOM split
    # between two gzip members stayed in the first piece's text (it is a mark, not the text's:
    # the byte offsets still count it).
    head = stream.read(len(codecs.BOM_UTF8))
    bom = len(head) if head == codecs.BOM_UTF8 else 0
    blocks = itertools.chain([head[bom:]], iter(lambda: stream.read(TEXT_READ_BYTES), b""))
    pieces = utf8_pieces(blocks, limit)
    first = next(pieces, None)
    if first is None:
        return
    second = next(pieces, None)
    if second is None:  # short enough to stay whole
        text = _decode(first[1], item, encoding_errors, None, replaced, at_byte=bom)
        if text.strip():
            yield RawDocument(item.name, item.name, text, "plain")
        return
    read = 0

    def decoded() -> Iterator[str]:
        nonlocal read
        lines_before = 0
        for offset, data in itertools.chain([first, second], pieces):
            yield _decode(data, item, encoding_errors, None, replaced, at_byte=bom + offset,
                          lines_before=lines_before)  # fmt: skip
            lines_before += data.count(b"\n")
            read = offset + len(data)

    count = 0
    for name, text in named_pieces(item.name, decoded()):
        count += 1
        yield RawDocument(name, item.name, text, "plain", part_of=item.name)
    cuts.note(item.name, read, count, limit)


def _split_at_lone_carriage_returns(text: str) -> list[str]:
    """A newline-ended chunk's lines: one, or several where a carriage return alone ends a line
    (classic Mac OS files end every line so, and the chunk is then the whole file). The "\r\n"
    of a Windows line ends one line, not two."""
    body = text.removesuffix("\n").removesuffix("\r")
    return body.split("\r")


def _lines(stream: BinaryIO, wide: tuple[bytes, str] | None) -> tuple[Iterator[bytes], str]:
    """The stream's lines as bytes, with the codec that decodes each: UTF-8, or past its BOM
    the UTF-16/32 byte order the BOM named."""
    if wide is None:
        return stream, "utf-8"
    bom, encoding = wide
    stream.read(len(bom))
    return _wide_lines(stream, encoding), encoding


def _codec_reading_its_bom(wide: tuple[bytes, str]) -> str:
    """The codec that takes the byte order from the BOM and drops it: utf-16 or utf-32."""
    return wide[1].removesuffix("-le").removesuffix("-be")


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
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str, replaced: Replacements,
    one_object_may_be_metadata: bool = False,
) -> Iterator[RawDocument]:  # fmt: skip
    """`one_object_may_be_metadata` (a `.json` input): a file whose one line is an object
    without the text field is `_NotARecord` (metadata: Hugging Face datasets writes its
    `dataset_info.json` and `dataset_dict.json` on one line), not records under another
    field; told once a second record is looked for."""
    field = item.spec.text_field
    lines, encoding = _lines(stream, _wide_bom(_peek(stream)))
    line_no, seen = 0, False  # seen: a record before this line
    alone: _FirstRecordWithoutField | None = None  # the first record, if it lacks the field
    for raw in _utf8_lines_at_lone_carriage_returns(lines, encoding):
        chunk = _decode(raw, item, encoding_errors, line_no + 1, replaced, encoding)
        if line_no == 0:
            chunk = chunk.removeprefix("\ufeff")  # json.loads refuses a BOM in a str
        # Lines a carriage return alone ends (classic Mac OS) too: JSON escapes one in a string,
        # so a bare one ends a record (the file failed as "Extra data" on its first line).
        for line in _split_at_lone_carriage_returns(chunk):
            line_no += 1
            if alone is not None:
                if line.strip():  # a second record: records under another field
                    raise alone
                continue
            try:
                yield from _jsonl_record(item, line, line_no, field, encoding_errors, replaced,
                                         first=not seen)  # fmt: skip
            except _FirstRecordWithoutField as error:
                if not one_object_may_be_metadata:
                    raise
                alone = error
            seen = seen or bool(line.strip())
    if alone is not None:
        raise _NotARecord(
            f"{item.name}: one JSON object without a field '{field}' (found: {alone.found}); "
            "set text_field on this source"
        )


_LONE_CR = re.compile(rb"\r(?!\n)")


def _utf8_lines_at_lone_carriage_returns(lines: Iterator[bytes], encoding: str) -> Iterator[bytes]:
    """UTF-8 `lines` cut at a carriage return alone as well, before they are decoded, so that
    invalid text is placed on its own line (a byte 0x0D is never inside a UTF-8 character).
    Other encodings' lines are cut once decoded."""
    for raw in lines:
        if encoding != "utf-8" or b"\r" not in raw.rstrip(b"\r\n"):
            yield raw
        else:
            parts = _LONE_CR.split(raw.removesuffix(b"\n"))
            yield from (part + b"\r" for part in (parts[:-1] if not parts[-1] else parts))


def _jsonl_record(
    item: ResolvedInput, line: str, line_no: int, field: str, encoding_errors: str,
    replaced: Replacements, first: bool = True,
) -> Iterator[RawDocument]:  # fmt: skip
    """The document of one JSONL line (without its line ending), if it holds one."""
    if line.strip():
        try:  # without its line ending, which would be the "invalid control character" of
            record = json.loads(line)  # a line cut inside a string
        except json.JSONDecodeError as error:
            # Some messages end in "at", expecting the position that str(error) appends.
            reason = f"{error.msg.removesuffix(' at')} at column {error.colno}"
            raise InputError(
                f"{item.name}:{line_no}: the line is not valid JSON ({reason})"
            ) from None
        except (RecursionError, ValueError) as error:
            if (why := beyond_python(error)) is None:
                raise
            raise InputError(f"{item.name}:{line_no}: the line holds JSON {why}") from None
        where = f"{item.name}:{line_no}"
        text = _record_text(record, where, field, encoding_errors, replaced, first=first)
        if text is not None and text.strip():
            yield RawDocument(where, item.name, text, "plain")


def _record_text(
    record: Any, where: str, field: str, encoding_errors: str, replaced: Replacements,
    strings: bool = False, first: bool = True,
) -> str | None:  # fmt: skip
    """The text of one JSON record: its `field`, a string (None for a null: no text, as a
    Parquet null or an empty line). `strings`: a bare string is a record too (a JSON array of
    texts). `first`: no record came before it (after one, a missing field is this record's
    fault, not the source's `text_field`'s)."""
    if strings and isinstance(record, str):
        text = record
    elif isinstance(record, dict) and field not in record and (nested := _nested(record, field)):
        text = nested[0]
    elif not isinstance(record, dict) or field not in record:
        found = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        if first:
            raise _FirstRecordWithoutField(
                f"{where}: no field '{field}' (found: {found}); set text_field on this source",
                found,
            )
        raise InputError(f"{where}: no field '{field}' (found: {found}); the records before "
                         f"it have '{field}': fix or remove this one")  # fmt: skip
    else:
        text = record[field]
    if text is None:
        return None
    if not isinstance(text, str):
        raise InputError(
            f"{where}: field '{field}' holds {json.dumps(text)[:40]} "
            f"({type(text).__name__}), not a string"
        )
    if surrogate := UNPAIRED_SURROGATE.search(text):
        if encoding_errors == "strict":
            raise InputError(
                f"{where}: field '{field}' holds an unpaired surrogate "
                f"(\\u{ord(surrogate.group()):04x}); fix the file or set "
                'ingest.encoding_errors = "replace" to substitute U+FFFD'
            )
        replaced.note(where, f"unpaired surrogate in field '{field}'")
        text = UNPAIRED_SURROGATE.sub("\ufffd", text)
    return text


def _nested(record: dict, field: str) -> tuple[Any] | None:
    """The value at a dotted path (`text_field = "content.text"` for `{"content": {"text":
    ...}}`, as crawls and API dumps nest it), in a tuple, or None where the path leads nowhere.
    A key that holds the dots itself is found first, by the caller."""
    if "." not in field:
        return None
    value: Any = record
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return (value,)


def _read_json(
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str, replaced: Replacements
) -> Iterator[RawDocument]:
    """A `.json` input. Many exporters (Hugging Face datasets' `to_json`, pandas with
    `lines=True`) write JSON Lines under that name: read as such when its first line is a whole
    JSON object. Otherwise one JSON document: an array of records (or of strings), each a
    document labelled by its index, or one record. Read as plain text, its braces, quotes and
    field names went into the corpus. In a folder or pattern, a file that is one JSON object
    without the text field (`dataset_info.json`, `package.json`: no records at all) is skipped
    with a warning; records without it (a wrong `text_field`) stay an error."""
    try:
        yield from _json_documents(item, stream, encoding_errors, replaced)
    except _NotARecord:
        if _named_itself(item):
            raise
        logger.warning(
            "%s: skipped, one JSON object without a field '%s' (a metadata file?); to read it, "
            "name it as a source of its own with its text_field", item.name, item.spec.text_field,
        )  # fmt: skip


class _NotARecord(InputError):
    """A `.json` file that is one object without the text field: metadata, most likely."""


class _FirstRecordWithoutField(InputError):
    """The first JSON record lacks the text field; `found` names the fields it has."""

    def __init__(self, message: str, found: str = ""):
        super().__init__(message)
        self.found = found


def _named_itself(item: ResolvedInput) -> bool:
    """Whether the source named this very file (or URL), rather than a folder or pattern."""
    if item.url is not None or item.path is None:
        return True
    try:
        return Path(item.spec.path).expanduser().resolve() == item.path.resolve()
    except (OSError, RuntimeError):
        return True


def _json_documents(
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str, replaced: Replacements
) -> Iterator[RawDocument]:
    head = _peek(stream)
    wide = _wide_bom(head)
    encoding = _codec_reading_its_bom(wide) if wide else "utf-8"
    # The head as text (UTF-16/32 too), cut where a character may be: decoded leniently.
    start = head.decode(encoding, errors="ignore").removeprefix("\ufeff").lstrip()
    first_line = start.split("\n", 1)[0]
    if start.startswith("{") and (len(first_line) == len(start) or _is_json(first_line)):
        yield from _read_jsonl(item, stream, encoding_errors, replaced,
                               one_object_may_be_metadata=True)  # fmt: skip
        return
    if start.startswith("["):
        yield from _json_array_documents(item, stream, encoding_errors, replaced, encoding)
        return
    field = item.spec.text_field
    content = _decode(stream.read(), item, encoding_errors, None, replaced, encoding)
    try:
        document = json.loads(content.removeprefix("\ufeff"))
    except json.JSONDecodeError as error:
        reason = error.msg.removesuffix(" at")
        raise _not_valid_json(item, reason, error.lineno, error.colno) from None
    except (RecursionError, ValueError) as error:
        if (why := beyond_python(error)) is None:
            raise
        raise InputError(f"{item.name}: the file holds JSON {why}") from None
    if isinstance(document, dict) and field not in document:
        found = ", ".join(document)
        raise _NotARecord(
            f"{item.name}: one JSON object without a field '{field}' (found: {found}); set "
            "text_field on this source"
        )
    text = _record_text(document, item.name, field, encoding_errors, replaced)
    if text is not None and text.strip():
        yield RawDocument(item.name, item.name, text, "plain")


def _json_array_documents(
    item: ResolvedInput,
    stream: BinaryIO,
    encoding_errors: str,
    replaced: Replacements,
    encoding: str,
) -> Iterator[RawDocument]:
    """A `.json` file that is one array: each record (or string) a document labelled by its
    index, read one at a time (`lm.text.json_array`). UTF-8 is checked as it is read; a
    UTF-16/32 file (rare) is decoded whole first."""
    if encoding == "utf-8":
        checked = io.BufferedReader(_CheckedUtf8(stream, item.name, encoding_errors, replaced))
        text: Any = io.TextIOWrapper(checked, encoding="utf-8-sig", newline="")
    else:
        content = _decode(stream.read(), item, encoding_errors, None, replaced, encoding)
        text = io.StringIO(content.removeprefix("\ufeff"), newline="")
    try:
        for index, record in enumerate(json_array_values(text)):
            where = f"{item.name}#{index}"
            text_of = _record_text(record, where, item.spec.text_field, encoding_errors, replaced,
                                   strings=True, first=index == 0)  # fmt: skip
            if text_of is not None and text_of.strip():
                yield RawDocument(where, item.name, text_of, "plain")
    except JsonArrayError as error:
        if error.beyond_python:
            place = f"{item.name}:{error.line}"
            raise InputError(f"{place}: the value at column {error.column} holds JSON "
                             f"{error.reason}") from None  # fmt: skip
        raise _not_valid_json(item, error.reason, error.line, error.column) from None


def _not_valid_json(item: ResolvedInput, reason: str, line: int, column: int) -> InputError:
    return InputError(
        f"{item.name}:{line}: not valid JSON ({reason} at column {column}); a file of one "
        "JSON value per line reads as JSON Lines: name it .jsonl"
    )


def _is_json(data: str) -> bool:
    try:
        json.loads(data)
    except (RecursionError, ValueError):  # nested deeper than Python reads: not JSON Lines
        return False
    return True


def _read_parquet(
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str, replaced: Replacements
) -> Iterator[RawDocument]:
    if stream.seekable() and not _file_name(item).endswith(COMPRESSED_SUFFIXES):
        yield from _read_parquet_file(item, stream, encoding_errors, replaced)
    else:
        # Parquet is read from its footer back: a stream that cannot seek (zstd's) failed as
        # "not a readable Parquet file (seek)", and one of gzip's, bz2's or xz's decompressed
        # from the start again at each seek back (a row group each). Copied to a file first.
        yield from _read_copied(item, stream, encoding_errors, replaced, _read_parquet_file)


def _read_parquet_file(
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str, replaced: Replacements
) -> Iterator[RawDocument]:
    field = item.spec.text_field
    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as error:
        if _transient_read(error):
            raise _unreadable(error, f"{item.name}: ") from None
        raise InputError(f"{item.name}: not a readable Parquet file ({error})") from None
    if _summary_of_other_files(parquet):
        # Dask's and Spark's `_metadata`: the footers of the dataset's files, whose pages it
        # does not hold; read, it failed the whole ingest as "corrupt from about row 0 on".
        logger.warning("%s: skipped, a Parquet summary file (its row groups are in the files "
                       "beside it, which are read on their own)", item.name)  # fmt: skip
        return
    _check_text_column(item, parquet.schema_arrow, "a Parquet")
    batches = parquet.iter_batches(columns=[field], batch_size=1024)
    yield from _column_documents(item, (batch.column(0) for batch in batches), encoding_errors,
                                 replaced)  # fmt: skip


def _check_text_column(item: ResolvedInput, schema: pa.Schema, kind: str) -> int:
    """The index of the source's text column in `schema`, refused where there is none, or
    more than one, or it does not hold text."""
    field, names = item.spec.text_field, schema.names
    if names.count(field) > 1:  # pyarrow's KeyError, "Column text does not exist in schema"
        raise InputError(
            f"{item.name}: {names.count(field)} columns are named '{field}'; {kind} writer "
            "that allows it made the file: give the text column a name of its own"
        )
    if field not in names:
        raise InputError(
            f"{item.name}: no column '{field}' (columns: {', '.join(names)}); "
            "set text_field on this source"
        )
    column_type = schema.field(field).type
    if not _is_text_type(column_type):
        raise InputError(f"{item.name}: column '{field}' holds {column_type}, not text")
    return names.index(field)


def _column_documents(
    item: ResolvedInput, columns: Iterator[pa.Array], encoding_errors: str,
    replaced: Replacements,
) -> Iterator[RawDocument]:  # fmt: skip
    """One document per row with text, from the text column's batches (Parquet's or Arrow's),
    each labelled `file#row`; said where there is none."""
    row = found = 0
    while True:
        try:  # a damaged page is found as its batch is read, part-way through the file
            column = next(columns, None)
        except (pa.ArrowException, OSError) as error:
            if _transient_read(error):
                raise _unreadable(error, f"{item.name}: ") from None
            raise InputError(f"{item.name}: corrupt from about row {row} on ({error})") from None
        if column is None:
            break
        for text in _texts(column, item, row, encoding_errors, replaced):
            if text and text.strip():
                found += 1
                yield RawDocument(f"{item.name}#{row}", item.name, text, "plain")
            row += 1
    if not found:  # else "no documents found ... (the warnings above say why)", and none did
        field = item.spec.text_field
        logger.warning("%s: no documents: %s", item.name,
                       f"{row:,} rows, none with text in column '{field}'" if row
                       else "it has no rows")  # fmt: skip


def _read_arrow(
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str, replaced: Replacements,
    copied: bool = False,
) -> Iterator[RawDocument]:  # fmt: skip
    """An Arrow IPC stream (what a Hugging Face dataset's `save_to_disk` writes, `.arrow`) or
    file (Feather 2), one record batch at a time. They were skipped, with advice to write the
    dataset as Parquet first. A file found Arrow by its first bytes alone that does not parse
    is skipped as binary, as it was; one named so is refused."""
    named = _format_by_name(_file_name(item)) == "arrow" or item.spec.format == "arrow"
    head = _peek(stream)
    if head.startswith(b"FEA1"):  # pyarrow reads these whole into memory, or not at all
        raise InputError(
            f"{item.name}: a Feather version 1 file, which is not read: write it again as "
            "Feather 2 or Parquet (pyarrow.feather.read_table, then write_feather or "
            "pyarrow.parquet.write_table)"
        )
    if (
        not head.startswith((ARROW_FILE_MAGIC, ARROW_STREAM_MAGIC))
        and _format_by_name(_file_name(item)) == "json"
        and not _named_itself(item)
    ):  # `format = "arrow"` on a `save_to_disk` folder: its dataset_info.json and state.json
        logger.warning('%s: skipped, JSON (a dataset\'s metadata?), not the Arrow that the '
                       'source\'s format = "arrow" reads', item.name)  # fmt: skip
        return
    try:
        if head.startswith(ARROW_FILE_MAGIC):
            if not copied and (
                not stream.seekable() or _file_name(item).endswith(COMPRESSED_SUFFIXES)
            ):  # read from its footer: a decompressing stream is copied to a file first
                copy_reader = functools.partial(_read_arrow, copied=True)
                yield from _read_copied(item, stream, encoding_errors, replaced, copy_reader)
                return
            file_reader = pa.ipc.open_file(stream)
            schema = file_reader.schema
            batches = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
        else:
            stream_reader = pa.ipc.open_stream(stream)
            schema, batches = stream_reader.schema, iter(stream_reader)
    except (pa.ArrowException, OSError) as error:
        if _transient_read(error):
            raise _unreadable(error, f"{item.name}: ") from None
        if not named:
            logger.warning("%s: skipped, it looks like a binary file (it starts as Arrow does, "
                           "but is not: %s)", item.name, error)  # fmt: skip
            return
        raise InputError(f"{item.name}: not a readable Arrow file or stream ({error})") from None
    field = item.spec.text_field
    if field not in schema.names and _hugging_face_cache(item):
        # `Dataset.map` and `filter` write these beside the dataset (a tokenized copy): it was
        # skipped as an Arrow file, and failed the run once Arrow was read.
        logger.warning("%s: skipped, a Hugging Face datasets cache file without column '%s' "
                       "(columns: %s)", item.name, field, ", ".join(schema.names))  # fmt: skip
        return
    index = _check_text_column(item, schema, "an Arrow")
    yield from _column_documents(item, (batch.column(index) for batch in batches),
                                 encoding_errors, replaced)  # fmt: skip


def _hugging_face_cache(item: ResolvedInput) -> bool:
    """Whether a folder or pattern found this Arrow file under the name `datasets` gives the
    output of a `map` or `filter` (`cache-<fingerprint>.arrow`)."""
    return (item.path is not None and item.path.name.startswith("cache-")
            and not _named_itself(item))  # fmt: skip


def _summary_of_other_files(parquet: pq.ParquetFile) -> bool:
    """Whether a Parquet file's row groups lie in other files (`ColumnChunk.file_path`), as in
    the `_metadata` summary that Dask, Spark and `pq.write_metadata` write beside a dataset."""
    metadata = parquet.metadata  # the first chunk says: a writer sets it on every one or none
    return bool(metadata.num_row_groups and metadata.num_columns
                and metadata.row_group(0).column(0).file_path)  # fmt: skip


def _read_copied(
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str, replaced: Replacements,
    read: Callable[..., Iterator[RawDocument]],
) -> Iterator[RawDocument]:  # fmt: skip
    """`read` (`_read_parquet_file`, or an Arrow file's) of a decompressed copy in a temporary
    file (`TMPDIR`): both formats are read from their footer back."""
    with tempfile.TemporaryFile() as copy:
        try:
            shutil.copyfileobj(stream, copy, 1 << 20)
        except OSError as error:
            if error.errno not in WRITE_ERRNOS:
                raise  # the input's own damage (a corrupt stream), said as such
            raise InputError(
                f"{item.name}: unpacking it to a temporary file failed ({error.strerror}): a "
                "compressed Parquet or Arrow file is read from a copy; set TMPDIR to a folder "
                "with room for it"
            ) from None
        copy.seek(0)
        yield from read(item, io.BufferedReader(copy), encoding_errors, replaced)  # type: ignore[arg-type]


def _texts(
    column: pa.Array, item: ResolvedInput, first_row: int, encoding_errors: str,
    replaced: Replacements,
) -> list[str | None]:  # fmt: skip
    """A batch's strings. Parquet promises UTF-8, but a writer may not have checked: where a
    value is not, it is refused naming its row, or replaced, as `ingest.encoding_errors` says,
    like invalid UTF-8 in any other input."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        pass
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    texts: list[str | None] = []
    for row, data in enumerate(column.cast(pa.large_binary()).to_pylist(), start=first_row):
        try:
            texts.append(None if data is None else data.decode("utf-8"))
        except UnicodeDecodeError as error:
            where = f"{item.name}#{row}"
            if encoding_errors == "strict":
                raise InputError(
                    f"{where}: column '{item.spec.text_field}' holds invalid UTF-8 at byte "
                    f"{error.start} of the value; fix the file or set "
                    'ingest.encoding_errors = "replace" to substitute U+FFFD'
                ) from None
            replaced.note(where, "invalid UTF-8")
            texts.append(data.decode("utf-8", errors="replace"))
    return texts


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


def _read_csv(
    item: ResolvedInput, stream: BinaryIO, encoding_errors: str, replaced: Replacements,
    fmt: str = "csv",
) -> Iterator[RawDocument]:  # fmt: skip
    """One document per record, from the text column. A record is labelled with the line it
    starts on. Damage is an error naming the line, never a silent loss: a quote that never
    closes (it would swallow every record after it), a record too short to reach the column.
    `tsv`: fields separated by tabs, quoted as in CSV (as pandas and spreadsheets write it)."""
    field = item.spec.text_field
    csv.field_size_limit(sys.maxsize)
    wide = _wide_bom(_peek(stream))
    # utf-8-sig: Excel's "CSV UTF-8" starts with a BOM, which would stick to the first column
    # name. Bytes that are not UTF-8 are kept as escapes and dealt with per record, where the
    # line is known: the decoder reads 8 KB ahead of the parser, so its own errors name none.
    encoding, errors = ("utf-8-sig", "surrogateescape")
    if wide:
        encoding, errors = _codec_reading_its_bom(wide), encoding_errors
    text_stream = io.TextIOWrapper(stream, encoding=encoding, errors=errors, newline="")
    label = encoding.upper().removesuffix("-SIG")
    line = 0  # lines read: the next record starts on the line after
    try:
        delimiter = _delimiter_of(item, fmt)
        reader = csv.reader(text_stream, strict=True, delimiter=delimiter)
        header = [_unescaped(name) for name in next(reader, [])]
        if field not in header:
            raise InputError(
                f"{item.name}: no column '{field}' (columns: {', '.join(header)}); "
                f"{_other_delimiter(header, delimiter) or 'set text_field on this source'}"
            )
        columns = [number for number, name in enumerate(header, start=1) if name == field]
        if len(columns) > 1:
            raise InputError(
                f"{item.name}: the header names column '{field}' {len(columns)} times (fields "
                f"{', '.join(map(str, columns))}); rename all but one, or set text_field"
            )
        column = columns[0] - 1
        line = reader.line_num
        for record in reader:
            start, line = line + 1, reader.line_num
            if not record:  # a blank line
                continue
            if len(record) <= column:
                raise InputError(
                    f"{item.name}:{start}: the record has {len(record)} of the header's "
                    f"{len(header)} fields, so no '{field}' (field {column + 1}); fix the file"
                )
            if len(record) > len(header) and any(extra.strip() for extra in record[len(header) :]):
                # Its text cut at a separator inside an unquoted field: the rest was dropped.
                raise InputError(
                    f"{item.name}:{start}: the record has {len(record)} fields, the header "
                    f'{len(header)}: a "{_shown(delimiter)}" inside a field that is not quoted? '
                    f'quote such fields ("a{_shown(delimiter)} b"), or set the delimiter this '
                    "file uses"
                )
            text = record[column]
            if ESCAPED_BYTE.search(text):
                text = _invalid_utf8_in_csv(text, item, start, encoding_errors, replaced)
            elif not replaced.utf8_seen:
                replaced.utf8_seen = not text.isascii()
            if text.strip():
                yield RawDocument(f"{item.name}:{start}", item.name, text, "plain")
    except UnicodeDecodeError as error:  # UTF-16/32 only: UTF-8 is escaped, not raised
        raise InputError(
            f"{item.name}: invalid {label} near line {line + 1} ({error.reason}); "
            'fix the file or set ingest.encoding_errors = "replace"'
        ) from None
    except csv.Error as error:
        raise InputError(
            f"{item.name}:{line + 1}: malformed {fmt.upper()} in the record that starts on "
            f"this line ({_csv_problem(error)})"
        ) from None
    finally:
        text_stream.detach()


def _delimiter_of(item: ResolvedInput, fmt: str) -> str:
    """A source's `delimiter` is its CSVs' separator. A `.tsv` in a folder or pattern keeps its
    tab unless the source says `format = "tsv"`: a folder of semicolon CSVs holding one TSV
    read that TSV as one column, and failed. A source that names the `.tsv` itself means its
    delimiter for it (refused, the error said to set the delimiter it had set)."""
    if fmt == "tsv" and item.spec.format != "tsv" and not names_one_file(item.spec):
        return "\t"
    return item.spec.delimiter or ("\t" if fmt == "tsv" else ",")


def _shown(delimiter: str) -> str:
    return "\\t" if delimiter == "\t" else delimiter


def _other_delimiter(header: list[str], delimiter: str) -> str | None:
    """Advice for a header read as one column that another common separator would cut: a
    European Excel's CSV separates by ";" (the comma is its decimal mark)."""
    if len(header) != 1:
        return None
    for other in (";", "\t", "|", ","):
        if other != delimiter and other in header[0]:
            shown = _shown(other)
            return (f'the header is one column that holds "{shown}": set delimiter = "{shown}" '
                    "on this source")  # fmt: skip
    return None


def _csv_problem(error: csv.Error) -> str:
    """What the csv module's strict parser found, said as the fix."""
    message = str(error)
    if "expected after" in message:  # `"quoted" then more`
        return (
            f"{message}: text follows the quote that closes a field; quote the whole field "
            'and double the quotes inside it ("""quoted"" then more")'
        )
    if "end of data" in message:
        return f"{message}: a quote that opens a field never closes"
    return message


def _unescaped(text: str) -> str:
    """A header name with any invalid bytes shown as U+FFFD: the escapes cannot be printed."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _invalid_utf8_in_csv(
    text: str, item: ResolvedInput, line: int, encoding_errors: str, replaced: Replacements
) -> str:
    """A field that held bytes that are not UTF-8: refused (strict), or with each bad sequence
    replaced by U+FFFD exactly as decoding with errors="replace" would have done."""
    data = text.encode("utf-8", "surrogateescape")
    if encoding_errors == "strict":
        error_at = ESCAPED_BYTE.search(text).start()  # type: ignore[union-attr]
        offset = len(text[:error_at].encode("utf-8", "surrogateescape"))
        fix = (not replaced.utf8_seen and _windows_1252_advice(data, offset)) or "fix the file"
        raise InputError(
            f"{item.name}:{line}: field '{item.spec.text_field}' holds invalid UTF-8 at byte "
            f'{offset} of the field; {fix} or set ingest.encoding_errors = "replace" '
            "to substitute U+FFFD"
        )
    replaced.note(f"{item.name}:{line}", "invalid UTF-8")
    return data.decode("utf-8", errors="replace")
