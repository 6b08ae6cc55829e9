"""Models: the shipped models (models/) and the trained ones (runs/), their cards, facts and files;
choose the one every page uses."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import streamlit as st

from pages._common import MODEL_KEY, active_model, model_card, show_no_model
from unet_core.studio import browse, uploads
from unet_core.studio.browse import ModelInfo
from unet_core.studio.registry import ModelEntry, list_models

SHOWN_KEY = "models_shown"


@st.cache_data(max_entries=64, show_spinner="Reading the model…")
def info_of(entry: ModelEntry, mtime: float) -> ModelInfo:
    # mtime keys the cache: a model exported again shows its new facts.
    return browse.model_info(entry)


def mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def use_model(path: str) -> None:
    """Button callback: make ``path`` the active model (runs before the sidebar chooser is drawn)."""
    st.session_state[MODEL_KEY] = path


def trained_on(info: ModelInfo) -> str:
    if info.error:
        return "(unreadable)"
    if not info.data:
        return "not recorded"
    return info.data if info.data == "synthetic" else Path(info.data).name


def table_rows(infos: list[ModelInfo], active_path: str | None) -> list[dict]:
    return [{
        "Active": "✓" if info.path == active_path else "",
        "Model": info.name,
        "From": "shipped" if info.source == "shipped" else "trained here",
        "Classes": info.classes or "–",
        "Width": info.width,
        "Depth": info.depth,
        "Trained on": trained_on(info),
        "Size": uploads.size_text(info.size_bytes),
        "Modified": (dt.datetime.fromtimestamp(info.modified).strftime("%Y-%m-%d %H:%M")
                     if info.modified else ""),
    } for info in infos]


def show_details(entry: ModelEntry, info: ModelInfo, is_active: bool) -> None:
    card_col, facts_col = st.columns([3, 2], gap="large")
    with facts_col:
        if entry.error:
            st.error(f"This model file cannot be used: {entry.error}.", icon=":material/error:")
        if is_active and not entry.error:
            st.success("This is the active model: Segment and Evaluate use it.",
                       icon=":material/check_circle:")
        else:
            st.button("Use this model", type="primary", icon=":material/check:", key="models_use",
                      on_click=use_model, args=(info.path,), disabled=bool(entry.error),
                      help="Segment and Evaluate use it from now on (also chosen in the sidebar).")
        if info.error:
            st.warning(f"The model's description cannot be read ({info.error}). It may be damaged or made by "
                       "another program: export it again with `python -m unet_core export CHECKPOINT.pt "
                       "--out models/NAME.onnx`.", icon=":material/warning:")
        else:
            facts = [
                f"**Classes:** {info.classes}",
                (f"**Network:** {info.depth} pooling steps, {info.width} features in the first layer, "
                f"{info.padding} convolutions, {info.in_channels} input channel(s)"),
                f"**Trained on:** {trained_on(info)}"  # the folder, for a model trained on this computer
                + (f" (`{info.data}`)" if info.source != "shipped" and info.data not in ("", "synthetic") else ""),
            ]
            if info.split:
                facts.append(f"**Validation:** {info.split}")
            if info.steps is not None:
                facts.append(f"**Training steps:** {info.steps:,}")
            if entry.note:  # an int8 copy: say what it is and where it comes from
                parent = f", made from `{entry.parent}`" if entry.parent else ""
                facts.append(f"**Precision:** {entry.note}{parent}")
            st.markdown("  \n".join(facts))
        st.markdown(f"**File:** `{info.path}` ({uploads.size_text(info.size_bytes)})")
        path = Path(info.path)
        st.download_button(
            f"Download the model (.onnx, {uploads.size_text(info.size_bytes)})",
            data=path.read_bytes, file_name=f"{entry.name}.onnx", mime="application/octet-stream",
            icon=":material/download:", on_click="ignore", key="models_download", width="stretch",
            help="The ONNX file with everything needed to use it: `python -m unet_core predict IMAGES "
            "--model FILE`, or load it in another program that runs ONNX models.",
        )
        if entry.card_path is not None:
            st.download_button("Download the model card (.md)", data=entry.card_path.read_bytes,
                               file_name=f"{entry.name}.md", mime="text/markdown",
                               icon=":material/description:", on_click="ignore", key="models_card_download",
                               width="stretch")
    with card_col, st.container(border=True):
        st.markdown(model_card(entry))


st.title("Models")
st.caption("The models that come with U-Net Studio (`models/`) and those trained here (`runs/`): what each "
           "was trained on, its card and its file. The active model is the one Segment and Evaluate use.")

models = list_models()
unfinished = browse.unfinished_runs()
if not models:
    show_no_model()
if unfinished:
    names = ", ".join(f"**{name}**" for name in unfinished)
    st.info(f"Training runs without a model yet: {names}. A run's model (`model.onnx`) appears here when "
            "its training finishes; to try one earlier, export its checkpoint: "
            f"`python -m unet_core export runs/{unfinished[0]}/last.pt --out models/NAME.onnx`.",
            icon=":material/hourglass_top:")
if not models:
    st.stop()

infos = {str(e.path): info_of(e, mtime(e.path)) for e in models}
entries = {str(e.path): e for e in models}
active = active_model()
active_path = str(active.path) if active else None

st.dataframe(table_rows(list(infos.values()), active_path), hide_index=True, width="stretch",
             column_config={"Active": st.column_config.TextColumn("", width="small"),
                            "Width": st.column_config.NumberColumn(help="features in the first layer"),
                            "Depth": st.column_config.NumberColumn(help="pooling steps")})

if st.session_state.get(SHOWN_KEY) not in entries:
    st.session_state[SHOWN_KEY] = active_path if active_path in entries else next(iter(entries))
shown = st.selectbox("Details of", list(entries), key=SHOWN_KEY,
                     format_func=lambda p: entries[p].label + ("  ✓ active" if p == active_path else ""))
show_details(entries[shown], infos[shown], shown == active_path)
