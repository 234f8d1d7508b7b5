"""atlas.py: the offline HTML atlas of a small run, opened in headless Chromium (Debian's `chromium` package): the
rendered rows, the images that load, sorting and filtering through the page's own script, stable unit links, the
missing pieces and their commands, the random-weights banner. Skips with a reason where Chromium is absent."""

import csv
import html
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import run_in_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def run(*argv):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    p = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, (argv[0], p.stderr[-1500:])
    return p


def run_here(script, *argv, check=True):
    """run() in this process (conftest.run_in_process): for the refusals and the reruns on planted inputs."""
    p = run_in_process(script, *argv)
    assert p.returncode == 0 or not check, (script, p.stderr[-1500:])
    return p


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """A small run: center and channel FZs of block 2.1's channels 0..3, its criteria, the natural stage on 12
    generated images; then the atlas."""
    tmp = tmp_path_factory.mktemp("atlas")
    res = tmp / "results"
    common = ["--weights", "random", "--results", res]
    run("fzs.py", *common, "--layers", "2.1", "--channels", "0:4", "--objectives", "center,channel", "--steps", "3", "--batch", "4")
    run("criteria.py", *common, "--blocks", "2.1", "--batch", "4")
    run("ablate.py", *common, "--data", tmp / "fake", "--fake", "12", "--stages", "natural", "--workers", "0")
    p = run("atlas.py", "--results", res)
    assert "atlas: 7 block pages" in p.stdout
    return res


def dom(path, query="", width=None):
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (Debian: apt install chromium)")
    size = [f"--window-size={width},900"] if width else []
    p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", *size, "--dump-dom",
                        f"file://{path}{query}"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "<html" in p.stdout, p.stderr[-1000:]
    return p.stdout


def rows_of(html_text):
    """Channel of each rendered row, in DOM order, and whether it is shown."""
    rows = [(int(c), "display: none" not in attrs) for c, attrs in re.findall(r"<tr id=\"c(\d+)\"([^>]*)>", html_text)]
    assert rows, "no rows rendered"
    return rows


def status(html_text):
    m = re.search(r'<span id="status"([^>]*)>', html_text)
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', m.group(1)))


def criteria_rows(res):
    with open(res / "criteria.csv", newline="") as f:
        return {int(r["channel"]): r for r in csv.DictReader(f) if r["block"] == "2.1"}


def test_block_page_renders_rows_and_images_in_chromium(atlas):
    page = atlas / "atlas" / "block_2.1.html"
    text = dom(page, "?eager=1")
    rows = rows_of(text)
    assert [c for c, _ in rows] == list(range(128)) and all(shown for _, shown in rows)  # one row per channel of 2.1
    s = status(text)
    # channels 0..3: 6 FZs each; every channel: 3 top-9 montages (all of its layers were read by the natural stage)
    assert int(s["loaded"]) == 4 * 6 + 128 * 3 and int(s["broken"]) == 0, s
    assert text.count(">missing<") == (128 - 4) * 6  # the FZs not made, each with its command as a tooltip
    assert "python fzs.py --layers layer2.0 --channels 4:128" in text
    assert "RANDOM WEIGHTS (random:0)" in text
    assert 'id="c13"' in text  # a stable link: block_2.1.html#c13
    for layer in ("layer2.0", "layer2.1.bn2", "layer2.1"):  # each role's own top-9 and FZ
        assert f'src="../atlas/top9/{layer}/0013.jpg"' in text and f'src="../fzs/{layer}/center/0002.png"' in text


