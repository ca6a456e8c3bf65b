"""``describe(image) -> vector`` for the CNN global baselines.

A :class:`GlobalDescriber` ties a backbone (anything with ``activations(image,
max_side=...) -> {layer: (H, W, C) map}``, e.g. :class:`~d2r.cnn.backbones.Backbone`)
to one pooling method:

* ``"mac"``: l2(MAC), optionally whitened;
* ``"rmac"``: R-MAC with ``levels`` scales and the learned whitening;
* ``"gem"``: generalized-mean pooling (exponent ``p``), l2;
* ``"multires"``: multi-resolution (``resolutions``, long side in pixels) early fusion
  of every requested layer, square-sum regional pooling, concatenation and optional
  PFA selection; with a ``cam`` classifier a second, CAM-masked "local" descriptor;
* ``"regional"``: Jeong et al.'s candidate regions from clustered salient points,
  first- and/or second-order pooled, whitened: one vector per region.

:meth:`GlobalDescriber.describe_rows` gives what an index stores per image: one row
(the global descriptor), two (global, CAM-local) or one per region (whole image first).
It does not import TensorFlow itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from d2r.cnn.cam import cam_heatmap, cam_mask
from d2r.cnn.multires import multilayer_descriptor
from d2r.cnn.pfa import PFA
from d2r.cnn.pooling import gem, l2_normalize
from d2r.cnn.regional import region_vectors
from d2r.cnn.rmac import mac_descriptor, rmac
from d2r.cnn.salient_regions import detect_salient_points, salient_regions
from d2r.cnn.whitening import Whitening

__all__ = ["GlobalDescriber", "CamClassifier", "METHODS"]

METHODS = ("mac", "rmac", "gem", "multires", "regional")


@dataclass(frozen=True)
class CamClassifier:
    """The ImageNet classifier after global average pooling: (C, K) ``kernel``, (K,) ``bias``."""

    kernel: np.ndarray
    bias: np.ndarray
    threshold: float = 0.9


@dataclass
class GlobalDescriber:
    """One global-descriptor method on top of a backbone.

    Attributes:
        backbone: object with ``activations(image, max_side=None)`` returning a dict of maps.
        method: one of :data:`METHODS`.
        max_side: resize images to this longer side first (None: as given); not used by "multires".
        levels: R-MAC scales L.
        p: GeM exponent.
        whitening: for "mac" / "rmac" (region vectors) and "regional" (to its D).
        resolutions: "multires" input sizes (longer side, pixels).
        stride: "multires" region stride (fraction of the kernel).
        pfa: "multires" feature selection.
        cam: "multires": classifier whose class activation map masks a second descriptor.
        order, clusters, n_max, n_min, reduction: "regional" pooling order, salient-point
            clusters L, points kept (N_max, N_min) and the PCA of local features to K'.
    """

    backbone: Any
    method: Literal["mac", "rmac", "gem", "multires"] = "rmac"
    max_side: int | None = None
    levels: int = 3
    p: float = 3.0
    whitening: Whitening | None = None
    resolutions: tuple[int, ...] = (550, 800, 1050)
    stride: float = 0.4
    pfa: PFA | None = None
    cam: CamClassifier | None = None
    order: Literal["first", "second", "both"] = "both"
    clusters: int = 3
    n_max: int = 200
    n_min: int = 20
    reduction: Whitening | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method == "multires" and not self.resolutions:
            raise ValueError("method 'multires' needs at least one resolution")
        if self.cam is not None and self.method != "multires":
            raise ValueError(f"a CAM classifier masks method 'multires', not {self.method!r}")

    def maps(self, image) -> dict[str, list[np.ndarray]]:
        """The backbone's maps of ``image``: {layer: [map per resolution]} (one resolution unless multires)."""
        sizes = self.resolutions if self.method == "multires" else (self.max_side,)
        out: dict[str, list[np.ndarray]] = {}
        for side in sizes:
            for name, amap in self.backbone.activations(image, max_side=side).items():
                out.setdefault(name, []).append(amap)
        return out

    def describe_maps(self, maps: dict[str, list[np.ndarray]]) -> np.ndarray:
        """Global descriptor from :meth:`maps` output: (D,) float32, l2-normalized
        (not for "regional", whose regions need the image: see :meth:`describe_rows`)."""
        if self.method == "multires":
            return multilayer_descriptor(list(maps.values()), levels=self.levels, stride=self.stride, pfa=self.pfa)
        if self.method == "regional":
            raise ValueError("method 'regional' describes regions found in the image; use describe_rows")
        amap = next(iter(maps.values()))[0]
        if self.method == "mac":
            return mac_descriptor(amap, whitening=self.whitening)
        if self.method == "rmac":
            return rmac(amap, levels=self.levels, whitening=self.whitening)
        return l2_normalize(gem(amap, p=self.p))

    def rows_from_maps(self, image, maps: dict[str, list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray | None]:
        """What an index stores for ``image`` given its :meth:`maps`.

        Returns:
            ``(rows, masks)``: (R, D) float32 rows (R = 1, 2 with a CAM: global then
            local, or one per region with the whole image first) and, for "regional",
            the (R, H', W') bool region masks on the map (None otherwise).
        """
        if self.method == "regional":
            amap = next(iter(maps.values()))[0]
            img = np.asarray(image)
            points = detect_salient_points(img)[:, :2]
            masks, alpha = salient_regions(amap, points, (img.shape[1], img.shape[0]), n_max=self.n_max,
                                           n_min=self.n_min, num_clusters=self.clusters)
            rows = region_vectors(amap, masks, alpha, order=self.order, reduction=self.reduction,
                                  whitening=self.whitening)
            return np.asarray(rows, np.float32), masks
        rows = [self.describe_maps(maps)]
        if self.cam is not None:
            layers = list(maps.values())
            largest = max(layers[0], key=lambda m: m.shape[0] * m.shape[1])
            heat = cam_heatmap(largest, self.cam.kernel, self.cam.bias)
            mask = cam_mask(heat, threshold=self.cam.threshold)
            rows.append(multilayer_descriptor(layers, levels=self.levels, stride=self.stride, mask=mask,
                                              pfa=self.pfa))
        return np.stack(rows).astype(np.float32), None

    def describe_rows(self, image) -> np.ndarray:
        """(H, W, 3) RGB image -> (R, D) float32 rows (see :meth:`rows_from_maps`)."""
        return self.rows_from_maps(image, self.maps(image))[0]

    def describe(self, image) -> np.ndarray:
        """(H, W, 3) RGB image -> (D,) float32 descriptor (row 0 of :meth:`describe_rows`)."""
        return self.describe_rows(image)[0]
