"""What more random trials cost: ablate.py's sweep stage (screening + sweep of both blocks) with N_TRIALS = 10 and
with N_TRIALS = 100, and with the held-out and unscreened variants on top, on the same images, in one run. Prints
each time and its ratio to the paper's N = 10 sweep.

    python benchmarks/bench_trials.py --fake 200                                  # generated JPEGs, random weights
    python benchmarks/bench_trials.py --data ../shared/data/imagenet-sample-1000 --limit 200

Every run starts from the same natural stage (made once, then copied), so only the sweep is timed. The margin
accepts every draw ('<=100'), so screening needs no more draws than trials: the cost measured is that of the
conditions themselves.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cli import configure, die, main_guard  # noqa: E402
from results import natural_dir  # noqa: E402

DATA = ""  # image folder (prepared layout); empty: generate FAKE images into FAKE_DIR
FAKE = 0  # no DATA: this many generated JPEGs, labelled with the model's predictions
FAKE_DIR = "/tmp/bench_trials_jpegs"  # where generated JPEGs go (kept for reruns)
LIMIT = 200  # images used
WEIGHTS = "random"  # the timing does not depend on them
SETS = "2.1:0:12;3.1:0:25"  # passing sets of the paper's size (12 and 25 channels)
TRIALS = [10, 100]  # N_TRIALS settings to time
BATCH = 64  # images per batch
WORKERS = -1  # DataLoader workers (-1 = one per core)
# ---- end of flags (below: fixed constants, not flags)


def ablate(common, results, *args):
    """Seconds of one `python ablate.py` (common: the flags every run shares) into `results`."""
    cmd = [sys.executable, os.path.join(ROOT, "ablate.py"), *common, "--results", results, *map(str, args)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        die(f"ablate.py failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
    return time.time() - t0


def main():
    configure(globals())
    if not DATA and not FAKE:
        die("pass --data FOLDER or --fake N")
    common = ["--weights", WEIGHTS, "--data", DATA or FAKE_DIR, "--limit", str(LIMIT), "--sets", SETS,
              "--screen_margin", "2.1:<=100;3.1:<=100", "--batch", str(BATCH), "--workers", str(WORKERS)]
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "natural")
        fake = ["--fake", FAKE] if not DATA else []
        print(f"natural stage once ({LIMIT} images) ...", flush=True)
        ablate(common, base, "--stages", "natural", *fake)
        runs = [(n, "paper") for n in TRIALS] + [(n, "paper,heldout,unscreened") for n in TRIALS]
        times = {}
        for n, variants in runs:
            results = os.path.join(tmp, f"n{n}-{variants.count(',')}")
            shutil.copytree(natural_dir(base), natural_dir(results))
            times[n, variants] = ablate(common, results, "--stages", "sweep", "--n_trials", n, "--screen_draws", n, "--variants", variants)
            print(f"  N_TRIALS = {n:>4}, variants {variants:<26} {times[n, variants]:7.1f} s", flush=True)
    ref = times[TRIALS[0], "paper"]
    print(f"\nsweep stage, {LIMIT} images, both blocks, 6 scales (whole process: start-up, screening, sweep, writing)")
    for (n, variants), t in times.items():
        print(f"  N_TRIALS = {n:>4}  {variants:<26} {t:7.1f} s  {t / ref:5.2f}x the paper's N = {TRIALS[0]}")


if __name__ == "__main__":
    main_guard(main, "nothing was kept (the runs are in a temporary folder)")
