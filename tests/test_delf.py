"""DELF: random-weight models, receptive-field placement, thresholds, and every loader path.

The package model is the real architecture (ResNet-50 to conv4 + attention) with random
weights on small images; the loader tests that need a frozen TF1 graph use a tiny
two-conv model with a hand-checkable receptive field to stay fast.
"""

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from d2r.features.delf import (  # noqa: E402
    MIN_IMAGE_SIDE,
    SIGNATURE_INPUTS,
    SIGNATURE_OUTPUTS,
    DelfExtractor,
    export_delf_savedmodel,
    load_delf,
    make_delf_module,
)
from d2r.features.delf_model import DELF_RECEPTIVE_FIELD, build_delf_model, normalize_pixels  # noqa: E402
from d2r.features.pca import learn_pca  # noqa: E402
from d2r.features.receptive_field import feature_centers, receptive_field_of  # noqa: E402

SCALES = (0.5, 1.0)
TINY_RF = receptive_field_of([(3, 2, 1), (3, 2, 1)])  # size 7, stride 4, padding 3


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_delf_model()


@pytest.fixture(scope="module")
def extractor(model):
    return DelfExtractor.from_model(model, scales=SCALES, score_threshold=-1e9, max_features=10_000)


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(1)
    images = keras.Input((None, None, 3))
    x = keras.layers.ZeroPadding2D(1)(images)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.ZeroPadding2D(1)(x)
    features = keras.layers.Conv2D(16, 3, strides=2, bias_initializer="ones")(x)
    attention = keras.layers.Conv2D(1, 1, activation="softplus")(features)
    return keras.Model(images, [attention, features], name="tiny")


@pytest.fixture(scope="module")
def image():
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[::4, ::4][:96])  # (96, 128, 3)


def _same_features(a, b, atol=1e-4):
    assert len(a) == len(b) and a.dim == b.dim and a.image_size == b.image_size
    np.testing.assert_allclose(a.locations, b.locations, atol=1e-3)
    np.testing.assert_allclose(a.scales, b.scales, rtol=1e-6)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=atol)
    np.testing.assert_allclose(a.descriptors, b.descriptors, atol=atol)


def test_package_model_shapes(model):
    attention, features = model(tf.zeros([1, 64, 96, 3]), training=False)
    assert features.shape == (1, 4, 6, 1024) and attention.shape == (1, 4, 6, 1)  # stride 16
    assert float(tf.reduce_min(attention)) > 0.0  # softplus


def test_autoencoder_variant_shapes():
    ae = build_delf_model(use_autoencoder=True, reduced_dimension=32, attention_channels=8)
    attention, features = ae(tf.zeros([1, 33, 47, 3]), training=False)
    assert features.shape == (1, 3, 3, 32) and attention.shape == (1, 3, 3, 1)
    with pytest.raises(FileNotFoundError):
        build_delf_model(backbone_weights="/nonexistent/resnet50_notop.h5")


def test_receptive_field_bounds_the_gradient(model):
    """Input pixels that influence cell (r, c) lie inside its receptive box, which is large."""
    rf = DELF_RECEPTIVE_FIELD
    x = tf.Variable(tf.random.normal([1, 320, 320, 3], seed=2))
    with tf.GradientTape() as tape:
        _, features = model(x, training=False)
        target = tf.reduce_sum(features[0, 10, 9])
    grad = np.abs(tape.gradient(target, x).numpy()[0]).sum(axis=2)
    ys, xs = np.nonzero(grad)
    lo_x, lo_y = 9 * rf.stride - rf.padding, 10 * rf.stride - rf.padding  # (-1, 15)
    assert xs.min() >= lo_x and xs.max() <= lo_x + rf.size - 1
    assert ys.min() >= lo_y and ys.max() <= lo_y + rf.size - 1
    assert xs.max() - xs.min() > 200 and ys.max() - ys.min() > 200
    # the keypoint (box centre) lies inside the influence region
    assert xs.min() < 9 * rf.stride < xs.max() and ys.min() < 10 * rf.stride < ys.max()


