"""The ``d2r`` console command: ``d2r <command> [options]`` (also ``python -m d2r``).

Each command is a module with ``main(argv)``, loaded only when it runs (so
``d2r --help`` is instant and no command pays for another's imports)::

    d2r build-index   index images (d2r.build_index)
    d2r query         query an index with an image or a benchmark (d2r.query)
    d2r evaluate      score rankings on a benchmark (d2r.evaluate)
    d2r extract       extract local features only (d2r.extract)
    d2r demo          the whole system on the synthetic benchmark (d2r.demo)
    d2r verify        hash-check an index (d2r.verify)
    d2r learn         learn whitening / PFA for the CNN baselines (d2r.global_.learn)
    d2r shards        split an index for sharded search on Ray (d2r.distributed.shards)
    d2r add           add images to an index (d2r.add)
    d2r remove        remove images from an index (d2r.remove)
    d2r compact       merge an updated index's segments (d2r.compact)
    d2r serve         HTTP API and web page over an index (d2r.serve)

``python -m d2r.<module>`` runs the same code.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

from d2r import __version__
from d2r.errors import INTERRUPTED

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "build-index": ("d2r.build_index", "index a folder, a list or a benchmark's images"),
    "query": ("d2r.query", "query an index with one image or every query of a benchmark"),
    "evaluate": ("d2r.evaluate", "score a rankings file on a benchmark (mAP, mP@k)"),
    "extract": ("d2r.extract", "extract local features only (resumable, sharded)"),
    "demo": ("d2r.demo", "build, query, evaluate and report on the synthetic benchmark"),
    "verify": ("d2r.verify", "hash every file of an index and check its parts agree"),
    "learn": ("d2r.global_.learn", "learn whitening / PFA for the CNN baselines"),
    "shards": ("d2r.distributed.shards", "split a built index into shards for Ray"),
    "add": ("d2r.add", "add images to an index without rebuilding it"),
    "remove": ("d2r.remove", "remove images from an index"),
    "compact": ("d2r.compact", "merge an updated index's segments, drop removed images"),
    "serve": ("d2r.serve", "serve an index: HTTP API and web page (d2r[serve])"),
}
"""``d2r`` subcommands: name -> (module with ``main(argv)``, one-line description)."""


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
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
    if name not in COMMANDS:
        sys.stderr.write(f"d2r: error: unknown command {name!r}; one of: "
                         f"{', '.join(COMMANDS)}\n")
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except KeyboardInterrupt:  # while loading (TensorFlow takes seconds); run() handles the rest
        sys.stderr.write(f"d2r {name}: interrupted\n")
        return INTERRUPTED
    return module.main(rest)
