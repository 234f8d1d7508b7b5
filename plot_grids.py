"""The paper's Figures 1, 3 and 4: for each criteria-passing channel of a block, a 3x3 grid. Columns: the block's
In, Pre and Post layers; rows: the center-neuron FZ, the whole-channel FZ, and a 3x3 montage of the channel's
top-9 natural images (docs/method.md section 6).

    python plot_grids.py                               # every block with passing channels (criteria.json)
    python plot_grids.py --channels "2.1:5,17;3.1:40"  # a few channels named by hand (Figure 1 style)

Reads <RESULTS>/criteria.json, fzs/<layer>/{center,channel}.pt and natural/summary.pt; writes
<RESULTS>/figures/grids_block<B>.png (_p1, _p2, ... for several pages) and .pdf (all pages), or grids_selected.*
for channels named by hand. Missing channel FZs or natural images leave grey 'missing' panels, and the script
prints the command that fills them; with no FZ at all for the channels asked, it stops with that command instead.
"""

import math
import os

import matplotlib.pyplot as plt

import arch
from cli import configure, die, main_guard
from figures import montage, save_figure, stamp
from imagenet import ImageError, decode_rgb, eval_views
from results import (
    FZ_MATCH_KEYS,
    command,
    config_mismatch,
    figure,
    figures_dir,
    fz_file,
    fzs_command,
    fzs_dir,
    natural_command,
    read_criteria,
    read_fz,
    read_summary,
    weights_of,
)

RESULTS = "results"  # results folder: reads criteria.json, fzs/, natural/; writes figures/
ARCH = "resnet18"  # the torchvision ResNet the results were made with (python arch.py --arch NAME)
CHANNELS = ""  # channels named by hand, 'block:channels;block:channels' e.g. '2.1:5,17;3.1:40'; empty: the passing channels of criteria.json
ONLY_BLOCKS = ""  # comma-separated blocks to plot (e.g. 2.1,3.1); empty: every block with passing channels
PER_ROW = 4  # channel grids per row of a page
ROWS_PER_PAGE = 4  # rows of channel grids per page (4 x 4 = 16 channels a page)
GRID_INCHES = 2.1  # width of one channel's grid on the page, inches
TILE = 112  # pixels per natural image in the top-9 montage (the PDF keeps them at this size)
NATURAL_ROOT = ""  # folder of the natural images if it moved since ablate.py recorded it (empty: summary.pt's root)
DPI = 200  # PNG resolution
# ---- end of flags (below: fixed constants, not flags)



# ----------------------------------------------------------------------------------------------------
# Inputs


def read_fzs(net, results, layer, objective):
    """{channel: (uint8 HxWx3 image, achieved activation)} and the file's config, or ({}, None) when there is no file."""
    d = read_fz(results, layer, objective, required=False)
    if d is None:
        return {}, None
    net.check(d.get("config", {}), fz_file(results, layer, objective))
    images = d["images"].numpy().transpose(0, 2, 3, 1)
    acts = d["activation"].tolist() if d.get("activation") is not None else [None] * len(images)
    return {int(c): (images[i], acts[i]) for i, c in enumerate(d["channels"].tolist())}, d.get("config", {})


def eval_view(path):
    """The standard eval view of an image file (resize the shorter side to 256, center-crop 224), HxWx3 uint8."""
    try:
        return eval_views(decode_rgb(path), [0])[0].permute(1, 2, 0).numpy()
    except ImageError as e:
        die(f"{e}; if the natural images moved, pass their folder with --natural_root")


def which_channels(net, criteria, spec, only, results):
    """[(block, [channels])]: named by hand ('2.1:5,17;3.1:40'), else the passing channels of criteria.json."""
    if spec:
        return list(net.parse_block_channels(spec).items())
    if criteria is None:
        die(f"no criteria.json in {results}: run {command('criteria.py', '', net.name, None, results)} first, or name "
            "channels with --channels 2.1:5,17")
    blocks = [b.strip() for b in only.split(",") if b.strip()] or list(criteria["blocks"])
    for b in blocks:
        if b not in criteria["blocks"]:
            die(f"block {b} is not in criteria.json (it has {', '.join(criteria['blocks'])})")
    return [(b, sorted(criteria["blocks"][b]["passing"])) for b in blocks if criteria["blocks"][b]["passing"]]


# ----------------------------------------------------------------------------------------------------
# Drawing

