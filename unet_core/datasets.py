"""Training data sets: finding image/mask pairs on disk, decoding their masks, splitting them.

Layouts, detected from the folder (first match wins, in this order):

``isbi2012`` (stacks)
    ``train-volume.tif`` + ``train-labels.tif``: one sample per slice.
``ctc`` (Cell Tracking Challenge)
    ``01/t000.tif`` with ``01_GT/SEG/man_seg000.tif`` (gold truth) or ``01_ST/SEG/man_seg000.tif``
    (silver truth), for every sequence folder ``01``, ``02``, ... Only frames with a segmentation
    are used; where a frame has both, the GT mask is taken. ``man_seg_TTT_ZZZ.tif`` (a 2-D
    annotation of slice ZZZ of a 3-D frame) becomes a sample of that slice.
``generic``
    ``images/`` + ``masks/``, matched by file stem (``images/a.png`` <-> ``masks/a.tif`` is fine).
``isbi2012`` (PNG pairs)
    ``images/`` + ``labels/``, matched by file stem, labels 0 = membrane, 255 = cell interior.

ISBI labels show membranes (black) around cells (white); the instances are the connected
components of the cell interior. Connectivity is 4 everywhere in this module: membranes are
thin 8-connected lines, and with 8-connectivity two cells would leak into each other through
every diagonal step of the membrane between them.

Mask encodings are detected per mask (:func:`detect_mask_encoding`) and reported for the data
set in :attr:`Dataset.mask_encoding`; a mask that disagrees is named in :attr:`Dataset.problems`.
Binary and class masks become instances by connected components; instance masks keep their ids.

Problems with single samples (unreadable file, missing mask, image and mask of different sizes)
never stop a data set from opening: the sample is left out and :attr:`Dataset.problems` names
the file. Only a folder that matches no layout raises :class:`DatasetError`.

Sample order is the natural sort of the names (``2.png`` before ``10.png``), so the
train/validation split (:class:`SplitRule`) is a pure function of the file names.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

from .errors import UserError
from .io import IMAGE_SUFFIXES, ImageReadError, read_image, read_image_shape
from .paths import data_root

LAYOUTS = ("isbi2012", "ctc", "generic", "synthetic")
MASK_ENCODINGS = ("binary_0_255", "binary_0_1", "class_indexes", "instance_ids")
BINARY_ENCODINGS = ("binary_0_255", "binary_0_1")
SPLIT_KINDS = ("every_kth", "last_n", "none")
SPLIT_PARTS = ("train", "val", "val_random", "val_groups")
#: A file beside images/ + masks/ that says which images were acquired together (DSB 2018 style:
#: ``id,category,height,width,...``); see :func:`_acquisition_groups`.
INDEX_FILE = "index.csv"

# A mask with at most this many distinct non-zero values, all of them <= this number, may be a
# class map; more values than this can only be instance ids.
MAX_CLASSES = 8
# Encoding of a data set = vote of its first masks that contain foreground (see _vote_encoding).
_ENCODING_SAMPLES = 3
# How many masks to read at most while looking for those (empty masks carry no evidence).
_ENCODING_READS = 10

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


class DatasetError(UserError):
    """A folder that is not a data set, or a mask that cannot be decoded; the message says why."""


# --------------------------------------------------------------------------- split rules


@dataclass(frozen=True)
class SplitRule:
    """Which samples are held out for validation; stored in a model's metadata.

    Both rules work on the sample order of :class:`Dataset` (natural sort of the names).

    Args:
        kind: ``"every_kth"``: items 0, k, 2k, ... are validation (every k-th, starting with the
            first); ``"last_n"``: the last ``k`` items are validation (ISBI 2012: slices 25-29);
            ``"none"``: no item is held out by this rule (a final model trained on every image
            after the recipe was validated with another rule; with ``groups``, only they are held out).
        k: the k of ``every_kth`` or the n of ``last_n`` (ignored by ``none``); at least 1.
        groups: acquisition groups (:attr:`Sample.group`, e.g. ``"gray_lightbg 1024x1024"``)
            held out *as a whole* besides the rule above, so that validation also measures how a
            model does on a new experiment, not only on new images of experiments it has seen.

    Parts (:meth:`indices`): ``"train"``, ``"val"`` (everything held out), ``"val_random"`` (the
    every-k-th / last-n part alone) and ``"val_groups"`` (the held-out groups alone).
    """

    kind: str = "every_kth"
    k: int = 5
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"split rule kind must be one of {SPLIT_KINDS}, not {self.kind!r}")
        if int(self.k) < 1:
            raise ValueError(f"split rule k must be >= 1, not {self.k}")
        object.__setattr__(self, "groups", tuple(str(g) for g in self.groups))

    def val_indices(self, n_items: int, sample_groups: Sequence[str | None] | None = None) -> list[int]:
        """Validation indices among ``n_items`` items, ascending (``sample_groups``: see :meth:`indices`)."""
        return self.indices(n_items, "val", sample_groups)

    def indices(self, n_items: int, part: str, sample_groups: Sequence[str | None] | None = None) -> list[int]:
        """Indices of ``part`` among ``n_items`` items, ascending.

        Args:
            n_items: number of samples.
            part: one of :data:`SPLIT_PARTS`.
            sample_groups: the acquisition group of each sample; needed when the rule holds out groups.
        """
        if part not in SPLIT_PARTS:
            raise ValueError(f"part must be one of {SPLIT_PARTS}, not {part!r}")
        if self.kind == "every_kth":
            random = set(range(0, n_items, self.k))
        elif self.kind == "last_n":
            random = set(range(max(0, n_items - self.k), n_items))
        else:
            random = set()
        grouped: set[int] = set()
        if self.groups:
            if sample_groups is None or len(sample_groups) != n_items:
                raise ValueError("this split holds out acquisition groups: the samples' groups are needed")
            held = set(self.groups)
            grouped = {i for i, g in enumerate(sample_groups) if g in held}
        chosen = {"val_random": random, "val_groups": grouped, "val": random | grouped}.get(part)
        if chosen is None:  # train
            held_out = random | grouped
            return [i for i in range(n_items) if i not in held_out]
        return sorted(chosen)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "k": int(self.k)}
        if self.groups:
            d["groups"] = list(self.groups)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitRule:
        """The rule of a :meth:`to_dict` dict; ``k`` may be left out for ``none``, which ignores it."""
        kind = str(d["kind"])
        k = d["k"] if "k" in d or kind != "none" else cls.k
        return cls(kind=kind, k=int(k), groups=tuple(d.get("groups") or ()))


def default_split_rule(layout: str) -> SplitRule:
    """The split a layout gets unless told otherwise: last 5 slices for ISBI, else every 5th."""
    return SplitRule("last_n", 5) if layout == "isbi2012" else SplitRule("every_kth", 5)


# --------------------------------------------------------------------------- mask encodings


def detect_mask_encoding(mask: np.ndarray) -> str:
    """Name the encoding of a 2-D mask, by this rule (``V`` = the distinct non-zero values):

    - ``V`` empty or ``{1}``: ``"binary_0_1"`` (an empty mask reads the same in every encoding);
    - ``V`` a single other value (255, 65535, ...): ``"binary_0_255"``, foreground = that value;
    - at most :data:`MAX_CLASSES` values, all <= :data:`MAX_CLASSES`, and at least half of them
      forming more than one 4-connected region: ``"class_indexes"`` (many objects per class);
    - anything else (many values, large values, or one region per value): ``"instance_ids"``.

    A class map where every class happens to be one region reads as instance ids; a data set's
    encoding is a vote over several masks (see :func:`open_dataset`) to make that unlikely.

    Args:
        mask: 2-D array of non-negative integers (floats holding integers are accepted).

    Raises:
        DatasetError: negative or fractional values.
    """
    mask = _integer_mask(mask)
    values = np.unique(mask)
    values = values[values != 0]
    if values.size == 0 or (values.size == 1 and values[0] == 1):
        return "binary_0_1"
    if values.size == 1:
        return "binary_0_255"
    if values.size <= MAX_CLASSES and values[-1] <= MAX_CLASSES:
        split_values = sum(ndimage.label(mask == v, _FOUR_CONNECTED)[1] > 1 for v in values)
        if 2 * split_values >= values.size:
            return "class_indexes"
    return "instance_ids"


def mask_to_instances(mask: np.ndarray, encoding: str) -> np.ndarray:
    """Instance ids (int32, 0 = background) of a 2-D mask in ``encoding``.

    Instance masks keep their ids; binary masks become the 4-connected components of the
    foreground; class masks the 4-connected components of each class, so that two touching
    objects of different classes stay two objects.
    """
    mask = _integer_mask(mask)
    if encoding == "instance_ids":
        if mask.size and int(mask.max()) > np.iinfo(np.int32).max:
            raise DatasetError(f"instance ids up to {int(mask.max())} do not fit int32")
        return mask.astype(np.int32)
    if encoding in BINARY_ENCODINGS:
        return ndimage.label(mask > 0, _FOUR_CONNECTED)[0].astype(np.int32)
    if encoding == "class_indexes":
        out = np.zeros(mask.shape, np.int32)
        n_so_far = 0
        for value in np.unique(mask[mask > 0]):
            regions, n = ndimage.label(mask == value, _FOUR_CONNECTED)
            inside = regions > 0
            out[inside] = regions[inside] + n_so_far
            n_so_far += n
        return out
    raise ValueError(f"mask encoding must be one of {MASK_ENCODINGS}, not {encoding!r}")


def mask_to_classes(mask: np.ndarray, encoding: str) -> np.ndarray:
    """Class index map (uint8): the class values for class masks, else 0 background / 1 object."""
    mask = _integer_mask(mask)
    if encoding == "class_indexes":
        if mask.size and int(mask.max()) > 255:
            raise DatasetError(f"class index {int(mask.max())} does not fit uint8")
        return mask.astype(np.uint8)
    if encoding in MASK_ENCODINGS:
        return (mask > 0).astype(np.uint8)
    raise ValueError(f"mask encoding must be one of {MASK_ENCODINGS}, not {encoding!r}")


def _integer_mask(mask: np.ndarray) -> np.ndarray:
    """The mask as a non-negative integer array; label TIFFs are sometimes saved as float."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DatasetError(f"a mask must be 2-D, not of shape {mask.shape}")
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if mask.dtype.kind == "f":
        if not np.all(np.isfinite(mask)) or not np.all(mask == np.round(mask)):
            raise DatasetError("the mask holds fractional values; masks must hold integer labels")
        mask = mask.astype(np.int64)
    elif mask.dtype.kind not in "iu":
        raise DatasetError(f"a mask of dtype {mask.dtype} cannot hold labels")
    if mask.dtype.kind == "i" and mask.size and int(mask.min()) < 0:
        raise DatasetError("the mask holds negative values; labels must be >= 0")
    return mask


