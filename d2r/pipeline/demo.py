"""The whole system on the embedded synthetic benchmark (the library behind ``d2r demo``,
whose help lists what lands under ``out``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from d2r.pipeline.sources import ImageSource
from d2r.pipeline.build import build_index
from d2r.config import Config, load_config
from d2r.datasets.synthetic import SIZES, generate
from d2r.pipeline.run import run_dataset
from d2r.pipeline.searcher import Searcher

__all__ = ["run_demo"]


EXPANSION = ("search.query_expansion=10", "search.qe_features=region")
"""The ``expanded`` row: verified query expansion as the ``rootsift-asmk-star-qe`` preset."""


def run_demo(out: str | Path, config: Optional[Config] = None, *, size: str = "default",
             seed: int = 0, rerank: int = 100) -> dict:
    """Run the demo into ``out``; returns ``{"initial": metrics, "reranked": metrics,
    "expanded": metrics}`` (spatial verification of the top ``rerank``, then verified query
    expansion; the last two only when ``rerank`` > 0).

    ``config`` defaults to the ``rootsift-asmk-star`` preset.
    """
    out = Path(out)
    data = out / "data"
    if not (data / "synthetic.json").exists():
        generate(data, seed=seed, overwrite=True, **SIZES[size])
    config = config or load_config("rootsift-asmk-star")
    build_index(config, ImageSource.from_dataset(data), out / "index")
    results = {}
    with Searcher(out / "index", overrides=["verification.rerank=0",
                                            "search.query_expansion=0"]) as searcher:
        results["initial"] = run_dataset(searcher, data, out / "results")
    if rerank > 0:
        with Searcher(out / "index", overrides=[f"verification.rerank={rerank}",
                                                "search.query_expansion=0"]) as searcher:
            results["reranked"] = run_dataset(searcher, data, out / "reranked", report=True)
            expands = getattr(searcher.method, "expands", False)
        if expands:
            expansion = [f"verification.rerank={rerank}", *EXPANSION]
            with Searcher(out / "index", overrides=expansion) as searcher:
                results["expanded"] = run_dataset(searcher, data, out / "expanded")
    (out / "demo.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
