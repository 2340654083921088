"""The workspace: one folder, `$LMFORGE_HOME`, that holds everything lmforge produces.

Keeping the corpus, artifacts, run folders, the DuckDB registry and Prefect's own home together
means a project can be moved, inspected or deleted as a unit, and caches never leak between
projects. The path is made absolute once at start-up and written back to the environment so that
every subprocess (Prefect server, workers, torchrun ranks) agrees on it.

Only commands that write create the folders (`Workspace.ensure`): one that only reads (`lmforge
runs`, `sql`, `report` of nothing yet) leaves a missing or unwritable workspace as it found it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = ".lmforge"
# lmforge's loggers whose records go to Prefect's run logs (prefect.yaml's worker env too).
EXTRA_LOGGERS = "lm,storage"
# Seconds between a flow run's Prefect heartbeats (prefect.yaml's worker env too). The crash
# automation in prefect.yaml marks a run Crashed after 90 s without one; Prefect's own default
# is 180 s, which had it mark every `lmforge run` and served run Crashed 90 s in while it trained
# on (and free the deployment's concurrency slot for a second training).
HEARTBEAT_SECONDS = "30"
# Where a Prefect server this environment starts (`lmforge server start`, a run's temporary one,
# serve's) keeps its concurrency leases. Prefect's default keeps them in the server's memory
# while the slots they hold are counted in its database: after a server restart a training
# slot held then was never given back (every later training waited for ever, and `prefect
# concurrency-limit inspect` showed no holder), and a deployment's run was stopped at its next
# lease renewal ("Lease not found"). Kept in files under PREFECT_HOME they outlive a restart,
# and expire as they should.
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


class WorkspaceError(RuntimeError):
    """The workspace's folders cannot be created or written; the message names the one."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a notebook's string path too

    @classmethod
    def from_env(cls) -> Workspace:
        """The workspace named by `$LMFORGE_HOME` (default `./.lmforge`), as an absolute path."""
        named = os.environ.get("LMFORGE_HOME") or DEFAULT_HOME
        try:
            expanded = Path(named).expanduser()
        except RuntimeError:  # `~someone` for a user this machine does not know
            raise WorkspaceError(
                f"LMFORGE_HOME={named}: no home folder for '{named.split('/')[0]}' on this "
                "machine; give the workspace's path"
            ) from None
        try:
            root = expanded.resolve()
        except (RuntimeError, OSError) as error:  # a loop of symbolic links
            raise WorkspaceError(
                f"LMFORGE_HOME={named}: cannot be resolved ({error}); give another path"
            ) from None
        if "?" in str(root):  # DuckDB cuts a file name at "?": the registry's log went elsewhere
            raise WorkspaceError(
                f"LMFORGE_HOME={named}: the path has a '?', which DuckDB reads as the start of "
                "connection options, so the run registry cannot be written there; give a path "
                "without one"
            )
        return cls(root)

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def registry_path(self) -> Path:
        return self.root / "registry.duckdb"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    def ensure(self) -> Workspace:
        """Create the workspace's folders, for a command about to write into them; raises
        `WorkspaceError` if one cannot be created or written."""
        folders = (self.corpus, self.artifacts, self.runs, self.prefect_home, self.downloads)
        try:
            for folder in folders:
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise WorkspaceError(self._not_writable(error.strerror, error.filename)) from error
        # Folders that already exist pass mkdir whatever their mode: a workspace made read-only
        # would otherwise fail later, halfway through a run, wherever it first writes.
        for folder in (self.root, *folders):
            if not os.access(folder, os.W_OK):
                read_only = os.statvfs(folder).f_flag & os.ST_RDONLY  # a read-only mount
                reason = "Read-only file system" if read_only else "Permission denied"
                raise WorkspaceError(self._not_writable(reason, folder))
        return self

    def _not_writable(self, reason: str, path: object) -> str:
        return (
            f"LMFORGE_HOME {self.root} is not writable ({reason}: {path}); make it writable, "
            "or set LMFORGE_HOME to a folder you can write"
        )

    def resolve(self, relative_path: str) -> Path:
        return self.root / relative_path


def relocated(path: Path, root: Path) -> Path:
    """`path`, a file a run recorded by its absolute path, in the workspace now at `root`: the
    same path while it exists, else the part of it from its `artifacts/` or `runs/` folder on
    under `root` (a workspace moved or renamed since: the curve of a crashed run, a run's
    metrics waiting to be recorded, were skipped as missing)."""
    if path.exists():
        return path
    parts = path.parts
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] in ("artifacts", "runs"):
            moved = root.joinpath(*parts[index:])
            if moved.exists():
                return moved
    return path


def activate_workspace() -> Workspace:
    """Resolve the workspace and point Prefect at it. Must run before `prefect` is imported:
    Prefect reads `PREFECT_HOME` once, at import, and resolves a relative one against the current
    directory. Creates nothing: a command that writes calls `Workspace.ensure` too."""
    workspace = Workspace.from_env()
    os.environ["LMFORGE_HOME"] = str(workspace.root)
    # One set beforehand (a Prefect home shared across workspaces) is kept, made absolute: a
    # relative one would move with a later `chdir` (serve's), and Prefect reads it once.
    prefect_home = os.environ.get("PREFECT_HOME") or str(workspace.prefect_home)
    os.environ["PREFECT_HOME"] = str(Path(prefect_home).expanduser().resolve())
    # Offline machine: no telemetry; our own loggers' records go to Prefect's run logs, and
    # heartbeats often enough for prefect.yaml's crash automation (see HEARTBEAT_SECONDS).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", EXTRA_LOGGERS)
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", HEARTBEAT_SECONDS)
    # Leases that outlive a restart of the server this environment starts (LEASE_STORAGE).
    os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASE_STORAGE)
    # The library logs outside flow runs too (benchmarks, notebooks): no warning for that.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    return workspace
