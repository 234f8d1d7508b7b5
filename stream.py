"""What the scripts share: the ResNet (resnet18 unless --arch) and its residual-stream layers (METHOD.md section 1), the
center-neuron reader, the command-line constants, and atomic result files that carry their config.

Nothing here is specific to one stage of the pipeline; each script reads top to bottom on its own.
"""

import ast
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
import torch.nn.functional as F
import torchvision

import arch

MEAN = (0.485, 0.456, 0.406)  # ImageNet normalisation, METHOD.md section 1
STD = (0.229, 0.224, 0.225)
EQ2_LOW, EQ2_HIGH = 2 / 3, 3 / 2  # Eq. 2's bounds on the mix ratio (METHOD.md section 3), strict at both ends


def mix_regions(m):
    """The predecessor's spectrum with Eq. 2's bounds and strictness, elementwise: (overwrite m <= 2/3,
    mix 2/3 < m < 3/2 (Eq. 2 holds), skip m >= 3/2) as three boolean arrays."""
    m = np.asarray(m, dtype=np.float64)
    mix = (m > EQ2_LOW) & (m < EQ2_HIGH)
    return m <= EQ2_LOW, mix, m >= EQ2_HIGH


# Fig. 2's variants (ablate.py writes them, plot_ratios.py draws them): the paper's protocol, and two that show its
# selection bias. Each is a file <results>/ablation/<block>.json (paper) or <block>.<variant>.json.
ABLATION_VARIANTS = {"paper": "the paper's protocol", "heldout": "held-out screening", "unscreened": "unscreened control"}


def ablation_path(results, block, variant="paper"):
    return os.path.join(results, "ablation", f"{block}.json" if variant == "paper" else f"{block}.{variant}.json")

# ----------------------------------------------------------------------------------------------------
# The architecture and its probed blocks (METHOD.md section 1; arch.py derives them from the model). BLOCKS,
# LAYERS, RESIDUAL_BLOCKS and WIDTHS are filled in place by use_arch(), so that `from stream import BLOCKS`
# follows a script's --arch. ResNet18's table (the paper's):
#   1.1: layer1.0, layer1.1.bn2, layer1.1        2.0: layer2.0.downsample.1, layer2.0.bn2, layer2.0
#   2.1: layer2.0, layer2.1.bn2, layer2.1        3.0, 3.1, 4.0, 4.1 likewise; 18 layers, 4,672 units.
BLOCKS = {}  # block 'L.B': (In, Pre, Post) torchvision module names
LAYERS = []  # the distinct layers of BLOCKS, forward order
RESIDUAL_BLOCKS = []  # every residual block ('layer1.0', ...), forward order
WIDTHS = {}  # layer or residual block: its channels
_ARCH = ["resnet18"]


def use_arch(name):
    """Point BLOCKS, LAYERS, RESIDUAL_BLOCKS and WIDTHS at the torchvision ResNet `name` (in place)."""
    if name not in arch.ARCHS:
        die(f"unknown architecture {name!r}; the torchvision ResNets are: {', '.join(arch.ARCHS)}")
    table, residual, widths = arch.tables(name)
    BLOCKS.clear()
    BLOCKS.update(table)
    LAYERS[:] = arch.layers_of(table)
    RESIDUAL_BLOCKS[:] = residual
    WIDTHS.clear()
    WIDTHS.update(widths)
    _ARCH[0] = name


def current_arch():
    return _ARCH[0]


def check_arch(config, path):
    """Die when the result file at `path` (its config) was made with another architecture than this run's."""
    made = config.get("arch", "resnet18")
    if made != current_arch():
        die(f"{path} was made with --arch {made}, this run is --arch {current_arch()}: pass --arch {made}, "
            f"or use another --results folder for {current_arch()} (architectures are never mixed)")


def die(message):
    """Stop the script with a one-line error and exit status 1 (no traceback)."""
    raise SystemExit(f"error: {message}")


def where(layer):
    """(index of its residual block in RESIDUAL_BLOCKS, part): part is 'in' (the skip path's summand), 'pre' (the
    block's last BatchNorm output, before the sum) or 'post' (the block output). Only the probed layers are known."""
    m = re.fullmatch(r"(layer[1-4]\.\d+)(\.bn[23]|\.downsample\.1)?", layer)
    if m is None or layer not in LAYERS:
        die(f"unknown layer {layer!r} for {current_arch()}; the layers are: {', '.join(LAYERS)}")
    part = {None: "post", ".downsample.1": "in"}.get(m.group(2), "pre")
    return RESIDUAL_BLOCKS.index(m.group(1)), part


def block_of(layer):
    """The residual block a layer belongs to: 'layer2.1.bn2' -> 'layer2.1'."""
    return RESIDUAL_BLOCKS[where(layer)[0]]


def n_channels(layer):
    if layer not in WIDTHS:
        die(f"unknown layer {layer!r} for {current_arch()}; the layers are: {', '.join(LAYERS)}")
    return WIDTHS[layer]


use_arch("resnet18")  # the default; each script calls use_arch(ARCH) after reading its flags


def parse_block_channels(spec, flag="--channels"):
    """'2.1:3,17,40:48;3.1:0,9' -> {block: sorted channels of its Post} (blocks separated by ';')."""
    out = {}
    for item in [s.strip() for s in spec.split(";") if s.strip()]:
        block, sep, chans = item.partition(":")
        if not sep or block.strip() not in BLOCKS:
            die(f"{flag}: cannot read {item!r}; use block:channels;... e.g. 2.1:3,17,40:48;3.1:0,9 (blocks: {', '.join(BLOCKS)})")
        out[block.strip()] = parse_channels(chans, n_channels(BLOCKS[block.strip()][2]), f"block {block.strip()}")
    return out


