"""Tests of the U-Net weight map (Eq. 2 of Ronneberger et al. 2015) in unet_core.weights."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from unet_core.weights import (
    border_cutoff,
    border_distances,
    border_term,
    class_balance,
    class_weight_values,
    weight_map,
    weight_map_parts,
    weight_map_reference,
)

TOLERANCE = 1e-5


def random_disks(
    shape: tuple[int, int], n_cells: int, seed: int, dtype: type = np.int32
) -> np.ndarray:
    """Random overlapping disks painted in turn with sparse ids: touching cells, cells cut by the
    image edge, cells a few pixels apart, and (when a disk is painted over) non-convex cells."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=dtype)
    rows, cols = np.indices(shape)
    ids = rng.choice(np.arange(1, 5000), n_cells, replace=False)
    for cell_id in ids:
        r, c = rng.uniform(-3, shape[0] + 3), rng.uniform(-3, shape[1] + 3)
        radius = rng.uniform(2, 8)
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = cell_id
    return labels


def brute_force_distances(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2 by comparing every pixel with every pixel of every cell (tiny images only)."""
    coords = np.indices(labels.shape).reshape(2, -1).T.astype(float)
    per_cell = [
        np.sqrt(((coords[:, None, :] - coords[labels.ravel() == i][None]) ** 2).sum(-1)).min(1)
        for i in np.unique(labels[labels > 0])
    ]
    stacked = np.sort(np.stack(per_cell + [np.full(len(coords), np.inf)] * 2), axis=0)
    return stacked[0].reshape(labels.shape), stacked[1].reshape(labels.shape)


def assert_matches_reference(labels: np.ndarray, *args) -> None:
    """Fast and reference maps agree to TOLERANCE (absolute) everywhere."""
    fast, reference = weight_map(labels, *args), weight_map_reference(labels, *args)
    np.testing.assert_allclose(fast, reference, rtol=0, atol=TOLERANCE)


def two_cells(gap: int, shape: tuple[int, int] = (9, 31)) -> np.ndarray:
    """Two vertical bands whose facing pixel columns are ``gap`` pixels apart (centre to centre)."""
    labels = np.zeros(shape, dtype=np.int32)
    left = 5
    labels[:, : left + 1] = 4
    labels[:, left + gap :] = 9
    return labels


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_matches_reference(seed: int, dtype: type) -> None:
    labels = random_disks((70, 90), n_cells=40, seed=seed, dtype=dtype)
    assert_matches_reference(labels)


@pytest.mark.parametrize(
    ("w0", "sigma", "class_weights"),
    [(10.0, 5.0, None), (50.0, 10.0, (0.5, 3.0)), (3.0, 1.5, "balanced")],
)
def test_matches_reference_other_parameters(w0: float, sigma: float, class_weights) -> None:
    labels = random_disks((80, 64), n_cells=30, seed=11)
    assert_matches_reference(labels, w0, sigma, class_weights)


def test_matches_reference_sparse_cells() -> None:
    # Cells far apart: most background pixels lie beyond the cutoff, where the fast version drops
    # the border term.
    labels = random_disks((128, 128), n_cells=6, seed=1, dtype=np.uint16)
    assert np.isinf(weight_map_parts(labels).d2).any()
    assert_matches_reference(labels)


def test_matches_reference_with_one_pixel_gaps() -> None:
    labels = random_disks((64, 64), n_cells=25, seed=5)
    # Cut every contact between two cells into a 1-pixel background gap.
    labels[:, :-1][(labels[:, :-1] != labels[:, 1:]) & (labels[:, 1:] > 0)] = 0
    assert_matches_reference(labels)


def test_reference_distances_match_brute_force() -> None:
    labels = random_disks((14, 17), n_cells=5, seed=3)
    d1, d2 = brute_force_distances(labels)
    np.testing.assert_allclose(border_distances(labels), (d1, d2), rtol=1e-12)
    border = 10.0 * np.exp(-((d1 + d2) ** 2) / (2 * 5.0**2))
    expected = class_balance(labels) + np.where(labels == 0, border, 0.0)
    np.testing.assert_allclose(weight_map_reference(labels), expected, rtol=0, atol=1e-6)


def test_distances_exact_within_cutoff_and_inf_beyond() -> None:
    labels = random_disks((30, 40), n_cells=8, seed=8)
    exact_d1, exact_d2 = brute_force_distances(labels)
    cutoff = 4.5
    d1, d2 = border_distances(labels, max_distance=cutoff)
    for got, exact in ((d1, exact_d1), (d2, exact_d2)):
        np.testing.assert_allclose(got, np.where(exact <= cutoff, exact, np.inf), rtol=1e-12)


def test_no_cells() -> None:
    parts = weight_map_parts(np.zeros((6, 7), dtype=np.uint16))
    assert np.all(np.isinf(parts.d1)) and np.all(np.isinf(parts.d2))
    np.testing.assert_array_equal(parts.border, 0.0)
    np.testing.assert_array_equal(parts.total, 1.0)


def test_one_cell_has_no_border_term() -> None:
    labels = np.zeros((20, 20), dtype=np.int64)
    labels[5:9, 3:12] = 1000
    parts = weight_map_parts(labels)
    assert np.all(np.isinf(parts.d2))
    np.testing.assert_array_equal(parts.border, 0.0)
    np.testing.assert_array_equal(parts.total, parts.w_c)
    assert parts.d1[5, 3] == 0.0 and parts.d1[5, 2] == 1.0
    assert parts.d1[4, 2] == pytest.approx(np.sqrt(2))


def test_image_filled_by_one_cell() -> None:
    np.testing.assert_array_equal(weight_map(np.full((5, 5), 7, dtype=np.int32)), 1.0)


def test_hand_computed_midpoint() -> None:
    gap = 10
    labels = two_cells(gap)
    w0, sigma = 10.0, 5.0
    parts = weight_map_parts(labels, w0, sigma, class_weights=None)
    row, mid = 4, 5 + gap // 2
    assert parts.d1[row, mid] == parts.d2[row, mid] == gap / 2
    # (d1 + d2)^2 / (2 sigma^2) = 10^2 / 50 = 2, plus the class weight 1.
    assert parts.total[row, mid] == pytest.approx(1.0 + 10.0 * np.exp(-2.0), abs=1e-6)
    # Next to the left cell: d1 = 1, d2 = gap - 1 = 9, so again d1 + d2 = 10.
    assert parts.total[row, 6] == pytest.approx(1.0 + 10.0 * np.exp(-2.0), abs=1e-6)


def test_border_term_only_on_background() -> None:
    labels = two_cells(3)
    parts = weight_map_parts(labels)
    np.testing.assert_array_equal(parts.border[labels > 0], 0.0)
    assert np.all(parts.border[labels == 0] > 0)
    np.testing.assert_array_equal(parts.total, parts.w_c + parts.border)


def test_non_contiguous_and_huge_ids_equal_relabelled() -> None:
    labels = random_disks((40, 40), n_cells=12, seed=2, dtype=np.int64)
    ids = np.unique(labels[labels > 0])
    compact = np.searchsorted(np.concatenate(([0], ids)), labels)
    expected = weight_map(compact)
    np.testing.assert_array_equal(weight_map(labels), expected)
    huge = np.where(labels > 0, labels + 10**12, 0)
    np.testing.assert_array_equal(weight_map(huge), expected)


def test_ids_3_17_1000() -> None:
    labels = np.zeros((12, 24), dtype=np.uint16)
    labels[2:6, 1:6], labels[2:6, 8:12], labels[7:11, 4:20] = 3, 17, 1000
    small = np.select([labels == 3, labels == 17, labels == 1000], [1, 2, 3], 0)
    np.testing.assert_array_equal(weight_map(labels), weight_map(small))


@pytest.mark.parametrize(
    "transform", [np.transpose, np.fliplr, np.flipud, np.rot90], ids=lambda f: f.__name__
)
def test_symmetry(transform) -> None:
    labels = random_disks((40, 56), n_cells=20, seed=4)
    expected = transform(weight_map(labels))
    np.testing.assert_allclose(weight_map(transform(labels)), expected, rtol=0, atol=1e-6)


def test_border_term_monotone_in_w0_and_sigma() -> None:
    labels = random_disks((48, 48), n_cells=20, seed=6)
    borders = [weight_map_parts(labels, w0, 5.0).border for w0 in (0.0, 1.0, 10.0, 30.0)]
    assert all(np.all(lo <= hi) for lo, hi in itertools.pairwise(borders))
    borders = [weight_map_parts(labels, 10.0, sigma).border for sigma in (1.0, 3.0, 5.0, 12.0)]
    assert all(np.all(lo <= hi) for lo, hi in itertools.pairwise(borders))
    assert np.any(borders[0] < borders[-1])


def test_balanced_class_weights() -> None:
    labels = random_disks((50, 60), n_cells=15, seed=9)
    w_c = class_balance(labels, "balanced")
    assert w_c.mean(dtype=np.float64) == pytest.approx(1.0, abs=1e-6)
    n_fg = np.count_nonzero(labels)
    n_bg = labels.size - n_fg
    w_bg, w_fg = class_weight_values(labels, "balanced")
    assert w_fg / w_bg == pytest.approx(n_bg / n_fg)
    assert w_c[labels > 0][0] == pytest.approx(w_fg) and w_c[labels == 0][0] == pytest.approx(w_bg)


def test_balanced_with_one_class_absent() -> None:
    assert class_weight_values(np.zeros((4, 4), dtype=np.int32)) == (1.0, 1.0)
    assert class_weight_values(np.ones((4, 4), dtype=np.int32)) == (1.0, 1.0)


def test_explicit_and_no_class_weights() -> None:
    labels = two_cells(6)
    w_c = class_balance(labels, (0.25, 4.0))
    np.testing.assert_array_equal(w_c, np.where(labels > 0, 4.0, 0.25))
    np.testing.assert_array_equal(class_balance(labels, None), 1.0)
    parts = weight_map_parts(labels, class_weights=[0.25, 4.0])
    np.testing.assert_array_equal(parts.total - parts.border, w_c)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.uint64])
def test_dtype_and_shape(dtype: type) -> None:
    labels = two_cells(4, shape=(7, 13)).astype(dtype)
    parts = weight_map_parts(labels)
    for array in (parts.w_c, parts.border, parts.d1, parts.d2, parts.total):
        assert array.dtype == np.float32 and array.shape == (7, 13)
    assert weight_map(labels).dtype == np.float32


def test_border_term_and_cutoff() -> None:
    expected = 4.0 * np.exp(-(5.0**2) / (2 * 2.0**2))
    assert border_term(np.array(2.0), np.array(3.0), w0=4.0, sigma=2.0) == pytest.approx(expected)
    assert border_term(np.array(1.0), np.array(np.inf)) == 0.0
    cutoff = border_cutoff(10.0, 5.0, eps=1e-7)
    assert border_term(np.array(0.0), np.array(cutoff)) == pytest.approx(1e-7)
    assert border_cutoff(1e-8, 5.0, eps=1e-7) == 0.0


@pytest.mark.parametrize(
    "labels",
    [
        np.zeros((3, 3, 3), dtype=np.int32),
        np.zeros((3, 3), dtype=np.float32),
        np.full((3, 3), -1, dtype=np.int32),
    ],
)
def test_invalid_labels(labels: np.ndarray) -> None:
    with pytest.raises(ValueError):
        weight_map(labels)


@pytest.mark.parametrize(
    "kwargs",
    [{"class_weights": "median"}, {"class_weights": (1.0, 2.0, 3.0)}, {"w0": -1.0}, {"sigma": 0.0}],
)
def test_invalid_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        weight_map(two_cells(4), **kwargs)


def test_separate_touching_cuts_a_one_pixel_line_between_touching_cells() -> None:
    from scipy import ndimage as ndi

    from unet_core.weights import separate_touching

    labels = np.zeros((12, 20), dtype=np.uint16)
    labels[2:10, 2:10] = 7
    labels[2:10, 10:18] = 3  # shares an edge with 7
    labels[0, 19] = 9  # alone: untouched
    out = separate_touching(labels)
    assert out.dtype == labels.dtype
    assert np.array_equal(out[2:10, 9], np.zeros(8)), "the larger id (7) gives up its edge column"
    assert np.all(out[2:10, 10:18] == 3) and np.all(out[2:10, 2:9] == 7) and out[0, 19] == 9
    # No two different ids are 8-adjacent any more, so components separate them.
    _, n = ndi.label(out > 0, structure=np.ones((3, 3)))
    assert n == 3
    # The border term now has background between the cells to act on.
    assert weight_map(out)[5, 9] > 9.0 and weight_map(labels)[5, 9] < 2.0


def test_separate_touching_leaves_separated_cells_and_diagonal_contacts() -> None:
    from unet_core.weights import separate_touching

    apart = np.zeros((6, 6), dtype=np.int32)
    apart[0:2, 0:2] = 1
    apart[3:5, 3:5] = 2
    assert np.array_equal(separate_touching(apart), apart)
    diagonal = np.zeros((4, 4), dtype=np.int32)
    diagonal[1, 1], diagonal[2, 2] = 5, 4
    out = separate_touching(diagonal)
    assert out[2, 2] == 4 and out[1, 1] == 0


def test_outline_class_marks_each_object_rim_but_not_the_image_edge() -> None:
    from unet_core.weights import outline_class

    labels = np.zeros((20, 30), np.int32)
    labels[0:12, 3:13] = 1  # touches the top edge
    labels[0:12, 13:23] = 2  # touches object 1 along a column and the top edge
    classes = (labels > 0).astype(np.uint8)
    out = outline_class(classes, labels, 2, 2)
    assert out.dtype == np.uint8 and np.array_equal(out > 0, labels > 0)  # the foreground is unchanged
    # Rows 0-1 touch only the image edge: interior there; rows 10-11 are the bottom rim.
    assert (out[0:10, 5:11] == 1).all() and (out[10:12, 3:23] == 2).all()
    assert (out[0:12, 3:5] == 2).all() and (out[0:12, 11:15] == 2).all()  # rims on both sides of the contact
    assert (out[labels == 0] == 0).all()
    with pytest.raises(ValueError, match="width"):
        outline_class(classes, labels, 0, 2)


def test_outline_class_of_an_empty_image() -> None:
    from unet_core.weights import outline_class

    empty = np.zeros((0, 5), np.int32)
    assert outline_class(empty.astype(np.uint8), empty, 2, 2).shape == (0, 5)
