"""The device and precision logic on a faked GPU machine: torch.cuda, torch.backends, torch.distributed and torchrun's
environment are replaced by recorders, so that every mistake a CUDA user would meet fails here, on a CPU.

What the real torch.cuda does and the fakes copy: set_device refuses a torch.device without an index; device_count
counts the GPUs; cuDNN's convolutions default to TF32."""

import datetime
import os
import subprocess
import sys
import types

import pytest
import torch

import cli
import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_cuda(count=1, bf16=True, free_gib=100):
    calls = []

    def set_device(d):
        if isinstance(d, torch.device) and d.index is None:  # what torch.cuda.set_device does
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{d}")
        calls.append(str(d))
    return types.SimpleNamespace(is_available=lambda: count > 0, device_count=lambda: count, set_device=set_device,
                                 is_bf16_supported=lambda: True, get_device_name=lambda i=0: "Faked H200",
                                 get_device_capability=lambda d=None: (9, 0) if bf16 else (7, 0),  # H200 / V100
                                 mem_get_info=lambda d=None: (free_gib << 30, 141 << 30), calls=calls)


def fake_backends(new_api=True):
    if new_api:  # torch >= 2.9: fp32_precision settings, cuDNN convolutions in TF32 by default
        return types.SimpleNamespace(cudnn=types.SimpleNamespace(conv=types.SimpleNamespace(fp32_precision="tf32")),
                                     cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(fp32_precision="none")))
    return types.SimpleNamespace(cudnn=types.SimpleNamespace(allow_tf32=True),
                                 cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(allow_tf32=False)))


def test_auto_gives_an_indexed_device_that_set_device_takes():
    cuda = fake_cuda(2)
    device = cli.pick_device("auto", env={}, cuda=cuda)
    assert device == torch.device("cuda", 0) and device.index == 0
    assert cli.pick_device("cuda", env={}, cuda=cuda) == torch.device("cuda", 0)
    assert cli.pick_device("cuda:1", env={}, cuda=cuda) == torch.device("cuda", 1)
    assert cli.use_device(device, "fp32", cuda=cuda, backends=fake_backends()) == "cuda:0 Faked H200"
    assert cuda.calls == ["cuda:0"]
    assert cli.pick_device("auto", env={}, cuda=fake_cuda(0)) == torch.device("cpu")


@pytest.mark.parametrize("name,message", [("cuda:2", r"this machine has 2 GPU\(s\)"), ("tpu", "unknown device"),
                                          ("cuda:x", "unknown device")])
def test_bad_devices_are_one_line_errors(name, message):
    with pytest.raises(SystemExit, match=message):
        cli.pick_device(name, env={}, cuda=fake_cuda(2))
    with pytest.raises(SystemExit, match="sees no CUDA GPU"):
        cli.pick_device("cuda", env={}, cuda=fake_cuda(0))


