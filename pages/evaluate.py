"""Evaluate: score a model against hand-drawn masks; per-image results and the worst images first."""

from __future__ import annotations

import logging
import math

import numpy as np
import streamlit as st

from pages._common import (
    active_model,
    choose_dataset,
    choose_tta,
    dataset_or_stop,
    metric_help,
    metric_label,
    predictor_or_stop,
    short_name,
    show_no_model,
)
from unet_core.baseline import BaselineOptions
from unet_core.datasets import Dataset
from unet_core.errors import UserError
from unet_core.evaluate import (
    TABLE_METRICS,
    EvalOptions,
    EvalReport,
    comparison_rows,
    evaluate,
    predict_sample,
)
from unet_core.metrics import LOWER_IS_BETTER
from unet_core.runtime import Predictor
from unet_core.studio import browse, registry, runlock
from unet_core.studio import visualize as viz
from unet_core.studio.registry import ModelEntry, list_models
from unet_core.studio.sources import DataSource

log = logging.getLogger(__name__)

STATE_KEY = "evaluate_results"
MODEL_CHOICE = "evaluate_model"
LAST_ACTIVE = "evaluate_last_active"
SPLIT_FOR = "evaluate_split_for"  # the (model, data) the split choice was made for
N_WORST = 3
SPLITS = {"val": "Validation images", "val_random": "Validation: random part",
          "val_groups": "Validation: held-out experiments", "train": "Training images", "all": "All images"}
KIND_TEXT = {
    "instance": "objects: each hand-drawn object is matched with one of the model's objects",
    "semantic": "class maps, as in the ISBI 2012 challenge (cell interiors and the membranes between them)",
}


# --------------------------------------------------------------------------- choices


def choose_model() -> ModelEntry | None:
    """The active model by default, or another one; follows the sidebar when that changes."""
    models = list_models()
    if not models:
        return None
    paths = {str(m.path): m for m in models}
    active = active_model()
    active_path = str(active.path) if active else next(iter(paths))
    if st.session_state.get(LAST_ACTIVE) != active_path or st.session_state.get(MODEL_CHOICE) not in paths:
        st.session_state[MODEL_CHOICE] = active_path
    st.session_state[LAST_ACTIVE] = active_path
    path = st.selectbox("Model", list(paths), key=MODEL_CHOICE,
                        format_func=lambda p: paths[p].label + ("  (active)" if p == active_path else ""),
                        help="The active model (chosen in the sidebar) or any other one.")
    return paths[path]


def choose_split(predictor: Predictor, source: DataSource, ds: Dataset) -> tuple[str, list[int], str]:
    """Which images: the model's own split when it was trained on this data set. (part, indices, text)."""
    rule, own = registry.split_for(predictor.meta.training, source, len(ds), ds.split_rule)
    # Each new model or data set starts from the useful part: the images the model never saw (all of
    # them when it trained on none, or when it trained on every one: split rule "none").
    pairing = (predictor.fingerprint, source)
    if st.session_state.get(SPLIT_FOR) != pairing or "evaluate_split" not in st.session_state:
        st.session_state["evaluate_split"] = "val" if own and ds.split_indices("val", rule) else "all"
    st.session_state[SPLIT_FOR] = pairing
    if own:
        how = ("The model was trained on this data set: **validation images** are the ones it never learnt from "
               f"({browse.describe_split(rule, len(ds), ds.groups)}).")
    else:
        how = ("The model was not trained on these images, so all of them are new to it. The validation and "
               f"training parts follow the data set's own rule ({browse.describe_split(rule, len(ds), ds.groups)}).")
    parts = [p for p in SPLITS if rule.groups or not p.startswith("val_")]
    part = st.radio("Images to score", parts, format_func=SPLITS.__getitem__, horizontal=True,
                    key="evaluate_split")
    st.caption(how)
    indices = list(range(len(ds))) if part == "all" else ds.split_indices(part, rule)
    text = "all images" if part == "all" else f"{SPLITS[part].lower()} ({rule.to_dict()['kind']} rule)"
    return part, indices, text


# --------------------------------------------------------------------------- work


def run_evaluation(predictor: Predictor | BaselineOptions, ds: Dataset, indices: list[int],
                   options: EvalOptions) -> EvalReport:
    bar = st.progress(0.0, text=f"Scoring 0 of {len(indices)} images…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Scoring {done} of {total} images…")

    report = evaluate(predictor, ds, indices, options, progress)
    bar.empty()
    return report


def prediction_of(predictor: Predictor, ds: Dataset, i: int, options: EvalOptions) -> np.ndarray:
    """The model's objects in image ``i`` (as evaluate scored them)."""
    return predict_sample(predictor, ds, i, options)[1]


