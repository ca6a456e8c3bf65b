"""Tests for d2r.datasets.synthetic: layout, ground truth, geometry, determinism."""

from __future__ import annotations

import csv
import inspect
import io
import json
import pickle
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from d2r.cli import synthetic as synthetic_cli
from d2r.datasets import synthetic as S
from d2r.datasets.synthetic import LabelThresholds, View

TINY = S.SIZES["tiny"]
# Pixel centres -> continuous coordinates (pixel (r, c) covers [c, c+1] x [r, r+1]).
SHIFT = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global: only builtin containers and scalars may be read."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name} not allowed")


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _annotations(root: Path) -> dict[str, dict]:
    with open(root / "annotations.csv", newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def _gnd(root: Path) -> dict:
    with open(root / "gnd_synth.pkl", "rb") as f:
        return _PlainUnpickler(f).load()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return S.generate(tmp_path_factory.mktemp("a") / "tiny", seed=0, **TINY)


def test_tiny_is_fast_and_deterministic(tiny, tmp_path):
    start = time.perf_counter()
    again = S.generate(tmp_path / "again", seed=0, **TINY)
    assert time.perf_counter() - start < 10.0
    assert _files(again) == _files(tiny)


def test_other_seed_differs(tiny, tmp_path):
    other = _files(S.generate(tmp_path / "other", seed=1, **TINY))
    first = _files(tiny)
    assert other.keys() == first.keys()
    jpgs = [k for k in first if k.endswith(".jpg")]
    assert all(other[k] != first[k] for k in jpgs)


def test_layout(tiny):
    names = {p.name for p in tiny.iterdir()}
    assert names == {
        "jpg", "gnd_synth.pkl", "boxes.csv", "labels.csv", "annotations.csv", "landmarks.csv",
        "synthetic.json",
    }
    gnd = _gnd(tiny)
    num_q = TINY["num_landmarks"] * TINY["queries_per_landmark"]
    assert len(gnd["imlist"]) == TINY["num_db_images"] and len(gnd["qimlist"]) == num_q
    jpgs = sorted(p.stem for p in (tiny / "jpg").iterdir())
    assert jpgs == sorted(gnd["imlist"] + gnd["qimlist"])
    assert not set(gnd["imlist"]) & set(gnd["qimlist"])
    for name in jpgs:
        with Image.open(tiny / "jpg" / f"{name}.jpg") as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert TINY["image_side"][0] <= max(im.size) <= TINY["image_side"][1]
    manifest = json.loads((tiny / "synthetic.json").read_text())
    assert manifest["seed"] == 0 and manifest["num_db_images"] == TINY["num_db_images"]
    assert sum(manifest["label_counts"].values()) == TINY["num_db_images"]
    assert manifest["label_counts"]["distractor"] == TINY["num_distractors"]


def test_pickle_is_plain_and_well_formed(tiny):
    gnd = _gnd(tiny)
    assert set(gnd) == {"imlist", "qimlist", "gnd"}
    assert all(type(n) is str for n in gnd["imlist"] + gnd["qimlist"])
    assert len(gnd["gnd"]) == len(gnd["qimlist"])
    n = len(gnd["imlist"])
    for entry in gnd["gnd"]:
        assert set(entry) == {"bbx", "easy", "hard", "junk"}
        assert len(entry["bbx"]) == 4 and all(type(v) is float for v in entry["bbx"])
        groups = [entry[k] for k in ("easy", "hard", "junk")]
        for g in groups:
            assert type(g) is list and all(type(i) is int and 0 <= i < n for i in g)
            assert len(set(g)) == len(g)
        assert not (set(groups[0]) & set(groups[1]) or set(groups[0]) & set(groups[2])
                    or set(groups[1]) & set(groups[2]))
        assert entry["easy"] or entry["hard"]


def test_gnd_matches_annotations(tiny):
    gnd, ann = _gnd(tiny), _annotations(tiny)
    for q, qname in enumerate(gnd["qimlist"]):
        row = ann[qname]
        assert row["kind"] == "query" and row["label"] == "query"
        for label in ("easy", "hard", "junk"):
            expected = [
                i for i, name in enumerate(gnd["imlist"])
                if ann[name]["landmark_id"] == row["landmark_id"] and ann[name]["label"] == label
            ]
            assert gnd["gnd"][q][label] == expected
        assert gnd["gnd"][q]["bbx"] == [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
    # Every landmark appears in the database, distractors show none.
    db_landmarks = {ann[n]["landmark_id"] for n in gnd["imlist"]}
    assert db_landmarks == {str(i) for i in range(TINY["num_landmarks"])} | {"-1"}


def test_labels_follow_thresholds(tiny):
    t = LabelThresholds()
    for row in _annotations(tiny).values():
        if row["kind"] != "db" or row["label"] == "distractor":
            continue
        view = View(*(float(row[k]) for k in ("visible", "coverage", "anisotropy", "rotation")))
        # Rounded CSV values: skip views within rounding of a threshold.
        near = [abs(view.visible - v) < 1e-3 for v in (t.easy_visible, t.junk_visible)]
        near += [abs(view.coverage - v) < 1e-3 for v in (t.easy_coverage, t.junk_coverage)]
        if not any(near):
            assert S.label_view(view, t) == row["label"]


def test_boxes_inside_images_and_csvs_parse(tiny):
    ann = _annotations(tiny)
    gnd = _gnd(tiny)
    for name, row in ann.items():
        with Image.open(tiny / "jpg" / f"{name}.jpg") as im:
            assert im.size == (int(row["width"]), int(row["height"]))
        if row["label"] == "distractor":
            assert row["x1"] == "" and row["homography"] == ""
            continue
        x1, y1, x2, y2 = (float(row[k]) for k in ("x1", "y1", "x2", "y2"))
        assert 0 <= x1 < x2 <= int(row["width"]) and 0 <= y1 < y2 <= int(row["height"])
    with open(tiny / "boxes.csv", newline="") as f:
        boxes = list(csv.DictReader(f))
    positives = [n for n in gnd["imlist"] if ann[n]["label"] != "distractor"]
    assert [b["id"] for b in boxes] == positives
    for b in boxes:
        ymin, xmin, ymax, xmax = (float(v) for v in b["box"].split(" "))
        assert 0 <= ymin < ymax <= 1 and 0 <= xmin < xmax <= 1
        row = ann[b["id"]]
        w, h = int(row["width"]), int(row["height"])
        np.testing.assert_allclose(
            [xmin * w, ymin * h, xmax * w, ymax * h],
            [float(row[k]) for k in ("x1", "y1", "x2", "y2")], atol=0.02,
        )
    with open(tiny / "labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))
    assert [r["id"] for r in labels] == positives
    assert all(r["landmark_id"] == ann[r["id"]]["landmark_id"] for r in labels)
    assert {r["split"] for r in labels} <= {"train", "val"}
    assert {r["landmark_id"] for r in labels if r["split"] == "train"} == {
        str(i) for i in range(TINY["num_landmarks"])
    }
    with open(tiny / "landmarks.csv", newline="") as f:
        lm_rows = list(csv.DictReader(f))
    pool = S.landmarks(TINY["num_landmarks"])
    assert [r["name"] for r in lm_rows] == [lm.name for lm in pool]
    assert all(int(r["width"]) == lm.image.shape[1] for r, lm in zip(lm_rows, pool))


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_landmark_is_where_the_homography_and_box_say(tiny):
    pool = S.landmarks(TINY["num_landmarks"])
    checked = 0
    for name, row in _annotations(tiny).items():
        if row["label"] == "distractor":
            continue
        lm = pool[int(row["landmark_id"])].image
        hom = np.array([float(v) for v in row["homography"].split()]).reshape(3, 3)
        # The box is the landmark's outline clipped to the image.
        w, h = int(row["width"]), int(row["height"])
        corners = np.array([[0, 0, 1], [lm.shape[1], 0, 1], [lm.shape[1], lm.shape[0], 1],
                            [0, lm.shape[0], 1]], float) @ hom.T
        corners = corners[:, :2] / corners[:, 2:]
        lo = np.clip(corners.min(axis=0), 0, (w, h))
        hi = np.clip(corners.max(axis=0), 0, (w, h))
        box = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
        np.testing.assert_allclose(np.r_[lo, hi], box, atol=0.006)
        if float(row["visible"]) < 0.95:
            continue
        gray = cv2.cvtColor(lm, cv2.COLOR_RGB2GRAY).astype(np.float32)
        with Image.open(tiny / "jpg" / f"{name}.jpg") as im:
            image = np.asarray(im.convert("L"), np.float32)
        scores = []
        for dx in (0.0, (box[2] - box[0]) / 3):
            moved = np.array([[1, 0, dx], [0, 1, 0], [0, 0, 1.0]]) @ hom
            centres = np.linalg.inv(SHIFT) @ moved @ SHIFT
            warped = cv2.warpPerspective(gray, centres, (w, h))
            inside = cv2.warpPerspective(np.ones_like(gray), centres, (w, h)) > 0.99
            inside = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            scores.append(_ncc(image[inside], warped[inside]))
        assert scores[0] > 0.8, (name, scores)
        assert scores[1] < scores[0] - 0.3, (name, scores)
        checked += 1
    assert checked >= TINY["num_landmarks"]


def test_label_view_rules():
    t = LabelThresholds()
    assert S.label_view(View(1.0, 0.3, 0.9, 0.0), t) == "easy"
    assert S.label_view(View(0.8, 0.1, 0.6, -15.0), t) == "easy"
    assert S.label_view(View(0.7, 0.3, 0.9, 0.0), t) == "hard"  # occluded
    assert S.label_view(View(1.0, 0.05, 0.9, 0.0), t) == "hard"  # small
    assert S.label_view(View(1.0, 0.3, 0.4, 0.0), t) == "hard"  # oblique
    assert S.label_view(View(1.0, 0.3, 0.9, 30.0), t) == "hard"  # rotated
    assert S.label_view(View(0.2, 0.3, 0.9, 0.0), t) == "junk"  # mostly hidden
    assert S.label_view(View(1.0, 0.01, 0.9, 0.0), t) == "junk"  # tiny
    assert S.label_view(View(0.2, 0.3, 0.9, 0.0), LabelThresholds(junk_visible=0.1)) == "hard"
    with pytest.raises(ValueError, match="junk_visible"):
        LabelThresholds(junk_visible=0.9)
    with pytest.raises(ValueError, match="easy_anisotropy"):
        LabelThresholds(easy_anisotropy=0.0)
    with pytest.raises(TypeError):
        LabelThresholds(0.8)  # keyword-only


def test_measure_view_by_hand():
    # Scale 2, shift (10, 5): a 10x20 landmark becomes 20x40 pixels of a 100x80 image.
    hom = np.array([[2.0, 0, 10], [0, 2.0, 5], [0, 0, 1]])
    view = S.measure_view(hom, (10, 20), (100, 80), visible_area=400.0)
    assert view == View(visible=0.5, coverage=0.05, anisotropy=1.0, rotation=0.0)
    rot = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # 90 degrees, y down
    assert S.measure_view(rot, (4, 4), (10, 10), 16.0).rotation == pytest.approx(90.0)
    squash = np.diag([1.0, 0.5, 1.0])
    assert S.measure_view(squash, (4, 4), (10, 10), 8.0).anisotropy == pytest.approx(0.5)


def test_landmark_pool():
    pool = S.landmarks()
    assert len(pool) == len({lm.name for lm in pool}) >= 20
    assert [lm.landmark_id for lm in pool] == list(range(len(pool)))
    for lm in pool:
        assert lm.image.dtype == np.uint8 and lm.image.ndim == 3 and lm.image.shape[2] == 3
        assert 100 <= max(lm.image.shape[:2]) <= 512 and lm.image.std() > 10
    for a in pool:
        for b in pool:
            if a.landmark_id < b.landmark_id and a.source == b.source:
                ax1, ay1, ax2, ay2 = a.crop
                bx1, by1, bx2, by2 = b.crop
                assert min(ax2, bx2) <= max(ax1, bx1) or min(ay2, by2) <= max(ay1, by1), (a, b)
    with pytest.raises(ValueError, match="num"):
        S.landmarks(len(pool) + 1)


def test_default_size_matches_generate_defaults():
    params = inspect.signature(S.generate).parameters
    for key, value in S.SIZES["default"].items():
        assert params[key].default == value, key
    assert all(
        p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in params.items() if n != "out_dir"
    )


SMALLEST = dict(num_landmarks=2, num_db_images=3, num_distractors=1, queries_per_landmark=1,
                image_side=(64, 96))


def test_out_dir_rules(tmp_path):
    out = S.generate(tmp_path / "d", **SMALLEST)
    with pytest.raises(FileExistsError, match="overwrite"):
        S.generate(out, **SMALLEST)
    S.generate(out, seed=3, overwrite=True, **SMALLEST)
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="refusing"):
        S.generate(foreign, overwrite=True, **SMALLEST)
    assert (foreign / "keep.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "foreign"]  # no temp dirs left


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_landmarks=0), "num_landmarks"),
        (dict(num_landmarks=99), "num_landmarks"),
        (dict(num_db_images=2, num_distractors=1), "at least one image per landmark"),
        (dict(num_distractors=-1), "num_distractors"),
        (dict(queries_per_landmark=0), "queries_per_landmark"),
        (dict(image_side=(300, 200)), "image_side"),
        (dict(name="a/b"), "name"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = dict(SMALLEST, **kwargs)
    with pytest.raises(ValueError, match=match):
        S.generate(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_cli(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "cli"), "--size", "tiny", "--seed", "2", "--name", "demo"]
    assert synthetic_cli.main(argv) == 0
    out = tmp_path / "cli"
    assert str(out) in capsys.readouterr().out
    assert (out / "gnd_demo.pkl").is_file()
    manifest = json.loads((out / "synthetic.json").read_text())
    assert manifest["seed"] == 2 and manifest["num_db_images"] == TINY["num_db_images"]
    with Image.open(io.BytesIO((out / "jpg" / "demo_q_0000.jpg").read_bytes())) as im:
        assert im.format == "JPEG"
