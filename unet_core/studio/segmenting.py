"""What the Segment page computes, without the page: one image segmented into an :class:`Outcome`
(its result, probability map and the CLI's files, or a message), the state a run leaves in the
session (kept within a memory budget, oldest results let go first), objects re-derived under new
post-processing options without a network pass, corrections by hand (objects removed, merged or
split) with undo, the corrected images as a training set, and a typed pixel size applied to the
tables.

The page (``pages/segment.py``) draws widgets and calls these; the state it keeps between reruns is
the dict :func:`result_state` returns (``settings``, ``post``, ``keys``, ``outcomes``, ``zip``,
``partial``; ``typed``: the outcomes with a typed pixel size, cached per size; ``unedited`` and
``edits``: per image corrected by hand, its result before the edits and the edits in order).
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..edits import ObjectEdit, apply_edit, consecutive_ids
from ..errors import UserError
from ..inference import InferenceOptions
from ..instances import InstanceOptions
from ..io import ChannelChoiceError, ImageFile, encode_slice, encode_tiff
from ..predict import Result, id_image, result_files, run, with_instance_options, zip_files
from ..runtime import Predictor
from . import keep
from . import visualize as viz

log = logging.getLogger(__name__)


@dataclass
class Source:
    """An image to segment: an upload or the example. ``key`` changes when the content does."""

    key: str
    name: str
    load: Callable[[], ImageFile]
    pixels: int | None = None  # all slices, from the header; None when the header cannot be read


@dataclass
class Outcome:
    """What segmenting one image gave: the result and its files, or an error message."""

    name: str
    error: str | None = None
    # What to do about an error (the general advice for unreadable files by default).
    advice: str = ("Check that it is a PNG, JPEG or TIFF microscope image; if it opens in Fiji, save it "
                   "again there as TIFF and retry.")
    result: Result | None = None
    foreground: np.ndarray | None = None  # (Z, H, W) float16 probability of the object classes
    limits: tuple[float, float] = (0.0, 255.0)  # display contrast of the whole image or stack
    files: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0
    made: float = field(default_factory=time.monotonic)  # when it was computed: the oldest is let go first
    let_go: bool = False  # its result was dropped to stay within the session's memory budget

    @property
    def nbytes(self) -> int:
        """Memory its result holds (pixels, labels, objects, probability map, files)."""
        if self.result is None:
            return 0
        seg = self.result.segmentation
        arrays = {id(a): a for a in (self.result.image.data, seg.labels, seg.work_labels, seg.work_foreground,
                                     self.result.instances, self.foreground) if a is not None}
        return sum(a.nbytes for a in arrays.values()) + sum(len(b) for b in self.files.values())


def segment_one(source: Source, predictor: Predictor, options: InferenceOptions,
                instance_options: InstanceOptions, progress: Callable[[int, int], None]) -> Outcome:
    """Segment one image; any failure becomes a message, so the other images still run."""
    start = time.perf_counter()
    try:
        # The probabilities are kept for the page's map (and dropped before the files are made).
        result = run(source.load(), predictor, replace(options, keep_probs=True), instance_options, progress)
    except ChannelChoiceError as exc:
        return Outcome(source.name, error=str(exc).removeprefix(f"{source.name}: ")
                       + ": pick it under the uploader (a picker shows each channel), then press Segment again",
                       advice="")
    except UserError as exc:  # ImageReadError included: unreadable, empty, constant images
        # Engine messages start with the file name; the page prints the name itself.
        return Outcome(source.name, error=str(exc).removeprefix(f"{source.name}: "))
    except MemoryError:
        return Outcome(source.name, error="not enough memory for this image: choose a smaller tile size, "
                       "or segment it with `python -m unet_core predict`")
    except Exception as exc:  # a bug must not take the other images down; its traceback goes to the log
        log.exception("segmenting %s failed", source.name)
        return Outcome(source.name, error=f"unexpected error ({type(exc).__name__}: {exc}); please report it")
    seg = result.segmentation
    objects = seg.probs[:, predictor.meta.foreground_classes]
    foreground = objects.sum(axis=1, dtype=np.float32).astype(np.float16)
    # The probabilities have served the map; without them the downloads are the CLI's default set.
    result = replace(result, segmentation=replace(seg, probs=None))
    return Outcome(
        source.name,
        result=result,
        foreground=foreground,
        limits=viz.stretch_limits(result.image.data),
        files=result_files(result),
        seconds=time.perf_counter() - start,
    )


def results_zip(outcomes: Iterable[Outcome]) -> bytes | None:
    """One zip of the files of every outcome that has some (the "All results" download, made when
    it is pressed: edits and new clean-up options change the files, often many times before a
    download); None for fewer than two images (each has its own buttons)."""
    file_sets = [o.files for o in outcomes if o.files]
    return zip_files(file_sets) if len(file_sets) > 1 else None


#: The folder inside the training-set zip (:func:`training_set_zip`).
TRAINING_SET_FOLDER = "unet-studio-training"


def training_set_zip(outcomes: Iterable[Outcome]) -> bytes:
    """The segmented images and their objects (as corrected by hand) as a data set the Train page
    takes as an upload: ``unet-studio-training/images/`` + ``masks/`` (the ``generic`` layout;
    masks are instance ids, 1..n per image), so a model can be fine-tuned on a user's own,
    corrected images. A stack gives one pair per slice (``<stem>_z001``); images keep their dtype
    and pixel size (PNG for 8-bit gray and RGB, TIFF otherwise)."""
    pairs: dict[str, tuple[tuple[str, bytes], bytes]] = {}
    for outcome in outcomes:
        result = outcome.result
        if result is None:
            continue
        stem = Path(outcome.name).stem
        z = result.instances.shape[0]
        for s in range(z):
            name = stem if z == 1 else f"{stem}_z{s + 1:03d}"
            n = 2
            while name in pairs:  # two uploads with one stem
                name, n = f"{stem}_{n}" if z == 1 else f"{stem}_{n}_z{s + 1:03d}", n + 1
            mask = id_image(consecutive_ids(result.instances[s : s + 1])[0])
            pairs[name] = (encode_slice(result.image.data[s], result.image.resolution),
                           encode_tiff(mask, result.image.resolution))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, ((suffix, image), mask) in pairs.items():
            archive.writestr(f"{TRAINING_SET_FOLDER}/images/{name}{suffix}", image)
            archive.writestr(f"{TRAINING_SET_FOLDER}/masks/{name}.tif", mask)
    return buf.getvalue()


def within_budget(outcomes: dict[str, Outcome]) -> dict[str, Outcome]:
    """The outcomes, with the oldest results let go when together they pass the session's memory
    budget (:func:`unet_core.studio.keep.results_budget`); the newest is always kept."""
    by_age = sorted((o.made, key) for key, o in outcomes.items() if o.result is not None)
    gone = set(keep.to_let_go([(key, outcomes[key].nbytes) for _, key in by_age], keep.results_budget()))
    return {key: Outcome(o.name, error="its result was let go to stay within this session's memory (the newest "
                         "images are kept)", advice="Press **Segment** to compute it again.", let_go=True)
            if key in gone else o for key, o in outcomes.items()}


def result_state(settings: tuple, post: str, keys: tuple[str, ...], outcomes: dict[str, Outcome],
                 partial: bool = False) -> dict:
    """What the page keeps of a run: its settings, the images asked for and the outcomes so far
    (``partial``: a run that was stopped, or is still under way), within the memory budget."""
    return {"settings": settings, "post": post, "keys": keys, "outcomes": within_budget(outcomes),
            "partial": partial}


def repost(state: dict, predictor: Predictor, instance_options: InstanceOptions, post: str) -> dict:
    """The results of ``state`` with their objects derived again under new post-processing
    options: the network's class labels are kept, so this takes no network pass. Edits by hand
    (:func:`edit_outcome`) referred to the old objects: they are dropped, from the unedited results."""
    meta = predictor.meta
    outcomes = {}
    for key, outcome in {**state["outcomes"], **state.get("unedited", {})}.items():
        if outcome.result is None:
            outcomes[key] = outcome
            continue
        result = with_instance_options(outcome.result, meta, instance_options)
        outcomes[key] = replace(outcome, result=result, files=result_files(result))
    return {**_without_derived(state), "post": post, "outcomes": outcomes}


def _without_derived(state: dict) -> dict:
    """``state`` less what was derived from its outcomes (the typed pixel size's copies) and the
    edits by hand, for a state whose outcomes change."""
    return {k: v for k, v in state.items() if k not in ("typed", "unedited", "edits")}


def edit_outcome(state: dict, key: str, edit: ObjectEdit) -> dict:
    """``state`` with the result of outcome ``key`` corrected by hand (:func:`~unet_core.edits.apply_edit`),
    its files and the zip made anew. The unedited outcome is kept (``unedited``) and the edits
    listed (``edits``), so that :func:`undo_edit` can go back.

    Raises:
        EditError: the edit does not fit the result (unknown ids, a merge of one object).
    """
    outcome = state["outcomes"][key]
    edited = apply_edit(outcome.result, edit)
    unedited = {key: outcome, **state.get("unedited", {})}
    edits = {**state.get("edits", {}), key: [*state.get("edits", {}).get(key, []), edit]}
    return _with_outcome(state, key, replace(outcome, result=edited, files=result_files(edited)), unedited, edits)


def lasso_outline(selection: Mapping[str, Any]) -> tuple[tuple[float, float], ...]:
    """The last lasso drawn in the viewer (a Streamlit plotly selection: ``lasso`` is a list of
    ``{"x": [...], "y": [...]}`` in the figure's coordinates, the image's pixels), as the (x, y)
    vertices an ``add`` :class:`~unet_core.edits.ObjectEdit` takes; ``()`` when none was drawn."""
    lassos = selection.get("lasso") or []
    if not lassos:
        return ()
    last = lassos[-1]
    return tuple((float(x), float(y)) for x, y in zip(last.get("x", []), last.get("y", [])))


def undo_edit(state: dict, key: str) -> dict:
    """``state`` with the last edit of outcome ``key`` undone: its other edits applied again to
    the unedited result."""
    edits = state.get("edits", {}).get(key, [])
    if not edits:
        return state
    original = state["unedited"][key]
    result = original.result
    for edit in edits[:-1]:
        result = apply_edit(result, edit)
    outcome = replace(original, result=result, files=result_files(result)) if edits[:-1] else original
    kept = {k: v for k, v in state["unedited"].items() if k != key or edits[:-1]}
    return _with_outcome(state, key, outcome, kept, {**state["edits"], key: edits[:-1]})


def _with_outcome(state: dict, key: str, outcome: Outcome, unedited: dict, edits: dict) -> dict:
    outcomes = {**state["outcomes"], key: outcome}
    return {**_without_derived(state), "outcomes": outcomes,
            "unedited": unedited, "edits": edits}


def with_typed_pixel_size(outcome: Outcome, pixel_size: float) -> Outcome:
    """``outcome`` with µm columns in its table and CSV for a typed ``pixel_size`` (µm), when its
    file does not say; unchanged otherwise (the other files are the CLI's)."""
    result = outcome.result
    if result is None or pixel_size <= 0 or result.image.pixel_size_um is not None:
        return outcome
    result = result.with_pixel_size(pixel_size)
    files = {name: (result.csv_text().encode() if name.endswith("_objects.csv") else data)
             for name, data in outcome.files.items()}
    return replace(outcome, result=result, files=files)


def typed_outcomes(state: dict, pixel_size: float) -> dict[str, Outcome]:
    """The outcomes (by image key) with a typed pixel size applied, computed once per size."""
    outcomes = state["outcomes"]
    if pixel_size <= 0:
        return outcomes
    cached = state.get("typed")
    if cached is None or cached[0] != pixel_size:
        state["typed"] = cached = (pixel_size, {key: with_typed_pixel_size(o, pixel_size) for key, o in outcomes.items()})
    return cached[1]
