"""tuning.py: zoom views against torchvision on PIL, the natural-image analogues and the index on planted values,
each distinct image computed once and equal to a per-unit computation with hooks, end to end on the fixture
folder, and resuming after kill -9."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import arch
import cli
import imagenet
import results
import stats
import stream
import tuning
from conftest import relu_inputs, run_in_process

net = arch.net("resnet18")  # the paper's tables (tests of other architectures make their own)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, check=True):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tuning.py"), *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def run_here(*args):
    """run() in this process (conftest.run_in_process): for the refusals."""
    return run_in_process("tuning.py", *args)


def test_zoom_views_equal_torchvision_on_pil():
    g = np.random.default_rng(0)
    image = Image.fromarray(g.integers(0, 256, (260, 300, 3), dtype=np.uint8)).resize((330, 290), Image.BICUBIC)
    fractions = [1.0, 0.75, 0.5]
    ours = imagenet.zoom_views(image, fractions)
    assert imagenet.zooms(fractions) == [0.5, 0.75, 1.0, 1 / 0.75, 2.0] and ours.shape == (5, 3, 224, 224)
    view = T.Compose([T.Resize(256), T.CenterCrop(224)])(image)
    mean = tuple(round(255 * m) for m in imagenet.MEAN)
    expect = []
    for f in (0.5, 0.75):  # zoom out: shrink, pad with the mean colour, centered
        side = round(224 * f)
        a, b = (224 - side) // 2, 224 - side - (224 - side) // 2
        expect.append(T.Compose([T.Resize((side, side)), T.Pad((a, a, b, b), fill=mean)])(view))
    expect.append(view)
    for f in (0.75, 0.5):  # zoom in: the centre, resized back
        expect.append(T.Compose([T.CenterCrop(round(224 * f)), T.Resize((224, 224))])(view))
    for k, e in enumerate(expect):
        assert torch.equal(ours[k], T.functional.pil_to_tensor(e)), k
    assert (ours[0, :, 0, 0] == torch.tensor(mean, dtype=torch.uint8)).all()  # the padding is the mean colour


def test_analogues_and_index_on_planted_values():
    si = tuning.invariance_index(np.array([[1.0, 1.0, 1.0], [0.0, 2.0, 1.0], [-1.0, 0.0, -2.0], [2.0, -2.0, 1.0]]))
    assert si[0] == 1.0 and si[1] == 0.0 and np.isnan(si[2]) and si[3] == -1.0  # flat, peaked, never positive, Pre < 0
    assert tuning.preferred_zoom(np.array([[0, 3, 3, 1]]), [0.5, 1, 1.5, 2]).tolist() == [1]  # ties: the first
    silent = tuning.preferred_zoom(np.array([[0.0, 0.0, 0.0, 0.0], [-1.0, -2.0, 0.0, -3.0], [0.0, 0.0, 0.1, 0.0]]), [0.5, 1, 1.5, 2])
    assert np.isnan(silent[:2]).all() and silent[2] == 1.5  # never positive: no preferred zoom, not the first
    assert tuning.share_below(np.array([-0.7, np.nan, 0.7, np.nan])) == 0.5 and tuning.share_below(np.array([np.nan])) is None
    # Eq. 1n with Pre negative: Pre(S(x)) = -0.5 beats Pre(x) = -1 but not ReLU(Pre(x)) = 0
    frac, diff = tuning.eq1n(np.array([[0.5, -0.5, 2.0, np.nan]]), np.array([[-1.0, -1.0, 1.0, 5.0]]))
    assert frac.tolist() == [2 / 3] and np.allclose(diff, [(0.5 - 0.5 + 1.0) / 3])
    ratio = tuning.eq2n(np.array([[1.0, 3.0], [1.0, 1.0], [1.0, np.nan]]), np.array([[2.0, 2.0], [0.0, 0.0], [4.0, np.nan]]))
    assert ratio[0] == 1.0 and np.isnan(ratio[1]) and ratio[2] == 0.25  # zero denominator: undefined
    auc, p = stats.mann_whitney([5, 6, 7, 8, 9], [1, 2, 3, 4], 2000, 0)
    assert auc == 1.0 and p == 2 / 126  # exact (126 = C(9, 4) relabellings <= 2000): only the two extremes are as far
    auc, p = stats.mann_whitney([1, 2, 3, 4], [1, 2, 3, 4], 2000, 0)
    assert auc == 0.5 and p == 1.0
    assert stats.mann_whitney([], [1.0], 10, 0) == (None, None)


def test_unit_sets_are_unions_of_the_three_top_k():
    rng = np.random.default_rng(0)
    acts = {layer: rng.normal(size=(30, net.channels(layer))).astype(np.float16) for layer in net.blocks["2.1"]}
    tops = {layer: tuning.top_k(a, 4) for layer, a in acts.items()}
    units, sets, member = tuning.unit_sets(net, tops, ["2.1"], 4)
    assert len(units) == 128 and sets.shape == (128, 12) and member.shape == (128, 3, 12)
    for g in (0, 77):
        own = [set(np.argsort(-acts[layer][:, g].astype(np.float32), kind="stable")[:4]) for layer in net.blocks["2.1"]]
        u = sets[g][sets[g] >= 0]
        assert set(u) == set().union(*own) and list(u) == sorted(u)
        for r in range(3):
            assert set(sets[g][member[g, r]]) == own[r]


# ----------------------------------------------------------------------------------------------------
# On the fixture folder: the natural stage first, then tuning.py.

@pytest.fixture(scope="module")
def natural(fixture_folder, fixture_weights, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tuning"))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "ablate.py"), "--data", fixture_folder[0], "--weights", fixture_weights,
                        "--results", folder, "--stages", "natural", "--workers", "0", "--limit", "24"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    weights_id = stream.load_model(net.name, fixture_weights)[1]
    results.save_json({"config": {"weights_id": weights_id}, "blocks": {"2.1": {"n_channels": 128, "passing": list(range(0, 128, 5)),
                                                                                "measured": list(range(128))}}},
                      results.criteria_file(folder))
    return folder


ARGS = ["--tune_blocks", "2.1,3.1", "--top_k", "3", "--sample", "4", "--fractions", "1,0.5", "--workers", "0", "--batch", "4",
        "--permutations", "200"]


def test_each_image_once_and_equal_to_hooks_per_unit(natural, fixture_weights, fixture_model, tmp_path, monkeypatch):
    results = str(tmp_path / "res")
    shutil.copytree(natural, results)
    calls = []
    real = imagenet.decode_rgb
    monkeypatch.setattr(imagenet, "decode_rgb", lambda path: calls.append(path) or real(path))
    monkeypatch.setattr(sys, "argv", ["tuning.py", "--results", results, "--weights", fixture_weights, *ARGS])
    with contextlib.redirect_stdout(io.StringIO()):
        tuning.main()
    values = torch.load(os.path.join(results, "tuning", "values.pt"), weights_only=False)
    curves = torch.load(os.path.join(results, "tuning", "curves.pt"), weights_only=False)
    summary = torch.load(os.path.join(results, "natural", "summary.pt"), weights_only=False)
    per_unit = int(np.isfinite(values["values"][:, :, 0, 0]).sum())  # images over all units' sets, with repeats
    assert len(calls) == len(set(calls)) == values["done"] <= 24  # each distinct image decoded once
    assert per_unit >= 20 * len(calls)  # ... where a per-unit computation would decode (and run) it per unit
    # per unit, independently: hooks on the full torchvision model, on the zoom views of the unit's own top-3 images
    units = curves["units"]
    for g in (3, 130, 300):
        block, c = units[g]
        layers = net.blocks[block]
        tops = [np.argsort(-np.load(os.path.join(results, "natural", f"{layer}.npy")).astype(np.float32)[:, c], kind="stable")[:3]
                for layer in layers]
        for r, layer in enumerate(layers):
            views = torch.stack([imagenet.zoom_views(real(os.path.join(summary["root"], summary["paths"][i])), [1, 0.5]) for i in tops[r]])
            seen = {}
            h = fixture_model.get_submodule(layer).register_forward_hook(
                lambda _m, _i, out: seen.setdefault("a", []).append(out[:, c, out.shape[2] // 2, out.shape[3] // 2].clone()))
            with torch.no_grad():
                for z in range(3):
                    fixture_model(stream.normalize(stream.to_float(views[:, z])))
            h.remove()
            expect = torch.stack(seen["a"], 1).mean(0).numpy()  # (zooms,)
            assert np.allclose(curves["curves"][g, r], expect, rtol=1e-4, atol=1e-4), (block, c, layer)


def test_end_to_end_and_resume_after_kill(natural, fixture_weights, tmp_path):
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    shutil.copytree(natural, whole)
    shutil.copytree(natural, killed)
    out = run("--results", whole, "--weights", fixture_weights, *ARGS).stdout
    d = json.load(open(os.path.join(whole, "tuning.json")))
    assert set(d["blocks"]) == {"2.1", "3.1"} and d["config"]["top_k"] == 3 and d["config"]["zooms"] == [0.5, 1.0, 2.0]
    b = d["blocks"]["2.1"]
    assert b["n_channels"] == 128 and b["count_natural"] == len(b["passing_natural"])
    t = b["fz"]["table"]
    assert sum(t.values()) == 128 and t["both"] + t["fz_only"] == 26 and 0 < b["fz"]["post_si"]["p"] <= 1
    assert d["blocks"]["3.1"]["fz"] == "no FZ criteria for this block in criteria.json"
    assert "block 2.1:" in out and "Jaccard" in out
    rows = open(os.path.join(whole, "tuning.csv")).read().splitlines()
    assert len(rows) == 1 + 128 + 256 and rows[0].startswith("block,channel,in_si,pre_si,post_si")
    # kill -9 after a checkpoint, then the same command: the same values as the uninterrupted run
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "tuning.py"), "--results", killed, "--weights", fixture_weights, *ARGS,
                          "--batch", "1", "--checkpoint_seconds", "0.01"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = os.path.join(killed, "tuning", "values.pt")
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.isfile(path) and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    partial = torch.load(path, weights_only=False)
    assert 0 < partial["done"] < torch.load(os.path.join(whole, "tuning", "values.pt"), weights_only=False)["done"], "killed too late"
    assert "resuming after" in run("--results", killed, "--weights", fixture_weights, *ARGS, "--batch", "1").stdout
    a = torch.load(os.path.join(whole, "tuning", "values.pt"), weights_only=False)
    b = torch.load(os.path.join(killed, "tuning", "values.pt"), weights_only=False)
    assert np.allclose(a["values"], b["values"], equal_nan=True, atol=1e-5) and np.allclose(a["sample"], b["sample"], atol=1e-5)


def test_refusals_are_one_line(natural, tmp_path):
    p = run_here("--results", str(tmp_path / "nothing"), "--weights", "random")
    assert p.returncode != 0 and "Traceback" not in p.stderr  # the command that makes it, into the folder asked for
    assert f"make it with python ablate.py --stages natural --data /path/to/imagenet/val --weights IMAGENET1K_V1 --results {tmp_path / 'nothing'}" in p.stderr
    p = run_here("--results", natural, "--weights", "random", *ARGS)
    assert p.returncode != 0 and "made with weights" in p.stderr and "not --weights random" in p.stderr and "Traceback" not in p.stderr
    p = run_here("--results", natural, *ARGS)  # no --weights: the summary's, a checkpoint that its id cannot load
    assert p.returncode != 0 and "pass it with --weights /path/to/" in p.stderr and "Traceback" not in p.stderr
    p = run_here("--results", natural, "--weights", "random", "--fractions", "1")
    assert p.returncode != 0 and "--fractions" in p.stderr


def test_released_reading_equals_relu_input_hooks_and_is_never_mixed(natural, fixture_weights, fixture_model, tmp_path, monkeypatch):
    folder = str(tmp_path / "res")
    shutil.copytree(natural, folder)
    args = ["--results", folder, "--weights", fixture_weights, *ARGS, "--tune_blocks", "2.1", "--sample", "0"]
    p = run_here(*args, "--post_as_released", "true")  # criteria.json holds the paper's reading: refused at once
    assert p.returncode != 0 and "criteria.json was made with --post_as_released false" in p.stderr and "Traceback" not in p.stderr
    crit = json.load(open(results.criteria_file(folder)))
    results.save_json({**crit, "config": {**crit["config"], "post_as_released": True}}, results.criteria_file(folder))
    for name in cli.flag_names(tuning.__file__):
        monkeypatch.setattr(tuning, name, getattr(tuning, name))  # main's configure() rewrites them; restored after
    monkeypatch.setattr(sys, "argv", ["tuning.py", *args, "--post_as_released", "true"])
    with contextlib.redirect_stdout(io.StringIO()):
        tuning.main()
    curves = torch.load(os.path.join(folder, "tuning", "curves.pt"), weights_only=False)
    summary = torch.load(os.path.join(folder, "natural", "summary.pt"), weights_only=False)
    assert curves["config"]["post_as_released"] is True
    g = 7
    block, c = curves["units"][g]
    negative = False
    for r, layer in enumerate(net.blocks[block]):  # In = layer2.0 and Post = layer2.1: their sums; Pre: bn2
        top = np.argsort(-np.load(os.path.join(folder, "natural", f"{layer}.npy")).astype(np.float32)[:, c], kind="stable")[:3]
        views = torch.stack([imagenet.zoom_views(imagenet.decode_rgb(os.path.join(summary["root"], summary["paths"][i])), [1, 0.5])
                             for i in top])
        per_zoom = []
        for z in range(3):
            x = stream.normalize(stream.to_float(views[:, z]))
            if net.where(layer)[1] == "post":
                fmap = relu_inputs(fixture_model, x)[layer]
            else:
                seen = {}
                h = fixture_model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: seen.__setitem__("a", out.clone()))
                with torch.no_grad():
                    fixture_model(x)
                h.remove()
                fmap = seen["a"]
            per_zoom.append(fmap[:, c, fmap.shape[2] // 2, fmap.shape[3] // 2])
        expect = torch.stack(per_zoom, 1)
        negative |= bool((expect < 0).any()) and net.where(layer)[1] == "post"
        assert np.allclose(curves["curves"][g, r], expect.mean(0).numpy(), rtol=1e-4, atol=1e-4), (block, c, layer)
    assert negative, "no block output of this unit went below zero: the test cannot tell the sum from the ReLU"
    other = str(tmp_path / "other")  # a copy: this process still holds the lock of the first
    shutil.copytree(folder, other)
    os.remove(results.criteria_file(other))  # (it would be refused first)
    p = run_here(*[other if a == folder else a for a in args])  # the values measured before the ReLU are not resumed after it
    assert p.returncode != 0 and "post_as_released: True vs False" in p.stderr and "Traceback" not in p.stderr
