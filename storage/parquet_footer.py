"""The footer of a Parquet file lmforge wrote, recorded in its output's manifest and checked
before pyarrow reads it.

Parquet's page checksums cover the pages, not the footer (the file's schema, row groups and
page offsets, thrift-encoded at its end). A byte changed there was pyarrow's "Couldn't
deserialize thrift", or, for a few bytes, a C++ `std::terminate` that ended the whole process
with no word of the file. The manifest records the footer's length and sha256 as the output is
published (`footers_of`), and a stage opening the file compares them first (`footer_problem`):
the footer is a few hundred bytes a row group, read once an open.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MAGIC = b"PAR1"
# The end of every Parquet file: the footer's length (4 bytes, little-endian), then MAGIC.
TAIL = 8
FOOTERS = "parquet_footers"  # the manifest's field: file name -> [bytes, sha256]


def footer(path: Path) -> tuple[int, str] | None:
    """(bytes, sha256) of `path`'s footer with its tail, or None for a file that does not
    end as Parquet does."""
    with open(path, "rb") as file:
        size = file.seek(0, 2)
        if size < len(MAGIC) + TAIL:
            return None
        file.seek(size - TAIL)
        tail = file.read(TAIL)
        if tail[4:] != MAGIC:
            return None
        length = int.from_bytes(tail[:4], "little") + TAIL
        if length > size - len(MAGIC):
            return None
        return length, _last_bytes_digest(file, size, length)


def _last_bytes_digest(file, size: int, length: int) -> str:
    """The sha256 of the last `length` bytes of the open `file` of `size` bytes."""
    file.seek(size - length)
    return hashlib.sha256(file.read(length)).hexdigest()


def footers_of(folder: Path) -> dict[str, list]:
    """The footer of every Parquet file directly in `folder`, by name, for its manifest."""
    found = {}
    for path in sorted(folder.glob("*.parquet")):
        written = footer(path) if path.is_file() else None
        if written is not None:
            found[path.name] = list(written)
    return found


def footer_problem(path: Path) -> str | None:
    """Why `path`'s footer is not the one its output's manifest recorded, in words; None when
    it is, or when nothing recorded it (a file of an earlier version, or not yet published)."""
    path = Path(path)
    try:
        manifest = json.loads((path.parent / "manifest.json").read_text())
        length, digest = manifest[FOOTERS][path.name]
        length = int(length)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    with open(path, "rb") as file:
        size = file.seek(0, 2)
        if length > size:
            return f"its footer ({length} bytes written) is longer than the file ({size} bytes)"
        if _last_bytes_digest(file, size, length) != digest:
            return "its footer (schema and row groups) is not the one written: sha256 differs"
    return None
