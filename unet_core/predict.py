"""Segment image files and write the results: what ``python -m unet_core predict`` does per file.

Per input ``<stem>`` the outputs are ``<stem>_labels.png`` (uint8; ``.tif`` for stacks),
``<stem>_instances.tif`` (uint16 instance ids, ImageJ-readable), ``<stem>_objects.csv``, the
objects' outlines for QuPath (``<stem>_outlines.geojson``) and Fiji (``<stem>_RoiSet.zip``, see
:mod:`unet_core.outlines`) and, when asked, ``<stem>_probs.tif`` (float32, classes x H x W). TIFF
outputs keep the input's resolution tags.

The labels of a model with one object class (2 classes) are written as 0 (background) and 255
(object), so that the file shows white objects on black in any viewer (0/1 looks black); models
with more classes write the class index of every pixel. In a stack, object ids are unique across
the stack (the ids of each slice continue from those of the slice before), in the instances TIFF
and in the CSV alike, and the CSV's ``slice`` column counts from 1 as Fiji does.

Results are never lost to a name clash: inputs with the same stem get distinct output stems
(:func:`output_stems`), and an existing file is not overwritten unless asked (``overwrite``).
Each file is written under a temporary name and then moved into place, so an interrupted run
leaves no half-written result under a real name.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import UserError
from .inference import InferenceOptions, Progress, Segmentation, instance_ids, segment_objects
from .instances import InstanceOptions, object_table, objects_csv, stack_objects_csv, with_physical_units
from .io import (
    ChannelChoiceError,
    ImageFile,
    channels_for_model,
    read_image,
    resolution_from_um,
    write_png,
    write_tiff,
)
from .metadata import ModelMeta
from .outlines import imagej_roiset, qupath_geojson, stack_outlines
from .runtime import Predictor

log = logging.getLogger(__name__)


class OutputExistsError(FileExistsError):
    """An output file that would overwrite an existing file (or an input); names the file."""


@dataclass
class FileResult:
    """What was written for one input file."""

    source: str
    outputs: list[Path] = field(default_factory=list)
    n_objects: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Result:
    """A segmented image in memory: class labels, instances and per-object rows, per slice.

    Attributes:
        image: the image as segmented (after the choice of channels).
        segmentation: class labels (and probabilities, if kept).
        instances: ``(Z, H, W)`` int32 object ids, 0 = background, unique across a stack.
        objects: per slice, the :func:`~unet_core.instances.object_table` rows (their ``id`` is
            the one in ``instances``).
        n_classes: the model's number of classes (None: unknown; labels are then written as
            class indexes).
        border_class: the model's outline class (:attr:`ModelMeta.border_class`), or None.
    """

    image: ImageFile
    segmentation: Segmentation
    instances: np.ndarray  # (Z, H, W) int32
    objects: list[list[dict[str, float]]]  # per slice
    n_classes: int | None = None
    border_class: int | None = None

    @property
    def n_objects(self) -> int:
        return sum(len(rows) for rows in self.objects)

    def label_image(self) -> np.ndarray:
        """The class labels as written to ``<stem>_labels``: 0/255 for a 2-class model (objects
        white on black in any viewer), class indexes for more classes. A model with an outline
        class also writes 0/255, its objects' pixels (interior and outline: the outline is how the
        network splits objects, not a class of its own)."""
        labels = self.segmentation.labels
        if self.border_class is not None:
            return (labels > 0).astype(np.uint8) * np.uint8(255)
        if self.n_classes == 2:
            return labels.astype(np.uint8, copy=False) * np.uint8(255)  # one copy: 1 -> 255
        return labels

    def with_pixel_size(self, pixel_size_um: float) -> Result:
        """This result for square pixels ``pixel_size_um`` micrometres wide (typed by the user for
        a file that does not say): the image's resolution and the object table's µm columns."""
        image = replace(self.image, resolution=resolution_from_um(pixel_size_um))  # checks the size
        size = (float(pixel_size_um), float(pixel_size_um))
        return replace(self, image=image, objects=[with_physical_units(rows, size) for rows in self.objects])

    def instance_image(self) -> np.ndarray:
        """Instance ids as uint16 (ImageJ-readable) when they fit, else uint32 (for int32 ids, which
        are never negative, a view: a whole-slide image's ids are not copied once more)."""
        return id_image(self.instances)

    def csv_text(self) -> str:
        """The ``<stem>_objects.csv`` text: µm columns when the pixel size is known (also for an
        image without objects: one header whatever the content); for a stack, one ``slice``
        column counting from 1."""
        physical = self.image.pixel_size_um is not None or any(
            "area_um2" in row for rows in self.objects for row in rows)
        if not self.image.is_stack:
            return objects_csv(self.objects[0], physical=physical)
        return stack_objects_csv(self.objects, physical=physical)


def id_image(ids: np.ndarray) -> np.ndarray:
    """Instance ids as uint16 (ImageJ-readable) when they fit, else uint32 (for int32 ids, which
    are never negative, a view: a whole-slide image's ids are not copied once more)."""
    if ids.size and ids.max() > np.iinfo(np.uint16).max:
        return ids.view(np.uint32) if ids.dtype == np.int32 else ids.astype(np.uint32)
    return ids.astype(np.uint16)


def run(
    image: ImageFile,
    predictor: Predictor,
    options: InferenceOptions | None = None,
    instance_options: InstanceOptions | None = None,
    progress: Progress | None = None,
) -> Result:
    """Segment ``image`` and derive instances and object measurements for every slice.

    The objects of a stack are numbered on from slice to slice (slice 1: 1..n1, slice 2: n1+1..),
    so that an id names one object in the whole stack: in the instances TIFF and in the CSV.
    """
    seg, ids = segment_objects(image, predictor, options, instance_options, progress)
    return measure(image, seg, ids, predictor.meta)


def with_instance_options(result: Result, meta: ModelMeta, instance_options: InstanceOptions) -> Result:
    """``result`` with its objects derived again under other post-processing options (minimum
    size, holes, border objects, growth), from its class labels by the object rule of the model
    ``meta``: no network pass."""
    ids = instance_ids(result.segmentation, meta, instance_options, result.image.shape2d)
    return measure(result.image, result.segmentation, ids, meta)


def measure(image: ImageFile, seg: Segmentation, ids: np.ndarray, meta: ModelMeta) -> Result:
    """The :class:`Result` of instance ids ``ids`` (numbered on across a stack, in place) of
    ``image``, segmented by the model ``meta``."""
    return measured(image, seg, ids, meta.unet.n_classes, meta.border_class)


def measured(image: ImageFile, seg: Segmentation, ids: np.ndarray, n_classes: int | None,
             border_class: int | None) -> Result:
    """The :class:`Result` of per-slice instance ids ``ids`` (each slice 1..n; numbered on across
    the stack here, in place) of ``image``, with the model's number of classes and outline class."""
    pixel_size = image.pixel_size_um
    objects = []
    offset = 0
    for s in range(ids.shape[0]):
        # Measured with the slice's own ids 1..n (object_table's arrays are sized by the largest id).
        rows = object_table(ids[s], image.data[s], pixel_size)
        n = int(ids[s].max()) if ids[s].size else 0
        if offset:
            np.add(ids[s], offset, out=ids[s], where=ids[s] > 0)
            for row in rows:
                row["id"] += offset
        offset += n
        objects.append(rows)
    return Result(image, seg, ids, objects, n_classes=n_classes, border_class=border_class)


def segment_file(path: str | Path, stem: str, predictor: Predictor, options: InferenceOptions,
                 instance_options: InstanceOptions | None, out_dir: str | Path, channels: Sequence[int] | None = None,
                 overwrite: bool = False, protected: Collection[Path] = (),
                 progress: Progress | None = None) -> tuple[FileResult, Segmentation]:
    """Read, segment and write one image file, as ``predict`` does: (what was written, the
    segmentation). ``channels`` (from 1) apply to images with separate channels; gray and RGB
    images are read as always. The outputs are checked before segmenting: a refused output does
    not cost the segmentation."""
    image = read_image(path)
    chosen = channels if image.has_separate_channels else None
    image = channels_for_model(image, predictor.meta.unet.in_channels, chosen)
    check_outputs(out_dir, output_names(stem, image.is_stack, options.keep_probs), overwrite, protected)
    result = run(image, predictor, options, instance_options, progress)
    return write_outputs(result, out_dir, stem, overwrite, protected), result.segmentation


def failure_message(name: str, exc: BaseException) -> str:
    """The one line saying why image ``name`` (as the user typed it) could not be segmented; a bug
    (any error but the user's, the system's and memory) is logged with its traceback."""
    if isinstance(exc, (UserError, OSError)):
        return f"{_file_message(name, exc)}{_channel_hint(exc)}"
    if isinstance(exc, MemoryError):
        return f"{name}: not enough memory to segment this image (try a smaller --tile)"
    log.error("internal error while segmenting %s", name, exc_info=exc)
    return (f"{name}: internal error ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); please report it, "
            "with the traceback logged above")


def _file_message(name: str, exc: BaseException) -> str:
    """``NAME: problem`` in one line for an input as the user typed it (``a/x.png``, not ``x.png``).

    Engine messages start with the file's base name; two inputs ``a/x.png`` and ``b/x.png`` must
    still be told apart.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    for prefix in (f"{name}: ", f"{Path(name)}: ", f"{Path(name).name}: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    return f"{name}: {text}"


def _channel_hint(exc: BaseException) -> str:
    """What to type after a refusal to guess the channel (empty for other errors)."""
    if not isinstance(exc, ChannelChoiceError):
        return ""
    if exc.in_channels == 1:
        return (f": give the channel with the objects with --channel N (1 to {exc.n_channels}, numbered as in Fiji), "
                "e.g. --channel 2")
    example = ",".join(str(c) for c in range(1, exc.in_channels + 1))
    return f": give {exc.in_channels} channels (1 to {exc.n_channels}, numbered as in Fiji), e.g. --channels {example}"


#: The outline files' name endings (:mod:`unet_core.outlines`).
OUTLINE_SUFFIXES = ("_outlines.geojson", "_RoiSet.zip")
#: Past this many objects in one image (or stack) the outline files are not written: QuPath's and
#: Fiji's object lists slow to a halt, and tracing takes ~0.4 ms an object (``bench/postprocess.py``).
MAX_OUTLINE_OBJECTS = 50_000


def output_names(stem: str, is_stack: bool, probs: bool) -> list[str]:
    """The names :func:`write_outputs` may write for ``stem``: labels, instances, objects, outlines
    (not past :data:`MAX_OUTLINE_OBJECTS`) (, probs)."""
    names = [f"{stem}_labels.tif" if is_stack else f"{stem}_labels.png", f"{stem}_instances.tif",
             f"{stem}_objects.csv", *(f"{stem}{suffix}" for suffix in OUTLINE_SUFFIXES)]
    return names + [f"{stem}_probs.tif"] if probs else names


def output_stems(inputs: Sequence[str | Path]) -> list[str]:
    """A distinct output stem for every input, decided by the list alone (deterministic).

    The first input with a stem keeps it (``x.png`` -> ``x``). A later one with the same stem
    but another suffix takes its full name (``x.tif`` -> ``x.tif``); one with the same name in
    another folder takes its folders (``b/x.png`` -> ``b_x``, then ``c_b_x``); the same path
    given twice gets a number (``x_2``). Compared case-insensitively, since macOS and Windows
    file systems are.
    """
    paths = [Path(p) for p in inputs]
    names = [p.name.casefold() for p in paths]
    folders = [[part for part in p.parent.parts if part not in (p.anchor, ".", "..")] for p in paths]
    taken: set[str] = set()
    stems: list[str] = []
    for i, path in enumerate(paths):
        candidates = [path.stem]
        twins = [folders[j] for j in range(len(paths)) if j != i and names[j] == names[i]]
        if not twins:
            candidates.append(path.name)
        # The fewest trailing folders that tell this input from its namesakes: c/b/x, d/b/x -> d_b_x.
        mine = folders[i]
        start = next((k for k in range(1, len(mine) + 1)
                      if all([f.casefold() for f in t[-k:]] != [f.casefold() for f in mine[-k:]] for t in twins)),
                     len(mine) + 1)
        candidates += ["_".join([*mine[-k:], path.stem]) for k in range(start, len(mine) + 1)]
        stem = next((c for c in candidates if c.casefold() not in taken), None)
        n = 2
        while stem is None:
            stem = f"{path.stem}_{n}" if f"{path.stem}_{n}".casefold() not in taken else None
            n += 1
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def check_outputs(out_dir: str | Path, names: Sequence[str], overwrite: bool = False,
                  protected: Collection[Path] = ()) -> None:
    """Refuse to write ``names`` into ``out_dir`` when one exists (unless ``overwrite``) or is one
    of the ``protected`` (resolved) paths, such as the inputs, which are never overwritten.

    Raises:
        OutputExistsError: naming the file and how to proceed.
    """
    out_dir = Path(out_dir)
    for name in names:
        path = out_dir / name
        if path.resolve() in protected:
            raise OutputExistsError(f"{path} is one of the input images and is never overwritten; "
                                    "choose another --out folder")
        if path.is_dir() or (not overwrite and (path.exists() or path.is_symlink())):
            raise OutputExistsError(f"{path} already exists and was not overwritten (give --overwrite to "
                                    "replace it, or choose another --out folder)")


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move a finished temporary file to its real name; without ``overwrite``, never over a file."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and fails when the name exists (even if created meanwhile)
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise OutputExistsError(f"{path} already exists and was not overwritten (give --overwrite to replace "
                                "it)") from None
    except OSError:  # a file system without hard links (FAT, some network shares)
        if path.exists():
            tmp.unlink(missing_ok=True)
            raise OutputExistsError(f"{path} already exists and was not overwritten") from None
        os.replace(tmp, path)
    else:
        tmp.unlink()


def write_outputs(
    result: Result,
    out_dir: str | Path,
    stem: str | None = None,
    overwrite: bool = False,
    protected: Collection[Path] = (),
) -> FileResult:
    """Write labels, instances, object table, outlines (and probabilities, if kept) for one image.

    Args:
        result: the segmented image.
        out_dir: the output folder (created if missing).
        stem: output names start with this (default: the image's stem; see :func:`output_stems`).
        overwrite: replace existing files; otherwise nothing is written when one exists.
        protected: resolved paths that are never written (the inputs).

    Raises:
        OutputExistsError: an output exists (without ``overwrite``) or is protected.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image, seg = result.image, result.segmentation
    stem = stem or image.stem
    res = image.resolution
    names = output_names(stem, image.is_stack, seg.probs is not None)
    check_outputs(out_dir, names, overwrite, protected)
    written = FileResult(source=image.name, n_objects=result.n_objects, notes=[*image.notes, *seg.notes])
    inst = result.instance_image()
    labels = result.label_image()
    if inst.dtype == np.uint32:
        written.notes.append("more than 65535 objects: instances written as 32-bit TIFF (not ImageJ-readable)")
    writers: list[Callable[[Path], None]] = [
        (lambda p: write_tiff(p, labels, res)) if image.is_stack else (lambda p: write_png(p, labels[0])),
        lambda p: write_tiff(p, inst if image.is_stack else inst[0], res),
        lambda p: p.write_text(result.csv_text()),
    ]
    if result.n_objects <= MAX_OUTLINE_OBJECTS:
        outlines = stack_outlines(result.instances, result.objects)
        writers += [lambda p: p.write_text(qupath_geojson(outlines)), lambda p: p.write_bytes(imagej_roiset(outlines))]
        if outlines.pieces_dropped:
            written.notes.append(f"{outlines.pieces_dropped} object pieces apart from their object's largest are not "
                                 "in the Fiji ROI set (an ImageJ ROI has one outline; the GeoJSON has them all)")
    else:
        names = [n for n in names if not n.endswith(OUTLINE_SUFFIXES)]
        written.notes.append(f"{result.n_objects:,} objects, more than {MAX_OUTLINE_OBJECTS:,}: no outlines for "
                             "QuPath and Fiji (their object lists slow to a halt; the instances TIFF holds every object)")
    if seg.probs is not None:
        probs = seg.probs.astype(np.float32, copy=False)
        writers.append(lambda p: write_tiff(p, probs if image.is_stack else probs[0], res,
                                            "ZCYX" if image.is_stack else "CYX"))
    # Everything is written under temporary names first: a full disk or a crash half-way leaves
    # no torn file under a result's name.
    tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    temps = [out_dir / f".{name}.{tag}.tmp" for name in names]
    try:
        for write, tmp in zip(writers, temps):
            write(tmp)
        for tmp, name in zip(temps, names):
            _publish(tmp, out_dir / name, overwrite)
            written.outputs.append(out_dir / name)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return written


def result_files(result: Result) -> dict[str, bytes]:
    """The files ``python -m unet_core predict`` writes for ``result``, as name -> bytes.

    Written by the CLI's own :func:`~unet_core.predict.write_outputs` into a temporary folder,
    so a download from the app is byte for byte what the command line produces.
    """
    with tempfile.TemporaryDirectory(prefix="unet_studio_") as tmp:
        written = write_outputs(result, tmp)
        return {path.name: path.read_bytes() for path in written.outputs}


def zip_files(file_sets: list[dict[str, bytes]]) -> bytes:
    """One zip of the result files of several images (each a name -> bytes dict).

    Two inputs with the same stem (``a.png``, ``a.tif``) would write the same names: the later
    one's files get its position as a prefix. PNGs are stored as they are (already compressed).
    """
    buf = io.BytesIO()
    written: set[str] = set()
    with zipfile.ZipFile(buf, "w") as archive:
        for i, files in enumerate(file_sets, start=1):
            for name, data in files.items():
                name = f"{i}_{name}" if name in written else name
                written.add(name)
                compress = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
                archive.writestr(name, data, compress_type=compress)
    return buf.getvalue()
