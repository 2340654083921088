"""Unicode normalization and whitespace/control-character cleanup.

The normalized text is what the corpus stores and what `doc_id` hashes, so two documents that
differ only in Unicode composition, stray control characters or runs of spaces are exact
duplicates.
"""

from __future__ import annotations

import re
import unicodedata

# C0/C1 controls other than tab and newline, plus zero-width and bidi-formatting characters.
_CONTROL = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060\ufeff]"
)
_HORIZONTAL_SPACE = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_TRAILING_SPACE = re.compile(r" +\n")
_LEADING_SPACE = re.compile(r"\n +")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_text(text: str, form: str = "NFC", collapse_whitespace: bool = True) -> str:
    """Normalize Unicode (`NFC` or `NFKC`), unify line endings and drop control characters;
    with `collapse_whitespace`, also fold runs of spaces and of blank lines."""
    text = unicodedata.normalize(form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
    text = _CONTROL.sub("", text)
    if collapse_whitespace:
        text = _HORIZONTAL_SPACE.sub(" ", text)
        text = _TRAILING_SPACE.sub("\n", text)
        text = _LEADING_SPACE.sub("\n", text)
        text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()
