"""Inference speed: this predictor (ONNX Runtime) vs PyTorch eager vs MONAI, and the CPU's limit.

Run with nothing else on the machine: ``python bench/inference.py`` (paper width, 2048 x 2048).

(a) unet_core's overlap-tile predictor on ONNX Runtime (automatic tile), (b) PyTorch eager over the
same tiles through the same pipeline, (c) MONAI ``sliding_window_inference`` with the same-width
network in "same" padding, roi 512, overlap 0.25, gaussian blending -- what a MONAI user would run.

The limit: the best fp32 rate this CPU shows in this run (a large GEMM, or the highest convolution
GFLOP/s ONNX Runtime reached on any tile, whichever is higher) divided by the network's
convolution FLOPs per output pixel for an infinitely large tile.

``--rss N`` measures the peak resident memory of ``python -m unet_core predict`` on an N x N image
in a child process (8192 for the issue's figure).

``--int8 MODEL-int8.onnx`` (from ``python -m unet_core quantize``) also times that int8 model
against its fp32 parent (named in its quantization record, beside it; or ``--int8-parent``) on the
same image and tiles (the int8 model's own automatic tile), in ``--repeats`` pairs (a GEMM, an int8
run, an fp32 run), and prints the medians of the pairs' ratios int8 / fp32 and int8 / fp32 limit
(for the int8 model's own width). The second can exceed 100 %: the limit is the CPU's fp32 peak.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unet_core.export import to_onnx
from unet_core.inference import InferenceOptions, measure_tiles, segment
from unet_core.io import ImageFile, write_tiff
from unet_core.metadata import ModelMeta
from unet_core.model import UNet, UNetConfig, conv_flops, flops_per_pixel_limit
from unet_core.runtime import OnnxPredictor, TorchPredictor
from unet_core.tiling import plan_tiles


def gemm_gflops(n: int = 4096, repeats: int = 3) -> float:
    """Best fp32 GEMM rate of this CPU (PyTorch/oneDNN), GFLOP/s."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def monai_rate(width: int, image: np.ndarray) -> float:
    """Mpx/s of MONAI's sliding window over a "same"-padded U-Net of the same width."""
    from monai.inferers import sliding_window_inference

    net = UNet(width=width, padding="same", dropout=0).eval()
    x = torch.from_numpy(image[None, None].astype(np.float32) / 255.0)
    with torch.inference_mode():
        sliding_window_inference(x[..., :512, :512], (512, 512), 1, net, overlap=0.25, mode="gaussian")
        seconds = _timed(lambda: sliding_window_inference(x, (512, 512), 1, net, overlap=0.25, mode="gaussian"))
    return image.size / seconds / 1e6


