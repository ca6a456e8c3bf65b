"""AML localization on planted regions (vs exhaustive search), AML re-ranking, query expansion;
the fast integral max-pooling / AML code against a plain implementation (same windows and scores)."""

import logging

import numpy as np
import pytest

from d2r.cnn._ranking import cap_tail
from d2r.cnn.aml import (
    all_windows,
    aml_rerank,
    candidate_windows,
    localize,
    localize_exhaustive,
    window_iou,
)
from d2r.cnn.integral import IntegralMaxPool
from d2r.cnn.pooling import l2_normalize
from d2r.cnn.qe import average_query_expansion, expand_queries, rerank_top
from d2r.types import SearchResult

logger = logging.getLogger(__name__)


def planted(seed, h=20, w=28, c=32, box=(8, 5, 19, 14)):
    """Clutter in channels c/2.. everywhere; the object (channels ..c/2) inside ``box``."""
    rng = np.random.default_rng(seed)
    half = c // 2
    x = np.zeros((h, w, c), np.float32)
    x[..., half:] = rng.random((h, w, c - half)) * (rng.random((h, w, c - half)) < 0.2) * 2
    x1, y1, x2, y2 = box
    obj = rng.random((y2 - y1, x2 - x1, half)) * (rng.random((y2 - y1, x2 - x1, half)) < 0.3) * 2
    x[y1:y2, x1:x2, :half] = obj
    x[y1:y2, x1:x2, half:] = 0
    query = np.concatenate([obj.max(axis=(0, 1)), np.zeros(c - half)]).astype(np.float32)
    return x, query, box


def test_candidate_windows_grid_and_aspect_filter():
    all_grid = candidate_windows(7, 7, step=3)
    coords = {0, 3, 6, 7}
    assert set(all_grid[:, 0]) <= coords and set(all_grid[:, 2]) <= coords
    assert all_grid.shape[0] == 6 * 6  # (4 choose 2) x and y pairs
    square = candidate_windows(7, 7, step=3, aspect_ratio=1.0, aspect_ratio_factor=1.1)
    ratios = (square[:, 2] - square[:, 0]) / (square[:, 3] - square[:, 1])
    assert np.all(np.abs(np.log(ratios)) <= np.log(1.1) + 1e-12) and square.shape[0] > 0
    assert all_windows(3, 4).shape[0] == 6 * 10
    with pytest.raises(ValueError, match="aspect_ratio"):
        candidate_windows(7, 7, aspect_ratio=-1.0)


def test_aml_finds_planted_region_with_few_windows():
    """The paper's Table 1 comparison: windows evaluated and IoU with the exhaustive optimum."""
    ratios, ious_exh, ious_true = [], [], []
    for seed in range(3):
        x, query, box = planted(seed)
        pool = IntegralMaxPool(x, alpha=10)
        aspect = (box[2] - box[0]) / (box[3] - box[1])
        aml = localize(query, pool, query_aspect_ratio=aspect, step=3, aspect_ratio_factor=1.1,
                       refine_step=3, refine_rounds=5)
        best = localize_exhaustive(query, pool)
        ratios.append(aml.num_evaluated / best.num_evaluated)
        ious_exh.append(window_iou(aml.window, best.window))
        ious_true.append(window_iou(aml.window, box))
        assert aml.score >= best.score - 1e-3
    logger.info("AML / exhaustive windows %.4f, IoU with exhaustive %.3f, with planted box %.3f",
                np.mean(ratios), np.mean(ious_exh), np.mean(ious_true))
    assert max(ratios) < 0.01
    assert np.mean(ious_exh) > 0.8 and min(ious_true) > 0.6


