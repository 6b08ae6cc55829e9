"""Tests of unet_core.datasets: layouts, mask encodings, problems, splits, data root."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from unet_core.datasets import (
    Dataset,
    DatasetError,
    SplitRule,
    default_split_rule,
    detect_mask_encoding,
    list_datasets,
    mask_to_classes,
    mask_to_instances,
    open_dataset,
    split,
)
from unet_core.io import read_image, write_png, write_tiff
from unet_core.paths import DATA_ENV, REPO_ROOT, data_root

SHARED = Path("/work/shared/data")
ISBI = SHARED / "isbi2012"
DSB = SHARED / "dsb2018"


# --------------------------------------------------------------------------- fixtures


def grid_labels(h: int = 32, w: int = 32, step: int = 8) -> np.ndarray:
    """ISBI-style labels: 255 cell interiors separated by 1-pixel black membranes every ``step``."""
    labels = np.full((h, w), 255, np.uint8)
    labels[::step, :] = 0
    labels[:, ::step] = 0
    return labels


def ramp_image(h: int, w: int, offset: int = 0) -> np.ndarray:
    return ((np.arange(h * w).reshape(h, w) + offset) % 251).astype(np.uint8)


def instance_mask(h: int = 24, w: int = 24, n: int = 3, dtype: type = np.uint16) -> np.ndarray:
    """Up to 3 square cells with ids 1..n; cell 2 shares a boundary with cell 1, cell 3 is apart."""
    mask = np.zeros((h, w), dtype)
    for k, (y, x) in enumerate([(2, 2), (2, 7), (14, 14)][:n]):
        mask[y : y + 5, x : x + 5] = k + 1
    return mask


def write_generic(root: Path, stems: list[str], h: int = 24, w: int = 24) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, stem in enumerate(stems):
        write_png(root / "images" / f"{stem}.png", ramp_image(h, w, i))
        write_png(root / "masks" / f"{stem}.png", instance_mask(h, w))
    return root


def write_ctc(root: Path) -> Path:
    """Sequence 01 with frames t000..t004 (GT for t001, ST for t001 and t003) and 02 with ST for t000."""
    for seq, n_frames in (("01", 5), ("02", 2)):
        (root / seq).mkdir(parents=True)
        for t in range(n_frames):
            write_tiff(root / seq / f"t{t:03d}.tif", ramp_image(24, 24, t).astype(np.uint16))
    gt, st1, st2 = root / "01_GT" / "SEG", root / "01_ST" / "SEG", root / "02_ST" / "SEG"
    for folder in (gt, st1, st2):
        folder.mkdir(parents=True)
    write_tiff(gt / "man_seg001.tif", instance_mask(n=3))
    write_tiff(st1 / "man_seg001.tif", instance_mask(n=1))
    write_tiff(st1 / "man_seg003.tif", instance_mask(n=2))
    write_tiff(st2 / "man_seg000.tif", instance_mask(n=3))
    write_tiff(st2 / "man_seg007.tif", instance_mask(n=3))  # no frame t007
    return root


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not ISBI.is_dir(), reason="shared ISBI 2012 data not present")
def test_isbi2012_shared_example() -> None:
    ds = open_dataset(ISBI)
    assert ds.layout == "isbi2012"
    assert len(ds) == 30
    assert ds.problems == []
    assert ds.mask_encoding == "binary_0_255"
    assert [s.name for s in ds.samples] == [f"{i:02d}" for i in range(30)]
    val = split(ds, part="val")
    assert val == [25, 26, 27, 28, 29]
    assert [ds.samples[i].name for i in val] == ["25", "26", "27", "28", "29"]
    assert split(ds, part="train") == list(range(25))
    assert ds.split_rule == SplitRule("last_n", 5)
    counts = []
    for i in val:
        instances = ds.load_instances(i)
        assert instances.dtype == np.int32 and instances.shape == (512, 512)
        # Membranes (label 0) are background, every cell interior is one instance.
        raw = ds.load_mask(i)
        np.testing.assert_array_equal(instances > 0, raw == 255)
        counts.append(len(np.unique(instances)) - 1)
    assert min(counts) >= 50 and sum(counts) > 300  # ~100-140 cells per slice
    assert ds.load_image(0).shape == (512, 512, 1)
    classes = ds.load_classes(0)
    assert set(np.unique(classes)) == {0, 1}


@pytest.mark.skipif(not DSB.is_dir(), reason="shared DSB 2018 data not present")
def test_dsb2018_shared_example() -> None:
    ds = open_dataset(DSB)
    assert ds.layout == "generic"
    assert len(ds) == 153
    assert ds.problems == []
    assert ds.mask_encoding == "instance_ids"
    with open(DSB / "index.csv", newline="") as fh:
        n_nuclei = {row["id"]: int(row["n_nuclei"]) for row in csv.DictReader(fh)}
    assert {s.name for s in ds.samples} == set(n_nuclei)
    for i in (0, 50, 152):
        sample = ds.samples[i]
        instances = ds.load_instances(i)
        raw = read_image(sample.mask_path).data[0, ..., 0]
        np.testing.assert_array_equal(instances, raw.astype(np.int32))  # ids kept as stored
        np.testing.assert_array_equal(np.unique(instances), np.arange(n_nuclei[sample.name] + 1))
        image = ds.load_image(i)
        assert image.shape[:2] == instances.shape and image.shape[2] == 4  # RGBA as stored
    assert split(ds, part="val") == list(range(0, 153, 5))


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data folder not present")
def test_list_datasets_on_shared_data() -> None:
    found = {d.name: d for d in list_datasets(SHARED)}
    if ISBI.is_dir():
        assert (found["isbi2012"].layout, found["isbi2012"].n_samples) == ("isbi2012", 30)
    if DSB.is_dir():
        assert (found["dsb2018"].layout, found["dsb2018"].n_samples) == ("generic", 153)


# --------------------------------------------------------------------------- layouts from fixtures


def test_isbi_stacks(tmp_path: Path) -> None:
    volume = np.stack([ramp_image(32, 32, z) for z in range(6)])
    labels = np.stack([grid_labels()] * 6)
    write_tiff(tmp_path / "train-volume.tif", volume)
    write_tiff(tmp_path / "train-labels.tif", labels)
    write_tiff(tmp_path / "test-volume.tif", volume)  # unlabelled, not part of the data set
    ds = open_dataset(tmp_path)
    assert ds.layout == "isbi2012" and ds.problems == []
    assert len(ds) == 6
    assert [s.slice_index for s in ds.samples] == list(range(6))
    assert ds.mask_encoding == "binary_0_255"
    np.testing.assert_array_equal(ds.load_image(4)[..., 0], volume[4])
    instances = ds.load_instances(2)
    assert instances.max() == 16  # 4 x 4 cells between the membrane lines
    np.testing.assert_array_equal(instances == 0, labels[2] == 0)
    assert split(ds, part="val") == [1, 2, 3, 4, 5]


def test_isbi_png_pairs_natural_order(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(12):  # unpadded names: string order would put 10 and 11 after 1
        write_png(tmp_path / "images" / f"{i}.png", ramp_image(32, 32, i))
        write_png(tmp_path / "labels" / f"{i}.png", grid_labels())
    ds = open_dataset(tmp_path)
    assert ds.layout == "isbi2012"
    assert [s.name for s in ds.samples] == [str(i) for i in range(12)]
    assert [ds.samples[i].name for i in split(ds, part="val")] == ["7", "8", "9", "10", "11"]


def test_membrane_instances_use_4_connectivity() -> None:
    # A diagonal (8-connected) membrane: with 8-connectivity the two sides would merge.
    labels = np.full((10, 10), 255, np.uint8)
    labels[np.arange(10), np.arange(10)] = 0
    instances = mask_to_instances(labels, "binary_0_255")
    assert instances.max() == 2
    assert instances[0, 9] != instances[9, 0]


def test_ctc_layout(tmp_path: Path) -> None:
    ds = open_dataset(write_ctc(tmp_path))
    assert ds.layout == "ctc"
    assert [s.name for s in ds.samples] == ["01/t001", "01/t003", "02/t000"]
    assert ds.samples[0].mask_path == tmp_path / "01_GT" / "SEG" / "man_seg001.tif"  # GT over ST
    assert ds.samples[1].mask_path == tmp_path / "01_ST" / "SEG" / "man_seg003.tif"
    assert ds.load_instances(0).max() == 3
    assert ds.mask_encoding == "instance_ids"
    assert len(ds.problems) == 1 and "02_ST/SEG/man_seg007.tif" in ds.problems[0]
    np.testing.assert_array_equal(ds.load_image(1)[..., 0], ramp_image(24, 24, 3))


def test_ctc_slice_annotations_of_3d_frames(tmp_path: Path) -> None:
    (tmp_path / "01").mkdir()
    stack = np.stack([ramp_image(24, 24, z) for z in range(5)])
    write_tiff(tmp_path / "01" / "t000.tif", stack)
    (tmp_path / "01_GT" / "SEG").mkdir(parents=True)
    write_tiff(tmp_path / "01_GT" / "SEG" / "man_seg_000_002.tif", instance_mask())
    ds = open_dataset(tmp_path)
    assert [(s.name, s.slice_index) for s in ds.samples] == [("01/t000_z002", 2)]
    np.testing.assert_array_equal(ds.load_image(0)[..., 0], stack[2])


def test_generic_layout_matches_by_stem(tmp_path: Path) -> None:
    write_generic(tmp_path, ["b", "a"])
    write_png(tmp_path / "images" / "c.png", ramp_image(24, 24))
    write_tiff(tmp_path / "masks" / "c.tif", instance_mask(n=2))  # other suffix, same stem
    ds = open_dataset(tmp_path)
    assert ds.layout == "generic" and ds.problems == []
    assert [s.name for s in ds.samples] == ["a", "b", "c"]
    assert ds.samples[2].mask_path.suffix == ".tif"
    assert ds.load_instances(2).max() == 2
    assert ds.load_classes(0).max() == 1 and ds.n_classes == 2


def test_no_layout_raises_clear_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="images/ \\+ masks/") as info:
        open_dataset(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(DatasetError, match="no such folder"):
        open_dataset(tmp_path / "missing")


# --------------------------------------------------------------------------- problems


def test_problems_are_reported_and_the_rest_loads(tmp_path: Path) -> None:
    write_generic(tmp_path, ["good1", "good2", "small", "nomask", "corrupt"])
    write_png(tmp_path / "masks" / "small.png", instance_mask(12, 12))  # wrong size
    (tmp_path / "masks" / "nomask.png").unlink()
    (tmp_path / "images" / "corrupt.png").write_bytes(b"not a png at all")
    write_png(tmp_path / "masks" / "orphan.png", instance_mask())  # mask without image
    ds = open_dataset(tmp_path)
    assert [s.name for s in ds.samples] == ["good1", "good2"]
    text = "\n".join(ds.problems)
    assert len(ds.problems) == 4
    assert "masks/small.png: mask is 12x12 (W x H) but images/small.png is 24x24" in text
    assert "images/nomask.png: no mask" in text
    assert "images/corrupt.png: not a readable PNG, JPEG or TIFF image" in text
    assert "masks/orphan.png: no image" in text
    assert ds.load_instances(1).max() == 3


def test_verify_finds_corrupt_pixel_data_and_odd_masks(tmp_path: Path) -> None:
    write_generic(tmp_path, ["a", "b", "c", "d", "e"])
    raw = (tmp_path / "images" / "d.png").read_bytes()
    (tmp_path / "images" / "d.png").write_bytes(raw[: len(raw) // 2])  # header fine, data cut
    binary = (instance_mask() > 0).astype(np.uint8) * 255  # cells 1 and 2 merge: 2 blobs, 1 id
    write_png(tmp_path / "masks" / "e.png", binary)
    assert len(open_dataset(tmp_path)) == 5  # header checks cannot see either
    ds = open_dataset(tmp_path, verify=True)
    assert [s.name for s in ds.samples] == ["a", "b", "c", "e"]
    assert any(p.startswith("images/d.png") for p in ds.problems)
    assert any(p.startswith("masks/e.png: looks like binary_0_255") for p in ds.problems)


def test_negative_mask_values_are_a_problem(tmp_path: Path) -> None:
    write_generic(tmp_path, ["a", "b"])
    write_tiff(tmp_path / "masks" / "a.tif", -instance_mask().astype(np.int32))
    (tmp_path / "masks" / "a.png").unlink()
    ds = open_dataset(tmp_path)
    assert [s.name for s in ds.samples] == ["b"]
    assert any("masks/a.tif" in p and "negative" in p for p in ds.problems)


# --------------------------------------------------------------------------- encodings


def class_map() -> np.ndarray:
    """Two classes, three separate objects each, one class-1 object touching a class-2 object."""
    mask = np.zeros((30, 30), np.uint8)
    for k in range(3):
        mask[2 + 9 * k : 7 + 9 * k, 2:7] = 1
        mask[2 + 9 * k : 7 + 9 * k, 14:19] = 2
    mask[2:7, 7:14] = 2  # joins the first class-1 and class-2 squares
    return mask


def test_detect_each_encoding() -> None:
    cells = instance_mask(n=3, dtype=np.uint8)
    assert detect_mask_encoding((cells > 0).astype(np.uint8) * 255) == "binary_0_255"
    assert detect_mask_encoding((cells > 0).astype(np.uint8)) == "binary_0_1"
    assert detect_mask_encoding((cells > 0).astype(np.uint16) * 65535) == "binary_0_255"
    assert detect_mask_encoding(class_map()) == "class_indexes"
    assert detect_mask_encoding(cells) == "instance_ids"
    assert detect_mask_encoding(np.zeros((8, 8), np.uint8)) == "binary_0_1"
    assert detect_mask_encoding(cells.astype(np.float32)) == "instance_ids"


def test_detect_16_bit_instance_ids() -> None:
    mask = np.zeros((64, 64), np.uint16)
    ids = iter(range(1000, 1000 + 400))  # ids above 255, more than any class map
    for y in range(0, 64, 3):
        for x in range(0, 64, 3):
            mask[y : y + 2, x : x + 2] = next(ids, 0)
    assert detect_mask_encoding(mask) == "instance_ids"
    instances = mask_to_instances(mask, "instance_ids")
    assert instances.dtype == np.int32
    np.testing.assert_array_equal(instances, mask.astype(np.int32))


def test_invalid_masks_raise() -> None:
    with pytest.raises(DatasetError, match="negative"):
        detect_mask_encoding(np.array([[0, -1]], np.int16))
    with pytest.raises(DatasetError, match="fractional"):
        detect_mask_encoding(np.array([[0, 0.5]], np.float32))


def test_class_masks_become_instances_per_class() -> None:
    mask = class_map()
    instances = mask_to_instances(mask, "class_indexes")
    assert instances.max() == 6  # touching objects of different classes stay apart
    assert instances[4, 4] != instances[4, 10]
    np.testing.assert_array_equal(mask_to_classes(mask, "class_indexes"), mask)
    binary = mask_to_instances((mask > 0).astype(np.uint8), "binary_0_1")
    assert binary.max() == 5  # as binary, the joined pair is one object


def test_class_index_data_set(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        write_png(tmp_path / "images" / f"{i}.png", ramp_image(30, 30, i))
        write_png(tmp_path / "masks" / f"{i}.png", class_map())
    ds = open_dataset(tmp_path)
    assert ds.mask_encoding == "class_indexes" and ds.n_classes == 3
    assert ds.load_classes(0).max() == 2


# --------------------------------------------------------------------------- splits


def test_split_rules() -> None:
    assert SplitRule("every_kth", 5).val_indices(12) == [0, 5, 10]
    assert SplitRule("every_kth", 3).indices(7, "train") == [1, 2, 4, 5]
    assert SplitRule("last_n", 5).val_indices(30) == [25, 26, 27, 28, 29]
    assert SplitRule("last_n", 5).val_indices(3) == [0, 1, 2]
    assert default_split_rule("isbi2012") == SplitRule("last_n", 5)
    assert default_split_rule("generic") == SplitRule("every_kth", 5)
    for rule in (SplitRule("every_kth", 4), SplitRule("last_n", 2)):
        assert SplitRule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
        train, val = rule.indices(17, "train"), rule.indices(17, "val")
        assert sorted(train + val) == list(range(17))
        assert train == rule.indices(17, "train")  # deterministic
    # "none": a final model trains on everything; with groups, only the groups are held out.
    assert SplitRule("none").indices(6, "train") == list(range(6)) and SplitRule("none").val_indices(6) == []
    groups = ["a", "b", "a", "c", "b", "a"]
    assert SplitRule("none", groups=("b",)).indices(6, "val", groups) == [1, 4]
    assert SplitRule("none", groups=("b",)).indices(6, "val_random", groups) == []
    with pytest.raises(ValueError):
        SplitRule("random", 5)
    with pytest.raises(ValueError):
        SplitRule("every_kth", 0)
    with pytest.raises(ValueError):
        SplitRule().indices(5, "test")


def test_split_of_a_dataset(tmp_path: Path) -> None:
    ds = open_dataset(write_generic(tmp_path, [f"s{i}" for i in range(11)]))
    assert split(ds, part="val") == [0, 5, 10]
    assert split(ds, k=2, part="val") == [0, 2, 4, 6, 8, 10]
    assert split(ds, part="val", rule=SplitRule("last_n", 2)) == [9, 10]
    assert split(ds, part="train") == split(open_dataset(tmp_path), part="train")
    with pytest.raises(ValueError):
        split(ds, k=2, rule=SplitRule())


# --------------------------------------------------------------------------- data root


def test_data_root_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv(DATA_ENV)
    shared = REPO_ROOT.parent / "shared" / "data"
    assert data_root() == (shared if shared.is_dir() else REPO_ROOT / "data")
    assert (REPO_ROOT / "unet_core" / "datasets.py").is_file()


def test_list_datasets_skips_bad_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_generic(tmp_path / "good", ["a", "b"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken" / "images").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("not a folder")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    found = list_datasets()
    assert [(d.name, d.layout, d.n_samples, d.mask_encoding) for d in found] == [
        ("good", "generic", 2, "instance_ids")
    ]
    assert list_datasets(tmp_path / "missing") == []


def test_dataset_is_a_plain_container() -> None:
    ds = Dataset(root=Path("x"), layout="generic", samples=[])
    assert len(ds) == 0 and ds.problems == [] and ds.split_rule == SplitRule()
