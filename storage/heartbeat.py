"""A file a run touches while it lives: how long a run killed with `kill -9` lasted.

A crashed run is recorded as ended when the files it left were last written (its stage journal,
its metrics, a training's curve). Stages that log no metrics (cleaning, the tokenizer, word2vec)
write nothing between their `started` and `finished` lines, so a run killed 17 s into cleaning
read as having lasted 0.2 s. The heartbeat file's modification time, renewed every few seconds
by a thread of the run's process, is the last moment it was known alive; a `kill -9` stops the
thread with the process, and a run that ends stops it itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

HEARTBEAT_FILE = "alive"
# How often the file is touched: a crashed run's end is known to within this.
HEARTBEAT_SECONDS = 10.0


class Heartbeat:
    """Touches `path` now and every `interval` seconds until `stop`. A touch that fails (the
    workspace unmounted, say) is skipped: the run goes on, its crash would only be dated
    earlier."""

    def __init__(self, path: Path, interval: float = HEARTBEAT_SECONDS):
        self.path = path
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lmforge-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._touch()  # at once: the file exists for as long as the run is known to
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop touching; the file keeps the time of the last touch. Safe to call twice."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 1)

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval):
            self._touch()

    def _touch(self) -> None:
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a"):
                os.utime(self.path)
