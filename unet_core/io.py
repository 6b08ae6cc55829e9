"""Reading and writing microscopy images, and turning them into network input.

Every reader returns an :class:`ImageFile` whose ``data`` is always 4-D, ``(Z, H, W, C)``: a
single 2-D image is a stack of one slice, a gray image has one channel. Keeping one layout means
the rest of the engine never branches on "is this a stack / is this RGB".

Supported: PNG and JPEG (Pillow; 8/16-bit, gray, gray+alpha, RGB(A), palette, 32-bit int/float
modes) and TIFF (tifffile; any integer or float dtype, multi-page stacks, ImageJ hyperstacks,
resolution tags kept so results can be written with the same pixel size).

Normalisation is a per-image (per-stack) percentile stretch whose parameters travel with the
model; it is computed once per image and applied lazily per tile so that a 20000 x 20000 image
never needs a float32 copy of itself.
"""

from __future__ import annotations

import io as _io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
# Classic and BigTIFF headers, little and big endian: a TIFF is recognised even without its suffix.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# Pillow refuses images above ~179 Mpx as "decompression bombs"; microscopy mosaics are
# legitimately that large, and the tiled predictor never needs more than the raw array in memory.
Image.MAX_IMAGE_PIXELS = None

# ITU-R BT.601 luma weights, the usual RGB -> gray conversion (also what Fiji uses when weighted).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageReadError(ValueError):
    """An image file that cannot be read or cannot be segmented; the message names the file."""


@dataclass(frozen=True)
class Resolution:
    """Pixels per ``unit`` along x and y, as stored in TIFF resolution tags."""

    x: float
    y: float
    unit: str = "micron"


@dataclass
class ImageFile:
    """An image as read from disk.

    Attributes:
        name: file name (for messages and output names).
        data: pixels, ``(Z, H, W, C)`` in the file's dtype.
        is_stack: True when the file held several 2-D slices (written back as a stack).
        resolution: pixel size from TIFF tags, if any.
    """

    name: str
    data: np.ndarray
    is_stack: bool = False
    resolution: Resolution | None = None

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def shape2d(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])


def read_image(path: str | Path) -> ImageFile:
    """Read an image file into an :class:`ImageFile`; raises :class:`ImageReadError`."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.suffix.lower() in TIFF_SUFFIXES:
        # tifffile reads straight from the file: no second in-memory copy of a huge stack.
        try:
            return _read_tiff(path, path.name)
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            if isinstance(exc, ImageReadError):
                raise
            raise ImageReadError(f"{path.name}: not a readable TIFF ({exc})") from exc
    with open(path, "rb") as fh:
        return read_image_bytes(fh.read(), path.name)


def read_image_bytes(raw: bytes, name: str) -> ImageFile:
    """Read an image from its encoded bytes (an upload); ``name`` decides the format."""
    if not raw:
        raise ImageReadError(f"{name}: the file is empty")
    suffix = Path(name).suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES or raw[:4] in _TIFF_MAGIC:
            return _read_tiff(raw, name)
        return _read_pillow(raw, name)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, tifffile.TiffFileError) as exc:
        raise ImageReadError(f"{name}: not a readable PNG, JPEG or TIFF image ({_reason(exc)})") from exc


def _reason(exc: Exception) -> str:
    """The decoder's complaint without Python internals (object reprs of in-memory buffers)."""
    if isinstance(exc, UnidentifiedImageError):
        return "unknown or damaged file format"
    text = str(exc).split(" <_io.")[0].strip()
    return text or type(exc).__name__


def _read_pillow(raw: bytes, name: str) -> ImageFile:
    with Image.open(_io.BytesIO(raw)) as im:
        im.load()
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
        arr = np.asarray(im)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return ImageFile(name=name, data=arr[None])


def _read_tiff(source: bytes | Path, name: str) -> ImageFile:
    with tifffile.TiffFile(_io.BytesIO(source) if isinstance(source, bytes) else source) as tif:
        if not tif.series:
            raise ImageReadError(f"{name}: the TIFF holds no image")
        series = tif.series[0]
        arr = series.asarray()
        axes = series.axes
        resolution = _tiff_resolution(tif)
    data, is_stack = _to_zyxc(arr, axes, name)
    return ImageFile(name=name, data=data, is_stack=is_stack, resolution=resolution)


