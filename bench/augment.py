"""Benchmark of unet_core.augment: ms per 572 x 572 training tile.

The tile is sampled from a 1024 x 1024 image with the default (paper) config:
elastic 3x3 grid with sigma 10 px, rotation 0-360 degrees, flips, shift and
gray-value variation. Reports the full ``augment_tile`` call (image cubic, labels
nearest, weights linear, gray values) and each part on its own, as the median
over repeats.

Run from the repository root: ``python bench/augment.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from unet_core.augment import (  # noqa: E402
    AugmentConfig,
    apply_warp,
    augment_tile,
    elastic_displacement,
    gray_value,
    sample_warp,
)

IMAGE_SIZE = 1024
TILE = (572, 572)


def _median_ms(fn: Callable[[int], object], repeats: int) -> float:
    """Median wall time of ``fn(step)`` in ms; one untimed warm-up call fills caches."""
    fn(repeats)
    times = []
    for step in range(repeats):
        start = time.perf_counter()
        fn(step)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    data_rng = np.random.default_rng(0)
    image = data_rng.random((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    labels = data_rng.integers(0, 50, size=(IMAGE_SIZE, IMAGE_SIZE)).astype(np.int32)
    weights = data_rng.random((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    cfg = AugmentConfig()
    center = (IMAGE_SIZE // 2, IMAGE_SIZE // 2)

    def rng(step: int) -> np.random.Generator:
        return np.random.default_rng([0, step])

    coords = sample_warp(TILE, center, cfg, rng(0))
    image_tile = apply_warp(image, coords, 3)
    parts: dict[str, Callable[[int], object]] = {
        "augment_tile (full: warp + image/labels/weights + gray)": lambda s: augment_tile(
            image, labels, weights, TILE, center, cfg, rng(s)
        ),
        "  sample_warp (flip, rotation, shift, elastic)": lambda s: sample_warp(
            TILE, center, cfg, rng(s)
        ),
        "    elastic_displacement": lambda s: elastic_displacement(TILE, rng=rng(s)),
        "  apply_warp image, cubic (order 3)": lambda s: apply_warp(image, coords, 3),
        "  apply_warp image, linear (order 1)": lambda s: apply_warp(image, coords, 1),
        "  apply_warp labels, nearest (order 0)": lambda s: apply_warp(labels, coords, 0),
        "  apply_warp weights, linear (order 1)": lambda s: apply_warp(weights, coords, 1),
        "  gray_value": lambda s: gray_value(image_tile, cfg, rng(s)),
    }
    size = f"{TILE[0]}x{TILE[1]} tile from a {IMAGE_SIZE}x{IMAGE_SIZE} image"
    print(f"{size}, median of {args.repeats} (default AugmentConfig)")
    for name, fn in parts.items():
        print(f"{name:<58} {_median_ms(fn, args.repeats):7.2f} ms")


if __name__ == "__main__":
    main()
