"""An fp16 copy of a model, for GPUs: weights and activations in half precision (tensor cores, half
the memory traffic), inputs and outputs still float32, so every caller feeds and reads the model
as before (ONNX Runtime's float16 converter, ``keep_io_types``). The last step of the probability
head (the softmax, or the sigmoid of the logit difference) stays fp32: the probabilities keep their
full precision where classes are close.

On a CPU an fp16 model brings nothing (ONNX Runtime casts it back to fp32 there); make one for a
CUDA machine: ``python -m unet_core quantize MODEL.onnx --fp16``. Its metadata says what it is and
which fp32 file it came from (by SHA-256), like an int8 copy's.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .metadata import ModelMeta

log = logging.getLogger(__name__)

#: File and model names of fp16 copies end with this.
FP16_SUFFIX = "-fp16"
#: The largest difference in any class probability allowed against the fp32 parent (a random
#: input tile); fp16 has 11 bits of mantissa, so ~1e-3 is usual.
PARITY_TOLERANCE = 1e-2


class HalfError(UserError):
    """An fp16 copy that cannot be made; the message names the file and what to do."""


@dataclass(frozen=True)
class HalfResult:
    """The fp16 copy written: where, its metadata, and its largest probability difference to the parent."""

    path: Path
    meta: ModelMeta
    max_difference: float


def default_output(model_path: Path) -> Path:
    return model_path.with_name(f"{model_path.stem}{FP16_SUFFIX}.onnx")


def half_model(model_path: str | Path, out: str | Path | None = None) -> HalfResult:
    """Write an fp16 copy of the fp32 model ``model_path`` (default ``MODEL-fp16.onnx`` beside it).

    Raises:
        HalfError: the model is not an fp32 U-Net Studio model, the output is taken, or the copy
            differs from its parent by more than :data:`PARITY_TOLERANCE` (names which).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers import float16

    from .export import OUTPUT_NAMES, add_metadata, save_atomically
    from .metadata import metadata_from_proto
    from .quantize import sha256_of

    model_path = Path(model_path)
    out = Path(out) if out is not None else default_output(model_path)
    if out.resolve() == model_path.resolve() or out.exists():
        raise HalfError(f"{out} already exists (or is the model itself); give another --out")
    proto = onnx.load_model(str(model_path))
    meta = metadata_from_proto(proto, str(model_path))
    if meta.quantization:
        raise HalfError(f"{model_path} is already a reduced-precision copy ({meta.quantization.get('format')}); "
                        "make the fp16 copy from its fp32 parent")
    # Only the node that writes the probabilities stays fp32 (the converter casts around every
    # blocked node, and names two casts alike where blocked nodes share an input).
    last = [n.name for n in proto.graph.node if OUTPUT_NAMES[1] in n.output]
    half = float16.convert_float_to_float16(proto, keep_io_types=True, node_block_list=last)
    record = {"format": "fp16", "weights": "float16", "activations": "float16 (the final softmax or sigmoid float32)",
              "io": "float32", "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
              "parent": model_path.name, "parent_sha256": sha256_of(model_path), "onnxruntime": ort.__version__}
    half_meta = dataclasses.replace(meta, name=f"{meta.name}{FP16_SUFFIX}", quantization=record)
    add_metadata(half, half_meta)
    difference = _max_difference(proto, half, meta)
    if difference > PARITY_TOLERANCE:
        raise HalfError(f"{model_path}: the fp16 copy's probabilities differ by {difference:.3g} from the fp32 "
                        f"model's (allowed {PARITY_TOLERANCE}); keep using the fp32 model")
    save_atomically(half, out)
    log.info("%s: fp16 copy, max probability difference %.2e", out, difference)
    return HalfResult(out, half_meta, difference)


def _max_difference(fp32, fp16, meta: ModelMeta) -> float:
    """Largest probability difference of the two graphs on one random valid tile (CPU)."""
    import onnxruntime as ort

    geometry = meta.geometry
    side = geometry.input_size(geometry.floor_output(100))
    x = np.random.default_rng(0).random((1, meta.unet.in_channels, side, side), dtype=np.float32)
    outputs = []
    for proto in (fp32, fp16):  # from memory: the weights travel inside the protos
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float32))
    return float(np.abs(outputs[0] - outputs[1]).max())
