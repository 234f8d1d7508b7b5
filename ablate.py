"""Natural-image activations and mean ablation of the criteria-passing channels (METHOD.md sections 4 and 5).

Stage `natural`: one pass over ImageNet validation (standard eval view, float32) records the center-neuron
activation of every channel of the 18 layers: per-image activations (float16 .npy per layer), the top-9
images per unit, and the mean activation per unit (the values that mean ablation writes).

Stage `sweep`: for blocks 2.1 and 3.1, mean-ablate the passing channels of the block output, and random
sets of as many non-passing channels, screened at no scale (2.1: a random set must do more damage than the
passing set; 3.1: at most 1 percentage point less). Then top-1 accuracy of every (condition, scale) and
Eq. 3's ratio acc_passing / acc_random with its standard error over the accepted random sets.

How it is fast: each pass over the set decodes every JPEG once (all scaled views come from that decode);
per image batch and view the network runs once up to the ablated block, and every condition of the block
(unablated, passing, random sets) runs from there, stacked along the batch. Both blocks share one pass.

    python ablate.py --data /path/to/imagenet/val                   # both stages
    python ablate.py --data DIR --weights random --limit 200 --sets "2.1:0:8;3.1:0:16" --stages sweep
"""

import hashlib
import math
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from stream import (BLOCKS, LAYERS, RESIDUAL_BLOCKS, ImageNetFolder, block_forward, config_mismatch, configure, die, fzs_command,
                    guarded, head, image_loader, imagenet_folder, load_json, load_pt, load_resnet18, lock_results, main_guard,
                    n_channels, normalize, parse_channels, pick_device, read_center, save_json, save_pt, stem, to_float,
                    versions, where, write_fake_imagenet)

