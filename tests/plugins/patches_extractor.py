"""A feature extractor in one file, loaded as a plugin (``D2R_PLUGINS=patches_extractor``)
by tests/test_extractor_plugin.py: normalized grey-level patches around Harris corners,
with its config section ``features.patches`` beside it.  It is not imported by the test
process itself, so its section stays out of every other test's configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from d2r.config import feature_section
from d2r.features.base import BaseExtractor
from d2r.features.registry import register_extractor
from d2r.types import LocalFeatures

PATCH = 8
"""Descriptor: a PATCH x PATCH grey patch, so PATCH**2 dimensions."""


@feature_section("patches")
@dataclass
class PatchesConfig:
    """Grey patches around Harris corners (``features.backend: patches``)."""

    max_features: int = 300
    """Keep at most this many corners, strongest first."""
    radius: int = 8
    """A patch covers (2 radius) x (2 radius) pixels, averaged down to 8 x 8."""

    RANGES: ClassVar[dict[str, str]] = {"max_features": "[1, inf)", "radius": "[4, 64]"}


@register_extractor
class PatchesExtractor(BaseExtractor):
    """Harris corners (scikit-image), each described by its mean-free unit-norm grey patch."""

    name = "patches"
    output_type = LocalFeatures
    record_type = "patches"
    method_key = "aggregation.method"

    def __init__(self, *, max_features: int, radius: int) -> None:
        super().__init__()
        self.max_features, self.radius = max_features, radius

    @classmethod
    def from_config(cls, config: PatchesConfig) -> "PatchesExtractor":
        return cls(max_features=config.max_features, radius=config.radius)

    @property
    def dim(self) -> int:
        return PATCH * PATCH

    def config(self) -> dict[str, Any]:
        return {"type": "patches", "dim": self.dim, "max_features": self.max_features,
                "radius": self.radius}

    def _extract_full(self, image: np.ndarray) -> LocalFeatures:
        from skimage.feature import corner_harris, corner_peaks
        from skimage.transform import resize

        size = (int(image.shape[1]), int(image.shape[0]))
        gray = image.astype(np.float32).mean(axis=2) / 255.0
        r = self.radius
        response = corner_harris(gray)
        peaks = corner_peaks(response, min_distance=r // 2, exclude_border=r,
                             num_peaks=self.max_features)
        if len(peaks) == 0:
            return LocalFeatures.empty(self.dim, size)
        patches = np.stack([resize(gray[y - r:y + r, x - r:x + r], (PATCH, PATCH),
                                   anti_aliasing=True).reshape(-1) for y, x in peaks])
        patches -= patches.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(patches, axis=1, keepdims=True)
        keep = norms[:, 0] > 1e-6
        return LocalFeatures(
            locations=peaks[keep, ::-1].astype(np.float32),
            descriptors=(patches[keep] / norms[keep]).astype(np.float32),
            scales=np.full(int(keep.sum()), r, np.float32),
            scores=response[peaks[keep, 0], peaks[keep, 1]].astype(np.float32),
            image_size=size,
        )
