"""An atlas of every unit: static, offline HTML pages of what results/ holds, in the spirit of OpenAI Microscope.

    python atlas.py                      # writes results/atlas/index.html and one page per block
    python atlas.py --arch resnet50 --results results_resnet50

- index.html: per block, the counts (FZ criteria; natural-image criteria from tuning.py; channels passing in
  every FZ run from criteria.py --runs; the ablated passing set) and a link to the block page.
- block_<L.B>.html: one row per channel of the block: the In / Pre / Post center FZs and the channel FZs where
  they were made, the top-9 natural images of each (ablate.py's natural stage), the four criteria values, Eq. 1
  and Eq. 2, the mix ratio, and the later stages' values (natural-image criteria, pass frequency, ablation).
  Rows sort by any column (click its header) and filter (passing only; a mix-ratio range). Every unit has a
  stable link: block_2.1.html#c13. The view is also set by the address: ?sort=mix&desc=1&passing=1&mix=0.5:2.
- latents_<L.B>.html (where crosscoder.py has run): one row per latent of the block's group crosscoder, the
  LATENTS most frequent (summation first, then invariant, equivariant, other): its type, frequency, Post's SI,
  each role's preferred zoom, the In/Pre cosine, its best-aligned channel (a link to that channel's row) and
  cosine, its FZ (fzs.py --objectives latent: the image that maximises its encoder pre-activation; where not made, the
  command that makes it) and its top-9 natural images.
- Missing pieces show as "missing"; each block page lists the commands that make them.

Everything is local files: no server, no network, the script inline. FZ images link to the PNGs fzs.py wrote
(RESULTS/fzs/<layer>/<objective>/NNNN.png); where only the .pt exists, a small JPEG is written into the atlas.
Top-9 montages are written into the atlas (atlas/top9/<layer>/NNNN.jpg). A rerun keeps the images already made.
Pages from random weights carry a red banner, as every figure does.
"""

import csv
import html
import os
import time

import numpy as np
from tqdm import tqdm

import arch
from cli import configure, die, main_guard
from figures import montage
from imagenet import ImageError, decode_rgb, eval_views
from results import (
    ablation_file,
    atlas_dir,
    atomic_write,
    check_released,
    criteria_csv,
    crosscoder_id,
    crosscoder_model,
    figures_dir,
    fz_file,
    fz_png,
    fzs_command,
    is_random,
    load_json,
    load_pt,
    natural_command,
    read_criteria,
    read_fz,
    read_summary,
    stability_file,
    tuning_file,
    weights_of,
)

RESULTS = "results"  # results folder to browse; the atlas goes to RESULTS/atlas
ARCH = "resnet18"  # the torchvision ResNet the results were made with
THUMB = 56  # pixels per natural image in a top-9 montage (3 x 3)
FZ_THUMB = 112  # pixels of an FZ shown in a row (PNGs are linked, shown at this size; JPEGs written only where no PNG exists)
NATURAL_ROOT = ""  # folder of the natural images if it moved since ablate.py recorded it (empty: summary.pt's root)
LATENTS = 256  # latent pages (crosscoder.py): at most this many latents per block, the most frequent of each type in turn
POST_AS_RELEASED = False  # True: the inputs were made with --post_as_released true (In and Post before the final ReLU, as the released scripts); inputs made otherwise are refused

# ---- end of flags (below: fixed constants, not flags)
OBJECTIVES = ("center", "channel")
ROLES = ("In", "Pre", "Post")
CRITERIA = [("pre_in", "Pre(FZ In)"), ("pre_zoom_in", "Pre(S(FZ In))"), ("post_in", "Post(FZ In)"), ("post_pre", "Post(FZ Pre)"),
            ("eq1", "Eq. 1"), ("eq2", "Eq. 2"), ("passes", "passes"), ("mix", "mix m")]
