"""Regional first/second-order pooling and salient-point regions (their search: test_region_vector_index)."""

import numpy as np
import pytest
from scipy.linalg import logm

from d2r.cnn._kmeans import global_kmeans, kmeans
from d2r.cnn.regional import (
    first_order_pooling,
    log_euclidean_vector,
    region_vectors,
    second_order_pooling,
)
from d2r.cnn.salient_regions import (
    candidate_regions,
    crow_channel_weights,
    crow_spatial_weights,
    detect_salient_points,
    image_to_map,
    salient_regions,
    select_points,
)
from d2r.cnn.whitening import learn_whitening


def vec_upper(m):
    iu = np.triu_indices(m.shape[0])
    return m[iu] * np.where(iu[0] == iu[1], 1.0, np.sqrt(2.0))


def features_with_covariance(cov, n, seed=0):
    """n samples whose maximum-likelihood covariance is exactly ``cov``."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, cov.shape[0]))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(z.T @ z / n)).T  # sample covariance = I
    return z @ np.linalg.cholesky(cov).T + 3.0


def test_log_euclidean_vector_of_known_covariance():
    cov = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
    np.testing.assert_allclose(log_euclidean_vector(cov, eps=0), vec_upper(logm(cov).real), rtol=1e-5, atol=1e-6)
    v = log_euclidean_vector(np.diag([np.e, 1.0]), eps=0)
    np.testing.assert_allclose(v, [1.0, 0.0, 0.0], atol=1e-6)
    # inner products of vectors equal Frobenius products of the log matrices
    a, b = logm(cov).real, logm(np.diag([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(log_euclidean_vector(cov, eps=0) @ log_euclidean_vector(np.diag([1.0, 2, 3]), eps=0),
                               np.sum(a * b), rtol=1e-5)
    with pytest.raises(ValueError, match="positive definite"):
        log_euclidean_vector(np.diag([1.0, -1.0]), eps=0)


def test_second_order_pooling_of_known_covariance():
    cov = np.array([[1.5, 0.4, 0.1], [0.4, 1.0, -0.2], [0.1, -0.2, 0.7]])
    feats = features_with_covariance(cov, 24)
    amap = np.maximum(feats, 0).reshape(4, 6, 3).astype(np.float32)  # all positive (mean 3)
    assert np.all(feats > 0)
    mask = np.ones((1, 4, 6), bool)
    got = second_order_pooling(amap, mask, eps=1e-3)
    expected = vec_upper(logm(cov + 1e-3 * np.eye(3)).real)
    np.testing.assert_allclose(got[0], expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-6)
    # a region of the map uses only its cells
    half = np.zeros((1, 4, 6), bool)
    half[0, :2] = True
    sub = feats[:12]
    c = np.cov(sub.T, bias=True) + 1e-3 * np.eye(3)
    e2 = vec_upper(logm(c).real)
    np.testing.assert_allclose(second_order_pooling(amap, half)[0], e2 / np.linalg.norm(e2), rtol=1e-4, atol=1e-6)


def test_first_order_pooling_and_crow_weights():
    x = np.zeros((2, 2, 3), np.float32)
    x[0, 0] = [1, 0, 0]
    x[1, 1] = [0, 2, 2]
    x[0, 1] = [0, 0, 1]
    alpha = crow_spatial_weights(x)
    s = np.array([[1, 1], [0, 4]], float)
    np.testing.assert_allclose(alpha, np.sqrt(s / np.sqrt(18)), rtol=1e-6)
    beta = crow_channel_weights(x, eps=0)
    np.testing.assert_allclose(beta, np.log(1.0 / np.array([0.25, 0.25, 0.5])), rtol=1e-6)
    masks = np.ones((1, 2, 2), bool)
    got = first_order_pooling(x, masks, alpha, beta)[0]
    raw = (alpha[..., None] * x).sum(axis=(0, 1)) * beta
    np.testing.assert_allclose(got, raw / np.linalg.norm(raw), rtol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        first_order_pooling(x, np.zeros((1, 2, 2), bool), alpha)


def test_select_points_ranks_by_saliency_and_tops_up():
    alpha = np.zeros((4, 5))
    alpha[1, 1], alpha[2, 3], alpha[3, 4] = 3.0, 2.0, 1.0
    pts = np.array([[3.0, 2.0], [1.0, 1.0], [0.0, 0.0]])  # saliency 2, 3, 0
    np.testing.assert_array_equal(select_points(pts, alpha, n_max=2, n_min=1), [[1, 1], [3, 2]])
    topped = select_points(np.zeros((0, 2)), alpha, n_max=10, n_min=3)
    np.testing.assert_array_equal(topped, [[1, 1], [3, 2], [4, 3]])
    np.testing.assert_allclose(image_to_map([[15.5, 7.5]], (32, 16), (4, 8)), [[3.5, 1.5]])


def test_global_kmeans_separates_three_blobs_deterministically():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = np.concatenate([c + rng.standard_normal((15, 2)) * 0.5 for c in centres])
    _, labels = global_kmeans(pts, 3)
    assert len(set(labels[:15])) == len(set(labels[15:30])) == len(set(labels[30:])) == 1
    assert len(set(labels)) == 3
    again = global_kmeans(pts, 3)[1]
    np.testing.assert_array_equal(labels, again)
    assert global_kmeans(np.ones((4, 2)), 3)[0].shape == (1, 2)
    assert kmeans(pts, 3, seed=1)[0].shape == (3, 2)


def test_candidate_regions_whole_image_plus_cluster_subsets():
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [8.0, 0.0], [9.0, 1.0], [0.0, 5.0]])
    labels = np.array([0, 0, 1, 1, 2])
    masks = candidate_regions(pts, labels, (6, 10))
    assert masks.shape == (8, 6, 10)
    assert masks[0].all()
    assert masks[1].sum() == 2 and masks[1][0, 0] and masks[1][0, 1]  # cluster 0: a segment
    assert masks[4].sum() == 1 and masks[4][5, 0]  # cluster 2 alone
    np.testing.assert_array_equal(masks[3][0, :9], True)  # clusters 0 + 1: hull of the four points
    assert masks[3][1, 9] and not masks[3][0, 9] and not masks[3][2:].any()
    assert masks[7].sum() > masks[3].sum()


def test_salient_regions_on_an_image_and_region_vectors():
    rng = np.random.default_rng(1)
    image = np.zeros((64, 96, 3), np.uint8)
    for cx, cy in [(20, 20), (70, 15), (50, 45)]:
        image[cy - 4 : cy + 4, cx - 4 : cx + 4] = 255
    pts = detect_salient_points(image, max_sigma=8)
    assert pts.shape[1] == 3 and pts.shape[0] >= 3
    amap = np.maximum(rng.standard_normal((8, 12, 16)), 0).astype(np.float32)
    masks, alpha = salient_regions(amap, pts[:, :2], (96, 64), n_max=50, n_min=5)
    assert masks.shape[1:] == (8, 12) and masks.shape[0] == 8 and masks[0].all()
    reduction = learn_whitening(amap.reshape(-1, 16), dim=4, whiten=False)
    v = region_vectors(amap, masks, alpha, order="both", reduction=reduction)
    assert v.shape == (8, 16 + 10)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, rtol=1e-5)
    assert region_vectors(amap, masks, alpha, order="first").shape == (8, 16)

