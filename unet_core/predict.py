"""Segment image files and write the results: what ``python -m unet_core predict`` does per file.

Per input ``<stem>`` the outputs are ``<stem>_labels.png`` (uint8 class indexes; ``.tif`` for
stacks), ``<stem>_instances.tif`` (uint16 instance ids, ImageJ-readable), ``<stem>_objects.csv``
and, when asked, ``<stem>_probs.tif`` (float32, classes x H x W). TIFF outputs keep the input's
resolution tags.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .inference import InferenceOptions, Progress, Segmentation, segment
from .instances import InstanceOptions, instances, object_table, objects_csv
from .io import ImageFile, write_image, write_tiff
from .runtime import Predictor


@dataclass
class FileResult:
    """What was written for one input file."""

    source: str
    outputs: list[Path] = field(default_factory=list)
    n_objects: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Result:
    """A segmented image in memory: class labels, instances and per-object rows, per slice."""

    image: ImageFile
    segmentation: Segmentation
    instances: np.ndarray  # (Z, H, W) int32
    objects: list[list[dict[str, float]]]  # per slice

    @property
    def n_objects(self) -> int:
        return sum(len(rows) for rows in self.objects)

    def instance_image(self) -> np.ndarray:
        """Instance ids as uint16 (ImageJ-readable) when they fit, else uint32."""
        if self.instances.size and self.instances.max() > np.iinfo(np.uint16).max:
            return self.instances.astype(np.uint32)
        return self.instances.astype(np.uint16)

    def csv_text(self) -> str:
        if not self.image.is_stack:
            return objects_csv(self.objects[0])
        parts = [objects_csv(rows, slice_index=s) for s, rows in enumerate(self.objects)]
        # One header for the whole stack.
        return parts[0] + "".join(p.split("\n", 1)[1] for p in parts[1:])


def run(
    image: ImageFile,
    predictor: Predictor,
    options: InferenceOptions | None = None,
    instance_options: InstanceOptions | None = None,
    progress: Progress | None = None,
) -> Result:
    """Segment ``image`` and derive instances and object measurements for every slice."""
    seg = segment(image, predictor, options, progress)
    fg = predictor.meta.foreground_classes
    ids = np.empty(seg.labels.shape, dtype=np.int32)  # filled slice by slice: no stacked copy
    for s in range(ids.shape[0]):
        ids[s] = instances(seg.labels[s], fg, instance_options)
    objects = [object_table(ids[s], image.data[s]) for s in range(ids.shape[0])]
    return Result(image, seg, ids, objects)


def write_outputs(result: Result, out_dir: str | Path) -> FileResult:
    """Write labels, instances, object table (and probabilities, if kept) for one image."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image, seg = result.image, result.segmentation
    stem = image.stem
    res = image.resolution
    written = FileResult(source=image.name, n_objects=result.n_objects, notes=list(seg.notes))
    labels_path = out_dir / (f"{stem}_labels.tif" if image.is_stack else f"{stem}_labels.png")
    write_image(labels_path, seg.labels if image.is_stack else seg.labels[0], res)
    inst = result.instance_image()
    inst_path = out_dir / f"{stem}_instances.tif"
    write_tiff(inst_path, inst if image.is_stack else inst[0], res)
    if inst.dtype == np.uint32:
        written.notes.append("more than 65535 objects: instances written as 32-bit TIFF (not ImageJ-readable)")
    csv_path = out_dir / f"{stem}_objects.csv"
    csv_path.write_text(result.csv_text())
    written.outputs += [labels_path, inst_path, csv_path]
    if seg.probs is not None:
        probs_path = out_dir / f"{stem}_probs.tif"
        probs = seg.probs.astype(np.float32, copy=False)
        write_tiff(probs_path, probs if image.is_stack else probs[0], res, "ZCYX" if image.is_stack else "CYX")
        written.outputs.append(probs_path)
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
