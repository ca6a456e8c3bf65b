"""AML localization on planted regions (vs exhaustive search), AML re-ranking, query expansion."""

import logging

import numpy as np
import pytest

from d2r.global_.aml import (
    aml_rerank,
    all_windows,
    candidate_windows,
    localize,
    localize_exhaustive,
    window_iou,
)
from d2r.global_.integral import IntegralMaxPool
from d2r.global_.qe import average_query_expansion, expand_queries, rerank_top
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
