"""Tests of d2r.encoding.codebook: k-means, storage, TF checkpoint reading, quantization."""

import json
import subprocess
import sys

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2r.encoding.codebook import (
    Codebook,
    CodebookFormatError,
    load_codebook,
    load_tf_checkpoint,
    quantize,
    save_codebook,
    train_codebook,
)

CENTRES = np.array([[0, 0], [10, 0], [0, 10], [-10, 0], [0, -10]], np.float32)


@pytest.fixture
def one_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def blobs(n_per=60, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.normal(scale=0.5, size=(5 * n_per, 2))
    return (np.repeat(CENTRES, n_per, axis=0) + noise).astype(np.float32)


# ---------------------------------------------------------------- training


def test_train_recovers_separated_clusters(one_thread):
    book = train_codebook(blobs(), 5, seed=3, init="kmeans++")
    assert book.centroids.shape == (5, 2) and book.centroids.dtype == np.float32
    dist = np.linalg.norm(CENTRES[:, None] - book.centroids[None], axis=-1)
    assert sorted(dist.argmin(axis=1)) == [0, 1, 2, 3, 4]  # one centroid per blob
    assert dist.min(axis=1).max() < 0.3
    assert (book.seed, book.num_training, book.num_words, book.dim) == (3, 300, 5, 2)
    assert book.source == "faiss-kmeans"


def test_train_deterministic_for_seed(one_thread):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 8)).astype(np.float32)
    a = train_codebook(x, 16, seed=7, niter=5)
    b = train_codebook(x, 16, seed=7, niter=5)
    c = train_codebook(x, 16, seed=8, niter=5)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.sha256 == b.sha256 != c.sha256


def test_train_subsamples_to_cap(one_thread):
    x = np.random.default_rng(2).normal(size=(1000, 4)).astype(np.float32)
    book = train_codebook(x, 8, max_points_per_word=10, niter=2)
    assert book.num_training == 80
    assert train_codebook(x, 8, max_points_per_word=1000, niter=2).num_training == 1000


def test_train_errors():
    x = blobs(2)
    with pytest.raises(ValueError, match="fewer than num_words"):
        train_codebook(x, 11)
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        train_codebook(x.ravel(), 2)
    with pytest.raises(ValueError, match="NaN"):
        train_codebook(np.full((10, 2), np.nan, np.float32), 2)
    for kwargs in ({"niter": 0}, {"max_points_per_word": 0}, {"seed": -1}, {"init": "pca"}):
        with pytest.raises(ValueError):
            train_codebook(x, 2, **kwargs)


