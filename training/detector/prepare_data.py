"""Google Landmark Boxes CSVs (or the synthetic benchmark's ``boxes.csv``) → TFRecords.

Input CSVs have the Google Landmark Boxes layout: a header with ``id`` and
``box`` columns (others are ignored), ``box`` holding one or more boxes as
``ymin xmin ymax xmax`` normalized to [0, 1], separated by spaces; an id that
appears on several rows collects all their boxes.  Images are found by id in
``--images`` as ``<id>.<ext>`` or in the Google Landmarks v2 layout
``<id[0]>/<id[1]>/<id[2]>/<id>.<ext>``.

Output: ``OUT/<name>-SSSSS-of-NNNNN.tfrecord`` (and ``OUT/val-...`` with
``--val-fraction``) holding ``tf.train.Example`` records in the Model Garden /
TF Object Detection layout read by
``official.vision.dataloaders.tf_example_decoder.TfExampleDecoder``:
``image/encoded`` (JPEG), ``image/format``, ``image/height``, ``image/width``,
``image/source_id`` (a decimal record number: Model Garden parses it as an
integer), ``image/filename`` (the CSV id), ``image/object/bbox/{ymin,xmin,ymax,xmax}``
(normalized), ``image/object/class/label`` (1 = landmark),
``image/object/area`` (pixels) and ``image/object/is_crowd`` (0).  A manifest
``OUT/prepare_data.json`` records the arguments, counts, files and skipped ids.

Images are decoded with :func:`d2r.io.images.load_image` (EXIF orientation
applied, as at retrieval time), downscaled to ``--max-side`` and re-encoded.

Example::

    python -m training.detector.prepare_data --boxes-csv SYNTH/boxes.csv \
        --images SYNTH/jpg --out DATA --val-fraction 0.2
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from d2r.io.images import ImageError, load_image

__all__ = [
    "LANDMARK_CLASS",
    "IMAGE_EXTENSIONS",
    "DataError",
    "BoxedImage",
    "read_boxes_csv",
    "find_image",
    "encode_example",
    "split_ids",
    "prepare",
    "main",
]

logger = logging.getLogger(__name__)

LANDMARK_CLASS = 1
"""Class id of "landmark" (0 is background, as in the Object Detection API)."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
"""Extensions tried, in order, when looking an image id up."""

_COORD_TOLERANCE = 1e-3
MANIFEST = "prepare_data.json"


class DataError(ValueError):
    """A CSV row or image that cannot become a training example."""


@dataclass(frozen=True)
class BoxedImage:
    """One image id and its ground-truth boxes.

    Attributes:
        image_id: the CSV id.
        boxes: (K, 4) float32 normalized ``ymin, xmin, ymax, xmax``, K >= 1.
    """

    image_id: str
    boxes: np.ndarray


def _parse_box_field(text: str, where: str) -> np.ndarray:
    """``"ymin xmin ymax xmax [...]"`` → (K, 4) float32, validated and clipped to [0, 1]."""
    tokens = text.replace(",", " ").split()
    if not tokens or len(tokens) % 4:
        raise DataError(f"{where}: box {text!r} must hold 4 numbers per box (ymin xmin ymax xmax)")
    try:
        values = np.array([float(t) for t in tokens], np.float64).reshape(-1, 4)
    except ValueError as exc:
        raise DataError(f"{where}: box {text!r} is not numeric") from exc
    if not np.all(np.isfinite(values)):
        raise DataError(f"{where}: box {text!r} has non-finite values")
    if np.any(values < -_COORD_TOLERANCE) or np.any(values > 1 + _COORD_TOLERANCE):
        raise DataError(f"{where}: box {text!r} is not normalized to [0, 1]")
    values = np.clip(values, 0.0, 1.0)
    if np.any(values[:, 2] <= values[:, 0]) or np.any(values[:, 3] <= values[:, 1]):
        raise DataError(f"{where}: box {text!r} is empty (needs ymin < ymax and xmin < xmax)")
    return values.astype(np.float32)


