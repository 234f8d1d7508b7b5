"""What the scripts share: ResNet18 and its residual-stream layers (METHOD.md section 1), the
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

MEAN = (0.485, 0.456, 0.406)  # ImageNet normalisation, METHOD.md section 1
STD = (0.229, 0.224, 0.225)

# ----------------------------------------------------------------------------------------------------
# The probed blocks and their three layers (METHOD.md section 1), by torchvision module name.
BLOCKS = {  # block: (In, Pre, Post)
    "1.1": ("layer1.0", "layer1.1.bn2", "layer1.1"),
    "2.0": ("layer2.0.downsample.1", "layer2.0.bn2", "layer2.0"),
    "2.1": ("layer2.0", "layer2.1.bn2", "layer2.1"),
    "3.0": ("layer3.0.downsample.1", "layer3.0.bn2", "layer3.0"),
    "3.1": ("layer3.0", "layer3.1.bn2", "layer3.1"),
    "4.0": ("layer4.0.downsample.1", "layer4.0.bn2", "layer4.0"),
    "4.1": ("layer4.0", "layer4.1.bn2", "layer4.1"),
}
LAYERS = list(dict.fromkeys(name for block in BLOCKS.values() for name in block))  # the 18, forward order
RESIDUAL_BLOCKS = [f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in (0, 1)]  # the 8 BasicBlocks, in order


def die(message):
    """Stop the script with a one-line error and exit status 1 (no traceback)."""
    raise SystemExit(f"error: {message}")


def where(layer):
    """(index of its BasicBlock in RESIDUAL_BLOCKS, part): part is 'in' (the skip path's summand),
    'pre' (the block's bn2 output, before the sum) or 'post' (the block output)."""
    m = re.fullmatch(r"(layer[1-4]\.[01])(\.bn2|\.downsample\.1)?", layer)
    if m is None or (m.group(2) == ".downsample.1" and not m.group(1).endswith(".0")) or m.group(1) == "layer1.0" and m.group(2):
        die(f"unknown layer {layer!r}; the layers are: {', '.join(LAYERS)}")
    part = {None: "post", ".bn2": "pre", ".downsample.1": "in"}[m.group(2)]
    return RESIDUAL_BLOCKS.index(m.group(1)), part


def n_channels(layer):
    return 64 * 2 ** (int(layer[5]) - 1)


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


# ----------------------------------------------------------------------------------------------------
# The model. Random weights only when asked for ('random' or 'random:SEED'); never as a fallback.

def load_resnet18(weights="IMAGENET1K_V1", device="cpu"):
    """torchvision's ResNet18 in eval mode without weight gradients, and a string that identifies its weights.

    weights: 'IMAGENET1K_V1' (torchvision's cache, downloading if online), a path to a state_dict
    checkpoint, or 'random' / 'random:SEED' (He-initialised, for tests and smoke runs)."""
    weights = str(weights)
    if weights.startswith("random"):
        seed = int(weights.split(":")[1]) if ":" in weights else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = torchvision.models.resnet18(weights=None)
        wid = f"random:{seed}"
    elif weights == "IMAGENET1K_V1":
        w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(w.url))
        timeout = socket.getdefaulttimeout()
        try:
            socket.setdefaulttimeout(60)
            model = torchvision.models.resnet18(weights=w)
        except Exception as e:  # offline, or a broken cached file
            reason = str(e).splitlines()[0][:150] if str(e) else type(e).__name__
            die(f"cannot load the IMAGENET1K_V1 weights ({reason}). Download {w.url} and put it at {cached} "
                f"(torchvision's cache; set TORCH_HOME to move it), or pass the file: --weights /path/to/{os.path.basename(w.url)}")
        finally:
            socket.setdefaulttimeout(timeout)
        wid = "IMAGENET1K_V1"
    else:
        model = torchvision.models.resnet18(weights=None)
        model.load_state_dict(read_state_dict(weights))
        with open(weights, "rb") as f:
            wid = f"file:{os.path.basename(weights)}:sha256={hashlib.sha256(f.read()).hexdigest()[:16]}"
    model.eval().requires_grad_(False)
    return model.to(device), wid


def read_state_dict(path):
    if not os.path.isfile(path):
        die(f"weights: no such file {path!r} (use IMAGENET1K_V1, random, or a path to a ResNet18 state_dict)")
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
    expected = torchvision.models.resnet18(weights=None).state_dict()
    missing, extra = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    bad = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or extra or bad:
        what = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {extra[:3]}" if extra else "") + (f" wrong shape {bad[:3]}" if bad else "")
        die(f"weights: {path!r} is not a torchvision ResNet18 state_dict ({what.strip()})")
    return sd


# ----------------------------------------------------------------------------------------------------
# The forward pass, written out so that it stops at the deepest layer asked for and so that Pre is the
# true bn2 output (torchvision's BasicBlock adds in place and would overwrite a hooked reference).

def stem(model, x):
    return model.maxpool(model.relu(model.bn1(model.conv1(x))))


def block_forward(block, x, part="post"):
    """One BasicBlock: {'in': skip summand, 'pre': bn2 output, 'post': ReLU(in + pre)}, as far as `part`."""
    out = {"in": block.downsample(x) if block.downsample is not None else x}
    if part == "in":
        return out
    out["pre"] = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
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
    return None if default is None and text.lower() == "none" else text


def configure(g, argv=None, description=None):
    """Override the script's constants (in its globals g) from the command line; return them as a dict."""
    import argparse
    consts = _constants(g["__file__"])
    parser = argparse.ArgumentParser(description=description or (g.get("__doc__") or "").strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, comment in consts.items():
        default = g[name]
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        parser.add_argument(f"--{name.lower()}", f"--{name.lower().replace('_', '-')}", dest=name, metavar=type(default).__name__.upper(),
                            help=f"{comment} (default: {shown})".replace("%", "%%"))
    args = parser.parse_args(argv)
    for name in consts:
        text = getattr(args, name)
        if text is not None:
            g[name] = _parse_value(text, g[name], name)
    return {name: g[name] for name in consts}


def main_guard(main):
    """Run main(); Ctrl-C ends with one line and exit status 130, not a traceback."""
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted: finished batches are saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)


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
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_pt(obj, path):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


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


def config_mismatch(a, b, keys):
    """The first key on which two configs differ, as 'key: a vs b', or None."""
    for k in keys:
        if a.get(k) != b.get(k):
            return f"{k}: {a.get(k)!r} vs {b.get(k)!r}"
    return None

# ----------------------------------------------------------------------------------------------------
# Figures (plot_grids.py, plot_ratios.py, plot_spectrum.py): which weights a figure was made from, a stamp
# that says so on every figure (loud when they are random), and PNG + PDF written atomically.

def weights_of(*configs):
    """The one weights id recorded ('weights', at any depth) in the configs of a figure's inputs; dies when they
    disagree, 'unknown' when none records one. 'random' is read as 'random:0', as load_resnet18 does."""
    found = set()

    def walk(d):
        if isinstance(d, dict):
            for k, v in d.items():
                if k == "weights" and isinstance(v, str):
                    found.add("random:0" if v == "random" else v)
                else:
                    walk(v)
    for config in configs:
        walk(config)
    if len(found) > 1:
        die(f"the inputs were made with different weights ({', '.join(sorted(found))}): remake them with one --weights")
    return found.pop() if found else "unknown"


def stamp(fig, weights):
    """The weights id in small print in the bottom-left corner; across the figure a red warning when they are random."""
    fig.text(0.003, 0.003, f"weights: {weights}", fontsize=6, color="0.3", ha="left", va="bottom")
    if str(weights).startswith("random"):
        text = f"RANDOM WEIGHTS ({weights}) \u2014 not a result"
        width = fig.get_figwidth() * 72  # points
        fig.text(0.5, 0.5, text, fontsize=min(60, 1.4 * width / len(text)), color="red", alpha=0.3, weight="bold",
                 rotation=20, ha="center", va="center", zorder=100)
        fig.text(0.997, 0.003, text, fontsize=7, color="red", weight="bold", ha="right", va="bottom")


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
