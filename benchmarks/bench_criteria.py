"""criteria.py's time on all seven blocks of resnet18, on FZs of every unit (made here at 1 step: the images' content
does not change the time).

    python benchmarks/bench_criteria.py --device cuda          # every unit (target: under 10 s on a GPU)
    python benchmarks/bench_criteria.py --channels 1           # one channel per layer (a smoke run)
"""

import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cli import configure, die, main_guard  # noqa: E402

CHANNELS = 0  # channels 0..CHANNELS-1 of every layer (0: all of them, 4,672 units)
STEPS = 1  # FZ steps (the time of criteria.py does not depend on them)
DEVICE = "auto"  # auto, cpu, cuda or cuda:N
# ---- end of flags (below: fixed constants, not flags)


def run(script, *args):
    t0 = time.time()
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        die(f"{script} failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
    return p.stdout, time.time() - t0


def main():
    configure(globals())
    channels = f"0:{CHANNELS}" if CHANNELS else ":"
    with tempfile.TemporaryDirectory() as tmp:
        run("fzs.py", "--weights", "random", "--layers", "all", "--channels", channels, "--steps", str(STEPS), "--png", "false",
            "--device", DEVICE, "--results", tmp, *(["--batch", str(CHANNELS)] if CHANNELS else []))
        out, wall = run("criteria.py", "--weights", "random", "--device", DEVICE, "--results", tmp)
    inner = re.search(r"time: ([0-9.]+) s on (.*)", out)
    print(f"criteria.py, 7 blocks, {'every unit' if not CHANNELS else f'{CHANNELS} channel(s) per layer'}: "
          f"{inner.group(1) if inner else '?'} s measuring (model load included) on {inner.group(2) if inner else '?'}, "
          f"{wall:.1f} s as a whole process")


if __name__ == "__main__":
    main_guard(main)
