"""crosscoder.py: the group crosscoder on PLANTED dictionaries (known latents of every type, superposed, with sparse
codes and noise): recovery, type classification and the summation test against its decoys; the definitions one by
one (per-block scales, the encoder's blocks, TopK per sample, AuxK on dead latents, the alignment's role); two runs
giving the same bytes and a kill -9 resuming to the same bytes; the data stage against torchvision crops on PIL and
forward hooks with clone on the fixture folder."""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import arch
import crosscoder as cc
import plot_crosscoder
from conftest import run_in_process

net = arch.net("resnet18")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOOM = [0.5, 0.7071, 1.0, 1.4142, 2.0]
COS = 0.95  # a planted latent is recovered when a learned atom has at least this cosine with it (whole concatenation)
SHARE = 0.85  # ... and at least this share of the planted latents must be recovered
EXPECT = {"summation-aligned": "summation", "summation-superposed": "summation", "decoy-reversed": "invariant",
          "decoy-misaligned": "invariant", "decoy-post-varies": "equivariant", "equivariant-small": "equivariant",
          "equivariant-large": "equivariant"}


def bump(center, floor=0.1, width=0.6):
    """A norm curve over ZOOM peaking at `center` (Gaussian in log2 zoom, on a floor)."""
    lz = np.log2(ZOOM)
    return floor + np.exp(-(lz - np.log2(center)) ** 2 / (2 * width ** 2))


def planted(seed=0, C=16, n=2048, k=3, noise=0.01):
    """(acts (n, 3, Z, C), the planted decoder (F, 3, Z, C), each latent's kind). 28 latents in C = 16 channels per block
    (superposition); each sample sums k of them with uniform(0.5, 1.5) codes, plus Gaussian noise. Summation latents:
    In peaks at 0.5x, Pre at 2x, both along one direction u, Post flat; half with Post on one channel (aligned), half
    spread evenly over 8 channels (superposed: best channel cosine 1/sqrt(8) = 0.35). Decoys: In/Pre peaks reversed;
    In and Pre orthogonal; Post peaking at 1x (SI 0.3). Equivariant: every role peaking at 0.5x or 2x."""
    rng = np.random.default_rng(seed)
    Z = len(ZOOM)
    kinds = (["summation-aligned"] * 5 + ["summation-superposed"] * 5 + ["decoy-reversed"] * 4 + ["decoy-misaligned"] * 4 +
             ["decoy-post-varies"] * 4 + ["equivariant-small"] * 3 + ["equivariant-large"] * 3)
    dec = np.zeros((len(kinds), 3, Z, C))
    for f, kind in enumerate(kinds):
        u = rng.normal(size=C)
        u /= np.linalg.norm(u)
        w = rng.normal(size=C)
        w -= (w @ u) * u
        w /= np.linalg.norm(w)
        post = np.zeros(C)
        if kind == "summation-aligned":
            post[rng.integers(C)] = 1.0
        else:
            post[rng.choice(C, 8, replace=False)] = 1 / np.sqrt(8)
        n_in, n_pre, n_post, d_pre = bump(0.5), bump(2.0), np.ones(Z), u
        if kind == "decoy-reversed":
            n_in, n_pre = bump(2.0), bump(0.5)
        elif kind == "decoy-misaligned":
            d_pre = w
        elif kind == "decoy-post-varies":
            n_post = bump(1.0)
        elif kind.startswith("equivariant"):
            z0 = 0.5 if kind.endswith("small") else 2.0
            n_in, n_pre, n_post, d_pre = bump(z0), bump(z0), bump(z0), w
        dec[f, 0], dec[f, 1], dec[f, 2] = n_in[:, None] * u, n_pre[:, None] * d_pre, n_post[:, None] * post
    codes = np.zeros((n, len(kinds)))
    for i in range(n):
        codes[i, rng.choice(len(kinds), k, replace=False)] = rng.uniform(0.5, 1.5, k)
    acts = np.einsum("nf,frzc->nrzc", codes, dec) + noise * rng.normal(size=(n, 3, Z, C))
    return acts.astype(np.float32), dec, kinds


