"""The errors a user can fix, and how the command line says them: one line, no traceback.

Prefect logs every failed task run and flow run with its traceback (`logger.error(...,
exc_info=True)` in `prefect.task_engine`, `logger.exception(...)` in `prefect.flow_engine`),
on the `prefect.task_runs` and `prefect.flow_runs` loggers, before the exception reaches the
command. For an error a user can fix (a vocabulary too large for the corpus, a source that
cannot be read) that stack only shows where lmforge noticed the problem, and it buries the
`error:` line that says what to do. Any other exception is a bug, and keeps its traceback.

Imported only once the workspace is active: the error classes' modules may import Prefect,
which reads `PREFECT_HOME` at import.
"""

from __future__ import annotations

import logging

# The loggers of Prefect's run engines (see `prefect.logging.loggers`): their records are
# the ones that carry a failed run's exception.
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def user_error_types() -> tuple[type[Exception], ...]:
    """lmforge's own errors whose message names the input and says what to do."""
    from lm.config import ConfigError
    from lm.evaluate import CheckpointError, EvaluationError
    from lm.text.sources import InputError
    from lm.tokenizer import TokenizerError
    from lm.train_config import TrainingError
    from lm.word2vec import Word2VecError
    from storage.artifacts import OutputUnwritable
    from storage.corpus import CorpusError
    from storage.registry import RegistryError
    from storage.shards import ShardError
    from storage.workspace import WorkspaceError

    return (InputError, ConfigError, RegistryError, TokenizerError, ShardError, TrainingError,
            EvaluationError, CheckpointError, WorkspaceError, Word2VecError,
            OutputUnwritable, CorpusError)  # fmt: skip


class HideTracebackOf(logging.Filter):
    """Keeps a record, but without its traceback when its exception is one of `types`: the
    log line still says which run failed and with what message."""

    def __init__(self, types: tuple[type[BaseException], ...]):
        super().__init__()
        self.types = types

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.types):
            record.exc_info = None
            record.exc_text = None  # a traceback a handler already formatted
        return True


def hide_prefect_tracebacks_of(types: tuple[type[BaseException], ...]) -> None:
    """Drop the traceback from Prefect's run logs for exceptions of `types`, in this process.
    A filter on the loggers, not on a handler: Prefect's logging set-up (`dictConfig`)
    replaces handlers but keeps a logger's filters, and the run's log on the server then
    holds the same short line as the terminal."""
    for name in PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        for installed in [f for f in logger.filters if isinstance(f, HideTracebackOf)]:
            logger.removeFilter(installed)
        logger.addFilter(HideTracebackOf(types))
