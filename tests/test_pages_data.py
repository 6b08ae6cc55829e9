"""The Datasets, Weight maps and Models pages in Streamlit's AppTest: they render from the synthetic
default and from a folder under a private data root, widgets change what they should, folders
outside the data root and crafted zips are refused with a message, never a traceback."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from apptest_helpers import APP, TIMEOUT, texts
from streamlit.testing.v1 import AppTest

from pages._common import MODEL_KEY
from unet_core.datasets import open_dataset
from unet_core.studio import uploads
from unet_core.synthetic import SynthConfig, synthetic_dataset, write_dataset

SMALL = SynthConfig(height=64, width=80, n_cells=(3, 9), radius=(5.0, 10.0))


@pytest.fixture
def data_root(studio_dirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private data root holding ``cells`` (5 small synthetic samples and one broken image) and a
    private uploads folder."""
    root = tmp_path / "data"
    cells = write_dataset(root / "cells", 5, SMALL, seed=3)
    (cells / "images" / "bad.png").write_bytes(b"not an image")
    (cells / "masks" / "bad.png").write_bytes(b"not a mask either")
    damaged = cells / "images" / "004.png"
    damaged.write_bytes(damaged.read_bytes()[:60])  # header fine, pixels cut off: seen only when read
    monkeypatch.setenv("UNET_STUDIO_DATA", str(root))
    monkeypatch.setenv("UNET_STUDIO_UPLOADS", str(tmp_path / "uploads"))
    return root


