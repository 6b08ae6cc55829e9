"""Hostile input: decompression bombs, damaged and mislabelled images, hostile model files, and
the predict command's promises (no overwrite, one bad file never stops the others).

Every hostile file is made here, in ``tmp_path``: lying headers are patched into small valid files.
The bomb reads run in a child process with a 4 GB address-space limit, so that a regression shows
up as a failed assertion instead of a machine out of memory.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import tifffile
import torch
from PIL import Image

from unet_core.checkpoint import CheckpointError, load_checkpoint
from unet_core.cli import main
from unet_core.io import (
    MAX_PIXELS_ENV,
    ImageReadError,
    encode_png,
    pixel_budget,
    read_image,
    read_image_bytes,
    read_image_shape,
    write_png,
    write_tiff,
)
from unet_core.metadata import METADATA_KEY
from unet_core.predict import output_stems
from unet_core.runtime import ModelLoadError, load_predictor
from unet_core.studio.registry import default_model, list_models

REPO = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(7)
TILE = "52"  # a valid output tile of the tiny depth-4 net: fast


# --------------------------------------------------------------------------- hostile image makers


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def lying_png(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width x height`` 8-bit gray, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def lying_jpeg(width: int, height: int) -> bytes:
    """A small real JPEG whose start-of-frame marker is patched to claim ``width x height``."""
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (16, 16), dtype=np.uint8)).save(buf, format="JPEG")
    raw = bytearray(buf.getvalue())
    i = 2
    while i < len(raw):
        marker, length = raw[i + 1], struct.unpack(">H", raw[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):  # SOF0/1/2: precision (1 byte), then height, width
            raw[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(raw)
        i += 2 + length
    raise AssertionError("no SOF marker in the JPEG written by Pillow")


def tiff_bytes(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def tiff_with_zero_width() -> bytes:
    raw = bytearray(tiff_bytes(np.zeros((10, 10), np.uint8)))
    with tifffile.TiffFile(io.BytesIO(bytes(raw))) as tif:
        tag = tif.pages.first.tags["ImageWidth"]
        offset, fmt = tag.valueoffset, {3: "<H", 4: "<I"}[tag.dtype]
    raw[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, 0)
    return bytes(raw)


# --------------------------------------------------------------------------- bombs


BOMB_READER = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    from unet_core.io import ImageReadError, read_image, read_image_bytes
    for path in sys.argv[1:]:
        for how in ("file", "upload"):
            try:
                if how == "file":
                    read_image(path)
                else:
                    read_image_bytes(open(path, "rb").read(), path.rsplit("/", 1)[-1])
                outcome = "read"
            except ImageReadError as exc:
                outcome = "ImageReadError: " + str(exc)
            print(json.dumps([path.rsplit("/", 1)[-1], how, outcome]), flush=True)
""")


