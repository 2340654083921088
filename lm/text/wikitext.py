"""Wiki markup to plain prose, for articles read from MediaWiki dumps.

What goes: comments, references, templates and tables (nested in any order), files, images,
categories and interlanguage links, math and other non-prose blocks, bold/italic quotes, HTML
tags, heading and list markers, magic words. What stays: the prose, link anchor text, heading
text on its own line, and the words of the templates that stand for words in a sentence
(`{{convert}}`'s amount and unit, `{{lang}}`'s text, `{{nowrap}}`'s). Templates and tables are
removed with a bracket-matching scan (regular expressions cannot match nesting); links are
resolved innermost first, so a file caption that contains links disappears whole.
"""

from __future__ import annotations

import html
import re

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
# Blocks that are not prose, whole. Tag patterns stop at the next `<`, and blocks are matched by
# a scan (`_drop_blocks`), not a lazy `.*?</tag>`: a regex rescans to the end of the page for
# every opener that is never closed, quadratic time on a malformed page.
_DROPPED_BLOCK_OPENER = re.compile(
    r"<(math|chem|gallery|timeline|score|syntaxhighlight|source|graph|imagemap|mapframe)\b"
    r"[^<>]*>",
    re.IGNORECASE,
)
# `<references/>` matched the references opener too, and the text up to a later
# `</references>` went with it.
_SELF_CLOSING_BLOCK = re.compile(
    r"<(?:ref|references|math|chem|gallery|timeline|score|syntaxhighlight|source|graph|imagemap"
    r"|mapframe)\b[^<>]*/>",
    re.IGNORECASE,
)
# Text MediaWiki shows as written, markup included (`<nowiki>{{template}}</nowiki>`).
_NOWIKI_OPENER = re.compile(r"<nowiki\s*>", re.IGNORECASE)
_NOWIKI_CLOSER = re.compile(r"</nowiki\s*>", re.IGNORECASE)
_NOWIKI_EMPTY = re.compile(r"<nowiki\s*/>", re.IGNORECASE)
_NOWIKI_OR_BLOCK_OPENER = re.compile(
    r"<nowiki\s*>|<(?P<block>math|chem|gallery|timeline|score|syntaxhighlight|source|graph"
    r"|imagemap|mapframe)\b[^<>/]*>",
    re.IGNORECASE,
)
# Where a nowiki's text waits while the markup around it is removed: private-use characters.
_KEPT_TEXT = re.compile("\ue000(\\d+)\ue001")
_REMOVED = "\ue002"  # where markup was removed, until the quotes are read
_NO_PRIVATE_MARKS = dict.fromkeys(map(ord, "\ue000\ue001\ue002"))
_REF_OPENER = re.compile(r"<(ref)\b[^<>]*>", re.IGNORECASE)
# Templates that stand for words of the sentence around them, innermost (no brace inside):
# removed with the others, they left holes in the prose ("at a height of .", "from , anarchos";
# in the bundled dump 356 {{convert}}, 85 {{lang}}, 22 {{nowrap}}).
_SHOWN_TEMPLATE = re.compile(
    # Not the `{{{` of a template parameter (`{{{lang|}}}` showed "{}").
    r"(?<!\{)\{\{(?!\{)\s*(convert|cvt|langx?|lang-[a-z]+(?:-[a-z]+)*|nowrap)\s*\|([^{}]*)\}\}",
    re.IGNORECASE,
)
# A template's bars and the `[[`, `]]` around a link's bar, read in one pass: a lookahead from
# each bar to the next `]]` read the rest of the template again per bar (quadratic: 160 k bars
# in one {{convert}} took 37 s).
_TEMPLATE_BAR_OR_LINK = re.compile(r"\[\[|\]\]|\|")
_NAMED_ARGUMENT = re.compile(r"^\s*([\w -]+?)\s*=")
_RANGE_WORDS = {"to": " to ", "to(-)": " to ", "and": " and ", "and(-)": " and ", "or": " or ",
                "-": "–", "–": "–", "x": " × ", "×": " × ", "by": " by ", "+/-": " ± ",
                "±": " ± ", "+": " + ", ",": ", ", ", and": ", and ", ", or": ", or "}  # fmt: skip
