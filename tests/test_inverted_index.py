"""Inverted file and index storage: scores against brute force, building, save/load."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from d2r.encoding.aggregation import selectivity, shared_words, similarity, similarity_matrix, word_similarities
from d2r.index import inverted as inverted_module
from d2r.index import posting_runs
from d2r.index.inverted import InvertedIndex, InvertedIndexWriter
from d2r.index.match_kernel import code_kernel, code_weights, vector_selectivity
from d2r.index.storage import IndexFormatError, read_index
from d2r.index.topk import top_k
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
@pytest.mark.parametrize("normalize", ["both", "none", "query"])
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
    monkeypatch.setattr(posting_runs, "_MERGE_BYTES", 128)
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


# ---------------------------------------------------------------------- search kernels


def random_codes(rng, n, dim, *, padding=False):
    """(n, ceil(D/8)) uint8 packed sign codes; ``padding``: random bytes (pad bits set too)."""
    width = (dim + 7) // 8
    if padding:
        return rng.integers(0, 256, (n, width), dtype=np.uint8)
    return np.packbits(rng.random((n, dim)) > 0.5, axis=1)


ALPHA_TAU = [(3.0, 0.0), (1.0, -1.0), (2.5, 0.2), (4.0, -0.3), (0.5, 0.5), (3.0, 0.99)]


@pytest.mark.parametrize("dim", [1, 5, 8, 13, 16, 20, 32, 40, 63, 64, 65, 100, 120, 121, 127, 128,
                                 129, 200, 256, 300])
@pytest.mark.parametrize("alpha,tau", ALPHA_TAU)
def test_code_weights_equal_selectivity_of_hamming(dim, alpha, tau):
    rng = np.random.default_rng(dim)
    kernel = code_kernel(dim, alpha=alpha, tau=tau)
    assert kernel.paired == (121 <= dim <= 128)
    for padding in (False, True):
        a = random_codes(rng, 300, dim, padding=padding)
        b = random_codes(rng, 300, dim, padding=padding)
        b[:3] = a[:3]  # h = 0
        b[3:6] = ~a[3:6] & (np.packbits(np.ones((1, dim), bool), axis=1) if not padding else 255)  # h = D
        b[6] = 0
        a[6] = 0 if not padding else 255  # h = 0, or every bit incl. padding set
        expected = selectivity(word_similarities(a, b, dim=dim, binary=True), alpha=alpha, tau=tau)
        got = code_weights(a.view(kernel.view) ^ b.view(kernel.view), kernel)
        assert got.dtype == np.float64 and got.shape == (300,)
        np.testing.assert_array_equal(got, expected)
    empty = np.zeros((0, (dim + 7) // 8), np.uint8).view(kernel.view)
    assert code_weights(empty, kernel).shape == (0,)
    with pytest.raises(ValueError, match="dim"):
        code_kernel(0)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 16.0, 2.5, 0.5, 17.0, 0.0, -1.0])
@pytest.mark.parametrize("tau", [-2.0, -1.0, -0.3, 0.0, 0.2, 0.9, 2.0])
def test_vector_selectivity_matches_selectivity(alpha, tau):
    rng = np.random.default_rng(int(alpha * 10 + tau * 100) % 1000)
    u = (rng.random(2000) * 2.4 - 1.2).astype(np.float32)
    u[:8] = [0.0, -0.0, tau, -tau, 1.0, -1.0, np.nextafter(np.float32(tau), 2), 1.2]
    with np.errstate(divide="ignore", invalid="ignore"):  # alpha <= 0: 0 ** alpha
        expected = selectivity(u, alpha=alpha, tau=tau)
        got = vector_selectivity(u, alpha=alpha, tau=tau)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got != 0, expected != 0)
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=0)


def sequential_scores(query, db, *, alpha, tau, normalize):
    """Brute force in the index's arithmetic: per item the float64 sum, in word order from 0.0,
    of selectivity(word_similarities) over the shared words, times the index's factors."""
    raw = np.zeros(len(db))
    for i, item in enumerate(db):
        ia, ib = shared_words(query, item)
        u = word_similarities(query.vectors[ia], item.vectors[ib], dim=query.dim, binary=query.binary)
        total = 0.0
        for term in selectivity(u, alpha=alpha, tau=tau).tolist():
            total += term
        raw[i] = total
    nq = len(query)
    if not nq or normalize == "none":
        return raw
    if normalize == "query":
        return raw / np.sqrt(nq)
    lengths = np.array([len(d) for d in db], np.float64)
    inv = np.zeros_like(lengths)
    np.divide(1.0, np.sqrt(lengths), out=inv, where=lengths > 0)
    return raw * (inv / np.sqrt(nq))


