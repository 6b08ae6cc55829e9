"""Overlap-tile segmentation of whole images and stacks: the path shared by the CLI, app and evaluation.

image -> channel conversion + percentile stretch (fitted once per image or stack) -> rescale to the
model's canonical object diameter (when it declares one) -> tile plan -> predictor on batches of
mirrored input tiles (optionally averaged over the 8 flips/rotations) -> stitch -> argmax -> back
to the input's pixel grid.

Object scale (:mod:`unet_core.scale`): with ``diameter="auto"`` (the default) a model with a
canonical diameter searches the scale at which it is most certain (:func:`search_scale`, on a
window of the image) and segments the whole image at that scale; the diameter it reports is the
median diameter of the objects found there, in input pixels. Overlap-tile stays exact at the rescaled size: the result does not
depend on the tile size. Instances are derived at the working scale (where the network's
one-pixel separation lines live) and mapped back to the input grid by nearest neighbour, and
their outlines are then redrawn on the input grid from the foreground probability
(:func:`~unet_core.instances.refine_outlines`) and the objects the network is unsure of dropped
(:func:`~unet_core.instances.drop_uncertain`); the label image is mapped by nearest neighbour;
kept probabilities are resized linearly.

Memory is O(tile x batch) besides the input, the label image, a byte per working pixel of
foreground probability and -- only when asked for -- one probability array (memory-mapped to a
temporary file when large).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .atomic import write_json
from .instances import InstanceOptions, close_gaps, drop_uncertain, foreground_u8, instances, refine_outlines
from .io import ImageFile, Stretch, fit_stretch, to_channels
from .look import LookSums, look_sums
from .metadata import ModelMeta
from .paths import cache_dir
from .runtime import Predictor, cuda_free_memory
from .scale import (
    MAX_FACTOR,
    SEARCH_BAND,
    SEARCH_STEP,
    Diameter,
    WorkPlane,
    boundary_uncertainty,
    candidate_factors,
    clamp_factor,
    median_diameter,
    rescale_image,
    rescale_labels,
    scaled_shape,
    search_window,
)
from .tiling import Geometry, Tile, balanced_tile, plan_tiles, stitch

log = logging.getLogger(__name__)

#: progress(done, total): tiles processed so far out of all tiles of the image (or stack).
Progress = Callable[[int, int], None]

# Probability arrays above this many bytes go to a memory-mapped temporary file.
PROBS_IN_MEMORY_LIMIT = 1 << 30
# Images (or stacks) of at least this many pixels get the runtime's working memory back after
# their last tile, for instances and the object table (~10 bytes per pixel). Smaller ones keep it:
# faulting it in again costs the next image about a second on a paper-width network.
RELEASE_MIN_PIXELS = 4096 * 4096
#: Automatic test-time augmentation (``tta=None``) runs for images up to this many pixels: 8 passes
#: of a network that does a 1024 x 1024 image in about 2 s on 2 CPU cores. Measured with the
#: shipped nuclei model on the 43 images of held-out acquisition groups: DSB mean AP 0.295 -> 0.310
#: (fluorescence 0.394 -> 0.407), 5.3x the time.
TTA_AUTO_PIXELS = 1 << 20
#: Network passes of the automatic scale search, at most.
SEARCH_PASSES = 6
#: The automatic scale search runs on a window of at most this edge (input pixels), chosen where
#: the image has most structure (:func:`~unet_core.scale.search_window`).
SEARCH_EDGE = 512
# A rescaled image is never larger than this many pixels per slice (the factor is lowered).
MAX_WORK_PIXELS = 1 << 28


@dataclass
class InferenceOptions:
    """How to run a model over an image.

    Attributes:
        tile: output tile edge in pixels (rounded down to a valid size), or None for automatic.
        batch: tiles per network call, or None for automatic.
        tta: average the probabilities over the 8 flips/rotations (as for the paper's ISBI entry):
            True, False, or None (the default): automatic, on for images of up to
            :data:`TTA_AUTO_PIXELS` pixels (all slices together), where it costs seconds, off beyond.
        keep_probs: also return the class probabilities.
        probs_dtype: "float32" or "float16" for the kept probabilities.
        diameter: object scale (:class:`~unet_core.scale.Diameter`): ``"auto"`` (estimate, the
            default), ``"off"`` or the objects' diameter in input pixels. Ignored by models
            without a canonical diameter.
    """

    tile: int | None = None
    batch: int | None = None
    tta: bool | None = None
    keep_probs: bool = False
    probs_dtype: str = "float32"
    diameter: Diameter | str | float | None = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.diameter, Diameter):
            self.diameter = Diameter.parse(self.diameter)

    def tta_for(self, pixels: int) -> bool:
        """Whether test-time augmentation runs for an image of ``pixels`` pixels (all slices)."""
        return self.tta if self.tta is not None else pixels <= TTA_AUTO_PIXELS


@dataclass
class Segmentation:
    """Result for an image or stack: ``labels`` (Z, H, W) uint8 class indexes, ``probs`` (Z, K, H, W).

    Attributes:
        labels, probs: on the input's pixel grid.
        work_labels: the labels at the working scale (``labels`` itself when ``factor`` is 1).
        factor: working scale / input scale (1.0 = no rescaling).
        diameter: the object diameter in input pixels that was used (given or estimated), None
            when the model has no canonical diameter or scale handling was off.
        diameter_source: ``"given"``, ``"estimated"``, ``"off"`` or ``"model has none"``.
        look: the image's look (``"fluorescence"``, ``"bright-field"`` or ``"stained"``:
            :mod:`unet_core.look`, over all slices), which sets the automatic probability filter;
            None for a model without a canonical diameter, or an image without objects.
        work_foreground: (Z, H', W') uint8 foreground probability at the working scale, in 1/255
            steps (:func:`~unet_core.instances.foreground_u8`): the object outlines are redrawn
            from it (:func:`~unet_core.instances.refine_outlines`) and uncertain objects found
            (:func:`~unet_core.instances.drop_uncertain`).
    """

    labels: np.ndarray
    probs: np.ndarray | None
    stretch: Stretch
    tile: tuple[int, int]
    batch: int
    notes: list[str] = field(default_factory=list)
    work_labels: np.ndarray | None = None
    factor: float = 1.0
    diameter: float | None = None
    diameter_source: str = "off"
    work_foreground: np.ndarray | None = None
    look: str | None = None

    def __post_init__(self) -> None:
        if self.work_labels is None:
            self.work_labels = self.labels


def resolve_tile(requested: int, geometry: Geometry) -> tuple[int, str | None]:
    """The valid output tile edge for a requested one, and a note when it had to change."""
    tile = max(geometry.floor_output(requested), geometry.min_tile)
    if tile == requested:
        return tile, None
    return tile, f"tile {requested} is not a valid output size for this network; using {tile}"


def segment(
    image: ImageFile,
    predictor: Predictor,
    options: InferenceOptions | None = None,
    progress: Progress | None = None,
) -> Segmentation:
    """Segment every slice of ``image`` (normalised once over the whole stack), at the model's
    canonical object scale when it has one (see the module docstring)."""
    options = options or InferenceOptions()
    options = replace(options, tta=options.tta_for(int(np.prod(image.data.shape[:3]))))
    meta = predictor.meta
    stretch = fit_stretch(image.data, meta.unet.in_channels, meta.normalisation, image.name)
    canonical = meta.diameter
    mode = options.diameter.mode if canonical else "off"
    if mode == "off":
        seg = _segment_at(image.data, 1.0, predictor, options, stretch, progress)
        seg.diameter_source = "off" if canonical else "model has none"
    elif mode == "given":
        factor = _work_factor(canonical / options.diameter.pixels, image.shape2d)
        seg = _segment_at(image.data, factor, predictor, options, stretch, progress)
        seg.diameter, seg.diameter_source = options.diameter.pixels, "given"
        seg = _to_input_grid(seg, image.shape2d)
    else:
        seg = _to_input_grid(_segment_auto(image, canonical, predictor, options, stretch, progress), image.shape2d)
    if canonical:  # the look only sets the automatic filter of models with a diameter
        seg.look = image_look(image.data, seg.labels, meta.foreground_classes)
    return seg


def image_look(data: np.ndarray, labels: np.ndarray, foreground_classes: list[int] | tuple[int, ...]) -> str | None:
    """The look (:mod:`unet_core.look`) of an image or stack ``data`` (Z, H, W, C), its objects
    the foreground of the class map ``labels`` (Z, H, W) on the input grid."""
    total = LookSums()
    for s in range(data.shape[0]):
        total = total + look_sums(data[s], np.isin(labels[s], foreground_classes))
    return total.look()


@dataclass(frozen=True)
class ScaleCandidate:
    """One scale tried by the automatic search: ``factor`` (work / input), the median diameter of
    the objects found there (work pixels; None: no objects) and the network's
    :func:`~unet_core.scale.boundary_uncertainty`."""

    factor: float
    work_diameter: float | None
    uncertainty: float

    def in_band(self, canonical: float) -> bool:
        """Objects found, measuring within :data:`~unet_core.scale.SEARCH_BAND` of ``canonical``."""
        if self.work_diameter is None or not np.isfinite(self.uncertainty):
            return False
        return 1.0 / SEARCH_BAND <= self.work_diameter / canonical <= SEARCH_BAND

    def diameter(self) -> float | None:
        """The objects' median diameter in input pixels."""
        return None if self.work_diameter is None else self.work_diameter / self.factor


