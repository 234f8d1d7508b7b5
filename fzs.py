"""Feature visualisations (FZs) of the units of ResNet18's residual stream (docs/method.md section 2; any torchvision ResNet with --arch).

For every unit (layer, channel) of the 18 In/Pre/Post layers: the image that maximises its center neuron
(and, when asked, the whole channel), made as in Olah et al. (Distill 2017) with lucent's image
parameterisation and transforms: Fourier basis, colour decorrelation, sigmoid; pad/jitter/scale/rotate by
layer; Adam 0.05 for 2,560 steps. Many units are optimised together, one image per unit, each image with its
own objective, and the network runs only up to the target layer, without weight gradients.

    python fzs.py                                              # all 4,672 units, center neuron
    python fzs.py --layers 2.1 --channels 0:16 --steps 256 --weights random
    python fzs.py --layers 2.1 --objectives channel --channels passing
    python fzs.py --layers 2.1 --objectives latent --channels 0:64     # latents of crosscoder.py's block 2.1
    torchrun --nproc_per_node=4 fzs.py                         # units split across GPUs

Output: RESULTS/fzs/<layer>/<objective>.pt with images (uint8 N x 3 x 224 x 224), channels, activation
(the objective on the stored 8-bit image, float32) and config. Interrupt at any time: a rerun resumes.
The latent objective's units are a block's crosscoder latents (in `channels`), its file fzs/<the block's Post>/latent.pt.
"""

import contextlib
import copy
import functools
import os
import shutil
import time
import zlib

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from tqdm import tqdm

import arch
from arch import parse_channels
from cli import amp_dtype, autocast, configure, die, init_ranks, main_guard, no_tf32, pick_device, precision, use_device
from results import (
    FZ_KEYS,
    LATENT_KEYS,
    check_fz_folder,
    check_made,
    command,
    config_mismatch,
    criteria_file,
    crosscoder_id,
    crosscoder_model,
    fz_file,
    fz_parts,
    fz_png,
    fzs_dir,
    load_pt,
    lock_results,
    read_criteria,
    read_fz,
    save_pt,
    versions,
)
from stream import center, encoder_columns, encoder_pre, features, load_model, normalize, to_float, truncated

ARCH = "resnet18"  # a torchvision ResNet (resnet18, resnet34, resnet50, resnet101, ...) or cornet_s (--list prints its blocks and units)
WEIGHTS = "IMAGENET1K_V1"  # torchvision weights of ARCH (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT), a state_dict path, or random[:SEED] (smoke runs only)
LAYERS = "all"  # 'all', layer names (layer2.1.bn2; cornet_s: V4.norm3_2) or blocks (2.1, cornet_s: V4.2 = its In, Pre and Post), comma-separated
CHANNELS = ":"  # Python-style ranges for every layer (0:16 or 3,7,10:20), or 'passing' (from RESULTS/criteria.json)
OBJECTIVES = ["center"]  # center (the center neuron; all analyses), channel (channel mean; figure grids), latent (a block's crosscoder latents: --layers names blocks)
STEPS = 2560  # optimisation steps per image (the author's setting)
LR = 0.05  # Adam learning rate
BATCH = 64  # units optimised together, one image each; the transform draw is shared within a batch
SEED = 0  # base seed: each batch of units derives its own from it, the layer and its channels
SIZE = 224  # image size (pixels)
SCALES = [1.0, 0.975, 1.025, 0.95, 1.05]  # lucent random_scale choices
ANGLES = [-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5]  # lucent random_rotate choices (degrees)
JITTER = ""  # pad/jitter overrides by residual block, e.g. layer2.1:16,layer3.0:8 (default: arch.jitter's rule, ResNet18's table of docs/method.md section 2)
PRE_AS_RELEASED = False  # True: Pre (bn2) units are optimised through the block output, as lucent's hooks did in the released scripts
POST_AS_RELEASED = False  # True: block outputs (every Post, and the In of x.1 blocks) are optimised before their final ReLU, as the released stream_inspect.py read them (docs/differences.md)
AMP = "auto"  # optimisation precision: auto (fp32, the measured default; AMP_AUTO=bf16 in the environment makes it bf16), fp32, bf16 or tf32 (GPU)
FOLD_BN = True  # fold eval-mode BatchNorm into the convolutions for the optimisation (the same function, faster)
COMPILE = False  # torch.compile the truncated network, one compiled function per target layer (for long sweeps on CUDA)
STREAMS = 1  # batches of one layer optimised at once, each with its own forward at BATCH units (on CUDA: its own stream)
DEVICE = "auto"  # auto, cpu, cuda or cuda:N (under torchrun: auto or cuda, and each rank takes cuda:LOCAL_RANK)
RESULTS = "results"  # results folder
PNG = True  # also write one PNG per unit, RESULTS/fzs/<layer>/<objective>/<channel>.png
LIST = False  # print ARCH's probed blocks (In / Pre / Post), its unit count and the cost of a full sweep at STEPS, then stop
# ---- end of flags (below: fixed constants, not flags)


