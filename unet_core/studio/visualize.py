"""Pictures of images and results for people: display contrast, instance overlays, probability maps.

Pure numpy (plus scikit-image for outlines); every function returns ``uint8`` RGB ``(H, W, 3)``
ready for ``st.image`` or a PNG. Nothing here changes what is measured: it only draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from skimage.segmentation import find_boundaries

# Display stretch for images that are not 8-bit: what Fiji's "Auto" contrast roughly does, so a
# dim 12-bit camera image in a 16-bit file is visible rather than black.
DISPLAY_PERCENTILES = (0.5, 99.8)

# Golden-ratio hue steps: consecutive ids (neighbours, since ids are given in scan order) get
# clearly different hues, and the colour of an id never depends on how many objects there are.
_GOLDEN = 0.618033988749895

# Viridis at 9 evenly spaced points: perceptually even, readable by colour-blind people, dark at 0.
_VIRIDIS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
], dtype=np.float32)


def stretch_limits(pixels: np.ndarray, percentiles: tuple[float, float] = DISPLAY_PERCENTILES,
                   keep_8bit: bool = True) -> tuple[float, float]:
    """Display range ``(low, high)`` of an image or a whole stack (so slices look alike).

    Args:
        pixels: the image or stack, any dtype (NaN ignored).
        percentiles: the stretch between these percentiles (default :data:`DISPLAY_PERCENTILES`),
            falling back to min..max for sparse images.
        keep_8bit: 8-bit images keep their own range (0..255), as in every other viewer (default);
            False stretches them too (Fiji's "Auto": dim 8-bit nuclei become visible).
    """
    pixels = np.asarray(pixels)
    if keep_8bit and pixels.dtype == np.uint8:
        return 0.0, 255.0
    finite = pixels[np.isfinite(pixels)] if pixels.dtype.kind == "f" else pixels.ravel()
    if finite.size == 0:
        return 0.0, 1.0
    # A strided sample keeps this fast for large stacks; the percentiles barely move.
    sample = finite[:: max(1, finite.size // 2_000_000)].astype(np.float64)
    low, high = np.percentile(sample, percentiles)
    if high <= low:
        low, high = float(sample.min()), float(sample.max())
    if high <= low:  # a constant image: any range works, it is drawn black
        high = low + 1.0
    return float(low), float(high)


def display_image(pixels: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    """A slice ``(H, W)`` or ``(H, W, C)`` of any dtype as ``uint8`` RGB for the screen.

    Gray (and gray+alpha) become gray RGB, alpha is dropped, extra channels beyond three are
    ignored. ``limits`` (from :func:`stretch_limits` of the whole stack) keeps the contrast
    the same while scrolling through slices; by default the slice's own limits are used.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[-1]
    rgb = pixels[..., :1].repeat(3, axis=-1) if channels < 3 else pixels[..., :3]
    low, high = limits if limits is not None else stretch_limits(rgb)
    if rgb.dtype == np.uint8 and (low, high) == (0.0, 255.0):
        return np.ascontiguousarray(rgb)
    scaled = (np.nan_to_num(rgb.astype(np.float32), nan=low) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def label_colors(labels: np.ndarray) -> np.ndarray:
    """``uint8`` RGB picture of an id image: a distinct bright colour per id, black background."""
    labels = np.asarray(labels)
    n = int(labels.max()) if labels.size else 0
    hue = (np.arange(n + 1) * _GOLDEN) % 1.0
    palette = _hsv_to_rgb(hue, saturation=0.75, value=1.0)
    palette[0] = 0
    return palette[labels]


def overlay(display_rgb: np.ndarray, instances: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Objects drawn over an image: filled with their colour at opacity ``alpha``, outlined fully.

    The outline stays at full strength so that ``alpha = 0`` still shows where every object is
    while leaving the pixels inside untouched.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], not {alpha}")
    colors = label_colors(instances).astype(np.float32)
    out = np.asarray(display_rgb, dtype=np.float32).copy()
    inside = instances > 0
    out[inside] = (1.0 - alpha) * out[inside] + alpha * colors[inside]
    edges = find_boundaries(instances, mode="inner")
    out[edges] = colors[edges]
    return np.clip(out, 0, 255).astype(np.uint8)


def probability_image(probs_k: np.ndarray) -> np.ndarray:
    """A probability map ``(H, W)`` in [0, 1] as ``uint8`` RGB (viridis: dark = 0, yellow = 1)."""
    p = np.clip(np.nan_to_num(np.asarray(probs_k, dtype=np.float32)), 0.0, 1.0)
    position = p * (len(_VIRIDIS) - 1)
    below = np.minimum(position.astype(np.int64), len(_VIRIDIS) - 2)
    frac = (position - below)[..., None]
    rgb = _VIRIDIS[below] * (1.0 - frac) + _VIRIDIS[below + 1] * frac
    return np.round(rgb).astype(np.uint8)


def _hsv_to_rgb(hue: np.ndarray, saturation: float, value: float) -> np.ndarray:
    """``(N,)`` hues in [0, 1) at one saturation and value -> ``(N, 3)`` uint8 RGB."""
    h6 = hue * 6.0
    sector = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p = value * (1 - saturation)
    q = value * (1 - saturation * f)
    t = value * (1 - saturation * (1 - f))
    v = np.full_like(hue, value)
    p = np.full_like(hue, p)
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ])
    rgb = table[sector, np.arange(hue.size)]
    return np.round(rgb * 255).astype(np.uint8)


