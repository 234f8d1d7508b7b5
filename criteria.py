"""Scale-invariance criteria (docs/method.md section 3) and the mix ratio of the predecessor paper, per channel.

For every probed block b = (In, Pre, Post) and channel c, with X̂_In and X̂_Pre the stored center-neuron FZs
of In_c and Pre_c (8-bit images from fzs.py, normalised, untransformed):

    Eq. 1   ReLU(Pre_c(X̂_In)) < Pre_c(S(X̂_In))          S = center-crop 112, bilinear resize to 224
    Eq. 2   2/3 < Post_c(X̂_In) / Post_c(X̂_Pre) < 3/2    (fails when Post_c(X̂_Pre) <= 0)

A channel passes when both hold. The mix ratio m_c = Post_c(X̂_In) / Post_c(X̂_Pre) is kept for the
skip / mix / overwrite spectrum, next to |bn2.weight[c]| and mean |conv2.weight[c]|.

Each image set is measured in batched truncated forward passes (one image per channel, the channel's
activation picked from the batch's diagonal). Several FZ runs with different seeds (--runs) give the
stability of the passing sets, which the papers do not measure.

    python criteria.py --results results             # with the weights the FZ files record (or --weights W, which must agree)
    python criteria.py --runs results_seed0,results_seed1,results_seed2
"""

import functools
import hashlib
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import arch
from cli import configure, die, main_guard, pick_device, resolve_batch, use_device
from results import (
    FZ_MATCH_KEYS,
    as_weights_id,
    check_fz_folder,
    check_named_weights,
    config_mismatch,
    criteria_csv,
    criteria_file,
    fz_file,
    fzs_command,
    fzs_dir,
    is_random,
    lock_results,
    read_fz,
    released_problem,
    save_json,
    stability_file,
    versions,
    weights_flag,
    write_csv,
)
from stats import EQ2_HIGH, EQ2_LOW
from stream import load_model, normalize, read_center, to_float, zoom

ARCH = "resnet18"  # a torchvision ResNet or cornet_s (python arch.py --arch NAME lists its blocks); must be the one the FZs were made with
WEIGHTS = ""  # model weights: torchvision's (IMAGENET1K_V1, DEFAULT, ...), random[:SEED] (tests and smoke runs only) or a state_dict path; empty: the weights the FZ files record (IMAGENET1K_V1 where there are none)
RESULTS = "results"  # folder holding fzs/ (from fzs.py); criteria.json and criteria.csv are written here
BLOCKS = []  # blocks to measure, e.g. 2.1,3.1 (empty: every probed block of ARCH; resnet18's are 1.1,2.0,2.1,3.0,3.1,4.0,4.1)
RUNS = []  # results folders of FZ runs made with different seeds, for the stability report (empty: no report)
DEVICE = "auto"  # auto, cpu, cuda or cuda:N
BATCH = "auto"  # images per forward pass: a number, or auto (64 on the CPU; on a GPU, from its free memory)
MIX_IF_PRE_NONPOS = 10.0  # m_c when Post_c(X̂_Pre) <= 0 (released code; its rule comes first, so also when both are <= 0)
MIX_IF_IN_NONPOS = 0.0  # m_c when Post_c(X̂_In) <= 0 < Post_c(X̂_Pre) (released code)
POST_AS_RELEASED = False  # True: In (where it is a block output) and Post are read before their block's final ReLU, as the released stream_inspect.py; the FZs must be made with it too (docs/differences.md)

