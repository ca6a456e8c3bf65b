"""Classic retrieval benchmarks: Oxford5k / Paris6k, INRIA Holidays, UKBench.

* **Oxford5k / Paris6k, original protocol.** A ``gt_files`` directory with, per
  query ``<q>`` (e.g. ``all_souls_1``), ``<q>_query.txt`` (one line
  ``oxc1_<image> x1 y1 x2 y2``; Paris omits the ``oxc1_`` prefix) and
  ``<q>_good.txt`` / ``<q>_ok.txt`` / ``<q>_junk.txt`` (one image name per
  line). Positives are good + ok, junk is ignored, the query image stays in the
  database, and AP is the trapezoidal rule of ``compute_ap.cpp`` (the same as
  :func:`d2r.evaluation.metrics.compute_ap`).
* **INRIA Holidays.** Images are named by number (``100000.jpg``); an image
  belongs to group ``number // 100`` and the group's query is the image with
  ``number % 100 == 0``. Every image is in the database; for each query the
  other group members are positive and the query itself is removed from its
  ranking (as ``holidays_map.py`` does). Some Holidays images are stored
  rotated; the "rotation-corrected" variant used in the literature is a list of
  images and the rotation that makes them upright, accepted here as a mapping
  or a ``<image name> <degrees clockwise>`` text file (:func:`rotate_image`).
* **UKBench.** 10,200 images ``ukbench00000.jpg`` ... in groups of 4 consecutive
  images; every image is a query against all images and the N-S score is the
  mean number of the query's 4 group images among its top 4 (4 x recall@4).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from d2r.errors import InputError
from d2r.evaluation.metrics import compute_map

__all__ = [
    "ClassicDataset",
    "load_oxford_paris",
    "classic_map",
    "oxford_paris_map",
    "load_holidays",
    "read_rotations",
    "rotate_image",
    "holidays_map",
    "load_ukbench",
    "ukbench_ns_score",
]

logger = logging.getLogger(__name__)

_QUERY_PREFIX = "oxc1_"


@dataclass(frozen=True)
class ClassicDataset:
    """A classic benchmark: database, queries and per-query ground truth.

    Attributes:
        name: ``oxford5k``, ``paris6k``, ``holidays``, ``ukbench`` or user given.
        image_dir: directory of the image files.
        db_names: database image names without extension.
        query_labels: query identifiers (``all_souls_1`` or the image name).
        query_ids: (Q,) int64 database index of each query image.
        query_boxes: (Q, 4) float32 query boxes ``x1, y1, x2, y2`` in pixels;
            the full image (0, 0, inf, inf) when the benchmark has no boxes.
        gnd: per query ``{"ok": (P,) int64, "junk": (J,) int64}`` database indices.
        rotations: image name -> clockwise degrees that make it upright (Holidays).
        extension: image file extension.
    """

    name: str
    image_dir: Path
    db_names: tuple[str, ...]
    query_labels: tuple[str, ...]
    query_ids: np.ndarray
    query_boxes: np.ndarray
    gnd: tuple[dict, ...]
    rotations: Mapping[str, int] = field(default_factory=dict)
    extension: str = ".jpg"

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_dir", Path(self.image_dir))
        object.__setattr__(self, "db_names", tuple(self.db_names))
        object.__setattr__(self, "query_labels", tuple(self.query_labels))
        object.__setattr__(self, "gnd", tuple(self.gnd))
        ids = np.array(self.query_ids, dtype=np.int64).reshape(-1)
        boxes = np.array(self.query_boxes, dtype=np.float32).reshape(-1, 4)
        n_q = len(self.query_labels)
        if ids.shape != (n_q,) or boxes.shape != (n_q, 4) or len(self.gnd) != n_q:
            raise InputError(
                f"{self.name}: {n_q} queries but query_ids {ids.shape}, "
                f"query_boxes {boxes.shape}, {len(self.gnd)} ground-truth entries"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.db_names)):
            raise InputError(f"{self.name}: query_ids outside the database")
        ids.flags.writeable = False
        boxes.flags.writeable = False
        object.__setattr__(self, "query_ids", ids)
        object.__setattr__(self, "query_boxes", boxes)
        object.__setattr__(self, "rotations", dict(self.rotations))

    @property
    def num_db(self) -> int:
        return len(self.db_names)

    @property
    def num_queries(self) -> int:
        return len(self.query_labels)

    def db_path(self, i: int) -> Path:
        """Image file of database image ``i``."""
        i = int(i)
        if not 0 <= i < self.num_db:
            raise IndexError(f"database index {i} out of range [0, {self.num_db})")
        return self.image_dir / f"{self.db_names[i]}{self.extension}"

    def query_path(self, i: int) -> Path:
        """Image file of query ``i``."""
        i = int(i)
        if not 0 <= i < self.num_queries:
            raise IndexError(f"query index {i} out of range [0, {self.num_queries})")
        return self.db_path(int(self.query_ids[i]))

    def rotation(self, i: int) -> int:
        """Clockwise degrees that make database image ``i`` upright (0 if none)."""
        return int(self.rotations.get(self.db_names[int(i)], 0))


def _image_stems(image_dir: Path, extension: str) -> list[str]:
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image directory not found: {image_dir}")
    stems = sorted(p.stem for p in image_dir.iterdir() if p.suffix == extension and p.is_file())
    if not stems:
        raise FileNotFoundError(f"no *{extension} images in {image_dir}")
    return stems


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_oxford_paris(
    gt_dir: str | Path,
    image_dir: str | Path,
    *,
    name: str = "oxford5k",
    db_names: Sequence[str] | None = None,
    missing: str = "error",
) -> ClassicDataset:
    """Read Oxford5k / Paris6k with the original ``gt_files`` protocol.

    Args:
        gt_dir: directory of ``<q>_query.txt``, ``_good``, ``_ok``, ``_junk`` files.
        image_dir: directory of the ``.jpg`` images.
        name: dataset name recorded in the result.
        db_names: database image names (default: every ``*.jpg`` in ``image_dir``, sorted).
        missing: what to do with ground-truth images absent from the database
            (Paris6k has corrupt images that are usually deleted): ``"error"``
            or ``"drop"`` (logged as a warning with the count).

    Returns:
        The dataset, queries sorted by label.
    """
    if missing not in ("error", "drop"):
        raise InputError(f"missing must be 'error' or 'drop', got {missing!r}")
    gt_dir, image_dir = Path(gt_dir), Path(image_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"ground-truth directory not found: {gt_dir}")
    names = list(db_names) if db_names is not None else _image_stems(image_dir, ".jpg")
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise InputError(f"{name}: db_names has duplicates")
    query_files = sorted(gt_dir.glob("*_query.txt"))
    if not query_files:
        raise FileNotFoundError(f"no *_query.txt files in {gt_dir}")

    labels, ids, boxes, gnd = [], [], [], []
    dropped = 0
    for qf in query_files:
        label = qf.name[: -len("_query.txt")]
        lines = _read_lines(qf)
        parts = lines[0].split() if len(lines) == 1 else []
        if len(parts) != 5:
            raise InputError(f"{qf}: expected one line '<image> x1 y1 x2 y2', got {lines!r}")
        qname = parts[0][len(_QUERY_PREFIX):] if parts[0].startswith(_QUERY_PREFIX) else parts[0]
        try:
            box = [float(v) for v in parts[1:]]
        except ValueError:
            raise InputError(f"{qf}: box values {parts[1:]} are not numbers") from None
        if qname not in index:
            raise InputError(f"{qf}: query image {qname!r} is not in the database")
        lists = {}
        for kind in ("good", "ok", "junk"):
            path = gt_dir / f"{label}_{kind}.txt"
            entries = _read_lines(path)
            absent = [e for e in entries if e not in index]
            if absent and missing == "error":
                raise InputError(
                    f"{path}: {len(absent)} images not in the database, e.g. {absent[0]!r} "
                    "(pass missing='drop' to ignore them)"
                )
            dropped += len(absent)
            lists[kind] = np.array([index[e] for e in entries if e in index], dtype=np.int64)
        labels.append(label)
        ids.append(index[qname])
        boxes.append(box)
        gnd.append({"ok": np.concatenate([lists["good"], lists["ok"]]), "junk": lists["junk"]})
    if dropped:
        logger.warning(
            "%s: dropped %d ground-truth entries missing from the database", name, dropped
        )
    return ClassicDataset(
        name=name,
        image_dir=image_dir,
        db_names=tuple(names),
        query_labels=tuple(labels),
        query_ids=np.array(ids, np.int64),
        query_boxes=np.array(boxes, np.float32),
        gnd=tuple(gnd),
    )


def classic_map(ranks, dataset: ClassicDataset) -> tuple[float, np.ndarray]:
    """mAP of Oxford5k / Paris6k (original protocol) or Holidays.

    The benchmark's protocol lives in ``dataset.gnd``: Oxford / Paris junk is ignored;
    a Holidays query is junk in its own ranking, so it is skipped.

    Args:
        ranks: (Q, N) int database indices best first, one row per query.
        dataset: from :func:`load_oxford_paris` or :func:`load_holidays`.

    Returns:
        ``(mAP, aps)``: mAP as a fraction and (Q,) per-query APs.
    """
    mean_ap, aps, _, _ = compute_map(ranks, dataset.gnd, kappas=())
    return mean_ap, aps


oxford_paris_map = classic_map
"""mAP of the original Oxford5k / Paris6k protocol (:func:`classic_map`)."""

holidays_map = classic_map
"""Holidays mAP, the query skipped in its ranking (:func:`classic_map`)."""


def _full_image_boxes(n: int) -> np.ndarray:
    boxes = np.zeros((n, 4), np.float32)
    boxes[:, 2:] = np.inf
    return boxes


def read_rotations(path: str | Path) -> dict[str, int]:
    """Read a rotation list: lines ``<image name> <degrees clockwise>``.

    The image name may carry an extension (it is dropped); degrees must be a
    multiple of 90. Blank lines and lines starting with ``#`` are comments.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rotation list not found: {path}")
    out: dict[str, int] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            raise InputError(f"{path}:{n}: expected '<image> <degrees>', got {text!r}")
        out[Path(parts[0]).stem] = int(parts[1])
    return _check_rotations(out, str(path))


