"""Object outlines for QuPath (GeoJSON) and Fiji (RoiSet.zip): exact pixels, readable files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import roifile
from scipy import ndimage as ndi
from skimage.draw import disk, polygon2mask

from unet_core import predict
from unet_core.inference import Segmentation
from unet_core.instances import object_table
from unet_core.io import ImageFile, Stretch
from unet_core.outlines import (
    imagej_roiset,
    object_polygons,
    qupath_geojson,
    ring_area,
    stack_outlines,
)
from unet_core.predict import measured


def _awkward_ids() -> np.ndarray:
    """Discs (some cut by the image border), an object with two holes, one in two pieces that
    touch at a corner only, a one-pixel object, a concave U and an island inside a ring of the
    same object."""
    rng = np.random.default_rng(0)
    ids = np.zeros((160, 170), np.int32)
    for k in range(1, 25):
        rr, cc = disk(tuple(rng.integers(0, 160, 2)), int(rng.integers(2, 9)), shape=ids.shape)
        ids[rr, cc] = k
    ids[60:75, 60:80] = 30
    ids[63:66, 63:66] = 0
    ids[70:72, 70:77] = 0
    ids[100, 100] = ids[101, 101] = 31
    ids[5, 160] = 32
    ids[120:140, 120:140] = 33
    ids[120:135, 126:134] = 0
    ids[140:150, 20:35] = 34
    ids[142:148, 22:33] = 0
    ids[144:146, 26:28] = 34
    return ids


def _raster(rings: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres a piece's rings enclose (outer ring minus holes)."""
    def inside(ring: np.ndarray) -> np.ndarray:
        # polygon2mask takes (row, col) and tests pixel centres at integer coordinates: corners
        # are half a pixel off them.
        return polygon2mask(shape, ring[:, ::-1] - 0.5)
    mask = inside(rings[0])
    for hole in rings[1:]:
        mask &= ~inside(hole)
    return mask


def test_outlines_enclose_exactly_each_objects_pixels() -> None:
    ids = _awkward_ids()
    outlines = object_polygons(ids)
    assert [o.id for o in outlines] == sorted(set(np.unique(ids)) - {0})
    for outline in outlines:
        drawn = np.zeros(ids.shape, bool)
        for rings in outline.pieces:
            drawn |= _raster(rings, ids.shape)
        assert np.array_equal(drawn, ids == outline.id), outline.id
        area = sum(ring_area(ring) for rings in outline.pieces for ring in rings)
        assert area == np.count_nonzero(ids == outline.id)


@pytest.mark.parametrize("seed", range(6))
def test_outlines_of_ragged_random_shapes_are_exact(seed: int) -> None:
    """Blobs of smoothed noise, numbered 8-connected (so objects touch themselves at corners,
    wrap round holes and islands): every object's rings fill back to its pixels."""
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.standard_normal((90, 110)), 2.0)
    ids, _ = ndi.label(field > 0.05, structure=np.ones((3, 3)))
    for outline in object_polygons(ids.astype(np.int32)):
        drawn = np.zeros(ids.shape, bool)
        for rings in outline.pieces:
            drawn ^= _raster(rings, ids.shape)
        assert np.array_equal(drawn, ids == outline.id), (seed, outline.id)


def test_rings_are_closed_corner_only_and_oriented() -> None:
    by_id = {o.id: o for o in object_polygons(_awkward_ids())}
    square = np.zeros((10, 10), np.int32)
    square[2:5, 3:7] = 1
    (only,) = object_polygons(square)
    assert only.pieces[0][0].tolist() == [[3, 2], [7, 2], [7, 5], [3, 5], [3, 2]]
    holed = by_id[30].pieces
    assert len(holed) == 1 and len(holed[0]) == 3  # an outer ring and two holes
    assert ring_area(holed[0][0]) > 0 and all(ring_area(h) < 0 for h in holed[0][1:])
    assert len(by_id[31].pieces) == 2  # corner contact only: two pieces (4-connectivity)
    assert len(by_id[34].pieces) == 2  # a ring and the island in its hole
    assert by_id[32].pieces[0][0].tolist() == [[160, 5], [161, 5], [161, 6], [160, 6], [160, 5]]


def _outlines_of(ids: np.ndarray, intensity: np.ndarray | None = None):
    stack = ids if ids.ndim == 3 else ids[None]
    intensity = np.ones(stack.shape[1:], np.float32) if intensity is None else intensity
    return stack_outlines(stack, [object_table(plane, intensity) for plane in stack])


