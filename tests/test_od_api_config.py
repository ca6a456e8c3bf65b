"""Object Detection API pipeline.config → Model Garden experiment translation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.detector.od_api_config import (
    PipelineConfigError,
    UnsupportedConfigError,
    parse_pipeline_config,
    translate,
    translate_file,
    unsupported_fields,
)

SSD = """
# An SSD MobileNetV2-FPN landmark detector, OD API style.
model {
  ssd {
    num_classes: 1
    image_resizer { fixed_shape_resizer { height: 320 width: 320 } }
    feature_extractor { type: "ssd_mobilenet_v2_fpn_keras" depth_multiplier: 0.5 }
  }
}
train_config {
  batch_size: 16
  num_steps: 5000
  optimizer {
    momentum_optimizer {
      learning_rate {
        cosine_decay_learning_rate {
          learning_rate_base: 0.08
          total_steps: 5000
          warmup_learning_rate: 0.026666
          warmup_steps: 500
        }
      }
      momentum_optimizer_value: 0.9
    }
    use_moving_average: false
  }
  fine_tune_checkpoint: "/ckpt/mobilenet_v2/ckpt-0"
  fine_tune_checkpoint_type: "classification"
}
train_input_reader {
  label_map_path: "landmarks_label_map.pbtxt"
  tf_record_input_reader {
    input_path: "/data/train-00000-of-00002.tfrecord"
    input_path: "/data/train-00001-of-00002.tfrecord"
  }
}
eval_input_reader: { tf_record_input_reader { input_path: "/data/val-*.tfrecord" } }
"""

FASTER_RCNN = """
model {
  faster_rcnn {
    num_classes: 1
    image_resizer {
      keep_aspect_ratio_resizer { min_dimension: 600 max_dimension: 1024 }
    }
    feature_extractor { type: 'faster_rcnn_resnet50' }
  }
}
train_config: {
  batch_size: 8
  num_steps: 20000
  optimizer {
    momentum_optimizer: {
      learning_rate: {
        manual_step_learning_rate {
          initial_learning_rate: 0.0003
          schedule { step: 1000 learning_rate: 0.003 }
          schedule { step: 15000 learning_rate: 0.0003 }
          warmup: true
        }
      }
      momentum_optimizer_value: 0.9
    }
    moving_average_decay: 0.999
  }
  fine_tune_checkpoint: "/ckpt/frcnn/ckpt-12"
  fine_tune_checkpoint_type: "detection"
}
train_input_reader: {
  tf_record_input_reader { input_path: "/glb/train-*.tfrecord" }
}
"""


def _lr_schedule(params):
    from official.modeling.optimization import optimizer_factory

    return optimizer_factory.OptimizerFactory(params.trainer.optimizer_config).build_learning_rate()


def _load(translation, tmp_path):
    from training.detector.train import load_experiment

    path = tmp_path / "experiment.yaml"
    path.write_text(translation.to_yaml())
    return load_experiment(path)


def test_ssd_translation(tmp_path):
    message, ignored = parse_pipeline_config(SSD)
    assert ignored == []
    translation = translate(message)
    exp = translation.experiment
    assert exp["experiment"] == "retinanet"
    params = _load(translation, tmp_path)
    model = params.task.model
    assert model.num_classes == 2 and list(model.input_size) == [320, 320, 3]
    assert model.backbone.type == "mobilenet"
    assert model.backbone.mobilenet.model_id == "MobileNetV2"
    assert model.backbone.mobilenet.filter_size_scale == pytest.approx(0.5)
    assert params.task.train_data.global_batch_size == 16
    assert list(params.task.train_data.input_path) == [
        "/data/train-00000-of-00002.tfrecord", "/data/train-00001-of-00002.tfrecord"]
    assert params.task.validation_data.input_path == "/data/val-*.tfrecord"
    assert params.task.init_checkpoint == "/ckpt/mobilenet_v2/ckpt-0"
    assert params.task.init_checkpoint_modules == "backbone"
    assert params.trainer.train_steps == 5000
    opt = params.trainer.optimizer_config
    assert opt.optimizer.type == "sgd" and opt.optimizer.sgd.momentum == pytest.approx(0.9)
    assert opt.ema is None
    assert any("label_map_path" in n for n in translation.notes)
    # The OD API's cosine_decay_with_warmup, step by step.
    schedule = _lr_schedule(params)
    for step in (0, 250, 499, 500, 2750, 4999):
        if step < 500:
            expected = 0.026666 + (0.08 - 0.026666) * step / 500
        else:
            expected = 0.5 * 0.08 * (1 + math.cos(math.pi * (step - 500) / 4500))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-4, abs=1e-7), step


def test_faster_rcnn_translation(tmp_path):
    message, _ = parse_pipeline_config(FASTER_RCNN)
    translation = translate(message)
    assert translation.experiment["experiment"] == "fasterrcnn_resnetfpn_coco"
    params = _load(translation, tmp_path)
    model = params.task.model
    assert model.num_classes == 2 and list(model.input_size) == [1024, 1024, 3]
    assert model.backbone.type == "resnet" and model.backbone.resnet.model_id == 50
    assert params.task.init_checkpoint_modules == "all"
    assert params.task.train_data.input_path == "/glb/train-*.tfrecord"
    assert params.task.train_data.global_batch_size == 8
    assert params.trainer.optimizer_config.ema.average_decay == pytest.approx(0.999)
    assert any("min_dimension" in n for n in translation.notes)
    # The OD API's manual_stepping with warmup, step by step.
    schedule = _lr_schedule(params)
    for step in (0, 500, 999, 1000, 1001, 14999, 15000, 19999):
        if step < 1000:
            expected = 0.0003 + (0.003 - 0.0003) * step / 1000
        else:
            expected = 0.003 if step < 15000 else 0.0003
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), step


def test_unsupported_fields_are_all_named():
    text = SSD.replace(
        "    num_classes: 1\n",
        "    num_classes: 1\n    box_coder { faster_rcnn_box_coder { y_scale: 10.0 } }\n"
        "    matcher { argmax_matcher { matched_threshold: 0.5 } }\n",
    ).replace(
        'depth_multiplier: 0.5 }', 'depth_multiplier: 0.5 min_depth: 16 }'
    ).replace(
        "  batch_size: 16\n",
        "  batch_size: 16\n  data_augmentation_options { random_horizontal_flip { } }\n",
    ) + "eval_config { num_examples: 8000 metrics_set: 'coco_detection_metrics' }\n"
    expected = [
        "model.ssd.box_coder",
        "model.ssd.matcher",
        "model.ssd.feature_extractor.min_depth",
        "train_config.data_augmentation_options",
        "eval_config",
    ]
    assert unsupported_fields(text) == expected
    with pytest.raises(UnsupportedConfigError) as info:
        parse_pipeline_config(text, source="ssd.config")
    assert info.value.problems == [f"{p}: field not supported" for p in expected]
    assert "ssd.config" in str(info.value) and "model.ssd.box_coder" in str(info.value)
    message, ignored = parse_pipeline_config(text, ignore_unsupported=True)
    assert ignored == expected
    assert translate(message).experiment["task"]["model"]["num_classes"] == 2


def test_unsupported_values_are_all_named():
    text = FASTER_RCNN.replace("faster_rcnn_resnet50", "faster_rcnn_inception_resnet_v2").replace(
        "num_steps: 20000", "num_steps: 0"
    )
    message, _ = parse_pipeline_config(text)
    with pytest.raises(UnsupportedConfigError) as info:
        translate(message)
    problems = info.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("model.faster_rcnn.feature_extractor.type: 'faster_rcnn_inception_resnet_v2'")
    assert problems[1].startswith("train_config.num_steps")
    cosine = SSD.replace("warmup_steps: 500", "warmup_steps: 500\n          hold_base_rate_steps: 100")
    with pytest.raises(UnsupportedConfigError, match="hold_base_rate_steps"):
        translate(parse_pipeline_config(cosine)[0])


def test_extensions_and_syntax_errors():
    assert unsupported_fields("model { [foo.bar_ext] { x: 1 } }") == ["model.[foo.bar_ext]"]
    with pytest.raises(PipelineConfigError, match="cannot parse"):
        unsupported_fields("model { ssd { num_classes: 1 }")
    with pytest.raises(PipelineConfigError):
        parse_pipeline_config("model { ssd { num_classes: 'one' } }")


def test_translate_file_and_cli(tmp_path):
    from training.detector.od_api_config import main

    path = tmp_path / "pipeline.config"
    path.write_text(SSD + "graph_rewriter { quantization { delay: 1 } }\n")
    with pytest.raises(UnsupportedConfigError, match="graph_rewriter"):
        translate_file(path)
    out = tmp_path / "exp.yaml"
    assert main([str(path), "--out", str(out), "--ignore-unsupported"]) == 0
    text = out.read_text()
    assert "# NOTE: ignored unsupported fields: graph_rewriter" in text
    assert np.isclose(translate_file(path, ignore_unsupported=True).experiment["trainer"]["train_steps"], 5000)


def test_binary_wire_format_uses_od_api_field_numbers():
    from training.detector.protos import pipeline_pb2

    message, _ = parse_pipeline_config(FASTER_RCNN)
    data = message.SerializeToString()
    # model = 1 (length-delimited) → faster_rcnn = 1 → num_classes = 3 (varint 1).
    assert data[0] == (1 << 3) | 2
    assert pipeline_pb2.TrainEvalPipelineConfig.FromString(data) == message
    fields = pipeline_pb2.TrainConfig.DESCRIPTOR.fields_by_name
    assert fields["num_steps"].number == 9 and fields["fine_tune_checkpoint_type"].number == 22
    assert pipeline_pb2.InputReader.DESCRIPTOR.fields_by_name["tf_record_input_reader"].number == 8
