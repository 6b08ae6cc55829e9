"""Tests of unet_core.studio.browse: the data root guard, safe zip extraction (traversal, links, bombs),
per-sample and per-data-set views, weight maps from cached distances, model facts."""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unet_core.datasets import DatasetError, SplitRule, open_dataset, split
from unet_core.paths import DATA_ENV
from unet_core.studio import browse, sources, uploads
from unet_core.studio import visualize as viz
from unet_core.studio.registry import ModelEntry
from unet_core.studio.sources import DataSource
from unet_core.studio.uploads import (
    BrowseError,
    OutsideRoot,
    ZipRejected,
    extract_upload,
    find_dataset_folder,
    resolve_in_root,
    safe_extract_zip,
)
from unet_core.synthetic import SynthConfig, synthetic_dataset, write_dataset
from unet_core.weights import weight_map_parts

SMALL = SynthConfig(height=64, width=80, n_cells=(4, 9), radius=(5.0, 10.0))


def small_dataset(root: Path, n: int = 5, seed: int = 1) -> Path:
    return write_dataset(root, n, SMALL, seed=seed)


def zip_bytes(members: dict[str, bytes], folder: Path | None = None) -> bytes:
    """A zip of ``members`` (name -> bytes) plus, when given, every file under ``folder``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        if folder is not None:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder.parent).as_posix())
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def patch_central(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite a field of the (first) central directory entry: what a crafted zip does."""
    at = data.index(b"PK\x01\x02") + offset
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt):]


# --------------------------------------------------------------------------- data root guard


def test_resolve_in_root_accepts_inside_and_refuses_traversal(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "cells" / "sub").mkdir(parents=True)
    assert resolve_in_root(root, "cells") == (root / "cells").resolve()
    assert resolve_in_root(root, "cells/sub/../sub") == (root / "cells" / "sub").resolve()
    assert resolve_in_root(root, str(root / "cells")) == (root / "cells").resolve()  # absolute, inside
    assert resolve_in_root(root, "") == root.resolve()
    for outside in ("..", "../data2", "cells/../../x", "/etc", str(tmp_path)):
        with pytest.raises(OutsideRoot, match="outside the data folder"):
            resolve_in_root(root, outside)
    # A link inside the root that points out of it is resolved, then refused.
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutsideRoot):
        resolve_in_root(root, "link")


def test_files_linked_from_outside_the_data_root_are_left_out(tmp_path: Path, monkeypatch) -> None:
    """The guard covers every file opened, not only the chosen folder: a data set whose masks/
    folder (or one image) is a link out of the root keeps only the pairs that stay inside."""
    root, outside = tmp_path / "data", tmp_path / "private"
    cfg = SynthConfig(height=48, width=48)
    write_dataset(root / "cells", 3, cfg)
    write_dataset(outside / "secret", 3, cfg, seed=1)
    (root / "cells" / "images" / "002.png").unlink()
    (root / "cells" / "images" / "002.png").symlink_to(outside / "secret" / "images" / "002.png")
    write_dataset(root / "linked", 2, cfg)
    shutil.rmtree(root / "linked" / "masks")
    (root / "linked" / "masks").symlink_to(outside / "secret" / "masks", target_is_directory=True)
    monkeypatch.setenv(DATA_ENV, str(root))

    ds = sources.open_source(DataSource("folder", path=str(root / "cells"), label="cells"))
    assert [s.name for s in ds.samples] == ["000", "001"]
    assert any("images/002.png: links to a file outside the data folder" in p for p in ds.problems)
    linked = sources.open_source(DataSource("folder", path=str(root / "linked"), label="linked"))
    assert len(linked) == 0 and sum("links to a file outside" in p for p in linked.problems) == 2
    # The command line opens what it is given: the user's own folders, links and all.
    assert len(open_dataset(root / "cells")) == 3


# --------------------------------------------------------------------------- zip extraction


def test_safe_extract_zip_writes_the_files_and_skips_macos_litter(tmp_path: Path) -> None:
    data = zip_bytes({"set/images/a.png": b"img", "set/masks/a.png": b"mask", "__MACOSX/set/._a.png": b"x",
                      "set/empty/": b""})
    written = safe_extract_zip(io.BytesIO(data), tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "set/images/a.png", "set/masks/a.png"]
    assert (tmp_path / "out" / "set" / "masks" / "a.png").read_bytes() == b"mask"
    assert not (tmp_path / "out" / "__MACOSX").exists()


@pytest.mark.parametrize("name", ["../evil.png", "set/../../evil.png", "/tmp/evil.png", "C:/evil.png",
                                  "..\\evil.png", "set\\..\\..\\evil.png"])
