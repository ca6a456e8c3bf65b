"""Translate a TF Object Detection API ``pipeline.config`` into a Model Garden experiment YAML.

The pipeline is parsed with our own message definitions
(``protos/object_detection/pipeline.proto``: the OD API's field names and
numbers for the subset we translate).  Every field outside that subset is
reported by its path — all of them at once — in an
:class:`UnsupportedConfigError`; ``ignore_unsupported=True`` (CLI
``--ignore-unsupported``) drops them with a warning instead.

What is translated (OD API → Model Garden):

* ``model.ssd`` → RetinaNet (``configs/retinanet_mobilenetv2_fpn_glb.yaml``),
  ``model.faster_rcnn`` → Faster R-CNN (``configs/faster_rcnn_resnet50_fpn_glb.yaml``);
  ``feature_extractor.type`` picks the backbone (MobileNet v1/v2/v3, ResNet
  50/101/152), ``depth_multiplier`` its width.
* ``num_classes`` (without background) → ``task.model.num_classes`` (with it).
* ``image_resizer``: ``fixed_shape_resizer`` → ``input_size [h, w, 3]``;
  ``keep_aspect_ratio_resizer`` → ``[max, max, 3]`` (Model Garden fits the
  image into that square and pads; the OD API's ``min_dimension`` has no
  counterpart and is reported as a note).
* ``train_config``: ``batch_size`` → ``train_data.global_batch_size``;
  ``num_steps`` → ``trainer.train_steps``; optimizer (momentum → ``sgd``,
  ``rms_prop`` → ``rmsprop``, ``adam``), learning-rate schedule (constant,
  exponential, manual step with warmup, cosine with warmup) and moving average
  (→ ``ema``) with the same step-by-step values; ``fine_tune_checkpoint`` →
  ``task.init_checkpoint`` (``fine_tune_checkpoint_type`` ``detection``/``full``
  → all modules, otherwise the backbone).
* ``train_input_reader`` / ``eval_input_reader`` TFRecord paths →
  ``train_data`` / ``validation_data.input_path``.  ``label_map_path`` is
  accepted and unused (one class, "landmark").

Example::

    python -m training.detector.od_api_config pipeline.config --out experiment.yaml
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml
from google.protobuf import text_format

from training.detector.protos import pipeline_pb2

__all__ = [
    "PipelineConfigError",
    "UnsupportedConfigError",
    "Translation",
    "unsupported_fields",
    "parse_pipeline_config",
    "translate",
    "translate_file",
    "main",
]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("configs")
_SINGLE_STAGE_BASE = CONFIG_DIR / "retinanet_mobilenetv2_fpn_glb.yaml"
_TWO_STAGE_BASE = CONFIG_DIR / "faster_rcnn_resnet50_fpn_glb.yaml"

# OD API feature extractor type → Model Garden backbone (type, model_id).
_SSD_BACKBONES = {
    **{f"ssd_mobilenet_v1{s}": ("mobilenet", "MobileNetV1") for s in ("", "_keras", "_fpn", "_fpn_keras")},
    **{f"ssd_mobilenet_v2{s}": ("mobilenet", "MobileNetV2") for s in ("", "_keras", "_fpn", "_fpn_keras")},
    "ssd_mobilenet_v3_large": ("mobilenet", "MobileNetV3Large"),
    "ssd_mobilenet_v3_small": ("mobilenet", "MobileNetV3Small"),
    **{f"ssd_resnet{d}_v1_fpn{s}": ("resnet", d) for d in (50, 101, 152) for s in ("", "_keras")},
}
_FASTER_RCNN_BACKBONES = {
    f"faster_rcnn_resnet{d}{s}": ("resnet", d)
    for d in (50, 101, 152)
    for s in ("", "_keras", "_fpn_keras", "_v1", "_v1_fpn_keras")
}


class PipelineConfigError(ValueError):
    """A pipeline.config that cannot be read (syntax, types)."""


class UnsupportedConfigError(PipelineConfigError):
    """Fields or values the translation does not support; ``problems`` lists each one."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} unsupported field(s)/value(s):\n{lines}")


