"""Object scale: diameters, rescaling, diameter-aware inference, boundary restoration, group splits."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from unet_core.baseline import BaselineOptions, segment_baseline
from unet_core.datasets import SplitRule, open_dataset
from unet_core.inference import (
    InferenceOptions,
    ScaleCandidate,
    choose_scale,
    instance_ids,
    segment,
    segment_objects,
)
from unet_core.instances import InstanceOptions, instances
from unet_core.io import ImageFile
from unet_core.metrics import evaluate_pair
from unet_core.runtime import OnnxPredictor
from unet_core.scale import (
    MAX_FACTOR,
    MIN_FACTOR,
    SEARCH_STEP,
    Diameter,
    boundary_uncertainty,
    candidate_factors,
    median_diameter,
    rescale_image,
    rescale_labels,
    scaled_shape,
    search_window,
)
from unet_core.synthetic import SynthConfig, synthetic_dataset


def _discs(shape: tuple[int, int], radius: float, n: int, seed: int = 0) -> np.ndarray:
    """Non-overlapping discs of one radius, ids 1..k."""
    rng = np.random.default_rng(seed)
    ids = np.zeros(shape, np.int32)
    yy, xx = np.indices(shape)
    k = 0
    for _ in range(n * 20):
        cy, cx = rng.uniform(radius, shape[0] - radius), rng.uniform(radius, shape[1] - radius)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        if (ids[ndi.binary_dilation(disc, iterations=2)] == 0).all():
            k += 1
            ids[disc] = k
        if k == n:
            break
    return ids


@pytest.mark.parametrize("radius", [4.0, 10.0, 30.0])
def test_median_diameter_of_discs_of_known_size(radius: float) -> None:
    ids = _discs((400, 400), radius, 12)
    assert abs(median_diameter(ids) - 2 * radius) <= 0.1 * 2 * radius
    assert median_diameter(np.zeros((5, 5), np.int32)) is None
    assert median_diameter(ids, min_area=10**6) is None


def test_rescale_labels_keeps_ids_and_rescale_image_keeps_range() -> None:
    ids = _discs((100, 120), 8.0, 5)
    up = rescale_labels(ids, scaled_shape(ids.shape, 2.0))
    assert up.shape == (200, 240) and set(np.unique(up)) == set(np.unique(ids))
    assert abs(median_diameter(up) - 2 * median_diameter(ids)) < 1.0
    back = rescale_labels(up, ids.shape)
    assert (back == ids).mean() > 0.99
    image = (ids > 0).astype(np.uint8) * 200
    small = rescale_image(image, (50, 60))
    assert small.dtype == np.float32 and small.shape == (50, 60)
    assert 0.0 <= small.min() and small.max() <= 200.0 + 1e-3


def test_diameter_option_parsing() -> None:
    assert Diameter.parse("auto") == Diameter() and Diameter.parse(None).mode == "auto"
    assert Diameter.parse("off").mode == "off"
    assert Diameter.parse("17.5") == Diameter("given", 17.5) and str(Diameter.parse(20)) == "20"
    for bad in ("big", "-3", "0", "nan"):
        with pytest.raises(ValueError, match="diameter"):
            Diameter.parse(bad)


def test_boundary_uncertainty_counts_undecided_pixels_per_object_pixel() -> None:
    sharp = np.zeros((20, 20), np.float32)
    sharp[5:15, 5:15] = 1.0
    assert boundary_uncertainty(sharp) == 0.0
    blurred = ndi.gaussian_filter(sharp, 2.0)
    undecided = np.count_nonzero((blurred > 0.1) & (blurred < 0.9))
    assert boundary_uncertainty(blurred) == pytest.approx(undecided / np.count_nonzero(blurred > 0.5))
    assert boundary_uncertainty(blurred) > boundary_uncertainty(ndi.gaussian_filter(sharp, 0.7)) > 0
    assert boundary_uncertainty(np.zeros((4, 4))) == math.inf


def test_candidate_factors_are_a_sqrt2_grid_through_one_within_the_bounds() -> None:
    grid = candidate_factors()
    assert grid[0] == pytest.approx(MIN_FACTOR) and grid[-1] == pytest.approx(MAX_FACTOR)
    assert any(f == pytest.approx(1.0) for f in grid)
    np.testing.assert_allclose(np.diff(np.log(grid)), math.log(SEARCH_STEP))
    assert max(candidate_factors(limit=1.5)) == pytest.approx(SEARCH_STEP)


def test_the_search_settles_on_the_most_certain_scale_of_the_trained_size_else_the_most_certain() -> None:
    canonical = 24.0
    # In the band (16..36 px): the most certain of those, though an out-of-band scale is more certain.
    tried = [ScaleCandidate(1.0, 24.0, 1.7), ScaleCandidate(0.7, 18.0, 1.5), ScaleCandidate(0.5, 14.0, 1.4)]
    assert choose_scale(tried, canonical).factor == 0.7
    # None in the band (a stained image with 3 nuclei: texture at every scale): the most certain,
    # not the 4x blow-up whose specks happen to measure nearest 24 px.
    tried = [ScaleCandidate(1.0, 14.9, 2.7), ScaleCandidate(1.41, 13.3, 3.6), ScaleCandidate(4.0, 15.7, 5.1)]
    assert choose_scale(tried, canonical).factor == 1.0
    # Nothing found anywhere: the input's own scale.
    tried = [ScaleCandidate(0.5, None, math.inf), ScaleCandidate(1.0, None, math.inf), ScaleCandidate(2.0, None, math.inf)]
    assert choose_scale(tried, canonical).factor == 1.0


def test_search_window_finds_the_objects_in_a_large_empty_image() -> None:
    gray = np.random.default_rng(0).normal(10, 0.5, (1500, 1200)).astype(np.float32)
    gray[1000:1200, 150:350] += 50 * (_discs((200, 200), 12, 20) > 0)
    rows, cols = search_window(gray, 512)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (512, 512)
    assert rows.start <= 1000 and rows.stop >= 1200 and cols.start <= 150 and cols.stop >= 350
    small = search_window(gray[:300, :400], 512)
    assert small == (slice(0, 300), slice(0, 400))


def test_expand_restores_the_separation_line_and_never_merges() -> None:
    """Two objects cut apart by a one-pixel line come back to their true extent, still two."""
    truth = np.zeros((40, 60), np.int32)
    truth[5:35, 5:30] = 1
    truth[5:35, 30:55] = 2
    # What a network trained with separation lines predicts: each object one pixel smaller all round.
    labels = np.zeros(truth.shape, np.uint8)
    for k in (1, 2):
        labels[ndi.binary_erosion(truth == k)] = 1
    ids = instances(labels, options=InstanceOptions(min_size=0, expand=1))
    shrunk = instances(labels, options=InstanceOptions(min_size=0, expand=0))
    assert ids.max() == shrunk.max() == 2

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return (a & b).sum() / (a | b).sum()

    for k in (1, 2):
        obj = truth == k
        assert iou(ids == ids[obj].max(), obj) > 0.98 > iou(shrunk == shrunk[obj].max(), obj) + 0.05
    rng = np.random.default_rng(3)
    for _ in range(20):  # random crowded masks: expansion keeps every object and every pixel
        mask = ndi.binary_opening(rng.random((80, 80)) > 0.45)
        before = instances(mask.astype(np.uint8), options=InstanceOptions(min_size=0, expand=0))
        after = instances(mask.astype(np.uint8), options=InstanceOptions(min_size=0, expand=2))
        assert after.max() == before.max()
        assert (after[before > 0] == before[before > 0]).all()


def test_automatic_options_follow_the_models_diameter() -> None:
    auto = InstanceOptions().resolved(24.0)
    assert auto.expand == 0 and auto.min_size == round(0.1 * math.pi * 144)
    assert InstanceOptions().resolved(None) == InstanceOptions(0, False, False, 0, 0.0, 0.0, False)
    assert InstanceOptions(min_size=3, expand=0).resolved(24.0).min_size == 3


def _with_diameter(path: Path, diameter: float) -> OnnxPredictor:
    predictor = OnnxPredictor(path, "cpu")
    predictor.meta = dataclasses.replace(predictor.meta, diameter=diameter)
    return predictor


def test_rescaled_inference_is_tile_independent_and_on_the_input_grid(tiny_model, cells_image) -> None:
    predictor = _with_diameter(tiny_model[1], 24.0)
    image = ImageFile("cells.png", cells_image((230, 270))[None, ..., None])
    results = [segment(image, predictor, InferenceOptions(tile=t, keep_probs=True, diameter=12.0))
               for t in (100, 196)]
    for seg in results:
        assert seg.factor == 2.0 and seg.diameter == 12.0 and seg.diameter_source == "given"
        assert seg.labels.shape == (1, 230, 270) and seg.probs.shape == (1, 2, 230, 270)
        assert seg.work_labels.shape == (1, 460, 540)
    assert np.array_equal(results[0].labels, results[1].labels)
    assert np.abs(results[0].probs - results[1].probs).max() < 1e-5
    # The foreground map that outlines are redrawn from: working scale, a byte per pixel, tile-independent.
    assert results[0].work_foreground.shape == (1, 460, 540) and results[0].work_foreground.dtype == np.uint8
    assert np.array_equal(results[0].work_foreground, results[1].work_foreground)
    off = segment(image, predictor, InferenceOptions(tile=100, diameter="off"))
    assert off.factor == 1.0 and off.diameter is None


def test_models_without_a_diameter_ignore_the_option(tiny_model, cells_image) -> None:
    predictor = OnnxPredictor(tiny_model[1], "cpu")
    image = ImageFile("cells.png", cells_image((120, 130))[None, ..., None])
    seg = segment(image, predictor, InferenceOptions(tile=100, diameter=50.0))
    assert seg.factor == 1.0 and seg.diameter_source == "model has none"


def test_segment_objects_maps_instances_back_to_the_input_grid(tiny_model, cells_image) -> None:
    predictor = _with_diameter(tiny_model[1], 24.0)
    image = ImageFile("cells.png", cells_image((150, 170))[None, ..., None])
    # (every object kept: the random network is unsure of all of them)
    seg, ids = segment_objects(image, predictor, InferenceOptions(tile=196, diameter=48.0),
                               InstanceOptions(min_object_probability=0))
    assert seg.factor == 0.5 and ids.shape == (1, 150, 170) and ids.dtype == np.int32
    assert ids.max() > 0 and set(np.unique(ids[0])) <= set(range(int(ids.max()) + 1))
    # By default the outlines are redrawn on the input grid: the same objects, moved by at most
    # one working pixel (2 input pixels here).
    blocky = instance_ids(seg, predictor.meta, InstanceOptions(outline_threshold=0, min_object_probability=0),
                          (150, 170))
    assert not np.array_equal(ids, blocky)
    kept = ids[0] > 0
    assert np.array_equal(ids[0][kept], expand_labels(blocky[0], 2)[kept])


def test_group_split_holds_out_whole_groups() -> None:
    groups = ["a", "b", "a", "c", "b", "a", "c", "c", "a", "b"]
    rule = SplitRule("every_kth", 5, ("c",))
    val = rule.indices(10, "val", groups)
    assert rule.indices(10, "val_random", groups) == [0, 5]
    assert rule.indices(10, "val_groups", groups) == [3, 6, 7]
    assert val == [0, 3, 5, 6, 7]
    assert rule.indices(10, "train", groups) == [1, 2, 4, 8, 9]
    assert SplitRule.from_dict(rule.to_dict()) == rule
    assert SplitRule("every_kth", 5).to_dict() == {"kind": "every_kth", "k": 5}  # old metadata unchanged
    with pytest.raises(ValueError, match="groups"):
        rule.indices(10, "val")


def test_index_csv_gives_categories_and_groups(tmp_path: Path) -> None:
    from PIL import Image

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for name, size in (("x1", (20, 30)), ("x2", (20, 30)), ("x3", (40, 40))):
        Image.fromarray(np.zeros(size, np.uint8)).save(tmp_path / "images" / f"{name}.png")
        mask = np.zeros(size, np.uint8)
        mask[2:6, 2:6] = 1
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    (tmp_path / "index.csv").write_text("id,category\nx1,color\nx2,color\nx3,gray\n")
    ds = open_dataset(tmp_path)
    assert ds.groups == ["color 20x30", "color 20x30", "gray 40x40"]
    assert [s.category for s in ds.samples] == ["color", "color", "gray"]
    assert ds.split_indices("val_groups", SplitRule("every_kth", 5, ("gray 40x40",))) == [2]


@pytest.mark.slow
def test_baseline_finds_synthetic_cells_in_either_polarity() -> None:
    """Bright-on-dark and the same image inverted (dark-on-light) give the same objects."""
    ds = synthetic_dataset(2, SynthConfig(touching_fraction=0.2), seed=5)
    for i in range(len(ds)):
        image = ds.load_image(i)
        ids = segment_baseline(image)
        metrics = evaluate_pair(ids, ds.load_instances(i), "instance")
        assert metrics["foreground_iou"] > 0.6 and metrics["dsb_ap"] > 0.2, metrics
        inverted = segment_baseline(np.iinfo(image.dtype).max - image)
        assert (inverted > 0).mean() == pytest.approx((ids > 0).mean(), abs=0.02)
    plain = segment_baseline(ds.load_image(0), BaselineOptions(method="otsu"))
    assert 0 < plain.max() <= segment_baseline(ds.load_image(0)).max()


def test_merges_and_splits_are_counted() -> None:
    from unet_core.metrics import merges_and_splits

    gt = np.zeros((20, 40), np.int32)
    gt[2:10, 2:10], gt[2:10, 10:18], gt[12:18, 22:38] = 1, 2, 3
    pred = np.zeros_like(gt)
    pred[2:10, 2:18] = 1  # swallows 1 and 2
    pred[12:18, 22:30], pred[12:18, 30:38] = 2, 3  # cuts 3 in two
    assert merges_and_splits(pred, gt) == (1, 1)
    assert merges_and_splits(gt, gt) == (0, 0)
    assert merges_and_splits(np.zeros_like(gt), gt) == (0, 0)


@pytest.mark.parametrize(("shape", "out"), [((100, 120), (37, 50)), ((64, 80), (150, 200)),
                                            ((50, 60, 3), (20, 90)), ((1, 30), (3, 10)), ((200, 180), (210, 100))])
def test_resize_is_skimages_and_any_window_of_it_is_bit_for_bit_the_same(shape, out) -> None:
    from skimage.transform import resize

    from unet_core.scale import input_span, resize_at

    image = np.random.default_rng(3).random(shape).astype(np.float32)
    shrink = out[0] < shape[0] or out[1] < shape[1]
    reference = resize(image, out + shape[2:], order=1, mode="reflect", anti_aliasing=shrink, preserve_range=True)
    whole = rescale_image(image, out)
    assert whole.dtype == np.float32 and np.abs(whole - reference).max() < 1e-6
    rows, cols = np.arange(max(0, out[0] - 7), out[0]), np.array([0, 1, 2]) % out[1]
    (r0, r1), (c0, c1) = (input_span(rows, shape[0], out[0], shrink), input_span(cols, shape[1], out[1], shrink))
    window = resize_at(image[r0:r1, c0:c1], out, rows, cols, origin=(r0, c0), full_shape=shape[:2])
    assert np.array_equal(window, whole[np.ix_(rows, cols)])  # what a tile or a Dask block computes
