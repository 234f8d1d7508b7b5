"""What the scripts share: the ResNet (resnet18 unless --arch) and its residual-stream layers (METHOD.md section 1), the
center-neuron reader, the command-line constants, and atomic result files that carry their config.

Nothing here is specific to one stage of the pipeline; each script reads top to bottom on its own.
"""

import ast
import contextlib
import errno
import functools
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
_arch = "resnet18"  # the architecture of the tables (current_arch)


def use_arch(name):
    """Point BLOCKS, LAYERS, RESIDUAL_BLOCKS and WIDTHS at the torchvision ResNet `name` (in place)."""
    global _arch
    if name not in arch.ARCHS:
        die(f"unknown architecture {name!r}; the torchvision ResNets are: {', '.join(arch.ARCHS)}")
    table, residual, widths = arch.tables(name)
    BLOCKS.clear()
    BLOCKS.update(table)
    LAYERS[:] = arch.layers_of(table)
    RESIDUAL_BLOCKS[:] = residual
    WIDTHS.clear()
    WIDTHS.update(widths)
    _arch = name


def current_arch():
    return _arch


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
    cmd += weights_flags(weights)
    if results != "results":
        cmd += f" --results {results}"
    return cmd


def weights_flags(weights, always=False):
    """' --arch NAME --weights W' naming the current architecture and these weights (an id or a flag value) on a
    command line: a checkpoint as a placeholder path; resnet18 and IMAGENET1K_V1 (unless `always`) left out."""
    weights = split_weights_id(weights)[1]
    if weights.startswith("file:"):  # a weights id, not the path: name the flag
        weights = "/path/to/the/checkpoint"
    flags = f" --arch {current_arch()}" if current_arch() != "resnet18" else ""
    return flags + (f" --weights {weights}" if always or weights != "IMAGENET1K_V1" else "")


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


def truncated(model, layer):
    """features(model, x, [layer])[layer] as a function of x alone (the same operations), with the layer's place
    looked up once: what torch.compile traces holds tensor operations only."""
    i, part = where(layer)
    blocks = [model.get_submodule(name) for name in RESIDUAL_BLOCKS[:i + 1]]

    def forward(x):
        h = stem(model, x)
        for block in blocks[:-1]:
            h = block_forward(block, h)["post"]
        return block_forward(blocks[-1], h, part)[part]
    return forward


