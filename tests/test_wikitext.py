"""Wiki markup removal: each construct, and the real pages of the bundled dump."""

from __future__ import annotations

import bz2
import random
import re

import pytest
from gensim.test.utils import datapath

from lm.text.wikipedia_dump import read_wikipedia_dump
from lm.text.wikitext import remove_templates_and_tables, resolve_links, strip_wikitext

BUNDLED_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MARKUP_LEFTOVERS = ("{{", "[[", "<ref", "|}")


def test_nested_templates_and_tables_disappear_whole():
    text = "A {{outer|x={{inner|{{deep}}}}|y}} B\n{|\n| cell {{t}} \n|-\n {| nested\n|}\n:|}\nC"
    assert remove_templates_and_tables(text) == "A  B\n\nC"


def test_empty_template_parameter_is_not_read_as_a_table_end():
    assert remove_templates_and_tables("x {{a|}} y") == "x  y"


def test_template_parameters_disappear_whole_inside_templates_or_alone():
    # `{{{1|default}}}` left a stray `}`: its `{{` and `}}` matched, the third brace stayed.
    assert strip_wikitext("A {{{1|default}}} b, x {{a|{{{2|y}}}}} z.") == "A  b, x  z."
    # `}}}}` closing two templates is still two `}}`, not a parameter's closer and a stray.
    assert remove_templates_and_tables("p {{a|{{b}}}} q {{c|{{{d}}}}} r") == "p  q  r"


def test_unclosed_template_drops_only_its_opener():
    assert "kept text" in remove_templates_and_tables("before {{broken kept text")


def removed_the_recursive_way(text: str, start: int = 0) -> str:
    """The first definition of template removal, kept as the reference: scan; if an opener is
    never closed, drop it alone and scan what follows it again, recursively. A table's `{|`
    and `|}` count only at the start of a line (after spaces, `:` indents, templates, tags)."""
    tokens = re.compile(r"(?=(\{\{\{|\}\}\}|\{\{|\}\}|\{\||\|\}))")
    kept, stack, keep_from, cursor = [], [], start, start
    for match in tokens.finditer(text, start):
        position, token = match.start(), match.group(1)
        if position < cursor:
            continue
        line = text[:position].rpartition("\n")[2]
        plain, before_a_table = line, r"\{\{[^{}]*\}\}|<[^<>]*>"
        while len(line) <= 200 and plain != (stripped := re.sub(before_a_table, "", plain)):
            plain = stripped
        if token in ("{|", "|}") and line.strip(" \t:") and plain.strip(" \t:"):
            continue
        opened = stack[-1][0] if stack else None
        if token == "}}}" and opened == "{{":
            token = "}}"
        if token in ("{{{", "{{", "{|"):
            if not stack:
                kept.append(text[keep_from:position])
            stack.append((token, position))
        elif (token, opened) in (("}}}", "{{{"), ("}}", "{{"), ("|}", "{|")):
            stack.pop()
            if not stack:
                keep_from = position + len(token)
        else:
            continue
        cursor = position + len(token)
    if stack:
        opener, position = stack[0]
        kept.append(removed_the_recursive_way(text, position + len(opener)))
    else:
        kept.append(text[keep_from:])
    return "".join(kept)


def test_template_removal_equals_the_recursive_definition_on_random_markup():
    pieces = ["{{", "}}", "{|", "|}", "{", "}", "|", "a", "b ", "|}}", "{{{", "}}}", "\n", "\n:"]
    rng = random.Random(7)
    unclosed = 0
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        expected = removed_the_recursive_way(text)
        assert remove_templates_and_tables(text) == expected, text
        unclosed += expected != removed_the_recursive_way(text + "}}" * 40)
    assert unclosed > 500  # the cases with openers that never close were well covered