# ---- end of flags (below: fixed constants, not flags)
# The paper's passing channels (zero-indexed, its Figs. 1, 3 and 4): the reference for resnet18 with IMAGENET1K_V1.
PAPER_PASSING = {
    "1.1": [10, 19, 21, 25, 44, 50],
    "2.0": [50, 53],
    "2.1": [13, 15, 18, 21, 25, 30, 31, 35, 36, 47, 48, 52, 56, 67, 68, 72, 88, 105, 106, 108, 110, 124, 127],
    "3.0": [],
    "3.1": [1, 9, 13, 14, 16, 22, 29, 48, 58, 59, 63, 67, 69, 80, 88, 100, 113, 117, 126, 132, 135, 137, 141, 144, 147, 149,
             153, 158, 161, 163, 164, 168, 178, 179, 180, 187, 188, 192, 198, 200, 204, 206, 215, 220, 226, 250],
    "4.0": [],
    "4.1": [],
}
PAPER_WEIGHTS = "IMAGENET1K_V1"  # the weights the paper's lists were measured with (resnet18's: an id without an architecture)
CSV_COLUMNS = "block channel pre_in pre_zoom_in post_in post_pre eq1 eq2 passes mix bn2_abs conv2_abs_mean".split()


# ----------------------------------------------------------------------------------------------------
# The criteria, on activations (arrays or tensors of equal shape, one value per channel).

def _f64(x):
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


def eq1(pre_in, pre_zoom_in):
    """Eq. 1: ReLU(Pre_c(X̂_In)) < Pre_c(S(X̂_In)), i.e. zooming in raises Pre in the positive domain."""
    return np.maximum(_f64(pre_in), 0.0) < _f64(pre_zoom_in)


def eq2(post_in, post_pre):
    """Eq. 2: EQ2_LOW < Post_c(X̂_In) / Post_c(X̂_Pre) < EQ2_HIGH, strict; False where the denominator is <= 0."""
    post_in, post_pre = _f64(post_in), _f64(post_pre)
    ok = post_pre > 0
    ratio = post_in / np.where(ok, post_pre, 1.0)
    return ok & (ratio > EQ2_LOW) & (ratio < EQ2_HIGH)


def mix_ratio(post_in, post_pre, if_pre_nonpos, if_in_nonpos):
    """m_c = Post_c(X̂_In) / Post_c(X̂_Pre), with the released conventions (--mix_if_pre_nonpos, --mix_if_in_nonpos),
    applied in their order: if_pre_nonpos where Post_c(X̂_Pre) <= 0 (whatever Post_c(X̂_In) is), else if_in_nonpos
    where Post_c(X̂_In) <= 0."""
    post_in, post_pre = _f64(post_in), _f64(post_pre)
    ratio = post_in / np.where(post_pre > 0, post_pre, 1.0)
    return np.where(post_pre <= 0, if_pre_nonpos, np.where(post_in <= 0, if_in_nonpos, ratio))


def jaccard(a, b):
    """|a & b| / |a | b| of two sets of channels; two empty sets count as identical (1.0)."""
    a, b = set(a), set(b)
    return 1.0 if not a and not b else len(a & b) / len(a | b)


# ----------------------------------------------------------------------------------------------------
# FZ files: <results>/fzs/<layer>/center.pt = {images uint8 (N,3,224,224), channels int64 (N,), activation, config}.

def load_fz(net, results, layer):
    """The center FZ file of a layer, checked: made for net's architecture, uint8 images and distinct channels."""
    path = fz_file(results, layer, "center")
    fz = read_fz(results, layer, "center")
    if not isinstance(fz, dict) or not all(k in fz for k in ("images", "channels", "config")):
        die(f"{path} is not an FZ file of fzs.py (a dict with images, channels, activation, config)")
    net.check(fz["config"], path)
    images, channels = fz["images"], torch.as_tensor(fz["channels"]).long()
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, 224, 224) or len(images) != len(channels):
        die(f"{path}: expected uint8 images (N,3,224,224) and N channels, found {images.dtype} {tuple(images.shape)} and {len(channels)} channels")
    n = net.channels(fz["config"].get("layer", layer))
    if len(channels) and (channels.min() < 0 or channels.max() >= n or len(set(channels.tolist())) != len(channels)):
        die(f"{path}: channel indices must be distinct and in 0..{n - 1}")
    return {"images": images, "channels": channels, "activation": fz.get("activation"), "config": fz["config"]}


