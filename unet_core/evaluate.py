"""Evaluation of a model on a data set: per-image metrics, their means, and a markdown report.

One function, :func:`evaluate`, serves training validation, ``python -m unet_core evaluate`` and the
app's Evaluate page. Every image goes through the real inference path (overlap-tile
:func:`unet_core.inference.segment`, the same as ``predict``), and is scored at the **argmax of the
class probabilities** (no threshold sweep) with :func:`unet_core.metrics.evaluate_pair`:

* ``semantic`` (ISBI 2012-like data: class maps, e.g. membrane / cell interior): pixel error, Rand
  error, warping error, per-class and foreground IoU, and DSB AP / SEG of the 4-connected
  foreground components;
* ``instance`` (nuclei, cells: instance label masks): the predicted instances are those of
  ``predict``: the connected components of the foreground classes at the working scale, their
  outlines redrawn on the input grid (:func:`unet_core.inference.instance_ids`); pixel error and
  foreground IoU of the masks, Rand error of the segments, DSB 2018 mean AP, CTC SEG.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from .baseline import BaselineOptions, segment_baseline
from .datasets import Dataset
from .errors import UserError
from .inference import InferenceOptions, segment_objects
from .instances import DEFAULT_MIN_OBJECT_PROBABILITY, InstanceOptions
from .io import ImageFile
from .metrics import LOWER_IS_BETTER, PRIMARY_METRIC, evaluate_pair
from .runtime import Predictor
from .scale import Diameter

Kind = Literal["auto", "semantic", "instance"]

#: Metrics shown in the report's table, per kind (all computed metrics are in the JSON).
TABLE_METRICS = {
    "semantic": ("pixel_error", "rand_error", "warping_error", "foreground_iou", "dsb_ap"),
    "instance": ("foreground_iou", "dsb_ap", "seg", "rand_error", "pixel_error"),
}

#: progress(done, total): images evaluated so far.
EvalProgress = Callable[[int, int], None]

log = logging.getLogger(__name__)


class EvalError(UserError):
    """An evaluation that scored no image; the message names the first image's problem."""


@dataclass
class EvalOptions:
    """How to evaluate.

    Attributes:
        tile: output tile edge (rounded down to a valid size); None = the runtime's automatic choice.
        batch: tiles per network call (None: automatic).
        tta: average the probabilities over the 8 flips/rotations before the argmax (True, False,
            or None: automatic, as ``predict`` does by default: :attr:`InferenceOptions.tta`).
        kind: ``"semantic"``, ``"instance"`` or ``"auto"`` (:func:`metric_kind` of the data set).
        instance_options: post-processing of the predicted instances (instance kind only).
        diameter: object scale for models with a canonical diameter (``"auto"``, ``"off"`` or
            pixels; :class:`~unet_core.scale.Diameter`).
    """

    tile: int | None = None
    batch: int | None = None
    tta: bool | None = None
    kind: Kind = "auto"
    instance_options: InstanceOptions = field(default_factory=InstanceOptions)
    diameter: Diameter | str | float | None = "auto"


@dataclass
class ImageResult:
    """The metrics of one image."""

    index: int
    name: str
    height: int
    width: int
    metrics: dict[str, float]
    seconds: float
    category: str | None = None
    diameter: float | None = None  # the object diameter inference used (given or estimated)
    look: str | None = None  # the image's look that set the automatic probability filter (unet_core.look)


