"""Ray execution (d2r.distributed): identical builds, crash retries, resumption, sharded search.

Ray runs locally with 2 CPUs, one session for the module; the tiny synthetic
benchmark with RootSIFT (no TensorFlow model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2r.config import load_config
from d2r.distributed import options as ray_options
from d2r.distributed.shards import merge_topk, shard_bounds
from d2r.pipeline.sources import ImageSource
from d2r.types import AggregatedImage

from _index_items import random_items  # tests/ helper

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ no Ray needed


def test_import_without_ray():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import d2r.distributed as d\n"
            "from d2r.distributed import options, shard_bounds, merge_topk\n"
            "assert 'ray' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "try:\n    d.init_ray()\nexcept ImportError as e:\n    print('IMPORT-ERROR', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORT-ERROR" in proc.stdout and "pip install" in proc.stdout


def test_merge_topk_ties_go_to_lower_global_id():
    scores = [np.array([[0.9, 0.5, -np.inf]]), np.array([[0.9, 0.5, 0.1]])]
    ids = [np.array([[7, 2, -1]]), np.array([[3, 9, 11]])]
    s, i = merge_topk(scores, ids, 5)
    assert i.tolist() == [[3, 7, 2, 9, 11]]
    assert s.dtype == np.float32 and s[0].tolist() == pytest.approx([0.9, 0.9, 0.5, 0.5, 0.1])
    s, i = merge_topk([np.array([[0.2]])], [np.array([[4]])], 3)
    assert i.tolist() == [[4, -1, -1]] and np.isneginf(s[0, 1:]).all()


def test_shard_bounds():
    assert shard_bounds(10, 3).tolist() == [0, 3, 6, 10]
    assert shard_bounds(4, 4).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="non-empty"):
        shard_bounds(2, 3)
    with pytest.raises(ValueError, match="positive"):
        shard_bounds(5, 0)


def test_ray_flags():
    import argparse

    parser = argparse.ArgumentParser()
    ray_options.add_ray_args(parser, shards=True)
    args = parser.parse_args(["--ray-address", "auto", "--ray-gpus-per-worker", "1",
                              "--ray-shards", "4"])
    assert ray_options.ray_requested(args)
    kwargs = ray_options.ray_kwargs(args)
    assert kwargs["address"] == "auto" and kwargs["num_gpus_per_worker"] == 1.0
    assert kwargs["num_shards"] == 4 and kwargs["chunk_size"] == 128
    assert not ray_options.ray_requested(parser.parse_args([]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--ray-workers", "0"])


# ------------------------------------------------------------------ Ray session

ray = pytest.importorskip("ray")

from d2r.distributed import (ShardedIndex, build_index_ray,  # noqa: E402
                             merge_feature_stores, run_extract_ray, split_index)
from d2r.features.registry import make_extractor  # noqa: E402
from d2r.index.global_index import GlobalIndex  # noqa: E402
from d2r.index.global_local import GlobalLocalIndex  # noqa: E402
from d2r.index.inverted import InvertedIndex  # noqa: E402
from d2r.index.region_vectors import RegionVectorIndex  # noqa: E402
from d2r.index.regional import RegionalIndex  # noqa: E402
from d2r.io.feature_store import FeatureStore  # noqa: E402
from d2r.pipeline.build import build_index  # noqa: E402
from d2r.pipeline.extraction import extract_to_store  # noqa: E402
from d2r.pipeline.searcher import Searcher  # noqa: E402


@pytest.fixture(scope="module")
def ray_session():
    # Ray workers cannot import this test module; ship its classes (CrashOnce) by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 << 20,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def config():
    return load_config("rootsift-asmk-star", overrides=["codebook.num_words=32"])


@pytest.fixture(scope="module")
def source(tiny_dataset):
    return ImageSource.from_dataset(tiny_dataset)


@pytest.fixture(scope="module")
def single_build(tmp_path_factory, config, source):
    return build_index(config, source, tmp_path_factory.mktemp("single") / "index",
                       show_progress=False)


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(folder.glob("*.npy"))}


def _assert_same_arrays(a: Path, b: Path) -> None:
    left, right = _arrays(a), _arrays(b)
    assert sorted(left) == sorted(right) and left
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)
    assert json.loads((a / "names.json").read_text()) == json.loads((b / "names.json").read_text())


def _assert_same_features(store_a: Path, store_b: Path) -> None:
    with FeatureStore.open(store_a) as a, FeatureStore.open(store_b) as b:
        assert sorted(a.names()) == sorted(b.names())
        assert a.config == b.config
        for name in a.names():
            fa, fb = a.get(name), b.get(name)
            np.testing.assert_array_equal(fa.descriptors, fb.descriptors)
            np.testing.assert_array_equal(fa.locations, fb.locations)
            assert fa.image_size == fb.image_size


def test_build_index_ray_equals_single_process(ray_session, tmp_path, config, source, single_build):
    out = build_index_ray(config, source, tmp_path / "index", num_workers=2, chunk_size=3,
                          batch_size=5, show_progress=False)
    _assert_same_arrays(single_build / "search", out / "search")
    _assert_same_features(single_build / "features", out / "features")
    one = json.loads((single_build / "index.json").read_text())
    two = json.loads((out / "index.json").read_text())
    for record in (one, two):  # the build time and the generation's random name differ
        record.pop("seconds"), record.pop("search")
    assert one == two
    assert not (out / "features.parts").exists()
    with FeatureStore.open(out / "features") as store:  # the catalog covers the adopted shards
        assert len(store) == len(source)


class CrashOnce:
    """Extractor factory whose first extraction in any actor kills the process (os._exit)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, config):
        extractor = make_extractor(config)
        marker = self.marker

        class Crashing:
            dim = extractor.dim
            output_type = extractor.output_type

            def config(self):
                return extractor.config()

            def extract(self, image, *, box=None):
                if not os.path.exists(marker):
                    Path(marker).write_text(str(os.getpid()))
                    os._exit(1)
                return extractor.extract(image, box=box)

        return Crashing()


