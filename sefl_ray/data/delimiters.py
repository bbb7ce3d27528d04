"""Untrusted text inside our prompt tags: no spelling of a tag, however disguised, closes its block or opens one.

Synthesis puts the student's answer between `<student_answer>` tags and judging puts each feedback between its own,
and both tell the model that what is inside is material, never instructions. A model reads tags leniently:
`</STUDENT_ANSWER>`, `</ student_answer >`, `< /student_answer>`, a full-width `＜/student_answer＞`, one with a
zero-width joiner inside or `&lt;/student_answer&gt;` close the block as well as the real tag does.
`neutralize_tags` reads the text the way such a reader does (entities decoded, NFKC, case folded, angle-bracket and
slash look-alikes as `<`, `>` and `/`; whitespace, invisible characters, combining marks, `_` and `-` skipped) and
rewrites every closing tag of a given name (and every complete opening one) as `[/name]` (`[name]`), which no reader
takes for a tag. Text with nothing tag-like in it comes back unchanged.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

# Look-alikes NFKC leaves alone (it already maps full-width ＜／＞ and the small forms ﹤﹥ to ASCII).
_AS_ASCII = {"‹": "<", "〈": "<", "⟨": "<", "˂": "<", "ᐸ": "<", "❮": "<",
             "›": ">", "〉": ">", "⟩": ">", "˃": ">", "ᐳ": ">", "❯": ">",
             "\\": "/", "⁄": "/", "∕": "/", "⧸": "/", "╱": "/"}
# What can start a tag at all: a text without one of these is returned as it is, without being read.
_MAY_OPEN = re.compile("[<&\uFE64\uFF1C\u2329" + "".join(c for c, a in _AS_ASCII.items() if a == "<") + "]")
_ENTITY = re.compile(r"&(?:lt|gt|#0*6[02]|#x0*3[ce]);?", re.IGNORECASE)
_SKIPPED_CATEGORIES = {"Cc", "Cf", "Mn", "Me", "Pc", "Pd"}  # controls, zero-width/format, marks, `_`, dashes
_INVISIBLE_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}  # Hangul fillers, blank braille
_MAX_PUNCTUATION = 8  # non-word characters allowed between `<`, the name and `>`, as in `<!-- /name -->`


def neutralize_tags(text: str, names: Iterable[str]) -> str:
    """`text` with every closing tag of one of `names` (and every opening one that ends in `>`), in any spelling a
    lenient reader would accept, rewritten in square brackets. Unterminated closing tags (`</name` and then text)
    count too; an opening tag without its `>` opens nothing and is left alone."""
    if not _MAY_OPEN.search(text):
        return text
    pattern, canonical = _tag_pattern(tuple(names))
    # Each pass replaces at least one `<` and adds none, so the loop ends; it ends when a reader finds no tag.
    while _tags(pattern, "".join(map(_read_char, _ENTITY.sub(_decode, text)))):
        reading, spans = _reading(text)
        for match in reversed(_tags(pattern, reading)):  # right to left: earlier spans stay where they are
            start, end = spans[match.start()][0], spans[match.end() - 1][1]
            slash = "/" if "/" in match.group("before") else ""
            text = f"{text[:start]}[{slash}{canonical[match.group('name')]}]{text[end:]}"
    return text


def _tags(pattern: re.Pattern[str], reading: str) -> list[re.Match[str]]:
    """Closing tags, terminated or not, and opening tags that end in `>`."""
    return [m for m in pattern.finditer(reading) if "/" in m.group("before") or m.group("after")]


@lru_cache(maxsize=32)
def _tag_pattern(names: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    canonical = {_reading(name)[0]: name for name in names}
    alternatives = "|".join(re.escape(read) for read in sorted(canonical, key=len, reverse=True))
    gap = rf"[^\w<>]{{0,{_MAX_PUNCTUATION}}}"
    return re.compile(rf"<(?P<before>{gap}?)(?P<name>{alternatives})(?P<after>{gap}?>)?"), canonical


def _reading(text: str) -> tuple[str, list[tuple[int, int]]]:
    """What a lenient reader sees in `text`, and for each of its characters the span of `text` it came from."""
    seen: list[str] = []
    spans: list[tuple[int, int]] = []
    position = 0
    while position < len(text):
        entity = _ENTITY.match(text, position) if text[position] == "&" else None
        end = entity.end() if entity else position + 1
        for char in _read_char(_decode(entity) if entity else text[position]):
            seen.append(char)
            spans.append((position, end))
        position = end
    return "".join(seen), spans


def _decode(entity: re.Match[str]) -> str:
    return html.unescape(entity.group())


@lru_cache(maxsize=8192)
def _read_char(char: str) -> str:
    """One character (or a decoded entity) as the reader sees it: normalized, folded, or nothing at all."""
    read = (_AS_ASCII.get(c, c) for c in unicodedata.normalize("NFKC", char).casefold())
    return "".join(c for c in read if not (c.isspace() or c in _INVISIBLE_LETTERS
                                           or unicodedata.category(c) in _SKIPPED_CATEGORIES))
