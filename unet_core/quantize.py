"""Static int8 quantization of an exported U-Net, calibrated on overlap tiles of its own training data.

``python -m unet_core quantize MODEL.onnx --data DATA --out MODEL-int8.onnx`` makes a model that
ONNX Runtime runs with int8 convolutions on the CPU (the field notes measured 2.9x fp32 on an
1100 px tile of the width-16 nuclei model on a 2-core Zen 4 CPU, 99.8 % of the pixels keeping their
class, with the up-convolutions still in fp32). The steps:

1. the fp32 weights are read back from ``MODEL.onnx`` and exported again with every up-convolution
   as a 1x1 convolution + a channels-last depth-to-space, the head as a channels-last matrix
   product and, when it stays fp32, the first layer as one too (:func:`unet_core.export.int8_form`):
   ONNX Runtime has no int8 CPU kernel for ``ConvTranspose``, runs its int8 convolutions
   channels-last, and the rewrite is exact;
2. ``quant_pre_process`` (ONNX shape inference and ONNX Runtime's basic graph optimisation) with
   ``skip_symbolic_shape=True``, as in the field notes' measurement;
3. ``quantize_static`` in QDQ format: int8 weights per output channel (QInt8, symmetric), uint8
   activations per tensor (QUInt8), ``reduce_range=False``. ONNX Runtime's U8S8 kernels on AVX2
   / AVX-512 CPUs without VNNI use an instruction whose 16-bit sums can saturate; CPUs with VNNI
   (Zen 4, Ice Lake and later) cannot saturate. Where an older CPU loses accuracy, compare with the
   fp32 parent (``python -m unet_core evaluate``). Ranges are calibrated on tiles cut exactly as
   inference cuts them: the model's percentile stretch fitted on the whole image, the image
   rescaled to the model's canonical object diameter when it has one, output tiles on the pooling
   grid with their mirrored context;
4. the U-Net Studio metadata of the parent, plus a ``quantization`` record (what, how, on what,
   when, from which file), so that :func:`unet_core.runtime.load_predictor` serves it like any model.

Only training images are used (the model's recorded split rule): validation images stay unseen,
so evaluating the int8 model on them is as fair as evaluating its parent. By default the first
convolution (whose input is the raw normalised image) stays fp32, the head computes float logits
from int8 weights, and the probabilities are computed in fp32 (:data:`FLOAT_CONVS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import io
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import Dataset, DatasetError, SplitRule, open_dataset
from .errors import UserError
from .io import ImageReadError, fit_stretch, to_channels
from .metadata import ModelMeta
from .tiling import Tile, extract_input, plan_tiles

log = logging.getLogger(__name__)

#: ``--calibration`` choices and the ONNX Runtime method each stands for.
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION = "percentile"
DEFAULT_TILES = 24
#: output tile edge of the calibration tiles (input 428 px for the paper's geometry, as in the
#: field notes' measurement); rounded down to a valid size of the model.
DEFAULT_CALIBRATION_TILE = 244
#: ONNX Runtime's own default for the percentile calibration.
DEFAULT_PERCENTILE = 99.999
#: what the file is: QDQ format, uint8 activations (U8), int8 weights (S8).
FORMAT = "int8 QDQ U8S8"
#: the file name a quantized model gets next to its parent (``model.onnx`` -> ``model-int8.onnx``).
SUFFIX = "-int8"
# The histogram calibrations keep every intermediate tensor of the tiles they are given until
# the histograms are updated; tiles are fed in groups of at most this many bytes of them.
CALIBRATION_GROUP_BYTES = 1 << 30
# Tiles on which the written model is compared with its parent (argmax agreement, in the record).
AGREEMENT_TILES = 4
#: op types of ONNX Runtime's optimised CPU graph that run a float convolution.
FLOAT_CONV_OPS = ("Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose")
# What gets QDQ nodes: the convolutions and what lies between them (pools, crops, concatenations,
# the transposes and reshapes of the up-convolutions' depth-to-space; ReLUs are folded into their
# convolution's output range). Never the probability head (:func:`unet_core.export.probability_nodes`):
# int8 probabilities would come in steps of 1/256.
QUANTIZED_OPS = ["Conv", "Relu", "MaxPool", "Slice", "Concat", "Transpose", "Reshape", "MatMul"]
#: Which layers stay fp32 (``QuantizeOptions.float_convs``, ``quantize --float-convs``), by what the
#: record calls them. The first convolution sees the image itself (256 levels once quantized).
#: Measured with unet-nuclei (part 6) against its fp32 parent, test-time augmentation off, both with
#: an fp32 head: DSB mean AP on the random split 0.5537 (first int8) / 0.5560 (first fp32) / 0.5538
#: (fp32 model), on the held-out groups 0.4535 / 0.4566 / 0.4583; on 10 synthetic images, unlike the
#: calibration tiles, 0.5457 / 0.5521 / 0.5516 (on 3 of them 0.020 under fp32). The image's own 8-bit
#: steps cost more than the time they save, so the default keeps the first layer fp32, written as a
#: channels-last product (:class:`unet_core.export.ChannelsLastFirstConv`): as a float ``Conv`` its
#: output's reorder, quantization and byte transpose took a quarter of the int8 model's time, as a
#: product half that. The head (a channels-last matrix product in the int8 source graph,
#: :class:`unet_core.export.ChannelsLastHead`) always writes float logits; quantized, its weights are
#: int8 and ONNX Runtime runs it as ``MatMulIntegerToFloat`` on the last layer's bytes, 9 % of the
#: time less than an fp32 head with its dequantization and reorders.
FLOAT_CONVS: dict[str, tuple[str, ...]] = {
    "first-and-head": ("first convolution", "final 1x1 layer"),
    "first": ("first convolution",),
    "head": ("final 1x1 layer",),
    "none": (),
}
DEFAULT_FLOAT_CONVS = "first"


class QuantizeError(UserError):
    """A model or data set that cannot be quantized; the message says what to do."""


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize.

    Attributes:
        calibration: ``"minmax"``, ``"percentile"`` (default) or ``"entropy"``: how activation ranges
            are set from the calibration tiles.
        tiles: number of calibration tiles (default 24), spread over the training images.
        tile: output edge of a calibration tile (default 244, rounded down to a valid size).
        percentile: the percentile of ``"percentile"`` calibration (default 99.999).
        float_convs: which layers stay fp32, a key of :data:`FLOAT_CONVS`: ``"first-and-head"``,
            ``"first"`` (default), ``"head"`` or ``"none"``.
        seed: which images and tile positions are drawn (default 0).
    """

    calibration: str = DEFAULT_CALIBRATION
    tiles: int = DEFAULT_TILES
    tile: int = DEFAULT_CALIBRATION_TILE
    percentile: float = DEFAULT_PERCENTILE
    float_convs: str = DEFAULT_FLOAT_CONVS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATION_METHODS:
            raise QuantizeError(f"calibration must be one of {', '.join(CALIBRATION_METHODS)}, "
                                f"not {self.calibration!r}")
        if self.tiles < 1:
            raise QuantizeError(f"the number of calibration tiles must be at least 1, not {self.tiles}")
        if self.tile < 1:
            raise QuantizeError(f"the calibration tile edge must be positive, not {self.tile}")
        if self.float_convs not in FLOAT_CONVS:
            raise QuantizeError(f"float_convs must be one of {', '.join(FLOAT_CONVS)}, not {self.float_convs!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise QuantizeError(f"the calibration percentile must lie in (50, 100], not {self.percentile}")


@dataclass
class QuantizeResult:
    """What :func:`quantize_model` wrote.

    Attributes:
        path: the int8 model.
        meta: its metadata (with :attr:`~unet_core.metadata.ModelMeta.quantization`).
        agreement: share of pixels whose argmax class matches the fp32 parent on the first
            calibration tiles (a sanity check on data the ranges were fitted to, not a validation).
        float_convs: convolutions ONNX Runtime still runs in float on the CPU (the kept ends).
    """

    path: Path
    meta: ModelMeta
    agreement: float
    float_convs: list[str]

    @property
    def record(self) -> dict[str, Any]:
        return dict(self.meta.quantization or {})


@dataclass
class CalibrationSet:
    """Calibration tiles and where they come from.

    Attributes:
        tiles: ``(N, C, s, s)`` float32 normalised input tiles (s = tile + 2 * margin).
        data: the data set as named in the record (a folder path or ``"synthetic"``).
        images: names of the training images the tiles were cut from.
        skipped: one message per training image that could not be read.
    """

    tiles: np.ndarray
    data: str
    images: list[str]
    skipped: list[str]


def default_output(model_path: str | Path) -> Path:
    """``MODEL-int8.onnx`` next to ``MODEL.onnx``."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}{SUFFIX}{path.suffix or '.onnx'}")


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file (read in 1 MiB pieces)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- calibration data


def open_training_data(meta: ModelMeta, data: str | Path | None) -> tuple[Dataset, str]:
    """The data set to calibrate on, and its name for the record.

    Args:
        meta: the model's metadata (``training["data"]`` is used when ``data`` is None).
        data: a data set folder, ``"synthetic"`` (the generator with the model's recorded
            settings) or None (the data set the model was trained on).

    Raises:
        QuantizeError: no data given nor recorded, or not a data set.
    """
    recorded = meta.training.get("data")
    spec = str(data) if data is not None else (str(recorded) if recorded else None)
    if spec is None:
        raise QuantizeError("the model records no training data set; give one with --data")
    if spec == "synthetic":
        from .synthetic import SynthConfig, synthetic_dataset

        config = meta.training.get("config") if isinstance(meta.training.get("config"), dict) else {}
        try:
            synth = SynthConfig.from_dict(config.get("synth") or {})
            return synthetic_dataset(int(config.get("synth_n", 40)), synth, int(config.get("synth_seed", 0))), spec
        except (TypeError, ValueError) as exc:
            raise QuantizeError(f"the model's recorded synthetic settings cannot be used ({exc}); "
                                "give --data") from exc
    if data is not None and recorded and recorded != "synthetic" and _resolved(spec) != _resolved(str(recorded)):
        log.warning("%s is not the data set the model was trained on (%s); its split rule is applied to it anyway",
                    spec, recorded)
    try:
        dataset = open_dataset(spec)
    except DatasetError as exc:
        hint = "" if data is not None else " (the model's recorded training data; give another with --data)"
        raise QuantizeError(f"{exc}{hint}") from exc
    return dataset, str(_resolved(spec))


def _resolved(spec: str) -> Path:
    try:
        return Path(spec).resolve()
    except (OSError, RuntimeError):
        return Path(spec)


def training_indices(meta: ModelMeta, dataset: Dataset) -> list[int]:
    """Indices of the training images under the model's recorded split rule (else the data set's).

    Raises:
        QuantizeError: the rule cannot be applied, or it leaves no training image.
    """
    recorded = meta.training.get("split_rule")
    try:
        rule = SplitRule.from_dict(recorded) if isinstance(recorded, dict) else dataset.split_rule
        indices = dataset.split_indices("train", rule)
    except (KeyError, TypeError, ValueError) as exc:
        raise QuantizeError(f"the model's split rule {recorded!r} cannot be applied to {dataset.name} "
                            f"({exc})") from exc
    if not indices:
        raise QuantizeError(f"{dataset.name}: no training images under the split rule {rule.to_dict()} "
                            f"({len(dataset)} images in all)")
    return indices


def _per_image_counts(n_tiles: int, n_images: int) -> list[int]:
    """``n_tiles`` spread as evenly as possible over ``min(n_tiles, n_images)`` images."""
    used = min(n_tiles, n_images)
    return [n_tiles // used + (k < n_tiles % used) for k in range(used)]


def _canonical_source(dataset: Dataset, i: int, raw: np.ndarray, diameter: float | None) -> np.ndarray:
    """Image ``i`` at the model's canonical object scale, measured on its mask (as training does)."""
    if not diameter:
        return raw
    from .scale import clamp_factor, median_diameter, rescale_image, scaled_shape

    try:
        measured = median_diameter(dataset.load_instances(i))
    except (DatasetError, ImageReadError, OSError, ValueError) as exc:
        log.warning("%s: mask unreadable (%s); calibrating at the image's own scale", dataset.samples[i].name, exc)
        return raw
    if not measured:
        return raw
    shape = scaled_shape(raw.shape[:2], clamp_factor(diameter / measured))
    return rescale_image(raw, shape)


