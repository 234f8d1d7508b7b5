"""Figures of latency.py (the paper's latency prediction on CORnet-S).

- latency_onset: per area (columns) and stimulus set (rows), the mean onset over the zooms, criteria-passing units
  against the others, intact (solid, +- one standard error) and with the t = 0 bypass zeroed (dotted); the prediction
  is an onset that rises with the zoom for the passing units (earlier for small scales);
- latency_responses: example units (per area, the passing units with the most negative onset shift on their natural
  images), r(t, z) over the steps t, one line per zoom, intact (solid) and with the bypass zeroed (dashed).

    python plot_latency.py --results results_cornet

Reads <RESULTS>/latency/curves.pt and latency.json (latency.py); writes <RESULTS>/figures/latency_*.
"""


import matplotlib.pyplot as plt
import numpy as np

import arch
from cli import configure, die, main_guard
from figures import save_figure, stamp
from results import figure, latency_curves, latency_file, read_stage, weights_of

RESULTS = "results"  # reads latency/curves.pt and latency.json; writes figures/latency_*
ARCH = "cornet_s"  # the architecture latency.py ran on
EXAMPLES = 4  # example units per area in latency_responses
DPI = 200  # PNG resolution
# ---- end of flags (below: fixed constants, not flags)
SET_NAMES = {"natural": "own top natural images", "in_fz": "its In FZ", "pre_fz": "its Pre FZ"}
GROUPS = (("passing", "tab:orange", "criteria-passing"), ("other", "0.45", "other measured"))


def mean_se(v):
    """Mean and standard error over axis 0, NaNs left out (NaN where fewer than one / two values)."""
    ok = np.isfinite(v)
    n = ok.sum(0)
    mean = np.where(n > 0, np.where(ok, v, 0).sum(0) / np.maximum(n, 1), np.nan)
    var = np.where(n > 1, (np.where(ok, v - mean, 0) ** 2).sum(0) / np.maximum(n - 1, 1), np.nan)
    return mean, np.sqrt(var / np.maximum(n, 1))


def onset_figure(c, summary, weights):
    areas, sets = list(summary["areas"]), list(c["sets"])
    zoom = np.array(c["zooms"])
    fig, axes = plt.subplots(len(sets), len(areas), figsize=(3.3 * len(areas) + 0.4, 2.6 * len(sets) + 1.0), squeeze=False)
    for j, a in enumerate(areas):
        rows = np.array([g for g, u in enumerate(c["units"]) if u[0] == a])
        group = np.array(c["group"])[rows]
        for i, s in enumerate(sets):
            ax = axes[i, j]
            for name, color, label in GROUPS:
                on = c["onset"][rows[group == name], i]  # (n, conditions, Z)
                n = int(np.isfinite(on[:, 0]).all(-1).sum())
                if not n:
                    continue
                m, se = mean_se(on[:, 0])
                ax.plot(zoom, m, color=color, marker="o", ms=3, lw=1.3, label=f"{label} ({n})")
                ax.fill_between(zoom, m - se, m + se, color=color, alpha=0.2, lw=0)
                ax.plot(zoom, mean_se(on[:, 1])[0], color=color, ls=":", lw=1.2, label=f"{label}, bypass zeroed")
            t = summary["areas"][a]["sets"][s]["intact"]
            p, auc = t["passing"], t["passing_vs_other"]["auc"]
            fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
            ax.set_title(f"{a}, {SET_NAMES.get(s, s)}\npassing shift {fmt(p['mean_shift'], '+.2f')} (p = {fmt(p['p_earlier'], '.2g')}), "
                         f"AUC {fmt(auc, '.2f')}", fontsize=7.5)
            ax.axvline(1, color="0.85", lw=0.6)
            ax.set_xscale("log", base=2)
            ticks = [z for z in (0.5, 1, 2) if zoom.min() <= z <= zoom.max()]
            ax.set_xticks(ticks, [f"{z:g}x" for z in ticks])
            ax.set_ylim(-0.15, summary["areas"][a]["steps"] + 0.15)
            ax.set_yticks(range(summary["areas"][a]["steps"] + 1))
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("onset (step)", fontsize=8)
            if i == len(sets) - 1:
                ax.set_xlabel("zoom (< 1: the feature small)", fontsize=8)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab.split(" (")[0] not in [x.split(" (")[0] for x in labels]:
                handles.append(h)
                labels.append(lab.split(" (")[0])
    H = fig.get_figheight()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False, bbox_to_anchor=(0.5, 0.22 / H))
    fig.suptitle("Onset by zoom: the first step reaching half of the unit's maximum (the prediction: earlier for small scales "
                 "in the passing units)", fontsize=9)
    fig.tight_layout(rect=(0, 0.55 / H, 1, 1))
    stamp(fig, weights)
    return fig