def _to_zyxc(arr: np.ndarray, axes: str, name: str) -> tuple[np.ndarray, bool]:
    """Bring a TIFF series with tifffile axes (e.g. 'YX', 'ZYX', 'TZCYX', 'YXS') to (Z, H, W, C)."""
    if "Y" not in axes or "X" not in axes:
        raise ImageReadError(f"{name}: TIFF axes {axes!r} have no Y/X plane")
    channel_axis = _channel_axis(arr.shape, axes)
    order = [i for i, a in enumerate(axes) if a not in ("Y", "X", channel_axis)]
    order += [axes.index("Y"), axes.index("X")]
    if channel_axis:
        order.append(axes.index(channel_axis))
    arr = np.transpose(arr, order)
    h, w = arr.shape[len(order) - (3 if channel_axis else 2) : len(order) - (1 if channel_axis else 0)]
    c = arr.shape[-1] if channel_axis else 1
    data = arr.reshape(-1, h, w, c)
    return data, data.shape[0] > 1


def _channel_axis(shape: tuple[int, ...], axes: str) -> str:
    """The tifffile axis that becomes channels ('S', 'C' or '' for none)."""
    # Samples (S) or a short channel axis (C) become channels; every other axis becomes slices.
    if "S" in axes:
        return "S"
    return "C" if "C" in axes and shape[axes.index("C")] <= 4 else ""


def read_image_shape(path: str | Path) -> tuple[int, int, int, int]:
    """The ``(Z, H, W, C)`` shape :func:`read_image` would return, from the file header only.

    Lets a data set check hundreds of image/mask pairs for matching sizes in milliseconds
    instead of decoding every pixel. A file whose header is fine but whose pixel data is
    corrupt passes here and fails later in :func:`read_image`.

    Raises:
        ImageReadError: missing file or unreadable header; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if path.suffix.lower() in TIFF_SUFFIXES or magic in _TIFF_MAGIC:
            return _tiff_shape(path)
        return _pillow_shape(path)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, tifffile.TiffFileError) as exc:
        raise ImageReadError(f"{path.name}: not a readable PNG, JPEG or TIFF image ({_reason(exc)})") from exc


def _pillow_shape(path: Path) -> tuple[int, int, int, int]:
    with Image.open(path) as im:
        w, h = im.size
        if im.mode == "P":  # read_image converts palettes to RGB(A)
            c = 4 if "transparency" in im.info else 3
        elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            c = 3
        else:
            c = len(im.getbands())
    return 1, int(h), int(w), c


def _tiff_shape(path: Path) -> tuple[int, int, int, int]:
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(f"{path.name}: the TIFF holds no image")
        shape, axes = tuple(tif.series[0].shape), tif.series[0].axes
    if "Y" not in axes or "X" not in axes:
        raise ImageReadError(f"{path.name}: TIFF axes {axes!r} have no Y/X plane")
    channel_axis = _channel_axis(shape, axes)
    h, w = shape[axes.index("Y")], shape[axes.index("X")]
    c = shape[axes.index(channel_axis)] if channel_axis else 1
    z = int(np.prod([n for n, a in zip(shape, axes) if a not in ("Y", "X", channel_axis)], dtype=np.int64))
    return z, int(h), int(w), int(c)


def _tiff_resolution(tif: tifffile.TiffFile) -> Resolution | None:
    page = tif.pages[0]
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    try:
        xr = tags["XResolution"].value
        yr = tags["YResolution"].value
        x = xr[0] / xr[1] if isinstance(xr, tuple) else float(xr)
        y = yr[0] / yr[1] if isinstance(yr, tuple) else float(yr)
    except (ZeroDivisionError, TypeError):
        return None
    unit = "micron"
    if tif.imagej_metadata and "unit" in tif.imagej_metadata:
        unit = str(tif.imagej_metadata["unit"])
    elif "ResolutionUnit" in tags:
        unit = {2: "inch", 3: "centimeter"}.get(int(tags["ResolutionUnit"].value), "none")
    if x <= 0 or y <= 0:
        return None
    return Resolution(x=float(x), y=float(y), unit=unit)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a 2-D uint8 or uint16 array (or (H, W, 3|4) uint8) as PNG."""
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG holds uint8 or uint16, not {array.dtype}")
    Image.fromarray(array).save(Path(path), format="PNG")


