"""ImageNet folder reading (stream.py), the natural-image stage and the ablation sweep (ablate.py).

CPU, random weights, a tiny folder of generated JPEGs in tmp_path; no data from outside the test."""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import ablate
import stream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = [5, 17, 999]  # a partial class set: labels must be these, not 0, 1, 2


def smooth_rgb(rng, h, w):
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


def make_folder(root, per_class=2, seed=0):
    """root/<wnid>/*.JPEG for CLASSES, with one grayscale and one CMYK JPEG among them."""
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        os.makedirs(os.path.join(root, stream.WNIDS[c]), exist_ok=True)
        for k in range(per_class):
            smooth_rgb(rng, 90 + 10 * k, 120).save(os.path.join(root, stream.WNIDS[c], f"img{k}.JPEG"), quality=90)
    smooth_rgb(rng, 100, 80).convert("L").save(os.path.join(root, stream.WNIDS[17], "gray.JPEG"))
    smooth_rgb(rng, 80, 100).convert("CMYK").save(os.path.join(root, stream.WNIDS[999], "cmyk.JPEG"))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(str(tmp_path_factory.mktemp("val")))


@pytest.fixture(scope="module")
def model():
    return stream.load_resnet18("random:3")[0]


def error_of(fn, *args):
    with pytest.raises(SystemExit) as e:
        fn(*args)
    text = str(e.value)
    assert text.startswith("error: ") and "\n" not in text
    return text


# ----------------------------------------------------------------------------------------------------
# Reading the folder.

def test_wnid_list_is_the_canonical_1000():
    w = stream.WNIDS
    assert len(w) == 1000 and len(set(w)) == 1000
    known = {0: "n01440764", 1: "n01443537", 5: "n01496331", 17: "n01580077", 281: "n02123045", 500: "n03042490",
             817: "n04285008", 998: "n13133613", 999: "n15075141"}
    assert all(w[i] == wnid for i, wnid in known.items())
    assert w == sorted(w)  # ImageNet-1k's canonical order is the sorted wnids
    assert stream.WNID_INDEX["n04285008"] == 817


def test_partial_class_set_gets_canonical_labels(folder):
    paths, labels = stream.imagenet_folder(folder)
    assert len(paths) == 8 and labels.dtype == np.int64
    for p, y in zip(paths, labels):
        assert stream.WNIDS[y] == p.split(os.sep)[0]
    assert sorted(set(labels.tolist())) == CLASSES
    assert paths == sorted(paths)
    sub, sub_labels = stream.imagenet_folder(folder, limit=3)  # evenly spaced: first, middle, last
    assert sub == [paths[0], paths[4], paths[7]] and sub_labels.tolist() == [labels[0], labels[4], labels[7]]


def test_bad_folders_give_one_line_errors(tmp_path):
    assert "does not exist" in error_of(stream.imagenet_folder, str(tmp_path / "nope"))
    (tmp_path / "file.txt").write_text("x")
    assert "is not a folder" in error_of(stream.imagenet_folder, str(tmp_path / "file.txt"))
    (tmp_path / "empty").mkdir()
    assert "is empty" in error_of(stream.imagenet_folder, str(tmp_path / "empty"))
    (tmp_path / "loose").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "loose" / "a.JPEG")
    assert "one sub-folder per wnid" in error_of(stream.imagenet_folder, str(tmp_path / "loose"))
    (tmp_path / "layout" / "cats").mkdir(parents=True)
    assert "'cats' is not a wnid" in error_of(stream.imagenet_folder, str(tmp_path / "layout"))
    (tmp_path / "unknown" / "n99999999").mkdir(parents=True)
    assert "unknown wnid 'n99999999'" in error_of(stream.imagenet_folder, str(tmp_path / "unknown"))
    (tmp_path / "noimg" / "n01440764").mkdir(parents=True)
    assert "no images" in error_of(stream.imagenet_folder, str(tmp_path / "noimg"))
    assert "no image folder given" in error_of(stream.imagenet_folder, "")


