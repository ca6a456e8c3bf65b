"""The ``d2r`` console command: ``d2r <command> [options]`` (also ``python -m d2r``).

Each command is the module ``d2r.cli.<command>`` (``-`` read as ``_``) with
``main(argv)``, loaded only when it runs, so ``d2r --help`` is instant and no
command pays for another's imports.  ``python -m d2r.build_index`` and
``python -m d2r.query``, the system's documented entry points, run the same code.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

from d2r import __version__
from d2r.errors import INTERRUPTED

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, str] = {
    "build-index": "index a folder, a list or a benchmark's images",
    "query": "query an index with one image or every query of a benchmark",
    "evaluate": "score a rankings file on a benchmark (mAP, mP@k)",
    "extract": "extract local features only (resumable, sharded)",
    "demo": "build, query, evaluate and report on the synthetic benchmark",
    "synthetic": "generate the synthetic landmark benchmark (revisitop layout)",
    "check": "hash every file of an index and check its parts agree",
    "learn": "learn whitening / PFA for the CNN baselines",
    "shards": "split a built index into shards for Ray",
    "add": "add images to an index without rebuilding it",
    "remove": "remove images from an index",
    "compact": "merge an updated index's segments, drop removed images",
    "serve": "serve an index: HTTP API and web page (d2r[serve])",
}
"""``d2r`` subcommands: name -> one-line description (the code: :func:`command_module`)."""

RENAMED = {"verify": "check"}
"""Former command names that still run: ``verify`` is ``check`` (integrity, not spatial
verification)."""


def command_module(name: str) -> str:
    """The module holding command ``name``'s ``main`` (``build-index``: ``d2r.cli.build_index``)."""
    return "d2r.cli." + RENAMED.get(name, name).replace("-", "_")


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, about in COMMANDS.items()]
    return ("usage: d2r <command> [options]   (d2r <command> --help for its options)\n\n"
            "commands:\n" + "\n".join(lines) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``d2r <command> ARGS``; returns the command's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"d2r {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS and name not in RENAMED:
        sys.stderr.write(f"d2r: error: unknown command {name!r}; one of: "
                         f"{', '.join(COMMANDS)}\n")
        return 2
    try:
        module = importlib.import_module(command_module(name))
    except KeyboardInterrupt:  # while loading (TensorFlow takes seconds); run() handles the rest
        sys.stderr.write(f"d2r {name}: interrupted\n")
        return INTERRUPTED
    return module.main(rest)
