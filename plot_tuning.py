"""Figures of tuning.py (beyond the paper: scale invariance on natural images).

- tuning_curves_<block>[_pN]: the zoom tuning curves of In, Pre and Post (mean center response over each unit's own
  top-K natural images), one panel per channel, up to 16 a page (4 a row, the page sized to them), for the
  FZ-passing channels of criteria.json (the natural-image passing channels where the block has no FZ criteria);
- tuning_si: per block, the distribution of Post's scale-invariance index, FZ-passing channels against the others;
- tuning_zoom: per block, In's preferred zoom against Pre's (the mechanism predicts In below Pre).

    python plot_tuning.py

Reads <RESULTS>/tuning/curves.pt, tuning.json (tuning.py) and criteria.json; writes <RESULTS>/figures/tuning_*.
"""


import textwrap

import matplotlib.pyplot as plt
import numpy as np

import arch
from cli import configure, die, main_guard
from figures import save_figure, stamp
from results import figure, read_criteria, read_stage, tuning_curves, tuning_file, weights_of

RESULTS = "results"  # reads tuning/curves.pt, tuning.json, criteria.json; writes figures/tuning_*
ARCH = "resnet18"  # the torchvision ResNet the results were made with (python arch.py --arch NAME)
CHANNELS = ""  # tuning curves of channels named by hand, 'block:channels;...' e.g. '2.1:5,17;3.1:40'; empty: the passing channels
PER_PAGE = 16  # tuning-curve panels per page, at most 4 a row (the page is sized to its panels)
DPI = 200  # PNG resolution
# ---- end of flags (below: fixed constants, not flags)
ROLES = (("In", "tab:blue", dict(marker="o", ms=2.5, lw=1.1)),  # name, colour, line style of each role's curve
         ("Pre", "tab:orange", dict(marker="s", ms=4.5, mfc="none", lw=1.6, ls="--")),
         ("Post", "black", dict(marker="o", ms=2, lw=0.9)))
JITTER = 0.04  # tuning_zoom: each point moved by a factor exp(U(-JITTER, JITTER)) on both axes, so that ties on the zoom grid show


