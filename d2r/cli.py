"""Argument parsing and error reporting shared by the ``d2r <command>`` entry points.

Every command reads its configuration the same way (``--config PRESET``,
``--config-file FILE``, ``--set a.b=c``) and its images from one of
``--images DIR``, ``--image-list FILE`` or ``--dataset-dir DIR`` (any benchmark
of :mod:`d2r.datasets.benchmarks`, chosen by ``--benchmark``, with
``--rotations FILE`` for Holidays and ``--distractors``/``--distractor-dir``
for R1M).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Callable, Iterator, Optional, Sequence

from d2r import progress
from d2r.config import Config, available_presets, load_config
from d2r.datasets.benchmarks import BENCHMARKS
from d2r.errors import USER_ERRORS, InputError
from d2r.methods import validate
from d2r.sources import ImageSource

__all__ = [
    "add_benchmark_args",
    "add_distractor_args",
    "add_config_args",
    "config_from_args",
    "add_source_args",
    "source_from_args",
    "parse_shard",
    "setup_logging",
]


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
    """The config of ``--config`` / ``--config-file`` / ``--set``, validated (ranges, names,
    combinations) before any work starts."""
    config = load_config(args.config, files=args.config_file, overrides=args.overrides)
    validate(config)
    return config


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
        raise InputError("--rotations needs --dataset-dir (a Holidays benchmark)")
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
    """Log to stderr through tqdm (so bars are not cut): INFO by default, DEBUG with ``-v``."""
    handler = progress.TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler],
                        force=True)
    logging.captureWarnings(True)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="debug logging, and a traceback with every error")
    parser.add_argument("--progress-interval", type=float, metavar="SECONDS",
                        help="when stderr is not a terminal, log a progress line this often "
                             f"(default {progress.DEFAULT_INTERVAL_S:g}, or "
                             f"${progress.INTERVAL_ENV})")


@contextlib.contextmanager
def user_errors(parser: argparse.ArgumentParser, verbose: int = 0) -> Iterator[None]:
    """Turn a :data:`~d2r.errors.USER_ERRORS` exception into ``PROG: error: MESSAGE`` and
    exit status 2 (with ``-v`` the traceback is kept)."""
    try:
        yield
    except USER_ERRORS as exc:
        if verbose:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        parser.exit(2, f"{parser.prog}: error: {message}\n")


def join_negative_values(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """``["--box", "-50,-5,20,20"]`` → ``["--box=-50,-5,20,20"]`` for each of ``options``, so
    argparse does not take a value that starts with ``-`` for an option."""
    out: list[str] = []
    items = iter(argv)
    for item in items:
        if item in options:
            value = next(items, None)
            out.append(item if value is None else f"{item}={value}")
        else:
            out.append(item)
    return out


def run(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
        body: Callable[[argparse.ArgumentParser, argparse.Namespace], int],
        *, value_options: Sequence[str] = ()) -> int:
    """Parse ``argv`` (``value_options`` may take values starting with ``-``), set up logging
    and progress, and run ``body(parser, args)`` with user errors reported in one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(join_negative_values(argv, value_options))
    setup_logging(args.verbose)
    if args.progress_interval is not None:
        if args.progress_interval <= 0:
            parser.error("--progress-interval must be > 0")
        progress.set_interval(args.progress_interval)
    with user_errors(parser, args.verbose):
        return body(parser, args)
