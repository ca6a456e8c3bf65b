"""Tests for d2r.io.feature_store, including SIGKILL of a writer process."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from d2r.io.feature_store import FeatureStore, StoreConfigError
from d2r.types import LocalFeatures

_WRITER_PATH = Path(__file__).with_name("_store_writer.py")
_spec = importlib.util.spec_from_file_location("_store_writer", _WRITER_PATH)
writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer)


def _feats(n: int, dim: int = 4, seed: int = 0, size=(64, 48)) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    return LocalFeatures(
        locations=rng.uniform(0, 40, (n, 2)),
        descriptors=rng.normal(size=(n, dim)),
        scales=rng.uniform(1, 2, n),
        scores=rng.uniform(0, 1, n),
        image_size=size,
    )


def _assert_same(a: LocalFeatures, b: LocalFeatures) -> None:
    for field in ("locations", "descriptors", "scales", "scores"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype == np.float32
        np.testing.assert_array_equal(x, y, err_msg=field)
    assert a.image_size == b.image_size


def _shards(store: Path) -> list[str]:
    return sorted(f for f in os.listdir(store / "shards") if f.endswith(".h5"))


def test_round_trip_with_zero_features(tmp_path):
    items = {"a.jpg": _feats(5, seed=1), "empty.jpg": LocalFeatures.empty(4, (10, 20)), "b.jpg": _feats(3, seed=2)}
    with FeatureStore.open(tmp_path / "s", mode="a", config={"k": 1}, shard_entries=2) as fs:
        for name, feat in items.items():
            fs.put(name, feat)
        assert "a.jpg" in fs and len(fs) == 3
        _assert_same(fs.get("b.jpg"), items["b.jpg"])  # still buffered
    with FeatureStore.open(tmp_path / "s") as fs:
        assert fs.names() == list(items)
        assert fs.dim == 4 and fs.dtype == "float32" and fs.config == {"k": 1}
        for name, feat in items.items():
            _assert_same(fs.get(name), feat)
        empty = fs.get("empty.jpg")
        assert len(empty) == 0 and empty.descriptors.shape == (0, 4) and empty.image_size == (10, 20)
        got = fs.get_many(["b.jpg", "a.jpg", "empty.jpg"])
        for name, feat in zip(["b.jpg", "a.jpg", "empty.jpg"], got):
            _assert_same(feat, items[name])
        assert fs.missing(["x.jpg", "a.jpg", "y.jpg"]) == ["x.jpg", "y.jpg"]
        with pytest.raises(KeyError, match="nope.jpg"):
            fs.get("nope.jpg")
        with pytest.raises(KeyError, match="2 image"):
            fs.get_many(["a.jpg", "n1", "n2"])
        with pytest.raises(PermissionError, match="read-only"):
            fs.put("c.jpg", items["a.jpg"])
    assert len(_shards(tmp_path / "s")) == 2


def test_float16_storage(tmp_path):
    feat = _feats(6, dim=16, seed=3)
    with FeatureStore.open(tmp_path / "s", mode="a", dtype="float16") as fs:
        fs.put("x", feat)
        buffered = fs.get("x")
    with FeatureStore.open(tmp_path / "s") as fs:
        assert fs.dtype == "float16"
        stored = fs.get("x")
    assert stored.descriptors.dtype == np.float32
    np.testing.assert_allclose(stored.descriptors, feat.descriptors, rtol=1e-3, atol=1e-3)
    assert not np.array_equal(stored.descriptors, feat.descriptors)  # really rounded
    _assert_same(buffered, stored)  # same values before and after the commit
    np.testing.assert_array_equal(stored.locations, feat.locations)
    with FeatureStore.open(tmp_path / "s", mode="a") as fs:
        big = LocalFeatures([[0, 0]], [[1e6] * 16], [1], [1], (1, 1))
        with pytest.raises(ValueError, match="float16 range"):
            fs.put("big", big)


def test_odd_names(tmp_path):
    odd = ["dir/sub dir/img 1.jpg", "/leading/slash.png", "..", "日本語/写真.png", "tab\there", "new\nline", "%2F.jpg"]
    with FeatureStore.open(tmp_path / "s", mode="a") as fs:
        for i, name in enumerate(odd):
            fs.put(name, _feats(i, seed=i))
        for bad in ["", "nul\x00char", "surrogate\udcff", 5]:
            with pytest.raises(ValueError, match="name"):
                fs.put(bad, _feats(1))
        with pytest.raises(ValueError, match="already"):
            fs.put("..", _feats(1))
    with FeatureStore.open(tmp_path / "s") as fs:
        assert fs.names() == odd
        for i, name in enumerate(odd):
            _assert_same(fs.get(name), _feats(i, seed=i))


def test_config_dim_and_dtype_mismatch_refused(tmp_path):
    store = tmp_path / "s"
    config = {"model": "delf", "pyramid": {"scales": [0.5, 1.0], "max": 1000}}
    with FeatureStore.open(store, mode="a", config=config) as fs:
        fs.put("a", _feats(2, dim=4))
        with pytest.raises(ValueError, match="8-D.*4-D"):
            fs.put("b", _feats(2, dim=8))
    changed = {"model": "delf", "pyramid": {"scales": [0.5, 1.0], "max": 500}}
    with pytest.raises(StoreConfigError, match=r"pyramid\.max is 1000 in the store but 500 now"):
        FeatureStore.open(store, mode="a", config=changed)
    with pytest.raises(StoreConfigError, match="extra"):
        FeatureStore.open(store, mode="a", config={**config, "extra": 1})
    with pytest.raises(StoreConfigError, match="holds 4-D descriptors, asked for 128-D"):
        FeatureStore.open(store, mode="a", dim=128)
    with pytest.raises(StoreConfigError, match="float32, asked for float16"):
        FeatureStore.open(store, mode="a", dtype="float16")
    with pytest.raises(TypeError, match="JSON"):
        FeatureStore.open(tmp_path / "t", mode="a", config={"f": object()})
    with FeatureStore.open(store, mode="a") as fs:  # no config given: the recorded one is kept
        assert fs.config == config


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature store"):
        FeatureStore.open(tmp_path / "missing")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="a.jpg"):
        FeatureStore.open(images, mode="a")
    assert sorted(os.listdir(images)) == ["a.jpg"]
    with pytest.raises(ValueError, match="mode"):
        FeatureStore.open(tmp_path / "s", mode="w")


def test_single_writer_and_concurrent_reader(tmp_path):
    store = tmp_path / "s"
    with FeatureStore.open(store, mode="a", shard_entries=1) as fs:
        fs.put("a", _feats(1))
        with pytest.raises(RuntimeError, match="already open for writing"):
            FeatureStore.open(store, mode="a")
        with FeatureStore.open(store) as reader:
            assert reader.names() == ["a"]
            _assert_same(reader.get("a"), _feats(1))
        fs.put("b", _feats(2))
    with FeatureStore.open(store, mode="a") as fs:
        assert fs.names() == ["a", "b"]


def test_leftovers_and_bad_catalog_recovered(tmp_path, caplog):
    store = tmp_path / "s"
    with FeatureStore.open(store, mode="a", shard_entries=2) as fs:
        for i in range(5):
            fs.put(f"n{i}", _feats(i, seed=i))
    (store / "shards" / "000099.h5.tmp").write_bytes(b"half-written shard")
    (store / "catalog.h5").write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING, logger="d2r.io.feature_store"):
        with FeatureStore.open(store) as fs:
            assert fs.names() == [f"n{i}" for i in range(5)]
            _assert_same(fs.get("n4"), _feats(4, seed=4))
    assert any("catalog" in r.message for r in caplog.records)
    with FeatureStore.open(store, mode="a") as fs:
        fs.put("n5", _feats(5, seed=5))
    assert not any(f.endswith(".tmp") for f in os.listdir(store / "shards"))
    # A shard committed after the catalog was written is still found.
    catalog = (store / "catalog.h5").read_bytes()
    with FeatureStore.open(store, mode="a") as fs:
        fs.put("n6", _feats(6, seed=6))
    (store / "catalog.h5").write_bytes(catalog)
    with FeatureStore.open(store) as fs:
        assert fs.names() == [f"n{i}" for i in range(7)]
        _assert_same(fs.get("n6"), _feats(6, seed=6))


def _assert_stores_equal(a: Path, b: Path) -> None:
    with FeatureStore.open(a) as fa, FeatureStore.open(b) as fb:
        assert sorted(fa.names()) == sorted(fb.names())
        assert fa.config == fb.config and fa.dim == fb.dim and fa.dtype == fb.dtype
        for name in fa.names():
            _assert_same(fa.get(name), fb.get(name))


def _check_intact(store: Path, count: int, dtype: str = "float32") -> int:
    """Check every entry present in ``store`` against the writer's features; return how many."""
    expected = {name: i for i, name in enumerate(writer.names(count))}
    with FeatureStore.open(store) as fs:
        for name in fs.names():
            want = writer.features(expected[name])
            if dtype == "float16":
                want = LocalFeatures(want.locations, want.descriptors.astype(np.float16), want.scales,
                                     want.scores, want.image_size)
            _assert_same(fs.get(name), want)
        return len(fs)


