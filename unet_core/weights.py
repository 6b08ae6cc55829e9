"""Pixel-wise loss weight maps of the U-Net paper (Ronneberger et al. 2015, Eq. 2).

The paper weights the cross-entropy loss per pixel with

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 * sigma^2))

where ``w_c`` balances the class frequencies, ``d1`` is the distance to the border of the nearest
cell and ``d2`` the distance to the border of the second-nearest cell; the paper uses ``w0 = 10``
and ``sigma ~ 5`` pixels. The second term ("border term") is large only in the narrow background
gaps between two touching or nearly touching cells, which is what forces the network to learn
those separation lines (Fig. 3c/d of the paper).

Conventions used here:

* Input is a 2-D instance label image: 0 is background, every positive integer is one cell.
  Ids need not be contiguous (``{3, 17, 1000}`` is fine) and any integer dtype is accepted.
* Distances are exact Euclidean distances between pixel centres, in pixels: a background pixel
  next to a cell has distance 1 to it, a pixel of a cell has distance 0 to its own cell.
* The border term is added to background pixels only (``labels == 0``), as in Fig. 3d.
* Classes for ``w_c`` are background (label 0) and foreground (label > 0).

:func:`weight_map_reference` is the straightforward implementation (one distance transform per
cell over the whole image) and serves as the test oracle; :func:`weight_map` is the fast one,
which only looks at pixels close enough to a cell for the border term to matter (see
:func:`border_cutoff`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

ClassWeights = Literal["balanced"] | Sequence[float] | None

# Border terms below BORDER_EPS are dropped by the fast implementation. The contract with the
# reference is 1e-5 absolute on the float32 total: truncation changes the float64 border term by
# less than 1e-7, and the float32 rounding of ``w_c + border`` adds at most one ulp of the result
# where the dropped term is not already below half an ulp (i.e. only where that ulp is < 2e-7),
# so the worst case is ~3e-7, with a wide margin.
BORDER_EPS = 1e-7

BACKGROUND = 0


@dataclass(frozen=True)
class WeightMapParts:
    """The terms of Eq. 2, all float32 arrays of the label image's shape (H, W).

    Attributes:
        w_c: class-balancing weight of each pixel.
        border: border term actually added, i.e. ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on
            background pixels and 0 on cell pixels.
        d1: distance to the nearest cell; ``+inf`` where it exceeds the cutoff (see
            :func:`border_cutoff`) or there is no cell.
        d2: distance to the second-nearest cell (a different id than ``d1``'s); ``+inf`` where
            it exceeds the cutoff or there is no second cell.
        total: ``w_c + border``, the map returned by :func:`weight_map`.
    """

    w_c: np.ndarray
    border: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    total: np.ndarray


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Return ``labels`` as an array after checking it is a 2-D, non-negative integer image.

    Raises:
        ValueError: if the array is not 2-D, not of an integer dtype, or has negative values.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D (H, W) image, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative (0 = background, > 0 = cell ids)")
    return labels


def _check_border_params(w0: float, sigma: float) -> None:
    """Raise ``ValueError`` unless ``w0 >= 0`` and ``sigma > 0`` are finite."""
    if not (math.isfinite(w0) and w0 >= 0):
        raise ValueError(f"w0 must be finite and >= 0, got {w0}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be finite and > 0, got {sigma}")


def class_weight_values(
    labels: np.ndarray, class_weights: ClassWeights = "balanced"
) -> tuple[float, float]:
    """Weights of the background and foreground classes.

    Args:
        labels: (H, W) integer instance (or binary) label image; 0 is background.
        class_weights: ``"balanced"`` for ``N / (K * N_k)`` with ``N`` the pixel count, ``N_k``
            the pixel count of class ``k`` and ``K`` the number of classes present, so that the
            mean of ``w_c`` over the image is exactly 1. A class absent from the image gets
            weight 1 (it weights no pixel, and ``K`` counts only present classes, so the
            present class also gets 1). ``None`` gives (1, 1). A sequence
            ``(w_background, w_foreground)`` is returned as given.

    Returns:
        ``(w_background, w_foreground)``.

    Raises:
        ValueError: for an unknown string, a sequence not of length 2, or negative or
            non-finite weights.
    """
    labels = _check_labels(labels)
    if class_weights is None:
        return 1.0, 1.0
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                f"class_weights must be 'balanced', None or (w_bg, w_fg), got {class_weights!r}"
            )
        return _balanced_weights(labels)
    values = tuple(float(w) for w in class_weights)
    if len(values) != 2:
        raise ValueError(f"class_weights needs (w_background, w_foreground), got {values}")
    if not all(math.isfinite(w) and w >= 0 for w in values):
        raise ValueError(f"class weights must be finite and >= 0, got {values}")
    return values


def _balanced_weights(labels: np.ndarray) -> tuple[float, float]:
    """``N / (K * N_k)`` per class, 1 for absent classes (see :func:`class_weight_values`)."""
    n_pixels = labels.size
    n_foreground = int(np.count_nonzero(labels))
    counts = (n_pixels - n_foreground, n_foreground)
    n_present = sum(count > 0 for count in counts)
    bg, fg = (n_pixels / (n_present * count) if count else 1.0 for count in counts)
    return bg, fg


def class_balance(labels: np.ndarray, class_weights: ClassWeights = "balanced") -> np.ndarray:
    """The class-balancing map ``w_c`` of Eq. 2.

    Args:
        labels: (H, W) integer label image; 0 is background, > 0 foreground.
        class_weights: see :func:`class_weight_values`.

    Returns:
        float32 (H, W) map holding each pixel's class weight.
    """
    labels = _check_labels(labels)
    bg, fg = class_weight_values(labels, class_weights)
    return np.where(labels > 0, np.float32(fg), np.float32(bg))


def separate_touching(labels: np.ndarray) -> np.ndarray:
    """Instance labels with a one-pixel background line wherever two cells touch.

    The border term of Eq. 2 lives on background pixels, so it only acts where the mask has
    background between two cells -- the "separation borders" of the paper's training data
    (Fig. 3c/d). Instance masks from other sources (DSB 2018, CTC, the synthetic generator) often
    let touching cells share an edge; this cuts the line back in: a pixel becomes background when
    one of its 8 neighbours belongs to a cell with a *smaller* id. Only the larger id gives up
    pixels, so the line is one pixel wide, and no two remaining cells touch even diagonally
    (4- and 8-connected components both separate them).

    Args:
        labels: (H, W) instance ids, 0 = background.

    Returns:
        A copy of ``labels`` (same dtype) with the separation lines set to 0.
    """
    labels = _check_labels(labels)
    if labels.size == 0:
        return labels.copy()
    # Smallest non-zero id in each 3x3 neighbourhood: background is lifted above every id first.
    lifted = np.where(labels > 0, labels, np.iinfo(labels.dtype).max)
    smallest = ndimage.minimum_filter(lifted, size=3, mode="constant", cval=np.iinfo(labels.dtype).max)
    out = labels.copy()
    out[(labels > 0) & (smallest < labels)] = 0
    return out


def outline_class(classes: np.ndarray, labels: np.ndarray, width: int, border_class: int) -> np.ndarray:
    """The class map with ``border_class`` on every object's outline: the pixels of an object
    that lie within ``width`` px (a disc) of a pixel that is not of that object (background or
    another object). The image edge is no outline: an object cut by it keeps its interior there.

    A network trained on this target marks where touching objects meet even where it cannot see
    a gap between them; :func:`unet_core.instances.instances` then takes the interiors as seeds.

    Args:
        classes: (H, W) class indexes (0 = background).
        labels: (H, W) instance ids of the same image (after :func:`separate_touching`, if used).
        width: outline width in pixels (>= 1).
        border_class: the class index the outline gets.

    Returns:
        A uint8 copy of ``classes`` with the outlines set to ``border_class``.
    """
    labels = _check_labels(labels)
    if width < 1:
        raise ValueError(f"the outline width must be >= 1 pixel, not {width}")
    out = np.array(classes, dtype=np.uint8, copy=True)
    if labels.size == 0:
        return out
    disc = disk(width).astype(bool)
    # A pixel is on its object's outline when the disc around it holds any other id; "nearest"
    # repeats the edge pixels, so the image edge itself never counts as another id.
    low = ndimage.minimum_filter(labels, footprint=disc, mode="nearest")
    high = ndimage.maximum_filter(labels, footprint=disc, mode="nearest")
    out[(labels > 0) & ((low != labels) | (high != labels))] = border_class
    return out


def border_cutoff(w0: float, sigma: float, eps: float = BORDER_EPS) -> float:
    """Distance ``D`` beyond which the border term is below ``eps``.

    ``w0 * exp(-s^2 / (2 sigma^2)) < eps`` exactly when ``s > sigma * sqrt(2 ln(w0 / eps))``.
    Since ``d1 <= d2``, a pixel whose second-nearest cell is farther than ``D`` has
    ``d1 + d2 > D`` and hence a border term below ``eps``, so cells need only be examined
    within ``D`` of themselves.

    Args:
        w0: border weight of Eq. 2.
        sigma: border width of Eq. 2, in pixels.
        eps: largest border term that may be dropped.

    Returns:
        The cutoff in pixels (0 when ``w0 <= eps``: every term is below ``eps`` then).
    """
    _check_border_params(w0, sigma)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if w0 <= eps:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / eps))


def _cell_windows(labels: np.ndarray) -> tuple[np.ndarray, list[tuple[int, tuple[slice, ...]]]]:
    """Label image with small ids and the bounding box of each cell in it.

    ``find_objects`` allocates one entry per id up to the largest, so sparse huge ids (say
    ``10**12`` in an int64 image) are first compacted to ``1..n``; otherwise ids are kept.

    Returns:
        ``(ids, cells)``: an intp label image and ``(id, bounding box)`` pairs, one per cell.
    """
    max_id = int(labels.max()) if labels.size else 0
    if max_id > labels.size:
        _, inverse = np.unique(labels, return_inverse=True)
        # np.unique sorts, so background (0), when present, maps to 0 and cells to 1..n.
        ids = inverse.reshape(labels.shape).astype(np.intp) + int(labels.min() > 0)
    else:
        ids = labels.astype(np.intp, copy=False)
    boxes = ndimage.find_objects(ids)
    return ids, [(i + 1, box) for i, box in enumerate(boxes) if box is not None]


def _grow_box(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` enlarged by ``margin`` pixels on every side, clipped to the image."""
    return tuple(
        slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape)
    )