def _mask_plane(pixels: np.ndarray, name: str) -> np.ndarray:
    """The single label plane of ``(H, W, C)`` mask pixels (alpha dropped, equal channels merged)."""
    c = pixels.shape[-1]
    if c in (2, 4):  # gray+alpha or RGBA: alpha is not a label
        pixels = pixels[..., : c - 1]
    if pixels.shape[-1] > 1 and not np.all(pixels == pixels[..., :1]):
        raise DatasetError(
            f"{name}: a colour mask (channels differ); save masks as single-channel label images"
        )
    return pixels[..., 0]


def _vote_encoding(encodings: list[str]) -> str:
    """One encoding for a data set from those of several masks.

    A one-object instance mask reads as binary, so any non-binary vote outranks binary ones;
    within each group the most frequent encoding wins (ties: the first seen).
    """
    if not encodings:
        return "binary_0_1"
    non_binary = [e for e in encodings if e not in BINARY_ENCODINGS]
    return Counter(non_binary or encodings).most_common(1)[0][0]


def _fits_encoding(mask: np.ndarray, mask_encoding: str, dataset_encoding: str) -> bool:
    """Whether reading a mask as ``dataset_encoding`` gives what its own encoding means."""
    if mask_encoding == dataset_encoding:
        return True
    if mask_encoding in BINARY_ENCODINGS:
        if dataset_encoding != "instance_ids":
            return True  # foreground is foreground either way
        # One id for several separate blobs is a binary mask among instance masks.
        return ndimage.label(mask > 0, _FOUR_CONNECTED)[1] <= 1
    return False


