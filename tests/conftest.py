"""Shared fixtures: a tiny exported model (made once per session), private app folders, fake
images, data locations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from unet_core.export import to_onnx
from unet_core.metadata import ModelMeta
from unet_core.model import UNet

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

#: Fixtures that export, quantize or train a model first (seconds each, once per session or
#: module): a test that uses one is ``slow``, like the tests marked so by hand.
SLOW_FIXTURES = {"tiny_model_dir", "d2s_model", "quantized", "finished_run"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def random_net(seed: int = 0, width: int = 4) -> UNet:
    """A U-Net with random (He) weights and non-zero biases, from ``seed``: arbitrary but
    reproducible labels, every parameter exercised by export and parity."""
    torch.manual_seed(seed)
    net = UNet(width=width, dropout=0).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 1:
                p.uniform_(-0.1, 0.1)
    return net


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models/ folder holding ``tiny.onnx``: a random width-4 U-Net (deterministic weights).

    Random weights give arbitrary but reproducible labels: enough for equality and plumbing tests.
    Biases are made non-zero so that every parameter is exercised by export and parity.
    """
    folder = tmp_path_factory.mktemp("models")
    net = random_net(seed=0)
    to_onnx(net, ModelMeta(name="tiny", unet=net.config), folder / "tiny.onnx")
    torch.save(net.state_dict(), folder / "tiny_state.pt")
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> tuple[UNet, Path]:
    """The tiny network in PyTorch and the path of its ONNX export."""
    net = UNet(width=4, dropout=0).eval()
    net.load_state_dict(torch.load(tiny_model_dir / "tiny_state.pt", weights_only=True))
    return net, tiny_model_dir / "tiny.onnx"


@dataclass(frozen=True)
class StudioDirs:
    """The folders the app reads while a test runs (see :func:`studio_dirs`)."""

    models: Path
    runs: Path
    cache: Path


@pytest.fixture
def studio_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StudioDirs:
    """Point the app and the engine at empty private models/, runs/ and cache folders.

    Tests must never see the repository's own models (they change as models are trained) nor
    write the user's tile cache; put what a test needs into these folders.
    """
    dirs = StudioDirs(tmp_path / "models", tmp_path / "runs", tmp_path / "cache")
    for folder in (dirs.models, dirs.runs, dirs.cache):
        folder.mkdir()
    monkeypatch.setenv("UNET_STUDIO_MODELS", str(dirs.models))
    monkeypatch.setenv("UNET_STUDIO_RUNS", str(dirs.runs))
    monkeypatch.setenv("UNET_STUDIO_CACHE", str(dirs.cache))
    return dirs


@pytest.fixture
def cells_image() -> Callable[..., np.ndarray]:
    """A maker of deterministic fake microscopy: bright blurred blobs on a dark noisy background.

    ``cells_image(shape=(260, 300), dtype=np.uint8, seed=0)``; ``shape`` may be ``(Z, H, W)``
    for a stack. Sizes that are no multiple of any tile exercise the stitching at the borders.
    """

    def make(shape: tuple[int, ...] = (260, 300), dtype: np.dtype = np.uint8, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        spots = (rng.random(shape) > 0.998).astype(np.float32)
        sigma = (0, 6, 6) if len(shape) == 3 else 6
        image = ndi.gaussian_filter(spots, sigma) + 0.002 * rng.random(shape, dtype=np.float32)
        image /= image.max()
        top = np.iinfo(dtype).max if np.dtype(dtype).kind in "ui" else 1.0
        return (image * top).astype(dtype)

    return make


@pytest.fixture
def tiny_installed(studio_dirs: StudioDirs, tiny_model_dir: Path) -> Path:
    """The tiny model as the only shipped model; returns its path inside models/."""
    path = studio_dirs.models / "tiny.onnx"
    path.symlink_to(tiny_model_dir / "tiny.onnx")
    return path
