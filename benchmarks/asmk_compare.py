"""Compare d2r's inverted file with the reference ``asmk`` package (PyPI) on the same data.

Both systems get identical synthetic DELF-like descriptors (clustered, L2-normalised,
128-D) and the same faiss-trained codebook (ours, injected into ``asmk.codebook.Codebook``).
The script reports, as ratios asmk / d2r measured in the same run:

* build: quantize + aggregate + index the database; quantization is the same faiss
  ``IndexFlatL2`` search in both, so it is run once and its time added to both; the
  aggregation and indexing steps are also shown on their own; and d2r's build with its
  approximate quantizer (the HNSW graph of ``codebook.quantization: approximate``, graph
  construction included) against asmk's exact one, with the fraction of descriptors whose
  word agrees with exact quantization;
* query (median per query): aggregate + search, and search alone;
* bytes per posting entry (asmk: its numpy posting arrays incl. growth slack; d2r: the
  saved CSR arrays, offsets and item lengths);
* agreement of the top-100 rankings, each system on its own aggregation of the same
  quantized descriptors (identical lists; or identical up to the order of tied scores),
  and our scores against ``d2r.encoding.aggregation.similarity_matrix``.

Usage::

    python benchmarks/asmk_compare.py --images 2000 --queries 50 --words 4096
    python benchmarks/asmk_compare.py --words 65536 --niter 2   # an R1M-sized codebook

``asmk`` must be installed (``pip install asmk``).  faiss runs single-threaded unless
``--threads`` says otherwise (it only affects quantization).  d2r searches with the
compiled kernel (``--kernel compiled``, loaded before timing) when numba is installed.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import faiss
import numpy as np

from d2r.encoding.aggregation import aggregate, similarity_matrix
from d2r.encoding.codebook import quantize, train_codebook
from d2r.config import CodebookConfig
from d2r.index import compiled
from d2r.index.inverted import InvertedIndex
from d2r.index.quantizer import options


@dataclass
class Data:
    """Per-image (n, D) float32 descriptors of the database and the queries."""

    db: list[np.ndarray]
    queries: list[np.ndarray]


def synthetic_descriptors(rng: np.random.Generator, *, images: int, queries: int, per_image: int,
                          dim: int, objects: int, patterns: int, noise: float) -> Data:
    """Clustered unit descriptors: each image shows one object (its own pattern subset) in clutter."""
    centres = rng.standard_normal((patterns, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    object_patterns = [rng.choice(patterns, size=per_image, replace=False) for _ in range(objects)]

    def image(obj: int) -> np.ndarray:
        own = rng.random(per_image) < 0.5
        ids = np.where(own, rng.choice(object_patterns[obj], per_image), rng.integers(0, patterns, per_image))
        x = centres[ids] + noise * rng.standard_normal((per_image, dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return Data([image(int(rng.integers(objects))) for _ in range(images)],
                [image(int(rng.integers(objects))) for _ in range(queries)])


def posting_bytes_asmk(ivf) -> int:
    return sum(v.nbytes for v in ivf.ivf_vecs if v is not None) + \
        sum(v.nbytes for v in ivf.ivf_image_ids if v is not None)


def rankings_agree(ids_a, scores_a, ids_b, scores_b, tol=1e-6) -> tuple[int, int]:
    """(identical lists, identical up to permutations within tied scores)."""
    identical = tied = 0
    for ia, sa, ib, sb in zip(ids_a, scores_a, ids_b, scores_b):
        if np.array_equal(ia, ib):
            identical += 1
            tied += 1
            continue
        same_scores = np.allclose(sa, sb, atol=tol)
        groups = np.unique(np.round(np.asarray(sa, np.float64) / tol).astype(np.int64))
        last = np.round(sa[-1] / tol)
        ok = same_scores and all(
            set(ia[np.round(sa / tol) == g]) == set(ib[np.round(sb / tol) == g]) for g in groups if g != last)
        tied += int(ok)
    return identical, tied


def median_ms(fn, items) -> tuple[float, list]:
    """Median wall time of ``fn(item)`` over ``items`` in ms, and the results."""
    times, out = [], []
    for item in items:
        t0 = time.perf_counter()
        out.append(fn(item))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times)), out


def run(args: argparse.Namespace) -> dict:
    from asmk import codebook as asmk_codebook, index as asmk_index
    from asmk import inverted_file as asmk_ivf, kernel as asmk_kernel

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    data = synthetic_descriptors(rng, images=args.images, queries=args.queries,
                                 per_image=args.descriptors, dim=args.dim, objects=args.objects,
                                 patterns=args.patterns, noise=args.noise)
    db_vecs = np.concatenate(data.db)
    train = db_vecs[rng.choice(db_vecs.shape[0], size=min(db_vecs.shape[0], args.words * 40),
                               replace=False)]
    codebook = train_codebook(train, args.words, seed=args.seed, niter=args.niter)
    method = "asmk_star" if args.binary else "asmk"
    n = args.descriptors
    db_imids = np.repeat(np.arange(args.images), n)

    # Quantization is the same faiss IndexFlatL2 search in both systems: measured once, shared.
    t0 = time.perf_counter()
    db_words = quantize(db_vecs, codebook)[0]
    quantize_s = time.perf_counter() - t0
    q_words = [quantize(x, codebook)[0] for x in data.queries]

    # asmk, given our codebook: the steps of ASMKMethod.build_ivf / query_ivf after quantization.
    cdb = asmk_codebook.Codebook(asmk_index.initialize_index(None), size=args.words)
    cdb.index(np.ascontiguousarray(codebook.centroids))
    kern = asmk_kernel.ASMKKernel(cdb, binary=args.binary)
    ivf = asmk_ivf.IVF.initialize_empty(use_idf=False, codebook_size=args.words)
    t0 = time.perf_counter()
    a_vecs, a_words, a_imids = kern.aggregate(db_vecs, db_words, db_imids)
    asmk_aggregate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ivf.add(a_vecs, a_words, a_imids.copy())
    asmk_index_s = time.perf_counter() - t0

    def similarity_func(*x):
        return kern.similarity(*x, alpha=args.alpha, similarity_threshold=args.tau)

    asmk_q = [kern.aggregate_image(x, w) for x, w in zip(data.queries, q_words)]
    asmk_search_ms, asmk_out = median_ms(
        lambda q: ivf.search(*q, similarity_func=similarity_func, topk=args.k), asmk_q)
    asmk_query_ms, _ = median_ms(
        lambda i: ivf.search(*kern.aggregate_image(data.queries[i], q_words[i]),
                             similarity_func=similarity_func, topk=args.k), range(args.queries))

    # d2r
    t0 = time.perf_counter()
    db_items = [aggregate(db_vecs[i * n:(i + 1) * n], codebook, method,
                          assignments=db_words[i * n:(i + 1) * n]) for i in range(args.images)]
    d2r_aggregate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = InvertedIndex(num_words=args.words, dim=args.dim, binary=args.binary)
    index.add(db_items)
    index.finalize()
    d2r_index_s = time.perf_counter() - t0
    index.backend = args.kernel

    # d2r's approximate quantizer (graph construction included), then the same steps
    t0 = time.perf_counter()
    approx_words = quantize(db_vecs, codebook, **options(
        CodebookConfig(quantization="approximate"), args.words))[0]
    approx_items = [aggregate(db_vecs[i * n:(i + 1) * n], codebook, method,
                              assignments=approx_words[i * n:(i + 1) * n])
                    for i in range(args.images)]
    approx_index = InvertedIndex(num_words=args.words, dim=args.dim, binary=args.binary)
    approx_index.add(approx_items)
    approx_index.finalize()
    d2r_approx_build_s = time.perf_counter() - t0
    agreement = float(np.mean(approx_words[:, 0] == db_words[:, 0]))

    def d2r_search(q):
        return index.search([q], k=args.k, alpha=args.alpha, tau=args.tau)

    q_items = [aggregate(x, codebook, method, assignments=w) for x, w in zip(data.queries, q_words)]
    d2r_search(q_items[0])  # loads the compiled kernel before timing
    d2r_search_ms, d2r_out = median_ms(d2r_search, q_items)
    d2r_query_ms, _ = median_ms(
        lambda i: d2r_search(aggregate(data.queries[i], codebook, method, assignments=q_words[i])),
        range(args.queries))

    # Agreement: asmk's own aggregation and search vs ours (end to end after quantization).
    ids = np.concatenate([r.ids for r in d2r_out])
    scores = np.concatenate([r.scores for r in d2r_out])
    ref_ids = np.stack([r[0] for r in asmk_out])
    ref_scores = np.stack([r[1] for r in asmk_out])
    identical, tied = rankings_agree(ids, scores, ref_ids, ref_scores)
    brute = similarity_matrix(q_items, db_items, alpha=args.alpha, tau=args.tau)
    brute_err = float(np.max(np.abs(np.take_along_axis(brute, ids, 1) - scores)))

    return {
        "config": vars(args),
        "postings": int(index.num_postings),
        "words_per_image": index.num_postings / args.images,
        "quantize_s": quantize_s,
        "build_s": {"asmk": quantize_s + asmk_aggregate_s + asmk_index_s,
                    "d2r": quantize_s + d2r_aggregate_s + d2r_index_s},
        "build_approximate_s": {"asmk": quantize_s + asmk_aggregate_s + asmk_index_s,
                                "d2r": d2r_approx_build_s},
        "approximate_agreement": agreement,
        "aggregate_index_s": {"asmk": asmk_aggregate_s + asmk_index_s,
                              "d2r": d2r_aggregate_s + d2r_index_s},
        "aggregate_s": {"asmk": asmk_aggregate_s, "d2r": d2r_aggregate_s},
        "index_s": {"asmk": asmk_index_s, "d2r": d2r_index_s},
        "query_ms": {"asmk": asmk_query_ms, "d2r": d2r_query_ms},
        "search_ms": {"asmk": asmk_search_ms, "d2r": d2r_search_ms},
        "bytes_per_posting": {"asmk": posting_bytes_asmk(ivf) / a_words.size,
                              "d2r": index.bytes_per_posting},
        "topk_identical": identical,
        "topk_identical_up_to_ties": tied,
        "max_abs_error_vs_brute_force": brute_err,
    }


def print_table(r: dict) -> None:
    c = r["config"]
    print(f"asmk vs d2r: {c['images']} images x {c['descriptors']} descriptors, {c['queries']} queries, "
          f"K={c['words']}, D={c['dim']}, {'binary (ASMK*)' if c['binary'] else 'float (ASMK)'}, "
          f"k={c['k']}, faiss threads={c['threads']}, d2r kernel {c['kernel']}")
    print(f"postings: {r['postings']} ({r['words_per_image']:.1f} words/image); "
          f"shared faiss quantization of the database: {r['quantize_s']:.2f} s")
    print(f"{'measure':<34}{'asmk':>11}{'d2r':>11}{'asmk/d2r':>10}")
    for key, label in (("build_s", "build, quantize+aggregate+index (s)"),
                       ("build_approximate_s", "  d2r with approximate quantizer (s)"),
                       ("aggregate_index_s", "  aggregate+index (s)"),
                       ("aggregate_s", "  aggregate (s)"), ("index_s", "  index (s)"),
                       ("query_ms", "query, aggregate+search (ms)"), ("search_ms", "  search (ms)"),
                       ("bytes_per_posting", "bytes per posting entry")):
        a, b = r[key]["asmk"], r[key]["d2r"]
        print(f"{label:<34}{a:>11.3f}{b:>11.3f}{a / b:>9.1f}x")
    q = c["queries"]
    print(f"approximate quantizer: first word equal to exact for "
          f"{100 * r['approximate_agreement']:.2f}% of the database descriptors")
    print(f"top-{c['k']} lists identical: {r['topk_identical']}/{q}; identical up to the order "
          f"of exactly tied scores: {r['topk_identical_up_to_ties']}/{q}")
    print(f"max |d2r - brute-force similarity| over returned scores: "
          f"{r['max_abs_error_vs_brute_force']:.2e}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--descriptors", type=int, default=300, help="descriptors per image")
    parser.add_argument("--words", type=int, default=4096, help="codebook size K")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--patterns", type=int, default=20000)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--float", dest="binary", action="store_false", help="ASMK instead of ASMK*")
    parser.add_argument("--alpha", type=float, default=3.0)
    parser.add_argument("--tau", type=float, default=0.0)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--niter", type=int, default=10, help="k-means iterations of the codebook")
    parser.add_argument("--kernel", choices=("numpy", "compiled"),
                        default="compiled" if compiled.AVAILABLE else "numpy",
                        help="d2r's inverted-file kernel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    result = run(args)
    print_table(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