def parse_layers(spec):
    """'all', or comma-separated layer names and block names ('2.1' = its In, Pre and Post layers)."""
    names = []
    for item in [s.strip() for s in (spec if isinstance(spec, (list, tuple)) else str(spec).split(",")) if s.strip()]:
        if item == "all":
            names += LAYERS
        elif item in BLOCKS:
            names += BLOCKS[item]
        else:
            where(item)  # dies on a bad name
            names.append(item)
    if not names:
        die("no layers given")
    return sorted(set(names), key=lambda n: (where(n)[0], ["in", "pre", "post"].index(where(n)[1])))


def parse_channels(spec, n, what="layer"):
    """Python-style channel selection for a layer of n channels: ':' (all), '0:16', '5', '0:8,100,200:256:4'."""
    out = []
    for item in [s.strip() for s in str(spec).split(",") if s.strip()]:
        try:
            if ":" in item:
                parts = [int(p) if p.strip() else None for p in item.split(":")]
                if len(parts) > 3:
                    raise ValueError
                if len(parts) == 3 and parts[2] is not None and parts[2] < 1:
                    die(f"channel range {item!r}: the step must be at least 1")
                sl = slice(*parts)
                start, stop, step = sl.start or 0, n if sl.stop is None else sl.stop, sl.step or 1
                if start < 0 or stop > n or start >= stop:
                    die(f"channel range {item!r} is out of range for {what} ({n} channels: 0..{n - 1})")
                out += list(range(start, stop, step))
            else:
                c = int(item)
                if not 0 <= c < n:
                    die(f"channel {c} is out of range for {what} ({n} channels: 0..{n - 1})")
                out.append(c)
        except ValueError:
            die(f"cannot read channels {item!r}: use Python-style ranges such as 0:16 or 3,7,10:20")
    return sorted(set(out))


def channel_ranges(channels):
    """Channels in the --channels syntax, runs of three or more as ranges: [0, 1, 2, 3, 7, 9, 10] -> '0:4,7,9,10'."""
    out, channels = [], sorted(set(int(c) for c in channels))
    i = 0
    while i < len(channels):
        j = i
        while j + 1 < len(channels) and channels[j + 1] == channels[j] + 1:
            j += 1
        out.append(str(channels[i]) if j - i < 2 else f"{channels[i]}:{channels[j] + 1}")
        out += [str(channels[k]) for k in range(i + 1, j + 1)] if 0 < j - i < 2 else []
        i = j + 1
    return ",".join(out)


FZ_MATCH_KEYS = ("weights", "seed", "steps", "lr", "amp", "pre_as_released", "batch")  # FZs used together agree on these


def fzs_command(layers, results="results", weights="IMAGENET1K_V1", like=None, channels=None, objective="center"):
    """The fzs.py command that makes the FZs of these layers (and channels), for the current architecture and these
    weights (an id or a flag value); `like`: the config of FZs the new ones
    must match (their seed, steps, lr, amp, pre_as_released and batch are copied)."""
    cmd = f"python fzs.py --layers {','.join(layers)}"
    if objective != "center":
        cmd += f" --objectives {objective}"
    if channels is not None:
        cmd += f" --channels {channel_ranges(channels)}"
    for key in FZ_MATCH_KEYS[1:]:
        if like and key in like:
            cmd += f" --{key} {like[key]}"
    weights = split_weights_id(weights)[1]
    if current_arch() != "resnet18":
        cmd += f" --arch {current_arch()}"
    if str(weights).startswith("file:"):  # a weights id, not the path: name the flag
        weights = "/path/to/the/checkpoint"
    if weights != "IMAGENET1K_V1":
        cmd += f" --weights {weights}"
    if results != "results":
        cmd += f" --results {results}"
    return cmd


# ----------------------------------------------------------------------------------------------------
# The model. Random weights only when asked for ('random' or 'random:SEED'); never as a fallback.

def weights_id(arch_name, name):
    """The id a result file records for its weights: the architecture comes first unless it is resnet18
    ('IMAGENET1K_V1', 'random:0', 'resnet50:IMAGENET1K_V2', 'resnet50:file:ckpt.pth:sha256=...'), so that every
    check of the weights also refuses another architecture."""
    return name if arch_name == "resnet18" else f"{arch_name}:{name}"


def split_weights_id(wid):
    """'resnet50:IMAGENET1K_V2' -> ('resnet50', 'IMAGENET1K_V2'); 'random:3' -> ('resnet18', 'random:3')."""
    head_, sep, rest = str(wid).partition(":")
    return (head_, rest) if sep and head_ in arch.ARCHS else ("resnet18", str(wid))


def is_random(wid):
    return split_weights_id(wid)[1].startswith("random")


