"""Tests for d2r.io.images: every oddity is generated here with Pillow / numpy."""

from __future__ import annotations

import io
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from d2r.io.images import (
    ImageError,
    iter_images,
    list_images,
    load_image,
    load_image_with_info,
    read_skipped,
    write_skipped,
)


def _pattern(h: int = 40, w: int = 60) -> np.ndarray:
    """(h, w, 3) uint8 with a distinct colour block in the top-left corner."""
    img = np.full((h, w, 3), 40, np.uint8)
    img[:10, :15] = (250, 10, 10)
    return img


def _save(path, image: Image.Image, fmt: str, **kwargs):
    image.save(path, fmt, **kwargs)
    return path


def _mode(path) -> str:
    with Image.open(path) as im:
        return im.mode


def _with_orientation(tmp_path, orientation: int):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(tmp_path / f"o{orientation}.png", Image.fromarray(_pattern()), "PNG", exif=exif)


def test_rgb_png_round_trip(tmp_path):
    arr = _pattern()
    path = _save(tmp_path / "a.png", Image.fromarray(arr), "PNG")
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out, arr)


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    info = load_image_with_info(_with_orientation(tmp_path, 6))
    assert info.pixels.shape == (60, 40, 3)
    assert info.original_size == (40, 60)
    # Orientation 6: the stored top-left corner is displayed top-right.
    np.testing.assert_array_equal(info.pixels[0, -1], (250, 10, 10))
    np.testing.assert_array_equal(info.pixels[0, 0], (40, 40, 40))
    np.testing.assert_array_equal(info.pixels[:15, -10:], np.broadcast_to((250, 10, 10), (15, 10, 3)))


def test_exif_orientation_3_rotates_180(tmp_path):
    out = load_image(_with_orientation(tmp_path, 3))
    assert out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out[-10:, -15:], np.broadcast_to((250, 10, 10), (10, 15, 3)))
    np.testing.assert_array_equal(out[0, 0], (40, 40, 40))


def test_grayscale_and_bilevel(tmp_path):
    gray = np.arange(40 * 60, dtype=np.uint32).reshape(40, 60) % 256
    path = _save(tmp_path / "g.png", Image.fromarray(gray.astype(np.uint8), "L"), "PNG")
    out = load_image(path)
    assert out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out[..., 1], gray)
    bits = np.zeros((8, 8), bool)
    bits[2, 3] = True
    path = _save(tmp_path / "b.png", Image.fromarray(bits), "PNG")
    out = load_image(path)
    assert _mode(path) == "1"
    np.testing.assert_array_equal(out[..., 0], np.where(bits, 255, 0))


def test_palette_with_transparency_composited_on_white(tmp_path):
    im = Image.new("P", (4, 3))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((1, 1), 1)
    im.info["transparency"] = 0
    path = _save(tmp_path / "p.png", im, "PNG", transparency=0)
    assert _mode(path) == "P"
    out = load_image(path)
    np.testing.assert_array_equal(out[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(out[1, 1], (0, 0, 255))


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (16, 12), (0, 255, 255, 0))  # pure red
    path = _save(tmp_path / "c.jpg", cmyk, "JPEG", quality=95)
    assert _mode(path) == "CMYK"
    out = load_image(path)
    assert out.shape == (12, 16, 3)
    assert out[..., 0].min() > 230 and out[..., 1:].max() < 25


def test_16bit_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000], [30000, 60000, 65535]], np.uint16)
    path = _save(tmp_path / "i16.png", Image.fromarray(values), "PNG")
    assert _mode(path).startswith("I;16")
    out = load_image(path)
    np.testing.assert_array_equal(out[..., 0], np.rint(values / 257.0).astype(np.uint8))
    assert len(np.unique(out[..., 0])) == 6  # clipping at 255 would merge the values > 255


def test_16bit_big_endian_tiff(tmp_path):
    values = np.array([[0, 65535], [32896, 514]], np.uint16)
    im = Image.frombytes("I;16B", (2, 2), values.astype(">u2").tobytes())
    path = _save(tmp_path / "b16.tif", im, "TIFF")
    out = load_image(path)
    np.testing.assert_array_equal(out[..., 2], [[0, 255], [128, 2]])


def test_32bit_int_outside_16bit_range_is_stretched(tmp_path):
    values = np.array([[-100, 0], [100, 300]], np.int32)
    path = _save(tmp_path / "i32.tif", Image.fromarray(values, "I"), "TIFF")
    out = load_image(path)[..., 0]
    assert out[0, 0] == 0 and out[1, 1] == 255 and out[0, 1] < out[1, 0]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([[0.0, 0.5], [1.0, 0.25]], [[0, 128], [255, 64]]),
        ([[0.0, 10.0], [200.0, 255.0]], [[0, 10], [200, 255]]),
        ([[-1.0, 0.0], [1.0, 3.0]], [[0, 64], [128, 255]]),
    ],
)
def test_float_tiff(tmp_path, values, expected):
    path = _save(tmp_path / "f.tif", Image.fromarray(np.array(values, np.float32), "F"), "TIFF")
    assert _mode(path) == "F"
    np.testing.assert_array_equal(load_image(path)[..., 0], expected)


