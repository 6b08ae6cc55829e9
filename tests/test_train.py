"""Tests of unet_core.training and the train/evaluate/synth commands: tiny nets, small tiles, synthetic data."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unet_core.augment import AugmentConfig
from unet_core.checkpoint import read_checkpoint
from unet_core.model import UNet
from unet_core.runlog import STOP_FILE, read_log
from unet_core.training import TrainConfig, TrainError, train
from unet_core.training.data import make_tile
from unet_core.training.finetune import apply_init, load_init_weights, widen_input
from unet_core.training.loss import learning_rate, weighted_cross_entropy

REPO_ROOT = Path(__file__).resolve().parent.parent

# An easy synthetic set: few, separate, bright cells on 96 x 96 images.
EASY_SYNTH = {"height": 96, "width": 96, "n_cells": [4, 8], "radius": [8, 14], "noise": 0.01,
              "touching_fraction": 0.0}
TINY = {"data": "synthetic", "width": 4, "tile": 36, "synth_n": 10, "synth": EASY_SYNTH, "workers": 0, "threads": 1}
LOG_KEYS = {"step", "loss", "lr", "px_per_s", "data_wait", "step_s", "elapsed"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unet_core", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=_env(), timeout=timeout, check=False)


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(run / "log.jsonl") if "loss" in r}


# --------------------------------------------------------------------------- pure parts


def test_weighted_loss_equals_hand_computation() -> None:
    logits = torch.tensor([[[[2.0, 0.0], [1.0, -1.0]], [[0.0, 1.0], [1.0, 3.0]]]])  # (1, 2, 2, 2)
    target = torch.tensor([[[0, 1], [1, 0]]])
    weights = torch.tensor([[[1.0, 2.0], [0.0, 11.5]]])  # one pixel outside the image (weight 0)
    expected = 0.0
    for (i, j), w in np.ndenumerate(weights[0].numpy()):
        z = logits[0, :, i, j].tolist()
        p = math.exp(z[target[0, i, j]]) / sum(math.exp(v) for v in z)
        expected += w * -math.log(p)
    expected /= 3  # three pixels take part
    assert weighted_cross_entropy(logits, target, weights).item() == pytest.approx(expected, rel=1e-6)


def test_learning_rate_schedules() -> None:
    base = {"data": "synthetic", "lr": 0.1, "steps": 100}
    assert learning_rate(TrainConfig(**base), 1) == learning_rate(TrainConfig(**base), 100) == 0.1
    cos = TrainConfig(**base, schedule="cosine", warmup_steps=10, min_lr_factor=0.1)
    assert learning_rate(cos, 1) == pytest.approx(0.01) and learning_rate(cos, 10) == pytest.approx(0.1)
    assert learning_rate(cos, 100) == pytest.approx(0.01)
    assert learning_rate(cos, 11) > learning_rate(cos, 50) > learning_rate(cos, 99)
    step = TrainConfig(**base, schedule="step", lr_step_size=30, lr_gamma=0.5)
    assert [learning_rate(step, s) for s in (1, 30, 31, 61)] == pytest.approx([0.1, 0.1, 0.05, 0.025])


def test_config_round_trips_and_rejects_bad_values() -> None:
    cfg = TrainConfig(data="x", tile=36, augment=AugmentConfig(rotation_range=(0.0, 90.0)), split={"kind": "last_n",
                                                                                                  "k": 2})
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(TrainError, match="does not fit"):
        TrainConfig(tile=390)
    with pytest.raises(TrainError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    # Settings that used to end in a traceback deep in the weight map or the model.
    for bad, match in (({"sigma": 0.0}, "sigma"), ({"w0": -1.0}, "w0"), ({"momentum": 1.0}, "momentum"),
                       ({"width": 0}, "width"), ({"width": 10**6}, "width"), ({"dropout": 1.0}, "dropout")):
        with pytest.raises(TrainError, match=match):
            TrainConfig(**bad)


def test_tiles_are_a_function_of_seed_and_step_and_ignore_outside_pixels() -> None:
    from unet_core.training.data import TrainImage, step_rng

    rng0 = np.random.default_rng(0)
    img = TrainImage("a", rng0.random((40, 50, 1), dtype=np.float32), (rng0.random((40, 50)) > 0.5).astype(np.uint8),
                     np.ones((40, 50), np.float32))
    cfg = TrainConfig(data="x", tile=36, invert_prob=0.5)
    a = make_tile([[img]], [1.0], cfg, step_rng(3, 7))
    b = make_tile([[img]], [1.0], cfg, step_rng(3, 7))
    c = make_tile([[img]], [1.0], cfg, step_rng(3, 8))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (1, 220, 220) and a[1].shape == a[2].shape == (36, 36)
    # Without augmentation a tile is an exact crop; pixels past the image border weigh 0.
    plain = TrainConfig(data="x", tile=36, augment=AugmentConfig(enabled=False))
    _, y, w = make_tile([[img]], [1.0], plain, step_rng(0, 1))
    assert set(np.unique(w)) <= {0.0, 1.0} and 0 < (w > 0).sum() <= 36 * 36
    rows, cols = np.nonzero(w > 0)
    # The valid part of the label tile is a contiguous crop of the class map.
    crop = y[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    found = any(
        np.array_equal(img.classes[i : i + crop.shape[0], j : j + crop.shape[1]], crop)
        for i in range(40 - crop.shape[0] + 1) for j in range(50 - crop.shape[1] + 1)
    )
    assert found and len(rows) == crop.size


def test_category_power_weighs_each_category_by_its_image_count_to_that_power() -> None:
    from unet_core.training.data import TrainImage, category_pools, step_rng

    plane = np.zeros((4, 4), np.float32)
    images = [TrainImage(f"i{k}", plane[..., None], plane.astype(np.uint8), plane) for k in range(10)]
    categories = ["gray"] * 8 + ["color", None]
    pools, probs = category_pools(images, categories, 1.0)
    assert pools == [images] and probs == [1.0]  # every image equally often: one pool, as before
    pools, probs = category_pools(images, categories, 0.0, share=0.9)
    assert [len(p) for p in pools] == [8, 1, 1] and probs == pytest.approx([0.3, 0.3, 0.3])
    pools, probs = category_pools(images, categories, 0.5)
    assert probs == pytest.approx(np.array([8**0.5, 1, 1]) / (8**0.5 + 2))
    assert {id(i) for p in pools for i in p} == {id(i) for i in images}  # nothing lost or doubled
    assert category_pools(images, [None] * 10, 0.0) == ([images], [1.0])  # no categories: unaffected
    with pytest.raises(ValueError, match="categories"):
        category_pools(images, categories[:3], 0.5)
    # Tiles follow the probabilities: the one colour image (all foreground) gives a third of them.
    ones = np.ones((40, 40), np.float32)
    marked = [TrainImage("c", ones[..., None], ones.astype(np.uint8), ones) if c == "color" else
              TrainImage(f"g{k}", 0 * ones[..., None], (0 * ones).astype(np.uint8), ones)
              for k, c in enumerate(categories)]
    pools, probs = category_pools(marked, categories, 0.0)
    plain = TrainConfig(data="x", tile=36, augment=AugmentConfig(enabled=False))
    from_colour = [make_tile(pools, probs, plain, step_rng(0, step))[1].max() == 1 for step in range(300)]
    assert np.mean(from_colour) == pytest.approx(1 / 3, abs=0.07)


def test_a_run_with_category_power_draws_each_category_as_told(tmp_path: Path) -> None:
    """The run says what share of tiles each category of ``index.csv`` gets, and records the setting."""
    from unet_core.synthetic import SynthConfig, write_dataset

    data = write_dataset(tmp_path / "data", 6, SynthConfig(**EASY_SYNTH), seed=1)
    names = sorted(p.stem for p in (data / "images").iterdir())
    rows = [f"{n},{'gray' if k < 5 else 'color'}" for k, n in enumerate(names)]
    (data / "index.csv").write_text("id,category\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--split", "none", "--width", "4", "--tile", "36", "--steps", "1",
            "--val-every", "0", "--workers", "0", "--threads", "1", "--category-power", "0", "--out", str(out)]
    result = _cli(*args)
    assert result.returncode == 0, result.stderr
    assert "tiles per image category: gray 50 % (5 images), color 50 % (1 image)" in result.stdout + result.stderr
    assert json.loads((out / "config.json").read_text())["category_power"] == 0.0


def test_cytoplasm_probability_paints_inverted_tiles_only_keeps_their_labels_and_is_checked() -> None:
    """``cytoplasm_prob`` darkens the image of an inverted tile round its nucleus and leaves
    labels and weights alone (a cell body is background); tiles in fluorescence polarity never
    get a cell body; the option needs a diameter and inverted tiles to act on."""
    from unet_core.training.data import TrainImage, step_rng

    yy, xx = np.mgrid[:120, :120]
    nuclei = ((yy - 60) ** 2 + (xx - 60) ** 2 <= 64).astype(np.uint8)
    img = TrainImage("a", nuclei.astype(np.float32)[..., None], nuclei, np.ones((120, 120), np.float32))
    plain = {"data": "x", "tile": 36, "diameter": 16.0, "augment": AugmentConfig(enabled=False)}
    x0, y0, w0 = make_tile([[img]], [1.0], TrainConfig(**plain, invert_prob=1.0), step_rng(0, 1))
    x1, y1, w1 = make_tile([[img]], [1.0], TrainConfig(**plain, invert_prob=1.0, cytoplasm_prob=1.0),
                           step_rng(0, 1))
    assert np.array_equal(y0, y1) and np.array_equal(w0, w1)
    assert not np.array_equal(x0, x1) and (x1 <= x0).all()
    # invert_prob 1e-9: a valid configuration whose tiles are (all but surely) left upright.
    upright = [make_tile([[img]], [1.0], TrainConfig(**plain, invert_prob=1e-9, cytoplasm_prob=p),
                         step_rng(0, 2))[0] for p in (0.0, 1.0)]
    assert np.array_equal(*upright)
    with pytest.raises(TrainError, match="diameter"):
        TrainConfig(data="x", cytoplasm_prob=0.5, invert_prob=0.3)
    with pytest.raises(TrainError, match="invert-prob"):
        TrainConfig(data="x", cytoplasm_prob=0.5, diameter=16.0)


def test_augmented_tiles_keep_image_labels_and_weights_aligned() -> None:
    """With every geometric augmentation on (elastic, rotation, flips, shift, zoom), the image tile
    still shows the labels where the label tile has them, and the weights follow the labels."""
    from scipy import ndimage as ndi

    from unet_core.training.data import TrainImage, step_rng

    yy, xx = np.indices((300, 300))
    blobs = ((np.sin(yy / 9.0) + np.cos(xx / 13.0)) > 0.3).astype(np.uint8)
    # The image *is* the label map and the weights mark it too, so any misalignment shows.
    img = TrainImage("a", blobs[..., None].astype(np.float32), blobs, 1.0 + blobs.astype(np.float32))
    geometric = AugmentConfig(gamma=False, contrast=False, brightness=False, scale=True, scale_range=(0.7, 1.4))
    cfg = TrainConfig(data="x", tile=36, augment=geometric)
    margin = (cfg.geometry.input_size(36) - 36) // 2
    for step in range(12):
        x, y, w = make_tile([[img]], [1.0], cfg, step_rng(5, step))
        inner = x[0, margin : margin + 36, margin : margin + 36]
        # Away from label edges (where interpolation blends), the image's class is the label.
        steady = (ndi.minimum_filter(y, 3) == ndi.maximum_filter(y, 3)) & (w > 0)
        assert steady.sum() > 50  # tiles may reach past the image, where the weights are 0
        np.testing.assert_array_equal((inner > 0.5)[steady], y[steady].astype(bool))
        # Weights are interpolated linearly (labels by nearest): compare one pixel further inside.
        inside = ndi.binary_erosion(steady, np.ones((3, 3)))
        np.testing.assert_allclose(w[inside], 1.0 + y[inside], atol=0.05)  # misaligned: off by 1


@pytest.mark.parametrize("native", [False, True])
def test_automatic_precision_is_bf16_channels_last_only_where_the_cpu_computes_in_bf16(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    # The two capability checks of torch this machine answers either way: both answers are run.
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: native, raising=False)
    out = tmp_path / "run"
    train(TrainConfig(**TINY, out=str(out), steps=3, val_every=0, export=False, device="cpu"), progress=False)
    start = next(r for r in read_log(out / "log.jsonl") if r.get("event") == "start")
    assert start["precision"] == ("bf16" if native else "none")
    assert read_checkpoint(out / "last.pt")["config"]["amp"] == "auto"  # resolved again where it resumes
    weight = read_checkpoint(out / "last.pt")["model"]["down.1.0.weight"]  # 4 -> 8 channels, 3x3
    assert weight.is_contiguous(memory_format=torch.channels_last) is native
    assert weight.is_contiguous() is not native


# --------------------------------------------------------------------------- a finished run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny run with validation and export (paper recipe: SGD, momentum 0.99)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(**TINY, out=str(out), steps=40, val_every=20, checkpoint_every=10, optimizer="sgd", lr=0.01,
                      augment=AugmentConfig(enabled=False))
    train(cfg, progress=False)
    return out


@pytest.mark.slow
def test_loss_decreases_on_an_easy_synthetic_set(finished_run: Path) -> None:
    losses = [v for _, v in sorted(_losses(finished_run).items())]
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


def test_log_lines_parse_and_hold_the_keys(finished_run: Path) -> None:
    lines = (finished_run / "log.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line is JSON
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 41))
    for r in steps:
        assert LOG_KEYS <= r.keys()
        assert 0.0 <= r["data_wait"] <= 1.0 and r["px_per_s"] > 0 and r["lr"] == 0.01
    val = [r for r in steps if "val" in r]
    assert [r["step"] for r in val] == [20, 40]
    for key in ("pixel_error", "rand_error", "foreground_iou", "dsb_ap"):
        assert key in val[0]["val"]
    assert rows[0]["event"] == "start" and rows[-1]["event"] == "done"


def test_run_folder_keeps_config_manifest_versions(finished_run: Path) -> None:
    cfg = TrainConfig.load(finished_run / "config.json")
    assert cfg.width == 4 and cfg.steps == 40 and cfg.tile == 36
    manifest = json.loads((finished_run / "manifest.json").read_text())
    assert manifest["split_rule"] == {"kind": "every_kth", "k": 5}
    parts = [s["part"] for s in manifest["samples"]]
    assert parts.count("val") == 2 and parts.count("train") == 8 and manifest["synthetic"]["n"] == 10
    versions = json.loads((finished_run / "versions.json").read_text())
    assert versions["torch"] == torch.__version__ and "numpy" in versions and "python" in versions
    for name in ("last.pt", "best.pt", "model.onnx", "model.md"):
        assert (finished_run / name).is_file(), name
    ckpt = read_checkpoint(finished_run / "last.pt")  # weights_only=True
    assert ckpt["step"] == 40 and "optimizer" in ckpt
    # A checkpoint evaluated mid-run knows its split (evaluate --split val reads it from here).
    assert ckpt["meta"]["training"]["split_rule"] == {"kind": "every_kth", "k": 5}


def test_exported_model_loads_and_carries_the_split_rule(finished_run: Path) -> None:
    from unet_core.runtime import OnnxPredictor

    predictor = OnnxPredictor(finished_run / "model.onnx", device="cpu")
    meta = predictor.meta
    assert meta.name == "tiny" and meta.unet.width == 4 and meta.class_names == ["background", "foreground"]
    assert meta.training["split_rule"] == {"kind": "every_kth", "k": 5}
    assert meta.training["data"] == "synthetic" and meta.training["steps"] == 40
    assert meta.training["config"]["optimizer"] == "sgd"
    start = next(r for r in read_log(finished_run / "log.jsonl") if r.get("event") == "start")
    assert meta.training["precision"] == start["precision"] in ("none", "bf16")  # what it trained in
    x = np.random.default_rng(0).random((1, 1, 220, 220), dtype=np.float32)
    assert predictor.predict_batch(x).shape == (1, 2, 36, 36)
    card = (finished_run / "model.md").read_text()
    assert "split" in card and "argmax" in card and "dsb_ap" in card
    assert ("bf16 autocast" if start["precision"] == "bf16" else "; fp32") in card


def test_init_from_onnx_reproduces_the_weights(finished_run: Path, tmp_path: Path) -> None:
    best = read_checkpoint(finished_run / "best.pt")["model"]
    state, meta = load_init_weights(finished_run / "model.onnx")
    net = UNet.from_config(meta.unet)
    net.load_state_dict(state)  # strict: every parameter is in the ONNX file
    for k, v in best.items():
        assert torch.equal(net.state_dict()[k], v), k
    # A fine-tuning run takes the architecture and the weights of the init model.
    cfg = TrainConfig(**{**TINY, "width": 8}, out=str(tmp_path / "ft"), steps=1, val_every=0, export=False,
                      optimizer="adam", lr=1e-12, init=str(finished_run / "model.onnx"))
    train(cfg, progress=False)
    assert TrainConfig.load(tmp_path / "ft" / "config.json").width == 4
    tuned = read_checkpoint(tmp_path / "ft" / "last.pt")["model"]
    for k, v in best.items():
        assert torch.allclose(tuned[k], v, atol=1e-6), k


def test_fine_tuning_keeps_the_init_models_object_diameter_unless_given_another(tmp_path: Path) -> None:
    from conftest import random_net

    from unet_core.export import to_onnx
    from unet_core.metadata import ModelMeta

    net = random_net(seed=0)
    scaled, plain = tmp_path / "d12.onnx", tmp_path / "plain.onnx"
    to_onnx(net, ModelMeta(name="d12", unet=net.config, diameter=12.0), scaled)
    to_onnx(net, ModelMeta(name="plain", unet=net.config), plain)
    base = {**TINY, "out": str(tmp_path / "ft")}
    # Without it the user's images would be shown at their own scale to weights that know 12 px
    # objects, and the tuned model would lose the scale search.
    assert apply_init(TrainConfig(**base, init=str(scaled))).diameter == 12.0
    assert apply_init(TrainConfig(**base, init=str(scaled), diameter=30.0)).diameter == 30.0
    assert apply_init(TrainConfig(**base, init=str(plain))).diameter is None
    # Synthetic cell bodies are sized by that diameter: allowed from the scaled model, refused from the other.
    bodies = {"invert_prob": 0.3, "cytoplasm_prob": 0.5}
    assert apply_init(TrainConfig(**base, init=str(scaled), **bodies)).cytoplasm_prob == 0.5
    with pytest.raises(TrainError, match="diameter"):
        apply_init(TrainConfig(**base, init=str(plain), **bodies))


def test_fine_tuning_continues_the_init_models_recipe_where_not_told_otherwise(tmp_path: Path) -> None:
    """Class weights, weight map, augmentation and polarity inversion come from the model's saved
    config (its w_c = 1 kept a fine-tuned nuclei model's AP where the default balance cost a
    quarter of it); what the command line or the page gives wins; from scratch, the defaults."""
    from conftest import random_net

    from unet_core.cli import _train_config, build_parser
    from unet_core.config import config_from_settings, init_recipe
    from unet_core.export import to_onnx
    from unet_core.metadata import ModelMeta

    net = random_net(seed=0)
    recipe = {"class_weights": None, "w0": 7.0, "invert_prob": 0.3, "cytoplasm_prob": 0.5, "lr": 0.5,
              "augment": {**dataclasses.asdict(AugmentConfig()), "scale": True, "scale_range": [0.6, 1.7]}}
    model = tmp_path / "taught.onnx"
    to_onnx(net, ModelMeta(name="taught", unet=net.config, diameter=12.0, training={"config": recipe}), model)
    assert set(init_recipe(model)) == {"class_weights", "w0", "invert_prob", "cytoplasm_prob", "augment"}
    assert init_recipe(None) is None

    def cli(*extra: str) -> TrainConfig:
        args = build_parser().parse_args(["train", "--data", "synthetic", "--out", str(tmp_path / "ft"), *extra])
        return _train_config(args)

    tuned = cli("--init", str(model))
    assert (tuned.class_weights, tuned.w0, tuned.invert_prob, tuned.cytoplasm_prob) == (None, 7.0, 0.3, 0.5)
    assert tuned.augment.scale and tuned.augment.scale_range == (0.6, 1.7)
    assert tuned.lr == TrainConfig(data="x").lr  # how fast is not the recipe
    told = cli("--init", str(model), "--w0", "10", "--class-balance", "--invert-prob", "0", "--cytoplasm-prob", "0")
    assert (told.class_weights, told.w0, told.invert_prob) == ("balanced", 10.0, 0.0)
    assert cli().class_weights == "balanced" and not cli().augment.scale  # from scratch: the defaults
    page = config_from_settings({"data": "synthetic", "init": str(model), "augment": True}, init_recipe(model))
    assert page.class_weights is None and page.augment.scale  # the page's "augment" switch keeps the recipe's
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(TrainError, match="cannot read the model to start from"):
        init_recipe(tmp_path / "broken.onnx")


def test_a_gray_init_model_widened_to_colour_starts_from_its_luminance_view(finished_run: Path,
                                                                          tmp_path: Path) -> None:
    from unet_core.io import LUMA
    from unet_core.model import FIRST_CONV_WEIGHT

    state, meta = load_init_weights(finished_run / "model.onnx")
    widened = widen_input(state, 3)
    assert widened[FIRST_CONV_WEIGHT].shape[1] == 3 and state[FIRST_CONV_WEIGHT].shape[1] == 1
    gray_net, rgb_net = UNet.from_config(meta.unet).eval(), UNet.from_config(
        dataclasses.replace(meta.unet, in_channels=3)).eval()
    gray_net.load_state_dict(state)
    rgb_net.load_state_dict(widened)
    rgb = torch.rand(1, 3, 188, 188)  # the smallest valid input of a depth-4 net
    luminance = (rgb * torch.from_numpy(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    with torch.no_grad():  # what the gray model sees of a colour image is what the widened one computes
        torch.testing.assert_close(rgb_net(rgb), gray_net(luminance), atol=1e-5, rtol=1e-4)
    with pytest.raises(TrainError, match="1-channel"):
        widen_input(widened, 4)
    # Through the trainer: --in-channels 3 with a gray --init model gives a colour run.
    cfg = TrainConfig(**TINY, out=str(tmp_path / "rgb"), steps=1, val_every=0, export=False, in_channels=3,
                      init=str(finished_run / "model.onnx"))
    train(cfg, progress=False)
    assert TrainConfig.load(tmp_path / "rgb" / "config.json").in_channels == 3
    assert read_checkpoint(tmp_path / "rgb" / "last.pt")["model"][FIRST_CONV_WEIGHT].shape[1] == 3


@pytest.mark.slow
def test_every_setting_is_one_command_line_option_checked_where_the_config_is(tmp_path: Path) -> None:
    from unet_core.cli import build_parser
    from unet_core.config import config_from_settings, settings_schema

    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {o for a in train_parser._actions for o in a.option_strings}
    schema = settings_schema()
    assert {row["flag"] for row in schema} <= flags and len(schema) > 50
    args = train_parser.parse_args(["--out", "x", "--no-augment", "--percentiles", "2", "99", "--split", "last_n:3",
                                    "--hold-out-groups", "a,b", "--lr", "0.5"])
    cfg = config_from_settings({row["name"]: getattr(args, row["name"]) for row in schema})
    assert (cfg.augment.enabled, cfg.normalisation.low_percentile, cfg.split, cfg.lr) == (
        False, 2.0, {"kind": "last_n", "k": 3, "groups": ["a", "b"]}, 0.5)
    result = _cli("train", "--data", "synthetic", "--out", str(tmp_path / "r"), "--sigma", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "sigma must lie in [0.1, 100], not 0" in result.stderr


@pytest.mark.slow
def test_an_init_checkpoint_with_hostile_metadata_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}, "meta": {"unet": {"width": -4}}}, bad)
    with pytest.raises(TrainError, match="width -4"):
        load_init_weights(bad)
    result = _cli("train", "--data", "synthetic", "--out", str(tmp_path / "r"), "--init", str(bad), "--steps", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "width -4" in result.stderr


def test_refuses_to_overwrite_a_run_without_resume(finished_run: Path) -> None:
    with pytest.raises(TrainError, match="--resume"):
        train(TrainConfig(**TINY, out=str(finished_run), steps=2), progress=False)


# --------------------------------------------------------------------------- resume after kill -9


@pytest.mark.slow
def test_resume_after_sigkill_replays_the_losses_exactly(tmp_path: Path) -> None:
    steps = 30
    args = ["--data", "synthetic", "--width", "3", "--tile", "20", "--steps", str(steps), "--synth-n", "8",
            "--synth-size", "72", "--checkpoint-every", "2", "--val-every", "0", "--no-export", "--workers", "1",
            "--threads", "1", "--seed", "5", "--quiet"]
    ref = _cli("train", "--out", str(tmp_path / "ref"), *args)
    assert ref.returncode == 0, ref.stderr
    expected = _losses(tmp_path / "ref")
    assert sorted(expected) == list(range(1, steps + 1))

    run = tmp_path / "killed"
    # The kill moment varies from run to run but is reproducible: the seed is in the failure message.
    seed = int(os.environ.get("UNET_STUDIO_KILL_SEED") or time.time_ns() % 10**6)
    rng = random.Random(seed)
    kill_after = rng.randint(2, steps - 4)  # steps logged before the kill, then a random extra delay
    proc = subprocess.Popen([sys.executable, "-m", "unet_core", "train", "--out", str(run), *args], cwd=REPO_ROOT,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if len(_losses(run)) >= kill_after:
            time.sleep(rng.uniform(0.0, 0.05))
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _losses(run)
    assert len(before) < steps, "the run finished before it could be killed"

    resumed = _cli("train", "--out", str(run), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    got = _losses(run)
    assert sorted(got) == list(range(1, steps + 1))
    for s in range(1, steps + 1):
        assert abs(got[s] - expected[s]) <= 1e-6, (f"UNET_STUDIO_KILL_SEED={seed}", s, got[s], expected[s])
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "stop file"])
def test_a_stop_request_ends_the_run_after_the_step_with_its_checkpoint(tmp_path: Path, how: str) -> None:
    """The app's Stop loses no step: SIGTERM (POSIX) or the stop request file (every system, the
    only way on Windows, where terminating a process kills it) ends the run with its checkpoint."""
    run = tmp_path / "stopped"
    run.mkdir()
    (run / STOP_FILE).write_text("left from an earlier stop\n")  # must not stop this run
    args = ["--data", "synthetic", "--width", "3", "--tile", "20", "--steps", "500", "--synth-n", "4",
            "--synth-size", "72", "--checkpoint-every", "1000", "--val-every", "0", "--workers", "1",
            "--threads", "1", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "unet_core", "train", "--out", str(run), *args], cwd=REPO_ROOT,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(_losses(run)) < 5:
        time.sleep(0.01)
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        (run / STOP_FILE).write_text("stop\n")
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    logged = max(_losses(run))
    assert 5 <= logged < 500
    assert read_checkpoint(run / "last.pt")["step"] == logged
    assert read_log(run / "log.jsonl")[-1] == {"event": "stopped", "step": logged}
    assert not (run / "model.onnx").exists() and not (run / STOP_FILE).exists()


# --------------------------------------------------------------------------- evaluate and synth commands


@pytest.mark.slow
def test_synth_and_evaluate_commands(finished_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "synth"
    made = _cli("synth", "--out", str(data), "--n", "5", "--seed", "3", "--size", "96")
    assert made.returncode == 0, made.stderr
    assert len(list((data / "images").glob("*.png"))) == 5
    report = tmp_path / "report.md"
    res = _cli("evaluate", "--model", str(finished_run / "model.onnx"), "--data", str(data), "--split", "all",
               "--tile", "36", "--report", str(report))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["n_images"] == 5 and out["kind"] == "instance"
    for key in ("pixel_error", "rand_error", "foreground_iou", "dsb_ap", "seg"):
        assert key in out["metrics"]
    assert 0.0 <= out["metrics"]["foreground_iou"] <= 1.0
    text = report.read_text()
    assert "argmax" in text and "worst first" in text and text.count("\n| ") >= 5


def test_evaluate_command_missing_data_folder(finished_run: Path, tmp_path: Path) -> None:
    res = _cli("evaluate", "--model", str(finished_run / "model.onnx"), "--data", str(tmp_path / "nope"))
    assert res.returncode != 0
    assert "no such folder" in res.stderr and str(tmp_path / "nope") in res.stderr
    assert res.stdout == ""


@pytest.mark.slow
def test_train_command_reports_a_bad_data_folder(tmp_path: Path) -> None:
    res = _cli("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--tile", "36")
    assert res.returncode == 2 and "no such folder" in res.stderr


def test_touching_cells_get_a_weighted_background_line(tmp_path: Path) -> None:
    """The paper's separation borders: touching instances are cut apart in the class map."""
    from unet_core.synthetic import synthetic_dataset
    from unet_core.training.data import prepare_image

    ds = synthetic_dataset(1, seed=0)
    instances = ds.load_instances(0)
    cfg = TrainConfig(data="synthetic", out=str(tmp_path / "r"), width=4, tile=36)
    prepared = prepare_image(ds, 0, cfg)
    cut = (instances > 0) & (prepared.classes == 0)
    assert cut.sum() > 20, "the generator makes touching cells; each contact loses a line of pixels"
    assert prepared.weights[cut].mean() > 5.0, "the border term acts on the cut lines"
    plain = prepare_image(ds, 0, TrainConfig(data="synthetic", out=str(tmp_path / "p"), width=4, tile=36,
                                             separate_touching=False))
    assert np.array_equal(plain.classes, (instances > 0).astype(np.uint8))