def test_decompression_bombs_are_refused_from_the_header_under_a_4_gb_limit(tmp_path: Path) -> None:
    files = {
        "bomb.png": lying_png(100_000, 100_000),  # 10 Gpx in 100 bytes
        "bomb.jpg": lying_jpeg(65_500, 65_500),  # 4.3 Gpx in a few hundred bytes
        "bomb_named.tif": lying_png(100_000, 100_000),  # the name does not matter, the content does
        "lie.png": lying_png(12_000, 12_000),  # within the budget: decoded, found truncated
    }
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    env = {k: v for k, v in os.environ.items() if k != MAX_PIXELS_ENV}
    env.update(PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", BOMB_READER, *(str(tmp_path / n) for n in files)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stdout
    outcomes = {(name, how): text for name, how, text in map(json.loads, proc.stdout.splitlines())}
    assert len(outcomes) == 2 * len(files)
    for name in ("bomb.png", "bomb.jpg", "bomb_named.tif"):
        text = outcomes[(name, "file")]
        assert text.startswith(f"ImageReadError: {name}: ") and "is more than the limit of" in text
        assert MAX_PIXELS_ENV in text  # says how to raise the limit
        assert "uploaded image" in outcomes[(name, "upload")]  # the lower limit for uploads
    assert "100000 x 100000 pixels" in outcomes[("bomb.png", "file")]
    assert "65500 x 65500 pixels" in outcomes[("bomb.jpg", "file")]
    assert "truncated or corrupt" in outcomes[("lie.png", "file")]
    assert "uploaded image" in outcomes[("lie.png", "upload")]  # 144 Mpx > the 100 Mpx of an upload


def test_pixel_budget_follows_the_environment_and_never_falls_below_20000_squared(monkeypatch) -> None:
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert pixel_budget() >= 20_000 * 20_000
    monkeypatch.setenv(MAX_PIXELS_ENV, "1e6")
    assert pixel_budget() == 1_000_000
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")  # ignored (with a warning), not a crash
    assert pixel_budget() >= 20_000 * 20_000


def test_the_limit_names_file_size_and_how_to_raise_it(tmp_path: Path, monkeypatch) -> None:
    write_png(tmp_path / "cells.png", np.zeros((30, 40), np.uint8))
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "cells.png")
    assert str(err.value) == ("cells.png: 40 x 30 pixels (1,200 px) is more than the limit of 1,000 px set by "
                              f"{MAX_PIXELS_ENV}; raise it to read this image")
    monkeypatch.delenv(MAX_PIXELS_ENV)
    raw = (tmp_path / "cells.png").read_bytes()
    with pytest.raises(ImageReadError, match="more than the 100 px an uploaded image may have"):
        read_image_bytes(raw, "cells.png", max_pixels=100)
    assert read_image_bytes(raw, "cells.png").data.shape == (1, 30, 40, 1)


# --------------------------------------------------------------------------- damaged and mislabelled


def _read_error(path: Path) -> str:
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    text = str(err.value)
    assert text.startswith(f"{path.name}: "), text
    return text


def test_tiff_with_image_width_0_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "zero.tif").write_bytes(tiff_with_zero_width())
    assert "ImageWidth is 0" in _read_error(tmp_path / "zero.tif")
    with pytest.raises(ImageReadError, match="zero.tif"):
        read_image_shape(tmp_path / "zero.tif")


@pytest.mark.parametrize("compression", [None, "lzw", "zlib", "jpeg"])
def test_truncated_tiffs_say_truncated_or_corrupt(tmp_path: Path, compression: str | None) -> None:
    pixels = RNG.integers(0, 255, (200, 200), dtype=np.uint8)
    raw = tiff_bytes(pixels, compression=compression)
    (tmp_path / "full.tif").write_bytes(raw)
    whole = read_image(tmp_path / "full.tif").data[0, ..., 0]  # imagecodecs decodes LZW and JPEG
    assert whole.shape == pixels.shape and (compression == "jpeg" or np.array_equal(whole, pixels))
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    assert "truncated or corrupt" in _read_error(tmp_path / "cut.tif")


def test_truncated_imagej_stack_is_refused_not_read_as_fewer_slices(tmp_path: Path) -> None:
    raw = tiff_bytes(np.ones((5, 30, 30), np.uint16), imagej=True)
    (tmp_path / "stack.tif").write_bytes(raw[:-1000])
    assert "truncated or corrupt" in _read_error(tmp_path / "stack.tif")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_png_and_jpeg_say_truncated_or_corrupt(tmp_path: Path, fmt: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (120, 120), dtype=np.uint8)).save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert "truncated or corrupt" in _read_error(path)