def test_sorting_and_filtering_in_chromium(atlas):
    page = atlas / "atlas" / "block_2.1.html"
    values = criteria_rows(atlas)
    rows = rows_of(dom(page, "?sort=postPre&desc=1"))
    measured = sorted(values, key=lambda c: -float(values[c]["post_pre"]))
    assert [c for c, _ in rows[:4]] == measured  # the measured channels first, by value; blanks last
    rows = rows_of(dom(page, "?sort=channel&desc=1"))
    assert [c for c, _ in rows] == list(range(127, -1, -1))
    mixes = {c: float(v["mix"]) for c, v in values.items() if float(v["post_pre"]) > 0 and float(v["post_in"]) > 0}  # ratios, not conventions
    lo, hi = sorted(mixes.values())[1], 100.0
    rows = rows_of(dom(page, f"?mix={lo}:{hi}"))
    assert {c for c, shown in rows if shown} == {c for c, m in mixes.items() if lo <= m <= hi}
    passing = {c for c, v in values.items() if v["passes"] in ("1", "True", "true")}
    rows = rows_of(dom(page, "?passing=1"))
    assert {c for c, shown in rows if shown} == passing


def test_index_page_counts_and_links(atlas):
    text = dom(atlas / "atlas" / "index.html")
    assert all(f'href="block_{b}.html"' in text for b in ("1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1"))
    assert "not measured" in text and "RANDOM WEIGHTS" in text
    assert re.search(r"<td>4</td><td>\d+ \(\d+\.\d%\)</td>", text)  # block 2.1: 4 measured, its passing count


def test_atlas_without_inputs_is_one_line_error(tmp_path):
    p = run_here("atlas.py", "--results", tmp_path / "none", check=False)
    assert p.returncode == 1 and p.stderr.strip() == f"error: results folder {str(tmp_path / 'none')!r} does not exist"
    (tmp_path / "empty").mkdir()
    p = run_here("atlas.py", "--results", tmp_path / "empty", check=False)
    assert p.returncode == 1 and "holds no results" in p.stderr and "Traceback" not in p.stderr


MEASURE = """<script>(function(){var cols=[];document.querySelectorAll('#units th').forEach(function(th){var r=th.getBoundingClientRect();
cols.push([th.dataset.col||th.textContent,r.left,r.right]);});document.body.dataset.columns=JSON.stringify(cols);
document.body.dataset.width=document.documentElement.clientWidth;window.scrollTo(5000,0);
var c=document.querySelector('#units tbody td').getBoundingClientRect();document.body.dataset.scrolled=JSON.stringify([window.scrollX,c.left,c.right]);
})();</script>"""


def test_criteria_columns_visible_at_1400_px(atlas):
    """In a 1400 px wide window the channel and every criteria column sit on screen without scrolling; scrolled
    right to the images, the channel column stays at the left edge."""
    import json
    text = (atlas / "atlas" / "block_2.1.html").read_text()
    probe = atlas / "atlas" / "block_2.1.probe.html"
    probe.write_text(text.replace("</body>", MEASURE + "</body>"))
    out = dom(probe, width=1400)
    cols = json.loads(html.unescape(re.search(r'data-columns="([^"]*)"', out).group(1)))
    width = int(re.search(r'data-width="(\d+)"', out).group(1))
    assert 1300 < width <= 1400
    where = {name: (left, right) for name, left, right in cols}
    for name in ["channel"] + [camel for camel in ("preIn", "preZoomIn", "postIn", "postPre", "eq1", "eq2", "passes", "mix")]:
        assert 0 <= where[name][0] and where[name][1] <= width, (name, where[name], width)
    assert cols[-1][2] > width  # the images run on, behind the scroll
    scroll_x, left, right = json.loads(html.unescape(re.search(r'data-scrolled="([^"]*)"', out).group(1)))
    assert scroll_x > 500 and 0 <= left < 20 and right > left  # frozen channel column


