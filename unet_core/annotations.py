"""Objects drawn or corrected in QuPath or Fiji, back as a label image (training masks).

Biologists annotate where they already work: QuPath exports objects as GeoJSON (File > Export
objects as GeoJSON), Fiji's ROI Manager saves a ROI set (More > Save: ``RoiSet.zip``). Both are
what ``predict`` writes for its objects (:mod:`unet_core.outlines`), so a result can go to either
tool, be corrected there, and come back as a mask to train on: :func:`read_annotations` turns
such a file into instance ids on the image's pixel grid, and ``python -m unet_core masks`` makes a
data set (``images/`` + ``masks/``) of a folder of images and their annotation files.

Rules, the same for both formats:

- A pixel belongs to an object when its centre lies inside the object's outline (QuPath's and
  ImageJ's rule; coordinates have their origin at the top-left corner of the top-left pixel), so
  an outline traced along pixel edges, as ``predict`` writes them, gives back exactly its pixels.
- Holes (a GeoJSON polygon's inner rings, a composite ROI's inner paths) are not part of the
  object; the pieces of a MultiPolygon are one object.
- Objects are numbered 1..n in the file's order; where two overlap, the later one takes the
  pixels, as it is drawn over the other.
- Only areas count: points and lines are left out and counted (:attr:`Annotations.skipped`). In a
  GeoJSON file that holds QuPath detections as well as annotations, the detections are the
  objects and the annotations the regions they were found in (a region drawn round the tissue
  would otherwise become one huge nucleus); a file of annotations only gives its annotations.
- A slice of a stack: GeoJSON ``geometry.plane.z`` (from 0), a ROI's position (from 1; a ROI
  without one lies on every slice). Outlines outside the image are cut at its border.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from roifile import ROI_TYPE, ImagejRoi
from skimage.draw import polygon as polygon_pixels

from .edits import consecutive_ids
from .errors import UserError
from .io import IMAGE_SUFFIXES, ImageReadError, encode_slice, read_image, read_image_shape, write_tiff
from .predict import id_image

log = logging.getLogger(__name__)

#: More objects than this in one file is not an annotation of one image (or a hostile file).
MAX_OBJECTS = 500_000
#: A ROI set larger than this when unpacked is refused before it fills the memory (a zip bomb).
MAX_UNPACKED_BYTES = 1 << 30
#: An annotation file larger than this is refused before it is read (GeoJSON is parsed whole).
MAX_FILE_BYTES = 1 << 30
#: Filling an outline costs about its vertices times the pixels of its box: a ring over this, or a
#: file over :data:`MAX_FILL_WORK` in all, is refused (a crafted ROI could otherwise take hours).
MAX_RING_WORK = 2e9
MAX_FILL_WORK = 1e11
#: The most pixels (all slices) :func:`make_dataset` makes a mask for.
MAX_MASK_PIXELS = 1 << 31
#: Coordinates are clamped to +-this many pixels (a vertex at 1e300 would overflow the fill's arithmetic).
COORDINATE_LIMIT = float(1 << 24)
#: File endings :func:`read_annotations` reads, by format.
GEOJSON_SUFFIXES = (".geojson", ".json")
ROI_SUFFIXES = (".zip", ".roi")
#: ImageJ ROI types that outline an area.
_AREA_ROIS = {ROI_TYPE.POLYGON, ROI_TYPE.FREEHAND, ROI_TYPE.TRACED, ROI_TYPE.RECT, ROI_TYPE.OVAL}


class AnnotationError(UserError):
    """An annotation file that cannot be read as outlines of objects; the message says why."""


@dataclass(frozen=True)
class Shape:
    """One object's outline on slice ``plane`` (None: every slice): its ``pieces``, each a set of
    rings of (x, y) vertices filled even-odd (a ring inside another is a hole)."""

    pieces: tuple[tuple[np.ndarray, ...], ...]
    plane: int | None = 0


@dataclass(frozen=True)
class Annotations:
    """Instance ids read from an annotation file: ``ids`` (Z, H, W) int32, 1..n in file order, and
    the number of entries ``skipped`` (points, lines, empty or outside the image)."""

    ids: np.ndarray
    skipped: int


def read_annotations(path: str | Path, shape: tuple[int, int, int]) -> Annotations:
    """The objects of a QuPath GeoJSON file or an ImageJ ROI set (``.zip``) or ROI (``.roi``) as
    instance ids of an image of ``shape`` (Z, H, W) (module docstring for the rules).

    Raises:
        AnnotationError: an unknown file ending, a file that is not what its ending says, or no
            object in it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise AnnotationError(f"{path.name}: larger than {MAX_FILE_BYTES >> 30} GiB; export the objects of "
                                  "one image per file")
        data = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{path.name}: cannot be read ({exc.strerror or exc})") from None
    if suffix in GEOJSON_SUFFIXES:
        shapes, skipped = geojson_shapes(data, path.name)
    elif suffix in ROI_SUFFIXES:
        shapes, skipped = roi_shapes(data, path.name)
    else:
        raise AnnotationError(f"{path.name}: not an annotation file; QuPath's GeoJSON (.geojson) or an ImageJ "
                              "ROI set (.zip) or ROI (.roi) can be read")
    result = rasterize(shapes, shape, skipped, path.name)
    log.info("%s: %d objects, %d entries left out", path.name, int(result.ids.max()), result.skipped)
    return result


