"""A FLOP-based estimate of the full FZ sweep on a GPU, counted on this CPU (torch.utils.flop_counter).

For each probed layer: the FLOPs of one optimisation step of one image (the truncated forward to the layer on the
folded model, and its backward to the image), counted by torch's FlopCounterMode on a 224 x 224 input (the 8-bit
image's size; jitter > 0 layers optimise a padded image cropped back to 224, jitter 0 layers a 213-236 px one:
224 is used for all). The sweep is every unit at STEPS steps. The estimate divides it by a card's dense bf16 peak at
several utilisations; the convolutions of deep layers at batch 64 are small, so expect the lower ones.

    python benchmarks/flops_fzs.py
    python benchmarks/flops_fzs.py --arch resnet50 --peak_tflops 989
"""

import os
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import arch  # noqa: E402
import fzs  # noqa: E402
import stream  # noqa: E402
from cli import configure, main_guard

ARCH = "resnet18"  # a torchvision ResNet
STEPS = 2560  # steps per unit (the paper's)
PEAK_TFLOPS = 989.0  # the card's dense bf16 tensor-core peak (H100 SXM and H200: 989; A100: 312)
UTILISATIONS = [1.0, 0.4, 0.2, 0.1]  # fractions of the peak to project at
# ---- end of flags (below: fixed constants, not flags)


def step_flops(net, model, layer):
    """FLOPs of one FZ step of one image at `layer`: forward to it and backward to the input."""
    forward = stream.truncated(net, model, layer)
    x = torch.rand(1, 3, 224, 224, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = forward(stream.normalize(x))
        stream.center(out)[:, 0].sum().backward()
    return counter.get_total_flops()


def main():
    configure(globals())
    net = arch.net(ARCH)
    model = fzs.fold_batchnorm(arch.build(ARCH).requires_grad_(False))
    widths = net.widths
    total = 0
    print(f"{ARCH}: FLOPs of one FZ step of one image (forward to the layer + backward to the image), 224 px")
    print(f"{'layer':24s} {'units':>6s} {'GFLOP/step':>11s} {'PFLOP at ' + format(STEPS, ',') + ' steps':>22s}")
    for layer in net.layers:
        f = step_flops(net, model, layer)
        total += f * widths[layer] * STEPS
        print(f"{layer:24s} {widths[layer]:6d} {f / 1e9:11.2f} {f * widths[layer] * STEPS / 1e15:22.2f}")
    print(f"full center sweep: {total / 1e15:,.1f} PFLOP")
    for u in UTILISATIONS:
        print(f"  at {100 * u:.0f}% of {PEAK_TFLOPS:g} TFLOP/s: {total / (PEAK_TFLOPS * 1e12 * u) / 60:,.1f} min")


if __name__ == "__main__":
    main_guard(main, "nothing was written")
