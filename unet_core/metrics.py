"""Segmentation metrics: the ISBI 2012 errors, IoU, DSB 2018 average precision and CTC SEG.

All metrics compare one 2-D prediction with one ground truth of the same shape. Predictions are
hard: class maps (the argmax of the network's probabilities) or instance label maps, never
probabilities. Label value 0 is background everywhere.

ISBI 2012 EM segmentation challenge (Arganda-Carreras et al., 2015), in the convention of its
label images: 1 = cell interior (foreground), 0 = membrane (background).

* **Pixel error**: fraction of pixels whose label differs (the challenge's original definition;
  the 2015 paper also reports ``1 -`` the best pixel F-score over thresholds under that name).
* **Rand error**: ``1 - V_rand``, the foreground-restricted Rand F-score. As in the challenge's
  Fiji scorer (``trainableSegmentation.metrics.RandError``), both binary masks are split into
  4-connected components of the cell class; ground-truth membrane pixels are left out of the
  score; predicted membrane pixels inside ground-truth cells count as single-pixel segments
  (they join no pair, so they cost recall but never precision). The F-score itself comes from
  :func:`skimage.metrics.adapted_rand_error`, which counts distinct pixel pairs, ``n(n-1)``,
  where the Fiji scorer normalised by ``n**2``; the two differ by O(1/segment size).
* **Warping error** (Jain et al., 2010): the ground truth is warped towards the prediction by
  flipping mismatched pixels that are *simple* (flipping them changes no topology) until none
  is left; the warping error is the fraction of pixels still mismatched, i.e. pixels the
  prediction gets topologically wrong (mergers, splits, added or deleted objects and holes).
  The ground truth is the image warped, as in Jain et al. and the Fiji scorer
  (``WarpingError``: "warp ground truth, relax original labels to proposal"). Cells are
  4-connected and membranes 8-connected, the pair Fiji uses; seen as a boundary map (membrane
  = foreground) it is the usual 8-connected foreground / 4-connected background, and it makes
  a one-pixel diagonal membrane separate cells here exactly as for the Rand error. Outside the
  image is membrane (Fiji pads with 0). Greedy warping depends on the flip order: Fiji flips
  in scan order, here the stride-2 cosets flip in parallel (see :func:`simple_point_warp`),
  so counts can differ where several warpings are equally good.

The challenge swept a threshold over membrane probabilities and kept the best score; here the
caller passes one hard map (the argmax), so these are the scores at that operating point.

Overlap and instance metrics:

* **IoU**: of the foreground, or per class from the confusion matrix of two class maps.
* **DSB 2018 average precision** (Caicedo et al., 2019): for each IoU threshold
  ``t in 0.50, 0.55, ..., 0.95`` a predicted object matches a ground-truth object when their IoU
  exceeds ``t``; precision ``TP / (TP + FP + FN)``, averaged over the thresholds.
* **CTC SEG** (Maška et al., 2014): for each reference object ``R`` the predicted ``S`` with
  ``|R ∩ S| > |R| / 2`` (at most one exists) scores ``|R ∩ S| / |R ∪ S|``, otherwise 0;
  SEG is the mean over reference objects. False positives are not penalised, by design.

References:
    Arganda-Carreras I, Turaga SC, Berger DR, et al. Crowdsourcing the creation of image
    segmentation algorithms for connectomics. Front. Neuroanat. 9:142, 2015.
    Jain V, Bollmann B, Richardson M, et al. Boundary learning by optimization with topological
    constraints. CVPR 2010, 2488-2495.
    Caicedo JC, Goodman A, Karhohs KW, et al. Nucleus segmentation across imaging experiments:
    the 2018 Data Science Bowl. Nat. Methods 16:1247-1253, 2019.
    Maška M, Ulman V, Svoboda D, et al. A benchmark for comparison of cell tracking algorithms.
    Bioinformatics 30(11):1609-1617, 2014.
    Yokoi S, Toriwaki J, Fukumura T. An analysis of topological properties of digitized binary
    pictures using local features. Comput. Graph. Image Process. 4:63-73, 1975.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray
from skimage.measure import label as _label_components
from skimage.metrics import adapted_rand_error

__all__ = [
    "DSB_THRESHOLDS",
    "RandScores",
    "dsb_average_precision",
    "dsb_precisions",
    "evaluate_pair",
    "foreground_iou",
    "per_class_iou",
    "pixel_error",
    "rand_error",
    "rand_scores",
    "seg_score",
    "simple_point_lut",
    "simple_point_warp",
    "warping_error",
]

# Rounded so that the thresholds are the nearest doubles to 0.50, 0.55, ...; an IoU computed as
# exactly 3/4 then ties 0.75 and, the DSB rule being "IoU > t", does not match at t = 0.75.
DSB_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())


class RandScores(NamedTuple):
    """Foreground-restricted Rand scores; ``error = 1 - F``, F the harmonic mean of the two.

    Attributes:
        error: the Rand error, ``1 - V_rand``.
        precision: fraction of the pixel pairs the prediction puts together that the ground
            truth also puts together (low precision = false mergers).
        recall: fraction of the pixel pairs the ground truth puts together that the prediction
            also puts together (low recall = false splits).
    """

    error: float
    precision: float
    recall: float


def _check_same_shape(pred: NDArray, gt: NDArray) -> None:
    if np.shape(pred) != np.shape(gt):
        raise ValueError(
            f"prediction {np.shape(pred)} and ground truth {np.shape(gt)} differ in shape"
        )


def _check_2d(array: NDArray, what: str) -> None:
    if np.ndim(array) != 2:
        raise ValueError(f"{what} must be a 2-D image, got shape {np.shape(array)}")


def _instances_from_mask(mask: NDArray, connectivity: int = 1) -> NDArray[np.int64]:
    """Connected components of the nonzero pixels (``connectivity=1``: 4-connected in 2-D)."""
    return _label_components(np.asarray(mask) != 0, connectivity=connectivity).astype(np.int64)


# --------------------------------------------------------------------------- pixel metrics


def pixel_error(pred: NDArray, gt: NDArray) -> float:
    """ISBI 2012 pixel error: the fraction of pixels whose label differs.

    Args:
        pred: predicted binary mask or class map.
        gt: ground truth of the same shape and label convention.

    Returns:
        ``mean(pred != gt)``, in [0, 1].

    Raises:
        ValueError: if the shapes differ.
    """
    _check_same_shape(pred, gt)
    return float(np.mean(np.asarray(pred) != np.asarray(gt)))


def per_class_iou(pred: NDArray, gt: NDArray, num_classes: int) -> NDArray[np.float64]:
    """Intersection over union of every class of two class maps.

    Args:
        pred: predicted class map, integers in ``[0, num_classes)``.
        gt: ground-truth class map of the same shape.
        num_classes: number of classes.

    Returns:
        Array of ``num_classes`` IoUs; NaN for a class absent from both maps, so that
        ``np.nanmean`` gives the mean IoU over the classes that occur.

    Raises:
        ValueError: if the shapes differ or a label lies outside ``[0, num_classes)``.
    """
    _check_same_shape(pred, gt)
    pred_flat = np.asarray(pred, dtype=np.int64).ravel()
    gt_flat = np.asarray(gt, dtype=np.int64).ravel()
    for flat in (pred_flat, gt_flat):
        if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
            raise ValueError(f"class labels must lie in [0, {num_classes})")
    confusion = np.bincount(gt_flat * num_classes + pred_flat, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    with np.errstate(invalid="ignore"):
        return intersection / union


def foreground_iou(pred: NDArray, gt: NDArray) -> float:
    """IoU of the foreground (nonzero pixels) of two masks or label maps.

    Args:
        pred: predicted mask or label map.
        gt: ground truth of the same shape.

    Returns:
        ``|P ∩ G| / |P ∪ G|``; 1.0 when both are empty (nothing to find, nothing found).

    Raises:
        ValueError: if the shapes differ.
    """
    _check_same_shape(pred, gt)
    pred_fg, gt_fg = np.asarray(pred) != 0, np.asarray(gt) != 0
    union = np.count_nonzero(pred_fg | gt_fg)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred_fg & gt_fg) / union)


# --------------------------------------------------------------------------- Rand error


def _background_as_singletons(labels: NDArray) -> NDArray[np.int64]:
    """Give every 0 pixel a fresh label of its own, so that background groups no pixel pair."""
    out = np.array(labels, dtype=np.int64)
    background = out == 0
    first = out.max(initial=0) + 1
    out[background] = np.arange(first, first + np.count_nonzero(background))
    return out


def rand_scores(pred_labels: NDArray, gt_labels: NDArray) -> RandScores:
    """Foreground-restricted Rand scores of two label maps (the ISBI 2012 / SNEMI3D V_rand).

    Ground-truth pixels labelled 0 are ignored; predicted pixels labelled 0 are single-pixel
    segments (the Fiji scorer's treatment of predicted boundary), so a prediction of nothing
    scores precision 1, recall 0, error 1.

    Args:
        pred_labels: predicted segments, 0 = boundary / background.
        gt_labels: ground-truth segments, 0 = boundary / background (ignored).

    Returns:
        :class:`RandScores`. All NaN when the ground truth has no foreground; error NaN when
        neither map groups any pixel pair.

    Raises:
        ValueError: if the shapes differ.
    """
    _check_same_shape(pred_labels, gt_labels)
    gt = np.asarray(gt_labels, dtype=np.int64)
    if not np.any(gt):
        return RandScores(np.nan, np.nan, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        # skimage names its outputs (error, precision, recall) but divides its "precision" by the
        # pairs joined in the ground truth, which is recall (scikit-image issue #6485): unpack
        # accordingly; tests pin the convention (a pure split has precision 1).
        error, recall, precision = adapted_rand_error(
            image_true=gt, image_test=_background_as_singletons(pred_labels), ignore_labels=(0,)
        )
    # 0/0 means no pair was claimed (or none exists), hence none wrongly: 1, as in Fiji.
    precision, recall = np.nan_to_num([precision, recall], nan=1.0)
    return RandScores(float(error), float(precision), float(recall))


def rand_error(pred_mask: NDArray, gt_mask: NDArray) -> float:
    """ISBI 2012 Rand error of two binary masks (1 = cell interior, 0 = membrane).

    Segments are the 4-connected components of each mask's nonzero pixels, as in the challenge
    scorer; see :func:`rand_scores` for how the pixel pairs are counted.

    Args:
        pred_mask: predicted binary mask.
        gt_mask: ground-truth binary mask.

    Returns:
        ``1 - V_rand`` in [0, 1]; NaN when the ground truth has no foreground.

    Raises:
        ValueError: if the shapes differ.
    """
    _check_same_shape(pred_mask, gt_mask)
    return rand_scores(_instances_from_mask(pred_mask), _instances_from_mask(gt_mask)).error


# --------------------------------------------------------------------------- warping error

# Bit k of a neighbourhood code is pixel k of the 3x3 window read row by row (bit 4: the centre).
#: Metrics where a smaller value is better (all others: larger is better).
LOWER_IS_BETTER = frozenset({"pixel_error", "rand_error", "warping_error"})
#: The metric reports sort by ("worst first") and training keeps ``best.pt`` by, per kind of data.
PRIMARY_METRIC = {"semantic": "rand_error", "instance": "dsb_ap"}

_WINDOW_WEIGHTS = 1 << np.arange(9)
# The 8 neighbours as (row, col) in the window, counter-clockwise from east: Yokoi's x1..x8.
_YOKOI_ORDER = ((1, 2), (0, 2), (0, 1), (0, 0), (1, 0), (2, 0), (2, 1), (2, 2))


@lru_cache(maxsize=2)
def simple_point_lut(foreground_connectivity: Literal[4, 8] = 4) -> NDArray[np.bool_]:
    """Which 3x3 neighbourhoods make their centre pixel a simple point.

    A pixel is simple when flipping it changes neither the number of foreground components nor
    that of background components anywhere in the image; in 2-D that is decided by its 8
    neighbours alone. With 4-connected foreground (8-connected background) it holds iff Yokoi's
    connectivity number ``sum_{k odd} x_k - x_k x_{k+1} x_{k+2}`` equals 1; with 8-connected
    foreground the same number of the complemented neighbours must equal 1.

    Args:
        foreground_connectivity: 4 or 8; the background takes the other one.

    Returns:
        Read-only boolean array of 512 entries indexed by the neighbourhood code
        ``sum_k pixel_k << k`` over the 3x3 window in row-major order. The centre bit does not
        matter: simplicity is the same for setting and for clearing a pixel.

    Raises:
        ValueError: if ``foreground_connectivity`` is not 4 or 8.
    """
    if foreground_connectivity not in (4, 8):
        raise ValueError(f"foreground_connectivity must be 4 or 8, got {foreground_connectivity}")
    codes = np.arange(512)
    x = [(codes >> (3 * row + col)) & 1 for row, col in _YOKOI_ORDER]
    if foreground_connectivity == 8:
        x = [1 - v for v in x]
    x += x[:2]
    connectivity_number = sum(x[k] - x[k] * x[k + 1] * x[k + 2] for k in (0, 2, 4, 6))
    lut = connectivity_number == 1
    lut.flags.writeable = False
    return lut


def _neighbourhood_codes(
    flat: NDArray[np.bool_], positions: NDArray[np.intp], offsets: NDArray[np.intp]
) -> NDArray[np.intp]:
    """3x3 neighbourhood codes (see :func:`simple_point_lut`) at flat ``positions``."""
    return flat[positions[:, None] + offsets[None, :]] @ _WINDOW_WEIGHTS


def simple_point_warp(
    source: NDArray, target: NDArray, *, foreground_connectivity: Literal[4, 8] = 4
) -> NDArray[np.bool_]:
    """Warp a binary image towards another by flipping simple points only (Jain et al., 2010).

    Only pixels where ``source != target`` are flipped (each to its target value, so a flipped
    pixel never flips back), and only while simple; sweeps repeat until one flips nothing.
    The result has the topology of ``source`` and is as close to ``target`` as this greedy
    relaxation gets. Pixels outside the image count as background.

    Each sweep visits the four cosets of the stride-2 grid, ``(row % 2, col % 2)``, in turn and
    flips every simple mismatch of one coset at once. Two pixels of a coset are at least two
    rows or two columns apart, so neither lies in the other's 3x3 window: flipping one leaves
    the other's neighbourhood, hence its simplicity, unchanged, and the parallel flip equals a
    sequence of single simple flips, each preserving topology.

    Args:
        source: binary image to deform (nonzero = foreground).
        target: binary image to deform it towards, same shape.
        foreground_connectivity: connectivity of the foreground, 4 or 8; the background takes
            the other one.

    Returns:
        The warped source, boolean, same shape.

    Raises:
        ValueError: if the shapes differ, the images are not 2-D or the connectivity is not 4/8.
    """
    _check_same_shape(source, target)
    _check_2d(source, "source")
    lut = simple_point_lut(foreground_connectivity)
    warped = np.pad(np.asarray(source) != 0, 1)
    goal = np.pad(np.asarray(target) != 0, 1)
    width = warped.shape[1]
    flat = warped.reshape(-1)  # a view: flipping ``flat`` flips ``warped``
    offsets = (np.arange(-1, 2)[:, None] * width + np.arange(-1, 2)[None, :]).ravel()
    mismatched = np.flatnonzero(flat != goal.reshape(-1))
    rows, cols = np.divmod(mismatched, width)
    cosets = [mismatched[(rows % 2 == r) & (cols % 2 == c)] for r in (0, 1) for c in (0, 1)]
    flipped_any = True
    while flipped_any:
        flipped_any = False
        for k, positions in enumerate(cosets):
            simple = lut[_neighbourhood_codes(flat, positions, offsets)]
            if simple.any():
                flat[positions[simple]] ^= True
                cosets[k] = positions[~simple]
                flipped_any = True
    return warped[1:-1, 1:-1]


def warping_error(pred_mask: NDArray, gt_mask: NDArray) -> float:
    """ISBI 2012 warping error of two binary masks (1 = cell interior, 0 = membrane).

    The ground truth is warped towards the prediction through simple points (cells 4-connected,
    membranes 8-connected, see :func:`simple_point_warp`) and the pixels still mismatched are
    counted. A boundary drawn one pixel off costs nothing; a gap in a membrane, merging two
    cells, costs every gap pixel; an added object costs all its pixels; a spurious one-pixel
    membrane line splitting a cell, or a deleted object, costs one pixel, as the ground-truth
    cell can be thinned away up to that pixel (the metric's known asymmetry).

    Args:
        pred_mask: predicted binary mask.
        gt_mask: ground-truth binary mask.

    Returns:
        Fraction of pixels mismatched after warping, in [0, 1].

    Raises:
        ValueError: if the shapes differ or the masks are not 2-D.
    """
    warped_gt = simple_point_warp(gt_mask, pred_mask, foreground_connectivity=4)
    return float(np.mean(warped_gt != (np.asarray(pred_mask) != 0)))


# --------------------------------------------------------------------------- instance metrics


class _Overlaps(NamedTuple):
    """Contingency table of two label maps, reduced to what instance matching needs."""

    n_pred: int
    n_gt: int
    gt_area: NDArray[np.int64]  # area of each overlapping pair's ground-truth object
    intersection: NDArray[np.int64]  # one entry per (gt, pred) pair that overlaps
    iou: NDArray[np.float64]


def _relabel_consecutive(labels: NDArray) -> tuple[NDArray[np.int64], int]:
    """Map the nonzero labels onto 1..n (0 stays 0); returns the flat map and n."""
    ids, inverse = np.unique(np.asarray(labels, dtype=np.int64).ravel(), return_inverse=True)
    has_background = ids.size > 0 and ids[0] == 0
    return inverse.ravel() + (0 if has_background else 1), len(ids) - int(has_background)


def _overlaps(pred_labels: NDArray, gt_labels: NDArray) -> _Overlaps:
    """Intersections and IoUs of all overlapping (ground truth, prediction) object pairs.

    Only pairs that share a pixel are listed (sparse): every IoU > 0 is among them.
    """
    _check_same_shape(pred_labels, gt_labels)
    pred, n_pred = _relabel_consecutive(pred_labels)
    gt, n_gt = _relabel_consecutive(gt_labels)
    pred_area = np.bincount(pred, minlength=n_pred + 1)
    gt_area = np.bincount(gt, minlength=n_gt + 1)
    both = (pred > 0) & (gt > 0)
    pair_ids, intersection = np.unique(gt[both] * (n_pred + 1) + pred[both], return_counts=True)
    gt_of_pair, pred_of_pair = np.divmod(pair_ids, n_pred + 1)
    union = gt_area[gt_of_pair] + pred_area[pred_of_pair] - intersection
    return _Overlaps(n_pred, n_gt, gt_area[gt_of_pair], intersection, intersection / union)


def dsb_precisions(
    pred_labels: NDArray, gt_labels: NDArray, thresholds: tuple[float, ...] = DSB_THRESHOLDS
) -> NDArray[np.float64]:
    """DSB 2018 precision ``TP / (TP + FP + FN)`` at each IoU threshold.

    A pair matches when its IoU exceeds the threshold. For thresholds >= 0.5 matching is
    one-to-one without any assignment step: IoU > 0.5 means the pair shares more than half of
    each object, and two disjoint objects cannot both hold more than half of a third.

    Args:
        pred_labels: predicted instances, 0 = background.
        gt_labels: ground-truth instances, 0 = background.
        thresholds: IoU thresholds, each >= 0.5.

    Returns:
        One precision per threshold; 1.0 where both maps are empty, 0.0 where only one is.

    Raises:
        ValueError: if the shapes differ or a threshold is below 0.5.
    """
    if min(thresholds) < 0.5:
        raise ValueError("DSB matching is one-to-one only for IoU thresholds >= 0.5")
    overlaps = _overlaps(pred_labels, gt_labels)
    if overlaps.n_pred == 0 and overlaps.n_gt == 0:
        return np.ones(len(thresholds))
    tp = (overlaps.iou[None, :] > np.asarray(thresholds)[:, None]).sum(axis=1)
    # TP + FP + FN = TP + (n_pred - TP) + (n_gt - TP)
    return tp / (overlaps.n_pred + overlaps.n_gt - tp)


def dsb_average_precision(pred_labels: NDArray, gt_labels: NDArray) -> float:
    """Data Science Bowl 2018 score of one image: :func:`dsb_precisions` averaged.

    Args:
        pred_labels: predicted instances, 0 = background.
        gt_labels: ground-truth instances, 0 = background.

    Returns:
        Mean precision over IoU thresholds 0.50, 0.55, ..., 0.95, in [0, 1].

    Raises:
        ValueError: if the shapes differ.
    """
    return float(np.mean(dsb_precisions(pred_labels, gt_labels)))


def seg_score(pred_labels: NDArray, gt_labels: NDArray) -> float:
    """Cell Tracking Challenge SEG: mean Jaccard index of reference objects with their match.

    Args:
        pred_labels: predicted instances, 0 = background.
        gt_labels: reference instances, 0 = background.

    Returns:
        SEG in [0, 1]. With no reference object SEG is undefined: NaN, except 1.0 when the
        prediction is empty too.

    Raises:
        ValueError: if the shapes differ.
    """
    overlaps = _overlaps(pred_labels, gt_labels)
    if overlaps.n_gt == 0:
        return 1.0 if overlaps.n_pred == 0 else float("nan")
    # At most one predicted object can cover more than half of a reference object.
    matched = 2 * overlaps.intersection > overlaps.gt_area
    return float(overlaps.iou[matched].sum() / overlaps.n_gt)


# --------------------------------------------------------------------------- all at once


def evaluate_pair(
    pred: NDArray,
    gt: NDArray,
    kind: Literal["semantic", "instance"] = "semantic",
    *,
    foreground_class: int = 1,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Every applicable metric of one prediction against its ground truth.

    Evaluation is done at the argmax of the network's class probabilities: the caller passes
    the argmax class map (``kind="semantic"``) or the instances derived from it
    (``kind="instance"``), never the probabilities themselves.

    ``kind="semantic"``: class maps. Returns ``pixel_error``, ``iou_class_<c>`` for every class,
    ``mean_iou`` (over classes present in either map), ``foreground_iou``, and, on the binary
    masks ``== foreground_class`` (cell interior for ISBI), ``rand_error``, ``rand_precision``,
    ``rand_recall``, ``warping_error``, and ``dsb_ap`` and ``seg`` on their 4-connected
    components.

    ``kind="instance"``: label maps, 0 = background. Returns ``pixel_error`` and
    ``foreground_iou`` of the foreground masks, ``rand_error``, ``rand_precision``,
    ``rand_recall`` of the segments themselves, ``dsb_ap`` and ``seg``. No warping error: a
    binary mask cannot show where two touching instances meet.

    Args:
        pred: predicted class map or instance labels (2-D, integers).
        gt: ground truth of the same kind and shape.
        kind: ``"semantic"`` or ``"instance"``.
        foreground_class: class whose connected components are the objects (semantic only).
        num_classes: number of classes for the per-class IoU (semantic only); default: the
            largest label present (or ``foreground_class``) plus one.

    Returns:
        Metric name -> value (floats; NaN where a metric is undefined for this pair).

    Raises:
        ValueError: if the shapes differ, the maps are not 2-D or ``kind`` is unknown.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_same_shape(pred, gt)
    _check_2d(gt, "ground truth")
    if kind == "semantic":
        return _evaluate_semantic(pred, gt, foreground_class, num_classes)
    if kind == "instance":
        return _evaluate_instances(pred, gt)
    raise ValueError(f"kind must be 'semantic' or 'instance', got {kind!r}")


def _evaluate_semantic(
    pred: NDArray, gt: NDArray, foreground_class: int, num_classes: int | None
) -> dict[str, float]:
    if num_classes is None:
        num_classes = int(max(pred.max(initial=0), gt.max(initial=0), foreground_class)) + 1
    ious = per_class_iou(pred, gt, num_classes)
    pred_fg, gt_fg = pred == foreground_class, gt == foreground_class
    pred_cells, gt_cells = _instances_from_mask(pred_fg), _instances_from_mask(gt_fg)
    rand = rand_scores(pred_cells, gt_cells)
    return {
        "pixel_error": pixel_error(pred, gt),
        **{f"iou_class_{c}": float(v) for c, v in enumerate(ious)},
        "mean_iou": float(np.nanmean(ious)),
        "foreground_iou": foreground_iou(pred_fg, gt_fg),
        "rand_error": rand.error,
        "rand_precision": rand.precision,
        "rand_recall": rand.recall,
        "warping_error": warping_error(pred_fg, gt_fg),
        "dsb_ap": dsb_average_precision(pred_cells, gt_cells),
        "seg": seg_score(pred_cells, gt_cells),
    }


def merges_and_splits(pred_labels: NDArray, gt_labels: NDArray) -> tuple[int, int]:
    """(merges, splits): how often touching objects were wrongly joined or one object cut up.

    A *merge* is a predicted object that holds more than half of each of two or more true
    objects (it swallowed them); a *split* is a true object that holds more than half of each of
    two or more predicted objects (it was cut into pieces). "More than half" makes every count
    unambiguous: an object's majority lies in at most one object of the other map.
    """
    _check_same_shape(pred_labels, gt_labels)
    pred, n_pred = _relabel_consecutive(pred_labels)
    gt, n_gt = _relabel_consecutive(gt_labels)
    if n_pred == 0 or n_gt == 0:
        return 0, 0
    pred_area = np.bincount(pred, minlength=n_pred + 1)
    gt_area = np.bincount(gt, minlength=n_gt + 1)
    both = (pred > 0) & (gt > 0)
    pair_ids, intersection = np.unique(gt[both] * (n_pred + 1) + pred[both], return_counts=True)
    g, p = np.divmod(pair_ids, n_pred + 1)
    swallowed = np.bincount(p[2 * intersection > gt_area[g]], minlength=n_pred + 1)
    pieces = np.bincount(g[2 * intersection > pred_area[p]], minlength=n_gt + 1)
    return int((swallowed >= 2).sum()), int((pieces >= 2).sum())


def _evaluate_instances(pred: NDArray, gt: NDArray) -> dict[str, float]:
    rand = rand_scores(pred, gt)
    merges, splits = merges_and_splits(pred, gt)
    return {
        "pixel_error": pixel_error(pred != 0, gt != 0),
        "foreground_iou": foreground_iou(pred, gt),
        "rand_error": rand.error,
        "rand_precision": rand.precision,
        "rand_recall": rand.recall,
        "dsb_ap": dsb_average_precision(pred, gt),
        "seg": seg_score(pred, gt),
        "merges": float(merges),
        "splits": float(splits),
    }
