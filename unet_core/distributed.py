"""Inference beyond one process, on Dask: a whole-slide image in blocks, or many files at once.

**Blocks.** The tile plan of the whole image (at the model's working scale, as
:func:`unet_core.inference.segment` makes it) is cut into blocks of whole tiles, about ``block``
pixels on a side. Each block is one task: its worker reads the input window that its tiles' inputs
need (with their mirrored context at the image's edges, rescaled window by window:
:class:`~unet_core.scale.WorkPlane`) straight from the file, TIFF and OME-TIFF through tifffile's
Zarr store, Zarr and OME-Zarr directly, and runs the single-process tile code on it with one ONNX
Runtime session per worker process. Because every tile is the single-process run's tile and reads
the same input values, the class labels equal the single-process ones bit for bit. Dask's own
``map_overlap(boundary="reflect")`` would not do: it repeats the edge pixel (numpy's
"symmetric"), where overlap-tile mirrors about it (numpy's "reflect").

**Objects across blocks.** Each block labels its 4-connected components; the components that touch
across a block face are merged (a union-find over the face's pixel pairs, as Cellpose's
distributed segmentation does); sizes are summed before the size filter; objects are numbered by
their first pixel in raster order over the whole image, which is how the single process numbers
them, so the instance image is equal too, not only up to renumbering. The object table is summed
per block (:class:`~unet_core.instances.ObjectSums`) and merged.

Labels (working scale and input grid), instances and, when asked, the class probabilities (equal to
the single process's to float rounding; a rescaled map is resized window by window) are written
lazily to a Zarr store, block by block; the usual files (:func:`unet_core.predict.write_outputs`) are written as well when the image
fits in memory. Memory per worker is bounded by the block: its input window, one tile's
activations and the block's outputs.

**Many files.** :func:`predict_files` hands whole files to the workers, each segmented and written
as ``predict`` does (same names, same refusal to overwrite); a bad file is reported, the others go on.

Object outlines are redrawn on the input grid (:func:`~unet_core.instances.refine_outlines`) chunk by
chunk, each chunk with a margin as wide as an outline may move, from the working scale's foreground
probability (``work_foreground``, a byte per pixel): equal to the single process's as well. Each
chunk also sums the foreground probability over its objects' pixels (in whole 1/255 steps, so that
the sums add up exactly), and the sums that tell the image's look (:mod:`unet_core.look`, which sets
the automatic threshold); objects whose mean is under ``min_object_probability`` are then erased
from the chunks their bounding boxes reach and left out of the table, as
:func:`~unet_core.instances.drop_uncertain` drops them in the single process, and the numbers of
the others closed up to 1..n in the same pass (:func:`~unet_core.instances.close_gaps`).

Supported in blocks: 2-D images (gray, RGB or one channel of a multi-channel file), the automatic
or a given diameter, the size filter, the outline threshold, the probability filter and leaving out
objects on the image's edge, splitting merged objects. Hole filling, growing objects
(``expand``), outline-class models and stacks need the whole image at once and are refused with a
message (use ``predict`` without ``--scheduler``, or per-file mode).

**Merged objects split.** Once the objects are numbered, their areas give the image's median
object and the candidates (:func:`~unet_core.instances.split_candidates`); each block returns the
bounding boxes of the candidates' parts in it, so each candidate is read whole from the working
scale's ``work_instances``, cut by :func:`~unet_core.instances.merged_pieces` (in batches, one task
per batch) and its new pieces numbered in the order of the objects, as the single process numbers
them; the new ids are then written chunk by chunk (no two tasks write one chunk), before the
outlines are redrawn on the input grid.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .errors import UserError
from .inference import (
    MAX_FACTOR,
    SEARCH_EDGE,
    InferenceOptions,
    Segmentation,
    auto_tile,
    resolve_tile,
    run_tiles,
    search_scale,
)
from .instances import (
    InstanceOptions,
    ObjectSums,
    foreground_sums,
    foreground_u8,
    merged_pieces,
    number_pieces,
    object_sums,
    outline_reach,
    refine_outlines,
    split_candidates,
    table_from_sums,
    uncertain,
)
from .io import (
    ImageFile,
    ImageReadError,
    Normalisation,
    Resolution,
    Stretch,
    pixel_size_um,
    stretch_from_sample,
    stretch_sample_step,
    tiff_resolution,
)
from .look import LookSums, look_sums
from .metadata import ModelMeta
from .predict import FileResult, Result, failure_message, segment_file, write_outputs
from .scale import (
    WorkPlane,
    clamp_factor,
    input_window,
    nearest_index,
    resize_at,
    scaled_shape,
    search_step,
    window_from_sample,
)
from .tiling import Tile, balanced_tile, plan_tiles, stitch

log = logging.getLogger(__name__)

#: Default block edge, in working-scale pixels (rounded to whole tiles): 4096^2 px hold ~16 MB of
#: labels and a 4096 x 4096 window of input; small enough for a laptop worker, large enough that
#: the scheduler's per-task overhead (milliseconds) is nothing against a block's network time.
DEFAULT_BLOCK = 4096
#: Files with more pixels than this many blocks are segmented in blocks; smaller ones whole, one
#: file per worker (:func:`predict_files`).
BLOCKS_FROM = 2
#: Merged objects looked at per task when they are split in blocks: each is a nucleus-sized read,
#: so one task per object would be all scheduler overhead.
SPLIT_BATCH = 256


class DistributedError(UserError):
    """A distributed run that cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class DaskOptions:
    """Where and how a distributed run goes.

    Attributes:
        scheduler: ``"local"`` (a :class:`distributed.LocalCluster` of worker processes on this
            machine, the default) or the address of a running scheduler (``tcp://host:8786``).
        workers: worker processes of a local cluster (default: one per 2 cores, at least 1).
        threads: ONNX Runtime threads per worker (default: the cores divided among the workers).
        block: block edge in working-scale pixels (default :data:`DEFAULT_BLOCK`).
    """

    scheduler: str = "local"
    workers: int | None = None
    threads: int | None = None
    block: int = DEFAULT_BLOCK

    def local_workers(self) -> int:
        return self.workers or max(1, (os.cpu_count() or 2) // 2)

    def worker_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.local_workers())