def any_fz(net, results):
    """The center FZ file of some probed layer in results/fzs (the first in forward order), or None."""
    for layer in net.layers:
        if os.path.isfile(fz_file(results, layer, "center")):
            return load_fz(net, results, layer)
    return None


def recorded_fz_weights(net, folders, blocks):
    """{weights id: a file recording it} over the center FZ files of these blocks' In and Pre layers in the folders
    ('random' read as 'random:0'). Only the configs are read (memory-mapped), not the images."""
    found = {}
    for folder in folders:
        for block in blocks:
            for layer in net.blocks[block][:2]:
                path = fz_file(folder, layer, "center")
                if os.path.isfile(path):
                    try:
                        made = torch.load(path, map_location="cpu", weights_only=False, mmap=True)["config"].get("weights")
                    except Exception:
                        made = load_fz(net, folder, layer)["config"].get("weights")  # its one-line error, if any
                    if made:
                        found.setdefault(as_weights_id(made), path)
    return found


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pair_problem(cfg_in, cfg_pre, weights_id, post_as_released=False):
    """Why the In and Pre FZs of a block cannot be used together with this model and --post_as_released, or None."""
    for cfg in (cfg_in, cfg_pre):
        if cfg.get("weights") != weights_id:
            return f"{cfg.get('layer')} FZs were made with weights {cfg.get('weights')!r}, the model here is {weights_id!r}"
        why = released_problem(cfg, post_as_released)
        if why:
            return f"{cfg.get('layer')} FZs were {why}"
    why = config_mismatch(cfg_in, cfg_pre, FZ_MATCH_KEYS)
    return f"its In and Pre FZs were made under different configs ({why})" if why else None


# ----------------------------------------------------------------------------------------------------
# Measurement: one batched pass per image set; image i is the FZ of channel channels[i], so the wanted
# activation of each layer is entry (i, channels[i]).

@torch.no_grad()
def center_activations(net, model, images, channels, layers, device, batch, transform=None, bar=None, post_as_released=False):
    """{layer: (N,) float32} center activation of channel channels[i] on image i (uint8), optionally transformed;
    block outputs before their final ReLU under post_as_released."""
    out = {layer: [] for layer in layers}
    for i in range(0, len(images), batch):
        x = to_float(images[i:i + batch].to(device))
        if transform is not None:
            x = transform(x)
        acts = read_center(net, model, normalize(x).contiguous(memory_format=torch.channels_last), layers, post_as_released)
        rows, cols = torch.arange(len(x), device=device), channels[i:i + batch].to(device)
        for layer in layers:
            out[layer].append(acts[layer][rows, cols])
        if bar is not None:
            bar.update(len(x))
    # one copy to the host for the whole image set, not one per batch and layer
    return {layer: torch.cat(v).cpu() if v else torch.zeros(0) for layer, v in out.items()}


def weight_magnitudes(net, model, pre, channels):
    """|bn.weight[c]| and mean |conv.weight[c]| (the output channel's kernel) of Pre's BatchNorm and the convolution
    before it: bn2 and conv2 of a BasicBlock, bn3 and conv3 of a Bottleneck, norm3_t and conv3 in CORnet-S (the CSV
    calls them bn2_abs, conv2_abs_mean)."""
    bn2, conv2 = (model.get_submodule(name) for name in net.pre_modules(pre))
    c = channels.cpu()
    return bn2.weight.detach().cpu()[c].abs(), conv2.weight.detach().cpu()[c].abs().flatten(1).mean(1)


