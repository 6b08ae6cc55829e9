"""PyTorch -> ONNX export with dynamic batch, height and width, and the model's metadata inside.

The exported graph takes ``image`` (N, C, H, W) float32, already normalised, and returns
``logits`` and ``probabilities`` (softmax over classes). H and W are symbolic but restricted to
the sizes the network accepts (for the paper's net ``16k + 188``), so ONNX Runtime rejects an
invalid tile with a clear shape error instead of silently mis-pooling.

The 2x2 stride-2 up-convolutions can be exported as they are (``ConvTranspose``) or as the exactly
equal 1x1 convolution to ``4 * c_out`` channels followed by a depth-to-space rearrangement: ONNX
Runtime has int8 CPU kernels for ``Conv`` but none for ``ConvTranspose``, so the second form is the
one :mod:`unet_core.quantize` starts from. The rearrangement is written channels-last (transpose to
NHWC, reshape, swap two axes, reshape, transpose back) rather than as ONNX ``DepthToSpace``: ONNX
Runtime runs its int8 convolutions channels-last and cancels the written transposes against its
own, whereas ``DepthToSpace`` only runs channels-first and cost two layout transposes per
up-convolution (with ``DepthToSpace`` itself, a sixth of the int8 model's time).

For an int8 model whose first layer stays fp32, the first 3x3 convolution and its ReLU can also be
written as one channels-last matrix product over the nine shifted copies of the image
(:class:`ChannelsLastFirstConv`, form ``"int8-float-first"``): as a float ``Conv`` ONNX Runtime
computes it blocked (NCHWc), reorders the result to NCHW, quantizes it and transposes the bytes to
channels-last for the integer layers, a quarter of the int8 model's time for 0.2 % of its
arithmetic; as a product it writes channels-last floats in one ``Gemm`` and quantizes them.

With two classes the probabilities are written as the sigmoid of the logit difference, which is
exactly the softmax of two classes: ONNX Runtime's ``Softmax`` over the channel axis of an NCHW
tensor transposes internally and took 7 % of the int8 model's time; the sigmoid is elementwise.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import nn
from torch.export import Dim

from .atomic import write_atomically
from .metadata import METADATA_KEY, ModelMeta, read_metadata  # noqa: F401  (re-exported)
from .model import UNet

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "probabilities")

ExportForm = Literal["plain", "int8", "int8-float-first"]
#: how :func:`to_onnx` writes the network (see the module docstring and :func:`int8_form`).
EXPORT_FORMS: tuple[str, ...] = ("plain", "int8", "int8-float-first")
#: the 1x1 convolution of a :class:`DepthToSpaceUpConv`; its parameters are named after it in the
#: ONNX file (``net.up.0.up.conv1x1.weight``), which is how :func:`state_dict_from_onnx` finds them.
DEPTH_TO_SPACE_CONV = "conv1x1"
#: the first convolution's weight, the parameter :class:`ChannelsLastFirstConv` stores as rows.
FIRST_CONV = "down.0.0.weight"


def upconv_to_1x1(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1x1 convolution equal to a 2x2 stride-2 ``ConvTranspose2d`` followed by :func:`depth_to_space`.

    The transposed convolution writes ``y[o, 2i+a, 2j+b] = bias[o] + sum_c x[c, i, j] W[c, o, a, b]``
    (``weight`` is ``(c_in, c_out, 2, 2)``). :func:`depth_to_space` reads output ``(o, 2i+a, 2j+b)``
    from input channel ``(2a + b) * c_out + o`` (ONNX ``DepthToSpace``'s DCR order), so that
    channel's filter is ``W[:, o, a, b]`` and its bias ``bias[o]``.

    Returns:
        ``(4 * c_out, c_in, 1, 1)`` weights and ``(4 * c_out,)`` biases.
    """
    c_in, c_out, kh, kw = weight.shape
    if (kh, kw) != (2, 2):
        raise ValueError(f"expected a 2x2 up-convolution kernel, not {kh}x{kw}")
    w1 = weight.permute(2, 3, 1, 0).reshape(4 * c_out, c_in, 1, 1)
    return w1.contiguous(), bias.repeat(4)


