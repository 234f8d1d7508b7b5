"""Where the time of one FZ optimisation step goes: the image parameterisation (inverse FFT, colour decorrelation,
sigmoid), the transforms (pad, jitter, scale, rotate, jitter, crop), the truncated network's forward pass, the
backward pass (network, transforms and parameterisation together), and Adam. Per layer, milliseconds per step and
shares, then torch.profiler's most expensive operators over all layers.

    python benchmarks/profile_fzs.py                       # fzs.py's settings (bf16 where the CPU has it, folded BN)
    python benchmarks/profile_fzs.py --amp fp32 --batch 16
"""

import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import arch  # noqa: E402
import cli  # noqa: E402
import fzs  # noqa: E402
from cli import amp_dtype, autocast, configure, main_guard, pick_device
from stream import features, load_model, normalize

WEIGHTS = "random"  # weights (the timing does not depend on them)
LAYERS = ["layer1.0", "layer2.1", "layer3.1", "layer4.1"]  # layers to profile (their jitter is fzs.py's)
BATCH = 4  # units per step (the bench_fzs.py workload uses 4)
STEPS = 12  # timed steps per layer, after WARMUP
WARMUP = 3  # untimed steps per layer
AMP = "auto"  # as fzs.py
FOLD_BN = True  # as fzs.py
DEVICE = "auto"  # auto, cpu, cuda
TOP = 12  # operators listed from torch.profiler
# ---- end of flags (below: fixed constants, not flags)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile_layer(net, model, layer, device, amp, batch, steps, warmup):
    """{phase: seconds per step} for one layer: `batch` units, `steps` timed steps after `warmup` untimed ones."""
    cfg = dict(steps=0, lr=fzs.LR, jitter=arch.jitter(net.block_of(layer)), scales=fzs.SCALES, angles=fzs.ANGLES, size=fzs.SIZE)
    channels = list(range(batch))
    spectrum, image = fzs.fft_image(channels, fzs.SIZE, device)
    optimizer = torch.optim.Adam([spectrum], lr=fzs.LR)
    transforms = fzs.transforms_for(cfg["jitter"], cfg["scales"], cfg["angles"], cfg["size"])
    rng = np.random.RandomState(0)
    idx = torch.as_tensor(channels, device=device)
    times = {k: 0.0 for k in ("parameterisation", "transforms", "forward", "backward", "adam")}
    for step in range(warmup + steps):
        marks = [time.perf_counter()]

        def mark():
            sync(device)
            marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        x = image()
        mark()
        for t in transforms:
            x = t(x, rng)
        x = normalize(x).contiguous(memory_format=torch.channels_last)
        mark()
        with autocast(device, amp):
            loss = -fzs.objective(features(net, model, x, [layer])[layer], idx, "center").float().sum()
        mark()
        loss.backward()
        mark()
        optimizer.step()
        mark()
        if step >= warmup:
            for k, (a, b) in zip(times, zip(marks, marks[1:])):
                times[k] += (b - a) / steps
    return times


def main():
    configure(globals())
    net = arch.net("resnet18")  # the paper's architecture
    device = pick_device(DEVICE)
    prec = cli.precision(AMP, device)
    cli.use_device(device, prec)
    amp = amp_dtype(prec)
    model = load_model(net.name, WEIGHTS, device)[0].to(memory_format=torch.channels_last)
    model = fzs.fold_batchnorm(model) if FOLD_BN else model
    model = model.to(amp) if amp is not None else model  # as fzs.py: weights cast once
    print(f"profile_fzs: batch {BATCH}, {STEPS} timed steps per layer, {'bf16' if amp else 'fp32'}, fold_bn {FOLD_BN}, "
          f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"\n{'layer':<22}" + "".join(f"{k:>18}" for k in ("parameterisation", "transforms", "forward", "backward", "adam"))
          + f"{'total ms':>10}")
    totals = {}
    for layer in LAYERS:
        t = profile_layer(net, model, layer, device, amp, BATCH, STEPS, WARMUP)
        total = sum(t.values())
        for k, v in t.items():
            totals[k] = totals.get(k, 0.0) + v
        print(f"{layer:<22}" + "".join(f"{1e3 * v:9.1f} ms {100 * v / total:3.0f}%" for v in t.values()) + f"{1e3 * total:10.1f}")
    total = sum(totals.values())
    print(f"{'all layers':<22}" + "".join(f"{1e3 * v:9.1f} ms {100 * v / total:3.0f}%" for v in totals.values()) + f"{1e3 * total:10.1f}")

    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for layer in LAYERS:
            profile_layer(net, model, layer, device, amp, BATCH, STEPS, WARMUP)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nmost expensive operators (torch.profiler, all layers, {WARMUP + STEPS} steps each):")
    print(prof.key_averages().table(sort_by=key, row_limit=TOP, max_name_column_width=40))


if __name__ == "__main__":
    main_guard(main)
