"""Benchmark of unet_core.augment: ms per 572 x 572 training tile.

The tile is sampled from a 1024 x 1024 image with the default (paper) config:
elastic 3x3 grid with sigma 10 px, rotation 0-360 degrees, flips, shift and
gray-value variation. Reports the full ``augment_tile`` call (image cubic, labels
nearest, weights linear, gray values) and each part on its own, as the median
over repeats.

It then prints the paper's weight map for a 572 x 572 synthetic image (computed once per image in
training, cached) and one CPU training step of the paper network (width 64, 572 -> 388, batch 1,
SGD momentum 0.99) so the data cost can be read as a fraction of the step it feeds.

Run from the repository root: ``python bench/augment.py [--repeats N] [--no-step]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from unet_core.augment import (
    AugmentConfig,
    apply_warp,
    augment_tile,
    elastic_displacement,
    gray_value,
    sample_warp,
)
from unet_core.synthetic import SynthConfig, generate
from unet_core.weights import weight_map

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
    parser.add_argument("--no-step", action="store_true", help="skip the paper-net training step")
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
    results = {name: _median_ms(fn, args.repeats) for name, fn in parts.items()}
    for name, ms in results.items():
        print(f"{name:<58} {ms:7.2f} ms")
    full = results[next(iter(parts))]

    cells = generate(SynthConfig(height=TILE[0], width=TILE[1], n_cells=(60, 90)), seed=0)[1]
    wmap_ms = _median_ms(lambda s: weight_map(cells), max(3, args.repeats // 4))
    print(f"{'weight_map, 572x572 synthetic image, ' + str(cells.max()) + ' cells':<58} {wmap_ms:7.2f} ms")
    if args.no_step:
        return
    step_ms = paper_step_ms()
    print(f"{'paper net training step (CPU, 572 -> 388, batch 1)':<58} {step_ms:7.0f} ms")
    print(f"augmentation + weight map = {100 * (full + wmap_ms) / step_ms:.2f} % of a training step")


def paper_step_ms(repeats: int = 2) -> float:
    """Median ms of forward + weighted CE + backward + SGD step of the paper net on one tile."""
    import torch

    from unet_core.model import UNet

    torch.manual_seed(0)
    net = UNet().train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99)
    x = torch.rand(1, 1, 572, 572)
    target = torch.randint(0, 2, (1, 388, 388))
    w = torch.rand(1, 388, 388)

    def step(_: int) -> None:
        opt.zero_grad()
        loss = (torch.nn.functional.cross_entropy(net(x), target, reduction="none") * w).mean()
        loss.backward()
        opt.step()

    return _median_ms(step, repeats)


if __name__ == "__main__":
    main()
