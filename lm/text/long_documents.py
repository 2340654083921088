"""Plain text too long to be one document is cut into documents of a bounded size.

A text file is one document, and every stage after ingest holds a document whole, several
times over: cleaning annotates it at about 25 times its size, encoding at about 20, word2vec
holds its words as Python strings. One 100 MB file (enwik8, a book collection in one file)
took 3.6 to 4.6 GB, and a 1 GB one would have needed about 30. Cut into pieces of at most
`ingest.max_document_mb`, each later stage holds a piece at a time, and the file trains as
before, with an end-of-text token where each piece ends.

Each piece is of up to `ingest.max_document_mb`, but the last two, which share what is left
about equally (no scrap of a few words at the end). Each ends at a paragraph break where one
lies in the last half of its share, else at a line end, else at a space (else, in text written
without spaces, between two characters, never inside one nor before an accent). Which
paragraph break or line end is chosen by the text just before it, not by its place
(`_anchor`), so a piece is half the limit to all of it. Where a piece ends depends only on
where it starts and the text near its end, so a file that grows at its end keeps all its pieces
but the last two, and one edited (or copied with a preface) keeps all but the few around the
change. Each piece is named by the line it starts on (`book.txt:1`, `book.txt:48213`), as a
line of a `one_doc_per_line` file is, and by its column where it starts inside a line
(`book.txt:1+49998`); a record's by the line of its text after an `@` (`books.jsonl:17@1840`).
Only plain text is cut: MediaWiki markup is stripped later, and a template may span a paragraph
break.

A UTF-8 text file is cut as it is read (`utf8_pieces` over its blocks), never whole in memory:
read whole, a 1 GB file took about 7 GB before it was cut. Its pieces are those of the whole
text.
"""

from __future__ import annotations

import logging
import unicodedata
import zlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the readers cut a text file with this module's functions
    from lm.text.readers import RawDocument

logger = logging.getLogger("lm.text.ingest")
MEGABYTE = 1_000_000
# Where a piece may end, the best first: a paragraph break, a line end (a carriage return alone
# ends a line of a classic Mac OS file, as the readers take it), a space.
BREAKS = (b"\n\n", b"\n\r\n", b"\r\r", b"\n", b"\r", b" ")
# A character never to begin a piece: it belongs to the one before (an accent, a joiner, a
# vowel or final consonant of a Hangul syllable written in jamo).
_JOINING = {"\u200d", "\u200c", "\u034f"}


def _joins_the_one_before(character: str) -> bool:
    # As `clean.normalization = "NFKC"` reads it: a halfwidth voiced mark (U+FF9E) is a
    # combining one there, a Hangul compatibility letter a conjoining vowel or final consonant.
    character = unicodedata.normalize("NFKC", character)[:1]
    return bool(character) and (
        unicodedata.category(character).startswith("M") or character in _JOINING
        or "\u1160" <= character <= "\u11ff" or "\ud7b0" <= character <= "\ud7ff"
    )  # fmt: skip


def cut_long_documents(
    documents: Iterable[RawDocument], max_mb: float, cuts: CutLog | None = None
) -> Iterator[RawDocument]:
    """`documents`, each plain one over `max_mb` MB of UTF-8 cut into pieces (0: none is),
    said in `cuts` (else in a log of its own, summarised at the end)."""
    limit = int(max_mb * MEGABYTE)
    log = cuts or CutLog()
    for document in documents:
        # A character is 4 UTF-8 bytes at most: most documents are known short unencoded.
        if not limit or document.markup != "plain" or 4 * len(document.text) <= limit:
            yield document
            continue
        utf8 = document.text.encode("utf-8", "surrogatepass")
        if len(utf8) <= limit:
            yield document
            continue
        texts = (piece.decode("utf-8", "surrogatepass") for _, piece in utf8_pieces([utf8], limit))
        count = 0
        in_record = document.source != document.source_file  # `data.jsonl:17`, `data.parquet#3`
        for name, text in named_pieces(document.source, texts, in_record):
            count += 1
            yield document._replace(source=name, text=text, part_of=document.source)
        log.note(document.source, len(utf8), count, limit)
    if cuts is None:
        log.summarise()


