"""latency.py (the paper's latency prediction on CORnet-S): the responses at every step, intact and with the t = 0
bypass zeroed, against forward hooks with clone on the full model; a planted latency (the small-scale drive through
the bypass, the large-scale one through the branch from t = 1) found, and its reverse; the bypass control."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import arch
import latency
import stream
from conftest import build_cornet_fixture
from imagenet import zoom_views, zooms

net = arch.net(arch.CORNET)
FRACTIONS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]


def hooked_steps(model, x, area, zero_bypass=False):
    """[Post_t] of `area` from the full model's forward: a hook on its nonlin3 keeps a clone of every call (call t is step
    t); zero_bypass: a hook on its norm_skip returns zeros (norm_skip runs at t = 0 only)."""
    calls, handles = [], []
    m = getattr(model, area)
    handles.append(m.nonlin3.register_forward_hook(lambda _m, _i, out: calls.append(out.clone())))
    if zero_bypass:
        handles.append(m.norm_skip.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def test_responses_equal_hooks_on_the_full_model_intact_and_bypass_zeroed():
    model = build_cornet_fixture()
    x = stream.normalize(torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(3)))
    areas = list(latency.TIMES)
    acts = latency.responses(model, x, areas)
    units, steps, columns = latency.unit_columns(net, areas)
    assert acts.shape == (2, sum(2 * T * net.channels(f"{a}.output_0") for a, T in latency.TIMES.items()))
    for a, T in latency.TIMES.items():
        rows = [g for g, (aa, _) in enumerate(units) if aa == a]
        chans = [units[g][1] for g in rows]
        intact, zeroed = hooked_steps(model, x, a), hooked_steps(model, x, a, zero_bypass=True)
        assert len(intact) == len(zeroed) == T and (steps[rows] == T).all()
        for t in range(T):
            want, want_zeroed = stream.center(intact[t])[:, chans], stream.center(zeroed[t])[:, chans]
            assert torch.allclose(acts[:, columns[rows, t]], want, atol=1e-5, rtol=1e-4), (a, t)
            assert torch.allclose(acts[:, columns[rows, T_MAX + t]], want_zeroed, atol=1e-5, rtol=1e-4), (a, t)
            assert not torch.allclose(want, want_zeroed, atol=1e-3)  # zeroing the bypass changes the step: the test has teeth
        # and the intact steps are the stream's Post_t (stream.features walks the steps its own way)
        feats = stream.features(net, model, x, [f"{a}.output_{t}" for t in range(T)])
        for t in range(T):
            assert torch.allclose(acts[:, columns[rows, t]], stream.center(feats[f"{a}.output_{t}"])[:, chans], atol=1e-5, rtol=1e-4)


T_MAX = max(latency.TIMES.values())


# ----------------------------------------------------------------------------------------------------
# A planted latency: V2's channels PASSING get their small-scale drive through the bypass (t = 0) and their
# large-scale drive through the branch (from t = 1); OTHER get both through the bypass. The stimulus is a red disk on
# green: zoomed out, the center neuron's receptive field sees mostly green (the small-scale drive), zoomed in mostly red.

PASSING, OTHER, RELAY = range(6), range(6, 12), 127


def planted(swapped=False):
    """CORnet-S with every weight zero but the planted paths (identity BatchNorms); swapped: the drives exchanged."""
    model = arch.build(arch.CORNET)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1)
        v1, v2 = model.V1, model.V2
        v1.conv1.weight[0, 0] = v1.conv1.weight[1, 1] = 1 / 49  # V1 channel 0: the red fraction of a 7 x 7 patch, 1: green
        v1.norm1.bias[0], v1.norm1.bias[1] = 0.485 / 0.229, 0.456 / 0.224  # (0 where the colour is absent)
        v1.conv2.weight[0, 0, 1, 1] = v1.conv2.weight[1, 1, 1, 1] = 1
        v2.conv_input.weight[0, 0] = v2.conv_input.weight[1, 1] = 1
        small, large = (0, 1) if swapped else (1, 0)  # green is the small-scale drive, red the large-scale one
        for c in PASSING:
            v2.skip.weight[c, small] = 1  # through the bypass, at t = 0
            v2.conv3.weight[c, 0] = 1  # through the branch, from t = 1 (fed by the relay)
        for c in OTHER:
            v2.skip.weight[c, 0] = v2.skip.weight[c, 1] = 1
        v2.skip.weight[RELAY, large] = 1  # Post_0's relay channel carries the large-scale drive into the branch at t = 1
        v2.conv1.weight[0, RELAY] = 1
        v2.conv2.weight[0, 0, 1, 1] = 1
        v2.norm3_0.weight.zero_()  # no branch at t = 0
    return model.eval().requires_grad_(False)


def disk(radius):
    image = Image.new("RGB", (224, 224), (0, 255, 0))
    ImageDraw.Draw(image).ellipse((112 - radius, 112 - radius, 112 + radius, 112 + radius), fill=(255, 0, 0))
    return image


def planted_stimuli(tmp_path):
    """Natural image 0 (a disk, its eval view) is every unit's top-1; the In and Pre FZ slots hold disks of two sizes
    (224 x 224 views). (dataset, where, units, steps, columns)."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    disk(4).resize((256, 256)).save(folder / "disk.png")  # its eval view (resize 256, crop 224) is a disk of radius ~4.6
    units, steps, columns = latency.unit_columns(net, ["V2"])
    fz = torch.stack([torch.from_numpy(np.array(disk(r))).permute(2, 0, 1) for r in (4, 3)])
    where = np.array([(0, g, 0) for g in range(len(units))] + [(1 + i, g, 1 + i) for g in range(len(units)) for i in range(2)])
    where = where[np.argsort(where[:, 0], kind="stable")]
    return latency.Stimuli(str(folder), ["disk.png"], [0], fz, FRACTIONS), where, units, steps, columns


