"""Tests of unet_core.evaluate with oracle predictors: known metrics, sorting, report."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from unet_core.datasets import open_dataset
from unet_core.evaluate import EvalOptions, EvalReport, ImageResult, evaluate, mean_metrics, metric_kind
from unet_core.instances import DEFAULT_MIN_OBJECT_PROBABILITY, InstanceOptions
from unet_core.io import write_png
from unet_core.metadata import ModelMeta
from unet_core.model import UNetConfig
from unet_core.runtime import Predictor


class ThresholdPredictor(Predictor):
    """Class 1 where the (normalised) input pixel is bright: an oracle when the image is the mask.

    ``invert`` makes it predict the opposite class: a worst-case model.
    """

    def __init__(self, invert: bool = False) -> None:
        self.meta = ModelMeta(name="oracle", unet=UNetConfig(width=2, depth=2))
        self.device, self.device_name, self.fingerprint = "cpu", "CPU", "oracle"
        self.invert = invert
        self.calls = 0

    def predict_batch(self, batch: np.ndarray, release: bool = False) -> np.ndarray:
        self.calls += 1
        m = self.meta.geometry.margin
        fg = (batch[:, 0, m:-m, m:-m] > 0.5).astype(np.float32)
        if self.invert:
            fg = 1 - fg
        return np.stack([1 - fg, fg], axis=1)


def _squares(h: int, w: int, boxes: list[tuple[int, int, int]]) -> np.ndarray:
    mask = np.zeros((h, w), np.uint16)
    for k, (y, x, s) in enumerate(boxes, start=1):
        mask[y : y + s, x : x + s] = k
    return mask


@pytest.fixture()
def instance_data(tmp_path: Path) -> Path:
    """Generic layout: images equal their (binary) masks, so the oracle is perfect."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    layouts = [[(2, 2, 8), (20, 20, 10)], [(5, 30, 6)], [(1, 1, 5), (10, 10, 5), (30, 5, 9)]]
    for i, boxes in enumerate(layouts):
        mask = _squares(48, 52, boxes)
        write_png(tmp_path / "images" / f"im{i}.png", ((mask > 0) * 255).astype(np.uint8))
        write_png(tmp_path / "masks" / f"im{i}.png", mask)
    return tmp_path


def test_perfect_predictor_scores_perfectly_on_instances(instance_data: Path) -> None:
    ds = open_dataset(instance_data)
    assert metric_kind(ds) == "instance"
    report = evaluate(ThresholdPredictor(), ds, options=EvalOptions(tile=20))
    assert report.kind == "instance" and len(report.rows) == 3
    assert [r.name for r in report.rows] == ["im0", "im1", "im2"]
    for r in report.rows:
        assert (r.height, r.width) == (48, 52)
        assert r.metrics["foreground_iou"] == 1.0 and r.metrics["dsb_ap"] == 1.0 and r.metrics["pixel_error"] == 0.0
    assert report.means["dsb_ap"] == 1.0 and report.means["seg"] == 1.0 and report.means["rand_error"] == 0.0


def test_inverted_predictor_and_worst_first(instance_data: Path) -> None:
    ds = open_dataset(instance_data)
    report = evaluate(ThresholdPredictor(invert=True), ds, [0, 2], EvalOptions(tile=20))
    assert [r.index for r in report.rows] == [0, 2]
    assert report.means["foreground_iou"] == 0.0 and report.means["pixel_error"] == 1.0
    rows = [
        ImageResult(0, "a", 4, 4, {"dsb_ap": 0.7, "rand_error": 0.1}, 0.0),
        ImageResult(1, "b", 4, 4, {"dsb_ap": 0.2, "rand_error": 0.5}, 0.0),
        ImageResult(2, "c", 4, 4, {"dsb_ap": math.nan, "rand_error": 0.3}, 0.0),
    ]
    rep = EvalReport("instance", rows, mean_metrics(rows))
    assert [r.name for r in rep.worst_first()] == ["b", "a", "c"]  # NaN last
    assert [r.name for r in rep.worst_first("rand_error")] == ["b", "c", "a"]  # higher error is worse
    assert rep.means["dsb_ap"] == pytest.approx(0.45)