def test_convention_mix_values_shown_as_such_and_sorted_last(atlas, tmp_path):
    """A dead channel's m = 10 (Post(FZ Pre) <= 0) and an m = 0 (Post(FZ In) <= 0) show with their reason, sort after
    every measured ratio in both directions, and fall outside any mix range."""
    res = tmp_path / "results"
    shutil.copytree(atlas, res)
    path = res / "criteria.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    block = [r for r in rows if r["block"] == "2.1"]
    block[0].update(post_in="1.0", post_pre="1.0", mix="")  # no m at all: after the conventions
    block[1].update(post_pre="0.0", mix="10.0")
    block[2].update(post_in="1.0", post_pre="2.0", mix="0.5")
    block[3].update(post_in="3.0", post_pre="1.0", mix="3.0")
    rows.append(dict(block[3], channel="5", post_in="-0.5", post_pre="1.0", mix="0.0"))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run_here("atlas.py", "--results", res)
    page = res / "atlas" / "block_2.1.html"
    text = dom(page)
    assert "10 (Post(FZ Pre) \u2264 0)" in text and "0 (Post(FZ In) \u2264 0)" in text
    for desc, measured in (("1", [3, 2]), ("0", [2, 3])):
        order = [c for c, _ in rows_of(dom(page, f"?sort=mix&desc={desc}"))]
        assert order[:6] == measured + [1, 5, 0, 4], order  # the ratios, then the conventions, then the channels without m
    shown = {c for c, on in rows_of(dom(page, "?mix=0:100")) if on}
    assert shown == {2, 3}


def test_missing_pieces_say_how_long_they_take(atlas):
    import atlas as atlas_py
    text = (atlas / "atlas" / "block_2.1.html").read_text()
    item = re.search(r"<li><code>python fzs.py --layers layer2.0 --channels 4:128[^<]*</code>([^<]*<span[^>]*>[^<]*)</span></li>", text)
    assert item and "(estimated: under a minute on 2 quiet CPU cores in fp32, several times that on a loaded machine; under a minute on one GPU" in item.group(1)
    # all 4,672 center FZs at 2,560 steps: ~4 days on 2 cores (docs/performance.md), ~2.8 min projected on one H200
    cpu, gpu = atlas_py.fz_seconds(4672, 2560)
    assert atlas_py.duration(cpu) == "about 3.6 days" and atlas_py.duration(gpu) == "about 3 min"
    assert atlas_py.duration(124 * 2560 / 38) == "about 2.3 hours"


def test_released_inputs_are_labelled_and_never_mixed(tmp_path):
    """An atlas of inputs made with --post_as_released true needs the flag (and refuses them without it), names the
    block outputs as read before the ReLU, and its commands for the missing FZs carry the flag."""
    import torch

    import results
    res = tmp_path / "res"
    config = {"arch": "resnet18", "layer": "layer2.0", "objective": "center", "weights": "random:0", "seed": 0, "steps": 2,
              "lr": 0.05, "amp": "fp32", "pre_as_released": False, "batch": 2, "post_as_released": True}
    results.save_pt({"images": torch.zeros(2, 3, 224, 224, dtype=torch.uint8), "channels": torch.tensor([0, 1]),
                     "activation": torch.zeros(2), "config": config}, results.fz_file(res, "layer2.0", "center"))
    p = run_here("atlas.py", "--results", res, check=False)
    assert p.returncode == 1 and "center.pt was made with --post_as_released true, this run is --post_as_released false" in p.stderr
    assert "Traceback" not in p.stderr
    run_here("atlas.py", "--results", res, "--post_as_released", "true")
    page = open(res / "atlas" / "block_2.1.html").read()
    assert "layer2.0 (sum, before ReLU)" in page and "layer2.1 (sum, before ReLU)" in page and "layer2.1.bn2 (sum" not in page
    assert "read before their block's final ReLU" in page
    assert "--post_as_released True" in html.unescape(page)  # the missing FZs' commands make them the same way
    page = open(res / "atlas" / "block_2.0.html").read()  # a downsample In is what it was
    assert "layer2.0 (sum, before ReLU)" in page and "layer2.0.downsample.1 (sum" not in page
    results.save_json({"config": {"arch": "resnet18", "weights_id": "random:0"}, "blocks": {}}, results.criteria_file(res))
    p = run_here("atlas.py", "--results", res, "--post_as_released", "true", check=False)
    assert p.returncode == 1 and "criteria.json was made with --post_as_released false" in p.stderr  # the paper's reading
