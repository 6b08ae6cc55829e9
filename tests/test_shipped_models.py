"""The models in models/: they load, describe themselves, and segment what they promise.

These run on the committed files (no skipping): the app's default model must work out of the box.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from unet_core.datasets import open_dataset, split
from unet_core.evaluate import EvalOptions, evaluate
from unet_core.runtime import OnnxPredictor
from unet_core.synthetic import synthetic_dataset

MODELS = Path(__file__).resolve().parent.parent / "models"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.mark.parametrize("name", ["unet-nuclei", "unet-isbi2012"])
def test_shipped_model_has_card_metadata_and_is_small(name: str) -> None:
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < 30e6
    card = (MODELS / f"{name}.md").read_text()
    for section in ("## Data", "## Training", "Validation metrics"):
        assert section in card
    meta = OnnxPredictor(path, "cpu").meta
    assert meta.unet.n_classes == 2 and meta.unet.padding == "valid"
    assert meta.training["split_rule"]["kind"] in ("every_kth", "last_n")


def test_nuclei_model_segments_the_generators_default_images() -> None:
    """The app's default model on the app's default data: foreground IoU >= 0.8."""
    predictor = OnnxPredictor(MODELS / "unet-nuclei.onnx", "cpu")
    report = evaluate(predictor, synthetic_dataset(3, seed=123), options=EvalOptions(tile=260, kind="instance"))
    assert report.means["foreground_iou"] >= 0.8, report.means


@pytest.mark.skipif(not (SHARED / "isbi2012").is_dir(), reason="needs ../shared/data/isbi2012")
def test_isbi_model_on_a_held_out_slice() -> None:
    ds = open_dataset(SHARED / "isbi2012")
    predictor = OnnxPredictor(MODELS / "unet-isbi2012.onnx", "cpu")
    assert predictor.meta.class_names == ["membrane", "cell"]
    val = split(ds, part="val", rule=None)
    assert [ds.samples[i].name for i in val][0].startswith("25")
    report = evaluate(predictor, ds, val[:1], EvalOptions(tile=260, kind="semantic"))
    assert report.means["pixel_error"] < 0.15 and report.means["rand_error"] < 0.3, report.means
