"""Read and write the DELF reference's protobuf files: ``.delf``, ``.boxes``, datum.

The formats are those of tensorflow/models ``research/delf`` (messages in
:mod:`d2r.protos`), so files written here are read by the reference's
``feature_io`` / ``box_io`` / ``datum_io`` and vice versa.

Conventions at this boundary:

* ``.delf`` (``DelfFeatures``, one ``DelfFeature`` message per keypoint):
  proto ``x``/``y`` are original-image pixel coordinates and map to
  ``LocalFeatures.locations[:, 0]`` / ``[:, 1]``.  The reference's
  ``feature_io`` returns ``locations`` in **(y, x)** order as float64; for the
  same file, ``features.locations[:, ::-1]`` equals it exactly, as do
  ``scales`` (``scale``), ``descriptors`` (``descriptor`` datum),
  ``scores`` (``strength``, the attention) and the orientations
  (``orientation``, zero when not given).  The image size is not stored: pass
  it as ``image_size``.  A file with zero features is empty (0 bytes) and has
  no descriptor dimension: pass ``dim`` to get ``(0, dim)`` descriptors.
* ``.boxes`` (``Boxes``): the reference's Detect-to-Retrieve extraction stores
  detector output, i.e. ``[ymin, xmin, ymax, xmax]`` **normalized** by the
  image height/width to [0, 1].  Reading and writing take the image size
  ``(W, H)`` and convert to/from our pixel ``xyxy`` (computed in float64,
  stored as float32, so a round trip agrees to float32 rounding).
  ``image_size=(1, 1)`` keeps the normalized values.
* datum files (``DatumProto`` / ``DatumPairProto``): float arrays are stored
  as float32 and integer arrays (values in [0, 2**32 - 1]) as uint32; reading
  returns float32 or uint32 with the stored shape.  An empty array written by
  the reference (shape only, no value list) reads as float32.

Speed: ``.delf`` files (and ``.boxes`` whose class indices lie in [0, 127])
are encoded with numpy as fixed-size records, byte-identical to
``SerializeToString()`` of the same messages built with the protobuf classes.
Decoding takes a numpy fast path after checking every structural byte of that
canonical layout, and falls back to the protobuf parser for anything else
(another encoder's layout, missing or unknown fields).  Datum payloads are
decoded with numpy the same way.

Writes are atomic: the bytes go to a temporary file in the target's
directory, which then replaces the target (a reader never sees a partial
file; there is no fsync, so this is not a guarantee against power loss).
Corrupt or truncated files raise ValueError naming the file.

One module over 500 lines on purpose: it is the one boundary with the DELF
reference's protobuf formats, whose readers and writers share the wire-level
decoding and the (y, x) conversions; nothing else in d2r reads these formats.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from google.protobuf.message import DecodeError

from d2r.io.atomic import atomic_write_bytes
from d2r.protos import box_pb2, datum_pb2, feature_pb2
from d2r.types import Boxes, LocalFeatures

__all__ = [
    "serialize_delf",
    "parse_delf",
    "write_delf",
    "read_delf",
    "read_delf_with_orientations",
    "serialize_boxes",
    "parse_boxes",
    "write_boxes",
    "read_boxes",
    "serialize_datum",
    "parse_datum",
    "write_datum",
    "read_datum",
    "serialize_datum_pair",
    "parse_datum_pair",
    "write_datum_pair",
    "read_datum_pair",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_UINT32_MAX = 0xFFFFFFFF
# Wire tags: (field_number << 3) | wire_type, wire types 0 varint, 2 bytes, 5 fixed32.
_WIRE_VARINT, _WIRE_LEN, _WIRE_FIXED32 = 0, 2, 5


def _tag(field: int, wire_type: int) -> bytes:
    return bytes([(field << 3) | wire_type])


def _varint(value: int) -> bytes:
    """Minimal varint encoding of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _tag(field, _WIRE_LEN) + _varint(len(payload)) + payload


