"""US Census name lists: the `names` package's `dist.female.first`, `dist.male.first` and
`dist.all.last`, and any file in their layout.

Each line is a name in capitals, then its frequency (percent), the cumulative frequency and the
rank: `MARY           2.629  2.629      1`. A name is a document of its own, lowercased, as the
names lists that character models learn from are (makemore's `names.txt`). The files are found
through the import system, as gensim's test data is, without importing the package.
"""

from __future__ import annotations

import codecs
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

PACKAGE = "names"
CENSUS_COLUMNS = 4


class CensusNamesError(ValueError):
    """A census list that cannot be read; the message names the file and line."""


def census_names_file(name: str) -> Path | None:
    """The path of a list the `names` package ships, or None when the package or the file is
    missing, or `name` leaves its folder (`names:../../../../etc/passwd` read any file, past
    the `.py` check, under a name that says it is a census list)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0])
    path = folder / name
    inside = path.resolve().parent == folder.resolve()
    return path if inside and path.is_file() and not name.endswith(".py") else None


def shipped_census_files() -> list[str]:
    """The lists the installed `names` package ships (`dist.*`), for error messages."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(p.name for p in Path(spec.submodule_search_locations[0]).glob("dist.*"))


def read_census_names(stream: BinaryIO, source: str) -> Iterator[tuple[int, str]]:
    """`(line number, lowercased name)` for every line; blank lines are skipped, a line that is
    not `NAME FREQUENCY CUMULATIVE RANK` is an error naming `source` and the line."""
    for line_no, raw in enumerate(stream, start=1):
        if line_no == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)  # a mark an editor may add, not a name
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            raise CensusNamesError(
                f"{source}:{line_no}: not ASCII; a census names list holds A-Z names only"
            ) from None
        fields = line.split()
        if not fields:
            continue
        if len(fields) != CENSUS_COLUMNS or not _is_number(fields[1]):
            raise CensusNamesError(
                f"{source}:{line_no}: expected 'NAME FREQUENCY CUMULATIVE RANK', found "
                f"{line.strip()!r}; read other name lists with one_doc_per_line = true"
            )
        yield line_no, fields[0].lower()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
