"""GPU checks in one run (under 5 minutes on one GPU): one line per check, PASS / FAIL / SKIP.

``python bench/gpu_check.py [--width 64] [--size 4096] [--tile 1028] [--batch 4]``

1. providers   ONNX Runtime's session really runs on CUDA (``session.get_providers()``; the list
               ``get_available_providers()`` gives names CUDA on machines without a GPU too);
2. gpu-vs-cpu  the CUDA session's probabilities equal the CPU session's on the same tiles;
3. seamless    overlap-tile on the GPU: the probabilities do not depend on the tile size;
4. throughput  fp32 segmentation of a ``--size`` x ``--size`` image: ONNX Runtime CUDA vs PyTorch
               CUDA eager over the same tiles (TF32 set alike for both, see the line);
5. fp16        the fp16 copy (``quantize --fp16``) on CUDA: probabilities within 1e-2 of fp32, and
               its throughput on the same image against fp32 and against the GPU's fp16 limit
               (a large fp16 matmul's rate / the network's FLOPs per output pixel);
6. train fp32  one training step of the paper's recipe (SGD momentum 0.99, weighted loss, 572 px);
7. train bf16  the same step under bf16 autocast.

The network is a random U-Net of ``--width`` (paper: 64) exported on the spot: the checks compare
paths, not a trained model's quality. Checks 2-4 use ONNX Runtime's CUDA provider; when it cannot
start (a CPU build of onnxruntime, missing CUDA 13 / cuDNN 9 libraries) they say so, and the
seamless check runs with PyTorch on the GPU instead. On a machine without a GPU the script prints
that no GPU is available and exits 0; otherwise the exit status is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unet_core.runtime import cuda_driver_available

log = logging.getLogger(__name__)

# Probabilities of a CUDA and a CPU session: equal up to float rounding; TF32 convolutions (10-bit
# mantissa) move them by up to ~1e-2 on a random paper-width net.
TOLERANCE_FP32 = 1e-3
TOLERANCE_TF32 = 2e-2
# Two tile sizes on one device run different convolution algorithms per shape; the paper's
# overlap-tile makes them equal up to that rounding (1e-5 on the CPU, see tests/test_inference.py).
SEAMLESS_TOLERANCE = 1e-4


class Report:
    """Collects one line per check and whether any failed."""

    def __init__(self) -> None:
        self.failed = 0

    def line(self, status: str, name: str, detail: str) -> None:
        self.failed += status == "FAIL"
        print(f"{status:<4}  {name:<11} {detail}", flush=True)

    def check(self, name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        """Run ``fn`` (-> (passed, detail)); an exception is a FAIL with its message."""
        try:
            ok, detail = fn()
        except Exception as exc:  # a check that breaks must not hide the others
            log.debug("check %s raised", name, exc_info=True)
            self.line("FAIL", name, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            return False
        self.line("PASS" if ok else "FAIL", name, detail)
        return ok


def gpu_present() -> tuple[bool, str]:
    """Whether a GPU can be used at all, and what was found."""
    if not cuda_driver_available():
        return False, "no NVIDIA driver (libcuda.so.1 does not load)"
    import torch

    if not torch.cuda.is_available():
        return False, f"an NVIDIA driver but PyTorch {torch.__version__} sees no GPU"
    return True, f"{torch.cuda.get_device_name(0)}, PyTorch {torch.__version__} (CUDA {torch.version.cuda})"


def export_net(width: int, folder: Path):
    """A random paper-layout U-Net of ``width`` (seeded), its metadata and its ONNX export."""
    import torch

    from unet_core.export import to_onnx
    from unet_core.metadata import ModelMeta
    from unet_core.model import UNet

    torch.manual_seed(0)
    net = UNet(width=width, dropout=0).eval()
    meta = ModelMeta(name=f"gpu-check-{width}", unet=net.config)
    return net, meta, to_onnx(net, meta, folder / "gpu_check.onnx")


def ort_tf32(predictor) -> bool:
    """Whether the CUDA session may use TF32 convolutions (its ``use_tf32`` provider option)."""
    options = predictor.session.get_provider_options().get("CUDAExecutionProvider", {})
    return str(options.get("use_tf32", "0")) == "1"


def check_gpu_vs_cpu(cuda_pred, cpu_pred, tf32: bool) -> tuple[bool, str]:
    geometry = cpu_pred.meta.geometry
    side = geometry.input_size(geometry.floor_output(388))
    x = np.random.default_rng(1).random((2, cpu_pred.meta.unet.in_channels, side, side), dtype=np.float32)
    diff = float(np.abs(cuda_pred.predict_batch(x) - cpu_pred.predict_batch(x)).max())
    tol = TOLERANCE_TF32 if tf32 else TOLERANCE_FP32
    return diff < tol, f"max |p_cuda - p_cpu| = {diff:.2e} on 2 tiles of {side} px (tolerance {tol:g}, tf32 {tf32})"


def check_seamless(predictor, label: str) -> tuple[bool, str]:
    from unet_core.inference import InferenceOptions, segment
    from unet_core.io import ImageFile

    rng = np.random.default_rng(2)
    image = ImageFile("seamless.png", rng.integers(0, 255, (1, 1000, 1100, 1), dtype=np.uint8))
    results = [segment(image, predictor, InferenceOptions(tile=t, keep_probs=True)) for t in (196, 516)]
    diff = float(np.abs(results[0].probs - results[1].probs).max())
    same = float((results[0].labels == results[1].labels).mean())
    return diff < SEAMLESS_TOLERANCE, (f"{label}: tiles 196 vs 516 on 1000 x 1100: max |dp| = {diff:.2e} "
                                       f"(tolerance {SEAMLESS_TOLERANCE:g}), labels equal on {100 * same:.3f} %")


def segment_seconds(image, predictor, options) -> float:
    """Seconds to segment ``image`` (the result is on the host: the GPU work is done)."""
    from unet_core.inference import segment

    start = time.perf_counter()
    segment(image, predictor, options)
    return time.perf_counter() - start


def check_throughput(ort_pred, torch_pred, size: int, tile: int, batch: int, tf32: bool) -> tuple[bool, str]:
    import torch

    from unet_core.inference import InferenceOptions
    from unet_core.io import ImageFile

    torch.backends.cudnn.allow_tf32 = tf32  # PyTorch runs the convolutions as ONNX Runtime does
    rng = np.random.default_rng(3)
    image = ImageFile("big.png", rng.integers(0, 255, (1, size, size, 1), dtype=np.uint8))
    warm = ImageFile("warm.png", image.data[:, : min(size, 2 * tile), : min(size, 2 * tile)])
    options = InferenceOptions(tile=tile, batch=batch)
    rates = {}
    for name, pred in (("ort", ort_pred), ("torch", torch_pred)):
        if pred is None:
            continue
        segment_seconds(warm, pred, options)  # same tile shapes: algorithm search and allocations
        rates[name] = size * size / 1e6 / segment_seconds(image, pred, options)
    text = ", ".join(f"{k} {v:.2f} Mpx/s" for k, v in rates.items())
    if "ort" not in rates:
        return False, f"{size} x {size}, tile {tile}, batch {batch}: {text}; ONNX Runtime CUDA not available"
    return True, (f"{size} x {size}, tile {tile}, batch {batch}, tf32 {tf32}: {text}; "
                  f"ort/torch = {rates['ort'] / rates['torch']:.2f}")


def fp16_limit(width: int, tile: int) -> tuple[float, float]:
    """(fp16 TFLOP/s of a large matmul on this GPU, the Mpx/s that rate allows the network at ``tile``)."""
    import torch

    from unet_core.metadata import UNetConfig
    from unet_core.workload import forward_flops

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    torch.mm(a, a)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        torch.mm(a, a)
    torch.cuda.synchronize()
    tflops = 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12
    per_pixel = forward_flops(UNetConfig(width=width), tile) / tile**2
    return tflops, tflops * 1e12 / per_pixel / 1e6


def check_fp16(path: Path, fp32_pred, width: int, size: int, tile: int, batch: int) -> tuple[bool, str]:
    """The fp16 copy on CUDA: parity with fp32 and throughput against fp32 and the fp16 limit."""
    from unet_core.half import half_model
    from unet_core.inference import InferenceOptions
    from unet_core.io import ImageFile
    from unet_core.runtime import OnnxPredictor

    half = OnnxPredictor(half_model(path, path.with_name("gpu_check-fp16.onnx")).path, device="cuda")
    rng = np.random.default_rng(4)
    x = rng.random((batch, 1, 572, 572), dtype=np.float32)
    diff = float(np.abs(half.predict_batch(x) - fp32_pred.predict_batch(x)).max())
    image = ImageFile("big.png", rng.integers(0, 255, (1, size, size, 1), dtype=np.uint8))
    warm = ImageFile("warm.png", image.data[:, : min(size, 2 * tile), : min(size, 2 * tile)])
    options = InferenceOptions(tile=tile, batch=batch)
    rates = {}
    for name, pred in (("fp32", fp32_pred), ("fp16", half)):
        segment_seconds(warm, pred, options)
        rates[name] = size * size / 1e6 / segment_seconds(image, pred, options)
    tflops, limit = fp16_limit(width, tile)
    return diff < 1e-2, (f"max |fp16 - fp32| {diff:.2e}; {size} x {size}: fp16 {rates['fp16']:.1f} Mpx/s, fp32 "
                         f"{rates['fp32']:.1f} ({rates['fp16'] / rates['fp32']:.2f}x); fp16 limit {limit:.0f} Mpx/s "
                         f"({tflops:.0f} TFLOP/s matmul): {100 * rates['fp16'] / limit:.0f} %")


def check_train_step(width: int, amp: str) -> tuple[bool, str]:
    """One SGD step (momentum 0.99, batch 1, weighted cross-entropy) on a 572 px tile."""
    import torch

    from unet_core.model import UNet
    from unet_core.training.loss import weighted_cross_entropy

    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        return False, "this GPU does not support bf16"
    torch.manual_seed(0)
    device = torch.device("cuda")
    net = UNet(width=width).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99)
    x = torch.rand(1, 1, 572, 572, device=device)
    y = torch.randint(0, 2, (1, 388, 388), device=device)
    w = torch.rand(1, 388, 388, device=device) + 0.5
    dtype = torch.bfloat16 if amp == "bf16" else None

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            logits = net(x)
        loss = weighted_cross_entropy(logits, y, w)
        loss.backward()
        opt.step()
        return float(loss.detach())

    step()  # warm-up: cuDNN algorithm choice, allocations
    torch.cuda.synchronize()
    start = time.perf_counter()
    loss = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    ok = bool(np.isfinite(loss)) and all(torch.isfinite(p).all() for p in net.parameters())
    return ok, f"width {width}, 572 -> 388, {amp}: {1e3 * seconds:.0f} ms/step, loss {loss:.4f}"


def inference_checks(report: Report, args: argparse.Namespace, folder: Path) -> None:
    """Checks 1-4 on a random network exported to ``folder`` (the predictors end with this call)."""
    from unet_core.runtime import ModelLoadError, OnnxPredictor, TorchPredictor

    net, meta, path = export_net(args.width, folder)
    cpu_pred = OnnxPredictor(path, device="cpu")
    cuda_pred = None
    try:
        cuda_pred = OnnxPredictor(path, device="cuda")
        providers = cuda_pred.session.get_providers()
        report.line("PASS" if "CUDAExecutionProvider" in providers else "FAIL", "providers", str(providers))
    except ModelLoadError as exc:
        report.line("FAIL", "providers", " ".join(str(exc).split())[:300])
    tf32 = ort_tf32(cuda_pred) if cuda_pred is not None else False
    torch_pred = TorchPredictor(net, meta, device="cuda")
    if cuda_pred is not None:
        report.check("gpu-vs-cpu", lambda: check_gpu_vs_cpu(cuda_pred, cpu_pred, tf32))
        report.check("seamless", lambda: check_seamless(cuda_pred, "ONNX Runtime CUDA"))
    else:
        report.line("SKIP", "gpu-vs-cpu", "no ONNX Runtime CUDA session")
        report.check("seamless", lambda: check_seamless(torch_pred, "PyTorch CUDA (no ONNX Runtime CUDA session)"))
    report.check("throughput", lambda: check_throughput(cuda_pred, torch_pred, args.size, args.tile, args.batch, tf32))
    if cuda_pred is not None:
        report.check("fp16", lambda: check_fp16(path, cuda_pred, args.width, args.size, args.tile, args.batch))
    else:
        report.line("SKIP", "fp16", "no ONNX Runtime CUDA session")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=64, help="network width (default 64, the paper's)")
    parser.add_argument("--size", type=int, default=4096, help="throughput image edge (default 4096)")
    parser.add_argument("--tile", type=int, default=1028, help="throughput output tile (default 1028)")
    parser.add_argument("--batch", type=int, default=4, help="throughput tiles per call (default 4)")
    args = parser.parse_args(argv)

    present, what = gpu_present()
    if not present:
        print(f"no GPU available: {what}; nothing to check")
        return 0
    report = Report()
    report.line("INFO", "device", what)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        try:
            inference_checks(report, args, Path(tmp))
        except Exception as exc:  # e.g. the export itself failed: the training checks still run
            log.debug("inference checks raised", exc_info=True)
            report.line("FAIL", "inference", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    for amp in ("fp32", "bf16"):
        report.check(f"train {amp}", lambda amp=amp: check_train_step(args.width, amp))
    print(f"{report.failed} check(s) failed" if report.failed else "all checks passed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
