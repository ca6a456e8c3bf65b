"""Best-region-pair index (regional CNN descriptors): exact search, Jeong QE, save/load."""

import json

import numpy as np
import pytest

from d2r.index import region_vectors
from d2r.index.region_vectors import RegionVectorIndex
from d2r.index.storage import IndexFormatError, IndexWriter


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_images(rng, n, d, max_regions=5):
    return [unit(rng, int(rng.integers(1, max_regions + 1)), d) for _ in range(n)]


def brute_force(queries, images, k):
    """Per-image Python loop: (Q, k) ids and scores by (score desc, id asc), padded."""
    ids = np.full((len(queries), k), -1, np.int64)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    for i, q in enumerate(queries):
        sims = np.array([np.max(q @ x.T) for x in images], np.float32)
        order = np.argsort(-sims, kind="stable")[:k]
        ids[i, : order.size], scores[i, : order.size] = order, sims[order]
    return ids, scores


@pytest.fixture(params=["one_chunk", "tiny_chunks"])
def chunking(request, monkeypatch):
    """Run with the default blocks and with a few regions per database chunk / query block."""
    if request.param == "tiny_chunks":
        # 2 to 12 database rows per chunk: some images alone in a chunk and larger than it
        monkeypatch.setattr(region_vectors, "_BLOCK_BYTES", 4 * 12)
        monkeypatch.setattr(region_vectors, "_QUERY_ROWS", 5)
    return request.param


@pytest.mark.parametrize("k", [1, 2, 7, 40, 41, 100])
def test_search_matches_per_image_loop(chunking, k):
    rng = np.random.default_rng(k)
    images = random_images(rng, 41, 12)
    queries = random_images(rng, 6, 12, max_regions=4)
    index = RegionVectorIndex(12)
    np.testing.assert_array_equal(index.add(images[:15]), np.arange(15))
    np.testing.assert_array_equal(index.add(images[15:]), np.arange(15, 41))
    result = index.search(queries, k=k)
    ids, scores = brute_force(queries, images, k)
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_allclose(result.scores, scores, rtol=1e-5, atol=1e-6)
    assert result.scores.dtype == np.float32 and result.ids.dtype == np.int64
    assert result.ids.shape == (6, k)


@pytest.mark.parametrize("k", [1, 3, 5, 12, 30])
def test_ties_go_to_the_lower_id(chunking, k):
    rng = np.random.default_rng(100 + k)
    # small integer vectors: exact arithmetic, many equal scores, duplicate images
    pool = [rng.integers(-2, 3, (int(rng.integers(1, 4)), 4)).astype(np.float32) for _ in range(5)]
    images = [pool[i] for i in rng.integers(0, 5, 25)]
    queries = [pool[0], pool[3], rng.integers(-2, 3, (2, 4)).astype(np.float32)]
    index = RegionVectorIndex(4)
    index.add(images)
    result = index.search(queries, k=k)
    ids, scores = brute_force(queries, images, k)
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_array_equal(result.scores, scores)