# ----------------------------------------------------------------------------------------------------
# lucent's image parameterisation (lucent.optvis.param.image(SIZE, decorrelate=True, batch=n)), written
# out so that it lives on any device and draws from a given generator; tests check it equals lucent's.

COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()


def fft_image(seeds, size, device, sd=0.01):
    """Spectrum parameters of one image per seed, and a function that maps them to [0, 1] RGB images. Image i's
    initial spectrum is lucent's draw (torch.randn after torch.manual_seed(seeds[i])), whatever else is in the batch."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[: size // 2 + 1]
    freqs = np.sqrt(fx * fx + fy * fy)
    draws = [torch.randn(1, 3, *freqs.shape, 2, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    spectrum = (torch.cat(draws) * sd).to(device).requires_grad_(True)
    scale = torch.tensor(1.0 / np.maximum(freqs, 1.0 / size), dtype=torch.float32, device=device)[None, None, ..., None]
    color = COLOR.T.to(device)

    def image():
        x = torch.fft.irfftn(torch.view_as_complex(scale * spectrum), s=(size, size), norm="ortho") / 4.0
        # colour decorrelation: lucent's (x.permute(0, 2, 3, 1) @ color), summed out (the same floats, 3x faster)
        x = sum(x[:, i:i + 1] * color[i].view(1, 3, 1, 1) for i in range(3))
        return torch.sigmoid(x)
    return spectrum, image


# ----------------------------------------------------------------------------------------------------
# lucent's transforms (lucent.optvis.transform), each x, rng -> x, drawing from a numpy RandomState in
# lucent's order; one draw per step is shared by the batch, as in lucent. lucent calls three kornia 0.4.1
# functions (translate, get_rotation_matrix2d, warp_affine); they are written out below in plain torch, equal to
# kornia 0.4.1 bit for bit on the CPU in float32 (a test compares them over every jitter offset and angle used).

def pixel_to_unit(h, w):
    """kornia 0.4.1's normal_transform_pixel: pixel coordinates to [-1, 1], with the corners at -1 and 1."""
    m = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0], [0.0, 0.0, 1.0]])
    m[0, 0] = m[0, 0] * 2.0 / (w - 1.0)
    m[1, 1] = m[1, 1] * 2.0 / (h - 1.0)
    return m[None]


def affine_theta(M, h, w):
    """The sampling matrix (B, 2, 3) of kornia 0.4.1's warp_affine for the pixel matrix M (B, 2, 3), computed on the
    CPU: two 3x3 inverses on a GPU would each be a host synchronisation, at every warp of every step."""
    M3 = F.pad(M.cpu(), [0, 0, 0, 1], "constant", value=0.0)
    M3[..., -1, -1] += 1.0
    unit = pixel_to_unit(h, w).to(M3)
    dst_from_src = unit @ (M3 @ torch.inverse(unit))
    return torch.inverse(dst_from_src)[:, :2, :]


def warp_affine(x, M):
    """kornia 0.4.1's warp_affine(x, M, dsize=x's size): bilinear, zero padding. M (B, 2, 3) maps source pixels to
    destination pixels. kornia normalises pixels with the corners at -1 and 1 (size - 1) but samples with
    align_corners=False, so every warp also shifts by a fraction of a pixel: kept, since lucent's FZs have it.
    The matrix goes to x's device in one non-blocking copy (the same float32 bits as computing it there on a CPU)."""
    b, c, h, w = x.shape
    theta = affine_theta(M, h, w).to(device=x.device, dtype=x.dtype, non_blocking=True)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def translation_matrix(dx, dy, b):
    """kornia 0.4.1's translate matrix: identity plus (dx, dy) pixels, as (b, 2, 3)."""
    m = torch.eye(3).repeat(1, 1, 1)
    m[..., 0, 2:3] += dx
    m[..., 1, 2:3] += dy
    return m[..., :2, :3].expand(b, -1, -1)


