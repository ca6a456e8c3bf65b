"""Export a trained detector as a SavedModel with the TF Object Detection serving convention.

The ``serving_default`` signature takes ``input_images``: a (1, H, W, 3) uint8
RGB batch of any size (resized inside the model, aspect ratio kept, to the
experiment's ``task.model.input_size``) and returns

* ``detection_boxes`` (1, N, 4) float32, normalized ``[ymin, xmin, ymax, xmax]``
  in the *input* image,
* ``detection_scores`` (1, N) float32, best first,
* ``detection_classes`` (1, N) float32 (1 = landmark),
* ``num_detections`` (1,) float32,

so :func:`d2r.regions.detector.load_detector` loads it like the released
Detect-to-Retrieve models.  ``d2r_detector.json`` beside ``saved_model.pb``
records the experiment, the checkpoint and its step.  The experiment comes
from the run's ``experiment.yaml`` (written by ``train.py``).

Example::

    python -m training.detector.export --model-dir RUN --out RUN/export
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

__all__ = ["EXPORT_INFO", "SERVING_INPUT", "load_run_params", "export_detector", "main"]

logger = logging.getLogger(__name__)

EXPORT_INFO = "d2r_detector.json"
SERVING_INPUT = "input_images"


def load_run_params(model_dir: str | Path):
    """The Model Garden ``ExperimentConfig`` that ``train.py`` recorded in ``model_dir``."""
    from training.detector.train import RUN_EXPERIMENT_FILE, ExperimentError, load_experiment

    path = Path(model_dir) / RUN_EXPERIMENT_FILE
    if not path.is_file():
        raise ExperimentError(f"{path} not found: is {model_dir} a training run directory?")
    return load_experiment(path)


def _module_class():
    """Model Garden ``DetectionModule`` whose outputs follow the OD serving convention."""
    import tensorflow as tf
    from official.vision.serving import detection

    class ObjectDetectionConventionModule(detection.DetectionModule):
        def serve(self, images):
            outputs = super().serve(images)
            boxes = outputs["detection_boxes"]
            export_config = getattr(self.params.task, "export_config", None)
            if not (export_config and export_config.output_normalized_coordinates):
                info = outputs["image_info"]  # (B, 4, 2): original, resized, scale, offset; (y, x)
                scale = tf.tile(info[:, 2:3, :], [1, 1, 2])
                original = tf.tile(info[:, 0:1, :], [1, 1, 2])
                boxes = boxes / scale / tf.maximum(original, 1.0)
            return {
                "detection_boxes": tf.clip_by_value(boxes, 0.0, 1.0),
                "detection_scores": tf.cast(outputs["detection_scores"], tf.float32),
                "detection_classes": tf.cast(outputs["detection_classes"], tf.float32),
                "num_detections": tf.cast(outputs["num_detections"], tf.float32),
            }

    return ObjectDetectionConventionModule


def export_detector(params, checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write the SavedModel of ``params``'s model with weights from ``checkpoint`` to ``out_dir``.

    ``checkpoint`` is a checkpoint prefix or a directory (its latest
    checkpoint is used).  Returns ``out_dir``.
    """
    import tensorflow as tf
    from official.core import export_base
    from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope

    from training.detector.train import ExperimentError

    checkpoint = str(checkpoint)
    if tf.io.gfile.isdir(checkpoint):
        latest = tf.train.latest_checkpoint(checkpoint)
        if latest is None:
            raise ExperimentError(f"no checkpoint in {checkpoint}")
        checkpoint = latest
    elif not tf.io.gfile.exists(checkpoint + ".index"):
        raise ExperimentError(f"checkpoint {checkpoint} not found (no {checkpoint}.index)")
    out_dir = Path(out_dir)
    module = _module_class()(
        params=params,
        batch_size=1,
        input_image_size=list(params.task.model.input_size[:2]),
        input_type="image_tensor",
        num_channels=3,
        input_name=SERVING_INPUT,
    )
    # Only the serving signature is needed: skipping the per-layer Keras call
    # traces (tf_keras 2.20's save_traces option) makes export ~3x faster.
    with keras_option_scope(save_traces=False):
        export_base.export(
            module, {"image_tensor": "serving_default"}, str(out_dir),
            checkpoint_path=checkpoint, timestamped=False,
        )
    step = tf.train.load_variable(checkpoint, "global_step/.ATTRIBUTES/VARIABLE_VALUE")
    info = {
        "checkpoint": checkpoint,
        "global_step": int(step),
        "serving_input": SERVING_INPUT,
        "experiment": params.as_dict(),
    }
    (out_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    logger.info("exported %s (step %d) to %s", checkpoint, int(step), out_dir)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="training run directory (params.yaml, checkpoints)")
    parser.add_argument("--out", required=True, help="SavedModel output directory")
    parser.add_argument("--checkpoint", help="checkpoint prefix (default: the latest in --model-dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_run_params(args.model_dir)
    export_detector(params, args.checkpoint or args.model_dir, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