# --------------------------------------------------------------------------- samples and data sets


@dataclass(frozen=True)
class Sample:
    """One training pair.

    For generated data sets the paths are where :func:`unet_core.synthetic.write_dataset`
    would put the files; read samples through :class:`Dataset`, not from the paths.

    Attributes:
        name: unique within the data set; the sort key of the sample order.
        image_path: the image file (for a stack, the whole stack).
        mask_path: the mask file, None when there is none.
        slice_index: which slice of a stack file, None for a 2-D file.
        group: the acquisition group: images taken together (same experiment, same size);
            ``"CATEGORY HxW"`` from the data set's ``index.csv``, else ``"HxW"``.
        category: the image category from ``index.csv`` (``color``, ``gray_darkbg``, ...), else None.
    """

    name: str
    image_path: Path
    mask_path: Path | None
    slice_index: int | None = None
    group: str | None = None
    category: str | None = None


class SampleSource(Protocol):
    """Where a :class:`Dataset` gets its pixels from: files on disk, or a generator."""

    def image(self, sample: Sample) -> np.ndarray:
        """Image pixels ``(H, W, C)`` in the stored dtype."""
        ...

    def mask(self, sample: Sample) -> np.ndarray:
        """The raw 2-D mask as stored (any encoding)."""
        ...


