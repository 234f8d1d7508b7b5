"""CORnet-S (--arch cornet_s, issue 26): the module names and shapes against the issue's list, the official checkpoint's
format loading strictly, and every step's In / Pre / Post against two independent slow paths (a forward written out in
this file from the issue's description, and forward hooks with clone on the full model, counting calls), with the
stride switch at t = 0 and the truncated forward."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import arch
import stream
from conftest import build_cornet_fixture, official_format, run_in_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
net = arch.net("cornet_s")

# The issue's description, typed in: (area, in, out, steps); the branch widens out -> 4 out -> out.
AREAS = [("V2", 64, 128, 2), ("V4", 128, 256, 4), ("IT", 256, 512, 2)]


def expected_shapes():
    """{key: shape} of the official checkpoint (after 'module.'), from the issue's text alone."""
    def bn(name, n):
        return {f"{name}.weight": (n,), f"{name}.bias": (n,), f"{name}.running_mean": (n,), f"{name}.running_var": (n,),
                f"{name}.num_batches_tracked": ()}
    out = {"V1.conv1.weight": (64, 3, 7, 7), **bn("V1.norm1", 64), "V1.conv2.weight": (64, 64, 3, 3), **bn("V1.norm2", 64)}
    for area, cin, cout, steps in AREAS:
        w = 4 * cout
        out |= {f"{area}.conv_input.weight": (cout, cin, 1, 1), f"{area}.skip.weight": (cout, cout, 1, 1),
                **bn(f"{area}.norm_skip", cout), f"{area}.conv1.weight": (w, cout, 1, 1),
                f"{area}.conv2.weight": (w, w, 3, 3), f"{area}.conv3.weight": (cout, w, 1, 1)}
        for t in range(steps):
            out |= {**bn(f"{area}.norm1_{t}", w), **bn(f"{area}.norm2_{t}", w), **bn(f"{area}.norm3_{t}", cout)}
    out |= {"decoder.linear.weight": (1000, 512), "decoder.linear.bias": (1000,)}
    return out


def test_key_names_and_shapes_are_the_issues():
    sd = arch.build("cornet_s").state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes()
    assert "V2.norm1_0.weight" in sd and "V4.norm3_3.running_var" in sd and "V4.norm3_4.weight" not in sd


@pytest.fixture(scope="module")
def model():
    return build_cornet_fixture()


def test_fixture_has_teeth(model):
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert ((bn.weight - 1).abs() > 1e-2).any() and (bn.running_mean.abs() > 1e-3).any()
    v4 = model.V4
    assert not torch.allclose(v4.norm3_0.running_mean, v4.norm3_1.running_mean)  # each step's BatchNorm is its own