def _segment_auto(image: ImageFile, canonical: float, predictor: Predictor, options: InferenceOptions,
                  stretch: Stretch, progress: Progress | None) -> Segmentation:
    """Search the scale on a window of the image (:func:`search_scale`), then segment the whole
    image at it (reusing the search's pass when the window is the whole image)."""
    data = image.data
    z = data.shape[0] // 2  # a stack is searched on its middle slice
    rows, cols = search_window(data[z], SEARCH_EDGE)
    window = data[z : z + 1, rows, cols]
    whole = window.shape[1:3] == data.shape[1:3] and data.shape[0] == 1
    limit = _work_factor(MAX_FACTOR, image.shape2d)
    chosen, passes = search_scale(window, canonical, predictor, options, stretch, limit)
    seg = passes.get(chosen.factor) if whole else None
    if seg is None:
        seg = _segment_at(data, chosen.factor, predictor, options, stretch, progress)
    elif progress:
        progress(1, 1)
    seg.diameter, seg.diameter_source = chosen.diameter(), "estimated"
    if chosen.work_diameter is None:
        seg.notes.append("no objects found: the diameter could not be estimated")
    return seg


def search_scale(window: np.ndarray, canonical: float, predictor: Predictor, options: InferenceOptions,
                 stretch: Stretch, limit: float = MAX_FACTOR) -> tuple[ScaleCandidate, dict[float, Segmentation]]:
    """The scale at which the network is most certain, by a walk over :func:`candidate_factors`.

    Starts at the input's own scale. While the objects found measure outside the band around the
    canonical diameter, it jumps to the scale they ask for; inside the band it moves to the more
    certain neighbour until neither neighbour is more certain. At most :data:`SEARCH_PASSES`
    network passes over ``window`` (1, H, W, C).

    Returns:
        The chosen candidate and the segmentations of the whole window by factor (passes at
        enlarging factors run on the window's centre only and are not kept).
    """
    grid = candidate_factors(limit)
    tried: dict[int, ScaleCandidate] = {}
    passes: dict[float, Segmentation] = {}
    probe = replace(options, keep_probs=True, probs_dtype="float32")
    fg = predictor.meta.foreground_classes

    def score(k: int) -> float:
        """The uncertainty at grid scale ``k`` (segmenting there if the pass budget allows)."""
        if k not in tried:
            if len(tried) >= SEARCH_PASSES:
                return np.inf
            # Enlarged, the window's centre alone holds enough objects: the pass stays as cheap as
            # one over SEARCH_EDGE^2 pixels.
            part = _central(window, round(SEARCH_EDGE / max(1.0, grid[k])))
            seg = _segment_at(part, grid[k], predictor, probe, stretch, None)
            # Merged objects are not split here: the search was measured without it (its median
            # diameter is within 1 % of the truth on fluorescence) and runs once per scale tried.
            ids = instances(seg.work_labels[0], fg, InstanceOptions(split_merged=False), expected_diameter=canonical,
                            border_class=predictor.meta.border_class)
            tried[k] = ScaleCandidate(grid[k], median_diameter(ids), boundary_uncertainty(seg.probs[0, fg].sum(axis=0)))
            seg.probs = seg.probs.astype(options.probs_dtype, copy=False) if options.keep_probs else None
            if part.shape == window.shape:
                passes[grid[k]] = seg
        return tried[k].uncertainty if tried[k].in_band(canonical) else np.inf

    k = min(range(len(grid)), key=lambda j: abs(np.log(grid[j])))  # the input's own scale
    while len(tried) < SEARCH_PASSES:
        if np.isfinite(score(k)):  # in the band: walk to the more certain neighbour
            best = min((j for j in (k - 1, k, k + 1) if 0 <= j < len(grid)), key=score)
            if best == k:
                break
            k = best
        else:  # too far from the trained size: go where the measured objects say
            nxt = int(np.clip(k + _jump(tried[k], canonical), 0, len(grid) - 1))
            if nxt in tried:
                break
            k = nxt
    return choose_scale(list(tried.values()), canonical), passes


