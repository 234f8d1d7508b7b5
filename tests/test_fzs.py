"""fzs.py: equality with lucent's own render_vis, independence of the batched objectives, the output file,
resuming after kill -9, refusing mixed configs, torchrun splitting, and one-line errors (METHOD.md section 2)."""

import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
import torchvision

import fzs
import stream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")


def run(*args, check=True, **kw):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "fzs.py"), *args], capture_output=True, text=True, cwd=ROOT, **kw)
    if check:
        assert p.returncode == 0, p.stderr[-2000:]
    return p


@pytest.fixture(scope="module")
def model():
    return stream.load_resnet18("random")[0]


def cfg(j, steps=6, pre_as_released=False):
    return dict(steps=steps, lr=0.05, jitter=j, scales=fzs.SCALES, angles=fzs.ANGLES, size=224, pre_as_released=pre_as_released)


def lucent_render(model, layer, c, j, steps, seed):
    """The independent slow path: lucent's own render_vis, full torchvision model, lucent's transforms."""
    from lucent.optvis import objectives, param, render, transform
    full = torchvision.models.resnet18(weights=None)
    full.load_state_dict(model.state_dict())
    full.eval()
    ts = ([transform.random_scale(fzs.SCALES), transform.random_rotate(fzs.ANGLES)] if j == 0 else
          [transform.pad(j), transform.jitter(j), transform.random_scale(fzs.SCALES), transform.random_rotate(fzs.ANGLES),
           transform.jitter(j // 2), torchvision.transforms.CenterCrop(224)])
    np.random.seed(seed)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = render.render_vis(full, objectives.neuron(layer.replace(".", "_"), c), param_f=lambda: param.image(224),
                                optimizer=lambda p: torch.optim.Adam(p, lr=0.05), transforms=ts, thresholds=(steps,),
                                show_image=False, progress=False)
    return (torch.from_numpy(out[-1]).permute(0, 3, 1, 2) * 255).to(torch.uint8)


# channels whose center is active on the initial image with these random weights (a dead unit would not move)
@pytest.mark.parametrize("layer,j,c", [("layer2.1", 4, 3), ("layer1.0", 0, 2), ("layer4.0.downsample.1", 16, 3)])
def test_engine_equals_lucent_render_vis(model, layer, j, c):
    ours = fzs.render(model, layer, [c], "center", cfg(j), seed=11, device=CPU, amp=None)
    start = fzs.render(model, layer, [c], "center", cfg(j, steps=0), seed=11, device=CPU, amp=None)
    assert (ours.float() - start.float()).abs().mean() > 1.0  # the images moved: the comparison means something
    assert torch.equal(ours, lucent_render(model, layer, c, j, 6, 11))


def test_released_pre_option_reproduces_lucents_hooks(model):
    # channel 4: In and Pre are both active at the center here, so the block output's gradient is not bn2's
    theirs = lucent_render(model, "layer2.1.bn2", 4, 4, 6, 3)  # lucent silently optimises the block output
    released = fzs.render(model, "layer2.1.bn2", [4], "center", cfg(4, pre_as_released=True), seed=3, device=CPU, amp=None)
    true_pre = fzs.render(model, "layer2.1.bn2", [4], "center", cfg(4), seed=3, device=CPU, amp=None)
    assert torch.equal(released, theirs)
    assert not torch.equal(true_pre, theirs)


def test_parameterisation_equals_lucents():
    from lucent.optvis import param
    torch.manual_seed(5)
    params, image_f = param.image(224, batch=3)
    spectrum, image = fzs.fft_image(3, 224, torch.Generator().manual_seed(5), CPU)
    assert torch.equal(spectrum, params[0])
    assert torch.allclose(image(), image_f(), atol=1e-6)


def test_batched_objectives_are_independent(model):
    spectrum, image = fzs.fft_image(3, 224, torch.Generator().manual_seed(0), CPU)
    channels = torch.tensor([4, 9, 4])
    for kind in ("center", "channel"):
        acts = fzs.objective(stream.features(model, stream.normalize(image()), ["layer1.1"])["layer1.1"], channels, kind)
        for i in range(3):
            (g,) = torch.autograd.grad(acts[i], spectrum, retain_graph=True)
            norms = g.flatten(1).norm(dim=1)
            assert norms[i] > 0 and all(norms[k] == 0 for k in range(3) if k != i), (kind, i, norms)


def test_folded_batchnorm_computes_the_same_layers(model):
    folded = fzs.fold_batchnorm(model)
    x = torch.randn(2, 3, 224, 224)
    ref, got = stream.features(model, x, stream.LAYERS), stream.features(folded, x, stream.LAYERS)
    for name in stream.LAYERS:  # Pre included: bn2 folded into conv2 still outputs the true bn2 values
        assert torch.allclose(got[name], ref[name], atol=1e-4, rtol=1e-4), name
    assert model.layer2[1].bn2.__class__.__name__ == "BatchNorm2d"  # the model itself is untouched


def test_transform_table_follows_method():
    assert fzs.JITTER == {"layer1.0": 0, "layer1.1": 0, "layer2.0": 0, "layer2.1": 4, "layer3.0": 4,
                          "layer3.1": 16, "layer4.0": 16, "layer4.1": 16}
    assert len(fzs.transforms_for(0, fzs.SCALES, fzs.ANGLES, 224)) == 2
    x = torch.rand(2, 3, 224, 224)
    for j in (4, 16):
        ts = fzs.transforms_for(j, fzs.SCALES, fzs.ANGLES, 224)
        rng = np.random.RandomState(0)
        y = x
        for t in ts:
            y = t(y, rng)
        assert y.shape == (2, 3, 224, 224)


def test_end_to_end_file(tmp_path, model):
    res = str(tmp_path)
    run("--layers", "layer1.1.bn2,layer2.0.downsample.1", "--channels", "0:3", "--objectives", "center,channel",
        "--steps", "3", "--batch", "2", "--weights", "random", "--results", res)
    for layer in ("layer1.1.bn2", "layer2.0.downsample.1"):
        for kind in ("center", "channel"):
            d = torch.load(os.path.join(res, "fzs", layer, f"{kind}.pt"), weights_only=False)
            assert d["images"].dtype == torch.uint8 and d["images"].shape == (3, 3, 224, 224)
            assert d["channels"].tolist() == [0, 1, 2] and d["channels"].dtype == torch.int64
            assert d["activation"].dtype == torch.float32
            c = d["config"]
            assert (c["weights"], c["steps"], c["layer"], c["objective"], c["jitter"]) == ("random:0", 3, layer, kind, 0)
            assert all(k in c for k in fzs.FZ_KEYS) and c["fold_bn"] is True and c["seed"] == 0
            assert c["versions"]["torch"] == torch.__version__
            # the stored activation is the objective on the stored 8-bit image, untransformed, in float32
            fmap = stream.features(model, stream.normalize(stream.to_float(d["images"])), [layer])[layer]
            expect = fzs.objective(fmap, d["channels"], kind)
            assert torch.allclose(d["activation"], expect, atol=1e-4)
            assert os.path.exists(os.path.join(res, "fzs", layer, kind, "0002.png"))
            assert not os.path.exists(os.path.join(res, "fzs", layer, f"{kind}.parts"))
    # a second run with the same config has nothing to do; more channels extend the file
    assert "0 unit(s) to make" in run("--layers", "layer1.1.bn2", "--channels", "0:3", "--objectives", "center",
                                      "--steps", "3", "--batch", "2", "--weights", "random", "--results", res).stdout
    run("--layers", "layer1.1.bn2", "--channels", "0:5", "--steps", "3", "--batch", "2", "--weights", "random", "--results", res)
    d = torch.load(os.path.join(res, "fzs", "layer1.1.bn2", "center.pt"), weights_only=False)
    assert d["channels"].tolist() == [0, 1, 2, 3, 4]
    # another config is refused, not mixed
    p = run("--layers", "layer1.1.bn2", "--channels", "0:3", "--steps", "4", "--batch", "2", "--weights", "random",
            "--results", res, check=False)
    assert p.returncode != 0 and "another config" in p.stderr and "steps" in p.stderr and "Traceback" not in p.stderr


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    args = ["--layers", "layer1.0", "--channels", "0:8", "--steps", "12", "--batch", "2", "--weights", "random",
            "--amp", "fp32", "--png", "false"]
    run(*args, "--results", str(tmp_path / "whole"))
    killed = str(tmp_path / "killed")
    parts = os.path.join(killed, "fzs", "layer1.0", "center.parts")
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "fzs.py"), *args, "--results", killed], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.isdir(parts) and [f for f in os.listdir(parts) if f.endswith(".pt")]):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not os.path.exists(os.path.join(killed, "fzs", "layer1.0", "center.pt")), "killed too late to test resuming"
    out = run(*args, "--results", killed).stdout
    assert "already made" in out and " 0 already made" not in out
    a = torch.load(os.path.join(tmp_path, "whole", "fzs", "layer1.0", "center.pt"), weights_only=False)
    b = torch.load(os.path.join(killed, "fzs", "layer1.0", "center.pt"), weights_only=False)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["channels"], b["channels"])
    assert torch.equal(a["activation"], b["activation"])


