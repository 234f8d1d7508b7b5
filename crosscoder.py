"""Beyond channels: scale-equivariant features in superposition, found with group crosscoders (Gorton 2024).

The paper reads channels only, and names superposition as what may hide more scale-invariant features. A group
crosscoder learns, per block, a dictionary of latents that each write one decoder block d_f(r, z) in R^C for every
role r in (In, Pre, Post) and every zoom z. The paper's claim, stated for such latents ("summation latents"):
Post's blocks are invariant over z, In's norm peaks zoomed out of Pre's, and In's and Pre's blocks at their preferred
zooms point the same way in channel space (the residual sum adds them channel by channel).

1. Data. The natural stage's images (ablate.py --stages natural: its folder, paths and labels), each decoded once
   into tuning.py's zoom views (FRACTIONS: 0.5x ... 2x, 5 zooms by default); one truncated pass per zoom reads the
   center-neuron vectors of every layer the blocks need. float16 memmaps crosscoder/data/<layer>.npy (N, Z, C),
   resumable; a seeded held-out split (HOLDOUT). Or --activations PATH: a .npz the user brings (see ACTIVATIONS).
2. The crosscoder, per block, in plain torch: inputs scaled per (role, zoom) block by its standard deviation, so the
   loss, the MSE of every block over its variance averaged over the 3 Z blocks, is the mean of (1 - FVE) and no block
   dominates by scale; encoder reading the zoom-1 blocks (ENCODER zoom1, Gorton's asymmetric form) or all blocks;
   TopK per sample; AuxK on latents dead for DEAD_STEPS steps (Gao et al. 2024); unit-norm atoms (the whole
   concatenation: block norms stay free to differ, which is what is read). Seeded; byte-reproducible on the CPU;
   checkpointed (resumes after kill -9 to the same bytes).
3. Reading, per latent, from the block norms n_f(r, z) (in activation units) and directions: the transform-block
   profile (cosines between a role's blocks at each pair of zooms), stats.invariance_index over z (tuning.py's SI) and
   the preferred zoom of each role, the summation rule, the type (dead, other, summation, invariant, equivariant by
   Post's preferred zoom), the best-aligned single channel of Post's block and that cosine (superposition), the
   alignment of summation latents with the channels that pass the paper's criteria (criteria.json), and the fraction
   of variance explained per (role, zoom) on the held-out images.

    python crosscoder.py                          # after ablate.py --stages natural (criteria.py for the alignment)
    python crosscoder.py --activations acts.npz   # a user's activations

Writes <RESULTS>/crosscoder/data/ (the data stage), crosscoder/<block>.pt (weights, config, training log, reading),
crosscoder.json (per block) and crosscoder.csv (per latent).
"""

import os
import time

import numpy as np
import torch
from tqdm import tqdm

import arch
from cli import configure, die, main_guard, pick_device, resolve_batch, use_device
from imagenet import ZoomFolder, image_loader, resumable_pass, zooms
from results import (
    check_made,
    config_mismatch,
    crosscoder_array,
    crosscoder_checkpoint,
    crosscoder_data,
    crosscoder_file,
    crosscoder_model,
    crosscoder_progress,
    is_random,
    load_pt,
    lock_results,
    natural_summary,
    read_criteria,
    read_made,
    read_summary,
    save_json,
    save_pt,
    versions,
    weights_to_load,
    write_csv,
)
from stats import invariance_index, preferred_zoom
from stream import encoder_columns, encoder_pre, load_model, normalize, read_center, to_float

