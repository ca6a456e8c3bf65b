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

Implementation notes (speed; the same integral image, scores within ~1e-15):

* the integral image: ``x^alpha`` by blocks of rows, then running sums over rows
  and over columns, the additions of ``cumsum(cumsum(x^alpha, axis=0), axis=1)``
  in the same order (bit for bit the same image).  Only the non-zeros are scaled
  and powered: a zero sends numpy's vectorized ``pow`` down a slow path, and ReLU
  maps are mostly zeros;
* window sums: ``np.take`` of whole channel rows of the flattened integral image,
  by blocks of windows that stay in cache, into reused per-thread buffers (the
  same operations in the same order);
* a window's norm and dot product with the query are row-wise ``einsum`` sums.
  This is the one change in arithmetic: the former matrix-vector product (BLAS)
  rounded a row differently depending on its position in a chunk of 2048 windows
  and on the number of BLAS threads; scores now differ from it by a few units in
  the last place and depend on neither;
* :meth:`IntegralMaxPool.best_windows` (AML's grid search) scores all windows in
  float32 first and scores again, exactly, only those within 1e-3 of the best:
  the float32 error is below 1e-4, so the exact argmax (the first of ties) is
  always among them.
"""

from __future__ import annotations

import threading

import numpy as np

from d2r.cnn.pooling import check_activations, check_regions
from d2r.io.feature_store import half_to_float32

__all__ = ["IntegralMaxPool"]

_BLOCK = 1 << 16  # elements per block of element-wise work (fits in L2)
_NOISE = 16 * np.finfo(np.float64).eps
_SCREEN_MIN = 256  # fewer windows than this are scored exactly at once
_SCREEN_MARGIN = 1e-3  # float32 screening keeps windows this (+ 4 C 2^-24) close to its best
_SCREEN_TINY_NORM = 1e-15  # float32 norms below this are not trusted (scored exactly)

_local = threading.local()


def _buffer(name: str, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """A reusable per-thread scratch array of ``shape`` (contents undefined)."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    size = int(np.prod(shape))
    key = (name, np.dtype(dtype).str)
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(max(size, 1), dtype)
    return buf[:size].reshape(shape)


def as_float32_map(activations, name: str = "activations") -> np.ndarray:
    """:func:`~d2r.cnn.pooling.check_activations`, with a fast float16 path."""
    arr = np.asarray(activations)
    if arr.dtype == np.float16 and arr.ndim == 3 and min(arr.shape) > 0:
        arr = half_to_float32(arr)
    return check_activations(arr, name)


def _power_of_nonzeros(block: np.ndarray, exponent: float, zero: np.ndarray) -> None:
    """``block **= exponent`` in place, where ``block`` is 0 at the True entries of ``zero``
    (they stay 0): the power sees 1 there instead, which keeps it off its slow path."""
    np.add(block, zero, out=block)
    np.power(block, exponent, out=block)
    np.subtract(block, zero, out=block)


class IntegralMaxPool:
    """Integral image of ``x^alpha`` for one (H, W, C) activation map.

    Args:
        activations: (H, W, C) non-negative map.
        alpha: the generalized-mean exponent (10 in the paper).
        levels: quantize to this many levels and take powers from a lookup table
            (None: exact powers).
        name: what error messages call ``activations``.

    Attributes:
        activations: the (H, W, C) float32 map (the input itself when it is float32).
        integral: (H + 1, W + 1, C) float64 integral image of the scaled ``x^alpha``.
    """

    def __init__(self, activations, *, alpha: float = 10.0, levels: int | None = None,
                 name: str = "activations") -> None:
        x = np.ascontiguousarray(as_float32_map(activations, name))
        if x.min() < 0:
            raise ValueError("integral max-pooling needs non-negative (ReLU'd) activations")
        if not np.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
        if levels is not None and (isinstance(levels, bool) or int(levels) != levels or levels < 2):
            raise ValueError(f"levels must be an integer >= 2 or None, got {levels!r}")
        self.activations = x
        self.alpha = float(alpha)
        self.levels = None if levels is None else int(levels)
        self.height, self.width, self.channels = h, w, c = x.shape
        peak = x.max(axis=(0, 1)).astype(np.float64)
        self.scale = np.where(peak > 0, peak, 1.0)
        table = None
        if self.levels is not None:
            table = (np.arange(self.levels, dtype=np.float64) / (self.levels - 1)) ** self.alpha
        ii = self.integral = np.empty((h + 1, w + 1, c), np.float64)
        ii[0] = 0.0
        ii[1:, 0] = 0.0
        # x^alpha by blocks of rows, their running sum over rows (cumsum axis 0), then over
        # columns (cumsum axis 1): the additions of cumsum(cumsum(x^alpha, 0), 1) in order
        rows = max(1, _BLOCK // (w * c))
        scratch = _buffer("build", (min(rows, h), w, c))
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            block = scratch[: y1 - y0]
            self._powers(x[y0:y1], block, table)
            for y in range(y0, y1):
                np.add(ii[y, 1:], block[y - y0], out=ii[y + 1, 1:])
        for col in range(1, w):
            np.add(ii[1:, col], ii[1:, col + 1], out=ii[1:, col + 1])
        self._flat = ii.reshape(-1, c)
        # Window sums below the rounding error of the four look-ups are indistinguishable
        # from zero; the 1/alpha root would otherwise blow that error up.
        self._noise = _NOISE * self.integral[-1, -1]
        self._noise_max = float(self._noise.max())

    # ------------------------------------------------------------------ internals

    def _powers(self, x: np.ndarray, out: np.ndarray, table: np.ndarray | None) -> None:
        """``(x / scale)^alpha`` (or its quantized table value) of float32 rows ``x`` into ``out``."""
        if table is not None:
            np.copyto(out, x)
            np.divide(out, self.scale, out=out)
            np.multiply(out, self.levels - 1, out=out)
            np.rint(out, out=out)
            np.take(table, out.astype(np.int64), out=out)
            return
        flat = x.reshape(-1)
        nonzero = flat != 0
        count = np.count_nonzero(nonzero)
        if 2 * count < flat.size:  # sparse: scale and power the non-zeros only
            nz = np.flatnonzero(nonzero)
            vals = flat[nz].astype(np.float64)
            c = self.channels
            chan = nz & (c - 1) if c & (c - 1) == 0 else nz % c
            np.divide(vals, np.take(self.scale, chan), out=vals)
            np.power(vals, self.alpha, out=vals)
            dst = out.reshape(-1)
            dst[:] = 0.0
            dst[nz] = vals
        else:
            np.copyto(out, x)
            np.divide(out, self.scale, out=out)
            if count < flat.size:
                _power_of_nonzeros(out, self.alpha, x == 0)
            else:
                np.power(out, self.alpha, out=out)

    def _sums(self, part: np.ndarray, rows: np.ndarray, tmp: np.ndarray, keep: np.ndarray):
        """Window sums of ``x^alpha`` of the valid int64 boxes ``part`` (k, 4) into ``rows`` (k, C),
        0 where within rounding noise of 0.  Returns None, or a bool mask of those zeros
        (``keep``'s buffer) when there are any."""
        flat, stride = self._flat, self.width + 1
        top, bottom = part[:, 1] * stride, part[:, 3] * stride
        # ii[y2, x2] - ii[y1, x2] - ii[y2, x1] + ii[y1, x1], in this order
        np.take(flat, bottom + part[:, 2], axis=0, out=rows, mode="clip")
        np.take(flat, top + part[:, 2], axis=0, out=tmp, mode="clip")
        np.subtract(rows, tmp, out=rows)
        np.take(flat, bottom + part[:, 0], axis=0, out=tmp, mode="clip")
        np.subtract(rows, tmp, out=rows)
        np.take(flat, top + part[:, 0], axis=0, out=tmp, mode="clip")
        np.add(rows, tmp, out=rows)
        if rows.min() > self._noise_max:
            return None
        np.greater(rows, self._noise, out=keep)
        if keep.all():
            return None
        np.multiply(rows, keep, out=rows)
        return np.logical_not(keep, out=keep)

    def _blocks(self, boxes: np.ndarray):
        """Yield ``(start, stop, rows)``: the approximate MACs of the valid int64
        ``boxes[start:stop]`` as ``rows`` (n, C) float64 (a reused buffer), in blocks
        that stay in cache."""
        c = self.channels
        step = max(1, _BLOCK // c)
        n = max(1, min(step, boxes.shape[0]))
        rows_all, tmp_all = _buffer("rows", (n, c)), _buffer("tmp", (n, c))
        keep_all = _buffer("keep", (n, c), np.bool_)
        inv = 1.0 / self.alpha
        for start in range(0, boxes.shape[0], step):
            part = boxes[start : start + step]
            k = part.shape[0]
            rows = rows_all[:k]
            zero = self._sums(part, rows, tmp_all[:k], keep_all[:k])
            if zero is None:
                np.power(rows, inv, out=rows)
            else:
                _power_of_nonzeros(rows, inv, zero)
            np.multiply(rows, self.scale, out=rows)
            yield start, start + k, rows

    def unit_query(self, query) -> np.ndarray:
        """``query`` (C,) as float64 divided by its norm (as :meth:`cosine` uses it)."""
        q = np.asarray(query, dtype=np.float64).reshape(-1)
        if q.shape[0] != self.channels:
            raise ValueError(f"query has {q.shape[0]} dimensions, the map has {self.channels} channels")
        return q / max(float(np.linalg.norm(q)), 1e-12)

    def cosines(self, boxes: np.ndarray, unit_queries) -> np.ndarray:
        """Scores of valid int64 ``boxes`` (M, 4) for each of :meth:`unit_query` (K of them): (K, M).

        The windows' approximate MACs are computed once for all queries.  Each score
        is computed from its window and query alone (``einsum`` row sums, no BLAS),
        so it does not depend on the other windows or queries of the call.
        """
        qs = list(unit_queries)
        out = np.empty((len(qs), boxes.shape[0]), np.float64)
        for start, stop, rows in self._blocks(boxes):
            norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", rows, rows)), 1e-12)
            for k, q in enumerate(qs):
                np.divide(np.einsum("ij,j->i", rows, q), norms, out=out[k, start:stop])
        return out

    def best_windows(self, boxes: np.ndarray, unit_queries) -> list[tuple[int, float]]:
        """For each of ``unit_queries``: ``(i, score)``, ``i = argmax(cosines(boxes, [q])[0])``
        (the first of equal scores) and that score, exactly.

        A float32 pass scores all windows; only those within ``margin = 1e-3 + 4 C 2^-24``
        of its best score are scored exactly.  The float32 error is below half the margin
        (see :meth:`_approx_cosines`), so every window that can have the highest exact
        score is among them, and the answer is that of :meth:`cosines`.
        """
        qs = list(unit_queries)
        m = boxes.shape[0]
        if m <= _SCREEN_MIN:
            exact = self.cosines(boxes, qs)
            return [(int(i), float(row[i])) for row, i in zip(exact, np.argmax(exact, axis=1))]
        approx, unsure = self._approx_cosines(boxes, [q.astype(np.float32) for q in qs])
        margin = _SCREEN_MARGIN + 4 * self.channels * 2.0**-24
        out = []
        for q, row in zip(qs, approx):
            # the NaN-safe "row >= max - margin": with a NaN anywhere, everything is kept
            cand = np.flatnonzero(~(row < row.max() - margin) | unsure)
            exact = self.cosines(boxes[cand], [q])[0]
            i = int(np.argmax(exact))
            out.append((int(cand[i]), float(exact[i])))
        return out

    def _approx_cosines(self, boxes: np.ndarray, unit_queries32: list) -> tuple[np.ndarray, np.ndarray]:
        """float32 estimate of :meth:`cosines`, (K, M), and an (M,) bool mask of the windows
        where it is not reliable (norm under :data:`_SCREEN_TINY_NORM`, estimate 0).

        Error bound elsewhere: each element of the approximate MAC ``v`` is within a few
        float32 ulps (< 1e-6 relative) of its float64 value (rounding of the sum, float32
        power, product with the scale); the float32 sums of ``v . q`` and ``v . v`` add at
        most ``C 2^-24 |v|`` and ``C 2^-24 |v|^2`` (worst case); so the cosine is off by
        less than ``2 C 2^-24 + 2e-6`` (6e-5 for C = 512; ~5e-7 measured)."""
        c = self.channels
        step = max(1, _BLOCK // c)
        n = max(1, min(step, boxes.shape[0]))
        rows_all, tmp_all = _buffer("rows", (n, c)), _buffer("tmp", (n, c))
        keep_all = _buffer("keep", (n, c), np.bool_)
        low_all = _buffer("low", (n, c), np.float32)
        # cosines do not change when v is scaled: scale by scale / max(scale) <= 1
        scale = (self.scale / self.scale.max()).astype(np.float32)
        inv = np.float32(1.0 / self.alpha)
        out = np.empty((len(unit_queries32), boxes.shape[0]), np.float32)
        unsure = np.zeros(boxes.shape[0], np.bool_)
        for start in range(0, boxes.shape[0], step):
            part = boxes[start : start + step]
            k = part.shape[0]
            zero = self._sums(part, rows_all[:k], tmp_all[:k], keep_all[:k])
            low = low_all[:k]
            np.copyto(low, rows_all[:k], casting="same_kind")
            if zero is None:
                np.power(low, inv, out=low)
            else:
                _power_of_nonzeros(low, inv, zero)
            np.multiply(low, scale, out=low)
            norms = np.sqrt(np.einsum("ij,ij->i", low, low))
            tiny = norms < _SCREEN_TINY_NORM
            if tiny.any():
                unsure[start : start + k] = tiny
                norms[tiny] = 1.0
            for j, q in enumerate(unit_queries32):
                np.divide(np.einsum("ij,j->i", low, q), norms, out=out[j, start : start + k])
        return out, unsure

    def cosines_few(self, windows: list, unit_query: np.ndarray) -> np.ndarray:
        """:meth:`cosines` of a few valid windows given as ``[x1, y1, x2, y2]`` lists, for one
        query, with less overhead (for refinement): (n,) float64, the same values."""
        n, stride = len(windows), self.width + 1
        idx = [y2 * stride + x2 for x1, y1, x2, y2 in windows]
        idx += [y1 * stride + x2 for x1, y1, x2, y2 in windows]
        idx += [y2 * stride + x1 for x1, y1, x2, y2 in windows]
        idx += [y1 * stride + x1 for x1, y1, x2, y2 in windows]
        g = np.take(self._flat, idx, axis=0)
        rows = g[:n]
        np.subtract(rows, g[n : 2 * n], out=rows)
        np.subtract(rows, g[2 * n : 3 * n], out=rows)
        np.add(rows, g[3 * n :], out=rows)
        if rows.min() > self._noise_max or (keep := rows > self._noise).all():
            np.power(rows, 1.0 / self.alpha, out=rows)
        else:
            np.multiply(rows, keep, out=rows)
            _power_of_nonzeros(rows, 1.0 / self.alpha, np.logical_not(keep, out=keep))
        np.multiply(rows, self.scale, out=rows)
        norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", rows, rows)), 1e-12)
        return np.einsum("ij,j->i", rows, unit_query) / norms

    # ------------------------------------------------------------------ public

    def pool(self, windows) -> np.ndarray:
        """Approximate MAC of each window: (M, 4) -> (M, C) float32 (not normalized)."""
        boxes = check_regions(windows, self.height, self.width, "windows")
        out = np.empty((boxes.shape[0], self.channels), np.float32)
        for start, stop, rows in self._blocks(boxes):
            out[start:stop] = rows
        return out

    def cosine(self, windows, query) -> np.ndarray:
        """Cosine similarity of each window's approximate MAC with ``query`` (C,): (M,) float64."""
        q = self.unit_query(query)
        boxes = check_regions(windows, self.height, self.width, "windows")
        return self.cosines(boxes, [q])[0]