def rotation_matrix(angle_degrees, h, w, b):
    """kornia 0.4.1's get_rotation_matrix2d about the image middle ((w - 1) / 2, (h - 1) / 2), scale 1, as (b, 2, 3)."""
    angle = torch.ones(b) * angle_degrees
    rad = angle * torch.tensor(3.14159265358979323846) / 180.0
    cos, sin = torch.cos(rad), torch.sin(rad)
    rot = torch.stack([cos, sin, -sin, cos], dim=-1).view(b, 2, 2)
    rot = rot @ (torch.eye(2).repeat(b, 1, 1) * torch.ones(b, 2).unsqueeze(2).repeat(1, 1, 2))
    alpha, beta = rot[:, 0, 0], rot[:, 0, 1]
    x, y = torch.full((b,), (w - 1) / 2), torch.full((b,), (h - 1) / 2)
    M = torch.zeros(b, 2, 3)
    M[..., 0:2, 0:2] = rot
    M[..., 0, 2] = (1.0 - alpha) * x - beta * y
    M[..., 1, 2] = beta * x + (1.0 - alpha) * y
    return M


def pad(w):
    return lambda x, rng: F.pad(x, [w] * 4, mode="reflect")


def jitter(d):
    def inner(x, rng):
        dx, dy = rng.choice(d), rng.choice(d)
        return warp_affine(x, translation_matrix(float(dx), float(dy), x.shape[0]))  # built on the CPU
    return inner


def random_scale(scales):
    def inner(x, rng):
        s = rng.choice(scales)
        h, w = x.shape[2:]
        sh, sw = int(np.ceil(s * h)), int(np.ceil(s * w))
        pad_x, pad_y = max(0, int(np.ceil((w - sw) / 2))), max(0, int(np.ceil((h - sh) / 2)))
        return F.pad(F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=True), [pad_y, pad_x] * 2)
    return inner


def random_rotate(angles):
    def inner(x, rng):
        b, _, h, w = x.shape
        M = rotation_matrix(float(rng.choice(angles)), h, w, b)  # built on the CPU, as lucent does
        return warp_affine(x.float(), M)
    return inner


def center_crop(size):
    return lambda x, rng: TF.center_crop(x, [size, size])


