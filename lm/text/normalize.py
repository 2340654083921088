"""Unicode normalization and whitespace/control-character cleanup.

The normalized text is what the corpus stores and what `doc_id` hashes, so two documents that
differ only in Unicode composition, stray control characters or runs of spaces are exact
duplicates.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from lm.text.utf8_scan import CodePointFinder

# Controls that end a line (vertical tab: Word's manual line break; form feed: a page break;
# the file, group and record separators; NEL): newlines, as `str.splitlines` reads them; the
# paragraph separator a blank line. The unit separator: a space. Deleting them glued the words on
# either side together. The other C0/C1 controls but tab and newline, the zero-width space, word
# joiner and byte-order mark, and the bidi-formatting marks, embeddings and isolates: deleted.
# The zero-width non-joiner and joiner (U+200C, U+200D) are spelling, kept: Persian writes
# "می‌خواهم" with one, Indic scripts choose a conjunct's form by them, and emoji sequences (a
# family, a flag) are joined by them. Tabs and exotic spaces: turned into plain spaces. One
# `str.translate` does it all.
# Which normalization a corpus was built with (the clean stage records it): a `doc_id` is the
# hash of the normalized text, so another normalization gives some documents other ids, and a
# retrain cannot tell the champion's documents from new ones. 2: the joiners kept, the bidi
# isolates removed (December 2026); 3: the Arabic letter mark removed with the other bidi marks
# (December 2026); corpora recorded without it are 1.
NORMALIZATION_VERSION = 3
_LINE_BREAKS = [0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85]
_PARAGRAPH_SEPARATOR = 0x2029  # a paragraph break: a blank line
_DELETED = [*range(0x00, 0x09), *range(0x0E, 0x1C), *range(0x7F, 0x85), *range(0x86, 0xA0),
            0x061C, 0x200B, 0x200E, 0x200F, *range(0x202A, 0x202F), 0x2060, *range(0x2066, 0x206A),
            0xFEFF]  # fmt: skip
_SPACES = [0x09, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000]
_CONTROL_TABLE = (dict.fromkeys(_DELETED) | dict.fromkeys(_LINE_BREAKS, 0x0A)
                  | {_PARAGRAPH_SEPARATOR: "\n\n", 0x1F: 0x20})  # fmt: skip
_WHITESPACE_TABLE = _CONTROL_TABLE | dict.fromkeys(_SPACES, 0x20)
_TRANSLATED = {*_DELETED, *_LINE_BREAKS, _PARAGRAPH_SEPARATOR, 0x1F, *_SPACES}
# `str.translate` with a table costs a dictionary lookup per character; most documents contain
# none of these characters, which one regex scan (in C) finds out first.
_NEEDS_TRANSLATION = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(_TRANSLATED)) + "]")
_SPECIAL_NON_ASCII = CodePointFinder.of({chr(c) for c in _TRANSLATED if c >= 0x80})
_SPACE_RUN = re.compile(r" {2,}")
_TRAILING_SPACE = re.compile(r" +\n")
_LEADING_SPACE = re.compile(r"\n +")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_text(text: str, form: str = "NFC", collapse_whitespace: bool = True) -> str:
    """Normalize Unicode (`NFC` or `NFKC`), unify line endings and drop control characters;
    with `collapse_whitespace`, also fold runs of spaces and of blank lines."""
    return _clean_up(_unify(text, form), collapse_whitespace, form)


def normalize_texts(
    texts: list[str], form: str = "NFC", collapse_whitespace: bool = True
) -> list[str]:
    """`normalize_text` of each text. Which texts have anything to translate or fold is found
    for the whole batch at once, in numpy over its UTF-8 bytes: most have nothing, and for them
    the regex and substring scans (a fifth of all the cleaning work) are skipped."""
    unified = [_unify(text, form) for text in texts]
    if not unified:
        return []
    encoded = [text.encode() for text in unified]
    data = np.frombuffer(b"|".join(encoded), dtype=np.uint8)  # "|": in no pattern below
    flagged = _special_bytes(data, collapse_whitespace)
    if not flagged.any():
        return [text.strip() for text in unified]
    starts = np.cumsum([0] + [len(e) + 1 for e in encoded[:-1]])
    touched = set(np.searchsorted(starts, np.flatnonzero(flagged), side="right") - 1)
    return [
        _clean_up(text, collapse_whitespace, form) if index in touched else text.strip()
        for index, text in enumerate(unified)
    ]


def _unify(text: str, form: str) -> str:
    text = unicodedata.normalize(form, text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\u2028", "\n")


def _special_bytes(data: np.ndarray, collapse_whitespace: bool) -> np.ndarray:
    """Where `_clean_up` has something to do: a character of `_NEEDS_TRANSLATION` (an ASCII
    control other than the newline, or one of the non-ASCII ones), and with
    `collapse_whitespace`, two spaces, a space at either side of a newline, or three
    newlines."""
    flagged = ((data < 0x20) & (data != 0x0A)) | (data == 0x7F)
    flagged[_SPECIAL_NON_ASCII.find(data)[0]] = True
    if collapse_whitespace and len(data) > 1:
        space, newline = data == 0x20, data == 0x0A
        flagged[:-1] |= (space[:-1] | newline[:-1]) & space[1:]
        flagged[:-1] |= space[:-1] & newline[1:]
        flagged[:-2] |= newline[:-2] & newline[1:-1] & newline[2:]
    return flagged


def _clean_up(text: str, collapse_whitespace: bool, form: str) -> str:
    if _NEEDS_TRANSLATION.search(text):
        text = text.translate(_WHITESPACE_TABLE if collapse_whitespace else _CONTROL_TABLE)
        # A mark the deleted character stood before now follows a letter it composes with
        # ("e", U+200B, U+0301 → "e", U+0301): normalize again, or copies would differ.
        if not unicodedata.is_normalized(form, text):
            text = unicodedata.normalize(form, text)
    if collapse_whitespace:
        # Each substitution only when its pattern can occur: `in` is far cheaper than a scan.
        if "  " in text:
            text = _SPACE_RUN.sub(" ", text)
        if " \n" in text:
            text = _TRAILING_SPACE.sub("\n", text)
        if "\n " in text:
            text = _LEADING_SPACE.sub("\n", text)
        if "\n\n\n" in text:
            text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()
