"""fzs.py: equality with lucent's own render_vis, independence of the batched objectives, the output file,
resuming after kill -9, refusing mixed configs, torchrun splitting, and one-line errors (docs/method.md section 2)."""

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

import arch
import cli
import fzs
import results
import stream
from conftest import run_in_process

net = arch.net("resnet18")  # the paper's tables (tests of other architectures make their own)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")


def run(*args, check=True, **kw):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "fzs.py"), *args], capture_output=True, text=True, cwd=ROOT, **kw)
    if check:
        assert p.returncode == 0, p.stderr[-2000:]
    return p


def run_here(*args, check=True):
    """run() in this process (conftest.run_in_process): for the checks that launch fzs.py many times only to read a
    one-line error or a message."""
    p = run_in_process("fzs.py", *args)
    if check:
        assert p.returncode == 0, p.stderr[-2000:]
    return p


@pytest.fixture(scope="module")
def model(fixture_model):
    """The fixture model (conftest.py): non-trivial BatchNorms, so a wrong fold or a dropped bn2 changes the images."""
    return fixture_model


def cfg(j, steps=6, pre_as_released=False, post_as_released=False):
    return dict(steps=steps, lr=0.05, jitter=j, scales=fzs.SCALES, angles=fzs.ANGLES, size=224, pre_as_released=pre_as_released,
                post_as_released=post_as_released)


def lucent_render(model, layer, c, j, steps, seed, device=CPU):
    """The independent slow path: lucent's own render_vis, full torchvision model, lucent's transforms. lucent puts
    its image on cuda:0 whenever CUDA is visible (the default suite hides it), so the model goes to the test device."""
    from lucent.optvis import objectives, param, render, transform
    full = torchvision.models.resnet18(weights=None)
    full.load_state_dict(model.state_dict())
    full.eval().to(device)
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


def render1(model, layer, c, j, steps, seed, device=CPU, **kw):
    """fzs.render for one unit with both seeds equal: lucent's render_vis after seeding numpy and torch."""
    return fzs.render(net, model.to(device), layer, [c], "center", cfg(j, steps=steps, **kw), [seed], seed, device=device, amp=None)


def same_image(a, b, device):
    """Equal bit for bit on the CPU; on CUDA (atomicAdd in the backward passes) within 1 level on average and 8 at most,
    over 6 steps, in true float32 (no TF32)."""
    if device.type == "cpu":
        return torch.equal(a, b)
    d = (a.float() - b.float()).abs()
    return float(d.mean()) <= 1.0 and float(d.max()) <= 8.0


def live_channel(model, layer, seed, positive_post_and_in=False):
    """A channel whose center neuron is active on the initial image of this seed (a dead unit would not move)."""
    _, image = fzs.fft_image([seed], 224, CPU)
    with torch.no_grad():
        x = stream.normalize(image())
        acts = stream.read_center(net, model, x, [layer] + ([layer.removesuffix(".bn2")] if positive_post_and_in else []))
    ok = (acts[layer][0] > 0.05)
    if positive_post_and_in:
        ok &= acts[layer.removesuffix(".bn2")][0] > 0.05
    return int(ok.nonzero()[0])


@pytest.mark.parametrize("layer,j", [("layer2.1", 4), ("layer1.0", 0), ("layer4.0.downsample.1", 16)])
def test_engine_equals_lucent_render_vis(model, layer, j, device):
    c = live_channel(model, layer, 11)
    cli.use_device(device, "fp32")
    try:
        ours = render1(model, layer, c, j, 6, 11, device)
        start = render1(model, layer, c, j, 0, 11, device)
        assert (ours.float() - start.float()).abs().mean() > 1.0  # the images moved: the comparison means something
        assert same_image(ours, lucent_render(model, layer, c, j, 6, 11, device), device)
    finally:
        model.cpu()


def test_released_pre_option_reproduces_lucents_hooks(model):
    # a channel whose Pre and Post are both active at the center, so the block output's gradient is not bn2's
    c = live_channel(model, "layer2.1.bn2", 3, positive_post_and_in=True)
    theirs = lucent_render(model, "layer2.1.bn2", c, 4, 6, 3)  # lucent silently optimises the block output
    released = render1(model, "layer2.1.bn2", c, 4, 6, 3, pre_as_released=True)
    true_pre = render1(model, "layer2.1.bn2", c, 4, 6, 3)
    assert torch.equal(released, theirs)
    assert not torch.equal(true_pre, theirs)


