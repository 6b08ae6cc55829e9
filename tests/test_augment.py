"""Tests of unet_core.augment (paper Sec. 3.1 augmentation)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from unet_core.augment import (
    AugmentConfig,
    add_cytoplasm,
    appearance,
    apply_warp,
    augment_tile,
    bicubic_upsample,
    elastic_displacement,
    gray_value,
    identity_coords,
    sample_warp,
)

# Every geometric and gray-value part off, master switch on.
NO_AUGMENT = AugmentConfig(
    elastic=False, rotate=False, flip=False, shift=False,
    gamma=False, contrast=False, brightness=False, noise=False,
)


def _inputs(shape: tuple[int, int] = (96, 112), channels: int | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    image_shape = shape if channels is None else (*shape, channels)
    image = rng.random(image_shape, dtype=np.float32)
    labels = rng.choice(np.array([0, 5, 900]), size=shape)
    weights = rng.random(shape, dtype=np.float32) * 10
    return image, labels, weights


def _block_labels(shape: tuple[int, int], block: int, seed: int) -> np.ndarray:
    """Instance-like label image: constant blocks so that most pixels are far from edges."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(np.array([0, 5, 900]), size=(shape[0] // block + 1, shape[1] // block + 1))
    return np.kron(coarse, np.ones((block, block), dtype=coarse.dtype))[: shape[0], : shape[1]]


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(enabled=False),
        NO_AUGMENT,
        dataclasses.replace(NO_AUGMENT, elastic=True, elastic_sigma=0.0),
    ],
    ids=["disabled", "all-parts-off", "zero-displacement"],
)
@pytest.mark.parametrize("channels", [None, 3])
def test_identity_is_exact_crop(cfg: AugmentConfig, channels: int | None) -> None:
    image, labels, weights = _inputs(channels=channels)
    center, tile = (40, 50), (31, 44)
    top, left = center[0] - tile[0] // 2, center[1] - tile[1] // 2
    out = augment_tile(image, labels, weights, tile, center, cfg, np.random.default_rng(0))
    crop = (slice(top, top + tile[0]), slice(left, left + tile[1]))
    np.testing.assert_array_equal(out[0], image[crop])
    np.testing.assert_array_equal(out[1], labels[crop])
    np.testing.assert_array_equal(out[2], weights[crop])
    assert out[0].dtype == image.dtype and out[1].dtype == labels.dtype


def test_identity_at_border_is_reflect_padded_crop() -> None:
    image, labels, _ = _inputs()
    tile = (40, 40)
    center = (5, image.shape[1] - 3)  # the tile reaches past the top and right border
    out_image, out_labels, out_weights = augment_tile(
        image, labels, None, tile, center, AugmentConfig(enabled=False), np.random.default_rng(0)
    )
    pad = 40
    top, left = center[0] - tile[0] // 2 + pad, center[1] - tile[1] // 2 + pad
    crop = (slice(top, top + tile[0]), slice(left, left + tile[1]))
    # np.pad "symmetric" is scipy.ndimage's "reflect" (half-sample symmetric).
    np.testing.assert_array_equal(out_image, np.pad(image, pad, mode="symmetric")[crop])
    np.testing.assert_array_equal(out_labels, np.pad(labels, pad, mode="symmetric")[crop])
    assert out_weights is None


def test_output_crop_is_the_centre_of_the_full_tile_and_outside_weighs_zero() -> None:
    """What the trainer asks for: labels and weights on the valid output crop only, mirrored
    context, and no weight where the source lies past the image border."""
    image, labels, weights = _inputs()
    center = (0.0, 60.0)  # the output crop's top half lies past the image
    cfg = AugmentConfig(rotate=False, shift=False)  # elastic and flips: displacements of ~10 px
    full = augment_tile(image, labels, weights, (64, 64), center, cfg, np.random.default_rng(3), mode="mirror")
    crop = augment_tile(image, labels, weights, (64, 64), center, cfg, np.random.default_rng(3),
                        output_shape=(24, 24), mode="mirror", zero_outside=True)
    np.testing.assert_array_equal(crop[0], full[0])  # the input tile is the same
    np.testing.assert_array_equal(crop[1], full[1][20:44, 20:44])
    outside = crop[2] == 0
    assert outside.any() and not outside.all()
    np.testing.assert_allclose(crop[2][~outside], full[2][20:44, 20:44][~outside], rtol=1e-6)
    with pytest.raises(ValueError, match="must fit"):
        augment_tile(image, labels, weights, (64, 64), center, AugmentConfig(), np.random.default_rng(3),
                     output_shape=(65, 10))


