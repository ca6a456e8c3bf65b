"""AP@0.5 of a detector on held-out TFRecords (written by ``prepare_data``).

The detector runs through :func:`d2r.regions.detector.load_detector`, so
this measures the exported model exactly as retrieval uses it.  AP is the
all-point interpolated average precision of PASCAL VOC 2010+: detections of
all images sorted by score, each matched to the unmatched ground-truth box of
its image with the highest IoU if that IoU is ``>= iou_threshold``, AP the area
under the precision envelope of the precision/recall curve.

Example::

    python -m training.detector.evaluate --detector RUN/export --data 'DATA/val-*.tfrecord'
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from d2r.types import Boxes

__all__ = ["box_iou", "average_precision", "read_examples", "evaluate_detector", "main"]

logger = logging.getLogger(__name__)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) float64 IoU of (N, 4) and (M, 4) ``x1, y1, x2, y2`` boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def average_precision(
    detections: Sequence[Boxes], groundtruth: Sequence[np.ndarray], *, iou_threshold: float = 0.5
) -> float:
    """All-point interpolated AP of per-image ``detections`` against (K_i, 4) xyxy ``groundtruth``.

    Returns NaN when there is no ground-truth box at all.
    """
    if len(detections) != len(groundtruth):
        raise ValueError(f"{len(detections)} detection sets for {len(groundtruth)} ground-truth sets")
    num_gt = sum(len(np.reshape(g, (-1, 4))) for g in groundtruth)
    if num_gt == 0:
        return float("nan")
    scores, image_ids, box_ids = [], [], []
    for i, det in enumerate(detections):
        scores.append(det.scores)
        image_ids.append(np.full(len(det), i))
        box_ids.append(np.arange(len(det)))
    scores = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    image_ids = np.concatenate(image_ids)[order] if len(order) else np.zeros(0, int)
    box_ids = np.concatenate(box_ids)[order] if len(order) else np.zeros(0, int)
    ious = [box_iou(det.xyxy, g) for det, g in zip(detections, groundtruth)]
    matched = [np.zeros(iou.shape[1], bool) for iou in ious]
    true_pos = np.zeros(len(order), bool)
    for rank, (img, box) in enumerate(zip(image_ids, box_ids)):
        iou = np.where(matched[img], -1.0, ious[img][box])
        if iou.size and iou.max() >= iou_threshold:
            matched[img][int(np.argmax(iou))] = True
            true_pos[rank] = True
    tp = np.cumsum(true_pos)
    recall = np.concatenate([[0.0], tp / num_gt, [1.0]])
    precision = np.concatenate([[1.0], tp / np.arange(1, len(order) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def read_examples(pattern: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(id, image (H, W, 3) uint8, ground truth (K, 4) float32 pixel xyxy) of each record."""
    import tensorflow as tf

    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern!r}")
    features = {
        "image/encoded": tf.io.FixedLenFeature((), tf.string),
        "image/filename": tf.io.FixedLenFeature((), tf.string, default_value=""),
        **{f"image/object/bbox/{k}": tf.io.VarLenFeature(tf.float32) for k in ("ymin", "xmin", "ymax", "xmax")},
    }
    for record in tf.data.TFRecordDataset(files):
        parsed = tf.io.parse_single_example(record, features)
        image = tf.io.decode_image(parsed["image/encoded"], channels=3).numpy()
        height, width = image.shape[:2]
        coords = {k: tf.sparse.to_dense(parsed[f"image/object/bbox/{k}"]).numpy() for k in ("ymin", "xmin", "ymax", "xmax")}
        xyxy = np.stack(
            [coords["xmin"] * width, coords["ymin"] * height, coords["xmax"] * width, coords["ymax"] * height], axis=1
        ).astype(np.float32)
        yield parsed["image/filename"].numpy().decode(), image, xyxy


def evaluate_detector(detector, pattern: str, *, iou_threshold: float = 0.5) -> dict:
    """AP of ``detector`` (a :class:`d2r.regions.detector.Detector`) on the records of ``pattern``.

    Every box is kept (``score_threshold=0``, up to the detector's
    ``max_boxes``).  Returns ``{"ap", "iou_threshold", "images", "groundtruth_boxes",
    "detections"}``.
    """
    detections, groundtruth = [], []
    for _, image, gt in tqdm(read_examples(pattern), desc="evaluate", unit="img", disable=None):
        detections.append(detector.detect(image, score_threshold=0.0))
        groundtruth.append(gt)
    return {
        "ap": average_precision(detections, groundtruth, iou_threshold=iou_threshold),
        "iou_threshold": iou_threshold,
        "images": len(groundtruth),
        "groundtruth_boxes": int(sum(len(g) for g in groundtruth)),
        "detections": int(sum(len(d) for d in detections)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from d2r.regions.detector import load_detector

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", required=True, help="exported SavedModel directory")
    parser.add_argument("--data", required=True, help="TFRecord file pattern (e.g. 'DATA/val-*.tfrecord')")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold (default 0.5)")
    parser.add_argument("--max-boxes", type=int, default=100, help="detections per image (default 100)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    detector = load_detector(args.detector, score_threshold=0.0, max_boxes=args.max_boxes)
    result = evaluate_detector(detector, args.data, iou_threshold=args.iou)
    logger.info("AP@%.2f = %.4f on %d images (%d boxes)", args.iou, result["ap"], result["images"],
                result["groundtruth_boxes"])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
