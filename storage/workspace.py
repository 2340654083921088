"""The workspace: one folder, `$LMFORGE_HOME`, that holds everything lmforge produces.

Keeping the corpus, artifacts, run folders, the DuckDB registry and Prefect's own home together
means a project can be moved, inspected or deleted as a unit, and caches never leak between
projects. The path is made absolute once at start-up and written back to the environment so that
every subprocess (Prefect server, workers, torchrun ranks) agrees on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = ".lmforge"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def from_env(cls) -> Workspace:
        """The workspace named by `$LMFORGE_HOME` (default `./.lmforge`), as an absolute path."""
        root = Path(os.environ.get("LMFORGE_HOME") or DEFAULT_HOME).expanduser().resolve()
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
        for folder in (self.corpus, self.artifacts, self.runs, self.prefect_home, self.downloads):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def resolve(self, relative_path: str) -> Path:
        return self.root / relative_path


def activate_workspace() -> Workspace:
    """Resolve the workspace and point Prefect at it. Must run before `prefect` is imported:
    Prefect reads `PREFECT_HOME` once, at import, and resolves a relative one against the current
    directory."""
    workspace = Workspace.from_env().ensure()
    os.environ["LMFORGE_HOME"] = str(workspace.root)
    os.environ.setdefault("PREFECT_HOME", str(workspace.prefect_home))
    # Offline machine: no telemetry, and our own loggers' records go to Prefect's run logs.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "lm,storage")
    # The library logs outside flow runs too (benchmarks, notebooks): no warning for that.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    return workspace