def choose_scale(tried: list[ScaleCandidate], canonical: float) -> ScaleCandidate:
    """The scale the search settles on among the candidates it ``tried``.

    The most certain of those whose objects measure about the ``canonical`` diameter. When none
    does, the network recognises nuclei of its size at no scale (sparse nuclei in textured tissue,
    say): then the most certain scale that found objects, since object sizes measured on what it
    is unsure of mean little. (Taking the size nearest the canonical one instead blew a stained
    image with 3 nuclei up 4x, where the network then drew its texture: foreground IoU 0.06 against
    0.72 at the most certain scale; it was 2 of 176 validation images, and both gained.) When no
    scale found any object, the input's own scale.
    """
    found = [c for c in tried if c.work_diameter is not None]
    if not found:
        return min(tried, key=lambda c: abs(np.log(c.factor)))
    in_band = [c for c in found if c.in_band(canonical)] or found
    return min(in_band, key=lambda c: c.uncertainty)


def _central(data: np.ndarray, edge: int) -> np.ndarray:
    """The central ``edge`` x ``edge`` part of ``data`` (Z, H, W, C), or all of it if smaller."""
    h, w = data.shape[1:3]
    top, left = max(0, (h - edge) // 2), max(0, (w - edge) // 2)
    return data[:, top : top + min(h, edge), left : left + min(w, edge)]


def _jump(candidate: ScaleCandidate, canonical: float) -> int:
    """Grid steps from ``candidate`` towards the scale its objects' size asks for (0: none)."""
    if candidate.work_diameter is None:  # nothing found: the objects may be too small to see
        return 2
    steps = np.log(canonical / candidate.work_diameter) / np.log(SEARCH_STEP)
    return int(np.clip(np.round(steps), -4, 4)) or int(np.sign(steps))


def _work_factor(factor: float, shape: tuple[int, int]) -> float:
    """``factor`` within the scale bounds and the working-size limit."""
    factor = clamp_factor(factor)
    limit = float(np.sqrt(MAX_WORK_PIXELS / max(1, shape[0] * shape[1])))
    return min(factor, limit)


def _to_input_grid(seg: Segmentation, shape: tuple[int, int]) -> Segmentation:
    """Labels (nearest) and probabilities (linear) of a rescaled segmentation on the input grid."""
    if seg.work_labels.shape[1:] == tuple(shape):
        seg.labels = seg.work_labels
        return seg
    seg.labels = np.stack([rescale_labels(s, shape) for s in seg.work_labels])
    if seg.probs is not None:
        probs = np.empty(seg.probs.shape[:2] + tuple(shape), seg.probs.dtype)
        for z in range(probs.shape[0]):
            probs[z] = rescale_image(seg.probs[z].transpose(1, 2, 0), shape).transpose(2, 0, 1)
        seg.probs = probs
    return seg


def segment_objects(
    image: ImageFile,
    predictor: Predictor,
    options: InferenceOptions | None = None,
    instance_options: InstanceOptions | None = None,
    progress: Progress | None = None,
) -> tuple[Segmentation, np.ndarray]:
    """:func:`segment` plus the instance ids (Z, H, W) int32 on the input's pixel grid.

    Instances are derived at the working scale (objects separated by the network's one-pixel
    gaps, specks removed), mapped back by nearest neighbour, and their outlines redrawn on the
    input grid from the foreground probability (:func:`~unet_core.instances.refine_outlines`), and
    objects the network is unsure of dropped (:func:`~unet_core.instances.drop_uncertain`).
    """
    seg = segment(image, predictor, options, progress)
    return seg, instance_ids(seg, predictor.meta, instance_options, image.shape2d)


def instance_ids(seg: Segmentation, meta: ModelMeta, instance_options: InstanceOptions | None,
                 shape: tuple[int, int]) -> np.ndarray:
    """The instance ids (Z, H, W) int32 of a segmentation on the input grid ``shape``: derived at
    the working scale by the object rule of the model ``meta`` (foreground classes, border class,
    canonical diameter), mapped back by nearest neighbour, outlines redrawn and uncertain objects
    dropped where the options ask for it, then numbered 1..n per slice
    (:func:`~unet_core.instances.close_gaps`). No network pass: changing only the post-processing
    (``instance_options``) of a result calls this alone."""
    options = (instance_options or InstanceOptions()).resolved(meta.diameter, seg.look)

    def one(s: int) -> np.ndarray:
        work = instances(seg.work_labels[s], meta.foreground_classes, options,
                         expected_diameter=meta.diameter, border_class=meta.border_class)
        ids = rescale_labels(work, shape)
        if seg.work_foreground is not None:  # None only for a Segmentation made by hand
            if options.outline_threshold:
                ids = refine_outlines(ids, seg.work_foreground[s], options.outline_threshold)
            if options.min_object_probability:
                ids = drop_uncertain(ids, seg.work_foreground[s], options.min_object_probability)
        return close_gaps(ids)

    if seg.work_labels.shape[0] == 1:
        return one(0)[None]  # a single image (a whole slide, say) is not copied into a stack
    ids = np.empty((seg.work_labels.shape[0], *shape), dtype=np.int32)  # slice by slice: no stacked copy
    for s in range(ids.shape[0]):
        ids[s] = one(s)
    return ids


def _segment_at(
    data: np.ndarray,
    factor: float,
    predictor: Predictor,
    options: InferenceOptions,
    stretch: Stretch,
    progress: Progress | None,
) -> Segmentation:
    """Overlap-tile segmentation of ``data`` (Z, H, W, C) rescaled by ``factor`` (labels and
    probabilities at that scale)."""
    meta = predictor.meta
    geometry = meta.geometry
    notes: list[str] = []
    z = data.shape[0]
    height, width = scaled_shape(data.shape[1:3], factor)
    if options.tile is None:
        best, batch = auto_tile(predictor)
        tile = (balanced_tile(height, best, geometry), balanced_tile(width, best, geometry))
    else:
        edge, note = resolve_tile(options.tile, geometry)
        tile, batch = (edge, edge), 1
        if note:
            notes.append(note)
    if options.batch is not None:
        batch = options.batch
    tiles = plan_tiles((height, width), tile, geometry)
    labels = np.zeros((z, height, width), dtype=np.uint8)
    probs = _allocate_probs(options, (z, meta.unet.n_classes, height, width)) if options.keep_probs else None
    foreground = np.zeros((z, height, width), dtype=np.uint8)
    total = z * len(tiles)
    done = 0
    for s in range(z):
        source = WorkPlane(data[s], (height, width))  # each tile rescales its own window
        release = s == z - 1 and z * height * width >= RELEASE_MIN_PIXELS
        for group, outputs in run_tiles(source, tiles, predictor, stretch, batch, options.tta, release):
            for t, out in zip(group, outputs):
                stitch(labels[s], t, class_map(out))
                if probs is not None:
                    stitch(probs[s], t, out)
                stitch(foreground[s], t, foreground_u8(out, meta.foreground_classes))
            done += len(group)
            if progress:
                progress(done, total)
    return Segmentation(labels, probs, stretch, tile, batch, notes, factor=factor, work_foreground=foreground)


def class_map(probs: np.ndarray) -> np.ndarray:
    """The most probable class of each pixel of ``(K, H, W)`` probabilities, uint8; ties go to the
    lower class, as with ``argmax``. Two classes are one comparison: 4x faster than ``argmax`` over
    the class axis, which was 3 % of an int8 model's segmentation."""
    if probs.shape[0] == 2:
        return (probs[1] > probs[0]).view(np.uint8)
    return probs.argmax(axis=0).astype(np.uint8)


def _allocate_probs(options: InferenceOptions, shape: tuple[int, ...]) -> np.ndarray:
    dtype = np.dtype(options.probs_dtype)
    if int(np.prod(shape)) * dtype.itemsize <= PROBS_IN_MEMORY_LIMIT:
        return np.zeros(shape, dtype=dtype)
    fd, path = tempfile.mkstemp(prefix="unet_probs_", suffix=".dat")
    os.close(fd)
    arr = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
    os.unlink(path)  # the mapping keeps the data alive; nothing is left behind on exit
    return arr


def run_tiles(
    source: WorkPlane,
    tiles: list[Tile],
    predictor: Predictor,
    stretch: Stretch,
    batch: int,
    tta: bool,
    release: bool,
) -> Iterator[tuple[list[Tile], np.ndarray]]:
    """Yield (tiles, probabilities) per batch; the next batch is prepared while the net runs.

    ``release``: let the runtime return its working memory after the last batch.
    """
    margin = predictor.meta.geometry.margin
    channels = predictor.meta.unet.in_channels
    groups = list(_batches(tiles, batch))

    def prepare(group: list[Tile]) -> np.ndarray:
        x = np.stack([to_channels(source.tile_input(t, margin), channels) for t in group])
        return stretch(x).transpose(0, 3, 1, 2)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, groups[0]) if groups else None
        for i, group in enumerate(groups):
            x = pending.result()
            last = i + 1 == len(groups)
            if not last:
                pending = pool.submit(prepare, groups[i + 1])
            free = release and last
            probs = predict_tta(predictor, x, free) if tta else predictor.predict_batch(x, release=free)
            yield group, _output_crop(probs, group[0])