def test_best_pair_similarity_names_and_qe():
    rng = np.random.default_rng(2)
    db_regions = [unit(rng, 3, 6), unit(rng, 1, 6), unit(rng, 4, 6)]
    query = unit(rng, 2, 6)
    index = RegionVectorIndex(6)
    index.add(db_regions, names=["a", "b", "c"])
    brute = [max(float(q @ d) for q in query for d in regions) for regions in db_regions]
    result = index.search([query], k=3)
    np.testing.assert_array_equal(result.ids[0], np.argsort(brute)[::-1])
    np.testing.assert_allclose(result.scores[0], np.sort(brute)[::-1], rtol=1e-5)
    assert result.names == ("a", "b", "c") and index.names == ("a", "b", "c")
    np.testing.assert_array_equal(index.offsets, [0, 3, 4, 8])
    assert index.vectors.shape == (8, 6) and not index.vectors.flags.writeable
    assert index.num_images == len(index) == 3 and index.num_regions == 8
    assert index.nbytes == 8 * 6 * 4 + 4 * 8
    # QE with the top-1 image adds each query region's best match there; -1 is skipped
    top = int(np.argmax(brute))
    expanded = index.expand(query, [top, -1], top_k=2)
    block = db_regions[top]
    manual = query + block[np.argmax(query @ block.T, axis=1)]
    np.testing.assert_allclose(expanded, manual / np.linalg.norm(manual, axis=1, keepdims=True), rtol=1e-5)
    assert expanded.shape == (2, 6) and expanded.dtype == np.float32
    # only the first top_k ids count
    np.testing.assert_allclose(index.expand(query, result.ids[0], top_k=1), expanded, rtol=1e-5)
    np.testing.assert_allclose(index.expand(query, [], top_k=5), query, rtol=1e-5)
    # two images: both best matches are added
    both = index.expand(query, [0, 2], top_k=5)
    manual = query + sum(r[np.argmax(query @ r.T, axis=1)] for r in (db_regions[0], db_regions[2]))
    np.testing.assert_allclose(both, manual / np.linalg.norm(manual, axis=1, keepdims=True), rtol=1e-5)


def test_empty_database_no_queries_and_padding():
    rng = np.random.default_rng(3)
    index = RegionVectorIndex(8)
    empty = index.search([unit(rng, 2, 8)], k=3)
    assert np.all(empty.ids == -1) and np.all(np.isneginf(empty.scores))
    assert index.offsets.tolist() == [0] and index.vectors.shape == (0, 8)
    assert index.add([]).shape == (0,)
    index.add([unit(rng, 2, 8), unit(rng, 1, 8)], names=["a", "b"])
    result = index.search([unit(rng, 1, 8)], k=4)
    assert sorted(result.ids[0, :2]) == [0, 1] and list(result.ids[0, 2:]) == [-1, -1]
    assert np.isneginf(result.scores[0, 2:]).all() and np.isfinite(result.scores[0, :2]).all()
    assert index.search([], k=2).ids.shape == (0, 2)
    # a (Q, R, D) array is Q queries of R regions
    assert index.search(np.stack([unit(rng, 3, 8)] * 2), k=1).ids.shape == (2, 1)


