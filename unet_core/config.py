"""The settings of a training run: one dataclass, :class:`TrainConfig`, that the trainer, the
command line (``python -m unet_core train``) and the app's Train page all derive from and that
``config.json`` of every run folder holds.

It imports no torch: the app validates a run's settings before it starts one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .augment import AugmentConfig
from .errors import UserError
from .io import Normalisation
from .metadata import ARCH_LIMITS, UNetConfig
from .tiling import Geometry

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")
AMP_MODES = ("none", "bf16", "fp16")
#: The widest outline class a run may ask for (objects are 24 px or so across at the canonical scale).
MAX_BORDER_WIDTH = 8
#: The outline width of a fine-tuning run from an outline-class model that does not record its own.
DEFAULT_BORDER_WIDTH = 2


class TrainError(UserError):
    """A training run that cannot start or continue; the message says what to do."""


# --------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Everything that defines a training run (paper values as defaults).

    Data:
        data: a data set folder (see :func:`unet_core.datasets.open_dataset`) or ``"synthetic"``.
        out: the run folder (``runs/NAME``).
        name: model name for the metadata (default: the run folder's name).
        split: validation split rule as a dict (``{"kind": "every_kth", "k": 5}``); None = the data
            set's own rule (last 5 slices for ISBI 2012, every 5th image otherwise).
        class_names: names of the classes; None = ``["membrane", "cell"]`` for ISBI 2012, else
            ``["background", "foreground"]``.
        synth_n, synth_seed, synth: size, seed and :class:`~unet_core.synthetic.SynthConfig`
            overrides of the synthetic set (used for ``data="synthetic"`` and for ``synth_mix``).
        synth_mix: fraction of training tiles drawn from synthetic images when ``data`` is a
            folder (0 = none), for generalisation to the generator's look.
        normalisation: the percentile stretch (travels with the model).
        diameter: the canonical object diameter in pixels (:mod:`unet_core.scale`): every image
            with instances is rescaled (image linear, labels nearest, weight maps computed after
            rescaling) so that its median object diameter equals this; stored in the model's
            metadata so that inference rescales the same way. None = no rescaling (EM, ISBI).

    Network (:class:`~unet_core.model.UNet`): width (64 in the paper; CPU runs use <= 32),
        depth, dropout, in_channels. With ``init`` the architecture comes from the init model.

    Tiles and loss:
        tile: output tile edge (388 for the paper's 572 input); must be valid for the geometry.
        batch: tiles per step (1 in the paper: large tiles rather than large batches).
        w0, sigma, class_weights: the weight map of Eq. 2 (:func:`unet_core.weights.weight_map`).
        separate_touching: cut a one-pixel background line between touching instances first
            (:func:`unet_core.weights.separate_touching`), so the border term has the paper's
            separation borders to act on; a no-op for masks that already separate cells (ISBI).
        border_width: width in pixels of a third class, ``"border"``, along the inside of every
            object's outline (0 = the paper's two classes). Objects are then the components of the
            interior grown back over the border (:func:`unet_core.instances.instances`), so two
            touching objects are split where the network sees their outlines even when it cannot
            see a gap between them. Needs instance masks with one foreground class.

    Optimisation:
        optimizer: ``"sgd"`` (momentum 0.99, the paper) or ``"adam"``.
        lr, momentum, weight_decay, clip_grad (max gradient norm, None = no clipping).
        schedule: ``"constant"``, ``"cosine"`` (to ``min_lr_factor * lr`` at the last step) or
            ``"step"`` (times ``lr_gamma`` every ``lr_step_size`` steps); ``warmup_steps`` of
            linear warm-up first.
        steps: number of optimiser steps; seed: the run's seed (tiles, warps, dropout).

    Augmentation:
        augment: :class:`~unet_core.augment.AugmentConfig` (elastic, rotation, flips, shift, gray
            values); invert_prob: probability of inverting the normalised gray values (``1 - x``)
            of a tile, so that a one-channel model sees both polarities (dark nuclei on light
            background as in brightfield/H&E, and bright on dark as in fluorescence).

    Validation and checkpoints:
        val_every: validate every this many steps and at the end (0 = never); val_tile: output
            tile of the validation inference (default ``tile``); val_metric: the metric ``best.pt``
            is kept by (``"auto"``: DSB AP for instance data, Rand error for ISBI-like data);
            val_max_images: validate on at most this many validation images (None = all).
        checkpoint_every: write ``last.pt`` every this many steps (and at the end).
        export: at the end, export the best checkpoint to ``model.onnx`` and write ``model.md``.

    Hardware:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; amp: ``"none"``,
        ``"bf16"`` or ``"fp16"`` (CUDA only) autocast; workers: DataLoader worker processes (0 =
        prepare tiles in the training process; None = automatic); threads: torch CPU threads
        (None = torch's default).

    Fine-tuning:
        init: start from this model (a ``.pt`` checkpoint or an exported ``.onnx``).
    """

    data: str = "synthetic"
    out: str = "runs/unet"
    name: str | None = None
    split: dict[str, Any] | None = None
    class_names: list[str] | None = None
    synth_n: int = 40
    synth_seed: int = 0
    synth: dict[str, Any] = field(default_factory=dict)
    synth_mix: float = 0.0
    normalisation: Normalisation = field(default_factory=Normalisation)
    diameter: float | None = None
    width: int = 64
    depth: int = 4
    dropout: float = 0.5
    in_channels: int = 1
    tile: int = 388
    batch: int = 1
    w0: float = 10.0
    sigma: float = 5.0
    class_weights: str | list[float] | None = "balanced"
    separate_touching: bool = True
    border_width: int = 0
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 0.0
    clip_grad: float | None = None
    schedule: str = "constant"
    warmup_steps: int = 0
    lr_step_size: int = 1000
    lr_gamma: float = 0.1
    min_lr_factor: float = 0.0
    steps: int = 1000
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    invert_prob: float = 0.0
    val_every: int = 250
    val_tile: int | None = None
    val_metric: str = "auto"
    val_max_images: int | None = None
    checkpoint_every: int = 50
    export: bool = True
    device: str = "auto"
    amp: str = "none"
    workers: int | None = None
    threads: int | None = None
    init: str | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise TrainError(f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise TrainError(f"schedule must be one of {SCHEDULES}, not {self.schedule!r}")
        if self.amp not in AMP_MODES:
            raise TrainError(f"amp must be one of {AMP_MODES}, not {self.amp!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise TrainError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.steps < 1 or self.batch < 1:
            raise TrainError("steps and batch must be >= 1")
        if not 0.0 <= self.synth_mix <= 1.0 or not 0.0 <= self.invert_prob <= 1.0:
            raise TrainError("synth_mix and invert_prob must lie in [0, 1]")
        if self.lr <= 0:
            raise TrainError(f"lr must be > 0, not {self.lr}")
        if not self.sigma > 0 or self.w0 < 0:
            raise TrainError(f"the weight map needs sigma > 0 and w0 >= 0 (the paper: 5 and 10), not "
                             f"{self.sigma} and {self.w0}")
        if not 0.0 <= self.momentum < 1.0:
            raise TrainError(f"momentum must lie in [0, 1) (the paper uses 0.99), not {self.momentum}")
        if not 0.0 <= self.dropout < 1.0:
            raise TrainError(f"dropout must lie in [0, 1), not {self.dropout}")
        for name in ("width", "depth", "in_channels"):
            low, high = ARCH_LIMITS[name]
            if not low <= getattr(self, name) <= high:
                raise TrainError(f"{name} must lie in [{low}, {high}], not {getattr(self, name)}")
        if self.val_every < 0 or self.checkpoint_every < 0 or self.warmup_steps < 0:
            raise TrainError("val_every, checkpoint_every and warmup_steps must not be negative")
        if not 0 <= self.border_width <= MAX_BORDER_WIDTH:
            raise TrainError(f"border_width must lie in [0, {MAX_BORDER_WIDTH}] pixels, not {self.border_width}")
        if self.border_width and self.class_names is not None and len(self.class_names) != 3:
            raise TrainError(f"{len(self.class_names)} class names for a 3-class network with a border class "
                             "(background, foreground, border)")
        if self.diameter is not None and not 4 <= self.diameter <= 256:
            raise TrainError(f"diameter must lie in [4, 256] pixels (or be None), not {self.diameter}")
        geometry = Geometry(self.depth, "valid")
        for name in ("tile", "val_tile"):
            t = getattr(self, name)
            if t is not None and not geometry.is_valid_output(t):
                raise TrainError(
                    f"a {name} of {t} px does not fit a depth-{self.depth} network; use "
                    f"{geometry.floor_output(t)} or {geometry.ceil_output(t)}"
                )

    @property
    def n_classes(self) -> int:
        """Output classes: the named ones, or background and foreground (plus the border)."""
        return len(self.class_names) if self.class_names else 2 + bool(self.border_width)

    @property
    def border_class(self) -> int | None:
        """The class index of the outline class (the last one), or None without one."""
        return self.n_classes - 1 if self.border_width else None

    @property
    def unet(self) -> UNetConfig:
        return UNetConfig(in_channels=self.in_channels, n_classes=self.n_classes,
                          width=self.width, depth=self.depth, padding="valid", dropout=self.dropout)

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.depth, "valid")

    @property
    def run_name(self) -> str:
        return self.name or Path(self.out).name

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["normalisation"] = self.normalisation.to_dict()
        d["augment"] = dataclasses.asdict(self.augment)
        return json.loads(json.dumps(d))  # tuples -> lists: what config.json holds

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TrainError(f"unknown training settings: {', '.join(sorted(unknown))}")
        d = dict(d)
        if "normalisation" in d and isinstance(d["normalisation"], dict):
            d["normalisation"] = Normalisation.from_dict(d["normalisation"])
        if "augment" in d and isinstance(d["augment"], dict):
            aug_fields = {f.name for f in dataclasses.fields(AugmentConfig)}
            d["augment"] = AugmentConfig(**{
                k: tuple(v) if isinstance(v, list) else v for k, v in d["augment"].items() if k in aug_fields
            })
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise TrainError(f"{path}: cannot read the training config ({exc})") from exc
