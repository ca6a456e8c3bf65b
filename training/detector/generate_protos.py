"""Regenerate ``training/detector/protos/*_pb2.py`` from ``protos/object_detection/*.proto``.

Users never run this: the generated modules are part of the repository.  Run
it after editing a ``protos/object_detection/*.proto`` file::

    python training/detector/generate_protos.py          # rewrite the modules
    python training/detector/generate_protos.py --check  # exit 1 if they are stale

It needs ``grpcio-tools`` (which bundles ``protoc``).  The sources are compiled
under the virtual path ``training/detector/protos/`` so the modules register
as ``training/detector/protos/<name>.proto`` in the descriptor pool (the proto
package is ``d2r.object_detection``: no clash with the Object Detection API's
``object_detection.protos`` in the same process).  As ``protos/generate.py``
does for ``d2r.protos``, the runtime version check protoc writes is lowered
to protobuf 5.28.0 (TensorFlow 2.20's floor); these plain proto2 messages use
nothing newer.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "protos" / "object_detection"
PACKAGE_PATH = "training/detector/protos"
OUTPUT_DIR = REPO_ROOT / PACKAGE_PATH


def _shared_generator():
    """``protos/generate.py``, the compiler both sets of generated modules share."""
    spec = importlib.util.spec_from_file_location("d2r_protos_generate",
                                                  REPO_ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate(output_dir: Path) -> list[Path]:
    """Compile every ``protos/object_detection/*.proto`` into ``output_dir``; returns the files."""
    sources = sorted(PROTO_DIR.glob("*.proto"))
    if not sources:
        raise FileNotFoundError(f"no .proto files in {PROTO_DIR}")
    return _shared_generator().compile_protos(sources, PROTO_DIR, PACKAGE_PATH, output_dir,
                                              command="training/detector/generate_protos.py")


def stale_files(shipped_dir: Path = OUTPUT_DIR) -> list[str]:
    """Names of shipped modules that differ from freshly generated ones (empty: up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        return [
            fresh.name
            for fresh in generate(Path(tmp))
            if not (shipped_dir / fresh.name).is_file()
            or (shipped_dir / fresh.name).read_text(encoding="utf-8") != fresh.read_text(encoding="utf-8")
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale modules instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            sys.stderr.write(f"stale: {OUTPUT_DIR / name}\n")
        return 1 if stale else 0
    for path in generate(OUTPUT_DIR):
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
