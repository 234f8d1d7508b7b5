"""The shared module: layer table, center index, the truncated reader against plain forward hooks, weights
loading errors and the command-line constants (docs/method.md section 1)."""

import os
import urllib.error

import pytest
import torch
import torchvision

import arch
import cli
import results
import stream
from conftest import relu_inputs

net = arch.net("resnet18")  # the paper's tables (tests of other architectures make their own)


@pytest.fixture(scope="module")
def model(fixture_model):
    """The fixture model (conftest.py): non-trivial BatchNorms, so a reader that skips or misplaces one is caught."""
    return fixture_model


def test_layer_table_is_methods():
    assert net.layers == [
        "layer1.0", "layer1.1.bn2", "layer1.1",
        "layer2.0.downsample.1", "layer2.0.bn2", "layer2.0", "layer2.1.bn2", "layer2.1",
        "layer3.0.downsample.1", "layer3.0.bn2", "layer3.0", "layer3.1.bn2", "layer3.1",
        "layer4.0.downsample.1", "layer4.0.bn2", "layer4.0", "layer4.1.bn2", "layer4.1"]
    assert sum(net.channels(n) for n in net.layers) == 4672
    # In of X.1 is the output of X.0; In of X.0 (X > 1) is the downsample's BatchNorm; In of 1.1 is layer1.0.
    assert net.blocks["2.1"] == ("layer2.0", "layer2.1.bn2", "layer2.1")
    assert net.blocks["3.0"] == ("layer3.0.downsample.1", "layer3.0.bn2", "layer3.0")
    assert net.blocks["1.1"][0] == "layer1.0"
    assert net.where("layer2.0.downsample.1") == (2, "in")
    assert net.where("layer3.1.bn2") == (5, "pre")
    assert net.where("layer4.1") == (7, "post")


@pytest.mark.parametrize("bad", ["layer2.1.downsample.1", "layer5.0", "layer1.0.bn2", "conv1", "layer2.1.bn1"])
def test_unknown_layer_is_one_line_error(bad):
    with pytest.raises(SystemExit, match="unknown layer"):
        net.where(bad)


def test_center_index_matches_lucent():
    from lucent.optvis.objectives import _extract_act_pos
    for h in (7, 14, 28, 56, 5, 6):
        fmap = torch.randn(2, 3, h, h)
        i = h // 2  # for even sizes the bottom-right of the middle 2x2
        assert torch.equal(stream.center(fmap), fmap[:, :, i, i])
        assert torch.equal(stream.center(fmap), _extract_act_pos(fmap)[:, :, 0, 0])
    fmap = torch.zeros(1, 1, 4, 4)
    fmap[0, 0, 2, 2] = 1.0
    assert stream.center(fmap).item() == 1.0


def hooked(model, x, copy=True):
    """The independent slow path: the full torchvision forward with plain hooks on every layer."""
    out, handles = {}, []
    for name in net.layers:
        def hook(module, inp, output, name=name):
            out[name] = output.detach().clone() if copy else output
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return out


def test_truncated_reader_equals_forward_hooks(model):
    x = stream.normalize(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    ref = hooked(model, x)
    for block, names in net.blocks.items():
        got = stream.features(net, model, x, list(names))
        for name in names:
            assert torch.allclose(got[name], ref[name], atol=1e-5, rtol=1e-5), (block, name)
    # one pass for a set of layers that stops at the deepest one asked for
    centers = stream.read_center(net, model, x, ["layer1.0", "layer3.0.downsample.1", "layer2.1.bn2"])
    for name, c in centers.items():
        assert c.shape == (2, net.channels(name))
        assert torch.allclose(c, stream.center(ref[name]), atol=1e-5)


def test_pre_is_bn2_not_the_post_sum(model):
    x = stream.normalize(torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)))
    referenced = hooked(model, x, copy=False)   # what lucent's hooks hold: the tensor after in-place add/ReLU
    copied = hooked(model, x, copy=True)        # bn2's true output
    for block, (_, pre, post) in net.blocks.items():
        ours = stream.features(net, model, x, [pre])[pre]
        assert torch.allclose(ours, copied[pre], atol=1e-5)
        both = stream.features(net, model, x, [pre, post])  # Pre read in the same pass as Post: not overwritten by the sum
        assert torch.allclose(both[pre], copied[pre], atol=1e-5) and torch.allclose(both[post], copied[post], atol=1e-5)
        assert torch.equal(referenced[pre], referenced[post])  # the aliasing docs/method.md warns about
        assert not torch.allclose(ours, copied[post], atol=1e-3)
        assert (ours < 0).any()  # Pre can be negative; Post cannot


