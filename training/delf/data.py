"""Labelled images → TFRecord shards, and the ``tf.data`` input pipeline that reads them.

Sources (each gives :class:`LabeledImage` items):

* Google Landmarks v1 / v2 ``train.csv`` (``id,url,landmark_id``; other columns
  ignored) — :func:`read_gld_csv`;
* GLDv2 ``train_clean.csv`` (``landmark_id,images`` with space-separated ids) —
  :func:`read_gld_clean_csv`;
* the synthetic benchmark's ``labels.csv`` (``id,landmark_id,split``) + ``jpg/`` —
  :func:`read_synthetic`.

GLD images are found by id in an image directory as ``<id>.jpg`` or in the GLD
layout ``<id[0]>/<id[1]>/<id[2]>/<id>.jpg`` (:func:`find_image`).

Records are ``tf.train.Example`` with the DELF reference's keys, so its TFRecords
and ours are interchangeable: ``image/encoded`` (JPEG bytes), ``image/class/label``
(int64, contiguous ``0 .. C-1``), ``image/id``, ``image/filename``,
``image/height``, ``image/width``, ``image/channels``, ``image/format``,
``image/colorspace``.

Pixels fed to the network are normalized as the package's DELF model expects,
``(rgb - 128) / 128`` (:func:`d2r.features.delf_model.normalize_pixels`).
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

__all__ = [
    "TRAIN",
    "VALIDATION",
    "LabeledImage",
    "count_records",
    "encode_example",
    "find_image",
    "locate_images",
    "make_dataset",
    "parse_example",
    "read_gld_clean_csv",
    "read_gld_csv",
    "read_synthetic",
    "relabel",
    "resolve_pattern",
    "split_per_class",
    "write_shards",
]

logger = logging.getLogger(__name__)

TRAIN = "train"
VALIDATION = "validation"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG", ".png", ".PNG")


@dataclass(frozen=True)
class LabeledImage:
    """One training image: ``image_id``, its original ``landmark_id``, file ``path``,
    ``split`` (``train`` / ``validation`` / None = not decided yet) and the contiguous
    ``label`` (set by :func:`relabel`)."""

    image_id: str
    landmark_id: int
    path: Path | None = None
    split: str | None = None
    label: int | None = None


# --------------------------------------------------------------------------- CSV sources


def _open_csv(path: str | os.PathLike, required: Sequence[str]) -> tuple[csv.DictReader, object]:
    p = Path(path)
    try:
        f = open(p, newline="", encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"cannot read CSV file {p}: {exc}") from exc
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        f.close()
        raise ValueError(f"{p}: CSV header {header} lacks the column(s) {missing}")
    return reader, f


def _landmark(value: str, path, line: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}, line {line}: landmark_id {value!r} is not an integer") from None


def read_gld_csv(path: str | os.PathLike) -> list[LabeledImage]:
    """Images of a GLD v1 / v2 ``train.csv`` (``id,url,landmark_id``), in file order.

    Rows without a landmark id (GLD v1 marks them ``None``) are left out and counted
    in the log.  An id listed twice is an error.
    """
    reader, f = _open_csv(path, ("id", "landmark_id"))
    items, seen, unlabeled = [], set(), 0
    with f:
        for row in reader:
            line = reader.line_num
            image_id = (row["id"] or "").strip()
            value = (row["landmark_id"] or "").strip()
            if not image_id:
                raise ValueError(f"{path}, line {line}: empty id")
            if value in ("", "None", "none", "nan"):
                unlabeled += 1
                continue
            if image_id in seen:
                raise ValueError(f"{path}, line {line}: id {image_id!r} listed twice")
            seen.add(image_id)
            items.append(LabeledImage(image_id, _landmark(value, path, line)))
    if unlabeled:
        logger.warning("%s: %d rows without a landmark_id left out", path, unlabeled)
    if not items:
        raise ValueError(f"{path}: no labelled images")
    return items


def read_gld_clean_csv(path: str | os.PathLike) -> list[LabeledImage]:
    """Images of GLDv2 ``train_clean.csv`` (``landmark_id,images``, ids space-separated)."""
    reader, f = _open_csv(path, ("landmark_id", "images"))
    items, seen = [], set()
    with f:
        for row in reader:
            line = reader.line_num
            landmark = _landmark((row["landmark_id"] or "").strip(), path, line)
            for image_id in (row["images"] or "").split():
                if image_id in seen:
                    raise ValueError(f"{path}, line {line}: id {image_id!r} listed twice")
                seen.add(image_id)
                items.append(LabeledImage(image_id, landmark))
    if not items:
        raise ValueError(f"{path}: no labelled images")
    return items


def read_synthetic(dataset_dir: str | os.PathLike) -> list[LabeledImage]:
    """Images of a synthetic benchmark (``labels.csv`` + ``jpg/``), with its split.

    The generator's ``val`` split becomes ``validation``.
    """
    root = Path(dataset_dir)
    labels = root / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{root}: no labels.csv (is it a synthetic benchmark directory?)")
    reader, f = _open_csv(labels, ("id", "landmark_id"))
    items = []
    with f:
        for row in reader:
            line = reader.line_num
            split = (row.get("split") or "").strip() or None
            if split == "val":
                split = VALIDATION
            if split not in (None, TRAIN, VALIDATION):
                raise ValueError(f"{labels}, line {line}: split {split!r} is not train or val")
            path = root / "jpg" / f"{row['id']}.jpg"
            if not path.is_file():
                raise FileNotFoundError(f"{labels}, line {line}: image {path} does not exist")
            items.append(LabeledImage(row["id"], _landmark(row["landmark_id"], labels, line), path, split))
    if not items:
        raise ValueError(f"{labels}: no labelled images")
    return items


def find_image(images_dir: str | os.PathLike, image_id: str) -> Path | None:
    """``images_dir/<id>.<ext>`` or ``images_dir/<a>/<b>/<c>/<id>.<ext>`` (GLD layout), or None."""
    root = Path(images_dir)
    for ext in IMAGE_EXTENSIONS:
        for folder in (root, root / image_id[:1] / image_id[1:2] / image_id[2:3]):
            path = folder / f"{image_id}{ext}"
            if path.is_file():
                return path
    return None


def locate_images(
    items: Sequence[LabeledImage], images_dir: str | os.PathLike
) -> tuple[list[LabeledImage], list[str]]:
    """Items with their image ``path`` set, and the ids whose image was not found."""
    root = Path(images_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"image directory {root} does not exist")
    found, missing = [], []
    for item in items:
        path = find_image(root, item.image_id)
        if path is None:
            missing.append(item.image_id)
        else:
            found.append(replace(item, path=path))
    return found, missing


# --------------------------------------------------------------------------- splits


def split_per_class(
    items: Sequence[LabeledImage], *, validation_fraction: float, seed: int = 0
) -> list[LabeledImage]:
    """Assign ``train`` / ``validation`` per class: ``round(fraction * n)`` random images of
    each class go to validation, but a class keeps at least one training image (so a
    class with a single image is trained on, never only validated).

    Deterministic for a given ``seed`` and input order.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_class.setdefault(item.landmark_id, []).append(i)
    split = [TRAIN] * len(items)
    for landmark in sorted(by_class):
        members = by_class[landmark]
        n_val = min(len(members) - 1, int(round(validation_fraction * len(members))))
        for i in rng.permutation(members)[:n_val]:
            split[int(i)] = VALIDATION
    return [replace(item, split=s) for item, s in zip(items, split)]


