"""Train: teach a U-Net your images in the background; follow its curves, stop, resume.

The run itself is ``python -m unet_core train`` in a process of its own (unet_core.studio.jobs), so it goes
on when the page is left, reloaded or closed; this page only starts it and reads its folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import streamlit as st

from pages._common import MODEL_KEY, choose_dataset, metric_help, metric_label
from pages._train_charts import loss_figure, val_figure
from unet_core import config
from unet_core.datasets import Dataset
from unet_core.runtime import cuda_driver_available
from unet_core.studio import browse, jobs, runlock, runs, visualize
from unet_core.studio.browse import ModelInfo
from unet_core.studio.registry import RUN_MODEL_FILE, ModelEntry, list_models
from unet_core.studio.sources import DataSource
from unet_core.tiling import Geometry

REFRESH_S = 2.0
RUN_KEY = "train_run"  # the run shown
MESSAGE_KEY = "train_message"  # (kind, text) left by a button callback for the next run
NAME_AUTO = "train_name_suggested"  # the run name last suggested

GEOMETRY = Geometry(4, "valid")
TILES = (36, 52, 100, 148, 196, 244, 292, 340, 388, 436, 516)

# Two starting points for the settings: the paper's, and a short run that finishes on a laptop CPU.
SETTINGS = ("width", "tile", "steps", "optimizer", "lr", "momentum", "w0", "sigma", "augment", "val_every",
            "checkpoint_every", "seed")
PRESETS = {
    "paper": config.defaults(SETTINGS),
    "quick": {**config.defaults(SETTINGS), "width": 8, "tile": 100, "steps": 300, "optimizer": "adam", "lr": 0.001,
              "val_every": 100},
}
# Set when "Start from" turns to a trained model. Measured (README, "Teaching the model your images"):
# 3 corrected bright-field images, 300 steps, 13 others scored; larger tiles mattered, not the rate.
FINE_TUNING = {"tile": 244, "steps": 300, "optimizer": "adam", "lr": 1e-4, "val_every": 100}
DEFAULT_LR = {"sgd": 0.01, "adam": 0.001}
OUTLINE_WIDTH = 2  # px of the outline class; what the shipped nuclei model was trained with
# The shipped nuclei model's recipe for the bright-field look: polarity inversion of 30 % of tiles,
# synthetic cell bodies on half of those (the model card has the measurements).
BRIGHTFIELD = {"invert_prob": 0.3, "cytoplasm_prob": 0.5}
OPTIMIZERS = {"sgd": "SGD with momentum (paper)", "adam": "Adam"}
START_FROM = {"scratch": "Nothing: random weights (from scratch)", "model": "A trained model (fine-tuning)"}

STATE_TEXT = {
    runs.STARTING: ("Preparing", ":material/hourglass_top:"),
    runs.RUNNING: ("Training", ":material/play_circle:"),
    runs.FINISHED: ("Finished", ":material/check_circle:"),
    runs.STOPPED: ("Stopped", ":material/stop_circle:"),
    runs.CRASHED: ("Failed", ":material/error:"),
    runs.UNFINISHED: ("Not finished", ":material/pause_circle:"),
}


# --------------------------------------------------------------------------- callbacks


def apply_preset(name: str) -> None:
    _set_settings(PRESETS[name])


def start_from_changed() -> None:
    """Fine-tuning gets the settings measured for it; from scratch, the computer's preset again."""
    fine_tuning = st.session_state["train_start_from"] == "model"
    if fine_tuning and not list_models():  # nothing to fine-tune: the page trains from scratch
        return
    _set_settings(FINE_TUNING if fine_tuning else PRESETS[computer_preset()])


def computer_preset() -> str:
    """The preset that suits this computer: the paper's with a GPU, else the quick try."""
    return "paper" if cuda_driver_available() else "quick"


def _set_settings(settings: dict) -> None:
    for key, value in settings.items():
        st.session_state[f"train_{key}"] = value


