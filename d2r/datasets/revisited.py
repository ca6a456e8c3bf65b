"""Revisited Oxford / Paris (ROxf, RPar) and the R1M distractors.

The distributed layout, as written by the revisitop download scripts::

    DIR/gnd_<name>.pkl      (or gnd_<name>.mat)
    DIR/jpg/<image name>.jpg

The ground truth lists the database images (``imlist``), the query images
(``qimlist``, not part of the database) and, per query, the ``easy``, ``hard``
and ``junk`` database indices (0-based) and the query box ``bbx`` =
``x1, y1, x2, y2`` in pixels. Queries are cropped to their box before any
processing (:func:`crop_query`).

R1M: ``revisitop1m.txt`` lists one relative image path per line under
``revisitop1m/jpg``. :func:`with_distractors` appends them to a dataset's
database after the base images, so ground-truth indices are unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np

from d2r.datasets.safe_pickle import load_pickle
from d2r.errors import InputError

__all__ = [
    "GroundTruth",
    "RevisitedDataset",
    "load_revisited",
    "load_distractors",
    "with_distractors",
    "query_crop_box",
    "crop_query",
]

logger = logging.getLogger(__name__)


def _index_array(value: Any, what: str) -> np.ndarray:
    arr = np.asarray(value).reshape(-1)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must hold integer indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise InputError(f"{what} has negative index {int(arr.min())}")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth of one query: 0-based database indices.

    Attributes:
        easy: (E,) int64 images clearly showing the query object.
        hard: (H,) int64 images showing it with difficulty.
        junk: (J,) int64 images ignored by every protocol.
    """

    easy: np.ndarray
    hard: np.ndarray
    junk: np.ndarray

    def __post_init__(self) -> None:
        for name in ("easy", "hard", "junk"):
            object.__setattr__(self, name, _index_array(getattr(self, name), name))

    def max_index(self) -> int:
        """Largest index referenced, -1 when all lists are empty."""
        parts = [a for a in (self.easy, self.hard, self.junk) if a.size]
        return int(max(a.max() for a in parts)) if parts else -1