@dataclass
class Translation:
    """A Model Garden experiment (our YAML format, ``experiment:`` key first) and notes.

    ``notes`` list what the translation approximated or ignored.
    """

    experiment: dict
    notes: list[str] = field(default_factory=list)

    def to_yaml(self, source: str = "pipeline.config") -> str:
        header = [f"# Translated from {source} by training/detector/od_api_config.py."]
        header += [f"# NOTE: {n}" for n in self.notes]
        return "\n".join(header) + "\n" + yaml.safe_dump(self.experiment, sort_keys=False)


# --- parsing -------------------------------------------------------------------------

_OPEN = {"{": "}", "<": ">", "[": "]"}


def _skip_balanced(tok) -> None:
    depth = 0
    while True:
        if tok.AtEnd():
            raise tok.ParseError("unbalanced brackets")
        token = tok.token
        tok.NextToken()
        if token in _OPEN:
            depth += 1
        elif token in _OPEN.values():
            depth -= 1
            if depth == 0:
                return


def _skip_value(tok) -> None:
    tok.TryConsume(":")
    if tok.token in _OPEN:
        _skip_balanced(tok)
        return
    if tok.AtEnd():
        raise tok.ParseError("missing value")
    was_string = tok.token[:1] in ("'", '"')
    tok.NextToken()
    while was_string and tok.token[:1] in ("'", '"'):
        tok.NextToken()


def _walk(tok, descriptor, prefix: str, out: list[str], closer: str | None) -> None:
    """Record the paths of fields ``descriptor`` lacks, up to ``closer`` (None: end of text)."""
    while not (tok.AtEnd() if closer is None else tok.TryConsume(closer)):
        if tok.AtEnd():
            raise tok.ParseError(f"expected {closer!r}")
        if tok.TryConsume("["):
            name = ""
            while not tok.TryConsume("]"):
                if tok.AtEnd():
                    raise tok.ParseError("unterminated extension name")
                name += tok.token
                tok.NextToken()
            out.append(f"{prefix}.[{name}]" if prefix else f"[{name}]")
            _skip_value(tok)
        else:
            name = tok.ConsumeIdentifierOrNumber()
            path = f"{prefix}.{name}" if prefix else name
            fd = descriptor.fields_by_name.get(name)
            if fd is None:
                if path not in out:
                    out.append(path)
                _skip_value(tok)
            elif fd.message_type is not None:
                tok.TryConsume(":")
                if tok.TryConsume("["):
                    while not tok.TryConsume("]"):
                        opener = tok.token
                        tok.Consume(opener)
                        _walk(tok, fd.message_type, path, out, _OPEN[opener])
                        tok.TryConsume(",")
                else:
                    opener = tok.token
                    if opener not in ("{", "<"):
                        raise tok.ParseError(f"{path}: expected '{{' for a message")
                    tok.Consume(opener)
                    _walk(tok, fd.message_type, path, out, _OPEN[opener])
            else:
                _skip_value(tok)
        if not tok.TryConsume(";"):
            tok.TryConsume(",")


def unsupported_fields(text: str) -> list[str]:
    """Paths (``model.ssd.box_coder`` ...) of every field our pipeline subset lacks, in order."""
    out: list[str] = []
    try:
        tok = text_format.Tokenizer(text.splitlines())
        _walk(tok, pipeline_pb2.TrainEvalPipelineConfig.DESCRIPTOR, "", out, None)
    except text_format.ParseError as exc:
        raise PipelineConfigError(f"cannot parse pipeline config: {exc}") from exc
    return out


