"""A user's corrections of a result: objects removed, objects merged.

No model is right everywhere: it draws a speck of debris as a nucleus, or one nucleus as two. A
biologist who sees it should fix it where they see it (the Segment page's viewer), and the counts,
the table and every file should follow. An :class:`ObjectEdit` names objects by the ids of the
result it is applied to and gives a new :class:`~unet_core.predict.Result`: the edited objects'
pixels, ids renumbered 1..n in their old order (on across a stack, as ``predict`` numbers them:
removing object 3 makes object 4 the new 3), every object measured again. A removed object's pixels become background in the class labels too, so the
labels file agrees with the objects; a merged object keeps its pixels, and may come in pieces (the
separation line the network drew stays background).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from .errors import UserError
from .predict import Result, measured

#: What an edit does to its objects.
EDIT_ACTIONS = ("remove", "merge")


class EditError(UserError):
    """An edit that cannot be applied: unknown ids, or a merge that is not a merge."""


@dataclass(frozen=True)
class ObjectEdit:
    """One correction: ``remove`` the objects ``ids``, or ``merge`` them into one (two or more,
    in one slice of a stack; the merged object takes the smallest of their ids)."""

    action: Literal["remove", "merge"]
    ids: tuple[int, ...]

    def describe(self) -> str:
        """The edit in a user's words, e.g. "removed objects 3 and 7"."""
        numbers = [str(i) for i in sorted(self.ids)]
        listed = numbers[0] if len(numbers) == 1 else f"{', '.join(numbers[:-1])} and {numbers[-1]}"
        verb = "removed" if self.action == "remove" else "merged"
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
    slice_of = {int(row["id"]): s for s, rows in enumerate(result.objects) for row in rows}
    _check(edit, slice_of, result.n_objects)
    ids = np.unique(np.asarray(edit.ids, dtype=np.int64))
    lookup = np.arange(result.n_objects + 1, dtype=np.int32)
    lookup[ids] = 0 if edit.action == "remove" else ids[0]
    instances = lookup[result.instances]
    seg = result.segmentation
    if edit.action == "remove":
        labels = seg.labels.copy()
        labels[np.isin(result.instances, ids)] = 0
        seg = replace(seg, labels=labels)
    return measured(result.image, seg, _per_slice_consecutive(instances), result.n_classes, result.border_class)


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


def _per_slice_consecutive(instances: np.ndarray) -> np.ndarray:
    """Each slice's ids renumbered 1..n in the order of the old ids (what
    :func:`~unet_core.predict.measured` numbers on across a stack): an object that was not edited
    keeps its place among the others."""
    out = np.zeros(instances.shape, dtype=np.int32)
    for s, plane in enumerate(instances):
        present = np.flatnonzero(np.bincount(plane.ravel())[1:]) + 1
        lookup = np.zeros(int(present[-1]) + 1 if present.size else 1, dtype=np.int32)
        lookup[present] = np.arange(1, present.size + 1, dtype=np.int32)
        out[s] = lookup[plane]
    return out