CONVENTIONS = [("post_pre", "Post(FZ Pre) \u2264 0"), ("post_in", "Post(FZ In) \u2264 0")]  # where m is set by convention (criteria.mix_ratio's order)
# Rates behind each missing piece's estimated time (docs/performance.md): fzs.py ~38 image-steps/s on 2 quiet CPU cores
# in fp32, the default (a newcomer's quickest run measured 47-52 at block 2.1; deeper layers cost more; a loaded
# machine is several times slower); one H100/H200 projected at ~70,000 image-steps/s
# (65.4 PFLOP for 12 M image-steps at 40% of the bf16 peak; not measured). ablate.py's natural stage: 1,300 images
# in 27 s on 2 CPU cores (~48 images/s); a GPU projected at ~2,000 images/s (not measured); ImageNet's 50,000 images.
CPU_FZ_RATE, GPU_FZ_RATE, CPU_NATURAL_RATE, GPU_NATURAL_RATE, NATURAL_IMAGES = 38, 70_000, 48, 2_000, 50_000
FZ_STEPS = 2560  # fzs.py's default steps, for the estimate where no FZ file says its steps
LATER = [("passes_natural", "passes (natural)"), ("post_si", "Post SI (natural)"), ("eq1n_fraction", "Eq. 1n"), ("eq2n", "Eq. 2n"),
         ("pass_frequency", "pass freq. (seeds)"), ("ablated", "ablated")]


# ----------------------------------------------------------------------------------------------------
# The atlas's own files, under RESULTS/atlas.

def block_html(results, block):
    return os.path.join(atlas_dir(results), f"block_{block}.html")


def index_html(results):
    return os.path.join(atlas_dir(results), "index.html")


def top9_jpeg(results, layer, channel):
    """The top-9 montage of a unit, written into the atlas."""
    return os.path.join(atlas_dir(results), "top9", layer, f"{channel:04d}.jpg")


def latents_html(results, block):
    return os.path.join(atlas_dir(results), f"latents_{block}.html")


def latent_jpeg(results, block, latent):
    """The top-9 montage of a crosscoder latent, written into the atlas."""
    return os.path.join(atlas_dir(results), "latents", block, f"{latent:05d}.jpg")


def fz_jpeg(results, layer, objective, channel):
    """A small JPEG of an FZ, written into the atlas where fzs.py wrote no PNG."""
    return os.path.join(atlas_dir(results), "fz", layer, objective, f"{channel:04d}.jpg")


# ----------------------------------------------------------------------------------------------------
# Reading what results/ holds (every piece optional).

def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def optional(net, path, load, what, post_as_released=None):
    """The result file at path (load: load_json or load_pt), refused if made with another architecture or (unless None)
    the other --post_as_released; None if absent."""
    if not os.path.isfile(path):
        return None
    data = load(path, what)
    net.check(data.get("config", {}), path)
    if post_as_released is not None:
        check_released(data.get("config", {}), path, post_as_released)
    return data


def rows_by_unit(path):
    """{(block, channel): row} of a per-channel CSV (criteria.csv, tuning.csv); {} if absent."""
    return {(r["block"], int(r["channel"])): r for r in read_csv(path)} if os.path.isfile(path) else {}


def read_inputs(net, results, post_as_released=False):
    """{'criteria', 'values', 'tuning', 'tuning_rows', 'stability', 'ablation', 'summary'}; None where absent. The
    ones that read In or Post (criteria, tuning, stability) are refused if made with the other post_as_released; the
    ablation and the natural stage are post-ReLU either way."""
    ablation = {b: optional(net, ablation_file(results, b), load_json, "ablation file") for b in net.blocks}
    return {"criteria": read_criteria(results, net, post_as_released=post_as_released),
            "values": rows_by_unit(criteria_csv(results)),
            "tuning": optional(net, tuning_file(results), load_json, "tuning summary", post_as_released),
            "tuning_rows": rows_by_unit(tuning_file(results, "csv")),
            "stability": optional(net, stability_file(results), load_json, "stability file", post_as_released),
            "ablation": {b: d for b, d in ablation.items() if d is not None},
            "summary": read_summary(results, net, required=False)}


