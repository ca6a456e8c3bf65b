"""Synthetic landmark-retrieval benchmark in the Revisited Oxford/Paris layout.

The "landmarks" are distinctive crops of real photographs shipped inside the
scikit-image wheel (``skimage.data``; nothing is downloaded).  Every database
image is a cluttered scene assembled from crops of other shipped photographs
and textures; most show one landmark under a random perspective view, scale,
occlusion, truncation, illumination change, blur, noise and JPEG compression,
the rest (distractors) show no landmark.  Each landmark also gets one or more
query images: a clean, unoccluded view with ``bbx`` its bounding box.

Files written to ``out_dir`` (``<name>`` is the ``name`` argument):

``jpg/<image>.jpg``
    Database images ``<name>_db_NNNNNN`` and queries ``<name>_q_NNNN``.
``gnd_<name>.pkl``
    The revisitop ground truth ``{"imlist", "qimlist", "gnd"}``; ``gnd[q]`` has
    ``bbx`` ``[x1, y1, x2, y2]`` (floats, pixels) and ``easy`` / ``hard`` /
    ``junk`` lists of database indices.  Plain dict/list/str/float/int only.
``boxes.csv``
    ``id,box`` with ``box`` = ``"ymin xmin ymax xmax"`` normalized to [0, 1],
    one row per database image that shows a landmark (the Google Landmark
    Boxes ``boxes_split*.csv`` format, for detector training).
``labels.csv``
    ``id,landmark_id,split`` for the same images (``split``: ``train`` or
    ``val``, about one image in five per landmark), for DELF training.
``annotations.csv``
    One row per database image and query: ``id, kind (db|query), landmark_id
    (-1 for distractors), label (easy|hard|junk|distractor|query), width,
    height, x1, y1, x2, y2`` (pixels) ``, visible, coverage, anisotropy,
    rotation`` and ``homography`` (9 numbers, row-major).
``landmarks.csv``
    ``landmark_id,name,source,x1,y1,x2,y2,width,height``: where each landmark
    was cropped (source pixels) and its size (see :func:`landmarks`).
``synthetic.json``
    The parameters, thresholds, counts and library versions of the run.

Coordinates are continuous pixel coordinates in which pixel ``(row, col)``
covers ``[col, col + 1] x [row, row + 1]`` (the convention of
``PIL.Image.crop``); a keypoint at the centre of pixel ``(r, c)`` is at
``(c + 0.5, r + 0.5)``.  ``homography`` maps landmark coordinates (those of
``landmarks()[i].image``) to image coordinates, so ``H_db @ inv(H_query)`` is
the true query-to-database homography (for testing spatial verification).

Labels (see :class:`LabelThresholds`) follow the ROxf/RPar protocol from the
measured view of the landmark: ``visible`` = visible landmark area (not
occluded, inside the frame) / full landmark area; ``coverage`` = visible
landmark area / image area; ``anisotropy`` = the smallest ratio of the
singular values of the homography's Jacobian over the landmark's corners and
centre (1 for a frontal view); ``rotation`` = in-plane rotation at the centre
in degrees.

Generation is deterministic: the same arguments and the same numpy / OpenCV /
Pillow / scikit-image versions give the same files, byte for byte.

One module over 500 lines on purpose: the scene model, the view sampling, the
labelling thresholds and the writer are one generator whose byte-for-byte output
every stored benchmark figure depends on; split, a change in one part could not
be read beside the parts whose output it changes.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import os
import pickle
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import PIL
import skimage
import skimage.data
from PIL import Image

__all__ = [
    "SIZES",
    "LabelThresholds",
    "Landmark",
    "View",
    "landmarks",
    "measure_view",
    "label_view",
    "generate",
]

logger = logging.getLogger(__name__)

MANIFEST = "synthetic.json"

#: Named sizes for the CLI's ``--size``; ``default`` equals :func:`generate`'s defaults.
SIZES: dict[str, dict] = {
    "tiny": dict(
        num_landmarks=4, num_db_images=16, num_distractors=4, queries_per_landmark=1,
        image_side=(192, 256),
    ),
    "small": dict(
        num_landmarks=8, num_db_images=64, num_distractors=16, queries_per_landmark=1,
        image_side=(256, 384),
    ),
    "default": dict(
        num_landmarks=20, num_db_images=200, num_distractors=40, queries_per_landmark=2,
        image_side=(256, 512),
    ),
    "large": dict(
        num_landmarks=25, num_db_images=2000, num_distractors=500, queries_per_landmark=2,
        image_side=(384, 640),
    ),
}

# Landmark crops: (name, skimage.data source, (x1, y1, x2, y2) as fractions of the source).
# Crops of one source never overlap; ordered round-robin over sources so that a
# small benchmark draws its landmarks from different photographs.
_LANDMARK_CROPS: tuple[tuple[str, str, tuple[float, float, float, float]], ...] = (
    ("astronaut_face", "astronaut", (0.15, 0.0, 0.65, 0.45)),
    ("camera_man", "camera", (0.1, 0.05, 0.6, 0.55)),
    ("chelsea", "chelsea", (0.15, 0.0, 0.85, 1.0)),
    ("coffee", "coffee", (0.1, 0.0, 0.75, 1.0)),
    ("rocket", "rocket", (0.0, 0.1, 1.0, 1.0)),
    ("motorcycle", "motorcycle", (0.0, 0.3, 0.6, 1.0)),
    ("hubble_tl", "hubble_deep_field", (0.0, 0.0, 0.5, 0.5)),
    ("ihc_tl", "immunohistochemistry", (0.0, 0.0, 0.5, 0.5)),
    ("retina_tl", "retina", (0.1, 0.1, 0.5, 0.5)),
    ("coins_left", "coins", (0.0, 0.0, 0.5, 1.0)),
    ("astronaut_shuttle", "astronaut", (0.68, 0.0, 1.0, 0.55)),
    ("camera_skyline", "camera", (0.6, 0.1, 1.0, 0.6)),
    ("garage_shelf", "motorcycle", (0.6, 0.0, 1.0, 0.45)),
    ("hubble_tr", "hubble_deep_field", (0.5, 0.0, 1.0, 0.5)),
    ("ihc_tr", "immunohistochemistry", (0.5, 0.0, 1.0, 0.5)),
    ("retina_tr", "retina", (0.5, 0.1, 0.9, 0.5)),
    ("coins_right", "coins", (0.5, 0.0, 1.0, 1.0)),
    ("astronaut_suit", "astronaut", (0.0, 0.45, 0.5, 1.0)),
    ("hubble_bl", "hubble_deep_field", (0.0, 0.5, 0.5, 1.0)),
    ("ihc_bl", "immunohistochemistry", (0.0, 0.5, 0.5, 1.0)),
    ("retina_bl", "retina", (0.1, 0.5, 0.5, 0.9)),
    ("moon_north", "moon", (0.0, 0.0, 1.0, 0.5)),
    ("hubble_br", "hubble_deep_field", (0.5, 0.5, 1.0, 1.0)),
    ("ihc_br", "immunohistochemistry", (0.5, 0.5, 1.0, 1.0)),
    ("retina_br", "retina", (0.5, 0.5, 0.9, 0.9)),
)

# Clutter-only crops (never landmarks); landmarks not drawn in a run join them.
_CLUTTER_CROPS: tuple[tuple[str, tuple[float, float, float, float]], ...] = (
    ("brick", (0.0, 0.0, 1.0, 1.0)),
    ("grass", (0.0, 0.0, 1.0, 1.0)),
    ("gravel", (0.0, 0.0, 1.0, 1.0)),
    ("page", (0.0, 0.0, 1.0, 1.0)),
    ("text", (0.0, 0.0, 1.0, 1.0)),
    ("clock", (0.0, 0.0, 1.0, 1.0)),
    ("cell", (0.0, 0.0, 1.0, 1.0)),
    ("moon", (0.0, 0.55, 1.0, 1.0)),
    ("astronaut", (0.5, 0.55, 1.0, 1.0)),
    ("camera", (0.0, 0.62, 1.0, 1.0)),
    ("coffee", (0.78, 0.0, 1.0, 1.0)),
)

_MAX_LANDMARK_SIDE = 512
_ASPECTS = (1.0, 4.0 / 3.0, 1.5)
_TARGET_PROBS = {"easy": 0.5, "hard": 0.35, "junk": 0.15}
_MAX_TRIES = 40
_VAL_EVERY = 5


@dataclass(frozen=True, kw_only=True)
class LabelThresholds:
    """How a measured :class:`View` of a landmark becomes a ROxf-style label.

    ``junk`` when ``visible < junk_visible`` or ``coverage < junk_coverage``
    (barely visible: mostly occluded / out of frame, or tiny); otherwise
    ``easy`` when ``visible >= easy_visible``, ``coverage >= easy_coverage``,
    ``anisotropy >= easy_anisotropy`` and ``|rotation| <= easy_rotation``
    (clearly visible); otherwise ``hard`` (visible but small, occluded,
    truncated or strongly warped).
    """

    easy_visible: float = 0.8
    easy_coverage: float = 0.1
    easy_anisotropy: float = 0.6
    easy_rotation: float = 15.0
    junk_visible: float = 0.3
    junk_coverage: float = 0.015

    def __post_init__(self) -> None:
        if not 0.0 <= self.junk_visible <= self.easy_visible <= 1.0:
            raise ValueError(
                f"need 0 <= junk_visible <= easy_visible <= 1, got {self.junk_visible}, "
                f"{self.easy_visible}"
            )
        if not 0.0 <= self.junk_coverage <= self.easy_coverage <= 1.0:
            raise ValueError(
                f"need 0 <= junk_coverage <= easy_coverage <= 1, got {self.junk_coverage}, "
                f"{self.easy_coverage}"
            )
        if not 0.0 < self.easy_anisotropy <= 1.0:
            raise ValueError(f"easy_anisotropy must be in (0, 1], got {self.easy_anisotropy}")
        if not 0.0 <= self.easy_rotation < 90.0:
            raise ValueError(f"easy_rotation must be in [0, 90) degrees, got {self.easy_rotation}")


@dataclass(frozen=True)
class Landmark:
    """One landmark: a crop of a shipped photograph.

    Attributes:
        landmark_id: index in the landmark pool (also its id in the CSV files).
        name: short name, e.g. ``"astronaut_face"``.
        source: the ``skimage.data`` image it was cropped from.
        crop: ``(x1, y1, x2, y2)`` integer pixels of the crop in the source.
        image: (h, w, 3) uint8 RGB, the crop, downscaled so the long side is
            at most 512 pixels; homographies start from its coordinates.
    """

    landmark_id: int
    name: str
    source: str
    crop: tuple[int, int, int, int]
    image: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class View:
    """The measured view of a landmark in one image (see the module docstring)."""

    visible: float
    coverage: float
    anisotropy: float
    rotation: float


def _load_source(source: str) -> np.ndarray:
    if source == "motorcycle":
        image = skimage.data.stereo_motorcycle()[0]
    else:
        image = getattr(skimage.data, source)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def _crop(source: str, frac: tuple[float, float, float, float]):
    image = _load_source(source)
    h, w = image.shape[:2]
    box = (round(frac[0] * w), round(frac[1] * h), round(frac[2] * w), round(frac[3] * h))
    crop = image[box[1] : box[3], box[0] : box[2]]
    long_side = max(crop.shape[:2])
    if long_side > _MAX_LANDMARK_SIDE:
        f = _MAX_LANDMARK_SIDE / long_side
        size = (round(crop.shape[1] * f), round(crop.shape[0] * f))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    crop = np.ascontiguousarray(crop)
    crop.flags.writeable = False
    return box, crop


def landmarks(num: int | None = None) -> list[Landmark]:
    """The first ``num`` landmarks of the pool (all of them when ``None``).

    The pool is fixed (``len(landmarks())`` landmarks); :func:`generate` with
    ``num_landmarks=L`` uses ``landmarks(L)``.
    """
    if num is None:
        num = len(_LANDMARK_CROPS)
    if not 1 <= num <= len(_LANDMARK_CROPS):
        raise ValueError(f"num must be in 1..{len(_LANDMARK_CROPS)}, got {num}")
    out = []
    for i, (name, source, frac) in enumerate(_LANDMARK_CROPS[:num]):
        box, image = _crop(source, frac)
        out.append(Landmark(i, name, source, box, image))
    return out


def _clutter_pool(num_landmarks: int) -> list[np.ndarray]:
    pool = [_crop(source, frac)[1] for source, frac in _CLUTTER_CROPS]
    pool += [_crop(source, frac)[1] for _, source, frac in _LANDMARK_CROPS[num_landmarks:]]
    return [p.astype(np.float32) / 255.0 for p in pool]


# --------------------------------------------------------------------------- geometry


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The homography mapping 4 points ``src`` (4, 2) onto ``dst`` (4, 2), H[2, 2] = 1."""
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for k, ((x, y), (u, v)) in enumerate(zip(src, dst)):
        a[2 * k] = (x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y)
        a[2 * k + 1] = (0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y)
        b[2 * k], b[2 * k + 1] = u, v
    return np.append(np.linalg.solve(a, b), 1.0).reshape(3, 3)


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ h.T
    return p[:, :2] / p[:, 2:]


