"""Reading and writing microscopy images, and turning them into network input.

Every reader returns an :class:`ImageFile` whose ``data`` is always 4-D, ``(Z, H, W, C)``: a
single 2-D image is a stack of one slice, a gray image has one channel. Keeping one layout means
the rest of the engine never branches on "is this a stack / is this RGB".

Supported: PNG and JPEG (Pillow; 8/16-bit, gray, gray+alpha, RGB(A), palette, 32-bit int/float
modes) and TIFF (tifffile + imagecodecs; any integer or float dtype, LZW/Deflate/JPEG/... compression,
multi-page stacks, ImageJ hyperstacks, resolution tags and OME physical sizes kept so results can be
written with the same pixel size and objects measured in micrometres).

Channels: every reader says what its channels are (:attr:`ImageFile.axes`, :attr:`ImageFile.mode`).
Colour samples (RGB, RGBA, gray + alpha) are converted as before (luminance, alpha ignored);
separate signals (an ImageJ or OME channel axis: DAPI, GFP, ...) are kept as channels and never
mixed or dropped silently: :func:`channels_for_model` asks for a choice (:func:`select_channels`)
when the image has more of them than the model takes. Zeiss CZI, Nikon ND2 and Leica LIF files are
not read; the message says how to convert them with Fiji (:data:`CONVERT_FIRST`).

Reading is one front door (:func:`read_image`, :func:`read_image_bytes`) for files that may come
from anywhere: the format is decided by the file's first bytes, not its name; the size is read from
the header and checked against a pixel budget (:func:`pixel_budget`) *before* anything is decoded,
so an 8 KB file claiming 65500 x 65500 pixels is refused instead of exhausting memory; and every
decoder failure becomes an :class:`ImageReadError` naming the file, never a traceback.

Normalisation is a per-image (per-stack) percentile stretch whose parameters travel with the
model; it is computed once per image and applied lazily per tile so that a 20000 x 20000 image
never needs a float32 copy of itself.
"""

from __future__ import annotations

import io as _io
import logging
import math
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from .errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
# The formats are recognised by their first bytes (a PNG named .tif is still a PNG). TIFF: classic
# and BigTIFF headers, little and big endian.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
#: microscope vendor formats that are not read here, by suffix: what they are called in messages.
CONVERT_FIRST = {".czi": "Zeiss CZI", ".nd2": "Nikon ND2", ".lif": "Leica LIF"}

#: environment variable: the most pixels (width x height x slices) one image may have; replaces
#: the limit derived from the available memory (see :func:`pixel_budget`).
MAX_PIXELS_ENV = "UNET_STUDIO_MAX_PIXELS"
#: the derived limit never goes below this: a real 20000 x 20000 mosaic must open from the command
#: line even on a machine whose free memory is tight at that moment.
MIN_PIXEL_BUDGET = 20_000 * 20_000
#: the default limit of :func:`read_image_bytes` (uploads in the app, which holds several images
#: and their results per session); larger images go through the command line.
UPLOAD_MAX_PIXELS = 100_000_000
# One decoded image plus its working memory (per pixel: a float32 tile copy, labels, instance ids,
# probabilities ~ 10 bytes) may take this share of the memory available when it is read.
_MEMORY_SHARE = 0.4
_WORK_BYTES_PER_PIXEL = 10

# Pillow's own fixed ~179 Mpx "decompression bomb" limit would refuse legitimate microscopy
# mosaics; the budget above, checked from the header before decoding, replaces it.
Image.MAX_IMAGE_PIXELS = None

# ITU-R BT.601 luma weights, the usual RGB -> gray conversion (also what Fiji uses when weighted).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageReadError(UserError):
    """An image file that cannot be read or cannot be segmented; the message names the file."""


class ChannelChoiceError(ImageReadError):
    """An image with more separate channels than the model takes, and no channel chosen.

    Attributes:
        n_channels: the channels the image has.
        in_channels: the channels the model takes.
    """

    def __init__(self, message: str, n_channels: int, in_channels: int) -> None:
        super().__init__(message)
        self.n_channels = n_channels
        self.in_channels = in_channels


@dataclass(frozen=True)
class Resolution:
    """Pixels per ``unit`` along x and y, as stored in TIFF resolution tags."""

    x: float
    y: float
    unit: str = "micron"


#: What the channels (the last axis of :attr:`ImageFile.data`) of an image are.
CHANNEL_MODES = ("gray", "gray+alpha", "rgb", "rgba", "channels")