@dataclass(frozen=True)
class RevisitedDataset:
    """A Revisited Oxford/Paris dataset, optionally with appended distractors.

    Attributes:
        name: ``roxford5k``, ``rparis6k`` or the name in ``gnd_<name>.pkl``.
        image_dir: directory of the base images (``DIR/jpg``).
        db_names: database image names without extension: the base images,
            then the distractors (paths relative to ``distractor_dir``).
        query_names: query image names without extension.
        query_boxes: (Q, 4) float32 query boxes ``x1, y1, x2, y2`` in pixels.
        gnd: Q :class:`GroundTruth`, indices into the base database.
        num_distractors: how many trailing ``db_names`` are distractors.
        distractor_dir: directory the distractor names are relative to.
        extension: file extension of the base and query images.
    """

    name: str
    image_dir: Path
    db_names: tuple[str, ...]
    query_names: tuple[str, ...]
    query_boxes: np.ndarray
    gnd: tuple[GroundTruth, ...]
    num_distractors: int = 0
    distractor_dir: Path | None = None
    extension: str = field(default=".jpg")

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_dir", Path(self.image_dir))
        object.__setattr__(self, "db_names", tuple(str(n) for n in self.db_names))
        object.__setattr__(self, "query_names", tuple(str(n) for n in self.query_names))
        object.__setattr__(self, "gnd", tuple(self.gnd))
        boxes = np.array(self.query_boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = np.zeros((0, 4), np.float32)
        n_q = len(self.query_names)
        if boxes.shape != (n_q, 4):
            raise InputError(
                f"{self.name}: query_boxes has shape {boxes.shape}, expected ({n_q}, 4)"
            )
        if not np.all(np.isfinite(boxes)):
            raise InputError(f"{self.name}: query_boxes contain NaN or infinite values")
        bad = np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
        if bad.size:
            raise InputError(
                f"{self.name}: query box {int(bad[0])} {boxes[bad[0]].tolist()} "
                "is empty (need x1 < x2 and y1 < y2)"
            )
        boxes.flags.writeable = False
        object.__setattr__(self, "query_boxes", boxes)
        if len(self.gnd) != n_q:
            raise InputError(
                f"{self.name}: {len(self.gnd)} ground-truth entries for {n_q} queries"
            )
        if not 0 <= self.num_distractors <= len(self.db_names):
            raise InputError(
                f"{self.name}: num_distractors={self.num_distractors} outside "
                f"[0, {len(self.db_names)}]"
            )
        if self.num_distractors and self.distractor_dir is None:
            raise InputError(f"{self.name}: distractors need a distractor_dir")
        if self.distractor_dir is not None:
            object.__setattr__(self, "distractor_dir", Path(self.distractor_dir))
        n_base = self.num_base
        for q, g in enumerate(self.gnd):
            if not isinstance(g, GroundTruth):
                raise TypeError(f"{self.name}: gnd[{q}] is {type(g).__name__}, not GroundTruth")
            if g.max_index() >= n_base:
                raise InputError(
                    f"{self.name}: ground truth of query {q} references database index "
                    f"{g.max_index()} but the base database has {n_base} images"
                )

    @property
    def num_base(self) -> int:
        """Number of base (non-distractor) database images."""
        return len(self.db_names) - self.num_distractors

    @property
    def num_db(self) -> int:
        """Number of database images, distractors included."""
        return len(self.db_names)

    @property
    def num_queries(self) -> int:
        return len(self.query_names)

    def db_path(self, i: int) -> Path:
        """Image file of database image ``i`` (base or distractor)."""
        i = _check_index(i, self.num_db, "database")
        if i < self.num_base:
            return self.image_dir / f"{self.db_names[i]}{self.extension}"
        assert self.distractor_dir is not None  # guaranteed by __post_init__
        return self.distractor_dir / _with_default_suffix(self.db_names[i])

    def query_path(self, i: int) -> Path:
        """Image file of query ``i`` (to be cropped with ``query_boxes[i]``)."""
        i = _check_index(i, self.num_queries, "query")
        return self.image_dir / f"{self.query_names[i]}{self.extension}"

    def gnd_dicts(self) -> list[dict[str, np.ndarray]]:
        """The ground truth as revisitop-style dicts with ``easy``/``hard``/``junk``."""
        return [{"easy": g.easy, "hard": g.hard, "junk": g.junk} for g in self.gnd]


def _check_index(i: int, n: int, what: str) -> int:
    i = int(i)
    if not 0 <= i < n:
        raise IndexError(f"{what} index {i} out of range [0, {n})")
    return i


def _with_default_suffix(name: str) -> str:
    return name if PurePosixPath(name).suffix else f"{name}.jpg"


def load_revisited(dataset_dir: str | Path, name: str | None = None) -> RevisitedDataset:
    """Read a Revisited Oxford/Paris dataset from its distributed layout.

    Args:
        dataset_dir: directory holding ``gnd_<name>.pkl`` (or ``.mat``) and ``jpg/``.
        name: dataset name (``roxford5k``, ``rparis6k``, ...); inferred when the
            directory holds a single ``gnd_*`` file.

    Returns:
        The dataset; image files are not opened.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {root}")
    if name is None:
        found = sorted(
            {p.stem[len("gnd_"):] for p in root.glob("gnd_*") if p.suffix in (".pkl", ".mat")}
        )
        if not found:
            raise FileNotFoundError(f"no gnd_<name>.pkl or gnd_<name>.mat in {root}")
        if len(found) > 1:
            raise InputError(f"{root} holds several ground truths {found}; pass name=")
        name = found[0]
    pkl, mat = root / f"gnd_{name}.pkl", root / f"gnd_{name}.mat"
    if pkl.is_file():
        imlist, qimlist, entries = _read_pkl(pkl)
        source = pkl
    elif mat.is_file():
        imlist, qimlist, entries = _read_mat(mat)
        source = mat
    else:
        raise FileNotFoundError(f"neither {pkl.name} nor {mat.name} found in {root}")
    if len(entries) != len(qimlist):
        raise InputError(
            f"{source}: {len(entries)} ground-truth entries for {len(qimlist)} query images"
        )
    boxes = np.zeros((len(entries), 4), np.float32)
    gnd = []
    for q, entry in enumerate(entries):
        try:
            bbx = np.asarray(entry["bbx"], dtype=np.float64).reshape(-1)
            gnd.append(GroundTruth(easy=entry["easy"], hard=entry["hard"], junk=entry["junk"]))
        except KeyError as exc:
            raise InputError(f"{source}: ground truth of query {q} lacks {exc}") from None
        except (TypeError, ValueError) as exc:
            raise InputError(f"{source}: ground truth of query {q}: {exc}") from None
        if bbx.size != 4:
            raise InputError(f"{source}: bbx of query {q} has {bbx.size} values, expected 4")
        boxes[q] = bbx
    image_dir = root / "jpg"
    if not image_dir.is_dir():
        logger.warning("image directory %s does not exist; paths will not resolve", image_dir)
    try:
        return RevisitedDataset(
            name=name,
            image_dir=image_dir,
            db_names=imlist,
            query_names=qimlist,
            query_boxes=boxes,
            gnd=tuple(gnd),
        )
    except ValueError as exc:
        raise InputError(f"{source}: {exc}") from None


def _read_pkl(path: Path) -> tuple[list[str], list[str], list[Any]]:
    cfg = load_pickle(path)
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: expected a dict, got {type(cfg).__name__}")
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in cfg]
    if missing:
        raise InputError(f"{path}: missing keys {missing}")
    entries = list(cfg["gnd"])
    if not all(isinstance(e, dict) for e in entries):
        raise InputError(f"{path}: 'gnd' must be a list of dicts")
    return _names(cfg["imlist"], path, "imlist"), _names(cfg["qimlist"], path, "qimlist"), entries


def _names(values: Any, path: Path, key: str) -> list[str]:
    names = [v.decode() if isinstance(v, bytes) else v for v in list(values)]
    bad = [v for v in names if not isinstance(v, str)]
    if bad:
        raise InputError(f"{path}: {key} must hold strings, got {type(bad[0]).__name__}")
    return [str(v) for v in names]


def _read_mat(path: Path) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    from scipy.io import loadmat

    try:
        gt = loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except (ValueError, TypeError, OSError) as exc:
        raise InputError(f"{path}: not a readable .mat file ({exc})") from exc
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in gt]
    if missing:
        raise InputError(f"{path}: missing variables {missing}")
    imlist = [_mat_string(c) for c in np.asarray(gt["imlist"], dtype=object).ravel()]
    qimlist = [_mat_string(c) for c in np.asarray(gt["qimlist"], dtype=object).ravel()]
    structs = np.asarray(gt["gnd"]).ravel()
    fields = structs.dtype.names or ()
    absent = [f for f in ("bbx", "easy", "hard", "junk") if f not in fields]
    if absent:
        raise InputError(f"{path}: gnd struct lacks fields {absent}")
    entries = []
    for s in structs:
        entries.append(
            {
                "bbx": np.asarray(s["bbx"], dtype=np.float64).ravel(),
                # MATLAB indices are 1-based.
                **{f: _mat_indices(s[f], path, f) for f in ("easy", "hard", "junk")},
            }
        )
    return imlist, qimlist, entries


def _mat_string(cell: Any) -> str:
    return "".join(str(c) for c in np.asarray(cell).ravel().tolist())


def _mat_indices(value: Any, path: Path, field_name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.size and arr.min() < 1:
        raise InputError(f"{path}: {field_name} holds index {arr.min()}; MATLAB indices start at 1")
    return arr.astype(np.int64) - 1


def load_distractors(list_file: str | Path) -> tuple[str, ...]:
    """Distractor image names from ``revisitop1m.txt`` (one path per line).

    Blank lines are not entries and are dropped; surrounding whitespace is removed.
    """
    path = Path(list_file)
    if not path.is_file():
        raise FileNotFoundError(f"distractor list not found: {path}")
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise InputError(f"distractor list {path} is empty")
    if len(set(names)) != len(names):
        raise InputError(f"distractor list {path} has duplicate entries")
    return names


def with_distractors(
    dataset: RevisitedDataset,
    distractor_names: Sequence[str],
    distractor_root: str | Path,
) -> RevisitedDataset:
    """``dataset`` with distractors appended after its base database images.

    Database ids ``0 .. num_base-1`` stay the base images, ids ``num_base ..``
    are the distractors in list order; the ground truth is unchanged. A dataset
    that already has distractors is refused.

    Args:
        dataset: a base dataset.
        distractor_names: names relative to ``distractor_root`` (``.jpg`` is
            appended to names without an extension).
        distractor_root: directory of the distractor images (``revisitop1m/jpg``).
    """
    if dataset.num_distractors:
        raise InputError(f"{dataset.name} already has {dataset.num_distractors} distractors")
    names = tuple(str(n) for n in distractor_names)
    if not names:
        raise InputError("distractor_names is empty")
    return replace(
        dataset,
        db_names=dataset.db_names + names,
        num_distractors=len(names),
        distractor_dir=Path(distractor_root),
    )


def query_crop_box(bbx, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer crop ``(x1, y1, x2, y2)`` of a query box, end-exclusive.

    Coordinates are rounded half to even, as PIL's ``Image.crop`` in the
    revisitop example code does, then clipped to the image (PIL would pad
    outside pixels with black; the reference MATLAB ``crop_qim`` clips).

    Args:
        bbx: (4,) query box ``x1, y1, x2, y2`` in pixels.
        width, height: image size in pixels.
    """
    box = np.asarray(bbx, dtype=np.float64).reshape(-1)
    if box.size != 4 or not np.all(np.isfinite(box)):
        raise InputError(f"bbx must be 4 finite numbers x1, y1, x2, y2, got {bbx!r}")
    x1, y1, x2, y2 = (int(v) for v in np.round(box))
    x1, x2 = min(max(x1, 0), width), min(max(x2, 0), width)
    y1, y2 = min(max(y1, 0), height), min(max(y2, 0), height)
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"bbx {box.tolist()} is empty inside a {width}x{height} image")
    return x1, y1, x2, y2


def crop_query(image: np.ndarray, bbx) -> np.ndarray:
    """Crop a query image to its box.

    Args:
        image: (H, W) or (H, W, C) array.
        bbx: (4,) box ``x1, y1, x2, y2`` in pixels.

    Returns:
        The (y2-y1, x2-x1[, C]) view of ``image`` given by :func:`query_crop_box`.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise InputError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    x1, y1, x2, y2 = query_crop_box(bbx, image.shape[1], image.shape[0])
    return image[y1:y2, x1:x2]
