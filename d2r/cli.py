"""Argument parsing shared by the ``python -m d2r.<command>`` entry points.

Every command reads its configuration the same way (``--config PRESET``,
``--config-file FILE``, ``--set a.b=c``) and its images from one of
``--images DIR``, ``--image-list FILE`` or ``--dataset-dir DIR`` (any benchmark
of :mod:`d2r.datasets.benchmarks`, chosen by ``--benchmark``, with
``--rotations FILE`` for Holidays and ``--distractors``/``--distractor-dir``
for R1M).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from d2r.config import Config, available_presets, load_config
from d2r.datasets.benchmarks import BENCHMARKS, Benchmark, load_benchmark

__all__ = [
    "ImageSource",
    "load_dataset",
    "add_benchmark_args",
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
    """Images to process: ``names[i]`` (the id used in stores and indexes) lives at ``paths[i]``.

    ``rotations`` is empty (no image is turned) or holds, per image, the clockwise
    degrees (a multiple of 90) that turn it upright before feature extraction.
    """

    names: tuple[str, ...]
    paths: tuple[Path, ...]
    rotations: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.rotations and len(self.rotations) != len(self.names):
            raise ValueError(f"{len(self.rotations)} rotations for {len(self.names)} images")

    def __len__(self) -> int:
        return len(self.names)

    def rotation(self, i: int) -> int:
        """Clockwise degrees that turn image ``i`` upright (0 without rotations)."""
        return self.rotations[i] if self.rotations else 0

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
        benchmark: str = "auto",
        rotations: str | os.PathLike | None = None,
        distractor_list: str | os.PathLike | None = None,
        distractor_root: str | os.PathLike | None = None,
    ) -> ImageSource:
        """The database of a benchmark (:func:`load_dataset`), with its images' rotations.

        Names are the benchmark's ``db_names`` (for revisited with R1M: base images,
        then the distractors in list order, as
        :func:`d2r.datasets.revisited.with_distractors` numbers them).
        """
        dataset = load_dataset(dataset_dir, benchmark=benchmark, rotations=rotations,
                               distractor_list=distractor_list, distractor_root=distractor_root)
        turns = tuple(dataset.rotation(i) for i in range(dataset.num_db))
        return cls(tuple(dataset.db_names),
                   tuple(dataset.db_path(i) for i in range(dataset.num_db)),
                   turns if any(turns) else ())

    def shard(self, index: int, count: int) -> ImageSource:
        """Every ``count``-th image starting at ``index`` (``--shard index/count``)."""
        return ImageSource(self.names[index::count], self.paths[index::count],
                           self.rotations[index::count])


def load_dataset(
    dataset_dir: str | os.PathLike,
    *,
    benchmark: str = "auto",
    rotations: str | os.PathLike | None = None,
    distractor_list: str | os.PathLike | None = None,
    distractor_root: str | os.PathLike | None = None,
) -> Benchmark:
    """The :class:`~d2r.datasets.benchmarks.Benchmark` behind ``--dataset-dir`` and its options.

    ``benchmark`` is a kind of :func:`~d2r.datasets.benchmarks.load_benchmark` or
    ``"auto"``; ``rotations`` a Holidays rotation list; the distractor list and folder
    (both or neither) append R1M to a revisited benchmark.
    """
    return load_benchmark(dataset_dir, kind=benchmark, rotations=rotations,
                          distractor_list=distractor_list, distractor_root=distractor_root)


def add_benchmark_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", choices=("auto", *BENCHMARKS), default="auto",
                        help="with --dataset-dir: the benchmark's layout (default: auto, "
                             "detected from the directory's files)")
    parser.add_argument("--rotations", metavar="FILE",
                        help="Holidays: '<image> <degrees clockwise>' lines; those images are "
                             "turned upright before feature extraction")


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
        help="benchmark directory (revisited ROxf/RPar, Oxford5k/Paris6k, Holidays, UKBench); "
             "its database is used",
    )
    add_benchmark_args(parser)
    add_distractor_args(parser)


def source_from_args(args: argparse.Namespace) -> ImageSource:
    if not args.dataset_dir and args.rotations:
        raise ValueError("--rotations needs --dataset-dir (a Holidays benchmark)")
    if args.images:
        return ImageSource.from_directory(args.images)
    if args.image_list:
        return ImageSource.from_list(args.image_list)
    return ImageSource.from_dataset(args.dataset_dir, benchmark=args.benchmark,
                                    rotations=args.rotations, distractor_list=args.distractors,
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
