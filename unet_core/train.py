"""Training: the paper's recipe as one config dataclass, a resumable loop, a JSONL log, and export.

The recipe of Ronneberger et al. (2015), Sec. 3, as defaults of :class:`TrainConfig`: a weighted
pixel-wise softmax cross-entropy whose weights are the paper's maps (Eq. 2, ``w0 = 10``,
``sigma = 5``, balanced class weights; :func:`unet_core.weights.weight_map` of each image's
instance labels, computed once per image); batch 1 of large tiles (572 -> 388); SGD with momentum
0.99; He initialisation and dropout 0.5 at the end of the contracting path (in
:class:`~unet_core.model.UNet`); elastic + geometric + gray-value augmentation
(:class:`~unet_core.augment.AugmentConfig`). Adam, learning-rate schedules, polarity inversion and
mixing in synthetic images are options.

Classes are background (0) and foreground (1). For ISBI 2012 the foreground is the white cell
interior and the background the membranes; the instances that the weight map separates are the
4-connected components of the interior, so the border term lives on the membranes between cells.

Reproducibility and resume
    Everything random in a step is a function of ``(seed, step)``: which image, where the tile
    sits, the warp and the gray values (``numpy.random.default_rng([seed, step, b])``), and the
    dropout masks (the torch generator is reseeded from ``(seed, step)`` before every forward
    pass). The learning rate is a pure function of the step. A checkpoint (``last.pt``, written
    atomically every ``checkpoint_every`` steps and at the end) holds the weights, the optimiser
    state, the step and the best validation value, so ``resume`` after a ``kill -9`` at any moment
    (also during a checkpoint write) replays the remaining steps exactly: the per-step losses equal
    those of an uninterrupted run.

Data
    Images are normalised exactly as at inference (:func:`unet_core.io.fit_stretch` over the whole
    image, the model's :class:`~unet_core.io.Normalisation`), converted to the model's channels,
    and kept in memory with their class maps and weight maps. Tiles are cut and augmented in
    DataLoader worker processes (forked, so the arrays are shared), ahead of the model. Tile pixels
    that map outside the image (small images, tiles at the border) are mirrored for the input but
    get weight 0 in the loss. The loss is ``sum(w * CE) / #(w > 0)``.

Run folder (``runs/NAME``)
    ``config.json`` (the exact :class:`TrainConfig`), ``manifest.json`` (data files and split),
    ``versions.json`` (software and hardware), ``log.jsonl``, ``last.pt``, ``best.pt``, and at the
    end ``model.onnx`` (the best checkpoint, with :class:`~unet_core.metadata.ModelMeta`) and the
    model card ``model.md``.

Log (``log.jsonl``, one JSON object per line, appended and flushed per line)
    Step lines: ``step``, ``loss``, ``lr``, ``px_per_s`` (output pixels per second of the step),
    ``data_wait`` (fraction of the step spent waiting for data), ``step_s``, ``elapsed`` (seconds
    of training so far, across resumes) and, where validation ran, ``val`` (mean metrics) and
    ``best`` (whether it is the best so far). Event lines have ``event`` (``"start"``, ``"resume"``,
    ``"done"``) and no ``loss``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import glob
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .augment import augment_tile
from .checkpoint import atomic_save, checkpoint_meta, read_checkpoint
from .config import DEFAULT_BORDER_WIDTH, TrainConfig, TrainError
from .datasets import Dataset, DatasetError, SplitRule, open_dataset
from .evaluate import EvalOptions, EvalReport, evaluate, metric_kind
from .io import LUMA, fit_stretch, to_channels
from .metadata import ModelMeta
from .metrics import LOWER_IS_BETTER, PRIMARY_METRIC
from .model import FIRST_CONV_WEIGHT, HEAD_BIAS, HEAD_WEIGHT, UNet
from .runlog import LOG_NAME, parse_log_lines
from .scale import clamp_factor, median_diameter, rescale_image, rescale_labels, scaled_shape
from .weights import outline_class, separate_touching, weight_map


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of update ``step`` (1-based): warm-up, then the schedule."""
    i = step - 1
    if i < cfg.warmup_steps:
        return cfg.lr * (i + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps - 1)
        t = min(1.0, (i - cfg.warmup_steps) / span)
        return cfg.lr * (cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t)))
    if cfg.schedule == "step":
        return cfg.lr * cfg.lr_gamma ** ((i - cfg.warmup_steps) // max(1, cfg.lr_step_size))
    return cfg.lr


# --------------------------------------------------------------------------- loss


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The paper's energy: pixel-wise softmax cross-entropy weighted by ``weights`` (Eq. 1).

    ``sum_x w(x) * -log p_{l(x)}(x) / #{x : w(x) > 0}``: a weighted sum normalised by the number
    of pixels that take part (weight 0 marks pixels outside the image).

    Args:
        logits: (B, K, h, w) network output.
        target: (B, h, w) integer class of each pixel.
        weights: (B, h, w) per-pixel weights (0 = ignored).
    """
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    n = (weights > 0).sum().clamp_min(1)
    return (weights * ce).sum() / n


# --------------------------------------------------------------------------- data


@dataclass
class TrainImage:
    """One training image in memory, ready for tiling."""

    name: str
    image: np.ndarray  # (H, W, C) float32, normalised as at inference
    classes: np.ndarray  # (H, W) uint8 class indexes
    weights: np.ndarray  # (H, W) float32 weight map (Eq. 2)


def prepare_image(dataset: Dataset, i: int, cfg: TrainConfig) -> TrainImage:
    """Normalise image ``i``, rescale it to the canonical diameter, and compute its class map and
    weight map (once per image)."""
    raw = dataset.load_image(i)
    name = dataset.samples[i].name
    stretch = fit_stretch(raw[None], cfg.in_channels, cfg.normalisation, name)
    image = stretch(to_channels(raw, cfg.in_channels))
    classes = dataset.load_classes(i)
    n_classes = cfg.n_classes - bool(cfg.border_width)  # the border class is made here, not read
    if classes.size and int(classes.max()) >= n_classes:
        raise TrainError(f"{name}: mask has class {int(classes.max())} but the model has {n_classes} classes")
    instances = dataset.load_instances(i)
    image, classes, instances = _to_canonical_scale(image, classes, instances, cfg.diameter)
    if cfg.separate_touching:
        separated = separate_touching(instances)
        classes = np.where((instances > 0) & (separated == 0), 0, classes)
        instances = separated
    if cfg.border_width:
        classes = outline_class(classes, instances, cfg.border_width, cfg.border_class)
    weights = weight_map(instances, cfg.w0, cfg.sigma, cfg.class_weights)
    return TrainImage(name, np.ascontiguousarray(image, np.float32), classes.astype(np.uint8), weights)


def _to_canonical_scale(image: np.ndarray, classes: np.ndarray, instances: np.ndarray,
                        diameter: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (linear), classes and instances (nearest) rescaled so that the median object
    diameter becomes ``diameter``; unchanged without a diameter or without objects."""
    measured = median_diameter(instances) if diameter else None
    if not measured:
        return image, classes, instances
    factor = clamp_factor(diameter / measured)
    shape = scaled_shape(classes.shape, factor)
    if shape == classes.shape:
        return image, classes, instances
    return rescale_image(image, shape), rescale_labels(classes, shape), rescale_labels(instances, shape)


def make_tile(
    pools: list[list[TrainImage]],
    pool_probs: list[float],
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented training tile: input (C, H_in, W_in), classes (h, w), weights (h, w).

    The tile comes from :func:`~unet_core.augment.augment_tile` (the function the augmentation
    tests and ``bench/augment.py`` exercise), with labels and weights on the output crop and the
    mirrored context of overlap-tile inference. Output pixels whose source lies past the image
    border weigh 0: the net must not learn from mirrored labels.
    """
    geometry = cfg.geometry
    out = cfg.tile
    size = geometry.input_size(out)
    p = int(rng.choice(len(pools), p=pool_probs)) if len(pools) > 1 else 0
    pool = pools[p]
    item = pool[int(rng.integers(len(pool)))]
    h, w = item.classes.shape
    center = (float(rng.integers(h)), float(rng.integers(w)))
    image, classes, weights = augment_tile(item.image, item.classes, item.weights, (size, size), center,
                                           cfg.augment, rng, output_shape=(out, out), mode="mirror",
                                           zero_outside=True)
    assert weights is not None  # a TrainImage always has its weight map
    if cfg.invert_prob > 0 and rng.random() < cfg.invert_prob:
        image = 1.0 - image
    return (np.ascontiguousarray(image.transpose(2, 0, 1), np.float32), classes,
            weights.astype(np.float32, copy=False))


def step_rng(seed: int, step: int, b: int = 0) -> np.random.Generator:
    """The generator of tile ``b`` of ``step``: a pure function of (seed, step, b)."""
    return np.random.default_rng([seed, step, b])


def dropout_seed(seed: int, step: int) -> int:
    """Seed of the torch generator (dropout masks) for ``step``."""
    return int(np.random.SeedSequence([seed, step, 0xD50]).generate_state(1, np.uint64)[0] >> 1)


class StepTiles(torch.utils.data.Dataset):
    """Map-style dataset: item ``step`` is that step's batch, a pure function of (seed, step)."""

    def __init__(self, pools: list[list[TrainImage]], pool_probs: list[float], cfg: TrainConfig) -> None:
        self.pools = pools
        self.pool_probs = pool_probs
        self.cfg = cfg

    def __len__(self) -> int:
        return self.cfg.steps + 1

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        xs, ys, ws = [], [], []
        for b in range(self.cfg.batch):
            x, y, w = make_tile(self.pools, self.pool_probs, self.cfg, step_rng(self.cfg.seed, step, b))
            xs.append(x)
            ys.append(y)
            ws.append(w)
        return {
            "step": torch.tensor(step),
            "x": torch.from_numpy(np.stack(xs)),
            "y": torch.from_numpy(np.stack(ys).astype(np.int64)),
            "w": torch.from_numpy(np.stack(ws)),
        }


@dataclass
class TrainData:
    """The data of a run: the data set, its split and the in-memory training images."""

    dataset: Dataset
    rule: SplitRule
    train_indices: list[int]
    val_indices: list[int]
    kind: str
    synthetic: Dataset | None = None  # the synthetic set mixed in (synth_mix > 0)


def _synth_config(cfg: TrainConfig):
    from .synthetic import SynthConfig

    try:
        return SynthConfig.from_dict(cfg.synth)
    except (TypeError, ValueError) as exc:
        raise TrainError(f"invalid synthetic settings {cfg.synth}: {exc}") from exc


def open_training_data(cfg: TrainConfig) -> TrainData:
    """Open the data set of ``cfg`` and split it (the config's rule, else the data set's own)."""
    from .synthetic import synthetic_dataset

    if cfg.data == "synthetic":
        dataset = synthetic_dataset(cfg.synth_n, _synth_config(cfg), cfg.synth_seed)
    else:
        try:
            dataset = open_dataset(cfg.data)
        except DatasetError as exc:
            raise TrainError(str(exc)) from exc
    if len(dataset) == 0:
        raise TrainError(f"{cfg.data}: the data set has no usable samples ({'; '.join(dataset.problems[:3])})")
    rule = SplitRule.from_dict(cfg.split) if cfg.split else dataset.split_rule
    try:
        train_idx = dataset.split_indices("train", rule)
        val_idx = dataset.split_indices("val", rule)
    except ValueError as exc:
        raise TrainError(f"{cfg.data}: {exc}") from exc
    if not train_idx:
        raise TrainError(f"{cfg.data}: the split {rule.to_dict()} leaves no training images")
    synthetic = None
    if cfg.synth_mix > 0 and cfg.data != "synthetic":
        synthetic = synthetic_dataset(cfg.synth_n, _synth_config(cfg), cfg.synth_seed)
    return TrainData(dataset, rule, train_idx, val_idx, metric_kind(dataset), synthetic)


def default_class_names(layout: str, border: bool = False) -> list[str]:
    """Class names of a new run: the data set's two classes, and ``"border"`` with an outline class."""
    names = ["membrane", "cell"] if layout == "isbi2012" else ["background", "foreground"]
    return names + ["border"] * border


# --------------------------------------------------------------------------- run folder records


def versions() -> dict[str, Any]:
    """Software and hardware this run used (versions.json)."""
    import importlib.metadata as md

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for pkg in ("numpy", "scipy", "scikit-image", "onnx", "onnxruntime-gpu", "onnxruntime", "onnxscript", "pillow",
                "tifffile"):
        v = version(pkg)
        if v:
            info[pkg] = v
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        info["unet_studio_commit"] = commit + ("+dirty" if dirty else "") if commit else None
    except (OSError, subprocess.SubprocessError):
        info["unet_studio_commit"] = None
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def manifest(cfg: TrainConfig, data: TrainData) -> dict[str, Any]:
    """Which files were used and how they were split (manifest.json)."""
    ds = data.dataset
    val = set(data.val_indices)
    d: dict[str, Any] = {
        "data": cfg.data if cfg.data == "synthetic" else str(Path(cfg.data).resolve()),
        "layout": ds.layout,
        "mask_encoding": ds.mask_encoding,
        "split_rule": data.rule.to_dict(),
        "n_samples": len(ds),
        "n_train": len(data.train_indices),
        "n_val": len(data.val_indices),
        "problems": list(ds.problems),
        "samples": [
            {
                "index": i,
                "name": s.name,
                "image": str(s.image_path),
                "mask": str(s.mask_path) if s.mask_path else None,
                "slice": s.slice_index,
                "part": "val" if i in val else "train",
            }
            for i, s in enumerate(ds.samples)
        ],
    }
    if cfg.data == "synthetic" or data.synthetic is not None:
        d["synthetic"] = {"n": cfg.synth_n, "seed": cfg.synth_seed, "config": _synth_config(cfg).to_dict(),
                          "mix": cfg.synth_mix if cfg.data != "synthetic" else 1.0}
    return d


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The parsed lines of a run's log.jsonl, read afresh (a half-written last line is skipped)."""
    try:
        return parse_log_lines(Path(path).read_bytes())
    except FileNotFoundError:
        return []


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (those after the last checkpoint will be replayed)."""
    if not path.exists():
        return
    kept = [r for r in read_log(path) if r.get("step", 0) <= step and r.get("event") != "done"]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- progress


class TrainProgress:
    """A progress line on stderr: step, loss, speed, data wait, ETA."""

    def __init__(self, total: int, stream=None, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = self.stream.isatty()
        self._last = 0.0

    def update(self, step: int, loss: float, step_s: float, wait: float, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        final = step == self.total
        if not final and not note and now - self._last < (0.2 if self.interactive else 30.0):
            return
        self._last = now
        width = 24
        filled = int(width * step / max(self.total, 1))
        eta = (self.total - step) * step_s
        line = (f"step {step}/{self.total} |{'#' * filled}{'.' * (width - filled)}| loss {loss:.4f}  "
                f"{step_s:.2f} s/step  wait {100 * wait:.0f}%  ETA {_duration(eta)}" + (f"  {note}" if note else ""))
        if self.interactive:
            self.stream.write("\r\033[K" + line + ("\n" if final or note else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\n" if self.interactive else "") + text + "\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    out: Path
    step: int
    losses: list[float]
    best: dict[str, Any] | None
    onnx: Path | None
    card: Path | None
    elapsed: float
    data_wait: float  # fraction of step time spent waiting for data, over this process's steps


def _resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainError("device 'cuda' requested, but PyTorch sees no GPU; use --device cpu")
    use_cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
    if cfg.amp == "fp16" and not use_cuda:
        raise TrainError("fp16 autocast needs a GPU; use --amp bf16 or none on CPU")
    return torch.device("cuda" if use_cuda else "cpu")


def load_init_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    """Weights and metadata of a model to start from: a ``.pt`` checkpoint or an exported ``.onnx``."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: init model not found")
    if path.suffix.lower() == ".onnx":
        from .export import read_metadata, state_dict_from_onnx

        try:
            return state_dict_from_onnx(path), read_metadata(path)
        except Exception as exc:
            raise TrainError(f"{path}: cannot read the init model ({exc})") from exc
    try:
        ckpt = read_checkpoint(path)
        return ckpt["model"], checkpoint_meta(ckpt, path)  # checked like any model file's metadata
    except ValueError as exc:
        raise TrainError(str(exc)) from exc


def apply_init(cfg: TrainConfig) -> TrainConfig:
    """The config with the architecture of ``cfg.init`` (fine-tuning keeps the model's shape).

    Two exceptions: a gray (1-channel) init model may be widened to ``cfg.in_channels`` (3 for
    colour) by :func:`widen_input`, and a two-class one given the outline class of
    ``cfg.border_width`` by :func:`add_border_class`. A model with an outline class keeps it (at
    the width it was trained with).
    """
    if not cfg.init:
        return cfg
    _, meta = load_init_weights(cfg.init)
    u = meta.unet
    if u.padding != "valid":
        raise TrainError(f"{cfg.init}: only 'valid' (paper) networks can be fine-tuned here")
    in_channels = cfg.in_channels if u.in_channels == 1 and cfg.in_channels > 1 else u.in_channels
    names = cfg.class_names or list(meta.class_names)
    border_width = cfg.border_width
    if border_width and meta.border_class is None:
        if len(names) != 2:
            raise TrainError(f"{cfg.init}: only a two-class model can be given a border class, not {names}")
        names = [*names, "border"]
    elif meta.border_class is not None and not border_width:  # the model keeps its outline class
        border_width = int((meta.training.get("config") or {}).get("border_width") or DEFAULT_BORDER_WIDTH)
    return dataclasses.replace(cfg, width=u.width, depth=u.depth, in_channels=in_channels, class_names=names,
                               border_width=border_width)


def widen_input(state: dict[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """The weights of a gray model with its first convolution taking ``in_channels`` channels.

    For 3 channels the gray kernel is spread over R, G and B by the luminance weights with which
    a gray model sees a colour image (:data:`unet_core.io.LUMA`); otherwise evenly. The weights
    sum to one, so the widened model starts out computing what the gray model computed on the
    same pixels (exactly on gray images, whose channels are equal) and fine-tuning can then learn
    from colour.
    """
    weight = state[FIRST_CONV_WEIGHT]
    if weight.shape[1] == in_channels:
        return state
    if weight.shape[1] != 1:
        raise TrainError(f"only a 1-channel model can be widened, not a {weight.shape[1]}-channel one")
    share = torch.from_numpy(LUMA) if in_channels == 3 else torch.full((in_channels,), 1.0 / in_channels)
    widened = dict(state)
    widened[FIRST_CONV_WEIGHT] = weight * share.to(weight.dtype).view(1, in_channels, 1, 1)
    return widened


def add_border_class(state: dict[str, torch.Tensor], n_classes: int) -> dict[str, torch.Tensor]:
    """The weights of a two-class model with a third output, the border, for fine-tuning.

    The border starts as a copy of the foreground output, 1 lower in its logit: the widened model
    first finds the objects the two-class model found (all interior), and fine-tuning carves the
    outlines out of them.
    """
    weight, bias = state[HEAD_WEIGHT], state[HEAD_BIAS]
    if weight.shape[0] == n_classes:
        return state
    if weight.shape[0] != 2 or n_classes != 3:
        raise TrainError(f"only a 2-class model can be given a border class, not a {weight.shape[0]}-class one")
    widened = dict(state)
    widened[HEAD_WEIGHT] = torch.cat([weight, weight[1:2]])
    widened[HEAD_BIAS] = torch.cat([bias, bias[1:2] - 1.0])
    return widened


def make_meta(cfg: TrainConfig, data: TrainData, training: dict[str, Any]) -> ModelMeta:
    names = list(cfg.class_names or default_class_names(data.dataset.layout, bool(cfg.border_width)))
    unet = dataclasses.replace(cfg.unet, n_classes=len(names))
    border = cfg.border_class
    return ModelMeta(name=cfg.run_name, unet=unet, class_names=names,
                     foreground_classes=[1] if border is None else [1, border], border_class=border,
                     normalisation=cfg.normalisation, training=training, diameter=cfg.diameter)


def _training_record(cfg: TrainConfig, data: TrainData, step: int, elapsed: float,
                     best: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "data": cfg.data if cfg.data == "synthetic" else str(Path(cfg.data).resolve()),
        "layout": data.dataset.layout,
        "split_rule": data.rule.to_dict(),
        "n_train": len(data.train_indices),
        "n_val": len(data.val_indices),
        "steps": step,
        "seconds": round(elapsed, 1),
        "best": best,
        "config": cfg.to_dict(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    finish: bool = False,
) -> TrainResult:
    """Run (or continue) the training described by ``cfg`` in its run folder ``cfg.out``.

    Args:
        cfg: the run's config.
        resume: continue from ``cfg.out/last.pt`` (replaying exactly; from scratch if the run
            never reached a checkpoint). Without it, a folder that already holds a checkpoint is
            refused rather than overwritten.
        progress: show a progress line on stderr.
        on_step: called with each step's log record (the app, tests).
        finish: with ``resume``, end the run at its last checkpoint: no more steps, and the model
            is exported (even if the run was started with export off). How a stopped run
            becomes a model.

    Raises:
        TrainError: a problem the user can fix (data, folder, options); the message says which.
    """
    out = Path(cfg.out)
    if not (resume and (out / "last.pt").exists()):
        cfg = apply_init(cfg)  # a resumed run's config already holds the init model's architecture
    out.mkdir(parents=True, exist_ok=True)
    for stale in glob.glob(str(out / ".*.tmp")):  # a write killed half-way
        Path(stale).unlink(missing_ok=True)
    last_path, best_path, log_path = out / "last.pt", out / "best.pt", out / LOG_NAME
    ckpt = None
    if last_path.exists():
        if not resume:
            raise TrainError(f"{out} already holds a training run (last.pt); pass --resume to continue it "
                             "or choose another --out")
        ckpt = read_checkpoint(last_path)
    if ckpt is None:  # first of all: a run killed from here on still resumes (it has its settings)
        _write_json(out / "config.json", cfg.to_dict())
    if finish:
        if ckpt is None or not resume:
            raise TrainError(f"{out} has no checkpoint (last.pt) to make a model from; train it first")
        cfg = dataclasses.replace(cfg, steps=int(ckpt["step"]), export=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _resolve_device(cfg)
    bar = TrainProgress(cfg.steps, enabled=progress)

    data = open_training_data(cfg)
    if cfg.border_width and (data.dataset.n_classes > 2 or data.dataset.mask_encoding == "class_indexes"):
        raise TrainError(f"{data.dataset.root}: a border class needs instance masks of one foreground class")
    if cfg.class_names is None:
        cfg = dataclasses.replace(cfg, class_names=default_class_names(data.dataset.layout, bool(cfg.border_width)))
    if ckpt is None:
        _write_json(out / "config.json", cfg.to_dict())
        _write_json(out / "manifest.json", manifest(cfg, data))
        _write_json(out / "versions.json", versions())
        if log_path.exists():
            log_path.unlink()
    else:
        saved = ckpt.get("config", {})
        for key in ("width", "depth", "in_channels", "tile", "seed", "data", "batch"):
            if saved.get(key) != getattr(cfg, key):
                raise TrainError(f"{out}: cannot resume with {key}={getattr(cfg, key)!r}; the run was "
                                 f"started with {saved.get(key)!r}")
        _write_json(out / "config.json", cfg.to_dict())  # steps / val_every may have been extended

    bar.message(f"data {data.dataset.root} ({data.dataset.layout}, {len(data.train_indices)} train / "
                f"{len(data.val_indices)} val, split {data.rule.to_dict()}); preparing weight maps ...")
    t_prep = time.perf_counter()
    pools = [[prepare_image(data.dataset, i, cfg) for i in data.train_indices]]
    probs = [1.0]
    if data.synthetic is not None:
        pools.append([prepare_image(data.synthetic, i, cfg) for i in range(len(data.synthetic))])
        probs = [1.0 - cfg.synth_mix, cfg.synth_mix]
    prep_s = time.perf_counter() - t_prep

    meta = make_meta(cfg, data, {})
    torch.manual_seed(dropout_seed(cfg.seed, 0))  # He initialisation: a function of the seed
    model = UNet.from_config(meta.unet)
    if cfg.init and ckpt is None:
        state, _ = load_init_weights(cfg.init)
        try:
            model.load_state_dict(add_border_class(widen_input(state, cfg.in_channels), cfg.n_classes))
        except RuntimeError as exc:
            raise TrainError(f"{cfg.init}: weights do not fit the network ({exc})") from exc
    model.to(device)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
    start, elapsed_before, best = 0, 0.0, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start, elapsed_before, best = int(ckpt["step"]), float(ckpt["elapsed"]), ckpt.get("best")
        _truncate_log(log_path, start)
    val_metric = PRIMARY_METRIC[data.kind] if cfg.val_metric == "auto" else cfg.val_metric
    val_indices = data.val_indices[: cfg.val_max_images] if cfg.val_max_images else data.val_indices

    log = open(log_path, "a", buffering=1)  # noqa: SIM115 -- closed in the loop's finally

    def write(record: dict[str, Any]) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()

    write({"event": "resume" if ckpt is not None else "start", "step": start, "device": str(device),
           "prepare_s": round(prep_s, 2), "n_train": len(data.train_indices), "n_val": len(val_indices)})
    if start >= cfg.steps:
        bar.message(f"the run already reached step {start} of {cfg.steps}")

    n_workers = cfg.workers if cfg.workers is not None else min(4, max(1, (os.cpu_count() or 2) // 2))
    loader = torch.utils.data.DataLoader(
        StepTiles(pools, probs, cfg),
        sampler=range(start + 1, cfg.steps + 1),
        batch_size=None,
        num_workers=n_workers,
        prefetch_factor=4 if n_workers else None,
        multiprocessing_context="fork" if n_workers else None,
        pin_memory=device.type == "cuda",
    )
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    px_per_step = cfg.batch * cfg.tile * cfg.tile
    losses: list[float] = []
    wait_total = step_total = 0.0
    session_start = time.perf_counter()
    step = start
    model.train()

    def save_last(step: int) -> None:
        elapsed = elapsed_before + time.perf_counter() - session_start
        # The training record (split rule above all) travels in last.pt too, so that a checkpoint
        # evaluated mid-run (`evaluate --model last.pt --split val_groups`) scores the right images.
        meta = make_meta(cfg, data, _training_record(cfg, data, step, elapsed, best))
        atomic_save({
            "model": model.state_dict(), "meta": meta.to_dict(), "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "step": step, "best": best,
            "elapsed": elapsed, "config": cfg.to_dict(),
        }, last_path)

    stop = _StopRequest()
    try:
        it = iter(loader)
        t_end = time.perf_counter()
        while step < cfg.steps and not stop.requested:
            t0 = time.perf_counter()
            batch = next(it)
            t_data = time.perf_counter()
            step = int(batch["step"])
            lr = learning_rate(cfg, step)
            for group in opt.param_groups:
                group["lr"] = lr
            torch.manual_seed(dropout_seed(cfg.seed, step))
            x = batch["x"].to(device, non_blocking=True)
            y = batch["y"].to(device, non_blocking=True)
            w = batch["w"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(x)
            loss = weighted_cross_entropy(logits, y, w)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(opt)
            scaler.update()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainError(f"the loss became {loss_value} at step {step}; lower the learning rate "
                                 f"(now {lr:g}) or use --clip-grad")
            t_step_end = time.perf_counter()
            # A step lasts from the end of the previous one (includes its logging) to now.
            step_s = t_step_end - t_end
            wait = t_data - t0
            wait_total += wait
            step_total += step_s
            t_end = t_step_end
            losses.append(loss_value)
            record: dict[str, Any] = {
                "step": step, "loss": loss_value, "lr": lr, "px_per_s": round(px_per_step / step_s, 1),
                "data_wait": round(wait / step_s, 4), "step_s": round(step_s, 4),
            }
            note = ""
            if cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps) and val_indices:
                report = _validate(model, cfg, data, val_indices, device)
                model.train()
                value = report.means.get(val_metric, math.nan)
                better = math.isfinite(value) and (
                    best is None or (value < best["value"] if val_metric in LOWER_IS_BETTER else value > best["value"])
                )
                if better:
                    best = {"metric": val_metric, "value": value, "step": step, "metrics": report.means}
                    atomic_save({"model": model.state_dict(),
                                 "meta": make_meta(cfg, data, _training_record(
                                     cfg, data, step, elapsed_before + time.perf_counter() - session_start, best)
                                 ).to_dict(), "step": step, "metrics": report.means}, best_path)
                record["val"] = {k: (v if math.isfinite(v) else None) for k, v in report.means.items()}
                record["val_s"] = round(report.seconds, 2)
                record["best"] = bool(better)
                note = f"val {val_metric} {value:.4f}" + (" (best)" if better else "")
                t_end = time.perf_counter()  # validation time is not step time
            record["elapsed"] = round(elapsed_before + time.perf_counter() - session_start, 2)
            write(record)
            if on_step:
                on_step(record)
            bar.update(step, loss_value, step_s, wait / step_s, note)
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps or stop.requested:
                save_last(step)
                t_end = time.perf_counter()
        if step == start and start < cfg.steps and not stop.requested:
            raise TrainError("no training step ran")
    finally:
        stop.restore()
        del loader
        log.close()

    if stop.requested and step < cfg.steps:
        bar.message(f"stopped at step {step}; the checkpoint is saved: resume with --resume")
        with open(log_path, "a") as fh:
            fh.write(json.dumps({"event": "stopped", "step": step}) + "\n")
        return TrainResult(out, step, losses, best, None, None, elapsed_before + time.perf_counter() - session_start,
                           wait_total / step_total if step_total else 0.0)

    elapsed = elapsed_before + time.perf_counter() - session_start
    onnx_path = card_path = None
    if cfg.export:
        bar.message("exporting the " + ("best" if best_path.exists() else "last") + " checkpoint to ONNX ...")
        onnx_path, card_path = export_run(cfg, data, step, elapsed, best)
    with open(log_path, "a") as fh:
        fh.write(json.dumps({"event": "done", "step": step, "elapsed": round(elapsed, 2), "best": best,
                             "onnx": str(onnx_path) if onnx_path else None,
                             "data_wait": round(wait_total / step_total, 4) if step_total else None}) + "\n")
    return TrainResult(out, step, losses, best, onnx_path, card_path, elapsed,
                       wait_total / step_total if step_total else 0.0)


class _StopRequest:
    """SIGTERM (the app's Stop, ``kill``) ends the run after the current step, checkpoint saved.

    Without it a stop would lose every step since the last periodic checkpoint. Installed only in
    the main thread (Python delivers signals there); SIGKILL still relies on the atomic checkpoints.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _validate(model: UNet, cfg: TrainConfig, data: TrainData, indices: list[int], device: torch.device) -> EvalReport:
    """Validation with the real inference path: TorchPredictor + overlap-tile segment."""
    from .runtime import TorchPredictor

    meta = make_meta(cfg, data, {})
    predictor = TorchPredictor(model, meta, device.type)
    return evaluate(predictor, data.dataset, indices, EvalOptions(tile=cfg.val_tile or cfg.tile, kind=data.kind))


# --------------------------------------------------------------------------- export and model card


def export_run(cfg: TrainConfig, data: TrainData, step: int, elapsed: float,
               best: dict[str, Any] | None) -> tuple[Path, Path]:
    """Export the best checkpoint (else the last) to ``model.onnx`` and write the card ``model.md``."""
    from .export import to_onnx

    out = Path(cfg.out)
    source = out / "best.pt" if (out / "best.pt").exists() else out / "last.pt"
    ckpt = read_checkpoint(source)
    training = _training_record(cfg, data, step, elapsed, best)
    training["exported_from"] = source.name
    training["exported_step"] = int(ckpt.get("step", step))
    meta = make_meta(cfg, data, training)
    model = UNet.from_config(meta.unet)
    model.load_state_dict(ckpt["model"])
    model.eval()
    onnx_path = to_onnx(model, meta, out / "model.onnx")
    card = out / "model.md"
    card.write_text(model_card(cfg, data, meta, step, elapsed, best, source.name))
    return onnx_path, card


def _object_rule(meta: ModelMeta) -> str:
    if meta.border_class is None:
        return "objects = connected components of class 1"
    return f"objects = connected components of class 1, grown over the border class {meta.border_class}"


def model_card(cfg: TrainConfig, data: TrainData, meta: ModelMeta, step: int, elapsed: float,
               best: dict[str, Any] | None, source: str) -> str:
    """The model card: data, split, settings, steps, time, hardware, metrics, date."""
    v = versions()
    hw = v["gpu"] or f"{v['cpu']} ({v['torch_threads']} torch threads)"
    metrics = (best or {}).get("metrics") or {}
    lines = [
        f"# {meta.name}",
        "",
        (f"U-Net (Ronneberger et al. 2015), width {cfg.width}, depth {cfg.depth}, "
         f"{sum(p.numel() for p in UNet.from_config(meta.unet).parameters()):,} parameters, "
         f"classes {meta.class_names} ({_object_rule(meta)})."),
        "",
        "## Data",
        "",
        (f"- data set: `{meta.training['data']}` ({data.dataset.layout}, {len(data.dataset)} images, masks "
         f"{data.dataset.mask_encoding})"),
        f"- split: {data.rule.to_dict()} -> {len(data.train_indices)} train / {len(data.val_indices)} val images",
    ]
    if data.rule.groups:
        lines.append(f"- held out as whole acquisition groups (never trained on): {', '.join(data.rule.groups)}")
    if cfg.diameter:
        lines.append(f"- every image rescaled so that its median object diameter is {cfg.diameter:g} px "
                     "(the model's canonical diameter; inference rescales the same way)")
    if data.synthetic is not None:
        lines.append(f"- mixed in: {cfg.synth_n} synthetic images ({cfg.synth_mix:.0%} of the tiles)")
    lines += [
        "",
        "## Training",
        "",
        (f"- steps: {step} (model from `{source}`"
         + (f", step {best['step']}" if best else "") + f"), time {_duration(elapsed)}"),
        f"- tile: {cfg.geometry.input_size(cfg.tile)} -> {cfg.tile}, batch {cfg.batch}",
        f"- loss: weighted softmax cross-entropy, w0 {cfg.w0}, sigma {cfg.sigma}, class weights {cfg.class_weights}",
        (f"- optimiser: {cfg.optimizer}, lr {cfg.lr:g} ({cfg.schedule}"
         + (f", {cfg.warmup_steps} warm-up steps" if cfg.warmup_steps else "") + ")"
         + (f", momentum {cfg.momentum}" if cfg.optimizer == "sgd" else "")),
        (f"- augmentation: {'elastic + rotation/flip/shift + gray values' if cfg.augment.enabled else 'none'}"
         + (f", polarity inversion p={cfg.invert_prob}" if cfg.invert_prob else "")),
        f"- normalisation: percentiles {cfg.normalisation.low_percentile} / {cfg.normalisation.high_percentile}",
        f"- seed {cfg.seed}" + (f"; fine-tuned from `{cfg.init}`" if cfg.init else ""),
        f"- hardware: {hw}; torch {v['torch']}",
        f"- date: {meta.training['date']}",
        "",
        "## Validation metrics",
        "",
        ("At the argmax of the class probabilities, overlap-tile inference "
         f"(tile {cfg.val_tile or cfg.tile}), on the {len(data.val_indices)} validation images"
         + (f" (first {cfg.val_max_images})" if cfg.val_max_images else "") + "."),
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {'n/a' if v is None or not math.isfinite(v) else f'{v:.4f}'} |"
                  for k, v in metrics.items()]
    else:
        lines.append("(no validation ran)")
    lines += ["", (f"Reproduce: `python -m unet_core train --data {cfg.data} --out {cfg.out} ...` with the "
                   "settings in `config.json`; the files and split are in `manifest.json`."), ""]
    return "\n".join(lines)