RESULTS = "results"  # reads natural/ (ablate.py --stages natural) and criteria.json; writes crosscoder/, crosscoder.json, crosscoder.csv
ARCH = "resnet18"  # a torchvision ResNet; must be the natural stage's
WEIGHTS = ""  # the weights of the natural stage: IMAGENET1K_V1, DEFAULT, random[:SEED] or a state_dict path; empty: those its summary records
ACTIVATIONS = ""  # train on a user's .npz instead: acts (N, 3, Z, C) float (roles In, Pre, Post; zooms ascending), zooms (Z,); optional block (a name), weights (an id)
BLOCKS = []  # blocks to train a crosscoder on (empty: every probed block of ARCH, resnet18's seven)
IMAGES = 0  # use this many of the natural stage's images, evenly spaced (0 = all)
FRACTIONS = [1.0, 0.7071, 0.5]  # crop fractions f of tuning.py's zoom views: zooms f and 1/f (default: 0.5, 0.71, 1, 1.41, 2)
HOLDOUT = 0.2  # seeded share of the images held out: FVE per (role, zoom) is measured on them, never trained on
ENCODER = "zoom1"  # what the encoder reads: zoom1 (the In, Pre, Post blocks at zoom 1; Gorton's asymmetric form) or all (every block)
EXPANSION = 8  # latents per channel of the block (latents = EXPANSION x C)
TOP_K = 8  # active latents per sample (TopK per sample)
AUXK = 64  # AuxK: the dead latents that reconstruct the residual (Gao et al. 2024), at most this many per sample
DEAD_STEPS = 256  # a latent that has not fired for this many steps is dead (AuxK trains it)
LR = 0.001  # Adam learning rate
EPOCHS = 10  # passes over the training images
BATCH = 256  # samples per training step
SEED = 0  # seeds the split, the initialisation and the batch order
PRECISION = "fp32"  # training arithmetic: fp32, bf16 (autocast) or fp64 (as the released scripts)
SI_MIN = 0.75  # Post's blocks are invariant over z when their norm's SI (stats.invariance_index) is at least this
SUM_COS = 0.7  # summation rule: In's block at its preferred zoom and Pre's at its own point the same way (cosine at least this)
CHANNEL_COS = 0.5  # a latent aligns with a single channel when Post's block has at least this cosine with that channel's axis
POST_MIN = 0.1  # type 'other': Post's largest block norm is below this share of the latent's largest block norm
DEVICE = "auto"  # auto, cpu, cuda or cuda:N
DATA_BATCH = "auto"  # images per batch of the data stage: a number, or auto (32 on the CPU; on a GPU, from its free memory)
WORKERS = -1  # DataLoader worker processes decoding JPEGs (-1 = one per CPU core, at most 16)
CHECKPOINT_SECONDS = 30.0  # save the data stage's progress and each block's training at most this often (and on Ctrl-C)
# ---- end of flags (below: fixed constants, not flags)

ROLES = ("in", "pre", "post")
AUXK_ALPHA = 1 / 32  # the AuxK loss's weight (Gao et al. 2024)
DTYPES = {"fp32": torch.float32, "bf16": torch.float32, "fp64": torch.float64}  # parameter dtypes (bf16: autocast over fp32)
SPLIT_STREAM = 25  # the split's seed is [SEED, SPLIT_STREAM], apart from the other streams of SEED


# ----------------------------------------------------------------------------------------------------
# The data: the user's array, or every image once at every zoom, all needed layers per pass; resumable.

