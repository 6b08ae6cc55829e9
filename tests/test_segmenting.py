"""The Segment page's engine side (``unet_core.studio.segmenting``), without a page: one image
becomes an outcome with the CLI's files, a failing one a message; the session state lets the oldest
results go past the memory budget; new post-processing options re-derive objects with no network pass."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from unet_core.datasets import open_dataset
from unet_core.edits import EditError, ObjectEdit, apply_edit
from unet_core.inference import InferenceOptions
from unet_core.instances import InstanceOptions
from unet_core.io import ImageFile
from unet_core.predict import result_files, run
from unet_core.runtime import load_predictor
from unet_core.studio.keep import RESULTS_BUDGET_ENV
from unet_core.studio.segmenting import (
    TRAINING_SET_FOLDER,
    Source,
    edit_outcome,
    lasso_outline,
    repost,
    result_state,
    results_zip,
    segment_one,
    training_set_zip,
    typed_outcomes,
    undo_edit,
)
from unet_core.studio.uploads import extract_upload

OPTIONS = InferenceOptions(tile=100, tta=False)


def _source(key: str, seed: int) -> Source:
    pixels = np.random.default_rng(seed).integers(0, 255, (1, 160, 180, 1), dtype=np.uint8)
    return Source(key, f"{key}.png", lambda: ImageFile(f"{key}.png", pixels), pixels.size)



def test_outcomes_state_budget_and_repost(tiny_model, monkeypatch) -> None:
    predictor = load_predictor(tiny_model[1], "cpu")
    sources = [_source("a", 1), _source("b", 2)]
    outcomes = {s.key: segment_one(s, predictor, OPTIONS, InstanceOptions(), lambda done, total: None)
                for s in sources}
    first = outcomes["a"]
    assert first.error is None and first.result.n_objects > 0
    assert first.files == result_files(run(sources[0].load(), predictor, OPTIONS, InstanceOptions()))
    assert first.foreground.shape == (1, 160, 180) and first.foreground.dtype == np.float16

    # Past the budget the oldest result is let go with a message; the newest is kept.
    monkeypatch.setenv(RESULTS_BUDGET_ENV, str(1.5 * first.nbytes / (1 << 30)))
    state = result_state(("settings",), "post", ("a", "b"), outcomes)
    assert state["outcomes"]["a"].let_go and "let go" in state["outcomes"]["a"].error
    assert not state["outcomes"]["b"].let_go and results_zip(state["outcomes"].values()) is None  # one left: no zip

    # New post-processing: the objects of a fresh run with those options, without the network.
    monkeypatch.delenv(RESULTS_BUDGET_ENV)
    state = result_state(("settings",), "post", ("a", "b"), outcomes)
    monkeypatch.setattr(type(predictor), "predict_batch", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    stricter = InstanceOptions(min_size=40, drop_border=True)
    again = repost(state, predictor, stricter, "stricter")
    monkeypatch.undo()
    fresh = run(sources[1].load(), predictor, OPTIONS, stricter)
    assert again["post"] == "stricter" and again["outcomes"]["b"].result.n_objects == fresh.n_objects
    assert again["outcomes"]["b"].files == result_files(fresh)
    with zipfile.ZipFile(io.BytesIO(results_zip(again["outcomes"].values()))) as archive:  # two results
        assert archive.read("b_objects.csv") == again["outcomes"]["b"].files["b_objects.csv"]

    # A typed pixel size is applied to the new objects, not to copies of the old ones.
    typed = typed_outcomes(state, 0.5)
    assert typed["b"].result.n_objects == state["outcomes"]["b"].result.n_objects != fresh.n_objects
    typed = typed_outcomes(repost(state, predictor, stricter, "stricter"), 0.5)
    assert typed["b"].result.n_objects == fresh.n_objects
    assert "area_um2" in typed["b"].files["b_objects.csv"].decode().splitlines()[0]


def test_edits_by_hand_apply_undo_and_give_way_to_new_clean_up(tiny_model) -> None:
    predictor = load_predictor(tiny_model[1], "cpu")
    source = _source("a", 1)
    outcome = segment_one(source, predictor, OPTIONS, InstanceOptions(), lambda done, total: None)
    state = result_state(("settings",), "post", ("a",), {"a": outcome})
    first = outcome.result
    removed = edit_outcome(state, "a", ObjectEdit("remove", (1,)))
    merged = edit_outcome(removed, "a", ObjectEdit("merge", (1, 2)))
    expected = apply_edit(apply_edit(first, ObjectEdit("remove", (1,))), ObjectEdit("merge", (1, 2)))
    assert merged["outcomes"]["a"].result.n_objects == first.n_objects - 2
    assert merged["outcomes"]["a"].files == result_files(expected)
    assert merged["unedited"]["a"] is outcome and [e.action for e in merged["edits"]["a"]] == ["remove", "merge"]
    assert state["outcomes"]["a"] is outcome  # the state edited is not changed
    back = undo_edit(merged, "a")
    assert back["outcomes"]["a"].files == removed["outcomes"]["a"].files
    assert undo_edit(back, "a")["outcomes"]["a"] is outcome
    assert undo_edit(undo_edit(back, "a"), "a")["outcomes"]["a"] is outcome  # nothing left to undo
    with pytest.raises(EditError):
        edit_outcome(state, "a", ObjectEdit("merge", (1,)))
    # New clean-up options start from the unedited objects and drop the edits.
    again = repost(merged, predictor, InstanceOptions(min_size=40), "stricter")
    assert again["outcomes"]["a"].result.n_objects == run(source.load(), predictor, OPTIONS,
                                                          InstanceOptions(min_size=40)).n_objects
    assert "edits" not in again and "unedited" not in again


def test_the_viewers_last_lasso_is_the_outline_of_a_drawn_object() -> None:
    assert lasso_outline({"points": [], "box": [], "lasso": []}) == ()
    assert lasso_outline({"points": []}) == ()
    selection = {"lasso": [{"xref": "x", "yref": "y", "x": [0, 9], "y": [0, 9]},
                           {"xref": "x", "yref": "y", "x": [2, 12.5, 12], "y": [3, 3, 10.25]}]}
    assert lasso_outline(selection) == ((2.0, 3.0), (12.5, 3.0), (12.0, 10.25))


def test_a_file_that_cannot_be_read_becomes_a_message(tiny_model) -> None:
    from unet_core.io import read_image_bytes

    predictor = load_predictor(tiny_model[1], "cpu")
    broken = Source("x", "broken.png", lambda: read_image_bytes(b"\x89PNG\r\n\x1a\n broken", "broken.png"))
    outcome = segment_one(broken, predictor, OPTIONS, InstanceOptions(), lambda done, total: None)
    assert outcome.result is None and outcome.error and not outcome.error.startswith("broken.png")
    assert "Fiji" in outcome.advice


def test_corrected_results_make_a_training_set_the_data_set_reader_opens(tiny_model, tmp_path) -> None:
    predictor = load_predictor(tiny_model[1], "cpu")
    gray = _source("cells", 1)
    stack_pixels = np.random.default_rng(5).integers(0, 60000, (2, 70, 90, 1), dtype=np.uint16)
    stack = Source("stack", "stack.tif", lambda: ImageFile("stack.tif", stack_pixels), stack_pixels.size)
    outcomes = {src.key: segment_one(src, predictor, OPTIONS, InstanceOptions(), lambda done, total: None)
                for src in (gray, stack)}
    state = edit_outcome(result_state(("settings",), "post", ("cells", "stack"), outcomes), "cells",
                         ObjectEdit("remove", (1, 2, 3)))
    zipped = training_set_zip(state["outcomes"].values())
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        assert all(name.startswith(f"{TRAINING_SET_FOLDER}/") for name in archive.namelist())
    # What the Train page does with an uploaded zip.
    data = open_dataset(extract_upload(zipped, "session1", root=tmp_path / "uploads"))
    assert data.layout == "generic" and data.mask_encoding == "instance_ids" and not data.problems
    assert [s.name for s in data.samples] == ["cells", "stack_z001", "stack_z002"]
    edited = state["outcomes"]["cells"].result
    assert np.array_equal(data.load_instances(0), edited.instances[0])  # the corrections, ids 1..n
    assert np.array_equal(np.squeeze(data.load_image(0)), edited.image.data[0, ..., 0])
    second = outcomes["stack"].result
    first_id = len(second.objects[0])
    renumbered = np.where(second.instances[1] > 0, second.instances[1] - first_id, 0)
    assert renumbered.max() > 0 and np.array_equal(data.load_instances(2), renumbered)  # each slice from 1
    assert data.load_image(2).dtype == np.uint16
