"""PCA / whitening maths against numpy SVD, file round trips, reference datum files."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2r.features.pca import (
    PCA,
    REFERENCE_DATUM_NAMES,
    l2_normalize,
    learn_pca,
    load_pca,
    postprocess_descriptors,
)


def _sample(n=500, d=12, seed=0):
    rng = np.random.default_rng(seed)
    # anisotropic data so the principal directions are well separated
    scales = np.linspace(3.0, 0.2, d)
    return (rng.normal(size=(n, d)) * scales + rng.normal(size=d)).astype(np.float32)


def test_l2_normalize_hand_checked():
    x = np.array([[3, 4], [0, 0], [1e-8, 0]], np.float32)
    out = l2_normalize(x)
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0, 0])  # zero rows stay zero
    np.testing.assert_allclose(out[2], [1e-8 / 1e-6, 0], rtol=1e-5)  # epsilon floor as tf.nn.l2_normalize
    assert out.dtype == np.float32


def test_learn_pca_matches_numpy_svd():
    x = _sample()
    pca = learn_pca(x)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    mean = xn.mean(axis=0)
    _, s, vt = np.linalg.svd(xn - mean, full_matrices=False)
    np.testing.assert_allclose(pca.mean, mean, atol=1e-6)
    np.testing.assert_allclose(pca.variances, s**2 / (len(x) - 1), rtol=1e-4, atol=1e-9)
    # same directions up to sign; rows orthonormal
    np.testing.assert_allclose(np.abs(np.sum(pca.components * vt, axis=1)), 1.0, atol=1e-4)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(x.shape[1]), atol=1e-5)
    assert pca.num_samples == len(x) and pca.input_dim == x.shape[1]
    assert np.all(np.diff(pca.variances) <= 0)
    # deterministic sign: largest-magnitude entry of each component positive
    rows = np.arange(pca.num_components)
    assert np.all(pca.components[rows, np.argmax(np.abs(pca.components), axis=1)] > 0)


def test_learn_pca_chunking_does_not_change_result():
    x = _sample(n=301)
    a, b = learn_pca(x, dim=5), learn_pca(x, dim=5, chunk_size=17)
    np.testing.assert_allclose(a.components, b.components, atol=1e-6)
    np.testing.assert_allclose(a.variances, b.variances, rtol=1e-6)
    assert a.num_components == 5


def test_transform_is_l2_pca_whiten_l2():
    x = _sample()
    pca = learn_pca(x)
    q = _sample(n=7, seed=1)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    proj = (qn - pca.mean) @ pca.components[:4].T
    for whiten, expected in ((False, proj), (True, proj / np.sqrt(pca.variances[:4]))):
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
        out = pca.transform(q, dim=4, whiten=whiten)
        assert out.shape == (7, 4) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_whitened_training_data_has_identity_covariance():
    x = _sample(n=2000)
    pca = learn_pca(x)
    white = pca.project(l2_normalize(x), dim=6, whiten=True)
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(6), atol=1e-3)
    plain = pca.project(l2_normalize(x), dim=6)
    np.testing.assert_allclose(np.var(plain, axis=0, ddof=1), pca.variances[:6], rtol=1e-3)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 20),
    dim=st.integers(1, 12),
    whiten=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_transform_outputs_unit_rows(n, dim, whiten, seed):
    pca = learn_pca(_sample(n=60))
    q = np.random.default_rng(seed).normal(size=(n, 12)).astype(np.float32)
    out = pca.transform(q, dim=dim, whiten=whiten)
    assert out.shape == (n, dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_postprocess_without_pca_only_normalizes():
    x = np.array([[0, 2, 0], [0, 0, 0]], np.float32)
    np.testing.assert_array_equal(postprocess_descriptors(x), [[0, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="whiten"):
        postprocess_descriptors(x, whiten=True)


def test_validation_errors():
    pca = learn_pca(_sample(), dim=8)
    with pytest.raises(ValueError, match=r"\[1, 8\]"):
        pca.transform(_sample(n=3), dim=9)
    with pytest.raises(ValueError, match=r"shape \(N, 12\)"):
        pca.transform(np.zeros((3, 5), np.float32), dim=2)
    with pytest.raises(ValueError, match="variances"):
        PCA(mean=pca.mean, components=pca.components).transform(_sample(n=2), dim=2, whiten=True)
    with pytest.raises(ValueError, match="components"):
        PCA(mean=np.zeros(3), components=np.zeros((2, 4)))
    with pytest.raises(ValueError):
        learn_pca(np.zeros((1, 4)))
    with pytest.raises(ValueError):
        learn_pca(_sample(), dim=13)


def test_save_load_round_trip(tmp_path):
    pca = learn_pca(_sample(), dim=6)
    pca.save(tmp_path / "pca")
    meta = json.loads((tmp_path / "pca" / "pca.json").read_text())
    assert meta["num_components"] == 6 and meta["input_dim"] == 12
    loaded = load_pca(tmp_path / "pca")
    for name in ("mean", "components", "variances"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(pca, name))
    assert loaded.fingerprint() == pca.fingerprint() and loaded.num_samples == pca.num_samples
    # tampering with an array is detected
    np.save(tmp_path / "pca" / "mean.npy", pca.mean + 1)
    with pytest.raises(ValueError, match="checksum"):
        load_pca(tmp_path / "pca")


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pca(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither"):
        load_pca(tmp_path)


def _write_datum(path, arr):
    from d2r.protos import datum_pb2

    datum = datum_pb2.DatumProto()
    datum.shape.dim.extend(arr.shape)
    datum.float_list.value.extend(np.asarray(arr, np.float64).ravel().tolist())
    path.write_bytes(datum.SerializeToString())


def test_reads_reference_datum_files(tmp_path):
    pca = learn_pca(_sample())
    _write_datum(tmp_path / REFERENCE_DATUM_NAMES["mean"], pca.mean)
    _write_datum(tmp_path / REFERENCE_DATUM_NAMES["components"], pca.components)
    loaded = load_pca(tmp_path)
    assert loaded.variances is None
    np.testing.assert_allclose(loaded.components, pca.components, rtol=1e-6)
    q = _sample(n=5, seed=3)
    np.testing.assert_allclose(loaded.transform(q, dim=4), pca.transform(q, dim=4), rtol=1e-5, atol=1e-6)
    # a (K, 1) variances array is flattened
    _write_datum(tmp_path / REFERENCE_DATUM_NAMES["variances"], pca.variances[:, None])
    loaded = load_pca(tmp_path)
    np.testing.assert_allclose(loaded.variances, pca.variances, rtol=1e-6)
    (tmp_path / REFERENCE_DATUM_NAMES["mean"]).write_bytes(b"\xff\xff\xff")
    with pytest.raises(ValueError, match="mean.datum"):
        load_pca(tmp_path)
