"""`lmforge serve`: the deployments of `prefect.yaml`, served from one long-lived process.

The production path needs a work pool, `prefect deploy` and a worker. For a single machine,
`prefect.serve` does the same job in one process: it registers the deployments, creates the runs
their schedules ask for, and executes every run (scheduled, or triggered with `prefect
deployment run` or the UI) as a subprocess. The deployments are read from `prefect.yaml`, so the
two paths serve the same names, parameters, schedules and concurrency limits and cannot drift
apart; only the work pool (and its job variables) is left out, since serve needs none.

The process talks to the workspace's Prefect server (started on first use, see
`flows/prefect_server.py`), so its runs show in the same UI and registry as `lmforge run`.
Before serving, it creates the training concurrency limit that the deployments share (one
training at a time across all of them), as the production path does with `prefect
concurrency-limit create`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lm.config import shipped_path

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

    from storage.workspace import Workspace

PREFECT_YAML = shipped_path("prefect.yaml")
# Keys of a prefect.yaml deployment that `to_deployment` takes as they are.
PASSED_THROUGH = ("description", "tags", "parameters", "concurrency_limit", "version")


class ServeError(RuntimeError):
    """prefect.yaml cannot be served; the message names the deployment and the problem."""


def load_deployment_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The `deployments` of a prefect.yaml, anchors resolved."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ServeError(f"{path}: cannot read it: {error}") from error
    specs = (document or {}).get("deployments") or []
    if not isinstance(specs, list) or not specs:
        raise ServeError(f"{path}: no `deployments` list")
    return specs


def _import_flow(entrypoint: str, origin: str):
    """`flows/pipeline.py:lm_pipeline` → the flow object, imported as a module of the installed
    package (the runner then imports it the same way, from any working directory)."""
    file_part, _, name = entrypoint.partition(":")
    if not name or not file_part.endswith(".py"):
        raise ServeError(f"{origin}: entrypoint '{entrypoint}' is not FILE.py:FLOW")
    module_name = file_part.removesuffix(".py").replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ServeError(f"{origin}: entrypoint '{entrypoint}': {error}") from error
    try:
        return getattr(module, name)
    except AttributeError:
        raise ServeError(f"{origin}: {module_name} has no flow '{name}'") from None


def _schedules(specs: list[dict], origin: str) -> list:
    from prefect.schedules import Cron, Interval

    if specs is not None and not isinstance(specs, list):
        raise ServeError(f"{origin}: `schedules` is a list of schedules, not {specs!r}")
    schedules = []
    for spec in specs or []:
        if not isinstance(spec, dict):
            raise ServeError(f"{origin}: a schedule is a mapping with `cron` or `interval`, "
                             f"not {spec!r}")  # fmt: skip
        timezone = spec.get("timezone")
        if "cron" in spec:
            if not isinstance(spec["cron"], str):  # Cron(5): AttributeError
                raise ServeError(f"{origin}: a schedule's `cron` is text, not {spec['cron']!r}")
            schedules.append(Cron(spec["cron"], timezone=timezone))
        elif "interval" in spec:
            schedules.append(Interval(spec["interval"], timezone=timezone))
        else:
            raise ServeError(f"{origin}: a schedule needs `cron` or `interval`: {spec}")
    return schedules


def _refused_by_prefect(error: Exception) -> str:
    """Prefect's (pydantic's) refusal of a setting, on one line: its first problem."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) < 3:  # not pydantic's "N validation errors / field / problem [type=...]"
        return " ".join(lines)
    return f"{lines[1]}: {lines[2].partition(' [type=')[0]}"


