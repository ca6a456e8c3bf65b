"""CNN global descriptors as an extractor (``features.backend: cnn``).

:class:`GlobalDescriptorExtractor` wraps a :class:`~d2r.cnn.describe.GlobalDescriber`
so extraction, the resumable feature store, bad-image handling and sharding serve the
global baselines.  It returns :class:`~d2r.types.GlobalDescriptors` holding the
describer's rows (:meth:`~d2r.cnn.describe.GlobalDescriber.describe_rows`):

* one row, the global descriptor (MAC, R-MAC, GeM, multi-resolution R-MAC), located at
  the centre of the image (or of the query box);
* two rows with a CAM classifier: the global and the CAM-masked local descriptor;
* ``regional``: one row per candidate region, the whole image first, each located at
  the centroid of its region.

For AML re-ranking :meth:`GlobalDescriptorExtractor.extract_with_map` also returns
the :class:`~d2r.types.ActivationMap`, which the index keeps for AML re-ranking.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional, Sequence

import numpy as np

from d2r.config import feature_section, to_dict
from d2r.features.base import check_image, crop_box
from d2r.features.registry import register_extractor
from d2r.types import ActivationMap, GlobalDescriptors

if TYPE_CHECKING:
    from d2r.cnn.describe import GlobalDescriber

__all__ = ["CnnGlobalConfig", "GlobalDescriptorExtractor", "make_global_extractor"]

logger = logging.getLogger(__name__)

_NOT_DESCRIPTORS = ("store_maps",)
"""Config keys that change what is kept, not the descriptors (left out of the recorded config)."""


def _region_centres(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(R, H', W') masks -> (R, 2) centroids in pixels of an image of ``size`` (W, H)."""
    h, w = masks.shape[1:]
    rows, cols = np.mgrid[0:h, 0:w]
    count = masks.sum(axis=(1, 2)).astype(np.float64)
    cx = (masks * cols).sum(axis=(1, 2)) / count
    cy = (masks * rows).sum(axis=(1, 2)) / count
    return np.stack([(cx + 0.5) * size[0] / w - 0.5, (cy + 0.5) * size[1] / h - 0.5], axis=1)


@feature_section("cnn")
@dataclass
class CnnGlobalConfig:
    """CNN global descriptor (``features.backend: cnn``): the comparison baselines."""

    backbone: Literal["vgg16", "resnet50", "resnet101"] = "vgg16"
    weights_path: Optional[str] = None
    """Local Keras weights file of the backbone (None: random weights, for testing only)."""
    seed: int = 0
    """Seed of the random weights when ``weights_path`` is None."""
    method: str = "rmac"
    """``regional``: Jeong et al.'s region-wise pooling over clustered salient points."""
    layers: tuple[str, ...] = ("last",)
    """Conv layers used (``last``, ``penultimate``, ``previous_block`` or Keras names)."""
    levels: int = 3
    """R-MAC scales L."""
    gem_p: float = 3.0
    whitening_path: Optional[str] = None
    """PCA-whitening learned on another data set (``d2r learn``)."""
    resolutions: tuple[int, ...] = (550, 800, 1050)
    """``multires``: input sizes (longer side) fused early."""
    pfa_path: Optional[str] = None
    """``multires``: Principal Feature Analysis selection."""
    cam: bool = False
    """``multires``: add a CAM-masked local descriptor; images compare by the smaller of the
    two Manhattan distances (needs a ResNet weights file with the ImageNet classifier)."""
    cam_threshold: float = 0.9
    """CAM mask: cells with heat >= this x the mean heat."""
    regional_order: Literal["first", "second", "both"] = "both"
    """``regional``: first-order, second-order (log-Euclidean covariance) pooling, or both."""
    regional_clusters: int = 3
    """``regional``: clusters L of salient points (2^L - 1 hull regions + the whole image)."""
    salient_max: int = 200
    """``regional``: keep at most this many salient points (N_max) ..."""
    salient_min: int = 20
    """... and top up to this many with the most salient cells (N_min)."""
    reduction_path: Optional[str] = None
    """``regional``: PCA of local features (to K') before second-order pooling (learned)."""
    store_maps: bool = False
    """Keep every database image's activation map (``INDEX/maps``) for AML re-ranking."""

    RANGES: ClassVar[dict[str, str]] = {
        "seed": "[0, inf)",
        "levels": "[1, 10]",
        "gem_p": "(0, inf)",
        "resolutions": "[16, 8192]",
        "cam_threshold": "[0, inf)",
        "regional_clusters": "[1, 8]",
        "salient_max": "[1, inf)",
        "salient_min": "[1, inf)",
    }
    LEGACY: ClassVar[dict[str, Any]] = {
        "cam": False, "cam_threshold": 0.9, "regional_order": "both", "regional_clusters": 3,
        "salient_max": 200, "salient_min": 20, "reduction_path": None, "store_maps": False,
    }
    """Keys added after d2r 0.1.0 (:func:`d2r.config.legacy_values`)."""


