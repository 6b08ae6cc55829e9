"""How much work a network pass or a training run is, without torch: the convolution FLOPs of
the paper's valid U-Net for a tile, and the time of a training run on this computer from the
speed its earlier runs reached (the app asks before it starts a run of hours).

:func:`unet_core.model.conv_flops` counts the same FLOPs by tracing the PyTorch module (a test
checks the two agree); this module is its torch-free twin for the app's side.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from .metadata import UNetConfig
from .tiling import Geometry

#: A training step (forward, backward, optimiser) costs about this many forward passes: the
#: backward pass computes gradients of both the activations and the weights (2 forward's worth).
TRAIN_STEP_FORWARDS = 3.0


def forward_flops(cfg: UNetConfig, output_tile: int) -> float:
    """Convolution FLOPs (2 per multiply-add) of one forward pass of a valid U-Net over the input
    tile that gives ``output_tile`` x ``output_tile`` output pixels.

    Raises:
        ValueError: ``cfg`` is not a valid-padding network, or the tile is not a valid output size.
    """
    if cfg.padding != "valid":
        raise ValueError("forward_flops counts the paper's valid network only")
    geometry = Geometry(cfg.depth, "valid")
    size = geometry.input_size(output_tile)
    widths = [cfg.width * 2**level for level in range(cfg.depth + 1)]
    flops, c_in, skips = 0.0, cfg.in_channels, []
    for level in range(cfg.depth + 1):  # contracting path and bottleneck: two 3x3 convolutions each
        for conv in range(2):
            size -= 2
            flops += 2 * size * size * (c_in if conv == 0 else widths[level]) * widths[level] * 9
        c_in = widths[level]
        if level < cfg.depth:
            skips.append(size)
            size //= 2
    for level in reversed(range(cfg.depth)):  # expanding path: up-convolution, then two 3x3 convolutions
        size *= 2
        flops += 2 * size * size * widths[level + 1] * widths[level]  # 2x2 stride 2: one tap per output
        for conv in range(2):
            size -= 2
            flops += 2 * size * size * (2 * widths[level] if conv == 0 else widths[level]) * widths[level] * 9
    return flops + 2 * size * size * widths[0] * cfg.n_classes  # the 1x1 head


def train_step_flops(cfg: UNetConfig, tile: int, batch: int = 1) -> float:
    """FLOPs of one training step of ``batch`` tiles (:data:`TRAIN_STEP_FORWARDS` forward passes)."""
    return TRAIN_STEP_FORWARDS * batch * forward_flops(cfg, tile)


@dataclass(frozen=True)
class RunEstimate:
    """About how long a training run takes here.

    Attributes:
        seconds: the whole run (its steps; validation and data preparation come on top).
        step_seconds: one step.
        basis: where the speed comes from, in words (``"2 earlier runs on this computer"``).
    """

    seconds: float
    step_seconds: float
    basis: str


def estimate_run(cfg: UNetConfig, tile: int, steps: int, batch: int,
                 speeds: Iterable[float]) -> RunEstimate | None:
    """The time of a run of ``steps`` steps, at the median of ``speeds`` (training FLOP/s that
    earlier runs on this computer and device reached: :func:`train_speed`); None without any."""
    known = [s for s in speeds if s > 0]
    if not known:
        return None
    speed = statistics.median(known)
    step = train_step_flops(cfg, tile, batch) / speed
    basis = f"{len(known)} earlier run{'s' if len(known) != 1 else ''} on this computer"
    return RunEstimate(step * steps, step, basis)


def train_speed(cfg: UNetConfig, tile: int, batch: int, seconds_per_step: float) -> float:
    """The training FLOP/s a run reached: its step's FLOPs over its (median) step time."""
    return train_step_flops(cfg, tile, batch) / seconds_per_step
