"""Approximate integral max-pooling (Tolias et al., ICLR 2016, Sec. 4) (pure numpy).

The max over a rectangle R is approximated by the generalized mean
``f~_R = (sum_{p in R} x(p)^alpha)^(1/alpha)``, whose inner sum is read from an
integral image of ``x^alpha`` in four look-ups per channel, for any rectangle.
Each channel is divided by its maximum before the power (and multiplied back after
the root), which leaves the result unchanged and keeps ``alpha = 10`` from
overflowing.  Window sums below the float64 rounding error of the look-ups are
read as zero.  With ``levels`` the scaled activations are quantized to that many
uniform levels in [0, 1] and ``x^alpha`` is read from a lookup table, the paper's
trick for avoiding the power on every activation.

Windows are (M, 4) int boxes ``x1, y1, x2, y2`` in map cells, end-exclusive.
"""

from __future__ import annotations

import numpy as np

from d2r.global_.pooling import check_activations, check_regions

__all__ = ["IntegralMaxPool"]

_CHUNK = 2048


class IntegralMaxPool:
    """Integral image of ``x^alpha`` for one (H, W, C) activation map.

    Args:
        activations: (H, W, C) non-negative map.
        alpha: the generalized-mean exponent (10 in the paper).
        levels: quantize to this many levels and take powers from a lookup table
            (None: exact powers).
    """

    def __init__(self, activations, *, alpha: float = 10.0, levels: int | None = None) -> None:
        x = check_activations(activations).astype(np.float64)
        if np.any(x < 0):
            raise ValueError("integral max-pooling needs non-negative (ReLU'd) activations")
        if not np.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
        if levels is not None and (isinstance(levels, bool) or int(levels) != levels or levels < 2):
            raise ValueError(f"levels must be an integer >= 2 or None, got {levels!r}")
        self.alpha = float(alpha)
        self.levels = None if levels is None else int(levels)
        self.height, self.width, self.channels = x.shape
        peak = x.max(axis=(0, 1))
        self.scale = np.where(peak > 0, peak, 1.0)
        unit = x / self.scale
        if self.levels is None:
            powered = unit**self.alpha
        else:
            table = (np.arange(self.levels, dtype=np.float64) / (self.levels - 1)) ** self.alpha
            powered = table[np.rint(unit * (self.levels - 1)).astype(np.int64)]
        self.integral = np.zeros((self.height + 1, self.width + 1, self.channels), np.float64)
        np.cumsum(np.cumsum(powered, axis=0), axis=1, out=self.integral[1:, 1:])
        # Window sums below the rounding error of the four look-ups are indistinguishable
        # from zero; the 1/alpha root would otherwise blow that error up.
        self._noise = 16 * np.finfo(np.float64).eps * self.integral[-1, -1]

    def _sums(self, boxes: np.ndarray) -> np.ndarray:
        ii = self.integral
        x1, y1, x2, y2 = boxes.T
        total = ii[y2, x2] - ii[y1, x2] - ii[y2, x1] + ii[y1, x1]
        return np.where(total > self._noise, total, 0.0)

    def pool(self, windows) -> np.ndarray:
        """Approximate MAC of each window: (M, 4) -> (M, C) float32 (not normalized)."""
        boxes = check_regions(windows, self.height, self.width, "windows")
        out = np.empty((boxes.shape[0], self.channels), np.float32)
        for start in range(0, boxes.shape[0], _CHUNK):
            part = boxes[start : start + _CHUNK]
            out[start : start + _CHUNK] = self._sums(part) ** (1.0 / self.alpha) * self.scale
        return out

    def cosine(self, windows, query) -> np.ndarray:
        """Cosine similarity of each window's approximate MAC with ``query`` (C,): (M,) float64."""
        q = np.asarray(query, dtype=np.float64).reshape(-1)
        if q.shape[0] != self.channels:
            raise ValueError(f"query has {q.shape[0]} dimensions, the map has {self.channels} channels")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        boxes = check_regions(windows, self.height, self.width, "windows")
        out = np.empty(boxes.shape[0], np.float64)
        for start in range(0, boxes.shape[0], _CHUNK):
            v = self._sums(boxes[start : start + _CHUNK]) ** (1.0 / self.alpha) * self.scale
            norms = np.maximum(np.linalg.norm(v, axis=1), 1e-12)
            out[start : start + _CHUNK] = (v @ q) / norms
        return out
