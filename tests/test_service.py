"""The service path: prefect.yaml's deployments, and `lmforge serve` running a triggered run on
the test session's Prefect server."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import yaml

from flows.serve import PREFECT_YAML, ServeError, runner_deployments
from storage.registry import RunRegistry
from tests.conftest import REPO, lmforge_command
from tests.helpers import write_config

SERVE_START_TIMEOUT_S = 120


def test_every_prefect_yaml_deployment_imports_and_serves_with_its_settings():
    """`prefect deploy --all` fails on an entrypoint that does not import; serving them checks
    each one the same way, and that serve keeps prefect.yaml's settings."""
    specs = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    served = {f"{d.flow_name}/{d.name}": d for d in runner_deployments()}
    assert len(served) == len(specs)
    assert {"lm-pipeline/default", "retrain/nightly", "ablation/default"} <= set(served)
    default = served["lm-pipeline/default"]
    assert default.entrypoint == "flows.pipeline.lm_pipeline"  # importable from any directory
    assert default.concurrency_limit == 1
    assert default.parameters == {"config": "default", "overrides": []}
    assert default.work_pool_name is None  # serve runs its flows itself
    assert not default.schedules
    [nightly] = served["retrain/nightly"].schedules
    assert (nightly.schedule.cron, nightly.schedule.timezone) == ("0 3 * * *", "UTC")


def test_a_bad_entrypoint_in_prefect_yaml_is_an_error_naming_it(tmp_path):
    path = tmp_path / "prefect.yaml"
    path.write_text("deployments:\n  - name: x\n    entrypoint: flows/missing.py:nothing\n")
    with pytest.raises(ServeError, match=r"prefect.yaml: deployment 'x'.*flows/missing.py"):
        runner_deployments(path)


def _wait_for_deployment(name: str, process: subprocess.Popen) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + SERVE_START_TIMEOUT_S
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                pass
            assert process.poll() is None, f"lmforge serve exited:\n{process.stdout.read()}"
            assert time.monotonic() < deadline, "lmforge serve did not register its deployment"
            time.sleep(0.5)


@pytest.mark.slow
def test_lmforge_serve_runs_a_triggered_deployment_and_records_it(workspace, tmp_path):
    from prefect.deployments import run_deployment

    config = write_config(tmp_path / "c.toml", [{"path": str(REPO / "README.md")}])
    environment = dict(os.environ, PREFECT_RUNNER_POLL_FREQUENCY="1")
    serve = subprocess.Popen(
        lmforge_command("serve"), cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_deployment("lm-pipeline/default", serve)
        flow_run = run_deployment(
            "lm-pipeline/default", parameters={"config": str(config)}, timeout=240, poll_interval=1
        )
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            output, _ = serve.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            output, _ = serve.communicate()
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{output}"
    _, rows = RunRegistry(workspace.registry_path).query(
        "SELECT status, deployment, corpus_digest IS NOT NULL FROM runs WHERE flow_run_id = ?",
        [str(flow_run.id)],
    )
    assert rows == [("completed", "default", True)]