def test_a_page_of_unclosed_openers_keeps_its_text_without_recursing():
    # One level of recursion per unclosed opener overflowed Python's stack at about 1,000.
    text = "Intro. " + "{{ a " * 5000 + "{{b}} end"
    assert remove_templates_and_tables(text) == "Intro. " + " a " * 5000 + " end"
    assert strip_wikitext("Intro. " + "<math>x " * 3000).split() == ["Intro.", *["x"] * 3000]


def test_deeply_nested_links_resolve_innermost_first():
    depth = 5000
    text = "[[a|" * depth + "core" + "]]" * depth + " [[File:x.png|[[b|c]]]] [[d]"
    assert resolve_links(text) == "core  [[d]"


def test_many_unclosed_links_keep_their_text_in_linear_time():
    # Each level was joined into the one below it: 200,000 unclosed links took 6 s.
    for count in (1000, 64_000):
        assert resolve_links("[[a|" * count) == "[[a|" * count


def test_other_languages_files_and_categories_vanish_and_interwiki_anchors_stay():
    """German and Spanish file and category links leaked their captions and names; a
    Wiktionary link with an anchor, and titles such as "Ali: Fear Eats the Soul", vanished."""
    german = "[[Datei:X.jpg|miniatur|Die Altstadt mit [[Dom]]]] Text. [[Kategorie:Stadt]]"
    assert strip_wikitext(german) == "Text."
    spanish = "[[Archivo:Y.png|Foto]]Hola. [[Categoría:Ciudades]]"
    assert strip_wikitext(spanish) == "Hola."
    assert strip_wikitext("The word [[wikt:serendipity|serendipity]] means") == (
        "The word serendipity means"
    )
    titles = "[[Ali: Fear Eats the Soul]] and [[Sex: The Annabel Chong Story|a documentary]]."
    assert strip_wikitext(titles) == "Ali: Fear Eats the Soul and a documentary."
    assert strip_wikitext("Paris.[[de:Paris]][[zh-min-nan:Paris]][[Help:Contents]]") == "Paris."


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


def test_each_heading_keeps_a_line_of_its_own():
    # A heading pattern that matched the blank lines around it glued 'History' to 'Origins'.
    text = "Intro.\n\n== History ==\n\n=== Origins ===\nText.\n\n==Notes==\n\n"
    assert strip_wikitext(text).split("\n") == [
        "Intro.",
        "",
        "History",
        "",
        "Origins",
        "Text.",
        "",
        "Notes",
    ]


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


def test_nowiki_text_is_shown_as_written_and_tables_open_only_at_a_line_start():
    # The ASCII article's `<nowiki>{|}~</nowiki>` opened a table that a `|}` in a link closed
    # paragraphs later: 450 characters of prose gone. A cell's link text leaked a table row.
    text = (
        "Printable: <nowiki>{|}~</nowiki>.\n\nReal prose stays.\n\n"
        "{|\n| brace || [[Bracket|}]]\n|-\n| second row\n|}\nEnd. Use <nowiki>{{t}}</nowiki>."
    )
    assert strip_wikitext(text) == "Printable: {|}~.\n\nReal prose stays.\n\nEnd. Use {{t}}."
    assert strip_wikitext("a <nowiki/>b <nowiki>never closed") == "a b never closed"


@pytest.mark.parametrize(
    ("wikitext", "shown"),
    [
        ("The ''Iliad'''s hero", "The Iliad's hero"),  # MediaWiki: an apostrophe, then italic
        ("l'''''x''''' and ''''four''''", "lx and 'four'"),
        ("'''Bold''' and ''it'' are gone", "Bold and it are gone"),
        ("Line one<br>line two<br />three</p><p>four", "Line one\nline two\nthree\n\nfour"),
        (
            "[[simple:Berlin]]Kept [[:File:X.jpg]] [[:Category:Y|the list]]",
            "Kept File:X.jpg the list",
        ),
        (
            "[[Foo (band)|]], [[Seattle, Washington|]], [[Wikipedia:Manual of Style|]]",
            "Foo, Seattle, Manual of Style",
        ),
        ("A. [[File:M.png|thumb|From the [http://x.org survey] [sic] 1900]] B.", "A.  B."),
        ("[[target|anchor with ] bracket]] and [[a]b]]", "anchor with ] bracket and a]b"),
    ],
)
def test_quotes_breaks_and_links_read_as_mediawiki_shows_them(wikitext, shown):
    assert strip_wikitext(wikitext) == shown


