"""Everything a results folder holds: where each file lives (one function per entry of the layout), atomic writes,
the config checks, the results lock, the shared readers, and the commands a message suggests.

The layout of a results folder (RESULTS, by default results/):
    fzs/<layer>/<objective>.pt       fzs.py: the FZs of one layer (objective: center or channel); .parts/ while running
    fzs/<Post layer>/latent.pt       fzs.py --objectives latent: the FZs of a block's crosscoder latents (units: latents)
    criteria.json, criteria.csv      criteria.py: Eq. 1, Eq. 2 and the mix ratio per block and channel
    stability.json, stability.csv    criteria.py --runs: the passing sets over several FZ runs
    natural/<layer>.npy, summary.pt  ablate.py --stages natural: activations, top-9 images, post-ReLU means
    ablation/<block>[.<variant>].json, ablation/<block>/<condition>_s<crop>.json, ablation/split.json
                                     ablate.py --stages sweep: the sweep's results and its finished cells
    tuning/values.pt, tuning/curves.pt, tuning.json, tuning.csv
                                     tuning.py: natural-image zoom tuning
    crosscoder/data/<layer>.npy, crosscoder/data/summary.pt
                                     crosscoder.py: center vectors at every zoom (float16, N x Z x C)
    crosscoder/<block>.pt, crosscoder.json, crosscoder.csv
                                     crosscoder.py: the group crosscoders, per block and per latent
    figures/<name>.png, .pdf         plot_*.py
    atlas/index.html, block_<b>.html atlas.py
    .<script>.lock                   held by a running script

Imports cli and arch only.
"""

import errno
import hashlib
import json
import os
import platform
import re
import socket
import sys
import tempfile

import numpy as np
import torch
import torchvision

import arch
from cli import die

# ----------------------------------------------------------------------------------------------------
# The layout: one function per entry.

ABLATION_VARIANTS = {"paper": "the paper's protocol", "heldout": "held-out screening", "unscreened": "unscreened control"}


def fzs_dir(results):
    return os.path.join(results, "fzs")


def fz_file(results, layer, objective):
    return os.path.join(results, "fzs", layer, f"{objective}.pt")


def fz_parts(results, layer, objective):
    """The folder of an unfinished FZ file's parts (fzs.py --save_every, and torchrun ranks)."""
    return os.path.join(results, "fzs", layer, f"{objective}.parts")


def criteria_file(results):
    return os.path.join(results, "criteria.json")


def criteria_csv(results):
    return os.path.join(results, "criteria.csv")


def stability_file(results, ext="json"):
    return os.path.join(results, f"stability.{ext}")


def natural_dir(results):
    return os.path.join(results, "natural")


def natural_summary(results):
    return os.path.join(results, "natural", "summary.pt")


def natural_array(results, layer):
    return os.path.join(results, "natural", f"{layer}.npy")


def ablation_dir(results):
    return os.path.join(results, "ablation")


def ablation_file(results, block, variant="paper"):
    """Fig. 2's variants (ablate.py writes them, plot_ratios.py draws them): <block>.json for the paper's protocol,
    <block>.<variant>.json for the others (ABLATION_VARIANTS)."""
    return os.path.join(results, "ablation", f"{block}.json" if variant == "paper" else f"{block}.{variant}.json")


def ablation_cell(results, block, condition, crop):
    return os.path.join(results, "ablation", block, f"{condition}_s{crop}.json")


def ablation_split(results):
    return os.path.join(results, "ablation", "split.json")


def tuning_dir(results):
    return os.path.join(results, "tuning")


def tuning_values(results):
    """tuning.py's measured values, saved while it runs (resume)."""
    return os.path.join(results, "tuning", "values.pt")


def tuning_curves(results):
    return os.path.join(results, "tuning", "curves.pt")


def tuning_file(results, ext="json"):
    return os.path.join(results, f"tuning.{ext}")


def latency_dir(results):
    return os.path.join(results, "latency")


def latency_values(results):
    """latency.py's measured values, saved while it runs (resume)."""
    return os.path.join(results, "latency", "values.pt")


def latency_curves(results):
    return os.path.join(results, "latency", "curves.pt")


def latency_file(results, ext="json"):
    return os.path.join(results, f"latency.{ext}")


def crosscoder_dir(results):
    return os.path.join(results, "crosscoder")


