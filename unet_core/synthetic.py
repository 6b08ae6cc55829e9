"""Synthetic microscopy data with exact instance labels, for demos, tests and quick training.

Two looks:

``fluorescence`` (default)
    bright nuclei on a dark, unevenly lit background; each nucleus has its own brightness and
    texture, a dimmer rim (so touching nuclei show a faint seam, as stained nuclei do), and
    overlapping nuclei add up their light; then blur, shot noise and read noise.
``phase``
    phase-contrast-like: mid-gray background, cells darker than it, with a bright halo
    around each cell and along the seams between touching cells.

Cells are star-shaped blobs (ellipse times a few low radial harmonics) of varied size,
elongation and orientation. A ``touching_fraction`` of them is placed against an earlier
cell so that the two overlap along the line between their centres; painting in order lets
the later (upper) cell win, so every such pair shares a boundary, the case the U-Net
paper's border weights are made for. After painting, each cell keeps only its largest
4-connected piece and cells below ``min_area`` pixels are dropped, so the labels are exact:
ids 1..n, one connected region each, in painting order.

Everything is drawn from one ``numpy.random.Generator`` seeded by the caller: the same
config and seed give the same arrays bit for bit.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .datasets import Dataset, Sample, default_split_rule
from .io import write_png

MODES = ("fluorescence", "phase")


@dataclass(frozen=True)
class SynthConfig:
    """How to draw one synthetic image.

    Args:
        height, width: image size in pixels.
        n_cells: (min, max) number of cells drawn, inclusive; small or covered ones may vanish.
        radius: (min, max) mean cell radius in pixels.
        mode: ``"fluorescence"`` or ``"phase"``.
        noise: standard deviation of the Gaussian read noise, as a fraction of full scale.
        blur: sigma in pixels of the Gaussian optical blur (0 = none).
        touching_fraction: fraction of cells placed against an earlier cell.
        overlap: how far at most a placed-against cell pushes into its neighbour, as a fraction
            of the sum of their radii along the joining line (> 0 so that they really touch).
        elongation: (min, max) ratio of the long to the short axis.
        irregularity: amplitude of the radial harmonics that make shapes less elliptic.
        brightness: (min, max) cell brightness (fluorescence) or darkness (phase), 0..1.
        texture: strength of the intensity texture inside cells.
        photons: photons at full brightness for the shot noise; 0 switches shot noise off.
        min_area: cells smaller than this many pixels after occlusion are removed.
        bit_depth: 8 (uint8 image) or 16 (uint16 image).
    """

    height: int = 512
    width: int = 512
    n_cells: tuple[int, int] = (20, 60)
    radius: tuple[float, float] = (8.0, 20.0)
    mode: str = "fluorescence"
    noise: float = 0.02
    blur: float = 1.0
    touching_fraction: float = 0.5
    overlap: float = 0.3
    elongation: tuple[float, float] = (1.0, 1.6)
    irregularity: float = 0.08
    brightness: tuple[float, float] = (0.4, 1.0)
    texture: float = 0.25
    photons: float = 300.0
    min_area: int = 15
    bit_depth: int = 8

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, not {self.bit_depth}")
        if self.height < 8 or self.width < 8:
            raise ValueError(f"image must be at least 8 x 8, not {self.height} x {self.width}")
        for name in ("n_cells", "radius", "elongation", "brightness"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range (min, max) with 0 <= min <= max, not {(lo, hi)}")
        if self.radius[0] < 1 or self.elongation[0] < 1:
            raise ValueError("radius must be >= 1 pixel and elongation >= 1")
        if not 0 <= self.touching_fraction <= 1 or not 0 < self.overlap < 1:
            raise ValueError("touching_fraction must lie in [0, 1] and overlap in (0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SynthConfig:
        known = {f.name for f in fields(cls)}
        # JSON turns tuples into lists; the config is frozen and compared, so turn them back.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class _Cell:
    """A star-shaped blob: centre, mean radius, ellipse and radial harmonics."""

    cy: float
    cx: float
    radius: float
    elongation: float
    angle: float
    amplitudes: np.ndarray  # harmonic k = 2, 3, 4 ...
    phases: np.ndarray

    def boundary(self, phi: np.ndarray) -> np.ndarray:
        """Distance from the centre to the boundary in direction ``phi`` (radians)."""
        # Semi-axes a >= b with a * b = radius**2: elongation changes shape, not area.
        a = self.radius * np.sqrt(self.elongation)
        b = self.radius / np.sqrt(self.elongation)
        psi = phi - self.angle
        r = a * b / np.sqrt((b * np.cos(psi)) ** 2 + (a * np.sin(psi)) ** 2)
        k = np.arange(2, 2 + self.amplitudes.size)
        angles = k[:, None] * np.ravel(phi)[None] + self.phases[:, None]
        wobble = (self.amplitudes[:, None] * np.cos(angles)).sum(0).reshape(np.shape(phi))
        return r * (1.0 + wobble)

    def reach(self) -> float:
        """An upper bound of :meth:`boundary` over all directions."""
        return self.radius * np.sqrt(self.elongation) * (1.0 + float(np.abs(self.amplitudes).sum()))


def generate(cfg: SynthConfig | None = None, seed: int | Sequence[int] = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its instance labels.

    Args:
        cfg: the config (default :class:`SynthConfig`).
        seed: anything ``numpy.random.default_rng`` takes; :func:`write_dataset` uses
            ``(seed, i)`` for sample ``i`` so that data sets of different seeds share nothing.

    Returns:
        ``(image, instances)``: image uint8 or uint16 ``(H, W)``; instances int32 ``(H, W)``,
        0 = background, cells 1..n.
    """
    cfg = cfg or SynthConfig()
    rng = np.random.default_rng(seed)
    cells = _place_cells(cfg, rng)
    labels, coverage = _paint(cells, (cfg.height, cfg.width))
    labels = _clean_labels(labels, cfg.min_area)
    image = _render(labels, coverage, cfg, rng)
    return image, labels