def relu_input_forward(model, layer):
    """The independent slow path of --post_as_released for a block output: the full torchvision model, with a pre-hook
    on the block's ReLU module that clones its input (the block calls its one self.relu twice: the last call's input
    is the residual sum). The clone keeps its gradient; the in-place ReLU then changes only the original."""
    full = torchvision.models.resnet18(weights=None)
    full.load_state_dict(model.state_dict())
    full.eval().requires_grad_(False)
    relu = full.get_submodule(layer).relu

    def forward(x):
        got = []
        handle = relu.register_forward_pre_hook(lambda m, inp: got.append(inp[0].clone()))
        try:
            full(x)
        finally:
            handle.remove()
        assert len(got) == 2
        return got[-1]
    return forward


def test_released_post_option_optimises_the_sum_before_the_relu(model):
    layer, seed = "layer2.0", 5  # the In of block 2.1 and the Post of 2.0
    _, image = fzs.fft_image([seed], 224, CPU)
    with torch.no_grad():
        sums = stream.read_center(net, model, stream.normalize(image()), [layer], post_as_released=True)[layer][0]
    c = int((sums < -0.05).nonzero()[0])  # negative at the start: its post-ReLU objective has no gradient there
    released = render1(model, layer, c, 4, 6, seed, post_as_released=True)
    hooked = fzs.render(net, model, layer, [c], "center", cfg(4, post_as_released=True), [seed], seed, device=CPU, amp=None,
                        forward=relu_input_forward(model, layer))
    paper = render1(model, layer, c, 4, 6, seed)
    assert torch.equal(released, hooked)
    assert not torch.equal(released, paper) and (released.float() - paper.float()).abs().mean() > 1.0
    # the stored objective is the sum too, and an aliased Pre (--pre_as_released) stays lucent's post-ReLU tensor
    x = stream.to_float(released)
    want = relu_input_forward(model, layer)(stream.normalize(x))[0, c, 14, 14]
    assert torch.allclose(fzs.objective_on_images(net, model, layer, released, [c], "center", CPU, True)[0], want, atol=1e-5)
    _, image = fzs.fft_image([3], 224, CPU)
    with torch.no_grad():
        sums = stream.read_center(net, model, stream.normalize(image()), ["layer2.1"], post_as_released=True)["layer2.1"][0]
    c2 = int((sums < -0.05).nonzero()[0])  # the sum is negative: through the sum the image would move, through the ReLU not
    both = render1(model, "layer2.1.bn2", c2, 4, 2, 3, pre_as_released=True, post_as_released=True)
    assert torch.equal(both, render1(model, "layer2.1.bn2", c2, 4, 2, 3, pre_as_released=True))
    assert not torch.equal(both, render1(model, "layer2.1", c2, 4, 2, 3, post_as_released=True))