def test_output_ranges_and_order(model, extractor, image):
    raw = extractor.extract_raw(image)
    threshold = float(np.median(raw.scores))
    ex = extractor.replace(score_threshold=threshold, max_features=20)
    feats = ex.extract(image)
    assert 0 < len(feats) <= 20 and feats.dim == ex.dim == 1024
    assert feats.image_size == (128, 96)
    assert np.all(np.diff(feats.scores) <= 0) and np.all(feats.scores >= threshold)
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, rtol=1e-5)
    assert np.all(feats.locations >= 0) and np.all(feats.locations[:, 0] <= 127) and np.all(feats.locations[:, 1] <= 95)
    assert set(np.unique(feats.scales)) <= {1.0, 2.0}
    assert json.loads(json.dumps(ex.config()))["source"]["weights_sha256"]


def test_locations_scores_match_numpy_receptive_field(model, extractor, image):
    """Every cell of every level: centre / scale, score, and top-k across levels."""
    expected_xy, expected_scores, expected_scales = [], [], []
    normalized = normalize_pixels(image)[tf.newaxis]
    for s in SCALES:
        size = [int(round(image.shape[0] * s)), int(round(image.shape[1] * s))]
        attention, _ = model(tf.image.resize(normalized, size), training=False)
        h, w = attention.shape[1:3]
        expected_xy.append(feature_centers(h, w, DELF_RECEPTIVE_FIELD, scale=s))
        expected_scores.append(attention.numpy().reshape(-1))
        expected_scales.append(np.full(h * w, 1.0 / s, np.float32))
    xy, scores, scales = (np.concatenate(v) for v in (expected_xy, expected_scores, expected_scales))
    order = np.argsort(-scores, kind="stable")
    raw = extractor.extract_raw(image)
    assert len(raw.scores) == len(scores) == 6 * 8 + 3 * 4
    np.testing.assert_allclose(raw.scores, scores[order], rtol=1e-5)
    np.testing.assert_allclose(raw.locations, xy[order], atol=1e-3)
    np.testing.assert_array_equal(raw.scales, scales[order])


def test_threshold_on_blank_image(extractor):
    """A constant image still has border effects (zero padding), so threshold at its maximum."""
    blank = np.full((64, 80, 3), 128, np.uint8)
    top = float(extractor.extract_raw(blank).scores.max())
    feats = extractor.replace(score_threshold=top * (1 + 1e-4) + 1e-6).extract(blank)
    assert len(feats) == 0 and feats.dim == 1024 and feats.image_size == (80, 64)
    assert len(extractor.replace(score_threshold=top * (1 - 1e-4) - 1e-6).extract(blank)) >= 1
    tiny = extractor.extract(np.zeros((MIN_IMAGE_SIDE - 1, 50, 3), np.uint8))
    assert len(tiny) == 0 and tiny.image_size == (50, MIN_IMAGE_SIDE - 1)


def test_box_crop_offset(extractor, image):
    boxed = extractor.extract(image, box=(20, 16.5, 100, 90))
    crop = extractor.extract(np.ascontiguousarray(image[16:90, 20:100]))
    assert boxed.image_size == (128, 96)
    np.testing.assert_allclose(boxed.locations, crop.locations + [20, 16])
    np.testing.assert_array_equal(boxed.descriptors, crop.descriptors)


def test_pca_postprocessing(tiny_model, image):
    plain = DelfExtractor.from_model(tiny_model, receptive_field=TINY_RF, scales=SCALES, score_threshold=-1e9)
    raw = plain.extract_raw(image)
    pca = learn_pca(raw.descriptors)
    ex = plain.replace(pca=pca, pca_dim=8, whiten=True)
    feats = ex.extract(image)
    assert ex.dim == feats.dim == 8 and plain.dim == 16
    np.testing.assert_allclose(feats.descriptors, pca.transform(raw.descriptors[: len(feats)], dim=8, whiten=True), atol=1e-5)
    assert ex.config()["pca"]["dim"] == 8
    assert ex.replace(pca=None).dim == 16 and ex.replace(pca_dim=4).dim == 4
    with pytest.raises(TypeError):
        ex.replace(threshold=3)
    with pytest.raises(ValueError, match="16-D"):
        DelfExtractor.from_model(tiny_model, receptive_field=TINY_RF, pca=learn_pca(np.random.rand(20, 5)))
    with pytest.raises(ValueError, match="scales"):
        DelfExtractor.from_model(tiny_model, scales=())