@register_extractor
class GlobalDescriptorExtractor:
    """``extract(image, box=None) -> GlobalDescriptors``: the image's CNN descriptor row(s)."""

    name = "cnn"
    extra = "tf"
    output_type = GlobalDescriptors
    record_type = "cnn_global"
    method_key = "features.cnn.method"
    """The config key naming the retrieval method that takes this extractor's output."""

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

    @classmethod
    def from_config(cls, config: CnnGlobalConfig) -> "GlobalDescriptorExtractor":
        """Build the backbone and describer ``config`` (``features.cnn``) names (imports TensorFlow)."""
        return make_global_extractor(config)

    def extract(self, image: np.ndarray, *, box: Sequence[float] | None = None) -> GlobalDescriptors:
        """The (R, D) rows of ``image`` (H, W, 3) uint8, or of its ``box`` crop."""
        return self.extract_with_map(image, box=box)[0]

    def extract_with_map(self, image: np.ndarray, *, box: Sequence[float] | None = None
                         ) -> tuple[GlobalDescriptors, ActivationMap]:
        """:meth:`extract` and the (H', W', C) map of the first layer (first resolution) it came from."""
        image = check_image(image)
        height, width = image.shape[:2]
        x0, y0 = 0, 0
        if box is not None:
            image, (x0, y0) = crop_box(image, box)
        maps = self.describer.maps(image)
        rows, masks = self.describer.rows_from_maps(image, maps)
        crop_size = (image.shape[1], image.shape[0])
        if masks is None:
            centres = np.tile([[crop_size[0] / 2.0, crop_size[1] / 2.0]], (rows.shape[0], 1))
        else:
            centres = _region_centres(masks, crop_size)
        described = GlobalDescriptors(rows, centres + [x0, y0], (width, height))
        return described, ActivationMap(next(iter(maps.values()))[0])


def make_global_extractor(config: CnnGlobalConfig) -> GlobalDescriptorExtractor:
    """Build the backbone and describer ``config`` names (TensorFlow is imported here)."""
    from d2r.cnn.backbones import Backbone
    from d2r.cnn.describe import CamClassifier, GlobalDescriber
    from d2r.cnn.pfa import load_pfa
    from d2r.cnn.whitening import load_whitening

    if config.weights_path is None:
        logger.warning("features.cnn.weights_path is not set: random %s weights (seed %d); "
                       "descriptors are meaningless beyond testing", config.backbone, config.seed)
    if config.cam and config.layers[0] != "last":
        raise ValueError(f"features.cnn.cam needs the last conv layer first in features.cnn.layers "
                         f"(the classifier follows it), got {list(config.layers)}")
    backbone = Backbone(config.backbone, weights_path=config.weights_path,
                        layers=config.layers, seed=config.seed, classifier=config.cam)
    cam = None
    if config.cam:
        cam = CamClassifier(backbone.classifier_kernel, backbone.classifier_bias,
                            threshold=config.cam_threshold)
    describer = GlobalDescriber(
        backbone, method=config.method, levels=config.levels, p=config.gem_p,
        whitening=load_whitening(config.whitening_path) if config.whitening_path else None,
        resolutions=config.resolutions,
        pfa=load_pfa(config.pfa_path) if config.pfa_path else None,
        cam=cam, order=config.regional_order, clusters=config.regional_clusters,
        n_max=config.salient_max, n_min=config.salient_min,
        reduction=load_whitening(config.reduction_path) if config.reduction_path else None,
    )
    description = {k: v for k, v in to_dict(config).items() if k not in _NOT_DESCRIPTORS}
    return GlobalDescriptorExtractor(describer, description=description)
