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
    # The text of the page's latest revision that has one: in a history dump each revision is
    # dropped as it ends (a page of 1,000 revisions held them all: 264 MB), and one whose text
    # was deleted (`<text deleted="deleted"/>`) leaves the one before.
    latest = None
    # The names of the namespaces other than articles' (`<siteinfo>`): a dump older than export
    # 0.5 gives a page no `<ns>`, and its Talk: and User: pages were kept as articles.
    other_namespaces: set[str] = set()
    try:
        for event, element in ET.iterparse(stream, events=("start", "end")):
            if root is None:
                root = element
                if _local(root.tag) != "mediawiki":
                    raise InputError(
                        f"{name}: not a MediaWiki XML dump (root <{_local(root.tag)}>)"
                    )
                continue
            if event != "end":
                continue
            tag = _local(element.tag)
            if tag == "namespace" and element.get("key", ARTICLE_NAMESPACE) != ARTICLE_NAMESPACE:
                other_namespaces.add((element.text or "").strip().casefold())
                continue
            if tag == "revision":
                body = next((part for part in element if _local(part.tag) == "text"), None)
                if body is not None and body.get("deleted") is None:  # a blanked page: ""
                    latest = body.text or ""
                element.clear()
                continue
            if tag != "page":
                continue
            page = _read_page(element, latest or "", other_namespaces)
            latest = None
            root.clear()  # drop the finished page so memory stays flat
            if page is not None:
                yield page
    except ET.ParseError as error:
        raise InputError(f"{name}: malformed XML ({error})") from None


def _read_page(page: ET.Element, text: str, other_namespaces: set[str]) -> tuple[str, str] | None:
    """The page's (title, `text`), or None for a page that is not an article with text. One
    without `<ns>` is in the namespace its title's prefix names, if `<siteinfo>` lists it."""
    title, namespace, redirect = "", "", False
    for child in page:
        tag = _local(child.tag)
        if tag == "title":
            title = child.text or ""
        elif tag == "ns":
            namespace = (child.text or "").strip()
        elif tag == "redirect":
            redirect = True
    if namespace and namespace != ARTICLE_NAMESPACE:
        return None
    prefix, colon, _ = title.partition(":")
    if not namespace and colon and prefix.strip().casefold() in other_namespaces:
        return None
    if redirect or text.lstrip()[:9].lower() == "#redirect":
        return None
    if not text.strip():
        return None
    return title, text
