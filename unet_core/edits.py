"""A user's corrections of a result: objects removed, merged, split or drawn.

No model is right everywhere: it draws a speck of debris as a nucleus, one nucleus as two, or two
touching nuclei as one. A
biologist who sees it should fix it where they see it (the Segment page's viewer), and the counts,
the table and every file should follow. An :class:`ObjectEdit` names objects by the ids of the
result it is applied to and gives a new :class:`~unet_core.predict.Result`: the edited objects'
pixels, ids renumbered 1..n in their old order (on across a stack, as ``predict`` numbers them:
removing object 3 makes object 4 the new 3), every object measured again. A removed object's pixels become background in the class labels too, so the
labels file agrees with the objects; a merged object keeps its pixels, and may come in pieces (the
separation line the network drew stays background); a split object is cut where its shape has a
waist, by the rule of the automatic split (:func:`~unet_core.instances.merged_pieces`) for an
object of two nuclei, and where it has none (two nuclei fused into one oval) in two equal halves
across its long axis: its first piece keeps its place, the others come after every object of its
slice. A nucleus the network missed is drawn round (a polygon in the image's pixel coordinates,
a lasso in the viewer): the background pixels inside it become a new object, after every object
of its slice, of the objects' class (1) in the class labels; objects it overlaps keep their pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from skimage.draw import polygon as polygon_pixels

from .errors import UserError
from .instances import close_gaps, merged_pieces, number_pieces
from .predict import Result, measured

#: What an edit does to its objects.
EDIT_ACTIONS = ("remove", "merge", "split", "add")
#: The class an added object's pixels get in the class labels: the objects' class of every model
#: here (0 is the background; an outline class, where a model has one, comes after it).
OBJECT_CLASS = 1


class EditError(UserError):
    """An edit that cannot be applied: unknown ids, or a merge that is not a merge."""


@dataclass(frozen=True)
class ObjectEdit:
    """One correction: ``remove`` the objects ``ids``, ``merge`` them into one (two or more, in
    one slice of a stack; the merged object takes the smallest of their ids), ``split`` each
    of them (at its waist, else across its long axis), or ``add`` the object drawn round by
    ``outline`` ((x, y) vertices in input pixels, x the column) on slice ``plane`` (from 0)."""

    action: Literal["remove", "merge", "split", "add"]
    ids: tuple[int, ...] = ()
    outline: tuple[tuple[float, float], ...] = ()
    plane: int = 0

    def describe(self) -> str:
        """The edit in a user's words, e.g. "removed objects 3 and 7"."""
        if self.action == "add":
            return "drew a new object"
        numbers = [str(i) for i in sorted(self.ids)]
        listed = numbers[0] if len(numbers) == 1 else f"{', '.join(numbers[:-1])} and {numbers[-1]}"
        verb = {"remove": "removed", "merge": "merged", "split": "split"}[self.action]
        return f"{verb} object{'s' if len(numbers) > 1 else ''} {listed}"


def parse_ids(text: str) -> tuple[int, ...]:
    """Object numbers typed by a user: separated by commas or spaces, ranges as ``10-12``; sorted,
    each once. ``""`` gives ``()``.

    Raises:
        EditError: a part that is not a number or a range of them.
    """
    ids: set[int] = set()
    for part in text.replace(",", " ").split():
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise EditError(f"{part!r} is not an object number (type numbers such as 3, 12 or a range 20-25)")
        ids.update(range(int(low), int(high if dash else low) + 1))
    return tuple(sorted(ids))


def apply_edit(result: Result, edit: ObjectEdit) -> Result:
    """``result`` with ``edit`` applied (module docstring); ``result`` itself is not changed.

    Raises:
        EditError: an action other than :data:`EDIT_ACTIONS`, no ids, an id that is not an object
            of ``result``, or a merge of fewer than two objects or of objects in different slices.
    """
    if edit.action == "add":
        return _add(result, edit)
    slice_of = {int(row["id"]): s for s, rows in enumerate(result.objects) for row in rows}
    _check(edit, slice_of, result.n_objects)
    ids = np.unique(np.asarray(edit.ids, dtype=np.int64))
    if edit.action == "split":
        instances = _split(result.instances, [(int(i), slice_of[int(i)]) for i in ids], result.n_objects)
    else:
        lookup = np.arange(result.n_objects + 1, dtype=np.int32)
        lookup[ids] = 0 if edit.action == "remove" else ids[0]
        instances = lookup[result.instances]
    seg = result.segmentation
    if edit.action == "remove":
        labels = seg.labels.copy()
        labels[np.isin(result.instances, ids)] = 0
        seg = replace(seg, labels=labels)
    return measured(result.image, seg, consecutive_ids(instances), result.n_classes, result.border_class)