def test_tf2_savedmodel_round_trip_tiny(tiny_model, image, tmp_path):
    params = dict(scales=SCALES, score_threshold=0.5, max_features=30)
    memory = DelfExtractor.from_model(tiny_model, receptive_field=TINY_RF, **params)
    path = export_delf_savedmodel(tiny_model, tmp_path / "tiny_tf2", receptive_field=TINY_RF)
    loaded = load_delf(path, **params)
    assert loaded.config()["source"]["format"] == "tf2_savedmodel" and loaded.dim == 16
    expected = memory.extract(image)
    assert 0 < len(expected) <= 30
    _same_features(loaded.extract(image), expected)
    with pytest.raises(FileExistsError):
        export_delf_savedmodel(tiny_model, path)

    # the same model through the configuration (features.delf), with PCA from a directory
    from d2r.features.delf import DelfConfig

    cfg = DelfConfig(model_path=str(path), scales=SCALES, score_threshold=0.5, max_features=30, use_pca=False)
    _same_features(DelfExtractor.from_config(cfg).extract(image), expected)
    learn_pca(loaded.extract_raw(image).descriptors).save(tmp_path / "pca")
    cfg.use_pca, cfg.pca_path, cfg.pca_dim = True, str(tmp_path / "pca"), 8
    assert DelfExtractor.from_config(cfg).extract(image).dim == 8
    cfg.pca_path = None
    with pytest.raises(ValueError, match="pca_path"):
        DelfExtractor.from_config(cfg)
    with pytest.raises(ValueError, match="model_path"):
        DelfExtractor.from_config(DelfConfig())


@pytest.mark.slow
def test_tf2_savedmodel_round_trip(model, extractor, image, tmp_path):
    path = export_delf_savedmodel(model, tmp_path / "delf_tf2")
    loaded = load_delf(path, scales=SCALES, score_threshold=-1e9, max_features=10_000)
    assert loaded.config()["source"]["format"] == "tf2_savedmodel" and loaded.dim == 1024
    _same_features(loaded.extract(image, box=(5, 5, 120, 90)), extractor.extract(image, box=(5, 5, 120, 90)))


def _frozen_graph(module):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(module.extract.get_concrete_function())
    inputs = {t.name.split(":")[0]: t.name for t in frozen.inputs}
    assert set(inputs) == set(SIGNATURE_INPUTS)
    # dict outputs flatten in sorted key order, which SIGNATURE_OUTPUTS is
    return frozen.graph.as_graph_def(), inputs, [t.name for t in frozen.outputs]


