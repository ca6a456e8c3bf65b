"""The PyTorch checkpoint reader: the published XFeat weights, hand-made tensors, hostile files."""

from __future__ import annotations

import hashlib
import pickle
import struct
import zipfile

import numpy as np
import pytest

from d2r.errors import InputError
from d2r.io.hashing import file_sha256
from d2r.io.torch_checkpoint import CheckpointError, load_state_dict
from tests._xfeat_weights import xfeat_weights  # noqa: F401  (a fixture)

XFEAT_SHA256 = "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b"
XFEAT_TENSORS_SHA256 = "8388a6af54eacdeaa15cc2a837fe821839467755ab3e7b2419fc4a5979b6aea5"
"""sha256 over the sorted names, dtypes, shapes and bytes of the tensors ``torch.load``
(torch 2.13) returns for xfeat.pt: what the reader must reproduce without PyTorch."""


# A protocol-2 pickle written opcode by opcode, as torch.save writes a state dict.
def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


_ORDERED_DICT = _global("collections", "OrderedDict") + b")R"


def _tensor(key: str, storage: str, numel: int, offset: int, size, stride) -> bytes:
    """``_rebuild_tensor_v2(storage key, offset, size, stride, False, OrderedDict())``."""
    pid = _tuple(_text("storage"), _global("torch", storage), _text(key), _text("cpu"), _int(numel))
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"Q" + _int(offset)
            + _tuple(*map(_int, size)) + _tuple(*map(_int, stride)) + b"\x89" + _ORDERED_DICT + b"tR")


def _state_dict(items: dict[str, bytes]) -> bytes:
    body = b"".join(_text(k) + v for k, v in items.items())
    return b"\x80\x02" + _ORDERED_DICT + b"(" + body + b"u."


def _checkpoint(path, pickled: bytes, storages: dict[str, bytes], byteorder: str | None = "little"):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/data.pkl", pickled)
        for key, raw in storages.items():
            zf.writestr(f"model/data/{key}", raw)
        if byteorder:
            zf.writestr("model/byteorder", byteorder)
        zf.writestr("model/version", "3\n")
    return path


def test_reads_the_published_xfeat_checkpoint(xfeat_weights):
    state = load_state_dict(xfeat_weights, sha256=XFEAT_SHA256)
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        assert value.flags.c_contiguous
        digest.update(f"{key} {value.dtype.str} {value.shape}\n".encode())
        digest.update(value.tobytes())
    assert digest.hexdigest() == XFEAT_TENSORS_SHA256
    assert state["block1.0.layer.0.weight"].shape == (4, 1, 3, 3)
    assert state["block1.0.layer.1.num_batches_tracked"].shape == ()  # 0-d stays 0-d
    assert state["block1.0.layer.1.num_batches_tracked"].dtype == np.int64


def test_hand_made_tensors_honour_dtype_offset_strides_and_byte_order(tmp_path):
    floats = np.arange(12, dtype="<f4")
    halves = np.array([1.5, -2.0, 0.25], dtype="<f2")
    bools = np.array([True, False, True])
    bf16 = (np.array([1.0, -3.5], np.float32).view(np.uint32) >> 16).astype("<u2")
    pickled = _state_dict({
        "matrix": _tensor("0", "FloatStorage", 12, 0, (3, 4), (4, 1)),
        "transposed": _tensor("0", "FloatStorage", 12, 0, (4, 3), (1, 4)),  # shares storage 0
        "window": _tensor("0", "FloatStorage", 12, 5, (2, 2), (4, 2)),
        "scalar": _tensor("1", "LongStorage", 1, 0, (), ()),
        "half": _tensor("2", "HalfStorage", 3, 1, (2,), (1,)),
        "mask": _tensor("3", "BoolStorage", 3, 0, (3,), (1,)),
        "bf16": _tensor("4", "BFloat16Storage", 2, 0, (2,), (1,)),
        "empty": _tensor("5", "FloatStorage", 0, 0, (0, 7), (7, 1)),
    })
    storages = {"0": floats.tobytes(), "1": np.int64(-7).tobytes(), "2": halves.tobytes(),
                "3": bools.tobytes(), "4": bf16.tobytes(), "5": b""}
    state = load_state_dict(_checkpoint(tmp_path / "t.pt", pickled, storages))
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(state["matrix"], grid)
    np.testing.assert_array_equal(state["transposed"], grid.T)
    np.testing.assert_array_equal(state["window"], [[5, 7], [9, 11]])
    assert state["scalar"].shape == () and state["scalar"] == -7
    np.testing.assert_array_equal(state["half"], halves[1:])
    assert state["mask"].dtype == np.bool_ and state["mask"].tolist() == [True, False, True]
    np.testing.assert_array_equal(state["bf16"], [1.0, -3.5])
    assert state["empty"].shape == (0, 7) and state["empty"].dtype == np.float32
    # a big-endian file (byteorder says so) reads the same values
    big = {"0": floats.astype(">f4").tobytes(), **{k: v for k, v in storages.items() if k != "0"}}
    big["1"] = np.array([-7], ">i8").tobytes()
    big["2"] = halves.astype(">f2").tobytes()
    big["4"] = bf16.astype(">u2").tobytes()
    again = load_state_dict(_checkpoint(tmp_path / "big.pt", pickled, big, byteorder="big"))
    for key, value in state.items():
        np.testing.assert_array_equal(again[key], value)
        assert again[key].dtype == value.dtype


