"""The compiled (numba) scoring of inverted files against the numpy reference: bit-identical
scores for binary codes and within 1e-6 for float vectors on random indexes, one to three
threads, a compile cache that a fresh process reuses, and a clear message without numba."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from d2r.index import compiled
from d2r.index.inverted import InvertedIndex
from tests._index_items import random_items

needs_numba = pytest.mark.skipif(not compiled.AVAILABLE, reason=compiled.unavailable_reason())


def _index(rng, n, *, num_words=40, dim=128, max_words=12):
    index = InvertedIndex(num_words=num_words, dim=dim, binary=True)
    index.add(random_items(rng, n, num_words=num_words, dim=dim, binary=True,
                           max_words=max_words))
    return index


def _scores(index, query, kernel, **options):
    index.backend = kernel
    try:
        return index.score_all(query, **options)
    finally:
        index.backend = "auto"


@needs_numba
@pytest.mark.parametrize("n,dim,seed", [(0, 128, 0), (1, 128, 1), (50, 128, 2), (300, 256, 3),
                                        (120, 64, 4)])
@pytest.mark.parametrize("normalize", ["both", "query", "none"])
def test_bit_identical_to_numpy_on_random_indexes(n, dim, seed, normalize):
    rng = np.random.default_rng(seed)
    index = _index(rng, n, dim=dim)
    index.backend = "compiled"
    assert index._compiled()  # the compiled path really runs (ascending posting ids)
    for query in random_items(rng, 5, num_words=40, dim=dim, binary=True, max_words=20):
        for alpha, tau in ((3.0, 0.0), (1.0, -0.2), (5.0, 0.3)):
            options = dict(alpha=alpha, tau=tau, normalize=normalize)
            expected = _scores(index, query, "numpy", **options)
            got = _scores(index, query, "compiled", **options)
            np.testing.assert_array_equal(got, expected)


@needs_numba
@pytest.mark.parametrize("n,dim,seed", [(0, 32, 0), (1, 32, 1), (80, 32, 2), (200, 128, 3)])
@pytest.mark.parametrize("normalize", ["both", "none"])
def test_float_vectors_within_1e6_of_numpy(n, dim, seed, normalize):
    """ASMK (float residuals): the dot products round differently, nothing else."""
    rng = np.random.default_rng(seed)
    index = InvertedIndex(num_words=30, dim=dim, binary=False)
    index.add(random_items(rng, n, num_words=30, dim=dim, binary=False, max_words=10))
    index.backend = "compiled"
    assert index._compiled()
    for query in random_items(rng, 4, num_words=30, dim=dim, binary=False, max_words=15):
        for alpha, tau in ((3.0, 0.0), (1.0, -0.2), (2.5, 0.1)):
            options = dict(alpha=alpha, tau=tau, normalize=normalize)
            expected = _scores(index, query, "numpy", **options)
            got = _scores(index, query, "compiled", **options)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
            assert np.array_equal(got == 0, expected == 0)


@needs_numba
def test_float16_vectors_stay_on_numpy():
    rng = np.random.default_rng(5)
    index = InvertedIndex(num_words=10, dim=16, binary=False, vector_dtype="float16")
    index.add(random_items(rng, 5, num_words=10, dim=16, binary=False, max_words=4))
    index.backend = "compiled"
    assert not index._compiled()


@needs_numba
def test_threads_and_ties_do_not_change_the_answer(monkeypatch):
    rng = np.random.default_rng(9)
    items = random_items(rng, 40, num_words=8, dim=128, binary=True, max_words=4)
    index = InvertedIndex(num_words=8, dim=128, binary=True)
    index.add(items + items)  # every score twice: ties, broken towards the lower id
    query = items[3]
    answers = []
    for count in ("1", "2", "3"):
        monkeypatch.setenv("D2R_THREADS", count)
        index.backend = "compiled"
        answers.append(index.search([query], k=80))
    index.backend = "numpy"
    reference = index.search([query], k=80)
    for answer in answers:
        np.testing.assert_array_equal(answer.ids, reference.ids)
        np.testing.assert_array_equal(answer.scores, reference.scores)
    assert reference.ids[0, 0] in (3, 43)


@needs_numba
def test_small_indexes_and_unsorted_posting_ids_use_numpy():
    rng = np.random.default_rng(4)
    index = _index(rng, 30)
    assert not index._compiled()  # auto: too small to pay for loading the compiled code
    index.backend = "compiled"
    assert index._compiled()
    index.finalize()
    offsets, ids, payload = index._csr
    word = int(np.argmax(np.diff(offsets)))
    lo, hi = int(offsets[word]), int(offsets[word + 1])
    ids = ids.copy()
    ids[lo:hi] = ids[lo:hi][::-1]
    index._csr = type(index._csr)(offsets, ids, payload)
    index._cache.clear()
    assert not index._compiled()


@needs_numba
def test_a_fresh_process_reuses_the_compiled_kernel(tmp_path):
    script = textwrap.dedent("""
        import numpy as np
        from d2r.index import compiled
        from d2r.index.inverted import InvertedIndex
        from tests._index_items import random_items
        rng = np.random.default_rng(0)
        index = InvertedIndex(num_words=20, dim=128, binary=True)
        index.add(random_items(rng, 10, num_words=20, dim=128, binary=True))
        index.backend = "compiled"
        index.score_all(random_items(rng, 1, num_words=20, dim=128, binary=True)[0])
        from d2r.index._numba_kernels import inverted_binary_scores
        stats = inverted_binary_scores.stats
        print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=env, timeout=300, cwd=os.getcwd()) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert runs[0].stdout.split() == ["0", "1"]  # compiled and written to the cache
    assert runs[1].stdout.split() == ["1", "0"]  # loaded from it
    assert any((tmp_path / "cache").rglob("*.nbi"))


