"""Beyond the paper: scale invariance on natural images, and scale tuning curves.

The paper's criteria use feature visualisations only; its first stated limitation is that "future work must
incorporate responses to a wider range of natural images". This stage tests the mechanism on natural images.
For a scale-invariant channel c of a block, In_c should prefer its feature small (zoomed out), Pre_c large (zoomed
in), and Post_c = ReLU(In_c + Pre_c) respond about equally across that range.

1. Per channel of the probed blocks (resnet18's seven; any --arch), the image set U_c = the top-K natural images (from ablate.py's natural
   stage) of In_c, of Pre_c and of Post_c. Every distinct image of all the U_c, plus a fixed seeded random
   sample, is decoded once into its zoom views (zoom out f: the eval view shrunk and padded with the mean colour;
   zoom in 1/f: its centre cropped and resized), and one batched, truncated pass per zoom reads the center neuron
   of all probed layers (resnet18's 18) at once. An image shared by many units is computed once.
2. Tuning curves: In_c's mean response over its own top-K images at each zoom (likewise Pre_c, Post_c), and the
   three over the random sample.
3. Natural-image analogues of the criteria, per channel:
   - Eq. 1n: over In_c's top-K images x, the fraction with Pre_c(S(x)) > ReLU(Pre_c(x)), S the largest zoom in
     (1 / min(FRACTIONS): 2x by default, as Eq. 1's S; recorded as eq1n_zoom), and the mean difference;
   - Eq. 2n: Post_c's mean response to In_c's top-K images over its mean response to Pre_c's top-K images;
   - the scale-invariance index of each curve, SI = 1 - (max - min) / max (1: flat; undefined when max <= 0),
     and each curve's preferred zoom;
   - passes on natural images: Eq. 1n's fraction > EQ1N_MIN and EQ2_LOW < Eq. 2n < EQ2_HIGH.
4. Per block, the comparison with the FZ criteria (criteria.json): counts, the 2x2 table and Jaccard overlap, and
   whether FZ-passing channels have a more invariant Post and a lower preferred zoom for In than for Pre (effect
   size: AUC; two-sided permutation p of the Mann-Whitney U).

    python tuning.py                      # after ablate.py --stages natural (and criteria.py for the comparison)
    python plot_tuning.py                 # its figures

Writes <RESULTS>/tuning/values.pt (every measured value, resumable), tuning.json (per block) and tuning.csv
(per channel).
"""

import os
import time

import numpy as np
import torch

import arch
from cli import configure, die, main_guard, pick_device, resolve_batch, use_device
from imagenet import ZoomFolder, image_loader, resumable_pass, zooms
from results import (
    check_made,
    criteria_file,
    is_random,
    lock_results,
    natural_array,
    natural_summary,
    read_criteria,
    read_made,
    read_summary,
    save_json,
    save_pt,
    tuning_curves,
    tuning_file,
    tuning_values,
    versions,
    weights_to_load,
    write_csv,
)
from stats import EQ2_HIGH, EQ2_LOW, invariance_index, mann_whitney, preferred_zoom, top_k
from stream import load_model, normalize, read_center, to_float

RESULTS = "results"  # reads natural/ (ablate.py --stages natural) and criteria.json; writes tuning/, tuning.json, tuning.csv
ARCH = "resnet18"  # a torchvision ResNet or cornet_s; must be the natural stage's
WEIGHTS = ""  # the weights of the natural stage: IMAGENET1K_V1, DEFAULT, random[:SEED] or a state_dict path; empty: those its summary records
TUNE_BLOCKS = []  # blocks whose channels are measured (empty: every probed block of ARCH, resnet18's seven)
TOP_K = 16  # each unit's own top-K natural images (the paper shows 9)
SAMPLE = 200  # a fixed, seeded random sample of the natural stage's images (every unit's curve over it too)
FRACTIONS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]  # crop fractions f: zoom in 1/f (up to 2x) and zoom out f (down to 0.5x)
EQ1N_MIN = 0.5  # Eq. 1n passes when more than this fraction of In's top-K images excite Pre more zoomed in
SEED = 0  # seeds the random sample
BATCH = "auto"  # images per batch (each gives one view per zoom: 2 x the fractions below 1, + 1): a number, or auto (32 on the CPU; on a GPU, from its free memory)
WORKERS = -1  # DataLoader worker processes decoding JPEGs (-1 = one per CPU core, at most 16)
DEVICE = "auto"  # auto, cpu, cuda or cuda:N
PERMUTATIONS = 10000  # label permutations for the Mann-Whitney p-values
CHECKPOINT_SECONDS = 30.0  # save the values measured so far at most this often (and on Ctrl-C)
POST_AS_RELEASED = False  # True: In (where it is a block output) and Post are read before their block's final ReLU, as the released scripts; criteria.json must be made with it too (docs/differences.md)
# ---- end of flags (below: fixed constants, not flags)