@contextmanager
def dask_client(options: DaskOptions) -> Iterator[Any]:
    """A :class:`distributed.Client` for ``options.scheduler`` (a local cluster is started and shut
    down around the ``with`` block)."""
    from distributed import Client, LocalCluster

    if options.scheduler != "local":  # its workers run this package's own installation
        with Client(options.scheduler) as client:
            yield client
        return
    # Local workers are new processes: they find this package where this process found it.
    package_root = str(Path(__file__).resolve().parent.parent)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if package_root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([package_root, *[p for p in paths if p]])
    with LocalCluster(n_workers=options.local_workers(), threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


# --------------------------------------------------------------------------- reading in windows


@dataclass(frozen=True)
class LazySource:
    """A 2-D image on disk, read window by window on any worker (it pickles as its path).

    Attributes:
        path: the file (TIFF, OME-TIFF) or the Zarr store's folder.
        shape: (H, W, C) as the network's input sees it (after the channel choice).
        dtype: the stored pixel type.
        axes: the stored array's axes, e.g. ``"YX"``, ``"YXS"``, ``"CYX"``.
        channels: the channels taken from a ``C`` axis (0-based), None: all.
        component: the array inside a Zarr group (OME-Zarr: the first resolution, ``"0"``).
        nan_fill: the value NaN pixels become (the image's minimum, as the single process does).
        resolution: the pixel size the file gives (TIFF tags, OME metadata), else None.
    """

    path: str
    shape: tuple[int, int, int]
    dtype: str
    axes: str
    channels: tuple[int, ...] | None = None
    component: str | None = None
    nan_fill: float | None = None
    resolution: Resolution | None = None

    @property
    def shape2d(self) -> tuple[int, int]:
        return self.shape[0], self.shape[1]

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def pixel_size(self) -> tuple[float, float] | None:
        return pixel_size_um(self.resolution)

    def read(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """Pixels ``[top:bottom, left:right]`` as (h, w, C)."""
        array = _open_array(self.path, self.component)
        index: list[Any] = []
        for axis in self.axes:  # T and Z are single planes (open_lazy checks); C as chosen
            index.append({"Y": slice(top, bottom), "X": slice(left, right), "S": slice(None), "T": 0, "Z": 0,
                          "C": list(self.channels) if self.channels is not None else slice(None)}[axis])
        window = np.asarray(array[tuple(index)])
        kept = [a for a in self.axes if a not in "TZ"]
        if "C" in kept or "S" in kept:
            window = np.moveaxis(window, kept.index("C" if "C" in kept else "S"), -1)
        else:
            window = window[..., None]
        if self.nan_fill is not None:
            window = np.where(np.isnan(window), np.asarray(self.nan_fill, window.dtype), window)
        return window

    def bands(self, pixels: int = 1 << 24) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, pixels) of bands of whole rows, about ``pixels`` each: the whole image in
        bounded memory."""
        height, width = self.shape2d
        band = max(1, pixels // max(1, width))
        for top in range(0, height, band):
            yield top, self.read(top, min(height, top + band), 0, width)

    def points(self, flat: np.ndarray) -> np.ndarray:
        """The pixels at raster indices ``flat`` (ascending), (N, C)."""
        width = self.shape[1]
        rows = flat // width
        out = np.empty((len(flat), self.shape[2]), self.dtype)
        for top, window in self.bands():
            inside = (rows >= top) & (rows < top + window.shape[0])
            out[inside] = window[rows[inside] - top, flat[inside] % width]
        return out

    def strided(self, step: int) -> np.ndarray:
        """``pixels[::step, ::step]`` of the whole image, (h, w, C)."""
        parts = [window[(-top) % step :: step, ::step] for top, window in self.bands()]
        return np.concatenate(parts, axis=0)


_ARRAYS: dict[tuple[str, str | None], Any] = {}


def _open_array(path: str, component: str | None) -> Any:
    """The Zarr array of a TIFF (tifffile's store of its first series, full resolution) or of a
    Zarr store; opened once per process."""
    key = (path, component)
    if key not in _ARRAYS:
        import zarr

        if Path(path).is_dir():
            root = zarr.open(path, mode="r")
            _ARRAYS[key] = root[component] if component else root
        else:
            import tifffile

            _ARRAYS[key] = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
    return _ARRAYS[key]


def open_lazy(path: str | Path, in_channels: int, channels: Sequence[int] | None = None) -> LazySource:
    """A :class:`LazySource` for a TIFF, OME-TIFF, Zarr or OME-Zarr image, checked.

    Args:
        path: the file or Zarr folder.
        in_channels: the model's input channels.
        channels: for a file with a separate channel axis, the channels to segment (from 1, as
            ``--channel`` takes them).

    Raises:
        ImageReadError: not a 2-D image of a supported layout (the message says which).
    """
    path = Path(path)
    try:
        component, axes, resolution = _layout(path)
        array = _open_array(str(path), component)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageReadError(f"{path.name}: cannot be read in blocks ({exc})") from exc
    shape, dtype = dict(zip(axes, (int(n) for n in array.shape))), str(array.dtype)
    planes = [a for a in "TZ" if shape.get(a, 1) > 1]
    if planes or not set(axes) <= set("TZCYXS") or "Y" not in axes or "X" not in axes or len(axes) != array.ndim:
        what = "a stack or time series" if planes else "an unknown layout"
        raise ImageReadError(f"{path.name}: {what} ({axes} {tuple(array.shape)}); blocks take 2-D images: run predict "
                             "without --scheduler, or save each plane as its own file")
    height, width, n = shape["Y"], shape["X"], shape.get("C", shape.get("S", 1))
    picked = None
    if "C" in axes:
        if channels is None and n not in (1, in_channels):
            raise ImageReadError(f"{path.name}: {n} channels and the model takes {in_channels}: choose with --channel")
        if channels is not None:
            if any(c < 1 or c > n for c in channels):
                raise ImageReadError(f"{path.name}: has channels 1..{n}, not {list(channels)}")
            picked, n = tuple(c - 1 for c in channels), len(channels)
    return LazySource(str(path), (height, width, n), dtype, axes, picked, component, resolution=resolution)


def _layout(path: Path) -> tuple[str | None, str, Resolution | None]:
    """(Zarr component, axes, resolution) of a Zarr store or TIFF file."""
    if path.is_dir():
        return _zarr_layout(path)
    import tifffile

    with tifffile.TiffFile(path) as tif:
        axes = tif.series[0].axes.replace("I", "Z")
        resolution = tiff_resolution(tif)
    return None, {"SYX": "CYX"}.get(axes, axes), resolution


def _zarr_layout(path: Path) -> tuple[str | None, str, Resolution | None]:
    """A plain Zarr array (YX or CYX) or an OME-Zarr image (its full resolution, ``c``, ``y`` and
    ``x`` axes; the pixel size from its scale when the axes are in micrometres)."""
    import zarr

    root = zarr.open(str(path), mode="r")
    if hasattr(root, "shape"):
        return None, {2: "YX", 3: "CYX"}.get(len(root.shape), "?"), None
    multiscales = root.attrs.get("multiscales") or root.attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise ValueError("a Zarr group without OME-Zarr multiscales metadata")
    first = multiscales[0]
    axes = [a if isinstance(a, dict) else {"name": a} for a in first.get("axes", [])]
    names = "".join(a["name"] for a in axes).upper()
    dataset = first["datasets"][0]
    resolution = None
    scale = next((t["scale"] for t in dataset.get("coordinateTransformations", []) if t.get("type") == "scale"), None)
    units = [a.get("unit") for a in axes]
    if scale and names.endswith("YX") and units[-2:] == ["micrometer", "micrometer"]:
        resolution = Resolution(x=1.0 / float(scale[-1]), y=1.0 / float(scale[-2]), unit="micron")
    return dataset["path"], names, resolution


def lazy_stretch(source: LazySource, norm: Normalisation, in_channels: int) -> tuple[LazySource, Stretch]:
    """The percentile stretch the single process computes for this image, read in bands (and, for
    float images, the NaN pixels set to the minimum first, as the single process does)."""
    n = source.shape[0] * source.shape[1]
    if np.dtype(source.dtype).kind == "f":
        source = replace(source, nan_fill=_nan_fill(source))
    sample = source.points(np.arange(0, n, stretch_sample_step(n)))
    return source, stretch_from_sample(sample, in_channels, norm, source.name)


def _nan_fill(source: LazySource) -> float | None:
    """The minimum of a float image that has NaN pixels (None: it has none)."""
    lowest, missing = np.inf, 0
    for _, window in source.bands():
        nan = np.isnan(window)
        missing += int(np.count_nonzero(nan))
        if not nan.all():
            lowest = min(lowest, float(np.min(window[~nan])))
    if not missing:
        return None
    if not np.isfinite(lowest):
        raise ImageReadError(f"{source.name}: every pixel is NaN (not a number); there is nothing to segment")
    log.info("%s: %d NaN pixels set to the image's minimum %g", source.name, missing, lowest)
    return lowest


# --------------------------------------------------------------------------- the block plan


@dataclass(frozen=True)
class Block:
    """Whole tiles of the plan that one task segments: their output region ``[y0:y1, x0:x1]`` (at
    the working scale) and its position ``(row, col)`` in the grid of blocks."""

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int
    tiles: tuple[Tile, ...]


@dataclass(frozen=True)
class BlockPlan:
    """The blocks of an image: ``grid[row][col]``, and the regular block step (``chunk``) that
    every block but the last of a row or column spans (the Zarr chunks of the results)."""

    grid: list[list[Block]]
    chunk: tuple[int, int]

    @property
    def blocks(self) -> list[Block]:
        return [b for line in self.grid for b in line]


def plan_blocks(work_shape: tuple[int, int], tile: tuple[int, int], meta: ModelMeta,
                block: int = DEFAULT_BLOCK) -> BlockPlan:
    """The tile plan of the single process over ``work_shape``, grouped into blocks of whole tiles,
    about ``block`` pixels on a side.

    Tiles overlap (they step by a multiple of the pooling grid, a little less than their edge) and
    the single process lets a later tile overwrite an earlier one; so a block owns its pixels from
    its first tile's origin to the next block's first tile's origin, and its earlier tiles' pixels
    past that are cut off (the next block's tile writes them, as in the single process).
    """
    tiles = plan_tiles(work_shape, tile, meta.geometry)
    ys, xs = sorted({t.y for t in tiles}), sorted({t.x for t in tiles})
    per_row, per_col = max(1, block // tile[0]), max(1, block // tile[1])
    row_starts, col_starts = ys[::per_row], xs[::per_col]
    row_ends, col_ends = [*row_starts[1:], work_shape[0]], [*col_starts[1:], work_shape[1]]
    grid = []
    for r, (y0, y1) in enumerate(zip(row_starts, row_ends)):
        line = []
        for c, (x0, x1) in enumerate(zip(col_starts, col_ends)):
            mine = tuple(t for t in tiles if y0 <= t.y < y1 and x0 <= t.x < x1)
            line.append(Block(r, c, y0, y1, x0, x1, mine))
        grid.append(line)
    step = (row_starts[1] if len(row_starts) > 1 else work_shape[0],
            col_starts[1] if len(col_starts) > 1 else work_shape[1])
    return BlockPlan(grid, step)


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to segment one block (small: it travels to the worker)."""

    source: LazySource
    model: str
    device: str
    threads: int
    block: Block
    work_shape: tuple[int, int]
    stretch: Stretch
    batch: int
    tta: bool
    foreground: tuple[int, ...]
    keep_probs: bool = False
    keep_foreground: bool = False  # the foreground probability (uint8): outlines, probability filter


_PREDICTORS: dict[tuple[str, str, int], Any] = {}


def _worker_predictor(model: str, device: str, threads: int) -> Any:
    """One predictor per worker process and model (an ONNX Runtime session with its share of the
    cores; loading costs about a second)."""
    key = (model, device, threads)
    if key not in _PREDICTORS:
        from .runtime import OnnxPredictor, load_predictor

        onnx = model.lower().endswith(".onnx")
        _PREDICTORS[key] = OnnxPredictor(model, device, threads) if onnx else load_predictor(model, device)
    return _PREDICTORS[key]


def segment_block(job: BlockJob) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The class labels (uint8) of one block, its class probabilities (float32, K x h x w) and its
    foreground probability (uint8, :func:`~unet_core.instances.foreground_u8`) when the job keeps
    them, computed by the single process's tile code."""
    predictor = _worker_predictor(job.model, job.device, job.threads)
    b = job.block
    probe = WorkPlane(np.zeros((1, 1)), job.work_shape, full_shape=job.source.shape2d)
    top, bottom, left, right = probe.input_box(list(b.tiles), predictor.meta.geometry.margin)
    plane = WorkPlane(job.source.read(top, bottom, left, right), job.work_shape, (top, left), job.source.shape2d)
    reach = (max(t.y + t.valid_h for t in b.tiles) - b.y0, max(t.x + t.valid_w for t in b.tiles) - b.x0)
    labels = np.zeros(reach, np.uint8)
    probs = np.zeros((predictor.meta.unet.n_classes, *reach), np.float32) if job.keep_probs else None
    foreground = np.zeros(reach, np.uint8) if job.keep_foreground else None
    for group, outputs in run_tiles(plane, list(b.tiles), predictor, job.stretch, job.batch, job.tta, False):
        for t, out in zip(group, outputs):
            here = replace(t, y=t.y - b.y0, x=t.x - b.x0)
            stitch(labels, here, out.argmax(axis=0).astype(np.uint8))
            if probs is not None:
                stitch(probs, here, out)
            if foreground is not None:
                stitch(foreground, here, foreground_u8(out, job.foreground))
    own = (slice(0, b.y1 - b.y0), slice(0, b.x1 - b.x0))
    return (labels[own], None if probs is None else probs[(slice(None), *own)],
            None if foreground is None else foreground[own])


# --------------------------------------------------------------------------- objects across blocks


@dataclass
class BlockObjects:
    """What merging needs of one block's 4-connected components (local ids 1..n)."""

    n: int
    first: np.ndarray  # (n,) raster index, in the whole work image, of each component's first pixel
    area: np.ndarray  # (n,) pixels
    top: np.ndarray  # the block's first row of local ids (0 = background)
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray


def block_components(labels: np.ndarray, foreground: Sequence[int], block: Block,
                     work_width: int) -> tuple[np.ndarray, BlockObjects]:
    """The block's components (int32 local ids, as ``ndi.label`` numbers them) and their summary."""
    ids, n = ndi.label(np.isin(labels, foreground), output=np.int32)
    flat = ids.ravel()
    where = np.flatnonzero(flat)
    _, first_at = np.unique(flat[where], return_index=True)
    first_y, first_x = np.divmod(where[first_at], ids.shape[1])
    first = (first_y + block.y0).astype(np.int64) * work_width + first_x + block.x0
    area = np.bincount(flat, minlength=n + 1)[1:]
    return ids, BlockObjects(n, first, area, ids[0].copy(), ids[-1].copy(), ids[:, 0].copy(), ids[:, -1].copy())


@dataclass
class ObjectMerge:
    """The global numbering of the components of all blocks: ``lookup[(row, col)]`` maps a block's
    local id to the final object id (0: removed by the size filter or on the image's edge);
    ``areas[i]``: the pixel count of final object ``i`` (``areas[0]`` = 0)."""

    lookup: dict[tuple[int, int], np.ndarray]
    n_objects: int
    areas: np.ndarray


def merge_objects(grid: list[list[Block]], parts: dict[tuple[int, int], BlockObjects], min_size: int,
                  drop_border: bool) -> ObjectMerge:
    """Merge components that touch across block faces, filter them as the single process does,
    and number the kept ones by their first pixel in raster order (``ndi.label``'s order)."""
    keys = [(b.row, b.col) for line in grid for b in line]
    offset, total = {}, 0
    for key in keys:
        offset[key] = total
        total += parts[key].n
    parent = np.arange(total + 1)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a_ids: np.ndarray, a_off: int, b_ids: np.ndarray, b_off: int) -> None:
        touching = (a_ids > 0) & (b_ids > 0)  # 4-connectivity: the pixel pairs straight across the face
        for a, b in set(zip(a_ids[touching].tolist(), b_ids[touching].tolist())):
            ra, rb = find(a + a_off), find(b + b_off)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

    rows, cols = len(grid), len(grid[0])
    for r in range(rows):
        for c in range(cols):
            me = parts[(r, c)]
            if c + 1 < cols:
                join(me.right, offset[(r, c)], parts[(r, c + 1)].left, offset[(r, c + 1)])
            if r + 1 < rows:
                join(me.bottom, offset[(r, c)], parts[(r + 1, c)].top, offset[(r + 1, c)])
    roots = np.array([find(i) for i in range(total + 1)])
    area = np.zeros(total + 1, np.int64)
    first = np.full(total + 1, np.iinfo(np.int64).max)
    for key in keys:
        span = slice(offset[key] + 1, offset[key] + 1 + parts[key].n)
        np.add.at(area, roots[span], parts[key].area)
        np.minimum.at(first, roots[span], parts[key].first)
    keep = (roots == np.arange(total + 1)) & (area >= max(1, min_size))
    keep[0] = False
    if drop_border:
        for key in keys:
            b = grid[key[0]][key[1]]
            edges = [parts[key].top] * (b.row == 0) + [parts[key].bottom] * (b.row == rows - 1)
            edges += [parts[key].left] * (b.col == 0) + [parts[key].right] * (b.col == cols - 1)
            for edge in edges:
                keep[roots[edge[edge > 0] + offset[key]]] = False
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(first[kept], kind="stable")]
    final = np.zeros(total + 1, np.int32)
    final[order] = np.arange(1, len(kept) + 1, dtype=np.int32)
    lookup = {key: final[roots[offset[key] + np.arange(parts[key].n + 1)]] * (np.arange(parts[key].n + 1) > 0)
              for key in keys}
    return ObjectMerge({k: v.astype(np.int32) for k, v in lookup.items()}, len(kept),
                       np.concatenate([[0], area[order]]))


# --------------------------------------------------------------------------- the whole run


@dataclass
class BlockResult:
    """What :func:`predict_blocks` made of one image.

    Attributes:
        zarr: the store holding ``labels`` (input grid, uint8 class indexes) and ``instances``
            (input grid, int32 object ids), written block by block.
        objects: the object table (the rows of :func:`~unet_core.instances.object_table`).
        factor, diameter: the working scale and the object diameter used (None: the model has none).
        tile, blocks: the tile of the plan and the number of blocks.
        look: the image's look (:mod:`unet_core.look`) that set the automatic probability filter;
            None for a model without a canonical diameter or an image without objects.
    """

    zarr: Path
    objects: list[dict[str, float]]
    factor: float
    diameter: float | None
    tile: tuple[int, int]
    blocks: int
    resolution: Resolution | None = None
    notes: list[str] = field(default_factory=list)
    look: str | None = None


def _check_supported(meta: ModelMeta, instance_options: InstanceOptions) -> InstanceOptions:
    resolved = instance_options.resolved(meta.diameter)
    refused = [name for name, on in (("--fill-holes", resolved.fill_holes), ("--expand", resolved.expand > 0),
                                     ("an outline-class model", meta.border_class is not None)) if on]
    if refused:
        raise DistributedError(f"{', '.join(refused)}: not available in blocks (they need the whole image at once); "
                               "run predict without --scheduler")
    return resolved


def _working_scale(source: LazySource, predictor: Any, options: InferenceOptions,
                   stretch: Stretch) -> tuple[float, float | None]:
    """(factor, diameter in input pixels) as the single process chooses them."""
    canonical = predictor.meta.diameter
    mode = options.diameter.mode if canonical else "off"
    if mode == "off":
        return 1.0, None
    if mode == "given":
        return clamp_factor(canonical / options.diameter.pixels), options.diameter.pixels
    sample = source.strided(search_step(SEARCH_EDGE))
    rows, cols = window_from_sample(sample, source.shape2d, SEARCH_EDGE)
    window = source.read(rows.start, rows.stop, cols.start, cols.stop)[None]
    chosen, _ = search_scale(window, canonical, predictor, options, stretch, MAX_FACTOR)
    return chosen.factor, chosen.diameter()


def predict_blocks(path: str | Path, model: str | Path, out_zarr: str | Path, client: Any,
                   options: InferenceOptions | None = None, instance_options: InstanceOptions | None = None,
                   dask_options: DaskOptions | None = None, channels: Sequence[int] | None = None,
                   device: str = "auto", progress: Callable[[int, int], None] | None = None) -> BlockResult:
    """Segment one large image in blocks on the Dask ``client``; results in ``out_zarr``.

    Args:
        path: a TIFF, OME-TIFF, Zarr or OME-Zarr 2-D image.
        model: the ``.onnx`` model (each worker loads it once).
        out_zarr: the Zarr store to write (a folder; must not exist).
        client: a :class:`distributed.Client` (:func:`dask_client`).
        options: tile, batch, TTA and diameter, as for :func:`~unet_core.inference.segment`.
        instance_options: the size filter and edge objects (see the module docstring).
        dask_options: the block size and threads per worker.
        channels: for a file with a channel axis, the channels to segment (from 1).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for every worker (one GPU per worker: give each
            worker its own ``CUDA_VISIBLE_DEVICES``).
        progress: called with (blocks done, blocks) as they finish.

    Raises:
        DistributedError, ImageReadError, ModelLoadError: what the user can fix (the message says what).
    """
    from .runtime import load_predictor

    options, dask_options = options or InferenceOptions(), dask_options or DaskOptions()
    out_zarr = Path(out_zarr)
    if out_zarr.exists():
        raise DistributedError(f"{out_zarr} already exists; choose another --zarr folder")
    if Path(model).suffix.lower() != ".onnx":
        raise DistributedError(f"{model}: blocks run ONNX models; export the checkpoint first (python -m unet_core "
                               "export)")
    predictor = load_predictor(model, device)
    meta = predictor.meta
    resolved = _check_supported(meta, instance_options or InstanceOptions())
    outline, certain = resolved.outline_threshold, resolved.min_object_probability
    source = open_lazy(path, meta.unet.in_channels, channels)
    source, stretch = lazy_stretch(source, meta.normalisation, meta.unet.in_channels)
    factor, diameter = _working_scale(source, predictor, options, stretch)
    work_shape = scaled_shape(source.shape2d, factor)
    if options.tile is None:
        best, batch = auto_tile(predictor)
        tile = (balanced_tile(work_shape[0], best, meta.geometry), balanced_tile(work_shape[1], best, meta.geometry))
    else:
        edge, _ = resolve_tile(options.tile, meta.geometry)
        tile, batch = (edge, edge), 1
    batch = options.batch or batch
    plan = plan_blocks(work_shape, tile, meta, dask_options.block)
    jobs = [BlockJob(source, str(Path(model).resolve()), device, dask_options.worker_threads(), b, work_shape,
                     stretch, batch, options.tta_for(source.shape[0] * source.shape[1]),
                     tuple(meta.foreground_classes), options.keep_probs, bool(outline or certain))
            for b in plan.blocks]
    log.info("%s: %d blocks of up to %d px at scale %.3g on %s", source.name, len(jobs), dask_options.block,
             factor, client)
    _create_store(out_zarr, source.shape2d, work_shape, plan.chunk, meta.unet.n_classes if options.keep_probs else None,
                  bool(outline or certain))
    parts = _gather(client, [client.submit(_label_block, job, str(out_zarr), pure=False) for job in jobs], progress)
    merge = merge_objects(plan.grid, dict(zip([(j.block.row, j.block.col) for j in jobs], parts)),
                          resolved.min_size, resolved.drop_border)
    median, candidate = split_candidates(merge.areas)
    wanted = np.flatnonzero(candidate) if resolved.split_merged else np.zeros(0, np.int64)
    boxes = _gather(client, [client.submit(_number_block, job, merge.lookup[(job.block.row, job.block.col)],
                                           str(out_zarr), wanted, pure=False) for job in jobs], None)
    if wanted.size:
        _split_in_blocks(client, str(out_zarr), _merged_boxes(boxes), median, merge.n_objects, work_shape, plan.chunk)
    regions = list(_input_regions(source.shape2d, plan.chunk))
    parts = _gather(client, [client.submit(_input_grid_region, source, work_shape, str(out_zarr), region, outline,
                                           bool(certain), tuple(meta.foreground_classes), pure=False)
                             for region in regions], None)
    sums = ObjectSums.merged([objects for objects, _ in parts])
    look = sum((part for _, part in parts), LookSums()).look() if meta.diameter else None
    certain = (instance_options or InstanceOptions()).resolved(meta.diameter, look).min_object_probability
    sums = _final_numbers(client, sums, certain, regions, str(out_zarr))
    notes = [] if source.nan_fill is None else [f"NaN pixels were set to the image's minimum {source.nan_fill:g}"]
    return BlockResult(out_zarr, table_from_sums(sums, source.pixel_size), factor, diameter,
                       tile, len(jobs), source.resolution, notes, look)


def _final_numbers(client: Any, sums: ObjectSums, threshold: float,
                   regions: list[tuple[int, int, int, int]], out: str) -> ObjectSums:
    """The objects kept, numbered 1..n in the ``instances`` chunks as the single process numbers
    them (:func:`~unet_core.instances.close_gaps`): those whose mean foreground probability is
    under ``threshold`` (0: none) erased, the numbers of the others closed up (an outline redrawn
    away leaves its number unused too); only the chunks that the bounding boxes of renumbered or
    erased objects reach are rewritten. The sums of the kept objects, with their new ids."""
    kept = np.ones(len(sums.ids), bool)
    if threshold:
        kept = ~uncertain(sums.area.astype(np.int64), sums.sum_p, threshold)
        if not kept.all():
            log.info("%d objects with a mean foreground probability under %g dropped", int((~kept).sum()), threshold)
    n = int(kept.sum())
    changed = ~kept | (sums.ids != np.cumsum(kept))  # erased, or given another number
    if not changed.any():
        return sums
    lookup = np.zeros(int(sums.ids.max()) + 1, dtype=np.int32)
    lookup[sums.ids[kept]] = np.arange(1, n + 1, dtype=np.int32)
    moved = sums.subset(changed)
    # Sent to the workers once (a slide's table of a million objects is 4 MB), not with each task.
    shared = client.scatter(lookup, broadcast=True)
    tasks = []
    for region in regions:
        top, bottom, left, right = region
        if ((moved.min_y < bottom) & (moved.max_y > top) & (moved.min_x < right) & (moved.max_x > left)).any():
            tasks.append(client.submit(_renumber_objects, out, region, shared, pure=False))
    _gather(client, tasks, None)
    final = sums.subset(kept)
    final.ids = np.arange(1, n + 1, dtype=sums.ids.dtype)
    return final


def _gather(client: Any, futures: list[Any], progress: Callable[[int, int], None] | None) -> list[Any]:
    """The futures' results in their order, taken as each finishes (so that a worker lets go of
    a result at once, not when the last task is done), calling ``progress``."""
    from distributed import as_completed

    index = {future.key: i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    pending = as_completed(futures, with_results=True)
    futures.clear()  # the only references left are as_completed's, dropped one by one
    for done, (future, result) in enumerate(pending, start=1):
        results[index[future.key]] = result
        future.release()
        if progress:
            progress(done, len(results))
    return results


def _create_store(out: Path, shape: tuple[int, int], work_shape: tuple[int, int], chunk: tuple[int, int],
                  n_classes: int | None = None, foreground: bool = False) -> None:
    """The Zarr store of the results, chunked like the blocks so that no two tasks write one chunk:
    ``work_labels`` and ``work_instances`` at the working scale, ``labels`` and ``instances`` on the
    input grid (chunks of the same size there); with ``n_classes``, the class probabilities too
    (``work_probs`` and ``probs``, float32, classes first); with ``foreground``, the working
    scale's foreground probability that outlines are redrawn from (``work_foreground``, uint8)."""
    import zarr

    root = zarr.open_group(str(out), mode="w-")
    if n_classes:
        for name, size in (("work_probs", work_shape), ("probs", shape)):
            root.create_array(name, shape=(n_classes, *size), chunks=(n_classes, *chunk), dtype="float32",
                              fill_value=0.0)
    if foreground:
        root.create_array("work_foreground", shape=work_shape, chunks=chunk, dtype="uint8", fill_value=0)
    root.create_array("work_labels", shape=work_shape, chunks=chunk, dtype="uint8", fill_value=0)
    root.create_array("work_instances", shape=work_shape, chunks=chunk, dtype="int32", fill_value=0)
    root.create_array("labels", shape=shape, chunks=chunk, dtype="uint8", fill_value=0)
    root.create_array("instances", shape=shape, chunks=chunk, dtype="int32", fill_value=0)


def _label_block(job: BlockJob, out: str) -> BlockObjects:
    """Task: segment a block, store its labels, and summarise its components."""
    import zarr

    labels, probs, foreground = segment_block(job)
    b = job.block
    root = zarr.open_group(out, mode="r+")
    root["work_labels"][b.y0 : b.y1, b.x0 : b.x1] = labels
    if probs is not None:
        root["work_probs"][:, b.y0 : b.y1, b.x0 : b.x1] = probs
    if foreground is not None:
        root["work_foreground"][b.y0 : b.y1, b.x0 : b.x1] = foreground
    _, summary = block_components(labels, job.foreground, b, job.work_shape[1])
    return summary


def _number_block(job: BlockJob, lookup: np.ndarray, out: str, wanted: np.ndarray) -> np.ndarray:
    """Task: the block's final object ids (its components, numbered by ``lookup``), stored; the
    bounding boxes of the ``wanted`` objects' parts in it (:func:`_boxes`)."""
    import zarr

    root = zarr.open_group(out, mode="r+")
    b = job.block
    ids, _ = ndi.label(np.isin(np.asarray(root["work_labels"][b.y0 : b.y1, b.x0 : b.x1]), job.foreground),
                       output=np.int32)
    ids = lookup[ids]
    root["work_instances"][b.y0 : b.y1, b.x0 : b.x1] = ids
    return _boxes(ids, wanted, (b.y0, b.x0))


def _boxes(ids: np.ndarray, wanted: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    """Rows (id, top, bottom, left, right) (bottom and right exclusive, at ``origin``) of the
    ``wanted`` ids present in ``ids``, one row per id; the rows of several parts of an image merge
    into the whole image's by :func:`_merged_boxes`."""
    ys, xs = np.nonzero(np.isin(ids, wanted))
    labels = ids[ys, xs]
    ys, xs = ys + origin[0], xs + origin[1]
    return _merged_boxes([np.stack([labels, ys, ys + 1, xs, xs + 1], axis=1)])


def _merged_boxes(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The rows of :func:`_boxes` of all parts as one row per id (the box around its parts' boxes;
    a pixel is the box of one pixel)."""
    rows = np.concatenate([np.zeros((0, 5), np.int64), *parts]).astype(np.int64, copy=False)
    labels, at = np.unique(rows[:, 0], return_inverse=True)
    merged = np.empty((len(labels), 5), np.int64)
    merged[:, 0] = labels
    for col, reduce, start in ((1, np.minimum, np.iinfo(np.int64).max), (2, np.maximum, 0),
                               (3, np.minimum, np.iinfo(np.int64).max), (4, np.maximum, 0)):
        merged[:, col] = start
        reduce.at(merged[:, col], at, rows[:, col])
    return merged


# --------------------------------------------------------------------------- merged objects split


@dataclass(frozen=True)
class Pieces:
    """One object cut by :func:`~unet_core.instances.merged_pieces`: its id, the top-left corner of
    its box on the working grid, the pieces (1..k) there, and the id its piece 2 gets (pieces 3..k
    the next ones), numbered as :func:`~unet_core.instances.split_merged` numbers them."""

    label: int
    origin: tuple[int, int]
    pieces: np.ndarray
    first_id: int = 0


def _split_objects(out: str, boxes: np.ndarray, median: float) -> list[Pieces]:
    """Task: the objects of ``boxes`` (rows of :func:`_merged_boxes`) that
    :func:`~unet_core.instances.merged_pieces` cuts, read whole from ``work_instances``."""
    import zarr

    work = zarr.open_group(out, mode="r")["work_instances"]
    found = []
    for label, top, bottom, left, right in boxes.tolist():
        pieces = merged_pieces(np.asarray(work[top:bottom, left:right]) == label, median)
        if pieces.max() > 1:
            found.append(Pieces(label, (top, left), pieces))
    return found


def _write_pieces(out: str, region: tuple[int, int, int, int], cut: list[Pieces]) -> None:
    """Task: the new ids of the pieces in ``cut`` written into one chunk (``region``) of
    ``work_instances``; piece 1 keeps the object's id."""
    import zarr

    root = zarr.open_group(out, mode="r+")
    top, bottom, left, right = region
    ids = np.asarray(root["work_instances"][top:bottom, left:right])
    for p in cut:
        y0, x0 = max(top, p.origin[0]), max(left, p.origin[1])
        y1, x1 = min(bottom, p.origin[0] + p.pieces.shape[0]), min(right, p.origin[1] + p.pieces.shape[1])
        number_pieces(ids[y0 - top : y1 - top, x0 - left : x1 - left],
                      p.pieces[y0 - p.origin[0] : y1 - p.origin[0], x0 - p.origin[1] : x1 - p.origin[1]], p.first_id)
    root["work_instances"][top:bottom, left:right] = ids


def _split_in_blocks(client: Any, out: str, boxes: np.ndarray, median: float, n_objects: int,
                     work_shape: tuple[int, int], chunk: tuple[int, int]) -> int:
    """The merged objects of ``boxes`` cut in ``work_instances`` as the single process cuts them
    (the same pieces, numbered from ``n_objects + 1`` in the order of the objects); the new number
    of objects. The pieces are found object by object (each read whole) and written chunk by chunk,
    so that no two tasks write one chunk."""
    batches = [boxes[i : i + SPLIT_BATCH] for i in range(0, len(boxes), SPLIT_BATCH)]
    found = [p for part in _gather(client, [client.submit(_split_objects, out, b, median, pure=False)
                                            for b in batches], None) for p in part]
    cut, next_id = [], n_objects + 1
    for p in sorted(found, key=lambda p: p.label):
        cut.append(replace(p, first_id=next_id))
        next_id += int(p.pieces.max()) - 1
    spans = np.array([(p.origin[0], p.origin[0] + p.pieces.shape[0], p.origin[1], p.origin[1] + p.pieces.shape[1])
                      for p in cut], np.int64).reshape(-1, 4)
    tasks = []
    for region in _input_regions(work_shape, chunk):
        top, bottom, left, right = region
        hit = (spans[:, 0] < bottom) & (spans[:, 1] > top) & (spans[:, 2] < right) & (spans[:, 3] > left)
        if hit.any():
            tasks.append(client.submit(_write_pieces, out, region, [cut[i] for i in np.flatnonzero(hit)], pure=False))
    _gather(client, tasks, None)
    log.info("%d merged objects split into %d", len(cut), len(cut) + next_id - n_objects - 1)
    return next_id - 1


def _input_regions(shape: tuple[int, int], chunk: tuple[int, int]) -> Iterator[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of the chunks of a 2-D array (the input grid's or the working scale's)."""
    for top in range(0, shape[0], chunk[0]):
        for left in range(0, shape[1], chunk[1]):
            yield top, min(shape[0], top + chunk[0]), left, min(shape[1], left + chunk[1])


def _input_grid_region(source: LazySource, work_shape: tuple[int, int], out: str,
                       region: tuple[int, int, int, int], outline: float = 0.0, certainty: bool = False,
                       foreground_classes: tuple[int, ...] = (1,)) -> tuple[ObjectSums, LookSums]:
    """Task: labels and object ids of one input-grid chunk (nearest working-scale pixel, as
    :func:`~unet_core.scale.rescale_labels` maps them; with ``outline``, the outlines redrawn as
    :func:`~unet_core.instances.refine_outlines` redraws the whole image's), stored; the chunk's
    object sums (with ``certainty``, their foreground probability sums too) and the sums that
    tell the image's look (:func:`~unet_core.inference.image_look`)."""
    import zarr

    root = zarr.open_group(out, mode="r+")
    top, bottom, left, right = region
    shape = source.shape2d
    labels = _nearest_window(root["work_labels"], work_shape, shape, region)
    root["labels"][top:bottom, left:right] = labels
    ids = _region_ids(root, work_shape, shape, region, outline)
    root["instances"][top:bottom, left:right] = ids
    if "probs" in root:
        root["probs"][:, top:bottom, left:right] = _input_grid_probs(root["work_probs"], work_shape, shape, region)
    fg_sum = None
    if certainty:
        r0, r1, c0, c1 = input_window(np.arange(top, bottom), np.arange(left, right), work_shape, shape)
        fg_sum = foreground_sums(ids, np.asarray(root["work_foreground"][r0:r1, c0:c1]), (top, left), shape,
                                 (r0, c0), work_shape)
    pixels = source.read(top, bottom, left, right)
    return object_sums(ids, pixels, (top, left), fg_sum), look_sums(pixels, np.isin(labels, foreground_classes))


def _renumber_objects(out: str, region: tuple[int, int, int, int], lookup: np.ndarray) -> None:
    """Task: one input-grid chunk of ``instances`` renumbered by ``lookup`` (old id -> new id, 0:
    erased)."""
    import zarr

    root = zarr.open_group(out, mode="r+")
    top, bottom, left, right = region
    ids = np.asarray(root["instances"][top:bottom, left:right])
    new = lookup[ids]
    if not np.array_equal(new, ids):
        root["instances"][top:bottom, left:right] = new.astype(ids.dtype, copy=False)


def _nearest_window(work: Any, work_shape: tuple[int, int], shape: tuple[int, int],
                    region: tuple[int, int, int, int]) -> np.ndarray:
    """An input-grid region of a working-scale map by nearest neighbour, read from the window of
    it that the region needs."""
    top, bottom, left, right = region
    rows = nearest_index(work_shape[0], shape[0])[top:bottom]
    cols = nearest_index(work_shape[1], shape[1])[left:right]
    window = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    return np.asarray(work[window])[np.ix_(rows - window[0].start, cols - window[1].start)]


def _region_ids(root: Any, work_shape: tuple[int, int], shape: tuple[int, int], region: tuple[int, int, int, int],
                outline: float) -> np.ndarray:
    """The object ids of an input-grid region; outlines redrawn on the region and a margin of
    :func:`~unet_core.instances.outline_reach` around it, so that they equal the whole image's."""
    top, bottom, left, right = region
    if not outline:
        return _nearest_window(root["work_instances"], work_shape, shape, region)
    reach = outline_reach(work_shape, shape)
    wide = (max(top - reach, 0), min(bottom + reach, shape[0]), max(left - reach, 0), min(right + reach, shape[1]))
    ids = _nearest_window(root["work_instances"], work_shape, shape, wide)
    r0, r1, c0, c1 = input_window(np.arange(wide[0], wide[1]), np.arange(wide[2], wide[3]), work_shape, shape)
    foreground = np.asarray(root["work_foreground"][r0:r1, c0:c1])
    refine_outlines(ids, foreground, outline, (wide[0], wide[2]), shape, (r0, c0), work_shape)
    return ids[top - wide[0] : bottom - wide[0], left - wide[2] : right - wide[2]]


def _input_grid_probs(work_probs: Any, work_shape: tuple[int, int], shape: tuple[int, int],
                      region: tuple[int, int, int, int]) -> np.ndarray:
    """The probabilities of an input-grid region: the working-scale ones resized linearly (as the
    single process resizes the whole map), from the window of them that the region needs."""
    top, bottom, left, right = region
    if tuple(work_shape) == tuple(shape):
        return np.asarray(work_probs[:, top:bottom, left:right])
    rows, cols = np.arange(top, bottom), np.arange(left, right)
    r0, r1, c0, c1 = input_window(rows, cols, work_shape, shape)
    window = np.asarray(work_probs[:, r0:r1, c0:c1]).transpose(1, 2, 0)
    return resize_at(window, shape, rows, cols, (r0, c0), work_shape).transpose(2, 0, 1)


def in_blocks(path: str | Path, block: int = DEFAULT_BLOCK) -> bool:
    """Whether ``predict --scheduler`` segments this input in blocks: a Zarr store, or a 2-D TIFF
    of more than :data:`BLOCKS_FROM` blocks; any other file goes whole to one worker."""
    from .io import read_image_header

    path = Path(path)
    if path.is_dir():
        return True
    try:
        header = read_image_header(path)
    except ImageReadError:
        return False  # the worker that reads it whole says what is wrong with it
    z, height, width, _ = header.shape
    return header.format == "TIFF" and z == 1 and height * width > BLOCKS_FROM * block * block


# --------------------------------------------------------------------------- the usual files

#: Images up to this many pixels also get the usual files from a block run (beyond, the Zarr store
#: and the CSV): the single process's working-size limit.
FILES_UP_TO = 1 << 28


def block_result_files(result: BlockResult, source_name: str, meta: ModelMeta, out_dir: str | Path, stem: str,
                       overwrite: bool = False, protected: Collection[Path] = ()) -> FileResult:
    """The files ``predict`` writes for an image (labels, instances, objects CSV), from the Zarr
    store of :func:`predict_blocks`: the arrays are read whole, so call this only for an image
    that fits in memory (:data:`FILES_UP_TO` pixels)."""
    import zarr

    root = zarr.open_group(str(result.zarr), mode="r")
    labels, ids = np.asarray(root["labels"])[None], np.asarray(root["instances"])[None]
    probs = np.asarray(root["probs"])[None] if "probs" in root else None
    # The image's pixels are not needed to write its results: a zero-byte stand-in of its shape.
    image = ImageFile(source_name, np.broadcast_to(np.zeros((), np.uint8), (*ids.shape, 1)),
                      resolution=result.resolution, notes=list(result.notes))
    seg = Segmentation(labels, probs, Stretch(0.0, 1.0), result.tile, 1, factor=result.factor,
                       diameter=result.diameter)
    return write_outputs(Result(image, seg, ids, [result.objects], meta.unet.n_classes, meta.border_class), out_dir,
                         stem, overwrite, protected)


# --------------------------------------------------------------------------- many files


@dataclass
class FileOutcome:
    """What became of one file of :func:`predict_files`: what was written, or why not."""

    name: str
    stem: str
    written: FileResult | None = None
    diameter: float | None = None
    diameter_source: str = "off"
    factor: float = 1.0
    error: str | None = None
    look: str | None = None


def _file_task(name: str, stem: str, model: str, device: str, threads: int, options: InferenceOptions,
               instance_options: InstanceOptions | None, out_dir: str, channels: Sequence[int] | None,
               overwrite: bool, protected: Collection[Path]) -> FileOutcome:
    """Task: one whole file, segmented and written as ``predict`` does; any failure is its message."""
    try:
        predictor = _worker_predictor(model, device, threads)
        written, seg = segment_file(name, stem, predictor, options, instance_options, out_dir, channels, overwrite,
                                    protected)
    except Exception as exc:  # noqa: BLE001 -- this file fails, the others go on (a bug is logged by the worker)
        return FileOutcome(name, stem, error=failure_message(name, exc))
    return FileOutcome(name, stem, written, seg.diameter, seg.diameter_source, seg.factor, look=seg.look)


def predict_files(names: Sequence[str], stems: Sequence[str], model: str | Path, out_dir: str | Path, client: Any,
                  options: InferenceOptions | None = None, instance_options: InstanceOptions | None = None,
                  dask_options: DaskOptions | None = None, channels: Sequence[int] | None = None,
                  overwrite: bool = False, protected: Collection[Path] = (), device: str = "auto",
                  progress: Callable[[int, int], None] | None = None) -> list[FileOutcome]:
    """Segment whole files on the workers of ``client``, each written as ``predict`` writes it
    (``stems``: their distinct output stems, :func:`~unet_core.predict.output_stems`); a file that
    fails is reported in its :class:`FileOutcome` and the others go on. Paths are sent resolved:
    workers may run in another folder."""
    options, dask_options = options or InferenceOptions(), dask_options or DaskOptions()
    model = str(Path(model).resolve())
    futures = [client.submit(_file_task, str(Path(name).resolve()), stem, model, device,
                             dask_options.worker_threads(), options, instance_options, str(Path(out_dir).resolve()),
                             channels, overwrite, protected, pure=False)
               for name, stem in zip(names, stems)]
    outcomes = _gather(client, futures, progress)
    for outcome, name in zip(outcomes, names):  # named as the user typed them
        if outcome.error:
            outcome.error = outcome.error.replace(outcome.name, name, 1)
        outcome.name = name
    return outcomes
