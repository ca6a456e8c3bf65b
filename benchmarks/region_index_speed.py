"""Speed of the CNN-baseline search structures against their reference computations.

* :class:`d2r.index.global_index.GlobalIndex` (faiss exhaustive inner product on the
  (N, D) matrix) against numpy ``q @ X.T`` and a stable argsort, with the bytes it reads
  per query batch;
* :class:`d2r.index.region_vectors.RegionVectorIndex` (best region pair, chunked matrix
  products + ``np.maximum.reduceat``) against a naive per-image Python loop,
  ``max(q @ x.T)`` for every (query, image), then a stable argsort;
* :class:`d2r.index.global_local.GlobalLocalIndex` (faiss L1 top-k on each slot, exact
  re-scoring of the union) against :func:`d2r.cnn.cam.min_manhattan_distance` over
  the whole database, then a stable argsort.

The data are random: database vectors are unit Gaussian, and every query is a noisy
copy of a random database image (so each query has a clear best match and a long tail of
near-equal scores).  The script prints the timings, their ratios and whether both sides
return the same top-``k`` ids.

    python benchmarks/region_index_speed.py                        # 50k images x 8 regions, D 512
    python benchmarks/region_index_speed.py --images 5000 --queries 5   # quick run
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from d2r.cnn.cam import min_manhattan_distance
from d2r.index.global_index import GlobalIndex
from d2r.index.global_local import GlobalLocalIndex
from d2r.index.region_vectors import RegionVectorIndex


def unit_rows(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def timed(fn, repeat: int):
    """(best wall-clock seconds over ``repeat`` runs, last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def naive_regions(queries, images, k: int) -> np.ndarray:
    """Reference: per-image loop, (Q, k) ids by (score desc, id asc)."""
    ids = []
    for q in queries:
        sims = np.array([np.max(q @ x.T) for x in images], np.float32)
        ids.append(np.argsort(-sims, kind="stable")[:k])
    return np.stack(ids)


def brute_global_local(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """Reference: full (Q, N) min-of-L1 matrix, (Q, k) ids by (distance asc, id asc)."""
    dist = min_manhattan_distance(queries[:, 0], queries[:, 1], database[:, 0], database[:, 1])
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


def report(name: str, t_ref: float, t_index: float, same: bool, rows_differing: int) -> None:
    print(f"{name}: reference {t_ref:.3f} s, index {t_index:.3f} s, "
          f"speed-up x{t_ref / t_index:.1f}; identical top-k ids: {same}"
          + ("" if same else f" ({rows_differing} queries differ)"))


def bench_global(args: argparse.Namespace, rng: np.random.Generator, sources: np.ndarray) -> None:
    n, d = args.images, args.dim
    vectors = unit_rows(rng, (n, d))
    queries = vectors[sources] + rng.standard_normal((sources.size, d), dtype=np.float32) * (
        args.noise / np.sqrt(d))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = GlobalIndex(d)
    index.add(vectors)
    t_index, result = timed(lambda: index.search(queries, k=args.k), args.repeat)
    t_one, _ = timed(lambda: index.search(queries[:1], k=args.k), args.repeat)
    t_ref, ref_ids = timed(
        lambda: np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :args.k], 1)
    differ = int(np.sum(np.any(result.ids != ref_ids, axis=1)))
    print(f"GlobalIndex: {n} images, D {d} ({vectors.nbytes / 2**20:.0f} MiB), "
          f"{sources.size} queries, k {args.k}; one query {1e3 * t_one:.2f} ms "
          f"({vectors.nbytes / t_one / 1e9:.1f} GB/s of the matrix)")
    report("  inner product", t_ref, t_index, differ == 0, differ)


def bench_regions(args: argparse.Namespace, rng: np.random.Generator, sources: np.ndarray) -> None:
    n, r, d = args.images, args.regions, args.dim
    regions = unit_rows(rng, (n, r, d))
    index = RegionVectorIndex(d)
    t_add, _ = timed(lambda: index.add(regions), 1)
    noisy = regions[sources] + rng.standard_normal((sources.size, r, d), dtype=np.float32) * (
        args.noise / np.sqrt(d))
    queries = list(noisy / np.linalg.norm(noisy, axis=-1, keepdims=True))
    t_index, result = timed(lambda: index.search(queries, k=args.k), args.repeat)
    t_ref, ref_ids = timed(lambda: naive_regions(queries, list(regions), args.k), 1)
    differ = int(np.sum(np.any(result.ids != ref_ids, axis=1)))
    print(f"RegionVectorIndex: {n} images x {r} regions, D {d} ({index.nbytes / 2**20:.0f} MiB), "
          f"{sources.size} queries x {r} regions, k {args.k}; add {t_add:.2f} s; "
          f"top-1 = source image for {np.mean(result.ids[:, 0] == sources):.0%} of queries")
    report("  best region pair", t_ref, t_index, differ == 0, differ)


def bench_global_local(args: argparse.Namespace, rng: np.random.Generator, sources: np.ndarray) -> None:
    n, d = args.images, args.dim
    pairs = unit_rows(rng, (n, 2, d))
    queries = pairs[sources] + rng.standard_normal((sources.size, 2, d), dtype=np.float32) * (
        args.noise / np.sqrt(d))
    index = GlobalLocalIndex(d)
    index.add(pairs)
    t_index, result = timed(lambda: index.search(queries, k=args.k), args.repeat)
    t_ref, ref_ids = timed(lambda: brute_global_local(queries, pairs, args.k), 1)
    differ = int(np.sum(np.any(result.ids != ref_ids, axis=1)))
    print(f"GlobalLocalIndex: {n} images x (global, local), D {d} ({index.nbytes / 2**20:.0f} MiB), "
          f"{sources.size} queries, k {args.k}; "
          f"top-1 = source image for {np.mean(result.ids[:, 0] == sources):.0%} of queries")
    report("  min(global L1, local L1)", t_ref, t_index, differ == 0, differ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000, help="database images")
    parser.add_argument("--regions", type=int, default=8, help="region vectors per image")
    parser.add_argument("--dim", type=int, default=512, help="descriptor dimension D")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.5, help="query noise (norm relative to a unit vector)")
    parser.add_argument("--repeat", type=int, default=3, help="index runs (best kept); references run once")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    sources = rng.integers(0, args.images, args.queries)
    bench_global(args, rng, sources)
    bench_regions(args, rng, sources)
    bench_global_local(args, rng, sources)


if __name__ == "__main__":
    main()