def measure_block(net, model, block, fz_in, fz_pre, device, batch, mix_if, bar=None, post_as_released=False):
    """All per-channel values of a block, for the channels that have both an In and a Pre FZ; mix_if: the mix ratio's
    conventions (if_pre_nonpos, if_in_nonpos), see mix_ratio; post_as_released: In (a block output) and Post are read
    before their final ReLU (Pre is bn2 either way)."""
    In, Pre, Post = net.blocks[block]
    channels = sorted(set(fz_in["channels"].tolist()) & set(fz_pre["channels"].tolist()))
    pos_in = {c: i for i, c in enumerate(fz_in["channels"].tolist())}
    pos_pre = {c: i for i, c in enumerate(fz_pre["channels"].tolist())}
    ch = torch.tensor(channels, dtype=torch.long)
    x_in = fz_in["images"][[pos_in[c] for c in channels]]
    x_pre = fz_pre["images"][[pos_pre[c] for c in channels]]
    read = dict(bar=bar, post_as_released=post_as_released)
    on_in = center_activations(net, model, x_in, ch, [In, Pre, Post], device, batch, **read)          # X̂_In
    on_zoom = center_activations(net, model, x_in, ch, [Pre], device, batch, transform=zoom, **read)  # S(X̂_In)
    on_pre = center_activations(net, model, x_pre, ch, [Pre, Post], device, batch, **read)            # X̂_Pre
    bn2_abs, conv2_abs_mean = weight_magnitudes(net, model, Pre, ch)
    v = {"channel": ch, "pre_in": on_in[Pre], "pre_zoom_in": on_zoom[Pre], "post_in": on_in[Post], "post_pre": on_pre[Post],
         "bn2_abs": bn2_abs, "conv2_abs_mean": conv2_abs_mean}
    v["eq1"] = torch.from_numpy(eq1(v["pre_in"], v["pre_zoom_in"]))
    v["eq2"] = torch.from_numpy(eq2(v["post_in"], v["post_pre"]))
    v["passes"] = v["eq1"] & v["eq2"]
    v["mix"] = torch.from_numpy(mix_ratio(v["post_in"], v["post_pre"], *mix_if))
    # the objectives, re-measured: In_c(X̂_In) and Pre_c(X̂_Pre) should be what fzs.py stored
    v["objective_in"], v["objective_pre"] = on_in[In], on_pre[Pre]
    v["stored_in"] = _stored(fz_in, channels, pos_in)
    v["stored_pre"] = _stored(fz_pre, channels, pos_pre)
    return v


def _stored(fz, channels, pos):
    a = fz.get("activation")
    return None if a is None else torch.as_tensor(a).float()[[pos[c] for c in channels]]


def objective_warning(block, layer, measured, stored):
    if stored is None or len(measured) == 0:
        return None
    diff = (measured - stored).abs()
    tol = 1e-2 * (1 + stored.abs())
    if bool((diff > tol).any()):
        return (f"warning: block {block}: the activations stored in the {layer} FZ file differ from the ones measured here "
                f"(largest |diff| {float(diff.max()):.4g}); the file may come from another model or another version of fzs.py")
    return None


# ----------------------------------------------------------------------------------------------------
# One run: every asked block of one results folder.