# `{{convert}}` shows the first unit's name unless abbreviated (`abbr=on`), singular for 1 and
# before a noun (`adj=on`): the common ones, and those of the bundled dump (a code such as
# "koilbbl/d" or "e6acre" left as itself is no word of the text).
_UNIT_NAMES = {
    "km": ("kilometre", "kilometres"), "m": ("metre", "metres"),
    "cm": ("centimetre", "centimetres"), "mm": ("millimetre", "millimetres"),
    "mi": ("mile", "miles"), "ft": ("foot", "feet"), "in": ("inch", "inches"),
    "yd": ("yard", "yards"), "nmi": ("nautical mile", "nautical miles"),
    "km2": ("square kilometre", "square kilometres"), "sqmi": ("square mile", "square miles"),
    "m2": ("square metre", "square metres"), "sqft": ("square foot", "square feet"),
    "ha": ("hectare", "hectares"), "acre": ("acre", "acres"), "kg": ("kilogram", "kilograms"),
    "g": ("gram", "grams"), "lb": ("pound", "pounds"), "t": ("tonne", "tonnes"),
    "C": ("°C", "°C"), "F": ("°F", "°F"), "C-change": ("°C", "°C"), "F-change": ("°F", "°F"),
    "km/h": ("kilometre per hour", "kilometres per hour"),
    "mph": ("mile per hour", "miles per hour"),
    "m/s": ("metre per second", "metres per second"),
    "ft/s": ("foot per second", "feet per second"), "L": ("litre", "litres"),
    "m3": ("cubic metre", "cubic metres"), "ft3": ("cubic foot", "cubic feet"),
    "USgal": ("US gallon", "US gallons"), "MUSgal": ("million US gallons", "million US gallons"),
    "oilbbl": ("barrel", "barrels"), "oilbbl/d": ("barrel per day", "barrels per day"),
    "koilbbl/d": ("thousand barrels per day", "thousand barrels per day"),
    "Moilbbl": ("million barrels", "million barrels"),
    "Moilbbl/d": ("million barrels per day", "million barrels per day"),
    "Goilbbl": ("billion barrels", "billion barrels"),
    "Tcuft": ("trillion cubic feet", "trillion cubic feet"),
    "e6acre": ("million acres", "million acres"), "e6carat": ("million carats", "million carats"),
}  # fmt: skip
_AMOUNT = re.compile(r"[\d.,]+")
# Abbreviated, a unit shows its symbol: a code that is not one.
_UNIT_SYMBOLS = {"C": "°C", "F": "°F", "C-change": "°C", "F-change": "°F"}
_REFERENCES_OPENER = re.compile(r"<(references)\b[^<>]*>", re.IGNORECASE)
# Every position where a template parameter, template or table opens or closes, overlaps
# included ('|}}' holds both; a parameter's `{{{` is tried before a template's `{{`).
_BRACKET_TOKEN = re.compile(r"(?=(\{\{\{|\}\}\}|\{\{|\}\}|\{\||\|\}))")
# A table opens and closes at the start of a line only (after spaces and `:` indents, or a
# template or tag standing before it: `{{clear}}{|`, `<center>{|`): a `|}` in `[[Bracket|}]]`,
# or a `{|` in running text, is text.
_TABLE_LINE_START = re.compile(r"[ \t:]*")
_BEFORE_A_TABLE = re.compile(r"\{\{[^{}]*\}\}|<[^<>]*>|\ue002|\ue000\d+\ue001")
_BEFORE_A_TABLE_MAX = 200  # characters of a line looked at: no quadratic scan of a long line
_LINK_BRACKET = re.compile(r"\[\[|\]\]")
# Links that never show text where they stand: files (their captions belong to the picture)
# and categories, under the namespace names of the larger Wikipedias too.
_MEDIA_OR_CATEGORY = re.compile(
    r"^\s*(?:file|image|media|category|datei|bild|kategorie|fichier|catégorie|archivo|imagen"
    r"|categoría|categoria|immagine|ficheiro|arquivo|bestand|afbeelding|categorie|plik|grafika"
    r"|kategoria|soubor|kategorie|fil|kategori|tiedosto|luokka|файл|изображение|категория"
    r"|ファイル|画像|カテゴリ|文件|图像|分类|分類|파일|분류)\s*:",
    re.IGNORECASE,
)
# Links to other wikis and namespaces: an interlanguage link (`[[de:Berlin]]`, a lowercase code)
# or a project page shows nothing, but one with an anchor shows it (`[[wikt:word|word]]`).
_OTHER_WIKI = re.compile(
    r"^\s*(?:(?i:wikipedia|wp|template|help|portal|special|user|talk|wikt|wiktionary|commons"
    r"|meta|w|s|q|b|n|v|simple)|[a-z]{2,3}(?:-[a-z0-9]+)*)\s*:"
)
# What the pipe trick (`[[Foo (band)|]]`, `[[Seattle, Washington|]]`) leaves out of a title.
_PIPE_TRICK_PARENTHESES = re.compile(r"\s*\([^()]*\)\s*$")
# Neither the address nor the anchor text holds a bracket, so a scan stops at the next one.
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\[\]]++(?:\s+([^\[\]]*+))?\]")
_QUOTE_RUN = re.compile(r"('{2,})")
# Tags that end a line where they stand: removed bare, they glued the words around them.
_LINE_BREAK_TAG = re.compile(
    r"<(?:br|hr)\b[^<>]*>|</?(?:p|div|li|blockquote)\b[^<>]*>", re.IGNORECASE
)
_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^<>]*>")
# Spaces and tabs only, not `\s`: `\s*` at each of many blank lines would scan all that follow.
_HEADING = re.compile(r"^[ \t]*(={1,6})[ \t]*(.*?)[ \t]*\1[ \t]*$", re.MULTILINE)
_LIST_MARKER = re.compile(r"^[*#:;]+[ \t]*", re.MULTILINE)  # not `\s*`: it ate blank lines
_HORIZONTAL_RULE = re.compile(r"^-{4,}\s*$", re.MULTILINE)
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_BLANK_LINES = re.compile(r"\n\s*\n\s*(?:\n\s*)*")
# Whatever an unbalanced page leaves behind.
_STRAY_MARKUP = re.compile(r"\[\[|\]\]|\{\{|\}\}|\{\||\|\}")
_LINE_OF_PUNCTUATION = re.compile(r"^[\s|!{}\[\]=*#:;,.()-]*$", re.MULTILINE)


