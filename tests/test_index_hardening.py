"""Hardening of the index and its inputs (issue 28): paths in ``index.json`` confined to the
index, bounded YAML, readers that meet a committing writer, builds that never index d2r's
own files, ``verify`` reading every chunk of every feature shard, and plain messages for a
file given as a folder and a folder given as an image."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest

from d2r.cli import check as verify_cli
from d2r.encoding.codebook import Codebook
from d2r.config import (CodebookConfig, ConfigError, MAX_YAML_VALUES, VerificationConfig,
                        load_config)
from d2r.index import layout
from d2r.index.layout import IndexManifestError, read_manifest
from d2r.index.storage import IndexFormatError
from d2r.io.feature_store import FeatureStore
from d2r.io.images import ImageError, load_image_with_info
from d2r.pipeline import searcher as searcher_module
from d2r.pipeline.build import build_index
from d2r.pipeline.searcher import Searcher
from d2r.index.quantizer import attach_graph, save_graph
from d2r.report.query_page import write_result_page
from d2r.pipeline.sources import ImageSource
from d2r.types import LocalFeatures

SETS = ("features.rootsift.max_features=80", "codebook.num_words=32")
SMALL = ["--config", "rootsift-asmk-star", *(arg for s in SETS for arg in ("--set", s))]


def _d2r(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "d2r", *args], capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def photos(tiny_dataset, tmp_path_factory) -> Path:
    """A folder of 16 photos with its index inside it (``photos/index``), built by the CLI."""
    folder = tmp_path_factory.mktemp("hardening") / "photos"
    folder.mkdir()
    for image in sorted((tiny_dataset / "jpg").glob("synth_db_*.jpg")):
        shutil.copy(image, folder)
    _d2r("build-index", "--images", str(folder), "--out", str(folder / "index"), *SMALL)
    return folder


@pytest.fixture
def index(photos, tmp_path) -> Path:
    """A fresh copy of the index of ``photos``."""
    copy = tmp_path / "index"
    shutil.copytree(photos / "index", copy, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def query_image(tiny_dataset) -> Path:
    return sorted((tiny_dataset / "jpg").glob("synth_q_*.jpg"))[0]


@pytest.fixture
def in_process_cli():
    """Run a CLI's ``main`` here: the logging set-up it makes is undone afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _edit(index: Path, change) -> None:
    record = json.loads((index / "index.json").read_text())
    change(record)
    (index / "index.json").write_text(json.dumps(record))


def _search(index: Path) -> Path:
    return index / read_manifest(index)["search"]


# -- 6. paths in index.json stay inside the index ------------------------------------------


@pytest.mark.parametrize("where", ["absolute", "parent", "symlink"])
def test_a_codebook_path_leaving_the_index_is_refused_before_it_is_read(index, tmp_path,
                                                                        monkeypatch, where):
    """A codebook outside the index (even the very one it was built with: same SHA-256) is
    refused naming ``codebook.path`` and ``index.json``; nothing at the path is opened."""
    inner = index / read_manifest(index)["codebook"]["path"]
    outside = tmp_path / "elsewhere" / "codebook"
    shutil.copytree(inner, outside)
    if where == "symlink":
        os.symlink(outside, index / "codebooks" / "linked")
    path = {"absolute": str(outside), "parent": os.path.relpath(outside, index),
            "symlink": "codebooks/linked"}[where]
    _edit(index, lambda record: record["codebook"].update(path=path))
    opened = []
    monkeypatch.setattr(searcher_module, "open_codebook", opened.append)
    with pytest.raises(IndexManifestError) as error:
        Searcher(index)
    assert str(error.value).startswith(f"{index / 'index.json'}: codebook.path ")
    assert ("through a symbolic link" if where == "symlink" else
            "must be a path inside the index") in str(error.value)
    assert opened == []


def test_a_built_index_keeps_a_loaded_codebook_inside_it(photos, tmp_path):
    """``codebook.path`` pointing outside the index: the build keeps a copy inside, records
    that, and the index opens after the original is gone."""
    original = tmp_path / "mine"
    shutil.copytree(photos / "index" / read_manifest(photos / "index")["codebook"]["path"],
                    original)
    out = tmp_path / "index"
    config = load_config("rootsift-asmk-star", overrides=[*SETS, f"codebook.path={original}"])
    build_index(config, ImageSource.from_directory(photos), out, show_progress=False)
    shutil.rmtree(original)
    record = read_manifest(out)["codebook"]
    assert record["path"].startswith("codebooks/")
    with Searcher(out) as searcher:
        assert searcher.codebook.sha256 == record["sha256"]


