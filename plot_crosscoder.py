"""Figures of crosscoder.py (beyond channels: the group crosscoders' latents).

- crosscoder_profiles_<block>: the transform-block heat maps of the most frequent latents of each type (summation,
  invariant, equivariant): for each latent, In, Pre and Post side by side, the cosine between the role's decoder
  blocks at every pair of zooms (1 on the diagonal; a latent whose blocks keep one direction over z is uniform);
- crosscoder_norms_<block>: the norm-by-zoom curves n_f(r, z) of In, Pre and Post for the summation latents (the
  paper's claim: In peaks zoomed out, Pre zoomed in, Post flat), up to 16, most frequent first;
- crosscoder_top9_<block>: the top-9 natural images (largest codes) of the most frequent summation latents (then
  invariant ones), a 3x3 montage each; only where the crosscoder was trained on the natural stage's images;
- crosscoder_si: per block, the distribution of Post's invariance index (stats.invariance_index, tuning.py's SI) of
  the latents' norm curves against that of the channels' tuning curves (tuning/curves.pt, where tuning.py has run).

    python plot_crosscoder.py

Reads <RESULTS>/crosscoder.json, crosscoder/<block>.pt and, where present, tuning/curves.pt; writes
<RESULTS>/figures/crosscoder_*.
"""

import os
import textwrap

import matplotlib.pyplot as plt
import numpy as np

from cli import configure, die, main_guard
from figures import montage, save_figure, stamp
from imagenet import ImageError, decode_rgb, eval_views
from results import (
    crosscoder_file,
    crosscoder_model,
    figure,
    load_json,
    load_pt,
    natural_summary,
    tuning_curves,
    weights_of,
)

RESULTS = "results"  # reads crosscoder.json, crosscoder/<block>.pt, tuning/curves.pt; writes figures/crosscoder_*
PER_TYPE = 4  # heat maps: the most frequent latents of each type
CURVES = 16  # norm curves: at most this many summation latents per block
TOP9 = 8  # top-9 montages: this many latents per block (summation first, then invariant)
TILE = 96  # pixels per natural image in a montage
DPI = 200  # PNG resolution
# ---- end of flags (below: fixed constants, not flags)
TYPES = ("summation", "invariant", "equivariant")
ROLES = (("In", "tab:blue", dict(marker="o", ms=2.5, lw=1.1)), ("Pre", "tab:orange", dict(marker="s", ms=4, mfc="none", lw=1.5, ls="--")),
         ("Post", "black", dict(marker="o", ms=2, lw=0.9)))


def most_frequent(types, frequency, kind, n):
    """The indices of the n most frequent latents of one type (ties to the lower index)."""
    idx = np.flatnonzero(np.asarray(types) == kind)
    return idx[np.argsort(-np.asarray(frequency)[idx], kind="stable")][:n]


def profile_figure(block, cc, per_type, weights):
    zoom = cc["zooms"]
    rows = [(kind, most_frequent(cc["types"], cc["frequency"], kind, per_type)) for kind in TYPES]
    fig, axes = plt.subplots(len(rows), per_type, figsize=(2.6 * per_type + 0.8, 1.25 * len(rows) + 0.7), squeeze=False)
    ticks, im = [f"{z:.2g}" for z in zoom], None
    for i, (kind, latents) in enumerate(rows):
        for j in range(per_type):
            ax = axes[i, j]
            if j >= len(latents):
                ax.set_axis_off()
                if j == 0:
                    ax.text(0.5, 0.5, f"no {kind} latent", ha="center", va="center", fontsize=8)
                continue
            f = latents[j]
            image = np.concatenate([cc["profile"][f, r] for r in range(3)], axis=1)  # (Z, 3Z): In | Pre | Post
            im = ax.imshow(image, vmin=-1, vmax=1, cmap="RdBu_r", aspect="equal")
            for r in (1, 2):
                ax.axvline(r * len(zoom) - 0.5, color="k", lw=0.8)
            ax.set_xticks([len(zoom) // 2 + r * len(zoom) for r in range(3)], ["In", "Pre", "Post"], fontsize=6.5)
            ax.set_yticks(range(len(zoom)), ticks, fontsize=5.5)
            ax.set_title(f"{kind} latent {f} (freq {cc['frequency'][f]:.3f})", fontsize=7)
    fig.suptitle(f"Block {block}: transform-block profiles (cosine between a role's decoder blocks at zooms z, z')", fontsize=9)
    fig.tight_layout(rect=(0, 0.25 / fig.get_figheight(), 0.92, 1))
    if im is not None:  # in its own axes, right of the panels
        cbar = fig.colorbar(im, cax=fig.add_axes((0.935, 0.2, 0.012, 0.6)))
        cbar.set_label("cosine", fontsize=7)
        cbar.ax.tick_params(labelsize=6)
    stamp(fig, weights)
    return fig


def norms_figure(block, cc, n, weights):
    latents = most_frequent(cc["types"], cc["frequency"], "summation", n)
    cols = max(1, min(4, len(latents)))
    rows = max(1, -(-len(latents) // 4))
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.4, 2.5 * cols + 0.6), 2.1 * rows + 1.2), squeeze=False)
    for ax in axes.flat[len(latents):]:
        ax.set_axis_off()
    if not len(latents):
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, "no summation latent in this block", ha="center", va="center", fontsize=9)
    for ax, f in zip(axes.flat, latents):
        for r, (name, color, style) in enumerate(ROLES):
            ax.plot(cc["zooms"], cc["norms"][f, r], color=color, label=name, **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks([0.5, 1, 2], ["0.5x", "1x", "2x"])
        ax.tick_params(labelsize=6.5)
        ax.set_title(f"latent {f}: channel {int(cc['channel'][f])} (cos {cc['channel_cos'][f]:.2f})", fontsize=7)
    fig.suptitle(textwrap.fill(f"Block {block}: decoder block norms over zoom of the summation latents", 60), fontsize=9)
    if len(latents):
        fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, 0.22 / fig.get_figheight()))
    fig.tight_layout(rect=(0, 0.55 / fig.get_figheight(), 1, 1))
    stamp(fig, weights)
    return fig


