"""Looking at training data and models before training: what the Datasets, Weight maps and Models
pages show, computed here so the pages only draw.

Data sources
    :class:`DataSource` names where images come from: the synthetic generator, a folder under the
    data root (:func:`unet_core.datasets.data_root`), or an uploaded zip extracted by
    :func:`extract_upload`. :func:`open_source` turns it into a :class:`~unet_core.datasets.Dataset`.
    Folders typed by a user go through :func:`resolve_in_root`, which refuses anything that
    resolves outside the data root (``..``, absolute paths, symlinks pointing out).

Zip uploads
    :func:`safe_extract_zip` checks the whole archive before writing a byte: no absolute member
    paths, no ``..``, no symlinks, no encrypted members, at most :data:`MAX_ZIP_MEMBERS` files and
    :data:`MAX_ZIP_BYTES` uncompressed bytes (as declared, and counted again while writing, in case
    a header lies). Anything else is a :class:`ZipRejected` whose message says what was wrong.

Per-image and per-data-set views
    :func:`load_sample` (image + instances), :func:`thumbnail`, :func:`intensity_histogram`,
    :func:`dataset_stats` (sizes, objects per image, object areas), :func:`split_rows` and
    :func:`describe_split`.

Weight maps
    :func:`border_distances_for` computes ``d1``/``d2`` once for a whole range of ``w0``/``sigma``;
    :func:`weight_parts` is then a cheap formula per slider position, equal to
    :func:`unet_core.weights.weight_map_parts`. :func:`weight_summary` gives the numbers shown.

Models
    :func:`model_info` (file size, classes, architecture, training data and split from the ONNX
    metadata) and :func:`unfinished_runs`.
"""

from __future__ import annotations

import hashlib
import io as _io
import math
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from . import visualize as viz
from .datasets import Dataset, DatasetError, SplitRule, data_root, open_dataset
from .errors import UserError
from .io import LUMA, ImageReadError
from .registry import RUN_MODEL_FILE, ModelEntry, runs_dir
from .scale import median_diameter
from .weights import (
    ClassWeights,
    WeightMapParts,
    border_cutoff,
    border_distances,
    border_term,
    class_balance,
    class_weight_values,
)

SOURCE_KINDS = ("synthetic", "folder", "upload")
UPLOADS_ENV = "UNET_STUDIO_UPLOADS"

#: Zip bomb limits: files in an uploaded zip, and their total uncompressed size.
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_BYTES = 4 * 1024**3
#: Extracted uploads older than this are removed when a new one arrives (any session).
UPLOAD_MAX_AGE_S = 24 * 3600
#: All extracted uploads together (every session) stay under this; ``UNET_STUDIO_UPLOADS_QUOTA_GB``.
UPLOADS_QUOTA_BYTES = 8 * 1024**3
UPLOADS_QUOTA_ENV = "UNET_STUDIO_UPLOADS_QUOTA_GB"
#: Free disk space an upload must leave behind.
UPLOAD_DISK_MARGIN = 1024**3
#: The file that marks a folder as an upload of this app: only marked folders are ever pruned.
UPLOAD_MARK = ".unet-studio-upload"
#: Folders skipped when extracting: macOS resource forks, not data.
_ZIP_SKIP_DIRS = ("__MACOSX",)
_COPY_CHUNK = 1 << 20

#: Data set statistics read at most this many masks.
MAX_STATS_SAMPLES = 500
#: "Gap" pixels of :func:`weight_summary`: background whose two nearest cells, through it, are
#: at most this many pixels apart (``d1 + d2 <= GAP_WIDTH``).
GAP_WIDTH = 10.0


class BrowseError(UserError):
    """Something a user asked for that cannot be shown; the message says why."""


class OutsideRoot(BrowseError):
    """A folder outside the data root."""


class ZipRejected(BrowseError):
    """An uploaded zip that is not extracted; the message says what is wrong with it."""


# --------------------------------------------------------------------------- paths


def resolve_in_root(root: str | Path, relative: str | Path) -> Path:
    """``root / relative`` resolved (symlinks, ``..``), refused unless it lies inside ``root``.

    Args:
        root: the data root.
        relative: what a user typed: a sub-folder name or path relative to ``root``. Absolute
            paths are accepted only when they point inside ``root``.

    Returns:
        The resolved folder (it need not exist).

    Raises:
        OutsideRoot: the path resolves outside ``root``.
    """
    base = Path(root).expanduser().resolve()
    target = (base / Path(str(relative).strip())).resolve()
    if not target.is_relative_to(base):
        raise OutsideRoot(f"{relative!s} is outside the data folder {base}")
    return target


