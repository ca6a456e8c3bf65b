"""Receptive-field maths and the coordinate mapping shared by all extractors (hand-checked)."""

import numpy as np
import pytest

from d2r.features.base import BaseExtractor, crop_box, resize_max_side, to_original_pixels
from d2r.features.receptive_field import (
    RESNET50_CONV4,
    RESNET50_CONV4_SLIM,
    ReceptiveField,
    box_centers,
    centers_from_yxyx,
    feature_centers,
    receptive_boxes,
    receptive_field_of,
)
from d2r.types import LocalFeatures


def _bottleneck(stride, *, stride_on_3x3=False):
    """(kernel, stride, padding) of a ResNet bottleneck's main path."""
    if stride_on_3x3:
        return [(1, 1, 0), (3, stride, 1), (1, 1, 0)]
    return [(1, stride, 0), (3, 1, 1), (1, 1, 0)]


def test_resnet50_conv4_receptive_field_from_layer_spec():
    # Keras ResNet-50: ZeroPadding(3)+7x7/2, ZeroPadding(1)+3x3/2 pool, stride on each
    # stage's first 1x1 conv; conv2 x3, conv3 x4, conv4 x6 bottlenecks.
    layers = [(7, 2, 3), (3, 2, 1)]
    layers += _bottleneck(1) * 3
    layers += _bottleneck(2) + _bottleneck(1) * 3
    layers += _bottleneck(2) + _bottleneck(1) * 5
    assert receptive_field_of(layers) == RESNET50_CONV4 == ReceptiveField(291.0, 16.0, 145.0)


def test_slim_block3_receptive_field_size_and_stride():
    # TF-Slim resnet_v1_50: the stride sits on the 3x3 conv of each block's last unit.
    layers = [(7, 2, 3), (3, 2, 1)]
    for units in (3, 4, 6):
        layers += _bottleneck(1, stride_on_3x3=True) * (units - 1) + _bottleneck(2, stride_on_3x3=True)
    rf = receptive_field_of(layers)
    assert (rf.size, rf.stride) == (RESNET50_CONV4_SLIM.size, RESNET50_CONV4_SLIM.stride) == (291.0, 32.0)


def test_receptive_field_of_single_layers():
    assert receptive_field_of([]) == ReceptiveField(1.0, 1.0, 0.0)
    assert receptive_field_of([(3, 1, 1)]) == ReceptiveField(3.0, 1.0, 1.0)
    # two 3x3/2 convs with padding 1: size 1 + 2 + 2*2 = 7, stride 4, padding 1 + 1*2 = 3
    assert receptive_field_of([(3, 2, 1), (3, 2, 1)]) == ReceptiveField(7.0, 4.0, 3.0)
    with pytest.raises(ValueError):
        receptive_field_of([(0, 1, 0)])
    with pytest.raises(ValueError):
        ReceptiveField(0.0, 1.0, 0.0)


def test_receptive_boxes_hand_checked():
    rf = ReceptiveField(size=5.0, stride=4.0, padding=2.0)
    boxes = receptive_boxes(2, 3, rf)
    expected = np.array(
        [
            [-2, -2, 2, 2], [2, -2, 6, 2], [6, -2, 10, 2],  # row 0, cols 0..2
            [-2, 2, 2, 6], [2, 2, 6, 6], [6, 2, 10, 6],  # row 1
        ],
        np.float32,
    )
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, expected)
    assert receptive_boxes(0, 4, rf).shape == (0, 4)


def test_centers_and_pyramid_scale():
    rf = ReceptiveField(size=5.0, stride=4.0, padding=2.0)
    np.testing.assert_array_equal(box_centers(receptive_boxes(1, 2, rf)), [[0, 0], [4, 0]])
    # at pyramid scale 0.5 cell (row, col) sits at (4 col, 4 row) / 0.5 original pixels
    centers = feature_centers(2, 2, rf, scale=0.5)
    np.testing.assert_array_equal(centers, [[0, 0], [8, 0], [0, 8], [8, 8]])
    # the package DELF model: cell (r, c) at (16 c, 16 r) -- (145 - 145) + 16 i
    np.testing.assert_array_equal(feature_centers(1, 3, RESNET50_CONV4), [[0, 0], [16, 0], [32, 0]])
    np.testing.assert_allclose(feature_centers(1, 2, RESNET50_CONV4, scale=2.0), [[0, 0], [8, 0]])
    with pytest.raises(ValueError):
        feature_centers(1, 1, rf, scale=0.0)