def measure(model, dataset, where, units, columns, path, batch=3):
    return latency.measure(model, ["V2"], dataset, where, columns, (len(units), 3, columns.shape[1], len(zooms(FRACTIONS))),
                           torch.device("cpu"), batch, 0, str(path), {"test": 1}, 30.0)


def measured(model, tmp_path, permutations=2000):
    """The stage's measurement and analysis of V2 on the planted network (planted_stimuli)."""
    dataset, where, units, steps, columns = planted_stimuli(tmp_path)
    zoom = zooms(FRACTIONS)
    state = measure(model, dataset, where, units, columns, tmp_path / "values.pt")
    r = latency.response_curves(state["values"], steps)
    m = latency.unit_measures(r[:, :, :, :2], zoom)
    passing, other = np.isin(np.arange(len(units)), PASSING), np.isin(np.arange(len(units)), OTHER)
    return r, m, {s: latency.area_test(m, i, passing, other, permutations, 0) for i, s in enumerate(latency.SETS)}


@pytest.mark.parametrize("swapped", [False, True])
def test_planted_latency_is_found_and_its_reverse(tmp_path, swapped):
    r, m, tests = measured(planted(swapped), tmp_path)
    zoom = np.array(zooms(FRACTIONS))
    for i, s in enumerate(latency.SETS):
        shift = m["onset_shift"][:, i, 0]
        assert np.isfinite(shift[list(PASSING) + list(OTHER)]).all()
        if swapped:  # the small-scale drive arrives through the branch, later
            assert (shift[list(PASSING)] > 0).all(), (s, shift[list(PASSING)])
        else:
            assert (shift[list(PASSING)] < 0).all(), (s, shift[list(PASSING)])
            assert (m["onset"][list(PASSING), i, 0][:, zoom == 0.5] == 0).all() and (m["onset"][list(PASSING), i, 0][:, zoom > 1] == 1).all()
        assert (shift[list(OTHER)] == 0).all()  # both drives at t = 0: no difference
        t = tests[s]["intact"]
        assert t["passing"]["n"] == t["other"]["n"] == 6 and t["other"]["mean_shift"] == 0
        if swapped:
            assert t["passing"]["mean_shift"] > 0 and t["passing"]["p_earlier"] == 1.0 and t["passing_vs_other"]["auc"] == 1.0
        else:
            assert t["passing"]["mean_shift"] < 0 and t["passing"]["share_earlier"] == 1.0
            assert t["passing"]["p_earlier"] == pytest.approx(1 / 64) and t["passing_vs_other"]["auc"] == 0.0
        assert t["passing_vs_other"]["p"] < 0.01
        # the control: zeroing the t = 0 bypass removes the early response (the planted t = 0 drive is the bypass's)
        c = tests[s]["control"]["passing"]
        assert c["n"] == 6 and c["early_small_intact"] > 0.2 and c["early_small_bypass_zeroed"] == 0 and c["p_lowered"] == pytest.approx(1 / 64)
        assert np.all(r[list(PASSING), i, 1, 0] == 0)  # Post_0 = ReLU(Pre_0) = 0 with the bypass zeroed: no branch at t = 0
        assert np.all(r[list(PASSING), i, 0, 0, zoom == 0.5] > 0)


