"""Progress lines: done/total, rate and ETA, at most one per interval."""

from __future__ import annotations

import logging

from lm.progress import ProgressLog


def test_progress_line_reports_share_rate_and_eta():
    progress = ProgressLog("clean", total=200, unit="docs")
    progress._start -= 10.0  # ten seconds in
    progress.done = 50
    line = progress.line()
    assert "clean: 50 docs / 200 docs (25%)" in line
    assert "5 docs/s" in line and "ETA 0:00:30" in line


def test_progress_logs_at_most_once_per_interval(caplog):
    progress = ProgressLog("ingest", total=1 << 20, interval_s=3600)
    with caplog.at_level(logging.INFO, logger="lm.progress"):
        for done in range(0, 1 << 20, 1 << 16):
            progress.update(done)
        progress.finish()
    # Decimal units, as the run's summary gives them (it was 960.0 "kB" / 1.0 "MB", binary).
    assert len(caplog.records) == 1 and "983.0 kB / 1.0 MB (94%)" in caplog.text


def test_time_spent_elsewhere_is_left_out_of_the_rate_and_the_eta():
    # A 30 s download before a file was read made its reading look 46 B/s.
    progress = ProgressLog("ingest", total=100)
    progress._start -= 40.0  # forty seconds in, thirty of them downloading
    progress.leave_out(30.0)
    progress.done = 50
    assert "5 B/s, ETA 0:00:10" in progress.line()


def test_the_last_line_is_not_printed_twice(caplog):
    """An update that logged the total, then the forced last line: "100%" twice."""
    progress = ProgressLog("encode", total=100, interval_s=5.0)
    progress._last_log -= 10.0  # an interval has passed: the next update logs
    with caplog.at_level(logging.INFO, logger="lm.progress"):
        progress.update(100)
        progress.update(100, force=True)
        progress.finish()
    assert len(caplog.records) == 1 and "(100%)" in caplog.text


def test_the_rate_is_measured_from_the_first_work_done_not_from_set_up(monkeypatch):
    """Cleaning's workers took 10 s to start; its first line then said "ETA 0:04:14" of a
    stage that took 48 s."""
    clock = [100.0]
    monkeypatch.setattr("lm.progress.time.monotonic", lambda: clock[0])
    progress = ProgressLog("clean", total=1000, unit="docs", _start=clock[0])
    clock[0] += 10.0  # set-up: nothing done
    progress.update(100)
    clock[0] += 5.0
    progress.update(600)  # 500 docs in 5 s since the first batch: 100 docs/s
    line = progress.line()
    assert "100 docs/s" in line and "ETA 0:00:04" in line and "elapsed 0:00:15" in line


def test_the_last_line_gives_the_whole_stage_s_rate(monkeypatch):
    """Two parts of a fan-out finishing 1.5 s apart after 32 s: the last line said 33.3 MB/s,
    the 50 MB of the second part over the 1.5 s between the two results."""
    clock = [100.0]
    monkeypatch.setattr("lm.progress.time.monotonic", lambda: clock[0])
    progress = ProgressLog("encode", total=100e6, _start=clock[0])
    clock[0] += 32.0
    progress.update(50e6)
    clock[0] += 1.5
    progress.update(100e6)
    assert "3.0 MB/s" in progress.line()
