"""CNN global descriptors through the pipeline's extractor interface.

:class:`GlobalDescriptorExtractor` makes a :class:`~d2r.global_.describe.GlobalDescriber`
look like a local-feature backend, so extraction, the resumable feature store,
bad-image handling and sharding serve the global baselines unchanged: an
image's descriptor is stored as a single "feature" (1, D) located at the
centre of the image (or of the query box).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from d2r.config import CnnGlobalConfig, to_dict
from d2r.features.base import check_image, crop_box
from d2r.global_.describe import GlobalDescriber
from d2r.types import LocalFeatures

__all__ = ["GlobalDescriptorExtractor", "make_global_extractor"]

logger = logging.getLogger(__name__)


class GlobalDescriptorExtractor:
    """``extract(image, box=None) -> LocalFeatures`` with one row: the global descriptor."""

    def __init__(self, describer: GlobalDescriber, *, description: dict[str, Any]) -> None:
        self.describer = describer
        self._description = dict(description)
        probe = np.full((64, 64, 3), 127, np.uint8)
        self._dim = int(describer.describe(probe).shape[0])

    @property
    def dim(self) -> int:
        return self._dim

    def config(self) -> dict[str, Any]:
        return {"type": "cnn_global", "dim": self._dim, **self._description}

    def extract(self, image: np.ndarray, *, box: Sequence[float] | None = None) -> LocalFeatures:
        """The (1, D) descriptor of ``image`` (H, W, 3) uint8, or of its ``box`` crop."""
        image = check_image(image)
        height, width = image.shape[:2]
        x0, y0 = 0, 0
        if box is not None:
            image, (x0, y0) = crop_box(image, box)
        vector = np.asarray(self.describer.describe(image), np.float32).reshape(1, -1)
        centre = [[x0 + image.shape[1] / 2.0, y0 + image.shape[0] / 2.0]]
        return LocalFeatures(centre, vector, [1.0], [1.0], (width, height))


def make_global_extractor(config: CnnGlobalConfig) -> GlobalDescriptorExtractor:
    """Build the backbone and describer ``config`` names (TensorFlow is imported here)."""
    from d2r.global_.backbones import Backbone
    from d2r.global_.pfa import load_pfa
    from d2r.global_.whitening import load_whitening

    if config.weights_path is None:
        logger.warning("features.cnn.weights_path is not set: random %s weights (seed %d); "
                       "descriptors are meaningless beyond testing", config.backbone, config.seed)
    backbone = Backbone(config.backbone, weights_path=config.weights_path,
                        layers=config.layers, seed=config.seed)
    describer = GlobalDescriber(
        backbone, method=config.method, levels=config.levels, p=config.gem_p,
        whitening=load_whitening(config.whitening_path) if config.whitening_path else None,
        resolutions=config.resolutions,
        pfa=load_pfa(config.pfa_path) if config.pfa_path else None,
    )
    return GlobalDescriptorExtractor(describer, description=to_dict(config))
