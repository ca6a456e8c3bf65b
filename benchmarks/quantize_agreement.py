"""Approximate (HNSW) vs exact (flat L2) visual-word quantization: agreement and time.

Measures, for ``d2r.codebook.quantize``, the fraction of descriptors whose
first (nearest) word agrees with exact search, the recall of the k
assignments (|approximate top-k ∩ exact top-k| / k), and wall and CPU time, against
exact search measured in the same run (CPU time is the fairer figure on a
shared machine; ``--threads 1`` avoids OpenMP spinning there).

The data are synthetic: L2-normalised descriptors drawn around random modes
(a stand-in for DELF's clustered descriptors); the codebook is a random
sample of that distribution (a k-means initialisation, not trained, to keep
the run short).  Usage::

    python benchmarks/quantize_agreement.py                 # 65536 words x 128-D, 100k descriptors
    python benchmarks/quantize_agreement.py --num-descriptors 20000 --ef-search 64 128
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from d2r.codebook import Codebook, quantize


def synthetic(n: int, dim: int, num_modes: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) float32 unit vectors scattered around ``num_modes`` random directions."""
    modes = rng.normal(size=(num_modes, dim)).astype(np.float32)
    modes /= np.linalg.norm(modes, axis=1, keepdims=True)
    x = modes[rng.integers(0, num_modes, size=n)]
    x += rng.normal(scale=spread / np.sqrt(dim), size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-words", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--num-descriptors", type=int, default=100_000)
    parser.add_argument("--num-assignments", type=int, default=5)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around the modes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="faiss threads (0: faiss default)")
    args = parser.parse_args()
    if args.threads > 0:
        faiss.omp_set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    num_modes = max(args.num_words // 16, 1)
    centroids = synthetic(args.num_words, args.dim, num_modes, args.spread, rng)
    book = Codebook(centroids, source="synthetic-sample")
    x = synthetic(args.num_descriptors, args.dim, num_modes, args.spread, rng)
    k = args.num_assignments
    print(
        f"codebook {args.num_words} x {args.dim}, {args.num_descriptors} descriptors "
        f"(spread {args.spread}), k={k}, "
        f"faiss {faiss.__version__} on {faiss.omp_get_max_threads()} threads"
    )

    wall, cpu = time.perf_counter(), time.process_time()
    exact, _ = quantize(x, book, num_assignments=k, mode="exact")
    wall_exact, cpu_exact = time.perf_counter() - wall, time.process_time() - cpu
    print(f"exact (IndexFlatL2): wall {wall_exact:.2f} s, cpu {cpu_exact:.2f} s")

    wall, cpu = time.perf_counter(), time.process_time()
    quantize(x[:1], book, mode="approximate", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    print(
        f"HNSW build (M={args.hnsw_m}, efConstruction={args.ef_construction}): "
        f"wall {time.perf_counter() - wall:.2f} s, cpu {time.process_time() - cpu:.2f} s"
    )

    print(f"{'efSearch':>8} {'first word':>10} {'recall@k':>9} {'wall s':>8} {'cpu s':>8} {'cpu speedup':>11}")
    for ef in args.ef_search:
        wall, cpu = time.perf_counter(), time.process_time()
        approx, _ = quantize(
            x, book, num_assignments=k, mode="approximate",
            ef_search=ef, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        first = float(np.mean(approx[:, 0] == exact[:, 0]))
        recall = float(np.mean((approx[:, :, None] == exact[:, None, :]).any(axis=2)))
        print(f"{ef:>8} {first:>10.4f} {recall:>9.4f} {wall:>8.2f} {cpu:>8.2f} {cpu_exact / cpu:>10.1f}x")


if __name__ == "__main__":
    main()
