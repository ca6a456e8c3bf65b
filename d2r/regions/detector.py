"""Landmark detector inference behind one interface: ``Detector.detect(image) -> Boxes``.

:func:`load_detector` loads a SavedModel that follows the TF Object Detection
serving convention: a uint8 image batch ``(1, H, W, 3)`` in; normalized
``detection_boxes`` ``(1, N, 4)`` ``[ymin, xmin, ymax, xmax]``,
``detection_scores`` ``(1, N)``, ``detection_classes`` ``(1, N)`` (1 =
landmark) and optionally ``num_detections`` ``(1,)`` out.  Two flavours load:

* TF1 exports such as the Detect-to-Retrieve release (``d2r_frcnn_20190411``,
  ``d2r_mnetssd_20190411``): graph tensors ``input_images:0`` (or the Object
  Detection API's ``image_tensor:0``), ``detection_boxes:0``,
  ``detection_scores:0``, ``detection_classes:0``, ``num_detections:0``,
  fetched by name as the reference ``delf/python/examples/detector.py`` does;
  when the names are absent the ``serving_default`` signature is used.
* TF2 SavedModels with a ``serving_default`` signature of that shape (the
  models exported by ``training/detector/export.py``, TF2 Object Detection API
  exports).

Boxes come back in original-image pixels (``x1, y1, x2, y2``), best first.
TensorFlow is imported only when a model is loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from d2r.config import RegionsConfig
from d2r.errors import InputError
from d2r.types import Boxes

__all__ = ["DetectorError", "DetectFn", "Detector", "load_detector", "normalized_to_pixels"]

logger = logging.getLogger(__name__)

_DEFAULTS = RegionsConfig()

DetectFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""(1, H, W, 3) uint8 → (boxes (N, 4) normalized yxyx, scores (N,), classes (N,))."""

_TF1_INPUT_NAMES = ("input_images:0", "image_tensor:0")
_OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes")
_NUM_KEY = "num_detections"


class DetectorError(InputError):
    """A detector model that cannot be loaded or run; the message names the path."""