class _NotCanonical(Exception):
    """Internal: bytes are not in the layout the numpy fast path reads."""


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode the varint at ``buf[pos:end]``; returns (value, position after it)."""
    value = 0
    for shift in range(0, 70, 7):
        if pos >= end:
            raise _NotCanonical
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise _NotCanonical


# --------------------------------------------------------------------------
# Fixed-size records: numpy encoding and validated decoding.


@dataclass(frozen=True)
class _RecordLayout:
    """A message of fixed byte layout: constant structural bytes and data fields.

    ``dtype`` is a packed structured dtype of one record; ``template`` holds a
    record whose structural bytes are set; ``structural`` indexes those bytes.
    """

    dtype: np.dtype
    template: np.ndarray
    structural: np.ndarray

    @classmethod
    def build(cls, parts: Sequence) -> "_RecordLayout":
        """``parts``: ``bytes`` constants or ``(name, numpy format[, shape])`` fields, in order."""
        fields, constants, offset = [], [], 0
        for part in parts:
            if isinstance(part, bytes):
                fields.append((f"_const{len(constants)}", f"V{len(part)}"))
                constants.append((offset, part))
                offset += len(part)
            else:
                fields.append(part)
                offset += np.dtype([part]).itemsize
        dtype = np.dtype(fields)
        template = np.zeros(dtype.itemsize, np.uint8)
        structural = []
        for start, part in constants:
            template[start : start + len(part)] = np.frombuffer(part, np.uint8)
            structural.extend(range(start, start + len(part)))
        return cls(dtype, template, np.asarray(structural, np.intp))

    def encode(self, n: int, values: dict[str, np.ndarray]) -> bytes:
        records = np.empty(n, self.dtype)
        records.view(np.uint8).reshape(n, self.dtype.itemsize)[:] = self.template
        for name, value in values.items():
            records[name] = value
        return records.tobytes()

    def decode(self, data: bytes) -> np.ndarray | None:
        """Records of ``data``, or None unless every record has this exact layout."""
        size = self.dtype.itemsize
        if len(data) % size:
            return None
        raw = np.frombuffer(data, np.uint8).reshape(-1, size)
        if not (raw[:, self.structural] == self.template[self.structural]).all():
            return None
        return np.frombuffer(data, self.dtype)


def _float_fields(*names_and_numbers: tuple[str, int]) -> list:
    parts: list = []
    for name, number in names_and_numbers:
        parts += [_tag(number, _WIRE_FIXED32), (name, "<f4")]
    return parts


# --------------------------------------------------------------------------
# Datum (tensors).


def _datum_values(array: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    """Array as float32 or uint32 (C order) and the DatumProto field number of its kind."""
    if array.dtype.kind == "f":
        return np.asarray(array, np.float32, order="C"), 2
    if array.dtype.kind in "ui":
        if array.size and (array.min() < 0 or array.max() > _UINT32_MAX):
            raise ValueError(
                f"{what}: integer values must lie in [0, 2**32 - 1] to be stored as uint32, "
                f"got range [{array.min()}, {array.max()}]"
            )
        return np.asarray(array, np.uint32, order="C"), 3
    raise ValueError(
        f"{what}: unsupported dtype {array.dtype}; datum files store float (as float32) "
        "or unsigned-integer-valued (as uint32) arrays"
    )


def _encode_uint32_varints(values: np.ndarray) -> bytes:
    """Concatenated minimal varints of a flat uint32 array (vectorized)."""
    v = values.ravel().astype(np.uint64)
    nbytes = 1 + sum((v >= (1 << (7 * k))).astype(np.int64) for k in range(1, 5))
    starts = np.cumsum(nbytes) - nbytes
    out = np.empty(int(nbytes.sum()), np.uint8)
    for k in range(5):
        sel = nbytes > k
        chunk = (v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (nbytes[sel] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + k] = (chunk | more).astype(np.uint8)
    return out.tobytes()


def _decode_uint32_varints(buf: bytes) -> np.ndarray:
    """Flat uint32 array from concatenated varints (vectorized)."""
    raw = np.frombuffer(buf, np.uint8)
    if raw.size == 0:
        return np.zeros(0, np.uint32)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size == 0 or ends[-1] != raw.size - 1:
        raise _NotCanonical
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 5:
        raise _NotCanonical
    group = np.repeat(np.arange(ends.size), lengths)
    position = np.arange(raw.size) - np.repeat(starts, lengths)
    contrib = (raw & 0x7F).astype(np.float64) * np.exp2(7.0 * position)
    values = np.bincount(group, weights=contrib, minlength=ends.size)
    if values.max() > _UINT32_MAX:
        raise _NotCanonical
    return values.astype(np.uint32)


def _datum_bytes(array: np.ndarray, what: str) -> bytes:
    values, kind = _datum_values(np.asarray(array), what)
    dims = b"".join(_varint(int(d)) for d in values.shape)
    out = _len_field(1, _len_field(1, dims) if dims else b"")
    if kind == 2:
        payload = values.astype("<f4", copy=False).tobytes()
    else:
        payload = _encode_uint32_varints(values)
    out += _len_field(kind, _len_field(1, payload) if payload else b"")
    return out


def _fields(buf: bytes, start: int, end: int):
    """(field number, value start, value end) of length-delimited fields, strictly ascending."""
    pos, last = start, 0
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if wire_type != _WIRE_LEN or number <= last:
            raise _NotCanonical
        length, pos = _read_varint(buf, pos, end)
        if pos + length > end:
            raise _NotCanonical
        yield number, pos, pos + length
        pos, last = pos + length, number


def _single_packed(buf: bytes, start: int, end: int) -> tuple[int, int]:
    """Span of the one packed field 1 in ``buf[start:end]`` (empty message: empty span)."""
    spans = list(_fields(buf, start, end))
    if not spans:
        return end, end
    if len(spans) > 1 or spans[0][0] != 1:
        raise _NotCanonical
    return spans[0][1], spans[0][2]


def _datum_fast(buf: bytes, start: int, end: int) -> tuple[list[int], str | None, np.ndarray]:
    """Shape, kind and flat values of the DatumProto in ``buf[start:end]``."""
    shape: list[int] = []
    kind, values = None, np.zeros(0, np.float32)
    for number, s, e in _fields(buf, start, end):
        if number == 1:
            ds, de = _single_packed(buf, s, e)
            pos = ds
            while pos < de:
                dim, pos = _read_varint(buf, pos, de)
                if dim >= 1 << 63:
                    raise _NotCanonical
                shape.append(dim)
        elif number in (2, 3):
            if kind is not None:
                raise _NotCanonical
            vs, ve = _single_packed(buf, s, e)
            if number == 2:
                if (ve - vs) % 4:
                    raise _NotCanonical
                kind = "float"
                values = np.frombuffer(buf, "<f4", (ve - vs) // 4, vs).astype(np.float32)
            else:
                kind = "uint32"
                values = _decode_uint32_varints(buf[vs:ve])
        else:
            raise _NotCanonical
    return shape, kind, values


def _datum_protobuf(message) -> tuple[list[int], str | None, np.ndarray]:
    kind = message.WhichOneof("kind_oneof")
    if kind == "float_list":
        return list(message.shape.dim), "float", np.array(message.float_list.value, np.float32)
    if kind == "uint32_list":
        return list(message.shape.dim), "uint32", np.array(message.uint32_list.value, np.uint32)
    return list(message.shape.dim), None, np.zeros(0, np.float32)


def _datum_array(parsed: tuple[list[int], str | None, np.ndarray], source: str) -> np.ndarray:
    shape, kind, values = parsed
    expected = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if kind is None and expected == 0:
        return np.zeros(shape, np.float32)
    if kind is None:
        raise ValueError(
            f"{source}: DatumProto of shape {tuple(shape)} holds no float or uint32 values"
        )
    if values.size != expected:
        raise ValueError(
            f"{source}: DatumProto shape {tuple(shape)} needs {expected} values, "
            f"file has {values.size}"
        )
    return values.reshape(shape)


def _parse_datum_span(buf: bytes, start: int, end: int, message, source: str) -> np.ndarray:
    """DatumProto in ``buf[start:end]``; ``message`` is a zero-arg callable for the fallback."""
    try:
        parsed = _datum_fast(buf, start, end)
    except _NotCanonical:
        logger.debug("%s: non-canonical DatumProto layout, using the protobuf parser", source)
        parsed = _datum_protobuf(message())
    return _datum_array(parsed, source)


def _parse_message(cls, data: bytes, source: str):
    try:
        return cls.FromString(data)
    except DecodeError as err:
        raise ValueError(f"{source}: not a valid {cls.DESCRIPTOR.name} message ({err})") from err


def serialize_datum(array: np.ndarray) -> bytes:
    """Serialized ``DatumProto`` of ``array`` (any shape).

    Floating arrays are stored as float32 (float64 rounds), integer arrays
    whose values lie in [0, 2**32 - 1] as uint32; anything else is a ValueError.
    """
    return _datum_bytes(array, "datum array")


def parse_datum(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Array (float32 or uint32, stored shape) of a serialized ``DatumProto``."""
    data = bytes(data)
    return _parse_datum_span(
        data, 0, len(data), lambda: _parse_message(datum_pb2.DatumProto, data, source), source
    )


