"""From class labels to objects: the paper's way, connected components of the foreground class.

The border-weighted loss teaches the network to keep a background gap between touching cells, so
plain connected components separate them. Components use 4-connectivity: a gap that is one
pixel wide and runs diagonally still separates two cells.

A model with an outline class (``ModelMeta.border_class``, ``train --border-width``) marks each
object's rim as well: objects are then the components of the interior (the foreground without the
rim), grown back over the rim they reach through the foreground (a flooding watershed from the
interiors); foreground that no interior reaches, a nucleus too small for an interior, is an object
of its own. Two touching nuclei are split wherever the network sees their rims meet, even where it
sees no gap between them.

That gap is background the truth does not have: a model trained with separation lines
(:func:`unet_core.weights.separate_touching`) predicts every object about one pixel too small all
round. ``expand`` gives it back: each object grows into the background by that many pixels, a
pixel going to the nearest object, so two objects never merge
(:func:`skimage.segmentation.expand_labels`). Specks far smaller than the expected object are
removed first (``min_size``).

Objects that are several touching nuclei merged (the network saw no gap between them) are cut
apart (``split_merged``, :func:`split_merged`): an object much larger than the image's typical
object is split along the watershed of its distance transform where that has two or more clear
maxima (one per nucleus), the classical way to separate touching round objects, applied only where
the size says the network merged some.

Last, objects the network is unsure of are dropped (``min_object_probability``): those whose mean
foreground probability, on the input grid and over their final pixels, is under a threshold. A
false object (a dark fold of cytoplasm in bright-field, debris) is pale to the network, a nucleus is
not: the class map's 0.5 cuts both out alike, their mean probability tells them apart.

Defaults (``None`` = automatic) for a model with a canonical object diameter ``D`` (at the
working scale, where objects are about ``D`` across): ``min_size`` = :data:`MIN_SIZE_FRACTION` of
the area of a disc of diameter ``D``, ``expand`` = :data:`DEFAULT_EXPAND`, outlines redrawn at
:data:`DEFAULT_OUTLINE_THRESHOLD`, ``min_object_probability`` =
:data:`DEFAULT_MIN_OBJECT_PROBABILITY` of the image's look (fluorescence, bright-field or stained:
:mod:`unet_core.look`), merged objects split. For a model without one: no size filter, no
expansion, no outline step, no probability filter, no splitting. Each was chosen by measurement on images the model did not
train on (the size filter, a tenth of the disc area: DSB mean AP 0.452 against 0.424 without one,
0.447 at 0.05 and 0.440 at 0.2; the others: at their constants below; see the model card).
"""

from __future__ import annotations

import csv
import io as _io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import expand_labels, watershed

from .io import gray_plane
from .scale import resize_at

#: Automatic minimum object size: this fraction of the area of a disc of the canonical diameter.
MIN_SIZE_FRACTION = 0.1
#: Automatic outline threshold: the foreground probability above which an object's outline is
#: redrawn on the input grid (:func:`refine_outlines`), for a model with a canonical diameter.
#: Measured with the nuclei model v4 on 176 DSB 2018 images it never saw (test-time augmentation
#: off): DSB mean AP, random split 0.508 (none) / 0.519 (0.5) / **0.523 (0.4)** / 0.511 (0.3);
#: held-out acquisition groups 0.295 / 0.300 / **0.311** / 0.304.
DEFAULT_OUTLINE_THRESHOLD = 0.4

#: Automatic boundary restoration in pixels. Measured on 40 validation images of DSB 2018 with the
#: shipped scale-aware nuclei model (objects found at the canonical scale, mapped back by nearest
#: neighbour): growing by 1 px lowered the DSB mean AP from 0.452 to 0.392 and 2 px to 0.292, so the
#: default is none; ``expand`` stays an option for models whose objects come out too small.
DEFAULT_EXPAND = 0

