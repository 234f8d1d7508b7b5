"""imagenet.py: ImageNet as users have it. A tiny validation set is written in every layout (prepared, torchvision
root, flat) and the flat one is labelled by every label-file form (devkit ground truth with and without its id map,
val.txt, Kaggle's LOC_val_solution.csv); all must give the prepared layout's paths-to-labels mapping, the same sort
order and the same --limit selection. Each malformed label file gives one line naming the file and the line."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import imagenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = [65, 970, 230, 809, 516, 57, 334, 415]  # images 1..8 of ILSVRC2012 val (the first six are in the folders)
IN_FOLDER = 6


def name(i):
    return f"ILSVRC2012_val_{i:08d}.JPEG"


def image(path, i):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (40 + i, 30), (30 * i % 256, 80, 160)).save(path)


@pytest.fixture()
def layouts(tmp_path):
    """{layout: (root, labels spec)} for the same six images, and the expected {file name: class index}."""
    prepared, tv, flat = tmp_path / "prepared", tmp_path / "tv", tmp_path / "flat"
    expect = {}
    for i in range(1, IN_FOLDER + 1):
        c = CLASSES[i - 1]
        wnid = imagenet.WNIDS[c]
        image(prepared / wnid / name(i), i)
        image(tv / "val" / wnid / name(i), i)
        image(flat / name(i), i)
        expect[name(i)] = c
    (tv / "meta.bin").write_bytes(b"torchvision's class-name pickle")
    files = tmp_path / "labels"
    files.mkdir()
    # the devkit's ground truth (ids in the devkit's order), for 8 images: a superset of the folder's six
    (files / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{imagenet.ILSVRC_IDS.index(imagenet.WNIDS[c]) + 1}\n" for c in CLASSES))
    # the same with a map file of another id order next to it: the ids must go through that file
    other = files / "shuffled"
    other.mkdir()
    order = list(imagenet.WNIDS)
    random.Random(3).shuffle(order)
    (other / "map_clsloc.txt").write_text("".join(f"{w} {k + 1} name_{k}\n" for k, w in enumerate(order)))
    (other / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{order.index(imagenet.WNIDS[c]) + 1}\n" for c in CLASSES))
    (files / "val.txt").write_text("".join(f"{name(i)} {c}\n" for i, c in enumerate(CLASSES, start=1)))
    (files / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"{name(i)[:-5]},{imagenet.WNIDS[c]} 10 20 110 120 {imagenet.WNIDS[c]} 5 5 50 60 \n" for i, c in enumerate(CLASSES, start=1)))
    return {
        "prepared": (str(prepared), ""),
        "torchvision": (str(tv), ""),
        "devkit": (str(flat), str(files / "ILSVRC2012_validation_ground_truth.txt")),
        "devkit+map": (str(flat), str(other / "ILSVRC2012_validation_ground_truth.txt")),
        "devkit,map": (str(flat), f"{other / 'ILSVRC2012_validation_ground_truth.txt'},{other / 'map_clsloc.txt'}"),
        "val.txt": (str(flat), str(files / "val.txt")),
        "kaggle": (str(flat), str(files / "LOC_val_solution.csv")),
    }, expect


def test_every_layout_and_label_form_gives_the_prepared_mapping(layouts):
    forms, expect = layouts
    found = {}
    for layout, (root, labels) in forms.items():
        paths, classes, what = imagenet.imagenet_folder(root, 0, labels)
        assert {os.path.basename(p): int(c) for p, c in zip(paths, classes)} == expect, layout
        assert all(os.path.isfile(os.path.join(root, p)) for p in paths)
        assert [os.path.basename(p) for p in paths] == sorted(expect), layout  # one sort order: by file name
        sub = imagenet.imagenet_folder(root, 3, labels)[0]
        assert [os.path.basename(p) for p in sub] == [name(1), name(3), name(6)], layout  # --limit picks the same images
        found[layout] = what
    assert found["prepared"].startswith("prepared layout") and found["torchvision"].startswith("torchvision ImageNet root")
    assert "devkit ground truth, ILSVRC ids mapped by the devkit's order" in found["devkit"]
    assert "map_clsloc.txt" in found["devkit+map"] and "map_clsloc.txt" in found["devkit,map"]
    assert "two columns" in found["val.txt"] and "Kaggle LOC_val_solution.csv" in found["kaggle"]
    assert all("6 of the file's 8 labels used" in found[k] for k in ("devkit", "val.txt", "kaggle"))  # a superset is fine


def test_the_devkit_order_is_the_devkits():
    ids = imagenet.ILSVRC_IDS
    assert len(ids) == 1000 and sorted(ids) == list(imagenet.WNIDS)
    # facts from the devkit's map_clsloc.txt, and the first validation image: devkit id 490, torchvision class 65
    assert ids[0] == "n02119789" and ids[1] == "n02100735" and ids[999] == "n03255030"
    assert imagenet.WNID_INDEX[ids[490 - 1]] == 65


def error(root, labels):
    with pytest.raises(SystemExit) as e:
        imagenet.imagenet_folder(root, 0, labels)
    msg = str(e.value)
    assert msg.startswith("error: ") and "\n" not in msg
    return msg


def test_bad_label_files_name_the_file_and_the_line(layouts, tmp_path):
    forms, _ = layouts
    flat = forms["val.txt"][0]

    def write(text, fname="labels.txt"):
        path = tmp_path / fname
        path.write_text(text)
        return str(path)
    rows = [f"{name(i)} {c}" for i, c in enumerate(CLASSES, start=1)]
    assert "labels.txt: no label for image ILSVRC2012_val_00000004.JPEG" in error(flat, write("\n".join(rows[:3] + rows[4:])))
    assert "labels.txt, line 5: duplicate label for image ILSVRC2012_val_00000002 (first on line 2)" in error(
        flat, write("\n".join(rows[:4] + [rows[1]] + rows[4:])))
    assert "labels.txt, line 2: class index 1000 is out of range 0..999" in error(flat, write(f"{rows[0]}\n{name(2)} 1000\n"))
    assert "labels.txt, line 3: ILSVRC id 1001 is out of range 1..1000" in error(flat, write("490\n361\n1001\n1\n1\n1\n"))
    assert "labels.txt, line 2: expected one ILSVRC id" in error(flat, write("490\nabc\n"))
    assert "line 1: 'a b c' matches none of the label formats" in error(flat, write("a b c\n"))
    assert "labels.csv, line 3: unknown wnid 'n99999999'" in error(
        flat, write(f"ImageId,PredictionString\n{name(1)[:-5]},n01751748 1 2 3 4\n{name(2)[:-5]},n99999999 1 2 3 4\n", "labels.csv"))
    assert "label file" in error(flat, str(tmp_path / "missing.txt")) and "does not exist" in error(flat, str(tmp_path / "missing.txt"))
    assert "is empty" in error(flat, write("\n\n"))
    bad_map = tmp_path / "map" / "map_clsloc.txt"
    bad_map.parent.mkdir()
    bad_map.write_text("n02119789 1 kit_fox\nn02100735 2 English_setter\n")
    assert "map_clsloc.txt: maps 2 ILSVRC ids, expected 1,000" in error(flat, f"{write('490')},{bad_map}")
    bad_map.write_text("n02119789 1 kit_fox\nn02100735 1 English_setter\n")
    assert "map_clsloc.txt, line 2: duplicate ILSVRC id 1" in error(flat, f"{write('490')},{bad_map}")
    assert "--labels is for a flat folder" in error(forms["prepared"][0], forms["val.txt"][1])
    assert "pass their labels with --labels FILE" in error(flat, "")


def test_ablate_reads_a_flat_folder_with_labels(layouts, tmp_path):
    forms, expect = layouts
    root, labels = forms["kaggle"]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    p = subprocess.run([sys.executable, "ablate.py", "--weights", "random", "--data", root, "--labels", labels, "--stages", "natural",
                        "--workers", "0", "--results", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-1500:]
    assert "flat folder, labels from" in p.stdout and "(Kaggle LOC_val_solution.csv)" in p.stdout
    import torch
    summary = torch.load(tmp_path / "r" / "natural" / "summary.pt", weights_only=False)
    assert dict(zip(summary["paths"], np.asarray(summary["labels"]).tolist())) == expect
