"""Trustworthy indexes: a damaged or edited index is refused naming the file, a build
killed at any commit point leaves the old or the new index (never a mix), and a build
never writes into a directory d2r did not make."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from d2r.index import storage
from d2r.index.inverted import InvertedIndex
from d2r.index.layout import IndexMismatchError
from d2r.index.storage import IndexFormatError
from d2r.io.crash import CRASH_EXIT_CODE
from d2r.pipeline.run import run_dataset
from d2r.pipeline.searcher import Searcher

SMALL = ("--config", "rootsift-asmk-star", "--set", "features.rootsift.max_features=80",
         "--set", "codebook.num_words=32")


def _build(dataset: Path, out: Path, *sets: str, crash_at: str | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("D2R_CRASH_AT", None)
    if crash_at:
        env["D2R_CRASH_AT"] = crash_at
    args = [sys.executable, "-m", "d2r.build_index", "--dataset-dir", str(dataset),
            "--out", str(out), *SMALL]
    for value in sets:
        args += ["--set", value]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _ranks(index: Path, dataset: Path, tmp: Path) -> np.ndarray:
    with Searcher(index) as searcher:
        run_dataset(searcher, dataset, tmp, show_progress=False)
    return np.load(tmp / "ranks.npy")


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    """A clean index (seed 0), the same rebuilt with codebook.seed=7, and their rankings."""
    work = tmp_path_factory.mktemp("reliable")
    _build(tiny_dataset, work / "a")
    _build(tiny_dataset, work / "b", "codebook.seed=7")
    ranks = {name: _ranks(work / name, tiny_dataset, work / f"ranks-{name}") for name in "ab"}
    assert not np.array_equal(ranks["a"], ranks["b"])  # the rebuild changes the answer
    return work, ranks


@pytest.fixture
def index(built, tmp_path) -> Path:
    """A fresh copy of the clean index."""
    copy = tmp_path / "index"
    shutil.copytree(built[0] / "a", copy, symlinks=True)
    return copy


def _search(index: Path) -> Path:
    return index / json.loads((index / "index.json").read_text())["search"]


def _flip(file: Path, offset: int, count: int = 64) -> None:
    data = bytearray(file.read_bytes())
    for i in range(offset, min(offset + count, len(data))):
        data[i] ^= 0xA5
    file.write_bytes(bytes(data))


def _refused(index: Path, match: str, error=(IndexFormatError, IndexMismatchError)) -> None:
    with pytest.raises(error, match=match):
        Searcher(index).close()


@pytest.mark.parametrize("array", ["codes", "image_ids", "item_lengths", "offsets"])
def test_flipped_bytes_in_any_array_are_refused(index, array):
    file = _search(index) / f"{array}.npy"
    _flip(file, offset=file.stat().st_size - 64)
    _refused(index, f"{array}.npy does not match the sha256")


def test_random_bytes_and_a_damaged_header_are_refused(index):
    codes = _search(index) / "codes.npy"
    codes.write_bytes(np.random.default_rng(0).bytes(codes.stat().st_size))
    _refused(index, "codes.npy does not match the sha256")
    offsets = _search(index) / "offsets.npy"
    _flip(offsets, offset=10, count=20)  # inside the .npy header
    _refused(index, "does not match the sha256")


def test_swapped_names_are_refused(index):
    names_file = _search(index) / "names.json"
    names = json.loads(names_file.read_text())
    names[0], names[1] = names[1], names[0]
    names_file.write_text(json.dumps(names))
    _refused(index, "names.json does not match the sha256")


@pytest.mark.parametrize("section, key, value", [
    ("images", "max_side", 64), ("features.rootsift", "max_features", 7),
    ("codebook", "seed", 3)])
def test_an_edited_record_is_refused(index, section, key, value):
    record = json.loads((index / "index.json").read_text())
    node = record["config"]
    for part in section.split("."):
        node = node[part]
    node[key] = value
    (index / "index.json").write_text(json.dumps(record))
    _refused(index, f"disagree .*{section}.{key}")


def test_an_edited_count_is_refused(index):
    record = json.loads((index / "index.json").read_text())
    record["num_images"] += 1
    (index / "index.json").write_text(json.dumps(record))
    _refused(index, "disagree")


def test_a_deleted_codebook_is_refused_by_name(index):
    shutil.rmtree(index / "codebooks")
    _refused(index, "codebook .* is missing")


def test_a_deleted_feature_shard_is_refused_at_reranking(index, tiny_dataset):
    for shard in (index / "features" / "shards").iterdir():
        shard.unlink()
    with Searcher(index, overrides=["verification.rerank=5"]) as searcher:
        query = searcher.query(next((tiny_dataset / "jpg").glob("*.jpg")))
        result = searcher.search([query.features])
        with pytest.raises(IndexMismatchError, match="lacks .* indexed images"):
            searcher.rerank([query], result)


def test_large_arrays_are_hashed_once_per_change(tmp_path, monkeypatch):
    """Above SMALL_ARRAY_BYTES an array is hashed on the first open after a change of its
    size / mtime / inode (recorded in .verified.json), not at every open."""
    monkeypatch.setattr(storage, "SMALL_ARRAY_BYTES", 0)
    from d2r.encoding.aggregation import aggregate
    from d2r.encoding.codebook import Codebook

    rng = np.random.default_rng(0)
    codebook = Codebook(rng.normal(size=(8, 16)).astype(np.float32))
    index = InvertedIndex(num_words=8, dim=16, binary=True)
    index.add([aggregate(rng.normal(size=(20, 16)).astype(np.float32), codebook, "asmk_star")
               for _ in range(5)], names=list("abcde"))
    path = index.save(tmp_path / "idx")
    stamp = json.loads((path / storage.STAMP_FILE).read_text())
    assert set(stamp) == {"codes.npy", "image_ids.npy", "item_lengths.npy", "offsets.npy"}
    hashed = []
    real = storage.file_sha256
    monkeypatch.setattr(storage, "file_sha256", lambda f: hashed.append(Path(f).name) or real(f))
    InvertedIndex.load(path)  # written < 2 s ago: a write in the same clock tick is possible
    assert sorted(hashed) == ["codes.npy", "image_ids.npy", "item_lengths.npy", "offsets.npy"]
    past = time.time_ns() - 10**10
    for file in stamp:
        os.utime(path / file, ns=(past, past))  # same bytes, new mtime: hashed once more
    hashed.clear()
    InvertedIndex.load(path)
    assert len(hashed) == 4
    hashed.clear()
    InvertedIndex.load(path)
    assert hashed == []  # the stamp vouches for every array (names.json is hashed as it is read)
    _flip(path / "codes.npy", offset=130, count=8)
    with pytest.raises(IndexFormatError, match="codes.npy does not match the sha256"):
        InvertedIndex.load(path)


@pytest.mark.parametrize("point, survivor", [
    ("extracted", "a"), ("codebook", "a"), ("search-saved", "a"), ("committed", "b")])
def test_a_rebuild_killed_at_each_commit_point(built, index, tiny_dataset, tmp_path, point,
                                                survivor):
    """Rebuilding with another codebook seed and killing it at each commit point leaves the
    old index (before ``index.json`` is replaced) or the new one (after), each equal to its
    clean build; the next run completes the new one and removes every leftover."""
    _, ranks = built
    proc = _build(tiny_dataset, index, "codebook.seed=7", crash_at=point, check=False)
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr
    np.testing.assert_array_equal(_ranks(index, tiny_dataset, tmp_path / "killed"),
                                  ranks[survivor])
    _build(tiny_dataset, index, "codebook.seed=7")
    np.testing.assert_array_equal(_ranks(index, tiny_dataset, tmp_path / "done"), ranks["b"])
    generations = [p.name for p in index.iterdir() if "gen-" in p.name or ".tmp" in p.name]
    assert len(generations) == 1 and generations[0].startswith("gen-")
    assert (index / "search").resolve() == _search(index).resolve()


def test_a_legacy_index_rebuilt_becomes_a_generation(built, tmp_path, tiny_dataset):
    """An index of an earlier release (a real search/ directory, no "search" key) opens,
    and a rebuild replaces it by a generation with a search link."""
    index = tmp_path / "legacy"
    shutil.copytree(built[0] / "a", index, symlinks=True)
    record = json.loads((index / "index.json").read_text())
    current = index / record.pop("search")
    (index / "search").unlink()
    current.rename(index / "search")
    current.parent.rmdir()
    (index / "index.json").write_text(json.dumps(record))
    manifest = json.loads((index / "search" / "manifest.json").read_text())
    manifest["config"].pop("search")
    (index / "search" / "manifest.json").write_text(json.dumps(manifest))
    # the manifest edit changes no hashed file: the legacy layout opens
    np.testing.assert_array_equal(_ranks(index, tiny_dataset, tmp_path / "r1"), built[1]["a"])
    _build(tiny_dataset, index)
    assert (index / "search").is_symlink()
    np.testing.assert_array_equal(_ranks(index, tiny_dataset, tmp_path / "r2"), built[1]["a"])


def test_a_foreign_directory_is_never_touched(tiny_dataset, tmp_path):
    """--out holding files d2r did not write (a search/ folder, someone's index.json) is
    refused before anything is written, and its files stay as they were."""
    out = tmp_path / "photos"
    (out / "search").mkdir(parents=True)
    (out / "search" / "mine.txt").write_text("keep me")
    (out / "index.json").write_text('{"my": "data"}')
    proc = _build(tiny_dataset, out, check=False)
    assert proc.returncode != 0 and "did not write" in proc.stderr
    assert sorted(p.name for p in out.rglob("*")) == ["index.json", "mine.txt", "search"]
    assert (out / "index.json").read_text() == '{"my": "data"}'
    (out / "index.json").unlink()
    proc = _build(tiny_dataset, out, check=False)
    assert proc.returncode != 0 and "is not empty and is not a d2r index" in proc.stderr
    assert (out / "search" / "mine.txt").read_text() == "keep me"


def _verify(index: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "d2r.cli.check", str(index)], capture_output=True,
                          text=True, timeout=300)


def test_verify_names_every_bad_file(index):
    proc = _verify(index)
    assert proc.returncode == 0 and proc.stdout.strip() == f"OK: {index}"
    search = _search(index)
    _flip(search / "codes.npy", offset=200)
    _flip(search / "image_ids.npy", offset=200)
    (search / "offsets.npy").unlink()
    proc = _verify(index)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("BAD: ") for line in lines)
    assert f"{search / 'codes.npy'} does not match the sha256" in lines[0]
    assert f"{search / 'image_ids.npy'} does not match the sha256" in lines[1]
    assert lines[2] == f"BAD: {search / 'offsets.npy'}: missing"


def test_verify_checks_the_feature_store(index):
    for shard in (index / "features" / "shards").iterdir():
        shard.unlink()
    proc = _verify(index)
    assert proc.returncode == 1 and "lacks" in proc.stdout


def test_damaged_features_are_refused_naming_the_shard(index, tiny_dataset):
    """Feature shards carry HDF5 Fletcher-32 checksums: flipped descriptor bytes raise an
    error naming the shard instead of re-ranking with wrong features."""
    import h5py

    shard = next((index / "features" / "shards").iterdir())
    with h5py.File(shard, "r") as f:
        offset = f["descriptors"].id.get_chunk_info(0).byte_offset
    _flip(shard, offset=offset + 100, count=16)
    with Searcher(index, overrides=["verification.rerank=20"]) as searcher:
        query = searcher.query(next((tiny_dataset / "jpg").glob("*.jpg")))
        result = searcher.search([query.features])
        with pytest.raises(OSError, match=f"{shard.name}.* the shard is damaged"):
            searcher.rerank([query], result)


@pytest.mark.parametrize("damage, message", [
    ("codes", "codes.npy does not match the sha256"),
    ("codebook", "codebook .* is missing"),
    ("record", "disagree"),
])
def test_the_query_cli_reports_a_damaged_index_in_one_line(index, tiny_dataset, damage, message):
    """A damaged index ends in one ``error:`` line and exit status 2, never a traceback."""
    import re

    if damage == "codes":
        _flip(_search(index) / "codes.npy", offset=200)
    elif damage == "codebook":
        shutil.rmtree(index / "codebooks")
    else:
        record = json.loads((index / "index.json").read_text())
        record["num_images"] += 1
        (index / "index.json").write_text(json.dumps(record))
    proc = subprocess.run([sys.executable, "-m", "d2r.query", "--index", str(index), "--image",
                           str(next((tiny_dataset / "jpg").glob("*.jpg")))],
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("d2r query: error: ") and re.search(message, lines[0])