def test_aml_rerank_promotes_image_containing_the_object():
    x, query, _ = planted(7)
    rng = np.random.default_rng(8)
    clutter = [np.asarray(rng.random(x.shape) * (rng.random(x.shape) < 0.2), np.float32) for _ in range(3)]
    maps = clutter + [x]
    ranking = SearchResult(np.array([[0.9, 0.8, 0.7, 0.6]]), np.array([[0, 1, 2, 3]]))
    result, windows, vectors = aml_rerank(ranking, query[None], maps, top_n=4)
    assert result.ids[0, 0] == 3
    assert np.all(np.diff(result.scores[0]) <= 0)
    assert windows.shape == (1, 4, 4) and vectors.shape == (1, 4, 32)
    # only the top 2 are re-ranked: the object image stays at rank 4
    result2, windows2, _ = aml_rerank(ranking, query[None], maps, top_n=2)
    assert result2.ids[0, 3] == 3 and windows2.shape == (1, 2, 4)
    assert np.all(np.diff(result2.scores[0]) <= 0)


def test_average_query_expansion_on_toy_ranking():
    db = np.eye(4, dtype=np.float32)
    q = np.array([[1.0, 0, 0, 0]], np.float32)
    ranking = SearchResult(np.array([[1.0, 0.5, 0.2, 0.1]]), np.array([[0, 2, 3, 1]]))
    expanded = average_query_expansion(q, db, ranking, top_k=2)
    np.testing.assert_allclose(expanded, [[2 / np.sqrt(5), 0, 1 / np.sqrt(5), 0]], rtol=1e-6)
    # -1 padding is ignored
    padded = SearchResult(np.array([[1.0, -np.inf]]), np.array([[0, -1]]))
    np.testing.assert_allclose(average_query_expansion(q, db, padded, top_k=5), [[1, 0, 0, 0]])
    # re-rank the top 3 with the expanded query: image 2 stays second, tail (image 1) untouched
    reranked = rerank_top(expanded, db, ranking, top_n=3)
    np.testing.assert_array_equal(reranked.ids, [[0, 2, 3, 1]])
    np.testing.assert_allclose(reranked.scores[0, :3], [2 / np.sqrt(5), 1 / np.sqrt(5), 0], rtol=1e-6)
    assert reranked.scores[0, 3] <= reranked.scores[0, 2]
    # a query close to image 3 but ranked it last among the top 3
    q3 = np.array([[0.0, 0, 0.6, 0.8]], np.float32)
    moved = rerank_top(q3, db, ranking, top_n=3)
    np.testing.assert_array_equal(moved.ids, [[3, 2, 0, 1]])


def test_expand_queries_validates_shapes():
    with pytest.raises(ValueError, match="neighbours"):
        expand_queries(np.ones((2, 3)), np.ones((2, 1, 4)))
    with pytest.raises(TypeError, match="SearchResult"):
        rerank_top(np.ones((1, 3)), np.ones((2, 3)), np.array([[0, 1]]))


# --------------------------------------------------------------------------------------
# The fast implementation against a straightforward one (same windows, same scores)
# --------------------------------------------------------------------------------------


def _ref_integral(x, alpha=10.0, levels=None):
    """Integral image of the scaled x^alpha by cumsum, and the channel scales."""
    x = np.asarray(x, np.float32).astype(np.float64)
    peak = x.max(axis=(0, 1))
    scale = np.where(peak > 0, peak, 1.0)
    unit = x / scale
    if levels is None:
        powered = unit**alpha
    else:
        powered = ((np.arange(levels, dtype=np.float64) / (levels - 1)) ** alpha)[
            np.rint(unit * (levels - 1)).astype(np.int64)]
    ii = np.zeros((x.shape[0] + 1, x.shape[1] + 1, x.shape[2]))
    ii[1:, 1:] = np.cumsum(np.cumsum(powered, axis=0), axis=1)
    return ii, scale


def _ref_vectors(x, windows, alpha=10.0, levels=None):
    """Approximate MAC of each window, one window at a time: (M, C) float64."""
    ii, scale = _ref_integral(x, alpha, levels)
    noise = 16 * np.finfo(np.float64).eps * ii[-1, -1]
    out = []
    for x1, y1, x2, y2 in windows:
        s = ii[y2, x2] - ii[y1, x2] - ii[y2, x1] + ii[y1, x1]
        out.append(np.where(s > noise, s, 0.0) ** (1.0 / alpha) * scale)
    return np.array(out).reshape(len(out), -1)


