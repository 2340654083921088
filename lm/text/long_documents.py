"""Plain text too long to be one document is cut into documents of a bounded size.

A text file is one document, and every stage after ingest holds a document whole, several
times over: cleaning annotates it at about 25 times its size, encoding at about 20, word2vec
holds its words as Python strings. One 100 MB file (enwik8, a book collection in one file)
took 3.6 to 4.6 GB, and a 1 GB one would have needed about 30. Cut into pieces of at most
`ingest.max_document_mb`, each later stage holds a piece at a time, and the file trains as
before, with an end-of-text token where each piece ends.

Pieces end at a paragraph break where one lies in the last half of the allowed size, else at a
line end, else at a space (else, in text written without spaces, between two characters, never
inside one). Each piece is named by the line it starts on (`book.txt:1`, `book.txt:48213`), as
a line of a `one_doc_per_line` file is. Only plain text is cut: MediaWiki markup is stripped
later, and a template may span a paragraph break.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from lm.text.readers import RawDocument

logger = logging.getLogger("lm.text.ingest")
MEGABYTE = 1_000_000
BREAKS = (b"\n\n", b"\n\r\n", b"\n", b" ")  # where a piece may end, the best first


def cut_long_documents(documents: Iterable[RawDocument], max_mb: float) -> Iterator[RawDocument]:
    """`documents`, each plain one over `max_mb` MB of UTF-8 cut into pieces (0: none is)."""
    limit = int(max_mb * MEGABYTE)
    for document in documents:
        # A character is 4 UTF-8 bytes at most: most documents are known short unencoded.
        if not limit or document.markup != "plain" or 4 * len(document.text) <= limit:
            yield document
            continue
        utf8 = document.text.encode("utf-8", "surrogatepass")
        if len(utf8) <= limit:
            yield document
            continue
        yield from _pieces(document, utf8, limit)


def _pieces(document: RawDocument, utf8: bytes, limit: int) -> Iterator[RawDocument]:
    start, line, pieces = 0, 1, 0
    while start < len(utf8):
        end = len(utf8) if len(utf8) - start <= limit else _piece_end(utf8, start, limit)
        text = utf8[start:end].decode("utf-8", "surrogatepass")
        yield RawDocument(f"{document.source}:{line}", document.source_file, text, "plain")
        line += utf8.count(b"\n", start, end)
        start, pieces = end, pieces + 1
    logger.info("%s: %.1f MB of text, cut into %d documents of at most %g MB (ingest."
                "max_document_mb)", document.source, len(utf8) / MEGABYTE, pieces,
                limit / MEGABYTE)  # fmt: skip


def _piece_end(utf8: bytes, start: int, limit: int) -> int:
    """Where the piece from `start` ends: after the last break of the best kind in the second
    half of the `limit` bytes from `start`, else at the last character boundary within them."""
    end = start + limit
    for mark in BREAKS:
        found = utf8.rfind(mark, start + limit // 2, end)
        if found != -1:
            return found + len(mark)
    while end > start and utf8[end] & 0xC0 == 0x80:  # a continuation byte: mid-character
        end -= 1
    if end == start:  # a limit shorter than one character: the character alone
        end += 1
        while end < len(utf8) and utf8[end] & 0xC0 == 0x80:
            end += 1
    return end
