"""The figure scripts (plot_grids.py, plot_ratios.py, plot_spectrum.py) on tiny results in the contract's format,
and the small pieces they rely on (Spearman's rho, the weights stamp, atomic PNG + PDF pages)."""

import contextlib
import csv
import importlib
import io
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image

import arch
import figures
import imagenet
import plot_spectrum
import results

net = arch.net("resnet18")  # the paper's tables (tests of other architectures make their own)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------------
# Tiny results of exactly the contract's format

def pattern(seed, size=224):
    """A smooth coloured grating, so that a look at the figure shows where each image went."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    k = g.uniform(3, 12, 3)
    img = np.stack([np.sin(2 * np.pi * (k[i] * (xx * np.cos(i + seed) + yy * np.sin(i + seed)))) for i in range(3)])
    return torch.from_numpy(((img + 1) * 127.5).astype(np.uint8))


def fz_file(layer, objective, channels, weights="random:0", seed=0):
    channels = torch.tensor(sorted(channels), dtype=torch.int64)
    return {"images": torch.stack([pattern(1000 * hash(layer) % 997 + int(c)) for c in channels]),
            "channels": channels, "activation": torch.rand(len(channels)),
            "config": {"layer": layer, "objective": objective, "weights": weights, "seed": seed, "steps": 2, "lr": 0.05,
                       "batch": 4, "amp": "fp32", "jitter": 0, "pre_as_released": False, "versions": results.versions()}}


def make_results(root, weights="random:0", channel_fzs=True, natural=True, passing=None):
    """Blocks 2.1 and 3.1: center FZs of channels 0..5 (channel FZs for In and Pre of 2.1 only), criteria.json/.csv,
    stability.json, natural/summary.pt over 12 generated JPEGs, ablation/<block>.json."""
    root = str(root)
    passing = passing or {"2.1": [1, 3, 4], "3.1": [0, 2, 5]}
    n_fz = max(c for p in passing.values() for c in p) + 1
    for block in passing:
        for layer in net.blocks[block]:
            results.save_pt(fz_file(layer, "center", range(n_fz), weights), os.path.join(root, "fzs", layer, "center.pt"))
    if channel_fzs:
        for layer in net.blocks["2.1"][:2]:
            results.save_pt(fz_file(layer, "channel", range(n_fz), weights), os.path.join(root, "fzs", layer, "channel.pt"))
    fz_configs = {layer: results.load_pt(os.path.join(root, "fzs", layer, "center.pt"))["config"]
                  for block in passing for layer in net.blocks[block]}
    results.save_json({"config": {"weights": weights, "results": root}, "fz_files": fz_configs,
                      "blocks": {b: {"n_channels": net.channels(net.blocks[b][2]), "passing": p, "count": len(p),
                                     "percent": 100 * len(p) / net.channels(net.blocks[b][2]), "layers": list(net.blocks[b])}
                                 for b, p in passing.items()}}, os.path.join(root, "criteria.json"))
    g = np.random.default_rng(0)
    with open(os.path.join(root, "criteria.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["block", "channel", "pre_in", "pre_zoom_in", "post_in", "post_pre", "eq1", "eq2", "passes", "mix",
                    "bn2_abs", "conv2_abs_mean"])
        for block in ("1.1", "2.1", "3.1"):
            n = net.channels(net.blocks[block][2])
            bn2 = g.uniform(0.05, 1, n)
            post_pre = np.where(g.random(n) < 0.1, 0.0, g.uniform(0.5, 2, n))  # some Post(FZ of Pre) = 0: m := 10
            post_in = post_pre * np.exp(g.normal(0, 1, n)) / bn2 / 3
            mix = np.where(post_pre <= 0, 10.0, post_in / np.where(post_pre > 0, post_pre, 1))
            for c in range(n):
                ok = c in passing.get(block, [])
                w.writerow([block, c, *g.normal(size=2).round(4), post_in[c], post_pre[c], ok, ok, ok, mix[c], bn2[c],
                            g.uniform(0.01, 0.05)])
    results.save_json({"runs": [os.path.join(root, "seed0"), os.path.join(root, "seed1")],
                      "blocks": {b: {"pass_frequency": [1.0 if c in p else 0.5 * (c % 7 == 0) for c in range(net.channels(net.blocks[b][2]))],
                                     "jaccard": [[1.0, 0.6], [0.6, 1.0]], "always": p, "counts": [len(p), len(p) + 2]}
                                 for b, p in passing.items()}}, os.path.join(root, "stability.json"))
    if natural:
        images = os.path.join(root, "images")
        paths = []
        for i in range(12):
            rel = os.path.join(f"n0{i % 3}", f"img{i}.JPEG")
            os.makedirs(os.path.join(images, os.path.dirname(rel)), exist_ok=True)
            Image.fromarray(pattern(i, 300).numpy().transpose(1, 2, 0)[:, :260 + 10 * i]).save(os.path.join(images, rel))
            paths.append(rel)
        layers = [layer for b in passing for layer in net.blocks[b]]
        top9 = {layer: torch.from_numpy(np.stack([g.permutation(12)[:9] for _ in range(net.channels(layer))])) for layer in layers}
        results.save_pt({"root": images, "paths": paths, "labels": torch.arange(12) % 3, "top9_index": top9,
                        "top9_activation": {layer: torch.rand(net.channels(layer), 9) for layer in layers},
                        "mean": {layer: torch.rand(net.channels(layer)) for layer in layers}, "count": 12,
                        "config": {"weights": weights}}, os.path.join(root, "natural", "summary.pt"))
    for block, p in passing.items():
        scales = [0, 10, 20, 30, 40, 50]
        random_acc = (0.5 + 0.1 * g.random((10, 6))).tolist()
        passing_acc = (0.45 + 0.1 * g.random(6)).tolist()
        ratio = [(passing_acc[s] / np.array(random_acc)[:, s]) for s in range(6)]
        results.save_json({"block": block, "passing": p, "random_sets": [[7, 8, 9]] * 10, "scales": scales,
                          "accuracy": {"none": [0.7] * 6, "passing": passing_acc, "random": random_acc},
                          "ratio": [float(r.mean()) for r in ratio], "sem": [float(r.std(ddof=1) / np.sqrt(10)) for r in ratio],
                          "n_images": 12, "config": {"weights": weights}}, os.path.join(root, "ablation", f"{block}.json"))
    return root


def run(script, *args):
    """Run a script's main() in this process (fresh constants: the module is reloaded), as the command line would."""
    return capture(script, *args)[0]


