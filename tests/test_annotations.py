"""Objects outlined in QuPath (GeoJSON) or Fiji (ROI sets) back as masks: exact pixels, the tools'
own conventions, hostile files refused with a reason, and a data set ``train`` opens."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from roifile import ROI_TYPE, ImagejRoi
from scipy import ndimage as ndi

from unet_core import annotations
from unet_core.annotations import (
    AnnotationError,
    annotation_for,
    geojson_shapes,
    make_dataset,
    rasterize,
    roi_shapes,
)
from unet_core.cli import main
from unet_core.datasets import open_dataset
from unet_core.instances import object_table
from unet_core.outlines import imagej_roiset, qupath_geojson, stack_outlines


def _outlines(stack: np.ndarray):
    return stack_outlines(stack, [object_table(plane, np.ones(plane.shape, np.float32)) for plane in stack])


def _from_geojson(text: str | bytes, shape: tuple[int, int, int]) -> np.ndarray:
    shapes, skipped = geojson_shapes(text.encode() if isinstance(text, str) else text, "t.geojson")
    return rasterize(shapes, shape, skipped).ids


def _from_rois(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    shapes, skipped = roi_shapes(data, "RoiSet.zip")
    return rasterize(shapes, shape, skipped).ids


def _awkward() -> np.ndarray:
    """A ring with an island of the same object in its hole, two holes, pieces touching at a
    corner only, a one-pixel object, and objects cut by the image border."""
    ids = np.zeros((60, 70), np.int32)
    ids[5:25, 5:25] = 1
    ids[8:22, 8:22] = 0
    ids[12:16, 12:16] = 1
    ids[30:45, 30:50] = 2
    ids[33:36, 33:36] = ids[40:42, 40:47] = 0
    ids[50, 10] = ids[51, 11] = 3
    ids[55, 60] = 4
    ids[0:6, 60:70] = 5
    ids[50:60, 0:4] = 6
    return ids


def _ragged(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.standard_normal((90, 110)), 2.0)
    ids, _ = ndi.label(field > 0.05, structure=np.ones((3, 3)))
    return ids.astype(np.int32)


@pytest.mark.parametrize("ids", [_awkward(), _ragged(0), _ragged(1)], ids=["awkward", "ragged0", "ragged1"])
def test_our_qupath_outlines_come_back_as_exactly_our_objects(ids: np.ndarray) -> None:
    """Holes, islands in holes, pieces touching at a corner, one-pixel objects, image borders."""
    back = _from_geojson(qupath_geojson(_outlines(ids[None])), (1, *ids.shape))
    assert np.array_equal(back[0], ids)


def test_our_fiji_rois_come_back_as_our_objects_and_slices() -> None:
    # ROIs hold one outline without holes (as Fiji's own): solid objects in one piece come back exactly.
    a = np.zeros((40, 50), np.int32)
    a[3:9, 4:12], a[20:31, 30:33] = 1, 2
    a[12:18, 40:49] = 3
    a[14, 49] = 3  # on the image border
    b = np.zeros_like(a)
    b[5:25, 5:9] = 1
    stack = np.stack([a, b])
    numbered = stack.copy()
    numbered[1][b > 0] = 4  # ids go on across a stack
    back = _from_rois(imagej_roiset(_outlines(numbered)), stack.shape)
    assert np.array_equal(back, numbered)


def test_qupath_conventions_pixel_centres_detections_over_annotations_and_planes() -> None:
    square = [[0.4, 0.4], [2.6, 0.4], [2.6, 2.6], [0.4, 2.6], [0.4, 0.4]]  # a brush stroke's floats

    def feature(kind: str, geometry: dict) -> dict:
        return {"type": "Feature", "geometry": geometry, "properties": {"objectType": kind}}

    region = feature("annotation", {"type": "Polygon", "coordinates": [[[0, 0], [20, 0], [20, 20], [0, 20], [0, 0]]]})
    nucleus = feature("detection", {"type": "Polygon", "coordinates": [square]})
    point = feature("detection", {"type": "Point", "coordinates": [5, 5]})
    on_slice_1 = feature("detection", {"type": "Polygon", "coordinates": [[[5, 5], [8, 5], [8, 7], [5, 7], [5, 5]]],
                                       "plane": {"c": -1, "z": 1, "t": 0}})
    # A list of features (QuPath's export without "FeatureCollection"): the region is left out.
    shapes, skipped = geojson_shapes(json.dumps([region, nucleus, point, on_slice_1]).encode(), "q.geojson")
    assert skipped == 2
    ids = rasterize(shapes, (2, 20, 20)).ids
    assert np.array_equal(np.argwhere(ids[0] == 1), [[r, c] for r in range(3) for c in range(3)])  # centres 0.5..2.5
    assert np.count_nonzero(ids[0]) == 9 and np.count_nonzero(ids[1] == 2) == 6
    # Annotations alone are the objects (cells drawn by hand); a later one is drawn over an earlier.
    overlap = feature("annotation", {"type": "Polygon", "coordinates": [[[10, 0], [30, 0], [30, 10], [10, 10], [10, 0]]]})
    ids = _from_geojson(json.dumps({"type": "FeatureCollection", "features": [region, overlap]}), (1, 20, 20))
    assert ids[0, 5, 5] == 1 and ids[0, 5, 15] == 2 and ids[0, 15, 15] == 1


def test_rectangles_and_ovals_drawn_in_fiji() -> None:
    rect = ImagejRoi(roitype=ROI_TYPE.RECT, left=2, top=3, right=7, bottom=5, name="r")
    oval = ImagejRoi(roitype=ROI_TYPE.OVAL, left=10, top=10, right=20, bottom=20, name="o")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("r.roi", rect.tobytes())
        archive.writestr("o.roi", oval.tobytes())
    ids = _from_rois(buf.getvalue(), (1, 30, 30))[0]
    assert np.array_equal(ids == 1, np.pad(np.ones((2, 5), bool), ((3, 25), (2, 23))))
    yy, xx = np.mgrid[:30, :30]
    disc = (yy + 0.5 - 15) ** 2 + (xx + 0.5 - 15) ** 2 <= 25
    assert np.count_nonzero((ids == 2) != disc) <= 8  # ImageJ's oval is a polygon close to the disc
    assert _from_rois(rect.tobytes(), (1, 30, 30))[0].sum() == 10  # one .roi file


@pytest.mark.parametrize(("data", "reader", "message"), [
    (b"{not json", geojson_shapes, "not a GeoJSON file"),
    (b'{"type": "Topology"}', geojson_shapes, "not GeoJSON objects"),
    (b'[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [NaN, 1], [2, 2]]]}}]',
     geojson_shapes, "finite"),
    (b'[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[["a", 0], [1, 1], [2, 2]]]}}]',
     geojson_shapes, "not numbers"),
    (b"PK\x03\x04 not really a zip", roi_shapes, "not a ROI set"),
    (b"Iout" + b"\x00" * 10, roi_shapes, "not an ImageJ ROI"),
    (ImagejRoi.frompoints([[1, 1], [9, 1], [9, 9], [1, 9]]).tobytes()[:66], roi_shapes, "not an ImageJ ROI"),
    (b"[" * 100_000, geojson_shapes, "not a GeoJSON file"),
    (b'[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[1' + b"0" * 400 + b', 0], [1, 1], [2, 2]]]}}]',
     geojson_shapes, "not numbers"),
    (b'[{"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [5]}}]', geojson_shapes,
     "without a list of coordinates"),
])
def test_hostile_annotation_files_are_refused_with_a_reason(data: bytes, reader, message: str) -> None:
    with pytest.raises(AnnotationError, match=message):
        reader(data, "bad")


def test_too_many_objects_and_none_in_the_image_are_refused(monkeypatch) -> None:
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]}}] * 5
    monkeypatch.setattr(annotations, "MAX_OBJECTS", 4)
    with pytest.raises(AnnotationError, match="more than 4"):
        geojson_shapes(json.dumps(features).encode(), "many")
    monkeypatch.undo()
    far = [{"type": "Feature", "geometry": {"type": "Polygon",
                                            "coordinates": [[[100, 100], [120, 100], [120, 120], [100, 100]]]}}]
    with pytest.raises(AnnotationError, match="no object outline covers a pixel of the 20 x 10 image"):
        _from_geojson(json.dumps(far), (1, 10, 20))
    # A vertex far beyond any image (1e300) does not break the fill: the square covers the image.
    huge = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[-1e300, -1e300], [1e300, -1e300], [1e300, 1e300], [-1e300, 1e300], [-1e300, -1e300]]]}}]
    assert (_from_geojson(json.dumps(huge), (1, 10, 20)) == 1).all()


def test_qupath_tiles_are_no_objects_and_a_cell_gives_its_nucleus() -> None:
    square = [[[2, 2], [6, 2], [6, 6], [2, 6], [2, 2]]]
    cell = {"type": "Feature", "properties": {"objectType": "cell"},
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [12, 0], [12, 12], [0, 12], [0, 0]]]},
            "nucleusGeometry": {"type": "Polygon", "coordinates": square}}
    tile = {"type": "Feature", "properties": {"objectType": "tile"},
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [20, 0], [20, 20], [0, 20], [0, 0]]]}}
    shapes, skipped = geojson_shapes(json.dumps([tile, cell]).encode(), "cells.geojson")
    ids = rasterize(shapes, (1, 20, 20), skipped).ids[0]
    assert skipped == 1 and np.array_equal(np.argwhere(ids == 1), [[r, c] for r in range(2, 6) for c in range(2, 6)])


def test_outlines_too_costly_to_fill_are_refused(monkeypatch) -> None:
    monkeypatch.setattr(annotations, "MAX_RING_WORK", 1000.0)
    ring = [[[0, 0], [40, 0], [40, 40], [0, 40], [0, 0]]]  # 5 points x 41 x 41 pixels of box
    with pytest.raises(AnnotationError, match="too many points"):
        _from_geojson(json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": ring}}]),
                      (1, 50, 50))
    # Each outline within its limit, the file over its own: refused as well.
    monkeypatch.setattr(annotations, "MAX_RING_WORK", 1e4)
    monkeypatch.setattr(annotations, "MAX_FILL_WORK", 1.5e4)
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": ring}}
    assert _from_geojson(json.dumps([feature]), (1, 50, 50)).max() == 1
    with pytest.raises(AnnotationError, match="too many outline points"):
        _from_geojson(json.dumps([feature, feature]), (1, 50, 50))


def _images_and_annotations(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    images, notes = tmp_path / "images", tmp_path / "qupath"
    images.mkdir()
    notes.mkdir()
    a = np.zeros((40, 50), np.int32)
    a[3:9, 4:12], a[20:31, 30:33] = 1, 2
    b = np.zeros((40, 50), np.int32)
    b[10:20, 10:20] = 1
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.tif", "c.png"):
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(images / name)
    (notes / "a_outlines.geojson").write_text(qupath_geojson(_outlines(a[None])))
    (notes / "b.tif_RoiSet.zip").write_bytes(imagej_roiset(_outlines(b[None])))
    return images, notes, a, b


def test_a_folder_of_annotations_becomes_a_data_set_train_opens(tmp_path: Path) -> None:
    images, notes, a, b = _images_and_annotations(tmp_path)
    assert annotation_for(images / "a.png", notes).name == "a_outlines.geojson"
    assert annotation_for(images / "c.png", notes) is None
    (notes / "c_annotations.geojson").write_text("{}")  # a common QuPath export script's name
    assert annotation_for(images / "c.png", notes).name == "c_annotations.geojson"
    (notes / "c_annotations.geojson").unlink()
    reports = make_dataset(images, notes, tmp_path / "data")
    assert [(r.image, r.annotation, r.objects, r.problem) for r in reports] == [
        ("a.png", "a_outlines.geojson", 2, None), ("b.tif", "b.tif_RoiSet.zip", 1, None),
        ("c.png", None, 0, "no annotation file")]
    assert (tmp_path / "data/images/a.png").read_bytes() == (images / "a.png").read_bytes()
    assert np.array_equal(tifffile.imread(tmp_path / "data/masks/a.tif"), a)
    assert np.array_equal(tifffile.imread(tmp_path / "data/masks/b.tif"), b)
    dataset = open_dataset(tmp_path / "data", verify=True)
    assert [s.name for s in dataset.samples] == ["a", "b"]
    with pytest.raises(AnnotationError, match="already holds a data set"):
        make_dataset(images, notes, tmp_path / "data")


def test_a_data_set_that_fails_half_way_is_not_left_behind(tmp_path: Path, monkeypatch) -> None:
    images, notes, _, _ = _images_and_annotations(tmp_path)
    calls = []

    def failing_write(path, array, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return tifffile.imwrite(path, array)

    monkeypatch.setattr(annotations, "write_tiff", failing_write)
    with pytest.raises(OSError, match="No space"):
        make_dataset(images, notes, tmp_path / "data")
    assert not (tmp_path / "data").exists() and not list(tmp_path.glob(".data*"))


def test_the_masks_command(tmp_path: Path, capsys) -> None:
    images, notes, _, _ = _images_and_annotations(tmp_path)
    assert main(["masks", str(images), str(notes), "--out", str(tmp_path / "data")]) == 0
    out, err = capsys.readouterr()
    assert "a.png: 2 objects from a_outlines.geojson" in out and "wrote 2 images and masks" in out
    assert "c.png: left out: no annotation file" in err
    assert main(["masks", str(images), str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "no such folder" in capsys.readouterr().err