def test_released_reading_is_the_sum_before_the_relu(model):
    """--post_as_released: every block output (a Post, and the In of an x.1 block) is the residual sum before the final
    ReLU; a downsample In and a Pre are what they were."""
    x = stream.normalize(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2)))
    sums, after = relu_inputs(model, x), hooked(model, x)
    for block, names in net.blocks.items():
        got = stream.features(net, model, x, list(names), post_as_released=True)
        centers = stream.read_center(net, model, x, list(names), post_as_released=True)
        for name in names:
            role = net.where(name)[1]
            want = sums[name] if role == "post" else after[name]
            assert torch.allclose(got[name], want, atol=1e-5, rtol=1e-5), (block, name)
            assert torch.allclose(stream.truncated(net, model, name, True)(x), want, atol=1e-5, rtol=1e-5), (block, name)
            assert torch.allclose(centers[name], stream.center(want), atol=1e-5), (block, name)
            if role == "post":  # the option changes something: the sum has negative values that the ReLU clips
                assert (want < 0).any() and torch.allclose(torch.relu(want), after[name], atol=1e-5)
    assert stream.part_of(net, "layer2.0", True) == (2, "sum") and stream.part_of(net, "layer2.0") == (2, "post")
    assert stream.part_of(net, "layer2.0.downsample.1", True) == (2, "in") and stream.part_of(net, "layer2.1.bn2", True) == (3, "pre")