def calibration_tiles(meta: ModelMeta, dataset: Dataset, indices: Sequence[int], n_tiles: int = DEFAULT_TILES,
                      tile: int = DEFAULT_CALIBRATION_TILE, seed: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    """Normalised input tiles cut from images ``indices`` exactly as inference cuts them.

    Images are drawn in a seeded random order, ``n_tiles`` spread evenly over them (one per image
    when there are enough); within an image the output tiles of its overlap-tile plan are drawn
    without repetition where possible. Each tile carries its context margin, mirrored at the
    border, after the percentile stretch fitted on the whole image (and the rescale to the model's
    canonical diameter when it has one). Every tile has the full edge so that all have one shape.

    Args:
        meta: the model's metadata (geometry, channels, normalisation, diameter).
        dataset: the data set; ``indices``: the images to use (training images).
        n_tiles: number of tiles (default 24); ``tile``: output edge (default 244, made valid).
        seed: the draw (default 0).

    Returns:
        ``(N, C, s, s)`` float32 tiles, the names of the images used, one message per skipped image.
    """
    geometry = meta.geometry
    edge = max(geometry.floor_output(tile), geometry.min_tile)
    margin = geometry.margin
    channels = meta.unet.in_channels
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(np.asarray(indices, dtype=np.int64))]
    wanted = _per_image_counts(n_tiles, len(order))
    tiles: list[np.ndarray] = []
    used: list[str] = []
    skipped: list[str] = []
    pending = list(order)
    for count in wanted:
        while pending:  # an unreadable image hands its share to the next one
            i = pending.pop(0)
            name = dataset.samples[i].name
            try:
                raw = dataset.load_image(i)
                stretch = fit_stretch(raw[None], channels, meta.normalisation, name)
            except (ImageReadError, DatasetError, OSError, ValueError) as exc:
                skipped.append(f"{name}: {' '.join(str(exc).split())}")
                continue
            source = _canonical_source(dataset, i, raw, meta.diameter)
            plan = plan_tiles(source.shape[:2], edge, geometry)
            picks = rng.choice(len(plan), size=count, replace=count > len(plan))
            for k in picks:
                t = plan[int(k)]
                full = Tile(t.y, t.x, edge, edge, t.valid_h, t.valid_w)
                x = stretch(to_channels(extract_input(source, full, margin), channels))
                tiles.append(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))
            used.append(name)
            break
    if not tiles:
        raise QuantizeError(f"{dataset.name}: no training image could be read for calibration: "
                            + "; ".join(skipped[:3]))
    if len(tiles) < n_tiles:
        log.warning("only %d of %d calibration tiles: %d training images could not be read", len(tiles), n_tiles,
                    len(skipped))
    return np.stack(tiles), used, skipped


