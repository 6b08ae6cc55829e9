"""Instances from class labels, and the per-object table, checked against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops

from unet_core import instances as inst
from unet_core.instances import InstanceOptions, instances, object_table
from unet_core.io import LUMA


def _labels() -> np.ndarray:
    """Four foreground objects: a ring (with a hole), a square, a 2-pixel speck, one on the edge."""
    labels = np.zeros((40, 50), np.uint8)
    labels[5:15, 5:15] = 1
    labels[8:12, 8:12] = 0  # the ring's hole
    labels[20:30, 30:42] = 1
    labels[35, 10:12] = 1
    labels[0:6, 44:50] = 1  # touches the top and right edges
    return labels


def test_connected_components_are_numbered_in_scan_order() -> None:
    ids = instances(_labels())
    assert ids.dtype == np.int32
    assert sorted(np.unique(ids)) == [0, 1, 2, 3, 4]
    assert ids[0, 49] == 1 and ids[5, 5] == 2 and ids[25, 35] == 3 and ids[35, 10] == 4


def test_options_remove_small_and_edge_objects_and_fill_holes() -> None:
    ids = instances(_labels(), options=InstanceOptions(min_size=3, drop_border=True, fill_holes=True))
    assert sorted(np.unique(ids)) == [0, 1, 2]  # speck and edge object gone, ids consecutive
    assert ids[10, 10] == 1  # the hole belongs to the ring now
    assert ids[25, 35] == 2


@pytest.mark.parametrize("band_pixels", [inst.BAND_PIXELS, 37])
@pytest.mark.parametrize("rgb", [False, True])
def test_object_table_matches_regionprops(monkeypatch, band_pixels: int, rgb: bool) -> None:
    monkeypatch.setattr(inst, "BAND_PIXELS", band_pixels)  # 37: bands of one row, objects split across bands
    ids = instances(_labels())
    ids[ids == 2] = 0  # a gap in the ids: find_objects reports None for it
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 65535, ids.shape + ((3,) if rgb else ()), dtype=np.uint16)
    rows = object_table(ids, raw)
    gray = raw.astype(np.float64) @ LUMA.astype(np.float64) if rgb else raw.astype(np.float64)
    props = regionprops(ids, intensity_image=gray)
    assert [r["id"] for r in rows] == [p.label for p in props] == [1, 3, 4]
    for row, p in zip(rows, props):
        assert row["area"] == p.area
        assert row["centroid_y"] == pytest.approx(p.centroid[0], abs=1e-3)
        assert row["centroid_x"] == pytest.approx(p.centroid[1], abs=1e-3)
        assert (row["bbox_min_y"], row["bbox_min_x"], row["bbox_max_y"], row["bbox_max_x"]) == p.bbox
        assert row["mean_intensity"] == pytest.approx(p.intensity_mean, rel=1e-4 if rgb else 1e-9, abs=1e-3)


def test_object_table_of_an_image_without_objects_is_empty() -> None:
    assert object_table(np.zeros((5, 5), np.int32), np.zeros((5, 5), np.uint8)) == []


def test_a_border_class_splits_touching_objects_at_their_rims_and_gives_the_rims_back() -> None:
    from unet_core.weights import outline_class

    truth = np.zeros((30, 40), np.int32)
    truth[3:15, 3:15] = 1
    truth[3:15, 15:27] = 2  # touches object 1: one foreground blob without a gap
    truth[20:23, 30:33] = 3  # too small for an interior: all rim
    labels = outline_class((truth > 0).astype(np.uint8), truth, 2, 2)
    assert instances(labels, [1, 2]).max() == 2  # without the border rule: the touching pair is one object
    ids = instances(labels, [1, 2], border_class=2)
    assert ids.max() == 3
    assert np.array_equal(ids > 0, truth > 0)  # every rim pixel went back to an object
    for k in (1, 2, 3):  # each object is exactly one true object: nothing merged, nothing lost
        assert len(np.unique(truth[ids == k])) == 1
    assert len(np.unique(ids[truth > 0])) == 3


def test_the_border_rule_never_merges_and_respects_the_size_filter() -> None:
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 1, 2], np.uint8), size=(60, 60), p=[0.3, 0.3, 0.4])
    ids = instances(labels, [1, 2], border_class=2)
    seeds, _ = inst.ndi.label(labels == 1)
    # Each object holds at most one interior component, and objects cover exactly the foreground.
    for k in range(1, ids.max() + 1):
        assert len(np.unique(seeds[(ids == k) & (seeds > 0)])) <= 1
    assert np.array_equal(ids > 0, labels > 0)
    big = instances(labels, [1, 2], InstanceOptions(min_size=20), border_class=2)
    assert all(np.count_nonzero(big == k) >= 20 for k in range(1, big.max() + 1))


def test_object_areas_in_bands_equal_one_bincount(monkeypatch) -> None:
    """Areas counted band by band (a whole slide's ids are never cast to int64 at once) are the
    plain count, with bands that split objects and a ragged last band."""
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 40, (37, 23)).astype(np.int32)
    monkeypatch.setattr(inst, "BAND_PIXELS", 23 * 4)  # 4 rows per band: 10 bands, the last of 1 row
    assert np.array_equal(inst.object_areas(ids, 45), np.bincount(ids.ravel(), minlength=46))
    labels = (rng.random((37, 23)) > 0.5).astype(np.uint8)
    whole = instances(labels, options=InstanceOptions(min_size=3))
    monkeypatch.setattr(inst, "BAND_PIXELS", 1 << 22)
    assert np.array_equal(whole, instances(labels, options=InstanceOptions(min_size=3)))


# --------------------------------------------------------------------------- outlines


def _discs(shape=(64, 80), radius=6, centres=((20, 20), (20, 33), (45, 50))) -> np.ndarray:
    """Discs numbered 1.. (the first two nearly touch: 13 px apart for radius 6)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ids = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
    return ids


def test_outlines_grow_into_likely_foreground_and_leave_unlikely_pixels_without_merging() -> None:
    ids = _discs()
    wider = _discs(radius=8)  # the network is sure of a disc 2 px wider than the class map's objects
    work_fg = np.where(wider > 0, 230, 10).astype(np.uint8)
    out = inst.refine_outlines(ids.copy(), work_fg, 0.4)
    # Not rescaled: outlines move by at most one pixel, into pixels above the threshold only.
    from scipy import ndimage as ndi

    for k in (1, 2, 3):
        assert ((out == k) & ~ndi.binary_dilation(ids == k, iterations=1)).sum() == 0  # 4-neighbour reach
        assert (out == k).sum() > (ids == k).sum()
    assert set(np.unique(out)) == {0, 1, 2, 3}  # none merged, none lost
    assert not (out[work_fg < 102] > 0).any()
    # Pixels below the threshold leave their object: a map sure of smaller discs shrinks them.
    smaller = np.where(_discs(radius=4) > 0, 230, 10).astype(np.uint8)
    shrunk = inst.refine_outlines(ids.copy(), smaller, 0.4)
    assert np.array_equal(shrunk > 0, _discs(radius=4) > 0)


def test_gaps_left_by_dropped_objects_are_closed_in_order_so_the_largest_id_is_the_count(monkeypatch) -> None:
    ids = _discs()
    ids[ids == 2] = 0
    out = inst.close_gaps(ids.copy())
    assert sorted(np.unique(out)) == [0, 1, 2] and np.array_equal(out == 2, ids == 3)  # 3 is the new 2
    assert np.array_equal(out == 1, ids == 1)
    same = _discs()
    assert inst.close_gaps(same) is same and sorted(np.unique(same)) == [0, 1, 2, 3]  # nothing to close
    # Band by band, as for a whole slide: the same numbers.
    monkeypatch.setattr(inst, "BAND_PIXELS", 80)
    assert np.array_equal(inst.close_gaps(ids.copy()), out)
    assert not inst.close_gaps(np.zeros((3, 4), np.int32)).any()


@pytest.mark.parametrize("work_shape", [(64, 80), (32, 40), (96, 120)])
def test_outlines_redrawn_by_bands_or_windows_equal_the_whole_image(monkeypatch, work_shape) -> None:
    """What predict (bands of rows) and a Dask region (a window with a margin) compute equals one
    pass over the whole image, whether the working scale is the input's, smaller or larger."""
    from skimage.segmentation import expand_labels

    from unet_core.scale import input_window

    rng = np.random.default_rng(3)
    ids = np.zeros((64, 80), np.int32)
    for k in range(1, 40):  # many small touching rectangles: ties for expand_labels everywhere
        y, x = rng.integers(0, 64), rng.integers(0, 80)
        ids[y : y + rng.integers(1, 7), x : x + rng.integers(1, 7)] = k
    work_fg = (rng.random(work_shape) * 255).astype(np.uint8)
    reach = inst.outline_reach(work_shape, ids.shape)
    fg = inst.foreground_at(work_fg, ids.shape, np.arange(64), np.arange(80)) > 0.4 * 255
    whole = np.where(fg, expand_labels(ids, reach), 0)
    monkeypatch.setattr(inst, "BAND_PIXELS", 80 * 2)  # bands of 2 rows, narrower than the reach
    assert np.array_equal(inst.refine_outlines(ids.copy(), work_fg, 0.4), whole)
    top, bottom, left, right = 17, 41, 23, 60
    wide = (top - reach, bottom + reach, left - reach, right + reach)
    r0, r1, c0, c1 = input_window(np.arange(wide[0], wide[1]), np.arange(wide[2], wide[3]), work_shape, ids.shape)
    part = inst.refine_outlines(ids[wide[0] : wide[1], wide[2] : wide[3]].copy(), work_fg[r0:r1, c0:c1], 0.4,
                                (wide[0], wide[2]), ids.shape, (r0, c0), work_shape)
    assert np.array_equal(part[reach:-reach, reach:-reach], whole[top:bottom, left:right])


def test_the_outline_threshold_is_automatic_for_models_with_a_diameter_and_checked() -> None:
    assert InstanceOptions().resolved(24.0).outline_threshold == inst.DEFAULT_OUTLINE_THRESHOLD
    assert InstanceOptions().resolved(None).outline_threshold == 0.0
    assert InstanceOptions(outline_threshold=0).resolved(24.0).outline_threshold == 0.0
    with pytest.raises(ValueError, match="probability"):
        InstanceOptions(outline_threshold=1.5).resolved(24.0)


def test_objects_the_network_is_unsure_of_are_dropped_and_the_others_keep_their_numbers() -> None:
    ids = _discs()
    # Disc 1 sure (0.9), disc 2 pale (0.55), disc 3 half sure, half pale: its mean decides (0.725).
    work_fg = np.zeros(ids.shape, np.uint8)
    work_fg[ids == 1] = 230
    work_fg[ids == 2] = 140
    three = ids == 3
    work_fg[three] = 140
    work_fg[three & (np.arange(80)[None, :] >= 50)] = 230
    mean3 = work_fg[three].mean() / 255
    out = inst.drop_uncertain(ids.copy(), work_fg, 0.7)
    assert set(np.unique(out)) == ({0, 1, 3} if mean3 >= 0.7 else {0, 1})
    assert np.array_equal(out == 1, ids == 1) and not (out == 2).any()  # kept whole, dropped whole
    assert set(np.unique(inst.drop_uncertain(ids.copy(), work_fg, 0.5))) == {0, 1, 2, 3}
    assert set(np.unique(inst.drop_uncertain(ids.copy(), work_fg, 0.95))) == {0}
    # The pixel rule is the one the table's sums use: mean in 1/255 steps against the threshold.
    sums = inst.foreground_sums(ids, work_fg)
    assert sums[1] == 230 * (ids == 1).sum() and sums[2] == 140 * (ids == 2).sum()
    areas = inst.object_areas(ids, 3)
    assert inst.uncertain(areas, sums, 0.7)[1:].tolist() == [False, True, mean3 < 0.7]


@pytest.mark.parametrize("work_shape", [(64, 80), (32, 40), (96, 120)])
def test_foreground_sums_of_bands_and_windows_add_up_to_the_whole_image_exactly(monkeypatch, work_shape) -> None:
    """The probability filter in blocks (Dask regions, summed) decides as the single process does."""
    from unet_core.scale import input_window

    rng = np.random.default_rng(5)
    ids = rng.integers(0, 12, (64, 80)).astype(np.int32)
    work_fg = (rng.random(work_shape) * 255).astype(np.uint8)
    whole = inst.foreground_sums(ids, work_fg)
    expected = np.bincount(ids.ravel(), np.rint(inst.foreground_at(work_fg, ids.shape, np.arange(64),
                                                                    np.arange(80))).ravel(), minlength=12)
    assert whole.dtype == np.int64 and np.array_equal(whole, expected.astype(np.int64))
    monkeypatch.setattr(inst, "BAND_PIXELS", 80 * 3)
    assert np.array_equal(inst.foreground_sums(ids, work_fg), whole)
    parts = np.zeros_like(whole)
    for top, bottom, left, right in ((0, 30, 0, 45), (0, 30, 45, 80), (30, 64, 0, 45), (30, 64, 45, 80)):
        r0, r1, c0, c1 = input_window(np.arange(top, bottom), np.arange(left, right), work_shape, ids.shape)
        part = inst.foreground_sums(ids[top:bottom, left:right], work_fg[r0:r1, c0:c1], (top, left), ids.shape,
                                    (r0, c0), work_shape)
        parts[: len(part)] += part
    assert np.array_equal(parts, whole)


def test_the_probability_filter_is_automatic_for_models_with_a_diameter_and_checked() -> None:
    assert InstanceOptions().resolved(24.0).min_object_probability == inst.DEFAULT_MIN_OBJECT_PROBABILITY["fluorescence"]
    assert InstanceOptions().resolved(None).min_object_probability == 0.0
    assert InstanceOptions(min_object_probability=0).resolved(24.0).min_object_probability == 0.0
    assert InstanceOptions(min_object_probability=0.5).resolved(None).min_object_probability == 0.5
    with pytest.raises(ValueError, match="minimum object probability"):
        InstanceOptions(min_object_probability=1.0).resolved(24.0)


def test_object_sums_carry_the_foreground_sums_through_merging_and_subsets() -> None:
    ids = _discs()
    work_fg = np.where(ids > 0, 200, 0).astype(np.uint8)
    fg = inst.foreground_sums(ids, work_fg)
    top = inst.object_sums(ids[:30], ids[:30].astype(float), (0, 0), inst.foreground_sums(ids[:30], work_fg[:30]))
    bottom = inst.object_sums(ids[30:], ids[30:].astype(float), (30, 0),
                              inst.foreground_sums(ids[30:], work_fg, (30, 0), ids.shape))
    merged = inst.ObjectSums.merged([top, bottom])
    assert merged.ids.tolist() == [1, 2, 3] and merged.sum_p.tolist() == fg[1:].tolist()
    two = merged.subset(merged.ids != 2)
    assert two.ids.tolist() == [1, 3] and two.sum_p.tolist() == [fg[1], fg[3]]
    assert inst.object_sums(ids, ids.astype(float)).sum_p.tolist() == [0, 0, 0]  # not measured


# --------------------------------------------------------------------------- merged objects


def _nuclei_field(merged: tuple[tuple[int, int], ...], extra: np.ndarray | None = None) -> np.ndarray:
    """Class labels: eight separate discs of radius 8 (the image's typical nucleus), the discs at
    ``merged`` centres drawn as one touching group, and ``extra`` foreground on top."""
    yy, xx = np.mgrid[:160, :200]
    labels = np.zeros((160, 200), np.uint8)
    for cy, cx in [(20, 20 + 24 * k) for k in range(8)] + list(merged):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 8**2] = 1
    if extra is not None:
        labels[extra] = 1
    return labels


