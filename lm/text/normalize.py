"""Unicode normalization and whitespace/control-character cleanup.

The normalized text is what the corpus stores and what `doc_id` hashes, so two documents that
differ only in Unicode composition, stray control characters or runs of spaces are exact
duplicates.
"""

from __future__ import annotations

import re
import unicodedata

# C0/C1 controls other than tab and newline, plus zero-width and bidi-formatting characters:
# deleted. Tabs and exotic spaces: turned into plain spaces. One `str.translate` does both.
_DELETED = [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0),
            *range(0x200B, 0x2010), *range(0x202A, 0x202F), 0x2060, 0xFEFF]  # fmt: skip
_SPACES = [0x09, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000]
_CONTROL_TABLE = dict.fromkeys(_DELETED) | {0x09: 0x09}
_WHITESPACE_TABLE = _CONTROL_TABLE | dict.fromkeys(_SPACES, 0x20)
# `str.translate` with a table costs a dictionary lookup per character; most documents contain
# none of these characters, which one regex scan (in C) finds out first.
_NEEDS_TRANSLATION = re.compile(
    "[" + "".join(re.escape(chr(c)) for c in sorted(set(_DELETED) | set(_SPACES))) + "]"
)
_SPACE_RUN = re.compile(r" {2,}")
_TRAILING_SPACE = re.compile(r" +\n")
_LEADING_SPACE = re.compile(r"\n +")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_text(text: str, form: str = "NFC", collapse_whitespace: bool = True) -> str:
    """Normalize Unicode (`NFC` or `NFKC`), unify line endings and drop control characters;
    with `collapse_whitespace`, also fold runs of spaces and of blank lines."""
    text = unicodedata.normalize(form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
    if collapse_whitespace:
        # Each substitution only when its pattern can occur: `in` is far cheaper than a scan.
        if _NEEDS_TRANSLATION.search(text):
            text = text.translate(_WHITESPACE_TABLE)
        if "  " in text:
            text = _SPACE_RUN.sub(" ", text)
        if " \n" in text:
            text = _TRAILING_SPACE.sub("\n", text)
        if "\n " in text:
            text = _LEADING_SPACE.sub("\n", text)
        if "\n\n\n" in text:
            text = _MANY_NEWLINES.sub("\n\n", text)
    elif _NEEDS_TRANSLATION.search(text):
        text = text.translate(_CONTROL_TABLE)
    return text.strip()
