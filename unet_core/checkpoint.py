"""Checkpoints: a model's weights and metadata (and, for training, its optimiser state).

Written atomically (temporary file in the same folder, fsync, rename) so that a process killed at
any moment leaves either the previous checkpoint or the new one, never a torn file. Loaded with
``torch.load(weights_only=True)``: a checkpoint holds tensors and plain data only, so a file from
somebody else cannot run code on this machine.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .metadata import ModelMeta
from .model import UNet


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, model: UNet, meta: ModelMeta, **state: Any) -> None:
    """Save weights + metadata (+ any extra plain/tensor ``state``, e.g. optimiser, step)."""
    atomic_save({"model": model.state_dict(), "meta": meta.to_dict(), **state}, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dictionary, loaded safely (``weights_only=True``)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such checkpoint") from exc
    except Exception as exc:  # pickle errors of all kinds: truncated, foreign, unsafe
        raise CheckpointError(f"{path}: not a readable U-Net Studio checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise CheckpointError(f"{path}: not a U-Net Studio checkpoint (no model weights and metadata)")
    return ckpt


def load_checkpoint(path: str | Path) -> tuple[UNet, ModelMeta]:
    """Rebuild the model (in eval mode) and its metadata from a checkpoint."""
    ckpt = read_checkpoint(path)
    meta = ModelMeta.from_dict(ckpt["meta"])
    model = UNet.from_config(meta.unet)
    model.load_state_dict(ckpt["model"])
    return model.eval(), meta
