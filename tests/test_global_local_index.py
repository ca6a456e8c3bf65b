"""Global + CAM-local descriptor index: min of the two L1 distances, exact through faiss."""

import numpy as np
import pytest

from d2r.cnn.cam import min_manhattan_distance
from d2r.index import global_local
from d2r.index.global_local import GlobalLocalIndex
from d2r.index.storage import IndexFormatError, IndexWriter


def brute_force(queries, database, k):
    """(Q, k) ids and scores from min_manhattan_distance + stable argsort, padded with -1 / -inf."""
    dist = min_manhattan_distance(queries[:, 0], queries[:, 1], database[:, 0], database[:, 1])
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    ids = np.full((len(queries), k), -1, np.int64)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    ids[:, : order.shape[1]] = order
    scores[:, : order.shape[1]] = -np.take_along_axis(dist, order, axis=1)
    return ids, scores


@pytest.fixture(params=["one_chunk", "tiny_chunks"])
def chunking(request, monkeypatch):
    """Run with the default chunks and with 3 database rows per chunk, 1 query per gather."""
    if request.param == "tiny_chunks":
        monkeypatch.setattr(global_local, "_CHUNK_BYTES", 3 * 8 * 16)  # D = 16 below
        monkeypatch.setattr(global_local, "_GATHER_BYTES", 1)
    return request.param


@pytest.mark.parametrize("k", [1, 2, 5, 17, 60, 61, 200])
def test_search_matches_brute_force(chunking, k):
    rng = np.random.default_rng(k)
    database = rng.standard_normal((61, 2, 16)).astype(np.float32)
    database[:, 1] *= 0.5  # local distances smaller on average: both slots win somewhere
    queries = rng.standard_normal((7, 2, 16)).astype(np.float32)
    index = GlobalLocalIndex(16)
    np.testing.assert_array_equal(index.add(database[:20]), np.arange(20))
    np.testing.assert_array_equal(index.add(database[20:]), np.arange(20, 61))
    result = index.search(queries, k=k)
    ids, scores = brute_force(queries, database, k)
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_allclose(result.scores, scores, rtol=1e-6)
    assert result.scores.dtype == np.float32 and result.ids.dtype == np.int64
    # the two slots both contribute to the top k (else the test would not exercise the merge)
    if k == 17:
        qg = np.abs(queries[:, None, 0] - database[None, :, 0]).sum(-1)
        ql = np.abs(queries[:, None, 1] - database[None, :, 1]).sum(-1)
        winners = np.take_along_axis(qg < ql, result.ids, axis=1)
        assert winners.any() and not winners.all()


@pytest.mark.parametrize("k", [1, 3, 8, 25, 40])
def test_duplicates_and_ties_go_to_the_lower_id(chunking, k):
    rng = np.random.default_rng(50 + k)
    pool = rng.integers(-2, 3, (6, 2, 16)).astype(np.float32)  # integers: exact distances
    database = pool[rng.integers(0, 6, 30)]
    queries = np.concatenate([pool[:2], rng.integers(-2, 3, (3, 2, 16)).astype(np.float32)])
    index = GlobalLocalIndex(16)
    index.add(database)
    result = index.search(queries, k=k)
    ids, scores = brute_force(queries, database, k)
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_array_equal(result.scores, scores)


def test_hand_checked_tiny_case():
    database = np.array([
        [[0, 0], [10, 10]],   # global |(0,1)-(0,0)| = 1, local 20 -> 1
        [[5, 5], [1, 0]],     # global 9, local 1             -> 1
        [[3, 0], [3, 0]],     # global 4, local 3             -> 3
        [[0, 3], [9, 9]],     # global 2, local 18            -> 2
    ], np.float32)
    query = np.array([[[0, 1], [0, 0]]], np.float32)
    index = GlobalLocalIndex(2)
    index.add(database, names=["a", "b", "c", "d"])
    result = index.search(query, k=6)
    assert result.ids.tolist() == [[0, 1, 3, 2, -1, -1]]
    assert result.scores.tolist() == [[-1.0, -1.0, -2.0, -3.0, -np.inf, -np.inf]]
    assert result.names_of(0) == ["a", "b", "d", "c"]
    assert index.search(query, k=1).ids.tolist() == [[0]]
    assert index.search(query, k=3).ids.tolist() == [[0, 1, 3]]


