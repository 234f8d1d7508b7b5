"""The model and its residual stream (docs/method.md section 1): the torchvision ResNet (or CORnet-S) with its weights,
the forward pass written out block by block (step by step), the center-neuron reader, and a group crosscoder's encoder
(crosscoder.py trains it; fzs.py --objectives latent maximises its pre-activations).

Imports cli, arch, results (the weights id) and imagenet (MEAN and STD).
"""

import functools
import hashlib
import os
import re
import socket

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

import arch
from cli import die
from imagenet import MEAN, STD
from results import make_weights_id

# ----------------------------------------------------------------------------------------------------
# The model. Random weights only when asked for ('random' or 'random:SEED'); never as a fallback.

def load_model(arch_name, weights="IMAGENET1K_V1", device="cpu"):
    """The torchvision model `arch_name` in eval mode without weight gradients, and the id of its weights
    (results.make_weights_id).

    weights: a weights enum member of that architecture ('IMAGENET1K_V1', 'IMAGENET1K_V2' for resnet50, ...) or
    'DEFAULT' (torchvision's cache, downloading if online), a path to a state_dict checkpoint, or 'random' /
    'random:SEED' (He-initialised, for tests and smoke runs). CORnet-S's named weights (IMAGENET1K_V1 or DEFAULT) are the
    official checkpoint arch.CORNET_FILE, read from torchvision's cache folder (downloaded there if online)."""
    name, weights = arch_name, str(weights)
    if weights.startswith("random"):
        try:
            seed = int(weights.split(":")[1]) if ":" in weights else 0
        except ValueError:
            die(f"--weights {weights!r}: use random or random:SEED with an integer SEED")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = arch.build(name)
        made = f"random:{seed}"
    elif name == arch.CORNET and re.fullmatch(r"[A-Z][A-Z0-9_]*", weights) and not os.path.exists(weights):
        model, made = official_cornet(weights), "IMAGENET1K_V1"
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
        made = w.name
    else:
        model = arch.build(name)
        model.load_state_dict(read_state_dict(weights, name))
        with open(weights, "rb") as f:
            made = f"file:{os.path.basename(weights)}:sha256={hashlib.sha256(f.read()).hexdigest()[:16]}"
    model.eval().requires_grad_(False)
    return model.to(device), make_weights_id(name, made)


def official_cornet(weights):
    """CORnet-S with the official checkpoint (arch.CORNET_FILE) from torchvision's cache folder, downloading it there once
    when online; offline with no file, one line naming the file and where to put it."""
    if weights not in ("IMAGENET1K_V1", "DEFAULT"):
        die(f"--weights {weights!r}: cornet_s has the weights IMAGENET1K_V1 (= DEFAULT, the official {arch.CORNET_FILE}); "
            f"or pass a checkpoint path, or random[:SEED]")
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", arch.CORNET_FILE)
    if not os.path.isfile(cached):
        timeout = socket.getdefaulttimeout()
        try:
            socket.setdefaulttimeout(60)
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            # no hash check: the name's suffix is not known to be a sha256 prefix; the file is checked by its keys and shapes
            torch.hub.download_url_to_file(arch.CORNET_URL, cached, progress=False)
        except Exception as e:  # offline, or a broken download
            reason = str(e).splitlines()[0][:150] if str(e) else type(e).__name__
            die(f"cannot load the cornet_s IMAGENET1K_V1 weights ({reason}). Download {arch.CORNET_URL} and put it at {cached} "
                f"(torchvision's cache; set TORCH_HOME to move it), or pass the file: --weights /path/to/{arch.CORNET_FILE}")
        finally:
            socket.setdefaulttimeout(timeout)
    model = arch.build(arch.CORNET)
    model.load_state_dict(read_state_dict(cached, arch.CORNET))
    return model


def read_state_dict(path, name):
    """A checkpoint's state_dict, checked against the keys and shapes of the architecture `name`."""
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
    # a checkpoint saved before PyTorch 0.4.1 has no num_batches_tracked: load_state_dict fills it in (unused in eval mode)
    missing = sorted(k for k in set(expected) - set(sd) if not k.endswith("num_batches_tracked"))
    extra = sorted(set(sd) - set(expected))
    bad = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or extra or bad:
        what = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {extra[:3]}" if extra else "") + (f" wrong shape {bad[:3]}" if bad else "")
        kind = "torchvision " if name in arch.RESNETS else ""
        die(f"weights: {path!r} is not a {kind}{name} state_dict ({what.strip()}); is --arch right?")
    return sd


# ----------------------------------------------------------------------------------------------------
# The forward pass, written out so that it stops at the deepest layer asked for and so that Pre is the
# true bn2 output (torchvision's BasicBlock adds in place and would overwrite a hooked reference).

def stem(model, x):
    """What comes before the first residual block: ResNet's conv1 .. max-pool, CORnet-S's V1."""
    if isinstance(model, arch.CORnetS):
        return model.V1(x)
    return model.maxpool(model.relu(model.bn1(model.conv1(x))))


PARTS = ("in", "pre", "sum", "post")  # a block's values in forward order: 'sum' is in + pre, before the final ReLU


