"""Detector training: data preparation, experiment loading, AP, and a tiny train → export → reload."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from PIL import Image

from d2r.types import Boxes
from training.detector.evaluate import average_precision, box_iou
from training.detector.prepare_data import DataError, find_image, prepare, read_boxes_csv

TINY_EXPERIMENT = textwrap.dedent(
    """\
    experiment: retinanet
    runtime: {distribution_strategy: one_device, num_gpus: 0, mixed_precision_dtype: float32}
    task:
      annotation_file: null
      init_checkpoint: null
      model:
        num_classes: 2
        input_size: [128, 128, 3]
        min_level: 3
        max_level: 5
        anchor: {num_scales: 1, aspect_ratios: [1.0], anchor_size: 4.0}
        backbone: {type: resnet, resnet: {model_id: 10, depth_multiplier: 0.25}}
        decoder: {type: fpn, fpn: {num_filters: 16, use_separable_conv: true}}
        head: {num_convs: 1, num_filters: 16, use_separable_conv: true}
        norm_activation: {use_sync_bn: false}
        detection_generator: {pre_nms_top_k: 100, max_num_detections: 10, pre_nms_score_threshold: 0.0}
      train_data: {is_training: true, global_batch_size: 2, dtype: float32, shuffle_buffer_size: 8}
      validation_data: {is_training: false, global_batch_size: 2, dtype: float32}
    trainer:
      train_steps: 2
      steps_per_loop: 1
      summary_interval: 1
      checkpoint_interval: 1
      validation_interval: 2
      optimizer_config:
        optimizer: {type: sgd, sgd: {momentum: 0.9}}
        learning_rate: {type: constant, constant: {learning_rate: 0.01}}
    """
)


def _write_dataset(root, num=6):
    """Images with one bright rectangle each, a GLB-style boxes.csv, ids named like GLB hashes."""
    rng = np.random.default_rng(0)
    (root / "jpg").mkdir(parents=True)
    rows = ["id,box"]
    for i in range(num):
        h, w = (96, 128) if i % 2 else (120, 90)
        image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        y1, x1 = int(h * 0.2), int(w * 0.3)
        y2, x2 = int(h * 0.8), int(w * 0.9)
        image[y1:y2, x1:x2] = (230, 200, 40)
        image_id = f"{i:02x}abcdef"
        Image.fromarray(image).save(root / "jpg" / f"{image_id}.jpg", quality=95)
        rows.append(f"{image_id},{y1 / h:.6f} {x1 / w:.6f} {y2 / h:.6f} {x2 / w:.6f}")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return root


def test_read_boxes_csv_merges_and_validates(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("id,box,extra\na,0.1 0.2 0.5 0.6 0.0 0.0 1.0 1.0,x\nb,0 0 1 1,y\na,0.2 0.2 0.3 0.3,z\n")
    items = read_boxes_csv(path)
    assert [it.image_id for it in items] == ["a", "b"]
    assert items[0].boxes.shape == (3, 4) and items[0].boxes.dtype == np.float32
    for bad, message in [("a,0.1 0.2 0.5\n", "4 numbers"), ("a,0.5 0.2 0.1 0.6\n", "empty"),
                         ("a,0.1 0.2 0.5 1.5\n", "normalized"), ("a,x y z w\n", "numeric")]:
        path.write_text("id,box\n" + bad)
        with pytest.raises(DataError, match=message):
            read_boxes_csv(path)
    path.write_text("image,boxes\na,0 0 1 1\n")
    with pytest.raises(DataError, match="id,box"):
        read_boxes_csv(path)


def test_find_image_layouts(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "abcdef.jpg").write_bytes(b"x")
    (tmp_path / "flat.png").write_bytes(b"x")
    assert find_image(tmp_path, "abcdef").name == "abcdef.jpg"
    assert find_image(tmp_path, "flat").name == "flat.png"
    with pytest.raises(DataError, match="no image"):
        find_image(tmp_path, "missing")


def test_prepare_writes_model_garden_examples(tmp_path):
    import tensorflow as tf
    from official.vision.dataloaders.tf_example_decoder import TfExampleDecoder

    data = _write_dataset(tmp_path / "src")
    manifest = prepare([data / "boxes.csv"], data / "jpg", tmp_path / "out", val_fraction=0.34, seed=1)
    assert manifest["splits"]["train"]["images"] == 4 and manifest["splits"]["val"]["images"] == 2
    record = next(iter(tf.data.TFRecordDataset(str(tmp_path / "out" / "val-00000-of-00001.tfrecord"))))
    decoded = TfExampleDecoder().decode(record)
    assert int(decoded["source_id"]) >= 1
    assert decoded["image"].shape[2] == 3
    np.testing.assert_array_equal(decoded["groundtruth_classes"].numpy(), [1])
    box = decoded["groundtruth_boxes"].numpy()[0]
    assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1

    (data / "jpg" / "00abcdef.jpg").unlink()
    with pytest.raises(DataError, match="00abcdef"):
        prepare([data / "boxes.csv"], data / "jpg", tmp_path / "out2")
    skipped = prepare([data / "boxes.csv"], data / "jpg", tmp_path / "out3", on_error="skip")
    assert skipped["skipped"][0]["id"] == "00abcdef" and skipped["splits"]["train"]["images"] == 5


def test_box_iou_and_average_precision():
    np.testing.assert_allclose(box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3], [0, 0, 2, 2]]), [[1 / 7, 1.0]])
    gt = [np.array([[0, 0, 10, 10]], np.float32), np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)]
    perfect = [Boxes([[0, 0, 10, 10]], [0.9]), Boxes([[0, 0, 10, 10], [20, 20, 30, 30]], [0.8, 0.7])]
    assert average_precision(perfect, gt) == pytest.approx(1.0)
    # ranked: TP (0.9), FP (0.85), TP (0.8); the third gt box is never found.
    mixed = [Boxes([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.85]), Boxes([[1, 1, 10, 10]], [0.8])]
    # precision envelope: 1.0 up to recall 1/3, 2/3 up to recall 2/3.
    assert average_precision(mixed, gt) == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))
    duplicate = [Boxes([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8]), Boxes.empty()]
    assert average_precision(duplicate, gt) == pytest.approx(1 / 3)
    assert np.isnan(average_precision([Boxes.empty()], [np.zeros((0, 4))]))


def test_load_experiment_errors(tmp_path):
    from training.detector.train import ExperimentError, load_experiment

    path = tmp_path / "e.yaml"
    path.write_text("task: {}\n")
    with pytest.raises(ExperimentError, match="experiment"):
        load_experiment(path)
    path.write_text(TINY_EXPERIMENT)
    with pytest.raises(ExperimentError, match="no_such_key"):
        load_experiment(path, overrides=["task.model.no_such_key=1"])
    params = load_experiment(path, overrides=["trainer.train_steps=7"], train_data="x-*")
    assert params.trainer.train_steps == 7 and params.task.train_data.input_path == "x-*"


def test_shipped_experiments_load():
    from pathlib import Path

    from training.detector.train import load_experiment

    configs = sorted((Path(__file__).parents[1] / "training" / "detector" / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        params = load_experiment(path)
        assert params.task.model.num_classes == 2, path


def test_train_export_reload(tmp_path):
    """Train 2 steps, resume to 3, export, reload through load_detector, detect."""
    from d2r.regions.detector import load_detector
    from training.detector.export import EXPORT_INFO, export_detector, load_run_params
    from training.detector.train import ExperimentError, load_experiment, train

    data = _write_dataset(tmp_path / "src")
    prepare([data / "boxes.csv"], data / "jpg", tmp_path / "tfrecords", max_side=None)
    exp = tmp_path / "tiny.yaml"
    exp.write_text(TINY_EXPERIMENT)
    run = tmp_path / "run"
    pattern = str(tmp_path / "tfrecords" / "train-*.tfrecord")
    train(load_experiment(exp, train_data=pattern), run, mode="train")
    assert (run / "ckpt-2.index").is_file() and (run / "experiment.yaml").is_file()
    train(load_experiment(exp, train_data=pattern, overrides=["trainer.train_steps=3"]), run, mode="train")
    assert (run / "ckpt-3.index").is_file()
    with pytest.raises(ExperimentError, match="another model"):
        train(load_experiment(exp, train_data=pattern, overrides=["task.model.max_level=6"]), run, mode="train")

    export_detector(load_run_params(run), run, tmp_path / "export")
    assert (tmp_path / "export" / EXPORT_INFO).is_file()
    detector = load_detector(tmp_path / "export", score_threshold=0.0, max_boxes=5)
    image = np.asarray(Image.open(next((data / "jpg").glob("*.jpg"))))
    boxes = detector.detect(image)
    height, width = image.shape[:2]
    assert 0 < len(boxes) <= 5
    assert np.all(boxes.xyxy[:, 2] >= boxes.xyxy[:, 0]) and np.all(boxes.xyxy[:, 3] >= boxes.xyxy[:, 1])
    assert np.all(boxes.xyxy >= 0)
    assert np.all(boxes.xyxy[:, [0, 2]] <= width) and np.all(boxes.xyxy[:, [1, 3]] <= height)
    assert np.all(np.diff(boxes.scores) <= 0) and np.all(boxes.labels == 1)
