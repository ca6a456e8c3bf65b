"""Defaults and command-line options of the Ray mode (``--ray``, ``--ray-address``); no Ray import.

The ``DEFAULT_*`` values are the defaults of both the Ray entry points' keyword
arguments (:func:`d2r.distributed.run_extract_ray`, ``build_index_ray``,
:class:`d2r.distributed.ShardedIndex`) and the command-line flags.
``d2r extract`` and ``python -m d2r.build_index`` call
:func:`add_ray_args` on their parser and, when :func:`ray_requested`, run
:func:`d2r.distributed.run_extract_ray` / :func:`d2r.distributed.build_index_ray`
with ``**ray_kwargs(args)``.  An unset ``num_workers`` means as many extraction
actors as the cluster's CPUs / GPUs allow.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = [
    "DEFAULT_CPUS_PER_WORKER",
    "DEFAULT_GPUS_PER_WORKER",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_ENCODE_BATCH_SIZE",
    "DEFAULT_MAX_RESTARTS",
    "DEFAULT_MAX_TASK_RETRIES",
    "DEFAULT_CPUS_PER_SHARD",
    "add_ray_args",
    "ray_requested",
    "ray_kwargs",
]

DEFAULT_CPUS_PER_WORKER = 1.0
"""Ray CPUs of one extraction (or encoding) actor."""
DEFAULT_GPUS_PER_WORKER = 0.0
"""Ray GPUs of one extraction actor (1 puts one DELF model on each GPU)."""
DEFAULT_CHUNK_SIZE = 128
"""Images per extraction task: a crashed actor loses at most one chunk."""
DEFAULT_ENCODE_BATCH_SIZE = 512
"""Images per quantize + aggregate task of ``build_index_ray``."""
DEFAULT_MAX_RESTARTS = 3
"""Ray restarts of a dead actor."""
DEFAULT_MAX_TASK_RETRIES = 3
"""Ray retries of the task a dead actor was running."""
DEFAULT_CPUS_PER_SHARD = 1.0
"""Ray CPUs reserved by each shard actor of a sharded search."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def add_ray_args(parser: argparse.ArgumentParser, *, shards: bool = False) -> None:
    """Add the ``distributed (Ray)`` option group; ``shards`` adds ``--ray-shards`` (build_index)."""
    group = parser.add_argument_group("distributed (Ray; pip install 'd2r[ray]')")
    group.add_argument("--ray", action="store_true",
                       help="run on Ray: a local instance, or the cluster in $RAY_ADDRESS")
    group.add_argument("--ray-address", metavar="ADDR",
                       help="run on this Ray cluster (implies --ray): 'auto' on a cluster node, "
                            "or ray://HOST:10001")
    group.add_argument("--ray-workers", type=_positive_int, metavar="N",
                       help="extraction actors (default: as many as the cluster's CPUs/GPUs allow)")
    group.add_argument("--ray-gpus-per-worker", type=_non_negative_float,
                       default=DEFAULT_GPUS_PER_WORKER, metavar="G",
                       help="GPUs per extraction actor, e.g. 1 for DELF on GPUs (default %(default)g)")
    group.add_argument("--ray-cpus-per-worker", type=_non_negative_float,
                       default=DEFAULT_CPUS_PER_WORKER, metavar="C",
                       help="CPUs per extraction actor (default %(default)g)")
    group.add_argument("--ray-chunk", type=_positive_int, default=DEFAULT_CHUNK_SIZE, metavar="N",
                       help="images per extraction task; a crash loses at most one "
                            "(default %(default)d)")
    if shards:
        group.add_argument("--ray-shards", type=_positive_int, metavar="N",
                           help="write N shard indexes (OUT/shards) for sharded search instead "
                                "of OUT/search")


def ray_requested(args: argparse.Namespace) -> bool:
    """Whether ``--ray`` or ``--ray-address`` was given."""
    return bool(getattr(args, "ray", False) or getattr(args, "ray_address", None))


def ray_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``run_extract_ray`` / ``build_index_ray`` from parsed options."""
    kwargs: dict[str, Any] = {
        "address": args.ray_address,
        "num_workers": args.ray_workers,
        "num_gpus_per_worker": args.ray_gpus_per_worker,
        "num_cpus_per_worker": args.ray_cpus_per_worker,
        "chunk_size": args.ray_chunk,
    }
    if getattr(args, "ray_shards", None):
        kwargs["num_shards"] = args.ray_shards
    return kwargs
