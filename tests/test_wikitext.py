"""Wiki markup removal: each construct, and the real pages of the bundled dump."""

from __future__ import annotations

import bz2

import pytest
from gensim.test.utils import datapath

from lm.text.wikipedia_dump import read_wikipedia_dump
from lm.text.wikitext import remove_templates_and_tables, strip_wikitext

BUNDLED_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MARKUP_LEFTOVERS = ("{{", "[[", "<ref", "|}")


def test_nested_templates_and_tables_disappear_whole():
    text = "A {{outer|x={{inner|{{deep}}}}|y}} B {|\n| cell {{t}} \n|-\n{| nested\n|}\n|} C"
    assert remove_templates_and_tables(text) == "A  B  C"


def test_empty_template_parameter_is_not_read_as_a_table_end():
    assert remove_templates_and_tables("x {{a|}} y") == "x  y"


def test_unclosed_template_drops_only_its_opener():
    assert "kept text" in remove_templates_and_tables("before {{broken kept text")


def test_links_become_their_anchor_text_and_files_categories_vanish():
    text = (
        "[[Paris]] is in [[France|the French republic]]. "
        "[[File:Eiffel.jpg|thumb|The [[Eiffel Tower]] at night]]"
        "[[Category:Cities]][[fr:Paris]]"
    )
    assert strip_wikitext(text) == "Paris is in the French republic."


def test_references_comments_headings_and_emphasis_are_removed():
    text = (
        "== History ==\n'''Bold''' and ''italic''<ref name=a>{{cite web|url=x}}</ref> text"
        "<ref name=b/>.<!-- hidden -->\n* a list item\n"
        "[http://example.com an external link] &amp; more"
    )
    assert strip_wikitext(text) == (
        "History\nBold and italic text.\na list item\nan external link & more"
    )


@pytest.fixture(scope="module")
def bundled_pages():
    path = datapath(BUNDLED_DUMP)
    with bz2.open(path) as stream:
        return [(title, strip_wikitext(text)) for title, text in read_wikipedia_dump(stream, path)]


def test_real_pages_of_the_bundled_dump_keep_no_markup(bundled_pages):
    assert len(bundled_pages) == 106  # 206 pages less redirects
    leftovers = [(t, m) for t, text in bundled_pages for m in MARKUP_LEFTOVERS if m in text]
    assert leftovers == []


def test_real_pages_keep_their_prose(bundled_pages):
    pages = dict(bundled_pages)
    assert pages["Anarchism"].startswith("Anarchism is a political philosophy")
    assert sum(len(text) for text in pages.values()) > 2_500_000