def calibration_set(meta: ModelMeta, data: str | Path | None, options: QuantizeOptions) -> CalibrationSet:
    """The calibration tiles of :func:`quantize_model`: training images of ``data`` (see
    :func:`open_training_data`), cut by :func:`calibration_tiles`."""
    dataset, name = open_training_data(meta, data)
    indices = training_indices(meta, dataset)
    tiles, images, skipped = calibration_tiles(meta, dataset, indices, options.tiles, options.tile, options.seed)
    return CalibrationSet(tiles, name, images, skipped)


def _tile_reader(tiles: np.ndarray, input_name: str):
    """An ONNX Runtime ``CalibrationDataReader`` over ``tiles``, one tile per call.

    It has ``__len__`` and ``set_range`` so that ``quantize_static`` can feed it in groups (its
    ``CalibStridedMinMax`` option, which works for every calibration method).
    """
    from onnxruntime.quantization import CalibrationDataReader

    class TileReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.start, self.end, self.pos = 0, len(tiles), 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= self.end:
                return None
            self.pos += 1
            return {input_name: tiles[self.pos - 1 : self.pos]}

        def __len__(self) -> int:
            return len(tiles)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end = start_index, min(end_index, len(tiles))
            self.pos = self.start

    return TileReader()


def _group_size(n_tiles: int, tile_side: int, width: int) -> int:
    """Tiles per calibration group: the largest divisor of ``n_tiles`` whose kept intermediate
    tensors stay under :data:`CALIBRATION_GROUP_BYTES` (``quantize_static`` needs a divisor)."""
    # ~25 first-level float maps per tile: every conv/ReLU output, concat and up-conv output of all
    # levels, the deeper levels adding less and less (a rough upper bound, not a measurement).
    per_tile = 25 * 4 * width * tile_side * tile_side
    limit = max(1, CALIBRATION_GROUP_BYTES // max(1, per_tile))
    return max(d for d in range(1, n_tiles + 1) if n_tiles % d == 0 and d <= limit)


# --------------------------------------------------------------------------- graph helpers


def float_nodes(proto: Any, float_convs: str) -> list[str]:
    """Names of the nodes left in fp32: the probability head, what lies between the head's
    product and the logits (bias, layout), and the layers ``float_convs`` (a key of
    :data:`FLOAT_CONVS`) names."""
    from .export import probability_nodes

    first, head, tail = end_layers(proto)
    layers = {"first convolution": first, "final 1x1 layer": [head] if head else []}
    try:
        names = probability_nodes(proto)
    except ValueError as exc:
        raise QuantizeError(f"cannot keep the probabilities in fp32: {exc}") from exc
    return [name for label in FLOAT_CONVS[float_convs] for name in layers[label]] + tail + names


def end_layers(proto: Any) -> tuple[list[str], str | None, list[str]]:
    """The first layer's nodes (its convolution or product and every node it reads the image
    through: the shifted copies of :class:`~unet_core.export.ChannelsLastFirstConv`), the head's
    node (the 1x1 convolution or matrix product computing the logits) and the nodes between the
    head and the logits output.

    Found by structure, not by name: the pre-processing pass may rename nodes.
    """
    from .export import OUTPUT_NAMES

    graph = proto.graph
    unnamed = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and not n.name]
    if unnamed:
        raise QuantizeError(f"the graph has {len(unnamed)} unnamed convolutions or matrix products; they cannot be "
                            "excluded by name")
    producer = {out: node for node in graph.node for out in node.output}
    layer = next((n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")), None)  # nodes are sorted
    first: list[str] = []
    todo = [layer] if layer is not None else []
    while todo:
        node = todo.pop()
        if node.name not in first:
            first.append(node.name)
            todo.extend(producer[name] for name in node.input if name in producer)
    tensor, head, tail = OUTPUT_NAMES[0], None, []
    for _ in range(8):  # walk back through bias, layout and pass-through nodes from the logits output
        node = producer.get(tensor)
        if node is None:
            break
        if node.op_type in ("Conv", "MatMul", "Gemm"):
            head = node
            break
        if node.op_type not in ("Identity", "Cast", "Transpose", "Add") or not node.input:
            break
        tail.append(node.name)
        tensor = node.input[0]
    return first, (head.name if head is not None else None), tail


def read_shapes_after_relu(proto: Any) -> int:
    """Let ``Shape`` nodes read a ReLU's output instead of its input (the same shape); returns how many.

    The exporter takes the skip connection's crop offsets from the shape of the convolution's
    output, before its (in-place) ReLU. That second reader keeps the quantizer from folding the
    ReLU into the convolution's range, which costs a dequantize + requantize of the whole
    feature map at every level.
    """
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    relu_of: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Relu" and node.input and producer.get(node.input[0]) is not None \
                and producer[node.input[0]].op_type == "Conv":
            relu_of[node.input[0]] = node.output[0]
    moved = 0
    for node in graph.node:
        if node.op_type == "Shape" and node.input and node.input[0] in relu_of:
            node.input[0] = relu_of[node.input[0]]
            moved += 1
    return moved


def shapes_before_dequantize(proto: Any) -> int:
    """Let ``Shape`` nodes read a ``DequantizeLinear``'s int8 input instead of its float output.

    The crops take their offsets from feature-map shapes; after quantization those ``Shape`` nodes
    read dequantized copies that nothing else needs, so ONNX Runtime would dequantize whole
    feature maps only to learn their size. Returns how many ``Shape`` nodes were rewired (the
    dequantize nodes left without readers are dropped by ONNX Runtime at load time).
    """
    graph = proto.graph
    dequantized = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    outputs = {o.name for o in graph.output}
    moved = 0
    for node in graph.node:
        if node.op_type == "Shape" and node.input and node.input[0] in dequantized \
                and node.input[0] not in outputs:
            node.input[0] = dequantized[node.input[0]]
            moved += 1
    readers = {name for node in graph.node for name in node.input} | outputs
    unused = [node for node in graph.node if node.op_type == "DequantizeLinear" and node.output[0] not in readers]
    for node in unused:
        graph.node.remove(node)
    return moved


def float_convolutions(path: str | Path) -> list[str]:
    """Convolutions that ONNX Runtime's fully optimised CPU graph of ``path`` runs in float.

    A QDQ ``DequantizeLinear -> Conv -> QuantizeLinear`` group that ONNX Runtime could not fuse into
    an integer ``QLinearConv`` shows up there as a float ``Conv``/``FusedConv``.
    """
    graph = optimised_graph(path)
    return [f"{n.op_type}:{n.name}" for n in graph.node if n.op_type in FLOAT_CONV_OPS]


def optimised_graph(path: str | Path) -> Any:
    """The graph ONNX Runtime's CPU session actually runs for ``path``, fully optimised
    (``SessionOptions.optimized_model_filepath``), as an ``onnx.GraphProto``."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="unet_opt_") as tmp:
        optimised = Path(tmp) / "optimised.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimised)
        options.intra_op_num_threads = 1
        # ONNX Runtime warns that a graph saved at this level is specific to this machine: known.
        options.log_severity_level = 3
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        return onnx.load_model(str(optimised)).graph


def _argmax_agreement(fp32_path: Path, int8_path: Path, tiles: np.ndarray) -> float:
    """Share of pixels whose argmax class is the same under both models, over ``tiles``."""
    import onnxruntime as ort

    from .export import INPUT_NAME
    from .runtime import PROBS_OUTPUT

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path)]
    same = total = 0
    for k in range(len(tiles)):
        x = tiles[k : k + 1]
        a, b = (s.run([PROBS_OUTPUT], {INPUT_NAME: x})[0].argmax(axis=1) for s in sessions)
        same += int((a == b).sum())
        total += a.size
    return same / max(1, total)


# --------------------------------------------------------------------------- the whole path


def _load_parent(model_path: Path) -> tuple[Any, ModelMeta]:
    """The fp32 network (PyTorch) and metadata of ``model_path``.

    Raises:
        QuantizeError: not a usable model, already quantized, or weights not matching the metadata.
    """
    from .export import state_dict_from_onnx
    from .model import UNet
    from .runtime import ModelLoadError, inspect_onnx

    if model_path.suffix.lower() != ".onnx":
        raise QuantizeError(f"{model_path}: give an exported .onnx model (export a checkpoint first with "
                            "python -m unet_core export CHECKPOINT.pt --out MODEL.onnx)")
    try:
        meta = inspect_onnx(model_path)
    except ModelLoadError as exc:
        raise QuantizeError(str(exc)) from exc
    if meta.quantization:
        parent = meta.quantization.get("parent")
        raise QuantizeError(f"{model_path}: already quantized ({meta.quantization.get('format', 'int8')}); "
                            f"quantize its fp32 parent{f' {parent}' if parent else ''} instead")
    try:
        weights = state_dict_from_onnx(model_path)
        net = UNet.from_config(meta.unet)
        net.load_state_dict(weights)
    except (UserError, ValueError, RuntimeError, KeyError) as exc:  # RuntimeError: load_state_dict's mismatch
        raise QuantizeError(f"{model_path}: its weights do not fit the network its metadata describes "
                            f"({' '.join(str(exc).split())[:300]}); "
                            "export it again with python -m unet_core export") from exc
    return net.eval(), meta


def quantize_model(model_path: str | Path, out: str | Path | None = None, data: str | Path | None = None,
                   options: QuantizeOptions | None = None) -> QuantizeResult:
    """Write an int8 version of ``model_path`` (see the module docstring).

    Args:
        model_path: the fp32 ``.onnx`` model (any U-Net Studio export).
        out: the int8 model to write (default ``MODEL-int8.onnx`` beside it; written atomically).
        data: the calibration data set: a folder, ``"synthetic"``, or None for the data set the
            model records as its training data. Only its training images are used.
        options: :class:`QuantizeOptions` (default: percentile calibration on 24 tiles).

    Raises:
        QuantizeError: a model, data set or output the user has to change; names it.
    """
    import onnx
    import onnxruntime as ort

    from .export import add_metadata, save_atomically, to_onnx
    from .runtime import ModelLoadError, inspect_onnx

    options = options or QuantizeOptions()
    model_path = Path(model_path)
    out = _check_output(model_path, Path(out) if out is not None else default_output(model_path))
    net, meta = _load_parent(model_path)
    calib = calibration_set(meta, data, options)
    log.info("calibrating on %d tiles of %d px from %d training images of %s", len(calib.tiles),
             calib.tiles.shape[-1], len(calib.images), calib.data)
    ort.set_default_logger_severity(3)
    with tempfile.TemporaryDirectory(prefix="unet_quantize_") as tmp:
        work = Path(tmp)
        fp32 = to_onnx(net, meta, work / "fp32-int8-form.onnx", form=_source_form(options))
        quantized = quantize_graph(fp32, work / "int8.onnx", calib.tiles, options, meta.unet.width)
        agreement = _argmax_agreement(fp32, quantized, calib.tiles[:AGREEMENT_TILES])
        record = quantization_record(model_path, options, calib, agreement, ort.__version__)
        int8_meta = dataclasses.replace(meta, name=f"{meta.name}{SUFFIX}", quantization=record)
        proto = onnx.load_model(str(quantized))
        add_metadata(proto, int8_meta)
        save_atomically(proto, out)
    try:
        inspect_onnx(out)  # the file must load like any model
    except ModelLoadError as exc:
        raise QuantizeError(f"the int8 model does not pass the model checks ({exc}); please report this") from exc
    floats = float_convolutions(out)
    if floats:  # the fp32 first layer is a product (Gemm), the head too: no float Conv is meant to be left
        log.warning("%s: ONNX Runtime runs %d convolutions in float: %s", out, len(floats), ", ".join(floats))
    if agreement < 0.95:
        log.warning("%s: only %.1f %% of the calibration pixels keep their class; try --calibration entropy or "
                    "more --tiles", out, 100 * agreement)
    return QuantizeResult(out, int8_meta, agreement, floats)


def _check_output(model_path: Path, out: Path) -> Path:
    """``out`` when it can take the int8 model (its folder created); else QuantizeError."""
    if out.suffix.lower() != ".onnx":
        raise QuantizeError(f"--out {out}: the int8 model needs an .onnx file name")
    if _resolved(str(out)) == _resolved(str(model_path)):
        raise QuantizeError(f"--out {out} is the model itself; give the int8 model another name "
                            f"(e.g. {default_output(model_path).name})")
    if out.is_dir():
        raise QuantizeError(f"--out {out} is a folder; give the int8 model's file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QuantizeError(f"--out {out}: cannot create its folder ({exc.strerror or exc})") from exc
    return out


def _source_form(options: QuantizeOptions) -> str:
    """The :func:`unet_core.export.to_onnx` form the int8 model is made from (see :data:`FLOAT_CONVS`)."""
    return "int8-float-first" if "first convolution" in FLOAT_CONVS[options.float_convs] else "int8"


def quantize_graph(fp32: Path, out: Path, tiles: np.ndarray, options: QuantizeOptions, width: int) -> Path:
    """Pre-process and statically quantize the depth-to-space export ``fp32`` into ``out``.

    Args:
        fp32: a float model in an int8 source form (:func:`unet_core.export.int8_form`).
        out: where the QDQ model goes (no U-Net Studio metadata is added here).
        tiles: ``(N, C, s, s)`` calibration tiles; ``options``: method, percentile, fp32 layers.
        width: the network's first-level channels (sizes the calibration groups).

    Returns:
        ``out``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .export import INPUT_NAME

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[options.calibration]
    pre = out.with_name(f"{out.stem}-preprocessed.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    pre_proto = onnx.load_model(str(pre))
    if read_shapes_after_relu(pre_proto):
        onnx.save_model(pre_proto, str(pre))
    excluded = float_nodes(pre_proto, options.float_convs)
    # The head's matrix product writes float logits even with int8 weights (MatMulIntegerToFloat).
    extra: dict[str, Any] = {"CalibStridedMinMax": _group_size(len(tiles), int(tiles.shape[-1]), width),
                             "OpTypesToExcludeOutputQuantization": ["MatMul"]}
    if method == CalibrationMethod.Percentile:
        extra["CalibPercentile"] = options.percentile
    # The histogram collector prints progress lines on stdout: keep the command's output clean.
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        quantize_static(
            str(pre), str(out), _tile_reader(tiles, INPUT_NAME),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=method, nodes_to_exclude=excluded, op_types_to_quantize=QUANTIZED_OPS,
            calibration_providers=["CPUExecutionProvider"], extra_options=extra,
        )
    log.debug("quantize_static said: %s", chatter.getvalue().strip())
    proto = onnx.load_model(str(out))
    if shapes_before_dequantize(proto):
        onnx.save_model(proto, str(out))
    return out


def quantization_record(parent: Path, options: QuantizeOptions, calib: CalibrationSet, agreement: float,
                        ort_version: str) -> dict[str, Any]:
    """The ``quantization`` entry of an int8 model's metadata (JSON-ready)."""
    record: dict[str, Any] = {
        "format": FORMAT,
        "weights": "int8, per output channel, symmetric",
        "activations": "uint8, per tensor",
        "reduce_range": False,
        "calibration": options.calibration,
        "tiles": len(calib.tiles),
        "tile_input": int(calib.tiles.shape[-1]),
        "data": calib.data,
        "images": len(calib.images),
        "split": "train",
        "fp32_nodes": [*FLOAT_CONVS[options.float_convs], "probabilities"],
        "graph": _source_form(options),
        "seed": options.seed,
        "calibration_agreement": round(float(agreement), 5),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "parent": parent.name,
        "parent_sha256": sha256_of(parent),
        "onnxruntime": ort_version,
    }
    if options.calibration == "percentile":
        record["percentile"] = options.percentile
    return record


def plain_name(text: Any, limit: int = 60) -> str:
    """A file or data-set name from a model file, safe to show in menus and Markdown.

    A model file may come from anywhere: only letters, digits, ``.``, ``-``, ``_`` and spaces are
    kept (no Markdown links, emphasis or code spans), at most ``limit`` characters.
    """
    kept = "".join(c if c.isalnum() or c in ".-_ " else "_" for c in Path(str(text)).name)
    return kept[:limit]


def describe(record: dict[str, Any] | None) -> str | None:
    """A short note for lists of models: ``int8 (calibrated on dsb2018)``; None for fp32 models."""
    if not record:
        return None
    if record.get("format") == "fp16":
        return "fp16 (for GPUs)"
    name = plain_name(record.get("data") or "")
    return f"int8 (calibrated on {name})" if name else "int8"
