"""Fixtures with teeth, shared by the tests.

He-initialised ResNets have identity BatchNorms (weight 1, bias 0, mean 0, var 1) and predict one or two classes
for every image, so a test on them passes with a wrong BatchNorm fold, wrong labels or errors counted as hits.
These fixtures make such mistakes change the numbers:

- `fixture_weights` / `fixture_model`: a ResNet18 state_dict saved as a file (pass it with --weights PATH) whose
  BatchNorms all have non-trivial weight, bias, running mean and running variance (running statistics measured on
  generated images, then perturbed; some bn2 weights negative), and whose head spreads its top-1 predictions over
  CLASSES (ten classes, all of index >= 10, so that labels by folder order are never right);
- `fixture_folder`: a tiny ImageNet folder, root/<wnid>/*.JPEG, with grayscale and CMYK files among them, labelled
  with what that model predicts on the standard eval view (torchvision transforms on PIL). Unablated top-1 is 100%
  by construction (every kept image is predicted with a clear margin), ablations change some counts, and a
  labelling by folder order scores 0.

Tests never read the team's shared data folder (a user's clone has none): everything here is generated.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the scripts are top-level files of the repository
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from PIL import Image  # noqa: E402

import arch  # noqa: E402

net = arch.net("resnet18")  # the paper's tables (tests of other architectures make their own)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASSES = [23, 97, 150, 281, 340, 417, 562, 700, 818, 951]  # the classes the fixture head can predict
EVAL = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])  # the independent eval view
MARGIN = 0.5  # kept images have top-1 logit at least this far above the second (no near-ties between fp32 paths)


def natural_like(rng, h, w):
    """A generated 'photo': a smooth colour field, an oriented grating and a few discs, so channels differ."""
    small = rng.integers(0, 256, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.02, 0.2)
    grating = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 2 * np.pi))
    img = img + grating[..., None] * rng.uniform(-80, 80, 3)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, min(h, w) / 3)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def nontrivial_batchnorms(model, calib, seed):
    """Every BatchNorm of `model` made non-trivial: its running statistics are those of the calibration batch (cumulative
    average, one training-mode pass), then its affine and statistics perturbed (seeded), a tenth of the weights negative.
    Returns the seeded generator, where the perturbation left it."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(calib)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in bns:
            n = bn.num_features
            sign = torch.where(torch.rand(n, generator=g) < 0.1, -1.0, 1.0)
            bn.weight.copy_(sign * (0.5 + torch.rand(n, generator=g)))
            bn.bias.copy_(0.2 * torch.randn(n, generator=g))
            bn.running_mean.add_(0.2 * torch.randn(n, generator=g) * bn.running_var.sqrt())
            bn.running_var.mul_(0.6 + torch.rand(n, generator=g))
            bn.momentum = 0.1
    return g  # its draws go on (the ResNet fixture's head)