def read_activations(path):
    """(acts (N, 3, Z, C) float32, zooms [Z], block name, weights id or None) from a user's .npz; one-line errors."""
    if not os.path.isfile(path):
        die(f"--activations {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            acts, zoom = np.asarray(f["acts"], dtype=np.float32), [float(z) for z in np.asarray(f["zooms"]).ravel()]
            block = str(f["block"]) if "block" in f else "user"
            weights = str(f["weights"]) if "weights" in f else None
    except (OSError, ValueError, KeyError) as e:
        die(f"--activations {path}: not an .npz with arrays acts (N, 3, Z, C) and zooms (Z,) ({type(e).__name__}: {str(e)[:80]})")
    if acts.ndim != 4 or acts.shape[1] != 3 or acts.shape[2] != len(zoom) or len(acts) < 2:
        die(f"--activations {path}: acts must be (N >= 2, 3, Z, C) with Z = len(zooms) = {len(zoom)}, not {acts.shape}")
    if any(b <= a for a, b in zip(zoom, zoom[1:])) or not np.isfinite(acts).all():
        die(f"--activations {path}: zooms must be ascending ({zoom}) and acts finite")
    return acts, zoom, block, weights


def split(n, holdout, seed):
    """(train, held-out) sorted image positions: a seeded random share `holdout` held out (at least one of each)."""
    held = min(n - 1, max(1, round(n * holdout)))
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


def data_stage(net, model, root, paths, ids, layers, fractions, device, batch, workers, results, config, every):
    """The center vectors of `layers` at every zoom of tuning.py's views, for the images `ids` (each decoded once, one
    truncated pass per zoom reading all the layers): float16 memmaps crosscoder/data/<layer>.npy (N, Z, C). Resumable
    as ablate.py's natural stage: partial arrays and a progress file, checked against `config`."""
    summary_path, progress_path = crosscoder_data(results), crosscoder_progress(results)
    old = read_made(summary_path, config, "crosscoder data summary")
    if old is not None:
        return old
    Z, n = len(zooms(fractions)), len(ids)
    partial = {layer: os.path.join(os.path.dirname(progress_path), f".{layer}.npy.partial") for layer in layers}
    state = load_pt(progress_path, "crosscoder data progress") if os.path.isfile(progress_path) else None
    if state is not None and config_mismatch(state["config"], config, list(config)):
        state = None
    resume = state is not None and state["done"] > 0 and all(os.path.isfile(p) for p in partial.values())
    if resume:
        print(f"crosscoder data: resuming after {state['done']} of {n} images")
    else:
        state = {"config": config, "done": 0}
    os.makedirs(os.path.dirname(progress_path), exist_ok=True)
    arrays = {layer: np.lib.format.open_memmap(partial[layer], mode="r+" if resume else "w+", dtype=np.float16,
                                               shape=(n, Z, net.channels(layer))) for layer in layers}

    def checkpoint(s):
        for a in arrays.values():
            a.flush()
        save_pt(s, progress_path)

    def step(state, batch):
        views, index = batch
        first = state["done"]
        views = views.to(device, non_blocking=True)
        for z in range(Z):
            x = normalize(to_float(views[:, z])).contiguous(memory_format=torch.channels_last)
            got = read_center(net, model, x, layers)
            for layer in layers:
                arrays[layer][first:first + len(index), z] = got[layer].cpu().numpy().astype(np.float16)
        return {"config": config, "done": first + len(index)}  # a new state: a kill loses at most the batch in flight

    dataset = ZoomFolder(root, paths, ids, fractions)
    resumable_pass(lambda done: image_loader(dataset, batch, workers, device, start=done), step, state, checkpoint, n, every,
                   f"crosscoder data: {Z} zooms x {len(layers)} layers")
    for layer in layers:
        arrays[layer].flush()
        del arrays[layer]
        os.replace(partial[layer], crosscoder_array(results, layer))
    summary = {"config": config, "ids": np.asarray(ids), "zooms": zooms(fractions), "layers": list(layers)}
    save_pt(summary, summary_path)
    if os.path.isfile(progress_path):
        os.remove(progress_path)
    return summary


def block_activations(results, roles, n):
    """(N, 3, Z, C) float32 of one block from the data stage's arrays of its In, Pre and Post layers."""
    return np.stack([np.asarray(np.load(crosscoder_array(results, layer), mmap_mode="r")[:n], dtype=np.float32) for layer in roles], 1)


# ----------------------------------------------------------------------------------------------------
# The group crosscoder (plain torch): per-block scales, encoder, TopK per sample, decoder, loss, AuxK.

def block_scales(x):
    """(3, Z) standard deviation of every (role, zoom) block, sqrt(E ||x_rz - mean_rz||^2): dividing by it gives every
    block unit variance, so that the loss weighs no block by its scale (a constant block: 1)."""
    x = np.asarray(x, dtype=np.float64)
    var = ((x - x.mean(0)) ** 2).sum(-1).mean(0)
    return np.where(var > 0, np.sqrt(np.where(var > 0, var, 1.0)), 1.0)


def init_params(n_latents, Z, C, cols, mean, seed, dtype):
    """Unit-norm random atoms, the encoder their transpose on the columns it reads (Gao et al.), the decoder bias the
    data's mean (in scaled units)."""
    g = torch.Generator().manual_seed(int(seed))
    w_dec = torch.randn(n_latents, 3 * Z * C, generator=g, dtype=torch.float64)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    p = {"w_dec": w_dec, "w_enc": w_dec[:, torch.as_tensor(cols)].T.clone(), "b_enc": torch.zeros(n_latents, dtype=torch.float64),
         "b_dec": torch.as_tensor(np.asarray(mean, dtype=np.float64).reshape(-1))}
    return {k: v.to(dtype).requires_grad_(True) for k, v in p.items()}


def encode(p, x, cols, k):
    """(codes (B, F): the k largest pre-activations of each sample, ReLU'd, the rest 0; pre-activations (B, F))."""
    pre = encoder_pre(p, x, cols)
    top = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values)), pre


def decode(p, codes):
    return codes @ p["w_dec"] + p["b_dec"]


def block_mse(x, x_hat, Z):
    """(3, Z): each (role, zoom) block's mean squared error summed over its channels. On scaled inputs (unit variance
    per block) this is 1 - FVE of the block."""
    return ((x - x_hat) ** 2).view(len(x), 3, Z, -1).sum(-1).mean(0)


def auxk_loss(p, pre, residual, dead, auxk):
    """Gao et al.'s AuxK: the `auxk` largest pre-activations among dead latents reconstruct the main loss's residual
    (no decoder bias); normalised by the residual's energy. 0 when no latent is dead."""
    n_dead = int(dead.sum())
    if n_dead == 0 or auxk == 0:
        return pre.new_zeros(())
    masked = torch.where(dead[None], pre, torch.full_like(pre, -torch.inf))
    top = masked.topk(min(auxk, n_dead), dim=1)
    codes = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
    residual = residual.detach()
    return ((residual - codes @ p["w_dec"]) ** 2).sum() / (residual ** 2).sum().clamp_min(1e-12)