# ----------------------------------------------------------------------------------------------------
# The image sets: each unit's own top-K, their union, the random sample.

def unit_sets(net, tops, blocks, k):
    """For every (block, channel): U = the union of the top-k images of In_c, Pre_c and Post_c (sorted, padded with
    -1 to 3k), and member (3, 3k): which slots of U are in each role's own top-k. tops: {layer: (k, C)}."""
    units, sets, member = [], [], []
    for b in blocks:
        roles = net.blocks[b]
        for c in range(net.channels(roles[2])):
            own = [tops[layer][:, c] for layer in roles]
            u = np.unique(np.concatenate(own))
            sets.append(np.pad(u, (0, 3 * k - len(u)), constant_values=-1))
            member.append(np.stack([np.isin(sets[-1], o) & (sets[-1] >= 0) for o in own]))
            units.append((b, c))
    return units, np.array(sets, dtype=np.int64), np.array(member, dtype=bool)


# ----------------------------------------------------------------------------------------------------
# The analogues of the criteria and the index (pure functions of measured values).

def eq1n(pre_zoomed, pre):
    """Over In's top-K images: (fraction with Pre(S(x)) > ReLU(Pre(x)), mean of Pre(S(x)) - ReLU(Pre(x)));
    NaN slots (fewer images) are left out."""
    pre_zoomed, pre = np.asarray(pre_zoomed, dtype=np.float64), np.asarray(pre, dtype=np.float64)
    ok = np.isfinite(pre_zoomed) & np.isfinite(pre)
    diff = np.where(ok, pre_zoomed - np.maximum(pre, 0.0), 0.0)
    n = np.maximum(ok.sum(-1), 1)
    return ((diff > 0) & ok).sum(-1) / n, diff.sum(-1) / n


