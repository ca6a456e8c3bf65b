"""The CLIs as a user runs them, as subprocesses, on a tiny synthetic benchmark."""

import json
import subprocess
import sys

import numpy as np
import pytest

from d2r.datasets.revisited import load_revisited


def _run(module, *args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{module} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def built_index(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "index"
    _run("d2r.cli.build_index", "--dataset-dir", str(tiny_dataset), "--out", str(out),
         "--config", "rootsift-asmk-star", "--set", "codebook.num_words=64")
    return out


def _metrics(path):
    metrics = json.loads((path / "metrics.json").read_text())
    assert set(metrics) == {"easy", "medium", "hard"}
    for values in metrics.values():
        assert set(values) == {"mAP", "mP@1", "mP@5", "mP@10"}
        assert all(0.0 <= v <= 100.0 for v in values.values())
    return metrics


def test_build_query_evaluate_and_rerank(tiny_dataset, built_index, tmp_path):
    manifest = json.loads((built_index / "index.json").read_text())
    assert manifest["num_images"] == 16 and manifest["kind"] == "inverted"
    plain = tmp_path / "plain"
    _run("d2r.cli.query", "--index", str(built_index), "--dataset-dir", str(tiny_dataset),
         "--out", str(plain))
    m_plain = _metrics(plain)
    ranks = np.load(plain / "ranks.npy")
    assert ranks.shape == (4, 16) and sorted(ranks[0]) == list(range(16))
    # retrieval works far better than chance on the easy protocol
    assert m_plain["easy"]["mAP"] > 50.0
    reranked = tmp_path / "reranked"
    _run("d2r.cli.query", "--index", str(built_index), "--dataset-dir", str(tiny_dataset),
         "--out", str(reranked), "--rerank", "10")
    m_rerank = _metrics(reranked)
    reranked_ranks = np.load(reranked / "ranks.npy")
    assert not np.array_equal(reranked_ranks, ranks)
    # only the verified top 10 may move
    np.testing.assert_array_equal(reranked_ranks[:, 10:], ranks[:, 10:])
    # the evaluate CLI gives the same numbers from the written rankings
    _run("d2r.cli.evaluate", "--dataset-dir", str(tiny_dataset), "--ranks", str(reranked / "ranks.npy"),
         "--out", str(tmp_path / "eval"))
    assert _metrics(tmp_path / "eval") == m_rerank


def test_single_image_query_finds_its_landmark(tiny_dataset, built_index, tmp_path):
    dataset = load_revisited(tiny_dataset)
    out = tmp_path / "rows.json"
    box = ",".join(str(float(v)) for v in dataset.query_boxes[0])
    printed = _run("d2r.cli.query", "--index", str(built_index), "--image",
                   str(dataset.query_path(0)), "--box", box, "--top", "3", "--rerank", "3",
                   "--json", str(out)).stdout.splitlines()
    rows = json.loads(out.read_text())
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) > 3
    assert ["inliers" in r for r in rows[:4]] == [True, True, True, False]
    assert printed[0].startswith("# re-ranked: the top 3 were spatially verified")
    assert printed[1].split() == ["rank", "score", "inliers", "-log10NFA", "verified", "name"]
    assert [r["verified"] for r in rows[3:]] == [False] * (len(rows) - 3)
    assert [line.split()[0] for line in printed[2:5]] == ["1", "2", "3"]
    assert printed[5] == f"# {len(rows) - 3} more (--top 0 shows all)"
    positives = set(dataset.gnd[0].easy) | set(dataset.gnd[0].hard)
    assert dataset.db_names.index(rows[0]["name"]) in positives


def test_regional_builds(tiny_dataset, tmp_path):
    for preset, extra in [("rootsift-d2r-r-asmk-star", "regions.source=grid"),
                          ("rootsift-asmk-star", "aggregation.regional_search=true")]:
        out = tmp_path / preset
        args = ["--set", "codebook.num_words=32", "--set", extra]
        if "regional_search" in extra:
            args += ["--set", "regions.source=grid", "--set", "regions.features=select"]
        _run("d2r.cli.build_index", "--dataset-dir", str(tiny_dataset), "--out", str(out),
             "--config", preset, *args)
        _run("d2r.cli.query", "--index", str(out), "--dataset-dir", str(tiny_dataset),
             "--out", str(tmp_path / f"{preset}-res"))
        _metrics(tmp_path / f"{preset}-res")
        manifest = json.loads((out / "index.json").read_text())
        if "regional_search" in extra:
            assert manifest["kind"] == "regional" and manifest["items_per_image"] > 1


def test_query_refuses_build_time_changes(built_index, tiny_dataset, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "d2r.query", "--index", str(built_index),
                           "--dataset-dir", str(tiny_dataset), "--out", str(tmp_path / "x"),
                           "--set", "codebook.num_words=8"], capture_output=True, text=True)
    assert proc.returncode != 0 and "codebook.num_words" in proc.stderr