TRAIN = dict(expansion=2, top_k=3, auxk=16, dead_steps=50, lr=0.005, epochs=30, batch=64, seed=0, precision="fp32")
OPTS = {"si_min": 0.75, "sum_cos": 0.7, "channel_cos": 0.5, "post_min": 0.1}


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """The planted data, and what the crosscoder learns and reads from it (zoom1 encoder), one thread (small matmuls)."""
    acts, dec, kinds = planted()
    folder = str(tmp_path_factory.mktemp("cc"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_at, held_at = cc.split(len(acts), 0.2, 0)
        summary, rows = cc.crosscode_block("p", acts, ZOOM, train_at, held_at, None, {"train": {**TRAIN, "encoder": "zoom1"}, **OPTS},
                                           folder, {"t": 1}, 1e9, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    saved = torch.load(os.path.join(folder, "crosscoder", "p.pt"), weights_only=False)
    return acts, dec, kinds, summary, rows, saved


def matches(dec, saved):
    """(best cosine, index of the best learned atom) for every planted latent, over the whole concatenation."""
    w = saved["params"]["w_dec"].numpy().reshape(-1, *dec.shape[1:]) * saved["scale"].numpy()[None, :, :, None]
    cos = cc.unit(dec.reshape(len(dec), -1)) @ cc.unit(w.reshape(len(w), -1)).T
    return cos.max(1), cos.argmax(1)


def test_planted_latents_are_recovered_and_typed(learned):
    acts, dec, kinds, summary, rows, saved = learned
    best, arg = matches(dec, saved)
    assert (best >= COS).mean() >= SHARE, np.round(np.sort(best), 2)
    types = np.array(saved["types"])
    for f, kind in enumerate(kinds):
        if best[f] >= COS:  # each recovered latent gets its planted type: the summation test separates the decoys
            assert types[arg[f]] == EXPECT[kind], (f, kind, types[arg[f]])
    for kind in EXPECT:  # every type is recovered
        assert any(best[f] >= COS for f in range(len(kinds)) if kinds[f] == kind), kind
    # superposition: aligned summation latents have a channel, superposed ones none (Post's block, not In's or Pre's)
    for f, kind in enumerate(kinds):
        if best[f] >= COS and kind.startswith("summation"):
            planted_channel = int(np.argmax(dec[f, 2, 2]))
            if kind == "summation-aligned":
                assert saved["channel_cos"][arg[f]] > 0.9 and saved["channel"][arg[f]] == planted_channel
            else:
                assert saved["channel_cos"][arg[f]] < 0.5
    assert summary["alignment"]["summation"] == summary["counts"]["summation"] >= 8
    assert summary["alignment"]["aligned"] >= 4 and summary["alignment"]["none"] >= 4
    assert summary["fve_heldout_mean"] > 0.9 and len(rows) == len(types)
    assert summary["counts"]["equivariant_by_zoom"]["0.5"] >= 2 and summary["counts"]["equivariant_by_zoom"]["2"] >= 2
    # each latent's top-9 samples, against codes recomputed in numpy (encoder on the zoom-1 blocks, TopK per row, ReLU)
    p = {k: v.numpy().astype(np.float64) for k, v in saved["params"].items()}
    x = (acts / saved["scale"].numpy()[None, :, :, None]).reshape(len(acts), 3, 5, 16)
    pre = (x.reshape(len(x), -1) - p["b_dec"]).reshape(len(x), 3, 5, 16)[:, :, 2].reshape(len(x), -1) @ p["w_enc"] + p["b_enc"]
    kth = np.sort(pre, axis=1)[:, -3][:, None]
    codes = np.where(pre >= kth, np.maximum(pre, 0), 0)
    for f in np.flatnonzero(saved["fires"])[:8]:
        assert np.allclose(np.sort(codes[:, f])[::-1][:9], saved["top9_code"][f], rtol=1e-4, atol=1e-5)
        assert set(saved["top9"][f][:3]) == set(np.argsort(-codes[:, f], kind="stable")[:3])


def test_reading_on_a_hand_made_decoder():
    """The reading on exact planted atoms: norms, SI (tuning.py's, from stats), preferred zooms, transform profile,
    In/Pre cosine, Post's channel; and the summation rule against each decoy."""
    _acts, dec, kinds = planted(n=8)
    r = cc.read_dictionary(dec, ZOOM)
    assert np.allclose(r["norms"][0, 0], bump(0.5)) and np.allclose(r["si"][0, 2], 1.0)
    assert r["preferred"][0].tolist() == [0.5, 2.0, 0.5]  # Post flat: the first zoom
    assert np.allclose(r["profile"][0, 0], 1.0) and r["profile"].shape == (len(kinds), 3, 5, 5)
    types = cc.latent_types(r, np.ones(len(kinds), bool), **{k: OPTS[k] for k in ("si_min", "sum_cos", "post_min")})
    assert [str(t) for t in types] == [EXPECT[k] for k in kinds]
    fires = np.ones(len(kinds), bool)
    fires[0] = False
    assert cc.latent_types(r, fires, 0.75, 0.7, 0.1)[0] == "dead"
    no_post = dec.copy()
    no_post[1, 2] *= 0.01
    assert cc.latent_types(cc.read_dictionary(no_post, ZOOM), np.ones(len(kinds), bool), 0.75, 0.7, 0.1)[1] == "other"
    aligned = [f for f, k in enumerate(kinds) if k == "summation-aligned"]
    assert np.allclose(r["channel_cos"][aligned], 1.0) and (r["channel_cos"][5:10] < 0.4).all()
    t = cc.alignment_table(types, r["channel"], r["channel_cos"], {int(r["channel"][0])}, 0.5)
    assert t == {"summation": 10, "aligned": 5, "none": 5, "passing": sum(r["channel"][aligned] == r["channel"][0]),
                 "non_passing": 5 - sum(r["channel"][aligned] == r["channel"][0])}
    assert "passing" not in cc.alignment_table(types, r["channel"], r["channel_cos"], None, 0.5)


def test_block_scales_make_the_loss_the_mean_of_one_minus_fve():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3, 2, 4)) * np.array([1.0, 100.0, 0.01])[None, :, None, None] + 5
    s = cc.block_scales(x)
    for r in range(3):  # independently: the standard deviation of each block's vectors, by loops
        for z in range(2):
            v = x[:, r, z]
            assert np.isclose(s[r, z], np.sqrt(np.mean(np.sum((v - v.mean(0)) ** 2, 1))))
    scaled = torch.as_tensor((x / s[None, :, :, None]).reshape(400, -1))
    hat = scaled.clone().view(400, 3, 2, 4)
    hat[:, 1, 0] = scaled.view(400, 3, 2, 4)[:, 1, 0].mean(0)  # one block predicted by its mean: FVE 0 there, 1 elsewhere
    mse = cc.block_mse(scaled, hat.reshape(400, -1), 2)
    assert np.isclose(float(mse.mean()), 1 / 6) and np.isclose(float(mse[1, 0]), 1.0)
    fve = cc.fve_blocks(x, (hat.numpy() * s[None, :, :, None]), x.mean(0))
    assert np.isclose(fve[1, 0], 0.0) and np.allclose(np.delete(fve.ravel(), 2), 1.0)


def test_the_held_out_split_is_disjoint_seeded_and_its_size():
    train, held = cc.split(100, 0.2, 0)
    assert len(held) == 20 and len(train) == 80 and not set(train) & set(held) and set(train) | set(held) == set(range(100))
    assert (cc.split(100, 0.2, 0)[1] == held).all() and not (cc.split(100, 0.2, 1)[1] == held).all()
    assert [len(v) for v in cc.split(2, 0.01, 0)] == [1, 1]  # at least one of each


def test_the_encoder_reads_the_blocks_it_says():
    Z, C = 5, 4
    p = cc.init_params(12, Z, C, cc.encoder_columns(Z, C, 2, "zoom1"), np.zeros(3 * Z * C), 0, torch.float32)
    x = torch.randn(6, 3 * Z * C)
    cols = torch.as_tensor(cc.encoder_columns(Z, C, 2, "zoom1"))
    base = cc.encode(p, x, cols, 3)[1]
    for r in range(3):
        for z in range(Z):
            y = x.clone().view(6, 3, Z, C)
            y[:, r, z] += 5
            changed = not torch.allclose(cc.encode(p, y.reshape(6, -1), cols, 3)[1], base)
            assert changed == (z == 2), (r, z)
    assert len(cc.encoder_columns(Z, C, 2, "all")) == 3 * Z * C


def test_topk_is_per_sample():
    p = cc.init_params(20, 1, 4, cc.encoder_columns(1, 4, 0, "all"), np.zeros(12), 0, torch.float32)
    with torch.no_grad():
        p["b_enc"] += 10.0  # every pre-activation positive: each sample keeps exactly k
    x = torch.randn(8, 12) * torch.logspace(-2, 2, 8)[:, None]  # very different norms: a batch-wide TopK would favour the large
    codes, pre = cc.encode(p, x, torch.arange(12), 3)
    assert ((codes > 0).sum(1) == 3).all()
    for i in range(8):
        assert set(torch.nonzero(codes[i]).ravel().tolist()) == set(pre[i].topk(3).indices.tolist())


def test_auxk_trains_the_dead_latents_only():
    p = cc.init_params(6, 1, 3, np.arange(9), np.zeros(9), 0, torch.float64)
    dead = torch.tensor([False, False, False, False, True, True])
    pre = torch.tensor([[0.0, 0.0, 0.0, 0.0, 2.0, -1.0]], dtype=torch.float64)
    residual = 2.0 * p["w_dec"][4:5].detach()  # exactly what dead latent 4 writes at its pre-activation
    with torch.no_grad():
        assert float(cc.auxk_loss(p, pre, residual, dead, 1)) < 1e-20
        assert float(cc.auxk_loss(p, pre, residual, ~dead, 1)) > 0.5  # live latents (all at 0) explain nothing
        assert float(cc.auxk_loss(p, pre, residual, torch.zeros(6, dtype=torch.bool), 1)) == 0.0


# ----------------------------------------------------------------------------------------------------
# The script: --activations, identical bytes, resume after kill -9, one-line errors.

ARGS = ["--expansion", "2", "--top_k", "3", "--auxk", "16", "--dead_steps", "50", "--lr", "0.005", "--epochs", "8", "--batch", "64",
        "--workers", "0"]


def run(*args, check=True):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "crosscoder.py"), *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def user_npz(tmp_path_factory):
    acts, _dec, _kinds = planted(n=1024)
    path = str(tmp_path_factory.mktemp("npz") / "acts.npz")
    np.savez(path, acts=acts, zooms=np.array(ZOOM), block="planted", weights="random:0")
    return path


