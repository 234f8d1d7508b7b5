"""Natural-image activations and mean ablation of the criteria-passing channels (docs/method.md sections 4 and 5).

Stage `natural`: one pass over ImageNet validation (standard eval view, float32) records the center-neuron
activation of every channel of the probed layers (18 in resnet18): per-image activations (float16 .npy per layer), the top-9
images per unit, and the mean activation per unit (the values that mean ablation writes).

Stage `sweep`: for blocks 2.1 and 3.1, mean-ablate the passing channels of the block output, and random
sets of as many non-passing channels, screened at no scale (2.1: a random set must do more damage than the
passing set; 3.1: at most 1 percentage point less). Then top-1 accuracy of every (condition, scale) and
Eq. 3's ratio acc_passing / acc_random with its standard error over the accepted random sets.

Beyond the paper (VARIANTS): the paper screens and reports on the same images, which biases the no-scale
ratio upward. The sweep also reports the same cells screened on one part of the images and reported on the
other (`heldout`, a seeded split stratified by class), and for the first N draws with no screening at all
(`unscreened`). Every variant gets a test of the claim "the scaled ratios are below the no-scale ratio": a
bootstrap interval (over trials and images) for each scaled ratio minus the no-scale ratio, and a paired
sign-flip permutation p-value across trials. Every cell keeps its per-image hits, so all of this comes from
the same passes.

How it is fast: each pass over the set decodes every JPEG once (all scaled views come from that decode);
per image batch and view the network runs once up to the ablated block, and every condition of the block
(unablated, passing, random sets) runs from there, stacked along the batch. Both blocks share one pass.

    python ablate.py --data /path/to/imagenet/val                   # both stages
    python ablate.py --data DIR --weights random --limit 200 --sets "2.1:0:8;3.1:0:16" --stages sweep
"""

import base64
import hashlib
import math
import os
import zlib

import numpy as np
import torch

import arch
from cli import (
    amp_dtype,
    autocast,
    configure,
    die,
    main_guard,
    no_tf32,
    pick_device,
    precision,
    resolve_batch,
    use_device,
)
from imagenet import ImageNetFolder, guarded, image_loader, imagenet_folder, resumable_pass, write_fake_imagenet
from results import (
    ABLATION_VARIANTS,
    ablation_cell,
    ablation_dir,
    ablation_file,
    ablation_split,
    config_mismatch,
    criteria_file,
    fzs_command,
    is_random,
    load_json,
    load_pt,
    lock_results,
    natural_array,
    natural_dir,
    natural_summary,
    read_criteria,
    read_summary,
    save_json,
    save_pt,
    versions,
    weights_to_load,
)
from stats import bootstrap_differences, sign_flip_p, trial_mean
from stream import block_post, head, load_model, normalize, read_center, stem, to_float

DATA = ""  # ImageNet validation folder (required): root/<wnid>/ folders, a torchvision ImageNet root, or the flat folder with --labels
LABELS = ""  # labels of a flat folder: ILSVRC2012_validation_ground_truth.txt[,map_clsloc.txt or meta.mat], val.txt or LOC_val_solution.csv
FAKE = 0  # smoke runs without ImageNet: first write this many generated JPEGs into DATA, labelled with the model's predictions
LIMIT = 0  # use only this many images, evenly spaced over the sorted file list (0 = all)
STAGES = ["natural", "sweep"]  # stages to run, in order: natural (activations, top-9, means), sweep (screening + ablation)
ARCH = "resnet18"  # a torchvision ResNet or cornet_s (python arch.py --arch NAME lists its blocks)
WEIGHTS = ""  # torchvision weights of ARCH (IMAGENET1K_V1, DEFAULT, ...), random[:SEED] (tests and smoke runs only) or a state_dict path; empty: the weights that RESULTS' natural summary and criteria.json record (IMAGENET1K_V1 where there are none)
RESULTS = "results"  # output folder
DEVICE = "auto"  # auto, cpu, cuda or cuda:N
AMP = "auto"  # sweep precision: auto (fp32; AMP_AUTO=bf16 in the environment makes it bf16), fp32, bf16 or tf32 (GPU) (natural stage: always fp32)
BATCH = "auto"  # images per batch: a number, or auto (128 on the CPU; on a GPU, from its free memory)
SUFFIX_BATCH = 0  # images x conditions per forward after the ablated block (0 = auto: 512 on CPU, 4096 on CUDA)
WORKERS = -1  # DataLoader worker processes decoding JPEGs (-1 = one per CPU core, at most 16)
SEED = 0  # seeds the random channel sets (together with the block)
ABLATE_BLOCKS = []  # blocks to ablate (empty: resnet18 -> 2.1,3.1 as in docs/method.md section 5; other ARCH -> the two with the largest passing fraction)
SETS = ""  # passing sets by hand, e.g. "2.1:3,17,40:48;3.1:0,9" (blocks not named: RESULTS/criteria.json)
N_TRIALS = 10  # accepted random sets per block
VARIANTS = ["paper", "heldout", "unscreened"]  # reported: paper (Fig. 2 as published), heldout (screen on part, report on the rest), unscreened (first N_TRIALS draws)
HOLDOUT = 0.5  # heldout: the fraction of each class's images the ratios are reported on (the rest screen)
BOOTSTRAP = 2000  # bootstrap replicates (trials and images resampled) for the intervals of the test
CI = 0.95  # level of the bootstrap intervals
PERMUTATIONS = 10000  # random sign flips for the p-value (every one of the 2^N_TRIALS when that is fewer)
CROPS = [10, 20, 30, 40, 50]  # crop percentages of the scale transform (docs/method.md section 5; was --scales); no crop (0) is always evaluated too
CROP_AS_RELEASED = False  # True: the released scale_robust.py's crops, int(224 (1 - p)) of the 256 resize (201 px at 10 %), not the paper's 256 - floor(256 p) (231 px): to match its top-1 numbers
SCREEN_MARGIN = "2.1:<0;3.1:<=1;*:<=1"  # per block (* = any other): accept a random set if its no-scale top-1 minus the passing set's, in percentage points, is < or <= this
SCREEN_DRAWS = 20  # random sets drawn per block in the first screening pass
SCREEN_CAP = 200  # most random sets drawn per block before screening gives up
CHECKPOINT_SECONDS = 30  # save the partial counts of a pass at most this often (and on Ctrl-C)
# ---- end of flags (below: fixed constants, not flags)
PAPER_SCREEN_MARGIN = SCREEN_MARGIN  # the default; its 2.1 and 3.1 rules are for resnet18's blocks only
# The released scale_robust.py's recorded top-1 (%) with the paper's passing set of the block mean-ablated (post-ReLU
# means), at no scale and then at its scales np.arange(1.1, 1.6, 0.1): crops 10..50 % in its own crop rule (--crop_as_released)
RELEASED_TOP1 = {"2.1": [63.75, 61.394, 59.39, 56.222, 51.686, 44.292], "3.1": [63.493, 61.712, 60.194, 57.424, 53.358, 46.704]}
RELEASED_CROPS = [0, 10, 20, 30, 40, 50]
RELEASED_WEIGHTS = "IMAGENET1K_V1"  # the weights they were measured with (resnet18's)


