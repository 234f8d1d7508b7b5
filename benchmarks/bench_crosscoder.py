"""Time crosscoder.py's two halves, each against a slower way, in one run (the ratios are what matter):

- data stage: images per second of ours (each JPEG decoded once into all its zoom views, one truncated pass per zoom
  reading every layer at once) against a naive loop (one decode per zoom, one truncated pass per layer), with the
  largest difference between the two (they compute the same numbers);
- training: steps per second of the crosscoder in fp32, bf16 (autocast) and float64 (as the released scripts
  train), with the fraction of variance explained each reaches on the same planted data in the same steps.

    python benchmarks/bench_crosscoder.py --fake 16 --limit 16
    python benchmarks/bench_crosscoder.py --data ../shared/data/imagenet-val-1300 --limit 200 --n 50000 --channels 512
"""

import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import arch  # noqa: E402
import crosscoder  # noqa: E402
from cli import configure, die, main_guard, pick_device  # noqa: E402
from imagenet import ZoomFolder, decode_rgb, image_loader, imagenet_folder, write_fake_imagenet, zoom_views, zooms  # noqa: E402
from stream import load_model, normalize, read_center, to_float, truncated  # noqa: E402

DATA = ""  # image folder in the prepared layout; empty: generate one with FAKE
FAKE = 0  # no DATA: write this many generated JPEGs into FAKE_DIR first (kept for reruns)
FAKE_DIR = "/tmp/bench_crosscoder_jpegs"  # where generated JPEGs go
LIMIT = 32  # images used, evenly spaced (0 = all)
WEIGHTS = "random"  # model weights (the timing does not depend on them)
DEVICE = "auto"  # auto, cpu, cuda
BATCH = 16  # images per batch of the data stage
WORKERS = 0  # DataLoader workers of our data stage (the naive loop decodes in the main process)
FRACTIONS = [1.0, 0.7071, 0.5]  # the zoom views, as crosscoder.py
N = 4096  # training: planted samples
CHANNELS = 64  # training: channels per block
EXPANSION = 8  # training: latents per channel
TOP_K = 8  # training: active latents per sample
STEPS = 200  # training: steps timed in each precision
TRAIN_BATCH = 256  # training: samples per step
SEED = 0  # seeds the planted data
# ---- end of flags (below: fixed constants, not flags)


def ours(net, model, root, paths, fractions, layers, batch, workers, device):
    """{layer: (N, Z, C)} the crosscoder.py way: one decode per image, one pass per zoom for all layers."""
    out = {layer: [] for layer in layers}
    with torch.inference_mode():
        for views, _ in image_loader(ZoomFolder(root, paths, range(len(paths)), fractions), batch, workers, device):
            views = views.to(device)
            got = [read_center(net, model, normalize(to_float(views[:, z])), layers) for z in range(views.shape[1])]
            for layer in layers:
                out[layer].append(torch.stack([g[layer] for g in got], 1).cpu())
    return {layer: torch.cat(v).numpy() for layer, v in out.items()}


def naive(net, model, root, paths, fractions, layers, device):
    """The same numbers the naive way: every zoom decodes its image again, and every layer runs its own pass."""
    forward = {layer: truncated(net, model, layer) for layer in layers}
    Z = len(zooms(fractions))
    out = {layer: np.zeros((len(paths), Z, net.channels(layer)), np.float32) for layer in layers}
    with torch.inference_mode():
        for i, path in enumerate(paths):
            for z in range(Z):
                view = zoom_views(decode_rgb(os.path.join(root, path)), fractions)[z]
                x = normalize(to_float(view[None].to(device)))
                for layer in layers:
                    fmap = forward[layer](x)
                    out[layer][i, z] = fmap[0, :, fmap.shape[2] // 2, fmap.shape[3] // 2].float().cpu().numpy()
    return out


def planted(n, c, z, seed):
    """Sparse sums of random atoms over (3, z, c) blocks, with noise: data with a known sparse dictionary."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(2 * c, 3, z, c)).astype(np.float32)
    codes = np.zeros((n, 2 * c), np.float32)
    for i in range(n):
        codes[i, rng.choice(2 * c, 4, replace=False)] = rng.uniform(0.5, 1.5, 4)
    return np.einsum("nf,frzc->nrzc", codes, atoms) + 0.01 * rng.normal(size=(n, 3, z, c)).astype(np.float32)


def main():
    configure(globals())
    net = arch.net("resnet18")
    root = DATA
    if not root:
        if not FAKE:
            die("pass --data FOLDER (prepared layout) or --fake N to generate N JPEGs")
        write_fake_imagenet(FAKE_DIR, FAKE)
        root = FAKE_DIR
    device = pick_device(DEVICE)
    paths, _labels, found = imagenet_folder(root, LIMIT, "")
    model, weights_id = load_model("resnet18", WEIGHTS, device)
    layers = list(net.layers)
    print(f"data stage: {len(paths)} images of {root} ({found}), {len(zooms(FRACTIONS))} zooms, {len(layers)} layers, "
          f"weights {weights_id}, {device}")
    t0 = time.perf_counter()
    a = ours(net, model, root, paths, FRACTIONS, layers, BATCH, WORKERS, device)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = naive(net, model, root, paths, FRACTIONS, layers, device)
    t_naive = time.perf_counter() - t0
    diff = max(float(np.abs(a[layer] - b[layer]).max()) for layer in layers)
    print(f"  ours:  {len(paths) / t_ours:8.2f} images/s ({t_ours:.1f} s)")
    print(f"  naive: {len(paths) / t_naive:8.2f} images/s ({t_naive:.1f} s; one decode per zoom, one pass per layer)")
    print(f"  speed-up: {t_naive / t_ours:.2f}x; largest difference between the two: {diff:.3g}")

    Z = len(zooms(FRACTIONS))
    x = planted(N, CHANNELS, Z, SEED)
    x = x / crosscoder.block_scales(x)[None, :, :, None]
    zoom = zooms(FRACTIONS)
    epochs = max(1, -(-STEPS * TRAIN_BATCH // N))
    print(f"training: {N} planted samples x 3 roles x {Z} zooms x {CHANNELS} channels, {EXPANSION * CHANNELS} latents, "
          f"TopK {TOP_K}, {epochs} epoch(s) of batch {TRAIN_BATCH} ({epochs * -(-N // TRAIN_BATCH)} steps), {device}")
    for precision in ("fp32", "bf16", "fp64"):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            _p, log = crosscoder.train(x, zoom, expansion=EXPANSION, top_k=TOP_K, auxk=64, dead_steps=256, lr=1e-3, epochs=epochs,
                                       batch=TRAIN_BATCH, seed=SEED, encoder="zoom1", precision=precision, device=device,
                                       path=os.path.join(tmp, "ckpt.pt"), config={}, every=1e9, desc=f"train {precision}")
            seconds = time.perf_counter() - t0
        steps = epochs * -(-N // TRAIN_BATCH)
        print(f"  {precision}: {steps / seconds:8.1f} steps/s, FVE of the last epoch {log[-1]['fve']:.4f}")


if __name__ == "__main__":
    main_guard(main)