def test_torchrun_ranks_take_their_local_gpu():
    cuda = fake_cuda(4)
    for local in range(4):
        env = {"WORLD_SIZE": "4", "RANK": str(local), "LOCAL_RANK": str(local)}
        assert cli.pick_device("auto", env=env, cuda=cuda) == torch.device("cuda", local)
        assert cli.pick_device("cuda", env=env, cuda=cuda) == torch.device("cuda", local)
    assert cli.pick_device("cpu", env={"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, cuda=cuda) == torch.device("cpu")


def test_torchrun_rank_without_a_gpu_is_refused():
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3"}
    with pytest.raises(SystemExit, match=r"LOCAL_RANK 3, but this machine has 1 GPU\(s\).*--nproc_per_node=1"):
        cli.pick_device("auto", env=env, cuda=fake_cuda(1))


def test_explicit_device_under_torchrun_is_refused():
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    with pytest.raises(SystemExit, match="each rank runs on cuda:LOCAL_RANK"):
        cli.pick_device("cuda:0", env=env, cuda=fake_cuda(2))


@pytest.mark.parametrize("new_api", [True, False])
def test_tf32_only_under_tf32(new_api):
    for prec, on in (("fp32", False), ("bf16", False), ("tf32", True)):
        backends = fake_backends(new_api)
        cli.use_device(torch.device("cuda", 0), prec, cuda=fake_cuda(1), backends=backends)
        assert cli.tf32_on(backends) is on, prec
        if new_api:
            assert backends.cuda.matmul.fp32_precision == ("tf32" if on else "ieee")
        else:
            assert backends.cuda.matmul.allow_tf32 is on


def test_precision_auto():
    """auto is fp32 everywhere (bf16 moved the results by more than seed noise); AMP_AUTO sets what auto means."""
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert cli.precision("auto", gpu, env={}, cuda=fake_cuda(bf16=True)) == "fp32"
    assert cli.precision("auto", cpu, env={}) == "fp32"
    for forced in ("fp32", "bf16"):  # AMP_AUTO: what auto means, on every device (the suite runs both)
        assert cli.precision("auto", cpu, env={"AMP_AUTO": forced}) == forced
        assert cli.precision("auto", gpu, env={"AMP_AUTO": forced}, cuda=fake_cuda()) == forced
    assert cli.precision("auto", gpu, env={"AMP_AUTO": "bf16"}, cuda=fake_cuda(bf16=False)) == "fp32"  # no bf16 there
    assert cli.precision("fp32", gpu, env={"AMP_AUTO": "bf16"}, cuda=fake_cuda()) == "fp32"  # explicit wins
    with pytest.raises(SystemExit, match="AMP_AUTO must be fp32 or bf16"):
        cli.precision("auto", cpu, env={"AMP_AUTO": "fp16"})
    with pytest.raises(SystemExit, match="tf32 is a GPU mode"):
        cli.precision("tf32", cpu, env={})
    with pytest.raises(SystemExit, match="amp must be"):
        cli.precision("fp16", cpu, env={})


def test_ranks_meet_over_gloo_with_a_long_timeout():
    calls = []
    dist = types.SimpleNamespace(init_process_group=lambda backend, timeout: calls.append((backend, timeout)))
    cli.init_ranks(1, dist)
    assert calls == []
    cli.init_ranks(4, dist)
    assert calls[0][0] == "gloo" and calls[0][1] >= datetime.timedelta(hours=24)


def test_batch_auto_fills_the_card():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert cli.resolve_batch("auto", cpu, 10 << 20, 128, 4096) == 128
    assert cli.resolve_batch("64", gpu, 10 << 20, 128, 4096, cuda=fake_cuda()) == 64
    n = cli.resolve_batch("auto", gpu, 40 << 20, 128, 100000, cuda=fake_cuda(free_gib=100))
    assert n == (100 << 30) // 2 // (40 << 20) // 32 * 32 and n % 32 == 0
    assert cli.resolve_batch("auto", gpu, 40 << 20, 128, 1024, cuda=fake_cuda(free_gib=100)) == 1024
    assert cli.resolve_batch("auto", gpu, 40 << 30, 128, 1024, cuda=fake_cuda(free_gib=1)) == 32
    for bad in ("0", "many", "-4"):
        with pytest.raises(SystemExit, match="--batch"):
            cli.resolve_batch(bad, cpu, 1, 128, 4096)


FAKED_GPU = """
import sys, types, torch
calls = []
def set_device(d):
    if isinstance(d, torch.device) and d.index is None:
        raise ValueError("Expected a torch.device with a specified index or an integer, but got:" + str(d))
    calls.append(str(d))
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.set_device = set_device
torch.cuda.is_bf16_supported = lambda: True
torch.cuda.get_device_capability = lambda d=None: (9, 0)
torch.cuda.get_device_name = lambda i=0: "Faked H200"
torch.cuda.mem_get_info = lambda d=None: (100 << 30, 141 << 30)
import torch.distributed
torch.distributed.init_process_group = lambda *a, **k: print("init_process_group", a, k, flush=True)
import cli
def stop(*a, **k):
    raise SystemExit("reached load_model on " + str(a[2] if len(a) > 2 else k.get("device")) + " after set_device " + ",".join(calls)
                     + "; tf32 " + str(cli.tf32_on()))
script = sys.argv[1]
module = __import__(script[:-3])
module.load_model = stop
sys.argv = sys.argv[1:]
module.main()
"""


@pytest.mark.parametrize("script,extra", [("fzs.py", ["--layers", "layer1.0"]), ("criteria.py", []),
                                          ("tuning.py", []), ("ablate.py", ["--fake", "4"]), ("latency.py", [])])
def test_each_script_starts_on_a_faked_gpu(tmp_path, script, extra):
    """`python SCRIPT` on a machine with one GPU reaches the model load on cuda:0, with set_device given an index
    and TF32 off (fp32 measurements; fzs.py's default bf16 optimisation too)."""
    os.makedirs(tmp_path / "fzs", exist_ok=True)
    arch_name = "cornet_s" if script == "latency.py" else "resnet18"  # latency.py runs on CORnet-S only
    results.save_pt({"config": {"arch": arch_name}}, str(tmp_path / "natural" / "summary.pt"))  # what tuning.py and latency.py read first
    extra = extra + (["--data", str(tmp_path / "val")] if script == "ablate.py" else [])
    p = subprocess.run([sys.executable, "-c", FAKED_GPU, script, *extra, "--results", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert "reached load_model on cuda:0 after set_device cuda:0; tf32 False" in p.stderr, p.stderr[-1500:]
    assert "Traceback" not in p.stderr


def test_fzs_torchrun_with_too_many_ranks_stops_before_the_rendezvous(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "2"}
    p = subprocess.run([sys.executable, "-c", FAKED_GPU, "fzs.py", "--layers", "layer1.0", "--results", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode != 0 and "--nproc_per_node=1" in p.stderr and "init_process_group" not in p.stdout
    assert len(p.stderr.strip().splitlines()) == 1