def eq2n(post_on_in_top, post_on_pre_top):
    """Post's mean response to In's top-K over its mean to Pre's top-K; NaN where the denominator is <= 0."""
    num, den = np.nanmean(post_on_in_top, axis=-1), np.nanmean(post_on_pre_top, axis=-1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# ----------------------------------------------------------------------------------------------------
# The measurement: every distinct image once, all zooms, all probed layers per pass; resumable.

def measure_zoom_responses(net, model, root, paths, ids, sets, columns, sample_pos, fractions, device, batch, workers, state_path,
                           config, every, post_as_released=False):
    """The center-neuron responses of every probed layer to every zoom view of the images `ids` (each decoded once):
    values (G, 3k, 3, Z), each unit's three roles on each image of its set at each zoom; sample (S, Z, sum C), every
    channel on the random sample; block outputs before their final ReLU under post_as_released. Resumable: the values
    so far go to state_path every `every` seconds and on Ctrl-C."""
    G, slots = sets.shape
    Z = len(zooms(fractions))
    total = sum(net.channels(layer) for layer in net.layers)
    g_idx, slot_idx = np.nonzero(sets >= 0)
    e_pos = np.searchsorted(ids, sets[g_idx, slot_idx])  # ids: sorted, and holding every image of every set
    order = np.argsort(e_pos, kind="stable")
    e_pos, g_idx, slot_idx = e_pos[order], g_idx[order], slot_idx[order]
    state = {"config": config, "done": 0, "values": np.full((G, slots, 3, Z), np.nan, dtype=np.float32),
             "sample": np.zeros((len(sample_pos), Z, total), dtype=np.float32)}
    state = read_made(state_path, config, "tuning values") or state
    if 0 < state["done"] < len(ids):
        print(f"tuning: resuming after {state['done']} of {len(ids)} images")
    sample_slot = {int(p): s for s, p in enumerate(sample_pos)}

    def step(state, batch):
        views, index = batch
        first, n = int(index[0]), len(index)
        views = views.to(device, non_blocking=True)  # the whole pinned batch in one copy, then the zooms on the device
        out = []
        for z in range(Z):
            x = normalize(to_float(views[:, z])).contiguous(memory_format=torch.channels_last)
            got = read_center(net, model, x, net.layers, post_as_released)
            out.append(torch.cat([got[layer].float() for layer in net.layers], 1))
        acts = torch.stack(out, 1).cpu().numpy()  # (n, Z, total): one copy to the host per batch
        lo, hi = np.searchsorted(e_pos, [first, first + n])
        g, sl = g_idx[lo:hi], slot_idx[lo:hi]
        picked = acts[e_pos[lo:hi] - first]  # (E, Z, total)
        state["values"][g, sl] = np.take_along_axis(picked, columns[g][:, None, :].repeat(Z, 1), axis=2).transpose(0, 2, 1)
        for p in range(first, first + n):
            if p in sample_slot:
                state["sample"][sample_slot[p]] = acts[p - first]
        state["done"] = first + n  # the batch is in: a Ctrl-C or kill -9 loses at most the batch in flight
        return state

    dataset = ZoomFolder(root, paths, ids, fractions)
    return resumable_pass(lambda done: image_loader(dataset, batch, workers, device, start=done), step, state,
                          lambda state: save_pt(state, state_path), len(ids), every,
                          f"tuning: {Z} zooms x {len(net.layers)} layers")


# ----------------------------------------------------------------------------------------------------
# Per channel and per block.

def analyse(units, sets, member, values, sample, columns, zoom, eq1n_min):
    """Per (block, channel): the curves (own top-K and random sample), SI, preferred zooms, Eq. 1n, Eq. 2n, and whether
    it passes on natural images (Eq. 1n's fraction > eq1n_min, Eq. 2n within Eq. 2's bounds)."""
    own = np.where(member[..., None], values.transpose(0, 2, 1, 3), np.nan)  # (G, role, slot, Z): role r on its own top-K
    with np.errstate(invalid="ignore"):
        curves = np.nanmean(own, axis=2)  # (G, role, Z)
    on_sample = sample[:, :, columns].mean(0).transpose(1, 2, 0) if len(sample) else np.full(curves.shape, np.nan)  # (G, role, Z)
    one, big = zoom.index(1.0), len(zoom) - 1
    in_top = np.where(member[:, 0], 1.0, np.nan)
    frac, mean_diff = eq1n(values[:, :, 1, big] * in_top, values[:, :, 1, one] * in_top)
    with np.errstate(invalid="ignore"):
        ratio = eq2n(values[:, :, 2, one] * in_top, values[:, :, 2, one] * np.where(member[:, 1], 1.0, np.nan))
    with np.errstate(invalid="ignore"):
        passes = (frac > eq1n_min) & (ratio > EQ2_LOW) & (ratio < EQ2_HIGH)
    sample_preferred = np.where(np.isfinite(on_sample).all(-1), preferred_zoom(np.nan_to_num(on_sample, nan=-np.inf), zoom), np.nan)
    return {"curves": curves, "sample_curves": on_sample, "si": invariance_index(curves), "sample_si": invariance_index(on_sample),
            "preferred": preferred_zoom(curves, zoom), "sample_preferred": sample_preferred,
            "eq1n_fraction": frac, "eq1n_mean_diff": mean_diff, "eq2n": ratio, "passes": passes}


def compare(block, chans, a, rows, fz_block, permutations, seed):
    """The block's natural-image counts and the comparison with its FZ-passing set (the measured channels); the
    Mann-Whitney p-values from `permutations` relabellings at most."""
    nat = sorted(int(c) for c, r in zip(chans, rows) if a["passes"][r])
    out = {"n_channels": len(chans), "passing_natural": nat, "count_natural": len(nat),
           "percent_natural": 100 * len(nat) / len(chans)}
    if fz_block is None:
        out["fz"] = "no FZ criteria for this block in criteria.json"
        return out
    measured = set(fz_block.get("measured", range(fz_block["n_channels"])))
    fz = set(fz_block["passing"])
    m = [i for i, c in enumerate(chans) if c in measured]
    is_fz = np.array([chans[i] in fz for i in m])
    is_nat = np.array([a["passes"][rows[i]] for i in m])
    both, fz_only, nat_only = int((is_fz & is_nat).sum()), int((is_fz & ~is_nat).sum()), int((~is_fz & is_nat).sum())
    union = both + fz_only + nat_only
    post_si = np.array([a["si"][rows[i], 2] for i in m])
    d = np.array([np.log(a["preferred"][rows[i], 0]) - np.log(a["preferred"][rows[i], 1]) for i in m])  # < 0: In prefers smaller
    auc_si, p_si = mann_whitney(post_si[is_fz], post_si[~is_fz], permutations, seed)
    auc_z, p_z = mann_whitney(d[is_fz], d[~is_fz], permutations, seed)
    med = lambda v: None if not np.isfinite(v).any() else float(np.nanmedian(v))  # noqa: E731
    out["fz"] = {"measured": len(m), "passing_fz": len(fz & measured),
                 "table": {"both": both, "fz_only": fz_only, "natural_only": nat_only, "neither": len(m) - union},
                 "jaccard": both / union if union else None,
                 "post_si": {"median_fz": med(post_si[is_fz]), "median_other": med(post_si[~is_fz]), "auc": auc_si, "p": p_si},
                 "in_below_pre_zoom": {"share_fz": share_below(d[is_fz]), "share_other": share_below(d[~is_fz]),
                                       "auc": auc_z, "p": p_z}}
    return out


def share_below(d):
    """The share of log-zoom differences below 0 among the defined ones (a silent In or Pre prefers no zoom: NaN), or
    None when there are none."""
    d = d[np.isfinite(d)]
    return float((d < 0).mean()) if len(d) else None


# ----------------------------------------------------------------------------------------------------

def main():
    cfg = configure(globals())
    net = arch.net(ARCH)
    tune_blocks = TUNE_BLOCKS or list(net.blocks)
    for name, value, least in (("top_k", TOP_K, 1), ("sample", SAMPLE, 0), ("permutations", PERMUTATIONS, 1)):
        if value < least:
            die(f"--{name} must be at least {least}, not {value}")
    if not FRACTIONS or any(not 0 < f <= 1 for f in FRACTIONS) or min(FRACTIONS) == 1:
        die(f"--fractions must be crop fractions in (0, 1] with at least one below 1, such as 1,0.75,0.5, not {FRACTIONS}")
    for b in tune_blocks:
        if b not in net.blocks:
            die(f"unknown block {b!r}: the probed blocks are {', '.join(net.blocks)}")
    summary = read_summary(RESULTS, net)  # the weights are checked once the model says what they are
    device = pick_device(DEVICE)
    device_name = use_device(device, "fp32")  # true fp32 (no TF32), as the natural stage measured
    batch = resolve_batch(BATCH, device, arch.image_bytes(ARCH), cpu_default=32, cap=256)  # cap: host memory (workers x 11 zooms)
    lock = lock_results(RESULTS, "tuning.py")  # noqa: F841 (held until the process ends)
    model, weights_id = load_model(net.name, weights_to_load(WEIGHTS, [summary["config"]]), device)
    check_made(summary["config"], natural_summary(RESULTS), net, weights_id, "ablate.py --stages natural")
    criteria = read_criteria(RESULTS, net, weights_id, post_as_released=POST_AS_RELEASED)  # checked before the measurement
    model = model.to(memory_format=torch.channels_last)
    if is_random(weights_id):
        print(f"** weights {weights_id}: random weights, not the paper's model **")
    t0 = time.time()

    # 1. The image sets: each unit's own top-K images of In, Pre and Post, their union, and a random sample.
    n_images = summary["count"]
    tops = {}
    for layer in {lay for b in tune_blocks for lay in net.blocks[b]}:
        path = natural_array(RESULTS, layer)
        if not os.path.isfile(path):
            die(f"{path} is missing: run python ablate.py --stages natural again")
        tops[layer] = top_k(np.load(path, mmap_mode="r"), min(TOP_K, n_images))
    k = min(TOP_K, n_images)
    units, sets, member = unit_sets(net, tops, tune_blocks, k)
    sample = np.sort(np.random.default_rng([SEED, 5]).choice(n_images, size=min(SAMPLE, n_images), replace=False))
    ids = np.union1d(np.unique(sets[sets >= 0]), sample)
    offset = np.cumsum([0] + [net.channels(layer) for layer in net.layers])
    col = {layer: offset[i] for i, layer in enumerate(net.layers)}
    columns = np.array([[col[layer] + c for layer in net.blocks[b]] for b, c in units], dtype=np.int64)
    zoom = zooms(FRACTIONS)
    print(f"tuning: {len(units)} channels of blocks {','.join(tune_blocks)}, top-{k} images each + a sample of {len(sample)}: "
          f"{len(ids)} distinct images of {n_images} (each decoded once), zooms {', '.join(f'{z:.3g}' for z in zoom)}; "
          f"weights {weights_id}, {device}")

    # The measurement: every distinct image once, all its zooms, all probed layers in one pass.
    config = {"arch": ARCH, "weights": weights_id, "natural": {k_: summary["config"].get(k_) for k_ in ("data", "limit", "count", "paths")},
              "blocks": list(tune_blocks), "top_k": k, "sample": len(sample), "fractions": list(FRACTIONS), "seed": SEED,
              "post_as_released": POST_AS_RELEASED}
    state = measure_zoom_responses(net, model, summary["root"], summary["paths"], ids, sets, columns, np.searchsorted(ids, sample),
                                   FRACTIONS, device, batch, WORKERS, tuning_values(RESULTS), config, CHECKPOINT_SECONDS,
                                   POST_AS_RELEASED)

    # 2 and 3. The tuning curves, the invariance index and the natural-image analogues of the criteria.
    a = analyse(units, sets, member, state["values"], state["sample"], columns, zoom, EQ1N_MIN)

    # 4. Per block, and against the FZ criteria.
    if criteria is None:
        print(f"note: no {criteria_file(RESULTS)}: the comparison with the FZ criteria is left out (run python criteria.py)")
    blocks = {}
    for j, b in enumerate(tune_blocks):
        rows = [i for i, (bb, _) in enumerate(units) if bb == b]
        chans = [units[i][1] for i in rows]
        fz_block = (criteria or {}).get("blocks", {}).get(b)
        blocks[b] = compare(b, chans, a, rows, fz_block, PERMUTATIONS, [SEED, j])
    run_config = {**config, "eq1n_min": EQ1N_MIN, "eq1n_zoom": zoom[-1], "eq2_bounds": [EQ2_LOW, EQ2_HIGH], "permutations": PERMUTATIONS,
                  "zooms": zoom, "device": device_name, "batch": batch, "versions": versions()}
    save_json({"config": run_config, "blocks": blocks}, tuning_file(RESULTS))
    save_pt({"config": run_config, "units": units, "zooms": zoom, **a},
            tuning_curves(RESULTS))
    write_csv(*csv_table(units, a, criteria), tuning_file(RESULTS, "csv"))
    report(blocks, k, EQ1N_MIN, time.time() - t0)
    return cfg


def csv_table(units, a, criteria):
    """(rows, columns) of tuning.csv: one row per channel."""
    roles = ("in", "pre", "post")
    columns = (["block", "channel"] + [f"{r}_si" for r in roles] + [f"{r}_preferred_zoom" for r in roles] +
               [f"{r}_sample_si" for r in roles] + ["eq1n_fraction", "eq1n_mean_diff", "eq2n", "passes_natural", "passes_fz"])
    fz = {b: set(v["passing"]) for b, v in (criteria or {}).get("blocks", {}).items()}
    measured = {b: set(v.get("measured", range(v["n_channels"]))) for b, v in (criteria or {}).get("blocks", {}).items()}
    num = lambda v: "" if not np.isfinite(v) else f"{v:.6g}"  # noqa: E731
    rows = []
    for i, (b, c) in enumerate(units):
        values = [b, c, *[num(v) for v in a["si"][i]], *[num(v) for v in a["preferred"][i]], *[num(v) for v in a["sample_si"][i]],
                  num(a["eq1n_fraction"][i]), num(a["eq1n_mean_diff"][i]), num(a["eq2n"][i]), int(a["passes"][i]),
                  "" if c not in measured.get(b, ()) else int(c in fz[b])]
        rows.append(dict(zip(columns, values)))
    return rows, columns


def report(blocks, k, eq1n_min, seconds):
    print(f"\nScale invariance on natural images (top-{k} images per unit; pass: Eq. 1n fraction > {eq1n_min:g} and "
          f"{EQ2_LOW:.3g} < Eq. 2n < {EQ2_HIGH:g})")
    for b, s in blocks.items():
        line = f"  block {b}: {s['count_natural']} of {s['n_channels']} channels pass on natural images ({s['percent_natural']:.1f}%)"
        fz = s["fz"]
        if isinstance(fz, dict):
            t = fz["table"]
            j = "n/a" if fz["jaccard"] is None else f"{fz['jaccard']:.2f}"
            si, z = fz["post_si"], fz["in_below_pre_zoom"]
            f = lambda v, spec=".2f": "n/a" if v is None else format(v, spec)  # noqa: E731
            line += (f"; of {fz['measured']} FZ-measured channels: both {t['both']}, FZ only {t['fz_only']}, natural only "
                     f"{t['natural_only']}, neither {t['neither']} (Jaccard {j}); Post SI, FZ-passing vs other: median "
                     f"{f(si['median_fz'])} vs {f(si['median_other'])}, AUC {f(si['auc'])}, p = {f(si['p'], '.3g')}; In's preferred "
                     f"zoom below Pre's: {f(z['share_fz'])} of FZ-passing vs {f(z['share_other'])} of others, AUC {f(z['auc'])}, "
                     f"p = {f(z['p'], '.3g')}")
        print(line)
    print(f"time: {seconds:.1f} s")


if __name__ == "__main__":
    main_guard(main, "the values measured so far are saved (every CHECKPOINT_SECONDS and now); run the same command again to resume")