def relabel(items: Sequence[LabeledImage]) -> tuple[list[LabeledImage], dict[int, int]]:
    """Contiguous labels ``0 .. C-1`` in increasing ``landmark_id`` order over the
    classes that have training images; returns the items (validation images of classes
    without training images are dropped, with a warning) and ``{landmark_id: label}``."""
    trained = sorted({it.landmark_id for it in items if it.split != VALIDATION})
    mapping = {landmark: label for label, landmark in enumerate(trained)}
    out = [replace(it, label=mapping[it.landmark_id]) for it in items if it.landmark_id in mapping]
    dropped = len(items) - len(out)
    if dropped:
        logger.warning("%d validation images of classes without training images left out", dropped)
    return out, mapping


# --------------------------------------------------------------------------- writing


def _read_jpeg(path: Path) -> tuple[bytes, int, int]:
    """JPEG bytes (re-encoded when the file is not an RGB / grey JPEG) and (height, width).

    Decodes the whole image, so corrupt files fail here instead of in training.
    """
    from PIL import Image

    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.format == "JPEG" and im.mode in ("RGB", "L"):
            return data, im.height, im.width
        rgb = im.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), rgb.height, rgb.width


def encode_example(image_id: str, jpeg: bytes, height: int, width: int, label: int) -> bytes:
    """A serialized ``tf.train.Example`` with the DELF reference's keys."""
    import tensorflow as tf

    def b(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def i(value: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    features = {
        "image/encoded": b(jpeg),
        "image/class/label": i(label),
        "image/id": b(image_id.encode()),
        "image/filename": b(image_id.encode()),
        "image/height": i(height),
        "image/width": i(width),
        "image/channels": i(3),
        "image/format": b(b"JPEG"),
        "image/colorspace": b(b"RGB"),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _write_shard(path: str, rows: Sequence[tuple[str, str, int]], on_error: str) -> tuple[int, list[tuple[str, str]]]:
    """Write one shard of ``(image_id, image_path, label)`` rows; returns (written, skipped)."""
    import tensorflow as tf

    tmp = path + ".tmp"
    written, skipped = 0, []
    with tf.io.TFRecordWriter(tmp) as writer:
        for image_id, image_path, label in rows:
            try:
                jpeg, height, width = _read_jpeg(Path(image_path))
            except (OSError, ValueError, SyntaxError) as exc:
                if on_error == "raise":
                    raise ValueError(f"{image_path}: cannot read image ({exc})") from exc
                skipped.append((image_path, f"cannot read image ({exc})"))
                continue
            writer.write(encode_example(image_id, jpeg, height, width, label))
            written += 1
    os.replace(tmp, path)
    return written, skipped


def write_shards(
    items: Sequence[LabeledImage],
    out_dir: str | os.PathLike,
    prefix: str,
    *,
    num_shards: int,
    seed: int = 0,
    workers: int = 1,
    on_error: str = "skip",
) -> tuple[list[Path], int, list[tuple[str, str]]]:
    """Write ``items`` (with ``path`` and ``label`` set) as ``prefix-SSSSS-of-NNNNN.tfrecord``.

    The items are shuffled (``seed``) before sharding so every shard mixes the
    classes.  ``workers > 1`` writes shards in parallel processes.  Unreadable images
    are skipped and returned as ``(path, reason)`` (``on_error="skip"``) or raise.
    Returns (shard paths, records written, skipped).
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be skip or raise, got {on_error!r}")
    if num_shards < 1 or workers < 1:
        raise ValueError(f"num_shards and workers must be >= 1, got {num_shards}, {workers}")
    for item in items:
        if item.path is None or item.label is None:
            raise ValueError(f"image {item.image_id!r} has no path or label")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_shards = max(1, min(num_shards, len(items)))
    order = np.random.default_rng(seed).permutation(len(items))
    rows = [(items[i].image_id, str(items[i].path), int(items[i].label)) for i in order]
    bounds = np.linspace(0, len(rows), num_shards + 1).astype(int)
    paths = [out / f"{prefix}-{s:05d}-of-{num_shards:05d}.tfrecord" for s in range(num_shards)]
    jobs = [(str(paths[s]), rows[bounds[s]:bounds[s + 1]], on_error) for s in range(num_shards)]
    total, skipped = 0, []
    if workers == 1:
        results = (_write_shard(*job) for job in jobs)
        for n, (written, bad) in enumerate(results, 1):
            total += written
            skipped += bad
            logger.info("%s: shard %d / %d written", prefix, n, num_shards)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for n, (written, bad) in enumerate(pool.map(_write_shard, *zip(*jobs)), 1):
                total += written
                skipped += bad
                if n % max(1, num_shards // 20) == 0 or n == num_shards:
                    logger.info("%s: %d / %d shards written", prefix, n, num_shards)
    return paths, total, skipped


# --------------------------------------------------------------------------- reading


_FEATURES = None


def _feature_spec():
    import tensorflow as tf

    global _FEATURES
    if _FEATURES is None:
        _FEATURES = {
            "image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64),
            "image/id": tf.io.FixedLenFeature([], tf.string, default_value=""),
        }
    return _FEATURES


def parse_example(serialized):
    """``(uint8 image (H, W, 3), int64 label, string id)`` of one serialized record."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, _feature_spec())
    image = tf.io.decode_jpeg(parsed["image/encoded"], channels=3)
    return image, parsed["image/class/label"], parsed["image/id"]


def resolve_pattern(pattern: str, base: str | os.PathLike | None = None) -> list[str]:
    """Sorted files matching ``pattern`` (relative to ``base`` unless absolute)."""
    full = pattern if base is None or os.path.isabs(pattern) else os.path.join(os.fspath(base), pattern)
    return sorted(glob.glob(full))


def _augment(image, size: int, aug, seed: int):
    """Random crop (bounding-box sampling over ``aug.area_range`` / aspect range), resize, flip."""
    import tensorflow as tf

    whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=whole,
        min_object_covered=float(aug.min_object_covered),
        aspect_ratio_range=tuple(float(v) for v in aug.aspect_ratio_range),
        area_range=tuple(float(v) for v in aug.area_range),
        max_attempts=int(aug.max_attempts),
        use_image_if_no_bounding_boxes=True,
        seed=seed,
    )
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, [size, size], method="area")
    if aug.flip:
        image = tf.image.random_flip_left_right(image, seed=seed)
    return image


def make_dataset(
    files: Sequence[str],
    *,
    batch_size: int,
    image_size: int,
    augmentation=None,
    shuffle: bool = True,
    repeat: bool = True,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    drop_remainder: bool = True,
):
    """``tf.data.Dataset`` of ``(images (B, S, S, 3) float32 normalized, labels (B,) int64)``.

    ``augmentation``: an :class:`~training.delf.config.AugmentationConfig` with
    ``enabled`` true for random crops, else the whole image is resized to S x S.
    """
    import tensorflow as tf

    from d2r.features.delf_model import normalize_pixels

    if not files:
        raise FileNotFoundError("no TFRecord files to read")
    augment = augmentation is not None and augmentation.enabled

    def prepare(serialized):
        image, label, _ = parse_example(serialized)
        if augment:
            image = _augment(image, image_size, augmentation, seed)
        else:
            image = tf.image.resize(image, [image_size, image_size], method="area")
        image = normalize_pixels(image)
        image.set_shape([image_size, image_size, 3])
        return image, label

    ds = tf.data.Dataset.from_tensor_slices(list(files))
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.interleave(
        tf.data.TFRecordDataset, cycle_length=min(8, len(files)), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def count_records(files: Iterable[str]) -> int:
    """Number of records in TFRecord ``files`` (reads them through)."""
    import tensorflow as tf

    return sum(1 for _ in tf.data.TFRecordDataset(list(files)))
