"""Checkpoint folders, without torch: which ones are complete and intact, which one to resume
from, which one a run continues from (`init_from`), the digest of its weights, and whether it
was made with another tokenizer.

A checkpoint is a directory written under a staging name and renamed, with `DONE` written last
(after llm.c). Its `checkpoint.json` records the step, the tokenizer digest, how many ranks
wrote it, the byte size and the sha256 of every file: a checkpoint whose files are missing or
shorter than recorded (a disk that filled up, a copy cut short) is skipped for the previous one
rather than loaded. The loader in `lm.train` also falls back when a file of the right size will
not load or is not the one written (`digest_mismatch`, checked only on the checkpoint loaded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from lm.train_config import TrainingError

logger = logging.getLogger("lm.train")
DONE_MARKER = "DONE"
INFO_FILE = "checkpoint.json"
WEIGHTS_FILE = "model.pt"
STEP_NAME = re.compile(r"step-(\d+)")
# Where a checkpoint is written before its rename, and where the one it replaces is moved aside.
STAGING_INFIX, REPLACED_INFIX = ".partial-", ".replaced-"


def read_info(checkpoint: Path) -> dict:
    """`checkpoint.json`, or `{}` for checkpoints written before it existed."""
    path = checkpoint / INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("%s: unreadable (%s)", path, error)
        return {}
    return info if isinstance(info, dict) else {}


def _info_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint's `checkpoint.json`, which it has, cannot be read; None if it can (or
    it has none: written before it existed). Read as `{}`, it would switch off the size,
    digest and tokenizer checks that it records the values of."""
    path = checkpoint / INFO_FILE
    if not path.is_file():
        return f"{INFO_FILE} is missing" if _published_with(checkpoint, INFO_FILE) else None
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{INFO_FILE} is unreadable"
    return None if isinstance(info, dict) else f"{INFO_FILE} holds no JSON object"


