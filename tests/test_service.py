"""The service path: prefect.yaml's deployments, and `lmforge serve` running a triggered run on
the test session's Prefect server."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.pipeline import TRAINING_TAG, RunContext, lm_pipeline, run_stage
from flows.serve import PREFECT_YAML, ServeError, ensure_training_limit, runner_deployments
from storage.artifacts import ArtifactStore, Descriptor
from storage.metrics_log import MetricsLog
from storage.registry import RunRegistry
from storage.stage_journal import StageJournal
from storage.workspace import Workspace
from tests.conftest import lmforge_command
from tests.helpers import prose, readme_sections, write_config

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


def test_a_worker_s_flow_runs_send_lmforge_s_logs_to_prefect():
    """A worker's flow run never activates the workspace that sets the extra loggers: its
    Prefect log held no training progress, warning or wait for the training slot."""
    from storage.workspace import EXTRA_LOGGERS

    for spec in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]:
        env = spec["work_pool"]["job_variables"]["env"]
        assert env["PREFECT_LOGGING_EXTRA_LOGGERS"] == EXTRA_LOGGERS, spec["name"]


def _heartbeat_seconds_of_a_command(home: Path, **env: str) -> int:
    """The heartbeat interval Prefect reads in a process started as lmforge's commands start
    (`activate_workspace` before Prefect is imported), from an environment with no Prefect
    setting but `env`: what `lmforge run` and `lmforge serve` (whose runs inherit its
    environment) send heartbeats by."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
    code = ("from storage.workspace import activate_workspace; activate_workspace(); "
            "from prefect.settings import get_current_settings; "
            "print(get_current_settings().flows.heartbeat_frequency)")  # fmt: skip
    read = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=PREFECT_YAML.parent,
                          env=clean | {"LMFORGE_HOME": str(home)} | env)  # fmt: skip
    return int(read.stdout.strip().splitlines()[-1])


def test_every_flow_run_sends_heartbeats_well_within_the_crash_automation_s_window(tmp_path):
    """Prefect's default is a heartbeat every 180 s, twice the 90 s after which prefect.yaml's
    automation marks a run Crashed: with the automation installed, a `lmforge run` (or a served
    run) still training showed Crashed 90 s in, and a served run freed its deployment's
    concurrency slot for a second training. A worker's runs, the command line's and serve's
    send one at least twice per window; a user's own setting is kept."""
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    [automation] = spec["automations"]
    within = automation["trigger"]["within"]
    envs = [deployment["work_pool"]["job_variables"]["env"] for deployment in spec["deployments"]]
    workers = {int(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) for env in envs}
    command = _heartbeat_seconds_of_a_command(tmp_path / "ws")
    for seconds in (command, *workers):
        assert 2 * seconds <= within, (seconds, within)
    assert workers == {command}
    mine = _heartbeat_seconds_of_a_command(tmp_path / "ws", PREFECT_FLOWS_HEARTBEAT_FREQUENCY="60")
    assert mine == 60


def test_a_bad_entrypoint_in_prefect_yaml_is_an_error_naming_it(tmp_path):
    path = tmp_path / "prefect.yaml"
    path.write_text("deployments:\n  - name: x\n    entrypoint: flows/missing.py:nothing\n")
    with pytest.raises(ServeError, match=r"prefect.yaml: deployment 'x'.*flows/missing.py"):
        runner_deployments(path)