def runner_deployments(path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """One served deployment per prefect.yaml deployment, without its work pool."""
    from prefect.deployments.runner import EntrypointType

    deployments = []
    for number, spec in enumerate(load_deployment_specs(path), start=1):
        if not isinstance(spec, dict):
            raise ServeError(f"{path}: deployment {number} is not a mapping of settings: {spec!r}")
        named = f"'{spec['name']}'" if spec.get("name") else f"{number} (no name)"
        origin = f"{path}: deployment {named}"
        if not spec.get("name") or not spec.get("entrypoint"):
            raise ServeError(f"{origin}: needs `name` and `entrypoint`")
        for key in ("name", "entrypoint"):  # `name: 2024` is YAML's number: AttributeError
            if not isinstance(spec[key], str):
                raise ServeError(f"{origin}: `{key}` is text (quote it), not {spec[key]!r}")
        flow = _import_flow(spec["entrypoint"], origin)
        options = {key: spec[key] for key in PASSED_THROUGH if spec.get(key) is not None}
        try:  # an interval or a setting of the wrong type: pydantic's traceback otherwise
            deployments.append(
                flow.to_deployment(
                    name=spec["name"],
                    schedules=_schedules(spec.get("schedules"), origin),
                    entrypoint_type=EntrypointType.MODULE_PATH,
                    **options,
                )
            )
        except (TypeError, ValueError) as error:
            raise ServeError(f"{origin}: {_refused_by_prefect(error)}") from None
    return deployments


def ensure_training_limit() -> bool:
    """Create the task concurrency limit of `TRAINING_TAG` on the current Prefect API unless
    one exists (a size set by hand is kept). Returns whether it created one."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.pipeline import TRAINING_SLOTS, TRAINING_TAG

    with get_client(sync_client=True) as client:
        try:
            client.read_concurrency_limit_by_tag(TRAINING_TAG)
        except ObjectNotFound:
            client.create_concurrency_limit(tag=TRAINING_TAG, concurrency_limit=TRAINING_SLOTS)
            return True
    return False


def _serving_records(workspace: Workspace) -> Path:
    return workspace.prefect_home / "serving"


def record_serving(workspace: Workspace, api_url: str) -> Path:
    """Say that this process serves the deployments from the server at `api_url`, so that
    `lmforge server stop` does not stop that server from under it (it could run nothing more,
    its log filling with connection errors). The caller removes the file when serving ends."""
    import json

    from lm.atomic_files import write_text_atomically
    from storage.processes import this_host

    record = {"pid": os.getpid(), "host": this_host(), "api_url": api_url}
    path = _serving_records(workspace) / f"{this_host()}-{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(path, json.dumps(record))


def live_serving(workspace: Workspace, api_url: str) -> list[int]:
    """The pids of `lmforge serve` processes of this host serving from `api_url`; the records
    of those gone (killed without their clean-up) are removed."""
    import json

    from storage.processes import pid_alive, this_host

    pids = []
    for path in sorted(_serving_records(workspace).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not _is_serving_record(record) or record["host"] != this_host():
            continue
        if not pid_alive(record["pid"]):
            path.unlink(missing_ok=True)
        elif str(record.get("api_url", "")).rstrip("/") == api_url.rstrip("/"):
            pids.append(record["pid"])
    return pids


def _is_serving_record(record: Any) -> bool:
    """Whether `record` has the shape `record_serving` writes. One edited or damaged out of it
    is none: a list was an AttributeError traceback from `lmforge server stop`, a missing pid a
    KeyError. (A pid no process has, 0 included, is `pid_alive`'s to refuse.)"""
    pid = record.get("pid") if isinstance(record, dict) else None
    is_pid = isinstance(pid, int) and not isinstance(pid, bool)
    return is_pid and isinstance(record.get("host"), str)


def _temporary_server_url() -> str | None:
    """The API URL of the temporary server Prefect started for this process, if any."""
    from prefect.server.api.server import SubprocessASGIServer

    instances = getattr(SubprocessASGIServer, "_instances", {})  # Prefect's own registry
    running = [server for server in instances.values() if getattr(server, "running", False)]
    return running[0].api_url if running else None


def serve_command(
    limit: Annotated[
        int | None,
        typer.Option(help="most flow runs at once (default: no limit but each deployment's own)"),
    ] = None,
) -> None:
    """Serve the deployments of prefect.yaml (lm-pipeline/default, retrain/nightly on its cron,
    ablation/default) from this process, on the workspace's Prefect server: the zero-setup
    alternative to a work pool and a worker. Trigger runs with `prefect deployment run
    'lm-pipeline/default'` or from the UI; Ctrl-C stops serving."""
    import httpx

    from flows.cli import _fail
    from flows.prefect_server import ServerError, ensure_server
    from storage.workspace import WorkspaceError, activate_workspace

    if limit is not None and limit < 1:
        # Prefect's runner fails on a negative limit only once serving, and a limit of 0 would
        # serve for ever without running anything.
        raise _fail(f"--limit {limit}: must be at least 1 (leave it out for no limit)")
    workspace = activate_workspace()
    try:
        api_url = ensure_server(workspace.ensure())
        deployments = runner_deployments()
    except (ServerError, ServeError, WorkspaceError) as error:
        raise _fail(str(error)) from None
    server = api_url or "the ephemeral Prefect server"
    try:
        ensure_training_limit()  # one training at a time across the deployments
    except httpx.HTTPError as error:
        raise _fail(f"{server}: cannot create the training concurrency limit: {error}") from None
    from prefect import serve

    # The runs start where a worker's do (prefect.yaml's pull step: the checkout, or where an
    # install put prefect.yaml, beside its configs/): a relative `config`, such as README's
    # `configs/default.toml`, failed from any other folder serve was started in.
    os.environ["PREFECT_HOME"] = str(Path(os.environ["PREFECT_HOME"]).resolve())
    if os.environ.get("PYTHONPATH"):  # the runs import from it too, after the move
        os.environ["PYTHONPATH"] = os.pathsep.join(
            str(Path(entry).resolve())  # "" (the current folder) too
            for entry in os.environ["PYTHONPATH"].split(os.pathsep)
        )
    os.chdir(PREFECT_YAML.parent)
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
    temporary = _temporary_server_url() if api_url is None else None
    if api_url is None:  # only this process's temporary server knows the deployments
        server = "this process's temporary Prefect server" + (
            f" at {temporary}" if temporary else ""
        )
    if temporary:
        # The runs' own processes report to it: each started a temporary server of its own on
        # the workspace's database, which knew nothing of the deployment's concurrency slot
        # this one leased, and every run was cancelled ("slot lost during provisioning").
        os.environ["PREFECT_API_URL"] = temporary
    typer.echo(f"serving {names} on {server} (Ctrl-C stops); runs start in {PREFECT_YAML.parent}")
    record = record_serving(workspace, api_url) if api_url is not None else None
    if api_url is None:
        typer.echo("  (LMFORGE_PREFECT_SERVER=ephemeral: `prefect deployment run` reaches it "
                   "only with PREFECT_API_URL set to that address; without the variable, "
                   "`lmforge serve` uses the workspace's lasting server)")  # fmt: skip
    try:
        serve(*deployments, limit=limit, print_starting_message=False)
    finally:
        if record is not None:
            record.unlink(missing_ok=True)