def test_zip_members_outside_the_folder_are_refused_before_writing(tmp_path: Path, name: str) -> None:
    data = zip_bytes({"set/images/a.png": b"fine", name: b"evil"})
    target = tmp_path / "uploads" / "x"
    with pytest.raises(ZipRejected, match="absolute path|outside"):
        safe_extract_zip(io.BytesIO(data), target)
    assert list(target.rglob("*")) == []  # nothing written, not even the good member
    assert not list(tmp_path.rglob("evil.png"))


def test_zip_symlinks_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        link = zipfile.ZipInfo("set/images/a.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(ZipRejected, match="symbolic link"):
        safe_extract_zip(io.BytesIO(buf.getvalue()), tmp_path / "out")
    assert not (tmp_path / "out" / "set").exists()


def test_zip_bombs_and_member_floods_are_refused(tmp_path: Path) -> None:
    bomb = zip_bytes({"set/images/zeros.tif": bytes(2_000_000)})
    assert len(bomb) < 20_000  # 2 MB of zeros compress to a few KB: a (small) zip bomb
    with pytest.raises(ZipRejected, match="zip bomb"):
        safe_extract_zip(io.BytesIO(bomb), tmp_path / "a", max_bytes=1_000_000)
    assert not (tmp_path / "a" / "set").exists()

    flood = zip_bytes({f"set/images/{i}.png": b"x" for i in range(30)})
    with pytest.raises(ZipRejected, match="30 entries"):
        safe_extract_zip(io.BytesIO(flood), tmp_path / "b", max_members=20)

    # A header that declares 4 GB is refused from the directory alone, before reading any data.
    declared = patch_central(zip_bytes({"set/a.png": b"small"}), 24, "<I", 0xF000_0000)
    with pytest.raises(ZipRejected, match="more than"):
        safe_extract_zip(io.BytesIO(declared), tmp_path / "c", max_bytes=10**9)


def test_a_zip_whose_header_understates_the_size_is_refused(tmp_path: Path) -> None:
    data = zip_bytes({"set/zeros.tif": bytes(500_000)})
    lying = patch_central(data, 24, "<I", 10)  # claims 10 bytes
    at = lying.index(b"PK\x03\x04") + 22
    lying = lying[:at] + struct.pack("<I", 10) + lying[at + 4:]
    with pytest.raises(ZipRejected):
        safe_extract_zip(io.BytesIO(lying), tmp_path / "out", max_bytes=1000)
    written = tmp_path / "out" / "set" / "zeros.tif"
    assert not written.exists() or written.stat().st_size <= 1000


def test_encrypted_damaged_and_non_zips_are_refused(tmp_path: Path) -> None:
    encrypted = patch_central(zip_bytes({"set/a.png": b"x"}), 8, "<H", 0x1)
    with pytest.raises(ZipRejected, match="password"):
        safe_extract_zip(io.BytesIO(encrypted), tmp_path / "a")
    with pytest.raises(ZipRejected, match="not a readable zip"):
        safe_extract_zip(io.BytesIO(b"PK but not really a zip file"), tmp_path / "b")


def test_extract_upload_finds_the_data_set_and_replaces_the_sessions_last_upload(tmp_path: Path) -> None:
    first = small_dataset(tmp_path / "src" / "my cells", n=3)
    data = zip_bytes({}, folder=first)  # the zip holds the folder "my cells/"
    root = tmp_path / "uploads"
    folder = extract_upload(data, "session1", root)
    assert folder.name == "my cells" and folder.is_relative_to(root / "session1")
    assert len(open_dataset(folder)) == 3
    assert extract_upload(data, "session1", root) == folder  # same bytes: reused

    second = small_dataset(tmp_path / "src2" / "other", n=2)
    folder2 = extract_upload(zip_bytes({}, folder=second), "session1", root)
    assert len(open_dataset(folder2)) == 2
    assert not folder.exists()  # the session's earlier upload is gone
    assert extract_upload(data, "session2", root).exists()  # other sessions are separate

    with pytest.raises(DatasetError, match="expected"):
        extract_upload(zip_bytes({"notes.txt": b"no images here"}), "session1", root)
    with pytest.raises(ValueError, match="session"):
        extract_upload(data, "../escape", root)


def test_an_upload_of_images_with_qupath_or_fiji_outlines_opens_as_a_data_set(tmp_path: Path) -> None:
    from unet_core.instances import object_table
    from unet_core.outlines import imagej_roiset, qupath_geojson, stack_outlines

    ids = np.zeros((32, 40), np.int32)
    ids[2:9, 3:10], ids[15:25, 20:30] = 1, 2
    outlines = stack_outlines(ids[None], [object_table(ids, np.ones(ids.shape, np.float32))])
    png = io.BytesIO()
    Image.fromarray(np.full((32, 40), 7, np.uint8)).save(png, format="PNG")
    members = {"project/images/a.png": png.getvalue(), "project/images/b.png": png.getvalue(),
               "project/annotations/a.geojson": qupath_geojson(outlines).encode(),
               "project/annotations/b_RoiSet.zip": imagej_roiset(outlines)}
    root = tmp_path / "uploads"
    data = zip_bytes(members)  # once: a zip's entries carry the time they were written
    folder = extract_upload(data, "s1", root)
    assert folder.name == "dataset-from-annotations" and folder.parent.name == "project"
    dataset = open_dataset(folder)
    assert [s.name for s in dataset.samples] == ["a", "b"]
    assert all(np.array_equal(dataset.load_instances(i), ids) for i in range(2))
    assert extract_upload(data, "s1", root) == folder  # the same upload: made once
    broken = {**members, "project/annotations/a.geojson": b"{broken", "project/annotations/b_RoiSet.zip": b"PK.."}
    with pytest.raises(DatasetError, match="no image .* has a readable annotation file"):
        extract_upload(zip_bytes(broken), "s1", root)


def test_uploads_touch_only_their_own_folders_and_keep_to_a_quota(tmp_path: Path, monkeypatch) -> None:
    data = zip_bytes({}, folder=small_dataset(tmp_path / "src" / "cells", n=2))
    root = tmp_path / "uploads"
    root.mkdir()
    old_project = root / "my-project"  # a folder of the user's own under the uploads root
    (old_project / "notes").mkdir(parents=True)
    stale = tmp_path / "stale"
    extract_upload(data, "old-session", root)
    for folder in (old_project, root / "old-session"):  # both three days old
        os.utime(folder, (time.time() - 3 * 86400,) * 2)
    extract_upload(data, "new-session", root)
    assert old_project.is_dir(), "an unmarked folder is never pruned"
    assert not (root / "old-session").exists(), "an old upload of this app is"
    assert (root / "new-session" / uploads.UPLOAD_MARK).is_file()
    assert stat.S_IMODE((root / "new-session").stat().st_mode) == 0o700

    # The quota counts every upload; the message says what is left and how to raise it.
    monkeypatch.setenv(uploads.UPLOADS_QUOTA_ENV, str(1.5 * len(data) / 1024**3 * 10))
    big = zip_bytes({f"images/{i}.png": bytes(len(data) * 6) for i in range(3)})  # 18x, zeros: a tiny zip
    with pytest.raises(ZipRejected, match=f"left.*{uploads.UPLOADS_QUOTA_ENV}"):
        extract_upload(big, "third", root)
    assert not (root / "third").exists()

    # A planted link as the uploads root, or a folder others may write to, is refused.
    stale.mkdir()
    link = tmp_path / "planted"
    link.symlink_to(stale, target_is_directory=True)
    with pytest.raises(BrowseError, match="is a link"):
        extract_upload(data, "s", link)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BrowseError, match="others may write"):
        extract_upload(data, "s", shared)
    assert list(stale.iterdir()) == [] and list(shared.iterdir()) == []