def load_model(weights="IMAGENET1K_V1", device="cpu"):
    """The torchvision model of the current architecture (use_arch) in eval mode without weight gradients, and
    the id of its weights (weights_id).

    weights: a weights enum member of that architecture ('IMAGENET1K_V1', 'IMAGENET1K_V2' for resnet50, ...) or
    'DEFAULT' (torchvision's cache, downloading if online), a path to a state_dict checkpoint, or 'random' /
    'random:SEED' (He-initialised, for tests and smoke runs)."""
    name, weights = current_arch(), str(weights)
    if weights.startswith("random"):
        try:
            seed = int(weights.split(":")[1]) if ":" in weights else 0
        except ValueError:
            die(f"--weights {weights!r}: use random or random:SEED with an integer SEED")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = arch.build(name)
        wid = f"random:{seed}"
    elif re.fullmatch(r"[A-Z][A-Z0-9_]*", weights) and not os.path.exists(weights):
        enum = torchvision.models.get_model_weights(name)
        if weights not in enum.__members__:
            die(f"--weights {weights!r}: {name} has the torchvision weights {', '.join(enum.__members__)}; "
                f"or pass a checkpoint path, or random[:SEED]")
        w = enum[weights]
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(w.url))
        timeout = socket.getdefaulttimeout()
        try:
            socket.setdefaulttimeout(60)
            model = getattr(torchvision.models, name)(weights=w)
        except Exception as e:  # offline, or a broken cached file
            reason = str(e).splitlines()[0][:150] if str(e) else type(e).__name__
            die(f"cannot load the {name} {w.name} weights ({reason}). Download {w.url} and put it at {cached} "
                f"(torchvision's cache; set TORCH_HOME to move it), or pass the file: --weights /path/to/{os.path.basename(w.url)}")
        finally:
            socket.setdefaulttimeout(timeout)
        wid = w.name
    else:
        model = arch.build(name)
        model.load_state_dict(read_state_dict(weights))
        with open(weights, "rb") as f:
            wid = f"file:{os.path.basename(weights)}:sha256={hashlib.sha256(f.read()).hexdigest()[:16]}"
    model.eval().requires_grad_(False)
    return model.to(device), weights_id(name, wid)