@dataclass
class EvalReport:
    """Per-image metrics and their means (NaN-skipping) over the evaluated images."""

    kind: str
    rows: list[ImageResult]
    means: dict[str, float]
    model: str = ""
    data: str = ""
    split: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    #: Images that could not be scored (an unreadable image or mask): ``{"index", "name", "problem"}``.
    #: They are left out of every mean; the report names them.
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def primary(self) -> str:
        return PRIMARY_METRIC[self.kind]

    def worst_first(self, metric: str | None = None) -> list[ImageResult]:
        """Rows sorted from the worst to the best value of ``metric`` (default: the primary one)."""
        metric = metric or self.primary
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0

        def key(row: ImageResult) -> float:
            v = row.metrics.get(metric, math.nan)
            return math.inf if math.isnan(v) else sign * v

        return sorted(self.rows, key=key)

    def by_category(self) -> dict[str, dict[str, float]]:
        """Mean metrics per image category (rows without a category count as ``"all"``)."""
        groups: dict[str, list[ImageResult]] = {}
        for row in self.rows:
            groups.setdefault(row.category or "all", []).append(row)
        return {name: {"n_images": float(len(rows)), **mean_metrics(rows)} for name, rows in sorted(groups.items())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model,
            "data": self.data,
            "split": self.split,
            "n_images": len(self.rows),
            "skipped": self.skipped,
            "evaluated_at": "argmax of the class probabilities",
            "options": self.options,
            "seconds": round(self.seconds, 3),
            "metrics": {k: _json_float(v) for k, v in self.means.items()},
            "by_category": {c: {k: _json_float(v) for k, v in m.items()} for c, m in self.by_category().items()},
            "images": [
                {**asdict(r), "metrics": {k: _json_float(v) for k, v in r.metrics.items()}} for r in self.rows
            ],
        }

    def to_json(self, images: bool = True) -> str:
        d = self.to_dict()
        if not images:
            d.pop("images")
        return json.dumps(d, indent=2)

    def to_markdown(self) -> str:
        """A report: settings, mean metrics, and one row per image, worst first."""
        cols = [m for m in TABLE_METRICS[self.kind] if any(m in r.metrics for r in self.rows)]
        looks = any(r.look for r in self.rows)
        lines = [
            "# Evaluation report",
            "",
            f"- model: `{self.model}`" if self.model else "- model: (in memory)",
            f"- data: `{self.data}` ({self.split}, {len(self.rows)} images)",
            f"- metrics: {self.kind} ("
            + ("class maps, ISBI 2012 style" if self.kind == "semantic" else "instances = connected "
               "components of the predicted foreground")
            + (f", outlines redrawn where the foreground probability exceeds {self.options['outline_threshold']:g}"
               if self.kind == "instance" and self.options.get("outline_threshold") else "")
            + (f", objects with a mean foreground probability under {_threshold_text(self.options)} dropped"
               if self.kind == "instance" and self.options.get("min_object_probability") else "")
            + (", merged objects split" if self.kind == "instance" and self.options.get("split_merged") else "")
            + ")",
            "- evaluated at the **argmax of the class probabilities** (no threshold sweep)"
            + {True: ", probabilities averaged over the 8 flips/rotations (TTA)", None: ", TTA automatic (images "
               "up to 1 Mpx)"}.get(self.options.get("tta"), ""),
            f"- tile: {self.options.get('tile') or 'auto'}; time: {self.seconds:.1f} s",
            *(f"- **not scored** (left out of the means): {s['name']}: {s['problem']}" for s in self.skipped),
            "",
            "## Means",
            "",
            "| metric | mean |",
            "|---|---|",
        ]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in self.means.items()]
        categories = self.by_category()
        if len(categories) > 1:
            lines += ["", "## By image category", "", "| category | images | " + " | ".join(cols) + " |",
                      "|---|---|" + "---|" * len(cols)]
            lines += [f"| {c} | {int(m['n_images'])} | " + " | ".join(_fmt(m.get(k, math.nan)) for k in cols) + " |"
                      for c, m in categories.items()]
        lines += [
            "",
            f"## Per image (worst first by {self.primary}, "
            + ("higher is worse" if self.primary in LOWER_IS_BETTER else "lower is worse") + ")",
            "",
            "| # | image | size | " + ("look | " if looks else "") + " | ".join(cols) + " |",
            "|---|---|---|" + ("---|" if looks else "") + "---|" * len(cols),
        ]
        for r in self.worst_first():
            vals = " | ".join(_fmt(r.metrics.get(c, math.nan)) for c in cols)
            look = f"{r.look or 'n/a'} | " if looks else ""
            lines.append(f"| {r.index} | {r.name} | {r.width}x{r.height} | {look}{vals} |")
        return "\n".join(lines) + "\n"