@pytest.mark.parametrize(
    ("wikitext", "shown"),
    [
        ("At {{convert|1300|mi|km}}, Alabama has", "At 1300 miles, Alabama has"),
        ("a height of {{convert|2413|ft|m|abbr=on}}.", "a height of 2413 ft."),
        ("rivers {{convert|10|to|20|km}} long", "rivers 10 to 20 kilometres long"),
        ("from {{lang|grc|ἀναρχία}}, anarchy", "from ἀναρχία, anarchy"),
        ("({{lang-fr|[[Paris|la ville]]}})", "(la ville)"),
        ("was {{nowrap|{{convert|5|kg}} heavy}} then", "was 5 kilograms heavy then"),
        ("{{nowrap|Tokyo}} and {{nihongo|Tokyo|東京|Tōkyō}}", "Tokyo and"),
        ("Born {{birth date|1990|1|2}}. {{Infobox|area={{convert|5|km2}}}}", "Born ."),
        # Ranges MediaWiki writes with a word of its own lost their second amount ("60 and(-)").
        ("between {{convert|60|and(-)|80|kg}}.", "between 60 and 80 kilograms."),
        ("{{convert|5|to(-)|10|km|abbr=on}}", "5 to 10 km"),
        # Unit codes that are no words ("22 e6acre", "koilbbl/d"), singular for 1, before a
        # noun, feet and inches, a symbol abbreviated.
        (
            "{{convert|22|e6acre|km2}} and {{convert|57|koilbbl/d|abbr=off}}",
            "22 million acres and 57 thousand barrels per day",
        ),
        (
            "A {{convert|1|km}} tunnel, a {{convert|60|nmi|km|adj=on}} orbit",
            "A 1 kilometre tunnel, a 60-nautical-mile orbit",
        ),
        ("{{convert|6|ft|4|in|m}} tall, {{cvt|30|C}}", "6 feet 4 inches tall, 30 °C"),
        # A positional argument given by number or name, as text holding `=` must be.
        ("x {{nowrap|1=a=b}} {{lang|fr|text=la ville}} y", "x a=b la ville y"),
        # Numbered arguments in any order: the `2=` given before the `1=` was lost.
        ("x {{langx|2=ville|1=fr}} {{convert|2=km|1=5}} y", "x ville 5 kilometres y"),
        # `{{langx}}`, the 2024 name of `{{lang-fr}}`, gives the language's code first.
        ("the {{langx|fr|ville}} and {{Langx|de|text=Stadt}}", "the ville and Stadt"),
        # A template parameter's `{{{...}}}` is no template: "{x}" was left.
        ("a {{{nowrap|x}}} b", "a  b"),
    ],
)
def test_templates_that_stand_for_words_show_them(wikitext, shown):
    # Removed with the others, they left holes: "At , Alabama has", "from , anarchy".
    assert strip_wikitext(wikitext) == shown


def test_a_template_of_many_bars_is_read_in_linear_time():
    # Each bar looked ahead to the next `]]`, to the template's end: 160,000 bars took 37 s.
    for count in (1000, 200_000):
        assert strip_wikitext("{{convert|" + "|" * count + "}}") == ""
        assert strip_wikitext("{{lang|fr|" + "a|" * count + "}} b") == "a b"


