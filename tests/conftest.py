"""Shared fixtures: a tiny exported model (made once per test session) and data locations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unet_core.export import to_onnx
from unet_core.metadata import ModelMeta
from unet_core.model import UNet

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models/ folder holding ``tiny.onnx``: a random width-4 U-Net (deterministic weights).

    Random weights give arbitrary but reproducible labels: enough for equality and plumbing tests.
    Biases are made non-zero so that every parameter is exercised by export and parity.
    """
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = UNet(width=4, dropout=0).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 1:
                p.uniform_(-0.1, 0.1)
    to_onnx(net, ModelMeta(name="tiny", unet=net.config), folder / "tiny.onnx")
    torch.save(net.state_dict(), folder / "tiny_state.pt")
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> tuple[UNet, Path]:
    """The tiny network in PyTorch and the path of its ONNX export."""
    net = UNet(width=4, dropout=0).eval()
    net.load_state_dict(torch.load(tiny_model_dir / "tiny_state.pt", weights_only=True))
    return net, tiny_model_dir / "tiny.onnx"
