"""The FZ sweep's rate on this machine, layer by layer, projected to the full center sweep; host syncs per step.

Every layer (or those named) is optimised with fzs.py's engine (fzs.render_groups on the folded, channels_last model
in the precision fzs.py would pick) for STEPS steps at full batches of BATCH units, after one warm-up step, with
STREAMS batches at once for each value given, side by side. The full sweep (every unit of the 18 layers at
FULL_STEPS steps) is projected layer by layer: the layer's units over its rate. On CUDA the host synchronisations of
the step loop are counted too (torch.cuda.set_sync_debug_mode; the target is 0).

    python benchmarks/bench_sweep.py --device cuda                 # all 18 layers, batches of 64, 1 / 2 / 4 at once
    python benchmarks/bench_sweep.py --layers layer1.0,layer4.1 --batch 4 --steps 2 --streams 1,2   # a CPU smoke run
"""

import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import arch  # noqa: E402
import cli  # noqa: E402
import fzs  # noqa: E402
import stream  # noqa: E402
from cli import configure, die, main_guard

LAYERS = "all"  # layers to time ('all' or comma-separated names); layers not timed are projected at the rate of the next deeper one timed
BATCH = 64  # units per batch (fzs.py's default; part of a result's identity, so it is not raised to fill a card)
STREAMS = [1, 2, 4]  # batches optimised at once (fzs.py --streams), each timed side by side
STEPS = 8  # timed steps per layer (after one warm-up step)
FULL_STEPS = 2560  # steps per unit of the projected full sweep
AMP = "auto"  # as fzs.py
COMPILE = False  # time the torch.compile'd truncated network (fzs.py --compile) instead of eager
WEIGHTS = "random"  # the weights do not change the speed
DEVICE = "auto"  # auto, cpu, cuda or cuda:N
# ---- end of flags (below: fixed constants, not flags)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_layer(net, model, layer, streams, batch, steps, device, amp, forward):
    """(image-steps per second, host syncs per step or None) for `streams` full batches of `batch` units of `layer` at
    once, timed over `steps` steps."""
    n = net.widths[layer]
    cfg = {"lr": fzs.LR, "jitter": arch.jitter(net.block_of(layer)), "scales": fzs.SCALES, "angles": fzs.ANGLES,
           "size": fzs.SIZE, "pre_as_released": False}
    groups = [(list(range(batch)), list(range(g * batch, (g + 1) * batch)), g) for g in range(streams)]
    groups = [([c % n for c in chans], seeds, t) for chans, seeds, t in groups]

    def call(n):
        """(seconds, host syncs counted) of one render_groups call of n steps."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                t0 = time.perf_counter()
                fzs.render_groups(net, model, layer, "center", {**cfg, "steps": n}, groups, device, amp, forward)
                sync(device)
                return time.perf_counter() - t0, sum("synchroniz" in str(w.message) for w in caught)
            finally:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")

    call(1)  # warm-up: kernels, plans, the allocator
    _, once = call(1)
    seconds, many = call(steps)
    # a call syncs in its set-up and its final copy to the host; what grows with the steps is per step
    counted = (many - once) / max(1, steps - 1) if device.type == "cuda" else None
    return streams * batch * steps / seconds, counted


def main():
    configure(globals())
    net = arch.net("resnet18")  # the paper's architecture
    if BATCH < 1 or STEPS < 1 or not STREAMS or min(STREAMS) < 1:
        die("--batch, --steps and every --streams value must be at least 1")
    device = cli.pick_device(DEVICE)
    prec = cli.precision(AMP, device)
    name = cli.use_device(device, prec)
    amp = cli.amp_dtype(prec)
    model = stream.load_model(net.name, WEIGHTS, device)[0].to(memory_format=torch.channels_last)
    optimised = fzs.fold_batchnorm(model)
    if amp is not None:
        optimised = optimised.to(amp)
    layers = net.parse_layers(LAYERS)
    widths = net.widths
    print(f"bench_sweep: {len(layers)} layer(s), batches of {BATCH}, {STEPS} steps, {name}, {prec}, "
          f"{'compiled' if COMPILE else 'eager'}, torch {torch.__version__}")
    rates = {s: {} for s in STREAMS}
    print(f"{'layer':24s} {'units':>6s} " + " ".join(f"{f'{s} at once img-steps/s':>24s}" for s in STREAMS) + f" {'syncs/step':>11s}")
    for layer in layers:
        forward = fzs.compile_forward(net, optimised, layer, len(layers)) if COMPILE else None
        row, syncs = [], None
        for s in STREAMS:
            rates[s][layer], counted = time_layer(net, optimised, layer, s, BATCH, STEPS, device, amp, forward)
            syncs = counted if syncs is None else syncs
            row.append(f"{rates[s][layer]:24.1f}")
        print(f"{layer:24s} {widths[layer]:6d} " + " ".join(row) + f" {'n/a (CPU)' if syncs is None else f'{syncs:.1f}':>11s}", flush=True)
    all_layers = net.layers
    print(f"\nprojected full center sweep ({sum(widths[lay] for lay in all_layers):,} units x {FULL_STEPS:,} steps), by layer:")
    totals = {}
    for s in STREAMS:
        totals[s] = 0.0
        for i, layer in enumerate(all_layers):
            timed = next((layer for layer in all_layers[i:] if layer in rates[s]), None) or max(rates[s], key=all_layers.index)
            totals[s] += widths[layer] * FULL_STEPS / rates[s][timed]
    for s in STREAMS:
        speedup = totals[STREAMS[0]] / totals[s]
        print(f"  {s} batch(es) at once: {totals[s] / 60:,.1f} min ({totals[s] / 3600:,.2f} h), {speedup:.2f}x {STREAMS[0]} at once")

if __name__ == "__main__":
    main_guard(main, "nothing was written")
