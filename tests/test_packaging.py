"""An install from a wheel (`pip install .`, not editable): its packages are lm, storage, tasks
and flows, so the presets and prefect.yaml travel as data files, and the commands that name a
preset (`lmforge run`, `size`, `serve`) found none: "default: no such config file (presets: )"."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["pyproject.toml", "README.md", "prefect.yaml", "configs", "lm", "storage", "tasks",
           "flows"]  # fmt: skip


@pytest.mark.slow
def test_an_install_from_a_wheel_finds_its_presets_and_deployments_and_claims_no_commit(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in SHIPPED:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    # Built with this environment's setuptools: nothing is fetched.
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "wheel",
                    source], check=True, timeout=300)  # fmt: skip
    [wheel] = (tmp_path / "wheel").glob("lmforge-*.whl")
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it, pip uninstalled this environment's lmforge (the editable
    # install the suite runs from) before installing into the prefix.
    subprocess.run([*pip, "install", "--no-deps", "--ignore-installed", "--prefix", prefix,
                    wheel], check=True, timeout=300)  # fmt: skip
    [site_packages] = prefix.glob("lib/python3*/site-packages")
    assert not (site_packages / "configs").exists()  # not beside the packages: found as data
    (site_packages / "configs").mkdir()  # another distribution's top-level `configs` package
    (site_packages / "configs" / "__init__.py").write_text("")
    # Inside another repository (a project's `.venv/`): its commit is not lmforge's.
    subprocess.run(["git", "init", "--quiet", tmp_path], check=True)
    subprocess.run(["git", "-c", "user.name=x", "-c", "user.email=x@y", "commit", "--quiet",
                    "--allow-empty", "-m", "a project"], cwd=tmp_path, check=True)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import lm.config, flows.serve, flows.pipeline\n"
        "print(lm.config.resolve_preset(None))\n"
        "print(lm.config.resolve_preset('names'))\n"
        "print(flows.serve.PREFECT_YAML)\n"
        "print(len(flows.serve.load_deployment_specs()))\n"
        "print(flows.pipeline._git_sha())\n"
        "print(lm.config.__file__)\n"
    )

    def probed() -> list[str]:
        shown = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, capture_output=True,
                               text=True, check=True, timeout=120,
                               env={"PYTHONPATH": str(site_packages), "PATH": "/usr/bin:/bin",
                                    "HOME": str(tmp_path)})  # fmt: skip
        return shown.stdout.splitlines()

    default, names, prefect_yaml, deployments, commit, module = probed()
    assert Path(module).is_relative_to(site_packages)  # the installed copy ran, not this one
    shared = (prefix / "share" / "lmforge").resolve()
    assert Path(default) == shared / "configs" / "default.toml"
    assert Path(names) == shared / "configs" / "names.toml"
    assert Path(prefect_yaml) == shared / "prefect.yaml"
    assert int(deployments) >= 3
    assert commit == "None"
    # A repository that keeps lmforge's files (vendored in a folder): its commit pins them.
    git = ["git", "-c", "user.name=x", "-c", "user.email=x@y"]
    subprocess.run([*git, "add", site_packages], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "vendored"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert probed()[4] == head
    assert (Path(sys.prefix) / "bin" / "lmforge").exists()  # this environment's install kept