def parse_pipeline_config(
    text: str, *, source: str = "pipeline.config", ignore_unsupported: bool = False
) -> tuple[pipeline_pb2.TrainEvalPipelineConfig, list[str]]:
    """Parse text-format ``text``; returns (message, ignored field paths).

    Raises :class:`UnsupportedConfigError` naming every unsupported field
    unless ``ignore_unsupported``.
    """
    unknown = unsupported_fields(text)
    if unknown and not ignore_unsupported:
        raise UnsupportedConfigError(source, [f"{p}: field not supported" for p in unknown])
    message = pipeline_pb2.TrainEvalPipelineConfig()
    try:
        text_format.Parse(
            text, message, allow_unknown_field=ignore_unsupported, allow_unknown_extension=ignore_unsupported
        )
    except text_format.ParseError as exc:
        raise PipelineConfigError(f"{source}: {exc}") from exc
    return message, unknown


# --- translation ---------------------------------------------------------------------


def _learning_rate(lr, path: str, problems: list[str]) -> tuple[dict, dict]:
    """(learning_rate, warmup) Model Garden configs of an OD API ``LearningRate``."""
    kind = lr.WhichOneof("learning_rate")
    none = {"type": None}
    if kind is None:
        problems.append(f"{path}: no learning rate schedule set")
        return none, none
    sched = getattr(lr, kind)
    if kind == "constant_learning_rate":
        return {"type": "constant", "constant": {"learning_rate": sched.learning_rate}}, none
    if kind == "exponential_decay_learning_rate":
        return {
            "type": "exponential",
            "exponential": {
                "initial_learning_rate": sched.initial_learning_rate,
                "decay_steps": sched.decay_steps,
                "decay_rate": sched.decay_factor,
                "staircase": sched.staircase,
            },
        }, none
    if kind == "manual_step_learning_rate":
        steps = [s.step for s in sched.schedule]
        if not steps:
            problems.append(f"{path}.manual_step_learning_rate.schedule: empty")
            return none, none
        if min(steps) < 1 or any(b <= a for a, b in zip(steps, steps[1:])):
            problems.append(f"{path}.manual_step_learning_rate.schedule: steps must be >= 1 and increasing")
            return none, none
        # OD API switches to rate i at step >= boundary; Model Garden after step > boundary.
        rates = [sched.initial_learning_rate] + [s.learning_rate for s in sched.schedule]
        lr_config = {"type": "stepwise", "stepwise": {"boundaries": [s - 1 for s in steps], "values": rates}}
        warmup = none
        if sched.warmup:
            warmup = {"type": "linear", "linear": {"warmup_steps": steps[0],
                                                    "warmup_learning_rate": sched.initial_learning_rate}}
        return lr_config, warmup
    if sched.hold_base_rate_steps:
        problems.append(f"{path}.cosine_decay_learning_rate.hold_base_rate_steps: {sched.hold_base_rate_steps} "
                        "(only 0 is supported)")
    if sched.total_steps <= sched.warmup_steps:
        problems.append(f"{path}.cosine_decay_learning_rate: total_steps must exceed warmup_steps")
        return none, none
    lr_config = {
        "type": "cosine",
        "cosine": {
            "initial_learning_rate": sched.learning_rate_base,
            "decay_steps": sched.total_steps - sched.warmup_steps,
            "offset": sched.warmup_steps,
        },
    }
    warmup = none
    if sched.warmup_steps:
        warmup = {"type": "linear", "linear": {"warmup_steps": sched.warmup_steps,
                                                "warmup_learning_rate": sched.warmup_learning_rate}}
    return lr_config, warmup


def _optimizer(opt, problems: list[str]) -> dict:
    path = "train_config.optimizer"
    kind = opt.WhichOneof("optimizer")
    if kind is None:
        problems.append(f"{path}: no optimizer set")
        return {}
    inner = getattr(opt, kind)
    if kind == "momentum_optimizer":
        optimizer = {"type": "sgd", "sgd": {"momentum": inner.momentum_optimizer_value}}
    elif kind == "rms_prop_optimizer":
        optimizer = {"type": "rmsprop", "rmsprop": {
            "rho": inner.decay, "momentum": inner.momentum_optimizer_value, "epsilon": inner.epsilon}}
    else:
        optimizer = {"type": "adam", "adam": {}}
    learning_rate, warmup = _learning_rate(inner.learning_rate, f"{path}.{kind}.learning_rate", problems)
    config = {"optimizer": optimizer, "learning_rate": learning_rate, "warmup": warmup}
    if opt.use_moving_average:
        config["ema"] = {"average_decay": opt.moving_average_decay}
    return config