class FileSource:
    """Reads samples from their files.

    Stack files (ISBI volumes) are kept after reading, the last ``max_stacks`` of them, so that
    loading 30 slices decodes the volume once, not 30 times.
    """

    def __init__(self, max_stacks: int = 2) -> None:
        self.max_stacks = max_stacks
        self._stacks: OrderedDict[Path, np.ndarray] = OrderedDict()

    def image(self, sample: Sample) -> np.ndarray:
        return self._plane(sample.image_path, sample.slice_index)

    def mask(self, sample: Sample) -> np.ndarray:
        if sample.mask_path is None:
            raise DatasetError(f"{sample.name}: the sample has no mask")
        return _mask_plane(self._plane(sample.mask_path, sample.slice_index), sample.mask_path.name)

    def _plane(self, path: Path, slice_index: int | None) -> np.ndarray:
        data = self._stacks.get(path)
        if data is None:
            data = read_image(path).data
            if data.shape[0] > 1:
                self._stacks[path] = data
                while len(self._stacks) > self.max_stacks:
                    self._stacks.popitem(last=False)
        else:
            self._stacks.move_to_end(path)
        if data.shape[0] == 1:  # a 2-D file; also the 2-D mask of one slice of a 3-D CTC frame
            return data[0]
        z = slice_index or 0
        if z >= data.shape[0]:
            raise ImageReadError(f"{path.name}: has {data.shape[0]} slices, slice {z} requested")
        return data[z].copy()  # a view would let a caller's in-place edit change the cached stack