def block_forward(block, x, part="post"):
    """One residual block: {'in': skip summand, 'pre': the last BatchNorm's output before the sum (bn2 of a
    BasicBlock, bn3 of a Bottleneck), 'sum': in + pre (the released scripts' prerelu_out), 'post': ReLU(sum)}, as
    far as `part`. Nothing is done in place, so Pre stays the true BatchNorm output (torchvision's own forward adds
    and applies the ReLU in place)."""
    out = {"in": block.downsample(x) if block.downsample is not None else x}
    if part == "in":
        return out
    h = torch.relu(block.bn1(block.conv1(x)))
    if hasattr(block, "bn3"):  # Bottleneck: 1x1, 3x3, 1x1
        out["pre"] = block.bn3(block.conv3(torch.relu(block.bn2(block.conv2(h)))))
    else:
        out["pre"] = block.bn2(block.conv2(h))
    if part in ("sum", "post"):
        out["sum"] = out["pre"] + out["in"]
    if part == "post":
        out["post"] = torch.relu(out["sum"])
    return out


def part_of(net, layer, post_as_released=False):
    """(index of the layer's residual block, the block_forward part that is its value): a block output (the Post of
    its block, the In of the next) is 'post', or with post_as_released its pre-ReLU 'sum', as the released
    stream_inspect.py read it (docs/differences.md); a downsample BatchNorm is 'in', a bn2 'pre', either way."""
    i, role = net.where(layer)
    if post_as_released and net.name == arch.CORNET:
        die("--post_as_released is the released ResNet scripts' reading; CORnet-S has no released scripts (leave it false)")
    return i, "sum" if post_as_released and role == "post" else role


def head(model, x):
    """The logits from the last block's output: ResNet's average pool and fc, CORnet-S's decoder."""
    if isinstance(model, arch.CORnetS):
        return model.decoder(x)
    return model.fc(torch.flatten(model.avgpool(x), 1))


def block_post(net, model, i, h):
    """The output (Post) of residual block net.residual[i] from the previous block's output h (the stem's before the
    first). CORnet-S: step t of an area, from the previous step's output, or at t = 0 from the previous area's
    through the area's conv_input."""
    if net.name == arch.CORNET:
        name, t = net.residual[i].split(".")
        area = getattr(model, name)
        return arch.cornet_step(area, area.conv_input(h) if t == "0" else h, int(t))["post"]
    return block_forward(model.get_submodule(net.residual[i]), h)["post"]


def cornet_steps(model, x, last, part):
    """CORnet-S's steps 0..last (their index in net.residual: V2.0, V2.1, V4.0, ...), each as (index, {'in', 'pre',
    'post'}), the last one only as far as `part`: nothing after it runs. A step's modules are called once per step, so
    a hook on a module name does not tell the steps apart; this walk does."""
    h, i = model.V1(x), 0
    for name, _, _, times in arch.CORNET_AREAS:
        area = getattr(model, name)
        h = area.conv_input(h)
        for t in range(times):
            parts = arch.cornet_step(area, h, t, part if i == last else "post")
            yield i, parts
            if i == last:
                return
            h, i = parts["post"], i + 1


def features(net, model, x, layers, post_as_released=False):
    """{layer: feature map} for the named layers of `net` (an arch.Net), running the network only up to the deepest
    of them; post_as_released: block outputs before their final ReLU (part_of)."""
    wanted = {}
    for layer in layers:
        i, part = part_of(net, layer, post_as_released)
        wanted.setdefault(i, []).append((layer, part))
    last = max(wanted)
    deepest = max((p for _, p in wanted[last]), key=PARTS.index)
    out = {}
    if net.name == arch.CORNET:
        for i, parts in cornet_steps(model, x, last, deepest):
            for layer, part in wanted.get(i, []):
                out[layer] = parts[part]
        return out
    h = stem(model, x)
    for i in range(last + 1):
        block = model.get_submodule(net.residual[i])
        parts = block_forward(block, h, "post" if i < last else deepest)
        for layer, part in wanted.get(i, []):
            out[layer] = parts[part]
        h = parts.get("post")
    return out


def truncated(net, model, layer, post_as_released=False):
    """features(net, model, x, [layer], post_as_released)[layer] as a function of x alone (the same operations), with
    the layer's place looked up once: what torch.compile traces holds tensor operations only."""
    i, part = part_of(net, layer, post_as_released)
    if net.name == arch.CORNET:
        def steps(x):
            for _, parts in cornet_steps(model, x, i, part):
                pass
            return parts[part]
        return steps
    blocks = [model.get_submodule(name) for name in net.residual[:i + 1]]

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
def read_center(net, model, x, layers, post_as_released=False):
    """{layer: (B, C) float32 center-neuron activations} for a normalised batch x, in one truncated pass
    (post_as_released: block outputs before their final ReLU)."""
    return {k: center(v).float() for k, v in features(net, model, x, layers, post_as_released).items()}


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
    """docs/method.md section 3's transform S: center-crop to half the size, bilinear resize back."""
    h, w = x.shape[-2:]
    top, left = (h - size // 2) // 2, (w - size // 2) // 2
    crop = x[..., top:top + size // 2, left:left + size // 2]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------------
# A group crosscoder's encoder (docs/crosscoder.md): one definition for crosscoder.py's training and reading and for
# fzs.py's latent objective. A sample is the flattened (3, Z, C) center vectors of a block's In, Pre and Post at every
# zoom, each (role, zoom) block divided by its scale.

def encoder_columns(Z, C, one, encoder):
    """The positions, in a flattened (3, Z, C) sample, that the encoder reads: the zoom-1 block (zoom index `one`) of
    each role (zoom1), or every block (all)."""
    if encoder == "all":
        return np.arange(3 * Z * C)
    return np.concatenate([r * Z * C + one * C + np.arange(C) for r in range(3)])


def encoder_pre(p, x, cols):
    """(B, F) the latents' encoder pre-activations of scaled samples x (B, 3 Z C): (x - b_dec)[:, cols] @ w_enc + b_enc."""
    return (x - p["b_dec"])[:, cols] @ p["w_enc"] + p["b_enc"]
