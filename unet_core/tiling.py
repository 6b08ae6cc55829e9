"""Overlap-tile geometry, tile plans and stitching (Ronneberger et al. 2015, Fig. 2); pure numpy.

With unpadded ("valid") convolutions every output pixel sees a fixed window of input around it, so
an image of any size can be segmented tile by tile: the output tiles cover the image, each input
tile carries the context margin (92 px for the paper's net) and context missing at the image
border is filled by mirroring the image.

Two rules make the result independent of the tile size (seamless):

* every 2x2 max-pool must see an even size, so an output size is valid only if it maps back to an
  input through integer sizes (for depth 4: outputs 16k + 4, e.g. 388 <- 572);
* the pooling grid must sit at the same place relative to the image in every tile. The network
  is translation-equivariant only for shifts by multiples of 2**depth, so tile origins are placed
  on that grid. The last tile along an axis may reach past the image; its extra output is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Padding = Literal["valid", "same"]


@dataclass(frozen=True)
class Geometry:
    """Size arithmetic of a U-Net with ``depth`` pooling steps and two 3x3 convolutions per level."""

    depth: int = 4
    padding: Padding = "valid"

    @property
    def alignment(self) -> int:
        """Shifts under which the network is equivariant; tile origins are multiples of it."""
        return 2**self.depth

    @property
    def margin(self) -> int:
        """Context on each side of an output tile (92 px for the paper's net).

        For "same" padding the output is as large as the input, but zero padding makes tile
        borders differ from the interior, so tiles still carry context and the result is cut out
        of their middle. A same net sees one pixel further than the valid net's margin (its
        up-convolutions are not centred the way the valid net's crops are; without that pixel
        results differed by up to 0.005 between tile sizes, tests/test_contract.py), rounded up
        to keep input sizes on the pooling grid.
        """
        if self.padding == "valid":
            out = self.min_output
            return (self.input_size(out) - out) // 2
        half = self.alignment // 2
        valid_margin = Geometry(self.depth, "valid").margin
        return -(-(valid_margin + 1) // half) * half

    def output_size(self, input_size: int) -> int:
        """Network output edge for an input edge; ValueError if a pool would see an odd size."""
        if self.padding == "same":
            if input_size % self.alignment or input_size <= 0:
                raise ValueError(f"input {input_size} is not a positive multiple of {self.alignment}")
            return input_size
        s = input_size
        for level in range(self.depth):
            s -= 4
            if s <= 0 or s % 2:
                raise ValueError(f"input {input_size}: size {s} before pool {level + 1} is not even and positive")
            s //= 2
        s -= 4
        if s <= 0:
            raise ValueError(f"input {input_size} is too small for depth {self.depth}")
        for _ in range(self.depth):
            s = 2 * s - 4
            if s <= 0:
                raise ValueError(f"input {input_size} is too small for depth {self.depth}")
        return s

    def input_size(self, output_size: int) -> int:
        """Input edge that produces ``output_size`` (which must be valid)."""
        if not self.is_valid_output(output_size):
            raise ValueError(f"{output_size} is not a valid output size (try {self.floor_output(output_size)})")
        if self.padding == "same":
            return output_size + 2 * self.margin
        s = output_size
        for _ in range(self.depth):
            s = (s + 4) // 2
        s += 4
        for _ in range(self.depth):
            s = 2 * s + 4
        return s

    @property
    def min_output(self) -> int:
        """Smallest valid output edge (4 for the paper's net, from a 188 px input)."""
        if self.padding == "same":
            return self.alignment
        bottom = 1  # edge of the deepest feature map after its two convolutions
        while True:
            s, positive = bottom, True
            for _ in range(self.depth):
                s = 2 * s - 4
                positive &= s > 0
            if positive:
                return s
            bottom += 1

    @property
    def min_tile(self) -> int:
        """Smallest output tile for tiling: tiles step by the alignment, so none may be smaller."""
        return self.ceil_output(self.alignment)

    def is_valid_output(self, n: int) -> bool:
        if n < self.min_output:
            return False
        return (n - self.min_output) % self.alignment == 0

    def floor_output(self, n: int) -> int:
        """Largest valid output edge <= n (the smallest valid one if n is below it)."""
        if n <= self.min_output:
            return self.min_output
        return self.min_output + (n - self.min_output) // self.alignment * self.alignment

    def ceil_output(self, n: int) -> int:
        """Smallest valid output edge >= n."""
        if n <= self.min_output:
            return self.min_output
        return self.min_output + -(-(n - self.min_output) // self.alignment) * self.alignment


@dataclass(frozen=True)
class Tile:
    """One output tile: origin ``(y, x)`` in image pixels and network output size ``(h, w)``.

    The tile's input is ``(h + 2m, w + 2m)`` starting at ``(y - m, x - m)``. Only the part inside
    the image, ``valid_h x valid_w``, is written back.
    """

    y: int
    x: int
    h: int
    w: int
    valid_h: int
    valid_w: int


def _axis_tiles(length: int, tile: int, geometry: Geometry) -> list[tuple[int, int]]:
    """(origin, output size) along one axis: origins on the alignment grid, exact cover."""
    step = tile // geometry.alignment * geometry.alignment
    spans = []
    pos = 0
    while True:
        remaining = length - pos
        if remaining <= tile:
            # The last tile shrinks to the smallest valid size that still covers the rest:
            # less wasted work past the image border, same result (origins stay on the grid).
            spans.append((pos, geometry.ceil_output(remaining)))
            return spans
        spans.append((pos, tile))
        pos += step


def plan_tiles(shape: tuple[int, int], tile: int | tuple[int, int], geometry: Geometry) -> list[Tile]:
    """Tiles whose outputs cover an image of ``shape = (H, W)`` exactly.

    Args:
        shape: image height and width.
        tile: requested output tile edge (or (h, w)); must be valid for ``geometry``.
        geometry: the network's size arithmetic.
    """
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    for t in (th, tw):
        if not geometry.is_valid_output(t):
            raise ValueError(f"tile {t} is not a valid output size (nearest below: {geometry.floor_output(t)})")
        if t < geometry.min_tile:
            raise ValueError(f"tile {t} is below the smallest tile {geometry.min_tile} for this network")
    height, width = shape
    if height <= 0 or width <= 0:
        raise ValueError(f"cannot tile an image of shape {shape}")
    rows = _axis_tiles(height, th, geometry)
    cols = _axis_tiles(width, tw, geometry)
    return [
        Tile(y, x, h, w, min(h, height - y), min(w, width - x))
        for (y, h) in rows
        for (x, w) in cols
    ]


def balanced_tile(length: int, max_tile: int, geometry: Geometry) -> int:
    """The smallest valid tile that covers ``length`` with as few tiles as ``max_tile`` needs.

    A fixed tile wastes work on the last, mostly-outside tile (2048 px with 900 px tiles: a third
    tile of 260 px, which costs far more per pixel). Splitting evenly keeps every tile large.
    """
    max_tile = max(geometry.floor_output(max_tile), geometry.min_tile)
    n = 1
    while True:
        tile = max(geometry.ceil_output(-(-length // n)), geometry.min_tile)
        # n tiles of edge t on the alignment grid cover (n - 1) * step + t pixels.
        while (n - 1) * (tile // geometry.alignment * geometry.alignment) + tile < length:
            tile += geometry.alignment
        if tile <= max_tile:
            return tile
        n += 1


def reflect_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Indices ``start..stop-1`` mirrored into ``[0, length)`` (numpy's "reflect", any distance).

    Repeated mirroring handles images thinner than the margin (e.g. 5 px tall with 92 px context).
    """
    idx = np.arange(start, stop)
    if length == 1:
        return np.zeros_like(idx)
    period = 2 * length - 2
    idx = np.abs(idx) % period
    return np.where(idx >= length, period - idx, idx)


def extract_input(image: np.ndarray, tile: Tile, margin: int) -> np.ndarray:
    """The input window of ``tile`` from an ``(H, W, ...)`` array, mirrored where it leaves the image.

    Costs O(tile): the image is never padded as a whole.
    """
    rows = reflect_indices(tile.y - margin, tile.y + tile.h + margin, image.shape[0])
    cols = reflect_indices(tile.x - margin, tile.x + tile.w + margin, image.shape[1])
    inside_rows = rows[0] == tile.y - margin and rows[-1] == tile.y + tile.h + margin - 1
    inside_cols = cols[0] == tile.x - margin and cols[-1] == tile.x + tile.w + margin - 1
    if inside_rows and inside_cols:  # fast path: a plain slice
        return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return image[np.ix_(rows, cols)]


def stitch(out: np.ndarray, tile: Tile, tile_out: np.ndarray) -> None:
    """Write the in-image part of a ``(..., h, w)`` tile result into ``out`` (``(..., H, W)``)."""
    out[..., tile.y : tile.y + tile.valid_h, tile.x : tile.x + tile.valid_w] = tile_out[
        ..., : tile.valid_h, : tile.valid_w
    ]