def test_find_dataset_folder_looks_a_few_levels_down(tmp_path: Path) -> None:
    small_dataset(tmp_path / "a" / "b" / "cells", n=2)
    assert find_dataset_folder(tmp_path) == tmp_path / "a" / "b" / "cells"
    with pytest.raises(DatasetError):
        find_dataset_folder(tmp_path, max_depth=1)


# --------------------------------------------------------------------------- samples and statistics


def test_open_source_synthetic_is_the_generators_data_set() -> None:
    source = DataSource("synthetic", mode="phase", n=3, seed=4, size=64)
    ds = sources.open_source(source)
    expected = synthetic_dataset(3, SynthConfig(height=64, width=64, mode="phase"), seed=4)
    np.testing.assert_array_equal(ds.load_image(2), expected.load_image(2))
    view = browse.load_sample(ds, 2)
    assert view.n_objects == len(np.unique(expected.load_instances(2))) - 1
    assert view.areas.sum() == np.count_nonzero(expected.load_instances(2))
    with pytest.raises(ValueError):
        DataSource("web")


def test_dataset_stats_count_objects_and_report_unreadable_masks(tmp_path: Path) -> None:
    root = small_dataset(tmp_path / "cells", n=6)
    mask = root / "masks" / "005.png"
    mask.write_bytes(mask.read_bytes()[:60])  # header intact, pixel data cut off
    ds = open_dataset(root)
    assert len(ds) == 6 and not ds.problems  # headers only: the damage is not seen yet
    stats = browse.dataset_stats(ds)
    assert len(stats.rows) == 5 and len(stats.failed) == 1 and "005" in stats.failed[0]
    for row in stats.rows:
        instances = ds.load_instances(row.index)
        assert row.n_objects == len(np.unique(instances)) - 1
        assert (row.height, row.width) == (64, 80)
    assert stats.areas.size == sum(r.n_objects for r in stats.rows)
    assert stats.size_counts() == [("80 × 64", 5)]
    assert [r.part for r in stats.rows] == ["validation", "train", "train", "train", "train"]
    assert not stats.capped and browse.dataset_stats(ds, limit=2).capped
    with pytest.raises(BrowseError, match="005"):
        browse.load_sample(ds, 5)