def run_process(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "MPLBACKEND": "Agg"})


def png_size(path):
    with Image.open(path) as im:
        return im.size


def red_pixels(path):
    """How many strongly red pixels the PNG has (the random-weights stamp is red)."""
    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((a[..., 0] > 150) & (a[..., 1] < 120) & (a[..., 2] < 120)).sum())


# ----------------------------------------------------------------------------------------------------
# End to end

def test_all_figures_from_tiny_results(tmp_path):
    results = make_results(tmp_path / "results")
    figures = tmp_path / "results" / "figures"

    r = run("plot_grids.py", "--results", results, "--per_row", "2", "--rows_per_page", "1")
    assert r.returncode == 0, r.stderr
    for block in ("2.1", "3.1"):  # 3 passing channels, 2 a page -> 2 pages
        assert (figures / f"grids_block{block}_p1.png").is_file() and (figures / f"grids_block{block}_p2.png").is_file()
        assert not (figures / f"grids_block{block}_p3.png").exists() and (figures / f"grids_block{block}.pdf").stat().st_size > 10_000
        assert (figures / f"grids_block{block}.pdf").read_bytes().count(b"/Type /Page\n") + \
            (figures / f"grids_block{block}.pdf").read_bytes().count(b"/Type /Page ") >= 2
    w, h = png_size(figures / "grids_block2.1_p1.png")
    assert w >= 2 * 2.1 * 200 * 0.95 and h > 400
    # channel FZs exist only for In and Pre of block 2.1: the script names what is missing and how to make it
    assert ("python fzs.py --layers layer2.1 --objectives channel --channels 1,3,4 --seed 0 --steps 2 --lr 0.05 --amp fp32 "
            f"--pre_as_released False --batch 4 --weights random:0 --results {results}\n") in r.stdout  # the center FZs' settings
    assert "python fzs.py --layers layer3.0,layer3.1.bn2,layer3.1 --objectives channel --channels 0,2,5" in r.stdout
    assert "ablate.py --stages natural" not in r.stdout  # natural images are all there

    # a rerun with more channels per page replaces the pages by one figure (no stale _p2)
    r = run("plot_grids.py", "--results", results)
    assert r.returncode == 0, r.stderr
    assert (figures / "grids_block2.1.png").is_file() and not (figures / "grids_block2.1_p1.png").exists()

    r = run("plot_grids.py", "--results", results, "--channels", "2.1:0,5;3.1:4")
    assert r.returncode == 0, r.stderr
    assert (figures / "grids_selected.png").is_file() and (figures / "grids_selected.pdf").is_file()

    r = run("plot_ratios.py", "--results", results)
    assert r.returncode == 0, r.stderr
    assert "block 2.1" in r.stdout and "block 3.1" in r.stdout
    w, h = png_size(figures / "ratios.png")
    assert w > 1200 and h > 500 and red_pixels(figures / "ratios.png") > 1000

    r = run("plot_spectrum.py", "--results", results)
    assert r.returncode == 0, r.stderr
    for name in ("mix_hist", "mix_vs_bn2", "mix_vs_conv2", "pass_frequency"):
        assert (figures / f"{name}.png").stat().st_size > 20_000 and (figures / f"{name}.pdf").is_file()
        assert red_pixels(figures / f"{name}.png") > 1000
    assert "block  2.1" in r.stdout


def test_figures_from_the_real_pipeline(tmp_path):
    """fzs.py -> criteria.py -> ablate.py (natural stage, on generated JPEGs) -> the plots, all on random weights and
    tiny settings; only the ablation results (a full sweep) are synthetic, in the contract's format."""
    results = str(tmp_path / "results")
    figures = tmp_path / "results" / "figures"
    images = tmp_path / "val"
    for i, wnid in enumerate(imagenet.WNIDS[:3]):
        os.makedirs(images / wnid)
        for k in range(4):
            Image.fromarray(pattern(10 * i + k, 300).numpy().transpose(1, 2, 0)[:, :250 + 20 * k]).save(images / wnid / f"{k}.JPEG")
    r = run("fzs.py", "--layers", "2.1", "--channels", "0:2", "--steps", "2", "--batch", "2", "--objectives", "center,channel",
            "--weights", "random", "--png", "false", "--results", results)
    assert r.returncode == 0, r.stderr
    for script, *args in (("criteria.py", "--blocks", "2.1"), ("ablate.py", "--stages", "natural", "--data", images, "--workers", "0")):
        r = run(script, *args, "--weights", "random", "--results", results)
        assert r.returncode == 0, r.stderr
    synthetic = make_results(tmp_path / "synthetic")
    os.makedirs(os.path.join(results, "ablation"))
    for block in ("2.1", "3.1"):
        os.replace(os.path.join(synthetic, "ablation", f"{block}.json"), os.path.join(results, "ablation", f"{block}.json"))

    r = run("plot_grids.py", "--results", results, "--channels", "2.1:0,1")  # random weights: likely none passes
    assert r.returncode == 0, r.stderr
    assert "missing" not in r.stdout  # center and channel FZs and natural images are all there
    assert (figures / "grids_selected.png").is_file() and (figures / "grids_selected.pdf").is_file()
    r = run("plot_spectrum.py", "--results", results)
    assert r.returncode == 0, r.stderr
    for name in ("mix_hist", "mix_vs_bn2", "mix_vs_conv2"):
        assert red_pixels(figures / f"{name}.png") > 1000
    r = run("plot_ratios.py", "--results", results)
    assert r.returncode == 0, r.stderr
    assert red_pixels(figures / "ratios.png") > 1000


