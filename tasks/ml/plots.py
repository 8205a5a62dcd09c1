"""Plots as PNG bytes (matplotlib, Agg backend, no display): curves, bars, confusion matrices."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np


def new_figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(*args, **kwargs)


def png_bytes(plt, fig) -> bytes:
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

    plt, fig, axes = new_figure(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
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
    return png_bytes(plt, fig)


def bars(values: Mapping[str, float], ylabel: str, title: str = "", fmt: str = "{:.3g}",
         errors: Mapping[str, float] | None = None) -> bytes:
    """A bar per entry, labelled with its value; ``errors`` adds error bars (e.g. std)."""
    plt, fig, ax = new_figure(figsize=(max(4, 1.1 * len(values) + 2), 3.6))
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
    return png_bytes(plt, fig)


def grouped_bars(table: Mapping[str, Mapping[str, float]], ylabel: str = "",
                 title: str = "") -> bytes:
    """Bars grouped by row (e.g. run) with one bar per column (e.g. accuracy, precision...)."""
    plt, fig, ax = new_figure(figsize=(max(5, 1.6 * len(table) + 2), 3.8))
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
    return png_bytes(plt, fig)


def per_class(metrics: Mapping[str, Sequence[float]], classes: Sequence[str],
              title: str = "") -> bytes:
    """Per-class bars for several metrics (e.g. precision and recall)."""
    return grouped_bars({c: {m: float(v[i]) for m, v in metrics.items()}
                         for i, c in enumerate(classes)}, "score", title)


def confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> bytes:
    """A confusion matrix heat map with counts."""
    arr = np.asarray(cm)
    plt, fig, ax = new_figure(figsize=(6, 5.2))
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
    return png_bytes(plt, fig)


def line(xs: Sequence[float], series: Mapping[str, Sequence[float]], xlabel: str, ylabel: str,
         title: str = "", markers: Mapping[str, tuple[float, float]] | None = None) -> bytes:
    """Lines over a numeric x (e.g. accuracy vs dropout); ``markers`` adds labelled points."""
    plt, fig, ax = new_figure(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    for name, (x, y) in (markers or {}).items():
        ax.plot([x], [y], "k*", markersize=12, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(plt, fig)


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
    plt, fig, axes = new_figure(nrows, ncols, squeeze=False,
                             figsize=(2.1 * ncols, (2.05 + 0.16 * lines) * nrows + 0.4))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(arr[i])
            colour = "black" if wrong is None else ("red" if wrong[i] else "green")
            ax.set_title(titles[i], fontsize=7, color=colour)
    if title:
        fig.suptitle(title, fontsize=10)
    return png_bytes(plt, fig)


def histogram(counts: Sequence[float], edges: Sequence[float], xlabel: str, title: str = "",
              marks: Mapping[str, float] | None = None) -> bytes:
    """A histogram from precomputed ``counts`` over bin ``edges``; ``marks`` adds labelled
    vertical lines (e.g. the minimum and maximum)."""
    plt, fig, ax = new_figure(figsize=(6.5, 3.8))
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
    return png_bytes(plt, fig)


def confusion_delta(delta: Sequence[Sequence[int]], classes: Sequence[str],
                    title: str = "") -> bytes:
    """The difference of two confusion matrices (B - A) on a diverging scale: more in B red,
    fewer in B blue, zero white; each cell labelled with its signed count."""
    arr = np.asarray(delta)
    plt, fig, ax = new_figure(figsize=(6, 5.2))
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
    return png_bytes(plt, fig)


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
    plt, fig, ax = new_figure(figsize=(max(6, 0.45 * len(labels) + 3), 4))
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
    return png_bytes(plt, fig)


def confusion_grid(matrices: Mapping[str, Sequence[Sequence[int]]], classes: Sequence[str],
                   title: str = "", ncols: int = 4) -> bytes:
    """Small multiples of confusion matrices on one colour scale: each cell is the share of
    its true class (row-normalised), so panels of runs with different test sizes compare."""
    names = list(matrices)
    n = max(len(names), 1)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    plt, fig, axes = new_figure(nrows, ncols, squeeze=False,
                             figsize=(2.6 * ncols + 0.8, 2.6 * nrows + 0.6))
    im = None
    for i, (ax, name) in enumerate(zip(axes.flat, names, strict=False)):
        arr = np.asarray(matrices[name], dtype=float)
        rows = arr.sum(axis=1, keepdims=True)
        share = np.divide(arr, rows, out=np.zeros_like(arr), where=rows > 0)
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        acc = np.trace(arr) / arr.sum() if arr.sum() else float("nan")
        ax.set_title(f"{name}\n(accuracy {100 * acc:.1f} %)", fontsize=8)
        # class names on the outer edges only: the left column, and panels with none below
        left, bottom = i % ncols == 0, i + ncols >= n
        ax.set_xticks(range(len(classes)), classes if bottom else [], rotation=90, fontsize=6)
        ax.set_yticks(range(len(classes)), classes if left else [], fontsize=6)
        if left:
            ax.set_ylabel("true", fontsize=7)
        if bottom:
            ax.set_xlabel("predicted", fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, fraction=0.02, label="share of the true class")
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 + 0.06 / nrows)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def heatmaps(tables: Mapping[str, Mapping[str, Sequence[float]]], classes: Sequence[str],
             title: str = "") -> bytes:
    """One heat map per metric (e.g. precision, recall): a row per run, a column per class,
    values annotated; one colour scale (0-1) for all."""
    metrics = list(tables)
    runs = list(next(iter(tables.values()))) if tables else []
    plt, fig, axes = new_figure(1, max(len(metrics), 1), squeeze=False,
                             figsize=(5.2 * max(len(metrics), 1),
                                      1.2 + 0.32 * max(len(runs), 1)))
    im = None
    for k, (ax, metric) in enumerate(zip(axes[0], metrics, strict=False)):
        arr = np.asarray([list(tables[metric][r]) for r in runs], dtype=float)
        im = ax.imshow(arr, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(runs)), runs if k == 0 else [], fontsize=7)
        ax.set_title(metric, fontsize=9)
        for i in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                ax.text(j, i, f"{arr[i, j]:.2f}", ha="center", va="center", fontsize=5.5,
                        color="white" if arr[i, j] < 0.5 else "black")
    if im is not None:
        fig.colorbar(im, ax=axes, fraction=0.02)
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 + 0.25 / (1.2 + 0.32 * max(len(runs), 1)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def robust_limits(values: Sequence[float], factor: float = 3.0) -> tuple[float, float, bool]:
    """Y limits that a single spike does not flatten: ``(low, high, clipped)``. Values above
    ``median + factor * (p90 - median)`` (and at least twice the 90th percentile) are
    outliers: the top is set just above the largest other value and ``clipped`` is True."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return 0.0, 1.0, False
    lo, hi = float(v.min()), float(v.max())
    med, p90 = float(np.median(v)), float(np.percentile(v, 90))
    cut = max(med + factor * (p90 - med), 2 * abs(p90))
    clipped = v.size >= 4 and hi > cut and p90 > lo
    if clipped:
        hi = float(v[v <= cut].max())
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 0.1)
    return lo - pad, hi + pad, bool(clipped)


