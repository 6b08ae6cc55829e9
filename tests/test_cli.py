"""`python -m unet_core predict/export`: outputs per file, bad files reported, exit status."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import roifile
import tifffile
import torch

from unet_core.checkpoint import save_checkpoint
from unet_core.cli import main
from unet_core.inference import InferenceOptions, segment
from unet_core.io import Resolution, read_image, write_png, write_tiff
from unet_core.metadata import ModelMeta
from unet_core.model import UNet
from unet_core.runtime import OnnxPredictor

REPO = Path(__file__).resolve().parent.parent


def _noise(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


def test_predict_writes_all_outputs_and_reports_bad_files(tiny_model, tmp_path, capsys) -> None:
    _, model = tiny_model
    good = tmp_path / "cells.png"
    write_png(good, _noise((90, 120)))
    stack = tmp_path / "stack.tif"
    write_tiff(stack, _noise((3, 40, 50), np.uint16), Resolution(2.0, 2.0, "micron"))
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00 this is not a tiff")
    out = tmp_path / "out"
    code = main(["predict", str(good), str(bad), str(stack), "--model", str(model), "--out", str(out),
                 "--tile", "100", "--probs"])
    err = capsys.readouterr().err
    assert code == 1, "a failed file makes the exit status non-zero"
    assert "broken.tif" in err and "1 of 3 files failed" in err

    # A 2-class model's labels are written 0/255 (visible in any viewer): the class index times 255.
    written = read_image(out / "cells_labels.png").data[0, ..., 0]
    assert set(np.unique(written)) <= {0, 255}
    labels = written // 255
    expected = segment(read_image(good), OnnxPredictor(model, "cpu"), InferenceOptions(tile=100)).labels[0]
    assert labels.dtype == np.uint8 and np.array_equal(labels, expected)

    with tifffile.TiffFile(out / "cells_instances.tif") as tif:
        assert tif.is_imagej
        inst = tif.asarray()
    assert inst.dtype == np.uint16 and inst.shape == (90, 120)
    assert set(np.unique(inst[labels == 0])) <= {0}
    rows = list(csv.DictReader((out / "cells_objects.csv").open()))
    assert len(rows) == inst.max()
    assert {"id", "area", "centroid_y", "centroid_x", "bbox_min_y", "mean_intensity"} <= rows[0].keys()
    assert sum(int(r["area"]) for r in rows) == int((inst > 0).sum())
    # The outlines for QuPath and Fiji: one per object of the instances, named by its id.
    shapes = json.loads((out / "cells_outlines.geojson").read_text())["features"]
    assert [int(f["properties"]["name"]) for f in shapes] == [int(r["id"]) for r in rows]
    assert [f["properties"]["measurements"]["area"] for f in shapes] == [float(r["area"]) for r in rows]
    rois = roifile.roiread(out / "cells_RoiSet.zip")
    assert [int(r.name) for r in (rois if isinstance(rois, list) else [rois])] == [int(r["id"]) for r in rows]

    probs = tifffile.imread(out / "cells_probs.tif")
    assert probs.shape == (2, 90, 120) and probs.dtype == np.float32
    assert np.array_equal(probs.argmax(0), labels)

    stack_labels = read_image(out / "stack_labels.tif")
    assert stack_labels.data.shape == (3, 40, 50, 1)
    assert stack_labels.resolution is not None and stack_labels.resolution.x == 2.0
    stack_rows = list(csv.DictReader((out / "stack_objects.csv").open()))
    assert {r["slice"] for r in stack_rows} <= {"1", "2", "3"}  # counted from 1, as in Fiji
    assert stack_rows
    stack_rois = roifile.roiread(out / "stack_RoiSet.zip")
    stack_rois = stack_rois if isinstance(stack_rois, list) else [stack_rois]
    assert [(int(r.name), r.position) for r in stack_rois] == [(int(r["id"]), int(r["slice"])) for r in stack_rows]


def test_predict_options_min_size_and_border(tiny_model, tmp_path) -> None:
    _, model = tiny_model
    write_png(tmp_path / "a.png", _noise((80, 80), seed=2))
    main(["predict", str(tmp_path / "a.png"), "--model", str(model), "--out", str(tmp_path / "o1"), "--tile", "52"])
    main(["predict", str(tmp_path / "a.png"), "--model", str(model), "--out", str(tmp_path / "o2"), "--tile", "52",
          "--min-size", "20", "--drop-border"])
    all_ids = tifffile.imread(tmp_path / "o1" / "a_instances.tif")
    kept = tifffile.imread(tmp_path / "o2" / "a_instances.tif")
    assert kept.max() < all_ids.max()
    areas = np.bincount(kept.ravel())[1:]
    assert areas.size == 0 or areas.min() >= 20
    border = np.concatenate([kept[0], kept[-1], kept[:, 0], kept[:, -1]])
    assert not border.any()


def test_predict_drops_objects_under_the_minimum_probability_and_its_help_says_the_defaults(
        tiny_model, tmp_path, capsys) -> None:
    from unet_core.cli import build_parser
    from unet_core.instances import DEFAULT_MIN_OBJECT_PROBABILITY, DEFAULT_OUTLINE_THRESHOLD

    _, model = tiny_model
    write_png(tmp_path / "a.png", _noise((80, 80), seed=2))
    counts = {}
    for p in ("0", "0.55"):
        main(["predict", str(tmp_path / "a.png"), "--model", str(model), "--out", str(tmp_path / p), "--tile", "52",
              "--min-object-probability", p])
        counts[p] = len(np.unique(tifffile.imread(tmp_path / p / "a_instances.tif"))) - 1
    assert 0 < counts["0.55"] < counts["0"]
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "a.png"), "--model", str(model), "--min-object-probability", "1.5"])
    assert "a probability from 0 (off) to below 1" in capsys.readouterr().err
    # The help's numbers are the engine's (the parser does not import it: it is slow to load).
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    helps = {a.dest: a.help for a in predict._actions}
    for look, p in DEFAULT_MIN_OBJECT_PROBABILITY.items():
        assert f"{look} {p:g}," in helps["min_object_probability"]
    assert f"default auto: {DEFAULT_OUTLINE_THRESHOLD:g} " in helps["outline_threshold"]
    assert "default auto: on for models with a canonical diameter" in helps["split_merged"]


def test_split_merged_is_a_switch_that_reaches_the_object_options(capsys) -> None:
    from unet_core.cli import _instance_options, build_parser

    def parsed(*extra: str):
        return _instance_options(build_parser().parse_args(["predict", "a.png", "--out", "o", *extra]))

    assert parsed().split_merged is None  # automatic: on for models with a diameter (test_instances)
    assert parsed("--split-merged", "OFF").split_merged is False
    assert parsed("--split-merged", "on").split_merged is True
    with pytest.raises(SystemExit):
        parsed("--split-merged", "maybe")
    assert "invalid choice: 'maybe'" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys) -> None:
    write_png(tmp_path / "a.png", _noise((20, 20)))
    code = main(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "none.onnx"), "--out", str(tmp_path)])
    assert code == 2 and "none.onnx" in capsys.readouterr().err


@pytest.mark.slow
def test_export_command_from_checkpoint(tmp_path) -> None:
    torch.manual_seed(1)
    net = UNet(width=2, depth=2, dropout=0)
    save_checkpoint(tmp_path / "c.pt", net, ModelMeta(name="c", unet=net.config))
    result = subprocess.run(
        [sys.executable, "-m", "unet_core", "export", str(tmp_path / "c.pt"), "--out", str(tmp_path / "c.onnx")],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "max |ONNX - PyTorch|" in result.stdout
    assert OnnxPredictor(tmp_path / "c.onnx", "cpu").meta.unet.depth == 2
    assert "Warning" not in result.stderr and "warning" not in result.stderr.lower()


def test_errors_escaping_a_command_are_a_message_or_an_internal_error(tmp_path, capsys, monkeypatch) -> None:
    """A user error no command caught is still one line (exit 2); a bug is logged with its traceback
    and said to be one (exit 3); neither is a bare traceback from Python."""
    from unet_core import cli
    from unet_core.datasets import DatasetError

    def user_problem(args):
        raise DatasetError("cells/: no data set layout found")

    def bug(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "cmd_synth", user_problem)  # build_parser looks the command up when it runs
    assert main(["synth", "--out", str(tmp_path / "s"), "--n", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: cells/: no data set layout found"
    monkeypatch.setattr(cli, "cmd_synth", bug)
    assert main(["-v", "synth", "--out", str(tmp_path / "s"), "--n", "1"]) == 3
    err = capsys.readouterr().err
    assert "internal error in synth" in err and "RuntimeError: boom" in err and "Traceback" in err
    assert "this is a bug in U-Net Studio" in err


def test_evaluate_on_the_split_another_model_records(tiny_model, tmp_path, capsys) -> None:
    """``--rule-from``: a model (or the baseline) scored on exactly another model's validation images,
    e.g. a final model trained on everything, on the images its predecessor held out."""
    import json

    from unet_core.export import to_onnx
    from unet_core.synthetic import SynthConfig, write_dataset

    data = write_dataset(tmp_path / "cells", 6, SynthConfig(height=64, width=80), seed=1)
    net = UNet(width=4, dropout=0).eval()
    rule = {"kind": "every_kth", "k": 3}
    recorder = to_onnx(net, ModelMeta(name="held", unet=net.config, training={"split_rule": rule}),
                       tmp_path / "held.onnx")
    args = ["evaluate", "--model", str(tiny_model[1]), "--data", str(data), "--split", "val", "--tile", "36",
            "--diameter", "off", "--tta", "off", "--per-image"]
    assert main(args) == 0
    own = json.loads(capsys.readouterr().out)
    assert main([*args, "--rule-from", str(recorder)]) == 0
    other = json.loads(capsys.readouterr().out)
    assert own["n_images"] == 2 and "'k': 5" in own["split"]  # the data set's own rule: every 5th of 6
    assert other["n_images"] == 2 and other["split"] == f"val split, rule {rule}"  # images 0 and 3
    assert [im["index"] for im in other["images"]] == [0, 3]
    # A final model trained on everything has no validation images of its own: the message says why.
    final = to_onnx(net, ModelMeta(name="final", unet=net.config, training={"split_rule": {"kind": "none"}}),
                    tmp_path / "final.onnx")
    assert main([*args[:2], str(final), *args[3:]]) == 2
    assert "trained on every image (split rule 'none'); give --rule-from" in capsys.readouterr().err
