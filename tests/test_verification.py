"""Tests for d2r.spatial.matching, .ransac and .reranking: matching, affine RANSAC, the
re-ranking rule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial import cKDTree

from d2r.spatial import matching, ransac, reranking
from d2r.config import VerificationConfig
from d2r.types import LocalFeatures, SearchResult

# db (x, y) -> query (x, y): rotation + anisotropic scale + shear + shift.
TRUE_AFFINE = np.array([[0.9, 0.2, 30.0], [-0.15, 1.1, -12.0]])


def _unit(rng, n, dim=64):
    d = rng.normal(size=(n, dim)).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _features(locations, descriptors, size=(640, 480)):
    n = len(locations)
    return LocalFeatures(
        locations=np.asarray(locations, np.float32).reshape(n, 2),
        descriptors=np.asarray(descriptors, np.float32),
        scales=np.ones(n, np.float32),
        scores=np.ones(n, np.float32),
        image_size=size,
    )


def _apply(affine, xy):
    return xy @ affine[:, :2].T + affine[:, 2]


def _pair(rng, n=200, noise=0.0):
    """Query and db features where db feature i is query feature i under TRUE_AFFINE."""
    db_xy = rng.uniform(0, 500, (n, 2))
    q_xy = _apply(TRUE_AFFINE, db_xy) + rng.normal(scale=noise, size=(n, 2)) * (noise > 0)
    desc = _unit(rng, n)
    return _features(q_xy, desc), _features(db_xy, desc)


# --------------------------------------------------------------------------- matching


def test_match_descriptors_hand_checked():
    query = _features(np.zeros((3, 2)), [[1, 0], [0, 1], [0.6, 0.8]])
    db = _features(np.zeros((3, 2)), [[1, 0], [0.8, 0.6], [-1, 0]])
    # NN: q0 -> d0 (0), q1 -> d1 (|(-0.8, 0.4)| = 0.894), q2 -> d1 (|(-0.2, 0.2)| = 0.283).
    got = matching.match_descriptors(query, db, descriptor_threshold=0.8)
    np.testing.assert_array_equal(got, [[0, 0], [2, 1]])
    assert got.dtype == np.int64
    # Threshold is strict.
    np.testing.assert_array_equal(
        matching.match_descriptors(query, db, descriptor_threshold=0.2), [[0, 0]])
    assert len(matching.match_descriptors(query, db, descriptor_threshold=1.0)) == 3
    # Ratio test: q2's second neighbour d0 is at 0.894, 0.283 < 0.5 * 0.894.
    np.testing.assert_array_equal(
        matching.match_descriptors(query, db, descriptor_threshold=1.0, ratio_test=0.5),
        [[0, 0], [2, 1]],
    )
    # Mutual: d1's nearest query is q2, so q1 -> d1 is dropped.
    np.testing.assert_array_equal(
        matching.match_descriptors(query, db, descriptor_threshold=1.0, mutual=True),
        [[0, 0], [2, 1]],
    )


@pytest.mark.parametrize("ratio_test, mutual", [(None, False), (0.9, False), (None, True), (0.8, True)])
def test_match_descriptors_against_kdtree(monkeypatch, ratio_test, mutual):
    monkeypatch.setattr(matching, "_MAX_BLOCK", 37)  # force many small blocks
    rng = np.random.default_rng(1)
    q, d = _unit(rng, 53, 8), _unit(rng, 41, 8)
    got = matching.match_descriptors(
        _features(np.zeros((53, 2)), q), _features(np.zeros((41, 2)), d),
        descriptor_threshold=0.9, ratio_test=ratio_test, mutual=mutual,
    )
    dist, idx = cKDTree(d).query(q, k=2)
    keep = dist[:, 0] < 0.9
    if ratio_test is not None:
        keep &= dist[:, 0] < ratio_test * dist[:, 1]
    if mutual:
        keep &= cKDTree(q).query(d)[1][idx[:, 0]] == np.arange(53)
    expected = np.stack([np.flatnonzero(keep), idx[keep, 0]], axis=1)
    assert len(expected) > 0
    np.testing.assert_array_equal(got, expected)


def test_match_descriptors_rejects_bad_input():
    a = _features(np.zeros((2, 2)), np.eye(2, 4))
    b = _features(np.zeros((2, 2)), np.eye(2, 3))
    with pytest.raises(ValueError, match="dimensions differ"):
        matching.match_descriptors(a, b)
    with pytest.raises(ValueError, match="ratio_test"):
        matching.match_descriptors(a, a, ratio_test=1.5)
    with pytest.raises(ValueError, match="descriptor_threshold"):
        matching.match_descriptors(a, a, descriptor_threshold=0)
    with pytest.raises(TypeError, match="db must be LocalFeatures"):
        matching.match_descriptors(a, np.zeros((2, 4)))


# --------------------------------------------------------------------------- RANSAC


@pytest.mark.parametrize("method", ransac.METHODS)
def test_exact_affine_all_inliers_and_transform_recovered(method):
    query, db = _pair(np.random.default_rng(0))
    result = ransac.verify_pair(query, db, method=method, max_trials=100)
    assert result.num_matches == 200
    assert result.num_inliers == 200
    np.testing.assert_array_equal(result.inlier_matches, np.stack([np.arange(200)] * 2, axis=1))
    np.testing.assert_allclose(result.transform, TRUE_AFFINE, atol=1e-3)


@pytest.mark.parametrize("method", ransac.METHODS)
def test_pure_noise_gives_few_inliers(method):
    rng = np.random.default_rng(2)
    desc = _unit(rng, 200)
    query = _features(rng.uniform(0, 500, (200, 2)), desc)
    db = _features(rng.uniform(0, 500, (200, 2)), desc)
    result = ransac.verify_pair(query, db, method=method, max_trials=300)
    assert result.num_matches == 200
    assert result.num_inliers <= 12


def test_outliers_are_rejected():
    rng = np.random.default_rng(3)
    query, db = _pair(rng, n=150, noise=1.0)
    moved = query.locations.copy()
    moved[:50] = rng.uniform(0, 500, (50, 2))  # 50 wrong correspondences
    query = _features(moved, query.descriptors)
    residual = np.linalg.norm(_apply(TRUE_AFFINE, db.locations) - moved, axis=1)
    result = ransac.verify_pair(query, db)
    assert set(result.inlier_matches[:, 0].tolist()) == set(np.flatnonzero(residual < 20).tolist())
    np.testing.assert_allclose(result.transform[:, :2], TRUE_AFFINE[:, :2], atol=0.02)
    np.testing.assert_allclose(result.transform[:, 2], TRUE_AFFINE[:, 2], atol=2.0)


def test_empty_and_too_few_matches():
    rng = np.random.default_rng(4)
    query, db = _pair(rng, n=10)
    empty = LocalFeatures.empty(64)
    for a, b in ((empty, db), (query, empty), (empty, empty)):
        assert matching.match_descriptors(a, b).shape == (0, 2)
        result = ransac.verify_pair(a, b)
        assert (result.num_inliers, result.num_matches, result.transform) == (0, 0, None)
        assert result.inlier_matches.shape == (0, 2)
    few = ransac.verify_pair(query, db, matches=np.array([[0, 0], [1, 1]]))
    assert (few.num_matches, few.num_inliers) == (2, 0)
    assert ransac.verify_pair(query, db, matches=np.zeros((0, 2), np.int64)).num_inliers == 0
    assert ransac.verify_pair(query, db, min_samples=11).num_inliers == 0


@pytest.mark.filterwarnings("ignore:No inliers found:UserWarning")
def test_degenerate_points_fit_no_model():
    desc = _unit(np.random.default_rng(5), 5)
    same = _features(np.full((5, 2), 7.0), desc)
    for method in ransac.METHODS:
        result = ransac.verify_pair(same, same, method=method, max_trials=20)
        assert result.num_inliers == 0 and result.transform is None


def test_verify_pair_rejects_bad_options():
    query, db = _pair(np.random.default_rng(6), n=5)
    with pytest.raises(ValueError, match="method"):
        ransac.verify_pair(query, db, method="magsac")
    with pytest.raises(ValueError, match="max_trials"):
        ransac.verify_pair(query, db, max_trials=0)
    with pytest.raises(ValueError, match="min_samples"):
        ransac.verify_pair(query, db, min_samples=2)
    with pytest.raises(ValueError, match="confidence"):
        ransac.verify_pair(query, db, confidence=1.0)
    with pytest.raises(ValueError, match="matches index"):
        ransac.verify_pair(query, db, matches=np.array([[0, 9]]))


# --------------------------------------------------------------------------- real images


@pytest.fixture(scope="module")
def astronaut_views():
    """RootSIFT of astronaut, a rotated/scaled copy, and an unrelated image."""
    from skimage import data

    from d2r.features.rootsift import RootSiftExtractor

    image = data.astronaut()
    h, w = image.shape[:2]
    affine = cv2.getRotationMatrix2D((w / 2, h / 2), 20, 0.8)
    warped = cv2.warpAffine(image, affine, (w, h))
    extractor = RootSiftExtractor(max_features=500)
    return (
        extractor.extract(image),
        extractor.extract(warped),
        extractor.extract(data.coffee()),
        cv2.invertAffineTransform(affine),
    )


def test_two_view_real_image(astronaut_views):
    query, warped, unrelated, warped_to_query = astronaut_views
    true = ransac.verify_pair(query, warped, ratio_test=0.8)
    false = ransac.verify_pair(query, unrelated, ratio_test=0.8)
    assert true.num_inliers >= 100
    assert false.num_inliers <= 10
    np.testing.assert_allclose(true.transform[:, :2], warped_to_query[:, :2], atol=0.02)
    np.testing.assert_allclose(true.transform[:, 2], warped_to_query[:, 2], atol=3.0)
    q_xy, d_xy = matching.matched_locations(query, warped, true.inlier_matches)
    residual = np.linalg.norm(_apply(warped_to_query, d_xy) - q_xy, axis=1)
    assert np.median(residual) < 2.0


def test_opencv_and_skimage_agree_on_same_matches(astronaut_views):
    query, warped, unrelated, _ = astronaut_views
    for db in (warped, unrelated):
        matches = matching.match_descriptors(query, db, ratio_test=0.9)
        a = ransac.verify_pair(query, db, matches=matches, method="opencv").num_inliers
        b = ransac.verify_pair(query, db, matches=matches, method="skimage",
                               max_trials=300).num_inliers
        assert abs(a - b) <= max(4, 0.05 * max(a, b)), (a, b)


def test_rerank_real_image(astronaut_views):
    query, warped, unrelated, _ = astronaut_views
    result = reranking.rerank(query, (np.array([0, 1]), np.array([0.9, 0.1])),
                              [unrelated, warped], ratio_test=0.8)
    np.testing.assert_array_equal(result.ids, [1, 0])
    assert result.inliers[0] >= 100


# --------------------------------------------------------------------------- re-ranking


def _controlled_db(query, counts, rng):
    """Database features sharing exactly ``counts[j]`` exact correspondences with ``query``."""
    inverse = cv2.invertAffineTransform(TRUE_AFFINE)
    out = []
    for k in counts:
        xy = np.concatenate([_apply(inverse, query.locations[:k]), rng.uniform(0, 500, (20, 2))])
        desc = np.concatenate([query.descriptors[:k], _unit(rng, 20)])
        out.append(_features(xy, desc))
    return out


COUNTS = [0, 10, 5, 20, 10, 3, 30]


@pytest.fixture(scope="module")
def controlled():
    rng = np.random.default_rng(7)
    query = _features(rng.uniform(0, 500, (40, 2)), _unit(rng, 40))
    return query, _controlled_db(query, COUNTS, rng)


def test_rerank_rule(controlled):
    """The inlier-count rule (``decision="inliers"``); the calibrated one is tested in
    tests/test_verification_decision.py."""
    query, db = controlled
    ids = np.arange(7, dtype=np.int64)
    scores = np.linspace(1.0, 0.4, 7).astype(np.float32)
    result = reranking.rerank(query, SearchResult(scores[None], ids[None]), db, top_n=6,
                              min_inliers=5, decision="inliers")
    # >= 5 inliers by count (10 vs 10: higher initial score first), the rest of the
    # top 6 in initial order, then id 6 untouched although it has 30 inliers.
    np.testing.assert_array_equal(result.ids, [3, 1, 4, 2, 0, 5, 6])
    np.testing.assert_array_equal(result.inliers, [20, 10, 10, 5, 0, 3, -1])
    np.testing.assert_array_equal(result.order, [3, 1, 4, 2, 0, 5, 6])
    np.testing.assert_allclose(result.scores, scores[result.order])
    assert [len(m) for m in result.matches] == [20, 10, 10, 5, 0, 3, 0]
    assert result.num_verified == 6
    assert result.inliers.dtype == np.int32 and result.ids.dtype == np.int64


def test_rerank_ties_by_initial_score_then_position(controlled):
    query, db = controlled
    ids = np.array([1, 4, 3], np.int64)
    result = reranking.rerank(query, (ids, np.array([0.2, 0.7, 0.1])), db, min_inliers=5,
                              decision="inliers")
    np.testing.assert_array_equal(result.ids, [3, 4, 1])
    result = reranking.rerank(query, (ids, np.array([0.5, 0.5, 0.1])), db, min_inliers=5,
                              decision="inliers")
    np.testing.assert_array_equal(result.ids, [3, 1, 4])


def test_rerank_padding_callable_and_top_n_zero(controlled):
    query, db = controlled
    calls = []

    def fetch(i):
        calls.append(i)
        return db[i]

    ids = np.array([0, 5, 3, -1, -1])
    scores = np.array([3, 2, 1, -np.inf, -np.inf])
    result = reranking.rerank(query, (ids, scores), fetch, top_n=10)
    assert calls == [0, 5, 3]
    # 3 verified first; then the unverified by inliers (5: 3 inliers, 0: none)
    np.testing.assert_array_equal(result.ids, [3, 5, 0, -1, -1])
    np.testing.assert_array_equal(result.inliers, [20, 3, 0, -1, -1])
    # the earlier rule: the unverified keep their initial order
    old = reranking.rerank(query, (ids, scores), db, top_n=10, decision="inliers")
    np.testing.assert_array_equal(old.ids, [3, 0, 5, -1, -1])
    np.testing.assert_array_equal(old.inliers, [20, 0, 3, -1, -1])
    calls.clear()
    unchanged = reranking.rerank(query, (ids, np.zeros(5)), fetch, top_n=0)
    assert calls == []
    np.testing.assert_array_equal(unchanged.ids, ids)


def test_rerank_empty_inputs(controlled):
    query, db = controlled
    empty_query = LocalFeatures.empty(64)
    result = reranking.rerank(empty_query, (np.arange(3), np.array([3.0, 2, 1])), db)
    np.testing.assert_array_equal(result.ids, [0, 1, 2])
    np.testing.assert_array_equal(result.inliers, [0, 0, 0])
    none = reranking.rerank(query, (np.zeros(0, np.int64), np.zeros(0)), db)
    assert none.ids.shape == (0,) and none.matches == ()


def test_rerank_workers_and_batch_match_serial(controlled):
    query, db = controlled
    ids = np.arange(7)[::-1].copy()
    scores = np.linspace(1, 0, 7)
    serial = reranking.rerank(query, (ids, scores), db, min_inliers=4)
    threaded = reranking.rerank(query, (ids, scores), db, min_inliers=4, workers=2)
    np.testing.assert_array_equal(serial.ids, threaded.ids)
    np.testing.assert_array_equal(serial.inliers, threaded.inliers)
    batch = reranking.rerank_batch(
        [query, LocalFeatures.empty(64)], (np.stack([ids, ids]), np.stack([scores, scores])),
        db, min_inliers=4, workers=2,
    )
    np.testing.assert_array_equal(batch[0].ids, serial.ids)
    np.testing.assert_array_equal(batch[1].ids, ids)
    stacked = reranking.stack_results(batch, names=[f"im{i}" for i in range(7)])
    assert stacked.ids.shape == (2, 7) and stacked.names[0] == "im0"


def test_rerank_rejects_bad_input(controlled):
    query, db = controlled
    with pytest.raises(ValueError, match="padding only at the end"):
        reranking.rerank(query, (np.array([0, -1, 2]), np.zeros(3)), db)
    with pytest.raises(IndexError, match="candidate id 9"):
        reranking.rerank(query, (np.array([9]), np.zeros(1)), db)
    with pytest.raises(TypeError, match=r"features\(0\) must be LocalFeatures"):
        reranking.rerank(query, (np.array([0]), np.zeros(1)), lambda i: None)
    with pytest.raises(ValueError, match="rerank_batch"):
        reranking.rerank(query, SearchResult(np.zeros((2, 1)), np.zeros((2, 1))), db)
    with pytest.raises(ValueError, match="min_inliers"):
        reranking.rerank(query, (np.array([0]), np.zeros(1)), db, min_inliers=0)
    with pytest.raises(TypeError, match="unknown verification options"):
        reranking.rerank(query, (np.array([0]), np.zeros(1)), db, top_n=0, ransac_treshold=5)
    with pytest.raises(ValueError, match="2 queries but the ranking has 1"):
        reranking.rerank_batch([query, query], (np.zeros((1, 2), int), np.zeros((1, 2))), db)


def test_rerank_options_from_config():
    options = reranking.rerank_options(
        VerificationConfig(rerank=50, ratio_test=0.8, min_inliers=12))
    assert options["top_n"] == 50 and options["ratio_test"] == 0.8
    assert options["min_inliers"] == 12 and options["ransac_threshold"] == 20.0
    assert set(options) - {"top_n", "min_inliers"} <= set(
        ransac.verify_pair.__kwdefaults__
    )


@pytest.mark.parametrize("method,model", [("usac", "affine"), ("usac", "homography"),
                                          ("opencv", "homography"), ("opencv", "similarity")])
def test_usac_and_other_models_find_a_planted_transform(method, model):
    """A similarity (scale 1.2, 10 degrees, shift) plants 60 true matches among 20 outliers."""
    from d2r.spatial.ransac import verify_pair

    rng = np.random.default_rng(5)
    db_xy = rng.uniform(0, 400, (80, 2)).astype(np.float32)
    angle = np.deg2rad(10)
    rot = 1.2 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    q_xy = (db_xy @ rot.T + [30, -12]).astype(np.float32)
    q_xy[60:] = rng.uniform(0, 400, (20, 2))  # outliers
    desc = rng.normal(size=(80, 8)).astype(np.float32)
    ones = np.ones(80, np.float32)
    query = LocalFeatures(q_xy, desc, ones, ones, (500, 500))
    db = LocalFeatures(db_xy, desc, ones, ones, (400, 400))
    pairs = np.stack([np.arange(80), np.arange(80)], axis=1)
    result = verify_pair(query, db, matches=pairs, method=method, model=model,
                         ransac_threshold=3.0)
    assert 58 <= result.num_inliers <= 62, result.num_inliers
    assert set(result.inlier_matches[:, 0].tolist()) >= set(range(5, 55))
    assert result.transform.shape == ((3, 3) if model == "homography" else (2, 3))
    # relative threshold: 3 px of a 707 px diagonal
    relative = verify_pair(query, db, matches=pairs, method=method, model=model,
                           ransac_threshold=100.0, relative_threshold=3.0 / np.hypot(500, 500))
    assert abs(relative.num_inliers - result.num_inliers) <= 2


def test_impossible_method_model_pairs_are_refused():
    from d2r.config import ConfigError, load_config
    from d2r.methods import validate
    from d2r.spatial.ransac import check_model

    with pytest.raises(ValueError, match="USAC does not fit similarity"):
        check_model("usac", "similarity")
    with pytest.raises(ValueError, match="affine models only"):
        check_model("skimage", "homography")
    with pytest.raises(ConfigError, match="verification.method=usac"):
        validate(load_config("rootsift-asmk-star", overrides=[
            "verification.method=usac", "verification.model=similarity"]))