@pytest.mark.parametrize("centres", [((80, 60), (80, 74)), ((90, 100), (90, 114), (103, 107))])
def test_touching_nuclei_drawn_as_one_object_are_split_one_piece_each(centres) -> None:
    labels = _nuclei_field(centres)
    whole = instances(labels, options=InstanceOptions(split_merged=False))
    ids = instances(labels, options=InstanceOptions(split_merged=True))
    assert whole.max() == 9 and ids.max() == 8 + len(centres)
    assert np.array_equal(ids > 0, whole > 0)  # only cut: no pixel gained or lost
    assert sorted(np.unique(ids)) == list(range(ids.max() + 1))  # still 1..n consecutive
    for cy, cx in centres:  # each nucleus's centre in its own piece, of about a disc's area
        piece = ids == ids[cy, cx]
        assert 0.7 * np.pi * 64 < piece.sum() < 1.5 * np.pi * 64
    assert len({int(ids[c]) for c in centres}) == len(centres)


def test_large_round_or_long_objects_without_a_waist_are_kept_whole() -> None:
    yy, xx = np.mgrid[:160, :200]
    big = (yy - 80) ** 2 + (xx - 60) ** 2 <= 16**2  # 4x the typical area, one nucleus
    long = ((yy - 100) / 7.0) ** 2 + ((xx - 150) / 20.0) ** 2 <= 1  # an ellipse 40 x 14 px
    for extra in (big, long):
        ids = instances(_nuclei_field((), extra), options=InstanceOptions(split_merged=True))
        assert ids.max() == 9
    # alone in its image it is the typical object itself: nothing to compare with, nothing cut
    assert instances(big.astype(np.uint8), options=InstanceOptions(split_merged=True)).max() == 1


def test_splitting_is_automatic_for_models_with_a_diameter() -> None:
    assert InstanceOptions().resolved(24.0).split_merged is True
    assert InstanceOptions().resolved(None).split_merged is False
    assert InstanceOptions(split_merged=False).resolved(24.0).split_merged is False
    assert InstanceOptions(split_merged=True).resolved(None).split_merged is True
    labels = _nuclei_field(((80, 60), (80, 74)))
    assert instances(labels, expected_diameter=16.0).max() == 10 and instances(labels).max() == 9
