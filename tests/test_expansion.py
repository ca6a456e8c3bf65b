"""Verified query expansion for local features: the expanded query on hand-checkable
inputs and against a brute-force vote, and its place in re-ranking."""

from __future__ import annotations

import numpy as np
import pytest

from d2r.config import ConfigError, load_config
from d2r.encoding.expansion import expand_aggregated
from d2r.pipeline.build import build_index
from d2r.pipeline.searcher import Searcher
from d2r.pipeline.sources import ImageSource
from d2r.types import AggregatedImage


def _binary(words, signs):
    """A binary image from +-1 rows."""
    bits = np.packbits(np.asarray(signs) > 0, axis=1)
    return AggregatedImage(np.asarray(words, np.int32), bits, len(signs[0]), binary=True)


def _signs(image):
    return np.unpackbits(image.vectors, axis=1)[:, :image.dim].astype(int) * 2 - 1


def test_asmk_star_votes_per_word_and_bit_with_the_query_breaking_ties():
    query = _binary([1, 3], [[1, 1, -1, -1], [1, -1, 1, -1]])
    first = _binary([3, 5], [[-1, -1, 1, 1], [1, 1, 1, -1]])
    second = _binary([3], [[-1, 1, 1, 1]])
    out = expand_aggregated(query, [first, second], method="asmk_star")
    assert out.binary and out.words.tolist() == [1, 3, 5]
    assert _signs(out).tolist() == [
        [1, 1, -1, -1],    # word 1: the query's alone
        [-1, -1, 1, 1],    # word 3: 3 votes per bit: (1,-1,-1)=-1, (-1,-1,1)=-1, (1,1,1)=1, (-1,1,1)=1
        [1, 1, 1, -1],     # word 5: the first verified image's alone
    ]
    tie = expand_aggregated(query, [first], method="asmk_star")  # word 3: 1 against 1
    assert _signs(tie)[1].tolist() == [1, -1, 1, -1]  # the query's bits
    weighted = expand_aggregated(query, [first, second], method="asmk_star", weights=[3, 0])
    assert _signs(weighted)[1].tolist() == [-1, -1, 1, 1]  # 1 - 3 = -2: the first image's


def test_asmk_sums_unit_vectors_per_word_and_renormalizes():
    query = AggregatedImage(np.array([2], np.int32), np.array([[1, 0]], np.float32), 2)
    other = AggregatedImage(np.array([2, 4], np.int32), np.array([[0, 1], [0.6, 0.8]],
                                                                np.float32), 2)
    out = expand_aggregated(query, [other], method="asmk")
    assert out.words.tolist() == [2, 4]
    np.testing.assert_allclose(out.vectors, [[0.5 ** 0.5, 0.5 ** 0.5], [0.6, 0.8]], atol=1e-7)
    opposite = AggregatedImage(np.array([2], np.int32), np.array([[-1, 0]], np.float32), 2)
    assert len(expand_aggregated(query, [opposite], method="asmk")) == 0  # vanished word


def test_vlad_is_the_weighted_mean_renormalized():
    words = np.arange(2, dtype=np.int32)
    query = AggregatedImage(words, np.array([[1, 0], [0, 0]], np.float32), 2)
    other = AggregatedImage(words, np.array([[0, 0], [0, 1]], np.float32), 2)
    out = expand_aggregated(query, [other], method="vlad", weights=[3])
    np.testing.assert_allclose(out.vectors, np.array([[1, 0], [0, 3]]) / 10 ** 0.5, atol=1e-7)


def test_no_verified_image_leaves_the_query_and_bad_input_is_refused():
    query = _binary([1], [[1, -1]])
    assert expand_aggregated(query, [], method="asmk_star") is query
    with pytest.raises(ValueError, match="weights"):
        expand_aggregated(query, [query], method="asmk_star", weights=[-1])
    with pytest.raises(ValueError, match="asmk aggregation"):
        expand_aggregated(query, [query], method="asmk")


def test_binary_vote_equals_a_brute_force_count():
    rng = np.random.default_rng(3)
    dim = 16
    images = []
    for _ in range(5):
        words = np.sort(rng.choice(12, size=rng.integers(1, 8), replace=False))
        images.append(_binary(words, rng.choice([-1, 1], size=(len(words), dim))))
    weights = rng.uniform(0.1, 2, size=4)
    out = expand_aggregated(images[0], images[1:], method="asmk_star", weights=weights)
    all_words = sorted({int(w) for image in images for w in image.words})
    assert out.words.tolist() == all_words
    w = np.concatenate([[1.0], weights])
    for row, word in zip(_signs(out), all_words):
        total = np.zeros(dim)
        first = None
        for wi, image in zip(w, images):
            hit = np.flatnonzero(image.words == word)
            if hit.size:
                total += wi * _signs(image)[hit[0]]
                first = _signs(image)[hit[0]] if first is None else first
        expected = np.where(np.isclose(total, 0), first, np.sign(total))
        assert row.tolist() == expected.astype(int).tolist()