def _output_crop(probs: np.ndarray, tile: Tile) -> np.ndarray:
    """The tile's own pixels of a batch result: a "same"-padded net returns its whole input, context
    included, which is cut off here (a "valid" net's output is the tile already)."""
    dy, dx = (probs.shape[-2] - tile.h) // 2, (probs.shape[-1] - tile.w) // 2
    return probs[..., dy:dy + tile.h, dx:dx + tile.w] if dy or dx else probs


def _batches(tiles: list[Tile], batch: int) -> Iterator[list[Tile]]:
    """Consecutive tiles of equal shape, at most ``batch`` at a time (a batch needs one shape)."""
    group: list[Tile] = []
    for t in tiles:
        if group and (len(group) == batch or (t.h, t.w) != (group[0].h, group[0].w)):
            yield group
            group = []
        group.append(t)
    if group:
        yield group


def predict_tta(predictor: Predictor, x: np.ndarray, release: bool = False) -> np.ndarray:
    """Probabilities averaged over the 8 dihedral transforms of each tile (``release``: see
    :meth:`~unet_core.runtime.Predictor.predict_batch`).

    Valid input tiles have even sizes at every pooling level, so a flipped tile pools the same
    pixel pairs as the original: the average stays seamless across tiles.
    """
    total = None
    for k in range(4):
        for flip in (False, True):
            t = np.rot90(x, k, axes=(2, 3))
            if flip:
                t = t[..., ::-1]
            out = predictor.predict_batch(np.ascontiguousarray(t), release=release and k == 3 and flip)
            if flip:
                out = out[..., ::-1]
            out = np.rot90(out, -k, axes=(2, 3))
            total = out.astype(np.float32) if total is None else total + out
    return total / 8.0


