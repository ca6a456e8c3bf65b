"""Argument parsing shared by the ``python -m d2r.<command>`` entry points.

Every command reads its configuration the same way (``--config PRESET``,
``--config-file FILE``, ``--set a.b=c``) and its images from one of
``--images DIR``, ``--image-list FILE`` or ``--dataset-dir DIR``.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from d2r.config import Config, available_presets, load_config

__all__ = [
    "ImageSource",
    "load_dataset",
    "add_distractor_args",
    "add_config_args",
    "config_from_args",
    "add_source_args",
    "source_from_args",
    "parse_shard",
    "setup_logging",
]


@dataclass(frozen=True)
class ImageSource:
    """Images to process: ``names[i]`` (the id used in stores and indexes) lives at ``paths[i]``."""

    names: tuple[str, ...]
    paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> "ImageSource":
        """Every image below ``directory`` (recursive, sorted), named by relative path."""
        from d2r.io.images import list_images

        root = Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(f"image directory {root} does not exist")
        names = list_images(root)
        if not names:
            raise ValueError(f"image directory {root} holds no images")
        return cls(tuple(names), tuple(root / n for n in names))

    @classmethod
    def from_list(cls, list_file: str | os.PathLike) -> "ImageSource":
        """One image path per line; relative paths are relative to the list file's folder."""
        path = Path(list_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise FileNotFoundError(f"cannot read image list {path}: {exc}") from exc
        names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not names:
            raise ValueError(f"image list {path} names no images")
        return cls(tuple(names), tuple(path.parent / n for n in names))

    @classmethod
    def from_dataset(
        cls,
        dataset_dir: str | os.PathLike,
        *,
        distractor_list: Optional[str | os.PathLike] = None,
        distractor_root: Optional[str | os.PathLike] = None,
    ) -> "ImageSource":
        """The database of a revisitop-layout dataset, optionally followed by R1M distractors.

        Names are the dataset's ``db_names`` (base images, then the distractors in list
        order, numbered as :func:`d2r.datasets.revisited.with_distractors` numbers them).
        """
        dataset = load_dataset(dataset_dir, distractor_list=distractor_list,
                               distractor_root=distractor_root)
        return cls(
            tuple(dataset.db_names), tuple(dataset.db_path(i) for i in range(dataset.num_db))
        )

    def shard(self, index: int, count: int) -> "ImageSource":
        """Every ``count``-th image starting at ``index`` (``--shard index/count``)."""
        return ImageSource(self.names[index::count], self.paths[index::count])


def load_dataset(
    dataset_dir: str | os.PathLike,
    *,
    distractor_list: Optional[str | os.PathLike] = None,
    distractor_root: Optional[str | os.PathLike] = None,
):
    """:func:`~d2r.datasets.revisited.load_revisited`, plus R1M distractors when both are given."""
    from d2r.datasets.revisited import load_distractors, load_revisited, with_distractors

    if (distractor_list is None) != (distractor_root is None):
        raise ValueError("give both the distractor list and the distractor image folder, or neither")
    dataset = load_revisited(dataset_dir)
    if distractor_list is not None:
        dataset = with_distractors(dataset, load_distractors(distractor_list), distractor_root)
    return dataset


def add_distractor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--distractors", metavar="FILE",
                        help="with --dataset-dir: append the distractors of this list "
                             "(revisitop1m.txt) to the database")
    parser.add_argument("--distractor-dir", metavar="DIR",
                        help="folder the --distractors names are relative to (revisitop1m/jpg)")


def add_config_args(parser: argparse.ArgumentParser, *, default_preset: Optional[str]) -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--config", default=default_preset, metavar="PRESET",
        help=f"named preset (default: {default_preset}); one of: {', '.join(available_presets())}",
    )
    group.add_argument(
        "--config-file", action="append", default=[], metavar="FILE",
        help="YAML file applied on top of the preset (repeatable)",
    )
    group.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one value, e.g. --set codebook.num_words=4096 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, files=args.config_file, overrides=args.overrides)


def add_source_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--images", metavar="DIR", help="every image below this directory")
    group.add_argument("--image-list", metavar="FILE", help="file with one image path per line")
    group.add_argument(
        "--dataset-dir", metavar="DIR",
        help="dataset in the revisitop layout (DIR/jpg, DIR/gnd_*.pkl); its database is used",
    )
    add_distractor_args(parser)


def source_from_args(args: argparse.Namespace) -> ImageSource:
    if args.images:
        return ImageSource.from_directory(args.images)
    if args.image_list:
        return ImageSource.from_list(args.image_list)
    return ImageSource.from_dataset(args.dataset_dir, distractor_list=args.distractors,
                                    distractor_root=args.distractor_dir)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``; argparse type."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like i/n, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n")
    return index, count


def setup_logging(verbose: int = 0) -> None:
    """Log to stderr: INFO by default, DEBUG with ``-v``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse ``argv`` and set up logging from ``--verbose``."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return args
