"""benchmarks/gpu_check.sh in its CPU mode (GPU_CHECK_DEVICE=cpu, tiny sizes): every step of the GPU check runs, and
every figure of merit it exists to print is printed, so that the check cannot rot before a GPU shows up. Timings are
printed, never asserted."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_runs_on_the_cpu_and_prints_every_figure_of_merit(tmp_path):
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_OUT": str(tmp_path), "OMP_NUM_THREADS": "2"}
    p = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=1200)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "gpu_check (cpu): every step passed" in out, out[-3000:]
    for figure in ("--amp auto means", "passed",                              # the machine, the device tests
                   "speed-up", "median act. ratio",                           # bench_fzs: ours against lucent's loop
                   "projected full center sweep", "syncs/step",               # bench_sweep
                   "decoding alone",                                          # bench_ablate: decode and compute apart
                   "criteria.py, 7 blocks",                                   # bench_criteria
                   "The latency prediction (a RANDOM network", "cornet_s              IT  IT.output_1",  # latency.py, bench_archs
                   "Jaccard fp32-bf16", "cells equal"):                       # bench_precision
        assert figure in out, figure