def read_boxes_csv(path: str | Path) -> list[BoxedImage]:
    """Read a Google Landmark Boxes CSV; ids in first-appearance order, repeated ids merged."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read boxes CSV {path}: {exc}") from exc
    boxes: dict[str, list[np.ndarray]] = {}
    with handle:
        reader = csv.DictReader(handle)
        missing = {"id", "box"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(
                f"{path}: header {reader.fieldnames!r} lacks column(s) {sorted(missing)} "
                "(expected the Google Landmark Boxes layout id,box)"
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            image_id = (row["id"] or "").strip()
            if not image_id:
                raise DataError(f"{where}: empty id")
            boxes.setdefault(image_id, []).append(_parse_box_field(row["box"] or "", where))
    return [BoxedImage(k, np.concatenate(v)) for k, v in boxes.items()]


def find_image(images_dir: str | Path, image_id: str) -> Path:
    """Path of image ``image_id`` in ``images_dir`` (flat or GLDv2 nested layout)."""
    images_dir = Path(images_dir)
    folders = [images_dir]
    if len(image_id) >= 3:
        folders.append(images_dir / image_id[0] / image_id[1] / image_id[2])
    for folder in folders:
        for ext in IMAGE_EXTENSIONS:
            candidate = folder / f"{image_id}{ext}"
            if candidate.is_file():
                return candidate
    raise DataError(f"no image for id {image_id!r} in {images_dir} (tried {IMAGE_EXTENSIONS})")


def encode_example(
    image: np.ndarray, boxes: np.ndarray, *, source_id: int, filename: str, quality: int = 95
) -> bytes:
    """Serialized ``tf.train.Example`` of one image and its boxes.

    Args:
        image: (H, W, 3) uint8 RGB.
        boxes: (K, 4) float32 normalized ``ymin, xmin, ymax, xmax``.
        source_id: unique integer of the record (Model Garden's ``image/source_id``).
        filename: original id, kept as ``image/filename``.
    """
    import tensorflow as tf

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"{filename}: image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    height, width = image.shape[:2]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * float(height * width)

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    def strings(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

    feature = {
        "image/encoded": strings([buffer.getvalue()]),
        "image/format": strings([b"jpeg"]),
        "image/height": ints([height]),
        "image/width": ints([width]),
        "image/source_id": strings([str(source_id).encode()]),
        "image/filename": strings([filename.encode()]),
        "image/object/bbox/ymin": floats(boxes[:, 0]),
        "image/object/bbox/xmin": floats(boxes[:, 1]),
        "image/object/bbox/ymax": floats(boxes[:, 2]),
        "image/object/bbox/xmax": floats(boxes[:, 3]),
        "image/object/class/label": ints([LANDMARK_CLASS] * len(boxes)),
        "image/object/area": floats(area),
        "image/object/is_crowd": ints([0] * len(boxes)),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def split_ids(
    items: Sequence[BoxedImage], *, val_fraction: float, seed: int = 0
) -> tuple[list[BoxedImage], list[BoxedImage]]:
    """Deterministic (train, val) split; ``round(val_fraction * N)`` items go to val."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(items))
    num_val = int(round(val_fraction * len(items)))
    val_idx = set(order[:num_val].tolist())
    train = [it for i, it in enumerate(items) if i not in val_idx]
    val = [it for i, it in enumerate(items) if i in val_idx]
    return train, val


def _shard_paths(out_dir: Path, name: str, num_shards: int) -> list[Path]:
    return [out_dir / f"{name}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def _write_split(
    items: Iterable[BoxedImage],
    paths: list[Path],
    *,
    images_dir: Path,
    max_side: int | None,
    first_source_id: int,
    on_error: str,
    skipped: list[tuple[str, str]],
) -> tuple[int, int]:
    """Write ``items`` round-robin into ``paths``; returns (images, boxes) written."""
    import tensorflow as tf

    writers = [tf.io.TFRecordWriter(str(p)) for p in paths]
    written = num_boxes = 0
    try:
        for item in tqdm(items, desc=paths[0].name.split("-")[0], unit="img", disable=None):
            try:
                image = load_image(find_image(images_dir, item.image_id), max_side=max_side)
            except (DataError, ImageError) as exc:
                if on_error == "raise":
                    raise DataError(str(exc)) from exc
                logger.warning("skipping %s: %s", item.image_id, exc)
                skipped.append((item.image_id, str(exc)))
                continue
            record = encode_example(
                image, item.boxes, source_id=first_source_id + written, filename=item.image_id
            )
            writers[written % len(writers)].write(record)
            written += 1
            num_boxes += len(item.boxes)
    finally:
        for writer in writers:
            writer.close()
    return written, num_boxes


def prepare(
    csv_paths: Sequence[str | Path],
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str = "train",
    val_fraction: float = 0.0,
    num_shards: int = 1,
    max_side: int | None = 1024,
    seed: int = 0,
    on_error: str = "raise",
) -> dict:
    """Convert box CSVs and their images to TFRecords in ``out_dir``; returns the manifest.

    ``name`` prefixes the main split's files; with ``val_fraction > 0`` a
    held-out ``val`` split is written too (one shard).  ``on_error``:
    ``"raise"`` stops at the first missing/unreadable image, ``"skip"`` logs it
    and lists it in the manifest.  Malformed CSV rows always raise.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if name == "val" and val_fraction > 0:
        raise ValueError("name 'val' clashes with the held-out split written by val_fraction > 0")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"image directory {images_dir} does not exist")
    if not csv_paths:
        raise ValueError("at least one boxes CSV is required")
    merged: dict[str, list[np.ndarray]] = {}
    for path in csv_paths:
        for item in read_boxes_csv(path):
            merged.setdefault(item.image_id, []).append(item.boxes)
    items = [BoxedImage(k, np.concatenate(v)) for k, v in merged.items()]
    train, val = split_ids(items, val_fraction=val_fraction, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[tuple[str, str]] = []
    splits = {}
    next_id = 1
    for split_name, split_items, shards in ((name, train, num_shards), ("val", val, 1)):
        if not split_items:
            continue
        paths = _shard_paths(out_dir, split_name, shards)
        count, num_boxes = _write_split(
            split_items, paths, images_dir=images_dir, max_side=max_side,
            first_source_id=next_id, on_error=on_error, skipped=skipped,
        )
        next_id += count
        splits[split_name] = {
            "images": count,
            "boxes": num_boxes,
            "files": [p.name for p in paths],
            "pattern": str(out_dir / f"{split_name}-*-of-{shards:05d}.tfrecord"),
        }
        logger.info("wrote %d %s examples to %s", count, split_name, out_dir)
    manifest = {
        "csv": [str(p) for p in csv_paths],
        "images_dir": str(images_dir),
        "val_fraction": val_fraction,
        "seed": seed,
        "max_side": max_side,
        "splits": splits,
        "skipped": [{"id": i, "reason": r} for i, r in skipped],
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes-csv", action="append", required=True,
                        help="Google Landmark Boxes CSV (id,box); repeat for several files")
    parser.add_argument("--images", required=True, help="directory with the images, by id")
    parser.add_argument("--out", required=True, help="output directory for the TFRecords")
    parser.add_argument("--name", default="train", help="file prefix of the main split (default train)")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="fraction of ids held out as the 'val' split (default 0)")
    parser.add_argument("--num-shards", type=int, default=1, help="shards of the main split")
    parser.add_argument("--max-side", type=int, default=1024,
                        help="downscale images to this longer side; 0 keeps the size (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="missing or unreadable images: stop (default) or skip and list them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = prepare(
        args.boxes_csv, args.images, args.out, name=args.name, val_fraction=args.val_fraction,
        num_shards=args.num_shards, max_side=args.max_side or None, seed=args.seed,
        on_error=args.on_error,
    )
    for split, info in manifest["splits"].items():
        logger.info("%s: %d images, %d boxes, %s", split, info["images"], info["boxes"], info["pattern"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