def fz_channels(net, results, layer, objective, fz_thumb, post_as_released=False):
    """{channel: image path relative to RESULTS} of the FZs made (PNG if fzs.py wrote one), and the file's config; a
    file made with the other post_as_released is refused."""
    data = read_fz(results, layer, objective, required=False)
    if data is None:
        return {}, None
    net.check(data.get("config", {}), fz_file(results, layer, objective))
    check_released(data.get("config", {}), fz_file(results, layer, objective), post_as_released)
    out = {}
    for i, c in enumerate(data["channels"].tolist()):
        png = fz_png(results, layer, objective, c)
        if not os.path.isfile(png):  # no PNG (fzs.py --png false): a small JPEG in the atlas
            png = fz_jpeg(results, layer, objective, c)
            if not os.path.isfile(png):
                write_jpeg(data["images"][i].permute(1, 2, 0).numpy(), png, fz_thumb)
        out[c] = os.path.relpath(png, results)
    return out, data.get("config", {})


def write_jpeg(array, path, size=None):
    from PIL import Image
    image = Image.fromarray(array)
    if size:
        image = image.resize((size, size), Image.BILINEAR)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="JPEG", quality=85))


def eval_thumb(path, size):
    """The eval view (imagenet.eval_views: shorter side 256, center 224) of an image file, size x size uint8."""
    from PIL import Image
    view = eval_views(decode_rgb(path), [0])[0].permute(1, 2, 0).numpy()
    return np.asarray(Image.fromarray(view).resize((size, size), Image.BILINEAR))


def write_montages(results, summary, layers, root, thumb):
    """atlas/top9/<layer>/NNNN.jpg (3 x 3 images of thumb px, no gaps) for every channel of the layers; {layer: {channel:
    path relative to RESULTS}}. Each natural image is decoded once; montages already written are kept."""
    todo, out = [], {}
    for layer in layers:
        index = summary["top9_index"][layer]
        out[layer] = {}
        for c in range(index.shape[0]):
            path = top9_jpeg(results, layer, c)
            out[layer][c] = os.path.relpath(path, results)
            if not os.path.isfile(path):
                todo.append((layer, c, path, [int(i) for i in index[c].tolist()]))
    if not todo:
        return out, None
    thumbs, problem = {}, None
    needed = sorted({i for *_, ids in todo for i in ids})
    for i in tqdm(needed, desc="atlas: natural images", unit="img", dynamic_ncols=True):
        try:
            thumbs[i] = eval_thumb(os.path.join(root, summary["paths"][i]), thumb)
        except (ImageError, OSError) as e:
            problem = problem or str(e)
    for layer, c, path, ids in tqdm(todo, desc="atlas: top-9 montages", unit="unit", dynamic_ncols=True):
        if not all(i in thumbs for i in ids) or not ids:
            out[layer][c] = None
            continue
        write_jpeg(montage([thumbs[i] for i in ids], thumb, gap=0), path)  # fewer than nine: the rest stays white
    return out, problem


def shown_latents(cc, n):
    """The latents a page shows: by type (summation, invariant, equivariant, other), each the most frequent first; at
    most n in all. Dead latents are left out."""
    types, freq = np.asarray(cc["types"]), np.asarray(cc["frequency"])
    out = []
    for kind in ("summation", "invariant", "equivariant", "other"):
        idx = np.flatnonzero(types == kind)
        out += idx[np.argsort(-freq[idx], kind="stable")].tolist()
    return out[:n]


def latent_montages(results, block, cc, latents, paths, root, thumb):
    """atlas/latents/<block>/NNNNN.jpg for the latents shown (their top-9 images, each decoded once); {latent: path
    relative to RESULTS or None}. Montages already written are kept."""
    out, thumbs = {}, {}
    for f in latents:
        path = latent_jpeg(results, block, f)
        if not os.path.isfile(path):
            ids = [int(i) for i in cc["top9"][f]]
            try:
                for i in ids:
                    if i not in thumbs:
                        thumbs[i] = eval_thumb(os.path.join(root, paths[i]), thumb)
            except (ImageError, OSError):
                out[f] = None
                continue
            write_jpeg(montage([thumbs[i] for i in ids], thumb, gap=0), path)
        out[f] = os.path.relpath(path, results)
    return out