def upconv_from_1x1(w1: torch.Tensor, b1: torch.Tensor,
                    name: str = "up-convolution") -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`upconv_to_1x1`: ``ConvTranspose2d`` weights ``(c_in, c_out, 2, 2)`` and bias.

    Raises:
        ValueError: the shapes do not come from :func:`upconv_to_1x1`, or the four biases of an output
            channel differ (then no transposed convolution equals the 1x1 one).
    """
    if w1.ndim != 4 or w1.shape[0] % 4 or tuple(w1.shape[2:]) != (1, 1) or b1.shape != (w1.shape[0],):
        raise ValueError(f"{name}: weights {tuple(w1.shape)} / bias {tuple(b1.shape)} are no depth-to-space "
                         "up-convolution (expected (4*c_out, c_in, 1, 1) and (4*c_out,))")
    c_out, c_in = w1.shape[0] // 4, w1.shape[1]
    weight = w1.reshape(2, 2, c_out, c_in).permute(3, 2, 0, 1).contiguous()
    bias = b1.reshape(4, c_out).T
    if not torch.equal(bias, bias[:, :1].expand(-1, 4)):
        raise ValueError(f"{name}: the four biases of an output channel differ; this 1x1 convolution has no "
                         "equal 2x2 up-convolution")
    return weight, bias[:, 0].contiguous()


def depth_to_space(x: torch.Tensor) -> torch.Tensor:
    """``(N, 4C, H, W)`` -> ``(N, C, 2H, 2W)``: output ``(o, 2i+a, 2j+b)`` is input ``((2a+b)C + o, i, j)``.

    ONNX ``DepthToSpace`` in DCR mode with block size 2, written channels-last (see the module
    docstring for why): in NHWC each output pixel's ``C`` values are one contiguous run of the input,
    so the swap of the two middle axes moves whole runs.
    """
    n, c4, h, w = x.shape
    c = c4 // 4
    nhwc = x.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, c)  # (n, i, j, a, b, o)
    return nhwc.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


class DepthToSpaceUpConv(nn.Module):
    """A 2x2 stride-2 up-convolution as a 1x1 convolution to ``4 * c_out`` channels + :func:`depth_to_space`.

    Exactly equal to the ``nn.ConvTranspose2d(c_in, c_out, 2, stride=2)`` it is made from (same
    multiply-adds, only their order in the sum differs).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(c_in, 4 * c_out, kernel_size=1)

    @classmethod
    def from_conv_transpose(cls, up: nn.ConvTranspose2d) -> DepthToSpaceUpConv:
        """The equivalent of ``up`` (weights copied); ValueError for anything but 2x2, stride 2."""
        plain = (tuple(up.kernel_size) == (2, 2) and tuple(up.stride) == (2, 2) and tuple(up.padding) == (0, 0)
                 and tuple(up.output_padding) == (0, 0) and tuple(up.dilation) == (1, 1) and up.groups == 1
                 and up.bias is not None)
        if not plain:
            raise ValueError(f"only 2x2 stride-2 up-convolutions with a bias can be rewritten, not {up}")
        module = cls(up.in_channels, up.out_channels)
        w1, b1 = upconv_to_1x1(up.weight.detach(), up.bias.detach())
        with torch.no_grad():
            module.conv1x1.weight.copy_(w1)
            module.conv1x1.bias.copy_(b1)
        return module.to(up.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv1x1(x))


class ChannelsLastHead(nn.Module):
    """The 1x1 head as a matrix product over channels-last pixels: ``weight`` is ``(c_in, k)``.

    Exactly the ``nn.Conv2d(c_in, k, 1)`` it is made from. Written this way, int8 quantization
    turns it into ONNX Runtime's ``MatMulIntegerToFloat``: it reads the last integer layer's
    channels-last bytes and writes float logits, with no dequantization, layout reorders or float
    convolution in between (see :mod:`unet_core.quantize`).
    """

    def __init__(self, c_in: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(c_in, k))
        self.bias = nn.Parameter(torch.zeros(k))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ChannelsLastHead:
        """The equivalent of a 1x1 ``conv`` with a bias (weights copied)."""
        module = cls(conv.in_channels, conv.out_channels)
        with torch.no_grad():
            module.weight.copy_(conv.weight.detach()[:, :, 0, 0].T)
            module.bias.copy_(conv.bias.detach())
        return module.to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.permute(0, 2, 3, 1) @ self.weight + self.bias).permute(0, 3, 1, 2)


