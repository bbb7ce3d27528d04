"""Spellings of a prompt tag that a lenient model may read as the tag itself, and such a reader: what the
injection tests of synth and judge try against the delimiters, and how they check what got through."""

from __future__ import annotations

import html
import unicodedata


def closing_tag_variants(name: str) -> dict[str, str]:
    """Spellings of `</name>` (and one of `<name>`) that a model may read as the tag itself."""
    wide = "".join(chr(ord(c) + 0xFEE0) for c in name)  # full-width forms, which NFKC maps back to ASCII
    return {
        "exact": f"</{name}>", "upper": f"</{name.upper()}>",
        "spaces-inside": f"</ {name} >", "newline-before-bracket": f"</{name}\n>", "space-after-bracket": f"< /{name}>",
        "full-width-brackets": f"\uff1c/{name}\uff1e", "full-width-letters": f"</{wide}>",
        "small-form-brackets": f"\ufe64/{name}\ufe65", "angle-quotes": f"\u2039/{name}\u203a",
        "zero-width-joiner": f"</{name[:3]}\u200d{name[3:]}>", "zero-width-space": f"<\u200b/{name}>",
        "soft-hyphen": f"</{name[:4]}\u00ad{name[4:]}>", "html-entities": f"&lt;/{name}&gt;",
        "doubled-brackets": f"<</{name}>>", "backslash": f"<\\{name}>", "unterminated": f"</{name}\n",
        "space-for-underscore": f"</{name.replace('_', ' ')}>", "opening-upper": f"<{name.upper()}>",
    }


def lenient_reading(text: str) -> str:
    """The text as a reader that forgives case, spacing and look-alikes sees it: entities decoded, NFKC, lower case,
    angle quotes as brackets, no whitespace, zero-width or control characters, combining marks, `_` or `-`."""
    text = unicodedata.normalize("NFKC", html.unescape(text)).lower().translate(_READER_BRACKETS)
    return "".join(c for c in text if not c.isspace() and c not in "_-" and unicodedata.category(c) not in
                   ("Cf", "Cc", "Mn"))


_READER_BRACKETS = str.maketrans({"\u2039": "<", "\u203a": ">", "\u3008": "<", "\u3009": ">", "\\": "/"})
