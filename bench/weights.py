"""Benchmark of the U-Net weight map: fast :func:`weight_map` against the reference oracle.

Run ``python bench/weights.py``. It times both on a 512 x 512 synthetic label image with ~300
touching or nearly touching cells (best of a few repeats), prints the times, their ratio and
the largest absolute difference, then times the fast version on 2048 x 2048 with ~5000 cells
(the reference there only when its estimated time is under a minute).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

# Running ``python bench/weights.py`` puts bench/ on the path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unet_core.weights import weight_map, weight_map_reference

REFERENCE_BUDGET_S = 60.0


def synthetic_cells(size: int, n_cells: int, seed: int = 0) -> np.ndarray:
    """Voronoi-like cells: touching neighbours, 1-pixel gaps, some background, sparse ids.

    Every pixel within ``radius`` of a random seed point joins the nearest seed's cell; pixels
    whose right or lower neighbour belongs to another cell become background, which leaves thin
    gaps between touching cells (the case the border term is for).

    Args:
        size: height and width of the image.
        n_cells: number of seed points (cells).
        seed: random seed.

    Returns:
        (size, size) int32 label image, 0 = background, cell ids non-contiguous.
    """
    rng = np.random.default_rng(seed)
    points = rng.integers(0, size, (n_cells, 2))
    seeds = np.zeros((size, size), dtype=np.int32)
    # Sparse ids (multiples of 7 plus an offset) exercise the non-contiguous path.
    seeds[points[:, 0], points[:, 1]] = 7 * rng.permutation(n_cells) + 3
    dist, (rows, cols) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[rows, cols]
    radius = 0.6 * size / np.sqrt(n_cells)
    labels[dist > radius] = 0
    edge = np.zeros_like(labels, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    labels[edge] = 0
    return labels


def best_time(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """Smallest wall time of ``repeats`` calls of ``fn``, and its last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def estimate_reference_s(labels: np.ndarray) -> float:
    """Reference cost estimate: one full-image distance transform per cell."""
    start = time.perf_counter()
    ndimage.distance_transform_edt(labels != labels.max())
    return (time.perf_counter() - start) * (len(np.unique(labels)) - 1)


def compare(size: int, n_cells: int, fast_repeats: int, reference_repeats: int) -> None:
    """Time fast and (if affordable) reference on one synthetic image and print the results."""
    labels = synthetic_cells(size, n_cells)
    n_found = len(np.unique(labels)) - 1
    print(f"{size}x{size}, {n_found} cells, {100 * np.mean(labels > 0):.0f}% foreground")
    fast_s, fast = best_time(lambda: weight_map(labels), fast_repeats)
    print(f"  fast      : {fast_s:8.3f} s (best of {fast_repeats})")
    estimate = estimate_reference_s(labels)
    if estimate > REFERENCE_BUDGET_S:
        print(f"  reference : skipped (estimated {estimate:.0f} s > {REFERENCE_BUDGET_S:.0f} s)")
        return
    ref_s, ref = best_time(lambda: weight_map_reference(labels), reference_repeats)
    print(f"  reference : {ref_s:8.3f} s (best of {reference_repeats})")
    print(f"  speed-up  : {ref_s / fast_s:8.1f}x")
    print(f"  max |diff|: {np.abs(fast - ref).max():.3g}")


def main() -> None:
    """Run the 512 x 512 comparison and the 2048 x 2048 scaling check."""
    compare(512, 300, fast_repeats=5, reference_repeats=2)
    compare(2048, 5000, fast_repeats=2, reference_repeats=1)


if __name__ == "__main__":
    main()