def write_tiff(
    path: str | Path | _io.BytesIO,
    array: np.ndarray,
    resolution: Resolution | None = None,
    axes: str | None = None,
) -> None:
    """Write an ImageJ-readable TIFF of a 2-D to 4-D array.

    Args:
        path: file path or binary file object.
        array: pixels; ``axes`` defaults to "YX" / "ZYX" / "ZCYX" by rank.
        resolution: pixel size to record (kept from the input image).
        axes: ImageJ axes, e.g. "CYX" for a probability map.

    uint8, uint16 and float32 are written as ImageJ hyperstacks; other dtypes (ImageJ cannot show
    them, e.g. uint32 instance ids beyond 65535 objects) as plain TIFF.
    """
    array = np.asarray(array)
    kwargs: dict[str, Any] = {}
    if resolution is not None:
        kwargs["resolution"] = (resolution.x, resolution.y)
    imagej = array.dtype in (np.uint8, np.uint16, np.float32)
    if imagej:
        metadata: dict[str, Any] = {"axes": axes or {2: "YX", 3: "ZYX", 4: "ZCYX"}[array.ndim]}
        if resolution is not None:
            metadata["unit"] = resolution.unit
        kwargs["metadata"] = metadata
    tifffile.imwrite(path, array, imagej=imagej, **kwargs)


def write_image(path: str | Path, array: np.ndarray, resolution: Resolution | None = None) -> None:
    """Write by suffix: ``.png`` via :func:`write_png`, ``.tif``/``.tiff`` via :func:`write_tiff`."""
    if Path(path).suffix.lower() in TIFF_SUFFIXES:
        write_tiff(path, array, resolution)
    else:
        write_png(path, array)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8/uint16 array (for downloads)."""
    buf = _io.BytesIO()
    Image.fromarray(np.asarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def encode_tiff(array: np.ndarray, resolution: Resolution | None = None, axes: str | None = None) -> bytes:
    """TIFF bytes, same layout rules as :func:`write_tiff`."""
    buf = _io.BytesIO()
    write_tiff(buf, array, resolution, axes)
    return buf.getvalue()


# --------------------------------------------------------------------------- channels


def to_channels(tile: np.ndarray, n_channels: int) -> np.ndarray:
    """Convert ``(..., C)`` pixels to ``n_channels`` channels, float32.

    RGB(A) -> gray by luminance, gray -> RGB by replication, alpha dropped; a model is never
    refused an image for its channel count.
    """
    tile = np.asarray(tile)
    c = tile.shape[-1]
    if c in (2, 4):  # gray+alpha or RGBA: alpha carries no signal
        tile = tile[..., : c - 1]
        c -= 1
    if c == n_channels:
        return tile.astype(np.float32, copy=False)
    if n_channels == 1 and c == 3:
        return (tile.astype(np.float32) @ LUMA)[..., None]
    if c == 1:
        return np.repeat(tile.astype(np.float32), n_channels, axis=-1)
    if n_channels == 1:
        return tile.astype(np.float32).mean(axis=-1, keepdims=True)
    raise ImageReadError(f"cannot convert a {c}-channel image to the model's {n_channels} channels")


# --------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class Normalisation:
    """Percentile stretch: ``(x - p_low) / (p_high - p_low)``; the values travel in model metadata."""

    low_percentile: float = 1.0
    high_percentile: float = 99.8

    def to_dict(self) -> dict[str, Any]:
        return {"mode": "percentile", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalisation:
        return cls(float(d.get("low_percentile", 1.0)), float(d.get("high_percentile", 99.8)))


# Percentiles of a 20000 x 20000 image from every pixel would cost seconds and gigabytes; a fixed
# strided sample of at most this many pixels is deterministic and accurate to well below 1 %.
_PERCENTILE_SAMPLE = 4_000_000


@dataclass(frozen=True)
class Stretch:
    """The per-image result of :class:`Normalisation`: apply with ``stretch(tile)``."""

    low: float
    high: float

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        out = np.asarray(tile, dtype=np.float32) - np.float32(self.low)
        out *= np.float32(1.0 / (self.high - self.low))
        return out


def fit_stretch(data: np.ndarray, n_channels: int, norm: Normalisation, name: str = "image") -> Stretch:
    """Compute the percentile stretch of a whole image or stack (after channel conversion).

    Raises :class:`ImageReadError` for images that cannot be segmented: empty, NaN/inf, constant.
    """
    if data.size == 0:
        raise ImageReadError(f"{name}: the image is empty (0 pixels)")
    flat = data.reshape(-1, data.shape[-1])
    step = max(1, flat.shape[0] // _PERCENTILE_SAMPLE)
    sample = to_channels(flat[::step], n_channels)
    if not np.all(np.isfinite(sample)) or (
        data.dtype.kind == "f" and not np.all(np.isfinite(data))
    ):
        raise ImageReadError(f"{name}: the image contains NaN or infinite values")
    lo, hi = np.percentile(sample, [norm.low_percentile, norm.high_percentile])
    if hi <= lo:  # a sparse image (few bright spots) can have equal percentiles: use the range
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        raise ImageReadError(f"{name}: the image is constant (every pixel is {lo:g}); nothing to segment")
    return Stretch(float(lo), float(hi))
