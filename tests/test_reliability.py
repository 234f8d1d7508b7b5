"""Reliability across the scripts: one process per results folder, merges a dead process left half done,
byte-reproducible result files, and the README's smoke pipeline producing every figure with content."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import results
from conftest import run_in_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name, *args, cwd=ROOT, check=True, **kw):
    p = subprocess.run([sys.executable, os.path.join(cwd, name), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, "OMP_NUM_THREADS": "2", "MPLBACKEND": "Agg"}, **kw)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def script_here(name, *args, check=True):
    """script() in this process (conftest.run_in_process), for the runs whose point is not the process itself."""
    p = run_in_process(name, *args)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ----------------------------------------------------------------------------------------------------
# One process per results folder

def test_a_second_fzs_on_the_same_folder_is_refused_and_a_kill_leaves_no_stale_lock(tmp_path):
    folder = str(tmp_path / "res")
    args = ["--layers", "layer1.0", "--channels", "0:4", "--steps", "5000", "--batch", "2", "--weights", "random",
            "--png", "false", "--results", folder]
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "fzs.py"), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        lock = results.lock_file(folder, "fzs.py")
        deadline = time.time() + 60
        while time.time() < deadline and not (os.path.isfile(lock) and f"pid {first.pid}" in open(lock).read()):
            time.sleep(0.05)
        t0 = time.time()
        second = script("fzs.py", *args, check=False, timeout=60)  # not refused: a TimeoutExpired fails the test
        assert second.returncode != 0 and time.time() - t0 < 30  # refused at once, no hang
        assert f"is in use by another fzs.py (pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    held = results.lock_results(folder, "fzs.py")  # the kernel dropped the dead process's lock: nothing stale
    held.close()


@pytest.mark.parametrize("name,args", [
    ("criteria.py", ["--weights", "random", "--blocks", "2.1"]),
    ("ablate.py", ["--weights", "random", "--data", "{data}"]),
])
def test_criteria_and_ablate_refuse_a_folder_in_use(tmp_path, name, args, fixture_folder):
    folder = str(tmp_path / "res")
    os.makedirs(os.path.join(folder, "fzs"))
    held = results.lock_results(folder, name)  # as if another process were running it
    try:
        p = script_here(name, *[a.replace("{data}", fixture_folder[0]) for a in args], "--results", folder, check=False)
        assert p.returncode != 0 and f"is in use by another {name}" in p.stderr and "Traceback" not in p.stderr
    finally:
        held.close()


def test_a_rerun_finishes_a_merge_a_dead_process_left_half_done(tmp_path):
    """Part files that were never merged (the process died between the part and the merge, or a torchrun rank 0 died)
    are merged by the next run, whatever channels it asks for, and leave no .parts folder behind."""
    common = ["--layers", "layer1.0", "--steps", "2", "--batch", "2", "--weights", "random", "--png", "false"]
    done, other = str(tmp_path / "done"), str(tmp_path / "other")
    script_here("fzs.py", *common, "--channels", "0:2", "--results", done)
    script_here("fzs.py", *common, "--channels", "2:4", "--results", other)
    parts = os.path.join(done, "fzs", "layer1.0", "center.parts")
    os.makedirs(parts)
    os.replace(os.path.join(other, "fzs", "layer1.0", "center.pt"), os.path.join(parts, "0001-00000000.pt"))
    open(os.path.join(parts, ".0002-00000000.pt.x.tmp"), "w").close()  # a temp file a kill -9 left mid-write
    out = script_here("fzs.py", *common, "--channels", "0:2", "--results", done).stdout
    assert "0 unit(s) to make" in out and "(2 already made)" in out
    merged = torch.load(os.path.join(done, "fzs", "layer1.0", "center.pt"), weights_only=False)
    assert merged["channels"].tolist() == [0, 1, 2, 3] and not os.path.exists(parts)
    out = script_here("fzs.py", *common, "--channels", "0:4", "--results", done).stdout
    assert "0 unit(s) to make" in out and "(4 already made)" in out  # units merged earlier count as made
    # a leftover part holding units the rerun asks for: counted as made (not recomputed), then merged
    script_here("fzs.py", *common, "--channels", "4:6", "--results", str(tmp_path / "third"))
    os.makedirs(parts)
    os.replace(os.path.join(tmp_path, "third", "fzs", "layer1.0", "center.pt"), os.path.join(parts, "0002-00000000.pt"))
    out = script_here("fzs.py", *common, "--channels", "0:6", "--results", done).stdout
    assert "0 unit(s) to make" in out and "(6 already made)" in out
    merged = torch.load(os.path.join(done, "fzs", "layer1.0", "center.pt"), weights_only=False)
    assert merged["channels"].tolist() == [0, 1, 2, 3, 4, 5] and not os.path.exists(parts)


# ----------------------------------------------------------------------------------------------------
# Equal content, equal bytes

@pytest.mark.cpu_exact
def test_result_files_are_byte_reproducible(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "sub" / "b.pt"
    results.save_pt({"x": torch.arange(5), "config": {"k": 1}}, str(a))
    results.save_pt({"x": torch.arange(5), "config": {"k": 1}}, str(b))
    assert sha(a) == sha(b)
    common = ["--layers", "layer2.0,layer2.1.bn2", "--channels", "0:2", "--steps", "2", "--batch", "2", "--weights", "random",
              "--png", "false"]
    for run in ("one", "two"):
        script("fzs.py", *common, "--results", tmp_path / run)
        script("criteria.py", "--weights", "random", "--blocks", "2.1", "--results", tmp_path / run)
    for layer in ("layer2.0", "layer2.1.bn2"):
        assert sha(tmp_path / "one" / "fzs" / layer / "center.pt") == sha(tmp_path / "two" / "fzs" / layer / "center.pt")
    one, two = (json.loads((tmp_path / run / "criteria.json").read_text()) for run in ("one", "two"))
    assert one["fz_sha256"] == two["fz_sha256"] and one["blocks"] == two["blocks"]


# ----------------------------------------------------------------------------------------------------
# The newcomer's path: the README's smoke pipeline, run as written, makes every figure with content

def readme_smoke_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"```\n# smoke pipeline[^\n]*\n(.*?)```", text, re.S)
    assert block, "the README has no smoke pipeline block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def tree(folder):
    """{relative path: sha256} of every file under a folder."""
    return {os.path.relpath(os.path.join(d, f), folder): sha(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files}


def test_readme_smoke_pipeline_makes_every_figure_with_content(tmp_path):
    """Run as written in a checkout whose results/ holds a real run's FZs (the quickest run's 128 steps): the smoke run
    writes only under its own folders, so it neither stops on them nor changes them."""
    for name in os.listdir(ROOT):  # a fresh checkout's scripts, run from a folder of their own
        if name.endswith(".py"):
            shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    planted = tmp_path / "results"
    (planted / "README.md").parent.mkdir()
    (planted / "README.md").write_text("Generated files land here (not committed).\n")
    fz = {"images": torch.zeros(4, 3, 224, 224, dtype=torch.uint8), "channels": torch.arange(4), "activation": torch.zeros(4),
          "config": {"arch": "resnet18", "layer": "layer2.0", "objective": "center", "weights": "IMAGENET1K_V1", "seed": 0,
                     "steps": 128, "lr": 0.05, "amp": "fp32", "pre_as_released": False, "batch": 4}}
    results.save_pt(fz, results.fz_file(str(planted), "layer2.0", "center"))
    before = tree(planted)
    import shlex
    outputs = {}
    for line in readme_smoke_commands():
        argv = shlex.split(line)
        assert argv[0] == "python"
        p = script(argv[1], *argv[2:], cwd=str(tmp_path), check=False, timeout=600)
        assert p.returncode == 0, f"{line}\n{p.stderr[-3000:]}"
        outputs[argv[1]] = outputs.get(argv[1], "") + p.stdout
    assert tree(planted) == before, "the smoke run wrote into results/"
    smoke = tmp_path / "results_smoke"
    figures = smoke / "figures"
    for name in ("grids_selected", "ratios", "mix_hist", "mix_vs_bn2", "mix_vs_conv2", "pass_frequency", "tuning_curves_2.1",
                 "tuning_curves_3.1", "tuning_si", "tuning_zoom"):
        assert (figures / f"{name}.png").stat().st_size > 20_000 and (figures / f"{name}.pdf").is_file(), name
    assert "missing" not in outputs["plot_grids.py"]  # center FZs, channel FZs and top-9 natural images of every grid
    for block in ("2.1", "3.1"):
        d = json.loads((smoke / "ablation" / f"{block}.json").read_text())
        assert all(r is not None and np.isfinite(r) for r in d["ratio"]), d["ratio"]  # Fig. 2 has points
        assert d["accuracy"]["none"][0] == 1.0  # the generated images are labelled with the model's predictions
    stability = json.loads((smoke / "stability.json").read_text())
    assert set(stability["blocks"]) == {"2.1", "3.1"}


def test_a_full_disk_is_a_one_line_error_that_keeps_what_was_finished(tmp_path):
    """ENOSPC while fzs.py saves its second batch: one line naming the folder, exit 1, the first batch's part whole."""
    planted = ("import errno, sys, torch, fzs\nreal, calls = torch.save, []\n"
               "def full(obj, f, *a, **k):\n    calls.append(1)\n    if len(calls) == 2:\n"
               "        raise OSError(errno.ENOSPC, 'No space left on device')\n    return real(obj, f, *a, **k)\n"
               "torch.save = full\nsys.argv = ['fzs.py'] + sys.argv[1:]\nfzs.main_guard(fzs.main)")
    res = tmp_path / "r"
    p = subprocess.run([sys.executable, "-c", planted, "--layers", "layer1.0", "--channels", "0:4", "--batch", "2", "--steps", "1",
                        "--weights", "random", "--png", "false", "--results", str(res)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]  # after the progress bar, one line
    assert last.startswith("error: no space left in") and "center.parts" in last and p.stderr.count("error:") == 1
    parts = sorted((res / "fzs" / "layer1.0" / "center.parts").glob("*.pt"))
    assert len(parts) == 1 and torch.load(parts[0], weights_only=False)["channels"].tolist() == [0, 1]
    assert not list((res / "fzs" / "layer1.0" / "center.parts").glob(".*.tmp"))  # no half-written file left


def test_sigterm_saves_what_ctrl_c_saves(tmp_path):
    """A scheduler's SIGTERM: fzs.py ends with one line, exit status 143, its finished batches kept as part files."""
    res = tmp_path / "r"
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "fzs.py"), "--layers", "layer1.0", "--channels", "0:4", "--batch", "2",
                          "--steps", "40", "--weights", "random", "--png", "false", "--results", str(res)],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parts = res / "fzs" / "layer1.0" / "center.parts"
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("*.pt")):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == ("terminated (SIGTERM): finished batches are saved as part files; run the same "
                                            "command again to resume")
    assert len(list(parts.glob("*.pt"))) >= 1


def test_a_rerun_right_after_kill_9_is_not_refused_while_workers_die(tmp_path, fixture_folder):
    """DataLoader workers inherit the results lock's descriptor; each worker lets go of it at start, so that after the
    parent's kill -9 the lock goes at once (a worker notices its parent is gone only seconds later)."""
    root, _ = fixture_folder
    res = tmp_path / "r"
    args = [sys.executable, os.path.join(ROOT, "ablate.py"), "--data", root, "--weights", "random", "--stages", "natural",
            "--workers", "2", "--batch", "1", "--results", str(res)]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and "img" not in (p.stderr.read(200) or ""):  # the progress bar: workers are running
        pass
    p.send_signal(signal.SIGKILL)
    p.wait()
    again = subprocess.run(args[:-2] + ["--results", str(res), "--limit", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "in use by another" not in again.stderr, again.stderr[-1000:]
