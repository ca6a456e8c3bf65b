import numpy as np
import pytest

from d2r.types import AggregatedImage, Boxes, LocalFeatures, SearchResult


def _features(n=3, d=4):
    rng = np.random.default_rng(0)
    return LocalFeatures(
        locations=rng.uniform(0, 10, (n, 2)),
        descriptors=rng.normal(size=(n, d)),
        scales=np.ones(n),
        scores=np.arange(n),
        image_size=(10, 10),
    )


def test_local_features_converts_and_freezes():
    f = _features()
    assert f.locations.dtype == np.float32 and f.descriptors.dtype == np.float32
    assert len(f) == 3 and f.dim == 4
    with pytest.raises(ValueError):
        f.locations[0, 0] = 1.0


def test_local_features_copies_its_input():
    loc = np.zeros((1, 2), np.float32)
    f = LocalFeatures(loc, np.zeros((1, 3)), np.zeros(1), np.zeros(1), (5, 5))
    loc[0, 0] = 7
    assert f.locations[0, 0] == 0


def test_empty_features_are_ordinary():
    f = LocalFeatures.empty(128, (640, 480))
    assert len(f) == 0 and f.dim == 128 and f.image_size == (640, 480)
    assert len(f.in_box((0, 0, 10, 10))) == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(locations=np.zeros((3, 3))), r"locations must have shape \(N, 2\)"),
    (dict(scales=np.zeros(2)), "scales has 2 rows, expected 3"),
    (dict(descriptors=np.full((3, 4), np.nan)), "descriptors contains NaN"),
    (dict(image_size=(10,)), "image_size"),
])
def test_local_features_rejects_bad_arrays(kwargs, match):
    base = dict(locations=np.zeros((3, 2)), descriptors=np.zeros((3, 4)),
                scales=np.zeros(3), scores=np.zeros(3), image_size=(4, 4))
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LocalFeatures(**base)


def test_in_box_selects_by_pixel_location():
    f = LocalFeatures(
        locations=[[1, 1], [5, 5], [9, 2]], descriptors=np.eye(3), scales=[1, 1, 1],
        scores=[0, 1, 2], image_size=(10, 10))
    sub = f.in_box((0, 0, 6, 6))
    np.testing.assert_array_equal(sub.scores, [0, 1])


def test_boxes_validation():
    b = Boxes([[0, 0, 2, 3]], [0.5])
    assert b.labels.tolist() == [0] and b.xyxy.dtype == np.float32
    assert len(Boxes.empty()) == 0 and Boxes([], []).xyxy.shape == (0, 4)
    with pytest.raises(ValueError, match="x1 <= x2"):
        Boxes([[2, 0, 1, 3]], [0.5])
    with pytest.raises(ValueError, match="scores has 2 rows"):
        Boxes([[0, 0, 1, 1]], [0.5, 0.2])


def test_aggregated_image_float_and_binary():
    a = AggregatedImage([1, 4], np.ones((2, 16)), 16)
    assert a.vectors.dtype == np.float32 and len(a) == 2
    b = AggregatedImage([0, 2, 9], np.zeros((3, 2), np.uint8), 16, binary=True)
    assert b.vectors.shape == (3, 2)
    e = AggregatedImage.empty(128, binary=True)
    assert e.vectors.shape == (0, 16) and e.words.dtype == np.int32
    with pytest.raises(ValueError, match="sorted ascending and unique"):
        AggregatedImage([3, 3], np.ones((2, 4)), 4)
    with pytest.raises(ValueError, match=r"shape \(M, 2\)"):
        AggregatedImage([1], np.zeros((1, 3), np.uint8), 16, binary=True)
    with pytest.raises(ValueError, match="vectors has 1 rows, expected 2"):
        AggregatedImage([1, 2], np.ones((1, 4)), 4)


def test_search_result():
    r = SearchResult([[0.9, -np.inf]], [[2, -1]], names=("a", "b", "c"))
    assert r.ids.dtype == np.int64 and r.names_of(0) == ["c"]
    with pytest.raises(ValueError, match="same shape"):
        SearchResult([[0.9]], [[1, 2]])