def test_rgba_and_la_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    rgba[0, 1] = (0, 0, 0, 0)
    rgba[1, 0] = (0, 0, 0, 128)
    path = _save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"), "PNG")
    out = load_image(path)
    np.testing.assert_array_equal(out[0, 0], (255, 0, 0))
    np.testing.assert_array_equal(out[0, 1], (255, 255, 255))
    assert 120 <= out[1, 0, 0] <= 130
    la = np.array([[[0, 0], [0, 255]]], np.uint8)
    path = _save(tmp_path / "la.png", Image.fromarray(la, "LA"), "PNG")
    np.testing.assert_array_equal(load_image(path)[0], [(255, 255, 255), (0, 0, 0)])


@pytest.mark.parametrize(("fmt", "suffix"), [("WEBP", ".webp"), ("TIFF", ".tif"), ("BMP", ".bmp")])
def test_other_formats(tmp_path, fmt, suffix):
    arr = _pattern(12, 20)
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    path = _save(tmp_path / f"x{suffix}", Image.fromarray(arr), fmt, **kwargs)
    np.testing.assert_array_equal(load_image(path), arr)


def test_max_side_keeps_aspect_and_maps_back(tmp_path):
    path = _save(tmp_path / "big.png", Image.fromarray(_pattern(100, 300)), "PNG")
    info = load_image_with_info(path, max_side=150)
    assert info.pixels.shape == (50, 150, 3)
    assert info.original_size == (300, 100)
    assert info.scale == pytest.approx(0.5)
    np.testing.assert_allclose(info.to_original([[0, 0], [149, 49], [74.5, 24.5]]),
                               [[0.5, 0.5], [298.5, 98.5], [149.5, 49.5]])
    same = load_image_with_info(path, max_side=1000)
    assert same.scale == 1.0 and same.pixels.shape == (100, 300, 3)
    np.testing.assert_allclose(same.to_original([[3, 4]]), [[3, 4]])
    with pytest.raises(ValueError, match="max_side"):
        load_image(path, max_side=0)


def test_max_side_after_exif_transpose(tmp_path):
    info = load_image_with_info(_with_orientation(tmp_path, 6), max_side=30)
    assert info.original_size == (40, 60)
    assert info.pixels.shape == (30, 20, 3)


def test_decompression_bomb_limit(tmp_path):
    path = _save(tmp_path / "a.png", Image.fromarray(_pattern()), "PNG")
    with pytest.raises(ImageError, match="decompression-bomb") as err:
        load_image(path, max_pixels=100)
    assert str(path) in str(err.value)


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_crafted_huge_png_header_rejected(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(60000, 60000))
    with pytest.raises(ImageError, match="bomb"):
        load_image(path)
    path.write_bytes(_png_claiming(12000, 12000))  # below Pillow's limit, above ours
    with pytest.raises(ImageError, match="144000000 pixels"):
        load_image(path, max_pixels=10_000_000)


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("lenient_global", [False, True])
def test_truncated_files_rejected(tmp_path, monkeypatch, fmt, lenient_global):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient_global)
    data = _encoded(fmt)
    path = tmp_path / f"t.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as err:
        load_image(path)
    assert str(path) in str(err.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is lenient_global


def test_non_image_empty_and_missing_files(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a jpeg\n")
    with pytest.raises(ImageError, match="not an image") as err:
        load_image(text)
    assert "notes.jpg" in str(err.value) and isinstance(err.value, ValueError)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "nope.jpg")


def test_iter_images_skip_logs_and_writes_list(tmp_path, caplog):
    good = _encoded("PNG")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ok.png").write_bytes(good)
    (tmp_path / "b\tad.jpg").write_text("garbage")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("not listed")
    names = list_images(tmp_path)
    assert names == ["b\tad.jpg", "empty.jpg", "sub/ok.png"]
    it = iter_images(names, root=tmp_path, on_error="skip", max_side=40)
    with caplog.at_level(logging.WARNING, logger="d2r.io.images"):
        loaded = list(it)
    assert [n for n, _ in loaded] == ["sub/ok.png"]
    assert loaded[0][1].pixels.shape == (32, 40, 3)
    assert [n for n, _ in it.skipped] == ["b\tad.jpg", "empty.jpg"]
    assert "empty" in it.skipped[1][1]
    assert sum("skipping image" in r.message for r in caplog.records) == 2
    out = tmp_path / "skipped.tsv"
    write_skipped(it.skipped, out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "name\treason" and len(lines) == 3
    assert lines[1].startswith("b\\tad.jpg\t")
    assert read_skipped(out) == it.skipped


def test_iter_images_raise_mode(tmp_path):
    (tmp_path / "bad.png").write_text("garbage")
    with pytest.raises(ImageError, match="bad.png"):
        list(iter_images([tmp_path / "bad.png"]))
    with pytest.raises(ValueError, match="on_error"):
        iter_images([], on_error="ignore")


def test_list_images_extensions_and_errors(tmp_path):
    (tmp_path / "A.JPG").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    assert list_images(tmp_path, extensions=["jpg"]) == ["A.JPG"]
    assert list_images(tmp_path, extensions=[".PNG", "jpg"]) == ["A.JPG", "b.png"]
    with pytest.raises(NotADirectoryError, match="missing"):
        list_images(tmp_path / "missing")
