"""int8 quantization (:mod:`unet_core.quantize`) and the depth-to-space export it starts from.

One small model is trained for a few steps on a generated data set and quantized once per module:
a random network's classes sit near 50/50 everywhere, which says little about int8 fidelity.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from streamlit.testing.v1 import AppTest
from torch import nn

from unet_core.cli import main
from unet_core.datasets import SplitRule, open_dataset
from unet_core.export import (
    ChannelsLastFirstConv,
    ChannelsLastHead,
    DepthToSpaceUpConv,
    depth_to_space,
    state_dict_from_onnx,
    to_onnx,
    upconv_from_1x1,
    upconv_to_1x1,
)
from unet_core.inference import InferenceOptions, segment
from unet_core.io import Normalisation, fit_stretch, read_image, to_channels
from unet_core.metadata import METADATA_KEY, ModelMeta
from unet_core.model import UNet
from unet_core.quantize import (
    QuantizeError,
    QuantizeOptions,
    calibration_set,
    describe,
    float_convolutions,
    optimised_graph,
    quantize_model,
    sha256_of,
    training_indices,
)
from unet_core.runtime import ModelLoadError, OnnxPredictor, inspect_onnx, load_predictor
from unet_core.studio.registry import list_models, read_card
from unet_core.synthetic import SynthConfig, write_dataset

REPO = Path(__file__).resolve().parent.parent
# every 3rd image is validation: of 3 images, image 0 is held out and 1, 2 are for training.
SPLIT = {"kind": "every_kth", "k": 3}


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load_model(str(path)).graph.node]


# --------------------------------------------------------------------------- depth-to-space export


@pytest.mark.parametrize(("c_in", "c_out"), [(1, 1), (3, 2), (16, 8)])
def test_upconv_equals_1x1_conv_and_pixel_shuffle(c_in: int, c_out: int) -> None:
    torch.manual_seed(c_in)
    up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
    with torch.no_grad():
        up.bias.uniform_(-1, 1)
    rewritten = DepthToSpaceUpConv.from_conv_transpose(up)
    x = torch.randn(2, c_in, 5, 7)
    with torch.no_grad():
        assert torch.allclose(rewritten(x), up(x), atol=1e-6)
    weight, bias = upconv_from_1x1(*upconv_to_1x1(up.weight.detach(), up.bias.detach()))
    assert torch.equal(weight, up.weight.detach()) and torch.equal(bias, up.bias.detach())


def test_channels_last_head_equals_the_1x1_convolution() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 3, 1)
    head = ChannelsLastHead.from_conv(conv)
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        assert torch.allclose(head(x), conv(x), atol=1e-6)
    assert tuple(head.weight.shape) == (8, 3)


def test_channels_last_first_layer_equals_the_convolution_and_its_relu() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 5, 3)
    first = ChannelsLastFirstConv.from_conv(conv)
    x = torch.randn(2, 3, 9, 12)
    with torch.no_grad():
        assert torch.allclose(first(x), F.relu(conv(x)), atol=1e-6)
    assert tuple(first.weight.shape) == (27, 5)
    with pytest.raises(ValueError, match="unpadded 3x3"):
        ChannelsLastFirstConv.from_conv(nn.Conv2d(3, 5, 3, padding=1))


def test_depth_to_space_is_onnx_dcr_order() -> None:
    x = torch.randn(2, 12, 3, 5)
    ours = depth_to_space(x)
    # ONNX DepthToSpace, mode DCR, blocksize 2 (its definition): reshape, transpose, reshape
    reference = x.reshape(2, 2, 2, 3, 3, 5).permute(0, 3, 4, 1, 5, 2).reshape(2, 3, 6, 10)
    assert torch.equal(ours, reference)
    assert torch.equal(ours[:, :, 1::2, 0::2], x[:, 6:9])  # sub-pixel (a, b) = (1, 0) is channel group 2


def test_only_plain_up_convolutions_are_rewritten(tiny_model, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2x2 stride-2"):
        DepthToSpaceUpConv.from_conv_transpose(nn.ConvTranspose2d(4, 2, 3, stride=2))
    net, _ = tiny_model
    with pytest.raises(ValueError, match="form must be one of"):
        to_onnx(net, ModelMeta(name="tiny", unet=net.config), tmp_path / "x.onnx", form="pixelshuffle")
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def d2s_model(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny fixture network exported in the int8 source form with an fp32 first layer."""
    net, _ = tiny_model
    return to_onnx(net, ModelMeta(name="tiny", unet=net.config), tmp_path_factory.mktemp("d2s") / "tiny-d2s.onnx",
                   form="int8-float-first")


