"""Beyond the paper: its latency prediction, tested on CORnet-S's recurrent steps (--arch cornet_s).

The paper predicts that a scale-invariant deep unit responds EARLIER to its feature small than large: the small-scale
copy arrives through the bypass (In), the large-scale one through the branch (Pre), later. CORnet-S's time steps are
the first place where this can be tested. A unit is channel c of an area's stream: Post_t's channel c at the steps
t = 0 .. T-1 of the area (In_{t+1} is Post_t, so the channel is the same unit at every step).

1. Stimuli, per unit (area A, channel c), from its reference step s (REF_STEP; 0: the bypass step, where In_0 is
   norm_skip's output): its own top-K natural images (Post_s's, from ablate.py's natural stage), its In FZ and its Pre FZ
   (In_s's and Pre_s's center FZs, fzs.py), each at tuning.py's zooms (zoom out f: the view shrunk and padded with the
   mean colour, the feature small; zoom in 1/f: its centre enlarged, the feature large). Each natural image shared by
   several units is decoded and run once.
2. The responses r_c(t, z): the center neuron of Post_t, channel c, at every step t and zoom z (for the natural images
   their mean over the unit's top-K); and the same with the t = 0 bypass zeroed (norm_skip's output set to 0 in area A
   only, so that Post_0 = ReLU(Pre_0); the steps after run as they are).
3. Per unit (stats.py): the onset L(z), the first step that reaches half of the unit's maximum over every (t, z) (T
   where none does); the time to peak; the early fraction r(0, z) / max_t r(t, z). The shift of each is its mean over
   the zoomed-out views minus its mean over the zoomed-in views: the prediction is an onset shift < 0.
4. Per area and stimulus set, the criteria-passing units (criteria.json's block A.s) against the other FZ-measured
   units: each group's mean onset shift, the shares with an earlier and a later small-scale onset, and the one-sided
   sign-flip p of 'mean shift < 0'; passing against other: AUC = P(shift of a passing unit > shift of another) (below
   0.5: the passing units' small-scale onset is earlier) with its two-sided permutation p (Mann-Whitney U).
5. The causal control: each unit's early small-scale response (the mean over the zoomed-out views of r(0, z), over its
   intact maximum) intact and with the bypass zeroed, the one-sided sign-flip p of 'zeroing lowers it', and the onset
   shift with the bypass zeroed.

    python latency.py --results results_cornet     # after fzs.py, criteria.py and ablate.py --stages natural, all --arch cornet_s
    python plot_latency.py --results results_cornet

Writes <RESULTS>/latency/values.pt (every measured value, resumable), latency/curves.pt (the responses),
latency.json (per area and stimulus set) and latency.csv (per unit).
"""

import os
import time

import numpy as np
import torch
import torchvision.transforms.functional as TF

import arch
from cli import configure, die, main_guard, pick_device, resolve_batch, use_device
from imagenet import decode_rgb, image_loader, resumable_pass, zoom_views, zooms
from results import (
    FZ_MATCH_KEYS,
    check_made,
    fz_file,
    is_random,
    latency_curves,
    latency_file,
    latency_values,
    lock_results,
    natural_array,
    read_criteria,
    read_fz,
    read_made,
    read_summary,
    save_json,
    save_pt,
    versions,
    weights_to_load,
    write_csv,
)
from stats import early_fraction, mann_whitney, onset, sign_flip_p, small_minus_large, time_to_peak, top_k
from stream import center, load_model, normalize, to_float