def test_empty_database_and_no_queries():
    index = GlobalLocalIndex(4)
    empty = index.search(np.ones((2, 2, 4), np.float32), k=3)
    assert np.all(empty.ids == -1) and np.all(np.isneginf(empty.scores))
    assert index.add(np.zeros((0, 2, 4), np.float32)).shape == (0,)
    index.add(np.ones((2, 2, 4), np.float32))
    assert index.search(np.zeros((0, 2, 4), np.float32), k=2).ids.shape == (0, 2)
    assert index.vectors.shape == (2, 2, 4) and not index.vectors.flags.writeable
    assert index.num_images == len(index) == 2 and index.nbytes == 2 * 2 * 4 * 4


def test_rejects_bad_input():
    index = GlobalLocalIndex(4)
    with pytest.raises(ValueError, match=r"vectors must have shape \(n, 2, 4\)"):
        index.add(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"vectors must have shape \(n, 2, 4\)"):
        index.add(np.zeros((3, 3, 4), np.float32))
    with pytest.raises(ValueError, match="vectors contains NaN"):
        index.add(np.full((1, 2, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="names has"):
        index.add(np.zeros((2, 2, 4), np.float32), names=["x"])
    assert index.num_images == 0
    with pytest.raises(ValueError, match=r"queries must have shape \(n, 2, 4\)"):
        index.search(np.zeros((1, 2, 5), np.float32))
    with pytest.raises(ValueError, match="queries contains NaN"):
        index.search(np.full((1, 2, 4), np.inf, np.float32))
    with pytest.raises(ValueError, match="k must"):
        index.search(np.zeros((1, 2, 4), np.float32), k=0)
    with pytest.raises(ValueError, match="dim"):
        GlobalLocalIndex(0)


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_roundtrip(tmp_path, mmap):
    rng = np.random.default_rng(3)
    database = rng.standard_normal((30, 2, 8)).astype(np.float32)
    index = GlobalLocalIndex(8)
    index.add(database, names=[f"n{i}" for i in range(30)])
    path = index.save(tmp_path / "gl", config={"pfa": 256})
    loaded = GlobalLocalIndex.load(path, mmap=mmap, verify=True)
    assert isinstance(loaded.vectors, np.memmap) == mmap
    queries = rng.standard_normal((3, 2, 8)).astype(np.float32)
    a, b = index.search(queries, k=5), loaded.search(queries, k=5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert b.names == index.names and loaded.config == {"pfa": 256}
    more = rng.standard_normal((2, 2, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.add(more, names=["x", "y"]), [30, 31])
    ids, _ = brute_force(queries, np.concatenate([database, more]), 40)
    np.testing.assert_array_equal(loaded.search(queries, k=40).ids, ids)


def test_load_rejects_inconsistent_vectors(tmp_path):
    for name, vectors in [("shape", np.zeros((3, 4), np.float32)), ("dtype", np.zeros((3, 2, 4)))]:
        with IndexWriter(tmp_path / name, kind=GlobalLocalIndex.kind) as writer:
            writer.put("vectors", vectors)
            writer.commit(meta={"dim": 4, "num_images": 3})
        with pytest.raises(IndexFormatError, match=r"vectors.npy holds .*expected float32 \(3, 2, 4\)"):
            GlobalLocalIndex.load(tmp_path / name)
    index = GlobalLocalIndex(4)
    index.add(np.zeros((2, 2, 4), np.float32))
    path = index.save(tmp_path / "ok")
    data = (path / "vectors.npy").read_bytes()
    (path / "vectors.npy").write_bytes(data[:-4])
    with pytest.raises(IndexFormatError, match="vectors.npy has"):
        GlobalLocalIndex.load(path)