def build_fixture_model(seed=0):
    """torchvision's ResNet18 with non-trivial BatchNorms and a head that spreads predictions over CLASSES."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    rng = np.random.default_rng(seed)
    calib = torch.stack([EVAL(natural_like(rng, 256, 256)) for _ in range(24)])
    g = nontrivial_batchnorms(model, calib, seed)
    with torch.no_grad():
        model.eval()
        # the head: standardised pooled features, projected on one random direction per class of CLASSES; the other
        # 990 classes are never predicted
        feats = torch.flatten(model.avgpool(torch.nn.Sequential(*list(model.children())[:-2])(calib)), 1)
        mu, sd = feats.mean(0), feats.std(0) + 1e-3
        w = torch.randn(len(CLASSES), feats.shape[1], generator=g) / feats.shape[1] ** 0.5 * 4
        model.fc.weight.zero_()
        model.fc.bias.fill_(-50.0)
        model.fc.weight[CLASSES] = w / sd
        model.fc.bias[CLASSES] = -(w / sd) @ mu
    return model.requires_grad_(False)


def save_jpeg(image, path, mode):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    (image.convert(mode) if mode != "RGB" else image).save(path, quality=92)


def build_fixture_folder(root, model, n=60, seed=1):
    """Generate n candidate JPEGs, predict each with the model on torchvision's eval view of the decoded file,
    keep those predicted with a clear margin, and file each under the wnid of its predicted class.
    Returns {relative path: label}."""
    from imagenet import WNIDS  # the canonical 1,000-wnid list
    rng = np.random.default_rng(seed)
    staging = os.path.join(root, ".staging")
    kept = {}
    for i in range(n):
        mode = "L" if i % 9 == 4 else "CMYK" if i % 9 == 7 else "RGB"
        path = os.path.join(staging, f"{i:03d}.JPEG")
        save_jpeg(natural_like(rng, int(rng.integers(230, 340)), int(rng.integers(230, 400))), path, mode)
        with Image.open(path) as im:
            x = EVAL(im.convert("RGB"))[None]
        with torch.no_grad():
            top2 = model(x)[0].topk(2)
        if float(top2.values[0] - top2.values[1]) < MARGIN:
            os.remove(path)
            continue
        label = int(top2.indices[0])
        rel = os.path.join(WNIDS[label], f"{mode.lower()}_{i:03d}.JPEG")
        os.makedirs(os.path.join(root, WNIDS[label]), exist_ok=True)
        os.replace(path, os.path.join(root, rel))
        kept[rel] = label
    os.rmdir(staging)
    return dict(sorted(kept.items()))


@pytest.fixture(scope="session")
def fixture_weights(tmp_path_factory):
    """Path of the fixture ResNet18 state_dict (pass it to the scripts with --weights PATH)."""
    path = str(tmp_path_factory.mktemp("weights") / "fixture_resnet18.pth")
    torch.save(build_fixture_model().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def fixture_model(fixture_weights):
    """The fixture model as the scripts load it (eval mode, no weight gradients)."""
    import stream
    return stream.load_model(net.name, fixture_weights)[0]


@pytest.fixture(autouse=True)
def fixture_model_left_as_it_was(request):
    """After every test that used the shared fixture model: it is still as loaded (Module.to and .train are in place, and
    a channels_last or bf16 copy left behind changes the rounding of every later test that compares images bit for bit)."""
    yield
    if "fixture_model" in request.fixturenames:
        m = request.getfixturevalue("fixture_model")
        w = m.conv1.weight
        assert w.is_contiguous() and w.dtype == torch.float32 and w.device.type == "cpu" and not m.training and \
            not any(p.requires_grad for p in m.parameters()), "this test changed the shared fixture model in place: use a copy"


@pytest.fixture(scope="session")
def fixture_folder(tmp_path_factory, fixture_model):
    """(root, {relative path: label}) of the tiny labelled ImageNet folder."""
    root = str(tmp_path_factory.mktemp("imagenet_val"))
    labels = build_fixture_folder(root, fixture_model)
    return root, labels


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                     help="where the tests run: cpu (the default: CUDA is hidden from every test and script, so a GPU "
                          "machine runs the CPU suite), or cuda (the device-aware tests and the scripts run on cuda:0; "
                          "tests that are bit-exact only on the CPU are skipped with their reason)")


CUDA_DIFFERS = ("on CUDA the backward passes of grid_sample, bilinear interpolate and reflect pad add with atomicAdd, and "
                "cuDNN/cuFFT choose kernels by batch size, so two runs can give other last bits and so other 8-bit images")


def pytest_configure(config):
    # kornia 0.4.1 (lucent's pin; imported only by the tests that compare with lucent) calls torch.jit.script at import
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script` is deprecated:FutureWarning")
    config.addinivalue_line("markers", "cpu_exact: bit-exact on the CPU only; skipped under --device cuda (CUDA_DIFFERS)")
    config.addinivalue_line("markers", "cuda_only: runs only under --device cuda")
    if config.getoption("--device") == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything initialises CUDA: subprocesses inherit it
    elif not torch.cuda.is_available():
        pytest.exit("--device cuda: torch sees no CUDA GPU here", returncode=4)


def pytest_collection_modifyitems(config, items):
    cuda = config.getoption("--device") == "cuda"
    for item in items:
        if cuda and "cpu_exact" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="bit-exact on the CPU only: " + CUDA_DIFFERS))
        if not cuda and "cuda_only" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="a GPU measurement: run with --device cuda"))


@pytest.fixture(scope="session")
def device(pytestconfig):
    """The device of the device-aware tests: cpu, or cuda:0 under --device cuda."""
    return torch.device("cuda", 0) if pytestconfig.getoption("--device") == "cuda" else torch.device("cpu")


def relu_inputs(model, x):
    """The independent slow path of --post_as_released: the full torchvision forward with a pre-hook on every block's
    ReLU module that clones its input. A BasicBlock calls its one self.relu twice (after bn1, then on the sum), so a
    block's pre-ReLU sum is the input of its last call; {block output layer: that input}."""
    calls, handles = {}, []
    for name in net.residual:
        relu = model.get_submodule(name).relu
        handles.append(relu.register_forward_pre_hook(lambda m, inp, name=name: calls.setdefault(name, []).append(inp[0].detach().clone())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert all(len(c) == 2 for c in calls.values()) and len(calls) == len(net.residual)
    return {name: c[-1] for name, c in calls.items()}


def run_in_process(script, *args):
    """`python script *args` run in this process, for the tests that run the scripts many times (each process would
    spend seconds importing torch): sys.argv set, main() called, stdout and stderr captured, warnings written to stderr
    as Python's default filters would show them, and a SystemExit read as the process's exit status and last stderr
    line (die's one-line error). Every flag starts at the value its line in the script assigns, as in a new process,
    whatever an earlier main() in this process left; what a process's end would undo is undone: the flags get their
    values back, and the results locks main took are released (the kernel drops a process's flocks when it ends). An
    exception other than SystemExit (what a process would print as a traceback) propagates: the test fails.
    Returns an object with returncode, stdout and stderr, as subprocess.run gives."""
    import ast
    import contextlib
    import importlib
    import io
    import types
    import warnings

    import cli
    import results
    module = importlib.import_module(script.removesuffix(".py"))
    names = cli.flag_names(module.__file__)
    flags = {name: getattr(module, name) for name in names}  # as they are now: put back after
    with open(module.__file__) as f:
        for node in ast.parse(f.read()).body:  # as a new process starts: every flag at the literal its line assigns
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and getattr(node.targets[0], "id", None) in names:
                setattr(module, node.targets[0].id, ast.literal_eval(node.value))
                names = {n: c for n, c in names.items() if n != node.targets[0].id}  # its first line (above FLAGS_END)
    held, argv = len(results._HELD_LOCKS), sys.argv
    out, err, rc, message = io.StringIO(), io.StringIO(), 0, None
    sys.argv = [script, *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("default")  # Python's default filters: once per place, these categories hidden
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            try:
                module.main()
            except SystemExit as e:
                rc, message = (e.code, None) if isinstance(e.code, int) or e.code is None else (1, e.code)
            finally:
                for w in shown:
                    err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
        if message is not None:
            err.write(f"{message}\n")
    finally:
        sys.argv = argv
        for name, value in flags.items():
            setattr(module, name, value)
        for f in results._HELD_LOCKS[held:]:
            f.close()
        del results._HELD_LOCKS[held:]
    return types.SimpleNamespace(returncode=rc or 0, stdout=out.getvalue(), stderr=err.getvalue())


def build_cornet_fixture(seed=0):
    """CORnet-S (arch.CORnetS) with non-trivial BatchNorms: each BatchNorm's running statistics measured on generated
    images (every time step's own, so that the steps' BatchNorms differ), then perturbed, with some negative weights."""
    torch.manual_seed(seed)
    model = arch.build(arch.CORNET)
    rng = np.random.default_rng(seed)
    calib = torch.stack([EVAL(natural_like(rng, 256, 256)) for _ in range(6)])
    nontrivial_batchnorms(model, calib, seed)
    return model.eval().requires_grad_(False)


def official_format(state_dict):
    """A state_dict in the official CORnet-S checkpoint's format: {'state_dict': {'module.' + key: tensor}} (saved from
    a DataParallel model)."""
    return {"epoch": 43, "state_dict": {"module." + k: v for k, v in state_dict.items()}}


@pytest.fixture(scope="session")
def cornet_weights(tmp_path_factory):
    """Path of the CORnet-S fixture checkpoint, in the official format (pass it with --arch cornet_s --weights PATH)."""
    path = str(tmp_path_factory.mktemp("weights") / "fixture_cornet_s.pth")
    torch.save(official_format(build_cornet_fixture().state_dict()), path)
    return path
