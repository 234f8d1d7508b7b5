"""The residual stream of any torchvision ResNet, derived from the model rather than typed in.

Every torchvision ResNet has the same residual stream; only the block type differs (BasicBlock in resnet18/34,
Bottleneck in resnet50 and up). For each block L.B of stage L (1..4), position B:
- In: the skip path's summand when it is a residual-stream layer: the block's own downsample BatchNorm
  (`layerL.B.downsample.1`) when it has one, else the previous block's output. ResNet18's block 1.0 has neither
  (its skip path adds the max-pool output), so it is not probed; that is why the paper starts at 1.1. In a
  Bottleneck network block 1.0 has a downsample, so it is probed.
- Pre: the block's last BatchNorm before the sum (`bn2` in a BasicBlock, `bn3` in a Bottleneck).
- Post: the block output.

The FZ jitter rule (docs/method.md section 2's table for ResNet18, by stage and position): jitter 0 in stage 1 and in
the first block of stage 2; 4 in the rest of stage 2 and the first block of stage 3; 16 in the rest of stage 3
and in stage 4. It reproduces ResNet18's table exactly (a test) and extends to any depth.

A script holds one Net (`net = arch.net(ARCH)`): the tables of its architecture, and the names' rules (where,
parse_layers, ...). `python arch.py --arch resnet50` prints the table.
"""

import dataclasses
import functools
import re

import torch
import torchvision

from cli import configure, die, main_guard

ARCH = "resnet18"  # a torchvision ResNet: resnet18, resnet34, resnet50, resnet101, resnet152, wide_resnet50_2, ... (see ARCHS)
STEPS = 2560  # optimisation steps per unit (the paper's)
# ---- end of flags (below: fixed constants, not flags)

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
         "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")  # every torchvision ResNet
ROLES = ("in", "pre", "post")  # a block's three probed layers, in forward order


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
    """The FZ pad/jitter of the layers of block 'layerL.B' (docs/method.md section 2, by stage and position)."""
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
# The probed units of one architecture, and the rules of their names.

@dataclasses.dataclass(frozen=True, eq=False)
class Net:
    """The tables of one architecture: blocks {'L.B': (In, Pre, Post) module names}, layers (the distinct layers of
    blocks, forward order), residual (every residual block 'layerL.B', forward order), widths {layer or residual
    block: channels}. ResNet18's (the paper's):
      1.1: layer1.0, layer1.1.bn2, layer1.1        2.0: layer2.0.downsample.1, layer2.0.bn2, layer2.0
      2.1: layer2.0, layer2.1.bn2, layer2.1        3.0, 3.1, 4.0, 4.1 likewise; 18 layers, 4,672 units."""
    name: str
    blocks: dict
    layers: list
    residual: list
    widths: dict

    def unknown(self, layer):
        die(f"unknown layer {layer!r} for {self.name}; the layers are: {', '.join(self.layers)}")

    def where(self, layer):
        """(index of its residual block in residual, role): role is 'in' (the skip path's summand), 'pre' (the
        block's last BatchNorm output, before the sum) or 'post' (the block output). Only the probed layers are known."""
        m = re.fullmatch(r"(layer[1-4]\.\d+)(\.bn[23]|\.downsample\.1)?", layer)
        if m is None or layer not in self.layers:
            self.unknown(layer)
        role = {None: "post", ".downsample.1": "in"}.get(m.group(2), "pre")
        return self.residual.index(m.group(1)), role

    def block_of(self, layer):
        """The residual block a layer belongs to: 'layer2.1.bn2' -> 'layer2.1'."""
        return self.residual[self.where(layer)[0]]

    def channels(self, layer):
        """The number of channels of a probed layer or residual block."""
        if layer not in self.widths:
            self.unknown(layer)
        return self.widths[layer]

    def check(self, config, path):
        """Die when the result file at `path` (its config) was made with another architecture."""
        made = config.get("arch", "resnet18")
        if made != self.name:
            die(f"{path} was made with --arch {made}, this run is --arch {self.name}: pass --arch {made}, "
                f"or use another --results folder for {self.name} (architectures are never mixed)")

    def parse_block_channels(self, spec, flag="--channels"):
        """'2.1:3,17,40:48;3.1:0,9' -> {block: sorted channels of its Post} (blocks separated by ';')."""
        out = {}
        for item in [s.strip() for s in spec.split(";") if s.strip()]:
            block, sep, chans = item.partition(":")
            block = block.strip()
            if not sep or block not in self.blocks:
                die(f"{flag}: cannot read {item!r}; use block:channels;... e.g. 2.1:3,17,40:48;3.1:0,9 "
                    f"(blocks: {', '.join(self.blocks)})")
            out[block] = parse_channels(chans, self.channels(self.blocks[block][2]), f"block {block}")
        return out

    def parse_layers(self, spec):
        """'all', or comma-separated layer names and block names ('2.1' = its In, Pre and Post layers), in forward
        order."""
        names = []
        for item in [s.strip() for s in (spec if isinstance(spec, (list, tuple)) else str(spec).split(",")) if s.strip()]:
            if item == "all":
                names += self.layers
            elif item in self.blocks:
                names += self.blocks[item]
            else:
                self.where(item)  # dies on a bad name
                names.append(item)
        if not names:
            die("no layers given")
        return sorted(set(names), key=lambda n: (self.where(n)[0], ROLES.index(self.where(n)[1])))


@functools.lru_cache(maxsize=None)
def net(name):
    """The Net of the torchvision ResNet `name` (made once per name)."""
    if name not in ARCHS:
        die(f"unknown architecture {name!r}; the torchvision ResNets are: {', '.join(ARCHS)}")
    model = build_meta(name)
    residual = residual_blocks(model)
    table = block_table(model)
    layers = layers_of(table)
    return Net(name, table, layers, residual,
               {n: channels(model, n) for n in dict.fromkeys(layers + residual)})


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


# ----------------------------------------------------------------------------------------------------
# `python arch.py --arch resnet50`: the block table, the unit count and the cost of a full center sweep.


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
    configure(globals())
    if ARCH not in ARCHS:
        die(f"unknown architecture {ARCH!r}; the torchvision ResNets are: {', '.join(ARCHS)}")
    if STEPS < 1:
        die(f"--steps must be at least 1, not {STEPS}")
    print("\n".join(describe(ARCH, STEPS)))


if __name__ == "__main__":
    main_guard(main)
