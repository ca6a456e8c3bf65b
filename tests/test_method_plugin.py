"""A retrieval method and an index kind are one file plus a preset: this module defines
bag-of-words with tf-idf weighting (Sivic & Zisserman, ICCV 2003) over the ASMK codebook
and the index kind holding its word counts, registers both, and runs ``build_index`` and
``query`` on them through the command lines, loaded with ``D2R_PLUGINS=test_method_plugin``,
without any other d2r file knowing about them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2r.index.global_index import GlobalIndex
from d2r.index.registry import register_index
from d2r.methods import register_method
from d2r.methods.local import LocalMethod
from d2r.types import SearchResult

HERE = Path(__file__).resolve().parent


@register_index
class WordCounts(GlobalIndex):
    """Flat (N, K) rows of word counts, stored and opened under its own kind."""

    kind = "word_counts"


@register_method
class BowTfidf(LocalMethod):
    """Bag of words: an image is its (K,) word counts; scored by the cosine of tf-idf vectors.

    The index holds raw counts (a flat ``global`` index of K columns); idf
    ``log(N / df_w)`` comes from the indexed images at search time.
    """

    name = "bow_tfidf"

    def new_index(self, codebook, dim):
        return WordCounts(codebook.num_words)

    def histogram(self, features, codebook, *, query: bool) -> np.ndarray:
        """(K,) float32 word counts of ``features``."""
        words = self.assign([features], codebook, query=query)[0].reshape(-1)
        return np.bincount(words, minlength=codebook.num_words).astype(np.float32)

    def encode_database(self, regions, codebook):
        return self.histogram(regions[0], codebook, query=False)

    def add(self, index, entries, names):
        index.add(np.stack(entries), names=list(names))

    def search(self, index, queries, codebook, *, k):
        counts = np.asarray(index.vectors, np.float64)
        idf = np.log(len(counts) / np.maximum((counts > 0).sum(axis=0), 1))
        db = _unit_rows(counts * idf)
        q = _unit_rows(np.stack([self.histogram(f, codebook, query=True) for f in queries]) * idf)
        scores = q @ db.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ids = np.full((len(queries), k), -1, np.int64)
        top = np.full((len(queries), k), -np.inf, np.float32)
        ids[:, :order.shape[1]] = order
        top[:, :order.shape[1]] = np.take_along_axis(scores, order, axis=1)
        return SearchResult(top, ids, index.names)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _run(module: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "D2R_PLUGINS": "test_method_plugin",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"{module} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def bow_index(tiny_dataset, tmp_path_factory):
    """An index of the tiny benchmark built with a user preset selecting ``bow_tfidf``."""
    work = tmp_path_factory.mktemp("bow")
    preset = work / "rootsift-bow-tfidf.yaml"
    preset.write_text("extends: rootsift-asmk-star\naggregation:\n  method: bow_tfidf\n"
                      "codebook:\n  num_words: 64\nfeatures:\n  rootsift:\n    max_features: 300\n")
    proc = _run("d2r.cli.build_index", "--dataset-dir", tiny_dataset, "--out", work / "index",
                "--config-file", preset)
    assert "bow_tfidf" in proc.stdout
    return work / "index"


def test_plugin_method_builds_and_answers_through_the_clis(bow_index, tiny_dataset, tmp_path):
    manifest = json.loads((bow_index / "index.json").read_text())
    assert manifest["kind"] == "word_counts"
    assert manifest["config"]["aggregation"]["method"] == "bow_tfidf"
    search = json.loads((bow_index / "search" / "manifest.json").read_text())
    assert search["kind"] == "word_counts"
    names = json.loads((bow_index / "search" / "names.json").read_text())
    image = tiny_dataset / "jpg" / f"{names[3]}.jpg"
    _run("d2r.cli.query", "--index", bow_index, "--image", image, "--json", tmp_path / "r.json")
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rows[0]["name"] == names[3] and rows[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert all(a["score"] >= b["score"] for a, b in zip(rows, rows[1:]))
    _run("d2r.cli.query", "--index", bow_index, "--dataset-dir", tiny_dataset, "--out",
         tmp_path / "results", "--rerank", "5")
    metrics = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert 0 < metrics["medium"]["mAP"] <= 100


def test_plugin_scores_are_the_tfidf_cosine(bow_index, tiny_dataset):
    """Brute force on the stored counts: cosine of the tf-idf vectors, by hand."""
    from d2r.pipeline.searcher import Searcher

    with Searcher(bow_index) as searcher:
        image = next((tiny_dataset / "jpg").glob("*.jpg"))
        query = searcher.image_features(image)
        result = searcher.search([query], k=len(searcher.names))
        counts = np.asarray(searcher.index.vectors, np.float64)
        q = searcher.method.histogram(query, searcher.codebook, query=True)
    idf = np.log(len(counts) / np.maximum((counts > 0).sum(0), 1))
    want = [float(np.dot(q * idf, c * idf) / np.linalg.norm(q * idf) / np.linalg.norm(c * idf))
            for c in counts]
    np.testing.assert_allclose(result.scores[0], np.array(want)[result.ids[0]], atol=1e-6)
    assert np.all(np.diff(result.scores[0]) <= 0)


def test_without_the_plugin_the_method_is_refused_by_name(bow_index, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "D2R_PLUGINS"}
    proc = subprocess.run([sys.executable, "-m", "d2r.query", "--index", str(bow_index),
                           "--image", str(tmp_path / "x.jpg")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "unknown retrieval method 'bow_tfidf'" in proc.stderr
