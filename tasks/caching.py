"""Cache keys for stages: stage name and version, the stage's config, upstream digests, and a
digest of the library code the stage runs.

Prefect's default cache policy includes the run id (no reuse across runs), and `TASK_SOURCE`
sees only the task's own body, not the `lm/` and `storage/` code it calls, so stages use these
keys through `cache_key_fn`. The artifact directory of a stage is named by the same key, so a
cache hit always finds its files; the flow refreshes the cache when the directory is missing.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from lm.config import REPO_ROOT

# The packages whose code decides what a stage produces; tasks/ and flows/ only orchestrate.
LIBRARY_PACKAGES = ("lm", "storage")
M = TypeVar("M", bound=BaseModel)


def module_sources(*modules: str) -> tuple[str, ...]:
    """The source files of `modules` and of every library module they import, directly or not
    (imports inside functions too), relative to the repository root: what a stage's code digest
    must cover, so that an edit to any of them is a new cache key. A hand-kept list misses a
    helper module the day one is split out."""
    seen: set[Path] = set()
    pending = [_source_of(module) for module in modules]
    while pending:
        path = pending.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        pending += [_source_of(name) for name in _imported_names(path)
                    if name.split(".")[0] in LIBRARY_PACKAGES]  # fmt: skip
    return tuple(sorted(str(path.relative_to(REPO_ROOT)) for path in seen))


def _source_of(module: str) -> Path | None:
    """The file of a library module (`lm.train` → lm/train.py), or None for a name that is not
    a module (`lm.train.Trainer`: the class, whose module is listed on its own)."""
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> list[str]:
    """Every absolute module name `path` imports, and `module.name` for each `from module
    import name` (which may itself be a module)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


@cache
def code_digest(*paths: str) -> str:
    """Digest of the Python code under `paths` (relative to the repository root): what the
    code does, not how it is laid out, so a comment, a docstring or a reformat keeps every
    key (a comment in `lm/config.py`, which nearly every stage loads, trained every model
    again)."""
    digest = hashlib.sha256()
    for relative in sorted(paths):
        root = REPO_ROOT / relative
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for file in files:
            digest.update(str(file.relative_to(REPO_ROOT)).encode() + b"\0")
            digest.update(code_of(file) + b"\0")
    return digest.hexdigest()


def code_of(file: Path) -> bytes:
    """The syntax tree of `file` without its docstrings, comments and layout (which no stage's
    output depends on); the bytes themselves for a file that does not parse."""
    return _code_of_source(file.read_bytes())


@cache
def _code_of_source(source: bytes) -> bytes:
    """`code_of` a file's bytes, parsed once: each stage's digest covers the modules it
    imports, most of them shared, and a run parsed the same file again for each (263 parses
    of 107 files, 4 s of a run served wholly from cache)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, _DOCUMENTED) and body and _is_docstring(body[0]):
            node.body = body[1:] or [ast.Pass()]
    return _canonical(tree).encode()


def _canonical(node: Any) -> str:
    """`ast.dump` without the fields that are None or empty: the same on every Python.
    `ast.dump` itself changes with it (3.12 dumps a function's `type_params=[]`, 3.13 leaves
    out every empty field), and every key with it: an upgrade of Python trained every model
    again, and a `train-join` node on another Python was refused as running other code."""
    if isinstance(node, ast.AST):
        fields = ", ".join(
            f"{name}={_canonical(value)}"
            for name, value in ast.iter_fields(node)
            if value is not None and not (isinstance(value, list) and not value)
        )
        return f"{type(node).__name__}({fields})"
    if isinstance(node, list):
        return f"[{', '.join(map(_canonical, node))}]"
    return repr(node)


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _is_docstring(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str))  # fmt: skip


def at_defaults(settings: M, names: Iterable[str]) -> M:
    """`settings` with the fields `names` set back to their defaults: settings that cannot
    change a stage's output, kept out of its key (changed, they ran the stage again for the
    same output)."""
    fields = type(settings).model_fields
    return settings.model_copy(update={name: fields[name].default for name in names})


def as_run_here(settings: M, bf16_by_default: Callable[[Any], bool]) -> M:
    """`settings` (a stage's `device` and `precision`) with "auto" replaced by what it picks on
    this machine, for the stage's key: "auto" and "cpu" on a CPU machine are one computation,
    which two keys ran twice, and a workspace shared by a GPU machine and a CPU one must not
    hand either the other's bf16 or fp32 numbers as its own. `bf16_by_default(device)` is
    the stage's own rule for `precision = "auto"`. A device this machine lacks is kept as
    written: the stage then refuses it, naming the setting."""
    from lm.train import pick_device

    device = pick_device("auto").type if settings.device == "auto" else settings.device
    precision = settings.precision
    if precision == "auto":
        import torch

        precision = "bf16" if bf16_by_default(torch.device(device)) else "fp32"
    return settings.model_copy(update={"device": device, "precision": precision})


def stage_key(stage: str, version: int, config_digest: str, upstream: list[str], code: str) -> str:
    parts = [stage, str(version), config_digest, *upstream, code]
    return f"{stage}-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:40]}"


def cache_key_from(compute: Callable[..., str]) -> Callable[[Any, dict[str, Any]], str]:
    """Adapt `compute(**task_parameters)` to Prefect's `cache_key_fn(context, parameters)`."""

    def cache_key_fn(context: Any, parameters: dict[str, Any]) -> str:
        return compute(**parameters)

    return cache_key_fn