RESULTS = "results"  # reads natural/ (ablate.py --stages natural), criteria.json and fzs/ (In and Pre FZs); writes latency/, latency.json, latency.csv
ARCH = "cornet_s"  # the recurrent network (the only architecture with time steps)
WEIGHTS = ""  # the weights of the natural stage: IMAGENET1K_V1, random[:SEED] or a state_dict path; empty: those its summary records
AREAS = []  # areas measured (empty: V2, V4 and IT)
REF_STEP = 0  # the step s whose criteria split the units and whose Post top images, In FZ and Pre FZ are the stimuli (0: In_0 is the bypass)
TOP_K = 16  # each unit's own top-K natural images
FRACTIONS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]  # crop fractions f: zoom in 1/f (up to 2x) and zoom out f (down to 0.5x), as tuning.py
BATCH = "auto"  # stimuli per batch (each gives one view per zoom): a number, or auto (16 on the CPU; on a GPU, from its free memory)
WORKERS = -1  # DataLoader worker processes decoding JPEGs (-1 = one per CPU core, at most 16)
DEVICE = "auto"  # auto, cpu, cuda or cuda:N
PERMUTATIONS = 10000  # sign flips and label permutations for the p-values
SEED = 0  # seeds the permutations
CHECKPOINT_SECONDS = 30.0  # save the values measured so far at most this often (and on Ctrl-C)
# ---- end of flags (below: fixed constants, not flags)
SETS = ("natural", "in_fz", "pre_fz")  # the stimulus sets: own top-K natural images, the In FZ, the Pre FZ
CONDITIONS = ("intact", "bypass_zeroed")
TIMES = {name: times for name, _, _, times in arch.CORNET_AREAS}  # an area's time steps


# ----------------------------------------------------------------------------------------------------
# The responses: every step of each measured area, intact and with its t = 0 bypass zeroed.

def area_steps(area, h, times, zeroed=True):
    """(intact, zeroed): Post_t of an area's steps t = 0 .. times-1 from conv_input's output h (arch.cornet_step), and
    with the t = 0 skip summand (norm_skip's output) zeroed, so that Post_0 = ReLU(Pre_0), the steps after running on
    from there (both start from the same input, so step 0's branch is computed once); zeroed=False: [] for the second."""
    first = arch.cornet_step(area, h, 0)
    intact = [first["post"]]
    off = [area.nonlin3(first["pre"])] if zeroed else []
    for t in range(1, times):
        intact.append(arch.cornet_step(area, intact[-1], t)["post"])
        if zeroed:
            off.append(arch.cornet_step(area, off[-1], t)["post"])
    return intact, off


@torch.no_grad()
def responses(model, x, areas):
    """(B, columns) center responses to a normalised batch x, the network run up to the deepest of `areas`: per area in
    `areas` (forward order), its Post_t centers for t = 0 .. T-1 (C columns each), then the same with its bypass
    zeroed (each area's zeroed steps start from its intact input; the next area reads the intact output)."""
    h, out = model.V1(x), []
    for name, _, _, times in arch.CORNET_AREAS:
        area = getattr(model, name)
        h = area.conv_input(h)
        posts, off = area_steps(area, h, times, zeroed=name in areas)
        if name in areas:
            out += [center(p).float() for p in posts + off]
            if name == areas[-1]:
                break
        h = posts[-1]
    return torch.cat(out, 1)


def unit_columns(net, areas):
    """The units [(area, channel)] of `areas`, their steps T, and (G, 2 Tmax) their columns in responses()'s output: the
    intact steps, then the bypass-zeroed ones; a unit with fewer steps than Tmax repeats its last step's column (its
    later steps are cut off by its T)."""
    units, steps, cols, offset = [], [], [], 0
    tmax = max(TIMES[a] for a in areas)
    for a in areas:
        T, C = TIMES[a], net.channels(f"{a}.output_0")
        for c in range(C):
            intact = [offset + min(t, T - 1) * C + c for t in range(tmax)]
            units.append((a, c))
            steps.append(T)
            cols.append(intact + [i + T * C for i in intact])
        offset += 2 * T * C
    return units, np.array(steps), np.array(cols, dtype=np.int64)


class Stimuli(torch.utils.data.Dataset):
    """Item i: (uint8 zoom views (Z, 3, 224, 224), i): the natural images ids[i] first (each decoded once), then the FZ
    images (already 224 x 224 views: zoomed as they are)."""

    def __init__(self, root, paths, ids, fz_images, fractions):
        self.root, self.paths, self.ids, self.fz, self.fractions = root, list(paths), list(ids), fz_images, list(fractions)

    def __len__(self):
        return len(self.ids) + len(self.fz)

    def __getitem__(self, i):
        if i < len(self.ids):
            return zoom_views(decode_rgb(os.path.join(self.root, self.paths[self.ids[i]])), self.fractions), i
        return zoom_views(TF.to_pil_image(self.fz[i - len(self.ids)]), self.fractions, eval_view=False), i


