"""Fine-tuning: the weights and architecture of a model to start from (``--init``; its recipe:
:func:`unet_core.config.init_recipe`), and the two ways such a model may be widened (a gray model
to colour input, a two-class model to an outline class)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, checkpoint_meta, read_checkpoint
from ..config import DEFAULT_BORDER_WIDTH, TrainConfig, TrainError
from ..io import LUMA
from ..metadata import ModelMeta
from ..model import FIRST_CONV_WEIGHT, HEAD_BIAS, HEAD_WEIGHT


def load_init_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    """Weights and metadata of a model to start from: a ``.pt`` checkpoint or an exported ``.onnx``."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: init model not found")
    if path.suffix.lower() == ".onnx":
        from ..export import read_metadata, state_dict_from_onnx

        try:
            return state_dict_from_onnx(path), read_metadata(path)
        except Exception as exc:
            raise TrainError(f"{path}: cannot read the init model ({exc})") from exc
    try:
        ckpt = read_checkpoint(path)
        return ckpt["model"], checkpoint_meta(ckpt, path)  # checked like any model file's metadata
    except CheckpointError as exc:
        raise TrainError(str(exc)) from exc


def apply_init(cfg: TrainConfig) -> TrainConfig:
    """The config with the architecture of ``cfg.init`` (fine-tuning keeps the model's shape).

    Two exceptions: a gray (1-channel) init model may be widened to ``cfg.in_channels`` (3 for
    colour) by :func:`widen_input`, and a two-class one given the outline class of
    ``cfg.border_width`` by :func:`add_border_class`. A model with an outline class keeps it (at
    the width it was trained with), and a model with a canonical object diameter keeps that unless
    ``cfg.diameter`` gives another: its weights know objects of that size, and without one the new
    images would be shown at their own scale and the fine-tuned model would lose the scale search.
    """
    if not cfg.init:
        return cfg
    _, meta = load_init_weights(cfg.init)
    u = meta.unet
    if u.padding != "valid":
        raise TrainError(f"{cfg.init}: only 'valid' (paper) networks can be fine-tuned here")
    in_channels = cfg.in_channels if u.in_channels == 1 and cfg.in_channels > 1 else u.in_channels
    names = cfg.class_names or list(meta.class_names)
    border_width = cfg.border_width
    if border_width and meta.border_class is None:
        if len(names) != 2:
            raise TrainError(f"{cfg.init}: only a two-class model can be given a border class, not {names}")
        names = [*names, "border"]
    elif meta.border_class is not None and not border_width:  # the model keeps its outline class
        border_width = int((meta.training.get("config") or {}).get("border_width") or DEFAULT_BORDER_WIDTH)
    diameter = cfg.diameter if cfg.diameter is not None else meta.diameter
    if cfg.cytoplasm_prob and not diameter:
        raise TrainError(f"{cfg.init} has no object diameter to size synthetic cell bodies (cytoplasm_prob) by: "
                         "give --diameter, or start from a model that has one")
    return dataclasses.replace(cfg, width=u.width, depth=u.depth, in_channels=in_channels, class_names=names,
                               border_width=border_width, diameter=diameter)


def widen_input(state: dict[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """The weights of a gray model with its first convolution taking ``in_channels`` channels.

    For 3 channels the gray kernel is spread over R, G and B by the luminance weights with which
    a gray model sees a colour image (:data:`unet_core.io.LUMA`); otherwise evenly. The weights
    sum to one, so the widened model starts out computing what the gray model computed on the
    same pixels (exactly on gray images, whose channels are equal) and fine-tuning can then learn
    from colour.
    """
    weight = state[FIRST_CONV_WEIGHT]
    if weight.shape[1] == in_channels:
        return state
    if weight.shape[1] != 1:
        raise TrainError(f"only a 1-channel model can be widened, not a {weight.shape[1]}-channel one")
    share = torch.from_numpy(LUMA) if in_channels == 3 else torch.full((in_channels,), 1.0 / in_channels)
    widened = dict(state)
    widened[FIRST_CONV_WEIGHT] = weight * share.to(weight.dtype).view(1, in_channels, 1, 1)
    return widened


def add_border_class(state: dict[str, torch.Tensor], n_classes: int) -> dict[str, torch.Tensor]:
    """The weights of a two-class model with a third output, the border, for fine-tuning.

    The border starts as a copy of the foreground output, 1 lower in its logit: the widened model
    first finds the objects the two-class model found (all interior), and fine-tuning carves the
    outlines out of them.
    """
    weight, bias = state[HEAD_WEIGHT], state[HEAD_BIAS]
    if weight.shape[0] == n_classes:
        return state
    if weight.shape[0] != 2 or n_classes != 3:
        raise TrainError(f"only a 2-class model can be given a border class, not a {weight.shape[0]}-class one")
    widened = dict(state)
    widened[HEAD_WEIGHT] = torch.cat([weight, weight[1:2]])
    widened[HEAD_BIAS] = torch.cat([bias, bias[1:2] - 1.0])
    return widened