def _start_writer(store: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(_WRITER_PATH), str(store), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early ({proc.returncode}): {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("writer made no progress")
        time.sleep(0.005)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    proc.stderr.close()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path, dtype):
    count = 40
    store = tmp_path / "killed"
    proc = _start_writer(store, "--count", str(count), "--sleep", "0.02", "--shard-entries", "3", "--dtype", dtype)
    _wait_for(lambda: (store / "shards").is_dir() and len(_shards(store)) >= 3, proc)
    _kill(proc)
    present = _check_intact(store, count, dtype)
    assert 9 <= present < count
    writer.write(store, count=count, shard_entries=5, dtype=dtype)
    assert _check_intact(store, count, dtype) == count
    reference = tmp_path / "reference"
    writer.write(reference, count=count, dtype=dtype)
    _assert_stores_equal(store, reference)


def test_sigkill_during_commit_leaves_shard_absent(tmp_path):
    count = 12
    store = tmp_path / "killed"
    marker = tmp_path / "stalled"
    proc = _start_writer(store, "--count", str(count), "--shard-entries", "4", "--stall-commit", "2",
                         "--marker", str(marker))
    _wait_for(marker.exists, proc)
    _kill(proc)
    assert Path(marker.read_text()).exists()  # the second shard was fully written but not committed
    assert _check_intact(store, count) == 4
    writer.write(store, count=count)
    reference = tmp_path / "reference"
    writer.write(reference, count=count)
    _assert_stores_equal(store, reference)
    assert not any(f.endswith(".tmp") for f in os.listdir(store / "shards"))


def test_get_many_dense_sparse_and_buffered(tmp_path):
    feats = {f"n{i}": _feats(i % 4 * 3, seed=i) for i in range(10)}
    with FeatureStore.open(tmp_path / "s", mode="a", shard_entries=8) as fs:
        for name, feat in feats.items():
            fs.put(name, feat)
        order = ["n9", "n0", "n7", "n1", "n8", "n2", "n3"]  # n8, n9 still buffered
        for name, feat in zip(order, fs.get_many(order)):
            _assert_same(feat, feats[name])
    with FeatureStore.open(tmp_path / "s") as fs:
        for order in (["n7", "n0"], ["n1", "n2", "n3", "n4"], list(feats)[::-1], []):
            for name, feat in zip(order, fs.get_many(order), strict=True):
                _assert_same(feat, feats[name])


def test_half_to_float32_is_exact_for_every_float16():
    from d2r.io.feature_store import half_to_float32

    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    got = half_to_float32(every)
    assert got.dtype == np.float32 and got.shape == (256, 256)
    np.testing.assert_array_equal(got, every.astype(np.float32))


# ------------------------------------------------------------------ adopting shards


def _store(path: Path, items: dict[str, LocalFeatures], **kwargs) -> None:
    with FeatureStore.open(path, mode="a", config={"k": 1}, shard_entries=2, **kwargs) as fs:
        for name, feat in items.items():
            fs.put(name, feat)


def test_shards_lists_files_and_names(tmp_path):
    items = {f"i{n}": _feats(n + 1, seed=n) for n in range(5)}
    _store(tmp_path / "s", items)
    with FeatureStore.open(tmp_path / "s") as fs:
        shards = fs.shards()
    assert [f.name for f, _ in shards] == _shards(tmp_path / "s")
    assert [names for _, names in shards] == [["i0", "i1"], ["i2", "i3"], ["i4"]]
    assert FeatureStore.exists(tmp_path / "s") and not FeatureStore.exists(tmp_path / "none")


def test_adopt_shard_links_it_and_updates_the_catalog(tmp_path):
    a = {f"a{n}": _feats(3, seed=n) for n in range(3)}
    b = {f"b{n}": _feats(2, seed=10 + n) for n in range(2)}
    _store(tmp_path / "src", a, dtype="float16")
    _store(tmp_path / "dst", b, dtype="float16")
    with FeatureStore.open(tmp_path / "src") as src, \
            FeatureStore.open(tmp_path / "dst", mode="a") as dst:
        adopted = [dst.adopt_shard(src, file) for file, _ in src.shards()]
        assert adopted == [["a0", "a1"], ["a2"]]
        _assert_same(dst.get("a1"), src.get("a1"))  # served before the catalog is written
        with pytest.raises(ValueError, match="already in"):
            dst.adopt_shard(src, src.shards()[0][0])
        with pytest.raises(ValueError, match="not a committed shard"):
            dst.adopt_shard(src, tmp_path / "src" / "shards" / "999999.h5")
    files = _shards(tmp_path / "dst")
    assert files == ["000000.h5", "000001.h5", "000002.h5"]
    assert os.stat(tmp_path / "dst" / "shards" / files[1]).st_ino == \
        os.stat(tmp_path / "src" / "shards" / "000000.h5").st_ino  # a hard link, no copy
    with FeatureStore.open(tmp_path / "dst") as dst, FeatureStore.open(tmp_path / "src") as src:
        assert sorted(dst.names()) == sorted([*a, *b])
        for name in a:
            _assert_same(dst.get(name), src.get(name))
    with h5py.File(tmp_path / "dst" / "catalog.h5", "r") as catalog:  # written on close
        assert sorted(catalog["shards"].asstr()[()]) == files


def test_adopt_shard_refuses_another_config_or_a_reader(tmp_path):
    _store(tmp_path / "src", {"x": _feats(2)})
    with FeatureStore.open(tmp_path / "other", mode="a", config={"k": 2}) as fs:
        fs.put("y", _feats(2))
    with FeatureStore.open(tmp_path / "src") as src:
        file = src.shards()[0][0]
        with FeatureStore.open(tmp_path / "other", mode="a") as other, \
                pytest.raises(StoreConfigError, match="another config"):
            other.adopt_shard(src, file)
        with FeatureStore.open(tmp_path / "other") as reader, \
                pytest.raises(PermissionError, match="read-only"):
            reader.adopt_shard(src, file)
