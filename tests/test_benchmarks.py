"""Every benchmark script at a tiny size, so that none can rot unseen: each runs, prints the figures it exists to
print, and its equality checks hold. Timings are printed, never asserted. (bench_fzs, bench_sweep, bench_criteria and
bench_precision run inside benchmarks/gpu_check.sh's CPU mode, tests/test_gpu_check.py.)"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(script, *args):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    return p.stdout


def test_bench_ablate_ours_equals_the_released_way_in_every_cell(tmp_path, fixture_weights):
    """On the fixture model (predictions spread over classes, so no near-tie of random weights flips a count)."""
    out = bench("bench_ablate.py", "--weights", fixture_weights, "--fake", "4", "--fake_dir", str(tmp_path / "jpegs"), "--limit", "4", "--passing", "2,2",
                "--n_trials", "1", "--scales", "10", "--workers", "0", "--amp", "fp32")
    m = re.search(r"cells with equal correct counts: (\d+) of (\d+)", out)
    assert m and m.group(1) == m.group(2) == "8", out
    assert "decoding alone" in out and "speed-up" in out


def test_bench_trials(tmp_path):
    out = bench("bench_trials.py", "--fake", "8", "--fake_dir", str(tmp_path / "jpegs"), "--limit", "8", "--trials", "1",
                "--workers", "0", "--sets", "2.1:0:2;3.1:0:2")
    assert len(re.findall(r"N_TRIALS =\s+\d+\s+paper", out)) == 2 and "the paper's N = 1" in out


@pytest.mark.parametrize("script,args,figures", [
    ("bench_archs.py", ["--archs", "resnet18,cornet_s", "--batch", "1", "--steps", "1"],
     ["resnet18", "all", " h", "cornet_s              IT  IT.output_1", "x resnet18)"]),
    ("profile_fzs.py", ["--layers", "layer1.0", "--batch", "1", "--steps", "1", "--warmup", "1", "--top", "3"], ["Self CPU time total"]),
    ("flops_fzs.py", [], ["full center sweep: 65.4 PFLOP", "at 100% of 989 TFLOP/s"]),
])
def test_benchmark_prints_its_figures(script, args, figures):
    out = bench(script, *args)
    for figure in figures:
        assert figure in out, (figure, out[-1500:])


def test_bench_released_prints_its_table():
    """bench_released.py (docs/differences.md's table) at a tiny size: three FZ runs of one block and its table row."""
    out = bench("bench_released.py", "--blocks", "2.1", "--channels", "1", "--steps", "1")
    assert re.search(r"\| 2\.1 \| \d / \d / \d \| \d\.\d\d \| \d\.\d\d \| \d of 1 \|", out), out[-1500:]
    assert "seed noise (mean Jaccard" in out