def run_criteria(net, model, weights_id, results, blocks, weights, device, batch, mix_if, strict_weights=False,
                 post_as_released=False):
    """{"blocks": {block: summary}, "values": {block: per-channel values}, "fz_files": {layer: config},
    "fz_sha256": {layer: hash}, "skipped": {block: reason}} for the FZs under results/fzs; blocks: the blocks to
    measure (--blocks), mix_if: the mix ratio's conventions, post_as_released: In and Post before the ReLU
    (measure_block); FZs made with the other post_as_released are refused."""
    out = {"blocks": {}, "values": {}, "fz_files": {}, "fz_sha256": {}, "skipped": {}}
    ready = {}
    first_fz = functools.lru_cache(maxsize=None)(lambda: any_fz(net, results))  # read once, whichever blocks need it
    for block in blocks:
        In, Pre, Post = net.blocks[block]
        missing = [layer for layer in (In, Pre) if not os.path.isfile(fz_file(results, layer, "center"))]
        if missing:
            other = [layer for layer in (In, Pre) if layer not in missing]
            like = load_fz(net, results, other[0]) if other else first_fz()  # copy the settings of FZs made here
            made = like["channels"].tolist() if like else []
            some = like is not None and len(made) < net.channels(like["config"].get("layer", Pre))  # not all its channels
            channels = ([c for c in made if c < net.channels(Pre)] or None) if some else None
            settings = {**(like["config"] if like else {}), "post_as_released": post_as_released}  # this run's reading
            command = fzs_command(missing, net.name, weights, results, settings, channels)
            out["skipped"][block] = f"no center FZs for {', '.join(missing)}; make them with: {command}"
            continue
        fz_in, fz_pre = load_fz(net, results, In), load_fz(net, results, Pre)
        if strict_weights:
            for fz in (fz_in, fz_pre):
                if fz["config"].get("weights") != weights_id:
                    die(f"{fz_file(results, fz['config'].get('layer', '?'), 'center')} was made with weights "
                        f"{fz['config'].get('weights')!r}, not {weights_id!r}: the stability report compares runs of one model only")
        problem = pair_problem(fz_in["config"], fz_pre["config"], weights_id, post_as_released)
        if problem:
            out["skipped"][block] = f"refused: {problem}"
            continue
        if not set(fz_in["channels"].tolist()) & set(fz_pre["channels"].tolist()):
            out["skipped"][block] = f"no channel has both an {In} and a {Pre} FZ"
            continue
        ready[block] = (fz_in, fz_pre)
    total = sum(3 * len(set(a["channels"].tolist()) & set(b["channels"].tolist())) for a, b in ready.values())
    with tqdm(total=total, desc=f"criteria {results}", unit="img", leave=False) as bar:
        for block, (fz_in, fz_pre) in ready.items():
            In, Pre, Post = net.blocks[block]
            for layer, fz in ((In, fz_in), (Pre, fz_pre)):
                out["fz_files"][layer] = fz["config"]
                out["fz_sha256"][layer] = sha256(fz_file(results, layer, "center"))
            v = measure_block(net, model, block, fz_in, fz_pre, device, batch, mix_if, bar=bar, post_as_released=post_as_released)
            for layer, measured, stored in ((In, v["objective_in"], v["stored_in"]), (Pre, v["objective_pre"], v["stored_pre"])):
                warning = objective_warning(block, layer, measured, stored)
                if warning:
                    tqdm.write(warning)
            n, measured = net.channels(Pre), v["channel"].tolist()
            passing = v["channel"][v["passes"]].tolist()
            out["values"][block] = v
            out["blocks"][block] = {
                "n_channels": n, "passing": passing, "count": len(passing),
                "percent": 100.0 * len(passing) / len(measured) if measured else 0.0,
                "layers": [In, Pre, Post], "measured": measured,
                "missing": sorted(set(range(n)) - set(measured)),
                "eq1_count": int(v["eq1"].sum()), "eq2_count": int(v["eq2"].sum()),
            }
    return out


def csv_rows(values):
    rows = []
    for block, v in values.items():
        for i, c in enumerate(v["channel"].tolist()):
            rows.append({"block": block, "channel": c,
                         **{k: f"{float(v[k][i]):.9g}" for k in ("pre_in", "pre_zoom_in", "post_in", "post_pre")},
                         **{k: int(v[k][i]) for k in ("eq1", "eq2", "passes")},
                         "mix": repr(float(v["mix"][i])),
                         **{k: f"{float(v[k][i]):.9g}" for k in ("bn2_abs", "conv2_abs_mean")}})
    return rows