def channel_thumbnails(pixels: np.ndarray, max_side: int = 160) -> list[np.ndarray]:
    """One small gray picture per channel of a ``(H, W, C)`` slice, to tell the channels apart.

    Each channel gets its own contrast (percentiles, as Fiji's "Auto"), so a dim nuclear stain
    next to a bright membrane channel is still recognisable.
    """
    small = fit_for_screen(np.asarray(pixels), max_side)
    return [display_image(small[..., c].astype(np.float32)) for c in range(small.shape[-1])]


def screen_step(shape: tuple[int, ...], max_side: int = 2048) -> int:
    """The subsampling step of :func:`fit_for_screen` for an image of ``shape`` (1 = none)."""
    return max(1, -(-max(shape[:2]) // max_side))


def fit_for_screen(rgb: np.ndarray, max_side: int = 2048) -> np.ndarray:
    """Every n-th pixel of ``rgb`` so that neither side exceeds ``max_side``.

    Plain subsampling rather than smoothing keeps object colours and outlines crisp; the browser
    then has a few megapixels to draw instead of a whole-slide image.
    """
    step = screen_step(rgb.shape, max_side)
    return rgb if step == 1 else rgb[::step, ::step]


def heat_overlay(display_rgb: np.ndarray, values: np.ndarray, vmax: float | None = None,
                 alpha: float = 0.85) -> np.ndarray:
    """A map of non-negative ``values`` (a weight map) over an image, in viridis.

    Each pixel is blended towards the colour of its value with opacity ``alpha * value / vmax``:
    where values are low the image shows through, the highest values are drawn almost solid
    (yellow). ``vmax`` defaults to the largest value.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], not {alpha}")
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0)
    top = float(v.max()) if vmax is None and v.size else float(vmax or 0.0)
    level = np.clip(v / top, 0.0, 1.0) if top > 0 else np.zeros_like(v)
    colors = probability_image(level).astype(np.float32)
    weight = (alpha * level)[..., None]
    out = (1.0 - weight) * np.asarray(display_rgb, dtype=np.float32) + weight * colors
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


#: Colours of :func:`compare_overlay`: missed (hand-drawn only), extra (model only), outlines.
MISSED_RGB = (0, 200, 70)
EXTRA_RGB = (220, 40, 220)
OUTLINE_RGB = (255, 215, 0)


def compare_overlay(display_rgb: np.ndarray, predicted: np.ndarray, truth: np.ndarray,
                    alpha: float = 0.55) -> np.ndarray:
    """Where a prediction and the ground truth differ, over the image.

    Object pixels of ``truth`` that the prediction misses are tinted green, predicted object pixels
    absent from ``truth`` magenta (opacity ``alpha``); pixels where both agree are left as they are.
    The outlines of the predicted objects are drawn in yellow, so merged or split objects show even
    where the pixels agree. ``predicted`` and ``truth`` are instance (or class) images, 0 = background.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], not {alpha}")
    pred_fg, true_fg = np.asarray(predicted) > 0, np.asarray(truth) > 0
    out = np.asarray(display_rgb, dtype=np.float32).copy()
    for mask, color in ((true_fg & ~pred_fg, MISSED_RGB), (pred_fg & ~true_fg, EXTRA_RGB)):
        out[mask] = (1.0 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    edges = find_boundaries(np.asarray(predicted), mode="inner")
    out[edges] = OUTLINE_RGB
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def smooth(values: Sequence[float], window: int | None = None) -> list[float]:
    """A trailing moving average (window: about 4 % of the points, 5 to 200; 1 for very few points)."""
    n = len(values)
    if not n:
        return []
    window = window or (1 if n < 10 else max(5, min(200, n // 25)))
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def thin(n: int, max_points: int) -> list[int]:
    """Indexes of at most ``max_points`` of ``n`` points, evenly spread, the last one kept."""
    if n <= max_points:
        return list(range(n))
    step = n / max_points
    idx = sorted({int(i * step) for i in range(max_points)} | {n - 1})
    return idx


def duration_text(seconds: float | None) -> str:
    """``"4 h 05 min"``, ``"12 min"``, ``"40 s"``, or ``"–"``."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = round(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = (seconds + 30) // 60 if seconds < 3600 else seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
