"""`lmforge prune`: interrupted trainings and abandoned builds are found and removed; what a live
process uses is neither listed nor removed."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from storage.artifacts import ArtifactStore, staging_name
from storage.prune import find_leftovers, remove_leftover
from storage.workspace import Workspace

# Imported before any test: Prefect sets up logging as it loads, taking caplog's handler away.
from tasks.train import _say_other_interrupted_trainings


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _folder(path, size: int = 1000):
    path.mkdir(parents=True)
    (path / "model.pt").write_bytes(b"\0" * size)
    return path


def test_leftovers_are_found_and_removed_but_live_work_is_kept(tmp_path):
    workspace = Workspace(tmp_path).ensure()
    train = workspace.artifacts / "train"
    interrupted = _folder(train / "train-old.work", 5000)
    (interrupted / "lock").touch()
    never_locked = _folder(train / "train-early.work")  # killed before it made its lock
    failed_at_start = train / "train-misfit.work"  # its init_from did not fit: only the lock
    failed_at_start.mkdir()
    (failed_at_start / "lock").touch()
    training_now = _folder(train / "train-live.work")
    abandoned = _folder(workspace.corpus / f"clean-k.partial-{_dead_pid()}-abcd1234")
    building_now = _folder(workspace.artifacts / "encode" / f"encode-k.partial-{os.getpid()}-ab")
    # Another machine of a shared workspace builds this: its pid means nothing here (it was
    # deleted as abandoned). This machine's own dead build, named as builds are now, is not.
    elsewhere = _folder(workspace.artifacts / "encode" / f"encode-j.partial-{_dead_pid()}-ab-0ther")
    here = _folder(workspace.corpus / staging_name("clean-j").replace(
        f".partial-{os.getpid()}-", f".partial-{_dead_pid()}-"))  # fmt: skip
    published = _folder(train / "train-done")
    with open(training_now / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the train stage holds it while it trains
        leftovers = find_leftovers(workspace)
        assert {leftover.path: leftover.kind for leftover in leftovers} == {
            interrupted: "interrupted training",
            never_locked: "interrupted training",
            failed_at_start: "training that never started",
            abandoned: "abandoned build",
            here: "abandoned build",
        }
        assert next(x.size for x in leftovers if x.path == interrupted) == 5000
        assert all(remove_leftover(leftover) for leftover in leftovers)
        assert find_leftovers(workspace) == []
    assert not interrupted.exists() and not never_locked.exists() and not abandoned.exists()
    assert not failed_at_start.exists()
    assert training_now.is_dir() and building_now.is_dir() and published.is_dir()
    assert elsewhere.is_dir() and not here.exists()
    ArtifactStore(workspace.artifacts / "encode", workspace.root).remove_abandoned_builds()
    assert elsewhere.is_dir()  # the next build here leaves it too
    assert [leftover.path for leftover in find_leftovers(workspace)] == [training_now]  # free now


def test_a_training_that_takes_its_folder_up_again_is_not_removed(tmp_path):
    workspace = Workspace(tmp_path).ensure()
    work = _folder(workspace.artifacts / "train" / "train-k.work")
    (work / "lock").touch()
    [leftover] = find_leftovers(workspace)
    with open(work / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a rerun of the same key resumed it meanwhile
        assert remove_leftover(leftover) is False
    assert (work / "model.pt").is_file()


def test_links_that_look_like_leftovers_are_not_listed_and_their_targets_survive(tmp_path):
    # A link named as a work folder crashed `prune --yes` (rmtree refuses links) and was left
    # renamed; it is not a folder lmforge made, so it is not prune's to remove.
    workspace = Workspace(tmp_path / "ws").ensure()
    precious = _folder(tmp_path / "precious")
    (precious / "lock").touch()
    (workspace.artifacts / "train").mkdir()
    (workspace.artifacts / "train" / "train-k.work").symlink_to(precious)
    (workspace.corpus / f"clean-k.partial-{_dead_pid()}-ab").symlink_to(precious)
    assert find_leftovers(workspace) == []
    assert (precious / "model.pt").is_file()


def test_a_prune_cut_short_is_finished_by_the_next(tmp_path):
    workspace = Workspace(tmp_path).ensure()
    half = _folder(workspace.artifacts / "train" / "train-k.work.pruned-123")
    [leftover] = find_leftovers(workspace)
    assert leftover.path == half and leftover.kind == "abandoned build"
    assert remove_leftover(leftover) and not half.exists()


def test_lmforge_prune_lists_then_removes_the_training_a_killed_run_left(
    workspace, tmp_path, monkeypatch
):
    import signal
    import time

    from tests.conftest import REPO, lmforge_command, run_cli
    from tests.helpers import prose, registry_held_open, write_config

    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(10):
        (texts / f"doc{index:02d}.txt").write_text(prose(index, 150))
    config = write_config(tmp_path / "c.toml", [{"path": str(texts)}])
    settings = ['model.kind="gpt"', "model.block_size=16", "model.n_layer=1", "model.n_head=2",
                "model.n_embd=16", "train.max_steps=100000", "train.checkpoint_every=5",
                "train.micro_batch=4", "train.global_batch=4", "split.val=0.3"]  # fmt: skip
    process = subprocess.Popen(
        lmforge_command("run", str(config), *(f"--set={s}" for s in settings)), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not list((workspace.artifacts / "train").glob("*.work/step-*")):
        assert process.poll() is None, "the run ended before training checkpointed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    [work] = (workspace.artifacts / "train").glob("*.work")

    listed = " ".join(run_cli("prune").stdout.split())
    assert "interrupted training" in listed and work.name in listed and work.is_dir()
    assert "lmforge prune --yes removes them" in listed.replace("`", "")
    # A registry another process holds open: the crashed run cannot be recorded, so its
    # training's curve (the work folder) is kept for the next prune; it was removed, for good.
    with registry_held_open(workspace.registry_path), monkeypatch.context() as patched:
        patched.setenv("LMFORGE_REGISTRY_WAIT_S", "1")
        held = " ".join(run_cli("prune", "--yes").stdout.split())
    assert "crashed runs not recorded first" in held and "kept 1 interrupted trainings" in held
    assert "nothing else to prune" in held and "nothing to prune" not in held
    assert work.is_dir()
    removed = " ".join(run_cli("prune", "--yes").stdout.split())
    assert "removed 1 folder," in removed and not work.exists()
    # The run was recorded as crashed first, from the work folder's curve: recorded by the
    # next run instead, it had lost its training's metrics and lasted 0.2 s.
    from storage.registry import RunRegistry

    registry = RunRegistry(workspace.registry_path)
    _, [(status, seconds)] = registry.query("SELECT status, epoch(ended_at - started_at) FROM runs")
    _, [(losses,)] = registry.query("SELECT count(*) FROM metrics WHERE key = 'train/loss'")
    assert status == "crashed" and seconds > 0.5 and losses >= 5
    assert "nothing to prune" in run_cli("prune").stdout


def test_prune_yes_on_a_workspace_it_cannot_write_is_one_error_line(tmp_path):
    # A read-only workspace gave a traceback (the registry's lock file); `runs` made a file
    # stands in for one here, as tests run as root, whom no mode bit stops.
    from tests.conftest import run_cli

    home = tmp_path / "home"
    (home / "artifacts" / "train" / "train-k.work").mkdir(parents=True)
    (home / "runs").write_text("not a folder")
    listed = run_cli("prune", home=home)
    assert "train-k.work" in listed.stdout
    refused = run_cli("prune", "--yes", home=home, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(f"error: LMFORGE_HOME {home} is not writable")
    assert (home / "artifacts" / "train" / "train-k.work").is_dir()


def test_a_training_starting_afresh_names_the_interrupted_ones_it_cannot_resume(tmp_path, caplog):
    # Killed at step 100, rerun with another `train.max_steps`: "started afresh", no more.
    workspace = Workspace(tmp_path)
    trains = tmp_path / "artifacts" / "train"
    (trains / "train-old.work" / "step-00000100").mkdir(parents=True)
    new = trains / "train-new.work"
    new.mkdir()
    with caplog.at_level(logging.INFO, logger="lm.train"):
        _say_other_interrupted_trainings(workspace, new)
    assert "train: 1 interrupted training(s) of other settings, data or code are in the " in (
        caplog.text
    )
    caplog.clear()
    (trains / "train-old.work").rename(trains / "train-gone")
    with caplog.at_level(logging.INFO, logger="lm.train"):
        _say_other_interrupted_trainings(workspace, new)
    assert "interrupted" not in caplog.text


def test_prune_keeps_an_interrupted_training_a_recorded_model_continued_from(tmp_path):
    # Its checkpoint was a recorded run's `train.init_from`: pruning it left that run impossible
    # to repeat. Another interrupted training, continued from by no model, is removed.
    import json

    from storage.registry import RunRegistry
    from tests.conftest import run_cli

    workspace = Workspace(tmp_path / "home").ensure()
    train = workspace.artifacts / "train"
    started_from = _folder(train / "train-a.work" / "step-000010")
    forgotten = _folder(train / "train-b.work")
    registry = RunRegistry(workspace.registry_path)
    with registry.writing() as connection:
        for run_id, init_from in (("20261206-092350-8873b6", "artifacts/train/train-a.work/"
                                   "step-000010"), ("20261206-092351-0000aa", None)):  # fmt: skip
            config = {"train": {"init_from": init_from}}
            connection.execute(
                "INSERT INTO models (run_id, label, kind, config, created_at) "
                "VALUES (?, 'gpt', 'gpt', ?, now())", [run_id, json.dumps(config)],
            )  # fmt: skip
    listed = " ".join(run_cli("prune", home=workspace.root).stdout.split())
    said = f"kept {started_from.parent}: model gpt of run 20261206-092350-8873b6 continued from"
    assert said in listed  # the whole id: its first 8 characters were the day's date
    assert "train-b.work" in listed
    removed = " ".join(run_cli("prune", "--yes", home=workspace.root).stdout.split())
    assert "removed 1 folder," in removed
    assert started_from.is_dir() and not forgotten.exists()


def test_prune_keeps_the_interrupted_trainings_a_live_run_or_a_model_continues_from(tmp_path):
    # A live run records its models at its end, and loads its `train.init_from` once its data
    # stages have run: `prune --yes` meanwhile removed the checkpoint, and the train stage
    # failed. A dead run's is removed. A model's work folder named whole, by its path before
    # the workspace moved, is the model's too.
    import json
    from datetime import UTC, datetime

    from storage.processes import this_host
    from storage.registry import RunRegistry
    from tests.conftest import cli_in_process

    home, moved_from = tmp_path / "home", tmp_path / "home-before"
    workspace = Workspace(home).ensure()
    train = workspace.artifacts / "train"
    ladder, whole, dead = (_folder(train / f"train-{n}.work" / "step-000010").parent
                           for n in ("ladder", "whole", "dead"))  # fmt: skip
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    registry = RunRegistry(workspace.registry_path)
    try:
        for run_id, pid, config in (
            ("20261207-100000-aaaaaa", live.pid, {"models": [
                {"train": {"init_from": "artifacts/train/train-ladder.work/step-000010"}}]}),
            ("20261207-100001-bbbbbb", _dead_pid(), {"train": {"init_from": str(dead)}}),
        ):  # fmt: skip
            registry.start_run({"run_id": run_id, "status": "running", "pid": pid,
                                "hostname": this_host(), "started_at": datetime.now(UTC),
                                "config": json.dumps(config)})  # fmt: skip
        with registry.writing() as connection:
            connection.execute(
                "INSERT INTO models (run_id, label, kind, config, created_at) VALUES "
                "('20261206-092350-8873b6', 'gpt', 'gpt', ?, now())",
                [json.dumps({"train": {"init_from": f"{moved_from}/{whole.relative_to(home)}"}})],
            )
        listed = " ".join(cli_in_process("prune", home=workspace.root).stdout.split())
        said = " ".join(cli_in_process("prune", "--yes", home=workspace.root).stdout.split())
    finally:
        live.kill()
        live.wait()
    assert f"kept {ladder}: run 20261207-100000-aaaaaa, running now, continues from" in said
    assert f"kept {whole}: model gpt of run 20261206-092350-8873b6 continued from" in said
    assert f"kept {dead}" not in listed and "train-dead.work" in listed  # its process is gone
    assert "removed 1 folder," in said
    assert ladder.is_dir() and whole.is_dir() and not dead.exists()


def test_prune_keeps_the_interrupted_training_a_live_ablation_s_variant_continues_from(
    tmp_path,
):
    # An ablation variant's `train` may name its own `init_from`: the run's config holds it
    # under `ablation.variants`, and it was removed while the run built its data.
    import json
    from datetime import UTC, datetime

    from storage.processes import this_host
    from storage.registry import RunRegistry
    from tests.conftest import cli_in_process

    workspace = Workspace(tmp_path / "home").ensure()
    work = _folder(workspace.artifacts / "train" / "train-arm.work" / "step-000010").parent
    config = {"train": {}, "ablation": {"variants": [
        {"name": "continued", "model": {},
         "train": {"init_from": "artifacts/train/train-arm.work/step-000010"}}]}}  # fmt: skip
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        row = {"run_id": "20261207-100000-aaaaaa", "status": "running", "pid": live.pid,
               "hostname": this_host(), "started_at": datetime.now(UTC),
               "config": json.dumps(config)}  # fmt: skip
        RunRegistry(workspace.registry_path).start_run(row)
        said = " ".join(cli_in_process("prune", "--yes", home=workspace.root).stdout.split())
    finally:
        live.kill()
        live.wait()
    assert f"kept {work}: run 20261207-100000-aaaaaa, running now, continues from" in said
    assert work.is_dir()


def test_prune_keeps_what_a_run_of_another_machine_or_without_a_pid_or_an_unread_registry_may_use(
    tmp_path, monkeypatch
):
    """A run recorded running on another machine may live: its checkpoint is kept, and the
    message says where to record it if it crashed (it said "running now", and nothing else). A
    run recorded without its pid is live, as `close_abandoned_runs` counts it. A registry that
    cannot be read says nothing of who continues from what: every interrupted training is kept
    (`--yes` removed them all)."""
    import json
    from datetime import UTC, datetime

    from storage.processes import this_host
    from storage.registry import RegistryError, RunRegistry
    from tests.conftest import cli_in_process

    workspace = Workspace(tmp_path / "home").ensure()
    train = workspace.artifacts / "train"
    there, unnumbered, unused = (_folder(train / f"train-{n}.work" / "step-000010").parent
                                 for n in ("there", "unnumbered", "unused"))  # fmt: skip
    registry = RunRegistry(workspace.registry_path)
    for run_id, host, pid, name in (
        ("20261207-100000-aaaaaa", "gpu-box-7", 12345, "there"),
        ("20261207-100001-bbbbbb", this_host(), None, "unnumbered"),
    ):
        config = {"train": {"init_from": f"artifacts/train/train-{name}.work/step-000010"}}
        registry.start_run(
            {
                "run_id": run_id,
                "status": "running",
                "pid": pid,
                "hostname": host,
                "started_at": datetime.now(UTC),
                "config": json.dumps(config),
            }
        )
    listed = " ".join(cli_in_process("prune", home=workspace.root).stdout.split())
    assert (
        f"kept {there}: run 20261207-100000-aaaaaa, recorded running on gpu-box-7, continues "
        "from its checkpoint (train.init_from); if it crashed there, `lmforge prune` on "
        "gpu-box-7 records it"
    ) in listed
    assert f"kept {unnumbered}: run 20261207-100001-bbbbbb, running now" in listed
    assert f"kept {unused}" not in listed and "train-unused.work" in listed

    def unreadable(*args, **kwargs):
        raise RegistryError("registry.duckdb: held open by another process")

    monkeypatch.setattr(RunRegistry, "query", unreadable)
    said = " ".join(cli_in_process("prune", "--yes", home=workspace.root).stdout.split())
    assert "the models and runs that continue from a checkpoint are not known" in said
    for folder in (there, unnumbered, unused):
        assert f"kept {folder}: the registry could not say whether a run continues" in said
        assert folder.is_dir()


def test_prune_yes_names_what_a_process_took_up_meanwhile_and_counts_only_what_it_freed(
    tmp_path, monkeypatch
):
    import flows.prune_cli
    from tests.conftest import cli_in_process

    workspace = Workspace(tmp_path / "home").ensure()
    taken = _folder(workspace.artifacts / "train" / "train-taken.work", 5000)
    freed = _folder(workspace.artifacts / "train" / "train-freed.work", 2000)
    monkeypatch.setattr(flows.prune_cli, "remove_leftover", lambda leftover: (
        leftover.path != taken and remove_leftover(leftover)))  # fmt: skip
    said = " ".join(cli_in_process("prune", "--yes", home=workspace.root).stdout.split())
    assert f"kept {taken}: a process took it up meanwhile" in said
    assert f"kept {freed}" not in said and "removed 1 folder, 2.0 kB" in said
    assert taken.is_dir() and not freed.exists()


def test_prune_yes_in_a_workspace_without_a_registry_removes_an_interrupted_training(tmp_path):
    # No registry, no crashed run whose record needs the curve: nothing to keep it for.
    from tests.conftest import cli_in_process

    workspace = Workspace(tmp_path / "home").ensure()
    work = _folder(workspace.artifacts / "train" / "train-k.work")
    listed = " ".join(cli_in_process("prune", home=workspace.root).stdout.split())
    assert "A rerun with an interrupted training's settings would no longer resume it" in listed
    said = " ".join(cli_in_process("prune", "--yes", home=workspace.root).stdout.split())
    assert "removed 1 folder," in said and "kept" not in said and not work.exists()
    assert not workspace.registry_path.exists()  # and none made by pruning


@pytest.mark.parametrize("key", ["", ".", "..", "a/b"])
def test_a_key_that_names_no_folder_of_its_own_is_refused_before_the_store_is_touched(
    tmp_path, key
):
    # build("") published its staging folder as the store itself: the store was moved aside
    # (to a name a later sweep deletes) and every artifact in it was lost to lookups.
    store = ArtifactStore(tmp_path / "artifacts" / "tokenizer", tmp_path)
    with store.build("abc123") as staging:
        (staging / "m").write_text("x")
    refused = f"artifact key {re.escape(repr(key))} is not a folder"
    with pytest.raises(ValueError, match=refused), store.build(key) as staging:
        (staging / "x").write_text("y")
    assert store.is_complete("abc123")
    assert [path.name for path in store.base.parent.iterdir()] == ["tokenizer"]


def test_an_output_that_cannot_be_written_is_said_naming_it_and_inputs_errors_pass(tmp_path):
    # A full disk in ingest or clean: pyarrow's "Error writing bytes to file" as a traceback,
    # after two retries, naming no folder. Here a real file-size limit (`ulimit -f`).
    script = f"""
