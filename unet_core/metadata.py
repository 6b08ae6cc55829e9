"""What a model says about itself: architecture, classes, normalisation, tiling and training.

The same record is embedded in every exported ONNX file (``metadata_props["unet_studio"]`` as
JSON), so a model file alone is enough to segment images the way it was trained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .io import Normalisation
from .tiling import Geometry

METADATA_KEY = "unet_studio"
FORMAT_VERSION = 1


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
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


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
    """

    name: str = "unet"
    unet: UNetConfig = field(default_factory=UNetConfig)
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])
    foreground_classes: list[int] = field(default_factory=lambda: [1])
    normalisation: Normalisation = field(default_factory=Normalisation)
    training: dict[str, Any] = field(default_factory=dict)
    default_tile: int | None = None

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
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        unet = UNetConfig.from_dict(d.get("unet", {}))
        names = list(d.get("class_names") or [f"class {k}" for k in range(unet.n_classes)])
        if len(names) != unet.n_classes:
            raise ValueError(f"metadata names {len(names)} classes for a {unet.n_classes}-class network")
        return cls(
            name=str(d.get("name", "unet")),
            unet=unet,
            class_names=names,
            foreground_classes=[int(k) for k in d.get("foreground_classes", [1])],
            normalisation=Normalisation.from_dict(d.get("normalisation", {})),
            training=dict(d.get("training", {})),
            default_tile=d.get("default_tile"),
        )

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        return cls.from_dict(json.loads(text))


def read_metadata(path: str | Path) -> ModelMeta:
    """The metadata of an exported model, read without loading weights (and without torch)."""
    import onnx

    proto = onnx.load_model(str(path), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return ModelMeta.from_json(prop.value)
    raise ValueError(f"{path}: an ONNX model without U-Net Studio metadata")