def test_split_rows_and_words_follow_the_data_sets_rule(tmp_path: Path) -> None:
    ds = open_dataset(small_dataset(tmp_path / "cells", n=6))
    rows = browse.split_rows(ds)
    assert [r["#"] - 1 for r in rows if r["Used for"] == "validation"] == split(ds, part="val")
    assert rows[0]["Image file"] == "images/000.png" and rows[0]["Mask file"] == "masks/000.png"
    assert browse.describe_split(SplitRule("every_kth", 5), 8) == (
        "every 5th image, starting with the first (1st, 6th): 2 of 8 held out for validation, 6 for training")
    assert browse.describe_split(SplitRule("last_n", 5), 30).startswith("the last 5 images: 5 of 30")
    assert browse.describe_rule(SplitRule("every_kth", 2), 10, 10) == (
        "every 2nd image for validation (10 train / 10 validation)")
    assert browse.describe_rule(SplitRule("none"), 664, 0) == "trained on every image, none held out (664 train / 0 validation)"
    groups = ["x 2x2", "y 4x4", "x 2x2", "y 4x4"]
    assert browse.describe_split(SplitRule("none", groups=("y 4x4",)), 4, groups) == (
        "the acquisition groups y 4x4: 2 of 4 held out for validation, 2 for training")
    assert browse.describe_split(SplitRule("every_kth", 5, ("y 4x4",)), 4, groups).startswith(
        "every 5th image and the acquisition groups y 4x4: 3 of 4 held out")


def test_thumbnail_is_square_transparent_padded_and_framed() -> None:
    image = np.zeros((100, 50), np.uint8)
    image[40:60, 10:30] = 40  # dim: auto contrast makes it visible
    instances = np.zeros((100, 50), np.int32)
    instances[40:60, 10:30] = 1
    thumb = browse.thumbnail(image, instances, max_side=40, frame=(255, 0, 0))
    assert thumb.shape == (40, 40, 4) and thumb.dtype == np.uint8
    assert thumb[20, 0, 3] == 0 and thumb[20, 20, 3] == 255  # padding transparent, picture opaque
    assert tuple(thumb[0, 20, :3]) == (255, 0, 0)  # the frame
    assert thumb[20, 14, :3].max() > 100  # the dim object is stretched and outlined
    assert browse.contrast_limits(image) == (0.0, 40.0)


def test_intensity_histogram_separates_objects_from_background() -> None:
    image = np.full((10, 10, 1), 20, np.uint8)
    image[2:5, 2:5] = 200
    instances = np.zeros((10, 10), np.int32)
    instances[2:5, 2:5] = 1
    hist = browse.intensity_histogram(image, instances, bins=128)
    assert hist.background.sum() == 91 and hist.objects.sum() == 9
    assert hist.centers[hist.objects.argmax()] == pytest.approx(201)  # bins of 2 over 0..256
    rgb = np.repeat(image, 3, axis=-1)
    assert browse.intensity_histogram(rgb, instances).objects.sum() == 9


def test_area_histogram_switches_to_log_bins_for_wide_ranges() -> None:
    edges, counts, log = browse.area_histogram(np.array([10, 12, 15, 20]))
    assert not log and counts.sum() == 4
    edges, counts, log = browse.area_histogram(np.array([10, 100, 1000, 5000]))
    assert log and counts.sum() == 4 and edges[0] == 10
    assert browse.area_histogram(np.zeros(0))[1].sum() == 0


# --------------------------------------------------------------------------- weight maps


def touching_labels() -> np.ndarray:
    labels = np.zeros((40, 60), np.int32)
    labels[5:20, 5:20] = 1
    labels[5:20, 22:37] = 2  # a 2-pixel background gap between cells 1 and 2
    labels[25:35, 45:55] = 3
    return labels


