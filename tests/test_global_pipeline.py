"""CNN global baselines through the same CLIs as D2R (random-weight VGG16, tiny images)."""

import json
import subprocess
import sys

import pytest


def _run(*args):
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow  # 26 s: `learn` also runs in the regional test, whitening and QE in unit tests
def test_rmac_with_learned_whitening_and_qe(tiny_dataset, tmp_path):
    small = ["--set", "images.max_side=96"]
    _run("d2r.cli.learn", "--dataset-dir", str(tiny_dataset), "--out", str(tmp_path / "w"),
         "--config", "rmac-vgg16", "--dim", "32", *small)
    index = tmp_path / "index"
    _run("d2r.cli.build_index", "--dataset-dir", str(tiny_dataset), "--out", str(index),
         "--config", "rmac-vgg16-qe", *small,
         "--set", f"features.cnn.whitening_path={tmp_path / 'w'}")
    manifest = json.loads((index / "index.json").read_text())
    assert manifest["kind"] == "global" and manifest["codebook"] is None
    assert manifest["features"]["extractor"]["dim"] == 32
    _run("d2r.cli.query", "--index", str(index), "--dataset-dir", str(tiny_dataset),
         "--out", str(tmp_path / "res"))
    metrics = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert set(metrics) == {"easy", "medium", "hard"}


def test_cnn_refuses_spatial_verification(tiny_dataset, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "d2r.build_index", "--dataset-dir",
                           str(tiny_dataset), "--out", str(tmp_path / "i"), "--config",
                           "rmac-vgg16", "--set", "verification.rerank=10"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "spatial verification needs local features" in proc.stderr


SMALL = ["--set", "images.max_side=96"]


def test_rmac_aml_reranks_the_head_only(tiny_dataset, tmp_path):
    import numpy as np

    index = tmp_path / "index"
    _run("d2r.cli.build_index", "--dataset-dir", str(tiny_dataset), "--out", str(index),
         "--config", "rmac-vgg16-aml", *SMALL)
    assert (index / "maps").is_dir()
    runs = {}
    for name, aml in (("plain", 0), ("aml", 6)):
        out = tmp_path / name
        _run("d2r.cli.query", "--index", str(index), "--dataset-dir", str(tiny_dataset), "--out",
             str(out), "--set", f"search.aml_rerank={aml}")
        runs[name] = np.load(out / "ranks.npy")
    plain, aml = runs["plain"], runs["aml"]
    np.testing.assert_array_equal(np.sort(plain[:, :6], axis=1), np.sort(aml[:, :6], axis=1))
    np.testing.assert_array_equal(plain[:, 6:], aml[:, 6:])
    _run("d2r.cli.query", "--index", str(index), "--dataset-dir", str(tiny_dataset), "--out",
         str(tmp_path / "qe"), "--set", "search.aml_rerank=6", "--set", "search.query_expansion=2")
    check_localize_rerank_against_fresh_maps(index, tiny_dataset)


def check_localize_rerank_against_fresh_maps(index, dataset_dir):
    """Searcher.rerank (AML) = aml_rerank on maps recomputed from the database images."""
    import numpy as np

    from d2r.datasets.benchmarks import load_benchmark
    from d2r.cnn.aml import aml_rerank
    from d2r.io.images import load_image_with_info
    from d2r.pipeline.searcher import Searcher

    dataset = load_benchmark(dataset_dir)
    with Searcher(index, overrides=["search.aml_rerank=5"]) as searcher:
        queries = [searcher.query(dataset.query_path(i), box=dataset.query_box(i))
                   for i in range(dataset.num_queries)]
        initial = searcher.search([q.features for q in queries], k=len(searcher.names))
        got, details = searcher.rerank(queries, initial)
        assert details is None
        describer = searcher.extractor.describer
        fresh = [describer.maps(load_image_with_info(dataset.db_path(dataset.db_names.index(n)),
                                                     max_side=96).pixels)["last"][0]
                 for n in searcher.names]
    maps = [q.activation_map.values for q in queries]
    want, _, _ = aml_rerank(initial, np.stack([m.max(axis=(0, 1)) for m in maps]), fresh,
                            query_vectors=np.stack([q.features.vectors[0] for q in queries]),
                            query_aspect_ratios=[m.shape[1] / m.shape[0] for m in maps],
                            describe_region=lambda crop: describer.describe_maps({"m": [crop]}),
                            top_n=5)
    np.testing.assert_array_equal(got.ids[:, 5:], initial.ids[:, 5:])
    np.testing.assert_allclose(got.scores[:, :5], want.scores[:, :5], atol=1e-3)


def test_aml_refuses_an_index_without_maps(tiny_dataset, tmp_path):
    index = tmp_path / "index"
    _run("d2r.cli.build_index", "--dataset-dir", str(tiny_dataset), "--out", str(index),
         "--config", "rmac-vgg16", *SMALL)
    proc = subprocess.run([sys.executable, "-m", "d2r.query", "--index", str(index),
                           "--dataset-dir", str(tiny_dataset), "--out", str(tmp_path / "r"),
                           "--set", "search.aml_rerank=5"], capture_output=True, text=True)
    assert proc.returncode != 0 and "store_maps" in proc.stderr


def test_regional_second_order_learn_build_query(tiny_dataset, tmp_path):
    learned = tmp_path / "learned"
    _run("d2r.cli.learn", "--dataset-dir", str(tiny_dataset), "--out", str(learned),
         "--config", "regional-vgg16", "--dim", "24", "--reduction-dim", "8", *SMALL)
    index = tmp_path / "index"
    _run("d2r.cli.build_index", "--dataset-dir", str(tiny_dataset), "--out", str(index),
         "--config", "regional-vgg16-qe", *SMALL,
         "--set", f"features.cnn.reduction_path={learned / 'reduction'}",
         "--set", f"features.cnn.whitening_path={learned}")
    manifest = json.loads((index / "index.json").read_text())
    assert manifest["kind"] == "global_regions"
    assert manifest["features"]["extractor"]["dim"] == 24
    _run("d2r.cli.query", "--index", str(index), "--dataset-dir", str(tiny_dataset),
         "--out", str(tmp_path / "res"))
    metrics = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert set(metrics) == {"easy", "medium", "hard"}


def test_multires_with_cam_masks(tiny_dataset, tmp_path):
    index = tmp_path / "index"
    _run("d2r.cli.build_index", "--dataset-dir", str(tiny_dataset), "--out", str(index),
         "--config", "multires-rmac-resnet101-cam", *SMALL,
         "--set", "features.cnn.backbone=resnet50", "--set", "features.cnn.resolutions=[64,96]")
    manifest = json.loads((index / "index.json").read_text())
    assert manifest["kind"] == "global_local"
    _run("d2r.cli.query", "--index", str(index), "--dataset-dir", str(tiny_dataset),
         "--out", str(tmp_path / "res"), "--set", "search.query_expansion=2")
    assert (tmp_path / "res" / "metrics.json").exists()
