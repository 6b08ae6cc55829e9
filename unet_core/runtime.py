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
import logging
import os
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import UserError
from .metadata import MetadataError, ModelMeta

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
#: the graph output the predictor reads (see :mod:`unet_core.export`).
PROBS_OUTPUT = "probabilities"
_FLOAT = 1  # onnx.TensorProto.FLOAT, without importing onnx at module level


class ModelLoadError(UserError):
    """A model file that cannot be served; the message names the file and what to do."""


def one_line(text: str, limit: int = 300) -> str:
    """A library's (often multi-line) message as one line of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _graph_dims(value_info: Any) -> list[int | str | None]:
    """The shape of a graph input/output: ints for fixed sizes, names for symbolic ones."""
    dims: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return dims


def check_onnx_graph(proto: Any, meta: ModelMeta, path: str | Path) -> None:
    """Refuse a graph that does not match its metadata (or is no U-Net Studio U-Net at all).

    Checked without running anything: one float32 image input of rank 4 with the metadata's
    channels, a rank-4 ``probabilities`` output with its classes, one max-pool per level (the
    depth), the first convolution's features (the width) and weights stored inside the file.

    Raises:
        ModelLoadError: naming ``path`` and the mismatch.
    """
    import onnx

    graph = proto.graph
    net = meta.unet
    initializers = {t.name: t for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelLoadError(f"{path}: the graph has {len(inputs)} inputs; a U-Net Studio model has one image input")
    image = inputs[0]
    dims = _graph_dims(image)
    if not image.type.HasField("tensor_type") or len(dims) != 4:
        raise ModelLoadError(f"{path}: the graph's input has rank {len(dims)} (shape {dims}), not 4 "
                             "(batch, channels, height, width)")
    if image.type.tensor_type.elem_type != _FLOAT:
        raise ModelLoadError(f"{path}: the graph's input is not float32")
    if isinstance(dims[1], int) and dims[1] != net.in_channels:
        raise ModelLoadError(f"{path}: the graph takes {dims[1]} channels, its metadata says "
                             f"in_channels {net.in_channels}")
    outputs = {o.name: o for o in graph.output}
    if PROBS_OUTPUT not in outputs:
        raise ModelLoadError(f"{path}: the graph has no '{PROBS_OUTPUT}' output (it has {sorted(outputs)})")
    out_dims = _graph_dims(outputs[PROBS_OUTPUT])
    if len(out_dims) != 4:
        raise ModelLoadError(f"{path}: the graph's '{PROBS_OUTPUT}' output has rank {len(out_dims)}, not 4")
    if isinstance(out_dims[1], int) and out_dims[1] != net.n_classes:
        raise ModelLoadError(f"{path}: the graph gives {out_dims[1]} classes, its metadata says "
                             f"n_classes {net.n_classes}")
    nodes = list(graph.node) + [n for f in proto.functions for n in f.node]
    pools = sum(n.op_type == "MaxPool" for n in nodes)
    if pools != net.depth:
        raise ModelLoadError(f"{path}: the graph has {pools} pooling steps, its metadata says depth {net.depth}")
    first = _first_convolution(graph, image.name)
    weight = _conv_weight(graph, first, initializers)
    if weight is not None and len(weight.dims) == 4 and weight.dims[0] != net.width:
        raise ModelLoadError(f"{path}: the graph's first convolution has {weight.dims[0]} features, its metadata "
                             f"says width {net.width}")
    # A U-Net Studio export keeps its weights inside the .onnx file; external data would make
    # ONNX Runtime open further files named by the model.
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise ModelLoadError(f"{path}: the model's weights are stored in separate files (ONNX external data); "
                             "U-Net Studio models keep them inside the .onnx file")


def _first_convolution(graph: Any, image_name: str) -> Any | None:
    """The convolution that reads the image: directly, or through a quantize -> dequantize pair
    (an int8 QDQ model whose first convolution is quantized too)."""
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    frontier = [image_name]
    for _ in range(3):  # image -> QuantizeLinear -> DequantizeLinear -> Conv at most
        following = []
        for tensor in frontier:
            for node in readers.get(tensor, []):
                if node.op_type == "Conv" and node.input and node.input[0] == tensor:
                    return node
                if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] == tensor:
                    following.append(node.output[0])
        frontier = following
    return None


def _conv_weight(graph: Any, conv: Any | None, initializers: dict[str, Any]) -> Any | None:
    """The stored weight tensor of ``conv``: its initializer, or the int8 one its DequantizeLinear reads."""
    if conv is None or len(conv.input) < 2:
        return None
    name = conv.input[1]
    if name in initializers:
        return initializers[name]
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is not None and producer.op_type == "DequantizeLinear" and producer.input:
        return initializers.get(producer.input[0])
    return None


def inspect_onnx(path: str | Path) -> ModelMeta:
    """The metadata of an ``.onnx`` file after checking it and its graph; nothing is run.

    Cheap enough for listing models (parses the file once, builds no session).

    Raises:
        ModelLoadError: missing, unreadable, no or invalid metadata, graph not matching it.
    """
    import onnx

    from .metadata import metadata_from_proto

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except MemoryError as exc:
        raise ModelLoadError(f"{path}: not enough memory to read the model file") from exc
    except Exception as exc:  # protobuf and onnx raise many unrelated types
        raise ModelLoadError(f"{path}: not a readable ONNX file ({one_line(exc) or type(exc).__name__})") from exc
    try:
        meta = metadata_from_proto(proto, path)
    except MetadataError as exc:
        raise ModelLoadError(f"{one_line(exc)}; export the model again with python -m unet_core export") from exc
    check_onnx_graph(proto, meta, path)
    return meta


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

        self.path = Path(path)
        self.meta = inspect_onnx(self.path)
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
        except Exception as exc:  # onnxruntime's errors share no base class
            raise ModelLoadError(f"{self.path}: ONNX Runtime cannot load this model ({one_line(exc)})") from exc
        self._check_session()
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise ModelLoadError("device 'cuda' requested, but ONNX Runtime could not start its CUDA provider "
                                 "(needs CUDA 13 and cuDNN 9); use --device cpu")
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        if want_cuda and self.device == "cpu":
            log.warning("%s: a GPU driver is present but ONNX Runtime runs this model on the CPU (providers "
                        "available: %s)", self.path.name, ", ".join(ort.get_available_providers()))
        self.device_name = _gpu_name() if self.device == "cuda" else f"CPU ({self.threads} threads)"
        self.fingerprint = _file_fingerprint(self.path)
        self._input = self.session.get_inputs()[0].name
        self._run_keep = ort.RunOptions()
        # The releasing call shrinks the CPU arena: only on the CPU, where that memory is RAM.
        self._run_release = ort.RunOptions()
        if self.device == "cpu":
            self._run_release.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def _check_session(self) -> None:
        """What ONNX Runtime made of the graph agrees with the checks on the file."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelLoadError(f"{self.path}: ONNX Runtime sees inputs {[i.shape for i in inputs]}, "
                                 "expected one of rank 4")
        if PROBS_OUTPUT not in {o.name for o in outputs}:
            raise ModelLoadError(f"{self.path}: ONNX Runtime sees no '{PROBS_OUTPUT}' output")

    def predict_batch(self, batch: np.ndarray, release: bool = False) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        run_options = self._run_release if release else self._run_keep
        return self.session.run([PROBS_OUTPUT], {self._input: batch}, run_options)[0]


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