def test_without_numba_a_clear_message_and_numpy_still_serves(tmp_path):
    site = tmp_path / "no-numba"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['numba'] = None\n")
    script = textwrap.dedent("""
        import numpy as np
        from d2r.index import compiled
        from d2r.index.inverted import InvertedIndex
        from tests._index_items import random_items
        assert not compiled.AVAILABLE
        rng = np.random.default_rng(0)
        index = InvertedIndex(num_words=20, dim=128, binary=True)
        index.add(random_items(rng, 10, num_words=20, dim=128, binary=True))
        query = random_items(rng, 1, num_words=20, dim=128, binary=True)[0]
        index.score_all(query)  # auto: numpy
        index.backend = "compiled"
        try:
            index.score_all(query)
        except RuntimeError as exc:
            print(exc)
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.getcwd(),
                                                      env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "numba is not installed" in run.stdout and "pip install 'd2r[fast]'" in run.stdout


@needs_numba
@pytest.mark.parametrize("n,k,seed", [(1, 5, 0), (30, 10, 1), (30, 30, 2), (30, 45, 3),
                                      (400, 100, 4)])
@pytest.mark.parametrize("normalize", ["both", "query", "none"])
def test_the_compiled_top_k_equals_the_numpy_one(n, k, seed, normalize):
    """search and ranking (ids, float32 / float64 scores) equal, ties and padding included."""
    rng = np.random.default_rng(seed)
    items = random_items(rng, n, num_words=12, dim=128, binary=True, max_words=3)
    index = InvertedIndex(num_words=12, dim=128, binary=True)
    index.add(items + items[: n // 2])  # duplicates: equal scores
    queries = random_items(rng, 4, num_words=12, dim=128, binary=True, max_words=6)
    answers = {}
    for kernel in ("numpy", "compiled"):
        index.backend = kernel
        answers[kernel] = (index.search(queries, k=k, normalize=normalize),
                           index.ranking(queries, k=k, normalize=normalize))
    (search_a, ranking_a), (search_b, ranking_b) = answers["numpy"], answers["compiled"]
    np.testing.assert_array_equal(search_b.ids, search_a.ids)
    np.testing.assert_array_equal(search_b.scores, search_a.scores)
    np.testing.assert_array_equal(ranking_b[0], ranking_a[0])
    np.testing.assert_array_equal(ranking_b[1], ranking_a[1])


@needs_numba
@pytest.mark.parametrize("binary", [True, False])
def test_tombstoned_segments_rank_alike_with_both_kernels(binary):
    """A living index (segments, deleted images dropped) gives the numpy answer."""
    from d2r.index.segmented import SegmentedIndex

    rng = np.random.default_rng(11)
    segments = []
    for s in range(3):
        segment = InvertedIndex(num_words=16, dim=64, binary=binary)
        segment.add(random_items(rng, 25, num_words=16, dim=64, binary=binary, max_words=6),
                    names=[f"s{s}-{i}" for i in range(25)])
        segments.append(segment)
    deleted = [{"s0-1", "s0-7"}, set(), {f"s2-{i}" for i in range(0, 25, 3)}]
    living = SegmentedIndex(segments, deleted)
    queries = random_items(rng, 4, num_words=16, dim=64, binary=binary, max_words=8)
    answers = {}
    for kernel in ("numpy", "compiled"):
        for segment in segments:
            segment.backend = kernel
        answers[kernel] = living.search(queries, k=40)
    got, expected = answers["compiled"], answers["numpy"]
    gone = {living.names[i] for i in got.ids.ravel() if i >= 0} & set().union(*deleted)
    assert not gone
    if binary:
        np.testing.assert_array_equal(got.ids, expected.ids)
        np.testing.assert_array_equal(got.scores, expected.scores)
    else:
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-6)
        for row in range(len(queries)):  # ids may swap only between scores within 1e-6
            scores = dict(zip(expected.ids[row].tolist(), expected.scores[row].tolist()))
            for i, score in zip(got.ids[row].tolist(), got.scores[row].tolist()):
                if i in scores:
                    assert abs(scores[i] - score) <= 1e-6


def test_the_backend_environment_variable_and_its_former_name(monkeypatch):
    index = _index(np.random.default_rng(7), 5)
    monkeypatch.setenv("D2R_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'gpu' \(D2R_BACKEND\)"):
        index._compiled()
    monkeypatch.delenv("D2R_BACKEND")
    monkeypatch.setenv("D2R_KERNEL", "numpy")  # the former name is still read
    assert not index._compiled()
    monkeypatch.setenv("D2R_KERNEL", "gpu")
    with pytest.raises(ValueError, match="got 'gpu'"):
        index._compiled()
