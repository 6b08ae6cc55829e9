"""Home: what the app does, the active model with its card, and the way to every page."""

from __future__ import annotations

import streamlit as st

from pages._common import active_model, available_pages, model_card, show_no_model

st.title("U-Net Studio")
st.markdown(
    "Finds cells and nuclei in microscope images with the U-Net of Ronneberger, Fischer and Brox (2015).  \n"
    "Drop images on **Segment**: every object is outlined, counted and measured; fix what it got wrong "
    "(remove, merge, split, draw a missed one), and take the masks, outlines and tables to Fiji, QuPath, napari or a "
    "spreadsheet. Your corrected images, made here or in QuPath or Fiji, go to **Train** to teach the model.  \n"
    "Images of any size work, 8- or 16-bit, single images or stacks; it runs on this computer, on "
    "its GPU when it has one."
)

models_col, pages_col = st.columns([3, 2], gap="large")

with pages_col:
    st.subheader("Pages")
    for spec in available_pages():
        if spec.path != "pages/home.py":
            st.page_link(spec.path, label=spec.title, icon=spec.icon)
            st.caption(spec.blurb)

with models_col:
    st.subheader("Active model")
    entry = active_model()
    if entry is None:
        show_no_model()
    else:
        st.markdown(f"**{entry.label}**  \n`{entry.path}`")
        st.caption("Choose another model in the sidebar.")
        with st.container(border=True):
            st.markdown(model_card(entry))
