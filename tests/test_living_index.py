"""A living index: ``d2r add`` / ``remove`` / ``compact`` answer exactly what a rebuild
with the same codebook answers, every update is atomic, and readers keep their view."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from d2r.config import load_config
from d2r.errors import InputError
from d2r.index.layout import writer_lock
from d2r.io.crash import CRASH_EXIT_CODE
from d2r.pipeline.build import build_index
from d2r.pipeline.searcher import Searcher
from d2r.pipeline.update import UnknownImagesError, add_images, compact_index, remove_images
from d2r.pipeline.check import check_index
from d2r.pipeline.sources import ImageSource

SMALL = ["features.rootsift.max_features=80", "codebook.num_words=32"]

KINDS = {  # preset, overrides, expected index kind
    "asmk_star": ("rootsift-asmk-star", [], "inverted"),
    "r_asmk_star": ("rootsift-d2r-r-asmk-star", ["regions.source=grid"], "inverted"),
    "regional_search": ("rootsift-d2r-r-asmk-star",
                        ["regions.source=grid", "aggregation.method=asmk_star",
                         "aggregation.regional_search=true"], "regional"),
    "vlad": ("rootsift-vlad", ["codebook.num_words=16"], "global"),
    "rmac": ("rmac-vgg16-aml", ["images.max_side=96"], "global"),
    "regional_cnn": ("regional-vgg16", ["images.max_side=96"], "global_regions"),
    "multires_cam": ("multires-rmac-resnet101-cam",
                     ["images.max_side=96", "features.cnn.backbone=resnet50",
                      "features.cnn.resolutions=[64,96]"], "global_local"),
}
CNN = {"rmac", "regional_cnn", "multires_cam"}


def _folders(dataset: Path, work: Path) -> tuple[Path, Path, Path]:
    """``all/`` (every database image), ``a/`` (two in three) and ``b/`` (the others)."""
    folders = [work / "all", work / "a", work / "b"]
    for folder in folders:
        folder.mkdir(parents=True)
    for i, image in enumerate(sorted((dataset / "jpg").glob("synth_db_*.jpg"))):
        shutil.copy(image, folders[0])
        shutil.copy(image, folders[1] if i % 3 else folders[2])
    return folders[0], folders[1], folders[2]


def _queries(dataset: Path) -> list[Path]:
    return sorted((dataset / "jpg").glob("synth_q_*.jpg"))


def _answers(index: Path, queries: list[Path], overrides=()) -> list[list[tuple[str, float]]]:
    """Every searchable image per query, best first: (name, float32 score)."""
    with Searcher(index, overrides=overrides) as searcher:
        features = [searcher.image_features(q) for q in queries]
        result = searcher.search(features, k=len(searcher.names) + 5)
        return [[(searcher.names[i], float(s)) for i, s in zip(ids, scores) if i >= 0]
                for ids, scores in zip(result.ids, result.scores)]


def _same(got, expected, exact: bool) -> None:
    """The same names in the same order; scores bit-identical (binary kernels) or within
    1e-6 (float kernels: BLAS sums blocks of another size in another order)."""
    assert [[n for n, _ in row] for row in got] == [[n for n, _ in row] for row in expected]
    if exact:
        assert got == expected
    else:
        for row, want in zip(got, expected):
            np.testing.assert_allclose([s for _, s in row], [s for _, s in want], atol=1e-6)


def _without(answers, names):
    return [[(n, s) for n, s in row if n not in names] for row in answers]


def _copy(index: Path) -> Path:
    """A copy of ``index`` beside it (its codebook path is relative to its parent)."""
    copy = index.with_name(f"{index.name}-{uuid.uuid4().hex[:8]}")
    shutil.copytree(index, copy, symlinks=True)
    return copy


def _build(config, folder: Path, out: Path) -> Path:
    return build_index(config, ImageSource.from_directory(folder), out, show_progress=False)


SLOW_KINDS = {"multires_cam"}
"""Kinds whose update tests run with ``-m slow`` only (~1 min of ResNet on 2 cores; the
global_local index itself is covered by tests/test_global_local_index.py)."""


@pytest.fixture(scope="module", params=[pytest.param(k, marks=pytest.mark.slow)
                                        if k in SLOW_KINDS else k for k in sorted(KINDS)])
def kind_case(request, tiny_dataset, tmp_path_factory):
    """A rebuild over all/ and a build over a/ sharing one codebook (CNN kinds: random
    weights, tiny images)."""
    preset, sets, kind = KINDS[request.param]
    if request.param in CNN:
        pytest.importorskip("tensorflow")
    work = tmp_path_factory.mktemp(f"living-{request.param}")
    every, part_a, part_b = _folders(tiny_dataset, work)
    if request.param in CNN:
        config = load_config(preset, overrides=sets)
    else:
        trained = _build(load_config(preset, overrides=SMALL + sets), every, work / "trained")
        codebook = next((trained / "codebooks").iterdir())
        config = load_config(preset, overrides=SMALL + sets + [f"codebook.path={codebook}"])
    full = _build(config, every, work / "full")
    assert json.loads((full / "index.json").read_text())["kind"] == kind
    base = _build(config, part_a, work / "base")
    queries = _queries(tiny_dataset)
    return {"config": config, "full": full, "base": base, "b": part_b, "queries": queries,
            "work": work, "expected": _answers(full, queries),
            "exact": config.features.backend != "cnn" and config.aggregation.method != "vlad"}


def test_add_remove_compact_equal_a_rebuild(kind_case, tmp_path):
    index = _copy(kind_case["base"])
    queries, expected = kind_case["queries"], kind_case["expected"]
    summary = add_images(index, ImageSource.from_directory(kind_case["b"]), show_progress=False)
    assert summary.added and not summary.replaced
    exact = kind_case["exact"]
    _same(_answers(index, queries), expected, exact)  # names, order, scores
    if kind_case["config"].features.backend == "cnn":  # query expansion reads the segments
        expand = ["search.query_expansion=3"]
        _same(_answers(index, queries, expand), _answers(kind_case["full"], queries, expand),
              exact)
    gone = {expected[0][0][0], expected[1][-1][0]}
    remove_images(index, sorted(gone))
    after_remove = _answers(index, queries)
    _same(after_remove, _without(expected, gone), exact)
    manifest = json.loads((index / "index.json").read_text())
    assert manifest["num_images"] == len(expected[0]) - len(gone)
    assert check_index(index) == []  # every segment hashed, every image's features read
    compact_index(index, show_progress=False)
    assert check_index(index) == []
    manifest = json.loads((index / "index.json").read_text())
    assert "segments" not in manifest and "deleted" not in manifest
    _same(_answers(index, queries), after_remove, exact)
    assert sorted(p.name for p in index.iterdir() if p.name.startswith("gen-")) == sorted(
        {Path(manifest["search"]).parts[0], *[d for d in manifest["data"] if d != "."]})


def test_removed_images_are_never_returned_and_readded_ones_come_back(kind_case, tmp_path):
    index = _copy(kind_case["full"])
    queries, expected = kind_case["queries"], kind_case["expected"]
    names = [name for name, _ in expected[0]]
    remove_images(index, names[:3])
    _same(_answers(index, queries), _without(expected, set(names[:3])), kind_case["exact"])
    readd = tmp_path / "readd"
    readd.mkdir()
    for name in names[:3]:
        shutil.copy(kind_case["work"] / "all" / name, readd)
    add_images(index, ImageSource.from_directory(readd), show_progress=False)
    _same(_answers(index, queries), expected, kind_case["exact"])


def test_reranking_reads_each_segments_features(kind_case, tmp_path):
    config = kind_case["config"]
    cnn = config.features.backend == "cnn"
    if config.aggregation.method == "vlad" or (cnn and not config.features.cnn.store_maps):
        pytest.skip("the same path as another kind, or nothing to re-rank with")
    index = _copy(kind_case["base"])
    add_images(index, ImageSource.from_directory(kind_case["b"]), show_progress=False)
    query = kind_case["queries"][0]

    def reranked(path):
        rerank = "search.aml_rerank=10" if cnn else "verification.rerank=20"
        with Searcher(path, overrides=[rerank]) as searcher:
            q = searcher.query(query)
            result, _ = searcher.rerank([q], searcher.search([q.features], k=20))
            return [searcher.names[i] for i in result.ids[0] if i >= 0]

    assert reranked(index) == reranked(kind_case["full"])


def test_names_already_indexed_are_refused_or_replaced(kind_case, tmp_path):
    index = _copy(kind_case["full"])
    before = (index / "index.json").read_bytes()
    with pytest.raises(InputError, match=r"6 of the 6 images are already in index .*--replace"):
        add_images(index, ImageSource.from_directory(kind_case["b"]), show_progress=False)
    assert (index / "index.json").read_bytes() == before
    summary = add_images(index, ImageSource.from_directory(kind_case["b"]), replace=True,
                         show_progress=False)
    assert sorted(summary.replaced) == sorted(summary.added) and len(summary.added) == 6
    answers = _answers(index, kind_case["queries"])
    _same(answers, kind_case["expected"], kind_case["exact"])  # the same photos again
    with pytest.raises(UnknownImagesError, match="'nope.jpg'"):
        remove_images(index, ["nope.jpg", kind_case["expected"][0][0][0]])
    assert _answers(index, kind_case["queries"]) == answers  # nothing removed


def _d2r(*args, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "D2R_CRASH_AT"}
    if crash_at:
        env["D2R_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "d2r", *args], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def asmk(tiny_dataset, tmp_path_factory):
    """The ASMK* case only (the kill and reader tests)."""
    preset, sets, _ = KINDS["asmk_star"]
    work = tmp_path_factory.mktemp("living-kills")
    every, part_a, part_b = _folders(tiny_dataset, work)
    trained = _build(load_config(preset, overrides=SMALL + sets), every, work / "trained")
    codebook = next((trained / "codebooks").iterdir())
    config = load_config(preset, overrides=SMALL + sets + [f"codebook.path={codebook}"])
    queries = _queries(tiny_dataset)
    base = _build(config, part_a, work / "base")
    return {"base": base, "b": part_b, "queries": queries, "before": _answers(base, queries),
            "after": _answers(_build(config, every, work / "full"), queries)}


@pytest.mark.parametrize("point", ["extracted", "search-saved", "committed"])
def test_an_add_killed_at_each_commit_point(asmk, tmp_path, point):
    index = _copy(asmk["base"])
    proc = _d2r("add", "--index", str(index), "--images", str(asmk["b"]), crash_at=point)
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr
    assert _answers(index, asmk["queries"]) == (asmk["after"] if point == "committed"
                                                else asmk["before"])
    again = _d2r("add", "--index", str(index), "--images", str(asmk["b"]))
    if point == "committed":
        assert again.returncode == 2 and "already in index" in again.stderr
    else:
        assert again.returncode == 0, again.stderr
        assert "added 6 images" in again.stdout
    assert _answers(index, asmk["queries"]) == asmk["after"]
    leftovers = {p.name for p in index.iterdir() if p.name.startswith("gen-")}
    manifest = json.loads((index / "index.json").read_text())
    assert leftovers == {Path(s["search"]).parts[0] for s in manifest.get("segments", [])} | {
        Path(manifest["search"]).parts[0]}


@pytest.mark.parametrize("command,point", [("remove", "committed"), ("compact", "search-saved"),
                                           ("compact", "committed")])
def test_remove_and_compact_killed_at_each_commit_point(asmk, tmp_path, command, point):
    index = _copy(asmk["base"])
    add_images(index, ImageSource.from_directory(asmk["b"]), show_progress=False)
    gone = asmk["after"][0][0][0]
    if command == "compact":
        remove_images(index, [gone])
    args = ["--names", gone] if command == "remove" else []
    proc = _d2r(command, "--index", str(index), *args, crash_at=point)
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr
    assert _answers(index, asmk["queries"]) == _without(asmk["after"], {gone})
    if point != "committed" or command == "compact":
        proc = _d2r(command, "--index", str(index), *args)
        assert proc.returncode == 0, proc.stderr
    assert _answers(index, asmk["queries"]) == _without(asmk["after"], {gone})


def test_a_reader_keeps_its_view_while_another_process_updates(asmk, tmp_path):
    index = _copy(asmk["base"])
    query = asmk["queries"][0]
    with Searcher(index, overrides=["verification.rerank=10"]) as reader:
        q = reader.query(query)

        def answer():
            result = reader.search([q.features], k=30)
            reranked, _ = reader.rerank([q], result)
            return ([(reader.names[i], float(s)) for i, s in zip(result.ids[0], result.scores[0])
                     if i >= 0], reranked.ids.tolist())

        before = answer()
        for args in (["add", "--images", str(asmk["b"])],
                     ["remove", "--names", asmk["after"][0][0][0]], ["compact"]):
            proc = _d2r(args[0], "--index", str(index), *args[1:])
            assert proc.returncode == 0, proc.stderr
            assert answer() == before  # the generation it opened, features included
    assert _answers(index, asmk["queries"]) == _without(asmk["after"], {asmk["after"][0][0][0]})


def test_one_writer_at_a_time(asmk, tmp_path):
    index = _copy(asmk["base"])
    with writer_lock(index):
        proc = _d2r("add", "--index", str(index), "--images", str(asmk["b"]))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"d2r add: error: index {index} is being built or updated by another d2r process; "
        f"run this again when it has finished"]
    assert "Traceback" not in proc.stderr


def test_update_errors_are_one_line(asmk, tmp_path):
    index = _copy(asmk["base"])
    cases = [
        (["remove", "--index", str(index), "--names", "missing.jpg"], "not in index"),
        (["add", "--index", str(tmp_path / "nowhere"), "--images", str(asmk["b"])],
         "no index at"),
        (["add", "--index", str(index), "--images", str(tmp_path)], "holds no images"),
        (["add", "--index", str(index), "--images", str(asmk["base"] / "features")],
         "d2r never takes its own files as inputs"),
    ]
    for args, message in cases:
        proc = _d2r(*args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, lines
    assert _answers(index, asmk["queries"]) == asmk["before"]


def test_segments_array_views_match_a_concatenation():
    from d2r.index.segmented import _Rows

    parts = [np.arange(6, dtype=np.float32).reshape(3, 2), np.arange(10, 14, dtype=np.float32
                                                                     ).reshape(2, 2)]
    rows = _Rows(parts, np.array([0, 3, 5]))
    whole = np.concatenate(parts)
    ids = np.array([[4, 0], [2, 3]])
    assert rows.shape == (5, 2)
    np.testing.assert_array_equal(rows[ids], whole[ids])
    np.testing.assert_array_equal(np.asarray(rows, np.float64), whole)


def test_a_sharded_index_is_refused_in_one_line(asmk, tmp_path):
    index = _copy(asmk["base"])
    manifest = json.loads((index / "index.json").read_text())
    shutil.rmtree(index / manifest["search"])  # what a --ray-shards build leaves: shards only
    manifest["shards"] = {"path": "shards", "count": 2}
    (index / "index.json").write_text(json.dumps(manifest))
    for args in (["add", "--images", str(asmk["b"])], ["remove", "--names", "x.jpg"],
                 ["compact"]):
        proc = _d2r(args[0], "--index", str(index), *args[1:])
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().endswith(
            "is sharded (built with --ray-shards); a sharded index cannot be updated: rebuild "
            "it with the new images"), proc.stderr