# --------------------------------------------------------------------------- automatic tile size

# Output tile edges the tuner tries (they are rounded to valid sizes of the model's geometry; those
# over the memory budget are skipped). The larger a tile, the smaller the share of its mirrored
# context: an int8 model, whose speed per operation hardly depends on the tile, gains up to 1540.
TILE_CANDIDATES = (196, 324, 388, 516, 708, 900, 1028, 1284, 1540)
# Timed runs per candidate (the fastest counts): one run alone varied by 10 % on a shared
# machine, enough to pick a smaller tile than the fastest.
TUNE_REPEATS = 2


def tile_memory_bytes(tile: int, batch: int, width: int, geometry: Geometry) -> int:
    """Peak activation memory of one network call: ~5.5 float32 feature maps of the first level.

    The first level dominates (width channels at full resolution); skips of all levels add about
    as much again as one first-level map, and a convolution holds input and output at once.
    Measured with ONNX Runtime's CPU arena, width 64: 2.0 GB above the libraries at a 1028 px
    tile (1212 px input), i.e. 5.3 maps.
    """
    side = geometry.input_size(tile)
    return int(5.5 * 4 * batch * side * side * width)


def memory_budget(device: str) -> int:
    """Bytes the predictor's activations may use: a share of free RAM (CPU) or of the GPU's free
    memory (half of it: ONNX Runtime's arena and the CUDA context take their own; 8 GB when the
    driver does not say).

    2 GB on the CPU admits a 1028 px tile of the paper net; a whole 8192 x 8192 run at that tile
    (image, labels, the tile's activations, then instances once they are released) peaked at
    2.66 GB of RSS.
    """
    if device == "cuda":
        free = cuda_free_memory()
        return free // 2 if free else 8 << 30
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        available = info.get("MemAvailable", 8 << 30)
    except OSError:
        available = 8 << 30
    return min(2 << 30, int(available * 0.4))


