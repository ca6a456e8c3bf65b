"""Argument parsing and error reporting shared by the ``d2r <command>`` entry points.

Every command builds its parser with :class:`Parser` (its module docstring, without
Sphinx markup, as the description; a usage mistake is one line and a pointer to
``--help``), takes its index with ``--index`` (:meth:`Parser.add_index`), reads its
configuration the same way (``--config PRESET``, ``--config-file FILE``, ``--set
a.b=c``) and its images from one of ``--images DIR``, ``--image-list FILE`` or
``--dataset-dir DIR`` (any benchmark of :mod:`d2r.datasets.benchmarks`, chosen by
``--benchmark``, with ``--rotations FILE`` for Holidays and
``--distractors``/``--distractor-dir`` for R1M).  :func:`run` reports every user
error, a full disk and Ctrl-C in one line (:func:`user_errors`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from d2r import progress
from d2r.config import Config, available_presets, load_config
from d2r.datasets.benchmarks import BENCHMARKS
from d2r.errors import INTERRUPTED, USER_ERRORS, DiskFullError, InputError, disk_full
from d2r.index.layout import UPDATE_LOCK
from d2r.methods import validate
from d2r.pipeline.sources import ImageSource

__all__ = [
    "Parser",
    "plain_text",
    "check_output_dir",
    "check_output_file",
    "add_benchmark_args",
    "add_distractor_args",
    "add_config_args",
    "config_from_args",
    "add_source_args",
    "source_from_args",
    "parse_shard",
    "setup_logging",
    "user_errors",
    "run",
]

_ROLE = re.compile(r":[\w-]+(?::[\w-]+)?:`([^`]*)`")
_LITERAL = re.compile(r"``(.+?)``", re.S)


def _role_text(match: re.Match) -> str:
    """What Sphinx shows for ``:role:`target```: a title before ``<target>``, else the
    target (its last component after ``~``)."""
    text = match.group(1)
    titled = re.fullmatch(r"(.*?)\s*<[^>]*>", text, re.S)
    if titled:
        return titled.group(1)
    if text.startswith("~"):
        return text[1:].rsplit(".", 1)[-1]
    return text


def plain_text(doc: str) -> str:
    """``doc`` (a reStructuredText docstring) as plain text for ``--help``: roles and
    double backticks stripped, ``text::`` shown as ``text:``, ``\\*`` as ``*``."""
    text = _LITERAL.sub(r"\1", _ROLE.sub(_role_text, doc))
    text = re.sub(r"(?m)^\s*::\s*$\n?", "", text)
    text = re.sub(r"(?m)(\S)::$", r"\1:", text)
    return text.replace("\\*", "*")


class Parser(argparse.ArgumentParser):
    """The parser of a ``d2r`` command: ``description`` (a docstring) shown without Sphinx
    markup and line breaks kept; a usage mistake prints ``PROG: error: MESSAGE`` and one line
    pointing to ``--help`` (exit 2) instead of the whole usage."""

    def __init__(self, prog: str, description: Optional[str] = None, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(prog=prog, description=description and plain_text(description),
                         **kwargs)
        self._index: Optional[tuple[bool, bool]] = None

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n"
                     f"({self.prog} --help for usage)\n")

    def add_index(self, *, many: bool = False, positional: bool = False,
                  help: str = "index directory") -> None:
        """``--index INDEX`` (required; repeatable with ``many``), parsed into ``args.index``
        (a list with ``many``).  ``positional`` also accepts the index as a bare argument
        (``d2r check INDEX``, the older spelling)."""
        self._index = (many, positional)
        self.add_argument("--index", action="append" if many else "store", metavar="INDEX",
                          required=not positional,
                          help=help + (" (repeatable; also accepted without --index)" if many
                                       else " (also accepted without --index)" if positional
                                       else ""))
        if positional:
            self.add_argument("index_positional", nargs="*" if many else "?", metavar="INDEX",
                              help=argparse.SUPPRESS)

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if self._index is not None and self._index[1]:
            self._merge_index(parsed, many=self._index[0])
        return parsed, extras

    def _merge_index(self, parsed: argparse.Namespace, *, many: bool) -> None:
        """``args.index`` from ``--index`` and the positional spelling."""
        given = parsed.index_positional
        del parsed.index_positional
        if many:
            parsed.index = [*(parsed.index or []), *given]
        elif parsed.index and given and parsed.index != given:
            self.error(f"two indexes given: --index {parsed.index} and {given}")
        else:
            parsed.index = parsed.index or given
        if not parsed.index:
            self.error("the following arguments are required: --index INDEX")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_dir(path: str | os.PathLike, option: str) -> None:
    """Refuse, before any work, an output directory that cannot be made or written: an
    existing file, or below a file or a folder without write permission."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise InputError(f"{option} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: cannot write in {existing} (permission denied)")


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written: a directory, in a
    folder that does not exist, or without write permission."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise InputError(f"{option} {path}: directory {path.parent} does not exist")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise InputError(f"{option} {path}: cannot write it (permission denied)")


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
def user_errors(parser: argparse.ArgumentParser, verbose: int = 0,
                output: Optional[str] = None) -> Iterator[None]:
    """Report what the user can act on in one line: a :data:`~d2r.errors.USER_ERRORS`
    exception as ``PROG: error: MESSAGE`` and a full disk as ``PROG: error: no space left on
    device writing OUTPUT (...)``, both exit status 2; Ctrl-C as ``PROG: interrupted; ...``,
    exit status 130.  With ``-v`` the traceback is kept."""
    try:
        yield
    except KeyboardInterrupt:
        if verbose:
            raise
        parser.exit(INTERRUPTED, f"{parser.prog}: interrupted; run the same command again to "
                                 f"resume\n")
    except Exception as exc:
        if verbose:
            raise
        if disk_full(exc) and not isinstance(exc, DiskFullError):
            target = output or getattr(exc, "filename", None) or "the output"
            kept = "; the index keeps its last complete state" \
                if (Path(target) / UPDATE_LOCK).is_file() else ""
            exc = DiskFullError(target, f"free some space and run the same command again{kept}")
        elif not isinstance(exc, USER_ERRORS):
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
    with user_errors(parser, args.verbose, output=_output(args)):
        return body(parser, args)


def _output(args: argparse.Namespace) -> Optional[str]:
    """What a command writes, named in a disk-full error: ``--out``, ``--json`` or the index."""
    for key in ("out", "json", "index"):
        value = getattr(args, key, None)
        if value and not isinstance(value, list):
            return str(value)
    return None