# ----------------------------------------------------------------------------------------------------
# Small pure pieces.

def top9_update(values, index, acts, first, k=9):
    """Running top-k per channel. values/index (C, <=k): the best so far, sorted by activation (descending)
    then image index (ascending); acts (B, C) for images first .. first+B-1. Ties go to the lower index."""
    b, c = acts.shape
    v = torch.cat([values, acts.T.float()], 1)
    i = torch.cat([index, torch.arange(first, first + b, dtype=torch.int64).expand(c, b)], 1)
    v, order = torch.sort(v, dim=1, descending=True, stable=True)
    k = min(k, v.shape[1])
    return v[:, :k].contiguous(), torch.gather(i, 1, order[:, :k])


def eq3(acc_passing, acc_random):
    """docs/method.md Eq. 3 per scale: ratio = mean_i(acc_passing / acc_random_i), sem = std(ddof=1) / sqrt(n).

    acc_passing (S,), acc_random (N, S). A trial whose random-set accuracy is 0 has no ratio: it is left out
    (NaN in the per-trial ratios) and n counts the rest; ratio is NaN if no trial is left, sem if fewer than 2.
    Returns (ratio (S,), sem (S,), per-trial ratios (N, S))."""
    p, r = np.asarray(acc_passing, dtype=np.float64), np.asarray(acc_random, dtype=np.float64)
    trials = np.where(r > 0, p[None] / np.where(r > 0, r, 1.0), np.nan)
    n = np.isfinite(trials).sum(0)
    total = np.where(np.isfinite(trials), trials, 0.0).sum(0)
    ratio = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    dev = np.where(np.isfinite(trials), trials - ratio[None], 0.0)
    sem = np.where(n > 1, np.sqrt((dev ** 2).sum(0) / np.maximum(n - 1, 1)) / np.sqrt(np.maximum(n, 1)), np.nan)
    return ratio, sem, trials


def stratified_split(labels, fraction, seed):
    """The held-out split, (screen, report): sorted image indices. Within each class the images are shuffled (seeded
    by the seed and the class); in that class-by-class order, image k goes to the report part when floor((k + 1) f)
    > floor(k f). Each class gives floor or ceil of f x its count to the report part, floor(f N) images in all."""
    labels = np.asarray(labels)
    order = np.concatenate([np.random.default_rng([seed, 11, int(c)]).permutation(np.flatnonzero(labels == c))
                            for c in np.unique(labels)]) if len(labels) else np.zeros(0, dtype=np.int64)
    k = np.arange(len(order))
    report = np.sort(order[np.floor((k + 1) * fraction) > np.floor(k * fraction)])
    return np.setdiff1d(np.arange(len(labels)), report), report


def claim_test(trials, hits_passing, hits_random, seed, replicates, level, permutations):
    """The test of 'the scaled ratios are below the no-scale ratio' for one block: per scale, the difference of
    Eq. 3's ratios with a bootstrap interval (images and trials resampled; `replicates` of them, at `level`), and a
    paired sign-flip p-value across trials (`permutations` flips at most), for each scale and for the mean over the
    scaled settings. trials: per-trial ratios (N, S)."""
    trials = np.asarray(trials, dtype=np.float64)
    ratio = trial_mean(trials)
    boot = bootstrap_differences(hits_passing, hits_random, replicates, seed) if replicates else np.zeros((0, trials.shape[1] - 1))
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    ci = []
    for k in range(trials.shape[1] - 1):
        col = boot[:, k][np.isfinite(boot[:, k])]
        ci.append(nan_to_none(np.percentile(col, [lo, hi])) if len(col) else [None, None])
    with np.errstate(invalid="ignore"):
        per_trial = np.nanmean(trials[:, 1:], axis=1) - trials[:, 0] if trials.shape[1] > 1 else np.full(len(trials), np.nan)
    p, how = sign_flip_p(per_trial, permutations, seed)
    per_scale = [sign_flip_p(trials[:, k] - trials[:, 0], permutations, seed)[0] for k in range(1, trials.shape[1])]
    return {"claim": "the scaled ratios are below the no-scale ratio",
            "difference": nan_to_none(ratio[1:] - ratio[0]), "ci": ci, "ci_level": level, "bootstrap": replicates,
            "p_below": p, "p_below_per_scale": per_scale, "n_trials": int(np.isfinite(per_trial).sum()), "permutations": how,
            "method": "difference: Eq. 3 ratio at each scale minus at no scale; interval: percentile bootstrap resampling images "
                      "(paired across cells) and trials; p: one-sided paired sign-flip permutation test on each trial's mean "
                      "scaled ratio minus its no-scale ratio"}


def parse_rules(net, spec):
    """'2.1:<0;3.1:<=1' -> {block: (op, margin in percentage points)}."""
    rules = {}
    for item in [s.strip() for s in spec.split(";") if s.strip()]:
        block, _, rule = item.partition(":")
        op = "<=" if rule.strip().startswith("<=") else "<" if rule.strip().startswith("<") else None
        try:
            margin = float(rule.strip()[len(op):]) if op else None
        except ValueError:
            margin = None
        if (block.strip() not in net.blocks and block.strip() != "*") or margin is None:
            die(f"cannot read screening rule {item!r}: use e.g. '2.1:<0;3.1:<=1;*:<=1' (block:< or <= margin in percentage points; * = any other block)")
        rules[block.strip()] = (op, margin)
    return rules