def test_official_format_loads_strictly_and_a_wrong_one_is_one_line(tmp_path, model):
    good = tmp_path / "cornet_s-fixture.pth"
    torch.save(official_format(model.state_dict()), good)
    loaded, weights_id = stream.load_model("cornet_s", str(good))
    assert weights_id.startswith("cornet_s:file:cornet_s-fixture.pth:sha256=")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    old = tmp_path / "old.pth"  # saved before num_batches_tracked existed: still loads
    torch.save(official_format({k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}), old)
    assert torch.equal(stream.load_model("cornet_s", str(old))[0].V4.norm3_2.weight, model.V4.norm3_2.weight)
    bad = tmp_path / "bad.pth"  # one BatchNorm for every step: the shared-BatchNorm layout is not CORnet-S's
    sd = {k.replace("norm1_1", "norm1"): v for k, v in model.state_dict().items()}
    torch.save(official_format(sd), bad)
    with pytest.raises(SystemExit, match=r"is not a cornet_s state_dict \(missing \['IT.norm1_1.bias'"):
        stream.load_model("cornet_s", str(bad))
    p = subprocess.run([sys.executable, "fzs.py", "--arch", "cornet_s", "--weights", str(bad), "--layers", "V2.0",
                        "--channels", "0:1", "--steps", "1", "--results", str(tmp_path / "r")],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr[-1500:]
    with pytest.raises(SystemExit, match="is not a torchvision resnet18 state_dict"):
        stream.load_model("resnet18", str(good))


def test_offline_without_the_file_names_it_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))

    def offline(*a, **k):
        raise OSError("offline")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    for name in ("IMAGENET1K_V1", "DEFAULT"):
        with pytest.raises(SystemExit) as e:
            stream.load_model("cornet_s", name)
        msg = str(e.value)
        assert "cornet_s-1d3f7974.pth" in msg and os.path.join(str(tmp_path / "hub"), "hub", "checkpoints", "cornet_s-1d3f7974.pth") in msg
        assert "\n" not in msg
    with pytest.raises(SystemExit, match="cornet_s has the weights IMAGENET1K_V1"):
        stream.load_model("cornet_s", "IMAGENET1K_V2")
    m, weights_id = stream.load_model("cornet_s", "random:3")
    assert weights_id == "cornet_s:random:3" and not m.training
    fake = official_format(m.state_dict())  # online: the file is downloaded into the cache once, then read from there
    fetched = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, **k: (fetched.append(url), torch.save(fake, dst)))
    for _ in range(2):
        got, weights_id = stream.load_model("cornet_s", "DEFAULT")
        assert weights_id == "cornet_s:IMAGENET1K_V1" and torch.equal(got.IT.norm3_1.running_var, m.IT.norm3_1.running_var)
    assert fetched == [arch.CORNET_URL]
    assert torch.equal(m.V4.conv2.weight, stream.load_model("cornet_s", "random:3")[0].V4.conv2.weight)