def test_labels_keep_input_label_set() -> None:
    image, labels, weights = _inputs()
    for step in range(5):
        rng = np.random.default_rng([3, step])
        _, out_labels, out_weights = augment_tile(
            image, labels, weights, (64, 64), (48, 56), AugmentConfig(), rng
        )
        assert set(np.unique(out_labels)) <= {0, 5, 900}
        # Linear interpolation stays within the input range.
        assert out_weights.min() >= weights.min() and out_weights.max() <= weights.max()


def test_same_warp_for_image_labels_and_weights() -> None:
    labels = _block_labels((96, 112), block=12, seed=1)
    as_float = labels.astype(np.float32)
    cfg = AugmentConfig(image_order=1, gamma=False, contrast=False, brightness=False)
    image_tile, labels_tile, weights_tile = augment_tile(
        as_float, labels, as_float, (64, 64), (48, 56), cfg, np.random.default_rng(11)
    )
    # Image and weights with the same order: identical coordinates give identical output.
    np.testing.assert_array_equal(image_tile, weights_tile)
    # Labels against the same values as float through order 0: identical.
    coords = sample_warp((64, 64), (48, 56), cfg, np.random.default_rng(11))
    np.testing.assert_array_equal(apply_warp(as_float, coords, 0), labels_tile.astype(np.float32))
    # Linear image against nearest labels: they agree wherever the labels are locally
    # constant; disagreements may only sit at label edges.
    agree = np.abs(image_tile - labels_tile) < 1e-3
    near_edge = ndi.maximum_filter(labels_tile, size=5) != ndi.minimum_filter(labels_tile, size=5)
    assert agree.mean() > 0.8
    assert np.all(agree | near_edge)


def test_deterministic_for_seed_and_different_across_seeds() -> None:
    image, labels, weights = _inputs()

    def run(seed: list[int]) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng(seed)
        return augment_tile(image, labels, weights, (64, 64), (48, 56), AugmentConfig(), rng)

    first, again, other = run([7, 3]), run([7, 3]), run([7, 4])
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[2], other[2])


def test_coarse_displacement_statistics() -> None:
    # With 21 px and a 3x3 grid the grid points sit exactly on pixels 0, 10 and 20.
    rng = np.random.default_rng(0)
    draws = [elastic_displacement((21, 21), grid=3, sigma=10.0, rng=rng) for _ in range(2000)]
    at_grid = np.stack(draws)[:, :, ::10, ::10]
    assert at_grid.shape == (2000, 2, 3, 3)
    assert abs(at_grid.mean()) < 0.3
    assert abs(at_grid.std() - 10.0) < 0.3
    # Interpolated in between, the field is smooth: neighbours differ far less than sigma.
    field = elastic_displacement((572, 572), rng=rng)
    assert np.abs(np.diff(field, axis=1)).max() < 1.0


@pytest.mark.parametrize(("grid", "shape"), [(3, (21, 41)), (4, (31, 61)), (3, (3, 3))])
def test_bicubic_upsample_passes_through_grid_values(grid: int, shape: tuple[int, int]) -> None:
    coarse = np.random.default_rng(grid).normal(0.0, 10.0, size=(2, grid, grid))
    dense = bicubic_upsample(coarse, shape)
    rows = np.linspace(0, shape[0] - 1, grid).astype(int)
    cols = np.linspace(0, shape[1] - 1, grid).astype(int)
    assert dense.shape == (2, *shape)
    np.testing.assert_allclose(dense[:, rows][:, :, cols], coarse, atol=1e-10)
    # Constant grid values give a constant field (weights form a partition of unity).
    np.testing.assert_allclose(bicubic_upsample(np.full((grid, grid), 4.0), shape), 4.0, atol=1e-10)