def _place_cells(cfg: SynthConfig, rng: np.random.Generator) -> list[_Cell]:
    n = int(rng.integers(cfg.n_cells[0], cfg.n_cells[1] + 1))
    cells: list[_Cell] = []
    for _ in range(n):
        shape = {
            "radius": rng.uniform(*cfg.radius),
            "elongation": rng.uniform(*cfg.elongation),
            "angle": rng.uniform(0, np.pi),
            # Higher harmonics get smaller amplitudes: lumpy, not spiky.
            "amplitudes": cfg.irregularity * rng.uniform(-1, 1, 3) / np.arange(1, 4),
            "phases": rng.uniform(0, 2 * np.pi, 3),
        }
        if cells and rng.random() < cfg.touching_fraction:
            cy, cx = _against(cells[int(rng.integers(len(cells)))], shape, cfg.overlap, rng)
        else:
            cy, cx = rng.uniform(0, cfg.height), rng.uniform(0, cfg.width)
        cells.append(_Cell(cy=cy, cx=cx, **shape))
    return cells


def _against(
    neighbour: _Cell, shape: dict[str, Any], overlap: float, rng: np.random.Generator
) -> tuple[float, float]:
    """A centre for a new cell whose boundary crosses ``neighbour``'s on the joining line."""
    theta = rng.uniform(0, 2 * np.pi)
    new = _Cell(0.0, 0.0, **shape)
    reach = float(neighbour.boundary(np.array(theta)) + new.boundary(np.array(theta + np.pi)))
    # Both blobs are star-shaped, so a centre distance below the sum of their boundary
    # distances along the joining line makes them overlap there: after painting they touch.
    distance = reach * (1.0 - overlap * rng.uniform(0.1, 1.0))
    return neighbour.cy + distance * np.sin(theta), neighbour.cx + distance * np.cos(theta)


