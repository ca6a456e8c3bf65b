"""Regional search: items are regions, image score pools region scores (max / avg)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from d2r.encoding.aggregation import similarity_matrix
from d2r.index.regional import RegionalIndex
from d2r.index.storage import IndexFormatError
from d2r.types import AggregatedImage

K = 40


def random_item(rng, dim, binary, num_words):
    words = np.sort(rng.choice(K, size=num_words, replace=False)).astype(np.int32)
    if binary:
        return AggregatedImage(words, np.packbits(rng.random((num_words, dim)) > 0.5, axis=1), dim, True)
    vectors = rng.standard_normal((num_words, dim)).astype(np.float32)
    if num_words:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return AggregatedImage(words, vectors, dim, False)


def random_images(rng, n, dim, binary):
    """Each image: 1-4 regions, some without words."""
    return [[random_item(rng, dim, binary, 0 if rng.random() < 0.15 else int(rng.integers(1, 25)))
             for _ in range(int(rng.integers(1, 5)))] for _ in range(n)]


def brute_force(queries, images, pooling, **kw):
    items = [r for regions in images for r in regions]
    owner = np.repeat(np.arange(len(images)), [len(r) for r in images])
    item_scores = similarity_matrix(queries, items, **kw).astype(np.float64)
    out = np.zeros((len(queries), len(images)))
    for d in range(len(images)):
        block = item_scores[:, owner == d]
        out[:, d] = block.max(axis=1) if pooling == "max" else block.mean(axis=1)
    return out


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("normalize", ["both", "query"])
def test_pooled_scores_match_brute_force(binary, pooling, normalize):
    rng = np.random.default_rng(3 + binary)
    images = random_images(rng, 30, 32, binary)
    queries = [random_item(rng, 32, binary, n) for n in (20, 5, 0)]
    index = RegionalIndex(num_words=K, dim=32, binary=binary)
    index.add(images[:11], names=[f"i{i}" for i in range(11)])
    index.add(images[11:], names=[f"i{i}" for i in range(11, 30)])
    expected = brute_force(queries, images, pooling, normalize=normalize)
    got = np.stack([index.score_images(q, pooling=pooling, normalize=normalize) for q in queries])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    result = index.search(queries, k=12, pooling=pooling, normalize=normalize)
    for qi in range(len(queries)):
        order = np.lexsort((np.arange(30), -got[qi]))[:12]
        np.testing.assert_array_equal(result.ids[qi], order)
    assert result.names[29] == "i29"
    assert index.num_images == 30
    assert index.items_per_image == pytest.approx(sum(len(r) for r in images) / 30)


def test_max_pooling_finds_small_object_region():
    """An image whose only match is a region ranks by that region, not diluted by the full image."""
    rng = np.random.default_rng(5)
    q = random_item(rng, 64, True, 10)
    clutter = random_item(rng, 64, True, 30)
    images = [[clutter, q], [random_item(rng, 64, True, 30)]]
    index = RegionalIndex(num_words=K, dim=64, binary=True)
    index.add(images)
    result = index.search([q], k=2, pooling="max")
    assert result.ids[0, 0] == 0 and result.scores[0, 0] == pytest.approx(1.0)
    avg = index.score_images(q, pooling="avg")
    assert avg[0] == pytest.approx((1.0 + similarity_matrix([q], [clutter])[0, 0]) / 2, rel=1e-6)


def test_padding_when_fewer_images_than_k():
    rng = np.random.default_rng(6)
    index = RegionalIndex(num_words=K, dim=16, binary=False)
    index.add(random_images(rng, 3, 16, False))
    result = index.search([random_item(rng, 16, False, 8)], k=5)
    assert list(result.ids[0, 3:]) == [-1, -1] and np.isneginf(result.scores[0, 3:]).all()
    empty = RegionalIndex(num_words=K, dim=16, binary=False)
    assert empty.search([random_item(rng, 16, False, 8)], k=2).ids.tolist() == [[-1, -1]]


def test_rejects_bad_input():
    index = RegionalIndex(num_words=K, dim=16, binary=True)
    with pytest.raises(ValueError, match=r"images\[1\] has no regions"):
        index.add([[AggregatedImage.empty(16, binary=True)], []])
    with pytest.raises(ValueError, match="pooling"):
        index.search([AggregatedImage.empty(16, binary=True)], pooling="median")
    with pytest.raises(ValueError, match="names has"):
        index.add([[AggregatedImage.empty(16, binary=True)]], names=["a", "b"])


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_roundtrip(tmp_path, mmap):
    rng = np.random.default_rng(7)
    images = random_images(rng, 20, 32, True)
    index = RegionalIndex(num_words=K, dim=32, binary=True)
    index.add(images, names=[f"img{i}" for i in range(20)])
    path = index.save(tmp_path / "regional", config={"detector": "d2r"})
    loaded = RegionalIndex.load(path, mmap=mmap, verify=True)
    queries = [random_item(rng, 32, True, 15) for _ in range(3)]
    for pooling in ("max", "avg"):
        a = index.search(queries, k=7, pooling=pooling)
        b = loaded.search(queries, k=7, pooling=pooling)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert loaded.names == index.names and loaded.config == {"detector": "d2r"}
    assert loaded.num_items == index.num_items
    loaded.add([[random_item(rng, 32, True, 5)]], names=["new"])
    assert loaded.num_images == 21 and loaded.search(queries, k=1).ids.shape == (3, 1)


def test_load_rejects_bad_mapping(tmp_path):
    rng = np.random.default_rng(8)
    index = RegionalIndex(num_words=K, dim=16, binary=True)
    index.add(random_images(rng, 5, 16, True))
    path = index.save(tmp_path / "r")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["meta"]["num_images"] = 9
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="item_to_image.npy must map"):
        RegionalIndex.load(path)
    manifest["kind"] = "inverted"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="expected 'regional'"):
        RegionalIndex.load(path)