def test_random_weights_are_deterministic_and_labelled():
    a, wid = stream.load_model(net.name, "random")
    b, _ = stream.load_model(net.name, "random")
    c, wid3 = stream.load_model(net.name, "random:3")
    assert wid == "random:0" and wid3 == "random:3"
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def test_checkpoint_path_and_bad_files(tmp_path):
    src = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    model, wid = stream.load_model(net.name, str(path))
    assert torch.equal(model.fc.weight, src.fc.weight) and wid.startswith("file:resnet18.pth:sha256=")
    with pytest.raises(SystemExit, match="no such file"):
        stream.load_model(net.name, str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot read"):
        stream.load_model(net.name, str(tmp_path / "junk.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(SystemExit, match="not a torchvision resnet18 state_dict"):
        stream.load_model(net.name, str(tmp_path / "other.pth"))


def test_offline_imagenet_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(SystemExit) as e:
        stream.load_model(net.name, "IMAGENET1K_V1")
    msg = str(e.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "--weights" in msg and "\n" not in msg


def test_zoom_is_center_crop_half_then_bilinear_resize():
    x = torch.zeros(1, 3, 224, 224)
    x[..., 56:168, 56:168] = 1.0  # the central 112 x 112 square
    z = stream.zoom(x)
    assert z.shape == (1, 3, 224, 224) and torch.all(z == 1.0)
    ramp = torch.arange(224.0).view(1, 1, 1, 224).expand(1, 3, 224, 224)
    z = stream.zoom(ramp)
    expect = torch.nn.functional.interpolate(ramp[..., 56:168, 56:168], size=(224, 224), mode="bilinear", align_corners=False)
    assert torch.equal(z, expect) and z.min() >= 56 and z.max() <= 167


def test_parse_channels_and_layers():
    assert arch.parse_channels(":", 64) == list(range(64))
    assert arch.parse_channels("0:4,10,60:64:2", 64) == [0, 1, 2, 3, 10, 60, 62]
    for bad in ("64", "0:65", "a", "5:2"):
        with pytest.raises(SystemExit):
            arch.parse_channels(bad, 64)
    assert net.parse_layers("2.1,layer1.0") == ["layer1.0", "layer2.0", "layer2.1.bn2", "layer2.1"]
    assert net.parse_layers("all") == net.layers


def test_configure_overrides_constants(tmp_path):
    script = tmp_path / "script.py"
    script.write_text('STEPS = 10  # steps\nNAMES = ["a"]  # names\nFLAG = False  # flag\nTABLE = {"x": 1, "y": 2}  # table\nRATE = 0.5  # rate\n'
                      '# ---- end of flags\nFIXED = (1, 2)  # a constant below the line: no flag\n')
    g = {"__file__": str(script), "STEPS": 10, "NAMES": ["a"], "FLAG": False, "TABLE": {"x": 1, "y": 2}, "RATE": 0.5}
    cfg = cli.configure(g, ["--steps", "3", "--names", "b,c", "--flag", "true", "--table", "y:5", "--rate", "1e-3"])
    assert cfg == {"STEPS": 3, "NAMES": ["b", "c"], "FLAG": True, "TABLE": {"x": 1, "y": 5}, "RATE": 1e-3}
    with pytest.raises(SystemExit):
        cli.configure(dict(g), ["--steps", "many"])
    assert "FIXED" not in cli.flag_names(str(script))
    with pytest.raises(SystemExit):
        cli.configure(dict(g, FIXED=(1, 2)), ["--fixed", "3"])


def test_atomic_save_leaves_no_temp_files(tmp_path):
    path = tmp_path / "a" / "x.pt"
    results.save_pt({"v": 1}, str(path))
    results.save_json({"v": 2}, str(tmp_path / "x.json"))
    assert torch.load(path)["v"] == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "x.json", "x.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_the_weights_to_load_come_from_the_inputs():
    """results.weights_to_load, for every script that reads result files: an explicit --weights wins; else the one id the
    inputs record, as a --weights value (without its architecture; 'random' is random:0); none recorded: the default;
    inputs that disagree, or a checkpoint (which its id cannot load), end in one line."""
    assert results.weights_to_load("random", [{"weights": "random:0"}]) == "random"
    assert results.weights_to_load("IMAGENET1K_V2", [{"weights": "resnet50:IMAGENET1K_V2"}]) == "IMAGENET1K_V2"
    assert results.weights_to_load("/no/such/ckpt.pth", [{"weights": "random:0"}]) == "/no/such/ckpt.pth"  # told once loaded
    with pytest.raises(SystemExit, match="made with weights random:0, not --weights IMAGENET1K_V1: leave --weights out"):
        results.weights_to_load("IMAGENET1K_V1", [{"weights": "random:0"}])
    with pytest.raises(SystemExit, match="not --weights random:02"):
        results.weights_to_load("random:02", [{"weights": "random:0"}])
    assert results.weights_to_load("random:00", [{"weights": "random:0"}]) == "random:00"
    assert results.weights_to_load("", [{"weights": "random"}, {"weights_id": "random:0"}]) == "random:0"
    assert results.weights_to_load("", [{"runs": {"a": {"weights": "random:3"}}}]) == "random:3"
    assert results.weights_to_load("", [{"weights": "resnet50:IMAGENET1K_V2"}]) == "IMAGENET1K_V2"
    assert results.weights_to_load("", []) == results.weights_to_load("", [{"steps": 16}]) == "IMAGENET1K_V1"
    with pytest.raises(SystemExit, match="different weights"):
        results.weights_to_load("", [{"weights": "random:0"}, {"weights_id": "random:1"}])
    with pytest.raises(SystemExit, match="pass it with --weights /path/to/ckpt.pth$"):
        results.weights_to_load("", [{"weights": "file:ckpt.pth:sha256=ab12"}])


def test_shared_readers_refuse_other_weights_and_architectures(tmp_path):
    """results.read_criteria / read_summary: one check for every script. A file that recorded 'random' was made with
    random:0 (as load_model reads it); other weights or another architecture end in one line naming the file."""
    r18, r50 = arch.net("resnet18"), arch.net("resnet50")
    assert results.read_criteria(str(tmp_path), r18) is None
    with pytest.raises(SystemExit, match=f"run python criteria.py --results {tmp_path} first"):
        results.read_criteria(str(tmp_path), r18, required="the sweep needs passing sets")
    results.save_json({"config": {"arch": "resnet18", "weights_id": "random"}, "blocks": {}}, results.criteria_file(str(tmp_path)))
    assert results.read_criteria(str(tmp_path), r18, "random:0")["blocks"] == {}
    with pytest.raises(SystemExit, match="was made with weights 'random'"):
        results.read_criteria(str(tmp_path), r18, "IMAGENET1K_V1")
    with pytest.raises(SystemExit, match="--arch resnet18"):
        results.read_criteria(str(tmp_path), r50)
    assert results.read_summary(str(tmp_path), r18, required=False) is None
    results.save_pt({"config": {"arch": "resnet18", "weights": "random:1"}}, results.natural_summary(str(tmp_path)))
    assert results.read_summary(str(tmp_path), r18, "random:1")["config"]["weights"] == "random:1"
    with pytest.raises(SystemExit, match="random:1"):
        results.read_summary(str(tmp_path), r18, "random:0")