def transforms_for(j, scales, angles, size):
    """docs/method.md section 2: j = 0: scale, rotate; j > 0: pad(j), jitter(j), scale, rotate, jitter(j // 2), crop."""
    if j == 0:
        return [random_scale(scales), random_rotate(angles)]
    return [pad(j), jitter(j), random_scale(scales), random_rotate(angles), jitter(j // 2), center_crop(size)]


def fold_batchnorm(model):
    """A copy of the eval-mode model with every BatchNorm folded into the convolution before it. Each layer
    computes the same function (bn2 folded into conv2, or bn3 into conv3, still outputs Pre); only rounding differs."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    m = copy.deepcopy(model)
    m.conv1, m.bn1 = fuse_conv_bn_eval(m.conv1, m.bn1), torch.nn.Identity()
    for block in (m.layer1, m.layer2, m.layer3, m.layer4):
        for b in block:
            b.conv1, b.bn1 = fuse_conv_bn_eval(b.conv1, b.bn1), torch.nn.Identity()
            b.conv2, b.bn2 = fuse_conv_bn_eval(b.conv2, b.bn2), torch.nn.Identity()
            if hasattr(b, "bn3"):  # Bottleneck
                b.conv3, b.bn3 = fuse_conv_bn_eval(b.conv3, b.bn3), torch.nn.Identity()
            if b.downsample is not None:
                b.downsample = torch.nn.Sequential(fuse_conv_bn_eval(b.downsample[0], b.downsample[1]), torch.nn.Identity())
    return m.requires_grad_(False)


# ----------------------------------------------------------------------------------------------------
# The objectives: unit i of the batch is channel channels[i]; image i's loss term depends on image i only.

def objective(fmap, channels, kind):
    rows = torch.arange(len(channels), device=fmap.device)
    if kind == "center":
        return center(fmap)[rows, channels]
    if kind == "latent":  # fmap: the latents' encoder pre-activations (B, F) (latent_forward)
        return fmap[rows, channels]
    return fmap[rows, channels].mean(dim=(1, 2))


def latent_forward(net, model, block, cc, device):
    """The latent objective's forward pass, x -> (B, F): the encoder pre-activations of block's crosscoder (cc, as
    crosscoder.py saved it) at the center of x, the unzoomed view. The center vectors of the block's In, Pre and Post,
    each divided by its (role, zoom 1) scale, fill the zoom-1 blocks of a (3, Z, C) sample, the only blocks a zoom1
    encoder reads; stream.encoder_pre is crosscoder.py's own encoder."""
    layers = net.blocks[block]
    Z, C, one = len(cc["zooms"]), net.channels(layers[2]), list(cc["zooms"]).index(1.0)
    cols = torch.as_tensor(encoder_columns(Z, C, one, "zoom1"), device=device)
    scale = torch.as_tensor(cc["scale"], dtype=torch.float32)[:, one].to(device)  # (3,) In, Pre, Post at zoom 1
    p = {k: torch.as_tensor(cc["params"][k], dtype=torch.float32).to(device) for k in ("w_enc", "b_enc", "b_dec")}

    def forward(x):
        got = features(net, model, x, layers)
        v = torch.stack([center(got[layer]).float() for layer in layers], 1) / scale[None, :, None]  # (B, 3, C)
        sample = torch.zeros(len(x), 3, Z, C, dtype=torch.float32, device=x.device)
        sample[:, :, one] = v
        return encoder_pre(p, sample.reshape(len(x), -1), cols)
    return forward


@torch.no_grad()
def latent_on_images(forward, images, latents, device):
    """The latent objective of each unit on its stored 8-bit image, untransformed, in float32 (no TF32 on GPUs)."""
    with no_tf32():
        x = normalize(to_float(images).to(device))
        return objective(forward(x), torch.as_tensor(latents, device=device), "latent").cpu()


def latent_blocks(net, spec, results):
    """The blocks whose latents --objectives latent makes: those --layers names (2.1, or its Post layer layer2.1); with
    'all', every block that has a crosscoder file."""
    items = [s.strip() for s in (spec if isinstance(spec, (list, tuple)) else str(spec).split(",")) if s.strip()]
    posts = {roles[2]: b for b, roles in net.blocks.items()}
    if "all" in items:
        return [b for b in net.blocks if os.path.isfile(crosscoder_model(results, b))]
    return list(dict.fromkeys(item if item in net.blocks else posts[item] for item in items if item in net.blocks or item in posts))


def read_crosscoder(net, results, block, weights_id):
    """A block's crosscoder (crosscoder.py) for the latent objective, checked; one-line errors where it cannot be one."""
    path = crosscoder_model(results, block)
    if not os.path.isfile(path):
        die(f"--objectives latent: no crosscoder of block {block} ({path}); make it with "
            f"{command('crosscoder.py', f'--blocks {block}', net.name, weights_id, results)}")
    cc = load_pt(path, "crosscoder")
    check_made(cc["config"], path, net, weights_id, "crosscoder.py")
    if cc["config"].get("encoder") != "zoom1":
        die(f"--objectives latent: {path}'s encoder reads every zoom (--encoder {cc['config'].get('encoder')}); the latent "
            f"objective takes a zoom1 encoder only (docs/crosscoder.md)")
    if cc["config"].get("channels") != net.channels(net.blocks[block][2]) or 1.0 not in list(cc["zooms"]):
        die(f"--objectives latent: {path} is not a crosscoder of {net.name} block {block} at zoom 1 "
            f"({cc['config'].get('channels')} channels, zooms {list(cc['zooms'])})")
    return cc


def target_layer(net, layer, pre_as_released):
    """The layer whose output the optimisation reads. The released scripts' lucent hooks held a reference to
    bn2's output, which the block's in-place add and ReLU turn into the block output."""
    return net.post_of(layer) if pre_as_released and net.where(layer)[1] == "pre" else layer


def target_of(net, layer, cfg):
    """(target layer, post_as_released): what the optimisation of a unit of `layer` reads (stream.truncated's
    arguments). A block output is read before its ReLU under post_as_released; an aliased Pre (pre_as_released) is
    lucent's tensor, the post-ReLU block output, whatever post_as_released says."""
    target = target_layer(net, layer, cfg["pre_as_released"])
    return target, bool(cfg.get("post_as_released", False)) and target == layer


def parse_jitter(net, spec):
    """'layer2.1:16,layer3.0:8' -> {residual block: pad}, the overrides of arch.jitter's rule."""
    out, blocks = {}, net.residual
    for item in [t.strip() for t in str(spec).split(",") if t.strip()]:
        block, _, value = item.partition(":")
        if block.strip() not in blocks or not value.strip().isdigit():
            die(f"--jitter: cannot read {item!r}; use block:pad, e.g. layer2.1:16 (blocks of {net.name}: {blocks[0]} .. {blocks[-1]})")
        out[block.strip()] = int(value)
    return out


def render(net, model, layer, channels, kind, cfg, unit_seeds, transform_seed, device, amp, forward=None, on_step=None):
    """Optimise one image per unit (layer, channels[i]) for cfg['steps'] steps; uint8 N x 3 x S x S images.
    Image i starts from the spectrum drawn with unit_seeds[i]; the transform draws (shared by the batch) come from
    a RandomState(transform_seed). With one unit and both seeds equal, this is lucent's render_vis after seeding."""
    return render_groups(net, model, layer, kind, cfg, [(channels, unit_seeds, transform_seed)], device, amp, forward, on_step)[0]


def render_groups(net, model, layer, kind, cfg, groups, device, amp, forward=None, on_step=None):
    """render(net) for several batches of units of one layer at once: groups = [(channels, unit_seeds, transform_seed)].
    Each group keeps its own spectrum, transform draws and optimiser, and runs its own forward and backward at its own
    batch size, so its images are the ones render(net) gives it alone (bit for bit on the CPU). On a GPU each group runs
    on its own CUDA stream, so that small batches of deep layers fill the card together. Returns one uint8 tensor a
    group; on_step() is called once per step (all groups)."""
    forward = forward or truncated(net, model, *target_of(net, layer, cfg))
    steps = transforms_for(cfg["jitter"], cfg["scales"], cfg["angles"], cfg["size"])
    # inputs in the model's memory layout (fzs.py runs it channels_last: faster convolutions on CPUs and GPUs)
    first = next(model.parameters())  # the first convolution's weight (conv1, or CORnet-S's V1.conv1)
    layout = torch.channels_last if first.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    states = []
    for channels, unit_seeds, tseed in groups:
        spectrum, image = fft_image(unit_seeds, cfg["size"], device)
        states.append((np.random.RandomState(tseed), image, torch.optim.Adam([spectrum], lr=cfg["lr"]),
                       torch.as_tensor(channels, device=device)))
    streams = side_streams(device, len(states)) if device.type == "cuda" and len(states) > 1 else None
    for s in streams or []:
        s.wait_stream(torch.cuda.current_stream(device))  # the spectra were made on the default stream
    for _ in range(cfg["steps"]):
        for g, (rng, image, optimizer, idx) in enumerate(states):
            with torch.cuda.stream(streams[g]) if streams else contextlib.nullcontext():
                optimizer.zero_grad(set_to_none=True)
                x = image()
                for t in steps:
                    x = t(x, rng)
                x = normalize(x).contiguous(memory_format=layout)
                with autocast(device, amp):
                    loss = -objective(forward(x), idx, kind).float().sum()
                loss.backward()
                optimizer.step()
        if on_step is not None:
            on_step()
    for s in streams or []:
        torch.cuda.current_stream(device).wait_stream(s)
    with torch.no_grad():
        return [(image() * 255).to(torch.uint8).cpu() for _, image, _, _ in states]  # as lucent's export: floor to 8 bits


@functools.lru_cache(maxsize=None)
def side_streams(device, n):
    """n CUDA streams of a device, made once and reused by every call: the caching allocator reuses a freed block only
    on the stream that allocated it, so new streams per batch would strand memory until a costly full release."""
    return [torch.cuda.Stream(device) for _ in range(n)]


def compile_forward(net, model, target, n_targets, backend="inductor", post_as_released=False):
    """torch.compile of the truncated network up to `target` (one compiled function per target layer). Every target
    shares truncated(net)'s code, so dynamo's recompile limit (8 by default, after which it runs the rest in eager mode,
    silently) is raised to one graph per target, input size and batch size: jitter-0 layers see 4 sizes (224, 225, 230,
    236), and a layer's last batch can be smaller than the others."""
    import torch._dynamo.config as dynamo
    limit = 8 * n_targets + 8
    for name in ("recompile_limit", "cache_size_limit"):  # the name since torch 2.6, and the older one
        if hasattr(dynamo, name) and getattr(dynamo, name) < limit:
            setattr(dynamo, name, limit)
    return torch.compile(truncated(net, model, target, post_as_released), backend=backend, dynamic=False)


@torch.no_grad()
def objective_on_images(net, model, layer, images, channels, kind, device, post_as_released=False):
    """The objective of each unit on its stored 8-bit image, untransformed, in float32 (no TF32 on GPUs); a block output
    before its ReLU under post_as_released."""
    with no_tf32():
        x = normalize(to_float(images).to(device))
        fmap = features(net, model, x, [layer], post_as_released)[layer].float()
        return objective(fmap, torch.as_tensor(channels, device=device), kind).cpu()


# ----------------------------------------------------------------------------------------------------
# Seeds and batches. A unit's image depends only on the config and the unit: its initial spectrum is drawn from
# (SEED, layer, objective, channel), and the transform draws it shares with its batch from (SEED, layer,
# objective, channel // BATCH). Batch k is always channels k*BATCH .. (k+1)*BATCH-1 and is always optimised whole,
# whichever of its units a run asks for (the others are made and not kept): a float32 convolution's rounding can
# depend on how many images share it (the CPU's convolution library picks its blocking by batch size), so the
# batch's make-up must be the same in every run. A subset run, an extended run and a full run then give the same
# image for the same unit. A subset of a few channels costs the whole batch: ask for small subsets with a small
# --batch (it is part of the config).

def batch_members(group, batch, n):
    """The channels of batch `group` of a layer with n channels: group*batch .. min((group+1)*batch, n) - 1."""
    return list(range(group * batch, min((group + 1) * batch, n)))

def unit_seed(seed, layer, kind, channel):
    return zlib.crc32(f"{seed}|{layer}|{kind}|{channel}".encode()) & 0x7FFFFFFF


def transform_seed(seed, layer, kind, group):
    return zlib.crc32(f"{seed}|{layer}|{kind}|batch {group}".encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------------------------------
# Files. Each finished batch is a part file in RESULTS/fzs/<layer>/<objective>.parts/. Parts are merged into
# RESULTS/fzs/<layer>/<objective>.pt, with what that file already held, and then removed. Every part found there,
# from this run or an interrupted one, counts as made and is merged.

def part_path(results, layer, kind, group, channels):
    tag = zlib.crc32(",".join(map(str, channels)).encode()) & 0xFFFFFFFF
    return os.path.join(fz_parts(results, layer, kind), f"{group:04d}-{tag:08x}.pt")


def check_config(net, path, cfg, stored):
    net.check(stored, path)
    why = config_mismatch(stored, cfg, FZ_KEYS + LATENT_KEYS)
    if why:
        die(f"{path} was made under another config ({why}); use another --results folder or remove it")


def existing(net, results, layer, kind, cfg):
    """The FZ file of (layer, kind) (or None), refused if it was made under another config."""
    data = read_fz(results, layer, kind, required=False)
    if data is not None:
        check_config(net, fz_file(results, layer, kind), cfg, data["config"])
    return data


def parts_of(net, results, layer, kind, cfg):
    """{path: part} of every finished part file of (layer, kind); one made under another config is refused."""
    folder = fz_parts(results, layer, kind)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".pt") and not n.startswith(".")) if os.path.isdir(folder) else []
    out = {}
    for name in names:
        path = os.path.join(folder, name)
        out[path] = load_pt(path, "FZ part file")
        check_config(net, path, cfg, out[path]["config"])
    return out


def merge(net, results, layer, kind, cfg, png):
    """Merge every part file of (layer, kind) into its final file, with what that file already held; png: also write
    the PNGs of the new units (--png)."""
    parts = parts_of(net, results, layer, kind, cfg)
    if not parts:
        return
    old = existing(net, results, layer, kind, cfg)
    pieces = ([old] if old else []) + list(parts.values())
    channels = torch.cat([p["channels"] for p in pieces])
    order = channels.argsort(stable=True)
    keep = order[torch.cat([torch.tensor([True]), channels[order][1:] != channels[order][:-1]])]  # one per channel
    new = {"images": torch.cat([p["images"] for p in pieces])[keep].contiguous(), "channels": channels[keep],
           "activation": torch.cat([p["activation"] for p in pieces])[keep], "config": {**cfg, "versions": versions()}}
    save_pt(new, fz_file(results, layer, kind))
    if png:
        write_pngs(results, layer, kind, new, skip=set(old["channels"].tolist()) if old else set())
    shutil.rmtree(fz_parts(results, layer, kind), ignore_errors=True)  # the parts and any temp file a kill left


def write_pngs(results, layer, kind, data, skip):
    from PIL import Image
    for img, c in zip(data["images"], data["channels"].tolist()):
        if c not in skip:
            path = fz_png(results, layer, kind, c)  # next to <objective>.pt
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)