def test_parameterisation_equals_lucents():
    from lucent.optvis import param
    spectrum, image = fzs.fft_image([5, 9], 224, CPU)
    for i, seed in enumerate((5, 9)):  # unit i of a batch is lucent's batch-1 draw with its own seed
        torch.manual_seed(seed)
        params, image_f = param.image(224)
        assert torch.equal(spectrum[i:i + 1], params[0])
        assert torch.allclose(image()[i:i + 1], image_f(), atol=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_transforms_equal_kornia_041_bit_for_bit():
    """The plain-torch translate / rotation matrix / warp_affine against kornia 0.4.1 (lucent's), on every image size
    the FZ transforms produce, every jitter offset of jitter(2), (4), (8) and (16), and every angle."""
    import kornia
    from kornia.geometry.transform import translate
    sizes = set()
    for j in (0, 4, 16):
        for s in fzs.SCALES:
            sizes.add(fzs.random_scale([s])(torch.zeros(1, 3, 224 + 2 * j, 224 + 2 * j), np.random.RandomState(0)).shape[-1])
    assert len(sizes) >= 8
    g = torch.Generator().manual_seed(0)
    for hw in sorted(sizes):
        x = torch.rand(2, 3, hw, hw, generator=g)
        for a in fzs.ANGLES:
            center = torch.tensor([[(hw - 1) / 2, (hw - 1) / 2]] * 2)
            theirs = kornia.get_rotation_matrix2d(center, torch.ones(2) * a, torch.ones(2, 2))
            ours = fzs.rotation_matrix(float(a), hw, hw, 2)
            assert torch.equal(ours, theirs), (hw, a)
            assert torch.equal(fzs.warp_affine(x, ours), kornia.warp_affine(x, theirs, dsize=(hw, hw))), (hw, a)
        for dx in range(16):  # jitter(16)'s offsets: those of jitter(2), (4) and (8) are among them (0 <= dx, dy < d)
            for dy in range(16):
                theirs = translate(x, torch.tensor([[dx, dy]]).float())
                assert torch.equal(fzs.warp_affine(x, fzs.translation_matrix(float(dx), float(dy), 2)), theirs), (hw, dx, dy)


def test_scripts_import_neither_kornia_nor_lucent():
    code = "import sys, fzs, criteria, ablate, stream; bad = [m for m in sys.modules if m.split('.')[0] in ('kornia', 'lucent')]; print(bad)"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr


def test_batched_objectives_are_independent(model):
    spectrum, image = fzs.fft_image([0, 1, 2], 224, CPU)
    channels = torch.tensor([4, 9, 4])
    for kind in ("center", "channel"):
        acts = fzs.objective(stream.features(net, model, stream.normalize(image()), ["layer1.1"])["layer1.1"], channels, kind)
        for i in range(3):
            (g,) = torch.autograd.grad(acts[i], spectrum, retain_graph=True)
            norms = g.flatten(1).norm(dim=1)
            assert norms[i] > 0 and all(norms[k] == 0 for k in range(3) if k != i), (kind, i, norms)


def test_folded_batchnorm_computes_the_same_layers(model):
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # the fixture has teeth
        assert (bn.running_mean.abs() > 1e-3).any() and ((bn.running_var - 1).abs() > 1e-2).any()
        assert ((bn.weight - 1).abs() > 1e-2).any() and (bn.bias.abs() > 1e-3).any()
    folded = fzs.fold_batchnorm(model)
    x = stream.normalize(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    ref, got = stream.features(net, model, x, net.layers), stream.features(net, folded, x, net.layers)
    for name in net.layers:  # Pre included: bn2 folded into conv2 still outputs the true bn2 values
        scale = ref[name].abs().max()
        assert (got[name] - ref[name]).abs().max() <= 1e-4 * scale, name
    assert model.layer2[1].bn2.__class__.__name__ == "BatchNorm2d"  # the model itself is untouched


def test_transform_table_follows_method():
    assert fzs.parse_jitter(net, "layer2.1:16, layer4.0:0") == {"layer2.1": 16, "layer4.0": 0}  # overrides of arch.jitter's rule
    assert len(fzs.transforms_for(0, fzs.SCALES, fzs.ANGLES, 224)) == 2
    x = torch.rand(2, 3, 224, 224)
    for j in (4, 16):
        ts = fzs.transforms_for(j, fzs.SCALES, fzs.ANGLES, 224)
        rng = np.random.RandomState(0)
        y = x
        for t in ts:
            y = t(y, rng)
        assert y.shape == (2, 3, 224, 224)


def test_end_to_end_file(tmp_path, model, fixture_weights):
    res = str(tmp_path)
    run("--layers", "layer1.1.bn2,layer2.0.downsample.1", "--channels", "0:3", "--objectives", "center,channel",
        "--steps", "3", "--batch", "2", "--weights", fixture_weights, "--results", res)
    for layer in ("layer1.1.bn2", "layer2.0.downsample.1"):
        for kind in ("center", "channel"):
            d = torch.load(os.path.join(res, "fzs", layer, f"{kind}.pt"), weights_only=False)
            assert d["images"].dtype == torch.uint8 and d["images"].shape == (3, 3, 224, 224)
            assert d["channels"].tolist() == [0, 1, 2] and d["channels"].dtype == torch.int64
            assert d["activation"].dtype == torch.float32
            c = d["config"]
            assert (c["steps"], c["layer"], c["objective"], c["jitter"]) == (3, layer, kind, 0)
            assert c["weights"].startswith("file:fixture_resnet18.pth:sha256=")
            assert all(k in c for k in results.FZ_KEYS) and c["fold_bn"] is True and c["seed"] == 0
            assert c["versions"]["torch"] == torch.__version__
            # the stored activation is the objective on the stored 8-bit image, untransformed, in float32
            fmap = stream.features(net, model, stream.normalize(stream.to_float(d["images"])), [layer])[layer]
            expect = fzs.objective(fmap, d["channels"], kind)
            assert torch.allclose(d["activation"], expect, atol=1e-4)
            assert os.path.exists(os.path.join(res, "fzs", layer, kind, "0002.png"))
            assert not os.path.exists(os.path.join(res, "fzs", layer, f"{kind}.parts"))
    # a second run with the same config has nothing to do, and counts the units in the final file as made
    assert "0 unit(s) to make in 0 batch(es) of up to 2 (3 already made)" in run("--layers", "layer1.1.bn2", "--channels", "0:3", "--objectives", "center",
                                      "--steps", "3", "--batch", "2", "--weights", fixture_weights, "--results", res).stdout
    run("--layers", "layer1.1.bn2", "--channels", "0:5", "--steps", "3", "--batch", "2", "--weights", fixture_weights, "--results", res)
    d = torch.load(os.path.join(res, "fzs", "layer1.1.bn2", "center.pt"), weights_only=False)
    assert d["channels"].tolist() == [0, 1, 2, 3, 4]
    # another config is refused, not mixed
    p = run("--layers", "layer1.1.bn2", "--channels", "0:3", "--steps", "4", "--batch", "2", "--weights", fixture_weights,
            "--results", res, check=False)
    assert p.returncode != 0 and "another config" in p.stderr and "steps" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.cpu_exact
@pytest.mark.parametrize("amp", ["fp32", "bf16"])
def test_image_depends_only_on_config_and_unit(tmp_path, fixture_weights, amp):
    """A subset run, an extended run and a full run give identical images for the same units (docs/method.md section 2:
    each unit's spectrum from (seed, layer, objective, channel); the transform draw from its batch k = channel // BATCH;
    every batch optimised whole, so that float32 rounding that depends on the batch size is the same in every run)."""
    common = ["--layers", "layer1.1.bn2", "--steps", "3", "--batch", "4", "--weights", fixture_weights, "--png", "false",
              "--amp", amp]
    run(*common, "--channels", "0:7", "--results", str(tmp_path / "full"))
    run(*common, "--channels", "1,5", "--results", str(tmp_path / "subset"))
    run(*common, "--channels", "0:2", "--results", str(tmp_path / "extended"))
    run(*common, "--channels", "0:7", "--results", str(tmp_path / "extended"))
    load = lambda name: torch.load(os.path.join(tmp_path, name, "fzs", "layer1.1.bn2", "center.pt"), weights_only=False)  # noqa: E731
    full, subset, extended = load("full"), load("subset"), load("extended")
    assert torch.equal(extended["images"], full["images"]) and torch.equal(extended["activation"], full["activation"])
    assert subset["channels"].tolist() == [1, 5] and torch.equal(subset["images"], full["images"][[1, 5]])
    assert len({tuple(full["images"][i].flatten()[:50].tolist()) for i in range(7)}) == 7  # distinct units, distinct images


@pytest.mark.cpu_exact
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


@pytest.mark.cpu_exact
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
    (["--layers", "layer1.0", "--size", "0"], "--size must be at least 32"),
    (["--layers", "layer1.0", "--scales", "0"], "--scales must be one or more positive factors"),
    (["--layers", "layer1.0", "--scales", "1,-0.5"], "--scales must be one or more positive factors"),
    (["--layers", "layer1.0", "--lr", "-0.05"], "--lr must be positive"),
    (["--layers", "layer1.0", "--lr", "0"], "--lr must be positive"),
    (["--layers", "layer1.0", "--angles", ""], "--angles must list one or more angles"),
    (["--layers", "layer1.0", "--channels", "0:4:0"], "the step must be at least 1"),
])
def test_bad_input_is_one_line_error(tmp_path, args, message):
    p = run_here(*args, "--steps", "1", "--results", str(tmp_path), check=False)
    assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_passing_with_no_passing_channel_says_so(tmp_path):
    results.save_json({"config": {"weights_id": "random:0"}, "blocks": {"2.1": {"passing": [], "layers": list(net.blocks["2.1"]),
                                                                                "n_channels": 128}}},
                     str(tmp_path / "criteria.json"))
    p = run_here("--layers", "layer2.0", "--channels", "passing", "--steps", "1", "--weights", "random", "--results", str(tmp_path))
    assert "no channel of layer2.0 passes the criteria" in p.stdout and "--channels 0:8" in p.stdout
    assert "0 unit(s) to make" in p.stdout