def rasterize(shapes: Iterable[Shape], shape: tuple[int, int, int], skipped: int = 0,
              name: str = "annotations") -> Annotations:
    """Instance ids (Z, H, W) of ``shapes`` painted in order, each pixel by its centre.

    Raises:
        AnnotationError: no shape covers a pixel centre of the image.
    """
    ids = np.zeros(shape, dtype=np.int32)
    n, work = 0, 0.0
    for item in shapes:
        planes = range(shape[0]) if item.plane is None else [item.plane]
        if not all(0 <= z < shape[0] for z in planes):
            skipped += 1
            continue
        work += _fill_work(item, shape[1:], name)
        if work > MAX_FILL_WORK:
            raise AnnotationError(f"{name}: too many outline points over too large an area to fill; simplify the "
                                  "outlines in QuPath or Fiji, or export fewer per file")
        mask = _fill(item.pieces, shape[1:])
        if mask is None:
            skipped += 1
            continue
        n += 1
        rows, cols = mask
        for z in planes:
            ids[z, rows, cols] = n
    if n == 0:
        raise AnnotationError(f"{name}: no object outline covers a pixel of the {shape[2]} x {shape[1]} image"
                              + (f" ({skipped} points, lines, empty outlines or outlines outside it or its slices left out)"
                                  if skipped else ""))
    return Annotations(ids, skipped)


def _fill(pieces: tuple[tuple[np.ndarray, ...], ...], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, cols) of the pixels whose centres lie inside the pieces (rings even-odd), or None."""
    pixels: list[np.ndarray] = []
    for rings in pieces:
        inside: np.ndarray | None = None
        for ring in rings:
            # Pixel (r, c) has its centre at (c + 0.5, r + 0.5): shift the ring, test integer points.
            rows, cols = polygon_pixels(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=shape)
            flat = rows.astype(np.int64) * shape[1] + cols
            inside = flat if inside is None else np.setxor1d(inside, flat)
        if inside is not None and inside.size:
            pixels.append(inside)
    if not pixels:
        return None
    flat = np.unique(np.concatenate(pixels))
    return flat // shape[1], flat % shape[1]


def _fill_work(item: Shape, shape: tuple[int, int], name: str) -> float:
    """What filling ``item`` costs: over its rings, vertices x pixels of the ring's box inside the image.

    Raises:
        AnnotationError: a ring over :data:`MAX_RING_WORK`.
    """
    total = 0.0
    for ring in (ring for rings in item.pieces for ring in rings):
        x0, y0 = np.clip(ring.min(axis=0), 0, (shape[1], shape[0]))
        x1, y1 = np.clip(ring.max(axis=0), 0, (shape[1], shape[0]))
        work = len(ring) * (x1 - x0 + 1) * (y1 - y0 + 1)
        if work > MAX_RING_WORK:
            raise AnnotationError(f"{name}: an outline with too many points ({len(ring):,}) over too large an area "
                                  "to fill; simplify it in QuPath or Fiji")
        total += work
    return total


# --------------------------------------------------------------------------- QuPath GeoJSON


def geojson_shapes(data: bytes, name: str) -> tuple[list[Shape], int]:
    """The area objects of a GeoJSON text (a FeatureCollection, a list of features or one
    feature, as QuPath writes them) and the number of features left out.

    Raises:
        AnnotationError: not JSON, not GeoJSON features, or coordinates that are not numbers.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON errors, huge integers
        raise AnnotationError(f"{name}: not a GeoJSON file ({type(exc).__name__}: {str(exc)[:200]})") from None
    features = (doc.get("features") if isinstance(doc, dict) and doc.get("type") == "FeatureCollection"
                else [doc] if isinstance(doc, dict) and doc.get("type") == "Feature" else doc)
    if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
        raise AnnotationError(f"{name}: not GeoJSON objects; export them from QuPath with File > Export objects "
                              "as GeoJSON")
    if len(features) > MAX_OBJECTS:
        raise AnnotationError(f"{name}: {len(features):,} objects, more than {MAX_OBJECTS:,} for one image")
    kinds = [_object_type(f) for f in features]
    wanted = "detection" if "detection" in kinds else "annotation"
    shapes, skipped = [], 0
    for feature, kind in zip(features, kinds):
        if kind != wanted:
            skipped += 1
            continue
        item = _feature_shape(feature, name)
        if item is None:
            skipped += 1
        else:
            shapes.append(item)
    return shapes, skipped


