"""The workspace folder: commands that only read leave it as they found it, and one that cannot
be written is a clear error, never a traceback.

Tests run as root, whom `chmod` does not stop; a home below a regular file cannot be created by
anyone, and a folder that will not take writes is simulated through `os.access`."""

from __future__ import annotations

import os

import pytest

from flows.prefect_server import ServerError, ensure_server
from storage.workspace import Workspace, WorkspaceError
from tests.conftest import cli_in_process, run_cli

READING_COMMANDS = [
    ("runs",),
    ("runs", "show", "abc"),
    ("sql", "SELECT 1"),
    ("corpus", "stats"),
    ("report", "abc"),
]


def said(result) -> str:
    """stderr as read, whatever the width it was wrapped at."""
    return " ".join(result.stderr.split())


@pytest.mark.parametrize("command", READING_COMMANDS, ids=" ".join)
def test_a_reading_command_creates_no_workspace(tmp_path, command):
    home = tmp_path / "never-used"
    result = cli_in_process(*command, check=False, home=home)
    assert result.returncode == 1
    assert "no registry yet; `lmforge run` creates it with the first run" in said(result)
    assert not home.exists()


@pytest.mark.parametrize("command", READING_COMMANDS, ids=" ".join)
def test_a_reading_command_in_an_impossible_home_says_there_is_no_registry(tmp_path, command):
    (tmp_path / "a-file").write_text("")
    result = cli_in_process(*command, check=False, home=tmp_path / "a-file" / "home")
    assert result.returncode == 1
    assert said(result).startswith("error: ")
    assert "no registry yet" in said(result)
    assert "Traceback" not in result.stderr and "NotADirectoryError" not in result.stderr


def test_a_run_in_a_home_that_cannot_be_created_is_one_clear_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    home = tmp_path / "a-file" / "home"
    result = run_cli("run", check=False, home=home)
    assert result.returncode == 1
    assert said(result).startswith(
        f"error: LMFORGE_HOME {home} is not writable (Not a directory: {home}/corpus)"
    )
    assert "Traceback" not in result.stderr


def test_a_workspace_whose_folders_exist_but_take_no_writes_is_refused(tmp_path, monkeypatch):
    workspace = Workspace(tmp_path / "home").ensure()
    writable = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: path != workspace.corpus and writable(path, mode)
    )
    with pytest.raises(WorkspaceError) as raised:
        workspace.ensure()
    assert str(raised.value).startswith(
        f"LMFORGE_HOME {workspace.root} is not writable (Permission denied: {workspace.corpus})"
    )


def test_a_server_lock_that_cannot_be_written_is_a_server_error(workspace, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("LMFORGE_PREFECT_SERVER", raising=False)
    lock = workspace.prefect_home / "lmforge-server.lock"
    lock.mkdir()  # opening it for writing fails, as a read-only workspace's would
    with pytest.raises(ServerError, match=f"{lock}: cannot write the server's lock file"):
        ensure_server(workspace)


def test_a_prefect_home_set_beforehand_is_kept_absolute_and_created_or_named(
    workspace, tmp_path, monkeypatch
):
    """A relative one followed a later `chdir`, and a missing one was SQLite's "unable to open
    database file" in the server's log, a start-up timeout on the terminal."""
    from storage.workspace import activate_workspace

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", "shared/prefect")
    activate_workspace()
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "shared" / "prefect")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("LMFORGE_PREFECT_SERVER", raising=False)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "file" / "prefect"))  # below a file
    with pytest.raises(ServerError, match=r"PREFECT_HOME .*/file/prefect: cannot create it"):
        ensure_server(workspace)
    # One that takes no writes (a read-only mount; root passes any mode bit, so the system's
    # refusal is made here): a temporary server died on it, said as "the machine may be busy".
    import errno

    import flows.prefect_server

    def read_only(**options):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "read-only"))
    monkeypatch.setattr(flows.prefect_server.tempfile, "TemporaryFile", read_only)
    with pytest.raises(ServerError, match=r"PREFECT_HOME .*/read-only: not writable \(Read-only"):
        ensure_server(workspace)