def curve_pages(block, channels, rows, curves, zoom, why, weights, per_page):
    """Pages of up to per_page panels, at most 4 to a row, the page sized to its panels: In, Pre and Post's tuning
    curves of each channel. Pre is dashed with open squares, Post solid with dots on top: where they coincide both
    show."""
    pages, n_pages = [], -(-len(channels) // per_page)
    for start in range(0, len(channels), per_page):
        chunk = list(zip(channels, rows))[start:start + per_page]
        ncols, nrows = min(4, len(chunk)), -(-len(chunk) // 4)
        page = f" (page {start // per_page + 1} of {n_pages})" if n_pages > 1 else ""
        W = max(2.4 * ncols + 0.5, 4.4)
        title = wrapped(f"Block {block}: zoom tuning curves on each unit's own top-K natural images, {why}{page}", W, 9)
        title += "\n(zoom < 1: the view shrunk and padded; > 1: its centre enlarged)"
        head = 0.25 + 0.17 * (title.count("\n") + 1)  # inches for the title lines
        fig, axes = plt.subplots(nrows, ncols, figsize=(W, 2.1 * nrows + head + 0.85), squeeze=False)
        for ax, (c, g) in zip(axes.flat, chunk):
            for r, (name, color, style) in enumerate(ROLES):
                ax.plot(zoom, curves[g, r], color=color, label=name, **style)
            ax.axvline(1, color="0.8", lw=0.6)
            ax.set_xscale("log", base=2)
            ax.set_xticks([0.5, 1, 2], ["0.5x", "1x", "2x"])
            ax.set_title(f"channel {c}", fontsize=8)
            ax.tick_params(labelsize=6.5)
        for ax in list(axes.flat)[len(chunk):]:
            ax.set_axis_off()
        fig.suptitle(title, fontsize=9)
        H = fig.get_figheight()  # from the bottom: the stamp (0.22 in), the legend, the x label, the panels
        fig.supxlabel("zoom", fontsize=8.5, y=0.46 / H, va="bottom")
        fig.supylabel("mean center response", fontsize=8.5)
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", bbox_to_anchor=(0.5, 0.22 / H), ncol=3,
                   fontsize=7, frameon=False)
        fig.tight_layout(rect=(0.25 / W, 0.6 / H, 1, 1 - 0.05 / H), pad=0.4, h_pad=0.6, w_pad=0.6)  # left: the y label's strip
        stamp(fig, weights)
        pages.append(fig)
    return pages


def wrapped(text, inches, fontsize):
    """text in lines that fit a figure inches wide at fontsize."""
    return "\n".join(textwrap.wrap(text, int(inches * 72 / (fontsize * 0.55))))


def panels(n):
    """A figure with n panels, at most 4 to a row; the unused ones hidden."""
    cols, rows = min(4, n), -(-n // 4)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.2 * rows + 0.6), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    return fig, list(axes.flat)[:n]


def counted(si):
    """'(n)' channels in a histogram, or '(n of N; N - n silent)' where some have no SI (Post never positive)."""
    n, total = int(np.isfinite(si).sum()), len(si)
    return f"({n})" if n == total else f"({n} of {total}; {total - n} silent, no SI)"


def si_figure(blocks, si_of, weights):
    fig, axes = panels(len(blocks))
    for ax, b in zip(axes, blocks):
        fz, other, has_fz = si_of[b]
        bins = np.linspace(min(np.nanmin(np.r_[fz, other, 0]), 0), 1, 21)
        tops = [ax.hist(other[np.isfinite(other)], bins=bins, density=True, color="0.6", alpha=0.8,
                        label=f"{'other FZ-measured' if has_fz else 'all channels'} {counted(other)}")[0]]
        if len(fz):
            tops.append(ax.hist(fz[np.isfinite(fz)], bins=bins, density=True, histtype="step", color="tab:orange", lw=2,
                                label=f"FZ-passing {counted(fz)}")[0])
        ax.set_ylim(0, 1.45 * max(np.nan_to_num(np.concatenate(tops)).max(), 1e-9))  # (an empty density is NaN)  # headroom: the legend sits above the bars, not on them
        ax.set_title(f"Block {b}", fontsize=9)
        ax.set_xlabel("Post's scale-invariance index", fontsize=8)
        ax.set_ylabel("density (channels, normalised per group)", fontsize=7.5)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    fig.suptitle(wrapped("Is Post more scale invariant on natural images where the FZ criteria pass?", fig.get_figwidth(), 10), fontsize=10)
    fig.tight_layout(rect=(0, 0.25 / fig.get_figheight(), 1, 1))
    stamp(fig, weights)
    return fig


def zoom_figure(blocks, pairs, zoom, weights):
    fig, axes = panels(len(blocks))
    rng = np.random.default_rng(0)
    for ax, b in zip(axes, blocks):
        pin, ppre, fz, measured = pairs[b]
        other = measured & ~fz  # as in tuning.json: the FZ-measured channels that do not pass
        jit = lambda v: v * np.exp(rng.uniform(-JITTER, JITTER, len(v)))  # noqa: E731 (ties on the zoom grid; the title says so)
        ax.scatter(jit(pin[other]), jit(ppre[other]), s=6, color="0.5", alpha=0.6, lw=0, label="other" if fz.any() else "channels")
        ax.scatter(jit(pin[fz]), jit(ppre[fz]), s=14, color="tab:orange", lw=0, label="FZ-passing")
        ax.plot([min(zoom), max(zoom)], [min(zoom), max(zoom)], color="0.7", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ticks = [z for z in (0.5, 1, 2) if min(zoom) <= z <= max(zoom)]
        ax.set_xticks(ticks, [f"{z:g}x" for z in ticks])
        ax.set_yticks(ticks, [f"{z:g}x" for z in ticks])
        ax.set_xlabel("In's preferred zoom", fontsize=8)
        ax.set_ylabel("Pre's preferred zoom", fontsize=8)
        ax.set_title(f"Block {b}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False, loc="lower right")
    fig.suptitle(wrapped("Preferred zoom on natural images, In against Pre (above the diagonal: In prefers its feature smaller than "
                         f"Pre; each point is jittered by up to \u00b1{100 * (np.exp(JITTER) - 1):.0f}% on both axes, so that channels "
                         "with the same zooms show)", fig.get_figwidth(), 9), fontsize=9)
    fig.tight_layout(rect=(0, 0.25 / fig.get_figheight(), 1, 1))
    stamp(fig, weights)
    return fig


def main():
    configure(globals())
    net = arch.net(ARCH)
    curves, summary = read_stage(RESULTS, net, tuning_curves(RESULTS), tuning_file(RESULTS), "tuning.py")
    criteria = read_criteria(RESULTS, net) or {}
    weights = weights_of(curves["config"], *([criteria.get("config", {})] if criteria else []))
    units, zoom = [tuple(u) for u in curves["units"]], list(curves["zooms"])
    blocks = list(summary["blocks"])
    named = net.parse_block_channels(CHANNELS)
    for b in named:
        if b not in blocks:
            die(f"--channels names block {b}, which tuning.py did not measure (it measured {', '.join(blocks)})")
    si_of, pairs = {}, {}
    for b in blocks:
        rows = [g for g, (bb, _) in enumerate(units) if bb == b]
        chans = np.array([units[g][1] for g in rows])
        fz_block = criteria.get("blocks", {}).get(b)
        fz = np.isin(chans, fz_block["passing"]) if fz_block else np.zeros(len(chans), bool)
        measured = np.isin(chans, fz_block.get("measured", chans)) if fz_block else np.zeros(len(chans), bool)
        si = curves["si"][rows, 2]
        si_of[b] = (si[fz], si[measured & ~fz] if fz_block else si, fz_block is not None)
        pairs[b] = (curves["preferred"][rows, 0], curves["preferred"][rows, 1], fz, measured if fz_block else np.ones(len(chans), bool))
        show, why = (chans[fz], "FZ-passing channels") if fz.any() else (chans[curves["passes"][rows]], "natural-image passing channels")
        if named:
            show, why = np.array(named.get(b, []), dtype=np.int64), "channels named by hand"
        if not len(show):
            print(f"block {b}: no passing channel to draw tuning curves for")
            continue
        pages = curve_pages(b, show.tolist(), [rows[int(np.flatnonzero(chans == c)[0])] for c in show], curves["curves"], zoom, why, weights,
                            PER_PAGE)
        for k, fig in enumerate(pages):
            for path in save_figure(fig, figure(RESULTS, f"tuning_curves_{b}" + (f"_p{k + 1}" if len(pages) > 1 else "")), dpi=DPI):
                print(f"wrote {path}")
    for name, fig in (("tuning_si", si_figure(blocks, si_of, weights)), ("tuning_zoom", zoom_figure(blocks, pairs, zoom, weights))):
        for path in save_figure(fig, figure(RESULTS, name), dpi=DPI):
            print(f"wrote {path}")


if __name__ == "__main__":
    main_guard(main, "figures written before the interruption are complete; the others were not written")
