"""Build and query an R1M-shaped synthetic ASMK* inverted file on disk.

Each synthetic image has about ``--words-per-image`` distinct visual words (uniform over a
``--words`` codebook) with random ``--dim``-bit packed codes, like R-ASMK* over DELF
features on Revisited Oxford/Paris + 1M distractors (~600 words/image at 65k words).  The
index is built with :class:`d2r.index.inverted.InvertedIndexWriter` in batches (every batch
sorted by word and spilled to disk, then merged word block by word block into the output
files), opened with ``mmap=True`` and queried with synthetic queries of the same shape.

Reported: generation and build time (spill, merge, hashing and atomic commit), peak and
current resident memory (RSS; ``RssAnon`` is the private part, file-backed index pages of
the page cache are the rest), index bytes on disk and per posting, and p50/p95 query latency
(top-``k``, after ``--warmup`` queries; the index files are usually in the page cache right
after the build, so these are warm-cache figures).

Usage::

    python benchmarks/index_scale.py --images 100000 --out /tmp/d2r_scale
    python benchmarks/index_scale.py --images 1000000 --out /tmp/d2r_scale_1m   # ~12 GB
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from d2r.index import compiled
from d2r.index.inverted import InvertedIndex, InvertedIndexWriter
from d2r.types import AggregatedImage


def memory_mb() -> dict[str, float]:
    """Current RSS and its anonymous part, and peak RSS of this process, in MB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if ":" in line)
    kb = {key: float(status[key].split()[0]) for key in ("VmRSS", "RssAnon") if key in status}
    return {"rss": kb.get("VmRSS", float("nan")) / 1024, "rss_anon": kb.get("RssAnon", float("nan")) / 1024,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def synthetic_batch(rng: np.random.Generator, n: int, *, num_words: int, words_per_image: int,
                    dim: int) -> list[AggregatedImage]:
    """``n`` binary aggregated images with about ``words_per_image`` distinct uniform words each."""
    if n == 0:
        return []
    draws = np.sort(rng.integers(0, num_words, (n, words_per_image), dtype=np.int32), axis=1)
    keep = np.ones(draws.shape, bool)
    keep[:, 1:] = draws[:, 1:] != draws[:, :-1]
    lengths = keep.sum(axis=1)
    words = draws[keep]
    width = (dim + 7) // 8
    codes = np.frombuffer(rng.bytes(words.size * width), np.uint8).reshape(words.size, width)
    cuts = np.cumsum(lengths)[:-1]
    return [AggregatedImage(w, c, dim, True)
            for w, c in zip(np.split(words, cuts), np.split(codes, cuts))]


def read_bandwidth(size: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes/s of one thread summing a ``size``-byte array (best of ``repeats``)."""
    data = np.ones(size // 8, np.uint64)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - t0)
    return size / best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--words", type=int, default=65_536, help="codebook size K")
    parser.add_argument("--words-per-image", type=int, default=600)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=20_000, help="images per add() batch")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/d2r_index_scale", help="index directory (replaced)")
    parser.add_argument("--keep", action="store_true", help="keep the index directory afterwards")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    generate_s = add_s = 0.0
    t_build = time.perf_counter()
    with InvertedIndexWriter(out, num_words=args.words, dim=args.dim, binary=True) as writer:
        for lo in range(0, args.images, args.batch):
            n = min(args.batch, args.images - lo)
            t0 = time.perf_counter()
            batch = synthetic_batch(rng, n, num_words=args.words, words_per_image=args.words_per_image,
                                    dim=args.dim)
            generate_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            writer.add(batch, names=[f"img{i:07d}" for i in range(lo, lo + n)])
            add_s += time.perf_counter() - t0
            print(f"  added {lo + n}/{args.images} images, {writer.num_postings} postings, "
                  f"{time.perf_counter() - t_build:.0f} s", flush=True)
        t0 = time.perf_counter()
        writer.close(config={"benchmark": "index_scale", **vars(args)})
        close_s = time.perf_counter() - t0
    build_s = time.perf_counter() - t_build - generate_s
    build_mem = memory_mb()

    t0 = time.perf_counter()
    index = InvertedIndex.load(out, mmap=True)
    load_s = time.perf_counter() - t0
    index_bytes = sum(p.stat().st_size for p in out.iterdir())
    queries = synthetic_batch(rng, args.warmup + args.queries, num_words=args.words,
                              words_per_image=args.words_per_image, dim=args.dim)
    kernels = ["numpy"] + (["compiled"] if compiled.AVAILABLE else [])
    latency_ms, answers = {}, {}
    for kernel in kernels:
        index.backend = kernel
        latencies, answers[kernel] = [], []
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            found = index.search([q], k=args.k)
            if i >= args.warmup:
                latencies.append(time.perf_counter() - t0)
            answers[kernel].append(found)
        latency_ms[kernel] = 1e3 * np.asarray(latencies)
    for kernel in kernels[1:]:  # the same top-k, the same scores, bit for bit
        for a, b in zip(answers[kernel], answers["numpy"]):
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)
    query_mem = memory_mb()
    lat = latency_ms[kernels[-1]]
    scanned = float(np.mean([index.posting_lengths()[q.words].sum()
                             for q in queries[args.warmup:]]))
    touched = scanned * (4 + (args.dim + 7) // 8)  # id + packed code per posting
    bandwidth = read_bandwidth()
    result = {
        "config": vars(args),
        "postings": index.num_postings,
        "words_per_image": index.num_postings / args.images,
        "generate_s": generate_s,
        "build_s": build_s,
        "build_add_s": add_s,
        "build_merge_commit_s": close_s,
        "load_s": load_s,
        "index_bytes": index_bytes,
        "bytes_per_posting": index_bytes / index.num_postings,
        "memory_after_build_mb": build_mem,
        "memory_after_queries_mb": query_mem,
        "query_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                     "mean": float(lat.mean()), "kernel": kernels[-1]},
        "query_ms_by_kernel": {k: {"p50": float(np.percentile(v, 50)),
                                   "p95": float(np.percentile(v, 95))}
                               for k, v in latency_ms.items()},
        "postings_scanned_per_query": scanned,
        "bytes_touched_per_query": touched,
        "read_bandwidth_gb_s": bandwidth / 1e9,
        "p50_over_bandwidth_limit": float(np.percentile(lat, 50)) / (1e3 * touched / bandwidth),
    }
    print(f"index_scale: {args.images} images, K={args.words}, D={args.dim} binary, "
          f"{result['postings']} postings ({result['words_per_image']:.1f} words/image)")
    print(f"  build {build_s:.1f} s (add/spill {add_s:.1f} s, merge+hash+commit {close_s:.1f} s; "
          f"synthetic data generation {generate_s:.1f} s excluded)")
    print(f"  index {index_bytes / 1e9:.2f} GB on disk, {result['bytes_per_posting']:.2f} B/posting; "
          f"load {load_s * 1e3:.1f} ms")
    print(f"  memory after build: RSS {build_mem['rss']:.0f} MB (anon {build_mem['rss_anon']:.0f} MB), "
          f"peak {build_mem['peak_rss']:.0f} MB")
    for kernel, ms in result["query_ms_by_kernel"].items():
        print(f"  query {kernel:8} (k={args.k}, {scanned:.0f} postings, {touched / 1e6:.1f} MB "
              f"scanned): p50 {ms['p50']:.2f} ms, p95 {ms['p95']:.2f} ms")
    if len(kernels) > 1:
        by = result["query_ms_by_kernel"]
        print(f"  compiled / numpy p50: x{by['numpy']['p50'] / by['compiled']['p50']:.1f} faster "
              f"(identical top-{args.k} and scores)")
    print(f"  read bandwidth (one thread, sequential) {bandwidth / 1e9:.1f} GB/s: the scan alone "
          f"takes {1e3 * touched / bandwidth:.2f} ms; p50 is x{result['p50_over_bandwidth_limit']:.1f} that")
    print(f"  memory after queries: RSS {query_mem['rss']:.0f} MB (anon {query_mem['rss_anon']:.0f} MB), "
          f"peak {query_mem['peak_rss']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(out)
    return result


if __name__ == "__main__":
    main()