def _corners(w: float, h: float) -> np.ndarray:
    return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _jacobian(h: np.ndarray, pt: Sequence[float]) -> np.ndarray:
    x, y = pt
    den = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    u, v = _apply(h, np.array([[x, y]]))[0]
    return np.array(
        [
            [h[0, 0] - u * h[2, 0], h[0, 1] - u * h[2, 1]],
            [h[1, 0] - v * h[2, 0], h[1, 1] - v * h[2, 1]],
        ]
    ) / den


def _geometry(h: np.ndarray, size: tuple[int, int]) -> tuple[float, float]:
    """(anisotropy, rotation in degrees) of homography ``h`` over a (w, h) landmark."""
    w, hh = size
    points = np.r_[_corners(w, hh), [[w / 2, hh / 2]]]
    ratios = []
    for p in points:
        s = np.linalg.svd(_jacobian(h, p), compute_uv=False)
        ratios.append(s[1] / s[0])
    j = _jacobian(h, (w / 2, hh / 2))
    rotation = math.degrees(math.atan2(j[1, 0] - j[0, 1], j[0, 0] + j[1, 1]))
    return float(min(ratios)), rotation


def _rotation_3d(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    cr, sr = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _projected_quad(w: int, h: int, yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Corners of a (w, h) plane seen by a pinhole camera, centred on (0, 0), unit scale."""
    focal = 1.6 * max(w, h)
    plane = np.c_[_corners(w, h) - (w / 2, h / 2), np.zeros(4)]
    cam = plane @ _rotation_3d(yaw, pitch, roll).T
    cam[:, 2] += focal
    return focal * cam[:, :2] / cam[:, 2:]


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# --------------------------------------------------------------------------- rendering


def _warp(src: np.ndarray, h: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp ``src`` by ``h`` (continuous pixel coordinates) into a ``size`` (W, H) canvas.

    Strong downscaling first shrinks ``src`` with area averaging to avoid aliasing.
    """
    sh, sw = src.shape[:2]
    scale = math.sqrt(abs(np.linalg.det(_jacobian(h, (sw / 2, sh / 2)))))
    if scale < 0.8:
        nw, nh = max(1, round(sw * scale / 0.8)), max(1, round(sh * scale / 0.8))
        src = cv2.resize(src, (nw, nh), interpolation=cv2.INTER_AREA)
        h = h @ np.diag([sw / nw, sh / nh, 1.0])
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    h_centres = np.linalg.inv(shift) @ h @ shift
    return cv2.warpPerspective(
        src, h_centres, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def _ellipse_mask(w: int, h: int, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    ys = (np.arange(h, dtype=np.float32) + 0.5 - cy) / ay
    xs = (np.arange(w, dtype=np.float32) + 0.5 - cx) / ax
    return (ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0).astype(np.float32)


def _paste(
    canvas: np.ndarray,
    src: np.ndarray,
    h: np.ndarray,
    *,
    shape: np.ndarray | None = None,
    alpha: np.ndarray | None = None,
    gains: np.ndarray | None = None,
) -> None:
    """Composite ``src`` warped by ``h`` over ``canvas`` (H, W, 3) float32, in place.

    The opacity is ``alpha`` (a full-canvas (H, W) mask) when given, else
    ``shape`` (a mask in ``src`` coordinates, default all ones) warped by ``h``.
    ``gains`` (3,) scales the colours.  Only the window the warp reaches is touched.
    """
    ch, cw = canvas.shape[:2]
    quad = _apply(h, _corners(src.shape[1], src.shape[0]))
    x0, y0 = (max(0, math.floor(v)) for v in quad.min(axis=0))
    x1, y1 = min(cw, math.ceil(quad[:, 0].max())), min(ch, math.ceil(quad[:, 1].max()))
    if x1 <= x0 or y1 <= y0:
        return
    local = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]]) @ h
    size = (x1 - x0, y1 - y0)
    layer = _warp(src, local, size)
    if layer.dtype == np.uint8:
        layer = layer.astype(np.float32) / np.float32(255.0)
    if gains is not None:
        layer *= gains.astype(np.float32)
    if alpha is not None:
        a = alpha[y0:y1, x0:x1]
    else:
        a = _warp(np.ones(src.shape[:2], np.float32) if shape is None else shape, local, size)
    window = canvas[y0:y1, x0:x1]
    window *= 1.0 - a[:, :, None]
    window += layer * a[:, :, None]


def _gains(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, size=3)


def _random_crop(rng: np.random.Generator, pool: list[np.ndarray], min_frac: float) -> np.ndarray:
    src = pool[int(rng.integers(len(pool)))]
    h, w = src.shape[:2]
    cw = max(8, round(w * rng.uniform(min_frac, 1.0)))
    ch = max(8, round(h * rng.uniform(min_frac, 1.0)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return src[y : y + ch, x : x + cw]


def _background(rng: np.random.Generator, pool, size: tuple[int, int], num_patches: int):
    w, h = size
    crop = _random_crop(rng, pool, 0.4)
    canvas = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    canvas *= _gains(rng, 0.55, 1.15).astype(np.float32)
    for _ in range(num_patches):
        patch = _random_crop(rng, pool, 0.25)
        ph, pw = patch.shape[:2]
        side = rng.uniform(0.15, 0.5) * max(w, h)
        quad = _projected_quad(pw, ph, *rng.uniform(-30, 30, size=2), rng.uniform(-20, 20))
        quad *= side / max(pw, ph)
        quad += (rng.uniform(0, w), rng.uniform(0, h))
        hom = _homography(_corners(pw, ph), quad)
        shape = None
        if rng.random() < 0.5:
            shape = _ellipse_mask(pw, ph, pw / 2, ph / 2, pw / 2, ph / 2)
        _paste(canvas, patch, hom, shape=shape, gains=_gains(rng, 0.55, 1.15))
    return canvas


@dataclass
class _Placement:
    homography: np.ndarray
    alpha: np.ndarray  # (H, W) landmark alpha, inside the frame
    occluder: tuple | None  # ("rect", x1, y1, x2, y2) | ("ellipse", cx, cy, ax, ay)
    occ_alpha: np.ndarray | None
    view: View
    box: tuple[float, float, float, float]


def _occluder_box(occluder: tuple) -> tuple[float, float, float, float]:
    if occluder[0] == "ellipse":
        _, cx, cy, ax, ay = occluder
        return (cx - ax, cy - ay, cx + ax, cy + ay)
    return tuple(occluder[1:])


def _occluder_alpha(occluder: tuple, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    if occluder[0] == "ellipse":
        return _ellipse_mask(w, h, *occluder[1:])
    x1, y1, x2, y2 = occluder[1:]
    ys = (np.arange(h) + 0.5)[:, None]
    xs = (np.arange(w) + 0.5)[None, :]
    return ((xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)).astype(np.float32)


def measure_view(
    homography: np.ndarray,
    landmark_size: tuple[int, int],
    image_size: tuple[int, int],
    visible_area: float,
) -> View:
    """The :class:`View` of a ``landmark_size`` (w, h) landmark mapped by ``homography``.

    ``visible_area`` is the landmark's visible area in pixels (inside the frame,
    not occluded) in the ``image_size`` (W, H) image.
    """
    area = _polygon_area(_apply(homography, _corners(*landmark_size)))
    anisotropy, rotation = _geometry(homography, landmark_size)
    return View(
        visible=min(1.0, visible_area / area) if area > 0 else 0.0,
        coverage=visible_area / float(image_size[0] * image_size[1]),
        anisotropy=anisotropy,
        rotation=rotation,
    )


def label_view(view: View, thresholds: LabelThresholds) -> str:
    """``"easy"``, ``"hard"`` or ``"junk"`` for ``view`` (rules in :class:`LabelThresholds`)."""
    t = thresholds
    if view.visible < t.junk_visible or view.coverage < t.junk_coverage:
        return "junk"
    if (
        view.visible >= t.easy_visible
        and view.coverage >= t.easy_coverage
        and view.anisotropy >= t.easy_anisotropy
        and abs(view.rotation) <= t.easy_rotation
    ):
        return "easy"
    return "hard"


def _view_spec(rng: np.random.Generator, target: str, t: LabelThresholds) -> dict:
    """Sampling ranges of the view parameters that usually produce label ``target``."""
    spec = dict(
        coverage=_loguniform(rng, min(0.7, t.easy_coverage * 1.4), 0.75),
        yaw=rng.uniform(-20, 20),
        pitch=rng.uniform(-15, 15),
        roll=rng.uniform(-0.5, 0.5) * min(16.0, t.easy_rotation),
        occlusion=0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.6 * (1 - t.easy_visible)),
        outside=0.0,
    )
    if target == "query":
        spec.update(
            coverage=rng.uniform(0.25, 0.55), yaw=rng.uniform(-12, 12),
            pitch=rng.uniform(-8, 8), roll=rng.uniform(-4, 4), occlusion=0.0,
        )
    elif target == "hard":
        factors = rng.permutation(["small", "occluded", "warped", "truncated"])[
            : 1 + int(rng.random() < 0.3)
        ]
        hard_visible = (1 - t.easy_visible + 0.08, 1 - t.junk_visible - 0.08)
        for factor in factors:
            if factor == "small":
                spec["coverage"] = _loguniform(
                    rng, max(2.0 * t.junk_coverage, 1e-4), max(0.85 * t.easy_coverage, 2e-4)
                )
            elif factor == "occluded":
                spec["occlusion"] = rng.uniform(*hard_visible)
            elif factor == "truncated":
                spec["outside"] = rng.uniform(*hard_visible)
            else:
                foreshortening = rng.uniform(0.35, 0.85 * t.easy_anisotropy)
                sign = 1.0 if rng.random() < 0.5 else -1.0
                spec["yaw"] = sign * math.degrees(math.acos(foreshortening))
                spec["roll"] = rng.choice([-1.0, 1.0]) * (t.easy_rotation + rng.uniform(5, 25))
    elif target == "junk":
        if rng.random() < 0.5:
            spec["coverage"] = _loguniform(rng, 0.15 * t.junk_coverage, 0.8 * t.junk_coverage)
        else:
            spec["occlusion"] = rng.uniform(1 - t.junk_visible + 0.05, 0.97)
    return spec


def _place(
    rng: np.random.Generator, lm_size: tuple[int, int], size: tuple[int, int], spec: dict
) -> _Placement:
    lw, lh = lm_size
    w, h = size
    quad = _projected_quad(lw, lh, spec["yaw"], spec["pitch"], spec["roll"])
    scale = math.sqrt(spec["coverage"] * w * h / _polygon_area(quad))
    span = quad.max(axis=0) - quad.min(axis=0)
    scale = min(scale, 0.98 * w / span[0], 0.98 * h / span[1])
    quad = quad * scale
    lo, hi = quad.min(axis=0), quad.max(axis=0)
    centre = np.array([rng.uniform(-lo[0], w - hi[0]), rng.uniform(-lo[1], h - hi[1])])
    if spec["outside"] > 0:
        axis = int(rng.integers(2))
        extent = hi[axis] - lo[axis]
        if rng.random() < 0.5:
            centre[axis] = -lo[axis] - spec["outside"] * extent
        else:
            centre[axis] = size[axis] - hi[axis] + spec["outside"] * extent
    quad = quad + centre
    hom = _homography(_corners(lw, lh), quad)
    alpha = _warp(np.ones((lh, lw), np.float32), hom, size)
    x1, y1 = np.clip(quad.min(axis=0), 0, size)
    x2, y2 = np.clip(quad.max(axis=0), 0, size)
    occluder = occ_alpha = None
    if spec["occlusion"] > 0:
        occluder = _occluder(rng, (x1, y1, x2, y2), spec["occlusion"], _polygon_area(quad))
        occ_alpha = _occluder_alpha(occluder, size)
    visible_alpha = alpha if occ_alpha is None else alpha * (1.0 - occ_alpha)
    view = measure_view(hom, lm_size, size, float(visible_alpha.sum(dtype=np.float64)))
    box = (round(float(x1), 2), round(float(y1), 2), round(float(x2), 2), round(float(y2), 2))
    return _Placement(hom, alpha, occluder, occ_alpha, view, box)


def _occluder(rng: np.random.Generator, box, fraction: float, area: float) -> tuple:
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    if rng.random() < 0.5:
        aspect = rng.uniform(0.6, 1.6)
        r = math.sqrt(fraction * area / math.pi)
        cx = x1 + bw * rng.uniform(0.3, 0.7)
        cy = y1 + bh * rng.uniform(0.3, 0.7)
        return ("ellipse", cx, cy, r * aspect, r / aspect)
    side = int(rng.integers(4))
    mx, my = 0.1 * bw, 0.1 * bh
    if side == 0:
        return ("rect", x1 - 4 * mx, y1 - my, x1 + fraction * bw, y2 + my)
    if side == 1:
        return ("rect", x2 - fraction * bw, y1 - my, x2 + 4 * mx, y2 + my)
    if side == 2:
        return ("rect", x1 - mx, y1 - 4 * my, x2 + mx, y1 + fraction * bh)
    return ("rect", x1 - mx, y2 - fraction * bh, x2 + mx, y2 + 4 * my)


def _photometric(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
    """Illumination (gain, gamma, colour, gradient), blur and noise; float [0, 1] in and out."""
    h, w = image.shape[:2]
    gain = 1.0 + strength * rng.uniform(-0.4, 0.4)
    gamma = math.exp(strength * rng.uniform(-0.35, 0.35))
    colour = 1.0 + strength * rng.uniform(-0.15, 0.15, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    slope = strength * rng.uniform(-0.4, 0.4)
    xs = ((np.arange(w, dtype=np.float32) + 0.5) / w - 0.5) * math.cos(angle)
    ys = ((np.arange(h, dtype=np.float32) + 0.5) / h - 0.5) * math.sin(angle)
    ramp = np.float32(1.0) + np.float32(slope) * (ys[:, None] + xs[None, :])
    out = np.power(np.clip(image, 0.0, 1.0), gamma) * (gain * colour).astype(np.float32)
    out *= ramp[:, :, None]
    if rng.random() < 0.5 * strength:
        sigma = rng.uniform(0.3, 1.5)
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma, sigmaY=sigma)
    noise_sigma = strength * rng.uniform(0.0, 0.025)
    out += rng.normal(0.0, noise_sigma, size=out.shape).astype(np.float32)
    return out


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    rgb = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=int(quality), subsampling=2, optimize=False)
    return buf.getvalue()


def _image_size(rng: np.random.Generator, image_side: tuple[int, int]) -> tuple[int, int]:
    long_side = int(rng.integers(image_side[0], image_side[1] + 1))
    short = round(long_side / _ASPECTS[int(rng.integers(len(_ASPECTS)))])
    return (long_side, short) if rng.random() < 0.6 else (short, long_side)


@dataclass
class _Rendered:
    jpeg: bytes
    size: tuple[int, int]
    placement: _Placement | None
    label: str


def _render(
    seed: np.random.SeedSequence,
    landmark: Landmark | None,
    target: str,
    pool: list[np.ndarray],
    image_side: tuple[int, int],
    thresholds: LabelThresholds,
) -> _Rendered:
    """One image: a distractor (``landmark`` None), a database view or a query."""
    rng = np.random.default_rng(seed)
    size = _image_size(rng, image_side)
    is_query = target == "query"
    placement = None
    label = "distractor" if landmark is None else target
    if landmark is not None:
        lm_size = (landmark.image.shape[1], landmark.image.shape[0])
        for _ in range(_MAX_TRIES):
            placement = _place(rng, lm_size, size, _view_spec(rng, target, thresholds))
            label = "query" if is_query else label_view(placement.view, thresholds)
            if label == target:
                break
    num_patches = int(rng.integers(1, 4)) if is_query else int(rng.integers(2, 6))
    canvas = _background(rng, pool, size, num_patches + (2 if landmark is None else 0))
    if placement is not None:
        gains = None if is_query else _gains(rng, 0.8, 1.2)
        _paste(canvas, landmark.image, placement.homography, alpha=placement.alpha, gains=gains)
        if placement.occ_alpha is not None:
            x1, y1, x2, y2 = _occluder_box(placement.occluder)
            pw, ph = max(1, math.ceil(x2 - x1)), max(1, math.ceil(y2 - y1))
            patch = _random_crop(rng, pool, 0.3)
            patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_LINEAR)
            shift = _homography(_corners(pw, ph), _corners(pw, ph) + (x1, y1))
            _paste(canvas, patch, shift, alpha=placement.occ_alpha, gains=_gains(rng, 0.55, 1.15))
    canvas = _photometric(rng, canvas, 0.3 if is_query else 1.0)
    quality = 92 if is_query else int(rng.integers(70, 96))
    return _Rendered(_encode_jpeg(canvas, quality), size, placement, label)


# --------------------------------------------------------------------------- writing


def _check_args(
    seed, num_landmarks, num_db_images, num_distractors, queries_per_landmark, image_side, name
) -> tuple[int, int]:
    """Validate :func:`generate`'s arguments; return ``image_side`` as (min, max)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    pool = len(_LANDMARK_CROPS)
    if not 1 <= num_landmarks <= pool:
        raise ValueError(f"num_landmarks must be in 1..{pool}, got {num_landmarks}")
    if num_distractors < 0:
        raise ValueError(f"num_distractors must be >= 0, got {num_distractors}")
    if num_db_images - num_distractors < num_landmarks:
        raise ValueError(
            f"num_db_images ({num_db_images}) - num_distractors ({num_distractors}) must leave at "
            f"least one image per landmark ({num_landmarks})"
        )
    if queries_per_landmark < 1:
        raise ValueError(f"queries_per_landmark must be >= 1, got {queries_per_landmark}")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"name must be non-empty letters, digits, '_' or '-', got {name!r}")
    if isinstance(image_side, (int, np.integer)):
        image_side = (int(image_side), int(image_side))
    lo, hi = (int(v) for v in image_side)
    if not 64 <= lo <= hi <= 4096:
        raise ValueError(f"image_side must satisfy 64 <= min <= max <= 4096, got {image_side!r}")
    return lo, hi


def _prepare_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"out_dir {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"out_dir {out_dir} is not empty; pass overwrite=True to replace it"
            )
        if not (out_dir / MANIFEST).is_file():
            raise FileExistsError(
                f"out_dir {out_dir} is not empty and holds no {MANIFEST}; refusing to delete "
                "a directory this generator did not write"
            )


def _plan(
    rng: np.random.Generator, num_landmarks: int, num_positive: int, num_distractors: int
) -> list[tuple[int, str]]:
    """The database in order: (landmark index or -1, target label) per image."""
    items = []
    for k in range(num_positive):
        nth = k // num_landmarks
        if nth < 2:
            target = ("easy", "hard")[nth]
        else:
            target = str(rng.choice(list(_TARGET_PROBS), p=list(_TARGET_PROBS.values())))
        items.append((k % num_landmarks, target))
    items += [(-1, "distractor")] * num_distractors
    return [items[i] for i in rng.permutation(len(items))]


def _ground_truth(db: list[tuple[int, _Rendered]], queries: list[tuple[int, _Rendered]]):
    """The revisitop ``gnd`` list: one dict of plain Python values per query."""
    by_landmark: dict[tuple[int, str], list[int]] = {}
    for i, (lm, r) in enumerate(db):
        by_landmark.setdefault((lm, r.label), []).append(i)
    gnd = []
    for lm, r in queries:
        entry = {"bbx": [float(v) for v in r.placement.box]}
        for label in ("easy", "hard", "junk"):
            entry[label] = list(by_landmark.get((lm, label), []))
        gnd.append(entry)
    return gnd


def _fmt(v: float) -> str:
    return repr(float(v))


def generate(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    num_landmarks: int = 20,
    num_db_images: int = 200,
    num_distractors: int = 40,
    queries_per_landmark: int = 2,
    image_side: int | tuple[int, int] = (256, 512),
    name: str = "synth",
    thresholds: LabelThresholds | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic benchmark in the revisitop layout to ``out_dir``; return its path.

    Args:
        out_dir: output directory; must be missing or empty unless ``overwrite``
            (which replaces only a directory written by this generator).
        seed: random seed (>= 0); the output is a deterministic function of all arguments.
        num_landmarks: landmarks drawn from the pool (1 .. ``len(landmarks())``).
        num_db_images: database size, distractors included.
        num_distractors: database images that show no landmark.
        queries_per_landmark: query images per landmark.
        image_side: long side in pixels, fixed or a (min, max) range.
        name: dataset name: ``gnd_<name>.pkl`` and the image-name prefix.
        thresholds: easy / hard / junk rules (:class:`LabelThresholds` defaults).
        overwrite: replace an existing dataset in ``out_dir``.

    The ``num_db_images - num_distractors`` landmark images are dealt to the
    landmarks in turn.  A landmark's first image is drawn as an easy view, its
    second as a hard one, the others easy / hard / junk with probabilities
    0.5 / 0.35 / 0.15; the label written is the one measured on the drawn view.
    The database order is shuffled.  The set is built in a temporary sibling
    directory and moved into place at the end.
    """
    side = _check_args(
        seed, num_landmarks, num_db_images, num_distractors, queries_per_landmark, image_side, name
    )
    thresholds = thresholds or LabelThresholds()
    out_dir = Path(out_dir)
    _prepare_dir(out_dir, overwrite)

    lms = landmarks(num_landmarks)
    pool = _clutter_pool(num_landmarks)
    num_queries = num_landmarks * queries_per_landmark
    plan_seed, *image_seeds = np.random.SeedSequence(seed).spawn(1 + num_db_images + num_queries)
    items = _plan(
        np.random.default_rng(plan_seed), num_landmarks, num_db_images - num_distractors,
        num_distractors,
    )
    items += [(j % num_landmarks, "query") for j in range(num_queries)]
    names = [f"{name}_db_{i:06d}" for i in range(num_db_images)]
    names += [f"{name}_q_{j:04d}" for j in range(num_queries)]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "jpg").mkdir()
        rendered = []
        for i, ((lm, target), seq) in enumerate(zip(items, image_seeds)):
            landmark = lms[lm] if lm >= 0 else None
            r = _render(seq, landmark, target, pool, side, thresholds)
            (tmp / "jpg" / f"{names[i]}.jpg").write_bytes(r.jpeg)
            rendered.append((lm, r))
            if (i + 1) % 100 == 0:
                logger.info("rendered %d / %d images", i + 1, len(items))
        db, queries = rendered[:num_db_images], rendered[num_db_images:]
        gnd = _ground_truth(db, queries)
        for qname, entry in zip(names[num_db_images:], gnd):
            if not entry["easy"] and not entry["hard"]:
                raise RuntimeError(f"query {qname} has no positive; please report this bug")
        with open(tmp / f"gnd_{name}.pkl", "wb") as f:
            ground_truth = {
                "imlist": names[:num_db_images], "qimlist": names[num_db_images:], "gnd": gnd
            }
            pickle.dump(ground_truth, f, protocol=4)
        rows = [(n, "db" if i < num_db_images else "query", lm, r)
                for i, (n, (lm, r)) in enumerate(zip(names, rendered))]
        _write_csvs(tmp, rows, lms)
        counts = {
            k: sum(r.label == k for _, r in db) for k in ("easy", "hard", "junk", "distractor")
        }
        manifest = {
            "generator": __name__,
            "name": name,
            "seed": int(seed),
            "num_landmarks": num_landmarks,
            "num_db_images": num_db_images,
            "num_distractors": num_distractors,
            "queries_per_landmark": queries_per_landmark,
            "image_side": list(side),
            "thresholds": asdict(thresholds),
            "label_counts": counts,
            "versions": {
                "numpy": np.__version__,
                "opencv": cv2.__version__,
                "pillow": PIL.__version__,
                "scikit-image": skimage.__version__,
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "wrote %s: %d database images %s, %d queries", out_dir, num_db_images, counts, num_queries
    )
    return out_dir


def _write_csvs(out: Path, rows, lms: list[Landmark]) -> None:
    with open(out / "boxes.csv", "w", newline="") as fb, \
            open(out / "labels.csv", "w", newline="") as fl:
        boxes, labels = csv.writer(fb, lineterminator="\n"), csv.writer(fl, lineterminator="\n")
        boxes.writerow(["id", "box"])
        labels.writerow(["id", "landmark_id", "split"])
        seen: dict[int, int] = {}
        for image_id, kind, lm, r in rows:
            if kind != "db" or lm < 0:
                continue
            w, h = r.size
            x1, y1, x2, y2 = r.placement.box
            boxes.writerow([image_id, f"{y1 / h:.6f} {x1 / w:.6f} {y2 / h:.6f} {x2 / w:.6f}"])
            seen[lm] = seen.get(lm, 0) + 1
            split = "val" if seen[lm] % _VAL_EVERY == 0 else "train"
            labels.writerow([image_id, lms[lm].landmark_id, split])
    with open(out / "annotations.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(
            ["id", "kind", "landmark_id", "label", "width", "height", "x1", "y1", "x2", "y2",
             "visible", "coverage", "anisotropy", "rotation", "homography"]
        )
        for image_id, kind, lm, r in rows:
            w, h = r.size
            p = r.placement
            if p is None:
                writer.writerow([image_id, kind, -1, r.label, w, h] + [""] * 9)
                continue
            v = p.view
            writer.writerow(
                [image_id, kind, lms[lm].landmark_id, r.label, w, h]
                + [f"{c:.2f}" for c in p.box]
                + [f"{v.visible:.4f}", f"{v.coverage:.4f}", f"{v.anisotropy:.4f}"]
                + [f"{v.rotation:.2f}", " ".join(_fmt(c) for c in p.homography.ravel())]
            )
    with open(out / "landmarks.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(
            ["landmark_id", "name", "source", "x1", "y1", "x2", "y2", "width", "height"]
        )
        for lm in lms:
            writer.writerow(
                [lm.landmark_id, lm.name, lm.source, *lm.crop, lm.image.shape[1], lm.image.shape[0]]
            )
