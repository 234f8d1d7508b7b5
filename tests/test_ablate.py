"""ImageNet folder reading (stream.py), the natural-image stage and the ablation sweep (ablate.py).

CPU, random weights, a tiny folder of generated JPEGs in tmp_path; no data from outside the test."""

import copy
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import ablate
import arch
import cli
import imagenet
import results
import stats
import stream
from conftest import run_in_process

net = arch.net("resnet18")  # the paper's tables (tests of other architectures make their own)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = [5, 17, 999]  # a partial class set: labels must be these, not 0, 1, 2


def smooth_rgb(rng, h, w):
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


def make_folder(root, per_class=2, seed=0):
    """root/<wnid>/*.JPEG for CLASSES, with one grayscale and one CMYK JPEG among them."""
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        os.makedirs(os.path.join(root, imagenet.WNIDS[c]), exist_ok=True)
        for k in range(per_class):
            smooth_rgb(rng, 90 + 10 * k, 120).save(os.path.join(root, imagenet.WNIDS[c], f"img{k}.JPEG"), quality=90)
    smooth_rgb(rng, 100, 80).convert("L").save(os.path.join(root, imagenet.WNIDS[17], "gray.JPEG"))
    smooth_rgb(rng, 80, 100).convert("CMYK").save(os.path.join(root, imagenet.WNIDS[999], "cmyk.JPEG"))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(str(tmp_path_factory.mktemp("val")))


@pytest.fixture(scope="module")
def model():
    return stream.load_model(net.name, "random:3")[0]


def error_of(fn, *args):
    with pytest.raises(SystemExit) as e:
        fn(*args)
    text = str(e.value)
    assert text.startswith("error: ") and "\n" not in text
    return text


# ----------------------------------------------------------------------------------------------------
# Reading the folder.

def test_wnid_list_is_the_canonical_1000():
    w = imagenet.WNIDS
    assert len(w) == 1000 and len(set(w)) == 1000
    known = {0: "n01440764", 1: "n01443537", 5: "n01496331", 17: "n01580077", 281: "n02123045", 500: "n03042490",
             817: "n04285008", 998: "n13133613", 999: "n15075141"}
    assert all(w[i] == wnid for i, wnid in known.items())
    assert w == sorted(w)  # ImageNet-1k's canonical order is the sorted wnids
    assert imagenet.WNID_INDEX["n04285008"] == 817


def test_partial_class_set_gets_canonical_labels(folder):
    paths, labels, _ = imagenet.imagenet_folder(folder)
    assert len(paths) == 8 and labels.dtype == np.int64
    for p, y in zip(paths, labels):
        assert imagenet.WNIDS[y] == p.split(os.sep)[0]
    assert sorted(set(labels.tolist())) == CLASSES
    assert paths == sorted(paths, key=lambda p: (os.path.basename(p), p))  # by file name, as in every layout
    sub, sub_labels, _ = imagenet.imagenet_folder(folder, limit=3)  # evenly spaced: first, middle, last
    assert sub == [paths[0], paths[4], paths[7]] and sub_labels.tolist() == [labels[0], labels[4], labels[7]]


def test_bad_folders_give_one_line_errors(tmp_path):
    assert "does not exist" in error_of(imagenet.imagenet_folder, str(tmp_path / "nope"))
    (tmp_path / "file.txt").write_text("x")
    assert "is not a folder" in error_of(imagenet.imagenet_folder, str(tmp_path / "file.txt"))
    (tmp_path / "empty").mkdir()
    assert "is empty" in error_of(imagenet.imagenet_folder, str(tmp_path / "empty"))
    (tmp_path / "loose").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "loose" / "a.JPEG")
    assert "pass their labels with --labels FILE" in error_of(imagenet.imagenet_folder, str(tmp_path / "loose"))
    (tmp_path / "layout" / "cats").mkdir(parents=True)
    assert "'cats' is not a wnid" in error_of(imagenet.imagenet_folder, str(tmp_path / "layout"))
    (tmp_path / "unknown" / "n99999999").mkdir(parents=True)
    assert "unknown wnid 'n99999999'" in error_of(imagenet.imagenet_folder, str(tmp_path / "unknown"))
    (tmp_path / "noimg" / "n01440764").mkdir(parents=True)
    assert "no images" in error_of(imagenet.imagenet_folder, str(tmp_path / "noimg"))
    assert "no image folder given" in error_of(imagenet.imagenet_folder, "")