def test_semantic_metrics_for_isbi_like_data(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    labels = np.full((40, 40), 255, np.uint8)
    labels[::10, :] = 0
    labels[:, ::10] = 0
    for i in range(2):
        write_png(tmp_path / "images" / f"{i:02d}.png", labels)
        write_png(tmp_path / "labels" / f"{i:02d}.png", labels)
    ds = open_dataset(tmp_path)
    assert ds.layout == "isbi2012" and metric_kind(ds) == "semantic"
    report = evaluate(ThresholdPredictor(), ds, options=EvalOptions(tile=20))
    assert report.kind == "semantic" and report.primary == "rand_error"
    for key in ("pixel_error", "rand_error", "warping_error", "foreground_iou", "dsb_ap"):
        assert key in report.means
    assert report.means["pixel_error"] == 0.0 and report.means["rand_error"] == pytest.approx(0.0, abs=1e-12)
    assert report.means["warping_error"] == 0.0 and report.means["foreground_iou"] == 1.0


def test_report_json_and_markdown(instance_data: Path) -> None:
    ds = open_dataset(instance_data)
    report = evaluate(ThresholdPredictor(invert=True), ds, options=EvalOptions(tile=20, tta=True))
    report.model = "oracle.onnx"
    d = json.loads(report.to_json())
    assert d["n_images"] == 3 and d["evaluated_at"].startswith("argmax") and len(d["images"]) == 3
    assert "images" not in json.loads(report.to_json(images=False))
    md = report.to_markdown()
    assert "argmax of the class probabilities" in md and "TTA" in md and "worst first by dsb_ap" in md
    table = [line for line in md.splitlines() if re.match(r"\| \d+ \| im", line)]
    assert len(table) == 3


def test_the_report_says_how_outlines_were_redrawn_and_objects_kept(instance_data: Path) -> None:
    ds = open_dataset(instance_data)
    plain = evaluate(ThresholdPredictor(), ds, options=EvalOptions(tile=20, tta=False))
    assert plain.options["outline_threshold"] == 0.0 and "outlines redrawn" not in plain.to_markdown()
    assert plain.options["min_object_probability"] == 0.0 and "dropped" not in plain.to_markdown()
    assert plain.options["split_merged"] is False and "merged objects split" not in plain.to_markdown()
    scaled = ThresholdPredictor()
    scaled.meta = dataclasses.replace(scaled.meta, diameter=8.0)
    report = evaluate(scaled, ds, options=EvalOptions(tile=20, tta=False, diameter="off"))
    assert report.options["outline_threshold"] == 0.4
    assert "outlines redrawn where the foreground probability exceeds 0.4" in report.to_markdown()
    assert report.options["min_object_probability"] == DEFAULT_MIN_OBJECT_PROBABILITY  # automatic: by look
    md = report.to_markdown()
    assert "objects with a mean foreground probability under 0.6 (fluorescence), 0.75 (bright-field), 0.65 " \
        "(stained) by each image's look dropped, merged objects split)" in md
    assert {r.look for r in report.rows} == {"fluorescence"}  # bright cells on dark
    assert "| # | image | size | look |" in md and "| fluorescence |" in md
    fixed = evaluate(scaled, ds, options=EvalOptions(tile=20, tta=False, diameter="off",
                                                     instance_options=InstanceOptions(min_object_probability=0.5)))
    assert "objects with a mean foreground probability under 0.5 dropped" in fixed.to_markdown()
    assert report.means["dsb_ap"] == plain.means["dsb_ap"]  # an oracle's sure outlines do not move


def test_progress_and_tta_call_the_predictor(instance_data: Path) -> None:
    ds = open_dataset(instance_data)
    seen = []
    pred = ThresholdPredictor()
    evaluate(pred, ds, [1], EvalOptions(tile=20, tta=True), progress=lambda d, t: seen.append((d, t)))
    plain = ThresholdPredictor()
    evaluate(plain, ds, [1], EvalOptions(tile=20, tta=False))
    assert seen == [(1, 1)] and plain.calls > 0 and pred.calls == 8 * plain.calls  # each batch 8 times
    automatic = ThresholdPredictor()  # the default, as predict's: on for an image this small
    evaluate(automatic, ds, [1], EvalOptions(tile=20))
    assert automatic.calls == pred.calls
