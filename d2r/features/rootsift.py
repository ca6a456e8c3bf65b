"""RootSIFT local features: OpenCV SIFT keypoints with Hellinger-normalized descriptors.

RootSIFT (Arandjelovic & Zisserman, CVPR 2012): L1-normalize each SIFT descriptor,
then take the element-wise square root; the result has unit L2 norm and its dot
products are Hellinger kernels of the SIFT histograms.  An optional learned
:class:`~d2r.features.pca.PCA` then applies L2 -> PCA -> (whitening) -> L2.

Keypoints: the ``max_features`` strongest by SIFT response (``scores``), strongest
first; ``locations`` are OpenCV's sub-pixel (x, y) (pixel centres at integers);
``scales`` are ``KeyPoint.size / 2``.  A blank image gives zero features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np

from d2r.checks import check_positive_int
from d2r.config import feature_section
from d2r.features.base import BaseExtractor
from d2r.features.pca import PCA, load_pca, postprocess_descriptors
from d2r.features.registry import register_extractor
from d2r.types import LocalFeatures

__all__ = ["RootSiftConfig", "RootSiftExtractor", "root_sift"]

SIFT_DIM = 128


def root_sift(descriptors: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Hellinger map of (N, D) non-negative SIFT descriptors: ``sqrt(d / max(|d|_1, eps))``, float32."""
    d = np.asarray(descriptors, dtype=np.float32)
    if d.ndim != 2:
        raise ValueError(f"descriptors must have shape (N, D), got {d.shape}")
    if d.size and d.min() < 0:
        raise ValueError("SIFT descriptors must be non-negative")
    l1 = np.maximum(d.sum(axis=1, keepdims=True, dtype=np.float64), eps)
    return np.sqrt(d / l1).astype(np.float32)


@feature_section("rootsift")
@dataclass
class RootSiftConfig:
    """OpenCV SIFT + Hellinger (RootSIFT) normalisation."""

    max_features: int = 1000
    """Keep at most this many keypoints, strongest response first."""
    contrast_threshold: float = 0.04
    edge_threshold: float = 10.0
    pca_path: Optional[str] = None
    """Directory of learned PCA parameters for RootSIFT (None: raw 128-D RootSIFT)."""
    pca_dim: Optional[int] = None
    """Keep this many PCA components (None: all)."""
    use_whitening: bool = False

    RANGES: ClassVar[dict[str, str]] = {
        "max_features": "[1, inf)",
        "contrast_threshold": "[0, inf)",
        "edge_threshold": "(0, inf)",
        "pca_dim": "[1, 128]",
    }


@register_extractor
class RootSiftExtractor(BaseExtractor):
    """OpenCV SIFT + RootSIFT; implements :class:`~d2r.features.base.LocalFeatureExtractor`.

    Args (keyword-only):
        max_features: keep at most this many keypoints, strongest response first.
        contrast_threshold, edge_threshold, sigma, n_octave_layers: OpenCV SIFT parameters.
        pca: optional learned PCA on RootSIFT descriptors; ``pca_dim`` (default 128, at
            most its components) and ``whiten`` select the output.
        max_image_side: downscale images whose longer side exceeds this before
            extraction (locations still refer to the input image).
    """

    def __init__(
        self,
        *,
        max_features: int = 1000,
        contrast_threshold: float = 0.04,
        edge_threshold: float = 10.0,
        sigma: float = 1.6,
        n_octave_layers: int = 3,
        pca: PCA | None = None,
        pca_dim: int | None = None,
        whiten: bool = False,
        max_image_side: int | None = None,
    ) -> None:
        super().__init__(max_image_side=max_image_side)
        check_positive_int("max_features", max_features)
        self.max_features = int(max_features)
        self.contrast_threshold = float(contrast_threshold)
        self.edge_threshold = float(edge_threshold)
        self.sigma = float(sigma)
        self.n_octave_layers = int(n_octave_layers)
        if pca is not None and pca.input_dim != SIFT_DIM:
            raise ValueError(f"PCA for RootSIFT must take {SIFT_DIM}-D input, got {pca.input_dim}-D")
        if pca is None and (pca_dim is not None or whiten):
            raise ValueError("pca_dim / whiten need PCA parameters (pca=...)")
        self.pca = pca
        self.whiten = bool(whiten)
        self.pca_dim = None
        if pca is not None:
            self.pca_dim = pca.check_dim(min(SIFT_DIM, pca.num_components) if pca_dim is None else pca_dim,
                                         whiten=self.whiten)
        self._sift = None

    name = "rootsift"
    output_type = LocalFeatures
    record_type = "rootsift"
    method_key = "aggregation.method"
    """The config key naming the retrieval method that takes this extractor's output."""

    @classmethod
    def from_config(cls, config: RootSiftConfig) -> "RootSiftExtractor":
        """Extractor described by a :class:`RootSiftConfig` (``features.rootsift``)."""
        pca = load_pca(config.pca_path) if config.pca_path else None
        return cls(max_features=config.max_features, contrast_threshold=config.contrast_threshold,
                   edge_threshold=config.edge_threshold, pca=pca,
                   pca_dim=config.pca_dim if pca is not None else None,
                   whiten=config.use_whitening)

    @property
    def dim(self) -> int:
        return SIFT_DIM if self.pca_dim is None else self.pca_dim

    def config(self) -> dict[str, Any]:
        import cv2

        return {
            "type": "rootsift",
            "dim": self.dim,
            "max_features": self.max_features,
            "contrast_threshold": self.contrast_threshold,
            "edge_threshold": self.edge_threshold,
            "sigma": self.sigma,
            "n_octave_layers": self.n_octave_layers,
            "max_image_side": self.max_image_side,
            "pca": None
            if self.pca is None
            else {"dim": self.pca_dim, "whiten": self.whiten, "sha256": self.pca.fingerprint()},
            "opencv_version": cv2.__version__,
        }

    def _detector(self):
        if self._sift is None:
            import cv2

            self._sift = cv2.SIFT_create(
                nfeatures=self.max_features,
                nOctaveLayers=self.n_octave_layers,
                contrastThreshold=self.contrast_threshold,
                edgeThreshold=self.edge_threshold,
                sigma=self.sigma,
            )
        return self._sift

    def _extract_full(self, image: np.ndarray) -> LocalFeatures:
        import cv2

        size = (int(image.shape[1]), int(image.shape[0]))
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        keypoints, descriptors = self._detector().detectAndCompute(gray, None)
        if not keypoints or descriptors is None:
            return LocalFeatures.empty(self.dim, size)
        table = np.array([(*kp.pt, kp.size, kp.response) for kp in keypoints], dtype=np.float64)
        order = np.argsort(-table[:, 3], kind="stable")[: self.max_features]
        table = table[order]
        desc = root_sift(descriptors[order])
        if self.pca is not None:
            desc = postprocess_descriptors(desc, self.pca, dim=self.pca_dim, whiten=self.whiten)
        return LocalFeatures(
            locations=table[:, :2].astype(np.float32),
            descriptors=desc,
            scales=(table[:, 2] / 2.0).astype(np.float32),
            scores=table[:, 3].astype(np.float32),
            image_size=size,
        )
