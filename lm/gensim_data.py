"""Files that gensim installs with its test data: the bundled corpus (a Wikipedia excerpt, the
Lee news corpus) and the standard word-vector evaluation sets.

The folder is the one `gensim.test.utils.datapath` joins names to; it is found through the
import system rather than by importing gensim, which costs two seconds."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def gensim_test_file(name: str) -> Path | None:
    """The path of a gensim test-data file, or None when gensim or the file is missing, or
    `name` leaves the folder (`../../__init__.py` read gensim's own code as a corpus)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "test" / "test_data"
    path = folder / name
    inside = folder.resolve() in path.resolve().parents
    return path if inside and path.is_file() else None
