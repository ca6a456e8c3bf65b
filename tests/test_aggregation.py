"""Tests of d2r.encoding.aggregation: hand-checked kernels, edge cases, brute-force properties."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2r.encoding.aggregation import (
    aggregate,
    aggregate_regions,
    binarize,
    normalization_factors,
    selectivity,
    self_similarity,
    shared_words,
    similarity,
    similarity_matrix,
    word_similarities,
)
from d2r.encoding.codebook import Codebook, quantize
from d2r.types import AggregatedImage

# A 5-word codebook in 2-D and descriptors whose nearest words are obvious.
C = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)
X1 = [1.3, 0.0]  # word 1, residual (0.3, 0)
X2 = [1.0, 0.4]  # word 1, residual (0, 0.4)
X3 = [0.0, 1.6]  # word 2, residual (0, 0.6)
X5 = [-1.2, 0.0]  # word 3, residual (-0.2, 0)
X6 = [-0.8, 0.0]  # word 3, residual (+0.2, 0): word 3's sum vanishes
X = np.array([X1, X2, X3, X3, X5, X6], np.float32)


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------- hand-checked kernels


def test_vlad_hand():
    img = aggregate(X, C, "vlad")
    # residual sums: w1 (0.3, 0.4), w2 (0, 1.2), w3 (0, 0); ||V|| = sqrt(.25 + 1.44) = 1.3
    expected = np.array([[0, 0], [0.3, 0.4], [0, 1.2], [0, 0], [0, 0]]) / 1.3
    np.testing.assert_array_equal(img.words, np.arange(5))
    np.testing.assert_allclose(img.vectors, expected, atol=1e-6)
    assert not img.binary and img.dim == 2


def test_asmk_hand_drops_vanished_word():
    img = aggregate(X, C, "asmk")
    np.testing.assert_array_equal(img.words, [1, 2])  # word 3's residuals cancel
    np.testing.assert_allclose(img.vectors, [[0.6, 0.8], [0.0, 1.0]], atol=1e-6)


def test_asmk_star_hand():
    img = aggregate(X, C, "asmk_star")
    np.testing.assert_array_equal(img.words, [1, 2])
    # (0.6, 0.8) -> bits 11 -> 0b11000000; (0, 1) -> bits 01 -> 0b01000000
    np.testing.assert_array_equal(img.vectors, [[192], [64]])
    assert img.binary and img.vectors.dtype == np.uint8 and img.dim == 2


def test_multiple_assignment_hand():
    x = np.array([[0.6, 0.3]], np.float32)  # sq. distances: w1 0.25, w0 0.45, w2 0.85
    words, dist = quantize(x, C, num_assignments=2)
    np.testing.assert_array_equal(words, [[1, 0]])
    np.testing.assert_allclose(dist, [[0.25, 0.45]], atol=1e-6)
    asmk = aggregate(x, C, "asmk", num_assignments=2)
    np.testing.assert_array_equal(asmk.words, [0, 1])
    np.testing.assert_allclose(asmk.vectors, [unit([0.6, 0.3]), [-0.8, 0.6]], atol=1e-6)
    vlad = aggregate(x, C, "vlad", num_assignments=2)
    expected = np.zeros((5, 2))
    expected[0], expected[1] = [0.6, 0.3], [-0.4, 0.3]
    np.testing.assert_allclose(vlad.vectors, expected / math.sqrt(0.7), atol=1e-6)
    star = aggregate(x, C, "asmk_star", num_assignments=2)
    np.testing.assert_array_equal(star.vectors, [[192], [64]])


def test_binarize_and_packbits_bit_order():
    img = AggregatedImage(np.array([4]), np.array([[1, -1, 0, 2, 0, 0, 0, 0, 3]], np.float32), 9)
    packed = binarize(img)
    np.testing.assert_array_equal(packed.vectors, [[0b10010000, 0b10000000]])
    with pytest.raises(ValueError, match="already binary"):
        binarize(packed)


# Regions: R0 whole image (x1, x2, x3, x3), R1 (x1, x2), R2 (x2), R3 empty.
REGIONS = [X[:4], X[:2], X[1:2], np.zeros((0, 2), np.float32)]
# Per-region residual sums | VLAD norm:
# R0 w1 (.3,.4) w2 (0,1.2) | 1.3;  R1 w1 (.3,.4) | .5;  R2 w1 (0,.4) | .4.
RASMK_W1 = np.array([0.3, 0.4]) / 1.3 + np.array([0.6, 0.8]) + np.array([0.0, 1.0])
RASMK_W2 = np.array([0.0, 1.2]) / 1.3


def test_r_asmk_hand():
    img = aggregate_regions(REGIONS, C, "r_asmk")
    np.testing.assert_array_equal(img.words, [1, 2])
    np.testing.assert_allclose(img.vectors, [unit(RASMK_W1), unit(RASMK_W2)], atol=1e-6)


def test_naive_r_asmk_hand():
    img = aggregate_regions(REGIONS, C, "naive_r_asmk")
    # per-region per-word normalised: w1 (.6,.8) + (.6,.8) + (0,1); w2 (0,1)
    np.testing.assert_array_equal(img.words, [1, 2])
    np.testing.assert_allclose(img.vectors, [unit([1.2, 2.6]), [0.0, 1.0]], atol=1e-6)


def test_r_vlad_hand():
    img = aggregate_regions(REGIONS, C, "r_vlad")
    expected = np.zeros((5, 2))
    expected[1], expected[2] = RASMK_W1, RASMK_W2
    np.testing.assert_array_equal(img.words, np.arange(5))
    np.testing.assert_allclose(img.vectors, expected / np.linalg.norm(expected), atol=1e-6)


def test_r_asmk_star_hand():
    img = aggregate_regions(REGIONS, C, "r_asmk_star")
    np.testing.assert_array_equal(img.words, [1, 2])
    np.testing.assert_array_equal(img.vectors, [[192], [64]])
    assert img.binary


def test_regional_kernels_differ_from_naive():
    r = aggregate_regions(REGIONS, C, "r_asmk").vectors[0]
    naive = aggregate_regions(REGIONS, C, "naive_r_asmk").vectors[0]
    assert abs(float(r @ naive)) < 0.999


def test_r_asmk_vanishing_word_after_averaging():
    # word 1 gets +r in one region and -r in another with equal VLAD norms: the average vanishes
    a = np.array([[1.3, 0.0], [0.0, 1.3]], np.float32)  # w1 (.3,0), w2 (0,.3)
    b = np.array([[0.7, 0.0], [0.0, 1.3]], np.float32)  # w1 (-.3,0), w2 (0,.3)
    img = aggregate_regions([a, b], C, "r_asmk")
    np.testing.assert_array_equal(img.words, [2])
    np.testing.assert_allclose(img.vectors, [[0.0, 1.0]], atol=1e-6)


# ---------------------------------------------------------------- empty inputs


@pytest.mark.parametrize("method", ["asmk", "asmk_star"])
def test_empty_asmk_has_no_words(method):
    img = aggregate(np.zeros((0, 2), np.float32), C, method)
    assert len(img) == 0 and img.dim == 2 and img.binary == (method == "asmk_star")


def test_empty_vlad_is_zero_vector_of_all_words():
    img = aggregate(np.zeros((0, 2), np.float32), C, "vlad")
    np.testing.assert_array_equal(img.words, np.arange(5))
    np.testing.assert_array_equal(img.vectors, np.zeros((5, 2)))


@pytest.mark.parametrize("method", ["r_vlad", "naive_r_asmk", "r_asmk", "r_asmk_star"])
def test_empty_regions(method):
    for regions in ([], [np.zeros((0, 2), np.float32)] * 3):
        img = aggregate_regions(regions, C, method)
        if method == "r_vlad":
            assert len(img) == 5 and not img.vectors.any()
        else:
            assert len(img) == 0


@pytest.mark.parametrize(
    "method, single",
    [("r_vlad", "vlad"), ("naive_r_asmk", "asmk"), ("r_asmk", "asmk"), ("r_asmk_star", "asmk_star")],
)
def test_one_region_equals_plain_kernel_and_empty_region_changes_nothing(method, single):
    plain = aggregate(X, C, single, num_assignments=2)
    for regions in ([X], [X, np.zeros((0, 2), np.float32)]):
        img = aggregate_regions(regions, C, method, num_assignments=2)
        np.testing.assert_array_equal(img.words, plain.words)
        np.testing.assert_allclose(img.vectors, plain.vectors, atol=1e-6)


# ---------------------------------------------------------------- inputs, assignments, errors


def test_precomputed_assignments_and_codebook_object():
    book = Codebook(C)
    words, _ = quantize(X, book, num_assignments=2)
    a = aggregate(X, book, "asmk", assignments=words)
    b = aggregate(X, C, "asmk", num_assignments=2)
    np.testing.assert_array_equal(a.words, b.words)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-7)
    region_words = [quantize(r, book, num_assignments=2)[0] for r in REGIONS]
    r1 = aggregate_regions(REGIONS, book, "r_asmk", assignments=region_words)
    r2 = aggregate_regions(REGIONS, C, "r_asmk", num_assignments=2)
    np.testing.assert_allclose(r1.vectors, r2.vectors, atol=1e-7)


def test_input_errors():
    with pytest.raises(ValueError, match="method"):
        aggregate(X, C, "r_asmk")
    with pytest.raises(ValueError, match="method"):
        aggregate_regions([X], C, "asmk")
    with pytest.raises(ValueError, match=r"descriptors must have shape \(N, 2\)"):
        aggregate(np.ones((3, 4), np.float32), C, "asmk")
    with pytest.raises(ValueError, match="NaN"):
        aggregate(np.array([[np.nan, 0]], np.float32), C, "asmk")
    with pytest.raises(ValueError, match=r"region_descriptors\[1\]"):
        aggregate_regions([X, np.ones((2, 3))], C, "r_asmk")
    with pytest.raises(ValueError, match="sequence"):
        aggregate_regions(X, C, "r_asmk")
    with pytest.raises(ValueError, match="outside"):
        aggregate(X, C, "asmk", assignments=np.full((6, 1), 5))
    with pytest.raises(ValueError, match="shape"):
        aggregate(X, C, "asmk", assignments=np.zeros((5, 1), np.int64))
    with pytest.raises(ValueError, match="same number of columns"):
        mixed = [np.zeros((6, 1), int), np.zeros((6, 2), int)]
        aggregate_regions([X, X], C, "r_asmk", assignments=mixed)
    with pytest.raises(ValueError, match="num_assignments"):
        aggregate(X, C, "asmk", num_assignments=6)


# ---------------------------------------------------------------- similarity, hand-checked


A = AggregatedImage(np.array([1, 2]), np.array([[0.6, 0.8], [0.0, 1.0]], np.float32), 2)
B = AggregatedImage(np.array([2, 3]), np.array([[0.6, 0.8], [1.0, 0.0]], np.float32), 2)


def test_selectivity_hand():
    u = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(selectivity(u, alpha=3, tau=0), [0, 0, 0, 0.125, 1])
    np.testing.assert_allclose(selectivity(u, alpha=3, tau=-0.6), [0, -0.125, 0, 0.125, 1])
    np.testing.assert_allclose(selectivity(u, alpha=1, tau=0.6), [0, 0, 0, 0, 1])


def test_asmk_similarity_hand():
    # shared word 2: u = 0.8, sigma = 0.512; |W_a| = |W_b| = 2
    assert similarity(A, B) == pytest.approx(0.512 / 2)
    assert similarity(A, B, normalize="query") == pytest.approx(0.512 / math.sqrt(2))
    assert similarity(A, B, normalize="none") == pytest.approx(0.512)
    assert similarity(A, B, alpha=1.0) == pytest.approx(0.8 / 2)
    assert similarity(A, B, tau=0.9) == 0.0
    assert similarity(A, A) == pytest.approx(1.0)
    assert self_similarity(A) == pytest.approx(2.0)
    assert self_similarity(A, tau=1.5) == 0.0
    ia, ib = shared_words(A, B)
    np.testing.assert_array_equal(ia, [1])
    np.testing.assert_array_equal(ib, [0])


def test_normalization_factors_hand():
    np.testing.assert_allclose(normalization_factors(4, [1, 9, 0]), [0.5, 1 / 6, 0.0])
    np.testing.assert_allclose(normalization_factors(4, [1, 9, 0], normalize="query"), [0.5] * 3)
    np.testing.assert_allclose(normalization_factors(0, [1, 9], normalize="query"), [0.0, 0.0])
    np.testing.assert_allclose(normalization_factors(4, [1, 9], normalize="none"), [1.0, 1.0])
    with pytest.raises(ValueError, match="normalize"):
        normalization_factors(4, [1], normalize="db")


def test_negative_word_similarity_and_tau():
    b = AggregatedImage(np.array([2]), np.array([[0.0, -1.0]], np.float32), 2)
    assert similarity(A, b, normalize="none") == 0.0
    assert similarity(A, b, tau=-2.0, normalize="none") == pytest.approx(-1.0)


def test_binary_similarity_hand():
    a = AggregatedImage(np.array([7]), np.array([[0xFF, 0x00]], np.uint8), 16, binary=True)
    b = AggregatedImage(np.array([7]), np.array([[0xFF, 0x0F]], np.uint8), 16, binary=True)
    # Hamming 4 of 16 bits: u = 1 - 8/16 = 0.5, sigma = 0.125
    np.testing.assert_allclose(word_similarities(a.vectors, b.vectors, dim=16, binary=True), [0.5])
    assert similarity(a, b, method="asmk_star") == pytest.approx(0.125)
    star = aggregate(X, C, "asmk_star")  # [[192], [64]] differ in 1 bit of 2: u = 0
    u = word_similarities(star.vectors[:1], star.vectors[1:], dim=2, binary=True)
    np.testing.assert_allclose(u, [0.0])


def test_vlad_similarity_is_dot_product():
    a, b = aggregate(X, C, "vlad"), aggregate(X[:2], C, "vlad")
    expected = float(a.vectors.astype(np.float64).ravel() @ b.vectors.astype(np.float64).ravel())
    assert similarity(a, b, method="vlad") == pytest.approx(expected)
    assert similarity(a, a, method="vlad") == pytest.approx(1.0)
    assert similarity(a, aggregate(X[:0], C, "vlad"), method="vlad") == 0.0


def test_similarity_with_empty_image_is_zero():
    empty = AggregatedImage.empty(2)
    for normalize in ("both", "query", "none"):
        assert similarity(A, empty, normalize=normalize) == 0.0
        assert similarity(empty, A, normalize=normalize) == 0.0
    np.testing.assert_allclose(similarity_matrix([empty, A], [A, empty]), [[0, 0], [1, 0]], atol=1e-6)


def test_similarity_errors():
    star = aggregate(X, C, "asmk_star")
    with pytest.raises(ValueError, match="not comparable"):
        similarity(A, star)
    with pytest.raises(ValueError, match="not comparable"):
        similarity(A, AggregatedImage.empty(3))
    with pytest.raises(ValueError, match="method"):
        similarity(A, B, method="bow")
    with pytest.raises(ValueError, match="normalize"):
        similarity(A, B, normalize="database")
    with pytest.raises(ValueError, match="float vectors"):
        similarity(star, star, method="vlad")
    with pytest.raises(ValueError, match="rows"):
        word_similarities(A.vectors, B.vectors[:1], dim=2)


# ---------------------------------------------------------------- brute-force re-derivations


def brute_assign(x, centroids, k):
    words = []
    for row in x.astype(np.float64):
        d = [float(np.sum((row - c) ** 2)) for c in centroids.astype(np.float64)]
        words.append(sorted(range(len(d)), key=d.__getitem__)[:k])
    return words


def brute_residual_sums(x, centroids, k):
    sums = {}
    for row, words in zip(x.astype(np.float64), brute_assign(x, centroids, k)):
        for w in words:
            sums[w] = sums.get(w, 0.0) + (row - centroids[w].astype(np.float64))
    return sums


def brute_finish(sums, num_words, dim, method):
    """Dense-L2 (VLAD kinds) or per-word L2 with vanished words dropped (ASMK kinds)."""
    if method in ("vlad", "r_vlad"):
        dense = np.zeros((num_words, dim))
        for w, v in sums.items():
            dense[w] = v
        return list(range(num_words)), dense / max(np.linalg.norm(dense), 1e-6)
    words, vectors = [], []
    for w in sorted(sums):
        n = np.linalg.norm(sums[w])
        if n > 1e-6:
            words.append(w)
            vectors.append(sums[w] / n)
    vectors = np.array(vectors).reshape(-1, dim)
    if method.endswith("_star"):
        vectors = np.array([[int(v > 0) for v in row] for row in vectors]).reshape(-1, dim)
    return words, vectors


def brute_regions(regions, centroids, method, k):
    pooled = {}
    for region in regions:
        sums = brute_residual_sums(region, centroids, k)
        region_norm = math.sqrt(sum(float(v @ v) for v in sums.values()))
        for w, v in sums.items():
            if method == "naive_r_asmk":
                n = np.linalg.norm(v)
                contribution = v / n if n > 1e-6 else 0.0 * v
            else:
                contribution = v / max(region_norm, 1e-6)
            pooled[w] = pooled.get(w, 0.0) + contribution
    pooled = {w: v / len(regions) for w, v in pooled.items()}
    return brute_finish(pooled, len(centroids), centroids.shape[1], method)


def check_against(img, words, vectors, method):
    np.testing.assert_array_equal(img.words, words)
    if method.endswith("_star"):
        np.testing.assert_array_equal(np.unpackbits(img.vectors, axis=1)[:, : img.dim], vectors)
    else:
        np.testing.assert_allclose(img.vectors, vectors, atol=2e-6)


def random_problem(seed, n, num_words, dim):
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(num_words, dim)).astype(np.float32)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return rng, centroids, x


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 25),
    num_words=st.integers(2, 9),
    dim=st.integers(1, 10),
    k=st.integers(1, 3),
    method=st.sampled_from(["vlad", "asmk", "asmk_star"]),
)
def test_aggregate_matches_brute_force(seed, n, num_words, dim, k, method):
    _, centroids, x = random_problem(seed, n, num_words, dim)
    k = min(k, num_words)
    words, vectors = brute_finish(brute_residual_sums(x, centroids, k), num_words, dim, method)
    check_against(aggregate(x, centroids, method, num_assignments=k), words, vectors, method)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=4),
    num_words=st.integers(2, 9),
    dim=st.integers(1, 10),
    k=st.integers(1, 3),
    method=st.sampled_from(["r_vlad", "naive_r_asmk", "r_asmk", "r_asmk_star"]),
)
def test_aggregate_regions_matches_brute_force(seed, sizes, num_words, dim, k, method):
    rng, centroids, x = random_problem(seed, sum(sizes), num_words, dim)
    k = min(k, num_words)
    regions = np.split(x, np.cumsum(sizes)[:-1])
    rng.shuffle(regions)
    words, vectors = brute_regions(regions, centroids, method, k)
    img = aggregate_regions(regions, centroids, method, num_assignments=k)
    check_against(img, words, vectors, method)


def brute_similarity(a, b, method, alpha, tau, normalize):
    """The reference's two-pointer merge over sorted words, one word at a time."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        if a.words[i] == b.words[j]:
            if a.binary:
                h = sum(bin(int(p) ^ int(q)).count("1") for p, q in zip(a.vectors[i], b.vectors[j]))
                u = 1.0 - 2.0 * h / a.dim
            else:
                u = sum(float(p) * float(q) for p, q in zip(a.vectors[i], b.vectors[j]))
            if method in ("vlad", "r_vlad"):
                total += u
            elif u > tau:
                total += math.copysign(abs(u) ** alpha, u)
            i, j = i + 1, j + 1
        elif a.words[i] < b.words[j]:
            i += 1
        else:
            j += 1
    if method in ("vlad", "r_vlad") or normalize == "none" or not len(a) or not len(b):
        return total
    return total / math.sqrt(len(a) * (len(b) if normalize == "both" else 1))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_queries=st.integers(1, 3),
    num_db=st.integers(1, 5),
    method=st.sampled_from(["vlad", "asmk", "asmk_star", "r_asmk", "r_asmk_star"]),
    alpha=st.sampled_from([1.0, 3.0]),
    tau=st.sampled_from([-0.5, 0.0, 0.3]),
    normalize=st.sampled_from(["both", "query", "none"]),
)
def test_similarity_matches_brute_force(seed, num_queries, num_db, method, alpha, tau, normalize):
    rng = np.random.default_rng(seed)
    dim, num_words = 11, 12
    centroids = rng.normal(size=(num_words, dim)).astype(np.float32)

    def image():
        x = rng.normal(size=(int(rng.integers(0, 15)), dim)).astype(np.float32)
        if method.startswith("r_"):
            return aggregate_regions([x, x[: len(x) // 2]], centroids, method, num_assignments=2)
        return aggregate(x, centroids, method, num_assignments=2)

    queries = [image() for _ in range(num_queries)]
    database = [image() for _ in range(num_db)]
    kw = dict(method=method, alpha=alpha, tau=tau, normalize=normalize)
    expected = np.array(
        [[brute_similarity(q, d, method, alpha, tau, normalize) for d in database] for q in queries]
    )
    pairwise = np.array([[similarity(q, d, **kw) for d in database] for q in queries])
    np.testing.assert_allclose(pairwise, expected, rtol=1e-9, atol=1e-12)
    matrix = similarity_matrix(queries, database, **kw)
    assert matrix.dtype == np.float32 and matrix.shape == (num_queries, num_db)
    np.testing.assert_allclose(matrix, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("value", [True, False, 1])
def test_normalize_has_one_spelling(value):
    """No booleans: ``False`` once meant "none" here and "query" in the config."""
    with pytest.raises(ValueError, match="'both', 'query' or 'none'"):
        normalization_factors(4, [1], normalize=value)
