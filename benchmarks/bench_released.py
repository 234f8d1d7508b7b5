"""The effect of --post_as_released: do In and Post read before the ReLU (the released stream_inspect.py) move the
passing sets by more than FZ seed noise?

On the test suite's fixture ResNet18 (non-trivial BatchNorms; tests/conftest.py; no pretrained weights needed), or
on any weights with --weights, in one run:
  1. FZs of the In and Pre layers of all seven blocks (channels 0..CHANNELS-1 of the 14 layers criteria.py reads) at
     reduced steps, three times with fzs.py: the paper's reading at seed 0 and at seed 1, and --post_as_released true
     at seed 0 (only the In FZs of blocks 1.1, 2.1, 3.1 and 4.1 change: a downsample In and every Pre are optimised
     the same way under both readings);
  2. criteria.py on each run, with the same --post_as_released: the passing set of every block;
  3. per block, the passing counts, the Jaccard overlap of the passing sets paper / released (same seed) next to
     seed 0 / seed 1 (the paper's reading: seed noise), and how many channels have a Post value below zero under the
     released reading (a value the paper's ReLU clips to 0).

    python benchmarks/bench_released.py                                  # the table of docs/differences.md
    python benchmarks/bench_released.py --weights IMAGENET1K_V1 --channels 64 --steps 512   # the same with the real weights
    python benchmarks/bench_released.py --channels 2 --steps 2          # a minute (the suite runs this)
"""

import csv
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
import results  # noqa: E402
from cli import configure, die, main_guard  # noqa: E402

WEIGHTS = "fixture"  # fixture (the test suite's ResNet18 with non-trivial BatchNorms), or any fzs.py --weights value (IMAGENET1K_V1, a path)
BLOCKS = []  # blocks whose FZs are made and compared (empty: all seven)
CHANNELS = 8  # channels 0..CHANNELS-1 of every In and Pre layer of those blocks (one batch per layer)
STEPS = 16  # optimisation steps per FZ (the full sweep uses 2,560)
DEVICE = "cpu"  # where the scripts run (cuda on a GPU)
KEEP = ""  # a folder to keep the runs in (empty: a temporary folder, removed)
# ---- end of flags (below: fixed constants, not flags)

RUNS = {"paper s0": (False, 0), "paper s1": (False, 1), "released s0": (True, 0)}  # (post_as_released, seed)


def run(script, *args):
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        die(f"{script} failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
    return p.stdout


def fz_runs(net, work, weights, blocks, channels, steps, device):
    """{name: results folder} of the runs of RUNS: the In and Pre FZs of these blocks (channels 0..channels-1), then
    criteria.py, each under its own --post_as_released."""
    layers = list(dict.fromkeys(layer for b in blocks for layer in net.blocks[b][:2]))
    out = {}
    for name, (released, seed) in RUNS.items():
        folder = os.path.join(work, name.replace(" ", "_"))
        flag = ["--post_as_released", str(released).lower()]
        t0 = time.time()
        run("fzs.py", "--layers", ",".join(layers), "--channels", f"0:{channels}", "--batch", str(channels), "--steps", str(steps),
            "--seed", str(seed), "--amp", "fp32", "--weights", weights, "--results", folder, "--png", "false", "--device", device, *flag)
        run("criteria.py", "--weights", weights, "--results", folder, "--device", device, "--blocks", ",".join(blocks), *flag)
        print(f"  {name}: FZs and criteria in {time.time() - t0:.0f} s", flush=True)
        out[name] = folder
    return out


def passing(folder):
    with open(results.criteria_file(folder)) as f:
        return {b: set(v["passing"]) for b, v in json.load(f)["blocks"].items()}


def negative_post(folder):
    """{block: channels with Post(X̂_In) or Post(X̂_Pre) below zero} from a criteria.csv."""
    out = {}
    with open(results.criteria_csv(folder), newline="") as f:
        for r in csv.DictReader(f):
            out.setdefault(r["block"], 0)
            out[r["block"]] += float(r["post_in"]) < 0 or float(r["post_pre"]) < 0
    return out


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
    for b in blocks:
        if b not in net.blocks:
            die(f"unknown block {b!r}; the blocks are: {', '.join(net.blocks)}")
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = KEEP or tmp
        os.makedirs(work, exist_ok=True)
        weights = WEIGHTS
        if WEIGHTS == "fixture":
            weights = os.path.join(work, "fixture_resnet18.pth")
            torch.save(build_fixture_model().state_dict(), weights)
        print(f"bench_released: {CHANNELS} channels of each In and Pre layer of blocks {','.join(BLOCKS) or 'all seven'}, "
              f"{STEPS} steps, fp32, weights {WEIGHTS}, {DEVICE}, torch {torch.__version__}")
        runs = fz_runs(net, work, weights, blocks, CHANNELS, STEPS, DEVICE)
        sets = {name: passing(folder) for name, folder in runs.items()}
        below = negative_post(runs["released s0"])
        print("\n| block | passing: paper s0 / paper s1 / released s0 | Jaccard paper-released (seed 0) | Jaccard seed 0-1 (paper) "
              "| channels with a Post below 0 (released) |\n| --- | --- | --- | --- | --- |")
        j_released, j_seed = [], []
        for b in blocks:
            a, s1, r = (sets[name].get(b, set()) for name in RUNS)
            j_released.append(jaccard(a, r))
            j_seed.append(jaccard(a, s1))
            print(f"| {b} | {len(a)} / {len(s1)} / {len(r)} | {j_released[-1]:.2f} | {j_seed[-1]:.2f} | {below.get(b, 0)} of {CHANNELS} |")
        print(f"| mean | | **{np.mean(j_released):.2f}** | **{np.mean(j_seed):.2f}** | |")
        verdict = "within" if np.mean(j_released) >= np.mean(j_seed) else "beyond"
        print(f"reading In and Post before the ReLU moves the passing sets {verdict} seed noise (mean Jaccard "
              f"{np.mean(j_released):.2f} against {np.mean(j_seed):.2f})")
        for b in blocks:
            a, r = sets["paper s0"].get(b, set()), sets["released s0"].get(b, set())
            if a != r:
                print(f"  block {b}: paper only {sorted(a - r) or 'none'}, released only {sorted(r - a) or 'none'}")
    print(f"time: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main_guard(main)
