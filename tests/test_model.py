"""The paper's architecture: layer count, parameter count, sizes, initialisation."""

from __future__ import annotations

import pytest
import torch

from unet_core.model import UNet, center_crop, count_conv_layers, count_parameters


@pytest.mark.slow
def test_paper_network_layers_parameters_and_sizes() -> None:
    net = UNet(in_channels=1, n_classes=2, width=64, depth=4).eval()
    assert count_conv_layers(net) == 23
    assert count_parameters(net) == 31_030_658
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


def test_channels_double_down_and_halve_up() -> None:
    net = UNet(width=64)
    down = [block[0].out_channels for block in net.down] + [net.bottom[0].out_channels]
    assert down == [64, 128, 256, 512, 1024]
    assert [block.up.out_channels for block in net.up] == [512, 256, 128, 64]
    assert net.head.kernel_size == (1, 1) and net.head.out_channels == 2


def test_he_initialisation_std_matches_fan_in() -> None:
    torch.manual_seed(0)
    net = UNet(width=32)
    conv = net.down[2][0]  # 3x3, 64 -> 128 channels: N = 9 * 64
    expected = (2.0 / (9 * 64)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.03)
    assert torch.all(conv.bias == 0)
    up = net.up[0].up  # 2x2 stride 2: each output unit sees one tap per input channel
    assert up.weight.std().item() == pytest.approx((2.0 / up.in_channels) ** 0.5, rel=0.03)


def test_dropout_only_in_training_and_at_the_end_of_the_contracting_path() -> None:
    torch.manual_seed(0)
    net = UNet(width=4, dropout=0.5)
    assert isinstance(net.dropout, torch.nn.Dropout2d)
    x = torch.rand(1, 1, 188, 188)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))
    assert isinstance(UNet(width=4, dropout=0).dropout, torch.nn.Identity)


@pytest.mark.parametrize("depth,size_in,size_out", [(4, 188, 4), (4, 572, 388), (3, 92, 4), (2, 44, 4)])
def test_valid_sizes_for_other_depths(depth: int, size_in: int, size_out: int) -> None:
    net = UNet(width=2, depth=depth).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, size_in, size_in)).shape[-1] == size_out


def test_same_padding_keeps_size_and_multi_channel_input() -> None:
    net = UNet(in_channels=3, n_classes=3, width=4, padding="same").eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 64, 96)).shape == (2, 3, 64, 96)
    with pytest.raises(ValueError):
        UNet(padding="reflect")  # type: ignore[arg-type]


def test_center_crop_takes_the_middle() -> None:
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert center_crop(x, 2, 2).flatten().tolist() == [14.0, 15.0, 20.0, 21.0]


def test_flop_counts_match_the_paper_net() -> None:
    from unet_core.model import UNetConfig, conv_flops, flops_per_pixel_limit

    cfg = UNetConfig()
    assert flops_per_pixel_limit(cfg) == pytest.approx(1.467776e6)
    assert conv_flops(cfg, 572, 572) / 388**2 == pytest.approx(2.0e6, rel=0.01)
    # A very large tile approaches the infinite-tile limit from above.
    big = 16 * 400 + 4
    assert flops_per_pixel_limit(cfg) < conv_flops(cfg, big + 184, big + 184) / big**2 < 1.02 * flops_per_pixel_limit(cfg)
