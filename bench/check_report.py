"""Open a run report in headless Chromium and check it the way a reader would see it: no console
error, no script exception, every `<img>` loaded (naturalWidth > 0); then save a screenshot.

    .venv/bin/python bench/check_report.py RUN_ID            # build the run's report, check it
    .venv/bin/python bench/check_report.py --path report.html  # check an existing report
    .venv/bin/python bench/check_report.py RUN_ID --screenshot /tmp/report.png

Needs Chromium (Debian: `apt-get install -y chromium`), which is not part of the install or CI.
The browser is driven through the DevTools protocol over a websocket (`websockets`, which
Prefect already installs), with a fresh profile and the network features that phone home off.
The screenshot is taken by Chromium's own `--screenshot`, at the page's full height. Exits 1
when a check fails, listing what failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli_args import description

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
IMAGE_STATUS = """JSON.stringify(Array.from(document.images).map(image => ({
    src: image.getAttribute("src"), complete: image.complete, width: image.naturalWidth})))"""
PAGE_HEIGHT = "Math.ceil(document.documentElement.scrollHeight)"
SETTLE_S = 0.5  # after the load event, for late console messages
WIDTH = 1280


class DevTools:
    """A minimal DevTools protocol client: one browser websocket, one attached page session."""

    def __init__(self, browser_url: str, timeout_s: float):
        from websockets.sync.client import connect

        self.timeout_s = timeout_s
        self.socket = connect(browser_url, max_size=None, open_timeout=timeout_s)
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        message = {"id": message_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})

    def _receive(self, deadline: float) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer from Chromium's DevTools in time")
        message = json.loads(self.socket.recv(timeout=remaining))
        if "method" in message:
            self.events.append(message)
        return message

    def wait_for(self, method: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not any(event["method"] == method for event in self.events):
            self._receive(deadline)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self._receive(deadline)
        except TimeoutError:
            return

    def evaluate(self, expression: str) -> object:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def close(self) -> None:
        self.socket.close()


def start_chromium(chromium: str, profile: Path, timeout_s: float) -> tuple[subprocess.Popen, str]:
    """Start headless Chromium on a free debugging port; return it and its browser websocket."""
    process = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Read on a thread: a Chromium that starts and prints nothing held a blocking readline past
    # the timeout, for as long as it ran.
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr],
                     daemon=True).start()  # fmt: skip
    deadline = time.monotonic() + timeout_s
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=min(left, 0.5))
        except queue.Empty:
            if process.poll() is not None and lines.empty():
                break
            continue
        seen.append(line)
        found = re.search(r"DevTools listening on (ws://\S+)", line)
        if found:
            return process, found.group(1)
    process.kill()
    raise SystemExit(f"{chromium} did not start its DevTools endpoint within {timeout_s:g} s:\n"
                     + "".join(seen))  # fmt: skip


def console_errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(
                " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(details.get("exception", {}).get("description") or details["text"])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            errors.append(f"{entry['text']} {entry.get('url', '')}".strip())
    return errors


def check_page(chromium: str, page: Path, timeout_s: float) -> dict:
    """Load `page` and return its console errors, image statuses and full height."""
    with tempfile.TemporaryDirectory(prefix="lmforge-chromium-") as profile:
        process, browser_url = start_chromium(chromium, Path(profile), timeout_s)
        try:
            tools = DevTools(browser_url, timeout_s)
            target = tools.send("Target.createTarget", url="about:blank")["targetId"]
            attached = tools.send("Target.attachToTarget", targetId=target, flatten=True)
            tools.session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                tools.send(f"{domain}.enable")
            tools.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=900,
                       deviceScaleFactor=1, mobile=False)  # fmt: skip
            tools.send("Page.navigate", url=page.resolve().as_uri())
            tools.wait_for("Page.loadEventFired")
            tools.drain(SETTLE_S)
            images = json.loads(tools.evaluate(IMAGE_STATUS))
            height = int(tools.evaluate(PAGE_HEIGHT))
            sections = tools.evaluate("Array.from(document.querySelectorAll('section')).length")
            tools.close()
        finally:
            process.terminate()
            process.wait(timeout=10)
    return {
        "console_errors": console_errors(tools.events),
        "images": images,
        "height": height,
        "sections": sections,
    }


def screenshot(chromium: str, page: Path, out: Path, height: int, timeout_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="lmforge-chromium-") as profile:
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
             f"--window-size={WIDTH},{min(height, 16000)}", page.resolve().as_uri()],
            check=True, capture_output=True, timeout=timeout_s,
        )  # fmt: skip


def build_report(run_id: str) -> Path:
    from storage.workspace import activate_workspace

    activate_workspace()
    from flows.report import ReportError, build_run_report
    from storage.registry import RegistryError

    try:
        return build_run_report(run_id)
    except (RegistryError, ReportError) as error:
        raise SystemExit(f"error: {error}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("run_id", nargs="?", help="build this run's report first")
    parser.add_argument("--path", type=Path, help="an existing report.html to check")
    parser.add_argument("--screenshot", type=Path, help="where to save the screenshot")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.run_id is None and args.path is None:
        parser.error("give a run id or --path")
    if args.run_id is not None and args.path is not None:
        parser.error("give a run id or --path, not both")
    if not Path(args.chromium).is_file():
        parser.error(f"{args.chromium}: no Chromium there; `apt-get install -y chromium`")
    page = args.path if args.path is not None else build_report(args.run_id)
    if not page.is_file():
        parser.error(f"{page}: no such report")
    started = time.perf_counter()
    result = check_page(args.chromium, page, args.timeout)
    shot = args.screenshot or page.with_name("screenshot.png")
    screenshot(args.chromium, page, shot, result["height"], args.timeout)
    broken = [image for image in result["images"] if not image["width"]]
    print(f"page: {page}")
    seconds = time.perf_counter() - started
    print(f"sections: {result['sections']}, images: {len(result['images'])}, "
          f"page height: {result['height']} px, checked in {seconds:.1f} s")  # fmt: skip
    for image in result["images"]:
        state = f"{image['width']} px wide" if image["width"] else "NOT LOADED"
        print(f"  img {image['src']}: {state}")
    for error in result["console_errors"]:
        print(f"  console error: {error}")
    print(f"screenshot: {shot}")
    if broken or result["console_errors"] or not result["images"]:
        print("FAILED: " + ", ".join(
            part for part, bad in (("broken images", broken),
                                   ("console errors", result["console_errors"]),
                                   ("no image at all", not result["images"])) if bad
        ))  # fmt: skip
        return 1
    print("OK: no console error, every image loaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