def _keep_two_smallest(d1: np.ndarray, d2: np.ndarray, dist: np.ndarray) -> None:
    """Fold ``dist`` into the running smallest ``d1`` and second smallest ``d2``, in place."""
    # d2 must be updated first: it needs the old d1 (the old nearest may become the second).
    np.minimum(d2, np.maximum(d1, dist), out=d2)
    np.minimum(d1, dist, out=d1)


def border_distances(
    labels: np.ndarray, max_distance: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances ``d1`` and ``d2`` to the nearest and second-nearest cell, for every pixel.

    Each cell's exact distance transform is computed only inside its bounding box grown by
    ``max_distance``: that window holds the whole cell, so distances inside it are exact, and
    every pixel outside it is farther than ``max_distance`` from the cell.

    Args:
        labels: (H, W) integer instance label image; 0 is background, each positive id a cell.
            A pixel of a cell has ``d1 = 0`` (its own cell).
        max_distance: distances above this are not computed and reported as ``+inf``; ``None``
            computes them all (as slow as the reference: one full-image transform per cell).

    Returns:
        ``(d1, d2)``, float64 (H, W) arrays; ``+inf`` where there is no (second) cell within
        ``max_distance``.
    """
    labels = _check_labels(labels)
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    margin = max(labels.shape) if max_distance is None else math.ceil(max_distance)
    ids, cells = _cell_windows(labels)
    for cell_id, box in cells:
        window = _grow_box(box, margin, labels.shape)
        dist = ndimage.distance_transform_edt(ids[window] != cell_id)
        _keep_two_smallest(d1[window], d2[window], dist)
    if max_distance is not None:
        # Values past the cutoff depend on window shapes; report them uniformly as unknown.
        d1[d1 > max_distance] = np.inf
        d2[d2 > max_distance] = np.inf
    return d1, d2


def border_term(d1: np.ndarray, d2: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` elementwise, for every pixel (no masking).

    Args:
        d1: distance to the nearest cell; ``+inf`` gives 0.
        d2: distance to the second-nearest cell; ``+inf`` (no second cell) gives 0.
        w0: border weight.
        sigma: border width in pixels.

    Returns:
        float64 array of the broadcast shape of ``d1`` and ``d2``.
    """
    _check_border_params(w0, sigma)
    total = np.asarray(d1, dtype=np.float64) + np.asarray(d2, dtype=np.float64)
    return w0 * np.exp(-np.square(total) / (2.0 * sigma**2))


def _assemble(
    labels: np.ndarray, w_c: np.ndarray, d1: np.ndarray, d2: np.ndarray, w0: float, sigma: float
) -> WeightMapParts:
    """Combine the class map and distances into :class:`WeightMapParts` (border on background)."""
    border = np.where(labels == BACKGROUND, border_term(d1, d2, w0, sigma), 0.0).astype(np.float32)
    return WeightMapParts(
        w_c=w_c,
        border=border,
        d1=d1.astype(np.float32),
        d2=d2.astype(np.float32),
        total=w_c + border,
    )


def weight_map_parts(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: ClassWeights = "balanced",
) -> WeightMapParts:
    """All terms of the U-Net weight map (Eq. 2), for display and for :func:`weight_map`.

    The border term is applied to background pixels only: it exists to make the thin background
    gaps between touching cells expensive to get wrong (Fig. 3d of the paper); inside a cell
    ``d1`` is 0 and the term would only inflate the weight of cell pixels near a neighbour.
    Border terms below :data:`BORDER_EPS` are dropped (see :func:`border_cutoff`), which keeps
    the result within 1e-5 of :func:`weight_map_reference` while touching each pixel only for
    the cells within the cutoff distance.

    Behaviour at the edges of the input domain: with no cell, ``d1 = d2 = +inf`` and the border
    term is 0; with one cell, ``d2 = +inf`` and the border term is 0; cells touching the image
    edge are treated like any other (distances are measured inside the image only).

    Args:
        labels: (H, W) instance label image of any integer dtype; 0 is background, each
            positive id (not necessarily contiguous) one cell.
        w0: border weight (10 in the paper).
        sigma: border width in pixels (~5 in the paper).
        class_weights: ``"balanced"``, ``None`` or ``(w_background, w_foreground)``; see
            :func:`class_weight_values`.

    Returns:
        :class:`WeightMapParts` with float32 (H, W) maps.
    """
    labels = _check_labels(labels)
    w_c = class_balance(labels, class_weights)
    d1, d2 = border_distances(labels, max_distance=border_cutoff(w0, sigma))
    return _assemble(labels, w_c, d1, d2, w0, sigma)


def weight_map(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: ClassWeights = "balanced",
) -> np.ndarray:
    """The U-Net loss weight map ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` (Eq. 2).

    See :func:`weight_map_parts` for the conventions (border term on background pixels only,
    0 or 1 cells, image edges, label ids); this returns its ``total``.

    Args:
        labels: (H, W) instance label image of any integer dtype; 0 is background.
        w0: border weight (10 in the paper).
        sigma: border width in pixels (~5 in the paper).
        class_weights: ``"balanced"``, ``None`` or ``(w_background, w_foreground)``.

    Returns:
        float32 (H, W) weight map.
    """
    return weight_map_parts(labels, w0, sigma, class_weights).total


def weight_map_reference(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: ClassWeights = "balanced",
) -> np.ndarray:
    """Test oracle for :func:`weight_map`: the direct, slow computation of Eq. 2.

    One Euclidean distance transform per cell over the whole image, the two smallest distances
    per pixel, no cutoff. Kept deliberately simple (and independent of the windowing in
    :func:`border_distances`) so that tests and benchmarks can compare against it.

    Args:
        labels: (H, W) instance label image of any integer dtype; 0 is background.
        w0: border weight.
        sigma: border width in pixels.
        class_weights: ``"balanced"``, ``None`` or ``(w_background, w_foreground)``.

    Returns:
        float32 (H, W) weight map.
    """
    labels = _check_labels(labels)
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for cell_id in np.unique(labels[labels > 0]):
        dist = ndimage.distance_transform_edt(labels != cell_id)
        d2 = np.minimum(d2, np.maximum(d1, dist))
        d1 = np.minimum(d1, dist)
    return _assemble(labels, class_balance(labels, class_weights), d1, d2, w0, sigma).total
