"""arch.py: the block table derived from the model equals ResNet18's typed-in table; the jitter rule reproduces
docs/method.md's table; and for resnet34 and resnet50 (Bottleneck), with non-trivial BatchNorms, every In / Pre / Post
read by the truncated block forward equals forward hooks that clone on the full torchvision model."""

import pytest
import torch

import arch
import results
import stream


def nontrivial_batchnorms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                n = bn.num_features
                bn.weight.copy_(torch.where(torch.rand(n, generator=g) < 0.1, -1.0, 1.0) * (0.5 + 0.5 * torch.rand(n, generator=g)))
                bn.bias.copy_(0.1 * torch.randn(n, generator=g))
                bn.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                bn.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval().requires_grad_(False)


# docs/method.md section 1's table (the paper's 18 layers) and section 2's jitter table, typed in: the facts the derived
# tables must reproduce.
PAPER_TABLE = {
    "1.1": ("layer1.0", "layer1.1.bn2", "layer1.1"),
    "2.0": ("layer2.0.downsample.1", "layer2.0.bn2", "layer2.0"),
    "2.1": ("layer2.0", "layer2.1.bn2", "layer2.1"),
    "3.0": ("layer3.0.downsample.1", "layer3.0.bn2", "layer3.0"),
    "3.1": ("layer3.0", "layer3.1.bn2", "layer3.1"),
    "4.0": ("layer4.0.downsample.1", "layer4.0.bn2", "layer4.0"),
    "4.1": ("layer4.0", "layer4.1.bn2", "layer4.1"),
}
PAPER_JITTER = {"layer1.0": 0, "layer1.1": 0, "layer2.0": 0, "layer2.1": 4, "layer3.0": 4, "layer3.1": 16, "layer4.0": 16, "layer4.1": 16}


def test_resnet18_table_is_the_papers():
    model = arch.build("resnet18")
    table = arch.block_table(model)
    assert table == PAPER_TABLE and list(table) == list(PAPER_TABLE)  # block by block, layer by layer, in order
    assert net.blocks == PAPER_TABLE and len(net.layers) == 18  # what the scripts use by default
    assert net.residual == list(PAPER_JITTER)
    widths = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    assert all(net.channels(layer) == widths[layer[:6]] for layer in net.layers)
    assert arch.units(model) == 4672


def test_jitter_rule_reproduces_the_resnet18_table():
    assert {b: arch.jitter(b) for b in net.residual} == PAPER_JITTER


@pytest.mark.parametrize("name,probed,first", [("resnet34", 15, "1.1"), ("resnet50", 16, "1.0")])
def test_deeper_tables_and_units(name, probed, first):
    model = arch.build(name)
    table = arch.block_table(model)
    assert len(table) == probed and list(table)[0] == first  # Bottleneck: block 1.0 has a downsample, so it is probed
    pre = "bn3" if name == "resnet50" else "bn2"
    assert all(p.endswith(pre) for _, p, _ in table.values())
    if name == "resnet50":
        assert table["1.0"] == ("layer1.0.downsample.1", "layer1.0.bn3", "layer1.0") and 33000 < arch.units(model) < 35000


def hooked(model, layers, x):
    out, handles = {}, []
    for layer in layers:
        handles.append(model.get_submodule(layer).register_forward_hook(
            lambda _m, _i, o, layer=layer: out.__setitem__(layer, o.detach().clone())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return out


@pytest.mark.parametrize("name", ["resnet34", "resnet50"])
def test_truncated_reader_equals_hooks(name):
    model = nontrivial_batchnorms(arch.build(name))
    table = arch.block_table(model)
    x = stream.normalize(torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1)))
    ref = hooked(model, arch.layers_of(table), x)
    got = {}
    with torch.no_grad():
        h = stream.stem(model, x)
        for name_ in arch.residual_blocks(model):
            parts = stream.block_forward(model.get_submodule(name_), h)
            got[name_] = parts["post"]  # every block's output (an In of the next block)
            for block, (In, Pre, Post) in table.items():
                if Post == name_:
                    got[Pre], got[Post] = parts["pre"], parts["post"]
                    if In.endswith("downsample.1"):
                        got[In] = parts["in"]
            h = parts["post"]
    for layer, value in ref.items():
        assert torch.allclose(got[layer], value, rtol=1e-4, atol=1e-4 * float(value.abs().max())), layer
    pre = next(p for _, p, _ in table.values())
    assert (got[pre] < 0).any()  # the true BatchNorm output, not the in-place sum after the ReLU
    net = arch.net(name)  # the scripts' reader: stream.features over the tables use_arch set
    read = stream.features(net, model, x, net.layers)
    assert set(read) == set(ref)
    for layer, value in ref.items():
        assert torch.allclose(read[layer], value, rtol=1e-4, atol=1e-4 * float(value.abs().max())), layer


