"""The FZ engine's rate per architecture, and the projected time of a full center sweep of each.

For every architecture, one layer per stage (the Post of the stage's last block: the deepest, so the slowest, layer
of that stage) is optimised for a few steps with fzs.py's engine (fzs.render: batched, folded BatchNorm, the
precision fzs.py would pick), in this process and after a warm-up. A full sweep's time is then projected stage by
stage: the stage's units divided by the rate measured there (an upper bound within a stage, since its shallower
layers are cheaper). Printed side by side with resnet18 measured in the same run, as ratios: absolute times hold
only for the machine they were measured on.

    python benchmarks/bench_archs.py                                   # resnet18, resnet34, resnet50 on this machine
    python benchmarks/bench_archs.py --archs resnet18,resnet50,resnet101 --batch 64 --steps 16   # on a GPU
    python benchmarks/bench_archs.py --archs resnet18,cornet_s         # CORnet-S (by area: V2, V4, IT) against resnet18
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import arch  # noqa: E402
import cli  # noqa: E402
import fzs  # noqa: E402
import stream  # noqa: E402
from cli import amp_dtype, configure, die, main_guard, pick_device

ARCHS = ["resnet18", "resnet34", "resnet50"]  # architectures to measure (resnet18 first: the others are given as ratios to it)
BATCH = 8  # units optimised together (fzs.py's BATCH is 64; a CPU is saturated well before)
STEPS = 4  # timed optimisation steps per layer (after one warm-up batch of 1 step)
FULL_STEPS = 2560  # steps per unit of the projected full sweep (the paper's)
AMP = "auto"  # as fzs.py (auto = fp32 unless AMP_AUTO says bf16), or fp32, bf16, tf32 (GPU)
DEVICE = "auto"  # auto, cpu, cuda
# ---- end of flags (below: fixed constants, not flags)


def stage_layers(name):
    """{stage: (its deepest probed layer, the probed units of the stage)}; CORnet-S's stages are its areas (V2, V4, IT),
    whose deepest layer is the last step's Post."""
    net = arch.net(name)
    table, residual, widths = net.blocks, net.residual, net.widths
    out = {}
    if name == arch.CORNET:
        for layer in net.layers:
            area = layer.split(".")[0]
            out.setdefault(area, [[b for b in residual if b.startswith(area + ".")][-1], 0])[1] += widths[layer]
        return {a: (table[b][2], units) for a, (b, units) in out.items()}
    for layer in arch.layers_of(table):
        stage = int(layer[5])
        deepest = f"layer{stage}.{max(int(b.split('.')[1]) for b in residual if b.startswith(f'layer{stage}.'))}"
        out.setdefault(stage, [deepest, 0])[1] += widths[layer]
    return {s: tuple(v) for s, v in sorted(out.items())}


def rate(net, model, layer, device, amp, batch, steps):
    """Image-steps per second of fzs.render on `layer` (`batch` units, `steps` steps)."""
    cfg = {"steps": steps, "lr": fzs.LR, "jitter": arch.jitter(net.block_of(layer)), "scales": fzs.SCALES,
           "angles": fzs.ANGLES, "size": fzs.SIZE, "pre_as_released": False}
    channels = list(range(batch))
    run = lambda s: fzs.render(net, model, layer, channels, "center", {**cfg, "steps": s}, channels, 0, device, amp)  # noqa: E731
    run(1)  # warm-up: allocations, kernel choices
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run(steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main():
    configure(globals())
    for name in ARCHS:
        if name not in arch.ARCHS:
            die(f"unknown architecture {name!r}; the architectures are: {', '.join(arch.ARCHS)}")
    if BATCH < 1 or STEPS < 1:
        die("--batch and --steps must be at least 1")
    device = pick_device(DEVICE)
    prec = cli.precision(AMP, device)
    cli.use_device(device, prec)
    amp = amp_dtype(prec)
    print(f"FZ engine rate per architecture: {BATCH} units x {STEPS} steps per stage, {device}, "
          f"{'bf16' if amp is not None else 'fp32'}, {torch.get_num_threads()} threads")
    print(f"{'arch':<18}{'stage':>6}  {'layer':<12}{'units':>8}{'img-steps/s':>13}   projected full sweep ({FULL_STEPS} steps)")
    total = {}
    for name in ARCHS:
        net = arch.net(name)
        model = stream.load_model(net.name, "random:0", device)[0]  # random weights: the rate does not depend on them
        model = model if name == arch.CORNET else fzs.fold_batchnorm(model)  # as fzs.py (CORnet-S is not folded)
        if amp is not None:
            model = model.to(amp)
        seconds = 0.0
        for stage, (layer, units) in stage_layers(name).items():
            r = rate(net, model, layer, device, amp, BATCH, STEPS)
            seconds += units * FULL_STEPS / r
            print(f"{name:<18}{stage:>6}  {layer:<12}{units:>8,}{r:>13.1f}")
        total[name] = seconds
        print(f"{name:<18}{'all':>6}  {'':<12}{sum(net.widths[layer] for layer in net.layers):>8,}{'':>13}   "
              f"{seconds / 3600:,.1f} h" + (f"  ({seconds / total[ARCHS[0]]:.2f}x {ARCHS[0]})" if name != ARCHS[0] else ""))


if __name__ == "__main__":
    main_guard(main)