#: Automatic object filter, by the image's look (:mod:`unet_core.look`): objects whose mean foreground
#: probability is under this are dropped (:func:`drop_uncertain`), for a model with a canonical
#: diameter. Measured with the nuclei recipe (v4c) on DSB 2018 images it never saw, test-time
#: augmentation off, DSB mean AP (foreground IoU) for none / 0.6 / 0.65 / 0.7 / 0.75 / 0.8:
#: fluorescence, 27 images of held-out acquisition groups, 0.415 (0.756) / **0.420 (0.751)** /
#: 0.420 (0.738) / 0.411 (0.706) / 0.379 (0.636) / 0.323 (0.509): dim real nuclei are pale too;
#: bright-field, the 16 images of the one such experiment, 0.185 (0.405) / 0.269 (0.479) / 0.328
#: (0.566) / 0.388 (0.677) / **0.419 (0.739)** / 0.413 (0.713): dark cytoplasm gives many pale
#: false nuclei (chosen on the images it is measured on: DSB 2018 has no other bright-field
#: experiment); stained, 24 images of the random split, 0.282 (0.711) / 0.292 (0.706) / **0.299
#: (0.691)** / 0.296 (0.659) / 0.288 (0.563) / 0.243 (0.405). An image of unknown look (no object
#: or no background) takes the fluorescence value.
DEFAULT_MIN_OBJECT_PROBABILITY = {"fluorescence": 0.6, "bright-field": 0.75, "stained": 0.65}

#: Splitting merged objects (:func:`split_merged`): an object of at least ``SPLIT_AREA`` times the
#: median object area of its image is a candidate; it is cut between the maxima of its (smoothed by
#: ``SPLIT_SMOOTHING`` px) distance transform that stand ``SPLIT_DEPTH`` times the median object
#: radius above their surroundings, and the cut is kept only if every piece has at least
#: ``SPLIT_MIN_PART`` of the median area. Chosen with the nuclei recipe (v4c) on the 133 random-split
#: images it never saw and confirmed on the 43 images of held-out acquisition groups (default
#: options otherwise, TTA automatic), DSB mean AP from 0.544 to 0.560 and from 0.440 to 0.465,
#: merged groups per image 2.6 -> 1.7 and 5.8 -> 4.3 (see the model card for the sweep). Splitting
#: every object this way instead lowered the AP (the card's "tried and rejected").
SPLIT_AREA = 1.25
SPLIT_DEPTH = 0.15
SPLIT_MIN_PART = 0.3
SPLIT_SMOOTHING = 1.0


@dataclass(frozen=True)
class InstanceOptions:
    """Post-processing of the foreground mask.

    Attributes:
        min_size: objects with fewer pixels are removed (0 keeps all; None = automatic, see the
            module docstring).
        fill_holes: fill background enclosed by a single object.
        drop_border: remove objects touching the image border (incomplete cells).
        expand: grow every object by this many pixels into the background without merging
            objects (0 = off; None = automatic).
        outline_threshold: redraw each object's outline on the input grid where the foreground
            probability exceeds this (:func:`refine_outlines`; 0 = off, the outline of the working
            scale's class map; None = automatic: :data:`DEFAULT_OUTLINE_THRESHOLD` for a model
            with a canonical diameter, else off).
        min_object_probability: drop objects whose mean foreground probability (input grid, over
            their final pixels) is under this (:func:`drop_uncertain`; 0 = off, keep every object;
            None = automatic: :data:`DEFAULT_MIN_OBJECT_PROBABILITY` of the image's look for a model
            with a canonical diameter, else off).
        split_merged: cut apart objects that are several touching nuclei merged
            (:func:`split_merged`; None = automatic: on for a model with a canonical diameter, else off).
    """

    min_size: int | None = None
    fill_holes: bool = False
    drop_border: bool = False
    expand: int | None = None
    outline_threshold: float | None = None
    min_object_probability: float | None = None
    split_merged: bool | None = None

    def resolved(self, expected_diameter: float | None, look: str | None = None) -> InstanceOptions:
        """The options with automatic values filled in for a model of this canonical diameter and
        an image of this ``look`` (:meth:`unet_core.look.LookSums.look`; None: not known, taken as
        fluorescence)."""
        min_size, expand, outline = self.min_size, self.expand, self.outline_threshold
        certain, split = self.min_object_probability, self.split_merged
        if split is None:
            split = bool(expected_diameter)
        if min_size is None:
            min_size = round(MIN_SIZE_FRACTION * math.pi * (expected_diameter / 2) ** 2) if expected_diameter else 0
        if expand is None:
            expand = DEFAULT_EXPAND if expected_diameter else 0
        if outline is None:
            outline = DEFAULT_OUTLINE_THRESHOLD if expected_diameter else 0.0
        if certain is None:
            certain = DEFAULT_MIN_OBJECT_PROBABILITY[look or "fluorescence"] if expected_diameter else 0.0
        if min_size < 0 or expand < 0:
            raise ValueError(f"min_size and expand must be >= 0, not {min_size} and {expand}")
        for name, p in (("outline threshold", outline), ("minimum object probability", certain)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"the {name} is a probability in [0, 1), not {p}")
        return InstanceOptions(int(min_size), self.fill_holes, self.drop_border, int(expand), float(outline),
                               float(certain), split)