def test_killed_actor_is_restarted_and_result_unchanged(ray_session, tmp_path, config, source,
                                                        single_build):
    marker = tmp_path / "crashed"
    summary = run_extract_ray(config, source, tmp_path / "features", num_workers=2, chunk_size=4,
                              extractor_factory=CrashOnce(str(marker)), show_progress=False)
    assert marker.exists()  # a worker process did die
    assert summary.extracted == len(source) and not summary.skipped
    _assert_same_features(single_build / "features", tmp_path / "features")


def test_rerun_after_killed_driver_skips_written_images(ray_session, tmp_path, config, source,
                                                         single_build):
    store = tmp_path / "features"
    # What a killed run leaves: a merged store with some images, part stores with others.
    extract_to_store(config, ImageSource(source.names[:5], source.paths[:5]), store,
                     show_progress=False)
    part = tmp_path / "features.parts" / "shard-0003"
    extract_to_store(config, ImageSource(source.names[3:9], source.paths[3:9]), part,
                     show_progress=False)
    summary = run_extract_ray(config, source, store, num_workers=2, chunk_size=5,
                              show_progress=False)
    assert summary.already_done == 9 and summary.extracted == len(source) - 9
    _assert_same_features(single_build / "features", store)
    assert not part.exists()
    again = run_extract_ray(config, source, store, show_progress=False)
    assert again.extracted == 0 and again.already_done == len(source)


def test_merge_feature_stores_is_idempotent_and_dedupes(tmp_path, config, source, single_build):
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    extract_to_store(config, ImageSource(source.names[:6], source.paths[:6]), a,
                     show_progress=False)
    extract_to_store(config, ImageSource(source.names[4:], source.paths[4:]), b,
                     show_progress=False)
    assert merge_feature_stores([a, b], dest) == len(source)
    assert merge_feature_stores([a, b], dest) == 0
    _assert_same_features(single_build / "features", dest)
    other = load_config("rootsift-asmk-star", overrides=["features.rootsift.max_features=50"])
    c = tmp_path / "c"
    extract_to_store(other, ImageSource(source.names[:1], source.paths[:1]), c,
                     show_progress=False)
    with pytest.raises(ValueError, match="other configs"):
        merge_feature_stores([a, c], tmp_path / "dest2")


def _random_items(rng, n, **kwargs):
    items = random_items(rng, n, **kwargs)
    items[3] = items[1]  # exact ties across shards
    items[-1] = items[1]
    return items