def _graph_record(tmp_path: Path) -> tuple[Codebook, dict, Path]:
    """A codebook and the record of its HNSW graph written into ``tmp_path / "built"``."""
    centroids = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    codebook = Codebook(centroids)
    config = CodebookConfig(num_words=64, quantization="approximate", hnsw_m=8,
                            ef_construction=16)
    built = tmp_path / "built"
    return codebook, save_graph(codebook, config, built), built


@pytest.mark.parametrize("where", ["absolute", "parent", "symlink"])
def test_a_quantizer_file_leaving_the_index_is_refused_before_it_is_read(tmp_path, monkeypatch,
                                                                         where):
    """``codebook.quantizer.file`` outside the index (with the right SHA-256) is refused naming
    the key and ``index.json``, before faiss deserializes anything."""
    codebook, record, built = _graph_record(tmp_path)
    index = tmp_path / "index"
    index.mkdir()
    graph = built / record["file"]
    if where == "symlink":
        os.symlink(built / "codebooks", index / "codebooks")
    file = {"absolute": str(graph), "parent": os.path.relpath(graph, index),
            "symlink": record["file"]}[where]
    read = []
    monkeypatch.setattr(faiss, "deserialize_index", read.append)
    with pytest.raises(IndexManifestError, match="codebook.quantizer.file") as error:
        attach_graph(codebook, {**record, "file": file}, index)
    assert str(error.value).startswith(f"{index / 'index.json'}: ")
    assert read == []


def test_a_symbolic_link_staying_inside_the_index_is_followed(tmp_path):
    codebook, record, built = _graph_record(tmp_path)
    (built / "codebooks").rename(built / "kept")
    os.symlink("kept", built / "codebooks")
    fresh = Codebook(codebook.centroids)
    attach_graph(fresh, record, built)
    assert ("approximate", 8, 16) in fresh._quantizers  # the stored graph, not a new one


# -- 7. bounded YAML and error text ---------------------------------------------------------


def _alias_bomb(levels: int) -> str:
    """"Billion laughs": ``levels`` lists of 9 aliases of the list before, under a real key."""
    lists = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lists += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "search:\n  top_k: [" + ", ".join(lists) + "]\n"


def test_a_yaml_alias_bomb_is_refused_at_once_in_one_short_line(tmp_path, capsys,
                                                                in_process_cli):
    from d2r.cli.build_index import main as build_index_main

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(7))
    assert len(bomb.read_bytes()) < 1024
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        build_index_main(["--images", str(tmp_path), "--out", str(tmp_path / "index"),
                          "--config-file", str(bomb)])
    assert time.perf_counter() - start < 5
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"d2r build-index: error: config file {bomb} expands to more than {MAX_YAML_VALUES} "
        f"values (YAML aliases repeating values); a d2r config holds a few hundred\n")


def test_aliases_within_the_limit_still_work(tmp_path):
    config = tmp_path / "shared.yaml"
    config.write_text("features:\n  rootsift: {max_features: &n 50}\ncodebook: {num_words: *n}\n")
    loaded = load_config("rootsift-asmk-star", files=[config])
    assert loaded.features.rootsift.max_features == loaded.codebook.num_words == 50


@pytest.mark.parametrize("value, message", [
    ("&a [*a]", "expands to more than"),   # a recursive alias never ends
    ("[" * 3000, "nests values too deeply"),
    ("*nowhere", "is not valid YAML (line 1, column 1: found undefined alias 'nowhere')"),
])
def test_bad_yaml_in_an_override_is_one_short_line(value, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[f"search.top_k={value}"])
    text = str(error.value)
    assert message in text and "\n" not in text and len(text) < 400


def test_errors_embed_at_most_a_short_text_of_a_value():
    """A huge value (no alias: 5000 items) is named in a bounded message."""
    items = ", ".join(["123456"] * 5000)
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[f"search.top_k=[{items}]"])
    text = str(error.value)
    assert text.startswith("search.top_k: expected an integer, got [123456, 123456, ")
    assert len(text) < 300


# -- 9. readers meet writers ----------------------------------------------------------------


