"""Checkpoints: a model's weights and metadata (and, for training, its optimiser state).

Written atomically (temporary file in the same folder, fsync, rename) so that a process killed at
any moment leaves either the previous checkpoint or the new one, never a torn file. Loaded with
``torch.load(weights_only=True)``: a checkpoint holds tensors and plain data only, so a file from
somebody else cannot run code on this machine.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .atomic import write_atomically
from .errors import UserError
from .metadata import MetadataError, ModelMeta
from .model import UNet


class CheckpointError(UserError):
    """A checkpoint that cannot be read; the message names the file."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    # fsync: a machine that loses power keeps the old or the new checkpoint, never an empty file.
    write_atomically(path, lambda fh: torch.save(obj, fh), fsync=True)


def save_checkpoint(path: str | Path, model: UNet, meta: ModelMeta, **state: Any) -> None:
    """Save weights + metadata (+ any extra plain/tensor ``state``, e.g. optimiser, step)."""
    atomic_save({"model": model.state_dict(), "meta": meta.to_dict(), **state}, path)


def _torch_reason(exc: BaseException) -> str:
    """torch.load's complaint in one line, without its advice to load with ``weights_only=False``.

    That advice would tell a user to let a file of unknown origin run code on their machine.
    """
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(str(exc).split()))
    kept = [s for s in sentences if not re.search(r"weights_only|trusted source|documentation of torch\.load|"
                                                  r"PyTorch 2\.6|Weights only load failed", s)]
    text = " ".join(kept).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dictionary, loaded safely (``weights_only=True``)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such checkpoint") from exc
    except MemoryError as exc:
        raise CheckpointError(f"{path}: not enough memory to read this checkpoint") from exc
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{path}: refused: the checkpoint holds Python objects besides tensors and plain data, which "
                f"could run code on this machine ({_torch_reason(exc)}); only checkpoints written by U-Net "
                "Studio are loaded") from exc
        raise CheckpointError(f"{path}: not a readable U-Net Studio checkpoint ({_torch_reason(exc)})") from exc
    except Exception as exc:  # truncated zips, foreign pickles: torch raises anything
        raise CheckpointError(f"{path}: not a readable U-Net Studio checkpoint "
                              f"({type(exc).__name__}: {_torch_reason(exc)})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise CheckpointError(f"{path}: not a U-Net Studio checkpoint (no model weights and metadata)")
    return ckpt


def checkpoint_meta(ckpt: dict[str, Any], path: str | Path) -> ModelMeta:
    """The validated metadata of a checkpoint read by :func:`read_checkpoint`."""
    try:
        return ModelMeta.from_dict(ckpt["meta"])
    except MetadataError as exc:
        raise CheckpointError(f"{path}: invalid U-Net Studio metadata: {exc}") from exc


def _check_weights(state: Any, meta: ModelMeta, path: str | Path) -> None:
    """The weights are tensors of exactly the shapes of the network the metadata describes.

    The reference shapes come from a network built on PyTorch's "meta" device (no memory), so a
    checkpoint whose metadata and weights disagree is refused before anything is allocated.
    """
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: the checkpoint holds no model weights")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in UNet.from_config(meta.unet).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        listed = ", ".join(missing[:3]) or ", ".join(map(str, extra[:3]))
        raise CheckpointError(f"{path}: the weights do not match the network in its metadata "
                              f"({len(missing)} missing, {len(extra)} unexpected, e.g. {listed})")
    for key, shape in expected.items():
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise CheckpointError(f"{path}: weight {key} is not a floating-point tensor")
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"{path}: weight {key} has shape {tuple(tensor.shape)}, the network in its "
                                  f"metadata needs {shape}")


def load_checkpoint(path: str | Path) -> tuple[UNet, ModelMeta]:
    """Rebuild the model (in eval mode) and its metadata from a checkpoint.

    Raises:
        CheckpointError: unreadable or unsafe file, invalid metadata, weights not matching it.
    """
    ckpt = read_checkpoint(path)
    meta = checkpoint_meta(ckpt, path)
    _check_weights(ckpt["model"], meta, path)
    model = UNet.from_config(meta.unet)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: the weights cannot be loaded ({_torch_reason(exc)})") from exc
    return model.eval(), meta
