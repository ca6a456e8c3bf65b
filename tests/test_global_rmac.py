"""Integral generalized-mean pooling, R-MAC aggregation and PCA-whitening."""

import numpy as np
import pytest

from d2r.cnn.integral import IntegralMaxPool
from d2r.cnn.pooling import generalized_mean, l2_normalize, region_max_pool
from d2r.regions.grids import rmac_regions
from d2r.cnn.rmac import aggregate_regions, mac_descriptor, rmac, rmac_region_vectors, rmac_training_vectors
from d2r.cnn.whitening import learn_whitening, load_whitening


def relu_map(seed, h=9, w=13, c=16):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((h, w, c)), 0).astype(np.float32) * 5


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_integral_pooling_equals_direct_generalized_mean():
    x = relu_map(0)
    windows = np.array([[0, 0, 13, 9], [2, 1, 7, 8], [12, 8, 13, 9], [3, 0, 4, 9]])
    for alpha in (1.0, 3.0, 10.0):
        pool = IntegralMaxPool(x, alpha=alpha)
        direct = np.stack([generalized_mean(x[y1:y2, x1:x2], alpha=alpha) for x1, y1, x2, y2 in windows])
        got = pool.pool(windows)
        if alpha <= 3:
            np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-5)
        else:
            # float64 look-ups resolve window sums down to ~1e-14 of the channel total, i.e. a
            # few percent of the channel maximum after the 1/alpha root
            assert np.all(np.abs(got - direct) <= 0.05 * x.max(axis=(0, 1)))
            np.testing.assert_allclose(got[:2], direct[:2], rtol=1e-4)
        np.testing.assert_allclose(pool.cosine(windows, np.ones(16)),
                                   [cosine(v, np.ones(16)) for v in got], rtol=1e-6)


def test_generalized_mean_approaches_max_as_alpha_grows():
    """The paper's check: cosine similarity of the approximation and the true MAC of regions."""
    x = relu_map(1, 20, 30, 64)
    regions = rmac_regions(20, 30)
    exact = region_max_pool(x, regions)
    mean_cos = []
    for alpha in (1, 2, 5, 10, 20):
        approx = IntegralMaxPool(x, alpha=alpha).pool(regions)
        mean_cos.append(np.mean([cosine(a, e) for a, e in zip(approx, exact)]))
    assert all(b > a for a, b in zip(mean_cos, mean_cos[1:]))
    assert mean_cos[0] < 0.99 and mean_cos[3] > 0.999 and mean_cos[4] > 0.9999


def test_quantized_lookup_table_is_close_to_exact_powers():
    x = relu_map(2, 15, 15, 32)
    windows = rmac_regions(15, 15)
    exact = IntegralMaxPool(x, alpha=10).pool(windows)
    quantized = IntegralMaxPool(x, alpha=10, levels=256).pool(windows)
    sims = [cosine(a, b) for a, b in zip(exact, quantized)]
    assert min(sims) > 0.999
    with pytest.raises(ValueError, match="levels"):
        IntegralMaxPool(x, levels=1)
    with pytest.raises(ValueError, match="non-negative"):
        IntegralMaxPool(-x - 1)


def test_integral_pooling_does_not_overflow_large_activations():
    x = relu_map(3) * 1e6
    out = IntegralMaxPool(x, alpha=50).pool([[0, 0, 13, 9]])
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], x.max(axis=(0, 1)), rtol=0.1)


def test_rmac_without_whitening_is_normalized_sum_of_normalized_region_macs():
    x = relu_map(4)
    regions = rmac_regions(9, 13)
    expected = l2_normalize(l2_normalize(region_max_pool(x, regions)).sum(axis=0))
    np.testing.assert_allclose(rmac(x), expected, rtol=1e-5, atol=1e-7)
    assert rmac(x).dtype == np.float32
    np.testing.assert_allclose(mac_descriptor(x), l2_normalize(x.max(axis=(0, 1))))


def test_whitening_learn_apply_and_round_trip(tmp_path):
    maps = [relu_map(10 + i, 12, 15, 16) for i in range(8)]
    train = rmac_training_vectors(maps)
    assert train.shape == (8 * len(rmac_regions(12, 15)), 16)
    w = learn_whitening(train, dim=8)
    out = w.apply(train)
    assert out.shape == (train.shape[0], 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
    # whitened projections (before the final l2) have identity covariance on the training data
    proj = w.pca.project(l2_normalize(train), dim=8, whiten=True)
    np.testing.assert_allclose(np.cov(proj.T), np.eye(8), atol=1e-3)
    desc = rmac(maps[0], whitening=w)
    assert desc.shape == (8,)
    np.testing.assert_allclose(desc, aggregate_regions(rmac_region_vectors(maps[0]), whitening=w), rtol=1e-6)
    w.save(tmp_path / "wh")
    again = load_whitening(tmp_path / "wh")
    assert again.dim == 8 and again.whiten
    np.testing.assert_allclose(again.apply(train[:3]), out[:3], rtol=1e-6)


def test_whitening_high_dimension_uses_thin_svd_and_checks_dim():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 300))
    w = learn_whitening(x)
    assert w.dim == 19
    proj = w.pca.project(l2_normalize(x), dim=19, whiten=True)
    np.testing.assert_allclose(np.cov(proj.T), np.eye(19), atol=1e-6)
    with pytest.raises(ValueError, match="dim must be in"):
        learn_whitening(x, dim=25)
    with pytest.raises(ValueError, match="at least 2"):
        learn_whitening(x[:1])
