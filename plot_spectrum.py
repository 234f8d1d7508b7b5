"""The predecessor paper's skip / mix / overwrite spectrum (docs/method.md section 3), from criteria.py's table:

- mix_hist:      per block, the histogram of the mix ratio m = Post_c(FZ_In) / Post_c(FZ_Pre) (clipped at MIX_CLIP),
                 with the overwrite / mix / skip regions shaded and the criteria-passing channels stacked on top;
- mix_vs_bn2:    per block, m against |bn2.weight[c]|, with Spearman's rank correlation;
- mix_vs_conv2:  per block, m against the mean |conv2.weight[c]|, with Spearman's rank correlation;
- pass_frequency (when several FZ seeds were run, stability.json): how often each channel passed, per block;
- across_archs (with --across, results folders of other architectures): the percentage of criteria-passing channels
                 per block against relative depth, one line per architecture (the paper's future work).

    python plot_spectrum.py
    python plot_spectrum.py --across results,results_resnet34,results_resnet50

Reads <RESULTS>/criteria.csv, criteria.json and stability.json; writes <RESULTS>/figures/<name>.png and .pdf.
"""

import csv
import math
import os
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import scipy.stats
from matplotlib.ticker import MaxNLocator

import arch
from cli import configure, die, main_guard
from figures import save_figure, stamp
from results import (
    command,
    criteria_csv,
    criteria_file,
    figure,
    is_random,
    load_json,
    read_criteria,
    split_weights_id,
    stability_file,
    weights_of,
)
from stats import EQ2_HIGH, EQ2_LOW, mix_regions

RESULTS = "results"  # results folder: reads criteria.csv/json and stability.json, writes figures/
ARCH = "resnet18"  # the torchvision ResNet the results were made with (python arch.py --arch NAME)
MIX_CLIP = 5.0  # m is clipped here in the plots (the released code's convention; m = 10 marks Post_c(FZ_Pre) <= 0)
BINS = 25  # histogram bins over [0, MIX_CLIP]
PANELS_PER_ROW = 4  # block panels per row
ACROSS = []  # results folders, any architectures (each with criteria.json): draw RESULTS/figures/across_archs from them
DPI = 200  # PNG resolution
# ---- end of flags (below: fixed constants, not flags)


# ----------------------------------------------------------------------------------------------------
# Spearman's rank correlation: Pearson's correlation of the ranks, tied values sharing the mean of their ranks.

def no_rho(x):
    """Why Spearman's rho has no value for these x (printed instead of a bare NaN)."""
    x = np.asarray(x, float)
    if len(x) < 2:
        return f"too few channels with a measured m ({len(x)})"
    return "every channel has the same value (random weights?)" if np.ptp(x) == 0 else "too few channels"