def test_ctrl_c_says_what_was_saved(tmp_path):
    """Ctrl-C: one line, exit status 130, and a message true for fzs.py (finished batches are part files)."""
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "fzs.py"), "--layers", "layer1.0", "--channels", "0:4",
                          "--steps", "100000", "--batch", "2", "--weights", "random", "--results", str(tmp_path)],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = os.path.join(tmp_path, ".fzs.py.lock")
    deadline = time.time() + 60
    while time.time() < deadline and not (os.path.isfile(lock) and os.path.getsize(lock)):
        time.sleep(0.05)
    time.sleep(2)  # into the optimisation loop
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted: finished batches are saved as part files; run the same command again to resume"


def test_main_guard_message_is_the_scripts_own(capsys):
    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        cli.main_guard(interrupted, "nothing was written")
    assert e.value.code == 130 and capsys.readouterr().err.strip() == "interrupted: nothing was written"
    for script, says in (("criteria.py", "nothing was written"), ("ablate.py", "run the same command again"),
                         ("fzs.py", "part files"), ("plot_grids.py", "figures written"), ("plot_ratios.py", "the figure was not written"),
                         ("plot_spectrum.py", "figures written")):
        call = open(os.path.join(ROOT, script)).read().split("main_guard(main", 1)[1].split("\n")[0]
        assert says in call, (script, call)