def optimizer_changed() -> None:
    st.session_state["train_lr"] = DEFAULT_LR[st.session_state["train_optimizer"]]


def start(name: str, data: str, options: dict, processes: int = 1) -> None:
    """Start button: start the run in the background (or leave the reason for the page)."""
    try:
        jobs.start_run(name, data, options, processes=processes)
    except runlock.JobError as exc:
        st.session_state[MESSAGE_KEY] = ("error", f"The training did not start: {exc}.")
        return
    st.session_state[RUN_KEY] = name
    st.session_state[MESSAGE_KEY] = ("success", (f"Training **{name}** started. It runs in the background: you "
                                                 "may leave this page or close the browser and come back later."))


def _launch(action: Callable[[str], object], name: str, done: str, failed: str) -> None:
    """A button's job action on run ``name``; its outcome is left for the page as a message."""
    try:
        action(name)
    except runlock.JobError as exc:
        st.session_state[MESSAGE_KEY] = ("error", f"{failed}: {exc}.")
        return
    st.session_state[MESSAGE_KEY] = ("success", done)


def resume(name: str) -> None:
    _launch(jobs.resume_run, name, f"**{name}** continues from its last checkpoint.", f"**{name}** did not resume")


def finish(name: str) -> None:
    _launch(jobs.finish_run, name, f"**{name}** ends at its last checkpoint: its model is being exported (the "
            "images are prepared once more for its card).", f"No model was made from **{name}**")


def rename(name: str) -> None:
    try:
        new = jobs.rename_run(name, st.session_state.get(f"train_new_name:{name}", ""))
    except runlock.JobError as exc:
        st.session_state[MESSAGE_KEY] = ("error", f"**{name}** was not renamed: {exc}.")
        return
    old_model = str(runs.run_folder(name) / RUN_MODEL_FILE)
    if st.session_state.get(MODEL_KEY) == old_model:  # the active model moved with its run
        st.session_state[MODEL_KEY] = str(runs.run_folder(new) / RUN_MODEL_FILE)
    st.session_state[RUN_KEY] = new
    st.session_state[MESSAGE_KEY] = ("success", f"**{name}** is now called **{new}**.")


def delete(name: str) -> None:
    try:
        jobs.delete_run(name)
    except (runlock.JobError, OSError) as exc:
        st.session_state[MESSAGE_KEY] = ("error", f"**{name}** was not deleted: {exc}.")
        return
    st.session_state.pop(RUN_KEY, None)
    st.session_state[MESSAGE_KEY] = ("success", f"The run **{name}** and its files are deleted.")


def use_model(path: str) -> None:
    st.session_state[MODEL_KEY] = path


def _name_base(title: str) -> str:
    return "synthetic" if title.startswith("synthetic") else title


# --------------------------------------------------------------------------- cached reads


@st.cache_data(max_entries=32, show_spinner=False)
def info_of(entry: ModelEntry, mtime: float) -> ModelInfo:
    return browse.model_info(entry)


def mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


# --------------------------------------------------------------------------- a run


def progress_text(info: runs.RunInfo) -> str:
    if info.state == runs.STARTING:
        return "Preparing the images and their weight maps…"
    if info.live and info.total and info.step >= info.total:
        return f"All {info.total:,} steps done; saving the model (ONNX)…"
    text = f"Step {info.step:,} of {info.total:,}"
    if info.live and info.eta is not None:
        text += f" · about {visualize.duration_text(info.eta)} left"
    return text


