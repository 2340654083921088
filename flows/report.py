"""`lmforge report`: write a run's report (or a comparison of runs) as a self-contained folder,
`report.html` with its PNGs beside it, under `$LMFORGE_HOME/reports/` by default.

The folder is built under a `*.partial-*` name and renamed into place, so a reader (a browser,
a web server publishing `reports/`) sees the previous report or the new one, never half of
one. Reports read the registry only; they can be made while a pipeline runs.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
import uuid
from pathlib import Path

from lm.report_render import RenderedReport, render_comparison, render_run_report
from storage.registry import RunRegistry
from storage.report_data import gather_run_report
from storage.workspace import Workspace

REPORT_FILE = "report.html"


class ReportError(ValueError):
    """The report cannot be written as asked; the message says why."""


def write_report_folder(rendered: RenderedReport, folder: Path) -> Path:
    """Write `rendered` as `folder/report.html` plus its images, replacing any previous report
    there in one rename; returns the HTML file's path. A folder that holds anything else is
    refused: replacing it would delete what is in it (`--out .`, `--out ~`, the workspace)."""
    if folder.exists() and not folder.is_dir():
        raise ReportError(f"{folder}: exists and is not a folder; pass another --out")
    if folder.is_dir():
        entries = list(folder.iterdir())
        # PNGs are a report's only where its page shows them: a folder of screenshots is not a
        # report, and a photo beside a page was deleted with the folder.
        page = folder / REPORT_FILE
        images = _images_shown(page) if page.is_file() and not page.is_symlink() else set()
        others = sorted(entry.name for entry in entries if not _written_by_reports(entry, images))
        if others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if others[3:] else "")
            raise ReportError(
                f"{folder}: holds files that are not a report's ({shown}); writing the report "
                "replaces the folder whole, so pass --out a new or empty folder (or a report's)"
            )
    nonce = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = folder.with_name(f"{folder.name}.partial-{nonce}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        try:
            for name, data in rendered.images.items():
                (staging / name).write_bytes(data)
            (staging / REPORT_FILE).write_text(rendered.html, encoding="utf-8")
            previous = None
            if folder.exists():
                previous = folder.with_name(f"{folder.name}.partial-old-{nonce}")
                os.rename(folder, previous)
            os.rename(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except OSError as error:  # a read-only workspace, a full disk
        raise ReportError(
            f"{folder}: cannot write the report ({error.strerror}: {error.filename}); "
            "pass --out to write it elsewhere"
        ) from error
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    return folder / REPORT_FILE


def _written_by_reports(entry: Path, shown: set[str]) -> bool:
    """What a report folder holds: the page and the images it shows, nothing else, no
    subfolder."""
    return (
        entry.is_file()
        and not entry.is_symlink()
        and (entry.name == REPORT_FILE or (entry.suffix == ".png" and entry.name in shown))
    )


def _images_shown(page: Path) -> set[str]:
    """The images a report page shows (`<img src="NAME">`); none from a page not read."""
    try:
        text = page.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    return {html.unescape(name) for name in re.findall(r'<img src="([^"/]+)"', text)}


def _output_folder(out: Path | None, default: Path) -> Path:
    """`--out` names the report's folder, never the page alone: the page and its PNGs move
    together, and the folder is what is renamed into place. Never the folder one is in or
    one above it (`--out .`, or the report's own folder, from inside it): renamed away from
    under the shell that is in it, it left that shell in a folder that no longer existed."""
    if out is not None and out.suffix.lower() in (".html", ".htm"):
        raise ReportError(
            f"--out {out}: name a folder; report.html and its PNGs are written inside it"
        )
    folder = (default if out is None else out.expanduser()).resolve()
    try:
        here = Path.cwd()
    except OSError:  # a working folder since deleted is above nothing
        return folder
    if folder == here or folder in here.parents:
        where = "the folder you are in" if folder == here else "above the folder you are in"
        if out is None:
            raise ReportError(
                f"{folder}: the report's folder is {where}, and writing the report replaces it "
                "whole: run it from another folder, or pass --out"
            )
        raise ReportError(
            f"--out {out}: {where}; the report replaces its folder whole, so name a folder "
            "of its own (--out report)"
        )
    return folder


def build_run_report(run_prefix: str, out: Path | None = None) -> Path:
    """Gather, render and write one run's report; returns the path of its `report.html`."""
    workspace = Workspace.from_env()
    registry = RunRegistry(workspace.registry_path)
    report = gather_run_report(registry, workspace, run_prefix)
    folder = _output_folder(out, workspace.root / "reports" / report.run_id)
    return write_report_folder(render_run_report(report), folder)


def build_comparison_report(run_prefixes: list[str], out: Path | None = None) -> Path:
    """Gather several runs and write their comparison; returns the `report.html` path."""
    if len(run_prefixes) < 2:
        raise ReportError("--compare needs at least two run ids")
    workspace = Workspace.from_env()
    registry = RunRegistry(workspace.registry_path)
    reports = [gather_run_report(registry, workspace, prefix) for prefix in run_prefixes]
    ids = [r.run_id for r in reports]
    if len(set(ids)) != len(ids):
        raise ReportError(f"--compare names the same run twice: {', '.join(ids)}")
    # The same runs in another order are the same comparison: one folder, the newest page.
    name = "compare-" + hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:12]
    folder = _output_folder(out, workspace.root / "reports" / name)
    return write_report_folder(render_comparison(reports), folder)