def test_missing_rows_and_pretrained_weights(tmp_path):
    """No channel FZs, no natural images, pretrained weights id: the grids are still drawn, the missing rows are named
    with the commands that fill them, and no random-weights stamp appears (red pixels come only from the stamp
    in the other figures; in the grids the FZs have red too, so compare with the same grids from random weights)."""
    stamped = make_results(tmp_path / "random", weights="random:0", channel_fzs=False, natural=False)
    r = run("plot_grids.py", "--results", stamped, "--only_blocks", "2.1")
    assert r.returncode == 0, r.stderr
    results = make_results(tmp_path / "results", weights="IMAGENET1K_V1", channel_fzs=False, natural=False)
    r = run("plot_grids.py", "--results", results, "--only_blocks", "2.1")
    assert r.returncode == 0, r.stderr
    assert f"--objectives channel --channels 1,3,4 --seed 0 --steps 2 --lr 0.05 --amp fp32 --pre_as_released False --batch 4 --results {results}\n" in r.stdout
    assert f"python ablate.py --stages natural --data /path/to/imagenet/val --weights IMAGENET1K_V1 --results {results}\n" in r.stdout
    png = tmp_path / "results" / "figures" / "grids_block2.1.png"
    assert png.is_file() and not (tmp_path / "results" / "figures" / "grids_block3.1.png").exists()
    assert red_pixels(png) + 2000 < red_pixels(tmp_path / "random" / "figures" / "grids_block2.1.png")
    r = run("plot_ratios.py", "--results", results)
    assert r.returncode == 0 and red_pixels(tmp_path / "results" / "figures" / "ratios.png") == 0
    # ablate.py writes null where a random set scored 0 (no ratio): drawn without it, printed as n/a
    path = tmp_path / "results" / "ablation" / "2.1.json"
    d = json.loads(path.read_text())
    d["ratio"][0] = d["ratio"][3] = d["sem"][3] = None
    path.write_text(json.dumps(d))
    r = run("plot_ratios.py", "--results", results)
    assert r.returncode == 0, r.stderr
    assert "none: n/a" in r.stdout and "30%: n/a \u00b1 n/a" in r.stdout


def test_bad_inputs_end_in_one_line(tmp_path):
    res = make_results(tmp_path / "results", natural=False)
    r = run("plot_grids.py", "--results", res, "--channels", "2.1:200")
    assert r.returncode != 0 and "out of range" in r.stderr and "Traceback" not in r.stderr
    r = run("plot_grids.py", "--results", res, "--only_blocks", "4.1")
    assert r.returncode != 0 and "not in criteria.json" in r.stderr and "Traceback" not in r.stderr
    r = run("plot_ratios.py", "--results", str(tmp_path / "nothing"))
    assert r.returncode != 0 and "ablate.py" in r.stderr and "Traceback" not in r.stderr
    r = run_process("plot_spectrum.py", "--results", str(tmp_path / "nothing"))  # once as a real process
    assert r.returncode != 0 and "criteria.py" in r.stderr and "Traceback" not in r.stderr
    # inputs from different weights are not mixed
    ablation = json.loads((tmp_path / "results" / "ablation" / "3.1.json").read_text())
    ablation["config"]["weights"] = "IMAGENET1K_V1"
    (tmp_path / "results" / "ablation" / "3.1.json").write_text(json.dumps(ablation))
    r = run("plot_ratios.py", "--results", res)
    assert r.returncode != 0 and "different weights" in r.stderr and "Traceback" not in r.stderr
    # center FZs remade after criteria.py ran: say so instead of drawing FZs the criteria were not computed on
    d = results.load_pt(os.path.join(res, "fzs", "layer2.0", "center.pt"))
    d["config"]["steps"] = 99
    results.save_pt(d, os.path.join(res, "fzs", "layer2.0", "center.pt"))
    r = run("plot_grids.py", "--results", res)
    assert r.returncode != 0 and "criteria.py" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------------------------------
# Pieces

def reference_ranks(x):
    """Ranks 1..n by hand: sort, then give each run of equal values the mean of the positions it spans."""
    x = [float(v) for v in x]
    order = sorted(range(len(x)), key=lambda i: x[i])
    out, i = [0.0] * len(x), 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def reference_spearman(a, b):
    """Pearson's correlation of the tie-averaged ranks, by hand."""
    ra, rb = reference_ranks(a), reference_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / np.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def test_spearman_by_hand():
    from plot_spectrum import spearman
    # x = 1, 2, 2, 4  -> ranks 1, 2.5, 2.5, 4;  y = 10, 30, 20, 40 -> ranks 1, 3, 2, 4
    for ranks in (scipy.stats.rankdata, reference_ranks):
        assert list(ranks([1, 2, 2, 4])) == [1, 2.5, 2.5, 4]
        assert list(ranks([3, 1, 3, 3])) == [3, 1, 3, 3]
    # rank deviations: x: -1.5, 0, 0, 1.5; y: -1.5, 0.5, -0.5, 1.5 -> sum xy = 4.5; sum xx = 4.5, sum yy = 5
    assert spearman([1, 2, 2, 4], [10, 30, 20, 40]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1)
    assert spearman(np.exp([1, 2, 3, 4.0]), [1, 2, 3, 4]) == pytest.approx(1)  # invariant to monotone maps
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_scipy_ranks_and_spearman_match_a_hand_written_reference():
    """scipy.stats.rankdata / spearmanr, which plot_spectrum uses, against the definition on planted data with many
    ties (values on a coarse grid, as |bn2| of a pruned network or m at its conventions 0 and 10)."""
    g = np.random.default_rng(7)
    for n in (2, 3, 10, 64, 257):
        a = g.integers(0, 5, n).astype(float)  # few distinct values: ties everywhere
        b = np.where(g.random(n) < 0.3, 10.0, np.round(g.uniform(0, 3, n), 1))
        assert np.allclose(scipy.stats.rankdata(a), reference_ranks(a))
        assert np.allclose(scipy.stats.rankdata(b), reference_ranks(b))
        if np.ptp(a) and np.ptp(b):
            assert plot_spectrum.spearman(a, b) == pytest.approx(reference_spearman(a, b))
            assert plot_spectrum.spearman(b, a) == pytest.approx(reference_spearman(a, b))
    assert plot_spectrum.spearman([1, 2, 2, 4], [10, 30, 20, 40]) == pytest.approx(reference_spearman([1, 2, 2, 4], [10, 30, 20, 40]))