def show_numbers(info: runs.RunInfo) -> None:
    cols = st.columns(4)
    cols[0].metric("Steps done", f"{info.step:,} / {info.total:,}")
    smooth = visualize.smooth(info.losses)
    cols[1].metric("Loss (average)", f"{smooth[-1]:.4f}" if smooth else "–",
                   help="The weighted cross-entropy the network minimises, averaged over recent steps. It "
                   "should go down; it does not say directly how good the segmentation is.")
    best = info.best or {}
    if isinstance(best.get("value"), (int, float)):
        cols[2].metric(f"Best {metric_label(best['metric'])}", f"{best['value']:.3f}",
                       help=f"On the held-out validation images, at step {best.get('step')}; the saved model is "
                       f"the one from that step. {metric_help(best['metric'])}")
    else:
        cols[2].metric("Best validation", "–", help="No validation yet (see 'Validate every' in the settings).")
    if info.live:
        cols[3].metric("Time left", visualize.duration_text(info.eta),
                       help=f"Running for {visualize.duration_text(info.elapsed)}"
                       + (f", {info.seconds_per_step:.2f} s per step" if info.seconds_per_step else ""))
    else:
        cols[3].metric("Training time", visualize.duration_text(info.elapsed),
                       help=f"{info.seconds_per_step:.2f} s per step" if info.seconds_per_step else None)


def show_curves(info: runs.RunInfo) -> None:
    if not info.steps:
        return
    left, right = st.columns(2)
    left.plotly_chart(loss_figure(info), width="stretch", key=f"train_loss_{info.name}")
    with right:
        if info.val:
            st.plotly_chart(val_figure(info), width="stretch", key=f"train_val_{info.name}")
        else:
            every = int(info.config.get("val_every") or 0)
            first = min(every, info.total) if info.total else every
            if not every:
                text = "This run does not validate (validate every 0 steps): there is no validation curve."
            elif info.step < first:
                text = (f"Validation runs every {every:,} steps: its curve appears after step {first:,}."
                        if info.live else f"No validation yet: the first comes at step {first:,}.")
            else:
                text = "No validation was recorded (the data set may have no validation images)."
            st.info(text, icon=":material/info:")


def show_run(info: runs.RunInfo) -> None:
    """A run's status, progress, numbers and curves (live or not)."""
    label, icon = STATE_TEXT[info.state]
    where = " (started from the command line)" if info.external else ""
    st.markdown(f"#### {icon} {info.name} · {label}{where}")
    if info.live or info.state != runs.FINISHED:
        st.progress(info.fraction, text=progress_text(info))
    show_numbers(info)
    show_curves(info)


def live_panel(name: str) -> None:
    """Redrawn every few seconds while the run goes on; a full rerun once it ends."""
    info = runs.run_info(name)
    if not info.live:
        st.rerun()  # the finished / failed view, and the new model in the sidebar's menu
    show_run(info)
    if info.external:
        st.caption(f"Started from the command line (process {info.pid}): stop it there with Ctrl+C, or with "
                   f"`kill {info.pid}`. Its last checkpoint is kept either way.")
    else:
        if st.button("Stop", icon=":material/stop:", key="train_stop",
                     help="Stops the training. Its last checkpoint is kept: Resume continues from it."):
            with st.spinner("Stopping…"):
                jobs.stop_run(name)
            st.rerun()
        st.caption("Stop finishes the current step and saves a checkpoint there; Resume continues from it.")