@pytest.mark.parametrize("tile", [(40, 40), (41, 41)])
def test_rotation_by_90_degrees_equals_rot90(tile: tuple[int, int]) -> None:
    image, labels, weights = _inputs(channels=2)
    center = (48, 56)
    cfg = dataclasses.replace(NO_AUGMENT, rotate=True, rotation_range=(90.0, 90.0))
    out = augment_tile(image, labels, weights, tile, center, cfg, np.random.default_rng(0))
    top, left = center[0] - tile[0] // 2, center[1] - tile[1] // 2
    crop = (slice(top, top + tile[0]), slice(left, left + tile[1]))
    np.testing.assert_allclose(out[0], np.rot90(image[crop]), atol=1e-5)
    np.testing.assert_array_equal(out[1], np.rot90(labels[crop]))
    np.testing.assert_allclose(out[2], np.rot90(weights[crop]), atol=1e-5)


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("mode", ["reflect", "mirror"])
@pytest.mark.parametrize(
    "center",
    [(60, 70), (3, 3), (150, 200), (-5, 100)],
    ids=["inside", "corner", "far-corner", "outside"],
)
def test_cropped_prefilter_equals_whole_image(
    order: int, mode: str, center: tuple[int, int]
) -> None:
    # float64 input, so the comparison measures the cropped prefilter, not rounding.
    image = np.random.default_rng(5).random((160, 210))
    coords = sample_warp((48, 48), center, AugmentConfig(), np.random.default_rng(9))
    expected = ndi.map_coordinates(image, coords, order=order, mode=mode)
    np.testing.assert_allclose(apply_warp(image, coords, order, mode), expected, rtol=0, atol=1e-5)


def test_cropped_prefilter_channels_last() -> None:
    image = np.random.default_rng(6).random((80, 90, 3)).astype(np.float32)
    coords = sample_warp((40, 40), (4, 80), AugmentConfig(), np.random.default_rng(2))
    out = apply_warp(image, coords, 3)
    assert out.shape == (40, 40, 3) and out.dtype == np.float32
    for c in range(3):
        expected = ndi.map_coordinates(image[..., c], coords, order=3, mode="reflect")
        np.testing.assert_allclose(out[..., c], expected, rtol=0, atol=1e-5)


def test_identity_coords_layout() -> None:
    coords = identity_coords((3, 4), (10, 20))
    np.testing.assert_array_equal(coords[0, :, 0], [9, 10, 11])
    np.testing.assert_array_equal(coords[1, 0], [18, 19, 20, 21])


@pytest.mark.parametrize("part", ["gamma", "contrast", "brightness", "all"])
@pytest.mark.parametrize("offset", [0.0, -0.5], ids=["unit-range", "zero-mean"])
def test_gray_value_keeps_shape_dtype_and_order(part: str, offset: float) -> None:
    rng = np.random.default_rng(4)
    image = (rng.random((32, 48, 2)) + offset).astype(np.float32)
    switches = {name: part in (name, "all") for name in ("gamma", "contrast", "brightness")}
    cfg = dataclasses.replace(AugmentConfig(), noise=False, **switches)
    for step in range(10):
        out = gray_value(image, cfg, np.random.default_rng([4, step]))
        assert out.shape == image.shape and out.dtype == np.float32
        ranked = out.ravel()[np.argsort(image.ravel(), kind="stable")]
        assert np.all(np.diff(ranked) >= 0)
    assert not np.array_equal(out, image)


def test_gray_value_noise_changes_image_and_parts_are_switchable() -> None:
    image = np.random.default_rng(8).random((32, 32)).astype(np.float32)
    noisy = gray_value(image, dataclasses.replace(NO_AUGMENT, noise=True), np.random.default_rng(0))
    assert noisy.dtype == np.float32 and 0 < np.abs(noisy - image).std() < 0.1
    np.testing.assert_array_equal(gray_value(image, NO_AUGMENT, np.random.default_rng(0)), image)


