"""Tests of unet_core.metrics on hand-made cases whose scores are known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label
from skimage.segmentation import find_boundaries

from unet_core.metrics import (
    DSB_THRESHOLDS,
    dsb_average_precision,
    dsb_precisions,
    evaluate_pair,
    foreground_iou,
    per_class_iou,
    pixel_error,
    rand_error,
    rand_scores,
    seg_score,
    simple_point_lut,
    simple_point_warp,
    warping_error,
)

# Two cells side by side, split by a one-pixel membrane column (ISBI convention: 1 = cell,
# 0 = membrane). Each cell is ROWS x HALF pixels.
ROWS, HALF = 20, 20
MEMBRANE_COL = HALF
N_PIXELS = ROWS * (2 * HALF + 1)
CELL_AREA = ROWS * HALF


def two_cells() -> np.ndarray:
    mask = np.ones((ROWS, 2 * HALF + 1), dtype=np.uint8)
    mask[:, MEMBRANE_COL] = 0
    return mask


def isbi_like(seed: int, size: int = 64, n_cells: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A Voronoi 'cell' mask with one-pixel membranes, and a noisy prediction of it."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), dtype=np.int64)
    points = rng.integers(0, size, (n_cells, 2))
    seeds[points[:, 0], points[:, 1]] = np.arange(1, n_cells + 1)
    _, (rows, cols) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    gt = ~find_boundaries(seeds[rows, cols], mode="inner")
    noise = ndi.gaussian_filter(rng.normal(size=gt.shape), 1.5)
    return gt.astype(np.uint8), (gt + 3 * noise > 0.5).astype(np.uint8)


def component_counts(mask: np.ndarray) -> tuple[int, int]:
    """(4-connected foreground, 8-connected background) components, outside = background."""
    padded = np.pad(mask != 0, 1)
    return int(label(padded, connectivity=1).max()), int(label(~padded, connectivity=2).max())


# --------------------------------------------------------------------------- simple points


@pytest.mark.parametrize("foreground_connectivity", [4, 8])
def test_simple_point_lut_matches_brute_force(foreground_connectivity: int) -> None:
    """Flipping the centre of every 3x3 configuration: simple iff component counts hold."""
    fg_conn = 1 if foreground_connectivity == 4 else 2
    lut = simple_point_lut(foreground_connectivity)

    def counts(patch: np.ndarray) -> tuple[int, int]:
        return int(label(patch, connectivity=fg_conn).max()), int(
            label(1 - patch, connectivity=3 - fg_conn).max()
        )

    assert lut.shape == (512,)
    for code in range(512):
        patch = ((code >> np.arange(9)) & 1).reshape(3, 3)
        flipped = patch.copy()
        flipped[1, 1] ^= 1
        assert lut[code] == (counts(patch) == counts(flipped)), code


def test_simple_point_lut_rejects_other_connectivity() -> None:
    with pytest.raises(ValueError):
        simple_point_lut(6)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warp_preserves_topology_and_leaves_no_simple_mismatch(seed: int) -> None:
    gt, pred = isbi_like(seed)
    warped = simple_point_warp(gt, pred)
    assert component_counts(warped) == component_counts(gt)
    # Stable: no remaining mismatch is a simple point.
    padded = np.pad(warped, 1).astype(np.int64)
    h, w = warped.shape
    codes = sum(
        padded[r : r + h, c : c + w] << (3 * r + c) for r in range(3) for c in range(3)
    )
    assert not np.any(simple_point_lut(4)[codes] & (warped != pred.astype(bool)))
    # Warping only ever removes mismatches.
    assert np.count_nonzero(warped != pred) <= np.count_nonzero(gt != pred)


# --------------------------------------------------------------------------- ISBI errors


def test_identical_scores_perfectly() -> None:
    gt = two_cells()
    scores = evaluate_pair(gt.copy(), gt)
    assert scores["pixel_error"] == 0.0
    assert scores["warping_error"] == 0.0
    assert scores["rand_error"] == pytest.approx(0.0, abs=1e-12)
    assert scores["foreground_iou"] == 1.0
    assert scores["mean_iou"] == 1.0
    assert scores["dsb_ap"] == 1.0
    assert scores["seg"] == 1.0


def test_one_pixel_off_is_a_pixel_error_only() -> None:
    gt = two_cells()
    pred = gt.copy()
    pred[0, 0] = 0  # a cell's corner turned membrane: same topology
    assert pixel_error(pred, gt) == pytest.approx(1 / N_PIXELS)
    assert warping_error(pred, gt) == 0.0
    assert foreground_iou(pred, gt) == pytest.approx((2 * CELL_AREA - 1) / (2 * CELL_AREA))


@pytest.mark.parametrize("gap", [1, 3])
def test_merge_costs_its_bridge_pixels(gap: int) -> None:
    """A gap of `gap` pixels in the membrane merges the cells: each gap pixel is a topological
    error, and the Rand error is large although the pixel error is tiny."""
    gt = two_cells()
    pred = gt.copy()
    pred[8 : 8 + gap, MEMBRANE_COL] = 1
    assert pixel_error(pred, gt) == pytest.approx(gap / N_PIXELS)
    assert warping_error(pred, gt) == pytest.approx(gap / N_PIXELS)
    # GT: two segments of s pixels, prediction: one holding both (gap pixels are GT membrane,
    # ignored). Over distinct pixel pairs: together in both 2 s(s-1), in GT 2 s(s-1), in the
    # prediction 2s(2s-1); F = 2 s(s-1) / (s(s-1) + s(2s-1)) so error = s / (3s - 2).
    s = CELL_AREA
    scores = rand_scores(label(pred, connectivity=1), label(gt, connectivity=1))
    assert scores.error == pytest.approx(s / (3 * s - 2))
    assert scores.precision == pytest.approx((s - 1) / (2 * s - 1))
    assert scores.recall == pytest.approx(1.0)
    assert rand_error(pred, gt) == pytest.approx(s / (3 * s - 2))
    # The point of the paper's Rand metric: a one-pixel merge is a tiny pixel error, a large Rand error.
    assert pixel_error(pred, gt) < 0.01
    assert rand_error(pred, gt) > 0.3


def test_split_costs_one_pixel() -> None:
    """A spurious membrane row across a cell: the ground truth's cell can be thinned along it
    down to the single pixel whose removal would split it."""
    gt = two_cells()
    pred = gt.copy()
    pred[10, :MEMBRANE_COL] = 0
    assert pixel_error(pred, gt) == pytest.approx(HALF / N_PIXELS)
    assert warping_error(pred, gt) == pytest.approx(1 / N_PIXELS)


def test_added_object_costs_its_pixels_deleted_object_one() -> None:
    gt = np.zeros((16, 16), dtype=np.uint8)
    gt[2:6, 2:6] = 1
    pred = gt.copy()
    pred[10:12, 10:13] = 1  # a 6-pixel object the ground truth lacks
    assert warping_error(pred, gt) == pytest.approx(6 / gt.size)
    # The ground-truth object shrinks through simple points to its last pixel.
    assert warping_error(np.zeros_like(gt), gt) == pytest.approx(1 / gt.size)


@pytest.mark.parametrize("case", ["membrane", "blob"])
def test_boundary_shift_keeps_topology(case: str) -> None:
    """A boundary drawn one pixel off: pixel error, but no warping error."""
    if case == "membrane":
        gt = two_cells()
        pred = np.ones_like(gt)
        pred[:, MEMBRANE_COL + 1] = 0
        expected_pixel_error = 2 * ROWS / N_PIXELS
    else:
        gt = np.zeros((16, 16), dtype=np.uint8)
        gt[5:11, 5:11] = 1
        pred = np.roll(gt, 1, axis=1)
        expected_pixel_error = 2 * 6 / gt.size
    assert pixel_error(pred, gt) == pytest.approx(expected_pixel_error)
    assert warping_error(pred, gt) == 0.0


def test_rand_precision_recall_convention() -> None:
    """A pure split loses recall only, a pure merge precision only."""
    whole = np.ones((4, 4), dtype=np.int64)
    halves = whole.copy()
    halves[:, 2:] = 2
    split = rand_scores(halves, whole)
    assert split.precision == 1.0 and split.recall < 1.0
    merge = rand_scores(whole, halves)
    assert merge.recall == 1.0 and merge.precision < 1.0
    assert split.error == pytest.approx(merge.error) and split.error > 0


def test_rand_ignores_ground_truth_background() -> None:
    gt = label(two_cells(), connectivity=1)
    pred = np.where(gt == 0, 7, gt)  # anything at all on the GT membrane
    assert rand_scores(pred, gt).error == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(rand_scores(gt, np.zeros_like(gt)).error)


def test_all_background_prediction_scores_badly() -> None:
    gt = two_cells()
    pred = np.zeros_like(gt)
    scores = evaluate_pair(pred, gt)
    assert scores["pixel_error"] == pytest.approx(gt.mean())
    assert scores["foreground_iou"] == 0.0
    assert scores["iou_class_1"] == 0.0
    assert scores["dsb_ap"] == 0.0
    assert scores["seg"] == 0.0
    # Every GT pixel is its own predicted segment: no pair recovered, none wrongly joined.
    assert scores["rand_error"] == 1.0
    assert scores["rand_recall"] == 0.0
    assert scores["rand_precision"] == 1.0
    # The warping error's known leniency: each deleted cell costs one pixel.
    assert scores["warping_error"] == pytest.approx(2 / N_PIXELS)


# --------------------------------------------------------------------------- IoU


def test_per_class_iou() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 1]])
    ious = per_class_iou(pred, gt, num_classes=3)
    np.testing.assert_allclose(ious[:2], [3 / 4, 4 / 5])
    assert np.isnan(ious[2])  # class 2 occurs in neither map
    with pytest.raises(ValueError):
        per_class_iou(pred, gt, num_classes=1)


def test_foreground_iou_of_empty_maps() -> None:
    empty = np.zeros((3, 3), dtype=np.uint8)
    assert foreground_iou(empty, empty) == 1.0


# --------------------------------------------------------------------------- DSB 2018


def test_dsb_known_counts_per_threshold() -> None:
    gt = np.zeros((12, 12), dtype=np.int64)
    pred = np.zeros_like(gt)
    gt[0:2, 0:2] = 1  # A: predicted exactly (IoU 1)
    pred[0:2, 0:2] = 5
    gt[4:7, 4:7] = 2  # B: 9 pixels, predicted as 6 of them (IoU 6/9 = 0.667)
    pred[4:6, 4:7] = 8
    gt[9:11, 0:3] = 3  # C: missed (false negative)
    pred[9:11, 8:11] = 9  # D: nothing there (false positive)
    # t < 2/3: A and B match -> TP 2, FP 1 (D), FN 1 (C).
    # t > 2/3: only A      -> TP 1, FP 2 (B', D), FN 2 (B, C).
    expected = [2 / (2 + 1 + 1) if t < 2 / 3 else 1 / (1 + 2 + 2) for t in DSB_THRESHOLDS]
    np.testing.assert_allclose(dsb_precisions(pred, gt), expected)
    assert dsb_average_precision(pred, gt) == pytest.approx((4 * 0.5 + 6 * 0.2) / 10)


def test_dsb_match_needs_iou_strictly_above_threshold() -> None:
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[0, :] = 1
    pred = np.zeros_like(gt)
    pred[0, :3] = 1  # IoU exactly 3/4
    expected = [1.0 if t < 0.75 else 0.0 for t in DSB_THRESHOLDS]
    np.testing.assert_array_equal(dsb_precisions(pred, gt), expected)
    assert dsb_average_precision(pred, gt) == pytest.approx(0.5)


def test_dsb_empty_cases() -> None:
    empty = np.zeros((5, 5), dtype=np.int64)
    one = empty.copy()
    one[1:3, 1:3] = 1
    assert dsb_average_precision(empty, empty) == 1.0
    assert dsb_average_precision(one, empty) == 0.0
    assert dsb_average_precision(empty, one) == 0.0


def test_dsb_ignores_label_values() -> None:
    gt, _ = isbi_like(3)
    gt_labels = label(gt, connectivity=1)
    shuffled = np.where(gt_labels > 0, gt_labels * 37 + 1000, 0)
    assert dsb_average_precision(shuffled, gt_labels) == 1.0


# --------------------------------------------------------------------------- CTC SEG


def test_seg_known_overlap() -> None:
    gt = np.zeros((10, 12), dtype=np.int64)
    pred = np.zeros_like(gt)
    gt[0:4, 0:4] = 1  # R1, 16 pixels
    pred[1:5, 0:4] = 3  # S1: 12 of them + 4 outside -> J = 12 / 20
    gt[7:9, 0:5] = 2  # R2, 10 pixels
    pred[7:9, 0:2] = 4  # S2: 4 of them, not more than half -> 0
    pred[8, 2] = 4  # ... and a fifth: exactly half, still not more -> 0
    pred[0:3, 9:12] = 6  # a false positive, which SEG does not penalise
    assert seg_score(pred, gt) == pytest.approx((12 / 20 + 0) / 2)


def test_seg_empty_reference() -> None:
    empty = np.zeros((5, 5), dtype=np.int64)
    one = empty.copy()
    one[1:3, 1:3] = 1
    assert seg_score(empty, empty) == 1.0
    assert np.isnan(seg_score(one, empty))
    assert seg_score(empty, one) == 0.0


# --------------------------------------------------------------------------- evaluate_pair


def test_evaluate_pair_instance_kind() -> None:
    gt_labels = label(two_cells(), connectivity=1)
    scores = evaluate_pair(gt_labels.copy(), gt_labels, kind="instance")
    assert set(scores) == {
        "pixel_error",
        "foreground_iou",
        "rand_error",
        "rand_precision",
        "rand_recall",
        "dsb_ap",
        "seg",
        "merges",
        "splits",
    }
    assert scores["dsb_ap"] == 1.0 and scores["seg"] == 1.0 and scores["pixel_error"] == 0.0
    assert scores["merges"] == scores["splits"] == 0.0


def test_evaluate_pair_semantic_multiclass() -> None:
    gt = two_cells()
    gt[0, 0] = 2  # a third class
    scores = evaluate_pair(gt.copy(), gt)
    assert {"iou_class_0", "iou_class_1", "iou_class_2", "mean_iou"} <= set(scores)
    assert all(isinstance(v, float) for v in scores.values())


def test_evaluate_pair_rejects_bad_input() -> None:
    gt = two_cells()
    with pytest.raises(ValueError):
        evaluate_pair(gt[:, :-1], gt)
    with pytest.raises(ValueError):
        evaluate_pair(gt, gt, kind="panoptic")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        warping_error(gt[None], gt[None])
