"""The app in Streamlit's AppTest: starts with and without a model; Segment handles PNG, 16-bit TIFF
stacks, unreadable files and broken models without a traceback; registry and drawing helpers."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from apptest_helpers import APP, TILE, TIMEOUT, segment_page, texts, upload
from PIL import Image
from streamlit.testing.v1 import AppTest

from unet_core.edits import ObjectEdit, apply_edit
from unet_core.inference import InferenceOptions
from unet_core.io import ImageFile, read_image_bytes
from unet_core.predict import run
from unet_core.runtime import OnnxPredictor, load_predictor
from unet_core.studio import keep
from unet_core.studio import visualize as viz
from unet_core.studio.registry import default_model, list_models, read_card
from unet_core.studio.segmenting import results_zip


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def segment(at: AppTest, *files: tuple[str, bytes, str]) -> AppTest:
    """Upload ``files``, choose the fixed tile size and press Segment."""
    return upload(at, *files).button(key="segment_run").click().run()


# --------------------------------------------------------------------------- app start


def test_app_starts_without_a_model_and_says_how_to_get_one(studio_dirs) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "U-Net Studio" in texts(at.title)
    assert "python -m unet_core export" in texts(at.info)
    assert "Running on" in texts(at.sidebar.caption)
    at.switch_page("pages/segment.py").run()
    assert not at.exception
    assert "No model yet" in texts(at.info)
    assert not at.file_uploader  # nothing to segment with: the page stops at the explanation


@pytest.mark.slow
def test_app_starts_with_a_model_and_shows_its_card(tiny_installed: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.sidebar.selectbox[0].value == str(tiny_installed)
    home = texts(at.markdown)
    assert "tiny (shipped)" in home
    assert "0 = background, 1 = foreground (objects)" in home  # card written from the metadata
    assert not at.error


def test_a_model_that_will_not_load_is_an_error_not_a_traceback(studio_dirs) -> None:
    (studio_dirs.models / "broken.onnx").write_bytes(b"this is not an ONNX file")
    at = segment_page()
    assert not at.exception
    assert "cannot be used" in texts(at.error)
    assert "Choose another model" in texts(at.error)


# --------------------------------------------------------------------------- segmenting


@pytest.mark.slow
def test_png_upload_is_segmented_like_the_engine_does(tiny_installed: Path, cells_image,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pixels = cells_image()
    at = segment(segment_page(), ("cells.png", png_bytes(pixels), "image/png"))
    assert not at.exception
    assert not at.error

    expected = run(ImageFile("cells.png", pixels[None, :, :, None]), load_predictor(tiny_installed),
                   InferenceOptions(tile=TILE))
    objects = next(m for m in at.metric if m.label == "Objects")
    assert objects.value == f"{expected.n_objects:,}"
    assert {b.label for b in at.download_button} == {"Labels (PNG)", "Objects (TIFF)", "Measurements (CSV)",
                                                     "Outlines for QuPath (GeoJSON)", "ROIs for Fiji (RoiSet.zip)",
                                                     "Training set (ZIP)"}
    # The viewer: the overlay in the image's pixel coordinates, one hover point per object at its centre.
    (chart,) = at.get("plotly_chart")
    figure = json.loads(chart.proto.spec)
    image, points = figure["data"]
    assert image["type"] == "image" and image["source"].startswith("data:image/png;base64,")
    assert len(points["x"]) == expected.n_objects
    first = expected.objects[0][0]
    assert (points["x"][0], points["y"][0]) == (first["centroid_x"], first["centroid_y"])
    assert points["customdata"][0][0] == first["id"]
    files = at.session_state["segment_results"]["outcomes"]
    (outcome,) = files.values()
    labels = read_image_bytes(outcome.files["cells_labels.png"], "cells_labels.png").data
    np.testing.assert_array_equal(labels[0, ..., 0], expected.segmentation.labels[0] * 255)  # 2 classes: 0/255
    assert outcome.files["cells_objects.csv"].decode() == expected.csv_text()
    shapes = json.loads(outcome.files["cells_outlines.geojson"])["features"]
    assert [int(f["properties"]["name"]) for f in shapes] == [row["id"] for row in expected.objects[0]]

    # Changing the overlay opacity redraws from the stored result: nothing is segmented again.
    kept = at.session_state["segment_results"]["outcomes"]
    at.slider(key="segment_opacity").set_value(0.9).run()
    assert not at.exception
    assert at.session_state["segment_results"]["outcomes"] is kept

    # Clean-up options apply at once, from the stored labels: no network pass (the predictor is not
    # called), the count and the downloads follow; no object left is no problem. (The minimum size
    # is typed only with the automatic clean-up off: the field is disabled otherwise.)
    calls = []
    original = OnnxPredictor.predict_batch
    monkeypatch.setattr(OnnxPredictor, "predict_batch", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    next(c for c in at.checkbox if c.label == "Automatic clean-up").uncheck().run()
    everything = int(next(m for m in at.metric if m.label == "Objects").value.replace(",", ""))
    at.slider(key="segment_min_probability").set_value(0.55).run()
    sure = int(next(m for m in at.metric if m.label == "Objects").value.replace(",", ""))
    assert 0 < sure < everything  # the objects the network is unsure of are left out
    at.slider(key="segment_min_probability").set_value(0.0).run()
    next(n for n in at.number_input if n.label.startswith("Minimum object size")).set_value(10**6).run()
    assert not at.exception and not calls
    assert next(m for m in at.metric if m.label == "Objects").value == "0"
    (outcome,) = at.session_state["segment_results"]["outcomes"].values()
    assert outcome.files["cells_objects.csv"].decode().count("\n") == 1  # the header alone
    # Options of the network pass hide the old result until Segment is pressed.
    next(s for s in at.selectbox if s.label == "Test-time augmentation").set_value("off").run()
    assert "press **Segment** to update" in texts(at.info)
    assert not any(m.label == "Objects" for m in at.metric)
    at.button(key="segment_run").click().run()
    assert not at.exception
    assert next(m for m in at.metric if m.label == "Objects").value == "0"


def _objects_shown(at: AppTest) -> int:
    return int(next(m for m in at.metric if m.label == "Objects").value.replace(",", ""))


@pytest.mark.slow
def test_objects_are_merged_removed_and_undone_by_hand_with_the_counts_and_files(
        tiny_installed: Path, cells_image) -> None:
    at = segment(segment_page(), ("cells.png", png_bytes(cells_image()), "image/png"))
    (key,) = at.session_state["segment_results"]["outcomes"]
    first = at.session_state["segment_results"]["outcomes"][key].result
    n = first.n_objects
    assert n >= 3 and _objects_shown(at) == n
    assert at.button(key=f"merge:{key}").disabled and at.button(key=f"undo:{key}").disabled

    at.text_input(key=f"fix:{key}:0").input("1, 2").run()
    assert "Picked: 1, 2" in texts(at.caption)
    at.button(key=f"merge:{key}").click().run()
    assert not at.exception and _objects_shown(at) == n - 1
    merged = apply_edit(first, ObjectEdit("merge", (1, 2)))
    outcome = at.session_state["segment_results"]["outcomes"][key]
    assert np.array_equal(outcome.result.instances, merged.instances)
    assert outcome.files["cells_objects.csv"].decode() == merged.csv_text()
    shapes = json.loads(outcome.files["cells_outlines.geojson"])["features"]
    assert len(shapes) == n - 1

    at.text_input(key=f"fix:{key}:1").input("3").run()  # a new box after each edit: the numbers changed
    at.button(key=f"remove:{key}").click().run()
    assert _objects_shown(at) == n - 2
    assert "Corrected by hand: merged objects 1 and 2; removed object 3" in texts(at.caption)
    at.text_input(key=f"fix:{key}:2").input(f"{n + 5}, x").run()
    assert "'x' is not an object number" in texts(at.error)
    at.text_input(key=f"fix:{key}:2").input(f"{n + 5}").run()
    at.button(key=f"remove:{key}").click().run()
    assert f"no object {n + 5}" in texts(at.error) and _objects_shown(at) == n - 2

    # Split: the largest object (a merged pair, or refused with a message when it has no waist).
    largest = max(at.session_state["segment_results"]["outcomes"][key].result.objects[0], key=lambda r: r["area"])
    at.text_input(key=f"fix:{key}:2").input(str(largest["id"])).run()
    at.button(key=f"split:{key}").click().run()
    assert not at.exception
    split = _objects_shown(at) > n - 2
    assert split or "has no waist" in texts(at.error)
    if split:
        at.button(key=f"undo:{key}").click().run()
    at.button(key=f"undo:{key}").click().run()
    assert _objects_shown(at) == n - 1
    at.button(key=f"undo:{key}").click().run()
    assert _objects_shown(at) == n
    outcome = at.session_state["segment_results"]["outcomes"][key]
    assert np.array_equal(outcome.result.instances, first.instances)
    assert outcome.files["cells_objects.csv"].decode() == first.csv_text()

    # Clean-up options start again from the network's objects: edits by hand are dropped.
    at.text_input(key=f"fix:{key}:0").input("1").run()
    at.button(key=f"remove:{key}").click().run()
    assert _objects_shown(at) == n - 1
    next(c for c in at.checkbox if c.label == "Leave out objects touching the image edge").check().run()
    next(c for c in at.checkbox if c.label == "Leave out objects touching the image edge").uncheck().run()
    assert not at.exception and _objects_shown(at) == n and at.button(key=f"undo:{key}").disabled


@pytest.mark.slow
def test_results_and_options_survive_a_visit_to_another_page(tiny_installed: Path, cells_image) -> None:
    at = segment_page()
    assert next(s for s in at.selectbox if s.label == "Tile size").value == "auto"  # shown as "Automatic"
    at = segment(at, ("cells.png", png_bytes(cells_image()), "image/png"))
    next(c for c in at.checkbox if c.label == "Fill holes inside objects").check().run()
    at.slider(key="segment_opacity").set_value(0.75).run()
    count = next(m for m in at.metric if m.label == "Objects").value
    kept = at.session_state["segment_results"]["outcomes"]

    at.switch_page("pages/models.py").run()
    assert not at.exception
    at.switch_page("pages/segment.py").run()
    assert not at.exception
    # The options are as the user left them, and the results are still there (not segmented again),
    # with a word on why the upload box is empty.
    assert next(c for c in at.checkbox if c.label == "Fill holes inside objects").value is True
    assert next(s for s in at.selectbox if s.label == "Tile size").value == TILE
    assert at.slider(key="segment_opacity").value == 0.75
    assert next(m for m in at.metric if m.label == "Objects").value == count
    assert at.session_state["segment_results"]["outcomes"] is kept
    assert "Results of your last run (cells.png)" in texts(at.caption)
    # Post-processing still applies live to the kept result.
    next(c for c in at.checkbox if c.label == "Automatic clean-up").uncheck().run()
    next(n for n in at.number_input if n.label.startswith("Minimum object size")).set_value(10**6).run()
    assert not at.exception and next(m for m in at.metric if m.label == "Objects").value == "0"


def test_an_unreadable_upload_is_reported_and_the_others_still_run(tiny_installed: Path, cells_image) -> None:
    at = segment(
        segment_page(),
        ("broken.png", b"these bytes are no image", "image/png"),
        ("good.png", png_bytes(cells_image()), "image/png"),
    )
    assert not at.exception
    (error,) = at.error
    assert "broken.png" in error.value and "not a readable PNG, JPEG or TIFF image" in error.value and "_io." not in error.value
    assert "The other images were processed" in error.value
    assert any(m.label == "Objects" for m in at.metric)  # good.png's result is shown
    assert "Labels (PNG)" in {b.label for b in at.download_button}


def test_a_16_bit_tiff_stack_is_segmented_slice_by_slice(tiny_installed: Path, cells_image) -> None:
    stack = cells_image((3, 90, 110), np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, stack, imagej=True, metadata={"axes": "ZYX"})
    at = segment(segment_page(), ("stack.tif", buf.getvalue(), "image/tiff"))
    assert not at.exception
    assert not at.error
    assert at.slider(key="slice:stack.tif").max == 3
    assert {b.label for b in at.download_button} == {
        "Labels (TIFF stack)", "Objects (TIFF)", "Measurements (CSV)", "Outlines for QuPath (GeoJSON)",
        "ROIs for Fiji (RoiSet.zip)", "Training set (ZIP)"}
    at.slider(key="slice:stack.tif").set_value(3).run()
    assert not at.exception
    # Each slice's labels are what the engine gives that slice alone (normalised over the stack).
    (outcome,) = at.session_state["segment_results"]["outcomes"].values()
    predictor = load_predictor(tiny_installed, "cpu")
    options = InferenceOptions(tile=TILE, diameter="off")
    whole = run(ImageFile("stack.tif", stack[..., None], is_stack=True), predictor, options)
    assert outcome.result.segmentation.labels.shape == (3, 90, 110)
    assert np.array_equal(outcome.result.segmentation.labels, whole.segmentation.labels)
    assert np.array_equal(outcome.result.instances, whole.instances)
    assert len({int(i) for i in np.unique(outcome.result.instances) if i}) == outcome.result.n_objects


@pytest.mark.slow
def test_several_files_give_a_summary_and_one_zip(tiny_installed: Path, cells_image) -> None:
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, cells_image(seed=2))
    at = segment(
        segment_page(),
        ("a.png", png_bytes(cells_image(seed=1)), "image/png"),
        ("a.tif", tiff.getvalue(), "image/tiff"),  # same stem: its files must not overwrite a.png's
    )
    assert not at.exception
    assert "All results (ZIP)" in {b.label for b in at.download_button}
    assert at.selectbox(key="segment_shown").options == ["a.png", "a.tif"]
    # The button's data: made when it is pressed, from the results on the page.
    with zipfile.ZipFile(io.BytesIO(results_zip(at.session_state["segment_results"]["outcomes"].values()))) as archive:
        names = set(archive.namelist())
    stem_files = {"a_labels.png", "a_instances.tif", "a_objects.csv", "a_outlines.geojson", "a_RoiSet.zip"}
    assert names == stem_files | {f"2_{name}" for name in stem_files}


def test_past_the_memory_budget_the_oldest_result_is_let_go_and_redone_alone(
        tiny_installed: Path, cells_image, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(keep.RESULTS_BUDGET_ENV, "1e-6")  # ~1 KB: room for the newest result only
    at = segment(segment_page(), ("first.png", png_bytes(cells_image(seed=1)), "image/png"),
                 ("second.png", png_bytes(cells_image(seed=2)), "image/png"))
    assert not at.exception
    outcomes = list(at.session_state["segment_results"]["outcomes"].values())
    assert [o.let_go for o in outcomes] == [True, False] and outcomes[1].result is not None
    assert "first.png** was not segmented: its result was let go" in texts(at.error)
    calls = []
    original = OnnxPredictor.predict_batch
    monkeypatch.setattr(OnnxPredictor, "predict_batch", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    at.button(key="segment_run").click().run()  # only the let-go image runs again (and is now the newest)
    outcomes = list(at.session_state["segment_results"]["outcomes"].values())
    assert calls and [o.let_go for o in outcomes] == [False, True]


def test_let_go_oldest_first_and_never_the_newest() -> None:
    sizes = [("a", 500), ("b", 300), ("c", 400)]
    assert keep.to_let_go(sizes, 10_000) == []
    assert keep.to_let_go(sizes, 800) == ["a"]
    assert keep.to_let_go(sizes, 100) == ["a", "b"]  # c is shown: kept even alone over the budget


# --------------------------------------------------------------------------- engine helpers


def test_registry_lists_shipped_then_trained_and_prefers_unet_nuclei(studio_dirs) -> None:
    assert list_models() == [] and default_model() is None
    for name in ("alpha", "unet-nuclei"):
        (studio_dirs.models / f"{name}.onnx").write_bytes(b"x")
    (studio_dirs.models / "unet-nuclei.md").write_text("# Nuclei\nTrained on DSB 2018.")
    run_dir = studio_dirs.runs / "2026-11-25_1200"
    run_dir.mkdir()
    (run_dir / "model.onnx").write_bytes(b"x")

    entries = list_models()
    assert [(e.name, e.source) for e in entries] == [
        ("alpha", "shipped"), ("unet-nuclei", "shipped"), ("2026-11-25_1200", "run")]
    assert default_model().name == "unet-nuclei"
    assert read_card(default_model()).startswith("# Nuclei")
    assert read_card(default_model(), top_heading=3).startswith("### Nuclei\nTrained")
    # A model without card or metadata still gets a card: one that says what is wrong.
    assert "no readable U-Net Studio metadata" in read_card(entries[0])


def test_display_stretches_16_bit_and_overlay_outlines_every_object() -> None:
    dim = np.zeros((20, 20), np.uint16)
    dim[5:15, 5:15] = 1200  # a 12-bit camera image: nearly black if shown as 0..65535
    shown = viz.display_image(dim)
    assert shown.shape == (20, 20, 3) and shown.dtype == np.uint8
    assert shown[10, 10, 0] == 255 and shown[0, 0, 0] == 0

    ids = np.zeros((20, 20), np.int32)
    ids[2:8, 2:8], ids[10:18, 10:18] = 1, 2
    drawn = viz.overlay(shown, ids, alpha=0.0)
    colors = viz.label_colors(ids)
    assert (drawn[2, 2] == colors[2, 2]).all() and (drawn[12, 12] == shown[12, 12]).all()  # outline / inside
    assert not (colors[3, 3] == colors[12, 12]).all()
    probs = viz.probability_image(np.array([[0.0, 1.0]]))
    assert probs.shape == (1, 2, 3) and probs[0, 0].sum() < probs[0, 1].sum()


@pytest.fixture
def scale_aware_installed(studio_dirs, tiny_model: tuple) -> Path:
    """The tiny network exported with a canonical diameter of 24 px, as the only model."""
    from unet_core.export import to_onnx
    from unet_core.metadata import ModelMeta

    net, _ = tiny_model
    path = studio_dirs.models / "tiny-scaled.onnx"
    to_onnx(net, ModelMeta(name="tiny-scaled", unet=net.config, diameter=24.0), path)
    return path


@pytest.mark.slow
def test_segment_page_uses_a_typed_diameter_and_says_which(scale_aware_installed: Path, cells_image) -> None:
    at = segment_page()
    assert "Object diameter (pixels, 0 = estimate)" in [n.label for n in at.number_input]
    next(n for n in at.number_input if n.label == "Object diameter (pixels, 0 = estimate)").set_value(12.0).run()
    at = segment(at, ("cells.png", png_bytes(cells_image((120, 140))), "image/png"))
    assert not at.exception
    captions = texts(at.caption)
    assert "Object diameter **12.0 px** (given)" in captions and "2.00×" in captions
    # the image's look, which sets the automatic probability filter, and the threshold it set
    assert re.search(r"Looks like \*\*(fluorescence|bright-field|stained)\*\* \(.+\): automatic clean-up drops "
                     r"objects with a mean probability under 0\.\d+\.", captions), captions
    # Splitting merged nuclei is on by default for this model and switched off live, from the stored
    # result: the objects are then the engine's with the split off.
    from unet_core.inference import instance_ids
    from unet_core.instances import InstanceOptions

    split = next(c for c in at.checkbox if c.label == "Split merged nuclei")
    assert split.value is True and "split_merged=None" in at.session_state["segment_results"]["post"]
    split.uncheck().run()
    assert not at.exception and "split_merged=False" in at.session_state["segment_results"]["post"]
    (outcome,) = at.session_state["segment_results"]["outcomes"].values()
    seg, meta = outcome.result.segmentation, load_predictor(scale_aware_installed, "cpu").meta
    whole = instance_ids(seg, meta, InstanceOptions(split_merged=False), seg.labels.shape[1:])
    assert np.array_equal(outcome.result.instances, whole)


@pytest.mark.slow
def test_segment_page_estimates_the_diameter_by_default(scale_aware_installed: Path, cells_image) -> None:
    at = segment(segment_page(), ("cells.png", png_bytes(cells_image((120, 140))), "image/png"))
    assert not at.exception
    captions = texts(at.caption)
    assert "(estimated)" in captions or "could not be estimated" in captions
