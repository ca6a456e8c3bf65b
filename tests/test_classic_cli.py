"""The CLIs on the classic benchmarks: Oxford5k/Paris6k (gt_files), Holidays, UKBench.

The on-disk benchmarks are rebuilt from the images of the session's tiny
synthetic benchmark (``tiny_dataset``: 4 landmarks, one query each); the
evaluation-only tests use empty image files, which are never opened.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from d2r.pipeline.sources import ImageSource
from d2r.datasets.benchmarks import detect_benchmark, load_benchmark
from d2r.datasets.classic import holidays_map
from d2r.datasets.revisited import load_revisited
from d2r.evaluation.tables import format_table, write_metrics
from d2r.cli.evaluate import main as evaluate_main
from d2r.io.feature_store import FeatureStore
from d2r.io.images import LoadedImage

BUILD = ("--config", "rootsift-asmk-star", "--set", "codebook.num_words=64")
CLASSIC_KEYS = {"mAP", "mP@1", "mP@5", "mP@10"}


def _run(module, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=False)
    if check:
        assert proc.returncode == 0, f"{module} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _touch(directory: Path, names) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / f"{name}.jpg").write_bytes(b"")
    return directory


def _groups(synth):
    """Per landmark: its query image, then its easy, hard and junk database images."""
    return [[synth.query_path(q)] + [synth.db_path(i) for i in (*g.easy, *g.hard, *g.junk)]
            for q, g in enumerate(synth.gnd)]


@pytest.fixture(scope="module")
def layouts(tiny_dataset, tmp_path_factory):
    """The tiny benchmark as Oxford (gt_files), Holidays (+ rotation list) and UKBench."""
    synth = load_revisited(tiny_dataset)
    root = tmp_path_factory.mktemp("classic")

    oxford = root / "oxford"
    (oxford / "jpg").mkdir(parents=True)
    gt = oxford / "gt_files"
    gt.mkdir()
    for path in synth.image_dir.glob("*.jpg"):
        shutil.copy(path, oxford / "jpg" / path.name)
    for q, g in enumerate(synth.gnd):
        label, qname = f"landmark{q}_1", synth.query_names[q]
        box = " ".join(f"{v:.1f}" for v in synth.query_boxes[q])
        (gt / f"{label}_query.txt").write_text(f"oxc1_{qname} {box}\n")
        lists = {"good": [qname, *(synth.db_names[i] for i in g.easy)],
                 "ok": [synth.db_names[i] for i in g.hard],
                 "junk": [synth.db_names[i] for i in g.junk]}
        for kind, names in lists.items():
            (gt / f"{label}_{kind}.txt").write_text("".join(f"{n}\n" for n in names))

    # Holidays: group q = the query 1000q00.jpg and its easy + hard views. 100101.jpg is
    # stored turned 90 degrees anticlockwise and the query 100200.jpg upside down; the
    # rotation list turns them back.
    holidays = root / "holidays"
    (holidays / "jpg").mkdir(parents=True)
    for q, (query, *views) in enumerate(_groups(synth)):
        g = synth.gnd[q]
        for j, src in enumerate([query, *views[:g.easy.size + g.hard.size]]):
            shutil.copy(src, holidays / "jpg" / f"{100000 + 100 * q + j}.jpg")
    for name, turn in (("100101", Image.Transpose.ROTATE_90),
                       ("100200", Image.Transpose.ROTATE_180)):
        path = holidays / "jpg" / f"{name}.jpg"
        with Image.open(path) as im:
            im.transpose(turn).save(path, quality=95)
    (holidays / "rotations.txt").write_text("100101.jpg 90\n100200.jpg 180\n")

    # UKBench: query, then easy / hard / junk views, 4 per landmark.
    ukbench = root / "ukbench"
    (ukbench / "full").mkdir(parents=True)
    for q, group in enumerate(_groups(synth)):
        for j, src in enumerate(group[:4]):
            shutil.copy(src, ukbench / "full" / f"ukbench{4 * q + j:05d}.jpg")
    return {"revisited": Path(tiny_dataset), "oxford-paris": oxford, "holidays": holidays,
            "ukbench": ukbench}


def test_auto_detection_and_names(layouts, tmp_path):
    for kind, directory in layouts.items():
        assert detect_benchmark(directory) == kind
    assert load_benchmark(layouts["oxford-paris"]).name == "oxford5k"
    holidays = load_benchmark(layouts["holidays"], rotations=layouts["holidays"] / "rotations.txt")
    assert (holidays.kind, holidays.name, holidays.num_db, holidays.num_queries) == \
        ("holidays", "holidays", 15, 4)
    ukbench = load_benchmark(layouts["ukbench"])
    assert (ukbench.num_db, ukbench.num_queries) == (16, 16)
    # images straight in the directory; Paris6k named by its image names
    flat = _touch(tmp_path / "flat", ["100000", "100001"])
    assert detect_benchmark(flat) == "holidays"
    paris = tmp_path / "paris"
    _touch(paris / "jpg", ["paris_louvre_000001", "paris_louvre_000002"])
    (paris / "gt_files").mkdir()
    for kind, text in (("query", "paris_louvre_000001 1 2 30 40\n"),
                       ("good", "paris_louvre_000002\n"), ("ok", ""), ("junk", "")):
        (paris / "gt_files" / f"louvre_1_{kind}.txt").write_text(text)
    assert load_benchmark(paris).name == "paris6k"


def test_benchmark_interface(layouts):
    synth = load_benchmark(layouts["revisited"])
    assert synth.query_box(0) == tuple(float(v) for v in synth.query_boxes[0])
    assert synth.rotation(0) == synth.query_rotation(0) == 0
    oxford = load_benchmark(layouts["oxford-paris"])
    assert oxford.num_db == synth.num_db + synth.num_queries
    assert oxford.query_box(1) == pytest.approx(synth.query_box(1), abs=0.05)
    assert oxford.query_path(2).name == synth.query_path(2).name
    holidays = load_benchmark(layouts["holidays"], rotations=layouts["holidays"] / "rotations.txt")
    assert holidays.query_box(0) is None
    assert holidays.rotation(holidays.db_names.index("100101")) == 90
    assert [holidays.query_rotation(q) for q in range(4)] == [0, 0, 180, 0]
    assert holidays.result_kinds(0) == {0: "query", 1: "positive", 2: "positive"}
    source = ImageSource.from_dataset(layouts["holidays"], rotations=layouts["holidays"] /
                                          "rotations.txt")
    assert dict(zip(source.names, source.rotations)) == {
        n: {"100101": 90, "100200": 180}.get(n, 0) for n in holidays.db_names}
    half = source.shard(1, 2)
    assert half.names == source.names[1::2] and half.rotations == source.rotations[1::2]
    assert ImageSource.from_dataset(layouts["holidays"]).rotations == ()


def test_unknown_directory_error_names_it(tmp_path):
    odd = _touch(tmp_path / "odd" / "jpg", ["a", "b"]).parent
    with pytest.raises(ValueError) as info:
        detect_benchmark(odd)
    for part in (str(odd), "gnd_<name>.pkl", "gt_files", "100000.jpg", "ukbench00000.jpg",
                 str(odd / "jpg"), "--benchmark"):
        assert part in str(info.value)
    proc = _run("d2r.cli.evaluate", "--dataset-dir", odd, "--ranks", tmp_path / "r.npy", check=False)
    assert proc.returncode == 2 and str(odd) in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="cannot tell which benchmark"):
        load_benchmark(empty)
    with pytest.raises(FileNotFoundError, match="no \\*.jpg images for the holidays"):
        load_benchmark(empty, kind="holidays")
    with pytest.raises(FileNotFoundError, match="not found"):
        detect_benchmark(tmp_path / "nowhere")


def test_options_that_do_not_apply(layouts, tmp_path):
    with pytest.raises(ValueError, match="Holidays only"):
        load_benchmark(layouts["ukbench"], rotations={"ukbench00001": 90})
    listing = tmp_path / "r1m.txt"
    listing.write_text("x\n")
    with pytest.raises(ValueError, match="revisited benchmarks only"):
        load_benchmark(layouts["holidays"], distractor_list=listing, distractor_root=tmp_path)
    with pytest.raises(ValueError, match="unexpected UKBench image name"):
        load_benchmark(layouts["holidays"], kind="ukbench")
    with pytest.raises(ValueError, match="kind must be"):
        load_benchmark(layouts["holidays"], kind="inria")


def test_metrics_table_and_json(tmp_path):
    flat = {"mAP": 71.1111, "mP@1": 100.0, "mP@5": float("nan")}
    assert format_table(flat).splitlines() == ["     mAP    mP@1    mP@5",
                                               "   71.11  100.00     nan"]
    assert format_table({"N-S": 3.375}).splitlines()[0].split() == ["N-S"]
    nested = {"easy": {"mAP": 50.0}, "hard": {"mAP": 25.0}}
    assert format_table(nested).splitlines() == ["protocol      mAP", "easy        50.00",
                                                 "hard        25.00"]
    write_metrics(flat, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == \
        {"mAP": 71.1111, "mP@1": 100.0, "mP@5": None}
    write_metrics(nested, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == nested


def test_evaluate_cli_oxford_hand_computed(tmp_path):
    root = tmp_path / "ox"
    _touch(root / "jpg", [f"a{i}" for i in range(6)])
    gt = root / "gt_files"
    gt.mkdir()
    for kind, text in (("query", "oxc1_a0 0 0 10 10\n"), ("good", "a0\na1\n"), ("ok", "a2\n"),
                       ("junk", "a3\n")):
        (gt / f"tower_1_{kind}.txt").write_text(text)
    np.save(tmp_path / "ranks.npy", np.array([[0, 3, 4, 1, 5, 2]]))
    proc = _run("d2r.cli.evaluate", "--dataset-dir", root, "--ranks", tmp_path / "ranks.npy",
                "--out", tmp_path / "out")
    # junk a3 is skipped: positives at ranks 0, 2, 4 of [a0, a4, a1, a5, a2]
    ap = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2 + (2 / 4 + 3 / 5) / 2) / 3
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) == CLASSIC_KEYS
    assert metrics["mAP"] == pytest.approx(100 * ap)
    # precision at min(k, 5): 1/1, 3/5, 3/5
    assert (metrics["mP@1"], metrics["mP@5"], metrics["mP@10"]) == pytest.approx((100, 60, 60))
    assert "oxford5k: 1 queries, 6 database images" in proc.stdout and "71.11" in proc.stdout


def test_evaluate_ukbench_and_holidays_hand_computed(tmp_path, capsys):
    ukbench = _touch(tmp_path / "uk" / "full", [f"ukbench{i:05d}" for i in range(8)]).parent
    ranks = np.array([[4 * (q // 4) + j for j in range(4)] + [4 * (1 - q // 4)] for q in range(8)])
    ranks[0, :4] = [0, 4, 5, 1]   # 2 of its group in the top 4
    ranks[7, :4] = [7, 0, 1, 2]   # 1
    np.save(tmp_path / "uk.npy", ranks)
    assert evaluate_main(["--dataset-dir", str(ukbench), "--ranks", str(tmp_path / "uk.npy"),
                          "--out", str(tmp_path / "uk_out")]) == 0
    assert json.loads((tmp_path / "uk_out" / "metrics.json").read_text()) == \
        {"N-S": pytest.approx((6 * 4 + 2 + 1) / 8)}
    assert "N-S" in capsys.readouterr().out

    holidays = _touch(tmp_path / "hol" / "jpg", ["100000", "100001", "100002", "100100",
                                                 "100101"]).parent
    # query 0 first finds itself (ignored), 1, a negative, then 2; query 3 finds 4 first
    np.save(tmp_path / "hol.npy", np.array([[0, 1, 3, 2, 4], [4, 3, 0, 1, 2]]))
    assert evaluate_main(["--dataset-dir", str(holidays), "--ranks", str(tmp_path / "hol.npy"),
                          "--kappas", "1", "--out", str(tmp_path / "hol_out")]) == 0
    ap0 = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    metrics = json.loads((tmp_path / "hol_out" / "metrics.json").read_text())
    assert metrics == {"mAP": pytest.approx(100 * (ap0 + 1) / 2), "mP@1": pytest.approx(100.0)}
    assert metrics["mAP"] == pytest.approx(
        100 * holidays_map(np.load(tmp_path / "hol.npy"), load_benchmark(holidays).dataset)[0])


def test_loaded_image_rotation():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    image = LoadedImage(pixels, original_size=(6, 4), scale=0.5)
    turned = image.rotated(90)
    np.testing.assert_array_equal(turned.pixels, np.rot90(pixels, k=-1))
    assert turned.pixels.flags.c_contiguous
    assert turned.original_size == (4, 6) and turned.size == (2, 3)
    assert image.rotated(-360) is image
    assert image.rotated(180).original_size == (6, 4)
    with pytest.raises(ValueError, match="multiple of 90"):
        image.rotated(45)


def test_holidays_end_to_end_with_rotations(layouts, tmp_path):
    data = layouts["holidays"]
    rotations = data / "rotations.txt"
    index = tmp_path / "index"
    _run("d2r.cli.build_index", "--dataset-dir", data, "--rotations", rotations, "--out", index,
         *BUILD)
    with FeatureStore.open(index / "features") as store:
        for name in ("100101", "100200", "100000"):
            with Image.open(data / "jpg" / f"{name}.jpg") as im:
                width, height = im.size
            upright = (height, width) if name == "100101" else (width, height)
            assert tuple(store.get(name).image_size) == upright
    out = tmp_path / "results"
    proc = _run("d2r.cli.query", "--index", index, "--dataset-dir", data, "--rotations", rotations,
                "--out", out, "--rerank", "5", "--report")
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == CLASSIC_KEYS and "mAP" in proc.stdout
    ranks = np.load(out / "ranks.npy")
    assert ranks.shape == (4, 15)
    # every query finds itself first and retrieval beats chance by far
    np.testing.assert_array_equal(ranks[:, 0], load_benchmark(data).dataset.query_ids)
    assert metrics["mAP"] > 50.0
    _run("d2r.cli.evaluate", "--dataset-dir", data, "--ranks", out, "--out", tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics
    page = (out / "report" / "index.html").read_text()
    assert "AP (all)" in page and 'data-label="positive"' in page
    with Image.open(data / "jpg" / "100101.jpg") as stored, \
            Image.open(out / "report" / "thumbs" / "db_000004.jpg") as thumb:  # shown upright
        assert (thumb.width > thumb.height) == (stored.height > stored.width)


def test_oxford_and_ukbench_end_to_end(layouts, tmp_path):
    for kind, low in (("oxford-paris", 60.0), ("ukbench", 2.0)):
        data = layouts[kind]
        index = tmp_path / kind
        _run("d2r.cli.build_index", "--dataset-dir", data, "--out", index, *BUILD)
        out = tmp_path / f"{kind}-results"
        _run("d2r.cli.query", "--index", index, "--dataset-dir", data, "--benchmark", kind,
             "--out", out)
        metrics = json.loads((out / "metrics.json").read_text())
        if kind == "ukbench":
            assert set(metrics) == {"N-S"} and low < metrics["N-S"] <= 4.0
        else:
            assert set(metrics) == CLASSIC_KEYS and metrics["mAP"] > low


def test_query_refuses_rotations_for_other_benchmarks(layouts, tmp_path):
    proc = _run("d2r.cli.build_index", "--dataset-dir", layouts["ukbench"], "--rotations",
                layouts["holidays"] / "rotations.txt", "--out", tmp_path / "x", *BUILD,
                check=False)
    assert proc.returncode != 0 and "Holidays only" in proc.stderr