def test_list_prints_the_table_units_and_cost():
    p = run_in_process("arch.py", "--arch", "resnet50")
    assert p.returncode == 0 and "resnet50: 16 residual blocks, 16 probed" in p.stdout
    assert "layer1.0.downsample.1    layer1.0.bn3" in p.stdout and "34,048 units" in p.stdout and "87.2 M image-steps" in p.stdout
    bad = run_in_process("arch.py", "--arch", "resnet19")
    assert bad.returncode == 1 and "unknown architecture 'resnet19'" in bad.stderr and "Traceback" not in bad.stderr
    assert arch.ARCH == "resnet18"  # the flag configure() rewrote has its value back


# ----------------------------------------------------------------------------------------------------
# ARCH everywhere: weights, ids, the fold, the sweep's default blocks, the cross-architecture figure, and a tiny
# resnet50 run through the whole pipeline, with mixing refused.

import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402

from conftest import run_in_process  # noqa: E402

net = arch.net("resnet18")  # the paper's tables (tests of other architectures make their own)


def one_line_error(p, *words):
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-1500:]
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(w in line for w in words), line
    return line


def test_weights_ids_carry_the_architecture():
    assert results.make_weights_id("resnet18", "IMAGENET1K_V1") == "IMAGENET1K_V1"  # resnet18's ids are unchanged
    assert results.make_weights_id("resnet50", "IMAGENET1K_V2") == "resnet50:IMAGENET1K_V2"
    for weights_id, pair in (("random:3", ("resnet18", "random:3")), ("resnet50:random:0", ("resnet50", "random:0")),
                             ("wide_resnet50_2:file:a.pth:sha256=1f", ("wide_resnet50_2", "file:a.pth:sha256=1f"))):
        assert results.split_weights_id(weights_id) == pair
    assert results.is_random("resnet50:random:0") and not results.is_random("resnet50:IMAGENET1K_V2")
    net = arch.net("resnet50")
    _, weights_id = stream.load_model(net.name, "random:2")
    assert weights_id == "resnet50:random:2"
    assert results.fzs_command(["layer2.1.bn3"], net.name, weights_id, "r50") == "python fzs.py --layers layer2.1.bn3 --arch resnet50 --weights random:2 --results r50"


def test_torchvision_weights_by_name_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # an empty cache: no download is possible here
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    net = arch.net("resnet50")
    for name, file in (("IMAGENET1K_V1", "resnet50-0676ba61.pth"), ("IMAGENET1K_V2", "resnet50-11ad3fa6.pth"),
                       ("DEFAULT", "resnet50-11ad3fa6.pth")):  # DEFAULT is V2 for resnet50
        with pytest.raises(SystemExit) as e:
            stream.load_model(net.name, name)
        msg = str(e.value)
        assert "resnet50 IMAGENET1K_V" in msg and file in msg and os.path.join(str(tmp_path / "hub"), "hub", "checkpoints", file) in msg
    with pytest.raises(SystemExit, match="resnet50 has the torchvision weights IMAGENET1K_V1, IMAGENET1K_V2"):
        stream.load_model(net.name, "IMAGENET1K_V3")


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(arch.build("resnet18").state_dict(), path)
    net = arch.net("resnet50")
    with pytest.raises(SystemExit, match="is not a torchvision resnet50 state_dict .*is --arch right"):
        stream.load_model(net.name, str(path))
    net = arch.net("resnet18")
    assert stream.load_model(net.name, str(path))[1].startswith("file:r18.pth:sha256=")


def test_folding_covers_the_bottleneck():
    import fzs
    net = arch.net("resnet50")
    model = nontrivial_batchnorms(arch.build("resnet50"), seed=3)
    folded = fzs.fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = stream.normalize(torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0)))
    ref, got = stream.features(net, model, x, net.layers), stream.features(net, folded, x, net.layers)
    for name in net.layers:  # Pre (bn3 folded into conv3) included
        assert (got[name] - ref[name]).abs().max() <= 1e-4 * ref[name].abs().max(), name