@pytest.fixture(scope="module")
def trained(user_npz, tmp_path_factory):
    """(results folder, printed output) of one crosscoder.py run on the user's array."""
    folder = str(tmp_path_factory.mktemp("trained"))
    return folder, run("--activations", user_npz, "--results", folder, *ARGS).stdout


def test_two_runs_give_the_same_bytes_and_a_kill_resumes_to_them(user_npz, trained, tmp_path):
    (a, out), b, k = trained, str(tmp_path / "b"), str(tmp_path / "k")
    assert "planted" in out and "FVE mean" in out and "RANDOM WEIGHTS" in out and "random weights, not the paper" in out
    run("--activations", user_npz, "--results", b, *ARGS)
    pt = lambda r: open(os.path.join(r, "crosscoder", "planted.pt"), "rb").read()  # noqa: E731
    assert pt(a) == pt(b)
    assert open(os.path.join(a, "crosscoder.csv")).read() == open(os.path.join(b, "crosscoder.csv")).read()
    d = json.load(open(os.path.join(a, "crosscoder.json")))
    assert d["blocks"]["planted"]["latents"] == 32 and d["config"]["encoder"] == "zoom1" and d["config"]["weights"] == "random:0"
    # kill -9 after a checkpoint, then the same command: the same bytes as the uninterrupted run
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "crosscoder.py"), "--activations", user_npz, "--results", k, *ARGS,
                          "--checkpoint_seconds", "0"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpt = os.path.join(k, "crosscoder", ".planted.train.pt")
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if os.path.isfile(ckpt):
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert os.path.isfile(ckpt) and not os.path.isfile(os.path.join(k, "crosscoder", "planted.pt")), "killed too late"
    assert "resuming at epoch" in run("--activations", user_npz, "--results", k, *ARGS).stdout
    assert pt(k) == pt(a)
    assert "is trained, read again" in run("--activations", user_npz, "--results", k, *ARGS).stdout and pt(k) == pt(a)
    p = run("--activations", user_npz, "--results", k, *ARGS, "--epochs", "9", check=False)
    assert p.returncode == 1 and "was made under another config (epochs: 8 vs 9)" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("stop,where", [(2, "before"), (5, "before"), (11, "before"), (5, "inside"), (11, "inside")])
