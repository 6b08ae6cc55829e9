"""Overlap-tile inference through ONNX Runtime: seamless, exact, robust to input types."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unet_core import inference
from unet_core.export import parity, read_metadata, state_dict_from_onnx
from unet_core.inference import InferenceOptions, auto_tile, class_map, resolve_tile, segment
from unet_core.io import ImageFile, ImageReadError
from unet_core.model import UNet
from unet_core.runtime import ModelLoadError, OnnxPredictor, TorchPredictor, load_predictor
from unet_core.tiling import Geometry, balanced_tile, plan_tiles


@pytest.fixture(scope="module")
def predictor(tiny_model: tuple[UNet, Path]) -> OnnxPredictor:
    return OnnxPredictor(tiny_model[1], device="cpu")


def _image(shape: tuple[int, ...], seed: int = 0, dtype=np.uint8) -> ImageFile:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    top = info.max if info else 1.0
    data = (rng.random(shape) * top).astype(dtype)
    return ImageFile("test.png", data)


def test_export_parity_with_pytorch_at_two_sizes(tiny_model: tuple[UNet, Path]) -> None:
    net, path = tiny_model
    assert parity(net, path, [188, 316]) < 1e-4


def test_export_embeds_metadata_and_weights(tiny_model: tuple[UNet, Path]) -> None:
    net, path = tiny_model
    meta = read_metadata(path)
    assert meta.name == "tiny" and meta.unet == net.config
    assert meta.geometry.margin == 92
    weights = state_dict_from_onnx(path)
    assert weights.keys() == net.state_dict().keys()
    for key, value in net.state_dict().items():
        assert torch.equal(weights[key], value), key


@pytest.mark.slow
def test_seamless_for_three_tile_sizes_and_a_single_pass(predictor: OnnxPredictor) -> None:
    image = _image((1, 1000, 777, 1))
    probs = {}
    for tile in (100, 196, 388):
        seg = segment(image, predictor, InferenceOptions(tile=tile, keep_probs=True))
        assert len(plan_tiles((1000, 777), tile, predictor.meta.geometry)) > 1
        probs[tile] = seg.probs
    whole = Geometry().ceil_output(1000)
    assert len(plan_tiles((1000, 777), whole, Geometry())) == 1
    probs["whole"] = segment(image, predictor, InferenceOptions(tile=whole, keep_probs=True)).probs
    for key, p in probs.items():
        assert p.shape == (1, 2, 1000, 777)
        assert np.abs(p - probs["whole"]).max() < 1e-5, key
    np.testing.assert_allclose(probs["whole"].sum(axis=1), 1.0, atol=1e-5)


def test_tiled_result_equals_the_network_on_the_mirrored_image(tiny_model, predictor) -> None:
    """Ground truth for overlap-tile: one PyTorch pass over the whole mirror-padded image."""
    net, _ = tiny_model
    image = _image((1, 150, 90, 1), seed=3)
    seg = segment(image, predictor, InferenceOptions(tile=52, tta=False, keep_probs=True))
    x = seg.stretch(image.data[0, ..., 0])
    g = predictor.meta.geometry
    out_h, out_w = g.ceil_output(150), g.ceil_output(90)
    padded = np.pad(x, ((92, 92 + out_h - 150), (92, 92 + out_w - 90)), mode="reflect")
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(padded)[None, None]), 1)[0, :, :150, :90].numpy()
    assert np.abs(seg.probs[0] - ref).max() < 1e-4


def test_thin_and_tiny_images(predictor: OnnxPredictor) -> None:
    for shape in ((1, 37, 500, 1), (1, 5, 3, 1), (1, 1, 64, 1)):
        seg = segment(_image(shape), predictor, InferenceOptions(tile=100))
        assert seg.labels.shape == shape[:3]
        assert set(np.unique(seg.labels)) <= {0, 1}


def test_tta_is_seamless_and_differs_from_plain(predictor: OnnxPredictor) -> None:
    image = _image((1, 300, 260, 1), seed=1)
    a = segment(image, predictor, InferenceOptions(tile=100, tta=True, keep_probs=True)).probs
    b = segment(image, predictor, InferenceOptions(tile=196, tta=True, keep_probs=True)).probs
    plain = segment(image, predictor, InferenceOptions(tile=196, tta=False, keep_probs=True)).probs
    assert np.abs(a - b).max() < 1e-5
    assert np.abs(a - plain).max() > 1e-4  # a random net is not flip-invariant: TTA really ran


def test_tile_is_rounded_down_with_a_note(predictor: OnnxPredictor) -> None:
    assert resolve_tile(400, Geometry()) == (388, "tile 400 is not a valid output size for this network; using 388")
    assert resolve_tile(388, Geometry()) == (388, None)
    seg = segment(_image((1, 64, 64, 1)), predictor, InferenceOptions(tile=110))
    assert seg.tile == (100, 100) and "using 100" in seg.notes[0]


def test_rgb_16bit_float_inputs_are_converted_not_refused(predictor: OnnxPredictor) -> None:
    gray16 = _image((1, 80, 80, 1), dtype=np.uint16)
    rgb = ImageFile("rgb.png", np.repeat(gray16.data, 3, axis=-1))
    as_float = ImageFile("f.tif", gray16.data.astype(np.float32) / 65535.0)
    ref = segment(gray16, predictor, InferenceOptions(tile=100, keep_probs=True)).probs
    for img in (rgb, as_float):
        # Luminance of R=G=B is the gray value; a float image is the same up to scale, which the
        # percentile stretch removes.
        out = segment(img, predictor, InferenceOptions(tile=100, keep_probs=True)).probs
        assert np.abs(out - ref).max() < 1e-4, img.name


def test_stack_is_normalised_once_for_all_slices(predictor: OnnxPredictor) -> None:
    data = _image((3, 60, 70, 1)).data
    data[2] //= 4  # a darker slice must stay darker: no per-slice stretch
    seg = segment(ImageFile("s.tif", data, is_stack=True), predictor, InferenceOptions(tile=100))
    assert seg.labels.shape == (3, 60, 70)
    single = segment(ImageFile("s2.tif", data[2:3]), predictor, InferenceOptions(tile=100, keep_probs=True))
    assert seg.stretch != single.stretch


@pytest.mark.parametrize(
    "data,message",
    [
        (np.full((1, 30, 30, 1), 7, np.uint8), "constant"),
        (np.full((1, 30, 30, 1), np.nan, np.float32), "NaN"),
        (np.zeros((1, 0, 30, 1), np.uint8), "empty"),
    ],
)
def test_unsegmentable_images_raise_clear_errors(predictor, data, message) -> None:
    with pytest.raises(ImageReadError, match=message):
        segment(ImageFile("bad.tif", data), predictor)


def test_large_probability_arrays_are_memory_mapped(predictor, monkeypatch) -> None:
    monkeypatch.setattr(inference, "PROBS_IN_MEMORY_LIMIT", 1000)
    seg = segment(_image((1, 50, 50, 1)), predictor, InferenceOptions(tile=100, keep_probs=True))
    assert isinstance(seg.probs, np.memmap)
    ref = segment(_image((1, 50, 50, 1)), predictor, InferenceOptions(tile=52, keep_probs=True)).probs
    assert np.abs(np.asarray(seg.probs) - ref).max() < 1e-5


@pytest.mark.parametrize("k", [2, 3])
def test_class_map_is_argmax_ties_included(k: int) -> None:
    rng = np.random.default_rng(k)
    probs = rng.random((k, 30, 40), dtype=np.float32)
    probs[1, :4] = probs[0, :4]  # ties: the lower class, as argmax
    probs[:, 4:8] = 0.5
    got = class_map(probs)
    assert got.dtype == np.uint8 and np.array_equal(got, probs.argmax(axis=0))
    assert not got[4:8].any()  # all classes equal: class 0


def test_auto_tile_is_measured_once_and_then_deterministic(predictor, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("UNET_STUDIO_CACHE", str(tmp_path))
    monkeypatch.setattr(inference, "TILE_CANDIDATES", (100, 196))
    first = auto_tile(predictor)
    assert first[0] in (100, 196) and first[1] == 1
    assert (tmp_path / "autotile.json").is_file()

    def no_measuring(_p):
        raise AssertionError("the cached choice must be reused")

    monkeypatch.setattr(inference, "measure_tiles", no_measuring)
    assert auto_tile(predictor) == first
    seg = segment(_image((1, 40, 300, 1)), predictor)
    geometry = predictor.meta.geometry
    assert seg.tile == (balanced_tile(40, first[0], geometry), balanced_tile(300, first[0], geometry))


def test_time_estimate_comes_from_the_tile_measurement(predictor, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("UNET_STUDIO_CACHE", str(tmp_path))
    monkeypatch.setattr(inference, "TILE_CANDIDATES", (100, 196))
    assert inference.estimate_seconds(predictor, 10**6) is None  # nothing measured yet: no guess
    tile, _ = auto_tile(predictor)
    entry = json.loads((tmp_path / "autotile.json").read_text())[f"{predictor.fingerprint}:{predictor.device_name}"]
    per_mpx = {int(k.split("x")[0]): v / 1000 for k, v in entry["ms_per_mpx"].items()}
    off = InferenceOptions(diameter="off")
    assert inference.estimate_seconds(predictor, 4 * 10**6, off) == pytest.approx(4 * per_mpx[tile])
    assert inference.estimate_seconds(predictor, 10**6, InferenceOptions(diameter="off", tta=True)) == (
        pytest.approx(8 * per_mpx[tile]))
    other = 196 if tile == 100 else 100
    assert inference.estimate_seconds(predictor, 10**6, InferenceOptions(tile=other, diameter="off", tta=False)) == (
        pytest.approx(per_mpx[other]))
    # Automatic test-time augmentation: 8 passes up to a megapixel, one beyond.
    assert inference.estimate_seconds(predictor, 10**6, InferenceOptions(diameter="off")) == pytest.approx(
        8 * per_mpx[tile])
    assert inference.estimate_seconds(predictor, 2 * 10**6, InferenceOptions(diameter="off")) == pytest.approx(
        2 * per_mpx[tile])


def test_tile_measurement_runs_once_even_for_two_callers_at_a_time(predictor, tmp_path, monkeypatch) -> None:
    """Two browser sessions asking at once: one measures, the other waits for its answer."""
    import threading

    monkeypatch.setenv("UNET_STUDIO_CACHE", str(tmp_path))
    monkeypatch.setattr(inference, "TILE_CANDIDATES", (100, 196))
    release, calls = threading.Event(), []
    real = inference.measure_tiles

    def slow_measure(p):
        calls.append(1)
        release.wait(30)
        return real(p)

    monkeypatch.setattr(inference, "measure_tiles", slow_measure)
    assert not inference.tile_is_measured(predictor)
    results: list[tuple[int, int]] = []
    callers = [threading.Thread(target=lambda: results.append(auto_tile(predictor))) for _ in range(2)]
    for t in callers:
        t.start()
    callers[0].join(0.3)
    assert not results  # both wait for the one measurement under way
    release.set()
    for t in callers:
        t.join(30)
    assert calls == [1] and len(results) == 2 and results[0] == results[1]
    assert inference.tile_is_measured(predictor)


def test_tuner_skips_tiles_over_the_memory_budget(predictor, monkeypatch) -> None:
    geometry, width = predictor.meta.geometry, predictor.meta.unet.width
    monkeypatch.setattr(inference, "TILE_CANDIDATES", (100, 196, 388))
    budget = inference.tile_memory_bytes(196, 1, width, geometry)
    monkeypatch.setattr(inference, "memory_budget", lambda device: budget)
    tile, batch, timings = inference.measure_tiles(predictor)
    assert set(timings) == {"100x1", "196x1"}
    assert tile in (100, 196) and batch == 1


def test_tuner_steps_down_when_a_tile_runs_out_of_memory(predictor, monkeypatch) -> None:
    """A GPU that cannot hold a tile (CUDA or the arena says so) costs that size, not the page."""
    monkeypatch.setattr(inference, "TILE_CANDIDATES", (100, 196, 388))
    real = predictor.predict_batch

    def small_only(x, release=False):
        if x.shape[-1] > predictor.meta.geometry.input_size(196):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory")
        return real(x, release=release)

    monkeypatch.setattr(predictor, "predict_batch", small_only)
    tile, _, timings = inference.measure_tiles(predictor)
    assert set(timings) == {"100x1", "196x1"} and tile in (100, 196)

    def broken(x, release=False):
        raise RuntimeError("a model that is wrong in another way")

    monkeypatch.setattr(predictor, "predict_batch", broken)
    with pytest.raises(RuntimeError, match="wrong in another way"):  # anything else is not hidden
        inference.measure_tiles(predictor)


def test_the_gpu_budget_is_half_the_free_gpu_memory(monkeypatch) -> None:
    monkeypatch.setattr(inference, "cuda_free_memory", lambda: 10 << 30)
    assert inference.memory_budget("cuda") == 5 << 30
    monkeypatch.setattr(inference, "cuda_free_memory", lambda: None)  # no driver to ask: the old fixed share
    assert inference.memory_budget("cuda") == 8 << 30


def test_free_gpu_memory_is_asked_anew_each_time(monkeypatch) -> None:
    """The driver is asked at every call: free memory changes as other programs use the GPU."""
    import subprocess

    from unet_core import runtime

    answers = iter(["20000\n", "6000\n"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(runtime.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, next(answers)))
    assert runtime.cuda_free_memory() == 20000 << 20
    assert runtime.cuda_free_memory() == 6000 << 20


def test_torch_and_onnx_predictors_agree(tiny_model) -> None:
    net, path = tiny_model
    onnx_p = load_predictor(path, "cpu")
    torch_p = TorchPredictor(net, onnx_p.meta, "cpu")
    image = _image((1, 120, 130, 1), seed=5)
    a = segment(image, onnx_p, InferenceOptions(tile=100, keep_probs=True)).probs
    b = segment(image, torch_p, InferenceOptions(tile=100, keep_probs=True)).probs
    assert np.abs(a - b).max() < 1e-4
    assert onnx_p.device == "cpu" and "CPU" in onnx_p.device_name


def test_a_torch_predictor_in_bf16_computes_in_bf16_close_to_fp32(tiny_model) -> None:
    net, path = tiny_model
    meta = load_predictor(path, "cpu").meta
    image = _image((1, 120, 130, 1), seed=5)
    fp32 = segment(image, TorchPredictor(net, meta, "cpu"), InferenceOptions(tile=100, keep_probs=True)).probs
    bf16 = segment(image, TorchPredictor(net, meta, "cpu", "bf16"), InferenceOptions(tile=100, keep_probs=True)).probs
    error = np.abs(fp32 - bf16).max()
    assert 0 < error < 0.02  # bf16 keeps 8 bits of mantissa: different, but by little
    np.testing.assert_allclose(bf16.sum(axis=1), 1.0, atol=1e-5)  # softmax in fp32


def test_model_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_predictor(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        load_predictor(bad)
    with pytest.raises(ModelLoadError, match="unknown model format"):
        load_predictor(tmp_path / "x.h5")