def strip_wikitext(text: str) -> str:
    """Plain prose from the wikitext of one article."""
    text = _COMMENT.sub("", text).translate(_NO_PRIVATE_MARKS)  # no placeholder or mark but ours
    text, kept = _set_nowiki_aside(text)
    # What is removed before the quotes are read leaves a mark where it stood, as MediaWiki's
    # strip markers do: the quotes on either side of `''{{lang|fr|x}}''` are two runs, not one
    # run of four that reads as a stray apostrophe.
    text = _SELF_CLOSING_BLOCK.sub(_REMOVED, text)
    text = _drop_blocks(text, _DROPPED_BLOCK_OPENER, mark=_REMOVED)
    text = _drop_blocks(text, _REF_OPENER, mark=_REMOVED)
    text = _drop_blocks(text, _REFERENCES_OPENER, unclosed="opener", mark=_REMOVED)
    text = _show_inline_templates(text)
    text = remove_templates_and_tables(text, mark=_REMOVED)
    text = resolve_links(text, removed=_REMOVED)
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or _REMOVED, text)
    text = "\n".join(remove_bold_and_italic(line) for line in text.split("\n"))
    text = text.replace(_REMOVED, "")
    # Headings and list markers are read before a <br> in them starts a line of its own.
    text = _HEADING.sub(lambda m: m.group(2), text)
    text = _LIST_MARKER.sub("", text)
    text = _LINE_BREAK_TAG.sub("\n", text)
    text = _HTML_TAG.sub("", text)
    text = _HORIZONTAL_RULE.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    text = _STRAY_MARKUP.sub("", text)
    text = _KEPT_TEXT.sub(lambda match: kept[int(match.group(1))], text)
    text = html.unescape(text).replace("\xa0", " ")
    text = _LINE_OF_PUNCTUATION.sub("", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def _show_inline_templates(text: str) -> str:
    """`text` with each template that stands for words in a sentence (`_SHOWN_TEMPLATE`) replaced
    by the words MediaWiki shows for it (a `{{convert}}`: the given amount, not the conversion),
    innermost first, up to 4 deep (a pass per level: a page nesting thousands stays linear); the
    other templates, and any left deeper, are removed after."""
    for _ in range(4):
        shown = _SHOWN_TEMPLATE.sub(_shown_template, text)
        if shown == text:
            break
        text = shown
    return text


def _template_arguments(body: str) -> tuple[list[str], dict[str, str]]:
    """A template's positional arguments and its named ones (`abbr=on`; `1=a=b`, MediaWiki's way
    to give a positional one that holds `=`, sets the first), split at the bars outside links."""
    parts, depth, start = [], 0, 0
    for token in _TEMPLATE_BAR_OR_LINK.finditer(body):
        if token.group() == "[[":
            depth += 1
        elif token.group() == "]]":
            depth = max(depth - 1, 0)
        elif not depth:
            parts.append(body[start : token.start()])
            start = token.end()
    parts.append(body[start:])
    positional: list[str] = []
    named: dict[str, str] = {}
    for part in parts:
        name = _NAMED_ARGUMENT.match(part)
        if name is None:
            positional.append(part.strip())
        else:
            named[name.group(1).lower()] = part[name.end() :].strip()
    # In the order of their numbers: `{{lang|2=ville|1=fr}}` lost its `2=`, given before a first.
    for key, value in sorted((item for item in named.items() if item[0].isdigit()),
                             key=lambda item: int(item[0])):  # fmt: skip
        if 0 < int(key) <= len(positional) + 1:
            index = int(key) - 1
            positional[index : index + 1] = [value]
    return positional, named


def _shown_template(match: re.Match[str]) -> str:
    """The words MediaWiki shows for one template of `_SHOWN_TEMPLATE`: a `{{convert}}`'s
    amount and unit (not its conversion), a `{{lang}}`'s text, a `{{nowrap}}`'s content."""
    name = match.group(1).strip().lower()
    arguments, named = _template_arguments(match.group(2))
    if name in ("convert", "cvt"):
        if len(arguments) < 2:
            return ""
        amount, rest = arguments[0], arguments[1:]
        ranged = len(rest) >= 2 and rest[0].lower() in _RANGE_WORDS
        if ranged:
            amount += _RANGE_WORDS[rest[0].lower()] + rest[1]
            rest = rest[2:]
        if not rest:
            return amount
        unit = rest[0]
        # Feet and inches (`|6|ft|2|in|cm`): both amounts shown, "6 feet 2 inches".
        if len(rest) >= 3 and _AMOUNT.fullmatch(rest[1]) and rest[2] in _UNIT_NAMES:
            plain = {**named, "adj": ""}
            return (f"{_shown_convert(name, amount, unit, plain, ranged)} "
                    f"{_shown_convert(name, rest[1], rest[2], plain, False)}")  # fmt: skip
        return _shown_convert(name, amount, unit, named, ranged)
    # `{{langx|fr|…}}` (the name that replaced `{{lang-fr|…}}` in 2024) gives its code first.
    if name in ("lang", "langx") and "text" in named:
        return named["text"]
    index = 1 if name in ("lang", "langx") else 0
    return arguments[index] if len(arguments) > index else ""


def _shown_convert(name: str, amount: str, unit: str, named: dict[str, str], ranged: bool) -> str:
    """An amount and its unit as `{{convert}}` shows them: abbreviated ("5 km"), singular for 1
    ("1 kilometre"), or before a noun with `adj=on` ("a 5-kilometre road")."""
    if name == "cvt" or named.get("abbr", "").lower() == "on":
        return f"{amount} {_UNIT_SYMBOLS.get(unit, unit)}"
    singular, plural = _UNIT_NAMES.get(unit, (unit, unit))
    if named.get("adj", "").lower() == "on" and not ranged:
        return f"{amount}-{singular.replace(' ', '-')}"
    return f"{amount} {singular if amount == '1' else plural}"


def _set_nowiki_aside(text: str) -> tuple[str, list[str]]:
    """`text` with each `<nowiki>...</nowiki>` replaced by a placeholder, and the texts they
    hold, put back once the markup is gone: MediaWiki shows them as written (read as markup, a
    `{|` in one opened a table that swallowed paragraphs). As in MediaWiki the first opener
    wins: a `<nowiki>` inside a block dropped later (`<math>`, `<source>`) is that block's
    text, and a block inside a nowiki is shown. An opener never closed is dropped."""
    kept: list[str] = []
    pieces: list[str] = []
    cursor = scan_from = 0
    closers = _Closers(text)
    for opener in _NOWIKI_OR_BLOCK_OPENER.finditer(text):
        if opener.start() < scan_from:
            continue
        block = opener.group("block")
        if block is not None:  # left for `_drop_blocks`, with any <nowiki> inside it
            found = closers.after(block, opener.end())
            scan_from = found.end() if found else opener.end()
            continue
        closer = _NOWIKI_CLOSER.search(text, opener.end())
        if closer is None:  # none after this one either
            break
        pieces.append(f"{text[cursor : opener.start()]}\ue000{len(kept)}\ue001")
        kept.append(text[opener.end() : closer.start()])
        cursor = scan_from = closer.end()
    pieces.append(text[cursor:])
    rest = _NOWIKI_EMPTY.sub(_REMOVED, "".join(pieces))  # `''<nowiki/>''` breaks a quote run
    return _NOWIKI_OPENER.sub("", rest), kept


def remove_bold_and_italic(line: str) -> str:
    """One line without its bold and italic quotes, read as MediaWiki reads them
    (`Parser::doQuotes`): four quotes are an apostrophe and bold, more than five are
    apostrophes and bold italic, and where both bold and italic are left open, the bold most
    likely meant as an apostrophe and italic becomes one: `''Iliad'''s` is "Iliad's" (with
    every quote removed it was "Iliads")."""
    if "''" not in line:
        return line
    parts = _QUOTE_RUN.split(line)  # text, quotes, text, quotes, ..., text
    italics = bolds = 0
    for index in range(1, len(parts), 2):
        size = len(parts[index])
        if size == 4 or size > 5:
            markup = 3 if size == 4 else 5
            parts[index - 1] += "'" * (size - markup)
            parts[index], size = "'" * markup, markup
        italics += size in (2, 5)
        bolds += size in (3, 5)
    if italics % 2 and bolds % 2:
        single_letter = multi_letter = after_space = None
        for index in range(1, len(parts), 2):
            if len(parts[index]) != 3:
                continue
            before = parts[index - 1]
            if before[-1:] == " ":
                after_space = after_space or index
            elif before[-2:-1] == " ":
                single_letter = index
                break
            else:
                multi_letter = multi_letter or index
        chosen = single_letter or multi_letter or after_space
        if chosen:
            parts[chosen - 1] += "'"
    return "".join(parts[0::2])


class _Closers:
    """The closers `</name>` of `text`'s blocks, found from a position on. Once a name has no
    closer after some point it has none after any later one, so a page of openers never closed
    is searched to its end once a name, not once an opener (quadratic time)."""

    def __init__(self, text: str):
        self.text = text
        self.patterns: dict[str, re.Pattern[str] | None] = {}  # None: no closer any more

    def after(self, name: str, position: int) -> re.Match[str] | None:
        name = name.lower()
        if name not in self.patterns:
            self.patterns[name] = re.compile(rf"</{re.escape(name)}\s*>", re.IGNORECASE)
        pattern = self.patterns[name]
        found = pattern.search(self.text, position) if pattern else None
        if found is None:
            self.patterns[name] = None
        return found


def _drop_blocks(text: str, opener: re.Pattern[str], unclosed: str = "keep", mark: str = "") -> str:
    """Remove each `<tag ...>...</tag>` whose opener `opener` matches (group 1 is the tag's
    name), up to the first closer of the same name. An opener never closed is kept as text, or
    with `unclosed="opener"` removed alone. One pass: once a name has no closer after some
    point, it has none after any later one either."""
    kept: list[str] = []
    cursor = 0
    closers = _Closers(text)
    for match in opener.finditer(text):
        if match.start() < cursor:
            continue
        found = closers.after(match.group(1), match.end())
        if found is None and unclosed == "keep":
            continue
        kept.append(text[cursor : match.start()] + mark)
        cursor = found.end() if found else match.end()
    kept.append(text[cursor:])
    return "".join(kept)


def remove_templates_and_tables(text: str, mark: str = "") -> str:
    """Drop every `{{template}}`, `{{{parameter}}}` and `{| table |}`, however they nest in
    each other.

    A `|}` closes a table only when a table is the innermost open construct, so `{{a|}}` (an empty
    template parameter) is read as a template. An opener that is never closed is dropped alone,
    keeping the text after it, rather than swallowing the rest of the article: text is kept
    wherever every construct still open there is one that never closes. One pass over the
    tokens, then one over the spans they remove, so a page of unclosed openers costs no more
    than a well-formed one.
    """
    removed: list[tuple[int, int]] = []
    stack: list[tuple[str, int]] = []
    cursor = 0
    # The line of the last table token, found scanning forward only, and where the spaces and
    # indents it starts with end (looked for once a line: from every token, a long run of them
    # was walked again and again).
    line_start = scanned = 0
    indent_end = _TABLE_LINE_START.match(text).end()
    for match in _BRACKET_TOKEN.finditer(text):
        position = match.start()
        if position < cursor:
            continue
        token = match.group(1)
        if token in ("{|", "|}"):
            newline = text.rfind("\n", scanned, position)
            if newline >= 0:
                line_start = newline + 1
                indent_end = _TABLE_LINE_START.match(text, line_start).end()
            scanned = position
            if not _starts_a_line(text, line_start, indent_end, position):
                continue
        opened = stack[-1][0] if stack else None
        if token in ("{{{", "{{", "{|"):
            stack.append((token, position))
        elif (token, opened) in (("}}}", "{{{"), ("}}", "{{"), ("|}", "{|")):
            removed.append((stack.pop()[1], position + len(token)))
        elif token == "}}}" and opened == "{{":  # `{{a|{{b}}}}`: the inner template's `}}`
            token = "}}"
            removed.append((stack.pop()[1], position + 2))
        else:
            continue  # a closer with nothing to close: ordinary text
        cursor = position + len(token)
    removed.extend((position, position + len(token)) for token, position in stack)
    removed.sort()
    kept: list[str] = []
    keep_from = 0
    for start, end in removed:
        if start >= keep_from:
            kept.append(text[keep_from:start] + mark)
        keep_from = max(keep_from, end)
    kept.append(text[keep_from:])
    return "".join(kept)


def _starts_a_line(text: str, line_start: int, indent_end: int, position: int) -> bool:
    """Whether only spaces, tabs, `:` indents, templates and tags stand before `position` on
    its line (which starts at `line_start`, its indent ending at `indent_end`)."""
    if position <= indent_end:
        return True
    if position - line_start > _BEFORE_A_TABLE_MAX:
        return False
    before, removed = text[line_start:position], 1
    while removed:  # innermost first: `{{a|{{b}}}}` is gone after two passes
        before, removed = _BEFORE_A_TABLE.subn("", before)
    return _TABLE_LINE_START.fullmatch(before) is not None


def _link_text(inner: str) -> str:
    """What a link `[[inner]]` shows: its anchor, else its target; nothing for a file, image,
    category or interlanguage link (whose caption may hold brackets: `[sic]`, an external
    link). One whose target holds a bracket is not a link: it stays. A leading colon shows a
    file, category or other language's page as a link (`[[:File:X.jpg]]` is "File:X.jpg")."""
    target, bar, anchor = inner.partition("|")
    if not anchor.replace(_REMOVED, "").strip():  # an anchor of a template alone: the target's
        anchor = ""
    if "[" in target or "]" in target:
        return f"[[{inner}]]"
    if _MEDIA_OR_CATEGORY.match(inner):
        return ""
    as_a_page = target.lstrip().startswith(":")
    if as_a_page:
        target = target.lstrip().removeprefix(":")
    elif _OTHER_WIKI.match(target) and not bar:
        return ""
    if anchor:
        return anchor.rpartition("|")[2] if "|" in anchor else anchor
    if bar:  # the pipe trick: the title without its namespace and what qualifies it
        title = target.partition(":")[2] if ":" in target else target
        plain = _PIPE_TRICK_PARENTHESES.sub("", title)
        return (plain if plain != title else title.split(",")[0]).strip()
    return target.split("#")[0] if not target.startswith("#") else target[1:]


def resolve_links(text: str, removed: str = "") -> str:
    """`[[target|anchor]]` becomes `anchor`, `[[target]]` becomes `target`; files, images,
    categories and interlanguage links vanish. Innermost first, so nested captions resolve."""
    # A stack of the links open at each point, each a list of its text so far: a link's text
    # is resolved when it closes, innermost first, in one pass however deep they nest.
    open_links: list[list[str]] = [[]]
    position = 0
    for match in _LINK_BRACKET.finditer(text):
        open_links[-1].append(text[position : match.start()])
        position = match.end()
        if match.group() == "[[":
            open_links.append([])
        elif len(open_links) > 1:
            inner = "".join(open_links.pop())
            open_links[-1].append(_link_text(inner) or removed)
        else:
            open_links[-1].append("]]")
    open_links[-1].append(text[position:])
    # Never closed: the brackets stay, for the stray-markup pass. Each level's text follows the
    # one it opened in, so one join in order is the text (joining level by level, into the
    # level below, copied the innermost text once per level: quadratic for n open links).
    return "[[".join("".join(level) for level in open_links)