def test_foreign_global_is_refused_without_running_it(tmp_path, xfeat_weights):
    marker = tmp_path / "ran"
    command = _global("os", "system") + _tuple(_text(f"touch {marker}")) + b"R"
    tampered = tmp_path / "tampered.pt"
    with zipfile.ZipFile(xfeat_weights) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):  # the real state dict, with a command inside
                data = _state_dict({"evil": command})
            dst.writestr(info, data)
    control = tmp_path / "control"  # the same opcodes do run a command under plain pickle
    pickle.loads(b"\x80\x02" + _global("os", "system") + _tuple(_text(f"touch {control}")) + b"R.")
    assert control.exists()
    with pytest.raises(CheckpointError) as caught:
        load_state_dict(tampered)
    message = str(caught.value)
    assert "\n" not in message and str(tampered) in message and "os.system" in message
    assert not marker.exists()
    for module, name in (("builtins", "eval"), ("torch", "load"), ("torch._utils", "_rebuild_qtensor")):
        path = _checkpoint(tmp_path / f"{name}.pt", _state_dict({"x": _global(module, name)}), {})
        with pytest.raises(CheckpointError, match=f"refused global {module}.{name} "):
            load_state_dict(path)


@pytest.mark.parametrize("size, stride, offset", [((4, 4), (4, 1), 0), ((3,), (1,), 10), ((2,), (-1,), 1)])
def test_tensor_outside_its_storage_is_refused(tmp_path, size, stride, offset):
    pickled = _state_dict({"w": _tensor("0", "FloatStorage", 12, offset, size, stride)})
    path = _checkpoint(tmp_path / "bad.pt", pickled, {"0": np.zeros(12, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match="not a readable PyTorch state dict"):
        load_state_dict(path)


def test_damaged_truncated_and_foreign_files_are_refused_in_one_line(tmp_path, xfeat_weights):
    raw = xfeat_weights.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF  # inside a storage: the zip's CRC no longer matches
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(flipped))
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"rest")
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("readme.txt", "hello")
    not_a_dict = _checkpoint(tmp_path / "list.pt", b"\x80\x02]q\x00.", {})
    missing_storage = _checkpoint(
        tmp_path / "nostorage.pt", _state_dict({"w": _tensor("9", "FloatStorage", 4, 0, (4,), (1,))}), {})
    short_storage = _checkpoint(tmp_path / "short.pt", _state_dict(
        {"w": _tensor("0", "FloatStorage", 4, 0, (4,), (1,))}), {"0": b"\0" * 12})
    cases = {
        truncated: "not a zip file", damaged: "damaged PyTorch checkpoint",
        legacy: "legacy (pre-1.6, non-zip)", other_zip: "not a PyTorch checkpoint",
        not_a_dict: "holds a list, not a state dict", missing_storage: "storage model/data/9 is missing",
        short_storage: "storage model/data/0 holds 12 bytes, 4 elements need 16",
        tmp_path / "absent.pt": "no such checkpoint file",
    }
    for path, expected in cases.items():
        with pytest.raises(CheckpointError) as caught:
            load_state_dict(path)
        message = str(caught.value)
        assert isinstance(caught.value, InputError)
        assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message
    with pytest.raises(CheckpointError, match=f"sha256 is {file_sha256(damaged)}, expected {XFEAT_SHA256}"):
        load_state_dict(damaged, sha256=XFEAT_SHA256)