def spearman(a, b):
    """Spearman's rho of two equally long sequences (scipy.stats.spearmanr, ties averaged); nan when one of them is
    constant or n < 2."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(a, b).statistic)


# ----------------------------------------------------------------------------------------------------
# Inputs


def truth(text):
    return str(text).strip().lower() in ("1", "true", "yes")


def read_table(net, path):
    """{block: {'channel', 'mix', 'bn2_abs', 'conv2_abs_mean': float arrays, 'passes': bool array}}, in block order."""
    if not os.path.isfile(path):
        die(f"no {path}: run {command('criteria.py', '', net.name, None, os.path.dirname(path) or '.')} first")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error) as e:
        die(f"cannot read {path} ({type(e).__name__})")
    need = ("block", "channel", "mix", "passes", "bn2_abs", "conv2_abs_mean", "post_in", "post_pre")
    if not rows or any(k not in rows[0] for k in need):
        die(f"{path} has no rows or lacks one of the columns {', '.join(need)}: run python criteria.py again")
    table = {}
    for row in rows:
        table.setdefault(row["block"], []).append(row)
    out = {}
    for block in sorted(table, key=lambda b: list(net.blocks).index(b) if b in net.blocks else 99):
        rows = sorted(table[block], key=lambda r: int(r["channel"]))
        try:
            out[block] = {k: np.array([float(r[k]) for r in rows])
                          for k in ("channel", "mix", "bn2_abs", "conv2_abs_mean", "post_in", "post_pre")}
        except ValueError as e:
            die(f"{path}: a non-number in block {block} ({e})")
        out[block]["passes"] = np.array([truth(r["passes"]) for r in rows])
        # m is a convention value, not a measured ratio, where a Post activation is not positive (criteria.mix_ratio)
        out[block]["undefined_pre"] = out[block]["post_pre"] <= 0  # m := 10
        out[block]["undefined_in"] = (out[block]["post_in"] <= 0) & ~out[block]["undefined_pre"]  # m := 0
    return out


# ----------------------------------------------------------------------------------------------------
# Figures

def panel_grid(n, per_row, width=3.3, height=2.6):
    ncols = min(per_row, n)
    nrows = math.ceil(n / ncols)
    # at least 6.6 in wide, so that a one-block figure's title and legend stay on few lines; 1.6 in for them
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(width * ncols, 6.6), height * nrows + 1.6), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def finish(fig, title, handles=None, labels=None, item_inches=1.9):
    """Title wrapped to the figure's width, the legend above the bottom strip that the weights stamp uses, the
    panels tightly in between, and the stamp."""
    W, H = fig.get_figwidth(), fig.get_figheight()
    fig.suptitle("\n".join(textwrap.wrap(title, int(W * 72 / (11 * 0.55)))), fontsize=11)
    bottom = 0.22 / H
    if handles:
        ncol = max(1, min(len(labels), int(W / item_inches)))
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, bottom), ncol=ncol, fontsize=8, frameon=False)
        bottom += (0.2 * math.ceil(len(labels) / ncol) + 0.1) / H
    fig.tight_layout(rect=(0, bottom, 1, 1))


def region_counts(m):
    """Channels in the overwrite, mix and skip regions: Eq. 2's bounds with Eq. 2's strictness (stats.mix_regions)."""
    return tuple(int(r.sum()) for r in mix_regions(m))


def bin_edges(mix_clip, bins):
    """About `bins` histogram bins over [0, mix_clip] with edges on Eq. 2's bounds, so that no bin straddles one: the
    overwrite, mix and skip regions get bins of (nearly) one width. numpy's bins are closed on the left, so the edge at
    2/3 sits just above it (2/3 itself is overwrite, Eq. 2 being strict) and the one at 3/2 on it (3/2 is skip)."""
    width = mix_clip / bins
    parts = []
    for lo, hi in ((0.0, EQ2_LOW), (EQ2_LOW, EQ2_HIGH), (EQ2_HIGH, mix_clip)):
        if hi > lo:
            parts.append(np.linspace(lo, hi, max(1, round((hi - lo) / width)) + 1)[:-1])
    edges = np.r_[np.concatenate(parts), mix_clip]
    edges[np.isclose(edges, EQ2_LOW, rtol=0, atol=1e-12)] = np.nextafter(EQ2_LOW, np.inf)
    return edges


def mix_histogram(table, weights, mix_clip, bins, per_row):
    regions = (("overwrite", "tab:red"), ("mix", "tab:green"), ("skip", "tab:blue"))
    undefined_x = (mix_clip + 0.8, mix_clip + 1.8)  # where the two 'undefined' bars stand, right of the histogram
    fig, axes = panel_grid(len(table), per_row)
    edges = bin_edges(mix_clip, bins)
    for ax, (block, t) in zip(axes, table.items()):
        undefined = t["undefined_in"] | t["undefined_pre"]
        m = np.clip(t["mix"], 0, mix_clip)
        for (lo, hi), (name, color) in zip(((0, EQ2_LOW), (EQ2_LOW, EQ2_HIGH), (EQ2_HIGH, mix_clip)), regions):
            ax.axvspan(lo, hi, color=color, alpha=0.08, lw=0)
        ok = ~undefined
        ax.hist([m[ok & ~t["passes"]], m[ok & t["passes"]]], bins=edges, stacked=True, color=["0.45", "tab:orange"],
                label=["other channels", "passing Eq. 1 & 2"], edgecolor="white", lw=0.5)  # edges: adjacent bins read apart
        # the convention values apart, as bars of their own: they are not measured ratios
        n_undef = [int(t["undefined_in"].sum()), int(t["undefined_pre"].sum())]
        ax.bar(undefined_x, n_undef, width=0.6, color="white", edgecolor="0.35", hatch="///", lw=0.8)
        for x, k in zip(undefined_x, n_undef):
            ax.text(x, k, str(k), ha="center", va="bottom", fontsize=7)
        ax.axvline(mix_clip + 0.2, color="0.6", lw=0.6, ls=":")
        counts = region_counts(t["mix"][ok])
        ax.set_title(f"Block {block} ({len(m)} channels)", fontsize=9)
        ax.text(0.7, 0.95, "\n".join([f"{name}: {k}" for (name, _), k in zip(regions, counts)] + [f"undefined: {sum(n_undef)}"]),
                transform=ax.transAxes, ha="right", va="top", fontsize=7.5, linespacing=1.3)
        ax.set_xlim(0, undefined_x[1] + 0.5)
        ticks = list(np.arange(0, mix_clip + 1))
        ax.set_xticks(ticks + list(undefined_x), [f"\u2265{x:g}" if x == mix_clip else f"{x:g}" for x in ticks] +
                      ["m:=0", "m:=10"])
        ax.set_xlabel(f"mix ratio m (clipped at {mix_clip:g})  |  no ratio", fontsize=8)
        ax.set_ylabel("channels", fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
        ax.tick_params(labelsize=6.5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.25) for _, c in regions] + \
              [plt.Rectangle((0, 0), 1, 1, color="0.45"), plt.Rectangle((0, 0), 1, 1, color="tab:orange"),
               plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="0.35", hatch="///")]
    labels = ["overwrite: m \u2264 2/3", "mix: 2/3 < m < 3/2 (Eq. 2)", "skip: m \u2265 3/2", "other channels",
              "passing Eq. 1 & 2", "no ratio: a Post \u2264 0 (m := 0 or 10)"]
    finish(fig, "Mix ratio m = Post(FZ of In) / Post(FZ of Pre) per channel: overwrite / mix / skip", handles, labels)
    stamp(fig, weights)
    return fig


def measured_spearman(x, t):
    """Spearman's rho of x with the mix ratio over the channels where m is a measured ratio: the convention values
    (m := 10 where Post(FZ of Pre) <= 0, m := 0 where Post(FZ of In) <= 0; criteria.mix_ratio) are left out."""
    ok = ~(t["undefined_in"] | t["undefined_pre"])
    return spearman(np.asarray(x)[ok], t["mix"][ok]), int(ok.sum())


def convention_label(table, key, where):
    """The legend entry of one convention value, with the value the table holds (criteria.py's default in brackets
    when no channel has it)."""
    values = sorted({v for t in table.values() for v in t["mix"][t[key]].tolist()})
    m = "/".join(f"{v:g}" for v in values) if values else ("10" if key == "undefined_pre" else "0")
    return f"m := {m} by convention where {where} (not a ratio: not in \u03c1)"


def mix_scatter(table, key, xlabel, title, weights, mix_clip, per_row):
    fig, axes = panel_grid(len(table), per_row)
    conventions = {"undefined_pre": ("Post(FZ of Pre) \u2264 0", "^"), "undefined_in": ("Post(FZ of In) \u2264 0", "v")}
    labels = {k: convention_label(table, k, where) for k, (where, _) in conventions.items()}
    labels["undefined_pre"] = labels["undefined_pre"].replace(" (not", f", drawn at {mix_clip:g} (not")
    handles = {}
    for ax, (block, t) in zip(axes, table.items()):
        x, m = t[key], np.clip(t["mix"], 0, mix_clip)
        ax.axhspan(EQ2_LOW, EQ2_HIGH, color="tab:green", alpha=0.08, lw=0)
        undefined = t["undefined_in"] | t["undefined_pre"]
        for name, color, s, where in (("other channels", "0.4", 8, ~t["passes"] & ~undefined),
                                      ("passing Eq. 1 & 2", "tab:orange", 12, t["passes"] & ~undefined)):
            handles[name] = ax.scatter(x[where], m[where], s=s, color=color, alpha=0.7 if s == 8 else 1, lw=0, zorder=3)  # over the
            # hollow convention markers: a measured m next to one shows inside it
        for k, (_, marker) in conventions.items():
            handles[labels[k]] = ax.scatter(x[t[k]], m[t[k]], s=14, marker=marker, facecolors="none", edgecolors="tab:red", lw=0.7)
        rho, n = measured_spearman(x, t)  # in the title, above the panel: a text inside would hide the points under it
        ax.set_title(f"Block {block} ({len(m)} channels)\n" + (f"Spearman \u03c1 = {rho:+.2f}" if rho == rho else
                                                                "Spearman \u03c1 = n/a") + f" ({n} measured m)", fontsize=9)
        ax.set_ylim(-0.15, mix_clip + 0.15)
        ticks = ax.get_yticks()
        ax.set_yticks(ticks, [f"\u2265{t:g}" if t == mix_clip else f"{t:g}" for t in ticks])
        ax.set_ylim(-0.15, mix_clip + 0.15)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # few x ticks: the weights' labels are long
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(f"mix ratio m (clipped at {mix_clip:g})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.tick_params(axis="x", labelrotation=30)
    finish(fig, title + " (Spearman \u03c1 over the measured ratios only)", list(handles.values()), list(handles), item_inches=3.4)
    stamp(fig, weights)
    return fig


def pass_frequency(stability, weights, per_row):
    blocks = {b: s for b, s in stability["blocks"].items() if len(s.get("pass_frequency", []))}
    n_runs = len(stability.get("runs", [])) or "?"
    fig, axes = panel_grid(len(blocks), per_row, width=4.2, height=2.4)
    for ax, (block, s) in zip(axes, blocks.items()):
        f = np.array(s["pass_frequency"], float)
        ax.bar(np.arange(len(f)), f, width=1.0, color="tab:orange", lw=0)
        jac = np.array(s.get("jaccard", [[1.0]]), float)
        off = jac[~np.eye(len(jac), dtype=bool)]
        mean_j = f"{np.nanmean(off):.2f}" if off.size else "n/a"
        counts = s.get("counts", [])
        ax.set_title(f"Block {block}: passing per run {'/'.join(map(str, counts))}\nin every run {len(s.get('always', []))}, "
                     f"mean Jaccard {mean_j}", fontsize=8.5)
        ax.set_xlim(-0.5, len(f) - 0.5)
        ax.set_ylim(0, 1.05)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6, min_n_ticks=1))  # channels are whole numbers
        if not (f > 0).any():  # no bar to draw: say why the panel is empty
            ax.text(0.5, 0.5, f"no channel passes in any of the {n_runs} runs", transform=ax.transAxes, ha="center", va="center",
                    fontsize=8.5, color="0.35")
        ax.set_xlabel("channel", fontsize=8)
        ax.set_ylabel("pass frequency", fontsize=8)
        ax.tick_params(labelsize=7)
    finish(fig, f"How often each channel passes Eq. 1 & 2 over {n_runs} FZ runs (seeds)")
    stamp(fig, weights)
    return fig


# ----------------------------------------------------------------------------------------------------
# Across architectures.

def relative_depth(arch_name, block):
    """Where block 'L.B' sits in the network: its position among all residual blocks, 1..n, divided by n (the last
    block is at 1; resnet18's 1.1 at 2/8, resnet50's 1.0 at 1/16). CORnet-S's blocks are its 8 steps: V4.1 is at 4/8."""
    residual = arch.net(arch_name).residual
    return (residual.index(block if arch_name == arch.CORNET else f"layer{block}") + 1) / len(residual)


