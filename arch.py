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

CORnet-S (Kubilius et al. 2019; `--arch cornet_s`, docs/architectures.md "CORnet-S") is a recurrent network written out
here from its description, with the official checkpoint's module names. Its residual blocks are its time steps:
block 'V4.2' is step t = 2 of area V4, with In_t the skip summand (norm_skip's output at t = 0, Post_{t-1} after),
Pre_t the step's own norm3_t output before the sum and Post_t the step output after the ReLU.
"""

import collections
import dataclasses
import functools
import re

import torch
import torchvision

from cli import configure, die, main_guard

ARCH = "resnet18"  # a torchvision ResNet (resnet18, resnet34, resnet50, resnet101, resnet152, wide_resnet50_2, ...) or cornet_s (see ARCHS)
STEPS = 2560  # optimisation steps per unit (the paper's)
# ---- end of flags (below: fixed constants, not flags)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
           "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")  # every torchvision ResNet
CORNET = "cornet_s"  # CORnet-S, written out below
ARCHS = RESNETS + (CORNET,)  # every architecture the scripts know
ROLES = ("in", "pre", "post")  # a block's three probed layers, in forward order
CORNET_AREAS = (("V2", 64, 128, 2), ("V4", 128, 256, 4), ("IT", 256, 512, 2))  # (area, in, out channels, time steps)
CORNET_SCALE = 4  # the branch's bottleneck widening: out -> 4 out -> out
CORNET_JITTER = {"V2": 0, "V4": 4, "IT": 16}  # FZ pad/jitter by area (docs/architectures.md: by receptive field, as ResNet18's table)
CORNET_FILE = "cornet_s-1d3f7974.pth"  # the official checkpoint: a dict with 'state_dict', keys 'module.V1.conv1.weight', ...
CORNET_URL = "https://s3.amazonaws.com/cornet-models/" + CORNET_FILE


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
    """The FZ pad/jitter of the layers of block 'layerL.B' (docs/method.md section 2, by stage and position), or of
    CORnet-S step 'V4.2' (CORNET_JITTER, by area)."""
    if block_name.split(".")[0] in CORNET_JITTER:
        return CORNET_JITTER[block_name.split(".")[0]]
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
    """An untrained model of that architecture, a torchvision ResNet or CORnet-S (weights are loaded by the caller)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; the architectures are: {', '.join(ARCHS)}")
    if arch == CORNET:
        return CORnetS(num_classes).eval()
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes).eval()


# ----------------------------------------------------------------------------------------------------
# CORnet-S, from its description (Kubilius et al. 2019): V1, then three recurrent areas CORblock_S (V2, V4, IT) whose
# convolutions are shared across time steps and whose BatchNorms are not, then the decoder. Module names are those of
# the official checkpoint, so that it loads strictly: V1.conv1, V1.norm1, ..., V2.conv_input, V2.skip, V2.norm_skip,
# V2.conv1..3, V2.norm1_0, V2.norm2_0, V2.norm3_0, V2.norm1_1, ..., decoder.linear.

def conv(cin, cout, k, stride=1):
    return torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def cornet_area(cin, cout, times):
    """One CORblock_S: its modules by name (the forward is cornet_step). conv2's stride is set per step by cornet_step."""
    wide = cout * CORNET_SCALE
    m = {"conv_input": conv(cin, cout, 1), "skip": conv(cout, cout, 1, stride=2), "norm_skip": torch.nn.BatchNorm2d(cout),
         "conv1": conv(cout, wide, 1), "conv2": conv(wide, wide, 3), "conv3": conv(wide, cout, 1),
         "nonlin1": torch.nn.ReLU(), "nonlin2": torch.nn.ReLU(), "nonlin3": torch.nn.ReLU()}
    for t in range(times):
        m |= {f"norm1_{t}": torch.nn.BatchNorm2d(wide), f"norm2_{t}": torch.nn.BatchNorm2d(wide), f"norm3_{t}": torch.nn.BatchNorm2d(cout)}
    return torch.nn.ModuleDict(m)