def named_pieces(
    source: str, texts: Iterable[str], in_record: bool = False
) -> Iterator[tuple[str, str]]:
    """The name and text of each piece of `source` (its `texts` in order) that holds more than
    whitespace: a stretch of blank alone is no document (a blank text, whole, was none)."""
    names = PieceNames(source, in_record)
    for text in texts:
        name = names.next_name(text)
        if not text.isspace():
            yield name, text


class CutLog:
    """Says which documents were cut into pieces: the first few each by name, the rest in one
    line at the end (a JSON Lines file of 28,000 books said a line for each)."""

    SHOWN = 3

    def __init__(self, name: str = "ingest") -> None:
        self.name = name  # a part of a fanned-out ingest names its inputs: its sum is its own
        self.documents, self.pieces, self.size, self.limit = 0, 0, 0, 0

    def note(self, source: str, size: int, pieces: int, limit: int) -> None:
        if not pieces:  # a blank text, read whole, was no document either
            return
        self.documents += 1
        self.pieces += pieces
        self.size += size
        self.limit = limit
        if self.documents <= self.SHOWN:
            logger.info("%s: %s MB of text, cut into %s of at most %g MB (ingest."
                        "max_document_mb)", source, f"{size / MEGABYTE:,.2f}",
                        f"{pieces} document" + ("s" if pieces != 1 else ""),
                        limit / MEGABYTE)  # fmt: skip

    def summarise(self) -> None:
        if self.documents > self.SHOWN:
            logger.info("%s: %s texts over %g MB (%s MB), cut into %s documents (the first %d "
                        "named above; ingest.max_document_mb)", self.name,
                        f"{self.documents:,}", self.limit / MEGABYTE,
                        f"{self.size / MEGABYTE:,.2f}", f"{self.pieces:,}",
                        self.SHOWN)  # fmt: skip