def eval_view(path):
    """The standard eval view of an image file (resize 256, center-crop 224), HxWx3 uint8."""
    try:
        return eval_views(decode_rgb(path), [0])[0].permute(1, 2, 0).numpy()
    except ImageError as e:
        die(f"{e}; the natural stage's images must still be where ablate.py read them")


def top9_figure(block, cc, root, paths, n, tile, weights):
    latents = np.r_[most_frequent(cc["types"], cc["frequency"], "summation", n),
                    most_frequent(cc["types"], cc["frequency"], "invariant", n)][:n]
    cols, rows = max(1, min(4, len(latents))), max(1, -(-len(latents) // 4))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 0.4, 2.5 * rows + 0.9), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    if not len(latents):
        axes[0, 0].text(0.5, 0.5, "no summation or invariant latent", ha="center", va="center", fontsize=9)
    for ax, f in zip(axes.flat, latents):
        ax.imshow(montage([eval_view(os.path.join(root, paths[int(i)])) for i in cc["top9"][f]], tile))
        ax.set_title(f"{cc['types'][f]} latent {f}\nchannel {int(cc['channel'][f])} (cos {cc['channel_cos'][f]:.2f})", fontsize=7)
    fig.suptitle(f"Block {block}: each latent's top-9 natural images (largest codes, best first)", fontsize=9)
    fig.tight_layout(rect=(0, 0.25 / fig.get_figheight(), 1, 1))
    stamp(fig, weights)
    return fig


def si_figure(blocks, si_latents, si_channels, weights):
    n = len(blocks)
    cols, rows = min(4, n), -(-n // 4)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows + 0.7), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    bins = np.linspace(0, 1, 21)
    for ax, b in zip(axes.flat, blocks):
        lat = si_latents[b][np.isfinite(si_latents[b])]
        ax.hist(np.clip(lat, 0, 1), bins=bins, density=True, color="tab:purple", alpha=0.6, label=f"latents ({len(lat)})")
        if si_channels.get(b) is not None:
            ch = si_channels[b][np.isfinite(si_channels[b])]
            ax.hist(np.clip(ch, 0, 1), bins=bins, density=True, histtype="step", color="black", lw=1.5, label=f"channels ({len(ch)})")
        ax.set_title(f"Block {b}" + ("" if si_channels.get(b) is not None else " (no tuning.py channels)"), fontsize=8.5)
        ax.set_xlabel("Post's invariance index over zoom (below 0 drawn at 0)", fontsize=7.5)
        ax.set_ylabel("density", fontsize=7.5)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    fig.suptitle("Invariance index: crosscoder latents (decoder norms) against channels (tuning curves)", fontsize=9.5)
    fig.tight_layout(rect=(0, 0.25 / fig.get_figheight(), 1, 1))
    stamp(fig, weights)
    return fig


def main():
    configure(globals())
    summary = load_json(crosscoder_file(RESULTS), "crosscoder summary (run python crosscoder.py first)")
    blocks = list(summary["blocks"])
    if not blocks:
        die(f"{crosscoder_file(RESULTS)} holds no block: run python crosscoder.py")
    tuning = load_pt(tuning_curves(RESULTS), "tuning curves") if os.path.isfile(tuning_curves(RESULTS)) else None
    weights = weights_of(summary["config"], *([tuning["config"]] if tuning else []))
    si_latents, si_channels = {}, {}
    natural = "natural" in summary["config"].get("source", {})
    images = load_pt(natural_summary(RESULTS), "natural-image summary (the crosscoder's images)") if natural else None
    for b in blocks:
        cc = load_pt(crosscoder_model(RESULTS, b), "crosscoder (run python crosscoder.py again)")
        if cc["config"].get("weights") != summary["config"].get("weights"):
            die(f"{crosscoder_model(RESULTS, b)} and {crosscoder_file(RESULTS)} come from different runs: run python crosscoder.py again")
        alive = np.asarray(cc["types"]) != "dead"
        si_latents[b] = np.asarray(cc["si"])[alive, 2]
        if tuning is not None:
            rows = [g for g, (bb, _) in enumerate(tuning["units"]) if bb == b]
            si_channels[b] = np.asarray(tuning["si"])[rows, 2] if rows else None
        figs = [(f"crosscoder_profiles_{b}", profile_figure(b, cc, PER_TYPE, weights)),
                (f"crosscoder_norms_{b}", norms_figure(b, cc, CURVES, weights))]
        if natural:  # the top-9 images exist only for the natural stage's images
            figs.append((f"crosscoder_top9_{b}", top9_figure(b, cc, images["root"], images["paths"], TOP9, TILE, weights)))
        for name, fig in figs:
            for path in save_figure(fig, figure(RESULTS, name), dpi=DPI):
                print(f"wrote {path}")
    for path in save_figure(si_figure(blocks, si_latents, si_channels, weights), figure(RESULTS, "crosscoder_si"), dpi=DPI):
        print(f"wrote {path}")


if __name__ == "__main__":
    main_guard(main, "figures written before the interruption are complete; the others were not written")