@pytest.mark.parametrize("binary", [True, False])
def test_sharded_search_equals_unsharded_random(ray_session, tmp_path, binary):
    rng = np.random.default_rng(1 if binary else 2)
    items = _random_items(rng, 50, num_words=40, dim=16, binary=binary)
    index = InvertedIndex(num_words=40, dim=16, binary=binary)
    index.add(items, names=[f"img{i}" for i in range(len(items))])
    index.save(tmp_path / "full")
    split_index(tmp_path / "full", num_shards=3, out=tmp_path / "shards")
    queries = [items[1], items[7]] + _random_items(rng, 6, num_words=40, dim=16, binary=binary)[:5]
    with ShardedIndex(tmp_path / "shards", num_cpus_per_shard=0.5) as sharded:
        assert sharded.names == index.names and sharded.num_shards == 3
        for k, kw in [(5, {}), (60, {"alpha": 1.0, "tau": 0.1, "normalize": "query"})]:
            want = index.search(queries, k=k, **kw)
            got = sharded.search(queries, k=k, **kw)
            np.testing.assert_array_equal(got.ids, want.ids)
            if binary:  # popcount + table lookup: bit-identical
                np.testing.assert_array_equal(got.scores, want.scores)
            else:  # BLAS mat-vec rounding depends on a row's position in the posting slice
                np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6, atol=1e-7)
        stats = sharded.stats()
        assert sum(s["num_images"] for s in stats) == 50 and all(s["rss_bytes"] > 0 for s in stats)
    for s in range(3):
        InvertedIndex.load(tmp_path / "shards" / f"shard-{s:04d}", verify=True)


def test_sharded_search_regional_and_global(ray_session, tmp_path):
    rng = np.random.default_rng(3)
    items = _random_items(rng, 40, num_words=30, dim=16, binary=True)
    regional = RegionalIndex(num_words=30, dim=16, binary=True)
    sizes = rng.integers(1, 4, 15)
    groups = np.split(np.arange(int(sizes.sum())) % 40, np.cumsum(sizes)[:-1])
    regional.add([[items[j] for j in g] for g in groups], names=[f"r{i}" for i in range(15)])
    regional.save(tmp_path / "regional")
    split_index(tmp_path / "regional", num_shards=4, out=tmp_path / "rs")
    glob = GlobalIndex(8)
    vectors = rng.standard_normal((30, 8)).astype(np.float32)
    glob.add(vectors, names=[f"g{i}" for i in range(30)])
    glob.save(tmp_path / "global")
    split_index(tmp_path / "global", num_shards=3, out=tmp_path / "gs")
    with ShardedIndex(tmp_path / "rs", num_cpus_per_shard=0.25) as sharded:
        for pooling in ("max", "avg"):
            want = regional.search(items[:6], k=8, pooling=pooling)
            got = sharded.search(items[:6], k=8, pooling=pooling)
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_array_equal(got.scores, want.scores)
    with ShardedIndex(tmp_path / "gs", num_cpus_per_shard=0.5) as sharded:
        want = glob.search(vectors[:5] + 0.1, k=7)
        got = sharded.search([AggregatedImage(np.arange(8, dtype=np.int32), v.reshape(8, 1), 1)
                              for v in vectors[:5] + 0.1], k=7)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)


def test_sharded_search_of_cnn_kinds_on_ray(ray_session, tmp_path):
    rng = np.random.default_rng(4)
    pairs = GlobalLocalIndex(8)
    pairs.add(rng.standard_normal((20, 2, 8)).astype(np.float32), names=[f"p{i}" for i in range(20)])
    pairs.save(tmp_path / "pairs")
    regions = RegionVectorIndex(8)
    regions.add([rng.standard_normal((int(rng.integers(1, 4)), 8)).astype(np.float32)
                 for _ in range(20)])
    regions.save(tmp_path / "regions")
    cases = [(pairs, "pairs", rng.standard_normal((5, 2, 8)).astype(np.float32)),
             (regions, "regions", [rng.standard_normal((2, 8)).astype(np.float32) for _ in range(5)])]
    for index, name, queries in cases:
        split_index(tmp_path / name, num_shards=3, out=tmp_path / f"{name}-shards")
        with ShardedIndex(tmp_path / f"{name}-shards", num_cpus_per_shard=0.5) as sharded:
            assert sharded.kind == index.kind and sharded.names == index.names
            want = index.search(queries, k=7)
            got = sharded.search(queries, k=7)
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
            assert sharded.search(queries[:0], k=7).ids.shape == (0, 7)