def test_blur_smooths_each_channel_alone_and_keeps_the_mean() -> None:
    rng = np.random.default_rng(3)
    image = np.zeros((40, 40, 2), np.float32)
    image[::2, :, 0] = 1.0  # fine stripes in channel 0 only
    blur = dataclasses.replace(NO_AUGMENT, blur=True, blur_sigma_range=(1.0, 1.0))
    out = appearance(image, blur, rng)
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.abs(np.diff(out[..., 0], axis=0)).max() < 0.2 < np.abs(np.diff(image[..., 0], axis=0)).max()
    np.testing.assert_array_equal(out[..., 1], 0.0)  # no bleeding across channels
    assert out[..., 0].mean() == pytest.approx(image[..., 0].mean(), abs=1e-5)
    np.testing.assert_array_equal(appearance(image, NO_AUGMENT, rng), image)
    np.testing.assert_array_equal(appearance(image, dataclasses.replace(blur, enabled=False), rng), image)


def test_config_rejects_invalid_values() -> None:
    with pytest.raises(ValueError):
        AugmentConfig(blur_sigma_range=(-1.0, 1.0))
    with pytest.raises(ValueError):
        AugmentConfig(elastic_grid=1)
    with pytest.raises(ValueError):
        AugmentConfig(image_order=2)
    with pytest.raises(ValueError):
        AugmentConfig(gamma_range=(1.2, 0.8))
    with pytest.raises(ValueError):
        apply_warp(np.zeros((4, 4)), identity_coords((2, 2), (2, 2)), 1, mode="wrap")


def _nuclei_image(shape: tuple[int, int] = (160, 160), d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs (value 1) of diameter ``d`` on a dark background (0), in a (H, W, 1) image."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    nuclei = np.zeros(shape, bool)
    for cy, cx in ((40, 40), (40, 110), (110, 70)):
        nuclei |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (d / 2) ** 2
    return nuclei.astype(np.float32)[..., None], nuclei


def test_cytoplasm_is_painted_round_nuclei_below_their_level_and_not_far_away() -> None:
    image, nuclei = _nuclei_image()
    before = image.copy()
    out = add_cytoplasm(image, nuclei, 16.0, np.random.default_rng(0))
    assert np.array_equal(image, before), "the input must not be modified"
    dist = ndi.distance_transform_edt(~nuclei)
    ring = (dist > 2) & (dist < 4)
    far = dist > 16 * 1.5 * 2.5  # past the largest reach with its ragged outline and blur
    assert out[ring, 0].mean() > 0.05, "a cell body must show next to each nucleus"
    assert out[ring, 0].max() < 1.0, "a cell body stays below its nucleus"
    assert np.array_equal(out[far], image[far]), "the background far from any nucleus is untouched"
    # The nuclei keep their contrast over their own cell body: each sits on it, brighter by its own signal.
    assert np.median(out[nuclei, 0]) - np.median(out[ring, 0]) > 0.5


def test_cytoplasm_stays_in_its_window_and_needs_nuclei() -> None:
    image, nuclei = _nuclei_image()
    window = (slice(0, 80), slice(0, 80))
    out = add_cytoplasm(image, nuclei, 16.0, np.random.default_rng(1), window)
    outside = np.ones(nuclei.shape, bool)
    outside[window] = False
    assert np.array_equal(out[outside], image[outside])
    assert not np.array_equal(out[window], image[window])
    empty = np.zeros_like(nuclei)
    assert np.array_equal(add_cytoplasm(image, empty, 16.0, np.random.default_rng(1)), image)


def test_cytoplasm_is_a_function_of_the_generator() -> None:
    image, nuclei = _nuclei_image()
    a = add_cytoplasm(image, nuclei, 16.0, np.random.default_rng(3))
    b = add_cytoplasm(image, nuclei, 16.0, np.random.default_rng(3))
    c = add_cytoplasm(image, nuclei, 16.0, np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