def paper_overlap(block, passing, measured):
    """Our passing set against the paper's, over the channels we measured: counts, Jaccard, each side only, and the
    paper's channels we did not measure."""
    paper, ours, measured = set(PAPER_PASSING[block]), set(passing), set(measured)
    seen = paper & measured
    return {"ours": len(ours), "paper": len(paper), "both": len(ours & seen), "jaccard": jaccard(ours, seen),
            "ours_only": sorted(ours - paper), "paper_only": sorted(seen - ours), "paper_unmeasured": sorted(paper - measured)}


def print_summary(result, weights_id, blocks, post_as_released=False):
    """The summary of one run, block by block (blocks: the blocks asked for, --blocks)."""
    print(f"\nScale-invariance criteria (Eq. 1 and Eq. 2 of docs/method.md section 3), weights {weights_id}"
          + ("  ** RANDOM WEIGHTS: not the paper's model **" if is_random(weights_id) else ""))
    if post_as_released:
        print("  In (where it is a block output) and Post read before the block's final ReLU, as the released "
              "stream_inspect.py (--post_as_released true); the paper defines them after it")
    for block in blocks:
        if block in result["skipped"]:
            print(f"  block {block}: not measured: {result['skipped'][block]}")
            continue
        s = result["blocks"][block]
        m = len(s["measured"])
        of = f"{m} channels" if m == s["n_channels"] else f"{m} measured channels (of {s['n_channels']})"
        paper = len(PAPER_PASSING[block]) if weights_id == PAPER_WEIGHTS else None
        print(f"  block {block}: {s['count']} of {of} pass ({s['percent']:.1f}%)   [Eq. 1: {s['eq1_count']}, Eq. 2: {s['eq2_count']}]"
              + (f"   paper: {paper} ({100 * paper / s['n_channels']:.1f}%)" if paper is not None else ""))
        o = s.get("paper_overlap")
        if o:
            unmeasured = f"; {len(o['paper_unmeasured'])} of the paper's not measured here" if o["paper_unmeasured"] else ""
            print(f"      vs the paper's list: ours {o['ours']}, paper {o['paper']}, both {o['both']}, Jaccard {o['jaccard']:.2f}; "
                  f"ours only {o['ours_only'] or 'none'}; paper only {o['paper_only'] or 'none'}{unmeasured}")
    if weights_id != PAPER_WEIGHTS:
        print(f"  (no published reference exists for weights {weights_id}: the paper's channel lists are for resnet18 with {PAPER_WEIGHTS})")


# ----------------------------------------------------------------------------------------------------
# Stability across FZ seeds.

def stability(net, runs, blocks):
    """runs: {folder: run_criteria result}. Per block asked for (blocks, --blocks) and measured in every run, over the
    channels measured in every run: pass frequency per channel, pairwise Jaccard of the passing sets, channels passing
    in every run."""
    folders = list(runs)
    out, skipped = {}, {}
    for block in blocks:
        lacking = [f for f in folders if block not in runs[f]["blocks"]]
        if lacking:
            skipped[block] = f"not measured in {', '.join(lacking)}" if len(lacking) < len(folders) else "not measured in any run"
            continue
        channels = sorted(set.intersection(*(set(runs[f]["blocks"][block]["measured"]) for f in folders)))
        sets = [set(runs[f]["blocks"][block]["passing"]) & set(channels) for f in folders]
        seeds = [runs[f]["fz_files"][net.blocks[block][0]].get("seed") for f in folders]
        out[block] = {
            "channels": channels,
            "pass_frequency": [sum(c in s for s in sets) / len(sets) for c in channels],
            "jaccard": [[jaccard(a, b) for b in sets] for a in sets],
            "always": sorted(set.intersection(*sets)) if sets else [],
            "ever": sorted(set.union(*sets)) if sets else [],
            "counts": [len(s) for s in sets],
            "seeds": seeds,
        }
    return out, skipped


def mean_offdiag(m):
    vals = [m[i][j] for i in range(len(m)) for j in range(len(m)) if i != j]
    return sum(vals) / len(vals) if vals else 1.0


