"""What every figure shares: the file backend, the stamp naming the weights it was made from (loud when they are
random), the 3x3 montage of top natural images, and PNG + PDF written atomically.

Imports cli and results only.
"""

import glob
import os
import re

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, on a cluster node too

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from PIL import Image  # noqa: E402

from results import atomic_write, is_random  # noqa: E402


def stamp(fig, weights):
    """The weights id in small print along the bottom edge (keep the bottom 0.2 inches free for it); when they are
    random, that line is red and a large translucent red warning runs across the figure, at the height nearest the
    middle where it hides no title (watermark_spot). Call it last, once the layout is final."""
    if not is_random(weights):
        fig.text(0.003, 0.003, f"weights: {weights}", fontsize=6, color="0.3", ha="left", va="bottom")
        return
    text = f"RANDOM WEIGHTS ({weights}) \u2014 not a result"
    titles = title_boxes(fig)  # before the stamp's own texts
    fig.text(0.003, 0.003, text, fontsize=7, color="red", weight="bold", ha="left", va="bottom")
    mark = fig.text(0.5, 0.5, text, fontsize=min(60, 1.4 * fig.get_figwidth() * 72 / len(text)), color="red", alpha=0.3,
                    weight="bold", ha="center", va="center", zorder=100)
    mark.set_y(watermark_spot(fig, mark, titles))


def title_boxes(fig):
    """The display-space boxes of every title on the figure: its figure texts (suptitle, grid names, page titles),
    each axes' titles (its texts that sit above its panel: the three titles) and x labels; not the texts inside a
    panel (a grid has one per image), nor the vertical y labels, which span a panel's height: a horizontal band
    crosses them whatever its height, and leaves them readable. Public API only (Figure.texts holds the suptitle)."""
    fig.draw_without_rendering()  # titles take their final places
    renderer = fig.canvas.get_renderer()
    shown = [t for t in fig.texts if t.get_visible() and t.get_text().strip()]
    boxes = [t.get_window_extent(renderer) for t in shown]
    for ax in fig.axes:
        top = ax.get_window_extent(renderer).y1
        for t in [c for c in ax.get_children() if isinstance(c, Text)] + [ax.xaxis.get_label()]:
            if t.get_visible() and t.get_text().strip():
                box = t.get_window_extent(renderer)
                if t is ax.xaxis.get_label() or box.y0 >= top - 1:
                    boxes.append(box)
    return boxes


def watermark_spot(fig, mark, titles, step=0.01):
    """The height (figure fraction) nearest the middle where the horizontal watermark overlaps none of the title
    boxes; the middle when no height is free (a page of titles only)."""
    renderer = fig.canvas.get_renderer()
    for dy in np.arange(0, 0.5, step):
        for y in (0.5 + dy, 0.5 - dy):
            mark.set_y(y)
            box = mark.get_window_extent(renderer)
            if box.y0 >= fig.bbox.y0 + 0.25 * fig.dpi and box.y1 <= fig.bbox.y1 and not any(box.overlaps(t) for t in titles):
                return y
    return 0.5


def save_figure(figs, path, dpi=200):
    """One figure, or a list of pages: path.png (path_p1.png, path_p2.png, ... when several; stale pages from an earlier
    run are removed) and path.pdf (all pages), each written atomically. Closes the figures; returns the paths written."""
    figs = list(figs) if isinstance(figs, (list, tuple)) else [figs]
    pngs = [path + ".png"] if len(figs) == 1 else [f"{path}_p{i + 1}.png" for i in range(len(figs))]
    for old in glob.glob(glob.escape(path) + ".png") + glob.glob(glob.escape(path) + "_p*.png"):
        if old not in pngs and re.fullmatch(r"(_p\d+)?\.png", old[len(path):]):
            os.remove(old)
    for fig, png in zip(figs, pngs):
        atomic_write(png, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=dpi))

    def write_pdf(tmp):
        with PdfPages(tmp) as pdf:
            for fig in figs:
                pdf.savefig(fig)
    atomic_write(path + ".pdf", write_pdf)
    for fig in figs:
        plt.close(fig)
    return pngs + [path + ".pdf"]


def montage(images, tile, gap=None):
    """A 3x3 montage of up to nine uint8 RGB images (row by row, best first), each resized to tile x tile, with thin
    white gaps (gap pixels; by default tile // 28, at least 1); a missing image (None) leaves its cell white."""
    gap = max(1, tile // 28) if gap is None else gap
    out = np.full((3 * tile + 2 * gap, 3 * tile + 2 * gap, 3), 255, np.uint8)
    for k, image in enumerate(list(images)[:9]):
        if image is None:
            continue
        r, c = divmod(k, 3)
        out[r * (tile + gap):r * (tile + gap) + tile, c * (tile + gap):c * (tile + gap) + tile] = \
            np.asarray(Image.fromarray(image).resize((tile, tile), Image.BILINEAR))
    return out