def _object_type(feature: dict) -> str:
    """``detection`` (QuPath's detections and cells), ``annotation``, or another type (tiles: the
    squares of a grid, never objects)."""
    props = feature.get("properties")
    kind = props.get("objectType", "annotation") if isinstance(props, dict) else "annotation"
    return "detection" if kind in ("detection", "cell") else str(kind)


def _feature_shape(feature: dict, name: str) -> Shape | None:
    """The shape of one feature; None for a point, line, or missing geometry. A QuPath cell gives
    its nucleus (``nucleusGeometry``): the models here find nuclei."""
    geometry = feature.get("nucleusGeometry") or feature.get("geometry")
    if not isinstance(geometry, dict):
        return None
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [coords]
    elif kind == "MultiPolygon":
        polygons = coords
    else:
        return None
    if not isinstance(polygons, list) or not all(isinstance(p, list) for p in polygons):
        raise AnnotationError(f"{name}: a {kind} without a list of coordinates")
    pieces = tuple(tuple(_ring(ring, name) for ring in polygon) for polygon in polygons)
    plane = geometry.get("plane")
    z = plane.get("z", 0) if isinstance(plane, dict) else 0
    if not isinstance(z, int) or isinstance(z, bool):
        raise AnnotationError(f"{name}: a plane with z = {z!r}; slices are whole numbers from 0")
    return Shape(pieces, z)


def _ring(points: object, name: str) -> np.ndarray:
    try:
        ring = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise AnnotationError(f"{name}: coordinates that are not numbers") from None
    if ring.ndim != 2 or ring.shape[1] < 2 or not np.isfinite(ring).all():
        raise AnnotationError(f"{name}: a ring that is not a list of finite (x, y) points")
    return _clamped(ring[:, :2])


def _clamped(ring: np.ndarray) -> np.ndarray:
    """``ring`` with its coordinates within +-:data:`COORDINATE_LIMIT`: far beyond any image, but
    where the pixel-centre test's arithmetic stays exact."""
    return np.clip(ring, -COORDINATE_LIMIT, COORDINATE_LIMIT)


# --------------------------------------------------------------------------- ImageJ ROIs


def roi_shapes(data: bytes, name: str) -> tuple[list[Shape], int]:
    """The area ROIs of a ROI set (a zip of ``.roi`` files, as Fiji's ROI Manager saves it) or
    of one ``.roi`` file, and the number left out (points, lines, text).

    Raises:
        AnnotationError: not a zip of ROIs nor a ROI, too many or too large entries.
    """
    if data[:4] == b"Iout":  # one ROI file
        return _rois([(name, data)], name)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = [e for e in archive.infolist() if e.filename.lower().endswith(".roi") and not e.is_dir()]
            if len(entries) > MAX_OBJECTS:
                raise AnnotationError(f"{name}: {len(entries):,} ROIs, more than {MAX_OBJECTS:,} for one image")
            if sum(e.file_size for e in entries) > MAX_UNPACKED_BYTES:
                raise AnnotationError(f"{name}: the ROIs unpack to more than {MAX_UNPACKED_BYTES >> 30} GiB")
            return _rois([(e.filename, archive.read(e)) for e in entries], name)
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError, zlib.error) as exc:
        # RuntimeError: an encrypted entry; NotImplementedError: an unknown compression
        raise AnnotationError(f"{name}: not a ROI set ({exc}); save one in Fiji with ROI Manager > More > "
                              "Save") from None


def _rois(entries: list[tuple[str, bytes]], name: str) -> tuple[list[Shape], int]:
    shapes, skipped = [], 0
    for entry, raw in entries:
        try:
            roi = ImagejRoi.frombytes(raw)
            area = roi.roitype in _AREA_ROIS
            coordinates = roi.coordinates(multi=True) if area else []
        # what roifile raises on foreign or truncated bytes and on unknown path operations
        except (ValueError, TypeError, IndexError, struct.error, RuntimeError, NotImplementedError) as exc:
            raise AnnotationError(f"{name}: {entry} is not an ImageJ ROI ({type(exc).__name__}: {exc})") from None
        if not area:
            skipped += 1
            continue
        paths = [_clamped(np.asarray(p, dtype=np.float64)) for p in coordinates]
        paths = [p for p in paths if p.ndim == 2 and len(p) >= 3 and np.isfinite(p).all()]
        if not paths:
            skipped += 1
            continue
        position = roi.z_position or roi.position
        shapes.append(Shape((tuple(paths),), position - 1 if position else None))
    return shapes, skipped