def test_montage_places_images_row_by_row_best_first():
    """figures.montage: image k in row k // 3, column k % 3, resized to the tile; white gaps; a None cell and the cells
    after the last image white; gap=0 is the plain 3 x 3 concatenation the atlas writes."""
    colours = [np.array([20 * k, 255 - 20 * k, 7 * k], np.uint8) for k in range(9)]
    images = [np.tile(col, (30 + k, 40, 1)) for k, col in enumerate(colours)]  # odd sizes: each is resized
    images[4] = None
    tile = 56
    gap = tile // 28
    out = figures.montage(images[:8], tile)
    assert out.shape == (3 * tile + 2 * gap, 3 * tile + 2 * gap, 3) and out.dtype == np.uint8
    for k in range(9):
        r, c = divmod(k, 3)
        cell = out[r * (tile + gap):r * (tile + gap) + tile, c * (tile + gap):c * (tile + gap) + tile]
        expect = colours[k] if k < 8 and images[k] is not None else np.array([255, 255, 255])
        assert (cell == expect).all(), k
    assert (out[tile:tile + gap] == 255).all() and (out[:, tile:tile + gap] == 255).all()  # the gaps
    flat = figures.montage(images[:8], tile, gap=0)
    blank = np.full((tile, tile, 3), 255, np.uint8)
    cells = [blank if im is None else np.tile(col, (tile, tile, 1)) for im, col in zip(images[:8], colours)] + [blank]
    assert (flat == np.concatenate([np.concatenate(cells[r * 3:r * 3 + 3], 1) for r in range(3)], 0)).all()


def test_weights_of_and_stamp(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    assert results.weights_of({"weights": "random"}, {"fz_files": {"layer2.0": {"weights": "random:0"}}}) == "random:0"
    assert results.weights_of({}, {"a": 1}) == "unknown"
    with pytest.raises(SystemExit, match="different weights"):
        results.weights_of({"weights": "random:0"}, {"x": {"weights": "IMAGENET1K_V1"}})
    for weights, red in (("random:3", True), ("IMAGENET1K_V1", False)):
        fig = plt.figure(figsize=(4, 3))
        stamp_texts = len(fig.texts)
        figures.stamp(fig, weights)
        texts = [t.get_text() for t in fig.texts[stamp_texts:]]
        assert any(weights in t for t in texts)
        assert any("RANDOM WEIGHTS (random:3)" in t for t in texts) == red
        paths = figures.save_figure([fig, plt.figure()], str(tmp_path / weights.replace(":", "_")))
        assert [os.path.basename(p) for p in paths][-1].endswith(".pdf") and all(os.path.isfile(p) for p in paths)
        assert (red_pixels(paths[0]) > 100) == red
        assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------------
# Values drawn, read back from the matplotlib artists

def capture(script, *args):
    """Run a script's main() in this process and return (result, [figures it saved]), each figure's artists intact."""
    module = importlib.reload(importlib.import_module(script.removesuffix(".py")))
    figures, real = [], getattr(module, "save_figure", None)

    def keep(figs, path, dpi=200):
        figures.extend(figs if isinstance(figs, (list, tuple)) else [figs])
        return real(figs, path, dpi)
    if real is not None:  # a plot script: keep its figures
        module.save_figure = keep
    out, argv = io.StringIO(), sys.argv
    sys.argv = [script, *map(str, args)]
    try:
        with contextlib.redirect_stdout(out):
            module.main()
        rc, err = 0, ""
    except SystemExit as e:
        rc, err = e.code if isinstance(e.code, int) else 1, str(e.code)
    finally:
        sys.argv = argv
    return types.SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err), figures


def test_fig2_draws_the_values_of_the_ablation_json(tmp_path):
    results = make_results(tmp_path / "results", natural=False)
    r, figs = capture("plot_ratios.py", "--results", results)
    assert r.returncode == 0, r.stderr
    axes = [ax for ax in figs[0].axes if ax.get_title()]
    assert len(axes) == 2
    for ax, block in zip(axes, ("2.1", "3.1")):
        d = json.loads((tmp_path / "results" / "ablation" / f"{block}.json").read_text())
        assert f"Block {block}" in ax.get_title()
        blue = [line for line in ax.get_lines() if line.get_color() == "tab:blue"]
        assert len(blue) == 1 and np.allclose(blue[0].get_ydata(), d["ratio"][0])  # the no-scale ratio
        bars = ax.containers[0]
        x, y = bars.lines[0].get_data()
        assert np.allclose(x, d["scales"][1:]) and np.allclose(y, d["ratio"][1:])
        segments = bars.lines[2][0].get_segments()  # one vertical segment per point: ratio -+ SEM
        assert np.allclose([s[0][1] for s in segments], np.array(d["ratio"][1:]) - d["sem"][1:])
        assert np.allclose([s[1][1] for s in segments], np.array(d["ratio"][1:]) + d["sem"][1:])


def test_fig2_with_a_single_scale(tmp_path):
    results = make_results(tmp_path / "results", natural=False)
    for block in ("2.1", "3.1"):
        path = tmp_path / "results" / "ablation" / f"{block}.json"
        d = json.loads(path.read_text())
        keep = [0, 3]  # no scale and 30%
        d["scales"] = [d["scales"][k] for k in keep]
        for key in ("ratio", "sem"):
            d[key] = [d[key][k] for k in keep]
        path.write_text(json.dumps(d))
    r, figs = capture("plot_ratios.py", "--results", results)
    assert r.returncode == 0, r.stderr
    x, y = figs[0].axes[1].containers[0].lines[0].get_data()  # block 3.1, the last file written
    assert list(x) == [30] and np.isclose(y[0], d["ratio"][1])


