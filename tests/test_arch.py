"""arch.py: the block table derived from the model equals ResNet18's typed-in table; the jitter rule reproduces
METHOD.md's table; and for resnet34 and resnet50 (Bottleneck), with non-trivial BatchNorms, every In / Pre / Post
read by the truncated block forward equals forward hooks that clone on the full torchvision model."""

import pytest
import torch

import arch
import fzs
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


def test_resnet18_table_is_the_typed_in_one():
    model = arch.build("resnet18")
    table = arch.block_table(model)
    assert table == stream.BLOCKS  # block by block, layer by layer
    assert arch.layers_of(table) == stream.LAYERS and arch.residual_blocks(model) == stream.RESIDUAL_BLOCKS
    assert all(arch.channels(model, layer) == stream.n_channels(layer) for layer in stream.LAYERS)
    assert arch.units(model) == 4672


def test_jitter_rule_reproduces_the_resnet18_table():
    assert {b: arch.jitter(b) for b in stream.RESIDUAL_BLOCKS} == fzs.JITTER


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


def test_list_prints_the_table_units_and_cost():
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "arch.py", "--arch", "resnet50"], capture_output=True, text=True,
                       cwd=stream.os.path.dirname(stream.__file__))
    assert p.returncode == 0 and "resnet50: 16 residual blocks, 16 probed" in p.stdout
    assert "layer1.0.downsample.1    layer1.0.bn3" in p.stdout and "34,048 units" in p.stdout and "87.2 M image-steps" in p.stdout
    bad = subprocess.run([sys.executable, "arch.py", "--arch", "resnet19"], capture_output=True, text=True,
                         cwd=stream.os.path.dirname(stream.__file__))
    assert bad.returncode == 1 and "unknown architecture 'resnet19'" in bad.stderr and "Traceback" not in bad.stderr