def latents_page(net, block, cc, latents, montages, weights, thumb, fz, make, fz_command, fz_thumb):
    """fz: {latent: FZ image path relative to RESULTS} of the latent FZs made from this crosscoder file; make: the
    missing ones' command (HTML), or ''; fz_command(latent): the command that makes one latent's FZ."""
    head = ["latent", "type", "frequency", "Post SI", "In / Pre / Post preferred zoom", "cos(In, Pre)", "best channel", "channel cosine",
            "FZ (latent)", "top-9"]
    rows = []
    for f in latents:
        pref = " / ".join(f"{z:.2g}" for z in cc["preferred"][f])
        src = montages.get(f)
        cells = [f"<a href='#l{f}'>{f}</a>", html.escape(str(cc["types"][f])), f"{cc['frequency'][f]:.4f}", number(cc["si"][f][2]), pref,
                 number(cc["cos_in_pre"][f]), f"<a href='block_{block}.html#c{int(cc['channel'][f])}'>{int(cc['channel'][f])}</a>",
                 number(cc["channel_cos"][f]), img(fz[f], fz_thumb, f"latent {f} FZ") if f in fz else
                 f"<span class='missing' title='{html.escape(fz_command(f))}'>missing</span>",
                 img(src, 3 * thumb, f"latent {f} top-9") if src else "missing"]
        cls = "pass" if cc["types"][f] == "summation" else ""
        rows.append(f"<tr id='l{f}' class='{cls}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    counts = {k: int((np.asarray(cc["types"]) == k).sum()) for k in ("summation", "invariant", "equivariant", "other", "dead")}
    body = (f"<p><a href='index.html'>index</a> &middot; <a href='block_{block}.html'>block {block}'s channels</a></p>"
            f"<h1>{net.name} block {block}: crosscoder latents</h1><p>{len(cc['types'])} latents: "
            + ", ".join(f"{v} {k}" for k, v in counts.items()) + f"; the {len(latents)} most frequent shown (summation first, "
            "highlighted). A summation latent whose channel cosine is low aligns with no single channel (superposition).</p>"
            + (f"<p>Missing latent FZs are made by:</p><ul><li>{make}</li></ul>" if make else "")
            + f"<table id='latents'><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return page(f"{net.name} block {block} latents", body, weights)


# ----------------------------------------------------------------------------------------------------
# The pages.

STYLE = """body{font-family:system-ui,sans-serif;margin:12px;color:#222}table{border-collapse:collapse;font-size:12px}
th,td{border:1px solid #ddd;padding:2px 4px;text-align:center;vertical-align:middle}th{background:#f4f4f4;cursor:pointer;position:sticky;top:0}
td.missing,span.missing{color:#999;font-size:10px}tr:target{outline:3px solid #e90}.banner{background:#c00;color:#fff;padding:6px;font-weight:bold}
img{display:block;margin:auto}.pass{background:#e6f4e6}code{font-size:11px}.controls{margin:8px 0}
#units th:first-child,#units td:first-child{position:sticky;left:0;background:#fff;z-index:1}#units th:first-child{background:#f4f4f4;z-index:2}
#units tr.pass td:first-child{background:#e6f4e6}td.convention{color:#a00;font-size:10px}.estimate{color:#555}""".strip()

SCRIPT = """(function(){
var body=document.querySelector('#units tbody'),rows=Array.prototype.slice.call(body.rows),q=new URLSearchParams(location.search);
var st=document.getElementById('status');
function key(r,col){var v=r.dataset[col];if(v===undefined||v==='')return null;var x=parseFloat(v);return isNaN(x)?v:x;}
function tier(r,col){return key(r,col)!==null?0:(r.dataset[col+'Convention']!==undefined?1:2);}
function sortBy(col,desc){rows.sort(function(a,b){var x=key(a,col),y=key(b,col),ta=tier(a,col),tb=tier(b,col);if(ta!==tb)return ta-tb;if(ta>0)return 0;
 return (x<y?-1:x>y?1:0)*(desc?-1:1);});rows.forEach(function(r){body.appendChild(r);});st.dataset.sort=col+(desc?' desc':'');}
function filter(){var p=document.getElementById('passing').checked,lo=parseFloat(document.getElementById('mlo').value),
 hi=parseFloat(document.getElementById('mhi').value),n=0;rows.forEach(function(r){var m=key(r,'mix'),show=(!p||r.dataset.passes==='1')&&
 (isNaN(lo)||(m!==null&&m>=lo))&&(isNaN(hi)||(m!==null&&m<=hi));r.style.display=show?'':'none';if(show)n++;});st.dataset.visible=n;
 document.getElementById('shown').textContent=n+' of '+rows.length+' channels shown';}
var last=null,desc=false;document.querySelectorAll('#units th[data-col]').forEach(function(th){th.onclick=function(){var c=th.dataset.col;
 desc=(last===c)?!desc:false;last=c;sortBy(c,desc);};});
['passing','mlo','mhi'].forEach(function(id){document.getElementById(id).oninput=filter;});
if(q.get('passing')==='1')document.getElementById('passing').checked=true;
if(q.get('mix')){var m=q.get('mix').split(':');document.getElementById('mlo').value=m[0];document.getElementById('mhi').value=m[1]||'';}
if(q.get('sort')){last=q.get('sort');desc=q.get('desc')==='1';sortBy(last,desc);}
filter();
var ok=0,bad=0;function count(){st.dataset.loaded=ok;st.dataset.broken=bad;}
document.querySelectorAll('img').forEach(function(im){if(q.get('eager')==='1')im.loading='eager';
 if(im.complete&&im.naturalWidth>0){ok++;}else{im.addEventListener('load',function(){ok++;count();});im.addEventListener('error',function(){bad++;count();});}});
count();st.dataset.readyMs=Math.round(performance.now());window.addEventListener('load',function(){st.dataset.loadMs=Math.round(performance.now());});
if(location.hash){var t=document.getElementById(location.hash.slice(1));if(t)t.scrollIntoView();}})();""".strip()


def page(title, body, weights):
    banner = (f'<div class="banner">RANDOM WEIGHTS ({html.escape(weights)}) \u2014 not a result</div>' if is_random(weights) else "")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>'
            f'{banner}{body}<p><small>weights: {html.escape(weights)}; made by atlas.py on {time.strftime("%Y-%m-%d %H:%M")}</small></p>'
            f'{banner}</body></html>')


def img(src, size, alt):
    return f'<img src="../{src}" width="{size}" height="{size}" loading="lazy" alt="{html.escape(alt)}">'


def number(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return ""
    return f"{x:.4g}" if np.isfinite(x) else ""


def mix_convention(values):
    """Why a channel's mix ratio is a convention value and not a ratio ('Post(FZ Pre) <= 0', ...), or '' when it is
    measured (or not there)."""
    for k, why in CONVENTIONS:
        try:
            if float(values[k]) <= 0:
                return why
        except (KeyError, TypeError, ValueError):
            pass
    return ""


def fz_seconds(units, steps):
    """(CPU seconds, GPU seconds) that fzs.py takes for this many units at this many steps (the rates above)."""
    return units * steps / CPU_FZ_RATE, units * steps / GPU_FZ_RATE


def natural_seconds():
    return NATURAL_IMAGES / CPU_NATURAL_RATE, NATURAL_IMAGES / GPU_NATURAL_RATE


def duration(seconds):
    if seconds < 60:
        return "under a minute"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} hours" if seconds < 172800 else f"about {seconds / 86400:.1f} days"


def estimate(seconds):
    """'(estimated: ... on 2 CPU cores, ... on one GPU)' for a missing piece's command."""
    cpu, gpu = seconds
    return (f"<span class='estimate'>(estimated: {duration(cpu)} on 2 quiet CPU cores in fp32, several times that on a loaded machine; "
            f"{duration(gpu)} on one GPU, projected, not measured)</span>")


def role_label(net, layer, post_as_released):
    """How a page names a layer: a block output read before its ReLU says so."""
    return f"{layer} (sum, before ReLU)" if post_as_released and net.where(layer)[1] == "post" else layer


def block_page(net, block, got, fzs, montages, weights, commands, natural, thumb, fz_thumb, steps=FZ_STEPS, post_as_released=False):
    In, Pre, Post = net.blocks[block]
    layers = dict(zip(ROLES, (In, Pre, Post)))
    n = net.channels(Post)
    crit = (got["criteria"] or {}).get("blocks", {}).get(block, {})
    passing = set(crit.get("passing", []))
    stab = (got["stability"] or {}).get("blocks", {}).get(block)
    freq = dict(zip(stab["channels"], stab["pass_frequency"])) if stab else {}
    ablated = set(got["ablation"][block]["passing"]) if block in got["ablation"] else None
    def columns(channel, numbers, images):  # the header's and every row's order
        return channel + numbers + images  # the numbers next to the channel (frozen on scroll): at 1400 px the criteria show

    head = columns(["<th data-col='channel'>channel</th>"],
                   [f"<th data-col='{camel(k)}'>{t}</th>" for k, t in CRITERIA + LATER],  # dataset names: data-post-si is postSi
                   [f"<th>{r} {o} FZ<br><small>{role_label(net, layers[r], post_as_released)}</small></th>" for o in OBJECTIVES for r in ROLES] +
                   [f"<th>{r} top-9</th>" for r in ROLES])
    rows = []
    for c in range(n):
        values = got["values"].get((block, c), {})
        tune = got["tuning_rows"].get((block, c), {})
        data = {"channel": c, **{k: number(values.get(k)) if k != "passes" else values.get(k, "") for k, _ in CRITERIA}}
        data["passes"] = "1" if c in passing else ("0" if values else "")
        data.update({k: number(tune.get(k)) for k in ("passes_natural", "post_si", "eq1n_fraction", "eq2n")})
        data["pass_frequency"] = number(freq.get(c))
        data["ablated"] = "" if ablated is None else ("1" if c in ablated else "0")
        convention = mix_convention(values)
        if convention:  # not a ratio: shown as what it is, sorted after the measured ratios, outside any mix range
            data["mix"], data["mix_convention"] = "", number(values.get("mix"))
        numbers = [f"<td class='convention' title='m is set by convention where a Post activation is not positive'>"
                   f"{html.escape(data['mix_convention'])} ({html.escape(convention)})</td>" if k == "mix" and convention else
                   f"<td>{html.escape(str(data[k]))}</td>" for k, _ in CRITERIA + LATER]
        images = []
        for o in OBJECTIVES:
            for r in ROLES:
                src = fzs[layers[r], o].get(c)
                images.append(f"<td>{img(src, fz_thumb, f'{layers[r]} {o} FZ {c}')}</td>" if src else
                              f"<td class='missing' title='{html.escape(commands(layers[r], o, [c]))}'>missing</td>")
        for r in ROLES:
            src = montages.get(layers[r], {}).get(c)
            images.append(f"<td>{img(src, 3 * thumb, f'{layers[r]} top-9 {c}')}</td>" if src else
                          f"<td class='missing' title='{html.escape(natural)}'>missing</td>")
        cells = columns([f"<td><a href='#c{c}'>{c}</a></td>"], numbers, images)
        attrs = " ".join(f'data-{k.replace("_", "-")}="{html.escape(str(v))}"' for k, v in data.items())
        rows.append(f"<tr id='c{c}' class='{'pass' if c in passing else ''}' {attrs}>{''.join(cells)}</tr>")
    measured = len(crit.get("measured", [])) if crit else 0
    make = ""
    for layer in dict.fromkeys(layers.values()):
        for o in OBJECTIVES:
            missing = [ch for ch in range(net.channels(layer)) if ch not in fzs[layer, o]]
            if missing and (o == "center" or fzs[layer, o]):  # channel FZs are optional: listed once some were made
                make += f"<li><code>{html.escape(commands(layer, o, missing))}</code> {estimate(fz_seconds(len(missing), steps))}</li>"
    if not montages.get(Post):
        make += f"<li><code>{html.escape(natural)}</code> {estimate(natural_seconds())}</li>"
    body = (f"<p><a href='index.html'>index</a></p><h1>{net.name} block {block}</h1>"
            f"<p>In = {In}, Pre = {Pre}, Post = {Post}; {n} channels, {measured} measured, {len(passing)} pass Eq. 1 and Eq. 2.</p>"
            + (f"<p class='released'>In and Post are read before their block's final ReLU (--post_as_released true, as the "
               f"released scripts): {role_label(net, In, True)}, {role_label(net, Post, True)}. The top-9 natural images and "
               f"the ablation are post-ReLU.</p>" if post_as_released else "")
            + (f"<p>Missing pieces are made by:</p><ul>{make}</ul>" if make else "")
            + "<div class='controls'><label><input type='checkbox' id='passing'> passing only</label> &nbsp; mix ratio from "
              "<input id='mlo' size='4'> to <input id='mhi' size='4'> &nbsp; <span id='shown'></span>"
              "<span id='status' data-loaded='0' data-broken='0'></span></div>"
            + f"<table id='units'><thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            + f"<script>{SCRIPT}</script>")
    return page(f"{net.name} block {block}", body, weights)


def camel(k):
    first, *rest = k.split("_")
    return first + "".join(w.capitalize() for w in rest)


def index_page(net, got, weights, results, latent_pages=()):
    crit = (got["criteria"] or {}).get("blocks", {})
    tune = (got["tuning"] or {}).get("blocks", {})
    stab = (got["stability"] or {}).get("blocks", {})
    rows = []
    for b, (In, Pre, Post) in net.blocks.items():
        c, t, s = crit.get(b), tune.get(b), stab.get(b)
        cells = [f"<td><a href='block_{b}.html'>{b}</a></td>", f"<td>{In}<br>{Pre}<br>{Post}</td>", f"<td>{net.channels(Post)}</td>",
                 f"<td>{len(c['measured'])}</td><td>{c['count']} ({c['percent']:.1f}%)</td>" if c else "<td colspan=2 class='missing'>not measured</td>",
                 f"<td>{t['count_natural']} ({t['percent_natural']:.1f}%)</td>" if t else "<td class='missing'>\u2013</td>",
                 f"<td>{len(s['always'])} of {len(s['channels'])}</td>" if s else "<td class='missing'>\u2013</td>",
                 f"<td>{len(got['ablation'][b]['passing'])} channels</td>" if b in got["ablation"] else "<td class='missing'>\u2013</td>",
                 f"<td><a href='latents_{b}.html'>latents</a></td>" if b in latent_pages else "<td class='missing'>\u2013</td>"]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    folder = figures_dir(results)
    figures = sorted(f for f in os.listdir(folder) if f.endswith(".png")) if os.path.isdir(folder) else []
    body = (f"<h1>Atlas of {net.name}'s residual stream</h1><p>{html.escape(os.path.abspath(results))}</p>"
            "<table><thead><tr><th>block</th><th>In / Pre / Post</th><th>channels</th><th>measured (FZ)</th><th>pass Eq. 1 and 2 (FZ)</th>"
            "<th>pass on natural images (tuning.py)</th><th>pass in every FZ seed</th><th>ablated set</th><th>crosscoder</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            + ("<h2>Figures</h2><ul>" + "".join(f"<li><a href='../figures/{f}'>{f}</a></li>" for f in figures) + "</ul>" if figures else ""))
    return page(f"Atlas: {net.name}", body, weights)


# ----------------------------------------------------------------------------------------------------

def main():
    configure(globals())
    net = arch.net(ARCH)
    if THUMB < 8 or FZ_THUMB < 16:
        die("--thumb must be at least 8 and --fz_thumb at least 16 pixels")
    if not os.path.isdir(RESULTS):
        die(f"results folder {RESULTS!r} does not exist")
    t0 = time.time()
    got = read_inputs(net, RESULTS, POST_AS_RELEASED)
    fzs, configs = {}, []
    for layer in dict.fromkeys(lay for roles in net.blocks.values() for lay in roles):
        for o in OBJECTIVES:
            fzs[layer, o], config = fz_channels(net, RESULTS, layer, o, FZ_THUMB, POST_AS_RELEASED)
            configs += [config] if config else []
    configs += [d.get("config", {}) for d in (got["criteria"], got["tuning"], got["summary"]) if d]
    if not configs:
        die(f"{RESULTS} holds no results of fzs.py, criteria.py or ablate.py to browse")
    weights = weights_of(*configs)
    like = next((c for c in configs if "steps" in c), None) or {"post_as_released": POST_AS_RELEASED}  # what new FZs must match
    commands = lambda layer, o, channels: fzs_command([layer], net.name, weights, RESULTS, like, channels, objective=o)  # noqa: E731
    natural = natural_command(net.name, weights, RESULTS)
    montages, problem = {}, None
    if got["summary"]:
        root = NATURAL_ROOT or got["summary"]["root"]
        layers = list(dict.fromkeys(layer for roles in net.blocks.values() for layer in roles))
        montages, problem = write_montages(RESULTS, got["summary"], layers, root, THUMB)
    folder = atlas_dir(RESULTS)
    os.makedirs(folder, exist_ok=True)
    for b in tqdm(net.blocks, desc="atlas: block pages", unit="block", dynamic_ncols=True):
        text = block_page(net, b, got, fzs, montages, weights, commands, natural, THUMB, FZ_THUMB, (like or {}).get("steps", FZ_STEPS),
                          POST_AS_RELEASED)
        atomic_write(block_html(RESULTS, b), lambda tmp, t=text: open(tmp, "w").write(t))
    latent_pages = []
    for b in net.blocks:  # the crosscoder's latents, where crosscoder.py has run on the natural stage's images
        path = crosscoder_model(RESULTS, b)
        if not os.path.isfile(path) or not got["summary"]:
            continue
        cc = load_pt(path, "crosscoder")
        net.check(cc["config"], path)
        weights_of({"weights": weights}, cc["config"])  # made with other weights than the rest: one line, and stop
        if "natural" not in cc["config"].get("source", {}):
            continue
        latents = shown_latents(cc, LATENTS)
        shown = latent_montages(RESULTS, b, cc, latents, got["summary"]["paths"], NATURAL_ROOT or got["summary"]["root"], THUMB)
        fz, fz_config = fz_channels(net, RESULTS, net.blocks[b][2], "latent", FZ_THUMB)
        stale = fz_config is not None and fz_config.get("crosscoder") != crosscoder_id(RESULTS, b)
        make = ""
        if stale:  # FZs of another crosscoder file: not this one's latents
            fz = {}
            make = (f"{html.escape(fz_file(RESULTS, net.blocks[b][2], 'latent'))} was made from another crosscoder file: delete it, "
                    "then ")
        else:
            weights_of({"weights": weights}, fz_config or {})
        missing = [f for f in latents if f not in fz]
        fz_command = lambda fs, b=b, c=fz_config or like: fzs_command([b], net.name, weights, RESULTS, c, fs, objective="latent")  # noqa: E731
        if missing:
            cmd = fz_command(missing)
            make += f"<code>{html.escape(cmd)}</code> {estimate(fz_seconds(len(missing), (fz_config or like or {}).get('steps', FZ_STEPS)))}"
        text = latents_page(net, b, cc, latents, shown, weights, THUMB, fz, make if missing else "", lambda f, c=fz_command: c([f]),
                            FZ_THUMB)
        atomic_write(latents_html(RESULTS, b), lambda tmp, t=text: open(tmp, "w").write(t))
        latent_pages.append(b)
    text = index_page(net, got, weights, RESULTS, latent_pages)
    atomic_write(index_html(RESULTS), lambda tmp: open(tmp, "w").write(text))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
    pages = [os.path.getsize(block_html(RESULTS, b)) for b in net.blocks]
    if problem:
        print(f"note: some natural images could not be read ({problem}); their montages show as missing (--natural_root if they moved)")
    print(f"atlas: {len(net.blocks)} block pages ({min(pages) / 1e3:.0f}-{max(pages) / 1e3:.0f} kB of HTML each), {size / 1e6:.1f} MB in "
          f"{folder} in {time.time() - t0:.1f} s; open {index_html(RESULTS)}")


if __name__ == "__main__":
    main_guard(main, "pages written before the interruption are complete; run it again to finish")