@pytest.mark.parametrize(
    ("written", "said"),
    [("", "no `deployments` list"), ("deployments: []\n", "no `deployments` list"),
     ("deployments:\n  - name: x\n", "deployment 'x': needs `name` and `entrypoint`"),
     ("deployments:\n  - name: x\n    entrypoint: flows/pipeline.py:lm_pipeline\n"
      "  - entrypoint: flows/pipeline.py:lm_pipeline\n",
      "deployment 2 (no name): needs `name` and `entrypoint`"),
     ("deployments:\n  - lm-pipeline\n",
      "deployment 1 is not a mapping of settings: 'lm-pipeline'"),
     ("deployments:\n  - name: x\n    entrypoint: flows/pipeline:lm_pipeline\n",
      "deployment 'x': entrypoint 'flows/pipeline:lm_pipeline' is not FILE.py:FLOW"),
     ("deployments:\n  - name: x\n    entrypoint: flows/pipeline.py:missing\n",
      "deployment 'x': flows.pipeline has no flow 'missing'"),
     ("deployments:\n  - name: x\n    entrypoint: flows/pipeline.py:lm_pipeline\n"
      "    schedules:\n      - timezone: UTC\n", "a schedule needs `cron` or `interval`"),
     ("deployments:\n  - name: x\n    entrypoint: flows/pipeline.py:lm_pipeline\n"
      "    schedules:\n      - '0 3 * * *'\n",
      "deployment 'x': a schedule is a mapping with `cron` or `interval`, not '0 3 * * *'"),
     ("deployments:\n  - name: x\n    entrypoint: flows/pipeline.py:lm_pipeline\n"
      "    schedules:\n      cron: '0 3 * * *'\n",
      "deployment 'x': `schedules` is a list of schedules, not {'cron': '0 3 * * *'}"),
     ("deployments:\n  - name: 2024\n    entrypoint: flows/pipeline.py:lm_pipeline\n",
      "deployment '2024': `name` is text (quote it), not 2024"),
     ("deployments:\n  - name: x\n    entrypoint: 5\n",
      "deployment 'x': `entrypoint` is text (quote it), not 5"),
     ("deployments:\n  - name: x\n    entrypoint: flows/pipeline.py:lm_pipeline\n"
      "    schedules:\n      - cron: 5\n", "deployment 'x': a schedule's `cron` is text, not 5"),
     ("deployments:\n  - name: x\n    entrypoint: flows/pipeline.py:lm_pipeline\n"
      "    schedules:\n      - cron: every night\n",
      "deployment 'x': Invalid cron string: \"every night\""),
     ("deployments:\n  - name: x\n    entrypoint: flows/pipeline.py:lm_pipeline\n"
      "    schedules:\n      - interval: daily\n",
      "deployment 'x': interval: Input should be a valid timedelta"),
     ("deployments:\n  - name: x\n    entrypoint: flows/pipeline.py:lm_pipeline\n"
      "    parameters: [1]\n", "deployment 'x': parameters: Input should be a valid dictionary")],
)  # fmt: skip
def test_a_prefect_yaml_serve_cannot_use_is_one_error_naming_the_deployment(tmp_path, written,
                                                                           said):  # fmt: skip
    path = tmp_path / "prefect.yaml"
    path.write_text(written)
    with pytest.raises(ServeError, match=re.escape(said)):
        runner_deployments(path)


def test_a_serve_s_record_is_found_whatever_the_url_s_last_slash_and_a_damaged_one_skipped(
    tmp_path,
):
    from flows.serve import live_serving, record_serving

    workspace = Workspace(tmp_path)
    record_serving(workspace, "http://127.0.0.1:5/api/")
    (workspace.prefect_home / "serving" / "damaged.json").write_bytes(b"\xff{")
    assert live_serving(workspace, "http://127.0.0.1:5/api") == [os.getpid()]


@pytest.mark.parametrize(
    "written",
    [
        "[1]",
        '{"api_url": "U"}',
        '{"pid": 0, "api_url": "U"}',
        '{"pid": "1", "api_url": "U"}',
        '{"pid": 1, "host": 5}',
    ],
)
def test_a_serve_s_record_edited_out_of_shape_is_no_record_not_a_traceback(tmp_path, written):
    """`lmforge server stop` raised AttributeError or KeyError on these, and on pid 0 (this
    process's own group, alive) refused for ever to stop the server."""
    from flows.serve import live_serving
    from storage.processes import this_host

    workspace = Workspace(tmp_path)
    serving = workspace.prefect_home / "serving"
    serving.mkdir(parents=True)
    record = json.loads(written)
    if isinstance(record, dict):
        record.setdefault("host", this_host())
    (serving / "edited.json").write_text(json.dumps(record).replace('"U"', '"http://h/api"'))
    assert live_serving(workspace, "http://h/api") == []


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