def test_mix_histogram_regions_use_eq2s_bounds(tmp_path):
    """Eq. 2 is strict at both ends: 2/3 and 3/2 themselves are not 'mix'; just inside both bounds is."""
    results = make_results(tmp_path / "results", natural=False)
    planted = [2 / 3, 0.66668, 1.0, 1.4999, 1.5, 3.0, 0.2, 0.5, 4.0]  # measured ratios
    expected = (3, 3, 3)  # overwrite (<= 2/3): 2/3, 0.2, 0.5; mix: 0.66668, 1.0, 1.4999; skip (>= 3/2): 1.5, 3.0, 4.0
    # and the convention values (criteria.mix_ratio), which are not ratios: 2 with Post(FZ of In) = 0 (m := 0), 3 with
    # Post(FZ of Pre) = 0 (m := 10; one of them with both at 0)
    undefined = [(0.0, 1.0, 0.0), (0.0, 2.0, 0.0), (1.0, 0.0, 10.0), (0.5, 0.0, 10.0), (0.0, 0.0, 10.0)]
    with open(os.path.join(results, "criteria.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["block", "channel", "pre_in", "pre_zoom_in", "post_in", "post_pre", "eq1", "eq2", "passes", "mix",
                    "bn2_abs", "conv2_abs_mean"])
        for c, m in enumerate(planted):
            w.writerow(["2.1", c, 0, 0, m, 1, 0, int(2 / 3 < m < 3 / 2), 0, repr(m), 0.1 * (c + 1), 0.01])
        for c, (post_in, post_pre, m) in enumerate(undefined, len(planted)):
            w.writerow(["2.1", c, 0, 0, post_in, post_pre, 0, 0, 0, m, 0.1 * (c + 1), 0.01])
    r, figs = capture("plot_spectrum.py", "--results", results)
    assert r.returncode == 0, r.stderr
    ax = figs[0].axes[0]
    counts = [t.get_text() for t in ax.texts if "overwrite:" in t.get_text()][0]
    assert counts.splitlines() == [f"overwrite: {expected[0]}", f"mix: {expected[1]}", f"skip: {expected[2]}", "undefined: 5"]
    hist = [c for c in ax.containers if len(c) == len(plot_spectrum.bin_edges(plot_spectrum.MIX_CLIP, plot_spectrum.BINS)) - 1]
    apart = [c for c in ax.containers if len(c) == 2]  # the two hatched 'undefined' bars, right of the histogram
    assert len(hist) == 2 and sum(bar.get_height() for c in hist for bar in c) == len(planted)  # stacked: other + passing
    assert [bar.get_height() for bar in apart[0]] == [2, 3]
    # the bins hold the regions' channels: m = 2/3 in a bin left of the 2/3 edge, m = 3/2 right of the 3/2 edge
    region = lambda bar: "overwrite" if bar.get_x() + bar.get_width() <= 2 / 3 + 1e-9 else "mix" if bar.get_x() + bar.get_width() <= 1.5 + 1e-9 else "skip"  # noqa: E731
    for name, k in zip(("overwrite", "mix", "skip"), expected):
        assert sum(bar.get_height() for c in hist for bar in c if region(bar) == name) == k, name
    assert all(bar.get_x() > plot_spectrum.MIX_CLIP for bar in apart[0])


def test_grids_suggest_commands_that_name_arch_weights_and_results(capsys):
    import plot_grids
    missing = [("center", "2.1", "layer2.1.bn3", 3), ("center", "2.1", "layer2.0", 5), ("natural", "2.1", None, 3)]
    plot_grids.report_missing(arch.net("resnet50"), missing, "resnet50:random:1", {"seed": 2, "steps": 8}, "r50")
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "  python fzs.py --layers layer2.0,layer2.1.bn3 --channels 3,5 --seed 2 --steps 8 --arch resnet50 --weights random:1 --results r50"
    assert out[3] == "  python ablate.py --stages natural --data /path/to/imagenet/val --arch resnet50 --weights random:1 --results r50"


def test_grid_titles_say_how_many_channels_were_measured(tmp_path):
    results = make_results(tmp_path / "results", natural=False)
    crit = json.loads((tmp_path / "results" / "criteria.json").read_text())
    crit["blocks"]["2.1"]["measured"] = list(range(16))
    crit["blocks"]["2.1"]["missing"] = list(range(16, 128))
    (tmp_path / "results" / "criteria.json").write_text(json.dumps(crit))
    r, figs = capture("plot_grids.py", "--results", results, "--only_blocks", "2.1")
    assert r.returncode == 0, r.stderr
    titles = [t.get_text() for t in figs[0].texts]
    assert any("the 3 of 16 measured channels (of 128) passing" in t for t in titles), titles


def test_grids_print_each_fzs_activation_and_mark_dead_units(tmp_path):
    res = make_results(tmp_path / "results", natural=False)
    path = os.path.join(res, "fzs", "layer2.0", "center.pt")
    fz = results.load_pt(path)
    fz["activation"] = torch.tensor([0.5, 1.25, -0.3, 2.0, 0.0, 3.5])  # channel 2 and 4 never fired
    results.save_pt(fz, path)
    r, figs = capture("plot_grids.py", "--results", res, "--only_blocks", "2.1", "--channels", "2.1:1,2,4")
    assert r.returncode == 0, r.stderr
    labels = [t for ax in figs[0].axes for t in ax.texts]
    dead = [t.get_text() for t in labels if t.get_text().startswith("not driven")]
    assert sorted(dead) == ["not driven (-0.3)", "not driven (0)"]
    assert all(t.get_color() == "red" for t in labels if t.get_text().startswith("not driven"))
    assert "1.25" in [t.get_text() for t in labels]