def print_stability(folders, blocks, skipped):
    print(f"\nStability of the passing channels across {len(folders)} FZ runs: " + ", ".join(folders))
    print(f"  {'block':<6} {'channels':>8}  {'passing per run':<20} {'in every run':>12} {'in any run':>10}  {'Jaccard mean (min)':<18}")
    for block, s in blocks.items():
        j = s["jaccard"]
        offdiag = [j[a][b] for a in range(len(j)) for b in range(len(j)) if a != b] or [1.0]
        print(f"  {block:<6} {len(s['channels']):>8}  {','.join(map(str, s['counts'])):<20} {len(s['always']):>12} "
              f"{len(s['ever']):>10}  {mean_offdiag(j):.2f} ({min(offdiag):.2f})")
    for block, s in blocks.items():
        if s["always"]:
            print(f"  block {block}, passing in every run: {', '.join(map(str, s['always']))}")
    for block, reason in skipped.items():
        print(f"  block {block}: left out of the stability report ({reason})")
    if any(len(set(s["seeds"])) < len(s["seeds"]) for s in blocks.values()):
        print("  warning: some runs share an FZ seed, so they are not independent draws")


# ----------------------------------------------------------------------------------------------------

def main():
    cfg = configure(globals())
    net = arch.net(ARCH)
    blocks = BLOCKS or list(net.blocks)  # the blocks to measure (net.blocks: every probed block of ARCH)
    cfg["BLOCKS"] = blocks
    for block in blocks:
        if block not in net.blocks:
            die(f"unknown block {block!r}; the blocks are: {', '.join(net.blocks)}")
    if RUNS and (len(RUNS) < 2 or len(set(map(os.path.abspath, RUNS))) < len(RUNS)):
        die("--runs needs at least two different results folders to compare")
    for folder in RUNS:
        if not os.path.isdir(fzs_dir(folder)):
            die(f"run {folder}: no FZs in {fzs_dir(folder)}")
    single = not RUNS or os.path.isdir(fzs_dir(RESULTS))  # with --runs, RESULTS may be just the output folder
    weights = WEIGHTS  # empty: the weights the inputs were made with; the default weights where there are none
    found = recorded_fz_weights(net, ([RESULTS] if single else []) + list(RUNS), blocks)
    if weights:  # it measures the blocks made with these weights (others are skipped), so some must be
        check_named_weights(weights, list(found), net.name)
    else:
        if len(found) > 1:
            die("the FZ files were made with different weights (" + ", ".join(f"{w} in {p}" for w, p in found.items())
                + "): remake them with one --weights, or pass --weights to measure the blocks made with it")
        weights = weights_flag(next(iter(found))) if found else "IMAGENET1K_V1"
        cfg["WEIGHTS"] = weights  # criteria.json records the weights used, as if they had been passed
    for folder in ([RESULTS] if single else []) + list(RUNS):
        check_fz_folder(folder, net)  # no FZs of another architecture in these folders
    if single and not os.path.isdir(fzs_dir(RESULTS)):
        layers = [layer for b in blocks for layer in net.blocks[b][:2]]
        like = {"post_as_released": POST_AS_RELEASED}
        die(f"no FZs in {fzs_dir(RESULTS)}; make them with: {fzs_command(layers, net.name, weights, RESULTS, like)}")
    mix_if = (MIX_IF_PRE_NONPOS, MIX_IF_IN_NONPOS)  # the mix ratio's conventions, in mix_ratio's order
    device = pick_device(DEVICE)
    device_name = use_device(device, "fp32")  # these are measurements: true float32 convolutions on a GPU too (no TF32)
    batch = resolve_batch(BATCH, device, arch.image_bytes(ARCH), cpu_default=64, cap=1024)
    t0 = time.time()
    model, weights_id = load_model(net.name, weights, device)
    model = model.to(memory_format=torch.channels_last)  # faster convolutions on CPUs and GPUs alike, still float32
    config = {**cfg, "arch": ARCH, "weights_id": weights_id, "post_as_released": POST_AS_RELEASED, "eq2_low": EQ2_LOW, "eq2_high": EQ2_HIGH, "device": device_name,
              "batch": batch, "versions": versions()}
    if is_random(weights_id):
        print(f"** weights {weights_id}: random weights, not the paper's model **")

    results = {}
    lock = lock_results(RESULTS, "criteria.py")  # noqa: F841 (held until the process ends)
    if single:
        result = run_criteria(net, model, weights_id, RESULTS, blocks, weights, device, batch, mix_if,
                              post_as_released=POST_AS_RELEASED)
        if not result["blocks"]:
            for block, reason in result["skipped"].items():
                print(f"block {block}: not measured: {reason}", file=sys.stderr)
            die(f"no block could be measured from {fzs_dir(RESULTS)}: the reason for each block is above")
        results[os.path.abspath(RESULTS)] = result
        if weights_id == PAPER_WEIGHTS:  # the paper's published lists are the reference for these weights only
            for block, s in result["blocks"].items():
                s["paper_overlap"] = paper_overlap(block, s["passing"], s["measured"])
        save_json({"config": config, "fz_files": result["fz_files"], "fz_sha256": result["fz_sha256"],
                   "blocks": result["blocks"], "skipped": result["skipped"]}, criteria_file(RESULTS))
        write_csv(csv_rows(result["values"]), CSV_COLUMNS, criteria_csv(RESULTS))
        print_summary(result, weights_id, blocks, POST_AS_RELEASED)
        print(f"wrote {criteria_file(RESULTS)} and criteria.csv")

    if RUNS:
        runs = {}
        for folder in RUNS:
            key = os.path.abspath(folder)
            if key not in results:
                results[key] = run_criteria(net, model, weights_id, folder, blocks, weights, device, batch, mix_if,
                                            strict_weights=True, post_as_released=POST_AS_RELEASED)
                for block, reason in results[key]["skipped"].items():
                    print(f"run {folder}, block {block}: not measured: {reason}")
            runs[folder] = results[key]
        for folder, r in runs.items():  # the run of RESULTS was not checked strictly
            for layer, c in r["fz_files"].items():
                if c.get("weights") != weights_id:
                    die(f"run {folder}: {layer} FZs were made with weights {c.get('weights')!r}, not {weights_id!r}")
        first, *_ = RUNS  # the runs differ in their FZ seeds only: steps, lr, precision, ... are one config
        for folder, r in runs.items():
            for layer, c in r["fz_files"].items():
                other = runs[first]["fz_files"].get(layer)
                diff = other and config_mismatch(other, c, [k for k in FZ_MATCH_KEYS if k != "seed"])
                if diff:
                    die(f"runs {first} and {folder}: {layer} FZs were made under other configs ({diff}); the stability "
                        "report compares FZ seeds of one config")
        stable, skipped = stability(net, runs, blocks)
        if not stable:
            die("no block was measured in every run: nothing to compare")
        save_json({"runs": list(RUNS), "blocks": stable, "skipped": skipped, "config": config,
                   "fz_files": {f: r["fz_files"] for f, r in runs.items()}}, stability_file(RESULTS))
        rows = [{"block": b, "channel": c, "pass_frequency": f"{s['pass_frequency'][i]:.4g}",
                 **{f: int(c in runs[f]["blocks"][b]["passing"]) for f in RUNS}}
                for b, s in stable.items() for i, c in enumerate(s["channels"])]
        write_csv(rows, ["block", "channel", "pass_frequency", *RUNS], stability_file(RESULTS, "csv"))
        print_stability(list(RUNS), stable, skipped)
        print(f"wrote {stability_file(RESULTS)} and stability.csv")
    print(f"time: {time.time() - t0:.1f} s on {device}")


if __name__ == "__main__":
    main_guard(main, "nothing was written (criteria.py writes its files once every block is measured); run it again")
