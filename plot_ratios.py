"""The paper's Figure 2: per ablated block, the Eq. 3 accuracy ratio (passing-channel ablation / random-channel
ablation, mean over the random trials) at each scale 10..50 %, with standard-error bars, and a horizontal blue
line at the ratio without scaling (METHOD.md sections 5 and 6).

    python plot_ratios.py

Reads <RESULTS>/ablation/<block>.json (written by ablate.py); writes <RESULTS>/figures/ratios.png and .pdf and
prints the table it plots.
"""

import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from stream import configure, die, load_json, main_guard, save_figure, stamp, weights_of

RESULTS = "results"  # results folder: reads ablation/<block>.json, writes figures/ratios.*
ABLATED = ["2.1", "3.1"]  # blocks to plot, one panel each (those without an ablation file are skipped, with a note)
DPI = 200  # PNG resolution


def read_ablation(path):
    d = load_json(path, "ablation file")
    for key in ("scales", "ratio", "sem", "accuracy", "random_sets", "passing"):
        if key not in d:
            die(f"ablation file {path} has no {key!r}: is it from an older ablate.py? run python ablate.py again")
    if not (len(d["scales"]) == len(d["ratio"]) == len(d["sem"])) or d["scales"][0] != 0:
        die(f"ablation file {path}: scales, ratio and sem must have one entry per scale, starting with 0 (no scale)")
    return d


def draw(ax, block, d):
    scales, ratio, sem = np.array(d["scales"]), np.array(d["ratio"], float), np.array(d["sem"], float)
    n_trials = len(d["random_sets"])
    if np.isfinite(ratio[0]):
        ax.axhline(ratio[0], color="tab:blue", lw=1.5, label=f"no scale ({ratio[0]:.3f})")
    ax.errorbar(scales[1:], ratio[1:], yerr=sem[1:], fmt="o", color="black", ms=5, capsize=4, lw=1.2,
                label=f"scaled: mean \u00b1 SEM, N = {n_trials} trials")
    ax.set_xticks(scales[1:])
    xs = scales[1:] if len(scales) > 1 else np.array([10])  # no scaled setting: an empty window where 10% would be
    step = np.diff(xs).min() if len(xs) > 1 else 10  # one scaled setting: a 10-point-wide window
    ax.set_xlim(xs[0] - 0.6 * step, xs[-1] + 0.6 * step)
    ax.set_xlabel("scale (%)")
    ax.set_ylabel("accuracy ratio (passing / random)")
    ax.set_title(f"Block {block}: {len(d['passing'])} channels ablated\n{d['n_images']:,} images"
                 if isinstance(d.get("n_images"), int) else f"Block {block}: {len(d['passing'])} channels ablated", fontsize=10)
    ends = np.concatenate([ratio, ratio[1:] - np.nan_to_num(sem[1:]), ratio[1:] + np.nan_to_num(sem[1:])])
    ends = ends[np.isfinite(ends)]  # a ratio is null (NaN) where a random set scored 0
    if ends.size:
        lo, hi = ends.min(), ends.max()
        pad = max(0.15 * (hi - lo), 0.005)
        ax.set_ylim(lo - pad, hi + 2.5 * pad)  # room for the legend above the data
    if not np.isfinite(ratio).all():
        ax.text(0.03, 0.03, "no ratio where a random set scored 0", transform=ax.transAxes, fontsize=7.5, color="0.3")
    ax.grid(axis="y", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="upper right", frameon=False)


def main():
    cfg = configure(globals())
    found = {}
    for block in ABLATED:
        path = os.path.join(RESULTS, "ablation", f"{block}.json")
        if os.path.isfile(path):
            found[block] = read_ablation(path)
        else:
            print(f"note: no {path}: block {block} is left out (make it with python ablate.py --ablate_blocks {block} --data /path/to/imagenet/val)")
    if not found:
        die(f"no ablation results under {os.path.join(RESULTS, 'ablation')}: run python ablate.py --data /path/to/imagenet/val first")
    weights = weights_of(*[d.get("config", {}) for d in found.values()])

    print(f"Eq. 3 ratio (mean over random trials) \u00b1 SEM, weights {weights}")
    for block, d in found.items():
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731 (null: a random set scored 0)
        cells = "  ".join(f"{s:>3}%: {fmt(r)} \u00b1 {fmt(e)}" if s else f"none: {fmt(r)}" for s, r, e in zip(d["scales"], d["ratio"], d["sem"]))
        print(f"  block {block}: {cells}")

    for path in save_figure(figure(found, weights), os.path.join(RESULTS, "figures", "ratios"), dpi=DPI):
        print(f"wrote {path}")


def figure(found, weights):
    """Fig. 2: one panel per block of `found` ({block: ablation JSON})."""
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.6), squeeze=False)
    for ax, (block, d) in zip(axes[0], found.items()):
        draw(ax, block, d)
    fig.suptitle("Accuracy ratio of passing-channel to random-channel mean ablation (Eq. 3)", fontsize=11)
    fig.tight_layout(rect=(0, 0.22 / fig.get_figheight(), 1, 1))  # the bottom strip holds the weights stamp
    stamp(fig, weights)
    return fig


if __name__ == "__main__":
    main_guard(main, "the figure was not written")