def test_gray_cmyk_palette_become_rgb(tmp_path):
    rng = np.random.default_rng(1)
    base = smooth_rgb(rng, 40, 50)
    base.convert("L").save(tmp_path / "g.JPEG")
    base.convert("CMYK").save(tmp_path / "c.JPEG")
    base.convert("P").save(tmp_path / "p.png")
    gray = imagenet.decode_rgb(str(tmp_path / "g.JPEG"))
    assert gray.mode == "RGB"
    g = np.asarray(gray)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    cmyk = imagenet.decode_rgb(str(tmp_path / "c.JPEG"))
    assert cmyk.mode == "RGB" and np.array_equal(np.asarray(cmyk), np.asarray(Image.open(tmp_path / "c.JPEG").convert("RGB")))
    assert np.abs(np.asarray(cmyk).astype(int) - np.asarray(base).astype(int)).mean() < 20  # colours survive
    pal = imagenet.decode_rgb(str(tmp_path / "p.png"))
    assert pal.mode == "RGB"
    (tmp_path / "bad.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(imagenet.ImageError, match="bad.JPEG"):
        imagenet.decode_rgb(str(tmp_path / "bad.JPEG"))


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_is_one_line(tmp_path, workers):
    """In the main process or re-raised from a worker (whose text holds a traceback, and 'UnidentifiedImageError: ')."""
    make_folder(str(tmp_path))
    (tmp_path / imagenet.WNIDS[5] / "broken.JPEG").write_bytes(b"\xff\xd8 truncated")
    paths, labels, _ = imagenet.imagenet_folder(str(tmp_path))
    loader = imagenet.image_loader(imagenet.ImageNetFolder(str(tmp_path), paths, labels), 4, workers=workers)
    text = error_of(lambda: list(imagenet.guarded(loader)))
    assert text.startswith("error: cannot read image ") and "broken.JPEG" in text and "\n" not in text
    assert text.count("(") == text.count(")") and text.endswith(")")  # '... (UnidentifiedImageError: ...)', whole


def test_scale_transform_crop_sizes():
    assert imagenet.crop_size(10) == 231 and imagenet.crop_size(50) == 128
    assert [imagenet.crop_size(p) for p in (20, 30, 40)] == [205, 180, 154]
    # On a 256 x 256 image whose red value is the column index, the 50% view spans columns 64..191.
    cols = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    img = Image.fromarray(np.stack([cols, cols.T, np.zeros_like(cols)], -1))
    views = imagenet.eval_views(img, [0, 10, 50])
    assert views.shape == (3, 3, 224, 224) and views.dtype == torch.uint8
    for k, c in [(0, 224), (1, 231), (2, 128)]:
        first = (256 - c) // 2
        assert abs(int(views[k, 0, 112, 0]) - first) <= 1 and abs(int(views[k, 0, 112, -1]) - (first + c - 1)) <= 1
    # The same pixels as the standard torchvision transforms applied to the same decoded image.
    rng = np.random.default_rng(0)
    photo = smooth_rgb(rng, 300, 410)
    to_u8 = T.PILToTensor()
    assert torch.equal(imagenet.eval_views(photo, [0])[0], to_u8(T.Compose([T.Resize(256), T.CenterCrop(224)])(photo)))
    for p in (10, 30, 50):
        ref = T.Compose([T.Resize(256), T.CenterCrop(imagenet.crop_size(p)), T.Resize((224, 224))])(photo)
        assert torch.equal(imagenet.eval_views(photo, [p])[0], to_u8(ref))


def test_released_crop_option_equals_the_released_transform():
    """--crop_as_released: the released scale_robust.py's views at its scales np.arange(1.1, 1.6, 0.1), written as its
    torchvision transforms on PIL: Resize(256), CenterCrop(int(224 (2 - scale))), Resize(224)."""
    rng = np.random.default_rng(3)
    photo = smooth_rgb(rng, 333, 290)
    to_u8 = T.PILToTensor()
    for scale in np.arange(1.1, 1.6, 0.1):
        scale = np.round(scale, 1)
        p = int(round(100 * (scale - 1)))
        assert imagenet.crop_size(p, released=True) == int(224 * (2 - scale))
        ref = T.Compose([T.Resize(256), T.CenterCrop(int(224 * (2 - scale))), T.Resize(224)])(photo)
        assert torch.equal(imagenet.eval_views(photo, [p], released_crop=True)[0], to_u8(ref))
    assert [imagenet.crop_size(p, released=True) for p in (10, 50)] == [201, 112]
    assert torch.equal(imagenet.eval_views(photo, [0], released_crop=True), imagenet.eval_views(photo, [0]))  # no crop: the same
    ds = imagenet.ImageNetFolder("", [], [], [10], released_crop=True)
    assert ds.released_crop is True


def test_released_crop_cells_are_never_mixed(tmp_path):
    key = {"arch": "resnet18", "weights": "random:0", "seed": 0, "crop_as_released": True}
    results.save_json({"run": key, "channels": [1, 2], "hits": ablate.pack_hits([True, False, True]), "total": 3},
                      results.ablation_cell(tmp_path, "2.1", "passing", 10))
    assert ablate.read_cell(str(tmp_path), "2.1", "passing", 10, [1, 2], key).tolist() == [True, False, True]
    with pytest.raises(SystemExit, match=r"made under another config \(crop_as_released: True vs False\)"):
        ablate.read_cell(str(tmp_path), "2.1", "passing", 10, [1, 2], {**key, "crop_as_released": False})
    old = {k: v for k, v in key.items() if k != "crop_as_released"}  # a cell from before the option: the paper's crops
    results.save_json({"run": old, "channels": [1, 2], "hits": ablate.pack_hits([True, False, True]), "total": 3},
                      results.ablation_cell(tmp_path, "2.1", "passing", 10))
    assert ablate.read_cell(str(tmp_path), "2.1", "passing", 10, [1, 2], {**key, "crop_as_released": False}) is not None


def test_the_released_top1_is_printed_beside_ours_for_its_weights(capsys):
    out = {"block": "2.1", "variant": "paper", "scales": [0, 10, 20, 30, 40, 50], "n_images": 50000,
           "accuracy": {"passing": [0.6375, 0.61, 0.6, 0.55, 0.5, 0.45]},
           "config": {"arch": "resnet18", "weights": "IMAGENET1K_V1", "crop_as_released": False}}
    lines = ablate.released_reference(out)
    assert lines[0].endswith("0%: 63.75 vs 63.75; 10%: 61.00 vs 61.394; 20%: 60.00 vs 59.39; 30%: 55.00 vs 56.222; "
                             "40%: 50.00 vs 51.686; 50%: 45.00 vs 44.292")
    assert "other crops" in lines[1] and "--crop_as_released true" in lines[1]
    same = ablate.released_reference({**out, "config": {**out["config"], "crop_as_released": True}})
    assert "the same crops" in same[1]
    assert ablate.released_reference({**out, "block": "3.1"})[0].split(": ", 1)[1].startswith("0%: 63.75 vs 63.493")
    some = {**out, "scales": [0, 30], "accuracy": {"passing": [0.6, 0.5]}}  # a run with other crops: each beside its own
    assert ablate.released_reference(some)[0].endswith("0%: 60.00 vs 63.75; 30%: 50.00 vs 56.222")
    for other in ({**out, "config": {**out["config"], "weights": "random:0"}}, {**out, "variant": "heldout"}, {**out, "block": "1.1"},
                  {**out, "config": {**out["config"], "arch": "resnet50"}}):
        assert ablate.released_reference(other) == []


def test_dataset_decodes_once_into_all_views(folder, monkeypatch):
    paths, labels, _ = imagenet.imagenet_folder(folder)
    ds = imagenet.ImageNetFolder(folder, paths, labels, [0, 10, 20, 30, 40, 50])
    calls = []
    real = imagenet.decode_rgb
    monkeypatch.setattr(imagenet, "decode_rgb", lambda p: calls.append(p) or real(p))
    views, label, i = ds[3]
    assert views.shape == (6, 3, 224, 224) and label == labels[3] and i == 3 and len(calls) == 1


# ----------------------------------------------------------------------------------------------------
# Pure pieces of ablate.py.

def test_top9_equals_brute_force_sort():
    rng = np.random.default_rng(0)
    acts = np.round(rng.normal(size=(50, 7)), 1).astype(np.float32)  # rounding makes ties
    acts[:, 3] = 0.0  # a dead channel: all ties
    acts[rng.random(acts.shape) < 0.3] = 0.0
    values, index = torch.empty(7, 0), torch.empty(7, 0, dtype=torch.int64)
    first = 0
    for b in (1, 4, 13, 2, 30):
        values, index = ablate.top9_update(values, index, torch.from_numpy(acts[first:first + b]), first)
        first += b
    for c in range(7):
        order = np.lexsort((np.arange(50), -acts[:, c]))[:9]  # activation descending, then lower image index
        assert index[c].tolist() == order.tolist()
        assert np.array_equal(values[c].numpy(), acts[order, c])


def test_eq3_on_planted_accuracies():
    ratio, sem, trials = ablate.eq3([0.5, 0.4], [[0.5, 0.8], [0.25, 0.4]])
    assert np.allclose(trials, [[1.0, 0.5], [2.0, 1.0]])
    assert np.allclose(ratio, [1.5, 0.75])
    assert np.allclose(sem, [np.std([1, 2], ddof=1) / np.sqrt(2), np.std([0.5, 1], ddof=1) / np.sqrt(2)])
    ratio, sem, trials = ablate.eq3([0.3, 0.3, 0.3], [[0.0, 0.1, 0.0], [0.3, 0.2, 0.0], [0.6, 0.3, 0.0]])
    assert np.isnan(trials[0, 0]) and np.isclose(ratio[0], (1.0 + 0.5) / 2)  # a zero trial is left out
    assert np.isclose(sem[0], np.std([1.0, 0.5], ddof=1) / np.sqrt(2))
    assert np.isclose(ratio[1], (3 + 1.5 + 1) / 3)
    assert np.isnan(ratio[2]) and np.isnan(sem[2])  # every trial 0: undefined


def test_screening_rule_per_block():
    rules = ablate.parse_rules(net, ablate.SCREEN_MARGIN)
    assert rules == {"2.1": ("<", 0.0), "3.1": ("<=", 1.0), "*": ("<=", 1.0)}  # * : any other block (other architectures)
    n = 200  # 1 pp = 2 images
    assert ablate.accepted(rules["2.1"], 49, 50, n) and not ablate.accepted(rules["2.1"], 50, 50, n)
    assert ablate.accepted(rules["3.1"], 52, 50, n) and not ablate.accepted(rules["3.1"], 53, 50, n)
    assert ablate.accepted(rules["3.1"], 10, 50, n)
    assert "cannot read screening rule" in error_of(ablate.parse_rules, net, "2.1:=3")


def test_sets_and_draws():
    assert ablate.parse_sets(net, "2.1:3,17,40:43;3.1:0") == {"2.1": [3, 17, 40, 41, 42], "3.1": [0]}
    assert "out of range" in error_of(ablate.parse_sets, net, "2.1:200")
    rng = np.random.default_rng([0, 21])
    sets = ablate.draw_sets(rng, list(range(10, 30)), 5, 50)
    assert all(len(set(s)) == 5 and s == sorted(s) and all(10 <= c < 30 for c in s) for s in sets)
    assert sets == ablate.draw_sets(np.random.default_rng([0, 21]), list(range(10, 30)), 5, 50)  # reproducible


# ----------------------------------------------------------------------------------------------------
# Mean ablation: the fast path against hooks and against the released per-condition loop.

def test_overwrite_equals_a_hook_that_overwrites(model):
    torch.manual_seed(0)
    x = torch.randn(3, 3, 96, 96)
    mean = torch.rand(128)
    sets = [[1, 5, 9], [0, 127], []]
    masks = ablate.masks_for(sets, 128)
    with torch.no_grad():
        h = stream.features(net, model, x, ["layer2.1"])["layer2.1"]
        fast = ablate.overwrite(h, masks, mean).view(3, 3, *h.shape[1:])
        for k, chans in enumerate(sets):
            seen = {}

            def overwrite_hook(_m, _i, out):
                out = out.clone()
                out[:, chans] = mean[chans].view(1, -1, 1, 1)
                return out
            handles = [model.layer2[1].register_forward_hook(overwrite_hook),
                       model.layer3[0].register_forward_pre_hook(lambda _m, inp: seen.update(x=inp[0].clone()))]
            logits = model(x)
            for hd in handles:
                hd.remove()
            assert torch.equal(fast[k], seen["x"])
            assert torch.allclose(ablate.run_suffix(net, model, fast[k], 4), logits, atol=1e-5, rtol=1e-5)


def test_fast_path_predictions_equal_released_loop(folder, model):
    paths, labels, _ = imagenet.imagenet_folder(folder)
    keep = [i for i, p in enumerate(paths) if "gray" in p or "cmyk" in p or "img0" in p][:4]
    paths, labels = [paths[i] for i in keep], labels[keep]
    assert any("gray" in p for p in paths) and any("cmyk" in p for p in paths)
    scales = [0, 50]
    g = torch.Generator().manual_seed(0)
    means = {"2.1": torch.rand(128, generator=g), "3.1": torch.rand(256, generator=g)}
    sets = {"2.1": [[2, 7, 30], [1, 50, 99]], "3.1": [[0, 9, 100, 200]]}
    plan = [(net.where(net.blocks[b][2])[0], means[b], ablate.masks_for(sets[b], len(means[b]))) for b in ("2.1", "3.1")]
    ds = imagenet.ImageNetFolder(folder, paths, labels, scales)
    fast_model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # as ablate.py runs it
    fast = {s: [] for s in scales}
    with torch.inference_mode():
        for views, _y, _i in imagenet.image_loader(ds, 3, workers=0):
            for v, s in enumerate(scales):
                x = stream.normalize(stream.to_float(views[:, v])).contiguous(memory_format=torch.channels_last)
                fast[s].append(ablate.predictions(net, fast_model, x, plan, suffix_batch=4))  # several suffix chunks
    fast = {s: torch.cat(p, 1) for s, p in fast.items()}
    checked = 0

    def same(pred, logits):  # equal top-1, except where the reference's top two are within float rounding
        nonlocal checked
        top2 = logits.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-4
        checked += int(clear.sum())
        return bool(((pred == logits.argmax(1)) | ~clear).all())

    for s in scales:
        loader = imagenet.image_loader(imagenet.ImageNetFolder(folder, paths, labels, [s]), 3, workers=0)
        row = 1
        for b in ("2.1", "3.1"):
            for chans in sets[b]:
                assert same(fast[s][row], ablate.reference_logits(net, model, loader, b, chans, means[b], torch.device("cpu"))), (b, chans, s)
                row += 1
        assert same(fast[s][0], ablate.reference_logits(net, model, loader, "2.1", [], means["2.1"], torch.device("cpu")))
    assert checked >= 0.9 * 2 * 4 * 4  # nearly every prediction was a clear one


def test_run_pass_resumes_from_partial_counts(folder, model, tmp_path, monkeypatch):
    paths, labels, _ = imagenet.imagenet_folder(folder, limit=4)
    loader_for = ablate.loader_cache(folder, paths, labels, 3, 0, "cpu")
    plan = [(3, torch.rand(128), ablate.masks_for([[1, 2], [3]], 128))]
    args = ("t", model, len(paths), loader_for, [0, 50], plan, torch.device("cpu"), None, 64, str(tmp_path), {"k": 1}, 30)
    full = ablate.run_pass(net, *args)
    assert full.shape == (2, 3, 4) and full.dtype == torch.bool  # (scale, condition, image)
    partial = tmp_path / ".partial-t.pt"
    state = torch.load(partial, weights_only=False)
    assert state["done"] == 4 and np.array_equal(np.unpackbits(state["hits"], axis=-1, count=4).astype(bool), full.numpy())
    # Pretend a run stopped after 3 images with planted hits: the rerun computes only image 3 and keeps the rest.
    planted = torch.from_numpy(np.random.default_rng(0).random((2, 3, 3)) < 0.5)
    results.save_pt({**state, "done": 3, "hits": np.packbits(planted.numpy(), axis=-1)}, str(partial))
    again = ablate.run_pass(net, *args)
    assert torch.equal(again[..., :3], planted) and torch.equal(again[..., 3], full[..., 3])


# ----------------------------------------------------------------------------------------------------
# The script end to end, twice (the second run reuses everything), plus its refusals.

def run_script(*argv):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, os.path.join(ROOT, "ablate.py"), *argv], capture_output=True, text=True, env=env, cwd=ROOT)


