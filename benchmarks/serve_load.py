"""Bounded load on ``d2r serve`` over loopback, against the per-process cost of ``d2r query``.

Starts ``d2r serve`` on the demo index (``d2r demo --out DEMO`` first, or ``--demo DEMO``
to reuse one), then ``--clients`` threads POST the demo's query photos to ``/search``
(cycling, ``rerank`` = ``--rerank``) for ``--seconds``.  Reported: requests/s, client
latency p50/p95, the server's own split (extraction / search / re-ranking) p50/p95, the
error count, and the server's resident memory (RSS) at start and end.  Then the same
queries through ``d2r query --image`` (a new process per query: start-up, index open,
extractor build, query) for ``--cli-queries`` queries, median seconds per query.

Usage::

    python benchmarks/serve_load.py --clients 8 --seconds 60 --out /tmp/d2r-serve-load
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
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests._server import Server  # noqa: E402


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def percentiles(values) -> dict:
    values = np.asarray(values, float)
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}


def load(server: Server, queries: list[Path], *, clients: int, seconds: float,
         rerank: int) -> dict:
    """``clients`` threads searching for ``seconds``; per-request latency and server split."""
    photos = [(q.name, q.read_bytes()) for q in queries]
    lock = threading.Lock()
    latencies, stages, errors = [], {"extract_s": [], "search_s": [], "rerank_s": []}, []
    counter = itertools.count()
    deadline = time.monotonic() + seconds

    def client():
        session = requests.Session()
        while time.monotonic() < deadline:
            name, data = photos[next(counter) % len(photos)]
            start = time.perf_counter()
            response = session.post(server.url + "/search", files={"image": (name, data)},
                                    data={"rerank": str(rerank)}, timeout=120)
            elapsed = time.perf_counter() - start
            with lock:
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                    continue
                latencies.append(elapsed)
                for stage in stages:
                    stages[stage].append(response.json()["timing"][stage])

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"requests": len(latencies), "errors": len(errors), "error_examples": errors[:3],
            "seconds": wall, "requests_per_s": len(latencies) / wall,
            "latency_s": percentiles(latencies),
            "server_split_s": {stage: percentiles(v) for stage, v in stages.items()}}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/d2r-serve-load"))
    parser.add_argument("--demo", type=Path, help="an existing `d2r demo --out` directory")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rerank", type=int, default=100)
    parser.add_argument("--cli-queries", type=int, default=10)
    args = parser.parse_args()
    demo = args.demo or args.out / "demo"
    if not (demo / "index" / "index.json").exists():
        subprocess.run([sys.executable, "-m", "d2r", "demo", "--out", str(demo)], check=True,
                       capture_output=True)
    index = demo / "index"
    queries = sorted((demo / "data" / "jpg").glob("*_q_*.jpg"))
    with Server(index) as server:
        for query in queries[:4]:  # warm up: page cache, first-use allocations
            requests.post(server.url + "/search", files={"image": (query.name,
                                                                  query.read_bytes())},
                          data={"rerank": str(args.rerank)}, timeout=120)
        rss_start = rss_bytes(server.process.pid)
        result = load(server, queries, clients=args.clients, seconds=args.seconds,
                      rerank=args.rerank)
        result["rss_start_mb"] = rss_start / 2**20
        result["rss_end_mb"] = rss_bytes(server.process.pid) / 2**20
    result["d2r_query_process"] = cli_queries(index, queries, count=args.cli_queries,
                                              rerank=args.rerank)
    result.update(clients=args.clients, rerank=args.rerank,
                  images=json.loads((index / "index.json").read_text())["num_images"],
                  load_average_before_end=os.getloadavg()[0])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    split = result["server_split_s"]
    print(f"{args.clients} clients, {result['seconds']:.0f} s, rerank {args.rerank}: "
          f"{result['requests_per_s']:.1f} req/s, {result['errors']} errors; latency p50 "
          f"{result['latency_s']['p50'] * 1e3:.0f} ms p95 {result['latency_s']['p95'] * 1e3:.0f} "
          f"ms; server split p50 extract {split['extract_s']['p50'] * 1e3:.1f} / search "
          f"{split['search_s']['p50'] * 1e3:.1f} / rerank {split['rerank_s']['p50'] * 1e3:.1f} "
          f"ms; RSS {result['rss_start_mb']:.0f} -> {result['rss_end_mb']:.0f} MB; "
          f"d2r query per process {result['d2r_query_process']['median_s']:.2f} s "
          f"(x{result['d2r_query_process']['median_s'] / result['latency_s']['p50']:.1f} "
          f"the served p50 under load)")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