def test_gray_cmyk_palette_become_rgb(tmp_path):
    rng = np.random.default_rng(1)
    base = smooth_rgb(rng, 40, 50)
    base.convert("L").save(tmp_path / "g.JPEG")
    base.convert("CMYK").save(tmp_path / "c.JPEG")
    base.convert("P").save(tmp_path / "p.png")
    gray = stream.decode_rgb(str(tmp_path / "g.JPEG"))
    assert gray.mode == "RGB"
    g = np.asarray(gray)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    cmyk = stream.decode_rgb(str(tmp_path / "c.JPEG"))
    assert cmyk.mode == "RGB" and np.array_equal(np.asarray(cmyk), np.asarray(Image.open(tmp_path / "c.JPEG").convert("RGB")))
    assert np.abs(np.asarray(cmyk).astype(int) - np.asarray(base).astype(int)).mean() < 20  # colours survive
    pal = stream.decode_rgb(str(tmp_path / "p.png"))
    assert pal.mode == "RGB"
    (tmp_path / "bad.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(stream.ImageError, match="bad.JPEG"):
        stream.decode_rgb(str(tmp_path / "bad.JPEG"))


def test_unreadable_image_in_a_worker_is_one_line(tmp_path):
    make_folder(str(tmp_path))
    (tmp_path / stream.WNIDS[5] / "broken.JPEG").write_bytes(b"\xff\xd8 truncated")
    paths, labels = stream.imagenet_folder(str(tmp_path))
    loader = stream.image_loader(stream.ImageNetFolder(str(tmp_path), paths, labels), 4, workers=1)
    text = error_of(lambda: list(stream.guarded(loader)))
    assert "cannot read image" in text and "broken.JPEG" in text


def test_scale_transform_crop_sizes():
    assert stream.crop_size(10) == 231 and stream.crop_size(50) == 128
    assert [stream.crop_size(p) for p in (20, 30, 40)] == [205, 180, 154]
    # On a 256 x 256 image whose red value is the column index, the 50% view spans columns 64..191.
    cols = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    img = Image.fromarray(np.stack([cols, cols.T, np.zeros_like(cols)], -1))
    views = stream.eval_views(img, [0, 10, 50])
    assert views.shape == (3, 3, 224, 224) and views.dtype == torch.uint8
    for k, c in [(0, 224), (1, 231), (2, 128)]:
        first = (256 - c) // 2
        assert abs(int(views[k, 0, 112, 0]) - first) <= 1 and abs(int(views[k, 0, 112, -1]) - (first + c - 1)) <= 1
    # The same pixels as the standard torchvision transforms applied to the same decoded image.
    rng = np.random.default_rng(0)
    photo = smooth_rgb(rng, 300, 410)
    to_u8 = T.PILToTensor()
    assert torch.equal(stream.eval_views(photo, [0])[0], to_u8(T.Compose([T.Resize(256), T.CenterCrop(224)])(photo)))
    for p in (10, 30, 50):
        ref = T.Compose([T.Resize(256), T.CenterCrop(stream.crop_size(p)), T.Resize((224, 224))])(photo)
        assert torch.equal(stream.eval_views(photo, [p])[0], to_u8(ref))


def test_dataset_decodes_once_into_all_views(folder, monkeypatch):
    paths, labels = stream.imagenet_folder(folder)
    ds = stream.ImageNetFolder(folder, paths, labels, [0, 10, 20, 30, 40, 50])
    calls = []
    real = stream.decode_rgb
    monkeypatch.setattr(stream, "decode_rgb", lambda p: calls.append(p) or real(p))
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
    rules = ablate.parse_rules(ablate.SCREEN_MARGIN)
    assert rules == {"2.1": ("<", 0.0), "3.1": ("<=", 1.0)}
    n = 200  # 1 pp = 2 images
    assert ablate.accepted(rules["2.1"], 49, 50, n) and not ablate.accepted(rules["2.1"], 50, 50, n)
    assert ablate.accepted(rules["3.1"], 52, 50, n) and not ablate.accepted(rules["3.1"], 53, 50, n)
    assert ablate.accepted(rules["3.1"], 10, 50, n)
    assert "cannot read screening rule" in error_of(ablate.parse_rules, "2.1:=3")


def test_sets_and_draws():
    assert ablate.parse_sets("2.1:3,17,40:43;3.1:0") == {"2.1": [3, 17, 40, 41, 42], "3.1": [0]}
    assert "out of range" in error_of(ablate.parse_sets, "2.1:200")
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
        h = stream.features(model, x, ["layer2.1"])["layer2.1"]
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
            assert torch.allclose(ablate.run_suffix(model, fast[k], 4), logits, atol=1e-5, rtol=1e-5)


def test_fast_path_predictions_equal_released_loop(folder, model):
    paths, labels = stream.imagenet_folder(folder)
    keep = [i for i, p in enumerate(paths) if "gray" in p or "cmyk" in p or "img0" in p][:4]
    paths, labels = [paths[i] for i in keep], labels[keep]
    assert any("gray" in p for p in paths) and any("cmyk" in p for p in paths)
    scales = [0, 50]
    g = torch.Generator().manual_seed(0)
    means = {"2.1": torch.rand(128, generator=g), "3.1": torch.rand(256, generator=g)}
    sets = {"2.1": [[2, 7, 30], [1, 50, 99]], "3.1": [[0, 9, 100, 200]]}
    plan = [(stream.where(stream.BLOCKS[b][2])[0], means[b], ablate.masks_for(sets[b], len(means[b]))) for b in ("2.1", "3.1")]
    ds = stream.ImageNetFolder(folder, paths, labels, scales)
    fast_model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # as ablate.py runs it
    fast = {s: [] for s in scales}
    with torch.inference_mode():
        for views, _y, _i in stream.image_loader(ds, 3, workers=0):
            for v, s in enumerate(scales):
                x = stream.normalize(stream.to_float(views[:, v])).contiguous(memory_format=torch.channels_last)
                fast[s].append(ablate.predictions(fast_model, x, plan, suffix_batch=4))  # several suffix chunks
    fast = {s: torch.cat(p, 1) for s, p in fast.items()}
    checked = 0

    def same(pred, logits):  # equal top-1, except where the reference's top two are within float rounding
        nonlocal checked
        top2 = logits.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-4
        checked += int(clear.sum())
        return bool(((pred == logits.argmax(1)) | ~clear).all())

    for s in scales:
        loader = stream.image_loader(stream.ImageNetFolder(folder, paths, labels, [s]), 3, workers=0)
        row = 1
        for b in ("2.1", "3.1"):
            for chans in sets[b]:
                assert same(fast[s][row], ablate.reference_logits(model, loader, b, chans, means[b], torch.device("cpu"))), (b, chans, s)
                row += 1
        assert same(fast[s][0], ablate.reference_logits(model, loader, "2.1", [], means["2.1"], torch.device("cpu")))
    assert checked >= 0.9 * 2 * 4 * 4  # nearly every prediction was a clear one


def test_run_pass_resumes_from_partial_counts(folder, model, tmp_path, monkeypatch):
    monkeypatch.setattr(ablate, "BATCH", 3)
    monkeypatch.setattr(ablate, "WORKERS", 0)
    paths, labels = stream.imagenet_folder(folder, limit=4)
    ds = stream.ImageNetFolder(folder, paths, labels)
    plan = [(3, torch.rand(128), ablate.masks_for([[1, 2], [3]], 128))]
    args = ("t", model, ds, [0, 50], plan, torch.device("cpu"), None, 64, str(tmp_path), {"k": 1})
    full = ablate.run_pass(*args)
    assert full.shape == (2, 3) and full.dtype == torch.int64
    partial = tmp_path / ".partial-t.pt"
    state = torch.load(partial)
    assert state["done"] == 4 and torch.equal(state["correct"], full)
    # Pretend a run stopped after 3 images with planted counts: the rerun adds only image 3.
    ds2 = stream.ImageNetFolder(folder, paths[3:], labels[3:])
    tail = ablate.run_pass("tail", model, ds2, [0, 50], plan, torch.device("cpu"), None, 64, str(tmp_path), {"k": 1})
    planted = torch.full((2, 3), 100, dtype=torch.int64)
    stream.save_pt({"key": state["key"], "done": 3, "correct": planted}, str(partial))
    assert torch.equal(ablate.run_pass(*args), planted + tail)


# ----------------------------------------------------------------------------------------------------
# The script end to end, twice (the second run reuses everything), plus its refusals.

def run_script(*argv):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, os.path.join(ROOT, "ablate.py"), *argv], capture_output=True, text=True, env=env, cwd=ROOT)


