"""Figures of tuning.py (beyond the paper: scale invariance on natural images).

- tuning_curves_<block>[_pN]: the zoom tuning curves of In, Pre and Post (mean center response over each unit's own
  top-K natural images), one panel per channel, 16 per page, for the FZ-passing channels of criteria.json (the
  natural-image passing channels where the block has no FZ criteria);
- tuning_si: per block, the distribution of Post's scale-invariance index, FZ-passing channels against the others;
- tuning_zoom: per block, In's preferred zoom against Pre's (the mechanism predicts In below Pre).

    python plot_tuning.py

Reads <RESULTS>/tuning/curves.pt, tuning.json (tuning.py) and criteria.json; writes <RESULTS>/figures/tuning_*.
"""


import matplotlib.pyplot as plt
import numpy as np

import arch
from cli import configure, die, main_guard
from figures import save_figure, stamp
from results import figure, load_json, load_pt, read_criteria, tuning_curves, tuning_file, weights_of

RESULTS = "results"  # reads tuning/curves.pt, tuning.json, criteria.json; writes figures/tuning_*
ARCH = "resnet18"  # the torchvision ResNet the results were made with (python arch.py --arch NAME)
CHANNELS = ""  # tuning curves of channels named by hand, 'block:channels;...' e.g. '2.1:5,17;3.1:40'; empty: the passing channels
PER_PAGE = 16  # tuning-curve panels per page (4 x 4)
DPI = 200  # PNG resolution
# ---- end of flags (below: fixed constants, not flags)
ROLES = (("In", "tab:blue"), ("Pre", "tab:orange"), ("Post", "black"))


def curve_pages(block, channels, rows, curves, zoom, why, weights, per_page):
    """Pages of 4 x 4 panels (per_page of them used): In, Pre and Post's tuning curves of each channel."""
    pages = []
    for start in range(0, len(channels), per_page):
        chunk = list(zip(channels, rows))[start:start + per_page]
        fig, axes = plt.subplots(4, 4, figsize=(10, 9), squeeze=False)
        for ax, (c, g) in zip(axes.flat, chunk):
            for r, (name, color) in enumerate(ROLES):
                ax.plot(zoom, curves[g, r], "o-", color=color, ms=2.5, lw=1.1, label=name)
            ax.axvline(1, color="0.8", lw=0.6)
            ax.set_xscale("log", base=2)
            ax.set_xticks([0.5, 1, 2], ["0.5x", "1x", "2x"])
            ax.set_title(f"channel {c}", fontsize=8)
            ax.tick_params(labelsize=6.5)
        for ax in list(axes.flat)[len(chunk):]:
            ax.set_axis_off()
        axes[0, 0].legend(fontsize=6.5, frameon=False)
        page = f" (page {start // per_page + 1} of {-(-len(channels) // per_page)})" if len(channels) > per_page else ""
        fig.suptitle(f"Block {block}: zoom tuning curves on each unit's own top-K natural images, {why}{page}\n"
                     f"(zoom < 1: the view shrunk and padded; > 1: its centre enlarged)", fontsize=10)
        fig.supxlabel("zoom", fontsize=9)
        fig.supylabel("mean center response", fontsize=9)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        stamp(fig, weights)
        pages.append(fig)
    return pages


def panels(n):
    """A figure with n panels, at most 4 to a row; the unused ones hidden."""
    cols, rows = min(4, n), -(-n // 4)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.2 * rows + 0.6), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    return fig, list(axes.flat)[:n]


def si_figure(blocks, si_of, weights):
    fig, axes = panels(len(blocks))
    for ax, b in zip(axes, blocks):
        fz, other, has_fz = si_of[b]
        bins = np.linspace(min(np.nanmin(np.r_[fz, other, 0]), 0), 1, 21)
        ax.hist(other[np.isfinite(other)], bins=bins, density=True, color="0.6", alpha=0.8, label=f"{'other FZ-measured' if has_fz else 'all channels'} ({np.isfinite(other).sum()})")
        if len(fz):
            ax.hist(fz[np.isfinite(fz)], bins=bins, density=True, histtype="step", color="tab:orange", lw=2,
                    label=f"FZ-passing ({np.isfinite(fz).sum()})")
        ax.set_title(f"Block {b}", fontsize=9)
        ax.set_xlabel("Post's scale-invariance index", fontsize=8)
        ax.set_ylabel("density (channels, normalised per group)", fontsize=7.5)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Is Post more scale invariant on natural images where the FZ criteria pass?", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    stamp(fig, weights)
    return fig


def zoom_figure(blocks, pairs, zoom, weights):
    fig, axes = panels(len(blocks))
    rng = np.random.default_rng(0)
    for ax, b in zip(axes, blocks):
        pin, ppre, fz, measured = pairs[b]
        other = measured & ~fz  # as in tuning.json: the FZ-measured channels that do not pass
        jit = lambda v: v * np.exp(rng.uniform(-0.04, 0.04, len(v)))  # noqa: E731 (ties on the zoom grid)
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
    fig.suptitle("Preferred zoom on natural images, In against Pre\n(above the diagonal: In prefers its feature smaller than Pre)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    stamp(fig, weights)
    return fig


def main():
    configure(globals())
    net = arch.net(ARCH)
    curves_path = tuning_curves(RESULTS)
    curves = load_pt(curves_path, "tuning curves (run python tuning.py first)")
    net.check(curves["config"], curves_path)
    summary = load_json(tuning_file(RESULTS), "tuning summary (run python tuning.py first)")
    if summary["config"].get("weights") != curves["config"].get("weights"):
        die(f"{RESULTS}/tuning.json and tuning/curves.pt come from different runs: run python tuning.py again")
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