def screening_rules(net, spec):
    """parse_rules, except that the default's per-block rules (2.1 and 3.1) are the paper's for resnet18's blocks:
    with another architecture only its '*' rule applies, unless --screen_margin names blocks."""
    rules = parse_rules(net, spec)
    if net.name != "resnet18" and spec == PAPER_SCREEN_MARGIN:
        rules = {"*": rules["*"]}
    return rules


def accepted(rule, correct_random, correct_passing, n_images):
    """Screening: is (acc_random - acc_passing) in percentage points < or <= the margin? Exact in integers."""
    op, margin = rule
    diff, bound = 100 * (correct_random - correct_passing), margin * n_images
    return diff < bound if op == "<" else diff <= bound


def parse_sets(net, spec):
    """'2.1:3,17,40:48;3.1:0,9' -> {block: sorted channels}."""
    return net.parse_block_channels(spec, "--sets")


def block_seed(block):
    """A block's part of the random draws' seeds: its digits for a ResNet block ('2.1' -> 21, as always), a crc32 of
    its name for a CORnet-S step ('V4.1')."""
    return int(block.replace(".", "")) if block[0].isdigit() else zlib.crc32(block.encode()) & 0x7FFFFFFF


def draw_sets(rng, population, size, count):
    """`count` random sets of `size` channels from `population`, without replacement within a set, sorted."""
    return [sorted(int(c) for c in rng.choice(population, size=size, replace=False)) for _ in range(count)]


