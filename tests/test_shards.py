"""Splitting any index kind into shards (``save_ranges``) and merging the shards' rankings.

No Ray: the shard server class is called in-process, as each Ray actor calls it
(the Ray path itself is in test_distributed.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from d2r.distributed.shards import (ShardedIndex, _ShardServer, merge_topk, read_shards_manifest,
                                    split_index, write_shards_manifest)
from d2r.index.registry import INDEX_KINDS, UnknownIndexKind, index_class, open_index

from _index_items import random_items  # tests/ helper

NUM_IMAGES = 13


def _items(rng, n, *, binary):
    return random_items(rng, n, num_words=24, dim=16, binary=binary, max_words=8)


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _case(kind: str, rng, *, binary: bool = True):
    """(entries of NUM_IMAGES images, queries, search options, constructor) of index ``kind``."""
    if kind == "inverted":
        entries = _items(rng, NUM_IMAGES, binary=binary)
        entries[5] = entries[1]  # exact ties across shards
        queries = [entries[1]] + _items(rng, 3, binary=binary)
        return entries, queries, {"alpha": 3.0, "tau": 0.0, "normalize": "query"}, \
            lambda: index_class(kind)(num_words=24, dim=16, binary=binary)
    if kind == "regional":
        pool = _items(rng, 20, binary=binary)
        entries = [[pool[j] for j in rng.choice(20, size=int(rng.integers(1, 4)), replace=False)]
                   for _ in range(NUM_IMAGES)]
        return entries, pool[:4], {"pooling": "avg"}, \
            lambda: index_class(kind)(num_words=24, dim=16, binary=binary)
    if kind == "global":
        return _unit(rng.standard_normal((NUM_IMAGES, 8))), _unit(rng.standard_normal((4, 8))), {}, \
            lambda: index_class(kind)(8)
    if kind == "global_local":
        return rng.standard_normal((NUM_IMAGES, 2, 8)).astype(np.float32), \
            rng.standard_normal((4, 2, 8)).astype(np.float32), {}, lambda: index_class(kind)(8)
    if kind == "global_regions":
        entries = [_unit(rng.standard_normal((int(rng.integers(1, 4)), 8))) for _ in range(NUM_IMAGES)]
        return entries, [_unit(rng.standard_normal((2, 8))) for _ in range(4)], {}, \
            lambda: index_class(kind)(8)
    raise AssertionError(f"no test case for index kind {kind!r}; add one")


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(folder.glob("*.npy"))}


def _searched_through_shards(shards: Path, queries, k: int, options: dict):
    """What ShardedIndex.search returns, with the shard servers called in-process."""
    manifest = read_shards_manifest(shards)
    parts = [_ShardServer(str(shards / e["path"]), manifest["kind"], e["first_id"], True)
             .search(queries, k, options) for e in manifest["shards"]]
    return merge_topk([p[0] for p in parts], [p[1] for p in parts], k)


@pytest.mark.parametrize("kind", sorted(INDEX_KINDS.builtins))  # plugins of other tests aside
def test_split_and_sharded_search_of_every_kind_is_exact(tmp_path, kind):
    entries, queries, options, new = _case(kind, np.random.default_rng(len(kind)))
    names = [f"img{i}" for i in range(NUM_IMAGES)]
    index = new()
    index.add(entries, names=names)
    index.save(tmp_path / "full", config={"made_by": "test"})
    out = split_index(tmp_path / "full", num_shards=3, out=tmp_path / "shards")
    manifest = read_shards_manifest(out)
    assert manifest["kind"] == kind and manifest["bounds"] == [0, 4, 8, 13]
    for s, (lo, hi) in enumerate([(0, 4), (4, 8), (8, 13)]):
        shard = open_index(out / f"shard-{s:04d}", kind=kind, verify=True)
        assert shard.names == tuple(names[lo:hi]) and len(shard) == hi - lo
        assert shard.config == {"made_by": "test", "shard": {"index": s, "count": 3, "first_id": lo,
                                                             "num_images": hi - lo}}
        alone = new()  # the shard equals the index of its images alone
        alone.add(entries[lo:hi], names=names[lo:hi])
        alone.save(tmp_path / f"alone{s}")
        want, got = _arrays(tmp_path / f"alone{s}"), _arrays(out / f"shard-{s:04d}")
        assert sorted(want) == sorted(got)
        for name in want:
            assert want[name].dtype == got[name].dtype, name
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for k in (3, NUM_IMAGES + 2):
        want = index.search(queries, k=k, **options)
        scores, ids = _searched_through_shards(out, queries, k, options)
        np.testing.assert_array_equal(ids, want.ids)
        np.testing.assert_allclose(scores, want.scores, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("binary", [True, False])
def test_inverted_shards_merge_on_float64_scores(tmp_path, binary):
    entries, queries, _, new = _case("inverted", np.random.default_rng(7), binary=binary)
    index = new()
    index.add(entries)
    index.save(tmp_path / "full")
    split_index(tmp_path / "full", num_shards=4, out=tmp_path / "shards")
    for options in ({}, {"alpha": 1.0, "tau": 0.1, "normalize": "none"}):
        scores64, ids = index.ranking(queries, k=NUM_IMAGES, **options)
        want = index.search(queries, k=NUM_IMAGES, **options)
        assert scores64.dtype == np.float64
        np.testing.assert_array_equal(ids, want.ids)
        np.testing.assert_array_equal(scores64.astype(np.float32), want.scores)
        scores, ids = _searched_through_shards(tmp_path / "shards", queries, NUM_IMAGES, options)
        np.testing.assert_array_equal(ids, want.ids)
        if binary:  # popcount + table lookup: bit-identical
            np.testing.assert_array_equal(scores, want.scores)


def test_save_ranges_writes_any_sub_range(tmp_path):
    entries, _, _, new = _case("regional", np.random.default_rng(3))
    index = new()
    index.add(entries)
    paths = index.save_ranges([2, 2, 6], [tmp_path / "empty", tmp_path / "part"],
                              configs=[{"a": 1}, {"b": 2}])
    assert paths == [tmp_path / "empty", tmp_path / "part"]
    assert len(open_index(tmp_path / "empty")) == 0
    part = open_index(tmp_path / "part")
    alone = new()
    alone.add(entries[2:6])
    np.testing.assert_array_equal(part.item_to_image, alone.item_to_image)
    assert part.config == {"b": 2} and part.num_items == alone.num_items
    for bounds, match in (([0, 14], "within"), ([3, 1], "within"), ([0, 2, 4], "one more")):
        with pytest.raises(ValueError, match=match):
            index.save_ranges(bounds, [tmp_path / "x"])
    with pytest.raises(FileExistsError):
        index.save_ranges([0, 1], [tmp_path / "part"])


def test_unknown_kind_is_refused_by_name(tmp_path):
    index = index_class("global")(4)
    index.add(np.eye(4, dtype=np.float32))
    index.save(tmp_path / "full")
    split_index(tmp_path / "full", num_shards=2, out=tmp_path / "shards")
    for manifest in (tmp_path / "full" / "manifest.json", tmp_path / "shards" / "shards.json"):
        record = json.loads(manifest.read_text())
        record["kind"] = "hnsw_from_the_future"
        manifest.write_text(json.dumps(record))
    with pytest.raises(UnknownIndexKind, match="hnsw_from_the_future"):
        split_index(tmp_path / "full", num_shards=2, out=tmp_path / "again")
    with pytest.raises(UnknownIndexKind, match="hnsw_from_the_future"):
        read_shards_manifest(tmp_path / "shards")
    with pytest.raises(UnknownIndexKind, match="hnsw_from_the_future"):
        ShardedIndex(tmp_path / "shards")  # refused before any Ray actor starts
    with pytest.raises(UnknownIndexKind, match="hnsw_from_the_future"):
        write_shards_manifest(tmp_path, kind="hnsw_from_the_future", bounds=np.array([0, 1]))
