"""The shared shell of the extractors that run a network with its published PyTorch weights
(:mod:`d2r.features.xfeat`, :mod:`d2r.features.disk`).

A subclass names its weights (``WEIGHTS_SHA256``, the ``data/download.py`` entry it shares
its ``name`` with), its descriptor size ``DIM``, its defaults, how a detection threshold
is checked, how the network is loaded (``load_model``) and run (``dense_function``), and
implements ``_extract_full``; construction from weights or a config section and the
recorded config are the same for all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from d2r.checks import check_positive_int
from d2r.features.base import BaseExtractor
from d2r.io.hashing import file_sha256
from d2r.types import LocalFeatures

__all__ = ["PublishedWeightsExtractor"]

_PUBLISHED: Any = object()
"""Default of ``from_weights(sha256=...)``: the published file's sha256."""


class PublishedWeightsExtractor(BaseExtractor):
    """Keypoints and descriptors of a network with published weights.

    Args:
        model: the network with its weights (the subclass's ``load_model``).
        weights_sha256: names the weights in :meth:`config` (the checkpoint's sha256).
        max_keypoints: keep at most this many keypoints, the strongest
            (default ``DEFAULT_MAX_KEYPOINTS``).
        detection_threshold: the score a keypoint must exceed (default
            ``DEFAULT_THRESHOLD``; checked by :meth:`check_threshold`).
        max_image_side: downscale images whose longer side exceeds this first.
    """

    output_type = LocalFeatures
    method_key = "aggregation.method"
    """The config key naming the retrieval method that takes this extractor's output."""
    extra = "tf"
    DIM: int
    WEIGHTS_SHA256: str
    LABEL: str
    """The network's name in messages (``"XFeat"``)."""
    DEFAULT_MAX_KEYPOINTS: int
    DEFAULT_THRESHOLD: float
    load_model: Callable[..., Any]
    """``load_model(path, *, sha256)``: the network with the checkpoint's weights (a
    staticmethod)."""
    dense_function: Callable[[Any], Callable]
    """``dense_function(model)``: the compiled function ``_extract_full`` runs (a
    staticmethod)."""

    def __init__(self, model, *, weights_sha256: str, max_keypoints: Optional[int] = None,
                 detection_threshold: Optional[float] = None,
                 max_image_side: int | None = None) -> None:
        super().__init__(max_image_side=max_image_side)
        self.max_keypoints = check_positive_int(
            "max_keypoints", self.DEFAULT_MAX_KEYPOINTS if max_keypoints is None else max_keypoints)
        self.detection_threshold = self.check_threshold(
            float(self.DEFAULT_THRESHOLD if detection_threshold is None else detection_threshold))
        self.weights_sha256 = str(weights_sha256)
        self.model = model
        self._dense = type(self).dense_function(model)

    @staticmethod
    def check_threshold(value: float) -> float:
        """``value`` if it is a valid detection threshold, else ``ValueError``."""
        raise NotImplementedError

    @classmethod
    def from_weights(cls, path: str | os.PathLike, *, sha256: str | None = _PUBLISHED,
                     **params) -> "PublishedWeightsExtractor":
        """Extractor with the PyTorch checkpoint at ``path``, refused unless its sha256 is
        ``sha256`` (default: the published file's; None: any checkpoint of this network);
        ``params`` go to the constructor."""
        if sha256 is _PUBLISHED:
            sha256 = cls.WEIGHTS_SHA256
        model = cls.load_model(path, sha256=sha256)
        return cls(model, weights_sha256=sha256 or file_sha256(path), **params)

    @classmethod
    def from_config(cls, config) -> "PublishedWeightsExtractor":
        """Extractor described by its config section (``features.<name>``)."""
        from d2r.config import ConfigError

        if not config.weights_path:
            raise ConfigError(f"features.{cls.name}.weights_path is not set: {cls.LABEL} needs "
                              f"its published weights; `python data/download.py {cls.name}` "
                              f"fetches them and prints the --set to use")
        return cls.from_weights(Path(config.weights_path),
                                sha256=config.weights_sha256 or cls.WEIGHTS_SHA256,
                                max_keypoints=config.max_keypoints,
                                detection_threshold=config.detection_threshold,
                                max_image_side=config.max_image_side)

    @property
    def dim(self) -> int:
        return self.DIM

    def config(self) -> dict[str, Any]:
        return {"type": self.name, "dim": self.dim, "weights_sha256": self.weights_sha256,
                "max_keypoints": self.max_keypoints,
                "detection_threshold": self.detection_threshold,
                "max_image_side": self.max_image_side}