@pytest.fixture(scope="module")
def photos_index(tiny_dataset, tmp_path_factory):
    photos = tmp_path_factory.mktemp("qe") / "photos"
    photos.mkdir()
    for image in sorted((tiny_dataset / "jpg").glob("synth_db_*.jpg")):
        (photos / image.name).write_bytes(image.read_bytes())
    config = load_config("rootsift-asmk-star", overrides=[
        "features.rootsift.max_features=200", "codebook.num_words=32"])
    index = build_index(config, ImageSource.from_directory(photos), photos.parent / "index",
                        show_progress=False)
    return index, sorted((tiny_dataset / "jpg").glob("synth_q_*.jpg"))


def _ranking(index, queries, *overrides, rerank=16):
    with Searcher(index, overrides=[f"verification.rerank={rerank}",
                                    "verification.min_inliers=6", *overrides]) as searcher:
        q = [searcher.query(path) for path in queries]
        result, details = searcher.rerank(q, searcher.search([x.features for x in q], k=16))
        return result.ids, details


@pytest.mark.parametrize("variant", [[], ["search.qe_alpha=3"], ["search.qe_features=inliers"],
                                     ["search.qe_features=all"]])
@pytest.mark.parametrize("decision", ["nfa", "inliers"])
def test_expansion_keeps_the_verified_head_and_reorders_the_rest(photos_index, variant,
                                                                 decision):
    """Under ``nfa`` the whole checked head (8) keeps its order, under ``inliers`` only the
    verified images; the expanded query reorders what follows."""
    index, queries = photos_index
    rerank = 8 if decision == "nfa" else 16
    plain, details = _ranking(index, queries, f"verification.decision={decision}",
                              rerank=rerank)
    expanded, after = _ranking(index, queries, f"verification.decision={decision}",
                               "search.query_expansion=3", *variant, rerank=rerank)
    assert expanded.shape == plain.shape
    changed = 0
    for q, verified in enumerate(details):
        head = int(np.sum(verified.verified))
        if decision == "nfa":
            np.testing.assert_array_equal(expanded[q, :rerank], plain[q, :rerank])
        np.testing.assert_array_equal(expanded[q, :head], plain[q, :head])  # never removed
        assert sorted(expanded[q]) == sorted(plain[q])  # the same 16 images, reordered
        assert after[q].inliers[:head].tolist() == verified.inliers[:head].tolist()
        assert after[q].verified[:head].all() and after[q].verified.sum() == head
        checked = after[q].inliers >= 0
        np.testing.assert_array_equal(np.isnan(after[q].verification_scores), ~checked)
        changed += not np.array_equal(expanded[q], plain[q])
    assert any(np.sum(d.verified) for d in details)
    assert changed  # the expansion did reorder something


def test_a_query_without_verified_images_is_unchanged(photos_index):
    index, queries = photos_index
    plain, _ = _ranking(index, queries, "verification.min_inliers=100000")
    expanded, _ = _ranking(index, queries, "verification.min_inliers=100000",
                           "search.query_expansion=3")
    np.testing.assert_array_equal(expanded, plain)


def test_expansion_uses_only_what_the_decision_verified(photos_index):
    """Under ``nfa`` with an unreachable score, pairs with many inliers are not verified,
    so nothing expands the query."""
    index, queries = photos_index
    refusing = ("verification.decision=nfa", "verification.min_score=100000")
    plain, details = _ranking(index, queries, *refusing)
    expanded, after = _ranking(index, queries, *refusing, "search.query_expansion=3")
    assert any(np.sum(d.inliers >= 6) for d in details)
    assert not any(d.verified.any() for d in after)
    np.testing.assert_array_equal(expanded, plain)


def test_expansion_needs_verification_and_aml_needs_cnn():
    from d2r.methods import validate

    validate(load_config("rootsift-asmk-star-qe"))
    with pytest.raises(ConfigError, match="needs verification.rerank > 0"):
        validate(load_config("rootsift-asmk-star-qe", overrides=["verification.rerank=0"]))
    with pytest.raises(ConfigError, match="aml_rerank"):
        validate(load_config("rootsift-asmk-star", overrides=["search.aml_rerank=2"]))


def test_d2r_query_says_how_the_expanded_list_was_ordered(photos_index):
    import subprocess
    import sys

    index, queries = photos_index
    proc = subprocess.run([sys.executable, "-m", "d2r", "query", "--index", str(index),
                           "--image", str(queries[0]), "--rerank", "16", "--set",
                           "search.query_expansion=3", "--set", "verification.min_inliers=6"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0]
    assert "come first" in header and header.endswith(
        "the others checked follow by inliers, then search order; the rest in the order of a "
        "search expanded with up to 3 verified images"), header