def read_state_dict(path):
    """A checkpoint's state_dict, checked against the current architecture's keys and shapes."""
    name = current_arch()
    if not os.path.isfile(path):
        die(f"weights: no such file {path!r} (use IMAGENET1K_V1, DEFAULT, random, or a path to a {name} state_dict)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        die(f"weights: cannot read {path!r} as a PyTorch checkpoint ({type(e).__name__})")
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        die(f"weights: {path!r} does not hold a state_dict")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    with torch.device("meta"):
        expected = arch.build(name).state_dict()
    missing, extra = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    bad = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or extra or bad:
        what = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {extra[:3]}" if extra else "") + (f" wrong shape {bad[:3]}" if bad else "")
        die(f"weights: {path!r} is not a torchvision {name} state_dict ({what.strip()}); is --arch right?")
    return sd


# ----------------------------------------------------------------------------------------------------
# The forward pass, written out so that it stops at the deepest layer asked for and so that Pre is the
# true bn2 output (torchvision's BasicBlock adds in place and would overwrite a hooked reference).

def stem(model, x):
    return model.maxpool(model.relu(model.bn1(model.conv1(x))))


def block_forward(block, x, part="post"):
    """One residual block: {'in': skip summand, 'pre': the last BatchNorm's output before the sum (bn2 of a
    BasicBlock, bn3 of a Bottleneck), 'post': ReLU(in + pre)}, as far as `part`. Nothing is done in place, so
    Pre stays the true BatchNorm output (torchvision's own forward adds and applies the ReLU in place)."""
    out = {"in": block.downsample(x) if block.downsample is not None else x}
    if part == "in":
        return out
    h = torch.relu(block.bn1(block.conv1(x)))
    if hasattr(block, "bn3"):  # Bottleneck: 1x1, 3x3, 1x1
        out["pre"] = block.bn3(block.conv3(torch.relu(block.bn2(block.conv2(h)))))
    else:
        out["pre"] = block.bn2(block.conv2(h))
    if part == "post":
        out["post"] = torch.relu(out["pre"] + out["in"])
    return out


def head(model, x):
    return model.fc(torch.flatten(model.avgpool(x), 1))


def features(model, x, layers):
    """{layer: feature map} for the named layers, running the network only up to the deepest of them."""
    wanted = {}
    for layer in layers:
        i, part = where(layer)
        wanted.setdefault(i, []).append((layer, part))
    last = max(wanted)
    out, h = {}, stem(model, x)
    for i in range(last + 1):
        block = model.get_submodule(RESIDUAL_BLOCKS[i])
        deepest = "post" if i < last else max((p for _, p in wanted[i]), key=["in", "pre", "post"].index)
        parts = block_forward(block, h, deepest)
        for layer, part in wanted.get(i, []):
            out[layer] = parts[part]
        h = parts.get("post")
    return out


def center(fmap):
    """The center neuron of every channel: position (H // 2, W // 2), as lucent's objectives.neuron."""
    return fmap[:, :, fmap.shape[2] // 2, fmap.shape[3] // 2]


@torch.no_grad()
def read_center(model, x, layers):
    """{layer: (B, C) float32 center-neuron activations} for a normalised batch x, in one truncated pass."""
    return {k: center(v).float() for k, v in features(model, x, layers).items()}


def normalize(x):
    """[0, 1] RGB batch -> ImageNet-normalised batch."""
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def to_float(images_u8):
    """uint8 N x 3 x H x W -> float [0, 1]."""
    return images_u8.float() / 255.0


def zoom(x, size=224):
    """METHOD.md section 3's transform S: center-crop to half the size, bilinear resize back."""
    h, w = x.shape[-2:]
    top, left = (h - size // 2) // 2, (w - size // 2) // 2
    crop = x[..., top:top + size // 2, left:left + size // 2]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------------
# Devices and precision.

def pick_device(name="auto"):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        die(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        die(f"device {name!r} asked for, but torch sees no CUDA GPU")
    return device


def cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def amp_dtype(amp, device):
    """'auto' -> bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else float32; or 'bf16'/'fp32'."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"
    if amp not in ("bf16", "fp32"):
        die(f"amp must be auto, bf16 or fp32, not {amp!r}")
    return torch.bfloat16 if amp == "bf16" else None


def autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# ----------------------------------------------------------------------------------------------------
# Command-line constants, nanoGPT style: every UPPERCASE literal assigned at the top level of a script
# is a constant, and --lowercase_name overrides it. --help lists them with their comments.

def _constants(path):
    with open(path) as f:
        source = f.read()
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.isupper():
                try:
                    ast.literal_eval(node.value)
                except ValueError:
                    continue
                comment = lines[node.lineno - 1].partition("#")[2].strip()
                out[name] = comment
    return out


def _parse_value(text, default, name):
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        die(f"--{name.lower()} takes true or false, not {text!r}")
    try:
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        die(f"--{name.lower()} takes a {type(default).__name__}, not {text!r}")
    if isinstance(default, (list, tuple)):
        kind = type(default[0]) if default else str
        return [_parse_value(t.strip(), kind(), name) for t in text.split(",") if t.strip()]
    if isinstance(default, dict):  # 'key:value,key:value' updates the named entries
        kind = type(next(iter(default.values()))) if default else str
        out = dict(default)
        for item in [t.strip() for t in text.split(",") if t.strip()]:
            key, sep, value = item.partition(":")
            if not sep or key.strip() not in default:
                die(f"--{name.lower()} takes key:value pairs with keys from {', '.join(map(str, default))}; got {item!r}")
            out[key.strip()] = _parse_value(value.strip(), kind(), name)
        return out
    return None if default is None and text.lower() == "none" else text


def configure(g, argv=None, description=None):
    """Override the script's constants (in its globals g) from the command line; return them as a dict."""
    import argparse
    consts = _constants(g["__file__"])
    parser = argparse.ArgumentParser(description=description or (g.get("__doc__") or "").strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, comment in consts.items():
        default = g[name]
        shown = (",".join(map(str, default)) if isinstance(default, (list, tuple)) else
                 ",".join(f"{k}:{v}" for k, v in default.items()) if isinstance(default, dict) else default)
        flags = dict.fromkeys([f"--{name.lower()}", f"--{name.lower().replace('_', '-')}"])  # --pre_as_released, --pre-as-released
        extra = dict(nargs="?", const="true") if isinstance(default, bool) else {}  # --list alone means --list true
        parser.add_argument(*flags, dest=name, metavar=type(default).__name__.upper(), **extra,
                            help=f"{comment} (default: {shown})".replace("%", "%%"))
    args = parser.parse_args(argv)
    for name in consts:
        text = getattr(args, name)
        if text is not None:
            g[name] = _parse_value(text, g[name], name)
    return {name: g[name] for name in consts}


def main_guard(main, interrupted="nothing was written"):
    """Run main(); Ctrl-C ends with one line, saying what is true for the script (`interrupted`), and exit status 130."""
    try:
        main()
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        sys.exit(130)


def lock_results(results, script):
    """Hold an exclusive lock on the results folder for this script until the process ends. A second process of the
    same script on the same folder stops at once with one line naming the first. The lock is the kernel's (flock), so
    it goes with the process, after kill -9 too: no stale lock is ever left. Returns the open lock file (keep it)."""
    import fcntl
    import time
    os.makedirs(results, exist_ok=True)
    path = os.path.join(results, f".{script}.lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        die(f"{results} is in use by another {script} ({holder}); wait for it to finish, or use another --results")
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
    defaults = {"arch": "resnet18"}  # files from before --arch existed are resnet18's
    for k in keys:
        if a.get(k, defaults.get(k)) != b.get(k, defaults.get(k)):
            return f"{k}: {a.get(k, defaults.get(k))!r} vs {b.get(k, defaults.get(k))!r}"
    return None


# ----------------------------------------------------------------------------------------------------
# Figures (plot_grids.py, plot_ratios.py, plot_spectrum.py): which weights a figure was made from, a stamp
# that says so on every figure (loud when they are random), and PNG + PDF written atomically.

def weights_of(*configs):
    """The one weights id recorded ('weights' or 'weights_id', at any depth) in the configs of a figure's inputs; dies
    when they disagree, 'unknown' when none records one. 'random' is read as 'random:0', as load_model does."""
    found = set()

    def walk(d):
        if isinstance(d, dict):
            for k, v in d.items():
                if k in ("weights", "weights_id") and isinstance(v, str):
                    found.add("random:0" if v == "random" else v)
                else:
                    walk(v)
    for config in configs:
        walk(config)
    if len(found) > 1:
        die(f"the inputs were made with different weights ({', '.join(sorted(found))}): remake them with one --weights")
    return found.pop() if found else "unknown"


def stamp(fig, weights):
    """The weights id in small print along the bottom edge (keep the bottom 0.2 inches free for it); when they are
    random, that line is red and a large translucent red warning runs across the figure."""
    if not is_random(weights):
        fig.text(0.003, 0.003, f"weights: {weights}", fontsize=6, color="0.3", ha="left", va="bottom")
        return
    text = f"RANDOM WEIGHTS ({weights}) \u2014 not a result"
    fig.text(0.003, 0.003, text, fontsize=7, color="red", weight="bold", ha="left", va="bottom")
    fig.text(0.5, 0.5, text, fontsize=min(60, 1.4 * fig.get_figwidth() * 72 / len(text)), color="red", alpha=0.3,
             weight="bold", rotation=20, ha="center", va="center", zorder=100)


def save_figure(figs, path, dpi=200):
    """One figure, or a list of pages: path.png (path_p1.png, path_p2.png, ... when several; stale pages from an earlier
    run are removed) and path.pdf (all pages), each written atomically. Closes the figures; returns the paths written."""
    import glob
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages
    figs = list(figs) if isinstance(figs, (list, tuple)) else [figs]
    pngs = [path + ".png"] if len(figs) == 1 else [f"{path}_p{i + 1}.png" for i in range(len(figs))]
    for old in glob.glob(glob.escape(path) + ".png") + glob.glob(glob.escape(path) + "_p*.png"):
        if old not in pngs and re.fullmatch(r"(_p\d+)?\.png", old[len(path):]):
            os.remove(old)
    for fig, png in zip(figs, pngs):
        atomic_write(png, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=dpi))

    def write_pdf(tmp):
        with PdfPages(tmp) as pdf:
            for fig in figs:
                pdf.savefig(fig)
    atomic_write(path + ".pdf", write_pdf)
    for fig in figs:
        plt.close(fig)
    return pngs + [path + ".pdf"]


# ----------------------------------------------------------------------------------------------------
# ImageNet validation folders (METHOD.md sections 4 and 5): labels from the wnid, one decode per image
# giving the standard eval view and the scaled views, and a DataLoader that decodes in worker processes.

WNIDS = (  # the 1,000 ImageNet-1k wnids; position = canonical class index 0..999 (torchvision's order)
    "n01440764 n01443537 n01484850 n01491361 n01494475 n01496331 n01498041 n01514668 n01514859 n01518878 n01530575 "
    "n01531178 n01532829 n01534433 n01537544 n01558993 n01560419 n01580077 n01582220 n01592084 n01601694 n01608432 "
    "n01614925 n01616318 n01622779 n01629819 n01630670 n01631663 n01632458 n01632777 n01641577 n01644373 n01644900 "
    "n01664065 n01665541 n01667114 n01667778 n01669191 n01675722 n01677366 n01682714 n01685808 n01687978 n01688243 "
    "n01689811 n01692333 n01693334 n01694178 n01695060 n01697457 n01698640 n01704323 n01728572 n01728920 n01729322 "
    "n01729977 n01734418 n01735189 n01737021 n01739381 n01740131 n01742172 n01744401 n01748264 n01749939 n01751748 "
    "n01753488 n01755581 n01756291 n01768244 n01770081 n01770393 n01773157 n01773549 n01773797 n01774384 n01774750 "
    "n01775062 n01776313 n01784675 n01795545 n01796340 n01797886 n01798484 n01806143 n01806567 n01807496 n01817953 "
    "n01818515 n01819313 n01820546 n01824575 n01828970 n01829413 n01833805 n01843065 n01843383 n01847000 n01855032 "
    "n01855672 n01860187 n01871265 n01872401 n01873310 n01877812 n01882714 n01883070 n01910747 n01914609 n01917289 "
    "n01924916 n01930112 n01943899 n01944390 n01945685 n01950731 n01955084 n01968897 n01978287 n01978455 n01980166 "
    "n01981276 n01983481 n01984695 n01985128 n01986214 n01990800 n02002556 n02002724 n02006656 n02007558 n02009229 "
    "n02009912 n02011460 n02012849 n02013706 n02017213 n02018207 n02018795 n02025239 n02027492 n02028035 n02033041 "
    "n02037110 n02051845 n02056570 n02058221 n02066245 n02071294 n02074367 n02077923 n02085620 n02085782 n02085936 "
    "n02086079 n02086240 n02086646 n02086910 n02087046 n02087394 n02088094 n02088238 n02088364 n02088466 n02088632 "
    "n02089078 n02089867 n02089973 n02090379 n02090622 n02090721 n02091032 n02091134 n02091244 n02091467 n02091635 "
    "n02091831 n02092002 n02092339 n02093256 n02093428 n02093647 n02093754 n02093859 n02093991 n02094114 n02094258 "
    "n02094433 n02095314 n02095570 n02095889 n02096051 n02096177 n02096294 n02096437 n02096585 n02097047 n02097130 "
    "n02097209 n02097298 n02097474 n02097658 n02098105 n02098286 n02098413 n02099267 n02099429 n02099601 n02099712 "
    "n02099849 n02100236 n02100583 n02100735 n02100877 n02101006 n02101388 n02101556 n02102040 n02102177 n02102318 "
    "n02102480 n02102973 n02104029 n02104365 n02105056 n02105162 n02105251 n02105412 n02105505 n02105641 n02105855 "
    "n02106030 n02106166 n02106382 n02106550 n02106662 n02107142 n02107312 n02107574 n02107683 n02107908 n02108000 "
    "n02108089 n02108422 n02108551 n02108915 n02109047 n02109525 n02109961 n02110063 n02110185 n02110341 n02110627 "
    "n02110806 n02110958 n02111129 n02111277 n02111500 n02111889 n02112018 n02112137 n02112350 n02112706 n02113023 "
    "n02113186 n02113624 n02113712 n02113799 n02113978 n02114367 n02114548 n02114712 n02114855 n02115641 n02115913 "
    "n02116738 n02117135 n02119022 n02119789 n02120079 n02120505 n02123045 n02123159 n02123394 n02123597 n02124075 "
    "n02125311 n02127052 n02128385 n02128757 n02128925 n02129165 n02129604 n02130308 n02132136 n02133161 n02134084 "
    "n02134418 n02137549 n02138441 n02165105 n02165456 n02167151 n02168699 n02169497 n02172182 n02174001 n02177972 "
    "n02190166 n02206856 n02219486 n02226429 n02229544 n02231487 n02233338 n02236044 n02256656 n02259212 n02264363 "
    "n02268443 n02268853 n02276258 n02277742 n02279972 n02280649 n02281406 n02281787 n02317335 n02319095 n02321529 "
    "n02325366 n02326432 n02328150 n02342885 n02346627 n02356798 n02361337 n02363005 n02364673 n02389026 n02391049 "
    "n02395406 n02396427 n02397096 n02398521 n02403003 n02408429 n02410509 n02412080 n02415577 n02417914 n02422106 "
    "n02422699 n02423022 n02437312 n02437616 n02441942 n02442845 n02443114 n02443484 n02444819 n02445715 n02447366 "
    "n02454379 n02457408 n02480495 n02480855 n02481823 n02483362 n02483708 n02484975 n02486261 n02486410 n02487347 "
    "n02488291 n02488702 n02489166 n02490219 n02492035 n02492660 n02493509 n02493793 n02494079 n02497673 n02500267 "
    "n02504013 n02504458 n02509815 n02510455 n02514041 n02526121 n02536864 n02606052 n02607072 n02640242 n02641379 "
    "n02643566 n02655020 n02666196 n02667093 n02669723 n02672831 n02676566 n02687172 n02690373 n02692877 n02699494 "
    "n02701002 n02704792 n02708093 n02727426 n02730930 n02747177 n02749479 n02769748 n02776631 n02777292 n02782093 "
    "n02783161 n02786058 n02787622 n02788148 n02790996 n02791124 n02791270 n02793495 n02794156 n02795169 n02797295 "
    "n02799071 n02802426 n02804414 n02804610 n02807133 n02808304 n02808440 n02814533 n02814860 n02815834 n02817516 "
    "n02823428 n02823750 n02825657 n02834397 n02835271 n02837789 n02840245 n02841315 n02843684 n02859443 n02860847 "
    "n02865351 n02869837 n02870880 n02871525 n02877765 n02879718 n02883205 n02892201 n02892767 n02894605 n02895154 "
    "n02906734 n02909870 n02910353 n02916936 n02917067 n02927161 n02930766 n02939185 n02948072 n02950826 n02951358 "
    "n02951585 n02963159 n02965783 n02966193 n02966687 n02971356 n02974003 n02977058 n02978881 n02979186 n02980441 "
    "n02981792 n02988304 n02992211 n02992529 n02999410 n03000134 n03000247 n03000684 n03014705 n03016953 n03017168 "
    "n03018349 n03026506 n03028079 n03032252 n03041632 n03042490 n03045698 n03047690 n03062245 n03063599 n03063689 "
    "n03065424 n03075370 n03085013 n03089624 n03095699 n03100240 n03109150 n03110669 n03124043 n03124170 n03125729 "
    "n03126707 n03127747 n03127925 n03131574 n03133878 n03134739 n03141823 n03146219 n03160309 n03179701 n03180011 "
    "n03187595 n03188531 n03196217 n03197337 n03201208 n03207743 n03207941 n03208938 n03216828 n03218198 n03220513 "
    "n03223299 n03240683 n03249569 n03250847 n03255030 n03259280 n03271574 n03272010 n03272562 n03290653 n03291819 "
    "n03297495 n03314780 n03325584 n03337140 n03344393 n03345487 n03347037 n03355925 n03372029 n03376595 n03379051 "
    "n03384352 n03388043 n03388183 n03388549 n03393912 n03394916 n03400231 n03404251 n03417042 n03424325 n03425413 "
    "n03443371 n03444034 n03445777 n03445924 n03447447 n03447721 n03450230 n03452741 n03457902 n03459775 n03461385 "
    "n03467068 n03476684 n03476991 n03478589 n03481172 n03482405 n03483316 n03485407 n03485794 n03492542 n03494278 "
    "n03495258 n03496892 n03498962 n03527444 n03529860 n03530642 n03532672 n03534580 n03535780 n03538406 n03544143 "
    "n03584254 n03584829 n03590841 n03594734 n03594945 n03595614 n03598930 n03599486 n03602883 n03617480 n03623198 "
    "n03627232 n03630383 n03633091 n03637318 n03642806 n03649909 n03657121 n03658185 n03661043 n03662601 n03666591 "
    "n03670208 n03673027 n03676483 n03680355 n03690938 n03691459 n03692522 n03697007 n03706229 n03709823 n03710193 "
    "n03710637 n03710721 n03717622 n03720891 n03721384 n03724870 n03729826 n03733131 n03733281 n03733805 n03742115 "
    "n03743016 n03759954 n03761084 n03763968 n03764736 n03769881 n03770439 n03770679 n03773504 n03775071 n03775546 "
    "n03776460 n03777568 n03777754 n03781244 n03782006 n03785016 n03786901 n03787032 n03788195 n03788365 n03791053 "
    "n03792782 n03792972 n03793489 n03794056 n03796401 n03803284 n03804744 n03814639 n03814906 n03825788 n03832673 "
    "n03837869 n03838899 n03840681 n03841143 n03843555 n03854065 n03857828 n03866082 n03868242 n03868863 n03871628 "
    "n03873416 n03874293 n03874599 n03876231 n03877472 n03877845 n03884397 n03887697 n03888257 n03888605 n03891251 "
    "n03891332 n03895866 n03899768 n03902125 n03903868 n03908618 n03908714 n03916031 n03920288 n03924679 n03929660 "
    "n03929855 n03930313 n03930630 n03933933 n03935335 n03937543 n03938244 n03942813 n03944341 n03947888 n03950228 "
    "n03954731 n03956157 n03958227 n03961711 n03967562 n03970156 n03976467 n03976657 n03977966 n03980874 n03982430 "
    "n03983396 n03991062 n03992509 n03995372 n03998194 n04004767 n04005630 n04008634 n04009552 n04019541 n04023962 "
    "n04026417 n04033901 n04033995 n04037443 n04039381 n04040759 n04041544 n04044716 n04049303 n04065272 n04067472 "
    "n04069434 n04070727 n04074963 n04081281 n04086273 n04090263 n04099969 n04111531 n04116512 n04118538 n04118776 "
    "n04120489 n04125021 n04127249 n04131690 n04133789 n04136333 n04141076 n04141327 n04141975 n04146614 n04147183 "
    "n04149813 n04152593 n04153751 n04154565 n04162706 n04179913 n04192698 n04200800 n04201297 n04204238 n04204347 "
    "n04208210 n04209133 n04209239 n04228054 n04229816 n04235860 n04238763 n04239074 n04243546 n04251144 n04252077 "
    "n04252225 n04254120 n04254680 n04254777 n04258138 n04259630 n04263257 n04264628 n04265275 n04266014 n04270147 "
    "n04273569 n04275548 n04277352 n04285008 n04286575 n04296562 n04310018 n04311004 n04311174 n04317175 n04325704 "
    "n04326547 n04328186 n04330267 n04332243 n04335435 n04336792 n04344873 n04346328 n04347754 n04350905 n04355338 "
    "n04355933 n04356056 n04357314 n04366367 n04367480 n04370456 n04371430 n04371774 n04372370 n04376876 n04380533 "
    "n04389033 n04392985 n04398044 n04399382 n04404412 n04409515 n04417672 n04418357 n04423845 n04428191 n04429376 "
    "n04435653 n04442312 n04443257 n04447861 n04456115 n04458633 n04461696 n04462240 n04465501 n04467665 n04476259 "
    "n04479046 n04482393 n04483307 n04485082 n04486054 n04487081 n04487394 n04493381 n04501370 n04505470 n04507155 "
    "n04509417 n04515003 n04517823 n04522168 n04523525 n04525038 n04525305 n04532106 n04532670 n04536866 n04540053 "
    "n04542943 n04548280 n04548362 n04550184 n04552348 n04553703 n04554684 n04557648 n04560804 n04562935 n04579145 "
    "n04579432 n04584207 n04589890 n04590129 n04591157 n04591713 n04592741 n04596742 n04597913 n04599235 n04604644 "
    "n04606251 n04612504 n04613696 n06359193 n06596364 n06785654 n06794110 n06874185 n07248320 n07565083 n07579787 "
    "n07583066 n07584110 n07590611 n07613480 n07614500 n07615774 n07684084 n07693725 n07695742 n07697313 n07697537 "
    "n07711569 n07714571 n07714990 n07715103 n07716358 n07716906 n07717410 n07717556 n07718472 n07718747 n07720875 "
    "n07730033 n07734744 n07742313 n07745940 n07747607 n07749582 n07753113 n07753275 n07753592 n07754684 n07760859 "
    "n07768694 n07802026 n07831146 n07836838 n07860988 n07871810 n07873807 n07875152 n07880968 n07892512 n07920052 "
    "n07930864 n07932039 n09193705 n09229709 n09246464 n09256479 n09288635 n09332890 n09399592 n09421951 n09428293 "
    "n09468604 n09472597 n09835506 n10148035 n10565667 n11879895 n11939491 n12057211 n12144580 n12267677 n12620546 "
    "n12768682 n12985857 n12998815 n13037406 n13040303 n13044778 n13052670 n13054560 n13133613 n15075141"
).split()

WNID_INDEX = {wnid: i for i, wnid in enumerate(WNIDS)}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageError(Exception):
    """An image file that cannot be decoded (raised in DataLoader workers; `guarded` turns it into one line)."""


def imagenet_folder(root, limit=0):
    """(relative paths, int64 labels) of a folder in the prepared layout root/<wnid>/<image>, sorted by path.

    Labels are the canonical class index of the wnid, so a folder holding only some classes is labelled
    right. limit > 0 keeps that many images evenly spaced over the sorted list (so every class present
    keeps its share), 0 keeps all."""
    if not root:
        die("no image folder given: pass --data /path/to/imagenet/val (one sub-folder per wnid)")
    if not os.path.isdir(root):
        die(f"image folder {root!r} {'is not a folder' if os.path.exists(root) else 'does not exist'}")
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    folders = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    loose = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS) and e not in folders]
    if not folders:
        if loose:
            die(f"{root!r} holds images directly; expected the prepared layout, one sub-folder per wnid (root/n01440764/*.JPEG)")
        die(f"image folder {root!r} is empty")
    for name in folders:
        if not re.fullmatch(r"n\d{8}", name):
            die(f"{root!r} is not in the prepared layout: sub-folder {name!r} is not a wnid (expected root/n01440764/*.JPEG)")
        if name not in WNID_INDEX:
            die(f"{root!r}: unknown wnid {name!r} (not one of the 1,000 ImageNet-1k classes)")
    paths, labels = [], []
    for name in folders:
        for folder, _subs, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    paths.append(os.path.relpath(os.path.join(folder, f), root))
                    labels.append(WNID_INDEX[name])
    if not paths:
        die(f"image folder {root!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its {len(folders)} class folders")
    if 0 < limit < len(paths):
        keep = np.unique(np.linspace(0, len(paths) - 1, limit).round().astype(int))
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    return paths, np.array(labels, dtype=np.int64)


def write_fake_imagenet(folder, n, predict=None):
    """n generated 500 x 375 JPEGs (smooth colour plus noise: about ImageNet's mean size and file size) in the prepared
    layout, folder/<wnid>/fake_00000000.JPEG, ...; files already there are kept. For smoke runs and benchmarks without
    ImageNet. Without `predict` the wnids go round-robin and the labels mean nothing. With `predict` (uint8 eval views
    (B, 3, 224, 224) -> class indices), each image is filed under the class the model predicts on its eval view:
    self-labelled data, on which the unablated top-1 is 100% by construction, so ablation ratios have values."""
    from multiprocessing import Pool
    made = {f for _, _, files in os.walk(folder) for f in files} if os.path.isdir(folder) else set()
    todo = [i for i in range(n) if f"fake_{i:08d}.JPEG" not in made]
    if not todo:
        return
    print(f"writing {len(todo)} generated JPEGs into {folder}" + (" (labelled with the model's predictions)" if predict else ""))
    if predict is None:
        with Pool(max(1, min(16, os.cpu_count() or 1))) as pool:
            pool.map(_write_fake, [(folder, i, os.path.join(folder, WNIDS[i % 1000])) for i in todo], chunksize=64)
        return
    staging = os.path.join(folder, ".staging")
    for start in range(0, len(todo), 64):
        chunk = todo[start:start + 64]
        for i in chunk:
            _write_fake((folder, i, staging))
        paths = [os.path.join(staging, f"fake_{i:08d}.JPEG") for i in chunk]
        labels = predict(torch.stack([eval_views(decode_rgb(p), [0])[0] for p in paths]))
        for path, label in zip(paths, labels.tolist()):
            os.makedirs(os.path.join(folder, WNIDS[label]), exist_ok=True)
            os.replace(path, os.path.join(folder, WNIDS[label], os.path.basename(path)))
    os.rmdir(staging)


def _write_fake(args):
    from PIL import Image
    folder, i, into = args
    rng = np.random.default_rng(i)
    os.makedirs(into, exist_ok=True)
    low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
    pixels = np.asarray(low, dtype=np.float32) + rng.normal(0, 10, (375, 500, 3))
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    atomic_write(os.path.join(into, f"fake_{i:08d}.JPEG"), lambda tmp: image.save(tmp, format="JPEG", quality=90))


def decode_rgb(path):
    """A PIL image in RGB, whatever its mode (grayscale, CMYK, palette, with alpha)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            return im.convert("RGB")
    except Exception as e:
        raise ImageError(f"cannot read image {path} ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})") from None


def crop_size(percent):
    """METHOD.md section 5's scale transform crops 256 - floor(256 p / 100) px (231 at 10 %, 128 at 50 %)."""
    return 256 - (256 * int(percent)) // 100


def eval_views(image, scales):
    """uint8 (len(scales), 3, 224, 224) views of one decoded PIL image: resize the shorter side to 256, then
    scale 0 = center-crop 224 (the standard eval transform), scale p = center-crop crop_size(p), resize to 224.

    All resizing is torchvision.transforms.functional on PIL images, bilinear (PIL's, antialiased: the same
    as torchvision's standard ImageNet eval transform Resize(256) + CenterCrop(224))."""
    import torchvision.transforms.functional as TF
    bilinear = TF.InterpolationMode.BILINEAR
    base = TF.resize(image, 256, interpolation=bilinear)
    views = []
    for p in scales:
        view = TF.center_crop(base, 224) if p == 0 else TF.resize(TF.center_crop(base, crop_size(p)), [224, 224], interpolation=bilinear)
        views.append(TF.pil_to_tensor(view))
    return torch.stack(views)


def zoom_views(image, fractions):
    """uint8 (2 k + 1, 3, 224, 224), k the fractions below 1: zoomed copies of one decoded PIL image's eval view (resize 256,
    center-crop 224), from the most zoomed out to the most zoomed in. For each crop fraction f < 1: zoom out f (the
    view shrunk to round(224 f) px, bilinear, centered on a canvas of the ImageNet mean colour) and zoom in 1/f (the
    center round(224 f) px of the view, bilinear resize to 224); f = 1 is the view itself. zooms(fractions) lists
    the zoom factors in the same order."""
    from PIL import Image
    import torchvision.transforms.functional as TF
    bilinear = TF.InterpolationMode.BILINEAR
    view = TF.center_crop(TF.resize(image, 256, interpolation=bilinear), 224)
    fill = tuple(round(255 * m) for m in MEAN)
    out = []
    for f in sorted(f for f in fractions if f < 1):  # zoom out: 0.5x first
        side = round(224 * f)
        canvas = Image.new("RGB", (224, 224), fill)
        canvas.paste(TF.resize(view, [side, side], interpolation=bilinear), ((224 - side) // 2, (224 - side) // 2))
        out.append(canvas)
    out.append(view)
    for f in sorted((f for f in fractions if f < 1), reverse=True):  # zoom in: 1/0.9 first, 2x last
        out.append(TF.resize(TF.center_crop(view, round(224 * f)), [224, 224], interpolation=bilinear))
    return torch.stack([TF.pil_to_tensor(v) for v in out])


def zooms(fractions):
    """The zoom factor of each of zoom_views' views, in order: f (out) ascending, 1, then 1/f ascending."""
    small = sorted(f for f in fractions if f < 1)
    return small + [1.0] + [1 / f for f in reversed(small)]


class ZoomFolder(torch.utils.data.Dataset):
    """Item i: (uint8 zoom views of image ids[i] from ONE decode, i)."""

    def __init__(self, root, paths, ids, fractions):
        self.root, self.paths, self.ids, self.fractions = root, list(paths), list(ids), list(fractions)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return zoom_views(decode_rgb(os.path.join(self.root, self.paths[self.ids[i]])), self.fractions), i


class ImageNetFolder(torch.utils.data.Dataset):
    """Item i: (uint8 views (len(scales), 3, 224, 224) from ONE decode of image i, its label, i)."""

    def __init__(self, root, paths, labels, scales=(0,)):
        self.root, self.paths, self.labels, self.scales = root, list(paths), np.asarray(labels), list(scales)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = decode_rgb(os.path.join(self.root, self.paths[i]))
        return eval_views(image, self.scales), int(self.labels[i]), i


def image_loader(dataset, batch, workers=-1, device="cpu", start=0):
    """A DataLoader in dataset order from image `start` on; workers=-1: one per CPU core (at most 16)."""
    if workers < 0:
        workers = min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if start:
        dataset = torch.utils.data.Subset(dataset, range(start, len(dataset)))
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                                       pin_memory=torch.device(device).type == "cuda",
                                       prefetch_factor=2 if workers else None)


def guarded(loader):
    """Iterate a loader; an unreadable image ends the script with one line naming it."""
    try:
        yield from loader
    except ImageError as e:  # raised here, or re-raised from a worker with its traceback in the text
        text = str(e)
        die(text[text.rindex("cannot read image"):].splitlines()[0] if "cannot read image" in text else "cannot read an image")