def digest(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else str(p).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------
# Mean ablation. The fast path: the network up to the block once, then every condition from there.

def overwrite(h, masks, mean):
    """Block output h (B, C, H, W), masks (K, C) bool, mean (C,) -> (K * B, C, H, W): copy k (rows k*B ..)
    has every position of the channels in masks[k] set to that channel's mean."""
    out = torch.where(masks[:, None, :, None, None], mean.to(h.dtype)[None, None, :, None, None], h.unsqueeze(0))
    return out.flatten(0, 1)


def run_suffix(net, model, h, start):
    """The network from block net.residual[start] on, to the logits."""
    for i in range(start, len(net.residual)):
        h = block_post(net, model, i, h)
    return head(model, h)


def predictions(net, model, x, plan, suffix_batch):
    """Top-1 predictions (1 + sum of K, B) of one normalised batch x: row 0 unablated, then per plan entry
    (block index, mean (C,), masks (K, C) bool), in forward order, its K conditions."""
    memory = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format
    h, i, rows = stem(model, x), 0, []
    for idx, mean, masks in plan:
        while i <= idx:
            h = block_post(net, model, i, h)
            i += 1
        per = max(1, suffix_batch // h.shape[0])
        for k in range(0, masks.shape[0], per):
            xk = overwrite(h, masks[k:k + per], mean).contiguous(memory_format=memory)
            rows.append(run_suffix(net, model, xk, idx + 1).argmax(1).view(-1, h.shape[0]))
    rows.insert(0, run_suffix(net, model, h, i).argmax(1).view(1, -1))
    return torch.cat(rows)


def reference_logits(net, model, loader, block, channels, mean, device):
    """The released way: one pass over a DataLoader per condition, the whole network, a forward hook on the
    block that overwrites the channels. Returns the logits (N, 1000) in dataset order."""
    module = model.get_submodule(net.residual[net.where(net.blocks[block][2])[0]]) if net.name != arch.CORNET else None
    calls, step = [0], 0
    if module is None:  # CORnet-S: the area's last ReLU runs once per step; the hook overwrites at this block's step only
        area, step = block.split(".")
        module, step, times = getattr(model, area).nonlin3, int(step), next(n for a, _, _, n in arch.CORNET_AREAS if a == area)
    chans = torch.as_tensor(list(channels), dtype=torch.long, device=device)

    def hook(_module, _inputs, out):
        calls[0] += 1
        if net.name == arch.CORNET and (calls[0] - 1) % times != step:
            return out
        out = out.clone()
        out[:, chans] = mean.to(device, out.dtype)[chans].view(1, -1, 1, 1)
        return out
    handle = module.register_forward_hook(hook) if len(chans) else None
    try:
        preds = []
        with torch.inference_mode():
            for views, _labels, _index in guarded(loader):
                preds.append(model(normalize(to_float(views[:, 0].to(device)))).float().cpu())
        return torch.cat(preds)
    finally:
        if handle is not None:
            handle.remove()


def loader_cache(root, paths, labels, batch, workers, device, released_crop=False):
    """loader_for(scales, start): the DataLoader of these views from image `start` on, one per (views, start), so that
    the natural stage and every screening round (all at no scale, from image 0) share one loader and its workers
    (persistent_workers) instead of starting new ones for every pass. Each has its own dataset: workers hold a copy."""
    cache = {}

    def loader_for(scales, start):
        key = (tuple(scales), start)
        if key not in cache:
            cache[key] = image_loader(ImageNetFolder(root, paths, labels, scales, released_crop), batch, workers, device, start=start)
        return cache[key]
    return loader_for


def masks_for(sets, n):
    m = torch.zeros(len(sets), n, dtype=torch.bool)
    for k, s in enumerate(sets):
        m[k, list(s)] = True
    return m


# ----------------------------------------------------------------------------------------------------
# A pass over the set that counts correct top-1 predictions for many cells at once, resumable.

def run_pass(net, name, model, n, loader_for, scales, plan, device, dtype, suffix_batch, folder, key, every):
    """Per-image hits, bool (len(scales), 1 + sum of K, n_images): is the top-1 prediction right, for every scale and
    every condition of `plan` (see predictions), in one pass that decodes each image once. The hits so far go to
    folder/.partial-<name>.pt every `every` seconds and on Ctrl-C; a rerun with the same key and plan continues."""
    plan_key = digest(key, scales, [(idx, digest(mean.cpu().numpy()), digest(masks.numpy())) for idx, mean, masks in plan])
    partial = os.path.join(folder, f".partial-{name}.pt")
    n_cond = 1 + sum(m.shape[0] for _, _, m in plan)
    state = {"done": 0, "hits": torch.zeros(len(scales), n_cond, n, dtype=torch.bool)}
    if os.path.isfile(partial):
        old = load_pt(partial, "partial hits")
        if old.get("key") == plan_key and old.get("shape") == list(state["hits"].shape):
            done = state["done"] = old["done"]
            state["hits"][..., :done] = torch.from_numpy(np.unpackbits(old["hits"], axis=-1, count=done).astype(bool))
            print(f"{name}: resuming after {done} of {n} images")

    def save(state):
        done, hits = state["done"], state["hits"]
        save_pt({"key": plan_key, "shape": list(hits.shape), "done": done, "hits": np.packbits(hits[..., :done].numpy(), axis=-1)}, partial)

    plan_dev = [(idx, mean.to(device), masks.to(device)) for idx, mean, masks in plan]

    def step(state, batch):
        views, labels, index = batch
        views, labels = views.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        correct = torch.empty(len(scales), n_cond, len(labels), dtype=torch.bool, device=device)
        for v in range(len(scales)):
            x = normalize(to_float(views[:, v])).contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                correct[v] = predictions(net, model, x, plan_dev, suffix_batch) == labels[None]
        first = int(index[0])
        state["hits"][..., first:first + len(labels)] = correct.cpu()  # one copy to the host per batch of images, not one per view
        state["done"] = first + len(labels)  # after the batch is in: a Ctrl-C never leaves half a batch
        return state

    desc = f"{name}: {len(scales)} view(s) x {n_cond} conditions"
    return resumable_pass(lambda done: loader_for(scales, done), step, state, save, n, every, desc)["hits"]


# ----------------------------------------------------------------------------------------------------
# Stage 1: natural-image activations (docs/method.md section 4).

def natural_stage(net, model, weights_id, dataset, loader_for, device, *, results, root, fake, limit, label_file, seed, batch,
                  every):
    """docs/method.md section 4: one pass over the images (standard eval view, fp32) records every probed layer's
    center-neuron activations (natural/<layer>.npy), the top-9 images and the mean activation of every channel
    (natural/summary.pt). Resumable: the progress goes to natural/.progress.pt every `every` seconds and on Ctrl-C."""
    folder = natural_dir(results)
    os.makedirs(folder, exist_ok=True)
    n = len(dataset)
    config = {"stage": "natural", "arch": net.name, "weights": weights_id, "data": root, "fake": fake, "limit": limit, "count": n,
              "paths": digest(dataset.paths), "labels": digest(dataset.labels), "label_file": label_file, "seed": seed, "batch": batch,
              "precision": "fp32", "versions": versions()}
    keys = ["weights", "data", "limit", "count", "paths", "labels"]
    summary_path = natural_summary(results)
    if os.path.isfile(summary_path):
        old = load_pt(summary_path, "natural-image summary")
        net.check(old["config"], summary_path)
        why = config_mismatch(old["config"], config, keys)
        if why:
            die(f"{summary_path} was made under another config ({why}); use another --results or delete {folder}")
        print(f"natural: {summary_path} is complete ({n} images), nothing to do")
        return
    progress_path = os.path.join(folder, ".progress.pt")
    state = None
    if os.path.isfile(progress_path):
        state = load_pt(progress_path, "natural-stage progress")
        if config_mismatch(state["config"], config, keys):
            state = None
    partial = {layer: os.path.join(folder, f".{layer}.npy.partial") for layer in net.layers}
    resume = state is not None and state["done"] > 0 and all(os.path.isfile(p) for p in partial.values())
    if resume:
        print(f"natural: resuming after {state['done']} of {n} images")
    else:
        state = {"config": config, "done": 0,
                 "top9": {layer: (torch.empty(net.channels(layer), 0), torch.empty(net.channels(layer), 0, dtype=torch.int64)) for layer in net.layers},
                 "sum": {layer: torch.zeros(net.channels(layer), dtype=torch.float64) for layer in net.layers}}
    arrays = {layer: np.lib.format.open_memmap(partial[layer], mode="r+" if resume else "w+", dtype=np.float16, shape=(n, net.channels(layer)))
              for layer in net.layers}

    def checkpoint(s):
        for a in arrays.values():
            a.flush()
        save_pt(s, progress_path)

    def step(state, batch):
        views, _labels, index = batch
        first = state["done"]
        assert int(index[0]) == first
        x = normalize(to_float(views[:, 0].to(device, non_blocking=True))).contiguous(memory_format=torch.channels_last)
        acts = read_center(net, model, x, net.layers)
        host = torch.cat([acts[layer] for layer in net.layers], 1).cpu()  # one copy to the host for all the layers
        acts = dict(zip(net.layers, (a.contiguous() for a in host.split([acts[layer].shape[1] for layer in net.layers], 1))))
        new = {"config": config, "done": first + len(index), "top9": {}, "sum": {}}
        for layer, a in acts.items():
            arrays[layer][first:first + len(a)] = a.numpy().astype(np.float16)
            new["top9"][layer] = top9_update(*state["top9"][layer], a, first)
            new["sum"][layer] = state["sum"][layer] + a.double().sum(0)
        return new  # a new state, not the old one changed: a Ctrl-C never leaves half a batch

    # this stage reads the standard eval view only
    state = resumable_pass(lambda done: loader_for([0], done), step, state, checkpoint, n, every,
                           f"natural: {len(net.layers)} layers, center neurons")
    for layer in net.layers:
        arrays[layer].flush()
        del arrays[layer]
        os.replace(partial[layer], natural_array(results, layer))
    summary = {"root": root, "paths": dataset.paths, "labels": torch.as_tensor(dataset.labels, dtype=torch.int64),
               "top9_index": {layer: state["top9"][layer][1] for layer in net.layers}, "top9_activation": {layer: state["top9"][layer][0] for layer in net.layers},
               "mean": {layer: (state["sum"][layer] / n).float() for layer in net.layers}, "count": n, "config": config}
    save_pt(summary, summary_path)
    if os.path.isfile(progress_path):
        os.remove(progress_path)
    print(f"natural: wrote {folder}/<layer>.npy (float16, {n} x C) for the {len(net.layers)} layers and {summary_path}")


# ----------------------------------------------------------------------------------------------------
# Stage 2: screening and the ablation sweep (docs/method.md section 5).

def default_blocks(net, crit, named, results):
    """The sweep's blocks when --ablate_blocks is empty: resnet18's are the paper's (2.1 and 3.1); for another
    architecture the blocks named in --sets, else the two blocks with the largest passing fraction in criteria.json
    (ties: the earlier block)."""
    if net.name == "resnet18":
        return ["2.1", "3.1"]
    if named:
        return sorted(named, key=list(net.blocks).index)
    if crit is None:
        die(f"no blocks to ablate: run criteria.py first ({criteria_file(results)} is missing), or pass --ablate_blocks / --sets")
    fraction = {b: v["percent"] for b, v in crit.get("blocks", {}).items() if b in net.blocks and v.get("count")}
    if not fraction:
        die(f"no block of {criteria_file(results)} has passing channels: nothing to ablate (name a set with --sets)")
    best = sorted(fraction, key=lambda b: (-fraction[b], list(net.blocks).index(b)))[:2]
    return sorted(best, key=list(net.blocks).index)


def passing_sets(net, weights_id, blocks, spec, results, weights):
    """{block: its passing channels} for the blocks to ablate, in order: `blocks` (--ablate_blocks; empty: see
    default_blocks), each block's set named in `spec` (--sets) or else read from criteria.json, which must have
    been made with these weights (`weights`: the --weights value, for the command a message suggests)."""
    sets = parse_sets(net, spec)
    crit = read_criteria(results, net, weights_id)
    if not blocks:
        blocks = default_blocks(net, crit, list(sets), results)
        print(f"sweep: blocks {','.join(blocks)}" + (" (the paper's)" if net.name == "resnet18" else
                                                      " (the largest passing fractions; --ablate_blocks to choose)"))
    for b in blocks:
        if b not in net.blocks:
            die(f"--ablate_blocks: unknown block {b!r}; the blocks of {net.name} are: {', '.join(net.blocks)}")
    missing = [b for b in blocks if b not in sets]
    if missing:
        path = criteria_file(results)
        if crit is None:
            die(f"no passing set for block(s) {', '.join(missing)}: run criteria.py first ({path} is missing) or name them with --sets")
        for b in missing:
            if b not in crit.get("blocks", {}):
                die(f"{path} has no block {b}; name its passing set with --sets")
            unmeasured = crit["blocks"][b].get("missing", [])
            if unmeasured:  # random 'non-passing' sets would be drawn among channels that were never measured
                layers = net.blocks[b][:2]
                like = crit.get("fz_files", {}).get(layers[0], {})
                die(f"{path}: block {b} measured only {len(crit['blocks'][b].get('measured', []))} of its channels "
                    f"({len(unmeasured)} missing), so random sets could include passing channels; make the rest with: "
                    f"{fzs_command(layers, net.name, weights, results, like, unmeasured)}, then run criteria.py again (or name the set with --sets)")
            sets[b] = sorted(int(c) for c in crit["blocks"][b]["passing"])
    return {b: sets[b] for b in blocks}


def read_cell(results, block, condition, crop, channels, key):
    """The per-image hits (bool, n_images) of a finished cell, or None; dies on a cell made under another config."""
    path = ablation_cell(results, block, condition, crop)
    if not os.path.isfile(path):
        return None
    cell = load_json(path, "ablation cell")
    why = config_mismatch(cell.get("run", {}), key, list(key)) or (cell.get("channels") != list(channels) and "channels differ")
    if why:  # a cell from before --arch existed (no arch in its run) is resnet18's
        die(f"{path} was made under another config ({why}); use another --results or delete {os.path.dirname(path)}")
    return unpack_hits(cell["hits"], cell["total"])


def pack_hits(hits):
    """Per-image hits (bool) as text: the bits, 8 images a byte in image order, base64."""
    return base64.b64encode(np.packbits(np.asarray(hits, dtype=bool)).tobytes()).decode()


def unpack_hits(text, n):
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=n).astype(bool)


def compute_cells(net, name, model, loader_for, scales, wanted, means, device, dtype, suffix_batch, key, n_images, results, every):
    """wanted: {block: [(condition, channels)]} -> {(block, condition, scale): per-image hits}. Runs one pass for the
    cells not finished yet (run_pass; checkpoints every `every` seconds) and writes them into the results folder."""
    cells = {}
    todo = {}
    for b, conds in wanted.items():
        for cond, chans in conds + [("none", [])]:
            for s in scales:
                got = read_cell(results, b, cond, s, chans, key[b])
                if got is None:
                    todo.setdefault(b, {})[cond] = chans
                else:
                    cells[b, cond, s] = got
    if todo:
        blocks = sorted(todo, key=lambda b: net.where(net.blocks[b][2])[0])
        names = {b: [c for c in todo[b] if c != "none"] for b in blocks}
        plan = [(net.where(net.blocks[b][2])[0], means[b], masks_for([todo[b][c] for c in names[b]], len(means[b]))) for b in blocks]
        hits = run_pass(net, name, model, n_images, loader_for, scales, plan, device, dtype, suffix_batch, ablation_dir(results),
                        key, every).numpy()
        col = 1
        for b in blocks:
            for c in names[b]:
                for v, s in enumerate(scales):
                    cells[b, c, s] = hits[v, col]
                col += 1
            for v, s in enumerate(scales):
                cells[b, "none", s] = hits[v, 0]
        for b in blocks:
            for c, chans in todo[b].items():
                for s in scales:
                    save_json({"block": b, "condition": c, "channels": list(chans), "scale": s, "correct": int(cells[b, c, s].sum()),
                               "total": n_images, "hits": pack_hits(cells[b, c, s]), "run": key[b]}, ablation_cell(results, b, c, s))
        partial = os.path.join(ablation_dir(results), f".partial-{name}.pt")
        if os.path.isfile(partial):
            os.remove(partial)
    return cells


def sweep_stage(net, model, weights_id, dataset, loader_for, device, device_name, prec, *, results, root, limit, batch,
                suffix_batch, every, ablate_blocks, sets, weights, seed, crops, screen_margin, screen_draws, screen_cap, n_trials,
                variants, holdout, test, crop_as_released=False):
    """docs/method.md section 5, and the variants beyond it: screen random sets of non-passing channels at no crop, then
    Eq. 3 at every crop for each variant, with the test of the claim (claim_test's keyword arguments: `test`)."""
    dtype = amp_dtype(prec)
    n = len(dataset)
    summary = read_summary(results, net)
    mine = {"weights": weights_id, "data": root, "limit": limit, "count": n, "paths": digest(dataset.paths), "labels": digest(dataset.labels)}
    why = config_mismatch(summary["config"], mine, list(mine))
    if why:
        die(f"{natural_summary(results)} was made under another config ({why}): run the natural stage with the same --data/--limit/--weights")
    rules = screening_rules(net, screen_margin)
    passing = passing_sets(net, weights_id, ablate_blocks, sets, results, weights)
    ablate_blocks = list(passing)  # the default blocks where none were named
    rules = {b: rules.get(b, rules.get("*")) for b in ablate_blocks if rules.get(b, rules.get("*"))}
    means, key, nonpassing, rngs = {}, {}, {}, {}
    for b in ablate_blocks:
        post = net.blocks[b][2]
        means[b] = summary["mean"][post].float()
        if b not in rules:
            die(f"no screening rule for block {b} in --screen_margin {screen_margin!r}")
        nonpassing[b] = sorted(set(range(net.channels(post))) - set(passing[b]))
        if len(nonpassing[b]) < len(passing[b]):
            die(f"block {b}: {len(passing[b])} passing channels but only {len(nonpassing[b])} others to draw random sets from")
        key[b] = {"arch": net.name, "weights": weights_id, "data": root, "limit": limit, "n_images": n, "paths": digest(dataset.paths),
                  "labels": digest(dataset.labels),
                  "mean": digest(means[b].numpy()), "precision": prec,
                  "passing": passing[b], "seed": seed, "cells": "per-image hits", "crop_as_released": crop_as_released}
        rngs[b] = np.random.default_rng([seed, block_seed(b)])

    def cells_for(name, scales, wanted):  # one pass (run_pass) for the cells of `wanted` not finished yet
        return compute_cells(net, name, model, loader_for, scales, wanted, means, device, dtype, suffix_batch, key, n, results, every)

    blocks = [b for b in ablate_blocks if passing[b]]
    for b in ablate_blocks:
        if not passing[b]:
            print(f"block {b}: no passing channels, nothing to ablate (name a set by hand with --sets '{b}:0:8' to run the sweep anyway)")
    if not blocks:
        return

    # Which images each variant screens on and reports on. The paper: all, and all. Held out: a split by class.
    everything = np.arange(n)
    images = {"paper": (everything, everything), "unscreened": (None, everything)}
    split = None
    if "heldout" in variants:
        screen, report = stratified_split(dataset.labels, holdout, seed)
        if not len(screen) or not len(report):
            die(f"--holdout {holdout} leaves no image to screen on or to report on among {n}: use more images")
        images["heldout"] = (screen, report)
        split = {"fraction": holdout, "seed": seed, "screen": len(screen), "report": len(report), "paths": digest(dataset.paths),
                 "report_index": report.tolist()}
        save_json(split, ablation_split(results))

    # Screening at no scale: draw random sets, evaluate them all in one pass, accept by the block's rule, on the
    # images each screened variant screens on; the unscreened control takes the first N_TRIALS draws as they come.
    draws = {b: [] for b in blocks}
    chosen = {(v, b): [] for v in variants for b in blocks}
    want = {b: max(screen_draws, n_trials if "unscreened" in variants else 0) for b in blocks}
    rnd = 0
    while True:
        for b in blocks:
            draws[b] += draw_sets(rngs[b], nonpassing[b], len(passing[b]), min(want[b], screen_cap - len(draws[b])))
        wanted = {b: [("passing", passing[b])] + [(f"draw{j:03d}", s) for j, s in enumerate(draws[b])] for b in blocks}
        cells = cells_for(f"screen{rnd}", [0], wanted)
        short, report = [], []
        for b in blocks:
            need = 0
            for v in variants:
                if v == "unscreened":
                    chosen[v, b] = list(range(min(n_trials, len(draws[b]))))
                    need = max(need, n_trials - len(draws[b]))
                    continue
                on = images[v][0]
                passing_hits = int(cells[b, "passing", 0][on].sum())
                if not accepted(rules[b], 0, passing_hits, len(on)):  # not even a set scoring 0 would be accepted
                    op, m = rules[b]
                    die(f"block {b}: the screening rule (random top-1 - passing top-1 {op} {m:g} pp) can never be met: the passing "
                        f"set scores {100 * passing_hits / len(on):.2f}%" + (" on the screening images" if v == "heldout" else "") +
                        f", and no random set can score below 0% (random weights?); pass a margin that can be met, e.g. "
                        f"--screen_margin '{b}:<=100' for a smoke run")
                ok = [j for j in range(len(draws[b])) if accepted(rules[b], int(cells[b, f"draw{j:03d}", 0][on].sum()), passing_hits, len(on))]
                report.append(f"block {b}" + (" (held-out screening)" if v == "heldout" else "") + f": {len(ok)} of {len(draws[b])} draws accepted")
                chosen[v, b] = ok[:n_trials]
                if len(ok) < n_trials:
                    if len(draws[b]) >= screen_cap:
                        op, m = rules[b]
                        die(f"block {b}: found {len(ok)} of {n_trials} accepted random sets in {screen_cap} draws" +
                            (" screening on the held-out split's screening images" if v == "heldout" else "") +
                            f" (rule: random top-1 - passing top-1 {op} {m:g} pp; passing top-1 = {100 * passing_hits / len(on):.2f}%); "
                            f"raise --screen_cap or change --screen_margin")
                    rate = len(ok) / len(draws[b])
                    need = max(need, math.ceil(1.5 * (n_trials - len(ok)) / rate) if rate else 4 * screen_draws)
            want[b] = need
            if need:
                short.append(b)
        print("screening: " + "; ".join(report))
        if not short:
            break
        rnd += 1

    # The sweep: every (condition, scale) cell of both blocks in one pass; no scale comes from screening. The
    # variants share their cells: a draw chosen by two of them is computed once.
    used = {b: sorted({j for v in variants for j in chosen[v, b]}) for b in blocks}
    wanted = {b: [("passing", passing[b])] + [(f"draw{j:03d}", draws[b][j]) for j in used[b]] for b in blocks}
    cells.update(cells_for("sweep", list(crops), wanted))
    scales = [0] + list(crops)
    for b in blocks:
        for v in variants:
            on, report_on = images[v]
            hits_p = np.stack([cells[b, "passing", s][report_on] for s in scales])
            hits_r = np.stack([[cells[b, f"draw{j:03d}", s][report_on] for s in scales] for j in chosen[v, b]])
            m = len(report_on)
            acc = lambda cond: [int(cells[b, cond, s][report_on].sum()) / m for s in scales]  # noqa: E731
            acc_random = [acc(f"draw{j:03d}") for j in chosen[v, b]]
            ratio, sem, trials = eq3(acc("passing"), acc_random)
            out = {"block": b, "variant": v, "passing": passing[b], "random_sets": [draws[b][j] for j in chosen[v, b]],
                   "scales": scales, "accuracy": {"none": acc("none"), "passing": acc("passing"), "random": acc_random},
                   "ratio": nan_to_none(ratio), "sem": nan_to_none(sem), "ratio_trials": [nan_to_none(t) for t in trials],
                   "n_images": m, "test": claim_test(trials, hits_p, hits_r, [seed, block_seed(b), list(ABLATION_VARIANTS).index(v)], **test),
                   "config": {**key[b], "block": b, "variant": v, "n_trials": n_trials, "screen_margin": screen_margin,
                              "screen_cap": screen_cap, "batch": batch, "bootstrap": test["replicates"], "ci": test["level"],
                              "permutations": test["permutations"], "device": device_name, "versions": versions()}}
            if on is not None:
                k = len(on)
                out["screening"] = {"rule": f"random - passing {rules[b][0]} {rules[b][1]:g} pp at no scale", "n_images": k,
                                    "accepted_draws": chosen[v, b],
                                    "draws": [{"channels": s, "accuracy": int(cells[b, f"draw{j:03d}", 0][on].sum()) / k,
                                               "accepted": accepted(rules[b], int(cells[b, f"draw{j:03d}", 0][on].sum()),
                                                                    int(cells[b, "passing", 0][on].sum()), k)}
                                              for j, s in enumerate(draws[b])]}
            else:
                out["screening"] = {"rule": "none: the first N_TRIALS draws", "accepted_draws": chosen[v, b]}
            if v == "heldout":
                out["split"] = {key_: split[key_] for key_ in ("fraction", "seed", "screen", "report", "paths")}
                out["config"]["holdout"] = holdout
            save_json(out, ablation_file(results, b, v))
            print_block(out)
    top1 = int(cells[blocks[0], "none", 0].sum()) / n  # no channel ablated, the standard eval view: the same in every block
    print(f"\nunablated top-1 of {weights_id} on these {n} images: {100 * top1:.2f}% (the 'none' column at 0%; with the real "
          f"weights and the full validation set, compare it with the published figure)" + ("  ** random weights **" if is_random(weights_id) else ""))


def nan_to_none(a):
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]