def test_a_generation_removed_while_opening_is_followed_to_the_new_one(index, photos,
                                                                        monkeypatch):
    """A rebuild commits and removes the generation a reader read in ``index.json`` before
    the reader opens its arrays: the reader opens the new generation."""
    old = read_manifest(index)["search"]
    real = searcher_module.index_class
    rebuilt = []

    def rebuild_then(kind):
        if not rebuilt:
            config = load_config("rootsift-asmk-star", overrides=[*SETS, "codebook.seed=7"])
            rebuilt.append(build_index(config, ImageSource.from_directory(photos), index,
                                       show_progress=False))
        return real(kind)

    monkeypatch.setattr(searcher_module, "index_class", rebuild_then)
    with Searcher(index) as searcher:
        assert rebuilt and not (index / old).exists()
        assert searcher.manifest == read_manifest(index) and searcher.manifest["search"] != old
        assert searcher.config.codebook.seed == 7 and len(searcher.names) == 16


def test_a_damaged_generation_is_refused_without_retrying(index, monkeypatch):
    """``index.json`` unchanged: a missing array is the index's own damage, reported at once."""
    (_search(index) / "codes.npy").unlink()
    reads = []
    real = layout.read_manifest
    monkeypatch.setattr(layout, "read_manifest", lambda path: reads.append(path) or real(path))
    with pytest.raises(IndexFormatError, match="missing array file .*codes.npy"):
        Searcher(index)
    assert len(reads) == 2  # the open, and the check that index.json did not change


def test_readers_never_fail_while_rebuilds_commit(photos, tmp_path, query_image):
    """Real ``d2r build-index`` rebuilds (subprocesses, alternating codebooks) while this
    process opens and searches the index again and again: every open succeeds."""
    index = tmp_path / "index"
    shutil.copytree(photos / "index", index, symlinks=True)
    with Searcher(index) as searcher:
        features = [searcher.query(query_image).features]
    rebuilds: list[subprocess.CompletedProcess] = []

    def rebuild() -> None:
        for seed in (1, 0, 1, 0):
            rebuilds.append(_d2r("build-index", "--images", str(photos), "--out", str(index),
                                 *SMALL, "--set", f"codebook.seed={seed}", check=False))

    writer = threading.Thread(target=rebuild)
    writer.start()
    failures, generations, opens = [], set(), 0
    while writer.is_alive():
        try:
            with Searcher(index) as searcher:
                result = searcher.search(features, k=5)
                generations.add(searcher.manifest["search"])
            assert result.ids.shape == (1, 5) and (result.ids >= 0).all()
        except Exception as exc:  # every failure is counted, none expected
            failures.append(repr(exc))
        opens += 1
    writer.join()
    assert [proc.returncode for proc in rebuilds] == [0] * 4, rebuilds[-1].stderr
    assert failures == [] and opens >= 20 and len(generations) >= 3


# -- 10. a build never takes d2r's own files as inputs --------------------------------------


def test_a_rebuild_never_indexes_its_own_outputs(photos, tmp_path, query_image):
    """``build-index --images P --out P/index``, a query report written inside the index and
    one beside the photos, an upload in the index: the rebuild indexes the 16 photos only
    and says what it left out."""
    work = tmp_path / "photos"
    shutil.copytree(photos, work, symlinks=True)
    index = work / "index"
    _d2r("query", "--index", str(index), "--image", str(query_image), "--out",
         str(index / "res"), "--report")
    (index / "uploads").mkdir()
    shutil.copy(query_image, index / "uploads" / "upload.jpg")
    write_result_page(work / "res" / "report", query=query_image, box=None,
                      rows=[{"rank": 1, "name": "synth_db_000000.jpg", "score": 1.0,
                             "verified": False}],
                      locate=lambda name: work / name, verification=VerificationConfig(),
                      index=str(index))
    inside_index = sorted(index.rglob("*.jpg"))
    in_report = sorted((work / "res" / "report").rglob("*.jpg"))
    assert len(inside_index) >= 2 and len(in_report) == 2
    proc = _d2r("build-index", "--images", str(work), "--out", str(index), *SMALL)
    assert f"left out {len(inside_index)} images inside {index} (a d2r index: " in proc.stderr
    assert (f"left out 2 images inside {work / 'res' / 'report'} (a d2r result page: "
            in proc.stderr)
    assert read_manifest(index)["num_images"] == 16
    with Searcher(index) as searcher:
        assert sorted(searcher.names) == sorted(p.name for p in photos.glob("*.jpg"))