def rss_child(size: int, width: int, tile: str) -> float:
    """Peak RSS (GB) of the CLI segmenting a size x size image, measured in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        torch.manual_seed(0)
        net = UNet(width=width, dropout=0).eval()
        to_onnx(net, ModelMeta(name="bench", unet=net.config), tmp_path / "m.onnx")
        rng = np.random.default_rng(0)
        write_tiff(tmp_path / "big.tif", rng.integers(0, 255, (size, size), dtype=np.uint8))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run(
            [sys.executable, "-m", "unet_core", "predict", str(tmp_path / "big.tif"), "--model",
             str(tmp_path / "m.onnx"), "--out", str(tmp_path / "out"), "--tile", tile, "--device", "cpu"],
            check=True, cwd=Path(__file__).resolve().parent.parent,
        )
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if peak_kb <= before:
            print("note: the child's peak did not exceed an earlier child's; figure is an upper bound")
    return peak_kb / 1e6


def int8_parent(int8_path: Path, given: str | None) -> Path:
    """The fp32 model an int8 model is compared with: ``given``, else its recorded parent beside it."""
    if given:
        return Path(given)
    from unet_core.metadata import read_metadata

    record = read_metadata(int8_path).quantization or {}
    if not record.get("parent"):
        raise SystemExit(f"error: {int8_path} has no quantization record naming its parent; give --int8-parent")
    parent = int8_path.with_name(str(record["parent"]))
    if not parent.is_file():
        raise SystemExit(f"error: the parent {parent} of {int8_path} is not there; give --int8-parent")
    return parent


def compare_int8(int8_path: Path, parent_path: Path, img: ImageFile, options: InferenceOptions,
                 best_conv: float, repeats: int) -> None:
    """Time the int8 model and its fp32 parent on the same image and tiles; print the ratios.

    Both run at the tile the int8 model's own tuner picks on this CPU (what ``predict`` would use
    for it). The CPU's speed drifts by 10-15 % within minutes (turbo, neighbours), so every timed
    int8 run is paired with a GEMM measured just before it and an fp32 run just after it: each
    pair gives one ratio to the limit and one to fp32, and the median of the pairs is reported.
    """
    int8_pred = OnnxPredictor(int8_path, device="cpu")
    fp32_pred = OnnxPredictor(parent_path, device="cpu")
    if int8_pred.meta.unet != fp32_pred.meta.unet:
        print(f"note: {int8_path.name} and {parent_path.name} describe different networks; the ratio compares unlike work")
    tile, batch, timings = measure_tiles(int8_pred)
    print(f"int8 tile tuner (ms per output Mpx): {timings} -> tile {tile}")
    options = replace(options, tile=tile, batch=batch)
    # The scale search could settle on different scales for the two models (8-bit probabilities can
    # tip it), and then they would do unlike work: both run at the scale the fp32 model chose.
    seg_fp32 = segment(img, fp32_pred, options)
    if seg_fp32.diameter is not None:
        options = replace(options, diameter=seg_fp32.diameter)
    work_mpx = img.data[0, ..., 0].size * seg_fp32.factor**2 / 1e6
    seg_fp32 = segment(img, fp32_pred, options)  # warm-ups at the final options
    seg_int8 = segment(img, int8_pred, options)
    flops = flops_per_pixel_limit(int8_pred.meta.unet)
    to_limit, to_fp32, rates = [], [], []
    for _ in range(max(1, repeats)):
        limit = max(gemm_gflops(repeats=2), best_conv) * 1e9 / flops / 1e6
        rate_int8 = work_mpx / _timed(lambda: segment(img, int8_pred, options))
        rate_fp32 = work_mpx / _timed(lambda: segment(img, fp32_pred, options))
        rates.append((rate_int8, rate_fp32, limit))
        to_limit.append(rate_int8 / limit)
        to_fp32.append(rate_int8 / rate_fp32)
    agree = float((seg_int8.labels == seg_fp32.labels).mean())
    print(f"int8: {int8_path.name} vs fp32 parent {parent_path.name} (width {int8_pred.meta.unet.width}), "
          f"tile {seg_int8.tile[0]} x {seg_int8.tile[1]}, both at {seg_fp32.factor:.2f}x the image's size "
          f"({work_mpx:.1f} Mpx of work), {len(rates)} pairs")
    for k, (rate_int8, rate_fp32, limit) in enumerate(rates, 1):
        print(f"  pair {k}: (i) int8 {rate_int8:.4f} Mpx/s, (f) fp32 {rate_fp32:.4f} Mpx/s, "
              f"fp32 limit {limit:.3f} Mpx/s -> i/f {rate_int8 / rate_fp32:.2f}, i {100 * rate_int8 / limit:.1f} %")
    print(f"i/f = {np.median(to_fp32):.2f} (median; {min(to_fp32):.2f}-{max(to_fp32):.2f}); "
          f"argmax agreement {100 * agree:.2f} % of the pixels")
    print(f"i = {100 * np.median(to_limit):.1f} % of the fp32 limit (median; {100 * min(to_limit):.1f}-"
          f"{100 * max(to_limit):.1f} %; width {int8_pred.meta.unet.width})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--skip-monai", action="store_true")
    parser.add_argument("--only-rss", action="store_true", help="only the --rss measurement")
    parser.add_argument("--rss", type=int, default=0, help="also measure peak RSS of the CLI on N x N")
    parser.add_argument("--rss-tile", default="auto")
    parser.add_argument("--rss-width", type=int, default=None,
                        help="network width for --rss (default: --width; the paper width takes ~10 min at 8192)")
    parser.add_argument("--int8", metavar="MODEL_INT8.onnx", help="also time this int8 model against its fp32 "
                        "parent on the same image and tiles (see the module docstring)")
    parser.add_argument("--int8-parent", metavar="MODEL.onnx",
                        help="the fp32 model for --int8 (default: the parent its quantization record names, beside it)")
    parser.add_argument("--repeats", type=int, default=3, help="timed pairs for --int8 (GEMM, int8, fp32), the "
                        "median counts (default 3, after a warm-up)")
    args = parser.parse_args()
    int8_path = Path(args.int8) if args.int8 else None
    parent_path = int8_parent(int8_path, args.int8_parent) if int8_path else None  # fail before the long part
    if args.only_rss:
        width = args.rss_width or args.width
        print(f"peak RSS of `predict` on {args.rss} x {args.rss} (width {width}, tile {args.rss_tile}): "
              f"{rss_child(args.rss, width, args.rss_tile):.2f} GB")
        return

    torch.manual_seed(0)
    cfg = UNetConfig(width=args.width, dropout=0)
    net = UNet.from_config(cfg).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (args.size, args.size), dtype=np.uint8)
    img = ImageFile("bench.png", image[None, ..., None])
    mpx = image.size / 1e6
    limit_flops = flops_per_pixel_limit(cfg)
    print(f"network: width {args.width}, {limit_flops / 1e6:.3f} MFLOP per output pixel (infinite tile)")
    print(f"threads: torch {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = to_onnx(net, ModelMeta(name="bench", unet=cfg), Path(tmp) / "bench.onnx")
        ort_pred = OnnxPredictor(onnx_path, device="cpu")
        tile, batch, timings = measure_tiles(ort_pred)
        print(f"tile tuner (ms per output Mpx): {timings} -> tile {tile}, batch {batch}")
        best_conv = 0.0
        for key, ms in timings.items():
            t = int(key.split("x")[0])  # "TILExBATCH"
            side = ort_pred.meta.geometry.input_size(t)
            best_conv = max(best_conv, conv_flops(cfg, side, side) / (t * t) / (ms / 1e3 / 1e6) / 1e9)
        options = InferenceOptions(tile=tile, batch=batch)
        warm = segment(img, ort_pred, InferenceOptions(tile=tile, batch=batch))  # warm the arena at this size
        plan = plan_tiles(image.shape, warm.tile, ort_pred.meta.geometry)
        margin = ort_pred.meta.geometry.margin
        plan_flops = sum(conv_flops(cfg, t.h + 2 * margin, t.w + 2 * margin) for t in plan) / image.size
        print(f"plan: {len(plan)} tiles of {warm.tile[0]} x {warm.tile[1]}, {plan_flops / 1e6:.3f} MFLOP per image "
              f"pixel -> at the best tile's rate a can reach {100 * limit_flops / plan_flops:.1f} % of the limit")
        t_ort = _timed(lambda: segment(img, ort_pred, options))
        a = mpx / t_ort
        torch_pred = TorchPredictor(net, ort_pred.meta, device="cpu")
        t_torch = _timed(lambda: segment(img, torch_pred, options))
        b_rate = mpx / t_torch

    gemm = gemm_gflops()
    peak = max(gemm, best_conv)
    limit = peak * 1e9 / limit_flops / 1e6
    print(f"peak fp32: GEMM {gemm:.1f} GFLOP/s, best ORT conv tile {best_conv:.1f} GFLOP/s -> limit {limit:.3f} Mpx/s")
    print(f"(a) unet_core ONNX Runtime, tile {tile}: {a:.4f} Mpx/s  ({t_ort:.1f} s)")
    print(f"(b) PyTorch eager, same tiles:          {b_rate:.4f} Mpx/s  ({t_torch:.1f} s)")
    print(f"a/b = {a / b_rate:.2f}")
    if not args.skip_monai:
        c = monai_rate(args.width, image)
        print(f"(c) MONAI sliding_window (same, roi 512, overlap 0.25, gaussian): {c:.4f} Mpx/s")
        print(f"a/c = {a / c:.2f}")
    print(f"a = {100 * a / limit:.1f} % of the limit")
    if int8_path is not None:
        compare_int8(int8_path, parent_path, img, options, best_conv, args.repeats)
    if args.rss:
        width = args.rss_width or args.width
        print(f"peak RSS of `predict` on {args.rss} x {args.rss} (width {width}, tile {args.rss_tile}): "
              f"{rss_child(args.rss, width, args.rss_tile):.2f} GB")


if __name__ == "__main__":
    main()
