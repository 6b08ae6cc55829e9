"""U-Net Studio: ``streamlit run app.py`` (or ``make run``).

This script draws what every page shares: the menu, the model chooser and the device line in the
sidebar. The pages themselves live in ``pages/`` and are listed in ``pages/_common.py``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.navigation.page import StreamlitPage

from pages._common import MODEL_KEY, active_model, available_pages, device_line
from unet_core.errors import configure_logging
from unet_core.studio.registry import list_models

#: The browser tab's icon, served by the app itself: a ``:material/...:`` page icon makes the browser
#: fetch it from fonts.gstatic.com (the icons inside the pages come with Streamlit's own font), and
#: the app must work offline.
APP_ICON = Path(__file__).resolve().parent / "assets" / "icon.png"

st.set_page_config(page_title="U-Net Studio", page_icon=str(APP_ICON), layout="wide")
configure_logging()  # the engine's warnings (e.g. a GPU that fell back to the CPU) reach the server's console


def navigation() -> StreamlitPage:
    """The sidebar menu, grouped by section; Home is where a first visit lands."""
    sections: dict[str, list] = {}
    for spec in available_pages():
        page = st.Page(spec.path, title=spec.title, icon=spec.icon, default=spec.path == "pages/home.py")
        sections.setdefault(spec.section, []).append(page)
    return st.navigation(sections)


def model_chooser() -> None:
    """The active model for every page, kept in ``st.session_state[MODEL_KEY]``."""
    listed = list_models()
    models = [m for m in listed if m.usable]  # an invalid model file cannot be made active
    if not models:
        if listed:
            st.warning("No usable model: see **Models** for what is wrong.", icon=":material/warning:")
        else:
            st.info("No model yet: see **Home** for how to get one.", icon=":material/info:")
        return
    paths = [str(m.path) for m in models]
    labels = {str(m.path): m.label for m in models}
    # A model that disappeared (or a first visit) falls back to the default; setting the key
    # before the widget exists is how Streamlit lets a script choose a widget's value.
    if st.session_state.get(MODEL_KEY) not in paths:
        st.session_state[MODEL_KEY] = str(active_model().path)
    st.selectbox(
        "Model",
        paths,
        key=MODEL_KEY,
        format_func=labels.__getitem__,
        help="Shipped models come with U-Net Studio; trained ones are those you made on the Train page.",
    )


page = navigation()
with st.sidebar:
    model_chooser()
    st.caption(f":material/memory: Running on {device_line()}")
page.run()
