"""Backbones: map shapes for odd aspect ratios (tiny inputs, random weights), weights from a file."""

import math
import sys

import numpy as np
import pytest

from d2r.cnn.describe import GlobalDescriber


def test_core_modules_do_not_import_tensorflow():
    import subprocess

    code = ("import sys, d2r.cnn, d2r.cnn.aml, d2r.cnn.regional, d2r.cnn.multires, "
            "d2r.cnn.describe, d2r.cnn.backbones; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def vgg_shape(h, w, pools):
    for _ in range(pools):
        h, w = h // 2, w // 2
    return h, w


def resnet_shape(h, w, halvings):
    for _ in range(halvings):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


@pytest.fixture(scope="module")
def vgg16():
    from d2r.cnn.backbones import Backbone

    return Backbone("vgg16", layers=("last", "previous_block", "penultimate"), seed=0)


@pytest.mark.parametrize("size", [(37, 75), (75, 37), (33, 33)])
def test_vgg16_maps_have_expected_shapes(vgg16, size):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    maps = vgg16.activations(image)
    assert maps["last"].shape == (*vgg_shape(*size, 4), 512)
    assert maps["penultimate"].shape == (*vgg_shape(*size, 4), 512)
    assert maps["previous_block"].shape == (*vgg_shape(*size, 3), 512)
    assert all(m.dtype == np.float32 and m.min() >= 0 for m in maps.values())
    d = vgg16.describe(image)
    assert d.shape == (512,) and abs(np.linalg.norm(d) - 1) < 1e-5


def test_vgg16_max_side_and_describer(vgg16):
    image = np.random.default_rng(1).integers(0, 256, (40, 90, 3), dtype=np.uint8)
    assert vgg16.activation_map(image, max_side=45).shape == (*vgg_shape(20, 45, 4), 512)
    for method, dim in [("mac", 512), ("rmac", 512), ("gem", 512), ("multires", 3 * 512)]:
        describer = GlobalDescriber(vgg16, method=method, resolutions=(64, 96))
        v = describer.describe(image)
        assert v.shape == (dim,) and abs(np.linalg.norm(v) - 1) < 1e-4
    with pytest.raises(ValueError, match="not requested"):
        vgg16.activation_map(image, layer="block1_conv1")


@pytest.mark.slow
def test_resnet50_maps_have_expected_shapes():
    from d2r.cnn.backbones import Backbone

    net = Backbone("resnet50", layers=("last", "previous_block"), seed=0)
    for size in [(37, 75), (61, 29)]:
        image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        maps = net.activations(image)
        assert maps["last"].shape == (*resnet_shape(*size, 5), 2048)
        assert maps["previous_block"].shape == (*resnet_shape(*size, 4), 1024)


def test_weights_are_read_from_a_local_file(tmp_path, vgg16):
    from d2r.cnn.backbones import Backbone

    path = tmp_path / "vgg16_notop.weights.h5"
    vgg16.keras_model.save_weights(path)
    loaded = Backbone("vgg16", weights_path=path, seed=1)
    image = np.random.default_rng(2).integers(0, 256, (35, 50, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.activation_map(image), vgg16.activation_map(image), rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError):
        Backbone("vgg16", weights_path=tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="unknown architecture"):
        Backbone("alexnet")
    with pytest.raises(ValueError, match="classifier"):
        Backbone("vgg16", classifier=True)
    with pytest.raises(ValueError, match="no layer"):
        Backbone("vgg16", layers=("conv99",), weights_path=path)


@pytest.mark.slow
def test_resnet101_and_classifier_for_cam(tmp_path):
    import keras

    from d2r.cnn.backbones import Backbone
    from d2r.cnn.cam import cam_heatmap

    net = Backbone("resnet101", seed=0)
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    assert net.activation_map(image).shape == (*resnet_shape(45, 70, 5), 2048)
    path = tmp_path / "resnet50_full.weights.h5"
    keras.applications.ResNet50(include_top=True, weights=None).save_weights(path)
    cam_net = Backbone("resnet50", weights_path=path, classifier=True)
    assert cam_net.classifier_kernel.shape == (2048, 1000)
    amap = cam_net.activation_map(image)
    assert cam_heatmap(amap, cam_net.classifier_kernel, cam_net.classifier_bias).shape == amap.shape[:2]