def _threshold_text(options: dict[str, Any]) -> str:
    """The minimum object probability of a report: ``0.5``, or the automatic one by image look."""
    p = options["min_object_probability"]
    if isinstance(p, dict):
        return ", ".join(f"{v:g} ({look})" for look, v in p.items()) + " by each image's look"
    return f"{p:g}"


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _json_float(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def metric_kind(dataset: Dataset) -> str:
    """``"semantic"`` for ISBI 2012-like data and class masks, else ``"instance"``."""
    if dataset.layout == "isbi2012" or dataset.n_classes > 2 or dataset.mask_encoding == "class_indexes":
        return "semantic"
    return "instance"


#: What :func:`evaluate` scores: a U-Net predictor, or the classical baseline's options.
Segmenter = Predictor | BaselineOptions


def evaluate(
    segmenter: Segmenter,
    dataset: Dataset,
    indices: Sequence[int] | None = None,
    options: EvalOptions | None = None,
    progress: EvalProgress | None = None,
) -> EvalReport:
    """Segment the images ``indices`` of ``dataset`` (default: all) and score them.

    Args:
        segmenter: any :class:`~unet_core.runtime.Predictor` (ONNX Runtime or PyTorch), or
            :class:`~unet_core.baseline.BaselineOptions` for the classical baseline.
        dataset: the data set (images + masks).
        indices: which samples; default all.
        options: tiling, TTA, object scale, post-processing, metric kind.
        progress: called with (images done, total) after each image.

    Returns:
        :class:`EvalReport` with one row per image (with its category) and the NaN-skipping means.
    """
    options = options or EvalOptions()
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    kind = metric_kind(dataset) if options.kind == "auto" else options.kind
    if kind not in PRIMARY_METRIC:
        raise ValueError(f"kind must be 'auto', 'semantic' or 'instance', not {options.kind!r}")
    rows: list[ImageResult] = []
    skipped: list[dict[str, Any]] = []
    started = time.perf_counter()
    for n, i in enumerate(indices):
        try:
            rows.append(score_sample(segmenter, dataset, i, options, kind))
        except (UserError, OSError) as exc:  # this image only: the others are still scored
            name = dataset.samples[i].name
            skipped.append({"index": i, "name": name, "problem": str(exc).removeprefix(f"{name}: ")})
            log.warning("%s: not scored (%s)", name, exc)
        if progress:
            progress(n + 1, len(indices))
    if not rows and skipped:
        raise EvalError(f"none of the {len(indices)} images could be scored; the first: "
                        f"{skipped[0]['name']}: {skipped[0]['problem']}")
    return EvalReport(
        kind=kind,
        skipped=skipped,
        rows=rows,
        means=mean_metrics(rows),
        model=str(segmenter.method) if isinstance(segmenter, BaselineOptions) else "",
        data=str(dataset.root),
        options={"tile": options.tile, "tta": options.tta, "batch": options.batch, "diameter": str(options.diameter),
                 **_object_rule(segmenter, options)},
        seconds=time.perf_counter() - started,
    )


def score_sample(segmenter: Segmenter, dataset: Dataset, i: int, options: EvalOptions,
                 kind: str) -> ImageResult:
    """The metrics of sample ``i`` (``kind``: ``"semantic"`` or ``"instance"``)."""
    t0 = time.perf_counter()
    sample = dataset.samples[i]
    labels, pred, diameter, look = predict_sample(segmenter, dataset, i, options)
    if kind == "semantic":
        gt = dataset.load_classes(i)
        fg = 1 if isinstance(segmenter, BaselineOptions) else segmenter.meta.foreground_classes[0]
        n_classes = 2 if isinstance(segmenter, BaselineOptions) else segmenter.meta.unet.n_classes
        metrics = evaluate_pair(labels, gt, "semantic", foreground_class=fg, num_classes=n_classes)
    else:
        metrics = evaluate_pair(pred, dataset.load_instances(i), "instance")
    return ImageResult(i, sample.name, int(labels.shape[0]), int(labels.shape[1]),
                       {k: float(v) for k, v in metrics.items()}, time.perf_counter() - t0, sample.category, diameter,
                       look)


def _object_rule(segmenter: Segmenter, options: EvalOptions) -> dict[str, Any]:
    """The outline threshold the instances were drawn at, the minimum object probability they
    were kept at (one number, or the automatic one per image look) and whether merged objects were
    split (None for the baseline, which has none of them)."""
    if isinstance(segmenter, BaselineOptions):
        return {"outline_threshold": None, "min_object_probability": None, "split_merged": None}
    resolved = options.instance_options.resolved(segmenter.meta.diameter)
    by_look = segmenter.meta.diameter and options.instance_options.min_object_probability is None
    return {"outline_threshold": resolved.outline_threshold,
            "min_object_probability": dict(DEFAULT_MIN_OBJECT_PROBABILITY) if by_look
            else resolved.min_object_probability,
            "split_merged": resolved.split_merged}


def predict_sample(segmenter: Segmenter, dataset: Dataset, i: int,
                   options: EvalOptions) -> tuple[np.ndarray, np.ndarray, float | None, str | None]:
    """(class labels, instance ids, diameter used, image look) of sample ``i``, as :func:`evaluate`
    scores it."""
    pixels = dataset.load_image(i)
    if isinstance(segmenter, BaselineOptions):
        ids = segment_baseline(pixels, segmenter)
        return (ids > 0).astype(np.uint8), ids, None, None
    inference = InferenceOptions(tile=options.tile, batch=options.batch, tta=options.tta, diameter=options.diameter)
    seg, ids = segment_objects(ImageFile(name=dataset.samples[i].name, data=pixels[None]), segmenter, inference,
                               options.instance_options)
    return seg.labels[0], ids[0], seg.diameter, seg.look


def comparison_rows(model: EvalReport, baseline: EvalReport,
                    metrics: Sequence[str] = ("dsb_ap", "foreground_iou")) -> list[dict[str, Any]]:
    """Model and baseline side by side, one row for all images and one per image category.

    Both reports must score the same images (e.g. the model's validation images).
    """
    if [r.index for r in model.rows] != [r.index for r in baseline.rows]:
        raise ValueError("the model and the baseline were scored on different images")
    rows = []
    groups = {"all images": (model.means, baseline.means, len(model.rows))}
    m_cat, b_cat = model.by_category(), baseline.by_category()
    if len(m_cat) > 1:
        groups.update({c: (m_cat[c], b_cat[c], int(m_cat[c]["n_images"])) for c in m_cat})
    for name, (m, b, n) in groups.items():
        row: dict[str, Any] = {"images": name, "n": n}
        for k in metrics:
            row[f"{k} (model)"] = _json_float(m.get(k, math.nan))
            row[f"{k} (baseline)"] = _json_float(b.get(k, math.nan))
        rows.append(row)
    return rows


def mean_metrics(rows: Sequence[ImageResult]) -> dict[str, float]:
    """Mean of every metric over the rows, skipping NaN (metrics undefined for an image)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r.metrics if k not in keys]
    means = {}
    for k in keys:
        vals = np.array([r.metrics.get(k, math.nan) for r in rows], dtype=np.float64)
        means[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    return means