def cornet_step(area, x, t, part="post"):
    """Step t of a CORblock_S on x (conv_input's output at t = 0, the previous step's output after): {'in': the skip
    summand (norm_skip(skip(x)) at t = 0, x after), 'pre': norm3_t's output before the sum, 'post': ReLU(pre + in)},
    as far as `part`. The 3x3 convolution has stride 2 at t = 0 and 1 after (the stride switch); nothing in place."""
    out = {"in": area.norm_skip(area.skip(x)) if t == 0 else x}
    if part == "in":
        return out
    norm1, norm2, norm3 = (area[f"norm{k}_{t}"] for k in (1, 2, 3))  # every step has its own BatchNorms
    stride = 2 if t == 0 else 1
    h = area.nonlin1(norm1(area.conv1(x)))
    h = area.nonlin2(norm2(torch.nn.functional.conv2d(h, area.conv2.weight, None, stride, 1)))
    out["pre"] = norm3(area.conv3(h))
    if part == "post":
        out["post"] = area.nonlin3(out["pre"] + out["in"])
    return out


class CORnetS(torch.nn.Module):
    """CORnet-S: V1 (conv 7x7/2, BN, ReLU, max-pool 3/2, conv 3x3, BN, ReLU), V2 (64 -> 128, 2 steps), V4 (128 -> 256,
    4 steps), IT (256 -> 512, 2 steps), decoder (average pool, linear 512 -> classes)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.V1 = torch.nn.Sequential(collections.OrderedDict(
            conv1=conv(3, 64, 7, stride=2), norm1=torch.nn.BatchNorm2d(64), nonlin1=torch.nn.ReLU(),
            pool=torch.nn.MaxPool2d(3, 2, 1), conv2=conv(64, 64, 3), norm2=torch.nn.BatchNorm2d(64), nonlin2=torch.nn.ReLU()))
        for area, cin, cout, times in CORNET_AREAS:
            setattr(self, area, cornet_area(cin, cout, times))
        self.decoder = torch.nn.Sequential(collections.OrderedDict(
            avgpool=torch.nn.AdaptiveAvgPool2d(1), flatten=torch.nn.Flatten(), linear=torch.nn.Linear(CORNET_AREAS[-1][2], num_classes)))
        for m in self.modules():  # He-initialised convolutions (as torchvision's ResNets), identity BatchNorms
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.V1(x)
        for name, _, _, times in CORNET_AREAS:
            area = getattr(self, name)
            x = area.conv_input(x)
            for t in range(times):
                x = cornet_step(area, x, t)["post"]
        return self.decoder(x)


def cornet_tables():
    """The block table, residual steps and places of CORnet-S: step 'A.t' of area A is (In_t, Pre_t, Post_t) =
    ('A.norm_skip' at t = 0, else 'A.output_{t-1}'; 'A.norm3_t'; 'A.output_t'). Layer names are area.module_step, so
    that a block name ('V4.2': its three layers) never names a layer."""
    blocks, residual, place, widths = {}, [], {}, {}
    for area, _, cout, times in CORNET_AREAS:
        for t in range(times):
            step = f"{area}.{t}"
            blocks[step] = (f"{area}.norm_skip" if t == 0 else f"{area}.output_{t - 1}", f"{area}.norm3_{t}", f"{area}.output_{t}")
            place[f"{area}.norm3_{t}"], place[f"{area}.output_{t}"] = (len(residual), "pre"), (len(residual), "post")
            if t == 0:
                place[f"{area}.norm_skip"] = (len(residual), "in")
            residual.append(step)
            widths |= {name: cout for name in (*blocks[step], step)}
    return blocks, residual, place, widths




# ----------------------------------------------------------------------------------------------------
# The probed units of one architecture, and the rules of their names.

@dataclasses.dataclass(frozen=True, eq=False)
class Net:
    """The tables of one architecture: blocks {'L.B': (In, Pre, Post) module names}, layers (the distinct layers of
    blocks, forward order), residual (every residual block 'layerL.B', forward order), widths {layer or residual
    block: channels}. ResNet18's (the paper's):
      1.1: layer1.0, layer1.1.bn2, layer1.1        2.0: layer2.0.downsample.1, layer2.0.bn2, layer2.0
      2.1: layer2.0, layer2.1.bn2, layer2.1        3.0, 3.1, 4.0, 4.1 likewise; 18 layers, 4,672 units.
    For CORnet-S the residual blocks are its 8 time steps (V2.0 .. IT.1). place {layer: (index in residual, role)}."""
    name: str
    blocks: dict
    layers: list
    residual: list
    widths: dict
    place: dict

    def unknown(self, layer):
        die(f"unknown layer {layer!r} for {self.name}; the layers are: {', '.join(self.layers)}")

    def where(self, layer):
        """(index of its residual block in residual, role): role is 'in' (the skip path's summand), 'pre' (the
        block's last BatchNorm output, before the sum) or 'post' (the block output). Only the probed layers are known."""
        if layer not in self.place:
            self.unknown(layer)
        return self.place[layer]

    def pre_modules(self, pre):
        """(BatchNorm, convolution) module names of a Pre layer: bn2 and conv2 of a BasicBlock, bn3 and conv3 of a
        Bottleneck, norm3_t and its area's conv3 (shared by the steps) in CORnet-S."""
        if self.name == CORNET:
            return pre, pre.split(".")[0] + ".conv3"
        return pre, pre[:-3] + "conv" + pre[-1]

    def block_of(self, layer):
        """The residual block a layer belongs to: 'layer2.1.bn2' -> 'layer2.1' (CORnet-S: 'V4.norm3_2' -> 'V4.2')."""
        return self.residual[self.where(layer)[0]]

    def post_of(self, layer):
        """The output layer of the block a layer belongs to: 'layer2.1.bn2' -> 'layer2.1', 'V4.norm3_2' -> 'V4.output_2'."""
        block = self.block_of(layer)
        return self.blocks[block][2] if self.name == CORNET else block

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


def resnet_place(layer, residual):
    """(index of its residual block, role) of a probed ResNet layer, by its name."""
    m = re.fullmatch(r"(layer[1-4]\.\d+)(\.bn[23]|\.downsample\.1)?", layer)
    return residual.index(m.group(1)), {None: "post", ".downsample.1": "in"}.get(m.group(2), "pre")


@functools.lru_cache(maxsize=None)
def net(name):
    """The Net of the architecture `name` (made once per name)."""
    if name not in ARCHS:
        die(f"unknown architecture {name!r}; the architectures are: {', '.join(ARCHS)}")
    if name == CORNET:
        table, residual, place, widths = cornet_tables()
        return Net(name, table, layers_of(table), residual, widths, place)
    model = build_meta(name)
    residual = residual_blocks(model)
    table = block_table(model)
    layers = layers_of(table)
    return Net(name, table, layers, residual, {n: channels(model, n) for n in dict.fromkeys(layers + residual)},
               {layer: resnet_place(layer, residual) for layer in layers})


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
    n_ = net(arch)
    what = "time steps (blocks: area.step)" if arch == CORNET else "residual blocks"
    lines = [f"{arch}: {len(n_.residual)} {what}, {len(n_.blocks)} probed (In / Pre / Post; channels; FZ jitter)"]
    for b, (In, Pre, Post) in n_.blocks.items():
        lines.append(f"  {b:>5}  {In:<24} {Pre:<16} {Post:<12} {n_.widths[Post]:>5}   jitter {jitter(n_.block_of(Post))}")
    n = sum(n_.widths[layer] for layer in n_.layers)
    lines.append(f"{len(n_.layers)} layers, {n:,} units; a full center sweep at {steps:,} steps is {n * steps / 1e6:,.1f} M image-steps")
    return lines


def main():
    configure(globals())
    if ARCH not in ARCHS:
        die(f"unknown architecture {ARCH!r}; the architectures are: {', '.join(ARCHS)}")
    if STEPS < 1:
        die(f"--steps must be at least 1, not {STEPS}")
    print("\n".join(describe(ARCH, STEPS)))


if __name__ == "__main__":
    main_guard(main)
