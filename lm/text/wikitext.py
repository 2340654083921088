"""Wiki markup to plain prose, for articles read from MediaWiki dumps.

What goes: comments, references, templates and tables (nested in any order), files, images,
categories and interlanguage links, math and other non-prose blocks, bold/italic quotes, HTML
tags, heading and list markers, magic words. What stays: the prose, link anchor text, and heading
text on its own line. Templates and tables are removed with a bracket-matching scan (regular
expressions cannot match nesting); links are resolved innermost first, so a file caption that
contains links disappears whole.
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
_REF_SELF_CLOSING = re.compile(r"<ref\b[^<>]*/>", re.IGNORECASE)
_REF_OPENER = re.compile(r"<(ref)\b[^<>]*>", re.IGNORECASE)
_REFERENCES_OPENER = re.compile(r"<(references)\b[^<>]*>", re.IGNORECASE)
# Every position where a template parameter, template or table opens or closes, overlaps
# included ('|}}' holds both; a parameter's `{{{` is tried before a template's `{{`).
_BRACKET_TOKEN = re.compile(r"(?=(\{\{\{|\}\}\}|\{\{|\}\}|\{\||\|\}))")
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
    r"|meta|w|s|q|b|n|v)|[a-z]{2,3}(?:-[a-z0-9]+)*)\s*:"
)
# Neither the address nor the anchor text holds a bracket, so a scan stops at the next one.
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\[\]]++(?:\s+([^\[\]]*+))?\]")
_BOLD_ITALIC = re.compile(r"'{2,}")
_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^<>]*>")
# Spaces and tabs only, not `\s`: `\s*` at each of many blank lines would scan all that follow.
_HEADING = re.compile(r"^[ \t]*(={1,6})[ \t]*(.*?)[ \t]*\1[ \t]*$", re.MULTILINE)
_LIST_MARKER = re.compile(r"^[*#:;]+\s*", re.MULTILINE)
_HORIZONTAL_RULE = re.compile(r"^-{4,}\s*$", re.MULTILINE)
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_BLANK_LINES = re.compile(r"\n\s*\n\s*(?:\n\s*)*")
# Whatever an unbalanced page leaves behind.
_STRAY_MARKUP = re.compile(r"\[\[|\]\]|\{\{|\}\}|\{\||\|\}")
_LINE_OF_PUNCTUATION = re.compile(r"^[\s|!{}\[\]=*#:;,.()-]*$", re.MULTILINE)


def strip_wikitext(text: str) -> str:
    """Plain prose from the wikitext of one article."""
    text = _COMMENT.sub("", text)
    text = _drop_blocks(text, _DROPPED_BLOCK_OPENER)
    text = _REF_SELF_CLOSING.sub("", text)
    text = _drop_blocks(text, _REF_OPENER)
    text = _drop_blocks(text, _REFERENCES_OPENER, unclosed="opener")
    text = remove_templates_and_tables(text)
    text = resolve_links(text)
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = _BOLD_ITALIC.sub("", text)
    text = _HTML_TAG.sub("", text)
    text = _HEADING.sub(lambda m: m.group(2), text)
    text = _LIST_MARKER.sub("", text)
    text = _HORIZONTAL_RULE.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    text = _STRAY_MARKUP.sub("", text)
    text = html.unescape(text).replace("\xa0", " ")
    text = _LINE_OF_PUNCTUATION.sub("", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def _drop_blocks(text: str, opener: re.Pattern[str], unclosed: str = "keep") -> str:
    """Remove each `<tag ...>...</tag>` whose opener `opener` matches (group 1 is the tag's
    name), up to the first closer of the same name. An opener never closed is kept as text, or
    with `unclosed="opener"` removed alone. One pass: once a name has no closer after some
    point, it has none after any later one either."""
    kept: list[str] = []
    cursor = 0
    closers: dict[str, re.Pattern[str] | None] = {}
    for match in opener.finditer(text):
        if match.start() < cursor:
            continue
        name = match.group(1).lower()
        if name not in closers:
            closers[name] = re.compile(rf"</{re.escape(name)}\s*>", re.IGNORECASE)
        closer = closers[name]
        found = closer.search(text, match.end()) if closer else None
        if found is None:
            closers[name] = None
            if unclosed == "keep":
                continue
        kept.append(text[cursor : match.start()])
        cursor = found.end() if found else match.end()
    kept.append(text[cursor:])
    return "".join(kept)


def remove_templates_and_tables(text: str) -> str:
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
    for match in _BRACKET_TOKEN.finditer(text):
        position = match.start()
        if position < cursor:
            continue
        token = match.group(1)
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
            kept.append(text[keep_from:start])
        keep_from = max(keep_from, end)
    kept.append(text[keep_from:])
    return "".join(kept)


def _link_text(inner: str) -> str:
    """What a link `[[inner]]` shows: its anchor, else its target; nothing for a file, image,
    category or interlanguage link. One holding a lone bracket is not a link: it stays."""
    if "[" in inner or "]" in inner:
        return f"[[{inner}]]"
    if _MEDIA_OR_CATEGORY.match(inner):
        return ""
    target, _, anchor = inner.partition("|")
    if _OTHER_WIKI.match(target) and not anchor:
        return ""
    if anchor:
        return anchor.rpartition("|")[2] if "|" in anchor else anchor
    return target.split("#")[0] if not target.startswith("#") else target[1:]


def resolve_links(text: str) -> str:
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
            open_links[-1].append(_link_text(inner))
        else:
            open_links[-1].append("]]")
    open_links[-1].append(text[position:])
    # Never closed: the brackets stay, for the stray-markup pass. Each level's text follows the
    # one it opened in, so one join in order is the text (joining level by level, into the
    # level below, copied the innermost text once per level: quadratic for n open links).
    return "[[".join("".join(level) for level in open_links)