def _check_rotations(rotations: Mapping[str, int], source: str) -> dict[str, int]:
    out = {}
    for name, deg in rotations.items():
        deg = int(deg)
        if deg % 90:
            raise InputError(f"{source}: rotation of {name!r} is {deg}, not a multiple of 90")
        out[Path(str(name)).stem] = deg % 360
    return out


def rotate_image(image: np.ndarray, degrees: int) -> np.ndarray:
    """Rotate an (H, W[, C]) image clockwise by a multiple of 90 degrees."""
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise InputError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    if int(degrees) % 90:
        raise InputError(f"degrees must be a multiple of 90, got {degrees}")
    return np.rot90(image, k=-(int(degrees) // 90) % 4, axes=(0, 1))


def load_holidays(
    image_dir: str | Path,
    *,
    rotations: Mapping[str, int] | str | Path | None = None,
) -> ClassicDataset:
    """Read INRIA Holidays from its image directory.

    Args:
        image_dir: directory of ``<number>.jpg`` images.
        rotations: the rotation-corrected variant: a mapping image name ->
            clockwise degrees, or a file for :func:`read_rotations`. Names must
            be database images.

    Returns:
        The dataset: database sorted by image number, one query per group.
    """
    image_dir = Path(image_dir)
    stems = _image_stems(image_dir, ".jpg")
    bad = [s for s in stems if not s.isdigit()]
    if bad:
        raise InputError(f"{image_dir}: Holidays image names must be numbers, got {bad[0]!r}")
    stems.sort(key=int)
    numbers = np.array([int(s) for s in stems], dtype=np.int64)
    groups = numbers // 100
    is_query = numbers % 100 == 0
    query_groups = groups[is_query]
    orphan = np.setdiff1d(groups, query_groups)
    if orphan.size:
        raise InputError(
            f"{image_dir}: group {int(orphan[0])} has no query image {int(orphan[0]) * 100}.jpg"
        )
    query_ids = np.flatnonzero(is_query)
    gnd = []
    for qid in query_ids:
        members = np.flatnonzero(groups == groups[qid])
        gnd.append({"ok": members[members != qid], "junk": np.array([qid], np.int64)})
    if rotations is None:
        rot: dict[str, int] = {}
    elif isinstance(rotations, (str, Path)):
        rot = read_rotations(rotations)
    else:
        rot = _check_rotations(rotations, "rotations")
    unknown = sorted(set(rot) - set(stems))
    if unknown:
        raise InputError(f"rotations name images not in {image_dir}: {unknown[:5]}")
    return ClassicDataset(
        name="holidays",
        image_dir=image_dir,
        db_names=tuple(stems),
        query_labels=tuple(stems[i] for i in query_ids),
        query_ids=query_ids,
        query_boxes=_full_image_boxes(query_ids.size),
        gnd=tuple(gnd),
        rotations=rot,
    )


def load_ukbench(image_dir: str | Path) -> ClassicDataset:
    """Read UKBench: ``ukbenchNNNNN.jpg`` in groups of 4 consecutive numbers.

    Every image is a query (``query_ids == arange(N)``); ground truth holds the
    4 group images, the query included.
    """
    image_dir = Path(image_dir)
    stems = _image_stems(image_dir, ".jpg")
    parsed = [re.fullmatch(r"ukbench(\d+)", s) for s in stems]
    bad = [s for s, m in zip(stems, parsed) if m is None]
    if bad:
        raise InputError(f"{image_dir}: unexpected UKBench image name {bad[0]!r}")
    numbers = np.array([int(m.group(1)) for m in parsed if m is not None], dtype=np.int64)
    order = np.argsort(numbers, kind="stable")
    numbers = numbers[order]
    stems = [stems[i] for i in order]
    if not np.array_equal(numbers, np.arange(numbers.size)):
        raise InputError(f"{image_dir}: UKBench images must be numbered 0..N-1 without gaps")
    if numbers.size % 4:
        raise InputError(f"{image_dir}: {numbers.size} images is not a multiple of 4")
    ids = np.arange(numbers.size, dtype=np.int64)
    gnd = tuple(
        {"ok": np.arange(4 * (i // 4), 4 * (i // 4) + 4), "junk": np.zeros(0, np.int64)}
        for i in ids
    )
    return ClassicDataset(
        name="ukbench",
        image_dir=image_dir,
        db_names=tuple(stems),
        query_labels=tuple(stems),
        query_ids=ids,
        query_boxes=_full_image_boxes(ids.size),
        gnd=gnd,
    )


def ukbench_ns_score(ranks, *, query_ids=None) -> float:
    """UKBench N-S score: mean count of group images among the top 4 (0..4).

    Args:
        ranks: (Q, N) int database indices best first (N >= 4); group of image
            ``i`` is ``i // 4``.
        query_ids: (Q,) database index of each row's query; default ``arange(Q)``.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[1] < 4:
        raise InputError(f"ranks must be (Q, N) with N >= 4, got shape {ranks.shape}")
    if ranks.dtype.kind not in "iu":
        raise TypeError(f"ranks must be integers, got dtype {ranks.dtype}")
    if ranks.shape[0] == 0:
        raise InputError("ranks has no queries")
    q_ids = np.arange(ranks.shape[0]) if query_ids is None else np.asarray(query_ids).reshape(-1)
    if q_ids.shape[0] != ranks.shape[0]:
        raise InputError(f"{q_ids.shape[0]} query_ids for {ranks.shape[0]} ranking rows")
    top = ranks[:, :4].astype(np.int64)
    ordered = np.sort(top, axis=1)
    if np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)):
        raise InputError("a ranking lists the same image twice in its top 4")
    hits = (top >= 0) & (top // 4 == (q_ids[:, None] // 4))
    return float(hits.sum(axis=1).mean())