class ChannelsLastFirstConv(nn.Module):
    """A 3x3 valid convolution and its ReLU as one matrix product over the nine shifted copies of
    the input, channels-last: ``weight`` is ``(9 * c_in, k)``, rows in ``(dy, dx, c)`` order.

    Exactly the ``nn.Conv2d(c_in, k, 3)`` + ReLU it is made from; see the module docstring for why.
    """

    def __init__(self, c_in: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(9 * c_in, k))
        self.bias = nn.Parameter(torch.zeros(k))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ChannelsLastFirstConv:
        """The equivalent of ``conv`` followed by a ReLU (weights copied); ValueError for anything
        but a plain 3x3 convolution without padding, with a bias."""
        if not _plain_3x3(conv):
            raise ValueError(f"only unpadded 3x3 convolutions with a bias can be rewritten, not {conv}")
        module = cls(conv.in_channels, conv.out_channels)
        with torch.no_grad():
            module.weight.copy_(conv_to_rows(conv.weight.detach()))
            module.bias.copy_(conv.bias.detach())
        return module.to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        oh, ow = h - 2, w - 2
        shifted = torch.cat([x[:, :, dy:dy + oh, dx:dx + ow] for dy in range(3) for dx in range(3)], dim=1)
        rows = shifted.permute(0, 2, 3, 1).reshape(n * oh * ow, shifted.shape[1])
        y = torch.relu(rows @ self.weight + self.bias).reshape(n, oh, ow, -1).permute(0, 3, 1, 2)
        # contiguous: a channels-last-strided input to the next convolution makes the exporter's
        # shape guards pin the batch size; in the graph it is no operation.
        return y.contiguous()


def conv_to_rows(weight: torch.Tensor) -> torch.Tensor:
    """``(k, c, 3, 3)`` convolution weights -> the ``(9 * c, k)`` rows of :class:`ChannelsLastFirstConv`."""
    k, c = weight.shape[:2]
    return weight.permute(2, 3, 1, 0).reshape(9 * c, k).contiguous()


def conv_from_rows(rows: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`conv_to_rows`; ValueError for a shape it cannot come from."""
    if rows.ndim != 2 or rows.shape[0] % 9:
        raise ValueError(f"weights {tuple(rows.shape)} are no channels-last 3x3 convolution (expected (9*c_in, k))")
    c, k = rows.shape[0] // 9, rows.shape[1]
    return rows.reshape(3, 3, c, k).permute(3, 2, 0, 1).contiguous()


def int8_form(model: nn.Module, float_first: bool = False) -> nn.Module:
    """A copy of ``model`` in the form int8 quantization starts from: every ``ConvTranspose2d``
    replaced by its :class:`DepthToSpaceUpConv`, the 1x1 ``head`` by its :class:`ChannelsLastHead`
    and, with ``float_first``, the first 3x3 convolution and its ReLU by their
    :class:`ChannelsLastFirstConv` (for a first layer that stays fp32; an integer ``Conv`` is
    faster than an integer product over nine channels, so it stays a ``Conv`` otherwise).

    The copy keeps the parameter names except for the up-convolutions (``up.0.up.weight`` becomes
    ``up.0.up.conv1x1.weight``); the head's weight becomes ``(c_in, k)``, the first layer's
    ``(9 * c_in, k)``. ``model`` is not changed.
    """
    rewritten = copy.deepcopy(model)
    targets = [(name, m) for name, m in rewritten.named_modules() if isinstance(m, nn.ConvTranspose2d)]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = rewritten.get_submodule(parent_name) if parent_name else rewritten
        setattr(parent, attr, DepthToSpaceUpConv.from_conv_transpose(module))
    head = getattr(rewritten, "head", None)
    if isinstance(head, nn.Conv2d) and tuple(head.kernel_size) == (1, 1) and head.bias is not None:
        rewritten.head = ChannelsLastHead.from_conv(head)
    first = _first_block(rewritten) if float_first else None
    if first is not None:
        first[0], first[1] = ChannelsLastFirstConv.from_conv(first[0]), nn.Identity()
    return rewritten


def _first_block(model: nn.Module) -> nn.Sequential | None:
    """The U-Net's first block when it starts with an unpadded 3x3 convolution and a ReLU, else None."""
    down = getattr(model, "down", None)
    block = down[0] if isinstance(down, nn.ModuleList) and len(down) else None
    if not isinstance(block, nn.Sequential) or len(block) < 2:
        return None
    conv, relu = block[0], block[1]
    return block if isinstance(conv, nn.Conv2d) and isinstance(relu, nn.ReLU) and _plain_3x3(conv) else None


def _plain_3x3(conv: nn.Conv2d) -> bool:
    """An unpadded 3x3 convolution, stride 1, no dilation or groups, with a bias."""
    return (tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1) and tuple(conv.padding) == (0, 0)
            and tuple(conv.dilation) == (1, 1) and conv.groups == 1 and conv.bias is not None)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The softmax over the class axis; with two classes written as the sigmoid of the logit
    difference (``softmax(l)_1 = 1 / (1 + exp(l_0 - l_1))``), which exports to elementwise ops."""
    if logits.shape[1] != 2:
        return torch.softmax(logits, dim=1)
    difference = logits[:, 1:2] - logits[:, 0:1]
    return torch.sigmoid(torch.cat((-difference, difference), dim=1))


class _WithProbabilities(torch.nn.Module):
    """Adds the probabilities output to the exported graph (the network itself returns logits)."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, class_probabilities(logits)


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's notes that do not concern a U-Net (torchvision ops, deprecations)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)