def test_help_lists_every_constant():
    out = run_here("--help").stdout
    for name in ("--weights", "--layers", "--channels", "--objectives", "--steps", "--batch", "--seed", "--results",
                 "--device", "--pre_as_released", "--amp", "--jitter"):
        assert name in out


@pytest.mark.cpu_exact
def test_subset_equals_full_when_rounding_depends_on_the_batch_size(tmp_path, fixture_weights):
    """The planted version of what some CPUs do in float32 (the convolution library blocks by batch size): a network
    whose output depends on how many images share the batch. A subset run still gives the full run's images, because
    every batch is optimised whole."""
    planted = ("import sys, fzs, stream; orig = fzs.truncated\n"
               "fzs.truncated = lambda net, model, layer, *rest: (lambda f: lambda x: f(x * (1 + 0.05 * x.shape[0])))(orig(net, model, layer, *rest))\n"
               "sys.argv = ['fzs.py'] + sys.argv[1:]; fzs.main()")
    common = ["--layers", "layer1.1.bn2", "--steps", "3", "--batch", "4", "--weights", fixture_weights, "--png", "false",
              "--amp", "fp32"]
    for name, channels in (("full", "0:8"), ("subset", "1,6")):
        p = subprocess.run([sys.executable, "-c", planted, *common, "--channels", channels, "--results", str(tmp_path / name)],
                           cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-2000:]
    load = lambda name: torch.load(os.path.join(tmp_path, name, "fzs", "layer1.1.bn2", "center.pt"), weights_only=False)  # noqa: E731
    full, subset = load("full"), load("subset")
    assert "6 batch-mate(s) optimised, not kept" in p.stdout
    assert subset["channels"].tolist() == [1, 6] and torch.equal(subset["images"], full["images"][[1, 6]])
    assert torch.equal(subset["activation"], full["activation"][[1, 6]])


