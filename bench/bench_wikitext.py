"""Wiki-markup removal time: the bundled dump, and malformed pages that once took quadratic time.

    .venv/bin/python bench/bench_wikitext.py [--repeat 20000]

Each malformed page repeats one broken construct (an opener never closed, a link never
finished, thousands of blank lines) `--repeat` times. A lazy `.*?</tag>` or a `\\s*` that spans
lines rescans the rest of the page from every repeat, so its time grows with the square of the
page; `strip_wikitext` should stay linear: a page this size in well under a second.
"""

from __future__ import annotations

import argparse
import bz2
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gensim.test.utils import datapath

from bench.cli_args import description, positive_int
from lm.text.wikipedia_dump import read_wikipedia_dump
from lm.text.wikitext import strip_wikitext

BUNDLED_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MALFORMED = {
    "unclosed <ref>": "<ref>note ",
    "unclosed <math>": "<math>x ",
    "unfinished <a tag": "<a ",
    "unclosed [http:// link": "[http://",
    "[http://a b link never closed": "[http://a b ",
    "unclosed {{ template": "{{ a ",
    "<references> without a closer": "<references>",
    "blank lines": "\n \n",
    "unclosed <!-- comment": "<!-- ",
    # One line: a `|}` not at a line start is text, and finding its line start looked back
    # over the whole line from each one (3.2 MB took 57 s).
    "|} and {{x|}} on one line": "a|}b {{x|}} ",
    "'' runs and <nowiki/> on one line": "''a''<nowiki/>''b'' ",
}


def timed(text: str) -> float:
    start = time.perf_counter()
    strip_wikitext(text)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--repeat", type=positive_int, default=20_000)
    args = parser.parse_args()
    path = datapath(BUNDLED_DUMP)
    with bz2.open(path) as stream:
        pages = [text for _, text in read_wikipedia_dump(stream, path)]
    size = sum(len(text) for text in pages)
    seconds = sum(timed(text) for text in pages)
    print(f"bundled dump: {len(pages)} pages, {size / 1e6:.1f} M chars in {seconds:.2f} s")
    for name, piece in MALFORMED.items():
        text = "Intro. " + piece * args.repeat + "end"
        print(f"{name:32s} {len(text) / 1e3:7.0f} k chars {timed(text):7.3f} s")
    deep = "[[a|" * args.repeat + "core" + "]]" * args.repeat
    print(
        f"{'links nested ' + str(args.repeat) + ' deep':32s} {len(deep) / 1e3:7.0f} k chars "
        f"{timed(deep):7.3f} s"
    )
    # A line whose long indent each `|}` after it was checked against again.
    indented = "Intro.\n" + " " * (10 * args.repeat) + "a|}" * args.repeat + "\nend"
    print(f"{'|} after a long indent':32s} {len(indented) / 1e3:7.0f} k chars "
          f"{timed(indented):7.3f} s")  # fmt: skip
    # A template shown as words, of many bars: each bar looked ahead to the template's end.
    bars = "{{convert|" + "|" * (8 * args.repeat) + "}}"
    print(f"{'{{convert}} of many bars':32s} {len(bars) / 1e3:7.0f} k chars {timed(bars):7.3f} s")


if __name__ == "__main__":
    main()
