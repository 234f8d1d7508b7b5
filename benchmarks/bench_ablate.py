"""Time the ablation sweep of both blocks two ways on the same images and the same channel sets:

- released: the released scripts' way, one standard DataLoader pass per (block, scale, condition)
  (2 x 6 x 11 = 132 passes), each decoding every JPEG again and running the whole network with a forward hook
  that overwrites the ablated channels;
- ours: ablate.py's run_pass, one pass that decodes each image once into all six views, runs the network up
  to the block once per (batch, view) and every condition from there, batched (plus the unablated baseline).

It also checks that both give the same correct count in every cell, and prints both times and their ratio.

    python benchmarks/bench_ablate.py --data ../shared/data/imagenet-sample-1000 --limit 200
    python benchmarks/bench_ablate.py --fake 50000 --limit 0 --reference false      # GPU: the full-size sweep, ours only
"""

import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ablate  # noqa: E402
import arch  # noqa: E402
import cli  # noqa: E402
from cli import configure, die, main_guard, pick_device
from imagenet import ImageNetFolder, guarded, image_loader, imagenet_folder, write_fake_imagenet  # noqa: E402
from stream import load_model

DATA = ""  # image folder in the prepared layout (one sub-folder per wnid); empty: generate one with FAKE
FAKE = 0  # no DATA: write this many ImageNet-sized (500 x 375) generated JPEGs into FAKE_DIR first (kept for reruns)
FAKE_DIR = "/tmp/bench_ablate_jpegs"  # where generated JPEGs go
LIMIT = 200  # images used, evenly spaced (0 = all)
WEIGHTS = "random"  # model weights (the timing does not depend on them)
DEVICE = "auto"  # auto, cpu, cuda
AMP = "auto"  # our path: as ablate.py (auto = fp32 unless AMP_AUTO says bf16); ours is channels_last (the released way: fp32, contiguous)
BATCH = 64  # images per batch, both ways
SUFFIX_BATCH = 0  # our path: images x conditions per forward after the block (0 = auto: 512 CPU, 4096 CUDA)
WORKERS = -1  # DataLoader workers, both ways (-1 = one per CPU core, at most 16)
PASSING = [12, 25]  # size of the 'passing' set of blocks 2.1 and 3.1 (the channels are drawn at random here)
N_TRIALS = 10  # random sets per block
SCALES = [10, 20, 30, 40, 50]  # scales besides no scale
REFERENCE = True  # also time the released way (132 passes over the images)
REF_PASSES = 0  # time only this many of the released way's passes, evenly spread, and scale up (0 = all)
SEED = 0  # seeds the sets and the means
# ---- end of flags (below: fixed constants, not flags)


def main():
    configure(globals())
    net = arch.net("resnet18")  # the paper's architecture
    root = DATA
    if not root:
        if not FAKE:
            die("pass --data FOLDER (prepared layout) or --fake N to generate N JPEGs")
        write_fake_imagenet(FAKE_DIR, FAKE)
        root = FAKE_DIR
    device = pick_device(DEVICE)
    prec = cli.precision(AMP, device)  # as ablate.py's sweep
    dtype = cli.amp_dtype(prec)
    cli.use_device(device, prec)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    paths, labels, _ = imagenet_folder(root, LIMIT)
    n = len(paths)
    scales = [0] + list(SCALES)
    rng = np.random.default_rng(SEED)
    blocks = ["2.1", "3.1"]
    sets, means = {}, {}
    for b, k in zip(blocks, PASSING):
        c = net.channels(net.blocks[b][2])
        passing = sorted(rng.choice(c, size=k, replace=False).tolist())
        others = sorted(set(range(c)) - set(passing))
        sets[b] = [passing] + ablate.draw_sets(rng, others, k, N_TRIALS)
        means[b] = torch.from_numpy(rng.random(c).astype(np.float32))
    n_cells = len(blocks) * len(scales) * (1 + N_TRIALS)
    print(f"{n} images from {root}, device {device}, batch {BATCH}, workers {WORKERS}, threads {torch.get_num_threads()}; "
          f"{len(blocks)} blocks x {len(scales)} scales x {1 + N_TRIALS} conditions = {n_cells} cells")

    # Ours: one pass, every cell (and the unablated baseline).
    model = load_model(net.name, WEIGHTS, device)[0].to(memory_format=torch.channels_last)
    plan = [(net.where(net.blocks[b][2])[0], means[b], ablate.masks_for(sets[b], len(means[b]))) for b in blocks]
    suffix_batch = SUFFIX_BATCH or (4096 if device.type == "cuda" else 512)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ours = ablate.run_pass(net, "ours", model, n, ablate.loader_cache(root, paths, labels, BATCH, WORKERS, device), scales, plan, device,
                               dtype, suffix_batch, tmp, {"bench": 1}, every=10 ** 9)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in guarded(image_loader(ImageNetFolder(root, paths, labels, scales), BATCH, WORKERS, device)):
        pass  # decoding alone: every image once into all its views, as our pass does
    t_views = time.perf_counter() - t0
    print(f"ours: {t_ours:.1f} s ({n * len(scales) / t_ours:.1f} image-views/s); decoding alone {t_views:.1f} s "
          f"({n / t_views:.0f} images/s into {len(scales)} views, {WORKERS} workers), so compute about "
          f"{max(0.0, t_ours - t_views):.1f} s if the two do not overlap")
    if not REFERENCE:
        print(f"for 50,000 images: about {t_ours * 50000 / n / 60:.1f} min")
        return

    # The released way: one DataLoader pass per (block, scale, condition), the whole network, a hook.
    ref_model, _ = load_model(net.name, WEIGHTS, device)
    todo = [(b, v, k) for b in blocks for v in range(len(scales)) for k in range(1 + N_TRIALS)]
    if REF_PASSES:
        todo = [todo[i] for i in np.unique(np.linspace(0, len(todo) - 1, REF_PASSES).round().astype(int))]
    t0 = time.perf_counter()
    equal = 0
    for done, (b, v, k) in enumerate(todo):
        loader = image_loader(ImageNetFolder(root, paths, labels, [scales[v]]), BATCH, WORKERS, device)
        preds = ablate.reference_logits(net, ref_model, loader, b, sets[b][k], means[b], device).argmax(1)
        correct = int((preds == torch.as_tensor(labels)).sum())
        col = 1 + blocks.index(b) * (1 + N_TRIALS) + k
        equal += correct == int(ours[v, col].sum())  # per-image hits of the cell
        print(f"\rreleased: pass {done + 1}/{len(todo)} ({time.perf_counter() - t0:.0f} s)", end="", file=sys.stderr, flush=True)
    t_ref = (time.perf_counter() - t0) * n_cells / len(todo)
    print(file=sys.stderr)
    t0 = time.perf_counter()
    for _ in guarded(image_loader(ImageNetFolder(root, paths, labels, [0]), BATCH, WORKERS, device)):
        pass
    t_decode = time.perf_counter() - t0
    print(f"released: {t_ref:.1f} s ({len(todo)} of {n_cells} passes timed{'' if len(todo) == n_cells else ', scaled up'}); "
          f"of it decoding about {t_decode * n_cells:.1f} s ({t_decode:.2f} s per pass)")
    print(f"ours: {t_ours:.1f} s   released: {t_ref:.1f} s   speed-up: {t_ref / t_ours:.2f}x   "
          f"cells with equal correct counts: {equal} of {len(todo)}{' (ours in bf16: near-tie predictions may flip)' if dtype is not None else ''}")


if __name__ == "__main__":
    main_guard(main)