import resource, signal
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from storage.artifacts import ArtifactStore, OutputUnwritable
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
store = ArtifactStore(Path({str(tmp_path)!r}) / "artifacts" / "clean", Path({str(tmp_path)!r}))
try:
    with store.build("clean-k") as staging:
        texts = [f"document {{i}} " * 20 for i in range(5000)]
        pq.write_table(pa.table({{"text": texts}}), staging / "documents.parquet")
except OutputUnwritable as error:
    print("SAID", error)
"""
    repository = Path(__file__).resolve().parent.parent
    said = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=repository, check=True).stdout  # fmt: skip
    assert said.startswith(f"SAID {tmp_path / 'artifacts' / 'clean' / 'clean-k'}: writing the")
    assert "is the disk full, or the folder not writable?" in said and "File too large" in said
    assert list((tmp_path / "artifacts" / "clean").iterdir()) == []  # its staging folder gone
    store = ArtifactStore(tmp_path / "artifacts" / "ingest", tmp_path)
    with pytest.raises(PermissionError), store.build("ingest-k"):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/unreadable.txt")


def test_a_store_folder_that_cannot_be_made_is_said_naming_the_output(tmp_path):
    # The staging folder was made before the errors were caught: a traceback from mkdir.
    from storage.artifacts import OutputUnwritable

    (tmp_path / "artifacts").write_text("a file where the stores' folder should be")
    store = ArtifactStore(tmp_path / "artifacts" / "ingest", tmp_path)
    said = r"artifacts/ingest/ingest-k: cannot make its staging folder"
    with pytest.raises(OutputUnwritable, match=said), store.build("ingest-k"):
        pass


def test_leftovers_are_listed_oldest_first_by_their_newest_file_and_sized_by_their_files(
    tmp_path,
):
    """A folder is as old as the newest file in it (a checkpoint written last night in a
    folder made last month), and its size is its files' bytes, not its folders'."""
    workspace = Workspace(tmp_path).ensure()
    train = workspace.artifacts / "train"
    recent = _folder(train / "train-a.work", 300)
    nested = _folder(recent / "step-00000010", 200)
    old = _folder(train / "train-b.work", 100)
    for path, seconds in ((old / "model.pt", 2000), (old, 2000), (recent, 1000),
                          (recent / "model.pt", 1000), (nested, 1000),
                          (nested / "model.pt", 3000)):  # fmt: skip
        os.utime(path, (seconds, seconds))
    leftovers = find_leftovers(workspace)
    assert [(x.path, x.size, x.modified) for x in leftovers] == [
        (old, 100, 2000),
        (recent, 500, 3000),
    ]


def test_a_build_whose_process_is_alive_when_it_is_removed_is_kept(tmp_path):
    from storage.prune import Leftover

    workspace = Workspace(tmp_path).ensure()
    building = _folder(workspace.corpus / staging_name("clean-k"))  # this process's
    assert remove_leftover(Leftover(building, "abandoned build", 1000, 0.0)) is False
    assert (building / "model.pt").is_file()