def measure(model, areas, dataset, where, columns, shape, device, batch, workers, state_path, config, every):
    """values (G, K + 2, 2 Tmax, Z): for each unit, its responses() columns on each of its stimuli (slots 0 .. K-1 its top
    natural images, K its In FZ, K + 1 its Pre FZ; NaN where it has none) at each zoom. where: (stimulus, unit, slot)
    rows sorted by stimulus. Resumable: the values so far go to state_path every `every` seconds and on Ctrl-C."""
    state = {"config": config, "done": 0, "values": np.full(shape, np.nan, dtype=np.float32)}
    state = read_made(state_path, config, "latency values") or state
    if 0 < state["done"] < len(dataset):
        print(f"latency: resuming after {state['done']} of {len(dataset)} stimuli")
    Z = shape[-1]

    def step(state, batch):
        views, index = batch
        first, n = int(index[0]), len(index)
        views = views.to(device, non_blocking=True)
        acts = torch.stack([responses(model, normalize(to_float(views[:, z])).contiguous(memory_format=torch.channels_last), areas)
                            for z in range(Z)], 1).cpu().numpy()  # (n, Z, columns): one copy to the host per batch
        lo, hi = np.searchsorted(where[:, 0], [first, first + n])
        s, g, slot = where[lo:hi].T
        state["values"][g, slot] = np.take_along_axis(acts[s - first], columns[g][:, None, :].repeat(Z, 1), axis=2).transpose(0, 2, 1)
        state["done"] = first + n  # the batch is in: a Ctrl-C or kill -9 loses at most the batch in flight
        return state

    return resumable_pass(lambda done: image_loader(dataset, batch, workers, device, start=done), step, state,
                          lambda state: save_pt(state, state_path), len(dataset), every,
                          f"latency: {Z} zooms x areas {','.join(areas)}, intact and bypass zeroed")


# ----------------------------------------------------------------------------------------------------
# The measures per unit, and the tests per area (pure functions of the measured values).

def response_curves(values, steps):
    """r (G, sets, conditions, Tmax, Z): the mean over each unit's top natural images (slots 0 .. K-1), its In FZ (slot
    K), its Pre FZ (K + 1); intact and bypass-zeroed; NaN past a unit's T steps."""
    G, slots, cols, Z = values.shape
    ok = np.isfinite(values[:, :-2])
    n = ok.sum(1)
    natural = np.where(n > 0, np.where(ok, values[:, :-2], 0.0).sum(1) / np.maximum(n, 1), np.nan)
    tmax = cols // 2
    r = np.stack([natural, values[:, -2], values[:, -1]], 1).reshape(G, len(SETS), len(CONDITIONS), tmax, Z)
    return np.where((np.arange(tmax)[None, :] < steps[:, None])[:, None, None, :, None], r, np.nan)


def unit_measures(r, zoom):
    """Per unit of ONE area (r (G, sets, conditions, T, Z), its T steps): onset, time to peak and early fraction per zoom,
    their shifts (small_minus_large), and the early small-scale response (mean over zoom < 1 of r(0, z), over the
    intact maximum). NaN where a unit is silent: no stimulus, or a maximum over (t, z) that is not positive (the early
    small-scale response needs only the intact one)."""
    zoom = np.asarray(zoom)
    finite = np.isfinite(r).all(axis=(-2, -1))  # (G, sets, conditions)
    peak = np.where(finite, np.max(np.nan_to_num(r, nan=-np.inf), axis=(-2, -1)), -np.inf)  # each condition's own maximum
    live = finite & (peak > 0)
    m = {"onset": onset(r).astype(np.float64), "time_to_peak": time_to_peak(r).astype(np.float64), "early_fraction": early_fraction(r)}
    for k in list(m):
        m[k] = np.where(live[..., None], m[k], np.nan)
        m[f"{k}_shift"] = small_minus_large(m[k], zoom)
    intact = peak[:, :, :1]  # (G, sets, 1): the control's responses are read against the intact maximum
    with np.errstate(invalid="ignore", divide="ignore"):
        early = r[..., 0, :][..., zoom < 1].mean(-1) / intact  # (G, sets, conditions)
    m["early_small"] = np.where(finite & live[:, :, :1], early, np.nan)
    return m