# One measurement at a time in this process: a second caller (another browser session of the app)
# waits for the first's result instead of measuring again beside it.
_TUNE_LOCK = threading.Lock()


def _tile_key(predictor: Predictor) -> str:
    return f"{predictor.fingerprint}:{predictor.device_name}"


def _cached_tile(predictor: Predictor, cache_file: Path) -> tuple[int, int] | None:
    meta = predictor.meta
    if meta.default_tile:
        return meta.geometry.floor_output(meta.default_tile), 1
    entry = _read_json(cache_file).get(_tile_key(predictor))
    return (int(entry["tile"]), int(entry["batch"])) if entry else None


def auto_tile(predictor: Predictor) -> tuple[int, int]:
    """The fastest (tile, batch) for this model on this device, measured once and cached.

    Deterministic for a given model and device: the first call measures each candidate that fits
    the memory budget (about 5-20 s on a CPU) and stores the winner in ``autotile.json`` of
    :func:`cache_dir`; later calls read it back.
    """
    cache_file = cache_dir() / "autotile.json"
    found = _cached_tile(predictor, cache_file)
    if found:
        return found
    with _TUNE_LOCK:
        found = _cached_tile(predictor, cache_file)  # measured by whoever held the lock before us
        if found:
            return found
        log.info("measuring the fastest tile size for %s on %s (once)", predictor.meta.name, predictor.device_name)
        tile, batch, timings = measure_tiles(predictor)
        cache = _read_json(cache_file)
        cache[_tile_key(predictor)] = {"tile": tile, "batch": batch, "ms_per_mpx": timings,
                                       "measured": time.strftime("%Y-%m-%d")}
        write_json(cache_file, cache, indent=1)
    return tile, batch


