"""Benchmark of unet_core.training: training throughput of the paper's net against a plain PyTorch loop.

Both sides train the same network (width 64, depth 4, dropout 0.5: the paper's U-Net) with the
same batch (1 tile, 572 -> 388), weighted softmax cross-entropy and SGD with momentum 0.99:

* **trainer**: :func:`unet_core.training.train` on synthetic 512 x 512 images, i.e. with everything
  a real run does per step: a tile cut and augmented (elastic + rotation/flip/shift + gray values)
  in a DataLoader worker, weight maps, per-step seeding, a JSON log line and a progress line;
* **plain**: a bare loop over pre-made tensors (no data work at all), the upper bound.

Reports output pixels per second of each (after one untimed warm-up step), their ratio, and the
fraction of the trainer's step time spent waiting for data. All numbers come from one run of this
script; the paper net takes ~14 s per step on a 2-core CPU, so the default is a few steps.

``--precision`` instead compares plain training steps in fp32, bf16 autocast (oneDNN uses
AVX512_BF16 where the CPU has it) and fp32 with channels_last memory format: the same seed, tiles
and steps for each, printing the step-time ratio against fp32 and the loss after the last step
(to see that the faster mode still trains alike).

Run from the repository root: ``python bench/train.py [--steps N] [--tile 388] [--width 64] [--threads T]``
or ``python bench/train.py --precision --width 16 --tile 244 --steps 12``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from unet_core.model import UNet
from unet_core.tiling import Geometry
from unet_core.training import TrainConfig, train
from unet_core.training.loss import weighted_cross_entropy


def trainer_run(width: int, tile: int, steps: int, workers: int) -> tuple[float, float, list[float]]:
    """(output px/s, data-wait fraction, step seconds) of the trainer over steps 2..steps+1."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data="synthetic", out=str(Path(tmp) / "bench"), width=width, tile=tile, batch=1,
                          steps=steps + 1, synth_n=6, val_every=0, checkpoint_every=0, export=False,
                          workers=workers, optimizer="sgd", lr=0.01, threads=torch.get_num_threads())
        train(cfg, progress=False)
        rows = [json.loads(line) for line in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "loss" in r and r["step"] > 1]
    seconds = [r["step_s"] for r in timed]
    wait = sum(r["data_wait"] * r["step_s"] for r in timed) / sum(seconds)
    return len(timed) * tile * tile / sum(seconds), wait, seconds


def plain_run(width: int, tile: int, steps: int) -> tuple[float, list[float]]:
    """(output px/s, step seconds) of a bare PyTorch loop over pre-made tensors."""
    torch.manual_seed(0)
    model = UNet(width=width).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99)
    size = Geometry().input_size(tile)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((1, 1, size, size), dtype=np.float32))
    y = torch.from_numpy((rng.random((1, tile, tile)) > 0.5).astype(np.int64))
    w = torch.from_numpy(rng.uniform(0.5, 3.0, (1, tile, tile)).astype(np.float32))
    seconds = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = weighted_cross_entropy(model(x), y, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())
        if i:  # the first step is a warm-up
            seconds.append(time.perf_counter() - t0)
    return len(seconds) * tile * tile / sum(seconds), seconds


def precision_run(width: int, tile: int, steps: int, mode: str) -> tuple[float, float]:
    """(mean step seconds after a warm-up step, last loss) of plain steps in ``mode``.

    ``mode``: ``"fp32"``, ``"bf16"`` (CPU autocast) or ``"channels_last"`` (fp32) or ``"bf16+channels_last"``. The data are a
    fixed learnable pattern (class = bright pixel), so the losses of the modes are comparable.
    """
    torch.manual_seed(0)
    model = UNet(width=width).train()
    memory_format = torch.channels_last if mode in ("channels_last", "bf16+channels_last") else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    geometry = Geometry()
    size, m = geometry.input_size(tile), geometry.margin
    rng = np.random.default_rng(0)
    seconds, loss_value = [], float("nan")
    for i in range(steps + 1):
        img = rng.random((1, 1, size, size), dtype=np.float32)
        x = torch.from_numpy(img).to(memory_format=memory_format)
        y = torch.from_numpy((img[:, 0, m:m + tile, m:m + tile] > 0.5).astype(np.int64))
        w = torch.ones((1, tile, tile))
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.startswith("bf16")):
            logits = model(x)
        loss = weighted_cross_entropy(logits, y, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        if i:
            seconds.append(time.perf_counter() - t0)
    return float(np.mean(seconds)), loss_value


def compare_precision(width: int, tile: int, steps: int) -> None:
    base = None
    for mode in ("fp32", "bf16", "channels_last", "bf16+channels_last"):
        s, loss = precision_run(width, tile, steps, mode)
        base = base or s
        print(f"{mode:18s}: {s:6.3f} s/step, speed x{base / s:.2f} vs fp32, loss after {steps + 1} steps {loss:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side (plus one warm-up)")
    parser.add_argument("--tile", type=int, default=388, help="output tile (388 = the paper's 572 input)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--precision", action="store_true", help="compare fp32, bf16 autocast, channels_last")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.precision:
        compare_precision(args.width, args.tile, args.steps)
        return
    size = Geometry().input_size(args.tile)
    print(f"paper U-Net width {args.width}, tile {size} -> {args.tile}, batch 1, SGD momentum 0.99; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} timed steps per side")
    t = time.perf_counter()
    trainer_px, wait, trainer_s = trainer_run(args.width, args.tile, args.steps, args.workers)
    plain_px, plain_s = plain_run(args.width, args.tile, args.steps)
    print(f"trainer : {trainer_px:10.0f} output px/s  ({np.mean(trainer_s):6.2f} s/step; "
          f"steps {', '.join(f'{s:.2f}' for s in trainer_s)})")
    print(f"plain   : {plain_px:10.0f} output px/s  ({np.mean(plain_s):6.2f} s/step; "
          f"steps {', '.join(f'{s:.2f}' for s in plain_s)})")
    print(f"ratio trainer / plain throughput: {trainer_px / plain_px:.3f}")
    print(f"trainer data-wait fraction: {wait:.4f} ({100 * wait:.2f} % of step time waiting for tiles)")
    print(f"total benchmark time: {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
