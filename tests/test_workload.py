"""The torch-free work arithmetic: FLOPs of the valid U-Net (checked against tracing the PyTorch
module) and the time of a training run from the speed earlier runs reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from unet_core.metadata import UNetConfig
from unet_core.model import conv_flops
from unet_core.studio import jobs
from unet_core.studio.runs import RunInfo, train_speeds
from unet_core.tiling import Geometry
from unet_core.workload import estimate_run, forward_flops, train_speed, train_step_flops


@pytest.mark.parametrize(("cfg", "tile"), [(UNetConfig(), 388), (UNetConfig(width=24, in_channels=3, n_classes=3,
                                                                                depth=3), 100),
                                           (UNetConfig(width=8, depth=2), 36)])
def test_forward_flops_equal_those_of_the_traced_network(cfg: UNetConfig, tile: int) -> None:
    side = Geometry(cfg.depth, "valid").input_size(tile)
    assert forward_flops(cfg, tile) == conv_flops(cfg, side, side)
    assert train_step_flops(cfg, tile, batch=2) == 6 * forward_flops(cfg, tile)


def test_forward_flops_refuse_what_they_cannot_count() -> None:
    with pytest.raises(ValueError, match="valid"):
        forward_flops(UNetConfig(padding="same"), 388)
    with pytest.raises(ValueError, match="not a valid output size"):
        forward_flops(UNetConfig(), 387)


def _run(width: int, tile: int, step_s: float | None, device: str = "cpu", amp: str = "auto") -> RunInfo:
    return RunInfo(f"w{width}", Path("."), "finished", seconds_per_step=step_s, device=device,
                   config={"width": width, "tile": tile, "amp": amp, "class_names": ["bg", "fg"]})


def test_a_new_runs_time_comes_from_the_speed_of_earlier_runs_on_the_same_device() -> None:
    small = UNetConfig(width=8)
    earlier = [_run(8, 100, 0.05), _run(16, 196, 0.4), _run(8, 100, 0.01, device="cuda"),
               _run(8, 100, 0.02, amp="bf16"), _run(8, 100, None)]
    speeds = train_speeds(earlier, "cpu")  # runs with the default precision setting, auto
    assert speeds == [train_speed(small, 100, 1, 0.05), train_speed(UNetConfig(width=16), 196, 1, 0.4)]
    assert train_speeds(earlier, "cpu", "bf16") == [train_speed(small, 100, 1, 0.02)]
    older = RunInfo("old", Path("."), "finished", seconds_per_step=0.03, device="cpu",
                    config={"width": 8, "tile": 100, "class_names": ["bg", "fg"]})  # before --amp: fp32
    assert train_speeds([older], "cpu", "none") == [train_speed(small, 100, 1, 0.03)]
    assert train_speeds([older], "cpu") == []
    est = estimate_run(small, 100, 1000, 1, speeds[:1])
    assert est.step_seconds == pytest.approx(0.05) and est.seconds == pytest.approx(50.0)
    assert est.basis == "1 earlier run on this computer"
    assert estimate_run(small, 100, 1000, 1, []) is None

    # The page's form: the measured speed when there is one, else a typical computer's (said so).
    options = {"width": 8, "tile": 100, "steps": 1000}
    assert jobs.estimate_new_run(options, earlier[:1], gpu=False).seconds == pytest.approx(50.0)
    typical = jobs.estimate_new_run({"width": 64, "tile": 388, "steps": 1000}, [], gpu=False)
    assert typical.seconds > jobs.LONG_RUN_S and "typical computer without a GPU" in typical.basis
    gpu = jobs.estimate_new_run({"width": 64, "tile": 388, "steps": 1000}, earlier, gpu=True)
    assert gpu.basis == "1 earlier run on this computer"  # the cuda run, not the CPU ones
    fine_tuning = jobs.estimate_new_run({"width": None, "tile": 100, "steps": 1000}, earlier[:1], False, 8)
    assert fine_tuning.seconds == pytest.approx(50.0)  # the init model's width