# --------------------------------------------------------------------------- zip uploads


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]


def _member_parts(name: str) -> tuple[str, ...]:
    """Path components of a member name; raises :class:`ZipRejected` for unsafe names."""
    if "\x00" in name:
        raise ZipRejected(f"the member name {name!r} contains a NUL character")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ZipRejected(f"the member {name!r} has an absolute path")
    parts = tuple(p for p in re.split(r"[\\/]+", name) if p not in ("", "."))
    if ".." in parts:
        raise ZipRejected(f"the member {name!r} points outside the zip's folder (..)")
    return parts


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    # Unix zip tools store the file mode in the high 16 bits; links have S_IFLNK there.
    return stat.S_ISLNK(info.external_attr >> 16)


def _check_members(archive: zipfile.ZipFile, max_members: int, max_bytes: int) -> list[_Member]:
    """The files to extract, after checking every member; raises :class:`ZipRejected`."""
    infos = archive.infolist()
    if len(infos) > max_members:
        raise ZipRejected(f"it holds {len(infos)} entries; at most {max_members} are accepted")
    members: list[_Member] = []
    total = 0
    for info in infos:
        parts = _member_parts(info.filename)
        if _is_symlink(info):
            raise ZipRejected(f"the member {info.filename!r} is a symbolic link; links are not accepted")
        if info.flag_bits & 0x1:
            raise ZipRejected(f"the member {info.filename!r} is password-protected")
        if info.is_dir() or not parts or parts[0] in _ZIP_SKIP_DIRS:
            continue
        total += info.file_size
        if total > max_bytes:
            raise ZipRejected(
                f"it unpacks to more than {_size_text(max_bytes)} (a zip bomb, or a data set too large "
                "to upload)"
            )
        members.append(_Member(info, parts))
    return members


def safe_extract_zip(
    source: str | Path | IO[bytes],
    target: str | Path,
    max_members: int | None = None,
    max_bytes: int | None = None,
) -> list[Path]:
    """Extract a zip into ``target`` after checking every member; nothing is written on refusal.

    Directories are created as needed, ``__MACOSX/`` litter is skipped, file permissions and
    times from the zip are ignored.

    Args:
        source: the zip file or a binary file object.
        target: the folder to extract into (created; should be empty).
        max_members: most entries accepted (default :data:`MAX_ZIP_MEMBERS`).
        max_bytes: most uncompressed bytes accepted (default :data:`MAX_ZIP_BYTES`).

    Returns:
        The extracted files.

    Raises:
        ZipRejected: not a zip, or a member that is unsafe or over the limits.
    """
    max_members = MAX_ZIP_MEMBERS if max_members is None else max_members
    max_bytes = MAX_ZIP_BYTES if max_bytes is None else max_bytes
    base = Path(target)
    base.mkdir(parents=True, exist_ok=True)
    base = base.resolve()
    try:
        with zipfile.ZipFile(source) as archive:
            members = _check_members(archive, max_members, max_bytes)
            written: list[Path] = []
            budget = max_bytes
            for member in members:
                dest = base.joinpath(*member.parts)
                if not dest.resolve().is_relative_to(base):  # defence in depth: checked by name above
                    raise ZipRejected(f"the member {member.info.filename!r} points outside the zip's folder")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member.info) as src, open(dest, "wb") as out:
                    budget = _copy_limited(src, out, budget, max_bytes)
                written.append(dest)
            return written
    except zipfile.BadZipFile as exc:
        raise ZipRejected(f"it is not a readable zip file ({exc})") from exc
    except NotImplementedError as exc:  # an unsupported compression method
        raise ZipRejected(f"it uses a compression this program cannot unpack ({exc})") from exc
    except (OSError, EOFError, RuntimeError) as exc:
        raise ZipRejected(f"it cannot be unpacked ({exc})") from exc


def _copy_limited(src: IO[bytes], out: IO[bytes], budget: int, max_bytes: int) -> int:
    """Copy while counting; a member that unpacks to more than its header said is caught here."""
    while chunk := src.read(_COPY_CHUNK):
        budget -= len(chunk)
        if budget < 0:
            raise ZipRejected(f"it unpacks to more than {_size_text(max_bytes)} (a zip bomb)")
        out.write(chunk)
    return budget


