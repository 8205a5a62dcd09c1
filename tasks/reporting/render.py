"""Report rendering: Markdown and self-contained HTML (embedded PNGs) from Jinja2 templates.

A report is data: a title, an intro, and sections holding paragraphs, tables and images.
``render_report`` turns it into both documents; ``write_report`` puts them (and the PNGs)
into the store under one prefix.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from tasks.core.store import Store, join


@dataclass
class Image:
    name: str           # file name, e.g. "curves-batch.png"
    png: bytes
    caption: str = ""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    code: str = ""
    subsections: list[Section] = field(default_factory=list)


@dataclass
class Report:
    title: str
    intro: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def images(self) -> list[Image]:
        out: list[Image] = []

        def walk(sections):
            for s in sections:
                out.extend(s.images)
                walk(s.subsections)

        walk(self.sections)
        return out


def fmt(value: Any, digits: int = 4) -> str:
    """Format a table cell: floats rounded, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _env():
    import jinja2

    loader = jinja2.FunctionLoader(
        lambda name: resources.files("reports").joinpath("templates", name).read_text())
    env = jinja2.Environment(loader=loader, autoescape=jinja2.select_autoescape(["html"]),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["slug"] = slug
    return env


def render_report(report: Report) -> tuple[str, str]:
    """Return ``(markdown, html)`` for ``report``. The HTML embeds every image."""
    env = _env()
    md = env.get_template("report.md.j2").render(report=report)
    html = env.get_template("report.html.j2").render(report=report)
    return md, html


def write_report(report: Report, store: Store, prefix: str) -> dict[str, str]:
    """Write report.md, report.html and the PNGs under ``prefix``; return their keys."""
    md, html = render_report(report)
    keys = {}
    for img in report.images():
        key = join(prefix, img.name)
        store.put_bytes(key, img.png)
        keys[img.name] = key
    store.put_text(join(prefix, "report.md"), md)
    store.put_text(join(prefix, "report.html"), html)
    keys["report.md"] = join(prefix, "report.md")
    keys["report.html"] = join(prefix, "report.html")
    return keys
