"""The model-and-predictor contract (segmentation_models.pytorch style): every architecture the
engine can build, behind either backend (ONNX Runtime, PyTorch), keeps the same promises.

Configurations: depth 2 and 3, valid (paper) and same padding, 1 or 3 input channels, 2 or 3
classes. Promises: output shape, probabilities that sum to 1, results that do not depend on the
tile size (overlap-tile with mirrored context), PyTorch/ONNX parity, and weights that read back
from the ONNX file exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from unet_core.export import probability_nodes, state_dict_from_onnx, to_onnx
from unet_core.inference import InferenceOptions, segment
from unet_core.io import ImageFile
from unet_core.metadata import ModelMeta, UNetConfig
from unet_core.model import UNet
from unet_core.runtime import OnnxPredictor, Predictor, TorchPredictor, cuda_driver_available
from unet_core.tiling import Geometry

pytestmark = pytest.mark.slow  # four ONNX exports (about 20 s) before the first test

CONFIGS = {
    "d2-valid-gray-2cls": UNetConfig(in_channels=1, n_classes=2, width=4, depth=2, padding="valid"),
    "d3-valid-rgb-3cls": UNetConfig(in_channels=3, n_classes=3, width=4, depth=3, padding="valid"),
    "d2-same-gray-3cls": UNetConfig(in_channels=1, n_classes=3, width=4, depth=2, padding="same"),
    "d3-same-rgb-2cls": UNetConfig(in_channels=3, n_classes=2, width=4, depth=3, padding="same"),
}
BACKENDS = ("onnx", "torch")


@dataclass
class Built:
    model: UNet
    meta: ModelMeta
    onnx: Path


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    config = CONFIGS[request.param]
    torch.manual_seed(7)
    model = UNet.from_config(config).eval()
    names = ["background", "foreground", "border"][: config.n_classes]
    meta = ModelMeta(name=request.param, unet=config, class_names=names, foreground_classes=[1])
    path = to_onnx(model, meta, tmp_path_factory.mktemp(request.param) / "model.onnx")
    return Built(model, meta, path)


def predictor_for(built: Built, backend: str) -> Predictor:
    return OnnxPredictor(built.onnx, "cpu") if backend == "onnx" else TorchPredictor(built.model, built.meta, "cpu")


def _image(config: UNetConfig, shape: tuple[int, int] = (150, 130)) -> ImageFile:
    rng = np.random.default_rng(3)
    return ImageFile("x.tif", rng.integers(0, 255, (1, *shape, config.in_channels), dtype=np.uint8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tile_gives_one_probability_per_class_that_sums_to_one(built: Built, backend: str) -> None:
    config = built.meta.unet
    geometry = Geometry(config.depth, config.padding)
    out = geometry.floor_output(60)
    size = out if config.padding == "same" else geometry.input_size(out)
    batch = np.random.default_rng(0).random((2, config.in_channels, size, size), dtype=np.float32)
    probs = predictor_for(built, backend).predict_batch(batch)
    assert probs.shape == (2, config.n_classes, out, out) and probs.dtype == np.float32
    assert np.all(probs >= 0) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_do_not_depend_on_the_tile_size(built: Built, backend: str) -> None:
    predictor = predictor_for(built, backend)
    image = _image(built.meta.unet)
    geometry = Geometry(built.meta.unet.depth, built.meta.unet.padding)
    small, large = geometry.floor_output(40), geometry.floor_output(200)
    a = segment(image, predictor, InferenceOptions(tile=small, keep_probs=True, diameter="off"))
    b = segment(image, predictor, InferenceOptions(tile=large, keep_probs=True, diameter="off"))
    assert a.tile != b.tile
    assert a.probs.shape == (1, built.meta.unet.n_classes, 150, 130)
    np.testing.assert_allclose(a.probs, b.probs, atol=2e-5)
    assert np.array_equal(a.labels, b.labels) or np.mean(a.labels != b.labels) < 1e-4  # argmax ties only


def test_pytorch_and_onnx_runtime_agree(built: Built) -> None:
    image = _image(built.meta.unet)
    options = InferenceOptions(tile=Geometry(built.meta.unet.depth, built.meta.unet.padding).floor_output(100),
                               keep_probs=True, diameter="off")
    ort = segment(image, predictor_for(built, "onnx"), options)
    pt = segment(image, predictor_for(built, "torch"), options)
    np.testing.assert_allclose(ort.probs, pt.probs, atol=1e-4)


def test_the_weights_read_back_from_the_onnx_file(built: Built) -> None:
    state = built.model.state_dict()
    back = state_dict_from_onnx(built.onnx)
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name
    again = UNet.from_config(built.meta.unet)
    again.load_state_dict(back)  # the read-back weights build the same network


def test_the_probabilities_come_from_the_logits_by_a_float_head(built: Built) -> None:
    proto = onnx.load_model(str(built.onnx))
    head = set(probability_nodes(proto))
    ops = {n.op_type for n in proto.graph.node if n.name in head}
    # two classes: the sigmoid of the logit difference (elementwise, exactly the softmax); else softmax
    assert ops == ({"Slice", "Sub", "Neg", "Concat", "Sigmoid"} if built.meta.unet.n_classes == 2 else {"Softmax"})
    producers = {out: n for n in proto.graph.node for out in n.output}
    assert producers["probabilities"].name in head and producers["logits"].name not in head


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_driver_available(), reason="needs a CUDA GPU")
def test_the_gpu_gives_what_the_cpu_gives(built: Built) -> None:
    image = _image(built.meta.unet)
    options = InferenceOptions(tile=Geometry(built.meta.unet.depth, built.meta.unet.padding).floor_output(100),
                               keep_probs=True, diameter="off")
    gpu = OnnxPredictor(built.onnx, "cuda")
    assert gpu.device == "cuda", gpu.device_name
    cpu = segment(image, OnnxPredictor(built.onnx, "cpu"), options)
    np.testing.assert_allclose(segment(image, gpu, options).probs, cpu.probs, atol=1e-3)
