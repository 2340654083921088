"""The content-addressed artifact store, and the descriptors that tasks pass between them.

A stage's output lives in a directory named by the stage's cache key. It is built in a staging
directory (`<key>.partial-<pid>-<nonce>`; the suffix keeps it out of any glob DuckDB reads), a
`DONE` marker is written last, and the directory is renamed into place in one atomic step. So a
crash never leaves a half-written output where a reader would look, a rerun finds either a
complete directory (a cache hit) or nothing (a miss), and two processes building the same key at
once both succeed: the second rename finds the first's identical result and discards its own.

Beside `DONE`, `manifest.json` records the byte size of every file. An output whose files are
missing or no longer that size (a disk that filled up, a copy cut short, a file truncated by
hand) is not complete: the stage builds it again instead of handing damaged files downstream.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lm.atomic_files import WRITE_ERRNOS
from lm.checkpoints import size_mismatch
from storage.processes import pid_alive, this_host

logger = logging.getLogger("storage.artifacts")
DONE_MARKER = "DONE"
DESCRIPTOR_FILE = "descriptor.json"
MANIFEST_FILE = "manifest.json"
STAGING_INFIX = ".partial-"  # <key>.partial-<pid>-<nonce>-<host tag>: a build in progress
_REPORTED_DAMAGE: set[tuple[Path, str]] = set()  # (folder, problem) warned about


class OutputUnwritable(Exception):
    """A stage output that could not be written (a full disk, a file-size limit, a folder that
    takes no writes), said naming it: pyarrow said only "Error writing bytes to file", with a
    traceback, after the ingest task had retried it twice."""


def _a_write_failure(error: OSError, staging: Path) -> bool:
    """Whether `error` is a write into `staging` that failed for want of space or permission,
    not an input that could not be read (a file named outside the staging folder)."""
    if error.filename is not None and staging.name not in str(error.filename):
        return False
    # pyarrow's OSError has no errno of its own: its message holds the system's ("Detail:
    # [errno 27] File too large").
    numbers = {error.errno} | {int(n) for n in re.findall(r"\[errno (\d+)\]", str(error))}
    return bool(numbers & set(WRITE_ERRNOS))


@dataclass(frozen=True)
class Descriptor:
    """What a stage hands to the next: small, picklable and hashable by value, never the data.

    `path` is relative to the workspace, so caches survive a moved workspace; `key` is the cache
    key that named the directory; `digest` identifies the content itself."""

    kind: str
    key: str
    path: str
    digest: str
    stats: dict = field(default_factory=dict, hash=False, compare=False)


# Keys whose stage, in this process, found its artifact built by another process (it waited
# on the same work, or it finished between the flow's check and the task's start): the stage
# is recorded as cached, not as run, though Prefect ran the task.
_REUSED_KEYS: set[str] = set()


def reused(descriptor: Descriptor) -> Descriptor:
    """`descriptor`, found complete by the task that was to build it: noted for the flow."""
    _REUSED_KEYS.add(descriptor.key)
    return descriptor


def take_reused(key: str) -> bool:
    """Whether the stage of `key` found its artifact built by another process (and forget it)."""
    try:
        _REUSED_KEYS.remove(key)
    except KeyError:
        return False
    return True


class ArtifactStore:
    """Directories of one kind of output, each named by a cache key, inside a workspace whose
    root descriptor paths are relative to."""

    def __init__(self, base: Path, root: Path):
        self.base = base
        self.root = root

    def directory(self, key: str) -> Path:
        """The folder of `key`, a name within the store: "", "." or a path would be the store
        itself or another folder (a build of "" moved the whole store aside)."""
        if key in ("", ".", "..") or "/" in key or "\0" in key:
            raise ValueError(f"{self.base}: artifact key {key!r} is not a folder name")
        return self.base / key

    def is_complete(self, key: str) -> bool:
        """Published, and every file still as it was written; a damaged output is reported."""
        folder = self.directory(key)
        if not (folder / DONE_MARKER).is_file():
            return False
        problem = damage(folder)
        if problem and (folder, problem) not in _REPORTED_DAMAGE:
            # The flow and then its task each check a stage's output: one warning, not two.
            _REPORTED_DAMAGE.add((folder, problem))
            logger.warning("%s: damaged (%s); it will be built again", folder, problem)
        return problem is None

    def load_descriptor(self, key: str) -> Descriptor | None:
        path = self.directory(key) / DESCRIPTOR_FILE
        if not self.is_complete(key) or not path.is_file():
            return None
        return Descriptor(**json.loads(path.read_text()))

    @contextmanager
    def build(self, key: str) -> Iterator[Path]:
        """Yield an empty staging directory; on success publish it as `key` atomically."""
        self.directory(key)  # a key that names no folder of its own, refused first
        staging = self.base / staging_name(key)
        try:  # a store folder that takes no writes: a traceback from mkdir
            self.base.mkdir(parents=True, exist_ok=True)
            self.remove_abandoned_builds()
            staging.mkdir()
        except OSError as error:
            raise OutputUnwritable(
                f"{self.directory(key)}: cannot make its staging folder ({error.strerror}); is "
                "the disk full, or the folder not writable?"
            ) from error
        try:
            yield staging
            write_manifest(staging)
            (staging / DONE_MARKER).write_text(datetime.now(UTC).isoformat())
            self._publish(staging, self.directory(key))
            # Built again: damage found later is news, and is reported again.
            _REPORTED_DAMAGE.difference_update(
                {entry for entry in _REPORTED_DAMAGE if entry[0] == self.directory(key)}
            )
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, OSError) and _a_write_failure(error, staging):
                raise OutputUnwritable(
                    f"{self.directory(key)}: writing the output failed; is the disk full, or the "
                    f"folder not writable? ({type(error).__name__}: {error})"
                ) from error
            raise

    def describe(self, staging: Path, kind: str, key: str, digest: str, stats: dict) -> Descriptor:
        """The descriptor of the output being built in `staging`, written beside it."""
        path = str(self.directory(key).relative_to(self.root))
        descriptor = Descriptor(kind=kind, key=key, path=path, digest=digest, stats=stats)
        (staging / DESCRIPTOR_FILE).write_text(json.dumps(asdict(descriptor), indent=2))
        return descriptor

    def _publish(self, staging: Path, final: Path) -> None:
        try:
            os.rename(staging, final)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if (final / DONE_MARKER).is_file() and damage(final) is None:
                shutil.rmtree(staging)  # a concurrent build of the same key won; same content
                return
            # An incomplete or damaged leftover: moved aside in one rename, so the key's
            # directory is never half deleted, then replaced. A process rebuilding the same key
            # may move it first, or publish first: either way one whole output ends up there.
            aside = final.with_name(staging_name(final.name))
            with contextlib.suppress(FileNotFoundError):
                os.rename(final, aside)
            try:
                os.rename(staging, final)
            except OSError as again:
                if again.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                shutil.rmtree(staging)
            shutil.rmtree(aside, ignore_errors=True)

    def remove_abandoned_builds(self) -> None:
        """Delete staging directories whose process is gone (killed mid-build)."""
        for staging in self.base.glob(f"*{STAGING_INFIX}*"):
            pid = staging_owner(staging)
            if pid is not None and not pid_alive(pid):
                shutil.rmtree(staging, ignore_errors=True)


def staging_name(name: str) -> str:
    """`<name>.partial-<pid>-<nonce>-<host tag>`: this process's staging folder for `name`."""
    return f"{name}{STAGING_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{_host_tag()}"