def print_block(out):
    """The block's table: top-1 per (scale, condition), Eq. 3, and the test of the claim per scale."""
    b, n = out["block"], out["n_images"]
    v = out.get("variant", "paper")
    images = f"screened on {out['split']['screen']} images, reported on {n}" if v == "heldout" else f"{n} images"
    t = out["test"]
    print(f"\nblock {b}, {ABLATION_VARIANTS[v]}: {len(out['passing'])} passing channels, {len(out['random_sets'])} random sets, "
          f"{images} (top-1 %; ratio = Eq. 3, +- standard error; minus none: the ratio minus the no-scale ratio, with its "
          f"{100 * t['ci_level']:g}% bootstrap interval over trials and images; p: that it is below 0, sign flips across trials)")
    print(f"{'scale':>6} {'none':>7} {'passing':>8} {'random':>15} {'ratio':>15} {'minus none [interval]':>27} {'p':>7}")
    acc = out["accuracy"]
    fmt = lambda x: "n/a" if x is None else f"{x:+.3f}"  # noqa: E731
    for k, s in enumerate(out["scales"]):
        r = np.array([t_[k] for t_ in acc["random"]]) * 100
        ratio, sem = out["ratio"][k], out["sem"][k]
        ratio_txt = "undefined" if ratio is None else f"{ratio:.3f}" + ("" if sem is None else f" +- {sem:.3f}")
        test_txt = ""
        if k:
            lo, hi = t["ci"][k - 1]
            p = t["p_below_per_scale"][k - 1]
            test_txt = f"{fmt(t['difference'][k - 1]) + ' [' + fmt(lo) + ', ' + fmt(hi) + ']':>27} {'n/a' if p is None else f'{p:.3g}':>7}"
        print(f"{s:>5}% {100 * acc['none'][k]:7.2f} {100 * acc['passing'][k]:8.2f} {r.mean():7.2f} +- "
              f"{r.std(ddof=1) if len(r) > 1 else 0:4.2f} {ratio_txt:>15} {test_txt}")
    if any(x is None for x in out["ratio"]):
        print("(undefined: every random set scored 0 at that scale, so acc_passing / acc_random has no value)")
    p = t["p_below"]
    print(f"the scaled ratios below the no-scale ratio, all scales together: p = {'n/a' if p is None else f'{p:.3g}'} "
          f"({t['n_trials']} trials, {t['permutations']} sign flips)".replace("exact sign flips", "every sign flip"))
    for line in released_reference(out):
        print(line)


