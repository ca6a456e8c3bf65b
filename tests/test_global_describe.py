"""Rows per image of the CNN baselines (global, CAM-local, regions), activation-map storage,
and the options that do not go together (numpy backbone: no TensorFlow)."""

import numpy as np
import pytest

from d2r.pipeline.sources import ImageSource
from d2r.config import load_config
from d2r.methods import validate
from d2r.pipeline.extraction import extract_to_store
from d2r.cnn.cam import cam_heatmap, cam_mask
from d2r.cnn.describe import CamClassifier, GlobalDescriber
from d2r.cnn.extractor import GlobalDescriptorExtractor
from d2r.cnn.multires import multilayer_descriptor
from d2r.cnn.regional import region_vectors
from d2r.cnn.salient_regions import detect_salient_points, salient_regions
from d2r.io.feature_store import FeatureStore
from d2r.types import ActivationMap, GlobalDescriptors, LocalFeatures


class NumpyBackbone:
    """Deterministic ReLU maps whose size follows the image (1 cell per 8 pixels)."""

    def activations(self, image, *, max_side=None):
        h, w = max(1, image.shape[0] // 8), max(1, image.shape[1] // 8)
        pooled = np.asarray(image, np.float32)[: h * 8, : w * 8].reshape(h, 8, w, 8, 3).mean(axis=(1, 3))
        rng = np.random.default_rng(0)
        last = np.maximum(pooled @ rng.normal(size=(3, 6)).astype(np.float32) / 50, 0) + 0.01
        prev = np.maximum(pooled @ rng.normal(size=(3, 4)).astype(np.float32) / 50, 0) + 0.01
        return {"last": last.astype(np.float32), "previous_block": prev.astype(np.float32)}


def blob_image():
    """120 x 160 image: dark background with three bright squares (salient blobs)."""
    img = np.full((120, 160, 3), 20, np.uint8)
    for x, y in [(20, 20), (110, 30), (60, 80)]:
        img[y:y + 16, x:x + 16] = 230
    return img


def test_activation_map_store_round_trip_and_layout(tmp_path):
    """Maps are stored as one row per cell, row-major, located at (column, row), in a
    (W', H') image: the layout earlier releases wrote, so their map stores still open."""
    amap = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    with FeatureStore.open(tmp_path / "maps", mode="a", dim=2, dtype="float32",
                           value_type=ActivationMap) as store:
        store.put("a", ActivationMap(amap))
        with pytest.raises(TypeError, match="ActivationMap"):
            store.put("b", LocalFeatures.empty(2, (3, 2)))
    with FeatureStore.open(tmp_path / "maps", value_type=ActivationMap) as store:
        np.testing.assert_array_equal(store.get("a").values, amap)
    with FeatureStore.open(tmp_path / "maps") as rows:
        cells = rows.get("a")
    assert cells.image_size == (3, 2) and len(cells) == 6
    np.testing.assert_array_equal(cells.locations[4], [1, 1])  # row 1, column 1
    np.testing.assert_array_equal(cells.descriptors[4], amap[1, 1])
    with pytest.raises(ValueError, match="non-empty"):
        ActivationMap(np.zeros((0, 3, 2)))


def test_regional_rows_are_the_pooled_salient_regions():
    image = blob_image()
    describer = GlobalDescriber(NumpyBackbone(), method="regional", order="first", clusters=3)
    rows, masks = describer.rows_from_maps(image, describer.maps(image))
    amap = NumpyBackbone().activations(image)["last"]
    want_masks, alpha = salient_regions(amap, detect_salient_points(image)[:, :2], (160, 120),
                                        num_clusters=3)
    np.testing.assert_array_equal(masks, want_masks)
    np.testing.assert_allclose(rows, region_vectors(amap, want_masks, alpha, order="first"), atol=1e-6)
    assert rows.shape[0] == 1 + 2 ** 3 - 1 and masks[0].all()
    np.testing.assert_allclose(describer.describe(image), rows[0], atol=1e-6)
    with pytest.raises(ValueError, match="describe_rows"):
        describer.describe_maps(describer.maps(image))


def test_cam_adds_the_masked_local_descriptor():
    image = blob_image()
    kernel = np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32)
    bias = np.zeros(5, np.float32)
    cam = CamClassifier(kernel, bias, threshold=0.9)
    describer = GlobalDescriber(NumpyBackbone(), method="multires", resolutions=(96, 160), cam=cam)
    maps = describer.maps(image)
    rows, masks = describer.rows_from_maps(image, maps)
    layers = list(maps.values())
    mask = cam_mask(cam_heatmap(layers[0][-1], kernel, bias), threshold=0.9)
    assert masks is None and rows.shape == (2, 10)
    np.testing.assert_allclose(rows[0], multilayer_descriptor(layers), atol=1e-6)
    np.testing.assert_allclose(rows[1], multilayer_descriptor(layers, mask=mask), atol=1e-6)
    assert not np.allclose(rows[0], rows[1])
    with pytest.raises(ValueError, match="CAM"):
        GlobalDescriber(NumpyBackbone(), method="rmac", cam=cam)


