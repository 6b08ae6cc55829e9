"""What a model says about itself: architecture, classes, normalisation, tiling and training.

The same record is embedded in every exported ONNX file (``metadata_props["unet_studio"]`` as
JSON), so a model file alone is enough to segment images the way it was trained.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import UserError
from .io import Normalisation
from .tiling import Geometry

METADATA_KEY = "unet_studio"
FORMAT_VERSION = 1

# What a model file may claim about its architecture. The ranges are generous for real U-Nets
# (the paper's net is width 64, depth 4) and keep a hostile or damaged file from making the
# loader build a network of hundreds of gigabytes (width 700, depth 12) before anything fails.
ARCH_LIMITS: dict[str, tuple[int, int]] = {
    "width": (1, 256),
    "depth": (1, 6),
    "in_channels": (1, 16),
    "n_classes": (2, 16),
}
PADDINGS = ("valid", "same")


class MetadataError(UserError):
    """Model metadata that is malformed or out of range; the message says which field and why."""


def _int_field(d: dict[str, Any], key: str, lo: int, hi: int) -> int:
    """``d[key]`` as an int in ``[lo, hi]``; JSON floats like 4.0 are accepted, 4.5 and True not."""
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or int(value) != value:
        raise MetadataError(f"{key} must be a whole number, not {value!r}")
    if not lo <= value <= hi:
        raise MetadataError(f"{key} {value!r} is outside {lo}..{hi}")
    return int(value)


def _number(value: Any, what: str) -> float:
    """A finite real number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MetadataError(f"{what} must be a finite number, not {value!r}")
    return float(value)


