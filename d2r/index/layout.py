"""The index directory a build writes: its parts' names and its manifest ``index.json``.

::

    INDEX/features/     feature store (resumable)
    INDEX/maps/         activation maps for AML re-ranking (when the method keeps them)
    INDEX/boxes/        regions per image as .boxes files (when regions are used)
    INDEX/codebooks/    trained codebooks, one folder per codebook config
    INDEX/search/       the search structure (an :class:`~d2r.index.registry.Index`)
    INDEX/index.json    manifest: resolved config, codebook hash, feature config, counts
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from d2r import __version__
from d2r.config import Config, to_dict

__all__ = [
    "MANIFEST", "FEATURES", "MAPS", "BOXES", "SEARCH", "FORMAT", "VERSION",
    "IndexMismatchError", "IndexManifestError", "codebook_dir", "index_record", "read_manifest",
    "read_versioned_json",
]

MANIFEST = "index.json"
FEATURES = "features"
MAPS = "maps"
BOXES = "boxes"
SEARCH = "search"
FORMAT = "d2r-index"
VERSION = 1


class IndexMismatchError(ValueError):
    """An index directory whose parts do not fit together, or a config it was not built with."""


class IndexManifestError(IndexMismatchError):
    """An ``index.json`` that is unreadable or of another format."""


def codebook_dir(out: Path, config: Config) -> Path:
    """Where the codebook trained for ``config.codebook`` lives inside index directory ``out``."""
    spec = json.dumps(to_dict(config.codebook), sort_keys=True).encode()
    return out / "codebooks" / hashlib.sha256(spec).hexdigest()[:16]


def index_record(config: Config, codebook, out: Path, *, kind: str, features: dict,
                 num_images: int, num_skipped: int) -> dict[str, Any]:
    """The ``index.json`` content (without timing) of an index built into ``out``.

    ``codebook`` is the :class:`~d2r.codebook.Codebook` used, or None.
    """
    return {
        "format": FORMAT,
        "version": VERSION,
        "d2r_version": __version__,
        "kind": kind,
        "config": to_dict(config),
        "codebook": None if codebook is None else {
            "sha256": codebook.sha256, "num_words": codebook.num_words, "dim": codebook.dim,
            "path": os.path.relpath(config.codebook.path or codebook_dir(out, config), out)},
        "features": features,
        "num_images": num_images,
        "num_skipped": num_skipped,
    }


def read_versioned_json(path: Path, *, format: str, version: int, missing: str,
                        error: type[Exception]) -> dict[str, Any]:
    """The JSON object in ``path`` whose ``format`` and ``version`` are the given ones.

    A missing file raises FileNotFoundError(``missing``); unreadable JSON or another
    format / version raises ``error`` naming the file.
    """
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(missing) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(content, dict) or content.get("format") != format \
            or content.get("version") != version:
        raise error(f"{path}: not a {format} v{version} manifest")
    return content


def read_manifest(index_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of index directory ``index_dir``, checked for format and version."""
    return read_versioned_json(
        Path(index_dir) / MANIFEST, format=FORMAT, version=VERSION, error=IndexManifestError,
        missing=f"{Path(index_dir)} is not a d2r index (no {MANIFEST}); was the build "
                "interrupted? Run build_index again")