def test_extractor_rows_locations_follow_box_and_regions():
    image = blob_image()
    plain = GlobalDescriptorExtractor(GlobalDescriber(NumpyBackbone(), method="rmac"), description={})
    feats, amap = plain.extract_with_map(image, box=(40, 16, 120, 96))
    assert isinstance(feats, GlobalDescriptors) and isinstance(amap, ActivationMap)
    assert feats.image_size == (160, 120) and len(feats) == 1
    np.testing.assert_allclose(feats.centres, [[80, 56]])
    assert amap.shape == (10, 10, 6)
    regional = GlobalDescriptorExtractor(GlobalDescriber(NumpyBackbone(), method="regional"),
                                         description={})
    feats = regional.extract(image)
    assert len(feats) == 8 and regional.dim == feats.dim
    np.testing.assert_allclose(feats.centres[0], [79.5, 59.5])  # whole image: its centre
    assert np.all((feats.centres >= 0) & (feats.centres <= [159, 119]))


def test_extraction_keeps_maps_and_fills_them_in_later(tmp_path):
    import cv2

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        cv2.imwrite(str(paths[-1]), np.roll(blob_image(), 10 * i, axis=1))
    source = ImageSource(tuple(p.stem for p in paths), tuple(paths))
    config = load_config("rmac-vgg16")
    extractor = GlobalDescriptorExtractor(GlobalDescriber(NumpyBackbone(), method="rmac"), description={})
    extract_to_store(config, source, tmp_path / "features", extractor=extractor)
    summary = extract_to_store(config, source, tmp_path / "features", extractor=extractor,
                               maps_path=tmp_path / "maps")
    assert summary.extracted == 3  # the maps were missing, the features were not re-added
    with FeatureStore.open(tmp_path / "maps", value_type=ActivationMap) as maps, \
            FeatureStore.open(tmp_path / "features", value_type=GlobalDescriptors) as store:
        assert maps.dtype == "float16" and sorted(maps.names()) == ["img0", "img1", "img2"]
        assert len(store) == 3 and isinstance(store.get("img0"), GlobalDescriptors)
        stored = maps.get("img1").values
    fresh = NumpyBackbone().activations(cv2.imread(str(paths[1]))[..., ::-1])["last"]
    np.testing.assert_allclose(stored, fresh, rtol=1e-3, atol=1e-3)
    again = extract_to_store(config, source, tmp_path / "features", extractor=extractor,
                             maps_path=tmp_path / "maps")
    assert again.extracted == 0 and again.already_done == 3


def test_maps_need_a_cnn_extractor(tmp_path):
    from d2r.features.rootsift import RootSiftExtractor

    source = ImageSource(("a",), (tmp_path / "a.png",))
    with pytest.raises(ValueError, match="activation maps"):
        extract_to_store(load_config("rootsift-asmk-star"), source, tmp_path / "f",
                         extractor=RootSiftExtractor(), maps_path=tmp_path / "maps")


@pytest.mark.parametrize("preset, overrides, message", [
    ("rmac-vgg16", {"features": {"cnn": {"cam": True}}}, "features.cnn.cam"),
    ("multires-rmac-resnet101", {"search": {"aml_rerank": 10}}, "aml_rerank localizes"),
    ("rootsift-asmk-star", {"search": {"aml_rerank": 10}}, "applies to CNN global"),
    ("rmac-vgg16", {"search": {"aml_levels": 1}}, "aml_levels"),
    ("regional-vgg16", {"features": {"cnn": {"salient_min": 300}}}, "salient_min"),
])
def test_options_that_do_not_go_together(preset, overrides, message):
    from d2r.config import Config, build_dataclass, merge_values, to_dict

    config = build_dataclass(Config, merge_values(to_dict(load_config(preset)), overrides), "")
    with pytest.raises(ValueError, match=message):
        validate(config)


def test_new_presets_resolve_and_validate():
    for name in ("rmac-vgg16-aml", "rmac-vgg16-aml-qe", "multires-rmac-resnet101-cam",
                 "regional-vgg16", "regional-vgg16-qe"):
        validate(load_config(name))