def open_page(page: str) -> AppTest:
    """The app opened at Home, then switched to ``page`` (as a user would)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    at.switch_page(page).run()
    assert not at.exception
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def zip_upload(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def folder_members(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder.parent).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- Datasets


@pytest.mark.slow
def test_datasets_page_shows_the_synthetic_default(studio_dirs) -> None:
    at = open_page("pages/datasets.py")
    assert not at.error
    assert at.radio(key="datasets_kind").value == "synthetic"
    assert metric(at, "Images") == "8"
    expected = synthetic_dataset(8, SynthConfig())
    counts = [len(np.unique(expected.load_instances(i))) - 1 for i in range(8)]
    assert metric(at, "All objects") == f"{sum(counts):,}"
    assert metric(at, "Objects") == str(counts[0])
    # histogram, objects per image, areas, per-image diameters (one image size: no size chart)
    assert [c.key for c in at.get("plotly_chart")] == ["datasets_histogram", "datasets_objects", "datasets_areas",
                                                        "datasets_diameters"]

    # Choosing another image changes the instance count shown; so does a thumbnail's button.
    other = next(i for i in range(1, 8) if counts[i] != counts[0])
    at.selectbox(key="datasets_image").set_value(f"{other:03d}").run()
    assert not at.exception
    assert metric(at, "Objects") == str(counts[other])
    at.button(key="datasets_thumb_0").click().run()
    assert at.selectbox(key="datasets_image").value == "000"
    assert metric(at, "Objects") == str(counts[0])


def test_datasets_page_opens_a_folder_and_lists_its_problems(data_root: Path) -> None:
    at = open_page("pages/datasets.py")
    at.radio(key="datasets_kind").set_value("folder").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="datasets_folder_name").value == "cells"
    assert metric(at, "Images") == "5" and metric(at, "Problems") == "1"
    ds = open_dataset(data_root / "cells")
    assert metric(at, "All objects") == str(sum(len(np.unique(ds.load_instances(i))) - 1 for i in range(5)))
    (warning,) = at.warning
    assert "bad.png" in warning.value and "Fix, convert or remove" in warning.value
    assert "images in `images/`" in texts(at.markdown)  # the layout, said plainly
    assert metric(at, "Objects") == str(len(np.unique(ds.load_instances(0))) - 1)
    (table,) = at.dataframe
    assert list(table.value["Used for"]) == ["validation", "training", "training", "training", "training"]

    # A damaged image: a message with what to do, not a traceback; its thumbnail says so too.
    at.selectbox(key="datasets_image").set_value("004").run()
    assert not at.exception
    assert "004" in texts(at.error) and "replace or remove the file" in texts(at.error)
    assert "cannot be read" in texts(at.caption)

    # The choice follows the user to the Weight maps page.
    at.switch_page("pages/weight_maps.py").run()
    assert not at.exception
    assert at.radio(key="weights_kind").value == "folder"
    assert at.selectbox(key="weights_image").value == "004"
    assert not at.exception and "replace or remove the file" in texts(at.error)
    at.selectbox(key="weights_image").set_value("001").run()
    assert not at.exception and not at.error


@pytest.mark.parametrize("typed", ["..", "../../etc", "/etc", "cells/../.."])
def test_a_folder_outside_the_data_root_is_refused(data_root: Path, typed: str) -> None:
    at = open_page("pages/datasets.py")
    at.radio(key="datasets_kind").set_value("folder").run()
    at.text_input(key="datasets_folder_typed").input(typed).run()
    assert not at.exception
    assert "outside the data folder" in texts(at.error)
    assert not any(m.label == "Images" for m in at.metric)  # nothing was opened
    at.text_input(key="datasets_folder_typed").input("cells").run()  # a sub-folder inside is fine
    assert not at.error and metric(at, "Images") == "5"


def test_a_folder_that_is_no_data_set_says_what_is_expected(data_root: Path) -> None:
    (data_root / "notes").mkdir()
    at = open_page("pages/datasets.py")
    at.radio(key="datasets_kind").set_value("folder").run()
    at.text_input(key="datasets_folder_typed").input("notes").run()
    assert not at.exception
    assert "is not a data set this program knows" in texts(at.error) and "masks/" in texts(at.error)


def test_a_data_set_without_one_usable_mask_stops_each_page_with_its_reason(
    data_root: Path, studio_dirs, tiny_model_dir: Path
) -> None:
    (studio_dirs.models / "tiny.onnx").symlink_to(tiny_model_dir / "tiny.onnx")  # Evaluate needs a model
    folder = write_dataset(data_root / "no_masks", 2, SMALL, seed=4)
    for mask in (folder / "masks").iterdir():
        mask.unlink()
    at = open_page("pages/datasets.py")
    at.radio(key="datasets_kind").set_value("folder").run()
    at.text_input(key="datasets_folder_typed").input("no_masks").run()
    assert not at.exception
    (error,) = at.error
    assert "no\\_masks" in error.value and "has no usable image with a mask" in error.value  # name escaped
    assert "000.png" in texts(at.warning)  # the problems are listed below the error
    assert not any(m.label == "Images" for m in at.metric)  # the page stopped there

    at.switch_page("pages/weight_maps.py").run()
    assert not at.exception
    assert "no usable image with a mask" in texts(at.error) and "Datasets" in texts(at.error)

    at.switch_page("pages/evaluate.py").run()
    assert not at.exception
    assert "has no image with a mask" in texts(at.error) and "no\\_masks" in texts(at.error)
    assert not at.button  # nothing to evaluate


def test_an_uploaded_zip_is_opened_as_a_data_set(data_root: Path, tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "mine" / "my cells", 3, SMALL, seed=9)
    at = open_page("pages/datasets.py")
    at.radio(key="datasets_kind").set_value("upload").run()
    at.file_uploader(key="datasets_zip").upload("my cells.zip", zip_upload(folder_members(folder)),
                                                "application/zip").run()
    assert not at.exception and not at.error
    assert metric(at, "Images") == "3"
    extracted = Path(at.session_state["data_upload"]["folder"])
    assert extracted.is_relative_to(tmp_path / "uploads") and extracted.name == "my cells"


@pytest.mark.slow
@pytest.mark.parametrize(("members", "reason"), [
    ({"set/images/a.png": b"x", "../../evil.png": b"x"}, "outside the zip's folder"),
    ({"/tmp/evil.png": b"x"}, "absolute path"),
    ({"set/images/zeros.tif": bytes(3_000_000)}, "zip bomb"),
    ({f"set/images/{i}.png": b"x" for i in range(12)}, "12 entries"),
])
def test_a_crafted_zip_is_refused_with_a_message(data_root: Path, tmp_path: Path, monkeypatch, members,
                                                 reason) -> None:
    monkeypatch.setattr(uploads, "MAX_ZIP_BYTES", 1_000_000)
    monkeypatch.setattr(uploads, "MAX_ZIP_MEMBERS", 10)
    at = open_page("pages/datasets.py")
    at.radio(key="datasets_kind").set_value("upload").run()
    at.file_uploader(key="datasets_zip").upload("evil.zip", zip_upload(members), "application/zip").run()
    assert not at.exception
    (error,) = at.error
    assert "**evil.zip** was not opened" in error.value and reason in error.value
    assert not list(tmp_path.rglob("evil.png")) and not list(tmp_path.rglob("zeros.tif"))
    assert not any(m.label == "Images" for m in at.metric)


def test_a_zip_that_is_no_zip_or_holds_no_data_set_is_explained(data_root: Path) -> None:
    at = open_page("pages/datasets.py")
    at.radio(key="datasets_kind").set_value("upload").run()
    uploader = at.file_uploader(key="datasets_zip")
    uploader.upload("photo.zip", b"these bytes are not a zip", "application/zip").run()
    assert not at.exception
    assert "not a readable zip file" in texts(at.error)
    uploader = at.file_uploader(key="datasets_zip")
    uploader.upload("notes.zip", zip_upload({"notes.txt": b"hi"}), "application/zip").run()
    assert not at.exception
    assert "holds no data set" in texts(at.error) and "masks/" in texts(at.error)


# --------------------------------------------------------------------------- Weight maps


@pytest.mark.slow
def test_weight_maps_react_to_sigma_w0_class_weights_and_the_image(studio_dirs) -> None:
    at = open_page("pages/weight_maps.py")
    assert not at.error
    assert len(at.get("plotly_chart")) == 3
    assert "touch with no background between them" in texts(at.info)  # synthetic cells do touch
    gaps = metric(at, "Border term in gaps")
    largest = metric(at, "Largest weight")
    assert float(gaps) > 0

    at.slider(key="weights_sigma").set_value(10.0).run()
    assert not at.exception
    assert float(metric(at, "Border term in gaps")) > float(gaps)  # wider border: more weight in gaps
    at.slider(key="weights_w0").set_value(0.0).run()
    assert metric(at, "Border term in gaps") == "0.00"
    at.radio(key="weights_classes").set_value("none").run()
    assert metric(at, "Class weights") == "1.00 / 1.00" and metric(at, "Largest weight") == "1.00"
    assert largest != "1.00"

    expected = synthetic_dataset(8, SynthConfig())
    counts = [len(np.unique(expected.load_instances(i))) - 1 for i in range(8)]
    other = next(i for i in range(1, 8) if counts[i] != counts[0])
    assert metric(at, "Objects") == str(counts[0])
    at.selectbox(key="weights_image").set_value(f"{other:03d}").run()
    assert not at.exception
    assert metric(at, "Objects") == str(counts[other])


def test_weight_maps_of_a_folder_image_match_the_engine(data_root: Path) -> None:
    at = open_page("pages/weight_maps.py")
    at.radio(key="weights_kind").set_value("folder").run()
    assert not at.exception and not at.error
    labels = open_dataset(data_root / "cells").load_instances(0)
    from unet_core.weights import weight_map_parts

    parts = weight_map_parts(labels, 10.0, 5.0)
    assert metric(at, "Largest weight") == f"{parts.total.max():.2f}"


# --------------------------------------------------------------------------- Models


@pytest.fixture
def two_models(studio_dirs, tiny_model_dir: Path) -> tuple[Path, Path]:
    shipped = studio_dirs.models / "tiny.onnx"
    shipped.symlink_to(tiny_model_dir / "tiny.onnx")
    run = studio_dirs.runs / "2026-11-25_run"
    run.mkdir()
    trained = run / "model.onnx"
    trained.symlink_to(tiny_model_dir / "tiny.onnx")
    (run / "model.md").write_text("# Trained here\nOn my cells.")
    (studio_dirs.runs / "still-training").mkdir()
    (studio_dirs.runs / "still-training" / "log.jsonl").write_text("")
    return shipped, trained


def test_models_page_lists_models_and_sets_the_active_one(two_models) -> None:
    shipped, trained = two_models
    at = open_page("pages/models.py")
    assert not at.error
    (table,) = at.dataframe
    assert list(table.value["Model"]) == ["tiny", "2026-11-25_run"]
    assert list(table.value["Active"]) == ["✓", ""]
    assert at.selectbox(key="models_shown").value == str(shipped)  # details of the active model first
    assert "still-training" in texts(at.info)
    assert "This is the active model" in texts(at.success)
    assert "0 = background, 1 = foreground" in texts(at.markdown)  # the card from the metadata
    assert any(b.label.startswith("Download the model (.onnx") for b in at.get("download_button"))

    at.selectbox(key="models_shown").set_value(str(trained)).run()
    # Its own card file, the title under the page's (a card's "# Title" would outshout the page).
    assert "### Trained here\nOn my cells." in [m.value for m in at.markdown]
    at.button(key="models_use").click().run()
    assert not at.exception
    assert at.session_state[MODEL_KEY] == str(trained)
    assert "This is the active model" in texts(at.success)
    # Every page now uses it (AppTest drops app.py's sidebar after switch_page; Home names the model).
    at.switch_page("pages/home.py").run()
    assert "2026-11-25_run (trained here)" in texts(at.markdown)


def test_models_page_without_models_says_how_to_get_one(studio_dirs) -> None:
    at = open_page("pages/models.py")
    assert "No model yet" in texts(at.info)
    assert not at.dataframe
