"""Tests for d2r.io.delf_files against protobuf messages built the DELF reference's way."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from d2r.io import delf_files as df
from d2r.protos import box_pb2, datum_pb2, feature_pb2
from d2r.types import Boxes, LocalFeatures

FALLBACK = "non-canonical"


def _features(n: int, dim: int, seed: int = 0, image_size=(640, 480)) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    return LocalFeatures(
        locations=rng.uniform(0, 600, (n, 2)),
        descriptors=rng.normal(size=(n, dim)),
        scales=rng.uniform(0.25, 2.0, n),
        scores=rng.uniform(0, 800, n),
        image_size=image_size,
    )


# The reference's feature_io, re-derived with the generated classes (one message per keypoint).


def _reference_serialize(locations_yx, scales, descriptors, attention, orientations=None) -> bytes:
    n = len(attention)
    orientations = np.zeros(n, np.float32) if orientations is None else orientations
    message = feature_pb2.DelfFeatures()
    for i in range(n):
        feature = message.feature.add()
        feature.y = locations_yx[i, 0]
        feature.x = locations_yx[i, 1]
        feature.scale = scales[i]
        feature.orientation = orientations[i]
        feature.strength = attention[i]
        feature.descriptor.float_list.value.extend(descriptors[i].astype(np.float32).tolist())
        feature.descriptor.shape.dim.extend(descriptors[i].shape)
    return message.SerializeToString()


def _reference_parse(data: bytes):
    message = feature_pb2.DelfFeatures.FromString(data)
    n = len(message.feature)
    if n == 0:
        return tuple(np.array([]) for _ in range(5))
    dim = len(message.feature[0].descriptor.float_list.value)
    locations, descriptors = np.zeros([n, 2]), np.zeros([n, dim])
    scales, attention, orientations = np.zeros(n), np.zeros(n), np.zeros(n)
    for i, f in enumerate(message.feature):
        locations[i] = f.y, f.x
        scales[i], attention[i], orientations[i] = f.scale, f.strength, f.orientation
        descriptors[i] = np.array(f.descriptor.float_list.value).reshape(f.descriptor.shape.dim)
    return locations, scales, descriptors, attention, orientations


def _ours_as_reference(features: LocalFeatures, orientations: np.ndarray):
    return (
        features.locations[:, ::-1].astype(np.float64),
        features.scales.astype(np.float64),
        features.descriptors.astype(np.float64),
        features.scores.astype(np.float64),
        orientations.astype(np.float64),
    )


def _assert_same_features(a: LocalFeatures, b: LocalFeatures) -> None:
    for name in ("locations", "descriptors", "scales", "scores"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert getattr(a, name).dtype == np.float32
    assert a.image_size == b.image_size


# ---------------------------------------------------------------- .delf


@pytest.mark.parametrize("dim", [1, 40, 128, 1024])
@pytest.mark.parametrize("n", [0, 1, 1000])
def test_delf_bytes_identical_to_protobuf_serialization(n, dim):
    features = _features(n, dim, seed=n + dim)
    orientations = np.random.default_rng(1).uniform(-3, 3, n).astype(np.float32)
    ours = df.serialize_delf(features, orientations=orientations)
    reference = _reference_serialize(
        features.locations[:, ::-1],
        features.scales,
        features.descriptors,
        features.scores,
        orientations,
    )
    assert ours == reference


def test_delf_layout_of_one_known_feature():
    features = LocalFeatures([[1.0, 2.0]], [[1.0, 2.0]], [0.5], [-1.0], (10, 10))
    assert df.serialize_delf(features).hex() == (
        "0a2c0a110a030a0102120a0a080000803f00000040"
        "150000803f1d00000040250000003f2d0000000035000080bf"
    )


@pytest.mark.parametrize("dim", [40, 128])
def test_delf_round_trip_through_file(tmp_path, dim):
    features = _features(57, dim, image_size=(1024, 768))
    orientations = np.linspace(-1, 1, 57, dtype=np.float32)
    path = tmp_path / "img.delf"
    df.write_delf(path, features, orientations=orientations)
    back, back_orientations = df.read_delf_with_orientations(path, image_size=(1024, 768), dim=dim)
    _assert_same_features(back, features)
    np.testing.assert_array_equal(back_orientations, orientations)
    assert back_orientations.dtype == np.float32
    assert df.read_delf(path).image_size == (0, 0)
    df.write_delf(path, features)
    _, default_orientations = df.read_delf_with_orientations(path)
    np.testing.assert_array_equal(default_orientations, np.zeros(57, np.float32))


def test_our_file_read_field_by_field_with_generated_classes(tmp_path):
    features = _features(5, 40)
    path = tmp_path / "a.delf"
    df.write_delf(path, features, orientations=np.arange(5, dtype=np.float32))
    message = feature_pb2.DelfFeatures.FromString(path.read_bytes())
    assert len(message.feature) == 5
    for i, f in enumerate(message.feature):
        assert f.x == features.locations[i, 0] and f.y == features.locations[i, 1]
        assert f.scale == features.scales[i] and f.strength == features.scores[i]
        assert f.orientation == i and f.HasField("orientation")
        assert list(f.descriptor.shape.dim) == [40]
        assert f.descriptor.WhichOneof("kind_oneof") == "float_list"
        values = np.float32(f.descriptor.float_list.value)
        np.testing.assert_array_equal(values, features.descriptors[i])
    reference = _reference_parse(path.read_bytes())
    ours_arrays = _ours_as_reference(features, np.arange(5, dtype=np.float32))
    for ours, theirs in zip(ours_arrays, reference):
        np.testing.assert_array_equal(ours, theirs)


def test_reference_written_file_takes_the_fast_path(tmp_path, caplog):
    rng = np.random.default_rng(3)
    locations_yx = rng.uniform(0, 500, (200, 2))  # float64, as the reference extractor returns
    scales, attention = rng.uniform(0.25, 2, 200), rng.uniform(0, 900, 200)
    descriptors = rng.normal(size=(200, 128))
    path = tmp_path / "ref.delf"
    path.write_bytes(_reference_serialize(locations_yx, scales, descriptors, attention))
    with caplog.at_level(logging.DEBUG, logger="d2r.io.delf_files"):
        features, orientations = df.read_delf_with_orientations(path, image_size=(500, 500))
    assert FALLBACK not in caplog.text
    reference = _reference_parse(path.read_bytes())
    for ours, theirs in zip(_ours_as_reference(features, orientations), reference):
        np.testing.assert_array_equal(ours, theirs)


def _one_feature(**fields) -> feature_pb2.DelfFeature:
    f = feature_pb2.DelfFeature(**fields)
    f.descriptor.shape.dim.append(3)
    f.descriptor.float_list.value.extend([1.0, 2.0, 3.0])
    return f


def _non_canonical_files() -> dict[str, bytes]:
    full = dict(x=1.0, y=2.0, scale=3.0, orientation=4.0, strength=5.0)
    canonical = feature_pb2.DelfFeatures(feature=[_one_feature(**full)]).SerializeToString()
    missing = feature_pb2.DelfFeatures(
        feature=[_one_feature(**full), _one_feature(x=1.0, y=2.0, strength=5.0)]
    ).SerializeToString()
    unknown = canonical[:1] + bytes([canonical[1] + 2]) + canonical[2:] + bytes([0x38, 0x07])
    # Fields out of order: strength first, then the rest (parsers accept any order).
    body = bytes([0x35]) + np.float32(5).tobytes() + canonical[2:-5]
    reordered = bytes([0x0A, len(body)]) + body
    # Descriptor values not packed (one fixed32 per value), as other encoders may write.
    d = bytes([0x0A, 0x03, 0x0A, 0x01, 0x03]) + bytes([0x12, 15]) + b"".join(
        bytes([0x0D]) + np.float32(v).tobytes() for v in (1, 2, 3)
    )
    feature = bytes([0x0A, len(d)]) + d + canonical[-25:]  # x .. strength
    unpacked = bytes([0x0A, len(feature)]) + feature
    return {
        "canonical_then_missing_fields": missing,
        "unknown_field": unknown,
        "reordered_fields": reordered,
        "unpacked_descriptor": unpacked,
    }


@pytest.mark.parametrize("name", list(_non_canonical_files()))
def test_non_canonical_files_fall_back_to_protobuf(name, caplog):
    data = _non_canonical_files()[name]
    with caplog.at_level(logging.DEBUG, logger="d2r.io.delf_files"):
        features, orientations = df.parse_delf(data, source=name)
    assert FALLBACK in caplog.text
    expected = _reference_parse(data)
    for ours, theirs in zip(_ours_as_reference(features, orientations), expected):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(features.descriptors[0], [1, 2, 3])


def test_missing_fields_read_as_proto2_defaults():
    data = _non_canonical_files()["canonical_then_missing_fields"]
    features, orientations = df.parse_delf(data)
    assert features.scales[1] == 0 and orientations[1] == 0 and features.scores[1] == 5


def test_fast_path_result_equals_fallback_on_random_features():
    features = _features(300, 40, seed=9)
    data = df.serialize_delf(features)
    fallback = df._delf_protobuf(data, 0, "x")
    fast = df._delf_fast(data)
    assert fast is not None
    for name in fallback:
        np.testing.assert_array_equal(fast[name], fallback[name], err_msg=name)


def test_empty_delf_file(tmp_path):
    path = tmp_path / "empty.delf"
    df.write_delf(path, LocalFeatures.empty(128, (10, 20)))
    assert path.read_bytes() == b""
    assert _reference_parse(b"")[0].size == 0
    features = df.read_delf(path, image_size=(10, 20), dim=128)
    assert len(features) == 0 and features.descriptors.shape == (0, 128)
    assert features.image_size == (10, 20)
    assert df.read_delf(path).descriptors.shape == (0, 0)
    _, orientations = df.read_delf_with_orientations(path)
    assert orientations.shape == (0,)


def test_delf_errors(tmp_path):
    features = _features(4, 8)
    data = df.serialize_delf(features)
    truncated = tmp_path / "truncated.delf"
    truncated.write_bytes(data[:-3])
    with pytest.raises(ValueError, match="truncated.delf"):
        df.read_delf(truncated)
    garbage = tmp_path / "garbage.delf"
    garbage.write_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(ValueError, match="garbage.delf.*DelfFeatures"):
        df.read_delf(garbage)
    with pytest.raises(ValueError, match="dimension 8, expected 128"):
        df.parse_delf(data, dim=128)
    mixed = feature_pb2.DelfFeatures(feature=[_one_feature()])
    extra = mixed.feature.add()
    extra.descriptor.shape.dim.append(2)
    extra.descriptor.float_list.value.extend([1.0, 2.0])
    with pytest.raises(ValueError, match="mixed.*different sizes"):
        df.parse_delf(mixed.SerializeToString(), source="mixed")
    nan = features.descriptors.copy()
    nan_data = bytearray(data)
    offset = data.index(nan[0, :1].tobytes())
    nan_data[offset : offset + 4] = np.float32(np.nan).tobytes()
    with pytest.raises(ValueError, match="nan.delf.*NaN"):
        df.parse_delf(bytes(nan_data), source="nan.delf")
    with pytest.raises(ValueError, match="orientations must have shape"):
        df.serialize_delf(features, orientations=np.zeros(3))
    with pytest.raises(ValueError, match="dimension 0"):
        df.serialize_delf(LocalFeatures(np.zeros((1, 2)), np.zeros((1, 0)), [1], [1], (1, 1)))
    with pytest.raises(FileNotFoundError, match="missing.delf"):
        df.read_delf(tmp_path / "missing.delf")


# ---------------------------------------------------------------- atomic writes


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    path = tmp_path / "x.delf"
    df.write_delf(path, _features(3, 4))
    before = path.read_bytes()
    with pytest.raises(ValueError):
        df.write_delf(path, _features(3, 4), orientations=np.zeros(7))
    assert path.read_bytes() == before
    df.write_delf(path, _features(2, 4, seed=5))
    assert path.read_bytes() != before
    assert sorted(os.listdir(tmp_path)) == ["x.delf"]
    with pytest.raises(FileNotFoundError, match="no_dir"):
        df.write_datum(tmp_path / "no_dir" / "a.datum", np.zeros(3))


def test_failed_write_removes_temporary_file(tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(df.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        df.write_datum(tmp_path / "a.datum", np.zeros(3))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- .boxes


def _reference_boxes(normalized_yxyx, scores, class_indices) -> bytes:
    message = box_pb2.Boxes()
    for i in range(len(scores)):
        message.box.add(
            ymin=normalized_yxyx[i, 0],
            xmin=normalized_yxyx[i, 1],
            ymax=normalized_yxyx[i, 2],
            xmax=normalized_yxyx[i, 3],
            score=scores[i],
            class_index=int(class_indices[i]),
        )
    return message.SerializeToString()


def _random_boxes(m: int, size=(640, 480), labels=None, seed=0) -> Boxes:
    rng = np.random.default_rng(seed)
    corners = np.sort(rng.uniform(0, 1, (m, 2, 2)), axis=1)  # [box, min/max, x/y]
    xyxy = corners.reshape(m, 4) * np.array(size * 2)
    labels = rng.integers(0, 128, m) if labels is None else labels
    return Boxes(xyxy, rng.uniform(0, 1, m), labels)


def test_boxes_hand_checked():
    boxes = Boxes([[64.0, 48.0, 320.0, 480.0]], [0.75], [1])
    data = df.serialize_boxes(boxes, image_size=(640, 480))
    message = box_pb2.Boxes.FromString(data)
    box = message.box[0]
    assert (box.ymin, box.xmin, box.ymax, box.xmax) == pytest.approx((0.1, 0.1, 1.0, 0.5))
    assert box.score == 0.75 and box.class_index == 1
    back = df.parse_boxes(data, image_size=(640, 480))
    np.testing.assert_allclose(back.xyxy, boxes.xyxy, rtol=1e-6)
    normalized = df.parse_boxes(data, image_size=(1, 1))
    np.testing.assert_allclose(normalized.xyxy, [[0.1, 0.1, 0.5, 1.0]], rtol=1e-6)


@pytest.mark.parametrize("labels", [None, np.array([0, -1, 300, 2**31 - 1, 5])])
def test_boxes_round_trip_and_identity(tmp_path, labels):
    boxes = _random_boxes(5, labels=labels)
    size = (640, 480)
    xyxy = boxes.xyxy.astype(np.float64)
    normalized = (xyxy[:, [1, 0, 3, 2]] / np.array([480, 640, 480, 640])).astype(np.float32)
    ours = df.serialize_boxes(boxes, image_size=size)
    assert ours == _reference_boxes(normalized, boxes.scores, boxes.labels)
    path = tmp_path / "img.boxes"
    df.write_boxes(path, boxes, image_size=size)
    back = df.read_boxes(path, image_size=size)
    np.testing.assert_allclose(back.xyxy, boxes.xyxy, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(back.scores, boxes.scores)
    np.testing.assert_array_equal(back.labels, boxes.labels)
    assert back.labels.dtype == np.int32


def test_reference_boxes_file_read_in_pixels(caplog):
    normalized = np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]])
    data = _reference_boxes(normalized, [0.9, 0.3], [1, 0])
    with caplog.at_level(logging.DEBUG, logger="d2r.io.delf_files"):
        boxes = df.parse_boxes(data, image_size=(200, 100))
    assert FALLBACK not in caplog.text
    np.testing.assert_allclose(boxes.xyxy, [[40, 10, 120, 50], [0, 0, 200, 100]], rtol=1e-6)
    np.testing.assert_allclose(boxes.scores, [0.9, 0.3], rtol=1e-7)


def test_boxes_missing_fields_fall_back(caplog):
    data = box_pb2.Boxes(box=[box_pb2.Box(ymax=0.5, xmax=0.5, score=0.1)]).SerializeToString()
    with caplog.at_level(logging.DEBUG, logger="d2r.io.delf_files"):
        boxes = df.parse_boxes(data, image_size=(10, 10))
    assert FALLBACK in caplog.text
    np.testing.assert_allclose(boxes.xyxy, [[0, 0, 5, 5]])
    assert boxes.labels.tolist() == [0]


def test_empty_boxes(tmp_path):
    path = tmp_path / "e.boxes"
    df.write_boxes(path, Boxes.empty(), image_size=(5, 5))
    assert path.read_bytes() == b""
    boxes = df.read_boxes(path, image_size=(5, 5))
    assert len(boxes) == 0 and boxes.xyxy.shape == (0, 4) and boxes.labels.dtype == np.int32


def test_boxes_errors(tmp_path):
    boxes = _random_boxes(2)
    for bad in [(0, 10), (10, -1), (float("nan"), 1), (1,), "ab"]:
        with pytest.raises(ValueError, match="image_size"):
            df.serialize_boxes(boxes, image_size=bad)
    inverted = tmp_path / "inverted.boxes"
    inverted.write_bytes(_reference_boxes(np.array([[0.5, 0.5, 0.1, 0.1]]), [1.0], [0]))
    with pytest.raises(ValueError, match="inverted.boxes.*x1 <= x2"):
        df.read_boxes(inverted, image_size=(10, 10))
    truncated = tmp_path / "truncated.boxes"
    truncated.write_bytes(df.serialize_boxes(boxes, image_size=(4, 4))[:-2])
    with pytest.raises(ValueError, match="truncated.boxes"):
        df.read_boxes(truncated, image_size=(4, 4))


# ---------------------------------------------------------------- datum


def _reference_datum(array: np.ndarray) -> datum_pb2.DatumProto:
    datum = datum_pb2.DatumProto()
    if array.dtype.kind == "f":
        datum.float_list.value.extend(array.astype(np.float32).ravel().tolist())
    else:
        datum.uint32_list.value.extend(array.astype(np.uint32).ravel().tolist())
    datum.shape.dim.extend(array.shape)
    return datum


DATUM_CASES = {
    "scalar": np.array(3.5, np.float32),
    "empty_1d": np.zeros(0, np.float32),
    "empty_2d": np.zeros((0, 5), np.float32),
    "matrix": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "tensor": np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32),
    "uint32_edges": np.array(
        [0, 1, 127, 128, 16383, 16384, 2**21, 2**28 - 1, 2**28, 2**32 - 1], np.uint32
    ),
    "uint32_random": np.random.default_rng(1).integers(0, 2**32, (50, 3)).astype(np.uint32),
    "uint32_empty": np.zeros((2, 0), np.uint32),
}


@pytest.mark.parametrize("name", list(DATUM_CASES))
def test_datum_bytes_identical_and_round_trip(tmp_path, name):
    array = DATUM_CASES[name]
    data = df.serialize_datum(array)
    assert data == _reference_datum(array).SerializeToString()
    path = tmp_path / f"{name}.datum"
    df.write_datum(path, array)
    back = df.read_datum(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_datum_conversions():
    back = df.parse_datum(df.serialize_datum(np.float64([0.1, 2])))
    np.testing.assert_array_equal(back, np.float32([0.1, 2]))
    assert df.parse_datum(df.serialize_datum(np.float16([1, 2]))).dtype == np.float32
    for dtype in (np.uint8, np.uint16, np.uint64, np.int32, np.int64):
        back = df.parse_datum(df.serialize_datum(np.array([[1, 200]], dtype)))
        assert back.dtype == np.uint32 and back.tolist() == [[1, 200]]
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32 - 1\]"):
        df.serialize_datum(np.array([-1, 2], np.int64))
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32 - 1\]"):
        df.serialize_datum(np.array([2**32], np.uint64))
    for bad in (np.array([True]), np.array(["a"]), np.array([1j])):
        with pytest.raises(ValueError, match="unsupported dtype"):
            df.serialize_datum(bad)


def test_uint32_varints_against_protobuf_on_random_values():
    rng = np.random.default_rng(7)
    shifts = rng.integers(0, 32, 5000).astype(np.uint64)  # spread over all varint lengths
    values = (rng.integers(0, 2**32, 5000, dtype=np.uint64) >> shifts).astype(np.uint32)
    expected = datum_pb2.Uint32List(value=values.tolist()).SerializeToString()
    encoded = df._encode_uint32_varints(values)
    assert expected == b"\x0a" + df._varint(len(encoded)) + encoded
    np.testing.assert_array_equal(df._decode_uint32_varints(encoded), values)


def test_reference_empty_datum_without_values_reads_as_float32():
    datum = datum_pb2.DatumProto()
    datum.shape.dim.extend([0, 128])
    back = df.parse_datum(datum.SerializeToString())
    assert back.shape == (0, 128) and back.dtype == np.float32


def test_non_canonical_datum_falls_back(caplog):
    # shape { dim: 2 } with a non-minimal varint, float values unpacked.
    data = bytes([0x0A, 0x03, 0x08, 0x82, 0x00]) + bytes([0x12, 10]) + b"".join(
        bytes([0x0D]) + np.float32(v).tobytes() for v in (1.5, -2)
    )
    reference = datum_pb2.DatumProto.FromString(data)
    assert list(reference.shape.dim) == [2]
    with caplog.at_level(logging.DEBUG, logger="d2r.io.delf_files"):
        back = df.parse_datum(data)
    assert FALLBACK in caplog.text
    np.testing.assert_array_equal(back, np.float32([1.5, -2]))


def test_datum_errors(tmp_path):
    no_values = datum_pb2.DatumProto()
    no_values.shape.dim.extend([2, 2])
    with pytest.raises(ValueError, match="holds no float or uint32"):
        df.parse_datum(no_values.SerializeToString())
    with pytest.raises(ValueError, match="holds no float or uint32"):
        df.parse_datum(b"")
    mismatch = _reference_datum(np.zeros(3, np.float32))
    mismatch.shape.dim[0] = 4
    message = r"m.datum: DatumProto shape \(4,\) needs 4 values, file has 3"
    with pytest.raises(ValueError, match=message):
        df.parse_datum(mismatch.SerializeToString(), source="m.datum")
    truncated = tmp_path / "t.datum"
    truncated.write_bytes(df.serialize_datum(np.ones(10, np.float32))[:-1])
    with pytest.raises(ValueError, match="t.datum"):
        df.read_datum(truncated)


def test_datum_pair_round_trip_and_identity(tmp_path):
    first = np.random.default_rng(2).normal(size=(3, 16)).astype(np.float32)
    second = np.array([5, 70000, 9], np.uint32)
    pair = datum_pb2.DatumPairProto()
    pair.first.CopyFrom(_reference_datum(first))
    pair.second.CopyFrom(_reference_datum(second))
    assert df.serialize_datum_pair(first, second) == pair.SerializeToString()
    path = tmp_path / "p.asmk"
    df.write_datum_pair(path, first, second)
    a, b = df.read_datum_pair(path)
    np.testing.assert_array_equal(a, first)
    np.testing.assert_array_equal(b, second)
    assert (a.dtype, b.dtype) == (np.float32, np.uint32)
    empty = df.serialize_datum_pair(np.zeros((0, 16)), np.zeros(0, np.uint32))
    empty_a, empty_b = df.parse_datum_pair(empty)
    assert empty_a.shape == (0, 16) and empty_b.shape == (0,) and empty_b.dtype == np.uint32


def test_datum_pair_fallback_and_errors():
    first = _reference_datum(np.float32([1, 2]))
    second_only = datum_pb2.DatumPairProto(second=_reference_datum(np.uint32([3])))
    first_only = datum_pb2.DatumPairProto(first=first)
    swapped = second_only.SerializeToString() + first_only.SerializeToString()
    a, b = df.parse_datum_pair(swapped)
    assert a.tolist() == [1, 2] and b.tolist() == [3]
    with pytest.raises(ValueError, match=r"pair \(second\).*holds no"):
        df.parse_datum_pair(first_only.SerializeToString(), source="pair")
    with pytest.raises(ValueError, match="pair.*DatumPairProto"):
        df.parse_datum_pair(b"\x0a\x05\x01", source="pair")