def tile_is_measured(predictor: Predictor) -> bool:
    """Whether :func:`auto_tile` answers at once for this model and device (declared or cached), so
    that a caller can say beforehand that the one-time measurement is about to run."""
    return _cached_tile(predictor, cache_dir() / "autotile.json") is not None


def estimate_seconds(predictor: Predictor, pixels: int, options: InferenceOptions | None = None) -> float | None:
    """About how long segmenting ``pixels`` input pixels (all slices together) takes on this
    device, from the tile measurement of :func:`auto_tile`; None before it ran.

    The work counted: one network pass over the pixels at the chosen tile size (8 with test-time
    augmentation) plus, for an automatic diameter, the scale search's passes over its window. The
    factor an estimated diameter rescales by is not known beforehand, so images whose objects are
    far larger or smaller than the model's take less or more; treat the figure as an order of size.
    """
    options = options or InferenceOptions()
    entry = _read_json(cache_dir() / "autotile.json").get(_tile_key(predictor))
    timings: dict[int, float] = {}  # tile -> ms per Mpx of output at its fastest batch
    for key, ms in (entry or {}).get("ms_per_mpx", {}).items():  # "TILExBATCH"
        tile = int(str(key).split("x")[0])
        timings[tile] = min(float(ms), timings.get(tile, float("inf")))
    if not timings:
        return None
    geometry = predictor.meta.geometry
    tile = geometry.floor_output(options.tile) if options.tile else int(entry["tile"])
    ms_per_mpx = timings.get(tile) or timings.get(min(timings, key=lambda t: abs(t - tile)))
    work = pixels * (8 if options.tta_for(pixels) else 1)
    if predictor.meta.diameter and options.diameter.mode == "auto":
        work += SEARCH_PASSES * SEARCH_EDGE**2
    return work / 1e6 * ms_per_mpx / 1000


