"""Report rendering: Markdown and self-contained HTML (embedded images) from Jinja2 templates.

A report is data: a title, an intro, and sections holding paragraphs, tables and images.
``render_report`` turns it into both documents; ``write_report`` puts them (the images, and
``report.json``: the report's title, "why it may differ" text and figure captions, which the
final report reads) into the store under one prefix.

Both documents open with a table of contents. Paragraphs take a little inline Markdown
(``code``, **bold**, [text](link)), which the HTML renders. Table cells are formatted by
kind (:func:`fmt`): fractions as percentages, seconds as durations, counts as integers.
A report with ``compact`` set embeds each image at its display size (plots as palette PNG,
photos as JPEG), which keeps a report with dozens of figures to a few megabytes.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core.store import Store, join

MAX_DISPLAY_WIDTH = 1040  # CSS px: the report's column (1100 px less its padding)


@dataclass
class Link:
    """A link in a table cell (Markdown ``[text](href)``, HTML ``<a>``)."""

    text: str
    href: str

    def __str__(self) -> str:
        return self.text


@dataclass
class Image:
    name: str           # file name, e.g. "curves-batch.png"
    png: bytes          # the stored file: a PNG (plots, panels) or a JPEG
    caption: str = ""   # what the figure shows, in words
    photo: bool = False  # a photo or a grid of photos: embedded as JPEG in compact reports
    detail: bool = False  # secondary (e.g. one cell of a sweep): collapsed in the final report
    width: int | None = None  # display width (CSS px); default: its own, at most the column
    _embed: tuple[str, str, int, int] | None = field(default=None, repr=False, compare=False)

    @property
    def mime(self) -> str:
        return "image/jpeg" if self.png[:3] == b"\xff\xd8\xff" else "image/png"

    @property
    def data_uri(self) -> str:
        """The stored bytes, as they are."""
        return f"data:{self.mime};base64," + base64.b64encode(self.png).decode()

    def size(self) -> tuple[int, int]:
        from PIL import Image as PILImage

        with PILImage.open(io.BytesIO(self.png)) as im:
            return im.size

    def display_size(self) -> tuple[int, int]:
        w, h = self.size()
        dw = min(self.width or w, w, MAX_DISPLAY_WIDTH)
        return dw, max(1, round(h * dw / w))

    def compact(self) -> tuple[str, int, int]:
        """``(data URI, width, height)`` at display size: plots as palette PNG (when that is
        smaller than the stored file), photos as JPEG (quality 85)."""
        if self._embed is None:
            from PIL import Image as PILImage

            dw, dh = self.display_size()
            with PILImage.open(io.BytesIO(self.png)) as im:
                im.load()
                resized = im.size != (dw, dh)
                if im.mode in ("RGBA", "LA", "P"):
                    rgba = im.convert("RGBA")
                    im = PILImage.new("RGB", rgba.size, "white")
                    im.paste(rgba, mask=rgba.getchannel("A"))
                else:
                    im = im.convert("RGB")
                if resized:
                    im = im.resize((dw, dh), PILImage.Resampling.LANCZOS)
                buf = io.BytesIO()
                if self.photo:
                    im.save(buf, "JPEG", quality=85, optimize=True, progressive=True)
                    mime = "image/jpeg"
                else:
                    im.quantize(colors=256, method=PILImage.Quantize.MEDIANCUT,
                                dither=PILImage.Dither.NONE).save(buf, "PNG", optimize=True)
                    mime = "image/png"
            data = buf.getvalue()
            if not resized and len(self.png) <= len(data) and not self.photo:
                data, mime = self.png, self.mime
            self._embed = (f"data:{mime};base64," + base64.b64encode(data).decode(), mime,
                           dw, dh)
        uri, _, w, h = self._embed
        return uri, w, h


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    formats: list[str | None] | None = None  # a kind per column, see ``fmt``


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    code: str = ""
    subsections: list[Section] = field(default_factory=list)
    collapsed: bool = False  # HTML: a <details> block, closed until clicked
    grid: bool = False       # images side by side where they fit (small multiples)
    id: str = ""             # anchor; render_report makes every id unique


@dataclass
class Report:
    title: str
    intro: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    why: str = ""            # why our numbers may differ from the reference's (report.json)
    compact: bool = False    # embed images at display size (see Image.compact)
    toc: bool = True

    def images(self) -> list[Image]:
        return [img for s in walk(self.sections) for img in s.images]


def walk(sections: list[Section]):
    """Every section, depth first."""
    for s in sections:
        yield s
        yield from walk(s.subsections)


# ---------------------------------------------------------------- formatting

def duration(seconds: float) -> str:
    """Seconds as a person reads them: ``0.42 s``, ``12.3 s``, ``4 min 10 s``, ``1 h 16 min``,
    ``7 days`` (the two largest units, zeros dropped)."""
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 3600:
        big, small = (s // 60, "min"), (s % 60, "s")
    elif s < 86400:
        big, small = (s // 3600, "h"), (s % 3600 // 60, "min")
    else:
        days = s // 86400
        big, small = (days, "day" if days == 1 else "days"), (s % 86400 // 3600, "h")
    return f"{big[0]} {big[1]}" + (f" {small[0]} {small[1]}" if small[0] else "")


KINDS = ("pct", "pts", "time", "count", "score", "choice", "text")


def fmt(value: Any, kind: str | None = None, digits: int = 4) -> str:
    """Format a value by kind: ``pct`` a fraction as a percentage (``91.38 %``), ``pts``
    percentage points (``+1.25 pts``), ``time`` seconds as a duration, ``count`` an integer
    (``11,689,512``), ``score`` three decimals (mAP, P, R), ``choice``/``text`` as is.
    Without a kind: floats rounded to ``digits``. None is an em dash."""
    if value is None:
        return "—"
    if isinstance(value, Link):
        return value.text
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if number and kind == "pct":
        return f"{100 * value:.2f} %"
    if number and kind == "pts":
        return f"{value:+.2f} pts"
    if number and kind == "time":
        return duration(float(value))
    if number and kind == "count":
        return f"{int(round(value)):,}"
    if number and kind == "score":
        return f"{value:.3f}"
    if number and kind in ("choice", "text"):  # a chosen setting: as it is written (0.4)
        return f"{value:g}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metric_kind(name: str | None) -> str | None:
    """The kind of a metric from its name: accuracies and shares are ``pct``, times
    ``time``, P/R/mAP/F1 ``score``, parameters, epochs and images ``count``."""
    if not name:
        return None
    n = name.lower()
    if "points" in n:
        return "pts"
    if any(w in n for w in ("accuracy", "share", "fraction")):
        return "pct"
    if "time" in n or n.endswith("_s"):
        return "time"
    if any(w in n for w in ("map", "precision", "recall", "f1")) or re.search(r"\b[pr]$", n):
        return "score"
    if any(w in n for w in ("param", "epochs", "images", "objects", "instances", "count",
                            "misclassified")):
        return "count"
    return None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\[([^\]]+)\]\(([^)\s]+)\)")
_SAFE_HREF = re.compile(r"^(?:https?://|file://|#|\.{0,2}/|[\w.-]+(?:/|$))", re.I)


def inline(text: str):
    """Paragraph text to HTML: escaped, with ``code``, **bold** and [text](href) links
    (http, https, file, in-page and relative links only)."""
    from markupsafe import Markup, escape

    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(escape(text[pos:m.start()]))
        code, bold, label, href = m.groups()
        if code is not None:
            out.append(Markup("<code>%s</code>") % code)
        elif bold is not None:
            out.append(Markup("<strong>%s</strong>") % bold)
        elif _SAFE_HREF.match(href) and not href.lower().startswith("javascript:"):
            out.append(Markup('<a href="%s">%s</a>') % (href, label))
        else:
            out.append(escape(m.group(0)))
        pos = m.end()
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def _cell_html(value: Any, kind: str | None = None):
    from markupsafe import Markup

    if isinstance(value, Link):
        return Markup('<a href="%s">%s</a>') % (value.href, value.text)
    return fmt(value, kind)


_NUMERIC = re.compile(r"^[-+−]?\d[\d,]*(\.\d+)?( ?(%|pts|x|s|min|h|days?)( \d+ (s|min|h))?)?$")


def _td_attrs(value: Any, kind: str | None = None):
    """`` class="num"`` for a cell that reads as a number (right-aligned), else nothing."""
    from markupsafe import Markup

    if isinstance(value, bool | Link):
        return Markup("")
    return Markup(' class="num"') if _NUMERIC.match(fmt(value, kind)) else Markup("")


def _cell_md(value: Any, kind: str | None = None) -> str:
    if isinstance(value, Link):
        return f"[{value.text}]({value.href})"
    return fmt(value, kind).replace("|", "\\|").replace("\n", " ")


def _kind(table: Table, i: int) -> str | None:
    return table.formats[i] if table.formats and i < len(table.formats) else None


def template_dir() -> Path:
    """The ``reports`` package's ``templates/`` folder. Looked up among every location of the
    package: a ``reports/`` folder in the working directory (``reports/out``, where the CLI
    copies the final report) can join the package's search path, and must not hide ours."""
    spec = importlib.util.find_spec("reports")
    beside = Path(__file__).resolve().parents[2] / "reports"  # installed beside ``tasks``
    for location in [*((spec.submodule_search_locations or []) if spec else []), beside]:
        folder = Path(location) / "templates"
        if (folder / "report.html.j2").is_file():
            return folder
    raise FileNotFoundError("the report templates (reports/templates/*.j2) are not installed: "
                            "reinstall visionflows (pip install -e .)")