def test_torchrun_split_equals_one_process(tmp_path):
    args = ["--layers", "layer1.0", "--channels", "0:6", "--steps", "3", "--batch", "2", "--weights", "random",
            "--amp", "fp32", "--png", "false"]
    run(*args, "--results", str(tmp_path / "one"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "fzs.py", *args,
                        "--results", str(tmp_path / "two")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    a = torch.load(os.path.join(tmp_path, "one", "fzs", "layer1.0", "center.pt"), weights_only=False)
    b = torch.load(os.path.join(tmp_path, "two", "fzs", "layer1.0", "center.pt"), weights_only=False)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["channels"], b["channels"])


@pytest.mark.parametrize("args,message", [
    (["--layers", "layer9.9"], "unknown layer"),
    (["--layers", "layer1.0", "--channels", "64"], "out of range"),
    (["--layers", "layer1.0", "--objectives", "neuron"], "unknown objective"),
    (["--layers", "layer1.0", "--weights", "/no/such/file.pth"], "no such file"),
    (["--layers", "layer1.0", "--channels", "passing"], "criteria.json"),
])
def test_bad_input_is_one_line_error(tmp_path, args, message):
    p = run(*args, "--steps", "1", "--results", str(tmp_path), check=False)
    assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_help_lists_every_constant():
    out = run("--help").stdout
    for name in ("--weights", "--layers", "--channels", "--objectives", "--steps", "--batch", "--seed", "--results",
                 "--device", "--pre_as_released", "--amp", "--jitter"):
        assert name in out