def measure_tiles(predictor: Predictor) -> tuple[int, int, dict[str, float]]:
    """Time each candidate tile (and batch, on GPU) that fits memory; return the best per pixel."""
    geometry = predictor.meta.geometry
    width = predictor.meta.unet.width
    budget = memory_budget(predictor.device)
    batches = (1, 2, 4, 8) if predictor.device == "cuda" else (1,)
    rng = np.random.default_rng(0)
    timings: dict[str, float] = {}
    best = (geometry.floor_output(388), 1)
    best_rate = float("inf")
    for candidate in sorted({geometry.floor_output(t) for t in TILE_CANDIDATES}):
        for batch in batches:
            if tile_memory_bytes(candidate, batch, width, geometry) > budget:
                continue
            side = geometry.input_size(candidate)
            x = rng.random((batch, predictor.meta.unet.in_channels, side, side), dtype=np.float32)
            try:
                predictor.predict_batch(x)  # warm-up: allocations and kernel selection
            except Exception as exc:  # a GPU (or an arena) that cannot hold it: this size is out, smaller ones stay
                if not _out_of_memory(exc):
                    raise
                log.info("tile %d x %d does not fit on %s (%s)", candidate, batch, predictor.device_name, exc)
                continue
            seconds = min(_seconds(predictor.predict_batch, x) for _ in range(TUNE_REPEATS))
            ms_per_mpx = seconds * 1e3 / (batch * candidate * candidate / 1e6)
            timings[f"{candidate}x{batch}"] = round(ms_per_mpx, 1)
            if ms_per_mpx < best_rate:
                best, best_rate = (candidate, batch), ms_per_mpx
    return best[0], best[1], timings


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that memory ran out (numpy, ONNX Runtime's CPU arena, CUDA, cuDNN)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(k in text for k in ("out of memory", "failed to allocate", "bad_alloc", "cudnn_status_alloc"))


def _seconds(fn: Callable[[np.ndarray], object], x: np.ndarray) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


