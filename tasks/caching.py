"""Cache keys for stages: stage name and version, the stage's config, upstream digests, and a
digest of the library code the stage runs.

Prefect's default cache policy includes the run id (no reuse across runs), and `TASK_SOURCE`
sees only the task's own body, not the `lm/` and `storage/` code it calls, so stages use these
keys through `cache_key_fn`. The artifact directory of a stage is named by the same key, so a
cache hit always finds its files; the flow refreshes the cache when the directory is missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


@cache
def code_digest(*paths: str) -> str:
    """Digest of the Python sources under `paths` (relative to the repository root)."""
    digest = hashlib.sha256()
    for relative in sorted(paths):
        root = REPO_ROOT / relative
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for file in files:
            digest.update(str(file.relative_to(REPO_ROOT)).encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()


def stage_key(stage: str, version: int, config_digest: str, upstream: list[str], code: str) -> str:
    parts = [stage, str(version), config_digest, *upstream, code]
    return f"{stage}-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:40]}"


def cache_key_from(compute: Callable[..., str]) -> Callable[[Any, dict[str, Any]], str]:
    """Adapt `compute(**task_parameters)` to Prefect's `cache_key_fn(context, parameters)`."""

    def cache_key_fn(context: Any, parameters: dict[str, Any]) -> str:
        return compute(**parameters)

    return cache_key_fn