def released_reference(out):
    """The lines that put a block's passing-set top-1 beside the released scale_robust.py's (RELEASED_TOP1), for
    resnet18 with RELEASED_WEIGHTS and the paper's protocol only; [] where there is no reference."""
    cfg, b = out["config"], out["block"]
    if (out.get("variant", "paper") != "paper" or b not in RELEASED_TOP1 or cfg.get("arch", "resnet18") != "resnet18"
            or cfg.get("weights") != RELEASED_WEIGHTS):
        return []
    cells = [f"{s}%: {100 * out['accuracy']['passing'][k]:.2f} vs {RELEASED_TOP1[b][RELEASED_CROPS.index(s)]:g}"
             for k, s in enumerate(out["scales"]) if s in RELEASED_CROPS]
    crops = ("the same crops as ours here (--crop_as_released true)" if cfg.get("crop_as_released") else
             "other crops: ours are 256 - floor(256 p / 100) px of the 256 resize (231 at 10 %), its int(224 (1 - p)) "
             "(201 at 10 %), so its scaled numbers are not ours; --crop_as_released true uses its crops")
    return [f"the released scale_robust.py, block {b}, its passing set ablated (top-1 %, ours vs released): " + "; ".join(cells),
            f"  (released: the paper's list of {b} (criteria.py prints it; --sets names it), means from its own tuning-curve "
            f"files, all 50,000 validation images; {crops})"]