def staging_owner(folder: Path) -> int | None:
    """The pid a staging folder's name holds, where this machine can judge it; None for a name
    without one, or one another machine's process named (a workspace that several machines
    share: a build in progress there was deleted here, its pid not running here)."""
    try:
        fields = folder.name.rsplit(STAGING_INFIX, 1)[1].split("-")
        pid = int(fields[0])
    except (IndexError, ValueError):
        return None
    if len(fields) >= 3 and fields[2] != _host_tag():  # (names before the tag: this host's)
        return None
    return pid if pid > 0 else None


@functools.cache
def _host_tag() -> str:
    """A short name of this machine and account (`user@host`), fit for a folder name."""
    return hashlib.sha256(this_host().encode()).hexdigest()[:8]


def write_manifest(folder: Path) -> None:
    """Record the byte size of every file under `folder`, and the footer of each Parquet
    file in it, which its page checksums do not cover (written last, before `DONE`)."""
    from storage.parquet_footer import FOOTERS, footers_of

    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    manifest: dict = {"files": files}
    footers = footers_of(folder)
    if footers:
        manifest[FOOTERS] = footers
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))


def damage(folder: Path) -> str | None:
    """Why a published output cannot be trusted, or None if its files are as written. Outputs
    published before manifests existed have none and are trusted."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text())["files"]
        sizes = {str(name): int(size) for name, size in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{MANIFEST_FILE} is unreadable ({error})"
    return size_mismatch(folder, sizes) or foreign_descriptor(folder)


def foreign_descriptor(folder: Path) -> str | None:
    """Why the folder's `descriptor.json` does not describe this output: bytes changed in it
    (a traceback where a stage read it), or another output's (two folders' contents swapped:
    another model was served under this key). None when it names this folder's key."""
    path = folder / DESCRIPTOR_FILE
    if not path.is_file():
        return None
    try:
        key = json.loads(path.read_text(encoding="utf-8"))["key"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{DESCRIPTOR_FILE} is unreadable ({type(error).__name__})"
    return None if key == folder.name else f"{DESCRIPTOR_FILE} is another output's ({key})"
