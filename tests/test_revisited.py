"""Tests of the Revisited Oxford/Paris reader and the restricted unpickler."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import scipy.io as sio

from d2r.datasets.revisited import (
    GroundTruth,
    RevisitedDataset,
    crop_query,
    load_distractors,
    load_revisited,
    query_crop_box,
    with_distractors,
)
from d2r.datasets.safe_pickle import UnsafePickleError, load_pickle
from d2r.evaluation.metrics import evaluate_protocols

IMLIST = ["all_souls_000001", "all_souls_000002", "radcliffe_000003", "magdalen_000004"]


def official_structure(array_values: bool) -> dict:
    """The structure of gnd_roxford5k.pkl: lists or numpy values."""
    conv = (lambda v, dt: np.array(v, dtype=dt)) if array_values else (lambda v, dt: list(v))
    return {
        "imlist": list(IMLIST),
        "qimlist": ["all_souls_000013", "radcliffe_000055"],
        "gnd": [
            {"bbx": conv([10.4, 20.5, 60.5, 80.0], np.float64), "easy": conv([0], np.int64),
             "hard": conv([1], np.int64), "junk": conv([3], np.int64)},
            {"bbx": conv([0.0, 0.0, 30.0, 30.0], np.float64), "easy": conv([2], np.int64),
             "hard": conv([], np.int64), "junk": conv([], np.int64)},
        ],
    }


def write_layout(root, name="roxford5k", array_values=True, protocol=4):
    root.mkdir(parents=True, exist_ok=True)
    (root / "jpg").mkdir(exist_ok=True)
    with open(root / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump(official_structure(array_values), f, protocol=protocol)
    return root


# ---------------------------------------------------------------- safe pickle
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("array_values", [True, False])
def test_official_structure_loads(tmp_path, protocol, array_values):
    path = tmp_path / "gnd.pkl"
    path.write_bytes(pickle.dumps(official_structure(array_values), protocol=protocol))
    data = load_pickle(path)
    assert data["imlist"] == IMLIST
    np.testing.assert_array_equal(data["gnd"][0]["easy"], [0])
    np.testing.assert_allclose(data["gnd"][0]["bbx"], [10.4, 20.5, 60.5, 80.0])


def test_numpy1_pickle_loads(tmp_path):
    # numpy 1.x names the reconstructor numpy.core.multiarray._reconstruct.
    payload = pickle.dumps({"easy": np.arange(3), "s": np.float32(2.5)}, protocol=2)
    legacy = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in legacy
    path = tmp_path / "legacy.pkl"
    path.write_bytes(legacy)
    data = load_pickle(path)
    np.testing.assert_array_equal(data["easy"], [0, 1, 2])
    assert data["s"] == np.float32(2.5)


class _RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("func, refused", [(os.system, "system"), (eval, "builtins.eval")])
def test_code_running_pickle_is_refused(tmp_path, func, refused):
    marker = tmp_path / "ran"
    arg = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w')"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"imlist": [_RunsCode(func, arg)]}, protocol=4))
    with pytest.raises(UnsafePickleError, match=refused) as info:
        load_pickle(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_pickle_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_pickle(tmp_path / "nope.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(pickle.UnpicklingError, match="bad.pkl"):
        load_pickle(bad)


# ---------------------------------------------------------------- load_revisited
@pytest.mark.parametrize("array_values", [True, False])
def test_load_pkl_layout(tmp_path, array_values):
    root = write_layout(tmp_path / "roxford5k", array_values=array_values)
    ds = load_revisited(root)
    assert ds.name == "roxford5k"
    assert ds.db_names == tuple(IMLIST)
    assert ds.num_queries == 2 and ds.num_db == 4 and ds.num_base == 4
    assert ds.query_boxes.dtype == np.float32 and ds.query_boxes.shape == (2, 4)
    np.testing.assert_allclose(ds.query_boxes[0], [10.4, 20.5, 60.5, 80.0], rtol=1e-6)
    assert ds.gnd[0].easy.dtype == np.int64
    np.testing.assert_array_equal(ds.gnd[0].junk, [3])
    assert ds.gnd[1].hard.shape == (0,)
    assert ds.db_path(2) == root / "jpg" / "radcliffe_000003.jpg"
    assert ds.query_path(1) == root / "jpg" / "radcliffe_000055.jpg"
    with pytest.raises(IndexError):
        ds.db_path(4)
    # The ground truth feeds the protocol evaluation directly.
    metrics = evaluate_protocols(np.array([[0, 1, 2, 3], [2, 0, 1, 3]]), ds.gnd)
    assert metrics["medium"]["mAP"] == pytest.approx(100.0)


def test_load_mat_layout(tmp_path):
    root = tmp_path / "rparis6k"
    (root / "jpg").mkdir(parents=True)
    g = np.zeros((1, 1), dtype=[("bbx", "O"), ("easy", "O"), ("hard", "O"), ("junk", "O")])
    g[0, 0] = (np.array([[1.0, 2.0, 30.0, 40.0]]), np.array([[1, 2]]), np.zeros((0, 0)),
               np.array([[3]]))
    sio.savemat(root / "gnd_rparis6k.mat", {
        "imlist": np.array(["a", "b", "c"], dtype=object).reshape(1, -1),
        "qimlist": np.array(["q"], dtype=object),
        "gnd": g,
    })
    ds = load_revisited(root, "rparis6k")
    assert ds.db_names == ("a", "b", "c") and ds.query_names == ("q",)
    np.testing.assert_array_equal(ds.gnd[0].easy, [0, 1])  # 1-based -> 0-based
    np.testing.assert_array_equal(ds.gnd[0].junk, [2])
    assert ds.gnd[0].hard.size == 0


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_revisited(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="gnd_"):
        load_revisited(empty)
    two = write_layout(tmp_path / "two", name="a")
    write_layout(two, name="b")
    with pytest.raises(ValueError, match="several"):
        load_revisited(two)
    with pytest.raises(FileNotFoundError, match="gnd_c.pkl"):
        load_revisited(two, "c")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.pop("qimlist"), "missing keys"),
        (lambda d: d["gnd"].pop(), "2 query images"),
        (lambda d: d["gnd"][0].pop("hard"), "lacks 'hard'"),
        (lambda d: d["gnd"][0].__setitem__("bbx", [1, 2, 3]), "3 values"),
        (lambda d: d["gnd"][0].__setitem__("easy", [9]), "index 9"),
        (lambda d: d["gnd"][0].__setitem__("bbx", [5, 5, 1, 9]), "empty"),
    ],
)
def test_malformed_ground_truth(tmp_path, mutate, match):
    data = official_structure(array_values=False)
    mutate(data)
    root = tmp_path / "ds"
    root.mkdir()
    (root / "gnd_ds.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(ValueError, match=match) as info:
        load_revisited(root)
    assert "gnd_ds.pkl" in str(info.value)


# ---------------------------------------------------------------- distractors
def test_distractors_append_after_base(tmp_path):
    ds = load_revisited(write_layout(tmp_path / "roxford5k"))
    listing = tmp_path / "revisitop1m.txt"
    listing.write_text("0/00/aaa.jpg\n0/00/bbb\n\n")
    names = load_distractors(listing)
    assert names == ("0/00/aaa.jpg", "0/00/bbb")
    big = with_distractors(ds, names, tmp_path / "revisitop1m" / "jpg")
    assert big.num_db == 6 and big.num_base == 4 and big.num_distractors == 2
    assert big.db_names[:4] == ds.db_names
    assert big.db_path(0) == ds.db_path(0)
    assert big.db_path(4) == tmp_path / "revisitop1m" / "jpg" / "0/00/aaa.jpg"
    assert big.db_path(5) == tmp_path / "revisitop1m" / "jpg" / "0/00/bbb.jpg"
    assert big.gnd == ds.gnd
    with pytest.raises(ValueError, match="already has"):
        with_distractors(big, names, tmp_path)


def test_distractor_list_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="revisitop1m.txt"):
        load_distractors(tmp_path / "revisitop1m.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_distractors(empty)
    dup = tmp_path / "dup.txt"
    dup.write_text("a\na\n")
    with pytest.raises(ValueError, match="duplicate"):
        load_distractors(dup)


def test_dataset_validation():
    g = GroundTruth(easy=[0], hard=[], junk=[])
    with pytest.raises(ValueError, match="query_boxes"):
        RevisitedDataset("x", "/tmp", ("a",), ("q",), np.zeros((2, 4)), (g,))
    with pytest.raises(ValueError, match="ground-truth entries"):
        RevisitedDataset("x", "/tmp", ("a",), ("q",), [[0, 0, 1, 1]], ())
    with pytest.raises(ValueError, match="index 0"):
        RevisitedDataset("x", "/tmp", (), ("q",), [[0, 0, 1, 1]], (g,))


# ---------------------------------------------------------------- cropping
def test_query_crop_box_rounds_half_to_even_and_clips():
    # PIL rounds with Python's round(): 10.5 -> 10, 11.5 -> 12.
    assert query_crop_box([10.5, 11.5, 20.4, 30.6], 100, 100) == (10, 12, 20, 31)
    assert query_crop_box([-3.0, 2.0, 500.0, 40.0], 64, 48) == (0, 2, 64, 40)
    with pytest.raises(ValueError, match="empty"):
        query_crop_box([70, 0, 90, 10], 64, 48)
    with pytest.raises(ValueError, match="4 finite"):
        query_crop_box([0, 0, 1], 64, 48)


def test_crop_query_matches_slicing():
    image = np.arange(6 * 8 * 3).reshape(6, 8, 3)
    crop = crop_query(image, [1.2, 2.5, 5.5, 5.0])
    np.testing.assert_array_equal(crop, image[2:5, 1:6])
    assert crop_query(image[..., 0], [0, 0, 8, 6]).shape == (6, 8)
    with pytest.raises(ValueError, match="shape"):
        crop_query(np.zeros(5), [0, 0, 1, 1])
