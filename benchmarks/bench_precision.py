"""Evidence for the precision default: does bf16 move the results by more than FZ seed noise?

On a ResNet18 with non-trivial BatchNorms and a head that spreads its predictions (the test suite's fixture model,
tests/conftest.py; no pretrained weights needed), in one run:
  1. FZs of all seven blocks (channels 0..CHANNELS-1 of the 18 layers) at reduced steps, three times with fzs.py:
     fp32 seed 0, fp32 seed 1 and bf16 seed 0 (bf16 numerics on any CPU: emulated where it is not native, so slow);
  2. criteria.py on each run: the passing set of every block;
  3. per block, the Jaccard overlap of the passing sets fp32/bf16 (same seed) next to fp32 seed 0/seed 1 (seed noise),
     and the achieved activation ratio bf16/fp32 (median over units, each measured in float32 on its stored image);
  4. the ablation sweep (ablate.py on generated images labelled by the model) in fp32 and in bf16: the correct count
     of every (block, condition, scale) cell, side by side.

    python benchmarks/bench_precision.py                       # about 25 minutes on 2 CPU cores
    python benchmarks/bench_precision.py --channels 4 --steps 8 --fake 16   # a minute (the suite runs this)
"""

import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import arch  # noqa: E402
import cli  # noqa: E402
import results  # noqa: E402
from cli import configure, die, main_guard  # noqa: E402

BLOCKS = []  # blocks whose FZs are made and compared (empty: all seven)
CHANNELS = 16  # channels 0..CHANNELS-1 of every layer of those blocks (one batch per layer)
STEPS = 64  # optimisation steps per FZ (the full sweep uses 2,560)
FAKE = 200  # generated images for the ablation sweep (0: no sweep comparison)
SETS = "2.1:0:6;3.1:0:12"  # the ablated sets (by hand: the point is the arithmetic, not which channels pass)
N_TRIALS = 3  # random sets per block in the sweep
DEVICE = "cpu"  # where the scripts run (cuda on a GPU)
KEEP = ""  # a folder to keep the runs in (empty: a temporary folder, removed)
# ---- end of flags (below: fixed constants, not flags)