def _paint(cells: list[_Cell], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Labels (later cells on top) and how many cells cover each pixel."""
    labels = np.zeros(shape, np.int32)
    coverage = np.zeros(shape, np.uint8)
    for cell_id, cell in enumerate(cells, start=1):
        reach = cell.reach()
        y0, y1 = max(0, int(cell.cy - reach)), min(shape[0], int(np.ceil(cell.cy + reach)) + 1)
        x0, x1 = max(0, int(cell.cx - reach)), min(shape[1], int(np.ceil(cell.cx + reach)) + 1)
        if y0 >= y1 or x0 >= x1:
            continue  # centred outside the image, out of reach
        dy = np.arange(y0, y1)[:, None] - cell.cy
        dx = np.arange(x0, x1)[None, :] - cell.cx
        inside = np.hypot(dy, dx) <= cell.boundary(np.arctan2(dy, dx))
        labels[y0:y1, x0:x1][inside] = cell_id
        coverage[y0:y1, x0:x1] += inside.astype(np.uint8)
    return labels, coverage


def _clean_labels(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Keep each cell's largest 4-connected piece, drop small cells, renumber 1..n in order."""
    for cell_id, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mine = labels[box] == cell_id
        pieces, n = ndimage.label(mine)
        if n > 1:  # a later cell cut this one in two: the smaller pieces become background
            largest = 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
            labels[box][mine & (pieces != largest)] = 0
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    new_ids = np.zeros(areas.size, np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
    return new_ids[labels]


def _render(
    labels: np.ndarray, coverage: np.ndarray, cfg: SynthConfig, rng: np.random.Generator
) -> np.ndarray:
    """The microscope image of the labels in ``cfg.mode``, quantised to ``cfg.bit_depth``."""
    n = int(labels.max())
    foreground = labels > 0
    brightness = np.concatenate([[0.0], rng.uniform(*cfg.brightness, n)]).astype(np.float32)
    texture_gain = np.concatenate([[0.0], rng.uniform(0.3, 1.0, n) * cfg.texture]).astype(np.float32)
    texture = _smooth_noise(labels.shape, sigma=1.5, rng=rng)
    edge = ndimage.distance_transform_edt(foreground & ~_seams(labels)).astype(np.float32)
    cell_signal = brightness[labels] * (1.0 + texture_gain[labels] * texture)
    # Overlapping cells: light from both (fluorescence), or both dim the light (phase).
    cell_signal *= 1.0 + 0.3 * np.maximum(coverage.astype(np.float32) - 1.0, 0.0)
    illumination = _illumination(labels.shape, rng)
    if cfg.mode == "fluorescence":
        rim = 1.0 - 0.45 * np.exp(-edge / 2.5)
        image = illumination * rng.uniform(0.04, 0.1) + np.where(foreground, cell_signal * rim, 0.0)
    else:
        outside = ndimage.distance_transform_edt(~foreground).astype(np.float32)
        halo = np.where(foreground, 0.5 * np.exp(-edge / 1.0), np.exp(-outside / 2.0))
        image = illumination * (0.5 - 0.25 * np.where(foreground, cell_signal, 0.0) + 0.25 * halo)
    image = _optics_and_noise(image.astype(np.float32), cfg, rng)
    dtype = np.uint8 if cfg.bit_depth == 8 else np.uint16
    return np.round(np.clip(image, 0.0, 1.0) * np.iinfo(dtype).max).astype(dtype)


def _seams(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label (cell edges and cell-cell boundaries)."""
    seams = np.zeros(labels.shape, bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    seams[1:, :] |= vertical
    seams[:-1, :] |= vertical
    seams[:, 1:] |= horizontal
    seams[:, :-1] |= horizontal
    return seams


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance noise correlated over ~``sigma`` pixels (cell texture)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _illumination(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A linear ramp around 1 (+-15 %): uneven illumination without a costly large-sigma blur."""
    gy, gx = rng.uniform(-0.15, 0.15, 2)
    y = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :]
    return (1.0 + gy * y + gx * x).astype(np.float32)


def _optics_and_noise(image: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    if cfg.blur > 0:
        image = ndimage.gaussian_filter(image, cfg.blur)
    if cfg.photons > 0:
        photons = rng.poisson(np.clip(image, 0.0, None) * cfg.photons).astype(np.float32)
        image = photons / np.float32(cfg.photons)
    if cfg.noise > 0:
        image = image + rng.normal(0.0, cfg.noise, image.shape).astype(np.float32)
    return image


# --------------------------------------------------------------------------- data sets


def sample_names(n: int) -> list[str]:
    """Names of ``n`` synthetic samples: zero-padded indices, at least 3 digits."""
    width = max(3, len(str(max(n - 1, 0))))
    return [f"{i:0{width}d}" for i in range(n)]


def write_dataset(out_dir: str | Path, n: int, cfg: SynthConfig | None = None, seed: int = 0) -> Path:
    """Write ``n`` samples in the generic layout, openable with :func:`open_dataset`.

    ``images/NNN.png`` (uint8 or uint16 gray), ``masks/NNN.png`` (uint16 instance ids) and a
    README.md recording the config and seed. Sample ``i`` is ``generate(cfg, (seed, i))``, the
    same arrays :func:`synthetic_dataset` gives.

    Returns:
        ``out_dir`` as a Path.
    """
    cfg = cfg or SynthConfig()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sample_names(n)):
        image, labels = generate(cfg, (seed, i))
        if labels.max() > np.iinfo(np.uint16).max:
            raise ValueError(f"sample {i} has {labels.max()} cells, more than a uint16 mask holds")
        write_png(out / "images" / f"{name}.png", image)
        write_png(out / "masks" / f"{name}.png", labels.astype(np.uint16))
    (out / "README.md").write_text(_readme(n, cfg, seed), encoding="utf-8")
    return out


def _readme(n: int, cfg: SynthConfig, seed: int) -> str:
    return f"""# Synthetic {cfg.mode} data set ({n} samples)

Made by `unet_core.synthetic.write_dataset(out_dir, n={n}, cfg=SynthConfig(**config), seed={seed})`;
sample `i` is `generate(cfg, seed=({seed}, i))`, so the same call writes the same files.

- `images/NNN.png`: {cfg.height} x {cfg.width} gray, {cfg.bit_depth}-bit ({cfg.mode}-like).
- `masks/NNN.png`: 16-bit instance labels, 0 = background, cells 1..n; every pixel belongs to
  one cell (where cells overlap, the later/upper one), each cell is one 4-connected region,
  and many cells touch a neighbour.

## config

```json
{json.dumps(cfg.to_dict(), indent=2)}
```
"""


class SyntheticSource:
    """Generates sample ``i`` (named by its index) on demand; keeps the last few in memory.

    ``load_image(i)`` and ``load_instances(i)`` come from one :func:`generate` call.
    """

    def __init__(self, cfg: SynthConfig, seed: int, cache_size: int = 8) -> None:
        self.cfg = cfg
        self.seed = seed
        self.cache_size = cache_size
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    # Copies, so that a caller's in-place augmentation cannot change the cached sample.
    def image(self, sample: Sample) -> np.ndarray:
        return self._sample(int(sample.name))[0][..., None].copy()

    def mask(self, sample: Sample) -> np.ndarray:
        return self._sample(int(sample.name))[1].copy()

    def _sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._cache:
            self._cache[i] = generate(self.cfg, (self.seed, i))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(i)
        return self._cache[i]


def synthetic_dataset(n: int, cfg: SynthConfig | None = None, seed: int = 0) -> Dataset:
    """An in-memory :class:`Dataset` (layout ``"synthetic"``) of ``n`` generated samples.

    Equal, sample for sample, to ``open_dataset(write_dataset(dir, n, cfg, seed))`` except for
    ``root`` and ``layout``; nothing touches the disk. The sample paths are virtual.
    """
    cfg = cfg or SynthConfig()
    root = Path(f"synthetic-{cfg.mode}-seed{seed}")
    samples = [
        Sample(name, root / "images" / f"{name}.png", root / "masks" / f"{name}.png", None)
        for name in sample_names(n)
    ]
    return Dataset(
        root=root,
        layout="synthetic",
        samples=samples,
        mask_encoding="instance_ids",
        split_rule=default_split_rule("synthetic"),
        source=SyntheticSource(cfg, seed),
    )
