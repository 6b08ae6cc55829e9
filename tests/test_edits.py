"""A user's corrections of a result: removed, merged, split and drawn objects, and everything that follows them."""

from __future__ import annotations

import numpy as np
import pytest

from unet_core.edits import EditError, ObjectEdit, apply_edit, parse_ids
from unet_core.inference import Segmentation
from unet_core.io import ImageFile, Stretch
from unet_core.predict import Result, measured


def _result(planes: list[np.ndarray]) -> Result:
    """A 2-class result of per-slice ids (each 1..n): labels 1 on objects, the image = 10 x id."""
    ids = np.stack(planes).astype(np.int32)
    labels = (ids > 0).astype(np.uint8)
    seg = Segmentation(labels=labels, probs=None, stretch=Stretch(0.0, 1.0),
                       tile=(64, 64), batch=1)
    image = ImageFile("cells.png", (ids * 10).astype(np.uint16)[..., None])
    return measured(image, seg, ids.copy(), 2, None)


def _three_cells() -> Result:
    plane = np.zeros((30, 40), np.int32)
    plane[2:8, 2:8] = 1
    plane[2:8, 9:15] = 2
    plane[20:28, 20:30] = 3
    return _result([plane])


def test_removing_objects_renumbers_the_rest_in_order_and_clears_their_labels() -> None:
    before = _three_cells()
    after = apply_edit(before, ObjectEdit("remove", (2,)))
    assert after.n_objects == 2
    assert [row["id"] for row in after.objects[0]] == [1, 2]
    assert np.array_equal(after.instances[0] == 2, before.instances[0] == 3)  # object 3 is the new 2
    assert not after.instances[0][before.instances[0] == 2].any()
    assert np.array_equal(after.segmentation.labels, (after.instances > 0).astype(np.uint8))
    assert after.objects[0][1]["area"] == before.objects[0][2]["area"]
    assert before.n_objects == 3 and before.segmentation.labels[0, 4, 10] == 1  # the input is untouched
    assert after.csv_text().count("\n") == 3  # the header and two objects


def test_merging_objects_keeps_their_pixels_as_one_object_with_the_smallest_id() -> None:
    before = _three_cells()
    after = apply_edit(before, ObjectEdit("merge", (3, 1)))
    assert after.n_objects == 2
    merged = after.objects[0][0]
    assert merged["id"] == 1 and merged["area"] == before.objects[0][0]["area"] + before.objects[0][2]["area"]
    assert np.array_equal(after.instances[0] == 1, (before.instances[0] == 1) | (before.instances[0] == 3))
    assert np.array_equal(after.segmentation.labels, before.segmentation.labels)  # pixels unchanged
    assert after.objects[0][1]["id"] == 2 and np.array_equal(after.instances[0] == 2, before.instances[0] == 2)


def test_splitting_cuts_a_pair_at_its_waist_and_an_oval_across_its_long_axis() -> None:
    plane = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    pair = ((yy - 20) ** 2 + (xx - 16) ** 2 <= 81) | ((yy - 20) ** 2 + (xx - 31) ** 2 <= 81)
    plane[pair] = 1
    plane[(yy - 8) ** 2 + (xx - 52) ** 2 <= 25] = 2
    before = _result([plane])
    after = apply_edit(before, ObjectEdit("split", (1,)))
    assert after.n_objects == 3
    left, right = after.instances[0] == 1, after.instances[0] == 3  # the second piece comes last
    assert np.array_equal(left | right, pair) and left[20, 10] and right[20, 37]
    assert abs(int(left.sum()) - int(right.sum())) < 0.1 * pair.sum()
    assert np.array_equal(after.instances[0] == 2, plane == 2)
    assert np.array_equal(after.segmentation.labels, before.segmentation.labels)
    # No waist (two nuclei fused into an oval): two equal halves across the long axis.
    oval = np.zeros((30, 50), np.int32)
    oval[((yy[:30, :50] - 15) / 8.0) ** 2 + ((xx[:30, :50] - 25) / 20.0) ** 2 <= 1] = 1
    halves = apply_edit(_result([oval]), ObjectEdit("split", (1,))).instances[0]
    assert set(np.unique(halves)) == {0, 1, 2}
    assert abs(int((halves == 1).sum()) - int((halves == 2).sum())) <= 30  # a column of ties at most
    assert (halves == 1)[:, :24].any() and not (halves == 1)[:, 27:].any()  # cut across x, the long axis
    speck = np.zeros((5, 5), np.int32)
    speck[2, 2] = 1
    with pytest.raises(EditError, match="one pixel"):
        apply_edit(_result([speck]), ObjectEdit("split", (1,)))