def test_the_stimuli_are_zoomed_as_tuning_py_zooms():
    """Natural images get the eval view's zooms (as tuning.py's ZoomFolder); FZs, already 224 x 224 views, are zoomed
    as they are."""
    import torchvision.transforms.functional as TF
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
    views = zoom_views(image, FRACTIONS, eval_view=False)
    assert torch.equal(views[len(views) // 2], TF.pil_to_tensor(image))  # zoom 1 is the FZ itself
    side = round(224 * 0.5)
    want = TF.pil_to_tensor(TF.resize(TF.center_crop(image, side), [224, 224], interpolation=TF.InterpolationMode.BILINEAR))
    assert torch.equal(views[-1], want)
    assert not torch.equal(zoom_views(image, FRACTIONS)[len(views) // 2], views[len(views) // 2])  # the eval view resizes


def test_shift_is_small_zooms_minus_large_ones_leaving_zoom_one_out():
    from stats import small_minus_large
    zoom = [0.5, 0.8, 1.0, 1.25, 2.0]
    v = np.array([[0.0, 1.0, 9.0, 2.0, 4.0], [np.nan, 2.0, 0.0, 1.0, np.nan]])
    assert np.allclose(small_minus_large(v, zoom), [0.5 - 3.0, 2.0 - 1.0])
    assert np.isnan(small_minus_large(np.array([np.nan, np.nan, 1.0, 1.0, 1.0]), zoom))


class Interrupt(latency.Stimuli):
    """The planted stimuli, with a Ctrl-C when item `at` is read."""

    def __getitem__(self, i):
        if i == self.at:
            raise KeyboardInterrupt
        return super().__getitem__(i)


def test_an_interrupted_measurement_resumes_to_the_same_values(tmp_path):
    model = planted()
    dataset, where, units, steps, columns = planted_stimuli(tmp_path)
    whole = measure(model, dataset, where, units, columns, tmp_path / "whole.pt", batch=1)
    cut = Interrupt(dataset.root, dataset.paths, dataset.ids, dataset.fz, dataset.fractions)
    cut.at = 2
    with pytest.raises(KeyboardInterrupt):
        measure(model, cut, where, units, columns, tmp_path / "cut.pt", batch=1)
    saved = torch.load(tmp_path / "cut.pt", weights_only=False)
    assert saved["done"] == 2 and np.isnan(saved["values"][:, 2]).all()  # the two stimuli in, the Pre FZ slot not yet
    again = measure(model, dataset, where, units, columns, tmp_path / "cut.pt", batch=1)
    assert again["done"] == 3 and np.array_equal(again["values"], whole["values"], equal_nan=True)
    with pytest.raises(SystemExit, match="was made under another config"):
        latency.measure(model, ["V2"], dataset, where, columns, whole["values"].shape, torch.device("cpu"), 1, 0,
                        str(tmp_path / "cut.pt"), {"test": 2}, 30.0)