def _save_tf1(module, path, *, hub):
    """A TF1 SavedModel: reference tensor names (no signature), or a TF1 TF-Hub module."""
    graph_def, input_names, output_names = _frozen_graph(module)
    with tf.Graph().as_default() as graph:
        v1 = tf.compat.v1
        if hub:
            hub_in = {
                "image": v1.placeholder(tf.float32, [None, None, 3], name="image"),
                "image_scales": v1.placeholder(tf.float32, [None], name="image_scales"),
                "score_threshold": v1.placeholder(tf.float32, [], name="score_threshold"),
                "max_feature_num": v1.placeholder(tf.int32, [], name="max_feature_num"),
            }
            feeds = {
                "input_image": tf.cast(tf.round(hub_in["image"] * 255.0), tf.uint8),
                "input_scales": hub_in["image_scales"],
                "input_abs_thres": hub_in["score_threshold"],
                "input_max_feature_num": hub_in["max_feature_num"],
            }
        else:
            feeds = {
                "input_image": v1.placeholder(tf.uint8, [None, None, 3], name="input_image"),
                "input_scales": v1.placeholder(tf.float32, [None], name="input_scales"),
                "input_max_feature_num": v1.placeholder(tf.int32, [], name="input_max_feature_num"),
                "input_abs_thres": v1.placeholder(tf.float32, [], name="input_abs_thres"),
            }
        outs = tf.graph_util.import_graph_def(
            graph_def, input_map={input_names[k]: v for k, v in feeds.items()}, return_elements=output_names,
            name="delf",
        )
        boxes, features, scales, scores = outs
        with v1.Session(graph=graph) as sess:
            builder = v1.saved_model.Builder(str(path))
            if hub:
                signature = v1.saved_model.signature_def_utils.predict_signature_def(
                    inputs=hub_in,
                    outputs={
                        "locations": (boxes[:, :2] + boxes[:, 2:]) / 2.0,  # (y, x)
                        "descriptors": tf.nn.l2_normalize(features, axis=1),
                        "scales": scales,
                        "attention": tf.reshape(scores, [-1]),
                    },
                )
                builder.add_meta_graph_and_variables(sess, [], signature_def_map={"default": signature})
            else:
                for name, tensor in zip(SIGNATURE_OUTPUTS, outs):
                    tf.identity(tensor, name=name)
                builder.add_meta_graph_and_variables(sess, ["serve"])
            builder.save()
    if hub:
        (path / "tfhub_module.pb").write_bytes(b"")


def test_tf1_savedmodel_by_tensor_names(tiny_model, image, tmp_path):
    params = dict(scales=SCALES, score_threshold=0.5, max_features=25)
    memory = DelfExtractor.from_model(tiny_model, receptive_field=TINY_RF, **params)
    _save_tf1(make_delf_module(tiny_model, receptive_field=TINY_RF), tmp_path / "tf1", hub=False)
    for fmt in ("auto", "tf1_savedmodel"):
        loaded = load_delf(tmp_path / "tf1", model_format=fmt, **params)
        assert loaded.config()["source"]["format"] == "tf1_savedmodel" and loaded.dim == 16
        expected = memory.extract(image)
        assert 0 < len(expected) <= 25
        _same_features(loaded.extract(image), expected)
    with pytest.raises(ValueError, match="no signature"):
        load_delf(tmp_path / "tf1", model_format="tf2_savedmodel")


def test_tf_hub_module_from_local_directory(tiny_model, image, tmp_path):
    params = dict(scales=SCALES, score_threshold=-1e9, max_features=40)
    memory = DelfExtractor.from_model(tiny_model, receptive_field=TINY_RF, **params)
    _save_tf1(make_delf_module(tiny_model, receptive_field=TINY_RF), tmp_path / "hub", hub=True)
    loaded = load_delf(tmp_path / "hub", **params)
    assert loaded.config()["source"]["format"] == "hub" and loaded.dim == 16
    _same_features(loaded.extract(image), memory.extract(image))


@pytest.mark.slow
def test_keras_weights_round_trip(model, extractor, image, tmp_path):
    path = tmp_path / "delf.weights.h5"
    model.save_weights(str(path))
    loaded = load_delf(path, scales=SCALES, score_threshold=-1e9, max_features=10_000)
    assert loaded.config()["source"]["path"] == str(path)
    _same_features(loaded.extract(image), extractor.extract(image), atol=1e-5)
    with pytest.raises(ValueError, match="use_autoencoder=True"):
        load_delf(path, use_autoencoder=True)


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_delf(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        DelfExtractor.from_savedmodel(tmp_path)
    with pytest.raises(ValueError, match="model_format"):
        load_delf(tmp_path, model_format="onnx")


def test_module_signature_names(tiny_model):
    module = make_delf_module(tiny_model, receptive_field=TINY_RF)
    fn = module.extract.get_concrete_function()
    assert [spec.name for spec in fn.structured_input_signature[0]] == list(SIGNATURE_INPUTS)
    assert set(fn.structured_outputs) == set(SIGNATURE_OUTPUTS)