def examples(c, a, k):
    """Up to k units of area a: the passing units with the most negative natural-image onset shift (others if none pass)."""
    rows = np.array([g for g, u in enumerate(c["units"]) if u[0] == a])
    group = np.array(c["group"])[rows]
    shift = c["onset_shift"][rows, 0, 0]
    for name in ("passing", "other"):
        pick = rows[(group == name) & np.isfinite(shift)]
        if len(pick):
            order = np.argsort(c["onset_shift"][pick, 0, 0], kind="stable")
            return pick[order[:k]], name
    return np.array([], dtype=np.int64), None


def responses_figure(c, k, weights):
    areas = list(dict.fromkeys(u[0] for u in c["units"]))
    picks = {a: examples(c, a, k) for a in areas}
    cols = max(1, max(len(p) for p, _ in picks.values()))
    zoom = np.array(c["zooms"])
    colors = plt.cm.viridis(np.linspace(0, 1, len(zoom)))
    fig, axes = plt.subplots(len(areas), cols, figsize=(2.6 * cols + 0.6, 2.4 * len(areas) + 1.1), squeeze=False)
    for i, a in enumerate(areas):
        units, name = picks[a]
        for j in range(cols):
            ax = axes[i, j]
            if j >= len(units):
                ax.set_axis_off()
                continue
            g = units[j]
            T = int(c["steps"][g])
            for z, color in enumerate(colors):
                ax.plot(range(T), c["r"][g, 0, 0, :T, z], color=color, marker="o", ms=2.5, lw=1.1)
                ax.plot(range(T), c["r"][g, 0, 1, :T, z], color=color, ls="--", lw=0.8, alpha=0.7)
            ax.set_xticks(range(T))
            ax.set_title(f"{a} channel {c['units'][g][1]} ({name})\nonset shift {c['onset_shift'][g, 0, 0]:+.2f}", fontsize=7.5)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("mean center response", fontsize=7.5)
            ax.set_xlabel("step t", fontsize=7.5)
    H = fig.get_figheight()
    handles = [plt.Line2D([], [], color=colors[z], lw=1.5) for z in (0, len(zoom) // 2, len(zoom) - 1)]
    handles += [plt.Line2D([], [], color="0.3", lw=1.1), plt.Line2D([], [], color="0.3", ls="--", lw=0.8)]
    labels = [f"zoom {zoom[z]:.3g}x" for z in (0, len(zoom) // 2, len(zoom) - 1)] + ["intact", "t = 0 bypass zeroed"]
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7, frameon=False, bbox_to_anchor=(0.5, 0.22 / H))
    fig.suptitle("Responses over the steps, one line per zoom (on each unit's own top natural images)", fontsize=9)
    fig.tight_layout(rect=(0, 0.5 / H, 1, 1))
    stamp(fig, weights)
    return fig


def main():
    configure(globals())
    net = arch.net(ARCH)
    c, summary = read_stage(RESULTS, net, latency_curves(RESULTS), latency_file(RESULTS), "latency.py")
    if EXAMPLES < 1:
        die(f"--examples must be at least 1, not {EXAMPLES}")
    weights = weights_of(c["config"])
    for name, fig in (("latency_onset", onset_figure(c, summary, weights)), ("latency_responses", responses_figure(c, EXAMPLES, weights))):
        for p in save_figure(fig, figure(RESULTS, name), dpi=DPI):
            print(f"wrote {p}")


if __name__ == "__main__":
    main_guard(main, "figures written before the interruption are complete; the others were not written")