def group_shift(d, permutations, seed):
    """A group's onset shifts: n, mean, the shares earlier (< 0) and later (> 0) for small scales, and the one-sided
    sign-flip p of 'mean < 0' (stats.sign_flip_p)."""
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    p, how = sign_flip_p(d, permutations, seed)
    return {"n": len(d), "mean_shift": float(d.mean()) if len(d) else None, "share_earlier": float((d < 0).mean()) if len(d) else None,
            "share_later": float((d > 0).mean()) if len(d) else None, "p_earlier": p, "p_method": how}


def area_test(m, s, passing, other, permutations, seed):
    """Stimulus set s of one area: the onset shift of passing and other units (intact and bypass-zeroed), passing against
    other (AUC < 0.5: the passing units' small-scale onset is earlier; two-sided permutation p), and the control."""
    out = {}
    for c, cond in enumerate(CONDITIONS):
        shift = m["onset_shift"][:, s, c]
        auc, p = mann_whitney(shift[passing], shift[other], permutations, seed)
        out[cond] = {"passing": group_shift(shift[passing], permutations, seed), "other": group_shift(shift[other], permutations, seed),
                     "passing_vs_other": {"auc": auc, "p": p}}
    control = {}
    for name, rows in (("passing", passing), ("other", other)):
        intact, zeroed = m["early_small"][rows, s, 0], m["early_small"][rows, s, 1]
        ok = np.isfinite(intact) & np.isfinite(zeroed)
        p, how = sign_flip_p(zeroed[ok] - intact[ok], permutations, seed)
        control[name] = {"n": int(ok.sum()), "early_small_intact": float(intact[ok].mean()) if ok.any() else None,
                         "early_small_bypass_zeroed": float(zeroed[ok].mean()) if ok.any() else None, "p_lowered": p, "p_method": how}
    out["control"] = control
    return out


# ----------------------------------------------------------------------------------------------------