@dataclass
class Dataset:
    """Image/mask pairs plus what is known about them.

    Attributes:
        root: the folder (a virtual one for generated data sets).
        layout: one of :data:`LAYOUTS`.
        samples: the usable samples in natural name order.
        problems: one message per left-out or doubtful file, naming it.
        mask_encoding: one of :data:`MASK_ENCODINGS`; how every mask is decoded.
        split_rule: the default train/validation split of this data set.
        n_classes: classes of :meth:`load_classes` including background (2 unless class masks).
        source: reads the pixels; consumers never need it.
    """

    root: Path
    layout: str
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)
    mask_encoding: str = "instance_ids"
    split_rule: SplitRule = field(default_factory=SplitRule)
    n_classes: int = 2
    source: SampleSource = field(default_factory=FileSource, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def groups(self) -> list[str | None]:
        """The acquisition group of every sample, in sample order."""
        return [s.group for s in self.samples]

    def split_indices(self, part: str, rule: SplitRule | None = None) -> list[int]:
        """Indices of ``part`` under ``rule`` (default: the data set's own rule)."""
        return (rule or self.split_rule).indices(len(self), part, self.groups)

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as ``(H, W, C)`` in its stored dtype."""
        return self.source.image(self.samples[i])

    def load_mask(self, i: int) -> np.ndarray:
        """Mask ``i`` as stored, 2-D, in :attr:`mask_encoding`."""
        return self.source.mask(self.samples[i])

    def load_instances(self, i: int) -> np.ndarray:
        """Instance ids of sample ``i``, int32 ``(H, W)``, 0 = background."""
        return mask_to_instances(self.load_mask(i), self.mask_encoding)

    def load_classes(self, i: int) -> np.ndarray:
        """Class index map of sample ``i``, uint8 ``(H, W)``, 0 = background."""
        return mask_to_classes(self.load_mask(i), self.mask_encoding)


@dataclass(frozen=True)
class DatasetSummary:
    """One line of :func:`list_datasets`."""

    name: str
    path: Path
    layout: str
    n_samples: int
    mask_encoding: str
    n_problems: int


def split(
    dataset: Dataset, k: int | None = None, part: str = "train", rule: SplitRule | None = None
) -> list[int]:
    """Sample indices of ``part`` (``"train"`` or ``"val"``).

    Args:
        dataset: the data set.
        k: shorthand for ``rule=SplitRule("every_kth", k)``.
        part: ``"train"`` or ``"val"``.
        rule: the rule; default the data set's own (:func:`default_split_rule` of its layout),
            which is what a model's metadata should record so that evaluation reproduces it.
    """
    if k is not None and rule is not None:
        raise ValueError("give k or rule, not both")
    if k is not None:
        rule = SplitRule("every_kth", k)
    return dataset.split_indices(part, rule)


# --------------------------------------------------------------------------- data root


def list_datasets(root: str | Path | None = None) -> list[DatasetSummary]:
    """The sub-folders of ``root`` (default :func:`data_root`) that open as a data set.

    Folders that match no layout are skipped; nothing here raises for a bad folder.
    """
    root = Path(root) if root is not None else data_root()
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    found = []
    for folder in sorted(folders, key=lambda p: _natural_key(p.name)):
        try:
            ds = open_dataset(folder, confine=root)
        except (UserError, ValueError, OSError):  # DatasetError, or anything else a broken folder throws
            continue
        found.append(
            DatasetSummary(folder.name, folder, ds.layout, len(ds), ds.mask_encoding, len(ds.problems))
        )
    return found


# --------------------------------------------------------------------------- opening


_EXPECTED = (
    "train-volume.tif + train-labels.tif (ISBI 2012 stacks), "
    "01/t000.tif + 01_GT/SEG/man_seg000.tif or 01_ST/SEG/man_seg000.tif (Cell Tracking Challenge), "
    "images/ + masks/ matched by file stem (generic), "
    "or images/ + labels/ (ISBI 2012 PNG pairs)"
)


@dataclass(frozen=True)
class _Pair:
    """A candidate sample before its files are checked; a stack pair expands to its slices."""

    name: str
    image: Path
    mask: Path
    slice_index: int | None = None


def open_dataset(path: str | Path, verify: bool = False, confine: str | Path | None = None) -> Dataset:
    """Open the data set in ``path``, detecting its layout.

    Files are checked from their headers (exist, readable, image and mask of one size); the
    mask encoding is detected from the first masks with foreground. ``verify=True`` decodes
    every file too, which finds corrupt pixel data and masks whose encoding disagrees with the
    data set's, at the cost of reading everything. ``confine``: a folder (the app's data root)
    that every file must resolve inside; a pair that reaches out of it through a symbolic link
    (the file, or its ``images/`` or ``masks/`` folder) is left out and named in ``problems``.

    Raises:
        DatasetError: ``path`` is not a folder or matches no layout; names what was expected.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    found = _find_pairs(root)
    if found is None:
        raise DatasetError(f"{root}: no data set layout found; expected {_EXPECTED}")
    layout, pairs, problems = found
    if confine is not None:
        pairs = _confined(pairs, root, Path(confine), problems)
    samples = _acquisition_groups(root, _check_pairs(pairs, root, problems), problems)
    ds = Dataset(root, layout, samples, problems, split_rule=default_split_rule(layout))
    _detect_dataset_encoding(ds)
    if verify:
        _verify(ds)
    return ds


