"""The paper's Figure 2: per ablated block, the Eq. 3 accuracy ratio (passing-channel ablation / random-channel
ablation, mean over the random trials) at each scale 10..50 %, with standard-error bars, and a horizontal blue
line at the ratio without scaling (docs/method.md sections 5 and 6).

    python plot_ratios.py

Reads <RESULTS>/ablation/<block>.json (written by ablate.py); writes <RESULTS>/figures/ratios.png and .pdf and
prints the table it plots. Where ablate.py also wrote the held-out and unscreened variants (<block>.heldout.json,
<block>.unscreened.json), they are drawn in rows below the paper's, on the same y axis per block, so that the bias
of screening and reporting on the same images shows; each panel states its test of the claim (a p-value).
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator, ScalarFormatter

import arch
from cli import configure, die, main_guard
from figures import save_figure, stamp
from results import (
    ABLATION_VARIANTS,
    ablation_dir,
    ablation_file,
    command,
    config_mismatch,
    figure,
    load_json,
    weights_of,
)

RESULTS = "results"  # results folder: reads ablation/<block>.json, writes figures/ratios.*
ARCH = "resnet18"  # the torchvision ResNet the results were made with (python arch.py --arch NAME)
ABLATED = []  # blocks to plot, one column each, e.g. 2.1,3.1 (empty: every block with an ablation file; named ones without are skipped, with a note)
VARIANTS = ["paper", "heldout", "unscreened"]  # rows: the paper's protocol, then each variant whose files exist
SHOW_TEST = True  # write each panel's test of the claim (p that the scaled ratios are below the no-scale ratio)
DPI = 200  # PNG resolution
# ---- end of flags (below: fixed constants, not flags)
SAME_RUN = ("weights", "data", "limit", "paths", "mean", "precision", "passing", "seed", "n_trials", "screen_margin")  # variants must share these


def read_ablation(net, path):
    d = load_json(path, "ablation file")
    net.check(d.get("config", {}), path)
    for key in ("scales", "ratio", "sem", "accuracy", "random_sets", "passing"):
        if key not in d:
            die(f"ablation file {path} has no {key!r}: is it from an older ablate.py? run python ablate.py again")
    if not (len(d["scales"]) == len(d["ratio"]) == len(d["sem"])) or d["scales"][0] != 0:
        die(f"ablation file {path}: scales, ratio and sem must have one entry per scale, starting with 0 (no scale)")
    return d


def draw(ax, block, d, variant="paper", show_test=True):
    scales, ratio, sem = np.array(d["scales"]), np.array(d["ratio"], float), np.array(d["sem"], float)
    n_trials = len(d["random_sets"])
    if np.isfinite(ratio[0]):
        ax.axhline(ratio[0], color="tab:blue", lw=1.5, label=f"no scale ({ratio[0]:.3f})")
    test, label = d.get("test"), f"scaled: mean \u00b1 SEM, N = {n_trials} trials"
    if show_test and test and len(scales) > 1:  # the test of the claim, in the legend
        p = test.get("p_below")
        label += "\np(scaled < none) = " + ("n/a" if p is None else f"{p:.3g}") + " (sign flips)"
    ax.errorbar(scales[1:], ratio[1:], yerr=sem[1:], fmt="o", color="black", ms=5, capsize=4, lw=1.2, label=label)
    ax.set_xticks(scales[1:])
    xs = scales[1:] if len(scales) > 1 else np.array([10])  # no scaled setting: an empty window where 10% would be
    step = np.diff(xs).min() if len(xs) > 1 else 10  # one scaled setting: a 10-point-wide window
    ax.set_xlim(xs[0] - 0.6 * step, xs[-1] + 0.6 * step)
    ax.set_xlabel("scale (%)")
    ax.set_ylabel("accuracy ratio (passing / random)")
    what = "" if variant == "paper" else f", {ABLATION_VARIANTS[variant]}"
    images = f"\n{d['n_images']:,} images" if isinstance(d.get("n_images"), int) else ""
    if variant == "heldout" and "split" in d:
        images = f"\nscreened on {d['split']['screen']:,} images, reported on {d['n_images']:,}"
    ax.set_title(f"Block {block}: {len(d['passing'])} channels ablated{what}{images}", fontsize=9.5)
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
    configure(globals())
    net = arch.net(ARCH)
    blocks = ABLATED or [b for b in net.blocks if os.path.isfile(ablation_file(RESULTS, b))] or ["2.1", "3.1"]
    for v in VARIANTS:
        if v not in ABLATION_VARIANTS:
            die(f"unknown variant {v!r}: the variants are {', '.join(ABLATION_VARIANTS)}")
    found, absent = {}, []  # {(variant, block): ablation JSON}; the blocks named without an ablation file
    for block in blocks:
        path = ablation_file(RESULTS, block)
        if not os.path.isfile(path):
            absent.append(block)
            continue
        found["paper", block] = paper = read_ablation(net, path)
        for v in VARIANTS:
            other = ablation_file(RESULTS, block, v)
            if v != "paper" and os.path.isfile(other):
                found[v, block] = d = read_ablation(net, other)
                why = config_mismatch(paper.get("config", {}), d.get("config", {}), SAME_RUN) or (
                    d["scales"] != paper["scales"] and f"scales: {paper['scales']} vs {d['scales']}")
                if why:
                    die(f"{other} was made under another config than {path} ({why}): run python ablate.py --stages sweep again")
    data = "--data /path/to/imagenet/val"
    if not found:  # no weights known: the suggestion names the default ones
        die(f"no ablation results under {ablation_dir(RESULTS)}: run {command('ablate.py', data, net.name, 'IMAGENET1K_V1', RESULTS)} first")
    weights = weights_of(*[d.get("config", {}) for d in found.values()])
    for block in absent:  # made with the weights of the blocks found
        print(f"note: no {ablation_file(RESULTS, block)}: block {block} is left out (make it with "
              f"{command('ablate.py', f'--ablate_blocks {block} {data}', net.name, weights, RESULTS)})")

    print(f"Eq. 3 ratio (mean over random trials) \u00b1 SEM, weights {weights}")
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731 (null: a random set scored 0)
    for (v, block), d in found.items():
        cells = "  ".join(f"{s:>3}%: {fmt(r)} \u00b1 {fmt(e)}" if s else f"none: {fmt(r)}" for s, r, e in zip(d["scales"], d["ratio"], d["sem"]))
        print(f"  block {block}" + ("" if v == "paper" else f" ({ABLATION_VARIANTS[v]})") + f": {cells}")
        if d.get("test") and len(d["scales"]) > 1:
            print(f"    p (scaled ratios below the no-scale ratio) = {fmt(d['test'].get('p_below'))}")

    for path in save_figure(ratios_figure(found, weights, SHOW_TEST), figure(RESULTS, "ratios"), dpi=DPI):
        print(f"wrote {path}")


def ratios_figure(found, weights, show_test=True):
    """Fig. 2: a column per block, a row per variant of `found` ({(variant, block): ablation JSON}); the paper's on
    top; the panels of a block share their y axis, so the variants compare at a glance."""
    blocks = list(dict.fromkeys(b for _, b in found))
    rows = [v for v in ABLATION_VARIANTS if any((v, b) in found for b in blocks)]
    fig, axes = plt.subplots(len(rows), len(blocks), figsize=(4.2 * len(blocks), 3.6 * len(rows)), squeeze=False)
    for i, v in enumerate(rows):
        for j, block in enumerate(blocks):
            if (v, block) in found:
                draw(axes[i, j], block, found[v, block], v, show_test)
            else:
                axes[i, j].set_axis_off()
    for j in range(len(blocks)):  # one y axis per block: the union of its panels' ranges
        drawn = [axes[i, j] for i in range(len(rows)) if axes[i, j].axison]
        lo, hi = min(ax.get_ylim()[0] for ax in drawn), max(ax.get_ylim()[1] for ax in drawn)
        for ax in drawn:
            ax.set_ylim(lo, hi)
            # ticks on steps of 1, 2 or 5 x 10^k: with the y range at least 0.0175 (draw's padding) they need at most three
            # decimals (matplotlib's default 2.5 step wrote 0.9975 where every ratio is 1, as under random weights)
            ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
            ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
    fig.suptitle("Accuracy ratio of passing-channel to random-channel mean ablation (Eq. 3)", fontsize=11)
    fig.tight_layout(rect=(0, 0.22 / fig.get_figheight(), 1, 1))  # the bottom strip holds the weights stamp
    stamp(fig, weights)
    return fig


if __name__ == "__main__":
    main_guard(main, "the figure was not written")
