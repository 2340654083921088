"""The run registry: one DuckDB file recording every run, stage, metric and corpus version.

DuckDB allows one writing process or many reading ones, never both, and a second process that
finds the file locked gets an error instead of waiting. So, as DESIGN §6 says: only flow
processes write; a writer takes an exclusive file lock (serialising writers across processes),
opens the database, writes one batch in one transaction and closes at once; readers open
read-only, read and close. Both retry while the other side holds the database. No connection
outlives a single call.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import duckdb

from lm.clock import SHOWN_TIME, file_time
from storage.heartbeat import HEARTBEAT_FILE
from storage.metrics_log import RUN_METRICS_FILE
from storage.pending_outcome import (
    OUTCOME_FILE,
    OUTCOME_REPLACES,
    discard_pending_outcome,
    read_pending_outcome,
    set_aside_pending_outcome,
)
from storage.records import (
    DatasetRecord,
    ModelRecord,
    PromotionRecord,
    RunOutcome,
    TokenizerRecord,
)
from storage.stage_journal import (
    JOURNAL_FILE,
    StageRecord,
    UnfinishedStage,
    read_stage_journal,
)

# The leaderboard as migration 4 left it: made again by those after it that change its columns.
LEADERBOARD = """
    CREATE OR REPLACE VIEW leaderboard AS
        SELECT m.run_id, m.label, m.kind, r.preset, r.started_at, m.parameters, m.tokens_seen,
               m.tokens_trained, m.val_bpb, m.test_bpb, m.baseline_val_bpb, m.alias
        FROM models m JOIN runs r USING (run_id)
        WHERE r.status = 'completed' AND m.val_bpb IS NOT NULL
        ORDER BY m.val_bpb;