def _dict_field(d: dict[str, Any], key: str) -> dict[str, Any]:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MetadataError(f"{key} must be a JSON object, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class UNetConfig:
    """Architecture hyper-parameters (paper defaults)."""

    in_channels: int = 1
    n_classes: int = 2
    width: int = 64
    depth: int = 4
    padding: Literal["valid", "same"] = "valid"
    dropout: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """The architecture a model file describes, checked against :data:`ARCH_LIMITS`.

        Raises:
            MetadataError: a field of the wrong type or out of range (names the field).
        """
        if not isinstance(d, dict):
            raise MetadataError(f"unet must be a JSON object, not {type(d).__name__}")
        values: dict[str, Any] = {k: _int_field(d, k, *ARCH_LIMITS[k]) for k in ARCH_LIMITS if k in d}
        if "padding" in d:
            if d["padding"] not in PADDINGS:
                raise MetadataError(f"padding must be 'valid' or 'same', not {d['padding']!r}")
            values["padding"] = d["padding"]
        if "dropout" in d:
            dropout = _number(d["dropout"], "dropout")
            if not 0.0 <= dropout < 1.0:
                raise MetadataError(f"dropout {dropout!r} is outside [0, 1)")
            values["dropout"] = dropout
        return cls(**values)


@dataclass
class ModelMeta:
    """Self-description of a trained U-Net.

    Attributes:
        name: short model name (file stem by default).
        unet: the architecture.
        class_names: one name per output class; class 0 is the background.
        foreground_classes: classes whose connected components are objects (instances).
        normalisation: how raw pixels become network input.
        training: free-form record of how it was trained (data, split rule, steps, ...).
        default_tile: preferred output tile edge, or None to let the runtime choose.
        diameter: the canonical object diameter in pixels (:mod:`unet_core.scale`): training
            rescaled every image so that its median object diameter was this, and inference
            rescales inputs the same way. None: the model works at the input's own scale (e.g.
            EM at a fixed resolution).
        border_class: the class of the objects' outlines (a model trained with an outline class,
            ``train --border-width``): objects are the components of the other foreground
            classes, grown back over it. None: objects are the components of the foreground.
            Not written when None.
        quantization: how an int8 model was made from its fp32 parent (:mod:`unet_core.quantize`:
            format, calibration method, tiles, data set, date, parent file and its sha256); None
            for a model with its trained float32 weights. Not written when None, so files without
            it read as before.
    """

    name: str = "unet"
    unet: UNetConfig = field(default_factory=UNetConfig)
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])
    foreground_classes: list[int] = field(default_factory=lambda: [1])
    normalisation: Normalisation = field(default_factory=Normalisation)
    training: dict[str, Any] = field(default_factory=dict)
    default_tile: int | None = None
    diameter: float | None = None
    border_class: int | None = None
    quantization: dict[str, Any] | None = None

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.unet.depth, self.unet.padding)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unet"] = self.unet.to_dict()
        d["normalisation"] = self.normalisation.to_dict()
        d["geometry"] = {"margin": self.geometry.margin, "alignment": self.geometry.alignment,
                         "min_output": self.geometry.min_output}
        d["format_version"] = FORMAT_VERSION
        for optional in ("quantization", "border_class"):  # older models keep the record they had
            if d[optional] is None:
                del d[optional]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        """The metadata of a model file, every field checked (a file may come from anywhere).

        Raises:
            MetadataError: not a dict, or a field of the wrong type or out of range; the message
                names the field.
        """
        if not isinstance(d, dict):
            raise MetadataError(f"the metadata must be a JSON object, not {type(d).__name__}")
        unet = UNetConfig.from_dict(_dict_field(d, "unet"))
        raw_names = d.get("class_names") or [f"class {k}" for k in range(unet.n_classes)]
        if not isinstance(raw_names, list) or not all(isinstance(n, str) for n in raw_names):
            raise MetadataError("class_names must be a list of names")
        if len(raw_names) != unet.n_classes:
            raise MetadataError(f"metadata names {len(raw_names)} classes for a {unet.n_classes}-class network")
        foreground = _foreground(d.get("foreground_classes", [1]), unet.n_classes)
        return cls(
            name=str(d.get("name", "unet")),
            unet=unet,
            class_names=list(raw_names),
            foreground_classes=foreground,
            border_class=_border_class(d.get("border_class"), foreground),
            normalisation=_normalisation(_dict_field(d, "normalisation")),
            training=_dict_field(d, "training"),
            default_tile=_default_tile(d.get("default_tile")),
            diameter=_diameter(d.get("diameter")),
            quantization=_dict_field(d, "quantization") or None,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            raise MetadataError(f"the metadata is not valid JSON ({exc})") from exc
        return cls.from_dict(d)


def _foreground(value: Any, n_classes: int) -> list[int]:
    """Object classes: whole numbers that are classes of the network."""
    if not isinstance(value, list):
        raise MetadataError(f"foreground_classes must be a list of class numbers, not {value!r}")
    classes = [_int_field({"foreground class": k}, "foreground class", 0, n_classes - 1) for k in value]
    return classes


def _border_class(value: Any, foreground: list[int]) -> int | None:
    """None, or one of the foreground classes other than the first (the interiors)."""
    if value is None:
        return None
    border = _int_field({"border_class": value}, "border_class", 1, ARCH_LIMITS["n_classes"][1] - 1)
    if border not in foreground[1:]:
        raise MetadataError(f"border_class {border} must be one of the foreground classes after the first, "
                            f"{foreground}")
    return border


def _normalisation(d: dict[str, Any]) -> Normalisation:
    low = _number(d.get("low_percentile", 1.0), "normalisation.low_percentile")
    high = _number(d.get("high_percentile", 99.8), "normalisation.high_percentile")
    if not 0.0 <= low < high <= 100.0:
        raise MetadataError(f"normalisation percentiles {low:g}, {high:g} must satisfy 0 <= low < high <= 100")
    return Normalisation(low, high)


def _default_tile(value: Any) -> int | None:
    if value is None:
        return None
    return _int_field({"default_tile": value}, "default_tile", 1, 1 << 16)


def _diameter(value: Any) -> float | None:
    """None (no canonical scale) or a positive finite number of pixels."""
    if value is None:
        return None
    diameter = _number(value, "diameter")
    if diameter <= 0:
        raise MetadataError(f"diameter must be a positive number of pixels or null, not {value!r}")
    return diameter


def metadata_from_proto(proto: Any, path: str | Path) -> ModelMeta:
    """The U-Net Studio metadata of a loaded ``onnx.ModelProto``.

    Raises:
        MetadataError: no U-Net Studio record, or a malformed one (the message names ``path``).
    """
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return ModelMeta.from_json(prop.value)
            except MetadataError as exc:
                raise MetadataError(f"{path}: invalid U-Net Studio metadata: {exc}") from exc
    raise MetadataError(f"{path}: an ONNX model without U-Net Studio metadata")


def read_metadata(path: str | Path) -> ModelMeta:
    """The metadata of an exported model, read without loading weights (and without torch).

    Raises:
        MetadataError: the file is no ONNX model, has no U-Net Studio metadata or a malformed one.
    """
    import onnx

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf and onnx raise many unrelated types
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise MetadataError(f"{path}: not a readable ONNX file ({reason})") from exc
    return metadata_from_proto(proto, path)