def worst_views(predictor: Predictor, ds: Dataset, report: EvalReport, options: EvalOptions) -> list[dict]:
    """Pictures of the worst images: image, hand-drawn objects, the model's, and their differences."""
    views = []
    for row in report.worst_first()[:N_WORST]:
        image = ds.load_image(row.index)
        truth = ds.load_instances(row.index)
        pred = prediction_of(predictor, ds, row.index, options)
        base = viz.display_image(image, browse.contrast_limits(image))
        views.append({
            "name": row.name, "metrics": row.metrics,
            "truth": viz.fit_for_screen(viz.overlay(base, truth, 0.3)),
            "pred": viz.fit_for_screen(viz.overlay(base, pred, 0.3)),
            "diff": viz.fit_for_screen(viz.compare_overlay(base, pred, truth)),
            "n_truth": int(len(np.unique(truth)) - (1 if (truth == 0).any() else 0)),
            "n_pred": int(pred.max()) if pred.size else 0,
        })
    return views


# --------------------------------------------------------------------------- results


def fmt(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def shown_metrics(report: EvalReport) -> list[str]:
    return [m for m in TABLE_METRICS[report.kind] if any(m in r.metrics for r in report.rows)]


def show_means(report: EvalReport) -> None:
    keys = shown_metrics(report)
    cols = st.columns(len(keys))
    for col, key in zip(cols, keys):
        col.metric(f"{metric_label(key)} {'↓' if key in LOWER_IS_BETTER else '↑'}", fmt(report.means.get(key)),
                   help=f"Mean over the {len(report.rows)} images. {metric_help(key)}")


def show_table(report: EvalReport) -> None:
    keys = shown_metrics(report)
    looks = any(r.look for r in report.rows)  # models with an object diameter: the look set the filter
    rows = []
    for rank, r in enumerate(report.worst_first(), start=1):
        row = {"Rank": rank, "#": r.index + 1, "Image": r.name, "Size": f"{r.width} × {r.height}"}
        if looks:
            row["Look"] = r.look or "no objects"
        for key in keys:
            v = r.metrics.get(key, math.nan)
            row[key] = None if math.isnan(v) else v
        row["Seconds"] = r.seconds
        rows.append(row)
    config = {
        "Rank": st.column_config.NumberColumn("Rank", width="small", help="1 = the worst image"),
        "#": st.column_config.NumberColumn("#", width="small", help="The image's number in the data set"),
        "Seconds": st.column_config.NumberColumn("Seconds", format="%.1f"),
        "Look": st.column_config.TextColumn("Look", help="What the image looks like to the engine (fluorescence, "
                                            "bright-field or stained): it sets how sure of an object the network "
                                            "must be for the automatic clean-up to keep it."),
    }
    for key in keys:
        config[key] = st.column_config.NumberColumn(
            f"{metric_label(key)} {'↓' if key in LOWER_IS_BETTER else '↑'}", format="%.3f", help=metric_help(key))
    st.dataframe(rows, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(rows)),
                 column_config=config)


def show_worst(views: list[dict], report: EvalReport) -> None:
    primary = report.primary
    worse = "highest" if primary in LOWER_IS_BETTER else "lowest"
    st.subheader(f"The {len(views)} worst image{'s' if len(views) != 1 else ''}")
    st.caption(f"Those with the {worse} {metric_label(primary)}. Left: the hand-drawn masks (ground truth). "
               "Middle: the model's objects, one colour each. Right: the differences, "
               ":green-background[green = missed by the model], :violet-background[magenta = found by the model "
               "but not drawn by hand]; yellow lines outline the model's objects.")
    for view in views:
        scores = ", ".join(f"{metric_label(k)} {fmt(view['metrics'].get(k))}" for k in shown_metrics(report)[:3])
        st.markdown(f"**{short_name(view['name'], 48)}** · {scores}")
        left, mid, right = st.columns(3)
        left.image(view["truth"], width="stretch", caption=f"Hand-drawn: {view['n_truth']} objects")
        mid.image(view["pred"], width="stretch", caption=f"Model: {view['n_pred']} objects")
        right.image(view["diff"], width="stretch", caption="Differences")


