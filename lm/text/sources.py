"""Turning source specs (paths, folders, globs, URLs, `gensim:` and `names:` names) into
concrete inputs.

Resolution happens before any reading so that a missing path or an empty folder fails at once,
naming the input, before anything is written; and so that the ingest cache key can fingerprint
exactly the files that will be read.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from lm.config import SourceConfig
from lm.gensim_data import gensim_test_file
from lm.text.census_names import census_names_file, shipped_census_files
from lm.text.url_credentials import shown_url

GLOB_CHARACTERS = set("*?[")

logger = logging.getLogger("lm.text.sources")
_said: set[str] = set()  # sources are resolved several times a run (check, cache key, read)


def _warn_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        logger.warning("%s", message)


class InputError(ValueError):
    """An input that cannot be read; the message names the input and the problem."""


class TransientInputError(InputError):
    """An input that could not be read this time, for a cause that may pass: a server error or
    timeout, a dropped connection, an I/O error of the disk or network file system. The ingest
    task retries these; another `InputError` would fail the same way again."""


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
    """Expand every spec into the files it names, in a deterministic order. A file that two
    specs with the same settings reach (listed, and in a listed folder; or through a link) is
    read once, as the first says: reading it twice would put its documents in the corpus twice.
    A file a spec names itself is read as that spec says, not as a folder or pattern that also
    reaches it (`["data/", {path = "data/names.txt", one_doc_per_line = true}]` reads the names
    a line each, not also whole). Two specs that name it with different settings read different
    documents from it (a CSV's `question` column and its `answer` column): it is read under
    each, with a warning naming the settings."""
    resolved = [(spec, item, names_one_file(spec)) for spec in specs for item in _resolve_one(spec)]
    named_by: dict[Path, SourceConfig] = {}
    for spec, item, names_itself in resolved:
        if names_itself and item.path is not None:
            named_by.setdefault(item.path, spec)
    inputs: list[ResolvedInput] = []
    read_as: dict[Path, list[SourceConfig]] = {}  # a file → the specs it is read under
    read_once: dict[tuple[str, str], list[Path]] = {}  # (source, the one read as) → files
    for spec, item, names_itself in resolved:
        if item.path is None:
            inputs.append(item)
            continue
        named = named_by.get(item.path)
        if not names_itself and named is not None and _settings(named) != _settings(spec):
            _warn_once(f"{item.path}: reached by source {spec.path!r} and named by source "
                       f"{named.path!r}; read as {named.path!r} says")  # fmt: skip
            continue
        earlier = read_as.setdefault(item.path, [])
        same = next((first for first in earlier if _settings(first) == _settings(spec)), None)
        if same is not None:
            read_once.setdefault((spec.path, same.path), []).append(item.path)
            continue
        if earlier:
            differing = sorted(
                key for key, value in _settings(spec).items()
                if _settings(earlier[0])[key] != value
            )  # fmt: skip
            _warn_once(f"{item.path}: reached by sources {earlier[0].path!r} and "
                       f"{spec.path!r}, whose settings differ ({', '.join(differing)}); "
                       "read under each")  # fmt: skip
        earlier.append(spec)
        inputs.append(item)
    for (source, first), paths in read_once.items():  # one line a pair: a folder holds thousands
        shown = ", ".join(printable_path(path) for path in paths[:3])
        files = (
            f"{shown}: also reached"
            if len(paths) == 1
            else (f"{len(paths):,} files ({shown}{', …' if len(paths) > 3 else ''}) also reached")
        )
        _warn_once(f"{files} by source {source!r}; read once, as source {first!r} says")
    return inputs


def names_one_file(spec: SourceConfig) -> bool:
    """Whether a spec names one file (not a folder or a pattern that reaches several)."""
    if spec.path.startswith(("gensim:", "names:")):
        return True
    return not is_url(spec.path) and os.path.isfile(os.path.expanduser(spec.path))


def _settings(spec: SourceConfig) -> dict:
    """How a spec reads its files: everything but the path that named them."""
    return spec.model_dump(exclude={"path"})


def _resolve_one(spec: SourceConfig) -> list[ResolvedInput]:
    text = spec.path
    if is_url(text):
        return [ResolvedInput(name=shown_url(text), spec=spec, url=text)]  # its secrets unsaid
    if text.startswith("gensim:"):
        # Named as written: portable across machines, where the install path is not.
        return [_file_input(_gensim_test_file(text), spec, name=text)]
    if text.startswith("names:"):
        return [_file_input(_census_names_file(text), spec, name=text)]
    expanded = os.path.expanduser(text)
    # A name that exists is taken literally: `report [final].txt` is a file, not a pattern.
    literal = os.path.isfile(expanded) or os.path.isdir(expanded)
    if GLOB_CHARACTERS & set(expanded) and not literal:
        matches = glob_files(expanded)
        if not matches:
            relative = (
                "" if os.path.isabs(expanded) else f" (read from the current folder, {_here()})"
            )
            raise InputError(f"{text}: the pattern matches no files{relative}")
        _warn_of_cached_splits(text, matches)
        return [_file_input(p, spec) for p in matches]
    path = Path(expanded)
    try:
        is_folder, is_file = path.is_dir(), path.is_file()
    except PermissionError as error:  # a folder on its way cannot be entered: a traceback
        raise InputError(f"{text}: cannot reach it (permission denied): a folder on its way "
                         "cannot be entered; make it readable") from error  # fmt: skip
    if is_folder:
        files = folder_files(path)
        if not files:
            raise InputError(f"{text}: the folder contains no files")
        _warn_of_dataset_splits(text, path, files)
        return [_file_input(p, spec) for p in files]
    if is_file:
        return [_file_input(path, spec)]
    if os.path.lexists(path):  # there, but neither: "no such file" sent people looking for it
        raise InputError(f"{text}: {_not_a_file(path)}, not a file or folder to read")
    # Read from the current folder: where a config lies is not where it is run (a worker's).
    relative = "" if path.is_absolute() else f" (read from the current folder, {_here()})"
    raise InputError(f"{text}: no such file or directory{relative}")


def _here() -> str:
    """The current folder, for an error about a relative path; one deleted under the shell
    made the error a FileNotFoundError traceback."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        return "which was deleted"


def _warn_of_dataset_splits(text: str, folder: Path, files: list[Path]) -> None:
    """A Hugging Face `DatasetDict` saved whole (`dataset_dict.json` beside `train/`, `test/`)
    is read as one corpus: its test split goes into lmforge's own split like any other text,
    maybe into train. Said, with how to read one split alone."""
    for marker in [path for path in files if path.name == "dataset_dict.json"]:
        top = marker.parent  # the folder named, or one below it
        below = [p.relative_to(top).parts for p in files if p.is_relative_to(top)]
        splits = sorted({parts[0] for parts in below if len(parts) > 1})
        one = "train" if "train" in splits else (splits or ["train"])[0]  # not "test" first
        logger.warning(
            "%s: a Hugging Face DatasetDict: its splits (%s) are read as one corpus, which "
            "[split] divides again by its own hash (their test text may be trained on); name "
            "one split's folder (%s) to read it alone", text if top == folder else top,
            ", ".join(splits), top / one,
        )  # fmt: skip
    _warn_of_cached_splits(text, files)


CACHED_SPLIT = re.compile(r"-(train|test|validation|valid|dev)(-\d+-of-\d+)?\.arrow$")


def _warn_of_cached_splits(text: str, files: list[Path]) -> None:
    """The `datasets` cache holds a dataset's splits side by side (`imdb-train.arrow`,
    `imdb-test.arrow`): read as one corpus, like a `DatasetDict` folder, with no word."""
    # By folder and dataset name: `imdb-train.arrow` beside `squad-test.arrow` is two datasets.
    by_dataset: dict[tuple[Path, str], set[str]] = {}
    for path in files:
        if found := CACHED_SPLIT.search(path.name):
            by_dataset.setdefault((path.parent, path.name[: found.start()]), set()).add(found[1])
    for (folder, name), splits in sorted(by_dataset.items()):
        if len(splits) > 1:
            one = "train" if "train" in splits else sorted(splits)[0]
            _warn_once(  # sources are resolved several times a run: said once
                f"{text}: cached splits of a Hugging Face dataset ({', '.join(sorted(splits))}) "
                "are read as one corpus, which [split] divides again by its own hash (their test "
                f"text may be trained on); name one split's files ({folder}/{name}-{one}*.arrow) "
                "to read it alone"
            )


def _not_a_file(path: Path) -> str:
    """What `path` is, that exists but is neither a file nor a folder."""
    try:
        mode = path.stat().st_mode
    except OSError as error:  # a link: to nothing, or round in a loop
        if error.errno == errno.ELOOP:
            return "a link that loops back to itself"
        try:
            return f"a link to {os.readlink(path)}, which is gone"
        except OSError:  # not a link: gone itself since it was listed
            return "gone since it was listed"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def glob_files(pattern: str) -> list[Path]:
    """The files a pattern matches, sorted, once each. `**` matches folders at any depth but
    never descends into a linked folder: `glob.glob` does, and a link to a folder above it
    (`x -> .`) made it read every file again at each level, or never end. As in a shell, a
    name that starts with a dot matches only a pattern that spells a dot (`data/**/.env`)."""
    parts = [_glued_stars_as_one(part) for part in Path(pattern).parts]
    first = next(i for i, part in enumerate(parts) if GLOB_CHARACTERS & set(part))
    base, rest = Path(*parts[:first]) if first else Path(), list(parts[first:])
    if rest[-1] == "**":  # "every file below": pathlib's bare `**` lists folders only
        rest.append("*")
    hidden_asked = any(part.startswith(".") for part in rest)
    _refuse_unlistable_on_the_way(base, rest, hidden_asked, pattern)
    matches, skipped, unreadable = set(), [], []
    for path in base.glob(str(Path(*rest))):
        relative = path.relative_to(base).parts
        if not hidden_asked and any(part.startswith(".") for part in relative):
            continue
        try:
            is_file = path.is_file()
        except PermissionError as error:  # in a folder that lists its names but cannot be entered
            unreadable.append(error)
            continue
        if is_file:
            matches.add(path)
        elif not path.is_dir():
            skipped.append(path)
    _refuse_unreadable(pattern, unreadable)
    _warn_of_what_is_not_a_file(pattern, skipped)
    return sorted(matches)


def _refuse_unlistable_on_the_way(
    base: Path, parts: list[str], hidden_asked: bool, pattern: str
) -> None:
    """pathlib's glob skips a folder it cannot list without a word, and its files were left
    out of the corpus: an error names each folder a wildcard part is matched in (for `**`,
    every folder below) that cannot be listed. Only the folders the parts before it match:
    `data/*/text/**` never reaches `data/x/other/`, and an unreadable folder there is none of
    its business."""
    unlistable: list[OSError] = []
    for index, part in enumerate(parts):
        if not GLOB_CHARACTERS & set(part):
            continue
        before = parts[:index]
        for top in base.glob(str(Path(*before))) if before else [base]:
            hidden = any(name.startswith(".") for name in top.relative_to(base).parts)
            if not os.path.isdir(top) or (hidden and not hidden_asked):
                continue
            if part == "**":
                _refuse_unlistable(top, hidden_asked, pattern)
            else:
                try:
                    os.scandir(top).close()
                except OSError as error:
                    unlistable.append(error)
        if part == "**":  # the walk went below every folder the later parts match in
            break
    _refuse_unreadable(pattern, unlistable)


def _refuse_unlistable(base: Path, hidden_too: bool, source: str) -> None:
    """An error naming the folders below `base` that cannot be listed (no read or search
    permission): a `**` pattern's files in them were left out of the corpus in silence."""
    unlistable: list[OSError] = []
    for _, folders, _ in os.walk(base, onerror=unlistable.append):
        folders[:] = [name for name in folders if hidden_too or not name.startswith(".")]
    _refuse_unreadable(source, unlistable)


def _refuse_unreadable(source: str | Path, errors: list[OSError]) -> None:
    # fsck's `lost+found` at a volume's root is root's alone and never a corpus's: a source of
    # a data disk's mount point failed on it (Path.rglob had skipped it, as it still is).
    errors = [error for error in errors if Path(error.filename).name != "lost+found"]
    if errors:
        where = _some([Path(error.filename) for error in errors])
        why = "; ".join(sorted({(error.strerror or str(error)).lower() for error in errors}))
        raise InputError(f"{source}: cannot read {where} ({why}); make it readable, or leave "
                         "it out of the sources")  # fmt: skip


def _glued_stars_as_one(part: str) -> str:
    """A `**` is "any depth" only as a whole path component; glued to other characters
    (`**.txt`, `***`) it means `*`, as in `glob.glob`, where pathlib refuses it."""
    return part if part == "**" else re.sub(r"\*{2,}", "*", part)


def folder_files(folder: Path) -> list[Path]:
    """Every file below `folder`, sorted, but hidden ones (a name with a leading dot, or in
    such a folder). Linked files are read; linked folders are not followed (a link to a
    folder above would loop), and a warning names them. A linked file whose target is outside
    the folder is read with a warning naming both: a folder from someone else (an unpacked
    archive keeps its links) could pull `~/.ssh/id_rsa` into a corpus, and its models."""
    files, linked_folders, skipped, outside = [], [], [], []
    inside = folder.resolve()
    for path, is_file in _below(folder):
        if is_file:
            files.append(path)
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                outside.append(path)
        elif path.is_symlink() and path.is_dir():
            linked_folders.append(path)
        elif not path.is_dir():
            skipped.append(path)
    if linked_folders:
        _warn_once(f"{folder}: linked folders are not followed: {_some(linked_folders)} (list "
                   "them as sources to read them)")  # fmt: skip
    _warn_of_what_is_not_a_file(folder, skipped)
    if outside:
        targets = _some(outside, lambda path: f"{path} -> {path.resolve()}")
        _warn_once(f"{folder}: reading linked files from outside it: {targets}")
    return sorted(files)


def _below(folder: Path) -> Iterator[tuple[Path, bool]]:
    """Every entry below `folder` but hidden ones, never inside a linked folder, with whether
    it is a file. A folder that cannot be listed or entered (no read or search permission) is
    an error naming it: `Path.rglob` skipped it without a word, and its files were left out of
    the corpus."""
    unlistable: list[OSError] = []
    for here, folders, names in os.walk(folder, onerror=unlistable.append):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in [*folders, *names]:
            if not name.startswith("."):
                path = Path(here) / name
                try:  # raises in a folder that lists its names but cannot be entered
                    is_file = path.is_file()
                except PermissionError as error:
                    unlistable.append(error)
                    continue
                yield path, is_file
    _refuse_unreadable(folder, unlistable)


def _some(paths: list[Path], said: Callable[[Path], str] = str) -> str:
    """The first three of `paths` in order, each as `said` says it, and how many more."""
    shown = ", ".join(said(p) for p in sorted(paths)[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _warn_of_what_is_not_a_file(where: Path | str, skipped: list[Path]) -> None:
    """Links to nothing or round in a loop, named pipes, sockets and devices read as nothing:
    said, each for what it is, not dropped in silence."""
    # A file gone since its folder was listed (a writer's temporary file, renamed) is nothing
    # to read or say: it was a FileNotFoundError's traceback.
    skipped = [path for path in skipped if os.path.lexists(path)]
    if skipped:
        named = _some(skipped, lambda path: f"{path} ({_not_a_file(path)})")
        _warn_once(f"{where}: skipped what is not a file to read: {named}")


def _file_input(path: Path, spec: SourceConfig, name: str | None = None) -> ResolvedInput:
    path = path.resolve()
    stat = path.stat()
    return ResolvedInput(name=name or printable_path(path), spec=spec, path=path,
                         size=stat.st_size, mtime_ns=stat.st_mtime_ns)  # fmt: skip


def printable_path(path: Path) -> str:
    """`path` as text that can be written anywhere: a name whose bytes are not UTF-8 (from an
    old archive or another system) holds Python's stand-ins for them, which cannot be encoded
    (the `source` column, hashes, logs); they are shown as escapes (`caf\\xe9.txt`)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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
    spec_digests: dict[int, str] = {}  # per spec, not per file: 100,000 files took 18 s here
    for item in inputs:
        spec = spec_digests.get(id(item.spec))
        if spec is None:
            spec = spec_digests[id(item.spec)] = item.spec.digest()
        digest.update(f"{item.name}\0{item.size}\0{item.mtime_ns}\0{spec}\n".encode())
    return digest.hexdigest()