def crosscoder_array(results, layer):
    """crosscoder.py's data stage: float16 (N, Z, C) center vectors of one layer at every zoom."""
    return os.path.join(results, "crosscoder", "data", f"{layer}.npy")


def crosscoder_data(results):
    """The data stage's summary (config, image ids, zooms, held-out split); written last, when every array is whole."""
    return os.path.join(results, "crosscoder", "data", "summary.pt")


def crosscoder_progress(results):
    """The data stage's progress while it runs (resume); its arrays are .<layer>.npy.partial next to it."""
    return os.path.join(results, "crosscoder", "data", ".progress.pt")


def crosscoder_model(results, block):
    """One block's crosscoder: weights, config, training log and the reading of its dictionary."""
    return os.path.join(results, "crosscoder", f"{block}.pt")


def crosscoder_checkpoint(results, block):
    """One block's training checkpoint while it trains (resume after kill -9)."""
    return os.path.join(results, "crosscoder", f".{block}.train.pt")


def crosscoder_file(results, ext="json"):
    return os.path.join(results, f"crosscoder.{ext}")


def figures_dir(results):
    return os.path.join(results, "figures")


def figure(results, name):
    """The path (no extension) of a figure: save_figure adds .png and .pdf."""
    return os.path.join(results, "figures", name)


def atlas_dir(results):
    return os.path.join(results, "atlas")


def lock_file(results, script):
    return os.path.join(results, f".{script}.lock")


def fz_png(results, layer, objective, channel):
    """The PNG of one unit's FZ that fzs.py writes next to its FZ file (--png true): fzs/<layer>/<objective>/NNNN.png."""
    return os.path.join(results, "fzs", layer, objective, f"{int(channel):04d}.png")


# ----------------------------------------------------------------------------------------------------
# Weights ids. Random weights only when asked for ('random' or 'random:SEED'); never as a fallback.

def make_weights_id(arch_name, name):
    """The id a result file records for its weights: the architecture comes first unless it is resnet18
    ('IMAGENET1K_V1', 'random:0', 'resnet50:IMAGENET1K_V2', 'resnet50:file:ckpt.pth:sha256=...'), so that every
    check of the weights also refuses another architecture."""
    return name if arch_name == "resnet18" else f"{arch_name}:{name}"


def split_weights_id(weights_id):
    """'resnet50:IMAGENET1K_V2' -> ('resnet50', 'IMAGENET1K_V2'); 'random:3' -> ('resnet18', 'random:3')."""
    head_, sep, rest = str(weights_id).partition(":")
    return (head_, rest) if sep and head_ in arch.ARCHS else ("resnet18", str(weights_id))


def is_random(weights_id):
    return split_weights_id(weights_id)[1].startswith("random")


def as_weights_id(made):
    """A recorded weights value as the id it means: 'random' is 'random:0', as stream.load_model reads it."""
    return "random:0" if made == "random" else made


def same_weights(made, weights_id):
    """Whether a file that recorded the weights `made` (as_weights_id) was made with `weights_id`; a file that
    recorded none is taken as made with them."""
    return made is None or as_weights_id(made) == weights_id


def recorded_weights(config):
    """The weights id a result file's config records ('weights_id' where it has both), or None."""
    return config.get("weights_id", config.get("weights"))


# ----------------------------------------------------------------------------------------------------
# The FZ config: FZ files used together (the In and Pre of a block, the layers of a figure) agree on
# FZ_MATCH_KEYS; an FZ file resumes only under the same FZ_KEYS.

FZ_MATCH_KEYS = ("weights", "seed", "steps", "lr", "amp", "pre_as_released", "batch", "post_as_released")
# what a config that lacks a key was made with: files from before --arch, --post_as_released and --crop_as_released
# existed are resnet18's, with the paper's post-ReLU In and Post and the paper's crops
CONFIG_DEFAULTS = {"arch": "resnet18", "post_as_released": False, "crop_as_released": False}
FZ_KEYS = ("arch", "layer", "objective") + FZ_MATCH_KEYS + ("size", "scales", "angles", "jitter", "fold_bn", "device")
LATENT_KEYS = ("crosscoder",)  # a latent FZ file also resumes only from the same crosscoder file (crosscoder_id)


def crosscoder_id(results, block):
    """What a latent FZ file (fzs.py --objectives latent) records of the crosscoder it was made from: its block, file
    name and sha256. FZs of one crosscoder file are never mixed with another's."""
    path = crosscoder_model(results, block)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {"block": block, "file": os.path.basename(path), "sha256": digest}


