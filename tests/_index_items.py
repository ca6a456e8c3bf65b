"""Random aggregated images for index tests (imported by the test modules)."""

from __future__ import annotations

import numpy as np

from d2r.types import AggregatedImage


def random_items(rng: np.random.Generator, n: int, *, num_words: int, dim: int, binary: bool,
                 max_words: int = 12) -> list[AggregatedImage]:
    """``n`` items of 0..``max_words`` distinct sorted words: packed sign codes or unit vectors."""
    items = []
    for _ in range(n):
        m = int(rng.integers(0, max_words + 1))
        words = np.sort(rng.choice(num_words, size=m, replace=False)).astype(np.int32)
        if binary:
            vectors = rng.integers(0, 256, (m, (dim + 7) // 8), dtype=np.uint8)
        else:
            vectors = rng.standard_normal((m, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items.append(AggregatedImage(words, vectors, dim, binary))
    return items
