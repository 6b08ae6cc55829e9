"""The paper's energy (Eq. 1) and the learning rate of each step."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import TrainConfig


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of update ``step`` (1-based): warm-up, then the schedule."""
    i = step - 1
    if i < cfg.warmup_steps:
        return cfg.lr * (i + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps - 1)
        t = min(1.0, (i - cfg.warmup_steps) / span)
        return cfg.lr * (cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t)))
    if cfg.schedule == "step":
        return cfg.lr * cfg.lr_gamma ** ((i - cfg.warmup_steps) // max(1, cfg.lr_step_size))
    return cfg.lr


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                           pixels: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's energy: pixel-wise softmax cross-entropy weighted by ``weights`` (Eq. 1).

    ``sum_x w(x) * -log p_{l(x)}(x) / #{x : w(x) > 0}``: a weighted sum normalised by the number
    of pixels that take part (weight 0 marks pixels outside the image).

    Args:
        logits: (B, K, h, w) network output.
        target: (B, h, w) integer class of each pixel.
        weights: (B, h, w) per-pixel weights (0 = ignored).
        pixels: the number of pixels that take part in the whole batch when these tiles are one
            process's share of it (:mod:`.distributed`): the losses of the shares then add up to
            the batch's. Default: those of ``weights``.
    """
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    n = ((weights > 0).sum() if pixels is None else pixels).clamp_min(1)
    return (weights * ce).sum() / n