def instances(
    labels: np.ndarray,
    foreground_classes: list[int] | tuple[int, ...] = (1,),
    options: InstanceOptions | None = None,
    expected_diameter: float | None = None,
    border_class: int | None = None,
) -> np.ndarray:
    """Instance ids (int32, 0 = background, 1..n consecutive) of a 2-D class label image.

    Order: components (of the interiors, grown over the rims, with ``border_class``), hole
    filling, size filter, boundary restoration (``expand``), border objects, renumbering, merged
    objects split (their pieces numbered after the others).
    ``expected_diameter``: the model's canonical diameter, for the automatic options.
    """
    options = (options or InstanceOptions()).resolved(expected_diameter)
    mask = np.isin(labels, foreground_classes)
    if border_class is None:
        ids, n = ndi.label(mask, output=np.int32)
    else:
        ids, n = _grown_interiors(mask, mask & (labels != border_class))
    if n == 0:
        return ids
    if options.fill_holes:
        ids = _fill_holes(ids)
    keep = np.ones(n + 1, dtype=bool)
    keep[0] = False
    if options.min_size > 0:
        keep &= object_areas(ids, n) >= options.min_size
    if options.expand > 0:
        small = np.flatnonzero(~keep[1:]) + 1
        if small.size:  # removed before growing: a speck must not claim its neighbour's pixels
            ids[np.isin(ids, small)] = 0
        ids = expand_labels(ids, options.expand).astype(np.int32, copy=False)
    if options.drop_border:
        edge = np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]])
        keep[np.unique(edge)] = False
    # Renumber the kept objects 1..m in scan order so ids are consecutive: in place and by bands of
    # rows, since the id image is the largest array here (np.take over all of it would cast the ids
    # to int64 and buffer its output: 12 bytes more per pixel).
    new_ids = np.zeros(n + 1, dtype=np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    for rows in row_bands(ids):
        ids[rows] = new_ids[ids[rows]]
    if options.split_merged:
        ids = split_merged(ids)
    return ids


def split_merged(ids: np.ndarray) -> np.ndarray:
    """Objects that are several touching nuclei merged, cut apart, in place on ``ids`` (2-D, 1..n
    consecutive; new pieces numbered n+1, n+2, ... in the order of the objects they come from).

    Where the network sees no gap between two nuclei, connected components join them, and the
    object is then larger than a nucleus and has one maximum of its distance transform per nucleus.
    So only objects of at least :data:`SPLIT_AREA` times the image's median object area are
    looked at (:func:`split_candidates`: most objects are single nuclei, so the median is one
    nucleus's area, whatever the scale); each is cut by :func:`merged_pieces`.
    """
    n = int(ids.max(initial=0))
    median, candidate = split_candidates(object_areas(ids, n))
    if not candidate.any():
        return ids
    boxes = ndi.find_objects(ids)
    next_id = n + 1
    for label in np.flatnonzero(candidate):
        box = boxes[label - 1]
        pieces = merged_pieces(ids[box] == label, median)
        number_pieces(ids[box], pieces, next_id)
        next_id += int(pieces.max()) - 1
    return ids


def number_pieces(window: np.ndarray, pieces: np.ndarray, first_id: int) -> None:
    """The new ids of an object's pieces (:func:`merged_pieces`) written into ``window`` of the id
    image, in place: piece 1 keeps the object's id, piece k gets ``first_id + k - 2``. ``window``
    and ``pieces`` cover the same pixels (a Dask chunk passes the part of the pieces it holds)."""
    moved = pieces > 1
    window[moved] = first_id + pieces[moved] - 2


def split_candidates(areas: np.ndarray) -> tuple[float, np.ndarray]:
    """(the median object area, which ids 0..n to look at) for :func:`split_merged`, from the pixel
    count of each id (``areas[0]``: background; ids of no pixels are not objects): the one rule of
    the single process and the Dask blocks. Nothing is a candidate in an image of under 2 objects."""
    present = areas[1:] > 0
    candidate = np.zeros(len(areas), dtype=bool)
    if present.sum() < 2:
        return 0.0, candidate
    median = float(np.median(areas[1:][present]))
    candidate[1:] = present & (areas[1:] >= SPLIT_AREA * median)
    return median, candidate


def merged_pieces(obj: np.ndarray, median_area: float) -> np.ndarray:
    """The pieces (1..k, 0 outside) of one object's mask (its bounding box) by :func:`split_merged`'s
    rule: the watershed of its distance transform between maxima that stand :data:`SPLIT_DEPTH`
    median radii above their surroundings (h-maxima: a waist, not a dent in the outline), kept only
    when every piece has :data:`SPLIT_MIN_PART` of the median area; all 1 when it stays whole."""
    # Zero padding: the bounding box's edge is the object's outline, which the transform must see.
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(np.pad(obj, 1)), SPLIT_SMOOTHING)[1:-1, 1:-1]
    peaks = h_maxima(dist, SPLIT_DEPTH * math.sqrt(median_area / math.pi)) & obj
    markers, found = ndi.label(peaks)
    if found < 2:
        return obj.astype(np.int32)
    pieces = watershed(-dist, markers, mask=obj)
    if np.bincount(pieces.ravel(), minlength=found + 1)[1:].min() < SPLIT_MIN_PART * median_area:
        return obj.astype(np.int32)
    return pieces.astype(np.int32, copy=False)