def _nvidia_smi(query: str) -> list[str]:
    """One line per GPU of ``nvidia-smi --query-gpu=QUERY`` (no header, no units); [] without a driver."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


@functools.cache  # the name does not change; free memory does, so that query is never cached
def _gpu_name() -> str:
    """The first GPU's name from the NVIDIA driver (``nvidia-smi``), without importing torch."""
    names = _nvidia_smi("name")
    return f"{names[0]} (CUDA)" if names else "GPU (CUDA)"


def cuda_free_memory() -> int | None:
    """Free memory of the first visible GPU in bytes (``nvidia-smi``), None when unknown."""
    lines = _nvidia_smi("memory.free")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    index = int(visible) if visible.isdigit() and int(visible) < len(lines) else 0
    try:
        return int(float(lines[index])) << 20  # MiB
    except (IndexError, ValueError):
        return None


def autocast_dtype(precision: str):
    """The torch dtype of an autocast ``precision`` (``"bf16"``, ``"fp16"``); None for ``"none"`` (fp32)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


class TorchPredictor(Predictor):
    """The same interface over a PyTorch :class:`~unet_core.model.UNet` (eval mode, no grad).

    ``precision``: ``"none"`` (fp32, the default), or ``"bf16"`` / ``"fp16"`` autocast, as a
    training run validates in its own precision (:func:`~unet_core.training.trainer.resolve_precision`):
    on a 2-core Xeon with AMX, bf16 with channels-last input scored 12 DSB validation images in half
    the fp32 time (8.6 vs 17.1 s; ONNX Runtime fp32 15.9 s) with mean AP 0.6108 against 0.6112.
    """

    def __init__(self, model, meta: ModelMeta, device: Device = "auto", precision: str = "none") -> None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' requested, but PyTorch sees no GPU")
        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        self.device = "cuda" if use_cuda else "cpu"
        self.device_name = _gpu_name() if use_cuda else f"CPU ({torch.get_num_threads()} threads)"
        try:
            self.model = model.to(self.device).eval()
        except (RuntimeError, MemoryError) as exc:  # e.g. CUDA out of memory
            raise ModelLoadError(f"the network cannot be moved to {self.device} ({one_line(exc)})") from exc
        self.meta = meta
        self.autocast = autocast_dtype(precision)
        digest = hashlib.sha256()
        for tensor in self.model.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
        self.fingerprint = digest.hexdigest()[:16]

    def predict_batch(self, batch: np.ndarray, release: bool = False) -> np.ndarray:
        import torch

        with torch.inference_mode(), torch.autocast(self.device, dtype=self.autocast, enabled=self.autocast is not None):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            if self.autocast is not None and self.device == "cpu":  # oneDNN's fast bf16 layout
                x = x.contiguous(memory_format=torch.channels_last)
            return torch.softmax(self.model(x).float(), dim=1).cpu().numpy()


def load_predictor(path: str | Path, device: Device = "auto") -> Predictor:
    """A predictor for a model file: ``.onnx`` via ONNX Runtime, ``.pt`` checkpoints via PyTorch.

    Every failure while loading (including the libraries' own exceptions for damaged or hostile
    files) becomes a :class:`ModelLoadError` naming the file: a model file may come from anywhere.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".pt", ".pth", ".ckpt"):
        raise ModelLoadError(f"{path}: unknown model format (expected .onnx or a .pt checkpoint)")
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    try:
        if suffix == ".onnx":
            return OnnxPredictor(path, device)
        from .checkpoint import CheckpointError, load_checkpoint

        try:
            model, meta = load_checkpoint(path)
        except CheckpointError as exc:
            raise ModelLoadError(str(exc)) from exc
        return TorchPredictor(model, meta, device)
    except ModelLoadError:
        raise
    except MemoryError as exc:
        raise ModelLoadError(f"{path}: not enough memory to load this model") from exc
    except Exception as exc:  # the last line of defence: never a traceback for a bad file
        log.debug("loading %s failed", path, exc_info=True)
        raise ModelLoadError(f"{path}: cannot be loaded ({type(exc).__name__}: {one_line(exc)})") from exc


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
