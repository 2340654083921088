"""The task runner that fanned-out stage work runs on, chosen by `[runtime]` at run time.

A flow's task runner is fixed where the flow is defined, so stages that fan out call a small
subflow with `.with_options(task_runner=make_task_runner(...))`: the same code then runs on
threads, on a process pool, or on a Dask cluster, and produces the same output on each.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from lm.config import RuntimeConfig
from lm.progress import ProgressLog

DASK_EXTRA_HINT = "pip install -e '.[dask]'"


class MissingExtraError(ImportError):
    """A configured runner needs an optional dependency that is not installed."""


def worker_count(runtime: RuntimeConfig, requested: int = 0) -> int:
    """How many workers a stage fans out to: its own setting, else `runtime.max_workers`,
    else one per core. With a remote Dask cluster this only sizes the work split: set
    `runtime.max_workers` to the cluster's worker count there."""
    return requested or runtime.max_workers or os.cpu_count() or 1


def make_task_runner(runtime: RuntimeConfig, workers: int | None = None) -> TaskRunner:
    """A fresh task runner for `runtime.task_runner`, with `workers` threads or processes
    (default `worker_count(runtime)`)."""
    workers = workers or worker_count(runtime)
    if runtime.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if not runtime.dask_address:
        share_temporary_server()
    if runtime.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    return _dask_task_runner(runtime, workers)


def share_temporary_server() -> None:
    """Point the worker processes this machine is about to start at this process's temporary
    Prefect server (`LMFORGE_PREFECT_SERVER=ephemeral`), as `PREFECT_API_URL`: without one,
    each worker started a temporary server of its own on the workspace's database (about 10 s
    of start-up per worker and stage, every run). A URL already configured (the workspace's
    server, a test harness's) is left as it is."""
    from prefect.settings import get_current_settings

    if os.environ.get("PREFECT_API_URL") or get_current_settings().api.url:
        return
    # Not imported: this process started no temporary server. Imported to look, Prefect's
    # server app took 1.5 s and 80 MB of every run on the workspace's server (the default).
    module = sys.modules.get("prefect.server.api.server")
    if module is None:
        return
    instances = getattr(module.SubprocessASGIServer, "_instances", {})  # Prefect's own registry
    running = [server for server in instances.values() if getattr(server, "running", False)]
    if running:
        os.environ["PREFECT_API_URL"] = running[0].api_url


def _dask_task_runner(runtime: RuntimeConfig, workers: int) -> TaskRunner:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as error:
        raise MissingExtraError(
            "runtime.task_runner = 'dask' needs prefect-dask, which is not installed: "
            f"{DASK_EXTRA_HINT} (or choose 'threads' or 'processes')"
        ) from error
    if runtime.dask_address:
        return DaskTaskRunner(address=runtime.dask_address)
    # One single-threaded worker process per slot: the fanned-out work is pure Python that
    # holds the GIL, so threads inside a Dask worker would not run it in parallel.
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


def results_in_order(futures: list[PrefectFuture], progress: ProgressLog,
                     amount: Callable[[object], int]) -> list:  # fmt: skip
    """The results of mapped `futures` in the order they were submitted (a fan-out's output
    must not depend on which worker finished first), with `progress` advanced by `amount` of
    each result as it completes."""
    done = 0
    for future in as_completed(futures):
        done += amount(future.result())
        progress.update(done)
    progress.finish()
    return [future.result() for future in futures]
