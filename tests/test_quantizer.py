"""The index's quantizer: ``auto`` resolution, the HNSW graph stored in the index, reused by
queries and rebuilds, and refused when damaged, missing or another codebook's."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import faiss
import numpy as np
import pytest

from d2r.encoding.codebook import Codebook, hnsw_graph, quantize
from d2r.config import CodebookConfig, load_config
from d2r.pipeline.build import build_index
from d2r.pipeline.searcher import Searcher
from d2r.pipeline.update import add_images
from d2r.index.quantizer import QuantizerError, attach_graph, options, resolve
from d2r.pipeline.sources import ImageSource

APPROXIMATE = ["codebook.num_words=32", "codebook.quantization=approximate", "codebook.hnsw_m=4",
               "codebook.ef_construction=16", "codebook.ef_search=2"]


def test_auto_is_approximate_from_16384_words():
    config = CodebookConfig()
    assert config.quantization == "auto"
    assert config.quantizer_mode(16383) == "exact" and config.quantizer_mode(16384) == "approximate"
    assert CodebookConfig(num_words=65536).quantizer_mode() == "approximate"
    assert CodebookConfig(quantization="exact").quantizer_mode(65536) == "exact"
    assert options(CodebookConfig(ef_search=7), 65536) == {
        "mode": "approximate", "ef_search": 7, "hnsw_m": 32, "ef_construction": 200}
    built = resolve(load_config("rootsift-asmk-star"), 1024)
    assert built.codebook.quantization == "exact"
    assert load_config("delf-asmk-star").codebook.quantizer_mode() == "approximate"


@pytest.fixture(scope="module")
def approximate_index(tiny_dataset, tmp_path_factory):
    config = load_config("rootsift-asmk-star", overrides=APPROXIMATE)
    out = tmp_path_factory.mktemp("quantizer") / "index"
    return build_index(config, ImageSource.from_dataset(tiny_dataset), out, show_progress=False)


def _fresh_copy(index, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(index, copy, symlinks=True)
    return copy


def test_the_graph_is_recorded_and_queries_use_it(approximate_index):
    manifest = json.loads((approximate_index / "index.json").read_text())
    assert manifest["config"]["codebook"]["quantization"] == "approximate"
    record = manifest["codebook"]["quantizer"]
    assert record["kind"] == "hnsw" and (record["hnsw_m"], record["ef_search"]) == (4, 2)
    stored = (approximate_index / record["file"]).read_bytes()
    with Searcher(approximate_index) as searcher:
        graph = hnsw_graph(searcher.codebook, hnsw_m=4, ef_construction=16)
        assert faiss.serialize_index(graph).tobytes() == stored  # loaded, not built again
        # the words assigned now, with the loaded graph, are those the build indexed
        index = searcher.index
        for image in range(3):
            words = searcher.method.assign([searcher.database_features(image)],
                                           searcher.codebook, query=True)[0]
            indexed = [w for w in range(32) if image in index.posting_list(w)[0]]
            assert np.unique(words).tolist() == indexed


def test_approximate_words_differ_from_exact_ones_only_where_hnsw_misses(approximate_index):
    """ef_search=2 over 32 words is coarse on purpose: the recorded breadth is really used."""
    with Searcher(approximate_index) as searcher:
        features = [searcher.database_features(i) for i in range(4)]
        x = np.concatenate([f.descriptors for f in features])
        used = searcher.method.assign(features[:1], searcher.codebook, query=True)[0]
        approximate = quantize(x, searcher.codebook, mode="approximate", ef_search=2, hnsw_m=4,
                               ef_construction=16)[0]
        exact = quantize(x, searcher.codebook)[0]
    first = len(features[0])
    assert np.array_equal(used, approximate[:first])
    assert 0.5 < np.mean(approximate == exact) < 1.0


def test_added_images_keep_the_stored_graph(approximate_index, tiny_dataset, tmp_path):
    index = _fresh_copy(approximate_index, tmp_path)
    record = json.loads((index / "index.json").read_text())["codebook"]["quantizer"]
    extra = tmp_path / "extra"
    extra.mkdir()
    for image in sorted((tiny_dataset / "jpg").glob("synth_q_*"))[:2]:
        shutil.copy(image, extra / f"new-{image.name}")
    add_images(index, ImageSource.from_directory(extra), show_progress=False)
    manifest = json.loads((index / "index.json").read_text())
    assert manifest["codebook"]["quantizer"] == record
    with Searcher(index) as searcher:
        added = [i for i, name in enumerate(searcher.names) if name.startswith("new-")]
        assert len(added) == 2
        for image in added:  # encoded with the same graph as the query: found first
            result = searcher.search([searcher.database_features(image)], k=1)
            assert result.ids[0, 0] == image


def test_a_rebuild_keeps_the_graph(approximate_index, tiny_dataset, tmp_path):
    index = _fresh_copy(approximate_index, tmp_path)
    before = json.loads((index / "index.json").read_text())["codebook"]["quantizer"]
    graph = (index / before["file"]).read_bytes()
    config = load_config("rootsift-asmk-star", overrides=APPROXIMATE)
    build_index(config, ImageSource.from_dataset(tiny_dataset), index, show_progress=False)
    after = json.loads((index / "index.json").read_text())["codebook"]["quantizer"]
    assert after == before and (index / after["file"]).read_bytes() == graph


def test_a_rebuild_replaces_a_damaged_graph(approximate_index, tiny_dataset, tmp_path):
    index = _fresh_copy(approximate_index, tmp_path)
    record = json.loads((index / "index.json").read_text())["codebook"]["quantizer"]
    (index / record["file"]).write_bytes(b"not a graph")
    config = load_config("rootsift-asmk-star", overrides=APPROXIMATE)
    build_index(config, ImageSource.from_dataset(tiny_dataset), index, show_progress=False)
    with Searcher(index) as searcher:
        assert searcher.codebook.num_words == 32


@pytest.mark.parametrize("damage", ["flip", "missing"])
def test_a_damaged_or_missing_graph_is_refused_in_one_line(approximate_index, tmp_path, damage,
                                                            tiny_dataset):
    index = _fresh_copy(approximate_index, tmp_path)
    record = json.loads((index / "index.json").read_text())["codebook"]["quantizer"]
    graph = index / record["file"]
    if damage == "missing":
        graph.unlink()
    else:
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0x10
        graph.write_bytes(bytes(data))
    with pytest.raises(QuantizerError, match="rebuild the index"):
        Searcher(index)
    image = next((tiny_dataset / "jpg").iterdir())
    run = subprocess.run([sys.executable, "-m", "d2r", "query", "--index", str(index),
                          "--image", str(image)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and str(graph) in lines[0], run.stderr
    assert ("damaged" if damage == "flip" else "cannot be read") in lines[0]


def test_another_codebooks_graph_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    mine = Codebook(rng.standard_normal((20, 8)).astype(np.float32))
    other = Codebook(rng.standard_normal((20, 8)).astype(np.float32))
    data = faiss.serialize_index(hnsw_graph(other, hnsw_m=4, ef_construction=8)).tobytes()
    (tmp_path / "g.faiss").write_bytes(data)
    record = {"file": "g.faiss", "sha256": hashlib.sha256(data).hexdigest(), "hnsw_m": 4,
              "ef_construction": 8}
    with pytest.raises(QuantizerError, match="is not the one of index"):
        attach_graph(mine, record, tmp_path)
    attach_graph(other, record, tmp_path)  # its own codebook takes it
