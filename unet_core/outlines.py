"""Object outlines for the tools biologists take results to: QuPath (GeoJSON) and Fiji (a ROI set).

The label image (``<stem>_instances.tif``) already opens in Fiji, napari and CellProfiler, but
QuPath imports objects as shapes, and Fiji's ROI Manager holds ROIs: a user should not need a
plug-in or a script to get the nuclei into either. Both files come from one polygon per object,
traced along the pixel edges (:func:`object_polygons`), so that a polygon holds exactly its
object's pixels: the area QuPath or Fiji measures for it is the ``area`` of ``<stem>_objects.csv``.

- ``<stem>_outlines.geojson`` (QuPath: File > Import objects, or drag the file onto the image): a
  GeoJSON FeatureCollection of unclassified ``detection`` objects (the model's classes are
  "background" and "foreground"; a QuPath user classifies them there), named by their id, with the holes of an
  object as interior rings and an object in several pieces as a MultiPolygon; the object table's
  measurements go with each; a slice of a stack is the feature's ``plane`` (``z`` from 0).
- ``<stem>_RoiSet.zip`` (Fiji: drag it onto the image, or ROI Manager > More > Open): one traced
  ROI per object, named by its zero-padded id (the ROI Manager sorts them as numbers), on its
  slice in a stack. An ImageJ traced ROI has one outline and no holes, as Fiji's own Analyze
  Particles makes them: an object's holes are inside its ROI, and of an object in several pieces
  the largest is taken (:attr:`Outlines.pieces_dropped` counts the others).

Coordinates are pixels with the origin at the top-left corner of the top-left pixel (QuPath's and
ImageJ's convention), x to the right and y down.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from roifile import ROI_TYPE, ImagejRoi
from scipy import ndimage as ndi

# Walking directions as (row step, column step), each a right turn of the one before: with y down,
# an outline walked with the object on the right-hand side goes clockwise on screen.
_STEPS = ((0, 1), (1, 0), (0, -1), (-1, 0))
# The pixels on the right and on the left of the edge leaving a corner in each direction, as bits
# of the corner's code: 1 the pixel up-left of the corner, 2 up-right, 4 down-left, 8 down-right.
_SIDES = ((8, 2), (4, 8), (1, 4), (2, 1))


def _turn_table() -> tuple[tuple[int, ...], ...]:
    """``[code][arriving direction]`` -> the direction to leave a corner in (-1: none). Right turn
    first, then straight, then left: the tightest turn keeps the outline on a 4-connected piece
    where two of its pixels touch only at a corner."""
    def leave(code: int, step: int) -> int:
        for turn in (1, 0, 3):
            right, left = _SIDES[(step + turn) % 4]
            if code & right and not code & left:
                return (step + turn) % 4
        return -1
    return tuple(tuple(leave(code, step) for step in range(4)) for code in range(16))


_TURN = _turn_table()


@dataclass
class ObjectOutline:
    """One object's outline: ``rings[k]`` is piece k's outer ring followed by its holes, each an
    ``(n, 2)`` int array of (x, y) corner points, closed (the last point repeats the first)."""

    id: int
    pieces: list[list[np.ndarray]]

    @property
    def largest(self) -> np.ndarray:
        """The outer ring of the largest piece (by the area it encloses)."""
        if len(self.pieces) == 1:
            return self.pieces[0][0]
        return max((rings[0] for rings in self.pieces), key=ring_area)


def ring_area(ring: np.ndarray) -> float:
    """The area a closed ring of (x, y) points encloses (shoelace formula; > 0 clockwise on screen)."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2


def object_polygons(ids: np.ndarray) -> list[ObjectOutline]:
    """The outline of every object of a 2-D id image (0 = background), in id order.

    Each 4-connected piece of an object is traced along its pixel edges (its outer ring clockwise
    on screen, each hole anticlockwise), keeping only the corners, so the rings enclose exactly
    the object's pixels: the signed areas of an object's rings (:func:`ring_area`) add up to its
    pixel count.
    """
    outlines = []
    for index, box in enumerate(ndi.find_objects(ids)):
        if box is None:
            continue
        label = index + 1
        # One pixel of background all round, so that every outline walks over background.
        mask = np.pad(ids[box] == label, 1)
        origin = (box[0].start - 1, box[1].start - 1)
        outer = _trace(mask, origin)
        # The outer ring of the first piece holds all the pixels: one piece without holes, as
        # nearly every nucleus is. Otherwise each piece, and each of its holes, is traced.
        exact = ring_area(outer) == np.count_nonzero(mask)
        outlines.append(ObjectOutline(label, [[outer]] if exact else _pieces(mask, origin)))
    return outlines