def by_hand(model, x):
    """CORnet-S written out from the issue's description, with the model's parameters: {(block, role): map}, logits."""
    def bn(m, h):
        return F.batch_norm(h, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
    v1 = model.V1
    h = F.relu(bn(v1.norm1, F.conv2d(x, v1.conv1.weight, stride=2, padding=3)))
    h = F.max_pool2d(h, 3, 2, 1)
    h = F.relu(bn(v1.norm2, F.conv2d(h, v1.conv2.weight, padding=1)))
    out = {}
    for area, _, _, steps in AREAS:
        m = getattr(model, area)
        x_ = F.conv2d(h, m.conv_input.weight)
        for t in range(steps):
            skip = bn(m.norm_skip, F.conv2d(x_, m.skip.weight, stride=2)) if t == 0 else x_
            b = F.relu(bn(getattr(m, f"norm1_{t}"), F.conv2d(x_, m.conv1.weight)))
            b = F.relu(bn(getattr(m, f"norm2_{t}"), F.conv2d(b, m.conv2.weight, stride=2 if t == 0 else 1, padding=1)))
            b = bn(getattr(m, f"norm3_{t}"), F.conv2d(b, m.conv3.weight))
            x_ = F.relu(b + skip)
            out[f"{area}.{t}", "in"], out[f"{area}.{t}", "pre"], out[f"{area}.{t}", "post"] = skip, b, x_
        h = x_
    return out, F.linear(h.mean((2, 3)), model.decoder.linear.weight, model.decoder.linear.bias)


def hooked(model, x):
    """Forward hooks with clone on the full model, counting calls: norm_skip (In_0, called once), norm3_t (Pre_t, once:
    each step has its own) and nonlin3 (called once per step: call k is Post_k). {(block, role): map}."""
    out, handles, calls = {}, [], {}
    for area, _, _, steps in AREAS:
        m = getattr(model, area)
        handles.append(m.norm_skip.register_forward_hook(lambda _m, _i, o, a=area: out.__setitem__((f"{a}.0", "in"), o.clone())))
        for t in range(steps):
            handles.append(getattr(m, f"norm3_{t}").register_forward_hook(
                lambda _m, _i, o, a=area, t=t: out.__setitem__((f"{a}.{t}", "pre"), o.clone())))

        def post(_m, _i, o, a=area):
            k = calls[a] = calls.get(a, -1) + 1
            out[f"{a}.{k}", "post"] = o.clone()
            out[f"{a}.{k + 1}", "in"] = o.clone()  # In_t for t >= 1 is Post_{t-1}
        handles.append(m.nonlin3.register_forward_hook(post))
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()
    assert calls == {a: s - 1 for a, _, _, s in AREAS}  # nonlin3 ran once per step
    return out, logits


def close(a, b):
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_in_pre_post_of_every_step_equal_the_slow_paths(model):
    x = stream.normalize(torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        ref, logits = by_hand(model, x)
        hooks, full = hooked(model, x)
        got = stream.features(net, model, x, net.layers)
    assert close(full, logits)
    assert set(net.blocks) == {b for b, _ in ref} and len(net.layers) == 19
    for block, names in net.blocks.items():
        for role, layer in zip(arch.ROLES, names):
            assert close(got[layer], ref[block, role]), (block, role, layer)
            assert close(got[layer], hooks[block, role]), (block, role, layer)
            truncated = stream.truncated(net, model, layer)
            with torch.no_grad():
                assert torch.equal(truncated(x), got[layer]), layer
    assert (got["V4.norm3_2"] < 0).any()  # Pre is the BatchNorm output before the sum and the ReLU
    assert not close(got["V4.output_1"], got["V4.norm3_1"])  # In_2 (Post_1) is not Pre_1


def test_stride_switch_at_step_zero(model):
    x = stream.normalize(torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        got = stream.features(net, model, x, net.layers)
        v1 = model.V1(x)
    assert v1.shape[-1] == 32
    for area, size in (("V2", 16), ("V4", 8), ("IT", 4)):  # halved at t = 0 (skip and 3x3 at stride 2), kept after
        assert all(v.shape[-1] == size for k, v in got.items() if k.startswith(area + ".")), area
    # the 3x3 at t >= 1 is stride 1 with padding 1; at t = 0 stride 2: conv2 stays a stride-1 module (the switch is per call)
    assert model.V4.conv2.stride == (1, 1)
    h = model.V4.conv_input(got["V2.output_1"])
    step0 = arch.cornet_step(model.V4, h, 0)
    assert step0["pre"].shape[-1] == h.shape[-1] // 2 and torch.equal(step0["post"], got["V4.output_0"])


def test_truncated_forward_runs_nothing_after_its_unit(model):
    calls = {}
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
               for n, m in model.named_modules() if n and not list(m.children())]
    x = stream.normalize(torch.rand(1, 3, 64, 64))
    try:
        with torch.no_grad():
            stream.truncated(net, model, "V4.norm3_1")(x)
    finally:
        for h in handles:
            h.remove()
    assert calls["V4.norm3_1"] == 1 and calls["V4.norm3_0"] == 1 and calls["V4.nonlin3"] == 1  # Post_0 only: Pre_1 is before the sum
    assert not any(n.startswith(("IT.", "decoder.")) or n.endswith(("norm1_2", "norm3_2", "norm1_3")) for n in calls), sorted(calls)


def test_names_table_and_list():
    assert net.blocks["V4.0"] == ("V4.norm_skip", "V4.norm3_0", "V4.output_0")
    assert net.blocks["V4.2"] == ("V4.output_1", "V4.norm3_2", "V4.output_2")  # In_t = Post_{t-1}
    assert net.residual == ["V2.0", "V2.1", "V4.0", "V4.1", "V4.2", "V4.3", "IT.0", "IT.1"]
    assert net.where("V4.norm_skip") == (2, "in") and net.where("V4.output_1") == (3, "post") and net.block_of("V4.norm3_2") == "V4.2"
    assert net.post_of("V4.norm3_2") == "V4.output_2" and net.pre_modules("IT.norm3_1") == ("IT.norm3_1", "IT.conv3")
    assert net.parse_layers("V4.2") == ["V4.output_1", "V4.norm3_2", "V4.output_2"]
    assert net.parse_layers("IT.output_1,V2.norm_skip") == ["V2.norm_skip", "IT.output_1"]
    assert sum(net.channels(layer) for layer in net.layers) == 5 * 128 + 9 * 256 + 5 * 512
    assert [arch.jitter(b) for b in net.residual] == [0, 0, 4, 4, 4, 4, 16, 16]
    import plot_spectrum
    assert plot_spectrum.relative_depth("cornet_s", "V4.1") == 4 / 8  # the across-architectures figure places its steps
    with pytest.raises(SystemExit, match="unknown layer 'V4.norm3_4' for cornet_s"):
        net.where("V4.norm3_4")
    p = subprocess.run([sys.executable, "arch.py", "--arch", "cornet_s"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "cornet_s: 8 time steps" in p.stdout and "19 layers, 5,504 units" in p.stdout
    assert "V4.2  V4.output_1              V4.norm3_2       V4.output_2    256   jitter 4" in p.stdout


# ----------------------------------------------------------------------------------------------------
# fzs.py and criteria.py with --arch cornet_s: the engine equals lucent's render_vis on the same module, and the
# fixture (non-trivial BatchNorms, official checkpoint format) goes through both scripts; other architectures refused.

import csv  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402

import cli  # noqa: E402
import fzs  # noqa: E402


def run(*argv):
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="2"), timeout=900)


def one_line_error(p, *words):
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-1500:]
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(w in line for w in words), line


def live_channel(model, layer, seed):
    _, image = fzs.fft_image([seed], 224, torch.device("cpu"))
    with torch.no_grad():
        acts = stream.read_center(net, model, stream.normalize(image()), [layer])[layer][0]
    return int((acts > 0.05).nonzero()[0])


# lucent names a module by its path with '_'; a hook keeps the module's last call, so a Post_t is lucent's nonlin3 only
# at an area's last step (IT.output_1); Pre_t (norm3_t) and In_0 (norm_skip) are called once per forward
@pytest.mark.cpu_exact
@pytest.mark.parametrize("layer,module", [("V4.norm3_1", "V4_norm3_1"), ("V2.norm_skip", "V2_norm_skip"), ("IT.output_1", "IT_nonlin3")])
def test_engine_equals_lucent_render_vis_on_cornet(model, layer, module):
    from lucent.optvis import objectives, param, render, transform
    j, steps, seed = arch.jitter(net.block_of(layer)), 4, 5
    c = live_channel(model, layer, seed)
    cfg = dict(steps=steps, lr=0.05, jitter=j, scales=fzs.SCALES, angles=fzs.ANGLES, size=224, pre_as_released=False)
    cli.use_device(torch.device("cpu"), "fp32")
    ours = fzs.render(net, model, layer, [c], "center", cfg, [seed], seed, device=torch.device("cpu"), amp=None)
    start = fzs.render(net, model, layer, [c], "center", {**cfg, "steps": 0}, [seed], seed, device=torch.device("cpu"), amp=None)
    assert (ours.float() - start.float()).abs().mean() > 1.0  # the image moved
    full = arch.build("cornet_s")
    full.load_state_dict(model.state_dict())
    ts = ([transform.random_scale(fzs.SCALES), transform.random_rotate(fzs.ANGLES)] if j == 0 else
          [transform.pad(j), transform.jitter(j), transform.random_scale(fzs.SCALES), transform.random_rotate(fzs.ANGLES),
           transform.jitter(j // 2), __import__("torchvision").transforms.CenterCrop(224)])
    np.random.seed(seed)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = render.render_vis(full.eval(), objectives.neuron(module, c), param_f=lambda: param.image(224),
                                optimizer=lambda p: torch.optim.Adam(p, lr=0.05), transforms=ts, thresholds=(steps,),
                                show_image=False, progress=False)
    theirs = (torch.from_numpy(out[-1]).permute(0, 3, 1, 2) * 255).to(torch.uint8)
    assert torch.equal(ours, theirs)


def center_of(fmap, c):
    return float(fmap[0, c, fmap.shape[2] // 2, fmap.shape[3] // 2])


def test_fixture_through_fzs_and_criteria_and_other_architectures_refused(tmp_path, cornet_weights):
    res = tmp_path / "cornet"
    a = ["--arch", "cornet_s", "--weights", cornet_weights, "--results", res]
    p = run("fzs.py", *a, "--layers", "V2.0,V4.1", "--channels", "0:3", "--steps", "2", "--batch", "3", "--png", "false")
    assert p.returncode == 0, p.stderr[-1500:]
    assert "fold_bn does not apply to cornet_s" in p.stdout
    fz = {}
    for layer, jitter in (("V2.norm_skip", 0), ("V2.norm3_0", 0), ("V2.output_0", 0), ("V4.output_0", 4), ("V4.norm3_1", 4),
                          ("V4.output_1", 4)):
        fz[layer] = torch.load(res / "fzs" / layer / "center.pt", weights_only=False)
        cfg = fz[layer]["config"]
        assert cfg["arch"] == "cornet_s" and cfg["weights"].startswith("cornet_s:file:fixture_cornet_s.pth") and cfg["jitter"] == jitter
        assert fz[layer]["images"].shape == (3, 3, 224, 224) and cfg["fold_bn"] is False
    p = run("criteria.py", *a, "--blocks", "V2.0,V4.1", "--batch", "3")
    assert p.returncode == 0, p.stderr[-1500:]
    crit = json.load(open(res / "criteria.json"))
    assert crit["config"]["arch"] == "cornet_s" and crit["blocks"]["V4.1"]["n_channels"] == 256
    assert crit["blocks"]["V4.1"]["layers"] == ["V4.output_0", "V4.norm3_1", "V4.output_1"]
    rows = {(r["block"], int(r["channel"])): r for r in csv.DictReader(open(res / "criteria.csv"))}
    model = build_cornet_fixture()
    for block, (In, Pre, Post) in (("V2.0", net.blocks["V2.0"]), ("V4.1", net.blocks["V4.1"])):
        for c in range(3):  # the criteria's activations, recomputed with the forward written out in this file
            on_in, _ = by_hand(model, stream.normalize(fz[In]["images"][c:c + 1].float() / 255))
            on_pre, _ = by_hand(model, stream.normalize(fz[Pre]["images"][c:c + 1].float() / 255))
            r = rows[block, c]
            for col, want in (("pre_in", center_of(on_in[block, "pre"], c)), ("post_in", center_of(on_in[block, "post"], c)),
                              ("post_pre", center_of(on_pre[block, "post"], c))):
                assert abs(float(r[col]) - want) <= 1e-3 * (1 + abs(want)), (block, c, col, r[col], want)
            assert float(r["bn2_abs"]) == pytest.approx(abs(float(getattr(model, block[:2]).get_submodule(Pre[3:]).weight[c])))

    # random weights work the same way, and nothing is mixed across architectures
    rnd = tmp_path / "random"
    p = run("fzs.py", "--arch", "cornet_s", "--weights", "random", "--results", rnd, "--layers", "V2.0", "--channels", "0:2",
            "--steps", "1", "--batch", "2", "--png", "false")
    assert p.returncode == 0 and "weights cornet_s:random:0" in p.stdout, p.stderr[-1500:]
    p = run("criteria.py", "--arch", "cornet_s", "--results", rnd, "--blocks", "V2.0")
    assert p.returncode == 0 and "RANDOM WEIGHTS" in p.stdout, p.stderr[-1500:]
    one_line_error(run("fzs.py", "--weights", "random", "--results", res, "--layers", "2.1", "--channels", "0:2", "--steps", "1"),
                   "was made with --arch cornet_s", "--arch resnet18")
    one_line_error(run("criteria.py", "--weights", "random", "--results", res, "--blocks", "2.1"), "was made with --arch cornet_s")
    r18 = tmp_path / "r18"
    p = run("fzs.py", "--weights", "random", "--results", r18, "--layers", "layer1.1", "--channels", "0:1", "--steps", "1",
            "--batch", "1", "--png", "false")
    assert p.returncode == 0, p.stderr[-1500:]
    one_line_error(run("fzs.py", "--arch", "cornet_s", "--weights", "random", "--results", r18, "--layers", "V2.0",
                       "--channels", "0:1", "--steps", "1"), "was made with --arch resnet18", "this run is --arch cornet_s")
    one_line_error(run("fzs.py", "--arch", "cornet_s", "--weights", "random", "--results", rnd, "--layers", "layer2.1"),
                   "unknown layer 'layer2.1' for cornet_s")


# ----------------------------------------------------------------------------------------------------
# ablate.py and tuning.py: the mean ablation of a step's Post, from that step on, equals a hook that overwrites the
# area's last ReLU at that step's call only, on the full model; then the fixture through both scripts.

def ablated_by_hook(model, x, block, channels, mean):
    """The full model's logits with Post_t of `block` ('V4.1') overwritten by `mean` on `channels`: a hook on the area's
    nonlin3 that acts at call t only (call k is step k)."""
    area, t = block.split(".")
    calls = [0]

    def hook(_m, _i, out):
        calls[0] += 1
        if calls[0] - 1 != int(t) or not channels:
            return out
        out = out.clone()
        out[:, channels] = mean[channels].view(1, -1, 1, 1)
        return out
    handle = getattr(model, area).nonlin3.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def test_ablation_from_a_step_equals_hooks_on_the_full_model(model):
    import ablate
    x = stream.normalize(torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(4)))
    g = torch.Generator().manual_seed(5)
    for block, sets in (("V4.1", [[0, 3, 7, 9], [], list(range(0, 256, 2))]), ("V2.0", [[1, 2], list(range(64))]),
                        ("IT.0", [list(range(100))])):
        idx = net.where(net.blocks[block][2])[0]
        n = net.channels(net.blocks[block][2])
        mean = torch.rand(n, generator=g) * 2
        masks = ablate.masks_for(sets, n)
        with torch.no_grad():
            h = stream.stem(model, x)
            for i in range(idx + 1):
                h = stream.block_post(net, model, i, h)
            assert torch.allclose(h, stream.features(net, model, x, [net.blocks[block][2]])[net.blocks[block][2]])
            logits = ablate.run_suffix(net, model, ablate.overwrite(h, masks, mean), idx + 1).view(len(sets), 3, -1)
            preds = ablate.predictions(net, model, x, [(idx, mean, masks)], 64)
        full = ablated_by_hook(model, x, block, [], mean)
        assert close(ablate.run_suffix(net, model, h, idx + 1), full) and torch.equal(preds[0], full.argmax(1))
        for k, chans in enumerate(sets):
            want = ablated_by_hook(model, x, block, chans, mean)
            assert close(logits[k], want), (block, k)
            assert torch.equal(preds[1 + k], want.argmax(1)), (block, k)
            if chans:
                assert not close(logits[k], full)  # the ablation changes the logits: the comparison has teeth


def test_fixture_through_ablate_and_tuning(tmp_path, cornet_weights):
    res, data = tmp_path / "cornet", tmp_path / "fake"
    a = ["--arch", "cornet_s", "--weights", cornet_weights, "--results", res]
    p = run("ablate.py", *a, "--data", data, "--fake", "8", "--workers", "0", "--batch", "8", "--sets", "V4.1:0:3",
            "--crops", "20", "--n_trials", "2", "--screen_draws", "2", "--screen_cap", "20", "--screen_margin", "*:<=100",
            "--bootstrap", "10", "--permutations", "4", "--variants", "paper")
    assert p.returncode == 0, p.stderr[-1500:]
    assert "sweep: blocks V4.1" in p.stdout
    assert "unablated top-1 of cornet_s:file:fixture_cornet_s.pth:sha256=" in p.stdout and "on these 8 images: 100.00%" in p.stdout
    natural = torch.load(res / "natural" / "summary.pt", weights_only=False)
    assert natural["config"]["arch"] == "cornet_s" and set(natural["mean"]) == set(net.layers)
    assert np.load(res / "natural" / "IT.output_1.npy").shape == (8, 512)
    ab = json.load(open(res / "ablation" / "V4.1.json"))
    assert ab["config"]["arch"] == "cornet_s" and ab["config"]["passing"] == [0, 1, 2] and ab["accuracy"]["none"][0] == 1.0
    p = run("tuning.py", *a, "--tune_blocks", "V4.1", "--top_k", "4", "--sample", "4", "--fractions", "1,0.5", "--workers", "0",
            "--permutations", "10")
    assert p.returncode == 0, p.stderr[-1500:]
    tuning = json.load(open(res / "tuning.json"))
    assert tuning["config"]["arch"] == "cornet_s" and tuning["blocks"]["V4.1"]["n_channels"] == 256
    for script in ("plot_ratios.py", "plot_tuning.py"):
        p = run(script, "--arch", "cornet_s", "--results", res)
        assert p.returncode == 0, (script, p.stderr[-1500:])
    one_line_error(run("ablate.py", "--weights", "random", "--results", res, "--stages", "sweep", "--data", data, "--workers", "0",
                       "--sets", "2.1:0:3"), "was made with --arch cornet_s")

    # latency.py on V2 (its FZs and criteria at the reference step V2.0), and its figures
    p = run_in_process("fzs.py", *a, "--layers", "V2.0", "--channels", "0:3", "--steps", "1", "--batch", "3", "--png", "false")
    assert p.returncode == 0, p.stderr[-1500:]
    assert run_in_process("criteria.py", *a, "--blocks", "V2.0").returncode == 0
    p = run_in_process("latency.py", *a, "--areas", "V2", "--top_k", "2", "--fractions", "1,0.5", "--workers", "0", "--permutations", "10")
    assert p.returncode == 0, p.stderr[-1500:]
    lat = json.load(open(res / "latency.json"))
    crit = json.load(open(res / "criteria.json"))["blocks"]["V2.0"]
    assert lat["config"]["weights"].startswith("cornet_s:file:fixture_cornet_s.pth") and not lat["config"]["random_network"]
    v2 = lat["areas"]["V2"]
    assert v2["n_units"] == 128 and v2["n_passing"] == len(crit["passing"]) and v2["n_passing"] + v2["n_other"] == 3
    curves = torch.load(res / "latency" / "curves.pt", weights_only=False)
    model, summary = build_cornet_fixture(), torch.load(res / "natural" / "summary.pt", weights_only=False)
    from imagenet import decode_rgb, zoom_views
    fzs_of = {layer: torch.load(res / "fzs" / layer / "center.pt", weights_only=False) for layer in ("V2.norm_skip", "V2.norm3_0")}
    top = np.argsort(-np.load(res / "natural" / "V2.output_0.npy").astype(np.float32), axis=0, kind="stable")[:2]
    for c in (0, 2):  # every step and zoom recomputed: the unit's top-2 natural images (of Post_0), its In FZ, its Pre FZ
        views = [torch.stack([zoom_views(decode_rgb(os.path.join(summary["root"], summary["paths"][i])), [1, 0.5]) for i in top[:, c]])]
        views += [zoom_views(TF.to_pil_image(fzs_of[layer]["images"][c]), [1, 0.5], eval_view=False)[None] for layer in fzs_of]
        for s, v in enumerate(views):  # (images, zooms, 3, 224, 224)
            for z in range(3):
                x = stream.normalize(v[:, z].float() / 255)
                got = stream.read_center(net, model, x, ["V2.output_0", "V2.output_1"])
                for t in range(2):
                    want = float(got[f"V2.output_{t}"][:, c].mean())
                    assert abs(curves["r"][c, s, 0, t, z] - want) <= 1e-4 * (1 + abs(want)), (c, s, t, z)
    p = run_in_process("plot_latency.py", "--results", res)
    assert p.returncode == 0 and (res / "figures" / "latency_onset.png").is_file() and (res / "figures" / "latency_responses.png").is_file()
    one_line_error(run_in_process("latency.py", "--arch", "resnet18", "--results", res), "needs recurrent time steps")
