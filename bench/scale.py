"""Benchmark of scaling out: Dask inference with 1 and 2 workers, and torchrun training with 1 and 2
processes, each against the single process in the same run.

Dask (``predict --scheduler``): one generated ``--size`` x ``--size`` TIFF segmented (a) by the
single process with all cores, (b) in blocks by a local cluster of 1 worker with all cores and (c)
by 2 workers sharing them; Mpx/s of each and the ratios. Then the memory claim: a
``--memory-size`` image (16384 x 16384 by default) in blocks with 2 workers beside one of
``--size``: each worker's peak RSS, which the block bounds, not the image.

torchrun (``--train-steps`` > 0): median step time of ``python -m unet_core train`` under
``torch.distributed.run`` with 1 and 2 processes at the same global batch (2 tiles a step), and
the speed-up.

Run from the repository root, with nothing else running: ``python bench/scale.py [--model M]
[--size 4096] [--block 1024] [--memory-size 16384] [--train-steps 12]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from unet_core.distributed import DaskOptions, dask_client, predict_blocks
from unet_core.inference import InferenceOptions, auto_tile
from unet_core.instances import InstanceOptions
from unet_core.io import read_image
from unet_core.predict import run
from unet_core.runtime import OnnxPredictor

REPO = Path(__file__).resolve().parents[1]


def nuclei_like(size: int, seed: int = 0) -> np.ndarray:
    """A uint8 image of bright blobs on dark ground, made in bands (a 16384^2 image stays small in memory)."""
    rng = np.random.default_rng(seed)
    out = np.empty((size, size), np.uint8)
    band = 1024
    for top in range(0, size, band):
        noise = rng.random((min(band, size - top) + 32, size), dtype=np.float32)
        smooth = ndi.gaussian_filter(noise, 6)[16 : 16 + min(band, size - top)]
        out[top : top + band] = np.clip((smooth - 0.5) * 2000 + 60, 0, 255).astype(np.uint8)
    return out


def _peak_rss_kb() -> int:
    """This process's peak resident memory (kB): VmHWM, the high-water mark of its own memory.
    (``ru_maxrss`` would not do: Linux carries it over from the parent a worker was forked from,
    before its exec, so a worker would report the driver's memory.)"""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker_peaks(client) -> list[float]:
    """Peak resident memory of each worker process, GB."""
    return [kb / 1e6 for kb in client.run(_peak_rss_kb).values()]


def dask_rates(model: Path, image: Path, block: int, tile: int) -> dict[str, float]:
    """Mpx/s of the single process and of 1 and 2 Dask workers on the same image and tiles."""
    cores = os.cpu_count() or 2
    options = InferenceOptions(tile=tile, diameter="off")
    mpx = tifffile.TiffFile(image).series[0].size / 1e6
    predictor = OnnxPredictor(model, "cpu", cores)
    data = read_image(image)
    run(data, predictor, options, InstanceOptions(min_size=0))  # warm-up: the session's arena
    start = time.perf_counter()
    run(data, predictor, options, InstanceOptions(min_size=0))  # labels, objects and their table, as blocks do
    rates = {"single process": mpx / (time.perf_counter() - start)}
    for workers in (1, 2):
        dask_options = DaskOptions(workers=workers, threads=max(1, cores // workers), block=block)
        with dask_client(dask_options) as client, tempfile.TemporaryDirectory() as tmp:
            predict_blocks(image, model, Path(tmp) / "warm.zarr", client, options, InstanceOptions(min_size=0),
                           dask_options)  # warm-up: one session per worker
            start = time.perf_counter()
            predict_blocks(image, model, Path(tmp) / "run.zarr", client, options, InstanceOptions(min_size=0),
                           dask_options)
            rates[f"dask, {workers} worker{'s' if workers > 1 else ''}"] = mpx / (time.perf_counter() - start)
    return rates


def memory_run(model: Path, size: int, block: int, tile: int, folder: Path) -> tuple[float, list[float]]:
    """(seconds, peak RSS per worker in GB) of a ``size``^2 image in blocks with 2 workers."""
    image = folder / f"big{size}.tif"
    tifffile.imwrite(image, nuclei_like(size), tile=(512, 512), bigtiff=True)
    dask_options = DaskOptions(workers=2, threads=max(1, (os.cpu_count() or 2) // 2), block=block)
    with dask_client(dask_options) as client:
        start = time.perf_counter()
        predict_blocks(image, model, folder / f"big{size}.zarr", client, InferenceOptions(tile=tile, diameter="off"),
                       InstanceOptions(min_size=0), dask_options)
        return time.perf_counter() - start, worker_peaks(client)


def train_step_times(processes: int, steps: int, folder: Path) -> list[float]:
    """Step times (s) of a torchrun training of ``processes`` processes at a global batch of 2."""
    out = folder / f"ddp{processes}"
    threads = max(1, (os.cpu_count() or 2) // processes)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "unet_core", "train", "--out", str(out), "--data", "synthetic", "--width", "16", "--tile", "196",
               "--batch", "2", "--steps", str(steps), "--threads", str(threads), "--workers", "0", "--val-every", "0",
               "--checkpoint-every", "0", "--no-export", "--quiet"]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r["step_s"] for r in rows if "step_s" in r][2:]  # the first steps warm up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "unet-nuclei.onnx"))
    parser.add_argument("--size", type=int, default=4096, help="edge of the throughput image")
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--memory-size", type=int, default=16384, help="edge of the memory image (0: skip)")
    parser.add_argument("--train-steps", type=int, default=12, help="torchrun steps per run (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = Path(args.model)
        tile = auto_tile(OnnxPredictor(model, "cpu"))[0]
        image = folder / "image.tif"
        tifffile.imwrite(image, nuclei_like(args.size), tile=(512, 512))
        rates = dask_rates(model, image, args.block, tile)
        base = rates["single process"]
        print(f"Dask, {model.name}, {args.size} x {args.size}, tile {tile}, blocks of {args.block} px, "
              f"{os.cpu_count()} cores:")
        for name, rate in rates.items():
            print(f"  {name:16s} {rate:.4f} Mpx/s  ({rate / base:.2f}x the single process)")
        if args.memory_size:
            for size in (args.size, args.memory_size):  # the peak must not grow with the image
                seconds, peaks = memory_run(model, size, args.block, tile, folder)
                print(f"memory: {size} x {size} ({size**2 / 1e6:.0f} Mpx, blocks of {args.block} px, 2 workers): "
                      f"{seconds:.0f} s, peak RSS per worker " + ", ".join(f"{p:.2f} GB" for p in peaks))
        if args.train_steps:
            one, two = (statistics.median(train_step_times(n, args.train_steps, folder)) for n in (1, 2))
            print(f"torchrun, width 16, tile 196, global batch 2: 1 process {one:.3f} s/step, 2 processes "
                  f"{two:.3f} s/step ({one / two:.2f}x)")


if __name__ == "__main__":
    main()