def show(ax, image, activation=None):
    """One panel; under an FZ, the activation it achieved, in red and marked 'not driven' when it is not positive (the
    optimisation never got the unit to fire from its start image: the image is that start, not a failed render; the
    unit may still fire on other images, such as another layer's FZ, so it is not called dead)."""
    ax.set_xticks([])
    ax.set_yticks([])
    if activation is not None:
        dead = activation <= 0
        ax.text(0.5, 0.015, f"not driven ({activation:.2g})" if dead else f"{activation:.3g}", transform=ax.transAxes, ha="center",
                va="bottom", fontsize=5.5, color="red" if dead else "black", weight="bold" if dead else "normal",
                bbox=dict(facecolor="white", alpha=0.75, lw=0, pad=0.6))
    if image is None:
        ax.set_facecolor("0.85")
        ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=7, color="0.35", transform=ax.transAxes)
        for s in ax.spines.values():
            s.set_color("0.7")
    else:
        ax.imshow(image, interpolation="antialiased")
        for s in ax.spines.values():
            s.set_visible(False)


def draw_page(grids, title, weights, per_row, grid_inches):
    """One page: channel grids tiled per_row a row, each grid_inches wide. grids: [(title, 3x3 nested list of images or
    None)]. Everything is placed in inches, so the panels keep their size whatever the number of grids."""
    ncols = min(per_row, len(grids))
    nrows = math.ceil(len(grids) / ncols)
    label, right, gap, name_h, header_h, below = 0.2, 0.08, 0.03, 0.22, 0.15, 0.12  # inches inside one grid's cell
    panel = (grid_inches - label - right - 2 * gap) / 3
    cell_h = name_h + header_h + 3 * panel + 2 * gap + below
    head, foot = 0.3 + 0.18 * title.count("\n"), 0.22  # inches for the page title and the weights line
    W, H = ncols * grid_inches, nrows * cell_h + head + foot
    fig = plt.figure(figsize=(W, H))
    fig.text(0.5, 1 - 0.1 / H, title, fontsize=10, ha="center", va="top")
    for k, (name, panels) in enumerate(grids):
        x0, top = (k % ncols) * grid_inches, H - head - (k // ncols) * cell_h  # the cell's top-left corner, inches
        fig.text((x0 + label + 1.5 * panel + gap) / W, (top - name_h / 2) / H, name, fontsize=8.5, weight="bold",
                 ha="center", va="center")
        for r in range(3):
            for c in range(3):
                x = x0 + label + c * (panel + gap)
                y = top - name_h - header_h - (r + 1) * panel - r * gap
                ax = fig.add_axes((x / W, y / H, panel / W, panel / H))
                image, activation = panels[r][c] if isinstance(panels[r][c], tuple) else (panels[r][c], None)
                show(ax, image, activation)
                if r == 0:
                    ax.set_title(("In", "Pre", "Post")[c], fontsize=7.5, pad=2)
                if c == 0:
                    ax.set_ylabel(("center FZ", "channel FZ", "top-9 natural")[r], fontsize=6.5, labelpad=2)
    stamp(fig, weights)
    return fig


# ----------------------------------------------------------------------------------------------------

def main():
    configure(globals())
    net = arch.net(ARCH)
    criteria = read_criteria(RESULTS, net)
    chosen = which_channels(net, criteria, CHANNELS, ONLY_BLOCKS, RESULTS)
    if not chosen:
        print("no block has passing channels in criteria.json: nothing to plot "
              "(name channels by hand with --channels 2.1:0,1 to see their grids)")
        return

    summary = read_summary(RESULTS, net, required=False)
    configs, missing, grids_by_block, center_config = [], [], {}, {}
    if criteria is not None:
        configs.append(criteria.get("config", {}))
        configs += list(criteria.get("fz_files", {}).values())
    if summary is not None:
        configs.append(summary.get("config", {}))

    reference = None  # the config every FZ file of the figure must share (FZ_MATCH_KEYS)
    for block, channels in chosen:
        layers = net.blocks[block]
        fzs = {}
        for layer in layers:
            for objective in ("center", "channel"):
                images, config = read_fzs(net, RESULTS, layer, objective)
                fzs[layer, objective] = images
                if config is None:
                    continue
                configs.append(config)
                if objective == "center":
                    center_config = center_config or config
                known = (criteria or {}).get("fz_files", {}).get(layer)
                why = known and objective == "center" and config_mismatch(known, config, FZ_MATCH_KEYS)
                if why:
                    die(f"fzs/{layer}/center.pt changed since criteria.py ran ({why}): run python criteria.py again")
                reference = reference or config  # the first file drawn (the In center FZs when they exist)
                why = config_mismatch(reference, config, FZ_MATCH_KEYS)
                if why:
                    die(f"fzs/{layer}/{objective}.pt was made under another config than fzs/{reference.get('layer')}/"
                        f"{reference.get('objective')}.pt ({why}): a grid compares FZs of one optimisation setting; remake it "
                        f"with: {fzs_command([layer], net.name, reference.get('weights'), RESULTS, reference, objective=objective)}")
        grids = []
        for c in channels:
            panels = [[fzs[layer, "center"].get(c) for layer in layers],
                      [fzs[layer, "channel"].get(c) for layer in layers],
                      [None, None, None]]
            if summary is not None:
                root = NATURAL_ROOT or summary["root"]
                for j, layer in enumerate(layers):
                    if layer in summary["top9_index"]:
                        idx = summary["top9_index"][layer][c].tolist()
                        panels[2][j] = montage([eval_view(os.path.join(root, summary["paths"][i])) for i in idx], TILE)
            for r, objective in enumerate(("center", "channel")):
                for layer, image in zip(layers, panels[r]):
                    if image is None:
                        missing.append((objective, block, layer, c))
            if any(p is None for p in panels[2]):
                missing.append(("natural", block, None, c))
            grids.append((f"block {block}, channel {c}" if CHANNELS else f"channel {c}", panels))
        grids_by_block[block] = grids

    weights = weights_of(*configs)
    if not any(image is not None for grids in grids_by_block.values() for _, panels in grids for row in panels[:2] for image in row):
        asked = ";".join(f"{block}:{arch.channel_ranges(channels)}" for block, channels in chosen)
        commands = "; ".join(fzs_command(list(net.blocks[block]), net.name, weights, RESULTS, center_config or None, channels,
                                         "center,channel") for block, channels in chosen)
        die(f"no FZs in {fzs_dir(RESULTS)} for channels {asked}: nothing to draw; make them with: {commands}")
    os.makedirs(figures_dir(RESULTS), exist_ok=True)
    page_size = PER_ROW * ROWS_PER_PAGE
    if CHANNELS:  # one figure of the channels named by hand, in the order given
        grids = [g for block, _ in chosen for g in grids_by_block[block]]
        pages = [draw_page(grids[i:i + page_size], "Selected channels: center-neuron FZ, whole-channel FZ, top-9 natural images\n"
                           f"In = the block's skip input, Pre = its last BatchNorm's output, Post = its output; weights {weights}", weights,
                           PER_ROW, GRID_INCHES)
                 for i in range(0, len(grids), page_size)]
        written = save_figure(pages, figure(RESULTS, "grids_selected"), dpi=DPI)
    else:
        written = []
        for block, channels in chosen:
            grids = grids_by_block[block]
            n = len(criteria["blocks"][block].get("passing", channels))
            total = criteria["blocks"][block].get("n_channels", net.channels(net.blocks[block][2]))
            measured = len(criteria["blocks"][block].get("measured", range(total)))
            of = f"{total} channels" if measured == total else f"{measured} measured channels (of {total})"
            pages = []
            for p, i in enumerate(range(0, len(grids), page_size)):
                page = f", page {p + 1} of {math.ceil(len(grids) / page_size)}" if len(grids) > page_size else ""
                title = (f"Block {block}: the {n} of {of} passing Eq. 1 and Eq. 2{page}\n"
                         f"In = {net.blocks[block][0]}, Pre = {net.blocks[block][1]}, Post = {net.blocks[block][2]}; weights {weights}")
                pages.append(draw_page(grids[i:i + page_size], title, weights, PER_ROW, GRID_INCHES))
            written += save_figure(pages, figure(RESULTS, f"grids_block{block}"), dpi=DPI)
    for path in written:
        print(f"wrote {path}")
    report_missing(net, missing, weights, center_config, RESULTS)


def report_missing(net, missing, weights, like, results):
    """Say which panels are missing and the commands that fill them (one fzs.py command per block and objective,
    with the settings of the center FZs found, so that both rows come from the same optimisation)."""
    for objective in ("center", "channel"):
        for block in dict.fromkeys(b for o, b, _, _ in missing if o == objective):
            entries = [(layer, c) for o, b, layer, c in missing if o == objective and b == block]
            layers = [layer for layer in net.blocks[block] if any(layer == e[0] for e in entries)]
            chans = sorted({c for _, c in entries})
            print(f"missing {objective} FZs of block {block} ({', '.join(layers)}); make them with:\n"
                  f"  {fzs_command(layers, net.name, weights, results, like, chans, objective)}")
    blocks = list(dict.fromkeys(b for o, b, _, _ in missing if o == "natural"))
    if blocks:
        print(f"missing top-9 natural images (block {', '.join(blocks)}); make them with:\n"
              f"  {natural_command(net.name, weights, results)}")


if __name__ == "__main__":
    main_guard(main, "figures written before the interruption are complete; the others were not written")