"""
MIGRATIONS: list[str] = [
    # 1: the MLflow-shaped tracking tables plus pipeline lineage.
    """
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY,
        flow_run_id VARCHAR,
        deployment VARCHAR,
        preset VARCHAR,
        config_path VARCHAR,
        status VARCHAR NOT NULL,
        started_at TIMESTAMP NOT NULL,
        ended_at TIMESTAMP,
        seconds DOUBLE,
        config JSON,
        config_digest VARCHAR,
        code_digest VARCHAR,
        git_sha VARCHAR,
        package_versions JSON,
        device VARCHAR,
        seed BIGINT,
        corpus_digest VARCHAR,
        command VARCHAR,
        hostname VARCHAR,
        pid INTEGER,
        error VARCHAR
    );
    CREATE TABLE stages (
        run_id VARCHAR NOT NULL,
        stage VARCHAR NOT NULL,
        cache_key VARCHAR,
        cached BOOLEAN,
        seconds DOUBLE,
        output_digest VARCHAR,
        output_path VARCHAR,
        stats JSON,
        finished_at TIMESTAMP
    );
    CREATE TABLE metrics (
        run_id VARCHAR NOT NULL,
        key VARCHAR NOT NULL,
        step BIGINT,
        value DOUBLE,
        ts TIMESTAMP
    );
    CREATE TABLE datasets (
        digest VARCHAR PRIMARY KEY,
        cache_key VARCHAR,
        path VARCHAR,
        created_at TIMESTAMP,
        documents BIGINT,
        kept BIGINT,
        kept_chars BIGINT,
        kept_bytes BIGINT,
        train_documents BIGINT,
        val_documents BIGINT,
        test_documents BIGINT,
        train_bytes BIGINT,
        val_bytes BIGINT,
        test_bytes BIGINT,
        sources JSON
    );
    CREATE TABLE dataset_filters (
        dataset_digest VARCHAR NOT NULL,
        filter VARCHAR NOT NULL,
        flagged BIGINT,
        removed BIGINT
    );
    CREATE TABLE artifacts (
        run_id VARCHAR NOT NULL,
        stage VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,
        digest VARCHAR,
        path VARCHAR,
        created_at TIMESTAMP
    );
    CREATE VIEW latest_metrics AS
        SELECT run_id, key, arg_max(value, step) AS value, max(step) AS step
        FROM metrics GROUP BY run_id, key;
    CREATE VIEW leaderboard AS
        SELECT r.run_id, r.preset, r.started_at, m.value AS val_bpb
        FROM runs r JOIN latest_metrics m USING (run_id)
        WHERE m.key = 'val/bpb' AND r.status = 'completed'
        ORDER BY val_bpb;
    CREATE VIEW stage_summary AS
        SELECT stage, count(*) AS runs, avg(seconds) AS mean_seconds,
               avg(CASE WHEN cached THEN 1.0 ELSE 0.0 END) AS cache_hit_rate
        FROM stages GROUP BY stage;
    """,
    # 2: tokenizers trained by the pipeline, with their statistics on the val split.
    """
    CREATE TABLE tokenizers (
        digest VARCHAR PRIMARY KEY,
        kind VARCHAR,
        vocab_size INTEGER,
        corpus_digest VARCHAR,
        path VARCHAR,
        created_at TIMESTAMP,
        bytes_per_token DOUBLE,
        vocab_used_fraction DOUBLE,
        byte_fallback_rate DOUBLE,
        stats JSON
    );
    """,
    # 3: one row per trained model (a run may train a ladder of them), metrics tagged with the
    # model they belong to, and the leaderboard read from the models themselves.
    """
    ALTER TABLE metrics ADD COLUMN model VARCHAR;
    CREATE TABLE models (
        run_id VARCHAR NOT NULL,
        label VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,
        digest VARCHAR,
        path VARCHAR,
        tokenizer_digest VARCHAR,
        corpus_digest VARCHAR,
        parameters BIGINT,
        steps BIGINT,
        tokens_seen BIGINT,
        train_seconds DOUBLE,
        val_loss DOUBLE,
        val_bpb DOUBLE,
        test_loss DOUBLE,
        test_bpb DOUBLE,
        baseline_val_bpb DOUBLE,
        baseline_test_bpb DOUBLE,
        config JSON,
        alias VARCHAR,
        created_at TIMESTAMP
    );
    CREATE TABLE promotions (
        run_id VARCHAR NOT NULL,
        label VARCHAR,
        alias VARCHAR NOT NULL,
        promoted BOOLEAN NOT NULL,
        candidate_val_bpb DOUBLE,
        champion_val_bpb DOUBLE,
        reason VARCHAR,
        decided_at TIMESTAMP
    );
    CREATE OR REPLACE VIEW latest_metrics AS
        SELECT run_id, model, key, arg_max(value, step) AS value, max(step) AS step
        FROM metrics GROUP BY run_id, model, key;
    CREATE OR REPLACE VIEW leaderboard AS
        SELECT m.run_id, m.label, m.kind, r.preset, r.started_at, m.parameters, m.tokens_seen,
               m.val_bpb, m.test_bpb, m.baseline_val_bpb, m.alias
        FROM models m JOIN runs r USING (run_id)
        WHERE r.status = 'completed' AND m.val_bpb IS NOT NULL
        ORDER BY m.val_bpb;
    """,
    # 4: the tokens a model's published weights (`best/`) were trained on, over every training
    # they continue (`tokens_seen` counts the run's own training, to its last step); NULL where
    # a starting checkpoint did not record it. Rows recorded before December 2026 count to the
    # training's last step instead.
    "ALTER TABLE models ADD COLUMN tokens_trained BIGINT;" + LEADERBOARD,
    # 5: times as instants (TIMESTAMPTZ; lm/clock.py says why). Earlier lmforge wrote its
    # writer's local time without a zone; DuckDB reads those in the session's time zone, the
    # local zone of the machine that migrates, the best guess there is for where they were
    # written.
    """
    ALTER TABLE runs ALTER started_at TYPE TIMESTAMPTZ;
    ALTER TABLE runs ALTER ended_at TYPE TIMESTAMPTZ;
    ALTER TABLE stages ALTER finished_at TYPE TIMESTAMPTZ;
    ALTER TABLE metrics ALTER ts TYPE TIMESTAMPTZ;
    ALTER TABLE datasets ALTER created_at TYPE TIMESTAMPTZ;
    ALTER TABLE artifacts ALTER created_at TYPE TIMESTAMPTZ;
    ALTER TABLE tokenizers ALTER created_at TYPE TIMESTAMPTZ;
    ALTER TABLE models ALTER created_at TYPE TIMESTAMPTZ;
    ALTER TABLE promotions ALTER decided_at TYPE TIMESTAMPTZ;
    ALTER TABLE schema_version ALTER applied_at TYPE TIMESTAMPTZ;
    """
    + LEADERBOARD,  # a view's column types are fixed when it is made: made again
    # 6: the model a retrain's candidate was compared with (`run_id/label`, the alias's holder
    # when it was decided; NULL for no champion): a refused candidate's row did not say whose
    # score it lost to. NULL in rows recorded before December 2026.
    "ALTER TABLE promotions ADD COLUMN against VARCHAR;",
]

T = TypeVar("T")
# DuckDB's lock errors ("Could not set lock on file ...: Conflicting lock is held in ..."), as
# words: "block" is in the message of a damaged file, which waiting would never mend.
LOCK_ERROR = re.compile(r"\block\b|Conflicting")
CRASHED = "the process ended without recording an outcome"
CORPUS_STAGE = "clean"  # the stage whose output is a corpus version (tasks/clean.py's STAGE)
# The counts a `datasets` row (and its `dataset_filters`) is made of, from the clean stage.
DATASET_COUNTS = {"documents", "kept", "kept_chars", "kept_bytes", "flagged", "removed"}
logger = logging.getLogger("storage.registry")
# What DuckDB raises for a file it cannot make sense of: truncated by a full disk or a copy cut
# short, or damaged ("Could not read enough bytes", "Corrupt database file", ...). A block whose
# checksum fails comes as the base duckdb.Error, told by its message.
DAMAGE_ERRORS = (duckdb.IOException, duckdb.InternalException, duckdb.SerializationException)
DAMAGE_MESSAGES = ("Corrupt database file", "computed checksum")


# IO errors of a file that is whole but cannot be written: advice to move it aside as damaged
# would start an empty registry beside a healthy one.
NOT_DAMAGE = ("Read-only file system", "Permission denied", "Operation not permitted",
              "No space left", "File too large", "Disk quota exceeded")  # fmt: skip


def cannot_write(error: BaseException) -> bool:
    """Whether DuckDB `error` is a whole file that cannot be written (read-only, full disk)."""
    return isinstance(error, duckdb.Error) and any(cause in str(error) for cause in NOT_DAMAGE)


def is_damage(error: BaseException) -> bool:
    """Whether DuckDB `error` says a database file is damaged or cut short (not locked)."""
    if not isinstance(error, duckdb.Error) or _is_lock_error(error):
        return False
    if cannot_write(error):
        return False
    return isinstance(error, DAMAGE_ERRORS) or any(m in str(error) for m in DAMAGE_MESSAGES)


class RegistryError(RuntimeError):
    """The registry cannot be used; the message says why and what to do."""


class RegistryBusy(RegistryError):
    """Another process has held the registry open for longer than this one waits: nothing is
    wrong with the file, and writing will work once that process closes it."""

    def __init__(self, message: str, holder_pid: int, holder_program: str):
        super().__init__(message)
        self.holder_pid = holder_pid
        self.holder_program = holder_program


WAIT_VARIABLE = "LMFORGE_REGISTRY_WAIT_S"
DEFAULT_WAIT_S = 120.0


def registry_wait_s() -> float:
    """How long to wait for a registry another process holds open: `$LMFORGE_REGISTRY_WAIT_S`
    seconds, 120 by default."""
    text = os.environ.get(WAIT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_WAIT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise RegistryError(f"{WAIT_VARIABLE}={text!r}: not a number of seconds (0 or more)")
    return seconds


def _command_line(pid: int, limit: int = 80) -> str | None:
    """The command line of process `pid` (Linux's /proc), cut to `limit` characters: DuckDB
    names the holder of a lock by its program alone, `/usr/bin/python3.11` for `lmforge sql`
    and a notebook alike. None where it cannot be read (another OS, a process gone)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return None
    shown = " ".join(" ".join(word.decode(errors="replace").split()) for word in words if word)
    return (shown[: limit - 3] + "...") if len(shown) > limit else (shown or None)


def _is_lock_error(error: Exception) -> bool:
    return LOCK_ERROR.search(str(error)) is not None


class RunRegistry:
    def __init__(self, path: Path | str, timeout_s: float | None = None):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.timeout_s = registry_wait_s() if timeout_s is None else timeout_s

    # -- connections -------------------------------------------------------------------------

    def retry_while_locked(self, action: Callable[[], T], doing: str = "open") -> T:
        """Run `action` (an open or attach of the file, to `doing`), retrying with backoff
        while another process holds the database, up to `timeout_s`."""
        deadline = time.monotonic() + self.timeout_s
        delay = 0.02
        while True:
            try:
                return action()
            except duckdb.Error as error:
                if not _is_lock_error(error) or time.monotonic() > deadline:
                    raise self.unusable(error, doing) from error
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.5)

    def unusable(self, error: duckdb.Error, doing: str = "read") -> RegistryError:
        """The one-line error for a registry DuckDB cannot `doing` (open, read, write to),
        naming the file; for a damaged one, what to do without losing what it holds."""
        said = " ".join(str(error).split())
        holder = re.search(r"Conflicting lock is held in (.+?) \(PID (\d+)\)", said)
        if holder:  # DuckDB's lock, which a read-only connection holds too
            program = _command_line(int(holder[2])) or holder[1]
            if doing == "read":  # only a writer's open keeps readers out
                why = ("held it open to write for over {s:.0f} s, and DuckDB lets no other "
                       "process read a file one writes to; wait for it, or close it (from Python, "
                       "open the registry with `duckdb.connect(path, read_only=True)`)"
                       )  # fmt: skip
            else:
                why = ("held it open for over {s:.0f} s, and DuckDB lets no other process write "
                       "while one has the file open, even read-only; close it (`lmforge sql` and "
                       "`lmforge runs` open it only while they read) and run again (a pipeline "
                       "run's finished stages are cached)")  # fmt: skip
            return RegistryBusy(
                f"{self.path}: cannot {doing} the registry: process {holder[2]} ({program}) has "
                + why.format(s=self.timeout_s),
                holder_pid=int(holder[2]),
                holder_program=program,
            )
        message = f"{self.path}: cannot {doing} the registry ({said})"
        wal = self.path.with_name(self.path.name + ".wal")
        if "replaying WAL" in said:  # the registry may be whole: moving it aside lost it all
            message += (
                f"; {wal.name}, its write-ahead log, is not this file's (left beside a copy "
                f"restored from elsewhere) or is damaged: move {wal} aside, not the registry, "
                "and run again (the writes the log held are lost)"
            )
        elif cannot_write(error):
            message += "; the file is whole: make its folder writable, or free disk space"
        elif is_damage(error):
            message += (
                "; if the file is damaged or cut short, restore it from a backup, or move it "
                "aside and the next `lmforge run` starts a new one"
            )
        return RegistryError(message)

    def require_existing(self) -> None:
        if not self.path.exists():
            raise RegistryError(
                f"{self.path}: no registry yet; `lmforge run` creates it with the first run"
            )

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        return self.retry_while_locked(
            lambda: duckdb.connect(str(self.path), read_only=read_only),
            "read" if read_only else "open",
        )

    @contextmanager
    def writing(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction under the cross-process writer lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                connection = self._connect(read_only=False)
                try:
                    self._migrate(connection)
                    connection.execute("BEGIN TRANSACTION")
                    try:
                        yield connection
                        try:
                            connection.execute("COMMIT")
                        except duckdb.Error as error:  # the disk full, say: nothing was written
                            raise self.unusable(error, "write to") from error
                    except BaseException:
                        # A failed COMMIT has rolled back already, and ROLLBACK would raise
                        # "no transaction is active" in place of the error that matters.
                        with contextlib.suppress(duckdb.Error):
                            connection.execute("ROLLBACK")
                        raise
                except duckdb.Error as error:  # a file DuckDB cannot read, found mid-write
                    if not (is_damage(error) or cannot_write(error)):
                        raise
                    raise self.unusable(error, "write to") from error
                finally:
                    connection.close()
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection; a DuckDB error while reading (a truncated or damaged file, a
        table an old registry lacks) becomes a `RegistryError` naming the file."""
        self.require_existing()
        connection = self._connect(read_only=True)
        try:
            yield connection
        except duckdb.Error as error:
            try:
                version = connection.execute("SELECT max(version) FROM schema_version").fetchone()
            except duckdb.Error:
                version = (None,)
            note = older_schema_note(version[0], error)
            if note:  # not damage: an earlier lmforge's registry, which no run has migrated yet
                raise RegistryError(f"{self.path}: {' '.join(str(error).split())}{note}") from error
            raise self.unusable(error) from error
        finally:
            connection.close()

    def _migrate(self, connection: duckdb.DuckDBPyConnection) -> None:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)"
        )
        current = connection.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        version = current.fetchone()[0]
        if version > len(MIGRATIONS):  # its tables may hold what this version would break
            raise RegistryError(
                f"{self.path}: the registry was written by a newer lmforge (its schema is "
                f"version {version}; this lmforge knows {len(MIGRATIONS)}): upgrade lmforge to "
                "write to it; reading it (`lmforge runs`, `lmforge sql`) still works"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            connection.execute("BEGIN TRANSACTION")
            connection.execute(script)
            connection.execute("INSERT INTO schema_version VALUES (?, now())", [number])
            connection.execute("COMMIT")

    def schema_version(self) -> int:
        with self.reading() as connection:
            return connection.execute("SELECT max(version) FROM schema_version").fetchone()[0]

    # -- writes ------------------------------------------------------------------------------

    def start_run(self, run: dict) -> None:
        columns = ", ".join(run)
        placeholders = ", ".join("?" for _ in run)
        with self.writing() as connection:
            connection.execute(
                f"INSERT INTO runs ({columns}) VALUES ({placeholders})",
                [_sql_value(v) for v in run.values()],
            )

    def record_pending_outcomes(self, runs_dir: Path) -> list[str]:
        """Record the outcomes that runs left in `runs_dir/<run_id>/` because they could not
        write the registry at their end (`storage.pending_outcome`), for the runs it still has
        as `running` (or as `crashed`: a guess, which the outcome corrects), of any host.
        Returns their ids.

        Each is recorded in a transaction of its own, which first checks that its run still
        waits for it (two runs starting at once record it once), and its file is removed
        after. An outcome that ended after the run's recorded one replaces it, as a later
        record of the same run does (a run that recorded its success, or had it recorded from
        its file, then failed while the registry was held open). A file whose run is recorded
        already (left by a process stopped between the two) is removed; one whose run the
        registry does not know (a registry moved aside) is left for the registry it belongs
        to. One that cannot be read or recorded is named in a warning and set aside as
        `outcome.unrecorded.json`; its run is then closed like any other whose process is
        gone."""
        folders = sorted(path.parent for path in runs_dir.glob(f"*/{OUTCOME_FILE}"))
        return [folder.name for folder in folders if self._record_pending_outcome(folder)]

    def _record_pending_outcome(self, folder: Path) -> bool:
        """Record the outcome left in `folder` if its run waits for it; True if it did."""
        try:
            outcome = read_pending_outcome(folder)
            if outcome is None:  # recorded and removed by another process meanwhile
                return False
            with self.writing() as connection:
                found = connection.execute(
                    "SELECT status, ended_at FROM runs WHERE run_id = ?", [outcome.run_id]
                ).fetchone()
                waiting = found is not None and (
                    found[0] in OUTCOME_REPLACES
                    or (found[1] is not None and outcome.ended_at > found[1])
                )
                if waiting:
                    self._record_outcome(connection, outcome)
        except RegistryBusy:  # held open still: the run starting cannot write either, and says so
            raise
        except RegistryError as error:  # the registry, or a file the outcome names: try later
            logger.warning("run %s left an outcome that cannot be recorded now (%s); it stays in "
                           "%s", folder.name, error, folder / OUTCOME_FILE)  # fmt: skip
            return False
        except (duckdb.Error, OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            try:
                kept = set_aside_pending_outcome(folder)
            except OSError:
                kept = folder / OUTCOME_FILE
            logger.warning("run %s left an outcome that cannot be recorded (%s: %s); it is kept "
                           "in %s", folder.name, type(error).__name__, error, kept)  # fmt: skip
            return False
        if found is not None:  # recorded now, or before
            with contextlib.suppress(OSError):  # left, it is removed by the next run instead
                discard_pending_outcome(folder)
        return waiting

    def close_abandoned_runs(
        self, hostname: str, is_alive: Callable[[int], bool], runs_dir: Path
    ) -> list[str]:
        """Mark as `crashed` the runs of this host still `running` whose process is gone (killed
        or lost power before it could record an outcome), and record what they left in
        `runs_dir/<run_id>/`: the stages their journal says finished, their metrics, and the
        curve of a training that was cut short. Returns their ids.

        Outcomes that runs left to be recorded later are recorded first, and again for each
        run found gone (one may have left its outcome and ended meanwhile), so that a run which
        ended well but found the registry held open is never taken for crashed."""
        self.record_pending_outcomes(runs_dir)
        with self.writing() as connection:
            rows = connection.execute(
                "SELECT run_id, pid, started_at FROM runs "
                "WHERE status = 'running' AND hostname = ?",
                [hostname],
            ).fetchall()
            abandoned = [
                (run_id, started_at)
                for run_id, pid, started_at in rows
                if pid is not None and not is_alive(pid)
            ]
            for run_id, started_at in abandoned:
                self._set_outcome(connection, run_id, "crashed", started_at, CRASHED)
        # What each left, in a transaction of its own: files a crash left unreadable cost that
        # run its details, never the run that is starting (nor the other crashed runs).
        crashed = []
        if len(abandoned) > 1:  # a run that starts after many were killed said nothing for a while
            logger.info("recording what %d runs of this host whose process is gone left (%s)",
                        len(abandoned), _some_ids([run_id for run_id, _ in abandoned]))  # fmt: skip
        for run_id, started_at in abandoned:
            if self._record_pending_outcome(runs_dir / run_id):
                continue
            crashed.append(run_id)
            try:
                with self.writing() as connection:
                    self._record_crashed(connection, run_id, started_at, runs_dir / run_id)
            except (duckdb.Error, OSError, ValueError, TypeError, RegistryError) as error:
                logger.warning(
                    "run %s crashed; what it left in %s could not be recorded: %s",
                    run_id, runs_dir / run_id, error,
                )  # fmt: skip
        return crashed

    def _record_crashed(
        self,
        connection: duckdb.DuckDBPyConnection,
        run_id: str,
        started_at: datetime,
        folder: Path,
    ) -> None:
        """A crashed run's journal and metrics, as `finish_run` would have recorded them, ended
        when its files were last written (or when it started, if it wrote none): its heartbeat
        file's last touch, for a run that lived on in a stage that writes nothing.

        Its finished stages finished when their journal lines say, not when this reads them
        (maybe days later). A stage it never finished gets no row: `stages` holds finished
        stages, with their seconds, which it has none of. The error names it and when it
        started, which `lmforge runs show` prints."""
        journal_path = folder / JOURNAL_FILE
        journal = read_stage_journal(journal_path)
        for record in journal.finished:  # a time missing from its line stays unknown: null
            self._insert_stage(connection, run_id, record, record.finished_at)
        # The run's own metrics, and the curve of a training cut short, still in its work folder.
        live = [stage.live_metrics for stage in journal.unfinished.values()]
        metrics = [(folder / RUN_METRICS_FILE, None)] + [
            (metrics.path, metrics.model) for metrics in live if metrics is not None
        ]
        for path, model in metrics:
            self._insert_metrics(connection, run_id, path, model)
        written = [journal_path, folder / HEARTBEAT_FILE, *(path for path, _ in metrics)]
        ended_at = _last_written(written, started_at)
        error = CRASHED
        if journal.unfinished:
            during = "; ".join(_unfinished_stage(*item) for item in journal.unfinished.items())
            error += f" (during stage {during})"
        corpus = self._record_journal_corpus(connection, journal.finished)
        self._set_outcome(connection, run_id, "crashed", ended_at, error, corpus)

    def _record_journal_corpus(
        self, connection: duckdb.DuckDBPyConnection, finished: list[StageRecord]
    ) -> str | None:
        """The corpus version a crashed run's clean stage built, recorded (once) from its
        journal line, which holds what the stage handed on; its digest, or None for a run
        killed before it, or a line without the counts a dataset row needs."""
        clean = next((r for r in finished if r.stage == CORPUS_STAGE and r.output_digest), None)
        if clean is None or not clean.cache_key or not clean.output_path:
            return None
        if not clean.stats.keys() >= DATASET_COUNTS:  # a line of an older version, say
            return None
        dataset = DatasetRecord(clean.output_digest, clean.cache_key, clean.output_path,
                                clean.stats)  # fmt: skip
        self._insert_dataset(connection, dataset, clean.finished_at)
        return clean.output_digest

    def record(self, outcome: RunOutcome) -> PromotionRecord | None:
        """`finish_run` for an outcome held as one value."""
        with self.writing() as connection:
            return self._record_outcome(connection, outcome)

    def finish_run(
        self,
        run_id: str,
        status: str,
        ended_at: datetime,
        stages: list[StageRecord],
        datasets: list[DatasetRecord] = (),
        corpus_digest: str | None = None,
        metrics_file: Path | None = None,
        error: str | None = None,
        tokenizers: list[TokenizerRecord] = (),
        models: list[ModelRecord] = (),
        promotion: PromotionRecord | None = None,
    ) -> PromotionRecord | None:
        """Everything a run produced, in one transaction: stages, artifacts, corpus versions,
        metrics (bulk-loaded from the run's JSONL file), a retrain's promotion decision, and
        the final status. Returns the promotion decision as recorded (`_record_promotion` may
        overturn it), None without one.

        A second call for the same run (a flow that fails after recording its success, say
        while publishing its run card) replaces the first's stages, artifacts and metrics
        rather than adding to them: `stages` and the metrics file hold everything so far. Its
        models are kept unless the call names models of its own, and an alias a model holds
        stays with it."""
        return self.record(
            RunOutcome(run_id, status, ended_at, list(stages), list(datasets), corpus_digest,
                       metrics_file, error, list(tokenizers), list(models), promotion)
        )  # fmt: skip

    def _record_outcome(
        self, connection: duckdb.DuckDBPyConnection, outcome: RunOutcome
    ) -> PromotionRecord | None:
        run_id, models = outcome.run_id, outcome.models
        aliases = []  # the models replaced keep the aliases they hold
        if models:
            aliases = connection.execute(
                "SELECT label, alias FROM models WHERE run_id = ? AND alias IS NOT NULL", [run_id]
            ).fetchall()
        for table in ("stages", "artifacts", "metrics") + (("models",) if models else ()):
            connection.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        for stage in outcome.stages:  # one recorded without its time finished by the run's end
            self._insert_stage(connection, run_id, stage, stage.finished_at or outcome.ended_at)
        built = {stage.output_digest: stage.finished_at for stage in outcome.stages
                 if stage.stage == CORPUS_STAGE}  # fmt: skip
        for dataset in outcome.datasets:
            self._insert_dataset(connection, dataset, built.get(dataset.digest))
        for tokenizer in outcome.tokenizers:
            stats = tokenizer.stats
            connection.execute(
                "INSERT OR IGNORE INTO tokenizers VALUES (?, ?, ?, ?, ?, now(), ?, ?, ?, ?)",
                [
                    tokenizer.digest,
                    stats["kind"],
                    stats["vocab_size"],
                    tokenizer.corpus_digest,
                    tokenizer.path,
                    stats["bytes_per_token"],
                    stats["vocab_used_fraction"],
                    stats["byte_fallback_rate"],
                    json.dumps(stats, ensure_ascii=False),
                ],
            )
        for model in models:
            self._insert_model(connection, run_id, model)
        for label, alias in aliases:
            connection.execute(
                "UPDATE models SET alias = ? WHERE run_id = ? AND label = ?", [alias, run_id, label]
            )
        if outcome.metrics_file is not None:
            self._insert_metrics(connection, run_id, outcome.metrics_file)
        promotion = None
        if outcome.promotion is not None:
            connection.execute("DELETE FROM promotions WHERE run_id = ?", [run_id])
            promotion = self._record_promotion(connection, run_id, outcome.promotion)
        # A retrain logs its decision as a metric before the record, which can overturn it
        # (`_record_promotion`): the metric says what was recorded, also when a later record
        # of the run (say of its failure) reloads the metrics file.
        connection.execute(
            "UPDATE metrics SET value = 0 WHERE run_id = ? AND key = 'retrain/promoted' AND "
            "EXISTS (SELECT 1 FROM promotions WHERE run_id = ? AND NOT promoted)",
            [run_id, run_id],
        )
        self._set_outcome(connection, run_id, outcome.status, outcome.ended_at, outcome.error,
                          outcome.corpus_digest)  # fmt: skip
        return promotion

    @staticmethod
    def _insert_stage(
        connection: duckdb.DuckDBPyConnection,
        run_id: str,
        stage: StageRecord,
        finished_at: datetime | None,
    ) -> None:
        """The stage's row, and an artifact row (made when it finished) if it produced an
        output folder."""
        connection.execute(
            "INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                stage.stage,
                stage.cache_key,
                stage.cached,
                stage.seconds,
                stage.output_digest,
                stage.output_path,
                json.dumps(stage.stats),
                finished_at,
            ],
        )
        if stage.output_path:
            connection.execute(
                "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?)",
                [run_id, stage.stage, stage.stage, stage.output_digest, stage.output_path,
                 finished_at],
            )  # fmt: skip

    @staticmethod
    def _insert_metrics(
        connection: duckdb.DuckDBPyConnection, run_id: str, path: Path, model: str | None = None
    ) -> None:
        """Bulk-load a metrics JSONL file, its lines tagged with `model` when given (a training
        curve read from its work folder). Times are read as text and cast in the session's
        zone, so a time an earlier lmforge wrote without an offset is local time, as migration
        5 reads the registry's own (`read_json` typed them as UTC). A line that is not valid
        JSON (the last one, cut short when a writer was killed) is skipped: DuckDB reads it as
        a row of NULLs."""
        if not path.is_file() or not path.stat().st_size:
            return
        connection.execute(
            "INSERT INTO metrics (run_id, key, step, value, ts, model) "
            "SELECT ?, key, step, value, TRY_CAST(ts AS TIMESTAMPTZ), coalesce(?, model) "
            "FROM read_json(?, columns = {key: 'VARCHAR', step: 'BIGINT', value: 'DOUBLE', "
            "ts: 'VARCHAR', model: 'VARCHAR'}, format = 'newline_delimited', "
            "ignore_errors = true) "
            "WHERE key IS NOT NULL",
            [run_id, model, str(path)],
        )

    @staticmethod
    def _set_outcome(
        connection: duckdb.DuckDBPyConnection,
        run_id: str,
        status: str,
        ended_at: datetime,
        error: str | None,
        corpus_digest: str | None = None,
    ) -> None:
        connection.execute(
            "UPDATE runs SET status = ?, ended_at = ?, error = ?, "
            "corpus_digest = coalesce(?, corpus_digest), "
            "seconds = epoch(CAST(? AS TIMESTAMPTZ) - started_at) WHERE run_id = ?",
            [status, ended_at, error, corpus_digest, ended_at, run_id],
        )

    @staticmethod
    def _insert_model(
        connection: duckdb.DuckDBPyConnection, run_id: str, model: ModelRecord
    ) -> None:
        stats = model.stats
        connection.execute(
            "INSERT INTO models VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, now(), ?)",
            [
                run_id,
                model.label,
                model.kind,
                model.digest,
                model.path,
                model.tokenizer_digest,
                model.corpus_digest,
                stats.get("parameters"),
                stats.get("steps"),
                stats.get("tokens_seen"),
                stats.get("seconds"),
                stats.get("val_loss"),
                stats.get("val_bpb"),
                stats.get("test_loss"),
                stats.get("test_bpb"),
                stats.get("baseline_val_bpb"),
                stats.get("baseline_test_bpb"),
                json.dumps(model.config),
                stats.get("tokens_trained"),
            ],
        )

    @staticmethod
    def _record_promotion(
        connection: duckdb.DuckDBPyConnection, run_id: str, decision: PromotionRecord
    ) -> PromotionRecord:
        """Record the decision, and return it as recorded; when promoted, `alias` moves to
        the run's model (one model holds an alias at a time). A promotion decided against a
        model that no longer holds the alias (another retrain promoted its own meanwhile, or
        this run is recorded late, having found the registry held open) is recorded as not
        promoted: it beat a champion that is gone."""
        alias, label = decision.alias, decision.label
        holder = connection.execute(
            "SELECT run_id, label FROM models WHERE alias = ? LIMIT 1", [alias]
        ).fetchone()
        now = f"{holder[0]}/{holder[1]}" if holder else None
        if decision.promoted and now != decision.against and (holder or [None])[0] != run_id:
            decision = replace(
                decision,
                promoted=False,
                reason=f"{decision.reason}; not promoted after all: the {alias} changed from "
                f"{decision.against or 'none'} to {now} before this run was recorded",
            )
        if decision.promoted:
            connection.execute("UPDATE models SET alias = NULL WHERE alias = ?", [alias])
            connection.execute(
                "UPDATE models SET alias = ? WHERE run_id = ? AND (? IS NULL OR label = ?)",
                [alias, run_id, label, label],
            )
        connection.execute(
            "INSERT INTO promotions (run_id, label, alias, promoted, candidate_val_bpb, "
            "champion_val_bpb, reason, decided_at, against) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, label, alias, decision.promoted, decision.candidate_val_bpb,
             decision.champion_val_bpb, decision.reason, decision.decided_at, decision.against],
        )  # fmt: skip
        return decision

    def _insert_dataset(
        self, connection: duckdb.DuckDBPyConnection, dataset: DatasetRecord,
        created_at: datetime | None = None,
    ) -> None:  # fmt: skip
        """A corpus version, created when its clean stage finished (`created_at`) if known:
        recorded days later from a crashed run's journal, it was dated by the recording, which
        moved it in `corpus growth` and `last_used`."""
        exists = connection.execute(
            "SELECT 1 FROM datasets WHERE digest = ?", [dataset.digest]
        ).fetchone()
        if exists:
            return
        stats = dataset.stats
        split_documents = stats.get("split_documents", {})
        split_bytes = stats.get("split_bytes", {})
        connection.execute(
            "INSERT INTO datasets VALUES "
            "(?, ?, ?, coalesce(CAST(? AS TIMESTAMPTZ), now()), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                dataset.digest,
                dataset.cache_key,
                dataset.path,
                created_at,
                stats["documents"],
                stats["kept"],
                stats["kept_chars"],
                stats["kept_bytes"],
                *(split_documents.get(s, 0) for s in ("train", "val", "test")),
                *(split_bytes.get(s, 0) for s in ("train", "val", "test")),
                json.dumps(stats.get("sources", {})),
            ],
        )
        for name, flagged in stats["flagged"].items():
            connection.execute(
                "INSERT INTO dataset_filters VALUES (?, ?, ?, ?)",
                [dataset.digest, name, flagged, stats["removed"].get(name, 0)],
            )

    # -- reads -------------------------------------------------------------------------------

    def query(self, sql: str, parameters: list | None = None) -> tuple[list[str], list[tuple]]:
        with self.reading() as connection:
            result = connection.execute(sql, parameters or [])
            columns = [d[0] for d in result.description] if result.description else []
            return columns, result.fetchall()

    def find_run(self, prefix: str) -> dict:
        """The run whose id starts with `prefix`, or else whose Prefect flow run's id does (as
        the Prefect UI and `prefect flow-run ls` show runs)."""
        if not prefix.strip():
            raise RegistryError("no run id given (see `lmforge runs` for them)")
        columns, rows = self.query(
            "SELECT * FROM runs WHERE starts_with(run_id, ?) ORDER BY started_at DESC", [prefix]
        )
        if not rows:
            columns, rows = self.query(
                "SELECT * FROM runs WHERE starts_with(flow_run_id, ?) ORDER BY started_at DESC",
                [prefix],
            )
        if not rows:
            raise RegistryError(
                f"no run with an id (or Prefect flow run id) starting '{prefix}' (see "
                "`lmforge runs`)"
            )
        if len(rows) > 1:  # the newest first: the likeliest meant, and never left out
            ids = ", ".join(row[0] for row in rows[:5])
            more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
            raise RegistryError(f"run id '{prefix}' is ambiguous: {ids}{more}")
        return dict(zip(columns, rows[0], strict=True))

    def find_model(self, run_prefix: str, label: str | None = None) -> dict:
        """The trained model of a run (its last one, the top of a ladder, unless `label` names
        another), as a dict of the `models` row."""
        run = self.find_run(run_prefix)
        columns, rows = self.query(
            "SELECT * FROM models WHERE run_id = ? ORDER BY created_at, rowid", [run["run_id"]]
        )
        found = [dict(zip(columns, row, strict=True)) for row in rows]
        if not found and run["status"] == "running":
            raise RegistryError(
                f"run {run['run_id']} has no model recorded yet: a run's models are recorded "
                f"when it ends (`lmforge runs show {run['run_id']}` says where it stands)"
            )
        if not found:
            raise RegistryError(
                f"run {run['run_id']} ({run['status']}) has no trained model: its config has no "
                "model, or it ended before training finished"
            )
        if label is None:
            return found[-1]
        for model in found:
            if model["label"] == label:
                return model
        labels = ", ".join(m["label"] for m in found)
        raise RegistryError(f"run {run['run_id']} has no model '{label}' (models: {labels})")

    def champion(self, alias: str = "champion") -> dict | None:
        columns, rows = self.query("SELECT * FROM models WHERE alias = ? LIMIT 1", [alias])
        return dict(zip(columns, rows[0], strict=True)) if rows else None

    def export_parquet(self, out_dir: Path) -> dict[str, tuple[Path, int]]:
        """Copy every table to `out_dir/<table>.parquet` in one read transaction, so the files
        agree with each other. Each is written as `*.partial-*` and renamed, so a reader never
        sees half a file. Rows are written in no particular order: keeping the table's took
        793 MB and 4.0 s for 20 M metric rows, against 263 MB and 2.0 s (bench/bench_export.py).
        Returns table → (path, rows)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        written = {}
        with self.reading() as connection:
            connection.execute("SET preserve_insertion_order = false")
            connection.execute("BEGIN TRANSACTION")
            tables = connection.execute(
                "SELECT table_name FROM duckdb_tables() "
                "WHERE database_name = current_database() AND NOT temporary ORDER BY table_name"
            ).fetchall()
            for (table,) in tables:
                target = out_dir / f"{table}.parquet"
                partial = out_dir / f"{table}.parquet.partial-{random.getrandbits(48):012x}"
                quoted_path = str(partial).replace("'", "''")
                quoted_table = table.replace('"', '""')
                try:
                    copied = connection.execute(
                        f"COPY \"{quoted_table}\" TO '{quoted_path}' (FORMAT parquet)"
                    )
                    count = copied.fetchone()[0]
                    partial.replace(target)
                except duckdb.Error as error:
                    if str(partial) not in str(error):
                        raise  # the registry could not be read: `reading` says so
                    said = " ".join(str(error).split())
                    raise RegistryError(f"{target}: cannot write it ({said})") from error
                finally:
                    partial.unlink(missing_ok=True)
                written[table] = (target, count)
            connection.execute("COMMIT")
        return written


def _unfinished_stage(name: str, stage: UnfinishedStage) -> str:
    """A stage a crashed run never finished, as its error names it: with when it started, in
    UTC (the error is text, shown as written in every zone: in the recording process's local
    time it read as New York's beside New York's times when Tokyo had recorded it)."""
    if stage.started_at is None:
        return name
    started = stage.started_at.astimezone(UTC) if stage.started_at.tzinfo else stage.started_at
    return f"{name}, started {started:{SHOWN_TIME}} UTC"


# The name a Binder or Catalog Error says is missing: `Referenced column "x" not found`,
# `Table "r" does not have a column named "x"`, `Table with name x does not exist`.
MISSING_NAME = re.compile(r'column(?: named)? "([^"]+)"|with name (\S+) does not exist')


def older_schema_note(version: int | None, error: Exception) -> str:
    """Why a table or column is missing where the registry (schema `version`) is an earlier
    lmforge's: a command that reads does not migrate it, only a writer does; "" otherwise, and
    for a name no later migration adds (a typo in a query is not explained by the upgrade)."""
    if not str(error).startswith(("Catalog Error", "Binder Error")):
        return ""
    if version is None or version >= len(MIGRATIONS):
        return ""
    names = [a or b for a, b in MISSING_NAME.findall(str(error).splitlines()[0])]
    added = "\n".join(MIGRATIONS[version:])
    if names and not any(re.search(rf"\b{re.escape(name)}\b", added, re.IGNORECASE)
                         for name in names):  # fmt: skip
        return ""
    return (f" (the registry was written by an earlier lmforge, schema version {version} of "
            f"{len(MIGRATIONS)}: the tables and columns added since appear once a run of this "
            "lmforge has written to it, e.g. the next `lmforge run`)")  # fmt: skip


def _some_ids(run_ids: list[str], shown: int = 3) -> str:
    more = f" and {len(run_ids) - shown} more" if len(run_ids) > shown else ""
    return ", ".join(run_ids[:shown]) + more


def _last_written(paths: list[Path], since: datetime) -> datetime:
    """When the newest of `paths` that exist was last modified, or `since` if none is newer."""
    times = [file_time(path.stat().st_mtime) for path in paths if path.is_file()]
    return max([since, *times])


def _sql_value(value: object) -> object:
    return json.dumps(value) if isinstance(value, dict | list) else value
