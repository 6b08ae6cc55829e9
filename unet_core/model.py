"""The U-Net of Ronneberger, Fischer and Brox (MICCAI 2015, arXiv:1505.04597), configurable.

Paper values are the defaults: 4 contracting steps, each two unpadded 3x3 convolutions + ReLU and
a 2x2 max-pool with stride 2, channels doubling 64 -> 1024; an expansive path of 2x2 up-convolutions
that halve the channels, concatenation with the centre-cropped skip, two 3x3 convolutions + ReLU;
a final 1x1 convolution to K classes. That is 23 convolutional layers, and a 572 x 572 input gives
a 388 x 388 output. Dropout sits at the end of the contracting path; weights are drawn from a
Gaussian with standard deviation sqrt(2 / N), N = fan-in (He et al. 2015), as in Sec. 3.

The network returns logits; the softmax belongs to the predictor and the exported graph.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .metadata import UNetConfig

Padding = Literal["valid", "same"]


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by a ReLU."""

    def __init__(self, c_in: int, c_out: int, padding: Padding) -> None:
        pad = 1 if padding == "same" else 0
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=pad),
            nn.ReLU(inplace=True),
        )


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the centre ``height x width`` of an NCHW tensor (the paper's skip-connection crop)."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class Up(nn.Module):
    """2x2 up-convolution halving channels, concatenation with the cropped skip, DoubleConv."""

    def __init__(self, c_in: int, c_out: int, padding: Padding) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * c_out, c_out, padding)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        skip = center_crop(skip, x.shape[-2], x.shape[-1])
        return self.conv(torch.cat([skip, x], dim=1))


#: State-dict key of the first convolution's kernel (out, in_channels, 3, 3): the only weights
#: that depend on the number of input channels.
FIRST_CONV_WEIGHT = "down.0.0.weight"
#: State-dict keys of the 1x1 output convolution (one row per class).
HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"


class UNet(nn.Module):
    """The paper's U-Net.

    Args:
        in_channels: image channels (1 for gray).
        n_classes: K, the number of output classes (softmax over K logits).
        width: channels of the first level (64 in the paper); level i has ``width * 2**i``.
        depth: number of contracting steps (4 in the paper).
        padding: ``"valid"`` (the paper: unpadded convolutions, output smaller than input, for
            exact overlap-tile inference) or ``"same"`` (zero padding, output size = input size).
        dropout: drop probability at the end of the contracting path (0 disables it).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        width: int = 64,
        depth: int = 4,
        padding: Padding = "valid",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', not {padding!r}")
        self.config = UNetConfig(in_channels, n_classes, width, depth, padding, dropout)
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [DoubleConv(in_channels if i == 0 else chans[i - 1], chans[i], padding) for i in range(depth)]
        )
        self.pool = nn.MaxPool2d(2, 2)
        self.bottom = DoubleConv(chans[depth - 1], chans[depth], padding)
        # The paper: "Drop-out layers at the end of the contracting path perform further implicit
        # data augmentation" -- i.e. on the deepest feature map, before the first up-convolution.
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList([Up(chans[i + 1], chans[i], padding) for i in reversed(range(depth))])
        self.head = nn.Conv2d(width, n_classes, kernel_size=1)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: UNetConfig) -> UNet:
        return cls(cfg.in_channels, cfg.n_classes, cfg.width, cfg.depth, cfg.padding, cfg.dropout)

    def reset_parameters(self) -> None:
        """He initialisation: N(0, sqrt(2/N)), N = the incoming connections of one output unit.

        For a 3x3 (or 1x1) convolution N = k*k*c_in. For the 2x2 stride-2 up-convolution the kernel
        positions do not overlap, so each output unit sees one tap per input channel: N = c_in.
        """
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.weight.shape[0]
                nn.init.normal_(m.weight, mean=0.0, std=(2.0 / fan_in) ** 0.5)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)
        return self.head(x)


def count_conv_layers(model: nn.Module) -> int:
    """Number of convolutional layers (plain and transposed), 23 for the paper's net."""
    return sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_flops(cfg: UNetConfig, height: int, width: int) -> int:
    """FLOPs (2 per multiply-add) of all convolutions for one ``height x width`` input.

    Shapes are traced on PyTorch's "meta" device: no memory, no compute, exact for any layer mix.
    """
    flops = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(module, nn.ConvTranspose2d):
            # Stride = kernel: every output unit takes one tap from each input channel.
            flops += 2 * output.numel() * module.in_channels
        else:
            flops += 2 * output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]

    with torch.device("meta"):
        traced = UNet.from_config(cfg)
    hooks = [m.register_forward_hook(count) for m in traced.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        traced(torch.empty(1, cfg.in_channels, height, width, device="meta"))
    for h in hooks:
        h.remove()
    return flops


def flops_per_pixel_limit(cfg: UNetConfig) -> float:
    """Convolution FLOPs per output pixel for an infinitely large tile (no overlap, no margin).

    At level l (resolution 1/2**l, w_l = width * 2**l channels) a pixel costs two 3x3 convolutions
    down, two up (the first on the concatenation, 2*w_l channels) and the up-convolution from level
    l+1; per output pixel it counts 1/4**l. 1.47 MFLOP for the paper's net.
    """
    w = [cfg.width * 2**level for level in range(cfg.depth + 1)]
    total = 0.0
    for level in range(cfg.depth):
        c_in = cfg.in_channels if level == 0 else w[level - 1]
        down = 9 * (c_in * w[level] + w[level] * w[level])
        up = 9 * (2 * w[level] * w[level] + w[level] * w[level]) + w[level + 1] * w[level]
        total += 2 * (down + up) / 4**level
    total += 2 * 9 * (w[-2] * w[-1] + w[-1] * w[-1]) / 4**cfg.depth
    total += 2 * w[0] * cfg.n_classes
    return total