def show_ended(info: runs.RunInfo) -> None:
    """What to do with a run that is not running: use its model, resume it, read why it failed."""
    show_run(info)
    every = int(info.config.get("checkpoint_every") or 0)
    # Stop saves at the current step; a crash (or kill -9) falls back to the last periodic one.
    checkpoint = info.step if info.state == runs.STOPPED else ((info.step // every) * every if every else None)
    if not info.has_checkpoint:
        again = ("There is no checkpoint yet" + (f" (the first comes at step {every:,})" if every else "")
                 + ": Resume starts this run again from the beginning.")
    elif checkpoint:
        again = f"Resume continues from the last checkpoint (about step {checkpoint:,})."
    else:
        again = "Resume continues from the last checkpoint."
    if info.state == runs.FINISHED:
        if info.model is not None:
            st.success(f"Finished after {info.step:,} steps in {visualize.duration_text(info.elapsed)}. Its model "
                       f"**{info.name}** is in the model menu in the sidebar.", icon=":material/check_circle:")
            cols = st.columns([1, 1, 3])
            active = st.session_state.get(MODEL_KEY) == str(info.model)
            cols[0].button("Active model" if active else "Use this model", type="primary", disabled=active,
                           icon=":material/check:", key="train_use", on_click=use_model, args=(str(info.model),),
                           help="Segment and Evaluate use it from now on.")
            cols[1].page_link("pages/evaluate.py", label="Evaluate it", icon=":material/fact_check:")
        else:
            st.warning("Finished, but no model file was exported (the run was started with export switched "
                       "off): **Make a model now** exports it.", icon=":material/warning:")
            st.button("Make a model now", icon=":material/output:", key="train_finish",
                      disabled=runlock.busy() is not None or not info.has_checkpoint, on_click=finish, args=(info.name,))
        return
    if info.state == runs.STOPPED:
        st.info(f"Stopped at step {info.step:,} of {info.total:,}. {again}", icon=":material/stop_circle:")
    elif info.state == runs.CRASHED:
        reason = f": {info.error.rstrip('.')}" if info.error else " without a message"
        st.error(f"The training stopped unexpectedly at step {info.step:,} of {info.total:,}{reason}.  \n"
                 "If the message names a file or a setting, fix it and start a new run; if the computer ran "
                 f"out of memory, use a smaller width or tile. {again}", icon=":material/error:")
    else:
        st.info(f"Not running and not finished (step {info.step:,} of {info.total:,}): it was stopped or "
                f"ended early, outside this app. {again}", icon=":material/pause_circle:")
    holder = runlock.busy()
    cols = st.columns([1, 1, 3])
    cols[0].button("Resume", type="primary", icon=":material/play_arrow:", key="train_resume",
                   disabled=holder is not None or not info.resumable, on_click=resume, args=(info.name,))
    cols[1].button("Make a model now", icon=":material/output:", key="train_finish",
                   disabled=holder is not None or not info.has_checkpoint, on_click=finish, args=(info.name,),
                   help="End the run at its last checkpoint and export that as a model, without training further.")
    if holder is not None:
        cols[2].caption(f"**{holder.run}** is training now; one run at a time on this computer.")
    if info.console_tail:
        with st.expander("The last lines the training wrote", expanded=info.state == runs.CRASHED,
                         icon=":material/terminal:"):
            st.code(info.console_tail, language=None)


def manage_run(info: runs.RunInfo) -> None:
    """Rename or delete a run that is not training (delete asks for a tick first)."""
    with st.expander("Rename or delete this run", icon=":material/edit:"):
        left, right = st.columns(2)
        with left:
            st.text_input("New name", value=info.name, key=f"train_new_name:{info.name}", max_chars=64,
                          help="Letters, digits, '-', '_' or '.'; the model in the menu takes the run's name.")
            st.button("Rename", icon=":material/edit:", key="train_rename", on_click=rename, args=(info.name,))
        with right:
            sure = st.checkbox(f"Delete **{info.name}**, its checkpoints and its model",
                               key=f"train_delete_sure:{info.name}")
            st.button("Delete", icon=":material/delete:", key="train_delete", disabled=not sure,
                      on_click=delete, args=(info.name,))


def show_settings(info: runs.RunInfo) -> None:
    c = info.config
    if not c:
        return
    aug = c.get("augment") or {}
    data = c.get("data", "")
    data_text = (f"synthetic ({c.get('synth_n')} images, seed {c.get('synth_seed')})" if data == "synthetic"
                 else f"`{data}`")
    parts = [
        f"**Data:** {data_text}" + (f", {info.n_train} for training / {info.n_val} for validation"
                                    if info.n_train is not None else ""),
        (f"**Network:** width {c.get('width')}, depth {c.get('depth')}"
         + (f", fine-tuned from `{Path(c['init']).name}`" if c.get("init") else ", from scratch")),
        f"**Tiles:** {c.get('tile')} px output ({_input_size(c.get('tile'))} px input), batch {c.get('batch')}",
        (f"**Optimiser:** {OPTIMIZERS.get(c.get('optimizer'), c.get('optimizer'))}, learning rate {_g(c.get('lr'))}"
         + (f", momentum {c.get('momentum')}" if c.get("optimizer") == "sgd" else "")),
        (f"**Weight map:** w0 {c.get('w0')}, σ {c.get('sigma')} px; augmentation "
         f"{'on' if aug.get('enabled', True) else 'off'}"),
        f"**Validation:** every {c.get('val_every')} steps; checkpoint every {c.get('checkpoint_every')} steps",
        f"**Folder:** `{info.folder}`",
    ]
    with st.expander("Settings of this run", icon=":material/tune:"):
        st.markdown("  \n".join(parts))


def _g(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else "?"


def _input_size(tile: object) -> str:
    try:
        return str(GEOMETRY.input_size(int(tile)))
    except (TypeError, ValueError):
        return "?"


def run_label(info: runs.RunInfo) -> str:
    """A run in the menu: its name only. (A state in the label went stale in the browser: after Stop
    the chosen option kept saying "training now" while the panel below said "Stopped".)"""
    return f"{info.name} (started from the command line)" if info.external else info.name


def show_runs(all_runs: list[runs.RunInfo]) -> None:
    st.subheader("Training runs")
    by_name = {r.name: r for r in all_runs}
    if st.session_state.get(RUN_KEY) not in by_name:
        st.session_state[RUN_KEY] = all_runs[0].name
    name = st.selectbox("Run", list(by_name), key=RUN_KEY, format_func=lambda n: run_label(by_name[n]),
                        help="Every run in the runs folder, the running one first. Reloading the page or coming "
                        "back later shows them again: everything is read from the run folders.")
    info = by_name[name]
    with st.container(border=True):
        if info.live:
            st.fragment(run_every=REFRESH_S)(live_panel)(name)
        else:
            show_ended(info)
        show_settings(info)
        if not info.live:
            manage_run(info)


# --------------------------------------------------------------------------- a new run


def choose_start() -> tuple[str | None, int | None, float | None]:
    """From scratch or from a trained model: the model's path, width and canonical object diameter
    (None, None, None: scratch)."""
    st.session_state.setdefault("train_start_from", "scratch")
    models = list_models()
    how = st.radio("Start from", list(START_FROM), format_func=START_FROM.__getitem__, horizontal=True,
                   key="train_start_from", on_change=start_from_changed,
                   help="Fine-tuning starts from a model that already knows cells, so it needs fewer images and "
                   "steps; the network size is then the model's. Choosing it sets Adam, learning rate 1e-4, "
                   "244 px tiles and 300 steps (what fine-tuned best when measured).")
    if how == "scratch":
        return None, None, None
    if not models:
        st.info("There is no model to start from yet: train one from scratch first.", icon=":material/info:")
        return None, None, None
    paths = {str(m.path): m for m in models}
    if st.session_state.get("train_init") not in paths:
        st.session_state["train_init"] = next(iter(paths))
    path = st.selectbox("Model to start from", list(paths), key="train_init",
                        format_func=lambda p: paths[p].label)
    info = info_of(paths[path], mtime(Path(path)))
    if info.error or info.width is None:
        st.error(f"**{paths[path].label}** cannot be read ({info.error}); choose another model or train from "
                 "scratch.", icon=":material/error:")
        return None, None, None
    scale = f"; objects rescaled to {info.diameter:g} px across, as it was trained" if info.diameter else ""
    st.caption(f"{info.classes}; trained on {info.data or 'unknown data'}{scale}. Fine-tuning continues its "
               "recipe (class weights, augmentation, polarity inversion) where the settings below do not "
               "say otherwise.")
    return path, info.width, info.diameter


def settings_form(init_width: int | None, init_diameter: float | None = None) -> dict:
    """The training settings (paper's defaults first); the options for unet_core.studio.jobs."""
    # Without a GPU the paper's settings take hours: the quick preset comes first there.
    preset = computer_preset()
    for key, value in PRESETS[preset].items():
        st.session_state.setdefault(f"train_{key}", value)
    st.session_state.setdefault("train_threads", 0)
    st.session_state.setdefault("train_border", False)
    st.session_state.setdefault("train_brightfield", False)
    preset_buttons(preset, init_width)
    net, opt, loss = st.columns(3, gap="large")
    with net:
        network_settings(init_width)
    with opt:
        optimizer = optimiser_settings()
    with loss:
        loss_settings(init_diameter)
    run_settings()
    return options_from_state(optimizer, init_width, init_diameter)


def preset_buttons(preset: str, init_width: int | None) -> None:
    """The paper's and the quick settings, one button each; a word on width without a GPU."""
    head, b1, b2 = st.columns([2, 1, 1], vertical_alignment="center")
    head.markdown("**Training settings**")
    b1.button("Paper's settings", on_click=apply_preset, args=("paper",), icon=":material/menu_book:",
              help="Ronneberger et al. 2015: width 64, 572 → 388 px tiles, SGD momentum 0.99, w0 10, σ 5. Slow "
              "without a GPU.", width="stretch")
    b2.button("Quick try (CPU)", on_click=apply_preset, args=("quick",), icon=":material/bolt:",
              help="A small network and short run, finished in minutes on a laptop: to check that everything "
              "works before a long run.", width="stretch")
    if preset == "quick" and (init_width or st.session_state["train_width"]) >= 32:
        st.caption(":material/info: This computer has no GPU: at width 32 or more a training step takes seconds, "
                   "so a long run takes hours. **Quick try** finishes in minutes; width 16 is a good compromise.")


def network_settings(init_width: int | None) -> None:
    """Width (fixed when fine-tuning), tile and steps."""
    st.markdown("**Network and tiles**")
    if init_width is not None:
        # Set, not value=: a keyed widget keeps its first value, which was another model's width
        # after the user chose a second model to start from.
        st.session_state["train_width_init"] = init_width
        st.number_input("Width (features in the first layer)", disabled=True,
                        key="train_width_init", help="Fine-tuning keeps the model's own size.")
    else:
        st.number_input("Width (features in the first layer)", **config.bounds("width"), step=1,
                        key="train_width", help="64 in the paper. Half the width trains about 4× faster; "
                        "16 works well for nuclei on a CPU.")
    st.selectbox("Tile (output pixels)", TILES, key="train_tile",
                 format_func=lambda t: f"{t} × {t} (input {GEOMETRY.input_size(t)})"
                 + (" · paper" if t == 388 else ""),
                 help="Training shows the network one tile per step; the input is larger by the context "
                 "margin (92 px each side). Larger tiles: more context, slower steps.")
    st.number_input("Steps", **config.bounds("steps"), step=100, key="train_steps",
                    help="Each step trains on one tile. Thousands for a good model; see the curves.")


def optimiser_settings() -> str:
    """Optimiser, learning rate and (SGD) momentum; the optimiser chosen."""
    st.markdown("**Optimiser**")
    optimizer = st.radio("Optimiser", list(OPTIMIZERS), format_func=OPTIMIZERS.__getitem__,
                         key="train_optimizer", on_change=optimizer_changed, label_visibility="collapsed")
    st.number_input("Learning rate", **config.bounds("lr"), step=None, format="%g", key="train_lr",
                    help="0.01 with SGD (paper), 0.001 with Adam. Lower it if the loss jumps up.")
    if optimizer == "sgd":
        st.number_input("Momentum", **config.bounds("momentum"), step=0.01, format="%.4f",
                        key="train_momentum", help="0.99 in the paper: many earlier steps steer each update.")
    return optimizer


def loss_settings(init_diameter: float | None) -> None:
    """The weight map's w0 and σ, the outline class, augmentation and the bright-field look."""
    st.markdown("**Weight map and augmentation**")
    st.number_input("Border weight w0", **config.bounds("w0"), step=1.0, key="train_w0",
                    help="Extra weight on the thin background between touching cells (paper: 10), so the "
                    "network learns to separate them. See the Weight maps page.")
    st.number_input("Border width σ (pixels)", **config.bounds("sigma"), step=0.5, key="train_sigma",
                    help="How far from the cells the extra weight reaches (paper: 5 px).")
    st.toggle("Outline class", key="train_border",
              help="Not in the paper: a third class on each object's rim (2 px), so touching objects are split "
              "where the network sees their rims meet, even without a gap between them. Objects are the "
              "interiors grown back over the rims. A model that has one keeps it when fine-tuned.")
    st.toggle("Augmentation", key="train_augment",
              help="Shows the network deformed copies of your images (elastic deformations, rotations, flips, "
              "gray values): the paper's key to learning from few images. Leave it on.")
    st.toggle("Bright-field look", key="train_brightfield", disabled=not init_diameter,
              help="Not in the paper: 30 % of the tiles are shown with their gray values inverted (dark nuclei "
              "on a light background) and half of those get a synthetic cell body painted around their "
              "nuclei, so that a model trained on fluorescence also finds the nuclei, not the whole cells, in "
              "bright-field and stained images. The cell bodies are sized by the nuclei: available when "
              "fine-tuning a model with an object diameter (the nuclei model).")


def run_settings() -> None:
    """Validation and checkpoint intervals, seed and CPU threads."""
    v1, v2, v3, v4 = st.columns(4)
    v1.number_input("Validate every (steps)", **config.bounds("val_every"), step=50, key="train_val_every",
                    help="Scores the held-out images every this many steps and keeps the best model. 0 = never "
                    "(the last model is kept).")
    v2.number_input("Save a checkpoint every (steps)", **config.bounds("checkpoint_every"), step=10,
                    key="train_checkpoint_every", help="What Stop and Resume go back to.")
    v3.number_input("Random seed", **config.bounds("seed"), step=1, key="train_seed",
                    help="Same seed and settings: the same run, step for step.")
    v4.number_input("CPU threads (0 = automatic)", min_value=0, max_value=256, step=1, key="train_threads",
                    help="Fewer threads leave the computer usable for other work while training.")


def options_from_state(optimizer: str, init_width: int | None, init_diameter: float | None) -> dict:
    """The run's options (:func:`unet_core.studio.jobs.start_run`) from the form's widgets."""
    state = st.session_state
    return {
        "width": None if init_width is not None else int(state["train_width"]),
        "tile": int(state["train_tile"]), "steps": int(state["train_steps"]), "optimizer": optimizer,
        "lr": float(state["train_lr"]),
        "momentum": float(state["train_momentum"]) if optimizer == "sgd" else None,
        "w0": float(state["train_w0"]), "sigma": float(state["train_sigma"]), "augment": bool(state["train_augment"]),
        "val_every": int(state["train_val_every"]), "checkpoint_every": int(state["train_checkpoint_every"]),
        "seed": int(state["train_seed"]), "threads": int(state["train_threads"]) or None,
        "border_width": OUTLINE_WIDTH if state["train_border"] else None,
        **(BRIGHTFIELD if init_diameter and state["train_brightfield"] else {}),
    }


def choose_processes() -> int:
    """On a computer with several GPUs, how many the run trains on (1 elsewhere)."""
    gpus = jobs.gpu_count()
    if gpus < 2:
        return 1
    st.session_state.setdefault("train_processes", 1)
    st.number_input("GPUs to train on", min_value=1, max_value=gpus, step=1, key="train_processes",
                    help="One training process per GPU: each step then trains on one tile per GPU, so N GPUs "
                    "train N tiles a step in about the time one takes.")
    st.caption(f":material/memory: This computer has **{gpus} GPUs**; a run may train on several of them at once.")
    return int(st.session_state["train_processes"])


def data_summary(source: DataSource, ds: Dataset) -> int:
    """Say how the data set will be split; the number of training images."""
    n_train = len(ds.split_rule.indices(len(ds), "train"))
    st.caption(f"**{len(ds)} image{'' if len(ds) == 1 else 's'}**, {browse.describe_split(ds.split_rule, len(ds), ds.groups)}.")
    if source.kind == "upload":
        st.caption("An uploaded zip is kept for a day: for a long run (or to resume it later) copy the data set "
                   "into the data folder and choose it there.")
    return n_train


def confirm_length(options: dict, earlier: list[runs.RunInfo], init_width: int | None) -> bool:
    """How long the run will take (shown always); for a long one, a tick that confirms it. Whether
    it may start."""
    est = jobs.estimate_new_run(options, earlier, cuda_driver_available(), init_width)
    length = visualize.duration_text(est.seconds)
    st.caption(f":material/schedule: About **{length}** ({est.step_seconds:.2g} s a step, estimated from "
               f"{est.basis}), plus preparing the images and validating.")
    if est.seconds < jobs.LONG_RUN_S:
        return True
    return st.checkbox(f"Yes, start a run of about {length}", key="train_confirm_long",
                       help="It keeps going when you close the browser; Stop on this page ends it, and a stopped "
                       "run can be resumed or made into a model. Fewer steps or a smaller width take less time.")


def new_run(holder: runlock.LockInfo | None, first: bool, earlier: list[runs.RunInfo]) -> None:
    """The settings of a new run and its Start button (folded away below earlier runs)."""
    with st.expander("Start a new training run", expanded=first, icon=":material/add_circle:"):
        init, init_width, init_diameter = choose_start()
        st.markdown("**Images with masks**")
        chosen = choose_dataset("train")
        n_train = data_summary(*chosen) if chosen else 0
        if chosen and n_train == 0:
            st.error("Training needs at least one image that is not held out for validation: add images (at "
                     "least 2) or choose another data set.", icon=":material/error:")
        st.divider()
        options = settings_form(init_width, init_diameter)
        options["init"] = init
        processes = choose_processes()
        st.divider()
        confirmed = confirm_length(options, earlier, init_width)

        source = chosen[0] if chosen else DataSource()
        # The suggested name follows the data (and the runs made) until the user types their own.
        suggestion = jobs.suggest_name(_name_base(source.title))
        if st.session_state.get("train_name") in (None, st.session_state.get(NAME_AUTO)):
            st.session_state["train_name"] = suggestion
        st.session_state[NAME_AUTO] = suggestion
        name_col, button_col = st.columns([2, 1], vertical_alignment="bottom")
        name = name_col.text_input("Run name", key="train_name", max_chars=64,
                                   help="The run's folder in runs/ and its model's name.")
        data, extra = jobs.training_data(source) if chosen else (None, {})
        problem = None
        if holder is not None:
            problem = (f"**{holder.run}** is training now{' (started from the command line)' if holder.external else ''}; "
                       "one run at a time on this computer. Wait for it or stop it above.")
        elif not chosen or n_train == 0:
            problem = "Choose images with masks above."
        elif not confirmed:
            problem = "This run takes long on this computer: tick the confirmation above to start it."
        button_col.button("Start training", type="primary", icon=":material/play_arrow:", key="train_start",
                          disabled=problem is not None, width="stretch", on_click=start,
                          args=(name, data, {**options, **extra}, processes))
        if problem:
            st.caption(problem)


# --------------------------------------------------------------------------- page

st.title("Train")
st.caption("Teach a U-Net your own images: it learns from images with hand-drawn masks, as in the paper. Training "
           "runs in the background; this page shows its progress and keeps every run.")

message = st.session_state.pop(MESSAGE_KEY, None)
if message:
    kind, text = message
    (st.error if kind == "error" else st.success)(text, icon=":material/error:" if kind == "error"
                                                   else ":material/check_circle:")

holder = runlock.busy()
all_runs = runs.list_runs()
if all_runs:
    show_runs(all_runs)
new_run(holder, first=not all_runs, earlier=all_runs)
