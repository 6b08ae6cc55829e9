"""The settings of a training run: one dataclass, :class:`TrainConfig`, that the trainer, the
command line (``python -m unet_core train``), the app's Train page and its job launcher all derive
from, and that ``config.json`` of every run folder holds.

Every setting a user may give is a field with a :class:`Setting` (help text, allowed range or
choices, whether it may change on resume): the command line's options are generated from them
(:func:`settings_schema`), :meth:`TrainConfig.__post_init__` checks them in one place, and the
app's form takes its bounds from them (:func:`bounds`). A few settings are short forms of nested
ones (``augment=False`` for ``AugmentConfig(enabled=False)``, ``percentiles`` for the
normalisation, ...): :data:`SHORTHANDS`. :func:`config_from_settings` turns a flat dict of either
kind (the command line's, the page's) into a checked config.

It imports no torch: the app validates a run's settings before it starts one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .augment import AugmentConfig
from .datasets import SplitRule
from .errors import UserError
from .io import Normalisation
from .metadata import ARCH_LIMITS, UNetConfig, read_metadata
from .tiling import Geometry

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")
AMP_MODES = ("auto", "none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
#: An automatic switch by name (CLI ``--tta`` and ``--split-merged``, the pages' menus) -> its
#: option's value (``InferenceOptions.tta``, ``InstanceOptions.split_merged``; None: automatic).
SWITCH_CHOICES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}
#: The widest outline class a run may ask for (objects are 24 px or so across at the canonical scale).
MAX_BORDER_WIDTH = 8
#: The outline width of a fine-tuning run from an outline-class model that does not record its own.
DEFAULT_BORDER_WIDTH = 2


class TrainError(UserError):
    """A training run that cannot start or continue; the message says what to do."""


@dataclass(frozen=True)
class Setting:
    """How a :class:`TrainConfig` field is given by a user (the field's metadata).

    Args:
        help: one line for ``--help`` (the default is appended).
        bounds: (low, high), both allowed; None = any value of the type.
        choices: the allowed values of a text setting.
        flag: the command-line flag (default ``--name-with-dashes``; a switch that is on by default
            is turned off by ``--no-NAME``).
        metavar: the value's name in ``--help``.
        parse: how the command line's text becomes the value (``"split"``: :func:`parse_split`).
        resume: may change when a stopped run is resumed (how many steps, how often to validate or
            save, where to run); every other setting stays what the run started with.
    """

    help: str
    bounds: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    metavar: str | None = None
    parse: str | None = None
    resume: bool = False


def _setting(default: Any, help: str, bounds: tuple[float, float] | None = None, **kwargs: Any) -> Any:
    return field(default=default, metadata={"setting": Setting(help, bounds, **kwargs)})


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
        category_power: how often each image category of the data set (``index.csv``, e.g.
            fluorescence, bright-field, stained) gives a tile: in proportion to its number of
            images to this power. 1 (default): every image equally often, so a rare kind of image is
            rarely seen; 0: every category equally often; 0.5 between. A data set without
            categories is unaffected.
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
            cytoplasm_prob: probability of painting a synthetic cell body around the nuclei of an
            inverted tile (:func:`~unet_core.augment.add_cytoplasm`; needs ``diameter`` and
            ``invert_prob``), so that a model trained on fluorescence learns that a cell body
            around a dark nucleus, as bright-field and stained images show it, is not nucleus.
            Tiles left in fluorescence polarity never get one: a nuclear stain shows nuclei alone.

    Validation and checkpoints:
        val_every: validate every this many steps and at the end (0 = never); val_tile: output
            tile of the validation inference (default ``tile``); val_metric: the metric ``best.pt``
            is kept by (``"auto"``: DSB AP for instance data, Rand error for ISBI-like data);
            val_max_images: validate on at most this many validation images (None = all).
        checkpoint_every: write ``last.pt`` every this many steps (and at the end).
        export: at the end, export the best checkpoint to ``model.onnx`` and write ``model.md``.

    Hardware:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; amp: autocast
        precision, ``"auto"`` (the default: bf16 where the device computes in it natively, else
        none; :func:`~unet_core.training.trainer.resolve_precision`), ``"none"``, ``"bf16"`` or
        ``"fp16"`` (CUDA only); workers: DataLoader worker processes (0 =
        prepare tiles in the training process; None = automatic); threads: torch CPU threads
        (None = torch's default).

    Fine-tuning:
        init: start from this model (a ``.pt`` checkpoint or an exported ``.onnx``).
    """

    data: str = _setting("synthetic", "data set folder, or 'synthetic'")
    out: str = "runs/unet"
    name: str | None = _setting(None, "model name (default: the run folder's name)")
    split: dict[str, Any] | None = _setting(
        None, "validation split: every_kth:K, last_n:N or none (train on every image; default: the data set's rule)", parse="split",
        metavar="RULE")
    class_names: list[str] | None = None
    synth_n: int = _setting(40, "number of synthetic images", (1, 100_000))
    synth_seed: int = _setting(0, "seed of the synthetic images")
    synth: dict[str, Any] = field(default_factory=dict)
    synth_mix: float = _setting(0.0, "fraction of tiles from synthetic images (with a data folder)", (0.0, 1.0))
    category_power: float = _setting(
        1.0, "tiles per image category (index.csv) in proportion to its number of images to this power: "
        "1 = every image equally often, 0 = every category equally often", (0.0, 1.0), metavar="P")
    normalisation: Normalisation = field(default_factory=Normalisation)
    diameter: float | None = _setting(
        None, "canonical object diameter in px: every image is rescaled so that its median object diameter is "
        "this (default: no rescaling)", (4.0, 256.0))
    width: int = _setting(64, "channels of the first level (paper 64; CPU <= 32)", ARCH_LIMITS["width"])
    depth: int = _setting(4, "poolings of the contracting path (paper 4)", ARCH_LIMITS["depth"])
    dropout: float = _setting(0.5, "dropout after the bottleneck (paper 0.5)", (0.0, 0.95))
    in_channels: int = _setting(
        1, "input channels (1 gray, 3 colour); with --init a gray model is widened to colour, starting from its "
        "luminance view", ARCH_LIMITS["in_channels"])
    tile: int = _setting(388, "output tile edge (388 = the paper's 572 input)")
    batch: int = _setting(1, "tiles per step (paper 1)", (1, 1024))
    w0: float = _setting(10.0, "border weight of the weight map (paper 10)", (0.0, 1000.0))
    sigma: float = _setting(5.0, "border width of the weight map in px (paper 5)", (0.1, 100.0))
    class_weights: str | list[float] | None = "balanced"
    separate_touching: bool = _setting(
        True, "keep touching instances touching (no background line between them in the class map)",
        flag="--no-separate")
    border_width: int = _setting(
        0, "train a third class, 'border', on each object's outline this many px wide (0 = off, the paper's "
        "two classes); objects are then the interiors grown back over it", (0, MAX_BORDER_WIDTH), metavar="PX")
    optimizer: str = _setting("sgd", "optimiser (paper: sgd with momentum)", choices=OPTIMIZERS)
    lr: float = _setting(0.01, "learning rate", (1e-12, 10.0))
    momentum: float = _setting(0.99, "SGD momentum (paper 0.99)", (0.0, 0.9999))
    weight_decay: float = _setting(0.0, "L2 weight decay", (0.0, 1.0))
    clip_grad: float | None = _setting(None, "max gradient norm (default: no clipping)", (1e-6, 1e6))
    schedule: str = _setting("constant", "learning-rate schedule", choices=SCHEDULES)
    warmup_steps: int = _setting(0, "steps of linear learning-rate warm-up", (0, 10**7))
    lr_step_size: int = _setting(1000, "steps between learning-rate drops of --schedule step", (1, 10**7))
    lr_gamma: float = _setting(0.1, "learning-rate factor of each drop of --schedule step", (1e-6, 1.0))
    min_lr_factor: float = _setting(0.0, "final learning rate of --schedule cosine, as a fraction of --lr",
                                    (0.0, 1.0))
    steps: int = _setting(1000, "optimiser steps", (1, 10**8), resume=True)
    seed: int = _setting(0, "the run's seed (tiles, warps, dropout)", (0, 2**32 - 1))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    invert_prob: float = _setting(0.0, "probability of inverting a tile's gray values", (0.0, 1.0))
    cytoplasm_prob: float = _setting(
        0.0, "probability of painting a synthetic cell body around the nuclei of an inverted tile "
        "(needs --diameter and --invert-prob)", (0.0, 1.0))
    val_every: int = _setting(250, "validate every N steps (0 = never)", (0, 10**8), resume=True)
    val_tile: int | None = _setting(None, "output tile of validation inference (default: --tile)")
    val_metric: str = _setting("auto", "metric best.pt is kept by (default: dsb_ap / rand_error)")
    val_max_images: int | None = _setting(None, "validate on at most this many images", (1, 10**6), resume=True)
    checkpoint_every: int = _setting(50, "write last.pt every N steps", (0, 10**8), resume=True)
    export: bool = _setting(True, "do not export model.onnx at the end", resume=True)
    device: str = _setting("auto", "where to train", choices=DEVICES, resume=True)
    amp: str = _setting("auto", "autocast precision (auto: bf16 where the device computes in it natively, "
                        "else none; fp16: CUDA only)", choices=AMP_MODES)
    workers: int | None = _setting(None, "DataLoader worker processes (default: automatic)", (0, 64), resume=True)
    threads: int | None = _setting(None, "torch CPU threads (default: torch's)", (1, 1024), resume=True)
    init: str | None = _setting(None, "start from this model (.pt checkpoint or .onnx): fine-tuning")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            spec = f.metadata.get("setting")
            value = getattr(self, f.name)
            if spec is None or value is None:
                continue
            if spec.choices and value not in spec.choices:
                raise TrainError(f"{f.name} must be one of {', '.join(spec.choices)}, not {value!r}")
            if spec.bounds and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise TrainError(f"{f.name} must be a number, not {value!r}")
            if spec.bounds and not spec.bounds[0] <= value <= spec.bounds[1]:
                low, high = spec.bounds
                raise TrainError(f"{f.name} must lie in [{low:g}, {high:g}], not {value:g} "
                                 f"({spec.help.split(' (')[0]})")
        # An --init model's own diameter counts: fine-tuning keeps it (training.finetune.apply_init
        # checks it there).
        if self.cytoplasm_prob and not self.diameter and not self.init:
            raise TrainError("synthetic cell bodies (cytoplasm_prob) are sized by the nuclei: give a canonical "
                             "diameter (--diameter) too, or --init a model that has one")
        if self.cytoplasm_prob and not self.invert_prob:
            raise TrainError("synthetic cell bodies (cytoplasm_prob) go on inverted, bright-field-looking tiles "
                             "only: give --invert-prob too (0.3 for nuclei)")
        if self.border_width and self.class_names is not None and len(self.class_names) != 3:
            raise TrainError(f"{len(self.class_names)} class names for a 3-class network with a border class "
                             "(background, foreground, border)")
        for name in ("tile", "val_tile"):
            t = getattr(self, name)
            if t is not None and not self.geometry.is_valid_output(t):
                raise TrainError(
                    f"a {name} of {t} px does not fit a depth-{self.depth} network; use "
                    f"{self.geometry.floor_output(t)} or {self.geometry.ceil_output(t)}"
                )

    def check_processes(self, processes: int) -> None:
        """Refuse to share each step's ``batch`` tiles among ``processes`` processes (``torchrun``,
        :mod:`unet_core.training.distributed`) when they do not divide evenly.

        Raises:
            TrainError: the batch is no multiple of ``processes``.
        """
        if self.batch % processes:
            raise TrainError(f"a batch of {self.batch} tiles cannot be shared evenly by {processes} processes: use "
                             f"a --batch that is a multiple of {processes} (each process trains on its share of "
                             "every step's tiles)")

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
        except TrainError:
            raise
        except (OSError, ValueError, TypeError) as exc:  # TypeError: a value of the wrong kind
            raise TrainError(f"{path}: cannot read the training config ({exc})") from exc


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Shorthand:
    """A user-facing setting that sets part of a nested one (``augment=False``, ``percentiles``).

    Args:
        help: one line for ``--help``.
        apply: ``apply(config_dict, value)`` changes the config dict (the :meth:`TrainConfig.to_dict`
            form) in place.
        kind: ``"switch"`` (on by default; ``--no-NAME`` turns it off), ``"float"``, ``"int"``,
            ``"text"`` or ``"pair"`` (two numbers).
        default: the value that changes nothing (what the app's form starts from).
        choices, metavar, flag: as for :class:`Setting`.
    """

    help: str
    apply: Callable[[dict[str, Any], Any], None]
    kind: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    metavar: str | tuple[str, str] | None = None
    flag: str | None = None


def _nested(key: str, **fixed: Any) -> Callable[[dict[str, Any], Any], None]:
    """An ``apply`` that updates the nested dict ``key`` with ``fixed`` (values may be functions of
    the setting's value)."""
    def apply(cfg: dict[str, Any], value: Any) -> None:
        nested = dict(cfg.get(key) or {})
        nested.update({k: v(value) if callable(v) else v for k, v in fixed.items()})
        cfg[key] = nested
    return apply


def _hold_out(cfg: dict[str, Any], value: str) -> None:
    rule = dict(cfg.get("split") or {"kind": "every_kth", "k": 5})
    rule["groups"] = [g.strip() for g in value.split(",") if g.strip()]
    cfg["split"] = rule


def _class_balance(cfg: dict[str, Any], on: bool) -> None:
    cfg["class_weights"] = "balanced" if on else None


#: Short forms of nested settings, by name (the names the page and the command line use).
SHORTHANDS: dict[str, Shorthand] = {
    "class_balance": Shorthand("w_c = 1 instead of balanced class weights", _class_balance, "switch", True),
    "augment": Shorthand("no augmentation at all", _nested("augment", enabled=lambda on: bool(on)), "switch", True),
    "elastic": Shorthand("no elastic deformation", _nested("augment", elastic=lambda on: bool(on)), "switch", True),
    "scale_jitter": Shorthand(
        "random zoom of each tile by a factor in [MIN, MAX] (log-uniform)",
        _nested("augment", scale=True, scale_range=list), "pair", metavar=("MIN", "MAX")),
    "blur": Shorthand(
        "Gaussian blur of each tile by a sigma drawn from [0, SIGMA] px (0 = off; out-of-focus images)",
        _nested("augment", blur=lambda s: s > 0, blur_sigma_range=lambda s: [0.0, s]), "float", metavar="SIGMA"),
    "noise": Shorthand("Gaussian noise of this std (fraction of the tile's range; 0 = off)",
                       _nested("augment", noise=lambda s: s > 0, noise_std=float), "float", metavar="STD"),
    "synth_mode": Shorthand("look of the synthetic images", _nested("synth", mode=str), "text",
                            choices=("fluorescence", "phase")),
    "synth_size": Shorthand("synthetic image edge in px", _nested("synth", height=int, width=int), "int"),
    "hold_out_groups": Shorthand(
        "also hold out these acquisition groups as a whole (e.g. 'gray_lightbg 1024x1024'; a group is CATEGORY "
        "HxW from index.csv, else HxW)", _hold_out, "text", metavar="G1,G2"),
    "percentiles": Shorthand(
        "normalisation percentiles", lambda cfg, v: cfg.update(normalisation=Normalisation(*v).to_dict()),
        "pair", metavar=("LOW", "HIGH")),
}


def parse_split(text: str) -> dict[str, Any]:
    """``"every_kth:5"`` / ``"last_n:5"`` / ``"none"`` -> a :class:`~unet_core.datasets.SplitRule` dict."""
    kind, _, k = str(text).partition(":")
    try:
        return SplitRule(kind, int(k or 5)).to_dict()
    except ValueError as exc:
        raise TrainError(f"a split is every_kth:K, last_n:N or none, not {text!r} ({exc})") from None


def user_settings() -> dict[str, Setting]:
    """The fields a user may set, by name, with their :class:`Setting`."""
    return {f.name: f.metadata["setting"] for f in dataclasses.fields(TrainConfig) if "setting" in f.metadata}


def _field_types() -> dict[str, str]:
    """Each field's value type as text (``"int"``, ``"float"``, ``"str"``, ``"bool"``; ``"dict"`` ...)."""
    return {f.name: str(f.type).replace(" | None", "") for f in dataclasses.fields(TrainConfig)}


def settings_schema() -> list[dict[str, Any]]:
    """Every user setting as the command line builds its option from it: ``name``, ``flag``,
    ``kind`` (``"int"``, ``"float"``, ``"text"``, ``"switch"``, ``"pair"``), ``help`` (with the
    default), ``default``, ``choices``, ``metavar``, ``parse`` and ``resume``."""
    defaults = TrainConfig()
    kinds = {"int": "int", "float": "float", "bool": "switch"}
    rows = []
    for name, spec in user_settings().items():
        kind = kinds.get(_field_types()[name], "text")
        default = getattr(defaults, name)
        flag = spec.flag or ("--no-" if kind == "switch" else "--") + name.replace("_", "-")
        text = spec.help if kind == "switch" or default is None else f"{spec.help} (default {default})"
        rows.append({"name": name, "flag": flag, "kind": kind, "help": text, "default": default,
                     "choices": spec.choices, "metavar": spec.metavar, "parse": spec.parse, "resume": spec.resume})
    for name, short in SHORTHANDS.items():
        flag = short.flag or ("--no-" if short.kind == "switch" else "--") + name.replace("_", "-")
        rows.append({"name": name, "flag": flag, "kind": short.kind, "help": short.help, "default": short.default,
                     "choices": short.choices, "metavar": short.metavar, "parse": None, "resume": False})
    return rows


def bounds(name: str) -> dict[str, Any]:
    """``min_value`` / ``max_value`` of a numeric setting, for a form's number input."""
    spec = user_settings()[name]
    if spec.bounds is None:
        return {}
    cast = int if _field_types()[name] == "int" else float
    return {"min_value": cast(spec.bounds[0]), "max_value": cast(spec.bounds[1])}


def defaults(names: tuple[str, ...]) -> dict[str, Any]:
    """The default (the paper's value) of each named setting or shorthand."""
    base = TrainConfig()
    return {n: SHORTHANDS[n].default if n in SHORTHANDS else getattr(base, n) for n in names}


def config_from_settings(settings: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> TrainConfig:
    """The checked config of ``settings`` (field names and :data:`SHORTHANDS`, None = not given)
    on top of ``base`` (a ``config.json`` dict; default: the defaults).

    Raises:
        TrainError: an unknown setting or a value the trainer would refuse (the message says which).
    """
    cfg = dict(base or {})
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(settings) - fields - set(SHORTHANDS)
    if unknown:
        raise TrainError(f"unknown training settings: {', '.join(sorted(unknown))}")
    given = {k: v for k, v in settings.items() if v is not None}
    for key, value in given.items():  # fields first: a shorthand refines them (groups of a split)
        if key in fields and key not in SHORTHANDS:
            cfg[key] = parse_split(value) if key == "split" and isinstance(value, str) else value
    for key, value in given.items():
        if key in SHORTHANDS:
            SHORTHANDS[key].apply(cfg, value)
    return TrainConfig.from_dict(cfg)


#: What a fine-tuning run takes from the model it starts from, unless given: how that model was
#: taught (the loss's weights, the augmentation, the normalisation), not how long or how fast.
#: Measured (README, "Teaching the model your images"): fine-tuning the nuclei model on 3 images of
#: a new experiment with the default balanced class weights instead of its w_c = 1 dropped its AP
#: on 13 others of that experiment from 0.41 to 0.30; with its recipe it kept 0.41.
RECIPE_FIELDS = ("class_weights", "w0", "sigma", "separate_touching", "augment", "invert_prob", "cytoplasm_prob",
                 "normalisation")


def init_recipe(init: str | Path | None) -> dict[str, Any] | None:
    """The :data:`RECIPE_FIELDS` of the training config saved in model ``init`` (``.onnx`` or
    ``.pt``), as the ``base`` of :func:`config_from_settings`; None without ``init`` (the
    defaults), ``{}`` for a model that did not record its config.

    Raises:
        TrainError: ``init`` cannot be read.
    """
    if not init:
        return None
    path = Path(init)
    if not path.is_file():  # said where the model is loaded, in the words of a missing file
        return {}
    try:
        if path.suffix.lower() == ".onnx":
            meta = read_metadata(path)
        else:
            from .checkpoint import checkpoint_meta, read_checkpoint  # torch: only for a checkpoint

            meta = checkpoint_meta(read_checkpoint(path), path)
    except (UserError, OSError) as exc:
        raise TrainError(f"{path}: cannot read the model to start from ({exc})") from exc
    config = meta.training.get("config") or {}
    return {k: config[k] for k in RECIPE_FIELDS if k in config}


def resumed_with(cfg: TrainConfig, settings: Mapping[str, Any]) -> TrainConfig:
    """``cfg`` with the settings that may change on resume (:attr:`Setting.resume`) taken from
    ``settings``; the others are ignored (a run continues with what it started with)."""
    allowed = {n for n, spec in user_settings().items() if spec.resume}
    changes = {k: v for k, v in settings.items() if k in allowed and v is not None}
    return dataclasses.replace(cfg, **changes)


def resume_args(settings: Mapping[str, Any]) -> list[str]:
    """Command-line options of ``train --resume`` for the resumable ``settings`` (others dropped)."""
    rows = {row["name"]: row for row in settings_schema() if row["resume"]}
    args: list[str] = []
    for key, value in settings.items():
        row = rows.get(key)
        if row is None or value is None:
            continue
        if row["kind"] == "switch":
            args += [] if value else [row["flag"]]
        else:
            args += [row["flag"], f"{value:g}" if isinstance(value, float) else str(value)]
    return args