def loss_panels(histories: Mapping[str, Sequence[Mapping]], losses: Sequence[str],
                splits: Sequence[str] = ("train", "val"),
                extra: Mapping[str, str] | None = None, title: str = "",
                ncols: int = 2) -> tuple[bytes, list[str]]:
    """Loss curves readable at a glance: one panel per loss on a shared epoch axis (2 per
    row), a colour per run, train solid and validation dashed; a spike does not flatten a
    panel: the axis is cut above the other values, the clipped points are drawn as arrows at
    the top edge and listed in the returned notes. ``extra`` adds panels of other metrics
    (label -> history key, e.g. ``{"val mAP@0.5": "val/mAP50"}``)."""
    from matplotlib.ticker import MaxNLocator

    panels = [(name, [f"{s}/{name}" for s in splits]) for name in losses]
    panels += [(label, [key]) for label, key in (extra or {}).items()]
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    plt, fig, axes = new_figure(nrows, ncols, squeeze=False, sharex=True,
                             figsize=(5.4 * ncols, 3.3 * nrows + 0.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"train": "-", "val": "--", "dev": "--", "test": ":"}
    notes: list[str] = []
    for ax, (label, keys) in zip(axes.flat, panels, strict=False):
        values = [h[k] for hist in histories.values() for h in hist for k in keys
                  if h.get(k) is not None]
        lo, hi, clipped = robust_limits(values)
        for i, (run, hist) in enumerate(histories.items()):
            for key in keys:
                pts = [(h["epoch"], h[key]) for h in hist if h.get(key) is not None]
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                split = key.split("/", 1)[0] if "/" in key else ""
                ax.plot(xs, [min(y, hi) for y in ys], styles.get(split, "-"),
                        color=colours[i % len(colours)], marker="o", markersize=2.5,
                        label=f"{run} {split}".strip())
                for x, y in pts:
                    if clipped and y > hi:
                        ax.annotate(f"{y:.3g}", (x, hi), xytext=(0, -14),
                                    textcoords="offset points", ha="center", fontsize=7,
                                    color="red", arrowprops={"arrowstyle": "->",
                                                             "color": "red"})
                        notes.append(f"{run} {key.replace('/', ' ')} = {y:.3g} at epoch {x}")
        ax.set_ylim(lo, hi)
        ax.set_title(label + (" (axis cut: spike clipped)" if clipped else ""), fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax in axes[-1, :]:
        ax.set_xlabel("epoch")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8,
                   bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue(), notes