def serialize_datum_pair(first: np.ndarray, second: np.ndarray) -> bytes:
    """Serialized ``DatumPairProto`` of two arrays (conversions as :func:`serialize_datum`)."""
    return _len_field(1, _datum_bytes(first, "first datum array")) + _len_field(
        2, _datum_bytes(second, "second datum array")
    )


def parse_datum_pair(data: bytes, *, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """(first, second) arrays of a serialized ``DatumPairProto``."""
    data = bytes(data)
    try:
        spans = {number: (s, e) for number, s, e in _fields(data, 0, len(data))}
        if not set(spans) <= {1, 2}:
            raise _NotCanonical
    except _NotCanonical:
        logger.debug("%s: non-canonical DatumPairProto layout, using the protobuf parser", source)
        pair = _parse_message(datum_pb2.DatumPairProto, data, source)
        return (
            _datum_array(_datum_protobuf(pair.first), f"{source} (first)"),
            _datum_array(_datum_protobuf(pair.second), f"{source} (second)"),
        )
    out = []
    for number, name in ((1, "first"), (2, "second")):
        s, e = spans.get(number, (0, 0))
        out.append(
            _parse_datum_span(
                data,
                s,
                e,
                lambda s=s, e=e: _parse_message(datum_pb2.DatumProto, data[s:e], source),
                f"{source} ({name})",
            )
        )
    return out[0], out[1]


# --------------------------------------------------------------------------
# DelfFeatures (.delf).


_DELF_SCALARS = ("x", "y", "scale", "orientation", "strength")


@functools.lru_cache(maxsize=32)
def _delf_layout(dim: int) -> _RecordLayout:
    """Layout of one ``feature`` entry of DelfFeatures for descriptor dimension ``dim``.

    Canonical entry (what protobuf writes for the reference's messages):
    ``feature { descriptor { shape { dim: [D] } float_list { value: [...] } }
    x y scale orientation strength }``, all five floats present.
    """
    shape = _len_field(1, _len_field(1, _varint(dim)))
    float_list_head = _tag(1, _WIRE_LEN) + _varint(4 * dim)
    float_list_len = len(float_list_head) + 4 * dim
    datum_head = shape + _tag(2, _WIRE_LEN) + _varint(float_list_len) + float_list_head
    datum_len = len(datum_head) + 4 * dim
    feature_len = 1 + len(_varint(datum_len)) + datum_len + 5 * 5
    head = (
        _tag(1, _WIRE_LEN)
        + _varint(feature_len)
        + _tag(1, _WIRE_LEN)
        + _varint(datum_len)
        + datum_head
    )
    return _RecordLayout.build(
        [head, ("descriptor", "<f4", (dim,))]
        + _float_fields(("x", 2), ("y", 3), ("scale", 4), ("orientation", 5), ("strength", 6))
    )


def _delf_fast(data: bytes) -> np.ndarray | None:
    """Records of a canonical DelfFeatures serialization, else None."""
    try:
        pos = 0
        for _ in range(4):  # feature, descriptor, shape, packed dims
            if data[pos] != 0x0A:
                return None
            _, pos = _read_varint(data, pos + 1, len(data))
        dim, _ = _read_varint(data, pos, len(data))
    except (IndexError, _NotCanonical):
        return None
    if dim < 1 or 4 * dim > len(data):
        return None
    return _delf_layout(dim).decode(data)


def _delf_protobuf(data: bytes, dim: int, source: str) -> dict[str, np.ndarray]:
    message = _parse_message(feature_pb2.DelfFeatures, data, source)
    features = message.feature
    descriptors = [
        _datum_array(_datum_protobuf(f.descriptor), f"{source} (feature {i})").ravel()
        for i, f in enumerate(features)
    ]
    sizes = {d.size for d in descriptors}
    if len(sizes) > 1:
        raise ValueError(f"{source}: descriptors of different sizes {sorted(sizes)}")
    out = {
        name: np.array([getattr(f, name) for f in features], np.float32)
        for name in _DELF_SCALARS
    }
    width = sizes.pop() if sizes else dim
    out["descriptor"] = np.asarray(descriptors, np.float32).reshape(len(features), width)
    return out


def serialize_delf(features: LocalFeatures, *, orientations: np.ndarray | None = None) -> bytes:
    """Serialized ``DelfFeatures`` of ``features`` (N features, dimension D).

    ``orientations``: optional (N,) keypoint orientations, zero when None (as
    the reference writes).  Zero features serialize to ``b""``.
    """
    n, dim = len(features), features.dim
    if orientations is None:
        orientations = np.zeros(n, np.float32)
    orientations = np.asarray(orientations, np.float32)
    if orientations.shape != (n,):
        raise ValueError(f"orientations must have shape ({n},), got {orientations.shape}")
    if n == 0:
        return b""
    if dim == 0:
        raise ValueError("cannot write DELF features with descriptor dimension 0")
    return _delf_layout(dim).encode(
        n,
        {
            "descriptor": features.descriptors,
            "x": features.locations[:, 0],
            "y": features.locations[:, 1],
            "scale": features.scales,
            "orientation": orientations,
            "strength": features.scores,
        },
    )


def parse_delf(
    data: bytes,
    *,
    image_size: tuple[int, int] = (0, 0),
    dim: int | None = None,
    source: str = "<bytes>",
) -> tuple[LocalFeatures, np.ndarray]:
    """Features and (N,) float32 orientations of a serialized ``DelfFeatures``.

    ``image_size`` (W, H) is attached to the result (not stored in the file).
    ``dim``: expected descriptor dimension; checked when the file has features,
    used for the (0, dim) descriptors when it has none (default 0).
    """
    data = bytes(data)
    records = _delf_fast(data) if data else None
    if records is None and data:
        logger.debug("%s: non-canonical DelfFeatures layout, using the protobuf parser", source)
        fields = _delf_protobuf(data, dim or 0, source)
    elif records is None:
        fields = {n: np.zeros(0, np.float32) for n in _DELF_SCALARS}
        fields["descriptor"] = np.zeros((0, dim or 0), np.float32)
    else:
        fields = {name: records[name] for name in records.dtype.names if not name.startswith("_")}
    descriptors = np.asarray(fields["descriptor"], np.float32)
    if dim is not None and descriptors.shape[0] and descriptors.shape[1] != dim:
        raise ValueError(
            f"{source}: descriptors have dimension {descriptors.shape[1]}, expected {dim}"
        )
    try:
        features = LocalFeatures(
            locations=np.stack([fields["x"], fields["y"]], axis=1),
            descriptors=descriptors,
            scales=fields["scale"],
            scores=fields["strength"],
            image_size=image_size,
        )
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    return features, np.array(fields["orientation"], np.float32)


def write_delf(
    path: PathLike, features: LocalFeatures, *, orientations: np.ndarray | None = None
) -> None:
    """Write ``features`` to a ``.delf`` file atomically (see :func:`serialize_delf`)."""
    atomic_write_bytes(path, serialize_delf(features, orientations=orientations))


def read_delf_with_orientations(
    path: PathLike, *, image_size: tuple[int, int] = (0, 0), dim: int | None = None
) -> tuple[LocalFeatures, np.ndarray]:
    """Features and (N,) float32 orientations of a ``.delf`` file (see :func:`parse_delf`)."""
    return parse_delf(_read(path), image_size=image_size, dim=dim, source=str(path))


def read_delf(
    path: PathLike, *, image_size: tuple[int, int] = (0, 0), dim: int | None = None
) -> LocalFeatures:
    """Features of a ``.delf`` file (see :func:`parse_delf`)."""
    return read_delf_with_orientations(path, image_size=image_size, dim=dim)[0]


# --------------------------------------------------------------------------
# Boxes (.boxes).

# Canonical Box entry with a class index in [0, 127] (one-byte varint).
_BOX_LAYOUT = _RecordLayout.build(
    [_tag(1, _WIRE_LEN) + bytes([27])]
    + _float_fields(("ymin", 1), ("xmin", 2), ("ymax", 3), ("xmax", 4), ("score", 5))
    + [_tag(6, _WIRE_VARINT), ("class_index", "u1")]
)


def _image_size(image_size: tuple[int, int]) -> tuple[float, float]:
    try:
        width, height = (float(v) for v in image_size)
    except (TypeError, ValueError) as err:
        raise ValueError(f"image_size must be (width, height), got {image_size!r}") from err
    if not (width > 0 and height > 0 and np.isfinite(width) and np.isfinite(height)):
        raise ValueError(f"image_size must be positive (width, height), got {image_size!r}")
    return width, height


def serialize_boxes(boxes: Boxes, *, image_size: tuple[int, int]) -> bytes:
    """Serialized ``Boxes`` of pixel ``boxes`` in an image of size ``image_size`` (W, H).

    Coordinates are stored normalized: ``[y1/H, x1/W, y2/H, x2/W]``.
    """
    width, height = _image_size(image_size)
    xyxy = boxes.xyxy.astype(np.float64)
    normalized = {
        "ymin": xyxy[:, 1] / height,
        "xmin": xyxy[:, 0] / width,
        "ymax": xyxy[:, 3] / height,
        "xmax": xyxy[:, 2] / width,
    }
    labels = boxes.labels
    if labels.size == 0 or (labels.min() >= 0 and labels.max() < 0x80):
        return _BOX_LAYOUT.encode(
            len(boxes), {**normalized, "score": boxes.scores, "class_index": labels}
        )
    message = box_pb2.Boxes()
    columns = {name: values.astype(np.float32).tolist() for name, values in normalized.items()}
    for i, (score, label) in enumerate(zip(boxes.scores.tolist(), labels.tolist())):
        message.box.add(
            **{name: values[i] for name, values in columns.items()}, score=score, class_index=label
        )
    return message.SerializeToString()


def parse_boxes(data: bytes, *, image_size: tuple[int, int], source: str = "<bytes>") -> Boxes:
    """Pixel :class:`Boxes` of a serialized ``Boxes`` message.

    Stored normalized ``[ymin, xmin, ymax, xmax]`` become ``xyxy`` pixels by
    multiplying with ``image_size`` (W, H).
    """
    width, height = _image_size(image_size)
    data = bytes(data)
    records = _BOX_LAYOUT.decode(data)
    if records is not None and records.size and records["class_index"].max() >= 0x80:
        records = None
    if records is None:
        logger.debug("%s: non-canonical Boxes layout, using the protobuf parser", source)
        message = _parse_message(box_pb2.Boxes, data, source)
        columns = {
            name: np.array([getattr(b, name) for b in message.box], np.float32)
            for name in ("ymin", "xmin", "ymax", "xmax", "score")
        }
        columns["class_index"] = np.array([b.class_index for b in message.box], np.int32)
    else:
        columns = {name: records[name] for name in records.dtype.names if not name.startswith("_")}
    xyxy = np.stack(
        [
            columns["xmin"].astype(np.float64) * width,
            columns["ymin"].astype(np.float64) * height,
            columns["xmax"].astype(np.float64) * width,
            columns["ymax"].astype(np.float64) * height,
        ],
        axis=1,
    )
    try:
        return Boxes(xyxy.astype(np.float32), columns["score"], columns["class_index"])
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err


def write_boxes(path: PathLike, boxes: Boxes, *, image_size: tuple[int, int]) -> None:
    """Write pixel ``boxes`` to a ``.boxes`` file atomically (see :func:`serialize_boxes`)."""
    atomic_write_bytes(path, serialize_boxes(boxes, image_size=image_size))


def read_boxes(path: PathLike, *, image_size: tuple[int, int]) -> Boxes:
    """Pixel boxes of a ``.boxes`` file for an image of size ``image_size`` (W, H)."""
    return parse_boxes(_read(path), image_size=image_size, source=str(path))


# --------------------------------------------------------------------------
# Datum files.


def write_datum(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` to a datum file atomically (see :func:`serialize_datum`)."""
    atomic_write_bytes(path, serialize_datum(array))


def read_datum(path: PathLike) -> np.ndarray:
    """Array (float32 or uint32) of a datum file."""
    return parse_datum(_read(path), source=str(path))


def write_datum_pair(path: PathLike, first: np.ndarray, second: np.ndarray) -> None:
    """Write two arrays to a datum-pair file atomically (see :func:`serialize_datum_pair`)."""
    atomic_write_bytes(path, serialize_datum_pair(first, second))


def read_datum_pair(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) arrays of a datum-pair file."""
    return parse_datum_pair(_read(path), source=str(path))


# --------------------------------------------------------------------------
# Files.


def _read(path: PathLike) -> bytes:
    return Path(path).read_bytes()
