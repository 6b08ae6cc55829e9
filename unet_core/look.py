"""What kind of microscope image this is, read from the image and the network's objects.

Three looks, with what tells them apart:

- ``fluorescence``: the objects are brighter than the image as a whole (a stained nucleus glows on a
  dark background);
- ``bright-field``: the objects are darker and the image is gray (transmitted light: the nuclei
  absorb, and so do cytoplasm, folds and granules);
- ``stained``: the objects are darker and the image is in colour (histology, H&E-like stains).

The look decides how strict the automatic probability filter is
(:data:`unet_core.instances.DEFAULT_MIN_OBJECT_PROBABILITY`): in bright-field, dark cytoplasm makes
many pale false nuclei; in fluorescence a pale object is more often a dim real nucleus.

Everything is a sum over pixels (:class:`LookSums`), so image parts measured apart (Dask regions)
add up to the whole image's (to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .instances import row_bands
from .io import gray_plane

#: What each look is, in a user's words.
LOOK_WORDS = {"fluorescence": "bright objects on a dark background",
              "bright-field": "dark objects on a light, gray background",
              "stained": "dark objects on a light, coloured background"}
LOOKS = tuple(LOOK_WORDS)

#: An image is in colour when its pixels' mean spread between the red, green and blue values is at
#: least this fraction of its mean gray value. Gray images stored as RGB have no spread at all; the
#: 24 stained (H&E-like) images of the DSB 2018 random split have 0.15 to 0.83.
COLOUR_SPREAD = 0.05


@dataclass
class LookSums:
    """The sums behind :meth:`look` (floats, so that parts add up).

    Attributes:
        object_gray, object_pixels: the gray value summed over the objects' pixels, and their count.
        gray, pixels: the same over the whole image.
        spread: the spread between the colour channels (max - min of R, G, B) summed over the image
            (0 for an image without three colour channels).
    """

    object_gray: float = 0.0
    object_pixels: float = 0.0
    gray: float = 0.0
    pixels: float = 0.0
    spread: float = 0.0

    def __add__(self, other: LookSums) -> LookSums:
        return LookSums(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def look(self) -> str | None:
        """The image's look (one of :data:`LOOKS`), or None without objects or without background."""
        if self.object_pixels == 0 or self.object_pixels == self.pixels:
            return None
        # objects darker than the image as a whole <=> darker than the background around them
        if self.object_gray * self.pixels >= self.gray * self.object_pixels:
            return "fluorescence"
        colour = self.spread >= COLOUR_SPREAD * self.gray
        return "stained" if colour else "bright-field"


def look_sums(pixels: np.ndarray, objects: np.ndarray) -> LookSums:
    """The :class:`LookSums` of raw ``pixels`` (H, W) or (H, W, C) and an object mask (H, W) of
    them, taken by bands of rows (memory O(band) on a whole slide)."""
    total = LookSums()
    for rows in row_bands(objects):
        total = total + _band_sums(pixels[rows], objects[rows])
    return total


def _band_sums(pixels: np.ndarray, objects: np.ndarray) -> LookSums:
    gray = gray_plane(pixels).astype(np.float64)
    spread = 0.0
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # RGB(A): the alpha channel carries no colour
        colour = pixels[..., :3]
        spread = float(colour.max(axis=-1).astype(np.float64).sum() - colour.min(axis=-1).astype(np.float64).sum())
    return LookSums(float(gray[objects].sum()), float(np.count_nonzero(objects)), float(gray.sum()),
                    float(gray.size), spread)
