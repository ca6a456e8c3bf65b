"""Global (VLAD / CNN descriptor) index: exhaustive inner product through faiss."""

from __future__ import annotations

import numpy as np
import pytest

from d2r.encoding.aggregation import aggregate, similarity_matrix
from d2r.index.global_index import GlobalIndex
from d2r.index.storage import IndexFormatError


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_matches_brute_force_inner_product():
    rng = np.random.default_rng(0)
    db, q = unit_rows(rng, 50, 24), unit_rows(rng, 4, 24)
    index = GlobalIndex(24)
    np.testing.assert_array_equal(index.add(db[:20]), np.arange(20))
    np.testing.assert_array_equal(index.add(db[20:]), np.arange(20, 50))
    result = index.search(q, k=10)
    expected = q @ db.T
    for i in range(4):
        order = np.argsort(-expected[i])[:10]
        np.testing.assert_array_equal(result.ids[i], order)
        np.testing.assert_allclose(result.scores[i], expected[i][order], rtol=1e-5)
    assert result.scores.dtype == np.float32 and result.ids.dtype == np.int64


def test_padding_empty_and_faiss_export():
    rng = np.random.default_rng(1)
    index = GlobalIndex(8)
    empty = index.search(unit_rows(rng, 2, 8), k=3)
    assert np.all(empty.ids == -1) and np.all(np.isneginf(empty.scores))
    index.add(unit_rows(rng, 2, 8), names=["a", "b"])
    result = index.search(unit_rows(rng, 1, 8), k=4)
    assert sorted(result.ids[0, :2]) == [0, 1] and list(result.ids[0, 2:]) == [-1, -1]
    assert np.isneginf(result.scores[0, 2:]).all() and result.names == ("a", "b")
    assert index.search(np.zeros((0, 8), np.float32), k=2).ids.shape == (0, 2)
    flat = index.to_faiss()
    assert flat.ntotal == 2 and flat.metric_type == 0  # METRIC_INNER_PRODUCT


def test_vlad_aggregated_images_match_similarity_matrix():
    rng = np.random.default_rng(2)
    centroids = rng.standard_normal((6, 8)).astype(np.float32)
    images = [aggregate(rng.standard_normal((30, 8)).astype(np.float32), centroids, "vlad") for _ in range(10)]
    index = GlobalIndex(6 * 8)
    index.add(images)
    result = index.search(images[:3], k=10)
    expected = similarity_matrix(images[:3], images, method="vlad")
    for i in range(3):
        np.testing.assert_allclose(result.scores[i], np.sort(expected[i])[::-1], rtol=1e-5, atol=1e-6)
        assert result.ids[i, 0] == i


def test_rejects_bad_input():
    index = GlobalIndex(8)
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        index.add(np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="names has"):
        index.add(np.zeros((2, 8), np.float32), names=["x"])
    with pytest.raises(ValueError, match="k must"):
        index.search(np.zeros((1, 8), np.float32), k=0)


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_roundtrip(tmp_path, mmap):
    rng = np.random.default_rng(3)
    index = GlobalIndex(16)
    index.add(unit_rows(rng, 30, 16), names=[f"n{i}" for i in range(30)])
    path = index.save(tmp_path / "g", config={"method": "r_vlad"})
    loaded = GlobalIndex.load(path, mmap=mmap, verify=True)
    assert isinstance(loaded.vectors, np.memmap) == mmap
    q = unit_rows(rng, 3, 16)
    a, b = index.search(q, k=5), loaded.search(q, k=5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert b.names == index.names and loaded.config == {"method": "r_vlad"}
    loaded.add(unit_rows(rng, 2, 16), names=["x", "y"])
    assert loaded.num_images == 32 and loaded.search(q, k=40).ids[0, 31] >= 0


def test_load_rejects_truncated_vectors(tmp_path):
    index = GlobalIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    path = index.save(tmp_path / "g")
    data = (path / "vectors.npy").read_bytes()
    (path / "vectors.npy").write_bytes(data[:-4])
    with pytest.raises(IndexFormatError, match="vectors.npy has"):
        GlobalIndex.load(path)
