"""Object scale: the median object diameter of a label image, and rescaling images and labels to it.

Nuclei in microscopy images range over more than 10x in size (7 px to 94 px median diameter per
image in DSB 2018), and a U-Net learns one notion of how big an object is. As Cellpose does with
its "diameter", a model here may declare a *canonical diameter*
(:attr:`unet_core.metadata.ModelMeta.diameter`): training rescales every image so that its median
object diameter equals it, and inference rescales the input the same way (from a diameter the user
gives, or one found by the scale search below) and maps the results back to the input's pixel grid.

The diameter of an object is that of the circle of equal area, ``2 * sqrt(area / pi)``; the
diameter of an image is the median over its objects.

Estimating the scale (``diameter="auto"``) is a search over a grid of candidate scales
(:func:`candidate_factors`, steps of sqrt 2) for the one at which the network is most certain:
the fewest undecided pixels (foreground probability between 0.1 and 0.9) per object pixel
(:func:`boundary_uncertainty`), among scales at which the objects found measure within
:data:`SEARCH_BAND` of the canonical diameter (the most certain of all scales when no scale finds
objects of that size: :func:`unet_core.inference.choose_scale`). Measured on 23 validation images of DSB 2018 with the
first scale-aware model, the scale chosen so scored mean AP 0.494, against 0.478 at the grid scale nearest
the true diameter and 0.503 at the best grid scale per image. The earlier rule (segment, measure,
rescale, repeat) fails when the objects are far from the canonical size: the network then cuts
large textured nuclei into pieces of about its own canonical size, the pieces are measured, and the
estimate stays near the canonical diameter (nuclei of 35-45 px were estimated at 3-24 px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .io import gray_plane
from .tiling import Tile, reflect_indices

#: Rescale factors are kept within these bounds: beyond them an image is either blown up past any
#: memory budget or shrunk to a few pixels per object; the model is not meant for such images.
MIN_FACTOR = 1 / 8
MAX_FACTOR = 4.0
#: Candidate scales of the automatic search are this factor apart.
SEARCH_STEP = math.sqrt(2.0)
#: A candidate scale is kept only when the objects found at it measure within this factor of the
#: canonical diameter (otherwise the network is seeing objects far from the size it was trained on).
SEARCH_BAND = 1.5
#: Foreground probabilities strictly between these count as undecided.
UNDECIDED = (0.1, 0.9)


def median_diameter(ids: np.ndarray, min_area: int = 1) -> float | None:
    """Median equal-area diameter (pixels) of the objects of an instance image; None when empty.

    Args:
        ids: integer instance ids, 0 = background (2-D; a stack counts all its objects).
        min_area: objects with fewer pixels are left out of the median (specks).
    """
    counts = np.bincount(np.asarray(ids).ravel().astype(np.int64, copy=False))[1:]
    areas = counts[counts >= max(1, min_area)]
    if areas.size == 0:
        return None
    return float(2.0 * math.sqrt(float(np.median(areas)) / math.pi))


def boundary_uncertainty(foreground: np.ndarray) -> float:
    """Undecided pixels per object pixel of a foreground-probability image (lower: more certain).

    Args:
        foreground: probability of the foreground classes, any shape.

    Returns:
        ``#(0.1 < p < 0.9) / #(p > 0.5)``; infinity when nothing is foreground.
    """
    p = np.asarray(foreground)
    objects = int(np.count_nonzero(p > 0.5))
    if objects == 0:
        return math.inf
    undecided = int(np.count_nonzero((p > UNDECIDED[0]) & (p < UNDECIDED[1])))
    return undecided / objects


def candidate_factors(limit: float = MAX_FACTOR) -> list[float]:
    """Rescale factors of the automatic search: powers of :data:`SEARCH_STEP` within
    [MIN_FACTOR, min(MAX_FACTOR, limit)], ascending (1.0 is always one of them when in range)."""
    low = math.ceil(math.log(MIN_FACTOR) / math.log(SEARCH_STEP) - 1e-9)
    high = math.floor(math.log(min(MAX_FACTOR, limit)) / math.log(SEARCH_STEP) + 1e-9)
    return [SEARCH_STEP ** k for k in range(low, high + 1)]


def search_window(pixels: np.ndarray, edge: int) -> tuple[slice, slice]:
    """The ``edge`` x ``edge`` window (or the whole image, if smaller) with the most structure.

    The automatic scale search runs on this window instead of the whole image, so its cost does
    not grow with the image. "Structure" is the local standard deviation of the gray values (as a
    gray model sees them: :func:`~unet_core.io.to_channels`), averaged over the window: it is high
    where there are objects and low in empty background.

    Args:
        pixels: one image, (H, W) or (H, W, C).
        edge: the window's edge in pixels.
    """
    h, w = pixels.shape[:2]
    if min(edge, h) == h and min(edge, w) == w:
        return slice(0, h), slice(0, w)
    # Subsampled before anything else: a whole-slide image is never converted as a whole.
    return window_from_sample(pixels[:: search_step(edge), :: search_step(edge)], (h, w), edge)


def search_step(edge: int) -> int:
    """The stride of the sample :func:`search_window` looks at: an eighth of the window's edge."""
    return max(1, edge // 8)


def window_from_sample(sample: np.ndarray, shape: tuple[int, int], edge: int) -> tuple[slice, slice]:
    """:func:`search_window` of an image of ``shape`` from its sample ``pixels[::s, ::s]`` (``s`` =
    :func:`search_step`), for a caller that reads the image in parts (a Dask block runner)."""
    h, w = shape
    eh, ew = min(edge, h), min(edge, w)
    if (eh, ew) == (h, w):
        return slice(0, h), slice(0, w)
    step = search_step(edge)
    g = gray_plane(sample).astype(np.float32, copy=False)
    mean = ndi.uniform_filter(g, 3)
    std = np.sqrt(np.maximum(ndi.uniform_filter(g * g, 3) - mean * mean, 0.0))
    wh, ww = max(1, eh // step), max(1, ew // step)
    # Sum of the structure inside every window position, from the summed-area table.
    table = np.pad(std.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = table[wh:, ww:] - table[:-wh, ww:] - table[wh:, :-ww] + table[:-wh, :-ww]
    r, c = np.unravel_index(int(np.argmax(sums)), sums.shape)
    top, left = min(r * step, h - eh), min(c * step, w - ew)
    return slice(top, top + eh), slice(left, left + ew)


def clamp_factor(factor: float) -> float:
    """A rescale factor within [MIN_FACTOR, MAX_FACTOR]."""
    return float(min(MAX_FACTOR, max(MIN_FACTOR, factor)))


def scaled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """(H, W) rescaled by ``factor``, at least 1 pixel each."""
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def rescale_image(image: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Image (H, W) or (H, W, C) resized to ``shape`` (float32), anti-aliased when shrinking.

    The whole-image case of :func:`resize_at` (linear only: ``order`` must be 1), so that a tile, a
    Dask block and the whole image are rescaled by one computation.
    """
    if order != 1:
        raise ValueError(f"only linear rescaling (order 1) is supported, not order {order}")
    if tuple(image.shape[:2]) == tuple(shape):
        return image.astype(np.float32, copy=False)
    return resize_at(image, shape, np.arange(shape[0]), np.arange(shape[1]))


#: The anti-aliasing Gaussian reaches this many sigmas (scipy's default truncation).
_TRUNCATE = 4.0


def _taps(out_index: np.ndarray, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour (may be -1 or n_in - 1) and weight of the right one, per output pixel: pixel
    centres aligned (output ``i`` sits at input ``(i + 0.5) * n_in / n_out - 0.5``)."""
    centre = (np.asarray(out_index, np.float64) + 0.5) * (n_in / n_out) - 0.5
    left = np.floor(centre).astype(np.intp)
    return left, (centre - left).astype(np.float32)


def _sigma(n_in: int, n_out: int, shrink: bool) -> float:
    """Anti-aliasing sigma along an axis shrunk from ``n_in`` to ``n_out`` (0: none)."""
    return max(0.0, (n_in / n_out - 1.0) / 2.0) if shrink else 0.0


def _run(out_index: np.ndarray, n_in: int, n_out: int, sigma: float) -> tuple[np.ndarray, int]:
    """The input indices, mirrored into the image, that ``out_index`` needs (its neighbours and
    the anti-aliasing reach around them), and the run's first virtual index."""
    left, _ = _taps(out_index, n_in, n_out)
    reach = int(_TRUNCATE * sigma + 0.5) if sigma > 0 else 0
    start, stop = int(left.min()) - reach, int(left.max()) + 2 + reach
    return reflect_indices(start, stop, n_in), start


def input_span(out_index: np.ndarray, n_in: int, n_out: int, shrink: bool) -> tuple[int, int]:
    """``(start, stop)`` of the input rows (or columns) that :func:`resize_at` reads for the
    output indices ``out_index`` (what a Dask block reads from the file)."""
    run, _ = _run(out_index, n_in, n_out, _sigma(n_in, n_out, shrink))
    return int(run.min()), int(run.max()) + 1


def input_window(rows: np.ndarray, cols: np.ndarray, in_shape: tuple[int, int],
                 out_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the input pixels that output pixels ``rows`` x ``cols`` of
    an ``in_shape`` image resized to ``out_shape`` are made from (:func:`resize_at` reads exactly
    these; without resizing, the pixels themselves): what a tile, a Dask block or a region reads."""
    if tuple(in_shape) == tuple(out_shape):
        return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    shrink = out_shape[0] < in_shape[0] or out_shape[1] < in_shape[1]
    return (*input_span(rows, in_shape[0], out_shape[0], shrink), *input_span(cols, in_shape[1], out_shape[1], shrink))


def resize_at(image: np.ndarray, out_shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
              origin: tuple[int, int] = (0, 0), full_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Pixels ``rows`` x ``cols`` of the input image resized to ``out_shape``, float32.

    What :func:`skimage.transform.resize` (``order=1, mode="reflect"``, anti-aliased when
    shrinking along either axis) gives at those pixels, computed from the input around them only:
    a tile of overlap-tile inference or a Dask block rescales its own window, and every caller gets
    the same values for the same pixels, bit for bit, whatever window it read.

    Args:
        image: (h, w) or (h, w, C): the input image, or the part of it that starts at ``origin``
            and covers :func:`input_span` of ``rows`` and of ``cols``.
        out_shape: (H', W') of the whole resized image.
        rows, cols: output indices (each in ``[0, H')`` resp. ``[0, W')``).
        origin: where ``image`` starts in the full input.
        full_shape: (H, W) of the full input (default: ``image``'s own).
    """
    n_in = full_shape or image.shape[:2]
    rows, cols = np.asarray(rows), np.asarray(cols)
    shrink = out_shape[0] < n_in[0] or out_shape[1] < n_in[1]
    sigmas = (_sigma(n_in[0], out_shape[0], shrink), _sigma(n_in[1], out_shape[1], shrink))
    run_r, start_r = _run(rows, n_in[0], out_shape[0], sigmas[0])
    run_c, start_c = _run(cols, n_in[1], out_shape[1], sigmas[1])
    window = image[np.ix_(run_r - origin[0], run_c - origin[1])].astype(np.float32, copy=False)
    for axis, sigma in enumerate(sigmas):
        if sigma > 0:  # the window's ends, where the filter lacks neighbours, are never used
            window = ndi.gaussian_filter1d(window, sigma, axis=axis, truncate=_TRUNCATE, mode="nearest")
    left, weight = _taps(rows, n_in[0], out_shape[0])
    top, bottom = window[left - start_r], window[left - start_r + 1]
    w = weight.reshape((-1,) + (1,) * (window.ndim - 1))
    window = top + (bottom - top) * w
    left, weight = _taps(cols, n_in[1], out_shape[1])
    first, second = window[:, left - start_c], window[:, left - start_c + 1]
    w = weight.reshape((1, -1) + (1,) * (window.ndim - 2))
    return np.ascontiguousarray(first + (second - first) * w, dtype=np.float32)


@dataclass(frozen=True)
class WorkPlane:
    """One input plane, or a window of it, as the network sees it: at the working scale.

    Attributes:
        pixels: (h, w) or (h, w, C) input pixels: the whole plane, or the window of it that
            starts at ``origin`` (a Dask block reads only that).
        shape: (H', W'): the plane at the working scale (the input's own shape: no rescaling).
        origin: where ``pixels`` starts in the plane.
        full_shape: (H, W) of the whole input plane (default: ``pixels``' own).
    """

    pixels: np.ndarray
    shape: tuple[int, int]
    origin: tuple[int, int] = (0, 0)
    full_shape: tuple[int, int] | None = None

    @property
    def input_shape(self) -> tuple[int, int]:
        return tuple(self.full_shape or self.pixels.shape[:2])

    @property
    def rescaled(self) -> bool:
        return tuple(self.shape) != self.input_shape

    def tile_input(self, tile: Tile, margin: int) -> np.ndarray:
        """The network input of ``tile`` (working-scale pixels), mirrored where it leaves the plane."""
        rows = reflect_indices(tile.y - margin, tile.y + tile.h + margin, self.shape[0])
        cols = reflect_indices(tile.x - margin, tile.x + tile.w + margin, self.shape[1])
        if self.rescaled:
            return resize_at(self.pixels, self.shape, rows, cols, self.origin, self.full_shape)
        rows, cols = rows - self.origin[0], cols - self.origin[1]
        if np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1):  # inside: a plain slice, no copy
            return self.pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return self.pixels[np.ix_(rows, cols)]

    def input_box(self, tiles: list[Tile], margin: int) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` of the input pixels the inputs of ``tiles`` read."""
        rows = np.concatenate([reflect_indices(t.y - margin, t.y + t.h + margin, self.shape[0]) for t in tiles])
        cols = np.concatenate([reflect_indices(t.x - margin, t.x + t.w + margin, self.shape[1]) for t in tiles])
        return input_window(rows, cols, self.input_shape, self.shape)


def rescale_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Integer labels (H, W) resized to ``shape`` by nearest neighbour (ids and classes kept)."""
    if tuple(labels.shape[:2]) == tuple(shape):
        return labels
    rows = nearest_index(labels.shape[0], shape[0])
    cols = nearest_index(labels.shape[1], shape[1])
    return labels[rows[:, None], cols[None, :]]


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel centre (pixel-centre aligned, like skimage's resize)."""
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    return np.clip(np.rint(centres), 0, n_in - 1).astype(np.intp)


@dataclass(frozen=True)
class Diameter:
    """How inference treats object scale: ``auto``, ``off`` or a diameter in input pixels.

    Attributes:
        mode: ``"auto"`` (the scale search, the default), ``"off"`` (no rescaling) or
            ``"given"``.
        pixels: the objects' diameter in the input image (``"given"`` only).
    """

    mode: str = "auto"
    pixels: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "off", "given"):
            raise ValueError(f"diameter must be 'auto', 'off' or a number of pixels, not {self.mode!r}")
        if self.mode == "given" and not (self.pixels is not None and math.isfinite(self.pixels) and self.pixels > 0):
            raise ValueError(f"a diameter must be a positive number of pixels, not {self.pixels!r}")

    @classmethod
    def parse(cls, text: str | float | None) -> Diameter:
        """``"auto"``, ``"off"``, ``None`` (= auto) or a number -> :class:`Diameter`."""
        if text is None:
            return cls()
        if isinstance(text, (int, float)):
            return cls("given", float(text))
        value = str(text).strip().lower()
        if value in ("auto", "off"):
            return cls(value)
        try:
            return cls("given", float(value))
        except ValueError:
            raise ValueError(f"diameter must be 'auto', 'off' or a number of pixels, not {text!r}") from None

    def __str__(self) -> str:
        return f"{self.pixels:g}" if self.mode == "given" else self.mode
