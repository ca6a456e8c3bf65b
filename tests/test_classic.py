"""Tests of the Oxford5k/Paris6k, Holidays and UKBench readers and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from d2r.datasets.classic import (
    holidays_map,
    load_holidays,
    load_oxford_paris,
    load_ukbench,
    oxford_paris_map,
    read_rotations,
    rotate_image,
    ukbench_ns_score,
)


def touch_images(directory, names):
    directory.mkdir(parents=True, exist_ok=True)
    for n in names:
        (directory / f"{n}.jpg").write_bytes(b"")
    return directory


def compute_ap_cpp(positives, junk, ranked):
    """Re-derivation of the Oxford compute_ap.cpp recall/precision walk."""
    old_recall, old_precision, ap, hits, seen = 0.0, 1.0, 0.0, 0, 0
    for item in ranked:
        if item in junk:
            continue
        if item in positives:
            hits += 1
        recall = hits / len(positives)
        precision = hits / (seen + 1.0)
        ap += (recall - old_recall) * (old_precision + precision) / 2.0
        old_recall, old_precision = recall, precision
        seen += 1
    return ap


OX_IMAGES = ["all_souls_000001", "all_souls_000002", "all_souls_000003", "balliol_000001",
             "balliol_000002", "christ_church_000001"]


@pytest.fixture()
def oxford(tmp_path):
    images = touch_images(tmp_path / "jpg", OX_IMAGES)
    gt = tmp_path / "gt_files"
    gt.mkdir()
    files = {
        "all_souls_1_query.txt": "oxc1_all_souls_000001 136.5 34.1 648.5 955.7\n",
        "all_souls_1_good.txt": "all_souls_000001\nall_souls_000002\n",
        "all_souls_1_ok.txt": "all_souls_000003\n",
        "all_souls_1_junk.txt": "christ_church_000001\n",
        "balliol_1_query.txt": "balliol_000001 1 2 30 40\n",  # Paris style: no prefix
        "balliol_1_good.txt": "balliol_000001\n",
        "balliol_1_ok.txt": "",
        "balliol_1_junk.txt": "",
    }
    for name, text in files.items():
        (gt / name).write_text(text)
    return gt, images


def test_oxford_loader(oxford):
    gt, images = oxford
    ds = load_oxford_paris(gt, images, name="oxford5k")
    assert ds.db_names == tuple(sorted(OX_IMAGES))
    assert ds.query_labels == ("all_souls_1", "balliol_1")
    assert [ds.db_names[i] for i in ds.query_ids] == ["all_souls_000001", "balliol_000001"]
    np.testing.assert_allclose(ds.query_boxes[0], [136.5, 34.1, 648.5, 955.7], rtol=1e-6)
    assert ds.query_boxes.dtype == np.float32
    idx = {n: i for i, n in enumerate(ds.db_names)}
    assert sorted(ds.gnd[0]["ok"]) == sorted(idx[n] for n in OX_IMAGES[:3])
    assert list(ds.gnd[0]["junk"]) == [idx["christ_church_000001"]]
    assert ds.query_path(1) == images / "balliol_000001.jpg"


def test_oxford_map_matches_compute_ap_cpp(oxford):
    gt, images = oxford
    ds = load_oxford_paris(gt, images)
    rng = np.random.default_rng(3)
    for _ in range(20):
        ranks = np.stack([rng.permutation(ds.num_db) for _ in range(ds.num_queries)])
        ranks = ranks[:, : rng.integers(1, ds.num_db + 1)]  # also truncated rankings
        mean_ap, aps = oxford_paris_map(ranks, ds)
        expected = [
            compute_ap_cpp(set(g["ok"].tolist()), set(g["junk"].tolist()), row.tolist())
            for g, row in zip(ds.gnd, ranks)
        ]
        np.testing.assert_allclose(aps, expected, atol=1e-12)
        assert mean_ap == pytest.approx(np.mean(expected))


def test_oxford_missing_images(oxford):
    gt, images = oxford
    (images / "all_souls_000003.jpg").unlink()
    with pytest.raises(ValueError, match="all_souls_1_ok.txt.*missing='drop'"):
        load_oxford_paris(gt, images)
    ds = load_oxford_paris(gt, images, missing="drop")
    assert ds.gnd[0]["ok"].size == 2
    (images / "balliol_000001.jpg").unlink()
    with pytest.raises(ValueError, match="query image 'balliol_000001'"):
        load_oxford_paris(gt, images, missing="drop")


def test_oxford_bad_files(oxford, tmp_path):
    gt, images = oxford
    (gt / "balliol_1_query.txt").write_text("balliol_000001 1 2 x 4\n")
    with pytest.raises(ValueError, match="not numbers"):
        load_oxford_paris(gt, images)
    (gt / "balliol_1_query.txt").write_text("balliol_000001 1 2\n")
    with pytest.raises(ValueError, match="balliol_1_query.txt"):
        load_oxford_paris(gt, images)
    (gt / "balliol_1_query.txt").write_text("balliol_000001 1 2 3 4\n")
    (gt / "balliol_1_junk.txt").unlink()
    with pytest.raises(FileNotFoundError, match="balliol_1_junk.txt"):
        load_oxford_paris(gt, images)
    with pytest.raises(FileNotFoundError, match="no \\*_query.txt"):
        load_oxford_paris(images, images)
    with pytest.raises(ValueError, match="missing must be"):
        load_oxford_paris(gt, images, missing="skip")


HOLIDAY_IMAGES = ["100000", "100001", "100002", "100100", "100101", "149900", "149901"]


def test_holidays_loader_and_map(tmp_path):
    images = touch_images(tmp_path / "jpg", HOLIDAY_IMAGES)
    ds = load_holidays(images)
    assert ds.db_names == tuple(HOLIDAY_IMAGES)
    assert ds.query_labels == ("100000", "100100", "149900")
    np.testing.assert_array_equal(ds.query_ids, [0, 3, 5])
    np.testing.assert_array_equal(ds.gnd[0]["ok"], [1, 2])
    np.testing.assert_array_equal(ds.gnd[0]["junk"], [0])
    # Query 0 retrieves itself first (skipped), then 1, a negative, then 2.
    ranks = np.array([
        [0, 1, 3, 2, 4, 5, 6],
        [4, 3, 0, 1, 2, 5, 6],   # 4 at rank 0 -> AP 1
        [0, 1, 2, 3, 4, 5, 6],   # query 5 is skipped, so 6 sits at rank 5
    ])
    mean_ap, aps = holidays_map(ranks, ds)
    ap0 = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    ap2 = (0 + 1 / 6) / 2  # 5 skipped -> 6 sits at rank 5 among 0..4,6
    np.testing.assert_allclose(aps, [ap0, 1.0, ap2])
    assert mean_ap == pytest.approx((ap0 + 1.0 + ap2) / 3)


def test_holidays_rotations(tmp_path):
    images = touch_images(tmp_path / "jpg", HOLIDAY_IMAGES)
    rot_file = tmp_path / "rotations.txt"
    rot_file.write_text("# name degrees\n100001.jpg 90\n100101 -90\n")
    assert read_rotations(rot_file) == {"100001": 90, "100101": 270}
    ds = load_holidays(images, rotations=rot_file)
    assert ds.rotation(1) == 90 and ds.rotation(4) == 270 and ds.rotation(0) == 0
    assert load_holidays(images, rotations={"100002": 180}).rotation(2) == 180
    with pytest.raises(ValueError, match="not in"):
        load_holidays(images, rotations={"999999": 90})
    with pytest.raises(ValueError, match="multiple of 90"):
        load_holidays(images, rotations={"100001": 45})
    rot_file.write_text("100001\n")
    with pytest.raises(ValueError, match="rotations.txt:1"):
        read_rotations(rot_file)


def test_rotate_image_clockwise():
    image = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(rotate_image(image, 90), [[3, 1], [4, 2]])
    np.testing.assert_array_equal(rotate_image(image, 180), [[4, 3], [2, 1]])
    np.testing.assert_array_equal(rotate_image(image, 270), [[2, 4], [1, 3]])
    assert rotate_image(np.zeros((2, 3, 3)), 90).shape == (3, 2, 3)
    with pytest.raises(ValueError, match="multiple of 90"):
        rotate_image(image, 30)


def test_holidays_errors(tmp_path):
    with pytest.raises(ValueError, match="no query image 100100.jpg"):
        load_holidays(touch_images(tmp_path / "a", ["100000", "100101"]))
    with pytest.raises(ValueError, match="numbers"):
        load_holidays(touch_images(tmp_path / "b", ["100000", "abc"]))
    with pytest.raises(FileNotFoundError, match="no \\*.jpg"):
        load_holidays(touch_images(tmp_path / "c", []))


def test_ukbench_loader_and_score(tmp_path):
    names = [f"ukbench{i:05d}" for i in range(8)]
    ds = load_ukbench(touch_images(tmp_path / "full", names))
    assert ds.db_names == tuple(names)
    np.testing.assert_array_equal(ds.query_ids, np.arange(8))
    np.testing.assert_array_equal(ds.gnd[5]["ok"], [4, 5, 6, 7])
    perfect = np.array(
        [[4 * (q // 4) + j for j in range(4)] + [4 * (1 - q // 4)] for q in range(8)]
    )
    assert ukbench_ns_score(perfect) == pytest.approx(4.0)
    ranks = perfect.copy()
    ranks[0, :4] = [0, 4, 5, 1]   # 2 hits
    ranks[7, :4] = [7, 0, 1, 2]   # 1 hit
    assert ukbench_ns_score(ranks) == pytest.approx((4 * 6 + 2 + 1) / 8)
    # Equal to 4 x recall@4 computed the slow way.
    recall = np.mean([len(set(r[:4]) & set(range(4 * (q // 4), 4 * (q // 4) + 4))) / 4
                      for q, r in enumerate(ranks.tolist())])
    assert ukbench_ns_score(ranks) == pytest.approx(4 * recall)
    assert ukbench_ns_score(ranks[:1], query_ids=[0]) == pytest.approx(2.0)


def test_ukbench_errors(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4"):
        load_ukbench(touch_images(tmp_path / "a", [f"ukbench{i:05d}" for i in range(6)]))
    with pytest.raises(ValueError, match="gaps"):
        load_ukbench(touch_images(tmp_path / "b", ["ukbench00000", "ukbench00002"]))
    with pytest.raises(ValueError, match="unexpected"):
        load_ukbench(touch_images(tmp_path / "c", ["image1"]))
    with pytest.raises(ValueError, match="N >= 4"):
        ukbench_ns_score(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="twice"):
        ukbench_ns_score(np.array([[0, 0, 1, 2]]))
    with pytest.raises(ValueError, match="query_ids"):
        ukbench_ns_score(np.array([[0, 1, 2, 3]]), query_ids=[0, 1])