def test_prefect_servers_the_workspace_starts_keep_concurrency_leases_on_disk(monkeypatch):
    """Prefect keeps leases in its server's memory: after a restart of the server, a training
    slot taken before it was never given back (every later training waited for ever), and a
    deployment's run was stopped at its next lease renewal."""
    import importlib

    from storage.workspace import activate_workspace

    monkeypatch.delenv("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", raising=False)
    activate_workspace()
    module = os.environ["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"]
    assert module == "prefect.server.concurrency.lease_storage.filesystem"
    assert hasattr(importlib.import_module(module), "ConcurrencyLeaseStorage")
    monkeypatch.setenv("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "my.leases")  # one's own
    activate_workspace()
    assert os.environ["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == "my.leases"


def test_a_workspace_named_by_a_string_path_gives_paths(tmp_path):
    """A notebook names folders by strings: `Workspace(str).registry_path` was a TypeError."""
    assert Workspace(str(tmp_path)).registry_path == tmp_path / "registry.duckdb"


def test_an_output_whose_descriptor_is_changed_or_another_outputs_is_built_again(tmp_path):
    """A descriptor.json with bytes flipped was a UnicodeDecodeError traceback from the stage
    that read it; two outputs' folders swapped served the other model under this key."""
    from storage.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path / "train", tmp_path)
    for key in ("train-a", "train-b"):
        with store.build(key) as staging:
            (staging / "model.pt").write_bytes(b"weights")
            store.describe(staging, "train", key, "d" * 64, {})
    assert store.is_complete("train-a") and store.load_descriptor("train-a").key == "train-a"
    a, b, aside = store.directory("train-a"), store.directory("train-b"), tmp_path / "aside"

    def swap() -> None:
        a.rename(aside)
        b.rename(a)
        aside.rename(b)

    swap()
    assert not store.is_complete("train-a") and store.load_descriptor("train-a") is None
    swap()
    data = bytearray((a / "descriptor.json").read_bytes())
    data[10:14] = b"\xff\xfe\xfd\xfc"  # the same size: the manifest's check passes
    (a / "descriptor.json").write_bytes(bytes(data))
    assert store.load_descriptor("train-a") is None
    with store.build("train-a") as staging:  # built again: the damaged folder is replaced
        (staging / "model.pt").write_bytes(b"weights")
        store.describe(staging, "train", "train-a", "d" * 64, {})
    assert store.load_descriptor("train-a").key == "train-a"


def test_a_build_over_a_damaged_output_replaces_it_and_over_a_whole_one_keeps_it(tmp_path):
    """Two builds of one key: the second finds the first's output in place. A whole one stays
    (the same content); a damaged or unfinished one (no DONE) is replaced, never left served."""
    from storage.artifacts import DONE_MARKER, ArtifactStore

    store = ArtifactStore(tmp_path / "train", tmp_path)
    with store.build("train-a") as staging:
        (staging / "model.pt").write_bytes(b"first")
    final = store.directory("train-a")
    with store.build("train-a") as staging:  # a concurrent build's same output
        (staging / "model.pt").write_bytes(b"again")
    assert (final / "model.pt").read_bytes() == b"first"
    (final / "model.pt").write_bytes(b"firs")  # cut short since
    assert not store.is_complete("train-a")
    with store.build("train-a") as staging:
        (staging / "model.pt").write_bytes(b"third")
        store.describe(staging, "train", "train-a", "d" * 64, {})
    assert (final / "model.pt").read_bytes() == b"third"
    assert store.load_descriptor("train-a").key == "train-a"
    (final / DONE_MARKER).unlink()  # a folder never finished: no DONE
    assert store.load_descriptor("train-a") is None  # its descriptor.json is there, unfinished
    assert not store.is_complete("train-a")
    with store.build("train-a") as staging:
        (staging / "model.pt").write_bytes(b"fourth")
    assert (final / "model.pt").read_bytes() == b"fourth" and store.is_complete("train-a")
    assert sorted(p.name for p in store.base.iterdir()) == ["train-a"]


def test_a_build_that_fails_leaves_no_staging_folder_and_no_output(tmp_path):
    from storage.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path / "train", tmp_path)
    with pytest.raises(RuntimeError, match="stage failed"), store.build("train-a") as staging:
        (staging / "model.pt").write_bytes(b"half")
        raise RuntimeError("stage failed")
    assert list(store.base.iterdir()) == [] and not store.is_complete("train-a")


def test_keys_that_name_no_folder_of_their_own_are_refused(tmp_path):
    from storage.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path / "train", tmp_path)
    for key in ("", ".", "..", "a/b", "a\0b"):
        with pytest.raises(ValueError, match="is not a folder name"):
            store.directory(key)


def test_only_this_machine_s_builds_of_dead_processes_are_abandoned(tmp_path):
    """A staging name's pid is judged only on the machine that wrote it; pid 0 (or a name
    without a pid) is no process of ours."""
    from storage.artifacts import STAGING_INFIX, staging_name, staging_owner

    mine = tmp_path / staging_name("clean-k")
    assert staging_owner(mine) == os.getpid()
    tag = mine.name.rsplit("-", 1)[1]
    assert staging_owner(tmp_path / f"clean-k{STAGING_INFIX}123-ab-{tag}") == 123
    assert staging_owner(tmp_path / f"clean-k{STAGING_INFIX}123-ab-0ther") is None
    assert staging_owner(tmp_path / f"clean-k{STAGING_INFIX}123-ab") == 123  # before the tag
    assert staging_owner(tmp_path / f"clean-k{STAGING_INFIX}0-ab-{tag}") is None
    assert staging_owner(tmp_path / "clean-k") is None


def test_a_build_sweeps_the_staging_folders_of_dead_processes_only(tmp_path):
    import subprocess
    import sys

    from storage.artifacts import ArtifactStore, staging_name

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    store = ArtifactStore(tmp_path / "train", tmp_path)
    live = store.base / staging_name("train-b")  # this process builds it
    dead = store.base / staging_name("train-c").replace(
        f".partial-{os.getpid()}-", f".partial-{process.pid}-"
    )
    for folder in (live, dead):
        folder.mkdir(parents=True)
    with store.build("train-a") as staging:
        (staging / "model.pt").write_bytes(b"weights")
    assert live.is_dir() and not dead.exists()


def test_a_prefect_database_another_user_owns_is_said_before_a_server_opens_it(
    workspace, monkeypatch
):
    """SQLite makes Prefect's database 0644 whatever the umask: in a workspace a group shares,
    the second user's temporary server died on "attempt to write a readonly database" in its
    log, and the terminal said the machine may be too busy. (Root passes any mode bit, so the
    system's refusal is made here.)"""
    import flows.prefect_server

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    monkeypatch.setenv("LMFORGE_PREFECT_SERVER", "ephemeral")
    workspace.prefect_home.mkdir(parents=True, exist_ok=True)
    database = workspace.prefect_home / "prefect.db"
    database.write_bytes(b"")
    real_access = os.access
    monkeypatch.setattr(
        flows.prefect_server.os, "access",
        lambda path, mode: os.fspath(path) != str(database) and real_access(path, mode),
    )  # fmt: skip
    with pytest.raises(ServerError, match=r"prefect\.db: Prefect's database is not writable"):
        ensure_server(workspace)
