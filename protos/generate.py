"""Regenerate the shipped Python protobuf modules in ``d2r/protos/``.

Users never run this: the generated ``d2r/protos/*_pb2.py`` files are part of
the repository.  Run it after editing a ``protos/*.proto`` file::

    python protos/generate.py            # rewrite d2r/protos/*_pb2.py
    python protos/generate.py --check    # exit 1 if the shipped files are stale

It needs ``grpcio-tools`` (which bundles ``protoc``) recent enough that its
protoc writes a runtime version check into Python code (the script stops with
a clear error otherwise).  The shipped files come from grpcio-tools 1.85.1
(libprotoc 35.1).

The ``.proto`` sources live flat in ``protos/`` but are compiled under the
virtual path ``d2r/protos/``, so the generated modules import each other as
``d2r.protos.<name>_pb2`` and register as ``d2r/protos/<name>.proto`` in the
protobuf descriptor pool (no clash with the DELF reference's
``delf/protos/*.proto`` in the same process).

Runtime compatibility: protoc stamps its own version into the generated code,
and the protobuf runtime refuses gencode newer than itself.  The generated
code for these plain proto2 messages uses nothing newer than protobuf 5.28
provides, so this script lowers the stamp to :data:`MIN_PROTOBUF_RUNTIME`
(TensorFlow 2.20's floor, ``protobuf>=5.28.0``).  The shipped modules were
checked against protobuf 5.28.0 (upb and pure-python implementations) and
7.36.2 (the project environment's runtime).  Older runtimes (4.x) lack
``google.protobuf.runtime_version`` and cannot import them.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import re
import sys
import subprocess
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent
PACKAGE_PATH = "d2r/protos"
OUTPUT_DIR = REPO_ROOT / PACKAGE_PATH

#: Lowest protobuf Python runtime the generated modules declare they accept.
MIN_PROTOBUF_RUNTIME = (5, 28, 0)

_VERSION_CHECK = re.compile(
    r"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*)"
    r"\d+(,\s*)\d+(,\s*)\d+(,)"
)
_PROTOC_VERSION = re.compile(r"^# Protobuf Python Version: (.+)$", re.M)
_SERIALIZED_FILE = re.compile(r"AddSerializedFile\((b'.*?')\)")
_HEADER_NOTE = (
    "# Regenerate with `python {command}`; the runtime version check is\n"
    "# lowered to protobuf {floor} there (see its docstring).\n"
)


def proto_sources() -> list[Path]:
    """The ``.proto`` files compiled into ``d2r.protos``, sorted by name."""
    sources = sorted(PROTO_DIR.glob("*.proto"))
    if not sources:
        raise FileNotFoundError(f"no .proto files in {PROTO_DIR}")
    return sources


def _lower_runtime_floor(code: str, source: str, command: str = "protos/generate.py") -> str:
    floor = MIN_PROTOBUF_RUNTIME
    code, count = _VERSION_CHECK.subn(
        lambda m: f"{m.group(1)}{floor[0]}{m.group(2)}{floor[1]}{m.group(3)}{floor[2]}{m.group(4)}",
        code,
    )
    if count != 1:
        raise RuntimeError(
            f"generated code for {source} has {count} runtime version checks, expected 1; "
            "use a newer grpcio-tools"
        )
    marker = "# source: "
    at = code.index(marker)
    note = _HEADER_NOTE.format(command=command, floor=".".join(map(str, floor)))
    return code[:at] + note + code[at:]


def compile_protos(sources: list[Path], proto_dir: Path, package_path: str, output_dir: Path,
                   *, command: str) -> list[Path]:
    """Compile ``sources`` (in ``proto_dir``, registered under ``package_path``) into ``output_dir``.

    Returns the written ``<name>_pb2.py`` files, sorted, each with its runtime version
    check lowered (:data:`MIN_PROTOBUF_RUNTIME`) and a note naming ``command``.
    Raises ImportError without grpcio-tools and RuntimeError when protoc fails.
    protoc runs in a child process: grpc_tools' bundled protobuf library crashes a
    process that has already loaded TensorFlow's.
    """
    if importlib.util.find_spec("grpc_tools") is None:
        raise ImportError("regenerating protobuf code needs grpcio-tools (pip install grpcio-tools)")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"--proto_path={package_path}={proto_dir}",
            f"--python_out={tmp}",
            *(f"{package_path}/{src.name}" for src in sources),
        ]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"protoc failed with status {proc.returncode}: {' '.join(args)}\n"
                               f"{proc.stderr}")
        written = []
        for src in sources:
            name = f"{src.stem}_pb2.py"
            code = (Path(tmp) / package_path / name).read_text(encoding="utf-8")
            target = output_dir / name
            target.write_text(_lower_runtime_floor(code, src.name, command), encoding="utf-8")
            written.append(target)
    return sorted(written)


def generate(output_dir: Path) -> list[Path]:
    """Compile every ``protos/*.proto`` into ``output_dir/<name>_pb2.py``; returns the files."""
    return compile_protos(proto_sources(), PROTO_DIR, PACKAGE_PATH, output_dir,
                          command="protos/generate.py")


def _protoc_version(code: str) -> str | None:
    match = _PROTOC_VERSION.search(code)
    return match.group(1) if match else None


def _serialized_descriptor(code: str) -> bytes | None:
    match = _SERIALIZED_FILE.search(code)
    return ast.literal_eval(match.group(1)) if match else None


def stale_files(shipped_dir: Path = OUTPUT_DIR) -> list[str]:
    """Differences between freshly generated modules and those in ``shipped_dir``.

    With the protoc version that made the shipped files, the text must match
    exactly; with another version, the embedded serialized descriptors (the
    compiled ``.proto`` content) and the runtime floor must match.  Returns one
    note or unified diff per stale file; empty when everything is up to date.
    """
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in generate(Path(tmp)):
            shipped = Path(shipped_dir) / fresh.name
            if not shipped.is_file():
                problems.append(f"{shipped}: missing")
                continue
            new, old = fresh.read_text(encoding="utf-8"), shipped.read_text(encoding="utf-8")
            if _protoc_version(new) != _protoc_version(old):
                same = _serialized_descriptor(new) == _serialized_descriptor(old) and (
                    _VERSION_CHECK.search(new).group(0) == _VERSION_CHECK.search(old).group(0)
                )
                if not same:
                    problems.append(f"{shipped}: compiled .proto content differs")
            elif new != old:
                diff = difflib.unified_diff(
                    old.splitlines(True), new.splitlines(True), str(shipped), "regenerated"
                )
                problems.append("".join(diff))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR, help="output directory")
    parser.add_argument(
        "--check", action="store_true", help="compare with the files in --out instead of writing"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = stale_files(args.out)
        for problem in problems:
            sys.stderr.write(problem + "\n")
        return 1 if problems else 0
    for path in generate(args.out):
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
