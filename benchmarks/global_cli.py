"""CNN global baselines through the CLI code paths: presets, learn, build_index, query.

Unlike ``benchmarks/global_baselines.py`` (which calls the pooling functions
directly), every row here goes through the library functions behind the CLIs:
``d2r.cnn.learn.learn`` (``d2r learn``),
``d2r.pipeline.build.build_index`` (``python -m d2r.build_index``) and
``d2r.pipeline.run.run_dataset`` with a ``d2r.pipeline.searcher.Searcher`` (``python -m d2r.query
--dataset-dir``), configured by the presets in ``d2r/presets``.

Rows (preset; what is learned on ``--train-data``):

* MAC (``mac-vgg16``; nothing learned, no whitening);
* R-MAC + whitening, + QE, + AML (top ``--aml-top``), + AML + QE
  (``rmac-vgg16``, ``-qe``, ``-aml``, ``-aml-qe``; R-MAC whitening): ONE index built
  with ``rmac-vgg16-aml`` (database activation maps kept in ``INDEX/maps``), the
  rows differ only in the query-time ``search.aml_rerank`` /
  ``search.query_expansion``;
* multi-resolution multi-layer R-MAC and + CAM (``multires-rmac-resnet101``,
  ``multires-rmac-resnet101-cam`` with ``features.cnn.backbone=--multires-backbone``,
  default resnet50, and the preset's 550/800/1050 scaled so the largest is
  ``--max-side``; PFA only with ``--pfa DIM``); ``--no-multires`` skips them;
* regional 1st + 2nd order and + QE (``regional-vgg16``, ``regional-vgg16-qe``;
  local PCA to ``--reduction-dim`` + region whitening): one shared index.

Columns: descriptor dimension (rows per database image), index bytes per image
(files of ``INDEX/search``, plus ``INDEX/maps`` for the rows that read them: the
AML rows), build seconds per image (wall time of ``build_index`` / images: model
construction, CNN extraction, feature store, index; for the shared R-MAC index
that includes writing the maps), query extraction (model built beforehand) and
search + re-rank milliseconds per query (``timing.json`` of ``run_dataset``, median
of ``--repeat`` runs of all queries), mAP
Easy / Medium / Hard (``metrics.json``).  The learning time on the train set is
printed under the table.

No ImageNet weights are passed: the backbones have RANDOM (seeded) weights and
the mAPs only show that the pipelines run end to end.

Usage::

    d2r synthetic --out /tmp/gb_synth_small --size small
    d2r synthetic --out /tmp/gb_synth_train --size small --seed 1
    python benchmarks/global_cli.py --data /tmp/gb_synth_small --train-data /tmp/gb_synth_train
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from d2r.index.layout import MAPS
from d2r.pipeline.build import build_index
from d2r.pipeline.sources import ImageSource
from d2r.config import diff_configs, load_config, to_dict
from d2r.datasets.revisited import load_revisited
from d2r.cnn.learn import learn
from d2r.pipeline.run import run_dataset
from d2r.pipeline.searcher import QUERY_TIME_KEYS, Searcher

logger = logging.getLogger("global_cli")


@dataclass
class Build:
    """One index: the preset it is built with, its overrides, and what it learns first."""

    key: str
    preset: str
    overrides: list[str]
    learn: dict | None = None  # kwargs of d2r.cnn.learn.learn (+ "preset", "sets")
    learn_from: str | None = None  # reuse what this other build learned (same learn options)
    # filled in by run_build
    path: Path | None = None
    seconds: float = 0.0
    learn_seconds: float = 0.0
    num_images: int = 0
    kind: str = ""
    dim: int = 0
    rows_per_image: float = 0.0
    search_bytes: int = 0
    maps_bytes: int = 0


@dataclass
class Row:
    method: str
    preset: str
    build: str
    query: list[str] = field(default_factory=list)  # query-time overrides
    uses_maps: bool = False


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - t0


def run_build(build: Build, source: ImageSource, train: ImageSource, work: Path) -> None:
    """Learn (on the train set) what ``build`` needs, then build its index; fill in its figures."""
    overrides = list(build.overrides)
    if build.learn is not None:
        opts = dict(build.learn)
        target = work / f"learn-{build.learn_from or build.key}"
        learn_config = load_config(opts.pop("preset"), overrides=overrides)
        sets = opts.pop("sets")
        if build.learn_from is None:
            shutil.rmtree(target, ignore_errors=True)
            logger.info("learning %s on %d training images", build.key, len(train))
            _, build.learn_seconds = timed(learn, learn_config, train, target, **opts)
        overrides += [s.format(W=target) for s in sets]
    config = load_config(build.preset, overrides=overrides)
    out = work / f"index-{build.key}"
    shutil.rmtree(out, ignore_errors=True)  # build_index would resume an older extraction
    logger.info("building %s (%s) over %d images", build.key, build.preset, len(source))
    _, build.seconds = timed(build_index, config, source, out)
    manifest = json.loads((out / "index.json").read_text())
    build.path, build.num_images, build.kind = out, manifest["num_images"], manifest["kind"]
    with Searcher(out) as searcher:
        index = searcher.index
        build.dim = index.dim
        if build.kind == "global_regions":
            build.rows_per_image = index.num_regions / index.num_images
        elif build.kind == "global_local":
            build.rows_per_image = 2.0
        else:
            build.rows_per_image = 1.0
    build.search_bytes = dir_bytes(out / "search")
    build.maps_bytes = dir_bytes(out / MAPS)


def check_row(row: Row, build: Build, common: list[str]) -> None:
    """The row's preset must differ from the index's config only in query-time keys (and
    ``features.cnn.store_maps``, which only adds the maps the AML rows read)."""
    built = json.loads((build.path / "index.json").read_text())["config"]
    wanted = to_dict(load_config(row.preset, overrides=common + row.query))
    built_q = to_dict(load_config(build.preset, overrides=common))
    diff = [d for d in diff_configs(built_q, wanted)
            if not d.startswith(QUERY_TIME_KEYS + ("features.cnn.store_maps",))]
    if diff:
        raise SystemExit(f"row {row.method!r}: preset {row.preset} differs from index "
                         f"{build.key} at build-time keys {diff}")
    assert built["features"]["backend"] == "cnn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="benchmark directory (revisitop layout)")
    parser.add_argument("--train-data", required=True,
                        help="second data set: whitening / PFA / local PCA are learned on its database")
    parser.add_argument("--work", default="/tmp/global_cli_work",
                        help="indexes, learned files and query results (replaced on each run)")
    parser.add_argument("--max-side", type=int, default=288, help="images.max_side (longer side)")
    parser.add_argument("--whiten-dim", type=int, default=256, help="R-MAC whitening dimension")
    parser.add_argument("--regional-dim", type=int, default=256, help="region whitening dimension")
    parser.add_argument("--reduction-dim", type=int, default=128,
                        help="regional: K', PCA of local features before second-order pooling")
    parser.add_argument("--aml-top", type=int, default=100, help="search.aml_rerank of the AML rows")
    parser.add_argument("--qe", type=int, default=5, help="search.query_expansion of the QE rows")
    parser.add_argument("--multires-backbone", default="resnet50", choices=["resnet50", "resnet101"])
    parser.add_argument("--resolutions", type=int, nargs="+", default=None,
                        help="multires sizes (default 550/800/1050 scaled so the largest is --max-side)")
    parser.add_argument("--pfa", type=int, default=None, metavar="DIM",
                        help="multires rows: learn a PFA selection to DIM on the train set (default off)")
    parser.add_argument("--no-multires", action="store_true", help="skip the multires and CAM rows")
    parser.add_argument("--repeat", type=int, default=3,
                        help="run the queries of each row this many times; query times are the "
                             "median (the first run pays one-off warm-up)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t_start = time.perf_counter()

    dataset = load_revisited(args.data)  # fails early on a wrong layout
    source = ImageSource.from_dataset(args.data)
    train = ImageSource.from_dataset(args.train_data)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    resolutions = args.resolutions or [round(r * args.max_side / 1050) for r in (550, 800, 1050)]
    common = [f"images.max_side={args.max_side}"]
    multires = common + [f"features.cnn.backbone={args.multires_backbone}",
                         f"features.cnn.resolutions=[{', '.join(map(str, resolutions))}]"]
    pfa = None if args.pfa is None else {
        "preset": "multires-rmac-resnet101", "pfa_dim": args.pfa,
        "sets": ["features.cnn.pfa_path={W}/pfa.json"]}

    builds = {b.key: b for b in [
        Build("mac", "mac-vgg16", common),
        Build("rmac", "rmac-vgg16-aml", common, learn={
            "preset": "rmac-vgg16", "dim": args.whiten_dim,
            "sets": ["features.cnn.whitening_path={W}"]}),
        Build("regional", "regional-vgg16", common, learn={
            "preset": "regional-vgg16", "dim": args.regional_dim,
            "reduction_dim": args.reduction_dim,
            "sets": ["features.cnn.reduction_path={W}/reduction", "features.cnn.whitening_path={W}"]}),
    ]}
    if not args.no_multires:
        builds["multires"] = Build("multires", "multires-rmac-resnet101", multires, learn=pfa)
        builds["cam"] = Build("cam", "multires-rmac-resnet101-cam", multires, learn=pfa,
                              learn_from="multires")  # PFA is learned without the CAM

    plain = ["search.aml_rerank=0"]
    rows = [
        Row("MAC", "mac-vgg16", "mac"),
        Row("R-MAC + whitening", "rmac-vgg16", "rmac", plain + ["search.query_expansion=0"]),
        Row(f"R-MAC + QE (top {args.qe})", "rmac-vgg16-qe", "rmac",
            plain + [f"search.query_expansion={args.qe}"]),
        Row(f"R-MAC + AML (top {args.aml_top})", "rmac-vgg16-aml", "rmac",
            [f"search.aml_rerank={args.aml_top}", "search.query_expansion=0"], uses_maps=True),
        Row(f"R-MAC + AML (top {args.aml_top}) + QE", "rmac-vgg16-aml-qe", "rmac",
            [f"search.aml_rerank={args.aml_top}", f"search.query_expansion={args.qe}"],
            uses_maps=True),
    ]
    if not args.no_multires:
        res = "/".join(map(str, resolutions))
        pfa_note = f" + PFA {args.pfa}" if args.pfa else ""
        rows += [
            Row(f"multi-res ({res} px) multi-layer, {args.multires_backbone}{pfa_note}",
                "multires-rmac-resnet101", "multires"),
            Row(f"+ CAM (min L1), {args.multires_backbone}{pfa_note}",
                "multires-rmac-resnet101-cam", "cam"),
        ]
    rows += [
        Row("regional 1st + 2nd order", "regional-vgg16", "regional", ["search.query_expansion=0"]),
        Row(f"regional + QE (top {args.qe})", "regional-vgg16-qe", "regional",
            [f"search.query_expansion={args.qe}"]),
    ]

    for build in builds.values():
        run_build(build, source, train, work)

    results, ranks = [], {}
    for row in rows:
        build = builds[row.build]
        check_row(row, build, build.overrides)
        out = work / f"results-{row.preset}"
        shutil.rmtree(out, ignore_errors=True)
        logger.info("querying %s: %s %s", row.method, build.key, row.query)
        timings = []
        with Searcher(build.path, overrides=row.query) as searcher:
            _ = searcher.extractor  # build the model before run_dataset's clock starts
            for _ in range(args.repeat):
                metrics = run_dataset(searcher, args.data, out)
                timings.append(json.loads((out / "timing.json").read_text()))
                run_ranks = np.load(out / "ranks.npy")
                if row.preset in ranks and not np.array_equal(ranks[row.preset], run_ranks):
                    logger.warning("%s: the ranking changed between repeated runs", row.method)
                ranks[row.preset] = run_ranks
        timing = {key: float(np.median([t[key] for t in timings])) for key in timings[0]}
        results.append((row, build, metrics, timing))

    weights = {b.key: to_dict(load_config(b.preset, overrides=b.overrides))["features"]["cnn"]["weights_path"]
               for b in builds.values()}
    random = all(w is None for w in weights.values())
    print()
    print("**RANDOM backbone weights (seeded; no ImageNet weights): the mAPs only show that "
          "the pipelines run end to end.**" if random else f"weights: {weights}")
    print(f"{dataset.num_db} database images, {dataset.num_queries} queries ({args.data}); "
          f"learned on {len(train)} images ({args.train_data}); images.max_side {args.max_side}; "
          f"{os.cpu_count()} CPUs; query times: median of {args.repeat} runs")
    print()
    print("| method | preset | index kind | dim (rows / image) | index KB / image | build s / image "
          "| query extract ms | search + re-rank ms | mAP E | mAP M | mAP H |")
    print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for row, build, metrics, timing in results:
        nbytes = build.search_bytes + (build.maps_bytes if row.uses_maps else 0)
        query_ms = 1e3 * (timing["search_s_per_query"] + timing["rerank_s_per_query"])
        maps = [metrics[p]["mAP"] for p in ("easy", "medium", "hard")]
        print(f"| {row.method} | `{row.preset}` | {build.kind} | {build.dim} ({build.rows_per_image:g}) "
              f"| {nbytes / build.num_images / 1024:.1f} | {build.seconds / build.num_images:.2f} "
              f"| {1e3 * timing['extract_s_per_query']:.0f} | {query_ms:.2f} "
              f"| {maps[0]:.1f} | {maps[1]:.1f} | {maps[2]:.1f} |")
    print()
    shared = builds["rmac"]
    print(f"R-MAC rows share one `rmac-vgg16-aml` index (maps {shared.maps_bytes / shared.num_images / 1024:.1f} "
          f"KB / image, counted only for the AML rows); regional rows share one index.")
    print("learning on the train set: " + ", ".join(
        f"{b.key} {b.learn_seconds:.0f} s" for b in builds.values()
        if b.learn is not None and b.learn_from is None))
    base, aml = ranks.get("rmac-vgg16"), ranks.get("rmac-vgg16-aml")
    if base is not None and aml is not None:
        top = min(args.aml_top, base.shape[1])
        changed = int(np.sum(np.any(base[:, :top] != aml[:, :top], axis=1)))
        print(f"AML changed the top-{top} order of {changed} / {base.shape[0]} queries")
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
