"""Looking at training data and models before training: what the Datasets, Weight maps and Models
pages show, computed here so the pages only draw.

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

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..datasets import Dataset, DatasetError, SplitRule
from ..io import ImageReadError, gray_plane
from ..scale import median_diameter
from ..weights import (
    ClassWeights,
    WeightMapParts,
    border_cutoff,
    border_distances,
    border_term,
    class_balance,
    class_weight_values,
)
from . import visualize as viz
from .registry import RUN_MODEL_FILE, ModelEntry, runs_dir
from .uploads import BrowseError

#: Data set statistics read at most this many masks.
MAX_STATS_SAMPLES = 500
#: "Gap" pixels of :func:`weight_summary`: background whose two nearest cells, through it, are
#: at most this many pixels apart (``d1 + d2 <= GAP_WIDTH``).
GAP_WIDTH = 10.0


# --------------------------------------------------------------------------- paths


# --------------------------------------------------------------------------- zip uploads


# --------------------------------------------------------------------------- data sources


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

    :func:`unet_core.studio.visualize.stretch_limits` keeps 8-bit images at 0..255, as viewers do; for
    looking at training data the stretch helps more (dim nuclei in 8-bit files are common).
    """
    return viz.stretch_limits(gray_plane(pixels), percentiles, keep_8bit=False)


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
    values = gray_plane(image)
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


def describe_split(rule: SplitRule, n_items: int, groups: Sequence[str | None] | None = None) -> str:
    """The split in words, e.g. ``every 5th image, starting with the first (1st, 6th): 2 of 8 held
    out for validation, 6 for training`` (``groups``: each sample's acquisition group, needed when
    the rule holds out groups)."""
    val = rule.indices(n_items, "val", groups)
    how = _held_out_words(rule)
    if rule.kind == "every_kth" and val and not rule.groups:
        listed = ", ".join(_ordinal(i + 1) for i in val[:3]) + (", …" if len(val) > 3 else "")
        how = f"{how}, starting with the first ({listed})"
    return f"{how}: {len(val)} of {n_items} held out for validation, {n_items - len(val)} for training"


def _held_out_words(rule: SplitRule) -> str:
    """What ``rule`` holds out: ``every 5th image``, ``the last 5 images``, ``nothing`` (+ groups)."""
    if rule.kind == "every_kth":
        how = "every image" if rule.k == 1 else f"every {_ordinal(rule.k)} image"
    elif rule.kind == "last_n":
        how = f"the last {rule.k} image{'s' if rule.k != 1 else ''}"
    else:
        how = "no image" if not rule.groups else ""
    if rule.groups:
        names = ", ".join(rule.groups)
        how = f"{how} and the acquisition groups {names}" if how else f"the acquisition groups {names}"
    return how


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
        diameter: the canonical object diameter in pixels (None: the model has none).
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
    diameter: float | None = None
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
    from ..metadata import read_metadata

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
        steps=int(steps) if isinstance(steps, (int, float)) else None, diameter=meta.diameter, training=training,
    )


def describe_rule(rule: SplitRule, n_train: Any = None, n_val: Any = None) -> str:
    """A recorded split in words: ``every 5th image for validation (122 train / 31 val)``."""
    counts = f" ({n_train} train / {n_val} validation)" if n_train is not None and n_val is not None else ""
    if rule.kind == "none" and not rule.groups:
        return f"trained on every image, none held out{counts}"
    return f"{_held_out_words(rule)} for validation{counts}"


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