def _published_with(checkpoint: Path, name: str) -> bool:
    """Whether the published output around `checkpoint` (`best/`, `final/` of a train artifact)
    recorded `name` in it when it was written: its `manifest.json` lists every file by size. A
    `checkpoint.json` lost since (a sync tool, a careless rm) is then damage, not a checkpoint
    older than the file: read as one, its size, digest and tokenizer checks were switched off,
    and weights with a flipped bit loaded silently."""
    try:
        files = json.loads((checkpoint.parent / "manifest.json").read_text())["files"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return False
    return isinstance(files, dict) and f"{checkpoint.name}/{name}" in files


def other_tokenizer(info: dict, digest: str | None) -> str | None:
    """The tokenizer digest a checkpoint's `checkpoint.json` (`info`) records when it is not
    `digest`: its token ids stand for other pieces, so its weights are another tokenizer's.
    None when the two agree, or when either is unknown (a checkpoint written before digests
    were recorded, a caller that has none)."""
    recorded = info.get("tokenizer_digest")
    return recorded if digest and recorded and recorded != digest else None


def damage(checkpoint: Path) -> str | None:
    """Why this complete checkpoint cannot be trusted, or None if its files are whole."""
    problem = _info_problem(checkpoint)
    if problem:
        return problem
    problem = size_mismatch(checkpoint, read_info(checkpoint).get("files", {}))
    if problem is None and not (checkpoint / WEIGHTS_FILE).is_file():
        return f"{WEIGHTS_FILE} is missing"
    return problem


def size_mismatch(folder: Path, sizes: dict[str, int]) -> str | None:
    """The first file of `sizes` (name → bytes written) missing from `folder` or of another
    size, said in words; None when all are as written."""
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def digest_mismatch(checkpoint: Path, names: Iterable[str]) -> str | None:
    """The first of the files `names` whose sha256 is not the one `checkpoint.json` recorded,
    in words; None when they match or none was recorded. A bit flipped on the disk or in a copy
    leaves the size as it was, and torch loads such a file without noticing: the weights would
    come back silently changed."""
    info = read_info(checkpoint)
    recorded = dict(info.get("sha256", {}))
    if info.get("weights_sha256"):  # recorded before every file's digest was
        recorded.setdefault(WEIGHTS_FILE, info["weights_sha256"])
    for name in names:
        if name in recorded and file_sha256(checkpoint / name) != recorded[name]:
            return f"{name} is not the file written (its sha256 differs from the one recorded)"
    return None


def step_of(path: Path) -> int | None:
    """The step of a step checkpoint's folder name (`step-00000120`), None for any other name
    (a staging folder, `best`, `final`)."""
    match = STEP_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def step_checkpoints(folder: Path) -> list[Path]:
    """Step checkpoint folders, complete or not, oldest first."""
    steps = [p for p in folder.glob("step-*") if step_of(p) is not None]
    return sorted(steps, key=step_of)


def complete_checkpoints(folder: Path) -> list[Path]:
    """Step checkpoints with a `DONE` marker, oldest first (whole or not)."""
    return [p for p in step_checkpoints(folder) if (p / DONE_MARKER).is_file()]


def usable_checkpoints(folder: Path) -> list[Path]:
    """Complete, intact step checkpoints, newest first; the others are skipped with a warning
    naming them."""
    if not folder.is_dir():
        return []
    for partial in step_checkpoints(folder):
        if not (partial / DONE_MARKER).is_file():
            logger.warning("%s: incomplete checkpoint (no DONE marker), skipped", partial)
    usable = []
    for checkpoint in reversed(complete_checkpoints(folder)):
        problem = damage(checkpoint)
        if problem:
            logger.warning("%s: damaged checkpoint (%s), skipped", checkpoint, problem)
        else:
            usable.append(checkpoint)
    return usable


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete and intact checkpoint; the others are skipped with a warning."""
    usable = usable_checkpoints(folder)
    return usable[0] if usable else None


# What a published checkpoint (`best/`, `final/` of a trained model) leaves out: the AdamW
# moments, twice the weights' size, which only an interrupted training resumes with. Published
# weights are evaluated, sampled, or continued by `init_from`, which starts a fresh optimizer.
TRAINING_ONLY = ("optimizer.pt",)


def publish_checkpoint(checkpoint: Path, target: Path) -> None:
    """Copy `checkpoint` to the new folder `target` without its `TRAINING_ONLY` files, its
    `checkpoint.json` listing only what it keeps (sizes and digests still checked)."""
    shutil.copytree(checkpoint, target, ignore=shutil.ignore_patterns(*TRAINING_ONLY))
    info = read_info(checkpoint)
    if not info:  # written before checkpoint.json: nothing lists the files
        return
    for listing in ("files", "sha256"):
        if isinstance(info.get(listing), dict):
            info[listing] = {name: value for name, value in info[listing].items()
                             if name not in TRAINING_ONLY}  # fmt: skip
    (target / INFO_FILE).write_text(json.dumps(info, indent=2))


def replace_folder(staging: Path, final: Path) -> None:
    """Put the finished folder `staging` at `final`. Its files reach the disk first, so a
    machine that goes down just after the rename (which a journal may keep while the data it
    names is lost) cannot leave a complete-looking checkpoint of empty files, older ones pruned.
    A directory cannot be renamed over a non-empty one, so an existing `final` is first moved
    aside and deleted after: at every instant one complete copy exists under a known name
    (`recover_staging` restores one moved aside by a process killed between the renames)."""
    for path in staging.iterdir():
        _fsync(path)
    _fsync(staging)
    replaced = None
    if final.exists():
        replaced = final.with_name(
            f"{final.name}{REPLACED_INFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        os.rename(final, replaced)
    os.rename(staging, final)
    _fsync(final.parent)
    if replaced is not None:
        shutil.rmtree(replaced)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def recover_staging(folder: Path) -> None:
    """Tidy what a killed writer left in `folder`: staging folders (never complete until
    renamed) are deleted; a folder moved aside by `replace_folder` is put back if nothing took
    its place, else deleted."""
    if not folder.is_dir():
        return
    for leftover in sorted(folder.glob(f"*{STAGING_INFIX}*")):
        logger.warning("%s: unfinished write left by a stopped process, removed", leftover)
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    for aside in sorted(folder.glob(f"*{REPLACED_INFIX}*")):
        original = folder / aside.name.split(REPLACED_INFIX)[0]
        if original.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            logger.warning(
                "%s: restored as %s (its replacement was never written)", aside, original
            )
            os.rename(aside, original)


def resolve_init_from(path: Path) -> Path:
    """The checkpoint a run starts from: `path` itself if it is one, else its `best/`, its
    `final/`, or its newest step checkpoint (a trained model folder or a work folder). A
    `best/` or `final/` whose weights are cut short or changed is skipped, with a warning, for
    the next; a damaged `path` itself is the caller's to refuse."""
    if (path / DONE_MARKER).is_file() and (path / WEIGHTS_FILE).is_file():
        return path
    damaged = []
    for name in ("best", "final"):
        candidate = path / name
        if (candidate / DONE_MARKER).is_file() and (candidate / WEIGHTS_FILE).is_file():
            problem = damage(candidate) or _weights_changed(candidate)
            if problem is None:
                return candidate
            if time.monotonic() - _warned.get((candidate, problem), -WARN_AGAIN_S) >= WARN_AGAIN_S:
                _warned[(candidate, problem)] = time.monotonic()
                logger.warning("%s: damaged checkpoint (%s), skipped", candidate, problem)
            damaged.append(f"{name}/: {problem}")
    newest = latest_checkpoint(path)
    if newest is not None:
        return newest
    if damaged:
        raise TrainingError(
            f"train.init_from: {path}: no checkpoint can be read ({'; '.join(damaged)}); start "
            "from another, or train that model again"
        )
    raise TrainingError(
        f"train.init_from: {path} is not a checkpoint (a folder with {WEIGHTS_FILE} and "
        f"{DONE_MARKER}) nor a trained model folder holding best/ or final/"
    )


# A run looks its `train.init_from` up several times (the command's check, the tokenizer search,
# the train stage's key): each hashed the weights (seconds for a GB) and warned of a damaged
# `best/` again. Hashed once per state of the file; warned once in ten minutes (a service that
# retrains daily warns each day).
_hashed: dict[tuple, str | None] = {}
_warned: dict[tuple[Path, str], float] = {}
WARN_AGAIN_S = 600


def _weights_changed(checkpoint: Path) -> str | None:
    """`digest_mismatch` of the weights, once per state of the file (inode, size, mtime)."""
    stat = (checkpoint / WEIGHTS_FILE).stat()
    state = (checkpoint.resolve(), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if state not in _hashed:
        _hashed[state] = digest_mismatch(checkpoint, [WEIGHTS_FILE])
    return _hashed[state]


def weights_digest(checkpoint: Path) -> str:
    """The sha256 of the checkpoint's weights: recorded when it was saved, computed otherwise."""
    recorded = read_info(checkpoint).get("weights_sha256")
    return recorded or file_sha256(checkpoint / WEIGHTS_FILE)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
