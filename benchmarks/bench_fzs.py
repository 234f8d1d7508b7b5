"""Benchmark: fzs.py's engine against the released way (one lucent render_vis per unit, full network).

In one run, on the same units and the same number of steps:
  - reference: lucent's own render_vis loop, one unit at a time, full torchvision ResNet18 (lucent's hooks
    on every module, weights requiring grad as in the released scripts), lucent's transforms;
  - ours: `python fzs.py ...` as a whole process (imports, model load and file writing included), once
    per AMP setting.
Prints image-steps per second of each, the speed-up, and the median over units of the ratio of achieved
activations (ours / lucent), both measured in float32 on the stored 8-bit images. Block outputs and
downsample layers only: lucent cannot target bn2 (its hooks hold the post-sum tensor).

    python benchmarks/bench_fzs.py                      # about 5 minutes on 2 CPU cores
    python benchmarks/bench_fzs.py --steps 256 --channels 8
"""

import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import arch  # noqa: E402
import cli  # noqa: E402
import fzs  # noqa: E402
import results  # noqa: E402
from cli import configure, main_guard, pick_device  # noqa: E402
from stream import load_model  # noqa: E402

WEIGHTS = "random"  # weights for both paths (no pretrained weights needed to compare speed)
LAYERS = ["layer1.0", "layer2.0.downsample.1", "layer2.1", "layer3.0", "layer3.1", "layer4.0.downsample.1", "layer4.1"]  # Post and downsample layers
CHANNELS = 4  # units per layer (channels 0..CHANNELS-1)
STEPS = 64  # optimisation steps per unit, the same for both paths
AMPS = ["fp32", "bf16"]  # fzs.py runs to time, one per precision (fp32 is the default)
DEVICE = "auto"  # auto, cpu, cuda
SEED = 0  # seed for both paths
# ---- end of flags (below: fixed constants, not flags)


def lucent_transforms(j):
    from lucent.optvis import transform
    if j == 0:
        return [transform.random_scale(fzs.SCALES), transform.random_rotate(fzs.ANGLES)]
    return [transform.pad(j), transform.jitter(j), transform.random_scale(fzs.SCALES),
            transform.random_rotate(fzs.ANGLES), transform.jitter(j // 2), torchvision.transforms.CenterCrop(fzs.SIZE)]


def reference(net, units, weights, steps, seed, device):
    """The released way: a render_vis per unit on the full model; returns uint8 images and seconds."""
    from lucent.optvis import objectives, param, render
    t0 = time.time()
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(load_model(net.name, weights)[0].state_dict())
    model.to(device).eval()  # weights keep requires_grad, as in the released scripts
    images = []
    for i, (layer, c) in enumerate(units):
        np.random.seed(seed + i)
        torch.manual_seed(seed + i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = render.render_vis(model, objectives.neuron(layer.replace(".", "_"), c), param_f=lambda: param.image(fzs.SIZE),
                                    optimizer=lambda p: torch.optim.Adam(p, lr=fzs.LR), transforms=lucent_transforms(arch.jitter(net.block_of(layer))),
                                    thresholds=(steps,), show_image=False, progress=False)
        images.append((torch.from_numpy(out[-1]).permute(0, 3, 1, 2) * 255).to(torch.uint8))
        print(f"  lucent {i + 1}/{len(units)} ({layer}:{c}) {time.time() - t0:.0f} s", end="\r", flush=True)
    print()
    return torch.cat(images), time.time() - t0


def ours(layers, channels, weights, steps, seed, amp, device, folder):
    """`python fzs.py` as a whole process on channels 0..channels-1 of each layer, into `folder`; returns uint8 images
    (in the order of the layers, then channels) and seconds."""
    t0 = time.time()
    cmd = [sys.executable, os.path.join(ROOT, "fzs.py"), "--layers", ",".join(layers), "--channels", f"0:{channels}",
           "--steps", str(steps), "--batch", str(channels), "--weights", weights, "--seed", str(seed), "--amp", amp,
           "--device", str(device), "--results", folder, "--png", "false"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"fzs.py failed:\n{p.stderr[-2000:]}")
    seconds = time.time() - t0
    images = [results.read_fz(folder, layer, "center")["images"] for layer in layers]
    return torch.cat(images), seconds


def activations(net, model, layers, units, images, device):
    """Center activation of each unit (of these layers) on its image, float32, on the stored 8-bit image
    (fzs.objective_on_images)."""
    out = torch.empty(len(units))
    for layer in layers:
        idx = [i for i, (name, _) in enumerate(units) if name == layer]
        out[idx] = fzs.objective_on_images(net, model, layer, images[idx], [units[i][1] for i in idx], "center", device)
    return out


def main():
    configure(globals())
    net = arch.net("resnet18")  # the paper's architecture
    device = pick_device(DEVICE)
    cli.use_device(device, "fp32")  # lucent's loop in true float32 (no TF32 on a GPU)
    units = [(layer, c) for layer in LAYERS for c in range(CHANNELS)]
    model = load_model(net.name, WEIGHTS, device)[0]
    print(f"bench_fzs: {len(units)} units ({CHANNELS} per layer of {', '.join(LAYERS)}), {STEPS} steps, {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    ref_images, ref_s = reference(net, units, WEIGHTS, STEPS, SEED, device)
    ref_act = activations(net, model, LAYERS, units, ref_images, device)
    rows = [("lucent render_vis (released way)", ref_s, 1.0, 1.0)]
    for amp in AMPS:
        with tempfile.TemporaryDirectory() as tmp:
            images, s = ours(LAYERS, CHANNELS, WEIGHTS, STEPS, SEED, amp, device, tmp)
        act = activations(net, model, LAYERS, units, images, device)
        positive = ref_act > 0  # the ratio means nothing where lucent's unit did not activate
        ratio = np.median((act[positive] / ref_act[positive]).numpy()) if positive.any() else float("nan")
        rows.append((f"fzs.py --amp {amp} (whole process)", s, ref_s / s, ratio))
    print(f"(activation ratio over the {int((ref_act > 0).sum())} of {len(units)} units that lucent's run activated)")
    n = len(units) * STEPS
    print(f"\n{'path':38s} {'seconds':>8s} {'img-steps/s':>12s} {'speed-up':>9s} {'median act. ratio':>18s}")
    for name, s, speedup, ratio in rows:
        print(f"{name:38s} {s:8.1f} {n / s:12.2f} {speedup:8.2f}x {ratio:18.3f}")


if __name__ == "__main__":
    main_guard(main)