def _input_paths(reader, path: str, problems: list[str]) -> str | list[str] | None:
    if reader.WhichOneof("input_reader") is None:
        return None
    paths = list(reader.tf_record_input_reader.input_path)
    if not paths:
        problems.append(f"{path}.tf_record_input_reader.input_path: empty")
        return None
    return paths[0] if len(paths) == 1 else paths


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "type" not in value:
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def translate(config: pipeline_pb2.TrainEvalPipelineConfig, *, source: str = "pipeline.config") -> Translation:
    """Model Garden experiment of a parsed pipeline; raises :class:`UnsupportedConfigError`."""
    problems: list[str] = []
    notes: list[str] = []
    kind = config.model.WhichOneof("model")
    if kind is None:
        raise UnsupportedConfigError(source, ["model: neither ssd nor faster_rcnn is set"])
    arch = getattr(config.model, kind)
    path = f"model.{kind}"
    backbones = _SSD_BACKBONES if kind == "ssd" else _FASTER_RCNN_BACKBONES
    base_file = _SINGLE_STAGE_BASE if kind == "ssd" else _TWO_STAGE_BASE
    base = yaml.safe_load(base_file.read_text(encoding="utf-8"))
    model: dict = {}
    extractor = arch.feature_extractor.type
    if extractor not in backbones:
        problems.append(f"{path}.feature_extractor.type: {extractor!r} not supported "
                        f"(supported: {', '.join(sorted(backbones))})")
    else:
        backbone_type, model_id = backbones[extractor]
        width = arch.feature_extractor.depth_multiplier if kind == "ssd" else 1.0
        if backbone_type == "mobilenet":
            model["backbone"] = {"type": "mobilenet", "mobilenet": {"model_id": model_id, "filter_size_scale": width}}
        else:
            model["backbone"] = {"type": "resnet", "resnet": {"model_id": model_id, "depth_multiplier": width}}
            if kind == "ssd":
                model["decoder"] = {"type": "fpn", "fpn": {"num_filters": 256, "use_separable_conv": False}}
                model["head"] = {"num_filters": 256, "use_separable_conv": False}
    if arch.num_classes < 1:
        problems.append(f"{path}.num_classes: must be >= 1, got {arch.num_classes}")
    model["num_classes"] = arch.num_classes + 1
    if arch.num_classes != 1:
        notes.append(f"num_classes {arch.num_classes}: landmark detectors have one class")
    resizer = arch.image_resizer.WhichOneof("image_resizer_oneof")
    if resizer == "fixed_shape_resizer":
        r = arch.image_resizer.fixed_shape_resizer
        model["input_size"] = [r.height, r.width, 3]
    elif resizer == "keep_aspect_ratio_resizer":
        r = arch.image_resizer.keep_aspect_ratio_resizer
        model["input_size"] = [r.max_dimension, r.max_dimension, 3]
        notes.append(f"keep_aspect_ratio_resizer: images fit into {r.max_dimension}x{r.max_dimension} "
                     f"(padded); min_dimension {r.min_dimension} has no Model Garden counterpart")
    task: dict = {"model": model}
    trainer: dict = {}
    train = config.train_config
    if config.HasField("train_config"):
        if train.HasField("batch_size"):
            task["train_data"] = {"global_batch_size": train.batch_size}
        if train.HasField("num_steps"):
            if train.num_steps == 0:
                problems.append("train_config.num_steps: 0 (train forever) is not supported")
            trainer["train_steps"] = train.num_steps
        if train.HasField("optimizer"):
            trainer["optimizer_config"] = _optimizer(train.optimizer, problems)
        if train.fine_tune_checkpoint:
            task["init_checkpoint"] = train.fine_tune_checkpoint
            full = train.fine_tune_checkpoint_type in ("detection", "full")
            task["init_checkpoint_modules"] = "all" if full else "backbone"
            notes.append("fine_tune_checkpoint must be a Model Garden (TF2 object-based) checkpoint; "
                         "Object Detection API checkpoints use other variable names")
        elif train.fine_tune_checkpoint_type:
            notes.append("fine_tune_checkpoint_type ignored: no fine_tune_checkpoint")
    if config.HasField("train_input_reader"):
        paths = _input_paths(config.train_input_reader, "train_input_reader", problems)
        if paths is not None:
            task.setdefault("train_data", {})["input_path"] = paths
    if len(config.eval_input_reader) > 1:
        problems.append(f"eval_input_reader: {len(config.eval_input_reader)} readers (only one is supported)")
    if config.eval_input_reader:
        paths = _input_paths(config.eval_input_reader[0], "eval_input_reader", problems)
        if paths is not None:
            task["validation_data"] = {"input_path": paths}
    for name, reader in [("train_input_reader", config.train_input_reader)] + [
        ("eval_input_reader", r) for r in config.eval_input_reader
    ]:
        if reader.label_map_path:
            notes.append(f"{name}.label_map_path ignored (one class, 'landmark' = 1)")
    if problems:
        raise UnsupportedConfigError(source, problems)
    experiment = _deep_merge(base, {"task": task, "trainer": trainer})
    if "train_steps" in trainer and "optimizer_config" not in trainer:
        _rescale_base_schedule(experiment["trainer"], base["trainer"]["train_steps"], notes)
    return Translation(experiment=experiment, notes=notes)