def test_end_to_end_and_resume(folder, tmp_path, model):
    results = str(tmp_path / "res")
    common = ["--data", folder, "--weights", "random:3", "--results", results, "--workers", "0", "--batch", "4",
              "--sets", "2.1:0:6;3.1:0:10", "--n_trials", "2", "--screen_draws", "3", "--scales", "10,50",
              "--screen_margin", "2.1:<=100;3.1:<=100", "--limit", "5"]
    r = run_script(*common)
    assert r.returncode == 0, r.stderr
    summary = torch.load(os.path.join(results, "natural", "summary.pt"), weights_only=False)
    paths, labels = stream.imagenet_folder(folder, limit=5)
    assert summary["paths"] == paths and summary["labels"].tolist() == labels.tolist() and summary["count"] == 5
    assert summary["config"]["weights"] == "random:3"
    # The per-image activations equal an independent forward hook on the torchvision transform's view.
    post = np.load(os.path.join(results, "natural", "layer2.1.npy"))
    assert post.dtype == np.float16 and post.shape == (5, 128)
    seen = []
    hd = model.layer2[1].register_forward_hook(lambda _m, _i, out: seen.append(out[:, :, 14, 14].clone()))
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(stream.MEAN, stream.STD)])
    with torch.no_grad():
        model(torch.stack([tf(Image.open(os.path.join(folder, p)).convert("RGB")) for p in paths]))
    hd.remove()
    assert np.allclose(post, seen[0].numpy(), rtol=2e-3, atol=2e-3)
    assert torch.allclose(summary["mean"]["layer2.1"], seen[0].mean(0), atol=1e-4)
    order = np.lexsort((np.arange(5)[:, None].repeat(128, 1), -seen[0].numpy()), axis=0)
    assert summary["top9_index"]["layer2.1"].tolist() == order.T.tolist()  # fewer than 9 images: all 5, sorted
    assert torch.allclose(summary["top9_activation"]["layer2.1"], torch.from_numpy(np.take_along_axis(seen[0].numpy(), order, 0).T), atol=1e-4)
    for layer in stream.LAYERS:
        assert np.load(os.path.join(results, "natural", f"{layer}.npy")).shape == (5, stream.n_channels(layer))
    with open(os.path.join(results, "ablation", "3.1.json")) as f:
        out = json.load(f)
    assert out["passing"] == list(range(10)) and len(out["random_sets"]) == 2 and out["scales"] == [0, 10, 50]
    assert all(len(s) == 10 and not set(s) & set(range(10)) for s in out["random_sets"])
    assert len(out["accuracy"]["random"]) == 2 and len(out["accuracy"]["none"]) == 3 and out["n_images"] == 5
    assert len(out["screening"]["draws"]) == 3 and out["config"]["weights"] == "random:3"
    cells = os.listdir(os.path.join(results, "ablation", "3.1"))
    assert len(cells) == (1 + 1 + 3) + (1 + 1 + 2) * 2  # no scale: none, passing, 3 draws; then 2 scales x 4
    # A rerun computes nothing (no progress bar) and prints the same table.
    again = run_script(*common, "--stages", "sweep")
    assert again.returncode == 0 and "screen0" not in again.stderr and "sweep:" not in again.stderr
    assert again.stdout.split("block 2.1")[1] == r.stdout.split("block 2.1")[1]
    # Cells made with another passing set are not mixed in.
    other = run_script(*[a if a != "2.1:0:6;3.1:0:10" else "2.1:0:6;3.1:0:12" for a in common], "--stages", "sweep")
    assert other.returncode != 0 and "made under another config" in other.stderr and "Traceback" not in other.stderr
    # A natural summary from other weights is refused.
    bad = run_script(*[a if a != "random:3" else "random:4" for a in common], "--stages", "sweep")
    assert bad.returncode != 0 and "another config" in bad.stderr and "Traceback" not in bad.stderr
    # A screening rule no draw meets: stops at the cap, saying how many it found (the 3 draws' cells are reused).
    cap = run_script(*common[:-4], "--stages", "sweep", "--ablate_blocks", "2.1", "--screen_cap", "3",
                     "--screen_margin", "2.1:<-100", "--limit", "5")
    assert cap.returncode == 1 and "Traceback" not in cap.stderr
    assert "block 2.1: found 0 of 2 accepted random sets in 3 draws" in cap.stderr