def test_centers_from_reference_yxyx_boxes():
    boxes = np.array([[10, 20, 30, 60], [0, 0, 4, 2]], np.float32)  # ymin, xmin, ymax, xmax
    np.testing.assert_array_equal(centers_from_yxyx(boxes), [[40, 20], [1, 2]])


def test_crop_box_offsets_and_clipping():
    image = np.zeros((50, 80, 3), np.uint8)
    crop, offset = crop_box(image, (10.4, 5.0, 20.2, 15.9))
    assert offset == (10, 5) and crop.shape == (11, 11, 3)  # cols 10..20, rows 5..15
    crop, offset = crop_box(image, (-5, -5, 1000, 1000))
    assert offset == (0, 0) and crop.shape == image.shape
    for bad in [(5, 5, 5, 10), (10, 5, 5, 10), (100, 0, 120, 10), (0, 0, np.nan, 1), (1, 2, 3)]:
        with pytest.raises(ValueError):
            crop_box(image, bad)


def test_resize_and_map_back():
    image = np.zeros((60, 200, 3), np.uint8)
    resized, factors = resize_max_side(image, 100)
    assert resized.shape == (30, 100, 3) and factors == (0.5, 0.5)
    same, factors = resize_max_side(image, 500)
    assert same is image and factors == (1.0, 1.0)
    # pixel centres at integers on both grids: x_orig = (x + 0.5) / s - 0.5
    np.testing.assert_allclose(to_original_pixels(np.array([[0, 0], [10, 3]]), (0.5, 0.5)), [[0.5, 0.5], [20.5, 6.5]])
    np.testing.assert_array_equal(to_original_pixels(np.array([[3.0, 4.0]]), (1.0, 1.0)), [[3, 4]])


class _BrightPixels(BaseExtractor):
    """Toy backend: one feature at every pixel whose red channel is 255."""

    dim = 2

    def config(self):
        return {"type": "bright"}

    def _extract_full(self, image):
        ys, xs = np.nonzero(image[:, :, 0] == 255)
        xy = np.stack([xs, ys], axis=1).astype(np.float32)
        return LocalFeatures(xy, xy, np.ones(len(xy)), np.ones(len(xy)), (image.shape[1], image.shape[0]))


def test_base_extractor_maps_box_crops_back():
    image = np.zeros((40, 64, 3), np.uint8)
    image[21, 37, 0] = 255
    image[2, 3, 0] = 255
    ex = _BrightPixels()
    full = ex.extract(image)
    assert full.image_size == (64, 40)
    np.testing.assert_array_equal(full.locations, [[3, 2], [37, 21]])
    boxed = ex.extract(image, box=(30.5, 10, 60, 39))
    np.testing.assert_array_equal(boxed.locations, [[37, 21]])  # crop coords (7, 11) + offset (30, 10)
    np.testing.assert_array_equal(boxed.descriptors, [[7, 11]])  # the backend saw the crop
    assert boxed.image_size == (64, 40)
    assert len(ex.extract(image, box=(40, 0, 64, 10))) == 0


def test_base_extractor_max_image_side_maps_to_input_pixels():
    image = np.zeros((40, 80, 3), np.uint8)
    image[16:26, 36:46, 0] = 255  # 10x10 block centred on (40.5, 20.5)
    feats = _BrightPixels(max_image_side=40).extract(image)
    assert feats.image_size == (80, 40)
    # at 2x downscale the block's saturated interior is x' in 19..21, y' in 9..11, and
    # x' -> (x' + 0.5) / 0.5 - 0.5: 38.5, 40.5, 42.5 (y: 18.5, 20.5, 22.5)
    np.testing.assert_allclose(np.unique(feats.locations[:, 0]), [38.5, 40.5, 42.5])
    np.testing.assert_allclose(np.unique(feats.locations[:, 1]), [18.5, 20.5, 22.5])
    np.testing.assert_allclose(feats.locations.mean(axis=0), [40.5, 20.5])


def test_base_extractor_rejects_bad_images():
    ex = _BrightPixels()
    with pytest.raises(ValueError, match="uint8"):
        ex.extract(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        ex.extract(np.zeros((4, 4), np.uint8))
    with pytest.raises(TypeError):
        ex.extract([[0, 0, 0]])
    with pytest.raises(ValueError, match="max_image_side"):
        _BrightPixels(max_image_side=0)
