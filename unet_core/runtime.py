"""Predictors: one interface over ONNX Runtime (the served path) and PyTorch (parity, training).

A predictor maps a batch of normalised input tiles ``(B, C, h, w)`` to class probabilities
``(B, K, h', w')``. Everything about images, tiles and stitching lives in :mod:`unet_core.inference`.

Execution providers are chosen cleanly: CUDA only when the driver library actually loads, so a
machine without a GPU never sees ONNX Runtime's "failed to create CUDAExecutionProvider" noise
(``ort.get_available_providers()`` lists CUDA on such machines too, so it proves nothing).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np

from .metadata import ModelMeta

Device = Literal["auto", "cpu", "cuda"]


class ModelLoadError(ValueError):
    """A model file that cannot be served; the message names the file and what to do."""


class Predictor(ABC):
    """Class probabilities for batches of tiles."""

    meta: ModelMeta
    #: "cuda" or "cpu": where the network actually runs.
    device: str
    #: human-readable device, e.g. "NVIDIA H100 80GB HBM3 (CUDA)" or "CPU (2 threads)".
    device_name: str
    #: identifies the weights, for caches keyed by model (e.g. the tile auto-tuner).
    fingerprint: str

    @abstractmethod
    def predict_batch(self, batch: np.ndarray, release: bool = False) -> np.ndarray:
        """``(B, C, h, w)`` float32 normalised tiles -> ``(B, K, h', w')`` float32 probabilities.

        ``release``: the last call for an image; working memory the runtime keeps between calls is
        returned afterwards, so that post-processing a large image has it.
        """


@functools.cache
def cuda_driver_available() -> bool:
    """True when the NVIDIA driver library loads, i.e. a GPU can be used at all."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class OnnxPredictor(Predictor):
    """An exported U-Net served by ONNX Runtime.

    Args:
        path: the ``.onnx`` file (with U-Net Studio metadata).
        device: ``"auto"`` (CUDA when usable, else CPU), ``"cpu"`` or ``"cuda"`` (an error if no
            GPU can be used).
        threads: CPU threads for ONNX Runtime (default: all cores this process may use).
    """

    def __init__(self, path: str | Path, device: Device = "auto", threads: int | None = None) -> None:
        import onnxruntime as ort

        from .metadata import read_metadata

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: model file not found")
        try:
            self.meta = read_metadata(self.path)
        except Exception as exc:
            raise ModelLoadError(f"{self.path}: not a U-Net Studio ONNX model ({exc})") from exc
        # Warnings (severity 2) would include harmless notes on CPU-only machines; errors still show.
        ort.set_default_logger_severity(3)
        want_cuda = device in ("auto", "cuda") and cuda_driver_available()
        if device == "cuda" and not want_cuda:
            raise ModelLoadError("device 'cuda' requested, but no NVIDIA driver was found on this machine")
        providers: list = ["CPUExecutionProvider"]
        if want_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
            providers.insert(0, ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"}))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Activations come from the process-wide arena below; the memory pattern is off because
        # its planned buffer is allocated on top of the arena's chunks for every new input shape.
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.use_env_allocators", "1")
        _register_cpu_arena()
        self.threads = threads or _cpu_threads()
        options.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"{self.path}: ONNX Runtime cannot load this model ({exc})") from exc
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise ModelLoadError("device 'cuda' requested, but ONNX Runtime could not start its CUDA provider "
                                 "(needs CUDA 13 and cuDNN 9); use --device cpu")
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.device_name = _gpu_name() if self.device == "cuda" else f"CPU ({self.threads} threads)"
        self.fingerprint = _file_fingerprint(self.path)
        self._input = self.session.get_inputs()[0].name
        self._run_keep = ort.RunOptions()
        # The releasing call shrinks the CPU arena: only on the CPU, where that memory is RAM.
        self._run_release = ort.RunOptions()
        if self.device == "cpu":
            self._run_release.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def predict_batch(self, batch: np.ndarray, release: bool = False) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        run_options = self._run_release if release else self._run_keep
        return self.session.run(["probabilities"], {self._input: batch}, run_options)[0]


# The CPU arena shared by all sessions: a 1 GB first region, then regions of up to 2 GB. Measured
# on a 1028 px tile of the paper net: 2.2 GB peak RSS, 1.3 GB after releasing, at full speed;
# ONNX Runtime's default per-session arena (1 MB first region, power-of-two growth) fragments to
# 2.9-3.4 GB, and no arena (2.1 GB) ran 5-40 % slower: every call faults its pages in again.
ARENA_CONFIG = {"initial_chunk_size_bytes": 1_000_000_000, "max_power_of_two_extend_bytes": 2_000_000_000}


@functools.cache
def _register_cpu_arena() -> None:
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(ARENA_CONFIG))


def _gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (CUDA)"
    except ImportError:
        pass
    return "GPU (CUDA)"


class TorchPredictor(Predictor):
    """The same interface over a PyTorch :class:`~unet_core.model.UNet` (eval mode, no grad)."""

    def __init__(self, model, meta: ModelMeta, device: Device = "auto") -> None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' requested, but PyTorch sees no GPU")
        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        self.device = "cuda" if use_cuda else "cpu"
        self.device_name = _gpu_name() if use_cuda else f"CPU ({torch.get_num_threads()} threads)"
        self.model = model.to(self.device).eval()
        self.meta = meta
        digest = hashlib.sha256()
        for tensor in self.model.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
        self.fingerprint = digest.hexdigest()[:16]

    def predict_batch(self, batch: np.ndarray, release: bool = False) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return torch.softmax(self.model(x), dim=1).float().cpu().numpy()


def load_predictor(path: str | Path, device: Device = "auto") -> Predictor:
    """A predictor for a model file: ``.onnx`` via ONNX Runtime, ``.pt`` checkpoints via PyTorch."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxPredictor(path, device)
    if path.suffix.lower() in (".pt", ".pth", ".ckpt"):
        from .checkpoint import CheckpointError, load_checkpoint

        try:
            model, meta = load_checkpoint(path)
        except CheckpointError as exc:
            raise ModelLoadError(str(exc)) from exc
        return TorchPredictor(model, meta, device)
    raise ModelLoadError(f"{path}: unknown model format (expected .onnx or a .pt checkpoint)")


def device_summary() -> str:
    """Where models will run on this machine, for the UI: the GPU's name, or a plain "CPU" line."""
    if cuda_driver_available():
        name = _gpu_name()
        if name != "GPU (CUDA)" or _ort_has_cuda():
            return name
    return f"CPU ({_cpu_threads()} threads), no GPU found"


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()
