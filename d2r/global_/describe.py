"""``describe(image) -> vector`` for the CNN global baselines.

A :class:`GlobalDescriber` ties a backbone (anything with ``activations(image,
max_side=...) -> {layer: (H, W, C) map}``, e.g. :class:`~d2r.global_.backbones.Backbone`)
to one pooling method:

* ``"mac"``: l2(MAC), optionally whitened;
* ``"rmac"``: R-MAC with ``levels`` scales and the learned whitening;
* ``"gem"``: generalized-mean pooling (exponent ``p``), l2;
* ``"multires"``: multi-resolution (``resolutions``, long side in pixels) early fusion
  of every requested layer, square-sum regional pooling, concatenation and optional
  PFA selection.

It does not import TensorFlow itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from d2r.global_.multires import multilayer_descriptor
from d2r.global_.pfa import PFA
from d2r.global_.pooling import gem, l2_normalize
from d2r.global_.rmac import mac_descriptor, rmac
from d2r.global_.whitening import Whitening

__all__ = ["GlobalDescriber", "METHODS"]

METHODS = ("mac", "rmac", "gem", "multires")


@dataclass
class GlobalDescriber:
    """One global-descriptor method on top of a backbone.

    Attributes:
        backbone: object with ``activations(image, max_side=None)`` returning a dict of maps.
        method: one of :data:`METHODS`.
        max_side: resize images to this longer side first (None: as given); not used by "multires".
        levels: R-MAC scales L.
        p: GeM exponent.
        whitening: for "mac" / "rmac" (region vectors).
        resolutions: "multires" input sizes (longer side, pixels).
        stride: "multires" region stride (fraction of the kernel).
        pfa: "multires" feature selection.
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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method == "multires" and not self.resolutions:
            raise ValueError("method 'multires' needs at least one resolution")

    def maps(self, image) -> dict[str, list[np.ndarray]]:
        """The backbone's maps of ``image``: {layer: [map per resolution]} (one resolution unless multires)."""
        sizes = self.resolutions if self.method == "multires" else (self.max_side,)
        out: dict[str, list[np.ndarray]] = {}
        for side in sizes:
            for name, amap in self.backbone.activations(image, max_side=side).items():
                out.setdefault(name, []).append(amap)
        return out

    def describe_maps(self, maps: dict[str, list[np.ndarray]]) -> np.ndarray:
        """Descriptor from :meth:`maps` output: (D,) float32, l2-normalized."""
        if self.method == "multires":
            return multilayer_descriptor(list(maps.values()), levels=self.levels, stride=self.stride, pfa=self.pfa)
        amap = next(iter(maps.values()))[0]
        if self.method == "mac":
            return mac_descriptor(amap, whitening=self.whitening)
        if self.method == "rmac":
            return rmac(amap, levels=self.levels, whitening=self.whitening)
        return l2_normalize(gem(amap, p=self.p))

    def describe(self, image) -> np.ndarray:
        """(H, W, 3) RGB image -> (D,) float32 descriptor."""
        return self.describe_maps(self.maps(image))
