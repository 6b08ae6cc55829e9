"""Tests of unet_core.synthetic: exact, reproducible labels, touching cells, both looks, data sets."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from unet_core.datasets import SplitRule, open_dataset, split
from unet_core.synthetic import SynthConfig, generate, synthetic_dataset, write_dataset

SMALL = SynthConfig(height=128, width=160, n_cells=(10, 20), radius=(6, 12))


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (a, b), a < b, of distinct cells that are 4-adjacent somewhere."""
    pairs: set[tuple[int, int]] = set()
    for a, b in ((labels[1:, :], labels[:-1, :]), (labels[:, 1:], labels[:, :-1])):
        edge = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[edge], b[edge]), np.maximum(a[edge], b[edge])
        pairs |= set(zip(lo.tolist(), hi.tolist(), strict=True))
    return pairs


def test_reproducible_from_seed() -> None:
    image1, labels1 = generate(SMALL, 7)
    image2, labels2 = generate(SMALL, 7)
    np.testing.assert_array_equal(image1, image2)
    np.testing.assert_array_equal(labels1, labels2)
    image3, labels3 = generate(SMALL, 8)
    assert not np.array_equal(labels1, labels3)
    assert not np.array_equal(image1, image3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_are_exact(seed: int) -> None:
    image, labels = generate(SMALL, seed)
    assert image.shape == labels.shape == (128, 160)
    assert image.dtype == np.uint8 and labels.dtype == np.int32
    n = int(labels.max())
    assert n >= 5
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))  # consecutive 1..n
    for cell_id, box in enumerate(ndimage.find_objects(labels), start=1):
        assert ndimage.label(labels[box] == cell_id)[1] == 1  # one 4-connected region each
    assert np.bincount(labels.ravel())[1:].min() >= SMALL.min_area


def test_many_cells_touch() -> None:
    touching_cells = total_cells = n_pairs = 0
    for seed in range(4):
        _, labels = generate(SynthConfig(), seed)
        pairs = touching_pairs(labels)
        n_pairs += len(pairs)
        touching_cells += len({c for pair in pairs for c in pair})
        total_cells += int(labels.max())
    assert n_pairs > 0
    assert touching_cells / total_cells > 0.5  # ~0.75 with the defaults
    _, packed = generate(replace(SMALL, touching_fraction=1.0), 0)
    touching = {c for pair in touching_pairs(packed) for c in pair}
    assert len(touching) / packed.max() > 0.8  # placed against a neighbour: they really touch


def test_foreground_fraction_is_sensible() -> None:
    fractions = [float((generate(SynthConfig(), seed)[1] > 0).mean()) for seed in range(3)]
    assert all(0.02 < f < 0.6 for f in fractions), fractions


def test_fluorescence_cells_are_bright_phase_cells_dark() -> None:
    for seed in range(2):
        image, labels = generate(SMALL, seed)
        inside, outside = image[labels > 0].mean(), image[labels == 0].mean()
        assert inside > outside + 50
        image, labels = generate(replace(SMALL, mode="phase"), seed)
        inside, outside = image[labels > 0].mean(), image[labels == 0].mean()
        assert inside < outside - 15
        assert 90 < outside < 170  # mid-gray background


def test_phase_halo_is_brighter_than_far_background() -> None:
    image, labels = generate(SynthConfig(mode="phase", noise=0.0, photons=0.0), 3)
    distance = ndimage.distance_transform_edt(labels == 0)
    assert image[(distance > 0) & (distance <= 2)].mean() > image[distance > 15].mean() + 10


def test_sixteen_bit_output() -> None:
    image, labels = generate(replace(SMALL, bit_depth=16), 0)
    assert image.dtype == np.uint16 and image.max() > 10_000
    np.testing.assert_array_equal(labels, generate(SMALL, 0)[1])  # same cells, other depth


def test_512_is_fast() -> None:
    generate(SynthConfig(), 0)  # warm-up (imports, allocator)
    times = []
    for seed in range(3):
        start = time.perf_counter()
        generate(SynthConfig(), seed)
        times.append(time.perf_counter() - start)
    assert min(times) < 0.5, times  # ~0.06 s on a dev core; the margin is for shared machines


def test_config_round_trip_and_validation() -> None:
    cfg = SynthConfig(mode="phase", n_cells=(3, 4), bit_depth=16)
    assert SynthConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        SynthConfig(mode="brightfield")
    with pytest.raises(ValueError):
        SynthConfig(radius=(10, 5))
    with pytest.raises(ValueError):
        SynthConfig(overlap=0.0)


def test_write_then_open_round_trip(tmp_path: Path) -> None:
    out = write_dataset(tmp_path / "synth", 6, SMALL, seed=3)
    assert (out / "README.md").read_text().count("seed=3") >= 1
    ds = open_dataset(out)
    assert ds.layout == "generic" and ds.problems == []
    assert ds.mask_encoding == "instance_ids"
    assert [s.name for s in ds.samples] == ["000", "001", "002", "003", "004", "005"]
    memory = synthetic_dataset(6, SMALL, seed=3)
    assert memory.layout == "synthetic" and len(memory) == 6
    assert [s.name for s in memory.samples] == [s.name for s in ds.samples]
    for i in range(6):
        image, labels = generate(SMALL, (3, i))
        np.testing.assert_array_equal(ds.load_image(i)[..., 0], image)
        np.testing.assert_array_equal(ds.load_instances(i), labels)
        np.testing.assert_array_equal(memory.load_image(i), ds.load_image(i))
        np.testing.assert_array_equal(memory.load_instances(i), labels)
    assert split(memory, part="val") == split(ds, part="val") == [0, 5]
    assert memory.split_rule == ds.split_rule == SplitRule("every_kth", 5)


def test_synthetic_datasets_of_different_seeds_share_no_sample() -> None:
    a, b = synthetic_dataset(3, SMALL, seed=0), synthetic_dataset(3, SMALL, seed=1)
    for i in range(3):
        for j in range(3):
            assert not np.array_equal(a.load_instances(i), b.load_instances(j))
    classes = a.load_classes(0)
    assert classes.dtype == np.uint8 and set(np.unique(classes).tolist()) == {0, 1}