# ----------------------------------------------------------------------------------------------------
# The commands a message suggests, built in one place so that they always name the architecture and weights.

def weights_flags(weights, arch_name, always=False):
    """' --arch NAME --weights W' naming the architecture and these weights (an id or a flag value) on a command
    line: a checkpoint as a placeholder path; resnet18 and IMAGENET1K_V1 (unless `always`) left out. Weights no input
    recorded (None, '' or weights_of's 'unknown') are not a flag value: the flag is left out (the default weights)."""
    weights = split_weights_id(weights)[1] if weights not in (None, "", "unknown") else "IMAGENET1K_V1"
    if weights.startswith("file:"):  # a weights id, not the path: name the flag
        weights = "/path/to/the/checkpoint"
    flags = f" --arch {arch_name}" if arch_name != "resnet18" else ""
    return flags + (f" --weights {weights}" if always or weights != "IMAGENET1K_V1" else "")


def command(script, flags, arch_name, weights, results="results", always_weights=False):
    """'python SCRIPT FLAGS --arch A --weights W --results R', with the architecture, weights and results folder
    left out where they are the defaults."""
    cmd = f"python {script}" + (f" {flags}" if flags else "") + weights_flags(weights, arch_name, always_weights)
    return cmd + (f" --results {results}" if results != "results" else "")


def fzs_command(layers, arch_name, weights, results="results", like=None, channels=None, objective="center"):
    """The fzs.py command that makes the FZs of these layers (and channels) with these weights (an id or a flag value);
    `like`: the config of FZs the new ones must match (their seed, steps, lr, amp, pre_as_released, batch and, where
    true, post_as_released are copied)."""
    flags = f"--layers {','.join(layers)}"
    if objective != "center":
        flags += f" --objectives {objective}"
    if channels is not None:
        flags += f" --channels {arch.channel_ranges(channels)}"
    for key in FZ_MATCH_KEYS[1:]:
        if like and key in like and not (key in CONFIG_DEFAULTS and like[key] == CONFIG_DEFAULTS[key]):  # a default: left out
            flags += f" --{key} {like[key]}"
    return command("fzs.py", flags, arch_name, weights, results)


def natural_command(arch_name, weights, results="results"):
    """The ablate.py command that makes the natural-image stage (natural/), with a placeholder for the data."""
    return command("ablate.py", "--stages natural --data /path/to/imagenet/val", arch_name, weights, results,
                   always_weights=True)


_HELD_LOCKS = []  # the open results-lock files of this process


def release_inherited_locks(_worker_id=None):
    """worker_init_fn of every DataLoader: point the results locks' descriptors that a forked worker inherited at
    /dev/null. A flock belongs to the open file, so a worker holding it would keep the lock after its parent's kill -9
    until the worker noticed (seconds), and a rerun at once would be told that a dead process is alive."""
    held = [f for f in _HELD_LOCKS if not f.closed]  # a closed one's number may now be another file's
    if held:
        null = os.open(os.devnull, os.O_RDONLY)
        for f in held:
            os.dup2(null, f.fileno())
        os.close(null)


def lock_results(results, script):
    """Hold an exclusive lock on the results folder for this script until the process ends. A second process of the
    same script on the same folder stops at once with one line naming the first. The lock is the kernel's (flock), so
    it goes with the process, after kill -9 too: no stale lock is ever left. Returns the open lock file (keep it)."""
    import fcntl
    import time
    os.makedirs(results, exist_ok=True)
    path = lock_file(results, script)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        die(f"{results} is in use by another {script} ({holder}); wait for it to finish, or use another --results")
    _HELD_LOCKS.append(f)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])[:300]}")
    f.flush()
    return f


# ----------------------------------------------------------------------------------------------------
# Result files: written atomically (temp file in the same folder, then rename), each carrying its config.