def train_step(p, opt, x, cols, k, since, dead_steps, auxk, Z, autocast_bf16):
    """The gradients of one step on the batch x (scaled), nothing else changed (apply_step takes the step); returns
    (loss, mean FVE over the blocks, dead share) as floats, and the steps-since-fired per latent after this step."""
    with torch.autocast("cpu" if x.device.type == "cpu" else x.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
        codes, pre = encode(p, x, cols, k)
        x_hat = decode(p, codes)
    x_hat, pre = x_hat.to(x.dtype), pre.to(x.dtype)
    mse = block_mse(x, x_hat, Z)
    dead = since >= dead_steps
    loss = mse.mean() + AUXK_ALPHA * auxk_loss(p, pre, x - x_hat, dead, auxk)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():  # unit-norm atoms: drop the gradient along each atom (apply_step steps, renormalises; Gao et al.)
        w, g = p["w_dec"], p["w_dec"].grad
        g -= (g * w).sum(1, keepdim=True) * w
    fired = (codes > 0).any(0)
    return loss.item(), 1 - mse.mean().item(), dead.float().mean().item(), torch.where(fired, torch.zeros_like(since), since + 1)


def apply_step(p, opt):
    """Adam's step on the gradients train_step left, then unit-norm atoms again (in place)."""
    opt.step()
    with torch.no_grad():
        p["w_dec"] /= p["w_dec"].norm(dim=1, keepdim=True).clamp_min(1e-12)


def train(x, zoom, *, expansion, top_k, auxk, dead_steps, lr, epochs, batch, seed, encoder, precision, device, path, config,
          every, desc):
    """Train one block's crosscoder on x (N, 3, Z, C) float32 in scaled units; checkpoint to `path` every `every`
    seconds and on any exception (but inside a step's update), and resume from it (under the same `config` only). Byte-reproducible on the CPU: the
    batch order of epoch e is a permutation seeded by [seed, e], and the checkpoint holds every tensor of the state.
    Returns (params as float32 CPU tensors, training log)."""
    N, _, Z, C = x.shape
    one = zoom.index(1.0) if encoder == "zoom1" else 0
    cols = torch.as_tensor(encoder_columns(Z, C, one, encoder), device=device)
    dtype = DTYPES[precision]
    xt = torch.as_tensor(x.reshape(N, -1)).to(device=device, dtype=dtype)
    n_latents, k = expansion * C, min(top_k, expansion * C)
    state = read_made(path, config, "crosscoder checkpoint")
    if state is None:
        p = init_params(n_latents, Z, C, encoder_columns(Z, C, one, encoder), x.reshape(N, -1).mean(0), seed, dtype)
        p = {name: v.detach().to(device).requires_grad_(True) for name, v in p.items()}
        opt = torch.optim.Adam(list(p.values()), lr=lr)
        state = {"config": config, "epoch": 0, "batch": 0, "since": torch.zeros(n_latents, dtype=torch.int64), "log": [],
                 "running": []}
    else:
        p = {name: v.to(device).requires_grad_(True) for name, v in state["params"].items()}
        opt = torch.optim.Adam(list(p.values()), lr=lr)
        opt.load_state_dict(state["opt"])
        print(f"{desc}: resuming at epoch {state['epoch'] + 1}, batch {state['batch']}")
    since = state["since"].to(device)
    steps = -(-N // batch)

    def save():
        state.update(params={name: v.detach().cpu() for name, v in p.items()}, opt=opt.state_dict(), since=since.cpu())
        save_pt(state, path)

    bar = tqdm(total=epochs * steps, initial=state["epoch"] * steps + state["batch"], unit="step", desc=desc, dynamic_ncols=True)
    last, whole = time.time(), True  # whole: no step half taken, the state in memory may be saved
    try:
        while state["epoch"] < epochs:
            order = torch.as_tensor(np.random.default_rng([seed, state["epoch"]]).permutation(N), device=device)
            while state["batch"] < steps:
                b = state["batch"]
                loss, fve, dead, after = train_step(p, opt, xt[order[b * batch:(b + 1) * batch]], cols, k, since, dead_steps, auxk,
                                                    Z, precision == "bf16")
                whole = False  # from Adam's step until the step is counted, a stop would save a step half taken
                apply_step(p, opt)
                since = after
                state["running"].append((loss, fve, dead))  # in the state: a resumed epoch logs the same means
                state["batch"] = b + 1  # the step is in: a kill from here on resumes after it
                whole = True
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", fve=f"{fve:.3f}", dead=f"{dead:.2f}", refresh=False)
                if time.time() - last >= every and not (state["batch"] == steps and state["epoch"] + 1 == epochs):
                    save()
                    last = time.time()
            mean = np.mean(state["running"], axis=0)
            entry = log_entry(state["epoch"] + 1, *map(float, mean))  # then one update (a stop cannot land inside it):
            state.update(log=state["log"] + [entry], running=[], epoch=state["epoch"] + 1, batch=0)  # never half an epoch's end
    except BaseException:
        if whole:  # else the last checkpoint stands, before the step that was in flight
            save()
        raise
    finally:
        bar.close()
    return {name: v.detach().float().cpu() for name, v in p.items()}, [log_entry(**e) for e in state["log"]]  # resumed or not: same bytes


def log_entry(epoch, loss, fve, dead):
    """One epoch of the training log, its keys this code's own strings. pickle writes a string once and then refers back
    to it by identity, and keys read back from a checkpoint are other objects than these: a log partly read from a
    checkpoint, kept as read, would save to other bytes than the uninterrupted run's (same values)."""
    return {"epoch": epoch, "loss": loss, "fve": fve, "dead": dead}


@torch.no_grad()
def reconstruct(p, x, cols, k, device, chunk=4096):
    """(x_hat, codes) of x (N, 3 Z C) float32 scaled, in chunks on `device`, as float32 host arrays."""
    x = torch.as_tensor(x, dtype=torch.float32)
    p = {name: v.to(device) for name, v in p.items()}
    cols = torch.as_tensor(cols, device=device)
    hats, codes = [], []
    for i in range(0, len(x), chunk):
        c, _ = encode(p, x[i:i + chunk].to(device), cols, k)
        hats.append(decode(p, c).cpu())
        codes.append(c.cpu())
    return torch.cat(hats).numpy(), torch.cat(codes).numpy()


def fve_blocks(x, x_hat, mean):
    """(3, Z) fraction of variance explained per (role, zoom) block: 1 - sum ||x - x_hat||^2 / sum ||x - mean||^2, with
    `mean` (3, Z, C) the training mean (in activation units); NaN for a constant block."""
    x, x_hat = np.asarray(x, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    err, var = ((x - x_hat) ** 2).sum((0, 3)), ((x - mean) ** 2).sum((0, 3))
    return np.where(var > 0, 1 - err / np.where(var > 0, var, 1.0), np.nan)


# ----------------------------------------------------------------------------------------------------
# Reading the dictionary (pure functions of the decoder, in activation units (F, 3, Z, C)).

def unit(v, axis=-1):
    n = np.linalg.norm(v, axis=axis, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def block_norms(dec):
    """(F, 3, Z) n_f(r, z) = ||d_f(r, z)||."""
    return np.linalg.norm(dec, axis=-1)


def transform_profile(dec):
    """(F, 3, Z, Z): the cosine between a latent's blocks of one role at every pair of zooms (Gorton's transform
    blocks); 0 where a block is 0."""
    u = unit(np.asarray(dec, dtype=np.float64))
    return np.einsum("frzc,frwc->frzw", u, u)


def block_at(dec, zoom_index):
    """(F, C): every latent's block at its own zoom index (F,) of one role's decoder (F, Z, C)."""
    return np.take_along_axis(dec, np.asarray(zoom_index)[:, None, None], axis=1)[:, 0]


def read_dictionary(dec, zoom):
    """Per latent: norms (F, 3, Z), si (F, 3) and preferred zoom (F, 3) of each role's norm curve over z, the transform
    profile, the cosine of In's block at In's preferred zoom with Pre's block at Pre's, and Post's best-aligned single
    channel (at Post's preferred zoom) with that cosine."""
    dec = np.asarray(dec, dtype=np.float64)
    norms = block_norms(dec)
    arg = np.argmax(norms, axis=-1)  # (F, 3): each role's preferred zoom index (the first, if tied)
    in_b, pre_b, post_b = (block_at(dec[:, r], arg[:, r]) for r in range(3))
    cos_in_pre = (unit(in_b) * unit(pre_b)).sum(-1)
    post_dir = unit(post_b)
    best = np.argmax(post_dir, axis=-1)
    return {"norms": norms, "si": invariance_index(norms), "preferred": preferred_zoom(norms, zoom),
            "profile": transform_profile(dec), "cos_in_pre": cos_in_pre,
            "channel": best, "channel_cos": np.take_along_axis(post_dir, best[:, None], 1)[:, 0]}


def summation(si_post, preferred_in, preferred_pre, cos_in_pre, si_min, sum_cos):
    """The paper's claim for a latent: Post invariant over z (SI >= si_min), In's norm peaking at a smaller zoom than
    Pre's, and In's and Pre's blocks at their preferred zooms pointing the same way (cosine >= sum_cos)."""
    with np.errstate(invalid="ignore"):
        return (np.nan_to_num(si_post, nan=-np.inf) >= si_min) & (np.asarray(preferred_in) < np.asarray(preferred_pre)) & \
            (np.asarray(cos_in_pre) >= sum_cos)


def latent_types(r, fires, si_min, sum_cos, post_min):
    """Each latent's type: dead (never fires on the training images), other (Post's largest block below post_min of the
    latent's largest block), summation, invariant (Post invariant, not summation), equivariant (Post not invariant;
    its family is Post's preferred zoom)."""
    si_post = r["si"][:, 2]
    is_sum = summation(si_post, r["preferred"][:, 0], r["preferred"][:, 1], r["cos_in_pre"], si_min, sum_cos)
    post_small = r["norms"][:, 2].max(-1) < post_min * r["norms"].max((1, 2))
    with np.errstate(invalid="ignore"):
        invariant = np.nan_to_num(si_post, nan=-np.inf) >= si_min
    return np.where(~fires, "dead", np.where(post_small, "other", np.where(is_sum, "summation",
                                                                         np.where(invariant, "invariant", "equivariant"))))


def alignment_table(types, channel, channel_cos, passing, channel_min):
    """How many summation latents align (Post's channel cosine >= channel_min) with a criteria-passing channel, with a
    non-passing one, or with none (a scale-invariant feature the channel criteria cannot see). passing: the block's
    passing channels, or None when there are no criteria (then 'aligned' only)."""
    s = np.asarray(types) == "summation"
    aligned = s & (np.asarray(channel_cos) >= channel_min)
    out = {"summation": int(s.sum()), "aligned": int(aligned.sum()), "none": int((s & ~aligned).sum())}
    if passing is not None:
        hit = np.isin(channel, sorted(passing))
        out["passing"], out["non_passing"] = int((aligned & hit).sum()), int((aligned & ~hit).sum())
    return out


def type_counts(types, preferred_post, zoom):
    counts = {t: int((types == t).sum()) for t in ("summation", "invariant", "equivariant", "other", "dead")}
    counts["equivariant_by_zoom"] = {f"{z:.3g}": int(((types == "equivariant") & np.isclose(preferred_post, z)).sum()) for z in zoom}
    return counts


# ----------------------------------------------------------------------------------------------------

def crosscode_block(name, x, zoom, train_at, held_at, passing, opts, results, config, every, device, ids=None):
    """Train and read one block's crosscoder; writes crosscoder/<name>.pt, with each latent's top-9 images (its
    largest codes; `ids`: the natural stage's index of each sample, else positions in x). Returns (the block's summary,
    the latent rows for the CSV)."""
    N, _, Z, C = x.shape
    scale = block_scales(x[train_at])  # (3, Z)
    scaled = x / scale[None, :, :, None]
    mean = x[train_at].mean(0)
    cfg = {**config, "block": name, "n_train": len(train_at), "n_heldout": len(held_at), "zooms": list(zoom), "channels": C}
    path = crosscoder_model(results, name)
    old = read_made(path, cfg, "crosscoder")  # trained before: under the same config it is read again, under another one refused
    if old is not None:
        params, log = old["params"], old["log"]
        print(f"crosscoder {name}: {path} is trained, read again")
    else:
        params, log = train(scaled[train_at], zoom, **opts["train"], device=device, path=crosscoder_checkpoint(results, name),
                            config=cfg, every=every, desc=f"crosscoder {name}")
    one = zoom.index(1.0) if opts["train"]["encoder"] == "zoom1" else 0
    cols = encoder_columns(Z, C, one, opts["train"]["encoder"])
    k = min(opts["train"]["top_k"], params["w_dec"].shape[0])
    _, all_codes = reconstruct(params, scaled.reshape(N, -1), cols, k, device)  # every image, for the top-9
    codes = all_codes[train_at]
    fires = (codes > 0).any(0)
    top9 = np.argsort(-all_codes, axis=0, kind="stable")[:9].T  # (F, 9) positions, ties to the lower one
    top9_code = np.take_along_axis(all_codes.T, top9, 1)
    hat, _ = reconstruct(params, scaled[held_at].reshape(len(held_at), -1), cols, k, device)
    fve = fve_blocks(x[held_at], hat.reshape(len(held_at), 3, Z, C) * scale[None, :, :, None], mean)
    dec = params["w_dec"].numpy().reshape(-1, 3, Z, C).astype(np.float64) * scale[None, :, :, None]  # activation units
    r = read_dictionary(dec, zoom)
    types = latent_types(r, fires, opts["si_min"], opts["sum_cos"], opts["post_min"])
    summary = {"channels": C, "latents": int(len(types)), "n_train": len(train_at), "n_heldout": len(held_at),
               "counts": type_counts(types, r["preferred"][:, 2], zoom),
               "alignment": alignment_table(types, r["channel"], r["channel_cos"], passing, opts["channel_cos"]),
               "fve_heldout": {role: {f"{z:.3g}": float(v) for z, v in zip(zoom, row)} for role, row in zip(ROLES, fve)},
               "fve_heldout_mean": float(np.nanmean(fve)), "final_epoch": log[-1] if log else None}
    save_pt({"config": cfg, "params": params, "scale": torch.as_tensor(scale), "mean": torch.as_tensor(mean), "log": log,
             "zooms": list(zoom), "types": types.tolist(), "fires": fires, "frequency": (codes > 0).mean(0),
             "top9": np.asarray(ids)[top9] if ids is not None else top9, "top9_code": top9_code, "fve_heldout": fve,
             **{k_: v for k_, v in r.items()}}, path)
    if os.path.isfile(crosscoder_checkpoint(results, name)):
        os.remove(crosscoder_checkpoint(results, name))
    return summary, latent_rows(name, types, r, codes, passing)


def latent_rows(block, types, r, codes, passing):
    num = lambda v: "" if not np.isfinite(v) else f"{v:.6g}"  # noqa: E731
    rows = []
    for f, t in enumerate(types):
        rows.append({"block": block, "latent": f, "type": t, "frequency": num(float((codes[:, f] > 0).mean())),
                     **{f"{role}_si": num(r["si"][f, i]) for i, role in enumerate(ROLES)},
                     **{f"{role}_preferred_zoom": f"{r['preferred'][f, i]:.4g}" for i, role in enumerate(ROLES)},
                     "cos_in_pre": num(r["cos_in_pre"][f]), "channel": int(r["channel"][f]), "channel_cos": num(r["channel_cos"][f]),
                     "channel_passes": "" if passing is None else int(int(r["channel"][f]) in passing)})
    return rows


CSV_COLUMNS = (["block", "latent", "type", "frequency"] + [f"{r}_si" for r in ROLES] + [f"{r}_preferred_zoom" for r in ROLES] +
               ["cos_in_pre", "channel", "channel_cos", "channel_passes"])


def main():
    cfg = configure(globals())
    net = arch.net(ARCH)
    for name, value, least in (("expansion", EXPANSION, 1), ("top_k", TOP_K, 1), ("auxk", AUXK, 0), ("dead_steps", DEAD_STEPS, 1),
                               ("epochs", EPOCHS, 1), ("batch", BATCH, 1), ("images", IMAGES, 0)):
        if value < least:
            die(f"--{name} must be at least {least}, not {value}")
    if ENCODER not in ("zoom1", "all"):
        die(f"--encoder must be zoom1 or all, not {ENCODER!r}")
    if PRECISION not in DTYPES:
        die(f"--precision must be one of {', '.join(DTYPES)}, not {PRECISION!r}")
    if not 0 < HOLDOUT < 1 or not LR > 0:
        die("--holdout must be between 0 and 1 (exclusive) and --lr positive")
    if not FRACTIONS or any(not 0 < f <= 1 for f in FRACTIONS) or min(FRACTIONS) == 1:
        die(f"--fractions must be crop fractions in (0, 1] with at least one below 1, such as 1,0.7071,0.5, not {FRACTIONS}")
    for b in BLOCKS:
        if b not in net.blocks:
            die(f"unknown block {b!r}: the probed blocks are {', '.join(net.blocks)}")
    device = pick_device(DEVICE)
    device_name = use_device(device, "fp32")  # true fp32 (no TF32)
    if ACTIVATIONS:  # a bad file stops here, before the results folder is locked
        acts, zoom, block, weights_id = read_activations(ACTIVATIONS)
        if ENCODER == "zoom1" and 1.0 not in zoom:
            die(f"--activations {ACTIVATIONS}: --encoder zoom1 needs the zoom 1 among the zooms {zoom} (or use --encoder all)")
    lock = lock_results(RESULTS, "crosscoder.py")  # noqa: F841 (held until the process ends)
    t0 = time.time()
    train_opts = dict(expansion=EXPANSION, top_k=TOP_K, auxk=AUXK, dead_steps=DEAD_STEPS, lr=LR, epochs=EPOCHS, batch=BATCH, seed=SEED,
                      encoder=ENCODER, precision=PRECISION)
    opts = {"train": train_opts, "si_min": SI_MIN, "sum_cos": SUM_COS, "channel_cos": CHANNEL_COS, "post_min": POST_MIN}
    criteria = None

    # 1. The data: the user's array, or the data stage on the natural stage's images.
    if ACTIVATIONS:
        data = {block: acts}
        source = {"activations": os.path.abspath(ACTIVATIONS), "n": len(acts)}
        if block in net.blocks:
            criteria = read_criteria(RESULTS, net, weights_id)
        print(f"crosscoder: {ACTIVATIONS}: {len(acts)} samples x 3 roles x {len(zoom)} zooms x {acts.shape[3]} channels, block {block}")
    else:
        summary = read_summary(RESULTS, net)
        model, weights_id = load_model(net.name, weights_to_load(WEIGHTS, [summary["config"]]), device)
        check_made(summary["config"], natural_summary(RESULTS), net, weights_id, "ablate.py --stages natural")
        model = model.to(memory_format=torch.channels_last)
        blocks = BLOCKS or list(net.blocks)
        n_all = summary["count"]
        ids = np.unique(np.linspace(0, n_all - 1, IMAGES).round().astype(np.int64)) if IMAGES and IMAGES < n_all else np.arange(n_all)
        layers = [layer for layer in net.layers if any(layer in net.blocks[b] for b in blocks)]
        zoom = zooms(FRACTIONS)
        batch = resolve_batch(DATA_BATCH, device, arch.image_bytes(ARCH), cpu_default=32, cap=256)
        source = {"natural": {k_: summary["config"].get(k_) for k_ in ("data", "limit", "count", "paths")}, "images": IMAGES,
                  "n": len(ids), "fractions": list(FRACTIONS)}
        data_config = {"arch": ARCH, "weights": weights_id, **source, "layers": layers}
        print(f"crosscoder: {len(ids)} of the natural stage's {n_all} images, zooms {', '.join(f'{z:.3g}' for z in zoom)}, "
              f"{len(layers)} layers; weights {weights_id}, {device_name}")
        data_stage(net, model, summary["root"], summary["paths"], ids, layers, FRACTIONS, device, batch, WORKERS, RESULTS,
                   data_config, CHECKPOINT_SECONDS)
        data = {b: net.blocks[b] for b in blocks}
        criteria = read_criteria(RESULTS, net, weights_id)
    if is_random(weights_id or ""):
        print(f"** weights {weights_id}: random weights, not the paper's model: the counts below describe a random network **")

    # 2 and 3. Per block: train, read the dictionary, count.
    config = {"arch": ARCH, "weights": weights_id, "source": source, "seed": SEED, "holdout": HOLDOUT, **train_opts,
              "si_min": SI_MIN, "sum_cos": SUM_COS, "channel_cos": CHANNEL_COS, "post_min": POST_MIN, "auxk_alpha": AUXK_ALPHA}
    out, rows = {}, []
    for name, what in data.items():
        x = what if isinstance(what, np.ndarray) else block_activations(RESULTS, what, source["n"])
        train_at, held_at = split(len(x), HOLDOUT, SEED)
        fz = (criteria or {}).get("blocks", {}).get(name)
        passing = set(fz["passing"]) if fz else None
        out[name], block_rows = crosscode_block(name, x, zoom, train_at, held_at, passing, opts, RESULTS, config, CHECKPOINT_SECONDS,
                                                device, None if ACTIVATIONS else ids)
        rows += block_rows
    run_config = {**config, "device": device_name, "versions": versions()}
    save_json({"config": run_config, "blocks": out}, crosscoder_file(RESULTS))
    write_csv(rows, CSV_COLUMNS, crosscoder_file(RESULTS, "csv"))
    report(out, weights_id, time.time() - t0)
    return cfg


def report(blocks, weights_id, seconds):
    random = is_random(weights_id or "")
    print(f"\nGroup crosscoders, weights {weights_id}" + (" (RANDOM WEIGHTS: these counts describe a random network, not the paper's "
                                                         "model)" if random else ""))
    print("  latent types: summation (the paper's claim), invariant (Post only), equivariant (Post peaks), other, dead; the summation "
          "latents by their best channel: criteria-passing / non-passing / none (superposed); FVE on the held-out images")
    print(f"  {'block':6s} {'latents':>7s} {'summ':>5s} {'inv':>5s} {'equi':>5s} {'other':>5s} {'dead':>5s} | {'passing':>7s} "
          f"{'non-pass':>8s} {'none':>5s} | FVE mean, In/Pre/Post at zoom 1")
    for b, s in blocks.items():
        c, a, f = s["counts"], s["alignment"], s["fve_heldout"]
        at1 = "/".join(f"{f[r].get('1', float('nan')):.2f}" for r in ROLES)
        print(f"  {b:6s} {s['latents']:7d} {c['summation']:5d} {c['invariant']:5d} {c['equivariant']:5d} {c['other']:5d} {c['dead']:5d} | "
              f"{a.get('passing', 'n/a')!s:>7s} {a.get('non_passing', 'n/a')!s:>8s} {a['none']:5d} | {s['fve_heldout_mean']:.3f}, {at1}")
    if any("passing" not in s["alignment"] for s in blocks.values()):
        print("  n/a: no criteria.json for the block (python criteria.py); 'aligned' in crosscoder.json counts the summation latents "
              "with a channel")
    print(f"time: {seconds:.1f} s")


if __name__ == "__main__":
    main_guard(main, "the data stage and each block's training are saved (every CHECKPOINT_SECONDS and now); run the same command "
               "again to resume")
