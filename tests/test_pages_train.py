"""The Train and Evaluate pages in Streamlit's AppTest.

Train: the paper's defaults; a tiny real run started from the page, followed while it runs (a
second start is refused, naming it), and finished: curves, "Finished", its model in the menu; a
crashed run with its console. Evaluate: the tiny model on small synthetic images gives per-image
rows, mean metrics and the worst images; no model and a broken model are messages, not tracebacks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from apptest_helpers import APP, TIMEOUT, open_page, texts
from streamlit.testing.v1 import AppTest

from pages._common import MODEL_KEY
from unet_core import runtime
from unet_core.metadata import read_metadata
from unet_core.studio import jobs, runlock, runs
from unet_core.studio.registry import list_models
from unet_core.studio.sources import DataSource

SMALL_SYNTH = DataSource(n=4, size=64)


def number(at: AppTest, label: str):
    return next(n for n in at.number_input if n.label == label)


# --------------------------------------------------------------------------- Train


def test_on_a_cpu_the_quick_preset_comes_first(studio_dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cuda_driver_available", lambda: False)
    at = open_page("pages/train.py")
    assert not at.error
    assert number(at, "Width (features in the first layer)").value == 8
    assert number(at, "Steps").value == 300 and at.radio(key="train_optimizer").value == "adam"
    assert "About **" in texts(at.caption) and not at.checkbox  # minutes: no confirmation asked
    assert not at.button(key="train_start").disabled
    at.button[0].click().run()  # "Paper's settings": offered, with a word on the time it takes here
    assert number(at, "Width (features in the first layer)").value == 64
    assert "This computer has no GPU" in texts(at.caption)
    # Hours on a CPU: the time is shown and Start waits for a tick that confirms it.
    confirm = at.checkbox(key="train_confirm_long")
    assert confirm.label.startswith("Yes, start a run of about ") and " h " in confirm.label
    assert at.button(key="train_start").disabled and "tick the confirmation" in texts(at.caption)
    confirm.check().run()
    assert not at.button(key="train_start").disabled


def test_train_page_offers_the_papers_settings(studio_dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cuda_driver_available", lambda: True)  # a GPU: the paper's settings first
    at = open_page("pages/train.py")
    assert not at.error
    assert number(at, "Width (features in the first layer)").value == 64
    assert at.selectbox(key="train_tile").value == 388
    assert at.radio(key="train_optimizer").value == "sgd"
    assert number(at, "Momentum").value == 0.99 and number(at, "Learning rate").value == 0.01
    assert number(at, "Border weight w0").value == 10.0 and number(at, "Border width σ (pixels)").value == 5.0
    assert at.toggle(key="train_augment").value is True
    assert not at.button(key="train_start").disabled
    assert "held out for validation" in texts(at.caption)

    at.text_input(key="train_name").set_value("my run!").run()
    at.button(key="train_start").click().run()  # refused before anything starts
    assert not at.exception
    assert "The training did not start" in texts(at.error) and "cannot be a run name" in texts(at.error)
    assert not any(studio_dirs.runs.iterdir())

    at.button[1].click().run()  # "Quick try (CPU)"
    assert number(at, "Width (features in the first layer)").value == 8
    at.radio(key="train_optimizer").set_value("sgd").run()
    at.radio(key="train_optimizer").set_value("adam").run()
    assert number(at, "Learning rate").value == 0.001
    assert not any(n.label == "Momentum" for n in at.number_input)


def test_with_several_gpus_the_page_asks_how_many_to_train_on(studio_dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cuda_driver_available", lambda: True)
    monkeypatch.setattr(jobs, "gpu_count", lambda: 4)
    at = open_page("pages/train.py")
    assert not at.error
    gpus = number(at, "GPUs to train on")
    assert gpus.value == 1 and gpus.proto.max == 4  # the paper's one tile a step unless asked for more
    assert "This computer has **4 GPUs**" in texts(at.caption)
    monkeypatch.setattr(jobs, "gpu_count", lambda: 1)  # one GPU (or none): nothing to choose
    at = open_page("pages/train.py")
    assert not any(n.label == "GPUs to train on" for n in at.number_input) and "GPUs**" not in texts(at.caption)


def test_fine_tuning_keeps_the_models_width_and_gets_its_measured_settings(tiny_installed: Path) -> None:
    at = open_page("pages/train.py")
    assert at.selectbox(key="train_tile").value == 100  # no GPU here: the quick preset
    at.radio(key="train_start_from").set_value("model").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="train_init").value == str(tiny_installed)
    width = number(at, "Width (features in the first layer)")
    assert width.value == 4 and width.disabled
    assert (at.selectbox(key="train_tile").value, number(at, "Steps").value, number(at, "Learning rate").value,
            at.radio(key="train_optimizer").value) == (244, 300, 1e-4, "adam")
    at.radio(key="train_start_from").set_value("scratch").run()
    assert (at.selectbox(key="train_tile").value, number(at, "Learning rate").value) == (100, 0.001)


def test_the_bright_field_look_needs_a_model_with_a_diameter_and_reaches_the_trainer(
        studio_dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import random_net

    from unet_core.export import to_onnx
    from unet_core.metadata import ModelMeta

    net = random_net(seed=0)
    to_onnx(net, ModelMeta(name="nuclei-like", unet=net.config, diameter=12.0), studio_dirs.models / "a-d12.onnx")
    wide = random_net(seed=0, width=8)
    to_onnx(wide, ModelMeta(name="plain", unet=wide.config), studio_dirs.models / "b-plain.onnx")
    started = []
    monkeypatch.setattr(jobs, "start_run", lambda name, data, options, **kw: started.append(options))
    at = open_page("pages/train.py")
    toggle = next(t for t in at.toggle if t.label == "Bright-field look")
    assert toggle.disabled  # from scratch: no object diameter to size the cell bodies by
    at.radio(key="train_start_from").set_value("model").run()
    at.selectbox(key="train_init").set_value(str(studio_dirs.models / "b-plain.onnx")).run()
    assert next(t for t in at.toggle if t.label == "Bright-field look").disabled
    assert number(at, "Width (features in the first layer)").value == 8
    at.selectbox(key="train_init").set_value(str(studio_dirs.models / "a-d12.onnx")).run()
    assert "objects rescaled to 12 px across" in texts(at.caption)
    assert number(at, "Width (features in the first layer)").value == 4  # this model's width, not the last one's
    next(t for t in at.toggle if t.label == "Bright-field look").set_value(True).run()
    at.session_state["data_source"] = SMALL_SYNTH
    at.run()
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    (options,) = started
    assert (options["invert_prob"], options["cytoplasm_prob"]) == (0.3, 0.5)
    assert options["init"] == str(studio_dirs.models / "a-d12.onnx")
    # What the trainer makes of them: a valid config (the diameter comes from the init model).
    from unet_core.training.finetune import apply_init

    cfg = apply_init(jobs.new_run_config(studio_dirs.runs / "x", "synthetic", options))
    assert (cfg.diameter, cfg.invert_prob, cfg.cytoplasm_prob) == (12.0, 0.3, 0.5)


@pytest.mark.slow
def test_a_tiny_run_started_from_the_page_ends_with_its_model(studio_dirs) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["data_source"] = SMALL_SYNTH
    for key, value in {"train_width": 2, "train_tile": 36, "train_steps": 6, "train_val_every": 3,
                       "train_threads": 1, "train_name": "tiny-run", "train_border": True}.items():
        at.session_state[key] = value
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception and not at.error

    at.button(key="train_start").click().run()
    assert not at.exception
    assert not at.error, texts(at.error)
    assert "Training **tiny-run** started" in texts(at.success)
    # While it runs: the live view with its Stop button, and a second start is refused, naming it.
    # (importing torch and exporting alone keep the process alive for seconds)
    assert runlock.busy().run == "tiny-run"
    assert at.selectbox(key="train_run").value == "tiny-run"
    assert at.button(key="train_stop")
    assert at.button(key="train_start").disabled
    assert "**tiny-run** is training now" in texts(at.caption)
    assert jobs.wait("tiny-run", 180), "the tiny run did not end"

    at.run()
    assert not at.exception and not at.error
    assert "Finished after 6 steps" in texts(at.success)
    assert len(at.get("plotly_chart")) == 2  # loss and validation curves
    model = studio_dirs.runs / "tiny-run" / "model.onnx"
    assert model.is_file() and (studio_dirs.runs / "tiny-run" / "log.jsonl").is_file()
    assert [(m.name, m.source) for m in list_models()] == [("tiny-run", "run")]
    assert not at.button(key="train_start").disabled  # the machine is free again
    assert read_metadata(model).border_class == 2  # the "Outline class" switch reached the trainer

    at.button(key="train_use").click().run()  # (AppTest keeps no sidebar after switch_page: check the state)
    assert at.session_state[MODEL_KEY] == str(model)
    assert at.button(key="train_use").disabled  # "Active model"


def test_a_crashed_run_is_shown_with_what_it_wrote(studio_dirs) -> None:
    folder = studio_dirs.runs / "broken-run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"steps": 100, "checkpoint_every": 50, "width": 2,
                                                    "data": "synthetic"}))
    (folder / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "step_s": 0.1,
                                                          "elapsed": 0.1 * s}) + "\n" for s in range(1, 61)))
    (folder / runs.CONSOLE_NAME).write_text("step 60/100\nTraceback (most recent call last):\n  File x\n"
                                            "RuntimeError: DataLoader worker (pid 4242) is killed by signal\n")
    (folder / runs.JOB_NAME).write_text(json.dumps({"pid": 0, "started": time.time() - 60}))
    (folder / "last.pt").write_bytes(b"checkpoint")  # only its presence is looked at
    at = open_page("pages/train.py")
    assert not at.exception
    error = texts(at.error)
    assert "stopped unexpectedly at step 60 of 100" in error and "killed by signal" in error
    assert "about step 50" in error
    assert "RuntimeError" in texts(at.code)
    assert not at.button(key="train_resume").disabled

    assert not at.button(key="train_finish").disabled  # a checkpoint can be made a model

    (folder / "last.pt").unlink()  # stopped before its first checkpoint
    at.run()
    assert "no checkpoint yet (the first comes at step 50)" in texts(at.error).lower()
    assert "starts this run again from the beginning" in texts(at.error)
    assert at.button(key="train_finish").disabled

    # Rename it, then delete it: the delete button waits for the tick.
    at.text_input(key="train_new_name:broken-run").set_value("old-run").run()
    at.button(key="train_rename").click().run()
    assert not at.exception and "is now called **old-run**" in texts(at.success)
    assert not folder.exists() and (studio_dirs.runs / "old-run" / "log.jsonl").is_file()
    assert at.selectbox(key="train_run").value == "old-run"
    assert at.button(key="train_delete").disabled
    at.checkbox(key="train_delete_sure:old-run").check().run()
    at.button(key="train_delete").click().run()
    assert not at.exception and "deleted" in texts(at.success)
    assert not (studio_dirs.runs / "old-run").exists()


# --------------------------------------------------------------------------- Evaluate


@pytest.mark.slow
def test_evaluate_page_scores_the_tiny_model_per_image(tiny_installed: Path) -> None:
    at = open_page("pages/evaluate.py", {"data_source": DataSource(n=3, size=96)})
    assert not at.error
    assert at.selectbox(key="evaluate_model").value == str(tiny_installed)
    assert at.radio(key="evaluate_split").value == "all"  # not the data it was trained on
    at.button(key="evaluate_run").click().run()
    assert not at.exception and not at.error

    assert "argmax of the probabilities" in texts(at.info)
    labels = {m.label: m.value for m in at.metric}
    assert {"Pixel overlap (IoU) ↑", "Object score (AP) ↑", "Rand error ↓"} <= set(labels)
    assert all(v != "" for v in labels.values())
    comparison = at.dataframe[0].value  # the U-Net beside the classical baseline, same images
    assert list(comparison["images"]) == ["all images"] and list(comparison["n"]) == [3]
    baseline_ap = comparison["dsb_ap (baseline)"][0]
    assert baseline_ap is not None and 0.0 <= baseline_ap <= 1.0
    table = at.dataframe[1].value
    assert len(table) == 3 and list(table["Rank"]) == [1, 2, 3]
    report = at.session_state["evaluate_results"]["report"]
    assert [r.name for r in report.worst_first()] == list(table["Image"])
    assert "Look" not in table.columns and not any(r.look for r in report.rows)  # the tiny model has no diameter
    assert len(at.get("image")) == 9  # the 3 worst images: hand-drawn, model, differences

    at.radio(key="evaluate_split").set_value("val").run()  # other images: the results are out of date
    assert "press **Evaluate** to score again" in texts(at.info)


@pytest.mark.slow
def test_evaluate_page_says_each_images_look_for_a_model_with_a_diameter(studio_dirs, tiny_model) -> None:
    from unet_core.export import to_onnx
    from unet_core.look import LOOKS
    from unet_core.metadata import ModelMeta

    net, _ = tiny_model
    to_onnx(net, ModelMeta(name="tiny-scaled", unet=net.config, diameter=24.0), studio_dirs.models / "tiny-scaled.onnx")
    at = open_page("pages/evaluate.py", {"data_source": DataSource(n=2, size=96)})
    at.button(key="evaluate_run").click().run()
    assert not at.exception and not at.error
    report = at.session_state["evaluate_results"]["report"]
    table = at.dataframe[1].value
    assert list(table["Look"]) == [r.look or "no objects" for r in report.worst_first()]
    assert set(table["Look"]) <= {*LOOKS, "no objects"}


def test_evaluate_page_without_a_model_or_with_a_broken_one(studio_dirs) -> None:
    at = open_page("pages/evaluate.py")
    assert "No model yet" in texts(at.info)
    (studio_dirs.models / "broken.onnx").write_bytes(b"not a model")
    at = open_page("pages/evaluate.py")
    assert not at.exception
    assert "cannot be used" in texts(at.error) and "Choose another model" in texts(at.error)


def test_compare_overlay_marks_missed_and_extra_pixels() -> None:
    import numpy as np

    from unet_core.studio import visualize as viz

    base = np.full((10, 10, 3), 100, np.uint8)
    truth = np.zeros((10, 10), np.int32)
    pred = np.zeros((10, 10), np.int32)
    truth[1:5, 1:5] = 1  # drawn by hand only: missed
    pred[6:9, 6:9] = 1  # found by the model only: extra
    truth[0, 8], pred[0, 8] = 2, 2  # both agree
    out = viz.compare_overlay(base, pred, truth, alpha=1.0)
    assert tuple(out[2, 2]) == viz.MISSED_RGB
    assert tuple(out[6, 6]) == viz.OUTLINE_RGB and tuple(out[7, 7]) == viz.EXTRA_RGB
    assert tuple(out[5, 0]) == (100, 100, 100)  # background in both: the image
    assert out.dtype == np.uint8 and out.shape == base.shape
    with pytest.raises(ValueError):
        viz.compare_overlay(base, pred, truth, alpha=2.0)


def test_evaluate_page_starts_from_all_images_for_a_model_trained_on_every_one(studio_dirs) -> None:
    """A final model (split rule "none") trained on this very data set has no validation images:
    the page offers all of them first, not an empty part and an error."""
    from conftest import random_net

    from unet_core.export import to_onnx
    from unet_core.metadata import ModelMeta

    net = random_net(seed=0)
    training = {"data": "synthetic", "split_rule": {"kind": "none", "k": 5},
                "config": {"synth_n": 3, "synth_seed": 0, "synth": {"height": 96, "width": 96}}}
    to_onnx(net, ModelMeta(name="final", unet=net.config, training=training), studio_dirs.models / "final.onnx")
    at = open_page("pages/evaluate.py", {"data_source": DataSource(n=3, size=96)})
    assert not at.error
    assert "trained on this data set" in " ".join(c.value for c in at.caption)
    assert at.radio(key="evaluate_split").value == "all"
