"""The classical method a user compares the U-Net against: Otsu threshold + distance-transform watershed.

What a careful Fiji user does without deep learning, in scikit-image:

1. gray values (RGB by luminance), lightly smoothed (Gaussian, sigma 1 px);
2. Otsu's global threshold; the *polarity* comes from the image border: the border is mostly
   background, so if the border pixels are mostly above the threshold the objects are the dark
   side (bright-field, H&E), else the bright side (fluorescence);
3. holes filled, specks under :attr:`BaselineOptions.min_size` pixels removed;
4. touching objects split by a watershed on the negated distance transform, seeded by its
   local maxima at least ``min_distance`` apart (``min_distance`` from the median diameter of
   the thresholded components, so the baseline adapts to the image's scale like the U-Net).

The baseline is a :class:`Segmenter` like a U-Net predictor, so ``python -m unet_core evaluate
--baseline otsu-watershed`` and the Evaluate page score it exactly as they score a model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from .io import gray_plane
from .scale import median_diameter

log = logging.getLogger(__name__)

BASELINES = ("otsu-watershed", "otsu")


@dataclass(frozen=True)
class BaselineOptions:
    """Settings of the classical baseline.

    Attributes:
        method: ``"otsu-watershed"`` (split touching objects) or ``"otsu"`` (connected
            components of the threshold only).
        smooth: Gaussian sigma in pixels before thresholding (0 = none).
        min_size: objects with fewer pixels are removed.
        min_distance_fraction: watershed seeds lie at least this fraction of the median object
            diameter apart.
    """

    method: str = "otsu-watershed"
    smooth: float = 1.0
    min_size: int = 15
    min_distance_fraction: float = 0.35

    def __post_init__(self) -> None:
        if self.method not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, not {self.method!r}")


def foreground(pixels: np.ndarray, options: BaselineOptions | None = None) -> np.ndarray:
    """Otsu foreground (bool, H x W) of one image (H, W) or (H, W, C), polarity from its border."""
    options = options or BaselineOptions()
    gray = gray_plane(pixels).astype(np.float32)
    if options.smooth > 0:
        gray = gaussian(gray, options.smooth, preserve_range=True)
    if float(gray.max()) <= float(gray.min()):
        return np.zeros(gray.shape, bool)
    threshold = threshold_otsu(gray)
    mask = gray > threshold
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if border.mean() > 0.5:  # the border is mostly "bright": objects are dark
        mask = ~mask
    mask = ndi.binary_fill_holes(mask)
    return remove_small_objects(mask, max_size=max(0, options.min_size - 1))


def segment_baseline(pixels: np.ndarray, options: BaselineOptions | None = None) -> np.ndarray:
    """Instance ids (int32, H x W) of one image by the classical baseline."""
    options = options or BaselineOptions()
    mask = foreground(pixels, options)
    components, n = ndi.label(mask)
    if n == 0 or options.method == "otsu":
        return components.astype(np.int32)
    diameter = median_diameter(components) or 1.0
    distance = ndi.distance_transform_edt(mask)
    min_distance = max(1, round(options.min_distance_fraction * diameter))
    peaks = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    ids = watershed(-distance, markers, mask=mask)
    # Components that got no seed (flat plateaus) keep their own id after the seeded ones.
    unseeded = mask & (ids == 0)
    if unseeded.any():
        extra, _ = ndi.label(unseeded)
        ids = np.where(unseeded, extra + ids.max(), ids)
    return ids.astype(np.int32)
