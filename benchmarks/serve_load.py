"""Bounded load on ``d2r serve`` over loopback: latency and the server's memory at 1, 8, 50
and 200 concurrent clients, against the per-process cost of ``d2r query``.

Starts ``d2r serve`` on the demo index (``d2r demo --out DEMO`` first, or ``--demo DEMO``
to reuse one), then for each count of ``--clients`` runs that many threads that POST the
demo's query photos to ``/search`` (cycling, ``rerank`` = ``--rerank``) for ``--seconds``.
A client answered 503 (the server's queue is full) waits the ``Retry-After`` it was given
and counts the request as refused.  Reported per count: requests/s, client latency
p50/p95 of the answered requests, the refused (503) and failed counts, the server's split
(extraction / search / re-ranking) p50/p95, and the server process's resident memory
(RSS, psutil, sampled every 50 ms): at start, peak and end.  Then the same queries
through ``d2r query --image`` (a new process per query) for ``--cli-queries`` queries.
Exit status 1 when a request failed (other than 503) or the peak RSS passed ``--max-rss-mb``.

Usage::

    python benchmarks/serve_load.py --seconds 30 --out /tmp/d2r-serve-load
    python benchmarks/serve_load.py --clients 200 --seconds 10 --serve-arg=--workers=2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests._server import Server  # noqa: E402


def percentiles(values) -> dict:
    if not len(values):
        return {"p50": None, "p95": None}
    values = np.asarray(values, float)
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}


class RssSampler:
    """The peak resident memory of process ``pid`` while the ``with`` block runs."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.process, self.every_s = psutil.Process(pid), every_s
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def load(server: Server, photos: list[tuple[str, bytes]], *, clients: int, seconds: float,
         rerank: int) -> dict:
    """``clients`` threads searching for ``seconds``; latency, refusals, server split, RSS."""
    lock = threading.Lock()
    latencies, refused, errors = [], [0], []
    stages = {"extract_s": [], "search_s": [], "rerank_s": []}
    counter = itertools.count()
    deadline = time.monotonic() + seconds

    def client():
        session = requests.Session()
        while time.monotonic() < deadline:
            name, data = photos[next(counter) % len(photos)]
            start = time.perf_counter()
            try:
                response = session.post(server.url + "/search", files={"image": (name, data)},
                                        data={"rerank": str(rerank)}, timeout=120)
            except requests.RequestException as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            elapsed = time.perf_counter() - start
            if response.status_code == 503:
                with lock:
                    refused[0] += 1
                time.sleep(float(response.headers.get("Retry-After", 1)))
                continue
            with lock:
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                    continue
                latencies.append(elapsed)
                for stage in stages:
                    stages[stage].append(response.json()["timing"][stage])

    process = psutil.Process(server.process.pid)
    rss_start = process.memory_info().rss
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    with RssSampler(server.process.pid) as rss:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "refused_503": refused[0],
            "errors": len(errors), "error_examples": errors[:3], "seconds": wall,
            "requests_per_s": len(latencies) / wall, "latency_s": percentiles(latencies),
            "server_split_s": {stage: percentiles(v) for stage, v in stages.items()},
            "rss_mb": {"start": rss_start / 2**20, "peak": rss.peak / 2**20,
                       "end": process.memory_info().rss / 2**20}}


def cli_queries(index: Path, queries: list[Path], *, count: int, rerank: int) -> dict:
    """Seconds per ``d2r query --image`` process (start-up included), median of ``count``."""
    times = []
    for query in itertools.islice(itertools.cycle(queries), count):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "d2r", "query", "--index", str(index), "--image",
                        str(query), "--rerank", str(rerank), "--format", "json"],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return {"queries": count, "median_s": statistics.median(times), "min_s": min(times)}


def _ms(value) -> str:
    return "-" if value is None else f"{value * 1e3:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/d2r-serve-load"))
    parser.add_argument("--demo", type=Path, help="an existing `d2r demo --out` directory")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 50, 200])
    parser.add_argument("--seconds", type=float, default=30, help="per client count")
    parser.add_argument("--rerank", type=int, default=100)
    parser.add_argument("--cli-queries", type=int, default=10, help="0: skip d2r query")
    parser.add_argument("--max-rss-mb", type=float, default=1024)
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="an option for d2r serve, e.g. --serve-arg=--workers=2")
    parser.add_argument("--malloc-arena-max", type=int,
                        help="MALLOC_ARENA_MAX for the server process (default: glibc's)")
    args = parser.parse_args()
    demo = args.demo or args.out / "demo"
    if not (demo / "index" / "index.json").exists():
        subprocess.run([sys.executable, "-m", "d2r", "demo", "--out", str(demo)], check=True,
                       capture_output=True)
    if args.malloc_arena_max:
        os.environ["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    index = demo / "index"
    queries = sorted((demo / "data" / "jpg").glob("*_q_*.jpg"))
    photos = [(q.name, q.read_bytes()) for q in queries]
    levels = []
    with Server(index, *args.serve_arg) as server:
        for name, data in photos[:4]:  # warm up: page cache, first-use allocations
            requests.post(server.url + "/search", files={"image": (name, data)},
                          data={"rerank": str(args.rerank)}, timeout=120)
        for clients in args.clients:
            levels.append(load(server, photos, clients=clients, seconds=args.seconds,
                               rerank=args.rerank))
            level = levels[-1]
            print(f"{clients:4d} clients: {level['requests_per_s']:6.1f} req/s, latency p50 "
                  f"{_ms(level['latency_s']['p50'])} ms p95 {_ms(level['latency_s']['p95'])} ms, "
                  f"{level['refused_503']} refused (503), {level['errors']} failed; RSS "
                  f"{level['rss_mb']['start']:.0f} -> peak {level['rss_mb']['peak']:.0f} -> "
                  f"{level['rss_mb']['end']:.0f} MB", flush=True)
    result = {"levels": levels, "rerank": args.rerank, "serve_args": args.serve_arg,
              "malloc_arena_max": args.malloc_arena_max,
              "images": json.loads((index / "index.json").read_text())["num_images"],
              "load_average_at_end": os.getloadavg()[0]}
    if args.cli_queries:
        result["d2r_query_process"] = cli_queries(index, queries, count=args.cli_queries,
                                                  rerank=args.rerank)
        print(f"d2r query per process: {result['d2r_query_process']['median_s']:.2f} s median")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    peak = max(level["rss_mb"]["peak"] for level in levels)
    failed = sum(level["errors"] for level in levels)
    print(f"peak RSS {peak:.0f} MB (limit {args.max_rss_mb:.0f}); {failed} failed requests; "
          f"{args.out / 'serve_load.json'}")
    return 1 if failed or peak > args.max_rss_mb else 0


if __name__ == "__main__":
    raise SystemExit(main())
