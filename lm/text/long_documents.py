"""Plain text too long to be one document is cut into documents of a bounded size.

A text file is one document, and every stage after ingest holds a document whole, several
times over: cleaning annotates it at about 25 times its size, encoding at about 20, word2vec
holds its words as Python strings. One 100 MB file (enwik8, a book collection in one file)
took 3.6 to 4.6 GB, and a 1 GB one would have needed about 30. Cut into pieces of at most
`ingest.max_document_mb`, each later stage holds a piece at a time, and the file trains as
before, with an end-of-text token where each piece ends.

Pieces are about equal in size. Each ends at a paragraph break where one lies in the last half
of its share, else at a line end, else at a space (else, in text written without spaces, between
two characters, never inside one nor before an accent). Each piece is named by the line it
starts on (`book.txt:1`, `book.txt:48213`), as a line of a `one_doc_per_line` file is, and by
its column where it starts inside a line (`book.txt:1+49998`). Only plain text is cut:
MediaWiki markup is stripped later, and a template may span a paragraph break.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator

from lm.text.readers import RawDocument

logger = logging.getLogger("lm.text.ingest")
MEGABYTE = 1_000_000
# Where a piece may end, the best first: a paragraph break, a line end (a carriage return alone
# ends a line of a classic Mac OS file, as the readers take it), a space.
BREAKS = (b"\n\n", b"\n\r\n", b"\r\r", b"\n", b"\r", b" ")
LINE_ENDS = re.compile(rb"\r\n|\r|\n")
# A character never to begin a piece: it belongs to the one before (an accent, a joiner, a
# vowel or final consonant of a Hangul syllable written in jamo).
_JOINING = {"\u200d", "\u200c", "\u034f"}


def _joins_the_one_before(character: str) -> bool:
    return bool(character) and (
        unicodedata.category(character).startswith("M") or character in _JOINING
        or "\u1160" <= character <= "\u11ff" or "\ud7b0" <= character <= "\ud7ff"
    )  # fmt: skip


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
    """Named `SOURCE:LINE`, or `SOURCE:LINE+COLUMN` (characters into the line) for a piece that
    starts inside a line: a long line's pieces would all be `SOURCE:LINE`."""
    start, line, column, pieces = 0, 1, 0, 0
    while start < len(utf8):
        left = len(utf8) - start
        # As many pieces as the limit asks, of about equal size: a full piece and a scrap of a
        # few words (which the quality rules then removed) left text out that the whole kept.
        share = -(-left // -(-left // limit))
        end = len(utf8) if left <= limit else _piece_end(utf8, start, share)
        text = utf8[start:end].decode("utf-8", "surrogatepass")
        name = f"{document.source}:{line}" + (f"+{column}" if column else "")
        yield RawDocument(name, document.source_file, text, "plain")
        ends = [match.end() for match in LINE_ENDS.finditer(utf8, start, end)]
        line += len(ends)
        column = (len(utf8[ends[-1] : end].decode("utf-8", "surrogatepass")) if ends
                  else column + len(text))  # fmt: skip
        start, pieces = end, pieces + 1
    logger.info("%s: %s MB of text, cut into %d documents of at most %g MB (ingest."
                "max_document_mb)", document.source, f"{len(utf8) / MEGABYTE:,.2f}", pieces,
                limit / MEGABYTE)  # fmt: skip


def _piece_end(utf8: bytes, start: int, limit: int) -> int:
    """Where the piece from `start` ends: after the last break of the best kind in the second
    half of the `limit` bytes from `start`, else at the last character boundary within them."""
    end = start + limit
    for mark in BREAKS:
        found = utf8.rfind(mark, start + limit // 2, end)
        while found != -1 and mark.endswith(b"\r") and utf8[found + len(mark)] == 0x0A:
            found = utf8.rfind(mark, start + limit // 2, found)  # not inside a "\r\n"
        if found != -1:
            return found + len(mark)
    while end > start and utf8[end] & 0xC0 == 0x80:  # a continuation byte: mid-character
        end -= 1
    if end - 1 > start and utf8[end - 1] == 0x0D and utf8[end] == 0x0A:  # not inside a "\r\n"
        end -= 1
    # Not before an accent or a joiner either: normalization composes it with the character
    # before (e + U+0301 is é), which then would not match the uncut text's.
    backed = end
    for _ in range(32):
        following = utf8[backed : backed + 4].decode("utf-8", "ignore")[:1]
        if backed <= start or not _joins_the_one_before(following):
            break
        backed -= 1
        while backed > start and utf8[backed] & 0xC0 == 0x80:
            backed -= 1
    if backed > start:
        end = backed
    if end == start:  # a limit shorter than one character: the character alone
        end += 1
        while end < len(utf8) and utf8[end] & 0xC0 == 0x80:
            end += 1
    return end