def to_onnx(model: UNet, meta: ModelMeta, path: str | Path, form: ExportForm = "plain") -> Path:
    """Export ``model`` to ``path`` (written atomically) with ``meta`` embedded; returns the path.

    Args:
        model: the network (left unchanged, in its training mode).
        meta: the metadata embedded in the file.
        path: the ``.onnx`` file to write.
        form: ``"plain"`` (default: the network as it is, up-convolutions as ``ConvTranspose``),
            ``"int8"`` (the exactly equal form int8 quantization starts from, :func:`int8_form`)
            or ``"int8-float-first"`` (the same with the first layer as a channels-last product,
            for an int8 model whose first layer stays fp32).
    """
    path = Path(path)
    if form not in EXPORT_FORMS:
        raise ValueError(f"form must be one of {EXPORT_FORMS}, not {form!r}")
    # Never write a model that loading would refuse (metadata out of range, e.g. made by hand):
    # raises MetadataError before any work.
    ModelMeta.from_dict(meta.to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    geometry = meta.geometry
    base = geometry.input_size(geometry.min_output)
    step = geometry.alignment
    example = torch.zeros(1, meta.unet.in_channels, base + 3 * step, base + 4 * step)
    kh, kw = Dim("kh", min=0, max=4096), Dim("kw", min=0, max=4096)
    dynamic = {"x": {0: Dim("batch", min=1, max=4096), 2: step * kh + base, 3: step * kw + base}}
    was_training = model.training
    net = model if form == "plain" else int8_form(model, float_first=form == "int8-float-first")
    wrapper = _WithProbabilities(net).eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=dynamic,
                dynamo=True,
                # No graph optimisation here: it merges initializers with equal values (e.g. the
                # zero biases of a fresh net), which would lose the name -> parameter mapping that
                # fine-tuning from an .onnx relies on. ONNX Runtime optimises at load time anyway.
                optimize=False,
                verbose=False,
            )
    finally:
        model.train(was_training)
    proto = program.model_proto
    add_metadata(proto, meta)
    save_atomically(proto, path)
    return path


def save_atomically(proto: Any, path: Path) -> None:
    """Write an ONNX model so that ``path`` is either the old file or the whole new one."""
    write_atomically(path, lambda fh: onnx.save_model(proto, fh))


def add_metadata(proto: onnx.ModelProto, meta: ModelMeta) -> None:
    """Store ``meta`` as JSON in the model's ``metadata_props`` (replacing an older record)."""
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=meta.to_json())
    proto.doc_string = f"U-Net Studio model '{meta.name}' ({', '.join(meta.class_names)})"