def _pieces(mask: np.ndarray, origin: tuple[int, int]) -> list[list[np.ndarray]]:
    """Per 4-connected piece of ``mask``, its outer ring and its holes (reversed: anticlockwise)."""
    pieces, n = ndi.label(mask)
    rings = []
    for piece in range(1, n + 1):
        part = pieces == piece
        holes, n_holes = ndi.label(ndi.binary_fill_holes(part) & ~part)
        rings.append([_trace(part, origin)] + [_trace(holes == h, origin)[::-1] for h in range(1, n_holes + 1)])
    return rings


def _trace(region: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    """The outer ring of the 4-connected ``region`` (a mask with background all round), clockwise
    on screen, corners only, as (x, y) points shifted by ``origin`` (row, column)."""
    m = region.astype(np.uint8)
    # Each pixel corner's code (:data:`_SIDES`); corner (r, c) is the top-left corner of pixel (r, c).
    codes = m[:-1, :-1] | m[:-1, 1:] << 1 | m[1:, :-1] << 2 | m[1:, 1:] << 3
    first = int(np.argmax(region))  # first pixel in raster order: its top edge is outline
    r0, c0 = first // region.shape[1] - 1, first % region.shape[1] - 1  # its corner in ``codes``
    row, col, step = r0, c0, 0
    corners = [(col, row)]
    # Each pixel edge is walked at most once: a longer walk would be a bug, not an outline.
    for _ in range(2 * codes.size + 4):
        row, col = row + _STEPS[step][0], col + _STEPS[step][1]
        leave = _TURN[codes[row, col]][step]
        if leave == 0 and row == r0 and col == c0:
            break
        if leave != step:
            corners.append((col, row))
            step = leave
    else:
        raise RuntimeError(f"outline tracing did not close (region of {int(region.sum())} pixels)")
    corners.append(corners[0])
    # ``codes`` is one corner up and left of the region's pixels: corner (r, c) of it is (r + 1, c + 1).
    return np.asarray(corners, dtype=np.int64) + (origin[1] + 1, origin[0] + 1)


@dataclass
class Outlines:
    """The outlines of a segmented image or stack, ready to write.

    Attributes:
        slices: per slice, its objects' outlines (ids unique across a stack, as in the instances).
        measurements: object id -> the object table's row (the QuPath measurements).
        pieces_dropped: pieces of objects left out of the Fiji ROI set (not its largest).
    """

    slices: list[list[ObjectOutline]]
    measurements: dict[int, dict[str, float]]

    @property
    def pieces_dropped(self) -> int:
        return sum(len(o.pieces) - 1 for outlines in self.slices for o in outlines)

    @property
    def is_stack(self) -> bool:
        return len(self.slices) > 1


def stack_outlines(instances: np.ndarray, tables: Sequence[list[dict[str, float]]]) -> Outlines:
    """The :class:`Outlines` of a ``(Z, H, W)`` instance stack and its per-slice object tables."""
    measurements = {int(row["id"]): row for table in tables for row in table}
    return Outlines([object_polygons(plane) for plane in instances], measurements)


def qupath_geojson(outlines: Outlines) -> str:
    """The ``<stem>_outlines.geojson`` text: one QuPath detection per object (module docstring)."""
    features = []
    for z, objects in enumerate(outlines.slices):
        for outline in objects:
            pieces = [[ring.tolist() for ring in rings] for rings in outline.pieces]
            geometry: dict = ({"type": "Polygon", "coordinates": pieces[0]} if len(pieces) == 1
                              else {"type": "MultiPolygon", "coordinates": pieces})
            if outlines.is_stack:
                geometry["plane"] = {"c": -1, "z": z, "t": 0}
            row = outlines.measurements.get(outline.id, {})
            features.append({
                "type": "Feature",
                "geometry": geometry,
                "properties": {"objectType": "detection", "name": str(outline.id),
                               "measurements": {k: float(v) for k, v in row.items() if k not in ("id", "slice")}},
            })
    return json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":"))


def imagej_roiset(outlines: Outlines) -> bytes:
    """The ``<stem>_RoiSet.zip`` bytes: one traced ImageJ ROI per object (module docstring)."""
    width = max(4, len(str(max(outlines.measurements, default=0))))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for z, objects in enumerate(outlines.slices):
            for outline in objects:
                name = f"{outline.id:0{width}d}"
                roi = ImagejRoi.frompoints(outline.largest[:-1], name=name,
                                           position=z if outlines.is_stack else None)
                # What Fiji's wand and Analyze Particles make: integer corners, the pixels inside.
                roi.roitype = ROI_TYPE.TRACED
                # A fixed date: the same objects give the same bytes (the app's download is the CLI's file).
                entry = zipfile.ZipInfo(f"{name}.roi", date_time=(1980, 1, 1, 0, 0, 0))
                archive.writestr(entry, roi.tobytes(), compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()
