"""HTML and markdown from the report's parts: the one place that turns text into markup, so every string a model
wrote (feedback, answers, rationales, error messages) is escaped here, once, and none can be forgotten.

The page is one file that opens offline: plots are inlined as PNG data URIs, there are no scripts, and the only
links are to the run's own files beside `report/`. Each part is a `<section id="...">` with a stable id.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any, NamedTuple


class Part(NamedTuple):
    """One top-level part of the report (Run, Data, ...): a stable HTML id, a heading and its sections."""

    id: str
    title: str
    sections: list[dict[str, Any]]


# C0 controls (but tab and newlines) and DEL are not allowed in HTML text; a random-weight model writes them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
section{border-top:2px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;max-width:100%}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top;overflow-wrap:break-word}th{background:#f4f4f4}code{background:#f4f4f4}
.example td{overflow-wrap:anywhere}
.warning{color:#a00;font-weight:bold}img{max-width:100%}
.example{border:1px solid #bbb;border-radius:6px;padding:.2em 1em 1em;margin:1.2em 0}
.side{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:.8em}
.side>div{background:#fafafa;border:1px solid #ddd;border-radius:4px;padding:.3em .7em}
.text{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.92em}
h4{margin:.4em 0}
"""


def text(value: Any, *, quote: bool = True) -> str:
    """Any value as HTML text: escaped, control characters shown as `\\xNN` instead of being dropped."""
    return html.escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value)), quote=quote)


def render_html(parts: list[Part], run_dir: Path, run_files: list[str]) -> str:
    links = " · ".join(f'<a href="../{text(name)}">{text(name)}</a>' for name in run_files)
    body = [f"<h1>sefl-ray report: {text(run_dir)}</h1>", f"<p>{links}</p>" if links else ""]
    for part in parts:
        body.append(f'<section id="{text(part.id)}"><h2>{text(part.title)}</h2>')
        body.extend(_section_html(sec) for sec in part.sections)
        body.append("</section>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>sefl-ray report</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")


def _section_html(sec: dict[str, Any]) -> str:
    out = [f"<h3>{text(sec['title'])}</h3>"]
    css = ' class="warning"' if sec.get("warning") else ""
    out.append(f"<p{css}>{_note_html(sec['note'])}</p>")
    if sec.get("table"):
        out.append(_table_html(*sec["table"]))
    if sec.get("plot"):
        data = base64.b64encode(sec["plot"]).decode()
        out.append(f'<img alt="{text(sec["title"])}" src="data:image/png;base64,{data}">')
    for number, example in enumerate(sec.get("examples") or [], 1):
        out.append(_example_html(number, example))
    return "".join(out)


def _note_html(note: str) -> str:
    """A note's `code spans` as <code>, after escaping (a backtick is not markup, so nothing else can open one)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text(note))


def _table_html(header: list[Any], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{text(h)}</th>" for h in header)
    lines = "".join("<tr>" + "".join(f"<td>{text(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{lines}</table>"


def _example_html(number: int, example: dict[str, Any]) -> str:
    out = [f'<article class="example" id="example-{number}">',
           f"<h4>Example {number}: item {text(example['item_id'])}</h4>", '<div class="side">',
           *(f'<div class="{kind}"><h4>{text(label)}</h4><div class="text">{text(body)}</div></div>'
             for kind, label, body in example["texts"]),
           '</div><div class="side">',
           *(f'<div class="feedback" data-system="{text(system)}"><h4>{text(label)}</h4>'
             f'<div class="text">{text(body)}</div></div>' for system, label, body in example["feedback"]),
           "</div>"]
    out += [_table_html(*table) for table in example["tables"]]
    if example["note"]:
        out.append(f"<p>{text(example['note'])}</p>")
    out.append("</article>")
    return "".join(out)


def render_markdown(parts: list[Part], run_dir: Path, run_files: list[str]) -> str:
    """The same content as markdown; model text stays escaped, since markdown viewers render raw HTML."""
    lines = [f"# sefl-ray report: {run_dir}", ""]
    if run_files:
        lines += [" · ".join(f"[{name}](../{name})" for name in run_files), ""]
    for part in parts:
        lines += [f"## {part.title}", ""]
        for sec in part.sections:
            lines += [f"### {sec['title']}", "", _md(sec["note"]), ""]
            if sec.get("table"):
                lines += _table_markdown(*sec["table"])
            for number, example in enumerate(sec.get("examples") or [], 1):
                lines += _example_markdown(number, example)
    return "\n".join(lines)


def _table_markdown(header: list[Any], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows] + [""]


def _example_markdown(number: int, example: dict[str, Any]) -> list[str]:
    lines = [f"#### Example {number}: item `{_md(example['item_id'])}`", ""]
    for _, label, body in example["texts"] + example["feedback"]:
        lines += [f"**{_md(label)}**", "", *(f"> {line}" for line in _md(body).splitlines() or [""]), ""]
    for table in example["tables"]:
        lines += _table_markdown(*table)
    return lines + ([_md(example["note"]), ""] if example["note"] else [])


def _md(value: Any) -> str:
    """Markdown text: `&`, `<` and `>` escaped (markdown passes raw HTML through), quotes left readable."""
    return text(value, quote=False)


def _cell(value: Any) -> str:
    return _md(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")