def test_grids_refuse_fzs_of_another_config(tmp_path):
    """Channel FZs (or Post's) made with another seed or step count are not drawn next to the In/Pre center FZs."""
    res = make_results(tmp_path / "results", natural=False)
    path = os.path.join(res, "fzs", "layer2.1.bn2", "channel.pt")
    fz = results.load_pt(path)
    fz["config"]["steps"] = 512
    results.save_pt(fz, path)
    r, _ = capture("plot_grids.py", "--results", res, "--only_blocks", "2.1")
    assert r.returncode != 0 and "fzs/layer2.1.bn2/channel.pt was made under another config" in r.stderr
    assert "steps: 2 vs 512" in r.stderr and "--objectives channel" in r.stderr and "\n" not in r.stderr


def test_spectrum_explains_a_missing_spearman(tmp_path):
    results = make_results(tmp_path / "results", natural=False)
    rows = list(csv.DictReader(open(os.path.join(results, "criteria.csv"))))
    for row in rows:
        row["bn2_abs"] = "1.0"  # every |bn2| equal, as under random weights
    with open(os.path.join(results, "criteria.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r, _ = capture("plot_spectrum.py", "--results", results)
    assert r.returncode == 0, r.stderr
    assert "no rho with bn2_abs for block 2.1: every channel has the same value (random weights?)" in r.stdout
    assert "no rho with conv2_abs_mean" not in r.stdout
    assert "nan" not in r.stdout and "n/a (below)" in r.stdout  # the table says where the reason is


def add_variants(res):
    """Held-out and unscreened files next to make_results' paper files: lower no-scale ratios, known p-values."""
    for block in ("2.1", "3.1"):
        paper = json.loads(open(results.ablation_file(res, block)).read())
        for k, v in enumerate(("heldout", "unscreened")):
            d = json.loads(json.dumps(paper))
            d["variant"], d["config"]["variant"] = v, v
            d["ratio"] = [r - 0.05 * (k + 1) * (i == 0) for i, r in enumerate(paper["ratio"])]
            d["test"] = {"p_below": 0.25 + 0.5 * k, "n_trials": 10, "difference": [0.0] * 5, "ci": [[0, 0]] * 5}
            if v == "heldout":
                d["split"] = {"screen": 6, "report": 6, "fraction": 0.5, "seed": 0}
                d["n_images"] = 6
            results.save_json(d, results.ablation_file(res, block, v))


def test_fig2_draws_the_variants_below_the_papers(tmp_path):
    res = make_results(tmp_path / "results", natural=False)
    add_variants(res)
    r, figs = capture("plot_ratios.py", "--results", res)
    assert r.returncode == 0, r.stderr
    axes = [ax for ax in figs[0].axes if ax.get_title()]
    assert len(axes) == 6  # 3 rows (paper, held-out, unscreened) x 2 blocks
    for ax in axes:
        block = ax.get_title().split(":")[0].split()[-1]
        v = "heldout" if "held-out" in ax.get_title() else "unscreened" if "unscreened" in ax.get_title() else "paper"
        d = json.loads(open(results.ablation_file(res, block, v)).read())
        blue = [line for line in ax.get_lines() if line.get_color() == "tab:blue"]
        assert np.allclose(blue[0].get_ydata(), d["ratio"][0]), (block, v)
        x, y = ax.containers[0].lines[0].get_data()
        assert np.allclose(y, d["ratio"][1:])
        p = [t.get_text().split("\n")[1] for t in ax.get_legend().get_texts() if "p(scaled < none)" in t.get_text()]
        assert (p == [f"p(scaled < none) = {d['test']['p_below']:.3g} (sign flips)"]) if "test" in d else not p
        same = [a for a in axes if a.get_title().split(":")[0] == ax.get_title().split(":")[0]]
        assert all(a.get_ylim() == ax.get_ylim() for a in same)  # one y axis per block: the bias shows
    assert "screened on 6 images, reported on 6" in " ".join(ax.get_title() for ax in axes)
    assert "p (scaled ratios below the no-scale ratio) = 0.7500" in r.stdout


def test_fig2_refuses_variants_of_another_run(tmp_path):
    res = make_results(tmp_path / "results", natural=False)
    add_variants(res)
    path = results.ablation_file(res, "3.1", "unscreened")
    d = json.loads(open(path).read())
    d["config"]["n_trials"] = 100
    results.save_json(d, path)
    r, _ = capture("plot_ratios.py", "--results", res)
    assert r.returncode != 0 and "3.1.unscreened.json was made under another config" in r.stderr and "n_trials" in r.stderr


# ----------------------------------------------------------------------------------------------------
# Layout, read on the artists, at 1, 4 and 128 channels (planted inputs)

COUNTS = (1, 4, 128)


def boxes(fig, texts):
    if not hasattr(fig.canvas, "get_renderer"):  # closed by save_figure: give it a canvas again
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    r = fig.canvas.get_renderer()
    return [t.get_window_extent(r) for t in texts if t.get_visible() and t.get_text().strip()]


def watermark(fig):
    """The large translucent random-weights warning (the stamp's second text)."""
    marks = [t for t in fig.texts if t.get_text().startswith("RANDOM WEIGHTS") and t.get_alpha() is not None]
    assert len(marks) == 1
    return marks[0]


def titles(fig):
    texts = [t for t in fig.texts if not t.get_text().startswith("RANDOM WEIGHTS")]
    texts += [t for ax in fig.axes for t in (ax.title, ax.xaxis.label)]  # y labels run the panels' height: crossed, not hidden
    return texts + [t for t in (fig._suptitle, fig._supxlabel) if t is not None]


def assert_readable(fig):
    """No two tick labels of an axis overlap; the watermark hides no title. The figure is drawn once, then every box is
    read from that drawing (a draw per axis made a 16-panel page cost 34 draws)."""
    boxes(fig, [])  # draws it
    r = fig.canvas.get_renderer()

    def drawn(texts):
        return [t.get_window_extent(r) for t in texts if t.get_visible() and t.get_text().strip()]
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() if t.get_text()]
            lim = sorted(ax.get_xlim() if axis is ax.xaxis else ax.get_ylim())
            shown = [t for t, v in zip(labels, axis.get_ticklocs()) if lim[0] - 1e-9 <= v <= lim[1] + 1e-9]
            bs = drawn(shown)
            for i in range(len(bs)):
                for j in range(i + 1, len(bs)):
                    assert not bs[i].overlaps(bs[j]), (ax.get_title(), shown[i].get_text(), shown[j].get_text())
    for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:  # legends inside the page
        box = legend.get_window_extent(r)
        assert box.x0 >= -2 and box.x1 <= fig.bbox.x1 + 2 and box.y0 >= -2 and box.y1 <= fig.bbox.y1 + 2, box
    mark = drawn([watermark(fig)])[0]
    hidden = [t.get_text() for t, b in zip([t for t in titles(fig) if t.get_visible() and t.get_text().strip()], drawn(titles(fig)))
              if b.overlaps(mark)]
    assert not hidden, hidden


def planted_spectrum(root, n, conv2=0.0021):
    """criteria.csv of blocks 2.1 and 3.1 with n channels each: channel 0 dead (Post(FZ of Pre) = 0: m := 10), channel 1 with
    Post(FZ of In) = 0 (m := 0), the others measured; mean |conv2| within 4% of conv2 (long tick labels: 0.002025,
    0.002050, ... overlapped under matplotlib's default ticks); stability.json in which no channel of 2.1 passes and some of 3.1 do."""
    os.makedirs(root, exist_ok=True)
    g = np.random.default_rng(n)
    with open(os.path.join(root, "criteria.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["block", "channel", "pre_in", "pre_zoom_in", "post_in", "post_pre", "eq1", "eq2", "passes", "mix",
                    "bn2_abs", "conv2_abs_mean"])
        for block in ("2.1", "3.1"):  # two blocks: panels 3.3 inches wide
            for c in range(n):
                post_pre, post_in = (0.0, 1.0) if c == 0 else (1.0, 0.0) if c == 1 else (1.0, float(g.uniform(0.1, 4)))
                m = 10.0 if post_pre <= 0 else 0.0 if post_in <= 0 else post_in / post_pre
                w.writerow([block, c, 0, 0, post_in, post_pre, 0, 0, 0, m, g.uniform(0.05, 1), conv2 * (1 + g.uniform(-0.04, 0.04))])
    results.save_json({"config": {"weights": "random:0"}, "fz_files": {}, "blocks": {}}, os.path.join(root, "criteria.json"))
    results.save_json({"runs": ["a", "b"], "blocks": {"2.1": {"pass_frequency": [0.0] * n, "jaccard": [[1.0, 0.0], [0.0, 1.0]],
                                                           "always": [], "counts": [0, 0]},
                                                    "3.1": {"pass_frequency": [1.0, 0.5] + [0.0] * (n - 2) if n > 1 else [0.5],
                                                            "jaccard": [[1.0, 0.5], [0.5, 1.0]], "always": [0], "counts": [1, 2]}}},
                      os.path.join(root, "stability.json"))
    return root


@pytest.mark.parametrize("n", COUNTS)
def test_spectrum_layout(tmp_path, n):
    res = planted_spectrum(str(tmp_path / "results"), n)
    r, figs = capture("plot_spectrum.py", "--results", res)
    assert r.returncode == 0, r.stderr
    hist, bn2, conv2, freq = figs
    table = plot_spectrum.read_table(net, os.path.join(res, "criteria.csv"))["2.1"]
    for fig in figs:
        assert_readable(fig)
    # mix_hist: whole counts on y; no bin straddles Eq. 2's bounds
    ax = hist.axes[0]
    assert all(float(v).is_integer() for v in ax.get_yticks())
    bars = [p for c in ax.containers for p in c]
    assert all(p.get_linewidth() > 0 for p in bars[:-2])  # bar edges: two adjacent bins read as two bars
    for p in bars:
        for bound in (2 / 3, 3 / 2):
            assert not (p.get_x() + 1e-9 < bound < p.get_x() + p.get_width() - 1e-9), (p.get_x(), p.get_width())
    # mix_vs_*: rho over the measured ratios only; the convention values named in the legend
    for fig, key in ((bn2, "bn2_abs"), (conv2, "conv2_abs_mean")):
        ok = np.arange(n) >= 2
        rho = fig.axes[0].get_title().splitlines()[1]  # above the panel, where it hides no point
        if ok.sum() >= 2:
            assert rho.startswith(f"Spearman \u03c1 = {scipy.stats.spearmanr(table[key][ok], table['mix'][ok]).statistic:+.2f} ")
        assert rho.endswith(f"({int(ok.sum())} measured m)") and not fig.axes[0].texts
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert any(t.startswith("m := 10 by convention where Post(FZ of Pre)") and "not in \u03c1" in t for t in legend), legend
        assert any(t.startswith("m := 0 by convention where Post(FZ of In)") for t in legend), legend
    # pass_frequency: whole channel numbers; an empty panel says why
    empty, full = freq.axes[:2]
    for ax in (empty, full):
        lo, hi = ax.get_xlim()
        ticks = [v for v in ax.get_xticks() if lo <= v <= hi]
        assert ticks and all(float(v).is_integer() for v in ticks), ticks
    assert any("no channel passes" in t.get_text() for t in empty.texts)
    assert not any("no channel passes" in t.get_text() for t in full.texts)


def test_a_stability_report_without_blocks_is_a_note(tmp_path):
    """A stability.json that measured no block (no FZs of them in the runs) draws no empty figure and does not crash."""
    res = planted_spectrum(str(tmp_path / "results"), 4)
    results.save_json({"runs": ["a", "b"], "blocks": {}}, os.path.join(res, "stability.json"))
    r = run_process("plot_spectrum.py", "--results", res)
    assert r.returncode == 0 and "measured no block, so no pass-frequency plot" in r.stdout, r.stderr
    assert os.path.isfile(os.path.join(res, "figures", "mix_hist.png"))
    assert not os.path.exists(os.path.join(res, "figures", "pass_frequency.png"))


@pytest.mark.parametrize("n", COUNTS)
def test_tuning_curve_pages_fit_their_panels(n):
    import plot_tuning
    zoom = [0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.2, 1.4, 1.6, 1.8, 2]
    curves = np.random.default_rng(n).random((n, 3, len(zoom)))
    curves[:, 2, :5] = curves[:, 1, :5]  # Post equals Pre on half the zooms
    pages = plot_tuning.curve_pages("2.1", list(range(n)), list(range(n)), curves, zoom, "FZ-passing channels", "random:0", 16)
    assert len(pages) == -(-n // 16)
    for fig in pages:
        assert_readable(fig)
        panels = [ax for ax in fig.axes if ax.axison]
        cols = min(4, len(panels))
        W, H = fig.get_size_inches()
        assert W <= max(2.5 * cols + 0.6, 4.5) and H <= 2.2 * -(-len(panels) // 4) + 1.9, (W, H)  # sized to its panels
        area = sum(ax.get_position().width * ax.get_position().height for ax in panels)
        assert area > 0.3 * (0.55 if len(panels) == 1 else 1), area  # not a mostly blank canvas
        boxes(fig, [])
        r = fig.canvas.get_renderer()
        lowest = min(ax.get_tightbbox(r).y0 for ax in panels)
        assert (lowest - fig._supxlabel.get_window_extent(r).y1) / fig.dpi < 0.3  # the x label next to the panels
        ylabel = fig._supylabel.get_window_extent(r)  # the shared y label clear of every panel's tick labels
        assert not [t.get_text() for ax in panels for t in ax.get_yticklabels() if t.get_text() and t.get_window_extent(r).overlaps(ylabel)]
        for ax in panels:
            lines = {line.get_label(): line for line in ax.get_lines()}
            pre, post = lines["Pre"], lines["Post"]
            assert pre.get_linestyle() != post.get_linestyle() and pre.get_markersize() > post.get_markersize() + 1
            assert pre.get_markerfacecolor() == "none"  # Post's dots show inside Pre's open squares
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["In", "Pre", "Post"]


@pytest.mark.parametrize("n", COUNTS)
def test_tuning_si_legend_clear_of_the_bars_and_silent_channels_counted(n):
    import plot_tuning
    g = np.random.default_rng(n)
    blocks = ["2.1", "3.1"]
    other = g.uniform(0.4, 0.6, n)  # every bar in the middle, where a default legend would sit
    other[0] = np.nan  # one silent channel: no SI
    fz = g.uniform(0.45, 0.55, max(n // 4, 1))
    fig = plot_tuning.si_figure(blocks, {b: (fz, other, True) for b in blocks}, "random:0")
    assert_readable(fig)
    r = fig.canvas.get_renderer()
    for ax in fig.axes[:2]:
        legend = ax.get_legend()
        box = legend.get_window_extent(r)
        bars = [p.get_window_extent(r) for p in ax.patches if not hasattr(p, "get_height") or p.get_height() > 0]  # + the step outline
        assert bars and not any(box.overlaps(b) for b in bars)
        texts = [t.get_text() for t in legend.get_texts()]
        assert texts[0] == f"other FZ-measured ({n - 1} of {n}; 1 silent, no SI)", texts


def test_tuning_zoom_says_it_jitters():
    import plot_tuning
    zoom = [0.5, 0.7, 1, 1.4, 2]
    k = 20
    pairs = {"2.1": (np.full(k, 1.0), np.full(k, 1.4), np.arange(k) < 3, np.ones(k, bool))}
    fig = plot_tuning.zoom_figure(["2.1"], pairs, zoom, "random:0")
    assert_readable(fig)
    assert "jittered by up to \u00b14%" in fig._suptitle.get_text().replace("\n", " ")
    xs = np.concatenate([c.get_offsets()[:, 0] for c in fig.axes[0].collections])
    assert np.ptp(xs) > 0 and np.all(np.abs(np.log(xs)) <= plot_tuning.JITTER + 1e-12)  # jittered, as said, and no more


@pytest.mark.parametrize("spread", (0.0, 1e-4, 0.05))  # 0: every ratio 1, as under random weights
def test_ratio_ticks_have_at_most_three_decimals(spread):
    import plot_ratios
    g = np.random.default_rng(7)
    found = {}
    for block in ("2.1", "3.1"):
        ratio = (1.0 + spread * g.random(6)).tolist()
        found["paper", block] = {"scales": [0, 10, 20, 30, 40, 50], "ratio": ratio, "sem": [0, *[spread / 5] * 5],
                                 "random_sets": [[1]] * 10, "passing": [1, 2], "n_images": 12}
    fig = plot_ratios.ratios_figure(found, "random:0")
    assert_readable(fig)
    for ax in fig.axes:
        fig.draw_without_rendering()
        labels = [t.get_text().replace("\u2212", "-") for t in ax.yaxis.get_ticklabels() if t.get_text()]
        assert labels and all(len(t.split(".")[1]) <= 3 for t in labels if "." in t), labels
        assert not ax.yaxis.get_offset_text().get_text()  # no '+9.5e-1' offset to add in one's head


@pytest.mark.parametrize("n", (1, 4, 16))  # 16: a full page, as each of a 128-channel block's 8 pages
def test_grid_pages_watermark_hides_no_title(n):
    import plot_grids
    grids = [(f"channel {c}", [[None] * 3 for _ in range(3)]) for c in range(n)]
    fig = plot_grids.draw_page(grids, f"Block 2.1: the {n} of 128 channels passing Eq. 1 and Eq. 2\nIn = ...", "random:0", 4, 2.1)
    assert_readable(fig)
    assert sum(t.get_text().startswith("channel ") for t in fig.texts) == n