DATA = ""  # ImageNet validation folder in the prepared layout, one sub-folder per wnid (required)
FAKE = 0  # smoke runs without ImageNet: first write this many generated JPEGs into DATA, labelled with the model's predictions
LIMIT = 0  # use only this many images, evenly spaced over the sorted file list (0 = all)
STAGES = ["natural", "sweep"]  # stages to run, in order: natural (activations, top-9, means), sweep (screening + ablation)
WEIGHTS = "IMAGENET1K_V1"  # IMAGENET1K_V1, random[:SEED] (tests and smoke runs only) or a state_dict path
RESULTS = "results"  # output folder
DEVICE = "auto"  # auto, cpu, cuda or cuda:N
AMP = "auto"  # sweep precision: auto = bf16 autocast on CUDA and fp32 on CPU, or bf16 / fp32 (natural stage: always fp32)
BATCH = 128  # images per batch
SUFFIX_BATCH = 0  # images x conditions per forward after the ablated block (0 = auto: 512 on CPU, 4096 on CUDA)
WORKERS = -1  # DataLoader worker processes decoding JPEGs (-1 = one per CPU core, at most 16)
SEED = 0  # seeds the random channel sets (together with the block)
ABLATE_BLOCKS = ["2.1", "3.1"]  # blocks to ablate (METHOD.md section 5)
SETS = ""  # passing sets by hand, e.g. "2.1:3,17,40:48;3.1:0,9" (blocks not named: RESULTS/criteria.json)
N_TRIALS = 10  # accepted random sets per block
SCALES = [10, 20, 30, 40, 50]  # scale transforms in percent; no scale (0) is always evaluated too
SCREEN_MARGIN = "2.1:<0;3.1:<=1"  # per block: accept a random set if its no-scale top-1 minus the passing set's, in percentage points, is < or <= this
SCREEN_DRAWS = 20  # random sets drawn per block in the first screening pass
SCREEN_CAP = 200  # most random sets drawn per block before screening gives up
CHECKPOINT_SECONDS = 30  # save the partial counts of a pass at most this often (and on Ctrl-C)


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
    """METHOD.md Eq. 3 per scale: ratio = mean_i(acc_passing / acc_random_i), sem = std(ddof=1) / sqrt(n).

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


def parse_rules(spec):
    """'2.1:<0;3.1:<=1' -> {block: (op, margin in percentage points)}."""
    rules = {}
    for item in [s.strip() for s in spec.split(";") if s.strip()]:
        block, _, rule = item.partition(":")
        op = "<=" if rule.strip().startswith("<=") else "<" if rule.strip().startswith("<") else None
        try:
            margin = float(rule.strip()[len(op):]) if op else None
        except ValueError:
            margin = None
        if block.strip() not in BLOCKS or margin is None:
            die(f"cannot read screening rule {item!r}: use e.g. '2.1:<0;3.1:<=1' (block:< or <= margin in percentage points)")
        rules[block.strip()] = (op, margin)
    return rules


def accepted(rule, correct_random, correct_passing, n_images):
    """Screening: is (acc_random - acc_passing) in percentage points < or <= the margin? Exact in integers."""
    op, margin = rule
    diff, bound = 100 * (correct_random - correct_passing), margin * n_images
    return diff < bound if op == "<" else diff <= bound


def parse_sets(spec):
    """'2.1:3,17,40:48;3.1:0,9' -> {block: sorted channels}."""
    sets = {}
    for item in [s.strip() for s in spec.split(";") if s.strip()]:
        block, sep, channels = item.partition(":")
        if not sep or block.strip() not in BLOCKS:
            die(f"cannot read set {item!r}: use e.g. '2.1:3,17,40:48;3.1:0,9' (block:channels; blocks separated by ;)")
        post = BLOCKS[block.strip()][2]
        sets[block.strip()] = parse_channels(channels, n_channels(post), f"block {block.strip()}")
    return sets


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


def run_suffix(model, h, start):
    """The network from block RESIDUAL_BLOCKS[start] on, to the logits."""
    for name in RESIDUAL_BLOCKS[start:]:
        h = block_forward(model.get_submodule(name), h)["post"]
    return head(model, h)


def predictions(model, x, plan, suffix_batch):
    """Top-1 predictions (1 + sum of K, B) of one normalised batch x: row 0 unablated, then per plan entry
    (block index, mean (C,), masks (K, C) bool), in forward order, its K conditions."""
    memory = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format
    h, i, rows = stem(model, x), 0, []
    for idx, mean, masks in plan:
        while i <= idx:
            h = block_forward(model.get_submodule(RESIDUAL_BLOCKS[i]), h)["post"]
            i += 1
        per = max(1, suffix_batch // h.shape[0])
        for k in range(0, masks.shape[0], per):
            xk = overwrite(h, masks[k:k + per], mean).contiguous(memory_format=memory)
            rows.append(run_suffix(model, xk, idx + 1).argmax(1).view(-1, h.shape[0]))
    rows.insert(0, run_suffix(model, h, i).argmax(1).view(1, -1))
    return torch.cat(rows)


def reference_logits(model, loader, block, channels, mean, device):
    """The released way: one pass over a DataLoader per condition, the whole network, a forward hook on the
    block that overwrites the channels. Returns the logits (N, 1000) in dataset order."""
    module = model.get_submodule(RESIDUAL_BLOCKS[where(BLOCKS[block][2])[0]])
    chans = torch.as_tensor(list(channels), dtype=torch.long, device=device)

    def hook(_module, _inputs, out):
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


def masks_for(sets, n):
    m = torch.zeros(len(sets), n, dtype=torch.bool)
    for k, s in enumerate(sets):
        m[k, list(s)] = True
    return m


# ----------------------------------------------------------------------------------------------------
# A pass over the set that counts correct top-1 predictions for many cells at once, resumable.

def run_pass(name, model, dataset, scales, plan, device, dtype, suffix_batch, folder, key):
    """Correct counts (len(scales), 1 + sum of K) for every scale and every condition of `plan` (see
    predictions), in one pass that decodes each image once. Partial counts go to folder/.partial-<name>.pt
    every CHECKPOINT_SECONDS and on Ctrl-C; a rerun with the same key and plan continues from there."""
    plan_key = digest(key, scales, [(idx, digest(mean.cpu().numpy()), digest(masks.numpy())) for idx, mean, masks in plan])
    partial = os.path.join(folder, f".partial-{name}.pt")
    n_cond = 1 + sum(m.shape[0] for _, _, m in plan)
    state = {"key": plan_key, "done": 0, "correct": torch.zeros(len(scales), n_cond, dtype=torch.int64)}
    if os.path.isfile(partial):
        old = load_pt(partial, "partial counts")
        if old.get("key") == plan_key:
            state = old
            print(f"{name}: resuming after {state['done']} of {len(dataset)} images")
    if state["done"] >= len(dataset):
        return state["correct"]
    dataset.scales = list(scales)
    plan_dev = [(idx, mean.to(device), masks.to(device)) for idx, mean, masks in plan]
    correct = state["correct"].to(device)
    done, last_save = state["done"], time.time()
    loader = image_loader(dataset, BATCH, WORKERS, device, start=done)
    bar = tqdm(total=len(dataset), initial=done, unit="img", desc=f"{name}: {len(scales)} view(s) x {n_cond} conditions", dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for views, labels, _index in guarded(loader):
                views, labels = views.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                batch = torch.zeros_like(correct)
                for v in range(len(scales)):
                    x = normalize(to_float(views[:, v])).contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        batch[v] = (predictions(model, x, plan_dev, suffix_batch) == labels[None]).sum(1)
                correct, done = correct + batch, done + len(labels)  # one assignment: a Ctrl-C never leaves half a batch
                bar.update(len(labels))
                if time.time() - last_save > CHECKPOINT_SECONDS and done < len(dataset):
                    save_pt({"key": plan_key, "done": done, "correct": correct.cpu()}, partial)
                    last_save = time.time()
    except BaseException:
        if 0 < done < len(dataset):
            save_pt({"key": plan_key, "done": done, "correct": correct.cpu()}, partial)
        raise
    finally:
        bar.close()
    save_pt({"key": plan_key, "done": done, "correct": correct.cpu()}, partial)
    return correct.cpu()


# ----------------------------------------------------------------------------------------------------
# Stage 1: natural-image activations (METHOD.md section 4).

def natural_stage(model, wid, dataset, root, device):
    folder = os.path.join(RESULTS, "natural")
    os.makedirs(folder, exist_ok=True)
    n = len(dataset)
    config = {"stage": "natural", "weights": wid, "data": root, "fake": FAKE, "limit": LIMIT, "count": n,
              "paths": digest(dataset.paths), "seed": SEED, "batch": BATCH, "precision": "fp32", "versions": versions()}
    keys = ["weights", "data", "limit", "count", "paths"]
    summary_path = os.path.join(folder, "summary.pt")
    if os.path.isfile(summary_path):
        old = load_pt(summary_path, "natural-image summary")
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
    partial = {l: os.path.join(folder, f".{l}.npy.partial") for l in LAYERS}
    resume = state is not None and state["done"] > 0 and all(os.path.isfile(p) for p in partial.values())
    if resume:
        print(f"natural: resuming after {state['done']} of {n} images")
    else:
        state = {"config": config, "done": 0,
                 "top9": {l: (torch.empty(n_channels(l), 0), torch.empty(n_channels(l), 0, dtype=torch.int64)) for l in LAYERS},
                 "sum": {l: torch.zeros(n_channels(l), dtype=torch.float64) for l in LAYERS}}
    arrays = {l: np.lib.format.open_memmap(partial[l], mode="r+" if resume else "w+", dtype=np.float16, shape=(n, n_channels(l)))
              for l in LAYERS}

    def checkpoint(s):
        for a in arrays.values():
            a.flush()
        save_pt(s, progress_path)

    dataset.scales = [0]  # this stage reads the standard eval view only
    loader = image_loader(dataset, BATCH, WORKERS, device, start=state["done"])
    bar = tqdm(total=n, initial=state["done"], unit="img", desc="natural: 18 layers, center neurons", dynamic_ncols=True)
    last_save = time.time()
    try:
        with torch.inference_mode():
            for views, _labels, index in guarded(loader):
                first = state["done"]
                assert int(index[0]) == first
                x = normalize(to_float(views[:, 0].to(device, non_blocking=True))).contiguous(memory_format=torch.channels_last)
                acts = read_center(model, x, LAYERS)
                new = {"config": config, "done": first + len(index), "top9": {}, "sum": {}}
                for layer, a in acts.items():
                    a = a.cpu()
                    arrays[layer][first:first + len(a)] = a.numpy().astype(np.float16)
                    new["top9"][layer] = top9_update(*state["top9"][layer], a, first)
                    new["sum"][layer] = state["sum"][layer] + a.double().sum(0)
                state = new  # one assignment: a Ctrl-C never leaves half a batch
                bar.update(len(index))
                if time.time() - last_save > CHECKPOINT_SECONDS:
                    checkpoint(state)
                    last_save = time.time()
    except BaseException:
        if state["done"]:
            checkpoint(state)
        raise
    finally:
        bar.close()
    for layer in LAYERS:
        arrays[layer].flush()
        del arrays[layer]
        os.replace(partial[layer], os.path.join(folder, f"{layer}.npy"))
    summary = {"root": root, "paths": dataset.paths, "labels": torch.as_tensor(dataset.labels, dtype=torch.int64),
               "top9_index": {l: state["top9"][l][1] for l in LAYERS}, "top9_activation": {l: state["top9"][l][0] for l in LAYERS},
               "mean": {l: (state["sum"][l] / n).float() for l in LAYERS}, "count": n, "config": config}
    save_pt(summary, summary_path)
    if os.path.isfile(progress_path):
        os.remove(progress_path)
    print(f"natural: wrote {folder}/<layer>.npy (float16, {n} x C) for the 18 layers and {summary_path}")


# ----------------------------------------------------------------------------------------------------
# Stage 2: screening and the ablation sweep (METHOD.md section 5).

def passing_sets(wid):
    sets = parse_sets(SETS)
    missing = [b for b in ABLATE_BLOCKS if b not in sets]
    if missing:
        path = os.path.join(RESULTS, "criteria.json")
        if not os.path.isfile(path):
            die(f"no passing set for block(s) {', '.join(missing)}: run criteria.py first ({path} is missing) or name them with --sets")
        crit = load_json(path, "criteria file")
        made = crit.get("config", {}).get("weights_id", crit.get("config", {}).get("weights"))
        made = "random:0" if made == "random" else made
        if made is not None and made != wid:
            die(f"{path} was made with weights {made!r}, this run uses {wid!r}: rerun criteria.py or name the sets with --sets")
        for b in missing:
            if b not in crit.get("blocks", {}):
                die(f"{path} has no block {b}; name its passing set with --sets")
            unmeasured = crit["blocks"][b].get("missing", [])
            if unmeasured:  # random 'non-passing' sets would be drawn among channels that were never measured
                layers = BLOCKS[b][:2]
                like = crit.get("fz_files", {}).get(layers[0], {})
                die(f"{path}: block {b} measured only {len(crit['blocks'][b].get('measured', []))} of its channels "
                    f"({len(unmeasured)} missing), so random sets could include passing channels; make the rest with: "
                    f"{fzs_command(layers, RESULTS, WEIGHTS, like, unmeasured)}, then run criteria.py again (or name the set with --sets)")
            sets[b] = sorted(int(c) for c in crit["blocks"][b]["passing"])
    return {b: sets[b] for b in ABLATE_BLOCKS}


def cell_path(block, condition, scale):
    return os.path.join(RESULTS, "ablation", block, f"{condition}_s{scale}.json")


def read_cell(block, condition, scale, channels, key):
    """The correct count of a finished cell, or None; dies on a cell made under another config."""
    path = cell_path(block, condition, scale)
    if not os.path.isfile(path):
        return None
    cell = load_json(path, "ablation cell")
    if cell.get("run") != key or cell.get("channels") != list(channels):
        why = "channels differ" if cell.get("run") == key else config_mismatch(cell.get("run", {}), key, list(key))
        die(f"{path} was made under another config ({why}); use another --results or delete {os.path.dirname(path)}")
    return cell["correct"]


def compute_cells(name, model, dataset, scales, wanted, means, device, dtype, suffix_batch, key, n_images):
    """wanted: {block: [(condition, channels)]}. Runs one pass for the cells not finished yet and writes them."""
    cells = {}
    todo = {}
    for b, conds in wanted.items():
        for cond, chans in conds + [("none", [])]:
            for s in scales:
                got = read_cell(b, cond, s, chans, key[b])
                if got is None:
                    todo.setdefault(b, {})[cond] = chans
                else:
                    cells[b, cond, s] = got
    if todo:
        blocks = sorted(todo, key=lambda b: where(BLOCKS[b][2])[0])
        names = {b: [c for c in todo[b] if c != "none"] for b in blocks}
        plan = [(where(BLOCKS[b][2])[0], means[b], masks_for([todo[b][c] for c in names[b]], len(means[b]))) for b in blocks]
        correct = run_pass(name, model, dataset, scales, plan, device, dtype, suffix_batch, os.path.join(RESULTS, "ablation"), key)
        col = 1
        for b in blocks:
            for c in names[b]:
                for v, s in enumerate(scales):
                    cells[b, c, s] = int(correct[v, col])
                col += 1
            for v, s in enumerate(scales):
                cells[b, "none", s] = int(correct[v, 0])
        for b in blocks:
            for c, chans in todo[b].items():
                for s in scales:
                    save_json({"block": b, "condition": c, "channels": list(chans), "scale": s, "correct": cells[b, c, s],
                               "total": n_images, "run": key[b]}, cell_path(b, c, s))
        partial = os.path.join(RESULTS, "ablation", f".partial-{name}.pt")
        if os.path.isfile(partial):
            os.remove(partial)
    return cells


def sweep_stage(model, wid, dataset, root, device, dtype, suffix_batch):
    n = len(dataset)
    summary = load_pt(os.path.join(RESULTS, "natural", "summary.pt"), "natural-image summary (run the natural stage first)")
    mine = {"weights": wid, "data": root, "limit": LIMIT, "count": n, "paths": digest(dataset.paths)}
    why = config_mismatch(summary["config"], mine, list(mine))
    if why:
        die(f"{RESULTS}/natural/summary.pt was made under another config ({why}): run the natural stage with the same --data/--limit/--weights")
    rules = parse_rules(SCREEN_MARGIN)
    passing = passing_sets(wid)
    means, key, nonpassing, rngs = {}, {}, {}, {}
    for b in ABLATE_BLOCKS:
        post = BLOCKS[b][2]
        means[b] = summary["mean"][post].float()
        if b not in rules:
            die(f"no screening rule for block {b} in --screen_margin {SCREEN_MARGIN!r}")
        nonpassing[b] = sorted(set(range(n_channels(post))) - set(passing[b]))
        if len(nonpassing[b]) < len(passing[b]):
            die(f"block {b}: {len(passing[b])} passing channels but only {len(nonpassing[b])} others to draw random sets from")
        key[b] = {"weights": wid, "data": root, "limit": LIMIT, "n_images": n, "paths": digest(dataset.paths),
                  "mean": digest(means[b].numpy()), "precision": "bf16" if dtype is not None else "fp32",
                  "passing": passing[b], "seed": SEED}
        rngs[b] = np.random.default_rng([SEED, int(b.replace(".", ""))])
    blocks = [b for b in ABLATE_BLOCKS if passing[b]]
    for b in ABLATE_BLOCKS:
        if not passing[b]:
            print(f"block {b}: no passing channels, nothing to ablate (name a set by hand with --sets '{b}:0:8' to run the sweep anyway)")
    if not blocks:
        return

    # Screening at no scale: draw random sets, evaluate them all in one pass, accept by the block's rule.
    draws = {b: [] for b in blocks}
    chosen = {b: [] for b in blocks}
    want = {b: SCREEN_DRAWS for b in blocks}
    rnd = 0
    while True:
        for b in blocks:
            draws[b] += draw_sets(rngs[b], nonpassing[b], len(passing[b]), min(want[b], SCREEN_CAP - len(draws[b])))
        wanted = {b: [("passing", passing[b])] + [(f"draw{j:03d}", s) for j, s in enumerate(draws[b])] for b in blocks}
        cells = compute_cells(f"screen{rnd}", model, dataset, [0], wanted, means, device, dtype, suffix_batch, key, n)
        short, report = [], []
        for b in blocks:
            if not accepted(rules[b], 0, cells[b, "passing", 0], n):  # not even a set scoring 0 would be accepted
                op, m = rules[b]
                die(f"block {b}: the screening rule (random top-1 - passing top-1 {op} {m:g} pp) can never be met: the passing "
                    f"set scores {100 * cells[b, 'passing', 0] / n:.2f}%, and no random set can score below 0% (random weights?); "
                    f"pass a margin that can be met, e.g. --screen_margin '{b}:<=100' for a smoke run")
            ok = [j for j in range(len(draws[b])) if accepted(rules[b], cells[b, f"draw{j:03d}", 0], cells[b, "passing", 0], n)]
            report.append(f"block {b}: {len(ok)} of {len(draws[b])} draws accepted")
            chosen[b] = ok[:N_TRIALS]
            if len(ok) < N_TRIALS:
                if len(draws[b]) >= SCREEN_CAP:
                    op, m = rules[b]
                    die(f"block {b}: found {len(ok)} of {N_TRIALS} accepted random sets in {SCREEN_CAP} draws (rule: random "
                        f"top-1 - passing top-1 {op} {m:g} pp; passing top-1 = {100 * cells[b, 'passing', 0] / n:.2f}%); "
                        f"raise --screen_cap or change --screen_margin")
                rate = len(ok) / len(draws[b])
                want[b] = math.ceil(1.5 * (N_TRIALS - len(ok)) / rate) if rate else 4 * SCREEN_DRAWS
                short.append(b)
            else:
                want[b] = 0
        print("screening: " + "; ".join(report))
        if not short:
            break
        rnd += 1

    # The sweep: every (condition, scale) cell of both blocks in one pass; no scale comes from screening.
    wanted = {b: [("passing", passing[b])] + [(f"draw{j:03d}", draws[b][j]) for j in chosen[b]] for b in blocks}
    cells.update(compute_cells("sweep", model, dataset, list(SCALES), wanted, means, device, dtype, suffix_batch, key, n))
    scales = [0] + list(SCALES)
    for b in blocks:
        acc = lambda cond: [cells[b, cond, s] / n for s in scales]  # noqa: E731
        acc_random = [acc(f"draw{j:03d}") for j in chosen[b]]
        ratio, sem, trials = eq3(acc("passing"), acc_random)
        out = {"block": b, "passing": passing[b], "random_sets": [draws[b][j] for j in chosen[b]], "scales": scales,
               "accuracy": {"none": acc("none"), "passing": acc("passing"), "random": acc_random},
               "ratio": nan_to_none(ratio), "sem": nan_to_none(sem), "ratio_trials": [nan_to_none(t) for t in trials],
               "n_images": n,
               "screening": {"rule": f"random - passing {rules[b][0]} {rules[b][1]:g} pp at no scale", "accepted_draws": chosen[b],
                             "draws": [{"channels": s, "accuracy": cells[b, f"draw{j:03d}", 0] / n,
                                        "accepted": accepted(rules[b], cells[b, f"draw{j:03d}", 0], cells[b, "passing", 0], n)}
                                       for j, s in enumerate(draws[b])]},
               "config": {**key[b], "block": b, "n_trials": N_TRIALS, "screen_margin": SCREEN_MARGIN, "screen_cap": SCREEN_CAP,
                          "batch": BATCH, "device": str(device), "versions": versions()}}
        save_json(out, os.path.join(RESULTS, "ablation", f"{b}.json"))
        print_block(out)


def nan_to_none(a):
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]


def print_block(out):
    b, n = out["block"], out["n_images"]
    print(f"\nblock {b}: {len(out['passing'])} passing channels, {len(out['random_sets'])} random sets, {n} images "
          f"(top-1 %; ratio = Eq. 3, +- standard error)")
    print(f"{'scale':>6} {'none':>7} {'passing':>8} {'random':>15} {'ratio':>15}")
    acc = out["accuracy"]
    for k, s in enumerate(out["scales"]):
        r = np.array([t[k] for t in acc["random"]]) * 100
        ratio, sem = out["ratio"][k], out["sem"][k]
        ratio_txt = "undefined" if ratio is None else f"{ratio:.3f}" + ("" if sem is None else f" +- {sem:.3f}")
        print(f"{s:>5}% {100 * acc['none'][k]:7.2f} {100 * acc['passing'][k]:8.2f} {r.mean():7.2f} +- {r.std(ddof=1) if len(r) > 1 else 0:4.2f} {ratio_txt:>15}")
    if any(v is None for v in out["ratio"]):
        print("(undefined: every random set scored 0 at that scale, so acc_passing / acc_random has no value)")


# ----------------------------------------------------------------------------------------------------

def main():
    cfg = configure(globals())
    for stage in STAGES:
        if stage not in ("natural", "sweep"):
            die(f"unknown stage {stage!r}: the stages are natural, sweep")
    for s in SCALES:
        if not 0 < s < 100:
            die(f"scale {s} is out of range: scales are percentages between 1 and 99")
    for name, value, least in (("batch", BATCH, 1), ("n_trials", N_TRIALS, 1), ("screen_draws", SCREEN_DRAWS, 1),
                               ("limit", LIMIT, 0), ("fake", FAKE, 0), ("suffix_batch", SUFFIX_BATCH, 0), ("workers", WORKERS, -1)):
        if value < least:
            die(f"--{name} must be at least {least}, not {value}")
    if SCREEN_CAP < N_TRIALS:
        die(f"--screen_cap ({SCREEN_CAP}) must be at least --n_trials ({N_TRIALS})")
    if not CHECKPOINT_SECONDS > 0:
        die(f"--checkpoint_seconds must be positive, not {CHECKPOINT_SECONDS}")
    device = pick_device(DEVICE)
    if AMP == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else None
    elif AMP in ("bf16", "fp32"):
        dtype = torch.bfloat16 if AMP == "bf16" else None
    else:
        die(f"amp must be auto, bf16 or fp32, not {AMP!r}")
    root = os.path.abspath(DATA) if DATA else DATA
    if FAKE and not DATA:
        die("--fake needs --data: the folder to write the generated JPEGs into")
    if not FAKE:
        imagenet_folder(root, LIMIT)  # a bad folder stops here, before the model is loaded
    lock = lock_results(RESULTS, "ablate.py")  # noqa: F841 (held until the process ends)
    model, wid = load_resnet18(WEIGHTS, device)
    model = model.to(memory_format=torch.channels_last)  # faster convolutions on CPU and GPU, same fp32 arithmetic
    if FAKE:  # smoke data, labelled with this model's predictions
        write_fake_imagenet(root, FAKE, predict=lambda views: model(normalize(to_float(views.to(device)))).argmax(1).cpu())
    paths, labels = imagenet_folder(root, LIMIT)
    dataset = ImageNetFolder(root, paths, labels)
    if device.type == "cuda":  # fp32 means fp32 (no TF32): the natural stage measures, the fp32 sweep equals the reference
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    print(f"{len(paths)} images from {root} ({len(set(labels.tolist()))} classes), weights {wid}, device {device}, "
          f"sweep precision {'bf16 autocast' if dtype is not None else 'fp32'}, channels_last")
    if "natural" in STAGES:
        natural_stage(model, wid, dataset, root, device)
    if "sweep" in STAGES:
        suffix_batch = SUFFIX_BATCH or (4096 if device.type == "cuda" else 512)
        sweep_stage(model, wid, dataset, root, device, dtype, suffix_batch)
    return cfg


if __name__ == "__main__":
    main_guard(main, "the counts so far are saved (every CHECKPOINT_SECONDS and now); run the same command again to resume")
