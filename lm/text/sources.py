"""Turning source specs (paths, folders, globs, URLs, `gensim:` and `names:` names) into
concrete inputs.

Resolution happens before any reading so that a missing path or an empty folder fails at once,
naming the input, before anything is written; and so that the ingest cache key can fingerprint
exactly the files that will be read.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from lm.config import SourceConfig
from lm.gensim_data import gensim_test_file
from lm.text.census_names import census_names_file, shipped_census_files

GLOB_CHARACTERS = set("*?[")


class InputError(ValueError):
    """An input that cannot be read; the message names the input and the problem."""


@dataclass(frozen=True)
class ResolvedInput:
    """One file or URL to read, with the spec it came from."""

    name: str  # what the `source` column and error messages show
    spec: SourceConfig
    path: Path | None = None
    url: str | None = None
    size: int | None = None
    mtime_ns: int | None = None

    @property
    def is_url(self) -> bool:
        return self.url is not None


def is_url(text: str) -> bool:
    return urlparse(text).scheme in ("http", "https")


def resolve_sources(specs: list[SourceConfig]) -> list[ResolvedInput]:
    """Expand every spec into the files it names, in a deterministic order."""
    inputs: list[ResolvedInput] = []
    for spec in specs:
        inputs.extend(_resolve_one(spec))
    return inputs


def _resolve_one(spec: SourceConfig) -> list[ResolvedInput]:
    text = spec.path
    if is_url(text):
        return [ResolvedInput(name=text, spec=spec, url=text)]
    if text.startswith("gensim:"):
        # Named as written: portable across machines, where the install path is not.
        return [_file_input(_gensim_test_file(text), spec, name=text)]
    if text.startswith("names:"):
        return [_file_input(_census_names_file(text), spec, name=text)]
    expanded = os.path.expanduser(text)
    # A name that exists is taken literally: `report [final].txt` is a file, not a pattern.
    literal = os.path.isfile(expanded) or os.path.isdir(expanded)
    if GLOB_CHARACTERS & set(expanded) and not literal:
        matches = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
        if not matches:
            raise InputError(f"{text}: the pattern matches no files")
        return [_file_input(Path(p), spec) for p in matches]
    path = Path(expanded)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise InputError(f"{text}: the folder contains no files")
        return [_file_input(p, spec) for p in files]
    if path.is_file():
        return [_file_input(path, spec)]
    raise InputError(f"{text}: no such file or directory")


def _file_input(path: Path, spec: SourceConfig, name: str | None = None) -> ResolvedInput:
    path = path.resolve()
    stat = path.stat()
    return ResolvedInput(
        name=name or str(path), spec=spec, path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns
    )


def _gensim_test_file(text: str) -> Path:
    """`gensim:NAME` is a file that gensim ships in `gensim/test/test_data` (real data, installed
    with the package, so the default corpus needs no download)."""
    name = text.removeprefix("gensim:")
    path = gensim_test_file(name)
    if path is None:
        raise InputError(f"{text}: gensim ships no test-data file named '{name}'")
    return path


def _census_names_file(text: str) -> Path:
    """`names:FILE` is a US Census list that the `names` package ships (`dist.female.first`,
    `dist.male.first`, `dist.all.last`)."""
    name = text.removeprefix("names:")
    path = census_names_file(name)
    if path is None:
        shipped = shipped_census_files()
        if not shipped:
            raise InputError(f"{text}: the `names` package is not installed (pip install names)")
        raise InputError(
            f"{text}: the `names` package ships no list named '{name}' "
            f"(it has: {', '.join(shipped)})"
        )
    return path


def fingerprint_inputs(inputs: list[ResolvedInput]) -> str:
    """A cheap identity for the inputs: path, size and modification time of each file (as make
    does), and the address of each URL. Changing, adding or removing a file changes it."""
    digest = hashlib.sha256()
    for item in inputs:
        digest.update(f"{item.name}\0{item.size}\0{item.mtime_ns}\0{item.spec.digest()}\n".encode())
    return digest.hexdigest()