def versions():
    import importlib.metadata as md

    def v(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torch-lucent": v("torch-lucent"), "numpy": np.__version__}


def atomic_write(path, write):
    """Call write(tmp_path), then rename onto path: readers never see a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are ordinary files
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        die(f"no space left in {folder} ({os.strerror(e.errno)}): {os.path.basename(path)} was not written; every file "
            f"finished before it is whole (results are written atomically). Free some space, then run the same command "
            f"again to resume")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_pt(obj, path):
    """torch.save, atomically, through a file object: saved to a path, torch names the zip records after the (random)
    temporary file, so equal content would give different bytes; this way it gives equal bytes."""
    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)
    atomic_write(path, write)


def write_csv(rows, columns, path):
    """A list of dicts as a CSV file with these columns, atomically."""
    import csv

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
    atomic_write(path, write)


def save_json(obj, path):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, default=str)
            f.write("\n")
    atomic_write(path, write)


def save_npy(array, path):
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)
    atomic_write(path, write)


def load_pt(path, what="result file"):
    if not os.path.isfile(path):
        die(f"missing {what} {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        die(f"cannot read {what} {path} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")


def load_json(path, what="result file"):
    """A JSON result file; a missing or unreadable one ends the script with one line."""
    if not os.path.isfile(path):
        die(f"missing {what} {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        die(f"cannot read {what} {path} ({type(e).__name__})")


def config_mismatch(a, b, keys):
    """The first key on which two configs differ, as 'key: a vs b', or None."""
    defaults = CONFIG_DEFAULTS
    for k in keys:
        if a.get(k, defaults.get(k)) != b.get(k, defaults.get(k)):
            return f"{k}: {a.get(k, defaults.get(k))!r} vs {b.get(k, defaults.get(k))!r}"
    return None


def read_made(path, config, what):
    """The result file (or saved state of an interrupted pass) at `path`, made under `config`; None when there is none.
    One made under another config (any key of `config` differs) is refused, naming the key."""
    if not os.path.isfile(path):
        return None
    old = load_pt(path, what)
    why = config_mismatch(old["config"], config, list(config))
    if why:
        die(f"{path} was made under another config ({why}); use another --results or delete it")
    return old


# ----------------------------------------------------------------------------------------------------
# The shared readers: a result file, checked against this run's architecture and weights.

def released_problem(config, post_as_released):
    """Why a result file (its config) cannot be read by a run with this --post_as_released (In and Post before the
    final ReLU, as the released scripts, or after it, as the paper), or None. A config without the key is the paper's."""
    made = bool(config.get("post_as_released", CONFIG_DEFAULTS["post_as_released"]))
    if made == bool(post_as_released):
        return None
    return (f"made with --post_as_released {str(made).lower()}, this run is --post_as_released {str(bool(post_as_released)).lower()}"
            f" (In and Post {'before' if made else 'after'} the ReLU): pass --post_as_released {str(made).lower()}, or use "
            f"another --results folder (the two are never mixed)")


def check_released(config, path, post_as_released):
    """Die when the result file at `path` was made with the other --post_as_released (released_problem)."""
    why = released_problem(config, post_as_released)
    if why:
        die(f"{path} was {why}")


def check_made(config, path, net, weights_id, remake, post_as_released=None):
    """Die when the result file at `path` (its config) was made with another architecture than `net`'s, with other
    weights than `weights_id` (None: any), or with the other --post_as_released (None: either); `remake` names the
    command that makes it again."""
    net.check(config, path)
    made = recorded_weights(config)
    if weights_id is not None and not same_weights(made, weights_id):
        die(f"{path} was made with weights {made!r}, this run uses {weights_id!r}: pass the same --weights, or run "
            f"python {remake} again")
    if post_as_released is not None:
        check_released(config, path, post_as_released)


def read_criteria(results, net, weights_id=None, required="", post_as_released=None):
    """criteria.json of a results folder, checked (check_made); None when there is none, unless `required` says why
    this run needs it."""
    path = criteria_file(results)
    if not os.path.isfile(path):
        if required:
            die(f"missing {path}: run {command('criteria.py', '', net.name, None, results)} first ({required})")
        return None
    crit = load_json(path, "criteria file")
    check_made(crit.get("config", {}), path, net, weights_id, "criteria.py", post_as_released)
    return crit


def read_summary(results, net, weights_id=None, required=True):
    """natural/summary.pt (ablate.py's natural stage), checked (check_made); None when there is none and not
    `required`."""
    path = natural_summary(results)
    if not os.path.isfile(path):
        if not required:
            return None
        die(f"missing {path}: make it with {natural_command(net.name, weights_id, results)}")
    summary = load_pt(path, "natural-image summary")
    check_made(summary["config"], path, net, weights_id, "ablate.py --stages natural")
    return summary


def read_stage(results, net, pt_path, json_path, script):
    """A stage's two outputs (`script`'s .pt file of arrays and .json summary), for its plot script: (pt, json), each
    checked against `net`; a missing one names the command that makes it, and two from different runs are refused."""
    for path in (pt_path, json_path):
        if not os.path.isfile(path):
            die(f"missing {path}: run {command(script, '', net.name, None, results)} first")
    arrays = load_pt(pt_path, f"{script} arrays")
    net.check(arrays["config"], pt_path)
    summary = load_json(json_path, f"{script} summary")
    if summary["config"].get("weights") != arrays["config"].get("weights"):
        die(f"{json_path} and {pt_path} come from different runs: run python {script} again")
    return arrays, summary


def check_fz_folder(results, net):
    """Die when results/fzs holds the FZs of a layer `net` does not have, made with another architecture (a ResNet's
    layers and CORnet-S's never share a name, so a per-file check would not see them), naming the file. Only the
    configs of those files are read (memory-mapped)."""
    folder = fzs_dir(results)
    for layer in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        for objective in ("center", "channel") if layer not in net.place else ():
            path = fz_file(results, layer, objective)
            if os.path.isfile(path):
                try:
                    config = torch.load(path, map_location="cpu", weights_only=False, mmap=True)["config"]
                except Exception:
                    config = load_pt(path, "FZ file")["config"]  # its one-line error, if any
                net.check(config, path)


def read_fz(results, layer, objective, required=True):
    """An FZ file (fzs.py) as saved; None when there is none and not `required`."""
    path = fz_file(results, layer, objective)
    if not required and not os.path.isfile(path):
        return None
    return load_pt(path, "FZ file")


def weights_of(*configs):
    """The one weights id recorded ('weights' or 'weights_id', at any depth) in the configs of a figure's inputs; dies
    when they disagree, 'unknown' when none records one. 'random' is read as 'random:0', as load_model does."""
    found = set()

    def walk(d):
        if isinstance(d, dict):
            for k, v in d.items():
                if k in ("weights", "weights_id") and isinstance(v, str):
                    found.add(as_weights_id(v))
                else:
                    walk(v)
    for config in configs:
        walk(config)
    if len(found) > 1:
        die(f"the inputs were made with different weights ({', '.join(sorted(found))}): remake them with one --weights")
    return found.pop() if found else "unknown"


def weights_flag(weights_id):
    """The --weights value that loads the weights an input records: the id without its architecture. A checkpoint
    ('file:NAME:sha256=...') cannot be loaded from its id, so the user is asked for the file."""
    name = split_weights_id(weights_id)[1]
    if name.startswith("file:"):
        die(f"the inputs were made with the checkpoint {name.split(':')[1]} (weights {weights_id}): pass it with "
            f"--weights /path/to/{name.split(':')[1]}")
    return name


def weights_name(weights):
    """The weights a --weights value names, as an id without its architecture, known without loading anything
    ('random' -> 'random:0', 'IMAGENET1K_V1'); None where only loading tells (a checkpoint path, DEFAULT)."""
    w = str(weights)
    if re.fullmatch(r"random(:\d+)?", w):
        return f"random:{int(w.split(':')[1]) if ':' in w else 0}"
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", w) and w != "DEFAULT" and not os.path.exists(w):
        return w
    return None


def check_named_weights(weights, made_ids, arch_name=None):
    """Die, before any model is loaded (or downloaded), when --weights names weights that none of the inputs' ids
    was made with; a checkpoint path or DEFAULT is checked once loaded. Inputs of another architecture than
    `arch_name` are left to the architecture check, whose message names the --arch to pass."""
    if arch_name and any(split_weights_id(m)[0] != arch_name for m in made_ids):
        return
    name = weights_name(weights)
    if made_ids and name is not None and name not in {split_weights_id(m)[1] for m in made_ids}:
        die(f"the inputs were made with weights {', '.join(sorted(made_ids))}, not --weights {weights}: leave --weights "
            f"out to use theirs")


def weights_to_load(weights, configs, default="IMAGENET1K_V1"):
    """The --weights value a script loads: `weights` when the user gave one (it must name the weights the inputs
    record: check_named_weights); else the one id its inputs' configs record (weights_of: inputs that disagree are
    refused); else `default` (no input records any)."""
    made = weights_of(*configs)
    if weights:
        check_named_weights(weights, [] if made == "unknown" else [made])
        return weights
    return default if made == "unknown" else weights_flag(made)
