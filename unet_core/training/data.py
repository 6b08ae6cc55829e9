"""Training data: each image prepared once (normalised, rescaled to the canonical diameter, its
class map and the paper's weight map), and each step's tiles cut and augmented from them as a pure
function of ``(seed, step)``, so that a resumed run replays its steps exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..augment import add_cytoplasm, augment_tile
from ..config import TrainConfig, TrainError
from ..datasets import Dataset, DatasetError, SplitRule, open_dataset
from ..errors import UserError
from ..evaluate import metric_kind
from ..io import fit_stretch, to_channels
from ..scale import clamp_factor, median_diameter, rescale_image, rescale_labels, scaled_shape
from ..weights import outline_class, separate_touching, weight_map


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


#: Training refuses to start when fewer than this fraction of its images can be used: so many bad
#: files mean a wrong folder or a wrong setting, not a few damaged images.
MIN_USABLE_FRACTION = 0.5


def prepare_pool(dataset: Dataset, indices: list[int], cfg: TrainConfig) -> tuple[list[TrainImage], list[str]]:
    """:func:`prepare_image` of each index, and the problems of those that cannot be used (a
    corrupt or constant image, a mask that does not decode): each is left out, named.

    Raises:
        TrainError: fewer than :data:`MIN_USABLE_FRACTION` of the images are usable.
    """
    pool, problems = [], []
    for i in indices:
        name = dataset.samples[i].name
        try:
            pool.append(prepare_image(dataset, i, cfg))
        except (UserError, OSError) as exc:  # this image only; a bug (any other error) stops the run
            text = str(exc)
            problems.append(text if text.startswith(name) else f"{name}: {text}")
    if indices and len(pool) < MIN_USABLE_FRACTION * len(indices):
        raise TrainError(f"{dataset.root}: only {len(pool)} of {len(indices)} training images can be used; "
                         f"the first problems: {'; '.join(problems[:3])}")
    return pool, problems


def category_pools(pool: list[TrainImage], categories: list[str | None], power: float,
                   share: float = 1.0) -> tuple[list[list[TrainImage]], list[float]]:
    """``pool`` split by image category, each drawn with probability proportional to its number of
    images to ``power`` (the pools' probabilities sum to ``share``).

    ``power`` 1 keeps every image equally likely (one pool, as without categories); 0 draws every
    category equally often. Images without a category form a category of their own.

    Args:
        pool: the prepared training images; ``categories``: the category of each, same order.
        power: :attr:`TrainConfig.category_power`, in [0, 1].
        share: the probability of drawing from these images at all (the rest goes to synthetic images).
    """
    if len(categories) != len(pool):
        raise ValueError(f"{len(categories)} categories for {len(pool)} images")
    groups: dict[str | None, list[TrainImage]] = {}
    for item, category in zip(pool, categories, strict=True):
        groups.setdefault(category, []).append(item)
    if power == 1.0 or len(groups) < 2:
        return [pool], [share]
    mass = {c: len(items) ** power for c, items in groups.items()}
    total = sum(mass.values())
    return list(groups.values()), [share * mass[c] / total for c in groups]


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
    source = item.image
    # Drawn before the tile so that cell bodies go on the tiles that will look like transmitted
    # light (dark nuclei on a light background), as they do in real bright-field and stained images;
    # fluorescence of a nuclear stain shows the nuclei alone.
    invert = cfg.invert_prob > 0 and rng.random() < cfg.invert_prob
    if invert and cfg.cytoplasm_prob > 0 and rng.random() < cfg.cytoplasm_prob:
        source = add_cytoplasm(source, item.classes > 0, float(cfg.diameter or 0), rng,
                               _reach(center, size, item.classes.shape))
    image, classes, weights = augment_tile(source, item.classes, item.weights, (size, size), center,
                                           cfg.augment, rng, output_shape=(out, out), mode="mirror",
                                           zero_outside=True)
    assert weights is not None  # a TrainImage always has its weight map
    if invert:
        image = 1.0 - image
    return (np.ascontiguousarray(image.transpose(2, 0, 1), np.float32), classes,
            weights.astype(np.float32, copy=False))


def _reach(center: tuple[float, float], size: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The part of an image round ``center`` that a synthetic cell body is painted on: 1.3 tile
    edges each way, room for a tile of input edge ``size`` rotated 45 degrees at a zoom of up to
    1.6 with its elastic displacements. Painting only there keeps the cost independent of the
    image's size; at the largest zooms (1.7) a rotated tile's corners can reach past it, where the
    cell bodies are then missing."""
    half = int(size * 1.3)
    (cy, cx), (h, w) = center, shape
    return slice(max(int(cy) - half, 0), min(int(cy) + half, h)), slice(max(int(cx) - half, 0), min(int(cx) + half, w))


def step_rng(seed: int, step: int, b: int = 0) -> np.random.Generator:
    """The generator of tile ``b`` of ``step``: a pure function of (seed, step, b)."""
    return np.random.default_rng([seed, step, b])


def dropout_seed(seed: int, step: int) -> int:
    """Seed of the torch generator (dropout masks) for ``step``."""
    return int(np.random.SeedSequence([seed, step, 0xD50]).generate_state(1, np.uint64)[0] >> 1)


class StepTiles(torch.utils.data.Dataset):
    """Map-style dataset: item ``step`` is that step's batch, a pure function of (seed, step).

    In a run of ``world`` processes (:mod:`.distributed`), the share of process ``rank``: tiles
    ``rank, rank + world, ...`` of the step's ``cfg.batch`` (tile ``b`` is the same whatever the
    number of processes).
    """

    def __init__(self, pools: list[list[TrainImage]], pool_probs: list[float], cfg: TrainConfig, rank: int = 0,
                 world: int = 1) -> None:
        self.pools = pools
        self.pool_probs = pool_probs
        self.cfg = cfg
        self.tiles = range(rank, cfg.batch, world)

    def __len__(self) -> int:
        return self.cfg.steps + 1

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        xs, ys, ws = [], [], []
        for b in self.tiles:
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


def synth_config(cfg: TrainConfig):
    from ..synthetic import SynthConfig

    try:
        return SynthConfig.from_dict(cfg.synth)
    except (TypeError, ValueError) as exc:
        raise TrainError(f"invalid synthetic settings {cfg.synth}: {exc}") from exc


def open_training_data(cfg: TrainConfig) -> TrainData:
    """Open the data set of ``cfg`` and split it (the config's rule, else the data set's own)."""
    from ..synthetic import synthetic_dataset

    if cfg.data == "synthetic":
        dataset = synthetic_dataset(cfg.synth_n, synth_config(cfg), cfg.synth_seed)
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
    except (UserError, ValueError) as exc:  # a split that does not fit these images
        raise TrainError(f"{cfg.data}: {exc}") from exc
    if not train_idx:
        raise TrainError(f"{cfg.data}: the split {rule.to_dict()} leaves no training images")
    synthetic = None
    if cfg.synth_mix > 0 and cfg.data != "synthetic":
        synthetic = synthetic_dataset(cfg.synth_n, synth_config(cfg), cfg.synth_seed)
    return TrainData(dataset, rule, train_idx, val_idx, metric_kind(dataset), synthetic)


def default_class_names(layout: str, border: bool = False) -> list[str]:
    """Class names of a new run: the data set's two classes, and ``"border"`` with an outline class."""
    names = ["membrane", "cell"] if layout == "isbi2012" else ["background", "foreground"]
    return names + ["border"] * border
