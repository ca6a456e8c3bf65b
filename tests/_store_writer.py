"""Writer process for the feature-store kill tests (run as a script, or imported).

``python tests/_store_writer.py STORE --count N [--sleep S] [--shard-entries K]
[--dtype float16] [--stall-commit J --marker FILE]`` puts the deterministic
features of ``names(N)`` that ``STORE`` does not hold yet.  With
``--stall-commit J`` the J-th shard is written to its temporary file, ``FILE``
is created and the process hangs before the commit, waiting to be killed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from d2r.io.feature_store import FeatureStore
from d2r.types import LocalFeatures

CONFIG = {"extractor": "test", "max_features": 7, "nested": {"scales": [0.5, 1.0]}}
DIM = 8


def names(count: int) -> list[str]:
    """Image names with directories, spaces and non-ASCII characters."""
    return [f"dir {i % 3}/imagé_{i:03d}.jpg" for i in range(count)]


def features(index: int) -> LocalFeatures:
    """Deterministic features of image ``index``; every 7th image has none."""
    rng = np.random.default_rng(index)
    n = index % 7
    return LocalFeatures(
        locations=rng.uniform(0, 100, (n, 2)),
        descriptors=rng.normal(size=(n, DIM)),
        scales=rng.uniform(0.5, 2, n),
        scores=rng.uniform(0, 1, n),
        image_size=(100 + index, 50 + index),
    )


def write(store: Path, *, count: int, sleep: float = 0.0, shard_entries: int = 4, dtype: str = "float32") -> None:
    all_names = names(count)
    index = {name: i for i, name in enumerate(all_names)}
    with FeatureStore.open(store, mode="a", config=CONFIG, dtype=dtype, shard_entries=shard_entries) as fs:
        for name in fs.missing(all_names):
            fs.put(name, features(index[name]))
            if sleep:
                time.sleep(sleep)


def _stall_at_commit(number: int, marker: Path) -> None:
    original = FeatureStore._write_shard
    calls = []

    def stalled(self, tmp, items):
        original(self, tmp, items)
        calls.append(tmp)
        if len(calls) == number:
            marker.write_text(str(tmp))
            time.sleep(3600)

    FeatureStore._write_shard = stalled


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--shard-entries", type=int, default=4)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--stall-commit", type=int)
    parser.add_argument("--marker", type=Path)
    args = parser.parse_args()
    if args.stall_commit is not None:
        _stall_at_commit(args.stall_commit, args.marker)
    write(args.store, count=args.count, sleep=args.sleep, shard_entries=args.shard_entries, dtype=args.dtype)


if __name__ == "__main__":
    main()