@pytest.mark.parametrize("class_weights", ["balanced", None])
def test_weight_parts_from_cached_distances_equal_weight_map_parts(class_weights) -> None:
    labels = touching_labels()
    distances = browse.border_distances_for(labels, w0_max=30.0, sigma_max=20.0)
    for w0, sigma in ((10.0, 5.0), (30.0, 20.0), (0.5, 1.0), (0.0, 3.0)):
        got = browse.weight_parts(labels, distances, w0, sigma, class_weights)
        want = weight_map_parts(labels, w0, sigma, class_weights)
        np.testing.assert_allclose(got.total, want.total, atol=1e-5)
        np.testing.assert_allclose(got.border, want.border, atol=1e-5)
        np.testing.assert_array_equal(got.w_c, want.w_c)
    with pytest.raises(ValueError, match="computed up to"):
        browse.weight_parts(labels, distances, 10.0, 25.0)


def test_weight_summary_measures_the_border_term_in_gaps() -> None:
    labels = touching_labels()
    distances = browse.border_distances_for(labels, 30.0, 20.0)
    narrow = browse.weight_summary(labels, browse.weight_parts(labels, distances, 10.0, 2.0))
    wide = browse.weight_summary(labels, browse.weight_parts(labels, distances, 10.0, 8.0))
    assert narrow.gap_pixels == wide.gap_pixels > 0
    assert 0 < narrow.mean_border_in_gaps < wide.mean_border_in_gaps < 10
    assert wide.max_weight > narrow.max_weight
    assert narrow.w_background < 1 < narrow.w_objects
    alone = np.zeros((20, 20), np.int32)
    alone[5:10, 5:10] = 1
    distances = browse.border_distances_for(alone, 10, 5)
    one = browse.weight_summary(alone, browse.weight_parts(alone, distances, 10, 5))
    assert one.gap_pixels == 0 and one.mean_border_in_gaps is None


def test_touching_pairs_counts_objects_without_background_between_them() -> None:
    labels = touching_labels()
    assert browse.touching_pairs(labels) == 0  # cells 1 and 2 have a 2-pixel gap
    labels[5:20, 20:22] = 2  # now they touch along a whole side
    labels[35:40, 45:50] = 4  # touches cell 3 from below
    assert browse.touching_pairs(labels) == 2


def test_block_max_keeps_thin_peaks() -> None:
    values = np.zeros((9, 7), np.float32)
    values[4, 3] = 5.0  # a one-pixel gap
    small, step = browse.block_max(values, max_side=4)
    assert step == 3 and small.shape == (3, 3) and small.max() == 5.0
    same, step = browse.block_max(values, max_side=10)
    assert step == 1 and same is values


def test_heat_overlay_shows_the_image_where_weights_are_low() -> None:
    image = np.full((2, 2, 3), 100, np.uint8)
    drawn = viz.heat_overlay(image, np.array([[0.0, 10.0], [5.0, 0.0]]))
    assert (drawn[0, 0] == 100).all() and (drawn[1, 1] == 100).all()
    assert drawn[0, 1, 0] > 200 and drawn[0, 1, 1] > 200 and drawn[0, 1, 2] < 100  # yellow
    assert (viz.heat_overlay(image, np.zeros((2, 2))) == 100).all()


# --------------------------------------------------------------------------- models


def test_model_info_reads_the_metadata_and_survives_a_broken_file(tiny_model_dir: Path,
                                                                    tmp_path: Path) -> None:
    path = tiny_model_dir / "tiny.onnx"
    info = browse.model_info(ModelEntry("tiny", path, None, "shipped"))
    assert info.error is None
    assert (info.width, info.depth, info.in_channels) == (4, 4, 1)
    assert info.classes == "background, foreground (objects)"
    assert info.size_bytes == path.stat().st_size and info.data == "" and info.split == ""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    bad = browse.model_info(ModelEntry("broken", broken, None, "shipped"))
    assert bad.error and bad.width is None and bad.size_bytes == 11
    assert uploads.size_text(11) == "11 bytes" and uploads.size_text(3 * 1024**2) == "3.0 MB"


def test_unfinished_runs_are_runs_without_a_model(tmp_path: Path) -> None:
    for name, files in {"done": ["log.jsonl", "model.onnx"], "running": ["log.jsonl", "last.pt"],
                        "junk": []}.items():
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_bytes(b"")
    assert browse.unfinished_runs(tmp_path) == ["running"]
    assert browse.unfinished_runs(tmp_path / "missing") == []
