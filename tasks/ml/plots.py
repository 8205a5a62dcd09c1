"""Plots as PNG bytes (matplotlib, Agg backend, no display): curves, bars, confusion matrices."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(*args, **kwargs)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def curves(histories: Mapping[str, Sequence[Mapping]],
           metrics: Sequence[str] = ("loss", "accuracy"),
           splits: Sequence[str] = ("train", "dev", "test"), title: str = "",
           reference: Mapping[str, Sequence[float]] | None = None) -> bytes:
    """One panel per metric; a colour per run, a line style per split (train solid)."""
    from matplotlib.ticker import MaxNLocator

    plt, fig, axes = _figure(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    styles = {"train": "-", "dev": "--", "test": ":"}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, (name, hist) in enumerate(histories.items()):
            for split in splits:
                key = f"{split}/{metric}"
                ys = [h[key] for h in hist if key in h]
                if ys:
                    xs = [h["epoch"] for h in hist if key in h]
                    ax.plot(xs, ys, styles.get(split, "-"), color=colours[i % len(colours)],
                            marker="o", markersize=3, label=f"{name} {split}")
        for name, ys in (reference or {}).items():
            if metric in name:
                ax.plot(range(1, len(ys) + 1), ys, "k-.", marker="x", label=f"{name} (reference)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _png(plt, fig)


def bars(values: Mapping[str, float], ylabel: str, title: str = "", fmt: str = "{:.3g}",
         errors: Mapping[str, float] | None = None) -> bytes:
    """A bar per entry, labelled with its value; ``errors`` adds error bars (e.g. std)."""
    plt, fig, ax = _figure(figsize=(max(4, 1.1 * len(values) + 2), 3.6))
    names = list(values)
    vals = [values[n] for n in names]
    yerr = [errors.get(n, 0.0) for n in names] if errors else None
    rects = ax.bar(names, vals, color="#4c72b0", yerr=yerr, capsize=4 if yerr else 0)
    for r, v in zip(rects, vals, strict=True):
        ax.annotate(fmt.format(v), (r.get_x() + r.get_width() / 2, r.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=20)
    return _png(plt, fig)


def grouped_bars(table: Mapping[str, Mapping[str, float]], ylabel: str = "",
                 title: str = "") -> bytes:
    """Bars grouped by row (e.g. run) with one bar per column (e.g. accuracy, precision...)."""
    plt, fig, ax = _figure(figsize=(max(5, 1.6 * len(table) + 2), 3.8))
    rows = list(table)
    cols = list(next(iter(table.values()))) if table else []
    width = 0.8 / max(len(cols), 1)
    x = np.arange(len(rows))
    for j, col in enumerate(cols):
        ax.bar(x + j * width - 0.4 + width / 2, [table[r][col] for r in rows], width, label=col)
    ax.set_xticks(x, rows, rotation=15)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=min(len(cols), 4))
    ax.grid(axis="y", alpha=0.3)
    return _png(plt, fig)


def per_class(metrics: Mapping[str, Sequence[float]], classes: Sequence[str],
              title: str = "") -> bytes:
    """Per-class bars for several metrics (e.g. precision and recall)."""
    return grouped_bars({c: {m: float(v[i]) for m, v in metrics.items()}
                         for i, c in enumerate(classes)}, "score", title)


def confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> bytes:
    """A confusion matrix heat map with counts."""
    arr = np.asarray(cm)
    plt, fig, ax = _figure(figsize=(6, 5.2))
    im = ax.imshow(arr, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    thresh = arr.max() / 2 if arr.size else 0
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            ax.text(j, i, str(arr[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if arr[i, j] > thresh else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    return _png(plt, fig)


def line(xs: Sequence[float], series: Mapping[str, Sequence[float]], xlabel: str, ylabel: str,
         title: str = "", markers: Mapping[str, tuple[float, float]] | None = None) -> bytes:
    """Lines over a numeric x (e.g. accuracy vs dropout); ``markers`` adds labelled points."""
    plt, fig, ax = _figure(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    for name, (x, y) in (markers or {}).items():
        ax.plot([x], [y], "k*", markersize=12, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def image_grid(images: np.ndarray, titles: Sequence[str], ncols: int = 5, title: str = "",
               wrong: Sequence[bool] | None = None) -> bytes:
    """A grid of RGB images (``[N, H, W, 3]`` or ``[N, 3, H, W]`` uint8) with a title each.

    ``wrong[i]`` draws image i's title in red (e.g. a misclassified sample), else green.
    """
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(0, 2, 3, 1)
    n = len(arr)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    lines = max((str(t).count("\n") + 1 for t in titles), default=1)
    plt, fig, axes = _figure(nrows, ncols, squeeze=False,
                             figsize=(2.1 * ncols, (2.05 + 0.16 * lines) * nrows + 0.4))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(arr[i])
            colour = "black" if wrong is None else ("red" if wrong[i] else "green")
            ax.set_title(titles[i], fontsize=7, color=colour)
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(plt, fig)


def histogram(counts: Sequence[float], edges: Sequence[float], xlabel: str, title: str = "",
              marks: Mapping[str, float] | None = None) -> bytes:
    """A histogram from precomputed ``counts`` over bin ``edges``; ``marks`` adds labelled
    vertical lines (e.g. the minimum and maximum)."""
    plt, fig, ax = _figure(figsize=(6.5, 3.8))
    edges = np.asarray(edges, dtype=float)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0")
    for i, (name, x) in enumerate((marks or {}).items()):
        ax.axvline(x, color=f"C{i + 1}", linestyle="--", label=f"{name} = {x:.4f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if marks:
        ax.legend(fontsize=8)
    return _png(plt, fig)


def confusion_delta(delta: Sequence[Sequence[int]], classes: Sequence[str],
                    title: str = "") -> bytes:
    """The difference of two confusion matrices (B - A) on a diverging scale: more in B red,
    fewer in B blue, zero white; each cell labelled with its signed count."""
    arr = np.asarray(delta)
    plt, fig, ax = _figure(figsize=(6, 5.2))
    lim = max(1, int(np.abs(arr).max()) if arr.size else 1)
    im = ax.imshow(arr, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            if arr[i, j]:
                ax.text(j, i, f"{arr[i, j]:+d}", ha="center", va="center", fontsize=6,
                        color="white" if abs(arr[i, j]) > lim / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    return _png(plt, fig)


def side_by_side(left: bytes | None, right: bytes | None, labels: Sequence[str],
                 height: int = 420) -> bytes:
    """Two images (PNG/JPEG bytes; None: a blank panel saying so) scaled to one height,
    side by side under their labels."""
    from PIL import Image, ImageDraw, ImageFont

    panels = []
    for data in (left, right):
        if data is None:
            panels.append(None)
            continue
        img = Image.open(io.BytesIO(data)).convert("RGB")
        scale = height / img.height
        panels.append(img.resize((max(1, round(img.width * scale)), height),
                                 Image.Resampling.LANCZOS))
    blank_w = max((p.width for p in panels if p is not None), default=height)
    panels = [p if p is not None else Image.new("RGB", (blank_w, height), (235, 235, 235))
              for p in panels]
    gap, top = 12, 26
    out = Image.new("RGB", (sum(p.width for p in panels) + gap, height + top), "white")
    draw = ImageDraw.Draw(out)
    try:
        font = ImageFont.load_default(size=16)
    except TypeError:  # Pillow < 10.1: one fixed size
        font = ImageFont.load_default()
    x = 0
    for data, panel, label in zip((left, right), panels, labels, strict=True):
        out.paste(panel, (x, top))
        draw.text((x + 4, 4), label if data is not None else f"{label}: (none)", fill="black",
                  font=font)
        x += panel.width + gap
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def trend(labels: Sequence[str], values: Sequence[float | None], ylabel: str, title: str = "",
          champion: Sequence[float | None] | None = None,
          promoted: Sequence[bool] | None = None,
          regressions: Sequence[bool] | None = None) -> bytes:
    """A metric over runs (oldest first, x labelled with ``labels``): the champion's value
    before each run as a step line, champion changes as stars, regressions as red crosses."""
    plt, fig, ax = _figure(figsize=(max(6, 0.45 * len(labels) + 3), 4))
    xs = np.arange(len(labels))
    ys = np.array([np.nan if v is None else v for v in values], dtype=float)
    ax.plot(xs, ys, marker="o", color="#4c72b0", label=ylabel)
    if champion is not None:
        champ = np.array([np.nan if v is None else v for v in champion], dtype=float)
        ax.step(xs, champ, where="mid", color="grey", linestyle="--",
                label="champion before the run")
    if promoted is not None and any(promoted):
        sel = np.array(promoted, dtype=bool)
        ax.plot(xs[sel], ys[sel], "*", color="#e6a000", markersize=14, label="new champion")
    if regressions is not None and any(regressions):
        sel = np.array(regressions, dtype=bool)
        ax.plot(xs[sel], ys[sel], "X", color="#c0392b", markersize=11, label="regression")
    ax.set_xticks(xs, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)