@pytest.mark.slow
def test_a_border_class_run_widens_its_init_model_and_exports_the_object_rule(finished_run: Path,
                                                                            tmp_path: Path) -> None:
    """``border_width``: a third class on the outlines, from a two-class init model whose
    foreground output it copies, exported with the rule that turns the classes into objects."""
    from unet_core.model import HEAD_BIAS, HEAD_WEIGHT
    from unet_core.runtime import OnnxPredictor
    from unet_core.training.finetune import add_border_class

    state, meta = load_init_weights(finished_run / "model.onnx")
    widened = add_border_class(state, 3)
    assert torch.equal(widened[HEAD_WEIGHT][2], state[HEAD_WEIGHT][1])
    assert torch.equal(widened[HEAD_BIAS][:2], state[HEAD_BIAS]) and widened[HEAD_BIAS][2] == state[HEAD_BIAS][1] - 1
    net2, net3 = UNet.from_config(meta.unet).eval(), UNet.from_config(dataclasses.replace(meta.unet, n_classes=3)).eval()
    net2.load_state_dict(state)
    net3.load_state_dict(widened)
    x = torch.rand(1, 1, 188, 188)
    with torch.no_grad():  # it starts out finding the objects the two-class model found, as interior
        assert torch.equal(net3(x).argmax(1).clamp(max=1), net2(x).argmax(1))
    with pytest.raises(TrainError, match="2-class"):
        add_border_class(widened, 4)

    cfg = TrainConfig(**TINY, out=str(tmp_path / "rim"), steps=2, val_every=2, border_width=1,
                      init=str(finished_run / "model.onnx"))
    train(cfg, progress=False)
    predictor = OnnxPredictor(tmp_path / "rim" / "model.onnx", device="cpu")
    assert predictor.meta.class_names == ["background", "foreground", "border"]
    assert predictor.meta.foreground_classes == [1, 2] and predictor.meta.border_class == 2
    assert predictor.predict_batch(np.zeros((1, 1, 220, 220), np.float32)).shape == (1, 3, 36, 36)
    assert "grown over the border class 2" in (tmp_path / "rim" / "model.md").read_text()
    # Fine-tuned further, a border-class model keeps its outline class and width.
    train(TrainConfig(**TINY, out=str(tmp_path / "again"), steps=1, export=False,
                      init=str(tmp_path / "rim" / "model.onnx")), progress=False)
    again = TrainConfig.load(tmp_path / "again" / "config.json")
    assert again.border_width == 1 and again.class_names == ["background", "foreground", "border"]


def test_border_width_is_checked_with_the_class_names() -> None:
    assert TrainConfig(border_width=2).n_classes == 3 and TrainConfig().border_class is None
    assert TrainConfig(border_width=2).border_class == 2
    with pytest.raises(TrainError, match="border_width"):
        TrainConfig(border_width=9)
    with pytest.raises(TrainError, match="2 class names for a 3-class network with a border"):
        TrainConfig(border_width=2, class_names=["background", "nucleus"])