def run_here(*argv):
    """run_script() in this process (conftest.run_in_process): for the reruns and refusals after the first real run."""
    return run_in_process("ablate.py", *argv)


# ----------------------------------------------------------------------------------------------------
# Values: the script on the fixture folder (conftest.py: non-trivial BatchNorms, labels = what the fixture model
# predicts), every number checked against an independent recomputation: torchvision transforms on PIL, the full
# torchvision model, a forward hook that overwrites the ablated channels.

LIMIT = 25  # 1 image = 4 percentage points, so screening margins are exact numbers
SETS = {"2.1": list(range(6)), "3.1": list(range(10))}
CROPS = {0: 224, 10: 231, 50: 128}  # docs/method.md section 5: 256 - floor(256 p / 100), written out


def view_transform(scale):
    resize = [T.Resize((224, 224))] if scale else []
    return T.Compose([T.Resize(256), T.CenterCrop(CROPS[scale]), *resize, T.ToTensor(), T.Normalize(imagenet.MEAN, imagenet.STD)])


def reference_logits(model, root, paths, scale, block=None, channels=(), mean=None, layer=None):
    """The independent slow path. With block: a hook on the block's module overwrites `channels` with `mean`.
    With layer: also returns that layer's center activations (a hook that clones)."""
    x = torch.stack([view_transform(scale)(Image.open(os.path.join(root, p)).convert("RGB")) for p in paths])
    handles, seen = [], {}
    if block:
        chans = list(channels)

        def overwrite(_m, _i, out):
            out = out.clone()
            out[:, chans] = mean[chans].view(1, -1, 1, 1)
            return out
        handles.append(model.get_submodule(net.blocks[block][2]).register_forward_hook(overwrite))
    if layer:
        handles.append(model.get_submodule(layer).register_forward_hook(
            lambda _m, _i, out: seen.update(a=out[:, :, out.shape[2] // 2, out.shape[3] // 2].clone())))
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()
    return (logits, seen["a"]) if layer else logits


def count_correct(logits, labels, tie=1e-4):
    """(correct, ambiguous): hits, and predictions whose top two logits are within `tie` (either count is right)."""
    top2 = logits.topk(2, dim=1)
    near = (top2.values[:, 0] - top2.values[:, 1]) < tie
    return int((top2.indices[:, 0] == labels).sum()), int(near.sum())


@pytest.fixture(scope="module")
def swept(fixture_folder, fixture_weights, fixture_model, tmp_path_factory):
    """ablate.py, both stages, on the fixture folder: a lenient margin accepts all 8 draws, the first 3 are used."""
    root, labels = fixture_folder
    results = str(tmp_path_factory.mktemp("swept"))
    base = ["--data", root, "--weights", fixture_weights, "--results", results, "--workers", "0", "--batch", "8",
            "--limit", str(LIMIT), "--sets", "2.1:0:6;3.1:0:10", "--screen_draws", "8", "--screen_cap", "8", "--crops", "10,50",
            "--amp", "fp32"]  # the counts are compared with an fp32 recomputation, whatever AMP_AUTO says
    common = base + ["--n_trials", "3"]
    r = run_script(*common, "--screen_margin", "2.1:<=100;3.1:<=100")
    assert r.returncode == 0, r.stderr
    everything = sorted(labels, key=lambda p: (os.path.basename(p), p))  # sorted by file name, as imagenet_folder sorts every layout
    keep = np.unique(np.linspace(0, len(everything) - 1, LIMIT).round().astype(int))  # --limit: evenly spaced
    paths = [everything[i] for i in keep]
    out = {b: json.load(open(os.path.join(results, "ablation", f"{b}.json"))) for b in SETS}
    return types.SimpleNamespace(root=root, results=results, base=base, common=common, stdout=r.stdout, paths=paths,
                                 labels=torch.tensor([labels[p] for p in paths]), out=out, model=fixture_model)


def test_natural_stage_values(swept):
    """Per-image activations, means and top-9 against hooks on the full model and torchvision's eval view."""
    summary = torch.load(os.path.join(swept.results, "natural", "summary.pt"), weights_only=False)
    assert summary["paths"] == swept.paths and summary["labels"].tolist() == swept.labels.tolist()
    for layer in ("layer1.0", "layer2.1.bn2", "layer3.0.downsample.1", "layer3.1"):
        logits, acts = reference_logits(swept.model, swept.root, swept.paths, 0, layer=layer)
        stored = np.load(os.path.join(swept.results, "natural", f"{layer}.npy")).astype(np.float32)
        assert np.allclose(stored, acts.numpy(), rtol=2e-3, atol=2e-3 * float(acts.abs().max())), layer
        assert torch.allclose(summary["mean"][layer], acts.mean(0), rtol=1e-4, atol=1e-4)
        order = np.lexsort((np.arange(LIMIT)[:, None].repeat(acts.shape[1], 1), -acts.numpy()), axis=0)[:9]
        agree = (summary["top9_index"][layer].numpy() == order.T).mean()
        assert agree > 0.97, (layer, agree)  # equal up to float ties between images
    assert count_correct(logits, swept.labels)[0] == LIMIT  # the fixture's labels: unablated top-1 is 100%


def test_counts_equal_independent_recomputation(swept):
    """Every (condition, scale) cell's correct count equals the slow path's, and the counts are not all alike."""
    summary = torch.load(os.path.join(swept.results, "natural", "summary.pt"), weights_only=False)
    seen = set()
    for block, out in swept.out.items():
        layer = net.blocks[block][2]
        mean = reference_logits(swept.model, swept.root, swept.paths, 0, layer=layer)[1].mean(0)  # independent mean
        assert torch.allclose(mean, summary["mean"][layer], rtol=1e-4, atol=1e-4)
        assert out["passing"] == SETS[block] and out["scales"] == [0, 10, 50] and out["n_images"] == LIMIT
        conditions = [("none", [], out["accuracy"]["none"]), ("passing", out["passing"], out["accuracy"]["passing"])]
        conditions += [(f"random {k}", s, a) for k, (s, a) in enumerate(zip(out["random_sets"], out["accuracy"]["random"]))]
        for name, channels, accuracy in conditions:
            for k, scale in enumerate(out["scales"]):
                logits = reference_logits(swept.model, swept.root, swept.paths, scale, block if channels else None, channels, mean)
                correct, ambiguous = count_correct(logits, swept.labels)
                got = round(accuracy[k] * LIMIT)
                assert abs(got - correct) <= ambiguous, (block, name, scale, got, correct)
                seen.add(got)
        assert out["accuracy"]["none"][0] == 1.0  # 100% by construction of the fixture
    assert len(seen) >= 5 and 0 not in seen  # non-trivial counts: a wrong definition moves them


def test_eq3_ratio_and_sem_on_the_counts(swept):
    for block, out in swept.out.items():
        p = np.array(out["accuracy"]["passing"])
        r = np.array(out["accuracy"]["random"])
        assert (r > 0).all() and len(r) == 3
        trials = p[None] / r  # Eq. 3: mean over trials of acc_passing / acc_random_i, SEM = std(ddof=1) / sqrt(N)
        assert np.allclose(out["ratio"], trials.mean(0), rtol=1e-12)
        assert np.allclose(out["sem"], trials.std(0, ddof=1) / np.sqrt(3), rtol=1e-12)
        assert np.allclose(out["ratio_trials"], trials, rtol=1e-12)
        assert len(set(np.round(out["ratio"], 9))) > 1


def test_screening_accepts_some_and_rejects_others(swept):
    """A margin at one draw's exact difference: '<=' accepts it, '<' rejects it; draws above are rejected, below kept."""
    draws = swept.out["2.1"]["screening"]["draws"]
    passing = swept.out["2.1"]["accuracy"]["passing"][0]
    diff = [round(100 * (d["accuracy"] - passing)) for d in draws]  # percentage points, multiples of 4
    values = sorted(set(diff))
    assert len(values) >= 3, diff
    bound = values[len(values) // 2]
    for op in ("<=", "<"):
        expect = [j for j, d in enumerate(diff) if (d <= bound if op == "<=" else d < bound)]
        assert 0 < len(expect) < len(diff)
        r = run_here(*swept.base, "--n_trials", str(len(expect)), "--stages", "sweep", "--ablate_blocks", "2.1",
                       "--screen_margin", f"2.1:{op}{bound}", "--variants", "paper,unscreened")
        assert r.returncode == 0, r.stderr
        out = json.load(open(os.path.join(swept.results, "ablation", "2.1.json")))
        control = json.load(open(os.path.join(swept.results, "ablation", "2.1.unscreened.json")))
        assert control["random_sets"] == [d["channels"] for d in draws[:len(expect)]]  # exactly the first N draws
        assert control["random_sets"] != out["random_sets"] or expect == list(range(len(expect)))
        assert out["screening"]["accepted_draws"] == expect, (op, bound, diff)
        assert [d["accepted"] for d in out["screening"]["draws"]] == [j in expect for j in range(len(diff))]
        assert out["random_sets"] == [draws[j]["channels"] for j in expect]
        at_bound = diff.index(bound)
        assert (at_bound in expect) == (op == "<=")
    # A rule that a set could meet but none of the draws does: stops at the cap, saying how many it found.
    if values[0] > -round(100 * passing):  # some draw scored above 0%, so '< lowest' is meetable in principle
        cap = run_here(*swept.base, "--n_trials", "1", "--stages", "sweep", "--ablate_blocks", "2.1",
                         "--screen_margin", f"2.1:<{values[0]}", "--variants", "paper")
        assert cap.returncode == 1 and "Traceback" not in cap.stderr
        assert "block 2.1: found 0 of 1 accepted random sets in 8 draws" in cap.stderr, cap.stderr


def test_end_to_end_and_resume(swept):
    results, common = swept.results, swept.common
    for layer in net.layers:
        assert np.load(os.path.join(results, "natural", f"{layer}.npy")).shape == (LIMIT, net.channels(layer))
    out = swept.out["3.1"]
    assert len(out["random_sets"]) == 3 and all(len(s) == 10 and not set(s) & set(range(10)) for s in out["random_sets"])
    assert len(out["screening"]["draws"]) == 8 and out["config"]["weights"].startswith("file:fixture_resnet18.pth")
    cells = os.listdir(os.path.join(results, "ablation", "3.1"))
    assert len(cells) == (1 + 1 + 8) + (1 + 1 + 3) * 2  # no scale: none, passing, 8 draws; then 2 scales x 5
    # A rerun computes nothing (no progress bar) and prints the same table.
    again = run_here(*common, "--screen_margin", "2.1:<=100;3.1:<=100", "--stages", "sweep")
    assert again.returncode == 0 and "screen0" not in again.stderr and "sweep:" not in again.stderr
    assert again.stdout.split("block 2.1")[1] == swept.stdout.split("block 2.1")[1]


def test_refusals_and_the_cap(folder, tmp_path):
    out = str(tmp_path / "res")
    common = ["--data", folder, "--weights", "random:3", "--results", out, "--workers", "0", "--batch", "4",
              "--sets", "2.1:0:6;3.1:0:10", "--n_trials", "2", "--screen_draws", "3", "--crops", "10,50",
              "--screen_margin", "2.1:<=100;3.1:<=100", "--limit", "5"]
    r = run_here(*common)
    assert r.returncode == 0, r.stderr
    # Cells made with another passing set are not mixed in.
    other = run_here(*[a if a != "2.1:0:6;3.1:0:10" else "2.1:0:6;3.1:0:12" for a in common], "--stages", "sweep")
    assert other.returncode != 0 and "made under another config" in other.stderr and "Traceback" not in other.stderr
    # A natural summary from other weights is refused.
    bad = run_here(*[a if a != "random:3" else "random:4" for a in common], "--stages", "sweep")
    assert bad.returncode != 0 and "made with weights random:3, not --weights random:4" in bad.stderr and "Traceback" not in bad.stderr
    # Random weights: the passing set scores 0%, so the paper's rule (a random set must score below it) can never be
    # met. Said at once, with what to pass, instead of burning the whole cap of draws.
    for margin in ("2.1:<-100", "2.1:<0"):
        never = run_here(*common[:-4], "--stages", "sweep", "--ablate_blocks", "2.1", "--screen_cap", "200",
                           "--screen_margin", margin, "--limit", "5")
        assert never.returncode == 1 and "Traceback" not in never.stderr
        assert "can never be met" in never.stderr and "--screen_margin '2.1:<=100'" in never.stderr
    assert not os.path.exists(os.path.join(out, "ablation", "2.1", "draw003.pt"))  # no draw beyond the 3 made
    # No --weights: the weights that the natural summary records (random:3), so the rerun is the same config; a
    # criteria.json that records other weights than the summary is refused.
    unnamed = [a for a in common if a not in ("--weights", "random:3")]
    again = run_here(*unnamed, "--stages", "sweep")
    assert again.returncode == 0 and "weights random:3" in again.stdout, again.stderr
    results.save_json({"config": {"arch": "resnet18", "weights_id": "random:4"}, "blocks": {}}, results.criteria_file(out))
    mixed = run_here(*unnamed, "--stages", "sweep")
    assert mixed.returncode != 0 and "different weights (random:3, random:4)" in mixed.stderr and "Traceback" not in mixed.stderr


def test_old_scales_flag_sets_the_crops_with_a_note():
    """--scales was ablate.py's name for the crop percentages (fzs.py's --scales are lucent scale factors): it still
    works, says once that it is now --crops, and --help lists only --crops."""
    old = run_here("--scales", "10,0", "--weights", "random")  # 0 is out of range: main read the value as the crops
    assert old.returncode == 1 and "Traceback" not in old.stderr
    assert old.stderr.count("note: --scales is now --crops (crop percentages of the scale transform)\n") == 1
    assert "error: crop 0 is out of range: --crops are percentages between 1 and 99" in old.stderr
    new = run_here("--crops", "10,0", "--weights", "random")
    assert "error: crop 0 is out of range" in new.stderr and "note:" not in new.stderr
    both = run_here("--crops", "0", "--scales", "10", "--weights", "random")  # the new name wins
    assert "error: crop 0 is out of range" in both.stderr
    usage = run_here("--help").stdout
    assert "--crops LIST" in usage and "--scales LIST" not in usage and "--n_trials" in usage


def test_missing_data_folder_is_one_line(tmp_path):
    missing = run_here("--data", str(tmp_path / "nowhere"), "--weights", "random")
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_passing_sets_from_criteria_json(tmp_path):
    def passing_sets(weights_id, spec):  # --ablate_blocks 2.1,3.1 --sets SPEC --weights random --results tmp_path
        return ablate.passing_sets(net, weights_id, ["2.1", "3.1"], spec, str(tmp_path), "random")

    assert "criteria.json is missing" in error_of(passing_sets, "random:0", "3.1:4,2")
    crit = {"config": {"WEIGHTS": "random", "weights_id": "random:0"},
            "blocks": {"2.1": {"n_channels": 128, "passing": [9, 1, 5], "count": 3, "percent": 2.3,
                               "layers": list(net.blocks["2.1"])}}}
    results.save_json(crit, str(tmp_path / "criteria.json"))
    assert passing_sets("random:0", "3.1:4,2") == {"2.1": [1, 5, 9], "3.1": [2, 4]}  # 3.1 named by hand
    assert "made with weights 'random:0'" in error_of(passing_sets, "IMAGENET1K_V1", "3.1:4,2")
    assert "has no block 3.1" in error_of(passing_sets, "random:0", "")
    # A block measured on only some channels: its 'non-passing' channels may pass, so no random sets are drawn from it.
    crit["blocks"]["3.1"] = {"n_channels": 256, "passing": [2, 4], "measured": list(range(16)), "missing": list(range(16, 256))}
    crit["fz_files"] = {"layer3.0": {"seed": 2, "steps": 256, "lr": 0.05, "amp": "bf16", "pre_as_released": False, "batch": 64}}
    results.save_json(crit, str(tmp_path / "criteria.json"))
    text = error_of(passing_sets, "random:0", "")
    assert "block 3.1 measured only 16 of its channels (240 missing)" in text
    assert (f"python fzs.py --layers layer3.0,layer3.1.bn2 --channels 16:256 --seed 2 --steps 256 --lr 0.05 --amp bf16 "
            f"--pre_as_released False --batch 64 --weights random --results {tmp_path}") in text
    assert passing_sets("random:0", "3.1:4,2") == {"2.1": [1, 5, 9], "3.1": [2, 4]}  # named by hand: allowed


# ----------------------------------------------------------------------------------------------------
# Beyond the paper's Fig. 2: held-out screening, the unscreened control, and the test of the claim.

def test_stratified_split_is_stratified_and_reproducible():
    labels = np.repeat(np.arange(7), [1, 2, 3, 4, 7, 10, 13])[np.random.default_rng(5).permutation(40)]
    screen, report = ablate.stratified_split(labels, 0.5, seed=0)
    assert len(report) == 20 and np.array_equal(np.sort(np.concatenate([screen, report])), np.arange(40))
    for c in range(7):
        n_c, k = (labels == c).sum(), (labels[report] == c).sum()
        assert np.floor(0.5 * n_c) <= k <= np.ceil(0.5 * n_c), (c, n_c, k)
    again = ablate.stratified_split(labels, 0.5, seed=0)
    assert np.array_equal(again[1], report) and np.array_equal(again[0], screen)
    assert not np.array_equal(ablate.stratified_split(labels, 0.5, seed=1)[1], report)
    _, quarter = ablate.stratified_split(labels, 0.25, seed=0)
    assert len(quarter) == 10 and all(np.floor(0.25 * (labels == c).sum()) <= (labels[quarter] == c).sum()
                                      <= np.ceil(0.25 * (labels == c).sum()) for c in range(7))


def test_sign_flip_p_values_on_planted_differences():
    below = -np.linspace(0.1, 0.3, 10)  # every trial's scaled ratio below its no-scale ratio
    assert stats.sign_flip_p(below, 10000, 0) == (1 / 1024, "exact")  # only the observed signs reach that mean
    assert stats.sign_flip_p(-below, 10000, 0)[0] == 1.0
    p, how = stats.sign_flip_p(np.array([0.2, -0.2, 0.1, -0.1, 0.05, -0.05, 0.3, -0.3]), 10000, 0)  # symmetric: none
    assert how == "exact" and 0.5 <= p <= 0.7
    p, how = stats.sign_flip_p(-np.linspace(0.1, 0.3, 20), 999, 0)  # 2^20 flips: random ones
    assert how == "999 random flips" and p == 1 / 1000
    assert stats.sign_flip_p([np.nan, np.nan], 100, 0) == (None, "no trials")
    # claim_test on planted per-trial ratios: a clear effect and none
    g = np.random.default_rng(0)
    n_trials, scales = 12, 4
    hits_p = g.random((scales, 300)) < 0.5
    hits_r = g.random((n_trials, scales, 300)) < 0.5
    effect = np.column_stack([np.full(n_trials, 1.0) + g.normal(0, 0.02, n_trials)] + [np.full(n_trials, 0.9) + g.normal(0, 0.02, n_trials)] * 3)
    test = dict(replicates=2000, level=0.95, permutations=10000)  # the defaults of --bootstrap, --ci, --permutations
    t = ablate.claim_test(effect, hits_p, hits_r, 0, **test)
    assert t["p_below"] < 0.001 and t["permutations"] == "exact" and all(p < 0.001 for p in t["p_below_per_scale"])
    assert np.allclose(t["difference"], effect[:, 1:].mean(0) - effect[:, 0].mean())
    noise = 1.0 + g.normal(0, 0.05, (n_trials, scales))
    assert ablate.claim_test(noise, hits_p, hits_r, 0, **test)["p_below"] > 0.05


def test_bootstrap_interval_on_planted_hits():
    """Per-image hits whose answer is known: the passing set loses 15 points at every scale and the random sets do
    not (difference -0.3 at each scale), and a case with no difference at all."""
    g = np.random.default_rng(1)
    n, n_trials = 2000, 10
    base = g.random(n)
    hits_r = np.stack([np.stack([g.random(n) < 0.5 for _ in range(4)]) for _ in range(n_trials)])
    effect = np.stack([base < 0.5] + [base < 0.35] * 3)  # 50% at no scale, 35% scaled
    boot = stats.bootstrap_differences(effect, hits_r, 500, seed=0)
    assert boot.shape == (500, 3)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    truth = 0.35 / 0.5 - 0.5 / 0.5  # ratios against random sets at 50%
    assert (hi < 0).all() and (lo < truth).all() and (truth < hi).all()
    none = np.stack([base < 0.5] * 4)
    lo, hi = np.percentile(stats.bootstrap_differences(none, hits_r, 500, seed=0), [2.5, 97.5], axis=0)
    assert ((lo < 0) & (0 < hi)).all()
    assert np.array_equal(stats.bootstrap_differences(none, hits_r, 50, seed=3), stats.bootstrap_differences(none, hits_r, 50, seed=3))


def test_heldout_cells_are_counted_on_heldout_images_only(swept):
    """ablate.py's held-out variant against the independent slow path on exactly the split's report images."""
    split = json.load(open(os.path.join(swept.results, "ablation", "split.json")))
    report = split["report_index"]
    labels = swept.labels.numpy()
    assert split["report"] == len(report) == LIMIT // 2 and split["screen"] == LIMIT - len(report)
    assert np.array_equal(ablate.stratified_split(labels, 0.5, 0)[1], report)  # the recorded split is the seeded one
    paths = [swept.paths[i] for i in report]
    summary = torch.load(os.path.join(swept.results, "natural", "summary.pt"), weights_only=False)
    for block in SETS:
        out = json.load(open(os.path.join(swept.results, "ablation", f"{block}.heldout.json")))
        assert out["variant"] == "heldout" and out["n_images"] == len(report) and out["split"]["report"] == len(report)
        mean = summary["mean"][net.blocks[block][2]]
        for name, channels, accuracy in [("passing", out["passing"], out["accuracy"]["passing"])] + \
                [(f"random {k}", c, a) for k, (c, a) in enumerate(zip(out["random_sets"], out["accuracy"]["random"]))]:
            for k, scale in enumerate(out["scales"]):
                logits = reference_logits(swept.model, swept.root, paths, scale, block, channels, mean)
                correct, ambiguous = count_correct(logits, swept.labels[report])
                assert abs(round(accuracy[k] * len(report)) - correct) <= ambiguous, (block, name, scale)
        # screening was on the other images: its accuracies are counts out of the screening part
        assert out["screening"]["n_images"] == split["screen"]
        assert all(round(d["accuracy"] * split["screen"], 6) == int(round(d["accuracy"] * split["screen"])) for d in out["screening"]["draws"])
        assert set(out["test"]) >= {"difference", "ci", "p_below", "method"} and len(out["test"]["ci"]) == len(out["scales"]) - 1


def test_the_crop_flag_reaches_the_loader_and_the_cells(folder, tmp_path, monkeypatch):
    """--crop_as_released true in main: the views are made with the released crops (the loader) and every cell records
    it (the sweep's key); the loader and the sweep are stubbed, so nothing is measured."""
    for name in cli.flag_names(ablate.__file__):
        monkeypatch.setattr(ablate, name, getattr(ablate, name))  # main's configure() rewrites them; restored after
    got = {}
    monkeypatch.setattr(ablate, "loader_cache", lambda *args: got.setdefault("loader", args) and None)
    monkeypatch.setattr(ablate, "sweep_stage", lambda *args, **kw: got.setdefault("sweep", kw))
    for flag in ("true", "false"):
        got.clear()
        monkeypatch.setattr(sys, "argv", ["ablate.py", "--data", folder, "--weights", "random", "--results", str(tmp_path / flag),
                                          "--stages", "sweep", "--workers", "0", "--crop_as_released", flag])
        ablate.main()
        assert got["loader"][-1] is (flag == "true") and got["sweep"]["crop_as_released"] is (flag == "true")