@pytest.mark.slow
def test_depth_to_space_export_gives_the_same_probabilities(tiny_model, d2s_model: Path) -> None:
    net, plain = tiny_model
    assert "ConvTranspose" in _ops(plain)
    graph = onnx.load_model(str(d2s_model)).graph
    # written channels-last: one swap of the two sub-pixel axes per up-convolution, no DepthToSpace
    swaps = [n for n in graph.node if n.op_type == "Transpose"
             and list(onnx.helper.get_attribute_value(n.attribute[0])) == [0, 1, 3, 2, 4, 5]]
    assert "ConvTranspose" not in _ops(d2s_model) and "DepthToSpace" not in _ops(d2s_model)
    assert len(swaps) == net.config.depth
    # the first layer and the head are matrix products: 23 - 2 convolutions left
    assert _ops(d2s_model).count("Conv") == 21 and _ops(d2s_model).count("MatMul") == 2
    assert isinstance(net.up[0].up, nn.ConvTranspose2d)  # the caller's network is left as it was
    assert isinstance(net.down[0][0], nn.Conv2d)
    x = np.random.default_rng(0).random((2, 1, 252, 284), dtype=np.float32)
    a = OnnxPredictor(plain, device="cpu").predict_batch(x)
    b = OnnxPredictor(d2s_model, device="cpu").predict_batch(x)
    assert float(np.abs(a - b).max()) < 1e-5


def test_state_dict_from_onnx_reads_the_depth_to_space_export_back(tiny_model, d2s_model: Path) -> None:
    net, _ = tiny_model
    weights = state_dict_from_onnx(d2s_model)
    reference = net.state_dict()
    assert set(weights) == set(reference)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    UNet.from_config(net.config).load_state_dict(weights)  # strict: fine-tuning can start from it


def test_state_dict_from_onnx_refuses_a_1x1_conv_with_no_equal_upconv(d2s_model: Path, tmp_path: Path) -> None:
    proto = onnx.load_model(str(d2s_model))
    bias = next(t for t in proto.graph.initializer if t.name == "net.up.0.up.conv1x1.bias")
    values = onnx.numpy_helper.to_array(bias).copy()
    values[1] += 0.5  # the four sub-pixel biases of output channel 0 now differ
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save_model(proto, str(tmp_path / "edited.onnx"))
    with pytest.raises(ValueError, match="four biases"):
        state_dict_from_onnx(tmp_path / "edited.onnx")


# --------------------------------------------------------------------------- a trained model, quantized


@dataclass(frozen=True)
class Quantized:
    data: Path
    fp32: Path
    int8: Path
    net: UNet


