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


CARD_SECTIONS = {
    # Cards are written for biologists: what a model is good and not good for first, then how it was made.
    "unet-nuclei": ("## Good for", "## Not good for", "## Results on images it never saw", "## How it was made"),
    "unet-nuclei-int8": ("## Good for", "## Not good for", "## How it was made"),
    "unet-isbi2012": ("## Good for", "## Not good for", "## How it was made", "## Data", "## Training",
                      "Validation metrics"),
}


@pytest.mark.parametrize("name", ["unet-nuclei", "unet-nuclei-int8", "unet-isbi2012"])
def test_shipped_model_has_card_metadata_and_is_small(name: str) -> None:
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < 30e6
    card = (MODELS / f"{name}.md").read_text()
    positions = [card.find(section) for section in CARD_SECTIONS[name]]
    assert -1 not in positions and positions == sorted(positions), "the card's sections, in this order"
    meta = OnnxPredictor(path, "cpu").meta
    assert meta.unet.n_classes == 2 and meta.unet.padding == "valid"
    assert meta.training["split_rule"]["kind"] in ("every_kth", "last_n", "none")


@pytest.mark.slow
def test_nuclei_model_segments_the_generators_default_images() -> None:
    """The app's default model on the app's default data: foreground IoU >= 0.8."""
    predictor = OnnxPredictor(MODELS / "unet-nuclei.onnx", "cpu")
    report = evaluate(predictor, synthetic_dataset(3, seed=123), options=EvalOptions(tile=260, kind="instance"))
    assert report.means["foreground_iou"] >= 0.8, report.means


@pytest.mark.slow
def test_the_int8_nuclei_model_is_its_parents_quantized_copy_and_scores_alike() -> None:
    """The shipped int8 copy names the shipped fp32 file it came from (by hash) and scores within
    0.01 of it on the generator's images (its card has the figures on real held-out images)."""
    import hashlib

    int8, fp32 = (OnnxPredictor(MODELS / name, "cpu") for name in ("unet-nuclei-int8.onnx", "unet-nuclei.onnx"))
    record = int8.meta.quantization
    assert record["parent"] == "unet-nuclei.onnx" and record["format"] == "int8 QDQ U8S8"
    assert record["parent_sha256"] == hashlib.sha256((MODELS / "unet-nuclei.onnx").read_bytes()).hexdigest()
    assert int8.meta.diameter == fp32.meta.diameter and int8.meta.training == fp32.meta.training
    data, options = synthetic_dataset(3, seed=123), EvalOptions(tile=260, kind="instance")
    a, b = (evaluate(p, data, options=options).means for p in (int8, fp32))
    for key in ("foreground_iou", "dsb_ap"):
        assert abs(a[key] - b[key]) <= 0.01, (key, a[key], b[key])


@pytest.mark.skipif(not (SHARED / "isbi2012").is_dir(), reason="needs ../shared/data/isbi2012")
def test_isbi_model_on_a_held_out_slice() -> None:
    ds = open_dataset(SHARED / "isbi2012")
    predictor = OnnxPredictor(MODELS / "unet-isbi2012.onnx", "cpu")
    assert predictor.meta.class_names == ["membrane", "cell"]
    val = split(ds, part="val", rule=None)
    assert ds.samples[val[0]].name.startswith("25")
    report = evaluate(predictor, ds, val[:1], EvalOptions(tile=260, kind="semantic"))
    assert report.means["pixel_error"] < 0.15 and report.means["rand_error"] < 0.3, report.means


def _scaled(image, truth, factor: float):
    from unet_core.scale import rescale_image, rescale_labels, scaled_shape

    shape = scaled_shape(truth.shape, factor)
    return rescale_image(image, shape).round().clip(0, 255).astype("uint8"), rescale_labels(truth, shape)


@pytest.mark.slow
def test_nuclei_model_segments_half_and_double_size_alike_with_automatic_diameter() -> None:
    """The same synthetic nuclei at 0.5x, 1x and 2x their size: foreground IoU within 0.05 of the 1x
    result, and the estimated diameter within 10 % of the true one, with ``diameter="auto"``."""
    from unet_core.inference import InferenceOptions, segment_objects
    from unet_core.io import ImageFile
    from unet_core.metrics import evaluate_pair
    from unet_core.scale import median_diameter
    from unet_core.synthetic import SynthConfig, generate

    predictor = OnnxPredictor(MODELS / "unet-nuclei.onnx", "cpu")
    canonical = predictor.meta.diameter
    assert canonical, "the nuclei model declares a canonical diameter"
    r = canonical / 2
    image, truth = generate(SynthConfig(height=320, width=320, radius=(0.9 * r, 1.1 * r), n_cells=(15, 25),
                                        touching_fraction=0.3), seed=11)
    ious = {}
    for factor in (0.5, 1.0, 2.0):
        img, gt = _scaled(image, truth, factor)
        seg, ids = segment_objects(ImageFile("s.png", img[None, ..., None]), predictor,
                                   InferenceOptions(tile=244, diameter="auto"))
        assert seg.diameter_source == "estimated"
        true_d = median_diameter(gt)
        assert abs(seg.diameter - true_d) <= 0.1 * true_d, (factor, seg.diameter, true_d)
        ious[factor] = evaluate_pair(ids[0], gt, "instance")["foreground_iou"]
    assert ious[1.0] >= 0.8, ious
    assert abs(ious[0.5] - ious[1.0]) <= 0.05 and abs(ious[2.0] - ious[1.0]) <= 0.05, ious