def center(fmap):
    """The center neuron of every channel: position (H // 2, W // 2), as lucent's objectives.neuron."""
    return fmap[:, :, fmap.shape[2] // 2, fmap.shape[3] // 2]


@torch.no_grad()
def read_center(model, x, layers):
    """{layer: (B, C) float32 center-neuron activations} for a normalised batch x, in one truncated pass."""
    return {k: center(v).float() for k, v in features(model, x, layers).items()}


@functools.lru_cache(maxsize=None)
def _mean_std(device, dtype):
    """MEAN and STD as (1, 3, 1, 1) tensors, made once per device and dtype (a new one per call would be a host-to-GPU
    copy, and a host synchronisation, at every step)."""
    with torch.inference_mode(False):  # ordinary tensors, so that autograd may save them, whoever asks first
        return (torch.tensor(MEAN, dtype=dtype).view(1, 3, 1, 1).to(device),
                torch.tensor(STD, dtype=dtype).view(1, 3, 1, 1).to(device))


def normalize(x):
    """[0, 1] RGB batch -> ImageNet-normalised batch."""
    mean, std = _mean_std(x.device, x.dtype)
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
# Devices and precision. torch.cuda, torch.backends and the environment are parameters, so that a test can fake a
# machine with GPUs (and torchrun's variables) and check every choice below without one.

PRECISIONS = ("fp32", "tf32", "bf16")  # what --amp can name besides auto
RANK_TIMEOUT_HOURS = 72  # torchrun ranks meet only at barriers: the first to finish waits there for the slowest


def pick_device(name="auto", env=None, cuda=None):
    """The torch.device this process runs on, always with an index on CUDA (torch.cuda.set_device needs one).

    auto: CUDA when torch sees a GPU, else the CPU. Under torchrun (WORLD_SIZE > 1) a CUDA rank runs on
    cuda:LOCAL_RANK: a device with an index is refused (every rank would share that GPU), and LOCAL_RANK must name
    a GPU of this machine. Both are checked here, before any process group is made, so that a wrong launch stops
    at once instead of waiting at the rendezvous."""
    env, cuda = os.environ if env is None else env, torch.cuda if cuda is None else cuda
    world, local = int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
    if name == "auto":
        name = "cuda" if cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        die(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
    if device.type not in ("cpu", "cuda"):
        die(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
    if device.type == "cpu":
        return torch.device("cpu")
    if not cuda.is_available():
        die(f"device {name!r} asked for, but torch sees no CUDA GPU")
    count = cuda.device_count()
    if world > 1:
        if device.index is not None:
            die(f"--device {name}: under torchrun each rank runs on cuda:LOCAL_RANK; pass --device auto or cuda, "
                f"or CUDA_VISIBLE_DEVICES to choose the GPUs")
        if local >= count:
            die(f"torchrun rank with LOCAL_RANK {local}, but this machine has {count} GPU(s): launch at most {count} "
                f"process(es) per node (torchrun --nproc_per_node={count})")
        return torch.device("cuda", local)
    index = 0 if device.index is None else device.index
    if index >= count:
        die(f"device {name!r}: this machine has {count} GPU(s) (cuda:0 .. cuda:{count - 1})")
    return torch.device("cuda", index)


def cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def precision(amp, device, env=None, cuda=None):
    """What --amp means here: 'fp32' (true float32, no TF32 on a GPU), 'tf32' (CUDA only: float32 storage, TF32
    convolutions and matmuls) or 'bf16' (bf16 arithmetic in the network).

    auto is fp32: bf16 moved the criteria's passing sets by more than FZ seed noise, and the sweep's correct counts
    by up to 3.5 points (README, "Precision"; benchmarks/bench_precision.py). The environment variable AMP_AUTO (fp32
    or bf16) sets what auto means, so that the test suite can run in either precision on any machine and a user can
    choose bf16's speed knowingly; on a GPU without native bf16 (compute capability below 8: torch's
    is_bf16_supported also counts emulation) it stays fp32."""
    env, cuda = os.environ if env is None else env, torch.cuda if cuda is None else cuda
    if amp == "auto":
        amp = env.get("AMP_AUTO", "") or "fp32"
        if amp not in ("fp32", "bf16"):
            die(f"AMP_AUTO must be fp32 or bf16 (what --amp auto means), not {amp!r}")
        if amp == "bf16" and device.type == "cuda" and cuda.get_device_capability(device)[0] < 8:
            amp = "fp32"
    if amp not in PRECISIONS:
        die(f"amp must be auto, {', '.join(PRECISIONS)}, not {amp!r}")
    if amp == "tf32" and device.type != "cuda":
        die("--amp tf32 is a GPU mode (TensorFloat-32 tensor cores); on the CPU use fp32 or bf16")
    return amp


def amp_dtype(prec):
    """The dtype that autocast and the weights take for a precision ('bf16' -> torch.bfloat16), None for float32."""
    return torch.bfloat16 if prec == "bf16" else None


def autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def set_tf32(on, backends=None):
    """TF32 on or off for cuDNN convolutions and cuBLAS matmuls. Where torch has the fp32_precision settings (2.9 on),
    only those are used: torch raises when the legacy allow_tf32 flags and the new settings are mixed."""
    backends = torch.backends if backends is None else backends
    value = "tf32" if on else "ieee"
    if hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision"):
        backends.cudnn.conv.fp32_precision = value
        backends.cuda.matmul.fp32_precision = value
    else:
        backends.cudnn.allow_tf32 = on
        backends.cuda.matmul.allow_tf32 = on


def tf32_on(backends=None):
    """Whether cuDNN convolutions may use TF32, read through the same settings set_tf32 writes."""
    backends = torch.backends if backends is None else backends
    if hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision"):
        return backends.cudnn.conv.fp32_precision == "tf32"
    return bool(backends.cudnn.allow_tf32)


@contextlib.contextmanager
def no_tf32():
    """with no_tf32(): true float32 convolutions inside (measurements), the setting before restored after."""
    was = tf32_on()
    set_tf32(False)
    try:
        yield
    finally:
        set_tf32(was)


def use_device(device, prec, cuda=None, backends=None):
    """Make a CUDA device current and set TF32 as the precision says (on for 'tf32' only: cuDNN's default is on,
    which would make an fp32 run TF32). Returns the device as result files record it ('cpu', 'cuda:0 NVIDIA H200')."""
    cuda = torch.cuda if cuda is None else cuda
    set_tf32(prec == "tf32", backends)
    if device.type != "cuda":
        return "cpu"
    if device.index is None:
        raise ValueError(f"use_device needs an indexed CUDA device (pick_device gives one), not {device}")
    cuda.set_device(device)
    return f"{device} {cuda.get_device_name(device.index)}"


def init_ranks(world, dist=None):
    """Under torchrun: join the process group. gloo, whatever the device: the ranks exchange only barriers, and a
    barrier must wait as long as the slowest rank's share of a sweep takes (NCCL's default is 10 minutes)."""
    import datetime
    dist = torch.distributed if dist is None else dist
    if world > 1:
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=RANK_TIMEOUT_HOURS))


def resolve_batch(value, device, per_item_bytes, cpu_default, cap, cuda=None, fraction=0.5):
    """--batch: a positive integer, or auto: cpu_default on the CPU; on a GPU as many items as `fraction` of its
    free memory holds at per_item_bytes each, rounded down to a multiple of 32, between 32 and cap."""
    cuda = torch.cuda if cuda is None else cuda
    text = str(value).strip().lower()
    if text != "auto":
        try:
            n = int(text)
        except ValueError:
            die(f"--batch takes a positive integer or auto, not {value!r}")
        if n < 1:
            die(f"--batch must be at least 1, not {n}")
        return n
    if device.type != "cuda":
        return cpu_default
    free, _total = cuda.mem_get_info(device)
    n = int(free * fraction // max(1, per_item_bytes)) // 32 * 32
    return max(32, min(cap, n))


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


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a cluster scheduler sends before it kills a job), raised where Ctrl-C would be, so that every
    script saves on it exactly what it saves on Ctrl-C."""


_MAIN_PID = []  # the process main_guard runs in: forked helpers (a Pool, DataLoader workers) inherit the handler


def _terminate(signum, _frame):
    import signal
    if os.getpid() not in _MAIN_PID:  # a forked helper ends as SIGTERM ends it by default (Pool.terminate sends it)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated()


def main_guard(main, interrupted="nothing was written"):
    """Run main(); Ctrl-C and SIGTERM end with one line saying what is true for the script (`interrupted`), and exit
    status 130 (Ctrl-C) or 143 (SIGTERM)."""
    import signal
    _MAIN_PID[:] = [os.getpid()]
    signal.signal(signal.SIGTERM, _terminate)
    try:
        main()
    except Terminated:
        print(f"\nterminated (SIGTERM): {interrupted}", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # a full disk outside atomic_write (a PNG written directly): one line all the same
        # (a memory-mapped array on a full disk gets SIGBUS, not an error: the natural stage's arrays are preallocated)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        die(f"no space left on the device{where} ({os.strerror(e.errno)}); files written atomically before it are whole. "
            f"Free some space, then run the same command again to resume")


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
    path = os.path.join(results, f".{script}.lock")
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