def test_geojson_is_qupath_detections_with_holes_pieces_and_measurements() -> None:
    ids = _awkward_ids()
    data = json.loads(qupath_geojson(_outlines_of(ids)))
    assert data["type"] == "FeatureCollection"
    features = {f["properties"]["name"]: f for f in data["features"]}
    assert sorted(features, key=int) == [str(i) for i in sorted(set(np.unique(ids)) - {0})]
    for feature in data["features"]:
        props = feature["properties"]
        assert props["objectType"] == "detection" and "classification" not in props
        assert props["measurements"]["area"] == np.count_nonzero(ids == int(props["name"]))
        assert "plane" not in feature["geometry"]
    assert features["30"]["geometry"]["type"] == "Polygon" and len(features["30"]["geometry"]["coordinates"]) == 3
    assert features["31"]["geometry"]["type"] == "MultiPolygon"
    ring = features["32"]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] == [160, 5]


def _read_roiset(data: bytes, tmp_path) -> list[roifile.ImagejRoi]:
    path = tmp_path / "RoiSet.zip"
    path.write_bytes(data)
    return roifile.roiread(path)


def test_roiset_reads_back_in_roifile_as_traced_rois_named_by_id(tmp_path) -> None:
    ids = _awkward_ids()
    rois = _read_roiset(imagej_roiset(_outlines_of(ids)), tmp_path)
    assert [r.name for r in rois] == [f"{i:04d}" for i in sorted(set(np.unique(ids)) - {0})]
    for roi in rois:
        assert roi.roitype == roifile.ROI_TYPE.TRACED and roi.position == 0
        label = int(roi.name)
        # Pieces and holes aside, the ROI holds its object's pixels (Fiji fills a traced ROI the same way).
        drawn = polygon2mask(ids.shape, roi.coordinates()[:, ::-1] - 0.5)
        if label not in (30, 31, 34):
            assert np.array_equal(drawn, ids == label), label
    holed = polygon2mask(ids.shape, rois[[r.name for r in rois].index("0030")].coordinates()[:, ::-1] - 0.5)
    assert np.count_nonzero(holed) == 15 * 20  # holes are inside a traced ROI, as Fiji's wand makes it


def test_stack_outlines_carry_their_slice(tmp_path) -> None:
    stack = np.zeros((3, 40, 40), np.int32)
    stack[0, 5:10, 5:10] = 1
    stack[2, 20:30, 20:25] = 2
    stack[2, 30:35, 30:35] = 3
    outlines = _outlines_of(stack)
    planes = {f["properties"]["name"]: f["geometry"]["plane"] for f in json.loads(qupath_geojson(outlines))["features"]}
    assert planes == {"1": {"c": -1, "z": 0, "t": 0}, "2": {"c": -1, "z": 2, "t": 0}, "3": {"c": -1, "z": 2, "t": 0}}
    rois = _read_roiset(imagej_roiset(outlines), tmp_path)
    assert [(r.name, r.position) for r in rois] == [("0001", 1), ("0002", 3), ("0003", 3)]


@pytest.mark.parametrize("shape", [(1, 5), (8, 8)])
def test_no_objects_give_empty_but_valid_files(shape, tmp_path) -> None:
    outlines = _outlines_of(np.zeros(shape, np.int32))
    assert json.loads(qupath_geojson(outlines)) == {"type": "FeatureCollection", "features": []}
    roiset = tmp_path / "empty.zip"
    roiset.write_bytes(imagej_roiset(outlines))
    assert roiset.stat().st_size > 0


def test_past_the_object_limit_predict_writes_no_outlines_and_says_why(tmp_path, monkeypatch) -> None:
    ids = _awkward_ids()[None]
    image = ImageFile("cells.png", (ids > 0).astype(np.uint8)[..., None] * 200)
    seg = Segmentation(labels=(ids > 0).astype(np.uint8), probs=None, stretch=Stretch(0.0, 1.0), tile=(64, 64), batch=1)
    result = measured(image, seg, ids.copy(), 2, None)
    n = result.n_objects
    monkeypatch.setattr(predict, "MAX_OUTLINE_OBJECTS", n)
    written = predict.write_outputs(result, tmp_path / "at")
    assert {p.name for p in written.outputs} >= {"cells_outlines.geojson", "cells_RoiSet.zip"}
    monkeypatch.setattr(predict, "MAX_OUTLINE_OBJECTS", n - 1)
    written = predict.write_outputs(result, tmp_path / "past")
    assert sorted(p.name for p in written.outputs) == ["cells_instances.tif", "cells_labels.png", "cells_objects.csv"]
    assert any(f"more than {n - 1}: no outlines" in note for note in written.notes)
    assert sorted(p.name for p in (tmp_path / "past").iterdir()) == sorted(p.name for p in written.outputs)