def utf8_pieces(blocks: Iterable[bytes], limit: int) -> Iterator[tuple[int, bytes]]:
    """The pieces of the UTF-8 text that `blocks` make up, each with its byte offset, holding at
    most about 3 × `limit` bytes of it and one block at a time (read ahead). Each is of up to
    `limit` (to a break in its second half that the text before it picks) but the last two,
    which share what is left about equally: no piece is a scrap of a few words (which the
    quality rules then removed), and a piece's end depends only on where it starts and the
    text near its end, so text added at the end changes the last two alone (with pieces of
    equal size, it moved every cut, and every piece was drawn to a split again)."""
    blocks = iter(blocks)
    buffer, start, offset, ended = b"", 0, 0, False  # `offset`: of `buffer[start]`
    while True:
        # Enough read ahead to place a piece's end (a few bytes past its limit are looked at)
        # and to know whether the text ends within two pieces.
        if not ended and len(buffer) - start < 2 * limit + 8:
            taken = [buffer[start:]] if start < len(buffer) else []
            size = len(buffer) - start
            while size < 2 * limit + 8 and (block := next(blocks, None)) is not None:
                taken.append(block)
                size += len(block)
            ended = size < 2 * limit + 8
            buffer, start = (taken[0] if len(taken) == 1 else b"".join(taken)), 0  # not copied
        left = len(buffer) - start
        if not left:
            return
        if left <= limit:
            yield offset, buffer[start:]
            return
        if left > 2 * limit:
            end = _piece_end(buffer, start, limit, anchored=True)
        else:  # the last two: the first ends where what is left fits in one piece
            end = _piece_end(buffer, start, -(-left // 2), shortest=left - limit)
        yield offset, buffer[start:end]
        offset += end - start
        start = end


class PieceNames:
    """Names the pieces of one text in order: `SOURCE:LINE`, or `SOURCE:LINE+COLUMN`
    (characters into the line) for a piece that starts inside a line (a long line's pieces
    would all be `SOURCE:LINE`). The line of a record's text follows an `@`
    (`books.jsonl:17@1840`: line 1840 of the record on line 17), not a second colon, which
    reads as a column."""

    def __init__(self, source: str, in_record: bool = False):
        self.source, self.line, self.column = source, 1, 0
        self.separator = "@" if in_record else ":"

    def next_name(self, text: str) -> str:
        name = f"{self.source}{self.separator}{self.line}" + (f"+{self.column}" if self.column
                                                              else "")  # fmt: skip
        # Counted, not listed: a list of every line end's place took 36 bytes a line (a piece
        # of short lines, 20 times its size).
        ends = text.count("\n") + text.count("\r") - text.count("\r\n")
        self.line += ends
        last_end = max(text.rfind("\n"), text.rfind("\r")) + 1
        self.column = len(text) - last_end if ends else self.column + len(text)
        return name


def _piece_end(
    utf8: bytes, start: int, limit: int, shortest: int = 0, anchored: bool = False
) -> int:
    """Where the piece from `start` ends: after a break of the best kind in the second half of
    the `limit` bytes from `start` (the last one, or, `anchored`, the one the text before it
    picks: `_anchor`), and at least `shortest` bytes from it (the first of the last two, ended
    at a break early in its share, left more than a piece after it, so the text ended in three
    pieces, all cut anew when it grew); else at the last character boundary within them."""
    end = start + limit
    lowest = start + max(limit // 2, shortest - 1)  # a mark of one byte ends at `shortest`
    for mark in BREAKS:
        found = utf8.rfind(mark, lowest, end)
        while found != -1 and mark.endswith(b"\r") and utf8[found + len(mark)] == 0x0A:
            found = utf8.rfind(mark, lowest, found)  # not inside a "\r\n"
        if found != -1:
            if anchored and mark != b" ":  # spaces: too many to weigh, in a long line
                return _anchor(utf8, mark, lowest, found)
            return found + len(mark)
    back = 0  # to the first byte of the character: 3 continuation bytes at most, where more
    while back < 3 and end - back > start and utf8[end - back] & 0xC0 == 0x80:  # are invalid
        back += 1
    if utf8[end - back] & 0xC0 != 0x80:  # else amid invalid bytes: the piece was a byte long,
        end -= back  # or as long as the run and the bytes read ahead of it
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
    if end - start < shortest:  # backed off below what the last two need (more than a piece
        end = _next_boundary(utf8, start + limit)  # left: three), so forward, a few bytes over
    if end == start:  # a limit shorter than one character: the character alone
        end += 1
        while end < len(utf8) and end - start < 4 and utf8[end] & 0xC0 == 0x80:
            end += 1
    return end


def _next_boundary(utf8: bytes, end: int) -> int:
    """The first place from `end` on where a piece may end: not inside a character or a
    "\r\n", nor before what joins the character before (32 characters on at most)."""
    for _ in range(128):
        if end >= len(utf8):
            return len(utf8)
        following = utf8[end : end + 4].decode("utf-8", "ignore")[:1]
        if not (utf8[end] & 0xC0 == 0x80 or (utf8[end - 1] == 0x0D and utf8[end] == 0x0A)
                or _joins_the_one_before(following)):  # fmt: skip
            return end
        end += 1
    return end


ANCHOR_CONTEXT = 64


def _anchor(utf8: bytes, mark: bytes, lowest: int, last: int) -> int:
    """The end, after one of the breaks of kind `mark` from `lowest` to `last`, chosen by the
    text before it (the least CRC of its last bytes, line ends read alike), not by its place:
    a text edited or copied with something added before (a preface, a longer licence, a
    paragraph more) is cut where it was once past the change, so its later pieces keep their
    doc_id (and split), and a copy's pieces are exact duplicates of the original's. Cut at the
    last break, every piece after an insertion of a paragraph moved, so every piece was new
    and a copy's pieces overlapped the original's too little to be near duplicates."""
    best, best_key = last + len(mark), None
    stop = last + len(mark)  # `find` looks for the whole mark within: the last one is a candidate
    found = utf8.find(mark, lowest, stop)
    while found != -1:
        if not (mark.endswith(b"\r") and utf8[found + len(mark)] == 0x0A):
            end = found + len(mark)
            context = utf8[max(0, end - 2 * ANCHOR_CONTEXT) : end].replace(b"\r", b"")
            key = zlib.crc32(context[-ANCHOR_CONTEXT:])
            if best_key is None or key < best_key:
                best, best_key = end, key
        found = utf8.find(mark, found + 1, stop)
    return best
