"""Approximate (HNSW) vs exact (flat L2) visual-word quantization on real descriptors.

Reads the local descriptors of an index's feature store (e.g. RootSIFT of the
synthetic benchmark's photos: ``d2r build-index --dataset-dir DATA --out IDX
--config rootsift-asmk-star``), trains a codebook of each ``--words`` size with
faiss k-means on the descriptors of the first images (cached in ``--cache``),
and quantizes the descriptors of held-out images (``--test-images``, never
trained on) with ``d2r.encoding.codebook.quantize`` exactly and with the HNSW graph at
each ``--ef-search``.  It prints the agreement of the first word with exact
search, the recall of the k assignments (|approximate top-k ∩ exact top-k| / k),
the graph's build time, and wall and CPU time with the speed-up over exact search
measured in the same run (medians of ``--repeat`` runs).  Usage::

    python benchmarks/quantize_agreement.py --features IDX/features --cache /tmp/qa \
        --words 16384 65536 [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from d2r.encoding.codebook import load_codebook, quantize, save_codebook, train_codebook
from d2r.io.feature_store import FeatureStore


def read_descriptors(path: Path, test_images: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(train (N, D), test (M, D)) float32 descriptors and the number of images read."""
    with FeatureStore.open(path) as store:
        names = sorted(store.names())
        if len(names) <= test_images:
            raise SystemExit(f"{path} holds {len(names)} images; need more than --test-images "
                             f"{test_images}")
        features = store.get_many(names)
    stack = [np.asarray(f.descriptors, np.float32) for f in features]
    return np.concatenate(stack[:-test_images]), np.concatenate(stack[-test_images:]), len(names)


def codebook_for(train: np.ndarray, words: int, *, cache: Path, points_per_word: int, niter: int,
                 seed: int):
    """A ``words``-word k-means codebook of ``train``, trained once and kept in ``cache``."""
    folder = cache / f"codebook-{words}-{points_per_word}-{niter}-{seed}"
    if (folder / "codebook.json").exists():
        return load_codebook(folder), None
    t0 = time.perf_counter()
    book = train_codebook(train, words, seed=seed, max_points_per_word=points_per_word,
                          niter=niter, show_progress=False)
    seconds = time.perf_counter() - t0
    save_codebook(book, folder)
    return book, seconds


def timed(fn, repeat: int):
    """(median wall s, median CPU s, last result) of ``repeat`` calls."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return float(np.median(walls)), float(np.median(cpus)), out


def measure(book, test: np.ndarray, args: argparse.Namespace) -> dict:
    """Exact vs HNSW rows for one codebook."""
    k = args.num_assignments
    exact_wall, exact_cpu, (exact, _) = timed(
        lambda: quantize(test, book, num_assignments=k, mode="exact"), args.repeat)
    t0 = time.perf_counter()
    quantize(test[:1], book, mode="approximate", hnsw_m=args.hnsw_m,
             ef_construction=args.ef_construction)
    graph_s = time.perf_counter() - t0
    rows = []
    for ef in args.ef_search:
        wall, cpu, (approx, _) = timed(lambda: quantize(
            test, book, num_assignments=k, mode="approximate", ef_search=ef,
            hnsw_m=args.hnsw_m, ef_construction=args.ef_construction), args.repeat)
        rows.append({
            "ef_search": ef,
            "first_word": float(np.mean(approx[:, 0] == exact[:, 0])),
            "recall": float(np.mean((approx[:, :, None] == exact[:, None, :]).any(axis=2))),
            "wall_s": wall, "cpu_s": cpu,
            "wall_speedup": exact_wall / wall, "cpu_speedup": exact_cpu / cpu,
        })
    return {"words": book.num_words, "exact_wall_s": exact_wall, "exact_cpu_s": exact_cpu,
            "graph_build_s": graph_s, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, type=Path, help="a d2r feature store")
    parser.add_argument("--cache", required=True, type=Path, help="trained codebooks are kept here")
    parser.add_argument("--words", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--test-images", type=int, default=50)
    parser.add_argument("--points-per-word", type=int, default=8,
                        help="k-means trains on at most words x this many descriptors")
    parser.add_argument("--niter", type=int, default=10)
    parser.add_argument("--num-assignments", type=int, default=1)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="faiss threads (0: faiss default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads > 0:
        faiss.omp_set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)

    train, test, num_images = read_descriptors(args.features, args.test_images)
    print(f"{args.features}: {num_images} images; codebooks trained on {len(train)} descriptors "
          f"of {num_images - args.test_images} images, quantizing {len(test)} descriptors of "
          f"{args.test_images} held-out images; k={args.num_assignments}, faiss "
          f"{faiss.__version__} on {faiss.omp_get_max_threads()} threads, HNSW M={args.hnsw_m}, "
          f"efConstruction={args.ef_construction}, medians of {args.repeat}")
    results = []
    for words in args.words:
        book, trained_s = codebook_for(train, words, cache=args.cache,
                                       points_per_word=args.points_per_word, niter=args.niter,
                                       seed=args.seed)
        result = measure(book, test, args)
        result["codebook_training_s"] = trained_s
        results.append(result)
        print(f"\n{words} words: exact {result['exact_wall_s']:.2f} s wall / "
              f"{result['exact_cpu_s']:.2f} s CPU; HNSW graph built in "
              f"{result['graph_build_s']:.1f} s")
        print(f"{'efSearch':>8} {'first word':>10} {'recall@k':>9} {'wall s':>8} {'cpu s':>8} "
              f"{'wall speed-up':>13} {'cpu speed-up':>12}")
        for r in result["rows"]:
            print(f"{r['ef_search']:>8} {r['first_word']:>10.4f} {r['recall']:>9.4f} "
                  f"{r['wall_s']:>8.3f} {r['cpu_s']:>8.3f} {r['wall_speedup']:>12.1f}x "
                  f"{r['cpu_speedup']:>11.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"config": {k: str(v) if isinstance(v, Path) else v
                                                    for k, v in vars(args).items()},
                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