def test_stack_ids_stay_numbered_on_across_slices() -> None:
    a = np.zeros((20, 20), np.int32)
    a[1:4, 1:4], a[10:14, 10:14] = 1, 2
    b = np.zeros((20, 20), np.int32)
    b[1:5, 1:5], b[8:12, 8:12], b[15:18, 15:18] = 1, 2, 3
    before = _result([a, b])
    assert [[r["id"] for r in rows] for rows in before.objects] == [[1, 2], [3, 4, 5]]
    after = apply_edit(before, ObjectEdit("remove", (1, 4)))
    assert [[r["id"] for r in rows] for rows in after.objects] == [[1], [2, 3]]
    assert set(np.unique(after.instances[1])) == {0, 2, 3}
    merged = apply_edit(before, ObjectEdit("merge", (3, 5)))
    assert [[r["id"] for r in rows] for rows in merged.objects] == [[1, 2], [3, 4]]
    with pytest.raises(EditError, match="different slices"):
        apply_edit(before, ObjectEdit("merge", (2, 3)))


def test_a_drawn_object_takes_the_background_inside_its_outline_and_comes_last_in_its_slice() -> None:
    before = _three_cells()
    # A square from (x 10, y 18) to (x 24, y 26): overlaps object 3 (rows 20-27, columns 20-29).
    square = ((10.0, 18.0), (24.0, 18.0), (24.0, 26.0), (10.0, 26.0))
    after = apply_edit(before, ObjectEdit("add", outline=square))
    assert after.n_objects == 4 and [r["id"] for r in after.objects[0]] == [1, 2, 3, 4]
    drawn = after.instances[0] == 4
    expected = np.zeros_like(drawn)
    expected[18:27, 10:25] = True  # pixel centres inside the square, edges included
    expected &= before.instances[0] == 0  # object 3 keeps its pixels
    assert np.array_equal(drawn, expected) and after.objects[0][3]["area"] == expected.sum()
    assert np.array_equal(after.instances[0] == 3, before.instances[0] == 3)
    assert np.array_equal(after.segmentation.labels, (after.instances > 0).astype(np.uint8))
    assert before.n_objects == 3  # the input is untouched
    assert apply_edit(after, ObjectEdit("remove", (4,))).csv_text() == before.csv_text()


def test_a_drawn_object_in_a_stack_is_numbered_after_its_slice() -> None:
    a = np.zeros((20, 20), np.int32)
    a[1:4, 1:4] = 1
    b = np.zeros((20, 20), np.int32)
    b[1:5, 1:5] = 1
    before = _result([a, b])
    after = apply_edit(before, ObjectEdit("add", outline=((10, 10), (15, 10), (15, 15)), plane=0))
    assert [[r["id"] for r in rows] for rows in after.objects] == [[1, 2], [3]]
    assert after.instances[0, 12, 14] == 2 and after.instances[1, 2, 2] == 3


@pytest.mark.parametrize(("edit", "message"), [
    (ObjectEdit("add", outline=((1.0, 1.0), (5.0, 5.0))), "Lasso select"),
    (ObjectEdit("add", outline=((2.0, 2.0), (7.0, 2.0), (7.0, 7.0)), plane=1), "no slice 2"),
    (ObjectEdit("add", outline=((3.0, 3.0), (6.0, 3.0), (6.0, 6.0))), "no background pixel"),  # inside object 1
    (ObjectEdit("add", outline=((50.0, 50.0), (60.0, 50.0), (60.0, 60.0))), "no background pixel"),  # outside
])
def test_drawn_objects_that_cannot_be_added_say_why(edit: ObjectEdit, message: str) -> None:
    with pytest.raises(EditError, match=message):
        apply_edit(_three_cells(), edit)


@pytest.mark.parametrize(("edit", "message"), [
    (ObjectEdit("remove", ()), "choose the objects"),
    (ObjectEdit("remove", (4,)), r"no object 4 .*numbered 1 to 3"),
    (ObjectEdit("merge", (2, 2)), "two or more"),
    (ObjectEdit("grow", (1,)), "unknown edit"),  # type: ignore[arg-type]
])
def test_edits_that_cannot_apply_say_why(edit: ObjectEdit, message: str) -> None:
    with pytest.raises(EditError, match=message):
        apply_edit(_three_cells(), edit)


def test_edits_describe_themselves() -> None:
    assert ObjectEdit("remove", (7, 3)).describe() == "removed objects 3 and 7"
    assert ObjectEdit("merge", (5, 2, 9)).describe() == "merged objects 2, 5 and 9"
    assert ObjectEdit("remove", (4,)).describe() == "removed object 4"
    assert ObjectEdit("split", (6,)).describe() == "split object 6"
    assert ObjectEdit("add", outline=((0, 0), (4, 0), (4, 4))).describe() == "drew a new object"


def test_typed_object_numbers() -> None:
    assert parse_ids("") == ()
    assert parse_ids(" 12, 3 3,20-22") == (3, 12, 20, 21, 22)
    for bad in ("3a", "-4", "2-", "one"):
        with pytest.raises(EditError, match="is not an object number"):
            parse_ids(bad)
