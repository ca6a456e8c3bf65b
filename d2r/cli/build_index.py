"""Build a searchable index from images: ``d2r build-index`` (``python -m d2r.build_index``).

Stages, each writing into the index directory ``OUT``::

    OUT/features/     local features (+ region crops), resumable feature store
    OUT/maps/         CNN activation maps for AML re-ranking (features.cnn.store_maps)
    OUT/boxes/        regions per image as .boxes files (when regions are used)
    OUT/codebooks/    the trained codebook, one folder per codebook config
    OUT/search/       the inverted / regional / global index (flat arrays, mmap)
    OUT/index.json    manifest: resolved config, codebook hash, feature config, counts

A killed build is restarted with the same command: extracted images are kept,
a trained codebook is reused, and the search structure (cheap next to
extraction) is rebuilt and replaced atomically.  ``index.json`` is written last.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from d2r.cli import arguments as cli
from d2r.distributed.options import add_ray_args, ray_kwargs, ray_requested
from d2r.index.layout import read_manifest
from d2r.methods import method_name
from d2r.pipeline.build import build_index

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.Parser("d2r build-index", __doc__)
    cli.add_source_args(parser)
    parser.add_argument("--out", required=True, metavar="INDEX", help="index directory")
    cli.add_config_args(parser, default_preset="rootsift-asmk-star")
    add_ray_args(parser, shards=True)
    cli.add_common_args(parser)
    return cli.run(parser, argv, _build)


def _build(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Build the index ``args`` describe; print what was indexed."""
    config = cli.config_from_args(args)
    source = cli.source_from_args(args)
    if ray_requested(args):
        from d2r.distributed import build_index_ray

        out = build_index_ray(config, source, args.out, **ray_kwargs(args))
    else:
        out = build_index(config, source, args.out)
    manifest = read_manifest(out)
    notes = [f"{manifest[key]} {what}" for key, what in (
        ("num_skipped", "skipped"), ("num_featureless", "without features"))
        if manifest.get(key)]
    report = f"; {', '.join(notes)}: see {out / 'features' / 'skipped.tsv'}" if notes else ""
    print(f"indexed {manifest['num_images']} images ({manifest['kind']}, {method_name(config)}) "
          f"-> {out}{report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