def test_format_is_decided_by_content_not_by_suffix(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 65535, (20, 30), dtype=np.uint16)
    (tmp_path / "really_png.tif").write_bytes(encode_png(pixels))
    write_tiff(tmp_path / "really_tiff.png", pixels)
    for name in ("really_png.tif", "really_tiff.png"):
        assert np.array_equal(read_image(tmp_path / name).data[0, ..., 0], pixels)
        assert np.array_equal(read_image_bytes((tmp_path / name).read_bytes(), name).data[0, ..., 0], pixels)
        assert read_image_shape(tmp_path / name) == (1, 20, 30, 1)
    gif = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(gif, format="GIF")
    (tmp_path / "anim.png").write_bytes(gif.getvalue())
    assert "not a readable PNG, JPEG or TIFF image" in _read_error(tmp_path / "anim.png")


def test_complex_tiff_is_refused_with_a_reason(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "fft.tif", np.ones((8, 8), np.complex64))
    assert "complex" in _read_error(tmp_path / "fft.tif")


@pytest.mark.parametrize("exc", [MemoryError(), ZeroDivisionError("integer division or modulo by zero"),
                                 struct.error("unpack requires a buffer"), EOFError(), KeyError(270)])
def test_every_decoder_exception_becomes_an_image_read_error(tmp_path: Path, monkeypatch, exc) -> None:
    write_tiff(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", fail)
    text = _read_error(tmp_path / "a.tif")
    assert ("not enough memory" in text) if isinstance(exc, MemoryError) else ("truncated or corrupt" in text)


# --------------------------------------------------------------------------- hostile model files


def hostile_onnx(source: Path, target: Path, meta: Callable[[dict], object] | None = None,
                 graph: Callable[[onnx.ModelProto], None] | None = None, raw_meta: str | None = None) -> Path:
    """A copy of ``source`` with its metadata changed by ``meta`` (or replaced by ``raw_meta``) and
    its graph by ``graph``."""
    proto = onnx.load_model(str(source))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            d = json.loads(prop.value)
            prop.value = raw_meta if raw_meta is not None else json.dumps(meta(d) if meta else d)
    if graph is not None:
        graph(proto)
    onnx.save_model(proto, str(target))
    return target


def _set(d: dict, **unet) -> dict:
    d["unet"].update(unet)
    return d


def _drop_input_dim(proto: onnx.ModelProto) -> None:
    del proto.graph.input[0].type.tensor_type.shape.dim[0]


ONNX_CASES = {
    "width700": (lambda d: _set(d, width=700), None, None, "width 700 is outside 1..256"),
    "depth12": (lambda d: _set(d, depth=12), None, None, "depth 12 is outside 1..6"),
    "depth3": (lambda d: _set(d, depth=3), None, None, "4 pooling steps, its metadata says depth 3"),
    "width8": (lambda d: _set(d, width=8), None, None, "4 features, its metadata says width 8"),
    "rgb": (lambda d: _set(d, in_channels=3), None, None, "takes 1 channels, its metadata says in_channels 3"),
    "classes3": (lambda d: {**_set(d, n_classes=3), "class_names": ["a", "b", "c"]}, None, None,
                 "gives 2 classes, its metadata says n_classes 3"),
    "list": (None, None, "[1, 2, 3]", "must be a JSON object"),
    "notjson": (None, None, "{width: 4", "not valid JSON"),
    "diameter0": (lambda d: {**d, "diameter": 0}, None, None, "diameter must be a positive number"),
    "foreground9": (lambda d: {**d, "foreground_classes": [9]}, None, None, "foreground class 9 is outside 0..1"),
    "border1": (lambda d: {**d, "border_class": 1}, None, None, "border_class 1 must be one of the foreground"),
    "border_text": (lambda d: {**d, "border_class": "rim"}, None, None, "border_class must be a whole number"),
    "rank3": (None, _drop_input_dim, None, "input has rank 3"),
}


@pytest.fixture(scope="module")
def hostile_models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile_models")
    made = {name: hostile_onnx(tiny_model_dir / "tiny.onnx", folder / f"{name}.onnx", meta, graph, raw)
            for name, (meta, graph, raw, _) in ONNX_CASES.items()}
    (folder / "garbage.onnx").write_bytes(b"\xff" * 100)  # no valid protobuf field
    made["garbage"] = folder / "garbage.onnx"
    return made


@pytest.mark.parametrize("case", [*ONNX_CASES, "garbage"])
def test_hostile_onnx_is_a_model_load_error(hostile_models: dict[str, Path], case: str) -> None:
    path = hostile_models[case]
    with pytest.raises(ModelLoadError) as err:
        load_predictor(path, "cpu")
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    expected = ONNX_CASES[case][3] if case in ONNX_CASES else "not a readable ONNX file"
    assert expected in text


def _checkpoint(path: Path, state: object, meta: object) -> Path:
    torch.save({"model": state, "meta": meta}, path)
    return path


@pytest.fixture(scope="module")
def hostile_checkpoints(tiny_model: tuple, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    net, _ = tiny_model
    folder = tmp_path_factory.mktemp("hostile_ckpt")
    state = net.state_dict()
    good = {"name": "tiny", "unet": net.config.to_dict()}

    def meta(**unet) -> dict:
        return {**good, "unet": {**good["unet"], **unet}}

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    made = {
        "width1e9": _checkpoint(folder / "width1e9.pt", state, meta(width=1e9)),
        "width-4": _checkpoint(folder / "width-4.pt", state, meta(width=-4)),
        "huge_claim": _checkpoint(folder / "huge_claim.pt", state, meta(width=256, depth=6)),
        "meta_list": _checkpoint(folder / "meta_list.pt", state, [1, 2]),
        "no_weights": folder / "no_weights.pt",
        "empty_weights": _checkpoint(folder / "empty_weights.pt", {}, good),
        "evil": _checkpoint(folder / "evil.pt", state, Evil()),
        "truncated": folder / "truncated.pt",
    }
    torch.save({"meta": good}, made["no_weights"])
    raw = _checkpoint(folder / "whole.pt", state, good).read_bytes()
    made["truncated"].write_bytes(raw[: len(raw) // 2])
    return made


CKPT_EXPECTED = {
    "width1e9": "width 1000000000.0 is outside 1..256",
    "width-4": "width -4 is outside 1..256",
    "huge_claim": "the weights do not match the network in its metadata",
    "meta_list": "the metadata must be a JSON object",
    "no_weights": "no model weights",
    "empty_weights": "holds no model weights",
    "evil": "refused: the checkpoint holds Python objects",
    "truncated": "not a readable U-Net Studio checkpoint",
}


@pytest.mark.parametrize("case", list(CKPT_EXPECTED))
def test_hostile_checkpoint_is_a_model_load_error(hostile_checkpoints: dict[str, Path], case: str) -> None:
    path = hostile_checkpoints[case]
    with pytest.raises(ModelLoadError) as err:
        load_predictor(path, "cpu")
    text = str(err.value)
    assert text.startswith(f"{path}: ") and CKPT_EXPECTED[case] in text
    assert "weights_only" not in text  # never the advice to let the file run code
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.slow
def test_a_checkpoint_claiming_a_giant_network_is_refused_before_building_it(hostile_checkpoints) -> None:
    # Width 256, depth 6 would be ~15 GB of parameters: with 4 GB of address space to spare the
    # refusal must come from comparing shapes (on PyTorch's meta device), not from a failed alloc.
    code = textwrap.dedent(f"""
        import resource
        from unet_core.checkpoint import CheckpointError, load_checkpoint
        # torch reserves much address space when imported: allow 4 GB more than that.
        vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (4 << 30), resource.RLIM_INFINITY))
        try:
            load_checkpoint({str(hostile_checkpoints["huge_claim"])!r})
        except CheckpointError as exc:
            print("refused:", exc)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout and "do not match" in proc.stdout


def _predict_cli(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "unet_core", "predict", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["onnx", "pt"])
def test_predict_with_a_hostile_model_is_one_error_line_and_exit_2(model, hostile_models, hostile_checkpoints,
                                                                     tmp_path: Path) -> None:
    path = hostile_models["width700"] if model == "onnx" else hostile_checkpoints["evil"]
    write_png(tmp_path / "a.png", np.zeros((20, 20), np.uint8))
    proc = _predict_cli([str(tmp_path / "a.png"), "--model", str(path), "--out", str(tmp_path / "out")])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "must never run" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ")


@pytest.mark.parametrize("case", ["depth12", "rank3", "list"])
def test_predict_in_process_reports_hostile_onnx_with_exit_2(hostile_models, tmp_path: Path, capsys,
                                                             case: str) -> None:
    write_png(tmp_path / "a.png", np.zeros((20, 20), np.uint8))
    code = main(["predict", str(tmp_path / "a.png"), "--model", str(hostile_models[case]),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {hostile_models[case]}: ")
    assert not (tmp_path / "out").exists()  # nothing written for a model that was refused


# --------------------------------------------------------------------------- registry


def test_an_invalid_model_is_listed_as_invalid_and_never_default(studio_dirs, hostile_models,
                                                                  tiny_model_dir: Path) -> None:
    (studio_dirs.models / "unet-nuclei.onnx").symlink_to(hostile_models["width700"])
    (studio_dirs.models / "good.onnx").symlink_to(tiny_model_dir / "tiny.onnx")
    entries = {e.name: e for e in list_models()}
    assert entries["good"].usable and entries["good"].error is None
    bad = entries["unet-nuclei"]
    assert not bad.usable and "width 700 is outside 1..256" in bad.error and "invalid" in bad.label
    assert default_model().name == "good"  # the preferred name is not taken when it is invalid


def test_models_page_shows_why_and_cannot_activate_an_invalid_model(studio_dirs, hostile_models,
                                                                    tiny_model_dir: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from pages._common import MODEL_KEY

    (studio_dirs.models / "a-bad.onnx").symlink_to(hostile_models["depth3"])
    (studio_dirs.models / "tiny.onnx").symlink_to(tiny_model_dir / "tiny.onnx")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert at.sidebar.selectbox[0].options == ["tiny (shipped)"]  # only usable models can be chosen
    at.switch_page("pages/models.py").run()
    bad = str(studio_dirs.models / "a-bad.onnx")
    at.selectbox(key="models_shown").set_value(bad).run()
    assert not at.exception
    assert "pooling steps" in "\n".join(str(e.value) for e in at.error)
    assert at.button(key="models_use").disabled
    assert "This is the active model" not in "\n".join(str(e.value) for e in at.success)
    assert MODEL_KEY not in at.session_state or at.session_state[MODEL_KEY] != bad


# --------------------------------------------------------------------------- predict: names, overwrite, isolation


def test_output_stems_are_distinct_and_deterministic() -> None:
    assert output_stems(["a/x.png", "b/x.png", "a/x.tif"]) == ["x", "b_x", "x.tif"]
    assert output_stems(["c/b/x.png", "d/b/x.png"]) == ["x", "d_b_x"]  # the folder that differs
    assert output_stems(["x.png", "X.PNG", "x.png"]) == ["x", "X_2", "x_3"]  # case-insensitive file systems
    stems = output_stems(["/data/a/x.png", "/data/b/x.png", "x.png", "../x.png"])
    assert len({s.casefold() for s in stems}) == 4
    assert output_stems(["one.png", "two.tif"]) == ["one", "two"]  # no clash, no change


def _noise(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def test_predict_with_duplicate_stems_writes_distinct_outputs_and_never_overwrites(tiny_model, tmp_path: Path,
                                                                                   capsys) -> None:
    _, model = tiny_model
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    write_png(tmp_path / "a" / "x.png", _noise((60, 70), 1))
    write_png(tmp_path / "b" / "x.png", _noise((60, 70), 2))
    write_tiff(tmp_path / "a" / "x.tif", _noise((60, 70), 3))
    inputs = [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), str(tmp_path / "a" / "x.tif")]
    out = tmp_path / "out"
    assert main(["predict", *inputs, "--model", str(model), "--out", str(out), "--tile", TILE]) == 0
    labels = {p.name for p in out.glob("*_labels.png")}
    assert labels == {"x_labels.png", "b_x_labels.png", "x.tif_labels.png"}
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(first) == 3 * 5 and not list(out.glob(".*"))  # no temporary file left behind
    assert "b/x.png: results named b_x_*" in capsys.readouterr().err

    # Run again: outputs exist, so every image is refused and nothing is written, not even the
    # output that is missing (a result set is never mixed from two runs).
    (out / "b_x_objects.csv").unlink()
    (out / "b_x_labels.png").write_bytes(b"keep me")
    assert main(["predict", *inputs, "--model", str(model), "--out", str(out), "--tile", TILE]) == 1
    err = capsys.readouterr().err
    assert err.count("already exists and was not overwritten") == 3 and "--overwrite" in err
    assert (out / "b_x_labels.png").read_bytes() == b"keep me" and not (out / "b_x_objects.csv").exists()

    assert main(["predict", *inputs, "--model", str(model), "--out", str(out), "--tile", TILE,
                 "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_predict_never_overwrites_an_input(tiny_model, tmp_path: Path, capsys) -> None:
    _, model = tiny_model
    write_png(tmp_path / "x.png", _noise((60, 70)))
    write_png(tmp_path / "x_labels.png", _noise((60, 70), 5))  # an input named like x.png's result
    before = (tmp_path / "x_labels.png").read_bytes()
    code = main(["predict", str(tmp_path / "x.png"), str(tmp_path / "x_labels.png"), "--model", str(model),
                 "--out", str(tmp_path), "--tile", TILE, "--overwrite"])
    assert code == 1 and "is one of the input images" in capsys.readouterr().err
    assert (tmp_path / "x_labels.png").read_bytes() == before
    assert (tmp_path / "x_labels_labels.png").is_file()  # the other input still ran


def test_predict_out_that_is_a_file_fails_before_any_work(tmp_path: Path, capsys) -> None:
    (tmp_path / "results").write_text("not a folder")
    code = main(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "missing.onnx"),
                 "--out", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err and "missing.onnx" not in err


def test_a_bad_file_in_a_batch_does_not_stop_the_later_ones(tiny_model, tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    _, model = tiny_model
    (tmp_path / "garbage.png").write_bytes(b"no image at all")
    (tmp_path / "bomb.png").write_bytes(lying_png(100_000, 100_000))
    (tmp_path / "zero.tif").write_bytes(tiff_with_zero_width())
    write_png(tmp_path / "crash.png", _noise((60, 70), 8))
    write_png(tmp_path / "good.png", _noise((60, 70), 9))

    from unet_core import predict

    real_run = predict.run

    def run(image, *args, **kwargs):
        if image.name == "crash.png":
            raise RuntimeError("a bug in the engine")
        return real_run(image, *args, **kwargs)

    monkeypatch.setattr(predict, "run", run)
    names = ["garbage.png", "bomb.png", "zero.tif", "crash.png", "good.png"]
    code = main(["predict", *(str(tmp_path / n) for n in names), "--model", str(model),
                 "--out", str(tmp_path / "out"), "--tile", TILE])
    err = capsys.readouterr().err
    assert code == 1 and "4 of 5 files failed" in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert [line.split(": ", 2)[1] for line in errors] == [str(tmp_path / n) for n in names[:4]]
    assert "internal error (RuntimeError: a bug in the engine); please report it" in errors[3]
    assert (tmp_path / "out" / "good_labels.png").is_file()


def test_a_file_name_starting_with_a_dash_works_after_double_dash(tiny_model, tmp_path: Path,
                                                                  monkeypatch) -> None:
    _, model = tiny_model
    monkeypatch.chdir(tmp_path)
    write_png(tmp_path / "-x.png", _noise((60, 70)))
    write_png(tmp_path / "y.png", _noise((60, 70), 1))
    assert main(["predict", "--model", str(model), "--out", "out", "--tile", TILE, "--", "-x.png", "y.png"]) == 0
    assert (tmp_path / "out" / "-x_labels.png").is_file() and (tmp_path / "out" / "y_labels.png").is_file()
    proc = _predict_cli(["--help"])
    assert "after '--'" in " ".join(proc.stdout.split())


# --------------------------------------------------------------------------- one bad sample


def _data_set_with_bad_samples(root: Path, n_good: int) -> tuple[Path, list[str]]:
    """A synthetic images/ + masks/ set of ``n_good`` good pairs plus three bad ones: a truncated
    image, a constant image and a mask whose ids do not fit int32."""
    from unet_core.synthetic import SynthConfig, write_dataset

    write_dataset(root, n_good, SynthConfig(height=64, width=80, n_cells=(4, 9), radius=(5.0, 10.0)), seed=3)
    good_mask = np.asarray(Image.open(next((root / "masks").glob("*.png"))))
    Image.fromarray(_noise((64, 80))).save(root / "images" / "zz_truncated.png")
    data = (root / "images" / "zz_truncated.png").read_bytes()
    (root / "images" / "zz_truncated.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.full((64, 80), 7, np.uint8)).save(root / "images" / "zz_constant.png")
    for name in ("zz_truncated", "zz_constant"):
        Image.fromarray(good_mask).save(root / "masks" / f"{name}.png")
    Image.fromarray(_noise((64, 80), seed=4)).save(root / "images" / "zz_huge_ids.png")
    huge = np.where(good_mask > 0, 3_000_000_006, 0).astype(np.uint32)
    tifffile.imwrite(root / "masks" / "zz_huge_ids.tif", huge)
    return root, ["zz_truncated", "zz_constant", "zz_huge_ids"]


@pytest.mark.slow
def test_training_leaves_out_bad_samples_by_name_and_refuses_when_most_are_bad(tmp_path: Path, capsys) -> None:
    from unet_core.runlog import read_log

    data, bad = _data_set_with_bad_samples(tmp_path / "cells", n_good=6)
    run = tmp_path / "run"

    def args(out: Path, folder: Path) -> list[str]:
        return ["train", "--out", str(out), "--data", str(folder), "--width", "4", "--tile", "36", "--steps", "2",
                "--split", "none", "--workers", "0", "--threads", "1", "--no-export", "--quiet"]

    assert main(args(run, data)) == 0
    skipped = [r["problem"] for r in read_log(run / "log.jsonl") if r.get("event") == "skipped"]
    assert sorted(p.split(":")[0].split(".")[0] for p in skipped) == sorted(bad)
    assert any("int32" in p for p in skipped) and any("constant" in p for p in skipped)
    assert any("truncated" in p for p in skipped)

    mostly_bad, _ = _data_set_with_bad_samples(tmp_path / "bad", n_good=2)
    capsys.readouterr()
    assert main(args(tmp_path / "run2", mostly_bad)) == 2
    err = capsys.readouterr().err
    assert "only 2 of 5 training images can be used" in err and "zz_" in err and "Traceback" not in err


def test_evaluation_scores_the_other_images_and_names_the_bad_ones(tiny_model, tmp_path: Path, capsys) -> None:
    data, bad = _data_set_with_bad_samples(tmp_path / "cells", n_good=3)
    report = tmp_path / "report.md"
    code = main(["evaluate", "--model", str(tiny_model[1]), "--data", str(data), "--split", "all", "--tile", TILE,
                 "--diameter", "off", "--report", str(report)])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    result = json.loads(out)
    assert result["n_images"] == 3 and {s["name"] for s in result["skipped"]} == set(bad)
    assert all(np.isfinite(v) for v in result["metrics"].values() if v is not None)
    for name in bad:
        assert f"error: {name}: " in err and f"{name}: " in report.read_text()
