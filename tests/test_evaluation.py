"""Tests of d2r.evaluation.metrics against hand-computed values and a loop re-derivation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2r.evaluation.metrics import (
    compute_ap,
    compute_map,
    evaluate_protocols,
    protocol_gnd,
    result_to_ranks,
    scores_to_ranks,
)
from d2r.types import SearchResult


# ---------------------------------------------------------------- reference
def reference_query(ranking, ok, junk, kappas):
    """Walk the ranking item by item: skip junk, accumulate trapezoids."""
    ok, junk = set(int(i) for i in ok), set(int(i) for i in junk)
    kept_rank = 0  # rank among non-junk items
    found = 0
    ap = 0.0
    positive_ranks = []  # 1-based, after junk removal
    for item in ranking:
        item = int(item)
        if item in ok:
            # Left edge: precision before this hit; right edge: after it.
            left = 1.0 if kept_rank == 0 else found / kept_rank
            right = (found + 1) / (kept_rank + 1)
            ap += (left + right) / 2.0 / len(ok)
            found += 1
            positive_ranks.append(kept_rank + 1)
        if item in junk and item not in ok:
            continue
        kept_rank += 1
    precisions = []
    for k in kappas:
        if not positive_ranks:
            precisions.append(0.0)
            continue
        kq = min(k, positive_ranks[-1])
        precisions.append(sum(1 for r in positive_ranks if r <= kq) / kq)
    return ap, precisions


def reference_map(ranks, gnd, kappas):
    aps, prs = [], []
    for q, g in enumerate(gnd):
        if len(g["ok"]) == 0:
            aps.append(math.nan)
            prs.append([math.nan] * len(kappas))
            continue
        ap, pr = reference_query(ranks[q], g["ok"], g.get("junk", []), kappas)
        aps.append(ap)
        prs.append(pr)
    aps, prs = np.array(aps), np.array(prs).reshape(len(gnd), len(kappas))
    keep = ~np.isnan(aps)
    return aps[keep].mean(), aps, prs[keep].mean(axis=0), prs


# ---------------------------------------------------------------- compute_ap
def test_compute_ap_hand_values():
    assert compute_ap([0], 1) == pytest.approx(1.0)
    # positive at rank 1 of 1 positive: (0/1 + 1/2) / 2 = 0.25
    assert compute_ap([1], 1) == pytest.approx(0.25)
    # ranks 0 and 2 of 2: (1 + 1)/2/2 + (1/2 + 2/3)/2/2 = 0.5 + 0.291666...
    assert compute_ap([0, 2], 2) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    # a missing positive only counts in the denominator
    assert compute_ap([0], 2) == pytest.approx(0.5)
    assert compute_ap([], 3) == 0.0


@pytest.mark.parametrize(
    "ranks, n, match",
    [([0], 0, "positive"), ([0, 1], 1, "exceed"), ([1, 1], 2, "increasing"), ([[0]], 1, "1-D")],
)
def test_compute_ap_rejects_bad_input(ranks, n, match):
    with pytest.raises(ValueError, match=match):
        compute_ap(ranks, n)


# ---------------------------------------------------------------- compute_map
def test_junk_before_positive_is_removed():
    ranks = np.array([[5, 3, 7, 1]])
    # 3 is junk before positive 7: 7 moves from rank 2 to rank 1.
    m, aps, mp, prs = compute_map(ranks, [{"ok": [7], "junk": [3]}], kappas=[1, 2])
    assert aps[0] == pytest.approx(0.25)
    assert m == pytest.approx(0.25)
    # last positive at (1-based) rank 2 -> k clamped to 2 for k=2: 1/2
    np.testing.assert_allclose(prs[0], [0.0, 0.5])


def test_junk_after_positive_changes_nothing():
    ranks = np.array([[7, 3, 5]])
    _, aps, _, _ = compute_map(ranks, [{"ok": [7], "junk": [3]}], kappas=[])
    assert aps[0] == pytest.approx(1.0)


def test_precision_at_k_is_clamped_to_last_positive():
    # positives at 1-based ranks 1 and 2; P@5 = 2/min(5, 2) = 1, not 2/5.
    ranks = np.array([[0, 1, 2, 3, 4, 5]])
    _, _, mp, prs = compute_map(ranks, [{"ok": [0, 1]}], kappas=(1, 5, 10))
    np.testing.assert_allclose(prs[0], [1.0, 1.0, 1.0])
    # positives at ranks 2 and 4: P@1 = 0/1, P@5 -> kq=4: 2/4
    ranks = np.array([[9, 0, 8, 1, 7]])
    _, _, _, prs = compute_map(ranks, [{"ok": [0, 1]}], kappas=(1, 5))
    np.testing.assert_allclose(prs[0], [0.0, 0.5])


def test_positive_missing_from_ranking():
    ranks = np.array([[4, 2, 9]])  # positive 6 never retrieved
    m, aps, _, prs = compute_map(ranks, [{"ok": [2, 6]}], kappas=[1, 5])
    # 2 at rank 1: (0 + 1/2)/2 / 2 positives
    assert aps[0] == pytest.approx(0.125)
    np.testing.assert_allclose(prs[0], [0.0, 0.5])


def test_no_positive_retrieved_gives_zero():
    m, aps, mp, prs = compute_map(np.array([[0, 1]]), [{"ok": [5]}], kappas=[1])
    assert aps[0] == 0.0 and prs[0, 0] == 0.0 and m == 0.0


def test_empty_positive_queries_are_excluded():
    ranks = np.array([[0, 1], [1, 0], [0, 1]])
    gnd = [{"ok": [0]}, {"ok": []}, {"ok": np.array([1]), "junk": np.array([], np.int64)}]
    m, aps, mp, prs = compute_map(ranks, gnd, kappas=[1])
    assert np.isnan(aps[1]) and np.all(np.isnan(prs[1]))
    # query 0: AP 1, query 2: positive at rank 1 -> 0.25
    assert m == pytest.approx((1.0 + 0.25) / 2)
    np.testing.assert_allclose(mp, [0.5])


def test_all_queries_empty_gives_nan():
    m, aps, mp, _ = compute_map(np.array([[0, 1]]), [{"ok": []}], kappas=[1])
    assert math.isnan(m) and math.isnan(mp[0])


def test_revisitop_layout_is_explicit():
    ranks = np.array([[0, 1, 2], [2, 1, 0]])  # (Q=2, N=3)
    gnd = [{"ok": [0]}, {"ok": [0]}]
    direct = compute_map(ranks, gnd, kappas=[1])
    transposed = compute_map(ranks.T.copy(), gnd, kappas=[1], layout="revisitop")
    assert direct[0] == pytest.approx(transposed[0])
    np.testing.assert_allclose(direct[1], transposed[1])
    with pytest.raises(ValueError, match="layout"):
        compute_map(ranks, gnd, layout="guess")


def test_padding_never_matches():
    ranks = np.array([[3, -1, -1]])
    _, aps, _, _ = compute_map(ranks, [{"ok": [3, 4]}], kappas=[])
    assert aps[0] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "ranks, gnd, exc, match",
    [
        (np.array([[0.0, 1.0]]), [{"ok": [0]}], TypeError, "integer"),
        (np.array([0, 1]), [{"ok": [0]}], ValueError, "2-D"),
        (np.array([[0, 1]]), [{"ok": [0]}, {"ok": [1]}], ValueError, "2 entries"),
        (np.array([[0, 0]]), [{"ok": [0]}], ValueError, "twice"),
        (np.array([[0, -2]]), [{"ok": [0]}], ValueError, ">= 0"),
        (np.array([[0, 1]]), [{"junk": [0]}], KeyError, "'ok'"),
        (np.array([[0, 1]]), [{"ok": [0], "junk": [0]}], ValueError, "both ok and junk"),
        (np.array([[0, 1]]), [{"ok": [-1]}], ValueError, "negative"),
        (np.array([[0, 1]]), [{"ok": ["a"]}], TypeError, "integer"),
    ],
)
def test_compute_map_rejects_bad_input(ranks, gnd, exc, match):
    with pytest.raises(exc, match=match):
        compute_map(ranks, gnd)


def test_bad_kappas():
    with pytest.raises(ValueError, match="kappas"):
        compute_map(np.array([[0]]), [{"ok": [0]}], kappas=[0])


@st.composite
def ranking_problem(draw):
    n_db = draw(st.integers(1, 30))
    n_q = draw(st.integers(1, 5))
    depth = draw(st.integers(0, n_db))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ranks = np.stack([rng.permutation(n_db)[:depth] for _ in range(n_q)]).reshape(n_q, depth)
    gnd = []
    for _ in range(n_q):
        labels = rng.integers(0, 3, size=n_db)  # 0 negative, 1 ok, 2 junk
        gnd.append({"ok": np.flatnonzero(labels == 1), "junk": np.flatnonzero(labels == 2)})
    kappas = sorted(set(draw(st.lists(st.integers(1, 12), max_size=4))))
    return ranks, gnd, kappas


@settings(max_examples=150, deadline=None)
@given(ranking_problem())
def test_matches_loop_reference(problem):
    ranks, gnd, kappas = problem
    if all(len(g["ok"]) == 0 for g in gnd):
        m, *_ = compute_map(ranks, gnd, kappas)
        assert math.isnan(m)
        return
    m, aps, mp, prs = compute_map(ranks, gnd, kappas)
    rm, raps, rmp, rprs = reference_map(ranks, gnd, kappas)
    assert m == pytest.approx(rm, abs=1e-12)
    np.testing.assert_allclose(aps, raps, atol=1e-12)
    np.testing.assert_allclose(mp, rmp, atol=1e-12)
    np.testing.assert_allclose(prs, rprs, atol=1e-12)
    assert np.all((aps[~np.isnan(aps)] >= 0) & (aps[~np.isnan(aps)] <= 1 + 1e-12))


# ---------------------------------------------------------------- protocols
def test_protocol_gnd_definitions():
    gnd = [{"easy": [1], "hard": [2], "junk": [3]}]
    easy, medium, hard = (protocol_gnd(gnd, p)[0] for p in ("easy", "medium", "hard"))
    assert sorted(easy["ok"]) == [1] and sorted(easy["junk"]) == [2, 3]
    assert sorted(medium["ok"]) == [1, 2] and sorted(medium["junk"]) == [3]
    assert sorted(hard["ok"]) == [2] and sorted(hard["junk"]) == [1, 3]
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol_gnd(gnd, "extreme")
    with pytest.raises(KeyError, match="'hard'"):
        protocol_gnd([{"easy": [1], "junk": []}], "medium")


def test_evaluate_protocols_percent():
    # db: 0 easy, 1 hard, 2 junk, 3 negative
    gnd = [{"easy": [0], "hard": [1], "junk": [2]}]
    ranks = np.array([[2, 1, 3, 0]])
    metrics = evaluate_protocols(ranks, gnd, kappas=(1, 5))
    # easy: junk {1,2} removed -> 0 at rank 1 (after 3): AP 0.25
    assert metrics["easy"]["mAP"] == pytest.approx(25.0)
    # medium: junk {2}: 1 at rank 0, 0 at rank 2 -> (1+1)/4 + (1/2+2/3)/4
    assert metrics["medium"]["mAP"] == pytest.approx(100 * (0.5 + (0.5 + 2 / 3) / 4))
    # hard: junk {0,2}: 1 at rank 0 -> 100
    assert metrics["hard"]["mAP"] == pytest.approx(100.0)
    assert metrics["hard"]["mP@1"] == pytest.approx(100.0)
    assert metrics["medium"]["mP@5"] == pytest.approx(100 * 2 / 3)
    assert set(metrics["easy"]) == {"mAP", "mP@1", "mP@5"}


# ---------------------------------------------------------------- rankings
def test_scores_to_ranks_descending_and_stable():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [np.nan, 0.0, 1.0, -1.0]], np.float32)
    ranks = scores_to_ranks(scores)
    assert ranks.dtype == np.int64
    np.testing.assert_array_equal(ranks[0], [1, 3, 2, 0])
    np.testing.assert_array_equal(ranks[1], [2, 1, 3, 0])
    with pytest.raises(ValueError, match="matrix"):
        scores_to_ranks(np.zeros(3))


def test_result_to_ranks_keeps_padding():
    res = SearchResult(
        scores=np.array([[0.9, -np.inf]], np.float32), ids=np.array([[4, -1]], np.int64)
    )
    ranks = result_to_ranks(res)
    np.testing.assert_array_equal(ranks, [[4, -1]])
    _, aps, _, _ = compute_map(ranks, [{"ok": [4, 5]}], kappas=[])
    assert aps[0] == pytest.approx(0.5)
    with pytest.raises(TypeError, match="SearchResult"):
        result_to_ranks(np.zeros((1, 1)))