def _find_pairs(root: Path) -> tuple[str, list[_Pair], list[str]] | None:
    """The layout of ``root`` and its candidate pairs, or None when no layout matches."""
    volume, labels = root / "train-volume.tif", root / "train-labels.tif"
    if volume.is_file() and labels.is_file():
        return "isbi2012", [_Pair(volume.stem, volume, labels)], []
    sequences = _ctc_sequences(root)
    if sequences:
        pairs, problems = _ctc_pairs(root, sequences)
        return "ctc", pairs, problems
    for mask_dir, layout in (("masks", "generic"), ("labels", "isbi2012")):
        if (root / "images").is_dir() and (root / mask_dir).is_dir():
            pairs, problems = _stem_pairs(root, root / "images", root / mask_dir)
            return layout, pairs, problems
    return None


def _stem_pairs(root: Path, image_dir: Path, mask_dir: Path) -> tuple[list[_Pair], list[str]]:
    """Pair the image and mask files of two folders by file stem."""
    problems: list[str] = []
    images = _files_by_stem(image_dir, root, problems)
    masks = _files_by_stem(mask_dir, root, problems)
    pairs = []
    for stem, image in images.items():
        if stem in masks:
            pairs.append(_Pair(stem, image, masks[stem]))
        else:
            problems.append(f"{_rel(image, root)}: no mask {mask_dir.name}/{stem}.* ; sample left out")
    for stem in masks.keys() - images.keys():
        problems.append(f"{_rel(masks[stem], root)}: no image {image_dir.name}/{stem}.* ; mask ignored")
    return pairs, problems


def _files_by_stem(folder: Path, root: Path, problems: list[str]) -> dict[str, Path]:
    """Image files of a folder by stem; a stem used twice (a.png and a.tif) is a problem."""
    by_stem: dict[str, Path] = {}
    duplicated: set[str] = set()
    for path in sorted(_image_files(folder), key=lambda p: _natural_key(p.name)):
        if path.stem in by_stem:
            duplicated.add(path.stem)
        by_stem[path.stem] = path
    for stem in sorted(duplicated):
        problems.append(f"{_rel(folder, root)}: several files with the stem {stem!r}; left out")
        del by_stem[stem]
    return by_stem


def _image_files(folder: Path) -> list[Path]:
    # Dot files are OS litter (.DS_Store, macOS "._name" resource forks), never images.
    return [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]


_CTC_SEQUENCE = re.compile(r"^\d+$")
_CTC_FRAME = re.compile(r"^t(\d+)$")
_CTC_MASK = re.compile(r"^man_seg_?(\d+)(?:_(\d+))?$")


def _ctc_sequences(root: Path) -> list[str]:
    """Sequence folders (``01``, ``02``, ...) that have a GT or ST segmentation folder."""
    return sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and _CTC_SEQUENCE.match(p.name)
        and any((root / f"{p.name}_{truth}" / "SEG").is_dir() for truth in ("GT", "ST"))
    )


