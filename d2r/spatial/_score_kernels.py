"""numba kernels of :mod:`d2r.spatial.score` (imported only when first used).

Compiled on first call and cached on disk (``cache=True``).  Each does what its numpy
twin in :mod:`d2r.spatial.score` does, with the same comparisons, so the results are
the same (``tests/test_verification_decision.py``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["first_of_each", "grid_counts", "transform_check", "spread_of", "count_inliers"]


@njit(cache=True, nogil=True)
def _first_by_key(keep, key):
    """The positions of ``keep`` whose ``key`` value is seen for the first time (in
    ``keep``'s order): an open-addressing hash set of the values (linear probing)."""
    size = 1
    while size < 2 * keep.shape[0]:
        size *= 2
    table = np.empty(size, np.int64)
    used = np.zeros(size, np.bool_)
    out = np.empty(keep.shape[0], np.int64)
    count = 0
    for position in keep:
        value = key[position]
        slot = (np.uint64(value) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
        slot = np.int64(slot) & (size - 1)
        while used[slot] and table[slot] != value:
            slot = (slot + 1) & (size - 1)
        if not used[slot]:
            used[slot] = True
            table[slot] = value
            out[count] = position
            count += 1
    return out[:count]


@njit(cache=True, nogil=True)
def first_of_each(order, keys):
    """``order`` (M,) positions, each (4, P) key row in turn leaving only the first position
    of every key value (in ``order``'s order): ``np.unique(..., return_index=True)``
    applied four times, as :func:`d2r.spatial.score.one_to_one` does."""
    keep = order.copy()
    for row in range(keys.shape[0]):
        keep = _first_by_key(keep, keys[row])
    return keep


@njit(cache=True, nogil=True)
def grid_counts(starts, xs, ys, origin_x, origin_y, cell, columns, rows, points, radius):
    """(P,) int64: how many of the gridded points lie within ``radius`` (``<=``) of each of the
    (P, 2) ``points``.  The grid: cells of side ``cell`` (>= radius) from the origin,
    ``columns`` x ``rows`` of them, row by row; cell ``c = row * columns + column`` holds the
    points ``xs[starts[c]:starts[c + 1]]``, ``ys[...]`` (so the three cells of a row next to
    a point are one contiguous run)."""
    out = np.zeros(points.shape[0], np.int64)
    limit = radius * radius
    for i in range(points.shape[0]):
        px, py = points[i, 0], points[i, 1]
        cx = int(np.floor((px - origin_x) / cell))
        cy = int(np.floor((py - origin_y) / cell))
        first, last = max(cx - 1, 0), min(cx + 1, columns - 1)
        count = 0
        if first <= last:
            for gy in range(max(cy - 1, 0), min(cy + 2, rows)):
                for m in range(starts[gy * columns + first], starts[gy * columns + last + 1]):
                    dx = xs[m] - px
                    dy = ys[m] - py
                    count += dx * dx + dy * dy <= limit
        out[i] = count
    return out


@njit(cache=True, nogil=True)
def _pixel_keys(xy):
    keys = np.empty(xy.shape[0], np.int64)
    for i in range(xy.shape[0]):
        keys[i] = np.int64(np.rint(xy[i, 0])) * (1 << 31) + np.int64(np.rint(xy[i, 1]))
    return keys


@njit(cache=True, nogil=True)
def transform_check(transform, at):
    """``(behind, reflected, s1, s2)`` of ``transform``'s local linear part near database
    point ``at`` (as :func:`d2r.spatial.score.transform_problem` takes it): whether ``at``
    maps behind the camera (then the rest is 0), whether the part mirrors, and its singular
    values, largest first."""
    if transform.shape[0] == 2:
        a, b, c, d = transform[0, 0], transform[0, 1], transform[1, 0], transform[1, 1]
    else:
        w = transform[2, 0] * at[0] + transform[2, 1] * at[1] + transform[2, 2]
        if w <= 0:
            return True, False, 0.0, 0.0
        mx = (transform[0, 0] * at[0] + transform[0, 1] * at[1] + transform[0, 2]) / w
        my = (transform[1, 0] * at[0] + transform[1, 1] * at[1] + transform[1, 2]) / w
        a = (transform[0, 0] - mx * transform[2, 0]) / w
        b = (transform[0, 1] - mx * transform[2, 1]) / w
        c = (transform[1, 0] - my * transform[2, 0]) / w
        d = (transform[1, 1] - my * transform[2, 1]) / w
    rotation = np.hypot(a + d, c - b)
    shear = np.hypot(a - d, b + c)
    return False, a * d - b * c < 0, (rotation + shear) / 2, abs(rotation - shear) / 2


@njit(cache=True, nogil=True)
def spread_of(xy):
    """:func:`d2r.spatial.score.spread`: 1.4826 x the median absolute deviation of the (K, 2)
    points along their minor principal axis (0 for fewer than 3 points)."""
    if xy.shape[0] < 3:
        return 0.0
    cx, cy = np.median(xy[:, 0]), np.median(xy[:, 1])
    sxx = syy = sxy = 0.0
    for i in range(xy.shape[0]):
        dx, dy = xy[i, 0] - cx, xy[i, 1] - cy
        sxx += dx * dx
        syy += dy * dy
        sxy += dx * dy
    smallest = (sxx + syy) / 2 - np.sqrt(((sxx - syy) / 2) ** 2 + sxy * sxy)
    ux, uy = smallest - syy, sxy  # two forms of the minor eigenvector: take the longer
    vx, vy = sxy, smallest - sxx
    if ux * ux + uy * uy < vx * vx + vy * vy:
        ux, uy = vx, vy
    norm = np.hypot(ux, uy)
    if norm == 0:  # isotropic or a single point: any axis
        ux, uy, norm = 0.0, 1.0, 1.0
    minor = ((xy[:, 0] - cx) * ux + (xy[:, 1] - cy) * uy) / norm
    return 1.4826 * np.median(np.abs(minor - np.median(minor)))


@njit(cache=True, nogil=True)
def count_inliers(pairs, query_xy, db_xy, mapped, error, transform, tolerance, samples, starts,
                  xs, ys, origin_x, origin_y, cell, columns, rows):
    """The measuring half of :func:`d2r.spatial.score.decide`, in one call: ``(inside, n,
    near, used, behind, reflected, s1, s2, spread)`` = the one-to-one inliers (positions
    into ``pairs``, ascending), the one-to-one matches, the chance counts summed over
    ``used`` evenly spaced finite predictions (at most about ``samples``) within
    ``tolerance`` on the query's grid, and (with inliers) :func:`transform_check` at their
    database centre and :func:`spread_of` of their query locations."""
    keys = np.empty((4, pairs.shape[0]), np.int64)
    keys[0] = pairs[:, 0]
    keys[1] = pairs[:, 1]
    keys[2] = _pixel_keys(query_xy)
    keys[3] = _pixel_keys(db_xy)
    distinct = first_of_each(np.argsort(error, kind="mergesort"), keys)
    inside = np.sort(distinct[error[distinct] <= tolerance])
    finite = np.empty(distinct.shape[0], np.bool_)
    for i in range(distinct.shape[0]):
        finite[i] = np.isfinite(mapped[distinct[i], 0]) and np.isfinite(mapped[distinct[i], 1])
    usable = distinct[finite]
    usable = usable[::max(1, usable.shape[0] // samples)]
    near = 0
    if xs.shape[0] > 0 and usable.shape[0] > 0:
        near = grid_counts(starts, xs, ys, origin_x, origin_y, cell, columns, rows,
                           mapped[usable], tolerance).sum()
    behind, reflected, large, small, spread = False, False, 0.0, 0.0, 0.0
    if inside.shape[0] > 0:
        at = np.zeros(2)
        for i in inside:
            at[0] += db_xy[i, 0]
            at[1] += db_xy[i, 1]
        behind, reflected, large, small = transform_check(transform, at / inside.shape[0])
        spread = spread_of(query_xy[inside])
    return (inside, distinct.shape[0], near, usable.shape[0], behind, reflected, large, small,
            spread)