def main():
    cfg = configure(globals())
    net = arch.net(ARCH)
    if net.name != arch.CORNET:
        die(f"latency.py needs recurrent time steps: --arch {arch.CORNET} (a ResNet block runs once; {ARCH} has none)")
    areas = [a for a in TIMES if a in (AREAS or TIMES)]
    for a in AREAS:
        if a not in TIMES:
            die(f"unknown area {a!r}: the areas are {', '.join(TIMES)}")
    if not 0 <= REF_STEP < min(TIMES[a] for a in areas):
        die(f"--ref_step {REF_STEP}: areas {', '.join(areas)} have steps 0 .. {min(TIMES[a] for a in areas) - 1}")
    for name, value, least in (("top_k", TOP_K, 1), ("permutations", PERMUTATIONS, 1)):
        if value < least:
            die(f"--{name} must be at least {least}, not {value}")
    if not FRACTIONS or any(not 0 < f <= 1 for f in FRACTIONS) or min(FRACTIONS) == 1:
        die(f"--fractions must be crop fractions in (0, 1] with at least one below 1, such as 1,0.75,0.5, not {FRACTIONS}")
    ref = {a: net.blocks[f"{a}.{REF_STEP}"] for a in areas}  # (In_s, Pre_s, Post_s) layers
    summary = read_summary(RESULTS, net)
    device = pick_device(DEVICE)
    device_name = use_device(device, "fp32")  # true fp32 (no TF32), as the natural stage measured
    batch = resolve_batch(BATCH, device, 2 * arch.image_bytes(ARCH), cpu_default=16, cap=256)  # 2: intact and zeroed
    lock = lock_results(RESULTS, "latency.py")  # noqa: F841 (held until the process ends)
    model, weights_id = load_model(net.name, weights_to_load(WEIGHTS, [summary["config"]]), device)
    check_made(summary["config"], os.path.join(RESULTS, "natural", "summary.pt"), net, weights_id, "ablate.py --stages natural")
    criteria = read_criteria(RESULTS, net, weights_id, required="the passing units are its block's")
    missing = [f"{a}.{REF_STEP}" for a in areas if f"{a}.{REF_STEP}" not in criteria["blocks"]]
    if missing:
        die(f"criteria.json has no block {', '.join(missing)}: run fzs.py and criteria.py for --blocks {','.join(missing)} "
            f"(the reference step {REF_STEP}), or pass --areas / --ref_step")
    model = model.to(memory_format=torch.channels_last)
    random_net = is_random(weights_id)
    if random_net:
        print(f"** weights {weights_id}: a RANDOM network, not the paper's model: no result about CORnet-S **")
    t0 = time.time()

    # 1. The stimuli: each unit's own top-K natural images (its reference step's Post), its In FZ and its Pre FZ.
    units, steps, columns = unit_columns(net, areas)
    k = min(TOP_K, summary["count"])
    tops = {}
    for a in areas:
        path = natural_array(RESULTS, ref[a][2])
        if not os.path.isfile(path):
            die(f"{path} is missing: run python ablate.py --stages natural --arch {ARCH} --results {RESULTS} again")
        tops[a] = top_k(np.load(path, mmap_mode="r"), k)  # (k, C)
    sets = np.array([tops[a][:, c] for a, c in units], dtype=np.int64)  # (G, k)
    ids = np.unique(sets)
    fz_images, fz_rows, fz_config = [], [], {}
    for a in areas:
        for slot, layer in ((k, ref[a][0]), (k + 1, ref[a][1])):
            fz = read_fz(RESULTS, layer, "center", required=False)
            if fz is None:
                die(f"no FZs of {layer}: run python fzs.py --arch {ARCH} --results {RESULTS} --layers {a}.{REF_STEP} first")
            check_made(fz["config"], fz_file(RESULTS, layer, "center"), net, weights_id, f"fzs.py --layers {a}.{REF_STEP}")
            fz_config[layer] = {key: fz["config"].get(key) for key in FZ_MATCH_KEYS} | {"channels": [int(c) for c in fz["channels"]]}
            first = units.index((a, 0))
            for i, c in enumerate(int(c) for c in fz["channels"]):
                fz_rows.append((len(ids) + len(fz_images), first + c, slot))
                fz_images.append(fz["images"][i])
    g, j = np.meshgrid(np.arange(len(units)), np.arange(k), indexing="ij")
    where = np.concatenate([np.stack([np.searchsorted(ids, sets), g, j], -1).reshape(-1, 3), np.array(fz_rows, dtype=np.int64).reshape(-1, 3)])
    where = where[np.argsort(where[:, 0], kind="stable")]
    zoom = zooms(FRACTIONS)
    print(f"latency: {len(units)} units of areas {','.join(areas)} (reference step {REF_STEP}), top-{k} natural images each "
          f"({len(ids)} distinct of {summary['count']}) and {len(fz_images)} FZs, zooms {', '.join(f'{z:.3g}' for z in zoom)}; "
          f"weights {weights_id}, {device}")

    # 2. The responses at every step and zoom, intact and with the bypass zeroed: every stimulus once, all areas per pass.
    config = {"arch": ARCH, "weights": weights_id, "natural": {key: summary["config"].get(key) for key in ("data", "limit", "count", "paths")},
              "areas": areas, "ref_step": REF_STEP, "top_k": k, "fractions": list(FRACTIONS), "fzs": fz_config}
    dataset = Stimuli(summary["root"], summary["paths"], ids, torch.stack(fz_images) if fz_images else [], FRACTIONS)
    state = measure(model, areas, dataset, where, columns, (len(units), k + 2, columns.shape[1], len(zoom)), device, batch, WORKERS,
                    latency_values(RESULTS), config, CHECKPOINT_SECONDS)
    r = response_curves(state["values"], steps)

    # 3 and 4. Per unit the onset, time to peak and early fraction; per area and stimulus set the test and the control.
    areas_out, per_area = {}, []
    group = np.full(len(units), "", dtype=object)
    for j, a in enumerate(areas):
        rows = np.array([g for g, (aa, _) in enumerate(units) if aa == a])  # contiguous: unit_columns goes area by area
        m = unit_measures(r[rows][:, :, :, :TIMES[a]], zoom)
        per_area.append(m)
        block = criteria["blocks"][f"{a}.{REF_STEP}"]
        chans = np.array([units[g][1] for g in rows])
        measured = np.isin(chans, block.get("measured", range(block["n_channels"])))
        passing = measured & np.isin(chans, block["passing"])
        other = measured & ~passing
        group[rows] = np.where(passing, "passing", np.where(other, "other", ""))
        areas_out[a] = {"block": f"{a}.{REF_STEP}", "steps": TIMES[a], "n_units": len(rows), "n_passing": int(passing.sum()),
                        "n_other": int(other.sum()),
                        "sets": {s: area_test(m, i, passing, other, PERMUTATIONS, [SEED, j, i]) for i, s in enumerate(SETS)}}
    measures = {key: np.concatenate([m[key] for m in per_area]) for key in per_area[0]}
    run_config = {**config, "permutations": PERMUTATIONS, "seed": SEED, "zooms": zoom, "random_network": random_net,
                  "device": device_name, "batch": batch, "versions": versions()}
    save_json({"config": run_config, "areas": areas_out}, latency_file(RESULTS))
    save_pt({"config": run_config, "units": units, "steps": steps, "zooms": zoom, "sets": SETS, "conditions": CONDITIONS,
             "group": group.tolist(), "r": r, **measures}, latency_curves(RESULTS))
    write_csv(*csv_table(units, group, measures, zoom), latency_file(RESULTS, "csv"))
    report(areas_out, random_net, time.time() - t0)
    return cfg