def test_sharded_build_and_search_on_tiny_dataset(ray_session, tmp_path, config, source,
                                                  single_build, tiny_dataset):
    out = build_index_ray(config, source, tmp_path / "index", num_workers=2, chunk_size=8,
                          batch_size=3, num_shards=3, show_progress=False)
    assert not (out / "search").exists()
    split = split_index(single_build, num_shards=3, out=tmp_path / "split")
    for s in range(3):
        _assert_same_arrays(split / f"shard-{s:04d}", out / "shards" / f"shard-{s:04d}")
    from d2r.datasets.revisited import load_revisited

    dataset = load_revisited(tiny_dataset)
    with Searcher(single_build) as single:
        queries = [single.image_features(dataset.query_path(i), box=dataset.query_boxes[i])
                   for i in range(dataset.num_queries)]
        want = single.search(queries, k=len(source))
    with Searcher(out, shard_options={"num_cpus_per_shard": 0.5}) as sharded:
        assert isinstance(sharded.index, ShardedIndex)
        got = sharded.search(queries, k=len(source))
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    assert got.names == want.names
    results = {}
    for name, index, extra in (("single", single_build, []),
                               ("sharded", out, ["--ray-address", ray_session.get_runtime_context().gcs_address,
                                                 "--ray-cpus-per-shard", "0.5"])):
        proc = subprocess.run([sys.executable, "-m", "d2r.query", "--index", str(index),
                               "--dataset-dir", str(tiny_dataset), "--out", str(tmp_path / name),
                               "--rerank", "5", *extra], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        results[name] = np.load(tmp_path / name / "ranks.npy")
    np.testing.assert_array_equal(results["sharded"], results["single"])


def test_dataset_source_with_distractors(tmp_path, tiny_dataset):
    root = tmp_path / "r1m" / "jpg"
    (root / "ab").mkdir(parents=True)
    jpgs = sorted((Path(tiny_dataset) / "jpg").glob("*.jpg"))[:2]
    for i, jpg in enumerate(jpgs):
        (root / "ab" / f"d{i}.jpg").write_bytes(jpg.read_bytes())
    listing = tmp_path / "revisitop1m.txt"
    listing.write_text("ab/d0\nab/d1\n")
    plain = ImageSource.from_dataset(tiny_dataset)
    big = ImageSource.from_dataset(tiny_dataset, distractor_list=listing, distractor_root=root)
    assert big.names == plain.names + ("ab/d0", "ab/d1")
    assert big.paths[-1] == root / "ab" / "d1.jpg" and big.paths[-1].exists()
    with pytest.raises(ValueError, match="both"):
        ImageSource.from_dataset(tiny_dataset, distractor_list=listing)


@pytest.mark.slow
def test_build_index_ray_regional_search_with_crops(ray_session, tmp_path, source):
    config = load_config("rootsift-asmk-star", overrides=[
        "codebook.num_words=32", "regions.source=grid", "regions.grid_levels=2",
        "regions.features=crop", "aggregation.regional_search=true"])
    single = build_index(config, source, tmp_path / "single", show_progress=False)
    out = build_index_ray(config, source, tmp_path / "ray", num_workers=2, chunk_size=5,
                          batch_size=4, show_progress=False)
    _assert_same_arrays(single / "search", out / "search")
    _assert_same_features(single / "features", out / "features")
    assert sorted(p.name for p in (single / "boxes").iterdir()) == \
        sorted(p.name for p in (out / "boxes").iterdir())
    assert json.loads((out / "index.json").read_text())["kind"] == "regional"


def test_cnn_descriptors_build_on_ray_like_the_single_process(ray_session, tmp_path, source):
    config = load_config("rmac-vgg16", overrides=["images.max_side=64"])
    single = build_index(config, source, tmp_path / "single", show_progress=False)
    on_ray = build_index_ray(config, source, tmp_path / "ray", num_workers=2, chunk_size=8,
                             num_cpus_per_worker=0.5, show_progress=False)
    want = GlobalIndex.load(single / "search")
    got = GlobalIndex.load(on_ray / "search")
    assert got.names == want.names
    np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
    with pytest.raises(ValueError, match="activation maps"):
        build_index_ray(load_config("rmac-vgg16-aml"), source, tmp_path / "maps")


def test_ray_workers_quantize_with_the_stored_hnsw_graph(ray_session, tmp_path, source):
    """A Ray rebuild of an approximate index reuses its graph: the actors load it from the
    index and assign the same words as the single-process build did."""
    config = load_config("rootsift-asmk-star", overrides=[
        "codebook.num_words=32", "codebook.quantization=approximate", "codebook.hnsw_m=4",
        "codebook.ef_construction=16", "codebook.ef_search=2"])
    single = build_index(config, source, tmp_path / "single", show_progress=False)
    expected = _arrays(single / "search")
    out = build_index_ray(config, source, single, num_workers=2, chunk_size=5, batch_size=4,
                          show_progress=False)
    got = _arrays(out / "search")
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert json.loads((out / "index.json").read_text())["codebook"]["quantizer"]["kind"] == "hnsw"