def test_several_batches_at_once_equal_one_at_a_time(model, device):
    """render_groups (--streams): each batch keeps its own draws, optimiser and forward (on CUDA its own stream); bit for
    bit render() alone on the CPU."""
    c = cfg(4, steps=4)
    groups = [([0, 1, 2], [11, 12, 13], 5), ([3, 4], [14, 15], 6), ([5], [16], 7)]
    cli.use_device(device, "fp32")
    m = model.to(device)
    try:
        together = fzs.render_groups(net, m, "layer2.1", "center", c, groups, device, None)
        for (channels, seeds, tseed), got in zip(groups, together):
            alone = fzs.render(net, m, "layer2.1", channels, "center", c, seeds, tseed, device=device, amp=None)
            assert same_image(got, alone, device)
        assert not torch.equal(together[1][0], together[2][0])
    finally:
        model.cpu()


@pytest.mark.cuda_only
@pytest.mark.parametrize("j", [0, 4])
def test_fz_steps_make_no_host_synchronisation(model, device, j):
    """fzs.render's step loop (transforms, forward, backward, Adam) asks the GPU nothing back: the host syncs that
    torch counts (set_sync_debug_mode) are the same for 2 steps and for 8 (only the set-up and the final copy sync)."""
    m = fzs.fold_batchnorm(model).to(device).to(torch.bfloat16)

    def syncs(steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fzs.render(net, m, "layer2.1", [0, 1], "center", cfg(j, steps=steps), [1, 2], 3, device=device, amp=torch.bfloat16)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)
    syncs(2)  # warm-up: cuDNN, cuFFT and the allocator
    assert syncs(8) == syncs(2)


@pytest.mark.cpu_exact
def test_a_units_image_is_seeded_by_its_channel_and_its_batch(tmp_path, fixture_weights):
    """fzs.py's image of unit c is render() from the spectrum of unit_seed(SEED, layer, objective, c) and the transform
    draws of transform_seed(SEED, layer, objective, c // BATCH), on the folded channels_last model, in its batch."""
    run("--layers", "layer2.1", "--channels", "2:4", "--batch", "2", "--steps", "3", "--amp", "fp32", "--seed", "5",
        "--weights", fixture_weights, "--png", "false", "--results", str(tmp_path))
    got = torch.load(os.path.join(tmp_path, "fzs", "layer2.1", "center.pt"), weights_only=False)
    model = fzs.fold_batchnorm(stream.load_model(net.name, fixture_weights)[0].to(memory_format=torch.channels_last))
    c = dict(cfg(4, steps=3), jitter=4)
    want = fzs.render(net, model, "layer2.1", [2, 3], "center", c, [fzs.unit_seed(5, "layer2.1", "center", k) for k in (2, 3)],
                      fzs.transform_seed(5, "layer2.1", "center", 1), device=CPU, amp=None)
    assert torch.equal(got["images"], want)


def test_compile_makes_one_graph_per_target_without_breaks(model):
    """--compile: one compiled function per target layer, each one whole graph (no regex inside to break it), for more
    targets than dynamo's default recompile limit (8), equal to the eager truncated pass."""
    graphs = []

    def counting(gm, inputs):
        graphs.append(gm)
        return gm.forward
    torch._dynamo.reset()
    x = stream.normalize(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    targets = net.layers[:10]
    try:
        for t in targets:
            f = fzs.compile_forward(net, model, t, len(targets), backend=counting)
            with torch.no_grad():
                assert torch.allclose(f(x), stream.features(net, model, x, [t])[t], atol=1e-5), t
        assert len(graphs) == len(targets)
    finally:
        torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------------
# The latent objective (--objectives latent): a block's crosscoder latents (crosscoder.py), each FZ maximising the
# latent's encoder pre-activation at the center of the unzoomed view.

LATENT_ZOOMS = [0.5, 1.0, 2.0]


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, fixture_weights):
    """(results folder, weights id): a crosscoder of block 2.1 made by crosscoder.py from activations whose roles differ
    in scale and mean (so the per-block scales and the decoder bias matter), then fzs.py's latent FZs of latents 0:2."""
    folder = str(tmp_path_factory.mktemp("latent"))
    weights_id = stream.load_model(net.name, fixture_weights)[1]
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(64, 3, 3, 128)) * np.array([0.5, 3.0, 8.0])[None, :, None, None] + np.array([1.0, -2.0, 4.0])[None, :, None, None]
    npz = os.path.join(folder, "acts.npz")
    np.savez(npz, acts=acts.astype(np.float32), zooms=np.array(LATENT_ZOOMS), block="2.1", weights=weights_id)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "crosscoder.py"), "--activations", npz, "--results", folder, "--expansion", "1",
                        "--epochs", "1", "--batch", "32", "--top_k", "4", "--auxk", "0", "--workers", "0"], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    run("--layers", "2.1", "--objectives", "latent", "--channels", "0:2", "--batch", "2", "--steps", "16", "--weights", fixture_weights,
        "--results", folder)
    return folder, weights_id