def test_training_stopped_at_a_chosen_step_resumes_to_the_same_bytes(stop, where, tmp_path, monkeypatch, capsys):
    """Deterministic, in process, where the kill -9 test above lands by luck of timing: training (4 steps an epoch, 3
    epochs) stops with an exception at step `stop`: inside the first epoch (2), at the start of the second, after one
    epoch is logged (5), in the last (11). Before the step (a Ctrl-C: the stop saves the state, no other checkpoint), or
    inside it, after Adam's update and before the step is counted (a checkpoint after every step: the last one, before
    the step in flight, must stand, as after a kill -9). The same call then resumes, and the block's file has the
    uninterrupted run's bytes: parameters, Adam state, batch order, dead-latent counters, and also the log, whose dicts
    must not keep the keys read back from the checkpoint (pickle shares a string by identity)."""
    acts, _dec, _kinds = planted(n=256)
    train_at, held_at = cc.split(len(acts), 0.2, 0)
    opts = {"train": {**TRAIN, "epochs": 3, "encoder": "zoom1"}, **OPTS}
    block = lambda folder, every: cc.crosscode_block("p", acts, ZOOM, train_at, held_at, None, opts, str(tmp_path / folder),  # noqa: E731
                                                     {"t": 1}, every, torch.device("cpu"))
    name = "train_step" if where == "before" else "apply_step"
    real, calls = getattr(cc, name), []

    def stops(*a):
        calls.append(1)
        if len(calls) == stop and where == "before":
            raise KeyboardInterrupt
        out = real(*a)
        if len(calls) == stop:
            raise KeyboardInterrupt
        return out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole_summary, _ = block("whole", 1e9)
        monkeypatch.setattr(cc, name, stops)
        with pytest.raises(KeyboardInterrupt):
            block("broken", 1e9 if where == "before" else 0.0)
        monkeypatch.setattr(cc, name, real)
        ckpt = torch.load(cc.crosscoder_checkpoint(str(tmp_path / "broken"), "p"), weights_only=False)
        done = stop - 1  # steps counted; the checkpoint after the last of them ends its epoch only if the stop saved it
        epoch, batch = (done // 4, done % 4) if where == "before" else ((done - 1) // 4, (done - 1) % 4 + 1)
        assert (ckpt["epoch"], ckpt["batch"], len(ckpt["log"]), float(ckpt["opt"]["state"][0]["step"])) == (epoch, batch, epoch, done)
        assert not os.path.isfile(cc.crosscoder_model(str(tmp_path / "broken"), "p"))
        capsys.readouterr()
        broken_summary, _ = block("broken", 1e9)
    finally:
        torch.set_num_threads(threads)
    assert f"resuming at epoch {epoch + 1}, batch {batch}" in capsys.readouterr().out
    files = [open(cc.crosscoder_model(str(tmp_path / f), "p"), "rb").read() for f in ("whole", "broken")]
    assert files[0] == files[1] and broken_summary == whole_summary
    assert not os.path.isfile(cc.crosscoder_checkpoint(str(tmp_path / "broken"), "p"))


def test_plot_crosscoder_draws_every_figure(trained, tmp_path):
    folder = str(tmp_path / "r")
    shutil.copytree(trained[0], folder)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "plot_crosscoder.py"), "--results", folder], capture_output=True, text=True,
                       cwd=ROOT)  # a real process: the data-stage test below runs the script in this process
    assert p.returncode == 0, p.stderr[-2000:]
    for name in ("crosscoder_profiles_planted", "crosscoder_norms_planted", "crosscoder_si"):
        for ext in ("png", "pdf"):
            path = os.path.join(folder, "figures", f"{name}.{ext}")
            assert os.path.getsize(path) > 10000, path
    cc_ = torch.load(os.path.join(folder, "crosscoder", "planted.pt"), weights_only=False)
    top = plot_crosscoder.most_frequent(cc_["types"], cc_["frequency"], "summation", 4)
    freq = np.asarray(cc_["frequency"])[top]
    assert len(top) == 4 and (np.diff(freq) <= 0).all() and all(cc_["types"][f] == "summation" for f in top)


