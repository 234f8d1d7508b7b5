"""criteria.py: the equations on planted activations, S on a hand-made image, the batched measurement against
one-channel-at-a-time forward hooks, the file checks, the stability report, and fzs.py -> criteria.py end to end."""

import csv
import json
import os
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import arch
import cli
import criteria
import results
import stream
from conftest import relu_inputs, run_in_process

net = arch.net("resnet18")  # the paper's tables (tests of other architectures make their own)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------------
# The equations

def test_eq1_planted():
    pre_in = [1.0, 2.0, -1.0, -1.0, 1.0, -3.0, -2.0, 0.0]
    zoom_in = [2.0, 1.0, -0.5, 0.5, 1.0, 0.0, -3.0, 1e-6]
    # zoom raises; zoom lowers; Pre negative on both images (raised, but not in the positive domain);
    # negative -> positive; equal (strict); negative -> exactly 0; both negative, lowered; 0 -> tiny positive
    assert criteria.eq1(pre_in, zoom_in).tolist() == [True, False, False, True, False, False, False, True]
    assert criteria.eq1(torch.tensor(pre_in), torch.tensor(zoom_in)).tolist() == criteria.eq1(pre_in, zoom_in).tolist()


def test_eq2_planted_edges_and_zero_denominators():
    post_in = [2.0, 3.0, 1.0, 2.0 + 1e-9, 3.0 - 1e-9, 1.0, 0.0, 0.0, 5.0, 1.0, 1.0]
    post_pre = [3.0, 2.0, 1.0, 3.0, 2.0, 0.0, 0.0, 1.0, 1.0, -1.0, -0.0]
    # ratio exactly 2/3 and 3/2 fail (strict); 1 passes; just inside both edges pass; Post zero on X̂_Pre fails,
    # also with Post zero on X̂_In; ratio 0 fails; 5 fails; a negative (planted) or negative-zero denominator fails
    expected = [False, False, True, True, True, False, False, False, False, False, False]
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        got = criteria.eq2(post_in, post_pre)
        mix = criteria.mix_ratio(post_in, post_pre, criteria.MIX_IF_PRE_NONPOS, criteria.MIX_IF_IN_NONPOS)
    assert got.tolist() == expected
    assert np.isfinite(mix).all()
    assert criteria.eq2(torch.tensor(post_in, dtype=torch.float64), torch.tensor(post_pre, dtype=torch.float64)).tolist() == expected


def test_mix_ratio_released_conventions():
    post_in = [2.0, 0.0, 3.0, 0.0, -1.0, 1.0]
    post_pre = [4.0, 5.0, 0.0, 0.0, 0.0, -2.0]
    mix = criteria.mix_ratio(post_in, post_pre, criteria.MIX_IF_PRE_NONPOS, criteria.MIX_IF_IN_NONPOS)
    assert mix[0] == 0.5
    assert mix[1] == criteria.MIX_IF_IN_NONPOS == 0.0  # only Post_c(X̂_In) <= 0
    assert mix[2] == criteria.MIX_IF_PRE_NONPOS == 10.0  # only Post_c(X̂_Pre) <= 0
    assert mix[3] == mix[4] == mix[5] == criteria.MIX_IF_PRE_NONPOS  # both <= 0: the released order, Pre's rule first


def test_jaccard():
    assert criteria.jaccard([], []) == 1.0
    assert criteria.jaccard([1, 2], []) == 0.0
    assert criteria.jaccard([1, 2, 3], [2, 3, 4]) == 0.5
    assert criteria.jaccard({5}, [5]) == 1.0


# ----------------------------------------------------------------------------------------------------
# S: center crop 112, bilinear resize to 224

