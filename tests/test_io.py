"""Readers and writers: every format and bit depth round-trips; bad files give clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_core.io import (
    ImageReadError,
    Normalisation,
    Resolution,
    encode_png,
    encode_tiff,
    fit_stretch,
    read_image,
    read_image_bytes,
    to_channels,
    write_image,
    write_png,
    write_tiff,
)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_gray_round_trip(tmp_path: Path, dtype, suffix: str) -> None:
    data = RNG.integers(0, np.iinfo(dtype).max, (33, 47), dtype=dtype)
    path = tmp_path / f"img{suffix}"
    write_image(path, data)
    img = read_image(path)
    assert img.data.shape == (1, 33, 47, 1) and img.data.dtype == dtype
    assert np.array_equal(img.data[0, ..., 0], data)
    assert not img.is_stack


def test_rgb_and_rgba_png(tmp_path: Path) -> None:
    rgba = RNG.integers(0, 255, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.data.shape == (1, 20, 30, 4) and np.array_equal(img.data[0], rgba)
    write_png(tmp_path / "b.png", rgba[..., :3])
    assert np.array_equal(read_image(tmp_path / "b.png").data[0], rgba[..., :3])


def test_jpeg_and_palette_png(tmp_path: Path) -> None:
    gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    Image.fromarray(gray).save(tmp_path / "g.jpg", quality=95)
    jpg = read_image(tmp_path / "g.jpg")
    assert jpg.data.shape == (1, 64, 64, 1) and np.abs(jpg.data[0, ..., 0].astype(int) - gray).max() < 8
    Image.fromarray(gray).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").data.shape == (1, 64, 64, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_float_and_wide_tiff(tmp_path: Path, dtype) -> None:
    data = (RNG.random((16, 18)) * 1000).astype(dtype)
    tifffile.imwrite(tmp_path / "f.tif", data)
    img = read_image(tmp_path / "f.tif")
    assert img.data.dtype == dtype and np.array_equal(img.data[0, ..., 0], data)


def test_multipage_stack_and_resolution_round_trip(tmp_path: Path) -> None:
    stack = RNG.integers(0, 4000, (5, 24, 26), dtype=np.uint16)
    res = Resolution(x=3.25, y=3.25, unit="micron")
    write_tiff(tmp_path / "s.tif", stack, res)
    img = read_image(tmp_path / "s.tif")
    assert img.is_stack and img.data.shape == (5, 24, 26, 1)
    assert np.array_equal(img.data[..., 0], stack)
    assert img.resolution is not None
    assert img.resolution.x == pytest.approx(3.25, rel=1e-4) and img.resolution.unit == "micron"


def test_rgb_tiff_and_imagej_hyperstack(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 255, (12, 14, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").data.shape == (1, 12, 14, 3)
    hyper = RNG.integers(0, 255, (3, 2, 12, 14), dtype=np.uint8)  # Z, C, Y, X
    tifffile.imwrite(tmp_path / "h.tif", hyper, imagej=True, metadata={"axes": "ZCYX"})
    img = read_image(tmp_path / "h.tif")
    assert img.data.shape == (3, 12, 14, 2) and np.array_equal(img.data[1, ..., 0], hyper[1, 0])


def test_bytes_reader_matches_file_reader(tmp_path: Path) -> None:
    data = RNG.integers(0, 65535, (10, 11), dtype=np.uint16)
    for raw, name in ((encode_png(data), "a.png"), (encode_tiff(data), "a.tif")):
        assert np.array_equal(read_image_bytes(raw, name).data[0, ..., 0], data)


@pytest.mark.parametrize("raw", [b"", b"garbage bytes that are no image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_corrupt_files_name_the_file(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(raw)
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(path)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.tif")


def test_truncated_tiff_names_the_file(tmp_path: Path) -> None:
    write_tiff(tmp_path / "t.tif", np.zeros((50, 50), np.uint16))
    raw = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[:60])
    with pytest.raises(ImageReadError, match="cut.tif"):
        read_image(tmp_path / "cut.tif")


def test_channel_conversion() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0]]], dtype=np.uint8)
    gray = to_channels(rgb, 1)
    assert gray.shape == (1, 2, 1)
    assert gray[0, :, 0] == pytest.approx([0.299 * 255, 0.587 * 255], rel=1e-5)
    assert to_channels(np.ones((2, 2, 1)), 3).shape == (2, 2, 3)
    assert to_channels(np.ones((2, 2, 4)), 3).shape == (2, 2, 3)  # alpha dropped


def test_percentile_stretch_is_per_image_and_sampled_deterministically() -> None:
    data = RNG.integers(0, 4096, (1, 300, 300, 1), dtype=np.uint16)
    s = fit_stretch(data, 1, Normalisation(1.0, 99.0))
    lo, hi = np.percentile(data, [1, 99])
    assert s.low == pytest.approx(lo) and s.high == pytest.approx(hi)
    out = s(data[0])
    assert out.dtype == np.float32 and np.mean((out >= 0) & (out <= 1)) > 0.97
    assert fit_stretch(data, 1, Normalisation()) == fit_stretch(data, 1, Normalisation())


def test_sparse_image_falls_back_to_range() -> None:
    data = np.zeros((1, 100, 100, 1), np.uint8)
    data[0, 5, 5] = 200  # one bright spot: the 99.8th percentile is still 0
    s = fit_stretch(data, 1, Normalisation())
    assert (s.low, s.high) == (0.0, 200.0)