def hooked_latents(model, images, cc):
    """The independent slow path: the full torchvision model with forward hooks (clone) at the center of layer2.0 (In),
    layer2.1.bn2 (Pre, before torchvision's in-place add) and layer2.1 (Post), then the encoder written out in numpy:
    sum over roles of (v_r / scale(r, zoom 1) - b_dec(r, zoom 1)) @ W_enc(r) + b_enc."""
    full = torchvision.models.resnet18(weights=None)
    full.load_state_dict(model.state_dict())
    full.eval()
    seen = {}
    names = ("layer2.0", "layer2.1.bn2", "layer2.1")
    hooks = [full.get_submodule(m).register_forward_hook(
        lambda _m, _i, out, m=m: seen.__setitem__(m, out[:, :, out.shape[2] // 2, out.shape[3] // 2].clone())) for m in names]
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        full((images.float() / 255 - mean) / std)
    for h in hooks:
        h.remove()
    Z, C, one = len(cc["zooms"]), 128, list(cc["zooms"]).index(1.0)
    p = {k: v.numpy().astype(np.float64) for k, v in cc["params"].items()}
    scale, b_dec = cc["scale"].numpy(), p["b_dec"].reshape(3, Z, C)
    pre = p["b_enc"][None].copy()
    for r, m in enumerate(names):
        pre = pre + (seen[m].numpy().astype(np.float64) / scale[r, one] - b_dec[r, one]) @ p["w_enc"][r * C:(r + 1) * C]
    return pre


def test_latent_fzs_store_the_encoder_pre_activation_and_raise_it(latent_run, model):
    folder, weights_id = latent_run
    d = torch.load(os.path.join(folder, "fzs", "layer2.1", "latent.pt"), weights_only=False)
    cc = torch.load(os.path.join(folder, "crosscoder", "2.1.pt"), weights_only=False)
    assert d["channels"].tolist() == [0, 1] and d["images"].shape == (2, 3, 224, 224)
    c = d["config"]
    assert c["objective"] == "latent" and c["layer"] == "layer2.1" and c["weights"] == weights_id and c["jitter"] == 4
    assert c["crosscoder"] == results.crosscoder_id(folder, "2.1") and len(c["crosscoder"]["sha256"]) == 64
    assert cc["scale"].numpy()[:, 1].max() / cc["scale"].numpy()[:, 1].min() > 5  # the scales differ by role: leaving one out shows
    # the stored activation is the encoder's pre-activation on the stored 8-bit image, recomputed independently
    expect = hooked_latents(model, d["images"], cc)[np.arange(2), [0, 1]]
    assert np.allclose(d["activation"].numpy(), expect, rtol=1e-4, atol=1e-4), (d["activation"], expect)
    # the optimisation raises it: each latent's activation after 16 steps against its start image (the same seeds)
    _, image = fzs.fft_image([fzs.unit_seed(0, "layer2.1", "latent", f) for f in (0, 1)], 224, CPU)
    with torch.no_grad():
        start = hooked_latents(model, (image() * 255).to(torch.uint8), cc)[np.arange(2), [0, 1]]
    assert (d["activation"].numpy() > start + 0.05).all(), (start, d["activation"])
    assert os.path.exists(os.path.join(folder, "fzs", "layer2.1", "latent", "0001.png"))


def test_latent_fzs_resume_and_refuse_another_crosscoder(latent_run, fixture_weights, tmp_path):
    import shutil
    folder = str(tmp_path / "copy")
    shutil.copytree(latent_run[0], folder)
    args = ["--objectives", "latent", "--batch", "2", "--steps", "16", "--weights", fixture_weights, "--results", folder]
    assert "0 unit(s) to make in 0 batch(es) of up to 2 (2 already made)" in run_here("--layers", "layer2.1", "--channels", "0:2", *args).stdout
    for extra, message in ((["--layers", "3.1"], "no crosscoder of block 3.1"), (["--layers", "2.1", "--channels", "passing"], "not latents"),
                           (["--layers", "2.1", "--channels", "200"], "out of range")):
        p = run_here(*extra, *args, check=False)
        assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert "python crosscoder.py --blocks 3.1" in p.stderr or message != "no crosscoder of block 3.1"
    path = os.path.join(folder, "crosscoder", "2.1.pt")
    cc = torch.load(path, weights_only=False)
    cc["params"]["b_enc"] = cc["params"]["b_enc"] + 1.0  # another crosscoder file (retrained): its latents are other units
    torch.save(cc, path)
    p = run_here("--layers", "2.1", "--channels", "0:4", *args, check=False)
    assert p.returncode != 0 and "another config (crosscoder" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    cc["config"]["encoder"] = "all"  # an encoder reading every zoom: refused, not approximated
    torch.save(cc, path)
    p = run_here("--layers", "2.1", "--channels", "0:4", *args, check=False)
    assert p.returncode != 0 and "zoom1 encoder only" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    for flag in ("--pre_as_released", "--post_as_released"):  # the crosscoder read the paper's Pre and Post: so do its FZs
        p = run_here("--layers", "2.1", "--channels", "0:2", *args, flag, "true", check=False)
        assert p.returncode != 0 and f"{flag} does not apply to --objectives latent" in p.stderr, p.stderr


def test_a_file_made_under_one_post_reading_is_refused_under_the_other(tmp_path):
    """The FZs of a block output differ with --post_as_released: a resume under the other setting is refused, and a file
    from before the option (no key) is the paper's reading."""
    base = {"arch": "resnet18", "layer": "layer2.0", "objective": "center", "weights": "random:0", "seed": 0, "steps": 2,
            "lr": 0.05, "amp": "fp32", "pre_as_released": False, "batch": 4, "size": 224, "scales": fzs.SCALES,
            "angles": fzs.ANGLES, "jitter": 4, "fold_bn": True, "device": "cpu"}
    fz = {"images": torch.zeros(1, 3, 224, 224, dtype=torch.uint8), "channels": torch.tensor([0]), "activation": torch.zeros(1)}
    results.save_pt({**fz, "config": {**base, "post_as_released": True}}, results.fz_file(tmp_path, "layer2.0", "center"))
    with pytest.raises(SystemExit, match=r"made under another config \(post_as_released: True vs False\)"):
        fzs.existing(net, str(tmp_path), "layer2.0", "center", {**base, "post_as_released": False})
    assert fzs.existing(net, str(tmp_path), "layer2.0", "center", {**base, "post_as_released": True}) is not None
    results.save_pt({**fz, "config": base}, results.fz_file(tmp_path, "layer2.0", "center"))  # made before the option
    assert fzs.existing(net, str(tmp_path), "layer2.0", "center", {**base, "post_as_released": False}) is not None
    with pytest.raises(SystemExit, match=r"post_as_released: False vs True"):
        fzs.existing(net, str(tmp_path), "layer2.0", "center", {**base, "post_as_released": True})
    assert "post_as_released" in results.FZ_MATCH_KEYS  # In and Pre FZs used together must agree on it


def test_fzs_py_released_run_records_the_sum(tmp_path, model, fixture_weights):
    """fzs.py --post_as_released true end to end: the file records the flag, and its stored objective is the block
    output's sum on the stored image (the ReLU input, hooked on the full model), which can be negative."""
    run("--layers", "layer2.0", "--channels", "0:4", "--batch", "4", "--steps", "1", "--weights", fixture_weights, "--amp", "fp32",
        "--post_as_released", "true", "--results", str(tmp_path), "--png", "false")
    fz = results.read_fz(str(tmp_path), "layer2.0", "center")
    assert fz["config"]["post_as_released"] is True
    x = stream.normalize(stream.to_float(fz["images"]))
    want = relu_input_forward(model, "layer2.0")(x)[torch.arange(4), fz["channels"], 14, 14]
    assert torch.allclose(fz["activation"], want, atol=1e-4), (fz["activation"], want)
    assert (want < 0).any()  # so that a post-ReLU objective would not give the same numbers
