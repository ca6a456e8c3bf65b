"""Batch local-feature extraction into a feature store: ``d2r extract``.

Images come from a directory, a list file or a benchmark directory (its
database; Holidays images listed by ``--rotations`` are turned upright first).
Extraction resumes: images already in the store are skipped, so a killed run
is simply started again.  ``--shard i/n`` takes every n-th
image starting at i, so n processes (or machines) split a collection, each
writing its own store.  Unreadable images are skipped, logged, and listed in
``skipped.tsv`` in the store (``images.on_error: raise`` stops instead).

With ``regions.source`` other than ``none`` each image's regions (the whole
image first, then detector boxes / grid cells / proposals) are written as a
reference-compatible ``.boxes`` file under ``--boxes DIR``, and with
``regions.features: crop`` the features of region ``i >= 1`` are stored under
the entry name ``"<image>#<i>"`` (:func:`region_entry`).  The whole-image entry
is written last, so its presence marks the image as done.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from d2r.cli import arguments as cli
from d2r.distributed.options import add_ray_args, ray_kwargs, ray_requested
from d2r.pipeline.extraction import extract_to_store

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.Parser("d2r extract", __doc__)
    cli.add_source_args(parser)
    parser.add_argument("--out", required=True, metavar="STORE", help="feature store directory")
    parser.add_argument("--boxes", metavar="DIR",
                        help="where region .boxes files go (needed when regions.source != none)")
    parser.add_argument("--shard", type=cli.parse_shard, default=(0, 1), metavar="I/N",
                        help="process every N-th image starting at I (0-based)")
    cli.add_config_args(parser, default_preset="rootsift-asmk-star")
    add_ray_args(parser)
    cli.add_common_args(parser)
    return cli.run(parser, argv, _extract)


def _extract(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Extract the images ``args`` describe; print the counts."""
    config = cli.config_from_args(args)
    source = cli.source_from_args(args).shard(*args.shard)
    if ray_requested(args):
        from d2r.distributed import run_extract_ray

        summary = run_extract_ray(config, source, args.out, boxes_dir=args.boxes,
                                  **ray_kwargs(args))
    else:
        summary = extract_to_store(config, source, args.out, boxes_dir=args.boxes)
    print(f"{summary.extracted} extracted, {summary.already_done} already done, "
          f"{len(summary.skipped)} skipped -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
