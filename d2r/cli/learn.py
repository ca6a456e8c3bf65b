"""Learn the post-processing of CNN global descriptors on another data set.

``d2r learn --dataset-dir OTHER --config rmac-vgg16 --out W``
learns the PCA-whitening of MAC / R-MAC vectors (the R-MAC paper learns it on
Paris for Oxford and vice versa), or with ``--pfa DIM`` the Principal Feature
Analysis selection of multi-resolution descriptors, from the database images
of ``OTHER``.  Use the result with ``--set features.cnn.whitening_path=W`` (or
``features.cnn.pfa_path=W/pfa.json``).

For ``method: regional`` it learns, in two passes over the images, the PCA of
local features to K' (``--reduction-dim``, 128; from at most 256 random map cells
per image) into ``W/reduction`` and then the whitening of the region vectors
pooled with it into ``W``: use both, ``features.cnn.reduction_path=W/reduction``
and ``features.cnn.whitening_path=W``.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from d2r.cli import arguments as cli
from d2r.cnn.learn import learn

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.Parser("d2r learn", __doc__)
    cli.add_source_args(parser)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="where the whitening / PFA / reduction is written (the folder a "
                             "CNN preset's whitening path names)")
    parser.add_argument("--dim", type=int, help="whitening output dimension (default: all)")
    parser.add_argument("--pfa", type=int, metavar="DIM", help="multires: PFA target dimension")
    parser.add_argument("--reduction-dim", type=int, default=128, metavar="K",
                        help="regional: PCA dimension K' of local features (default 128)")
    cli.add_config_args(parser, default_preset="rmac-vgg16")
    cli.add_common_args(parser)
    return cli.run(parser, argv, _learn)


def _learn(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Learn what ``args`` asks for; print where it went."""
    target = learn(cli.config_from_args(args), cli.source_from_args(args), args.out,
                   dim=args.dim, pfa_dim=args.pfa, reduction_dim=args.reduction_dim)
    print(f"learned -> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