def _ref_cosines(x, windows, query, alpha=10.0, levels=None):
    q = np.asarray(query, np.float64)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    return np.array([float(v @ q) / max(float(np.sqrt(v @ v)), 1e-12)
                     for v in _ref_vectors(x, windows, alpha, levels)])


def _ref_grid(h, w, step, ratio, factor=1.1):
    """Grid windows in the order of candidate_windows: x pairs outer, y pairs inner."""
    def pairs(n):
        coords = sorted(set(range(0, n, step)) | {n})
        return [(a, b) for i, a in enumerate(coords) for b in coords[i + 1:]]
    wins = [(x1, y1, x2, y2) for x1, x2 in pairs(w) for y1, y2 in pairs(h)]
    if ratio is None:
        return wins
    dev = [abs(np.log((x2 - x1) / (y2 - y1) / ratio)) for x1, y1, x2, y2 in wins]
    keep = [d <= np.log(factor) + 1e-12 for d in dev]
    if not any(keep):
        keep = [d <= min(dev) + 1e-12 for d in dev]
    return [win for win, k in zip(wins, keep) if k]


def _ref_localize(x, query, ratio=None, step=3, refine_step=3, rounds=5, levels=None):
    """Grid search, then coordinate descent, written out plainly: (window, score, evaluated)."""
    h, w = x.shape[:2]
    grid = _ref_grid(h, w, step, ratio)
    scores = _ref_cosines(x, grid, query, levels=levels)
    best = int(np.argmax(scores))
    window, score, evaluated = list(grid[best]), float(scores[best]), len(grid)
    for _ in range(rounds):
        improved = False
        for coord in range(4):
            cands = []
            for off in [*range(-refine_step, 0), *range(1, refine_step + 1)]:
                c = list(window)
                c[coord] += off
                if c[0] >= 0 and c[1] >= 0 and c[2] <= w and c[3] <= h and c[2] > c[0] and c[3] > c[1]:
                    cands.append(c)
            if not cands:
                continue
            s = _ref_cosines(x, cands, query, levels=levels)
            evaluated += len(cands)
            i = int(np.argmax(s))
            if s[i] > score + 1e-12:
                window, score, improved = cands[i], float(s[i]), True
        if not improved:
            break
    return np.array(window), score, evaluated


def _random_map(rng, h, w, c, density):
    return (rng.random((h, w, c)) * (rng.random((h, w, c)) < density) * 3).astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("levels", [None, 2, 7, 256])
def test_integral_image_equals_cumsum_bit_for_bit(levels):
    rng = np.random.default_rng(11)
    for h, w, c in [(1, 1, 3), (1, 9, 5), (7, 1, 8), (6, 9, 13), (20, 28, 32)]:
        for density in (0.0, 0.1, 0.6, 1.0):
            x = _random_map(rng, h, w, c, density)
            ii, scale = _ref_integral(x, levels=levels)
            for arr in (x, x.astype(np.float16), x.astype(np.float64)):
                pool = IntegralMaxPool(arr, levels=levels)
                np.testing.assert_array_equal(pool.integral, ii)
                np.testing.assert_array_equal(pool.scale, scale)