def _env():
    import jinja2

    folder = template_dir()
    loader = jinja2.FunctionLoader(lambda name: (folder / name).read_text())
    env = jinja2.Environment(loader=loader, autoescape=jinja2.select_autoescape(["html"]),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["slug"] = slug
    env.filters["inline"] = inline
    env.filters["cell_html"] = _cell_html
    env.filters["cell_md"] = _cell_md
    env.filters["td_attrs"] = _td_attrs
    env.globals["kind"] = _kind
    return env


def assign_ids(report: Report) -> None:
    """Give every section a unique anchor (its title's slug, then ``-2``, ``-3``...)."""
    seen: dict[str, int] = {}
    for s in walk(report.sections):
        base = s.id or slug(s.title)
        seen[base] = seen.get(base, 0) + 1
        s.id = base if seen[base] == 1 else f"{base}-{seen[base]}"


def render_report(report: Report) -> tuple[str, str]:
    """Return ``(markdown, html)`` for ``report``. The HTML embeds every image."""
    assign_ids(report)
    env = _env()
    md = env.get_template("report.md.j2").render(report=report)
    html = env.get_template("report.html.j2").render(report=report)
    return md, html


def report_index(report: Report, prefix: str) -> dict[str, Any]:
    """What other reports need to know of this one (``report.json``): the title, the
    why-they-may-differ text, and every figure's key, caption and role."""
    figures = []
    for s in walk(report.sections):
        for img in s.images:
            w, h = img.display_size()
            figures.append({"name": img.name, "key": join(prefix, img.name),
                            "caption": img.caption, "section": s.title, "photo": img.photo,
                            "detail": img.detail, "width": w, "height": h})
    return {"title": report.title, "why": report.why, "figures": figures}


def write_report(report: Report, store: Store, prefix: str) -> dict[str, str]:
    """Write report.md, report.html, report.json and the images under ``prefix``; return
    their keys."""
    md, html = render_report(report)
    keys = {}
    for img in report.images():
        key = join(prefix, img.name)
        store.put_bytes(key, img.png)
        keys[img.name] = key
    store.put_text(join(prefix, "report.json"),
                   json.dumps(report_index(report, prefix), indent=2))
    store.put_text(join(prefix, "report.md"), md)
    store.put_text(join(prefix, "report.html"), html)
    for name in ("report.json", "report.md", "report.html"):
        keys[name] = join(prefix, name)
    return keys