def show_report(state: dict) -> None:
    report: EvalReport = state["report"]
    st.subheader(f"Results on {len(report.rows)} image{'s' if len(report.rows) != 1 else ''}")
    st.info("Scored at the **argmax of the probabilities**: every pixel gets the class the model finds most "
            "likely (no threshold tuned). Objects are the connected regions of the object classes. Metrics: "
            f"{KIND_TEXT[report.kind]}.", icon=":material/info:")
    if report.skipped:
        n = len(report.skipped)
        st.warning(f"**{n} image{'s' if n != 1 else ''} could not be scored** (left out of the means):  \n"
                   + "  \n".join(f"`{s['name']}`: {s['problem']}" for s in report.skipped[:10]),
                   icon=":material/warning:")
    show_means(report)
    if state.get("comparison"):
        st.markdown("**The U-Net beside the classical method** (Otsu threshold + distance-transform watershed, "
                    "on the same images)")
        st.dataframe(state["comparison"], hide_index=True, width="stretch",
                     column_config={k: st.column_config.NumberColumn(k, format="%.3f")
                                    for k in state["comparison"][0] if "(" in k})
    st.markdown(f"**Per image, worst first** (by {metric_label(report.primary)}; "
                f"{report.seconds:.1f} s in all)")
    show_table(report)
    c1, c2, _ = st.columns([1, 1, 2])
    c1.download_button("Report (Markdown)", report.to_markdown(), file_name="evaluation.md", mime="text/markdown",
                       icon=":material/description:", on_click="ignore", width="stretch")
    c2.download_button("Results (JSON)", report.to_json(), file_name="evaluation.json", mime="application/json",
                       icon=":material/data_object:", on_click="ignore", width="stretch")
    show_worst(state["views"], report)


# --------------------------------------------------------------------------- page

st.title("Evaluate")
st.caption("How good is a model on images you have labelled by hand? Each image is segmented and compared with "
           "its mask; the worst images are shown first, so you see where the model goes wrong.")

if not list_models():
    show_no_model()
    st.stop()

model_col, data_col = st.columns([1, 2], gap="large")
with model_col:
    entry = choose_model()
    predictor = predictor_or_stop(entry, "Choose another model, or export it again with "
                                         "`python -m unet_core export`.")
    classes = ", ".join(predictor.meta.class_names)
    st.caption(f"Classes: {classes}. Runs on {predictor.device_name}.")
    tta = choose_tta("evaluate_tta")
    compare = st.toggle("Compare with the classical method", key="evaluate_baseline", value=True,
                        help="Also score Otsu threshold + distance-transform watershed (what you would do in Fiji "
                        "without deep learning) on the same images, to see what the U-Net adds.")
with data_col, st.container(border=True):
    chosen = choose_dataset("evaluate")
source, ds = dataset_or_stop(chosen, "**{title}** has no image with a mask: evaluation compares the model with "
                             "hand-drawn masks. Put each mask in `masks/` with the same name as its image, or "
                             "choose another data set.")

part, indices, split_text = choose_split(predictor, source, ds)
if not indices:
    st.error(f"There are no {SPLITS[part].lower()} in this data set: choose another part.", icon=":material/error:")
    st.stop()

options = EvalOptions(tta=tta)
settings = (str(entry.path), predictor.fingerprint, source, part, tuple(indices), tta, compare)
state = st.session_state.get(STATE_KEY)
holder = runlock.busy()
count = f"{len(indices)} image{'s' if len(indices) != 1 else ''}"
if holder is not None:
    st.caption(f"**{holder.run}** is training on this computer at the same time: scoring will be slower.")
if st.button(f"Evaluate on {count}", type="primary", icon=":material/fact_check:", key="evaluate_run"):
    try:
        report = run_evaluation(predictor, ds, indices, options)
        scored = [r.index for r in report.rows]  # the baseline on the same images as the model
        baseline = run_evaluation(BaselineOptions(), ds, scored, options) if compare else None
        with st.spinner("Drawing the worst images…"):
            views = worst_views(predictor, ds, report, options)
    except (OSError, UserError) as exc:  # no image could be scored (EvalError), or an unreadable model
        st.error(f"Evaluation stopped: {exc}.  \nFix or remove that file (the Datasets page lists problem files), "
                 "then try again.", icon=":material/error:")
        st.stop()
    except Exception as exc:  # a bug must not show a traceback; it goes to the log
        log.exception("evaluating %s on %s failed", entry.path, source)
        st.error(f"Evaluation stopped on an unexpected error ({type(exc).__name__}: {exc}). Try another model or "
                 "data set, and please report it.", icon=":material/error:")
        st.stop()
    report.model, report.split = str(entry.path), split_text
    comparison = comparison_rows(report, baseline) if baseline is not None else None
    state = {"settings": settings, "report": report, "views": views, "comparison": comparison}
    st.session_state[STATE_KEY] = state

if state and state["settings"] == settings:
    show_report(state)
elif state:
    st.info("The model, images or options changed: press **Evaluate** to score again.", icon=":material/refresh:")