def run(script, *args):
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        die(f"{script} failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
    return p.stdout


def fz_runs(work, weights, blocks, channels, steps, device):
    """{name: results folder} of the three FZ runs (channels 0..channels-1 of every layer of these blocks, on `device`,
    a --device value), with criteria.py run in each."""
    runs = {"fp32 seed 0": ("fp32", 0), "fp32 seed 1": ("fp32", 1), "bf16 seed 0": ("bf16", 0)}
    if cli.pick_device(device).type == "cuda":
        runs["tf32 seed 0"] = ("tf32", 0)
    out = {}
    for name, (amp, seed) in runs.items():
        folder = os.path.join(work, name.replace(" ", "_"))
        t0 = time.time()
        run("fzs.py", "--layers", ",".join(blocks), "--channels", f"0:{channels}", "--batch", str(channels), "--steps", str(steps),
            "--seed", str(seed), "--amp", amp, "--weights", weights, "--results", folder, "--png", "false", "--device", device)
        run("criteria.py", "--weights", weights, "--results", folder, "--device", device, "--blocks", ",".join(blocks))
        print(f"  {name}: FZs and criteria in {time.time() - t0:.0f} s", flush=True)
        out[name] = folder
    return out


def passing(folder):
    with open(results.criteria_file(folder)) as f:
        return {b: set(v["passing"]) for b, v in json.load(f)["blocks"].items()}


def activations(net, folder, blocks):
    """{layer: the stored activation of each FZ} of every layer of these blocks."""
    return {layer: results.read_fz(folder, layer, "center")["activation"] for b in blocks for layer in net.blocks[b]}


def sweep_cells(work, weights, data, amp, sets, n_trials, device):
    folder = os.path.join(work, f"sweep_{amp}")
    run("ablate.py", "--weights", weights, "--data", data, "--results", folder, "--sets", sets, "--n_trials", str(n_trials),
        "--screen_margin", "2.1:<=100;3.1:<=100", "--amp", amp, "--workers", "0", "--device", device,
        "--variants", "paper", "--bootstrap", "0")
    cells = {}
    for path in sorted(glob.glob(os.path.join(results.ablation_dir(folder), "*", "*_s*.json"))):
        with open(path) as f:
            c = json.load(f)
        cells[c["block"], c["condition"], c["scale"]] = c["correct"]
    return cells, folder


def main():
    configure(globals())
    net = arch.net("resnet18")  # the paper's architecture
    threads = os.environ.get("OMP_NUM_THREADS")
    from conftest import build_fixture_model  # (conftest sets OMP_NUM_THREADS for the tests: not for these runs)
    if threads is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    from criteria import jaccard
    if CHANNELS < 1 or STEPS < 1:
        die("--channels and --steps must be at least 1")
    blocks = BLOCKS or list(net.blocks)  # the blocks compared (net.blocks: all seven)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = KEEP or tmp
        os.makedirs(work, exist_ok=True)
        weights = os.path.join(work, "fixture_resnet18.pth")
        torch.save(build_fixture_model().state_dict(), weights)
        print(f"bench_precision: {CHANNELS} channels of each layer of blocks {','.join(BLOCKS) or 'all seven'}, {STEPS} steps, fixture ResNet18, {DEVICE}, "
              f"torch {torch.__version__}, native CPU bf16: {cli.cpu_has_bf16()}")
        runs = fz_runs(work, weights, blocks, CHANNELS, STEPS, DEVICE)
        sets = {name: passing(folder) for name, folder in runs.items()}
        acts = {name: activations(net, folder, blocks) for name, folder in runs.items()}
        print(f"\n{'block':6s} {'passing fp32 s0 / fp32 s1 / bf16 s0':>36s} {'Jaccard fp32-bf16':>18s} {'Jaccard seed 0-1':>17s} "
              f"{'act. ratio bf16/fp32':>21s}")
        j_prec, j_seed = [], []
        for b in blocks:
            In, Pre, Post = net.blocks[b]
            a, s1, h = sets["fp32 seed 0"].get(b, set()), sets["fp32 seed 1"].get(b, set()), sets["bf16 seed 0"].get(b, set())
            ratios = []
            for layer in (In, Pre, Post):
                f32, b16 = acts["fp32 seed 0"][layer], acts["bf16 seed 0"][layer]
                ok = f32 > 0
                ratios += (b16[ok] / f32[ok]).tolist()
            j_prec.append(jaccard(a, h))
            j_seed.append(jaccard(a, s1))
            print(f"{b:6s} {f'{len(a)} / {len(s1)} / {len(h)}':>36s} {j_prec[-1]:18.2f} {j_seed[-1]:17.2f} "
                  f"{np.median(ratios) if ratios else float('nan'):21.3f}")
        print(f"{'mean':6s} {'':>36s} {np.mean(j_prec):18.2f} {np.mean(j_seed):17.2f}")
        verdict = "within" if np.mean(j_prec) >= np.mean(j_seed) else "beyond"
        print(f"bf16 moves the passing sets {verdict} seed noise (mean Jaccard {np.mean(j_prec):.2f} against {np.mean(j_seed):.2f})")
        if "tf32 seed 0" in runs:
            for b in blocks:
                a, t = sets["fp32 seed 0"].get(b, set()), sets["tf32 seed 0"].get(b, set())
                print(f"  tf32, block {b}: {len(t)} passing, Jaccard with fp32 {jaccard(a, t):.2f}")
        if FAKE:
            data = os.path.join(work, "val")
            run("ablate.py", "--weights", weights, "--data", data, "--fake", str(FAKE), "--results", os.path.join(work, "fake_labels"),
                "--stages", "natural", "--workers", "0", "--device", DEVICE)
            f32, _ = sweep_cells(work, weights, data, "fp32", SETS, N_TRIALS, DEVICE)
            b16, _ = sweep_cells(work, weights, data, "bf16", SETS, N_TRIALS, DEVICE)
            diff = {k: b16[k] - f32[k] for k in f32}
            print(f"\nablation sweep, {FAKE} images, {len(f32)} cells: correct count bf16 minus fp32, cell by cell")
            print(f"  {sum(d == 0 for d in diff.values())} cells equal, {sum(d != 0 for d in diff.values())} differ; largest |difference| "
                  f"{max(abs(d) for d in diff.values())} images ({100 * max(abs(d) for d in diff.values()) / FAKE:.2f} points)")
            for k in sorted(diff):
                if diff[k]:
                    print(f"  block {k[0]} {k[1]} at {k[2]}%: fp32 {f32[k]}, bf16 {b16[k]}")
    print(f"time: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main_guard(main)