def test_jitter_rule_extends_and_can_be_overridden():
    import fzs
    assert [arch.jitter(f"layer3.{b}") for b in range(6)] == [4, 16, 16, 16, 16, 16]  # resnet50's stage 3
    net = arch.net("resnet50")
    assert fzs.parse_jitter(net, "layer3.5:8") == {"layer3.5": 8}
    with pytest.raises(SystemExit, match="--jitter: cannot read 'layer3.6:8'"):
        fzs.parse_jitter(net, "layer3.6:8")  # resnet50's stage 3 has blocks 0..5


def planted_criteria(folder, arch_name, percents):
    os.makedirs(folder, exist_ok=True)
    blocks = {b: {"n_channels": 100, "count": int(p), "percent": float(p), "passing": list(range(int(p))), "measured": list(range(100)),
                  "missing": []} for b, p in percents.items()}
    with open(os.path.join(folder, "criteria.json"), "w") as f:
        json.dump({"config": {"arch": arch_name, "weights_id": results.make_weights_id(arch_name, "random:0")}, "blocks": blocks}, f)


def test_sweep_default_blocks(tmp_path):
    import ablate
    net = arch.net("resnet50")
    crit = {"blocks": {"1.0": {"count": 3, "percent": 3.0}, "2.3": {"count": 9, "percent": 9.0}, "3.1": {"count": 12, "percent": 12.0},
                       "3.4": {"count": 9, "percent": 9.0}, "4.2": {"count": 0, "percent": 0.0}}}
    assert ablate.default_blocks(net, crit, [], str(tmp_path)) == ["2.3", "3.1"]  # the two largest fractions, in forward order; a tie goes to the earlier
    assert ablate.default_blocks(net, crit, ["3.4", "1.2"], str(tmp_path)) == ["1.2", "3.4"]  # the blocks named in --sets come first
    with pytest.raises(SystemExit, match="criteria.json is missing"):
        ablate.default_blocks(net, None, [], str(tmp_path))
    with pytest.raises(SystemExit, match="has passing channels"):
        ablate.default_blocks(net, {"blocks": {"4.2": {"count": 0, "percent": 0.0}}}, [], str(tmp_path))
    assert ablate.screening_rules(net, ablate.SCREEN_MARGIN) == {"*": ("<=", 1.0)}  # the paper's 2.1 / 3.1 rules are resnet18's
    assert ablate.screening_rules(net, "2.1:<0") == {"2.1": ("<", 0.0)}  # named by the user: kept
    net = arch.net("resnet18")
    assert ablate.default_blocks(net, crit, [], str(tmp_path)) == ["2.1", "3.1"]  # resnet18: the paper's blocks (docs/method.md section 5)
    assert ablate.screening_rules(net, ablate.SCREEN_MARGIN)["2.1"] == ("<", 0.0)


def test_passing_percent_by_relative_depth_across_architectures(tmp_path):
    r18, r50 = str(tmp_path / "r18"), str(tmp_path / "r50")
    planted_criteria(r18, "resnet18", {"1.1": 9.4, "2.1": 18.0, "4.1": 0.0})
    planted_criteria(r50, "resnet50", {"1.0": 2.0, "2.3": 7.0, "4.2": 1.0})
    p = run_in_process("plot_spectrum.py", "--results", r18, "--across", f"{r18},{r50}")
    assert p.returncode == 0, p.stderr[-1500:]
    assert os.path.isfile(os.path.join(r18, "figures", "across_archs.png"))
    import plot_spectrum
    runs = plot_spectrum.passing_by_depth([r18, r50])
    fig = plot_spectrum.across_architectures(runs)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2  # one line per architecture
    assert np.allclose(lines[0].get_xdata(), [2 / 8, 4 / 8, 8 / 8]) and np.allclose(lines[0].get_ydata(), [9.4, 18.0, 0.0])
    assert np.allclose(lines[1].get_xdata(), [1 / 16, 7 / 16, 16 / 16]) and np.allclose(lines[1].get_ydata(), [2.0, 7.0, 1.0])
    assert "RANDOM WEIGHTS" in " ".join(t.get_text() for t in fig.texts)


