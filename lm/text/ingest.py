"""Ingest: every resolved input, in order, as one stream of raw documents.

Files are opened here (URLs are first streamed to a download folder, chunk by chunk), wrapped in
the decompressor their name asks for, and handed to the reader for their format. Progress is the
number of input bytes consumed, read from the raw file position, so compressed inputs report
honest rates and ETAs.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from lm.progress import ProgressLog
from lm.text.long_documents import CutLog
from lm.text.readers import RawDocument, open_decompressed, read_documents
from lm.text.sources import InputError, ResolvedInput, TransientInputError
from lm.text.url_credentials import shown_url

logger = logging.getLogger("lm.text.ingest")
DOWNLOAD_CHUNK = 1 << 20
# Why an input cannot be opened, for the errors that opening it again would only repeat: these
# are bad input (an `InputError`), not I/O hiccups worth a retry.
UNOPENABLE = {
    PermissionError: "permission denied; make it readable, or leave it out of the sources",
    FileNotFoundError: "no such file (removed after the sources were listed?)",
    IsADirectoryError: "is a folder, not a file",
    NotADirectoryError: "a folder on its path is a file",
}
PERSISTENT_OS_ERRORS = tuple(UNOPENABLE)


def iter_input_documents(
    inputs: list[ResolvedInput],
    encoding_errors: str,
    download_dir: Path,
    url_timeout_s: float = 30.0,
    name: str = "ingest",
    max_document_mb: float = 0.0,
) -> Iterator[RawDocument]:
    """The documents of `inputs` in order, with progress lines under `name` (a part of a
    fanned-out ingest names its inputs: each part's "ingest: ... (100%)" read as the stage's),
    plain text over `max_document_mb` cut into pieces (`read_documents`; 0: never)."""
    known_sizes = [item.size for item in inputs if item.size is not None]
    progress = ProgressLog(name, total=sum(known_sizes) if known_sizes else None)
    cuts = CutLog(name)
    done_bytes = 0
    for item in inputs:
        path = item.path
        if item.is_url:
            started = time.monotonic()
            path = _download(item.url, download_dir, url_timeout_s)
            progress.leave_out(time.monotonic() - started)
            progress.total = (progress.total or 0) + path.stat().st_size
        try:
            with _open_input(item, path) as raw:
                stream = open_decompressed(item, raw)
                documents = read_documents(item, stream, encoding_errors, max_document_mb, cuts)
                for count, document in enumerate(documents):
                    yield document
                    if count % 64 == 0 or len(document.text) > 1 << 16:
                        progress.update(done_bytes + raw.tell())
                done_bytes += raw.tell()
                if not item.is_url:
                    _check_unchanged(item, raw)
        finally:
            if item.is_url:
                path.unlink(missing_ok=True)
        progress.update(done_bytes)
    cuts.summarise()
    progress.finish()


def _check_unchanged(item: ResolvedInput, raw: BinaryIO) -> None:
    """A file written while it was read (truncated, rewritten, appended to) gave documents that
    are neither its old text nor its new, and the stage's output would be cached under the size
    and modification time it was listed with: a copy of the old file put back (`cp -p`,
    `rsync -a`) would then be served the partial read."""
    if item.size is None or item.mtime_ns is None:
        return
    now = os.fstat(raw.fileno())
    if (now.st_size, now.st_mtime_ns) != (item.size, item.mtime_ns):
        how = (
            f"{item.size:,} bytes when the sources were listed, {now.st_size:,} now"
            if now.st_size != item.size  # else "1,000 bytes ..., 1,000 now" said no change
            else "modified since the sources were listed, at the same size"
        )
        raise InputError(
            f"{item.name}: changed while it was read ({how}); run again once nothing is writing it"
        )


def _open_input(item: ResolvedInput, path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except PERSISTENT_OS_ERRORS as error:
        reason = next(text for kind, text in UNOPENABLE.items() if isinstance(error, kind))
        raise InputError(f"{item.name}: {reason}") from error


# HTTP statuses a later request may not get: the server busy, failing or rate-limiting.
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


# A connection that ended early: a reset, a TLS stream cut without its close, a body cut short.
DROPPED = (TimeoutError, ConnectionError, ssl.SSLEOFError, http.client.IncompleteRead)


def _may_pass(error: Exception) -> bool:
    """Whether a failed fetch may succeed if tried again (a 503, a timeout, a dropped
    connection), not a 404, a refused TLS certificate, an unknown host or a download the disk
    cannot hold."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code in TRANSIENT_HTTP
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if isinstance(reason, socket.gaierror):  # "temporary failure in name resolution"
            return reason.errno == socket.EAI_AGAIN
        return isinstance(reason, DROPPED)
    return isinstance(error, DROPPED)


def _said(error: Exception) -> str:
    if isinstance(error, http.client.IncompleteRead):  # its repr holds the bytes read
        return f"the connection ended with {error.expected} bytes still to come"
    return str(error) or type(error).__name__


def _download(url: str, download_dir: Path, timeout_s: float) -> Path:
    """Stream a URL to a file (never whole in memory), keeping its name for format detection."""
    download_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urlparse(url).path).name or "download"
    target = download_dir / f"{uuid.uuid4().hex[:8]}-{name}"
    request = urllib.request.Request(url, headers={"User-Agent": "lmforge"})
    try:
        with (
            urllib.request.urlopen(request, timeout=timeout_s) as response,
            open(target, "wb") as out,
        ):
            length = response.headers.get("Content-Length", "")
            expected = int(length) if length.isdigit() else None
            progress = ProgressLog(f"download {name}", expected)
            while chunk := response.read(DOWNLOAD_CHUNK):
                out.write(chunk)
                progress.update(progress.done + len(chunk))
            progress.finish()
        if expected is not None and progress.done != expected:
            # http.client ends a body cut short without an error: it became corpus, cut.
            raise http.client.IncompleteRead(b"", expected - int(progress.done))
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        target.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or _said(error)
        kind = TransientInputError if _may_pass(error) else InputError
        raise kind(f"{shown_url(url)}: cannot fetch ({reason})") from error
    logger.info("%s: downloaded %d bytes", shown_url(url), target.stat().st_size)
    return target