def test_lists_and_folders_inside_an_index_are_left_out(index, photos, tmp_path, caplog):
    (index / "uploads").mkdir()
    shutil.copy(next(photos.glob("*.jpg")), index / "uploads" / "u.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{next(photos.glob('*.jpg'))}\n{index / 'uploads' / 'u.jpg'}\n")
    with caplog.at_level(logging.WARNING, logger="d2r.pipeline.sources"):
        source = ImageSource.from_list(listing)
    assert len(source) == 1 and not source.names[0].endswith("u.jpg")
    assert f"left out 1 image inside {index.resolve()} (a d2r index: " in caplog.text
    with pytest.raises(ValueError, match=f"image directory {index / 'uploads'} is inside "
                                         f"{index.resolve()}, a d2r index"):
        ImageSource.from_directory(index / "uploads")


# -- 13. verify reads every chunk of every shard --------------------------------------------


def _flip_block(file: Path, offset: int, size: int = 4096) -> None:
    with open(file, "r+b") as f:
        f.seek(offset)
        block = bytearray(f.read(size))
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in block))


def test_verify_finds_a_flipped_block_in_the_last_image_of_a_shard(index, capsys,
                                                                   in_process_cli):
    """A 4 KiB block flipped inside a descriptor chunk of the shard's last image (the first
    image's chunks intact): ``d2r check`` prints one ``BAD:`` line naming the shard, exit 1."""
    assert verify_cli.main([str(index)]) == 0
    assert capsys.readouterr().out == f"OK: {index}\n"
    shard = index / "features" / "shards" / "000000.h5"
    with h5py.File(shard, "r") as f:
        offsets = f["offsets"][()]
        chunks = f["descriptors"].id
        infos = [chunks.get_chunk_info(i) for i in range(chunks.get_num_chunks())]
    assert len(offsets) == 17  # 16 images in this shard
    last = max((c for c in infos if c.chunk_offset[0] <= offsets[-2]),
               key=lambda c: c.chunk_offset)
    assert last.chunk_offset[0] >= offsets[1] and last.size >= 8192
    _flip_block(shard, (last.byte_offset + last.size // 2) // 4096 * 4096)
    assert verify_cli.main([str(index)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"BAD: {shard}: damaged feature shard (")


def test_the_store_check_reads_every_shard(tmp_path):
    rng = np.random.default_rng(0)
    with FeatureStore.open(tmp_path / "store", mode="a", shard_entries=2) as store:
        for i in range(6):
            store.put(f"{i}.jpg", LocalFeatures(rng.uniform(0, 9, (4000, 2)),
                                                rng.normal(size=(4000, 8)), np.ones(4000),
                                                np.ones(4000), (10, 10)))
    shards = sorted((tmp_path / "store" / "shards").glob("*.h5"))
    assert len(shards) == 3
    with h5py.File(shards[2], "r") as f:
        info = f["scores"].id.get_chunk_info(0)
    _flip_block(shards[2], info.byte_offset, 64)
    with FeatureStore.open(tmp_path / "store") as store:
        problems = store.check()
    assert len(problems) == 1 and problems[0].startswith(f"{shards[2]}: damaged feature shard")


# -- 16. a file given as a folder, a folder given as an image ------------------------------


def test_a_file_given_as_the_images_folder_is_named_a_file(photos):
    photo = next(photos.glob("*.jpg"))
    with pytest.raises(ValueError, match=f"^{photo} is a file, not a directory of images: .*"
                                         f"--image-list"):
        ImageSource.from_directory(photo)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageSource.from_directory(photos / "nothing")


def test_an_image_list_that_is_a_folder_or_an_image_is_named_so(photos):
    with pytest.raises(ValueError, match=f"^image list {photos} is a directory: .*--images$"):
        ImageSource.from_list(photos)
    photo = next(photos.glob("*.jpg"))
    with pytest.raises(ValueError, match=f"^image list {photo} is an image, not a list: "):
        ImageSource.from_list(photo)


def test_a_folder_given_as_an_image_is_named_a_folder(photos, index, capsys, in_process_cli):
    from d2r.cli import query as query_cli

    with pytest.raises(ImageError, match=f"^{photos}: is a directory, not an image file$"):
        load_image_with_info(photos)
    with pytest.raises(SystemExit) as exit_:
        query_cli.main(["--index", str(index), "--image", f"{photos}/"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"d2r query: error: {photos}/: is a directory, not an image file\n")