def test_tiny_resnet50_end_to_end_and_mixing_refused(tmp_path):
    """fzs.py, criteria.py, both stages of ablate.py, the plots, on a resnet50 with non-trivial BatchNorms (a
    checkpoint) and generated images labelled with its own predictions; then every script refuses to mix it with
    resnet18."""
    ck, res, data = tmp_path / "r50.pth", tmp_path / "r50", tmp_path / "fake"
    torch.save(nontrivial_batchnorms(arch.build("resnet50"), seed=4).state_dict(), ck)
    a50 = ["--arch", "resnet50", "--weights", ck, "--results", res]
    p = run_in_process("fzs.py", *a50, "--layers", "2.1", "--channels", "0:4", "--steps", "2", "--batch", "4", "--png", "false")
    assert p.returncode == 0, p.stderr[-1500:]
    for layer, jitter in (("layer2.0", 0), ("layer2.1.bn3", 4), ("layer2.1", 4)):  # In, Pre (bn3) and Post of resnet50's 2.1
        fz = torch.load(res / "fzs" / layer / "center.pt", weights_only=False)
        assert fz["config"]["arch"] == "resnet50" and fz["config"]["weights"].startswith("resnet50:file:r50.pth")
        assert fz["images"].shape == (4, 3, 224, 224) and fz["config"]["jitter"] == jitter  # by the block the layer is in
    p = run_in_process("criteria.py", *a50, "--blocks", "2.1", "--batch", "4")
    assert p.returncode == 0, p.stderr[-1500:]
    assert "no published reference exists for weights resnet50:file:r50.pth" in p.stdout
    crit = json.load(open(res / "criteria.json"))
    assert crit["config"]["arch"] == "resnet50" and crit["blocks"]["2.1"]["n_channels"] == 512 and crit["blocks"]["2.1"]["measured"] == list(range(4))
    assert "paper_overlap" not in crit["blocks"]["2.1"]
    p = run_in_process("ablate.py", *a50, "--data", data, "--fake", "6", "--workers", "0", "--batch", "6", "--sets", "2.1:0:3",
            "--scales", "20", "--n_trials", "2", "--screen_draws", "2", "--screen_cap", "20", "--screen_margin", "*:<=100",
            "--bootstrap", "10", "--permutations", "4", "--variants", "paper")
    assert p.returncode == 0, p.stderr[-1500:]
    assert "sweep: blocks 2.1" in p.stdout  # no --ablate_blocks: the blocks named in --sets
    natural = torch.load(res / "natural" / "summary.pt", weights_only=False)
    assert natural["config"]["arch"] == "resnet50" and natural["mean"]["layer3.5"].shape == (1024,)
    assert np.load(res / "natural" / "layer4.2.npy").shape == (6, 2048)
    ab = json.load(open(res / "ablation" / "2.1.json"))
    assert ab["config"]["arch"] == "resnet50" and ab["config"]["passing"] == [0, 1, 2]
    assert ab["accuracy"]["none"][0] == 1.0  # the generated images are labelled with this model's own predictions
    p = run_in_process("tuning.py", *a50, "--tune_blocks", "2.1", "--top_k", "4", "--sample", "4", "--fractions", "1,0.5", "--workers", "0",
            "--permutations", "10")
    assert p.returncode == 0, p.stderr[-1500:]
    tuning = json.load(open(res / "tuning.json"))
    assert tuning["config"]["arch"] == "resnet50" and tuning["blocks"]["2.1"]["n_channels"] == 512
    for script, extra in (("plot_ratios.py", []), ("plot_spectrum.py", []), ("plot_grids.py", ["--channels", "2.1:0,1"]),
                          ("plot_tuning.py", [])):
        p = run_in_process(script, "--arch", "resnet50", "--results", res, *extra)
        assert p.returncode == 0, (script, p.stderr[-1500:])
    assert os.path.isfile(res / "figures" / "ratios.png") and os.path.isfile(res / "figures" / "mix_hist.png")

    # Mixing is refused: each script, run as resnet18 on the resnet50 results, stops with one line naming the file.
    a18 = ["--weights", "random", "--results", res]
    for script, extra in (("fzs.py", ["--layers", "2.1", "--channels", "0:2", "--steps", "1"]), ("criteria.py", ["--blocks", "2.1"]),
                          ("ablate.py", ["--stages", "sweep", "--data", data, "--workers", "0", "--sets", "2.1:0:3"])):
        one_line_error(run_in_process(script, *a18, *extra), "was made with --arch resnet50", "--arch resnet18")
    one_line_error(run_in_process("tuning.py", *a18), "was made with --arch resnet50")
    for script in ("plot_ratios.py", "plot_spectrum.py", "plot_grids.py", "plot_tuning.py"):
        one_line_error(run_in_process(script, "--results", res), "was made with --arch resnet50")
    p = run_in_process("fzs.py", "--arch", "resnet34", "--weights", "random", "--results", res, "--layers", "2.1", "--channels", "0:2", "--steps", "1")
    one_line_error(p, "was made with --arch resnet50", "this run is --arch resnet34")
