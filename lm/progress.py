"""Progress for long work: a periodic log line with done/total, rate and ETA.

Log lines rather than a terminal bar, because stages run inside Prefect tasks, in workers and in
CI, where a log line reaches the user (and Prefect's UI) and a redrawn bar does not.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

logger = logging.getLogger("lm.progress")


def _format_amount(value: float, unit: str) -> str:
    """Bytes in decimal units, as the run's summary and `corpus stats` give them (a 145.1 MB
    corpus was 138.4 "MB" of binary megabytes here)."""
    if unit == "B":
        for scale, suffix in ((10**9, "GB"), (10**6, "MB"), (10**3, "kB")):
            if value >= scale:
                return f"{value / scale:.1f} {suffix}"
        return f"{value:.0f} B"
    return f"{value:,.0f} {unit}"


def format_seconds(seconds: float) -> str:
    """H:MM:SS, as every progress line (stages and training) gives durations."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class ProgressLog:
    """Call `update(done)` as often as you like; it logs at most every `interval_s` seconds."""

    name: str
    total: float | None
    unit: str = "B"
    interval_s: float = 5.0
    _start: float = field(default_factory=time.monotonic)
    _last_log: float = field(default_factory=time.monotonic)
    done: float = 0.0
    _logged: float | None = None  # the amount the last line gave
    # (when, how much) of the first update that counted work done: the rate is measured from
    # there, not from the start, whose set-up (cleaning's workers starting, a first batch read)
    # did none: clean's first line said "ETA 0:04:14" of a stage that took 48 s.
    _first: tuple[float, float] | None = None

    def update(self, done: float, force: bool = False) -> None:
        """A forced line (the last one) is left out when the last line already said `done`:
        "100%" was printed twice."""
        self.done = done
        now = time.monotonic()
        if self._first is None and done > 0:
            self._first = (now, done)
        if (force and done != self._logged) or now - self._last_log >= self.interval_s:
            self._last_log, self._logged = now, done
            logger.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        now = now or time.monotonic()
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        # Once all is done, the whole stage's rate: from the first update, a fan-out's last line
        # read the gap between its two parts' results ("33.3 MB/s" of a 3 MB/s encode).
        running = not self.total or self.done < self.total
        first = self._first
        if running and first is not None and now - first[0] >= 1.0 and self.done > first[1]:
            rate = (self.done - first[1]) / (now - first[0])
        text = f"{self.name}: {_format_amount(self.done, self.unit)}"
        if self.total:
            share = min(self.done / self.total, 1.0)
            text += f" / {_format_amount(self.total, self.unit)} ({share:.0%})"
        text += f", {_format_amount(rate, self.unit)}/s"
        if self.total and rate > 0:
            text += f", ETA {format_seconds(max(self.total - self.done, 0) / rate)}"
        return text + f", elapsed {format_seconds(elapsed)}"

    def finish(self) -> None:
        self.update(self.done, force=True)

    def leave_out(self, seconds: float) -> None:
        """Time spent on other work, with lines of its own (a download before its reading),
        left out of the rate and the ETA: counted in, a 60 MB file read at 8 MB/s after a
        30 s download was said to be read at 46 B/s."""
        self._start += seconds
        if self._first is not None:
            self._first = (self._first[0] + seconds, self._first[1])