@dataclass
class ImageFile:
    """An image as read from disk.

    Attributes:
        name: file name (for messages and output names).
        data: pixels, ``(Z, H, W, C)`` in the file's dtype.
        is_stack: True when the file held several 2-D slices (written back as a stack).
        resolution: pixel size from TIFF tags or OME metadata, if any (see :attr:`pixel_size_um`).
        axes: the file's own axes, as tifffile names them: ``"YX"``, ``"YXS"`` (colour samples,
            e.g. RGB), ``"CYX"`` or ``"ZCYX"`` (ImageJ/OME channels), ``"TZCYX"``, ... ``data`` is
            always ``(Z, H, W, C)`` whatever they are. Filled in from ``data`` when not given.
        mode: what the C axis holds, one of :data:`CHANNEL_MODES`: ``"gray"``, ``"gray+alpha"``,
            ``"rgb"``, ``"rgba"`` (colour samples: converted to gray by luminance, alpha ignored) or
            ``"channels"`` (separate signals such as DAPI and GFP: chosen, never mixed). When not
            given it is guessed from C as before channels were told apart: 1 gray, 2 gray+alpha,
            3 rgb, 4 rgba, more: channels.
        notes: what reading changed and a user should know (NaN pixels set to background, the
            channel kept by :func:`select_channels`); printed by the CLI, shown by the app.
        channels_used: the file's channels (numbered from 1, as in Fiji) that ``data`` holds
            after :func:`select_channels`; empty when ``data`` holds all of them.
    """

    name: str
    data: np.ndarray
    is_stack: bool = False
    resolution: Resolution | None = None
    axes: str = ""
    mode: str = ""
    notes: list[str] = field(default_factory=list)
    channels_used: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        c = int(self.data.shape[-1]) if self.data.ndim == 4 else 1
        if not self.mode:
            self.mode = {1: "gray", 2: "gray+alpha", 3: "rgb", 4: "rgba"}.get(c, "channels")
        if self.mode not in CHANNEL_MODES:
            raise ValueError(f"mode must be one of {CHANNEL_MODES}, not {self.mode!r}")
        if not self.axes:
            plane = "YX" if c == 1 else ("CYX" if self.mode == "channels" else "YXS")
            self.axes = ("Z" if self.data.ndim == 4 and self.data.shape[0] > 1 else "") + plane

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def shape2d(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def n_channels(self) -> int:
        """The number of channels in ``data`` (colour samples and alpha included)."""
        return int(self.data.shape[-1])

    @property
    def has_separate_channels(self) -> bool:
        """True for several separate signals (not colour): which one to segment must be chosen."""
        return self.mode == "channels" and self.n_channels > 1

    @property
    def pixel_size_um(self) -> tuple[float, float] | None:
        """``(y, x)`` size of one pixel in micrometres, or None when the file does not say."""
        return pixel_size_um(self.resolution)


# --------------------------------------------------------------------------- memory budget


def _meminfo_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """What the cgroup v2 memory limit still allows (containers), else None."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def _address_space_headroom() -> int | None:
    """What ``RLIMIT_AS`` (ulimit -v) still allows this process to map, else None."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as fh:
            used = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
        return max(0, soft - used)
    except (ImportError, OSError, ValueError, StopIteration):
        return None


def available_memory() -> int | None:
    """Bytes this process may still allocate: the least of the machine's available memory, the
    container's limit and the address-space limit; None when none of them is known."""
    known = [v for v in (_meminfo_available(), _cgroup_headroom(), _address_space_headroom()) if v is not None]
    if not known and hasattr(os, "sysconf"):
        try:
            known.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(known) if known else None


def _env_budget() -> int | None:
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 1:
        log.warning("%s=%r is not a positive number of pixels; ignored", MAX_PIXELS_ENV, text)
        return None
    return int(value)


def pixel_budget(bytes_per_pixel: float = 1.0) -> int:
    """The most pixels (width x height x slices) one image may have on this machine now.

    ``UNET_STUDIO_MAX_PIXELS`` when set; otherwise as many as fit, with ``bytes_per_pixel`` for
    the decoded pixels plus ~10 bytes of working memory each, into 40 % of :func:`available_memory`,
    but never fewer than :data:`MIN_PIXEL_BUDGET` (20000 x 20000).
    """
    env = _env_budget()
    if env is not None:
        return env
    available = available_memory()
    if available is None:
        return MIN_PIXEL_BUDGET
    return max(MIN_PIXEL_BUDGET, int(_MEMORY_SHARE * available / (bytes_per_pixel + _WORK_BYTES_PER_PIXEL)))


# --------------------------------------------------------------------------- headers


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says about the image, read without decoding any pixel.

    Attributes:
        format: ``"PNG"``, ``"JPEG"`` or ``"TIFF"`` (from the file's first bytes).
        shape: ``(Z, H, W, C)`` as :func:`read_image` will return it.
        dtype: the pixel type :func:`read_image` will return.
        axes, mode: as :attr:`ImageFile.axes` and :attr:`ImageFile.mode` will be.
    """

    format: str
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    axes: str = ""
    mode: str = ""

    @property
    def pixels(self) -> int:
        z, h, w, _ = self.shape
        return z * h * w

    @property
    def bytes_per_pixel(self) -> int:
        return self.shape[3] * self.dtype.itemsize

    def describe(self) -> str:
        """``4000 x 3000 pixels`` or ``12 slices of 2048 x 2048 pixels`` (width first)."""
        z, h, w, _ = self.shape
        plane = f"{w} x {h} pixels"
        return plane if z == 1 else f"{z} slices of {plane}"


def sniff_format(head: bytes) -> str | None:
    """``"PNG"``, ``"JPEG"``, ``"TIFF"`` from a file's first bytes, or None for anything else."""
    if head.startswith(_PNG_MAGIC):
        return "PNG"
    if head.startswith(_JPEG_MAGIC):
        return "JPEG"
    if head[:4] in _TIFF_MAGIC:
        return "TIFF"
    return None


def _reason(exc: BaseException) -> str:
    """The decoder's complaint in one line, without Python internals (reprs of in-memory buffers)."""
    if isinstance(exc, UnidentifiedImageError):
        return "unknown or damaged file format"
    text = " ".join(str(exc).split(" <_io.")[0].split())
    if len(text) > 200:
        text = text[:199] + "…"
    # A bare ZeroDivisionError or struct.error says little without its kind.
    if not isinstance(exc, (OSError, ValueError, EOFError, SyntaxError, tifffile.TiffFileError)):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text or type(exc).__name__


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.kind == "c":
        raise ImageReadError(f"{name}: the pixels are complex numbers ({dtype}), which cannot be segmented; "
                             "save the magnitude or the real part as a real-valued image")
    if dtype.kind not in "biuf":
        raise ImageReadError(f"{name}: pixel type {dtype} is not supported (integers or floats only)")


def _pillow_mode(im: Image.Image) -> str:
    """The :data:`CHANNEL_MODES` entry of a Pillow image as :func:`read_image` returns it."""
    if im.mode == "P":  # read_image converts palettes to RGB(A)
        return "rgba" if "transparency" in im.info else "rgb"
    if im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGB"):
        return "rgb"
    bands = len(im.getbands())
    return {1: "gray", 2: "gray+alpha", 3: "rgb"}.get(bands, "rgba")


def _pillow_header(im: Image.Image, kind: str, name: str) -> ImageHeader:
    w, h = im.size
    mode = _pillow_mode(im)
    c = {"gray": 1, "gray+alpha": 2, "rgb": 3}.get(mode, 4)
    if im.mode.startswith("I;16"):
        dtype = np.dtype(np.uint16)
    elif im.mode in ("I", "F"):
        dtype = np.dtype(np.int32 if im.mode == "I" else np.float32)
    else:
        dtype = np.dtype(np.uint8)
    if w <= 0 or h <= 0:
        raise ImageReadError(f"{name}: the image has no pixels ({w} x {h})")
    return ImageHeader(kind, (1, int(h), int(w), int(c)), dtype, "YX" if c == 1 else "YXS", mode)


def _first_series(tif: tifffile.TiffFile, name: str) -> tifffile.TiffPageSeries:
    if not tif.pages:
        raise ImageReadError(f"{name}: the TIFF holds no image")
    page = tif.pages.first
    # tifffile divides by the width to lay out strips: say what is wrong instead.
    for attribute, tag in (("imagewidth", "ImageWidth"), ("imagelength", "ImageLength")):
        if getattr(page, attribute, 1) == 0:
            raise ImageReadError(f"{name}: the TIFF is damaged: its {tag} is 0 (no pixels)")
    if not tif.series:
        raise ImageReadError(f"{name}: the TIFF holds no image")
    return tif.series[0]


def _tiff_header(series: tifffile.TiffPageSeries, name: str) -> ImageHeader:
    shape, axes = tuple(int(n) for n in series.shape), series.axes
    if "Y" not in axes or "X" not in axes:
        raise ImageReadError(f"{name}: TIFF axes {axes!r} have no Y/X plane")
    channel_axis = _channel_axis(shape, axes)
    h, w = shape[axes.index("Y")], shape[axes.index("X")]
    c = shape[axes.index(channel_axis)] if channel_axis else 1
    z = math.prod(n for n, a in zip(shape, axes) if a not in ("Y", "X", channel_axis))
    if min(h, w, c, z) <= 0:
        raise ImageReadError(f"{name}: the TIFF image has no pixels (shape {shape}, axes {axes})")
    dtype = np.dtype(series.dtype)
    return ImageHeader("TIFF", (int(z), int(h), int(w), int(c)), np.dtype(np.uint8) if dtype == bool else dtype,
                       axes, _tiff_mode(series, channel_axis, int(c)))


# TIFF photometric interpretations whose samples are colour components (converted by luminance).
_COLOUR_PHOTOMETRIC = {tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR, tifffile.PHOTOMETRIC.SEPARATED,
                       tifffile.PHOTOMETRIC.CIELAB, tifffile.PHOTOMETRIC.ICCLAB, tifffile.PHOTOMETRIC.ITULAB}
# ExtraSamples values that mean alpha (associated, unassociated); 0 is "unspecified data".
_ALPHA_EXTRASAMPLES = (1, 2)


def _tiff_mode(series: tifffile.TiffPageSeries, channel_axis: str, c: int) -> str:
    """What the channels of a TIFF series are (:data:`CHANNEL_MODES`).

    An ImageJ/OME channel axis (C) holds separate signals; samples (S) are colour when the
    photometric interpretation says so, gray + alpha when the extra sample is marked as alpha,
    and separate signals otherwise (a 2-sample gray TIFF whose second sample is unspecified data).
    """
    if c == 1:
        return "gray"
    if channel_axis == "C":
        return "channels"
    page = series.keyframe
    photometric = getattr(page, "photometric", None)
    extras = tuple(int(e) for e in (getattr(page, "extrasamples", None) or ()))
    if photometric in _COLOUR_PHOTOMETRIC and c in (3, 4):
        return "rgb" if c == 3 else "rgba"
    if c == 2 and extras[:1] and extras[0] in _ALPHA_EXTRASAMPLES:
        return "gray+alpha"
    return "channels"


def _check_budget(header: ImageHeader, name: str, max_pixels: int | None) -> None:
    """Refuse an image whose header claims more pixels than may be decoded here."""
    budget = pixel_budget(header.bytes_per_pixel)
    if max_pixels is not None and max_pixels < budget:
        if header.pixels > max_pixels:
            raise ImageReadError(
                f"{name}: {header.describe()} ({header.pixels:,} px) is more than the {max_pixels:,} px an "
                "uploaded image may have; segment it with the command line instead: "
                "python -m unet_core predict IMAGE --out FOLDER")
        return
    if header.pixels <= budget:
        return
    if _env_budget() is not None:
        why = f"set by {MAX_PIXELS_ENV}; raise it to read this image"
    else:
        available = available_memory()
        memory = f"{available / 1e9:.1f} GB of available memory" if available else "its memory"
        why = (f"for one image on this machine (from its {memory}); to try anyway, set the environment "
               f"variable {MAX_PIXELS_ENV}={header.pixels}")
    blocks = (" or segment it in blocks, which reads it window by window: predict IMAGE --out FOLDER --scheduler "
              "local" if header.format == "TIFF" and header.shape[0] == 1 else "")
    raise ImageReadError(f"{name}: {header.describe()} ({header.pixels:,} px) is more than the limit of "
                         f"{budget:,} px {why}{blocks}")


def _memory_error(header: ImageHeader, name: str) -> ImageReadError:
    gb = header.pixels * header.bytes_per_pixel / 1e9
    return ImageReadError(f"{name}: not enough memory to decode {header.describe()} ({gb:.1f} GB); close other "
                          "programs or split the image into smaller files")


def _tiff_data_end(series: tifffile.TiffPageSeries) -> int:
    """The byte just after the series' last stored segment (strip or tile)."""
    if series.dataoffset is not None:  # contiguous, uncompressed
        return int(series.dataoffset) + int(series.nbytes)
    end = 0
    for page in series.pages:
        if page is None:
            continue
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if count:
                end = max(end, int(offset) + int(count))
    return end


@contextmanager
def _tifffile_warnings() -> Iterator[list[str]]:
    """The warnings tifffile logs in this thread while the block runs (it warns, for example, when a
    page offset points past the end of a truncated file, and then quietly reads fewer pages)."""
    seen: list[str] = []
    me = threading.get_ident()

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == me and record.levelno >= logging.WARNING:
                seen.append(record.getMessage())

    logger = logging.getLogger("tifffile")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def _check_tiff_complete(tif: tifffile.TiffFile, series: tifffile.TiffPageSeries, name: str,
                         warnings: list[str]) -> None:
    """Refuse a truncated TIFF before decoding it: decoders fill missing data silently (JPEG) or
    stop with obscure errors (LZW), and a broken page chain silently drops slices."""
    size = int(tif.filehandle.size)
    end = _tiff_data_end(series)
    if end > size:
        raise ImageReadError(f"{name}: the TIFF is truncated or corrupt: its pixel data ends at byte {end:,}, "
                             f"the file has {size:,} bytes")
    for text in warnings:
        match = re.search(r"invalid page offset (\d+)", text)
        if match and int(match.group(1)) >= size:
            raise ImageReadError(f"{name}: the TIFF is truncated or corrupt: a page lies at byte "
                                 f"{int(match.group(1)):,}, the file has {size:,} bytes")


# --------------------------------------------------------------------------- reading


def read_image(path: str | Path, max_pixels: int | None = None) -> ImageFile:
    """Read an image file into an :class:`ImageFile`; raises :class:`ImageReadError`.

    Args:
        path: a PNG, JPEG or TIFF file, recognised by its content whatever its suffix.
        max_pixels: a limit below the machine's :func:`pixel_budget` (None: the budget).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: {'a folder, not an image file' if path.is_dir() else 'no such file'}")
    _refuse_vendor_format(path.name)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ImageReadError(f"{path.name}: cannot be opened ({exc.strerror or exc})") from exc
    if not head:
        raise ImageReadError(f"{path.name}: the file is empty")
    # From the path, not from bytes: tifffile reads a huge stack straight from the file.
    return _read(path, head, path.name, max_pixels)


def read_image_bytes(raw: bytes, name: str, max_pixels: int | None = UPLOAD_MAX_PIXELS) -> ImageFile:
    """Read an image from its encoded bytes (an upload); the content decides the format.

    Args:
        raw: the file's bytes.
        name: the file name, for messages and output names.
        max_pixels: the most pixels accepted (default :data:`UPLOAD_MAX_PIXELS`, for uploads);
            None: the machine's :func:`pixel_budget`.
    """
    _refuse_vendor_format(name)
    if not raw:
        raise ImageReadError(f"{name}: the file is empty")
    return _read(_io.BytesIO(raw), raw[:16], name, max_pixels)


def _refuse_vendor_format(name: str) -> None:
    """Say how to convert a microscope vendor file (by its suffix: these formats have no magic
    bytes this reader knows, and a guess at their content would only say "unknown format")."""
    suffix = Path(name).suffix.lower()
    if suffix in CONVERT_FIRST:
        raise ImageReadError(
            f"{name}: {CONVERT_FIRST[suffix]} files are not read directly; open it in Fiji with "
            "File > Import > Bio-Formats, then save it with File > Save As > Tiff... and segment the TIFF")


def _read(source: Path | IO[bytes], head: bytes, name: str, max_pixels: int | None) -> ImageFile:
    kind = sniff_format(head)
    if kind is None:
        raise ImageReadError(f"{name}: not a readable PNG, JPEG or TIFF image (unknown or damaged file format)")
    try:
        if kind == "TIFF":
            image = _read_tiff(source, name, max_pixels)
        else:
            image = _read_pillow(source, name, kind, max_pixels)
        return _nan_as_background(image)
    except ImageReadError:
        raise
    except MemoryError as exc:  # numpy's _ArrayMemoryError included
        raise ImageReadError(f"{name}: not enough memory to read this image") from exc
    except Exception as exc:  # the last line of defence: a file never causes a traceback
        log.debug("reading %s failed", name, exc_info=True)
        raise ImageReadError(f"{name}: not a readable {kind} image ({_reason(exc)})") from exc


def _read_pillow(source: Path | IO[bytes], name: str, kind: str, max_pixels: int | None) -> ImageFile:
    try:
        im = Image.open(source, formats=[kind])  # lazy: reads the header only
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error, ...
        raise ImageReadError(f"{name}: not a readable {kind} image (damaged header: {_reason(exc)})") from exc
    with im:
        header = _pillow_header(im, kind, name)
        _check_budget(header, name, max_pixels)
        try:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            arr = np.asarray(im)
        except MemoryError as exc:
            raise _memory_error(header, name) from exc
        except Exception as exc:  # decoder errors of every kind
            raise ImageReadError(f"{name}: the {kind} image is truncated or corrupt ({_reason(exc)})") from exc
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return ImageFile(name=name, data=arr[None], axes=header.axes, mode=header.mode)


def _read_tiff(source: Path | IO[bytes], name: str, max_pixels: int | None) -> ImageFile:
    try:
        tif = tifffile.TiffFile(source)
    except Exception as exc:  # tifffile raises TiffFileError, struct.error, ValueError, ...
        raise ImageReadError(f"{name}: not a readable TIFF image (damaged header: {_reason(exc)})") from exc
    with tif, _tifffile_warnings() as warnings:
        try:
            series = _first_series(tif, name)
            header = _tiff_header(series, name)
        except ImageReadError:
            raise
        except Exception as exc:  # ZeroDivisionError for a zero width, KeyError, ...
            raise ImageReadError(f"{name}: not a readable TIFF image (damaged header: {_reason(exc)})") from exc
        _check_dtype(np.dtype(series.dtype), name)
        _check_budget(header, name, max_pixels)
        _check_tiff_complete(tif, series, name, warnings)
        try:
            arr = series.asarray()
        except MemoryError as exc:
            raise _memory_error(header, name) from exc
        except Exception as exc:  # imagecodecs' LzwError, DeflateError, JpegError, ...
            raise ImageReadError(f"{name}: the TIFF is truncated or corrupt ({_reason(exc)})") from exc
        axes = series.axes
        try:
            resolution = tiff_resolution(tif)
        except Exception:  # odd resolution tags cost the pixel size, never the image
            log.debug("%s: resolution tags ignored", name, exc_info=True)
            resolution = None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    data, is_stack = _to_zyxc(arr, axes, name)
    return ImageFile(name=name, data=data, is_stack=is_stack, resolution=resolution, axes=axes, mode=header.mode)


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
    # Samples (S) or the channel axis (C, any length: a 6-channel ImageJ hyperstack is 6 signals,
    # not 6 slices) become channels; every other axis becomes slices.
    if "S" in axes:
        return "S"
    return "C" if "C" in axes else ""


def read_image_header(path: str | Path) -> ImageHeader:
    """The :class:`ImageHeader` of an image file: format, shape and dtype, nothing decoded.

    Raises:
        ImageReadError: missing file, unknown format or unreadable header; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    _refuse_vendor_format(path.name)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:  # as any other complaint about the header (what it said before)
        raise ImageReadError(f"{path.name}: not a readable PNG, JPEG or TIFF image ({_reason(exc)})") from exc
    return _header(path, head, path.name)


def read_image_header_bytes(raw: bytes, name: str) -> ImageHeader:
    """:func:`read_image_header` of an upload's bytes: what the image holds before decoding it
    (the app asks for a channel before segmenting a multi-channel TIFF)."""
    _refuse_vendor_format(name)
    return _header(_io.BytesIO(raw), raw[:16], name)


def _header(source: Path | IO[bytes], head: bytes, name: str) -> ImageHeader:
    try:
        kind = sniff_format(head)
        if kind is None:
            raise ImageReadError(f"{name}: not a readable PNG, JPEG or TIFF image "
                                 f"({'the file is empty' if not head else 'unknown or damaged file format'})")
        if kind == "TIFF":
            with tifffile.TiffFile(source) as tif:
                return _tiff_header(_first_series(tif, name), name)
        with Image.open(source, formats=[kind]) as im:
            return _pillow_header(im, kind, name)
    except ImageReadError:
        raise
    except Exception as exc:  # any decoder complaint about a damaged header
        raise ImageReadError(f"{name}: not a readable PNG, JPEG or TIFF image ({_reason(exc)})") from exc


def read_image_shape(path: str | Path) -> tuple[int, int, int, int]:
    """The ``(Z, H, W, C)`` shape :func:`read_image` would return, from the file header only.

    Lets a data set check hundreds of image/mask pairs for matching sizes in milliseconds
    instead of decoding every pixel. A file whose header is fine but whose pixel data is
    corrupt passes here and fails later in :func:`read_image`.

    Raises:
        ImageReadError: missing file or unreadable header; the message names the file.
    """
    return read_image_header(path).shape


# TIFF ResolutionUnit values (4 and 5 are tifffile's, beyond the TIFF standard's 1-3).
_RESOLUTION_UNITS = {2: "inch", 3: "centimeter", 4: "millimeter", 5: "micron"}

# Length units as ImageJ, OME and TIFF tags spell them -> micrometres per unit. ImageJ writes
# "micron" or, in its TIFF description, the escaped "\\u00B5m". "inch" is left out on purpose:
# microscope software does not use it, while image editors stamp every file with 72 or 300 dpi,
# which would turn into a 350 or 85 um "pixel size".
_UM_PER_UNIT = {
    **dict.fromkeys(("micron", "microns", "um", "\u00b5m", "\u03bcm", "\\u00b5m", "micrometer", "micrometre"),
                    1.0),
    **dict.fromkeys(("nm", "nanometer", "nanometre"), 1e-3),
    **dict.fromkeys(("mm", "millimeter", "millimetre"), 1e3),
    **dict.fromkeys(("cm", "centimeter", "centimetre"), 1e4),
    **dict.fromkeys(("m", "meter", "metre"), 1e6),
}


def um_per_unit(unit: str) -> float | None:
    """Micrometres in one ``unit`` (``"micron"``, ``"nm"``, ``"mm"``, ...); None for a unit that is
    no length (``"none"``, ``"pixel"``) or is not trusted as a pixel size (``"inch"``)."""
    return _UM_PER_UNIT.get(unit.strip().lower())


def pixel_size_um(resolution: Resolution | None) -> tuple[float, float] | None:
    """``(y, x)`` size of a pixel in micrometres from a :class:`Resolution`, None when unknown."""
    if resolution is None:
        return None
    um = um_per_unit(resolution.unit)
    if um is None or not (resolution.x > 0 and resolution.y > 0):
        return None
    return um / resolution.y, um / resolution.x


def resolution_from_um(pixel_size: float) -> Resolution:
    """The :class:`Resolution` of square pixels ``pixel_size`` micrometres wide (a typed size)."""
    if not (math.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"a pixel size must be a positive number of micrometres, not {pixel_size!r}")
    return Resolution(x=1.0 / pixel_size, y=1.0 / pixel_size, unit="micron")


def tiff_resolution(tif: tifffile.TiffFile) -> Resolution | None:
    """The pixel size: OME's PhysicalSizeX/Y when the file has them, else the resolution tags (with
    ImageJ's unit, else the ResolutionUnit tag)."""
    if tif.is_ome and tif.ome_metadata:
        ome = _ome_resolution(tif.ome_metadata)
        if ome is not None:
            return ome
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
        unit = _RESOLUTION_UNITS.get(int(tags["ResolutionUnit"].value), "none")
    if x <= 0 or y <= 0:
        return None
    return Resolution(x=float(x), y=float(y), unit=unit)


def _ome_resolution(xml: str) -> Resolution | None:
    """PhysicalSizeX/Y of the first OME ``Pixels`` element, as pixels per micron.

    Read with a regular expression, not an XML parser: only two attributes are needed, and the
    description of an untrusted file is never expanded as XML.
    """
    element = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml[:1_000_000])
    if element is None:
        return None
    attributes = dict(re.findall(r'(\w+)="([^"]*)"', element.group(0)))
    sizes = []
    for axis in ("X", "Y"):
        try:
            value = float(attributes.get(f"PhysicalSize{axis}") or attributes["PhysicalSizeX"])
        except (KeyError, ValueError):
            return None
        um = um_per_unit(attributes.get(f"PhysicalSize{axis}Unit", "um"))
        if um is None or not (math.isfinite(value) and value > 0):
            return None
        sizes.append(value * um)
    return Resolution(x=1.0 / sizes[0], y=1.0 / sizes[1], unit="micron")


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


def encode_slice(pixels: np.ndarray, resolution: Resolution | None = None) -> tuple[str, bytes]:
    """(suffix, bytes) of one slice's pixels ``(H, W, C)`` as a file the data set reader takes:
    PNG for 8-bit gray and RGB(A), else a TIFF keeping the dtype (channels as an ImageJ ``CYX``
    axis) and the pixel size."""
    if pixels.dtype == np.uint8 and pixels.shape[-1] in (1, 3, 4):
        return ".png", encode_png(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    if pixels.shape[-1] == 1:
        return ".tif", encode_tiff(pixels[..., 0], resolution)
    if pixels.dtype not in (np.uint8, np.uint16, np.float32):  # a channel axis ImageJ TIFFs can say
        pixels = pixels.astype(np.float32)
    return ".tif", encode_tiff(np.moveaxis(pixels, -1, 0), resolution, "CYX")


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

    As many channels as the model takes pass unchanged (two chosen channels for a 2-channel
    model); otherwise RGB(A) -> gray by luminance, gray -> RGB by replication, alpha dropped.
    Which channels of a multi-channel image reach this point is decided before, by
    :func:`channels_for_model`.
    """
    tile = np.asarray(tile)
    c = tile.shape[-1]
    if c == n_channels:
        return tile.astype(np.float32, copy=False)
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


def select_channels(image: ImageFile, channels: Sequence[int] | None) -> ImageFile:
    """A copy of ``image`` holding only ``channels``, in that order, numbered from 1 as in Fiji.

    ``None`` or an empty list returns ``image`` itself. One channel gives a gray image. A note
    says which channels were kept (the CLI prints it, the app shows it with the result).

    Raises:
        ImageReadError: a channel the image does not have, or one chosen twice; names the file.
    """
    if not channels:
        return image
    n = image.n_channels
    for channel in channels:
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 1 <= channel <= n:
            raise ImageReadError(f"{image.name}: there is no channel {channel}: the image has {n} "
                                 f"channel{'s' if n != 1 else ''} (axes {image.axes}), numbered 1 to {n} as in Fiji")
    if len(set(channels)) != len(channels):
        twice = next(c for c in channels if list(channels).count(c) > 1)
        raise ImageReadError(f"{image.name}: channel {twice} is chosen twice")
    index = [int(c) - 1 for c in channels]
    origin = image.channels_used or tuple(range(1, n + 1))
    used = tuple(origin[i] for i in index)
    kept = ", ".join(map(str, used))
    of = "" if image.channels_used else f" of {n}"  # a second choice no longer knows the file's count
    note = f"segmented on channel{'s' if len(used) > 1 else ''} {kept}{of} (numbered from 1, as in Fiji)"
    # One channel left: the C (or S) axis is gone from the file's axes as the rest of the engine sees them.
    axes = image.axes.replace("C", "").replace("S", "") if len(index) == 1 else image.axes
    return replace(image, data=image.data[..., index], axes=axes, mode="gray" if len(index) == 1 else "channels",
                   notes=[*image.notes, note], channels_used=used)


def channels_for_model(image: ImageFile, in_channels: int, channels: Sequence[int] | None = None) -> ImageFile:
    """The image as a model taking ``in_channels`` channels should see it; never a silent guess.

    Args:
        image: as read.
        in_channels: what the model takes (``meta.unet.in_channels``).
        channels: the channels to segment, numbered from 1 as in Fiji (``--channel 2``); None:
            all of them.

    Without ``channels``: gray and colour images pass (colour becomes gray by luminance later,
    alpha is ignored), as does an image with exactly the model's number of separate channels; an
    image with more separate channels than the model takes is refused. With ``channels``: exactly
    ``in_channels`` of them, or one (used like a gray image).

    Raises:
        ChannelChoiceError: separate channels and no choice; names the file and its channels.
        ImageReadError: a channel that does not exist, or a choice of the wrong size.
    """
    if channels:
        chosen = select_channels(image, channels)
        if chosen.n_channels not in (1, in_channels):
            raise ImageReadError(f"{image.name}: {chosen.n_channels} channels chosen, but the model takes "
                                 f"{in_channels}")
        return chosen
    if image.has_separate_channels and image.n_channels != in_channels:
        n = image.n_channels
        raise ChannelChoiceError(
            f"{image.name}: the image has {n} separate channels (axes {image.axes}, not RGB) but the model "
            f"takes {in_channels}; which channel{'s' if in_channels > 1 else ''} to segment must be chosen",
            n, in_channels)
    if image.mode in ("gray+alpha", "rgba") and image.n_channels == in_channels:
        # to_channels passes a matching channel count unchanged: the alpha must go here.
        image = replace(image, data=image.data[..., :-1], mode="gray" if image.mode == "gray+alpha" else "rgb")
    return image


def _nan_as_background(image: ImageFile) -> ImageFile:
    """Float pixels that are NaN (outside the field of view, masked out by another program) become
    the image's smallest finite value, so they are segmented as background; a note says so.

    Raises:
        ImageReadError: every pixel is NaN.
    """
    data = image.data
    if data.dtype.kind != "f":
        return image
    missing = 0
    for z in range(data.shape[0]):  # per slice: the mask of a stack is never held at once
        missing += int(np.count_nonzero(np.isnan(data[z])))
    if missing == 0:
        return image
    if missing == data.size:
        raise ImageReadError(f"{image.name}: every pixel is NaN (not a number); there is nothing to segment")
    with np.errstate(invalid="ignore"):
        fill = np.nanmin(data)
    if not np.isfinite(fill):  # -inf somewhere: the infinite values are refused later, by name
        return image
    if not data.flags.writeable:
        data = data.copy()
    for z in range(data.shape[0]):
        np.copyto(data[z], fill, where=np.isnan(data[z]))
    share = 100.0 * missing / data.size
    note = (f"{missing:,} NaN pixels ({share:.2g} % of the image) were set to its minimum value {float(fill):g} "
            "and treated as background")
    log.info("%s: %s", image.name, note)
    return replace(image, data=data, notes=[*image.notes, note])


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


def gray_plane(pixels: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` pixels as one ``(H, W)`` plane in the image's own units: the
    plane itself, luminance for RGB(A), the gray channel of gray+alpha; what a one-channel model
    sees of the image before normalisation (:func:`to_channels`)."""
    pixels = np.asarray(pixels)
    return to_channels(pixels, 1)[..., 0] if pixels.ndim == 3 else pixels


def fit_stretch(data: np.ndarray, n_channels: int, norm: Normalisation, name: str = "image") -> Stretch:
    """Compute the percentile stretch of a whole image or stack (after channel conversion).

    Raises :class:`ImageReadError` for images that cannot be segmented: empty, NaN/inf, constant.
    """
    if data.size == 0:
        raise ImageReadError(f"{name}: the image is empty (0 pixels)")
    flat = data.reshape(-1, data.shape[-1])
    sample = flat[:: stretch_sample_step(flat.shape[0])]
    finite = data.dtype.kind != "f" or bool(np.all(np.isfinite(data)))
    return stretch_from_sample(sample, n_channels, norm, name, finite)


def stretch_sample_step(n_pixels: int) -> int:
    """The stride of the pixels (in raster order over the whole image or stack) that
    :func:`fit_stretch` takes its percentiles from: at most about 4 million of them."""
    return max(1, n_pixels // _PERCENTILE_SAMPLE)


def stretch_from_sample(sample: np.ndarray, n_channels: int, norm: Normalisation, name: str = "image",
                        finite: bool = True) -> Stretch:
    """The stretch of :func:`fit_stretch` from its sample (pixels, ``(N, C)``, every
    :func:`stretch_sample_step`-th in raster order), for a caller that reads the image in parts.
    ``finite``: whether every pixel of the whole image is finite."""
    sample = to_channels(sample, n_channels)
    if not finite or not np.all(np.isfinite(sample)):
        raise ImageReadError(f"{name}: the image contains NaN or infinite values")
    lo, hi = np.percentile(sample, [norm.low_percentile, norm.high_percentile])
    if hi <= lo:  # a sparse image (few bright spots) can have equal percentiles: use the range
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        raise ImageReadError(f"{name}: the image is constant (every pixel is {lo:g}); nothing to segment")
    return Stretch(float(lo), float(hi))
