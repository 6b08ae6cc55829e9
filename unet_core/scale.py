"""Object scale: the median object diameter of a label image, and rescaling images and labels to it.

Nuclei in microscopy images range over more than 10x in size (7 px to 94 px median diameter per
image in DSB 2018), and a U-Net learns one notion of how big an object is. As Cellpose does with
its "diameter", a model here may declare a *canonical diameter*
(:attr:`unet_core.metadata.ModelMeta.diameter`): training rescales every image so that its median
object diameter equals it, and inference rescales the input the same way (from a diameter the user
gives, or one estimated from a first pass) and maps the results back to the input's pixel grid.

The diameter of an object is that of the circle of equal area, ``2 * sqrt(area / pi)``; the
diameter of an image is the median over its objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.transform import resize

#: Rescale factors are kept within these bounds: beyond them an image is either blown up past any
#: memory budget or shrunk to a few pixels per object; the model is not meant for such images.
MIN_FACTOR = 1 / 8
MAX_FACTOR = 4.0
#: A rescale by less than this relative amount is not worth a second network pass (the model is
#: trained with a +-20 % scale jitter around its canonical diameter).
TOLERANCE = 0.15


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


def clamp_factor(factor: float) -> float:
    """A rescale factor within [MIN_FACTOR, MAX_FACTOR]."""
    return float(min(MAX_FACTOR, max(MIN_FACTOR, factor)))


def scaled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """(H, W) rescaled by ``factor``, at least 1 pixel each."""
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def rescale_image(image: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Image (H, W) or (H, W, C) resized to ``shape`` (float32), anti-aliased when shrinking."""
    if tuple(image.shape[:2]) == tuple(shape):
        return image.astype(np.float32, copy=False)
    out_shape = tuple(shape) + tuple(image.shape[2:])
    shrink = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    return resize(image.astype(np.float32, copy=False), out_shape, order=order, mode="reflect",
                  anti_aliasing=shrink, preserve_range=True).astype(np.float32)


def rescale_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Integer labels (H, W) resized to ``shape`` by nearest neighbour (ids and classes kept)."""
    if tuple(labels.shape[:2]) == tuple(shape):
        return labels
    rows = _nearest_index(labels.shape[0], shape[0])
    cols = _nearest_index(labels.shape[1], shape[1])
    return labels[rows[:, None], cols[None, :]]


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel centre (pixel-centre aligned, like skimage's resize)."""
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    return np.clip(np.rint(centres), 0, n_in - 1).astype(np.intp)


@dataclass(frozen=True)
class Diameter:
    """How inference treats object scale: ``auto``, ``off`` or a diameter in input pixels.

    Attributes:
        mode: ``"auto"`` (estimate from a first pass, the default), ``"off"`` (no rescaling) or
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