def _ctc_pairs(root: Path, sequences: list[str]) -> tuple[list[_Pair], list[str]]:
    """One pair per segmented frame (or annotated slice); GT masks replace ST ones."""
    pairs: list[_Pair] = []
    problems: list[str] = []
    for seq in sequences:
        frames = _numbered(root / seq, _CTC_FRAME)
        masks = {**_ctc_masks(root / f"{seq}_ST" / "SEG"), **_ctc_masks(root / f"{seq}_GT" / "SEG")}
        for (t, z), mask in sorted(masks.items(), key=lambda item: item[1].name):
            if t not in frames:
                problems.append(f"{_rel(mask, root)}: no frame {seq}/t{t:03d}.tif; mask ignored")
                continue
            name = f"{seq}/{frames[t].stem}" + ("" if z is None else f"_z{z:03d}")
            pairs.append(_Pair(name, frames[t], mask, z))
    return pairs, problems


def _ctc_masks(folder: Path) -> dict[tuple[int, int | None], Path]:
    """``man_segT.tif`` -> (t, None); ``man_seg_T_Z.tif`` -> (t, z)."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in _image_files(folder):
        m = _CTC_MASK.match(path.stem)
        if m:
            found[(int(m.group(1)), None if m.group(2) is None else int(m.group(2)))] = path
    return found


def _numbered(folder: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    found = {}
    for path in _image_files(folder):
        m = pattern.match(path.stem)
        if m:
            found[int(m.group(1))] = path
    return found


def _confined(pairs: list[_Pair], root: Path, confine: Path, problems: list[str]) -> list[_Pair]:
    """The pairs whose image and mask resolve inside ``confine``; each other one adds a problem."""
    base = confine.expanduser().resolve()
    kept = []
    for pair in pairs:
        outside = [p for p in (pair.image, pair.mask) if not p.resolve().is_relative_to(base)]
        if outside:
            problems.append(f"{_rel(outside[0], root)}: links to a file outside the data folder {base}; "
                            "sample left out")
        else:
            kept.append(pair)
    return kept


def _check_pairs(pairs: list[_Pair], root: Path, problems: list[str]) -> list[Sample]:
    """Samples from the pairs whose headers agree; every rejected pair adds a problem."""
    samples: list[Sample] = []
    for pair in pairs:
        try:
            samples.extend(_pair_samples(pair, root))
        except (ImageReadError, DatasetError) as exc:
            problems.append(f"{exc}; sample left out")
    return sorted(samples, key=lambda s: _natural_key(s.name))


def _pair_samples(pair: _Pair, root: Path) -> list[Sample]:
    """The samples of one pair: itself, or one per slice of a stack pair."""
    image_rel, mask_rel = _rel(pair.image, root), _rel(pair.mask, root)
    image_shape = _shape(pair.image, image_rel)
    mask_shape = _shape(pair.mask, mask_rel)
    if image_shape[1:3] != mask_shape[1:3]:
        raise DatasetError(
            f"{mask_rel}: mask is {mask_shape[2]}x{mask_shape[1]} (W x H) but "
            f"{image_rel} is {image_shape[2]}x{image_shape[1]}"
        )
    if pair.slice_index is not None:
        if pair.slice_index >= image_shape[0] or mask_shape[0] != 1:
            raise DatasetError(
                f"{mask_rel}: annotates slice {pair.slice_index} but {image_rel} has "
                f"{image_shape[0]} slices (or the mask is not 2-D)"
            )
        return [Sample(pair.name, pair.image, pair.mask, pair.slice_index)]
    if image_shape[0] != mask_shape[0]:
        raise DatasetError(f"{mask_rel}: has {mask_shape[0]} slices but {image_rel} has {image_shape[0]}")
    group = f"{image_shape[1]}x{image_shape[2]}"
    if image_shape[0] == 1:
        return [Sample(pair.name, pair.image, pair.mask, None, group)]
    width = max(2, len(str(image_shape[0] - 1)))
    return [Sample(f"{pair.name}_z{z:0{width}d}", pair.image, pair.mask, z, group) for z in range(image_shape[0])]


def _acquisition_groups(root: Path, samples: list[Sample], problems: list[str]) -> list[Sample]:
    """Samples with category and group from ``root/index.csv`` (columns ``id`` or ``name``, and
    ``category``), when the data set has one; others keep their size as their group."""
    index = root / INDEX_FILE
    if not index.is_file():
        return samples
    try:
        with index.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"{INDEX_FILE}: cannot be read ({exc}); image groups are their sizes")
        return samples
    category = {(r.get("id") or r.get("name") or ""): (r.get("category") or "").strip() for r in rows}
    out = []
    for s in samples:
        cat = category.get(s.name) or None
        out.append(dataclasses.replace(s, category=cat, group=f"{cat} {s.group}" if cat else s.group))
    return out


def _shape(path: Path, rel: str) -> tuple[int, int, int, int]:
    try:
        return read_image_shape(path)
    except ImageReadError as exc:
        raise ImageReadError(f"{rel}: {_reason(exc, path)}") from exc


def _detect_dataset_encoding(ds: Dataset) -> None:
    """Set ``mask_encoding`` and ``n_classes`` from the first masks with foreground.

    A mask that fails to decode here is removed from the samples with a problem.
    """
    encodings: list[str] = []
    max_value = 1
    reads = 0
    i = 0
    while i < len(ds.samples) and len(encodings) < _ENCODING_SAMPLES and reads < _ENCODING_READS:
        reads += 1
        loaded = _load_mask_or_drop(ds, i)
        if loaded is None:
            continue  # sample i was removed; the next one moved into its place
        i += 1
        mask, encoding = loaded
        if mask.any():
            encodings.append(encoding)
            max_value = max(max_value, int(mask.max()))
    ds.mask_encoding = _vote_encoding(encodings)
    if ds.mask_encoding == "class_indexes":
        ds.n_classes = max_value + 1
    if len(set(encodings)) > 1:
        ds.problems.append(
            f"the first masks disagree on their encoding ({', '.join(encodings)}); "
            f"all are read as {ds.mask_encoding}"
        )
    if ds.samples and not encodings:
        ds.problems.append(f"none of the first {reads} masks has any foreground")


def _verify(ds: Dataset) -> None:
    """Decode every sample; drop unreadable ones, report masks that disagree with the encoding."""
    i = 0
    while i < len(ds.samples):
        sample = ds.samples[i]
        try:
            ds.load_image(i)
        except (ImageReadError, DatasetError) as exc:
            reason = _reason(exc, sample.image_path)
            ds.problems.append(f"{_rel(sample.image_path, ds.root)}: {reason}; sample left out")
            del ds.samples[i]
            continue
        loaded = _load_mask_or_drop(ds, i)
        if loaded is None:
            continue
        mask, encoding = loaded
        if not _fits_encoding(mask, encoding, ds.mask_encoding):
            ds.problems.append(
                f"{_rel(sample.mask_path or sample.image_path, ds.root)}: looks like {encoding}, the data "
                f"set's masks are {ds.mask_encoding}; read as {ds.mask_encoding}"
            )
        i += 1


def _load_mask_or_drop(ds: Dataset, i: int) -> tuple[np.ndarray, str] | None:
    """Mask ``i`` and its encoding, or None after removing the sample with a problem."""
    sample = ds.samples[i]
    try:
        mask = ds.load_mask(i)
        return mask, detect_mask_encoding(mask)  # detection also rejects invalid label values
    except (ImageReadError, DatasetError) as exc:
        path = sample.mask_path or sample.image_path
        ds.problems.append(f"{_rel(path, ds.root)}: {_reason(exc, path)}; sample left out")
        del ds.samples[i]
        return None


# --------------------------------------------------------------------------- helpers


def _natural_key(name: str) -> list[Any]:
    """Sort key comparing digit runs by value: '2.png' < '10.png'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _reason(exc: Exception, path: Path) -> str:
    """The message of ``exc`` without the file name that messages from ``io`` start with."""
    text = str(exc)
    for prefix in (f"{path}: ", f"{path.name}: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