def test_zoom_on_hand_made_image():
    x = torch.zeros(1, 3, 224, 224)
    x[:, 0, 56:168, 56:168] = 1.0  # red square = exactly the 112 px center crop
    x[:, 1, :56] = 1.0  # green band above it: must vanish
    x[:, 2, 56:168, 56:112] = 1.0  # blue on the left half of the square: becomes the left half of the image
    y = stream.zoom(x)
    assert y.shape == (1, 3, 224, 224)
    assert torch.equal(y[:, 0], torch.ones(1, 224, 224))
    assert y[:, 1].abs().max() == 0
    assert torch.all(y[:, 2, :, :111] == 1) and torch.all(y[:, 2, :, 113:] == 0)  # two blended columns at the edge

    ramp = torch.arange(224.0).view(1, 1, 224, 1).expand(1, 1, 224, 224).contiguous()  # value = row index
    i = torch.arange(224.0)
    expected = 56 + (i / 2 - 0.25).clamp(0, 111)  # half-pixel bilinear upsampling by 2 of rows 56..167
    assert torch.allclose(stream.zoom(ramp)[0, 0, :, 0], expected, atol=1e-5)

    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 224, 224, generator=g)
    released = TF.resize(TF.center_crop(img, [112, 112]), [224, 224], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    assert torch.allclose(stream.zoom(img), released, atol=1e-5)  # the released scripts' CenterCrop(112), Resize(224)
    pil = np.asarray(Image.fromarray(img[0, 0].numpy(), mode="F").crop((56, 56, 168, 168)).resize((224, 224), Image.BILINEAR))
    assert np.allclose(stream.zoom(img)[0, 0].numpy(), pil, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Hand-made FZ files (the format of fzs.py), for the in-process tests

WEIGHTS = "random"


@pytest.fixture(scope="module")
def model(fixture_model, fixture_weights):
    """The fixture model (conftest.py: every BatchNorm non-trivial) and its weights id."""
    return fixture_model, stream.load_model(net.name, fixture_weights)[1]


def make_fz(folder, layer, channels, model=None, seed=0, **config):
    g = torch.Generator().manual_seed(zlib.crc32(f"{layer}|{seed}".encode()))
    images = torch.randint(0, 256, (len(channels), 3, 224, 224), dtype=torch.uint8, generator=g)
    ch = torch.tensor(channels, dtype=torch.int64)
    fz = {"images": images, "channels": ch,
          "config": {"layer": layer, "objective": "center", "weights": "random:0", "seed": seed, "steps": 2, "lr": 0.05,
                     "batch": 4, "amp": "fp32", "pre_as_released": False, "jitter": 0, **config}}
    if model is not None:
        fz["activation"] = stream.read_center(net, model, stream.normalize(stream.to_float(images)), [layer],
                                              fz["config"].get("post_as_released", False))[layer][torch.arange(len(ch)), ch]
    results.save_pt(fz, results.fz_file(folder, layer, "center"))
    return fz


def hooked(model, layers, x):
    """The slow path: the full torchvision forward with a hook per layer that clones at hook time."""
    got, handles = {}, []
    for layer in layers:
        handles.append(model.get_submodule(layer).register_forward_hook(lambda m, i, o, layer=layer: got.__setitem__(layer, o.clone())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return got


@pytest.mark.parametrize("block", ["1.1", "2.1"])
def test_batched_measurement_matches_hooks(tmp_path, model, block):
    m, weights_id = model
    In, Pre, Post = net.blocks[block]
    fz_in = make_fz(tmp_path, In, [0, 5, 9, 11], m, weights=weights_id)
    fz_pre = make_fz(tmp_path, Pre, [0, 3, 5, 9, 40], m, weights=weights_id)
    mix_if = (criteria.MIX_IF_PRE_NONPOS, criteria.MIX_IF_IN_NONPOS)
    v = criteria.measure_block(net, m, block, criteria.load_fz(net, tmp_path, In), criteria.load_fz(net, tmp_path, Pre),
                               torch.device("cpu"), 2, mix_if)
    assert v["channel"].tolist() == [0, 5, 9]  # channels with both FZs only
    for i, c in enumerate([0, 5, 9]):
        x_in = fz_in["images"][fz_in["channels"].tolist().index(c)][None].float() / 255
        x_pre = fz_pre["images"][fz_pre["channels"].tolist().index(c)][None].float() / 255
        zoomed = TF.resize(TF.center_crop(x_in, [112, 112]), [224, 224], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
        a = hooked(m, [In, Pre, Post], stream.normalize(x_in))
        z = hooked(m, [Pre], stream.normalize(zoomed))
        p = hooked(m, [Pre, Post], stream.normalize(x_pre))
        h, w = a[Pre].shape[2] // 2, a[Pre].shape[3] // 2
        want = {"pre_in": a[Pre][0, c, h, w], "pre_zoom_in": z[Pre][0, c, h, w], "post_in": a[Post][0, c, h, w],
                "post_pre": p[Post][0, c, h, w], "objective_in": a[In][0, c, h, w], "objective_pre": p[Pre][0, c, h, w]}
        for k, value in want.items():
            assert torch.allclose(v[k][i], value, rtol=1e-4, atol=1e-4), (k, c, float(v[k][i]), float(value))
    bn2, conv2 = m.get_submodule(Pre), m.get_submodule(Pre[:-3] + "conv2")
    for i, c in enumerate([0, 5, 9]):
        assert float(v["bn2_abs"][i]) == pytest.approx(abs(float(bn2.weight[c])))
        assert float(v["conv2_abs_mean"][i]) == pytest.approx(float(np.abs(conv2.weight[c].numpy()).mean()), rel=1e-6)
    assert v["passes"].tolist() == (criteria.eq1(v["pre_in"], v["pre_zoom_in"]) & criteria.eq2(v["post_in"], v["post_pre"])).tolist()


@pytest.mark.parametrize("block", ["1.1", "2.0", "3.1"])
def test_released_reading_matches_relu_input_hooks(tmp_path, model, block):
    """--post_as_released: the four values, Eq. 1, Eq. 2 and the mix ratio, recomputed from the ReLU's input (the sum)
    where In or Post is a block output, and from plain hooks where it is a downsample BatchNorm or bn2."""
    m, weights_id = model
    In, Pre, Post = net.blocks[block]
    chans = list(range(12))
    fz_in = make_fz(tmp_path, In, chans, m, weights=weights_id, post_as_released=True)
    fz_pre = make_fz(tmp_path, Pre, chans, m, weights=weights_id, post_as_released=True)
    mix_if = (7.0, 3.0)
    v = criteria.measure_block(net, m, block, criteria.load_fz(net, tmp_path, In), criteria.load_fz(net, tmp_path, Pre),
                               torch.device("cpu"), 5, mix_if, post_as_released=True)

    def read(x, layer):
        """Each image's own channel (image i is channel chans[i]'s FZ) at the center of layer, on the full model; the
        eval-mode model treats the images of a batch independently, so one forward serves all twelve."""
        got = relu_inputs(m, x) if net.where(layer)[1] == "post" else hooked(m, [layer], x)
        fmap = got[layer]
        return fmap[torch.arange(len(chans)), chans, fmap.shape[2] // 2, fmap.shape[3] // 2]
    x_in, x_pre = fz_in["images"][chans].float() / 255, fz_pre["images"][chans].float() / 255
    zoomed = torch.cat([TF.resize(TF.center_crop(x[None], [112, 112]), [224, 224], interpolation=TF.InterpolationMode.BILINEAR,
                                  antialias=False) for x in x_in])  # image by image, as the loop over channels did
    want = {"pre_in": read(stream.normalize(x_in), Pre), "pre_zoom_in": read(stream.normalize(zoomed), Pre),
            "post_in": read(stream.normalize(x_in), Post), "post_pre": read(stream.normalize(x_pre), Post),
            "objective_in": read(stream.normalize(x_in), In)}
    want = {k: w.double().numpy() for k, w in want.items()}
    for k, w in want.items():
        assert np.allclose(v[k].double().numpy(), w, rtol=1e-4, atol=1e-4), k
    assert (want["post_in"] < 0).any() or (want["post_pre"] < 0).any()  # the option changes values the ReLU would clip
    pin, ppre = want["post_in"], want["post_pre"]
    eq1 = np.maximum(want["pre_in"], 0) < want["pre_zoom_in"]
    eq2 = np.array([b > 0 and 2 / 3 < a / b < 3 / 2 for a, b in zip(pin, ppre)])
    mix = np.array([7.0 if b <= 0 else 3.0 if a <= 0 else a / b for a, b in zip(pin, ppre)])
    assert v["eq1"].tolist() == eq1.tolist() and v["eq2"].tolist() == eq2.tolist()
    assert v["passes"].tolist() == (eq1 & eq2).tolist()
    assert np.allclose(v["mix"].numpy(), mix, rtol=1e-3, atol=1e-4)  # a ratio: small denominators magnify float32 rounding
    assert criteria.objective_warning(block, In, v["objective_in"], v["stored_in"]) is None  # the stored objective is the sum too
    # on the same images the two readings pass the same channels, with the same m (docs/differences.md says why)
    paper = criteria.measure_block(net, m, block, criteria.load_fz(net, tmp_path, In), criteria.load_fz(net, tmp_path, Pre),
                                   torch.device("cpu"), 5, mix_if)
    assert paper["passes"].tolist() == v["passes"].tolist() and np.allclose(paper["mix"].numpy(), v["mix"].numpy())
    assert not np.allclose(paper["post_in"].numpy(), v["post_in"].numpy())  # though the values differ


def test_released_and_paper_fzs_are_never_mixed(tmp_path, model, monkeypatch, capsys, fixture_weights):
    """FZs made with --post_as_released are refused by a criteria run without it, and the other way round; In and Pre
    FZs made under different settings are refused as a pair."""
    m, weights_id = model
    make_fz(tmp_path, "layer2.0", [0, 1], m, weights=weights_id, post_as_released=True)
    make_fz(tmp_path, "layer2.1.bn2", [0, 1], m, weights=weights_id, post_as_released=True)
    make_fz(tmp_path, "layer3.0", [0, 1], m, weights=weights_id)  # the paper's reading (no key: files made before the option)
    make_fz(tmp_path, "layer3.1.bn2", [0, 1], m, weights=weights_id)
    make_fz(tmp_path, "layer1.0", [0, 1], m, weights=weights_id, post_as_released=True)
    make_fz(tmp_path, "layer1.1.bn2", [0, 1], m, weights=weights_id, post_as_released=False)
    mix_if = (criteria.MIX_IF_PRE_NONPOS, criteria.MIX_IF_IN_NONPOS)
    cpu, blocks = torch.device("cpu"), ["1.1", "2.1", "3.1", "4.1"]
    paper = criteria.run_criteria(net, m, weights_id, str(tmp_path), blocks, WEIGHTS, cpu, 4, mix_if)
    released = criteria.run_criteria(net, m, weights_id, str(tmp_path), blocks, WEIGHTS, cpu, 4, mix_if, post_as_released=True)
    assert list(paper["blocks"]) == ["3.1"] and list(released["blocks"]) == ["2.1"]
    assert "made with --post_as_released true, this run is --post_as_released false" in paper["skipped"]["2.1"]
    assert "made with --post_as_released false, this run is --post_as_released true" in released["skipped"]["3.1"]
    assert "post_as_released" in paper["skipped"]["1.1"] and "post_as_released" in released["skipped"]["1.1"]
    assert released["skipped"]["4.1"].endswith("--post_as_released True --weights random --results " + str(tmp_path))
    assert "--post_as_released" not in paper["skipped"]["4.1"]  # the default is left out of the command
    run_main(monkeypatch, "--weights", fixture_weights, "--results", str(tmp_path), "--blocks", "2.1", "--post_as_released", "true")
    crit = json.load(open(results.criteria_file(tmp_path)))
    assert crit["config"]["post_as_released"] is True and crit["blocks"]["2.1"]["measured"] == [0, 1]
    assert "before the block's final ReLU" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="criteria.json was made with --post_as_released true, this run is --post_as_released false"):
        results.read_criteria(str(tmp_path), net, post_as_released=False)
    assert results.read_criteria(str(tmp_path), net, post_as_released=True)["config"]["post_as_released"] is True


def test_run_refuses_mixed_configs_and_names_the_missing_fzs(tmp_path, model):
    m, weights_id = model
    make_fz(tmp_path, "layer1.0", [0, 1], m, weights=weights_id, seed=0)
    make_fz(tmp_path, "layer1.1.bn2", [0, 1], m, weights=weights_id, seed=1)  # block 1.1: In and Pre from different seeds
    make_fz(tmp_path, "layer2.0", [0, 1], m, weights=weights_id, steps=7)  # block 2.1: Pre missing
    make_fz(tmp_path, "layer3.0", [0], m, weights="IMAGENET1K_V1")  # block 3.1: other weights
    make_fz(tmp_path, "layer3.1.bn2", [0], m, weights="IMAGENET1K_V1")
    make_fz(tmp_path, "layer2.0.downsample.1", [0, 1], m, weights=weights_id)  # block 2.0: measurable
    make_fz(tmp_path, "layer2.0.bn2", [1, 2], m, weights=weights_id)
    out = criteria.run_criteria(net, m, weights_id, str(tmp_path), ["1.1", "2.0", "2.1", "3.1", "4.1"], WEIGHTS, torch.device("cpu"), 4,
                                (criteria.MIX_IF_PRE_NONPOS, criteria.MIX_IF_IN_NONPOS))
    assert list(out["blocks"]) == ["2.0"]
    s = out["blocks"]["2.0"]
    assert s["measured"] == [1] and s["n_channels"] == 128 and len(s["missing"]) == 127 and s["count"] == len(s["passing"])
    assert "seed: 0 vs 1" in out["skipped"]["1.1"]
    assert "IMAGENET1K_V1" in out["skipped"]["3.1"] and weights_id in out["skipped"]["3.1"]
    assert out["skipped"]["2.1"].endswith(f"python fzs.py --layers layer2.1.bn2 --channels 0,1 --seed 0 --steps 7 --lr 0.05 --amp fp32 "
                                          f"--pre_as_released False --batch 4 --weights random --results {tmp_path}")
    # both files missing: the command copies the settings (and the channel range) of the first FZ file made here
    assert out["skipped"]["4.1"].endswith(f"python fzs.py --layers layer4.0,layer4.1.bn2 --channels 0,1 --seed 0 --steps 2 "
                                          f"--lr 0.05 --amp fp32 --pre_as_released False --batch 4 --weights random --results {tmp_path}")
    assert set(out["fz_files"]) == {"layer2.0.downsample.1", "layer2.0.bn2"}


def test_stability_on_planted_runs():
    def run(passing):
        return {"blocks": {"2.1": {"measured": list(range(8)), "passing": passing}, "3.1": {"measured": [0, 1, 2], "passing": []}},
                "fz_files": {"layer2.0": {"seed": len(passing)}, "layer3.0": {"seed": len(passing)}}}
    runs = {"a": run([1, 2, 3]), "b": run([2, 3, 4, 5]), "c": run([2, 3])}
    runs["c"]["blocks"].pop("3.1")
    blocks, skipped = criteria.stability(net, runs, list(net.blocks))
    s = blocks["2.1"]
    assert s["channels"] == list(range(8))
    assert s["pass_frequency"] == [0, 1 / 3, 1, 1, 1 / 3, 1 / 3, 0, 0]
    assert s["always"] == [2, 3] and s["ever"] == [1, 2, 3, 4, 5] and s["counts"] == [3, 4, 2]
    assert s["jaccard"][0][1] == pytest.approx(2 / 5) and s["jaccard"][1][2] == 0.5 and s["jaccard"][2][2] == 1.0
    assert "3.1" not in blocks and "c" in skipped["3.1"]
    two = criteria.stability(net, {"a": run([]), "b": run([])}, list(net.blocks))[0]["2.1"]  # nothing passes in either run
    assert two["jaccard"] == [[1.0, 1.0], [1.0, 1.0]] and two["always"] == []  # identical sets
    asked, left_out = criteria.stability(net, runs, ["2.1"])  # --blocks 2.1: block 3.1 is neither reported nor left out
    assert list(asked) == ["2.1"] and not left_out


# ----------------------------------------------------------------------------------------------------
# End to end: tiny FZs from fzs.py (random weights, 2 steps), then criteria.py with two seeds

def run_script(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_end_to_end_with_fzs(tmp_path):
    r0, r1 = str(tmp_path / "seed0"), str(tmp_path / "seed1")
    for folder, seed in ((r0, 0), (r1, 1)):
        p = run_in_process("fzs.py", "--layers", "layer2.0,layer2.1.bn2", "--channels", "0:4", "--steps", "2", "--batch", "4",
                           "--seed", str(seed), "--weights", WEIGHTS, "--results", folder, "--png", "false")  # criteria.py: a process
        assert p.returncode == 0, p.stderr[-2000:]
    p = run_script("criteria.py", "--weights", WEIGHTS, "--results", r0, "--blocks", "2.1,3.1", "--runs", f"{r0},{r1}", "--batch", "3")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "block 2.1:" in p.stdout and "of 4 measured channels (of 128) pass" in p.stdout and "time:" in p.stdout
    amp = cli.precision("auto", torch.device("cpu"))  # what fzs.py's auto meant here: bf16 only on a CPU with native bf16
    assert (f"python fzs.py --layers layer3.0,layer3.1.bn2 --channels 0:4 --seed 0 --steps 2 --lr 0.05 --amp {amp} "
            "--pre_as_released False --batch 4 --weights random --results") in p.stdout  # not a days-long default run
    assert "warning" not in p.stdout + p.stderr.replace("FutureWarning", "")

    result = json.load(open(os.path.join(r0, "criteria.json")))
    assert set(result["blocks"]) == {"2.1"} and "3.1" in result["skipped"]
    s = result["blocks"]["2.1"]
    assert s["layers"] == list(net.blocks["2.1"]) and s["measured"] == [0, 1, 2, 3] and s["n_channels"] == 128
    assert result["config"]["weights_id"] == "random:0" and result["fz_files"]["layer2.0"]["seed"] == 0
    assert set(result["fz_sha256"]) == {"layer2.0", "layer2.1.bn2"}
    with open(os.path.join(r0, "criteria.csv")) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == criteria.CSV_COLUMNS
    assert [int(r["channel"]) for r in rows] == [0, 1, 2, 3] and {r["block"] for r in rows} == {"2.1"}
    val = {k: np.array([float(r[k]) for r in rows]) for k in ("pre_in", "pre_zoom_in", "post_in", "post_pre", "mix")}
    flags = {k: [bool(int(r[k])) for r in rows] for k in ("eq1", "eq2", "passes")}
    assert flags["eq1"] == criteria.eq1(val["pre_in"], val["pre_zoom_in"]).tolist()
    assert flags["eq2"] == criteria.eq2(val["post_in"], val["post_pre"]).tolist()
    assert flags["passes"] == [a and b for a, b in zip(flags["eq1"], flags["eq2"])]
    assert np.allclose(val["mix"], criteria.mix_ratio(val["post_in"], val["post_pre"], criteria.MIX_IF_PRE_NONPOS, criteria.MIX_IF_IN_NONPOS))
    assert (val["post_in"] >= 0).all() and (val["post_pre"] >= 0).all()  # Post is after the ReLU
    assert s["passing"] == [int(r["channel"]) for r in rows if r["passes"] == "1"] and s["count"] == len(s["passing"])
    assert s["percent"] == pytest.approx(100 * s["count"] / 4)

    stab = json.load(open(os.path.join(r0, "stability.json")))
    assert stab["runs"] == [r0, r1] and set(stab["blocks"]) == {"2.1"}
    b = stab["blocks"]["2.1"]
    assert b["counts"][0] == s["count"] and b["seeds"] == [0, 1] and len(b["pass_frequency"]) == 4
    assert b["always"] == [c for c, f in zip(b["channels"], b["pass_frequency"]) if f == 1]
    with open(os.path.join(r0, "stability.csv")) as f:
        srows = list(csv.DictReader(f))
    assert [int(r[r0]) for r in srows] == [int(c in s["passing"]) for c in range(4)]
    assert "Stability of the passing channels across 2 FZ runs" in p.stdout


CONSTANTS = {name: getattr(criteria, name) for name in cli.flag_names(criteria.__file__)}  # every flag, restored after each run


def run_main(monkeypatch, *argv):
    """criteria.main() in this process, from the default constants (configure() rewrites them; monkeypatch restores them)."""
    for name, value in CONSTANTS.items():
        monkeypatch.setattr(criteria, name, value)
    monkeypatch.setattr(sys, "argv", ["criteria.py", *argv])
    criteria.main()


def test_bad_input_stops_with_one_line(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=f"python fzs.py --layers layer2.0,layer2.1.bn2 --weights random --results {tmp_path / 'none'}$"):
        run_main(monkeypatch, "--weights", WEIGHTS, "--results", str(tmp_path / "none"), "--blocks", "2.1")
    with pytest.raises(SystemExit, match="unknown block '2.2'"):
        run_main(monkeypatch, "--weights", WEIGHTS, "--blocks", "2.2")
    with pytest.raises(SystemExit, match="at least two different results folders"):
        run_main(monkeypatch, "--weights", WEIGHTS, "--runs", f"{tmp_path},{tmp_path}")
    # no --blocks: every probed block (the In and Pre of each, in forward order), and the flag itself is left as given
    every = ("layer1.0,layer1.1.bn2,layer2.0.downsample.1,layer2.0.bn2,layer2.0,layer2.1.bn2,layer3.0.downsample.1,layer3.0.bn2,"
             "layer3.0,layer3.1.bn2,layer4.0.downsample.1,layer4.0.bn2,layer4.0,layer4.1.bn2")
    with pytest.raises(SystemExit, match=f"python fzs.py --layers {every} --weights random --results {tmp_path / 'none'}$"):
        run_main(monkeypatch, "--weights", WEIGHTS, "--results", str(tmp_path / "none"))
    assert criteria.BLOCKS == []


def test_every_refusal_prints_its_reason(tmp_path, monkeypatch, capsys):
    """When no requested block can be measured, each block's reason is printed before the one-line error."""
    make_fz(tmp_path, "layer2.0", [0, 1], seed=0)
    make_fz(tmp_path, "layer2.1.bn2", [0, 1], seed=1)  # another seed
    make_fz(tmp_path, "layer3.0", [0, 1], steps=2)
    make_fz(tmp_path, "layer3.1.bn2", [0, 1], steps=9)  # another step count
    with pytest.raises(SystemExit, match="the reason for each block is above"):
        run_main(monkeypatch, "--weights", WEIGHTS, "--results", str(tmp_path), "--blocks", "2.1,3.1,4.1")
    err = capsys.readouterr().err.splitlines()
    assert any(layer.startswith("block 2.1: not measured:") and "seed: 0 vs 1" in layer for layer in err), err
    assert any(layer.startswith("block 3.1: not measured:") and "steps: 2 vs 9" in layer for layer in err), err
    assert any(layer.startswith("block 4.1: not measured: no center FZs for layer4.0, layer4.1.bn2") for layer in err), err


def test_the_mix_conventions_are_the_flags(tmp_path, monkeypatch, model, fixture_weights):
    """--mix_if_pre_nonpos and --mix_if_in_nonpos reach the CSV, each where its own rule holds (Post is after a ReLU,
    so on random images some channels have Post = 0 on one FZ or the other)."""
    m, weights_id = model
    In, Pre, _ = net.blocks["2.1"]
    make_fz(tmp_path, In, list(range(16)), m, weights=weights_id)
    make_fz(tmp_path, Pre, list(range(16)), m, weights=weights_id)
    run_main(monkeypatch, "--weights", fixture_weights, "--results", str(tmp_path), "--blocks", "2.1", "--batch", "8",
             "--mix_if_pre_nonpos", "7", "--mix_if_in_nonpos", "3")
    with open(results.criteria_csv(tmp_path)) as f:
        rows = list(csv.DictReader(f))
    pre_nonpos = [float(r["mix"]) for r in rows if float(r["post_pre"]) <= 0]
    in_nonpos = [float(r["mix"]) for r in rows if float(r["post_in"]) <= 0 < float(r["post_pre"])]
    assert pre_nonpos and in_nonpos, "the planted FZs no longer reach both conventions"
    assert set(pre_nonpos) == {7.0} and set(in_nonpos) == {3.0}


def test_overlap_with_the_papers_lists_on_planted_sets(capsys):
    assert criteria.PAPER_PASSING["2.0"] == [50, 53] and len(criteria.PAPER_PASSING["3.1"]) == 46
    o = criteria.paper_overlap("2.1", [13, 15, 99, 127], range(128))
    assert (o["ours"], o["paper"], o["both"]) == (4, 23, 3) and o["ours_only"] == [99]
    assert o["jaccard"] == pytest.approx(3 / 24) and 18 in o["paper_only"] and 13 not in o["paper_only"]
    part = criteria.paper_overlap("2.1", [13], range(16))  # measured 0..15: the paper's 13, 15 are in range
    assert part["paper_only"] == [15] and part["jaccard"] == 0.5 and len(part["paper_unmeasured"]) == 21
    assert criteria.paper_overlap("4.1", [], range(512))["jaccard"] == 1.0  # both empty
    s = {"count": 4, "n_channels": 128, "measured": list(range(128)), "percent": 3.1, "eq1_count": 9, "eq2_count": 30,
         "passing": [13, 15, 99, 127], "paper_overlap": o}
    criteria.print_summary({"blocks": {"2.1": s}, "skipped": {}}, "IMAGENET1K_V1", ["2.1"])
    out = capsys.readouterr().out
    assert "vs the paper's list: ours 4, paper 23, both 3, Jaccard 0.12; ours only [99]; paper only [18, 21" in out
    assert "no published reference" not in out
    criteria.print_summary({"blocks": {"2.1": {**s, "paper_overlap": None}}, "skipped": {}}, "random:0", ["2.1"])
    assert "no published reference exists for weights random:0" in capsys.readouterr().out


def test_the_weights_come_from_the_inputs(tmp_path, monkeypatch):
    """No --weights: the weights every FZ file of the inputs records (here random:0, as the smoke run's); inputs that
    disagree are refused, and an explicit --weights must agree with the files. (Each call writes to a folder of its
    own: this process holds the lock of every folder it wrote to.)"""
    a, b, c = (str(tmp_path / name) for name in "abc")
    for folder, seed in ((a, 0), (b, 1), (c, 0)):
        for layer in net.blocks["2.1"][:2]:
            make_fz(folder, layer, [0, 1], seed=seed)
    run_main(monkeypatch, "--results", a, "--runs", f"{a},{b}", "--blocks", "2.1", "--batch", "2")
    made = json.loads(open(results.criteria_file(a)).read())["config"]
    assert made["weights_id"] == "random:0" and made["WEIGHTS"] == "random:0"
    assert set(json.loads(open(results.stability_file(a)).read())["blocks"]) == {"2.1"}
    # Weights that no input was made with: refused before any model is loaded (IMAGENET1K_V1 would try to download).
    with monkeypatch.context() as patched:
        patched.setattr(criteria, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
        for other in ("random:1", "IMAGENET1K_V1"):
            with pytest.raises(SystemExit, match=f"made with weights random:0, not --weights {other}: leave --weights out"):
                run_main(patched, "--weights", other, "--results", str(tmp_path / "out1"), "--runs", f"{a},{b}", "--blocks", "2.1")
            with pytest.raises(SystemExit, match=f"made with weights random:0, not --weights {other}"):
                run_main(patched, "--weights", other, "--results", c, "--blocks", "2.1")
    d = str(tmp_path / "d")
    for layer in net.blocks["2.1"][:2]:
        make_fz(d, layer, [0, 1], seed=1, steps=7)  # another seed, but also other steps: not a seed's variation
    with pytest.raises(SystemExit, match=f"runs {a} and {d}: layer2.0 FZs were made under other configs \\(steps: 2 vs 7\\)"):
        run_main(monkeypatch, "--results", str(tmp_path / "out3"), "--runs", f"{a},{d}", "--blocks", "2.1")
    make_fz(b, net.blocks["2.1"][1], [0, 1], seed=1, weights="random:1")
    with pytest.raises(SystemExit, match=r"different weights \(random:0 in .*, random:1 in .*layer2\.1\.bn2"):
        run_main(monkeypatch, "--results", str(tmp_path / "out2"), "--runs", f"{a},{b}", "--blocks", "2.1")


def test_a_checkpoint_recorded_by_the_inputs_is_asked_for(tmp_path, monkeypatch):
    for layer in net.blocks["2.1"][:2]:
        make_fz(tmp_path, layer, [0], weights="file:mine.pth:sha256=0123456789abcdef")
    with pytest.raises(SystemExit, match=r"checkpoint mine\.pth .*pass it with --weights /path/to/mine\.pth$"):
        run_main(monkeypatch, "--results", str(tmp_path), "--blocks", "2.1")
