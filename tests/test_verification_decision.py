"""The calibrated verification decision (issue 26): the a-contrario score on hand-built
point sets, the geometric sanity checks, and the hard cases on real photos.  Each case
the old rule (>= 8 RANSAC inliers) gets wrong is checked to be wrong under it too."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from d2r.spatial import ransac, reranking
from d2r.spatial.score import log10_binomial_tail, log10_nfa
from d2r.types import LocalFeatures

OLD = dict(decision="inliers")
NFA = "nfa"
"""The decision under test (``verification.decision``; not the default yet)."""


def _features(xy, size=(640, 480)) -> LocalFeatures:
    n = len(xy)
    desc = np.eye(n, 8, dtype=np.float32) if n <= 8 else np.ones((n, 8), np.float32)
    return LocalFeatures(np.asarray(xy, np.float32), desc, np.ones(n, np.float32),
                         np.ones(n, np.float32), size)


def _verify(q_xy, d_xy, pairs=None, **options):
    """verify_pair on given locations; match i is (query i, db i) unless ``pairs``."""
    pairs = np.stack([np.arange(len(q_xy))] * 2, axis=1) if pairs is None else pairs
    options.setdefault("decision", NFA)
    return ransac.verify_pair(_features(q_xy), _features(d_xy), matches=pairs, **options)


def _planted(rng, transform, k, n_random, spread=(0, 400)):
    d_xy = rng.uniform(*spread, (k, 2))
    q_xy = d_xy @ transform[:, :2].T + transform[:, 2] + rng.normal(0, 1, (k, 2))
    d_xy = np.concatenate([d_xy, rng.uniform(0, 480, (n_random, 2))])
    q_xy = np.concatenate([q_xy, rng.uniform(0, 480, (n_random, 2))])
    return q_xy, d_xy


AFFINE = np.array([[0.9, 0.2, 30.0], [-0.15, 1.1, -12.0]])


def test_binomial_tail_matches_exact_sum_and_stays_finite_far_out():
    from scipy.stats import binom

    k, n, p = np.array([1, 5, 20]), np.array([100, 100, 300]), np.array([0.01, 0.02, 0.05])
    np.testing.assert_allclose(log10_binomial_tail(k, n, p), np.log10(binom.sf(k - 1, n, p)),
                               rtol=1e-9)
    far = log10_binomial_tail(900, 1000, 0.001)
    assert np.isfinite(far) and far < -2000
    assert log10_binomial_tail(0, 10, 0.5) == 0.0
    # NFA grows with the tests: C(n, 3) hypotheses for an affine model.
    assert log10_nfa(10, 100, 0.01, sample_size=3) > log10_nfa(10, 100, 0.01, sample_size=2)


def test_planted_affine_among_random_matches_is_verified():
    q_xy, d_xy = _planted(np.random.default_rng(0), AFFINE, k=40, n_random=400)
    result = _verify(q_xy, d_xy)
    assert 38 <= result.num_inliers <= 45
    assert set(range(40)) - set(result.inlier_matches[:, 0].tolist()) == set()
    assert result.verified and result.score > 20 and result.reason == ""


def test_pure_random_matches_are_not_verified_although_ransac_finds_8():
    rng = np.random.default_rng(1)
    q_xy, d_xy = rng.uniform(0, 480, (1000, 2)), rng.uniform(0, 480, (1000, 2))
    old = _verify(q_xy, d_xy, **OLD)
    assert old.num_inliers >= 8 and old.verified  # the old rule is fooled
    new = _verify(q_xy, d_xy)
    assert not new.verified and new.score < 3


def test_degenerate_scale_is_refused():
    scale = np.array([[15.0, 0, 0], [0, 15.0, 0]])
    q_xy, d_xy = _planted(np.random.default_rng(2), scale, k=40, n_random=20, spread=(0, 30))
    result = _verify(q_xy, d_xy)
    assert result.score > 12 and not result.verified and result.reason.startswith("scale ratio")
    assert _verify(q_xy, d_xy, max_scale_ratio=20.0).verified


def test_reflection_is_refused_unless_allowed():
    mirror = np.array([[-1.0, 0, 480], [0, 1.0, 0]])
    q_xy, d_xy = _planted(np.random.default_rng(3), mirror, k=40, n_random=40)
    assert _verify(q_xy, d_xy, **OLD).verified
    assert _verify(q_xy, d_xy).reason == "reflection"
    assert _verify(q_xy, d_xy, allow_reflection=True).verified


def test_inliers_in_a_tiny_patch_or_on_a_line_are_refused():
    from d2r.spatial.score import spread

    rng = np.random.default_rng(4)
    q_xy, d_xy = _planted(rng, AFFINE, k=40, n_random=40, spread=(200, 212))
    assert _verify(q_xy, d_xy, **OLD).verified
    assert not _verify(q_xy, d_xy).verified
    line = np.stack([np.linspace(0, 400, 40), np.full(40, 100.0)], axis=1)
    q_line = line @ AFFINE[:, :2].T + AFFINE[:, 2] + rng.normal(0, 1, (40, 2))
    assert spread(q_line) < 2 < spread(rng.uniform(0, 400, (40, 2)))
    q_xy = np.concatenate([q_line, rng.uniform(0, 480, (40, 2))])
    d_xy = np.concatenate([line, rng.uniform(0, 480, (40, 2))])
    assert _verify(q_xy, d_xy, **OLD).verified
    assert not _verify(q_xy, d_xy).verified


def test_a_database_feature_counts_once():
    """30 query features (a burst of near-identical ones) all match database feature 0."""
    rng = np.random.default_rng(5)
    q_xy = np.concatenate([rng.normal(240, 4, (30, 2)), rng.uniform(0, 480, (60, 2))])
    d_xy = np.concatenate([[[200.0, 200.0]], rng.uniform(0, 480, (60, 2))])
    pairs = np.concatenate([np.stack([np.arange(30), np.zeros(30, int)], axis=1),
                            np.stack([np.arange(30, 90), np.arange(1, 61)], axis=1)])
    q = _features(q_xy)
    d = _features(d_xy)
    old = ransac.verify_pair(q, d, matches=pairs, **OLD)
    assert old.num_inliers >= 8 and old.verified
    new = ransac.verify_pair(q, d, matches=pairs, decision=NFA)
    assert (np.bincount(new.inlier_matches[:, 1]) <= 1).all() and not new.verified


# --------------------------------------------------------------------------- real photos


def _rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


@pytest.fixture(scope="module")
def extract():
    from d2r.features.rootsift import RootSiftExtractor

    return RootSiftExtractor(max_features=1000).extract


@pytest.fixture(scope="module")
def astronaut():
    return _rgb(skimage.data.astronaut())


def test_exact_duplicate_verifies(extract, astronaut):
    result = ransac.verify_pair(extract(astronaut), extract(astronaut.copy()), decision=NFA)
    assert result.verified and result.score > 100


def test_strongly_zoomed_crop_verifies(extract, astronaut):
    zoomed = cv2.resize(astronaut[100:280, 150:330], (540, 540))  # 3x zoom of a crop
    result = ransac.verify_pair(extract(zoomed), extract(astronaut), decision=NFA)
    assert result.verified, result.reason


def test_mirrored_copy_is_refused_unless_reflections_allowed(extract, astronaut):
    query, db = extract(np.ascontiguousarray(astronaut[:, ::-1])), extract(astronaut)
    assert ransac.verify_pair(query, db, **OLD).verified
    assert ransac.verify_pair(query, db, decision=NFA).reason == "reflection"
    assert ransac.verify_pair(query, db, decision=NFA, allow_reflection=True).verified


@pytest.mark.parametrize("name", ["brick", "gravel", "grass"])
def test_repeated_structure_does_not_verify(extract, name):
    """Two halves of one texture photo: the same pattern, no shared physical point."""
    image = _rgb(getattr(skimage.data, name)())
    left, right = extract(image[:, :256].copy()), extract(image[:, 256:].copy())
    assert ransac.verify_pair(left, right, **OLD).verified
    assert not ransac.verify_pair(left, right, decision=NFA).verified


def test_the_grass_halves_verify_because_they_share_a_copied_patch(extract):
    """With the preset's ratio test the two halves of scikit-image's ``grass`` verify: not
    a chance alignment of a repeated texture but a region of the photo copied to another
    place (a pure translation; the grey levels around the inliers correlate > 0.7, against
    ~0 for the halves as a whole)."""
    gray = skimage.data.grass()
    image = _rgb(gray)
    left, right = extract(image[:, :256].copy()), extract(image[:, 256:].copy())
    pair = ransac.verify_pair(left, right, decision=NFA, ratio_test=0.8)
    assert pair.verified and pair.num_inliers >= 12
    np.testing.assert_allclose(pair.transform[:, :2], np.eye(2), atol=0.05)
    q = np.rint(left.locations[pair.inlier_matches[:, 0]]).astype(int)
    d = np.rint(right.locations[pair.inlier_matches[:, 1]]).astype(int) + [256, 0]
    levels, r = gray.astype(np.float64), 12
    inside = np.all((np.minimum(q, d) >= r) & (np.maximum(q, d) < 512 - r), axis=1)
    correlations = [np.corrcoef(levels[qy - r:qy + r, qx - r:qx + r].ravel(),
                                levels[dy - r:dy + r, dx - r:dx + r].ravel())[0, 1]
                    for (qx, qy), (dx, dy) in zip(q[inside], d[inside])]
    assert len(correlations) >= 5 and np.median(correlations) > 0.7


def test_photos_sharing_only_a_flat_wall_do_not_verify(extract, astronaut):
    rng = np.random.default_rng(0)
    wall = np.clip(180 + rng.normal(0, 2, (200, 512, 3)), 0, 255).astype(np.uint8)
    coffee = _rgb(skimage.data.coffee())[:312, :512]
    a = extract(np.concatenate([wall, astronaut[:312]]))
    b = extract(np.concatenate([wall, coffee]))
    assert ransac.verify_pair(a, b, **OLD).verified
    assert not ransac.verify_pair(a, b, decision=NFA).verified


@pytest.mark.parametrize("other", ["coffee", "chelsea", "rocket", "brick", "camera"])
def test_a_very_small_query_box_does_not_verify_unrelated_photos(extract, astronaut, other):
    """A 48 x 48 px box holds 15 features; the inlier rule "verifies" every photo with them."""
    query = extract(astronaut, box=(200, 80, 248, 128))
    assert 5 < len(query) < 40
    db = extract(_rgb(getattr(skimage.data, other)()))
    assert ransac.verify_pair(query, db, **OLD).verified
    assert not ransac.verify_pair(query, db, decision=NFA).verified


def test_hundreds_of_near_identical_features_verify_only_the_same_pattern(extract):
    """A checkerboard: over a hundred identical corners.  Unrelated repeated textures do
    not verify; the same board, resized, does."""
    board = _rgb(skimage.data.checkerboard())
    query = extract(board)
    assert len(query) > 100
    for other in ("brick", "coffee", "grass"):
        db = extract(_rgb(getattr(skimage.data, other)()))
        assert ransac.verify_pair(query, db, **OLD).verified
        assert not ransac.verify_pair(query, db, decision=NFA).verified
    resized = extract(np.ascontiguousarray(cv2.resize(board, (400, 400))))
    assert ransac.verify_pair(query, resized, decision=NFA).verified


# --------------------------------------------------------------------------- re-ranking


def _two_true_matches_among_five():
    """A query and five database images: #1 and #3 hold 40 and 120 true correspondences."""
    rng = np.random.default_rng(6)
    query_xy = rng.uniform(0, 480, (300, 2))
    desc = rng.normal(size=(300, 16)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    ones = np.ones(300, np.float32)
    query = LocalFeatures(query_xy.astype(np.float32), desc, ones, ones, (480, 480))
    inverse = cv2.invertAffineTransform(AFFINE)

    def db(k):  # k true correspondences, the rest random features
        xy = query_xy @ inverse[:, :2].T + inverse[:, 2]
        xy[k:] = rng.uniform(0, 480, (300 - k, 2))
        d = desc.copy()
        d[k:] = rng.normal(size=(300 - k, 16))
        d[k:] /= np.linalg.norm(d[k:], axis=1, keepdims=True)
        return LocalFeatures(xy.astype(np.float32), d, ones, ones, (480, 480))

    return query, [db(0), db(40), db(0), db(120), db(0)]


def test_rerank_puts_verified_first_by_score_then_search_order():
    query, dbs = _two_true_matches_among_five()
    result = reranking.rerank(query, (np.arange(5), np.linspace(1, 0.5, 5)), dbs, decision=NFA)
    np.testing.assert_array_equal(result.ids, [3, 1, 0, 2, 4])
    np.testing.assert_array_equal(result.verified, [True, True, False, False, False])
    assert result.verification_scores[0] > result.verification_scores[1] > 12


def test_a_query_shares_one_chance_region_index_and_scores_alike(monkeypatch):
    """Re-ranking indexes the query's locations once for all its pairs; a pair's score is the
    same with the shared index as with its own."""
    from d2r.spatial import score

    query, dbs = _two_true_matches_among_five()
    expected = reranking.rerank(query, (np.arange(5), np.linspace(1, 0.5, 5)), dbs, decision=NFA)
    built = []

    class Counted(score.QueryPoints):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(reranking, "QueryPoints", Counted)
    for workers in (1, 3):
        built.clear()
        again = reranking.rerank(query, (np.arange(5), np.linspace(1, 0.5, 5)), dbs,
                                 decision=NFA, workers=workers)
        assert len(built) == 1
        np.testing.assert_array_equal(again.ids, expected.ids)
        np.testing.assert_array_equal(again.verification_scores, expected.verification_scores)
    points = score.QueryPoints(query.locations)
    for db in dbs:
        own = ransac.verify_pair(query, db, decision=NFA)
        shared = ransac.verify_pair(query, db, decision=NFA, query_points=points)
        assert (own.score, own.num_inliers, own.verified) == \
            (shared.score, shared.num_inliers, shared.verified)


def test_chance_counts_of_the_grid_equal_a_brute_force_count():
    """The compiled grid counts what a plain distance test counts, points on the radius
    included, far and outside points too."""
    from d2r.spatial._score_kernels import grid_counts
    from d2r.spatial.score import QueryPoints

    rng = np.random.default_rng(3)
    xy = np.round(rng.uniform(0, 300, (500, 2)), 1)
    points = np.concatenate([xy[:40], rng.uniform(-50, 350, (200, 2)), [[1e6, 1e6]],
                             xy[:5] + [20.0, 0.0]])  # the last five exactly 20 px away
    for radius in (1.0, 7.5, 20.0):
        want = ((xy[None] - points[:, None]) ** 2).sum(-1) <= radius * radius
        got = grid_counts(*QueryPoints(xy).grid(radius), points, radius)
        np.testing.assert_array_equal(got, want.sum(1))
    assert grid_counts(*QueryPoints(np.zeros((0, 2))).grid(5.0), points, 5.0).sum() == 0


def test_the_compiled_one_to_one_filter_equals_four_unique_passes():
    from d2r.spatial._score_kernels import first_of_each

    rng = np.random.default_rng(5)
    for size, spread_of_values in [(0, 3), (1, 3), (50, 4), (400, 30), (1000, 1 << 40)]:
        keys = rng.integers(-spread_of_values, spread_of_values, (4, size))
        order = rng.permutation(size)
        want = order
        for row in keys:
            _, first = np.unique(row[want], return_index=True)
            want = want[np.sort(first)]
        np.testing.assert_array_equal(first_of_each(order, keys), want)


@pytest.mark.parametrize("other", ["astronaut", "coffee", "brick", "grass"])
def test_compiled_and_numpy_decisions_agree(extract, astronaut, other, monkeypatch):
    """The numba half of the decision gives the numpy half's inliers, score and reason: a
    crop, a rotated view and unrelated photos against the astronaut, both matchings."""
    image = astronaut if other == "astronaut" else _rgb(getattr(skimage.data, other)())
    query = extract(astronaut)
    views = [extract(image[40:400, 60:460]), extract(np.ascontiguousarray(np.rot90(image)))]
    for db in views:
        for options in ({}, {"ratio_test": 0.8}):
            answers = []
            for backend in ("numpy", "compiled"):
                monkeypatch.setenv("D2R_BACKEND", backend)
                v = ransac.verify_pair(query, db, decision=NFA, **options)
                answers.append((v.inlier_matches.tolist(), v.score, v.reason, v.verified))
            assert answers[0] == answers[1]


def test_an_unknown_backend_is_refused_by_the_decision_as_by_the_index(monkeypatch):
    from d2r.spatial.score import use_compiled

    monkeypatch.setenv("D2R_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"decision's backend must be one of .* got 'gpu' "
                                         r"\(D2R_BACKEND\)"):
        use_compiled(1)
    monkeypatch.setenv("D2R_BACKEND", "numpy")
    assert use_compiled(10 ** 6) is False