# ----------------------------------------------------------------------------------------------------

def main():
    cfg = configure(globals(), aliases={"scales": "CROPS"})
    net = arch.net(ARCH)
    for stage in STAGES:
        if stage not in ("natural", "sweep"):
            die(f"unknown stage {stage!r}: the stages are natural, sweep")
    for s in CROPS:
        if not 0 < s < 100:
            die(f"crop {s} is out of range: --crops are percentages between 1 and 99")
    for name, value, least in (("n_trials", N_TRIALS, 1), ("screen_draws", SCREEN_DRAWS, 1),
                               ("limit", LIMIT, 0), ("fake", FAKE, 0), ("suffix_batch", SUFFIX_BATCH, 0), ("workers", WORKERS, -1)):
        if value < least:
            die(f"--{name} must be at least {least}, not {value}")
    if SCREEN_CAP < N_TRIALS:
        die(f"--screen_cap ({SCREEN_CAP}) must be at least --n_trials ({N_TRIALS})")
    if not CHECKPOINT_SECONDS > 0:
        die(f"--checkpoint_seconds must be positive, not {CHECKPOINT_SECONDS}")
    unknown = [v for v in VARIANTS if v not in ABLATION_VARIANTS]
    if unknown or "paper" not in VARIANTS:
        die(f"--variants must name paper and any of heldout, unscreened (comma-separated), not {','.join(VARIANTS) or 'nothing'}")
    if not 0 < HOLDOUT < 1:
        die(f"--holdout must be a fraction between 0 and 1 (exclusive), not {HOLDOUT}")
    if not 0 < CI < 1 or BOOTSTRAP < 0 or PERMUTATIONS < 1:
        die("--ci must be between 0 and 1, --bootstrap at least 0 and --permutations at least 1")
    device = pick_device(DEVICE)
    prec = precision(AMP, device)  # the sweep's; the natural stage measures in fp32 (no TF32)
    batch = resolve_batch(BATCH, device, arch.image_bytes(ARCH), cpu_default=128, cap=256)  # cap: host memory (workers x views)
    root = os.path.abspath(DATA) if DATA else DATA
    if FAKE and not DATA:
        die("--fake needs --data: the folder to write the generated JPEGs into")
    listing = None if FAKE else imagenet_folder(root, LIMIT, LABELS)  # a bad folder or label file stops here, before the model
    lock = lock_results(RESULTS, "ablate.py")  # noqa: F841 (held until the process ends)
    device_name = use_device(device, prec)  # TF32 only for --amp tf32 (the fp32 sweep equals the reference)
    inputs = [read_summary(RESULTS, net, required=False)] + ([read_criteria(RESULTS, net)] if "sweep" in STAGES else [])
    weights = weights_to_load(WEIGHTS, [made["config"] for made in inputs if made])  # disagreeing inputs are refused
    model, weights_id = load_model(net.name, weights, device)
    model = model.to(memory_format=torch.channels_last)  # faster convolutions on CPU and GPU, same fp32 arithmetic
    if FAKE:  # smoke data, labelled with this model's predictions
        write_fake_imagenet(root, FAKE, predict=lambda views: model(normalize(to_float(views.to(device)))).argmax(1).cpu())
        listing = imagenet_folder(root, LIMIT, LABELS)
    paths, labels, found = listing
    print(f"data: {root}: {found}")
    dataset = ImageNetFolder(root, paths, labels)
    loader_for = loader_cache(root, paths, labels, batch, WORKERS, device, CROP_AS_RELEASED)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"{len(paths)} images from {root} ({len(set(labels.tolist()))} classes), weights {weights_id}, device {device_name}, "
          f"batch {batch}, sweep precision {prec}, channels_last")
    run = dict(results=RESULTS, root=root, limit=LIMIT, batch=batch, every=CHECKPOINT_SECONDS)  # what both stages record and where

    # Section 4: natural-image activations, top-9 images and the means that mean ablation writes.
    if "natural" in STAGES:
        with no_tf32():  # fp32 means fp32: the natural stage measures
            natural_stage(net, model, weights_id, dataset, loader_for, device, **run, fake=FAKE, label_file=LABELS, seed=SEED)

    # Section 5: screen random sets of non-passing channels, mean-ablate at every crop, Eq. 3; and the test of the claim.
    if "sweep" in STAGES:
        sweep_stage(net, model, weights_id, dataset, loader_for, device, device_name, prec, **run,
                    suffix_batch=SUFFIX_BATCH or (4096 if device.type == "cuda" else 512),
                    ablate_blocks=ABLATE_BLOCKS, sets=SETS, weights=weights, seed=SEED, crops=CROPS,
                    screen_margin=SCREEN_MARGIN, screen_draws=SCREEN_DRAWS, screen_cap=SCREEN_CAP, n_trials=N_TRIALS,
                    variants=VARIANTS, holdout=HOLDOUT, crop_as_released=CROP_AS_RELEASED,
                    test=dict(replicates=BOOTSTRAP, level=CI, permutations=PERMUTATIONS))
    return cfg


if __name__ == "__main__":
    main_guard(main, "the counts so far are saved (every CHECKPOINT_SECONDS and now); run the same command again to resume")
