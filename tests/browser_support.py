"""Headless Chromium for the tests that look at a page: the browser's path, its offline
flags, and a probe that loads an HTML file and measures it (layout at a given width, images,
links, height) and prints it to PDF. Only chromium's own command-line switches are used
(``--dump-dom``, ``--print-to-pdf``, ``--screenshot``), so nothing beyond the browser is
needed; the flags keep it off the network."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def flags(profile_dir: Path, width: int = 1280, height: int = 900,
          budget_ms: int = 20000) -> list[str]:
    """Headless and offline (no sync, updates or background requests), a fresh profile."""
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile_dir}", f"--virtual-time-budget={budget_ms}",
            f"--window-size={width},{height}", "--hide-scrollbars"]


# Runs in the page once everything has loaded; its findings go into a base64 JSON attribute
# on <body>, which --dump-dom hands back.
PROBE = """<script>
window.addEventListener('load', () => {
  const doc = document.documentElement;
  const imgs = [...document.images];
  const targets = [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'));
  const wraps = [...document.querySelectorAll('.table-wrap, pre')];
  const wide = [...document.querySelectorAll('body *')].filter(
      e => e.getBoundingClientRect().right > doc.clientWidth + 1 &&
           !e.closest('.table-wrap, pre, details:not([open])'));
  const r = {
    viewport: doc.clientWidth, scroll_width: doc.scrollWidth, height: doc.scrollHeight,
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    hrefs: targets,
    missing_anchors: targets.filter(h => h.startsWith('#') &&
        !document.getElementById(decodeURIComponent(h.slice(1)))),
    scrolling_boxes: wraps.filter(w => w.scrollWidth > w.clientWidth + 1).map(
        w => w.textContent.slice(0, 80)),
    wide: wide.slice(0, 10).map(e => e.tagName + ' ' + (e.textContent || '').slice(0, 60)),
    sections: document.querySelectorAll('section, details').length,
    toc: document.querySelectorAll('nav.toc a').length,
  };
  document.body.dataset.probe = btoa(unescape(encodeURIComponent(JSON.stringify(r))));
});
</script>"""


def probe(html: str, work: Path, width: int = 1280) -> dict:
    """Load ``html`` (the text of a page) at ``width`` px and measure it: ``viewport``,
    ``scroll_width``, ``height`` (px), ``images`` and the ``broken`` ones, every ``hrefs``
    and the in-page ``missing_anchors``, ``scrolling_boxes`` (tables or code wider than
    their box), ``wide`` (elements past the right edge)."""
    work.mkdir(parents=True, exist_ok=True)
    page = work / "probe.html"
    page.write_text(html.replace("</body>", PROBE + "</body>"))
    res = subprocess.run([chromium(), *flags(work / "profile", width), "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=300)
    found = re.search(r'data-probe="([A-Za-z0-9+/=]+)"', res.stdout)
    assert found, f"the probe did not run: {res.stderr[-2000:]}"
    return json.loads(base64.b64decode(found.group(1)).decode())


def print_pdf(path: Path, work: Path) -> bytes:
    """Print the page at ``path`` to PDF the way a person would (no header/footer)."""
    pdf = work / "page.pdf"
    subprocess.run([chromium(), *flags(work / "profile-pdf"), f"--print-to-pdf={pdf}",
                    "--no-pdf-header-footer", path.as_uri()], capture_output=True, timeout=300)
    return pdf.read_bytes() if pdf.exists() else b""


def screenshot(path: Path, out: Path, width: int = 1280, height: int = 1600) -> Path:
    subprocess.run([chromium(), *flags(out.parent / "profile-shot", width, height),
                    f"--screenshot={out}", path.as_uri()], capture_output=True, timeout=300)
    return out