def _stop_serving(serve: subprocess.Popen) -> str:
    """Ctrl-C to `lmforge serve`, as a user stops it (SIGKILL to its group if it hangs); what it
    printed."""
    serve.send_signal(signal.SIGINT)
    try:
        output, _ = serve.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(serve.pid, signal.SIGKILL)
        output, _ = serve.communicate()
    return output


@pytest.mark.slow
def test_lmforge_serve_runs_a_triggered_deployment_and_records_it(workspace, tmp_path):
    from prefect.deployments import run_deployment

    readme = readme_sections(tmp_path / "readme")
    config = write_config(tmp_path / "c.toml", [{"path": str(readme)}])
    environment = dict(os.environ, PREFECT_RUNNER_POLL_FREQUENCY="1")
    serve = subprocess.Popen(
        lmforge_command("serve"), cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_deployment("lm-pipeline/default", serve)
        # Relative to the checkout, where a worker's runs start (prefect.yaml's pull step): it
        # was read from the folder serve was started in.
        relative = os.path.relpath(config, PREFECT_YAML.parent)
        flow_run = run_deployment(
            "lm-pipeline/default", parameters={"config": relative}, timeout=240, poll_interval=1
        )
    finally:
        output = _stop_serving(serve)
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{output}"
    _, rows = RunRegistry(workspace.registry_path).query(
        "SELECT status, deployment, corpus_digest IS NOT NULL FROM runs WHERE flow_run_id = ?",
        [str(flow_run.id)],
    )
    assert rows == [("completed", "lm-pipeline/default", True)]  # was "default": which flow?


@pytest.mark.slow
def test_serve_on_a_temporary_server_runs_a_triggered_deployment(tmp_path):
    """Under LMFORGE_PREFECT_SERVER=ephemeral every run serve started began a temporary server
    of its own on the workspace's database, which knew nothing of the concurrency slot serve
    leased for it: each was cancelled ("slot lost during provisioning"), none recorded."""
    import re

    home = tmp_path / "home"
    config = write_config(tmp_path / "c.toml", [{"path": str(readme_sections(tmp_path / "r"))}])
    unset = ("PREFECT_API_URL", "PREFECT_HOME")  # the test session's server and folder
    environment = {key: value for key, value in os.environ.items() if key not in unset}
    environment |= {"LMFORGE_HOME": str(home), "LMFORGE_PREFECT_SERVER": "ephemeral",
                    "PREFECT_RUNNER_POLL_FREQUENCY": "1"}  # fmt: skip
    serve = subprocess.Popen(
        lmforge_command("serve"), cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    said: list[str] = []
    try:
        for line in serve.stdout:  # its first line names the temporary server
            said.append(line)
            if line.startswith("serving "):
                break
        url = re.search(r"temporary Prefect server at (\S+)", "".join(said))
        assert url, "".join(said)
        trigger = [str(Path(sys.executable).with_name("prefect")), "deployment", "run",
                   "lm-pipeline/default", "-p", f"config={config}", "--watch",
                   "--watch-timeout", "240"]  # fmt: skip
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        while True:  # until serve has registered the deployment
            ran = subprocess.run(trigger, env=environment | {"PREFECT_API_URL": url[1]},
                                 capture_output=True, text=True, timeout=300)  # fmt: skip
            if "not found" not in ran.stdout + ran.stderr or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        output = _stop_serving(serve)
    assert ran.returncode == 0, f"{ran.stdout}{ran.stderr}\n{''.join(said)}{output}"
    _, rows = RunRegistry(home / "registry.duckdb").query("SELECT status, deployment FROM runs")
    assert rows == [("completed", "lm-pipeline/default")], output


@task(name="slot-probe", cache_policy=NO_CACHE, persist_result=False)
def slot_probe_task() -> Descriptor:
    return Descriptor("probe", "probe-key", "probe", "probe-digest")


@contextlib.contextmanager
def training_limit():
    """The shared training limit on the test session's server, for one test."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        with contextlib.suppress(Exception):
            client.delete_concurrency_limit_by_tag(TRAINING_TAG)
        try:
            assert ensure_training_limit()  # created
            assert not ensure_training_limit()  # found, kept
            assert client.read_concurrency_limit_by_tag(TRAINING_TAG).concurrency_limit == 1
            yield
        finally:
            client.delete_concurrency_limit_by_tag(TRAINING_TAG)


def test_a_training_waits_while_another_run_holds_the_training_slot(tmp_path):
    from prefect.concurrency.sync import concurrency

    finished = threading.Event()

    def train_elsewhere():
        store = ArtifactStore(tmp_path / "probe", tmp_path)
        run = RunContext("probe", Workspace(tmp_path), RunRegistry(tmp_path / "registry.duckdb"),
                         MetricsLog(tmp_path / "metrics.jsonl"),
                         StageJournal(tmp_path / "stages.jsonl"))  # fmt: skip
        run_stage(run, slot_probe_task, "probe-key", store, concurrency_tag=TRAINING_TAG)
        finished.set()

    with training_limit():
        with concurrency(f"tag:{TRAINING_TAG}", occupy=1):  # another deployment trains
            waiting = threading.Thread(target=train_elsewhere, daemon=True)
            waiting.start()
            assert not finished.wait(3), "the second training did not wait for the slot"
        assert finished.wait(90), "the second training did not start once the slot was free"


def test_only_a_training_with_work_to_do_takes_a_training_slot(workspace, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    lines = "".join(json.dumps({"text": prose(seed, 60)}) + "\n" for seed in range(30))
    (tmp_path / "texts.jsonl").write_text(lines)
    config = write_config(tmp_path / "c.toml", [{"path": str(tmp_path / "texts.jsonl")}])
    overrides = ['model.kind="bigram-count"', "split.val=0.3"]
    registry = RunRegistry(workspace.registry_path)

    def train_tags(summary: dict) -> list[str]:
        _, [(flow_run_id,)] = registry.query(
            "SELECT flow_run_id FROM runs WHERE run_id = ?", [summary["run_id"]]
        )
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        [train] = [run for run in task_runs if run.name == "train"]
        return train.tags

    trained = lm_pipeline(config=str(config), overrides=overrides)  # no limit: no wait
    cached = lm_pipeline(config=str(config), overrides=overrides)
    assert [s["cached"] for s in cached["stages"] if s["stage"] == "train"] == [True]
    assert TRAINING_TAG in train_tags(trained)
    assert TRAINING_TAG not in train_tags(cached)


def test_a_serve_limit_below_one_is_an_error_before_anything_starts(tmp_path, monkeypatch):
    """A negative --limit was a RuntimeError traceback once the deployments were served; 0 served
    for ever and ran nothing."""
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    for limit in ("-1", "0"):
        result = CliRunner().invoke(app, ["serve", "--limit", limit])
        assert result.exit_code == 1, result.output
        assert f"--limit {limit}: must be at least 1" in result.stderr
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("failing", ["runner_deployments", "ensure_training_limit"])
def test_serve_that_cannot_start_serving_is_one_error_line(tmp_path, monkeypatch, failing):
    """A prefect.yaml serve cannot use, or a server refusing the training limit: one line
    naming it, exit 1, never a traceback, and nothing served."""
    import httpx
    from typer.testing import CliRunner

    import flows.serve
    from flows.cli import app

    def fail(*args):
        if failing == "runner_deployments":
            raise ServeError("prefect.yaml: deployment 'x': needs `name` and `entrypoint`")
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(flows.serve, failing, fail)
    monkeypatch.setattr("prefect.serve", lambda *a, **k: pytest.fail("served"))
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    said = CliRunner().invoke(app, ["serve"])
    assert said.exit_code == 1, said.output
    expected = ("needs `name` and `entrypoint`" if failing == "runner_deployments"
                else "cannot create the training concurrency limit: refused")  # fmt: skip
    assert expected in said.stderr and "Traceback" not in said.output
