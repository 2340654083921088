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
_DROPPED_BLOCKS = re.compile(
    r"<(math|chem|gallery|timeline|score|syntaxhighlight|source|graph|imagemap|mapframe)\b[^>]*>"
    r".*?</\1\s*>",
    re.DOTALL | re.IGNORECASE,
)
_REF_SELF_CLOSING = re.compile(r"<ref\b[^>]*/>", re.IGNORECASE)
_REF_BLOCK = re.compile(r"<ref\b[^>]*>.*?</ref\s*>", re.DOTALL | re.IGNORECASE)
_REFERENCES_TAG = re.compile(r"<references\b[^>]*/?>(?:.*?</references\s*>)?", re.DOTALL | re.I)
# Every position where a template or table opens or closes, overlaps included ('|}}' holds both).
_BRACKET_TOKEN = re.compile(r"(?=(\{\{|\}\}|\{\||\|\}))")
_INNERMOST_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_DROPPED_LINK_TARGET = re.compile(
    r"^\s*(?:file|image|media|category|wikipedia|wp|template|help|portal|special|user|talk"
    r"|wikt|wiktionary|commons|meta|s|q|b|n|v|[a-z]{2,3}(?:-[a-z0-9]+)*)\s*:",
    re.IGNORECASE,
)
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+(?:\s+([^\]]*))?\]")
_BOLD_ITALIC = re.compile(r"'{2,}")
_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^>]*?/?>")
_HEADING = re.compile(r"^\s*(={1,6})\s*(.*?)\s*\1\s*$", re.MULTILINE)
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
    text = _DROPPED_BLOCKS.sub("", text)
    text = _REF_SELF_CLOSING.sub("", text)
    text = _REF_BLOCK.sub("", text)
    text = _REFERENCES_TAG.sub("", text)
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


def remove_templates_and_tables(text: str) -> str:
    """Drop every `{{template}}` and `{| table |}`, however they nest in each other.

    A `|}` closes a table only when a table is the innermost open construct, so `{{a|}}` (an empty
    template parameter) is read as a template. An opener that is never closed is dropped alone,
    keeping the text after it, rather than swallowing the rest of the article.
    """
    kept: list[str] = []
    stack: list[tuple[str, int]] = []
    keep_from = 0
    cursor = 0
    for match in _BRACKET_TOKEN.finditer(text):
        position = match.start()
        if position < cursor:
            continue
        token = match.group(1)
        if token in ("{{", "{|"):
            if not stack:
                kept.append(text[keep_from:position])
            stack.append((token, position))
        elif stack and (token, stack[-1][0]) in (("}}", "{{"), ("|}", "{|")):
            stack.pop()
            if not stack:
                keep_from = position + 2
        else:
            continue  # a closer with nothing to close: ordinary text
        cursor = position + 2
    if stack:
        kept.append(remove_templates_and_tables(text[stack[0][1] + 2 :]))
    else:
        kept.append(text[keep_from:])
    return "".join(kept)


def resolve_links(text: str) -> str:
    """`[[target|anchor]]` becomes `anchor`, `[[target]]` becomes `target`; files, images,
    categories and interlanguage links vanish. Innermost first, so nested captions resolve."""

    def replace(match: re.Match[str]) -> str:
        inner = match.group(1)
        if _DROPPED_LINK_TARGET.match(inner):
            return ""
        target, _, anchor = inner.partition("|")
        if anchor:
            return anchor.rpartition("|")[2] if "|" in anchor else anchor
        return target.split("#")[0] if not target.startswith("#") else target[1:]

    while True:
        text, count = _INNERMOST_LINK.subn(replace, text)
        if not count:
            return text