def find_dataset_folder(root: str | Path, max_depth: int = 3) -> Path:
    """The first folder at or below ``root`` (breadth first) that opens as a data set.

    A zip made by compressing a data set's folder holds that folder, not its contents; both work.

    Raises:
        DatasetError: no folder down to ``max_depth`` levels matches a layout.
    """
    root = Path(root)
    level = [root]
    first_error: DatasetError | None = None
    for _ in range(max_depth + 1):
        below: list[Path] = []
        for folder in level:
            try:
                return open_dataset(folder).root
            except DatasetError as exc:
                first_error = first_error or exc
            below += sorted(p for p in folder.iterdir()
                            if p.is_dir() and not p.name.startswith(".") and p.name not in _ZIP_SKIP_DIRS)
        level = below
    message = str(first_error).replace(f"{root}: ", "", 1) if first_error else "no data set layout found"
    raise DatasetError(message)


def uploads_root() -> Path:
    """Where uploaded zips are extracted: ``$UNET_STUDIO_UPLOADS``, or a folder of this user's own in
    the temp dir (``unet-studio-uploads-<uid>``: on a shared machine, users do not share it)."""
    env = os.environ.get(UPLOADS_ENV)
    if env:
        return Path(env).expanduser()
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"unet-studio-uploads-{user}"


def private_folder(root: Path) -> Path:
    """``root``, created mode 0700 if missing, and checked: a real folder (not a symbolic link that
    someone planted), owned by this user, writable by nobody else (POSIX).

    Raises:
        BrowseError: it fails a check; the message says which and what to do.
    """
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = root.lstat()
    except OSError as exc:
        raise BrowseError(f"the uploads folder {root} cannot be made ({exc.strerror or exc})") from exc
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise BrowseError(f"the uploads folder {root} is a link or not a folder; remove it, or set "
                          f"{UPLOADS_ENV} to a folder of your own")
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        raise BrowseError(f"the uploads folder {root} belongs to another user or others may write to it; "
                          f"set {UPLOADS_ENV} to a folder of your own")
    return root


def uploads_quota() -> int:
    """Bytes all extracted uploads may take together (:data:`UPLOADS_QUOTA_BYTES` or the env)."""
    try:
        return int(float(os.environ[UPLOADS_QUOTA_ENV]) * 1024**3)
    except (KeyError, ValueError):
        return UPLOADS_QUOTA_BYTES


def extract_upload(data: bytes, session: str, root: str | Path | None = None) -> Path:
    """Extract an uploaded zip for one session and return the data set folder inside it.

    The zip goes to ``root/<session>/<hash of its bytes>`` (``root`` checked by
    :func:`private_folder`; the session folder marked with :data:`UPLOAD_MARK`); the session's
    earlier upload is removed (a session shows one upload at a time), as are other sessions'
    uploads older than :data:`UPLOAD_MAX_AGE_S`; only marked folders are ever removed. The
    unpacked size must fit in :func:`uploads_quota` with the other uploads, and leave
    :data:`UPLOAD_DISK_MARGIN` of free disk. The same bytes again reuse the extracted folder.

    Raises:
        ZipRejected: see :func:`safe_extract_zip`; over the quota or the free disk space.
        DatasetError: the zip holds no folder of a known layout.
        BrowseError: the uploads folder is not safe to use (see :func:`private_folder`).
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", session):
        raise ValueError(f"invalid session name {session!r}")
    root = private_folder(Path(root) if root is not None else uploads_root())
    _prune_uploads(root, keep=session)
    session_dir = root / session
    digest = hashlib.sha256(data).hexdigest()[:16]
    folder = session_dir / digest
    if not folder.is_dir():
        if _is_upload(session_dir):
            shutil.rmtree(session_dir, ignore_errors=True)  # the session's earlier upload
        _check_room(data, root)
        session_dir.mkdir(mode=0o700, exist_ok=True)
        (session_dir / UPLOAD_MARK).touch()
        partial = session_dir / f".{digest}.partial"
        try:
            safe_extract_zip(_io.BytesIO(data), partial)
        except ZipRejected:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        partial.rename(folder)
    return find_dataset_folder(folder)


def _is_upload(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and (folder / UPLOAD_MARK).is_file()


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _check_room(data: bytes, root: Path) -> None:
    """Refuse a zip whose unpacked size does not fit the uploads quota or the free disk space."""
    try:
        with zipfile.ZipFile(_io.BytesIO(data)) as archive:
            size = sum(i.file_size for i in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise ZipRejected(f"it is not a readable zip file ({exc})") from exc
    used = sum(_folder_bytes(d) for d in root.iterdir() if _is_upload(d))
    left = uploads_quota() - used
    if size > left:
        raise ZipRejected(f"it unpacks to {_size_text(size)} but only {_size_text(max(left, 0))} of the "
                          f"{_size_text(uploads_quota())} for uploads is left (uploads are kept a day; raise "
                          f"{UPLOADS_QUOTA_ENV}, or copy the folder into the data folder)")
    free = shutil.disk_usage(root).free
    if size > free - UPLOAD_DISK_MARGIN:
        raise ZipRejected(f"it unpacks to {_size_text(size)} but the disk of {root} has only "
                          f"{_size_text(free)} free")


def _prune_uploads(root: Path, keep: str) -> None:
    """Remove other sessions' uploads older than :data:`UPLOAD_MAX_AGE_S`; marked folders only."""
    cutoff = time.time() - UPLOAD_MAX_AGE_S
    for session_dir in root.iterdir():
        try:
            if session_dir.name != keep and _is_upload(session_dir) and session_dir.stat().st_mtime < cutoff:
                shutil.rmtree(session_dir, ignore_errors=True)
        except OSError:
            continue