def items_with_absent_words(rng, n, dim, binary, *, num_words, present):
    """Database items on words [0, present), queries on all words (some absent from the index)."""
    def item(k, count):
        return random_item(rng, dim, binary, min(count, k), k=k)
    db = [item(present, 0 if i % 6 == 5 else int(rng.integers(1, 20))) for i in range(n)]
    queries = [item(num_words, int(rng.integers(1, 30))) for _ in range(4)]
    absent = np.arange(present, num_words, dtype=np.int32)[:5]
    queries.append(AggregatedImage(absent, random_codes(rng, absent.size, dim) if binary else
                                   rng.standard_normal((absent.size, dim)).astype(np.float32),
                                   dim, binary))
    queries.append(AggregatedImage.empty(dim, binary=binary))
    return db, queries


@pytest.mark.parametrize("num_words,dim", [(1, 128), (7, 8), (50, 128), (300, 20), (50, 64),
                                           (120, 256), (30, 13)])
@pytest.mark.parametrize("alpha,tau", ALPHA_TAU)
@pytest.mark.parametrize("normalize", ["both", "query", "none"])
def test_binary_scores_exactly_equal_brute_force(num_words, dim, alpha, tau, normalize):
    rng = np.random.default_rng(num_words * 1000 + dim)
    present = max(1, (2 * num_words) // 3)
    db, queries = items_with_absent_words(rng, 40, dim, True, num_words=num_words, present=present)
    index = InvertedIndex(num_words=num_words, dim=dim, binary=True)
    index.add(db[:15])
    index.add(db[15:])
    for q in queries:
        got = index.score_all(q, alpha=alpha, tau=tau, normalize=normalize)
        np.testing.assert_array_equal(got, sequential_scores(q, db, alpha=alpha, tau=tau,
                                                             normalize=normalize))
        pairwise = [similarity(q, d, method="asmk_star", alpha=alpha, tau=tau, normalize=normalize)
                    for d in db]
        np.testing.assert_allclose(got, pairwise, rtol=1e-12, atol=1e-12)
    result = index.search(queries, k=12, alpha=alpha, tau=tau, normalize=normalize)
    for qi, q in enumerate(queries):
        scores = index.score_all(q, alpha=alpha, tau=tau, normalize=normalize)
        order = np.lexsort((np.arange(len(db)), -scores))[:12]
        np.testing.assert_array_equal(result.ids[qi], order)
        np.testing.assert_array_equal(result.scores[qi], scores[order].astype(np.float32))


@pytest.mark.parametrize("num_words,dim", [(50, 32), (300, 20), (7, 8)])
@pytest.mark.parametrize("alpha,tau", ALPHA_TAU)
def test_float_scores_within_1e6_of_brute_force(num_words, dim, alpha, tau):
    rng = np.random.default_rng(num_words + dim)
    db, queries = items_with_absent_words(rng, 40, dim, False, num_words=num_words,
                                          present=max(1, num_words // 2))
    index = InvertedIndex(num_words=num_words, dim=dim, binary=False)
    index.add(db)
    for q in queries:
        got = index.score_all(q, alpha=alpha, tau=tau)
        expected = [similarity(q, d, method="asmk", alpha=alpha, tau=tau) for d in db]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_binary_scores_do_not_depend_on_gather_chunks(monkeypatch):
    rng = np.random.default_rng(12)
    db = random_items(rng, 60, 128, True, max_words=K)
    queries = random_items(rng, 5, 128, True, max_words=K, empty_every=4)
    index = build(db, 128, True)
    whole = [index.score_all(q) for q in queries]
    for budget in (1, 64, 4096):
        monkeypatch.setattr(inverted_module, "_GATHER_BYTES", budget)
        for q, expected in zip(queries, whole):
            np.testing.assert_array_equal(index.score_all(q), expected)
            np.testing.assert_array_equal(index.score_all(q), sequential_scores(
                q, db, alpha=3.0, tau=0.0, normalize="both"))


def test_top_k_equals_lexsort_reference():
    rng = np.random.default_rng(13)
    for trial in range(300):
        n, k = int(rng.integers(0, 60)), int(rng.integers(1, 40))
        scores = rng.integers(0, 4, n).astype(np.float64) if trial % 2 else rng.random(n)
        s, i = top_k(scores, k)
        kk = min(n, k)
        order = np.lexsort((np.arange(n), -scores))[:kk]
        np.testing.assert_array_equal(i[:kk], order)
        np.testing.assert_array_equal(s[:kk], scores[order].astype(np.float32))
        assert np.all(i[kk:] == -1) and np.all(np.isneginf(s[kk:]))
        assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == i.shape == (k,)


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
    for verify in (False, True):  # a small array is hashed at every open
        with pytest.raises(IndexFormatError, match="image_ids.npy does not match the sha256"):
            InvertedIndex.load(path, verify=verify)


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
    monkeypatch.setattr(posting_runs, "_MERGE_BYTES", 256)
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