def test_self_closing_references_and_lists_keep_the_paragraphs_after_them():
    # `<references group="n"/>` was read as an opener: all up to a later `</references>` went.
    text = 'Intro.\n<references group="n" />\nNotes explain.\n<references>x</references>\nEnd.'
    assert strip_wikitext(text) == "Intro.\n\nNotes explain.\n\nEnd."
    assert strip_wikitext("* item\n*\n\nNext paragraph") == "item\n\nNext paragraph"


def test_the_bundled_ascii_article_keeps_its_printable_characters_section(bundled_pages):
    ascii_text = dict(bundled_pages)["ASCII"]
    assert "Code 20" in ascii_text and "Earlier versions of ASCII used the up arrow" in ascii_text
    assert "efn|" not in ascii_text


@pytest.mark.parametrize(
    ("wikitext", "shown"),
    [
        # Removed markup left the quotes around it one run, read as a stray apostrophe.
        ("The ''{{flag|Azores}}'' (PRT) islands.", "The  (PRT) islands."),
        ("'''{{nihongo|Tokyo|東京}}''' is the capital.", "is the capital."),
        ("'''''{{lang|la|Veni}}''''' vidi.", "Veni vidi."),
        ("''Foo''<ref>x</ref>''Bar'' and ''Baz''{{sfn|X}}''Qux''", "FooBar and BazQux"),
        ("''<nowiki/>''x and ''a''[[File:X.png|thumb|c]]''b''", "x and ab"),
        # A <br> in a heading or before a list marker's character starts a line after them.
        ("==Early life<br />and education==\nText.", "Early life\nand education\nText."),
        ("Chart peak<br>#1 in the UK.", "Chart peak\n#1 in the UK."),
        # A lone <nowiki> inside a dropped block pairs with nothing after it.
        ('<source lang="xml"><nowiki>code</source>\nProse. <nowiki>x</nowiki>.', "Prose. x."),
        # A template or tag before a table on its line.
        ('Intro.\n{{clear}}{| class="t"\n|-\n| cell || cell\n|}\nAfter.', "Intro.\n\nAfter."),
        ('Intro.\n<center>{| class="t"\n| cell\n|}</center>\nAfter.', "Intro.\n\nAfter."),
    ],
)
def test_removed_markup_breaks_quote_runs_and_line_starts_are_read_first(wikitext, shown):
    assert strip_wikitext(wikitext) == shown


@pytest.mark.parametrize(
    ("wikitext", "shown"),
    [
        # An anchor that is a template alone showed nothing (Afghanistan: "latitudes  and ,").
        (
            "between [[29th parallel north|{{nowrap|29° N}}]] and [[Foo|<ref>r</ref>]].",
            "between 29° N and Foo.",
        ),
        # Markup inside <nowiki> is shown as written; the marks of removed markup never leak.
        (
            "a <nowiki><ref name=x/></nowiki> b <nowiki><math>x</math></nowiki>",
            "a <ref name=x/> b <math>x</math>",
        ),
        (
            "a <nowiki><nowiki/></nowiki> b <nowiki><references/></nowiki>",
            "a <nowiki/> b <references/>",
        ),
        # A table after a removed ref or formula on its line is a table.
        ("<ref name=a/>{| class=t\n| cell\n|}\nAfter.", "After."),
        ("<math>x</math>{| class=t\n| cell\n|}\nAfter.", "After."),
        ("{{a|{{b}}}}{| class=t\n| cell\n|}\nAfter.", "After."),  # a nested template too
    ],
)
def test_marks_of_removed_markup_leave_anchors_tables_and_nowiki_as_they_were(wikitext, shown):
    assert strip_wikitext(wikitext) == shown
    assert not any("\ue000" <= char <= "\ue002" for char in strip_wikitext(wikitext))


def test_magic_words_non_breaking_spaces_and_top_level_headings_leave_plain_prose():
    assert strip_wikitext("Text __NOTOC__ more") == "Text  more"
    assert strip_wikitext("10&nbsp;km and 5\xa0m") == "10 km and 5 m"
    assert strip_wikitext("= Title =\nBody text.") == "Title\nBody text."