def _rescale_base_schedule(trainer: dict, base_steps: int, notes: list[str]) -> None:
    """Stretch the base config's schedule to ``trainer["train_steps"]`` (no optimizer given)."""
    steps = trainer["train_steps"]
    factor = steps / base_steps
    config = trainer["optimizer_config"]
    lr = config["learning_rate"]
    if lr.get("type") == "cosine":
        lr["cosine"]["decay_steps"] = steps
    elif lr.get("type") == "stepwise":
        lr["stepwise"]["boundaries"] = [max(1, round(b * factor)) for b in lr["stepwise"]["boundaries"]]
    warmup = config.get("warmup") or {}
    if warmup.get("type") == "linear":
        warmup["linear"]["warmup_steps"] = max(1, min(warmup["linear"]["warmup_steps"], steps // 10))
    notes.append(f"no optimizer given: the base schedule is stretched to {steps} steps")


def translate_file(path: str | Path, *, ignore_unsupported: bool = False) -> Translation:
    """Read, parse and translate a text-format ``pipeline.config`` file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineConfigError(f"cannot read pipeline config {path}: {exc}") from exc
    message, ignored = parse_pipeline_config(text, source=str(path), ignore_unsupported=ignore_unsupported)
    translation = translate(message, source=str(path))
    if ignored:
        logger.warning("%s: ignored unsupported fields: %s", path, ", ".join(ignored))
        translation.notes.insert(0, "ignored unsupported fields: " + ", ".join(ignored))
    return translation


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", help="text-format pipeline.config of the Object Detection API")
    parser.add_argument("--out", required=True, help="experiment YAML to write (for train.py --experiment)")
    parser.add_argument("--ignore-unsupported", action="store_true",
                        help="drop unsupported fields with a warning instead of failing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    translation = translate_file(args.pipeline, ignore_unsupported=args.ignore_unsupported)
    Path(args.out).write_text(translation.to_yaml(args.pipeline), encoding="utf-8")
    for note in translation.notes:
        logger.info("note: %s", note)
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
