"""Streaming reader for MediaWiki XML dumps (`pages-articles*.xml[.bz2]`).

Pages are parsed one at a time with `iterparse` and cleared as soon as they are read, so a dump of
any size runs in constant memory. Only articles are kept: namespace 0, not redirects. The markup is
left as it is; cleaning strips it (so markup rules can change without re-reading the dump).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import BinaryIO

from lm.text.sources import InputError

ARTICLE_NAMESPACE = "0"


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def read_wikipedia_dump(stream: BinaryIO, name: str) -> Iterator[tuple[str, str]]:
    """Yield `(title, wikitext)` for each article page of the dump."""
    root = None
    try:
        for event, element in ET.iterparse(stream, events=("start", "end")):
            if root is None:
                root = element
                if _local(root.tag) != "mediawiki":
                    raise InputError(
                        f"{name}: not a MediaWiki XML dump (root <{_local(root.tag)}>)"
                    )
                continue
            if event != "end" or _local(element.tag) != "page":
                continue
            page = _read_page(element)
            root.clear()  # drop the finished page so memory stays flat
            if page is not None:
                yield page
    except ET.ParseError as error:
        raise InputError(f"{name}: malformed XML ({error})") from None


def _read_page(page: ET.Element) -> tuple[str, str] | None:
    title, namespace, text, redirect = "", "", "", False
    for child in page:
        tag = _local(child.tag)
        if tag == "title":
            title = child.text or ""
        elif tag == "ns":
            namespace = (child.text or "").strip()
        elif tag == "redirect":
            redirect = True
        elif tag == "revision":
            for part in child:
                if _local(part.tag) == "text":
                    text = part.text or ""
    if namespace and namespace != ARTICLE_NAMESPACE:
        return None
    if redirect or text.lstrip()[:9].lower() == "#redirect":
        return None
    if not text.strip():
        return None
    return title, text