def _size_text(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def size_text(n_bytes: int) -> str:
    """A file size for people: ``"1.4 MB"``."""
    return _size_text(float(n_bytes))


# --------------------------------------------------------------------------- data sources


@dataclass(frozen=True)
class DataSource:
    """Where a data set comes from; hashable, so it can key caches.

    Attributes:
        kind: ``"synthetic"``, ``"folder"`` (under the data root) or ``"upload"`` (extracted zip).
        path: the folder (folder and upload kinds).
        label: how the page names it (the folder name, the zip's name).
        mode, n, seed, size: the synthetic generator's look, image count, seed and image edge.
        version: changes when the folder's contents may have changed (see :func:`folder_version`).
    """

    kind: str = "synthetic"
    path: str = ""
    label: str = ""
    mode: str = "fluorescence"
    n: int = 8
    seed: int = 0
    size: int = 512
    version: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"kind must be one of {SOURCE_KINDS}, not {self.kind!r}")

    @property
    def title(self) -> str:
        if self.kind == "synthetic":
            return f"synthetic {self.mode} images (seed {self.seed})"
        return self.label or Path(self.path).name


def folder_version(path: str | Path) -> float:
    """A number that changes when files are added to, removed from or replaced in the data set
    folder or its direct sub-folders (their modification times; files edited in place keep it)."""
    path = Path(path)
    try:
        times = [path.stat().st_mtime]
        times += [p.stat().st_mtime for p in path.iterdir() if p.is_dir()]
    except OSError:
        return 0.0
    return max(times)


def open_source(source: DataSource) -> Dataset:
    """The data set of ``source``.

    Raises:
        DatasetError: the folder matches no layout (the message names what was expected).
    """
    if source.kind == "synthetic":
        from .synthetic import SynthConfig, synthetic_dataset

        cfg = SynthConfig(height=source.size, width=source.size, mode=source.mode)
        return synthetic_dataset(source.n, cfg, seed=source.seed)
    # A data-root folder: every file must lie under the root, links included (the typed folder
    # was checked already, its images/ and masks/ are checked here).
    return open_dataset(source.path, confine=data_root() if source.kind == "folder" else None)


# --------------------------------------------------------------------------- one sample


@dataclass(frozen=True)
class SampleView:
    """One sample as the pages show it.

    Attributes:
        name: the sample's name in the data set.
        image: pixels ``(H, W, C)`` in the stored dtype.
        instances: int32 ``(H, W)`` object ids, 0 = background.
        areas: pixel count of each object (ids 1..n that occur).
    """

    name: str
    image: np.ndarray
    instances: np.ndarray
    areas: np.ndarray

    @property
    def n_objects(self) -> int:
        return int(self.areas.size)


def object_areas(instances: np.ndarray) -> np.ndarray:
    """Areas in pixels of the objects present (ids with no pixel are skipped), int64."""
    counts = np.bincount(np.asarray(instances).ravel().astype(np.int64, copy=False))[1:]
    return counts[counts > 0]


def load_sample(ds: Dataset, i: int) -> SampleView:
    """Image and instances of sample ``i``.

    Raises:
        BrowseError: the image or mask cannot be read or decoded; the message names the file
            and the reason, ready to show.
    """
    sample = ds.samples[i]
    try:
        image = ds.load_image(i)
        instances = ds.load_instances(i)
    except (ImageReadError, DatasetError, OSError) as exc:
        raise BrowseError(f"{sample.name}: {exc}") from exc
    if image.shape[:2] != instances.shape:
        raise BrowseError(f"{sample.name}: the image is {image.shape[1]}x{image.shape[0]} but its mask "
                          f"is {instances.shape[1]}x{instances.shape[0]} pixels")
    return SampleView(sample.name, image, instances, object_areas(instances))


