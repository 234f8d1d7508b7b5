"""The residual stream of any torchvision ResNet, derived from the model rather than typed in.

Every torchvision ResNet has the same residual stream; only the block type differs (BasicBlock in resnet18/34,
Bottleneck in resnet50 and up). For each block L.B of stage L (1..4), position B:
- In: the skip path's summand when it is a residual-stream layer: the block's own downsample BatchNorm
  (`layerL.B.downsample.1`) when it has one, else the previous block's output. ResNet18's block 1.0 has neither
  (its skip path adds the max-pool output), so it is not probed; that is why the paper starts at 1.1. In a
  Bottleneck network block 1.0 has a downsample, so it is probed.
- Pre: the block's last BatchNorm before the sum (`bn2` in a BasicBlock, `bn3` in a Bottleneck).
- Post: the block output.

The FZ jitter rule (METHOD.md section 2's table for ResNet18, by stage and position): jitter 0 in stage 1 and in
the first block of stage 2; 4 in the rest of stage 2 and the first block of stage 3; 16 in the rest of stage 3
and in stage 4. It reproduces ResNet18's table exactly (a test) and extends to any depth.

The scripts read these tables through stream.use_arch(ARCH) (stream.BLOCKS, LAYERS, RESIDUAL_BLOCKS, WIDTHS).
"""

import functools

import torch
import torchvision

# every torchvision ResNet (a tuple() call, not a literal, so that it is no command-line flag)
ARCHS = tuple(["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
               "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"])


def residual_blocks(model):
    """The torchvision module names of the residual blocks, in forward order: ['layer1.0', 'layer1.1', ...]."""
    return [f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in range(len(model.get_submodule(f"layer{s}")))]


def block_table(model):
    """{block 'L.B': (In, Pre, Post) module names} for every probed block, in forward order."""
    table, previous = {}, None
    for name in residual_blocks(model):
        block = model.get_submodule(name)
        pre = f"{name}.bn3" if hasattr(block, "bn3") else f"{name}.bn2"
        skip = f"{name}.downsample.1" if block.downsample is not None else previous
        if skip is not None:  # block 1.0 of a BasicBlock network adds the max-pool output: not a residual-stream layer
            table[name[5:]] = (skip, pre, name)
        previous = name
    return table


def layers_of(table):
    """The distinct layers of a block table, in forward order."""
    return list(dict.fromkeys(layer for roles in table.values() for layer in roles))


def channels(model, layer):
    """The number of channels of a layer (a BatchNorm, or a block whose output is its last BatchNorm's)."""
    module = model.get_submodule(layer)
    if isinstance(module, torch.nn.BatchNorm2d):
        return module.num_features
    return (module.bn3 if hasattr(module, "bn3") else module.bn2).num_features


def units(model):
    """The number of units (center neurons) of a full sweep: the channels of every probed layer."""
    return sum(channels(model, layer) for layer in layers_of(block_table(model)))


def jitter(block_name):
    """The FZ pad/jitter of the layers of block 'layerL.B' (METHOD.md section 2, by stage and position)."""
    stage, position = int(block_name[5]), int(block_name.split(".")[1])
    if stage == 1 or (stage == 2 and position == 0):
        return 0
    if stage == 2 or (stage == 3 and position == 0):
        return 4
    return 16


def build_meta(arch):
    """The model's structure on the meta device: no memory, no initialisation cost."""
    with torch.device("meta"):
        return build(arch)


@functools.lru_cache(maxsize=None)
def tables(arch):
    """(block table, residual blocks, {layer or block: channels}) of an architecture."""
    model = build_meta(arch)
    names = residual_blocks(model)
    table = block_table(model)
    return table, names, {n: channels(model, n) for n in dict.fromkeys(layers_of(table) + names)}


@functools.lru_cache(maxsize=None)
def image_bytes(arch, size=224):
    """Bytes of all the float32 feature maps one image makes in a forward pass (every module's output, counted on the
    meta device): an upper bound of what inference needs per image, for --batch auto."""
    model, total = build_meta(arch), [0]

    def count(_module, _inputs, out):
        total[0] += out.numel() * 4 if torch.is_tensor(out) else 0
    for m in model.modules():
        if not list(m.children()):
            m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    return total[0]


def build(arch, num_classes=1000):
    """An untrained torchvision model of that architecture (weights are loaded by the caller)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; the torchvision ResNets are: {', '.join(ARCHS)}")
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes).eval()


# ----------------------------------------------------------------------------------------------------
# `python arch.py --arch resnet50`: the block table, the unit count and the cost of a full center sweep.

ARCH = "resnet18"  # a torchvision ResNet: resnet18, resnet34, resnet50, resnet101, resnet152, wide_resnet50_2, ... (see ARCHS)
STEPS = 2560  # optimisation steps per unit (the paper's)


def describe(arch, steps):
    """The block table, the unit count and the image-steps of a full center sweep, as printed lines."""
    model = build_meta(arch)
    table = block_table(model)
    lines = [f"{arch}: {len(residual_blocks(model))} residual blocks, {len(table)} probed (In / Pre / Post; channels; FZ jitter)"]
    for b, (In, Pre, Post) in table.items():
        lines.append(f"  {b:>5}  {In:<24} {Pre:<16} {Post:<10} {channels(model, Post):>5}   jitter {jitter(Post)}")
    n = units(model)
    lines.append(f"{len(layers_of(table))} layers, {n:,} units; a full center sweep at {steps:,} steps is {n * steps / 1e6:,.1f} M image-steps")
    return lines


def main():
    from stream import configure, die
    configure(globals())
    if ARCH not in ARCHS:
        die(f"unknown architecture {ARCH!r}; the torchvision ResNets are: {', '.join(ARCHS)}")
    if STEPS < 1:
        die(f"--steps must be at least 1, not {STEPS}")
    print("\n".join(describe(ARCH, STEPS)))


if __name__ == "__main__":
    from stream import main_guard
    main_guard(main)