def test_bench_crosscoder_prints_its_ratios(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_crosscoder.py"), "--fake", "2", "--limit", "2",
                        "--fake_dir", str(tmp_path / "jpegs"), "--n", "512", "--channels", "8", "--steps", "4", "--train_batch", "128"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert p.returncode == 0, p.stderr[-2000:]
    diff = float(p.stdout.split("largest difference between the two: ")[1].split()[0])
    assert diff < 1e-3 and "speed-up" in p.stdout
    for precision in ("fp32", "bf16", "fp64"):
        assert f"  {precision}: " in p.stdout and "steps/s" in p.stdout


def test_bad_activations_are_one_line(tmp_path, monkeypatch):
    bad = str(tmp_path / "bad.npz")

    def refused(path):
        monkeypatch.setattr(sys, "argv", ["crosscoder.py", "--activations", path, "--results", str(tmp_path / "r")])
        with pytest.raises(SystemExit) as e:
            cc.main()
        return str(e.value)
    np.savez(bad, acts=np.zeros((4, 2, 3, 5)), zooms=np.array([0.5, 1, 2]))
    assert "must be (N >= 2, 3, Z, C)" in refused(bad)
    assert "no such file" in refused(str(tmp_path / "none.npz"))
    np.savez(bad, acts=np.zeros((4, 3, 2, 5)), zooms=np.array([0.5, 2]))
    assert "needs the zoom 1" in refused(bad)
    np.savez(bad, acts=np.zeros((4, 3, 2, 5)), zooms=np.array([2, 1]))
    assert "ascending" in refused(bad)


# ----------------------------------------------------------------------------------------------------
# The data stage on the fixture folder, against torchvision crops on PIL and forward hooks with clone.

def test_data_stage_equals_torchvision_and_hooks(fixture_folder, fixture_weights, fixture_model, tmp_path):
    folder = str(tmp_path / "res")
    p = run_in_process("ablate.py", "--data", fixture_folder[0], "--weights", fixture_weights, "--results", folder, "--stages", "natural",
                       "--workers", "0", "--limit", "6")
    assert p.returncode == 0, p.stderr[-2000:]
    run("--results", folder, "--weights", fixture_weights, "--blocks", "2.1", "--fractions", "1,0.5", "--data_batch", "4", *ARGS)
    summary = torch.load(os.path.join(folder, "natural", "summary.pt"), weights_only=False)
    data = torch.load(os.path.join(folder, "crosscoder", "data", "summary.pt"), weights_only=False)
    assert data["zooms"] == [0.5, 1.0, 2.0] and list(data["ids"]) == list(range(6)) and data["layers"] == list(net.blocks["2.1"])
    mean = tuple(round(255 * m) for m in (0.485, 0.456, 0.406))
    for i in (0, 5):
        with Image.open(os.path.join(summary["root"], summary["paths"][i])) as im:
            view = T.Compose([T.Resize(256), T.CenterCrop(224)])(im.convert("RGB"))
        side = 112
        views = [T.Compose([T.Resize((side, side)), T.Pad((56, 56, 56, 56), fill=mean)])(view), view,
                 T.Compose([T.CenterCrop(112), T.Resize((224, 224))])(view)]
        x = torch.stack([T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(v) for v in views])
        seen = {}
        hooks = [fixture_model.get_submodule(m).register_forward_hook(
            lambda _m, _i, out, m=m: seen.__setitem__(m, out[:, :, out.shape[2] // 2, out.shape[3] // 2].clone()))
            for m in ("layer2.0", "layer2.1.bn2", "layer2.1")]
        with torch.no_grad():
            fixture_model(x)
        for hk in hooks:
            hk.remove()
        for layer in net.blocks["2.1"]:
            got = np.load(os.path.join(folder, "crosscoder", "data", f"{layer}.npy"))[i].astype(np.float32)  # (Z, C)
            expect = seen[layer].numpy()
            assert np.allclose(got, expect, rtol=2e-3, atol=2e-3), (i, layer, np.abs(got - expect).max())
    d = json.load(open(os.path.join(folder, "crosscoder.json")))
    assert set(d["blocks"]) == {"2.1"} and d["blocks"]["2.1"]["latents"] == 2 * 128
    saved = torch.load(os.path.join(folder, "crosscoder", "2.1.pt"), weights_only=False)
    assert saved["top9"].shape == (256, 6) and set(saved["top9"].ravel()) <= set(range(6))
    p = run_in_process("plot_crosscoder.py", "--results", folder)
    assert p.returncode == 0, p.stderr[-2000:]
    assert os.path.getsize(os.path.join(folder, "figures", "crosscoder_top9_2.1.png")) > 10000
    p = run_in_process("atlas.py", "--results", folder, "--latents", "5")
    assert p.returncode == 0, p.stderr[-2000:]
    page = open(os.path.join(folder, "atlas", "latents_2.1.html")).read()
    shown = plot_crosscoder.most_frequent(saved["types"], saved["frequency"], "summation", 5).tolist()
    shown += plot_crosscoder.most_frequent(saved["types"], saved["frequency"], "invariant", 5).tolist()
    shown += plot_crosscoder.most_frequent(saved["types"], saved["frequency"], "equivariant", 5).tolist()
    assert page.count("<tr id='l") == 5 and all(f"id='l{f}'" in page for f in shown[:5])
    assert all(os.path.isfile(os.path.join(folder, "atlas", "latents", "2.1", f"{f:05d}.jpg")) for f in shown[:5])
    assert "href='latents_2.1.html'" in open(os.path.join(folder, "atlas", "index.html")).read()
    # each latent's FZ (fzs.py --objectives latent): the command where none is made, the image where it is
    assert page.count("class='missing' title='python fzs.py --layers 2.1 --objectives latent --channels ") == 5
    assert "Missing latent FZs are made by" in page
    made = shown[:2]
    p = run_in_process("fzs.py", "--layers", "2.1", "--objectives", "latent", "--channels", ",".join(map(str, made)), "--batch", "2",
                       "--steps", "2", "--weights", fixture_weights, "--results", folder)
    assert p.returncode == 0, p.stderr[-2000:]
    p = run_in_process("atlas.py", "--results", folder, "--latents", "5")
    assert p.returncode == 0, p.stderr[-2000:]
    page = open(os.path.join(folder, "atlas", "latents_2.1.html")).read()
    for f in made:
        assert f'src="../fzs/layer2.1/latent/{f:04d}.png"' in page and os.path.isfile(os.path.join(folder, "fzs", "layer2.1", "latent", f"{f:04d}.png"))
    assert page.count("class='missing' title='python fzs.py --layers 2.1 --objectives latent --channels ") == 3
    assert "--steps 2" in page and "--batch 2" in page  # the command matches the FZs made, so that fzs.py adds to them
    torch.save({**saved, "log": saved["log"] + [{"retrained": True}]}, os.path.join(folder, "crosscoder", "2.1.pt"))  # another file
    p = run_in_process("atlas.py", "--results", folder, "--latents", "5")
    assert p.returncode == 0, p.stderr[-2000:]
    page = open(os.path.join(folder, "atlas", "latents_2.1.html")).read()
    assert "fzs/layer2.1/latent/" not in page and "was made from another crosscoder file: delete it" in page  # not this file's latents


def test_data_stage_resumes_after_an_interruption_to_the_same_arrays(fixture_folder, fixture_model, tmp_path, monkeypatch):
    root, labels = fixture_folder
    paths, ids, layers = sorted(labels)[:6], np.arange(6), list(net.blocks["2.1"])
    model = copy.deepcopy(fixture_model).to(memory_format=torch.channels_last)  # a copy: Module.to is in place, and the fixture is shared
    config = {"weights": "fixture", "n": 6}
    args = (net, model, root, paths, ids, layers, [1.0, 0.5], torch.device("cpu"), 2, 0)
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    cc.data_stage(*args, whole, config, 1e9)
    real, calls = cc.read_center, []

    def dies_at_the_third_batch(*a):
        calls.append(1)
        if len(calls) > 3 * 2:  # 3 zooms a batch: the third batch dies before its arrays are written
            raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(cc, "read_center", dies_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        cc.data_stage(*args, broken, config, 0.0)
    progress = torch.load(os.path.join(broken, "crosscoder", "data", ".progress.pt"), weights_only=False)
    assert progress["done"] == 4 and not os.path.isfile(os.path.join(broken, "crosscoder", "data", "summary.pt"))
    monkeypatch.setattr(cc, "read_center", real)
    cc.data_stage(*args, broken, config, 1e9)
    for layer in layers:
        a = np.load(os.path.join(whole, "crosscoder", "data", f"{layer}.npy"))
        b = np.load(os.path.join(broken, "crosscoder", "data", f"{layer}.npy"))
        assert a.shape == (6, 3, net.channels(layer)) and np.array_equal(a, b)
    with pytest.raises(SystemExit, match="another config"):
        cc.data_stage(*args, broken, {**config, "n": 7}, 1e9)