def contrast_limits(pixels: np.ndarray, percentiles: tuple[float, float] = viz.DISPLAY_PERCENTILES
                    ) -> tuple[float, float]:
    """Display range of any image, 8-bit included (Fiji's "Auto"): dim images become visible.

    :func:`unet_core.visualize.stretch_limits` keeps 8-bit images at 0..255, as viewers do; for
    looking at training data the stretch helps more (dim nuclei in 8-bit files are common).
    """
    values = gray(pixels)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
    if finite.size == 0:
        return 0.0, 1.0
    sample = finite[:: max(1, finite.size // 1_000_000)].astype(np.float64)
    low, high = (float(v) for v in np.percentile(sample, percentiles))
    if high <= low:
        low, high = float(sample.min()), float(sample.max())
    return (low, high) if high > low else (low, low + 1.0)


def thumbnail(image: np.ndarray, instances: np.ndarray, max_side: int = 160, alpha: float = 0.25,
              frame: tuple[int, int, int] | None = None) -> np.ndarray:
    """A square uint8 RGBA picture of an image with its objects outlined and lightly filled.

    The image is contrast-stretched (:func:`contrast_limits`), averaged down (no aliasing) and
    centred on a ``max_side`` square whose unused part is transparent, so thumbnails of images of
    different shapes line up in a grid. Labels are picked by nearest pixel and outlines drawn at
    the thumbnail's size, so they stay visible. ``frame`` draws a 3-pixel border in that colour.
    """
    h, w = instances.shape
    scale = min(1.0, max_side / max(h, w))
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    rgb = viz.display_image(image, contrast_limits(image))
    if (th, tw) != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((tw, th), Image.Resampling.BOX))
        rows = np.minimum(((np.arange(th) + 0.5) * h / th).astype(np.int64), h - 1)
        cols = np.minimum(((np.arange(tw) + 0.5) * w / tw).astype(np.int64), w - 1)
        instances = instances[rows[:, None], cols[None, :]]
    drawn = viz.overlay(rgb, instances, alpha)
    border = min(3, th // 4, tw // 4)
    if frame is not None and border > 0:
        drawn[:border], drawn[-border:], drawn[:, :border], drawn[:, -border:] = frame, frame, frame, frame
    side = max(max_side, th, tw)
    out = np.zeros((side, side, 4), np.uint8)
    y0, x0 = (side - th) // 2, (side - tw) // 2
    out[y0 : y0 + th, x0 : x0 + tw, :3] = drawn
    out[y0 : y0 + th, x0 : x0 + tw, 3] = 255
    return out


def gray(image: np.ndarray) -> np.ndarray:
    """One intensity plane of ``(H, W, C)`` pixels: the channel itself, luminance for RGB(A)."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image
    if image.shape[-1] >= 3:
        return image[..., :3].astype(np.float32) @ LUMA
    return image[..., 0]


@dataclass(frozen=True)
class IntensityHistogram:
    """Pixel counts per intensity bin, background and objects apart.

    Attributes:
        edges: bin edges (``len(counts) + 1``), in the image's own units.
        background, objects: counts of background / object pixels per bin.
    """

    edges: np.ndarray
    background: np.ndarray
    objects: np.ndarray

    @property
    def centers(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2


def intensity_histogram(image: np.ndarray, instances: np.ndarray, bins: int = 128) -> IntensityHistogram:
    """Histogram of the image's intensities (luminance for RGB) inside and outside objects.

    8-bit images are binned over 0..255; other types over their own minimum..maximum.
    """
    values = gray(image)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
    if np.asarray(image).dtype == np.uint8:
        low, high = 0.0, 256.0
    elif finite.size:
        low, high = float(finite.min()), float(finite.max())
        if high <= low:
            high = low + 1.0
    else:
        low, high = 0.0, 1.0
    edges = np.linspace(low, high, bins + 1)
    inside = np.asarray(instances) > 0
    ok = np.isfinite(values) if values.dtype.kind == "f" else np.ones(values.shape, bool)
    background, _ = np.histogram(values[~inside & ok], edges)
    objects, _ = np.histogram(values[inside & ok], edges)
    return IntensityHistogram(edges, background, objects)


# --------------------------------------------------------------------------- whole data set


@dataclass(frozen=True)
class SampleStats:
    """One row of :class:`DatasetStats`."""

    index: int
    name: str
    part: str  # "train" or "validation"
    height: int
    width: int
    n_objects: int
    median_area: float | None
    median_diameter: float | None = None  # equal-area diameter in px (unet_core.scale)


@dataclass(frozen=True)
class DatasetStats:
    """What the statistics charts show.

    Attributes:
        rows: one per sample read (the first :data:`MAX_STATS_SAMPLES`).
        areas: every object's area in pixels, all samples together.
        failed: one message per sample whose mask could not be read (names the file).
        n_samples: samples in the data set (more than ``len(rows)`` when capped).
    """

    rows: list[SampleStats]
    areas: np.ndarray
    failed: list[str]
    n_samples: int

    @property
    def capped(self) -> bool:
        return len(self.rows) + len(self.failed) < self.n_samples

    def diameters(self) -> np.ndarray:
        """The median object diameter (px) of every image that has objects."""
        return np.array([r.median_diameter for r in self.rows if r.median_diameter], dtype=np.float64)

    def size_counts(self) -> list[tuple[str, int]]:
        """``("W × H", images)`` per image size, the most frequent first."""
        counts: dict[str, int] = {}
        for row in self.rows:
            key = f"{row.width} × {row.height}"
            counts[key] = counts.get(key, 0) + 1
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def dataset_stats(ds: Dataset, limit: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> DatasetStats:
    """Sizes, objects per image and object areas of the first ``limit`` samples (masks only).

    Samples whose mask cannot be read are listed in ``failed``, not raised.
    """
    limit = MAX_STATS_SAMPLES if limit is None else limit
    n = min(len(ds), limit)
    val = set(ds.split_indices("val"))
    rows: list[SampleStats] = []
    failed: list[str] = []
    areas: list[np.ndarray] = []
    for i in range(n):
        sample = ds.samples[i]
        try:
            instances = ds.load_instances(i)
        except (ImageReadError, DatasetError, OSError) as exc:
            failed.append(f"{sample.name}: {exc}")
            continue
        a = object_areas(instances)
        areas.append(a)
        rows.append(SampleStats(i, sample.name, "validation" if i in val else "train",
                                int(instances.shape[0]), int(instances.shape[1]), int(a.size),
                                float(np.median(a)) if a.size else None, median_diameter(instances)))
        if progress is not None:
            progress(i + 1, n)
    all_areas = np.concatenate(areas) if areas else np.zeros(0, np.int64)
    return DatasetStats(rows, all_areas, failed, len(ds))


def area_histogram(areas: np.ndarray, bins: int = 40) -> tuple[np.ndarray, np.ndarray, bool]:
    """Object counts per area bin: ``(edges, counts, logarithmic)``.

    Areas spanning more than a factor of 30 (nuclei of very different magnifications) get
    logarithmically spaced bins, so both small and large objects stay readable on a log axis.
    """
    areas = np.asarray(areas, dtype=np.float64)
    if areas.size == 0:
        return np.array([0.0, 1.0]), np.zeros(1, np.int64), False
    low, high = float(areas.min()), float(areas.max())
    logarithmic = low > 0 and high / low > 30
    if logarithmic:
        edges = np.geomspace(low, high * 1.0001, bins + 1)
    else:
        edges = np.linspace(low, max(high, low + 1.0), bins + 1)
    counts, _ = np.histogram(areas, edges)
    return edges, counts, logarithmic


def describe_split(rule: SplitRule, n_items: int) -> str:
    """The split in words, e.g. ``every 5th image (1st, 6th, 11th, …): 2 of 8 for validation``."""
    val = rule.val_indices(n_items)
    if rule.kind == "every_kth":
        listed = ", ".join(_ordinal(i + 1) for i in val[:3]) + (", …" if len(val) > 3 else "")
        head = "every image" if rule.k == 1 else f"every {_ordinal(rule.k)} image"
        how = f"{head}, starting with the first ({listed})" if val else head
    else:
        how = f"the last {rule.k} image{'s' if rule.k != 1 else ''}"
    return f"{how}: {len(val)} of {n_items} held out for validation, {n_items - len(val)} for training"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def split_rows(ds: Dataset) -> list[dict[str, Any]]:
    """One row per sample: its number (from 1), name, part and files (relative to the data set)."""
    val = set(ds.split_rule.val_indices(len(ds)))
    rows = []
    for i, sample in enumerate(ds.samples):
        rows.append({
            "#": i + 1,
            "Image": sample.name,
            "Used for": "validation" if i in val else "training",
            "Image file": _rel(sample.image_path, ds.root, sample.slice_index),
            "Mask file": _rel(sample.mask_path, ds.root, sample.slice_index) if sample.mask_path else "",
        })
    return rows


def _rel(path: Path, root: Path, slice_index: int | None) -> str:
    try:
        text = path.relative_to(root).as_posix()
    except ValueError:
        text = path.as_posix()
    return text if slice_index is None else f"{text} (slice {slice_index + 1})"


# --------------------------------------------------------------------------- weight maps


@dataclass(frozen=True)
class BorderDistances:
    """``d1``/``d2`` of :func:`unet_core.weights.border_distances`, valid up to ``max_distance``."""

    d1: np.ndarray
    d2: np.ndarray
    max_distance: float


def border_distances_for(labels: np.ndarray, w0_max: float, sigma_max: float) -> BorderDistances:
    """Distances good for every ``w0 <= w0_max`` and ``sigma <= sigma_max`` (computed once).

    The border term of such a pair drops below :data:`unet_core.weights.BORDER_EPS` before the
    cutoff of ``(w0_max, sigma_max)``, so distances up to that cutoff give the same map as
    :func:`unet_core.weights.weight_map_parts` would for each pair.
    """
    cutoff = border_cutoff(w0_max, sigma_max)
    d1, d2 = border_distances(labels, max_distance=cutoff)
    return BorderDistances(d1, d2, cutoff)


def weight_parts(labels: np.ndarray, distances: BorderDistances, w0: float, sigma: float,
                 class_weights: ClassWeights = "balanced") -> WeightMapParts:
    """The terms of Eq. 2 from precomputed distances: what
    :func:`unet_core.weights.weight_map_parts` returns, at the cost of one exponential per pixel.

    Raises:
        ValueError: ``(w0, sigma)`` needs distances beyond ``distances.max_distance``.
    """
    if border_cutoff(w0, sigma) > distances.max_distance + 1e-9:
        raise ValueError(f"w0={w0}, sigma={sigma} need distances up to {border_cutoff(w0, sigma):.1f} px; "
                         f"these were computed up to {distances.max_distance:.1f} px")
    labels = np.asarray(labels)
    w_c = class_balance(labels, class_weights)
    border = np.where(labels == 0, border_term(distances.d1, distances.d2, w0, sigma), 0.0).astype(np.float32)
    return WeightMapParts(w_c=w_c, border=border, d1=distances.d1.astype(np.float32),
                          d2=distances.d2.astype(np.float32), total=w_c + border)


@dataclass(frozen=True)
class WeightSummary:
    """The numbers beside the weight maps.

    Attributes:
        max_weight: the largest total weight.
        mean_weight: the mean total weight.
        w_background, w_objects: the class weights ``w_c`` of background and object pixels.
        gap_pixels: background pixels in gaps (``d1 + d2 <= gap_width``).
        mean_border_in_gaps: mean border term over those pixels (None when there are none).
        gap_width: the ``d1 + d2`` limit used.
    """

    max_weight: float
    mean_weight: float
    w_background: float
    w_objects: float
    gap_pixels: int
    mean_border_in_gaps: float | None
    gap_width: float = GAP_WIDTH


def weight_summary(labels: np.ndarray, parts: WeightMapParts, class_weights: ClassWeights = "balanced",
                   gap_width: float = GAP_WIDTH) -> WeightSummary:
    """Largest and mean weight, class weights, and the mean border term in narrow gaps between cells."""
    labels = np.asarray(labels)
    gaps = (labels == 0) & (parts.d1.astype(np.float64) + parts.d2 <= gap_width)
    n_gaps = int(gaps.sum())
    bg, fg = class_weight_values(labels, class_weights)
    return WeightSummary(
        max_weight=float(parts.total.max()) if parts.total.size else 0.0,
        mean_weight=float(parts.total.mean()) if parts.total.size else 0.0,
        w_background=float(bg),
        w_objects=float(fg),
        gap_pixels=n_gaps,
        mean_border_in_gaps=float(parts.border[gaps].mean()) if n_gaps else None,
        gap_width=gap_width,
    )


def touching_pairs(instances: np.ndarray) -> int:
    """Pairs of objects that touch (4-neighbours) with no background pixel between them.

    The border term of Eq. 2 lives on background pixels only, so it cannot act between such a
    pair: in the class map the two are one foreground region.
    """
    ids = np.asarray(instances)
    pairs: set[tuple[int, int]] = set()
    for a, b in ((ids[1:, :], ids[:-1, :]), (ids[:, 1:], ids[:, :-1])):
        contact = (a != b) & (a > 0) & (b > 0)
        if contact.any():
            lo = np.minimum(a[contact], b[contact]).astype(np.int64)
            hi = np.maximum(a[contact], b[contact]).astype(np.int64)
            pairs.update(zip(lo.tolist(), hi.tolist()))
    return len(pairs)


def block_max(array: np.ndarray, max_side: int) -> tuple[np.ndarray, int]:
    """``array`` shrunk by an integer step so neither side exceeds ``max_side``, each output pixel
    the maximum of its ``step x step`` block (thin peaks, such as gaps between cells, survive).

    Returns:
        ``(small, step)``; ``step == 1`` returns ``array`` itself.
    """
    h, w = array.shape
    step = max(1, math.ceil(max(h, w) / max_side))
    if step == 1:
        return array, 1
    ph, pw = -h % step, -w % step
    padded = np.pad(array, ((0, ph), (0, pw)), mode="edge")
    return padded.reshape(padded.shape[0] // step, step, padded.shape[1] // step, step).max(axis=(1, 3)), step


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelInfo:
    """What the Models page lists for one model.

    Attributes:
        size_bytes, modified: of the ``.onnx`` file (modified: seconds since the epoch).
        classes: class names, the object classes marked, e.g. ``"background, nuclei (objects)"``.
        width, depth, padding, in_channels: the architecture (None when unreadable).
        data: the training data set recorded in the model ("" when none is recorded).
        split: the train/validation split recorded, in words ("" when none).
        steps: training steps recorded (None when none).
        error: why the metadata could not be read, else None.
    """

    name: str
    label: str
    path: str
    source: str
    size_bytes: int
    modified: float
    classes: str = ""
    width: int | None = None
    depth: int | None = None
    padding: str = ""
    in_channels: int | None = None
    data: str = ""
    split: str = ""
    steps: int | None = None
    error: str | None = None
    training: dict[str, Any] = field(default_factory=dict)


def model_info(entry: ModelEntry) -> ModelInfo:
    """File facts and embedded metadata of a model; never raises for a damaged file."""
    try:
        st = entry.path.stat()
        size, modified = int(st.st_size), float(st.st_mtime)
    except OSError:
        size, modified = 0, 0.0
    base = {"name": entry.name, "label": entry.label, "path": str(entry.path), "source": entry.source,
            "size_bytes": size, "modified": modified}
    from .metadata import read_metadata

    try:
        meta = read_metadata(entry.path)
    except Exception as exc:  # noqa: BLE001 -- onnx raises several unrelated types for a damaged file
        return ModelInfo(**base, error=_short_error(exc, entry.path))
    training = dict(meta.training)
    split = ""
    rule = training.get("split_rule")
    if isinstance(rule, dict):
        try:
            split = describe_rule(SplitRule.from_dict(rule), training.get("n_train"), training.get("n_val"))
        except (KeyError, ValueError, TypeError):
            split = str(rule)
    classes = ", ".join(name + (" (objects)" if k in meta.foreground_classes else "")
                        for k, name in enumerate(meta.class_names))
    steps = training.get("steps")
    return ModelInfo(
        **base, classes=classes, width=meta.unet.width, depth=meta.unet.depth, padding=meta.unet.padding,
        in_channels=meta.unet.in_channels, data=str(training.get("data", "")), split=split,
        steps=int(steps) if isinstance(steps, (int, float)) else None, training=training,
    )


def describe_rule(rule: SplitRule, n_train: Any = None, n_val: Any = None) -> str:
    """A recorded split in words: ``every 5th image for validation (122 train / 31 val)``."""
    how = (f"every {_ordinal(rule.k)} image" if rule.kind == "every_kth" and rule.k > 1
           else "every image" if rule.kind == "every_kth" else f"the last {rule.k} images")
    counts = f" ({n_train} train / {n_val} validation)" if n_train is not None and n_val is not None else ""
    return f"{how} for validation{counts}"


def _short_error(exc: Exception, path: Path) -> str:
    text = str(exc).replace(f"{path}: ", "").strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def unfinished_runs(root: str | Path | None = None) -> list[str]:
    """Training run folders with no exported ``model.onnx`` yet (running, stopped or failed)."""
    root = Path(root) if root is not None else runs_dir()
    if not root.is_dir():
        return []
    found = []
    for run in sorted(root.iterdir()):
        markers: Iterable[str] = ("log.jsonl", "last.pt", "config.json")
        if run.is_dir() and not (run / RUN_MODEL_FILE).is_file() and any((run / m).exists() for m in markers):
            found.append(run.name)
    return found
