"""Files written so that a reader sees the old one or the new one, never half of one: written
under a name of this process's own beside the target, then renamed over it (a rename within a
folder is atomic). The staging name ends in `.partial-…`, which no reader's pattern matches
(DuckDB's globs match dotfiles, so a leading dot would not hide it)."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

# What a write that cannot succeed fails with: no room, a size limit, no permission.
WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def staging_path(path: Path) -> Path:
    """A name beside `path`, this process's own, to write before renaming it to `path`."""
    return path.with_name(f"{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:6]}")


def write_text_atomically(path: Path, text: str) -> Path:
    """`text` (UTF-8) in `path`, replacing what was there in one step."""
    staging = staging_path(path)
    try:
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, path)
    except BaseException:  # a full disk: no `.partial-` file left behind, cut short
        with contextlib.suppress(OSError):  # never in place of the write's own error
            staging.unlink(missing_ok=True)
        raise
    return path
