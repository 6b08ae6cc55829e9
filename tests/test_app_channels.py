"""The Segment page in Streamlit's AppTest: a multi-channel TIFF is warned about and segmented on
the channel picked; pixel sizes give µm columns (from the file or typed); vendor formats are
explained; binary labels are 0/255."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from apptest_helpers import TILE, segment_page, texts, upload
from PIL import Image
from streamlit.testing.v1 import AppTest

from unet_core.inference import InferenceOptions
from unet_core.io import ImageFile, read_image_bytes
from unet_core.predict import run
from unet_core.runtime import load_predictor


def press_segment(at: AppTest) -> AppTest:
    return at.button(key="segment_run").click().run()


def tiff_bytes(data: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, **kwargs)
    return buf.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def outcome(at: AppTest):
    (only,) = at.session_state["segment_results"]["outcomes"].values()
    return only


@pytest.mark.slow
def test_a_two_channel_tiff_is_warned_about_and_segmented_on_the_picked_channel(
        tiny_installed: Path, cells_image) -> None:
    nuclei = cells_image((90, 110), np.uint16)
    other = np.random.default_rng(5).integers(0, 40, nuclei.shape, dtype=np.uint16)
    raw = tiff_bytes(np.stack([other, nuclei]), imagej=True, metadata={"axes": "CYX"})
    at = upload(segment_page(), ("dapi2.tif", raw, "image/tiff"))
    assert not at.exception
    # Before any choice: a warning, and a picker with nothing picked.
    assert "**dapi2.tif** has 2 separate channels (not RGB)" in texts(at.warning)
    picker = next(s for s in at.selectbox if s.label == "Channel of dapi2.tif to segment")
    assert picker.value is None and picker.options == ["Channel 1", "Channel 2"]

    # Segment without a choice: refused with what to do, not a guess.
    at = press_segment(at)
    assert not at.exception
    assert "which channel to segment must be chosen: pick it under the uploader" in texts(at.error)
    assert not any(m.label == "Objects" for m in at.metric)

    next(s for s in at.selectbox if s.label == "Channel of dapi2.tif to segment").set_value(2).run()
    assert not at.warning  # chosen: nothing to warn about any more
    assert at.session_state["segment_channels"] == {"dapi2.tif": (2,)}
    at = press_segment(at)
    assert not at.exception and not at.error
    expected = run(ImageFile("n.png", nuclei[None, ..., None]), load_predictor(tiny_installed),
                   InferenceOptions(tile=TILE))
    assert next(m for m in at.metric if m.label == "Objects").value == str(expected.n_objects)
    assert "segmented on channel 2 of 2" in texts(at.caption)
    labels = read_image_bytes(outcome(at).files["dapi2_labels.png"], "l.png").data[0, ..., 0]
    np.testing.assert_array_equal(labels, expected.segmentation.labels[0] * 255)  # 2 classes: 0/255


def test_micrometre_columns_from_the_file_or_a_typed_pixel_size(tiny_installed: Path, cells_image) -> None:
    calibrated = tiff_bytes(cells_image((90, 110)), resolution=(2.0, 2.0), resolutionunit="MICROMETER")
    at = press_segment(upload(segment_page(), ("cal.tif", calibrated, "image/tiff")))
    assert not at.exception and not at.error
    rows = outcome(at).result.objects[0]
    assert rows and rows[0]["area_um2"] == pytest.approx(rows[0]["area"] * 0.25)
    assert "area_um2" in outcome(at).files["cal_objects.csv"].decode().splitlines()[0]
    assert not any(n.label == "Pixel size (µm)" for n in at.number_input)  # the file says

    at = press_segment(upload(segment_page(), ("plain.png", png_bytes(cells_image((90, 110))), "image/png")))
    assert not at.exception
    assert "area_um2" not in outcome(at).files["plain_objects.csv"].decode()
    next(n for n in at.number_input if n.label == "Pixel size (µm)").set_value(0.5).run()
    assert not at.exception
    assert at.session_state["segment_pixel_size_um"] == 0.5
    _, typed = at.session_state["segment_results"]["typed"]
    (shown,) = typed.values()
    rows = list(csv.DictReader(io.StringIO(shown.files["plain_objects.csv"].decode())))
    assert rows and float(rows[0]["area_um2"]) == pytest.approx(int(rows[0]["area"]) * 0.25)
    assert shown.result.objects[0][0]["area_um2"] == pytest.approx(shown.result.objects[0][0]["area"] * 0.25)


def test_a_czi_upload_says_how_to_convert_it(tiny_installed: Path) -> None:
    at = press_segment(upload(segment_page(), ("scan.czi", b"ZISRAWFILE" + b"\0" * 64, "application/octet-stream")))
    assert not at.exception
    message = texts(at.error)
    assert "**scan.czi** was not segmented: Zeiss CZI files are not read directly" in message
    assert "File > Import > Bio-Formats" in message
