"""Speed of `.delf` file I/O: d2r's numpy record codec vs. the reference's per-message protobuf.

The reference (tensorflow/models research/delf, ``feature_io`` + ``datum_io``)
builds one ``DelfFeature`` message per keypoint (``ArrayToDatum`` per
descriptor) and converts back with a per-keypoint loop.  That approach is
re-implemented here with the same generated classes (without TensorFlow's
file layer: plain ``open``), and timed against :func:`d2r.io.delf_files.write_delf`
/ :func:`~d2r.io.delf_files.read_delf` on the same data, in the same run.
Both write byte-identical files; the script checks that, and that both
readers return the same arrays.

    python benchmarks/delf_io_speed.py            # 1000 files x 1000 features, D = 128 and 40
    python benchmarks/delf_io_speed.py --files 50 --features 300    # quick run
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from d2r.io.delf_files import parse_delf, read_delf, serialize_delf, write_delf
from d2r.protos import datum_pb2, feature_pb2
from d2r.types import LocalFeatures

_POOL = 8  # distinct feature sets cycled over the files


def _reference_array_to_datum(array: np.ndarray) -> datum_pb2.DatumProto:
    datum = datum_pb2.DatumProto()
    datum.float_list.value.extend(array.astype("float32").flat)
    datum.shape.dim.extend(array.shape)
    return datum


def reference_serialize(locations_yx, scales, descriptors, attention) -> bytes:
    """The reference's ``feature_io.SerializeToString``: one message per keypoint."""
    orientations = np.zeros(len(attention), np.float32)
    message = feature_pb2.DelfFeatures()
    for i in range(len(attention)):
        feature = message.feature.add()
        feature.y = locations_yx[i, 0]
        feature.x = locations_yx[i, 1]
        feature.scale = scales[i]
        feature.orientation = orientations[i]
        feature.strength = attention[i]
        feature.descriptor.CopyFrom(_reference_array_to_datum(descriptors[i,]))
    return message.SerializeToString()


def reference_parse(data: bytes):
    """The reference's ``feature_io.ParseFromString``: per-keypoint conversion loop."""
    message = feature_pb2.DelfFeatures.FromString(data)
    n = len(message.feature)
    if n == 0:
        return tuple(np.array([]) for _ in range(5))
    first = message.feature[0].descriptor
    dim = len(np.array(first.float_list.value).astype("float32").reshape(first.shape.dim))
    locations, descriptors = np.zeros([n, 2]), np.zeros([n, dim])
    scales, attention, orientations = np.zeros([n]), np.zeros([n]), np.zeros([n])
    for i in range(n):
        feature = message.feature[i]
        locations[i, 0] = feature.y
        locations[i, 1] = feature.x
        scales[i] = feature.scale
        descriptor = feature.descriptor
        descriptors[i,] = np.array(descriptor.float_list.value).astype("float32").reshape(
            descriptor.shape.dim
        )
        attention[i] = feature.strength
        orientations[i] = feature.orientation
    return locations, scales, descriptors, attention, orientations


def reference_write(path: Path, *arrays) -> None:
    """The reference's ``feature_io.WriteToFile`` (plain ``open`` instead of ``tf.io.gfile``)."""
    with open(path, "wb") as f:
        f.write(reference_serialize(*arrays))


def reference_read(path: Path):
    """The reference's ``feature_io.ReadFromFile`` (plain ``open`` instead of ``tf.io.gfile``)."""
    with open(path, "rb") as f:
        return reference_parse(f.read())


def _pool(num_features: int, dim: int, seed: int) -> list[LocalFeatures]:
    rng = np.random.default_rng(seed)
    return [
        LocalFeatures(
            locations=rng.uniform(0, 1024, (num_features, 2)),
            descriptors=rng.normal(size=(num_features, dim)),
            scales=rng.uniform(0.25, 2.0, num_features),
            scores=rng.uniform(0, 1000, num_features),
            image_size=(1024, 768),
        )
        for _ in range(_POOL)
    ]


def _timed(fn, count: int) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn(0) ... fn(count - 1)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        fn(i)
    return time.perf_counter() - wall, time.process_time() - cpu


