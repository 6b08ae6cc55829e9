"""Data augmentation for U-Net training tiles.

Implements the augmentation of Ronneberger et al., "U-Net: Convolutional Networks
for Biomedical Image Segmentation" (MICCAI 2015), Sec. 3.1: shift and rotation
invariance, robustness to gray-value variations, and above all random elastic
deformations -- "random displacement vectors on a coarse 3 by 3 grid", sampled
"from a Gaussian distribution with 10 pixels standard deviation", with
"per-pixel displacements [...] computed using bicubic interpolation".

All geometric parts are composed into one coordinate map that is applied to the
image, the label map and the weight map alike, so the three stay aligned. The map
is expressed in source-image coordinates: a tile is sampled out of the whole
(larger) image, so the overlap-tile context of the input tile is real image data
and reflection only happens at the true image border.

Conventions: arrays are (H, W) or channels-last (H, W, C); coordinates are
(row, col). A tile of shape (th, tw) at ``center`` (cy, cx) covers, without
augmentation, ``image[cy - th // 2 : cy - th // 2 + th, cx - tw // 2 : cx - tw // 2 + tw]``
(the MONAI ``SpatialCrop`` convention); rotations and flips act about the tile's
geometric centre so that a 90 degree rotation maps the tile's pixel grid onto itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "AugmentConfig",
    "add_cytoplasm",
    "appearance",
    "apply_warp",
    "augment_tile",
    "bicubic_upsample",
    "elastic_displacement",
    "gray_value",
    "identity_coords",
    "sample_warp",
]

# Largest pole magnitude of the B-spline prefilter of each order (Unser 1999). The
# prefilter is an IIR filter whose influence decays like |pole| ** distance.
_SPLINE_POLES = {2: 0.171572875, 3: 0.267949192, 4: 0.361341226, 5: 0.430575347}
# Relative influence of the pixels beyond the cropped source region that is tolerated.
_PREFILTER_TOLERANCE = 1e-8
_SUPPORTED_MODES = ("reflect", "mirror")


@dataclass(frozen=True)
class AugmentConfig:
    """All augmentation parameters; defaults follow the paper where it gives values.

    Args:
        enabled: master switch; ``False`` returns the plain crop.
        elastic: apply the elastic deformation (paper Sec. 3.1).
        elastic_grid: number of coarse grid points per axis (paper: 3).
        elastic_sigma: standard deviation of the coarse displacements in pixels (paper: 10).
        rotate: apply a random rotation about the tile centre.
        rotation_range: (min, max) rotation angle in degrees, sampled uniformly.
        flip: mirror each axis independently with probability 0.5.
        scale: zoom the tile by a random factor (not in the paper; off by default): a model
            trained on images rescaled to one canonical object diameter then tolerates the
            error of an estimated diameter.
        scale_range: (min, max) zoom factor, sampled log-uniformly.
        shift: shift the tile by a random offset.
        max_shift: maximal shift in pixels per axis, sampled uniformly in [-max_shift, max_shift].
        image_order: spline order for the image, 3 (cubic) or 1 (linear).
        gamma: apply a random gamma curve on the tile's intensity range.
        gamma_range: (min, max) gamma, sampled log-uniformly so that g and 1/g are equally likely.
        contrast: scale intensities about the tile mean.
        contrast_range: (min, max) contrast factor, sampled uniformly.
        brightness: add a random offset.
        brightness_range: (min, max) offset as a fraction of the tile's intensity range.
        noise: add Gaussian noise (off by default: the paper does not use it).
        noise_std: noise standard deviation as a fraction of the tile's intensity range.
        blur: Gaussian blur of the image (off by default, not in the paper): out-of-focus and
            low-resolution acquisitions, and images shrunk to the canonical diameter, are
            smoother than the training images.
        blur_sigma_range: (min, max) blur standard deviation in pixels, sampled uniformly.
    """

    enabled: bool = True
    elastic: bool = True
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    rotate: bool = True
    rotation_range: tuple[float, float] = (0.0, 360.0)
    flip: bool = True
    scale: bool = False
    scale_range: tuple[float, float] = (0.8, 1.25)
    shift: bool = True
    max_shift: float = 16.0
    image_order: int = 3
    gamma: bool = True
    gamma_range: tuple[float, float] = (0.8, 1.25)
    contrast: bool = True
    contrast_range: tuple[float, float] = (0.8, 1.25)
    brightness: bool = True
    brightness_range: tuple[float, float] = (-0.1, 0.1)
    noise: bool = False
    noise_std: float = 0.03
    blur: bool = False
    blur_sigma_range: tuple[float, float] = (0.0, 1.5)

    def __post_init__(self) -> None:
        if self.elastic_grid < 2:
            raise ValueError(f"elastic_grid must be >= 2, got {self.elastic_grid}")
        if self.elastic_sigma < 0 or self.max_shift < 0 or self.noise_std < 0:
            raise ValueError("elastic_sigma, max_shift and noise_std must be >= 0")
        if self.image_order not in (1, 3):
            raise ValueError(f"image_order must be 1 or 3, got {self.image_order}")
        if self.blur_sigma_range[0] < 0:
            raise ValueError(f"blur_sigma_range must be >= 0, got {self.blur_sigma_range}")
        for name in ("rotation_range", "gamma_range", "contrast_range", "brightness_range", "scale_range",
                     "blur_sigma_range"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be (min, max), got {(low, high)}")
        if self.gamma_range[0] <= 0 or self.contrast_range[0] <= 0 or self.scale_range[0] <= 0:
            raise ValueError("gamma_range, contrast_range and scale_range must be positive")


# --------------------------------------------------------------------------- geometry


def _affine_coords(
    tile_shape: Sequence[int], center: Sequence[float], matrix: np.ndarray
) -> np.ndarray:
    """Source coordinates of the tile's pixels under ``matrix`` about the tile's geometric centre.

    The pivot is the geometric centre (not ``center``) so that a 90 degree rotation
    maps the tile's pixel grid onto itself also for even tile sizes. Built from 1-D
    offsets by broadcasting, which avoids a meshgrid and a 2x2 product per pixel.
    """
    th, tw = (int(s) for s in tile_shape)
    rows = np.arange(th) - (th - 1) / 2
    cols = np.arange(tw) - (tw - 1) / 2
    pivot = np.array([center[0] - th // 2, center[1] - tw // 2]) + [(th - 1) / 2, (tw - 1) / 2]
    return (
        pivot[:, None, None]
        + matrix[:, 0, None, None] * rows[None, :, None]
        + matrix[:, 1, None, None] * cols[None, None, :]
    )


def identity_coords(tile_shape: Sequence[int], center: Sequence[float]) -> np.ndarray:
    """Coordinate map of the unaugmented tile.

    Args:
        tile_shape: (th, tw) of the tile.
        center: (cy, cx) tile centre in source-image coordinates.

    Returns:
        float64 array (2, th, tw); ``coords[:, i, j] = (cy - th // 2 + i, cx - tw // 2 + j)``
        (exactly, for half-integer or integer ``center``).
    """
    return _affine_coords(tile_shape, center, np.eye(2))


@lru_cache(maxsize=32)
def _bicubic_weights(n_grid: int, length: int) -> np.ndarray:
    """Interpolation matrix (length, n_grid) of 1-D cubic-spline upsampling.

    Spline interpolation is linear in the data, so column k is the upsampled unit
    vector e_k; upsampling then is a small matrix product instead of a spline
    evaluation per pixel. The matrix is cached because the tile shape is fixed.
    """
    positions = np.linspace(0.0, n_grid - 1.0, length)
    basis = np.eye(n_grid)
    weights = np.stack(
        [ndi.map_coordinates(e, positions[None], order=3, mode="mirror") for e in basis],
        axis=1,
    )
    weights.setflags(write=False)
    return weights


def bicubic_upsample(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Upsample coarse grid values to a dense field by bicubic interpolation.

    Uses the interpolating cubic B-spline (scipy's order-3 spline with prefilter)
    rather than Keys' cubic convolution: both are bicubic and pass exactly through
    the grid values, but the spline is C2-smooth (Keys only C1), so the deformation
    field has no curvature jumps at the grid lines. Grid points are spaced evenly
    with the first and last at the field's corners (``grid_mode=False`` alignment),
    so a 3x3 grid has its points at the tile corners, edge midpoints and centre.
    ``mode="mirror"`` extends the 3-point signal symmetrically, giving zero slope at
    the tile border rather than an extrapolated trend.

    Args:
        coarse: (..., g_rows, g_cols) grid values.
        shape: (rows, cols) of the output field.

    Returns:
        float64 array (..., rows, cols).
    """
    w_rows = _bicubic_weights(coarse.shape[-2], int(shape[0]))
    w_cols = _bicubic_weights(coarse.shape[-1], int(shape[1]))
    return w_rows @ coarse @ w_cols.T


def elastic_displacement(
    tile_shape: Sequence[int],
    grid: int = 3,
    sigma: float = 10.0,
    *,
    rng: np.random.Generator,
) -> np.ndarray:
    """Random smooth displacement field of the paper's elastic deformation.

    Args:
        tile_shape: (th, tw) of the field.
        grid: coarse grid points per axis (paper: 3).
        sigma: standard deviation of the coarse displacements in pixels (paper: 10).
        rng: random generator.

    Returns:
        float64 array (2, th, tw) of (row, col) displacements in pixels.
    """
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    return bicubic_upsample(coarse, tile_shape)


def _rotation_flip_matrix(cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """2x2 matrix mapping tile offsets (from the tile centre) to source offsets."""
    matrix = np.eye(2)
    if cfg.flip:
        matrix = np.diag(rng.choice([-1.0, 1.0], size=2))
    if cfg.rotate:
        theta = math.radians(rng.uniform(*cfg.rotation_range))
        cos, sin = math.cos(theta), math.sin(theta)
        # Positive angles rotate the content counter-clockwise, like np.rot90.
        matrix = np.array([[cos, sin], [-sin, cos]]) @ matrix
    if cfg.scale:
        # Source offsets grow with the factor: a factor above 1 shows more of the image (zoom out).
        low, high = np.log(cfg.scale_range)
        matrix = float(np.exp(rng.uniform(low, high))) * matrix
    return matrix


def sample_warp(
    tile_shape: Sequence[int],
    center: Sequence[float],
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sample the composed geometric augmentation of one tile.

    Output pixel (i, j) reads the source image at
    ``pivot + A @ (p_ij - pivot) + shift + elastic_ij`` where ``pivot`` is the tile's
    geometric centre, ``A`` a flip followed by a rotation, and ``elastic`` the
    paper's displacement field.

    Args:
        tile_shape: (th, tw) of the (input) tile.
        center: (cy, cx) tile centre in source-image coordinates (see module docstring).
        cfg: augmentation parameters.
        rng: random generator, e.g. ``np.random.default_rng([seed, step])``.

    Returns:
        float64 array (2, th, tw) of source coordinates for ``apply_warp``.
    """
    if not cfg.enabled:
        return identity_coords(tile_shape, center)
    coords = _affine_coords(tile_shape, center, _rotation_flip_matrix(cfg, rng))
    if cfg.shift and cfg.max_shift > 0:
        coords += rng.uniform(-cfg.max_shift, cfg.max_shift, size=(2, 1, 1))
    if cfg.elastic and cfg.elastic_sigma > 0:
        coords += elastic_displacement(
            tile_shape, cfg.elastic_grid, cfg.elastic_sigma, rng=rng
        )
    return coords


# ------------------------------------------------------------------- interpolation


def _boundary_index(index: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Map integer indices outside [0, size) into it as scipy.ndimage's ``mode`` does."""
    if mode == "reflect":  # half-sample symmetric: d c b a | a b c d | d c b a
        period = 2 * size
        folded = np.mod(index, period)
        return np.where(folded >= size, period - 1 - folded, folded)
    period = max(2 * size - 2, 1)  # mirror, whole-sample symmetric: d c b | a b c d | c b a
    folded = np.mod(index, period)
    return np.where(folded >= size, period - folded, folded)


def _prefilter_margin(order: int) -> int:
    """Pixels kept around the sampled region so the cropped prefilter is exact enough.

    Orders 0 and 1 need no prefilter. For splines the prefilter's influence decays
    geometrically with the pole, so beyond the margin it is below the tolerance;
    ``order // 2 + 1`` more pixels cover the interpolation kernel's own support.
    """
    if order <= 1:
        return 0
    decay = math.ceil(math.log(_PREFILTER_TOLERANCE) / math.log(_SPLINE_POLES[order]))
    return decay + order // 2 + 1


def _source_region(
    array: np.ndarray, coords: np.ndarray, order: int, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Crop (boundary-extended where needed) the source region the coordinates touch.

    Returns:
        The region and its origin (2,) in source coordinates.
    """
    margin = _prefilter_margin(order)
    flat = coords.reshape(2, -1)
    low = np.floor(flat.min(axis=1)).astype(np.int64) - margin
    # +2: floor(max) + 1 is the last pixel linear interpolation reads; +1 to make it exclusive.
    high = np.floor(flat.max(axis=1)).astype(np.int64) + margin + 2
    rows = _boundary_index(np.arange(low[0], high[0]), array.shape[0], mode)
    cols = _boundary_index(np.arange(low[1], high[1]), array.shape[1], mode)
    return array[np.ix_(rows, cols)], low


def _nearest(array: np.ndarray, coords: np.ndarray, mode: str) -> np.ndarray:
    """Nearest-neighbour lookup by plain indexing.

    ``floor(x + 0.5)`` is the rounding scipy's order-0 interpolation uses, so this
    equals ``map_coordinates(order=0)`` while being several times faster; for
    integer coordinates it is also the exact lookup of any spline order.
    """
    index = np.floor(coords + 0.5).astype(np.int64)
    rows = _boundary_index(index[0], array.shape[0], mode)
    cols = _boundary_index(index[1], array.shape[1], mode)
    return array[rows, cols]


def apply_warp(
    array: np.ndarray, coords: np.ndarray, order: int, mode: str = "reflect"
) -> np.ndarray:
    """Resample ``array`` at ``coords`` (scipy.ndimage.map_coordinates semantics).

    Only the source region the coordinates touch, plus a margin for the spline
    prefilter, is cropped and filtered, which makes the cost independent of the
    whole image's size; the result equals whole-image ``map_coordinates`` (to ~1e-7
    relative for splines, exactly for orders 0 and 1). Integer-valued coordinates
    (no augmentation) are looked up directly, so the identity warp is an exact crop;
    order 0 is a direct lookup as well.

    Args:
        array: (H, W) or channels-last (H, W, C) array.
        coords: (2, th, tw) source coordinates, e.g. from ``sample_warp``.
        order: spline order: 0 nearest (labels), 1 linear (weights), 3 cubic (images).
        mode: boundary handling, "reflect" (half-sample symmetric) or "mirror".

    Returns:
        (th, tw) or (th, tw, C) array; dtype of ``array`` for order 0, else at least float32.
    """
    if mode not in _SUPPORTED_MODES:
        raise ValueError(f"mode must be one of {_SUPPORTED_MODES}, got {mode!r}")
    if array.ndim not in (2, 3) or coords.ndim != 3 or coords.shape[0] != 2:
        raise ValueError(
            f"need (H, W[, C]) array and (2, th, tw) coords, got {array.shape}, {coords.shape}"
        )
    dtype = array.dtype if order == 0 else np.result_type(array.dtype, np.float32)
    if order == 0 or np.array_equal(coords, np.round(coords)):
        return _nearest(array, coords, mode).astype(dtype, copy=False)
    region, origin = _source_region(array, coords, order, mode)
    local = coords - origin[:, None, None]
    if region.ndim == 2:
        return ndi.map_coordinates(region, local, output=dtype, order=order, mode=mode)
    channels = [
        ndi.map_coordinates(region[..., c], local, output=dtype, order=order, mode=mode)
        for c in range(region.shape[-1])
    ]
    return np.stack(channels, axis=-1)


# ---------------------------------------------------------------------- gray values


def _apply_gamma(image: np.ndarray, gamma: float, low: float, span: float) -> np.ndarray:
    """Gamma curve on the intensities rescaled to [0, 1]; works for zero-mean data too."""
    return low + span * np.power((image - low) / span, gamma)


def _sample_log_uniform(bounds: tuple[float, float], rng: np.random.Generator) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def gray_value(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random gray-value variation: gamma, contrast, brightness and optional noise.

    Magnitudes are relative to the tile's own intensity range (max - min), so the
    same config suits images normalised to 0..1 and zero-mean images. Without noise
    every step is strictly increasing in intensity, so the order of gray values is
    kept. All channels get the same transform.

    Args:
        image: (H, W) or (H, W, C) float image tile.
        cfg: augmentation parameters (the ``gamma``/``contrast``/``brightness``/``noise`` switches).
        rng: random generator.

    Returns:
        float32 array of ``image``'s shape.
    """
    out = image.astype(np.float32)
    low, high = float(out.min()), float(out.max())
    span = high - low
    if cfg.gamma and span > 0:
        out = _apply_gamma(out, _sample_log_uniform(cfg.gamma_range, rng), low, span)
    if cfg.contrast:
        mean = out.mean()
        out = mean + np.float32(rng.uniform(*cfg.contrast_range)) * (out - mean)
    if cfg.brightness:
        out = out + np.float32(rng.uniform(*cfg.brightness_range) * span)
    if cfg.noise:
        out = out + rng.normal(0.0, cfg.noise_std * span, size=out.shape).astype(np.float32)
    return out.astype(np.float32, copy=False)


def appearance(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Every image-only augmentation of a tile: blur, then gray values (:func:`gray_value`).

    Returns ``image`` unchanged (as float32) when augmentation or all of these parts are off.
    """
    out = image.astype(np.float32, copy=False)
    if not cfg.enabled:
        return out
    if cfg.blur:
        sigma = float(rng.uniform(*cfg.blur_sigma_range))
        if sigma > 0:  # channels are blurred alike, never across each other
            out = ndi.gaussian_filter(out, sigma=(sigma, sigma) + (0,) * (out.ndim - 2), mode="mirror")
    if cfg.gamma or cfg.contrast or cfg.brightness or cfg.noise:
        out = gray_value(out, cfg, rng)
    return out


# ------------------------------------------------------------------ synthetic cytoplasm

#: Reach of a synthetic cell body past its nucleus, in nucleus diameters (sampled per tile).
CYTOPLASM_REACH = (0.3, 1.5)
#: Level of a synthetic cell body above the background, as a fraction of the nuclei's contrast.
CYTOPLASM_LEVEL = (0.15, 0.6)


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation (float32)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="mirror")
    return field / max(float(field.std()), 1e-6)


def add_cytoplasm(
    image: np.ndarray,
    nuclei: np.ndarray,
    diameter: float,
    rng: np.random.Generator,
    window: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """A copy of ``image`` with a synthetic cell body painted around every nucleus in ``window``.

    Fluorescence images, most of the nuclei training data, show nuclei alone; in bright-field and
    stained images each nucleus sits in a cell body that differs from the background, though less
    than the nucleus does. A net that never saw such bodies takes the whole cell for the nucleus.
    Cell bodies here reach a random 0.3-1.5 nucleus diameters past their nucleus with a ragged,
    soft outline and a smooth texture, at 15-60 % of the nuclei's contrast above the background
    (polarity inversion, applied later, turns them into the dark-on-light look of bright-field).
    The nuclei keep their contrast over their cell body. The labels are untouched: a cell body is
    background.

    Args:
        image: (H, W, C) float image, normalised (nuclei brighter than the background).
        nuclei: (H, W) bool mask of the nuclei.
        diameter: the nuclei's typical diameter in pixels.
        rng: random generator.
        window: the region to paint (default: the whole image), e.g. what a training tile can
            reach; pixels outside it are returned unchanged.

    Returns:
        float32 image of ``image``'s shape; ``image`` itself is not modified.
    """
    out = np.array(image, dtype=np.float32, copy=True)
    rows, cols = window or (slice(None), slice(None))
    nuc = nuclei[rows, cols]
    if not nuc.any() or nuc.all():
        return out
    region = out[rows, cols]
    reach = float(rng.uniform(*CYTOPLASM_REACH)) * diameter
    ragged = 1.0 + 0.35 * _smooth_noise(nuc.shape, max(diameter / 2, 1.0), rng)
    body = (ndi.distance_transform_edt(~nuc) < reach * ragged) & ~nuc
    gray = region.mean(axis=-1)
    background = gray[~(nuc | body)] if (~(nuc | body)).any() else gray[~nuc]
    contrast = float(np.median(gray[nuc]) - np.median(background))
    level = float(rng.uniform(*CYTOPLASM_LEVEL)) * max(contrast, 0.0)
    texture = 1.0 + 0.25 * _smooth_noise(nuc.shape, 2.0, rng)
    # The nucleus lies in its cell body, so the body's level is added under it too (as absorbances
    # add in transmitted light): painting round it alone would leave its dim rim as a dark ring, a
    # cue that real cells do not give.
    soft = ndi.gaussian_filter((body | nuc).astype(np.float32), 1.0, mode="mirror")
    region += (level * soft * texture)[..., None]
    return out


# ------------------------------------------------------------------------ entry point


def augment_tile(
    image: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None,
    tile_shape: Sequence[int],
    center: Sequence[float],
    cfg: AugmentConfig,
    rng: np.random.Generator,
    output_shape: Sequence[int] | None = None,
    mode: str = "reflect",
    zero_outside: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Sample one augmented training tile out of a whole image.

    One warp is sampled and applied to all three arrays: the image with
    ``cfg.image_order``, the labels with nearest neighbour (order 0, so no new label
    values appear) and the weights linearly (order 1, stays within the input range).
    Blur and gray-value variation (:func:`appearance`) then act on the image only.
    The trainer calls this with ``output_shape`` (the valid network's output tile),
    ``mode="mirror"`` and ``zero_outside``; tests and ``bench/augment.py`` call it with the defaults.

    Args:
        image: float image (H, W) or (H, W, C), already normalised.
        labels: integer label map (H, W).
        weights: float32 weight map (H, W), or None.
        tile_shape: (th, tw) of the input tile (e.g. 572 x 572 for the paper's net).
        center: (cy, cx) tile centre in image coordinates (see module docstring).
        cfg: augmentation parameters; ``AugmentConfig(enabled=False)`` gives the plain crop.
        rng: random generator, e.g. ``np.random.default_rng([seed, step])``.
        output_shape: (oh, ow): labels and weights are resampled on the centred
            ``output_shape`` crop of the tile only (a valid-convolution net predicts that
            part of its input); default None = the whole tile. Each margin must be even
            or the crop is taken with the extra pixel at the bottom/right.
        mode: boundary handling past the image border, ``"reflect"`` (default) or
            ``"mirror"`` (what overlap-tile inference uses for its context).
        zero_outside: weights of pixels whose source lies past the image border become 0,
            so that a loss does not learn from mirrored labels (default False).

    Returns:
        (image_tile, labels_tile, weights_tile), weights_tile None iff ``weights`` is None.
    """
    if image.shape[:2] != labels.shape or (weights is not None and weights.shape != labels.shape):
        raise ValueError(
            f"image {image.shape}, labels {labels.shape} and weights "
            f"{None if weights is None else weights.shape} must share (H, W)"
        )
    coords = sample_warp(tile_shape, center, cfg, rng)
    inner = coords if output_shape is None else _central(coords, output_shape)
    image_tile = apply_warp(image, coords, cfg.image_order, mode)
    labels_tile = apply_warp(labels, inner, 0, mode)
    weights_tile = None if weights is None else apply_warp(weights, inner, 1, mode)
    if weights_tile is not None and zero_outside:
        weights_tile = weights_tile * _inside(inner, labels.shape)
    return appearance(image_tile, cfg, rng), labels_tile, weights_tile


def _inside(coords: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Pixels whose source coordinates lie inside an image of ``shape`` (nearest-pixel rule)."""
    return (coords[0] > -0.5) & (coords[0] < shape[0] - 0.5) & (coords[1] > -0.5) & (coords[1] < shape[1] - 0.5)


def _central(coords: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The centred ``shape`` crop of a (2, th, tw) coordinate map (contiguous)."""
    oh, ow = int(shape[0]), int(shape[1])
    th, tw = coords.shape[1:]
    if not (0 < oh <= th and 0 < ow <= tw):
        raise ValueError(f"output_shape {(oh, ow)} must fit in the tile {(th, tw)}")
    top, left = (th - oh) // 2, (tw - ow) // 2
    return np.ascontiguousarray(coords[:, top : top + oh, left : left + ow])