def csv_table(units, group, m, zoom):
    """(rows, columns) of latency.csv: one row per unit; the natural images' intact onset per zoom, and every set's shifts."""
    columns = (["area", "channel", "group"] + [f"natural_onset_z{z:.3g}" for z in zoom] +
               [f"{s}_{key}{'' if c == 0 else '_bypass_zeroed'}" for s in SETS for c in range(2)
                for key in ("onset_shift", "time_to_peak_shift", "early_fraction_shift", "early_small")])
    num = lambda v: "" if not np.isfinite(v) else f"{v:.6g}"  # noqa: E731
    rows = []
    for g, (a, c) in enumerate(units):
        values = [a, c, group[g], *[num(v) for v in m["onset"][g, 0, 0]],
                  *[num(m[key][g, s, cond]) for s in range(len(SETS)) for cond in range(2)
                    for key in ("onset_shift", "time_to_peak_shift", "early_fraction_shift", "early_small")]]
        rows.append(dict(zip(columns, values)))
    return rows, columns


def report(areas_out, random_net, seconds):
    f = lambda v, spec=".2f": "n/a" if v is None else format(v, spec)  # noqa: E731
    print(f"\nThe latency prediction{' (a RANDOM network: not a result)' if random_net else ''}: onset shift = mean onset over "
          "zoomed-out views minus over zoomed-in views (steps; < 0: earlier for small scales)")
    for a, s_out in areas_out.items():
        print(f"  area {a} (criteria of block {s_out['block']}: {s_out['n_passing']} passing, {s_out['n_other']} other units)")
        for s, t in s_out["sets"].items():
            i, z = t["intact"], t["bypass_zeroed"]
            line = f"    {s:8s}"
            for g in ("passing", "other"):
                x, ctl = i[g], t["control"][g]
                line += (f" {g} ({x['n']}): shift {f(x['mean_shift'], '+.3f')} (earlier {f(x['share_earlier'])}, later "
                         f"{f(x['share_later'])}, p = {f(x['p_earlier'], '.3g')}; bypass zeroed: {f(z[g]['mean_shift'], '+.3f')}, early "
                         f"small-scale response {f(ctl['early_small_intact'], '.3f')} -> {f(ctl['early_small_bypass_zeroed'], '.3f')}, "
                         f"p = {f(ctl['p_lowered'], '.3g')});")
            print(line + f" passing vs other: AUC {f(i['passing_vs_other']['auc'])}, p = {f(i['passing_vs_other']['p'], '.3g')}")
    print(f"time: {seconds:.1f} s")


if __name__ == "__main__":
    main_guard(main, "the values measured so far are saved (every CHECKPOINT_SECONDS and now); run the same command again to resume")