def object_areas(ids: np.ndarray, n: int) -> np.ndarray:
    """Pixel count of each id 0..``n`` of a 2-D id image, counted over bands of rows: ``np.bincount``
    casts int32 ids to int64, which for a whole slide (20000^2 px) would be a 3.2 GB temporary."""
    areas = np.zeros(n + 1, dtype=np.int64)
    for rows in row_bands(ids):
        areas += np.bincount(ids[rows].ravel(), minlength=n + 1)
    return areas


def close_gaps(ids: np.ndarray) -> np.ndarray:
    """The objects of a 2-D id image renumbered 1..n in the order of their ids, in place.

    Objects removed after numbering (an outline redrawn away, an uncertain object dropped) would
    leave their numbers unused; users of Fiji, napari and CellProfiler read the largest id of a
    label image as the object count, so no number is left unused.
    """
    n = int(ids.max(initial=0))
    if n == 0:
        return ids
    present = object_areas(ids, n)[1:] > 0
    if present.all():
        return ids
    lookup = np.zeros(n + 1, dtype=ids.dtype)
    lookup[1:][present] = np.arange(1, int(present.sum()) + 1, dtype=ids.dtype)
    for rows in row_bands(ids):
        ids[rows] = lookup[ids[rows]]
    return ids


def row_bands(image: np.ndarray) -> Iterator[slice]:
    """Bands of rows of about :data:`BAND_PIXELS` pixels covering a 2-D ``image``: whole-image
    work on ids goes band by band so that its int64 temporaries stay small."""
    band = max(1, BAND_PIXELS // max(image.shape[1], 1))
    for y0 in range(0, image.shape[0], band):
        yield slice(y0, y0 + band)


def foreground_u8(probs: np.ndarray, foreground_classes: Sequence[int]) -> np.ndarray:
    """The foreground probability of class probabilities (K, h, w) in 1/255 steps (uint8): what
    :func:`refine_outlines` needs, at a byte per pixel."""
    p = probs[list(foreground_classes)].sum(axis=0)
    return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)


def outline_reach(work_shape: tuple[int, int], shape: tuple[int, int]) -> int:
    """How far (input pixels) :func:`refine_outlines` may move an outline: one working-scale pixel."""
    return max(1, math.ceil(max(shape[0] / work_shape[0], shape[1] / work_shape[1]) - 1e-9))