def passing_by_depth(folders):
    """{folder: (architecture, weights id, [(relative depth, percent passing, block), ...])} from each criteria.json."""
    out = {}
    for folder in folders:
        path = criteria_file(folder)
        if not os.path.isfile(path):
            die(f"--across: no {path}: run python criteria.py --results {folder} (with that run's --arch) first")
        name = load_json(path, "criteria file").get("config", {}).get("arch", "resnet18")  # the folder's own architecture
        if name not in arch.ARCHS:
            die(f"{path}: unknown architecture {name!r}")
        crit = read_criteria(folder, arch.net(name))
        config = crit.get("config", {})
        points = sorted((relative_depth(name, b), s["percent"], b) for b, s in crit.get("blocks", {}).items())
        if not points:
            die(f"{path} has no measured block")
        out[folder] = (name, config.get("weights_id", "unknown"), points)
    return out


def across_architectures(runs):
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for folder, (name, weights_id, points) in runs.items():
        x, y, blocks = zip(*points)
        line, = ax.plot(x, y, marker="o", label=f"{name}, {split_weights_id(weights_id)[1]} ({folder})")
        for xi, yi, b in points:
            ax.annotate(b, (xi, yi), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=6, color=line.get_color())
    ax.set_xlim(0, 1.05)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("relative depth (block position among the residual blocks / their number)")
    ax.set_ylabel("criteria-passing channels (% of measured)")
    ax.set_title("Scale-invariance criteria (Eq. 1 and Eq. 2) across architectures", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    weights_ids = sorted({w for _, w, _ in runs.values()}, key=lambda w: (not is_random(w), w))  # a random one first: the loud stamp
    fig.subplots_adjust(bottom=0.16)
    stamp(fig, "; ".join(weights_ids))
    return fig


# ----------------------------------------------------------------------------------------------------

def main():
    configure(globals())
    net = arch.net(ARCH)
    written = []
    if ACROSS and not os.path.isfile(criteria_csv(RESULTS)):
        print(f"note: no {criteria_csv(RESULTS)}: only the across-architectures figure is drawn")
    else:
        table = read_table(net, criteria_csv(RESULTS))
        criteria = read_criteria(RESULTS, net) or {}
        weights = weights_of(criteria.get("config", {}), criteria.get("fz_files", {}))
        written += save_figure(mix_histogram(table, weights, MIX_CLIP, BINS, PANELS_PER_ROW), figure(RESULTS, "mix_hist"), dpi=DPI)
        bn = next(iter(net.blocks.values()))[1].rsplit(".", 1)[1]  # Pre's BatchNorm (bn2, or bn3 in a Bottleneck) and its convolution
        conv = "conv" + bn[-1]
        written += save_figure(mix_scatter(table, "bn2_abs", f"|{bn} weight| of the channel",
                                           f"Mix ratio against the block's |{bn} weight| per channel", weights, MIX_CLIP,
                                           PANELS_PER_ROW), figure(RESULTS, "mix_vs_bn2"), dpi=DPI)
        written += save_figure(mix_scatter(table, "conv2_abs_mean", f"mean |{conv} weight| of the channel",
                                           f"Mix ratio against the mean |{conv} weight| feeding the channel", weights,
                                           MIX_CLIP, PANELS_PER_ROW), figure(RESULTS, "mix_vs_conv2"), dpi=DPI)
        print(f"Spearman rank correlation of the mix ratio with  |{bn} weight|  mean |{conv} weight|")
        for block, t in table.items():
            rhos = {key: measured_spearman(t[key], t)[0] for key in ("bn2_abs", "conv2_abs_mean")}
            n = measured_spearman(t["mix"], t)[1]
            shown = {key: f"{rho:+.3f}" if rho == rho else "n/a (below)" for key, rho in rhos.items()}
            print(f"  block {block:>4} ({n} of {len(t['mix'])} channels, without the convention values): "
                  f"{shown['bn2_abs']:>18}  {shown['conv2_abs_mean']:>20}")
            for key, rho in rhos.items():
                if rho != rho:
                    print(f"    no rho with {key} for block {block}: {no_rho(t[key][~(t['undefined_in'] | t['undefined_pre'])])}")

        stability_path = stability_file(RESULTS)
        if os.path.isfile(stability_path):
            stability = load_json(stability_path, "stability file")
            w = weights_of(criteria.get("config", {}), criteria.get("fz_files", {}), stability)
            if any(len(s.get("pass_frequency", [])) for s in stability.get("blocks", {}).values()):
                written += save_figure(pass_frequency(stability, w, PANELS_PER_ROW), figure(RESULTS, "pass_frequency"), dpi=DPI)
            else:
                print(f"note: {stability_path} measured no block, so no pass-frequency plot (python criteria.py --runs DIR1,DIR2,... "
                      "with FZs of the blocks in every run)")
        else:
            print(f"note: no {stability_path}, so no pass-frequency plot (make one with python criteria.py --runs DIR1,DIR2,... over FZ runs of different seeds)")
    if ACROSS:
        runs = passing_by_depth(ACROSS)
        print("Criteria-passing channels by relative depth:")
        for folder, (name, weights_id, points) in runs.items():
            print(f"  {name:<18} {weights_id:<28} " + "  ".join(f"{b} ({d:.2f}): {p:.1f}%" for d, p, b in points))
        written += save_figure(across_architectures(runs), figure(RESULTS, "across_archs"), dpi=DPI)
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main_guard(main, "figures written before the interruption are complete; the others were not written")