def test_rejects_bad_input():
    index = RegionVectorIndex(6)
    with pytest.raises(ValueError, match=r"regions\[1\] must have shape \(R, 6\) with R >= 1"):
        index.add([np.ones((2, 6)), np.zeros((0, 6))])
    with pytest.raises(ValueError, match=r"regions\[0\] must have shape"):
        index.add([np.ones((2, 5))])
    with pytest.raises(ValueError, match=r"regions\[0\] must have shape"):
        index.add(np.ones((3, 6)))  # one image's (R, D) array instead of a sequence of them
    with pytest.raises(ValueError, match=r"regions\[0\] contains NaN"):
        index.add([np.full((1, 6), np.nan)])
    with pytest.raises(ValueError, match="names has"):
        index.add([np.ones((1, 6))], names=["x", "y"])
    assert index.num_images == 0  # nothing half-added
    index.add([np.ones((1, 6))])
    with pytest.raises(ValueError, match="without names"):
        index.add([np.ones((1, 6))], names=["x"])
    with pytest.raises(ValueError, match="k must"):
        index.search([np.ones((1, 6))], k=0)
    with pytest.raises(ValueError, match=r"queries\[1\] must have shape"):
        index.search([np.ones((1, 6)), np.ones((0, 6))])
    with pytest.raises(ValueError, match=r"queries\[0\] contains NaN"):
        index.search([np.full((1, 6), np.inf)])
    with pytest.raises(ValueError, match="query must have shape"):
        index.expand(np.ones(6), [0])
    with pytest.raises(ValueError, match="outside"):
        index.expand(np.ones((1, 6)), [1])
    with pytest.raises(ValueError, match="outside"):
        index.expand(np.ones((1, 6)), [-2])
    with pytest.raises(ValueError, match="ids must be a 1-D integer"):
        index.expand(np.ones((1, 6)), [[0]])
    with pytest.raises(ValueError, match="top_k"):
        index.expand(np.ones((1, 6)), [0], top_k=-1)
    with pytest.raises(ValueError, match="dim"):
        RegionVectorIndex(0)


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_roundtrip(tmp_path, mmap):
    rng = np.random.default_rng(4)
    images = random_images(rng, 20, 10)
    index = RegionVectorIndex(10)
    index.add(images, names=[f"n{i}" for i in range(20)])
    path = index.save(tmp_path / "r", config={"order": "both"})
    loaded = RegionVectorIndex.load(path, mmap=mmap, verify=True)
    assert isinstance(loaded.vectors, np.memmap) == mmap
    assert isinstance(loaded.offsets, np.memmap) == mmap
    np.testing.assert_array_equal(loaded.offsets, index.offsets)
    queries = random_images(rng, 3, 10)
    a, b = index.search(queries, k=5), loaded.search(queries, k=5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(index.expand(queries[0], a.ids[0]), loaded.expand(queries[0], b.ids[0]))
    assert b.names == index.names and loaded.config == {"order": "both"}
    assert loaded.nbytes == index.nbytes
    more = random_images(rng, 2, 10)
    np.testing.assert_array_equal(loaded.add(more, names=["x", "y"]), [20, 21])
    ids, _ = brute_force(queries, images + more, 22)
    np.testing.assert_array_equal(loaded.search(queries, k=22).ids, ids)
    with pytest.raises(FileExistsError):
        index.save(path)
    index.save(path, overwrite=True)


def write_raw(path, vectors, offsets, meta):
    with IndexWriter(path, kind=RegionVectorIndex.kind) as writer:
        writer.put("vectors", vectors)
        writer.put("offsets", offsets)
        return writer.commit(meta=meta)


@pytest.mark.parametrize(("vectors", "offsets", "meta", "message"), [
    (np.zeros((3, 4), np.float64), [0, 1, 3], {}, "vectors.npy holds float64"),
    (np.zeros((3, 5), np.float32), [0, 1, 3], {}, r"vectors.npy holds float32 \(3, 5\)"),
    (np.zeros((3, 4), np.float32), np.array([0, 1, 3], np.int32), {}, "offsets.npy holds int32"),
    (np.zeros((3, 4), np.float32), [0, 3], {}, r"offsets.npy holds int64 \(2,\)"),
    (np.zeros((3, 4), np.float32), [0, 3, 3], {}, "offsets.npy must rise strictly"),
    (np.zeros((3, 4), np.float32), [1, 2, 3], {}, "offsets.npy must rise strictly"),
    (np.zeros((3, 4), np.float32), [0, 1, 2], {}, "offsets.npy must rise strictly"),
    (np.zeros((3, 4), np.float32), [0, 1, 3], {"num_regions": None}, "invalid global-regions"),
])
def test_load_rejects_inconsistent_arrays(tmp_path, vectors, offsets, meta, message):
    meta = {"dim": 4, "num_images": 2, "num_regions": 3, **meta}
    path = write_raw(tmp_path / "r", vectors, np.asarray(offsets, np.int64)
                     if isinstance(offsets, list) else offsets, meta)
    with pytest.raises(IndexFormatError, match=message):
        RegionVectorIndex.load(path)


def test_load_rejects_missing_array_and_wrong_names(tmp_path):
    index = RegionVectorIndex(4)
    index.add([np.eye(4, dtype=np.float32)[:2], np.eye(4, dtype=np.float32)[2:]], names=["a", "b"])
    path = index.save(tmp_path / "r")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["arrays"]["offsets"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="lacks array offsets.npy"):
        RegionVectorIndex.load(path)
    path = index.save(tmp_path / "r", overwrite=True)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["meta"]["num_images"] = 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="offsets.npy holds"):
        RegionVectorIndex.load(path)