def run(
    num_files: int, num_features: int, dim: int, workdir: Path
) -> tuple[dict[str, tuple[float, float]], int]:
    pool = _pool(num_features, dim, seed=dim)
    reference_inputs = [
        (f.locations[:, ::-1].astype(np.float64), f.scales, f.descriptors, f.scores) for f in pool
    ]
    ours_dir, ref_dir = workdir / "ours", workdir / "reference"
    ours_dir.mkdir()
    ref_dir.mkdir()

    def name(directory: Path, i: int) -> Path:
        return directory / f"{i:06d}.delf"

    encoded = [serialize_delf(f) for f in pool]
    times = {
        "ours_encode": _timed(lambda i: serialize_delf(pool[i % _POOL]), num_files),
        "ours_decode": _timed(lambda i: parse_delf(encoded[i % _POOL]), num_files),
        "ref_encode": _timed(
            lambda i: reference_serialize(*reference_inputs[i % _POOL]), num_files
        ),
        "ref_decode": _timed(lambda i: reference_parse(encoded[i % _POOL]), num_files),
        "ours_write": _timed(lambda i: write_delf(name(ours_dir, i), pool[i % _POOL]), num_files),
        "ours_read": _timed(lambda i: read_delf(name(ours_dir, i)), num_files),
        "ref_write": _timed(
            lambda i: reference_write(name(ref_dir, i), *reference_inputs[i % _POOL]), num_files
        ),
        "ref_read": _timed(lambda i: reference_read(name(ref_dir, i)), num_files),
    }
    for i in range(min(num_files, _POOL)):
        if name(ours_dir, i).read_bytes() != name(ref_dir, i).read_bytes():
            raise RuntimeError(f"file {i}: d2r and reference bytes differ (D={dim})")
        ours = read_delf(name(ref_dir, i))
        ref_locations, ref_scales, ref_descriptors, ref_attention, _ = reference_read(
            name(ours_dir, i)
        )
        if not (
            np.array_equal(ours.locations[:, ::-1], ref_locations)
            and np.array_equal(ours.descriptors, ref_descriptors)
            and np.array_equal(ours.scales, ref_scales)
            and np.array_equal(ours.scores, ref_attention)
        ):
            raise RuntimeError(f"file {i}: d2r and reference readers disagree (D={dim})")
    shutil.rmtree(ours_dir)
    shutil.rmtree(ref_dir)
    return times, len(encoded[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000, help="files written and read per codec")
    parser.add_argument("--features", type=int, default=1000, help="features per file")
    parser.add_argument(
        "--dims", type=int, nargs="+", default=[128, 40], help="descriptor dimensions"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="scratch directory (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.files < 1 or args.features < 0 or any(d < 1 for d in args.dims):
        parser.error("--files must be >= 1, --features >= 0, --dims >= 1")

    print(
        f"{args.files} files x {args.features} features; seconds for all files, wall (CPU); "
        "ratio = reference / d2r, by wall and by CPU time\n"
        "encode/decode: bytes in memory; write/read: files on disk (write includes encoding, "
        "read includes decoding)"
    )
    print(
        f"{'D':>5} {'op':>7} {'d2r s':>16} {'reference s':>18} "
        f"{'ratio':>8} {'(CPU)':>8} {'MB/file':>8}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for dim in args.dims:
            workdir = Path(tmp) / f"d{dim}"
            workdir.mkdir()
            times, file_bytes = run(args.files, args.features, dim, workdir)
            for op in ("encode", "decode", "write", "read"):
                (ours, ours_cpu), (ref, ref_cpu) = times[f"ours_{op}"], times[f"ref_{op}"]
                print(
                    f"{dim:>5} {op:>7} {ours:>8.3f} ({ours_cpu:>5.2f}) "
                    f"{ref:>9.3f} ({ref_cpu:>6.2f}) "
                    f"{ref / max(ours, 1e-9):>7.1f}x {ref_cpu / max(ours_cpu, 1e-9):>7.1f}x "
                    f"{file_bytes / 1e6:>8.3f}"
                )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
