"""Train and evaluate a landmark detector with TF Model Garden (``official.vision``).

An experiment file is a Model Garden ``ExperimentConfig`` in YAML plus one
top-level key, ``experiment:``, naming the registered Model Garden factory it
overrides (``retinanet`` for the single-stage models, ``fasterrcnn_resnetfpn_coco``
for Faster R-CNN).  Overrides are strict: an unknown key is an error.

Training writes checkpoints to ``--model-dir`` every
``trainer.checkpoint_interval`` steps, and the resolved configuration as
``experiment.yaml`` (our format, read by ``export.py``) and ``params.yaml``
(Model Garden's).  Running the same command again resumes from the latest
checkpoint; the run refuses a ``--model-dir`` whose ``experiment.yaml``
describes another model.  Evaluation uses Model Garden's COCO evaluator; ``AP50`` is the
AP at 0.5 IoU.  The final evaluation metrics are written to
``<model-dir>/eval_metrics.json``.

Example (CPU, synthetic benchmark)::

    python -m training.detector.train \
        --experiment training/detector/configs/retinanet_tiny_cpu.yaml \
        --model-dir RUN --train-data 'DATA/train-*.tfrecord' --eval-data 'DATA/val-*.tfrecord'
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from d2r.config import ConfigError, diff_configs, load_yaml, parse_override

__all__ = [
    "EXPERIMENT_KEY",
    "ExperimentError",
    "read_experiment_file",
    "load_experiment",
    "write_experiment_file",
    "build_task",
    "train",
    "main",
]

logger = logging.getLogger(__name__)

EXPERIMENT_KEY = "experiment"
"""Top-level key of our experiment YAMLs naming the Model Garden factory they extend."""

PARAMS_FILE = "params.yaml"
RUN_EXPERIMENT_FILE = "experiment.yaml"
METRICS_FILE = "eval_metrics.json"


class ExperimentError(ValueError):
    """An experiment file, override or model directory that cannot be used."""


def read_experiment_file(path: str | Path) -> tuple[str, dict]:
    """(factory name, overrides) of an experiment YAML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExperimentError(f"cannot read experiment file {path}: {exc}") from exc
    try:
        data = load_yaml(text, f"experiment file {path}")
    except ConfigError as exc:
        raise ExperimentError(str(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get(EXPERIMENT_KEY), str):
        raise ExperimentError(
            f"experiment file {path} must be a mapping with a top-level "
            f"'{EXPERIMENT_KEY}: <Model Garden factory name>' key"
        )
    data = dict(data)
    return data.pop(EXPERIMENT_KEY), data


def _override(params, values: Mapping[str, Any], source: str) -> None:
    try:
        params.override(dict(values), is_strict=True)
    except (KeyError, ValueError, AttributeError, TypeError) as exc:
        raise ExperimentError(f"{source}: {exc}") from exc


def load_experiment(
    path: str | Path,
    *,
    overrides: Sequence[str] = (),
    train_data: str | None = None,
    eval_data: str | None = None,
):
    """Model Garden ``ExperimentConfig`` from an experiment YAML and ``a.b=c`` overrides.

    ``train_data`` / ``eval_data`` (file patterns) set
    ``task.train_data.input_path`` / ``task.validation_data.input_path``.
    The result is validated and locked.
    """
    from official.core import exp_factory
    from official.vision import registry_imports  # noqa: F401  (registers the factories)

    name, values = read_experiment_file(path)
    try:
        params = exp_factory.get_exp_config(name)
    except KeyError as exc:
        raise ExperimentError(f"{path}: unknown Model Garden experiment {name!r}") from exc
    _override(params, values, str(path))
    for text in overrides:
        _override(params, parse_override(text), f"override {text!r}")
    data = {}
    if train_data:
        data["train_data"] = {"input_path": train_data}
    if eval_data:
        data["validation_data"] = {"input_path": eval_data}
    if data:
        _override(params, {"task": data}, "data paths")
    try:
        params.validate()
    except (KeyError, ValueError, AttributeError) as exc:
        raise ExperimentError(f"{path}: invalid experiment: {exc}") from exc
    params.lock()
    return params


def _factory_name(params) -> str:
    """A Model Garden factory whose config type matches ``params``'s task."""
    from official.vision.configs import maskrcnn as maskrcnn_config
    from official.vision.configs import retinanet as retinanet_config

    if isinstance(params.task, retinanet_config.RetinaNetTask):
        return "retinanet"
    if isinstance(params.task, maskrcnn_config.MaskRCNNTask):
        return "fasterrcnn_resnetfpn_coco"
    raise ExperimentError(f"not a detection experiment: task type {type(params.task).__name__}")


def write_experiment_file(params, path: str | Path) -> Path:
    """Write the complete ``params`` as an experiment YAML that :func:`load_experiment` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {EXPERIMENT_KEY: _factory_name(params), **params.as_dict()}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _retinanet_task_class():
    """RetinaNet task whose COCO evaluation works with numpy 2.

    Model Garden's RetinaNet parser emits ground-truth ``num_detections`` with
    shape (batch, 1); its COCO conversion calls ``int()`` on each row, which
    numpy 2 rejects.  The ground truth is flattened to (batch,) here.
    """
    import tensorflow as tf
    from official.vision.tasks.retinanet import RetinaNetTask

    class FlatGroundtruthRetinaNetTask(RetinaNetTask):
        def validation_step(self, inputs, model, metrics=None):
            logs = super().validation_step(inputs, model, metrics)
            if self.task_config.use_coco_metrics:
                groundtruths, outputs = logs[self.coco_metric.name]
                groundtruths = dict(groundtruths)
                groundtruths["num_detections"] = tf.reshape(groundtruths["num_detections"], [-1])
                logs[self.coco_metric.name] = (groundtruths, outputs)
            return logs

    return FlatGroundtruthRetinaNetTask


def build_task(params, model_dir: str | Path | None = None):
    """The Model Garden task of ``params`` (RetinaNet gets the numpy-2 evaluation fix)."""
    from official.core import task_factory
    from official.vision.configs import retinanet as retinanet_config

    logging_dir = str(model_dir) if model_dir is not None else None
    if isinstance(params.task, retinanet_config.RetinaNetTask):
        return _retinanet_task_class()(params.task, logging_dir=logging_dir)
    return task_factory.get_task(params.task, logging_dir=logging_dir)


def _check_resume(params, model_dir: Path) -> None:
    """Refuse to resume a run whose recorded model differs from ``params``."""
    saved = model_dir / RUN_EXPERIMENT_FILE
    if not saved.is_file():
        return
    recorded = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    current = yaml.safe_load(yaml.safe_dump(params.as_dict()))
    diffs = diff_configs(recorded.get("task", {}).get("model", {}), current["task"]["model"], "task.model")
    if recorded.get(EXPERIMENT_KEY) != _factory_name(params):
        diffs.append(f"{EXPERIMENT_KEY}: {recorded.get(EXPERIMENT_KEY)!r} != {_factory_name(params)!r}")
    if diffs:
        raise ExperimentError(
            f"{model_dir} holds a run of another model ({saved}); differences: " + "; ".join(diffs)
        )


def _plain(value):
    """JSON-friendly copy of Model Garden logs (numpy / tensor scalars → float)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def train(params, model_dir: str | Path, *, mode: str = "train_and_eval") -> dict:
    """Run ``mode`` (``train``, ``eval`` or ``train_and_eval``) in ``model_dir``.

    Training resumes from the latest checkpoint in ``model_dir``.  Returns the
    last evaluation's metrics (empty for ``train``), also written to
    ``model_dir/eval_metrics.json``.
    """
    import tf_keras
    from official.common import distribute_utils
    from official.core import train_lib, train_utils
    from official.modeling import performance

    if mode not in ("train", "eval", "train_and_eval"):
        raise ExperimentError(f"mode must be train, eval or train_and_eval, got {mode!r}")
    model_dir = Path(model_dir)
    if "train" in mode:
        if not params.task.train_data.input_path:
            raise ExperimentError("no training data: pass --train-data or set task.train_data.input_path")
        _check_resume(params, model_dir)
        train_utils.serialize_config(params, str(model_dir))
        write_experiment_file(params, model_dir / RUN_EXPERIMENT_FILE)
    if "eval" in mode and not params.task.validation_data.input_path:
        raise ExperimentError("no evaluation data: pass --eval-data or set task.validation_data.input_path")
    if params.runtime.mixed_precision_dtype:
        performance.set_mixed_precision_policy(params.runtime.mixed_precision_dtype)
    strategy = distribute_utils.get_distribution_strategy(
        distribution_strategy=params.runtime.distribution_strategy,
        all_reduce_alg=params.runtime.all_reduce_alg,
        num_gpus=params.runtime.num_gpus,
        tpu_address=params.runtime.tpu,
    )
    with strategy.scope():
        task = build_task(params, model_dir)
    evaluations: list[Mapping] = []
    started = time.perf_counter()
    train_lib.run_experiment(
        distribution_strategy=strategy, task=task, mode=mode, params=params,
        model_dir=str(model_dir), eval_actions=[evaluations.append],
    )
    elapsed = time.perf_counter() - started
    metrics = _plain(evaluations[-1]) if evaluations else {}
    metrics = {k: v for k, v in metrics.items() if not isinstance(v, (dict, str))}
    if metrics:
        record = {"mode": mode, "seconds": elapsed, "metrics": metrics}
        (model_dir / METRICS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    logger.info("%s finished in %.1f s; metrics: %s", mode, elapsed, metrics)
    tf_keras.backend.clear_session()
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="experiment YAML (see configs/)")
    parser.add_argument("--model-dir", required=True, help="checkpoints, params.yaml, summaries")
    parser.add_argument("--train-data", help="TFRecord pattern of the training split")
    parser.add_argument("--eval-data", help="TFRecord pattern of the held-out split")
    parser.add_argument("--mode", default="train_and_eval", choices=("train", "eval", "train_and_eval"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set trainer.train_steps=500")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_experiment(
        args.experiment, overrides=args.set, train_data=args.train_data, eval_data=args.eval_data
    )
    metrics = train(params, args.model_dir, mode=args.mode)
    if "AP50" in metrics:
        logger.info("AP@0.5 (COCO evaluator) = %.4f", metrics["AP50"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
