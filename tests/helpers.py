"""Small inputs that tests build on the fly: TOML configs, wiki dumps, prose documents."""

from __future__ import annotations

import bz2
import contextlib
import http.server
import json
import logging
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

WORDS = (
    "river mountain valley forest city market harbour bridge castle garden library museum "
    "engine signal theory method result figure table season winter summer autumn spring "
    "farmer teacher doctor sailor painter writer singer builder keeper hunter trader "
    "ancient modern quiet bright heavy simple careful steady gentle famous common rare "
    "walks builds reads writes carries follows watches opens closes finds keeps brings"
).split()


def periodic_tokens(length: int, vocab: int, seed: int = 0) -> np.ndarray:
    """A learnable token stream for training tests: a fixed random cycle of 7 ids below
    `vocab`, with 5% of positions replaced by noise."""
    rng = np.random.default_rng(seed)
    tokens = np.tile(rng.integers(0, vocab, 7), length // 7 + 1)[:length]
    noise = rng.random(length) < 0.05
    tokens[noise] = rng.integers(0, vocab, noise.sum())
    return tokens.astype("<u2")


def prose(seed: int, n_words: int = 120) -> str:
    """Readable-looking, non-repetitive text that passes the quality rules."""
    rng = random.Random(seed)
    sentences, words = [], 0
    while words < n_words:
        length = rng.randint(8, 16)
        sentence = " ".join(rng.choice(WORDS) for _ in range(length))
        sentences.append(sentence.capitalize() + ".")
        words += length
    return " ".join(sentences)


def write_config(path: Path, sources: list[dict], extra: str = "") -> Path:
    lines = ['name = "test"', "", "[ingest]", "sources = ["]
    for source in sources:
        fields = ", ".join(f"{k} = {json.dumps(v)}" for k, v in source.items())
        lines.append(f"    {{ {fields} }},")
    lines += ["]", "", "[clean]", "workers = 1", "", "[clean.quality]", "min_words = 20", ""]
    lines += ["[tokenizer]", 'kind = "char"', "", "[word2vec]", "enabled = false", ""]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def wiki_page(title: str, text: str, namespace: int = 0, redirect: str | None = None) -> str:
    redirect_tag = f'<redirect title="{escape(redirect)}" />' if redirect else ""
    return (
        f"<page><title>{escape(title)}</title><ns>{namespace}</ns><id>1</id>{redirect_tag}"
        f'<revision><id>2</id><text xml:space="preserve">{escape(text)}</text></revision></page>'
    )


def write_wiki_dump(path: Path, pages: list[str]) -> Path:
    xml = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">'
        "<siteinfo><sitename>Test</sitename></siteinfo>" + "".join(pages) + "</mediawiki>"
    )
    data = xml.encode()
    path.write_bytes(bz2.compress(data) if path.suffix == ".bz2" else data)
    return path


def readme_sections(folder: Path) -> Path:
    """The repository's README, one file per `## ` section, as a folder source. One document
    would land in val or test for some README texts (the split hashes the text), leaving no
    training text; a dozen sections always leave some in train."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    folder.mkdir(parents=True, exist_ok=True)
    for number, section in enumerate(readme.split("\n## ")):
        (folder / f"section{number:02d}.md").write_text(section)
    return folder


def wait_until(condition, timeout_s: float) -> bool:
    """Poll `condition` every 50 ms; whether it came true within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def warnings_said_by(logger_name: str) -> Iterator[list[str]]:
    """The warnings `logger_name` says inside the block, heard on the logger itself: Prefect's
    logging replaces the root's handlers, so pytest's `caplog` may hear none."""
    said: list[str] = []
    listener = logging.Handler(logging.WARNING)
    listener.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(logger_name).addHandler(listener)
    try:
        yield said
    finally:
        logging.getLogger(logger_name).removeHandler(listener)


@contextlib.contextmanager
def registry_held_open(path: Path, seconds: float = 120, read_only: bool = True) -> Iterator[int]:
    """Another process with the registry open read-only (else to write, as a notebook's
    `duckdb.connect(path)` has it) for the block (or `seconds`, if fewer), as a `duckdb` shell
    would have it; yields its pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time\n"
         "connection = duckdb.connect(sys.argv[1], read_only=sys.argv[3] == 'r')\n"
         "print('open', flush=True)\ntime.sleep(float(sys.argv[2]))", str(path), str(seconds),
         "r" if read_only else "w"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "open\n"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


class BusyOnce(http.server.SimpleHTTPRequestHandler):
    """503 for the first request of each path, then the file: a server restarting."""

    seen: set[str]  # per server (`serving_busy_once`)

    def do_GET(self):
        if self.path not in self.seen:
            self.seen.add(self.path)
            self.send_error(503, "Service Unavailable")
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving_busy_once(directory: Path) -> Iterator[str]:
    """An HTTP server of `directory` on this machine that answers the first request of each
    path with 503 (`BusyOnce`); yields its address."""
    import functools
    import threading

    handler = type("BusyOnceHere", (BusyOnce,), {"seen": set()})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def registry_at_schema(path: Path, version: int):
    """A registry file made as the lmforge of schema `version` made it (its first `version`
    migrations), open for the test to fill; the caller closes the connection."""
    import duckdb

    from storage.registry import MIGRATIONS

    connection = duckdb.connect(str(path))
    connection.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMP)")
    for number, script in enumerate(MIGRATIONS[:version], start=1):
        connection.execute(script)
        connection.execute("INSERT INTO schema_version VALUES (?, now())", [number])
    return connection