def test_window_scores_match_reference_and_do_not_depend_on_the_batch():
    rng = np.random.default_rng(12)
    for h, w, c, levels in [(1, 1, 4, None), (1, 12, 6, 4), (9, 1, 16, None), (11, 14, 13, 256),
                            (16, 20, 64, None)]:
        x = _random_map(rng, h, w, c, 0.3)
        x[:, : w // 3] = 0  # exact zero sums in some windows and channels
        pool = IntegralMaxPool(x, levels=levels)
        wins = all_windows(h, w)
        query = rng.random(c) * (rng.random(c) < 0.7)
        scores = pool.cosine(wins, query)
        np.testing.assert_allclose(scores, _ref_cosines(x, wins, query, levels=levels), rtol=0, atol=1e-12)
        np.testing.assert_allclose(pool.pool(wins), _ref_vectors(x, wins, levels=levels).astype(np.float32),
                                   rtol=1e-6, atol=0)
        unit = pool.unit_query(query)
        pick = rng.permutation(len(wins))[: min(7, len(wins))]
        np.testing.assert_array_equal(pool.cosines(wins[pick], [unit])[0], scores[pick])
        np.testing.assert_array_equal(pool.cosines_few(wins[pick].tolist(), unit), scores[pick])
        # several queries at once: each row as if alone
        other = pool.unit_query(rng.random(c))
        both = pool.cosines(wins, [unit, other])
        np.testing.assert_array_equal(both[0], scores)
        np.testing.assert_array_equal(both[1], pool.cosines(wins, [other])[0])


def test_best_windows_is_the_exact_argmax_including_ties():
    rng = np.random.default_rng(13)
    for trial in range(12):
        h, w, c = int(rng.integers(8, 24)), int(rng.integers(8, 30)), int(rng.choice([16, 64, 256]))
        x = _random_map(rng, h, w, c, float(rng.choice([0.05, 0.3])))
        if trial % 2:  # object in an all-zero surrounding: many windows tie exactly
            x[: h // 3] = 0
            x[:, : w // 4] = 0
        pool = IntegralMaxPool(x)
        wins = candidate_windows(h, w, step=2)
        assert len(wins) > 256  # screened in float32 first
        queries = [x[h // 3 :, w // 4 :].max(axis=(0, 1)), rng.random(c), np.zeros(c)]
        units = [pool.unit_query(q) for q in queries]
        exact = pool.cosines(wins, units)
        for (i, score), row in zip(pool.best_windows(wins, units), exact):
            assert i == int(np.argmax(row)) and score == row[i]


def test_localize_matches_plain_reference():
    rng = np.random.default_rng(14)
    cases = [(1, 1, None, 3), (1, 10, None, 3), (1, 10, 4.0, 1), (10, 1, 0.2, 2), (2, 3, 1.0, 3),
             (13, 18, 1.3, 3), (20, 28, None, 3), (20, 28, 0.7, 2), (20, 28, 25.0, 3), (24, 16, 1.0, 1)]
    for h, w, ratio, step in cases:
        for levels in (None, 16):
            for planted_zeros in (False, True):
                x = _random_map(rng, h, w, 32, 0.3)
                if planted_zeros:
                    x[: h // 2] = 0
                query = x[h // 2 :, w // 3 :].max(axis=(0, 1)) + rng.random(32) * 0.1
                ref_window, ref_score, ref_evaluated = _ref_localize(x, query, ratio, step, levels=levels)
                loc = localize(query, x, query_aspect_ratio=ratio, step=step, levels=levels)
                np.testing.assert_array_equal(loc.window, ref_window)
                assert loc.window.dtype == np.int64
                assert abs(loc.score - ref_score) < 1e-12
                assert loc.num_evaluated == ref_evaluated


def _ref_rerank(ranking, macs, maps, ratios, top_n, levels=None):
    ids = ranking.ids
    head = min(top_n, ids.shape[1])
    qvec = l2_normalize(np.asarray(macs, np.float32))
    new_ids, scores = ids.copy(), np.array(ranking.scores, np.float32)
    windows = np.full((len(macs), head, 4), -1, np.int64)
    for q in range(len(macs)):
        sims = np.full(head, -np.inf, np.float32)
        for j in range(head):
            if ids[q, j] < 0:
                continue
            amap = maps[ids[q, j]]
            win, _, _ = _ref_localize(amap, np.asarray(macs[q], np.float32),
                                      None if ratios is None else ratios[q], levels=levels)
            x1, y1, x2, y2 = win
            sims[j] = float(l2_normalize(amap[y1:y2, x1:x2].max(axis=(0, 1))) @ qvec[q])
            windows[q, j] = win
        order = np.argsort(-sims, kind="stable")
        new_ids[q, :head], scores[q, :head], windows[q] = ids[q, :head][order], sims[order], windows[q][order]
    cap_tail(scores, head)
    return new_ids, scores, windows


@pytest.mark.parametrize("top_n", [3, 50])
def test_aml_rerank_matches_plain_reference_any_workers(top_n):
    rng = np.random.default_rng(15)
    maps = [_random_map(rng, int(rng.integers(1, 14)), int(rng.integers(1, 18)), 24, 0.3) for _ in range(9)]
    macs = np.stack([maps[i][: max(1, maps[i].shape[0] // 2)].max(axis=(0, 1)) for i in (0, 3, 5, 5)])
    ratios = np.array([1.2, 0.5, 2.0, 2.0])  # the last two share windows
    ids = np.stack([rng.permutation(9)[:6] for _ in range(4)]).astype(np.int64)
    ids[1, 4:] = -1  # padding
    ranking = SearchResult(np.sort(rng.random(ids.shape).astype(np.float32), axis=1)[:, ::-1].copy(), ids)
    ref_ids, ref_scores, ref_windows = _ref_rerank(ranking, macs, maps, ratios, top_n)
    outputs = [aml_rerank(ranking, macs, maps, query_aspect_ratios=ratios, top_n=top_n, workers=k) for k in (1, 3)]
    for result, windows, vectors in outputs:
        np.testing.assert_array_equal(result.ids, ref_ids)
        np.testing.assert_array_equal(windows, ref_windows)
        np.testing.assert_allclose(result.scores, ref_scores, rtol=0, atol=1e-6)
        assert windows.shape[1] == vectors.shape[1] == min(top_n, 6)
    for a, b in zip(outputs[0], outputs[1]):  # workers do not change a bit
        np.testing.assert_array_equal(getattr(a, "scores", a), getattr(b, "scores", b))
    # float16 maps (as read from the store) give the same answer
    half = aml_rerank(ranking, macs, [m.astype(np.float16) for m in maps], query_aspect_ratios=ratios,
                      top_n=top_n)
    np.testing.assert_array_equal(half[1], outputs[0][1])


def test_aml_rerank_reads_each_image_once_and_reports_bad_maps():
    rng = np.random.default_rng(16)
    maps = [_random_map(rng, 6, 8, 8, 0.5) for _ in range(4)]

    class Counting(list):
        reads = 0

        def __getitem__(self, i):
            Counting.reads += 1
            return list.__getitem__(self, i)

    ranking = SearchResult(np.ones((3, 4), np.float32), np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2]]))
    macs = np.stack([m.max(axis=(0, 1)) for m in maps[:3]])
    aml_rerank(ranking, macs, Counting(maps), top_n=4, workers=2)
    assert Counting.reads == 4
    bad = list(maps)
    bad[2] = bad[2].copy()
    bad[2][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"database_maps\[2\] contains NaN"):
        aml_rerank(ranking, macs, bad, top_n=4)
    bad[2][0, 0, 0] = -1.0
    with pytest.raises(ValueError, match="non-negative"):
        aml_rerank(ranking, macs, bad, top_n=4, workers=2)
    with pytest.raises(ValueError, match="workers"):
        aml_rerank(ranking, macs, maps, workers=0)


def test_candidate_windows_are_fresh_copies():
    a = candidate_windows(9, 12, step=3, aspect_ratio=1.0)
    a[:] = -5
    b = candidate_windows(9, 12, step=3, aspect_ratio=1.0)
    assert b.min() >= 0 and b.flags.writeable
    np.testing.assert_array_equal(candidate_windows(9, 12, step=3), np.array(_ref_grid(9, 12, 3, None)))
    np.testing.assert_array_equal(b, np.array(_ref_grid(9, 12, 3, 1.0)))
