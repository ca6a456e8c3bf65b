"""Inverted file and index storage: scores against brute force, building, save/load."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from d2r.aggregation import similarity, similarity_matrix
from d2r.index import inverted as inverted_module
from d2r.index.inverted import InvertedIndex, InvertedIndexWriter, top_k
from d2r.index.storage import IndexFormatError, read_index
from d2r.types import AggregatedImage

K = 50


def random_item(rng, dim, binary, num_words, *, k=K, unit=True):
    words = np.sort(rng.choice(k, size=num_words, replace=False)).astype(np.int32)
    if binary:
        vectors = np.packbits(rng.random((num_words, dim)) > 0.5, axis=1)
    else:
        vectors = rng.standard_normal((num_words, dim)).astype(np.float32)
        if unit and num_words:
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return AggregatedImage(words, vectors, dim, binary)


def random_items(rng, n, dim, binary, *, max_words=30, empty_every=7):
    return [random_item(rng, dim, binary, 0 if i % empty_every == 3 else int(rng.integers(1, max_words)))
            for i in range(n)]


def build(items, dim, binary, batches=(0.5,), **kw):
    index = InvertedIndex(num_words=K, dim=dim, binary=binary, **kw)
    cuts = [int(f * len(items)) for f in batches]
    for lo, hi in zip([0, *cuts], [*cuts, len(items)]):
        index.add(items[lo:hi])
    return index


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("dim", [32, 128, 20])
@pytest.mark.parametrize("normalize", [True, False, "query"])
@pytest.mark.parametrize("alpha,tau", [(3.0, 0.0), (1.0, -1.0), (2.5, 0.2)])
def test_scores_match_brute_force(binary, dim, normalize, alpha, tau):
    rng = np.random.default_rng(dim * 7 + binary)
    db = random_items(rng, 40, dim, binary)
    queries = random_items(rng, 6, dim, binary, empty_every=5)
    index = build(db, dim, binary, batches=(0.3, 0.6))
    expected = similarity_matrix(queries, db, alpha=alpha, tau=tau, normalize=normalize)
    got = np.stack([index.score_all(q, alpha=alpha, tau=tau, normalize=normalize) for q in queries])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    result = index.search(queries, k=10, alpha=alpha, tau=tau, normalize=normalize)
    for qi in range(len(queries)):
        order = np.lexsort((np.arange(len(db)), -got[qi]))[:10]
        np.testing.assert_array_equal(result.ids[qi], order)
        np.testing.assert_allclose(result.scores[qi], got[qi][order], rtol=1e-6)


def test_scores_match_pairwise_similarity():
    rng = np.random.default_rng(1)
    db = random_items(rng, 12, 64, True)
    q = random_item(rng, 64, True, 25)
    index = build(db, 64, True)
    expected = [similarity(q, d, method="asmk_star") for d in db]
    np.testing.assert_allclose(index.score_all(q), expected, rtol=1e-6, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), binary=st.booleans(), dim=st.sampled_from([8, 13, 32, 64]),
       n=st.integers(0, 25), alpha=st.sampled_from([1.0, 3.0]), tau=st.sampled_from([-0.5, 0.0, 0.3]))
def test_property_search_equals_brute_force(seed, binary, dim, n, alpha, tau):
    rng = np.random.default_rng(seed)
    db = random_items(rng, n, dim, binary, max_words=K, empty_every=4)
    queries = random_items(rng, 3, dim, binary, max_words=K, empty_every=3)
    index = build(db, dim, binary, batches=(0.5,))
    expected = similarity_matrix(queries, db, alpha=alpha, tau=tau)
    result = index.search(queries, k=8, alpha=alpha, tau=tau)
    for qi in range(len(queries)):
        kk = min(8, n)
        top = np.sort(expected[qi])[::-1][:kk]
        np.testing.assert_allclose(result.scores[qi][:kk], top, rtol=1e-5, atol=1e-6)
        assert np.all(result.ids[qi][kk:] == -1) and np.all(np.isneginf(result.scores[qi][kk:]))


def test_chunked_gather_and_blocked_merge(monkeypatch):
    monkeypatch.setattr(inverted_module, "_GATHER_BYTES", 64)
    monkeypatch.setattr(inverted_module, "_MERGE_BYTES", 128)
    rng = np.random.default_rng(2)
    for binary in (True, False):
        db = random_items(rng, 30, 16, binary)
        queries = random_items(rng, 4, 16, binary)
        index = build(db, 16, binary, batches=(0.2, 0.5, 0.9))
        got = np.stack([index.score_all(q) for q in queries])
        np.testing.assert_allclose(got, similarity_matrix(queries, db), rtol=1e-5, atol=1e-6)


def test_incremental_add_equals_single_batch_and_ids_ascend():
    rng = np.random.default_rng(3)
    db = random_items(rng, 25, 32, True)
    one = build(db, 32, True, batches=())
    many = build(db, 32, True, batches=(0.1, 0.4, 0.8))
    assert many.add([]).shape == (0,)
    for word in range(K):
        ids_a, codes_a = one.posting_list(word)
        ids_b, codes_b = many.posting_list(word)
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(codes_a, codes_b)
        assert np.all(np.diff(ids_b) > 0)
    assert many.num_postings == sum(len(d) for d in db)
    np.testing.assert_array_equal(many.posting_lengths(),
                                  np.bincount(np.concatenate([d.words for d in db]), minlength=K))
    np.testing.assert_array_equal(many.item_lengths, [len(d) for d in db])


def test_add_returns_consecutive_ids_and_names():
    rng = np.random.default_rng(4)
    index = InvertedIndex(num_words=K, dim=16, binary=False)
    ids = index.add(random_items(rng, 3, 16, False), names=["a", "b", "c"])
    np.testing.assert_array_equal(ids, [0, 1, 2])
    np.testing.assert_array_equal(index.add(random_items(rng, 2, 16, False), names=["d", "e"]), [3, 4])
    result = index.search([random_item(rng, 16, False, 10)], k=7)
    assert result.names == ("a", "b", "c", "d", "e")
    with pytest.raises(ValueError, match="names consistently"):
        index.add(random_items(rng, 1, 16, False))


def test_empty_index_and_empty_query():
    index = InvertedIndex(num_words=K, dim=16, binary=True)
    rng = np.random.default_rng(5)
    result = index.search([random_item(rng, 16, True, 5), AggregatedImage.empty(16, binary=True)], k=3)
    assert result.ids.shape == (2, 3) and np.all(result.ids == -1) and np.all(np.isneginf(result.scores))
    index.add(random_items(rng, 4, 16, True))
    scores = index.score_all(AggregatedImage.empty(16, binary=True))
    np.testing.assert_array_equal(scores, np.zeros(4))
    assert index.search([], k=3).ids.shape == (0, 3)


def test_top_k_ties_and_padding():
    scores = np.array([0.5, 1.0, 0.5, 0.2, 1.0, 0.5])
    s, i = top_k(scores, 4)
    np.testing.assert_array_equal(i, [1, 4, 0, 2])
    np.testing.assert_array_equal(s, np.float32([1.0, 1.0, 0.5, 0.5]))
    s, i = top_k(scores[:2], 4)
    np.testing.assert_array_equal(i, [1, 0, -1, -1])
    assert s.dtype == np.float32 and i.dtype == np.int64 and np.isneginf(s[2:]).all()


def test_float16_storage_is_close():
    rng = np.random.default_rng(6)
    db = random_items(rng, 20, 32, False)
    q = random_item(rng, 32, False, 20)
    index = build(db, 32, False, vector_dtype="float16")
    assert index.posting_list(int(q.words[0]))[1].dtype == np.float16
    np.testing.assert_allclose(index.score_all(q), similarity_matrix([q], db)[0], atol=2e-3)


@pytest.mark.parametrize("bad,match", [
    (AggregatedImage.empty(16, binary=False), "binary"),
    (AggregatedImage.empty(8, binary=True), "dim"),
    (AggregatedImage(np.array([K], np.int32), np.zeros((1, 2), np.uint8), 16, True), "outside the codebook"),
    ("not an item", "AggregatedImage"),
])
def test_rejects_bad_items(bad, match):
    index = InvertedIndex(num_words=K, dim=16, binary=True)
    with pytest.raises((ValueError, TypeError), match=match):
        index.add([bad])
    with pytest.raises((ValueError, TypeError), match=match):
        index.search([bad])


def test_rejects_bad_options():
    index = InvertedIndex(num_words=K, dim=16, binary=True)
    q = AggregatedImage.empty(16, binary=True)
    with pytest.raises(ValueError, match="normalize"):
        index.search([q], normalize="sideways")
    with pytest.raises(ValueError, match="k must"):
        index.search([q], k=0)
    with pytest.raises(ValueError, match="vector_dtype"):
        InvertedIndex(num_words=K, dim=16, binary=False, vector_dtype="int8")
    with pytest.raises(ValueError, match="names has"):
        index.add([q], names=["a", "b"])


# ---------------------------------------------------------------------- storage


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(7)
    db = random_items(rng, 30, 32, True)
    names = [f"img{i}" for i in range(len(db))]
    index = InvertedIndex(num_words=K, dim=32, binary=True)
    index.add(db, names=names)
    path = index.save(tmp_path / "ivf", config={"codebook_sha256": "abc", "alpha": 3.0})
    queries = random_items(rng, 3, 32, True)
    return path, index, db, queries


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_roundtrip(saved, mmap):
    path, index, db, queries = saved
    loaded = InvertedIndex.load(path, mmap=mmap, verify=True)
    a, b = index.search(queries, k=10), loaded.search(queries, k=10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert b.names == tuple(f"img{i}" for i in range(len(db)))
    assert loaded.config == {"codebook_sha256": "abc", "alpha": 3.0}
    assert isinstance(loaded.posting_list(0)[1], np.memmap) == mmap
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["kind"] == "inverted"
    assert manifest["meta"]["num_words"] == K and manifest["meta"]["binary"] is True
    assert set(manifest["arrays"]) == {"offsets", "image_ids", "codes", "item_lengths"}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_add_after_load_is_copy_on_write(saved):
    path, index, db, queries = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    loaded = InvertedIndex.load(path)
    rng = np.random.default_rng(8)
    extra = random_items(rng, 5, 32, True)
    np.testing.assert_array_equal(loaded.add(extra, names=list("vwxyz")), np.arange(30, 35))
    expected = similarity_matrix(queries, db + extra)
    got = np.stack([loaded.score_all(q) for q in queries])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert before == {p.name: p.read_bytes() for p in path.iterdir()}
    loaded.save(path, overwrite=True)
    reloaded = InvertedIndex.load(path, verify=True)
    assert reloaded.num_items == 35 and reloaded.names[-1] == "z"


def test_save_refuses_existing_directory(saved):
    path, index, _, _ = saved
    with pytest.raises(FileExistsError, match="already exists"):
        index.save(path)


def test_load_rejects_wrong_version_and_kind(saved):
    path, _, _, _ = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="format version 99"):
        InvertedIndex.load(path)
    manifest["format_version"] = 1
    manifest["kind"] = "global"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="'global' index"):
        InvertedIndex.load(path)


def test_load_rejects_missing_and_truncated_arrays(saved):
    path, _, _, _ = saved
    codes = path / "codes.npy"
    data = codes.read_bytes()
    codes.write_bytes(data[:-5])
    with pytest.raises(IndexFormatError, match="codes.npy has .* bytes"):
        InvertedIndex.load(path)
    codes.unlink()
    with pytest.raises(IndexFormatError, match="missing array file .*codes.npy"):
        InvertedIndex.load(path)
    with pytest.raises(IndexFormatError, match="does not exist"):
        InvertedIndex.load(path / "nowhere")


def test_verify_detects_hash_mismatch(saved):
    path, _, _, _ = saved
    ids = path / "image_ids.npy"
    data = bytearray(ids.read_bytes())
    data[-1] ^= 0xFF
    ids.write_bytes(bytes(data))
    InvertedIndex.load(path)  # sizes still match: only verify reads every byte
    with pytest.raises(IndexFormatError, match="image_ids.npy does not match the sha256"):
        InvertedIndex.load(path, verify=True)


def test_load_rejects_shape_mismatch(saved):
    path, _, _, _ = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["meta"]["num_words"] = K + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="offsets.npy holds"):
        InvertedIndex.load(path)
    manifest["meta"]["num_words"] = K
    manifest["arrays"]["codes"]["shape"] = [1, 4]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="codes.npy holds .* manifest says"):
        read_index(path, kind="inverted")


def test_failed_save_leaves_nothing(tmp_path):
    index = InvertedIndex(num_words=K, dim=16, binary=True)
    with pytest.raises(TypeError, match="config must be JSON"):
        index.save(tmp_path / "ivf", config={"bad": object()})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- on-disk writer


def test_writer_builds_same_index_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(inverted_module, "_MERGE_BYTES", 256)
    rng = np.random.default_rng(9)
    for binary in (True, False):
        db = random_items(rng, 40, 24, binary)
        queries = random_items(rng, 3, 24, binary)
        path = tmp_path / f"w{int(binary)}"
        with InvertedIndexWriter(path, num_words=K, dim=24, binary=binary) as writer:
            for lo in range(0, 40, 9):
                writer.add(db[lo:lo + 9], names=[f"n{i}" for i in range(lo, min(lo + 9, 40))])
            assert writer.num_items == 40
            writer.close(config={"batch": 9})
        loaded = InvertedIndex.load(path, verify=True)
        got = np.stack([loaded.score_all(q) for q in queries])
        np.testing.assert_allclose(got, similarity_matrix(queries, db), rtol=1e-5, atol=1e-6)
        assert loaded.names[39] == "n39" and loaded.config == {"batch": 9}
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_writer_extends_base_without_touching_it(tmp_path):
    rng = np.random.default_rng(10)
    db = random_items(rng, 20, 16, True)
    base_path = build(db[:12], 16, True).save(tmp_path / "base")
    base = InvertedIndex.load(base_path)
    with InvertedIndexWriter(tmp_path / "grown", num_words=K, dim=16, binary=True, base=base) as writer:
        np.testing.assert_array_equal(writer.add(db[12:]), np.arange(12, 20))
        writer.close()
    assert base.num_items == 12
    grown = InvertedIndex.load(tmp_path / "grown")
    q = random_item(rng, 16, True, 30)
    np.testing.assert_allclose(grown.score_all(q), similarity_matrix([q], db)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="base index"):
        InvertedIndexWriter(tmp_path / "x", num_words=K, dim=32, binary=True, base=base)


def test_writer_discards_on_error(tmp_path):
    rng = np.random.default_rng(11)
    with pytest.raises(RuntimeError, match="boom"):
        with InvertedIndexWriter(tmp_path / "ivf", num_words=K, dim=16, binary=True) as writer:
            writer.add(random_items(rng, 5, 16, True))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    assert not os.path.exists(tmp_path / "ivf")