def probability_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes that turn ``logits`` into ``probabilities`` (everything fed by the logits).

    They stay float32 in reduced-precision copies: int8 probabilities would come in steps of 1/256.
    Raises ValueError for a node without a name (it could not be excluded by name).
    """
    consumers: dict[str, list[Any]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: list[Any] = []
    seen: set[int] = set()  # protobuf nodes are not hashable: their ids
    tensors = [OUTPUT_NAMES[0]]
    while tensors:
        for node in consumers.get(tensors.pop(), []):
            if id(node) not in seen:
                seen.add(id(node))
                found.append(node)
                tensors.extend(node.output)
    unnamed = [n.op_type for n in found if not n.name]
    if unnamed:
        raise ValueError(f"the probability head has unnamed nodes ({', '.join(unnamed)})")
    return [n.name for n in found]


def state_dict_from_onnx(path: str | Path) -> dict[str, torch.Tensor]:
    """The PyTorch weights embedded in an exported model (for fine-tuning from a shipped .onnx).

    The exporter names each initializer after its parameter (``net.<name>``); anything else in
    the graph (constants folded by the exporter) is ignored. The int8 source forms
    (:func:`int8_form`) are turned back: 1x1 convolution + depth-to-space into the
    ``ConvTranspose2d`` weights of :class:`~unet_core.model.UNet`, the channels-last head and first
    layer into their convolutions' weights.

    Raises:
        ValueError: an int8 (quantized) model, whose weights are no longer the trained ones (use
            its fp32 parent), or a depth-to-space up-convolution that cannot be turned back.
    """
    proto = onnx.load_model(str(path))
    quantized = sorted({n.op_type for n in proto.graph.node if n.op_type in ("DequantizeLinear", "QLinearConv")})
    if quantized:
        parent = _quantization_parent(proto)
        raise ValueError(f"{Path(path).name} is a quantized (int8) model ({', '.join(quantized)} in its graph): its "
                         "weights are rounded copies of the trained ones; start from its fp32 parent model"
                         + (f" ({parent})" if parent else ""))
    prefix = "net."
    weights = {
        init.name[len(prefix) :]: torch.from_numpy(onnx.numpy_helper.to_array(init).copy())
        for init in proto.graph.initializer
        if init.name.startswith(prefix)
    }
    head = weights.get("head.weight")
    if head is not None and head.ndim == 2:  # a ChannelsLastHead: (c_in, k) -> (k, c_in, 1, 1)
        weights["head.weight"] = head.T[:, :, None, None].contiguous()
    first = weights.get(FIRST_CONV)
    if first is not None and first.ndim == 2:  # a ChannelsLastFirstConv: (9 c_in, k) -> (k, c_in, 3, 3)
        try:
            weights[FIRST_CONV] = conv_from_rows(first)
        except ValueError as exc:
            raise ValueError(f"{Path(path).name}: {FIRST_CONV}: {exc}") from exc
    marker = f".{DEPTH_TO_SPACE_CONV}.weight"
    for key in [k for k in weights if k.endswith(marker)]:
        module = key[: -len(marker)]
        bias_key = f"{module}.{DEPTH_TO_SPACE_CONV}.bias"
        if bias_key not in weights:
            raise ValueError(f"{Path(path).name}: the depth-to-space up-convolution {module} has no bias")
        weight, bias = upconv_from_1x1(weights.pop(key), weights.pop(bias_key), f"{Path(path).name}: {module}")
        weights[f"{module}.weight"], weights[f"{module}.bias"] = weight, bias
    return weights


def _quantization_parent(proto: onnx.ModelProto) -> str | None:
    """The parent model file named in a quantized model's metadata, or None."""
    from .metadata import MetadataError, metadata_from_proto

    try:
        record = metadata_from_proto(proto, "model").quantization or {}
    except MetadataError:
        return None
    parent = record.get("parent")
    return str(parent) if parent else None


def parity(model: UNet, onnx_path: str | Path, sizes: list[int], seed: int = 0) -> float:
    """Max |ONNX Runtime - PyTorch| over the probabilities for random inputs of the given edges."""
    from .runtime import OnnxPredictor  # runtime imports nothing from export; avoid a cycle anyway

    predictor = OnnxPredictor(onnx_path, device="cpu")
    rng = np.random.default_rng(seed)
    model = model.eval()
    worst = 0.0
    for size in sizes:
        x = rng.random((1, model.config.in_channels, size, size), dtype=np.float32)
        with torch.no_grad():
            ref = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
        worst = max(worst, float(np.abs(predictor.predict_batch(x) - ref).max()))
    return worst