def _add(result: Result, edit: ObjectEdit) -> Result:
    """``result`` with the background pixels inside ``edit.outline`` made a new object.

    Raises:
        EditError: fewer than 3 vertices, a slice the result does not have, or an outline that
            holds no background pixel (outside the image, or over objects only).
    """
    if len(edit.outline) < 3:
        raise EditError("draw round the missed object with Lasso select in the viewer's toolbar first")
    depth, height, width = result.instances.shape
    if not 0 <= edit.plane < depth:
        raise EditError(f"no slice {edit.plane + 1} in this result (it has {depth})")
    xs, ys = np.asarray(edit.outline, dtype=np.float64).T
    rows, cols = polygon_pixels(ys, xs, shape=(height, width))
    keep = result.instances[edit.plane, rows, cols] == 0
    if not keep.any():
        raise EditError("the outline holds no background pixel (it lies over other objects or outside the "
                        "image): draw round the part that has no object yet")
    rows, cols = rows[keep], cols[keep]
    instances = result.instances.copy()
    instances[edit.plane, rows, cols] = result.n_objects + 1  # after every object: last of its slice
    labels = result.segmentation.labels.copy()
    labels[edit.plane, rows, cols] = OBJECT_CLASS
    seg = replace(result.segmentation, labels=labels)
    return measured(result.image, seg, consecutive_ids(instances), result.n_classes, result.border_class)


def _split(instances: np.ndarray, objects: list[tuple[int, int]], n_objects: int) -> np.ndarray:
    """A copy of ``instances`` with each (id, slice) of ``objects`` cut into its pieces
    (:func:`split_pieces`), the pieces after the first numbered from ``n_objects + 1`` on.

    Raises:
        EditError: a one-pixel object.
    """
    out = instances.copy()
    next_id = n_objects + 1
    for label, s in objects:
        mask = out[s] == label
        if np.count_nonzero(mask) < 2:
            raise EditError(f"object {label} is one pixel: remove it instead")
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        pieces = split_pieces(mask[box])
        number_pieces(out[s][box], pieces, next_id)
        next_id += int(pieces.max()) - 1
    return out


def split_pieces(obj: np.ndarray) -> np.ndarray:
    """The pieces (1..k, 0 outside) of an object (a mask of two or more pixels) that a user says is
    several nuclei: cut at its waist by :func:`~unet_core.instances.merged_pieces`, as an object of
    two nuclei of half its area each; with no waist, in two halves across its long axis (the first
    principal axis of its pixels), at the median, the left (or upper) half first."""
    pieces = merged_pieces(obj, np.count_nonzero(obj) / 2)
    if pieces.max() >= 2:
        return pieces
    rows, cols = np.nonzero(obj)
    coords = np.stack([rows, cols], axis=1).astype(np.float64)
    coords -= coords.mean(axis=0)
    axis = np.linalg.svd(coords, full_matrices=False)[2][0]
    if axis[1] < 0 or (axis[1] == 0 and axis[0] < 0):  # pointing right (else down): the left half is piece 1
        axis = -axis
    along = coords @ axis
    pieces = np.zeros(obj.shape, dtype=np.int32)
    pieces[rows, cols] = np.where(along <= np.median(along), 1, 2)
    return pieces


def _check(edit: ObjectEdit, slice_of: dict[int, int], n_objects: int) -> None:
    if edit.action not in EDIT_ACTIONS:
        raise EditError(f"unknown edit {edit.action!r}: one of {', '.join(EDIT_ACTIONS)}")
    if not edit.ids:
        raise EditError("choose the objects to edit first")
    unknown = sorted({i for i in edit.ids if i not in slice_of})
    if unknown:
        raise EditError(f"no object {', '.join(map(str, unknown[:5]))} in this result "
                        f"(its objects are numbered 1 to {n_objects})")
    if edit.action == "merge":
        if len(set(edit.ids)) < 2:
            raise EditError("choose two or more objects to merge")
        if len({slice_of[i] for i in edit.ids}) > 1:
            raise EditError("objects in different slices cannot be merged: choose objects of one slice")


def consecutive_ids(instances: np.ndarray) -> np.ndarray:
    """Each slice's ids renumbered 1..n in the order of the old ids (what
    :func:`~unet_core.predict.measured` numbers on across a stack; a training mask's ids): an
    object that was not edited keeps its place among the others."""
    out = instances.astype(np.int32, copy=True)
    for plane in out:
        close_gaps(plane)
    return out