def test_missing_data_folder_is_one_line(tmp_path):
    missing = run_script("--data", str(tmp_path / "nowhere"), "--weights", "random")
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_passing_sets_from_criteria_json(tmp_path, monkeypatch):
    monkeypatch.setattr(ablate, "RESULTS", str(tmp_path))
    monkeypatch.setattr(ablate, "ABLATE_BLOCKS", ["2.1", "3.1"])
    monkeypatch.setattr(ablate, "SETS", "3.1:4,2")
    assert "criteria.json is missing" in error_of(ablate.passing_sets, "random:0")
    crit = {"config": {"WEIGHTS": "random", "weights_id": "random:0"},
            "blocks": {"2.1": {"n_channels": 128, "passing": [9, 1, 5], "count": 3, "percent": 2.3,
                               "layers": list(stream.BLOCKS["2.1"])}}}
    stream.save_json(crit, str(tmp_path / "criteria.json"))
    assert ablate.passing_sets("random:0") == {"2.1": [1, 5, 9], "3.1": [2, 4]}  # 3.1 named by hand
    assert "made with weights 'random:0'" in error_of(ablate.passing_sets, "IMAGENET1K_V1")
    monkeypatch.setattr(ablate, "SETS", "")
    assert "has no block 3.1" in error_of(ablate.passing_sets, "random:0")