def test_codebook_validation_and_readonly():
    with pytest.raises(ValueError, match=r"\(K, D\)"):
        Codebook(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        Codebook(np.array([[np.inf, 0.0]]))
    book = Codebook(np.arange(6, dtype=np.float64).reshape(3, 2))
    assert book.centroids.dtype == np.float32 and not book.centroids.flags.writeable
    assert len(book.sha256) == 64


# ---------------------------------------------------------------- storage


def test_save_load_roundtrip(tmp_path, one_thread):
    book = train_codebook(blobs(), 5, seed=4)
    save_codebook(book, tmp_path / "cb")
    assert sorted(p.name for p in (tmp_path / "cb").iterdir()) == ["centroids.npy", "codebook.json"]
    loaded = load_codebook(tmp_path / "cb")
    assert isinstance(loaded.centroids, np.memmap)
    np.testing.assert_array_equal(loaded.centroids, book.centroids)
    assert (loaded.seed, loaded.num_training) == (book.seed, book.num_training)
    assert loaded.sha256 == book.sha256
    in_memory = load_codebook(tmp_path / "cb", mmap=False)
    assert not isinstance(in_memory.centroids, np.memmap)
    x = blobs(3, seed=9)
    np.testing.assert_array_equal(quantize(x, loaded)[0], quantize(x, book)[0])


def test_load_refuses_bad_directories(tmp_path):
    book = Codebook(CENTRES, seed=0, num_training=10)
    d = save_codebook(book, tmp_path / "cb")
    meta = json.loads((d / "codebook.json").read_text())

    with pytest.raises(CodebookFormatError, match="missing codebook.json"):
        load_codebook(tmp_path)
    (d / "codebook.json").write_text("{not json")
    with pytest.raises(CodebookFormatError, match="not valid JSON"):
        load_codebook(d)
    (d / "codebook.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(CodebookFormatError, match="not a d2r.codebook"):
        load_codebook(d)
    (d / "codebook.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(CodebookFormatError, match="version"):
        load_codebook(d)
    (d / "codebook.json").write_text(json.dumps({**meta, "num_words": 4}))
    with pytest.raises(CodebookFormatError, match="shape"):
        load_codebook(d)
    (d / "codebook.json").write_text(json.dumps(meta))
    np.save(d / "centroids.npy", CENTRES + 1)
    with pytest.raises(CodebookFormatError, match="SHA-256"):
        load_codebook(d)
    assert load_codebook(d, verify=False).centroids[0, 0] == 1
    np.save(d / "centroids.npy", CENTRES.astype(np.float64))
    with pytest.raises(CodebookFormatError, match="dtype"):
        load_codebook(d)
    np.save(d / "centroids.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CodebookFormatError, match="not a plain .npy"):
        load_codebook(d)
    (d / "centroids.npy").write_bytes(b"garbage")
    with pytest.raises(CodebookFormatError, match="not a plain .npy"):
        load_codebook(d)


# ---------------------------------------------------------------- TF checkpoint


def test_load_tf_checkpoint(tmp_path):
    tf = pytest.importorskip("tensorflow")
    centroids = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    prefix = str(tmp_path / "k7_codebook_tfckpt" / "codebook")
    # What tf.compat.v1.estimator.experimental.KMeans writes: key "clusters" plus bookkeeping.
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=["clusters", "total_iterations"],
        shape_and_slices=["", ""],
        tensors=[tf.constant(centroids), tf.constant(5, tf.int64)],
    )
    book = load_tf_checkpoint(prefix)
    np.testing.assert_array_equal(book.centroids, centroids)
    assert book.source.startswith("tf-checkpoint:")
    with pytest.raises(CodebookFormatError, match="no variable 'centers'"):
        load_tf_checkpoint(prefix, variable="centers")
    with pytest.raises(CodebookFormatError, match="shape"):
        load_tf_checkpoint(prefix, variable="total_iterations")
    with pytest.raises(FileNotFoundError):
        load_tf_checkpoint(str(tmp_path / "nothing" / "codebook"))

    obj_prefix = tf.train.Checkpoint(clusters=tf.Variable(centroids)).write(str(tmp_path / "tf2" / "cb"))
    np.testing.assert_array_equal(load_tf_checkpoint(obj_prefix).centroids, centroids)


# ---------------------------------------------------------------- quantization


def brute_quantize(x, centroids, k):
    d = ((x[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 40),
    k_words=st.integers(1, 30),
    k=st.integers(1, 4),
)
def test_exact_quantize_matches_brute_force(seed, n, k_words, k):
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(k_words, 6)).astype(np.float32)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    k = min(k, k_words)
    words, dist = quantize(x, centroids, num_assignments=k)
    assert words.dtype == np.int64 and dist.dtype == np.float32
    assert words.shape == dist.shape == (n, k)
    expected_words, expected_dist = brute_quantize(x, centroids, k)
    np.testing.assert_allclose(dist, expected_dist, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(words, expected_words)


def test_quantize_hand_and_empty():
    x = np.array([[9.0, 1.0], [0.5, -8.0]], np.float32)
    words, dist = quantize(x, CENTRES, num_assignments=2)
    np.testing.assert_array_equal(words, [[1, 0], [4, 0]])
    np.testing.assert_allclose(dist, [[2.0, 82.0], [4.25, 64.25]])
    words, dist = quantize(np.zeros((0, 2), np.float32), CENTRES, num_assignments=3)
    assert words.shape == dist.shape == (0, 3)


def test_approximate_quantize_agrees_with_exact():
    rng = np.random.default_rng(5)
    book = Codebook(rng.normal(size=(500, 16)).astype(np.float32))
    x = rng.normal(size=(300, 16)).astype(np.float32)
    exact, _ = quantize(x, book, num_assignments=3)
    approx, dist = quantize(x, book, num_assignments=3, mode="approximate", ef_search=256)
    assert approx.shape == (300, 3) and approx.dtype == np.int64
    assert np.all((approx >= 0) & (approx < 500))
    assert np.mean(approx[:, 0] == exact[:, 0]) >= 0.98
    assert np.all(np.diff(dist, axis=1) >= 0)
    assert len(book._quantizers) == 2  # exact and HNSW indexes cached


def test_quantize_errors():
    with pytest.raises(ValueError, match="dimension 3"):
        quantize(np.zeros((2, 3), np.float32), CENTRES)
    with pytest.raises(ValueError, match="num_assignments"):
        quantize(np.zeros((2, 2), np.float32), CENTRES, num_assignments=6)
    with pytest.raises(ValueError, match="mode"):
        quantize(np.zeros((2, 2), np.float32), CENTRES, mode="ivf")
    with pytest.raises(ValueError, match="ef_search"):
        quantize(np.zeros((2, 2), np.float32), CENTRES, mode="approximate", ef_search=0)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([[np.nan, 0]], np.float32), CENTRES)


def test_build_index_with_the_references_checkpoint_codebook(tiny_dataset, tmp_path):
    """``--set codebook.path=.../k<K>_codebook_tfckpt/codebook`` (what ``data/download.py
    rparis6k_codebook_65536`` unpacks) builds an index on that codebook, trained nowhere."""
    tf = pytest.importorskip("tensorflow")
    centroids = np.random.default_rng(1).random((24, 128)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    prefix = str(tmp_path / "k24_codebook_tfckpt" / "codebook")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["clusters"], shape_and_slices=[""],
                      tensors=[tf.constant(centroids)])
    out = tmp_path / "index"
    proc = subprocess.run(
        [sys.executable, "-m", "d2r", "build-index", "--dataset-dir", str(tiny_dataset),
         "--out", str(out), "--set", "features.rootsift.max_features=50",
         "--set", f"codebook.path={prefix}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "index.json").read_text())["codebook"]
    assert record["num_words"] == 24 and record["dim"] == 128
    assert "training a" not in proc.stderr