# --------------------------------------------------------------------------- a data set of them


@dataclass(frozen=True)
class MaskReport:
    """What :func:`make_dataset` did with one image: the annotation file used (None: none found),
    the objects read, the entries left out, or the ``problem`` that left the image out."""

    image: str
    annotation: str | None
    objects: int = 0
    skipped: int = 0
    problem: str | None = None


def annotation_for(image: Path, folder: Path) -> Path | None:
    """The annotation file of ``image`` in ``folder``: named by the image's stem or its whole name,
    alone or with ``predict``'s ``_outlines`` / ``_RoiSet`` ending or ``_annotations`` (a common
    QuPath export script's) (``cells.geojson``, ``cells.tif.geojson``, ``cells_outlines.geojson``,
    ``cells_annotations.geojson``, ``cells_RoiSet.zip``, ``cells.zip``), the first that exists in
    that order."""
    for base in (image.stem, image.name):
        for ending in (".geojson", "_outlines.geojson", "_annotations.geojson", ".json", "_RoiSet.zip", ".zip",
                       ".roi"):
            candidate = folder / f"{base}{ending}"
            if candidate.is_file():
                return candidate
    return None


def make_dataset(images: str | Path, annotations: str | Path, out: str | Path,
                 link_images: bool = False) -> list[MaskReport]:
    """A data set ``out`` (``images/`` + ``masks/``, what ``train --data`` and the Train page
    open) of the images in folder ``images`` whose annotation file (:func:`annotation_for`) is
    in ``annotations``: each image copied as it is, its mask an instance TIFF (``<stem>.tif``,
    uint16, or uint32 past 65,535 objects). Images without an annotation file, or whose file
    cannot be read, are left out and reported. ``link_images``: hard-link a 2-D image instead of
    copying it (an unpacked upload, whose files nobody edits: no second copy on the disk).

    Raises:
        AnnotationError: a folder that does not exist, ``out`` already holding a data set, or no
            image with a readable annotation.
    """
    images, annotations, out = Path(images), Path(annotations), Path(out)
    for folder in (images, annotations):
        if not folder.is_dir():
            raise AnnotationError(f"{folder}: no such folder")
    if (out / "images").exists() or (out / "masks").exists():
        raise AnnotationError(f"{out} already holds a data set (images/ or masks/): choose a new folder")
    reports: list[MaskReport] = []
    # Built aside and moved into place whole: a failure leaves no half data set to be opened later.
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _write_pairs(images, annotations, partial, link_images, reports)
        if not any(r.problem is None for r in reports):
            raise AnnotationError(f"no image in {images} has a readable annotation file in {annotations}"
                                  + (f" (first: {reports[0].image}: {reports[0].problem})" if reports else
                                     ": the folder holds no PNG, JPEG or TIFF image"))
        out.mkdir(parents=True, exist_ok=True)
        for part in ("images", "masks"):
            (partial / part).rename(out / part)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return reports


def _write_pairs(images: Path, annotations: Path, out: Path, link_images: bool, reports: list[MaskReport]) -> None:
    """The pairs of :func:`make_dataset` written into ``out``, a report per image appended."""
    files = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for image in files:
        found = annotation_for(image, annotations)
        if found is None:
            reports.append(MaskReport(image.name, None, problem="no annotation file"))
            continue
        try:
            z, h, w, _ = read_image_shape(image)
            if z * h * w > MAX_MASK_PIXELS:
                raise AnnotationError(f"{z * h * w:,} pixels, more than the {MAX_MASK_PIXELS:,} a mask is made for")
            result = read_annotations(found, (z, h, w))
            stack = read_image(image) if z > 1 else None  # the data set reader pairs 2-D images
        except (AnnotationError, ImageReadError) as exc:
            reports.append(MaskReport(image.name, found.name, problem=str(exc)))
            continue
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        if stack is None:
            _place(image, out / "images" / image.name, link_images)
        else:  # one pair per slice, as the app's training set
            for s in range(z):
                suffix, data = encode_slice(stack.data[s], stack.resolution)
                (out / "images" / f"{image.stem}_z{s + 1:03d}{suffix}").write_bytes(data)
        masks = consecutive_ids(result.ids)  # each slice 1..n: its largest id is its count
        for s, mask in enumerate(masks):
            name = image.stem if z == 1 else f"{image.stem}_z{s + 1:03d}"
            write_tiff(out / "masks" / f"{name}.tif", id_image(mask))
        reports.append(MaskReport(image.name, found.name, sum(int(m.max()) for m in masks), result.skipped))


def _place(source: Path, target: Path, link: bool) -> None:
    """``source`` at ``target``: a hard link when asked and the file system allows, else a copy."""
    if link:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copyfile(source, target)