def foreground_at(work_foreground: np.ndarray, shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
                  work_origin: tuple[int, int] = (0, 0), work_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The foreground map (uint8, working scale) at input-grid pixels ``rows`` x ``cols`` (float32):
    linearly resampled (:func:`~unet_core.scale.resize_at`, window-exact), the map itself when the
    working scale is the input's.

    Args:
        work_foreground: the map, or the window of it at ``work_origin`` that the pixels need.
        shape: the whole input grid's (H, W).
        rows, cols: input-grid indices.
        work_origin, work_shape: where ``work_foreground`` lies in the whole map, and its shape
            (default: it is the whole map).
    """
    work_shape = tuple(work_shape or work_foreground.shape)
    if work_shape == tuple(shape):
        return work_foreground[np.ix_(rows - work_origin[0], cols - work_origin[1])].astype(np.float32)
    return resize_at(work_foreground, shape, rows, cols, work_origin, work_shape)


def refine_outlines(ids: np.ndarray, work_foreground: np.ndarray, threshold: float,
                    origin: tuple[int, int] = (0, 0), shape: tuple[int, int] | None = None,
                    work_origin: tuple[int, int] = (0, 0), work_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Each object's outline redrawn on the input grid, in place on ``ids``.

    Objects are found at the working scale and mapped to the input grid by nearest neighbour, so
    their outlines fall on working-scale pixels (blocky on enlarged images), and the class map
    at a probability of 0.5 leaves them a little small (the training's separation lines). Here each
    object grows by up to :func:`outline_reach` input pixels into pixels whose foreground
    probability (resampled linearly) exceeds ``threshold``, the nearest object winning (no two
    ever merge: :func:`skimage.segmentation.expand_labels`), and drops its pixels below it. No
    object appears; one that lies entirely below the threshold vanishes, its number left unused
    (objects keep their numbers, so a Dask region needs no global renumbering; counts and tables
    come from the objects present).

    Args:
        ids: (h, w) int32 instance ids on the input grid: the whole image, or the window of it at
            ``origin`` (a Dask region with its margin).
        work_foreground: uint8 foreground probability at the working scale
            (:func:`foreground_u8`): the whole map, or the window of it at ``work_origin`` that
            :func:`foreground_at` needs for ``ids``' pixels.
        threshold: probability in (0, 1).
        origin, shape: where ``ids`` lies in the input grid, and the grid's whole (H, W) (default:
            ``ids`` is the whole image).
        work_origin, work_shape: where ``work_foreground`` lies in the whole map, and its shape.

    Returns:
        ``ids``. On a window, pixels at least :func:`outline_reach` from its edges (or on the
        image's own edge) equal the whole image's result: its callers read a margin that wide.
    """
    shape = tuple(shape or ids.shape)
    work_shape = tuple(work_shape or work_foreground.shape)
    reach = outline_reach(work_shape, shape)
    level = np.float32(threshold * 255.0)
    cols = np.arange(origin[1], origin[1] + ids.shape[1])
    above = np.empty((0, ids.shape[1]), ids.dtype)  # the unrefined rows just above the current band
    for rows in row_bands(ids):
        start, stop = rows.start, min(rows.stop, ids.shape[0])
        band = ids[start:stop].copy()
        context = np.concatenate([above, band, ids[stop : stop + reach]])  # rows below: not refined yet
        grown = expand_labels(context, reach)[len(above) : len(above) + stop - start]
        above = np.concatenate([above, band])[-reach:]
        here = np.arange(origin[0] + start, origin[0] + stop)
        fg = foreground_at(work_foreground, shape, here, cols, work_origin, work_shape) > level
        ids[start:stop] = np.where(fg, grown, 0)
    return ids


def foreground_sums(ids: np.ndarray, work_foreground: np.ndarray, origin: tuple[int, int] = (0, 0),
                    shape: tuple[int, int] | None = None, work_origin: tuple[int, int] = (0, 0),
                    work_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Per id 0..``ids.max()``: the sum over its pixels of the foreground probability on the input
    grid (:func:`foreground_at`), each pixel's rounded to a 1/255 step (int64).

    Integers, so that the sums of the parts of an image (Dask regions) add up to the whole image's
    exactly, in any order. Arguments as for :func:`refine_outlines`.
    """
    shape = tuple(shape or ids.shape)
    n = int(ids.max(initial=0))
    sums = np.zeros(n + 1, dtype=np.int64)
    cols = np.arange(origin[1], origin[1] + ids.shape[1])
    for rows in row_bands(ids):
        here = np.arange(origin[0] + rows.start, origin[0] + min(rows.stop, ids.shape[0]))
        fg = np.rint(foreground_at(work_foreground, shape, here, cols, work_origin, work_shape)).astype(np.int64)
        sums += np.bincount(ids[rows].ravel(), fg.ravel(), minlength=n + 1).round().astype(np.int64)
    return sums


def uncertain(area: np.ndarray, foreground_sum: np.ndarray, threshold: float) -> np.ndarray:
    """Which objects (by their pixel count and :func:`foreground_sums`) have a mean foreground
    probability under ``threshold``: the one rule of :func:`drop_uncertain` and the Dask path."""
    return (area > 0) & (foreground_sum < threshold * 255.0 * area)


def drop_uncertain(ids: np.ndarray, work_foreground: np.ndarray, threshold: float) -> np.ndarray:
    """Objects whose mean foreground probability is under ``threshold`` removed, in place on
    ``ids`` (the whole input grid; ``work_foreground`` the whole working-scale map, as for
    :func:`refine_outlines`). Their numbers are left unused, as :func:`refine_outlines` leaves them,
    until :func:`close_gaps`."""
    n = int(ids.max(initial=0))
    if n == 0:
        return ids
    pale = uncertain(object_areas(ids, n), foreground_sums(ids, work_foreground), threshold)
    if pale.any():
        keep = np.arange(n + 1, dtype=ids.dtype) * ~pale
        for rows in row_bands(ids):
            ids[rows] = keep[ids[rows]]
    return ids


def _grown_interiors(mask: np.ndarray, interior: np.ndarray) -> tuple[np.ndarray, int]:
    """Components of ``interior`` flooded over the rest of ``mask`` (each rim pixel goes to the
    interior it reaches first through the mask), then the unreached components of ``mask``."""
    seeds, n = ndi.label(interior, output=np.int32)
    ids = watershed(np.zeros(mask.shape, np.uint8), seeds, mask=mask).astype(np.int32, copy=False) if n else seeds
    rest = mask & (ids == 0)
    extra, m = ndi.label(rest, output=np.int32)
    if m:
        ids[rest] = extra[rest] + n
    return ids, n + m


def _fill_holes(ids: np.ndarray) -> np.ndarray:
    """Fill, per object, the background it encloses (inside its bounding box)."""
    out = ids.copy()
    for i, sl in enumerate(ndi.find_objects(ids), start=1):
        if sl is None:
            continue
        obj = ids[sl] == i
        filled = ndi.binary_fill_holes(obj)
        holes = filled & ~obj & (ids[sl] == 0)
        out[sl][holes] = i
    return out


OBJECT_COLUMNS = (
    "id", "area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x",
    "mean_intensity",
)
#: Columns in micrometres, added after :data:`OBJECT_COLUMNS` when the pixel size is known (last,
#: so that scripts reading the pixel columns by position keep working).
PHYSICAL_COLUMNS = ("area_um2", "centroid_y_um", "centroid_x_um")


# Pixels per band of rows that whole-image work on ids does at once (object_table's temporaries
# are ~5 x 8 bytes each).
BAND_PIXELS = 1 << 22


@dataclass
class ObjectSums:
    """The sums behind :func:`object_table`, per object id (row ``k`` of each array is ``ids[k]``):
    what image parts measured apart (Dask blocks) add up to the whole image's table.

    Attributes:
        ids: the object ids present, ascending.
        area, sum_y, sum_x, sum_i: pixel count and the sums of row, column and intensity.
        min_y, min_x, max_y, max_x: the bounding box (max exclusive), in the image's coordinates.
        sum_p: the sum of the foreground probability in 1/255 steps (:func:`foreground_sums`; 0
            where it was not measured), for :attr:`InstanceOptions.min_object_probability`.
    """

    ids: np.ndarray
    area: np.ndarray
    sum_y: np.ndarray
    sum_x: np.ndarray
    sum_i: np.ndarray
    min_y: np.ndarray
    min_x: np.ndarray
    max_y: np.ndarray
    max_x: np.ndarray
    sum_p: np.ndarray

    @classmethod
    def merged(cls, parts: Sequence[ObjectSums]) -> ObjectSums:
        """The sums of the objects of all ``parts`` together (an id in several parts is one object)."""
        ids = np.unique(np.concatenate([p.ids for p in parts])) if parts else np.zeros(0, np.int64)
        out = cls(ids, *(np.zeros(len(ids)) for _ in range(4)), *(np.zeros(len(ids), np.int64) for _ in range(5)))
        out.min_y[:], out.min_x[:] = np.iinfo(np.int64).max, np.iinfo(np.int64).max
        for p in parts:
            k = np.searchsorted(ids, p.ids)
            for name in ("area", "sum_y", "sum_x", "sum_i", "sum_p"):
                np.add.at(getattr(out, name), k, getattr(p, name))
            for name, combine in (("min_y", np.minimum), ("min_x", np.minimum), ("max_y", np.maximum),
                                  ("max_x", np.maximum)):
                combine.at(getattr(out, name), k, getattr(p, name))
        return out

    def subset(self, rows: np.ndarray) -> ObjectSums:
        """The sums of the objects at ``rows`` (a boolean mask or indexes into :attr:`ids`)."""
        return ObjectSums(*(getattr(self, f.name)[rows] for f in fields(self)))


def object_sums(ids: np.ndarray, intensity: np.ndarray, origin: tuple[int, int] = (0, 0),
                foreground_sum: np.ndarray | None = None) -> ObjectSums:
    """The :class:`ObjectSums` of the objects of ``ids`` (a whole image, or a part of one that
    starts at ``origin``); ``intensity``: the raw pixels, (H, W) or (H, W, C) (RGB as luminance);
    ``foreground_sum``: the :func:`foreground_sums` of ``ids``, when the probability filter needs them.

    Taken with ``np.bincount`` over bands of rows: time O(pixels) however many objects there are,
    memory O(band) however large one object is.
    """
    boxes = ndi.find_objects(ids)
    n, width = len(boxes), ids.shape[1]
    area, sum_y, sum_x, sum_i = (np.zeros(n + 1) for _ in range(4))
    columns = np.arange(origin[1], origin[1] + width, dtype=np.float64)
    for band in row_bands(ids):
        chunk = ids[band].ravel()
        rows = chunk.size // width
        area += np.bincount(chunk, minlength=n + 1)
        row_index = np.arange(origin[0] + band.start, origin[0] + band.start + rows, dtype=np.float64)
        sum_y += np.bincount(chunk, np.repeat(row_index, width), minlength=n + 1)
        sum_x += np.bincount(chunk, np.tile(columns, rows), minlength=n + 1)
        sum_i += np.bincount(chunk, gray_plane(intensity[band]).ravel(), minlength=n + 1)
    present = [i for i, sl in enumerate(boxes, start=1) if sl is not None]
    k = np.array(present, dtype=np.int64)
    box = np.array([[boxes[i - 1][0].start, boxes[i - 1][1].start, boxes[i - 1][0].stop, boxes[i - 1][1].stop]
                    for i in present], dtype=np.int64).reshape(-1, 4)
    box += np.array([origin[0], origin[1], origin[0], origin[1]], dtype=np.int64)
    sum_p = np.zeros(len(k), np.int64) if foreground_sum is None else foreground_sum[k]
    return ObjectSums(k, area[k], sum_y[k], sum_x[k], sum_i[k], box[:, 0], box[:, 1], box[:, 2], box[:, 3], sum_p)


def table_from_sums(sums: ObjectSums, pixel_size: tuple[float, float] | None = None) -> list[dict[str, float]]:
    """The :func:`object_table` rows of ``sums``, one per object, by id."""
    table = [{
        "id": int(sums.ids[k]),
        "area": int(sums.area[k]),
        "centroid_y": round(float(sums.sum_y[k] / sums.area[k]), 3),
        "centroid_x": round(float(sums.sum_x[k] / sums.area[k]), 3),
        "bbox_min_y": int(sums.min_y[k]),
        "bbox_min_x": int(sums.min_x[k]),
        "bbox_max_y": int(sums.max_y[k]),
        "bbox_max_x": int(sums.max_x[k]),
        "mean_intensity": round(float(sums.sum_i[k] / sums.area[k]), 4),
    } for k in range(len(sums.ids))]
    return with_physical_units(table, pixel_size) if pixel_size else table


def object_table(ids: np.ndarray, intensity: np.ndarray,
                 pixel_size: tuple[float, float] | None = None) -> list[dict[str, float]]:
    """Per-object measurements: area, centroid, bounding box (max exclusive), mean intensity.

    ``intensity`` is the raw image, (H, W) or (H, W, C) (RGB measured as luminance); the sums come
    from :func:`object_sums`. Coordinates are in pixels from the top-left corner (x to the right,
    y down, as in Fiji). ``pixel_size``: ``(y, x)`` micrometres per pixel, when known; adds
    :data:`PHYSICAL_COLUMNS` (:func:`with_physical_units`). The ids are those of ``ids``;
    :func:`unet_core.predict.run` numbers the objects of a stack on from slice to slice, so that
    an id is unique in the stack.
    """
    return table_from_sums(object_sums(ids, intensity), pixel_size)


def with_physical_units(rows: list[dict[str, float]], pixel_size: tuple[float, float]) -> list[dict[str, float]]:
    """Copies of :func:`object_table` rows with area (µm²) and centroid (µm) for ``(y, x)``
    micrometres per pixel; the pixel columns are kept. Rows are not changed in place."""
    size_y, size_x = (float(v) for v in pixel_size)
    if not (size_y > 0 and size_x > 0 and math.isfinite(size_y) and math.isfinite(size_x)):
        raise ValueError(f"a pixel size must be positive micrometres, not {pixel_size!r}")
    return [{**row,
             # 6 significant digits: a 0.1 µm pixel gives 0.01 µm² per pixel, and a nucleus ~100 µm².
             "area_um2": float(f"{row['area'] * size_y * size_x:.6g}"),
             "centroid_y_um": round(row["centroid_y"] * size_y, 4),
             "centroid_x_um": round(row["centroid_x"] * size_x, 4)}
            for row in rows]


def objects_csv(rows: list[dict[str, float]], slice_index: int | None = None,
                physical: bool | None = None) -> str:
    """CSV text of :func:`object_table` rows (one image or one slice).

    Args:
        rows: the objects.
        slice_index: the slice's index in its stack (0-based, as in Python); written in a ``slice``
            column counting from 1, as Fiji numbers slices. None: no ``slice`` column.
        physical: write :data:`PHYSICAL_COLUMNS` (the rows must have them); None: when they do.
    """
    if slice_index is not None:
        return stack_objects_csv([rows], physical, first_slice=slice_index)
    return _write_csv([(None, rows)], _csv_columns([rows], physical, stack=False))


def stack_objects_csv(tables: Sequence[list[dict[str, float]]], physical: bool | None = None,
                      first_slice: int = 0) -> str:
    """One CSV for the object tables of a stack: one header, a ``slice`` column counting from 1
    (Fiji's numbering; ``first_slice`` is the 0-based index of ``tables[0]``).

    Object ids are written as they are: :func:`unet_core.predict.run` makes them unique across the
    stack (slice 2 continues where slice 1 stopped), so an id names one object of the stack, as in
    the instances TIFF.
    """
    columns = _csv_columns(tables, physical, stack=True)
    return _write_csv([(first_slice + s + 1, rows) for s, rows in enumerate(tables)], columns)


def _csv_columns(tables: Sequence[list[dict[str, float]]], physical: bool | None, stack: bool) -> tuple[str, ...]:
    if physical is None:  # one header for all slices: µm columns when any row has them
        physical = any("area_um2" in row for rows in tables for row in rows)
    return (("slice",) if stack else ()) + OBJECT_COLUMNS + (PHYSICAL_COLUMNS if physical else ())


def _write_csv(parts: list[tuple[int | None, list[dict[str, float]]]], columns: tuple[str, ...]) -> str:
    buf = _io.StringIO()
    # extrasaction="ignore": µm columns of rows are left out when the header has none (physical=False).
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for number, rows in parts:
        for row in rows:
            writer.writerow(row if number is None else {"slice": number, **row})
    return buf.getvalue()