def normalized_to_pixels(boxes_yxyx: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Normalized ``[ymin, xmin, ymax, xmax]`` (N, 4) → pixel ``x1, y1, x2, y2`` float32.

    Coordinates are clipped to [0, 1] and each box's corners ordered, so the
    result lies inside the ``image_size`` (width, height) image.
    """
    b = np.clip(np.asarray(boxes_yxyx, np.float64).reshape(-1, 4), 0.0, 1.0)
    width, height = image_size
    x1 = np.minimum(b[:, 1], b[:, 3]) * width
    x2 = np.maximum(b[:, 1], b[:, 3]) * width
    y1 = np.minimum(b[:, 0], b[:, 2]) * height
    y2 = np.maximum(b[:, 0], b[:, 2]) * height
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def _check_options(score_threshold: float, max_boxes: int) -> None:
    if not np.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be finite, got {score_threshold}")
    if isinstance(max_boxes, bool) or int(max_boxes) != max_boxes or max_boxes < 0:
        raise ValueError(f"max_boxes must be an integer >= 0, got {max_boxes!r}")


class Detector:
    """A landmark detector: ``detect(image) -> Boxes`` in original-image pixels.

    Args:
        fn: the model, see :data:`DetectFn`.
        score_threshold: keep boxes whose score is ``>=`` this (the reference's
            test; 0.1 is the paper's indexing threshold).
        max_boxes: keep at most this many boxes, highest scores first.
        name: where the model came from (for messages).
    """

    def __init__(
        self,
        fn: DetectFn,
        *,
        score_threshold: float = _DEFAULTS.score_threshold,
        max_boxes: int = _DEFAULTS.max_boxes,
        name: str = "detector",
    ) -> None:
        _check_options(score_threshold, max_boxes)
        self._fn = fn
        self.score_threshold = float(score_threshold)
        self.max_boxes = int(max_boxes)
        self.name = name

    def __repr__(self) -> str:
        return (
            f"Detector({self.name!r}, score_threshold={self.score_threshold}, "
            f"max_boxes={self.max_boxes})"
        )

    def detect(
        self,
        image: np.ndarray,
        *,
        score_threshold: Optional[float] = None,
        max_boxes: Optional[int] = None,
    ) -> Boxes:
        """Boxes of ``image`` (H, W, 3) uint8 RGB, best first.

        ``score_threshold`` / ``max_boxes`` override the detector's own for
        this call (``score_threshold=0`` keeps every box, as the reference does
        when it writes ``.boxes`` files).  Labels are the model's classes.
        """
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        limit = self.max_boxes if max_boxes is None else max_boxes
        _check_options(threshold, limit)
        image = _check_image(image)
        boxes, scores, classes = self._fn(image[np.newaxis])
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        classes = np.asarray(classes).reshape(-1)
        if not (len(boxes) == len(scores) == len(classes)):
            raise DetectorError(
                f"{self.name}: model returned {len(boxes)} boxes, {len(scores)} scores, "
                f"{len(classes)} classes"
            )
        finite = np.isfinite(scores) & np.all(np.isfinite(boxes), axis=1)
        keep = np.flatnonzero(finite & (scores >= threshold))
        keep = keep[np.argsort(-scores[keep], kind="stable")][: int(limit)]
        height, width = image.shape[:2]
        return Boxes(
            xyxy=normalized_to_pixels(boxes[keep], (width, height)),
            scores=scores[keep],
            labels=np.rint(classes[keep].astype(np.float64)).astype(np.int32),
        )


def _first_row(outputs: dict, num) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch row 0 of the output tensors, truncated to ``num_detections``."""
    boxes, scores, classes = (np.asarray(outputs[k])[0] for k in _OUTPUT_KEYS)
    if num is not None:
        n = int(np.asarray(num).reshape(-1)[0])
        boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
    return boxes, scores, classes


def _tf1_by_name(loaded, path: str) -> Optional[DetectFn]:
    """Prune a TF1 graph to the reference tensor names; None when they are absent."""
    names = {op.name for op in loaded.graph.get_operations()}
    for input_name in _TF1_INPUT_NAMES:
        if input_name[:-2] not in names:
            continue
        fetches = {k: f"{k}:0" for k in _OUTPUT_KEYS if k in names}
        if len(fetches) != len(_OUTPUT_KEYS):
            missing = sorted(set(_OUTPUT_KEYS) - set(fetches))
            raise DetectorError(f"{path}: TF1 graph has {input_name} but lacks {missing}")
        if _NUM_KEY in names:
            fetches[_NUM_KEY] = f"{_NUM_KEY}:0"
        pruned = loaded.prune(input_name, fetches)
        logger.info("%s: TF1 graph, input %s", path, input_name)

        def run(batch: np.ndarray, _fn=pruned, _owner=loaded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            # _owner keeps the SavedModel (its variables) alive as long as ``run``.
            import tensorflow as tf

            out = {k: v.numpy() for k, v in _fn(tf.constant(batch)).items()}
            return _first_row(out, out.get(_NUM_KEY))

        return run
    return None


def _by_signature(loaded, path: str) -> DetectFn:
    """Call the ``serving_default`` (or only) signature with a uint8 batch."""
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if "serving_default" in signatures:
        fn = signatures["serving_default"]
    elif len(signatures) == 1:
        fn = next(iter(signatures.values()))
    else:
        raise DetectorError(
            f"{path}: no serving_default signature and no TF1 tensors named "
            f"{' / '.join(_TF1_INPUT_NAMES)} (signatures: {sorted(signatures)})"
        )
    outputs = set(fn.structured_outputs)
    missing = [k for k in _OUTPUT_KEYS if k not in outputs]
    if missing:
        raise DetectorError(
            f"{path}: serving signature lacks outputs {missing} (has {sorted(outputs)}); "
            "expected the TF Object Detection convention"
        )
    _, kwargs = fn.structured_input_signature
    if len(kwargs) != 1:
        raise DetectorError(f"{path}: serving signature must take one image input, has {sorted(kwargs)}")
    (input_name, spec), = kwargs.items()
    if spec.dtype.name != "uint8":
        raise DetectorError(f"{path}: serving input {input_name!r} is {spec.dtype.name}, expected uint8")
    logger.info("%s: signature input %s %s", path, input_name, spec.shape)

    def run(batch: np.ndarray, _owner=loaded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # _owner keeps the SavedModel (its variables) alive as long as ``run``.
        import tensorflow as tf

        out = {k: v.numpy() for k, v in fn(**{input_name: tf.constant(batch)}).items()}
        return _first_row(out, out.get(_NUM_KEY))

    return run


def load_detector(
    path: str | os.PathLike,
    *,
    score_threshold: float = _DEFAULTS.score_threshold,
    max_boxes: int = _DEFAULTS.max_boxes,
) -> Detector:
    """Load a TF1 or TF2 detection SavedModel directory (see the module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise DetectorError(f"detector path {path} is not a directory")
    if not any((path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
        raise DetectorError(f"{path} is not a SavedModel directory (no saved_model.pb)")
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path), tags=["serve"])
    except (OSError, ValueError, RuntimeError, tf.errors.OpError) as exc:
        raise DetectorError(f"cannot load detector SavedModel {path}: {exc}") from exc
    is_tf1 = hasattr(loaded, "prune") and hasattr(loaded, "graph")
    fn = _tf1_by_name(loaded, str(path)) if is_tf1 else None
    if fn is None:
        fn = _by_signature(loaded, str(path))
    return Detector(fn, score_threshold=score_threshold, max_boxes=max_boxes, name=str(path))
