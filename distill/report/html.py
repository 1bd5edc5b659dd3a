"""HTML building blocks of the reports: one self-contained page, tables and figures, every text from
a file escaped (a recipe or class name is data, never markup)."""
from __future__ import annotations

import base64
import datetime as dt
import json
from html import escape
from typing import Any

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #1b1b1b; background: #fff; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.7em; text-align: right; }
th { background: #eef1f5; } td.text, th.text { text-align: left; }
.note { background: #fff6d8; border-left: 4px solid #e0a800; padding: 0.5em 1em; }
.bad { color: #b00020; font-weight: bold; } .good { color: #0a7a2f; font-weight: bold; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f5f5f5; padding: 1em; overflow-x: auto; font-size: 0.9em; }
nav a { margin-right: 1em; }
"""


def page(title: str, body: list[str]) -> str:
    """A whole HTML document: no script, no external font, style and images inline."""
    made = dt.datetime.now().isoformat(timespec="seconds")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{escape(title)}</h1>\n<p class=\"made\">made by distill report, {made}</p>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def section(title: str, anchor: str, parts: list[str]) -> str:
    return f"<section id=\"{escape(anchor)}\">\n<h2>{escape(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def para(text: str, cls: str = "") -> str:
    klass = f" class=\"{cls}\"" if cls else ""
    return f"<p{klass}>{escape(text)}</p>"


def note(lines: list[str]) -> str:
    return "<div class=\"note\">" + "<br>".join(escape(line) for line in lines) + "</div>"


class Cell:
    """A table cell: shown text, and optionally the exact value it shows (tests read `data-value`)."""

    def __init__(self, text: Any, value: Any = None, key: str = "", row: str = "", cls: str = "") -> None:
        self.text, self.value, self.key, self.row, self.cls = str(text), value, key, row, cls

    def html(self) -> str:
        attrs = f" class=\"{escape(self.cls)}\"" if self.cls else ""
        if self.key:
            attrs += (f" data-row=\"{escape(self.row)}\" data-key=\"{escape(self.key)}\""
                      f" data-value=\"{escape(json.dumps(self.value))}\"")
        return f"<td{attrs}>{escape(self.text)}</td>"


def table(headers: list[str], rows: list[list[Any]], table_id: str = "") -> str:
    """A table; a row item is a Cell or anything printable (the first column reads as text)."""
    ident = f" id=\"{escape(table_id)}\"" if table_id else ""
    head = "".join(f"<th class=\"{'text' if i == 0 else ''}\">{escape(h)}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = [c if isinstance(c, Cell) else Cell(c, cls="text" if i == 0 else "") for i, c in enumerate(row)]
        body.append("<tr>" + "".join(c.html() for c in cells) + "</tr>")
    return f"<table{ident}>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>"


def figure(svg: str, caption: str) -> str:
    """An SVG as an <img> with a data: URL: inline, yet in its own document, so the ids of two
    figures never clash."""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return (f"<figure><img alt=\"{escape(caption)}\" src=\"data:image/svg+xml;base64,{data}\">"
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def link(href: str, text: str) -> str:
    """A link to a file beside the report (relative: the page still opens from the file system)."""
    return f"<a href=\"{escape(href)}\">{escape(text)}</a>"


def pre(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def percent(x: Any, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%" if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"
