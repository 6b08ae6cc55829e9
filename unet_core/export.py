"""PyTorch -> ONNX export with dynamic batch, height and width, and the model's metadata inside.

The exported graph takes ``image`` (N, C, H, W) float32, already normalised, and returns
``logits`` and ``probabilities`` (softmax over classes). H and W are symbolic but restricted to
the sizes the network accepts (for the paper's net ``16k + 188``), so ONNX Runtime rejects an
invalid tile with a clear shape error instead of silently mis-pooling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch.export import Dim

from .metadata import METADATA_KEY, ModelMeta, read_metadata  # noqa: F401  (re-exported)
from .model import UNet

INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "probabilities")


class _WithSoftmax(torch.nn.Module):
    """Adds the softmax output to the exported graph (the network itself returns logits)."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, torch.softmax(logits, dim=1)


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's notes that do not concern a U-Net (torchvision ops, deprecations)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)


def to_onnx(model: UNet, meta: ModelMeta, path: str | Path) -> Path:
    """Export ``model`` to ``path`` (written atomically) with ``meta`` embedded; returns the path."""
    path = Path(path)
    # Never write a model that loading would refuse (metadata out of range, e.g. made by hand):
    # raises MetadataError before any work.
    ModelMeta.from_dict(meta.to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    geometry = meta.geometry
    base = geometry.input_size(geometry.min_output)
    step = geometry.alignment
    example = torch.zeros(1, meta.unet.in_channels, base + 3 * step, base + 4 * step)
    kh, kw = Dim("kh", min=0, max=4096), Dim("kw", min=0, max=4096)
    dynamic = {"x": {0: Dim("batch", min=1, max=4096), 2: step * kh + base, 3: step * kw + base}}
    was_training = model.training
    wrapper = _WithSoftmax(model).eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=dynamic,
                dynamo=True,
                # No graph optimisation here: it merges initializers with equal values (e.g. the
                # zero biases of a fresh net), which would lose the name -> parameter mapping that
                # fine-tuning from an .onnx relies on. ONNX Runtime optimises at load time anyway.
                optimize=False,
                verbose=False,
            )
    finally:
        model.train(was_training)
    proto = program.model_proto
    add_metadata(proto, meta)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def add_metadata(proto: onnx.ModelProto, meta: ModelMeta) -> None:
    """Store ``meta`` as JSON in the model's ``metadata_props`` (replacing an older record)."""
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=meta.to_json())
    proto.doc_string = f"U-Net Studio model '{meta.name}' ({', '.join(meta.class_names)})"


def state_dict_from_onnx(path: str | Path) -> dict[str, torch.Tensor]:
    """The PyTorch weights embedded in an exported model (for fine-tuning from a shipped .onnx).

    The exporter names each initializer after its parameter (``net.<name>``); anything else in
    the graph (constants folded by the exporter) is ignored.
    """
    proto = onnx.load_model(str(path))
    prefix = "net."
    return {
        init.name[len(prefix) :]: torch.from_numpy(onnx.numpy_helper.to_array(init).copy())
        for init in proto.graph.initializer
        if init.name.startswith(prefix)
    }


def parity(model: UNet, onnx_path: str | Path, sizes: list[int], seed: int = 0) -> float:
    """Max |ONNX Runtime - PyTorch| over the probabilities for random inputs of the given edges."""
    from .runtime import OnnxPredictor  # runtime imports nothing from export; avoid a cycle anyway

    predictor = OnnxPredictor(onnx_path, device="cpu")
    rng = np.random.default_rng(seed)
    model = model.eval()
    worst = 0.0
    for size in sizes:
        x = rng.random((1, model.config.in_channels, size, size), dtype=np.float32)
        with torch.no_grad():
            ref = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
        worst = max(worst, float(np.abs(predictor.predict_batch(x) - ref).max()))
    return worst
