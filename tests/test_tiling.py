"""Overlap-tile geometry: valid sizes, margin, tile plans that cover the image, mirroring."""

from __future__ import annotations

import numpy as np
import pytest

from unet_core.tiling import Geometry, Tile, balanced_tile, extract_input, plan_tiles, reflect_indices, stitch

PAPER = Geometry(depth=4, padding="valid")


def test_paper_geometry() -> None:
    assert PAPER.margin == 92
    assert PAPER.output_size(572) == 388
    assert PAPER.input_size(388) == 572
    assert PAPER.min_output == 4 and PAPER.input_size(4) == 188
    assert PAPER.alignment == 16


def test_valid_outputs_are_16k_plus_4_and_every_pool_sees_an_even_size() -> None:
    valid = [n for n in range(1, 600) if PAPER.is_valid_output(n)]
    assert valid == list(range(4, 600, 16))
    for n in valid:
        assert PAPER.output_size(PAPER.input_size(n)) == n
    for bad in (570, 571, 573, 574, 576):
        with pytest.raises(ValueError):
            PAPER.output_size(bad)


def test_floor_and_ceil_to_valid() -> None:
    assert PAPER.floor_output(400) == 388
    assert PAPER.floor_output(388) == 388
    assert PAPER.ceil_output(389) == 404
    assert PAPER.floor_output(1) == 4
    assert PAPER.min_tile == 20


def test_same_padding_geometry() -> None:
    same = Geometry(4, "same")
    assert same.output_size(64) == 64
    assert same.is_valid_output(64) and not same.is_valid_output(70)
    assert same.margin % 8 == 0 and same.margin >= 92
    assert (same.input_size(64)) % 16 == 0


@pytest.mark.parametrize("shape", [(1000, 777), (37, 5000), (5, 3), (388, 388), (389, 1)])
@pytest.mark.parametrize("tile", [20, 100, 388])
def test_plan_covers_every_pixel_overlapping_only_at_alignment_seams(shape: tuple[int, int], tile: int) -> None:
    tiles = plan_tiles(shape, tile, PAPER)
    cover = np.zeros(shape, dtype=int)
    for t in tiles:
        assert t.y % 16 == 0 and t.x % 16 == 0, "origins on the pooling grid keep results seamless"
        assert PAPER.is_valid_output(t.h) and PAPER.is_valid_output(t.w)
        assert t.h <= max(tile, PAPER.ceil_output(shape[0]))
        cover[t.y : t.y + t.valid_h, t.x : t.x + t.valid_w] += 1
    # The plan is a grid: rows of tiles times columns of tiles, each pixel covered once per axis
    # except where two neighbours overlap because the tile edge is no multiple of the 16 px grid.
    rows = np.zeros(shape[0], int)
    cols = np.zeros(shape[1], int)
    for y, h in {(t.y, t.valid_h) for t in tiles}:
        rows[y : y + h] += 1
    for x, w in {(t.x, t.valid_w) for t in tiles}:
        cols[x : x + w] += 1
    assert np.array_equal(cover, np.outer(rows, cols)) and rows.min() == cols.min() == 1
    assert rows.max() <= 2 and cols.max() <= 2
    for profile in (rows, cols):  # each seam narrower than the grid step
        seams = np.flatnonzero(np.diff(np.concatenate([[0], (profile == 2).astype(int), [0]])))
        assert all(end - start < 16 for start, end in zip(seams[::2], seams[1::2]))


def test_plan_rejects_invalid_tile() -> None:
    with pytest.raises(ValueError, match="388"):
        plan_tiles((500, 500), 390, PAPER)


def test_reflect_indices_match_numpy_reflect_for_any_distance() -> None:
    for length in (1, 2, 5, 17):
        data = np.arange(length)
        padded = np.pad(data, 200, mode="reflect") if length > 1 else np.zeros(length + 400, int)
        assert np.array_equal(data[reflect_indices(-200, length + 200, length)], padded)


def test_extract_input_mirrors_outside_and_slices_inside() -> None:
    image = np.arange(20 * 30).reshape(20, 30)
    tile = Tile(y=0, x=0, h=4, w=4, valid_h=4, valid_w=4)
    window = extract_input(image, tile, margin=3)
    expected = np.pad(image, 3, mode="reflect")[0:10, 0:10]
    assert np.array_equal(window, expected)
    inner = extract_input(image, Tile(y=5, x=5, h=4, w=4, valid_h=4, valid_w=4), margin=3)
    assert np.shares_memory(inner, image)  # no copy in the interior


def test_stitch_writes_only_the_part_inside_the_image() -> None:
    out = np.zeros((2, 5, 5))
    tile = Tile(y=3, x=3, h=4, w=4, valid_h=2, valid_w=2)
    stitch(out, tile, np.ones((2, 4, 4)))
    assert out.sum() == 2 * 4 and out[:, 3:, 3:].min() == 1


def test_tiles_below_the_alignment_are_refused() -> None:
    with pytest.raises(ValueError, match="smallest tile 20"):
        plan_tiles((100, 100), 4, PAPER)


@pytest.mark.parametrize("length", [1, 40, 388, 389, 900, 2048, 5000])
@pytest.mark.parametrize("max_tile", [100, 388, 900])
def test_balanced_tile_covers_with_the_fewest_tiles_of_at_most_max(length: int, max_tile: int) -> None:
    tile = balanced_tile(length, max_tile, PAPER)
    assert PAPER.is_valid_output(tile) and tile <= max(max_tile, PAPER.min_tile)
    n_balanced = len(plan_tiles((length, 1), (tile, 20), PAPER))
    n_fixed = len(plan_tiles((length, 1), (PAPER.floor_output(max_tile), 20), PAPER))
    assert n_balanced <= n_fixed
    assert n_balanced * tile - length < n_balanced * 16 + tile  # little work outside the image


def test_balanced_tile_splits_2048_evenly() -> None:
    assert balanced_tile(2048, 900, PAPER) == 692  # 3 tiles of 692 instead of 900 + 900 + 260