def passing_channels(net, results, layer):
    """Channels of a layer that pass the criteria in any block the layer belongs to (criteria.json)."""
    crit = read_criteria(results, net, required="--channels passing needs it")
    blocks = crit.get("blocks", {})
    return sorted({c for b, names in net.blocks.items() if layer in names for c in blocks.get(b, {}).get("passing", [])})


# ----------------------------------------------------------------------------------------------------

def main():
    configure(globals())
    net = arch.net(ARCH)
    if LIST:
        print("\n".join(arch.describe(ARCH, STEPS)))
        return
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(DEVICE)  # checks the torchrun launch (LOCAL_RANK, one GPU per rank) before any group is made
    prec = precision(AMP, device)
    device_name = use_device(device, prec)  # the current GPU; TF32 only under --amp tf32
    init_ranks(world)  # under torchrun: the ranks meet at two barriers (after planning, before merging)
    layers = net.parse_layers(LAYERS)
    kinds = OBJECTIVES if isinstance(OBJECTIVES, list) else [OBJECTIVES]
    for k in kinds:
        if k not in ("center", "channel", "latent"):
            die(f"unknown objective {k!r}: use center, channel and/or latent")
    for flag, on in (("--pre_as_released", PRE_AS_RELEASED), ("--post_as_released", POST_AS_RELEASED)):
        if "latent" in kinds and on:  # crosscoder.py's data stage reads the paper's Pre and Post
            die(f"{flag} does not apply to --objectives latent: the crosscoder was trained on the paper's Pre and Post")
    if "latent" in kinds and CHANNELS == "passing":
        die("--channels passing names channels, not latents: give the latents as ranges, e.g. --channels 0:64")
    if STEPS < 1 or BATCH < 1 or STREAMS < 1:
        die("--steps, --batch and --streams must be at least 1")
    if SIZE < 32:
        die(f"--size must be at least 32 pixels (the network halves it five times), not {SIZE}")
    if not LR > 0:
        die(f"--lr must be positive, not {LR}")
    if not SCALES or min(SCALES) <= 0:
        die(f"--scales must be one or more positive factors such as 1,0.975,1.025, not {','.join(map(str, SCALES)) or 'empty'}")
    if not ANGLES:
        die("--angles must list one or more angles in degrees, such as -5,0,5")
    jitter = {b: arch.jitter(b) for b in net.residual} | parse_jitter(net, JITTER)
    for block, j in jitter.items():
        if j < 0 or j == 1:
            die(f"jitter of {block} must be 0 or at least 2 (lucent's jitter(d) needs d > 1), not {j}")
    if rank == 0:
        lock = lock_results(RESULTS, "fzs.py")  # noqa: F841 (held until the process ends)
    check_fz_folder(RESULTS, net)  # no FZs of another architecture in this folder
    channels_of = {layer: [] if kinds == ["latent"] else passing_channels(net, RESULTS, layer) if CHANNELS == "passing" else
                   parse_channels(CHANNELS, net.channels(layer), layer) for layer in layers}
    for layer, channels in channels_of.items():
        if CHANNELS == "passing" and not channels:
            print(f"fzs: no channel of {layer} passes the criteria in {criteria_file(RESULTS)}: nothing to "
                  f"make for it (name channels by hand with --channels, e.g. --channels 0:8)")
    model, weights_id = load_model(net.name, WEIGHTS, device)
    model = model.to(memory_format=torch.channels_last)  # measures the stored images
    amp = amp_dtype(prec)
    fold = FOLD_BN and net.name != arch.CORNET  # CORnet-S: a convolution shared by steps with their own BatchNorms
    if FOLD_BN and not fold:
        print("fzs: --fold_bn does not apply to cornet_s (each step has its own BatchNorms after shared convolutions): "
              "the optimisation runs the BatchNorms as they are")
    optimised = fold_batchnorm(model) if fold else copy.deepcopy(model)  # runs the optimisation
    if amp is not None:  # weights cast to bf16 once, not by autocast at every step (the same arithmetic)
        optimised = optimised.to(amp)
    latents = {}  # --objectives latent: {a block's Post layer: (its latents asked for, their count, optimised and measured forwards, id)}
    for b in latent_blocks(net, LAYERS, RESULTS) if "latent" in kinds else []:
        cc = read_crosscoder(net, RESULTS, b, weights_id)
        n = cc["params"]["b_enc"].shape[0]
        latents[net.blocks[b][2]] = (parse_channels(CHANNELS, n, f"block {b}'s latents"), n, latent_forward(net, optimised, b, cc, device),
                                     latent_forward(net, model, b, cc, device), crosscoder_id(RESULTS, b))
    if "latent" in kinds and not latents:
        die(f"--objectives latent: --layers {LAYERS} names no block with a crosscoder (python crosscoder.py makes them)")

    # The plan: per (layer, objective) the channels not made yet (in the final file or a part file), by batch.
    plan, cfgs, made = [], {}, 0
    for layer, channels in channels_of.items():
        for kind in kinds:
            if kind == "latent" and layer not in latents:
                continue  # latents belong to a block: its Post layer holds them
            channels, n_units = (latents[layer][0], latents[layer][1]) if kind == "latent" else (channels_of[layer], net.channels(layer))
            cfg = {"arch": ARCH, "layer": layer, "objective": kind, "weights": weights_id, "seed": SEED, "steps": STEPS, "lr": LR,
                   "batch": BATCH, "size": SIZE, "scales": list(SCALES), "angles": list(ANGLES),
                   "jitter": jitter[net.block_of(layer)], "pre_as_released": PRE_AS_RELEASED,
                   "post_as_released": POST_AS_RELEASED, "fold_bn": fold,
                   "amp": prec, "param": "lucent fft, decorrelate, sd 0.01", "device": device.type,
                   "device_name": device_name, **({"crosscoder": latents[layer][4]} if kind == "latent" else {})}
            cfgs[layer, kind] = cfg
            old = existing(net, RESULTS, layer, kind, cfg)
            done = set(old["channels"].tolist()) if old else set()
            for part in parts_of(net, RESULTS, layer, kind, cfg).values():
                done |= set(part["channels"].tolist())
            made += sum(c in done for c in channels)
            todo = [c for c in channels if c not in done]
            for group in sorted({c // BATCH for c in todo}):  # whole batches: the units asked for and their batch-mates
                plan.append((layer, kind, group, [c for c in todo if c // BATCH == group],
                             batch_members(group, BATCH, n_units)))
    if world > 1:
        torch.distributed.barrier()  # every rank has planned before any rank writes a part
    mine = plan[rank::world]
    units, optimised_units = sum(len(p[3]) for p in mine), sum(len(p[4]) for p in mine)
    extra = f"; {optimised_units - units} batch-mate(s) optimised, not kept" if optimised_units > units else ""
    print(f"fzs: {len(layers)} layer(s), objectives {','.join(kinds)}, {units} unit(s) to make in {len(mine)} batch(es) "
          f"of up to {BATCH} ({made} already made{extra}), {STEPS} steps, weights {weights_id}, {device}, {prec}"
          + (f", rank {rank} of {world}" if world > 1 else ""))

    # Batches of one (layer, objective) go STREAMS at a time; each keeps its own part file.
    chunks = []
    for entry in mine:
        if chunks and chunks[-1][0][:2] == entry[:2] and len(chunks[-1]) < STREAMS:
            chunks[-1].append(entry)
        else:
            chunks.append([entry])
    compiled, n_targets = {}, len({target_of(net, p[0], cfgs[p[:2]]) for p in mine})
    t0 = time.time()
    with tqdm(total=optimised_units * STEPS, unit="img-step", unit_scale=True, smoothing=0.05, disable=units == 0) as bar:
        for n, chunk in enumerate(chunks):
            layer, kind = chunk[0][:2]
            bar.set_description(f"{layer} {kind} {chunk[0][3][0]}..{chunk[-1][3][-1]}")
            cfg = cfgs[layer, kind]
            target = target_of(net, layer, cfg)  # (layer, post_as_released): one compiled function each
            if COMPILE and kind != "latent" and target not in compiled:
                compiled[target] = compile_forward(net, optimised, target[0], n_targets, post_as_released=target[1])
            groups = [(members, [unit_seed(SEED, layer, kind, c) for c in members], transform_seed(SEED, layer, kind, group))
                      for _, _, group, _, members in chunk]
            forward = latents[layer][2] if kind == "latent" else compiled.get(target)
            images = render_groups(net, optimised, layer, kind, cfg, groups, device, amp, forward,
                                   on_step=lambda k=sum(len(g[0]) for g in groups): bar.update(k))
            for (_, _, group, channels, members), imgs in zip(chunk, images):
                activation = (latent_on_images(latents[layer][3], imgs, members, device) if kind == "latent" else
                              objective_on_images(net, model, layer, imgs, members, kind, device, POST_AS_RELEASED))  # the whole batch: the same rounding
                keep = [members.index(c) for c in channels]  # the units asked for
                save_pt({"images": imgs[keep], "channels": torch.tensor(channels, dtype=torch.int64), "activation": activation[keep],
                         "config": cfg}, part_path(RESULTS, layer, kind, group, channels))
            if world == 1 and all(c[0][:2] != (layer, kind) for c in chunks[n + 1:]):
                merge(net, RESULTS, layer, kind, cfg, PNG)  # the last batch of this (layer, objective): its file is complete
    elapsed = time.time() - t0
    if world > 1:
        torch.distributed.barrier()  # every rank's parts are written
    if rank == 0:
        for (layer, kind), cfg in cfgs.items():
            merge(net, RESULTS, layer, kind, cfg, PNG)  # also the parts an interrupted run left
    if world > 1:
        torch.distributed.destroy_process_group()
    if units:
        print(f"fzs: made {units} FZs in {elapsed:.1f} s ({units * STEPS / max(elapsed, 1e-9):.0f} image-steps/s); "
              f"results in {fzs_dir(RESULTS)}")


if __name__ == "__main__":
    main_guard(main, "finished batches are saved as part files; run the same command again to resume")
