"""Detector inference: box conversion, thresholds, and TF1 / TF2 SavedModels."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from d2r.regions.detector import Detector, DetectorError, load_detector, normalized_to_pixels

# Normalized [ymin, xmin, ymax, xmax] boxes, raw scores (times the graph's gain of
# 0.5 restored from the checkpoint) and num_detections = 3 (the 4th row is padding).
BOXES = np.array(
    [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.5, 0.25, 0.9, 1.2], [0.2, 0.2, 0.3, 0.3]],
    np.float32,
)
RAW_SCORES = np.array([1.6, 0.1, 1.2, 1.8], np.float32)
GAIN = 0.5
NUM = 3
HEIGHT, WIDTH = 60, 80


def _image(h=HEIGHT, w=WIDTH):
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _build_tf1_savedmodel(path, *, input_name, with_signature):
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.uint8, [None, None, None, 3], name=input_name)
        gain = tf.compat.v1.get_variable("gain", initializer=tf.constant(1.0))
        batch = tf.shape(images)[0]
        boxes = tf.identity(tf.tile(tf.constant(BOXES)[None], [batch, 1, 1]), name="detection_boxes")
        scores = tf.identity(
            tf.tile(tf.constant(RAW_SCORES)[None], [batch, 1]) * gain, name="detection_scores"
        )
        classes = tf.identity(tf.ones([batch, len(BOXES)], tf.float32), name="detection_classes")
        num = tf.identity(tf.fill([batch], float(NUM)), name="num_detections")
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(gain.assign(GAIN))
            builder = tf.compat.v1.saved_model.Builder(str(path))
            signatures = {}
            if with_signature:
                signatures["serving_default"] = tf.compat.v1.saved_model.predict_signature_def(
                    inputs={"inputs": images},
                    outputs={
                        "detection_boxes": boxes,
                        "detection_scores": scores,
                        "detection_classes": classes,
                        "num_detections": num,
                    },
                )
            builder.add_meta_graph_and_variables(
                sess, [tf.compat.v1.saved_model.tag_constants.SERVING], signature_def_map=signatures
            )
            builder.save()


def _expected_pixels():
    keep = [0, 2]  # scores 0.8, 0.6 (>= 0.1); row 1 scores 0.05; row 3 is past num_detections
    return normalized_to_pixels(BOXES[keep], (WIDTH, HEIGHT)), (RAW_SCORES * GAIN)[keep]


def test_normalized_to_pixels_clips_and_orders():
    out = normalized_to_pixels(np.array([[0.1, 0.2, 0.5, 0.6], [0.9, 1.2, 0.5, -0.1]]), (80, 60))
    np.testing.assert_allclose(out, [[16, 6, 48, 30], [0, 30, 80, 54]], atol=1e-5)
    assert out.dtype == np.float32
    assert normalized_to_pixels(np.zeros((0, 4)), (80, 60)).shape == (0, 4)


def test_detector_threshold_order_and_limit():
    def fn(batch):
        assert batch.shape == (1, HEIGHT, WIDTH, 3) and batch.dtype == np.uint8
        return BOXES, np.array([0.3, 0.9, 0.1, 0.05]), np.array([1.0, 1.0, 2.0, 1.0])

    det = Detector(fn, score_threshold=0.1, max_boxes=10)
    boxes = det.detect(_image())
    np.testing.assert_allclose(boxes.scores, [0.9, 0.3, 0.1])
    np.testing.assert_array_equal(boxes.labels, [1, 1, 2])
    np.testing.assert_allclose(boxes.xyxy[0], [0, 0, 80, 60])
    assert np.all(boxes.xyxy[:, [0, 2]] <= WIDTH) and np.all(boxes.xyxy[:, [1, 3]] <= HEIGHT)
    assert len(det.detect(_image(), max_boxes=1)) == 1
    assert len(det.detect(_image(), score_threshold=0.0)) == 4
    assert len(det.detect(_image(), score_threshold=0.95)) == 0


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)]
)
def test_detector_rejects_bad_images(bad):
    det = Detector(lambda b: (np.zeros((0, 4)), np.zeros(0), np.zeros(0)))
    with pytest.raises(ValueError, match="image"):
        det.detect(bad)


def test_detector_rejects_bad_options():
    with pytest.raises(ValueError, match="max_boxes"):
        Detector(lambda b: None, max_boxes=-1)
    with pytest.raises(ValueError, match="score_threshold"):
        Detector(lambda b: None, score_threshold=float("nan"))


def test_load_detector_rejects_non_savedmodels(tmp_path):
    with pytest.raises(DetectorError, match="not a directory"):
        load_detector(tmp_path / "missing")
    with pytest.raises(DetectorError, match="saved_model.pb"):
        load_detector(tmp_path)


@pytest.mark.parametrize(
    "input_name,with_signature",
    [("input_images", False), ("image_tensor", False), ("inputs", True)],
    ids=["reference-tensor-names", "od-api-tensor-names", "signature-only"],
)
def test_tf1_savedmodel(tmp_path, input_name, with_signature):
    _build_tf1_savedmodel(tmp_path / "model", input_name=input_name, with_signature=with_signature)
    det = load_detector(tmp_path / "model")
    boxes = det.detect(_image())
    expected_xyxy, expected_scores = _expected_pixels()
    np.testing.assert_allclose(boxes.xyxy, expected_xyxy, atol=1e-4)
    np.testing.assert_allclose(boxes.scores, expected_scores, atol=1e-6)
    np.testing.assert_array_equal(boxes.labels, [1, 1])
    np.testing.assert_allclose(boxes.xyxy[1], [20, 30, 80, 54], atol=1e-4)  # clipped at x = 1.0


def test_tf2_signature_savedmodel(tmp_path):
    import tensorflow as tf

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_images")])
        def serve(self, input_images):
            return {
                "detection_boxes": tf.constant(BOXES)[None],
                "detection_scores": tf.constant(RAW_SCORES * GAIN)[None],
                "detection_classes": tf.ones([1, len(BOXES)]),
                "num_detections": tf.constant([float(NUM)]),
            }

    module = Module()
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default": module.serve})
    boxes = load_detector(tmp_path / "m", score_threshold=0.5).detect(_image())
    expected_xyxy, expected_scores = _expected_pixels()
    np.testing.assert_allclose(boxes.xyxy, expected_xyxy, atol=1e-4)
    np.testing.assert_allclose(boxes.scores, expected_scores, atol=1e-6)


def test_importing_detector_module_does_not_import_tensorflow():
    code = "import sys, d2r.regions.detector, d2r.regions.selection; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