def _train_briefly(data: Path, steps: int = 30) -> UNet:
    """A width-8 U-Net after ``steps`` Adam steps on random crops of the training images."""
    ds = open_dataset(data)
    rule = SplitRule.from_dict(SPLIT)
    images, labels = [], []
    for i in ds.split_indices("train", rule):
        raw = ds.load_image(i)
        images.append(fit_stretch(raw[None], 1, Normalisation())(to_channels(raw, 1))[..., 0])
        labels.append(ds.load_classes(i))
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = UNet(width=8, dropout=0)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    side, out = 220, 36
    margin = (side - out) // 2
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(2):
            k = int(rng.integers(len(images)))
            padded = np.pad(images[k], margin, mode="reflect")
            y0, x0 = (int(v) for v in rng.integers(0, np.array(labels[k].shape) - out))
            xs.append(padded[y0 : y0 + side, x0 : x0 + side])
            ys.append(labels[k][y0 : y0 + out, x0 : x0 + out])
        x = torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))
        loss = F.cross_entropy(net(x), torch.from_numpy(np.stack(ys).astype(np.int64)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Quantized:
    root = tmp_path_factory.mktemp("quantize")
    data = write_dataset(root / "cells", 3, SynthConfig(height=256, width=256), seed=0)
    net = _train_briefly(data)
    meta = ModelMeta(name="cells", unet=net.config, training={"data": str(data), "split_rule": SPLIT})
    fp32 = to_onnx(net, meta, root / "cells.onnx")
    # data=None: the model's recorded training data; the default output name cells-int8.onnx.
    result = quantize_model(fp32, None, None, QuantizeOptions(tiles=8, tile=100))
    assert result.path == root / "cells-int8.onnx"
    return Quantized(data, fp32, result.path, net)


@pytest.mark.slow
def test_calibration_uses_only_training_images(quantized: Quantized) -> None:
    meta = inspect_onnx(quantized.fp32)
    ds = open_dataset(quantized.data)
    assert training_indices(meta, ds) == [1, 2]
    calib = calibration_set(meta, None, QuantizeOptions(tiles=5, tile=100))
    assert sorted(calib.images) == sorted(ds.samples[i].name for i in (1, 2))
    # inference's tile: 100 px output + 2 x 92 px context, normalised (about 0..1)
    assert calib.tiles.shape == (5, 1, 284, 284) and calib.tiles.dtype == np.float32
    assert -0.5 < float(calib.tiles.mean()) < 1.5


def test_int8_classes_agree_with_fp32_on_a_validation_image(quantized: Quantized) -> None:
    image = read_image(open_dataset(quantized.data).samples[0].image_path)  # held out: not calibrated on
    options = InferenceOptions(tile=196, keep_probs=True)
    fp32 = segment(image, load_predictor(quantized.fp32, "cpu"), options)
    int8 = segment(image, load_predictor(quantized.int8, "cpu"), options)
    assert 0.05 < float(fp32.labels.mean()) < 0.95  # the model found objects: agreement means something
    assert float((fp32.labels == int8.labels).mean()) >= 0.95
    assert float(np.abs(fp32.probs - int8.probs).max()) < 0.5


def _session(path: Path, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def test_full_and_no_graph_optimisation_agree(quantized: Quantized) -> None:
    tiles = calibration_set(inspect_onnx(quantized.fp32), None, QuantizeOptions(tiles=2, tile=132, seed=1)).tiles
    full, none = (_session(quantized.int8, level).run(["probabilities"], {"image": tiles})[0]
                  for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL))
    # Fused integer kernels round once where the unfused QDQ graph rounds after every float op.
    assert float((full.argmax(axis=1) == none.argmax(axis=1)).mean()) >= 0.99
    assert float(np.abs(full - none).max()) < 0.1


def test_onnx_runtime_runs_every_convolution_in_int8_and_the_first_layer_as_a_float_product(
        quantized: Quantized) -> None:
    assert "ConvTranspose" not in _ops(quantized.int8)
    assert float_convolutions(quantized.int8) == []
    assert len(float_convolutions(quantized.fp32)) == 23  # the paper's 23 layers, all float
    nodes = optimised_graph(quantized.int8).node
    ops = [n.op_type for n in nodes]
    # the first layer (fp32, the default): one float product whose output is quantized directly
    gemm = next(n for n in nodes if n.op_type == "Gemm")
    assert ops.count("Gemm") == 1 and "QGemm" not in ops
    assert [n.op_type for n in nodes if gemm.output[0] in n.input] == ["QuantizeLinear"]
    # the head: int8 weights read from the last layer's bytes, float logits out
    assert ops.count("MatMulIntegerToFloat") == 1


def test_onnx_runtime_runs_the_int8_graph_channels_last_end_to_end(quantized: Quantized) -> None:
    nodes = optimised_graph(quantized.int8).node
    perms = sorted(tuple(onnx.helper.get_attribute_value(n.attribute[0])) for n in nodes if n.op_type == "Transpose")
    # into channels-last after the first convolution, back after the head, and the sub-pixel swap of each
    # up-convolution's depth-to-space: no layout transposes around the up-convolutions and concatenations
    depth = quantized.net.config.depth
    assert perms == sorted([(0, 2, 3, 1), (0, 3, 1, 2), *[(0, 1, 3, 2, 4, 5)] * depth]), perms
    assert {onnx.helper.get_attribute_value(n.attribute[0]) for n in nodes if n.op_type == "QLinearConcat"} == {3}
    assert not {"DepthToSpace", "Softmax"} & {n.op_type for n in nodes}


def test_int8_model_carries_its_parent_metadata_and_a_quantization_record(quantized: Quantized) -> None:
    parent, meta = inspect_onnx(quantized.fp32), inspect_onnx(quantized.int8)
    assert (meta.unet, meta.class_names, meta.training, meta.normalisation) == \
        (parent.unet, parent.class_names, parent.training, parent.normalisation)
    assert meta.name == "cells-int8" and parent.quantization is None
    record = meta.quantization
    assert record["format"] == "int8 QDQ U8S8" and record["calibration"] == "percentile"
    assert record["tiles"] == 8 and record["images"] == 2 and record["data"] == str(quantized.data.resolve())
    assert record["parent"] == "cells.onnx" and record["parent_sha256"] == sha256_of(quantized.fp32)
    assert record["fp32_nodes"] and record["date"] and 0.95 <= record["calibration_agreement"] <= 1
    keys = [p.key for p in onnx.load_model(str(quantized.int8)).metadata_props]
    assert keys.count(METADATA_KEY) == 1
    predictor = load_predictor(quantized.int8, "cpu")
    assert predictor.meta.quantization == record


def test_an_int8_model_is_no_starting_point(quantized: Quantized, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"quantized \(int8\).*cells\.onnx"):
        state_dict_from_onnx(quantized.int8)
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_model(quantized.int8, tmp_path / "again.onnx", quantized.data)
    with pytest.raises(QuantizeError, match="is the model itself"):
        quantize_model(quantized.fp32, quantized.fp32, quantized.data)


def test_models_list_shows_int8_next_to_its_parent(quantized: Quantized, studio_dirs) -> None:
    other = studio_dirs.models / "another.onnx"
    for source, target in ((quantized.int8, "cells-int8.onnx"), (quantized.fp32, "cells.onnx"),
                           (quantized.fp32, other.name)):
        shutil.copy(source, studio_dirs.models / target)
    entries = list_models()
    # by name "cells-int8" sorts before "cells"; the list puts it after its parent
    assert [e.name for e in entries] == ["another", "cells", "cells-int8"]
    int8 = entries[2]
    assert int8.usable and int8.parent == "cells.onnx" and int8.note == "int8 (calibrated on cells)"
    assert int8.label == "cells-int8 (shipped, int8 (calibrated on cells))"
    assert entries[1].note is None and entries[1].label == "cells (shipped)"
    assert "int8 copy" in read_card(int8)

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert int8.label in at.sidebar.selectbox[0].options
    at.switch_page("pages/models.py").run()
    at.selectbox(key="models_shown").set_value(str(int8.path)).run()
    assert not at.exception
    facts = "\n".join(str(m.value) for m in at.markdown)
    assert "**Precision:** int8 (calibrated on cells), made from `cells.onnx`" in facts


def test_notes_from_a_model_file_are_plain_text() -> None:
    assert describe({"data": "/data/dsb2018"}) == "int8 (calibrated on dsb2018)"
    assert describe({"data": "synthetic"}) == "int8 (calibrated on synthetic)"
    assert describe({"format": "int8 QDQ U8S8"}) == "int8" and describe(None) is None
    assert describe({"data": "*[a](b)`*"}) == "int8 (calibrated on __a__b___)"


def test_options_are_checked() -> None:
    with pytest.raises(QuantizeError, match="calibration must be one of"):
        QuantizeOptions(calibration="kl")
    with pytest.raises(QuantizeError, match="at least 1"):
        QuantizeOptions(tiles=0)
    with pytest.raises(QuantizeError, match="float_convs must be one of"):
        QuantizeOptions(float_convs="ends")


def test_the_command_offers_what_the_options_take() -> None:
    from unet_core.cli import build_parser
    from unet_core.quantize import DEFAULT_FLOAT_CONVS, FLOAT_CONVS

    parser = build_parser()
    assert parser.parse_args(["quantize", "m.onnx"]).float_convs == DEFAULT_FLOAT_CONVS
    for choice in FLOAT_CONVS:
        assert parser.parse_args(["quantize", "m.onnx", "--float-convs", choice]).float_convs == choice
    with pytest.raises(SystemExit):
        parser.parse_args(["quantize", "m.onnx", "--float-convs", "ends"])


# --------------------------------------------------------------------------- the command line


@pytest.mark.slow
def test_quantize_command_runs_end_to_end(tiny_model, tmp_path: Path) -> None:
    _, model = tiny_model
    data, out = tmp_path / "synth", tmp_path / "tiny-all-int8.onnx"
    run = [sys.executable, "-m", "unet_core"]
    made = subprocess.run([*run, "synth", "--out", str(data), "--n", "3"], cwd=REPO, capture_output=True, text=True,
                          check=False)
    assert made.returncode == 0, made.stderr
    result = subprocess.run([*run, "quantize", str(model), "--data", str(data), "--out", str(out), "--tiles", "3",
                             "--tile", "100", "--calibration", "minmax", "--float-convs", "none"],
                            cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and "kept in fp32: probabilities\n" in result.stdout
    meta = inspect_onnx(out)
    assert meta.quantization["calibration"] == "minmax" and meta.quantization["fp32_nodes"] == ["probabilities"]
    # The first convolution is quantized too; the width check still finds it behind its QDQ pair.
    proto = onnx.load_model(str(out))
    prop = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    prop.value = prop.value.replace('"width": 4', '"width": 8')
    onnx.save_model(proto, str(tmp_path / "wrong-width.onnx"))
    with pytest.raises(ModelLoadError, match="first convolution has 4 features"):
        inspect_onnx(tmp_path / "wrong-width.onnx")


def test_quantize_command_says_what_to_give(tiny_model, tmp_path: Path, capsys) -> None:
    _, model = tiny_model
    assert main(["quantize", str(model), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "records no training data set; give one with --data" in capsys.readouterr().err
    assert main(["quantize", str(model), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------- fp16 (GPU)


def test_fp16_copy_keeps_float32_io_and_the_probabilities(quantized: Quantized, studio_dirs, capsys) -> None:
    from unet_core.half import HalfError, half_model

    tmp_path = studio_dirs.models
    parent = tmp_path / "tiny.onnx"  # a briefly trained network: probabilities like a real model's
    shutil.copy(quantized.fp32, parent)
    assert main(["quantize", str(parent), "--fp16"]) == 0
    assert "wrote" in capsys.readouterr().out
    half = tmp_path / "tiny-fp16.onnx"
    proto = onnx.load_model(str(half))
    elem = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [elem]
    assert {o.type.tensor_type.elem_type for o in proto.graph.output} == {elem}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    meta = inspect_onnx(half)
    assert meta.name == "cells-fp16" and meta.quantization["format"] == "fp16"
    assert meta.quantization["parent"] == "tiny.onnx" and meta.quantization["parent_sha256"] == sha256_of(parent)
    image = _noise_image()
    options = InferenceOptions(tile=100, keep_probs=True, diameter="off")
    full, reduced = (segment(image, load_predictor(p, "cpu"), options) for p in (parent, half))
    assert np.abs(full.probs - reduced.probs).max() < 1e-2
    assert (full.labels == reduced.labels).mean() > 0.99
    entries = list_models()  # listed right after its parent, said what it is
    assert [e.path.name for e in entries] == ["tiny.onnx", "tiny-fp16.onnx"]
    assert entries[1].note == "fp16 (for GPUs)" and "fp16 copy of `tiny.onnx`" in read_card(entries[1])
    with pytest.raises(HalfError, match="already exists"):
        half_model(parent)
    with pytest.raises(HalfError, match="already a reduced-precision copy"):
        half_model(half, tmp_path / "again.onnx")


def _noise_image():
    """A 300 x 260 noise image as the engine reads it."""
    from unet_core.io import ImageFile

    pixels = np.random.default_rng(2).integers(0, 255, (1, 260, 300, 1), dtype=np.uint8)
    return ImageFile("noise.png", pixels)
